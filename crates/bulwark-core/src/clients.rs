//! The sessions and connections tables ([`Clients`]): every connected client's engine state,
//! which session each connection serves, which session a client identifier names and which
//! user owns it, and the sessions whose client is away.

use std::collections::HashMap;
use std::sync::Arc;

use bulwark_proto::{Encoder, ProtocolVersion, QoS, Will};

use crate::authz::ConnAuthz;
use crate::message::Message;
use crate::output::Aliases;
use crate::parked::ParkedSessions;
use crate::session::Session;

/// Identifies one network connection, chosen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Identifies one session for as long as it lives (across reconnections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(pub u64);

/// Engine state of one connected client.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) session: Session,
    pub(crate) version: ProtocolVersion,
    /// Encodes nothing: it knows the client's Maximum Packet Size, for size checks.
    pub(crate) encoder: Encoder,
    pub(crate) send_window: usize,
    pub(crate) alias_max_out: u16,
    /// Created at the first alias either way: most connections never use one.
    pub(crate) aliases: Option<Box<Aliases>>,
    pub(crate) problem_information: bool,
    /// Boxed: most clients have none, and every connection pays for the field.
    pub(crate) will: Option<Box<Will>>,
    pub(crate) connect_expiry_was_zero: bool,
    pub(crate) authz: ConnAuthz,
}

impl Conn {
    pub(crate) fn is_v5(&self) -> bool {
        self.version.is_v5()
    }
}

/// The engine's tables of clients and sessions.
#[derive(Debug)]
pub(crate) struct Clients {
    /// Boxed values: the table holds pointers, so its spare capacity costs 16 bytes a slot
    /// rather than a whole connection's state.
    pub(crate) conns: HashMap<ConnectionId, Box<Conn>>,
    /// The connection of each connected session.
    pub(crate) online: HashMap<SessionKey, ConnectionId>,
    /// Every session, connected or parked, by client identifier.
    pub(crate) client_ids: HashMap<Arc<str>, SessionKey>,
    /// The user each session belongs to (`None`: an anonymous client's): nobody else may
    /// take it over or resume it.
    pub(crate) owners: HashMap<SessionKey, Option<Arc<str>>>,
    /// Sessions whose client is away.
    pub(crate) parked: ParkedSessions,
    next_session: u64,
    next_assigned_id: u64,
}

impl Default for Clients {
    fn default() -> Self {
        Self {
            conns: HashMap::new(),
            online: HashMap::new(),
            client_ids: HashMap::new(),
            owners: HashMap::new(),
            parked: ParkedSessions::new(),
            next_session: 1,
            next_assigned_id: 1,
        }
    }
}

impl Clients {
    /// A client identifier no session has, for a client that sent none.
    pub(crate) fn assign_client_id(&mut self) -> Arc<str> {
        loop {
            let id: Arc<str> = Arc::from(format!("bulwark-{:016x}", self.next_assigned_id));
            self.next_assigned_id += 1;
            if !self.client_ids.contains_key(&id) {
                return id;
            }
        }
    }

    /// A new, empty session for `client_id`, named by it from now on.
    pub(crate) fn new_session(&mut self, client_id: Arc<str>, expiry: u32) -> Session {
        let key = SessionKey(self.next_session);
        self.next_session += 1;
        self.client_ids.insert(client_id.clone(), key);
        Session::new(key, client_id, expiry)
    }

    /// The user a session belongs to (`None`: an anonymous client's).
    pub(crate) fn owner_of(&self, key: SessionKey) -> Option<Arc<str>> {
        self.owners.get(&key).cloned().flatten()
    }

    /// The session `key`, connected or parked.
    pub(crate) fn session(&self, key: SessionKey) -> Option<&Session> {
        match self.online.get(&key) {
            Some(conn) => self.conns.get(conn).map(|c| &c.session),
            None => self.parked.get(key),
        }
    }

    /// The session `client_id` names, connected or parked.
    pub(crate) fn session_named(&self, client_id: &str) -> Option<&Session> {
        self.session(*self.client_ids.get(client_id)?)
    }

    /// The live connection of the session `client_id` names, if it has one.
    pub(crate) fn live_connection(&self, client_id: &str) -> Option<ConnectionId> {
        let key = self.client_ids.get(client_id)?;
        self.online.get(key).copied()
    }

    /// Whether the connected client of `session` may receive `message` under its ACL's
    /// carve-outs. A parked session's messages are queued: what its client may not receive
    /// is dropped from the queue when it is back.
    #[inline]
    pub(crate) fn may_receive(&self, session: SessionKey, message: &Message) -> bool {
        self.online
            .get(&session)
            .and_then(|c| self.conns.get(c))
            .and_then(|c| c.authz.acl())
            .is_none_or(|acl| acl.may_receive(message.topic.as_str()))
    }

    /// Sessions recorded for the durable store, and the QoS 1/2 messages they hold (queued
    /// and in flight).
    pub(crate) fn journaled(&self) -> (usize, usize) {
        let (mut sessions, mut messages) = (0, 0);
        for key in self.client_ids.values() {
            let Some(session) = self.session(*key) else {
                continue;
            };
            if session.is_journaled() {
                sessions += 1;
                messages += session.inflight.len()
                    + session
                        .queue
                        .iter()
                        .filter(|d| d.qos != QoS::AtMostOnce)
                        .count();
            }
        }
        (sessions, messages)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn assigned_identifiers_skip_those_in_use_and_sessions_are_found_by_name() {
        let mut clients = Clients::default();
        clients
            .client_ids
            .insert(Arc::from("bulwark-0000000000000001"), SessionKey(99));
        assert_eq!(&*clients.assign_client_id(), "bulwark-0000000000000002");
        let session = clients.new_session("c".into(), 10);
        assert_eq!(session.key, SessionKey(1));
        assert!(clients.session_named("c").is_none());
        clients.parked.park(session, None);
        assert_eq!(clients.session_named("c").unwrap().expiry_interval, 10);
        assert_eq!(clients.live_connection("c"), None);
        clients.owners.insert(SessionKey(1), Some("alice".into()));
        assert_eq!(clients.owner_of(SessionKey(1)).as_deref(), Some("alice"));
        assert_eq!(clients.journaled(), (0, 0));
    }
}
