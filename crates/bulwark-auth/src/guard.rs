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
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        reason = "test code"
    )]

    use super::*;
    use std::net::Ipv4Addr;

    const SEC: Duration = Duration::from_secs(1);

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn proceed(delay: Duration) -> Admission {
        Admission::Proceed { delay }
    }

    /// Records `n` failures at `at`, returning the last outcome.
    fn fail_n(
        guard: &mut LoginGuard,
        address: IpAddr,
        username: Option<&str>,
        n: u32,
        at: Instant,
    ) -> FailureOutcome {
        let mut outcome = None;
        for _ in 0..n {
            outcome = Some(guard.record_failure(address, username, at));
        }
        outcome.unwrap()
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let s = GuardSettings::default();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.backoff_after, 5);
        assert_eq!(s.window, Duration::from_secs(300));
        assert_eq!(s.initial_delay, SEC);
        assert_eq!(s.max_delay, 30 * SEC);
        assert_eq!(s.max_wait, 60 * SEC);
        assert_eq!(s.ban_after, 20);
        assert_eq!(s.ban_duration, Duration::from_secs(600));
        assert_eq!(s.max_tracked, 100_000);
    }

    #[test]
    fn validate_reports_every_problem() {
        let bad = GuardSettings {
            backoff_after: 0,
            window: Duration::ZERO,
            initial_delay: 10 * SEC,
            max_delay: SEC,
            ban_duration: Duration::ZERO,
            max_tracked: 0,
            ..GuardSettings::default()
        };
        let err = bad.validate().unwrap_err();
        for needle in [
            "backoff_after must be at least 1",
            "window must be more than zero",
            "initial_delay (10s) must not exceed max_delay (1s)",
            "ban_duration must be more than zero",
            "max_tracked must be at least 1",
        ] {
            assert!(err.contains(needle), "{needle:?} missing from {err:?}");
        }
        assert_eq!(err.matches("; ").count(), 4, "{err}");

        let zero_initial = GuardSettings {
            initial_delay: Duration::ZERO,
            ..GuardSettings::default()
        };
        assert!(
            zero_initial
                .validate()
                .unwrap_err()
                .contains("initial_delay must be more than zero")
        );

        // No ban at all needs no ban duration.
        let no_ban = GuardSettings {
            ban_after: 0,
            ban_duration: Duration::ZERO,
            ..GuardSettings::default()
        };
        assert_eq!(no_ban.validate(), Ok(()));
    }

    #[test]
    fn delays_double_and_cap_without_overflow() {
        let s = GuardSettings::default();
        assert_eq!(s.delay_for(0), None);
        assert_eq!(s.delay_for(4), None);
        assert_eq!(s.delay_for(5), Some(SEC));
        assert_eq!(s.delay_for(6), Some(2 * SEC));
        assert_eq!(s.delay_for(9), Some(16 * SEC));
        assert_eq!(s.delay_for(10), Some(30 * SEC));
        assert_eq!(s.delay_for(5 + 31), Some(30 * SEC));
        assert_eq!(s.delay_for(5 + 32), Some(30 * SEC));
        assert_eq!(s.delay_for(u32::MAX), Some(30 * SEC));
        let huge = GuardSettings {
            initial_delay: Duration::MAX,
            max_delay: Duration::MAX,
            ..GuardSettings::default()
        };
        assert_eq!(huge.delay_for(40), Some(Duration::MAX));
    }

    #[test]
    fn under_threshold_attempts_get_zero_delay() {
        let mut guard = LoginGuard::new(GuardSettings::default());
        let t0 = Instant::now();
        let addr = v4(1);
        for i in 0..4 {
            assert_eq!(
                guard.admit(addr, Some("alice"), t0),
                proceed(Duration::ZERO)
            );
            let out = guard.finish_failure(addr, Some("alice"), t0);
            assert_eq!(out.address_failures, i + 1);
            assert_eq!(out.username_failures, i + 1);
            assert!(!out.banned);
        }
        // Four failures: attempts in flight are no failures, so any number of parallel
        // attempts goes at once (each is re-checked before its evaluation instead).
        for _ in 0..100 {
            assert_eq!(
                guard.admit(addr, Some("alice"), t0),
                proceed(Duration::ZERO)
            );
        }
        assert!(!guard.in_backoff(addr, Some("alice"), t0));
        // One more failure: the attempts still queued wait from their re-check on.
        guard.finish_failure(addr, Some("alice"), t0);
        assert!(guard.in_backoff(addr, Some("alice"), t0));
        assert_eq!(guard.recheck(addr, Some("alice"), t0), proceed(SEC));
        assert_eq!(guard.recheck(addr, Some("alice"), t0), proceed(2 * SEC));
        for _ in 0..99 {
            guard.release(addr, Some("alice"));
        }
        // Another address is delayed by the username only, and not serialized.
        assert_eq!(guard.admit(v4(9), Some("alice"), t0), proceed(SEC));
        assert_eq!(guard.admit(v4(9), Some("alice"), t0), proceed(SEC));
    }

    #[test]
    fn parallel_logins_of_a_fresh_address_are_not_delayed() {
        // A fleet behind one address (or reconnecting after a restart): nothing failed, so
        // nothing waits, however many are in flight at once.
        let mut guard = LoginGuard::new(GuardSettings::default());
        let addr = v4(7);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let name = format!("device-{i}");
            assert_eq!(guard.admit(addr, Some(&name), t0), proceed(Duration::ZERO));
            assert_eq!(
                guard.admit(addr, Some("shared"), t0),
                proceed(Duration::ZERO)
            );
        }
        assert!(!guard.in_backoff(addr, Some("shared"), t0));
        for i in 0..10_000u32 {
            guard.finish_success(addr, Some(&format!("device-{i}")), t0);
            guard.finish_success(addr, Some("shared"), t0);
        }
        assert_eq!(guard.admit(addr, None, t0), proceed(Duration::ZERO));
    }

    #[test]
    fn parallel_guesses_are_stopped_at_their_recheck() {
        let settings = GuardSettings {
            ban_after: 0,
            ..GuardSettings::default()
        };
        let mut guard = LoginGuard::new(settings);
        let addr = v4(7);
        let t0 = Instant::now();
        // A thousand parallel guesses are admitted at once...
        for _ in 0..1000 {
            assert_eq!(guard.admit(addr, None, t0), proceed(Duration::ZERO));
        }
        // ...and evaluated one after another (the hash pool), each re-checked first, each a
        // failure: the waits of the re-checks are 0 five times, then 1, 2, 4, 8, 16 s, then
        // 30 s each: one guess every 30 s, however many connections wait.
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..1000 {
            match guard.recheck(addr, None, now) {
                Admission::Proceed { delay } => {
                    waits.push(delay.as_secs());
                    now += delay;
                    guard.finish_failure(addr, None, now);
                }
                Admission::Throttled => guard.release(addr, None),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(waits[..10], [0, 0, 0, 0, 0, 1, 2, 4, 8, 16]);
        assert!(waits[10..].iter().all(|&w| w == 30));
        // Re-checked in parallel instead, the queued attempts are serialized and the ones more
        // than 60 s away are refused unchecked.
        let mut guard = LoginGuard::new(GuardSettings::default());
        let mut admitted = 0;
        for _ in 0..1000 {
            guard.admit(addr, None, t0);
        }
        fail_n(&mut guard, addr, None, 5, t0);
        for _ in 0..1000 {
            if let Admission::Proceed { .. } = guard.recheck(addr, None, t0) {
                admitted += 1;
            }
        }
        // Slots 1, 2, 4, 8, 16 and 32 s away, as if each had failed in turn; the next would
        // be 64 s away.
        assert_eq!(admitted, 6);
    }

    #[test]
    fn exempt_addresses_are_never_delayed_or_banned() {
        let mut guard = LoginGuard::new(GuardSettings::default());
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let out = fail_n(&mut guard, local, None, 100, t0);
        assert_eq!((out.address_failures, out.banned), (0, false));
        assert!(!guard.is_banned(local, t0));
        assert!(!guard.in_backoff(local, None, t0));
        assert_eq!(guard.admit(local, None, t0), proceed(Duration::ZERO));
        assert_eq!(guard.admit(mapped, None, t0), proceed(Duration::ZERO));
        assert_eq!(guard.tracked(), (0, 0));
        // The usernames it guesses at are still slowed, from anywhere.
        fail_n(&mut guard, local, Some("alice"), 6, t0);
        assert_eq!(guard.admit(local, Some("alice"), t0), proceed(2 * SEC));
        assert_eq!(guard.admit(v4(1), Some("alice"), t0), proceed(2 * SEC));
        // Without the exemption the same address is banned.
        let mut strict = LoginGuard::new(GuardSettings {
            exempt: Vec::new(),
            ..GuardSettings::default()
        });
        assert!(fail_n(&mut strict, local, None, 20, t0).banned);
    }

    #[test]
    fn fifth_failure_starts_backoff_doubling_to_the_cap() {
        let settings = GuardSettings {
            ban_after: 0,
            ..GuardSettings::default()
        };
        let mut guard = LoginGuard::new(settings);
        let addr = v4(1);
        let mut t = Instant::now();
        fail_n(&mut guard, addr, None, 5, t);
        let expected = [1u32, 2, 4, 8, 16, 30, 30, 30];
        for secs in expected {
            let delay = secs * SEC;
            // Asked straight after the failure, the attempt waits the whole delay.
            assert_eq!(guard.admit(addr, None, t), proceed(delay));
            t += delay;
            guard.finish_failure(addr, None, t);
        }
    }

    #[test]
    fn delay_counts_from_the_last_failure() {
        let mut guard = LoginGuard::new(GuardSettings::default());
        let addr = v4(1);
        let t0 = Instant::now();
        fail_n(&mut guard, addr, None, 6, t0);
        // Two seconds of delay; half of it has already passed.
        assert_eq!(guard.admit(addr, None, t0 + SEC), proceed(SEC));
        // A fresh guard in the same state, asked after the delay has passed: no wait.
        let mut guard = LoginGuard::new(GuardSettings::default());
        fail_n(&mut guard, addr, None, 6, t0);
        assert_eq!(
            guard.admit(addr, None, t0 + 3 * SEC),
            proceed(Duration::ZERO)
        );
    }

    #[test]
    fn parallel_admits_are_spaced_by_doubling_delays() {
        let mut guard = LoginGuard::new(GuardSettings::default());
        let addr = v4(1);
        let t0 = Instant::now();
        fail_n(&mut guard, addr, None, 6, t0);
        // Six failures (2 s): each slot still ahead doubles the next delay, as if each attempt
        // had failed in turn: 2, 4 and 8 s after the last failure.
        assert_eq!(guard.admit(addr, None, t0), proceed(2 * SEC));
        assert_eq!(guard.admit(addr, None, t0), proceed(4 * SEC));
        assert_eq!(guard.admit(addr, None, t0), proceed(8 * SEC));
        // Once the slots are behind, the delay is the failures' again.
        assert_eq!(
            guard.admit(addr, None, t0 + 40 * SEC),
            proceed(Duration::ZERO)
        );
        // Another address is not in backoff.
        assert_eq!(guard.admit(v4(2), None, t0), proceed(Duration::ZERO));
    }

    #[test]
    fn throttled_beyond_max_wait_and_changes_nothing() {
        let settings = GuardSettings {
            max_wait: 10 * SEC,
            ..GuardSettings::default()
        };
        let mut guard = LoginGuard::new(settings);
        let addr = v4(1);
        let t0 = Instant::now();
        fail_n(&mut guard, addr, None, 6, t0); // 2 s delay
        for slot in [2, 4, 8] {
            assert_eq!(guard.admit(addr, None, t0), proceed(slot * SEC));
        }
        // The next slot would be 16 s away.
        assert_eq!(guard.admit(addr, None, t0), Admission::Throttled);
        assert_eq!(guard.admit(addr, None, t0), Admission::Throttled);
        // Refusals took no slot: seven seconds later the next slot is still 16 s after t0.
        assert_eq!(guard.admit(addr, None, t0 + 7 * SEC), proceed(9 * SEC));
    }

    #[test]
    fn a_delay_longer_than_max_wait_is_throttled_until_it_passes() {
        let settings = GuardSettings {
            max_wait: SEC,
            ..GuardSettings::default()
        };
        let mut guard = LoginGuard::new(settings);
        let addr = v4(1);
        let t0 = Instant::now();
        fail_n(&mut guard, addr, None, 8, t0); // 8 s delay
        assert_eq!(guard.admit(addr, None, t0), Admission::Throttled);
        assert_eq!(guard.admit(addr, None, t0 + 7 * SEC), proceed(SEC));
    }

    #[test]
    fn window_expiry_resets_the_count() {
        let settings = GuardSettings::default();
        let window = settings.window;
        let mut guard = LoginGuard::new(settings);
        let addr = v4(1);
        let t0 = Instant::now();
        fail_n(&mut guard, addr, Some("bob"), 7, t0);
        assert_eq!(guard.admit(addr, Some("bob"), t0), proceed(4 * SEC));
        // A failure exactly one window after the last still counts...
        let at_edge = t0 + window;
        let out = guard.record_failure(addr, Some("bob"), at_edge);
        assert_eq!((out.address_failures, out.username_failures), (8, 8));
        // ...one just past the window starts again from one.
        let later = at_edge + window + Duration::from_millis(1);
        assert_eq!(
            guard.admit(addr, Some("bob"), later),
            proceed(Duration::ZERO)
        );
        let out = guard.record_failure(addr, Some("bob"), later);
        assert_eq!((out.address_failures, out.username_failures), (1, 1));
        assert_eq!(
            guard.admit(addr, Some("bob"), later),
            proceed(Duration::ZERO)
        );
    }

    #[test]
    fn window_expiry_lifts_a_pending_delay() {
        // A delay longer than the window: only the window's end frees the key.
        let settings = GuardSettings {
            window: 10 * SEC,
            initial_delay: 30 * SEC,
            max_wait: 60 * SEC,
            ..GuardSettings::default()
        };
        let mut guard = LoginGuard::new(settings);
        let addr = v4(1);
        let t0 = Instant::now();
        fail_n(&mut guard, addr, Some("bob"), 5, t0);
        assert_eq!(guard.admit(addr, None, t0 + 10 * SEC), proceed(20 * SEC));
        let past = t0 + 10 * SEC + Duration::from_millis(1);
        assert_eq!(guard.admit(addr, None, past), proceed(Duration::ZERO));
        assert_eq!(
            guard.admit(v4(2), Some("bob"), past),
            proceed(Duration::ZERO)
        );
    }

    #[test]
    fn failures_within_the_window_keep_accumulating() {
        let mut guard = LoginGuard::new(GuardSettings::default());
        let addr = v4(1);
        let t0 = Instant::now();
        // One failure every four minutes: each is within five minutes of the one before.
        for i in 0..6u32 {
            let out = guard.record_failure(addr, None, t0 + i * 240 * SEC);
            assert_eq!(out.address_failures, i + 1);
        }
    }

    #[test]
    fn ban_after_twenty_from_one_address_only() {
        let mut guard = LoginGuard::new(GuardSettings::default());
        let attacker = v4(66);
        let bystander = v4(7);
        let t0 = Instant::now();
        for i in 1..20u32 {
            let name = format!("user{i}");
            let out = guard.record_failure(attacker, Some(&name), t0);
            assert_eq!(out.address_failures, i);
            assert!(!out.banned);
        }
        assert!(!guard.is_banned(attacker, t0));
        let out = guard.record_failure(attacker, Some("user20"), t0);
        assert_eq!(out.address_failures, 20);
        assert!(out.banned);
        assert!(guard.is_banned(attacker, t0));
        let later = t0 + 100 * SEC;
        assert_eq!(
            guard.admit(attacker, Some("alice"), later),
            Admission::Banned {
                remaining: 500 * SEC
            }
        );
        // A failure during the ban neither starts nor extends one.
        assert!(!guard.record_failure(attacker, None, later).banned);
        assert_eq!(
            guard.admit(attacker, None, later),
            Admission::Banned {
                remaining: 500 * SEC
            }
        );
        assert!(!guard.is_banned(bystander, later));
        assert_eq!(
            guard.admit(bystander, Some("alice"), later),
            proceed(Duration::ZERO)
        );
    }

    #[test]
    fn ban_expires_and_the_count_starts_again() {
        let settings = GuardSettings::default();
        let ban = settings.ban_duration;
        let mut guard = LoginGuard::new(settings);
        let addr = v4(66);
        let t0 = Instant::now();
        assert!(fail_n(&mut guard, addr, None, 20, t0).banned);
        assert!(guard.is_banned(addr, t0 + ban - SEC));
        assert!(!guard.is_banned(addr, t0 + ban));
        assert_eq!(guard.admit(addr, None, t0 + ban), proceed(Duration::ZERO));
        let out = guard.record_failure(addr, None, t0 + ban);
        assert_eq!(out.address_failures, 1);
        assert!(!out.banned);
        // It takes another twenty to be banned again.
        let again = fail_n(&mut guard, addr, None, 19, t0 + ban);
        assert_eq!(again.address_failures, 20);
        assert!(again.banned);
    }

    #[test]
    fn failures_during_a_ban_count_within_the_window_only() {
        let settings = GuardSettings::default();
        let window = settings.window;
        let mut guard = LoginGuard::new(settings);
        let addr = v4(66);
        let t0 = Instant::now();
        assert!(fail_n(&mut guard, addr, None, 20, t0).banned);
        // The ban (10 min) outlasts the window (5 min): a failure past the window counts from
        // one, and neither it nor the twentieth after it starts a second ban.
        let late = t0 + window + SEC;
        let out = guard.record_failure(addr, None, late);
        assert_eq!(out.address_failures, 1);
        let out = fail_n(&mut guard, addr, None, 19, late);
        assert_eq!(out.address_failures, 20);
        assert!(!out.banned);
        assert_eq!(
            guard.admit(addr, None, late),
            Admission::Banned {
                remaining: 600 * SEC - window - SEC
            }
        );
    }

    #[test]
    fn ban_after_zero_never_bans() {
        let settings = GuardSettings {
            ban_after: 0,
            ..GuardSettings::default()
        };
        let mut guard = LoginGuard::new(settings);
        let addr = v4(1);
        let t0 = Instant::now();
        let out = fail_n(&mut guard, addr, None, 1000, t0);
        assert_eq!(out.address_failures, 1000);
        assert!(!out.banned);
        assert!(!guard.is_banned(addr, t0));
        assert_eq!(guard.admit(addr, None, t0), proceed(30 * SEC));
    }

    #[test]
    fn username_backoff_applies_across_addresses() {
        let mut guard = LoginGuard::new(GuardSettings::default());
        let t0 = Instant::now();
        // Six failures on one account, each from a different address.
        for i in 0..6 {
            let out = guard.record_failure(v4(i), Some("admin"), t0);
            assert_eq!(out.address_failures, 1);
        }
        // A seventh address is delayed on that account; a username is never serialized, so an
        // eighth in parallel waits the same delay.
        assert_eq!(guard.admit(v4(100), Some("admin"), t0), proceed(2 * SEC));
        assert_eq!(guard.admit(v4(101), Some("admin"), t0), proceed(2 * SEC));
        // Another account from those addresses is not delayed.
        assert_eq!(
            guard.admit(v4(100), Some("alice"), t0),
            proceed(Duration::ZERO)
        );
        assert_eq!(guard.admit(v4(100), None, t0), proceed(Duration::ZERO));
        // Usernames are exact: no case folding.
        assert_eq!(
            guard.admit(v4(100), Some("Admin"), t0),
            proceed(Duration::ZERO)
        );
    }

    #[test]
    fn the_larger_delay_of_address_and_username_wins() {
        let mut guard = LoginGuard::new(GuardSettings::default());
        let t0 = Instant::now();
        let addr = v4(1);
        // Address: 8 failures (8 s); username "carol": 5 of them (1 s).
        fail_n(&mut guard, addr, Some("carol"), 5, t0);
        fail_n(&mut guard, addr, None, 3, t0);
        assert_eq!(guard.admit(addr, Some("carol"), t0), proceed(8 * SEC));
        // The username is not serialized: from another address, with the attempt above in
        // flight, it only asks for its delay.
        assert_eq!(guard.admit(v4(2), Some("carol"), t0), proceed(SEC));
        // The address is: its next slot is one delay after the first attempt's.
        assert_eq!(guard.admit(addr, None, t0), proceed(16 * SEC));
    }

    #[test]
    fn success_resets_the_username_not_the_address() {
        let mut guard = LoginGuard::new(GuardSettings::default());
        let t0 = Instant::now();
        let addr = v4(1);
        fail_n(&mut guard, addr, Some("dave"), 6, t0);
        assert_eq!(guard.admit(v4(2), Some("dave"), t0), proceed(2 * SEC));
        guard.finish_success(v4(2), Some("dave"), t0 + SEC);
        // The account is free again from anywhere, queue included...
        assert_eq!(
            guard.admit(v4(2), Some("dave"), t0 + SEC),
            proceed(Duration::ZERO)
        );
        guard.release(v4(2), Some("dave"));
        // ...but the address still waits out its own delay, and keeps counting towards its ban.
        assert_eq!(guard.admit(addr, Some("dave"), t0 + SEC), proceed(SEC));
        let out = guard.finish_failure(addr, Some("dave"), t0 + 3 * SEC);
        assert_eq!(out.address_failures, 7);
        assert_eq!(out.username_failures, 1);
        guard.record_success(addr, None, t0 + 3 * SEC);
        assert_eq!(
            guard
                .record_failure(addr, None, t0 + 3 * SEC)
                .address_failures,
            8
        );
    }

    #[test]
    fn address_keys_group_ipv6_by_64_and_unmap_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let prefix: IpAddr = "2001:db8:1:2::".parse().unwrap();
        assert_eq!(address_key(a), prefix);
        assert_eq!(address_key(b), prefix);
        assert_ne!(address_key(other), prefix);
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert_eq!(address_key(mapped), v4(9));
        assert_eq!(address_key(v4(9)), v4(9));

        let mut guard = LoginGuard::new(GuardSettings::default());
        let t0 = Instant::now();
        fail_n(&mut guard, a, None, 10, t0);
        fail_n(&mut guard, b, None, 10, t0);
        assert!(guard.is_banned(a, t0));
        assert!(guard.is_banned("2001:db8:1:2:ffff::".parse().unwrap(), t0));
        assert!(!guard.is_banned(other, t0));

        fail_n(&mut guard, mapped, None, 10, t0);
        fail_n(&mut guard, v4(9), None, 10, t0);
        assert!(guard.is_banned(v4(9), t0));
        assert!(guard.is_banned(mapped, t0));
        assert!(!guard.is_banned(v4(10), t0));
        assert_eq!(guard.tracked(), (2, 0));
    }

    #[test]
    fn unban_lifts_the_ban_and_forgets_failures() {
        let mut guard = LoginGuard::new(GuardSettings::default());
        let t0 = Instant::now();
        let addr = v4(66);
        assert!(fail_n(&mut guard, addr, None, 20, t0).banned);
        assert!(guard.unban(addr));
        assert!(!guard.is_banned(addr, t0));
        assert_eq!(guard.admit(addr, None, t0), proceed(Duration::ZERO));
        assert_eq!(guard.record_failure(addr, None, t0).address_failures, 1);
        // Not banned: nothing to lift (but the failures are forgotten all the same).
        assert!(!guard.unban(addr));
        assert!(!guard.unban(v4(1)));
        assert_eq!(guard.tracked(), (0, 0));
    }

    #[test]
    fn prune_drops_only_what_has_expired() {
        let settings = GuardSettings::default();
        let window = settings.window;
        let ban = settings.ban_duration;
        let mut guard = LoginGuard::new(settings);
        let t0 = Instant::now();
        fail_n(&mut guard, v4(1), Some("old"), 1, t0);
        fail_n(&mut guard, v4(2), None, 20, t0); // banned for 10 min, longer than the window
        fail_n(&mut guard, v4(3), Some("new"), 1, t0 + window);
        assert_eq!(guard.tracked(), (3, 2));
        guard.prune(t0 + window + SEC);
        assert_eq!(guard.tracked(), (2, 1));
        assert!(guard.is_banned(v4(2), t0 + window + SEC));
        guard.prune(t0 + ban);
        assert_eq!(guard.tracked(), (1, 1));
        guard.prune(t0 + ban + SEC);
        assert_eq!(guard.tracked(), (0, 0));
    }

    #[test]
    fn random_usernames_stay_within_max_tracked() {
        let settings = GuardSettings {
            max_tracked: 1000,
            ..GuardSettings::default()
        };
        let mut guard = LoginGuard::new(settings);
        let t0 = Instant::now();
        let addr = v4(1);
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut name = String::new();
        for i in 0..1_000_000u32 {
            // xorshift64: cheap, distinct-looking names without a dependency.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            name.clear();
            name.push('u');
            name.push_str(&state.to_string());
            let at = t0 + Duration::from_millis(u64::from(i));
            guard.record_failure(addr, Some(&name), at);
            let (addresses, usernames) = guard.tracked();
            assert!(usernames <= 1000, "{usernames} usernames at step {i}");
            assert_eq!(addresses, 1);
        }
        assert!(guard.tracked().1 > 900);
        // Eviction took the oldest: the latest name is still counted.
        let end = t0 + Duration::from_secs(1000);
        let out = guard.record_failure(addr, Some(&name), end);
        assert_eq!(out.username_failures, 2);
    }

    #[test]
    fn many_addresses_stay_within_max_tracked_and_bans_are_kept_longest() {
        let settings = GuardSettings {
            max_tracked: 32,
            ban_after: 3,
            ..GuardSettings::default()
        };
        let mut guard = LoginGuard::new(settings);
        let t0 = Instant::now();
        let banned = v4(250);
        assert!(fail_n(&mut guard, banned, None, 3, t0).banned);
        let old = v4(251);
        guard.record_failure(old, None, t0);
        for i in 0..10_000u32 {
            let address = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            guard.record_failure(address, None, t0 + Duration::from_millis(u64::from(i) + 1));
            assert!(guard.tracked().0 <= 32);
        }
        // The oldest unbanned entry went long ago; the ban survived the flood.
        let after = t0 + 11 * SEC;
        assert!(guard.is_banned(banned, after));
        assert_eq!(guard.record_failure(old, None, after).address_failures, 1);
        let (addresses, usernames) = guard.tracked();
        assert!((30..=32).contains(&addresses), "{addresses}");
        assert_eq!(usernames, 0);
    }

    #[test]
    fn when_every_entry_is_banned_the_oldest_ban_goes() {
        let settings = GuardSettings {
            max_tracked: 2,
            ban_after: 1,
            ..GuardSettings::default()
        };
        let mut guard = LoginGuard::new(settings);
        let t0 = Instant::now();
        guard.record_failure(v4(1), None, t0);
        guard.record_failure(v4(2), None, t0 + SEC);
        guard.record_failure(v4(3), None, t0 + 2 * SEC);
        let now = t0 + 3 * SEC;
        assert!(!guard.is_banned(v4(1), now));
        assert!(guard.is_banned(v4(2), now));
        assert!(guard.is_banned(v4(3), now));
        assert_eq!(guard.tracked(), (2, 0));
    }

    #[test]
    fn a_full_table_prefers_dropping_expired_entries() {
        let settings = GuardSettings {
            max_tracked: 4,
            ..GuardSettings::default()
        };
        let window = settings.window;
        let mut guard = LoginGuard::new(settings);
        let t0 = Instant::now();
        guard.record_failure(v4(1), None, t0);
        let fresh = t0 + window;
        for i in 2..=4 {
            guard.record_failure(v4(i), None, fresh);
        }
        let now = fresh + SEC;
        guard.record_failure(v4(5), None, now);
        // Only the expired entry made room: every live one is still counted.
        assert_eq!(guard.tracked(), (4, 0));
        for i in 2..=4 {
            assert_eq!(guard.record_failure(v4(i), None, now).address_failures, 2);
        }
    }

    #[test]
    fn a_full_table_drops_every_expired_entry_at_once() {
        let settings = GuardSettings {
            max_tracked: 16,
            ..GuardSettings::default()
        };
        let window = settings.window;
        let mut guard = LoginGuard::new(settings);
        let t0 = Instant::now();
        for i in 0..8 {
            guard.record_failure(v4(i), Some(&format!("old{i}")), t0);
        }
        let fresh = t0 + window;
        for i in 8..16 {
            guard.record_failure(v4(i), Some(&format!("new{i}")), fresh);
        }
        let now = fresh + SEC;
        guard.record_failure(v4(100), Some("newest"), now);
        // All eight expired entries went (more than the eviction batch of two), no live one.
        assert_eq!(guard.tracked(), (9, 9));
        for i in 8..16 {
            let out = guard.record_failure(v4(i), Some(&format!("new{i}")), now);
            assert_eq!((out.address_failures, out.username_failures), (2, 2));
        }
    }

    #[test]
    fn absurd_settings_do_not_panic() {
        let settings = GuardSettings {
            backoff_after: 0,
            window: Duration::MAX,
            initial_delay: Duration::MAX,
            max_delay: Duration::MAX,
            max_wait: Duration::MAX,
            ban_after: 2,
            ban_duration: Duration::MAX,
            max_tracked: 1,
            exempt: Vec::new(),
        };
        let mut guard = LoginGuard::new(settings);
        let t0 = Instant::now();
        guard.record_failure(v4(1), Some("x"), t0);
        assert!(matches!(
            guard.admit(v4(1), Some("x"), t0),
            Admission::Proceed { .. }
        ));
        assert!(guard.record_failure(v4(1), Some("x"), t0).banned);
        assert!(guard.is_banned(v4(1), t0 + Duration::from_secs(1 << 40)));
        guard.record_failure(v4(2), Some("y"), t0);
        assert_eq!(guard.tracked(), (1, 1));
        guard.prune(t0);
    }
}
