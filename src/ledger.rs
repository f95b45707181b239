//! The Postgres ledger: every SQL statement fanfare runs lives here.
//!
//! Postgres is the only shared state between replicas. Each function is one
//! short transaction; none is ever held across a network call.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::config::DatabaseSettings;

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How many URLs one insert statement carries.
pub const INSERT_BATCH: usize = 5_000;

/// How many failed pages a notification lists at most.
pub const FAILED_PAGES_IN_NOTIFICATION: i64 = 100;

/// Opens a pool to the configured database; the connection itself is made
/// lazily, so a database that is down at start is retried, not fatal.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = settings.url.expose_secret().parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.application_name("fanfare")))
}

/// Applies every pending migration.
#[tracing::instrument(skip_all)]
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether an error means the database could not be reached or dropped the
/// connection (retry later), rather than a fault of the statement.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        // 08xxx: connection exceptions; 57P01-57P03: the server is shutting
        // down, was restarted, or terminated this backend.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Whether the database answers and every embedded migration is applied.
pub async fn ready(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
        .fetch_one(pool)
        .await?;
    Ok(applied as usize >= MIGRATOR.iter().count())
}

/// The state of one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PageStatus {
    /// Listed, not yet dispatched (or waiting for a retry).
    Pending,
    /// Handed to a crawler; waiting for its report.
    Dispatched,
    /// Terminal: crawled.
    Succeeded,
    /// Terminal: the crawl failed.
    Failed,
    /// Terminal: no report within the page's attempts.
    TimedOut,
    /// Terminal: the run was cancelled or failed before the page ran.
    Cancelled,
}

impl PageStatus {
    /// The name stored in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            PageStatus::Pending => "pending",
            PageStatus::Dispatched => "dispatched",
            PageStatus::Succeeded => "succeeded",
            PageStatus::Failed => "failed",
            PageStatus::TimedOut => "timed_out",
            PageStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored or requested name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => PageStatus::Pending,
            "dispatched" => PageStatus::Dispatched,
            "succeeded" => PageStatus::Succeeded,
            "failed" => PageStatus::Failed,
            "timed_out" => PageStatus::TimedOut,
            "cancelled" => PageStatus::Cancelled,
            _ => return None,
        })
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A cron fire.
    Cron,
    /// A fire missed while no replica ran, started afterwards.
    Catchup,
    /// The API or the CLI.
    Manual,
    /// A new run of another run's failed and timed-out pages.
    Redrive(Uuid),
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Cron => "cron",
            Trigger::Catchup => "catchup",
            Trigger::Manual => "manual",
            Trigger::Redrive(_) => "redrive",
        }
    }

    fn parent(self) -> Option<Uuid> {
        match self {
            Trigger::Redrive(parent) => Some(parent),
            _ => None,
        }
    }
}

/// One run as the ledger holds it.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Run {
    /// The run's id.
    pub id: Uuid,
    /// The schedule it belongs to.
    pub schedule: String,
    /// Its nominal fire time.
    pub scheduled_for: DateTime<Utc>,
    /// `cron` or `manual`.
    pub trigger: String,
    /// `listing`, `running` or `finished`.
    pub status: String,
    /// `succeeded`, `partial`, `failed` or `cancelled` once finished.
    pub outcome: Option<String>,
    /// Why the run failed as a whole, when it did.
    pub error: Option<String>,
    /// Pages listed.
    pub total_pages: i64,
    /// Pages not yet terminal.
    pub open_pages: i64,
    /// Pages that succeeded.
    pub succeeded_pages: i64,
    /// Pages that failed.
    pub failed_pages: i64,
    /// Pages that timed out.
    pub timed_out_pages: i64,
    /// Pages cancelled.
    pub cancelled_pages: i64,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
    /// When its page list was complete.
    pub listed_at: Option<DateTime<Utc>>,
    /// When its last page became terminal.
    pub finished_at: Option<DateTime<Utc>>,
    /// What reading its page source found (counts, invalid examples).
    pub listing: Option<serde_json::Value>,
    /// The run a redrive run crawls the failures of.
    pub parent_run_id: Option<Uuid>,
    /// When the run was reported stuck.
    pub stuck_at: Option<DateTime<Utc>>,
    /// Its last progress.
    pub updated_at: DateTime<Utc>,
}

const RUN_COLUMNS: &str =
    "id, schedule, scheduled_for, trigger, status, outcome, error, total_pages, \
     open_pages, succeeded_pages, failed_pages, timed_out_pages, cancelled_pages, created_at, \
     listed_at, finished_at, listing, parent_run_id, stuck_at, updated_at";

/// Creates the run for (schedule, scheduled_for); `None` when it already
/// exists (another replica, or a second fire, got there first).
#[tracing::instrument(skip(pool))]
pub async fn create_run(
    pool: &PgPool,
    schedule: &str,
    scheduled_for: DateTime<Utc>,
    trigger: Trigger,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "insert into runs (id, schedule, scheduled_for, trigger, parent_run_id, listing_lease_until)
         values ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
         on conflict (schedule, scheduled_for) do nothing
         returning id",
    )
    .bind(Uuid::now_v7())
    .bind(schedule)
    .bind(scheduled_for)
    .bind(trigger.as_str())
    .bind(trigger.parent())
    .bind(LISTING_LEASE.as_secs_f64())
    .fetch_optional(pool)
    .await
}

/// How long a replica holds a run's listing without renewing it.
pub const LISTING_LEASE: Duration = Duration::from_secs(30);

/// Renews the listing lease of a run this replica is listing; `false` when
/// the run is no longer listing.
pub async fn renew_listing_lease(pool: &PgPool, run_id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "update runs set listing_lease_until = now() + make_interval(secs => $2)
         where id = $1 and status = 'listing'",
    )
    .bind(run_id)
    .bind(LISTING_LEASE.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Takes over the listing of runs whose lister stopped renewing its lease
/// (its replica died): each returned run is now leased to the caller.
pub async fn claim_abandoned_listings(pool: &PgPool) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as(
        "update runs set listing_lease_until = now() + make_interval(secs => $1), updated_at = now()
         where id in (
             select id from runs
             where status = 'listing' and listing_lease_until < now()
             for update skip locked)
         returning id, schedule",
    )
    .bind(LISTING_LEASE.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Adds pages to a listing run in one statement; URLs already in the run
/// are skipped. Returns how many were added, or `None` when the run is no
/// longer listing (it was failed, or another replica finished listing it):
/// pages are never added to a run whose page list is closed.
#[tracing::instrument(skip(pool, urls), fields(batch = urls.len()))]
pub async fn insert_pages(
    pool: &PgPool,
    run_id: Uuid,
    urls: &[String],
) -> Result<Option<u64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Locks the run first: finishing the listing waits for this batch.
    let listing: Option<Uuid> =
        sqlx::query_scalar("select id from runs where id = $1 and status = 'listing' for update")
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
    if listing.is_none() {
        return Ok(None);
    }
    let added: i64 = sqlx::query_scalar(
        "with added as (
             insert into pages (run_id, url)
             select $1, u from unnest($2::text[]) as u
             on conflict (run_id, md5(url)) do nothing
             returning 1)
         select count(*) from added",
    )
    .bind(run_id)
    .bind(urls)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "update runs set total_pages = total_pages + $2, open_pages = open_pages + $2, updated_at = now(),
             listing_lease_until = now() + make_interval(secs => $3)
         where id = $1",
    )
    .bind(run_id)
    .bind(added)
    .bind(LISTING_LEASE.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    if added > 0 {
        wake(&mut *tx, WAKE_DISPATCH).await?;
    }
    tx.commit().await?;
    Ok(Some(added as u64))
}

/// A notification target of a schedule, as the outbox records it.
#[derive(Debug, Clone)]
pub struct TargetRef {
    /// Index in the schedule's `notify` list.
    pub index: i32,
    /// `webhook`, `slack` or `stdout`.
    pub kind: &'static str,
}

/// How many failed pages a run may have and still be `succeeded`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// At most this many failed or timed-out pages.
    Count(i64),
    /// At most this percentage of the run's pages.
    Percent(f64),
}

/// What finishing a run of a schedule needs to know about the schedule.
#[derive(Debug, Clone)]
pub struct RunPolicy {
    /// Where its notifications go.
    pub targets: Vec<TargetRef>,
    /// How many failures still count as success.
    pub tolerated: Tolerance,
}

impl Default for RunPolicy {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            tolerated: Tolerance::Count(0),
        }
    }
}

/// Looks up a schedule's [`RunPolicy`] by schedule name.
pub type Policies<'a> = &'a (dyn Fn(&str) -> RunPolicy + Sync);

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

/// Marks a run's page list complete, recording what reading it found;
/// finishes the run at once when every page is already terminal (or there
/// were none).
#[tracing::instrument(skip(pool, policies))]
pub async fn finish_listing(
    pool: &PgPool,
    run_id: Uuid,
    listing: &serde_json::Value,
    policies: Policies<'_>,
) -> Result<Option<Run>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row: Option<(i64, String)> = sqlx::query_as(
        "update runs set status = 'running', listed_at = now(), updated_at = now(), listing = $2
         where id = $1 and status = 'listing'
         returning open_pages, schedule",
    )
    .bind(run_id)
    .bind(listing)
    .fetch_optional(&mut *tx)
    .await?;
    let finished = match row {
        Some((0, schedule)) => {
            Some(finish_run(&mut tx, run_id, None, None, &policies(&schedule)).await?)
        }
        _ => None,
    };
    tx.commit().await?;
    Ok(finished)
}

/// Closes a run before all its pages reported (see [`Closing`]): every
/// page not yet terminal is cancelled (or timed out), the run finishes and
/// its notification is queued. `None` when it had already finished, or is
/// `finishing` (every page was recorded: it finishes with its own outcome).
#[tracing::instrument(skip(pool, policies))]
pub async fn close_run(
    pool: &PgPool,
    run_id: Uuid,
    closing: Closing<'_>,
    policies: Policies<'_>,
) -> Result<Option<Run>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let schedule: Option<String> = sqlx::query_scalar(
        "select schedule from runs where id = $1 and status in ('listing', 'running') for update",
    )
    .bind(run_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(schedule) = schedule else {
        return Ok(None);
    };
    let (page_status, error, outcome) = match closing {
        Closing::Failed(reason) => ("cancelled", Some(reason), Some("failed")),
        Closing::Cancelled => ("cancelled", None, Some("cancelled")),
        Closing::TimedOut(note) => ("timed_out", Some(note), None),
    };
    sqlx::query(
        "with closed as (
             update pages set status = $2, finished_at = now(), updated_at = now(),
                 error = case when $2 = 'timed_out'
                     then jsonb_build_object('kind', 'run_timeout', 'message', $3::text, 'retryable', false)
                     else error end
             where run_id = $1 and status in ('pending', 'dispatched')
             returning 1)
         update runs set
             cancelled_pages = cancelled_pages + case when $2 = 'cancelled' then (select count(*) from closed) else 0 end,
             timed_out_pages = timed_out_pages + case when $2 = 'timed_out' then (select count(*) from closed) else 0 end,
             open_pages = open_pages - (select count(*) from closed), updated_at = now()
         where id = $1",
    )
    .bind(run_id)
    .bind(page_status)
    .bind(error.unwrap_or(""))
    .execute(&mut *tx)
    .await?;
    let run = finish_run(&mut tx, run_id, error, outcome, &policies(&schedule)).await?;
    tx.commit().await?;
    Ok(Some(run))
}

/// Sets a run finished with its outcome and queues one notification per
/// target. The caller holds the run's row lock (it has just updated it), so
/// exactly one transaction gets here per run. `outcome` forces the outcome
/// (`failed`, `cancelled`); otherwise it follows from the counts and the
/// schedule's tolerance.
async fn finish_run(
    tx: &mut Transaction<'_, Postgres>,
    run_id: Uuid,
    error: Option<&str>,
    outcome: Option<&str>,
    policy: &RunPolicy,
) -> Result<Run, sqlx::Error> {
    let (count, percent) = match policy.tolerated {
        Tolerance::Count(n) => (Some(n), None),
        Tolerance::Percent(p) => (None, Some(p)),
    };
    let run: Run = sqlx::query_as(&format!(
        "update runs set status = 'finished', finished_at = now(), updated_at = now(),
             listing_lease_until = null,
             error = coalesce($2, error),
             outcome = coalesce($3, case
                 when failed_pages + timed_out_pages + cancelled_pages
                     <= coalesce($4, floor(total_pages * $5::float8 / 100)::bigint, 0) then 'succeeded'
                 when succeeded_pages = 0 then 'failed'
                 else 'partial' end)
         where id = $1
         returning {RUN_COLUMNS}"
    ))
    .bind(run_id)
    .bind(error)
    .bind(outcome)
    .bind(count)
    .bind(percent)
    .fetch_one(&mut **tx)
    .await?;
    let failed: Vec<FailedPage> = sqlx::query_as(
        "select url, status, error from pages
         where run_id = $1 and status in ('failed', 'timed_out')
         order by id limit $2",
    )
    .bind(run_id)
    .bind(FAILED_PAGES_IN_NOTIFICATION)
    .fetch_all(&mut **tx)
    .await?;
    let payload = crate::notify::run_finished_payload(&run, &failed);
    queue_notifications(tx, run_id, "run.finished", &payload, &policy.targets).await?;
    Ok(run)
}

/// Writes one outbox row per target for `event` (once per run, event and
/// target) and wakes every replica's notifier when the transaction commits.
async fn queue_notifications(
    tx: &mut Transaction<'_, Postgres>,
    run_id: Uuid,
    event: &str,
    payload: &serde_json::Value,
    targets: &[TargetRef],
) -> Result<(), sqlx::Error> {
    for target in targets {
        let suffix = match event {
            "run.finished" => String::new(),
            other => format!("_{}", other.trim_start_matches("run.")),
        };
        sqlx::query(
            "insert into notifications (run_id, event, target, kind, webhook_id, payload)
             values ($1, $2, $3, $4, $5, $6)
             on conflict (run_id, event, target) do nothing",
        )
        .bind(run_id)
        .bind(event)
        .bind(target.index)
        .bind(target.kind)
        .bind(format!("msg_{}{suffix}_{}", run_id.simple(), target.index))
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    }
    if !targets.is_empty() {
        wake(&mut **tx, WAKE_NOTIFY).await?;
    }
    Ok(())
}

/// The channel replicas LISTEN on to wake each other.
pub const WAKE_CHANNEL: &str = "fanfare_wake";
/// Payload: pages may be dispatchable.
pub const WAKE_DISPATCH: &str = "dispatch";
/// Payload: a notification is queued.
pub const WAKE_NOTIFY: &str = "notify";

/// Queues a NOTIFY, delivered to every listening replica on commit.
async fn wake<'e, E: sqlx::PgExecutor<'e>>(executor: E, what: &str) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_notify($1, $2)")
        .bind(WAKE_CHANNEL)
        .bind(what)
        .execute(executor)
        .await?;
    Ok(())
}

/// A failed or timed-out page, as listed in a notification.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FailedPage {
    /// The page's URL.
    pub url: String,
    /// `failed` or `timed_out`.
    pub status: String,
    /// The error recorded for it.
    pub error: Option<serde_json::Value>,
}

/// How a report (or a deadline) changed a page.
#[derive(Debug, Clone)]
pub enum Completion {
    /// The page became terminal; `finished` is set when that finished the run.
    Recorded {
        /// The run, when this page was its last.
        finished: Option<Box<Run>>,
    },
    /// The page was already terminal; nothing changed.
    Duplicate,
}

/// Moves a page to a terminal state, if it is not in one already, and
/// finishes its run when it was the last open page.
///
/// The page update and the run's counters change in one statement,
/// committed on its own: the run's row lock, which every report of the run
/// queues on, is held only while the server runs it, not across a round
/// trip to the daemon. The statement that takes `open_pages` to zero also
/// moves the run from `running` to `finishing`, so exactly one report sees
/// it happen; that report then finishes the run in a second transaction
/// ([`finish_finishing`]: outcome and outbox rows). Should the daemon die
/// between the two, the sweeper finishes the run ([`finishing_runs`]).
#[tracing::instrument(skip(pool, result, error, policies), fields(status = status.as_str()))]
#[allow(clippy::too_many_arguments)]
pub async fn complete_page(
    pool: &PgPool,
    run_id: Uuid,
    page_id: i64,
    attempt: i32,
    status: PageStatus,
    result: Option<&serde_json::Value>,
    error: Option<&serde_json::Value>,
    policies: Policies<'_>,
) -> Result<Completion, sqlx::Error> {
    let row: Option<(i64, String)> = sqlx::query_as(COMPLETE_PAGE)
        .bind(run_id)
        .bind(page_id)
        .bind(status.as_str())
        .bind(attempt)
        .bind(result)
        .bind(error)
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        None => Completion::Duplicate,
        Some((_, run_status)) if run_status == "finishing" => {
            // The page is recorded whatever happens now: a failure to
            // finish leaves the run to the sweeper, not the report to a retry.
            let finished = match finish_finishing(pool, run_id, policies).await {
                Ok(run) => run,
                Err(e) => {
                    tracing::warn!(%run_id, error = %e, "recorded the run's last page but could not finish the run; the sweeper will");
                    None
                }
            };
            Completion::Recorded {
                finished: finished.map(Box::new),
            }
        }
        Some(_) => Completion::Recorded { finished: None },
    })
}

/// The statement of [`complete_page`] (the benchmark's pgbench script runs
/// it too): $1 run, $2 page, $3 status, $4 attempt, $5 result, $6 error.
/// Lock order: the run's row before its page's, as insert_pages and
/// close_run take them (the `run` initplan runs first).
pub const COMPLETE_PAGE: &str = "with run as (
        select id from runs where id = $1 for no key update),
    page as (
        update pages set status = $3, reported_attempt = $4, result = $5, error = $6,
            finished_at = now(), updated_at = now(), not_before = null
        where id = $2 and run_id = (select id from run) and status in ('pending', 'dispatched')
        returning run_id, status)
    update runs r set open_pages = r.open_pages - 1,
        succeeded_pages = r.succeeded_pages + (page.status = 'succeeded')::int,
        failed_pages = r.failed_pages + (page.status = 'failed')::int,
        timed_out_pages = r.timed_out_pages + (page.status = 'timed_out')::int,
        cancelled_pages = r.cancelled_pages + (page.status = 'cancelled')::int,
        status = case when r.status = 'running' and r.open_pages = 1 then 'finishing' else r.status end,
        updated_at = now()
    from page where r.id = page.run_id
    returning r.open_pages, r.status";

/// Finishes a run that is `finishing` (its last page was recorded): sets
/// its outcome and queues its notifications. `None` when it is not
/// `finishing` (any more): whoever takes the row lock first finishes it.
pub async fn finish_finishing(
    pool: &PgPool,
    run_id: Uuid,
    policies: Policies<'_>,
) -> Result<Option<Run>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let schedule: Option<String> = sqlx::query_scalar(
        "select schedule from runs where id = $1 and status = 'finishing' for update",
    )
    .bind(run_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(schedule) = schedule else {
        return Ok(None);
    };
    let run = finish_run(&mut tx, run_id, None, None, &policies(&schedule)).await?;
    tx.commit().await?;
    Ok(Some(run))
}

/// Runs left `finishing` for longer than `grace` (the daemon that recorded
/// their last page died before finishing them), oldest first.
pub async fn finishing_runs(pool: &PgPool, grace: Duration) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "select id from runs where status = 'finishing'
             and updated_at < now() - make_interval(secs => $1)
         order by updated_at",
    )
    .bind(grace.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// A page claimed for dispatch.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedPage {
    /// The page's id.
    pub id: i64,
    /// Its run.
    pub run_id: Uuid,
    /// Where to crawl.
    pub url: String,
    /// This dispatch's attempt number (1 for the first).
    pub attempt: i32,
    /// When this attempt's report is due.
    pub deadline: DateTime<Utc>,
}

/// Whether `schedule`'s unfinished runs have a page to dispatch now (pending,
/// its backoff over): a cheap look that spares a dispatcher pass the claim
/// (and its count of in-flight pages) when there is nothing to claim.
pub async fn has_ready_pages(pool: &PgPool, schedule: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (
             select 1 from pages
             where run_id = any(array(
                     select id from runs where schedule = $1 and status <> 'finished'))
                 and status = 'pending' and (not_before is null or not_before <= now()))",
    )
    .bind(schedule)
    .fetch_one(pool)
    .await
}

/// How many pages of `schedule`'s unfinished runs are dispatched and
/// unreported.
pub async fn schedule_in_flight(pool: &PgPool, schedule: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "select count(*) from pages
         where run_id = any(array(
                 select id from runs where schedule = $1 and status <> 'finished'))
             and status = 'dispatched'",
    )
    .bind(schedule)
    .fetch_one(pool)
    .await
}

/// Claims up to `limit` pending pages of `schedule`'s unfinished runs,
/// keeping the schedule's dispatched-and-unreported pages at most
/// `max_in_flight`, and marks them dispatched with a deadline. An advisory
/// lock per schedule makes concurrent claimers (other replicas) take turns,
/// so the in-flight cap holds across replicas; `SKIP LOCKED` keeps a claim
/// from waiting on pages another transaction is completing.
#[tracing::instrument(skip(pool))]
pub async fn claim_pages(
    pool: &PgPool,
    schedule: &str,
    max_in_flight: i64,
    limit: i64,
    page_timeout: Duration,
) -> Result<Claim, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock(hashtextextended('fanfare.claim:' || $1, 0))")
        .bind(schedule)
        .execute(&mut *tx)
        .await?;
    let runs: Vec<Uuid> = sqlx::query_scalar(
        "select id from runs where schedule = $1 and status <> 'finished' order by created_at",
    )
    .bind(schedule)
    .fetch_all(&mut *tx)
    .await?;
    if runs.is_empty() {
        return Ok(Claim::default());
    }
    let in_flight: i64 = sqlx::query_scalar(
        "select count(*) from pages where run_id = any($1) and status = 'dispatched'",
    )
    .bind(&runs)
    .fetch_one(&mut *tx)
    .await?;
    let room = (max_in_flight - in_flight).min(limit);
    if room <= 0 {
        return Ok(Claim {
            in_flight,
            pages: Vec::new(),
        });
    }
    let claimed: Vec<ClaimedPage> = sqlx::query_as(
        "with c as (
             select id from pages
             where run_id = any($1) and status = 'pending'
                 and (not_before is null or not_before <= now())
             order by id
             limit $2
             for update skip locked)
         update pages p set status = 'dispatched', attempt = p.attempt + 1, dispatched_at = now(),
             deadline = now() + make_interval(secs => $3), not_before = null, updated_at = now()
         from c where p.id = c.id
         returning p.id, p.run_id, p.url, p.attempt, p.deadline",
    )
    .bind(&runs)
    .bind(room)
    .bind(page_timeout.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Claim {
        in_flight: in_flight + claimed.len() as i64,
        pages: claimed,
    })
}

/// The result of [`claim_pages`].
#[derive(Debug, Default)]
pub struct Claim {
    /// The schedule's pages dispatched and unreported, these included.
    pub in_flight: i64,
    /// The pages claimed.
    pub pages: Vec<ClaimedPage>,
}

/// Puts a dispatched attempt back to pending, to be dispatched again after
/// `backoff` (its invoke failed, or its deadline passed). With `refund`, the
/// attempt does not count (the invoke was throttled: the page never ran).
/// A no-op when the page has moved on (reported, or already requeued).
#[tracing::instrument(skip(pool, error))]
pub async fn requeue_page(
    pool: &PgPool,
    page_id: i64,
    attempt: i32,
    backoff: Duration,
    error: &serde_json::Value,
    refund: bool,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "update pages set status = 'pending', not_before = now() + make_interval(secs => $3),
             error = $4, updated_at = now(), attempt = attempt - $5::int
         where id = $1 and attempt = $2 and status = 'dispatched'",
    )
    .bind(page_id)
    .bind(attempt)
    .bind(backoff.as_secs_f64())
    .bind(error)
    .bind(i32::from(refund))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A dispatched page whose deadline has passed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OverduePage {
    /// The page's id.
    pub id: i64,
    /// Its run.
    pub run_id: Uuid,
    /// The overdue attempt.
    pub attempt: i32,
    /// The run's schedule.
    pub schedule: String,
}

/// Dispatched pages past their deadline, oldest first.
pub async fn overdue_pages(pool: &PgPool, limit: i64) -> Result<Vec<OverduePage>, sqlx::Error> {
    sqlx::query_as(
        "select p.id, p.run_id, p.attempt, r.schedule from pages p join runs r on r.id = p.run_id
         where p.status = 'dispatched' and p.deadline < now()
         order by p.deadline limit $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Schedules with unfinished runs.
pub async fn busy_schedules(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("select distinct schedule from runs where status <> 'finished'")
        .fetch_all(pool)
        .await
}

/// Runs still listing (whose lister may have died with its replica).
pub async fn listing_runs(pool: &PgPool) -> Result<Vec<Run>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {RUN_COLUMNS} from runs where status = 'listing' order by created_at"
    ))
    .fetch_all(pool)
    .await
}

/// One run.
pub async fn get_run(pool: &PgPool, id: Uuid) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as(&format!("select {RUN_COLUMNS} from runs where id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The newest runs, optionally of one schedule.
pub async fn list_runs(
    pool: &PgPool,
    schedule: Option<&str>,
    limit: i64,
) -> Result<Vec<Run>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {RUN_COLUMNS} from runs where ($1::text is null or schedule = $1)
         order by scheduled_for desc, id desc limit $2"
    ))
    .bind(schedule)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Pages of a run that are dispatched and unreported right now.
pub async fn in_flight(pool: &PgPool, run_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from pages where run_id = $1 and status = 'dispatched'")
        .bind(run_id)
        .fetch_one(pool)
        .await
}

/// A page as the API shows it.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Page {
    /// The page's id.
    pub id: i64,
    /// Its URL.
    pub url: String,
    /// Its state.
    pub status: String,
    /// Dispatches so far.
    pub attempt: i32,
    /// The report's facts, when it succeeded.
    pub result: Option<serde_json::Value>,
    /// The last error, when there was one.
    pub error: Option<serde_json::Value>,
    /// When the current attempt was dispatched.
    pub dispatched_at: Option<DateTime<Utc>>,
    /// When it became terminal.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A run's pages in id order, optionally of one state, after `after_id`.
pub async fn list_pages(
    pool: &PgPool,
    run_id: Uuid,
    status: Option<PageStatus>,
    after_id: i64,
    limit: i64,
) -> Result<Vec<Page>, sqlx::Error> {
    sqlx::query_as(
        "select id, url, status, attempt, result, error, dispatched_at, finished_at from pages
         where run_id = $1 and ($2::text is null or status = $2) and id > $3
         order by id limit $4",
    )
    .bind(run_id)
    .bind(status.map(PageStatus::as_str))
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A notification waiting in the outbox.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Outbound {
    /// Outbox row id.
    pub id: i64,
    /// The run it is about.
    pub run_id: Uuid,
    /// The schedule (to find the target's settings).
    pub schedule: String,
    /// `run.finished`.
    pub event: String,
    /// Index of the target in the schedule's notify list.
    pub target: i32,
    /// The stable idempotency key.
    pub webhook_id: String,
    /// The body.
    pub payload: serde_json::Value,
    /// Delivery attempts so far, this one included.
    pub attempts: i32,
    /// When the notification was queued.
    pub created_at: DateTime<Utc>,
}

/// Claims due notifications for delivery: each is leased for `lease` (a
/// replica that dies mid-delivery leaves it to be retried then).
pub async fn claim_notifications(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Outbound>, sqlx::Error> {
    sqlx::query_as(
        "with due as (
             select id from notifications
             where status = 'pending' and next_attempt_at <= now()
             order by next_attempt_at limit $1
             for update skip locked)
         update notifications n set attempts = n.attempts + 1,
             next_attempt_at = now() + make_interval(secs => $2), updated_at = now()
         from due, runs r
         where n.id = due.id and r.id = n.run_id
         returning n.id, n.run_id, r.schedule, n.event, n.target, n.webhook_id, n.payload,
             n.attempts, n.created_at",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Records a successful delivery.
pub async fn notification_delivered(pool: &PgPool, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update notifications set status = 'delivered', delivered_at = now(), last_error = null,
             updated_at = now() where id = $1",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a failed delivery: retried after `retry_in`, or given up on when
/// `retry_in` is `None`.
pub async fn notification_failed(
    pool: &PgPool,
    id: i64,
    error: &str,
    retry_in: Option<Duration>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update notifications set last_error = $2, updated_at = now(),
             status = case when $3::float8 is null then 'failed' else 'pending' end,
             next_attempt_at = now() + make_interval(secs => coalesce($3, 0))
         where id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(retry_in.map(|d| d.as_secs_f64()))
    .execute(pool)
    .await?;
    Ok(())
}

/// A notification's delivery state, for the API.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct NotificationState {
    /// `run.finished`.
    pub event: String,
    /// Target index.
    pub target: i32,
    /// `webhook`, `slack` or `stdout`.
    pub kind: String,
    /// The idempotency key.
    pub webhook_id: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i32,
    /// The last delivery error.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A run's notifications.
pub async fn run_notifications(
    pool: &PgPool,
    run_id: Uuid,
) -> Result<Vec<NotificationState>, sqlx::Error> {
    sqlx::query_as(
        "select event, target, kind, webhook_id, status, attempts, last_error, delivered_at
         from notifications where run_id = $1 order by event, target",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
}

/// The schedule of a run.
pub async fn run_schedule(pool: &PgPool, run_id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("select schedule from runs where id = $1")
        .bind(run_id)
        .fetch_optional(pool)
        .await
}

/// An unfinished run, as the sweeper checks it for timeouts and stalls.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OpenRun {
    /// The run.
    pub id: Uuid,
    /// Its schedule.
    pub schedule: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Its last progress (a page listed or finished).
    pub updated_at: DateTime<Utc>,
    /// When it was reported stuck, if it was.
    pub stuck_at: Option<DateTime<Utc>>,
}

/// Every unfinished run.
pub async fn open_runs(pool: &PgPool) -> Result<Vec<OpenRun>, sqlx::Error> {
    sqlx::query_as(
        "select id, schedule, created_at, updated_at, stuck_at from runs
         where status <> 'finished' order by created_at",
    )
    .fetch_all(pool)
    .await
}

/// The unfinished runs of a schedule, oldest first.
pub async fn open_runs_of(pool: &PgPool, schedule: &str) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "select id from runs where schedule = $1 and status <> 'finished' order by created_at",
    )
    .bind(schedule)
    .fetch_all(pool)
    .await
}

/// Marks a run stuck (no progress since `since`) and queues its one
/// `run.stuck` notification; `false` when it was marked already or has
/// progressed or finished meanwhile.
pub async fn mark_stuck(
    pool: &PgPool,
    run_id: Uuid,
    since: DateTime<Utc>,
    policies: Policies<'_>,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let run: Option<Run> = sqlx::query_as(&format!(
        "update runs set stuck_at = now()
         where id = $1 and status <> 'finished' and stuck_at is null and updated_at <= $2
         returning {RUN_COLUMNS}"
    ))
    .bind(run_id)
    .bind(since)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(run) = run else {
        return Ok(false);
    };
    let payload = crate::notify::run_stuck_payload(&run);
    queue_notifications(
        &mut tx,
        run_id,
        "run.stuck",
        &payload,
        &policies(&run.schedule).targets,
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Whether fires of `schedule` are paused.
pub async fn is_paused(pool: &PgPool, schedule: &str) -> Result<bool, sqlx::Error> {
    let paused: Option<bool> =
        sqlx::query_scalar("select paused from schedule_state where schedule = $1")
            .bind(schedule)
            .fetch_optional(pool)
            .await?;
    Ok(paused.unwrap_or(false))
}

/// Pauses or resumes `schedule`.
pub async fn set_paused(pool: &PgPool, schedule: &str, paused: bool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into schedule_state (schedule, paused) values ($1, $2)
         on conflict (schedule) do update set paused = $2, updated_at = now()",
    )
    .bind(schedule)
    .bind(paused)
    .execute(pool)
    .await?;
    Ok(())
}

/// Keeps `fire` as the schedule's one buffered fire (a later one replaces
/// an earlier one).
pub async fn buffer_fire(
    pool: &PgPool,
    schedule: &str,
    fire: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into schedule_state (schedule, buffered_fire) values ($1, $2)
         on conflict (schedule) do update set
             buffered_fire = greatest(schedule_state.buffered_fire, $2), updated_at = now()",
    )
    .bind(schedule)
    .bind(fire)
    .execute(pool)
    .await?;
    Ok(())
}

/// Takes the schedule's buffered fire, if any (exactly one caller gets it).
pub async fn take_buffered_fire(
    pool: &PgPool,
    schedule: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let fire: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
        "update schedule_state s set buffered_fire = null, updated_at = now()
         from (select schedule, buffered_fire from schedule_state
               where schedule = $1 and buffered_fire is not null for update) old
         where s.schedule = old.schedule
         returning old.buffered_fire",
    )
    .bind(schedule)
    .fetch_optional(pool)
    .await?;
    Ok(fire.flatten())
}

/// The latest nominal fire time of a schedule that produced a run.
pub async fn last_fire(
    pool: &PgPool,
    schedule: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "select max(scheduled_for) from runs where schedule = $1 and trigger in ('cron', 'catchup')",
    )
    .bind(schedule)
    .fetch_one(pool)
    .await
}

/// Creates a run of `parent`'s failed and timed-out pages, already listed:
/// `None` when the parent has no such pages (or does not exist).
pub async fn create_redrive(
    pool: &PgPool,
    parent: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<Uuid>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id = Uuid::now_v7();
    let created: Option<Uuid> = sqlx::query_scalar(
        "insert into runs (id, schedule, scheduled_for, trigger, parent_run_id, status, listed_at)
         select $1, schedule, $3, 'redrive', id, 'running', now() from runs
         where id = $2 and exists (
             select 1 from pages where run_id = $2 and status in ('failed', 'timed_out'))
         returning id",
    )
    .bind(id)
    .bind(parent)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    if created.is_none() {
        return Ok(None);
    }
    let added: i64 = sqlx::query_scalar(
        "with added as (
             insert into pages (run_id, url)
             select $1, url from pages where run_id = $2 and status in ('failed', 'timed_out')
             order by id
             on conflict (run_id, md5(url)) do nothing
             returning 1)
         select count(*) from added",
    )
    .bind(id)
    .bind(parent)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "update runs set total_pages = $2, open_pages = $2,
             listing = jsonb_build_object('redrive_of', $3::text, 'pages', $2)
         where id = $1",
    )
    .bind(id)
    .bind(added)
    .bind(parent.to_string())
    .execute(&mut *tx)
    .await?;
    wake(&mut *tx, WAKE_DISPATCH).await?;
    tx.commit().await?;
    Ok(Some(id))
}
