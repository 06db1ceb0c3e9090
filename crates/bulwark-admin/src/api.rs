//! The routes of the admin listener: `/api/v1/...` (JSON) and `/metrics`, every one behind a
//! token, each state-changing one behind a role and recorded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bulwark_auth::token::Role;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast::error::RecvError;

use crate::backend::{
    AdminAction, Backend, BanTargetView, Caller, ClientQuery, ExplainQuery, NewBan, NewUser,
    PeerCertificate, Refusal, UserChange, Via,
};
use crate::error::ApiError;
use crate::session::Sessions;

/// Largest request body read, in bytes: every request body of this API is a few fields.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest page of a list.
pub const MAX_PAGE: usize = 1000;
/// A list's page size when the request does not say.
pub const DEFAULT_PAGE: usize = 100;
/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The admin listener's routes over `backend`: the API and metrics (every request
/// authenticated), and the dashboard's static files, login and logout. Serve it with the
/// peer's address (`ConnectInfo<SocketAddr>`): the lockout and the audit trail need it, and a
/// request without it is refused.
pub fn router<B: Backend>(backend: Arc<B>) -> Router {
    let sessions = Arc::new(Sessions::default());
    let api = Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/ready", get(ready::<B>))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/session", get(session))
        .route("/api/v1/events", get(events::<B>))
        .route("/api/v1/events/stream", get(event_stream::<B>))
        .route("/api/v1/clients", get(clients::<B>))
        .route("/api/v1/clients/{client_id}", get(client::<B>))
        .route(
            "/api/v1/clients/{client_id}/kick",
            axum::routing::post(kick::<B>),
        )
        .route(
            "/api/v1/bans",
            get(bans::<B>).post(add_ban::<B>).delete(remove_ban::<B>),
        )
        .route("/api/v1/users", get(users::<B>).post(add_user::<B>))
        .route(
            "/api/v1/users/{name}",
            axum::routing::delete(remove_user::<B>),
        )
        .route(
            "/api/v1/users/{name}/groups",
            axum::routing::put(user_groups::<B>),
        )
        .route(
            "/api/v1/users/{name}/{verb}",
            axum::routing::post(user_switch::<B>),
        )
        .route("/api/v1/reload", axum::routing::post(reload::<B>))
        .route("/api/v1/certificates", get(certificates::<B>))
        .route("/api/v1/acl/explain", get(explain::<B>))
        .route("/api/v1/acl/lint", get(lint::<B>))
        .route(
            "/api/v1/acl/diff",
            axum::routing::post(engine::acl_diff::<B>)
                .layer(DefaultBodyLimit::max(engine::MAX_ACL_BODY)),
        )
        .route("/api/v1/sessions", get(engine::sessions::<B>))
        .route(
            "/api/v1/sessions/{client_id}",
            axum::routing::delete(engine::delete_session::<B>),
        )
        .route("/api/v1/subscriptions", get(engine::subscriptions::<B>))
        .route(
            "/api/v1/retained",
            get(engine::retained::<B>).delete(engine::delete_retained::<B>),
        )
        .route("/api/v1/config", get(engine::config::<B>))
        .route(
            "/api/v1/tokens",
            get(engine::tokens::<B>).post(engine::add_token::<B>),
        )
        .route(
            "/api/v1/tokens/{name}",
            axum::routing::delete(engine::remove_token::<B>),
        )
        .route("/metrics", get(metrics::<B>))
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(middleware::from_fn_with_state(
            backend.clone(),
            authenticate::<B>,
        ));
    crate::ui::routes::<B>()
        .merge(api)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::Extension(sessions))
        .layer(middleware::from_fn(harden))
        .with_state(backend)
}

/// Headers on every answer: nothing cached, nothing sniffed, nothing framed or fetched.
async fn harden(request: Request, next: Next) -> Response {
    let page = request.uri().path().starts_with("/ui/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The dashboard's own files only: no inline script or style, nothing from elsewhere.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(if page {
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        } else {
            "default-src 'none'; frame-ancestors 'none'"
        }),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The bearer token of a request, if it carries one in the right form.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Every request: one with a bearer token is authenticated by it, one with a dashboard
/// session cookie by its session (and if it changes anything only with the session's CSRF
/// token in `X-CSRF-Token`); anything else is refused (401). A wrong token or a missing CSRF
/// token is counted towards the address's lockout and recorded; while the address is locked
/// out such attempts get 429 unchecked. Valid credentials are never refused by the lockout:
/// another user of the same address (a shared host, a NAT) must not be able to lock out a
/// scraper or an operator with a few wrong tokens.
async fn authenticate<B: Backend>(
    State(backend): State<Arc<B>>,
    axum::Extension(sessions): axum::Extension<Arc<Sessions>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(remote) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
    else {
        return ApiError::internal("the listener did not pass the peer's address").into_response();
    };
    // A refused attempt: 429 while the address is locked out, else counted and `error`.
    let refuse = |why: &str, error: ApiError| -> Response {
        if let Some(wait) = backend.backoff(remote.ip()) {
            return ApiError::too_many(wait).into_response();
        }
        backend.authentication_failed(remote, why);
        error.into_response()
    };
    let headers = request.headers();
    let caller = if let Some(token) = bearer(headers) {
        let Some(caller) = backend.authenticate(token, remote) else {
            return refuse(
                "unknown, wrong or expired API token",
                ApiError::unauthorized(),
            );
        };
        Some(caller)
    } else if let Some(secret) = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::session::from_header)
    {
        // An expired session is not counted: a dashboard left open must not lock its
        // operator out (and a session secret is not guessable).
        let Some(session) = sessions.get(secret, Instant::now()) else {
            return ApiError::unauthorized().into_response();
        };
        if crate::ui::changes(request.method()) {
            let presented = headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !session.csrf_matches(presented) {
                return refuse("dashboard request without its CSRF token", ApiError::csrf());
            }
        }
        Some(Caller {
            name: session.user,
            via: Via::Session,
            role: session.role,
            remote,
        })
    } else if let Some(PeerCertificate(der)) = request.extensions().get::<PeerCertificate>() {
        // Verified by the TLS handshake, not guessed: a certificate without a role is
        // refused, not counted.
        backend.certificate_caller(der, remote)
    } else {
        // Nothing presented, nothing guessed: refused, not counted.
        None
    };
    let Some(caller) = caller else {
        return ApiError::unauthorized().into_response();
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The caller of a request that passed [`authenticate`].
fn caller(request_caller: Option<axum::Extension<Caller>>) -> Result<Caller, ApiError> {
    request_caller
        .map(|axum::Extension(c)| c)
        .ok_or_else(ApiError::unauthorized)
}

/// Refuses (and records, for a change) a request whose role is not enough.
fn need<B: Backend>(
    backend: &B,
    caller: &Caller,
    role: Role,
    request: &str,
    changes: bool,
) -> Result<(), ApiError> {
    if caller.role.allows(role) {
        return Ok(());
    }
    if changes {
        backend.record(AdminAction {
            caller: caller.clone(),
            request: request.to_owned(),
            target: None,
            outcome: format!("forbidden: needs the {role} role"),
        });
    }
    Err(ApiError::forbidden(role))
}

/// A JSON body, or the 4xx that says what is wrong with it. An empty body is `T::default()`
/// where the caller allows one (`empty`).
pub(crate) fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    empty: Option<T>,
) -> Result<T, ApiError> {
    json_body_limited(headers, body, empty, MAX_BODY)
}

/// [`json_body`] for a route whose body limit is `limit` rather than [`MAX_BODY`].
pub(crate) fn json_body_limited<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    empty: Option<T>,
    limit: usize,
) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request(rejection.body_text())
        }
    })?;
    if body.is_empty()
        && let Some(value) = empty
    {
        return Ok(value);
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("application/json")
                || (v.starts_with("application/") && v.ends_with("+json"))
        });
    if !is_json {
        return Err(ApiError::unsupported_media_type());
    }
    Json::<T>::from_bytes(&body)
        .map(|Json(value)| value)
        .map_err(|rejection: JsonRejection| ApiError::bad_request(rejection.body_text()))
}

fn refusal(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::NotFound(m) => ApiError::not_found(m),
        Refusal::Conflict(m) => ApiError::conflict(m),
        Refusal::Invalid(m) => ApiError::bad_request(m),
        Refusal::Unavailable(m) => ApiError::unavailable(m),
    }
}

/// Records a request that changed something (or tried to) for the audit trail, and gives
/// its result as the API answers it.
pub(crate) fn recorded<B: Backend, T>(
    backend: &B,
    caller: Caller,
    request: impl Into<String>,
    target: Option<String>,
    result: Result<T, Refusal>,
) -> Result<T, ApiError> {
    backend.record(AdminAction {
        caller,
        request: request.into(),
        target,
        outcome: outcome(&result),
    });
    result.map_err(refusal)
}

fn outcome<T>(result: &Result<T, Refusal>) -> String {
    match result {
        Ok(_) => "done".to_owned(),
        Err(
            Refusal::NotFound(m)
            | Refusal::Conflict(m)
            | Refusal::Invalid(m)
            | Refusal::Unavailable(m),
        ) => {
            format!("refused: {m}")
        }
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ready<B: Backend>(State(backend): State<Arc<B>>) -> Response {
    let readiness = backend.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// A list's `limit`: [`DEFAULT_PAGE`] when not given, else 1 to `max`.
fn page_limit(limit: Option<usize>, max: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit: {n} is not between 1 and {max}"
        ))),
    }
}

async fn clients<B: Backend>(
    State(backend): State<Arc<B>>,
    query: Result<Query<ClientQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|r| ApiError::bad_request(r.body_text()))?;
    let limit = page_limit(query.limit, MAX_PAGE)?;
    Ok(Json(backend.clients(&query, limit)).into_response())
}

async fn client<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(client_id): Path<String>,
) -> Result<Response, ApiError> {
    match backend.client(&client_id).await {
        Some(detail) => Ok(Json(detail).into_response()),
        None => Err(ApiError::not_found(format!(
            "no client {client_id:?} is connected"
        ))),
    }
}

/// The body of a kick: the reason code 5.0 clients get in their DISCONNECT.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kick {
    /// Default 0x98 (Administrative action).
    #[serde(default = "administrative_action")]
    reason_code: u8,
}

impl Default for Kick {
    fn default() -> Self {
        Self {
            reason_code: administrative_action(),
        }
    }
}

fn administrative_action() -> u8 {
    0x98
}

async fn kick<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    let request = format!("POST /api/v1/clients/{client_id}/kick");
    need(&*backend, &caller, Role::Operator, &request, true)?;
    let kick: Kick = json_body(&headers, body, Some(Kick::default()))?;
    let result = backend.kick(&client_id, kick.reason_code, &caller).await;
    recorded(
        &*backend,
        caller,
        request,
        Some(format!("client id {client_id:?}")),
        result,
    )?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn bans<B: Backend>(State(backend): State<Arc<B>>) -> Response {
    Json(backend.bans()).into_response()
}

async fn add_ban<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    let request = "POST /api/v1/bans";
    need(&*backend, &caller, Role::Operator, request, true)?;
    let ban: NewBan = json_body(&headers, body, None)?;
    let target = describe(&ban.target);
    let result = backend.add_ban(ban, &caller).await;
    let ban = recorded(&*backend, caller, request, Some(target), result)?;
    Ok((StatusCode::CREATED, Json(ban)).into_response())
}

async fn remove_ban<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
    query: Result<Query<BanTargetView>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    let request = "DELETE /api/v1/bans";
    need(&*backend, &caller, Role::Operator, request, true)?;
    let Query(target) = query.map_err(|r| ApiError::bad_request(r.body_text()))?;
    let result = backend.remove_ban(&target);
    recorded(&*backend, caller, request, Some(describe(&target)), result)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A ban target in words, for the audit trail.
fn describe(target: &BanTargetView) -> String {
    let mut parts = Vec::new();
    if let Some(a) = &target.address {
        parts.push(format!("address {a}"));
    }
    if let Some(u) = &target.username {
        parts.push(format!("username {u:?}"));
    }
    if let Some(c) = &target.client_id {
        parts.push(format!("client id {c:?}"));
    }
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The caller as the dashboard needs it: who, which role, and the CSRF token to send with
/// changes (empty for token callers, who need none).
async fn session(
    request_caller: Option<axum::Extension<Caller>>,
    axum::Extension(sessions): axum::Extension<Arc<Sessions>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    let csrf = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::session::from_header)
        .and_then(|secret| sessions.get(secret, Instant::now()))
        .map(|s| s.csrf)
        .unwrap_or_default();
    Ok(Json(serde_json::json!({
        "user": caller.name,
        "role": caller.role.as_str(),
        "csrf": csrf,
    }))
    .into_response())
}

/// `limit` of the event list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    limit: Option<usize>,
}

/// Security events kept for the event list at most.
pub const MAX_EVENTS: usize = 1000;

async fn events<B: Backend>(
    State(backend): State<Arc<B>>,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|r| ApiError::bad_request(r.body_text()))?;
    let limit = page_limit(query.limit, MAX_EVENTS)?;
    let events: Vec<serde_json::Value> = backend
        .recent_events(limit)
        .iter()
        .filter_map(|e| serde_json::to_value(&**e).ok())
        .collect();
    Ok(Json(events).into_response())
}

/// Security events as server-sent events (`event: security`, one JSON record per event). A
/// reader too slow for the flow is told how many it missed (`event: lagged`) and goes on.
async fn event_stream<B: Backend>(
    State(backend): State<Arc<B>>,
) -> axum::response::sse::Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let receiver = backend.events();
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(event) => Event::default()
                .event("security")
                .data(event.to_json_line()),
            Err(RecvError::Lagged(missed)) => {
                Event::default().event("lagged").data(missed.to_string())
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), receiver))
    });
    axum::response::sse::Sse::new(stream)
        .keep_alive(axum::response::sse::KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn users<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    need(&*backend, &caller, Role::Admin, "GET /api/v1/users", false)?;
    Ok(Json(backend.users().map_err(refusal)?).into_response())
}

async fn add_user<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    let request = "POST /api/v1/users";
    need(&*backend, &caller, Role::Admin, request, true)?;
    let user: NewUser = json_body(&headers, body, None)?;
    let target = format!("user {:?}", user.name);
    let result = backend.add_user(user).await;
    Ok((
        StatusCode::CREATED,
        Json(recorded(&*backend, caller, request, Some(target), result)?),
    )
        .into_response())
}

/// The body of `PUT /api/v1/users/{name}/groups`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Groups {
    groups: Vec<String>,
}

/// Applies `change` to user `name` for an admin, recorded.
async fn change_user<B: Backend>(
    backend: &B,
    caller: Caller,
    request: String,
    name: &str,
    change: UserChange,
) -> Result<Response, ApiError> {
    need(backend, &caller, Role::Admin, &request, true)?;
    let result = backend.change_user(name, change).await;
    recorded(
        backend,
        caller,
        request,
        Some(format!("user {name:?}")),
        result,
    )?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn user_groups<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    let request = format!("PUT /api/v1/users/{name}/groups");
    need(&*backend, &caller, Role::Admin, &request, true)?;
    let Groups { groups } = json_body(&headers, body, None)?;
    change_user(
        &*backend,
        caller,
        request,
        &name,
        UserChange::Groups(groups),
    )
    .await
}

/// `POST /api/v1/users/{name}/disable` and `.../enable`.
async fn user_switch<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
    Path((name, verb)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    let change = match verb.as_str() {
        "disable" => UserChange::Disable,
        "enable" => UserChange::Enable,
        _ => return Err(ApiError::not_found("no such endpoint")),
    };
    let request = format!("POST /api/v1/users/{name}/{verb}");
    change_user(&*backend, caller, request, &name, change).await
}

async fn remove_user<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    let request = format!("DELETE /api/v1/users/{name}");
    change_user(&*backend, caller, request, &name, UserChange::Remove).await
}

async fn reload<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    let request = "POST /api/v1/reload";
    need(&*backend, &caller, Role::Operator, request, true)?;
    let result = backend.reload();
    let files = recorded(&*backend, caller, request, None, result)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "reloading": files })),
    )
        .into_response())
}

async fn lint<B: Backend>(State(backend): State<Arc<B>>) -> Result<Response, ApiError> {
    Ok(Json(backend.lint().await.map_err(refusal)?).into_response())
}

async fn certificates<B: Backend>(State(backend): State<Arc<B>>) -> Response {
    Json(backend.certificates()).into_response()
}

async fn explain<B: Backend>(
    State(backend): State<Arc<B>>,
    query: Result<Query<ExplainQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|r| ApiError::bad_request(r.body_text()))?;
    if query.action != "publish" && query.action != "subscribe" {
        return Err(ApiError::bad_request(format!(
            "action: {:?} is not publish or subscribe",
            query.action
        )));
    }
    if query.qos.is_some_and(|q| q > 2) {
        return Err(ApiError::bad_request("qos: must be 0, 1 or 2"));
    }
    let explanation = backend.explain(query).await.map_err(refusal)?;
    Ok(Json(explanation).into_response())
}

async fn metrics<B: Backend>(State(backend): State<Arc<B>>) -> Result<Response, ApiError> {
    let snapshot = backend.metrics().await;
    let text = crate::metrics::render(&snapshot)
        .map_err(|_| ApiError::internal("the metrics could not be written"))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

mod engine;

#[cfg(test)]
mod tests;
