//! The admin HTTP server on `DISPATCHBOX_HTTP_ADDR`: probes and metrics for the platform,
//! and (mounted under `/api`, behind the admin token) the dead-letter API.
//!
//! - `GET /health`: liveness. 200 `{"status":"ok"}` while the process serves HTTP at all.
//! - `GET /ready`: readiness. 200 only when the database answers (`SELECT 1`, cached for
//!   [`DATABASE_CHECK_TTL`]), the replication stream runs or the relay stands by as a
//!   replica, and no part of the pipeline reported a problem ([`Health::set_problem`], e.g.
//!   a status writer that has written nothing for `DISPATCHBOX_STATUS_STALL_TIMEOUT`);
//!   otherwise 503 with the reasons. 503 `{"status":"shutting down"}` from the moment
//!   shutdown begins, for as long as the relay still drains. The body reports each sink's
//!   last check (run by the relay, also exported as `dispatchbox_sink_up`), but a sink that
//!   is down does not make the relay unready: every replica shares the sinks, so taking
//!   them all out of service would stall rollouts and fix nothing, while the relay keeps
//!   its events in the rows and retries them once the sink is back.
//! - `GET /metrics`: Prometheus text format (see [`crate::telemetry::metrics`]).
//! - `GET /console`: the dead-letter console ([`console`]), a page over `/api`.
//!
//! Every response carries a strict Content-Security-Policy ([`console::SECURITY_HEADERS`]).
//!
//! The probes only read: the [`Health`] handle and the store (a ping). They never change
//! relay state, and a slow probe never delays the pipeline. Only the token-guarded `/api`
//! changes rows (retries and replays of the operator's choosing).

pub mod api;
pub mod console;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::names::Identifier;
use crate::secret::Secret;
use crate::sink::Sink;
use crate::source::slot::{self, SlotWalStatus};
use crate::store::{Store, StoreError};
use crate::telemetry::health::{Health, SinkHealth, StreamState};
use crate::telemetry::metrics;

/// How long a database check result is reused by `/ready`.
pub const DATABASE_CHECK_TTL: Duration = Duration::from_secs(2);
/// How long `/api/overview`'s answer is reused: however many consoles refresh, the
/// database answers its two queries at most once per this interval.
pub const OVERVIEW_TTL: Duration = Duration::from_secs(2);
/// Longest a single readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "cannot listen on DISPATCHBOX_HTTP_ADDR {addr}: {source}; \
         set DISPATCHBOX_HTTP_ADDR to a free address and port"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the handlers read. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminState {
    health: Health,
    store: Store,
    sinks: Arc<[Sink]>,
    slot: Identifier,
    cache: Arc<Caches>,
}

impl AdminState {
    /// State over the relay's health handle, store, sinks and replication slot name.
    pub fn new(health: Health, store: Store, sinks: Arc<[Sink]>, slot: Identifier) -> Self {
        Self {
            health,
            store,
            sinks,
            slot,
            cache: Arc::default(),
        }
    }

    /// What the console's overview shows (`GET /api/overview`): rows per status, the
    /// stream's state and role, the replication lag, the slot and the sinks' last checks.
    /// Reused for [`OVERVIEW_TTL`]; concurrent callers wait for one refresh.
    pub async fn overview(&self) -> Result<serde_json::Value, StoreError> {
        cached(&self.cache.overview, OVERVIEW_TTL, || self.read_overview()).await
    }

    async fn read_overview(&self) -> Result<serde_json::Value, StoreError> {
        let counts = self.store.status_counts().await?;
        let slot = match slot::inspect_with(&self.store, &self.slot).await {
            Ok(status) => json!({
                "name": status.name,
                "exists": status.exists,
                "active": status.active,
                "wal_status": status.wal_status.map(SlotWalStatus::as_str),
                "lag_bytes": status.lag_bytes,
            }),
            Err(error) => json!({ "name": self.slot.as_str(), "error": error.to_string() }),
        };
        let stream = self.health.stream();
        let role = match stream {
            StreamState::Streaming => "leader",
            StreamState::StandingBy => "standby",
            _ => "unknown",
        };
        Ok(json!({
            "counts": counts,
            "relay": {
                "stream": stream.as_str(),
                "stream_connected": stream == StreamState::Streaming,
                "role": role,
                "lag_seconds": metrics::replication_lag_now(),
                "shutting_down": self.health.is_shutting_down(),
                "problems": self.health.problems(),
                "sinks": self.sink_health(),
            },
            "slot": slot,
        }))
    }

    /// The store (for routers mounted next to the probes).
    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn database_problems(&self) -> Vec<String> {
        let problems = cached(&self.cache.database, DATABASE_CHECK_TTL, || async {
            Ok::<_, Infallible>(
                match tokio::time::timeout(CHECK_TIMEOUT, self.store.ping()).await {
                    Ok(Ok(())) => Vec::new(),
                    Ok(Err(error)) => vec![format!("database unreachable: {error}")],
                    Err(_) => vec![format!(
                        "database unreachable: no answer within {}s",
                        CHECK_TIMEOUT.as_secs()
                    )],
                },
            )
        })
        .await;
        match problems {
            Ok(problems) => problems,
            Err(never) => match never {},
        }
    }

    /// Each sink's last check, as `/ready` reports it: `{"kafka": {"up": false, "error":
    /// "…"}, "stdout": {"up": true}}` (`"up": null` before the first check).
    fn sink_health(&self) -> serde_json::Map<String, serde_json::Value> {
        self.sinks
            .iter()
            .map(|sink| {
                let health = match self.health.sink(sink.name()) {
                    SinkHealth::Unknown => json!({ "up": null }),
                    SinkHealth::Up => json!({ "up": true }),
                    SinkHealth::Down(error) => json!({ "up": false, "error": error }),
                };
                (sink.name().to_owned(), health)
            })
            .collect()
    }
}

/// A value and when it was computed.
type Cached<T> = Mutex<Option<(Instant, T)>>;

/// Last results of the readiness check and of the overview.
#[derive(Debug, Default)]
struct Caches {
    database: Cached<Vec<String>>,
    overview: Cached<serde_json::Value>,
}

/// The value in `slot` when younger than `ttl`, else what `compute` gives, cached when it
/// succeeds. Concurrent callers wait for one computation instead of each running their own.
async fn cached<T, E, F, Fut>(slot: &Cached<T>, ttl: Duration, compute: F) -> Result<T, E>
where
    T: Clone,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut slot = slot.lock().await;
    if let Some((at, value)) = slot.as_ref() {
        if at.elapsed() < ttl {
            return Ok(value.clone());
        }
    }
    let value = compute().await?;
    *slot = Some((Instant::now(), value.clone()));
    Ok(value)
}

/// The admin routes over `state`.
pub fn router(state: AdminState, admin_token: Option<Secret<String>>) -> Router {
    let api = api::router(state.store().clone(), Some(state.clone()), admin_token);
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(state)
        // The dead-letter API, guarded by DISPATCHBOX_ADMIN_TOKEN.
        .nest("/api", api)
        // The console's page and assets (public; its data comes from /api with the token).
        .merge(console::router())
        .layer(axum::middleware::from_fn(console::security_headers))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

fn shutting_down() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "shutting down" })),
    )
        .into_response()
}

async fn ready(State(state): State<AdminState>) -> Response {
    if state.health.is_shutting_down() {
        return shutting_down();
    }
    let mut reasons = state.database_problems().await;
    let stream = state.health.stream();
    match stream {
        StreamState::Streaming | StreamState::StandingBy => {}
        StreamState::Starting => reasons.push("replication stream not started yet".into()),
        StreamState::Reconnecting => {
            reasons.push("replication stream disconnected; reconnecting".into())
        }
        StreamState::Stopped => reasons.push("replication stream stopped".into()),
    }
    reasons.extend(state.health.problems());
    let sinks = state.sink_health();
    // Shutdown may have begun while the checks ran.
    if state.health.is_shutting_down() {
        return shutting_down();
    }
    if reasons.is_empty() {
        (
            StatusCode::OK,
            Json(json!({ "status": "ready", "stream": stream.as_str(), "sinks": sinks })),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not ready",
                "stream": stream.as_str(),
                "reasons": reasons,
                "sinks": sinks,
            })),
        )
            .into_response()
    }
}

async fn render_metrics() -> Response {
    match metrics::render() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {error}\n"),
        )
            .into_response(),
    }
}

/// The running admin server.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` and serves `app` until [`AdminServer::stop`]. Logs the bound address
    /// (`admin server listening`, field `addr`), which tells the real port when `addr`
    /// asked for port 0.
    pub async fn start(addr: SocketAddr, app: Router) -> Result<Self, AdminError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        tracing::info!(addr = %addr, "admin server listening");
        let stop = CancellationToken::new();
        let graceful = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await
            {
                tracing::error!(error = %error, "admin server failed");
            }
        });
        Ok(Self { addr, stop, task })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open requests finish for up to `timeout`, then drops the rest.
    pub async fn stop(self, timeout: Duration) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
        }
    }
}
