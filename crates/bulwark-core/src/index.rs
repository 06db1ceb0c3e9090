//! The subscription index: a topic trie that answers "which subscriptions match this topic name"
//! on the publish hot path.
//!
//! Every walk over the trie (matching, insertion, removal, pruning and even dropping) is a loop
//! rather than a recursion. Filters and topic names may each be 65 535 bytes, i.e. up to 32 768
//! levels, and both come from clients: a recursion over levels would let one client overflow the
//! stack of the thread that serves it and abort the whole broker.
//!
//! Matching does not allocate. The only memory it needs beyond its stack frame is the list of
//! branches still to explore, which lives in a small inline array and only spills to the heap for
//! topic/filter shapes with more than [`INLINE_BRANCHES`] pending `+` branches at once.
//!
//! Level text is hashed with the standard library's randomly keyed `SipHash` on purpose: levels are
//! chosen by clients, and a fixed fast hasher would let them build collision chains (`HashDoS`).

use std::collections::HashMap;
use std::hash::Hash;

/// Pending `+` branches kept on the stack during matching before spilling to the heap. Each one
/// stands for a level where both a literal child and a `+` child matched, so sixteen outstanding
/// at once is far beyond any realistic subscription set, while the array stays a few hundred bytes.
const INLINE_BRANCHES: usize = 16;

/// A map from (topic filter, subscriber key) to a value, answering "which entries match this
/// topic name".
///
/// Filters and topic names must already be valid MQTT (§4.7); the index does not re-validate
/// them, because the codec has done so and the broker should not pay twice. Shared-subscription
/// prefixes (`$share/{group}/`) are not interpreted here: callers index the filter that is matched.
#[derive(Debug)]
pub struct SubscriptionIndex<K, V> {
    /// The node for the empty path; it is never pruned, so the index always has somewhere to start.
    root: Node<K, V>,
    /// Kept alongside the trie so `len` is O(1) instead of a full walk.
    len: usize,
}

/// One level of the trie.
///
/// The `+` child and the `#` entries have their own fields so that matching never hashes a
/// wildcard: they are checked on every visited node, and a map lookup for them would cost a
/// `SipHash` of `"+"` or `"#"` each time.
struct Node<K, V> {
    /// Children for literal levels, looked up with the topic level as a `&str`.
    children: HashMap<Box<str>, Node<K, V>>,
    /// Child for a `+` level. Boxed so that the many leaf nodes without one stay small.
    plus: Option<Box<Node<K, V>>>,
    /// Entries whose filter is this node's path followed by `#`.
    multi: HashMap<K, V>,
    /// Entries whose filter ends exactly at this node.
    exact: HashMap<K, V>,
}

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Self {
            children: HashMap::new(),
            plus: None,
            multi: HashMap::new(),
            exact: HashMap::new(),
        }
    }

    /// True when the node holds nothing and leads nowhere, i.e. pruning may remove it.
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.multi.is_empty()
            && self.exact.is_empty()
    }

    /// True when the node must outlive the removal of its child on one path: it holds entries
    /// or has at least one child besides that path.
    fn is_needed_besides_one_child(&self) -> bool {
        !self.multi.is_empty()
            || !self.exact.is_empty()
            || self.children.len() + usize::from(self.plus.is_some()) > 1
    }

    fn child(&self, level: Level<'_>) -> Option<&Self> {
        match level {
            Level::Plus => self.plus.as_deref(),
            Level::Literal(text) => self.children.get(text),
        }
    }

    fn child_mut(&mut self, level: Level<'_>) -> Option<&mut Self> {
        match level {
            Level::Plus => self.plus.as_deref_mut(),
            Level::Literal(text) => self.children.get_mut(text),
        }
    }

    fn child_or_insert(&mut self, level: Level<'_>) -> &mut Self {
        match level {
            Level::Plus => self.plus.get_or_insert_with(|| Box::new(Self::new())),
            // The entry API needs an owned key even when the child exists. Subscribing is far off
            // the hot path, so one small allocation per level is cheaper than the double lookup
            // the borrow checker would otherwise force.
            Level::Literal(text) => self
                .children
                .entry(Box::from(text))
                .or_insert_with(Self::new),
        }
    }

    /// Detaches and returns the child on `level`, so the caller decides where its subtree is
    /// dropped.
    fn take_child(&mut self, level: Level<'_>) -> Option<Self> {
        let child = match level {
            Level::Plus => self.plus.take().map(|boxed| *boxed),
            Level::Literal(text) => self.children.remove(text),
        };
        if self.children.is_empty() {
            // A map keeps its capacity after removals; dropping the table keeps memory bounded
            // by the live subscriptions rather than by the historical peak.
            self.children = HashMap::new();
        }
        child
    }

    fn entries(&self, multi: bool) -> &HashMap<K, V> {
        if multi { &self.multi } else { &self.exact }
    }

    fn entries_mut(&mut self, multi: bool) -> &mut HashMap<K, V> {
        if multi {
            &mut self.multi
        } else {
            &mut self.exact
        }
    }

    /// Moves every child out of this node into `out`.
    fn drain_children_into(&mut self, out: &mut Vec<Self>) {
        out.extend(self.children.drain().map(|(_, child)| child));
        if let Some(plus) = self.plus.take() {
            out.push(*plus);
        }
    }
}

impl<K, V> std::fmt::Debug for Node<K, V> {
    /// Summarises instead of printing the subtree: a derived impl would recurse once per level
    /// (a client-chosen depth, so a stack overflow waiting for a `{:?}` in a log line) and would
    /// dump every subscription of the broker.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("children", &self.children.len())
            .field("plus", &self.plus.is_some())
            .field("multi", &self.multi.len())
            .field("exact", &self.exact.len())
            .finish()
    }
}

impl<K, V> Drop for Node<K, V> {
    /// The derived drop glue would recurse once per level, which a deep enough filter turns into
    /// a stack overflow; flattening the subtree into a worklist keeps drop depth constant.
    fn drop(&mut self) {
        if self.children.is_empty() && self.plus.is_none() {
            return;
        }
        let mut pending = Vec::new();
        self.drain_children_into(&mut pending);
        while let Some(mut node) = pending.pop() {
            node.drain_children_into(&mut pending);
            // `node` now has no children, so its own drop returns at the check above.
        }
    }
}

/// One level of a filter, as far as the trie's shape is concerned.
#[derive(Debug, Clone, Copy)]
enum Level<'a> {
    Plus,
    Literal(&'a str),
}

/// Splits a filter into the levels that form its trie path and whether it ends in `#`.
///
/// The trailing `#` is not a node of its own: its entries live on the parent node, because `#`
/// also matches the parent level itself (`sport/#` matches `sport`).
fn parse_filter(filter: &str) -> (impl Iterator<Item = Level<'_>> + Clone, bool) {
    let (path, multi) = if filter == "#" {
        (None, true)
    } else if let Some(path) = filter.strip_suffix("/#") {
        (Some(path), true)
    } else {
        (Some(filter), false)
    };
    let levels = path
        .into_iter()
        .flat_map(|path| path.split('/'))
        .map(|level| {
            if level == "+" {
                Level::Plus
            } else {
                Level::Literal(level)
            }
        });
    (levels, multi)
}

/// Splits off the first level of a topic name; `None` for the rest means it was the last level.
///
/// Distinguishing "no more levels" from "an empty level" is what makes `a/+` match `a/` but
/// not `a`.
fn split_level(topic: &str) -> (&str, Option<&str>) {
    match topic.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (topic, None),
    }
}

/// A LIFO stack that holds its first `N` items inline, so the common case never allocates.
struct InlineStack<T, const N: usize> {
    inline: [Option<T>; N],
    inline_len: usize,
    /// Used only once `inline` is full; `Vec::new` does not allocate until then.
    spill: Vec<T>,
}

impl<T, const N: usize> InlineStack<T, N> {
    fn new() -> Self {
        Self {
            inline: [const { None }; N],
            inline_len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, item: T) {
        match self.inline.get_mut(self.inline_len) {
            Some(slot) => {
                *slot = Some(item);
                self.inline_len += 1;
            }
            None => self.spill.push(item),
        }
    }

    fn pop(&mut self) -> Option<T> {
        // Spilled items were pushed after every inline one, so they come off first.
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        self.inline_len = self.inline_len.checked_sub(1)?;
        self.inline.get_mut(self.inline_len).and_then(Option::take)
    }
}

/// A node still to visit during matching, with the topic levels it has yet to consume (`None`
/// once the whole topic is consumed).
type Branch<'n, 't, K, V> = (&'n Node<K, V>, Option<&'t str>);

impl<K: Clone + Eq + Hash, V> SubscriptionIndex<K, V> {
    /// Creates an empty index.
    #[must_use]
    pub fn new() -> Self {
        Self {
            root: Node::new(),
            len: 0,
        }
    }

    /// Inserts or replaces the value for (filter, key); returns the old value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let (levels, multi) = parse_filter(filter);
        let mut node = &mut self.root;
        for level in levels {
            node = node.child_or_insert(level);
        }
        let old = node.entries_mut(multi).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes the entry (filter, key); prunes nodes left empty so memory does not grow with churn.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let (levels, multi) = parse_filter(filter);
        let mut node = &mut self.root;
        for level in levels.clone() {
            node = node.child_mut(level)?;
        }
        let entries = node.entries_mut(multi);
        let old = entries.remove(key)?;
        if entries.is_empty() {
            // Release the table now: a node that once held many subscribers may live on for its
            // children, and should not keep their memory.
            *entries = HashMap::new();
        }
        self.len -= 1;
        self.prune(levels);
        Some(old)
    }

    /// Removes the empty tail of the path `levels`, if the removal just made its last node empty.
    ///
    /// The trie has no parent links (they would need shared ownership), so this walks the path
    /// twice: once to find the deepest node that must stay, once to cut below it.
    fn prune<'f>(&mut self, levels: impl Iterator<Item = Level<'f>> + Clone) {
        // The deepest node on the path that must stay, and the level of its child on the path.
        let mut cut: Option<(usize, Level<'f>)> = None;
        let mut node = &self.root;
        for (depth, level) in levels.clone().enumerate() {
            if depth == 0 || node.is_needed_besides_one_child() {
                cut = Some((depth, level));
            }
            match node.child(level) {
                Some(child) => node = child,
                // Unreachable, as the caller just walked this path; nothing to prune then.
                None => return,
            }
        }
        let Some((cut_depth, cut_level)) = cut else {
            // An entry on the root itself (`#`): the root is never pruned.
            return;
        };
        if !node.is_empty() {
            return;
        }
        let mut node = &mut self.root;
        for level in levels.take(cut_depth) {
            match node.child_mut(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        // Dropped here through `Node`'s iterative drop, however long the chain is.
        drop(node.take_child(cut_level));
    }

    /// Returns the value for (filter, key).
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let (levels, multi) = parse_filter(filter);
        let mut node = &self.root;
        for level in levels {
            node = node.child(level)?;
        }
        node.entries(multi).get(key)
    }

    /// Returns the value for (filter, key), mutably, so callers can update a subscription's
    /// options without a remove and re-insert that would churn the trie.
    pub fn get_mut(&mut self, filter: &str, key: &K) -> Option<&mut V> {
        let (levels, multi) = parse_filter(filter);
        let mut node = &mut self.root;
        for level in levels {
            node = node.child_mut(level)?;
        }
        node.entries_mut(multi).get_mut(key)
    }

    /// Calls `visit` for every entry whose filter matches `topic`.
    ///
    /// Each entry is visited at most once: an entry lives on exactly one node, and since every
    /// filter level consumes exactly one topic level, a node is reached by at most one path.
    /// The visiting order is unspecified.
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(&K, &V)) {
        let mut visit_all = |entries: &HashMap<K, V>| {
            for (key, value) in entries {
                visit(key, value);
            }
        };

        // [MQTT-4.7.2-1]: filters starting with a wildcard must not see `$` topics such as
        // `$SYS/...`; those filters are exactly the root's `#` entries and its `+` subtree.
        let wildcards_at_root = !topic.starts_with('$');
        let root = &self.root;
        if wildcards_at_root {
            visit_all(&root.multi);
        }
        let (first, rest) = split_level(topic);
        let root_plus = if wildcards_at_root {
            root.plus.as_deref()
        } else {
            None
        };

        let mut pending: InlineStack<Branch<'_, '_, K, V>, INLINE_BRANCHES> = InlineStack::new();
        let mut current = match (root.children.get(first), root_plus) {
            (Some(literal), Some(plus)) => {
                pending.push((plus, rest));
                Some((literal, rest))
            }
            (literal, plus) => literal.or(plus).map(|node| (node, rest)),
        };

        while let Some((node, rest)) = current.take().or_else(|| pending.pop()) {
            // `#` matches the parent level too, so its entries match whether or not levels remain.
            visit_all(&node.multi);
            let Some(rest) = rest else {
                visit_all(&node.exact);
                continue;
            };
            let (level, rest) = split_level(rest);
            // Follow one matching child directly and defer the other, so the stack only grows
            // where a literal and a `+` subscription genuinely diverge.
            current = match (node.children.get(level), node.plus.as_deref()) {
                (Some(literal), Some(plus)) => {
                    pending.push((plus, rest));
                    Some((literal, rest))
                }
                (literal, plus) => literal.or(plus).map(|node| (node, rest)),
            };
        }
    }

    /// Number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the index holds no entries.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of trie nodes, root included, so tests can check that pruning leaves none behind.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        let mut count = 0;
        let mut pending = vec![&self.root];
        while let Some(node) = pending.pop() {
            count += 1;
            pending.extend(node.children.values());
            pending.extend(node.plus.as_deref());
        }
        count
    }

    /// True when some non-root node holds nothing and leads nowhere, i.e. pruning missed it.
    #[cfg(test)]
    fn has_empty_non_root_node(&self) -> bool {
        let mut pending: Vec<&Node<K, V>> = Vec::new();
        self.root
            .children
            .values()
            .for_each(|child| pending.push(child));
        pending.extend(self.root.plus.as_deref());
        while let Some(node) = pending.pop() {
            if node.is_empty() {
                return true;
            }
            pending.extend(node.children.values());
            pending.extend(node.plus.as_deref());
        }
        false
    }
}

impl<K, V> Default for SubscriptionIndex<K, V> {
    /// An empty index; written by hand so that `K` and `V` need not be `Default`.
    fn default() -> Self {
        Self {
            root: Node::new(),
            len: 0,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// Spec oracle, written straight from §4.7 and independent of the trie.
    fn spec_matches(filter: &str, topic: &str) -> bool {
        fn levels_match(filter: &[&str], topic: &[&str]) -> bool {
            match (filter, topic) {
                // `#` matches the parent and any number of child levels, including none.
                (["#"], _) => true,
                // `+` matches exactly one level, which may be empty.
                (["+", filter_rest @ ..], [_, topic_rest @ ..]) => {
                    levels_match(filter_rest, topic_rest)
                }
                ([f, filter_rest @ ..], [t, topic_rest @ ..]) => {
                    f == t && levels_match(filter_rest, topic_rest)
                }
                ([], []) => true,
                _ => false,
            }
        }
        // [MQTT-4.7.2-1]
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let filter: Vec<&str> = filter.split('/').collect();
        let topic: Vec<&str> = topic.split('/').collect();
        levels_match(&filter, &topic)
    }

    fn matched_filters(index: &SubscriptionIndex<String, ()>, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        index.for_each_match(topic, |key, ()| out.push(key.clone()));
        out.sort();
        out
    }

    /// (filter, topic, matches) from §4.7 and its edge cases.
    const CASES: &[(&str, &str, bool)] = &[
        // §4.7.1.2 multi-level wildcard
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking",
            true,
        ),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon",
            true,
        ),
        ("sport/tennis/player1/#", "sport/tennis/player2", false),
        ("sport/tennis/player1/#", "sport/tennis", false),
        ("sport/#", "sport", true),
        ("sport/#", "sport/", true),
        ("sport/#", "sport/a/b", true),
        ("sport/#", "sports", false),
        ("sport/#", "Sport", false),
        ("#", "sport", true),
        ("#", "sport/tennis/player1", true),
        ("#", "/", true),
        ("#", "/finance", true),
        // §4.7.1.3 single-level wildcard
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player2", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/tennis/+", "sport/tennis", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+", "sport", true),
        ("+", "sport/tennis", false),
        ("+", "/finance", false),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("/+", "finance", false),
        ("+/tennis/#", "sport/tennis/player1", true),
        ("+/tennis/#", "sport/tennis", true),
        ("+/tennis/#", "sport/golf", false),
        ("sport/+/player1", "sport/tennis/player1", true),
        ("sport/+/player1", "sport//player1", true),
        // §4.7.2 topics beginning with `$`
        ("#", "$SYS/monitor/Clients", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("$SYS/#", "$SYS/monitor/Clients", true),
        ("$SYS/#", "$SYS", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ("+", "$SYS", false),
        ("+/#", "$SYS/x", false),
        ("#", "$", false),
        ("$SYS/+", "$SYS/", true),
        // `$` only matters for the first level of the topic and of the filter.
        ("a/+", "a/$x", true),
        ("a/#", "a/$x", true),
        ("#", "a/$x", true),
        ("+/$x", "a/$x", true),
        // §4.7.3 empty levels and case sensitivity
        ("a//b", "a//b", true),
        ("a//b", "a/b", false),
        ("a/+/b", "a//b", true),
        ("/a", "/a", true),
        ("/a", "a", false),
        ("a/", "a/", true),
        ("a/", "a", false),
        ("a/+", "a/", true),
        ("/#", "/", true),
        ("/#", "/a/b", true),
        ("/#", "a", false),
        ("+/+", "/", true),
        ("+", "/", false),
        ("//", "//", true),
        ("+//+", "//", true),
        ("ACCOUNTS", "Accounts", false),
        ("a b/c", "a b/c", true),
    ];

    #[test]
    fn oracle_agrees_with_table() {
        for &(filter, topic, expected) in CASES {
            assert_eq!(spec_matches(filter, topic), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn table_one_filter_at_a_time() {
        for &(filter, topic, expected) in CASES {
            let mut index = SubscriptionIndex::new();
            index.insert(filter, filter.to_owned(), ());
            let got = matched_filters(&index, topic);
            assert_eq!(!got.is_empty(), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn table_all_filters_together() {
        let mut index = SubscriptionIndex::new();
        for &(filter, _, _) in CASES {
            index.insert(filter, filter.to_owned(), ());
        }
        let filters: BTreeSet<&str> = CASES.iter().map(|&(f, _, _)| f).collect();
        assert_eq!(index.len(), filters.len());
        for &(_, topic, _) in CASES {
            let expected: Vec<String> = filters
                .iter()
                .filter(|f| spec_matches(f, topic))
                .map(|f| (*f).to_owned())
                .collect();
            assert_eq!(matched_filters(&index, topic), expected, "topic {topic}");
        }
    }

    #[test]
    fn insert_replace_get_remove() {
        let mut index: SubscriptionIndex<u32, &str> = SubscriptionIndex::default();
        assert!(index.is_empty());
        assert_eq!(index.insert("a/+", 1, "one"), None);
        assert_eq!(index.insert("a/+", 2, "two"), None);
        assert_eq!(index.insert("a/#", 1, "multi"), None);
        assert_eq!(index.insert("a", 1, "exact"), None);
        assert_eq!(index.len(), 4);

        assert_eq!(index.insert("a/+", 1, "uno"), Some("one"));
        assert_eq!(index.len(), 4);
        assert_eq!(index.get("a/+", &1), Some(&"uno"));
        assert_eq!(index.get("a/#", &1), Some(&"multi"));
        assert_eq!(index.get("a", &1), Some(&"exact"));
        assert_eq!(index.get("a/b", &1), None);
        assert_eq!(index.get("a/+", &3), None);
        assert_eq!(index.get("#", &1), None);

        *index.get_mut("a/#", &1).unwrap() = "changed";
        assert_eq!(index.get("a/#", &1), Some(&"changed"));
        assert!(index.get_mut("b", &1).is_none());

        assert_eq!(index.remove("a/+", &3), None);
        assert_eq!(index.remove("nope/x", &1), None);
        assert_eq!(index.remove("a/+", &1), Some("uno"));
        assert_eq!(index.remove("a/+", &1), None);
        assert_eq!(index.len(), 3);
        assert_eq!(index.get("a/+", &2), Some(&"two"));

        let mut seen = Vec::new();
        index.for_each_match("a/x", |k, v| seen.push((*k, *v)));
        seen.sort();
        assert_eq!(seen, vec![(1, "changed"), (2, "two")]);
    }

    #[test]
    fn exact_and_multi_on_same_node_are_distinct() {
        let mut index = SubscriptionIndex::new();
        index.insert("#", 1, "root multi");
        index.insert("a", 1, "exact");
        index.insert("a/#", 1, "multi");
        let mut seen = Vec::new();
        index.for_each_match("a", |_, v| seen.push(*v));
        seen.sort();
        assert_eq!(seen, vec!["exact", "multi", "root multi"]);
        assert_eq!(index.remove("#", &1), Some("root multi"));
        assert_eq!(index.get("a/#", &1), Some(&"multi"));
    }

    #[test]
    fn pruning_leaves_only_the_root() {
        let filters = [
            "a/b/c",
            "a/b",
            "a/+/c",
            "+/#",
            "#",
            "a//b",
            "/",
            "/+",
            "+",
            "a/b/c/d/e/#",
            "$SYS/#",
        ];
        let mut index = SubscriptionIndex::new();
        for (i, filter) in filters.iter().enumerate() {
            index.insert(filter, i, ());
            index.insert(filter, i + 100, ());
        }
        assert!(index.node_count() > 1);
        // Remove in an order unrelated to insertion so inner nodes empty before leaves.
        for (i, filter) in filters.iter().enumerate().rev() {
            assert_eq!(index.remove(filter, &i), Some(()));
            assert!(!index.has_empty_non_root_node(), "after removing {filter}");
        }
        for (i, filter) in filters.iter().enumerate() {
            assert_eq!(index.remove(filter, &(i + 100)), Some(()));
            assert!(!index.has_empty_non_root_node(), "after removing {filter}");
        }
        assert!(index.is_empty());
        assert_eq!(index.node_count(), 1);
        assert!(index.root.children.is_empty());
        assert!(index.root.plus.is_none());
    }

    #[test]
    fn pruning_keeps_shared_prefixes() {
        let mut index = SubscriptionIndex::new();
        index.insert("a/b/c/d", 1, ());
        index.insert("a/b", 2, ());
        index.insert("a/x/y", 3, ());
        index.remove("a/b/c/d", &1);
        assert_eq!(index.node_count(), 5); // root, a, a/b, a/x, a/x/y
        assert!(index.get("a/b", &2).is_some());
        index.remove("a/x/y", &3);
        assert_eq!(index.node_count(), 3);
        index.remove("a/b", &2);
        assert_eq!(index.node_count(), 1);
    }

    #[test]
    fn churn_does_not_grow_the_trie() {
        let mut index = SubscriptionIndex::new();
        index.insert("keep/+", 0_u32, ());
        let baseline = index.node_count();
        for round in 0..1000_u32 {
            let filter = format!("dev/{round}/+/status/#");
            index.insert(&filter, round, ());
            assert_eq!(index.remove(&filter, &round), Some(()));
        }
        assert_eq!(index.node_count(), baseline);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn visits_each_entry_once_with_overlapping_paths() {
        let mut index = SubscriptionIndex::new();
        for filter in ["a/b", "a/+", "+/b", "+/+", "#", "a/#", "+/#", "a/b/#"] {
            index.insert(filter, filter, ());
        }
        let mut seen = Vec::new();
        index.for_each_match("a/b", |k, ()| seen.push(*k));
        seen.sort_unstable();
        let mut expected = vec!["a/b", "a/+", "+/b", "+/+", "#", "a/#", "+/#", "a/b/#"];
        expected.sort_unstable();
        assert_eq!(seen, expected);
    }

    #[test]
    fn many_pending_branches_spill_correctly() {
        // Every level has both a literal and a `+` child, so the pending stack exceeds the
        // inline capacity and the heap spill path is exercised.
        let depth = INLINE_BRANCHES + 8;
        let mut index = SubscriptionIndex::new();
        let topic = vec!["a"; depth].join("/");
        index.insert(&topic, 0_usize, ());
        for i in 0..depth {
            let mut levels = vec!["a"; depth];
            levels[i] = "+";
            index.insert(&levels.join("/"), i + 1, ());
        }
        index.insert(&vec!["+"; depth].join("/"), depth + 1, ());
        let mut seen = Vec::new();
        index.for_each_match(&topic, |k, ()| seen.push(*k));
        seen.sort_unstable();
        assert_eq!(seen, (0..=depth + 1).collect::<Vec<_>>());
    }

    #[test]
    fn inline_stack_is_lifo_across_spill() {
        let mut stack: InlineStack<u32, 2> = InlineStack::new();
        for i in 0..5 {
            stack.push(i);
        }
        assert_eq!(stack.pop(), Some(4));
        stack.push(9);
        let rest: Vec<u32> = std::iter::from_fn(|| stack.pop()).collect();
        assert_eq!(rest, vec![9, 3, 2, 1, 0]);
        assert_eq!(stack.pop(), None);
    }

    #[test]
    fn deep_filters_do_not_overflow_the_stack() {
        // The longest legal filter/topic (65 535 bytes) has 32 768 levels. Run on a thread with
        // a deliberately small stack so any per-level recursion would fail loudly.
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                let levels = 32_768;
                let literal = vec!["a"; levels].join("/");
                let plus = vec!["+"; levels].join("/");
                let mut index = SubscriptionIndex::new();
                index.insert(&literal, 1_u8, ());
                index.insert(&plus, 2, ());
                index.insert(&format!("{literal}/#"), 3, ());
                let mut seen = Vec::new();
                index.for_each_match(&literal, |k, ()| seen.push(*k));
                seen.sort_unstable();
                assert_eq!(seen, vec![1, 2, 3]);
                assert!(format!("{index:?}").contains("len: 3"));
                assert_eq!(index.remove(&plus, &2), Some(()));
                assert_eq!(index.remove(&literal, &1), Some(()));
                // Dropping the remaining deep chain must not recurse either.
                drop(index);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// Levels that exercise literals, empty levels and `$`; wildcards are added separately.
    const LEVELS: &[&str] = &["a", "b", "", "$x"];

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(LEVELS), 1..5)
            .prop_map(|levels| levels.join("/"))
            // A topic name must not be empty (a single empty level).
            .prop_filter("topic name must be non-empty", |topic| !topic.is_empty())
    }

    fn filter_strategy() -> impl Strategy<Value = String> {
        let level = prop_oneof![
            3 => prop::sample::select(LEVELS).prop_map(str::to_owned),
            1 => Just("+".to_owned()),
        ];
        (prop::collection::vec(level, 0..5), any::<bool>())
            .prop_map(|(mut levels, multi)| {
                if multi || levels.is_empty() {
                    levels.push("#".to_owned());
                }
                levels.join("/")
            })
            .prop_filter("topic filter must be non-empty", |filter| {
                !filter.is_empty()
            })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, u8, u32),
        Remove(String, u8),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (filter_strategy(), 0..3_u8, any::<u32>()).prop_map(|(f, k, v)| Op::Insert(f, k, v)),
            1 => (filter_strategy(), 0..3_u8).prop_map(|(f, k)| Op::Remove(f, k)),
        ]
    }

    proptest! {
        #[test]
        fn matches_agree_with_spec_oracle(
            ops in prop::collection::vec(op_strategy(), 0..60),
            topics in prop::collection::vec(topic_strategy(), 1..20),
        ) {
            let mut index = SubscriptionIndex::new();
            let mut model: BTreeMap<(String, u8), u32> = BTreeMap::new();
            for op in &ops {
                match op {
                    Op::Insert(filter, key, value) => {
                        let old = index.insert(filter, *key, *value);
                        prop_assert_eq!(old, model.insert((filter.clone(), *key), *value));
                    }
                    Op::Remove(filter, key) => {
                        let old = index.remove(filter, key);
                        prop_assert_eq!(old, model.remove(&(filter.clone(), *key)));
                        prop_assert!(!index.has_empty_non_root_node());
                    }
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for ((filter, key), value) in &model {
                prop_assert_eq!(index.get(filter, key), Some(value));
            }
            // Keys are made unique per filter so the visited multiset identifies entries exactly.
            let mut unique = SubscriptionIndex::new();
            for ((filter, key), value) in &model {
                unique.insert(filter, (filter.clone(), *key), *value);
            }
            for topic in &topics {
                let mut got: Vec<(String, u8, u32)> = Vec::new();
                unique.for_each_match(topic, |(f, k), v| got.push((f.clone(), *k, *v)));
                got.sort();
                let expected: Vec<(String, u8, u32)> = model
                    .iter()
                    .filter(|((filter, _), _)| spec_matches(filter, topic))
                    .map(|((filter, key), value)| (filter.clone(), *key, *value))
                    .collect();
                prop_assert_eq!(&got, &expected, "topic {:?}", topic);

                // The index built by the op sequence must visit the same (key, value) multiset.
                let mut got_keys: Vec<(u8, u32)> = Vec::new();
                index.for_each_match(topic, |k, v| got_keys.push((*k, *v)));
                got_keys.sort_unstable();
                let mut expected_keys: Vec<(u8, u32)> =
                    expected.iter().map(|(_, k, v)| (*k, *v)).collect();
                expected_keys.sort_unstable();
                prop_assert_eq!(got_keys, expected_keys, "topic {:?}", topic);
            }
            for (filter, key) in model.keys() {
                prop_assert!(index.remove(filter, key).is_some());
                prop_assert!(!index.has_empty_non_root_node());
            }
            prop_assert!(index.is_empty());
            prop_assert_eq!(index.node_count(), 1);
        }
    }
}
