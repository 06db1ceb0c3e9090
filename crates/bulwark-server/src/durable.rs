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
//! QoS 0 and QoS 1 deliveries to a connection with nothing waiting go out at once: the
//! publisher's acknowledgement still waits for the commit, and if the broker stops before it,
//! the publisher sends the message again, which QoS 1 allows its subscribers to receive twice.
//! A subscriber that acknowledges before the commit makes the message's record and its removal
//! land in the same commit, where neither reaches the disk. QoS 2 deliveries always wait
//! (exactly once).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bulwark_core::{ConnectionId, Output, StoreOp};
use bulwark_proto::QoS;
use bulwark_store::Store;
use tokio::sync::Notify;

/// How long the writer waits before it retries a failed commit.
const RETRY: Duration = Duration::from_secs(1);

/// One round's outputs, by connection, in the order the engine produced them.
pub(crate) type Round = Vec<(ConnectionId, Vec<Output>)>;

/// The router's side: batches to the writer, and the rounds waiting for them.
pub(crate) struct Held {
    to_writer: std::sync::mpsc::Sender<(u64, Vec<StoreOp>)>,
    committed: Arc<AtomicU64>,
    /// Woken by the writer after each commit.
    pub(crate) wake: Arc<Notify>,
    /// The number of the last batch sent.
    sent: u64,
    rounds: VecDeque<(u64, Round)>,
    /// Connections with outputs in `rounds`, and in how many of them.
    waiting: HashMap<ConnectionId, usize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Whether `output` may go out before the commit of its round: a QoS 0 or 1 delivery.
fn early(output: &Output) -> bool {
    matches!(output, Output::Publish(p) if p.publish.qos != QoS::ExactlyOnce)
}

impl Held {
    /// Starts the writer thread on `store`.
    pub(crate) fn start(store: Box<dyn Store>) -> std::io::Result<Self> {
        let (to_writer, from_router) = std::sync::mpsc::channel();
        let committed = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(Notify::new());
        let (c, w) = (committed.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name("bulwark-store".to_owned())
            .spawn(move || writer(store, from_router, c, w))?;
        Ok(Self {
            to_writer,
            committed,
            wake,
            sent: 0,
            rounds: VecDeque::new(),
            waiting: HashMap::new(),
            thread: Some(thread),
        })
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
            *self.waiting.entry(conn).or_default() += 1;
            later.push((conn, outputs));
        }
        if !later.is_empty() {
            self.rounds.push_back((self.sent, later));
        }
        (!now.is_empty()).then_some(now)
    }

    /// The rounds whose batches are committed, oldest first.
    pub(crate) fn released(&mut self) -> Vec<Round> {
        let committed = self.committed.load(Ordering::Acquire);
        let mut out = Vec::new();
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

    /// Lets the writer commit what it was sent and waits for it to stop: at shutdown, so
    /// that the sessions parked last are in the store before the process ends.
    pub(crate) async fn finish(self) {
        let Self {
            to_writer, thread, ..
        } = self;
        drop(to_writer);
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn writer(
    mut store: Box<dyn Store>,
    batches: std::sync::mpsc::Receiver<(u64, Vec<StoreOp>)>,
    committed: Arc<AtomicU64>,
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
        loop {
            match store.commit(&ops) {
                Ok(()) => break,
                Err(err) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::error!(%err, failures, "the store refused a commit; acknowledgements wait until it succeeds");
                    }
                    std::thread::sleep(RETRY);
                    if let Err(err) = store.recover() {
                        tracing::error!(%err, "the store cannot be opened again");
                    }
                }
            }
        }
        if failures > 0 {
            tracing::warn!(failures, "the store commits again");
        }
        committed.store(last, Ordering::Release);
        wake.notify_one();
    }
    // Stopping: make everything committed durable (periodic sync).
    if let Err(err) = store.idle() {
        tracing::error!(%err, "the store's last sync failed");
    }
}
