//! The ACL parsers (file and JWT claim) and the decisions over whatever they accept: nothing
//! may panic, and the decisions must agree with each other. Input: an ACL file (or a claim's
//! JSON), then after a `\u{1}` byte, topics and filters to probe, one per line.
#![no_main]

use std::sync::Arc;

use bulwark_acl::lint::{Known, lint};
use bulwark_acl::{AclRules, Principal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, probes) = text.split_once('\u{1}').unwrap_or((text, "a/b\n#\n$SYS/x"));
    let claim = serde_json::from_str::<serde_json::Value>(file)
        .ok()
        .and_then(|v| AclRules::from_claim(&v).ok());
    let Ok(rules) = AclRules::parse(file, "fuzz") else {
        return;
    };
    let _ = lint(&rules, &Known::default());
    for (i, client_id) in ["cid", "a/b", "+", ""].into_iter().enumerate() {
        let principal = Principal {
            username: (i != 3).then(|| Arc::from("u")),
            groups: vec![Arc::from("g")],
            cert_cn: (i % 2 == 0).then(|| Arc::from("cn")),
            listener: Some(Arc::from("l")),
            address: Some(std::net::IpAddr::from([127, 0, 0, 1])),
            authenticated: i != 3,
            claim: claim.clone().map(Arc::new),
            // One client quarantined in its group: only the rules naming it apply.
            quarantine: (i == 2).then(|| Arc::from("g")),
        };
        let acl = rules.resolve(&principal, client_id);
        for probe in probes.lines().take(16) {
            for (qos, retain) in [(0, false), (1, true), (2, false)] {
                assert_eq!(
                    acl.may_publish(probe, qos, retain),
                    acl.check_publish(probe, qos, retain).allowed,
                    "{probe}"
                );
            }
            let decision = acl.check_subscribe(probe, 2);
            assert!(decision.qos <= 2);
            // Containment is sound: a granted filter that is a plain topic may be received.
            if decision.allowed && !probe.contains(['+', '#']) {
                assert!(
                    acl.may_receive(probe),
                    "granted {probe} but may not receive it"
                );
            }
            // A granted filter (by one allow rule or several together) covers every topic it
            // matches: what it may not receive is what a deny rule carves out.
            if decision.allowed
                && !probe.starts_with("$share/")
                && let Ok(filter) = bulwark_proto::TopicFilter::new(probe)
            {
                for topic in probes.lines().take(16) {
                    if bulwark_proto::TopicName::new(topic).is_ok_and(|t| filter.matches(&t))
                        && !acl.may_receive(topic)
                    {
                        let denied = acl.check_subscribe(topic, 2).reason;
                        assert_eq!(
                            denied,
                            bulwark_acl::Reason::DeniedByRule,
                            "{probe} granted, {topic} matched by no allow rule"
                        );
                        assert!(
                            !decision.carve_outs.is_empty(),
                            "{probe}: {topic} carved out silently"
                        );
                    }
                }
            }
        }
    }
});
