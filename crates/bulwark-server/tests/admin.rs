//! The admin listener end to end: real HTTP over loopback against a running broker, real MQTT
//! clients, the token file and the audit file on disk.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulwark_auth::password::{Argon2Params, PasswordStore, hash_password};
use bulwark_auth::token::{Role, TokenStore};
use bulwark_proto::{ProtocolVersion, QoS, ReasonCode};
use bulwark_server::{AdminSettings, Server, ServerConfig};
use common::{Raw, WAIT, connect_packet, start_with, unique};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DASHBOARD_PASSWORD: &str = "quartz-Meadow-lantern-58";

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One HTTP/1.1 request on its own connection, as a client such as curl sends it.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    json: Option<&str>,
) -> Answer {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = authorization
        .iter()
        .map(|value| ("Authorization", value.as_str()))
        .collect();
    http_with(addr, method, path, &headers, json).await
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// A data directory with a token file (a viewer `watch` and an operator `ops`), the audit
/// file and the ban file.
struct Fixture {
    dir: PathBuf,
    viewer: String,
    operator: String,
    admin: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("bulwark-admin"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut tokens = TokenStore::new();
        let (_, viewer) = tokens.issue("watch", Role::Viewer, now(), None).unwrap();
        let (_, operator) = tokens.issue("ops", Role::Operator, now(), None).unwrap();
        let (_, admin) = tokens.issue("root", Role::Admin, now(), None).unwrap();
        std::fs::write(dir.join("tokens.toml"), tokens.to_toml()).unwrap();
        Self {
            dir,
            viewer,
            operator,
            admin,
        }
    }

    fn apply(&self, config: &mut ServerConfig) {
        // Dashboard users: carol operates, dave has no dashboard role.
        let mut store = PasswordStore::new();
        for (name, groups) in [("carol", vec!["bulwark-operator"]), ("dave", vec!["staff"])] {
            let hash = hash_password(DASHBOARD_PASSWORD, &Argon2Params::default()).unwrap();
            store
                .add(name, &hash, groups.into_iter().map(str::to_owned).collect())
                .unwrap();
        }
        std::fs::write(self.dir.join("passwords.toml"), store.to_toml()).unwrap();
        config.auth.password_file = Some(self.dir.join("passwords.toml"));
        let mut admin = AdminSettings::new(self.dir.join("tokens.toml"));
        admin.bind = "127.0.0.1:0".parse().unwrap();
        config.admin = Some(admin);
        config.audit.file = Some(self.dir.join("audit.jsonl"));
        config.bans.file = Some(self.dir.join("bans.toml"));
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until the audit file holds an event `pick` accepts (the file is written by its
    /// own thread).
    async fn wait_event(
        &self,
        what: &str,
        pick: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
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
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn an_operator_lists_inspects_and_kicks_a_client_and_every_change_is_recorded() {
    let fixture = Fixture::new();
    let server = start_with(|c| fixture.apply(c)).await;
    let admin = server.admin.unwrap();
    let (viewer, operator) = (
        Some(fixture.viewer.as_str()),
        Some(fixture.operator.as_str()),
    );
    let (mut device, ack) = Raw::v5(server.addr, "dev-1").await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    device
        .subscribe_qos(1, "fleet/dev-1/cmd", QoS::AtLeastOnce)
        .await;
    let (_other, _) = Raw::v5(server.addr, "gateway-7").await;

    let list = http(admin, "GET", "/api/v1/clients", viewer, None).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.header("cache-control"), Some("no-store"));
    let items = list.json()["items"].as_array().unwrap().clone();
    let ids: Vec<&str> = items
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dev-1", "gateway-7"]);
    assert_eq!(items[0]["listener"], "test");
    assert!(
        items[0]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    // A page of one, then the next.
    let first = http(admin, "GET", "/api/v1/clients?limit=1", viewer, None)
        .await
        .json();
    assert_eq!(first["items"][0]["client_id"], "dev-1");
    assert_eq!(first["next"], "dev-1");
    let second = http(
        admin,
        "GET",
        "/api/v1/clients?limit=1&after=dev-1",
        viewer,
        None,
    )
    .await
    .json();
    assert_eq!(second["items"][0]["client_id"], "gateway-7");
    assert!(second["next"].is_null());
    let filtered = http(admin, "GET", "/api/v1/clients?client_id=gate", viewer, None)
        .await
        .json();
    assert_eq!(filtered["items"].as_array().unwrap().len(), 1);

    let detail = http(admin, "GET", "/api/v1/clients/dev-1", viewer, None).await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    let detail = detail.json();
    assert_eq!(detail["protocol"], "5.0");
    assert_eq!(detail["subscriptions"][0]["filter"], "fleet/dev-1/cmd");
    assert_eq!(detail["subscriptions"][0]["qos"], 1);
    assert_eq!(detail["inflight"], 0);
    let missing = http(admin, "GET", "/api/v1/clients/ghost", viewer, None).await;
    assert_eq!(missing.status, 404);

    // A viewer may look, not kick; a wrong token is refused like a missing one.
    let forbidden = http(admin, "POST", "/api/v1/clients/dev-1/kick", viewer, None).await;
    assert_eq!(forbidden.status, 403);
    let wrong = http(
        admin,
        "GET",
        "/api/v1/clients",
        Some("bwk_0123456789abcdef_nope"),
        None,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));

    let kicked = http(
        admin,
        "POST",
        "/api/v1/clients/dev-1/kick",
        operator,
        Some(r#"{"reason_code": 152}"#),
    )
    .await;
    assert_eq!(kicked.status, 204, "{}", kicked.body);
    device
        .expect_disconnect(ReasonCode::AdministrativeAction)
        .await;
    let bad_code = http(
        admin,
        "POST",
        "/api/v1/clients/gateway-7/kick",
        operator,
        Some(r#"{"reason_code": 0}"#),
    )
    .await;
    assert_eq!(bad_code.status, 400, "{}", bad_code.body);
    assert!(bad_code.body.contains("reason_code"), "{}", bad_code.body);

    let done = fixture
        .wait_event("the kick", |e| {
            e["kind"] == "admin_action" && e["reason"] == "done"
        })
        .await;
    assert!(
        done["actor"].as_str().unwrap().starts_with("token:ops"),
        "{done}"
    );
    assert_eq!(done["action"], "POST /api/v1/clients/dev-1/kick");
    assert_eq!(done["target"], "client id \"dev-1\"");
    assert!(done["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
    let refused = fixture
        .wait_event("the viewer's attempt", |e| {
            e["kind"] == "admin_action"
                && e["actor"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("token:watch"))
        })
        .await;
    assert_eq!(refused["reason"], "forbidden: needs the operator role");
    fixture
        .wait_event("the bad token", |e| e["kind"] == "admin_auth_failure")
        .await;
    fixture
        .wait_event("the forced disconnect", |e| {
            e["kind"] == "forced_disconnect" && e["client_id"] == "dev-1"
        })
        .await;

    let metrics = http(admin, "GET", "/metrics", viewer, None).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    for expected in [
        "bulwark_security_events_total{kind=\"admin_auth_failure\",method=\"token\",action=\"\"} 1",
        "bulwark_security_events_total{kind=\"admin_action\",method=\"token\",action=\"\"} 3",
        "bulwark_engine_up 1",
        "bulwark_connections{listener=\"test\"} ",
        "# EOF",
    ] {
        assert!(
            metrics.body.contains(expected),
            "{expected} not in\n{}",
            metrics.body
        );
    }
    let ready = http(admin, "GET", "/api/v1/ready", viewer, None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["ready"], true);
    let openapi = http(admin, "GET", "/api/v1/openapi.json", viewer, None).await;
    assert_eq!(openapi.json()["info"]["title"], "Bulwark admin API");
    server.stop().await;
}

/// What a fresh connection with `id` is answered.
async fn connack(addr: SocketAddr, id: &str) -> ReasonCode {
    let (_raw, ack) = Raw::connect(addr, &connect_packet(ProtocolVersion::V5, id)).await;
    ack.reason_code
}

#[tokio::test]
async fn a_ban_from_the_api_closes_the_client_keeps_it_out_and_lifts() {
    let fixture = Fixture::new();
    let server = start_with(|c| fixture.apply(c)).await;
    let admin = server.admin.unwrap();
    let operator = Some(fixture.operator.as_str());
    let (mut victim, _) = Raw::v5(server.addr, "victim").await;

    let added = http(
        admin,
        "POST",
        "/api/v1/bans",
        operator,
        Some(r#"{"client_id": "victim", "duration_seconds": 600, "reason": "stolen device"}"#),
    )
    .await;
    assert_eq!(added.status, 201, "{}", added.body);
    let added = added.json();
    assert_eq!(added["by"], "admin:ops");
    assert_eq!(added["client_id"], "victim");
    assert!(added["expires"].as_u64().unwrap() >= now() + 590);
    victim
        .expect_disconnect(ReasonCode::AdministrativeAction)
        .await;
    assert_eq!(connack(server.addr, "victim").await, ReasonCode::Banned);
    assert_eq!(connack(server.addr, "bystander").await, ReasonCode::Success);

    let list = http(
        admin,
        "GET",
        "/api/v1/bans",
        Some(fixture.viewer.as_str()),
        None,
    )
    .await
    .json();
    assert_eq!(list[0]["reason"], "stolen device");
    let file = std::fs::read_to_string(fixture.dir.join("bans.toml")).unwrap();
    assert!(
        file.contains("client_id = \"victim\"") && file.contains("admin:ops"),
        "{file}"
    );

    let both = http(
        admin,
        "POST",
        "/api/v1/bans",
        operator,
        Some(r#"{"address": "10.0.0.1", "client_id": "x"}"#),
    )
    .await;
    assert_eq!(both.status, 400, "{}", both.body);
    let lifted = http(
        admin,
        "DELETE",
        "/api/v1/bans?client_id=victim",
        operator,
        None,
    )
    .await;
    assert_eq!(lifted.status, 204, "{}", lifted.body);
    assert_eq!(connack(server.addr, "victim").await, ReasonCode::Success);
    let again = http(
        admin,
        "DELETE",
        "/api/v1/bans?client_id=victim",
        operator,
        None,
    )
    .await;
    assert_eq!(again.status, 404, "{}", again.body);
    server.stop().await;
}

#[tokio::test]
async fn failed_tokens_lock_an_address_out_and_token_file_changes_apply_at_once() {
    let fixture = Fixture::new();
    let server = start_with(|c| {
        fixture.apply(c);
        let admin = c.admin.as_mut().unwrap();
        admin.max_failures = 3;
        admin.lockout = Duration::from_secs(600);
    })
    .await;
    let admin = server.admin.unwrap();
    // A token added to the file after the start works at once; a removed one stops working.
    let path = fixture.dir.join("tokens.toml");
    let mut tokens = TokenStore::parse(&std::fs::read_to_string(&path).unwrap(), "t").unwrap();
    let (_, late) = tokens.issue("late", Role::Admin, now(), None).unwrap();
    assert!(tokens.remove("watch"));
    write_later(&path, &tokens.to_toml());
    assert_eq!(
        http(admin, "GET", "/api/v1/health", Some(&late), None)
            .await
            .status,
        200
    );
    assert_eq!(
        http(admin, "GET", "/api/v1/health", Some(&fixture.viewer), None)
            .await
            .status,
        401
    );
    for _ in 0..2 {
        assert_eq!(
            http(
                admin,
                "GET",
                "/api/v1/health",
                Some("bwk_0000000000000000_wrong"),
                None
            )
            .await
            .status,
            401
        );
    }
    // The third failure locks the address out: a wrong token now gets 429, unchecked ...
    let locked = http(
        admin,
        "GET",
        "/api/v1/health",
        Some("bwk_0000000000000000_wrong"),
        None,
    )
    .await;
    assert_eq!(locked.status, 429, "{}", locked.body);
    let retry: u64 = locked.header("retry-after").unwrap().parse().unwrap();
    assert!((590..=600).contains(&retry), "{retry}");
    fixture
        .wait_event("the lockout", |e| {
            e["kind"] == "admin_auth_failure"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("refused for 600 s"))
        })
        .await;
    // ... while a valid token from the same address still works: whoever else uses the
    // address cannot lock its scraper or operator out.
    let valid = http(admin, "GET", "/api/v1/health", Some(&late), None).await;
    assert_eq!(valid.status, 200, "{}", valid.body);
    server.stop().await;
}

/// Rewrites `path` so that its modification time differs from the one the broker read.
fn write_later(path: &Path, text: &str) {
    let before = std::fs::metadata(path).unwrap().modified().unwrap();
    loop {
        std::fs::write(path, text).unwrap();
        if std::fs::metadata(path).unwrap().modified().unwrap() != before {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test]
async fn the_admin_listener_stays_on_loopback() {
    let mut config = common::test_config();
    let mut admin = AdminSettings::new(PathBuf::from("tokens.toml"));
    admin.bind = "0.0.0.0:9883".parse().unwrap();
    config.admin = Some(admin);
    let err = Server::bind(config).await.unwrap_err().to_string();
    assert!(
        err.contains("admin.bind") && err.contains("loopback"),
        "{err}"
    );
}

/// A request with extra headers (a cookie, a CSRF token) on its own connection.
async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    json: Option<&str>,
) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = json.unwrap_or("");
    if json.is_some() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut bytes))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn a_dashboard_user_logs_in_kicks_and_sees_it_in_the_event_stream() {
    let fixture = Fixture::new();
    let server = start_with(|c| fixture.apply(c)).await;
    let admin = server.admin.unwrap();
    let login = |user: &'static str, password: &'static str| {
        let body = format!(r#"{{"username": "{user}", "password": "{password}"}}"#);
        async move { http_with(admin, "POST", "/ui/login", &[], Some(&body)).await }
    };
    assert_eq!(login("carol", "wrong-password-1").await.status, 401);
    assert_eq!(login("nobody", DASHBOARD_PASSWORD).await.status, 401);
    assert_eq!(login("dave", DASHBOARD_PASSWORD).await.status, 403);
    let ok = login("carol", DASHBOARD_PASSWORD).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let cookie = ok
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = ok.json()["csrf"].as_str().unwrap().to_owned();
    let failed = fixture
        .wait_event("the failed dashboard login", |e| {
            e["kind"] == "auth_failure" && e["username"] == "carol" && e["listener"] == "admin"
        })
        .await;
    assert!(failed["remote"].as_str().unwrap().starts_with("127.0.0.1:"));

    // The live stream, opened before the kick.
    let mut stream = TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /api/v1/events/stream HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // The stream subscribes to events before it answers: once its head is here, nothing
    // recorded later can be missed.
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.contains("\r\n\r\n") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no answer to the stream request: {seen}"))
            .unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let (mut device, _) = Raw::v5(server.addr, "sensor-9").await;
    // Without the CSRF token the session cannot change anything.
    let kick = "/api/v1/clients/sensor-9/kick";
    let forged = http_with(admin, "POST", kick, &[("Cookie", &cookie)], None).await;
    assert_eq!(forged.status, 403);
    let kicked = http_with(
        admin,
        "POST",
        kick,
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        None,
    )
    .await;
    assert_eq!(kicked.status, 204, "{}", kicked.body);
    device
        .expect_disconnect(ReasonCode::AdministrativeAction)
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.contains("\"kind\":\"admin_action\"") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no admin_action in the stream: {seen}"))
            .unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains("event: security"), "{seen}");
    assert!(seen.contains("user:carol (operator)"), "{seen}");
    let recent = http_with(
        admin,
        "GET",
        "/api/v1/events?limit=5",
        &[("Cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(recent.status, 200);
    assert!(recent.json().as_array().unwrap().len() <= 5);
    server.stop().await;
}

#[tokio::test]
async fn metrics_cover_the_store_and_memory() {
    let fixture = Fixture::new();
    let store = Box::new(bulwark_store::MemoryImageStore::new());
    let server = common::start_durable(|c| fixture.apply(c), store).await;
    let admin = server.admin.unwrap();
    // A persistent session: its record is committed to the store.
    let mut connect = connect_packet(ProtocolVersion::V5, "keeper");
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(3600);
    let (_keeper, ack) = Raw::connect(server.addr, &connect).await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let metrics = http(admin, "GET", "/metrics", Some(&fixture.viewer), None).await;
    assert_eq!(metrics.status, 200);
    for expected in [
        "# TYPE bulwark_store_commit_seconds histogram",
        "bulwark_store_commit_seconds_bucket{le=\"+Inf\"} ",
        "bulwark_store_failing 0",
        "bulwark_store_commit_failures_total 0",
        "bulwark_memory_resident_bytes ",
        "bulwark_memory_watermark_bytes ",
    ] {
        assert!(
            metrics.body.contains(expected),
            "{expected} not in\n{}",
            metrics.body
        );
    }
    let count_line = metrics
        .body
        .lines()
        .find(|l| l.starts_with("bulwark_store_commit_seconds_count "))
        .unwrap();
    let count: u64 = count_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1, "{count_line}");
    server.stop().await;
}

#[tokio::test]
async fn the_acl_in_force_is_explained_with_the_users_groups() {
    let fixture = Fixture::new();
    std::fs::write(
        fixture.dir.join("acl.toml"),
        r#"
[[rule]]
permission = "allow"
action = "publish"
group = "bulwark-operator"
topics = ["fleet/{client_id}/#"]
max_qos = 1

[[rule]]
permission = "allow"
action = "subscribe"
user = "carol"
topic = "fleet/#"

[[rule]]
permission = "deny"
action = "subscribe"
user = "carol"
topic = "fleet/secret/#"

[[rule]]
permission = "allow"
action = "subscribe"
user = "ghost"
topic = "haunted/#"
"#,
    )
    .unwrap();
    let server = start_with(|c| {
        fixture.apply(c);
        c.acl.file = Some(fixture.dir.join("acl.toml"));
    })
    .await;
    let admin = server.admin.unwrap();
    let viewer = Some(fixture.viewer.as_str());
    let ask = |query: &'static str| async move {
        http(
            admin,
            "GET",
            &format!("/api/v1/acl/explain?{query}"),
            viewer,
            None,
        )
        .await
    };
    let own = ask("action=publish&topic=fleet/gw-1/t&user=carol&client_id=gw-1&qos=1").await;
    assert_eq!(own.status, 200, "{}", own.body);
    let own = own.json();
    assert_eq!(own["allowed"], true);
    assert_eq!(own["groups"][0], "bulwark-operator");
    assert!(
        own["rule"]["origin"]
            .as_str()
            .unwrap()
            .contains("acl.toml:"),
        "{own}"
    );
    let other = ask("action=publish&topic=fleet/gw-2/t&user=carol&client_id=gw-1")
        .await
        .json();
    assert_eq!(other["allowed"], false);
    assert!(other["rule"].is_null(), "the default deny: {other}");
    let qos2 = ask("action=publish&topic=fleet/gw-1/t&user=carol&client_id=gw-1&qos=2")
        .await
        .json();
    assert_eq!(qos2["allowed"], false);
    // A rule depends on the client id: without one there is no answer to give.
    let no_id = ask("action=publish&topic=fleet/gw-1/t&user=carol").await;
    assert_eq!(no_id.status, 400);
    assert!(no_id.body.contains("client_id"), "{}", no_id.body);
    let carved = ask("action=subscribe&topic=fleet/%23&user=carol&client_id=x")
        .await
        .json();
    assert_eq!(carved["allowed"], true);
    assert_eq!(carved["granted_qos"], 2);
    assert!(
        carved["carve_outs"][0]["rule"]
            .as_str()
            .unwrap()
            .contains("fleet/secret/#"),
        "{carved}"
    );
    let sys = ask("action=publish&topic=%24SYS/x&user=carol&client_id=x")
        .await
        .json();
    assert_eq!(sys["allowed"], false);
    let bad = ask("action=publish&topic=a/%23&user=carol&client_id=x").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    // The lint knows the store's users: a rule for a user it does not have never matches.
    let lint = http(admin, "GET", "/api/v1/acl/lint", viewer, None).await;
    assert_eq!(lint.status, 200, "{}", lint.body);
    let lint = lint.json();
    assert!(lint["note"].is_null(), "{lint}");
    let findings = lint["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f["kind"] == "never-matches"
                && f["message"].as_str().unwrap().contains("ghost")),
        "{lint}"
    );
    server.stop().await;
}

/// A 5.0 CONNECT of `user` with `password`: the connection and the CONNACK's reason code.
async fn login(addr: SocketAddr, id: &str, user: &str, password: &str) -> (Raw, ReasonCode) {
    let mut connect = connect_packet(ProtocolVersion::V5, id);
    connect.username = Some(bulwark_proto::MqttString::new(user).unwrap());
    connect.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
    let (raw, ack) = Raw::connect(addr, &connect).await;
    (raw, ack.reason_code)
}

async fn login_code(addr: SocketAddr, id: &str, user: &str, password: &str) -> ReasonCode {
    login(addr, id, user, password).await.1
}

#[tokio::test]
async fn an_admin_manages_users_and_the_changes_apply_to_live_connections() {
    let fixture = Fixture::new();
    let server = start_with(|c| fixture.apply(c)).await;
    let admin = server.admin.unwrap();
    let root = Some(fixture.admin.as_str());
    // An operator may not touch users.
    let forbidden = http(admin, "GET", "/api/v1/users", Some(&fixture.operator), None).await;
    assert_eq!(forbidden.status, 403);

    let added = http(
        admin,
        "POST",
        "/api/v1/users",
        root,
        Some(r#"{"name": "meter-7", "groups": ["meters"]}"#),
    )
    .await;
    assert_eq!(added.status, 201, "{}", added.body);
    let added = added.json();
    let password = added["password"].as_str().unwrap().to_owned();
    assert_eq!(password.len(), 24);
    assert_eq!(added["hash"], "argon2id");
    assert_eq!(added["scram"].as_array().unwrap().len(), 2);
    let again = http(
        admin,
        "POST",
        "/api/v1/users",
        root,
        Some(r#"{"name": "meter-7"}"#),
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.body);
    let weak = http(
        admin,
        "POST",
        "/api/v1/users",
        root,
        Some(r#"{"name": "meter-8", "password": "password"}"#),
    )
    .await;
    assert_eq!(weak.status, 400, "{}", weak.body);
    assert!(weak.body.contains("password"), "{}", weak.body);

    let list = http(admin, "GET", "/api/v1/users", root, None).await;
    assert_eq!(list.status, 200);
    assert!(!list.body.contains("argon2id$"), "no hash: {}", list.body);
    let names: Vec<String> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"meter-7".to_owned()), "{names:?}");

    // The new user logs in at once; disabling closes its connection and refuses the next.
    let (mut live, code) = login(server.addr, "meter-7", "meter-7", &password).await;
    assert_eq!(code, ReasonCode::Success);
    let groups = http(
        admin,
        "PUT",
        "/api/v1/users/meter-7/groups",
        root,
        Some(r#"{"groups": ["meters", "east"]}"#),
    )
    .await;
    assert_eq!(groups.status, 204, "{}", groups.body);
    let disabled = http(admin, "POST", "/api/v1/users/meter-7/disable", root, None).await;
    assert_eq!(disabled.status, 204, "{}", disabled.body);
    live.expect_disconnect(ReasonCode::AdministrativeAction)
        .await;
    assert_eq!(
        login_code(server.addr, "meter-7b", "meter-7", &password).await,
        ReasonCode::BadUserNameOrPassword
    );
    let enabled = http(admin, "POST", "/api/v1/users/meter-7/enable", root, None).await;
    assert_eq!(enabled.status, 204);
    assert_eq!(
        login_code(server.addr, "meter-7c", "meter-7", &password).await,
        ReasonCode::Success
    );
    let removed = http(admin, "DELETE", "/api/v1/users/meter-7", root, None).await;
    assert_eq!(removed.status, 204);
    let gone = http(admin, "DELETE", "/api/v1/users/meter-7", root, None).await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    let store = std::fs::read_to_string(fixture.dir.join("passwords.toml")).unwrap();
    assert!(!store.contains("meter-7"), "{store}");
    fixture
        .wait_event("the disable", |e| {
            e["kind"] == "admin_action"
                && e["action"] == "POST /api/v1/users/meter-7/disable"
                && e["reason"] == "done"
        })
        .await;
    fixture
        .wait_event("the forced disconnect", |e| {
            e["kind"] == "forced_disconnect" && e["username"] == "meter-7"
        })
        .await;
    server.stop().await;
}

#[tokio::test]
async fn an_operator_reloads_the_files_now_and_a_broken_file_reloads_nothing() {
    let fixture = Fixture::new();
    let acl = fixture.dir.join("acl.toml");
    let rule = |topic: &str| {
        format!(
            "[[rule]]\npermission = \"allow\"\naction = \"publish\"\nuser = \"carol\"\ntopic = \"{topic}\"\n"
        )
    };
    std::fs::write(&acl, rule("old/#")).unwrap();
    let server = start_with(|c| {
        fixture.apply(c);
        c.acl.file = Some(acl.clone());
        // Only a reload asked for reads the files again within this test.
        c.tls_watch_interval = Duration::from_secs(3600);
    })
    .await;
    let admin = server.admin.unwrap();
    let (viewer, operator) = (
        Some(fixture.viewer.as_str()),
        Some(fixture.operator.as_str()),
    );
    let allowed = |topic: &'static str| async move {
        let path = format!("/api/v1/acl/explain?action=publish&topic={topic}&user=carol");
        http(admin, "GET", &path, viewer, None).await.json()["allowed"] == true
    };
    assert!(allowed("old/x").await);
    assert_eq!(
        http(admin, "POST", "/api/v1/reload", viewer, None)
            .await
            .status,
        403
    );

    std::fs::write(&acl, "[[rule]]\npermission = \"maybe\"\n").unwrap();
    let broken = http(admin, "POST", "/api/v1/reload", operator, None).await;
    assert_eq!(broken.status, 400, "{}", broken.body);
    assert!(
        broken.body.contains("nothing was reloaded") && broken.body.contains("ACL"),
        "{}",
        broken.body
    );
    assert!(allowed("old/x").await, "the rules in force stay");

    std::fs::write(&acl, rule("new/#")).unwrap();
    let ok = http(admin, "POST", "/api/v1/reload", operator, None).await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    assert!(ok.body.contains("acl.toml"), "{}", ok.body);
    // The watcher reloads on its own task: wait for the new rules, bounded.
    let deadline = Instant::now() + WAIT;
    while !allowed("new/x").await {
        assert!(
            Instant::now() < deadline,
            "the new ACL was not put in force"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!allowed("old/x").await);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_sent_no_client_id_is_listed_and_kicked_by_the_one_it_was_given() {
    let fixture = Fixture::new();
    let server = start_with(|c| fixture.apply(c)).await;
    let admin = server.admin.unwrap();
    let (mut nameless, ack) = Raw::v5(server.addr, "").await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let assigned = ack
        .properties
        .assigned_client_identifier
        .expect("an assigned client identifier")
        .as_str()
        .to_owned();
    let list = http(admin, "GET", "/api/v1/clients", Some(&fixture.viewer), None)
        .await
        .json();
    assert_eq!(list["items"][0]["client_id"], assigned.as_str(), "{list}");
    let path = format!("/api/v1/clients/{assigned}/kick");
    let kicked = http(admin, "POST", &path, Some(&fixture.operator), None).await;
    assert_eq!(kicked.status, 204, "{}", kicked.body);
    nameless
        .expect_disconnect(ReasonCode::AdministrativeAction)
        .await;
    // An empty id names nobody.
    let empty = http(
        admin,
        "POST",
        "/api/v1/clients//kick",
        Some(&fixture.operator),
        None,
    )
    .await;
    assert_ne!(empty.status, 204);
    server.stop().await;
}

/// A 5.0 CONNECT that keeps its session for an hour after the connection ends.
fn persistent(id: &str) -> bulwark_proto::Connect {
    let mut connect = connect_packet(ProtocolVersion::V5, id);
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(3600);
    connect
}

fn strings(list: &serde_json::Value, key: &str) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[key].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn sessions_subscriptions_and_retained_messages_are_listed_a_page_at_a_time_and_deleted() {
    let fixture = Fixture::new();
    let server = start_with(|c| fixture.apply(c)).await;
    let admin = server.admin.unwrap();
    let viewer = Some(fixture.viewer.as_str());
    let operator = Some(fixture.operator.as_str());

    // keep-1: a stored session whose client is away; live-1: connected.
    let (mut keep, _) = Raw::connect(server.addr, &persistent("keep-1")).await;
    keep.subscribe_qos(1, "fleet/+/temp", QoS::AtLeastOnce)
        .await;
    keep.subscribe_qos(2, "$share/g/jobs/#", QoS::AtMostOnce)
        .await;
    keep.send(&bulwark_proto::Disconnect::new(ReasonCode::Success))
        .await;
    keep.until_closed(WAIT).await;
    let (mut live, _) = Raw::connect(server.addr, &persistent("live-1")).await;
    live.subscribe_qos(1, "a/b", QoS::AtMostOnce).await;
    for (n, topic) in ["fleet/1/temp", "fleet/2/temp", "other/x"]
        .iter()
        .enumerate()
    {
        let mut message = common::publish(topic, QoS::AtLeastOnce, n as u16 + 10, b"21.5");
        message.retain = true;
        live.send(&message).await;
        assert!(matches!(
            live.recv().await,
            bulwark_proto::Packet::PubAck(_)
        ));
    }

    // Sessions, a page of one at a time.
    let first = http(admin, "GET", "/api/v1/sessions?limit=1", viewer, None).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    assert_eq!(strings(&first, "client_id"), ["keep-1"]);
    assert_eq!(first["items"][0]["connected"], false);
    assert_eq!(first["items"][0]["subscriptions"], 2);
    let next = first["next"].as_str().unwrap();
    let second = http(
        admin,
        "GET",
        &format!("/api/v1/sessions?limit=1&after={next}"),
        viewer,
        None,
    )
    .await
    .json();
    assert_eq!(strings(&second, "client_id"), ["live-1"]);
    assert_eq!(second["items"][0]["connected"], true);
    assert!(second["next"].is_null(), "{second}");
    let prefixed = http(
        admin,
        "GET",
        "/api/v1/sessions?client_id=live",
        viewer,
        None,
    )
    .await;
    assert_eq!(strings(&prefixed.json(), "client_id"), ["live-1"]);

    // Subscriptions, by client id then filter; the cursor carries both.
    let subs = http(admin, "GET", "/api/v1/subscriptions?limit=2", viewer, None)
        .await
        .json();
    assert_eq!(
        strings(&subs, "filter"),
        ["$share/g/jobs/#", "fleet/+/temp"]
    );
    assert_eq!(subs["items"][1]["qos"], 1);
    let cursor = subs["next"].as_str().unwrap();
    let rest = http(
        admin,
        "GET",
        &format!("/api/v1/subscriptions?limit=2&after={cursor}"),
        viewer,
        None,
    )
    .await
    .json();
    assert_eq!(strings(&rest, "client_id"), ["live-1"]);
    assert!(rest["next"].is_null());
    let exact = http(
        admin,
        "GET",
        "/api/v1/subscriptions?filter=fleet%2F%2B%2Ftemp",
        viewer,
        None,
    )
    .await
    .json();
    assert_eq!(strings(&exact, "client_id"), ["keep-1"]);
    let bad_cursor = http(admin, "GET", "/api/v1/subscriptions?after=zz", viewer, None).await;
    assert_eq!(bad_cursor.status, 400, "{}", bad_cursor.body);

    // Retained messages by filter, without payloads.
    let retained = http(
        admin,
        "GET",
        "/api/v1/retained?filter=fleet%2F%2B%2Ftemp",
        viewer,
        None,
    )
    .await;
    assert_eq!(retained.status, 200, "{}", retained.body);
    let retained = retained.json();
    assert_eq!(
        strings(&retained, "topic"),
        ["fleet/1/temp", "fleet/2/temp"]
    );
    assert_eq!(retained["items"][0]["payload_bytes"], 4);
    assert!(!retained.to_string().contains("21.5"), "{retained}");
    let all = http(admin, "GET", "/api/v1/retained", viewer, None)
        .await
        .json();
    assert_eq!(all["items"].as_array().unwrap().len(), 3, "{all}");
    let bad = http(
        admin,
        "GET",
        "/api/v1/retained?filter=a%2F%23%2Fb",
        viewer,
        None,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Deletions: operators only, recorded, and in force for clients.
    let path = "/api/v1/retained?topic=fleet%2F1%2Ftemp";
    assert_eq!(http(admin, "DELETE", path, viewer, None).await.status, 403);
    let deleted = http(admin, "DELETE", path, operator, None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    assert_eq!(
        http(admin, "DELETE", path, operator, None).await.status,
        404
    );
    let (mut reader, _) = Raw::v5(server.addr, "reader").await;
    reader
        .subscribe_qos(1, "fleet/+/temp", QoS::AtMostOnce)
        .await;
    assert_eq!(reader.recv_publish().await.topic.as_str(), "fleet/2/temp");
    reader.expect_no_publish(common::QUIET).await;

    let connected = http(admin, "DELETE", "/api/v1/sessions/live-1", operator, None).await;
    assert_eq!(connected.status, 409, "{}", connected.body);
    let gone = http(admin, "DELETE", "/api/v1/sessions/keep-1", operator, None).await;
    assert_eq!(gone.status, 204, "{}", gone.body);
    assert_eq!(
        http(admin, "DELETE", "/api/v1/sessions/keep-1", operator, None)
            .await
            .status,
        404
    );
    let (_back, ack) = Raw::connect(server.addr, &persistent("keep-1")).await;
    assert!(!ack.session_present, "the deleted session is not resumed");
    fixture
        .wait_event("the session deletion", |e| {
            e["kind"] == "admin_action"
                && e["action"] == "DELETE /api/v1/sessions/keep-1"
                && e["reason"] == "done"
        })
        .await;
    fixture
        .wait_event("the retained deletion", |e| {
            e["kind"] == "admin_action"
                && e["action"] == "DELETE /api/v1/retained"
                && e["reason"] == "done"
        })
        .await;
    server.stop().await;
}

#[tokio::test]
async fn the_acl_dry_run_lists_what_a_new_acl_would_revoke_and_changes_nothing() {
    let fixture = Fixture::new();
    let acl = fixture.dir.join("acl.toml");
    std::fs::write(
        &acl,
        r#"
[[rule]]
permission = "allow"
action = "subscribe"
user = "carol"
topics = ["fleet/#", "alerts/#"]

[[rule]]
permission = "allow"
action = "publish"
user = "dave"
topic = "fleet/#"
"#,
    )
    .unwrap();
    let server = start_with(|c| {
        fixture.apply(c);
        c.acl.file = Some(acl.clone());
    })
    .await;
    let admin = server.admin.unwrap();
    let operator = Some(fixture.operator.as_str());
    let (mut carol, code) = login(server.addr, "c-1", "carol", DASHBOARD_PASSWORD).await;
    assert_eq!(code, ReasonCode::Success);
    carol.subscribe_qos(1, "fleet/#", QoS::ExactlyOnce).await;
    carol.subscribe_qos(2, "alerts/#", QoS::AtLeastOnce).await;
    let (mut dave, code) = login(server.addr, "d-1", "dave", DASHBOARD_PASSWORD).await;
    assert_eq!(code, ReasonCode::Success);

    let candidate = r#"
[[rule]]
permission = "allow"
action = "subscribe"
user = "carol"
topic = "alerts/#"
max_qos = 0
"#;
    let body = serde_json::json!({ "acl": candidate }).to_string();
    let viewer = Some(fixture.viewer.as_str());
    let refused = http(admin, "POST", "/api/v1/acl/diff", viewer, Some(&body)).await;
    assert_eq!(refused.status, 403);
    let diff = http(admin, "POST", "/api/v1/acl/diff", operator, Some(&body)).await;
    assert_eq!(diff.status, 200, "{}", diff.body);
    let diff = diff.json();
    assert_eq!(diff["source"], "request");
    assert_eq!(diff["clients_checked"], 2);
    assert_eq!(diff["total_changes"], 2, "{diff}");
    assert_eq!(diff["truncated"], false);
    let changes = diff["changes"].as_array().unwrap();
    assert_eq!(changes[0]["filter"], "alerts/#");
    assert_eq!(changes[0]["change"], "lower");
    assert_eq!(changes[0]["qos"], 1);
    assert_eq!(changes[0]["new_qos"], 0);
    assert_eq!(changes[1]["filter"], "fleet/#");
    assert_eq!(changes[1]["change"], "revoke");
    assert_eq!(changes[1]["username"], "carol");
    assert_eq!(changes[1]["client_id"], "c-1");

    // The file on disk is what is in force: nothing would change.
    let same = http(admin, "POST", "/api/v1/acl/diff", operator, None).await;
    assert_eq!(same.status, 200, "{}", same.body);
    assert_eq!(same.json()["total_changes"], 0);
    assert!(
        same.json()["source"]
            .as_str()
            .unwrap()
            .ends_with("acl.toml")
    );
    let broken = serde_json::json!({ "acl": "[[rule]]\npermission = \"maybe\"\n" }).to_string();
    let broken = http(admin, "POST", "/api/v1/acl/diff", operator, Some(&broken)).await;
    assert_eq!(broken.status, 400, "{}", broken.body);
    assert!(broken.body.contains("request"), "{}", broken.body);

    // A dry run: carol still gets what the rules in force let her have.
    let mut message = common::publish("fleet/7", QoS::AtLeastOnce, 5, b"x");
    message.retain = false;
    dave.send(&message).await;
    assert_eq!(carol.recv_publish().await.topic.as_str(), "fleet/7");
    server.stop().await;
}

#[tokio::test]
async fn an_admin_makes_and_removes_tokens_and_reads_the_configuration_without_secrets() {
    let fixture = Fixture::new();
    let server = start_with(|c| fixture.apply(c)).await;
    let admin = server.admin.unwrap();
    let root = Some(fixture.admin.as_str());
    let operator = Some(fixture.operator.as_str());
    assert_eq!(
        http(admin, "GET", "/api/v1/tokens", operator, None)
            .await
            .status,
        403
    );
    let body = r#"{"name": "scraper", "role": "viewer", "duration_seconds": 3600}"#;
    let refused = http(admin, "POST", "/api/v1/tokens", operator, Some(body)).await;
    assert_eq!(refused.status, 403);
    let made = http(admin, "POST", "/api/v1/tokens", root, Some(body)).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let made = made.json();
    let secret = made["secret"].as_str().unwrap().to_owned();
    assert_eq!(made["role"], "viewer");
    assert!(made["expires"].as_u64().unwrap() > now());
    // It works at once, and only as a viewer.
    let clients = http(admin, "GET", "/api/v1/clients", Some(&secret), None).await;
    assert_eq!(clients.status, 200, "{}", clients.body);
    let kick = http(admin, "POST", "/api/v1/clients/x/kick", Some(&secret), None).await;
    assert_eq!(kick.status, 403);
    let again = http(admin, "POST", "/api/v1/tokens", root, Some(body)).await;
    assert_eq!(again.status, 409, "{}", again.body);
    let bad_role = http(
        admin,
        "POST",
        "/api/v1/tokens",
        root,
        Some(r#"{"name": "x", "role": "owner"}"#),
    )
    .await;
    assert_eq!(bad_role.status, 400);
    assert!(bad_role.body.contains("role"), "{}", bad_role.body);
    let list = http(admin, "GET", "/api/v1/tokens", root, None).await;
    assert_eq!(list.status, 200);
    assert!(!list.body.contains(&secret), "no secret in the list");
    let names: Vec<String> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"scraper".to_owned()), "{names:?}");
    let file = std::fs::read_to_string(fixture.dir.join("tokens.toml")).unwrap();
    assert!(
        file.contains("scraper") && !file.contains(&secret),
        "{file}"
    );

    let removed = http(admin, "DELETE", "/api/v1/tokens/scraper", root, None).await;
    assert_eq!(removed.status, 204, "{}", removed.body);
    let refused = http(admin, "GET", "/api/v1/clients", Some(&secret), None).await;
    assert_eq!(refused.status, 401, "a removed token stops working at once");
    assert_eq!(
        http(admin, "DELETE", "/api/v1/tokens/scraper", root, None)
            .await
            .status,
        404
    );
    fixture
        .wait_event("the token made", |e| {
            e["kind"] == "admin_action"
                && e["action"] == "POST /api/v1/tokens"
                && e["reason"] == "done"
        })
        .await;

    // The configuration in force: sections with their defaults, files by path only.
    let config = http(admin, "GET", "/api/v1/config", operator, None).await;
    assert_eq!(config.status, 200, "{}", config.body);
    let config = config.json();
    assert_eq!(config["admin"]["max_failures"], 10);
    assert!(
        config["admin"]["tokens"]
            .as_str()
            .unwrap()
            .ends_with("tokens.toml")
    );
    assert_eq!(config["listener"][0]["name"], "test");
    assert!(
        !config.to_string().contains(&fixture.admin),
        "no token in {config}"
    );
    server.stop().await;
}

/// The value of the sample of `/metrics` whose line starts with `prefix` (name and labels).
fn sample(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
}

#[tokio::test]
async fn metrics_count_refusals_violations_queues_and_login_backoff() {
    let fixture = Fixture::new();
    let server = start_with(|c| {
        fixture.apply(c);
        c.auth.guard.backoff_after = 2;
    })
    .await;
    let admin = server.admin.unwrap();
    let scrape = || async {
        let answer = http(admin, "GET", "/metrics", Some(&fixture.viewer), None).await;
        assert_eq!(answer.status, 200);
        answer.body
    };
    let before = scrape().await;
    assert_eq!(sample(&before, "bulwark_queued_messages "), 0);
    assert_eq!(
        sample(&before, "bulwark_login_backoff_active{key=\"username\"}"),
        0
    );

    // Three QoS 1 messages wait for a parked session.
    let (mut parked, _) = Raw::connect(server.addr, &persistent("parked")).await;
    parked.subscribe_qos(1, "q/#", QoS::AtLeastOnce).await;
    parked
        .send(&bulwark_proto::Disconnect::new(ReasonCode::Success))
        .await;
    parked.until_closed(WAIT).await;
    let (mut publisher, _) = Raw::v5(server.addr, "pub").await;
    for n in 1..=3u16 {
        publisher
            .send(&common::publish("q/1", QoS::AtLeastOnce, n, b"abc"))
            .await;
        assert!(matches!(
            publisher.recv().await,
            bulwark_proto::Packet::PubAck(_)
        ));
    }
    // A second CONNECT is a protocol error (0x82).
    let (mut offender, _) = Raw::v5(server.addr, "offender").await;
    offender
        .send(&connect_packet(ProtocolVersion::V5, "offender"))
        .await;
    offender.until_closed(WAIT).await;
    // Counted before its event is recorded (the close the client sees comes first).
    fixture
        .wait_event("the protocol violation", |e| {
            e["kind"] == "protocol_violation"
                && e["reason"].as_str().unwrap().contains("second CONNECT")
                && e["client_id"] == "offender"
        })
        .await;
    // Two wrong passwords put the username in backoff.
    for id in ["w-1", "w-2"] {
        assert_eq!(
            login_code(server.addr, id, "carol", "not-her-password-0").await,
            ReasonCode::BadUserNameOrPassword
        );
    }
    let after = scrape().await;
    assert_eq!(sample(&after, "bulwark_queued_messages "), 3, "{after}");
    assert_eq!(sample(&after, "bulwark_longest_queue "), 3);
    assert!(sample(&after, "bulwark_queued_bytes ") >= 3 * 3);
    assert_eq!(
        sample(
            &after,
            "bulwark_protocol_violations_total{code=\"0x82\",reason=\"ProtocolError\"}"
        ),
        1
    );
    assert_eq!(
        sample(&after, "bulwark_login_backoff_active{key=\"username\"}"),
        1
    );
    assert_eq!(
        sample(
            &after,
            "bulwark_logins_total{result=\"failure\",method=\"connect\",reason=\"bad username or password\"}"
        ),
        2
    );
    // parked, pub, offender (anonymous on this test listener).
    assert_eq!(
        sample(
            &after,
            "bulwark_logins_total{result=\"success\",method=\"anonymous\",reason=\"\"}"
        ),
        3
    );
    assert_eq!(
        sample(
            &after,
            "bulwark_messages_by_qos_total{direction=\"received\",qos=\"1\"}"
        ),
        3
    );
    assert_eq!(
        sample(
            &after,
            "bulwark_payload_bytes_total{direction=\"received\",qos=\"1\"}"
        ),
        9
    );
    assert_eq!(
        sample(
            &after,
            "bulwark_messages_by_qos_total{direction=\"sent\",qos=\"1\"}"
        ),
        0,
        "queued for the parked session, not sent"
    );
    assert_eq!(
        sample(&after, "bulwark_clients_by_protocol{protocol=\"5.0\"}"),
        1
    );
    assert_eq!(
        sample(&after, "bulwark_clients_by_protocol{protocol=\"3.1.1\"}"),
        0
    );
    server.stop().await;

    // Admission: one socket per address; the second is refused before any handshake.
    let fixture = Fixture::new();
    let server = start_with(|c| {
        fixture.apply(c);
        c.admission.exempt = Vec::new();
        c.admission.max_per_address = 1;
    })
    .await;
    let _first = TcpStream::connect(server.addr).await.unwrap();
    // Refused with a reset: the connect itself may already see it.
    if let Ok(mut second) = TcpStream::connect(server.addr).await {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(WAIT, second.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "closed at once: {read:?}"
        );
    }
    let metrics = http(
        server.admin.unwrap(),
        "GET",
        "/metrics",
        Some(&fixture.viewer),
        None,
    )
    .await;
    assert_eq!(
        sample(
            &metrics.body,
            "bulwark_admission_refused_total{reason=\"max_per_address\"}"
        ),
        1
    );
    assert_eq!(
        sample(
            &metrics.body,
            "bulwark_admission_refused_total{reason=\"rate\"}"
        ),
        0
    );
    server.stop().await;
}
