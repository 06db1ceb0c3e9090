//! Where sessions wait while their client is away, in memory: the [`SessionStore`] trait and
//! `MemoryStore`. Durability does not go through this trait: the engine records every change
//! of a persistent session in its journal (`persist`), and `bulwark-store` commits that.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::time::Instant;

use crate::SessionKey;
use crate::message::Delivery;
use crate::session::{QueueFull, QueueLimits, Session};

/// Keeps parked sessions: those whose client disconnected and whose expiry has not run out.
///
/// The engine parks a session when its connection ends, queues messages for it while it is
/// parked, and takes it back when its client reconnects or when it expires.
pub trait SessionStore: Debug + Send {
    /// Keeps `session` until `expires_at` (`None`: until taken).
    fn park(&mut self, session: Session, expires_at: Option<Instant>);
    /// Takes a parked session out (its client is back, or it is being discarded).
    fn take(&mut self, key: SessionKey) -> Option<Session>;
    /// Queues a message for a parked session, as [`Session::enqueue`] does: `Ok(Some(n))`
    /// when queued with `n` older messages dropped for it, `Ok(None)` if no such session is
    /// parked.
    fn enqueue(
        &mut self,
        key: SessionKey,
        delivery: Delivery,
        limits: QueueLimits,
    ) -> Result<Option<usize>, QueueFull>;
    /// Reads a parked session.
    fn get(&self, key: SessionKey) -> Option<&Session>;
    /// Removes and returns every session whose expiry is at or before `now`.
    fn take_expired(&mut self, now: Instant) -> Vec<Session>;
    /// The earliest expiry among parked sessions.
    fn next_expiry(&self) -> Option<Instant>;
    /// Drops queued messages of parked sessions, the largest queues first and oldest
    /// messages first (only QoS 0 ones if `qos0_only`), until `want` bytes are freed; returns
    /// the messages and bytes dropped.
    fn shed(&mut self, want: usize, qos0_only: bool) -> (usize, usize);
    /// Parked sessions.
    fn len(&self) -> usize;
    /// Whether no session is parked.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parked sessions in memory: lost when the process ends.
#[derive(Debug, Default)]
pub struct MemoryStore {
    sessions: HashMap<SessionKey, (Session, Option<Instant>)>,
    expiries: BTreeSet<(Instant, SessionKey)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl SessionStore for MemoryStore {
    fn park(&mut self, session: Session, expires_at: Option<Instant>) {
        let key = session.key;
        if let Some(at) = expires_at {
            self.expiries.insert((at, key));
        }
        if let Some((_, Some(old))) = self.sessions.insert(key, (session, expires_at)) {
            self.expiries.remove(&(old, key));
        }
    }

    fn take(&mut self, key: SessionKey) -> Option<Session> {
        let (session, expires_at) = self.sessions.remove(&key)?;
        if let Some(at) = expires_at {
            self.expiries.remove(&(at, key));
        }
        Some(session)
    }

    fn enqueue(
        &mut self,
        key: SessionKey,
        delivery: Delivery,
        limits: QueueLimits,
    ) -> Result<Option<usize>, QueueFull> {
        match self.sessions.get_mut(&key) {
            Some((session, _)) => session.enqueue(delivery, limits).map(Some),
            None => Ok(None),
        }
    }

    fn get(&self, key: SessionKey) -> Option<&Session> {
        self.sessions.get(&key).map(|(session, _)| session)
    }

    fn take_expired(&mut self, now: Instant) -> Vec<Session> {
        let mut expired = Vec::new();
        while let Some(&(at, key)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            if let Some((session, _)) = self.sessions.remove(&key) {
                expired.push(session);
            }
        }
        expired
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.expiries.first().map(|&(at, _)| at)
    }

    fn shed(&mut self, want: usize, qos0_only: bool) -> (usize, usize) {
        let mut order: Vec<(usize, SessionKey)> = self
            .sessions
            .iter()
            .map(|(k, (s, _))| (s.queued_bytes(), *k))
            .filter(|(b, _)| *b > 0)
            .collect();
        order.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        let (mut messages, mut bytes) = (0, 0);
        for (_, key) in order {
            if bytes >= want {
                break;
            }
            if let Some((session, _)) = self.sessions.get_mut(&key) {
                let (m, b) = session.shed(want - bytes, qos0_only);
                messages += m;
                bytes += b;
            }
        }
        (messages, bytes)
    }

    fn len(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parked_sessions_expire_in_order_and_take_removes_the_expiry() {
        let now = Instant::now();
        let mut store = MemoryStore::new();
        store.park(
            Session::new(SessionKey(1), "a".into(), 10),
            Some(now + Duration::from_secs(10)),
        );
        store.park(
            Session::new(SessionKey(2), "b".into(), 5),
            Some(now + Duration::from_secs(5)),
        );
        store.park(Session::new(SessionKey(3), "c".into(), u32::MAX), None);
        assert_eq!(store.next_expiry(), Some(now + Duration::from_secs(5)));
        assert!(store.take(SessionKey(2)).is_some());
        assert_eq!(store.next_expiry(), Some(now + Duration::from_secs(10)));
        assert!(store.take_expired(now + Duration::from_secs(9)).is_empty());
        let expired = store.take_expired(now + Duration::from_secs(10));
        assert_eq!(expired.len(), 1);
        assert_eq!(&*expired.first().unwrap().client_id, "a");
        assert_eq!(store.len(), 1);
        assert_eq!(store.next_expiry(), None);
    }
}
