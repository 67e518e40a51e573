//! The admin HTTP API, mounted at `/api`: dead-letter listing, statistics, inspection and
//! retries over [`crate::ops::dead`] (the same queries as `dispatchbox dead`), plus its
//! OpenAPI 3.1 document.
//!
//! Routes (relative to the mount point):
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/dead-events` | `{"events": [...], "next_after_id": N\|null}` |
//! | GET | `/dead-events/stats` | counts per event type and aggregate type |
//! | GET | `/dead-events/{id}` | one dead event with payload and headers (404 when not dead) |
//! | POST | `/dead-events/{id}/retry` | `{"retried": [id], "dry_run": false}` (404 when not dead) |
//! | POST | `/dead-events/retry` | batch retry by `ids`, `filter` or `all`, optional `dry_run` |
//! | GET | `/openapi.json` | the OpenAPI document (no token needed) |
//! | POST | `/replay` | return `done` events to `pending` by filter, with a cap and `dry_run` |
//! | GET | `/overview` | rows per status, stream state and role, lag, slot, sinks (the console's header) |
//! | GET | `/events/{id}` | one event of any status, with payload, headers and status (404 when none) |
//! | POST | `/events/statuses` | how many of `ids` have each status (follows a retry or replay) |
//!
//! **Auth.** Every route but `/openapi.json` needs `Authorization: Bearer <token>` with
//! `DISPATCHBOX_ADMIN_TOKEN`; a missing or wrong token gets 401. Without a configured token
//! the API is off and every call gets **403** with a reason naming the variable (403, not
//! 503: nothing will change until an operator sets it, so clients should not retry).
//! Tokens are compared as SHA-256 digests in constant time (`subtle`), so neither the
//! content nor the length of the token leaks through timing.
//!
//! Every error is JSON `{"error": "..."}`; bad query parameters and bodies get 400 naming
//! the parameter. This module holds no SQL and never logs tokens or payloads.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AdminState;
use crate::ops::dead::{parse_time, DeadFilter, Detail, Page, RetryError, RetrySelection};
use crate::ops::dead::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};
use crate::ops::replay::{ReplayError, ReplayFilter, DEFAULT_REPLAY_CAP, MAX_PREVIEW};
use crate::secret::Secret;
use crate::store::stats::DONE_COUNT_LIMIT;
use crate::store::{Store, StoreError};

/// Every route path of the API (relative to its mount point), as the OpenAPI document
/// lists them.
pub const ROUTES: [&str; 10] = [
    "/dead-events",
    "/dead-events/stats",
    "/dead-events/{id}",
    "/dead-events/{id}/retry",
    "/dead-events/retry",
    "/openapi.json",
    "/replay",
    "/overview",
    "/events/{id}",
    "/events/statuses",
];

/// Most ids one `POST /events/statuses` may ask about.
pub const MAX_STATUS_IDS: usize = 10_000;

/// Reason given with 403 while no token is configured.
const DISABLED: &str = "the admin API is disabled: set DISPATCHBOX_ADMIN_TOKEN (or \
                        DISPATCHBOX_ADMIN_TOKEN_FILE) to enable it";

#[derive(Clone)]
struct ApiState {
    store: Store,
    /// The running relay's state, for `/overview` (`None` in tests of the API alone).
    relay: Option<AdminState>,
    /// SHA-256 of the configured token; `None` turns the API off.
    token_digest: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("store", &self.store)
            .field("token", &self.token_digest.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The API's router, to be mounted at `/api`. With `token` `None` every call except the
/// OpenAPI document is refused with 403. Without `relay`, `/overview` reports the counts
/// only.
pub fn router(store: Store, relay: Option<AdminState>, token: Option<Secret<String>>) -> Router {
    let state = ApiState {
        store,
        relay,
        token_digest: token.map(|t| Arc::from(Sha256::digest(t.expose().as_bytes()).as_slice())),
    };
    Router::new()
        .route("/dead-events", get(list))
        .route("/dead-events/stats", get(stats))
        .route("/dead-events/retry", post(retry_batch))
        .route("/dead-events/{id}", get(show))
        .route("/dead-events/{id}/retry", post(retry_one))
        .route("/replay", post(replay))
        .route("/overview", get(overview))
        .route("/events/statuses", post(statuses))
        .route("/events/{id}", get(show_event))
        // Applies to the routes above only: the OpenAPI document and 404s need no token.
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// A failed call: answered as `{"error": message}` with `status`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_dead(id: i64) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("no dead event with id {id}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    /// 503 when retrying may help (connection lost, pool exhausted), 500 otherwise.
    fn from(err: StoreError) -> Self {
        tracing::warn!(error = %err, "admin API database call failed");
        let status = if err.is_transient() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        Self::new(status, err.to_string())
    }
}

impl From<RetryError> for ApiError {
    fn from(err: RetryError) -> Self {
        match err {
            RetryError::NothingSelected => Self::bad_request(format!(
                "{err} (an empty \"ids\" list or filter selects nothing; use \"all\": true to \
                 retry every dead event)"
            )),
            RetryError::Store(e) => e.into(),
        }
    }
}

impl From<ReplayError> for ApiError {
    /// A refused selection or cap is the caller's (400); a database error as any other.
    fn from(err: ReplayError) -> Self {
        match err {
            ReplayError::Store(e) => e.into(),
            refused => Self::bad_request(refused.to_string()),
        }
    }
}

async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(expected) = &state.token_digest else {
        return ApiError::new(StatusCode::FORBIDDEN, DISABLED).into_response();
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| Sha256::digest(token.trim().as_bytes()));
    match presented {
        Some(digest) if bool::from(digest.as_slice().ct_eq(expected)) => next.run(request).await,
        Some(_) => unauthorized("the bearer token is wrong"),
        None => unauthorized("missing Authorization: Bearer <DISPATCHBOX_ADMIN_TOKEN> header"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Query parameters as given; parsed by hand so every error names its parameter.
type RawQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The filter and paging parameters of a listing (`paged`) or of the statistics.
fn parse_query(query: RawQuery, paged: bool) -> Result<(DeadFilter, Page), ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let now = Utc::now();
    let mut filter = DeadFilter::default();
    let mut limit = DEFAULT_PAGE_LIMIT;
    let mut after_id = None;
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in &pairs {
        if seen.contains(&name.as_str()) {
            return Err(ApiError::bad_request(format!(
                "query parameter {name:?} is given more than once"
            )));
        }
        seen.push(name);
        let invalid =
            |rule: String| ApiError::bad_request(format!("query parameter {name:?}: {rule}"));
        match name.as_str() {
            "aggregate_type" => filter.aggregate_type = Some(value.clone()),
            "event_type" => filter.event_type = Some(value.clone()),
            "error" => filter.error = Some(value.clone()),
            "since" => {
                filter.since = Some(
                    parse_time(&restore_plus(value), now).map_err(|e| invalid(e.to_string()))?,
                )
            }
            "until" => {
                filter.until = Some(
                    parse_time(&restore_plus(value), now).map_err(|e| invalid(e.to_string()))?,
                )
            }
            "limit" if paged => {
                limit = value.trim().parse().map_err(|_| {
                    invalid(format!(
                        "{value:?} is not valid; use a whole number from 1 to {MAX_PAGE_LIMIT}"
                    ))
                })?;
            }
            "after_id" if paged => {
                after_id = Some(value.trim().parse().map_err(|_| {
                    invalid(format!("{value:?} is not an event id (a whole number)"))
                })?);
            }
            _ => {
                let known = if paged {
                    "aggregate_type, event_type, error, since, until, limit, after_id"
                } else {
                    "aggregate_type, event_type, error, since, until"
                };
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {name:?}; known parameters: {known}"
                )));
            }
        }
    }
    let page = Page::new(limit, after_id)
        .map_err(|e| ApiError::bad_request(format!("query parameter \"limit\": {e}")))?;
    Ok((filter, page))
}

/// An RFC 3339 offset written unencoded in a URL (`…T10:00:00+02:00`) arrives with its `+`
/// decoded to a space; put it back rather than reject a time the user wrote correctly.
fn restore_plus(value: &str) -> String {
    let split = value
        .len()
        .checked_sub(6)
        .and_then(|i| Some((value.get(..i)?, value.get(i..)?.strip_prefix(' ')?)));
    match split {
        Some((time, offset)) if offset.as_bytes().get(2) == Some(&b':') && time.contains('T') => {
            format!("{time}+{offset}")
        }
        _ => value.to_owned(),
    }
}

fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "path parameter \"id\": {text:?} is not an event id (a whole number)"
        ))
    })
}

async fn list(State(state): State<ApiState>, query: RawQuery) -> Result<Response, ApiError> {
    let (filter, page) = parse_query(query, true)?;
    let page = state
        .store
        .list_dead(&filter, &page, Detail::Summary)
        .await?;
    Ok(Json(page).into_response())
}

async fn stats(State(state): State<ApiState>, query: RawQuery) -> Result<Response, ApiError> {
    let (filter, _) = parse_query(query, false)?;
    let stats = state.store.dead_stats(&filter).await?;
    Ok(Json(stats).into_response())
}

async fn show(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match state.store.show_dead(id).await? {
        Some(event) => Ok(Json(event).into_response()),
        None => Err(ApiError::not_dead(id)),
    }
}

async fn retry_one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let ids = state
        .store
        .retry_dead(&RetrySelection::Ids(vec![id]), false)
        .await?;
    if ids.is_empty() {
        return Err(ApiError::not_dead(id));
    }
    Ok(retried(&ids, false))
}

/// Body of `POST /dead-events/retry`: exactly one of `ids`, `filter` or `"all": true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    ids: Option<Vec<i64>>,
    filter: Option<FilterBody>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterBody {
    aggregate_type: Option<String>,
    event_type: Option<String>,
    since: Option<String>,
    until: Option<String>,
    ids: Option<Vec<i64>>,
    error: Option<String>,
}

impl FilterBody {
    fn into_filter(self, now: DateTime<Utc>) -> Result<DeadFilter, ApiError> {
        let time = |field: &str, value: Option<String>| {
            value
                .map(|v| parse_time(&v, now))
                .transpose()
                .map_err(|e| ApiError::bad_request(format!("filter.{field}: {e}")))
        };
        Ok(DeadFilter {
            since: time("since", self.since)?,
            until: time("until", self.until)?,
            aggregate_type: self.aggregate_type,
            event_type: self.event_type,
            ids: self.ids,
            error: self.error,
        })
    }
}

async fn retry_batch(
    State(state): State<ApiState>,
    body: Result<Json<RetryBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let selection = match (body.ids, body.filter, body.all) {
        (Some(ids), None, false) => RetrySelection::Ids(ids),
        (None, Some(filter), false) => RetrySelection::Matching(filter.into_filter(Utc::now())?),
        (None, None, true) => RetrySelection::All,
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of \"ids\" (a list of event ids), \"filter\" (an object) or \
                 \"all\": true",
            ))
        }
    };
    let ids = state.store.retry_dead(&selection, body.dry_run).await?;
    Ok(retried(&ids, body.dry_run))
}

/// The body of `POST /replay`: the filter fields of [`ReplayFilter`] (times as for the
/// dead-event filters: RFC 3339, a date or an age), `max` (the cap) and `dry_run`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    from_id: Option<i64>,
    to_id: Option<i64>,
    since: Option<String>,
    until: Option<String>,
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    event_type: Option<String>,
    #[serde(default)]
    all: bool,
    max: Option<i64>,
    #[serde(default)]
    dry_run: bool,
    /// With `dry_run`: also answer the first this many matching events (`"events"`).
    preview: Option<i64>,
}

async fn replay(
    State(state): State<ApiState>,
    body: Result<Json<ReplayBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let now = Utc::now();
    let time = |name: &str, text: Option<String>| {
        text.map(|t| parse_time(&t, now))
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
    };
    let filter = ReplayFilter {
        from_id: body.from_id,
        to_id: body.to_id,
        since: time("since", body.since)?,
        until: time("until", body.until)?,
        aggregate_type: body.aggregate_type,
        aggregate_id: body.aggregate_id,
        event_type: body.event_type,
        all: body.all,
    };
    let cap = body.max.unwrap_or(DEFAULT_REPLAY_CAP);
    let preview = match body.preview {
        Some(_) if !body.dry_run => {
            return Err(ApiError::bad_request(
                "\"preview\" needs \"dry_run\": true (a replay answers the ids it replayed)",
            ))
        }
        Some(n) if !(0..=MAX_PREVIEW).contains(&n) => {
            return Err(ApiError::bad_request(format!(
                "\"preview\": {n} is out of range; use a whole number from 0 to {MAX_PREVIEW}"
            )))
        }
        Some(n) => n,
        None => 0,
    };
    let outcome = state
        .store
        .replay_done(&filter, cap, body.dry_run, "api")
        .await?;
    if outcome.over_cap {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "more than {cap} delivered events match; nothing was replayed: narrow the \
                 filter or raise \"max\""
            ),
        ));
    }
    if !outcome.dry_run {
        crate::telemetry::metrics::events_replayed(outcome.replayed.len());
        tracing::info!(
            replayed_by = "api",
            events = outcome.replayed.len(),
            first_id = outcome.replayed.first(),
            last_id = outcome.replayed.last(),
            "events replayed"
        );
    }
    if preview == 0 {
        return Ok(Json(outcome).into_response());
    }
    let events = state.store.replay_preview(&filter, preview).await?;
    let mut answer = json!(outcome);
    answer["events"] = json!(events);
    Ok(Json(answer).into_response())
}

async fn overview(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let overview = match &state.relay {
        Some(relay) => relay.overview().await?,
        None => json!({ "counts": state.store.status_counts().await? }),
    };
    Ok(Json(overview).into_response())
}

async fn show_event(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match state.store.show_event(id).await? {
        Some(event) => Ok(Json(event).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no event with id {id}"),
        )),
    }
}

/// Body of `POST /events/statuses`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusesBody {
    ids: Vec<i64>,
}

async fn statuses(
    State(state): State<ApiState>,
    body: Result<Json<StatusesBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    if body.ids.len() > MAX_STATUS_IDS {
        return Err(ApiError::bad_request(format!(
            "\"ids\" holds {} ids; ask about at most {MAX_STATUS_IDS} at a time",
            body.ids.len()
        )));
    }
    let counts = state.store.statuses_of(&body.ids).await?;
    let by_status: serde_json::Map<String, Value> = counts
        .into_iter()
        .map(|(status, rows)| (status, json!(rows)))
        .collect();
    Ok(Json(json!({ "by_status": by_status })).into_response())
}

fn retried(ids: &[i64], dry_run: bool) -> Response {
    Json(json!({ "retried": ids, "dry_run": dry_run })).into_response()
}

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

/// The OpenAPI 3.1 document of this API, written by hand from [`ROUTES`] (assembled from
/// small pieces: one `json!` per operation keeps it readable).
pub fn openapi_document() -> Value {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        })
    };
    let ok = |schema: &str| {
        json!({
            "description": "OK",
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
        })
    };
    let query = |name: &str, description: &str, schema: Value| {
        json!({"name": name, "in": "query", "required": false,
               "description": description, "schema": schema})
    };
    let time = "RFC 3339 time, a date (midnight UTC) or an age such as 24h or 7d (that long ago)";
    let filters = vec![
        query(
            "aggregate_type",
            "Only this aggregate type (exact match).",
            json!({"type": "string"}),
        ),
        query(
            "event_type",
            "Only this event type (exact match).",
            json!({"type": "string"}),
        ),
        query(
            "error",
            "Only events whose last error contains this text (ignoring case).",
            json!({"type": "string"}),
        ),
        query(
            "since",
            &format!("Failed at or after: {time}."),
            json!({"type": "string"}),
        ),
        query(
            "until",
            &format!("Failed before: {time}."),
            json!({"type": "string"}),
        ),
    ];
    let mut paged = filters.clone();
    paged.push(query(
        "limit",
        "Events per page.",
        json!({"type": "integer", "minimum": 1, "maximum": MAX_PAGE_LIMIT, "default": DEFAULT_PAGE_LIMIT}),
    ));
    paged.push(query(
        "after_id",
        "Only ids above this one (the previous page's next_after_id).",
        json!({"type": "integer", "format": "int64"}),
    ));
    let id_param = json!([{"name": "id", "in": "path", "required": true,
                           "schema": {"type": "integer", "format": "int64"}}]);
    let denied = |mut responses: Value| {
        responses["401"] = error("Missing or wrong bearer token.");
        responses["403"] = error("No DISPATCHBOX_ADMIN_TOKEN is configured: the API is off.");
        responses["500"] = error("Database error.");
        responses["503"] = error("The database is unreachable; try again.");
        responses
    };
    let paths = json!({
        ROUTES[0]: {"get": {
            "summary": "List dead events (without payloads), in id order, one page at a time.",
            "operationId": "listDeadEvents",
            "parameters": paged,
            "responses": denied(json!({"200": ok("DeadPage"), "400": error("Invalid query parameter.")}))
        }},
        ROUTES[1]: {"get": {
            "summary": "Count dead events per event type, aggregate type and (the most frequent) last error.",
            "operationId": "deadEventStats",
            "parameters": filters,
            "responses": denied(json!({"200": ok("DeadStats"), "400": error("Invalid query parameter.")}))
        }},
        ROUTES[2]: {"get": {
            "summary": "One dead event with its payload and headers.",
            "operationId": "showDeadEvent",
            "parameters": id_param.clone(),
            "responses": denied(json!({"200": ok("DeadEvent"), "400": error("Invalid id."),
                                       "404": error("No dead event has this id.")}))
        }},
        ROUTES[3]: {"post": {
            "summary": "Make one dead event due for delivery now.",
            "operationId": "retryDeadEvent",
            "parameters": id_param.clone(),
            "responses": denied(json!({"200": ok("RetryResult"), "400": error("Invalid id."),
                                       "404": error("No dead event has this id.")}))
        }},
        ROUTES[4]: {"post": {
            "summary": "Make the selected dead events due for delivery now (or, with dry_run, list them).",
            "operationId": "retryDeadEvents",
            "requestBody": {"required": true, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/RetryRequest"}}}},
            "responses": denied(json!({"200": ok("RetryResult"),
                                       "400": error("Invalid body or nothing selected.")}))
        }},
        ROUTES[6]: {"post": {
            "summary": "Return delivered (done) events to pending so the sweeper delivers them again (or, with dry_run, count them).",
            "operationId": "replayEvents",
            "requestBody": {"required": true, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ReplayRequest"}}}},
            "responses": denied(json!({"200": ok("ReplayResult"),
                                       "400": error("Invalid body or nothing selected."),
                                       "409": error("More events match than max: nothing was replayed.")}))
        }},
        ROUTES[7]: {"get": {
            "summary": "Rows per status (done counted up to 1000, estimated beyond), the stream's state and role, replication lag, slot and sinks. Cached for 2 s.",
            "operationId": "overview",
            "responses": denied(json!({"200": ok("Overview")}))
        }},
        ROUTES[8]: {"get": {
            "summary": "One event of any status, with payload, headers, status and next run time.",
            "operationId": "showEvent",
            "parameters": id_param.clone(),
            "responses": denied(json!({"200": ok("Event"), "400": error("Invalid id."),
                                       "404": error("No event has this id.")}))
        }},
        ROUTES[9]: {"post": {
            "summary": "How many of the given events have each status (to follow a retry or replay).",
            "operationId": "eventStatuses",
            "requestBody": {"required": true, "content": {"application/json": {
                "schema": {"type": "object", "additionalProperties": false, "required": ["ids"],
                           "properties": {"ids": {"type": "array", "maxItems": MAX_STATUS_IDS,
                                                  "items": {"type": "integer", "format": "int64"}}}}}}},
            "responses": denied(json!({"200": ok("Statuses"), "400": error("Invalid body or too many ids.")}))
        }},
        ROUTES[5]: {"get": {
            "summary": "This document.",
            "operationId": "openapi",
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1 document",
                                  "content": {"application/json": {}}}}
        }},
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "dispatchbox admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Dead-letter management for the dispatchbox outbox relay. A retried \
                            event returns to `pending` (attempts reset, last error kept) and \
                            the running relay's sweeper delivers it within \
                            DISPATCHBOX_SWEEP_INTERVAL."
        },
        "servers": [{"url": "/api"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                "description": "The value of DISPATCHBOX_ADMIN_TOKEN."}},
            "schemas": schemas(),
        }
    })
}

fn schemas() -> Value {
    let time = json!({"type": ["string", "null"], "format": "date-time"});
    let event = json!({
        "type": "object",
        "required": ["id", "aggregate_type", "aggregate_id", "event_type", "attempts",
                     "last_error", "last_error_at", "created_at"],
        "properties": {
            "id": {"type": "integer", "format": "int64"},
            "aggregate_type": {"type": "string"},
            "aggregate_id": {"type": "string"},
            "event_type": {"type": "string"},
            "attempts": {"type": "integer"},
            "last_error": {"type": ["string", "null"]},
            "last_error_at": time,
            "created_at": time,
            "payload": {"description": "The stored payload (only on a single event)."},
            "unreadable": {"type": "string", "description": "Present when columns of the row cannot be read (NULL, a timestamp of infinity, an unexpected type): which, never their values. Those fields are empty."},
            "headers": {"description": "The headers column: an object or null (only on a single event)."}
        }
    });
    let group = json!({"type": "array", "items": {"type": "object", "required": ["name", "count"],
        "properties": {"name": {"type": "string"}, "count": {"type": "integer"}}}});
    let filter = json!({
        "type": "object", "additionalProperties": false,
        "properties": {
            "aggregate_type": {"type": "string"},
            "event_type": {"type": "string"},
            "since": {"type": "string", "description": "RFC 3339, a date or an age such as 24h"},
            "until": {"type": "string", "description": "RFC 3339, a date or an age such as 24h"},
            "ids": {"type": "array", "items": {"type": "integer", "format": "int64"}},
            "error": {"type": "string", "description": "last error contains this text (ignoring case)"}
        }
    });
    let mut detail = event.clone();
    if let Some(required) = detail["required"].as_array_mut() {
        required.extend([json!("status"), json!("next_run_at")]);
    }
    detail["properties"]["status"] =
        json!({"enum": ["pending", "processing", "retry", "done", "dead"]});
    detail["properties"]["next_run_at"] = time.clone();
    let count = json!({"type": "integer", "format": "int64"});
    json!({
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
        "DeadEvent": event,
        "DeadPage": {"type": "object", "required": ["events", "next_after_id"], "properties": {
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/DeadEvent"}},
            "next_after_id": {"type": ["integer", "null"], "format": "int64"}
        }},
        "DeadStats": {"type": "object", "required": ["total", "by_event_type", "by_aggregate_type",
                      "oldest_failed_at", "newest_failed_at"], "properties": {
            "total": {"type": "integer"},
            "by_event_type": group.clone(),
            "by_aggregate_type": group.clone(),
            "by_last_error": group,
            "oldest_failed_at": time.clone(),
            "newest_failed_at": time
        }},
        "RetryRequest": {
            "type": "object", "additionalProperties": false,
            "description": "Exactly one of ids, filter (not empty) or all: true.",
            "properties": {
                "ids": {"type": "array", "items": {"type": "integer", "format": "int64"}},
                "filter": filter,
                "all": {"type": "boolean"},
                "dry_run": {"type": "boolean", "default": false}
            }
        },
        "ReplayRequest": {
            "type": "object", "additionalProperties": false,
            "description": "At least one filter field, or all: true.",
            "properties": {
                "from_id": {"type": "integer", "format": "int64"},
                "to_id": {"type": "integer", "format": "int64"},
                "since": {"type": "string", "description": "created at or after: RFC 3339, a date or an age (24h)"},
                "until": {"type": "string", "description": "created before (same forms)"},
                "aggregate_type": {"type": "string"},
                "aggregate_id": {"type": "string"},
                "event_type": {"type": "string"},
                "all": {"type": "boolean"},
                "max": {"type": "integer", "format": "int64", "default": DEFAULT_REPLAY_CAP},
                "dry_run": {"type": "boolean", "default": false},
                "preview": {"type": "integer", "minimum": 0, "maximum": MAX_PREVIEW,
                            "description": "with dry_run: also answer the first this many matching events (\"events\", no payloads)"}
            }
        },
        "ReplayResult": {"type": "object", "required": ["matched", "over_cap", "replayed", "dry_run"], "properties": {
            "matched": {"type": "integer", "format": "int64"},
            "over_cap": {"type": "boolean"},
            "replayed": {"type": "array", "items": {"type": "integer", "format": "int64"}},
            "dry_run": {"type": "boolean"},
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/DeadEvent"},
                       "description": "the first matching events (a dry run with preview)"}
        }},
        "Event": detail,
        "Statuses": {"type": "object", "required": ["by_status"], "properties": {
            "by_status": {"type": "object", "additionalProperties": count.clone(),
                          "description": "rows per status among the ids asked about"}
        }},
        "Overview": {"type": "object", "required": ["counts"], "properties": {
            "counts": {"type": "object", "properties": {
                "pending": count.clone(), "retry": count.clone(), "processing": count.clone(),
                "dead": count.clone(),
                "done": {"type": "integer", "format": "int64", "description": format!("done rows, counted up to {DONE_COUNT_LIMIT}")},
                "done_more": {"type": "boolean", "description": format!("more than {DONE_COUNT_LIMIT} rows are done")},
                "done_estimate": {"type": ["integer", "null"], "description": "done itself when exact, else the planner's row estimate of the table minus the other statuses"}
            }},
            "relay": {"type": "object", "properties": {
                "stream": {"enum": ["starting", "streaming", "standing by", "reconnecting", "stopped"]},
                "stream_connected": {"type": "boolean"},
                "role": {"enum": ["leader", "standby", "unknown"]},
                "lag_seconds": {"type": "number"},
                "shutting_down": {"type": "boolean"},
                "problems": {"type": "array", "items": {"type": "string"}},
                "sinks": {"type": "object", "description": "as in /ready"}
            }},
            "slot": {"type": "object", "properties": {
                "name": {"type": "string"}, "exists": {"type": "boolean"},
                "active": {"type": "boolean"},
                "wal_status": {"type": ["string", "null"]},
                "lag_bytes": {"type": ["integer", "null"]},
                "error": {"type": "string"}
            }}
        }},
        "RetryResult": {"type": "object", "required": ["retried", "dry_run"], "properties": {
            "retried": {"type": "array", "items": {"type": "integer", "format": "int64"}},
            "dry_run": {"type": "boolean"}
        }}
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unencoded_plus_of_an_offset_is_restored() {
        assert_eq!(
            restore_plus("2024-05-01T10:00:00 02:00"),
            "2024-05-01T10:00:00+02:00"
        );
        for unchanged in [
            "2024-05-01T10:00:00Z",
            "24h",
            "2024-05-01",
            "",
            " ",
            "ab 12:34",
        ] {
            assert_eq!(restore_plus(unchanged), unchanged);
        }
    }

    #[test]
    fn openapi_lists_every_route_with_a_method() {
        let doc = openapi_document();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), ROUTES.len());
        for route in ROUTES {
            let item = paths[route].as_object().unwrap();
            assert!(
                item.contains_key("get") || item.contains_key("post"),
                "{route}"
            );
        }
        // Every $ref resolves.
        let text = doc.to_string();
        for name in text.split("#/components/schemas/").skip(1) {
            let name = name.split('"').next().unwrap();
            assert!(doc["components"]["schemas"].get(name).is_some(), "{name}");
        }
    }
}
