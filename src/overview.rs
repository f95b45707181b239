//! What an operator sees of the schedules: each one's configuration, pause
//! state, next fire and last run. `GET /v1/schedules` answers with it, and
//! anything else in the process (the web console) calls
//! [`schedule_views`] directly.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::{InvokerKind, Schedule};
use crate::ledger::{self, Outcome, Run, RunStatus, Trigger};
use crate::runs::Runs;

/// One schedule as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ScheduleView {
    /// The schedule's name.
    pub name: String,
    /// Its cron expression as written; `null` for a schedule that only runs
    /// when triggered.
    pub cron: Option<String>,
    /// The IANA time zone its cron expression is evaluated in; `null`
    /// without a cron expression.
    pub timezone: Option<String>,
    /// Whether its fires are paused (manual triggers still run).
    pub paused: bool,
    /// Its next nominal fire time, paused or not (a paused schedule skips
    /// it); `null` without a cron expression.
    pub next_fire_at: Option<DateTime<Utc>>,
    /// Where its crawls run.
    pub invoker: InvokerKind,
    /// Its newest run (by nominal fire time), if it has one.
    pub last_run: Option<LastRun>,
}

/// The newest run of a schedule, in brief.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LastRun {
    /// The run's id.
    pub id: Uuid,
    /// What started it.
    pub trigger: Trigger,
    /// Where it is in its lifecycle.
    pub status: RunStatus,
    /// How it went, once finished.
    pub outcome: Option<Outcome>,
    /// Its nominal fire time.
    pub scheduled_for: DateTime<Utc>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// From creation to finish, once finished.
    pub duration_seconds: Option<f64>,
}

impl From<&Run> for LastRun {
    fn from(run: &Run) -> Self {
        LastRun {
            id: run.id,
            trigger: run.trigger,
            status: run.status,
            outcome: run.outcome,
            scheduled_for: run.scheduled_for,
            created_at: run.created_at,
            finished_at: run.finished_at,
            duration_seconds: duration_seconds(run),
        }
    }
}

/// How long a finished run took, from creation to finish, in seconds
/// (millisecond precision); `None` while it runs.
pub fn duration_seconds(run: &Run) -> Option<f64> {
    run.finished_at
        .map(|f| (f - run.created_at).num_milliseconds() as f64 / 1000.0)
}

/// Every configured schedule, in configuration order.
pub async fn schedule_views(runs: &Runs) -> Result<Vec<ScheduleView>, sqlx::Error> {
    views(runs, runs.settings.schedules.iter().collect(), Utc::now()).await
}

/// The schedule called `name`; `None` when no schedule is.
pub async fn schedule_view(runs: &Runs, name: &str) -> Result<Option<ScheduleView>, sqlx::Error> {
    let Some(schedule) = runs.settings.schedule(name) else {
        return Ok(None);
    };
    Ok(views(runs, vec![schedule], Utc::now()).await?.pop())
}

/// The views of `schedules` at `now`: two statements whatever their number.
async fn views(
    runs: &Runs,
    schedules: Vec<&Schedule>,
    now: DateTime<Utc>,
) -> Result<Vec<ScheduleView>, sqlx::Error> {
    let names: Vec<String> = schedules.iter().map(|s| s.name.clone()).collect();
    let paused = ledger::paused_among(&runs.pool, &names).await?;
    let latest = ledger::latest_runs(&runs.pool, &names).await?;
    Ok(schedules
        .into_iter()
        .map(|s| ScheduleView {
            name: s.name.clone(),
            cron: s.cron.as_ref().map(|c| c.expr().to_string()),
            timezone: s.cron.as_ref().map(|c| c.timezone().name().to_string()),
            paused: paused.contains(&s.name),
            next_fire_at: s.cron.as_ref().and_then(|c| c.next_after(now)),
            invoker: s.invoker,
            last_run: latest
                .iter()
                .find(|r| r.schedule == s.name)
                .map(LastRun::from),
        })
        .collect())
}
