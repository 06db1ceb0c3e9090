//! Per-client rates: messages and bytes a client may send per second, with bursts, enforced
//! by backpressure (the server stops reading that client's socket until the client is back
//! within its rate; nothing is dropped).
//!
//! [`RateSettings`] holds the default limit and overrides for listeners, users and groups;
//! [`RateSettings::for_client`] picks the one that applies to a client once, when it has
//! logged in. [`Limiter`] is that client's pair of token buckets: after each read,
//! [`Limiter::take`] says how long to stop reading. Time is an argument.

use std::time::{Duration, Instant};

/// One client's limit. A rate of 0 means no limit on that dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// PUBLISH packets per second.
    pub messages_per_second: u32,
    /// PUBLISH packets a client may send at once before the rate applies.
    pub messages_burst: u32,
    /// Bytes read from the client per second (every packet counts).
    pub bytes_per_second: u64,
    /// Bytes a client may send at once before the rate applies.
    pub bytes_burst: u64,
}

impl RateLimit {
    /// Whether nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.messages_per_second == 0 && self.bytes_per_second == 0
    }

    /// What is wrong with the limit, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.messages_per_second > 0 && self.messages_burst == 0 {
            return Err("messages_burst must be at least 1 when messages_per_second is set".into());
        }
        if self.bytes_per_second > 0 && self.bytes_burst == 0 {
            return Err("bytes_burst must be at least 1 when bytes_per_second is set".into());
        }
        Ok(())
    }
}

/// A limit for the clients of a listener, users or groups. The first override that applies
/// to a client wins; one with no condition applies to everybody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateOverride {
    /// The listener's name (none: any listener).
    pub listener: Option<String>,
    /// Usernames (empty: any user).
    pub users: Vec<String>,
    /// Groups, any of which the user must have (empty: any groups).
    pub groups: Vec<String>,
    /// The limit.
    pub limit: RateLimit,
}

/// The default and its overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateSettings {
    /// For a client no override applies to. Default: no limit.
    pub default: RateLimit,
    /// In order; the first that applies wins.
    pub overrides: Vec<RateOverride>,
}

impl RateSettings {
    /// The limit of a client.
    pub fn for_client(&self, listener: &str, username: Option<&str>, groups: &[&str]) -> RateLimit {
        self.overrides
            .iter()
            .find(|o| {
                o.listener.as_deref().is_none_or(|l| l == listener)
                    && (o.users.is_empty()
                        || username.is_some_and(|u| o.users.iter().any(|x| x == u)))
                    && (o.groups.is_empty()
                        || groups.iter().any(|g| o.groups.iter().any(|x| x == g)))
            })
            .map_or(self.default, |o| o.limit)
    }

    /// What is wrong with the settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        self.default.validate()?;
        for (i, o) in self.overrides.iter().enumerate() {
            o.limit
                .validate()
                .map_err(|e| format!("override {}: {e}", i + 1))?;
        }
        Ok(())
    }
}

/// A token bucket that may go into debt: what was already read must be paid for.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes `n` tokens; returns how long until the bucket is out of debt.
    fn take(&mut self, n: f64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - n;
        self.at = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            // A debt is at most one read's worth, so this is small; never a panic regardless.
            Duration::try_from_secs_f64(-self.tokens / self.rate).unwrap_or(Duration::MAX)
        }
    }
}

/// One client's buckets.
#[derive(Debug, Clone)]
pub struct Limiter {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    limit: RateLimit,
}

impl Limiter {
    /// Buckets for `limit`, full; `None` when nothing is limited.
    pub fn new(limit: RateLimit, now: Instant) -> Option<Self> {
        if limit.is_unlimited() {
            return None;
        }
        let bucket =
            |rate: f64, burst: f64| (rate > 0.0).then(|| Bucket::new(rate, burst.max(1.0), now));
        Some(Self {
            limit,
            messages: bucket(
                f64::from(limit.messages_per_second),
                f64::from(limit.messages_burst),
            ),
            // Byte counts far beyond 2^53 lose precision only above any real burst.
            bytes: bucket(limit.bytes_per_second as f64, limit.bytes_burst as f64),
        })
    }

    /// The limit it enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Accounts for `messages` PUBLISH packets and `bytes` bytes just read; returns how long
    /// the socket must not be read (zero: go on).
    pub fn take(&mut self, messages: u64, bytes: u64, now: Instant) -> Duration {
        let m = self
            .messages
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(messages as f64, now));
        let b = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(bytes as f64, now));
        m.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let limit = RateLimit {
            messages_per_second: 10,
            messages_burst: 5,
            ..RateLimit::default()
        };
        let mut l = Limiter::new(limit, start).unwrap();
        assert_eq!(l.take(5, 0, start), Duration::ZERO);
        // One more than the burst: a tenth of a second of debt.
        let wait = l.take(1, 0, start);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // After the wait, out of debt; a second later, ten more are allowed.
        assert_eq!(l.take(0, 0, start + wait), Duration::ZERO);
        assert_eq!(
            l.take(5, 0, start + Duration::from_millis(600)),
            Duration::ZERO
        );
    }

    #[test]
    fn bytes_and_messages_both_count() {
        let start = Instant::now();
        let limit = RateLimit {
            messages_per_second: 1000,
            messages_burst: 1000,
            bytes_per_second: 1000,
            bytes_burst: 1000,
        };
        let mut l = Limiter::new(limit, start).unwrap();
        let wait = l.take(1, 3000, start);
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-9, "{wait:?}");
        assert!(Limiter::new(RateLimit::default(), start).is_none());
    }

    #[test]
    fn the_first_override_that_applies_wins() {
        let slow = RateLimit {
            messages_per_second: 1,
            messages_burst: 1,
            ..RateLimit::default()
        };
        let fast = RateLimit {
            messages_per_second: 100,
            messages_burst: 100,
            ..RateLimit::default()
        };
        let settings = RateSettings {
            default: fast,
            overrides: vec![
                RateOverride {
                    groups: vec!["meters".into()],
                    limit: slow,
                    ..RateOverride::default()
                },
                RateOverride {
                    listener: Some("public".into()),
                    users: vec!["guest".into()],
                    limit: RateLimit::default(),
                    ..RateOverride::default()
                },
            ],
        };
        assert_eq!(settings.for_client("tls", Some("m1"), &["meters"]), slow);
        assert_eq!(
            settings.for_client("public", Some("guest"), &[]),
            RateLimit::default()
        );
        assert_eq!(settings.for_client("tls", Some("guest"), &[]), fast);
        assert_eq!(settings.for_client("public", None, &[]), fast);
        assert!(settings.validate().is_ok());
        let bad = RateSettings {
            default: RateLimit {
                bytes_per_second: 5,
                ..RateLimit::default()
            },
            overrides: Vec::new(),
        };
        assert!(bad.validate().is_err());
    }
}
