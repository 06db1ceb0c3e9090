//! Failed-login tracking: exponential backoff, serialized attempts and source-address bans.
//!
//! [`LoginGuard`] counts failed logins under two kinds of key: the source address and the
//! username. The address key is an IPv4 address as it is, an IPv6 address by its /64 prefix (one
//! host usually controls a whole /64), and an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the
//! IPv4 address; see [`address_key`]. The username key is the exact string (no case folding);
//! a login without a username counts against its address only. Addresses in
//! [`GuardSettings::exempt`] (loopback by default, as for admission control and automatic bans)
//! are never delayed, serialized, throttled or banned: their failures count against the
//! usernames they try only.
//!
//! Call order, per login attempt:
//!
//! 1. [`LoginGuard::admit`] before anything is checked. [`Admission::Banned`] and
//!    [`Admission::Throttled`] refuse the attempt without checking anything;
//!    [`Admission::Proceed`] says how long to wait first.
//! 2. If the attempt was admitted while none of its keys was in backoff
//!    ([`LoginGuard::in_backoff`] said no), [`LoginGuard::recheck`] right before its
//!    credentials are evaluated (when a hash check gets its turn, when a SCRAM proof arrives):
//!    failures that came back meanwhile apply to it, so that attempts queued in parallel do not
//!    slip past the backoff that their predecessors' failures started.
//! 3. After the check, exactly once per [`Admission::Proceed`]: [`LoginGuard::finish_failure`],
//!    [`LoginGuard::finish_success`], or [`LoginGuard::release`] for an attempt that ended
//!    without a verdict. ([`LoginGuard::record_failure`] and [`LoginGuard::record_success`]
//!    count an outcome without touching the attempts in flight.)
//! 4. Now and then (say once a minute), [`LoginGuard::prune`] to forget what has expired.
//!
//! The scheme, with the defaults of [`GuardSettings`]:
//!
//! - A key's count restarts when its last failure is older than `window` (5 minutes).
//! - From `backoff_after` (5) failures on, an attempt on the key waits `initial_delay` (1 s),
//!   doubled for every further failure, at most `max_delay` (30 s) a step: after 5 failures
//!   1 s, after 6 2 s, after 7 4 s, and so on. An attempt waits for the larger of its address's
//!   and its username's delay, so guessing one account from many addresses is slowed as much as
//!   guessing many accounts from one address.
//! - Only failures count. Attempts in flight do not: a fleet of devices behind one address
//!   (or a whole fleet reconnecting after a restart) logs in at the speed of the hash checks,
//!   never delayed by its own concurrency. Parallel guessing is stopped by the re-check before
//!   each evaluation instead: once the failures of the first evaluations are in, every attempt
//!   still queued waits its turn. An address thus gets at most `backoff_after` failures plus
//!   the evaluations that were running at once (the hash pool's size) before its first delay.
//! - Attempts from an address in backoff are serialized: each takes the next free slot at least
//!   one delay after the previous one, and while the previous slot is still ahead the delay
//!   is at least twice the previous one (parallel guesses are spaced as if each had failed in
//!   turn). An attempt whose slot is more than `max_wait` (60 s) away
//!   is refused at once ([`Admission::Throttled`]) instead of holding a connection open.
//! - A username in backoff delays each attempt by its delay (at most `max_delay`) but is never
//!   serialized nor throttled on its own: that would let anyone lock a user out by guessing at
//!   its name.
//! - `ban_after` (20) failures from one source address ban it for `ban_duration` (10 minutes);
//!   when the ban has passed the address starts again from zero. `ban_after = 0` never bans.
//! - A successful login resets its username but not its address: one valid account must not let
//!   an address clear its count between guesses at other accounts.
//!
//! Memory is bounded whatever an attacker sends. Each table (addresses, usernames) holds at most
//! `max_tracked` (100 000) entries; inserting into a full table first drops expired entries and
//! then, if that did not free enough room, evicts the entries with the oldest last failure,
//! banned addresses last. Eviction frees an eighth of the table at a time, so its O(n) pass
//! runs at most once every `max_tracked / 8` insertions and every operation stays O(1)
//! amortized. Usernames are stored as a 128-bit keyed hash rather than as text, so an entry
//! costs the same whatever the length of the name and the guard keeps no usernames in memory;
//! the hash key is random per guard, so an attacker cannot aim two names at one entry.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use bulwark_acl::Cidr;

/// How failed logins are counted and answered; see the [module documentation](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardSettings {
    /// Failures on one key before attempts on it are delayed. Default 5.
    pub backoff_after: u32,
    /// A key's count restarts when its last failure is older than this. Default 5 minutes.
    pub window: Duration,
    /// The first delay, doubled for every failure past `backoff_after`. Default 1 s.
    pub initial_delay: Duration,
    /// Cap of one delay step. Default 30 s.
    pub max_delay: Duration,
    /// An attempt that would have to wait longer than this is refused at once
    /// ([`Admission::Throttled`]). Default 60 s.
    pub max_wait: Duration,
    /// Failures from one source address that ban it; 0 never bans. Default 20.
    pub ban_after: u32,
    /// How long a ban lasts. Default 10 minutes.
    pub ban_duration: Duration,
    /// Most entries in each table (addresses, usernames). Default 100 000.
    pub max_tracked: usize,
    /// Addresses never delayed, serialized, throttled or banned (their failures still count
    /// against the usernames they try). Default: the loopback networks, as for admission
    /// control and automatic bans.
    pub exempt: Vec<Cidr>,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            backoff_after: 5,
            window: Duration::from_secs(5 * 60),
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_wait: Duration::from_secs(60),
            ban_after: 20,
            ban_duration: Duration::from_secs(10 * 60),
            max_tracked: 100_000,
            exempt: bulwark_acl::loopback(),
        }
    }
}

impl GuardSettings {
    /// Checks that the settings make sense, reporting every problem at once (joined by `"; "`).
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.backoff_after == 0 {
            problems.push(
                "backoff_after must be at least 1 (it counts the failures allowed before delays start)"
                    .to_owned(),
            );
        }
        if self.window.is_zero() {
            problems.push(
                "window must be more than zero (with zero every failure would restart the count)"
                    .to_owned(),
            );
        }
        if self.initial_delay.is_zero() {
            problems.push(
                "initial_delay must be more than zero (raise backoff_after to delay later instead)"
                    .to_owned(),
            );
        }
        if self.initial_delay > self.max_delay {
            problems.push(format!(
                "initial_delay ({:?}) must not exceed max_delay ({:?})",
                self.initial_delay, self.max_delay
            ));
        }
        if self.ban_after > 0 && self.ban_duration.is_zero() {
            problems.push(
                "ban_duration must be more than zero when ban_after is set (set ban_after = 0 to never ban)"
                    .to_owned(),
            );
        }
        if self.max_tracked == 0 {
            problems.push(
                "max_tracked must be at least 1 (it bounds the entries kept per table)".to_owned(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The delay for a key with `count` failures, or `None` below the backoff threshold.
    fn delay_for(&self, count: u32) -> Option<Duration> {
        let doublings = count.checked_sub(self.backoff_after)?;
        let delay = 1u32
            .checked_shl(doublings)
            .and_then(|factor| self.initial_delay.checked_mul(factor))
            .map_or(self.max_delay, |delay| delay.min(self.max_delay));
        Some(delay)
    }
}

/// What to do with a login attempt, from [`LoginGuard::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Evaluate the credentials after waiting `delay` (zero when no backoff applies).
    Proceed {
        /// How long to wait before checking the credentials.
        delay: Duration,
    },
    /// The attempt would wait longer than `max_wait`: refuse it now without evaluating it.
    Throttled,
    /// The source address is banned.
    Banned {
        /// How long the ban still lasts.
        remaining: Duration,
    },
}

/// The counts after a failed login, from [`LoginGuard::record_failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureOutcome {
    /// Failures counted against the source address (its key) within the window.
    pub address_failures: u32,
    /// Failures counted against the username within the window; 0 without a username.
    pub username_failures: u32,
    /// This failure started a ban of the source address.
    pub banned: bool,
}

/// The key a source address is counted under: an IPv4 address as it is, an IPv4-mapped IPv6
/// address as its IPv4 address, any other IPv6 address as its /64 prefix (the rest zeroed).
pub fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

/// One key's record.
#[derive(Debug, Clone, Copy)]
struct Entry {
    count: u32,
    last_failure: Instant,
    /// The earliest time the next serialized attempt may start.
    next_free: Option<Instant>,
    /// Addresses only.
    banned_until: Option<Instant>,
    /// Attempts admitted whose outcome is not known yet: they keep the entry (and the slots
    /// they reserved) alive, but never count as failures.
    in_flight: u32,
    /// The delay of the last slot given. While that slot is still ahead, the next attempt's
    /// delay is at least twice it: parallel guesses from one address in backoff are spaced
    /// as if each had failed in turn, not one delay apart.
    last_delay: Duration,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            count: 0,
            last_failure: now,
            next_free: None,
            banned_until: None,
            in_flight: 0,
            last_delay: Duration::ZERO,
        }
    }

    fn banned_at(&self, now: Instant) -> Option<Instant> {
        self.banned_until.filter(|&until| until > now)
    }

    fn window_passed(&self, now: Instant, window: Duration) -> bool {
        now.saturating_duration_since(self.last_failure) > window
    }

    /// Whether the entry still means anything: an expired entry is the same as no entry.
    fn is_live(&self, now: Instant, window: Duration) -> bool {
        if self.in_flight > 0 {
            return true;
        }
        match self.banned_until {
            Some(until) => until > now,
            None => !self.window_passed(now, window),
        }
    }

    /// The failures that count at `now` (zero once the window or a ban has passed).
    fn current_count(&self, now: Instant, window: Duration) -> u32 {
        let counted = match self.banned_until {
            Some(until) => until > now,
            None => !self.window_passed(now, window),
        };
        if counted { self.count } else { 0 }
    }
}

/// `t + d`; where that overflows `Instant`, `t` plus the largest `d / 2^k` that does not.
/// Never panics, so absurd settings cannot crash the broker.
fn saturating_add(t: Instant, d: Duration) -> Instant {
    let mut d = d;
    loop {
        if let Some(later) = t.checked_add(d) {
            return later;
        }
        // Halving reaches zero, and `t + 0` always exists, so the loop ends.
        d /= 2;
    }
}

/// Fits one more entry into `table`. When it is full, drops every expired entry and, if that
/// leaves fewer than an eighth of `max` free, evicts the oldest live entries (banned addresses
/// last, the soonest to end first) until an eighth is free: one O(n) pass buys `max / 8`
/// insertions, so insertion stays O(1) amortized under a flood.
fn make_room<K: Copy + Eq + Hash>(
    table: &mut HashMap<K, Entry>,
    max: usize,
    now: Instant,
    window: Duration,
) {
    if table.len() < max {
        return;
    }
    let target = max.saturating_sub((max / 8).max(1));
    let mut expired = 0usize;
    // Ranks: expired entries first, then unbanned ones by oldest failure, then bans.
    let mut order: Vec<((u8, Instant), K)> = table
        .iter()
        .map(|(key, entry)| {
            let rank = if !entry.is_live(now, window) {
                expired += 1;
                (0, entry.last_failure)
            } else if entry.in_flight > 0 {
                // Attempts still to be counted go last (losing one only forgets a reservation).
                (3, entry.last_failure)
            } else if let Some(until) = entry.banned_at(now) {
                (2, until)
            } else {
                (1, entry.last_failure)
            };
            (rank, *key)
        })
        .collect();
    let remove = expired.max(table.len().saturating_sub(target));
    if let Some(last) = remove.checked_sub(1)
        && last < order.len()
    {
        order.select_nth_unstable_by_key(last, |&(rank, _)| rank);
    }
    for (_, key) in order.iter().take(remove) {
        table.remove(key);
    }
}

/// Counts one failure on `key`, inserting it (making room first) when it is new or expired.
fn count_failure<'t, K: Copy + Eq + Hash>(
    table: &'t mut HashMap<K, Entry>,
    key: K,
    settings: &GuardSettings,
    now: Instant,
) -> &'t mut Entry {
    if !table.contains_key(&key) {
        make_room(table, settings.max_tracked, now, settings.window);
    }
    let entry = table.entry(key).or_insert_with(|| Entry::new(now));
    let ban_passed = entry.banned_until.is_some_and(|until| until <= now);
    let window_passed = entry.window_passed(now, settings.window);
    if ban_passed || (entry.banned_until.is_none() && window_passed) {
        // Nothing counts any more: start again, keeping the attempts in flight.
        let in_flight = entry.in_flight;
        *entry = Entry::new(now);
        entry.in_flight = in_flight;
    } else if window_passed {
        // Still banned, but the failures before are out of the window.
        entry.count = 0;
    }
    entry.count = entry.count.saturating_add(1);
    entry.last_failure = now;
    entry
}

/// For a key in backoff, its delay and the earliest slot it allows an attempt: the latest of
/// `now`, its next free slot and its last failure plus its delay. `None` below the threshold,
/// which only failures reach; above it, a slot given and still ahead doubles the delay.
fn backoff_slot(
    entry: &Entry,
    settings: &GuardSettings,
    now: Instant,
) -> Option<(Duration, Instant)> {
    let mut delay = settings.delay_for(entry.current_count(now, settings.window))?;
    if entry.next_free.is_some_and(|free| free > now) {
        delay = delay.max(entry.last_delay.saturating_mul(2).min(settings.max_delay));
    }
    let slot = now
        .max(saturating_add(entry.last_failure, delay))
        .max(entry.next_free.unwrap_or(now));
    Some((delay, slot))
}

/// The entry of `key`, inserted (making room first) if missing.
fn entry_for<'t, K: Copy + Eq + Hash>(
    table: &'t mut HashMap<K, Entry>,
    key: K,
    settings: &GuardSettings,
    now: Instant,
) -> &'t mut Entry {
    if !table.contains_key(&key) {
        make_room(table, settings.max_tracked, now, settings.window);
    }
    table.entry(key).or_insert_with(|| placeholder(now))
}

/// An entry with no failure yet: a holder for attempts in flight.
fn placeholder(now: Instant) -> Entry {
    Entry::new(now)
}

/// One attempt of `key` is over.
fn release_one<K: Copy + Eq + Hash>(table: &mut HashMap<K, Entry>, key: K) {
    if let Some(entry) = table.get_mut(&key) {
        entry.in_flight = entry.in_flight.saturating_sub(1);
    }
}

/// The 128-bit table key of a username, keyed by a secret random per guard.
#[derive(Debug)]
struct UsernameKeys(RandomState);

impl UsernameKeys {
    fn key(&self, username: &str) -> u128 {
        let half = |domain: u8| {
            let mut hasher = self.0.build_hasher();
            hasher.write_u8(domain);
            hasher.write(username.as_bytes());
            hasher.finish()
        };
        (u128::from(half(0)) << 64) | u128::from(half(1))
    }
}

/// Brute-force defence for logins: counts failures per source address and per username,
/// delays and serializes attempts in backoff, and bans source addresses.
///
/// Call [`admit`](Self::admit) before checking credentials, then
/// [`record_failure`](Self::record_failure) or [`record_success`](Self::record_success), and
/// [`prune`](Self::prune) periodically; see the [module documentation](self).
#[derive(Debug)]
pub struct LoginGuard {
    settings: GuardSettings,
    addresses: HashMap<IpAddr, Entry>,
    usernames: HashMap<u128, Entry>,
    username_keys: UsernameKeys,
}

impl LoginGuard {
    /// A guard with nothing tracked. The settings should have passed
    /// [`GuardSettings::validate`]; the guard does not panic if they have not.
    pub fn new(settings: GuardSettings) -> Self {
        Self {
            settings,
            addresses: HashMap::new(),
            usernames: HashMap::new(),
            username_keys: UsernameKeys(RandomState::new()),
        }
    }

    /// The settings the guard was made with.
    pub fn settings(&self) -> &GuardSettings {
        &self.settings
    }

    /// Whether `address` is in [`GuardSettings::exempt`].
    fn is_exempt(&self, address: IpAddr) -> bool {
        let address = address_key(address);
        self.settings.exempt.iter().any(|c| c.contains(address))
    }

    /// Called before anything is checked: says whether to evaluate the credentials and after
    /// what wait, and counts the attempt as in flight.
    ///
    /// A banned address is refused first. Keys below the backoff threshold give a zero delay and
    /// are left as they are. Keys in backoff each give a slot: the latest of `now`, the key's
    /// next free slot and its last failure plus its delay. The attempt takes the latest slot of
    /// its keys; if that is more than `max_wait` away it is [`Admission::Throttled`] and nothing
    /// changes, otherwise the address's next free slot moves to that slot plus its delay. An
    /// exempt address is never banned, delayed or throttled (its username still may delay it).
    pub fn admit(&mut self, address: IpAddr, username: Option<&str>, now: Instant) -> Admission {
        self.take_slot(address, username, now, true)
    }

    /// Called again right before the credentials of an attempt are evaluated, if it was
    /// admitted while [`in_backoff`](Self::in_backoff) said no: the failures counted since its
    /// admission apply to it (a slot, a wait, a refusal), as [`admit`](Self::admit) would have
    /// answered now. The attempt stays in flight either way.
    pub fn recheck(&mut self, address: IpAddr, username: Option<&str>, now: Instant) -> Admission {
        self.take_slot(address, username, now, false)
    }

    /// Whether an attempt of this address and username would be delayed or serialized now (or
    /// refused: a banned address counts as in backoff). An attempt admitted while this was
    /// false is [`recheck`](Self::recheck)ed before its evaluation.
    pub fn in_backoff(&self, address: IpAddr, username: Option<&str>, now: Instant) -> bool {
        let settings = &self.settings;
        let counted = |entry: &Entry| {
            entry.banned_at(now).is_some()
                || settings
                    .delay_for(entry.current_count(now, settings.window))
                    .is_some()
        };
        let by_address = !self.is_exempt(address)
            && self
                .addresses
                .get(&address_key(address))
                .is_some_and(counted);
        let by_username = username.is_some_and(|name| {
            self.usernames
                .get(&self.username_keys.key(name))
                .is_some_and(counted)
        });
        by_address || by_username
    }

    /// How many source addresses and usernames are in backoff now (delayed, serialized or, for
    /// addresses, banned): one pass over what the guard tracks, which is bounded.
    pub fn backoff_counts(&self, now: Instant) -> (usize, usize) {
        let settings = &self.settings;
        let counted = |entry: &&Entry| {
            entry.banned_at(now).is_some()
                || settings
                    .delay_for(entry.current_count(now, settings.window))
                    .is_some()
        };
        (
            self.addresses.values().filter(counted).count(),
            self.usernames.values().filter(counted).count(),
        )
    }

    fn take_slot(
        &mut self,
        address: IpAddr,
        username: Option<&str>,
        now: Instant,
        new_attempt: bool,
    ) -> Admission {
        let address_key = (!self.is_exempt(address)).then(|| address_key(address));
        if let Some(until) = address_key
            .and_then(|key| self.addresses.get(&key))
            .and_then(|entry| entry.banned_at(now))
        {
            return Admission::Banned {
                remaining: until.saturating_duration_since(now),
            };
        }
        let username_key = username.map(|name| self.username_keys.key(name));

        let settings = &self.settings;
        let by_address = address_key
            .and_then(|key| self.addresses.get(&key))
            .and_then(|entry| backoff_slot(entry, settings, now));
        // A username only delays: no serialization, no throttling (see the module docs).
        let by_username = username_key
            .and_then(|key| self.usernames.get(&key))
            .and_then(|entry| {
                let delay = settings.delay_for(entry.current_count(now, settings.window))?;
                Some(now.max(saturating_add(entry.last_failure, delay)))
            });
        let address_slot = by_address.map_or(now, |(_, slot)| slot);
        if address_slot.saturating_duration_since(now) > settings.max_wait {
            return Admission::Throttled;
        }
        let slot = address_slot.max(by_username.unwrap_or(now));
        let wait = slot.saturating_duration_since(now);
        if let Some(key) = address_key
            && (new_attempt || by_address.is_some())
        {
            let entry = entry_for(&mut self.addresses, key, &self.settings, now);
            if new_attempt {
                entry.in_flight = entry.in_flight.saturating_add(1);
            }
            if let Some((delay, _)) = by_address {
                entry.next_free = Some(saturating_add(address_slot, delay));
                entry.last_delay = delay;
            }
        }
        if let Some(key) = username_key
            && new_attempt
        {
            let entry = entry_for(&mut self.usernames, key, &self.settings, now);
            entry.in_flight = entry.in_flight.saturating_add(1);
        }
        Admission::Proceed { delay: wait }
    }

    /// Counts a failed login against the address (unless it is exempt) and the username, and
    /// bans the address when its count reaches `ban_after`.
    pub fn record_failure(
        &mut self,
        address: IpAddr,
        username: Option<&str>,
        now: Instant,
    ) -> FailureOutcome {
        let exempt = self.is_exempt(address);
        let settings = &self.settings;
        let (address_failures, banned) = if exempt {
            (0, false)
        } else {
            let address_entry =
                count_failure(&mut self.addresses, address_key(address), settings, now);
            let address_failures = address_entry.count;
            let already_banned = address_entry.banned_at(now).is_some();
            let banned =
                !already_banned && settings.ban_after > 0 && address_failures >= settings.ban_after;
            if banned {
                address_entry.banned_until = Some(saturating_add(now, settings.ban_duration));
            }
            (address_failures, banned)
        };

        let username_failures = match username {
            Some(name) => {
                let key = self.username_keys.key(name);
                count_failure(&mut self.usernames, key, settings, now).count
            }
            None => 0,
        };
        FailureOutcome {
            address_failures,
            username_failures,
            banned,
        }
    }

    /// Resets the username's count (not the address's: one valid account must not let an
    /// address reset its own count between guesses at other accounts).
    pub fn record_success(&mut self, address: IpAddr, username: Option<&str>, now: Instant) {
        // The address is left alone on purpose (see above), and forgetting needs no time; both
        // are taken so that every call names the same attempt the same way.
        let _ = (address, now);
        if let Some(name) = username {
            let key = self.username_keys.key(name);
            if let Some(entry) = self.usernames.get_mut(&key) {
                if entry.in_flight == 0 {
                    self.usernames.remove(&key);
                } else {
                    let in_flight = entry.in_flight;
                    *entry = placeholder(now);
                    entry.in_flight = in_flight;
                }
            }
        }
    }

    /// Ends an admitted attempt that produced no verdict (the client went away, the check
    /// could not run): its keys have one attempt fewer in flight.
    pub fn release(&mut self, address: IpAddr, username: Option<&str>) {
        release_one(&mut self.addresses, address_key(address));
        if let Some(name) = username {
            let key = self.username_keys.key(name);
            release_one(&mut self.usernames, key);
        }
    }

    /// Ends an admitted attempt that failed: [`release`](Self::release), then
    /// [`record_failure`](Self::record_failure).
    pub fn finish_failure(
        &mut self,
        address: IpAddr,
        username: Option<&str>,
        now: Instant,
    ) -> FailureOutcome {
        self.release(address, username);
        self.record_failure(address, username, now)
    }

    /// Ends an admitted attempt that succeeded: [`release`](Self::release), then
    /// [`record_success`](Self::record_success).
    pub fn finish_success(&mut self, address: IpAddr, username: Option<&str>, now: Instant) {
        self.release(address, username);
        self.record_success(address, username, now);
    }

    /// How long the ban of `address` still lasts, if it is banned at `now` (never, if it is
    /// exempt). For attempts that skip the backoff (no credentials to guess, a remembered
    /// password) but not the ban.
    pub fn banned_for(&self, address: IpAddr, now: Instant) -> Option<Duration> {
        if self.is_exempt(address) {
            return None;
        }
        self.addresses
            .get(&address_key(address))
            .and_then(|entry| entry.banned_at(now))
            .map(|until| until.saturating_duration_since(now))
    }

    /// Whether `address` (its key: IPv6 by /64) is banned at `now` (never, if it is exempt).
    pub fn is_banned(&self, address: IpAddr, now: Instant) -> bool {
        !self.is_exempt(address)
            && self
                .addresses
                .get(&address_key(address))
                .is_some_and(|entry| entry.banned_at(now).is_some())
    }

    /// Lifts a ban and forgets the address's failures. Returns whether the address had a ban on
    /// record (one that has passed but has not been pruned yet counts too).
    pub fn unban(&mut self, address: IpAddr) -> bool {
        self.addresses
            .remove(&address_key(address))
            .is_some_and(|entry| entry.banned_until.is_some())
    }

    /// Entries held: (addresses, usernames).
    pub fn tracked(&self) -> (usize, usize) {
        (self.addresses.len(), self.usernames.len())
    }

    /// Drops entries whose window and ban have passed; the caller runs this periodically.
    pub fn prune(&mut self, now: Instant) {
        let window = self.settings.window;
        self.addresses.retain(|_, entry| entry.is_live(now, window));
        self.usernames.retain(|_, entry| entry.is_live(now, window));
    }
}

#[cfg(test)]
mod tests;
