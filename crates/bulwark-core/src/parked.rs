//! Where sessions wait while their client is away: [`ParkedSessions`], in memory. Durability
//! is not kept here: the engine records every change of a persistent session in its journal
//! (`persist`), and `bulwark-store` commits that.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use crate::SessionKey;
use crate::message::Delivery;
use crate::persist::Journal;
use crate::session::{QueueFull, QueueLimits, Session};

/// Keeps parked sessions: those whose client disconnected and whose expiry has not run out.
///
/// The engine parks a session when its connection ends, queues messages for it while it is
/// parked, and takes it back when its client reconnects or when it expires.
#[derive(Debug, Default)]
pub(crate) struct ParkedSessions {
    sessions: HashMap<SessionKey, (Session, Option<Instant>)>,
    expiries: BTreeSet<(Instant, SessionKey)>,
}

impl ParkedSessions {
    /// An empty store.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Keeps `session` until `expires_at` (`None`: until taken).
    pub(crate) fn park(&mut self, session: Session, expires_at: Option<Instant>) {
        let key = session.key;
        if let Some(at) = expires_at {
            self.expiries.insert((at, key));
        }
        if let Some((_, Some(old))) = self.sessions.insert(key, (session, expires_at)) {
            self.expiries.remove(&(old, key));
        }
    }

    /// Every parked session, in no order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values().map(|(session, _)| session)
    }

    /// Takes a parked session out (its client is back, or it is being discarded).
    pub(crate) fn take(&mut self, key: SessionKey) -> Option<Session> {
        let (session, expires_at) = self.sessions.remove(&key)?;
        if let Some(at) = expires_at {
            self.expiries.remove(&(at, key));
        }
        Some(session)
    }

    /// Queues a message for a parked session, as [`Session::enqueue`] does: `Ok(Some(n))`
    /// when queued with `n` older messages dropped for it, `Ok(None)` if no such session is
    /// parked.
    pub(crate) fn enqueue(
        &mut self,
        journal: &mut Journal,
        key: SessionKey,
        delivery: Delivery,
        limits: QueueLimits,
    ) -> Result<Option<usize>, QueueFull> {
        match self.sessions.get_mut(&key) {
            Some((session, _)) => session.enqueue(journal, delivery, limits).map(Some),
            None => Ok(None),
        }
    }

    /// Reads a parked session.
    pub(crate) fn get(&self, key: SessionKey) -> Option<&Session> {
        self.sessions.get(&key).map(|(session, _)| session)
    }

    /// Removes and returns every session whose expiry is at or before `now`.
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<Session> {
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

    /// The earliest expiry among parked sessions.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.expiries.first().map(|&(at, _)| at)
    }

    /// Drops queued messages of parked sessions, the largest queues first and oldest
    /// messages first (only QoS 0 ones if `qos0_only`), until `want` bytes are freed; returns
    /// the messages and bytes dropped.
    pub(crate) fn shed(
        &mut self,
        journal: &mut Journal,
        want: usize,
        qos0_only: bool,
    ) -> (usize, usize) {
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
                let (m, b) = session.shed(journal, want - bytes, qos0_only);
                messages += m;
                bytes += b;
            }
        }
        (messages, bytes)
    }

    /// Parked sessions.
    #[cfg(test)]
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
        let mut store = ParkedSessions::new();
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
