//! The router task: owns the engine, takes packets from the drivers, hands outputs back.
//!
//! Drivers decode and encode on every core; the router only runs engine logic, on batches, and
//! never waits on a driver: each driver's [`Outbox`] is unbounded, bounded in practice by the
//! engine's inflight windows and queues, and for QoS 0 by the per-connection backlog check.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bulwark_core::{Broker, ConnectionId, Output};
use bulwark_limits::admission::Refused;
use bulwark_proto::{Connect, Packet};
use tokio::sync::{mpsc, watch};

use crate::outbox::Outbox;

/// A message from a driver to the router.
#[derive(Debug)]
pub(crate) enum ToRouter {
    /// A CONNECT was decoded; `outbox` reaches the driver.
    Connect {
        conn: ConnectionId,
        connect: Box<Connect>,
        outbox: Arc<Outbox>,
        /// What the CONNACK carries back from an enhanced authentication exchange.
        auth: bulwark_core::ConnectAuth,
    },
    /// Packets decoded after CONNECT, in order.
    Packets {
        conn: ConnectionId,
        packets: Vec<Packet>,
    },
    /// The connection ended without the engine asking for it.
    Lost { conn: ConnectionId },
    /// The driver forwarded everything its client had sent when the router asked
    /// ([`Outbox::request_drain`]).
    Drained { conn: ConnectionId },
    /// Memory is over its watermark: drop this many bytes of queued messages.
    Shed(usize),
    /// Put these ACL rules in force (a reload).
    Acl(Arc<bulwark_acl::AclRules>),
    /// A connection re-authenticated: what is known of its client now.
    Principal {
        conn: ConnectionId,
        principal: Arc<bulwark_acl::Principal>,
    },
    /// Run this over the engine between two rounds, for the admin API; it must do bounded
    /// work (a page of a list, one client's record, counters) and send its answer itself.
    /// What it changes (a deleted session or retained message) goes out and to the durable
    /// store with the round, as a client's packet would.
    Inspect(Inspection),
    /// Close these connections (revoked certificates, bans, an operator's kick).
    Kick {
        conns: Vec<ConnectionId>,
        code: bulwark_proto::ReasonCode,
        why: &'static str,
    },
}

/// A look at the engine for the admin API (see [`ToRouter::Inspect`]).
pub(crate) struct Inspection(pub(crate) Box<Look>);

/// What an [`Inspection`] runs: the engine, and the time of the round.
pub(crate) type Look = dyn FnOnce(&mut Broker, Instant) + Send;

impl std::fmt::Debug for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inspection")
    }
}

/// Bytes moved by all drivers, for `$SYS`.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    pub(crate) received: AtomicU64,
    pub(crate) sent: AtomicU64,
    /// Sockets refused by admission control.
    pub(crate) refused: AtomicU64,
    /// Connections closed because their client broke the protocol or a limit.
    pub(crate) expelled: AtomicU64,
    /// Sockets refused, by reason ([`Refused::index`]).
    refused_by: [AtomicU64; Refused::ALL.len()],
    /// Sockets closed at once because their listener was at its own `max_connections`.
    pub(crate) listener_full: AtomicU64,
    /// Connections closed for a protocol violation or a limit, by the reason code they were
    /// closed with (rare: counted under a lock).
    violations: std::sync::Mutex<std::collections::BTreeMap<u8, u64>>,
}

impl Traffic {
    /// A socket refused by admission control.
    pub(crate) fn refuse(&self, why: Refused) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(count) = self.refused_by.get(why.index()) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sockets refused so far, by reason.
    pub(crate) fn refusals(&self) -> Vec<(Refused, u64)> {
        Refused::ALL
            .iter()
            .zip(&self.refused_by)
            .map(|(why, n)| (*why, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// A connection closed for breaking the protocol or a limit, with `code`.
    pub(crate) fn expel(&self, code: bulwark_proto::ReasonCode) {
        self.expelled.fetch_add(1, Ordering::Relaxed);
        *crate::sync::lock(&self.violations)
            .entry(code.as_u8())
            .or_insert(0) += 1;
    }

    /// Connections closed for breaking the protocol or a limit, by reason code.
    pub(crate) fn violations(&self) -> Vec<(u8, u64)> {
        crate::sync::lock(&self.violations)
            .iter()
            .map(|(c, n)| (*c, *n))
            .collect()
    }
}

pub(crate) struct Router {
    broker: Broker,
    rx: mpsc::Receiver<ToRouter>,
    traffic: Arc<Traffic>,
    shutdown: watch::Receiver<bool>,
    /// QoS 0 messages are dropped for a connection whose unsent bytes exceed this (counted
    /// in the engine's statistics, `$SYS/broker/messages/dropped`).
    max_backlog: usize,
    /// This round's outputs, one entry per connection (reused between rounds).
    groups: Vec<(ConnectionId, Vec<Output>)>,
    /// Where each connection's entry in `groups` is.
    slots: HashMap<ConnectionId, usize>,
    /// Emptied output buffers, kept for the next rounds.
    spare: Vec<Vec<Output>>,
    /// Closes asked for connections whose CONNECT has not arrived yet (authenticated, about
    /// to register): applied when it does. Dropped after [`PENDING_KICK_LIFE`].
    pending_kicks: HashMap<ConnectionId, (bulwark_proto::ReasonCode, &'static str, Instant)>,
    /// Where the engine's authorization events go.
    audit: crate::audit::Audit,
    /// With a durable store: each round's outputs wait here for the commit of its changes.
    held: Option<crate::durable::Held>,
}

/// What a router is made of: the engine and the ends of its channels.
pub(crate) struct RouterParts {
    pub(crate) broker: Broker,
    pub(crate) rx: mpsc::Receiver<ToRouter>,
    pub(crate) traffic: Arc<Traffic>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) max_backlog: usize,
    pub(crate) audit: crate::audit::Audit,
    pub(crate) held: Option<crate::durable::Held>,
}

/// CONNECTs that take a live connection over, waiting until that connection has forwarded
/// what its client sent before (a DISCONNECT among it decides whether the will goes), by the
/// connection taken over.
#[derive(Default)]
pub(crate) struct Takeovers {
    waiting: HashMap<ConnectionId, Waiting>,
    /// The connection each held CONNECT waits for, by the held connection.
    held: HashMap<ConnectionId, ConnectionId>,
}

struct Waiting {
    /// Past this, the CONNECTs go ahead without the driver's answer (it may be blocked on a
    /// client that does not read).
    until: Instant,
    /// The driver answered.
    drained: bool,
    connects: Vec<PendingConnect>,
}

/// A CONNECT held back by a takeover.
struct PendingConnect {
    conn: ConnectionId,
    connect: Box<Connect>,
    outbox: Arc<Outbox>,
    auth: bulwark_core::ConnectAuth,
    /// What its driver sent after the CONNECT (packets, its loss), applied after it.
    later: Vec<ToRouter>,
}

/// How long a takeover waits for the old connection's driver to forward what it has.
const TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Takeovers {
    fn next_deadline(&self) -> Option<Instant> {
        self.waiting.values().map(|w| w.until).min()
    }

    /// Keeps `msg` for after its connection's held CONNECT; gives it back if that connection
    /// has none.
    fn hold(&mut self, msg: ToRouter) -> Option<ToRouter> {
        // The hot path: nothing is held.
        if self.held.is_empty() {
            return Some(msg);
        }
        let conn = match &msg {
            ToRouter::Packets { conn, .. }
            | ToRouter::Lost { conn }
            | ToRouter::Principal { conn, .. } => *conn,
            _ => return Some(msg),
        };
        let pending = self
            .held
            .get(&conn)
            .and_then(|old| self.waiting.get_mut(old))
            .and_then(|w| w.connects.iter_mut().find(|p| p.conn == conn));
        match pending {
            Some(pending) => {
                pending.later.push(msg);
                None
            }
            None => Some(msg),
        }
    }
}

/// How long a close waits for its connection's CONNECT. A connection registers with the
/// router right after its authentication; one that never does has ended.
const PENDING_KICK_LIFE: std::time::Duration = std::time::Duration::from_secs(60);

/// At most this many spare output buffers are kept ...
const SPARE_MAX: usize = 64;
/// ... each of at most this many entries.
const SPARE_MAX_LEN: usize = 1024;

impl Router {
    pub(crate) fn new(parts: RouterParts) -> Self {
        let RouterParts {
            broker,
            rx,
            traffic,
            shutdown,
            max_backlog,
            audit,
            held,
        } = parts;
        Self {
            broker,
            rx,
            traffic,
            shutdown,
            max_backlog,
            groups: Vec::new(),
            slots: HashMap::new(),
            spare: Vec::new(),
            pending_kicks: HashMap::new(),
            audit,
            held,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut peers: HashMap<ConnectionId, Arc<Outbox>> = HashMap::new();
        let wake = self.held.as_ref().map(|h| h.wake.clone());
        let mut batch = Vec::with_capacity(256);
        let mut seen_traffic = (0u64, 0u64);
        let mut seen_refused = 0u64;
        let mut seen_expelled = 0u64;
        let mut stopping = false;
        let mut takeovers = Takeovers::default();
        loop {
            let deadline = match (self.broker.poll_timeout(), takeovers.next_deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let committed = async {
                match &wake {
                    Some(wake) => wake.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // A commit finished: `dispatch` below sends what it covered.
                () = committed => {}
                n = self.rx.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        break;
                    }
                    let now = Instant::now();
                    for msg in batch.drain(..) {
                        self.apply(msg, &mut peers, &mut takeovers, now);
                    }
                }
                () = sleep => {
                    let received = self.traffic.received.load(Ordering::Relaxed);
                    let sent = self.traffic.sent.load(Ordering::Relaxed);
                    self.broker.add_traffic(
                        received.saturating_sub(seen_traffic.0),
                        sent.saturating_sub(seen_traffic.1),
                    );
                    seen_traffic = (received, sent);
                    let refused = self.traffic.refused.load(Ordering::Relaxed);
                    self.broker.add_refused(refused.saturating_sub(seen_refused));
                    seen_refused = refused;
                    let expelled = self.traffic.expelled.load(Ordering::Relaxed);
                    self.broker.add_expelled(expelled.saturating_sub(seen_expelled));
                    seen_expelled = expelled;
                    let now = Instant::now();
                    self.broker.handle_timeout(now);
                    self.release_takeovers(&mut peers, &mut takeovers, now);
                }
                changed = self.shutdown.changed(), if !stopping => {
                    // A closed sender counts as a shutdown too.
                    let _ = changed;
                    stopping = true;
                    let now = Instant::now();
                    self.broker.begin_shutdown(now);
                    // Refused now (the engine is shutting down) rather than left waiting.
                    for waiting in takeovers.waiting.values_mut() {
                        waiting.until = now;
                    }
                    self.release_takeovers(&mut peers, &mut takeovers, now);
                }
            }
            self.dispatch(&mut peers);
            if stopping && peers.is_empty() {
                // Keep answering drivers until they are gone, so none blocks on a full channel.
                self.rx.close();
            }
        }
        // The last rounds (the sessions parked at shutdown) are committed before the end.
        self.dispatch(&mut peers);
        if let Some(held) = self.held.take() {
            held.finish().await;
        }
    }

    /// Applies the CONNECTs whose takeover need wait no longer: the old connection's driver
    /// answered, the old connection is gone, or the wait is over.
    fn release_takeovers(
        &mut self,
        peers: &mut HashMap<ConnectionId, Arc<Outbox>>,
        takeovers: &mut Takeovers,
        now: Instant,
    ) {
        let ready: Vec<ConnectionId> = takeovers
            .waiting
            .iter()
            .filter(|(old, w)| w.drained || w.until <= now || !self.broker.is_live(**old))
            .map(|(old, _)| *old)
            .collect();
        for old in ready {
            if let Some(waiting) = takeovers.waiting.remove(&old) {
                for (i, mut pending) in waiting.connects.into_iter().enumerate() {
                    takeovers.held.remove(&pending.conn);
                    let later = std::mem::take(&mut pending.later);
                    if i == 0 {
                        self.connect(pending, peers, now);
                    } else {
                        // The one before took the identifier over: this one waits for that
                        // connection in turn.
                        self.connect_or_wait(pending, peers, takeovers, now);
                    }
                    for msg in later {
                        self.apply(msg, peers, takeovers, now);
                    }
                }
            }
        }
    }

    /// Hands a CONNECT to the engine, or holds it while the live connection it would take over
    /// forwards what its client sent (see [`Takeovers`]).
    fn connect_or_wait(
        &mut self,
        pending: PendingConnect,
        peers: &mut HashMap<ConnectionId, Arc<Outbox>>,
        takeovers: &mut Takeovers,
        now: Instant,
    ) {
        let conn = pending.conn;
        let Some(old) = self
            .broker
            .live_connection(pending.connect.client_id.as_str())
            .filter(|old| *old != conn)
        else {
            return self.connect(pending, peers, now);
        };
        let Some(old_outbox) = peers.get(&old) else {
            return self.connect(pending, peers, now);
        };
        takeovers.held.insert(conn, old);
        match takeovers.waiting.get_mut(&old) {
            Some(waiting) => waiting.connects.push(pending),
            None => {
                old_outbox.request_drain();
                takeovers.waiting.insert(
                    old,
                    Waiting {
                        until: now + TAKEOVER_WAIT,
                        drained: false,
                        connects: vec![pending],
                    },
                );
            }
        }
    }

    fn apply(
        &mut self,
        msg: ToRouter,
        peers: &mut HashMap<ConnectionId, Arc<Outbox>>,
        takeovers: &mut Takeovers,
        now: Instant,
    ) {
        let Some(msg) = takeovers.hold(msg) else {
            return;
        };
        match msg {
            ToRouter::Connect {
                conn,
                connect,
                outbox,
                auth,
            } => {
                // A failing store refuses a session it would hold rather than leave it waiting.
                if let Some(held) = &self.held
                    && held.refuse_connect(
                        &connect,
                        held.failing()
                            && self.broker.holds_stored_session(connect.client_id.as_str()),
                        &outbox,
                        self.max_backlog,
                    )
                {
                    return;
                }
                // A takeover waits until the old connection's driver has forwarded what its
                // client sent before this CONNECT arrived (a DISCONNECT 0x00 there discards
                // the will [MQTT-3.14.4-3]), whatever order the tasks ran in.
                let pending = PendingConnect {
                    conn,
                    connect,
                    outbox,
                    auth,
                    later: Vec::new(),
                };
                self.connect_or_wait(pending, peers, takeovers, now);
            }
            ToRouter::Packets { conn, packets } => {
                for packet in packets {
                    self.broker.handle_packet(conn, packet, now);
                }
                if !takeovers.waiting.is_empty()
                    && takeovers.waiting.contains_key(&conn)
                    && !self.broker.is_live(conn)
                {
                    self.release_takeovers(peers, takeovers, now);
                }
            }
            ToRouter::Lost { conn } => {
                self.broker.handle_connection_lost(conn, now);
                peers.remove(&conn);
                self.pending_kicks.remove(&conn);
                if let Some(waiting) = takeovers.waiting.get_mut(&conn) {
                    waiting.drained = true;
                }
                self.release_takeovers(peers, takeovers, now);
            }
            ToRouter::Drained { conn } => {
                if let Some(waiting) = takeovers.waiting.get_mut(&conn) {
                    waiting.drained = true;
                }
                self.release_takeovers(peers, takeovers, now);
            }
            ToRouter::Acl(rules) => self.broker.set_acl(Some(rules), now),
            ToRouter::Inspect(Inspection(look)) => look(&mut self.broker, now),
            ToRouter::Shed(bytes) => {
                let (messages, freed) = self.broker.shed(bytes);
                tracing::warn!(
                    messages,
                    freed,
                    "memory over its watermark: queued messages shed"
                );
            }
            ToRouter::Principal { conn, principal } => {
                self.broker.set_principal(conn, principal, now);
            }
            ToRouter::Kick { conns, code, why } => {
                self.pending_kicks
                    .retain(|_, (_, _, at)| now.saturating_duration_since(*at) < PENDING_KICK_LIFE);
                for conn in conns {
                    if peers.contains_key(&conn) {
                        // 5.0 clients are told why; all are closed.
                        self.broker.disconnect(conn, code, why, now);
                    } else {
                        self.pending_kicks.insert(conn, (code, why, now));
                    }
                }
            }
        }
    }

    /// Hands a CONNECT to the engine.
    fn connect(
        &mut self,
        pending: PendingConnect,
        peers: &mut HashMap<ConnectionId, Arc<Outbox>>,
        now: Instant,
    ) {
        let PendingConnect {
            conn,
            connect,
            outbox,
            auth,
            later: _,
        } = pending;
        peers.insert(conn, outbox);
        self.broker
            .handle_authenticated_connect(conn, *connect, auth, now);
        if let Some((code, why, _)) = self.pending_kicks.remove(&conn) {
            self.broker.disconnect(conn, code, why, now);
        }
    }

    /// Hands the engine's outputs to their drivers: all of one connection's outputs from this
    /// round go in one push (one lock, one wake-up, one write by the driver), in the order the
    /// engine produced them. A fan-out of a batch of messages thus costs one hand-over per
    /// subscriber, not one per delivery.
    fn dispatch(&mut self, peers: &mut HashMap<ConnectionId, Arc<Outbox>>) {
        if let Some(first) = self.broker.poll_event() {
            let at = std::time::SystemTime::now();
            let mut next = Some(first);
            while let Some(event) = next {
                self.audit.record(crate::acl::to_security_event(event, at));
                next = self.broker.poll_event();
            }
        }
        // Before the outputs: the close that follows an offence removes the connection's outbox.
        while let Some((conn, code)) = self.broker.poll_offence() {
            if let Some(outbox) = peers.get(&conn) {
                outbox.mark_offence(code);
            }
        }
        let mut groups = std::mem::take(&mut self.groups);
        let mut last: Option<(ConnectionId, usize)> = None;
        while let Some((conn, output)) = self.broker.poll_output() {
            let at = match last {
                Some((c, at)) if c == conn => at,
                _ => {
                    let next = groups.len();
                    let at = *self.slots.entry(conn).or_insert(next);
                    if at == next {
                        groups.push((conn, self.spare.pop().unwrap_or_default()));
                    }
                    last = Some((conn, at));
                    at
                }
            };
            match groups.get_mut(at) {
                Some((_, run)) => run.push(output),
                // Not reached: `at` indexes an entry of this round. Kept in order regardless.
                None => groups.push((conn, vec![output])),
            }
        }
        self.slots.clear();
        match self.held.as_mut() {
            None => {
                for (conn, run) in groups.drain(..) {
                    self.hand_over(peers, conn, run);
                }
            }
            Some(held) => {
                let ops = self.broker.take_store_ops();
                // What the last commits released first (older), so that their connections
                // are no longer held for this round.
                let mut ready = held.released();
                let refused = held.take_refused();
                ready.extend(held.round(ops, std::mem::take(&mut groups)));
                for round in ready {
                    for (conn, run) in round {
                        self.hand_over(peers, conn, run);
                    }
                }
                // Their clients were told 0x88 and closed: to the engine they left normally
                // (no will: as far as the client knows it never connected). What that
                // changes goes out with the next round.
                let now = Instant::now();
                for conn in refused {
                    let bye = bulwark_proto::Disconnect::new(bulwark_proto::ReasonCode::Success);
                    self.broker
                        .handle_packet(conn, Packet::Disconnect(bye), now);
                }
            }
        }
        self.groups = groups;
    }

    /// Pushes one connection's outputs to its driver (forgetting the connection if they close
    /// it) and keeps the emptied buffer for later rounds.
    fn hand_over(
        &mut self,
        peers: &mut HashMap<ConnectionId, Arc<Outbox>>,
        conn: ConnectionId,
        mut run: Vec<Output>,
    ) {
        let closes = run.iter().any(|o| matches!(o, Output::Close));
        if let Some(outbox) = peers.get(&conn) {
            let dropped = outbox.push(&mut run, self.max_backlog);
            if dropped > 0 {
                self.broker.add_dropped_backlog(dropped);
            }
        }
        if closes {
            peers.remove(&conn);
        }
        // A buffer the outbox did not keep is reused, unless it grew large.
        run.clear();
        if run.capacity() > 0 && run.capacity() <= SPARE_MAX_LEN && self.spare.len() < SPARE_MAX {
            self.spare.push(run);
        }
    }
}
