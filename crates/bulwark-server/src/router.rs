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
    },
    /// Packets decoded after CONNECT, in order.
    Packets {
        conn: ConnectionId,
        packets: Vec<Packet>,
    },
    /// The connection ended without the engine asking for it.
    Lost { conn: ConnectionId },
}

/// Bytes moved by all drivers, for `$SYS`.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    pub(crate) received: AtomicU64,
    pub(crate) sent: AtomicU64,
}

pub(crate) struct Router {
    pub(crate) broker: Broker,
    pub(crate) rx: mpsc::Receiver<ToRouter>,
    pub(crate) traffic: Arc<Traffic>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// QoS 0 messages are dropped for a connection whose unsent bytes exceed this.
    pub(crate) max_backlog: usize,
    pub(crate) dropped_qos0: Arc<AtomicU64>,
    /// Reused buffer for one connection's run of outputs.
    pub(crate) run: Vec<Output>,
}

impl Router {
    pub(crate) async fn run(mut self) {
        let mut peers: HashMap<ConnectionId, Arc<Outbox>> = HashMap::new();
        let mut batch = Vec::with_capacity(256);
        let mut seen_traffic = (0u64, 0u64);
        let mut stopping = false;
        loop {
            let deadline = self.broker.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
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
            } => {
                peers.insert(conn, outbox);
                self.broker.handle_connect(conn, *connect, now);
            }
            ToRouter::Packets { conn, packets } => {
                for packet in packets {
                    self.broker.handle_packet(conn, packet, now);
                }
            }
            ToRouter::Lost { conn } => {
                self.broker.handle_connection_lost(conn, now);
                peers.remove(&conn);
            }
        }
    }

    /// Hands the engine's outputs to their drivers, one lock and one wake-up per run of
    /// outputs for the same connection.
    fn dispatch(&mut self, peers: &mut HashMap<ConnectionId, Arc<Outbox>>) {
        let mut run: Vec<Output> = std::mem::take(&mut self.run);
        let mut run_conn = None;
        loop {
            let next = self.broker.poll_output();
            let same = matches!((&next, run_conn), (Some((c, _)), Some(r)) if *c == r);
            if !same {
                if let Some(conn) = run_conn.take() {
                    let closes = run.iter().any(|o| matches!(o, Output::Close));
                    if let Some(outbox) = peers.get(&conn) {
                        let dropped = outbox.push(&mut run, self.max_backlog);
                        self.dropped_qos0.fetch_add(dropped, Ordering::Relaxed);
                    }
                    run.clear();
                    if closes {
                        peers.remove(&conn);
                    }
                }
            }
            let Some((conn, output)) = next else {
                break;
            };
            run_conn = Some(conn);
            run.push(output);
        }
        self.run = run;
    }
}
