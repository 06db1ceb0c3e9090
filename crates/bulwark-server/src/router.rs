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
    /// Memory is over its watermark: drop this many bytes of queued messages.
    Shed(usize),
    /// Put these ACL rules in force (a reload).
    Acl(Arc<bulwark_security::acl::AclRules>),
    /// A connection re-authenticated: what is known of its client now.
    Principal {
        conn: ConnectionId,
        principal: Arc<bulwark_security::acl::Principal>,
    },
    /// Close these connections: their client certificates were revoked.
    Kick {
        conns: Vec<ConnectionId>,
        code: bulwark_proto::ReasonCode,
        why: &'static str,
    },
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
}

pub(crate) struct Router {
    pub(crate) broker: Broker,
    pub(crate) rx: mpsc::Receiver<ToRouter>,
    pub(crate) traffic: Arc<Traffic>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// QoS 0 messages are dropped for a connection whose unsent bytes exceed this.
    pub(crate) max_backlog: usize,
    pub(crate) dropped_qos0: Arc<AtomicU64>,
    /// This round's outputs, one entry per connection (reused between rounds).
    pub(crate) groups: Vec<(ConnectionId, Vec<Output>)>,
    /// Where each connection's entry in `groups` is.
    pub(crate) slots: HashMap<ConnectionId, usize>,
    /// Emptied output buffers, kept for the next rounds.
    pub(crate) spare: Vec<Vec<Output>>,
    /// Closes asked for connections whose CONNECT has not arrived yet (authenticated, about
    /// to register): applied when it does. Dropped after [`PENDING_KICK_LIFE`].
    pub(crate) pending_kicks:
        HashMap<ConnectionId, (bulwark_proto::ReasonCode, &'static str, Instant)>,
    /// Where the engine's authorization events go.
    pub(crate) audit: crate::audit::Audit,
    /// With a durable store: each round's outputs wait here for the commit of its changes.
    pub(crate) held: Option<crate::durable::Held>,
}

/// How long a close waits for its connection's CONNECT. A connection registers with the
/// router right after its authentication; one that never does has ended.
const PENDING_KICK_LIFE: std::time::Duration = std::time::Duration::from_secs(60);

/// At most this many spare output buffers are kept ...
const SPARE_MAX: usize = 64;
/// ... each of at most this many entries.
const SPARE_MAX_LEN: usize = 1024;

impl Router {
    pub(crate) async fn run(mut self) {
        let mut peers: HashMap<ConnectionId, Arc<Outbox>> = HashMap::new();
        let wake = self.held.as_ref().map(|h| h.wake.clone());
        let mut batch = Vec::with_capacity(256);
        let mut seen_traffic = (0u64, 0u64);
        let mut seen_refused = 0u64;
        let mut seen_expelled = 0u64;
        let mut stopping = false;
        loop {
            let deadline = self.broker.poll_timeout();
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
                        self.apply(msg, &mut peers, now);
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
                    self.broker.handle_timeout(Instant::now());
                }
                changed = self.shutdown.changed(), if !stopping => {
                    // A closed sender counts as a shutdown too.
                    let _ = changed;
                    stopping = true;
                    self.broker.begin_shutdown(Instant::now());
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

    fn apply(
        &mut self,
        msg: ToRouter,
        peers: &mut HashMap<ConnectionId, Arc<Outbox>>,
        now: Instant,
    ) {
        match msg {
            ToRouter::Connect {
                conn,
                connect,
                outbox,
                auth,
            } => {
                peers.insert(conn, outbox);
                self.broker
                    .handle_authenticated_connect(conn, *connect, auth, now);
                if let Some((code, why, _)) = self.pending_kicks.remove(&conn) {
                    self.broker.disconnect(conn, code, why, now);
                }
            }
            ToRouter::Packets { conn, packets } => {
                for packet in packets {
                    self.broker.handle_packet(conn, packet, now);
                }
            }
            ToRouter::Lost { conn } => {
                self.broker.handle_connection_lost(conn, now);
                peers.remove(&conn);
                self.pending_kicks.remove(&conn);
            }
            ToRouter::Acl(rules) => self.broker.set_acl(Some(rules), now),
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

    /// Hands the engine's outputs to their drivers: all of one connection's outputs from this
    /// round go in one push (one lock, one wake-up, one write by the driver), in the order the
    /// engine produced them. A fan-out of a batch of messages thus costs one hand-over per
    /// subscriber, not one per delivery.
    fn dispatch(&mut self, peers: &mut HashMap<ConnectionId, Arc<Outbox>>) {
        if let Some(first) = self.broker.poll_event() {
            let at = std::time::SystemTime::now();
            let mut next = Some(first);
            while let Some(event) = next {
                self.audit
                    .record_now(crate::acl::to_security_event(event, at));
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
                ready.extend(held.round(ops, std::mem::take(&mut groups)));
                for round in ready {
                    for (conn, run) in round {
                        self.hand_over(peers, conn, run);
                    }
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
            self.dropped_qos0.fetch_add(dropped, Ordering::Relaxed);
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
