//! The routes over the engine's state: sessions, subscriptions and retained messages (lists a
//! page at a time, deletions by operators), the ACL dry run, the configuration in force and
//! the API tokens.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bulwark_auth::token::Role;
use serde::Deserialize;

use super::{MAX_PAGE, caller, json_body_limited, need, page_limit, recorded, refusal};
use crate::backend::{
    AclCandidate, Backend, Caller, NewToken, RetainedQuery, SessionQuery, SubscriptionQuery,
};
use crate::error::ApiError;

/// Largest body of `POST /api/v1/acl/diff`, in bytes: it carries a whole ACL file.
pub(super) const MAX_ACL_BODY: usize = 1 << 20;

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|r| ApiError::bad_request(r.body_text()))
}

pub(super) async fn sessions<B: Backend>(
    State(backend): State<Arc<B>>,
    q: Result<Query<SessionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = page_limit(q.limit, MAX_PAGE)?;
    let page = backend.sessions(&q, limit).await.map_err(refusal)?;
    Ok(Json(page).into_response())
}

pub(super) async fn delete_session<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
    Path(client_id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    let request = format!("DELETE /api/v1/sessions/{client_id}");
    need(&*backend, &caller, Role::Operator, &request, true)?;
    let result = backend.delete_session(&client_id).await;
    let target = format!("session {client_id:?}");
    recorded(&*backend, caller, request, Some(target), result)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn subscriptions<B: Backend>(
    State(backend): State<Arc<B>>,
    q: Result<Query<SubscriptionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = page_limit(q.limit, MAX_PAGE)?;
    let page = backend.subscriptions(&q, limit).await.map_err(refusal)?;
    Ok(Json(page).into_response())
}

pub(super) async fn retained<B: Backend>(
    State(backend): State<Arc<B>>,
    q: Result<Query<RetainedQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = page_limit(q.limit, MAX_PAGE)?;
    let page = backend.retained(&q, limit).await.map_err(refusal)?;
    Ok(Json(page).into_response())
}

/// `topic` of `DELETE /api/v1/retained`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopicQuery {
    topic: String,
}

pub(super) async fn delete_retained<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
    q: Result<Query<TopicQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    let request = "DELETE /api/v1/retained".to_owned();
    need(&*backend, &caller, Role::Operator, &request, true)?;
    let q = query(q)?;
    let result = backend.delete_retained(&q.topic).await;
    let target = format!("retained topic {:?}", q.topic);
    recorded(&*backend, caller, request, Some(target), result)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn acl_diff<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    need(
        &*backend,
        &caller,
        Role::Operator,
        "POST /api/v1/acl/diff",
        false,
    )?;
    let candidate: AclCandidate =
        json_body_limited(&headers, body, Some(AclCandidate::default()), MAX_ACL_BODY)?;
    let diff = backend.acl_diff(candidate).await.map_err(refusal)?;
    Ok(Json(diff).into_response())
}

pub(super) async fn config<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    need(
        &*backend,
        &caller,
        Role::Operator,
        "GET /api/v1/config",
        false,
    )?;
    Ok(Json(backend.config()).into_response())
}

pub(super) async fn tokens<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    need(&*backend, &caller, Role::Admin, "GET /api/v1/tokens", false)?;
    Ok(Json(backend.tokens().map_err(refusal)?).into_response())
}

pub(super) async fn add_token<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    let request = "POST /api/v1/tokens".to_owned();
    need(&*backend, &caller, Role::Admin, &request, true)?;
    let token: NewToken = json_body_limited(&headers, body, None, super::MAX_BODY)?;
    let target = format!("token {:?} ({})", token.name, token.role);
    let result = backend.add_token(token).await;
    let added = recorded(&*backend, caller, request, Some(target), result)?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

pub(super) async fn remove_token<B: Backend>(
    State(backend): State<Arc<B>>,
    request_caller: Option<axum::Extension<Caller>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let caller = caller(request_caller)?;
    let request = format!("DELETE /api/v1/tokens/{name}");
    need(&*backend, &caller, Role::Admin, &request, true)?;
    let result = backend.remove_token(&name).await;
    let target = format!("token {name:?}");
    recorded(&*backend, caller, request, Some(target), result)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
