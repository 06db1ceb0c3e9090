//! Retained messages, in a topic trie: a SUBSCRIBE with wildcards visits the branches its
//! filter names instead of every retained topic.
//!
//! The nodes live in one arena (`Vec`), linked by index: every walk (lookup, matching, removal
//! with pruning, and dropping) is a loop, never a recursion over levels, which topic names
//! from clients could make deep enough to overflow a stack. Children are found by level text
//! with the standard library's randomly keyed hasher: levels are chosen by clients.

use std::collections::HashMap;
use std::sync::Arc;

use crate::message::Message;

/// The root's index in the arena: it stands for the empty path and is never freed.
const ROOT: usize = 0;

/// Retained messages by topic name.
#[derive(Debug)]
pub(crate) struct RetainedStore {
    nodes: Vec<Node>,
    /// Slots of `nodes` freed by pruning, reused first.
    free: Vec<usize>,
    /// Messages held.
    len: usize,
}

#[derive(Debug, Default)]
struct Node {
    parent: usize,
    /// This node's level, the key its parent finds it by.
    level: Box<str>,
    children: HashMap<Box<str>, usize>,
    message: Option<Arc<Message>>,
}

impl Default for RetainedStore {
    fn default() -> Self {
        Self::new()
    }
}

impl RetainedStore {
    /// An empty store.
    pub(crate) fn new() -> Self {
        Self {
            nodes: vec![Node::default()],
            free: Vec::new(),
            len: 0,
        }
    }

    /// Messages held.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The node for `topic`, if the trie has one.
    fn find(&self, topic: &str) -> Option<usize> {
        let mut at = ROOT;
        for level in topic.split('/') {
            at = *self.nodes.get(at)?.children.get(level)?;
        }
        Some(at)
    }

    /// The message retained on `topic`.
    pub(crate) fn get(&self, topic: &str) -> Option<&Arc<Message>> {
        let at = self.find(topic)?;
        self.nodes.get(at)?.message.as_ref()
    }

    /// Whether a message is retained on `topic`.
    pub(crate) fn contains(&self, topic: &str) -> bool {
        self.get(topic).is_some()
    }

    /// Retains `message` on its topic; returns the one it replaces.
    pub(crate) fn insert(&mut self, message: Arc<Message>) -> Option<Arc<Message>> {
        let mut at = ROOT;
        for level in message.topic.as_str().split('/') {
            let existing = self
                .nodes
                .get(at)
                .and_then(|n| n.children.get(level))
                .copied();
            at = match existing {
                Some(child) => child,
                None => self.add_child(at, level),
            };
        }
        let old = self.nodes.get_mut(at)?.message.replace(message);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    fn add_child(&mut self, parent: usize, level: &str) -> usize {
        let node = Node {
            parent,
            level: level.into(),
            children: HashMap::new(),
            message: None,
        };
        let index = match self.free.pop() {
            Some(slot) => {
                if let Some(n) = self.nodes.get_mut(slot) {
                    *n = node;
                }
                slot
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        if let Some(p) = self.nodes.get_mut(parent) {
            p.children.insert(level.into(), index);
        }
        index
    }

    /// Removes the message retained on `topic`, and the nodes that then lead nowhere.
    pub(crate) fn remove(&mut self, topic: &str) -> Option<Arc<Message>> {
        let mut at = self.find(topic)?;
        let old = self.nodes.get_mut(at)?.message.take()?;
        self.len -= 1;
        while at != ROOT {
            let Some(node) = self.nodes.get_mut(at) else {
                break;
            };
            if node.message.is_some() || !node.children.is_empty() {
                break;
            }
            let parent = node.parent;
            let level = std::mem::take(&mut node.level);
            // A map keeps its capacity: the slot's table goes with it.
            node.children = HashMap::new();
            if let Some(p) = self.nodes.get_mut(parent) {
                p.children.remove(&level);
            }
            self.free.push(at);
            at = parent;
        }
        Some(old)
    }

    /// Appends every message whose topic `filter` matches (§4.7; a `+` or `#` at the first
    /// level does not match a topic starting with `$`, [MQTT-4.7.2-1]), in no order.
    pub(crate) fn matching(&self, filter: &str, out: &mut Vec<Arc<Message>>) {
        let levels: Vec<&str> = filter.split('/').collect();
        // (node, index of the filter level to match against its children)
        let mut pending = vec![(ROOT, 0usize)];
        // Whole subtrees a `#` matched.
        let mut subtrees = Vec::new();
        while let Some((at, depth)) = pending.pop() {
            let Some(node) = self.nodes.get(at) else {
                continue;
            };
            let Some(&level) = levels.get(depth) else {
                out.extend(node.message.iter().cloned());
                continue;
            };
            let visible = |text: &str| depth > 0 || !text.starts_with('$');
            match level {
                // `a/#` matches `a` itself, and everything below it.
                "#" => {
                    if at != ROOT {
                        out.extend(node.message.iter().cloned());
                    }
                    subtrees.extend(
                        node.children
                            .iter()
                            .filter(|(text, _)| visible(text))
                            .map(|(_, &child)| child),
                    );
                }
                "+" => pending.extend(
                    node.children
                        .iter()
                        .filter(|(text, _)| visible(text))
                        .map(|(_, &child)| (child, depth + 1)),
                ),
                literal => {
                    if let Some(&child) = node.children.get(literal) {
                        pending.push((child, depth + 1));
                    }
                }
            }
        }
        while let Some(at) = subtrees.pop() {
            let Some(node) = self.nodes.get(at) else {
                continue;
            };
            out.extend(node.message.iter().cloned());
            subtrees.extend(node.children.values().copied());
        }
    }

    /// Nodes in use (the root included), for tests.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use bulwark_proto::{PublishProperties, QoS, TopicFilter, TopicName};
    use bytes::Bytes;

    fn message(topic: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: PublishProperties::default(),
            expires_at: None,
            publisher: None,
        })
    }

    const TOPICS: &[&str] = &[
        "a",
        "a/b",
        "a/b/c",
        "a/c",
        "a//b",
        "/a",
        "/",
        "b",
        "$SYS/x",
        "$SYS",
        "$other/a/b",
        "a/$b",
        "x/y/z/w",
    ];

    fn store() -> RetainedStore {
        let mut store = RetainedStore::new();
        for topic in TOPICS {
            assert!(store.insert(message(topic)).is_none());
        }
        store
    }

    fn matched(store: &RetainedStore, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        store.matching(filter, &mut out);
        let mut topics: Vec<String> = out.iter().map(|m| m.topic.as_str().to_owned()).collect();
        topics.sort();
        topics
    }

    /// What the codec's own filter matching says, over every topic held.
    fn oracle(filter: &str) -> Vec<String> {
        let f = TopicFilter::new(filter).unwrap();
        let mut topics: Vec<String> = TOPICS
            .iter()
            .filter(|t| f.matches(&TopicName::new(t).unwrap()))
            .map(|t| (*t).to_owned())
            .collect();
        topics.sort();
        topics
    }

    #[test]
    fn matching_agrees_with_the_filter_rules() {
        let store = store();
        for filter in [
            "#",
            "+",
            "+/+",
            "a/#",
            "a/+",
            "a/+/c",
            "+/b",
            "/#",
            "/+",
            "+/#",
            "$SYS/#",
            "$SYS",
            "$SYS/+",
            "$other/+/b",
            "a/b",
            "a",
            "a//b",
            "a/+/b",
            "x/#",
            "x/y/z/w/#",
            "a/$b",
            "+/$b",
            "nothing/#",
        ] {
            assert_eq!(matched(&store, filter), oracle(filter), "filter {filter}");
        }
    }

    #[test]
    fn a_multi_level_wildcard_matches_its_parent_level() {
        let store = store();
        assert_eq!(matched(&store, "a/b/#"), ["a/b", "a/b/c"]);
        assert_eq!(matched(&store, "x/y/z/w/#"), ["x/y/z/w"]);
        // A node without a message of its own is no match.
        assert_eq!(matched(&store, "x/y/#"), ["x/y/z/w"]);
    }

    #[test]
    fn leading_wildcards_do_not_match_dollar_topics() {
        let store = store();
        let all = matched(&store, "#");
        assert!(all.iter().all(|t| !t.starts_with('$')));
        assert!(all.contains(&"a/$b".to_owned()));
        assert!(matched(&store, "+").iter().all(|t| !t.starts_with('$')));
        assert_eq!(matched(&store, "$SYS/#"), ["$SYS", "$SYS/x"]);
        assert_eq!(matched(&store, "+/$b"), ["a/$b"]);
    }

    #[test]
    fn insert_replaces_and_get_finds() {
        let mut store = RetainedStore::new();
        assert!(store.insert(message("a/b")).is_none());
        assert!(store.insert(message("a/b")).is_some());
        assert_eq!(store.len(), 1);
        assert!(store.contains("a/b"));
        assert!(!store.contains("a"));
        assert!(!store.contains("a/b/c"));
        assert_eq!(store.get("a/b").unwrap().topic.as_str(), "a/b");
    }

    #[test]
    fn removal_prunes_nodes_that_lead_nowhere() {
        let mut store = RetainedStore::new();
        store.insert(message("a/b/c/d"));
        store.insert(message("a/b"));
        store.insert(message("a/x"));
        assert_eq!(store.node_count(), 6);
        assert!(store.remove("a/b/c").is_none());
        assert!(store.remove("a/b/c/d").is_some());
        // `c` and `d` go; `a/b` holds a message.
        assert_eq!(store.node_count(), 4);
        assert!(store.remove("a/b").is_some());
        assert_eq!(store.node_count(), 3);
        assert!(store.remove("a/x").is_some());
        assert_eq!(store.node_count(), 1);
        assert_eq!(store.len(), 0);
        assert_eq!(matched(&store, "#"), Vec::<String>::new());
        // Freed slots are used again.
        store.insert(message("p/q"));
        assert_eq!(store.nodes.len(), 6);
        assert_eq!(matched(&store, "p/+"), ["p/q"]);
    }

    #[test]
    fn deep_topics_do_not_overflow_the_stack() {
        let deep = vec!["l"; 30_000].join("/");
        let mut store = RetainedStore::new();
        store.insert(message(&deep));
        assert_eq!(matched(&store, "#").len(), 1);
        assert_eq!(matched(&store, "l/#").len(), 1);
        assert!(store.remove(&deep).is_some());
        assert_eq!(store.node_count(), 1);
        store.insert(message(&deep));
        drop(store);
    }
}
