//! The admin API: schedules (list, trigger, pause, resume), runs (list,
//! read, cancel, redrive), their pages and what changed in them since the
//! previous run. Each answer is a typed body, the
//! same types the OpenAPI document (`/openapi.json`) describes.

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, IntoResponses, ToSchema};
use uuid::Uuid;

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::ledger::{
    self, ChangeKind, Discovery, NotificationState, Outcome, Page, PageStatus, Run, RunStatus,
    Trigger,
};
use crate::lifecycle::changes::{ChangeEntry, Changes};
use crate::lifecycle::run::PageCounts;
use crate::overview::ScheduleView;

/// `axum::extract::Query` whose rejection is an [`ApiError`] (JSON 400).
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path` whose rejection is an [`ApiError`] (JSON 400).
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// The error answers every admin endpoint documents besides its own: a
/// missing or wrong token, and a database it cannot reach.
#[derive(Debug, IntoResponses)]
pub enum AdminErrors {
    /// Missing or wrong admin token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The database is unavailable; retry later
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The path parameter of a run's endpoints (documentation only: the
/// handlers read it as a string, so that a malformed id is no run).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RunPath {
    /// The run's id (a UUID; anything else is no run: 404)
    pub id: String,
}

/// The path parameter of a schedule's endpoints (documentation only).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SchedulePath {
    /// The schedule's name, as configured
    pub name: String,
}

/// The answer to a trigger: the run it started.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Triggered {
    /// The new run.
    pub run_id: Uuid,
}

/// A run as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunView {
    /// The run's id.
    pub id: Uuid,
    /// Its schedule.
    pub schedule: String,
    /// Its nominal fire time (a manual trigger's own time).
    pub scheduled_for: DateTime<Utc>,
    /// What started it.
    pub trigger: Trigger,
    /// Where it is in its lifecycle.
    pub status: RunStatus,
    /// How it went, once finished.
    pub outcome: Option<Outcome>,
    /// Why the run failed as a whole, or timed out, when it did.
    pub error: Option<String>,
    /// Its pages by state.
    pub pages: PageCounts,
    /// What reading its page source found (counts, invalid examples,
    /// sitemap files read); `null` while listing.
    #[schema(value_type = Option<Object>)]
    pub listing: Option<Value>,
    /// What following links found (links reported, pages added, links
    /// left out by reason, with examples); `null` until the run records a
    /// report carrying links, and for a run that follows none.
    pub discovery: Option<Discovery>,
    /// The run whose failed and timed-out pages this run crawls again.
    pub redrive_of: Option<Uuid>,
    /// When it was reported stuck.
    pub stuck_at: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its page list was complete.
    pub listed_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// From creation to finish, once finished.
    pub duration_seconds: Option<f64>,
}

impl From<&Run> for RunView {
    fn from(run: &Run) -> Self {
        RunView {
            id: run.id,
            schedule: run.schedule.clone(),
            scheduled_for: run.scheduled_for,
            trigger: run.trigger,
            status: run.status,
            outcome: run.outcome,
            error: run.error.clone(),
            pages: crate::lifecycle::run::page_counts(run),
            listing: run.listing.clone(),
            discovery: run.discovery.as_ref().map(|d| d.0.clone()),
            redrive_of: run.parent_run_id,
            stuck_at: run.stuck_at,
            created_at: run.created_at,
            listed_at: run.listed_at,
            finished_at: run.finished_at,
            duration_seconds: crate::overview::duration_seconds(run),
        }
    }
}

/// A run with its open pages split into pending and in flight, and its
/// notifications' delivery state.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunDetail {
    /// The run (`pages` with `in_flight` and `pending`).
    #[serde(flatten)]
    pub run: RunView,
    /// Its notifications, by event and target.
    pub notifications: Vec<NotificationState>,
    /// Its pages by how they were fetched: as served (`plain`), in a
    /// browser (`rendered`), and sent on to the browser after their plain
    /// fetch looked unrendered (`escalated`, part of `rendered`).
    pub render: ledger::RenderCounts,
    /// Its succeeded pages by how they were fetched: in full (`fetched`),
    /// or answered `304 Not Modified` to the previous run's validators
    /// (`not_modified`: the previous run's facts were kept).
    pub fetches: ledger::FetchCounts,
}

/// `GET /v1/runs`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunList {
    /// Newest first.
    pub runs: Vec<RunView>,
}

/// `GET /v1/runs/{id}/pages`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PageList {
    /// In id order.
    pub pages: Vec<Page>,
    /// Pass as `after` for the next pages; `null` when these are the last.
    pub next_after: Option<i64>,
}

/// `GET /v1/runs/{id}/changes`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChangeList {
    /// The run's changes by kind since the run it was compared with;
    /// `null` when it was not compared (its schedule's first run, a redrive
    /// run, a run never fully listed, or a run not finished yet).
    pub changes: Option<Changes>,
    /// The new, changed and gone pages in id order: the run's pages in page
    /// order, then the previous run's pages no longer listed.
    pub pages: Vec<ChangeEntry>,
    /// Pass as `after` for the next pages; `null` when these are the last.
    pub next_after: Option<i64>,
}

/// The answer to a redrive: the new run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Redriven {
    /// The new run.
    pub run_id: Uuid,
    /// The run whose failed and timed-out pages it crawls.
    pub redrive_of: Uuid,
}

/// A schedule's pause state after a pause or resume.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PauseState {
    /// The schedule.
    pub schedule: String,
    /// Whether its fires are paused.
    pub paused: bool,
}

/// `GET /v1/schedules`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ScheduleList {
    /// In configuration order.
    pub schedules: Vec<ScheduleView>,
}

/// `POST /v1/schedules/{name}/trigger`: starts a run now.
#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/trigger",
    tag = "schedules",
    summary = "Start a run of a schedule now",
    description = "Starts a run with trigger `manual`, its nominal fire time being now; manual triggers run even while the schedule is paused.",
    params(SchedulePath),
    security(("admin" = [])),
    responses(
        (status = 202, description = "The run was created; its pages are being listed", body = Triggered),
        (status = 400, description = "The path is not valid UTF-8 once percent-decoded", body = ErrorBody),
        AdminErrors,
        (status = 404, description = "No schedule has this name", body = ErrorBody),
        (status = 409, description = "A run of this schedule for this very microsecond exists already", body = ErrorBody),
    )
)]
pub async fn trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Triggered>), ApiError> {
    let run_id = state.actions().trigger(&name).await?;
    Ok((StatusCode::ACCEPTED, Json(Triggered { run_id })))
}

/// The query of `GET /v1/runs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Only the runs of this schedule (a name holds no NUL: Postgres text
    /// cannot store one).
    #[param(pattern = "^[^\\x00]*$")]
    schedule: Option<String>,
    /// How many runs at most (1-500, default 20).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// `GET /v1/runs?schedule=NAME&limit=N`: newest first.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    summary = "List runs, newest first",
    description = "Runs by nominal fire time, newest first, of every schedule or of one.",
    params(RunsQuery),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The runs", body = RunList),
        (status = 400, description = "A malformed query string, `limit` outside 1-500, or a NUL in `schedule`", body = ErrorBody),
        AdminErrors,
    )
)]
pub async fn list_runs(
    State(state): State<AppState>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<RunList>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1-500".into()));
    }
    // Postgres text cannot hold NUL, so no schedule is called that; the
    // database would refuse the query.
    if q.schedule.as_deref().is_some_and(|s| s.contains('\0')) {
        return Err(ApiError::BadRequest(
            "schedule must not contain NUL characters".into(),
        ));
    }
    let runs = ledger::list_runs(&state.readers, q.schedule.as_deref(), limit).await?;
    Ok(Json(RunList {
        runs: runs.iter().map(RunView::from).collect(),
    }))
}

/// A run id from a path: anything but a UUID is no run (404).
pub(crate) fn parse_run_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("no run has the id {id:?}")))
}

/// A `status` query parameter: a page status, or 400 naming the choices.
pub(crate) fn parse_page_status(status: Option<&str>) -> Result<Option<PageStatus>, ApiError> {
    status
        .map(|s| {
            PageStatus::parse(s).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "status {s:?} must be one of pending, dispatched, succeeded, failed, timed_out, cancelled"
                ))
            })
        })
        .transpose()
}

/// `GET /v1/runs/{id}`: the run with page counts by state, timings,
/// outcome and notification delivery.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    summary = "Read a run",
    description = "The run with its pages by state (open ones split into pending and in flight), timings, outcome and the delivery state of its notifications.",
    params(RunPath),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The run", body = RunDetail),
        (status = 400, description = "The path is not valid UTF-8 once percent-decoded", body = ErrorBody),
        AdminErrors,
        (status = 404, description = "No run has this id", body = ErrorBody),
    )
)]
pub async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunDetail>, ApiError> {
    let id = parse_run_id(&id)?;
    let run = ledger::get_run(&state.readers, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run has the id {id}")))?;
    let in_flight = ledger::in_flight(&state.readers, id).await?;
    let notifications = ledger::run_notifications(&state.readers, id).await?;
    let render = ledger::render_counts(&state.readers, id).await?;
    let fetches = ledger::fetch_counts(&state.readers, id).await?;
    let mut view = RunView::from(&run);
    view.pages.in_flight = Some(in_flight);
    view.pages.pending = Some(run.open_pages - in_flight);
    Ok(Json(RunDetail {
        run: view,
        notifications,
        render,
        fetches,
    }))
}

/// The query of `GET /v1/runs/{id}/pages`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PagesQuery {
    /// Only the pages in this state.
    #[param(value_type = Option<PageStatus>)]
    status: Option<String>,
    /// Only the pages with a greater id (the previous answer's `next_after`).
    after: Option<i64>,
    /// How many pages at most (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// `GET /v1/runs/{id}/pages?status=failed&after=ID&limit=N`: pages in id
/// order; `next_after` continues the listing.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/pages",
    tag = "runs",
    summary = "List a run's pages",
    description = "The run's pages in id order, optionally of one state; `next_after` continues the listing.",
    params(
        RunPath,
        PagesQuery,
    ),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The pages", body = PageList),
        (status = 400, description = "A path that is not valid UTF-8 once percent-decoded, a malformed query string, an unknown `status`, or `limit` outside 1-1000", body = ErrorBody),
        AdminErrors,
        (status = 404, description = "No run has this id", body = ErrorBody),
    )
)]
pub async fn list_pages(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PagesQuery>,
) -> Result<Json<PageList>, ApiError> {
    let id = parse_run_id(&id)?;
    let status = parse_page_status(q.status.as_deref())?;
    let limit = listing_of_run(&state, id, q.limit).await?;
    let rows = ledger::RunRows {
        run_id: id,
        only: status,
        after_id: q.after.unwrap_or(0),
        limit,
    };
    let pages = ledger::list_pages(&state.readers, rows).await?;
    let next_after = next_after(&pages, limit, |p| p.id);
    Ok(Json(PageList { pages, next_after }))
}

/// The checks of a paged listing of a run's rows: `limit` (default 100)
/// must be 1-1000 (else 400) and the run must exist (else 404). Returns
/// the limit.
async fn listing_of_run(state: &AppState, id: Uuid, limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1-1000".into()));
    }
    if ledger::get_run(&state.readers, id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no run has the id {id}")));
    }
    Ok(limit)
}

/// Where a paged listing continues: the last row's id when the page was
/// full, else `None` (the listing is complete).
fn next_after<T>(rows: &[T], limit: i64, id: impl Fn(&T) -> i64) -> Option<i64> {
    (rows.len() as i64 == limit)
        .then(|| rows.last().map(id))
        .flatten()
}

/// The query of `GET /v1/runs/{id}/changes`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// Only the changes of this kind.
    #[param(value_type = Option<ChangeKind>)]
    kind: Option<String>,
    /// Only the changes with a greater id (the previous answer's `next_after`).
    after: Option<i64>,
    /// How many changes at most (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// `GET /v1/runs/{id}/changes?kind=new|changed|gone&after=ID&limit=N`: what
/// changed since the previous run, in id order; `next_after` continues.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/changes",
    tag = "runs",
    summary = "List what changed in a run since the previous run",
    description = "The counts of the run's comparison with the previous finished run of its schedule (`null` when it was not compared) and its new, changed and gone pages in id order, optionally of one kind, each with its facts before and after; `next_after` continues the listing.",
    params(
        RunPath,
        ChangesQuery,
    ),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The changes", body = ChangeList),
        (status = 400, description = "A path that is not valid UTF-8 once percent-decoded, a malformed query string, an unknown `kind`, or `limit` outside 1-1000", body = ErrorBody),
        AdminErrors,
        (status = 404, description = "No run has this id", body = ErrorBody),
    )
)]
pub async fn list_changes(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ChangesQuery>,
) -> Result<Json<ChangeList>, ApiError> {
    let id = parse_run_id(&id)?;
    let kind = q
        .kind
        .as_deref()
        .map(|k| {
            ChangeKind::parse(k).ok_or_else(|| {
                ApiError::BadRequest(format!("kind {k:?} must be one of new, changed, gone"))
            })
        })
        .transpose()?;
    let limit = listing_of_run(&state, id, q.limit).await?;
    let changes = ledger::run_changes(&state.readers, id).await?;
    let rows = ledger::RunRows {
        run_id: id,
        only: kind,
        after_id: q.after.unwrap_or(0),
        limit,
    };
    let pages = ledger::list_changes(&state.readers, rows)
        .await?
        .into_iter()
        .map(ChangeEntry::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    let next_after = next_after(&pages, limit, |p| p.id);
    Ok(Json(ChangeList {
        changes,
        pages,
        next_after,
    }))
}

/// `POST /v1/runs/{id}/cancel`: open pages are cancelled, later reports are
/// duplicates, the run finishes as `cancelled` and notifies.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    tag = "runs",
    summary = "Cancel a run",
    description = "Its open pages are cancelled (later reports of them are duplicates), the run finishes with outcome `cancelled` and its notifications are sent.",
    params(RunPath),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The run, finished", body = RunView),
        (status = 400, description = "The path is not valid UTF-8 once percent-decoded", body = ErrorBody),
        AdminErrors,
        (status = 404, description = "No run has this id", body = ErrorBody),
        (status = 409, description = "The run has finished already, or is finishing (every page has reported)", body = ErrorBody),
    )
)]
pub async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    let id = parse_run_id(&id)?;
    let run = state.actions().cancel(id).await?;
    Ok(Json(RunView::from(&run)))
}

/// `POST /v1/runs/{id}/redrive`: a new run of the run's failed and
/// timed-out pages, linked to it.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/redrive",
    tag = "runs",
    summary = "Crawl a run's failures again",
    description = "Starts a new run (trigger `redrive`) of the run's failed and timed-out pages, linked to it by `redrive_of`. A run has at most one open redrive: until it finishes, another redrive of the same run is refused with 409.",
    params(RunPath),
    security(("admin" = [])),
    responses(
        (status = 202, description = "The new run was created", body = Redriven),
        (status = 400, description = "The path is not valid UTF-8 once percent-decoded", body = ErrorBody),
        AdminErrors,
        (status = 404, description = "No run has this id", body = ErrorBody),
        (status = 409, description = "The run has no failed or timed-out pages, or a redrive of it is still open (not finished): of two requests racing, one creates the run and the other gets this", body = ErrorBody),
    )
)]
pub async fn redrive_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Redriven>), ApiError> {
    let id = parse_run_id(&id)?;
    let run_id = state.actions().redrive(id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Redriven {
            run_id,
            redrive_of: id,
        }),
    ))
}

async fn set_paused(
    state: &AppState,
    name: &str,
    paused: bool,
) -> Result<Json<PauseState>, ApiError> {
    state.actions().set_paused(name, paused).await?;
    Ok(Json(PauseState {
        schedule: name.to_string(),
        paused,
    }))
}

/// `POST /v1/schedules/{name}/pause`: its fires are skipped (and counted)
/// until resumed; manual triggers still run.
#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/pause",
    tag = "schedules",
    summary = "Pause a schedule's fires",
    description = "Its cron fires are skipped (and counted) until it is resumed; manual triggers still run. Pausing a paused schedule changes nothing.",
    params(SchedulePath),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The schedule is paused", body = PauseState),
        (status = 400, description = "The path is not valid UTF-8 once percent-decoded", body = ErrorBody),
        AdminErrors,
        (status = 404, description = "No schedule has this name", body = ErrorBody),
    )
)]
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PauseState>, ApiError> {
    set_paused(&state, &name, true).await
}

/// `POST /v1/schedules/{name}/resume`.
#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/resume",
    tag = "schedules",
    summary = "Resume a paused schedule",
    description = "Its cron fires run again from the next one on. Resuming a schedule that is not paused changes nothing.",
    params(SchedulePath),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The schedule is not paused", body = PauseState),
        (status = 400, description = "The path is not valid UTF-8 once percent-decoded", body = ErrorBody),
        AdminErrors,
        (status = 404, description = "No schedule has this name", body = ErrorBody),
    )
)]
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PauseState>, ApiError> {
    set_paused(&state, &name, false).await
}

/// `GET /v1/schedules`: every configured schedule, in configuration order.
#[utoipa::path(
    get,
    path = "/v1/schedules",
    tag = "schedules",
    summary = "List the schedules",
    description = "Every configured schedule in configuration order: its cron expression and time zone, whether it is paused, its next nominal fire, its invoker and its newest run.",
    security(("admin" = [])),
    responses(
        (status = 200, description = "The schedules", body = ScheduleList),
        AdminErrors,
    )
)]
pub async fn list_schedules(State(state): State<AppState>) -> Result<Json<ScheduleList>, ApiError> {
    let schedules = crate::overview::schedule_views(&state.runs).await?;
    Ok(Json(ScheduleList { schedules }))
}

/// `GET /v1/schedules/{name}`: one schedule; 404 for an unknown name.
#[utoipa::path(
    get,
    path = "/v1/schedules/{name}",
    tag = "schedules",
    summary = "Read a schedule",
    params(SchedulePath),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The schedule", body = ScheduleView),
        (status = 400, description = "The path is not valid UTF-8 once percent-decoded", body = ErrorBody),
        AdminErrors,
        (status = 404, description = "No schedule has this name", body = ErrorBody),
    )
)]
pub async fn get_schedule(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    crate::overview::schedule_view(&state.runs, &name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no schedule is called {name:?}")))
}
