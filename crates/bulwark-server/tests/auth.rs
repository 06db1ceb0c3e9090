//! Authentication end to end: real sockets on 127.0.0.1 (and other 127/8 source addresses to
//! play attackers), rumqttc for 3.1.1 and 5.0, and a raw client for what libraries hide
//! (exact CONNACK codes, SCRAM over AUTH packets, re-authentication).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bulwark_auth::password::{Argon2Params, PasswordStore, hash_password};
use bulwark_auth::scram::{ScramClient, ScramCredentials, ScramHash};
use bulwark_proto::{Auth, AuthProperties, ConnAck, Packet, ProtocolVersion, ReasonCode};
use bulwark_server::{Authenticator, JwtAuthSettings, ServerConfig};
use bytes::Bytes;
use common::{Raw, Recv, TestServer, connect_packet, string};

const ALICE_PASSWORD: &str = "violet-Harbour-lantern-93";
const BOB_PASSWORD: &str = "quiet-Meadow-copper-71";
/// `mosquitto_passwd` (sha512-pbkdf2) of `secret`.
const MOSQUITTO_SECRET: &str = "$7$101$fiF6JIYM4+rScoA+$csSyKPWCgz0NPKh+WUiearNkBeJdU7u3GsxViTANbfpJhQmZpfY6+baJQ49/PNjI+nti0DNTXIYRFizYygI6IQ==";
const HMAC_SECRET: &str = "an HMAC secret of more than thirty-two bytes, for tests";

/// A temporary directory with a password store: alice (groups sensors), bob (disabled),
/// carol (imported from Mosquitto, password `secret`).
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(common::unique("bulwark-auth"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = PasswordStore::new();
        for (name, password, groups) in [
            ("alice", ALICE_PASSWORD, vec!["sensors".to_owned()]),
            ("bob", BOB_PASSWORD, vec![]),
        ] {
            let hash = hash_password(password, &Argon2Params::default()).unwrap();
            store.add(name, &hash, groups).unwrap();
            let scram = |h| {
                ScramCredentials::derive(h, password, 4096)
                    .unwrap()
                    .to_store_string()
            };
            store
                .set_scram(
                    name,
                    Some(scram(ScramHash::Sha256)),
                    Some(scram(ScramHash::Sha512)),
                )
                .unwrap();
        }
        store.set_disabled("bob", true).unwrap();
        store.add("carol", MOSQUITTO_SECRET, vec![]).unwrap();
        let fixture = Self { dir };
        fixture.save(&store);
        std::fs::write(fixture.dir.join("hmac.secret"), HMAC_SECRET).unwrap();
        fixture
    }

    fn store_path(&self) -> PathBuf {
        self.dir.join("passwords.toml")
    }

    fn audit_path(&self) -> PathBuf {
        self.dir.join("audit.jsonl")
    }

    fn store(&self) -> PasswordStore {
        bulwark_server::files::load_store(&self.store_path(), false).unwrap()
    }

    fn save(&self, store: &PasswordStore) {
        bulwark_server::files::save_store(&self.store_path(), store).unwrap();
    }

    /// The audit file's events, as JSON values.
    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Waits until an event of `kind` (and `username`, if given) is in the audit file.
    async fn wait_event(&self, kind: &str, username: Option<&str>) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(event) = self
                .events()
                .into_iter()
                .find(|e| e["kind"] == kind && username.is_none_or(|u| e["username"] == u))
            {
                return event;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} event for {username:?} in {:#?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn apply(&self, config: &mut ServerConfig) {
        config.auth.password_file = Some(self.store_path());
        config.audit.file = Some(self.audit_path());
        config.tls_watch_interval = Duration::from_millis(200);
        // These tests play attackers and fleets on 127.0.0.0/8: no address is exempt from the
        // login guard unless a test says so.
        config.auth.guard.exempt = Vec::new();
    }

    async fn start(&self) -> TestServer {
        self.start_with(|_| {}).await
    }

    async fn start_with(&self, adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        common::start_secure_with(|config| {
            self.apply(config);
            adjust(config);
        })
        .await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CONNECT for `version` with optional username and password.
fn credentials(
    version: ProtocolVersion,
    id: &str,
    username: Option<&str>,
    password: Option<&[u8]>,
) -> bulwark_proto::Connect {
    let mut connect = connect_packet(version, id);
    connect.username = username.map(string);
    connect.password = password.map(Bytes::copy_from_slice);
    connect
}

/// A 5.0 CONNECT of alice with her password.
fn alice_v5(id: &str) -> bulwark_proto::Connect {
    credentials(
        ProtocolVersion::V5,
        id,
        Some("alice"),
        Some(ALICE_PASSWORD.as_bytes()),
    )
}

async fn connack(addr: SocketAddr, connect: &bulwark_proto::Connect) -> ConnAck {
    Raw::connect(addr, connect).await.1
}

/// The CONNACK's reason code.
async fn code(addr: SocketAddr, connect: &bulwark_proto::Connect) -> ReasonCode {
    connack(addr, connect).await.reason_code
}

/// Connects from `local` and returns the CONNACK's reason code (`None` if the connection
/// closed without one).
async fn code_from(
    addr: SocketAddr,
    local: IpAddr,
    connect: &bulwark_proto::Connect,
) -> Option<ReasonCode> {
    let mut raw = Raw::tcp_from(addr, local, connect.protocol_version).await;
    raw.send(connect).await;
    match raw.recv_within(Duration::from_secs(10)).await {
        Recv::Packet(Packet::ConnAck(ack)) => Some(ack.reason_code),
        _ => None,
    }
}

fn local(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[tokio::test]
async fn anonymous_clients_are_refused_unless_the_listener_allows_them() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    let ack = connack(server.addr, &connect_packet(ProtocolVersion::V5, "anon")).await;
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    // 3.1.1 return code 5, "not authorized".
    let ack = connack(
        server.addr,
        &connect_packet(ProtocolVersion::V3_1_1, "anon"),
    )
    .await;
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    let event = fixture.wait_event("auth_failure", None).await;
    assert!(
        event["reason"].as_str().unwrap().contains("anonymous"),
        "{event}"
    );
    server.stop().await;

    let open = fixture
        .start_with(|c| c.listeners[0].dangerous_allow_anonymous = true)
        .await;
    let ack = connack(open.addr, &connect_packet(ProtocolVersion::V5, "anon")).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    // Anonymous access never lets wrong credentials through.
    let wrong = credentials(ProtocolVersion::V5, "w", Some("alice"), Some(b"nope"));
    assert_eq!(
        connack(open.addr, &wrong).await.reason_code,
        ReasonCode::BadUserNameOrPassword
    );
    open.stop().await;
}

#[tokio::test]
async fn passwords_are_checked_with_rumqttc_and_raw_clients() {
    let fixture = Fixture::new();
    // Many failures from one address on purpose: no backoff here (it has its own test).
    let server = fixture
        .start_with(|c| c.auth.guard.backoff_after = 100)
        .await;

    // rumqttc 3.1.1 and 5.0 with the right password publish and receive.
    let mut options = common::v3_options(server.addr, "alice-3");
    options.set_credentials("alice", ALICE_PASSWORD);
    let (mut v3, ack) = common::v3_connect_with(options).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    v3.subscribe("auth/t", rumqttc::QoS::AtLeastOnce).await;
    let mut options = common::v5_options(server.addr, "alice-5");
    options.set_credentials("alice", ALICE_PASSWORD);
    let (mut v5, _) = common::v5_connect_with(options).await;
    v5.publish(
        "auth/t",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        b"hi",
    )
    .await;
    assert_eq!(&v3.recv_publish().await.payload[..], b"hi");

    // Wrong, empty and missing passwords; unknown and disabled users: one answer for all.
    let cases: [(&str, Option<&[u8]>); 6] = [
        ("alice", Some(b"wrong password here")),
        ("alice", Some(b"")),
        ("alice", None),
        ("mallory", Some(ALICE_PASSWORD.as_bytes())),
        ("bob", Some(BOB_PASSWORD.as_bytes())),
        ("", Some(ALICE_PASSWORD.as_bytes())),
    ];
    for (user, password) in cases {
        for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
            let connect = credentials(version, "x", Some(user), password);
            let ack = connack(server.addr, &connect).await;
            assert_eq!(
                ack.reason_code,
                ReasonCode::BadUserNameOrPassword,
                "{user:?} {password:?} {version:?}"
            );
            if version.is_v5() {
                assert_eq!(
                    ack.properties.reason_string.as_ref().map(|s| s.as_str()),
                    Some("bad username or password")
                );
            }
        }
    }
    // rumqttc sees 3.1.1 return code 4.
    let mut options = common::v3_options(server.addr, "alice-bad");
    options.set_credentials("alice", "not her password");
    let mut eventloop = rumqttc::AsyncClient::new(options, 10).1;
    match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
        Ok(Err(rumqttc::ConnectionError::ConnectionRefused(code))) => {
            assert_eq!(code, rumqttc::ConnectReturnCode::BadUserNamePassword)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    fixture.wait_event("auth_success", Some("alice")).await;
    let failure = fixture.wait_event("auth_failure", Some("mallory")).await;
    assert_eq!(failure["listener"], "test");
    assert!(
        failure["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    v3.disconnect().await;
    v5.disconnect().await;
    server.stop().await;
}

#[tokio::test]
async fn malformed_credentials_are_refused_by_the_decoder() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    // 3.1.1 CONNECT with the password flag but no username flag [MQTT-3.1.2-22].
    let mut raw = Raw::tcp(server.addr, ProtocolVersion::V3_1_1).await;
    raw.send_bytes(b"\x10\x12\x00\x04MQTT\x04\x42\x00\x3c\x00\x01a\x00\x05hello")
        .await;
    let packets = raw.until_closed(Duration::from_secs(5)).await;
    assert!(
        !packets
            .iter()
            .any(|p| matches!(p, Packet::ConnAck(a) if a.reason_code == ReasonCode::Success)),
        "{packets:?}"
    );
    // A NUL in the username [MQTT-1.5.4-2].
    let mut raw = Raw::tcp(server.addr, ProtocolVersion::V5).await;
    raw.send_bytes(
        b"\x10\x1b\x00\x04MQTT\x05\xc2\x00\x3c\x00\x00\x01b\x00\x05al\x00ce\x00\x05hello",
    )
    .await;
    let packets = raw.until_closed(Duration::from_secs(5)).await;
    match packets.as_slice() {
        [Packet::ConnAck(ack)] => assert_eq!(ack.reason_code, ReasonCode::MalformedPacket),
        other => panic!("expected CONNACK 0x81, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn an_imported_mosquitto_hash_works_and_is_upgraded_at_login() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    let connect = credentials(ProtocolVersion::V5, "c", Some("carol"), Some(b"secret"));
    assert_eq!(code(server.addr, &connect).await, ReasonCode::Success);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let store = fixture.store();
        let carol = store.get("carol").unwrap();
        if carol.password.starts_with("$argon2id$") {
            assert!(carol.scram_sha256.is_some() && carol.scram_sha512.is_some());
            break;
        }
        assert!(Instant::now() < deadline, "hash not upgraded: {carol:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The upgraded hash still takes the password, and nothing else.
    assert_eq!(code(server.addr, &connect).await, ReasonCode::Success);
    let wrong = credentials(ProtocolVersion::V5, "c", Some("carol"), Some(b"secret2"));
    assert_eq!(
        code(server.addr, &wrong).await,
        ReasonCode::BadUserNameOrPassword
    );
    server.stop().await;
}

#[tokio::test]
async fn removing_or_disabling_a_user_disconnects_it_and_a_new_user_works_at_once() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    let alice = alice_v5("a");
    let (mut raw, ack) = Raw::connect(server.addr, &alice).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let mut store = fixture.store();
    store.set_disabled("alice", true).unwrap();
    store.set_disabled("bob", false).unwrap();
    // Make sure the modification time moves on even on coarse file systems.
    tokio::time::sleep(Duration::from_millis(20)).await;
    fixture.save(&store);
    let packets = raw.until_closed(Duration::from_secs(5)).await;
    match packets.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason_code, ReasonCode::AdministrativeAction),
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    fixture.wait_event("forced_disconnect", Some("alice")).await;
    assert_eq!(
        code(server.addr, &alice).await,
        ReasonCode::BadUserNameOrPassword
    );
    let bob = credentials(
        ProtocolVersion::V5,
        "b",
        Some("bob"),
        Some(BOB_PASSWORD.as_bytes()),
    );
    assert_eq!(code(server.addr, &bob).await, ReasonCode::Success);
    server.stop().await;
}

/// Settings that make the guard act within a test: backoff after 3 failures, a ban after 6.
fn quick_guard(config: &mut ServerConfig) {
    let g = &mut config.auth.guard;
    g.backoff_after = 3;
    g.initial_delay = Duration::from_millis(200);
    g.max_delay = Duration::from_millis(400);
    g.max_wait = Duration::from_secs(5);
    g.ban_after = 6;
    g.ban_duration = Duration::from_secs(60);
}

#[tokio::test]
async fn repeated_failures_are_slowed_then_banned_while_others_keep_working() {
    let fixture = Fixture::new();
    let server = fixture.start_with(quick_guard).await;
    let attacker = local(2);
    let guess = |n: usize| {
        credentials(
            ProtocolVersion::V5,
            "g",
            Some(if n.is_multiple_of(2) {
                "alice"
            } else {
                "mallory"
            }),
            Some(format!("guess number {n}").as_bytes()),
        )
    };
    let mut took = Vec::new();
    for n in 0..6 {
        let started = Instant::now();
        assert_eq!(
            code_from(server.addr, attacker, &guess(n)).await,
            Some(ReasonCode::BadUserNameOrPassword),
            "guess {n}"
        );
        took.push(started.elapsed());
    }
    // From the fourth failure on, attempts wait for the backoff delay.
    assert!(took[4] >= Duration::from_millis(190), "{took:?}");
    assert!(took[5] >= Duration::from_millis(190), "{took:?}");
    // The sixth failure banned the address: even the right password is refused now.
    let right = alice_v5("a");
    assert_eq!(
        code_from(server.addr, attacker, &right).await,
        Some(ReasonCode::Banned)
    );
    let v311 = credentials(
        ProtocolVersion::V3_1_1,
        "a",
        Some("alice"),
        Some(ALICE_PASSWORD.as_bytes()),
    );
    assert_eq!(
        code_from(server.addr, attacker, &v311).await,
        Some(ReasonCode::NotAuthorized)
    );
    // Another address is not affected: the username's backoff only delays, it never locks
    // the user out.
    assert_eq!(
        code_from(server.addr, local(3), &right).await,
        Some(ReasonCode::Success)
    );
    let mut options = common::v3_options(server.addr, "bystander");
    options.set_credentials("alice", ALICE_PASSWORD);
    let (mut v3, _) = common::v3_connect_with(options).await;
    v3.subscribe("still/working", rumqttc::QoS::AtLeastOnce)
        .await;
    v3.publish("still/working", rumqttc::QoS::AtLeastOnce, false, b"yes")
        .await;
    assert_eq!(&v3.recv_publish().await.payload[..], b"yes");
    let ban = fixture.wait_event("ban", None).await;
    assert!(
        ban["remote"].as_str().unwrap().starts_with("127.0.0.2:"),
        "{ban}"
    );
    fixture.wait_event("banned_refused", Some("alice")).await;
    v3.disconnect().await;
    server.stop().await;
}

#[tokio::test]
async fn unknown_users_and_wrong_passwords_get_identical_answers() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    let mut answers = Vec::new();
    for user in ["alice", "nobody-by-this-name"] {
        let connect = credentials(
            ProtocolVersion::V5,
            "x",
            Some(user),
            Some(b"wrong-password-1"),
        );
        let mut raw = Raw::tcp_from(server.addr, local(4), ProtocolVersion::V5).await;
        raw.send(&connect).await;
        let mut bytes = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut raw.stream, &mut bytes),
        )
        .await;
        answers.push(bytes);
    }
    assert!(!answers[0].is_empty());
    assert_eq!(answers[0], answers[1]);
    server.stop().await;
}

#[tokio::test]
async fn a_login_flood_does_not_stall_publishing_clients() {
    let fixture = Fixture::new();
    let server = fixture
        .start_with(|c| {
            c.auth.hash_concurrency = 1;
            c.auth.guard.backoff_after = 1_000;
            c.auth.guard.ban_after = 0;
        })
        .await;
    let mut options = common::v5_options(server.addr, "worker");
    options.set_credentials("alice", ALICE_PASSWORD);
    let (mut client, _) = common::v5_connect_with(options).await;
    client
        .subscribe("flood/echo", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    let addr = server.addr;
    // 40 connections at a time from 127.0.0.5..44, each guessing, for as long as it takes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut flood = Vec::new();
    for i in 0..40u8 {
        let (stop, attempts) = (stop.clone(), attempts.clone());
        flood.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let guess = credentials(
                    ProtocolVersion::V5,
                    "f",
                    Some("alice"),
                    Some(b"not-it-at-all"),
                );
                let _ = code_from(addr, local(5 + i), &guess).await;
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = attempts.load(std::sync::atomic::Ordering::Relaxed);
    for n in 0..100u32 {
        client
            .publish(
                "flood/echo",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                &n.to_be_bytes(),
            )
            .await;
        assert_eq!(&client.recv_publish().await.payload[..], &n.to_be_bytes());
    }
    let during = attempts.load(std::sync::atomic::Ordering::Relaxed);
    // The flood went on while the messages flowed, and hashing was its bottleneck: far fewer
    // guesses were checked than messages went round.
    let busy = flood.iter().filter(|t| !t.is_finished()).count();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in flood {
        let _ = task.await;
    }
    assert_eq!(
        busy, 40,
        "the flood stopped before the messages were through"
    );
    assert!(
        during > before,
        "no guess was answered meanwhile: {before} {during}"
    );
    client.disconnect().await;
    server.stop().await;
}

// ----- SCRAM over AUTH (MQTT 5 enhanced authentication) -------------------------------------

fn auth_packet(code: ReasonCode, method: &str, data: Vec<u8>) -> Auth {
    Auth {
        reason_code: code,
        properties: AuthProperties {
            authentication_method: Some(string(method)),
            authentication_data: Some(Bytes::from(data)),
            ..AuthProperties::default()
        },
    }
}

/// Runs a SCRAM login; returns the connection and the CONNACK.
async fn scram_login(
    addr: SocketAddr,
    hash: ScramHash,
    user: &str,
    password: &str,
) -> (Raw, ConnAck) {
    let mut client = ScramClient::new(hash, user, password).unwrap();
    let mut connect = connect_packet(ProtocolVersion::V5, "scram");
    connect.properties.authentication_method = Some(string(hash.method()));
    connect.properties.authentication_data = Some(Bytes::from(client.client_first()));
    let mut raw = Raw::tcp(addr, ProtocolVersion::V5).await;
    raw.send(&connect).await;
    let first = match raw.recv().await {
        Packet::Auth(auth) => {
            assert_eq!(auth.reason_code, ReasonCode::ContinueAuthentication);
            auth.properties.authentication_data.unwrap()
        }
        other => panic!("expected AUTH, got {other:?}"),
    };
    let last = client.client_final(&first).unwrap();
    raw.send(&auth_packet(
        ReasonCode::ContinueAuthentication,
        hash.method(),
        last,
    ))
    .await;
    match raw.recv().await {
        Packet::ConnAck(ack) => {
            if ack.reason_code == ReasonCode::Success {
                assert_eq!(
                    ack.properties
                        .authentication_method
                        .as_ref()
                        .map(|m| m.as_str()),
                    Some(hash.method())
                );
                client
                    .verify_server_final(ack.properties.authentication_data.as_ref().unwrap())
                    .unwrap();
            }
            (raw, *ack)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn scram_logins_succeed_fail_and_reauthenticate() {
    let fixture = Fixture::new();
    let server = fixture
        .start_with(|c| c.auth.guard.backoff_after = 100)
        .await;
    for hash in [ScramHash::Sha256, ScramHash::Sha512] {
        let (_, ack) = scram_login(server.addr, hash, "alice", ALICE_PASSWORD).await;
        assert_eq!(ack.reason_code, ReasonCode::Success, "{hash}");
        let (_, ack) = scram_login(server.addr, hash, "alice", "not the password").await;
        assert_eq!(ack.reason_code, ReasonCode::BadUserNameOrPassword, "{hash}");
        let (_, ack) = scram_login(server.addr, hash, "nobody", "not the password").await;
        assert_eq!(ack.reason_code, ReasonCode::BadUserNameOrPassword, "{hash}");
    }
    // Re-authentication during the session, then a failed one, which ends it.
    let (mut raw, _) = scram_login(server.addr, ScramHash::Sha256, "alice", ALICE_PASSWORD).await;
    for (password, ok) in [(ALICE_PASSWORD, true), ("wrong wrong wrong", false)] {
        let mut client = ScramClient::new(ScramHash::Sha256, "alice", password).unwrap();
        raw.send(&auth_packet(
            ReasonCode::ReAuthenticate,
            "SCRAM-SHA-256",
            client.client_first(),
        ))
        .await;
        let first = match raw.recv().await {
            Packet::Auth(a) => a.properties.authentication_data.unwrap(),
            other => panic!("expected AUTH, got {other:?}"),
        };
        let last = client.client_final(&first).unwrap();
        raw.send(&auth_packet(
            ReasonCode::ContinueAuthentication,
            "SCRAM-SHA-256",
            last,
        ))
        .await;
        match raw.recv().await {
            Packet::Auth(a) if ok => {
                assert_eq!(a.reason_code, ReasonCode::Success);
                client
                    .verify_server_final(&a.properties.authentication_data.unwrap())
                    .unwrap();
            }
            Packet::Disconnect(d) if !ok => assert_eq!(d.reason_code, ReasonCode::NotAuthorized),
            other => panic!("re-authentication ok={ok}: got {other:?}"),
        }
    }
    fixture.wait_event("reauth_success", Some("alice")).await;
    fixture.wait_event("reauth_failure", Some("alice")).await;

    // An unknown method gets 0x8C.
    let mut connect = connect_packet(ProtocolVersion::V5, "m");
    connect.properties.authentication_method = Some(string("KERBEROS"));
    assert_eq!(
        code(server.addr, &connect).await,
        ReasonCode::BadAuthenticationMethod
    );
    server.stop().await;

    // A listener whose chain has no SCRAM refuses it the same way.
    let passwords_only = fixture
        .start_with(|c| c.listeners[0].authenticators = vec![Authenticator::Password])
        .await;
    let mut connect = connect_packet(ProtocolVersion::V5, "s");
    connect.properties.authentication_method = Some(string("SCRAM-SHA-256"));
    connect.properties.authentication_data = Some(Bytes::from_static(b"n,,n=alice,r=abc"));
    assert_eq!(
        connack(passwords_only.addr, &connect).await.reason_code,
        ReasonCode::BadAuthenticationMethod
    );
    passwords_only.stop().await;
}

// ----- JWT --------------------------------------------------------------------------------

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, exp: u64, aud: &str) -> serde_json::Value {
    serde_json::json!({ "sub": sub, "exp": exp, "aud": aud, "iss": "https://issuer.test" })
}

fn rs256(key_file: &str, kid: &str, claims: &serde_json::Value) -> String {
    let key =
        jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(data(key_file)).unwrap()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &key,
    )
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn jwt_settings(fixture: &Fixture) -> JwtAuthSettings {
    JwtAuthSettings {
        issuer: Some("https://issuer.test".into()),
        audiences: vec!["bulwark".into()],
        public_key_files: vec![data("jwt-rsa.pub")],
        hmac_secret_file: Some(fixture.dir.join("hmac.secret")),
        ..JwtAuthSettings::default()
    }
}

async fn jwt_code(addr: SocketAddr, user: &str, token: &str) -> ReasonCode {
    let connect = credentials(
        ProtocolVersion::V5,
        "jwt",
        Some(user),
        Some(token.as_bytes()),
    );
    connack(addr, &connect).await.reason_code
}

#[tokio::test]
async fn jwt_tokens_are_verified_and_tricks_refused() {
    let fixture = Fixture::new();
    let settings = jwt_settings(&fixture);
    let server = fixture
        .start_with(|c| {
            c.auth.jwt = Some(settings);
            c.auth.guard.backoff_after = 100;
        })
        .await;
    let later = now() + 600;
    let good = rs256("jwt-rsa.key", "k1", &claims("dave", later, "bulwark"));
    assert_eq!(
        jwt_code(server.addr, "dave", &good).await,
        ReasonCode::Success
    );
    // rumqttc 3.1.1 with the token as password.
    let mut options = common::v3_options(server.addr, "dave-3");
    options.set_credentials("dave", good.clone());
    let (v3, ack) = common::v3_connect_with(options).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    v3.disconnect().await;
    let hs = hs256(HMAC_SECRET.as_bytes(), &claims("erin", later, "bulwark"));
    assert_eq!(
        jwt_code(server.addr, "erin", &hs).await,
        ReasonCode::Success
    );

    let refused = [
        (
            "expired",
            rs256("jwt-rsa.key", "k1", &claims("dave", now() - 120, "bulwark")),
        ),
        (
            "wrong audience",
            rs256("jwt-rsa.key", "k1", &claims("dave", later, "elsewhere")),
        ),
        (
            "other key",
            rs256("jwt-rsa2.key", "k1", &claims("dave", later, "bulwark")),
        ),
        (
            // HMAC keyed with the RSA public key: algorithm confusion.
            "HS/RS confusion",
            hs256(
                &std::fs::read(data("jwt-rsa.pub")).unwrap(),
                &claims("dave", later, "bulwark"),
            ),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(claims("dave", later, "bulwark").to_string().as_bytes())
            ),
        ),
    ];
    for (what, token) in refused {
        assert_eq!(
            jwt_code(server.addr, "dave", &token).await,
            ReasonCode::BadUserNameOrPassword,
            "{what}"
        );
    }
    // The CONNECT username must be the token's.
    assert_eq!(
        jwt_code(server.addr, "mallory", &good).await,
        ReasonCode::BadUserNameOrPassword
    );
    let failure = fixture.wait_event("auth_failure", Some("dave")).await;
    assert!(
        failure["reason"].as_str().unwrap().starts_with("JWT"),
        "{failure}"
    );
    server.stop().await;
}

#[tokio::test]
async fn jwks_rotation_takes_effect_without_a_restart() {
    let fixture = Fixture::new();
    let jwks = fixture.dir.join("jwks.json");
    let jwk = rsa_jwk;
    let write = |keys: Vec<serde_json::Value>| {
        let tmp = fixture.dir.join("jwks.tmp");
        std::fs::write(&tmp, serde_json::json!({ "keys": keys }).to_string()).unwrap();
        std::fs::rename(&tmp, &jwks).unwrap();
    };
    write(vec![jwk("jwt-rsa.pub", "old")]);
    let settings = JwtAuthSettings {
        jwks_file: Some(jwks.clone()),
        public_key_files: Vec::new(),
        ..jwt_settings(&fixture)
    };
    let server = fixture.start_with(|c| c.auth.jwt = Some(settings)).await;
    let later = now() + 600;
    let old = rs256("jwt-rsa.key", "old", &claims("dave", later, "bulwark"));
    let new = rs256("jwt-rsa2.key", "new", &claims("dave", later, "bulwark"));
    assert_eq!(
        jwt_code(server.addr, "dave", &old).await,
        ReasonCode::Success
    );
    assert_eq!(
        jwt_code(server.addr, "dave", &new).await,
        ReasonCode::BadUserNameOrPassword
    );
    // Rotate: the new key in, the old one out.
    tokio::time::sleep(Duration::from_millis(20)).await;
    write(vec![jwk("jwt-rsa2.pub", "new")]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while jwt_code(server.addr, "dave", &new).await != ReasonCode::Success {
        assert!(
            Instant::now() < deadline,
            "the rotated key was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        jwt_code(server.addr, "dave", &old).await,
        ReasonCode::BadUserNameOrPassword
    );
    server.stop().await;
}

/// The modulus and exponent of an RSA SPKI PEM public key.
fn rsa_components(pem: &str) -> (Vec<u8>, Vec<u8>) {
    use base64::Engine as _;
    use x509_parser::prelude::FromDer as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&der).unwrap();
    match spki.parsed().unwrap() {
        x509_parser::public_key::PublicKey::RSA(rsa) => {
            (strip(rsa.modulus).to_vec(), strip(rsa.exponent).to_vec())
        }
        other => panic!("not RSA: {other:?}"),
    }
}

fn strip(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

#[tokio::test]
async fn an_expiring_token_ends_the_connection_unless_the_client_reauthenticates() {
    let fixture = Fixture::new();
    let settings = JwtAuthSettings {
        clock_skew: Duration::ZERO,
        ..jwt_settings(&fixture)
    };
    let server = fixture.start_with(|c| c.auth.jwt = Some(settings)).await;
    // Password field, no method: ends at exp.
    let soon = rs256("jwt-rsa.key", "k", &claims("dave", now() + 2, "bulwark"));
    let connect = credentials(
        ProtocolVersion::V5,
        "exp",
        Some("dave"),
        Some(soon.as_bytes()),
    );
    let (mut raw, ack) = Raw::connect(server.addr, &connect).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let packets = raw.until_closed(Duration::from_secs(6)).await;
    match packets.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason_code, ReasonCode::NotAuthorized),
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    fixture.wait_event("forced_disconnect", Some("dave")).await;

    // The JWT method: a fresh token in AUTH before exp keeps the connection.
    let soon = rs256("jwt-rsa.key", "k", &claims("dave", now() + 2, "bulwark"));
    let mut connect = connect_packet(ProtocolVersion::V5, "reauth");
    connect.properties.authentication_method = Some(string("JWT"));
    connect.properties.authentication_data = Some(Bytes::from(soon.into_bytes()));
    let (mut raw, ack) = Raw::connect(server.addr, &connect).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let fresh = rs256("jwt-rsa.key", "k", &claims("dave", now() + 600, "bulwark"));
    raw.send(&auth_packet(
        ReasonCode::ReAuthenticate,
        "JWT",
        fresh.into_bytes(),
    ))
    .await;
    match raw.recv().await {
        Packet::Auth(a) => assert_eq!(a.reason_code, ReasonCode::Success),
        other => panic!("expected AUTH success, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    raw.send(&Packet::PingReq).await;
    assert!(matches!(raw.recv().await, Packet::PingResp));
    // A token for someone else is refused and ends the session.
    let other = rs256("jwt-rsa.key", "k", &claims("erin", now() + 600, "bulwark"));
    raw.send(&auth_packet(
        ReasonCode::ReAuthenticate,
        "JWT",
        other.into_bytes(),
    ))
    .await;
    match raw.recv().await {
        Packet::Disconnect(d) => assert_eq!(d.reason_code, ReasonCode::NotAuthorized),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    server.stop().await;
}

/// An HTTPS server on 127.0.0.1 serving one JWKS document (which the test may change), with
/// its CA in `ca.pem` under `dir`; counts the requests.
struct JwksServer {
    url: String,
    ca: PathBuf,
    document: std::sync::Arc<std::sync::Mutex<String>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn jwks_server(dir: &Path) -> JwksServer {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_path = dir.join("jwks-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/jwks.json", listener.local_addr().unwrap());
    let document = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (doc, count) = (document.clone(), hits.clone());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (acceptor, doc, count) = (acceptor.clone(), doc.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(Ok(mut tls)) =
                    tokio::time::timeout(Duration::from_secs(5), acceptor.accept(socket)).await
                else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = doc.lock().unwrap().clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    JwksServer {
        url,
        ca: ca_path,
        document,
        hits,
    }
}

fn rsa_jwk(pem_file: &str, kid: &str) -> serde_json::Value {
    let (n, e) = rsa_components(&std::fs::read_to_string(data(pem_file)).unwrap());
    serde_json::json!({ "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&n), "e": b64(&e) })
}

#[tokio::test]
async fn a_jwks_url_is_fetched_again_for_an_unknown_kid_but_not_too_often() {
    let fixture = Fixture::new();
    let jwks = jwks_server(&fixture.dir).await;
    let set = |keys: Vec<serde_json::Value>| {
        *jwks.document.lock().unwrap() = serde_json::json!({ "keys": keys }).to_string();
    };
    set(vec![rsa_jwk("jwt-rsa.pub", "k1")]);
    let settings = JwtAuthSettings {
        public_key_files: Vec::new(),
        hmac_secret_file: None,
        jwks_url: Some(jwks.url.clone()),
        jwks_ca_file: Some(jwks.ca.clone()),
        jwks_min_interval: Duration::from_secs(1),
        ..jwt_settings(&fixture)
    };
    let server = fixture
        .start_with(|c| {
            c.auth.jwt = Some(settings);
            // Many refusals from one address on purpose: no backoff in this test.
            c.auth.guard.backoff_after = 100;
        })
        .await;
    let later = now() + 600;
    let k1 = rs256("jwt-rsa.key", "k1", &claims("dave", later, "bulwark"));
    let k2 = rs256("jwt-rsa2.key", "k2", &claims("dave", later, "bulwark"));
    assert_eq!(
        jwt_code(server.addr, "dave", &k1).await,
        ReasonCode::Success
    );

    // The identity provider rotates to k2; a token naming k2 makes the broker fetch again.
    set(vec![rsa_jwk("jwt-rsa2.pub", "k2")]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = jwks.hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        jwt_code(server.addr, "dave", &k2).await,
        ReasonCode::Success
    );
    assert_eq!(
        jwks.hits.load(std::sync::atomic::Ordering::SeqCst),
        before + 1
    );

    // Made-up kids right after: at most one more fetch within the minimum interval.
    let before = jwks.hits.load(std::sync::atomic::Ordering::SeqCst);
    for n in 0..10 {
        let bogus = rs256(
            "jwt-rsa.key",
            &format!("made-up-{n}"),
            &claims("dave", later, "bulwark"),
        );
        assert_eq!(
            jwt_code(server.addr, &format!("u{n}"), &bogus).await,
            ReasonCode::BadUserNameOrPassword
        );
    }
    let after = jwks.hits.load(std::sync::atomic::Ordering::SeqCst);
    assert!(after <= before + 1, "{before} -> {after} fetches");
    // k1 is gone from the document: refused now.
    assert_eq!(
        jwt_code(server.addr, "dave", &k1).await,
        ReasonCode::BadUserNameOrPassword
    );
    server.stop().await;
}

#[tokio::test]
async fn a_changed_password_is_not_served_from_the_credential_cache() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    let old = alice_v5("a");
    // Twice: the second login is the cached one.
    for _ in 0..2 {
        assert_eq!(code(server.addr, &old).await, ReasonCode::Success);
    }
    let new_password = "orchid-Tundra-signal-35";
    let mut store = fixture.store();
    store
        .set_password(
            "alice",
            &hash_password(new_password, &Argon2Params::default()).unwrap(),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    fixture.save(&store);
    let deadline = Instant::now() + Duration::from_secs(5);
    while connack(server.addr, &old).await.reason_code == ReasonCode::Success {
        assert!(Instant::now() < deadline, "the old password still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new = credentials(
        ProtocolVersion::V5,
        "a",
        Some("alice"),
        Some(new_password.as_bytes()),
    );
    assert_eq!(code(server.addr, &new).await, ReasonCode::Success);
    server.stop().await;
}

/// Runs `n` SCRAM logins of alice with a wrong password at once from 127.0.0.60; returns each
/// CONNACK's reason code.
async fn parallel_scram_guesses(addr: SocketAddr, n: usize) -> Vec<ReasonCode> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(tokio::spawn(async move {
            let mut client = ScramClient::new(ScramHash::Sha256, "alice", "a guess").unwrap();
            let mut connect = connect_packet(ProtocolVersion::V5, "p");
            connect.properties.authentication_method = Some(string("SCRAM-SHA-256"));
            connect.properties.authentication_data = Some(Bytes::from(client.client_first()));
            let mut raw = Raw::tcp_from(addr, local(60), ProtocolVersion::V5).await;
            raw.send(&connect).await;
            let first = match raw.recv_within(Duration::from_secs(10)).await {
                Recv::Packet(Packet::Auth(auth)) => auth.properties.authentication_data.unwrap(),
                other => panic!("{other:?}"),
            };
            let last = client.client_final(&first).unwrap();
            raw.send(&auth_packet(
                ReasonCode::ContinueAuthentication,
                "SCRAM-SHA-256",
                last,
            ))
            .await;
            match raw.recv_within(Duration::from_secs(10)).await {
                Recv::Packet(Packet::ConnAck(ack)) => ack.reason_code,
                other => panic!("{other:?}"),
            }
        }));
    }
    let mut codes = Vec::new();
    for task in tasks {
        codes.push(task.await.unwrap());
    }
    codes
}

#[tokio::test]
async fn parallel_guesses_from_one_address_are_not_all_checked() {
    let fixture = Fixture::new();
    let server = fixture
        .start_with(|c| {
            quick_guard(c);
            c.auth.guard.max_wait = Duration::from_secs(1);
            c.auth.guard.ban_after = 0;
        })
        .await;
    // Thirty SCRAM exchanges opened at once from one address, each sending a wrong proof:
    // every one gets its server-first-message (nothing has failed yet), but each proof is
    // checked only after the guard is asked again, so once the first ones have failed the
    // others wait their turn or are refused unchecked.
    for code in parallel_scram_guesses(server.addr, 30).await {
        assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    }
    // Three checked at once (backoff after 3), then one slot each 0.2 s apart within the 1 s
    // bound (five more); the rest refused unchecked.
    fixture.wait_event("throttled", Some("alice")).await;
    let checked = fixture
        .events()
        .iter()
        .filter(|e| e["kind"] == "auth_failure" && e["username"] == "alice")
        .count();
    assert!((3..=8).contains(&checked), "{checked} proofs checked");
    // The flood of refusals is one event (the next one, 10 s on, says how many were left out).
    let throttled = fixture
        .events()
        .iter()
        .filter(|e| e["kind"] == "throttled")
        .count();
    assert_eq!(throttled, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_ban_stops_the_guesses_still_waiting_their_turn() {
    let fixture = Fixture::new();
    let server = fixture
        .start_with(|c| {
            quick_guard(c);
            c.auth.guard.ban_after = 5;
        })
        .await;
    let codes = parallel_scram_guesses(server.addr, 30).await;
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, ReasonCode::BadUserNameOrPassword | ReasonCode::Banned)),
        "{codes:?}"
    );
    // The fifth failure banned the address: the proofs still waiting were not checked.
    fixture.wait_event("ban", None).await;
    let checked = fixture
        .events()
        .iter()
        .filter(|e| e["kind"] == "auth_failure" && e["username"] == "alice")
        .count();
    assert_eq!(checked, 5, "{codes:?}");
    server.stop().await;
}

/// Sends every CONNECT at once, each on its own connection from `from`, and returns each
/// CONNACK's reason code (`None`: closed without one) and how long the slowest took.
async fn storm(
    addr: SocketAddr,
    from: IpAddr,
    connects: Vec<bulwark_proto::Connect>,
) -> (Vec<Option<ReasonCode>>, Duration) {
    let started = Instant::now();
    let tasks: Vec<_> = connects
        .into_iter()
        .map(|connect| {
            tokio::spawn(async move {
                let mut raw = Raw::tcp_from(addr, from, connect.protocol_version).await;
                raw.send(&connect).await;
                let code = match raw.recv_within(Duration::from_secs(60)).await {
                    Recv::Packet(Packet::ConnAck(ack)) => Some(ack.reason_code),
                    _ => None,
                };
                (code, raw)
            })
        })
        .collect();
    let mut codes = Vec::new();
    let mut open = Vec::new();
    for task in tasks {
        let (code, raw) = task.await.unwrap();
        codes.push(code);
        open.push(raw);
    }
    (codes, started.elapsed())
}

/// argon2id with twenty passes: about 0.2-0.5 s a check here, so that the number of checks
/// a storm costs shows in its time.
fn costly_hash() -> String {
    let costly = Argon2Params {
        t: 20,
        ..Argon2Params::default()
    };
    hash_password(ALICE_PASSWORD, &costly).unwrap()
}

/// Adds the users device-0 ... device-{n-1}, each with `hash` (of alice's password).
fn add_devices(fixture: &Fixture, n: usize, hash: &str) {
    let mut store = fixture.store();
    for i in 0..n {
        store.add(&format!("device-{i}"), hash, Vec::new()).unwrap();
    }
    fixture.save(&store);
}

/// CONNECTs of device-0 ... device-{n-1}, each as its own user.
fn device_logins(n: usize) -> Vec<bulwark_proto::Connect> {
    (0..n)
        .map(|i| {
            let name = format!("device-{i}");
            credentials(
                ProtocolVersion::V5,
                &name,
                Some(&name),
                Some(ALICE_PASSWORD.as_bytes()),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_fleet_of_one_user_reconnecting_at_once_gets_in() {
    // A fresh broker (nothing cached, nothing failed): two hundred devices of one user
    // connect in the same instant from one address, as after a broker restart. The guard
    // does not exempt the address; only failures may slow anyone down, and none happened.
    let fixture = Fixture::new();
    // A costly hash: two hundred checks one after another would take more than a minute;
    // the fleet shares one.
    let mut store = fixture.store();
    let started = Instant::now();
    let hash = costly_hash();
    let one_check = started.elapsed();
    store.set_password("alice", &hash).unwrap();
    fixture.save(&store);
    let server = fixture.start_with(|c| c.auth.hash_concurrency = 1).await;
    let connects = (0..200).map(|i| alice_v5(&format!("fleet-{i}"))).collect();
    let (codes, took) = storm(server.addr, local(1), connects).await;
    assert!(
        codes.iter().all(|c| *c == Some(ReasonCode::Success)),
        "{codes:?}"
    );
    // One hash check for all of them (single flight, then the cache), and no backoff.
    assert!(
        took < one_check * 50 && took < Duration::from_secs(30),
        "{took:?}, one check {one_check:?}"
    );
    let events = fixture.events();
    assert!(
        !events
            .iter()
            .any(|e| e["kind"] == "throttled" || e["kind"] == "auth_failure"),
        "{events:#?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_fleet_of_distinct_users_on_one_address_gets_in_at_the_pace_of_the_hashes() {
    let fixture = Fixture::new();
    let hash = hash_password(ALICE_PASSWORD, &Argon2Params::default()).unwrap();
    add_devices(&fixture, 40, &hash);
    let server = fixture.start_with(|c| c.auth.hash_concurrency = 1).await;
    let (codes, took) = storm(server.addr, local(1), device_logins(40)).await;
    // Forty hash checks one after another, none delayed, none refused.
    assert!(
        codes.iter().all(|c| *c == Some(ReasonCode::Success)),
        "{codes:?}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_full_login_queue_is_not_a_failed_login() {
    let fixture = Fixture::new();
    // A costly hash, so that the thirty logins below are waiting at the same time.
    add_devices(&fixture, 30, &costly_hash());
    let server = fixture
        .start_with(|c| {
            slow_guard(c, 3);
            c.auth.hash_concurrency = 1;
            c.auth.max_pending_logins = 2;
        })
        .await;
    let (codes, _) = storm(server.addr, local(5), device_logins(30)).await;
    let busy = codes
        .iter()
        .filter(|c| **c == Some(ReasonCode::ServerBusy))
        .count();
    assert!(busy > 0, "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, Some(ReasonCode::Success | ReasonCode::ServerBusy))),
        "{codes:?}"
    );
    // More than three refusals, none of them a failure: no backoff, no ban for the address.
    assert!(busy > 3, "{codes:?}");
    let started = Instant::now();
    assert_eq!(
        code_from(server.addr, local(5), &alice_v5("after")).await,
        Some(ReasonCode::Success)
    );
    prompt(started, Duration::from_secs(3));
    assert!(
        !fixture
            .events()
            .iter()
            .any(|e| e["kind"] == "ban" || e["kind"] == "throttled"),
        "{:#?}",
        fixture.events()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_password_in_a_storm_is_checked_once_and_counted_once() {
    let fixture = Fixture::new();
    let server = fixture
        .start_with(|c| {
            c.auth.hash_concurrency = 1;
            c.auth.guard.ban_after = 3;
        })
        .await;
    // Fifty connections with the same wrong password: one check, one failure, no ban.
    let connects = (0..50)
        .map(|i| {
            credentials(
                ProtocolVersion::V5,
                &format!("old-{i}"),
                Some("alice"),
                Some(b"last year's password"),
            )
        })
        .collect();
    let (codes, _) = storm(server.addr, local(3), connects).await;
    assert!(
        codes
            .iter()
            .all(|c| *c == Some(ReasonCode::BadUserNameOrPassword)),
        "{codes:?}"
    );
    assert_eq!(
        code_from(server.addr, local(3), &alice_v5("fixed")).await,
        Some(ReasonCode::Success)
    );
    assert!(
        !fixture.events().iter().any(|e| e["kind"] == "ban"),
        "{:#?}",
        fixture.events()
    );
    server.stop().await;
}

/// Settings whose backoff is long enough to tell apart from a prompt answer: 5 s from the
/// third failure on; `ban_after` failures ban an address (0: never).
fn slow_guard(config: &mut ServerConfig, ban_after: u32) {
    let g = &mut config.auth.guard;
    g.backoff_after = 3;
    g.initial_delay = Duration::from_secs(5);
    g.max_delay = Duration::from_secs(5);
    g.ban_after = ban_after;
}

/// A wrong password for `user` from `from`; returns the CONNACK's code.
async fn guess_from(addr: SocketAddr, from: IpAddr, user: &str) -> Option<ReasonCode> {
    let guess = credentials(ProtocolVersion::V5, "g", Some(user), Some(b"a guess"));
    code_from(addr, from, &guess).await
}

/// Asserts that `started` is less than `most` ago: not delayed by seconds of backoff.
fn prompt(started: Instant, most: Duration) {
    assert!(started.elapsed() < most, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_login_from_the_credential_cache_clears_the_usernames_failures() {
    let fixture = Fixture::new();
    let server = fixture.start_with(|c| slow_guard(c, 0)).await;
    // Alice logs in: her password is now in the credential cache.
    assert_eq!(
        code_from(server.addr, local(1), &alice_v5("a")).await,
        Some(ReasonCode::Success)
    );
    // Three wrong guesses at her account from three addresses: the username is in backoff.
    for n in 0..3u8 {
        assert_eq!(
            guess_from(server.addr, local(20 + n), "alice").await,
            Some(ReasonCode::BadUserNameOrPassword)
        );
    }
    // Alice again, served from the cache: a success, which clears her username's failures.
    assert_eq!(
        code_from(server.addr, local(1), &alice_v5("a")).await,
        Some(ReasonCode::Success)
    );
    // So a typo of hers from a fresh address is checked at once, not 5 s later.
    let started = Instant::now();
    assert_eq!(
        guess_from(server.addr, local(30), "alice").await,
        Some(ReasonCode::BadUserNameOrPassword)
    );
    prompt(started, Duration::from_secs(3));
    server.stop().await;
}

#[tokio::test]
async fn exempt_addresses_are_not_slowed_or_banned_by_the_login_guard() {
    let fixture = Fixture::new();
    let server = fixture
        .start_with(|c| {
            slow_guard(c, 5);
            c.auth.guard.exempt = vec![bulwark_acl::Cidr::parse("127.0.0.1/32").unwrap()];
        })
        .await;
    // Twenty-five bad logins (each for another unknown name, so no username is in backoff)
    // from the exempt address: none waits, none bans it.
    let started = Instant::now();
    for n in 0..25 {
        assert_eq!(
            guess_from(server.addr, local(1), &format!("nobody-{n}")).await,
            Some(ReasonCode::BadUserNameOrPassword),
            "guess {n}"
        );
    }
    prompt(started, Duration::from_secs(15));
    assert_eq!(
        code_from(server.addr, local(1), &alice_v5("a")).await,
        Some(ReasonCode::Success)
    );
    // The same from an address that is not exempt ends in a ban.
    for n in 0..5 {
        let _ = guess_from(server.addr, local(2), &format!("nobody-{n}")).await;
    }
    assert_eq!(
        code_from(server.addr, local(2), &alice_v5("a")).await,
        Some(ReasonCode::Banned)
    );
    server.stop().await;
}

#[tokio::test]
async fn anonymous_connects_are_not_delayed_by_password_backoff_but_bans_hold() {
    let fixture = Fixture::new();
    let anonymous = |c: &mut ServerConfig, ban_after: u32| {
        slow_guard(c, ban_after);
        c.listeners[0].dangerous_allow_anonymous = true;
    };
    let server = fixture.start_with(|c| anonymous(c, 0)).await;
    for n in 0..3 {
        assert_eq!(
            guess_from(server.addr, local(2), &format!("nobody-{n}")).await,
            Some(ReasonCode::BadUserNameOrPassword)
        );
    }
    // The address is in backoff for password logins; an anonymous client has nothing to guess.
    let started = Instant::now();
    for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        assert_eq!(
            code_from(server.addr, local(2), &connect_packet(version, "anon")).await,
            Some(ReasonCode::Success)
        );
    }
    prompt(started, Duration::from_secs(3));
    server.stop().await;

    // A banned address stays banned for anonymous clients too.
    let server = fixture.start_with(|c| anonymous(c, 3)).await;
    for n in 0..3 {
        let _ = guess_from(server.addr, local(3), &format!("nobody-{n}")).await;
    }
    let anon = connect_packet(ProtocolVersion::V5, "anon");
    assert_eq!(
        code_from(server.addr, local(3), &anon).await,
        Some(ReasonCode::Banned)
    );
    assert_eq!(
        code_from(server.addr, local(4), &anon).await,
        Some(ReasonCode::Success)
    );
    server.stop().await;
}

#[tokio::test]
async fn another_user_can_neither_take_over_nor_resume_a_client_id() {
    let fixture = Fixture::new();
    let server = fixture.start().await;
    let mut alice = alice_v5("owned-id");
    alice.clean_start = false;
    alice.properties.session_expiry_interval = Some(300);
    let (mut live, ack) = Raw::connect(server.addr, &alice).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let mut carol = credentials(
        ProtocolVersion::V5,
        "owned-id",
        Some("carol"),
        Some(b"secret"),
    );
    carol.clean_start = false;
    assert_eq!(code(server.addr, &carol).await, ReasonCode::NotAuthorized);
    // Alice's connection was not taken over.
    live.send(&Packet::PingReq).await;
    assert!(matches!(live.recv().await, Packet::PingResp));
    drop(live);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ack = connack(server.addr, &carol).await;
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
    let ack = connack(server.addr, &alice).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.session_present);
    server.stop().await;
}

#[tokio::test]
async fn an_anonymous_client_cannot_take_over_the_client_id_of_a_scram_user() {
    // A SCRAM client names its user in the exchange, not in the CONNECT: the session still
    // belongs to the user it authenticated as, not to "no username".
    let fixture = Fixture::new();
    let server = fixture
        .start_with(|c| c.listeners[0].dangerous_allow_anonymous = true)
        .await;
    let (mut live, ack) =
        scram_login(server.addr, ScramHash::Sha256, "alice", ALICE_PASSWORD).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let anonymous = connect_packet(ProtocolVersion::V5, "scram");
    assert_eq!(
        code(server.addr, &anonymous).await,
        ReasonCode::NotAuthorized
    );
    // Alice's connection was not taken over.
    live.send(&Packet::PingReq).await;
    assert!(matches!(live.recv().await, Packet::PingResp));
    server.stop().await;
}
