#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn one(rule: Rule) -> Detector {
    Detector::new(DetectSettings {
        rules: vec![rule],
        max_tracked: 100,
    })
}

fn failed(addr: &str, user: &str) -> Observation<'static> {
    let mut o = Observation::new(Signal::LoginFailed);
    o.address = Some(ip(addr));
    o.username = Some(Box::leak(user.to_owned().into_boxed_str()));
    o
}

#[test]
fn failed_logins_per_network_fire_once_per_window() {
    let mut rule = Rule::new("fl", RuleKind::FailedLogins, Per::Network);
    rule.threshold = 3;
    rule.window = Duration::from_secs(10);
    let mut d = one(rule);
    let t = Instant::now();
    // Two addresses of one /24 count together; another /24 does not.
    assert!(d.observe(&failed("203.0.113.7", "a"), t).is_empty());
    assert!(d.observe(&failed("198.51.100.1", "a"), t).is_empty());
    assert!(d.observe(&failed("203.0.113.9", "b"), t).is_empty());
    let fired = d.observe(&failed("203.0.113.200", "c"), t + Duration::from_secs(1));
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].subject, Subject::Network(ip("203.0.113.0")));
    assert_eq!(fired[0].subject.to_string(), "network 203.0.113.0/24");
    assert_eq!((fired[0].value, fired[0].limit), (3, 3));
    // Quiet for the window, then counting again from nothing.
    for i in 0..10 {
        assert!(
            d.observe(
                &failed("203.0.113.7", "a"),
                t + Duration::from_millis(2000 + i)
            )
            .is_empty()
        );
    }
    // Failures during the quiet window still count: the ones at 2 s leave it at 12 s.
    let later = t + Duration::from_secs(13);
    assert!(d.observe(&failed("203.0.113.7", "a"), later).is_empty());
    assert!(d.observe(&failed("203.0.113.7", "a"), later).is_empty());
    assert_eq!(d.observe(&failed("203.0.113.7", "a"), later).len(), 1);
}

#[test]
fn old_events_leave_the_window() {
    let mut rule = Rule::new("fl", RuleKind::FailedLogins, Per::Network);
    rule.threshold = 3;
    rule.window = Duration::from_secs(10);
    let mut d = one(rule);
    let t = Instant::now();
    for i in 0..10u64 {
        // One every 6 s: never 3 within 10 s.
        assert!(
            d.observe(&failed("192.0.2.1", "a"), t + Duration::from_secs(6 * i))
                .is_empty()
        );
    }
}

#[test]
fn topic_scan_counts_distinct_topics() {
    let mut rule = Rule::new("scan", RuleKind::AclDenials, Per::User);
    rule.threshold = 3;
    let mut d = one(rule);
    let t = Instant::now();
    let deny = |topic: &'static str| {
        let mut o = Observation::new(Signal::AclDenied { topic });
        o.username = Some("mallory");
        o
    };
    for _ in 0..20 {
        assert!(
            d.observe(&deny("a/1"), t).is_empty(),
            "the same topic again is not a scan"
        );
    }
    assert!(d.observe(&deny("a/2"), t).is_empty());
    let fired = d.observe(&deny("a/3"), t);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].subject, Subject::User("mallory".into()));
}

#[test]
fn shared_credential_counts_live_networks() {
    let mut rule = Rule::new("shared", RuleKind::SharedCredential, Per::User);
    rule.threshold = 3;
    let mut d = one(rule);
    let t = Instant::now();
    let login = |signal, addr| {
        let mut o = Observation::new(signal);
        o.username = Some("fleet");
        o.address = Some(ip(addr));
        o
    };
    assert!(
        d.observe(&login(Signal::Connected, "10.0.0.1"), t)
            .is_empty()
    );
    assert!(
        d.observe(&login(Signal::Connected, "10.0.0.2"), t)
            .is_empty(),
        "same /24"
    );
    assert!(
        d.observe(&login(Signal::Connected, "192.0.2.1"), t)
            .is_empty(),
        "two networks"
    );
    assert!(
        d.observe(&login(Signal::Disconnected, "192.0.2.1"), t)
            .is_empty()
    );
    assert!(
        d.observe(&login(Signal::Disconnected, "10.0.0.1"), t)
            .is_empty()
    );
    assert!(
        d.observe(&login(Signal::Disconnected, "10.0.0.2"), t)
            .is_empty()
    );
    // Sequential logins from two networks are not "at once".
    assert!(
        d.observe(&login(Signal::Connected, "192.0.2.1"), t)
            .is_empty()
    );
    let fired = d.observe(&login(Signal::Connected, "10.0.0.3"), t);
    assert!(fired.is_empty(), "two networks at once, not three");
    let fired = d.observe(&login(Signal::Connected, "198.51.100.1"), t);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].value, 3);
}

#[test]
fn message_rate_against_own_baseline() {
    let mut rule = Rule::new("rate", RuleKind::MessageRate, Per::ClientId);
    rule.window = Duration::from_secs(10);
    rule.threshold = 50;
    rule.factor = 5;
    rule.warmup = 3;
    let mut d = one(rule);
    let t = Instant::now();
    let sample = |messages| {
        let mut o = Observation::new(Signal::Published {
            messages,
            bytes: messages * 100,
        });
        o.client_id = Some("meter-1");
        o
    };
    // Three periods of 20 messages: the baseline.
    for p in 0..3u64 {
        for s in 0..2u64 {
            assert!(
                d.observe(&sample(10), t + Duration::from_secs(10 * p + 4 * s))
                    .is_empty()
            );
        }
    }
    // 60 in the fourth period: over the threshold (50) but under 5x the baseline (100).
    let p4 = t + Duration::from_secs(31);
    assert!(d.observe(&sample(60), p4).is_empty());
    // Another 50 in the same period: 110 > 100.
    let fired = d.observe(&sample(50), p4 + Duration::from_secs(1));
    assert_eq!(fired.len(), 1);
    assert_eq!((fired[0].value, fired[0].limit), (110, 100));
    // Once per period.
    assert!(
        d.observe(&sample(500), p4 + Duration::from_secs(2))
            .is_empty()
    );
}

#[test]
fn no_baseline_no_detection() {
    let mut rule = Rule::new("rate", RuleKind::MessageRate, Per::ClientId);
    rule.threshold = 1;
    let mut d = one(rule);
    let mut o = Observation::new(Signal::Published {
        messages: 1_000_000,
        bytes: 1,
    });
    o.client_id = Some("new");
    assert!(
        d.observe(&o, Instant::now()).is_empty(),
        "a new client has no baseline yet"
    );
}

#[test]
fn message_size_uses_the_mean() {
    let mut rule = Rule::new("size", RuleKind::MessageSize, Per::ClientId);
    rule.window = Duration::from_secs(10);
    rule.threshold = 1000;
    rule.factor = 4;
    rule.warmup = 2;
    let mut d = one(rule);
    let t = Instant::now();
    let sample = |messages, bytes| {
        let mut o = Observation::new(Signal::Published { messages, bytes });
        o.client_id = Some("c");
        o
    };
    assert!(d.observe(&sample(10, 5_000), t).is_empty());
    assert!(
        d.observe(&sample(10, 5_000), t + Duration::from_secs(10))
            .is_empty()
    );
    // Baseline 500 bytes; 4x is 2,000.
    let fired = d.observe(&sample(2, 5_000), t + Duration::from_secs(20));
    assert_eq!(fired.len(), 1);
    assert_eq!((fired[0].value, fired[0].limit), (2_500, 2_000));
}

#[test]
fn root_wildcards() {
    assert_eq!(wildcard_depth("#"), Some(1));
    assert_eq!(wildcard_depth("+/#"), Some(1));
    assert_eq!(wildcard_depth("a/+/b"), Some(2));
    assert_eq!(wildcard_depth("a/b"), None);
    assert_eq!(wildcard_depth("$share/g/#"), Some(1));
    assert_eq!(wildcard_depth("$share/g/a/#"), Some(2));
    let mut d = one(Rule::new("root", RuleKind::RootWildcard, Per::User));
    let sub = |filter: &'static str| {
        let mut o = Observation::new(Signal::Subscribed { filter });
        o.username = Some("u");
        o
    };
    let t = Instant::now();
    assert!(d.observe(&sub("devices/u/#"), t).is_empty());
    assert_eq!(d.observe(&sub("#"), t).len(), 1);
}

#[test]
fn claimed_identities_cannot_be_acted_on() {
    let mut rule = Rule::new("x", RuleKind::FailedLogins, Per::User);
    rule.responses = vec![Response::Event, Response::Ban];
    let err = DetectSettings {
        rules: vec![rule.clone()],
        max_tracked: 10,
    }
    .validate()
    .unwrap_err();
    assert!(err[0].contains("only claimed"), "{err:?}");
    rule.per = Per::Network;
    assert!(
        DetectSettings {
            rules: vec![rule],
            max_tracked: 10
        }
        .validate()
        .is_ok()
    );
    assert!(DetectSettings::default().validate().is_ok());
    assert!(
        DetectSettings::builtin()
            .iter()
            .all(|r| r.responses.iter().all(|x| !x.acts()))
    );
}

#[test]
fn tables_are_bounded() {
    let mut rule = Rule::new("fl", RuleKind::FailedLogins, Per::Network);
    rule.threshold = 2;
    rule.window = Duration::from_secs(10);
    let mut d = Detector::new(DetectSettings {
        rules: vec![rule],
        max_tracked: 3,
    });
    let t = Instant::now();
    for i in 0..10 {
        d.observe(&failed(&format!("10.0.{i}.1"), "a"), t);
    }
    assert_eq!(d.tracked()[0].1, 3);
    assert_eq!(d.tracked()[0].2, 7);
    // Once they are idle for a window, new ones are tracked again.
    let fired = {
        d.observe(&failed("10.9.9.1", "a"), t + Duration::from_secs(11));
        d.observe(&failed("10.9.9.1", "a"), t + Duration::from_secs(11))
    };
    assert_eq!(fired.len(), 1);
}
