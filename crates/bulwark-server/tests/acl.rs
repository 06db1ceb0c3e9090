//! Authorization end to end: a password store, an ACL file and the audit file in a temporary
//! directory, real sockets on 127.0.0.1, and a raw client for exact reason codes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bulwark_auth::password::{Argon2Params, PasswordStore, hash_password};
use bulwark_core::DeniedPublish;
use bulwark_proto::{
    ConnectProperties, Packet, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions, Will,
    WillProperties,
};
use bulwark_server::{JwtAuthSettings, ServerConfig};
use bytes::Bytes;
use common::{QUIET, Raw, Recv, TestServer, connect_packet, string, topic};

const PASSWORD: &str = "violet-Harbour-lantern-93";
const HMAC_SECRET: &str = "an HMAC secret of more than thirty-two bytes, for tests";

/// The seed patterns of the ACL, and a deny that beats every allow.
const RULES: &str = r##"
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
topics = ["actuator/#", "sensor/#"]

[[rule]]
permission = "allow"
action = "all"
group = "admins"
topics = ["admin/#", "#", "$SYS/#"]

[[rule]]
permission = "allow"
action = "all"
user = "east1"
topic = "region/us-east/#"

[[rule]]
permission = "deny"
action = "all"
topic = "sensor/secret/#"
"##;

/// Users: alice (readers), bob (controllers), root (admins), dave and east1 (no groups).
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(common::unique("bulwark-acl"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = PasswordStore::new();
        // One hash for everybody: hashing is the slow part of the fixture.
        let hash = hash_password(PASSWORD, &Argon2Params::default()).unwrap();
        for (name, groups) in [
            ("alice", vec!["readers"]),
            ("bob", vec!["controllers"]),
            ("root", vec!["admins"]),
            ("dave", vec![]),
            ("east1", vec![]),
        ] {
            let groups = groups.into_iter().map(str::to_owned).collect();
            store.add(name, &hash, groups).unwrap();
        }
        bulwark_server::files::save_store(&dir.join("passwords.toml"), &store).unwrap();
        std::fs::write(dir.join("hmac.secret"), HMAC_SECRET).unwrap();
        let fixture = Self { dir };
        fixture.write_rules(RULES);
        fixture
    }

    fn acl_path(&self) -> PathBuf {
        self.dir.join("acl.toml")
    }

    /// Replaces the ACL file (a new modification time, so the watcher sees it).
    fn write_rules(&self, text: &str) {
        let tmp = self.dir.join("acl.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.acl_path()).unwrap();
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Waits for an audit event of `kind` about `topic`.
    async fn wait_event(&self, kind: &str, topic: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(event) = self
                .events()
                .into_iter()
                .find(|e| e["kind"] == kind && e["topic"] == topic)
            {
                return event;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} event for {topic} in {:#?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn apply(&self, config: &mut ServerConfig) {
        config.auth.password_file = Some(self.dir.join("passwords.toml"));
        config.auth.audit_file = Some(self.dir.join("audit.jsonl"));
        config.acl.file = Some(self.acl_path());
        config.tls_watch_interval = Duration::from_millis(100);
    }

    async fn start(&self) -> TestServer {
        self.start_with(|_| {}).await
    }

    async fn start_with(&self, adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        common::start_secure_with(|c| {
            self.apply(c);
            adjust(c);
        })
        .await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn login(version: ProtocolVersion, user: &str, client_id: &str) -> bulwark_proto::Connect {
    let mut connect = connect_packet(version, client_id);
    connect.username = Some(string(user));
    connect.password = Some(Bytes::from(PASSWORD));
    connect
}

async fn connect_as(
    server: &TestServer,
    version: ProtocolVersion,
    user: &str,
    client_id: &str,
) -> Raw {
    let (raw, ack) = Raw::connect(server.addr, &login(version, user, client_id)).await;
    assert_eq!(
        ack.reason_code,
        ReasonCode::Success,
        "{user}/{client_id}: {ack:?}"
    );
    raw
}

/// The SUBACK code of one filter at QoS 1.
async fn sub_code(raw: &mut Raw, packet_id: u16, filter: &str) -> ReasonCode {
    let ack = raw
        .subscribe(
            packet_id,
            filter,
            SubscriptionOptions::qos(QoS::AtLeastOnce),
            None,
        )
        .await;
    ack.reason_codes[0]
}

/// Publishes at QoS 1 and returns the PUBACK's code.
async fn pub_code(raw: &mut Raw, packet_id: u16, topic_name: &str) -> ReasonCode {
    raw.send(&common::publish(
        topic_name,
        QoS::AtLeastOnce,
        packet_id,
        b"x",
    ))
    .await;
    loop {
        match raw.recv().await {
            Packet::PubAck(ack) => {
                assert_eq!(ack.packet_id, common::pid(packet_id));
                return ack.reason_code;
            }
            Packet::Publish(_) => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

fn allowed(code: ReasonCode) -> bool {
    matches!(
        code,
        ReasonCode::Success | ReasonCode::NoMatchingSubscribers
    )
}

#[tokio::test]
async fn the_seed_patterns_decide_as_written() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    let v5 = ProtocolVersion::V5;

    let mut dev = connect_as(&server, v5, "dave", "dev-1").await;
    assert!(allowed(pub_code(&mut dev, 1, "devices/dev-1/temp").await));
    assert_eq!(
        pub_code(&mut dev, 2, "devices/dev-2/temp").await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        sub_code(&mut dev, 3, "devices/dev-1/#").await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(
        sub_code(&mut dev, 4, "devices/#").await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        sub_code(&mut dev, 5, "sensor/#").await,
        ReasonCode::NotAuthorized
    );

    let mut reader = connect_as(&server, v5, "alice", "alice-1").await;
    assert_eq!(
        sub_code(&mut reader, 1, "sensor/open/#").await,
        ReasonCode::GrantedQoS1
    );
    // sensor/# also reaches sensor/secret/#, which a deny rule keeps from everybody: granted,
    // with that subtree carved out; sensor/secret/# itself is refused.
    assert_eq!(
        sub_code(&mut reader, 2, "sensor/#").await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(
        sub_code(&mut reader, 5, "sensor/secret/#").await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        pub_code(&mut reader, 3, "sensor/open/t").await,
        ReasonCode::NotAuthorized
    );

    let mut controller = connect_as(&server, v5, "bob", "bob-1").await;
    assert!(allowed(
        pub_code(&mut controller, 1, "actuator/valve").await
    ));
    assert_eq!(
        sub_code(&mut controller, 2, "actuator/#").await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        pub_code(&mut controller, 3, "sensor/open/t").await,
        ReasonCode::Success
    );
    let got = reader.recv_publish().await;
    assert_eq!(got.topic.as_str(), "sensor/open/t");
    assert_eq!(
        pub_code(&mut controller, 4, "sensor/secret/key").await,
        ReasonCode::NotAuthorized,
        "a deny beats an allow"
    );

    let mut admin = connect_as(&server, v5, "root", "root-1").await;
    assert_eq!(
        sub_code(&mut admin, 1, "admin/#").await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(
        sub_code(&mut admin, 2, "$SYS/#").await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(sub_code(&mut admin, 3, "#").await, ReasonCode::GrantedQoS1);
    assert!(allowed(pub_code(&mut admin, 4, "admin/cmd").await));

    let mut east = connect_as(&server, v5, "east1", "east-1").await;
    assert_eq!(
        sub_code(&mut east, 1, "region/us-east/#").await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(
        sub_code(&mut east, 2, "region/#").await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        sub_code(&mut dev, 6, "region/us-east/#").await,
        ReasonCode::NotAuthorized
    );

    let event = fixture.wait_event("acl_denied", "devices/dev-2/temp").await;
    assert_eq!(event["action"], "publish");
    assert_eq!(event["username"], "dave");
    assert_eq!(event["client_id"], "dev-1");
    assert!(
        event["reason"]
            .as_str()
            .unwrap()
            .contains("no rule allows it"),
        "{event}"
    );
    let event = fixture.wait_event("acl_denied", "sensor/secret/#").await;
    assert_eq!(event["action"], "subscribe");
    assert!(
        event["reason"].as_str().unwrap().contains("acl.toml:"),
        "{event}"
    );
    server.stop().await;
}

#[tokio::test]
async fn client_ids_cannot_widen_template_rules() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    for id in ["+", "#", "a/b", "V/evil", ".*"] {
        let mut raw = connect_as(&server, ProtocolVersion::V5, "dave", id).await;
        for (i, filter) in [
            "devices/+/#",
            "devices/#",
            "devices/a/b/#",
            "devices/V/evil/#",
        ]
        .into_iter()
        .enumerate()
        {
            let code = sub_code(&mut raw, u16::try_from(i + 1).unwrap(), filter).await;
            assert_eq!(code, ReasonCode::NotAuthorized, "id {id:?} filter {filter}");
        }
        for (i, name) in ["devices/a/b/x", "devices/V/evil/x", "devices/x/y"]
            .into_iter()
            .enumerate()
        {
            let code = pub_code(&mut raw, u16::try_from(i + 10).unwrap(), name).await;
            assert_eq!(code, ReasonCode::NotAuthorized, "id {id:?} topic {name}");
        }
        if id == ".*" {
            // Substituted literally, never as a pattern.
            assert!(allowed(pub_code(&mut raw, 20, "devices/.*/x").await));
        }
        raw.send(&bulwark_proto::Disconnect::new(ReasonCode::Success))
            .await;
    }
    server.stop().await;
}

#[tokio::test]
async fn retained_messages_and_wills_do_not_leak_across_users() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    let v5 = ProtocolVersion::V5;
    let mut victim = connect_as(&server, v5, "dave", "victim").await;
    let mut retained = common::publish("devices/victim/state", QoS::AtLeastOnce, 1, b"secret");
    retained.retain = true;
    victim.send(&retained).await;
    assert!(matches!(victim.recv().await, Packet::PubAck(_)));

    let mut attacker = connect_as(&server, v5, "dave", "attacker").await;
    for (i, filter) in [
        "devices/victim/state",
        "devices/+/state",
        "devices/victim/#",
    ]
    .into_iter()
    .enumerate()
    {
        let code = sub_code(&mut attacker, u16::try_from(i + 1).unwrap(), filter).await;
        assert_eq!(code, ReasonCode::NotAuthorized, "{filter}");
    }
    attacker.expect_no_publish(QUIET).await;

    // A will aimed at another client's topic is refused at CONNECT, in both versions.
    for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let mut connect = login(version, "bob", "attacker-2");
        connect.will = Some(Will {
            topic: topic("devices/victim/cmd"),
            payload: Bytes::from_static(b"open"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: WillProperties::default(),
        });
        let (_raw, ack) = Raw::connect(server.addr, &connect).await;
        assert_eq!(
            ack.reason_code,
            ReasonCode::NotAuthorized,
            "{version:?}: {ack:?}"
        );
    }
    let event = fixture.wait_event("acl_denied", "devices/victim/cmd").await;
    assert_eq!(event["action"], "will");

    // The victim's own retained message still reaches the victim.
    let mut again = connect_as(&server, v5, "dave", "victim-2").await;
    assert_eq!(
        sub_code(&mut again, 1, "devices/victim/#").await,
        ReasonCode::NotAuthorized
    );
    victim
        .subscribe(
            2,
            "devices/victim/#",
            SubscriptionOptions::qos(QoS::AtLeastOnce),
            None,
        )
        .await;
    assert_eq!(victim.recv_publish().await.payload.as_ref(), b"secret");
    server.stop().await;
}

#[tokio::test]
async fn share_sys_and_hash_need_rules_that_allow_them() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    let mut dave = connect_as(&server, ProtocolVersion::V5, "dave", "d-share").await;
    for (i, filter) in [
        "$share/g/sensor/#",
        "$share/g/devices/#",
        "$share/g/devices/other/#",
        "$SYS/#",
        "$SYS/broker/uptime",
        "#",
        "+/#",
        "$share/g/$SYS/#",
    ]
    .into_iter()
    .enumerate()
    {
        let code = sub_code(&mut dave, u16::try_from(i + 1).unwrap(), filter).await;
        assert_eq!(code, ReasonCode::NotAuthorized, "{filter}");
    }
    assert_eq!(
        sub_code(&mut dave, 20, "$share/g/devices/d-share/#").await,
        ReasonCode::GrantedQoS1
    );
    let mut admin = connect_as(&server, ProtocolVersion::V5, "root", "r-share").await;
    assert_eq!(
        sub_code(&mut admin, 1, "$share/ops/$SYS/#").await,
        ReasonCode::GrantedQoS1
    );
    server.stop().await;
}

#[tokio::test]
async fn another_user_neither_takes_over_nor_resumes_a_client_id() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    let v5 = ProtocolVersion::V5;
    let persistent = |user: &str| {
        let mut connect = login(v5, user, "shared-id");
        connect.clean_start = false;
        connect.properties = ConnectProperties {
            session_expiry_interval: Some(300),
            ..ConnectProperties::default()
        };
        connect
    };
    let (mut alice, ack) = Raw::connect(server.addr, &persistent("alice")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(
        sub_code(&mut alice, 1, "sensor/open/#").await,
        ReasonCode::GrantedQoS1
    );

    let (mut thief, ack) = Raw::connect(server.addr, &persistent("bob")).await;
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized, "{ack:?}");
    assert!(matches!(thief.recv_within(QUIET).await, Recv::Closed));
    // Alice's connection is untouched.
    alice.send(&Packet::PingReq).await;
    assert!(matches!(alice.recv().await, Packet::PingResp));

    alice
        .send(&bulwark_proto::Disconnect::new(ReasonCode::Success))
        .await;
    assert!(matches!(
        alice.recv_within(Duration::from_secs(2)).await,
        Recv::Closed
    ));
    let (_thief, ack) = Raw::connect(server.addr, &persistent("bob")).await;
    assert_eq!(
        ack.reason_code,
        ReasonCode::NotAuthorized,
        "resume refused: {ack:?}"
    );
    let (_alice, ack) = Raw::connect(server.addr, &persistent("alice")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.session_present, "alice's session survived: {ack:?}");

    // The audit file is written by its own thread: wait for both refusals to reach it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let events = loop {
        let events = fixture.events();
        let count = events
            .iter()
            .filter(|e| e["kind"] == "client_id_refused")
            .count();
        if count >= 2 || Instant::now() >= deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "client_id_refused")
        .collect();
    assert_eq!(refused.len(), 2, "{events:#?}");
    assert_eq!(refused[0]["username"], "bob");
    assert_eq!(refused[0]["client_id"], "shared-id");
    server.stop().await;
}

#[tokio::test]
async fn a_reload_removes_live_subscriptions_and_changes_publish_rights_at_once() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    let v5 = ProtocolVersion::V5;
    let mut alice = connect_as(&server, v5, "alice", "alice-r").await;
    assert_eq!(
        sub_code(&mut alice, 1, "sensor/open/#").await,
        ReasonCode::GrantedQoS1
    );
    let mut bob = connect_as(&server, v5, "bob", "bob-r").await;
    assert_eq!(
        pub_code(&mut bob, 1, "sensor/open/a").await,
        ReasonCode::Success
    );
    assert_eq!(alice.recv_publish().await.topic.as_str(), "sensor/open/a");

    // Readers lose sensor/#, controllers may publish only to actuator/#.
    let rules = RULES
        .replace(
            "action = \"subscribe\"\ngroup = \"readers\"\ntopic = \"sensor/#\"",
            "action = \"subscribe\"\ngroup = \"readers\"\ntopic = \"elsewhere/#\"",
        )
        .replace(
            "topics = [\"actuator/#\", \"sensor/#\"]",
            "topics = [\"actuator/#\"]",
        );
    assert_ne!(rules, RULES);
    fixture.write_rules(&rules);
    let event = fixture
        .wait_event("subscription_revoked", "sensor/open/#")
        .await;
    assert_eq!(event["username"], "alice");

    // The same topic as before the reload: nothing remembered outlives the rules.
    assert_eq!(
        pub_code(&mut bob, 2, "sensor/open/a").await,
        ReasonCode::NotAuthorized
    );
    assert!(allowed(pub_code(&mut bob, 3, "actuator/x").await));
    alice.expect_no_publish(QUIET).await;
    assert_eq!(
        sub_code(&mut alice, 2, "sensor/open/#").await,
        ReasonCode::NotAuthorized
    );

    // A file with a mistake keeps the rules in force.
    fixture.write_rules("[[rule]]\npermission = \"perhaps\"\n");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        pub_code(&mut bob, 4, "sensor/open/c").await,
        ReasonCode::NotAuthorized
    );
    assert!(allowed(pub_code(&mut bob, 5, "actuator/y").await));
    server.stop().await;
}

#[tokio::test]
async fn a_will_is_checked_again_when_it_is_published() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    let v5 = ProtocolVersion::V5;
    let mut admin = connect_as(&server, v5, "root", "root-w").await;
    assert_eq!(
        sub_code(&mut admin, 1, "devices/+/status").await,
        ReasonCode::GrantedQoS1
    );

    let mut connect = login(v5, "dave", "dev-w");
    connect.will = Some(Will {
        topic: topic("devices/dev-w/status"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    });
    let (dev, ack) = Raw::connect(server.addr, &connect).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    // A canary subscription whose removal tells that the reload is in force.
    let mut canary = connect_as(&server, v5, "alice", "canary").await;
    assert_eq!(
        sub_code(&mut canary, 1, "sensor/open/#").await,
        ReasonCode::GrantedQoS1
    );

    let rules = RULES
        .replace(
            "topic = \"devices/{client_id}/#\"",
            "topic = \"nothing/{client_id}/#\"",
        )
        .replace("topic = \"sensor/#\"", "topic = \"elsewhere/#\"");
    fixture.write_rules(&rules);
    fixture
        .wait_event("subscription_revoked", "sensor/open/#")
        .await;
    drop(dev);
    let event = fixture
        .wait_event("acl_denied", "devices/dev-w/status")
        .await;
    assert_eq!(event["action"], "will");
    admin.expect_no_publish(QUIET).await;
    server.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_1_denials_are_dropped_or_disconnect() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    let v3 = ProtocolVersion::V3_1_1;
    let mut reader = connect_as(&server, v3, "alice", "alice-3").await;
    let ack = reader
        .subscribe(
            1,
            "sensor/secret/#",
            SubscriptionOptions::qos(QoS::AtLeastOnce),
            None,
        )
        .await;
    assert_eq!(ack.reason_codes[0].as_u8(), 0x80, "{ack:?}");
    assert_eq!(sub_code(&mut reader, 2, "sensor/open/#").await.as_u8(), 1);
    // A denied QoS 1 publish is acknowledged (3.1.1 has no way to refuse) and dropped.
    let mut dave = connect_as(&server, v3, "dave", "dave-3").await;
    assert_eq!(
        pub_code(&mut dave, 1, "sensor/open/x").await,
        ReasonCode::Success
    );
    reader.expect_no_publish(QUIET).await;
    server.stop().await;

    let server = fixture
        .start_with(|c| c.broker.denied_publish = DeniedPublish::Disconnect)
        .await;
    let mut dave = connect_as(&server, v3, "dave", "dave-3d").await;
    dave.send(&common::publish("sensor/open/x", QoS::AtMostOnce, 0, b"x"))
        .await;
    assert!(matches!(
        dave.recv_within(Duration::from_secs(2)).await,
        Recv::Closed
    ));
    let mut dave5 = connect_as(&server, ProtocolVersion::V5, "dave", "dave-5d").await;
    dave5
        .send(&common::publish("sensor/open/x", QoS::AtMostOnce, 0, b"x"))
        .await;
    dave5.expect_disconnect(ReasonCode::NotAuthorized).await;
    server.stop().await;
}

#[tokio::test]
async fn a_token_acl_claim_adds_rules_for_its_connection() {
    let fixture = Fixture::new();
    let settings = JwtAuthSettings {
        hmac_secret_file: Some(fixture.dir.join("hmac.secret")),
        acl_claim: Some("acl".to_owned()),
        ..JwtAuthSettings::default()
    };
    let server = fixture.start_with(|c| c.auth.jwt = Some(settings)).await;
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({
        "sub": "tok", "exp": exp,
        "acl": {"publish": ["telemetry/{username}/#"], "subscribe": ["cmd/{client_id}"]},
    });
    let key = jsonwebtoken::EncodingKey::from_secret(HMAC_SECRET.as_bytes()).unwrap();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )
    .unwrap();
    let mut connect = connect_packet(ProtocolVersion::V5, "tok-1");
    connect.username = Some(string("tok"));
    connect.password = Some(Bytes::from(token));
    let (mut raw, ack) = Raw::connect(server.addr, &connect).await;
    assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
    assert!(allowed(pub_code(&mut raw, 1, "telemetry/tok/a").await));
    assert_eq!(
        pub_code(&mut raw, 2, "telemetry/other/a").await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        sub_code(&mut raw, 3, "cmd/tok-1").await,
        ReasonCode::GrantedQoS1
    );
    assert_eq!(
        sub_code(&mut raw, 4, "cmd/#").await,
        ReasonCode::NotAuthorized
    );
    // The file's rules still apply, and its deny beats the claim.
    assert!(allowed(pub_code(&mut raw, 5, "devices/tok-1/x").await));

    let bad = serde_json::json!({"sub": "tok", "exp": exp, "acl": {"write": ["x"]}});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &bad,
        &key,
    )
    .unwrap();
    connect.password = Some(Bytes::from(token));
    let (_raw, ack) = Raw::connect(server.addr, &connect).await;
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized, "{ack:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_resumed_session_keeps_only_what_the_rules_now_allow() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    let v5 = ProtocolVersion::V5;
    let persistent = || {
        let mut connect = login(v5, "alice", "alice-p");
        connect.clean_start = false;
        connect.properties = ConnectProperties {
            session_expiry_interval: Some(300),
            ..ConnectProperties::default()
        };
        connect
    };
    let (mut alice, _) = Raw::connect(server.addr, &persistent()).await;
    assert_eq!(
        sub_code(&mut alice, 1, "sensor/open/#").await,
        ReasonCode::GrantedQoS1
    );
    alice
        .send(&bulwark_proto::Disconnect::new(ReasonCode::Success))
        .await;
    assert!(matches!(
        alice.recv_within(Duration::from_secs(2)).await,
        Recv::Closed
    ));
    let mut bob = connect_as(&server, v5, "bob", "bob-p").await;
    assert_eq!(
        pub_code(&mut bob, 1, "sensor/open/queued").await,
        ReasonCode::Success
    );

    let mut canary = connect_as(&server, v5, "alice", "canary-p").await;
    assert_eq!(
        sub_code(&mut canary, 1, "sensor/open/#").await,
        ReasonCode::GrantedQoS1
    );
    fixture.write_rules(&RULES.replace("topic = \"sensor/#\"", "topic = \"elsewhere/#\""));
    fixture
        .wait_event("subscription_revoked", "sensor/open/#")
        .await;

    let (mut alice, ack) = Raw::connect(server.addr, &persistent()).await;
    assert!(ack.session_present);
    // The queued message and the subscription went with the rule that allowed them.
    alice.expect_no_publish(QUIET).await;
    assert_eq!(
        pub_code(&mut bob, 2, "sensor/open/later").await,
        ReasonCode::NoMatchingSubscribers
    );
    let revoked: Vec<_> = fixture
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "subscription_revoked" && e["client_id"] == "alice-p")
        .collect();
    assert_eq!(revoked.len(), 1, "{revoked:#?}");
    server.stop().await;
}

/// "Everything under sensor/ except sensor/secret/": subscriptions that overlap a deny rule.
const CARVE_OUT_RULES: &str = r##"
[[rule]]
permission = "allow"
action = "subscribe"
group = "readers"
topics = ["sensor/#", "sensor/+/+"]

[[rule]]
permission = "allow"
action = "publish"
group = "controllers"
topic = "sensor/#"

[[rule]]
permission = "deny"
action = "subscribe"
topic = "sensor/secret/#"
"##;

/// Publishes `topic_name` at QoS 1 (retained or not) and waits for its PUBACK.
async fn publish_acked(raw: &mut Raw, packet_id: u16, topic_name: &str, retain: bool) {
    let mut p = common::publish(topic_name, QoS::AtLeastOnce, packet_id, b"x");
    p.retain = retain;
    raw.send(&p).await;
    loop {
        if let Packet::PubAck(ack) = raw.recv().await {
            assert!(allowed(ack.reason_code), "{topic_name}: {ack:?}");
            return;
        }
    }
}

/// The topics of the PUBLISHes `raw` receives up to one to `marker`.
async fn topics_until(raw: &mut Raw, marker: &str) -> Vec<String> {
    let mut topics = Vec::new();
    loop {
        let got = raw.recv_publish().await;
        if got.topic.as_str() == marker {
            return topics;
        }
        topics.push(got.topic.as_str().to_owned());
    }
}

#[tokio::test]
async fn a_subscription_that_overlaps_a_deny_rule_is_granted_with_the_carve_out() {
    let fixture = Fixture::new();
    fixture.write_rules(CARVE_OUT_RULES);
    let server = fixture.start().await;
    let v5 = ProtocolVersion::V5;
    let mut bob = connect_as(&server, v5, "bob", "bob-carve").await;
    // Retained messages on both sides of the carve-out, before anyone subscribes.
    publish_acked(&mut bob, 1, "sensor/open/r", true).await;
    publish_acked(&mut bob, 2, "sensor/secret/r", true).await;

    let mut alice = connect_as(&server, v5, "alice", "alice-carve").await;
    assert_eq!(
        sub_code(&mut alice, 1, "sensor/#").await,
        ReasonCode::GrantedQoS1
    );
    // Retained delivery goes through the carve-out too.
    assert_eq!(alice.recv_publish().await.topic.as_str(), "sensor/open/r");
    let mut shared = connect_as(&server, v5, "alice", "alice-shared").await;
    assert_eq!(
        sub_code(&mut shared, 1, "$share/g/sensor/#").await,
        ReasonCode::GrantedQoS1
    );
    // Overlapping subscriptions, both with the carve-out: still kept out.
    let mut both = connect_as(&server, v5, "alice", "alice-both").await;
    assert_eq!(
        sub_code(&mut both, 1, "sensor/#").await,
        ReasonCode::GrantedQoS1
    );
    both.recv_publish().await;
    assert_eq!(
        sub_code(&mut both, 2, "sensor/+/+").await,
        ReasonCode::GrantedQoS1
    );
    both.recv_publish().await;
    // A filter inside the carve-out is refused.
    assert_eq!(
        sub_code(&mut alice, 2, "sensor/secret/+").await,
        ReasonCode::NotAuthorized
    );

    for (i, t) in [
        "sensor/open/t",
        "sensor/secret/key",
        "sensor/a/b/c",
        "sensor/secret",
    ]
    .into_iter()
    .enumerate()
    {
        publish_acked(&mut bob, u16::try_from(i + 10).unwrap(), t, false).await;
    }
    publish_acked(&mut bob, 20, "sensor/end", false).await;
    // `sensor/secret/#` covers `sensor/secret` itself too.
    let expected = ["sensor/open/t", "sensor/a/b/c"];
    assert_eq!(topics_until(&mut alice, "sensor/end").await, expected);
    assert_eq!(topics_until(&mut shared, "sensor/end").await, expected);
    assert_eq!(topics_until(&mut both, "sensor/end").await, expected);
    server.stop().await;
}

#[tokio::test]
async fn carve_outs_hold_for_queued_messages_and_follow_a_reload() {
    // No deny at first: `sensor/#` is granted whole.
    let open_rules = CARVE_OUT_RULES.replace("permission = \"deny\"", "permission = \"allow\"");
    let fixture = Fixture::new();
    fixture.write_rules(&open_rules);
    let server = fixture.start().await;
    let v5 = ProtocolVersion::V5;
    let persistent = || {
        let mut connect = login(v5, "alice", "alice-carve-p");
        connect.clean_start = false;
        connect.properties = ConnectProperties {
            session_expiry_interval: Some(300),
            ..ConnectProperties::default()
        };
        connect
    };
    let mut bob = connect_as(&server, v5, "bob", "bob-carve-p").await;
    let mut live = connect_as(&server, v5, "alice", "alice-carve-live").await;
    assert_eq!(
        sub_code(&mut live, 1, "sensor/#").await,
        ReasonCode::GrantedQoS1
    );
    let (mut parked, _) = Raw::connect(server.addr, &persistent()).await;
    assert_eq!(
        sub_code(&mut parked, 1, "sensor/#").await,
        ReasonCode::GrantedQoS1
    );
    parked
        .send(&bulwark_proto::Disconnect::new(ReasonCode::Success))
        .await;
    parked.until_closed(Duration::from_secs(2)).await;
    publish_acked(&mut bob, 1, "sensor/secret/before", false).await;
    assert_eq!(
        live.recv_publish().await.topic.as_str(),
        "sensor/secret/before",
        "no carve-out yet"
    );

    // The deny comes with a reload: the live subscription stays, its secret topics stop.
    fixture.write_rules(CARVE_OUT_RULES);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Until the reload is in force, a refused subscription shows it.
        if sub_code(&mut live, 7, "sensor/secret/x").await == ReasonCode::NotAuthorized {
            break;
        }
        assert!(Instant::now() < deadline, "the reload never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (Messages that matched the probe subscription while it lasted are skipped below.)
    publish_acked(&mut bob, 2, "sensor/secret/after", false).await;
    publish_acked(&mut bob, 3, "sensor/open/after", false).await;
    publish_acked(&mut bob, 4, "sensor/end", false).await;
    let topics = topics_until(&mut live, "sensor/end").await;
    assert_eq!(
        topics,
        ["sensor/open/after"],
        "the subscription stays, the carve-out applies"
    );

    // The parked session queued everything while away; on resume what the rules in force
    // carve out is dropped from its queue, even a message queued before the deny came.
    let (mut parked, ack) = Raw::connect(server.addr, &persistent()).await;
    assert!(ack.session_present);
    publish_acked(&mut bob, 5, "sensor/end2", false).await;
    let rest = topics_until(&mut parked, "sensor/end2").await;
    assert_eq!(rest, ["sensor/open/after", "sensor/end"]);
    server.stop().await;
}
