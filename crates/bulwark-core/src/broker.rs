//! The engine: one [`Broker`] owns every session, subscription, retained message and pending
//! will, and turns packets from clients into packets for clients.

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
    /// Boxed values: the table holds pointers, so its spare capacity costs 16 bytes a slot
    /// rather than a whole connection's state.
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
    /// An engine with no sessions, parking sessions in `store`.
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

    /// Records every change to persistent sessions and retained messages from now on, for a
    /// durable store: call before the first connection (after [`Broker::restore`]), then drain
    /// [`Broker::take_store_ops`] after every call, as [`Broker::poll_output`].
    pub fn enable_journal(&mut self) {
        if !self.journal.is_on() {
            self.journal = Journal::on();
        }
    }

    /// The changes to durable state since the last call, oldest first: the caller commits
    /// them (atomically, as one batch) before it sends this round's outputs.
    pub fn take_store_ops(&mut self) -> Vec<StoreOp> {
        if !self.journal.is_on() {
            return Vec::new();
        }
        let mut dirty = mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for conn_id in dirty.drain(..) {
            if let Some(conn) = self.clients.conns.get(&conn_id)
                && conn.session.is_journaled()
            {
                let will = conn.will.as_deref().map(|w| WillRecord {
                    at: None,
                    delay: will_delay(conn.version, w),
                    will: w.clone(),
                    principal: conn.authz.principal.clone(),
                });
                let record = self.record_of(&conn.session, None, will);
                self.journal.push(StoreOp::Session(Box::new(record)));
            }
        }
        self.dirty = dirty;
        self.journal.take()
    }

    /// The durable record of `session`, parked since `disconnected_at` (`None`: connected)
    /// with `will` waiting.
    fn record_of(
        &self,
        session: &Session,
        disconnected_at: Option<Instant>,
        will: Option<WillRecord>,
    ) -> SessionRecord {
        let mut subscriptions: Vec<SubscriptionRecord> =
            session.subscriptions.values().cloned().collect();
        subscriptions.sort_unstable_by(|a, b| a.filter.as_str().cmp(b.filter.as_str()));
        SessionRecord {
            client_id: session.client_id.clone(),
            owner: self.clients.owner_of(session.key),
            expiry_interval: session.expiry_interval,
            subscriptions,
            disconnected_at,
            will,
        }
    }

    /// Brings back what a durable store read at start, and turns the journal on
    /// ([`Broker::enable_journal`]): persistent sessions, parked, with their subscriptions,
    /// queued and in-flight messages, QoS 2 identifiers and pending wills (a session whose
    /// client was connected when the broker stopped counts as disconnected at `now`: its
    /// expiry and will delay run from the restart), and the retained messages. Time spent down
    /// counts: a session or message whose expiry ran out meanwhile expires at the first
    /// [`Broker::handle_timeout`] or delivery. Messages restored from shared subscriptions stay
    /// with their session. Call once, on a new engine, before the first connection. Returns
    /// how many sessions and retained messages were restored.
    pub fn restore(&mut self, restored: Restored, now: Instant) -> (usize, usize) {
        self.enable_journal();
        let mut sessions = 0;
        for r in restored.sessions {
            let record = r.record;
            if self.clients.client_ids.contains_key(&record.client_id) {
                continue;
            }
            if record.expiry_interval == 0 {
                // Expired while the broker was down (the store counted the time off).
                self.journal.push(StoreOp::SessionEnded {
                    client_id: record.client_id,
                });
                continue;
            }
            let mut session = self
                .clients
                .new_session(record.client_id.clone(), record.expiry_interval);
            let key = session.key;
            session.start_journal(&mut self.journal);
            let parked_at = record.disconnected_at.unwrap_or(now);
            session.parked_at = Some(parked_at);
            self.clients.owners.insert(key, record.owner);
            let mut count = 0isize;
            for sub in record.subscriptions {
                // Checked or not is decided when the session's client is back (`prune`):
                // until then its messages are queued, and what it may not receive is
                // dropped from the queue then.
                self.routing
                    .index(key, &sub.filter, sub.options, sub.id, false);
                if session
                    .subscriptions
                    .insert(sub.filter.as_str().into(), sub)
                    .is_none()
                {
                    count += 1;
                }
            }
            self.routing.subscriptions += count.unsigned_abs();
            self.count_subscriptions(key, count);
            for (seq, mut delivery, sent) in r.messages {
                delivery.seq = seq;
                delivery.group = None;
                session.restore_message(delivery, sent);
            }
            for id in r.qos2_received {
                session.restore_qos2(id);
            }
            if let Some(w) = record.will {
                let at = w.at.unwrap_or_else(|| {
                    now.checked_add(Duration::from_secs(u64::from(w.delay)))
                        .unwrap_or(now)
                });
                self.wills.schedule(
                    key,
                    PendingWill {
                        at,
                        will: Box::new(w.will),
                        principal: w.principal,
                        client_id: session.client_id.clone(),
                    },
                );
            }
            let expires_at = if session.expiry_interval == u32::MAX {
                None
            } else {
                parked_at.checked_add(Duration::from_secs(u64::from(session.expiry_interval)))
            };
            self.clients.parked.park(session, expires_at);
            sessions += 1;
        }
        let mut retained = 0;
        for (message, owner) in restored.retained {
            if message.is_expired(now) {
                self.journal
                    .push(StoreOp::RetainedCleared(message.topic.clone()));
                continue;
            }
            self.quotas
                .stored(message.topic.as_str(), message.cost(), owner);
            self.routing.retained.insert(message);
            retained += 1;
        }
        (sessions, retained)
    }

    /// Marks connection `conn_id`'s session as changed, for [`Broker::take_store_ops`].
    fn touch(&mut self, conn_id: ConnectionId) {
        if self.journal.is_on() {
            self.dirty.push(conn_id);
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
        self.stats.bytes_received += received;
        self.stats.bytes_sent += sent;
    }

    /// Adds connections the server closed for a protocol violation or a limit to the counters.
    pub fn add_expelled(&mut self, expelled: u64) {
        self.stats.connections_expelled += expelled;
    }

    /// Adds QoS 0 messages dropped for a connection's unsent backlog to the counters.
    pub fn add_dropped_backlog(&mut self, dropped: u64) {
        self.stats.messages_dropped_backlog += dropped;
    }

    /// Adds sockets the server refused at accept to the counters.
    pub fn add_refused(&mut self, refused: u64) {
        self.stats.connections_refused += refused;
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
        self.stats.messages_shed += messages as u64;
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
    pub fn set_principal(&mut self, conn: ConnectionId, principal: Arc<Principal>, now: Instant) {
        self.reauthorize(conn, Some(principal), now);
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
            max_messages: self.config.max_queued_messages,
            max_bytes: self.config.max_queued_bytes,
            when_full: self.config.queue_full,
        }
    }

    // ----- CONNECT -------------------------------------------------------------------------

    fn refuse(
        &mut self,
        conn: ConnectionId,
        version: ProtocolVersion,
        code: ReasonCode,
        why: &str,
    ) {
        let connack = connect::refusal(version, code, why);
        self.push(conn, Packet::ConnAck(Box::new(connack)));
        self.outputs.push_back((conn, Output::Close));
    }

    /// Handles the CONNECT that opened connection `conn`, when no enhanced authentication took
    /// place (a CONNECT naming an Authentication Method is refused with 0x8C).
    pub fn handle_connect(&mut self, conn: ConnectionId, connect: Connect, now: Instant) {
        self.handle_authenticated_connect(conn, connect, ConnectAuth::default(), now);
    }

    /// Handles the CONNECT that opened connection `conn`, whose credentials the caller has
    /// already checked; `auth` is what the CONNACK carries back for enhanced authentication.
    pub fn handle_authenticated_connect(
        &mut self,
        conn: ConnectionId,
        connect: Connect,
        auth: ConnectAuth,
        now: Instant,
    ) {
        let version = connect.protocol_version;
        let principal = auth.principal.clone().unwrap_or_default();
        if self.shutting_down {
            return self.refuse(
                conn,
                version,
                ReasonCode::ServerUnavailable,
                "shutting down",
            );
        }
        let checked = match connect::check(&self.config, &connect, auth.method.is_some()) {
            Ok(checked) => checked,
            Err((code, why)) => return self.refuse(conn, version, code, why),
        };
        let keep_alive = checked.keep_alive(&connect);
        let Checked {
            client_id,
            server_keep_alive,
            requested_expiry,
            expiry,
        } = checked;
        let mut assigned = None;
        let client_id = match client_id {
            Some(id) => id,
            None => {
                let id = self.clients.assign_client_id();
                assigned = Some(id.clone());
                id
            }
        };
        // A client identifier, live or with a stored session, belongs to the user who made it:
        // another user neither takes the connection over nor resumes the session. The user is
        // the authenticated one; without a principal (no authentication ran), the CONNECT's.
        let owner = connect::owner(&connect, auth.principal.as_deref());
        if let Some(key) = self.clients.client_ids.get(&client_id)
            && self.clients.owners.get(key).is_some_and(|o| *o != owner)
        {
            self.push_event(AuthzEvent {
                kind: EventKind::ClientIdRefused,
                client_id: client_id.clone(),
                principal,
                action: "connect",
                topic: "".into(),
                reason: "the client identifier belongs to another user's session".to_owned(),
            });
            return self.refuse(
                conn,
                version,
                ReasonCode::NotAuthorized,
                "the client identifier belongs to another user",
            );
        }
        let authz = ConnAuthz::new(self.acl.as_deref(), principal.clone(), &client_id);
        if let (Some(will), Some(acl)) = (&connect.will, authz.acl()) {
            let (topic, qos, retain) = (will.topic.as_str(), will.qos.as_u8(), will.retain);
            if !acl.may_publish(topic, qos, retain) {
                self.stats.publishes_denied += 1;
                self.push_event(AuthzEvent {
                    kind: EventKind::AclDenied,
                    client_id: client_id.clone(),
                    principal,
                    action: "will",
                    topic: topic.into(),
                    reason: acl.check_publish(topic, qos, retain).to_string(),
                });
                return self.refuse(
                    conn,
                    version,
                    ReasonCode::NotAuthorized,
                    "the will message is not authorized",
                );
            }
        }
        let mut encoder = Encoder::new(version);
        if let Some(max) = connect.properties.maximum_packet_size {
            encoder.set_max_packet_size(max.get());
        }
        // Checked before anything changes (a takeover included): a client whose Maximum
        // Packet Size leaves no room for the CONNACK cannot use the connection [MQTT-3.1.2-25].
        let connack = ConnackFields {
            version,
            expiry,
            requested_expiry,
            assigned: assigned.as_deref(),
            server_keep_alive,
            response_information: connect.properties.request_response_information == Some(true),
            client_id: &client_id,
        };
        let Some(mut connack) =
            connect::fitting_connack(&self.config, &connack, auth.method, auth.data, &encoder)
        else {
            return self.refuse(
                conn,
                version,
                ReasonCode::PacketTooLarge,
                "the CONNACK does not fit the client's Maximum Packet Size",
            );
        };
        // Takeover: the old connection goes first, its will and session handled as a loss.
        if let Some(&key) = self.clients.client_ids.get(&client_id)
            && let Some(&old) = self.clients.online.get(&key)
        {
            self.disconnect(
                old,
                ReasonCode::SessionTakenOver,
                "another connection took over",
                now,
            );
        }
        let existing = self
            .clients
            .client_ids
            .get(&client_id)
            .copied()
            .and_then(|key| self.clients.parked.take(key));
        let (mut session, present) = match existing {
            Some(session) if !connect.clean_start => {
                self.wills.cancel(session.key);
                (session, true)
            }
            Some(session) => {
                self.end_session(session, now);
                (self.clients.new_session(client_id.clone(), expiry), false)
            }
            None => (self.clients.new_session(client_id.clone(), expiry), false),
        };
        self.clients.owners.insert(session.key, owner);
        session.expiry_interval = expiry;
        session.parked_at = None;
        if self.journal.is_on() {
            if expiry > 0 {
                if !session.is_journaled() {
                    session.start_journal(&mut self.journal);
                }
            } else if session.is_journaled() {
                // No longer persistent: it ends with this connection, and a restart before
                // that must not bring it back.
                self.journal.push(StoreOp::SessionEnded {
                    client_id: session.client_id.clone(),
                });
                session.stop_journal();
            }
        }

        let client_window = connect
            .properties
            .receive_maximum
            .map_or(u16::MAX, NonZeroU16::get);
        let send_window = usize::from(client_window.min(self.config.max_inflight_out).max(1));
        let alias_max_out = if version.is_v5() && self.config.outbound_topic_aliases {
            connect.properties.topic_alias_maximum.unwrap_or(0)
        } else {
            0
        };
        let key = session.key;
        let state = Conn {
            session,
            version,
            encoder,
            send_window,
            alias_max_out,
            aliases: None,
            problem_information: connect.properties.request_problem_information != Some(false),
            will: connect.will.map(Box::new),
            connect_expiry_was_zero: requested_expiry == 0,
            authz,
        };
        self.clients.conns.insert(conn, Box::new(state));
        self.touch(conn);
        if present {
            // The stored session may hold what this identity (or the rules since) no longer
            // allows.
            self.prune(conn, now);
        }
        self.clients.online.insert(key, conn);
        self.stats.connections_total += 1;

        connack.session_present = present;
        self.outputs
            .push_back((conn, Output::Accepted(Accepted { keep_alive })));
        self.push(conn, Packet::ConnAck(connack));
        self.resume(conn, now);
    }

    /// Resends what was in flight (PUBLISH with DUP, or PUBREL), then sends from the queue.
    fn resume(&mut self, conn_id: ConnectionId, now: Instant) {
        let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
            return;
        };
        let mut resend = Vec::new();
        let mut expired = Vec::new();
        for (pos, inflight) in conn.session.inflight.iter().enumerate() {
            match inflight.state {
                OutState::AwaitPubComp => {
                    resend.push(Packet::PubRel(PubRel::new(inflight.packet_id)));
                }
                OutState::AwaitPubAck | OutState::AwaitPubRec => {
                    // A message whose QoS exchange began is delivered even if it expires now:
                    // the client may already hold it.
                    let mut publish = build_publish(&inflight.delivery, now);
                    publish.dup = true;
                    publish.packet_id = Some(inflight.packet_id);
                    if conn.encoder.fits(&publish) {
                        resend.push(Packet::Publish(publish));
                    } else {
                        expired.push(pos);
                    }
                }
            }
        }
        for pos in expired.into_iter().rev() {
            conn.session.remove_inflight(&mut self.journal, pos);
            self.stats.messages_dropped_too_large += 1;
        }
        for packet in resend {
            if matches!(packet, Packet::Publish(_)) {
                self.stats.messages_sent += 1;
            }
            self.outputs
                .push_back((conn_id, Output::Packet(Box::new(packet))));
        }
        self.pump(conn_id, now);
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

    fn ack_properties(&self, conn: ConnectionId, code: ReasonCode, why: &str) -> AckProperties {
        let mut props = AckProperties::default();
        let wanted = self
            .clients
            .conns
            .get(&conn)
            .is_some_and(|c| c.problem_information);
        if code.is_error() && wanted {
            props.reason_string = MqttString::new(why).ok();
        }
        props
    }

    fn answer_publish(
        &mut self,
        conn: ConnectionId,
        qos: QoS,
        packet_id: Option<PacketId>,
        code: ReasonCode,
        why: &str,
    ) {
        let Some(packet_id) = packet_id else {
            return;
        };
        let properties = self.ack_properties(conn, code, why);
        let packet = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Packet::PubAck(PubAck {
                packet_id,
                reason_code: code,
                properties,
            }),
            QoS::ExactlyOnce => Packet::PubRec(PubRec {
                packet_id,
                reason_code: code,
                properties,
            }),
        };
        self.push(conn, packet);
    }

    fn handle_publish(&mut self, conn_id: ConnectionId, publish: Publish, now: Instant) {
        self.stats.messages_received += 1;
        let max_user = self.config.max_user_properties;
        let alias_max = self.config.topic_alias_maximum;
        let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
            return;
        };
        let Publish {
            qos,
            retain,
            mut topic,
            packet_id,
            mut properties,
            payload,
            ..
        } = publish;
        if properties.user_properties.len() > max_user {
            return self.expel(
                conn_id,
                ReasonCode::QuotaExceeded,
                "too many user properties",
                now,
            );
        }
        if let Some(alias) = properties.topic_alias.take() {
            if alias.get() > alias_max {
                return self.expel(
                    conn_id,
                    ReasonCode::TopicAliasInvalid,
                    "topic alias above the Topic Alias Maximum",
                    now,
                );
            }
            if topic.is_empty() {
                match conn.aliases.as_ref().and_then(|a| a.inbound(alias.get())) {
                    Some(known) => topic = known.clone(),
                    None => {
                        return self.expel(
                            conn_id,
                            ReasonCode::ProtocolError,
                            "unknown topic alias",
                            now,
                        );
                    }
                }
            } else {
                conn.aliases
                    .get_or_insert_with(Box::default)
                    .set_inbound(alias.get(), topic.clone());
            }
        }
        let session_key = conn.session.key;
        // Decided while the connection is at hand (one table lookup less); acted on below,
        // after the checks every client gets.
        let allowed = conn.authz.may_publish(topic.as_str(), qos.as_u8(), retain);
        if !self.config.topic_fits(topic.as_str()) {
            return self.expel(
                conn_id,
                ReasonCode::TopicNameInvalid,
                "topic name too long or too deep",
                now,
            );
        }
        if topic.as_str() == "$SYS" || topic.as_str().starts_with("$SYS/") {
            // Clients must not forge the broker's own statistics.
            return self.answer_publish(
                conn_id,
                qos,
                packet_id,
                ReasonCode::NotAuthorized,
                "$SYS topics are written by the broker only",
            );
        }
        if qos == QoS::ExactlyOnce {
            let Some(id) = packet_id else { return };
            let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
                return;
            };
            if conn.session.qos2_received(id) {
                // A resend before PUBREL: answered, not delivered again.
                return self.push(conn_id, Packet::PubRec(PubRec::new(id)));
            }
            if conn.session.qos2_pending() >= usize::from(self.config.receive_maximum) {
                return self.expel(
                    conn_id,
                    ReasonCode::ReceiveMaximumExceeded,
                    "more QoS 2 messages awaiting PUBREL than the Receive Maximum",
                    now,
                );
            }
        }
        if !allowed {
            return self.deny_publish(conn_id, &topic, qos, retain, packet_id, now);
        }
        if retain && !payload.is_empty() {
            let owner = self.clients.owner_of(session_key);
            let cost = payload.len() + topic.as_str().len();
            if let Some(why) = self.retained_refusal(topic.as_str(), cost, owner.as_ref()) {
                self.stats.retained_refused += 1;
                return self.answer_publish(
                    conn_id,
                    qos,
                    packet_id,
                    ReasonCode::QuotaExceeded,
                    why,
                );
            }
        }
        let expires_at = Message::expiry_from(now, properties.message_expiry_interval);
        properties.message_expiry_interval = None;
        let message = Arc::new(Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            expires_at,
            publisher: Some(session_key),
        });
        let matched = self.publish_message(message, now);
        let code = if matched == 0 {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        if qos == QoS::ExactlyOnce
            && let (Some(id), Some(conn)) = (packet_id, self.clients.conns.get_mut(&conn_id))
        {
            conn.session.qos2_record(&mut self.journal, id);
        }
        let v5 = self.clients.conns.get(&conn_id).is_some_and(|c| c.is_v5());
        let code = if v5 { code } else { ReasonCode::Success };
        self.answer_publish(conn_id, qos, packet_id, code, "");
    }

    /// Why a retained message of `cost` bytes stored by `owner` may not replace what `topic`
    /// holds, if it may not.
    fn retained_refusal(
        &self,
        topic: &str,
        cost: usize,
        owner: Option<&Arc<str>>,
    ) -> Option<&'static str> {
        let c = &self.config;
        if !self.routing.retained.contains(topic)
            && self.routing.retained.len() >= c.max_retained_messages
        {
            return Some("retained message limit reached");
        }
        let ((count, bytes), total) = self.quotas.after_store(topic, cost, owner);
        let over = |limit: usize, value: usize| limit > 0 && value > limit;
        if over(c.max_retained_bytes, total) {
            return Some("retained bytes limit reached");
        }
        if owner.is_some() {
            if over(c.max_retained_per_user, count) {
                return Some("retained messages per user limit reached");
            }
            if over(c.max_retained_bytes_per_user, bytes) {
                return Some("retained bytes per user limit reached");
            }
        }
        None
    }

    /// Adds `n` (negative: removes) subscriptions to the count of the session's user.
    fn count_subscriptions(&mut self, key: SessionKey, n: isize) {
        if let Some(user) = self.clients.owner_of(key) {
            self.quotas.add_subscriptions(&user, n);
        }
    }

    /// A PUBLISH the ACL refused: a 5.0 QoS 1/2 one is answered 0x87; others are dropped
    /// (acknowledged as usual) or end the connection, as `denied_publish` says.
    fn deny_publish(
        &mut self,
        conn_id: ConnectionId,
        topic: &TopicName,
        qos: QoS,
        retain: bool,
        packet_id: Option<PacketId>,
        now: Instant,
    ) {
        self.stats.publishes_denied += 1;
        let Some(conn) = self.clients.conns.get(&conn_id) else {
            return;
        };
        let v5 = conn.is_v5();
        let reason = conn.authz.acl().map_or_else(String::new, |acl| {
            acl.check_publish(topic.as_str(), qos.as_u8(), retain)
                .to_string()
        });
        self.record(
            conn_id,
            EventKind::AclDenied,
            "publish",
            topic.as_str(),
            reason,
            now,
        );
        if v5 && qos != QoS::AtMostOnce {
            return self.answer_publish(
                conn_id,
                qos,
                packet_id,
                ReasonCode::NotAuthorized,
                "not authorized",
            );
        }
        match self.config.denied_publish {
            DeniedPublish::Disconnect => {
                self.disconnect(
                    conn_id,
                    ReasonCode::NotAuthorized,
                    "publish not authorized",
                    now,
                );
            }
            DeniedPublish::Drop => {
                if qos == QoS::ExactlyOnce
                    && let (Some(id), Some(conn)) =
                        (packet_id, self.clients.conns.get_mut(&conn_id))
                {
                    conn.session.qos2_record(&mut self.journal, id);
                }
                self.answer_publish(conn_id, qos, packet_id, ReasonCode::Success, "");
            }
        }
    }

    /// Records an authorization event of a connection, within its event budget.
    fn record(
        &mut self,
        conn_id: ConnectionId,
        kind: EventKind,
        action: &'static str,
        topic: &str,
        reason: String,
        now: Instant,
    ) {
        let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
            return;
        };
        let Some(suppressed) = conn.authz.admit_event(now) else {
            return;
        };
        let reason = if suppressed > 0 {
            format!("{reason} ({suppressed} earlier events of this connection not recorded)")
        } else {
            reason
        };
        let event = AuthzEvent {
            kind,
            client_id: conn.session.client_id.clone(),
            principal: conn.authz.principal.clone(),
            action,
            topic: topic.into(),
            reason,
        };
        self.push_event(event);
    }

    fn push_event(&mut self, event: AuthzEvent) {
        if !self.reports.push_event(event) {
            self.stats.events_dropped += 1;
        }
    }

    /// Resolves connection `conn_id`'s rules again (with a new principal, if given) and
    /// prunes what they no longer allow.
    fn reauthorize(
        &mut self,
        conn_id: ConnectionId,
        principal: Option<Arc<Principal>>,
        now: Instant,
    ) {
        let rules = self.acl.clone();
        let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
            return;
        };
        let principal = principal.unwrap_or_else(|| conn.authz.principal.clone());
        let fresh = ConnAuthz::new(rules.as_deref(), principal, &conn.session.client_id);
        conn.authz.replace(fresh);
        self.prune(conn_id, now);
    }

    /// Removes the subscriptions connection `conn_id`'s rules do not allow (and lowers the
    /// QoS of those allowed at a lower one), and drops queued messages it may not receive.
    fn prune(&mut self, conn_id: ConnectionId, now: Instant) {
        let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
            return;
        };
        let Conn { session, authz, .. } = &mut **conn;
        let Some(acl) = authz.acl() else {
            return;
        };
        let key = session.key;
        let mut revoked = Vec::new();
        // Every subscription kept is indexed again: its QoS may be lower now, and whether its
        // messages are checked follows the carve-outs of the rules in force.
        let mut kept = Vec::new();
        for (text, record) in &mut session.subscriptions {
            let decision =
                acl.check_subscribe(record.filter.match_filter(), record.options.qos.as_u8());
            if !decision.allowed {
                revoked.push((text.clone(), decision.to_string()));
            } else {
                if decision.qos < record.options.qos.as_u8() {
                    record.options.qos = QoS::from_u8(decision.qos).unwrap_or(QoS::AtMostOnce);
                }
                kept.push((record.clone(), !decision.carve_outs.is_empty()));
            }
        }
        session.retain_queued(&mut self.journal, |d| {
            acl.may_receive(d.message.topic.as_str())
        });
        let mut filters = Vec::with_capacity(revoked.len());
        for (text, reason) in revoked {
            if let Some(record) = session.subscriptions.remove(&text) {
                filters.push((record.filter, reason));
            }
        }
        for (record, checked) in kept {
            self.routing
                .index(key, &record.filter, record.options, record.id, checked);
        }
        self.touch(conn_id);
        for (filter, reason) in filters {
            self.routing.subscriptions = self.routing.subscriptions.saturating_sub(1);
            self.count_subscriptions(key, -1);
            self.stats.subscriptions_denied += 1;
            self.routing.unindex(key, &filter);
            self.record(
                conn_id,
                EventKind::SubscriptionRevoked,
                "subscribe",
                filter.as_str(),
                reason,
                now,
            );
        }
    }

    /// The state of the outgoing message `packet_id` names, if it is in flight.
    fn inflight_state(&self, conn_id: ConnectionId, packet_id: PacketId) -> Option<OutState> {
        let conn = self.clients.conns.get(&conn_id)?;
        let pos = conn.session.inflight_position(packet_id)?;
        conn.session.inflight.get(pos).map(|i| i.state)
    }

    /// An acknowledgement of the wrong type for the message in flight under its identifier
    /// (a PUBREC or PUBCOMP for a QoS 1 message, a PUBACK for a QoS 2 one, a PUBCOMP before
    /// the PUBREL): the client and the server no longer agree on the exchange, a Protocol
    /// Error (§4.3.2, §4.3.3, §4.13) in every version.
    fn wrong_acknowledgement(&mut self, conn_id: ConnectionId, why: &str, now: Instant) {
        self.expel(conn_id, ReasonCode::ProtocolError, why, now);
    }

    /// The exchange of the outgoing message `packet_id` is complete: its place in the window
    /// goes to the next message.
    fn completed(&mut self, conn_id: ConnectionId, packet_id: PacketId, now: Instant) {
        if let Some(conn) = self.clients.conns.get_mut(&conn_id)
            && let Some(pos) = conn.session.inflight_position(packet_id)
        {
            conn.session.remove_inflight(&mut self.journal, pos);
        }
        self.pump(conn_id, now);
    }

    fn handle_puback(&mut self, conn_id: ConnectionId, packet_id: PacketId, now: Instant) {
        match self.inflight_state(conn_id, packet_id) {
            Some(OutState::AwaitPubAck) => self.completed(conn_id, packet_id, now),
            Some(OutState::AwaitPubRec | OutState::AwaitPubComp) => {
                self.wrong_acknowledgement(conn_id, "PUBACK for a QoS 2 message", now);
            }
            // A late duplicate (the message was acknowledged already): nothing to do.
            None => {}
        }
    }

    fn handle_pubrec(&mut self, conn_id: ConnectionId, rec: PubRec, now: Instant) {
        match self.inflight_state(conn_id, rec.packet_id) {
            Some(OutState::AwaitPubRec) => {
                let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
                    return;
                };
                let pos = conn.session.inflight_position(rec.packet_id);
                if rec.reason_code.is_error() {
                    // The client refused the message: the exchange ends here (§4.3.3).
                    if let Some(p) = pos {
                        conn.session.remove_inflight(&mut self.journal, p);
                    }
                    self.pump(conn_id, now);
                } else {
                    if let Some(p) = pos {
                        conn.session.mark_released(&mut self.journal, p);
                    }
                    self.push(conn_id, Packet::PubRel(PubRel::new(rec.packet_id)));
                }
            }
            // A PUBREC sent again (ours was lost or is on its way): the PUBREL again.
            Some(OutState::AwaitPubComp) => {
                self.push(conn_id, Packet::PubRel(PubRel::new(rec.packet_id)));
            }
            Some(OutState::AwaitPubAck) => {
                self.wrong_acknowledgement(conn_id, "PUBREC for a QoS 1 message", now);
            }
            // A refusal of nothing ends nothing: a PUBREL only follows a PUBREC below 0x80
            // [MQTT-4.3.3-4].
            None if rec.reason_code.is_error() => {}
            None => {
                let Some(conn) = self.clients.conns.get(&conn_id) else {
                    return;
                };
                // 5.0 answers an identifier it does not know with 0x92 (§3.6.2.1); 3.1.1
                // has only the plain PUBREL.
                let mut rel = PubRel::new(rec.packet_id);
                if conn.is_v5() {
                    rel.reason_code = ReasonCode::PacketIdentifierNotFound;
                }
                self.push(conn_id, Packet::PubRel(rel));
            }
        }
    }

    fn handle_pubrel(&mut self, conn_id: ConnectionId, packet_id: PacketId) {
        let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
            return;
        };
        let known = conn.session.qos2_release(&mut self.journal, packet_id);
        let mut comp = PubComp::new(packet_id);
        if !known && conn.is_v5() {
            comp.reason_code = ReasonCode::PacketIdentifierNotFound;
        }
        self.push(conn_id, Packet::PubComp(comp));
    }

    fn handle_pubcomp(&mut self, conn_id: ConnectionId, packet_id: PacketId, now: Instant) {
        match self.inflight_state(conn_id, packet_id) {
            Some(OutState::AwaitPubComp) => self.completed(conn_id, packet_id, now),
            Some(OutState::AwaitPubAck) => {
                self.wrong_acknowledgement(conn_id, "PUBCOMP for a QoS 1 message", now);
            }
            Some(OutState::AwaitPubRec) => {
                self.wrong_acknowledgement(conn_id, "PUBCOMP before PUBREC and PUBREL", now);
            }
            // A late duplicate of a PUBCOMP already received: nothing to do.
            None => {}
        }
    }

    // ----- SUBSCRIBE / UNSUBSCRIBE ---------------------------------------------------------

    fn handle_subscribe(&mut self, conn_id: ConnectionId, subscribe: Subscribe, now: Instant) {
        if subscribe.properties.user_properties.len() > self.config.max_user_properties {
            return self.expel(
                conn_id,
                ReasonCode::QuotaExceeded,
                "too many user properties",
                now,
            );
        }
        let Some(conn) = self.clients.conns.get(&conn_id) else {
            return;
        };
        let session_key = conn.session.key;
        let id = subscribe.properties.subscription_identifier;
        let mut codes = Vec::with_capacity(subscribe.subscriptions.len());
        let mut retained_for = Vec::new();
        let mut denied = Vec::new();
        for sub in subscribe.subscriptions {
            let text: Box<str> = sub.filter.as_str().into();
            let decision = self
                .clients
                .conns
                .get(&conn_id)
                .and_then(|c| c.authz.acl())
                .map(|acl| acl.check_subscribe(sub.filter.match_filter(), sub.options.qos.as_u8()));
            let code = if !self.config.topic_fits(sub.filter.as_str()) {
                ReasonCode::TopicFilterInvalid
            } else if let Some(d) = decision.as_ref().filter(|d| !d.allowed) {
                self.stats.subscriptions_denied += 1;
                denied.push((text, d.to_string()));
                ReasonCode::NotAuthorized
            } else {
                let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
                    return;
                };
                let existed = conn.session.subscriptions.contains_key(&text);
                let per_user = self.config.max_subscriptions_per_user;
                let user_full = per_user > 0
                    && self
                        .clients
                        .owners
                        .get(&session_key)
                        .and_then(Option::as_deref)
                        .is_some_and(|u| self.quotas.subscriptions_of(u) >= per_user);
                if !existed
                    && (conn.session.subscriptions.len()
                        >= self.config.max_subscriptions_per_session
                        || user_full)
                {
                    ReasonCode::QuotaExceeded
                } else {
                    let mut options = sub.options;
                    if let Some(d) = &decision {
                        options.qos = QoS::from_u8(d.qos).unwrap_or(QoS::AtMostOnce);
                    }
                    conn.session.subscriptions.insert(
                        text,
                        SubscriptionRecord {
                            filter: sub.filter.clone(),
                            options,
                            id,
                        },
                    );
                    if !existed {
                        self.routing.subscriptions += 1;
                        self.count_subscriptions(session_key, 1);
                    }
                    let checked = decision.as_ref().is_some_and(|d| !d.carve_outs.is_empty());
                    self.routing
                        .index(session_key, &sub.filter, options, id, checked);
                    let send = match options.retain_handling {
                        RetainHandling::SendOnSubscribe => true,
                        RetainHandling::SendIfNew => !existed,
                        RetainHandling::DoNotSend => false,
                    };
                    // Retained messages are not sent for shared subscriptions (§4.8.2).
                    if send && !sub.filter.is_shared() {
                        retained_for.push((sub.filter, options.qos, id));
                    }
                    match options.qos {
                        QoS::AtMostOnce => ReasonCode::Success,
                        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                    }
                }
            };
            codes.push(code);
        }
        let failed = codes.iter().any(|c| c.is_error());
        let properties = if failed {
            self.ack_properties(
                conn_id,
                ReasonCode::UnspecifiedError,
                "a filter was refused",
            )
        } else {
            AckProperties::default()
        };
        self.push(
            conn_id,
            Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                properties,
                reason_codes: codes,
            }),
        );
        for (filter, reason) in denied {
            self.record(
                conn_id,
                EventKind::AclDenied,
                "subscribe",
                &filter,
                reason,
                now,
            );
        }
        for (filter, qos, id) in retained_for {
            self.send_retained(session_key, &filter, qos, id, now);
        }
    }

    fn send_retained(
        &mut self,
        session: SessionKey,
        filter: &TopicFilter,
        qos: QoS,
        id: Option<SubscriptionId>,
        now: Instant,
    ) {
        let matching: Vec<Arc<Message>> = if filter.has_wildcards() {
            let mut found = Vec::new();
            self.routing
                .retained
                .matching(filter.match_filter(), &mut found);
            found.sort_by(|a, b| a.topic.cmp(&b.topic));
            found
        } else {
            self.routing
                .retained
                .get(filter.as_str())
                .cloned()
                .into_iter()
                .collect()
        };
        let conn_id = self.clients.online.get(&session).copied();
        for message in matching {
            if message.is_expired(now) {
                self.routing.retained.remove(message.topic.as_str());
                self.journal
                    .push(StoreOp::RetainedCleared(message.topic.clone()));
                self.quotas.removed(message.topic.as_str());
                self.stats.messages_expired += 1;
                continue;
            }
            // Defence in depth: the filter was granted, and still each message is checked.
            let allowed = conn_id
                .and_then(|c| self.clients.conns.get(&c))
                .and_then(|c| c.authz.acl())
                .is_none_or(|acl| acl.may_receive(message.topic.as_str()));
            if !allowed {
                if let Some(c) = conn_id {
                    self.record(
                        c,
                        EventKind::AclDenied,
                        "retained",
                        message.topic.as_str(),
                        "the client may not receive this topic".to_owned(),
                        now,
                    );
                }
                continue;
            }
            let delivery = Delivery {
                qos: message.qos.min(qos),
                retain: true,
                subscription_ids: id.into_iter().collect(),
                group: None,
                seq: 0,
                message,
            };
            self.deliver_to(session, delivery, now);
        }
    }

    fn handle_unsubscribe(&mut self, conn_id: ConnectionId, unsubscribe: Unsubscribe) {
        let mut codes = Vec::with_capacity(unsubscribe.filters.len());
        for filter in unsubscribe.filters {
            let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
                return;
            };
            let key = conn.session.key;
            let removed = conn.session.subscriptions.remove(filter.as_str());
            codes.push(if removed.is_some() {
                self.routing.subscriptions = self.routing.subscriptions.saturating_sub(1);
                self.count_subscriptions(key, -1);
                self.routing.unindex(key, &filter);
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        self.push(
            conn_id,
            Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                properties: AckProperties::default(),
                reason_codes: codes,
            }),
        );
    }

    // ----- DISCONNECT and loss -------------------------------------------------------------

    fn handle_disconnect(&mut self, conn_id: ConnectionId, disconnect: Disconnect, now: Instant) {
        let max_expiry = self.config.max_session_expiry_interval;
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

    /// Ends a session: its subscriptions go, its will is sent, its shared messages move.
    fn end_session(&mut self, mut session: Session, now: Instant) {
        let key = session.key;
        if session.is_journaled() {
            self.journal.push(StoreOp::SessionEnded {
                client_id: session.client_id.clone(),
            });
            session.stop_journal();
        }
        let records: Vec<TopicFilter> = session
            .subscriptions
            .drain()
            .map(|(_, record)| record.filter)
            .collect();
        self.routing.subscriptions = self.routing.subscriptions.saturating_sub(records.len());
        self.count_subscriptions(key, -isize::try_from(records.len()).unwrap_or(isize::MAX));
        for filter in &records {
            self.routing.unindex(key, filter);
        }
        if self.clients.client_ids.get(&session.client_id) == Some(&key) {
            self.clients.client_ids.remove(&session.client_id);
        }
        // Drops not reported yet are reported now: the session's record goes.
        if let Some((topic, count)) = self.reports.session_ended(key) {
            self.overflow_event(key, None, Some(session.client_id.clone()), &topic, count);
        }
        // The will goes first: a retained will counts for the session's user.
        if let Some(pending) = self.wills.cancel(key) {
            self.publish_will(key, pending, now);
        }
        self.clients.owners.remove(&key);
        for delivery in take_shared(&mut self.journal, &mut session, true) {
            self.redeliver_shared(delivery, key, now);
        }
    }

    /// Records a parked persistent session again (its will was sent).
    fn save_parked(&mut self, key: SessionKey) {
        if let Some(session) = self.clients.parked.get(key)
            && session.is_journaled()
        {
            let record = self.record_of(session, session.parked_at, None);
            self.journal.push(StoreOp::Session(Box::new(record)));
        }
    }

    fn fire_due_wills(&mut self, now: Instant) {
        while let Some((key, pending)) = self.wills.take_due(now) {
            self.publish_will(key, pending, now);
            self.save_parked(key);
        }
    }

    fn publish_will(&mut self, key: SessionKey, pending: PendingWill, now: Instant) {
        let will = *pending.will;
        // Checked again: the rules may have changed since the CONNECT.
        if let Some(rules) = &self.acl {
            let acl = rules.resolve(&pending.principal, &pending.client_id);
            let (topic, qos, retain) = (will.topic.as_str(), will.qos.as_u8(), will.retain);
            if !acl.may_publish(topic, qos, retain) {
                self.stats.publishes_denied += 1;
                let reason = acl.check_publish(topic, qos, retain).to_string();
                self.push_event(AuthzEvent {
                    kind: EventKind::AclDenied,
                    client_id: pending.client_id,
                    principal: pending.principal,
                    action: "will",
                    topic: topic.into(),
                    reason,
                });
                return;
            }
        }
        if will.retain && !will.payload.is_empty() {
            let owner = self.clients.owner_of(key);
            let cost = will.payload.len() + will.topic.as_str().len();
            if self
                .retained_refusal(will.topic.as_str(), cost, owner.as_ref())
                .is_some()
            {
                self.stats.retained_refused += 1;
                return;
            }
        }
        self.publish_message(Arc::new(will_message(will, key, now)), now);
    }

    // ----- routing -------------------------------------------------------------------------

    /// Stores or clears the retained copy, then delivers `message` to every matching
    /// subscription. Returns how many subscriptions matched.
    pub fn publish_message(&mut self, message: Arc<Message>, now: Instant) -> usize {
        if message.retain {
            if message.payload.is_empty() {
                if self
                    .routing
                    .retained
                    .remove(message.topic.as_str())
                    .is_some()
                {
                    self.journal
                        .push(StoreOp::RetainedCleared(message.topic.clone()));
                }
                self.quotas.removed(message.topic.as_str());
            } else {
                let owner = message.publisher.and_then(|k| self.clients.owner_of(k));
                // `$SYS` topics are the broker's own, published again after a restart.
                if self.journal.is_on() && !message.topic.is_system() {
                    self.journal.push(StoreOp::Retained {
                        message: message.clone(),
                        owner: owner.clone(),
                    });
                }
                self.quotas
                    .stored(message.topic.as_str(), message.cost(), owner);
                self.routing.retained.insert(message.clone());
            }
        }
        let matches = self
            .routing
            .take_matches(message.topic.as_str(), message.publisher);
        let matched = matches.matched();
        let mut at = 0;
        while let Some(target) = matches.next_merged(&mut at) {
            if target.checked && !self.may_receive(target.session, &message) {
                continue;
            }
            let delivery = Delivery {
                message: message.clone(),
                qos: message.qos.min(target.qos),
                retain: target.retain_as_published && message.retain,
                subscription_ids: target.ids,
                group: None,
                seq: 0,
            };
            self.deliver_to(target.session, delivery, now);
        }
        for &group in &matches.groups {
            self.deliver_to_group(group, &message, None, now);
        }
        self.routing.give_back(matches);
        // Nothing outlives the call: the bodies are referenced by the outputs alone.
        self.bodies.clear();
        matched
    }

    /// Whether the connected client of `session` may receive `message` under its ACL's
    /// carve-outs. A parked session's messages are queued: what its client may not receive
    /// is dropped from the queue when it is back ([`Broker::prune`]).
    fn may_receive(&self, session: SessionKey, message: &Message) -> bool {
        self.clients.may_receive(session, message)
    }

    /// Picks the next member of a shared group, round robin, preferring connected members,
    /// never `except`, never one whose carve-outs keep the message out.
    fn deliver_to_group(
        &mut self,
        group: GroupKey,
        message: &Arc<Message>,
        except: Option<SessionKey>,
        now: Instant,
    ) -> bool {
        let clients = &self.clients;
        let Some(member) = self.routing.choose_member(
            group,
            except,
            |session| clients.may_receive(session, message),
            |session| clients.online.contains_key(&session),
        ) else {
            return false;
        };
        let delivery = Delivery {
            message: message.clone(),
            qos: message.qos.min(member.options.qos),
            retain: member.options.retain_as_published && message.retain,
            subscription_ids: member.id.into_iter().collect(),
            group: Some(group),
            seq: 0,
        };
        self.deliver_to(member.session, delivery, now);
        true
    }

    fn redeliver_shared(&mut self, delivery: Delivery, from: SessionKey, now: Instant) {
        let Some(group) = delivery.group else {
            return;
        };
        if !self.deliver_to_group(group, &delivery.message, Some(from), now) {
            // No other member: it stays with the session that had it, if that still exists.
            self.deliver_to(from, delivery, now);
        }
    }

    /// Hands one delivery to a session: sent now if its client is connected and its window
    /// allows, otherwise queued (QoS 0 to a parked session only if so configured).
    fn deliver_to(&mut self, session: SessionKey, delivery: Delivery, now: Instant) {
        let limits = self.limits();
        match self.clients.online.get(&session) {
            Some(&conn_id) => {
                let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
                    return;
                };
                let window_open =
                    conn.session.inflight.len() < conn.send_window && conn.session.queue.is_empty();
                if delivery.qos == QoS::AtMostOnce || window_open {
                    self.send(conn_id, delivery, now);
                    return;
                }
                let topic = delivery.message.topic.clone();
                match conn.session.enqueue(&mut self.journal, delivery, limits) {
                    Ok(0) => {}
                    Ok(dropped) => {
                        self.queue_overflow(session, Some(conn_id), &topic, dropped, now)
                    }
                    Err(_) => {
                        self.queue_overflow(session, Some(conn_id), &topic, 1, now);
                        if limits.when_full == crate::session::QueuePolicy::Disconnect {
                            self.disconnect(
                                conn_id,
                                ReasonCode::QuotaExceeded,
                                "the session's queue is full (the client does not keep up)",
                                now,
                            );
                        }
                    }
                }
            }
            None => {
                if delivery.qos == QoS::AtMostOnce && !self.config.queue_qos0_offline {
                    self.stats.messages_dropped_offline_qos0 += 1;
                    return;
                }
                let topic = delivery.message.topic.clone();
                match self
                    .clients
                    .parked
                    .enqueue(&mut self.journal, session, delivery, limits)
                {
                    Ok(None | Some(0)) => {}
                    Ok(Some(dropped)) => self.queue_overflow(session, None, &topic, dropped, now),
                    Err(_) => self.queue_overflow(session, None, &topic, 1, now),
                }
            }
        }
    }

    /// `dropped` messages of a session were lost to its full queue: counted, and recorded as
    /// a security event at most once per session every [`crate::authz::EVENT_WINDOW`] (see
    /// [`Reports::overflow`]: the events add up to every message dropped).
    fn queue_overflow(
        &mut self,
        session: SessionKey,
        conn: Option<ConnectionId>,
        topic: &TopicName,
        dropped: usize,
        now: Instant,
    ) {
        self.stats.messages_dropped_queue_full += dropped as u64;
        let Some(count) = self.reports.overflow(session, topic, dropped as u64, now) else {
            return;
        };
        let conn = conn.or_else(|| self.clients.online.get(&session).copied());
        self.overflow_event(session, conn, None, topic, count);
    }

    /// Reports the drops of every session whose window has ended since its last event.
    fn report_overflows(&mut self, now: Instant) {
        for (session, topic, count) in self.reports.due_overflows(now) {
            let conn = self.clients.online.get(&session).copied();
            self.overflow_event(session, conn, None, &topic, count);
        }
    }

    /// The slow-consumer event of `count` messages of `session` dropped (`client_id`: its
    /// client id when neither a connection nor the store knows it any more).
    fn overflow_event(
        &mut self,
        session: SessionKey,
        conn: Option<ConnectionId>,
        client_id: Option<Arc<str>>,
        topic: &TopicName,
        count: u64,
    ) {
        let principal = conn
            .and_then(|c| self.clients.conns.get(&c))
            .map(|c| c.authz.principal.clone())
            .unwrap_or_default();
        let client_id = match (conn.and_then(|c| self.clients.conns.get(&c)), client_id) {
            (Some(c), _) => c.session.client_id.clone(),
            (None, Some(id)) => id,
            (None, None) => self
                .clients
                .parked
                .get(session)
                .map_or_else(|| Arc::from(""), |s| s.client_id.clone()),
        };
        let policy = match self.config.queue_full {
            crate::session::QueuePolicy::DropNewest => "drop_newest",
            crate::session::QueuePolicy::DropOldest => "drop_oldest",
            crate::session::QueuePolicy::Disconnect => "disconnect",
        };
        self.push_event(AuthzEvent {
            kind: EventKind::SlowConsumer,
            client_id,
            principal,
            action: "deliver",
            topic: topic.as_str().into(),
            reason: format!("session queue full ({policy}): {count} message(s) dropped"),
        });
    }

    /// Sends queued messages while the client's window has room.
    fn pump(&mut self, conn_id: ConnectionId, now: Instant) {
        loop {
            let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
                return;
            };
            if conn.session.inflight.len() >= conn.send_window {
                // QoS 0 messages at the head need no window.
                if conn
                    .session
                    .queue
                    .front()
                    .is_none_or(|d| d.qos != QoS::AtMostOnce)
                {
                    return;
                }
            }
            let Some(delivery) = conn.session.dequeue(&mut self.journal) else {
                return;
            };
            if !self.send(conn_id, delivery, now) {
                return;
            }
        }
    }

    /// Builds and emits the PUBLISH for one delivery. Returns false if it had to go back to
    /// the queue (no packet identifier free).
    fn send(&mut self, conn_id: ConnectionId, delivery: Delivery, now: Instant) -> bool {
        let Some(conn) = self.clients.conns.get_mut(&conn_id) else {
            return false;
        };
        if delivery.message.is_expired(now) {
            self.stats.messages_expired += 1;
            return true;
        }
        let (mut body, size) = self.bodies.body_for(&delivery, &conn.encoder, now);
        let max = u64::from(conn.encoder.max_packet_size());
        if size > max {
            // [MQTT-3.1.2-25]: a message too large for the client is not sent to it.
            self.stats.messages_dropped_too_large += 1;
            return true;
        }
        let mut packet_id = None;
        if delivery.qos != QoS::AtMostOnce {
            let Some(id) = conn.session.allocate_id() else {
                conn.session.requeue_front(&mut self.journal, delivery);
                return false;
            };
            packet_id = Some(id);
            let state = if delivery.qos == QoS::AtLeastOnce {
                OutState::AwaitPubAck
            } else {
                OutState::AwaitPubRec
            };
            conn.session.push_inflight(
                &mut self.journal,
                Inflight {
                    packet_id: id,
                    delivery,
                    state,
                },
            );
        }
        // A Topic Alias property takes 3 bytes; only assign one if they fit. The body then
        // becomes this connection's own.
        if conn.alias_max_out > 0 && size + 3 <= max {
            let mut own = Arc::unwrap_or_clone(body);
            conn.aliases
                .get_or_insert_with(Box::default)
                .apply_outbound(conn.alias_max_out, &mut own);
            body = Arc::new(own);
        }
        self.stats.messages_sent += 1;
        self.outputs.push_back((
            conn_id,
            Output::Publish(OutgoingPublish {
                publish: body,
                packet_id,
                dup: false,
            }),
        ));
        true
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

    /// Shared groups with their share name, filter and member count.
    pub fn shared_groups(&self) -> Vec<(String, String, usize)> {
        self.routing.shared_groups()
    }
}

/// Takes the deliveries that came through shared subscriptions out of a session: queued
/// ones, and in-flight ones not yet received (`all`: also those awaiting PUBREC).
fn take_shared(journal: &mut Journal, session: &mut Session, all: bool) -> Vec<Delivery> {
    let mut moved = session.take_queued(journal, |d| d.group.is_some() && d.qos != QoS::AtMostOnce);
    let mut pos = 0;
    while let Some(inflight) = session.inflight.get(pos) {
        let movable = inflight.delivery.group.is_some()
            && match inflight.state {
                OutState::AwaitPubAck => true,
                OutState::AwaitPubRec => all,
                OutState::AwaitPubComp => false,
            };
        if movable {
            if let Some(mut inflight) = session.remove_inflight(journal, pos) {
                // It leaves this session: the next one numbers it anew.
                inflight.delivery.seq = 0;
                moved.push(inflight.delivery);
            }
        } else {
            pos += 1;
        }
    }
    moved
}
