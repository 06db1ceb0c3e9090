//! The engine: one [`Broker`] owns every session, subscription, retained message and pending
//! will, and turns packets from clients into packets for clients.
//!
//! `Broker` keeps the loop (`handle_*` in, `poll_*` out, timeouts) and delegates to parts
//! that own their state: [`crate::clients::Clients`] (connections, sessions, client
//! identifiers and owners), [`crate::routing::Routing`] (subscription index, shared groups,
//! retained trie), [`crate::wills::Wills`], [`crate::output::Bodies`] (shared PUBLISH bodies)
//! and each connection's [`crate::output::Aliases`], [`crate::authz::Reports`] (events,
//! offences, slow-consumer reports), [`crate::stats::Sys`], and the CONNECT checks of
//! [`crate::connect`]. Its own methods are split by direction: `lifecycle` (CONNECT, the end of
//! a session, wills), `inbound` (what clients send after CONNECT), `delivery` (what goes to
//! them) and `durable` (the journal, and what a store brings back).

use std::collections::VecDeque;
use std::mem;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_acl::event::EventKind;
use bulwark_acl::{AclRules, Principal};
use bulwark_proto::{
    AckProperties, Connect, Disconnect, Encoder, MqttString, Packet, PacketId, ProtocolVersion,
    PubAck, PubComp, PubRec, PubRel, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    SubscriptionId, TopicFilter, TopicName, UnsubAck, Unsubscribe,
};

use crate::authz::{AuthzEvent, ConnAuthz, Reports};
use crate::clients::{Clients, Conn, ConnectionId, SessionKey};
use crate::config::{BrokerConfig, DeniedPublish};
use crate::connect::{self, Checked, ConnackFields, ConnectAuth};
use crate::message::{Delivery, GroupKey, Inflight, Message, OutState};
use crate::output::{Accepted, OutgoingPublish, Output};
use crate::output::{Bodies, build_publish};
use crate::persist::{Journal, Restored, SessionRecord, StoreOp, WillRecord};
use crate::quota::Quotas;
use crate::routing::Routing;
use crate::session::{QueueLimits, Session};
use crate::stats::{Gauges, Stats, Sys};
use crate::subscription::SubscriptionRecord;
use crate::wills::{PendingWill, Wills, will_delay, will_message};

mod admin;
mod delivery;
mod durable;
mod inbound;
mod lifecycle;

pub use admin::{
    AclPreviewStep, DeleteSession, QueueTotals, RetainedSummary, Revocation, SessionSummary,
    SubscriptionEntry,
};
use lifecycle::take_shared;

/// One session as an operator sees it ([`Broker::session_view`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// The protocol of its connection; `None` while its client is away.
    pub version: Option<ProtocolVersion>,
    /// Its subscriptions (full filter text, granted QoS), sorted.
    pub subscriptions: Vec<(String, QoS)>,
    /// Messages waiting to be sent.
    pub queued_messages: usize,
    /// Bytes of the messages waiting.
    pub queued_bytes: usize,
    /// QoS 1 and 2 messages sent and not completed.
    pub inflight: usize,
    /// Session Expiry Interval, in seconds (`u32::MAX`: never).
    pub expiry_interval: u32,
}

/// The broker engine, sans I/O.
///
/// Call order: [`Broker::handle_connect`] with a connection's decoded CONNECT, then
/// [`Broker::handle_packet`] for each later packet, and [`Broker::handle_connection_lost`] when
/// the connection ends without a DISCONNECT (or after a decode error the driver answered).
/// After any of these, drain [`Broker::poll_output`]. Call [`Broker::handle_timeout`] when the
/// instant from [`Broker::poll_timeout`] passes. Time is always an argument: the engine reads
/// no clock.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    sys: Sys,
    /// Connections, sessions, client identifiers and their owners.
    clients: Clients,
    routing: Routing,
    wills: Wills,
    outputs: VecDeque<(ConnectionId, Output)>,
    stats: Stats,
    /// Bodies shared within the current `publish_message`; empty outside it.
    bodies: Bodies,
    shutting_down: bool,
    /// The ACL in force; `None`: no authorization, everything is allowed.
    acl: Option<Arc<AclRules>>,
    reports: Reports,
    quotas: Quotas,
    /// Where changes for the durable store go; off without one.
    journal: Journal,
    /// Connections whose persistent session's own state changed this round.
    dirty: Vec<ConnectionId>,
}

impl Broker {
    /// An engine with no sessions.
    pub fn new(config: BrokerConfig, now: Instant) -> Self {
        let sys_interval = config.sys_interval;
        Self {
            config,
            sys: Sys::new(sys_interval, now),
            clients: Clients::default(),
            routing: Routing::default(),
            wills: Wills::default(),
            outputs: VecDeque::new(),
            stats: Stats::default(),
            bodies: Bodies::default(),
            shutting_down: false,
            acl: None,
            reports: Reports::default(),
            quotas: Quotas::default(),
            journal: Journal::off(),
            dirty: Vec::new(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Counters since start.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The live connection of the session `client_id` names, if it has one: the connection a
    /// CONNECT with that identifier would take over.
    pub fn live_connection(&self, client_id: &str) -> Option<ConnectionId> {
        self.clients.live_connection(client_id)
    }

    /// Whether the session `client_id` names is in the durable store (live or parked): a
    /// CONNECT that ends it (Clean Start 1) must tell the store so.
    pub fn holds_stored_session(&self, client_id: &str) -> bool {
        self.clients
            .session_named(client_id)
            .is_some_and(Session::is_journaled)
    }

    /// Whether `conn` is a connection the engine accepted and has not closed.
    pub fn is_live(&self, conn: ConnectionId) -> bool {
        self.clients.conns.contains_key(&conn)
    }

    /// Connected clients.
    pub fn connected(&self) -> usize {
        self.clients.conns.len()
    }

    /// Sessions, connected or parked.
    pub fn sessions(&self) -> usize {
        self.clients.client_ids.len()
    }

    /// Sessions recorded for the durable store, and the QoS 1/2 messages they hold (queued and
    /// in flight): what the store holds once the operations so far are committed. For tests
    /// and tools.
    pub fn journaled(&self) -> (usize, usize) {
        self.clients.journaled()
    }

    /// Subscriptions of all sessions.
    pub fn subscription_count(&self) -> usize {
        self.routing.subscriptions
    }

    /// Retained messages held.
    pub fn retained_count(&self) -> usize {
        self.routing.retained.len()
    }

    /// Adds bytes read from and written to clients to the counters.
    pub fn add_traffic(&mut self, received: u64, sent: u64) {
        self.stats.bytes.received += received;
        self.stats.bytes.sent += sent;
    }

    /// Adds connections the server closed for a protocol violation or a limit to the counters.
    pub fn add_expelled(&mut self, expelled: u64) {
        self.stats.connections.expelled += expelled;
    }

    /// Adds QoS 0 messages dropped for a connection's unsent backlog to the counters.
    pub fn add_dropped_backlog(&mut self, dropped: u64) {
        self.stats.dropped.backlog += dropped;
    }

    /// Adds sockets the server refused at accept to the counters.
    pub fn add_refused(&mut self, refused: u64) {
        self.stats.connections.refused += refused;
    }

    /// The next instruction for a connection driver.
    pub fn poll_output(&mut self) -> Option<(ConnectionId, Output)> {
        self.outputs.pop_front()
    }

    /// The next authorization event (a denial, a revoked subscription, a refused client
    /// identifier), for the audit trail. Drain after every call, like [`Broker::poll_output`].
    pub fn poll_event(&mut self) -> Option<AuthzEvent> {
        self.reports.poll_event()
    }

    /// The next connection the engine closed because its client broke the protocol or one of
    /// the broker's limits (a QoS 2 flood past the Receive Maximum, too many user properties,
    /// an invalid topic alias, ...), with the reason code it was closed with: abuse for the
    /// server to count against the client's address. Drain it with [`Broker::poll_output`].
    pub fn poll_offence(&mut self) -> Option<(ConnectionId, ReasonCode)> {
        self.reports.poll_offence()
    }

    /// Memory is over its watermark: drops queued messages until `bytes` are freed, QoS 0
    /// first, then the oldest messages of the largest queues (connected sessions first, then
    /// stored ones). Returns the messages and bytes dropped; they are counted, and recorded as
    /// one `overload` event.
    pub fn shed(&mut self, bytes: usize) -> (usize, usize) {
        let (mut messages, mut freed) = (0usize, 0usize);
        for qos0_only in [true, false] {
            let mut order: Vec<(usize, ConnectionId)> = self
                .clients
                .conns
                .iter()
                .map(|(id, c)| (c.session.queued_bytes(), *id))
                .filter(|(b, _)| *b > 0)
                .collect();
            order.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
            for (_, id) in order {
                if freed >= bytes {
                    break;
                }
                if let Some(c) = self.clients.conns.get_mut(&id) {
                    let (m, b) = c.session.shed(&mut self.journal, bytes - freed, qos0_only);
                    messages += m;
                    freed += b;
                }
            }
            if freed < bytes {
                let (m, b) = self
                    .clients
                    .parked
                    .shed(&mut self.journal, bytes - freed, qos0_only);
                messages += m;
                freed += b;
            }
            if freed >= bytes {
                break;
            }
        }
        self.stats.dropped.shed += messages as u64;
        if messages > 0 {
            self.push_event(AuthzEvent {
                kind: EventKind::Overload,
                client_id: Arc::from(""),
                principal: Arc::default(),
                action: "shed",
                topic: "".into(),
                reason: format!(
                    "memory over its watermark: {messages} queued message(s), {freed} bytes dropped"
                ),
            });
        }
        (messages, freed)
    }

    /// The ACL rules in force (`None`: no authorization).
    pub fn acl(&self) -> Option<Arc<AclRules>> {
        self.acl.clone()
    }

    /// Puts `rules` in force (`None`: no authorization). Every connection's rules are
    /// resolved again: subscriptions no longer allowed are removed, queued messages it may no
    /// longer receive are dropped, and new publish rules apply from the next PUBLISH on.
    pub fn set_acl(&mut self, rules: Option<Arc<AclRules>>, now: Instant) {
        self.acl = rules;
        let conns: Vec<ConnectionId> = self.clients.conns.keys().copied().collect();
        for conn in conns {
            self.reauthorize(conn, None, now);
        }
    }

    /// Replaces what is known of connection `conn`'s client (a re-authentication with new
    /// credentials, such as a token with another ACL claim) and applies it as
    /// [`Broker::set_acl`] does.
    ///
    /// A quarantine ([`Broker::quarantine`]) stays: new credentials do not lift it.
    pub fn set_principal(&mut self, conn: ConnectionId, principal: Arc<Principal>, now: Instant) {
        let held = self
            .clients
            .conns
            .get(&conn)
            .and_then(|c| c.authz.principal.quarantine.clone());
        let principal = match held {
            Some(group) if principal.quarantine.is_none() => {
                let mut p = (*principal).clone();
                p.groups = vec![group.clone()];
                p.quarantine = Some(group);
                Arc::new(p)
            }
            _ => principal,
        };
        self.reauthorize(conn, Some(principal), now);
    }

    /// Restricts connection `conn`'s client to the rules of the ACL group `group` alone (a
    /// detection rule's quarantine), applied as [`Broker::set_acl`] does: subscriptions the
    /// group's rules do not allow are removed. Whether the connection exists.
    pub fn quarantine(&mut self, conn: ConnectionId, group: &Arc<str>, now: Instant) -> bool {
        let Some(c) = self.clients.conns.get(&conn) else {
            return false;
        };
        let mut principal = (*c.authz.principal).clone();
        principal.groups = vec![group.clone()];
        principal.quarantine = Some(group.clone());
        self.reauthorize(conn, Some(Arc::new(principal)), now);
        true
    }

    /// When [`Broker::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.wills.next_due(),
            self.clients.parked.next_expiry(),
            self.sys.next_due(),
            self.reports.next_report(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn push(&mut self, conn: ConnectionId, packet: Packet) {
        self.outputs
            .push_back((conn, Output::Packet(Box::new(packet))));
    }

    fn limits(&self) -> QueueLimits {
        QueueLimits {
            max_messages: self.config.sessions.max_queued_messages,
            max_bytes: self.config.sessions.max_queued_bytes,
            when_full: self.config.sessions.queue_full,
        }
    }

    /// Handles the CONNECT that opened connection `conn`, when no enhanced authentication took
    /// place (a CONNECT naming an Authentication Method is refused with 0x8C).
    pub fn handle_connect(&mut self, conn: ConnectionId, connect: Connect, now: Instant) {
        self.handle_authenticated_connect(conn, connect, ConnectAuth::default(), now);
    }

    // ----- packets after CONNECT -----------------------------------------------------------

    /// Handles a packet decoded on connection `conn` after its CONNECT.
    pub fn handle_packet(&mut self, conn: ConnectionId, packet: Packet, now: Instant) {
        if !self.clients.conns.contains_key(&conn) {
            return;
        }
        match packet {
            Packet::Publish(publish) => self.handle_publish(conn, publish, now),
            Packet::PubAck(ack) => self.handle_puback(conn, ack.packet_id, now),
            Packet::PubRec(rec) => self.handle_pubrec(conn, rec, now),
            Packet::PubRel(rel) => self.handle_pubrel(conn, rel.packet_id),
            Packet::PubComp(comp) => self.handle_pubcomp(conn, comp.packet_id, now),
            Packet::Subscribe(subscribe) => {
                self.handle_subscribe(conn, subscribe, now);
                self.touch(conn);
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.handle_unsubscribe(conn, unsubscribe);
                self.touch(conn);
            }
            Packet::PingReq => self.push(conn, Packet::PingResp),
            Packet::Disconnect(disconnect) => self.handle_disconnect(conn, disconnect, now),
            Packet::Auth(_) => self.expel(
                conn,
                ReasonCode::ProtocolError,
                "AUTH without an authentication method in CONNECT",
                now,
            ),
            // The decoder refuses these from a client; should one arrive, it is a violation.
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => {
                self.expel(conn, ReasonCode::ProtocolError, "unexpected packet", now);
            }
        }
    }

    /// [`Broker::disconnect`] for a client that broke the protocol or a limit: also queued
    /// for [`Broker::poll_offence`].
    fn expel(&mut self, conn: ConnectionId, code: ReasonCode, why: &str, now: Instant) {
        if !self.clients.conns.contains_key(&conn) {
            return;
        }
        if !self.reports.push_offence(conn, code) {
            self.stats.events_dropped += 1;
        }
        self.disconnect(conn, code, why, now);
    }

    /// Sends DISCONNECT (5.0) with `code`, closes, and handles the loss (the will is sent).
    pub fn disconnect(&mut self, conn: ConnectionId, code: ReasonCode, why: &str, now: Instant) {
        let Some(state) = self.clients.conns.get(&conn) else {
            return;
        };
        if state.is_v5() {
            let mut packet = Disconnect::new(code);
            packet.properties.reason_string = MqttString::new(why).ok();
            self.push(conn, Packet::Disconnect(packet));
        }
        self.outputs.push_back((conn, Output::Close));
        self.handle_connection_lost(conn, now);
    }

    // ----- DISCONNECT and loss -------------------------------------------------------------

    fn handle_disconnect(&mut self, conn_id: ConnectionId, disconnect: Disconnect, now: Instant) {
        let max_expiry = self.config.sessions.max_session_expiry_interval;
        let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
            return;
        };
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if conn.connect_expiry_was_zero && expiry != 0 {
                // [MQTT-3.14.2-2]
                return self.expel(
                    conn_id,
                    ReasonCode::ProtocolError,
                    "Session Expiry Interval set in DISCONNECT after 0 in CONNECT",
                    now,
                );
            }
            conn.session.expiry_interval = expiry.min(max_expiry);
        }
        // Only a normal disconnection discards the will [MQTT-3.1.2-10], [MQTT-3.14.4-3].
        if disconnect.reason_code == ReasonCode::Success || !conn.is_v5() {
            conn.will = None;
        }
        self.outputs.push_back((conn_id, Output::Close));
        self.handle_connection_lost(conn_id, now);
    }

    /// The connection ended: the socket closed, failed, timed out, or broke the protocol. The
    /// will is scheduled, and the session parked or ended by its expiry interval.
    pub fn handle_connection_lost(&mut self, conn_id: ConnectionId, now: Instant) {
        let Some(conn) = self.clients.conns.remove(&conn_id) else {
            return;
        };
        let Conn {
            mut session,
            will,
            version,
            authz,
            ..
        } = *conn;
        let key = session.key;
        self.clients.online.remove(&key);
        if let Some(will) = will {
            let pending = PendingWill::after_loss(
                version,
                will,
                authz.principal,
                session.client_id.clone(),
                now,
            );
            self.wills.schedule(key, pending);
        }
        // QoS 1 messages (and QoS 2 not yet received) from shared subscriptions may go to
        // another member of the group (§4.8.2).
        let moved = take_shared(&mut self.journal, &mut session, false);
        if session.expiry_interval == 0 {
            self.end_session(session, now);
        } else {
            let expires_at = if session.expiry_interval == u32::MAX {
                None
            } else {
                now.checked_add(Duration::from_secs(u64::from(session.expiry_interval)))
            };
            session.parked_at = Some(now);
            if session.is_journaled() {
                let will = self.wills.get(key).map(|p| p.record(version));
                let record = self.record_of(&session, Some(now), will);
                self.journal.push(StoreOp::Session(Box::new(record)));
            }
            self.clients.parked.park(session, expires_at);
        }
        self.fire_due_wills(now);
        for delivery in moved {
            self.redeliver_shared(delivery, key, now);
        }
    }

    // ----- timers, $SYS, shutdown ----------------------------------------------------------

    /// Fires what is due at `now`: delayed wills, session expiry, `$SYS` publication.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.fire_due_wills(now);
        self.report_overflows(now);
        for session in self.clients.parked.take_expired(now) {
            self.end_session(session, now);
        }
        if self.sys.take_due(now) {
            let gauges = Gauges {
                connected: self.clients.conns.len(),
                sessions: self.clients.client_ids.len(),
                subscriptions: self.routing.subscriptions,
                retained: self.routing.retained.len(),
                retained_bytes: self.quotas.retained_bytes(),
            };
            for message in self.sys.messages(&self.stats, gauges, now) {
                self.publish_message(message, now);
            }
        }
    }

    /// Server shutdown: 5.0 clients get DISCONNECT 0x8B, every connection is closed, and no
    /// new connection is accepted.
    pub fn begin_shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let conns: Vec<ConnectionId> = self.clients.conns.keys().copied().collect();
        for conn in conns {
            self.disconnect(
                conn,
                ReasonCode::ServerShuttingDown,
                "server shutting down",
                now,
            );
        }
    }

    /// A session's subscriptions, for tests and the admin API.
    pub fn session_subscriptions(&self, client_id: &str) -> Vec<SubscriptionRecord> {
        self.clients
            .session_named(client_id)
            .map_or_else(Vec::new, |s| s.subscriptions.values().cloned().collect())
    }

    /// One session as the admin API shows it: whether it is connected (and with which
    /// protocol), its subscriptions, what waits for its client and what is in flight.
    pub fn session_view(&self, client_id: &str) -> Option<SessionView> {
        let session = self.clients.session_named(client_id)?;
        let version = self
            .clients
            .live_connection(client_id)
            .and_then(|conn| self.clients.conns.get(&conn))
            .map(|conn| conn.version);
        let mut subscriptions: Vec<(String, QoS)> = session
            .subscriptions
            .iter()
            .map(|(filter, record)| (filter.to_string(), record.options.qos))
            .collect();
        subscriptions.sort();
        Some(SessionView {
            version,
            subscriptions,
            queued_messages: session.queue.len(),
            queued_bytes: session.queued_bytes(),
            inflight: session.inflight.len(),
            expiry_interval: session.expiry_interval,
        })
    }

    /// Shared groups with their share name, filter and member count.
    pub fn shared_groups(&self) -> Vec<(String, String, usize)> {
        self.routing.shared_groups()
    }
}
