//! The blocking pool for password hashing: at most `threads` hashes at a time, at most
//! `max_pending` logins waiting, so that a login flood cannot take the cores that move
//! messages. No lock: a semaphore and a counter.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

/// Blocking work (password hashing) with bounded concurrency and a bounded queue.
#[derive(Debug)]
pub(super) struct HashPool {
    permits: Arc<Semaphore>,
    pending: AtomicUsize,
    max_pending: usize,
}

/// Gives back a place in the pool's queue.
struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A turn of the pool: a place in its queue and a thread's permit.
pub(super) struct Turn<'a> {
    _pending: Pending<'a>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl Turn<'_> {
    /// Runs `work` on a blocking thread with this turn.
    pub(super) async fn run<T: Send + 'static>(
        self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let Self { _pending, permit } = self;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .ok()
    }
}

impl HashPool {
    /// A pool of `threads` (at least one) with room for `max_pending` (at least one) waiting.
    pub(super) fn new(threads: usize, max_pending: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(threads.max(1))),
            pending: AtomicUsize::new(0),
            max_pending: max_pending.max(1),
        }
    }

    /// Waits for a turn; `None` if the queue is full.
    pub(super) async fn turn(&self) -> Option<Turn<'_>> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let pending = Pending(&self.pending);
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        Some(Turn {
            _pending: pending,
            permit,
        })
    }

    /// Runs `work` on a blocking thread; `None` if the queue is full.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        self.turn().await?.run(work).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_finished_turn_makes_room() {
        let pool = HashPool::new(1, 2);
        let first = pool.turn().await.expect("room");
        // The second waits for the thread's permit: it is in the queue, not refused.
        let second = pool.turn();
        tokio::pin!(second);
        let waited = tokio::time::timeout(Duration::from_millis(10), second.as_mut()).await;
        assert!(waited.is_err(), "waits for the permit");
        // Two places taken (the first's and the waiting second's): a third is refused.
        assert!(pool.turn().await.is_none());
        drop(first);
        let second = second.await.expect("the permit came free");
        assert_eq!(second.run(|| 7).await, Some(7));
        assert_eq!(pool.pending.load(Ordering::Acquire), 0);
        assert_eq!(pool.run(|| 8).await, Some(8));
    }

    #[tokio::test]
    async fn work_runs_at_most_threads_at_a_time() {
        let pool = Arc::new(HashPool::new(2, 100));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
            tasks.spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::AcqRel) + 1;
                    most.fetch_max(now, Ordering::AcqRel);
                    std::thread::sleep(Duration::from_millis(5));
                    running.fetch_sub(1, Ordering::AcqRel);
                })
                .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            assert_eq!(done.expect("no panic"), Some(()));
        }
        assert!(most.load(Ordering::Acquire) <= 2);
    }
}
