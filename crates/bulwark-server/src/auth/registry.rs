//! The live-connection registry: every authenticated connection (who, from where, on which
//! listener, under which client id), each user's, the per-user connection cap, and the
//! lookups that pick connections to close: by a predicate over address, username and client
//! id (ban list reloads), and the store users removed or disabled by a password store reload.
//!
//! One lock holds the table. A registration's "is the user still there" check and a store
//! reload's scan run under it, so that a login that straddles a reload is either closed by the
//! reload or refused at registration (see [`Registry::register`] and [`Registry::sweep`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bulwark_acl::event::{EventKind, SecurityEvent};
use bulwark_core::ConnectionId;

use super::NotRegistered;
use crate::sync::lock;

/// The live, authenticated connections, behind one lock.
#[derive(Debug)]
pub(super) struct Registry {
    /// Connections one username may have open at once; 0: no cap.
    max_per_user: usize,
    table: Mutex<Table>,
}

/// What the lock of [`Registry`] holds.
#[derive(Debug, Default)]
struct Table {
    conns: HashMap<ConnectionId, Live>,
    by_user: HashMap<Arc<str>, HashSet<ConnectionId>>,
}

/// A live, authenticated connection.
#[derive(Debug, Clone)]
pub(super) struct Live {
    pub(super) username: Option<Arc<str>>,
    /// Whether it was authenticated as a user of the password store.
    pub(super) in_store: bool,
    pub(super) listener: Arc<str>,
    pub(super) peer: SocketAddr,
    pub(super) client_id: String,
}

impl Registry {
    /// An empty registry with this per-user cap (0: none).
    pub(super) fn new(max_per_user: usize) -> Self {
        Self {
            max_per_user,
            table: Mutex::new(Table::default()),
        }
    }

    /// Registers `conn`. Refused if its store user is no longer `active` (asked under the
    /// registry's lock, which a store reload's [`sweep`](Self::sweep) holds too), or if its
    /// user already has `max_per_user` connections other than the one with the same client
    /// id (which this one is about to take over).
    pub(super) fn register(
        &self,
        conn: ConnectionId,
        live: Live,
        active: impl FnOnce(&str) -> bool,
    ) -> Result<(), NotRegistered> {
        let mut table = lock(&self.table);
        if live.in_store
            && let Some(name) = live.username.as_deref()
            && !active(name)
        {
            return Err(NotRegistered::Gone);
        }
        if let Some(name) = &live.username {
            if self.max_per_user > 0 {
                let theirs = table.by_user.get(name);
                let count = theirs.map_or(0, HashSet::len);
                // Only at the cap are they looked at: one with the same client id is about to
                // be taken over and is not counted. (Looking at every one on every login made
                // a fleet sharing a username log in in quadratic time.)
                let taken_over = count >= self.max_per_user
                    && !live.client_id.is_empty()
                    && theirs.is_some_and(|theirs| {
                        theirs.iter().any(|c| {
                            table
                                .conns
                                .get(c)
                                .is_some_and(|l| l.client_id == live.client_id)
                        })
                    });
                if count - usize::from(taken_over) >= self.max_per_user {
                    return Err(NotRegistered::Quota);
                }
            }
            table.by_user.entry(name.clone()).or_default().insert(conn);
        }
        table.conns.insert(conn, live);
        Ok(())
    }

    /// Forgets a connection that ended; what was known of it, if it was registered.
    pub(super) fn unregister(&self, conn: ConnectionId) -> Option<Live> {
        let mut table = lock(&self.table);
        let gone = table.conns.remove(&conn)?;
        if let Some(name) = &gone.username
            && let Some(theirs) = table.by_user.get_mut(name)
        {
            theirs.remove(&conn);
            if theirs.is_empty() {
                table.by_user.remove(name);
            }
        }
        Some(gone)
    }

    /// The live connections whose address, username and client id `hit` picks.
    pub(super) fn matching(
        &self,
        hit: impl Fn(IpAddr, Option<&str>, &str) -> bool,
    ) -> Vec<ConnectionId> {
        lock(&self.table)
            .conns
            .iter()
            .filter(|(_, l)| hit(l.peer.ip(), l.username.as_deref(), &l.client_id))
            .map(|(conn, _)| *conn)
            .collect()
    }

    /// The first `limit` live connections by client id after `after` that `hit` picks,
    /// sorted by client id (then connection), each with what is known of it. Only the page
    /// is copied: the table is walked once under the lock, keeping the `limit` smallest.
    pub(super) fn page(
        &self,
        after: Option<&str>,
        limit: usize,
        hit: impl Fn(&Live) -> bool,
    ) -> Vec<(ConnectionId, Live)> {
        let table = lock(&self.table);
        let mut best: std::collections::BTreeMap<(&str, ConnectionId), &Live> =
            std::collections::BTreeMap::new();
        for (conn, live) in &table.conns {
            if after.is_some_and(|a| live.client_id.as_str() <= a) || !hit(live) {
                continue;
            }
            let key = (live.client_id.as_str(), *conn);
            if best.len() == limit {
                match best.last_key_value() {
                    Some((last, _)) if key < *last => {
                        best.pop_last();
                    }
                    _ => continue,
                }
            }
            best.insert(key, live);
        }
        best.into_iter()
            .map(|((_, conn), live)| (conn, live.clone()))
            .collect()
    }

    /// Sets the client identifier of `conn` (one the engine assigned).
    pub(super) fn set_client_id(&self, conn: ConnectionId, id: &str) {
        if let Some(live) = lock(&self.table).conns.get_mut(&conn) {
            id.clone_into(&mut live.client_id);
        }
    }

    /// Live connections per listener.
    pub(super) fn per_listener(&self) -> Vec<(Arc<str>, usize)> {
        let mut counts: HashMap<Arc<str>, usize> = HashMap::new();
        for live in lock(&self.table).conns.values() {
            *counts.entry(live.listener.clone()).or_default() += 1;
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort();
        counts
    }

    /// Runs `replace` (a store reload putting its new store in force) under the registry's
    /// lock, and returns the live connections of store users that the predicate it returns
    /// calls gone (removed or disabled): no registration can slip between the two.
    pub(super) fn sweep<G: Fn(&str) -> bool>(
        &self,
        replace: impl FnOnce() -> G,
    ) -> Vec<ConnectionId> {
        let table = lock(&self.table);
        let gone = replace();
        table
            .conns
            .iter()
            .filter(|(_, l)| l.in_store && l.username.as_deref().is_some_and(&gone))
            .map(|(conn, _)| *conn)
            .collect()
    }

    /// A forced disconnect of `conn` as a security event, with what is known of it.
    /// A live connection's client id and username.
    pub(super) fn who(&self, conn: ConnectionId) -> Option<(Arc<str>, Option<Arc<str>>)> {
        lock(&self.table)
            .conns
            .get(&conn)
            .map(|l| (Arc::from(l.client_id.as_str()), l.username.clone()))
    }

    pub(super) fn disconnect_event(&self, conn: ConnectionId, reason: &str) -> SecurityEvent {
        let mut event = SecurityEvent::new(EventKind::ForcedDisconnect, SystemTime::now());
        event.reason = Some(reason.to_owned());
        if let Some(l) = lock(&self.table).conns.get(&conn) {
            event.listener = Some(l.listener.to_string());
            event.remote = Some(l.peer.to_string());
            event.client_id = (!l.client_id.is_empty()).then(|| l.client_id.clone());
            event.username = l.username.as_deref().map(str::to_owned);
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(user: Option<&str>, client_id: &str, peer: &str, in_store: bool) -> Live {
        Live {
            username: user.map(Arc::from),
            in_store,
            listener: Arc::from("mqtt"),
            peer: peer.parse().unwrap(),
            client_id: client_id.into(),
        }
    }

    fn sorted(mut conns: Vec<ConnectionId>) -> Vec<ConnectionId> {
        conns.sort_unstable();
        conns
    }

    #[test]
    fn a_user_gone_during_the_login_is_not_registered() {
        let registry = Registry::new(0);
        let alice = live(Some("alice"), "a", "192.0.2.1:1", true);
        assert_eq!(
            registry.register(ConnectionId(1), alice.clone(), |_| false),
            Err(NotRegistered::Gone)
        );
        assert!(registry.matching(|_, _, _| true).is_empty());
        // A user from elsewhere (a certificate, a token) is not the store's to remove.
        let outsider = live(Some("alice"), "a", "192.0.2.1:1", false);
        assert_eq!(
            registry.register(ConnectionId(1), outsider, |_| false),
            Ok(())
        );
        assert_eq!(registry.register(ConnectionId(2), alice, |_| true), Ok(()));
    }

    #[test]
    fn the_per_user_cap_counts_other_client_ids_only() {
        let registry = Registry::new(2);
        let peer = "192.0.2.1:1";
        for (conn, id) in [(1, "a"), (2, "b")] {
            let entry = live(Some("alice"), id, peer, true);
            registry
                .register(ConnectionId(conn), entry, |_| true)
                .unwrap();
        }
        let third = live(Some("alice"), "c", peer, true);
        assert_eq!(
            registry.register(ConnectionId(3), third.clone(), |_| true),
            Err(NotRegistered::Quota)
        );
        // Taking over "a" is not a third connection.
        let again = live(Some("alice"), "a", peer, true);
        assert_eq!(registry.register(ConnectionId(4), again, |_| true), Ok(()));
        // An empty client id takes nothing over.
        let nameless = live(Some("alice"), "", peer, true);
        assert_eq!(
            registry.register(ConnectionId(5), nameless, |_| true),
            Err(NotRegistered::Quota)
        );
        // Another user has a cap of its own; anonymous clients have none.
        let bob = live(Some("bob"), "c", peer, true);
        assert_eq!(registry.register(ConnectionId(6), bob, |_| true), Ok(()));
        for conn in 7..10 {
            let anonymous = live(None, "", peer, false);
            assert_eq!(
                registry.register(ConnectionId(conn), anonymous, |_| true),
                Ok(())
            );
        }
        // Once connections end, there is room again.
        registry.unregister(ConnectionId(1));
        registry.unregister(ConnectionId(4));
        registry.unregister(ConnectionId(4));
        assert_eq!(registry.register(ConnectionId(3), third, |_| true), Ok(()));
    }

    #[test]
    fn a_store_reload_picks_the_live_connections_of_users_it_removed_or_disabled() {
        let registry = Registry::new(0);
        let entries = [
            (1, live(Some("alice"), "a1", "192.0.2.1:1", true)),
            (2, live(Some("alice"), "a2", "192.0.2.2:1", true)),
            (3, live(Some("bob"), "b", "192.0.2.3:1", true)),
            // Authenticated by a certificate the store does not know: not the store's.
            (4, live(Some("alice"), "cert", "192.0.2.4:1", false)),
            (5, live(None, "anon", "192.0.2.5:1", false)),
        ];
        for (conn, entry) in entries {
            registry
                .register(ConnectionId(conn), entry, |_| true)
                .unwrap();
        }
        let mut replaced = false;
        let gone = registry.sweep(|| {
            replaced = true;
            |name: &str| name == "alice"
        });
        assert!(replaced);
        assert_eq!(sorted(gone), [ConnectionId(1), ConnectionId(2)]);
        assert!(registry.sweep(|| |_: &str| false).is_empty());
    }

    #[test]
    fn connections_are_picked_by_address_user_and_client_id() {
        let registry = Registry::new(0);
        registry
            .register(
                ConnectionId(1),
                live(Some("alice"), "a", "192.0.2.1:1", true),
                |_| true,
            )
            .unwrap();
        registry
            .register(
                ConnectionId(2),
                live(None, "sensor-7", "198.51.100.9:1", false),
                |_| true,
            )
            .unwrap();
        let from: IpAddr = "198.51.100.9".parse().unwrap();
        assert_eq!(registry.matching(|ip, _, _| ip == from), [ConnectionId(2)]);
        assert_eq!(
            registry.matching(|_, user, _| user == Some("alice")),
            [ConnectionId(1)]
        );
        assert_eq!(
            registry.matching(|_, _, id| id == "sensor-7"),
            [ConnectionId(2)]
        );
        registry.unregister(ConnectionId(2));
        assert!(registry.matching(|_, _, id| id == "sensor-7").is_empty());
    }

    #[test]
    fn a_forced_disconnect_event_says_who_was_closed() {
        let registry = Registry::new(0);
        registry
            .register(
                ConnectionId(1),
                live(Some("alice"), "a", "192.0.2.1:1883", true),
                |_| true,
            )
            .unwrap();
        let event = registry.disconnect_event(ConnectionId(1), "user removed");
        assert_eq!(event.kind, EventKind::ForcedDisconnect);
        assert_eq!(event.reason.as_deref(), Some("user removed"));
        assert_eq!(event.username.as_deref(), Some("alice"));
        assert_eq!(event.client_id.as_deref(), Some("a"));
        assert_eq!(event.remote.as_deref(), Some("192.0.2.1:1883"));
        assert_eq!(event.listener.as_deref(), Some("mqtt"));
        // One already gone still gets its event, with the reason only.
        let unknown = registry.disconnect_event(ConnectionId(9), "revoked");
        assert!(unknown.username.is_none() && unknown.remote.is_none());
    }
}
