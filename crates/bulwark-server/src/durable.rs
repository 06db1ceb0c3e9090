//! Durability: the engine's journal committed to a [`Store`] on a thread of its own, and the
//! router's outputs held until the commit that covers them is durable.
//!
//! Each round of the router that changed durable state sends its operations to the writer
//! thread as one batch, numbered; the writer takes every batch waiting, commits them as one
//! (group commit: one sync for as many rounds as arrived meanwhile), and publishes the number
//! of the last batch committed. The round's outputs (PUBACK, PUBREC, deliveries, ...) wait in
//! [`Held`] until then; a round without operations that follows a held one waits behind it, so
//! every connection's outputs keep their order. A commit that fails is retried (once a second,
//! logged) and nothing it covers is sent meanwhile: an acknowledgement is never sent for what
//! the store does not hold.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bulwark_core::{ConnectionId, Output, StoreOp};
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
    thread: Option<std::thread::JoinHandle<()>>,
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
            thread: Some(thread),
        })
    }

    /// Takes one round: sent at once (returned) if it changed nothing durable and nothing is
    /// waiting, else held behind the commit of its operations (or of the last batch sent).
    pub(crate) fn round(&mut self, ops: Vec<StoreOp>, round: Round) -> Option<Round> {
        if ops.is_empty() && self.rounds.is_empty() {
            return Some(round);
        }
        if !ops.is_empty() {
            self.sent += 1;
            if self.to_writer.send((self.sent, ops)).is_err() {
                tracing::error!("the store's writer has stopped: acknowledgements are held");
            }
        }
        if !round.is_empty() {
            self.rounds.push_back((self.sent, round));
        }
        None
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
