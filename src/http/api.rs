//! The admin API: trigger a schedule, read runs and their pages.

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{SubsecRound, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{ApiError, AppState};
use crate::ledger::{self, PageStatus, Run, RunStatus, Trigger};
use crate::lifecycle::Closing;
use crate::runs::StartError;

/// `axum::extract::Query` whose rejection is an [`ApiError`] (JSON 400).
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(T);

/// `axum::extract::Path` whose rejection is an [`ApiError`] (JSON 400).
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(T);

/// `POST /v1/schedules/{name}/trigger`: starts a run now.
pub async fn trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Microseconds: the precision Postgres keeps, so the stored key equals this one.
    let now = Utc::now().trunc_subsecs(6);
    match state.runs.start(&name, now, Trigger::Manual).await {
        Ok(Some(run_id)) => Ok((StatusCode::ACCEPTED, Json(json!({ "run_id": run_id })))),
        Ok(None) => Err(ApiError::Conflict(format!(
            "a run of {name:?} for {now} exists already"
        ))),
        Err(StartError::UnknownSchedule(name)) => Err(ApiError::NotFound(format!(
            "no schedule is called {name:?}"
        ))),
        Err(StartError::Ledger(e)) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
pub struct RunsQuery {
    schedule: Option<String>,
    limit: Option<i64>,
}

fn run_json(run: &Run) -> Value {
    let duration = run
        .finished_at
        .map(|f| (f - run.created_at).num_milliseconds() as f64 / 1000.0);
    json!({
        "id": run.id,
        "schedule": run.schedule,
        "scheduled_for": run.scheduled_for,
        "trigger": run.trigger,
        "status": run.status,
        "outcome": run.outcome,
        "error": run.error,
        "pages": crate::lifecycle::run::page_counts(run),
        "listing": run.listing,
        "redrive_of": run.parent_run_id,
        "stuck_at": run.stuck_at,
        "created_at": run.created_at,
        "listed_at": run.listed_at,
        "finished_at": run.finished_at,
        "duration_seconds": duration,
    })
}

/// `GET /v1/runs?schedule=NAME&limit=N`: newest first.
pub async fn list_runs(
    State(state): State<AppState>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1-500".into()));
    }
    let runs = ledger::list_runs(&state.runs.pool, q.schedule.as_deref(), limit).await?;
    Ok(Json(
        json!({ "runs": runs.iter().map(run_json).collect::<Vec<_>>() }),
    ))
}

fn parse_run_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("no run has the id {id:?}")))
}

/// `GET /v1/runs/{id}`: the run with page counts by state, timings,
/// outcome and notification delivery.
pub async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_run_id(&id)?;
    let run = ledger::get_run(&state.runs.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run has the id {id}")))?;
    let in_flight = ledger::in_flight(&state.runs.pool, id).await?;
    let notifications = ledger::run_notifications(&state.runs.pool, id).await?;
    let mut body = run_json(&run);
    body["pages"]["in_flight"] = json!(in_flight);
    body["pages"]["pending"] = json!(run.open_pages - in_flight);
    body["notifications"] = json!(notifications);
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
pub struct PagesQuery {
    status: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

/// `GET /v1/runs/{id}/pages?status=failed&after=ID&limit=N`: pages in id
/// order; `next_after` continues the listing.
pub async fn list_pages(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PagesQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_run_id(&id)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(PageStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "status {s:?} must be one of pending, dispatched, succeeded, failed, timed_out, cancelled"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1-1000".into()));
    }
    if ledger::get_run(&state.runs.pool, id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no run has the id {id}")));
    }
    let pages =
        ledger::list_pages(&state.runs.pool, id, status, q.after.unwrap_or(0), limit).await?;
    let next_after = (pages.len() as i64 == limit)
        .then(|| pages.last().map(|p| p.id))
        .flatten();
    Ok(Json(json!({ "pages": pages, "next_after": next_after })))
}

/// `POST /v1/runs/{id}/cancel`: open pages are cancelled, later reports are
/// duplicates, the run finishes as `cancelled` and notifies.
pub async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_run_id(&id)?;
    match state.runs.close_run(id, Closing::Cancelled).await? {
        Some(run) => Ok(Json(run_json(&run))),
        None => match ledger::get_run(&state.runs.pool, id).await? {
            Some(run) if run.status == RunStatus::Finishing => Err(ApiError::Conflict(format!(
                "every page of run {id} has reported; it is finishing"
            ))),
            Some(_) => Err(ApiError::Conflict(format!("run {id} has finished already"))),
            None => Err(ApiError::NotFound(format!("no run has the id {id}"))),
        },
    }
}

/// `POST /v1/runs/{id}/redrive`: a new run of the run's failed and
/// timed-out pages, linked to it.
pub async fn redrive_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = parse_run_id(&id)?;
    match state.runs.redrive(id).await? {
        Some(run_id) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "run_id": run_id, "redrive_of": id })),
        )),
        None => match ledger::get_run(&state.runs.pool, id).await? {
            Some(_) => Err(ApiError::Conflict(format!(
                "run {id} has no failed or timed-out pages to redrive"
            ))),
            None => Err(ApiError::NotFound(format!("no run has the id {id}"))),
        },
    }
}

async fn set_paused(state: &AppState, name: &str, paused: bool) -> Result<Json<Value>, ApiError> {
    if state.runs.settings.schedule(name).is_none() {
        return Err(ApiError::NotFound(format!(
            "no schedule is called {name:?}"
        )));
    }
    ledger::set_paused(&state.runs.pool, name, paused).await?;
    tracing::info!(
        schedule = name,
        paused,
        "schedule {}",
        if paused { "paused" } else { "resumed" }
    );
    Ok(Json(json!({ "schedule": name, "paused": paused })))
}

/// `POST /v1/schedules/{name}/pause`: its fires are skipped (and counted)
/// until resumed; manual triggers still run.
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&state, &name, true).await
}

/// `POST /v1/schedules/{name}/resume`.
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&state, &name, false).await
}
