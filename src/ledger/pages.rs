//! Statements on the `pages` table (and the run counters that change with
//! a page in the same statement).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{Acquire, PgConnection, PgExecutor, Postgres};
use uuid::Uuid;

use super::{wake, PageError, PageStatus, RunStatus, LISTING_LEASE, WAKE_DISPATCH};

/// How many URLs one insert statement carries.
pub const INSERT_BATCH: usize = 5_000;

/// Adds pages to a listing run in one transaction; URLs already in the run
/// are skipped. Returns how many were added, or `None` when the run is no
/// longer listing (it was failed, or another replica finished listing it):
/// pages are never added to a run whose page list is closed.
#[tracing::instrument(skip(db, urls), fields(batch = urls.len()))]
pub async fn insert_pages<'a, A: Acquire<'a, Database = Postgres>>(
    db: A,
    run_id: Uuid,
    urls: &[String],
) -> Result<Option<u64>, sqlx::Error> {
    let mut tx = db.begin().await?;
    // Locks the run first: finishing the listing waits for this batch.
    let listing: Option<Uuid> =
        sqlx::query_scalar("select id from runs where id = $1 and status = $2 for update")
            .bind(run_id)
            .bind(RunStatus::Listing)
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

/// Moves every page of a run that is not terminal yet to `status` (with
/// `error`, when given; else its last error stays) and takes them off the
/// run's open count; returns how many. The caller holds the run's row lock.
pub async fn close_open_pages(
    conn: &mut PgConnection,
    run_id: Uuid,
    status: PageStatus,
    error: Option<&PageError>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "with closed as (
             update pages set status = $2, finished_at = now(), updated_at = now(),
                 error = coalesce($3, error)
             where run_id = $1 and status in ('pending', 'dispatched')
             returning 1),
         n as (select count(*) as n from closed)
         update runs set
             cancelled_pages = cancelled_pages + case when $2 = 'cancelled' then n.n else 0 end,
             timed_out_pages = timed_out_pages + case when $2 = 'timed_out' then n.n else 0 end,
             failed_pages = failed_pages + case when $2 = 'failed' then n.n else 0 end,
             open_pages = open_pages - n.n, updated_at = now()
         from n where id = $1
         returning n.n",
    )
    .bind(run_id)
    .bind(status)
    .bind(error.map(Json))
    .fetch_one(conn)
    .await
}

/// The statement of [`complete_page`] (the benchmark's pgbench script runs
/// it too): $1 run, $2 page, $3 status, $4 attempt, $5 result, $6 error.
/// Lock order: the run's row before its page's, as insert_pages and
/// close_open_pages take them (the `run` initplan runs first).
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

/// Moves a page to the terminal `status` if it is not terminal already, in
/// one statement with its run's counters: the run's row lock, which every
/// report of the run queues on, is held only while the server runs it. The
/// statement that takes `open_pages` to zero also moves a `running` run to
/// `finishing`. Returns the run's status after it, `None` when the page was
/// terminal already (nothing changed).
#[tracing::instrument(skip(db, result, error), fields(status = status.as_str()))]
pub async fn complete_page<'e, E: PgExecutor<'e>>(
    db: E,
    run_id: Uuid,
    page_id: i64,
    attempt: i32,
    status: PageStatus,
    result: Option<&serde_json::Value>,
    error: Option<&PageError>,
) -> Result<Option<RunStatus>, sqlx::Error> {
    let row: Option<(i64, RunStatus)> = sqlx::query_as(COMPLETE_PAGE)
        .bind(run_id)
        .bind(page_id)
        .bind(status)
        .bind(attempt)
        .bind(result)
        .bind(error.map(Json))
        .fetch_optional(db)
        .await?;
    Ok(row.map(|(_, status)| status))
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
pub async fn has_ready_pages<'e, E: PgExecutor<'e>>(
    db: E,
    schedule: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (
             select 1 from pages
             where run_id = any(array(
                     select id from runs where schedule = $1 and status <> 'finished'))
                 and status = 'pending' and (not_before is null or not_before <= now()))",
    )
    .bind(schedule)
    .fetch_one(db)
    .await
}

/// How many pages of `schedule`'s unfinished runs are dispatched and
/// unreported.
pub async fn schedule_in_flight<'e, E: PgExecutor<'e>>(
    db: E,
    schedule: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "select count(*) from pages
         where run_id = any(array(
                 select id from runs where schedule = $1 and status <> 'finished'))
             and status = 'dispatched'",
    )
    .bind(schedule)
    .fetch_one(db)
    .await
}

/// The result of [`claim_pages`].
#[derive(Debug, Default)]
pub struct Claim {
    /// The schedule's pages dispatched and unreported, these included.
    pub in_flight: i64,
    /// The pages claimed.
    pub pages: Vec<ClaimedPage>,
}

/// Claims up to `limit` pending pages of `schedule`'s unfinished runs,
/// keeping the schedule's dispatched-and-unreported pages at most
/// `max_in_flight`, and marks them dispatched with a deadline, in one
/// transaction. An advisory lock per schedule makes concurrent claimers
/// (other replicas) take turns, so the in-flight cap holds across replicas;
/// `SKIP LOCKED` keeps a claim from waiting on pages another transaction is
/// completing.
#[tracing::instrument(skip(db))]
pub async fn claim_pages<'a, A: Acquire<'a, Database = Postgres>>(
    db: A,
    schedule: &str,
    max_in_flight: i64,
    limit: i64,
    page_timeout: Duration,
) -> Result<Claim, sqlx::Error> {
    let mut tx = db.begin().await?;
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

/// Puts a dispatched attempt back to pending, to be dispatched again after
/// `after`, recording `error`. With `refund`, the attempt does not count (the
/// page never ran). A no-op (`false`) when the page has moved on (reported,
/// or already requeued).
#[tracing::instrument(skip(db, error))]
pub async fn requeue_page<'e, E: PgExecutor<'e>>(
    db: E,
    page_id: i64,
    attempt: i32,
    after: Duration,
    error: &PageError,
    refund: bool,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "update pages set status = 'pending', not_before = now() + make_interval(secs => $3),
             error = $4, updated_at = now(), attempt = attempt - $5::int
         where id = $1 and attempt = $2 and status = 'dispatched'",
    )
    .bind(page_id)
    .bind(attempt)
    .bind(after.as_secs_f64())
    .bind(Json(error))
    .bind(i32::from(refund))
    .execute(db)
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
pub async fn overdue_pages<'e, E: PgExecutor<'e>>(
    db: E,
    limit: i64,
) -> Result<Vec<OverduePage>, sqlx::Error> {
    sqlx::query_as(
        "select p.id, p.run_id, p.attempt, r.schedule from pages p join runs r on r.id = p.run_id
         where p.status = 'dispatched' and p.deadline < now()
         order by p.deadline limit $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Pages of a run that are dispatched and unreported right now.
pub async fn in_flight<'e, E: PgExecutor<'e>>(db: E, run_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from pages where run_id = $1 and status = 'dispatched'")
        .bind(run_id)
        .fetch_one(db)
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
    pub status: PageStatus,
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
pub async fn list_pages<'e, E: PgExecutor<'e>>(
    db: E,
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
    .bind(status)
    .bind(after_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// A failed or timed-out page, as listed in a notification.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FailedPage {
    /// The page's URL.
    pub url: String,
    /// `failed` or `timed_out`.
    pub status: PageStatus,
    /// The error recorded for it.
    pub error: Option<serde_json::Value>,
}

/// A run's first `limit` failed and timed-out pages, in id order.
pub async fn failed_pages(
    conn: &mut PgConnection,
    run_id: Uuid,
    limit: i64,
) -> Result<Vec<FailedPage>, sqlx::Error> {
    sqlx::query_as(
        "select url, status, error from pages
         where run_id = $1 and status in ('failed', 'timed_out')
         order by id limit $2",
    )
    .bind(run_id)
    .bind(limit)
    .fetch_all(conn)
    .await
}
