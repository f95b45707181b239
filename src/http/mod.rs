//! The HTTP surface: callbacks, the admin API, health, readiness, metrics,
//! and the web console under `/ui/`.

pub mod api;
pub mod auth;
pub mod callback;
mod error;
pub mod openapi;
pub mod results;
pub mod serve;
pub mod throttle;
pub mod ui;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use utoipa::ToSchema;

pub use error::{ApiError, ErrorBody};

use self::auth::{AdminAuth, Refused, Surface};

use crate::actions::Actions;
use crate::config::Settings;
use crate::runs::Runs;
use crate::token::TokenSigner;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The run lifecycle and the ledger.
    pub runs: Arc<Runs>,
    /// Readiness flags.
    pub health: Arc<Health>,
    /// The readers' pool (`database.reader_connections`): exports, console
    /// pages and the API's reads, apart from the daemon's own work.
    pub readers: sqlx::PgPool,
    /// Results exports streaming now, at most [`results::EXPORTS_AT_ONCE`].
    pub exports: Arc<tokio::sync::Semaphore>,
    /// The admin token, and the lockout of clients guessing it.
    pub auth: Arc<AdminAuth>,
}

impl AppState {
    /// The state of the handlers of `runs`, reading through `readers`.
    pub fn new(runs: Arc<Runs>, readers: sqlx::PgPool) -> Self {
        Self {
            auth: Arc::new(AdminAuth::new(&runs.settings)),
            runs,
            health: Arc::new(Health::default()),
            readers,
            exports: Arc::new(tokio::sync::Semaphore::new(results::EXPORTS_AT_ONCE)),
        }
    }

    /// The operator's actions (trigger, cancel, redrive, pause, resume).
    pub fn actions(&self) -> Actions<'_> {
        Actions::new(&self.runs)
    }

    /// The validated configuration.
    pub fn settings(&self) -> &Settings {
        &self.runs.settings
    }

    /// The daemon's own pool (writes, and reads that must see them), as
    /// opposed to [`Self::readers`].
    pub fn ledger(&self) -> &sqlx::PgPool {
        &self.runs.pool
    }

    /// Signs and verifies task tokens.
    pub fn signer(&self) -> &TokenSigner {
        &self.runs.signer
    }
}

/// Readiness flags set by the application.
#[derive(Debug, Default)]
pub struct Health {
    /// The schedule tickers are running.
    pub scheduler_running: AtomicBool,
    /// Shutdown has begun: the load balancer should stop sending traffic.
    pub shutting_down: AtomicBool,
    /// The last database check and when it was made: `/readyz` asks the
    /// database at most once a second, however often it is called.
    database: tokio::sync::Mutex<Option<(tokio::time::Instant, DatabaseCheck)>>,
}

/// What `/readyz` found in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DatabaseCheck {
    Ready,
    MigrationsPending,
    Unavailable,
}

/// How long one database check answers `/readyz`.
const READY_CHECK_TTL: Duration = Duration::from_secs(1);

/// The router with every route.
pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/v1/schedules", get(api::list_schedules))
        .route("/v1/schedules/{name}", get(api::get_schedule))
        .route("/v1/schedules/{name}/trigger", post(api::trigger))
        .route("/v1/runs", get(api::list_runs))
        .route("/v1/runs/{id}", get(api::get_run))
        .route("/v1/runs/{id}/pages", get(api::list_pages))
        .route("/v1/runs/{id}/changes", get(api::list_changes))
        .route("/v1/runs/{id}/results", get(results::export))
        .route("/v1/runs/{id}/cancel", post(api::cancel_run))
        .route("/v1/runs/{id}/redrive", post(api::redrive_run))
        .route("/v1/schedules/{name}/pause", post(api::pause))
        .route("/v1/schedules/{name}/resume", post(api::resume))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        // The callback reads its own body, bounded, after the token verifies.
        .route("/v1/callbacks", post(callback::receive))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::serve))
        .merge(admin)
        .merge(ui::router(state.clone()))
        .fallback(not_found)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Lets a request with the admin token through; 401 without it, 429 while
/// its client is locked out for presenting wrong ones ([`auth`]).
async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let client = state.auth.client(request.headers(), request.extensions());
    match state
        .auth
        .verify(&client, bearer(request.headers()), Surface::Api)
    {
        Ok(()) => Ok(next.run(request).await),
        Err(Refused::LockedOut { retry_after }) => Err(ApiError::TooManyRequests {
            message:
                "too many wrong admin tokens from this client: try again after Retry-After seconds"
                    .into(),
            retry_after,
        }),
        Err(Refused::Missing | Refused::Wrong) => Err(ApiError::Unauthorized(
            "this endpoint needs Authorization: Bearer <admin_token>".into(),
        )),
    }
}

/// The body of `/healthz` and `/readyz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Status {
    /// `ok` (`/healthz`), `ready` or `unavailable` (`/readyz`).
    pub status: StatusWord,
    /// Why the replica is not ready (`/readyz` answering 503 only): a
    /// generic reason, the details go to the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The `status` word of `/healthz` and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusWord {
    /// The process is alive.
    Ok,
    /// The replica should get traffic.
    Ready,
    /// The replica should not get traffic.
    Unavailable,
}

impl Status {
    fn is(status: StatusWord) -> Json<Status> {
        Json(Status {
            status,
            reason: None,
        })
    }
}

/// `GET /healthz`: 200 while the process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    summary = "Liveness",
    description = "200 while the process is alive; the database is not asked.",
    responses((status = 200, description = "Alive", body = Status))
)]
async fn healthz() -> Json<Status> {
    Status::is(StatusWord::Ok)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// `GET /readyz`: 200 when this replica should get traffic; 503 with a
/// generic reason otherwise (the details, such as a database error, go to
/// the log only).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    summary = "Readiness",
    description = "200 when the database answers, migrations are applied and the scheduler runs; otherwise 503 with a generic reason (`database unavailable`, `migrations pending`, `scheduler not running`, `shutting down`). The database is asked at most once a second.",
    responses(
        (status = 200, description = "Ready for traffic", body = Status),
        (status = 503, description = "Not ready, with the reason", body = Status),
    )
)]
async fn readyz(State(state): State<AppState>) -> Response {
    let not_ready = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Status {
                status: StatusWord::Unavailable,
                reason: Some(reason.to_string()),
            }),
        )
            .into_response()
    };
    if state.health.shutting_down.load(Ordering::SeqCst) {
        return not_ready("shutting down");
    }
    if !state.health.scheduler_running.load(Ordering::SeqCst) {
        return not_ready("scheduler not running");
    }
    match check_database(&state).await {
        DatabaseCheck::Ready => Status::is(StatusWord::Ready).into_response(),
        DatabaseCheck::MigrationsPending => not_ready("migrations pending"),
        DatabaseCheck::Unavailable => not_ready("database unavailable"),
    }
}

/// The database's readiness, asked at most once per [`READY_CHECK_TTL`]:
/// callers arriving while a check runs wait for it and share its answer.
async fn check_database(state: &AppState) -> DatabaseCheck {
    let mut cached = state.health.database.lock().await;
    if let Some((at, check)) = *cached {
        if at.elapsed() < READY_CHECK_TTL {
            return check;
        }
    }
    let ready = crate::ledger::ready(state.ledger());
    let check = match tokio::time::timeout(Duration::from_secs(2), ready).await {
        Ok(Ok(true)) => DatabaseCheck::Ready,
        Ok(Ok(false)) => {
            tracing::warn!("not ready: database migrations are not all applied");
            DatabaseCheck::MigrationsPending
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: the database is unreachable");
            DatabaseCheck::Unavailable
        }
        Err(_) => {
            tracing::warn!("not ready: the database did not answer within 2s");
            DatabaseCheck::Unavailable
        }
    };
    *cached = Some((tokio::time::Instant::now(), check));
    check
}

/// `GET /metrics`: the Prometheus text exposition.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain"))
)]
async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        metrics_handle().render(),
    )
}

/// The process's Prometheus recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .expect("bucket list is not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe_metrics();
        metrics::gauge!("fanfare_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("fanfare_runs_started_total", "Runs created, by schedule.");
    describe_counter!(
        "fanfare_fires_retried_total",
        "Cron fires whose run could not start yet (the ledger was unavailable) and are tried again, by schedule."
    );
    describe_counter!(
        "fanfare_exports_refused_total",
        "Results exports answered 429: as many as a replica streams at once were streaming."
    );
    describe_counter!(
        "fanfare_runs_finished_total",
        "Runs finished, by schedule and outcome."
    );
    describe_counter!(
        "fanfare_pages_dispatched_total",
        "Page attempts handed to a crawler."
    );
    describe_counter!(
        "fanfare_pages_retried_total",
        "Page attempts put back for another dispatch, by reason."
    );
    describe_counter!(
        "fanfare_invokes_total",
        "Invoke attempts by schedule and outcome (accepted, throttled, retryable_error, page_rejected, function_unusable)."
    );
    describe_histogram!(
        "fanfare_invoke_seconds",
        Unit::Seconds,
        "Time to hand one page to its invoker."
    );
    describe_counter!("fanfare_callbacks_total", "Crawler callbacks, by answer.");
    describe_histogram!(
        "fanfare_callback_seconds",
        Unit::Seconds,
        "Time to handle one callback."
    );
    describe_histogram!(
        "fanfare_record_batch_size",
        "Page changes (reports, deadlines, invoke errors) written per batch by the recorder."
    );
    describe_counter!(
        "fanfare_notifications_sent_total",
        "Notifications delivered, by kind."
    );
    describe_counter!(
        "fanfare_notification_attempts_failed_total",
        "Delivery attempts that failed and will be retried."
    );
    describe_counter!(
        "fanfare_notifications_failed_total",
        "Notifications given up on, by kind."
    );
    describe_gauge!(
        "fanfare_pages_in_flight",
        "Pages dispatched and unreported, by schedule."
    );
    describe_counter!(
        "fanfare_host_throttled_total",
        "Page dispatches a site answered with 429 or 503 (the host is slowed down)."
    );
    describe_counter!(
        "fanfare_admin_token_refused_total",
        "Admin tokens refused, by surface (console, api) and reason (wrong, locked_out: not looked at while the client is locked out)."
    );
    describe_gauge!(
        "fanfare_pages_waiting_on_host",
        "Ready pages held back by a host's in-flight limit, rate or Retry-After, by schedule."
    );
    describe_gauge!(
        "fanfare_console_event_streams",
        "Console event streams (live progress of a run) open on this replica."
    );
    describe_counter!(
        "fanfare_pruned_runs_total",
        "Finished runs deleted by retention (with their pages, page changes and notifications)."
    );
    describe_counter!(
        "fanfare_pruned_pages_total",
        "Pages deleted by retention with their runs."
    );
    describe_gauge!(
        "fanfare_build_info",
        "1, labelled with the daemon's version."
    );
    describe_counter!(
        "fanfare_console_event_streams_refused_total",
        "Console event streams answered 429, by the limit reached (session, replica)."
    );
}
