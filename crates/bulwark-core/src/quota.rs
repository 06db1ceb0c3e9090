//! Per-user quotas inside the engine: subscriptions and retained messages counted by the
//! user their session belongs to, and the retained store's bytes in all.

use std::collections::HashMap;
use std::sync::Arc;

/// What the quotas count. Users are the owners of sessions (anonymous sessions count for
/// nobody: their totals are bounded by the per-session and global limits alone).
#[derive(Debug, Default)]
pub(crate) struct Quotas {
    subscriptions: HashMap<Arc<str>, usize>,
    /// Per user: retained messages and their bytes.
    retained: HashMap<Arc<str>, (usize, usize)>,
    /// Per retained topic: who stored it, and what it costs.
    retained_owner: HashMap<Box<str>, (Option<Arc<str>>, usize)>,
    retained_bytes: usize,
}

impl Quotas {
    pub(crate) fn subscriptions_of(&self, user: &str) -> usize {
        self.subscriptions.get(user).copied().unwrap_or(0)
    }

    /// Adds `n` subscriptions to (or, negative, removes them from) `user`'s count.
    pub(crate) fn add_subscriptions(&mut self, user: &Arc<str>, n: isize) {
        let count = self.subscriptions.entry(user.clone()).or_default();
        *count = count.saturating_add_signed(n);
        if *count == 0 {
            self.subscriptions.remove(user);
        }
    }

    /// Retained bytes in all.
    pub(crate) fn retained_bytes(&self) -> usize {
        self.retained_bytes
    }

    /// What `user` would hold (messages, bytes) once a retained message of `cost` bytes
    /// replaces whatever `topic` holds now; and the broker in all, in bytes.
    pub(crate) fn after_store(
        &self,
        topic: &str,
        cost: usize,
        user: Option<&Arc<str>>,
    ) -> ((usize, usize), usize) {
        let old = self.retained_owner.get(topic);
        let old_bytes = old.map_or(0, |(_, b)| *b);
        let total = self.retained_bytes - old_bytes.min(self.retained_bytes) + cost;
        let Some(user) = user else {
            return ((0, 0), total);
        };
        let (mut count, mut bytes) = self.retained.get(user).copied().unwrap_or((0, 0));
        if let Some((Some(owner), b)) = old
            && owner == user
        {
            count = count.saturating_sub(1);
            bytes = bytes.saturating_sub(*b);
        }
        ((count + 1, bytes + cost), total)
    }

    /// `topic` now holds a retained message of `cost` bytes stored by `user`.
    pub(crate) fn stored(&mut self, topic: &str, cost: usize, user: Option<Arc<str>>) {
        self.removed(topic);
        if let Some(user) = &user {
            let entry = self.retained.entry(user.clone()).or_default();
            entry.0 += 1;
            entry.1 += cost;
        }
        self.retained_bytes += cost;
        self.retained_owner.insert(topic.into(), (user, cost));
    }

    /// The user the message retained on `topic` counts against.
    pub(crate) fn retained_owner(&self, topic: &str) -> Option<Arc<str>> {
        self.retained_owner
            .get(topic)
            .and_then(|(user, _)| user.clone())
    }

    /// `topic` no longer holds a retained message.
    pub(crate) fn removed(&mut self, topic: &str) {
        let Some((user, cost)) = self.retained_owner.remove(topic) else {
            return;
        };
        self.retained_bytes = self.retained_bytes.saturating_sub(cost);
        if let Some(user) = user
            && let Some(entry) = self.retained.get_mut(&user)
        {
            entry.0 = entry.0.saturating_sub(1);
            entry.1 = entry.1.saturating_sub(cost);
            if entry.0 == 0 {
                self.retained.remove(&user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retained_counts_follow_replacements() {
        let mut q = Quotas::default();
        let alice: Arc<str> = Arc::from("alice");
        let bob: Arc<str> = Arc::from("bob");
        assert_eq!(q.after_store("a", 10, Some(&alice)), ((1, 10), 10));
        q.stored("a", 10, Some(alice.clone()));
        // Alice replacing her own message: still one.
        assert_eq!(q.after_store("a", 4, Some(&alice)), ((1, 4), 4));
        // Bob taking the topic over: his first, alice keeps hers until it is replaced.
        assert_eq!(q.after_store("a", 4, Some(&bob)), ((1, 4), 4));
        q.stored("a", 4, Some(bob.clone()));
        assert_eq!(q.after_store("b", 1, Some(&alice)), ((1, 1), 5));
        q.removed("a");
        assert_eq!(q.retained_bytes(), 0);
        assert!(q.retained.is_empty() && q.retained_owner.is_empty());
        q.add_subscriptions(&alice, 3);
        q.add_subscriptions(&alice, -3);
        assert_eq!(q.subscriptions_of("alice"), 0);
        assert!(q.subscriptions.is_empty());
    }
}
