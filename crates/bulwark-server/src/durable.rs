//! Durability: the engine's journal committed to a [`Store`] on a thread of its own, and the
//! router's outputs held until the commit that covers them is durable.
//!
//! Each round of the router that changed durable state sends its operations to the writer
//! thread as one batch, numbered; the writer takes every batch waiting, commits them as one
//! (group commit: one sync for as many rounds as arrived meanwhile), and publishes the number
//! of the last batch committed. The round's outputs (PUBACK, PUBREC, QoS 2 deliveries, ...)
//! wait in [`Held`] until then, by connection: a connection with outputs waiting gets every
//! later output queued behind them, so each connection's outputs keep their order. A commit
//! that fails is retried (once a second, logged) and nothing it covers is sent meanwhile: an
//! acknowledgement is never sent for what the store does not hold.
//!
//! While the store refuses its commits (a full disk, say), nothing waits for it that need not:
//! a CONNECT asking for a session the store would hold (or resuming one) is refused with
//! CONNACK 0x88 Server unavailable (3.1.1: return code 3) instead of waiting for a commit that
//! may never come, and a connection that is to close (shutdown, takeover, a limit) closes at
//! once, its waiting acknowledgements dropped: its client sends those messages again, so
//! nothing it was told is stored is lost. At shutdown the writer gives up on a failing store
//! instead of retrying forever; what it could not store was never acknowledged.
//!
//! QoS 0 and QoS 1 deliveries to a connection with nothing waiting go out at once: the
//! publisher's acknowledgement still waits for the commit, and if the broker stops before it,
//! the publisher sends the message again, which QoS 1 allows its subscribers to receive twice.
//! A subscriber that acknowledges before the commit makes the message's record and its removal
//! land in the same commit, where neither reaches the disk. QoS 2 deliveries always wait
//! (exactly once).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bulwark_core::{ConnectionId, Output, StoreOp};
use bulwark_proto::{ConnAck, Connect, Packet, QoS, ReasonCode};
use bulwark_store::Store;
use tokio::sync::Notify;

/// How long the writer waits before it retries a failed commit ...
const RETRY: Duration = Duration::from_secs(1);
/// ... in steps this long, to notice a shutdown.
const RETRY_STEP: Duration = Duration::from_millis(50);

/// What the writer and the router share besides the batches.
#[derive(Debug, Default)]
struct Shared {
    /// The number of the last batch committed.
    committed: AtomicU64,
    /// The last commit failed and none has succeeded since.
    failing: AtomicBool,
    /// The broker is stopping: a commit that fails is given up, not retried.
    stopping: AtomicBool,
    /// Commits, failures and how long they took, for metrics.
    stats: CommitStats,
}

/// Upper bounds (seconds) of the commit latency histogram's buckets; the last bucket is
/// everything slower.
pub(crate) const COMMIT_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// Commit attempts of the store's writer, counted as they end.
#[derive(Debug, Default)]
struct CommitStats {
    /// Attempts in each bucket of [`COMMIT_BUCKETS`], and slower ones last.
    buckets: [AtomicU64; COMMIT_BUCKETS.len() + 1],
    /// Sum of the attempts' durations, in nanoseconds.
    nanos: AtomicU64,
    /// Attempts that failed.
    failed: AtomicU64,
}

impl CommitStats {
    fn record(&self, took: Duration, ok: bool) {
        let seconds = took.as_secs_f64();
        let bucket = COMMIT_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(COMMIT_BUCKETS.len());
        if let Some(count) = self.buckets.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The store's commit figures as metrics read them ([`Held::metrics`]).
#[derive(Debug, Clone)]
pub(crate) struct StoreMetrics(Arc<Shared>);

/// A reading of [`StoreMetrics`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoreReading {
    /// Attempts per bucket of [`COMMIT_BUCKETS`] (not cumulative), and slower ones last.
    pub(crate) buckets: Vec<u64>,
    /// Total time of all attempts, in seconds.
    pub(crate) seconds: f64,
    /// Attempts that failed.
    pub(crate) failed: u64,
    /// Whether the last attempt failed and none succeeded since.
    pub(crate) failing: bool,
}

impl StoreMetrics {
    pub(crate) fn read(&self) -> StoreReading {
        let stats = &self.0.stats;
        StoreReading {
            buckets: stats
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            seconds: Duration::from_nanos(stats.nanos.load(Ordering::Relaxed)).as_secs_f64(),
            failed: stats.failed.load(Ordering::Relaxed),
            failing: self.0.failing.load(Ordering::Acquire),
        }
    }
}

/// One round's outputs, by connection, in the order the engine produced them.
pub(crate) type Round = Vec<(ConnectionId, Vec<Output>)>;

/// The router's side: batches to the writer, and the rounds waiting for them.
pub(crate) struct Held {
    to_writer: std::sync::mpsc::Sender<(u64, Vec<StoreOp>)>,
    shared: Arc<Shared>,
    /// Woken by the writer after each commit, and when commits start failing.
    pub(crate) wake: Arc<Notify>,
    /// The number of the last batch sent.
    sent: u64,
    rounds: VecDeque<(u64, Round)>,
    /// Connections with outputs in `rounds`, and in how many of them.
    waiting: HashMap<ConnectionId, usize>,
    /// Connections whose CONNACK (accepting them) was waiting when the store failed: they
    /// were sent CONNACK 0x88 instead, and the engine must let them go ([`Held::take_refused`]).
    refused: Vec<ConnectionId>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Whether `output` may go out before the commit of its round: a QoS 0 or 1 delivery.
fn early(output: &Output) -> bool {
    matches!(output, Output::Publish(p) if p.publish.qos != QoS::ExactlyOnce)
}

/// Whether the CONNACK of `connect` would wait for a commit: it asks for a session that
/// outlives the connection (3.1.1 Clean Session 0, 5.0 a Session Expiry Interval), or to resume
/// one (5.0 Clean Start 0), which the store holds.
fn needs_store(connect: &Connect) -> bool {
    !connect.clean_start
        || connect
            .properties
            .session_expiry_interval
            .is_some_and(|secs| secs > 0)
}

/// CONNACK 0x88 Server unavailable (3.1.1: return code 3), then the close.
fn unavailable() -> Vec<Output> {
    vec![
        Output::Packet(Box::new(Packet::ConnAck(Box::new(ConnAck::new(
            false,
            ReasonCode::ServerUnavailable,
        ))))),
        Output::Close,
    ]
}

/// What a connection that is to close gets while the store fails, from everything it had
/// waiting plus this round's outputs (in order, ending with its close): its DISCONNECT and
/// the close; or, if its CONNACK was among them (not sent yet), CONNACK 0x88 and the close.
/// Everything else is dropped: acknowledgements of what the store does not hold (the client
/// sends those messages again) and QoS 2 deliveries (sent again at the next connection).
fn close_now(outputs: Vec<Output>) -> Vec<Output> {
    let mut connack = false;
    let mut kept = Vec::new();
    for output in outputs {
        match output {
            Output::Packet(packet) => match *packet {
                Packet::ConnAck(_) => connack = true,
                Packet::Disconnect(d) => kept.push(Output::Packet(Box::new(Packet::Disconnect(d)))),
                _ => {}
            },
            Output::Close => break,
            // Dropped with the CONNACK it announces (refused instead, below).
            Output::Publish(_) | Output::Accepted(_) => {}
        }
    }
    if connack {
        return unavailable();
    }
    kept.push(Output::Close);
    kept
}

impl Held {
    /// Starts the writer thread on `store`.
    pub(crate) fn start(store: Box<dyn Store>) -> std::io::Result<Self> {
        let (to_writer, from_router) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared::default());
        let wake = Arc::new(Notify::new());
        let (c, w) = (shared.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name("bulwark-store".to_owned())
            .spawn(move || writer(store, from_router, c, w))?;
        Ok(Self {
            to_writer,
            shared,
            wake,
            sent: 0,
            rounds: VecDeque::new(),
            waiting: HashMap::new(),
            refused: Vec::new(),
            thread: Some(thread),
        })
    }

    /// The commit figures, for metrics.
    pub(crate) fn metrics(&self) -> StoreMetrics {
        StoreMetrics(self.shared.clone())
    }

    /// Takes one round and returns what may be sent now: a connection with outputs waiting
    /// waits with all of this round's too; otherwise its outputs go now if the round changed
    /// nothing durable, and else its leading QoS 0/1 deliveries go now and the rest waits for
    /// the commit of the round's operations.
    pub(crate) fn round(&mut self, ops: Vec<StoreOp>, round: Round) -> Option<Round> {
        if ops.is_empty() && self.rounds.is_empty() {
            return Some(round);
        }
        let durable = !ops.is_empty();
        if durable {
            self.sent += 1;
            if self.to_writer.send((self.sent, ops)).is_err() {
                tracing::error!("the store's writer has stopped: acknowledgements are held");
            }
        }
        let failing = self.failing();
        let mut now = Vec::new();
        let mut later = Vec::new();
        for (conn, mut outputs) in round {
            if !self.waiting.contains_key(&conn) {
                let ready = if durable {
                    outputs.iter().take_while(|o| early(o)).count()
                } else {
                    outputs.len()
                };
                if ready == outputs.len() {
                    now.push((conn, outputs));
                    continue;
                }
                let rest = outputs.split_off(ready);
                if !outputs.is_empty() {
                    now.push((conn, outputs));
                }
                outputs = rest;
            }
            // `outputs` would wait for the commit: not a close while the store fails.
            if failing && outputs.iter().any(|o| matches!(o, Output::Close)) {
                let mut all = self.take_waiting(conn);
                all.append(&mut outputs);
                now.push((conn, close_now(all)));
                continue;
            }
            *self.waiting.entry(conn).or_default() += 1;
            later.push((conn, outputs));
        }
        if !later.is_empty() {
            self.rounds.push_back((self.sent, later));
        }
        (!now.is_empty()).then_some(now)
    }

    /// Whether the store refuses its commits now: the last one failed, none succeeded since.
    pub(crate) fn failing(&self) -> bool {
        self.shared.failing.load(Ordering::Acquire)
    }

    /// Refuses `connect` on `outbox` (CONNACK 0x88, then the close; true) if the store is
    /// failing and its CONNACK would wait for a commit: it asks for a stored session, or ends
    /// one the store holds (`ends_stored`: Clean Start 1 over a persistent session). The
    /// engine never sees it.
    pub(crate) fn refuse_connect(
        &self,
        connect: &Connect,
        ends_stored: bool,
        outbox: &crate::outbox::Outbox,
        max_backlog: usize,
    ) -> bool {
        if !self.failing() || !(needs_store(connect) || ends_stored) {
            return false;
        }
        tracing::warn!(
            client_id = connect.client_id.as_str(),
            "CONNECT refused (server unavailable): its session needs the store, which is refusing commits"
        );
        outbox.push(&mut unavailable(), max_backlog);
        true
    }

    /// Takes everything `conn` has waiting, in order, out of the held rounds.
    fn take_waiting(&mut self, conn: ConnectionId) -> Vec<Output> {
        let mut taken = Vec::new();
        if self.waiting.remove(&conn).is_none() {
            return taken;
        }
        for (_, round) in &mut self.rounds {
            round.retain_mut(|(c, outputs)| {
                if *c == conn {
                    taken.append(outputs);
                    false
                } else {
                    true
                }
            });
        }
        self.rounds.retain(|(_, round)| !round.is_empty());
        taken
    }

    /// The rounds whose batches are committed, oldest first; while the store fails, also the
    /// closes of connections with outputs waiting (see [`close_now`]).
    pub(crate) fn released(&mut self) -> Vec<Round> {
        let committed = self.shared.committed.load(Ordering::Acquire);
        let mut out = Vec::new();
        if self.failing() {
            // Connections to close, and connections whose accepting CONNACK waits (it would
            // wait as long as the store fails: they are refused instead).
            let mut closing: Vec<ConnectionId> = Vec::new();
            for (conn, outputs) in self.rounds.iter().flat_map(|(_, round)| round.iter()) {
                let closes = outputs.iter().any(|o| matches!(o, Output::Close));
                let accepts = outputs.iter().any(|o| {
                    matches!(o, Output::Packet(p)
                        if matches!(&**p, Packet::ConnAck(a) if !a.reason_code.is_error()))
                });
                if (closes || accepts) && !closing.contains(conn) {
                    if accepts && !closes {
                        self.refused.push(*conn);
                    }
                    closing.push(*conn);
                }
            }
            let mut closes = Vec::new();
            for conn in closing {
                let all = self.take_waiting(conn);
                if !all.is_empty() {
                    closes.push((conn, close_now(all)));
                }
            }
            if !closes.is_empty() {
                out.push(closes);
            }
        }
        while self
            .rounds
            .front()
            .is_some_and(|(seq, _)| *seq <= committed)
        {
            if let Some((_, round)) = self.rounds.pop_front() {
                for (conn, _) in &round {
                    if let Some(n) = self.waiting.get_mut(conn) {
                        *n -= 1;
                        if *n == 0 {
                            self.waiting.remove(conn);
                        }
                    }
                }
                out.push(round);
            }
        }
        out
    }

    /// The connections refused by [`Held::released`] while the engine still counts them as
    /// connected.
    pub(crate) fn take_refused(&mut self) -> Vec<ConnectionId> {
        std::mem::take(&mut self.refused)
    }

    /// Lets the writer commit what it was sent and waits for it to stop: at shutdown, so
    /// that the sessions parked last are in the store before the process ends. A store that
    /// refuses a commit now is not retried: what it did not take was never acknowledged.
    pub(crate) async fn finish(self) {
        let Self {
            to_writer,
            thread,
            shared,
            ..
        } = self;
        shared.stopping.store(true, Ordering::Release);
        drop(to_writer);
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn writer(
    mut store: Box<dyn Store>,
    batches: std::sync::mpsc::Receiver<(u64, Vec<StoreOp>)>,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
) {
    loop {
        let next = match store.idle_interval() {
            Some(every) => match batches.recv_timeout(every) {
                Ok(batch) => Some(batch),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(err) = store.idle() {
                        tracing::error!(%err, "the store's background work failed");
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
            },
            None => batches.recv().ok(),
        };
        let Some((mut last, mut ops)) = next else {
            break;
        };
        // Group commit: everything that arrived while the last commit ran goes in this one.
        while let Ok((seq, more)) = batches.try_recv() {
            last = seq;
            ops.extend(more);
        }
        let mut failures = 0u32;
        let stored = loop {
            let started = std::time::Instant::now();
            let committed = store.commit(&ops);
            shared.stats.record(started.elapsed(), committed.is_ok());
            match committed {
                Ok(()) => break true,
                Err(err) => {
                    failures += 1;
                    if failures == 1 {
                        // The router refuses what would wait for the store, and lets
                        // connections that are to close go.
                        shared.failing.store(true, Ordering::Release);
                        wake.notify_one();
                    }
                    if shared.stopping.load(Ordering::Acquire) {
                        tracing::error!(%err, operations = ops.len(), "the store refused a commit at shutdown: given up (nothing it covers was acknowledged)");
                        break false;
                    }
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::error!(%err, failures, "the store refused a commit; acknowledgements wait until it succeeds");
                    }
                    let mut waited = Duration::ZERO;
                    while waited < RETRY && !shared.stopping.load(Ordering::Acquire) {
                        std::thread::sleep(RETRY_STEP);
                        waited += RETRY_STEP;
                    }
                    if let Err(err) = store.recover() {
                        tracing::error!(%err, "the store cannot be opened again");
                    }
                }
            }
        };
        if !stored {
            continue;
        }
        if failures > 0 {
            tracing::warn!(failures, "the store commits again");
            shared.failing.store(false, Ordering::Release);
        }
        shared.committed.store(last, Ordering::Release);
        wake.notify_one();
    }
    // Stopping: make everything committed durable (periodic sync).
    if let Err(err) = store.idle() {
        tracing::error!(%err, "the store's last sync failed");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

    use super::*;
    use bulwark_proto::{ClientId, Disconnect, PacketId, ProtocolVersion, PubAck};

    fn packet(p: Packet) -> Output {
        Output::Packet(Box::new(p))
    }

    fn kinds(outputs: &[Output]) -> Vec<String> {
        outputs
            .iter()
            .map(|o| match o {
                Output::Packet(p) => match &**p {
                    Packet::ConnAck(ack) => format!("connack {:?}", ack.reason_code),
                    Packet::Disconnect(d) => format!("disconnect {:?}", d.reason_code),
                    other => format!("{:?}", other.packet_type()),
                },
                Output::Publish(_) => "publish".to_owned(),
                Output::Accepted(_) => "accepted".to_owned(),
                Output::Close => "close".to_owned(),
            })
            .collect()
    }

    #[test]
    fn a_closing_connection_keeps_only_its_disconnect_or_gets_a_refused_connack() {
        let puback = packet(Packet::PubAck(PubAck::new(PacketId::new(1).unwrap())));
        let disconnect = packet(Packet::Disconnect(Disconnect::new(
            ReasonCode::ServerShuttingDown,
        )));
        let out = close_now(vec![puback, disconnect, Output::Close]);
        assert_eq!(kinds(&out), ["disconnect ServerShuttingDown", "close"]);

        let connack = packet(Packet::ConnAck(Box::new(ConnAck::new(
            true,
            ReasonCode::Success,
        ))));
        let disconnect = packet(Packet::Disconnect(Disconnect::new(
            ReasonCode::ServerShuttingDown,
        )));
        let out = close_now(vec![connack, disconnect, Output::Close]);
        assert_eq!(kinds(&out), ["connack ServerUnavailable", "close"]);
    }

    #[test]
    fn sessions_that_outlive_the_connection_need_the_store() {
        let connect = |clean: bool, expiry: Option<u32>| {
            let mut c = Connect::new(ProtocolVersion::V5, ClientId::new("c").unwrap());
            c.clean_start = clean;
            c.properties.session_expiry_interval = expiry;
            c
        };
        assert!(!needs_store(&connect(true, None)));
        assert!(!needs_store(&connect(true, Some(0))));
        assert!(needs_store(&connect(true, Some(60))));
        assert!(needs_store(&connect(false, None)));
        let mut v311 = Connect::new(ProtocolVersion::V3_1_1, ClientId::new("c").unwrap());
        v311.clean_start = false;
        assert!(needs_store(&v311));
    }
}
