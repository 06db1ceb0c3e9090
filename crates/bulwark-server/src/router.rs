//! The router task: owns the engine, takes packets from the drivers, hands outputs back.
//!
//! Drivers decode and encode on every core; the router only runs engine logic, on batches, and
//! never waits on a driver: its channels to drivers are unbounded, bounded in practice by the
//! engine's inflight windows and queues, and for QoS 0 by the per-connection backlog check.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use bulwark_core::{Broker, ConnectionId, Output};
use bulwark_proto::{Connect, Packet, QoS};
use tokio::sync::{mpsc, watch};

/// A message from a driver to the router.
#[derive(Debug)]
pub(crate) enum ToRouter {
    /// A CONNECT was decoded; `tx` reaches the driver.
    Connect {
        conn: ConnectionId,
        connect: Box<Connect>,
        tx: mpsc::UnboundedSender<Output>,
        backlog: Arc<AtomicUsize>,
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

/// Bytes a packet adds to a connection's backlog.
pub(crate) fn backlog_cost(output: &Output) -> usize {
    match output {
        Output::Packet(Packet::Publish(p)) => p.payload.len() + p.topic.as_str().len(),
        _ => 0,
    }
}

struct Peer {
    tx: mpsc::UnboundedSender<Output>,
    backlog: Arc<AtomicUsize>,
}

pub(crate) struct Router {
    pub(crate) broker: Broker,
    pub(crate) rx: mpsc::Receiver<ToRouter>,
    pub(crate) traffic: Arc<Traffic>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// QoS 0 messages are dropped for a connection whose unsent bytes exceed this.
    pub(crate) max_backlog: usize,
    pub(crate) dropped_qos0: Arc<AtomicU64>,
}

impl Router {
    pub(crate) async fn run(mut self) {
        let mut peers: HashMap<ConnectionId, Peer> = HashMap::new();
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

    fn apply(&mut self, msg: ToRouter, peers: &mut HashMap<ConnectionId, Peer>, now: Instant) {
        match msg {
            ToRouter::Connect {
                conn,
                connect,
                tx,
                backlog,
            } => {
                peers.insert(conn, Peer { tx, backlog });
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

    fn dispatch(&mut self, peers: &mut HashMap<ConnectionId, Peer>) {
        while let Some((conn, output)) = self.broker.poll_output() {
            let Some(peer) = peers.get(&conn) else {
                continue;
            };
            let close = matches!(output, Output::Close);
            let cost = backlog_cost(&output);
            let is_qos0 =
                matches!(&output, Output::Packet(Packet::Publish(p)) if p.qos == QoS::AtMostOnce);
            if is_qos0 && peer.backlog.load(Ordering::Relaxed) > self.max_backlog {
                // A slow consumer loses QoS 0 first; QoS 1 and 2 are bounded by its window.
                self.dropped_qos0.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            peer.backlog.fetch_add(cost, Ordering::Relaxed);
            if peer.tx.send(output).is_err() || close {
                peers.remove(&conn);
            }
        }
    }
}
