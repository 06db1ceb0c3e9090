//! The end-to-end window: how many messages may be published and not yet received, summed
//! over every publisher of a scenario.
//!
//! Without it a fast publisher outruns the broker and the subscriber, queues grow until the
//! broker drops messages or runs out of memory, and the latency measured is the queue's length,
//! not the broker's. With it the broker's queues stay bounded (below the per-session limits of
//! Mosquitto and Bulwark, both 1000 messages by default), and throughput is what the broker
//! sustains.
//!
//! The window counts in deliveries ("units"): a publication that `k` subscribers receive takes
//! `k` units, and each subscriber gives one back per message it receives, or per message it
//! will never receive (a gap in a publisher's sequence).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// A counting window shared by the publishers (who take) and subscribers (who give back).
#[derive(Debug)]
pub struct Window {
    capacity: u64,
    outstanding: AtomicU64,
    /// Publishers waiting for room; releases only pay for a wake-up when someone waits.
    waiting: AtomicUsize,
    notify: Notify,
    /// The clock of `last_release_ns`.
    created: Instant,
    /// When units last came back (or the window was last reset), nanoseconds since `created`.
    last_release_ns: AtomicU64,
    /// Room that is worth a wake-up: waking a publisher for one free unit among a hundred
    /// waiting publishers costs more CPU than the broker spends on the message.
    wake_room: u64,
}

impl Window {
    /// A window of `capacity` units (at least 1) for messages of `unit` units each.
    pub fn new(capacity: u64, unit: u64) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            wake_room: (capacity / 16).max(unit).clamp(1, capacity),
            outstanding: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            notify: Notify::new(),
            created: Instant::now(),
            last_release_ns: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Units the window holds.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Units taken and not yet given back.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::SeqCst)
    }

    /// Takes room for up to `messages` messages of `unit` units each; returns how many
    /// messages it took room for (possibly 0).
    pub fn try_acquire(&self, messages: u64, unit: u64) -> u64 {
        let unit = unit.max(1);
        let mut current = self.outstanding.load(Ordering::SeqCst);
        loop {
            let free = self.capacity.saturating_sub(current);
            let granted = messages.min(free / unit);
            if granted == 0 {
                return 0;
            }
            let next = current.saturating_add(granted.saturating_mul(unit));
            match self.outstanding.compare_exchange_weak(
                current,
                next,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return granted,
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives `units` back and wakes waiting publishers.
    pub fn release(&self, units: u64) {
        if units == 0 {
            return;
        }
        // Saturating: a message counted lost by a sequence gap that turns up later, after a
        // reset, must not wrap the counter.
        let _ = self
            .outstanding
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(units))
            });
        self.last_release_ns.store(self.now_ns(), Ordering::SeqCst);
        self.pass_on();
    }

    /// Wakes one waiting publisher if there is room worth waking for. Waking one at a time,
    /// each passing on to the next while room is left, keeps a hundred publishers from all
    /// waking for the same few units; a publisher that got room calls this after taking it.
    pub fn pass_on(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0
            && self.capacity.saturating_sub(self.outstanding()) >= self.wake_room
        {
            self.notify.notify_one();
        }
    }

    /// Forgets every outstanding unit if none has come back for `stall`: the messages they
    /// stand for are taken as lost, so that a broker that drops messages (or a subscriber that
    /// died) slows the run down instead of stopping it. The test is on the whole window, not on
    /// one publisher's wait: with many publishers one may wait long while the others keep the
    /// window moving. Of several publishers asking at once, one resets. Returns whether it
    /// reset.
    pub fn reset_if_stalled(&self, stall: Duration) -> bool {
        let now = self.now_ns();
        let last = self.last_release_ns.load(Ordering::SeqCst);
        let stall = u64::try_from(stall.as_nanos()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) < stall || self.outstanding() == 0 {
            return false;
        }
        if self
            .last_release_ns
            .compare_exchange(last, now, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        self.outstanding.store(0, Ordering::SeqCst);
        self.notify.notify_waiters();
        true
    }

    /// Registers a publisher as waiting until the returned guard is dropped. Call order, to
    /// miss no wake-up: create [`Window::notified`], enable it, call this, then
    /// [`Window::try_acquire`]; await the notification only if that took nothing, and call
    /// [`Window::pass_on`] if it took something. A wake-up can still be skipped while the
    /// free room is below the wake threshold; callers also wake on a timer.
    pub fn wait_guard(&self) -> WaitGuard<'_> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        WaitGuard { window: self }
    }

    /// A future that resolves on the next release after it was enabled.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

/// Marks a publisher as waiting for room; see [`Window::wait_guard`].
#[derive(Debug)]
pub struct WaitGuard<'a> {
    window: &'a Window,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.window.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_up_to_capacity_in_whole_messages() {
        let w = Window::new(10, 1);
        assert_eq!(w.try_acquire(4, 1), 4);
        assert_eq!(w.try_acquire(100, 1), 6);
        assert_eq!(w.try_acquire(1, 1), 0);
        w.release(3);
        assert_eq!(w.outstanding(), 7);
        // A message for two subscribers needs two units: only one fits in three.
        assert_eq!(w.try_acquire(5, 2), 1);
        assert_eq!(w.outstanding(), 9);
    }

    #[test]
    fn release_saturates() {
        let w = Window::new(5, 1);
        assert_eq!(w.try_acquire(5, 1), 5);
        w.release(8);
        assert_eq!(w.outstanding(), 0);
    }

    #[test]
    fn reset_only_when_nothing_came_back() {
        let w = Window::new(5, 1);
        // Nothing outstanding: nothing to reset.
        assert!(!w.reset_if_stalled(Duration::ZERO));
        assert_eq!(w.try_acquire(3, 1), 3);
        w.release(1);
        assert!(!w.reset_if_stalled(Duration::from_secs(3600)));
        assert_eq!(w.outstanding(), 2);
        std::thread::sleep(Duration::from_millis(5));
        assert!(w.reset_if_stalled(Duration::from_millis(1)));
        assert_eq!(w.outstanding(), 0);
        // A reset counts as activity: no second reset right after it.
        assert_eq!(w.try_acquire(2, 1), 2);
        assert!(!w.reset_if_stalled(Duration::from_secs(3600)));
    }

    #[test]
    fn zero_capacity_is_one() {
        let w = Window::new(0, 1);
        assert_eq!(w.capacity(), 1);
        assert_eq!(w.try_acquire(2, 1), 1);
    }

    #[test]
    fn wake_room() {
        assert_eq!(Window::new(1000, 1).wake_room, 62);
        // Fan-out: a message needs 1000 units; less room would wake for nothing.
        assert_eq!(Window::new(20_000, 1000).wake_room, 1250);
        assert_eq!(Window::new(500, 1000).wake_room, 500);
        assert_eq!(Window::new(3, 1).wake_room, 1);
    }

    #[tokio::test]
    async fn release_wakes_a_waiting_publisher() {
        let w = std::sync::Arc::new(Window::new(1, 1));
        assert_eq!(w.try_acquire(1, 1), 1);
        let waiter = {
            let w = w.clone();
            tokio::spawn(async move {
                loop {
                    let notified = w.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    let _guard = w.wait_guard();
                    if w.try_acquire(1, 1) == 1 {
                        return;
                    }
                    notified.await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        w.release(1);
        let done = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(matches!(done, Ok(Ok(()))));
    }
}
