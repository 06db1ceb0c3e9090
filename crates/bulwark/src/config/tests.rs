#![allow(clippy::unwrap_used, reason = "tests")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bulwark_core::DeniedPublish;
use bulwark_server::tls::{ClientAuth, IdentitySource, TlsVersion};
use bulwark_store::SyncPolicy;

use toml::Value;

use super::*;

/// `text` with the explicit choice to run without an ACL, which every file must make.
fn open(text: &str) -> String {
    format!("{text}\n[acl]\ndangerous_allow_all = true\n")
}

#[test]
fn empty_file_gives_the_secure_defaults() {
    let err = parse("", "test").unwrap_err();
    assert!(
        err.problems.iter().any(|p| p.contains("acl: no ACL file")),
        "{err}"
    );
    let config = parse(&open(""), "test").unwrap();
    // The library's defaults, but the store on disk, synced at every commit.
    assert_eq!(
        config,
        ServerConfig {
            storage: bulwark_server::StorageSettings {
                path: Some(PathBuf::from("bulwark-data/store.redb")),
                sync: SyncPolicy::Always,
            },
            ..ServerConfig::default()
        }
    );
    assert_eq!(config.listeners.len(), 1);
    assert!(config.listeners.first().unwrap().bind.ip().is_loopback());
}

#[test]
fn storage_is_read() {
    let dir = Path::new("/var/lib/b");
    let config = parse_in(&open(""), "/etc/b/bulwark.toml", dir).unwrap();
    assert_eq!(
        config.storage.path,
        Some(PathBuf::from("/var/lib/b/store.redb"))
    );
    let config = parse_in(
        &open("[storage]\npath = \"s/x.redb\"\nsync = \"periodic\"\nsync_interval = 5\n"),
        "/etc/b/bulwark.toml",
        dir,
    )
    .unwrap();
    assert_eq!(config.storage.path, Some(PathBuf::from("/etc/b/s/x.redb")));
    assert_eq!(
        config.storage.sync,
        SyncPolicy::Periodic(Duration::from_secs(5))
    );
    let config = parse_in(&open("[storage]\nkind = \"memory\"\n"), "t", dir).unwrap();
    assert_eq!(config.storage.path, None);
    let err = parse_in(
        &open("[storage]\nkind = \"tape\"\nsync = \"never\"\nsync_interval = 0\nx = 1\n"),
        "t",
        dir,
    )
    .unwrap_err();
    let all = err.problems.join("\n");
    for part in [
        "storage.kind = \"tape\"",
        "storage.sync = \"never\"",
        "storage.sync_interval = 0",
        "storage.x",
    ] {
        assert!(all.contains(part), "{part}: {all}");
    }
    let err = parse_in(&open("[storage]\nsync_interval = 2\n"), "t", dir).unwrap_err();
    assert!(
        err.problems
            .join("\n")
            .contains("only used with sync = \"periodic\"")
    );
}

#[test]
fn keys_are_read() {
    let text = r#"
            [[listener]]
            name = "a"
            bind = "127.0.0.1:1999"
            [[listener]]
            bind = "[::1]:2000"
            [limits]
            max_packet_size = 2048
            max_unauthenticated_packet_size = 1024
            receive_maximum = 10
            max_topic_levels = 8
            [mqtt]
            queue_qos0_offline = true
            [sys]
            interval = 0
            [server]
            workers = 3
        "#;
    let config = parse(&open(text), "test").unwrap();
    assert_eq!(config.workers, 3);
    assert_eq!(config.worker_threads(), 3);
    assert_eq!(config.listeners.len(), 2);
    assert_eq!(config.listeners.get(1).unwrap().name, "tcp-1");
    assert_eq!(config.decoder.max_packet_size, 2048);
    assert_eq!(config.broker.packets.max_packet_size, 2048);
    assert_eq!(config.broker.sessions.receive_maximum, 10);
    assert_eq!(config.broker.packets.max_topic_levels, 8);
    assert!(config.broker.sessions.queue_qos0_offline);
    assert_eq!(config.broker.sys_interval, None);
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
            colour = "blue"
            [[listener]]
            bind = "0.0.0.0:1883"
            port = 5
            [limits]
            receive_maximum = 0
            max_topic_levels = "many"
            max_packet_size = 100
            max_unauthenticated_packet_size = 200
            [mqtt]
            queue_qos0_offline = "yes"
            [server]
            workers = 5000
        "#;
    let err = parse(&open(text), "test").unwrap_err();
    let all = err.problems.join("\n");
    for expected in [
        "colour: unknown",
        "listener[0].port: unknown key",
        "sends credentials and payloads in clear text",
        "limits.receive_maximum = 0: must be between 1 and 65535",
        "limits.max_topic_levels: expected a non-negative integer, found the string \"many\"",
        "max_unauthenticated_packet_size must not exceed",
        "mqtt.queue_qos0_offline: expected true or false",
        "server.workers = 5000: must be between 0 and 1024",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    assert_eq!(err.problems.len(), 8, "{all}");
    let err = parse(&open("listener = 5\n"), "t").unwrap_err();
    assert!(
        err.to_string()
            .contains("listener: expected [[listener]] tables"),
        "{err}"
    );
}

#[test]
fn tls_listeners_are_read_with_paths_relative_to_the_file() {
    let text = r#"
            [[listener]]
            kind = "tls"
            bind = "0.0.0.0:8883"
            [listener.tls]
            cert = "server.pem"
            key = "/abs/server.key"
            min_version = "1.3"
            alpn = ["mqtt"]
            handshake_timeout = 3
            client_auth = "required"
            client_ca = "ca.pem"
            crl = "revoked.crl"
            identity = "san_uri"
            identity_as_client_id = true
            [[listener.tls.sni]]
            cert = "b.pem"
            key = "b.key"
        "#;
    let config = parse(&open(text), "/etc/bulwark/bulwark.toml").unwrap();
    let listener = config.listeners.first().unwrap();
    assert_eq!(listener.name, "tls-0");
    let tls = listener.kind.tls().unwrap();
    assert_eq!(tls.cert.cert, PathBuf::from("/etc/bulwark/server.pem"));
    assert_eq!(tls.cert.key, PathBuf::from("/abs/server.key"));
    assert_eq!(tls.min_version, TlsVersion::V1_3);
    assert_eq!(tls.alpn, vec!["mqtt".to_owned()]);
    assert_eq!(tls.handshake_timeout, Duration::from_secs(3));
    assert_eq!(tls.client_auth, ClientAuth::Required);
    assert_eq!(tls.client_ca, Some(PathBuf::from("/etc/bulwark/ca.pem")));
    assert_eq!(tls.crl, vec![PathBuf::from("/etc/bulwark/revoked.crl")]);
    assert_eq!(tls.identity, IdentitySource::SanUri);
    assert!(tls.identity_as_client_id);
    assert_eq!(tls.sni.len(), 1);
}

#[test]
fn listener_mistakes_are_explained() {
    let text = r#"
            [[listener]]
            kind = "quic"
            bind = "127.0.0.1:1"
            [[listener]]
            bind = "127.0.0.1:2"
            [listener.tls]
            cert = "a"
            [[listener]]
            kind = "tls"
            bind = "127.0.0.1:3"
            [listener.tls]
            cert = "a"
            min_version = "1.0"
            client_auth = "maybe"
            colour = 1
            [[listener]]
            bind = "10.0.0.1:1883"
            [[listener]]
            kind = "tls"
            bind = "10.0.0.1:8883"
            [listener.tls]
            cert = "a"
            key = "b"
        "#;
    let err = parse(&open(text), "test").unwrap_err();
    let all = err.problems.join("\n");
    for expected in [
        "listener[0].kind = \"quic\": expected \"tcp\", \"tls\", \"ws\" or \"wss\"",
        "listener[1].tls: only a listener with kind = \"tls\" or \"wss\" takes TLS settings",
        "listener[2].tls.key: missing",
        "listener[2].tls.min_version = \"1.0\"",
        "listener[2].tls.client_auth = \"maybe\"",
        "listener[2].tls.colour: unknown key",
        "a tcp listener on a non-loopback address sends credentials",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
}

#[test]
fn websocket_and_proxy_settings_are_read() {
    let text = r#"
            [[listener]]
            kind = "ws"
            bind = "127.0.0.1:8080"
            proxy_protocol = true
            trusted_proxies = ["10.0.0.0/8", "::1"]
            max_connections = 500
            [listener.websocket]
            path = "/mqtt-ws"
            allowed_origins = ["https://app.example"]
            max_frame_size = 65536
            [[listener]]
            kind = "wss"
            bind = "127.0.0.1:8443"
            [listener.tls]
            cert = "c.pem"
            key = "k.pem"
            [[listener]]
            bind = "127.0.0.1:1883"
            trusted_proxies = ["10.0.0.0/8"]
            [[listener]]
            bind = "127.0.0.1:1884"
            proxy_protocol = true
            trusted_proxies = ["10.0.0.0/33"]
            [[listener]]
            bind = "127.0.0.1:1885"
            [listener.websocket]
            path = "/x"
        "#;
    let err = parse(&open(text), "test").unwrap_err();
    let all = err.problems.join("\n");
    for expected in [
        "listener[2].trusted_proxies is set but proxy_protocol is not true",
        "listener[3].trusted_proxies: ",
        "10.0.0.0/33",
        "listener[4].websocket: only a listener with kind = \"ws\" or \"wss\"",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    assert_eq!(err.problems.len(), 3, "{all}");
    let good = text
        .split("[[listener]]\n            bind = \"127.0.0.1:1883\"")
        .next()
        .unwrap();
    let config = parse(&open(good), "test").unwrap();
    let ws = config.listeners.first().unwrap();
    let options = ws.kind.websocket().unwrap();
    assert_eq!(options.path, "/mqtt-ws");
    assert_eq!(
        options.allowed_origins,
        vec!["https://app.example".to_owned()]
    );
    assert_eq!(options.max_frame_size, 65536);
    assert_eq!(ws.max_connections, 500);
    let trusted = ws.proxy_protocol.as_ref().unwrap();
    assert!(trusted.contains("10.1.2.3".parse().unwrap()));
    assert!(!trusted.contains("192.168.0.1".parse().unwrap()));
    let wss = config.listeners.get(1).unwrap();
    assert_eq!(wss.kind.name(), "wss");
    assert_eq!(wss.kind.websocket().unwrap().path, "/mqtt");
    assert!(wss.kind.tls().is_some());
}

#[test]
fn acl_choices_are_read() {
    let config = parse(
        "[acl]\nfile = \"acl.toml\"\ndenied_publish = \"disconnect\"\n",
        "/etc/b/b.toml",
    )
    .unwrap();
    assert_eq!(config.acl.file, Some(PathBuf::from("/etc/b/acl.toml")));
    assert_eq!(config.broker.denied_publish, DeniedPublish::Disconnect);
    let err = parse(
        "[acl]\nfile = \"a\"\ndangerous_allow_all = true\ndenied_publish = \"ignore\"\n",
        "t",
    )
    .unwrap_err();
    let all = err.problems.join("\n");
    assert!(all.contains("not both"), "{all}");
    assert!(all.contains("acl.denied_publish = \"ignore\""), "{all}");
}

#[test]
fn the_login_backoff_exempt_list_is_read() {
    let config = parse(&open("[admission]\n"), "t").unwrap();
    assert_eq!(config.auth.guard.exempt.len(), 2, "loopback by default");
    let text = "[auth.backoff]\nexempt = [\"10.0.0.0/8\"]\n";
    let config = parse(&open(text), "t").unwrap();
    assert_eq!(config.auth.guard.exempt.len(), 1);
    let config = parse(&open("[auth.backoff]\nexempt = []\n"), "t").unwrap();
    assert!(config.auth.guard.exempt.is_empty());
    let err = parse(&open("[auth.backoff]\nexempt = [\"x\"]\n"), "t").unwrap_err();
    assert!(
        err.problems.join("\n").contains("auth.backoff.exempt"),
        "{err:?}"
    );
}

#[test]
fn admission_is_read() {
    let text =
        "[admission]\nmax_per_address = 7\nrate = 0\ncooldown = 3\nexempt = [\"10.0.0.0/8\"]\n";
    let config = parse(&open(text), "t").unwrap();
    let a = &config.admission;
    assert_eq!(a.max_per_address, 7);
    assert_eq!(a.rate, 0);
    assert_eq!(a.cooldown, Duration::from_secs(3));
    assert_eq!(a.exempt.len(), 1);
    let err = parse(
        &open("[admission]\nexempt = [\"10.0.0.0/40\"]\nburst = 0\nsize = 1\n"),
        "t",
    )
    .unwrap_err();
    let all = err.problems.join("\n");
    assert!(all.contains("admission.exempt"), "{all}");
    assert!(all.contains("admission.burst = 0"), "{all}");
    assert!(all.contains("admission.size"), "{all}");
}

#[test]
fn rates_are_read() {
    let text = "[rate]\nmessages_per_second = 50\n[[rate.override]]\ngroup = \"meters\"\nbytes_per_second = 100\nbytes_burst = 500\n";
    let config = parse(&open(text), "t").unwrap();
    assert_eq!(config.rates.default.messages_per_second, 50);
    assert_eq!(config.rates.default.messages_burst, 50, "a second's worth");
    let o = &config.rates.overrides[0];
    assert_eq!(o.groups, vec!["meters".to_owned()]);
    assert_eq!((o.limit.bytes_per_second, o.limit.bytes_burst), (100, 500));
    let err = parse(
        &open("[rate]\nspeed = 1\n[[rate.override]]\nuser = 5\n"),
        "t",
    )
    .unwrap_err();
    let all = err.problems.join("\n");
    assert!(all.contains("rate.speed: unknown key"), "{all}");
    assert!(all.contains("rate.override[0].user"), "{all}");
}

#[test]
fn bans_are_read() {
    let text =
        "[bans]\nfile = \"bans.toml\"\noffences = 3\nflaps = 0\nduration = 60\nexempt = []\n";
    let config = parse(&open(text), "/etc/b/b.toml").unwrap();
    let b = &config.bans;
    assert_eq!(b.file, Some(PathBuf::from("/etc/b/bans.toml")));
    assert_eq!((b.offences, b.flaps), (3, 0));
    assert_eq!(b.duration, Duration::from_secs(60));
    assert!(b.exempt.is_empty());
    let err = parse(&open("[bans]\nexempt = [\"x\"]\nwindow = 0\n"), "t").unwrap_err();
    let all = err.problems.join("\n");
    assert!(
        all.contains("bans.exempt") && all.contains("bans.window = 0"),
        "{all}"
    );
}

#[test]
fn the_admin_listener_is_off_unless_configured_and_stays_on_loopback() {
    assert_eq!(parse(&open(""), "t").unwrap().admin, None);
    let config = parse(&open("[admin]\n"), "/etc/b/b.toml").unwrap();
    let admin = config.admin.unwrap();
    assert_eq!(admin.bind, bulwark_server::AdminSettings::DEFAULT_BIND);
    assert_eq!(
        admin.tokens,
        PathBuf::from("bulwark-data/admin-tokens.toml")
    );
    assert_eq!(
        (admin.max_failures, admin.lockout),
        (10, Duration::from_secs(60))
    );
    let text =
        "[admin]\nbind = \"[::1]:8081\"\ntokens = \"t.toml\"\nmax_failures = 3\nlockout = 600\n";
    let admin = parse(&open(text), "/etc/b/b.toml").unwrap().admin.unwrap();
    assert_eq!(admin.bind, "[::1]:8081".parse::<SocketAddr>().unwrap());
    assert_eq!(admin.tokens, PathBuf::from("/etc/b/t.toml"));
    assert_eq!(
        (admin.max_failures, admin.lockout),
        (3, Duration::from_secs(600))
    );
    let text = "[admin]\nbind = \"0.0.0.0:9883\"\nmax_failures = 0\nlockot = 5\n";
    let all = parse(&open(text), "t").unwrap_err().problems.join("\n");
    for expected in [
        "admin.bind = \"0.0.0.0:9883\"",
        "loopback",
        "admin.max_failures",
        "lockot",
    ] {
        assert!(all.contains(expected), "{expected} not in {all}");
    }
}

#[test]
fn certificate_roles_need_verified_client_certificates_and_known_roles() {
    let text = "[admin]\n[admin.certificate_roles]\nscraper = \"viewer\"\nroot = \"owner\"\n\"\" = \"admin\"\n";
    let all = parse(&open(text), "t").unwrap_err().problems.join("\n");
    for expected in [
        "admin.certificate_roles.\"root\": unknown role",
        "admin.certificate_roles: an empty identity",
        "admin.certificate_roles needs [admin.tls] with client_auth",
    ] {
        assert!(all.contains(expected), "{expected} not in {all}");
    }
    let text = "[admin]\ncertificate_roles = 3\n";
    let all = parse(&open(text), "t").unwrap_err().problems.join("\n");
    assert!(all.contains("expected a table"), "{all}");
}

#[test]
fn bad_toml_names_the_file_line_and_column() {
    let err = parse("[limits\n", "bulwark.toml").unwrap_err();
    let first = err.problems.first().unwrap();
    assert!(
        first.starts_with("bulwark.toml:1:8: not valid TOML: unclosed table"),
        "{first}"
    );
    assert!(first.contains("1 | [limits"), "{first}");
    let err = parse(
            "[acl]\ndangerous_allow_all = true\n[[listener]]\nbind = \"127.0.0.1:1\"\nbind = \"127.0.0.1:2\"\n",
            "b.toml",
        )
        .unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    let first = err.problems.first().unwrap();
    assert!(
        first.starts_with("b.toml:5:1: not valid TOML: duplicate key `bind`"),
        "{first}"
    );
}

#[test]
fn unknown_keys_and_sections_get_a_suggestion() {
    let text = "[limts]\n[[listener]]\nbind = \"127.0.0.1:1\"\nkidn = \"tcp\"\n[limits]\nmax_packet_sise = 100\ncolour = 1\n";
    let err = parse(&open(text), "t").unwrap_err();
    let all = err.problems.join("\n");
    for expected in [
        "limts: unknown section or key; did you mean \"limits\"?",
        "listener[0].kidn: unknown key; did you mean \"kind\"?",
        "limits.max_packet_sise: unknown key; did you mean \"max_packet_size\"?",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    assert!(
        all.contains("limits.colour: unknown key\n") || all.ends_with("limits.colour: unknown key"),
        "{all}"
    );
}

#[test]
fn a_refused_listener_causes_no_follow_on_errors() {
    let err = parse(&open("[[listener]]\nbind = \"localhost:1885\"\n"), "t").unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    // Without any listener given, the default one serves; an empty list is still refused.
    let err = parse(&open("listener = []\n"), "t").unwrap_err();
    assert!(err.to_string().contains("at least one listener"), "{err}");
}

#[test]
fn bad_bind_addresses_are_explained() {
    for (bind, expected) in [
        ("localhost", "expected IP:PORT"),
        ("localhost:1885", "\"localhost\" is not an IP address"),
        ("127.0.0.1:99999", "port \"99999\" is not a port number"),
        ("127.0.0.1", "the port is missing"),
        ("::1", "the port is missing"),
        ("[::1]", "the port is missing"),
        ("", "expected IP:PORT"),
        (":1883", "the address before the port is missing"),
        ("fe80::1:1883", "takes brackets"),
        ("127.0.0.1:port", "not a port number"),
    ] {
        let err = parse_bind(bind).unwrap_err();
        assert!(err.contains(expected), "{bind}: {err}");
    }
    assert_eq!(
        parse_bind("[::1]:1883").unwrap(),
        "[::1]:1883".parse::<SocketAddr>().unwrap()
    );
    let err = parse(&open("[[listener]]\nbind = \"localhost\"\n"), "t").unwrap_err();
    assert!(err.to_string().contains("expected IP:PORT"), "{err}");
}

/// `S::KEYS` and the struct's serde names agree: a table holding every declared key leaves
/// nothing unknown.
fn declared_keys_are_read<S: fields::Section + serde::de::DeserializeOwned>() {
    let mut table = Table::new();
    for key in S::KEYS {
        table.insert((*key).to_owned(), Value::Boolean(true));
    }
    let section = S::deserialize(Value::Table(table)).unwrap();
    assert!(section.unknown().is_empty(), "{:?}", section.unknown());
}

#[test]
fn every_declared_key_is_a_field() {
    declared_keys_are_read::<ConfigFile>();
    declared_keys_are_read::<listeners::ListenerSection>();
    declared_keys_are_read::<listeners::TlsSection>();
    declared_keys_are_read::<listeners::SniSection>();
    declared_keys_are_read::<listeners::WebSocketSection>();
    declared_keys_are_read::<auth::AuthSection>();
    declared_keys_are_read::<auth::BackoffSection>();
    declared_keys_are_read::<auth::JwtSection>();
    declared_keys_are_read::<auth::AclSection>();
    declared_keys_are_read::<limits::LimitsSection>();
    declared_keys_are_read::<limits::MqttSection>();
    declared_keys_are_read::<limits::SysSection>();
    declared_keys_are_read::<limits::ServerSection>();
    declared_keys_are_read::<limits::StorageSection>();
    declared_keys_are_read::<limits::AdmissionSection>();
    declared_keys_are_read::<limits::BansSection>();
    declared_keys_are_read::<limits::RateSection>();
    declared_keys_are_read::<limits::RateOverrideSection>();
    assert!(<limits::RateSection as fields::Section>::KEYS.contains(&"override"));
}

#[test]
fn values_of_the_wrong_shape_are_reported_with_the_rest() {
    let text = "sys = 1\n[auth]\njwt = \"yes\"\nbackoff = []\n[limits]\nconnect_timeout = 1979-05-27\nqueue_full = 3\n[storage]\nkind = \"tape\"\n[rate]\noverride = 1\n[[listener]]\nbind = \"127.0.0.1:1\"\nname = 1979-05-27\n";
    let err = parse(&open(text), "t").unwrap_err();
    let all = err.problems.join("\n");
    for expected in [
        "[sys]: expected a table, found the integer 1",
        "auth.jwt: expected a table, found the string \"yes\"",
        "auth.backoff: expected a table, found an array",
        "limits.connect_timeout: expected a non-negative integer, found the date 1979-05-27",
        "limits.queue_full: expected a string, found the integer 3",
        "listener[0].name: expected a string, found the date 1979-05-27",
        "storage.kind = \"tape\": use \"disk\" or \"memory\"",
        "rate.override: expected [[rate.override]] tables, found the integer 1",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    assert_eq!(err.problems.len(), 8, "{all}");
    let err = parse(&open("listener = 5\n"), "t").unwrap_err();
    assert!(
        err.to_string()
            .contains("listener: expected [[listener]] tables"),
        "{err}"
    );
}

// ----- [detect] ------------------------------------------------------------------------------

#[test]
fn detect_rules_replace_built_ins_add_their_own_or_stand_alone() {
    use bulwark_limits::detect::{DetectSettings, MAX_TRACKED, Per, Response, RuleKind};
    // Without [detect]: the built-in rules, record and metric only.
    let config = parse(&open(""), "t").unwrap();
    assert_eq!(config.detect.rules, DetectSettings::builtin());
    assert_eq!(config.detect.max_tracked, MAX_TRACKED);
    assert!(
        config
            .detect
            .rules
            .iter()
            .all(|r| r.responses == [Response::Event, Response::Metric])
    );

    // A rule named like a built-in one replaces it, in its place; another is added.
    let text = r#"
[detect]
max_tracked = 500

[[detect.rule]]
name = "failed-logins"
kind = "failed_logins"
per = "network"
window = 30
threshold = 5
respond = ["metric", "ban"]
duration = 900

[[detect.rule]]
name = "scanner"
kind = "acl_denials"
respond = ["disconnect", "event", "disconnect"]
"#;
    let config = parse(&open(text), "t").unwrap();
    let rules = &config.detect.rules;
    assert_eq!(config.detect.max_tracked, 500);
    assert_eq!(rules.len(), DetectSettings::builtin().len() + 1);
    let replaced = rules
        .iter()
        .position(|r| r.name == "failed-logins")
        .unwrap();
    let builtin_at = DetectSettings::builtin()
        .iter()
        .position(|r| r.name == "failed-logins")
        .unwrap();
    assert_eq!(replaced, builtin_at);
    let r = &rules[replaced];
    assert_eq!((r.kind, r.per), (RuleKind::FailedLogins, Per::Network));
    assert_eq!(r.window, Duration::from_secs(30));
    assert_eq!(r.threshold, 5);
    // An event is always recorded, listed or not, and it comes first.
    assert_eq!(
        r.responses,
        [Response::Event, Response::Metric, Response::Ban]
    );
    assert_eq!(r.duration, Duration::from_secs(900));
    // The new rule: `per` and the window and threshold by kind; a response listed twice once.
    let scanner = rules.last().unwrap();
    assert_eq!(scanner.name, "scanner");
    assert_eq!(
        (scanner.kind, scanner.per),
        (RuleKind::AclDenials, Per::User)
    );
    assert_eq!(scanner.window, Duration::from_secs(60));
    assert_eq!(scanner.threshold, 10);
    assert_eq!(scanner.responses, [Response::Event, Response::Disconnect]);
    // The other built-ins are untouched.
    for builtin in DetectSettings::builtin() {
        if builtin.name != "failed-logins" {
            assert!(rules.contains(&builtin), "{}", builtin.name);
        }
    }

    // `builtin = false`: only the file's rules; `per` defaults by kind.
    let text = r#"
[detect]
builtin = false

[[detect.rule]]
name = "burst"
kind = "message_rate"
factor = 4
warmup = 2

[[detect.rule]]
name = "abuse"
kind = "protocol_violations"

[[detect.rule]]
name = "hash"
kind = "root_wildcard"
max_depth = 2
"#;
    let config = parse(&open(text), "t").unwrap();
    let rules = &config.detect.rules;
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["burst", "abuse", "hash"]);
    assert_eq!(rules[0].per, Per::ClientId);
    assert_eq!((rules[0].factor, rules[0].warmup), (4, 2));
    assert_eq!(rules[1].per, Per::Network);
    assert_eq!(rules[2].per, Per::User);
    assert_eq!(rules[2].max_depth, 2);

    // `builtin = false` and no rule: no rules at all (the broker runs no detection task).
    let config = parse(&open("[detect]\nbuiltin = false\n"), "t").unwrap();
    assert!(config.detect.rules.is_empty());
}

#[test]
fn detect_mistakes_are_named_with_the_rule_and_the_key() {
    let text = r#"
[detect]
builtin = "yes"
max_tracked = 0
colour = "red"

[[detect.rule]]
name = "a"
kind = "password_spray"

[[detect.rule]]
name = "b"
kind = "failed_logins"
per = "tenant"

[[detect.rule]]
name = "c"
kind = "acl_denials"
respond = ["event", "shout"]
window = 0
thresold = 3

[[detect.rule]]
kind = "acl_denials"

[[detect.rule]]
name = "e"

[[detect.rule]]
name = "f g"
kind = "acl_denials"
"#;
    let err = parse(&open(text), "t").unwrap_err();
    let all = err.problems.join("\n");
    for expected in [
        "detect.builtin: expected true or false, found the string \"yes\"",
        "detect.max_tracked = 0: must be between 1 and 10000000",
        "detect.colour: unknown key",
        "detect.rule[0].kind = \"password_spray\": one of failed_logins, acl_denials, \
         protocol_violations, message_rate, message_size, shared_credential, \
         client_id_flapping, root_wildcard",
        "detect.rule[1].per = \"tenant\": one of user, client_id, certificate, network",
        "detect.rule[2].respond: \"shout\" is not one of event, metric, throttle, quarantine, \
         disconnect, ban",
        "detect.rule[2].window = 0: must be between 1 and 604800",
        "detect.rule[2].thresold: unknown key; did you mean \"threshold\"?",
        "detect.rule[3].name: every rule needs a name",
        "detect.rule[4].kind: needed (one of failed_logins,",
        "rule \"f g\": a name is letters, digits, '-' and '_'",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
}

#[test]
fn detect_refuses_acting_on_a_claimed_identity_and_other_misuses() {
    let rule = |kind: &str, per: &str, respond: &str| {
        format!(
            "[[detect.rule]]\nname = \"r\"\nkind = \"{kind}\"\nper = \"{per}\"\nrespond = {respond}\n"
        )
    };
    // A failed login's username or client id is only claimed: acting on it would let anyone
    // lock that user out.
    for (per, respond) in [
        ("user", "ban"),
        ("user", "disconnect"),
        ("client_id", "ban"),
        ("certificate", "disconnect"),
    ] {
        let text = rule("failed_logins", per, &format!("[\"{respond}\"]"));
        let err = parse(&open(&text), "t").unwrap_err();
        let expected = format!(
            "detect: rule \"r\": a failed login's {per} is only claimed, so \"{respond}\" would \
             let anyone lock that {per} out; count failed logins per network to act on them"
        );
        assert!(
            err.problems.contains(&expected),
            "{per} {respond}: {:#?}",
            err.problems
        );
    }
    // Recording and counting a claimed username is fine; acting on a network is too.
    let text = rule("failed_logins", "user", "[\"event\", \"metric\"]");
    parse(&open(&text), "t").unwrap();
    let text = rule("failed_logins", "network", "[\"ban\", \"disconnect\"]");
    parse(&open(&text), "t").unwrap();

    for (text, expected) in [
        (
            rule("acl_denials", "certificate", "[\"ban\"]"),
            "detect: rule \"r\": a ban cannot name a certificate",
        ),
        (
            rule("shared_credential", "network", "[\"event\"]"),
            "detect: rule \"r\": shared_credential counts per user or per certificate",
        ),
        (
            rule("client_id_flapping", "network", "[\"event\"]"),
            "detect: rule \"r\": client_id_flapping counts per client_id, user or certificate",
        ),
        (
            rule("acl_denials", "user", "[\"quarantine\"]"),
            "detect: rule \"r\": quarantine needs quarantine_group",
        ),
    ] {
        let err = parse(&open(&text), "t").unwrap_err();
        assert!(
            err.problems.iter().any(|p| p.starts_with(expected)),
            "missing {expected:?} in {:#?}",
            err.problems
        );
    }
}

/// Two `[[detect.rule]]` tables with one name: a copy-and-paste mistake that must not pass
/// silently (the second would replace the first, which then never runs).
#[test]
fn detect_two_rules_of_one_name_are_refused() {
    let text = r#"
[[detect.rule]]
name = "scanner"
kind = "acl_denials"
threshold = 5

[[detect.rule]]
name = "scanner"
kind = "root_wildcard"
"#;
    let err = parse(&open(text), "t").unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p.contains("scanner") && p.contains("two rules have this name")),
        "{:#?}",
        err.problems
    );
    // Replacing a built-in rule once is what a rule of its name is for.
    let text = "[[detect.rule]]\nname = \"topic-scan\"\nkind = \"acl_denials\"\nthreshold = 3\n";
    let config = parse(&open(text), "t").unwrap();
    let scan: Vec<_> = config
        .detect
        .rules
        .iter()
        .filter(|r| r.name == "topic-scan")
        .collect();
    assert_eq!(scan.len(), 1);
    assert_eq!(scan[0].threshold, 3);
}
