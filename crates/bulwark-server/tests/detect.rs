//! Detection rules end to end (`docs/detection.md`): real clients on 127.0.0.0/8 (each test
//! binds its client sockets to the source addresses it plays), a password store, an ACL file,
//! the ban file and the audit file in a temporary directory, and the admin listener's
//! `/metrics`. Every wait is bounded and waits on something observable: a record in the audit
//! file, a packet, a closed socket, an HTTP answer.
//!
//! Where a test must know that the detection task has handled everything sent before (to
//! check that something did *not* fire), it uses a barrier: a `root_wildcard` rule per client
//! id that fires at once, for a fresh client id. The task handles its queue in order and
//! records what fired in order, so once the barrier's record is in the audit file, every
//! record of what came before it is too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_auth::password::{Argon2Params, PasswordStore, hash_password};
use bulwark_auth::token::{Role, TokenStore};
use bulwark_limits::detect::{Per, Response, Rule, RuleKind};
use bulwark_proto::{
    Connect, Disconnect, Encoder, Packet, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions,
};
use bulwark_server::{AdminSettings, ServerConfig};
use bytes::{Bytes, BytesMut};
use common::{Raw, Recv, TestServer, connect_packet, string};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PASSWORD: &str = "violet-Harbour-lantern-93";

/// Everybody may use `devices/{client_id}/#`; alice may use everything. Anything else is
/// denied.
const ACL: &str = r##"
[[rule]]
permission = "allow"
action = "all"
topic = "devices/{client_id}/#"

[[rule]]
permission = "allow"
action = "all"
user = "alice"
topic = "#"
"##;

/// How long a test waits for something that should happen (generous: a shared 2-core
/// machine, argon2 hashes at every login).
const WAIT: Duration = Duration::from_secs(15);

/// A data directory: users alice, bob, mallory and probe (one password), the ACL, the token
/// file (a viewer), the audit file and the ban file.
struct Fixture {
    dir: PathBuf,
    viewer: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(common::unique("bulwark-detect"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = PasswordStore::new();
        // One hash for everybody: hashing is the slow part of the fixture.
        let hash = hash_password(PASSWORD, &Argon2Params::default()).unwrap();
        for name in ["alice", "bob", "mallory", "probe"] {
            store.add(name, &hash, Vec::new()).unwrap();
        }
        bulwark_server::files::save_store(&dir.join("passwords.toml"), &store).unwrap();
        std::fs::write(dir.join("acl.toml"), ACL).unwrap();
        let mut tokens = TokenStore::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (_, viewer) = tokens.issue("watch", Role::Viewer, now, None).unwrap();
        std::fs::write(dir.join("tokens.toml"), tokens.to_toml()).unwrap();
        Self { dir, viewer }
    }

    fn apply(&self, config: &mut ServerConfig) {
        config.auth.password_file = Some(self.dir.join("passwords.toml"));
        config.acl.file = Some(self.dir.join("acl.toml"));
        config.audit.file = Some(self.dir.join("audit.jsonl"));
        config.bans.file = Some(self.dir.join("bans.toml"));
        let mut admin = AdminSettings::new(self.dir.join("tokens.toml"));
        admin.bind = "127.0.0.1:0".parse().unwrap();
        config.admin = Some(admin);
    }

    /// A broker with the fixture's files, the built-in rules, and what `adjust` adds.
    async fn start(&self, adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        common::start_secure_with(|c| {
            self.apply(c);
            adjust(c);
        })
        .await
    }

    /// The audit file's records, as JSON values.
    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Waits until the audit file holds a record `pick` accepts (the file is written by its
    /// own thread).
    async fn wait_event(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(event) = self.events().into_iter().find(|e| pick(e)) {
                return event;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} in {:#?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the first `detection` record of `rule`.
    async fn wait_detection(&self, rule: &str) -> Value {
        self.wait_event(&format!("detection by {rule}"), |e| {
            e["kind"] == "detection" && e["action"] == rule
        })
        .await
    }

    /// The `detection` records of `rule` so far.
    fn detections(&self, rule: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["kind"] == "detection" && e["action"] == rule)
            .collect()
    }

    /// Returns once the detection task has handled every observation sent before this call:
    /// a fresh client of `probe` subscribes to `#`, and the [`barrier_rule`] fires for its
    /// client id.
    async fn barrier(&self, addr: SocketAddr) {
        let id = common::unique("barrier");
        let (mut probe, code) = connect_from(addr, local(0, 0, 1), &login("probe", &id)).await;
        assert_eq!(code, Some(ReasonCode::Success));
        let ack = probe
            .subscribe(1, "#", SubscriptionOptions::qos(QoS::AtMostOnce), None)
            .await;
        // Denied by the ACL, but asking is what a root_wildcard rule counts.
        assert_eq!(ack.reason_codes[0], ReasonCode::NotAuthorized);
        self.wait_event("the barrier", |e| {
            e["kind"] == "detection" && e["action"] == "barrier" && e["client_id"] == id.as_str()
        })
        .await;
        probe
            .send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
            .await;
    }

    /// The Prometheus text of `/metrics`.
    async fn metrics(&self, server: &TestServer) -> String {
        let (status, body) = http_get(server.admin.unwrap(), "/metrics", &self.viewer).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until `/metrics` has every line of `lines`; returns the text.
    async fn wait_metrics(&self, server: &TestServer, lines: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.metrics(server).await;
            if lines.iter().all(|l| text.lines().any(|x| x == *l)) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "missing some of {lines:#?} in:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the broker no longer lists `client_id` as live (the admin API reads the
    /// registry of live logins, which tells the detection task when a client goes away).
    async fn wait_gone(&self, admin: SocketAddr, client_id: &str) {
        let deadline = Instant::now() + WAIT;
        let path = format!("/api/v1/clients/{client_id}");
        loop {
            let (status, body) = http_get(admin, &path, &self.viewer).await;
            if status == 404 {
                return;
            }
            assert_eq!(status, 200, "{body}");
            assert!(Instant::now() < deadline, "{client_id} is still live");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `127.a.b.c`.
fn local(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

/// A rule as a `[[detect.rule]]` table would make it.
fn rule(
    name: &str,
    kind: RuleKind,
    per: Per,
    window: Duration,
    threshold: u64,
    responses: &[Response],
) -> Rule {
    let mut rule = Rule::new(name, kind, per);
    rule.window = window;
    rule.threshold = threshold;
    rule.responses = responses.to_vec();
    rule
}

/// The barrier rule of [`Fixture::barrier`]: fires at once for every fresh client id.
fn barrier_rule() -> Rule {
    rule(
        "barrier",
        RuleKind::RootWildcard,
        Per::ClientId,
        Duration::from_secs(1),
        1,
        &[Response::Event],
    )
}

const MINUTE: Duration = Duration::from_secs(60);

/// A 5.0 CONNECT of `user` with the right password.
fn login(user: &str, id: &str) -> Connect {
    with_password(ProtocolVersion::V5, user, id, PASSWORD)
}

fn with_password(version: ProtocolVersion, user: &str, id: &str, password: &str) -> Connect {
    let mut connect = connect_packet(version, id);
    connect.username = Some(string(user));
    connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    connect
}

/// Connects from `from`; the CONNACK's reason code, `None` if the connection closed without
/// one.
async fn connect_from(
    addr: SocketAddr,
    from: IpAddr,
    connect: &Connect,
) -> (Raw, Option<ReasonCode>) {
    let mut raw = Raw::tcp_from(addr, from, connect.protocol_version).await;
    raw.send_to_closing(connect).await;
    let code = match raw.recv_within(WAIT).await {
        Recv::Packet(Packet::ConnAck(ack)) => Some(ack.reason_code),
        Recv::Closed => None,
        other => panic!("expected CONNACK or a close, got {other:?}"),
    };
    (raw, code)
}

/// Connects from `from` and expects the broker to close the socket without a CONNACK (an
/// address ban is enforced at accept, before any MQTT).
async fn assert_refused_at_accept(addr: SocketAddr, from: IpAddr, version: ProtocolVersion) {
    let connect = with_password(version, "alice", "after-ban", PASSWORD);
    let (_, code) = connect_from(addr, from, &connect).await;
    assert_eq!(code, None, "{from} is banned: closed without CONNACK");
}

/// The connection is still served: a PINGREQ is answered (other packets are skipped).
async fn assert_alive(raw: &mut Raw) {
    raw.send(&Packet::PingReq).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match raw.recv_within(left).await {
            Recv::Packet(Packet::PingResp) => return,
            Recv::Packet(_) => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }
}

/// Expects DISCONNECT `code` (possibly after other packets), then the close.
async fn assert_kicked(raw: &mut Raw, code: ReasonCode) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match raw.recv_within(left).await {
            Recv::Packet(Packet::Disconnect(d)) => {
                assert_eq!(d.reason_code, code, "{d:?}");
                break;
            }
            Recv::Packet(_) => {}
            other => panic!("expected DISCONNECT {code:?}, got {other:?}"),
        }
    }
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    match raw.recv_within(left).await {
        Recv::Closed => {}
        other => panic!("expected the close after DISCONNECT, got {other:?}"),
    }
}

/// One HTTP/1.1 GET with a bearer token; the status and the body.
async fn http_get(addr: SocketAddr, path: &str, token: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut bytes))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.push_str(&tail[..size]);
            rest = &tail[size + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, body)
}

fn reason(event: &Value) -> &str {
    event["reason"].as_str().unwrap()
}

// ----- failed logins -------------------------------------------------------------------------

/// Failed logins counted per network ban the network's /24 (its live connections closed, new
/// sockets refused at accept, the ban in the ban file), while the username they claimed is
/// never acted on: a rule per user may only record and count, and the user keeps working from
/// elsewhere.
///
/// `[bans] exempt` is the loopback by default (`BanSettings::default`, docs/config.md), so this
/// test empties it: every 127/8 address it plays is then an ordinary source. The login guard
/// keeps its defaults: it exempts the loopback from its own backoff and bans, and its backoff
/// per username starts at 5 failures, above the rules' threshold of 3.
#[tokio::test]
async fn failed_logins_per_network_ban_the_network_and_never_the_claimed_user() {
    let fixture = Fixture::new();
    let server = fixture
        .start(|c| {
            c.bans.exempt = Vec::new();
            c.detect.rules.push(rule(
                "guessing",
                RuleKind::FailedLogins,
                Per::Network,
                MINUTE,
                3,
                &[Response::Event, Response::Metric, Response::Ban],
            ));
            c.detect.rules.push(rule(
                "claimed",
                RuleKind::FailedLogins,
                Per::User,
                MINUTE,
                3,
                &[Response::Event, Response::Metric],
            ));
        })
        .await;
    assert!(server.addr.ip().is_loopback());
    // Alice is logged in from the network about to be banned (a neighbour of the attacker)
    // and from another one; bob from the other one.
    let (mut neighbour, code) =
        connect_from(server.addr, local(0, 3, 9), &login("alice", "neighbour")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let (mut alice, code) =
        connect_from(server.addr, local(0, 4, 1), &login("alice", "alice-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let (mut bob, code) = connect_from(server.addr, local(0, 4, 2), &login("bob", "bob-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));

    // Three guesses at alice's password from 127.0.3.1.
    let attacker = local(0, 3, 1);
    for n in 0..3 {
        let guess = with_password(ProtocolVersion::V5, "alice", "g", &format!("guess {n}"));
        let (_, code) = connect_from(server.addr, attacker, &guess).await;
        assert_eq!(code, Some(ReasonCode::BadUserNameOrPassword), "guess {n}");
    }

    let detection = fixture.wait_detection("guessing").await;
    assert_eq!(detection["target"], "network 127.0.3.0/24", "{detection}");
    assert!(detection.get("username").is_none(), "{detection}");
    assert_eq!(
        reason(&detection),
        "guessing (failed_logins): 3 failed logins in 60 s (limit 3); responses: event, metric, \
         ban for 600 s (1 connection(s) closed)"
    );
    // The ban closed the live connection in the network (5.0: DISCONNECT 0x98).
    assert_kicked(&mut neighbour, ReasonCode::AdministrativeAction).await;
    fixture
        .wait_event("the forced disconnect", |e| {
            e["kind"] == "forced_disconnect" && e["client_id"] == "neighbour"
        })
        .await;
    // New sockets from anywhere in the /24 are closed at accept, 5.0 and 3.1.1 alike.
    assert_refused_at_accept(server.addr, attacker, ProtocolVersion::V5).await;
    assert_refused_at_accept(server.addr, local(0, 3, 200), ProtocolVersion::V3_1_1).await;
    fixture
        .wait_event("the refusal of a banned address", |e| {
            e["kind"] == "banned_refused"
                && e["remote"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("127.0.3."))
        })
        .await;
    // The ban is in the ban file, made by the detection rule.
    let bans = std::fs::read_to_string(fixture.dir.join("bans.toml")).unwrap();
    assert!(bans.contains("127.0.3.0/24"), "{bans}");
    assert!(bans.contains("detect"), "{bans}");

    // The rule per user recorded the claimed username, and did nothing else.
    let claimed = fixture.wait_detection("claimed").await;
    assert_eq!(claimed["target"], "user alice", "{claimed}");
    assert_eq!(claimed["username"], "alice", "{claimed}");
    assert!(
        reason(&claimed).ends_with("; responses: event, metric"),
        "{claimed}"
    );
    // Alice and bob outside the network are untouched, and alice still logs in.
    assert_alive(&mut alice).await;
    assert_alive(&mut bob).await;
    let (mut again, code) =
        connect_from(server.addr, local(0, 4, 3), &login("alice", "alice-2")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    assert_alive(&mut again).await;
    assert!(
        !fixture
            .events()
            .iter()
            .any(|e| e["kind"] == "forced_disconnect"
                && e["username"] == "alice"
                && e["client_id"] != "neighbour"),
        "{:#?}",
        fixture.events()
    );

    let text = fixture
        .wait_metrics(
            &server,
            &[
                "bulwark_detections_total{rule=\"guessing\",response=\"metric\"} 1",
                "bulwark_detections_total{rule=\"guessing\",response=\"ban\"} 1",
                "bulwark_detections_total{rule=\"claimed\",response=\"metric\"} 1",
                "bulwark_detect_observations_dropped_total 0",
                "bulwark_detect_tracked{rule=\"guessing\"} 1",
                "bulwark_detect_tracked{rule=\"claimed\"} 1",
            ],
        )
        .await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("bulwark_detect_untracked_total{rule=\"guessing\"} 0")),
        "{text}"
    );
    server.stop().await;
}

/// With the default `[bans] exempt` (the loopback networks), failed logins from 127.0.0.1 are
/// detected and recorded, but the ban is skipped and says so; nothing is banned, and the
/// skipped ban is not counted as a ban carried out.
#[tokio::test]
async fn failed_logins_from_an_exempt_network_are_recorded_but_not_banned() {
    let fixture = Fixture::new();
    let server = fixture
        .start(|c| {
            assert!(
                c.bans
                    .exempt
                    .iter()
                    .any(|cidr| cidr.contains(local(0, 0, 1))),
                "the loopback is exempt from bans by default"
            );
            c.detect.rules.push(rule(
                "guessing",
                RuleKind::FailedLogins,
                Per::Network,
                MINUTE,
                3,
                &[Response::Event, Response::Metric, Response::Ban],
            ));
        })
        .await;
    let (mut alice, code) =
        connect_from(server.addr, local(0, 0, 1), &login("alice", "alice-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    for n in 0..3 {
        let guess = with_password(ProtocolVersion::V5, "bob", "g", &format!("guess {n}"));
        let (_, code) = connect_from(server.addr, local(0, 0, 1), &guess).await;
        assert_eq!(code, Some(ReasonCode::BadUserNameOrPassword), "guess {n}");
    }
    let detection = fixture.wait_detection("guessing").await;
    assert_eq!(detection["target"], "network 127.0.0.0/24", "{detection}");
    assert_eq!(
        reason(&detection),
        "guessing (failed_logins): 3 failed logins in 60 s (limit 3); responses: event, metric, \
         ban skipped (the network holds an address exempt from bans)"
    );
    // Nothing was banned: the live connection stays, and new ones get in.
    assert_alive(&mut alice).await;
    let (mut again, code) = connect_from(server.addr, local(0, 0, 1), &login("bob", "bob-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    assert_alive(&mut again).await;
    let bans = std::fs::read_to_string(fixture.dir.join("bans.toml")).unwrap_or_default();
    assert!(!bans.contains("127.0.0.0/24"), "{bans}");
    let text = fixture
        .wait_metrics(
            &server,
            &["bulwark_detections_total{rule=\"guessing\",response=\"metric\"} 1"],
        )
        .await;
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("bulwark_detections_total{rule=\"guessing\",response=\"ban\"")),
        "a skipped ban is not a ban carried out:\n{text}"
    );
    server.stop().await;
}

// ----- topic scanning ------------------------------------------------------------------------

/// A user that is denied `threshold` distinct topics and filters (subscribe and publish
/// alike; a repeated one counts once) is disconnected with DISCONNECT 0x98; another user on
/// the same network is not.
#[tokio::test]
async fn a_topic_scan_disconnects_the_scanning_user_only() {
    let fixture = Fixture::new();
    let server = fixture
        .start(|c| {
            c.detect.rules.push(rule(
                "scanner",
                RuleKind::AclDenials,
                Per::User,
                MINUTE,
                5,
                &[Response::Event, Response::Metric, Response::Disconnect],
            ));
            c.detect.rules.push(barrier_rule());
        })
        .await;
    let (mut alice, code) =
        connect_from(server.addr, local(0, 0, 1), &login("alice", "alice-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let (mut mallory, code) =
        connect_from(server.addr, local(0, 0, 1), &login("mallory", "scan-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    // Her own topics are allowed and count for nothing.
    mallory
        .subscribe_qos(1, "devices/scan-1/#", QoS::AtLeastOnce)
        .await;
    // Four distinct denied filters and topics, one of them twice.
    for (n, filter) in ["secret/a", "secret/a", "secret/b"].iter().enumerate() {
        let ack = mallory
            .subscribe(
                2 + n as u16,
                filter,
                SubscriptionOptions::qos(QoS::AtMostOnce),
                None,
            )
            .await;
        assert_eq!(ack.reason_codes[0], ReasonCode::NotAuthorized, "{filter}");
    }
    for (n, topic) in ["secret/c", "secret/d"].iter().enumerate() {
        mallory
            .send(&common::publish(
                topic,
                QoS::AtLeastOnce,
                10 + n as u16,
                b"x",
            ))
            .await;
        match mallory.recv().await {
            Packet::PubAck(ack) => assert_eq!(ack.reason_code, ReasonCode::NotAuthorized),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    // Four distinct so far: nothing fired.
    fixture.barrier(server.addr).await;
    assert!(fixture.detections("scanner").is_empty());
    assert_alive(&mut mallory).await;

    // The fifth distinct one.
    let ack = mallory
        .subscribe(
            20,
            "secret/e",
            SubscriptionOptions::qos(QoS::AtMostOnce),
            None,
        )
        .await;
    assert_eq!(ack.reason_codes[0], ReasonCode::NotAuthorized);
    let detection = fixture.wait_detection("scanner").await;
    assert_eq!(detection["target"], "user mallory", "{detection}");
    assert_eq!(detection["username"], "mallory", "{detection}");
    assert_eq!(
        reason(&detection),
        "scanner (acl_denials): 5 distinct topics or filters denied in 60 s (limit 5); \
         responses: event, metric, disconnect (1 connection(s))"
    );
    assert_kicked(&mut mallory, ReasonCode::AdministrativeAction).await;
    // Alice, on the same network, is not affected.
    assert_alive(&mut alice).await;
    fixture
        .wait_metrics(
            &server,
            &[
                "bulwark_detections_total{rule=\"scanner\",response=\"metric\"} 1",
                "bulwark_detections_total{rule=\"scanner\",response=\"disconnect\"} 1",
            ],
        )
        .await;
    server.stop().await;
}

// ----- root wildcards ------------------------------------------------------------------------

/// The built-in `root-wildcard` rule (no `[detect]` configuration): a subscription to `#`
/// (allowed or not) is recorded per user; the client keeps its connection and its
/// subscription, and a wildcard deeper than the first level is not counted.
#[tokio::test]
async fn a_root_wildcard_is_recorded_by_the_built_in_rule_and_the_client_stays() {
    let fixture = Fixture::new();
    let server = fixture.start(|_| {}).await;
    // Bob subscribes to a wildcard at level 2 of his own tree: not near the root.
    let (mut bob, code) = connect_from(server.addr, local(0, 0, 1), &login("bob", "bob-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    bob.subscribe_qos(1, "devices/bob-1/#", QoS::AtMostOnce)
        .await;
    // Alice subscribes to everything (the ACL allows it).
    let (mut alice, code) =
        connect_from(server.addr, local(0, 0, 1), &login("alice", "alice-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    alice.subscribe_qos(1, "#", QoS::AtMostOnce).await;
    let detection = fixture.wait_detection("root-wildcard").await;
    assert_eq!(detection["target"], "user alice", "{detection}");
    assert_eq!(detection["username"], "alice", "{detection}");
    assert_eq!(
        reason(&detection),
        "root-wildcard (root_wildcard): 1 subscriptions to wildcards near the root in 3600 s \
         (limit 1); responses: event, metric"
    );
    // Bob's subscription came first and the task handles its queue in order: had it counted,
    // its record would be there already.
    assert_eq!(fixture.detections("root-wildcard").len(), 1);
    // Alice keeps her connection and her subscription.
    assert_alive(&mut alice).await;
    bob.send(&common::publish(
        "devices/bob-1/t",
        QoS::AtMostOnce,
        0,
        b"hello",
    ))
    .await;
    let publish = alice.recv_publish().await;
    assert_eq!(&publish.payload[..], b"hello");

    // Bob asks for `+/#`: denied by the ACL, still counted.
    let ack = bob
        .subscribe(2, "+/#", SubscriptionOptions::qos(QoS::AtMostOnce), None)
        .await;
    assert_eq!(ack.reason_codes[0], ReasonCode::NotAuthorized);
    let detection = fixture
        .wait_event("the detection of bob", |e| {
            e["kind"] == "detection" && e["action"] == "root-wildcard" && e["username"] == "bob"
        })
        .await;
    assert_eq!(detection["target"], "user bob");
    assert_alive(&mut bob).await;
    fixture
        .wait_metrics(
            &server,
            &["bulwark_detections_total{rule=\"root-wildcard\",response=\"metric\"} 2"],
        )
        .await;
    server.stop().await;
}

// ----- shared credentials --------------------------------------------------------------------

/// The built-in `shared-credential` rule: one user logged in from three networks at once
/// (127.0.1.0/24, 127.0.2.0/24, ...). Networks whose connections ended no longer count, and
/// several connections from one network count once.
#[tokio::test]
async fn one_credential_from_three_networks_at_once_is_detected() {
    let fixture = Fixture::new();
    let server = fixture.start(|c| c.detect.rules.push(barrier_rule())).await;
    let mut live = Vec::new();
    for (from, id) in [
        (local(0, 1, 1), "shared-1"),
        (local(0, 1, 2), "shared-2"),
        (local(0, 2, 1), "shared-3"),
    ] {
        let (raw, code) = connect_from(server.addr, from, &login("alice", id)).await;
        assert_eq!(code, Some(ReasonCode::Success), "{from}");
        live.push(raw);
    }
    // The connection from 127.0.2.1 ends; a third network then makes two at once.
    let mut gone = live.pop().unwrap();
    gone.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
        .await;
    fixture.wait_gone(server.admin.unwrap(), "shared-3").await;
    let (raw, code) = connect_from(server.addr, local(0, 3, 1), &login("alice", "shared-4")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    live.push(raw);
    fixture.barrier(server.addr).await;
    assert!(
        fixture.detections("shared-credential").is_empty(),
        "two networks at once: {:#?}",
        fixture.detections("shared-credential")
    );

    // A third network at once.
    let (mut third, code) =
        connect_from(server.addr, local(0, 4, 1), &login("alice", "shared-5")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let detection = fixture.wait_detection("shared-credential").await;
    assert_eq!(detection["target"], "user alice", "{detection}");
    assert_eq!(detection["username"], "alice", "{detection}");
    assert_eq!(
        reason(&detection),
        "shared-credential (shared_credential): logged in from 3 networks at once (limit 3); \
         responses: event, metric"
    );
    // Record and count only: every connection stays.
    for raw in &mut live {
        assert_alive(raw).await;
    }
    assert_alive(&mut third).await;
    server.stop().await;
}

// ----- client id flapping --------------------------------------------------------------------

/// One client id logging in over and over: a `client_id_flapping` rule (replacing the built-in
/// one by name, with a lower threshold) records it on the fourth login in the window.
#[tokio::test]
async fn a_flapping_client_id_is_detected() {
    let fixture = Fixture::new();
    let server = fixture
        .start(|c| {
            let slot = c
                .detect
                .rules
                .iter_mut()
                .find(|r| r.name == "client-id-flapping")
                .unwrap();
            *slot = rule(
                "client-id-flapping",
                RuleKind::ClientIdFlapping,
                Per::ClientId,
                MINUTE,
                4,
                &[Response::Event, Response::Metric],
            );
            c.detect.rules.push(barrier_rule());
        })
        .await;
    let id = common::unique("flappy");
    for n in 0..3 {
        let (mut raw, code) = connect_from(server.addr, local(0, 0, 1), &login("bob", &id)).await;
        assert_eq!(code, Some(ReasonCode::Success), "login {n}");
        raw.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
            .await;
        let _ = raw.until_closed(WAIT).await;
    }
    fixture.barrier(server.addr).await;
    assert!(fixture.detections("client-id-flapping").is_empty());
    // Logins are counted as they end: the fourth fires once it is over.
    let (mut last, code) = connect_from(server.addr, local(0, 0, 1), &login("bob", &id)).await;
    assert_eq!(code, Some(ReasonCode::Success));
    last.send(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
        .await;
    let _ = last.until_closed(WAIT).await;
    let detection = fixture.wait_detection("client-id-flapping").await;
    assert_eq!(
        detection["target"],
        format!("client id {id}"),
        "{detection}"
    );
    assert_eq!(detection["client_id"], id.as_str(), "{detection}");
    assert!(detection.get("username").is_none(), "{detection}");
    assert_eq!(
        reason(&detection),
        "client-id-flapping (client_id_flapping): 4 logins ended in 60 s (limit 4); responses: \
         event, metric"
    );
    fixture
        .wait_metrics(
            &server,
            &["bulwark_detections_total{rule=\"client-id-flapping\",response=\"metric\"} 1"],
        )
        .await;
    server.stop().await;
}

/// Another user's refused attempts to take over a client id must not count as logins of that
/// client id: a flapping rule that disconnects would otherwise let anyone close the owner's
/// connection (docs/detection.md: "a client that tries another user's id is refused before it
/// counts as a login").
#[tokio::test]
async fn refused_takeovers_of_a_client_id_do_not_get_its_owner_disconnected() {
    let fixture = Fixture::new();
    let server = fixture
        .start(|c| {
            c.detect.rules.push(rule(
                "flap-guard",
                RuleKind::ClientIdFlapping,
                Per::ClientId,
                MINUTE,
                3,
                &[Response::Event, Response::Disconnect],
            ));
            c.detect.rules.push(barrier_rule());
        })
        .await;
    let (mut owner, code) =
        connect_from(server.addr, local(0, 0, 1), &login("alice", "meter-7")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    for n in 0..3 {
        let (_, code) = connect_from(server.addr, local(0, 5, 1), &login("bob", "meter-7")).await;
        assert_eq!(code, Some(ReasonCode::NotAuthorized), "takeover {n}");
    }
    fixture
        .wait_event("the refused takeover", |e| e["kind"] == "client_id_refused")
        .await;
    fixture.barrier(server.addr).await;
    assert!(
        fixture.detections("flap-guard").is_empty(),
        "{:#?}",
        fixture.detections("flap-guard")
    );
    assert_alive(&mut owner).await;
    server.stop().await;
}

// ----- message rate --------------------------------------------------------------------------

/// A client that publishes steadily and then bursts: a `message_rate` rule fires once the
/// burst is over `factor` times its own baseline.
///
/// Drivers hand in a sample every 5 s (`SAMPLE_EVERY`) while a client publishes, so this test
/// takes about 11 s: one sample for the baseline, one for the burst. The window is set below
/// the configuration's whole seconds (4.5 s, a little under the sample interval) so that each
/// sample closes exactly one period.
#[tokio::test]
async fn a_burst_over_a_clients_own_baseline_is_detected() {
    let fixture = Fixture::new();
    let mut burst_rule = rule(
        "burst",
        RuleKind::MessageRate,
        Per::ClientId,
        Duration::from_millis(4500),
        50,
        &[Response::Event, Response::Metric],
    );
    burst_rule.factor = 4;
    burst_rule.warmup = 1;
    let server = fixture.start(|c| c.detect.rules.push(burst_rule)).await;
    let id = common::unique("meter");
    let (mut raw, code) = connect_from(server.addr, local(0, 0, 1), &login("bob", &id)).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let topic = format!("devices/{id}/power");
    let mut one = BytesMut::new();
    let publish = common::publish(&topic, QoS::AtMostOnce, 0, b"42.0");
    Encoder::new(ProtocolVersion::V5)
        .encode(&publish, &mut one)
        .unwrap();
    let started = Instant::now();
    // The baseline: five messages a second for 5.5 s (the first sample holds about 25).
    while started.elapsed() < Duration::from_millis(5500) {
        raw.send_bytes(&one).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(fixture.detections("burst").is_empty());
    // The burst: a hundred messages every 100 ms (about 5000 in the next sample; even if the
    // first batch fell into the baseline's sample, the limit is 4 x 125 = 500) until the
    // rule fires.
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 100).collect();
    let deadline = Instant::now() + WAIT;
    let detection = loop {
        raw.send_bytes(&batch).await;
        if let Some(found) = fixture.detections("burst").into_iter().next() {
            break found;
        }
        assert!(Instant::now() < deadline, "{:#?}", fixture.events());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        detection["target"],
        format!("client id {id}"),
        "{detection}"
    );
    assert_eq!(detection["client_id"], id.as_str(), "{detection}");
    let text = reason(&detection);
    assert!(
        text.starts_with("burst (message_rate): ") && text.contains(" messages published in 4 s"),
        "{detection}"
    );
    assert!(text.ends_with("; responses: event, metric"), "{detection}");
    // What was measured is the burst's sample, over its limit.
    let measured: u64 = text["burst (message_rate): ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(measured >= 1000, "{detection}");
    assert_alive(&mut raw).await;
    fixture
        .wait_metrics(
            &server,
            &["bulwark_detections_total{rule=\"burst\",response=\"metric\"} 1"],
        )
        .await;
    server.stop().await;
}

/// `[bans] exempt` says "never banned automatically": a ban a rule makes on a network must
/// not take in an exempt address inside it (docs/detection.md advises exempting the address of
/// a gateway that many devices share).
#[tokio::test]
async fn a_network_ban_spares_an_exempt_address_inside_the_network() {
    let fixture = Fixture::new();
    let server = fixture
        .start(|c| {
            c.bans.exempt = vec![bulwark_acl::Cidr::parse("127.0.5.1/32").unwrap()];
            c.detect.rules.push(rule(
                "guessing",
                RuleKind::FailedLogins,
                Per::Network,
                MINUTE,
                3,
                &[Response::Event, Response::Metric, Response::Ban],
            ));
        })
        .await;
    let (mut gateway, code) =
        connect_from(server.addr, local(0, 5, 1), &login("alice", "gateway")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    for n in 0..3 {
        let guess = with_password(ProtocolVersion::V5, "bob", "g", &format!("guess {n}"));
        let (_, code) = connect_from(server.addr, local(0, 5, 2), &guess).await;
        assert_eq!(code, Some(ReasonCode::BadUserNameOrPassword), "guess {n}");
    }
    let detection = fixture.wait_detection("guessing").await;
    assert_eq!(detection["target"], "network 127.0.5.0/24", "{detection}");
    // The exempt gateway keeps its connection and logs in again.
    assert_alive(&mut gateway).await;
    let (_, code) = connect_from(server.addr, local(0, 5, 1), &login("alice", "gateway-2")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    server.stop().await;
}

// ----- shared certificates -------------------------------------------------------------------

/// A client certificate of `cn` signed by a fresh CA, the server's certificate for
/// `localhost`, and TLS settings that require a client certificate.
struct CertificateFiles {
    server: bulwark_server::tls::TlsSettings,
    client: Arc<rustls::ClientConfig>,
}

fn certificate_files(dir: &std::path::Path, cn: &str) -> CertificateFiles {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf = |stem: &str, cn: &str, names: Vec<String>, purpose| {
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        common::write_private_key(&dir.join(format!("{stem}.key")), &key.serialize_pem());
    };
    leaf(
        "server",
        "localhost",
        vec!["localhost".to_owned()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    leaf(
        "client",
        cn,
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let mut server =
        bulwark_server::tls::TlsSettings::new(dir.join("server.pem"), dir.join("server.key"));
    server.client_auth = bulwark_server::tls::ClientAuth::Required;
    server.client_ca = Some(dir.join("ca.pem"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_file(dir.join("client.pem")).unwrap()],
        PrivateKeyDer::from_pem_file(dir.join("client.key")).unwrap(),
    )
    .unwrap();
    CertificateFiles {
        server,
        client: Arc::new(client),
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection from `from` with the client certificate, logged in over MQTT 5.0 with
/// client id `id` (the certificate is the credential).
async fn certificate_login(
    addr: SocketAddr,
    from: IpAddr,
    client: &Arc<rustls::ClientConfig>,
    id: &str,
) -> Tls {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client.clone());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    let mut connect = BytesMut::new();
    Encoder::new(ProtocolVersion::V5)
        .encode(&connect_packet(ProtocolVersion::V5, id), &mut connect)
        .unwrap();
    tls.write_all(&connect).await.unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, tls.read_exact(&mut connack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((connack[0], connack[3]), (0x20, 0), "CONNACK success");
    tls
}

/// A `shared_credential` rule per certificate counts the networks a certificate is logged in
/// from at once: one device that moves from network to network, logging out of each before
/// logging in from the next, is never in three at once.
#[tokio::test]
async fn one_certificate_moving_between_networks_is_not_shared() {
    let fixture = Fixture::new();
    let files = certificate_files(&fixture.dir, "sensor-1");
    let mut config = common::test_config();
    fixture.apply(&mut config);
    // The barrier's plain listener first, then one that takes client certificates.
    config.listeners.push(bulwark_server::ListenerConfig::tls(
        "mtls",
        "127.0.0.1:0".parse().unwrap(),
        files.server.clone(),
    ));
    config.detect.rules.push(rule(
        "shared-cert",
        RuleKind::SharedCredential,
        Per::Certificate,
        MINUTE,
        3,
        &[Response::Event, Response::Metric],
    ));
    config.detect.rules.push(barrier_rule());
    let server = bulwark_server::Server::bind(config).await.unwrap();
    let (plain, mtls) = (server.local_addrs()[0], server.local_addrs()[1]);
    let admin = server.admin_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    // The device logs in from three networks, one after the other.
    for (n, from) in [local(0, 1, 1), local(0, 2, 1), local(0, 3, 1)]
        .into_iter()
        .enumerate()
    {
        let id = format!("sensor-1-{n}");
        let mut tls = certificate_login(mtls, from, &files.client, &id).await;
        tls.write_all(&[0xE0, 0]).await.unwrap();
        fixture.wait_gone(admin, &id).await;
    }
    let login = fixture
        .wait_event("the certificate's login", |e| {
            e["kind"] == "auth_success" && e["client_id"] == "sensor-1-2"
        })
        .await;
    assert_eq!(login["method"], "certificate", "{login}");
    fixture.barrier(plain).await;
    assert!(
        fixture.detections("shared-cert").is_empty(),
        "never in two networks at once: {:#?}",
        fixture.detections("shared-cert")
    );

    // Three at once is shared.
    let mut live = Vec::new();
    for (n, from) in [local(0, 4, 1), local(0, 5, 1), local(0, 6, 1)]
        .into_iter()
        .enumerate()
    {
        live.push(certificate_login(mtls, from, &files.client, &format!("at-once-{n}")).await);
    }
    let detection = fixture.wait_detection("shared-cert").await;
    assert_eq!(detection["target"], "certificate sensor-1", "{detection}");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
}

// ----- throttles -----------------------------------------------------------------------------

/// A QoS 1 publisher that sends its next PUBLISH only once the last one was acknowledged:
/// one message in flight, so that a throttle's pauses show in the PUBACKs at once (a client
/// that sends many messages in one write has them all read before the pause).
struct Publisher {
    raw: Raw,
    topic: String,
    next: u16,
}

impl Publisher {
    fn new(raw: Raw, topic: &str) -> Self {
        Self {
            raw,
            topic: topic.to_owned(),
            next: 0,
        }
    }

    /// Publishes one QoS 1 message to `topic` and returns the PUBACK's reason code, with
    /// 0x10 No matching subscribers (accepted, nobody subscribed) as Success. `deliveries`:
    /// whether a PUBLISH to this client may arrive meanwhile (skipped), or fails the test.
    async fn publish_to(&mut self, topic: &str, deliveries: bool) -> ReasonCode {
        self.next = self.next % u16::MAX + 1;
        let id = self.next;
        self.raw
            .send(&common::publish(topic, QoS::AtLeastOnce, id, b"21.5"))
            .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.raw.recv_within(left).await {
                Recv::Packet(Packet::PubAck(ack)) if ack.packet_id == common::pid(id) => {
                    return match ack.reason_code {
                        ReasonCode::NoMatchingSubscribers => ReasonCode::Success,
                        code => code,
                    };
                }
                Recv::Packet(Packet::Publish(publish)) if !deliveries => {
                    panic!("unexpected PUBLISH before the PUBACK of {topic}: {publish:?}")
                }
                Recv::Packet(_) => {}
                other => panic!("expected the PUBACK of {topic}, got {other:?}"),
            }
        }
    }

    /// Publishes one message after the other to its own topic for `span`; how many were
    /// acknowledged within it (the last one is awaited, so nothing is left in flight).
    async fn acked_within(&mut self, span: Duration) -> u64 {
        let end = Instant::now() + span;
        let mut acked = 0;
        while Instant::now() < end {
            let topic = self.topic.clone();
            assert_eq!(self.publish_to(&topic, true).await, ReasonCode::Success);
            if Instant::now() <= end {
                acked += 1;
            }
        }
        acked
    }
}

/// The most messages a throttle of `rate`/s (burst: as many) lets through in `span`, with a
/// little slack for the edges of the measurement.
fn throttled_at_most(rate: u64, span: Duration) -> u64 {
    rate + (rate as f64 * span.as_secs_f64()).ceil() as u64 + 3
}

/// What a client that publishes one message after the other gets through without a throttle
/// in one second at the least, on a loaded machine (far above any throttle measured here).
const UNTHROTTLED_PER_SECOND: u64 = 100;

/// A `root_wildcard` rule per user that throttles to 5 messages a second for 10 minutes: the
/// user's live connection drops from its unthrottled rate to about 5 a second within a read
/// of the detection, a new connection of the user logging in meanwhile is throttled from its
/// first message, and another user is not throttled. The event names the throttle, and the
/// metric counts it.
#[tokio::test]
async fn a_throttle_slows_the_users_live_and_new_connections_only() {
    let fixture = Fixture::new();
    let mut slow = rule(
        "slow",
        RuleKind::RootWildcard,
        Per::User,
        Duration::from_secs(3600),
        1,
        &[Response::Event, Response::Throttle],
    );
    slow.throttle_messages_per_second = 5;
    slow.duration = Duration::from_secs(600);
    let server = fixture.start(|c| c.detect.rules.push(slow)).await;
    let (raw, code) = connect_from(server.addr, local(0, 0, 1), &login("bob", "bob-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let mut bob = Publisher::new(raw, "devices/bob-1/power");
    let free = bob.acked_within(Duration::from_secs(1)).await;
    assert!(
        free >= UNTHROTTLED_PER_SECOND,
        "unthrottled: {free} message(s) in 1 s"
    );

    // Bob asks for `#` (denied by the ACL, counted by the rule).
    let ack = bob
        .raw
        .subscribe(1, "#", SubscriptionOptions::qos(QoS::AtMostOnce), None)
        .await;
    assert_eq!(ack.reason_codes[0], ReasonCode::NotAuthorized);
    let detection = fixture.wait_detection("slow").await;
    assert_eq!(detection["target"], "user bob", "{detection}");
    assert_eq!(detection["username"], "bob", "{detection}");
    assert_eq!(
        reason(&detection),
        "slow (root_wildcard): 1 subscriptions to wildcards near the root in 3600 s (limit 1); \
         responses: event, throttle to 5 message(s)/s for 600 s"
    );

    // The live connection: at most the burst and 5 a second, but not blocked.
    let span = Duration::from_secs(2);
    let throttled = bob.acked_within(span).await;
    assert!(
        (5..=throttled_at_most(5, span)).contains(&throttled),
        "throttled: {throttled} message(s) in {span:?} (unthrottled: {free} in 1 s)"
    );
    // A new connection of bob, from another address.
    let (raw, code) = connect_from(server.addr, local(0, 9, 1), &login("bob", "bob-2")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let mut second = Publisher::new(raw, "devices/bob-2/power");
    let throttled = second.acked_within(span).await;
    assert!(
        (5..=throttled_at_most(5, span)).contains(&throttled),
        "a new login of bob: {throttled} message(s) in {span:?}"
    );
    // Alice, on bob's address, is not throttled.
    let (raw, code) = connect_from(server.addr, local(0, 0, 1), &login("alice", "alice-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let mut alice = Publisher::new(raw, "devices/alice-1/power");
    let hers = alice.acked_within(Duration::from_secs(1)).await;
    assert!(
        hers >= UNTHROTTLED_PER_SECOND,
        "alice: {hers} message(s) in 1 s"
    );
    fixture
        .wait_metrics(
            &server,
            &["bulwark_detections_total{rule=\"slow\",response=\"throttle\"} 1"],
        )
        .await;
    server.stop().await;
}

/// A throttle of 3 s: the live connection is throttled until it ends, and gets its own
/// (unlimited) rate back within about a second after (the detection task forgets ended
/// restrictions every second, and the driver makes its limiter again at its next read).
#[tokio::test]
async fn a_throttle_lifts_from_a_live_connection_when_it_ends() {
    let fixture = Fixture::new();
    let duration = Duration::from_secs(3);
    let mut slow = rule(
        "slow",
        RuleKind::RootWildcard,
        Per::ClientId,
        Duration::from_secs(3600),
        1,
        &[Response::Event, Response::Metric, Response::Throttle],
    );
    slow.throttle_messages_per_second = 5;
    slow.duration = duration;
    let server = fixture.start(|c| c.detect.rules.push(slow)).await;
    let (raw, code) = connect_from(server.addr, local(0, 0, 1), &login("bob", "bob-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let mut bob = Publisher::new(raw, "devices/bob-1/power");
    let free = bob.acked_within(Duration::from_secs(1)).await;
    assert!(
        free >= UNTHROTTLED_PER_SECOND,
        "unthrottled: {free} message(s) in 1 s"
    );

    // The throttle starts after `before` and no later than `seen`.
    let before = Instant::now();
    let ack = bob
        .raw
        .subscribe(1, "#", SubscriptionOptions::qos(QoS::AtMostOnce), None)
        .await;
    assert_eq!(ack.reason_codes[0], ReasonCode::NotAuthorized);
    let detection = fixture.wait_detection("slow").await;
    let seen = Instant::now();
    assert_eq!(detection["target"], "client id bob-1", "{detection}");
    assert_eq!(
        reason(&detection),
        "slow (root_wildcard): 1 subscriptions to wildcards near the root in 3600 s (limit 1); \
         responses: event, metric, throttle to 5 message(s)/s for 3 s"
    );

    // One message after the other until a quarter of the unthrottled rate gets through in
    // half a second: far above the 2.5 (and the burst of 5) the throttle allows.
    let fast = usize::try_from(UNTHROTTLED_PER_SECOND / 4).unwrap();
    let mut acks: Vec<Instant> = Vec::new();
    let lifted = loop {
        let topic = bob.topic.clone();
        assert_eq!(bob.publish_to(&topic, true).await, ReasonCode::Success);
        let now = Instant::now();
        acks.push(now);
        let recent = acks
            .iter()
            .rev()
            .take_while(|t| now.duration_since(**t) < Duration::from_millis(500))
            .count();
        if recent >= fast {
            break acks[acks.len() - fast];
        }
        assert!(
            now < seen + duration + WAIT,
            "the throttle never lifted: {} message(s) since the detection",
            acks.len()
        );
    };
    // Until the earliest it can end, the throttle held.
    let earliest_end = before + duration;
    let during = acks.iter().filter(|t| **t < earliest_end).count() as u64;
    let held = earliest_end.saturating_duration_since(seen);
    assert!(
        during <= throttled_at_most(5, held),
        "{during} message(s) in the {held:?} the throttle surely held"
    );
    assert!(
        *acks.last().unwrap() >= earliest_end,
        "lifted before it ended: at {:?} after the subscription",
        lifted.duration_since(before)
    );
    // It ended no later than `seen + duration`; it lifts within the expiry check's second
    // (with slack for a loaded machine).
    let latest_end = seen + duration;
    assert!(
        lifted <= latest_end + Duration::from_millis(2500),
        "lifted {:?} after the latest end of the throttle",
        lifted.saturating_duration_since(latest_end)
    );
    fixture
        .wait_metrics(
            &server,
            &[
                "bulwark_detections_total{rule=\"slow\",response=\"metric\"} 1",
                "bulwark_detections_total{rule=\"slow\",response=\"throttle\"} 1",
            ],
        )
        .await;
    server.stop().await;
}

/// Two rules throttle the same user: a strict one (5 a second, for 10 minutes) and later a
/// lenient one (1000 a second). The lowest rate in force applies: the lenient rule firing
/// must not lift the strict rule's throttle before its end.
#[tokio::test]
async fn a_lenient_throttle_does_not_lift_a_stricter_one() {
    let fixture = Fixture::new();
    let mut strict = rule(
        "strict",
        RuleKind::RootWildcard,
        Per::User,
        Duration::from_secs(3600),
        1,
        &[Response::Event, Response::Throttle],
    );
    strict.throttle_messages_per_second = 5;
    strict.duration = Duration::from_secs(600);
    // Fires at the user's second login from another network.
    let mut lenient = rule(
        "lenient",
        RuleKind::SharedCredential,
        Per::User,
        MINUTE,
        2,
        &[Response::Event, Response::Throttle],
    );
    lenient.throttle_messages_per_second = 1000;
    lenient.duration = Duration::from_secs(600);
    let server = fixture
        .start(|c| {
            c.detect.rules.push(strict);
            c.detect.rules.push(lenient);
        })
        .await;
    let (raw, code) = connect_from(server.addr, local(0, 0, 1), &login("bob", "bob-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let mut bob = Publisher::new(raw, "devices/bob-1/power");
    let ack = bob
        .raw
        .subscribe(1, "#", SubscriptionOptions::qos(QoS::AtMostOnce), None)
        .await;
    assert_eq!(ack.reason_codes[0], ReasonCode::NotAuthorized);
    fixture.wait_detection("strict").await;
    let (raw, code) = connect_from(server.addr, local(0, 1, 1), &login("bob", "bob-2")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let mut second = Publisher::new(raw, "devices/bob-2/power");
    let detection = fixture.wait_detection("lenient").await;
    assert_eq!(
        reason(&detection),
        "lenient (shared_credential): logged in from 2 networks at once (limit 2); responses: \
         event, throttle to 1000 message(s)/s for 600 s"
    );
    let span = Duration::from_secs(2);
    for publisher in [&mut bob, &mut second] {
        let throttled = publisher.acked_within(span).await;
        assert!(
            throttled <= throttled_at_most(5, span),
            "{}: {throttled} message(s) in {span:?}",
            publisher.topic
        );
    }
    fixture
        .wait_metrics(
            &server,
            &[
                "bulwark_detections_total{rule=\"strict\",response=\"throttle\"} 1",
                "bulwark_detections_total{rule=\"lenient\",response=\"throttle\"} 1",
            ],
        )
        .await;
    server.stop().await;
}

// ----- quarantine ----------------------------------------------------------------------------

/// Every user may use `devices/{username}/#`; alice may publish to all of `devices/` and
/// subscribe to `quarantine/#`; the group `quarantine` may only publish to
/// `quarantine/{client_id}/#`.
const QUARANTINE_ACL: &str = r##"
[[rule]]
permission = "allow"
action = "all"
topic = "devices/{username}/#"

[[rule]]
permission = "allow"
action = "publish"
user = "alice"
topic = "devices/#"

[[rule]]
permission = "allow"
action = "subscribe"
user = "alice"
topic = "quarantine/#"

[[rule]]
permission = "allow"
action = "publish"
group = "quarantine"
topic = "quarantine/{client_id}/#"
"##;

/// A `root_wildcard` rule per user that quarantines in the ACL group `quarantine`: bob's live
/// connection loses its own rights and its subscription at once and keeps only the group's
/// (publish to `quarantine/{client_id}/#`); a new login of bob meanwhile is quarantined from
/// the start; mallory is not affected. The event names the quarantine, and the metric counts
/// it.
#[tokio::test]
async fn a_quarantine_fences_in_the_users_live_and_new_connections_only() {
    let fixture = Fixture::new();
    std::fs::write(fixture.dir.join("acl.toml"), QUARANTINE_ACL).unwrap();
    let mut fence = rule(
        "fence",
        RuleKind::RootWildcard,
        Per::User,
        Duration::from_secs(3600),
        1,
        &[Response::Event, Response::Metric, Response::Quarantine],
    );
    fence.quarantine_group = Some("quarantine".to_owned());
    let server = fixture.start(|c| c.detect.rules.push(fence)).await;

    let (raw, code) = connect_from(server.addr, local(0, 0, 1), &login("alice", "alice-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let mut alice = Publisher::new(raw, "devices/bob/from-alice");
    alice
        .raw
        .subscribe_qos(1, "quarantine/#", QoS::AtMostOnce)
        .await;
    let (raw, code) = connect_from(server.addr, local(0, 0, 2), &login("bob", "bob-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let mut bob = Publisher::new(raw, "devices/bob/x");
    bob.raw
        .subscribe_qos(1, "devices/bob/#", QoS::AtMostOnce)
        .await;
    let (raw, code) =
        connect_from(server.addr, local(0, 0, 3), &login("mallory", "mallory-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let mut mallory = Publisher::new(raw, "devices/mallory/x");
    mallory
        .raw
        .subscribe_qos(1, "devices/mallory/#", QoS::AtMostOnce)
        .await;

    // Before: bob publishes to his own tree and receives alice's message there; the
    // quarantine topic is not his.
    assert_eq!(
        bob.publish_to("devices/bob/x", true).await,
        ReasonCode::Success
    );
    assert_eq!(
        alice.publish_to("devices/bob/from-alice", true).await,
        ReasonCode::Success
    );
    loop {
        let publish = bob.raw.recv_publish().await;
        if publish.topic.as_str() == "devices/bob/from-alice" {
            break;
        }
    }
    assert_eq!(
        bob.publish_to("quarantine/bob-1/x", true).await,
        ReasonCode::NotAuthorized
    );

    // Bob asks for `#`.
    let ack = bob
        .raw
        .subscribe(2, "#", SubscriptionOptions::qos(QoS::AtMostOnce), None)
        .await;
    assert_eq!(ack.reason_codes[0], ReasonCode::NotAuthorized);
    let detection = fixture.wait_detection("fence").await;
    assert_eq!(detection["target"], "user bob", "{detection}");
    assert_eq!(detection["username"], "bob", "{detection}");
    assert_eq!(
        reason(&detection),
        "fence (root_wildcard): 1 subscriptions to wildcards near the root in 3600 s (limit 1); \
         responses: event, metric, quarantine in ACL group quarantine for 600 s (1 live \
         connection(s))"
    );

    // The quarantine reached the engine before anything bob sends after the record (one
    // queue to the engine, in order): his own tree is denied now (5.0: PUBACK 0x87) ...
    assert_eq!(
        bob.publish_to("devices/bob/x", false).await,
        ReasonCode::NotAuthorized
    );
    // ... his subscription is gone: alice's message, routed before bob's next PUBACK, does
    // not come before it ...
    assert_eq!(
        alice.publish_to("devices/bob/from-alice", true).await,
        ReasonCode::Success
    );
    // ... and the quarantine topic is his (alice receives what he sends there).
    assert_eq!(
        bob.publish_to("quarantine/bob-1/x", false).await,
        ReasonCode::Success
    );
    let publish = alice.raw.recv_publish().await;
    assert_eq!(publish.topic.as_str(), "quarantine/bob-1/x");
    let ack = bob
        .raw
        .subscribe(
            3,
            "devices/bob/#",
            SubscriptionOptions::qos(QoS::AtMostOnce),
            None,
        )
        .await;
    assert_eq!(ack.reason_codes[0], ReasonCode::NotAuthorized);

    // A new login of bob, from another network, is quarantined from the start.
    let (raw, code) = connect_from(server.addr, local(0, 9, 1), &login("bob", "bob-2")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let mut again = Publisher::new(raw, "devices/bob/y");
    let ack = again
        .raw
        .subscribe(
            1,
            "devices/bob/#",
            SubscriptionOptions::qos(QoS::AtMostOnce),
            None,
        )
        .await;
    assert_eq!(ack.reason_codes[0], ReasonCode::NotAuthorized);
    assert_eq!(
        again.publish_to("devices/bob/y", false).await,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        again.publish_to("quarantine/bob-2/x", false).await,
        ReasonCode::Success
    );
    // Not another client's quarantine topic.
    assert_eq!(
        again.publish_to("quarantine/bob-1/x", false).await,
        ReasonCode::NotAuthorized
    );
    let publish = alice.raw.recv_publish().await;
    assert_eq!(publish.topic.as_str(), "quarantine/bob-2/x");

    // Mallory keeps her rights and her subscription.
    assert_eq!(
        mallory.publish_to("devices/mallory/x", true).await,
        ReasonCode::Success
    );
    assert_eq!(
        alice.publish_to("devices/mallory/from-alice", true).await,
        ReasonCode::Success
    );
    let publish = mallory.raw.recv_publish().await;
    assert_eq!(publish.topic.as_str(), "devices/mallory/from-alice");
    assert_eq!(
        mallory.publish_to("quarantine/mallory-1/x", true).await,
        ReasonCode::NotAuthorized
    );
    fixture
        .wait_metrics(
            &server,
            &[
                "bulwark_detections_total{rule=\"fence\",response=\"metric\"} 1",
                "bulwark_detections_total{rule=\"fence\",response=\"quarantine\"} 1",
            ],
        )
        .await;
    server.stop().await;
}

/// Two rules quarantine the same user in the same group: one for 10 minutes, then one for
/// 1 s. When the short one ends, the long one still holds: a new login of the user is
/// quarantined.
#[tokio::test]
async fn a_short_quarantine_does_not_end_a_longer_one() {
    let fixture = Fixture::new();
    std::fs::write(fixture.dir.join("acl.toml"), QUARANTINE_ACL).unwrap();
    let mut long = rule(
        "long",
        RuleKind::RootWildcard,
        Per::User,
        Duration::from_secs(3600),
        1,
        &[Response::Event, Response::Quarantine],
    );
    long.quarantine_group = Some("quarantine".to_owned());
    // Fires at the user's second login from another network.
    let short_duration = Duration::from_secs(1);
    let mut short = rule(
        "short",
        RuleKind::SharedCredential,
        Per::User,
        MINUTE,
        2,
        &[Response::Event, Response::Quarantine],
    );
    short.quarantine_group = Some("quarantine".to_owned());
    short.duration = short_duration;
    let server = fixture
        .start(|c| {
            c.detect.rules.push(long);
            c.detect.rules.push(short);
        })
        .await;
    let (raw, code) = connect_from(server.addr, local(0, 0, 1), &login("bob", "bob-1")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let mut bob = Publisher::new(raw, "devices/bob/x");
    let ack = bob
        .raw
        .subscribe(1, "#", SubscriptionOptions::qos(QoS::AtMostOnce), None)
        .await;
    assert_eq!(ack.reason_codes[0], ReasonCode::NotAuthorized);
    fixture.wait_detection("long").await;
    let (_second, code) = connect_from(server.addr, local(0, 1, 1), &login("bob", "bob-2")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    fixture.wait_detection("short").await;
    // The short quarantine has surely ended once its duration has passed since its record.
    tokio::time::sleep(short_duration + Duration::from_millis(100)).await;
    let (raw, code) = connect_from(server.addr, local(0, 0, 1), &login("bob", "bob-3")).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let mut third = Publisher::new(raw, "devices/bob/y");
    assert_eq!(
        third.publish_to("devices/bob/y", false).await,
        ReasonCode::NotAuthorized,
        "the long quarantine still holds"
    );
    assert_eq!(
        third.publish_to("quarantine/bob-3/x", false).await,
        ReasonCode::Success
    );
    assert_eq!(
        bob.publish_to("devices/bob/x", false).await,
        ReasonCode::NotAuthorized
    );
    server.stop().await;
}

// ----- protocol violations -------------------------------------------------------------------

/// Sends a packet of the reserved type 0 after logging in: the broker closes the connection
/// for a malformed packet (a protocol violation).
async fn malformed_from(addr: SocketAddr, from: IpAddr, id: &str) {
    let (mut raw, code) = connect_from(addr, from, &login("mallory", id)).await;
    assert_eq!(code, Some(ReasonCode::Success));
    raw.send_bytes(&[0x00, 0x00]).await;
    let packets = raw.until_closed(WAIT).await;
    assert!(
        packets.iter().any(|p| matches!(p, Packet::Disconnect(d)
            if d.reason_code == ReasonCode::MalformedPacket)),
        "{packets:?}"
    );
}

/// A `protocol_violations` rule per network counts the connections closed for breaking the
/// protocol per /24: two from each of two networks do not reach its threshold of 3, a third
/// from one of them does, and the detection names that network only.
#[tokio::test]
async fn protocol_violations_from_one_network_are_detected() {
    let fixture = Fixture::new();
    let server = fixture
        .start(|c| {
            c.detect.rules.push(rule(
                "abuse",
                RuleKind::ProtocolViolations,
                Per::Network,
                MINUTE,
                3,
                &[Response::Event, Response::Metric],
            ));
            c.detect.rules.push(barrier_rule());
        })
        .await;
    for (n, from) in [
        local(0, 7, 1),
        local(0, 8, 1),
        local(0, 7, 2),
        local(0, 8, 2),
    ]
    .into_iter()
    .enumerate()
    {
        malformed_from(server.addr, from, &format!("broken-{n}")).await;
    }
    fixture
        .wait_event("the fourth violation", |e| {
            e["kind"] == "protocol_violation" && e["client_id"] == "broken-3"
        })
        .await;
    fixture.barrier(server.addr).await;
    assert!(
        fixture.detections("abuse").is_empty(),
        "{:#?}",
        fixture.detections("abuse")
    );
    malformed_from(server.addr, local(0, 7, 3), "broken-4").await;
    let detection = fixture.wait_detection("abuse").await;
    assert_eq!(detection["target"], "network 127.0.7.0/24", "{detection}");
    assert!(detection.get("username").is_none(), "{detection}");
    assert_eq!(
        reason(&detection),
        "abuse (protocol_violations): 3 connections closed for protocol violations in 60 s \
         (limit 3); responses: event, metric"
    );
    fixture
        .wait_metrics(
            &server,
            &["bulwark_detections_total{rule=\"abuse\",response=\"metric\"} 1"],
        )
        .await;
    assert_eq!(fixture.detections("abuse").len(), 1);
    server.stop().await;
}

// ----- message size --------------------------------------------------------------------------

/// A client that publishes small messages and then large ones: a `message_size` rule fires
/// once the mean size per PUBLISH is over `factor` times its own baseline. As for the message
/// rate, this takes about 11 s: one sample (every 5 s) for the baseline, one for the large
/// messages, with the window set just under the sample interval.
#[tokio::test]
async fn messages_far_larger_than_a_clients_own_are_detected() {
    let fixture = Fixture::new();
    let mut size_rule = rule(
        "bulky",
        RuleKind::MessageSize,
        Per::ClientId,
        Duration::from_millis(4500),
        1000,
        &[Response::Event, Response::Metric],
    );
    size_rule.factor = 4;
    size_rule.warmup = 1;
    let server = fixture.start(|c| c.detect.rules.push(size_rule)).await;
    let id = common::unique("meter");
    let (mut raw, code) = connect_from(server.addr, local(0, 0, 1), &login("bob", &id)).await;
    assert_eq!(code, Some(ReasonCode::Success));
    let topic = format!("devices/{id}/power");
    let encode = |payload: &'static [u8]| {
        let mut bytes = BytesMut::new();
        Encoder::new(ProtocolVersion::V5)
            .encode(
                &common::publish(&topic, QoS::AtMostOnce, 0, payload),
                &mut bytes,
            )
            .unwrap();
        bytes
    };
    let small = encode(b"42.0");
    static LARGE: [u8; 2000] = [b'x'; 2000];
    let large = encode(&LARGE);
    let started = Instant::now();
    // The baseline: small messages, ten a second, for 5.5 s.
    while started.elapsed() < Duration::from_millis(5500) {
        raw.send_bytes(&small).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fixture.detections("bulky").is_empty());
    // Then large ones, ten a second, until the rule fires.
    let deadline = Instant::now() + WAIT;
    let detection = loop {
        raw.send_bytes(&large).await;
        if let Some(found) = fixture.detections("bulky").into_iter().next() {
            break found;
        }
        assert!(Instant::now() < deadline, "{:#?}", fixture.events());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        detection["target"],
        format!("client id {id}"),
        "{detection}"
    );
    let text = reason(&detection);
    let measured: u64 = text
        .strip_prefix("bulky (message_size): a mean of ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{detection}"))
        .parse()
        .unwrap();
    // What was measured is about the large messages' size (headers included).
    assert!((1000..=2200).contains(&measured), "{detection}");
    assert!(text.ends_with("; responses: event, metric"), "{detection}");
    assert_alive(&mut raw).await;
    fixture
        .wait_metrics(
            &server,
            &["bulwark_detections_total{rule=\"bulky\",response=\"metric\"} 1"],
        )
        .await;
    server.stop().await;
}
