//! Statements on the `runs` table.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Acquire, PgConnection, PgExecutor, Postgres};
use uuid::Uuid;

use super::{wake, Outcome, RunStatus, Trigger, WAKE_DISPATCH};

/// One run as the ledger holds it.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Run {
    /// The run's id.
    pub id: Uuid,
    /// The schedule it belongs to.
    pub schedule: String,
    /// Its nominal fire time.
    pub scheduled_for: DateTime<Utc>,
    /// What started it.
    pub trigger: Trigger,
    /// Where it is in its lifecycle.
    pub status: RunStatus,
    /// How it went, once finished.
    pub outcome: Option<Outcome>,
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
    /// What following links found, for a run that has recorded a report
    /// carrying links.
    pub discovery: Option<sqlx::types::Json<super::Discovery>>,
}

const RUN_COLUMNS: &str =
    "id, schedule, scheduled_for, trigger, status, outcome, error, total_pages, \
     open_pages, succeeded_pages, failed_pages, timed_out_pages, cancelled_pages, created_at, \
     listed_at, finished_at, listing, parent_run_id, stuck_at, updated_at, discovery";

/// How long a replica holds a run's listing without renewing it.
pub const LISTING_LEASE: Duration = Duration::from_secs(30);

/// The right to list a run: whoever holds the run's current token. Every
/// write of a listing names it, and one whose token was replaced (its lease
/// expired and another lister took over) changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The run being listed.
    pub run_id: Uuid,
    /// The lister's token.
    pub owner: Uuid,
}

impl Lease {
    /// The lease of the lister that created `run_id` (its token is the
    /// run's id).
    pub fn first(run_id: Uuid) -> Self {
        Self {
            run_id,
            owner: run_id,
        }
    }
}

/// Creates the run for (schedule, scheduled_for), its listing leased to
/// the caller ([`Lease::first`]); `None` when it already exists (another
/// replica, or a second fire, got there first).
#[tracing::instrument(skip(db))]
pub async fn create_run<'e, E: PgExecutor<'e>>(
    db: E,
    schedule: &str,
    scheduled_for: DateTime<Utc>,
    trigger: Trigger,
) -> Result<Option<Uuid>, sqlx::Error> {
    // validators_from: the run whose validators its dispatches carry
    // (`CLAIM_PAGES`) and whose facts a 304 keeps (`RECORD_PAGES`), fixed
    // now so that both read the same run whatever finishes meanwhile.
    sqlx::query_scalar(
        "insert into runs (id, schedule, scheduled_for, trigger, listing_lease_until, listing_owner,
             validators_from)
         values ($1, $2, $3, $4, now() + make_interval(secs => $5), $1,
             (select id from runs
              where schedule = $2 and status = $6 and trigger <> $7 and listed_at is not null
              order by created_at desc, id desc limit 1))
         on conflict (schedule, scheduled_for) do nothing
         returning id",
    )
    .bind(Uuid::now_v7())
    .bind(schedule)
    .bind(scheduled_for)
    .bind(trigger)
    .bind(LISTING_LEASE.as_secs_f64())
    .bind(RunStatus::Finished)
    .bind(Trigger::Redrive)
    .fetch_optional(db)
    .await
}

/// Renews `lease`; `false` when the run is no longer listing or another
/// lister holds it now.
pub async fn renew_listing_lease<'e, E: PgExecutor<'e>>(
    db: E,
    lease: &Lease,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "update runs set listing_lease_until = now() + make_interval(secs => $3)
         where id = $1 and status = $4 and listing_owner = $2",
    )
    .bind(lease.run_id)
    .bind(lease.owner)
    .bind(LISTING_LEASE.as_secs_f64())
    .bind(RunStatus::Listing)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Takes over the listing of runs whose lister stopped renewing its lease
/// (its replica died, or it lost the database): each comes back with the
/// caller's new lease and its schedule.
pub async fn claim_abandoned_listings<'e, E: PgExecutor<'e>>(
    db: E,
) -> Result<Vec<(Lease, String)>, sqlx::Error> {
    let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "update runs set listing_lease_until = now() + make_interval(secs => $1), updated_at = now(),
             listing_owner = gen_random_uuid()
         where id in (
             select id from runs
             where status = $2 and listing_lease_until < now()
             for update skip locked)
         returning id, listing_owner, schedule",
    )
    .bind(LISTING_LEASE.as_secs_f64())
    .bind(RunStatus::Listing)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(run_id, owner, schedule)| (Lease { run_id, owner }, schedule))
        .collect())
}

/// Moves a listing run to `running`, recording what reading its source
/// found; returns its open pages and schedule, `None` when it was not
/// listing under `lease`. The run's row stays locked until the
/// transaction ends.
pub async fn mark_listed(
    conn: &mut PgConnection,
    lease: &Lease,
    listing: &serde_json::Value,
) -> Result<Option<(i64, String)>, sqlx::Error> {
    sqlx::query_as(
        "update runs set status = $3, listed_at = now(), updated_at = now(), listing = $2
         where id = $1 and status = $4 and listing_owner = $5
         returning open_pages, schedule",
    )
    .bind(lease.run_id)
    .bind(listing)
    .bind(RunStatus::Running)
    .bind(RunStatus::Listing)
    .bind(lease.owner)
    .fetch_optional(conn)
    .await
}

/// Locks the run's row if its status is one of `statuses`; returns its
/// schedule, `None` when it is in another state (or does not exist).
pub async fn lock_in(
    conn: &mut PgConnection,
    run_id: Uuid,
    statuses: &[RunStatus],
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select schedule from runs where id = $1 and status = any($2::text[]) for update",
    )
    .bind(run_id)
    .bind(statuses)
    .fetch_optional(conn)
    .await
}

/// Sets a run finished with `outcome` (and `error`, when given).
pub async fn set_finished(
    conn: &mut PgConnection,
    run_id: Uuid,
    outcome: Outcome,
    error: Option<&str>,
) -> Result<Run, sqlx::Error> {
    sqlx::query_as(&format!(
        "update runs set status = $4, finished_at = now(), updated_at = now(),
             listing_lease_until = null, error = coalesce($2, error), outcome = $3
         where id = $1
         returning {RUN_COLUMNS}"
    ))
    .bind(run_id)
    .bind(error)
    .bind(outcome)
    .bind(RunStatus::Finished)
    .fetch_one(conn)
    .await
}

/// Runs left `finishing` for longer than `grace` (the daemon that recorded
/// their last page died before finishing them), oldest first.
pub async fn finishing_runs<'e, E: PgExecutor<'e>>(
    db: E,
    grace: Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "select id from runs where status = $2
             and updated_at < now() - make_interval(secs => $1)
         order by updated_at",
    )
    .bind(grace.as_secs_f64())
    .bind(RunStatus::Finishing)
    .fetch_all(db)
    .await
}

/// Schedules with unfinished runs.
pub async fn busy_schedules<'e, E: PgExecutor<'e>>(db: E) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("select distinct schedule from runs where status <> $1")
        .bind(RunStatus::Finished)
        .fetch_all(db)
        .await
}

/// Runs still listing (whose lister may have died with its replica).
pub async fn listing_runs<'e, E: PgExecutor<'e>>(db: E) -> Result<Vec<Run>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {RUN_COLUMNS} from runs where status = $1 order by created_at"
    ))
    .bind(RunStatus::Listing)
    .fetch_all(db)
    .await
}

/// One run.
pub async fn get_run<'e, E: PgExecutor<'e>>(db: E, id: Uuid) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as(&format!("select {RUN_COLUMNS} from runs where id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The newest runs, optionally of one schedule.
pub async fn list_runs<'e, E: PgExecutor<'e>>(
    db: E,
    schedule: Option<&str>,
    limit: i64,
) -> Result<Vec<Run>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {RUN_COLUMNS} from runs where ($1::text is null or schedule = $1)
         order by scheduled_for desc, id desc limit $2"
    ))
    .bind(schedule)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The newest run (by nominal fire time, as [`list_runs`] orders them) of
/// each of `schedules` that has one: one index probe per schedule.
pub async fn latest_runs<'e, E: PgExecutor<'e>>(
    db: E,
    schedules: &[String],
) -> Result<Vec<Run>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select r.* from unnest($1::text[]) as s(name)
         cross join lateral (
             select {RUN_COLUMNS} from runs where schedule = s.name
             order by scheduled_for desc, id desc limit 1) r"
    ))
    .bind(schedules)
    .fetch_all(db)
    .await
}

/// The newest `per` runs (by nominal fire time, newest first) of each of
/// `schedules`, in one statement: one index scan per schedule.
pub async fn recent_runs<'e, E: PgExecutor<'e>>(
    db: E,
    schedules: &[String],
    per: i64,
) -> Result<Vec<Run>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select r.* from unnest($1::text[]) as s(name)
         cross join lateral (
             select {RUN_COLUMNS} from runs where schedule = s.name
             order by scheduled_for desc, id desc limit $2) r"
    ))
    .bind(schedules)
    .bind(per)
    .fetch_all(db)
    .await
}

/// The schedule of a run.
pub async fn run_schedule<'e, E: PgExecutor<'e>>(
    db: E,
    run_id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("select schedule from runs where id = $1")
        .bind(run_id)
        .fetch_optional(db)
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
pub async fn open_runs<'e, E: PgExecutor<'e>>(db: E) -> Result<Vec<OpenRun>, sqlx::Error> {
    sqlx::query_as(
        "select id, schedule, created_at, updated_at, stuck_at from runs
         where status <> $1 order by created_at",
    )
    .bind(RunStatus::Finished)
    .fetch_all(db)
    .await
}

/// The unfinished runs of a schedule, oldest first.
pub async fn open_runs_of<'e, E: PgExecutor<'e>>(
    db: E,
    schedule: &str,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "select id from runs where schedule = $1 and status <> $2 order by created_at",
    )
    .bind(schedule)
    .bind(RunStatus::Finished)
    .fetch_all(db)
    .await
}

/// Marks a run stuck if it is unfinished, not marked yet, and has made no
/// progress since `since`; returns it, `None` otherwise.
pub async fn set_stuck(
    conn: &mut PgConnection,
    run_id: Uuid,
    since: DateTime<Utc>,
) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as(&format!(
        "update runs set stuck_at = now()
         where id = $1 and status <> $3 and stuck_at is null and updated_at <= $2
         returning {RUN_COLUMNS}"
    ))
    .bind(run_id)
    .bind(since)
    .bind(RunStatus::Finished)
    .fetch_optional(conn)
    .await
}

/// The latest nominal fire time of a schedule that produced a run.
pub async fn last_fire<'e, E: PgExecutor<'e>>(
    db: E,
    schedule: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "select max(scheduled_for) from runs where schedule = $1 and trigger = any($2::text[])",
    )
    .bind(schedule)
    .bind([Trigger::Cron, Trigger::Catchup])
    .fetch_one(db)
    .await
}

/// The unique index that holds one unfinished redrive run per parent.
const ONE_OPEN_REDRIVE: &str = "runs_one_open_redrive";

/// What [`create_redrive`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedriveInsert {
    /// It created this run.
    Created(Uuid),
    /// The parent has no failed or timed-out pages, or does not exist.
    NothingToRedrive,
    /// An unfinished redrive run of the parent exists: nothing was created.
    AlreadyOpen,
}

/// Creates a run of `parent`'s failed and timed-out pages, already listed,
/// in one transaction. Whether it may is decided by its first statement:
/// the insert of the run finds the failures, and the unique index
/// `runs_one_open_redrive` refuses a second unfinished redrive of the same
/// parent (a racing insert waits for the first to commit, then fails).
pub async fn create_redrive<'a, A: Acquire<'a, Database = Postgres>>(
    db: A,
    parent: Uuid,
    now: DateTime<Utc>,
) -> Result<RedriveInsert, sqlx::Error> {
    use super::PageStatus;
    let mut tx = db.begin().await?;
    let id = Uuid::now_v7();
    let failures = [PageStatus::Failed, PageStatus::TimedOut];
    let created: Option<Uuid> = match sqlx::query_scalar(
        "insert into runs (id, schedule, scheduled_for, trigger, parent_run_id, status, listed_at)
         select $1, schedule, $3, $5, id, $6, now() from runs
         where id = $2 and exists (
             select 1 from pages where run_id = $2 and status = any($4::text[]))
         returning id",
    )
    .bind(id)
    .bind(parent)
    .bind(now)
    .bind(failures)
    .bind(Trigger::Redrive)
    .bind(RunStatus::Running)
    .fetch_optional(&mut *tx)
    .await
    {
        Ok(created) => created,
        Err(sqlx::Error::Database(db)) if db.constraint() == Some(ONE_OPEN_REDRIVE) => {
            return Ok(RedriveInsert::AlreadyOpen)
        }
        Err(e) => return Err(e),
    };
    if created.is_none() {
        return Ok(RedriveInsert::NothingToRedrive);
    }
    let added: i64 = sqlx::query_scalar(
        "with added as (
             insert into pages (run_id, url)
             select $1, url from pages where run_id = $2 and status = any($3::text[])
             order by id
             on conflict (run_id, md5(url)) do nothing
             returning 1)
         select count(*) from added",
    )
    .bind(id)
    .bind(parent)
    .bind(failures)
    .fetch_one(&mut *tx)
    .await?;
    // The parent's limits for each host, as listing set them (robots.txt's
    // Crawl-delay included), without the throttling the parent met.
    sqlx::query(
        "insert into run_hosts (run_id, host, in_flight_limit, base_interval, interval)
         select $1, rh.host, rh.in_flight_limit, rh.base_interval, rh.base_interval
         from run_hosts rh
         where rh.run_id = $2 and rh.host in (select host from pages where run_id = $1)",
    )
    .bind(id)
    .bind(parent)
    .execute(&mut *tx)
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
    Ok(RedriveInsert::Created(id))
}

/// The unfinished redrive run of `parent`, if there is one.
pub async fn open_redrive_of<'e, E: PgExecutor<'e>>(
    db: E,
    parent: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "select id from runs
         where parent_run_id = $1 and trigger = $2 and status <> $3",
    )
    .bind(parent)
    .bind(Trigger::Redrive)
    .bind(RunStatus::Finished)
    .fetch_optional(db)
    .await
}

/// A page of runs, newest first: optionally of one schedule, in one of
/// `statuses`, with one `outcome`, and older than the run `before` (the
/// last run of the previous page; keyset paging, so a page costs the same
/// however far back it is).
pub async fn list_runs_before<'e, E: PgExecutor<'e>>(
    db: E,
    schedule: Option<&str>,
    statuses: Option<&[RunStatus]>,
    outcome: Option<Outcome>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Run>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {RUN_COLUMNS} from runs
         where ($1::text is null or schedule = $1)
             and ($2::text[] is null or status = any($2::text[]))
             and ($3::text is null or outcome = $3)
             and ($4::uuid is null
                  or (scheduled_for, id) < (select scheduled_for, id from runs where id = $4))
         order by scheduled_for desc, id desc limit $5"
    ))
    .bind(schedule)
    .bind(statuses)
    .bind(outcome)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}
