use super::*;

const SEED: &str = r##"
# every client: its own subtree
[[rule]]
permission = "allow"
action = "all"
topic = "devices/{client_id}/#"

[[rule]]
permission = "allow"
action = "subscribe"
group = "readers"
topic = "sensor/#"

[[rule]]
permission = "allow"
action = "publish"
group = "controllers"
topic = "actuator/#"
max_qos = 1
retain = false

[[rule]]
permission = "allow"
action = "all"
group = "admins"
topics = ["admin/#", "#", "$SYS/#"]

[[rule]]
permission = "allow"
action = "all"
user = ["east1", "east2"]
topic = "region/us-east/#"

[[rule]]
permission = "deny"
action = "all"
topic = "sensor/secret/#"
"##;

fn rules() -> AclRules {
    AclRules::parse(SEED, "acl.toml").unwrap()
}

fn user(name: &str, groups: &[&str]) -> Principal {
    Principal {
        username: Some(Arc::from(name)),
        groups: groups.iter().map(|g| Arc::from(*g)).collect(),
        authenticated: true,
        ..Principal::default()
    }
}

#[test]
fn seed_patterns_decide_as_written() {
    let rules = rules();
    let dev = rules.resolve(&user("d1", &[]), "dev-1");
    assert!(dev.may_publish("devices/dev-1/temp", 1, true));
    assert!(dev.check_subscribe("devices/dev-1/#", 2).allowed);
    assert!(!dev.may_publish("devices/dev-2/temp", 0, false));
    assert!(!dev.check_subscribe("devices/#", 0).allowed);
    assert!(!dev.check_subscribe("sensor/#", 0).allowed);

    let reader = rules.resolve(&user("r", &["readers"]), "r1");
    let d = reader.check_subscribe("sensor/open/+", 1);
    assert!(d.allowed && d.carve_outs.is_empty());
    // sensor/+/temp also reaches sensor/secret/temp: granted, with the deny rule as a
    // carve-out checked at delivery.
    let d = reader.check_subscribe("sensor/+/temp", 1);
    assert!(d.allowed);
    assert_eq!(d.carve_outs.len(), 1);
    assert!(!reader.may_publish("sensor/a/temp", 0, false), "read-only");
    // "sensor/# but not sensor/secret": granted with the carve-out.
    let d = reader.check_subscribe("sensor/#", 1);
    assert!(d.allowed);
    assert_eq!(d.qos, 1);
    assert_eq!(d.reason, Reason::Allowed);
    assert_eq!(d.origin.as_ref().unwrap().to_string(), "acl.toml:8");
    assert_eq!(d.carve_outs[0].to_string(), "acl.toml:34");
    assert_eq!(
        d.to_string(),
        "allowed (acl.toml:8) except the topics denied by acl.toml:34 (each message checked at delivery)"
    );
    // A filter inside the denied subtree is refused as a whole.
    let d = reader.check_subscribe("sensor/secret/+", 1);
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::DeniedByRule);
    assert_eq!(d.origin.unwrap().to_string(), "acl.toml:34");
    assert!(!reader.may_receive("sensor/secret/x"));
    assert!(reader.may_receive("sensor/open/x"));

    let controller = rules.resolve(&user("c", &["controllers"]), "c1");
    assert!(controller.may_publish("actuator/valve", 1, false));
    let d = controller.check_publish("actuator/valve", 2, false);
    assert_eq!(d.reason, Reason::QosAbove(1));
    let d = controller.check_publish("actuator/valve", 0, true);
    assert_eq!(d.reason, Reason::RetainNotAllowed);
    assert!(
        !controller.check_subscribe("actuator/#", 0).allowed,
        "write-only"
    );

    let admin = rules.resolve(&user("root", &["admins"]), "a");
    // `#` reaches sensor/secret, which a deny rule keeps from everybody: a carve-out.
    let d = admin.check_subscribe("#", 2);
    assert!(d.allowed);
    assert_eq!(d.carve_outs.len(), 1);
    assert!(!admin.check_subscribe("sensor/secret/#", 2).allowed);
    assert!(admin.check_subscribe("admin/#", 2).allowed);
    assert!(admin.check_subscribe("+/x", 2).allowed);
    assert!(admin.check_subscribe("$SYS/#", 0).allowed);
    assert!(admin.may_publish("admin/x", 2, true));
    assert!(
        !admin.may_publish("sensor/secret/k", 0, false),
        "deny beats allow"
    );

    let east = rules.resolve(&user("east2", &[]), "e");
    assert!(east.check_subscribe("region/us-east/#", 1).allowed);
    assert!(!east.check_subscribe("region/#", 1).allowed);
    assert!(
        !rules
            .resolve(&user("west", &[]), "w")
            .may_publish("region/us-east/a", 0, false)
    );
}

#[test]
fn unsafe_template_values_match_nothing() {
    let rules = rules();
    for id in ["+", "#", "a/b", "V/evil", "", "x\0y", "$SYS"] {
        let acl = rules.resolve(&user("u", &[]), id);
        for topic in [
            "devices/a/b/x",
            "devices/V/evil/x",
            "devices/x/y",
            "devices/+/x",
        ] {
            assert!(!acl.may_publish(topic, 0, false), "{id:?} {topic}");
        }
        for filter in ["devices/#", "devices/+/#", "devices/a/#", "#"] {
            assert!(!acl.check_subscribe(filter, 0).allowed, "{id:?} {filter}");
        }
    }
    // Substituted literally, never as a pattern.
    let acl = rules.resolve(&user("u", &[]), ".*");
    assert!(acl.may_publish("devices/.*/x", 0, false));
    assert!(!acl.may_publish("devices/abc/x", 0, false));
}

#[test]
fn a_value_cannot_make_a_dollar_pattern() {
    let text = "[[rule]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"{username}/#\"\n";
    let rules = AclRules::parse(text, "a").unwrap();
    let acl = rules.resolve(&user("$SYS", &[]), "c");
    assert!(!acl.check_subscribe("$SYS/#", 0).allowed);
    let acl = rules.resolve(&user("bob", &[]), "c");
    assert!(acl.check_subscribe("bob/#", 0).allowed);
}

#[test]
fn dollar_topics_need_a_rule_naming_them() {
    let text = "[[rule]]\npermission = \"allow\"\naction = \"all\"\ntopics = [\"#\", \"+/#\"]\n";
    let acl = AclRules::parse(text, "a")
        .unwrap()
        .resolve(&user("u", &[]), "c");
    assert!(acl.check_subscribe("a/b", 0).allowed);
    assert!(!acl.check_subscribe("$SYS/#", 0).allowed);
    assert!(!acl.check_subscribe("$SYS/broker/uptime", 0).allowed);
    assert!(!acl.may_receive("$SYS/broker/uptime"));
}

#[test]
fn default_is_deny() {
    let acl = AclRules::empty().resolve(&user("u", &["admins"]), "c");
    assert!(acl.is_empty());
    let d = acl.check_publish("a", 0, false);
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::NoRule);
    assert!(!acl.check_subscribe("a", 0).allowed);
}

#[test]
fn granted_qos_is_capped_by_the_rule() {
    let text =
        "[[rule]]\npermission = \"allow\"\naction = \"subscribe\"\ntopic = \"a/#\"\nmax_qos = 1\n";
    let acl = AclRules::parse(text, "a")
        .unwrap()
        .resolve(&user("u", &[]), "c");
    let d = acl.check_subscribe("a/b", 2);
    assert!(d.allowed);
    assert_eq!(d.qos, 1);
}

#[test]
fn who_conditions_all_hold() {
    let text = r#"
[[rule]]
permission = "allow"
action = "publish"
topic = "t"
listener = "tls"
source = ["10.0.0.0/8", "2001:db8::/32"]
cert_cn = "dev-7"
"#;
    let rules = AclRules::parse(text, "a").unwrap();
    let mut p = user("u", &[]);
    p.listener = Some(Arc::from("tls"));
    p.cert_cn = Some(Arc::from("dev-7"));
    p.address = Some("10.1.2.3".parse().unwrap());
    assert!(rules.resolve(&p, "c").may_publish("t", 0, false));
    p.address = Some("::ffff:10.9.9.9".parse().unwrap());
    assert!(rules.resolve(&p, "c").may_publish("t", 0, false));
    p.address = Some("2001:db8:1::1".parse().unwrap());
    assert!(rules.resolve(&p, "c").may_publish("t", 0, false));
    p.address = Some("11.0.0.1".parse().unwrap());
    assert!(!rules.resolve(&p, "c").may_publish("t", 0, false));
    p.address = Some("10.0.0.1".parse().unwrap());
    p.listener = Some(Arc::from("tcp"));
    assert!(!rules.resolve(&p, "c").may_publish("t", 0, false));
    p.listener = Some(Arc::from("tls"));
    p.cert_cn = None;
    assert!(!rules.resolve(&p, "c").may_publish("t", 0, false));
}

#[test]
fn anonymous_clients_need_rules_that_say_so() {
    let text = r#"
[[rule]]
permission = "allow"
action = "all"
topic = "open/#"

[[rule]]
permission = "allow"
action = "subscribe"
clients = "anonymous"
topic = "public/#"

[[rule]]
permission = "allow"
action = "publish"
clients = "any"
topic = "both"
"#;
    let rules = AclRules::parse(text, "a").unwrap();
    let anon = rules.resolve(&Principal::default(), "c");
    assert!(!anon.may_publish("open/x", 0, false));
    assert!(anon.check_subscribe("public/#", 0).allowed);
    assert!(anon.may_publish("both", 0, false));
    let authed = rules.resolve(&user("u", &[]), "c");
    assert!(authed.may_publish("open/x", 0, false));
    assert!(!authed.check_subscribe("public/#", 0).allowed);
    assert!(authed.may_publish("both", 0, false));
}

#[test]
fn templates_need_their_values() {
    let text = "[[rule]]\npermission = \"allow\"\naction = \"all\"\ntopics = [\"u/{username}\", \"c/{cert_cn}/x\", \"pre-{client_id}-post\"]\n";
    let rules = AclRules::parse(text, "a").unwrap();
    let anon = Principal {
        authenticated: true,
        ..Principal::default()
    };
    let acl = rules.resolve(&anon, "id");
    assert!(!acl.may_publish("u/", 0, false));
    assert!(!acl.may_publish("c//x", 0, false));
    assert!(acl.may_publish("pre-id-post", 0, false));
    let mut p = user("bob", &[]);
    p.cert_cn = Some(Arc::from("dev"));
    let acl = rules.resolve(&p, "id");
    assert!(acl.may_publish("u/bob", 0, false));
    assert!(acl.may_publish("c/dev/x", 0, false));
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let text = r#"
[[rule]]
permission = "maybe"
action = "all"
topic = "a/#/b"

[[rule]]
permission = "deny"
action = "publish"
topic = "devices/{clientid}/x"
max_qos = 1

[[rule]]
permission = "allow"
action = "subscribe"
topics = ["ok"]
retain = false
source = "10.0.0.0/33"
"#;
    let err = AclRules::parse(text, "acl.toml").unwrap_err();
    let all = err.to_string();
    assert!(all.contains("acl.toml:2: permission \"maybe\""), "{all}");
    assert!(all.contains("acl.toml:2: \"a/#/b\""), "{all}");
    assert!(
        all.contains("acl.toml:7: \"devices/{clientid}/x\": unknown template"),
        "{all}"
    );
    assert!(all.contains("acl.toml:7: max_qos and retain"), "{all}");
    assert!(all.contains("acl.toml:13: retain applies"), "{all}");
    assert!(all.contains("acl.toml:13: source"), "{all}");
    assert!(Template::parse("a}b/{username}").is_err());
    // One address-range type with one rule for host bits everywhere: `10.1.2.3/8` is a
    // likely mistake (one host meant, or a wider rule than intended), refused with the
    // network it would be.
    let err = Cidr::parse("10.1.2.3/8").unwrap_err();
    assert!(err.contains("the network is 10.0.0.0/8"), "{err}");
    assert!(err.contains("one host is 10.1.2.3"), "{err}");
    assert!(
        Cidr::parse("::ffff:0:0/96")
            .unwrap()
            .contains("::ffff:10.0.0.1".parse().unwrap())
    );
    let err = AclRules::parse("[[rule]]\npermision = \"allow\"\n", "f").unwrap_err();
    assert!(err.to_string().contains("permision"), "{err}");
    assert!(AclRules::parse("[[rule]]\n", "f").is_err());
}

#[test]
fn claims_add_rules() {
    let claim = serde_json::json!({"publish": ["sensors/{username}/#"], "subscribe": ["cmd/7"]});
    let rules = Arc::new(AclRules::from_claim(&claim).unwrap());
    let mut p = user("t7", &[]);
    p.claim = Some(rules);
    let acl = AclRules::parse(SEED, "acl.toml").unwrap().resolve(&p, "c");
    assert!(acl.may_publish("sensors/t7/a", 2, true));
    assert!(!acl.may_publish("cmd/7", 0, false));
    let d = acl.check_subscribe("cmd/7", 1);
    assert!(d.allowed);
    assert_eq!(d.origin.unwrap().source.as_ref(), "jwt claim");

    let claim = serde_json::json!([
        {"permission": "allow", "action": "all", "topic": "x/#"},
        {"permission": "deny", "action": "publish", "topic": "x/ro"},
    ]);
    let mut p = user("t", &[]);
    p.claim = Some(Arc::new(AclRules::from_claim(&claim).unwrap()));
    let acl = AclRules::empty().resolve(&p, "c");
    assert!(acl.may_publish("x/a", 0, false));
    assert!(!acl.may_publish("x/ro", 0, false));
    assert!(acl.check_subscribe("x/ro", 0).allowed);

    for bad in [
        serde_json::json!("x"),
        serde_json::json!({"write": ["a"]}),
        serde_json::json!({"publish": "a"}),
        serde_json::json!([{"permission": "allow", "action": "all", "topic": "a", "user": "x"}]),
        serde_json::json!([{"permission": "allow", "action": "all", "topic": "a/#/b"}]),
    ] {
        assert!(AclRules::from_claim(&bad).is_err(), "{bad}");
    }
}

#[test]
fn decisions_explain_themselves() {
    let rules = rules();
    let acl = rules.resolve(&user("c", &["controllers"]), "c1");
    assert_eq!(
        acl.check_publish("actuator/v", 1, false).to_string(),
        "allowed (acl.toml:14)"
    );
    assert_eq!(
        acl.check_publish("nothing", 0, false).to_string(),
        "no rule allows it"
    );
    assert_eq!(
        rules.rules()[2].to_string(),
        "allow publish actuator/# group=controllers max_qos=1 retain=false"
    );
}

#[test]
fn who_within_compares_breadth() {
    let rules = rules();
    let all = &rules.rules()[0].who;
    let readers = &rules.rules()[1].who;
    assert!(readers.within(all));
    assert!(!all.within(readers));
    assert!(readers.within(readers));
}

#[test]
fn several_allow_rules_may_cover_a_filter_together() {
    let rules = AclRules::parse(
        r##"
[[rule]]
permission = "allow"
action = "subscribe"
topic = "plant/+/temp"
max_qos = 2

[[rule]]
permission = "allow"
action = "subscribe"
topic = "plant/hall/+"
max_qos = 1

[[rule]]
permission = "allow"
action = "subscribe"
topics = ["logs", "logs/+/#"]
max_qos = 1

[[rule]]
permission = "deny"
action = "subscribe"
topic = "logs/private/#"
"##,
        "acl.toml",
    )
    .unwrap();
    let acl = rules.resolve(&user("u", &[]), "c");
    // plant/hall/temp: both rules (one alone does too: the first).
    assert!(
        acl.check_subscribe("plant/hall/temp", 2)
            .together
            .is_empty()
    );
    // logs/#: `logs` and `logs/+/#` together match every topic it can, none alone does;
    // the deny is a carve-out. QoS: the lowest of the rules that cover it.
    let d = acl.check_subscribe("logs/#", 2);
    assert!(d.allowed, "{d}");
    assert_eq!(d.qos, 1);
    assert_eq!(d.together.len(), 1);
    assert_eq!(d.carve_outs.len(), 1);
    assert_eq!(
        d.to_string(),
        "allowed (acl.toml:14 with acl.toml:14) except the topics denied by acl.toml:20 \
         (each message checked at delivery)"
    );
    // plant/+/+ reaches plant/x/y, which neither rule allows.
    assert!(!acl.check_subscribe("plant/+/+", 1).allowed);
    assert!(!acl.check_subscribe("#", 0).allowed);
}

#[test]
fn quarantine_keeps_only_the_groups_rules() {
    let text = format!(
        "{SEED}\n[[rule]]\npermission = \"allow\"\naction = \"publish\"\ngroup = \"quarantine\"\ntopic = \"quarantine/{{client_id}}/#\"\n"
    );
    let rules = AclRules::parse(&text, "acl.toml").unwrap();
    let free = rules.resolve(&user("r", &["readers"]), "c1");
    assert!(free.may_publish("devices/c1/x", 0, false));
    assert!(free.check_subscribe("sensor/#", 0).allowed);
    assert!(!free.may_publish("quarantine/c1/x", 0, false));
    let mut held = user("r", &["quarantine"]);
    held.quarantine = Some(Arc::from("quarantine"));
    let held = rules.resolve(&held, "c1");
    assert!(
        held.may_publish("quarantine/c1/x", 0, false),
        "the group's own rules, templates filled"
    );
    assert!(
        !held.may_publish("devices/c1/x", 0, false),
        "rules for everyone are left out"
    );
    assert!(!held.check_subscribe("sensor/#", 0).allowed);
    assert!(!held.check_subscribe("#", 0).allowed);
}
