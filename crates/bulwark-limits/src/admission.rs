//! Admission control: whether a freshly accepted socket may stay, decided before any TLS,
//! WebSocket or MQTT work is spent on it.
//!
//! [`Admission`] counts, per source, the connections open and the ones still in their
//! handshake (accepted, not yet past authentication), and keeps a token bucket of new
//! connections per source. The caps, with the defaults of [`AdmissionSettings`]:
//!
//! - connections open in all: `max_connections` (100 000);
//! - open from one address: `max_per_address` (1 000); from one prefix, an IPv4 /24 or an IPv6
//!   /64: `max_per_prefix` (10 000);
//! - still in their handshake, in all: `max_handshakes` (10 000), and from one address:
//!   `max_handshakes_per_address` (100), so that sockets that never finish (slowloris) from one
//!   place cannot use up the room others need;
//! - new connections from one source: `rate` per second (100) with bursts of `burst` (200);
//!   a source that goes over is refused for `cooldown` (10 s) whatever it does meanwhile.
//!   A source is an IPv4 address, or an IPv6 /64 (one host usually has a whole /64).
//!
//! Sources in `exempt` (by default the loopback networks, where load tests and local tools
//! run) are counted in the totals but never capped per source or rate limited.
//!
//! Call order: [`Admission::admit`] when a socket is accepted; [`Admission::handshake_done`]
//! once it is authenticated (or not at all); [`Admission::release`] exactly once when it
//! closes, saying whether the handshake had finished. Memory is bounded: a source is tracked
//! while it has connections open, and otherwise for its rate state, in a table of at most
//! `max_tracked` (100 000) idle sources from which the longest idle go first.
//!
//! Time is an argument; nothing here reads a clock.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use bulwark_acl::Cidr;

/// The caps; see the [module documentation](self). 0 turns a count cap off; a `rate` of 0
/// turns the rate limit off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionSettings {
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one address.
    pub max_per_address: usize,
    /// Connections open at once from one IPv4 /24 or IPv6 /64.
    pub max_per_prefix: usize,
    /// Connections in their handshake at once, in all.
    pub max_handshakes: usize,
    /// Connections in their handshake at once from one address.
    pub max_handshakes_per_address: usize,
    /// New connections per second from one source.
    pub rate: u32,
    /// New connections a source may open at once before the rate applies.
    pub burst: u32,
    /// How long a source over its rate is refused.
    pub cooldown: Duration,
    /// Sources never capped per source nor rate limited.
    pub exempt: Vec<Cidr>,
    /// Idle sources (no connection open) remembered for their rate state at most.
    pub max_tracked: usize,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_per_address: 1_000,
            max_per_prefix: 10_000,
            max_handshakes: 10_000,
            max_handshakes_per_address: 100,
            rate: 100,
            burst: 200,
            cooldown: Duration::from_secs(10),
            exempt: loopback(),
            max_tracked: 100_000,
        }
    }
}

/// The loopback networks, `127.0.0.0/8` and `::1`.
pub use bulwark_acl::loopback;

impl AdmissionSettings {
    /// What is wrong with the settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.rate > 0 && self.burst == 0 {
            return Err("burst must be at least 1 when rate is set".to_owned());
        }
        Ok(())
    }
}

/// Why a socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` are open.
    Total,
    /// `max_per_address` are open from this address.
    Address,
    /// `max_per_prefix` are open from this prefix.
    Prefix,
    /// `max_handshakes` are in their handshake.
    Handshakes,
    /// `max_handshakes_per_address` from this address are in their handshake.
    AddressHandshakes,
    /// The source went over its rate just now, and is cooling off.
    Rate,
    /// The source is still cooling off from going over its rate.
    Cooling,
    /// The address is on the ban list.
    Banned,
    /// The broker's memory is over its watermark.
    Overloaded,
}

impl Refused {
    /// Every reason, in the order of [`Refused::index`].
    pub const ALL: [Self; 9] = [
        Self::Total,
        Self::Address,
        Self::Prefix,
        Self::Handshakes,
        Self::AddressHandshakes,
        Self::Rate,
        Self::Cooling,
        Self::Banned,
        Self::Overloaded,
    ];

    /// Its place in [`Refused::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A short name for metric labels.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Total => "max_connections",
            Self::Address => "max_per_address",
            Self::Prefix => "max_per_prefix",
            Self::Handshakes => "max_handshakes",
            Self::AddressHandshakes => "max_handshakes_per_address",
            Self::Rate => "rate",
            Self::Cooling => "cooling",
            Self::Banned => "banned",
            Self::Overloaded => "overloaded",
        }
    }

    /// The reason in words, for logs and events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Total => "max_connections reached",
            Self::Address => "max_per_address reached",
            Self::Prefix => "max_per_prefix reached",
            Self::Handshakes => "max_handshakes reached",
            Self::AddressHandshakes => "max_handshakes_per_address reached",
            Self::Rate => "connection rate exceeded",
            Self::Cooling => "cooling off after exceeding the connection rate",
            Self::Banned => "banned",
            Self::Overloaded => "memory over its watermark",
        }
    }

    /// Whether this refusal is about one source (worth a security event) rather than the
    /// whole broker being full.
    pub const fn is_per_source(self) -> bool {
        !matches!(self, Self::Total | Self::Handshakes | Self::Overloaded)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    cooling_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Open {
    conns: usize,
    handshakes: usize,
}

/// Admission state; see the [module documentation](self).
#[derive(Debug)]
pub struct Admission {
    settings: AdmissionSettings,
    total: usize,
    handshakes: usize,
    addresses: HashMap<IpAddr, Open>,
    prefixes: HashMap<IpAddr, usize>,
    buckets: HashMap<IpAddr, Bucket>,
}

/// An IPv4 address as it is (an IPv4-mapped IPv6 address as its IPv4 address), any other IPv6
/// address as it is.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// The IPv4 /24 or IPv6 /64 of an (unmapped) address.
pub(crate) fn prefix_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & 0xffff_ff00)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
    }
}

/// The rate-limited source of an (unmapped) address: IPv4 as it is, IPv6 by its /64.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(_) => prefix_of(ip),
    }
}

impl Admission {
    /// Admission with `settings` (see [`AdmissionSettings::validate`]).
    pub fn new(settings: AdmissionSettings) -> Self {
        Self {
            settings,
            total: 0,
            handshakes: 0,
            addresses: HashMap::new(),
            prefixes: HashMap::new(),
            buckets: HashMap::new(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &AdmissionSettings {
        &self.settings
    }

    /// Connections open, and those still in their handshake.
    pub fn counts(&self) -> (usize, usize) {
        (self.total, self.handshakes)
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.settings.exempt.iter().any(|c| c.contains(ip))
    }

    /// Admits a socket accepted from `ip` at `now`, counting it as open and in its handshake,
    /// or says why not (nothing is counted then).
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        let ip = unmapped(ip);
        let s = &self.settings;
        let cap = |limit: usize, count: usize| limit > 0 && count >= limit;
        if cap(s.max_connections, self.total) {
            return Err(Refused::Total);
        }
        if cap(s.max_handshakes, self.handshakes) {
            return Err(Refused::Handshakes);
        }
        let exempt = self.exempt(ip);
        if !exempt {
            let open = self.addresses.get(&ip);
            if cap(s.max_per_address, open.map_or(0, |o| o.conns)) {
                return Err(Refused::Address);
            }
            if cap(
                s.max_handshakes_per_address,
                open.map_or(0, |o| o.handshakes),
            ) {
                return Err(Refused::AddressHandshakes);
            }
            let prefix = self.prefixes.get(&prefix_of(ip)).copied().unwrap_or(0);
            if cap(s.max_per_prefix, prefix) {
                return Err(Refused::Prefix);
            }
            if s.rate > 0 {
                self.take_token(source_of(ip), now)?;
            }
        }
        self.count(ip);
        Ok(())
    }

    /// Counts a socket from `ip` in the totals (and as in its handshake) without the
    /// per-source caps: a trusted proxy's connection before its PROXY header names the client.
    /// Refused only when the broker as a whole is full.
    pub fn admit_counted(&mut self, ip: IpAddr) -> Result<(), Refused> {
        let ip = unmapped(ip);
        let s = &self.settings;
        if s.max_connections > 0 && self.total >= s.max_connections {
            return Err(Refused::Total);
        }
        if s.max_handshakes > 0 && self.handshakes >= s.max_handshakes {
            return Err(Refused::Handshakes);
        }
        self.count(ip);
        Ok(())
    }

    fn count(&mut self, ip: IpAddr) {
        self.total += 1;
        self.handshakes += 1;
        let open = self.addresses.entry(ip).or_default();
        open.conns += 1;
        open.handshakes += 1;
        *self.prefixes.entry(prefix_of(ip)).or_default() += 1;
    }

    fn take_token(&mut self, source: IpAddr, now: Instant) -> Result<(), Refused> {
        let (rate, burst, cooldown) = (
            f64::from(self.settings.rate),
            f64::from(self.settings.burst),
            self.settings.cooldown,
        );
        if !self.buckets.contains_key(&source) {
            self.make_room(now);
        }
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            at: now,
            cooling_until: None,
        });
        if let Some(until) = bucket.cooling_until {
            if now < until {
                return Err(Refused::Cooling);
            }
            bucket.cooling_until = None;
        }
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            bucket.cooling_until = now.checked_add(cooldown);
            return Err(Refused::Rate);
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Keeps the bucket table within `max_tracked`: first forgets buckets that are full again
    /// and not cooling (they hold nothing a fresh one would not), then the longest idle.
    fn make_room(&mut self, now: Instant) {
        let max = self.settings.max_tracked.max(1);
        if self.buckets.len() < max {
            return;
        }
        let (rate, burst) = (
            f64::from(self.settings.rate),
            f64::from(self.settings.burst),
        );
        self.buckets.retain(|_, b| {
            let refilled =
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate >= burst;
            let cooling = b.cooling_until.is_some_and(|u| now < u);
            cooling || !refilled
        });
        if self.buckets.len() < max {
            return;
        }
        // Still full: drop the eighth idle longest, so this pass runs rarely.
        let mut ages: Vec<Instant> = self.buckets.values().map(|b| b.at).collect();
        let cut = (max / 8).max(1).min(ages.len().saturating_sub(1));
        ages.select_nth_unstable(cut);
        if let Some(&limit) = ages.get(cut) {
            self.buckets.retain(|_, b| b.at > limit);
        }
    }

    /// The socket from `ip` finished its handshake (it is authenticated).
    pub fn handshake_done(&mut self, ip: IpAddr) {
        let ip = unmapped(ip);
        self.handshakes = self.handshakes.saturating_sub(1);
        if let Some(open) = self.addresses.get_mut(&ip) {
            open.handshakes = open.handshakes.saturating_sub(1);
        }
    }

    /// The socket from `ip` closed; `in_handshake` if [`Admission::handshake_done`] was not
    /// called for it.
    pub fn release(&mut self, ip: IpAddr, in_handshake: bool) {
        let ip = unmapped(ip);
        if in_handshake {
            self.handshake_done(ip);
        }
        self.total = self.total.saturating_sub(1);
        if let Some(open) = self.addresses.get_mut(&ip) {
            open.conns = open.conns.saturating_sub(1);
            if open.conns == 0 {
                self.addresses.remove(&ip);
            }
        }
        let prefix = prefix_of(ip);
        if let Some(count) = self.prefixes.get_mut(&prefix) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.prefixes.remove(&prefix);
            }
        }
    }

    /// Sources remembered for their rate state (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn strict() -> AdmissionSettings {
        AdmissionSettings {
            exempt: Vec::new(),
            ..AdmissionSettings::default()
        }
    }

    #[test]
    fn caps_per_address_and_prefix_and_in_all() {
        let now = Instant::now();
        let mut a = Admission::new(AdmissionSettings {
            max_per_address: 2,
            max_per_prefix: 3,
            max_connections: 5,
            rate: 0,
            ..strict()
        });
        for _ in 0..2 {
            a.admit(ip("10.0.0.1"), now).unwrap();
        }
        assert_eq!(a.admit(ip("10.0.0.1"), now), Err(Refused::Address));
        a.admit(ip("10.0.0.2"), now).unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.3"), now),
            Err(Refused::Prefix),
            "same /24"
        );
        a.admit(ip("10.0.1.1"), now).unwrap();
        a.admit(ip("2001:db8::1"), now).unwrap();
        assert_eq!(a.admit(ip("192.0.2.1"), now), Err(Refused::Total));
        a.release(ip("10.0.0.1"), true);
        a.admit(ip("::ffff:10.0.0.1"), now).unwrap();
        assert_eq!(a.counts().0, 5);
    }

    #[test]
    fn ipv6_prefixes_are_64_bits() {
        let now = Instant::now();
        let mut a = Admission::new(AdmissionSettings {
            max_per_prefix: 2,
            rate: 0,
            ..strict()
        });
        a.admit(ip("2001:db8:0:1::1"), now).unwrap();
        a.admit(ip("2001:db8:0:1::2"), now).unwrap();
        assert_eq!(
            a.admit(ip("2001:db8:0:1:ffff::3"), now),
            Err(Refused::Prefix)
        );
        a.admit(ip("2001:db8:0:2::1"), now).unwrap();
    }

    #[test]
    fn handshakes_are_capped_until_done() {
        let now = Instant::now();
        let mut a = Admission::new(AdmissionSettings {
            max_handshakes: 3,
            max_handshakes_per_address: 2,
            rate: 0,
            ..strict()
        });
        a.admit(ip("10.0.0.1"), now).unwrap();
        a.admit(ip("10.0.0.1"), now).unwrap();
        assert_eq!(
            a.admit(ip("10.0.0.1"), now),
            Err(Refused::AddressHandshakes)
        );
        a.admit(ip("10.0.9.1"), now).unwrap();
        assert_eq!(a.admit(ip("10.0.8.1"), now), Err(Refused::Handshakes));
        a.handshake_done(ip("10.0.0.1"));
        a.admit(ip("10.0.0.1"), now).unwrap();
        assert_eq!(a.counts(), (4, 3));
        a.release(ip("10.0.0.1"), false);
        a.release(ip("10.0.0.1"), true);
        assert_eq!(a.counts(), (2, 2));
    }

    #[test]
    fn a_source_over_its_rate_cools_off() {
        let start = Instant::now();
        let mut a = Admission::new(AdmissionSettings {
            rate: 10,
            burst: 5,
            cooldown: Duration::from_secs(10),
            ..strict()
        });
        for _ in 0..5 {
            a.admit(ip("10.0.0.1"), start).unwrap();
        }
        assert_eq!(a.admit(ip("10.0.0.1"), start), Err(Refused::Rate));
        // Another source is not affected.
        a.admit(ip("10.0.0.2"), start).unwrap();
        // Refilled after a second, but still cooling off.
        let later = start + Duration::from_secs(1);
        assert_eq!(a.admit(ip("10.0.0.1"), later), Err(Refused::Cooling));
        let after = start + Duration::from_secs(11);
        a.admit(ip("10.0.0.1"), after).unwrap();
        // IPv6 hosts are one source per /64.
        for i in 0..5 {
            a.admit(ip(&format!("2001:db8::{i}")), start).unwrap();
        }
        assert_eq!(a.admit(ip("2001:db8::ffff"), start), Err(Refused::Rate));
    }

    #[test]
    fn exempt_sources_are_counted_but_not_capped() {
        let now = Instant::now();
        let mut a = Admission::new(AdmissionSettings {
            max_per_address: 1,
            rate: 1,
            burst: 1,
            max_connections: 3,
            ..AdmissionSettings::default()
        });
        for _ in 0..3 {
            a.admit(ip("127.0.0.1"), now).unwrap();
        }
        assert_eq!(a.admit(ip("127.0.0.1"), now), Err(Refused::Total));
    }

    #[test]
    fn the_bucket_table_stays_bounded() {
        let start = Instant::now();
        let mut a = Admission::new(AdmissionSettings {
            max_tracked: 64,
            ..strict()
        });
        for i in 0..10_000u32 {
            let now = start + Duration::from_millis(u64::from(i));
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            a.admit(addr, now).unwrap();
            a.release(addr, true);
            assert!(a.tracked() <= 64, "{}", a.tracked());
        }
        assert_eq!(a.counts(), (0, 0));
    }
}
