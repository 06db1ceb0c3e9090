//! The keep alive rule, as a timer the connection driver consults.

use std::time::{Duration, Instant};

/// Closes a connection that stays silent for one and a half times its keep alive
/// ([MQTT-3.1.2-22], [MQTT-3.1.2-24] in 3.1.1).
///
/// Call order: [`KeepAlive::handle_activity`] whenever a packet arrives, then sleep until
/// [`KeepAlive::poll_deadline`]; if that instant passes with no activity, the connection is
/// timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    grace: Option<Duration>,
    deadline: Option<Instant>,
}

impl KeepAlive {
    /// A timer for a keep alive of `seconds` (0: none).
    pub fn new(seconds: u16, now: Instant) -> Self {
        let grace = (seconds > 0).then(|| Duration::from_millis(u64::from(seconds) * 1500));
        Self {
            grace,
            deadline: grace.and_then(|g| now.checked_add(g)),
        }
    }

    /// A packet arrived.
    pub fn handle_activity(&mut self, now: Instant) {
        self.deadline = self.grace.and_then(|g| now.checked_add(g));
    }

    /// When the connection times out without further activity.
    pub fn poll_deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the connection has timed out at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_out_at_one_and_a_half_keep_alive() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(10, t0);
        assert!(!ka.is_expired(t0 + Duration::from_millis(14_999)));
        assert!(ka.is_expired(t0 + Duration::from_secs(15)));
        ka.handle_activity(t0 + Duration::from_secs(10));
        assert!(!ka.is_expired(t0 + Duration::from_secs(24)));
        assert!(ka.is_expired(t0 + Duration::from_secs(25)));
    }

    #[test]
    fn zero_means_no_timeout() {
        let t0 = Instant::now();
        let ka = KeepAlive::new(0, t0);
        assert_eq!(ka.poll_deadline(), None);
        assert!(!ka.is_expired(t0 + Duration::from_secs(1_000_000)));
    }
}
