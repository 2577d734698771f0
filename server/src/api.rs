//! The HTTP API: one router, built in [`router`], and handlers that translate between
//! HTTP and the [`Service`](crate::service::Service).
//!
//! **Only `api`, `ws` and `demo` know HTTP.** Every error leaves as
//! `{"error": {"code", "message"}}` with the status of its code, including the ones axum
//! would answer itself (a malformed body, an unknown path).

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use backchannel_protocol::http::{ErrorBody, ErrorDetail, OpenConversation, PutInbox};
use backchannel_protocol::http::{PutField, PutTag, PutTeam};
use backchannel_protocol::{ConversationId, InboxId};
use backchannel_protocol::{FieldTarget, NoteAudience, NoteType, Status, TeamId, UserId};
use serde::Deserialize;
use std::collections::BTreeMap;

use crate::app::AppState;
use crate::auth::Identity;
use crate::broker::BrokerStatus;
use crate::error::ServiceError;
use crate::service::{ListQuery, SearchQuery};

/// Largest request body.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The public router; `/metrics` on it only if `with_metrics` (see [`metrics_router`]).
pub fn router(state: Arc<AppState>, with_metrics: bool) -> Router {
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/ws", get(crate::ws::upgrade))
        .route("/v1/inboxes/{id}", put(put_inbox))
        .route(
            "/v1/conversations",
            post(open_conversation).get(list_conversations),
        )
        .route("/v1/conversations/{id}", get(show_conversation))
        .route("/v1/conversations/{id}/events", get(history))
        .route("/v1/conversations/{id}/audit", get(audit))
        .route("/v1/conversations/{id}/messages", post(send_message))
        .route("/v1/conversations/{id}/notes", post(write_note))
        .route("/v1/conversations/{id}/assign", post(assign))
        .route("/v1/conversations/{id}/status", post(set_status))
        .route("/v1/conversations/{id}/tags", post(tag))
        .route("/v1/fields/values", post(set_fields))
        .route("/v1/contacts/{id}", get(contact))
        .route("/v1/notifications", get(notifications))
        .route("/v1/notifications/read", post(read_notifications))
        .route("/v1/search/notes", get(search_notes))
        .route("/v1/tags", get(list_tags))
        .route("/v1/tags/{name}", put(put_tag).delete(delete_tag))
        .route("/v1/fields", get(list_fields))
        .route("/v1/fields/{key}", put(put_field))
        .route("/v1/teams", get(list_teams))
        .route("/v1/teams/{id}", put(put_team))
        .route("/v1/agents", get(agents));
    let routes = if with_metrics {
        routes.route("/metrics", get(metrics))
    } else {
        routes
    };
    // With `--demo` only: the demo pages and the demo users' tokens (`demo.rs`).
    let routes = if state.demo.is_some() {
        routes.merge(crate::demo::router())
    } else {
        routes
    };
    routes
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// `GET /metrics` alone, for `--metrics-listen`.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// A service error on its way out as an HTTP response.
#[derive(Debug)]
pub struct ApiError(pub ServiceError);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.0.code();
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = self.0.to_string();
        let missed = match self.0 {
            ServiceError::Conflict { missed, .. } => Some(missed),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message,
                missed,
            },
        };
        (status, Json(body)).into_response()
    }
}

fn body_error(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError(ServiceError::TooLarge(format!(
            "request body over {MAX_BODY_BYTES} bytes"
        )))
    } else {
        ApiError(ServiceError::bad_request(rejection.body_text()))
    }
}

fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError(ServiceError::bad_request(rejection.body_text()))
}

fn conversation_id(raw: &str) -> Result<ConversationId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError(ServiceError::bad_request("not a conversation id (a UUID)")))
}

/// The token of an `Authorization` value: the scheme is case-insensitive (RFC 9110,
/// 11.1), so `bearer` is as good as `Bearer`.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// The caller, from `Authorization: Bearer <token>`.
pub struct Caller(pub Identity);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or_else(|| {
                ApiError(ServiceError::Unauthorized(
                    "missing `Authorization: Bearer <token>`".into(),
                ))
            })?;
        let identity = state.service.authenticate(token.trim()).await?;
        state.rate.check_user(&identity.user_id)?;
        Ok(Caller(identity))
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the store answers. A degraded broker is reported but keeps the node
/// ready: it still acknowledges writes and serves its own sockets, and catches up when
/// the broker is back; taking every node out of rotation when Redis blips would be worse.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let broker = match state.broker.status() {
        BrokerStatus::Ok => "ok".to_owned(),
        BrokerStatus::Degraded(reason) => format!("degraded: {reason}"),
    };
    match state.service.ready().await {
        Ok(()) => Json(serde_json::json!({"store": "ok", "broker": broker})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"store": e.to_string(), "broker": broker})),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError(ServiceError::NotFound("route".into()))
}

/// 405 with the contract's error body (axum's own has none).
async fn method_not_allowed() -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: backchannel_protocol::ErrorCode::BadRequest,
            message: "this path does not take that method".into(),
            missed: None,
        },
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// A path's parameters, as axum's `Path` reads them, but refused with the contract's
/// JSON `bad_request` (axum answers a segment that is not UTF-8 once decoded, such as
/// `%FF`, in plain text).
pub(crate) struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(ApiError(ServiceError::bad_request(rejection.body_text()))),
        }
    }
}

async fn put_inbox(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    body: Result<Json<PutInbox>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(body_error)?;
    let inbox = state
        .service
        .put_inbox(&who, InboxId(id), body.name)
        .await?;
    Ok(Json(inbox).into_response())
}

async fn open_conversation(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    body: Result<Json<OpenConversation>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(body_error)?;
    let view = state.service.open_conversation(&who, body).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn list_conversations(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let list = state.service.list_conversations(&who, query).await?;
    Ok(Json(serde_json::json!({ "conversations": list })).into_response())
}

async fn show_conversation(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = conversation_id(&id)?;
    let view = state.service.conversation(&who, id).await?;
    Ok(Json(view).into_response())
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    #[serde(default)]
    after: u64,
    limit: Option<u32>,
}

async fn history(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = conversation_id(&id)?;
    let Query(query) = query.map_err(query_error)?;
    let page = state
        .service
        .history(&who, id, query.after, query.limit)
        .await?;
    Ok(Json(page).into_response())
}

async fn audit(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = conversation_id(&id)?;
    Ok(Json(state.service.audit(&who, id).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    client_id: String,
    body: String,
    #[serde(default)]
    based_on_seq: Option<u64>,
}

async fn send_message(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    body: Result<Json<SendBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = conversation_id(&id)?;
    let Json(body) = body.map_err(body_error)?;
    let result = state
        .service
        .send_message(&who, id, body.client_id, body.body, body.based_on_seq)
        .await?;
    Ok((StatusCode::CREATED, Json(result)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    client_id: String,
    body: String,
    #[serde(default)]
    note_type: Option<NoteType>,
    #[serde(default)]
    audience: Option<NoteAudience>,
}

async fn write_note(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    body: Result<Json<NoteBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = conversation_id(&id)?;
    let Json(body) = body.map_err(body_error)?;
    let result = state
        .service
        .write_note(
            &who,
            id,
            body.client_id,
            body.body,
            body.note_type,
            body.audience,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(result)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    #[serde(default)]
    assignee_id: Option<UserId>,
    #[serde(default)]
    team_id: Option<TeamId>,
    #[serde(default)]
    note: Option<String>,
}

async fn assign(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    body: Result<Json<AssignBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = conversation_id(&id)?;
    let Json(body) = body.map_err(body_error)?;
    let result = state
        .service
        .assign(&who, id, body.assignee_id, body.team_id, body.note)
        .await?;
    Ok(Json(result).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: Status,
}

async fn set_status(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    body: Result<Json<StatusBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = conversation_id(&id)?;
    let Json(body) = body.map_err(body_error)?;
    Ok(Json(state.service.set_status(&who, id, body.status).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TagBody {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

async fn tag(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    body: Result<Json<TagBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = conversation_id(&id)?;
    let Json(body) = body.map_err(body_error)?;
    match state.service.tag(&who, id, body.add, body.remove).await? {
        Some(result) => Ok(Json(result).into_response()),
        None => Ok(Json(serde_json::json!({})).into_response()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldsBody {
    target: FieldTarget,
    id: String,
    fields: BTreeMap<String, serde_json::Value>,
}

async fn set_fields(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    body: Result<Json<FieldsBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(body_error)?;
    let result = state
        .service
        .set_fields(&who, body.target, body.id, body.fields)
        .await?;
    Ok(Json(result).into_response())
}

async fn contact(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.service.contact(&who, UserId(id)).await?).into_response())
}

#[derive(Debug, Deserialize)]
struct NotificationsQuery {
    #[serde(default)]
    unread: bool,
    limit: Option<u32>,
    /// Only ids below this one: the next page of an older list.
    before: Option<u64>,
}

async fn notifications(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    query: Result<Query<NotificationsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let page = state
        .service
        .notifications(&who, query.unread, query.before, query.limit)
        .await?;
    Ok(Json(page).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    #[serde(default)]
    ids: Option<Vec<u64>>,
    #[serde(default)]
    up_to: Option<u64>,
}

async fn read_notifications(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    body: Result<Json<ReadBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(body_error)?;
    let result = state
        .service
        .read_notifications(&who, body.ids, body.up_to)
        .await?;
    Ok(Json(result).into_response())
}

async fn search_notes(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    Ok(Json(state.service.search_notes(&who, query).await?).into_response())
}

async fn list_tags(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    let tags = state.service.tags(&who).await?;
    Ok(Json(serde_json::json!({ "tags": tags })).into_response())
}

async fn put_tag(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    Path(name): Path<String>,
    body: Result<Json<PutTag>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(body_error)?;
    Ok(Json(state.service.put_tag(&who, name, body).await?).into_response())
}

async fn delete_tag(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.service.delete_tag(&who, name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_fields(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    let fields = state.service.fields(&who).await?;
    Ok(Json(serde_json::json!({ "fields": fields })).into_response())
}

async fn put_field(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    Path(key): Path<String>,
    body: Result<Json<PutField>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(body_error)?;
    Ok(Json(state.service.put_field(&who, key, body).await?).into_response())
}

async fn list_teams(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    let teams = state.service.teams(&who).await?;
    Ok(Json(serde_json::json!({ "teams": teams })).into_response())
}

async fn put_team(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
    Path(id): Path<String>,
    body: Result<Json<PutTeam>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(body_error)?;
    Ok(Json(state.service.put_team(&who, TeamId(id), body).await?).into_response())
}

async fn agents(
    State(state): State<Arc<AppState>>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    let agents = state.service.agents(&who).await?;
    Ok(Json(serde_json::json!({ "agents": agents })).into_response())
}

/// Keeps the protocol's code list and the HTTP mapping in one place for tests.
#[cfg(test)]
mod tests {
    use super::*;
    use backchannel_protocol::ErrorCode;

    #[test]
    fn every_code_has_an_http_status() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::TooLarge,
            ErrorCode::RateLimited,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            assert!(StatusCode::from_u16(code.http_status()).is_ok());
        }
    }
}
