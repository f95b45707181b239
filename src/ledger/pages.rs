//! Statements on the `pages` table (and the run counters that change with
//! a page in the same statement).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{Acquire, Connection, PgConnection, PgExecutor, Postgres};
use uuid::Uuid;

use super::{wake, PageError, PageStatus, RunStatus, LISTING_LEASE, WAKE_DISPATCH};

/// How many URLs one insert statement carries.
pub const INSERT_BATCH: usize = 5_000;

/// The unique index that keeps a URL once per run.
const URL_ONCE_PER_RUN: &str = "pages_url_once_per_run";

/// Adds pages to a listing run in one transaction; URLs already in the run
/// are skipped. Returns how many were added, or `None` when the run is no
/// longer listing (it was failed, or another replica finished listing it):
/// pages are never added to a run whose page list is closed.
///
/// The batch is written with `COPY` (after dropping the URLs it repeats
/// itself), which costs the server about half of an `insert .. select ..
/// on conflict do nothing`; a URL the run already has (a list naming it in
/// an earlier batch, or a listing taken over from a replica that stopped)
/// makes the `COPY` fail on the unique index, and the batch is then
/// inserted again skipping the URLs already there. Either way the run's
/// counters grow by the pages actually added, in the same transaction.
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
    let added = match copy_pages(&mut tx, run_id, urls).await {
        Ok(added) => added,
        Err(e) if is_repeated_url(&e) => {
            tracing::debug!(%run_id, "the batch names URLs the run already has; inserting it without them");
            insert_new_pages(&mut tx, run_id, urls).await?
        }
        Err(e) => return Err(e),
    };
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

/// `COPY`s the batch's distinct URLs into the run, inside a savepoint that
/// is rolled back when the copy fails (a URL the run already has fails it
/// on the unique index: see [`is_repeated_url`]). Returns the rows added.
async fn copy_pages(
    conn: &mut PgConnection,
    run_id: Uuid,
    urls: &[String],
) -> Result<i64, sqlx::Error> {
    let data = copy_text(run_id, urls);
    let mut savepoint = Connection::begin(&mut *conn).await?;
    let mut copy = savepoint
        .copy_in_raw("copy pages (run_id, url) from stdin")
        .await?;
    // The data goes in one message; `finish` reports the server's error,
    // if any, and leaves the connection ready for the rollback.
    let copied = match copy.send(data).await {
        Ok(_) => copy.finish().await,
        Err(e) => {
            let _ = copy.abort("the copy could not be sent").await;
            Err(e)
        }
    };
    match copied {
        Ok(n) => {
            savepoint.commit().await?;
            Ok(n as i64)
        }
        Err(e) => {
            savepoint.rollback().await?;
            Err(e)
        }
    }
}

/// The distinct URLs of a batch (first occurrence kept) as `COPY` text
/// rows `run_id<TAB>url`, with the text format's escapes.
fn copy_text(run_id: Uuid, urls: &[String]) -> Vec<u8> {
    let run = run_id.hyphenated().to_string();
    let mut seen = std::collections::HashSet::with_capacity(urls.len());
    let mut data = Vec::with_capacity(urls.iter().map(|u| u.len() + run.len() + 2).sum());
    for url in urls {
        if !seen.insert(url.as_str()) {
            continue;
        }
        data.extend_from_slice(run.as_bytes());
        data.push(b'\t');
        for &b in url.as_bytes() {
            match b {
                b'\\' => data.extend_from_slice(b"\\\\"),
                b'\t' => data.extend_from_slice(b"\\t"),
                b'\n' => data.extend_from_slice(b"\\n"),
                b'\r' => data.extend_from_slice(b"\\r"),
                _ => data.push(b),
            }
        }
        data.push(b'\n');
    }
    data
}

/// Whether `e` is a page whose URL its run already has.
fn is_repeated_url(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23505") && db.constraint() == Some(URL_ONCE_PER_RUN))
}

/// Inserts the batch's URLs that the run does not have yet; returns how
/// many.
async fn insert_new_pages(
    conn: &mut PgConnection,
    run_id: Uuid,
    urls: &[String],
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "with added as (
             insert into pages (run_id, url)
             select $1, u from unnest($2::text[]) as u
             on conflict (run_id, md5(url)) do nothing
             returning 1)
         select count(*) from added",
    )
    .bind(run_id)
    .bind(urls)
    .fetch_one(conn)
    .await
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

/// One change to one page attempt, as a batch of [`record_pages`] carries it.
#[derive(Debug, Clone)]
pub struct PageWrite {
    /// The page's run.
    pub run_id: Uuid,
    /// The page.
    pub page_id: i64,
    /// The attempt the change is about.
    pub attempt: i32,
    /// What to do to the page.
    pub change: PageChange,
}

/// What a [`PageWrite`] does.
#[derive(Debug, Clone)]
pub enum PageChange {
    /// The page becomes terminal with `status` (if it is still open:
    /// pending or dispatched), taking `result` (succeeded only) and `error`.
    Terminal {
        /// The terminal status.
        status: PageStatus,
        /// The report's facts, when it succeeded.
        result: Option<serde_json::Value>,
        /// Why it did not succeed.
        error: Option<PageError>,
    },
    /// The attempt goes back to pending, to be dispatched again after
    /// `after`, recording `error` (if the page is still dispatched on that
    /// attempt). With `refund`, the attempt does not count.
    Requeue {
        /// How long before the page may be dispatched again.
        after: Duration,
        /// Why.
        error: PageError,
        /// The attempt is given back (the page never ran).
        refund: bool,
    },
}

/// What [`record_pages`] did to one write that changed its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRecorded {
    /// The page.
    pub page_id: i64,
    /// The page's status now.
    pub status: PageStatus,
    /// Its run's status after the batch, when the write made the page
    /// terminal (so the run's counters changed); `None` for a requeue.
    pub run_status: Option<RunStatus>,
}

/// The statement of [`record_pages`]: every write of a batch in one
/// statement. $1 page ids, $2 run ids, $3 attempts, $4 statuses, $5
/// results, $6 errors, $7 requeue delays in seconds (null: terminal), $8
/// refunds (0/1).
///
/// Lock order: the batch's runs, in id order, before any of their pages
/// (the `any(array(...))` initplan runs before the first page row is
/// locked), as insert_pages and close_open_pages take them and as every
/// other batch does: concurrent batches queue on the runs they share
/// instead of deadlocking. A terminal write changes an open page only; a
/// requeue changes the page only while it is dispatched on that attempt: a
/// late or repeated write is a no-op and returns no row. Each touched run's
/// counters change once, by the number of its pages that became terminal,
/// and a `running` run whose open pages reach zero moves to `finishing`
/// in the same statement.
pub const RECORD_PAGES: &str = "with input as (
        select * from unnest($1::bigint[], $2::uuid[], $3::int[], $4::text[], $5::jsonb[],
                $6::jsonb[], $7::float8[], $8::int[])
            as t(page_id, run_id, attempt, status, result, error, retry_after, refund)),
    locked as materialized (
        select id from runs where id in (select run_id from input) order by id for no key update),
    changed as (
        update pages p set
            status = i.status,
            error = i.error,
            attempt = p.attempt - i.refund,
            reported_attempt = case when i.retry_after is null then i.attempt else p.reported_attempt end,
            result = case when i.retry_after is null then i.result else p.result end,
            finished_at = case when i.retry_after is null then now() else p.finished_at end,
            not_before = case when i.retry_after is null then null
                else now() + make_interval(secs => i.retry_after) end,
            updated_at = now()
        from input i
        where p.id = i.page_id and p.run_id = i.run_id
            and p.run_id = any(array(select id from locked))
            and case when i.retry_after is null then p.status in ('pending', 'dispatched')
                else p.status = 'dispatched' and p.attempt = i.attempt end
        returning p.id, p.run_id, p.status),
    counts as (
        select run_id, count(*) as n,
            count(*) filter (where status = 'succeeded') as succeeded,
            count(*) filter (where status = 'failed') as failed,
            count(*) filter (where status = 'timed_out') as timed_out,
            count(*) filter (where status = 'cancelled') as cancelled
        from changed where status <> 'pending' group by run_id),
    moved as (
        update runs r set open_pages = r.open_pages - c.n,
            succeeded_pages = r.succeeded_pages + c.succeeded,
            failed_pages = r.failed_pages + c.failed,
            timed_out_pages = r.timed_out_pages + c.timed_out,
            cancelled_pages = r.cancelled_pages + c.cancelled,
            status = case when r.status = 'running' and r.open_pages = c.n then 'finishing'
                else r.status end,
            updated_at = now()
        from counts c where r.id = c.run_id
        returning r.id, r.status)
    select ch.id, ch.status, m.status as run_status
    from changed ch left join moved m on m.id = ch.run_id and ch.status <> 'pending'";

/// Writes a batch of page changes in one statement ([`RECORD_PAGES`]) and
/// returns the writes that changed their page. At most one write per page
/// in a batch: a second write of the same page would be applied or not
/// depending on the join order, so callers put it in the next batch.
/// Committed on its own unless `db` is a transaction.
#[tracing::instrument(skip_all, fields(writes = writes.len()))]
pub async fn record_pages<'e, E: PgExecutor<'e>>(
    db: E,
    writes: &[PageWrite],
) -> Result<Vec<PageRecorded>, sqlx::Error> {
    let n = writes.len();
    let (mut pages, mut runs, mut attempts) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut statuses, mut results, mut errors, mut delays, mut refunds) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for w in writes {
        pages.push(w.page_id);
        runs.push(w.run_id);
        attempts.push(w.attempt);
        match &w.change {
            PageChange::Terminal {
                status,
                result,
                error,
            } => {
                statuses.push(status.as_str());
                results.push(result.as_ref().filter(|_| *status == PageStatus::Succeeded));
                errors.push(error.as_ref().map(Json));
                delays.push(None);
                refunds.push(0i32);
            }
            PageChange::Requeue {
                after,
                error,
                refund,
            } => {
                statuses.push(PageStatus::Pending.as_str());
                results.push(None);
                errors.push(Some(Json(error)));
                delays.push(Some(after.as_secs_f64()));
                refunds.push(i32::from(*refund));
            }
        }
    }
    let rows: Vec<(i64, PageStatus, Option<RunStatus>)> = sqlx::query_as(RECORD_PAGES)
        .bind(pages)
        .bind(runs)
        .bind(attempts)
        .bind(statuses)
        .bind(results)
        .bind(errors)
        .bind(delays)
        .bind(refunds)
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(page_id, status, run_status)| PageRecorded {
            page_id,
            status,
            run_status,
        })
        .collect())
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
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
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
    #[schema(value_type = Option<fanfare_crawler::contract::PageFacts>)]
    pub result: Option<serde_json::Value>,
    /// The last error, when there was one.
    #[schema(value_type = Option<super::PageError>)]
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

/// A page as the results export shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PageResult {
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
    /// When it became terminal.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A run's pages in id order, optionally of one state, as a stream read
/// from the server as it is consumed (never the whole run in memory). The
/// connection is held until the stream ends or is dropped.
pub fn page_results<'e, E: PgExecutor<'e> + 'e>(
    db: E,
    run_id: Uuid,
    status: Option<PageStatus>,
) -> futures::stream::BoxStream<'e, Result<PageResult, sqlx::Error>> {
    sqlx::query_as(
        "select id, url, status, attempt, result, error, finished_at from pages
         where run_id = $1 and ($2::text is null or status = $2)
         order by id",
    )
    .bind(run_id)
    .bind(status)
    .fetch(db)
}

/// A run's failed and timed-out pages in id order, after `after_id`.
pub async fn list_failures<'e, E: PgExecutor<'e>>(
    db: E,
    run_id: Uuid,
    after_id: i64,
    limit: i64,
) -> Result<Vec<Page>, sqlx::Error> {
    sqlx::query_as(
        "select id, url, status, attempt, result, error, dispatched_at, finished_at from pages
         where run_id = $1 and status in ('failed', 'timed_out') and id > $2
         order by id limit $3",
    )
    .bind(run_id)
    .bind(after_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// One bucket of [`finished_over_time`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct TimeBucket {
    /// 1..=buckets: the bucket's place between `from` and `to`.
    pub bucket: i32,
    /// Pages that succeeded in it.
    pub succeeded: i64,
    /// Pages that became terminal otherwise (failed, timed out, cancelled).
    pub other: i64,
}

/// How many of a run's pages became terminal in each of `buckets` equal
/// slices of `from..to` (counted by the server with `width_bucket`; the
/// pages are not read). Pages outside the span are counted in the first or
/// last bucket; empty buckets are left out.
pub async fn finished_over_time<'e, E: PgExecutor<'e>>(
    db: E,
    run_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    buckets: i32,
) -> Result<Vec<TimeBucket>, sqlx::Error> {
    sqlx::query_as(
        "select greatest(1, least($4, width_bucket(extract(epoch from finished_at),
                    extract(epoch from $2::timestamptz), extract(epoch from $3::timestamptz), $4)))
                    as bucket,
                count(*) filter (where status = 'succeeded') as succeeded,
                count(*) filter (where status <> 'succeeded') as other
         from pages where run_id = $1 and finished_at is not null
         group by 1 order by 1",
    )
    .bind(run_id)
    .bind(from)
    .bind(to)
    .bind(buckets)
    .fetch_all(db)
    .await
}

/// Percentiles of the `fetch_ms` the crawlers reported for a run's
/// succeeded pages.
#[derive(Debug, Clone, Copy, PartialEq, sqlx::FromRow)]
pub struct FetchPercentiles {
    /// Pages with a `fetch_ms`.
    pub pages: i64,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// The slowest.
    pub max: Option<f64>,
}

/// The numeric `fetch_ms` of a page's result, null when absent or not a number.
const FETCH_MS: &str =
    "case when jsonb_typeof(result->'fetch_ms') = 'number' then (result->>'fetch_ms')::float8 end";

/// Percentiles of a run's `fetch_ms`, computed by the server.
pub async fn fetch_ms_percentiles<'e, E: PgExecutor<'e>>(
    db: E,
    run_id: Uuid,
) -> Result<FetchPercentiles, sqlx::Error> {
    sqlx::query_as(&format!(
        "select count(f) as pages,
                percentile_cont(0.5) within group (order by f) as p50,
                percentile_cont(0.9) within group (order by f) as p90,
                percentile_cont(0.99) within group (order by f) as p99,
                max(f) as max
         from (select {FETCH_MS} as f from pages
               where run_id = $1 and status = 'succeeded') s"
    ))
    .bind(run_id)
    .fetch_one(db)
    .await
}

/// How many of a run's succeeded pages have a `fetch_ms` in each slice
/// between `thresholds` (ascending, in ms): bucket `i` (1-based) counts
/// `thresholds[i-1] <= fetch_ms < thresholds[i]`, the last one everything
/// from the last threshold up. Empty buckets are left out.
pub async fn fetch_ms_histogram<'e, E: PgExecutor<'e>>(
    db: E,
    run_id: Uuid,
    thresholds: &[f64],
) -> Result<Vec<(i32, i64)>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select width_bucket(f, $2::float8[]) as bucket, count(*) from
             (select {FETCH_MS} as f from pages where run_id = $1 and status = 'succeeded') s
         where f is not null group by 1 order by 1"
    ))
    .bind(run_id)
    .bind(thresholds)
    .fetch_all(db)
    .await
}
