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
