#![allow(clippy::unwrap_used, reason = "tests")]

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use bulwark_acl::event::SecurityEvent;

use super::*;
use crate::backend::{
    AclCandidate, AclDiff, AddedToken, BanView, ClientDetail, ClientSummary, LoginRefusal,
    MetricsSnapshot, NewToken, Page, Readiness, RetainedItem, RetainedQuery, SessionItem,
    SessionQuery, SubscriptionItem, SubscriptionQuery, TokenView, UserChange,
};

/// A broker stand-in: two tokens, one client, and a record of what the API told it.
struct Fake {
    actions: Mutex<Vec<AdminAction>>,
    failures: Mutex<Vec<String>>,
    kicked: Mutex<Vec<(String, u8)>>,
    deleted: Mutex<Vec<String>>,
    locked: Mutex<bool>,
    events: tokio::sync::broadcast::Sender<Arc<SecurityEvent>>,
}

impl Default for Fake {
    fn default() -> Self {
        Self {
            actions: Mutex::default(),
            failures: Mutex::default(),
            kicked: Mutex::default(),
            deleted: Mutex::default(),
            locked: Mutex::default(),
            events: tokio::sync::broadcast::channel(16).0,
        }
    }
}

const VIEWER: &str = "viewer-secret";
const OPERATOR: &str = "operator-secret";

impl Backend for Fake {
    fn authenticate(&self, token: &str, remote: SocketAddr) -> Option<Caller> {
        let role = match token {
            VIEWER => Role::Viewer,
            OPERATOR => Role::Operator,
            _ => return None,
        };
        Some(Caller {
            name: role.as_str().to_owned(),
            via: Via::Token { id: "0".to_owned() },
            role,
            remote,
        })
    }
    fn backoff(&self, _: IpAddr) -> Option<Duration> {
        (*self.locked.lock().unwrap()).then_some(Duration::from_secs(7))
    }
    fn authentication_failed(&self, _: SocketAddr, why: &str) {
        self.failures.lock().unwrap().push(why.to_owned());
    }
    fn record(&self, action: AdminAction) {
        self.actions.lock().unwrap().push(action);
    }
    async fn readiness(&self) -> Readiness {
        Readiness {
            ready: true,
            connected: 1,
            sessions: 1,
        }
    }
    fn clients(&self, _: &ClientQuery, limit: usize) -> Page<ClientSummary> {
        Page {
            items: vec![ClientSummary {
                client_id: format!("dev-{limit}"),
                username: None,
                listener: "tcp".to_owned(),
                address: "127.0.0.1:5000".to_owned(),
            }],
            next: None,
        }
    }
    async fn client(&self, _: &str) -> Option<ClientDetail> {
        None
    }
    async fn kick(&self, client_id: &str, code: u8, _: &Caller) -> Result<(), Refusal> {
        if client_id != "dev-1" {
            return Err(Refusal::NotFound("no such client".to_owned()));
        }
        self.kicked
            .lock()
            .unwrap()
            .push((client_id.to_owned(), code));
        Ok(())
    }
    fn bans(&self) -> Vec<BanView> {
        Vec::new()
    }
    async fn add_ban(&self, ban: NewBan, caller: &Caller) -> Result<BanView, Refusal> {
        Ok(BanView {
            target: ban.target,
            expires: ban.duration_seconds,
            reason: ban.reason,
            created: 0,
            by: caller.name.clone(),
        })
    }
    fn remove_ban(&self, _: &BanTargetView) -> Result<(), Refusal> {
        Err(Refusal::NotFound("no ban".to_owned()))
    }
    async fn metrics(&self) -> MetricsSnapshot {
        MetricsSnapshot::default()
    }
    async fn login(
        &self,
        name: &str,
        password: &str,
        _: SocketAddr,
    ) -> Result<Vec<String>, LoginRefusal> {
        match (name, password) {
            ("alice", "right") => Ok(vec!["staff".to_owned(), "bulwark-operator".to_owned()]),
            ("bob", "right") => Ok(vec!["staff".to_owned()]),
            _ => Err(LoginRefusal::Refused),
        }
    }
    async fn lint(&self) -> Result<crate::backend::LintReport, Refusal> {
        Err(Refusal::NotFound("no ACL".to_owned()))
    }
    fn reload(&self) -> Result<Vec<String>, Refusal> {
        Ok(vec!["ACL acl.toml".to_owned()])
    }
    fn users(&self) -> Result<Vec<crate::backend::UserView>, Refusal> {
        Err(Refusal::NotFound("no password store".to_owned()))
    }
    async fn add_user(&self, user: NewUser) -> Result<crate::backend::AddedUser, Refusal> {
        Err(Refusal::Conflict(format!("user {:?} exists", user.name)))
    }
    async fn change_user(&self, _: &str, _: UserChange) -> Result<(), Refusal> {
        Ok(())
    }
    fn certificates(&self) -> Vec<crate::backend::CertificateView> {
        Vec::new()
    }
    async fn explain(&self, query: ExplainQuery) -> Result<crate::backend::Explanation, Refusal> {
        Ok(crate::backend::Explanation {
            allowed: query.topic == "ok",
            rule: None,
            reason: query.action,
            granted_qos: None,
            together: Vec::new(),
            carve_outs: Vec::new(),
            groups: Vec::new(),
        })
    }
    fn events(&self) -> tokio::sync::broadcast::Receiver<Arc<SecurityEvent>> {
        self.events.subscribe()
    }
    fn recent_events(&self, _: usize) -> Vec<Arc<SecurityEvent>> {
        vec![Arc::new(SecurityEvent::new(
            bulwark_acl::event::EventKind::AuthFailure,
            std::time::UNIX_EPOCH,
        ))]
    }
    async fn sessions(&self, _: &SessionQuery, _: usize) -> Result<Page<SessionItem>, Refusal> {
        Ok(Page {
            items: Vec::new(),
            next: None,
        })
    }
    async fn delete_session(&self, client_id: &str) -> Result<(), Refusal> {
        self.deleted.lock().unwrap().push(client_id.to_owned());
        Ok(())
    }
    async fn subscriptions(
        &self,
        _: &SubscriptionQuery,
        _: usize,
    ) -> Result<Page<SubscriptionItem>, Refusal> {
        Ok(Page {
            items: Vec::new(),
            next: None,
        })
    }
    async fn retained(&self, _: &RetainedQuery, _: usize) -> Result<Page<RetainedItem>, Refusal> {
        Ok(Page {
            items: Vec::new(),
            next: None,
        })
    }
    async fn delete_retained(&self, topic: &str) -> Result<(), Refusal> {
        self.deleted.lock().unwrap().push(topic.to_owned());
        Ok(())
    }
    async fn acl_diff(&self, candidate: AclCandidate) -> Result<AclDiff, Refusal> {
        Ok(AclDiff {
            source: format!("{} bytes", candidate.acl.map_or(0, |a| a.len())),
            clients_checked: 0,
            changes: Vec::new(),
            total_changes: 0,
            truncated: false,
        })
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({ "admin": {} })
    }
    fn tokens(&self) -> Result<Vec<TokenView>, Refusal> {
        Ok(Vec::new())
    }
    async fn add_token(&self, _: NewToken) -> Result<AddedToken, Refusal> {
        Err(Refusal::Unavailable("not in this test".to_owned()))
    }
    async fn remove_token(&self, _: &str) -> Result<(), Refusal> {
        Err(Refusal::NotFound("no such token".to_owned()))
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

async fn call(
    fake: &Arc<Fake>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> Answer {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(value) = &authorization {
        headers.push(("authorization", value.as_str()));
    }
    let body = match body {
        Some((content_type, bytes)) => {
            headers.push(("content-type", content_type));
            bytes
        }
        None => Vec::new(),
    };
    send(&router(fake.clone()), method, path, &headers, body).await
}

#[tokio::test]
async fn every_path_needs_a_valid_token_and_the_answer_does_not_say_which_was_wrong() {
    let fake = Arc::new(Fake::default());
    for path in ["/api/v1/health", "/api/v1/clients", "/metrics", "/nowhere"] {
        let none = call(&fake, "GET", path, None, None).await;
        let wrong = call(&fake, "GET", path, Some("bwk_0000_guess"), None).await;
        for answer in [&none, &wrong] {
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(answer.headers["www-authenticate"], "Bearer");
            assert_eq!(answer.json()["error"], "unauthorized");
        }
        assert_eq!(none.body, wrong.body);
    }
    // Only a token presented and refused counts towards the lockout.
    assert_eq!(fake.failures.lock().unwrap().len(), 4);
    let ok = call(&fake, "GET", "/api/v1/health", Some(VIEWER), None).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["status"], "ok");
    assert_eq!(ok.headers["cache-control"], "no-store");
    assert_eq!(ok.headers["x-content-type-options"], "nosniff");
    // A scheme other than Bearer is no token.
    let mut request = HttpRequest::builder()
        .uri("/api/v1/health")
        .header("authorization", format!("Basic {VIEWER}"))
        .body(Body::empty())
        .unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let response = router(fake.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_address_in_backoff_is_told_when_to_come_back() {
    let fake = Arc::new(Fake::default());
    *fake.locked.lock().unwrap() = true;
    let answer = call(&fake, "GET", "/api/v1/health", Some("bwk_wrong"), None).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    // Not counted again while locked out.
    assert!(fake.failures.lock().unwrap().is_empty());
    // Valid credentials from the same address are not refused: the lockout must not let one
    // user of an address lock out another.
    let valid = call(&fake, "GET", "/api/v1/health", Some(VIEWER), None).await;
    assert_eq!(valid.status, StatusCode::OK);
    assert_eq!(answer.headers["retry-after"], "7");
    assert_eq!(answer.json()["error"], "too_many_requests");
}

#[tokio::test]
async fn changes_need_the_operator_role_and_are_recorded_either_way() {
    let fake = Arc::new(Fake::default());
    let kick = "/api/v1/clients/dev-1/kick";
    let refused = call(&fake, "POST", kick, Some(VIEWER), None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.json()["error"], "forbidden");
    assert!(fake.kicked.lock().unwrap().is_empty());
    let done = call(&fake, "POST", kick, Some(OPERATOR), None).await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.body);
    let coded = call(
        &fake,
        "POST",
        kick,
        Some(OPERATOR),
        Some(("application/json", br#"{"reason_code": 137}"#.to_vec())),
    )
    .await;
    assert_eq!(coded.status, StatusCode::NO_CONTENT, "{}", coded.body);
    assert_eq!(
        *fake.kicked.lock().unwrap(),
        vec![("dev-1".to_owned(), 0x98), ("dev-1".to_owned(), 137)]
    );
    let missing = call(
        &fake,
        "POST",
        "/api/v1/clients/ghost/kick",
        Some(OPERATOR),
        None,
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let actions = fake.actions.lock().unwrap();
    let outcomes: Vec<(&str, &str)> = actions
        .iter()
        .map(|a| (a.caller.name.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("viewer", "forbidden: needs the operator role"),
            ("operator", "done"),
            ("operator", "done"),
            ("operator", "refused: no such client"),
        ]
    );
    assert_eq!(actions[1].request, "POST /api/v1/clients/dev-1/kick");
}

#[tokio::test]
async fn bad_requests_get_specific_errors() {
    let fake = Arc::new(Fake::default());
    let json = |text: &str| Some(("application/json", text.as_bytes().to_vec()));
    let unknown = call(&fake, "GET", "/api/v1/nothing", Some(VIEWER), None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["error"], "not_found");
    let method = call(&fake, "DELETE", "/api/v1/health", Some(VIEWER), None).await;
    assert_eq!(method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(method.json()["error"], "method_not_allowed");
    let field = call(
        &fake,
        "POST",
        "/api/v1/bans",
        Some(OPERATOR),
        json(r#"{"client_id": "x", "duration_seconds": "soon"}"#),
    )
    .await;
    assert_eq!(field.status, StatusCode::BAD_REQUEST);
    assert!(
        field.json()["message"]
            .as_str()
            .unwrap()
            .contains("duration_seconds"),
        "{}",
        field.body
    );
    let unknown_field = call(
        &fake,
        "POST",
        "/api/v1/bans",
        Some(OPERATOR),
        json(r#"{"cliend_id": "x"}"#),
    )
    .await;
    assert_eq!(unknown_field.status, StatusCode::BAD_REQUEST);
    assert!(
        unknown_field.body.contains("cliend_id"),
        "{}",
        unknown_field.body
    );
    let syntax = call(
        &fake,
        "POST",
        "/api/v1/bans",
        Some(OPERATOR),
        json("{\"client_id\": "),
    )
    .await;
    assert_eq!(syntax.status, StatusCode::BAD_REQUEST);
    let form = call(
        &fake,
        "POST",
        "/api/v1/bans",
        Some(OPERATOR),
        Some(("application/x-www-form-urlencoded", b"client_id=x".to_vec())),
    )
    .await;
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = vec![b' '; MAX_BODY + 1];
    let too_large = call(
        &fake,
        "POST",
        "/api/v1/bans",
        Some(OPERATOR),
        Some(("application/json", big)),
    )
    .await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_large.json()["error"], "payload_too_large");
    let limit = call(&fake, "GET", "/api/v1/clients?limit=0", Some(VIEWER), None).await;
    assert_eq!(limit.status, StatusCode::BAD_REQUEST);
    assert!(limit.body.contains("limit"), "{}", limit.body);
    let filter = call(
        &fake,
        "GET",
        "/api/v1/clients?address=nowhere",
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(filter.status, StatusCode::BAD_REQUEST);
    assert!(filter.body.contains("address"), "{}", filter.body);
    let action = call(
        &fake,
        "GET",
        "/api/v1/acl/explain?action=read&topic=a",
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(action.status, StatusCode::BAD_REQUEST);
    assert!(action.body.contains("action"), "{}", action.body);
    let qos = call(
        &fake,
        "GET",
        "/api/v1/acl/explain?action=publish&topic=a&qos=3",
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(qos.status, StatusCode::BAD_REQUEST);
    let missing = call(
        &fake,
        "GET",
        "/api/v1/acl/explain?action=publish",
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(missing.body.contains("topic"), "{}", missing.body);
    let explained = call(
        &fake,
        "GET",
        "/api/v1/acl/explain?action=publish&topic=ok",
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(explained.json()["allowed"], true);
    let page = call(&fake, "GET", "/api/v1/clients?limit=7", Some(VIEWER), None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.json()["items"][0]["client_id"], "dev-7");
}

#[test]
fn the_openapi_document_describes_every_route() {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/health", &["get"][..]),
        ("/api/v1/ready", &["get"]),
        ("/api/v1/openapi.json", &["get"]),
        ("/api/v1/clients", &["get"]),
        ("/api/v1/clients/{client_id}", &["get"]),
        ("/api/v1/clients/{client_id}/kick", &["post"]),
        ("/api/v1/bans", &["get", "post", "delete"]),
        ("/api/v1/session", &["get"]),
        ("/api/v1/certificates", &["get"]),
        ("/api/v1/reload", &["post"]),
        ("/api/v1/acl/lint", &["get"]),
        ("/api/v1/users", &["get", "post"]),
        ("/api/v1/users/{name}", &["delete"]),
        ("/api/v1/users/{name}/groups", &["put"]),
        ("/api/v1/users/{name}/disable", &["post"]),
        ("/api/v1/users/{name}/enable", &["post"]),
        ("/api/v1/acl/explain", &["get"]),
        ("/api/v1/events", &["get"]),
        ("/api/v1/events/stream", &["get"]),
        ("/ui/login", &["post"]),
        ("/ui/logout", &["post"]),
        ("/metrics", &["get"]),
        ("/api/v1/sessions", &["get"]),
        ("/api/v1/sessions/{client_id}", &["delete"]),
        ("/api/v1/subscriptions", &["get"]),
        ("/api/v1/retained", &["get", "delete"]),
        ("/api/v1/acl/diff", &["post"]),
        ("/api/v1/config", &["get"]),
        ("/api/v1/tokens", &["get", "post"]),
        ("/api/v1/tokens/{name}", &["delete"]),
    ] {
        for method in methods {
            assert!(paths[path].get(method).is_some(), "{method} {path}");
        }
    }
    assert_eq!(paths.len(), 30, "a path in the document not listed here");
}

#[tokio::test]
async fn every_operation_of_the_document_is_routed() {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
    let fake = Arc::new(Fake::default());
    for (path, operations) in doc["paths"].as_object().unwrap() {
        // An endless stream (its body is never complete); tests/admin.rs reads it.
        if path == "/api/v1/events/stream" {
            continue;
        }
        let concrete = path
            .replace("{client_id}", "dev-1")
            .replace("{name}", "alice");
        for method in operations.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            let answer = call(&fake, &method, &concrete, Some(OPERATOR), None).await;
            let routed = !matches!(
                answer.status,
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
            ) || !answer.body.contains("no such endpoint")
                && !answer.body.contains("method_not_allowed");
            assert!(routed, "{method} {path}: {} {}", answer.status, answer.body);
        }
    }
}

/// One request to `app` with these headers and body.
async fn send(
    app: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Vec<u8>>,
) -> Answer {
    let mut request = HttpRequest::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Body::from(body.into())).unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

#[tokio::test]
async fn a_dashboard_login_opens_a_session_whose_changes_need_its_csrf_token() {
    let fake = Arc::new(Fake::default());
    let app = router(fake.clone());
    let json = ("content-type", "application/json");
    let wrong = send(
        &app,
        "POST",
        "/ui/login",
        &[json],
        r#"{"username":"alice","password":"nope"}"#,
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.headers.get("set-cookie").is_none());
    let no_role = send(
        &app,
        "POST",
        "/ui/login",
        &[json],
        r#"{"username":"bob","password":"right"}"#,
    )
    .await;
    assert_eq!(no_role.status, StatusCode::FORBIDDEN);
    assert!(no_role.headers.get("set-cookie").is_none());
    let form = send(
        &app,
        "POST",
        "/ui/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        "username=alice&password=right",
    )
    .await;
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let ok = send(
        &app,
        "POST",
        "/ui/login",
        &[json],
        r#"{"username":"alice","password":"right"}"#,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let set = ok.headers["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(set.contains(attribute), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    let csrf = ok.json()["csrf"].as_str().unwrap().to_owned();
    assert_eq!(ok.json()["role"], "operator");

    let who = send(&app, "GET", "/api/v1/session", &[("cookie", &cookie)], "").await;
    assert_eq!(who.json()["user"], "alice");
    assert_eq!(who.json()["csrf"], csrf.as_str());
    let kick = "/api/v1/clients/dev-1/kick";
    let forged = send(&app, "POST", kick, &[("cookie", &cookie)], "").await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(forged.body.contains("CSRF"), "{}", forged.body);
    let bad = send(
        &app,
        "POST",
        kick,
        &[("cookie", &cookie), ("x-csrf-token", "guess")],
        "",
    )
    .await;
    assert_eq!(bad.status, StatusCode::FORBIDDEN);
    assert!(fake.kicked.lock().unwrap().is_empty());
    let done = send(
        &app,
        "POST",
        kick,
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        "",
    )
    .await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.body);
    assert_eq!(
        fake.actions.lock().unwrap()[0].caller.actor(),
        "user:alice (operator)"
    );

    let out = send(
        &app,
        "POST",
        "/ui/logout",
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        "",
    )
    .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = send(&app, "GET", "/api/v1/clients", &[("cookie", &cookie)], "").await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    // An unknown or expired session is refused without counting towards the lockout.
    assert_eq!(
        fake.failures.lock().unwrap().len(),
        3,
        "{:?}",
        fake.failures.lock().unwrap()
    );
}

#[tokio::test]
async fn the_dashboard_files_are_served_under_a_strict_policy() {
    let fake = Arc::new(Fake::default());
    let app = router(fake);
    let page = send(&app, "GET", "/ui/", &[], "").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("<script src=\"/ui/app.js\""));
    assert!(!page.body.contains("<script>"), "no inline script");
    let policy = page.headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
    assert!(!policy.contains("unsafe"), "{policy}");
    assert_eq!(page.headers["x-frame-options"], "DENY");
    let script = send(&app, "GET", "/ui/app.js", &[], "").await;
    assert!(
        script.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(
        !script.body.contains("innerHTML"),
        "values go into the page as text only"
    );
    let root = send(&app, "GET", "/", &[], "").await;
    assert_eq!(root.status, StatusCode::SEE_OTHER);
    // Data is not among the public files.
    let events = send(&app, "GET", "/api/v1/events", &[], "").await;
    assert_eq!(events.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn users_are_for_admins_only() {
    let fake = Arc::new(Fake::default());
    let json = |text: &str| Some(("application/json", text.as_bytes().to_vec()));
    for (method, path, body) in [
        ("GET", "/api/v1/users", None),
        ("POST", "/api/v1/users", json(r#"{"name": "x"}"#)),
        ("PUT", "/api/v1/users/x/groups", json(r#"{"groups": []}"#)),
        ("POST", "/api/v1/users/x/disable", None),
        ("POST", "/api/v1/users/x/enable", None),
        ("DELETE", "/api/v1/users/x", None),
    ] {
        let answer = call(&fake, method, path, Some(OPERATOR), body).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert!(answer.body.contains("admin role"), "{}", answer.body);
    }
    // The five changes were recorded as refused; the list was not (it changes nothing).
    assert_eq!(fake.actions.lock().unwrap().len(), 5);
}

#[test]
fn roles_come_from_the_highest_role_group() {
    let groups = |g: &[&str]| g.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(crate::ui::role_of(&groups(&["staff"])), None);
    assert_eq!(
        crate::ui::role_of(&groups(&["bulwark-viewer", "bulwark-admin"])),
        Some(Role::Admin)
    );
    assert_eq!(
        crate::ui::role_of(&groups(&["bulwark-operator"])),
        Some(Role::Operator)
    );
}

#[tokio::test]
async fn sessions_and_retained_messages_are_deleted_by_operators_only() {
    let fake = Arc::new(Fake::default());
    for (method, path) in [
        ("DELETE", "/api/v1/sessions/dev-1"),
        ("DELETE", "/api/v1/retained?topic=a%2Fb"),
    ] {
        let refused = call(&fake, method, path, Some(VIEWER), None).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{path}");
        let done = call(&fake, method, path, Some(OPERATOR), None).await;
        assert_eq!(done.status, StatusCode::NO_CONTENT, "{path}: {}", done.body);
    }
    assert_eq!(*fake.deleted.lock().unwrap(), ["dev-1", "a/b"]);
    // Both refusals and both deletions are in the audit trail.
    {
        let actions = fake.actions.lock().unwrap();
        assert_eq!(actions.len(), 4);
        assert!(actions[0].outcome.starts_with("forbidden"));
        assert_eq!(actions[3].target.as_deref(), Some("retained topic \"a/b\""));
    }
    // A delete of retained messages names its topic.
    let missing = call(&fake, "DELETE", "/api/v1/retained", Some(OPERATOR), None).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(missing.body.contains("topic"), "{}", missing.body);
    // Reads are for viewers; the configuration and the dry run for operators.
    for path in [
        "/api/v1/sessions",
        "/api/v1/subscriptions",
        "/api/v1/retained",
    ] {
        let answer = call(&fake, "GET", path, Some(VIEWER), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.json()["items"], serde_json::json!([]));
    }
    let config = call(&fake, "GET", "/api/v1/config", Some(VIEWER), None).await;
    assert_eq!(config.status, StatusCode::FORBIDDEN);
    let config = call(&fake, "GET", "/api/v1/config", Some(OPERATOR), None).await;
    assert_eq!(config.status, StatusCode::OK);
    let tokens = call(&fake, "GET", "/api/v1/tokens", Some(OPERATOR), None).await;
    assert_eq!(tokens.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_acl_dry_run_takes_a_whole_acl_file_but_not_more() {
    let fake = Arc::new(Fake::default());
    let diff = "/api/v1/acl/diff";
    let refused = call(&fake, "POST", diff, Some(VIEWER), None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    // No body: the ACL file on disk.
    let empty = call(&fake, "POST", diff, Some(OPERATOR), None).await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.body);
    assert_eq!(empty.json()["source"], "0 bytes");
    // Larger than other bodies may be.
    let acl = "#".repeat(MAX_BODY * 2);
    let body = serde_json::to_vec(&serde_json::json!({ "acl": acl })).unwrap();
    let big = call(
        &fake,
        "POST",
        diff,
        Some(OPERATOR),
        Some(("application/json", body)),
    )
    .await;
    assert_eq!(
        big.status,
        StatusCode::OK,
        "{}",
        &big.body[..200.min(big.body.len())]
    );
    assert_eq!(big.json()["source"], format!("{} bytes", MAX_BODY * 2));
    let acl = "#".repeat(engine::MAX_ACL_BODY);
    let body = serde_json::to_vec(&serde_json::json!({ "acl": acl })).unwrap();
    let too_big = call(
        &fake,
        "POST",
        diff,
        Some(OPERATOR),
        Some(("application/json", body)),
    )
    .await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
    // The other routes keep their own limit.
    let body = serde_json::to_vec(&serde_json::json!({ "reason": "#".repeat(MAX_BODY) })).unwrap();
    let ban = call(
        &fake,
        "POST",
        "/api/v1/bans",
        Some(OPERATOR),
        Some(("application/json", body)),
    )
    .await;
    assert_eq!(ban.status, StatusCode::PAYLOAD_TOO_LARGE);
}
