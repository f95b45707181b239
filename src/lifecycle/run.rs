//! The rules of a run: its outcome from its counts and the schedule's
//! tolerance, when it finishes, what its notifications say and their
//! webhook ids. Each function here that writes owns one transaction: it
//! reads what it needs under the run's row lock, decides, and calls the
//! ledger's statements on that transaction.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::{Compare, NotifyKind, NotifyWhen, RenderMode, Settings, Tolerance};
use crate::ledger::{self, FailedPage, NotifyEvent, Outcome, PageStatus, Run, RunStatus, Trigger};

use super::changes::{self, ChangedPage, Changes, RunChanges};
use super::page::{self, Event, Next};

/// How many failed pages a notification lists at most.
pub const FAILED_PAGES_IN_NOTIFICATION: i64 = 100;

/// A notification target of a schedule, as the outbox records it.
#[derive(Debug, Clone)]
pub struct TargetRef {
    /// Index in the schedule's `notify` list.
    pub index: i32,
    /// What kind of target it is (stored in the outbox by its word).
    pub kind: NotifyKind,
    /// Which finished runs it is sent.
    pub when: NotifyWhen,
}

/// What finishing a run of a schedule needs to know about the schedule.
#[derive(Debug, Clone)]
pub struct RunPolicy {
    /// Where its notifications go.
    pub targets: Vec<TargetRef>,
    /// How many failures still count as success.
    pub tolerated: Tolerance,
    /// What makes a page `changed` since the previous run.
    pub compare: Compare,
    /// With `render = "auto"`, its `render_after`: how many of a learned
    /// host's pages a run must render, every one of which would have done
    /// as served, for the host to stop going to the browser.
    pub unlearn_after: Option<i32>,
}

impl RunPolicy {
    /// The policy of `schedule` (none: no targets, no tolerance).
    pub fn of(settings: &Settings, schedule: &str) -> Self {
        let schedule = settings.schedule(schedule);
        RunPolicy {
            targets: schedule
                .map(|s| {
                    s.notify
                        .iter()
                        .enumerate()
                        .map(|(i, t)| TargetRef {
                            index: i as i32,
                            kind: t.target.kind(),
                            when: t.when,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            tolerated: schedule
                .map(|s| s.tolerated_failures)
                .unwrap_or(Tolerance::Count(0)),
            compare: schedule.map(|s| s.compare).unwrap_or(Compare::Fields),
            unlearn_after: schedule
                .filter(|s| s.render.mode == RenderMode::Auto)
                .map(|s| i32::try_from(s.render.render_after).unwrap_or(i32::MAX)),
        }
    }
}

/// How many failed, timed-out or cancelled pages a run of `total` pages may
/// have and still be `succeeded`.
pub fn tolerated(tolerance: Tolerance, total: i64) -> i64 {
    match tolerance {
        Tolerance::Count(n) => n,
        Tolerance::Percent(p) => (total as f64 * p / 100.0).floor() as i64,
    }
}

/// The outcome of a run that finished on its own, from its counts.
pub fn outcome(run: &Run, tolerance: Tolerance) -> Outcome {
    let bad = run.failed_pages + run.timed_out_pages + run.cancelled_pages;
    if bad <= tolerated(tolerance, run.total_pages) {
        Outcome::Succeeded
    } else if run.succeeded_pages == 0 {
        Outcome::Failed
    } else {
        Outcome::Partial
    }
}

/// The stable idempotency key of a run's notification to one target.
pub fn webhook_id(run_id: Uuid, event: NotifyEvent, target: i32) -> String {
    let suffix = match event {
        NotifyEvent::RunFinished => "",
        NotifyEvent::RunStuck => "_stuck",
    };
    format!("msg_{}{suffix}_{target}", run_id.simple())
}

/// The `type` of a `run.finished` notification: always `"run.finished"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum RunFinishedType {
    /// `"run.finished"`.
    #[serde(rename = "run.finished")]
    RunFinished,
}

/// The `type` of a `run.stuck` notification: always `"run.stuck"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum RunStuckType {
    /// `"run.stuck"`.
    #[serde(rename = "run.stuck")]
    RunStuck,
}

/// The body of a `run.finished` notification (a webhook's JSON body; Slack
/// and stdout show a summary of it): every page of the run is terminal, or
/// the run was closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunFinished {
    /// `"run.finished"`.
    #[serde(rename = "type")]
    pub kind: RunFinishedType,
    /// The run.
    pub run_id: Uuid,
    /// Its schedule.
    pub schedule: String,
    /// What started it.
    pub trigger: Trigger,
    /// How it went.
    pub outcome: Option<Outcome>,
    /// Why the run failed as a whole, or timed out, when it did.
    #[serde(default)]
    pub error: Option<String>,
    /// Its nominal fire time.
    pub scheduled_for: DateTime<Utc>,
    /// When the run was created.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its pages by final state.
    pub pages: FinishedPageCounts,
    /// What reading its page source found (counts, invalid examples,
    /// sitemap files read); `null` when it was never listed.
    #[schema(value_type = Option<Object>)]
    #[serde(default)]
    pub listing: Option<Value>,
    /// What following links found; `null` for a run that followed no links.
    #[serde(default)]
    pub discovery: Option<ledger::Discovery>,
    /// Its first failed and timed-out pages (at most 100,
    /// [`FAILED_PAGES_IN_NOTIFICATION`]), in id order.
    pub failed_pages: Vec<FailedPageBrief>,
    /// What changed since the previous finished run of the schedule;
    /// `null` for its first run, a redrive run and a run never fully
    /// listed.
    #[serde(default)]
    pub changes: Option<Changes>,
    /// The first pages (at most 100,
    /// [`changes::CHANGED_PAGES_IN_NOTIFICATION`]) that are new, changed or
    /// gone: this run's pages in page order, then the previous run's pages
    /// no longer listed.
    #[serde(default)]
    pub changed_pages: Vec<ChangedPage>,
    /// Its pages by how they were fetched: as served (`plain`), in a
    /// browser (`rendered`), and sent on to the browser after their plain
    /// fetch looked unrendered (`escalated`, part of `rendered`).
    #[serde(default)]
    pub render: ledger::RenderCounts,
    /// Its succeeded pages by how they were fetched: in full
    /// (`fetched`), or answered `304 Not Modified` to the previous run's
    /// validators (`not_modified`: the previous run's facts were kept).
    #[serde(default)]
    pub fetches: ledger::FetchCounts,
}

/// A notification's body, as the outbox keeps it and a webhook receives
/// it; read back to show it in Slack or on a terminal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NotificationBody {
    /// `run.finished`.
    Finished(Box<RunFinished>),
    /// `run.stuck`.
    Stuck(RunStuck),
}

/// A finished run's pages by final state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FinishedPageCounts {
    /// Pages listed.
    pub total: i64,
    /// Pages that succeeded.
    pub succeeded: i64,
    /// Pages that failed.
    pub failed: i64,
    /// Pages that timed out.
    pub timed_out: i64,
    /// Pages cancelled.
    pub cancelled: i64,
}

/// A failed or timed-out page as a `run.finished` notification lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FailedPageBrief {
    /// The page's URL.
    pub url: String,
    /// `failed` or `timed_out`.
    pub status: PageStatus,
    /// Its error's message (or "failed", "timed out" when it has none).
    pub error: String,
}

/// The body of a `run.stuck` notification: the run made no progress for
/// its schedule's `stuck_after` (sent once per run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunStuck {
    /// `"run.stuck"`.
    #[serde(rename = "type")]
    pub kind: RunStuckType,
    /// The run.
    pub run_id: Uuid,
    /// Its schedule.
    pub schedule: String,
    /// What started it.
    pub trigger: Trigger,
    /// Its nominal fire time.
    pub scheduled_for: DateTime<Utc>,
    /// When the run was created.
    pub started_at: DateTime<Utc>,
    /// Its last progress (a page listed or finished).
    pub last_progress_at: DateTime<Utc>,
    /// Its pages by state.
    pub pages: PageCounts,
}

/// A run's pages by state, as the API and `run.stuck` show them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PageCounts {
    /// Pages listed.
    pub total: i64,
    /// Pages not yet terminal.
    pub open: i64,
    /// Pages that succeeded.
    pub succeeded: i64,
    /// Pages that failed.
    pub failed: i64,
    /// Pages that timed out.
    pub timed_out: i64,
    /// Pages cancelled.
    pub cancelled: i64,
    /// Open pages dispatched and not yet reported (`GET /v1/runs/{id}`
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<i64>,
    /// Open pages waiting to be dispatched (`GET /v1/runs/{id}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<i64>,
}

/// The `run.finished` body (stored in the outbox, so every retry sends the
/// same bytes).
pub fn finished_payload(run: &Run, failed: &[FailedPage], changes: &RunChanges) -> RunFinished {
    RunFinished {
        kind: RunFinishedType::RunFinished,
        run_id: run.id,
        schedule: run.schedule.clone(),
        trigger: run.trigger,
        outcome: run.outcome,
        error: run.error.clone(),
        scheduled_for: run.scheduled_for,
        started_at: run.created_at,
        finished_at: run.finished_at,
        pages: FinishedPageCounts {
            total: run.total_pages,
            succeeded: run.succeeded_pages,
            failed: run.failed_pages,
            timed_out: run.timed_out_pages,
            cancelled: run.cancelled_pages,
        },
        listing: run.listing.clone(),
        discovery: run.discovery.as_ref().map(|d| d.0.clone()),
        failed_pages: failed
            .iter()
            .map(|p| FailedPageBrief {
                url: p.url.clone(),
                status: p.status,
                error: p
                    .error
                    .as_ref()
                    .and_then(|e| e.get("message").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| p.status.as_str().replace('_', " ")),
            })
            .collect(),
        changes: changes.summary,
        changed_pages: changes.pages.clone(),
        // Counted by the caller, in the finishing transaction.
        render: ledger::RenderCounts::default(),
        fetches: ledger::FetchCounts::default(),
    }
}

/// The `run.stuck` body: the run made no progress for its `stuck_after`.
pub fn stuck_payload(run: &Run) -> RunStuck {
    RunStuck {
        kind: RunStuckType::RunStuck,
        run_id: run.id,
        schedule: run.schedule.clone(),
        trigger: run.trigger,
        scheduled_for: run.scheduled_for,
        started_at: run.created_at,
        last_progress_at: run.updated_at,
        pages: page_counts(run),
    }
}

/// A run's page counts as the API and `run.stuck` show them (without the
/// open pages' split into pending and in flight).
pub fn page_counts(run: &Run) -> PageCounts {
    PageCounts {
        total: run.total_pages,
        open: run.open_pages,
        succeeded: run.succeeded_pages,
        failed: run.failed_pages,
        timed_out: run.timed_out_pages,
        cancelled: run.cancelled_pages,
        in_flight: None,
        pending: None,
    }
}

/// Why a run is closed before all its pages reported.
#[derive(Debug, Clone, Copy)]
pub enum Closing<'a> {
    /// The run fails as a whole with this reason (source unreadable,
    /// function unusable): open pages are cancelled.
    Failed(&'a str),
    /// An operator cancelled it: open pages are cancelled.
    Cancelled,
    /// Its run_timeout passed: open pages time out; the outcome follows
    /// from the counts.
    TimedOut(&'a str),
}

/// A notification body as the outbox stores it.
fn to_json(payload: &impl Serialize) -> Result<Value, sqlx::Error> {
    // Plain structs of strings, numbers and JSON values: serializing them
    // cannot fail, but an error is reported rather than panicking.
    serde_json::to_value(payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// Writes one outbox row per target of `policy` for `event`, and wakes every
/// replica's notifier when the transaction commits. `changed` is whether
/// the run has a page that is new, changed or gone: a `when = "changes"`
/// target gets no row for a `run.finished` without (its `run.stuck` is
/// queued whatever `changed` says).
async fn queue_notifications(
    tx: &mut PgConnection,
    run_id: Uuid,
    event: NotifyEvent,
    payload: &Value,
    policy: &RunPolicy,
    changed: bool,
) -> Result<(), sqlx::Error> {
    let targets: Vec<&TargetRef> = policy
        .targets
        .iter()
        .filter(|t| event != NotifyEvent::RunFinished || t.when == NotifyWhen::Always || changed)
        .collect();
    for target in &targets {
        let id = webhook_id(run_id, event, target.index);
        ledger::insert_notification(
            tx,
            run_id,
            event,
            target.index,
            target.kind.as_str(),
            &id,
            payload,
        )
        .await?;
    }
    if !targets.is_empty() {
        ledger::wake(&mut *tx, ledger::WAKE_NOTIFY).await?;
    }
    Ok(())
}

/// Finishes a run and queues its `run.finished` notifications. The caller
/// holds the run's row lock in `tx` (it has just locked or updated it), so
/// exactly one transaction gets here per run. `forced` is the outcome of a
/// run failed or cancelled as a whole; otherwise it follows from the counts.
async fn finish(
    tx: &mut PgConnection,
    run_id: Uuid,
    error: Option<&str>,
    forced: Option<Outcome>,
    policy: &RunPolicy,
) -> Result<Run, sqlx::Error> {
    let outcome = match forced {
        Some(outcome) => outcome,
        None => {
            let run = ledger::get_run(&mut *tx, run_id)
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            self::outcome(&run, policy.tolerated)
        }
    };
    let run = ledger::set_finished(tx, run_id, outcome, error).await?;
    let failed = ledger::failed_pages(tx, run_id, FAILED_PAGES_IN_NOTIFICATION).await?;
    // In this transaction: a crash leaves neither the changes nor the
    // notifications that tell them.
    let changes = changes::compare(tx, &run, policy.compare).await?;
    let mut finished = finished_payload(&run, &failed, &changes);
    finished.render = ledger::render_counts(&mut *tx, run_id).await?;
    finished.fetches = ledger::fetch_counts(&mut *tx, run_id).await?;
    // What the run's rendered pages say about their hosts: in this
    // transaction, so the run's next one starts from it.
    if let Some(after) = policy.unlearn_after {
        let forgot = ledger::unlearn_hosts(&mut *tx, &run.schedule, run_id, after).await?;
        if forgot > 0 {
            tracing::info!(%run_id, schedule = %run.schedule, hosts = forgot, "hosts whose pages no longer need the browser go back to plain fetches");
        }
    }
    let payload = to_json(&finished)?;
    queue_notifications(
        tx,
        run_id,
        NotifyEvent::RunFinished,
        &payload,
        policy,
        changes.any(),
    )
    .await?;
    Ok(run)
}

/// Marks a run's page list complete, recording what reading it found;
/// finishes the run at once when every page is already terminal (or there
/// were none). Nothing changes when `lease` is no longer the run's.
#[tracing::instrument(skip(pool, settings, listing))]
pub async fn finish_listing(
    pool: &PgPool,
    settings: &Settings,
    lease: &ledger::Lease,
    listing: &Value,
) -> Result<Option<Run>, sqlx::Error> {
    let run_id = lease.run_id;
    let mut tx = pool.begin().await?;
    let finished = match ledger::mark_listed(&mut tx, lease, listing).await? {
        Some((0, schedule)) => {
            let policy = RunPolicy::of(settings, &schedule);
            Some(finish(&mut tx, run_id, None, None, &policy).await?)
        }
        _ => None,
    };
    tx.commit().await?;
    Ok(finished)
}

/// Closes a run before all its pages reported (see [`Closing`]): every
/// page not yet terminal takes the state [`page::next`] gives it, the run
/// finishes and its notification is queued. `None` when it had already
/// finished, or is `finishing` (every page was recorded: it finishes with
/// its own outcome).
#[tracing::instrument(skip(pool, settings))]
pub async fn close(
    pool: &PgPool,
    settings: &Settings,
    run_id: Uuid,
    closing: Closing<'_>,
) -> Result<Option<Run>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let schedule =
        ledger::lock_in(&mut tx, run_id, &[RunStatus::Listing, RunStatus::Running]).await?;
    let Some(schedule) = schedule else {
        return Ok(None);
    };
    let (event, error, forced) = match closing {
        Closing::Failed(reason) => (Event::Cancelled, Some(reason), Some(Outcome::Failed)),
        Closing::Cancelled => (Event::Cancelled, None, Some(Outcome::Cancelled)),
        Closing::TimedOut(note) => (Event::RunTimedOut(note.to_string()), Some(note), None),
    };
    // The attempt counts do not matter to a run closing.
    let Next::Terminal(status, page_error) = page::next(0, 0, event) else {
        unreachable!("closing a run makes its open pages terminal");
    };
    ledger::close_open_pages(&mut tx, run_id, status, page_error.as_ref()).await?;
    let policy = RunPolicy::of(settings, &schedule);
    let run = finish(&mut tx, run_id, error, forced, &policy).await?;
    tx.commit().await?;
    Ok(Some(run))
}

/// Finishes a run that is `finishing` (its last page was recorded): sets
/// its outcome and queues its notifications. `None` when it is not
/// `finishing` (any more): whoever takes the row lock first finishes it.
pub async fn finish_finishing(
    pool: &PgPool,
    settings: &Settings,
    run_id: Uuid,
) -> Result<Option<Run>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(schedule) = ledger::lock_in(&mut tx, run_id, &[RunStatus::Finishing]).await? else {
        return Ok(None);
    };
    let policy = RunPolicy::of(settings, &schedule);
    let run = finish(&mut tx, run_id, None, None, &policy).await?;
    tx.commit().await?;
    Ok(Some(run))
}

/// Marks a run stuck (no progress since `since`) and queues its one
/// `run.stuck` notification; `false` when it was marked already or has
/// progressed or finished meanwhile.
pub async fn mark_stuck(
    pool: &PgPool,
    settings: &Settings,
    run_id: Uuid,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(run) = ledger::set_stuck(&mut tx, run_id, since).await? else {
        return Ok(false);
    };
    let policy = RunPolicy::of(settings, &run.schedule);
    queue_notifications(
        &mut tx,
        run_id,
        NotifyEvent::RunStuck,
        &to_json(&stuck_payload(&run))?,
        &policy,
        true,
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_ids_are_stable_per_run_event_and_target() {
        let id = Uuid::parse_str("0190a0b0-0000-7000-8000-000000000001").unwrap();
        assert_eq!(
            webhook_id(id, NotifyEvent::RunFinished, 2),
            "msg_0190a0b0000070008000000000000001_2"
        );
        assert_eq!(
            webhook_id(id, NotifyEvent::RunStuck, 0),
            "msg_0190a0b0000070008000000000000001_stuck_0"
        );
    }

    #[test]
    fn tolerance_counts_or_takes_a_floored_percentage() {
        assert_eq!(tolerated(Tolerance::Count(3), 1000), 3);
        assert_eq!(tolerated(Tolerance::Percent(2.5), 99), 2);
        assert_eq!(tolerated(Tolerance::Percent(0.0), 99), 0);
    }
}
