//! Authorization end to end: a password store, an ACL file and the audit file in a temporary
//! directory, real sockets on 127.0.0.1, and a raw client for exact reason codes. What the
//! rules decide (templates, wills, retained delivery, `$share`, carve-outs, resumed sessions,
//! 3.1.1 denials) is tested in the engine (crates/bulwark-core/tests/acl.rs); here, that the
//! server wires it up: users and groups from the password store, the ACL file and its reload,
//! token claims, and the audit file.
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
use bulwark_proto::{
    ConnectProperties, Packet, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions,
};
use bulwark_server::{JwtAuthSettings, ServerConfig};
use bytes::Bytes;
use common::{QUIET, Raw, Recv, TestServer, connect_packet, string};

const PASSWORD: &str = "violet-Harbour-lantern-93";
const HMAC_SECRET: &str = "an HMAC secret of more than thirty-two bytes, for tests";

/// The seed patterns of the ACL, and a deny that beats every allow.
const RULES: &str = include_str!("../../bulwark-core/tests/data/seed-acl.toml");
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
        config.audit.file = Some(self.dir.join("audit.jsonl"));
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
