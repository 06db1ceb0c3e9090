//! The dashboard: static files compiled into the binary (no CDN, no framework, no build step),
//! password-store logins that open a session ([`crate::session`]), and logout. Everything the
//! pages show comes from the API with the session cookie.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use bulwark_auth::token::Role;
use serde::Deserialize;

use crate::api::json_body;
use crate::backend::{Backend, LoginRefusal};
use crate::error::ApiError;
use crate::session::{self, Sessions};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// The groups of the password store that give a dashboard role.
pub const ROLE_GROUPS: [(&str, Role); 3] = [
    ("bulwark-admin", Role::Admin),
    ("bulwark-operator", Role::Operator),
    ("bulwark-viewer", Role::Viewer),
];

/// The highest role `groups` give, if any.
pub fn role_of(groups: &[String]) -> Option<Role> {
    ROLE_GROUPS
        .iter()
        .filter(|(group, _)| groups.iter().any(|g| g == group))
        .map(|(_, role)| *role)
        .max()
}

/// Whether a request with `method` changes something (and so needs the CSRF token).
pub fn changes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The dashboard's routes: reachable without a session (there is nothing in them to see).
pub(crate) fn routes<B: Backend>() -> Router<Arc<B>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/ui/login", post(login::<B>))
        .route("/ui/logout", post(logout))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A login's body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

/// Longest username or password a login may carry.
const MAX_CREDENTIAL: usize = 1024;

async fn login<B: Backend>(
    State(backend): State<Arc<B>>,
    axum::Extension(sessions): axum::Extension<Arc<Sessions>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // No lockout check here: wrong passwords are slowed by the login guard, per address and
    // per username, as MQTT logins are. JSON only: a cross-site form cannot send it without the browser asking first.
    let login: Login = json_body(&headers, body, None)?;
    if login.username.is_empty()
        || login.username.len() > MAX_CREDENTIAL
        || login.password.len() > MAX_CREDENTIAL
    {
        return Err(ApiError::bad_request(format!(
            "username: 1 to {MAX_CREDENTIAL} bytes; password: at most {MAX_CREDENTIAL} bytes"
        )));
    }
    let groups = match backend
        .login(&login.username, &login.password, remote)
        .await
    {
        Ok(groups) => groups,
        Err(LoginRefusal::Refused) => {
            return Err(ApiError::login_refused());
        }
        Err(LoginRefusal::Throttled) => return Err(ApiError::too_many(Duration::from_secs(30))),
        Err(LoginRefusal::Unavailable) => {
            return Err(ApiError::unavailable("too many logins waiting; try again"));
        }
    };
    let Some(role) = role_of(&groups) else {
        backend.authentication_failed(remote, "dashboard login of a user without a role group");
        return Err(ApiError::no_role());
    };
    let (secret, session) = sessions
        .open(&login.username, role, Instant::now())
        .ok_or_else(|| ApiError::unavailable("the system's random source failed"))?;
    let mut response = (
        StatusCode::OK,
        Json(serde_json::json!({
            "user": session.user,
            "role": role.as_str(),
            "csrf": session.csrf,
        })),
    )
        .into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::cookie(&secret, session::LIFETIME)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// Ends the session of the request's cookie (with its CSRF token) and removes the cookie.
async fn logout(
    axum::Extension(sessions): axum::Extension<Arc<Sessions>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let secret = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(session::from_header)
        .ok_or_else(ApiError::unauthorized)?;
    let session = sessions
        .get(secret, Instant::now())
        .ok_or_else(ApiError::unauthorized)?;
    let presented = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !session.csrf_matches(presented) {
        return Err(ApiError::csrf());
    }
    sessions.close(secret);
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(cookie) = HeaderValue::from_str(&session::cookie("", Duration::ZERO)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}
