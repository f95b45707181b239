//! Statements on the `pages` table (and the run counters that change with
//! a page in the same statement).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{Acquire, Connection, PgConnection, PgExecutor, Postgres};
use uuid::Uuid;

use super::{
    wake, Lease, PageError, PageStatus, RobotsOutcome, RunRows, RunStatus, LISTING_LEASE,
    WAKE_DISPATCH,
};

/// How many URLs one insert statement carries.
pub const INSERT_BATCH: usize = 20_000;

/// The unique index that keeps a URL once per run.
const URL_ONCE_PER_RUN: &str = "pages_url_once_per_run";

/// Adds pages to a listing run in one transaction; URLs already in the run
/// are skipped. Returns how many were added, or `None` when the run is no
/// longer listing under `lease` (it was failed, another replica finished
/// listing it, or took the listing over): pages are never added to a run
/// whose page list is closed, nor by a lister that lost its lease.
///
/// The batch is written with `COPY` (after dropping the URLs it repeats
/// itself), which costs the server about half of an `insert .. select ..
/// on conflict do nothing`; a URL the run already has (a list naming it in
/// an earlier batch, or a listing taken over from a replica that stopped)
/// makes the `COPY` fail on the unique index, and the batch is then
/// inserted again skipping the URLs already there. Either way the run's
/// counters grow by the pages actually added, in the same transaction.
///
/// `hosts` are the run's limits for the hosts of this batch (at least
/// every host the batch names that the run does not know yet): each
/// becomes a `run_hosts` row with what its robots.txt said (a host the run
/// already has keeps its row) and a `hosts` row when the host is new to
/// the ledger. A claim only looks at hosts a run has a row for.
#[tracing::instrument(skip(db, urls, hosts), fields(run_id = %lease.run_id, batch = urls.len()))]
pub async fn insert_pages<'a, A: Acquire<'a, Database = Postgres>>(
    db: A,
    lease: &Lease,
    urls: &[String],
    hosts: &[HostPolicy],
) -> Result<Option<u64>, sqlx::Error> {
    let run_id = lease.run_id;
    // Made before the transaction, which then spends its time in the server.
    let data = copy_text(run_id, urls);
    let mut tx = db.begin().await?;
    // Locks the run first: finishing the listing waits for this batch, and
    // a takeover waits for it to commit.
    let listing: Option<Uuid> = sqlx::query_scalar(
        "select id from runs where id = $1 and status = $2 and listing_owner = $3 for update",
    )
    .bind(run_id)
    .bind(RunStatus::Listing)
    .bind(lease.owner)
    .fetch_optional(&mut *tx)
    .await?;
    if listing.is_none() {
        return Ok(None);
    }
    add_run_hosts(&mut tx, run_id, hosts).await?;
    let added = match copy_pages(&mut tx, data).await {
        Ok(added) => added,
        Err(e) if is_repeated_url(&e) => {
            tracing::debug!(%run_id, "the batch names URLs the run already has; inserting it without them");
            insert_new_pages(&mut tx, run_id, urls).await?
        }
        Err(e) => return Err(e),
    };
    // The batch grew the connection's write buffer to its size (a few
    // hundred KiB), which a pooled connection would otherwise keep while
    // the daemon idles.
    tx.shrink_buffers();
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

/// A listing refreshes the planner's statistics of `pages` when the run
/// has this many pages, then each time it has four times as many as at the
/// last refresh.
pub const ANALYZE_FIRST_AT: u64 = 10_000;

/// Refreshes the planner's statistics of `pages` (`ANALYZE`, skipped when
/// another session is analyzing the table). A listing calls it as its run
/// grows: autovacuum looks at a table about once a minute, and until then
/// the claim is planned for the table as it was before the listing (for an
/// empty table: one pending page per run), and reads every pending page of
/// a run that has hundreds of thousands by the wrong index, most of a
/// second per claim.
pub async fn analyze_pages<'e, E: PgExecutor<'e>>(db: E) -> Result<(), sqlx::Error> {
    sqlx::query("analyze (skip_locked) pages")
        .execute(db)
        .await?;
    Ok(())
}

/// A run's limits for one host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPolicy {
    /// The host, as [`host_of`] gives it.
    pub host: String,
    /// The run's pages of this host dispatched and unreported at once, at most.
    pub in_flight_limit: u32,
    /// The least time between two dispatches to the host (from
    /// `per_host_rate` and robots.txt's `Crawl-delay`).
    pub interval: Duration,
    /// What the host's robots.txt said.
    pub robots: HostRobots,
}

/// What a run found in a host's robots.txt, kept with the run's limits for
/// the host so that a listing taken over does not fetch the file again.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRobots {
    /// What was found.
    pub outcome: RobotsOutcome,
    /// With [`RobotsOutcome::Rules`]: the rules for the run's crawler, as a
    /// robots.txt of one `user-agent: *` group.
    pub rules: Option<String>,
    /// Why the host's pages are left out, when they are.
    pub note: Option<String>,
}

impl HostRobots {
    /// A host whose robots.txt was not read.
    pub fn not_read() -> Self {
        Self {
            outcome: RobotsOutcome::NotRead,
            rules: None,
            note: None,
        }
    }
}

/// What `run_id`'s listing found in its hosts' robots.txt so far, host by
/// host (hosts from before robots.txt results were kept are left out).
pub async fn run_robots<'e, E: PgExecutor<'e>>(
    db: E,
    run_id: Uuid,
) -> Result<Vec<(String, HostRobots)>, sqlx::Error> {
    let rows: Vec<(String, RobotsOutcome, Option<String>, Option<String>)> = sqlx::query_as(
        "select host, robots_outcome, robots_rules, robots_note from run_hosts
         where run_id = $1 and robots_outcome is not null",
    )
    .bind(run_id)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(host, outcome, rules, note)| {
            (
                host,
                HostRobots {
                    outcome,
                    rules,
                    note,
                },
            )
        })
        .collect())
}

/// The host a page is counted under: the URL's authority without user
/// info, lowercased (`shop.example.com`, `127.0.0.1:8080`, `[::1]:81`).
/// The same as the server derives for `pages.host`; URLs are stored as the
/// `url` crate serializes them, so a default port never shows.
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    host.to_ascii_lowercase()
}

/// The same limits for every distinct host of `urls` (robots.txt not read).
pub fn host_policies(urls: &[String], in_flight_limit: u32, interval: Duration) -> Vec<HostPolicy> {
    let mut seen = std::collections::HashSet::new();
    urls.iter()
        .map(|u| host_of(u))
        .filter(|h| seen.insert(h.clone()))
        .map(|host| HostPolicy {
            host,
            in_flight_limit,
            interval,
            robots: HostRobots::not_read(),
        })
        .collect()
}

/// Gives `run_id` a row for each of `hosts` it has none for (hosts a
/// report's links lead to, their robots.txt read while the run crawls;
/// [`super::RECORD_PAGES_FINDING`] adds a link only on a host of its
/// run), in a transaction of its own; a host the run has keeps its row.
pub async fn add_hosts(
    pool: &sqlx::PgPool,
    run_id: Uuid,
    hosts: &[HostPolicy],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    add_run_hosts(&mut tx, run_id, hosts).await?;
    tx.commit().await
}

/// Gives `run_id` a `run_hosts` row (and the ledger a `hosts` row) for
/// each of `hosts` it has none for.
async fn add_run_hosts(
    conn: &mut PgConnection,
    run_id: Uuid,
    hosts: &[HostPolicy],
) -> Result<(), sqlx::Error> {
    if hosts.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = hosts.iter().map(|h| h.host.as_str()).collect();
    let limits: Vec<i32> = hosts
        .iter()
        .map(|h| h.in_flight_limit.min(i32::MAX as u32) as i32)
        .collect();
    let intervals: Vec<f64> = hosts.iter().map(|h| h.interval.as_secs_f64()).collect();
    let outcomes: Vec<RobotsOutcome> = hosts.iter().map(|h| h.robots.outcome).collect();
    let rules: Vec<Option<&str>> = hosts.iter().map(|h| h.robots.rules.as_deref()).collect();
    let notes: Vec<Option<&str>> = hosts.iter().map(|h| h.robots.note.as_deref()).collect();
    // A host already there is left as it is (its clock belongs to claims).
    sqlx::query(
        "insert into hosts (host) select h from unnest($1::text[]) as h order by h
         on conflict (host) do nothing",
    )
    .bind(&names)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "insert into run_hosts (run_id, host, in_flight_limit, base_interval, interval,
             robots_outcome, robots_rules, robots_note)
         select $1, host, lim, iv, iv, outcome, rules, note
         from unnest($2::text[], $3::int[], $4::float8[], $5::text[], $6::text[], $7::text[])
             as t(host, lim, iv, outcome, rules, note)
         on conflict (run_id, host) do nothing",
    )
    .bind(run_id)
    .bind(names)
    .bind(limits)
    .bind(intervals)
    .bind(outcomes)
    .bind(rules)
    .bind(notes)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// `COPY`s a batch (as [`copy_text`] gives it) into the run, inside a savepoint that
/// is rolled back when the copy fails (a URL the run already has fails it
/// on the unique index: see [`is_repeated_url`]). Returns the rows added.
async fn copy_pages(conn: &mut PgConnection, data: Vec<u8>) -> Result<i64, sqlx::Error> {
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
        /// The links the report found, to add to the run (a success of a
        /// run that follows links only).
        found: Option<Box<super::FoundLinks>>,
    },
    /// The attempt goes back to pending, to be dispatched again after
    /// `after`, recording `error` (if the page is still dispatched on that
    /// attempt). With `refund`, the attempt does not count.
    Requeue {
        /// How long before the page may be dispatched again.
        after: Duration,
        /// Why.
        error: PageError,
        /// The attempt number is given back (the page never ran).
        refund: bool,
        /// The site throttled the attempt (429/503): it is counted in the
        /// page's `site_throttles` (so it does not count against
        /// `max_attempts`), the run's interval for the page's host doubles
        /// (at most once per interval) and the host waits `after`.
        site_throttle: bool,
        /// The page goes on to the browser (its plain fetch looked
        /// unrendered): it is marked `render` and `escalated`, and the
        /// plain dispatch is counted with `site_throttles` (dispatches that
        /// do not count against `max_attempts`) while its attempt number
        /// is kept, so a late copy of the plain report stays stale.
        to_browser: bool,
    },
}

/// What [`record_pages`] did to one write that changed its page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRecorded {
    /// The page.
    pub page_id: i64,
    /// The page's status now.
    pub status: PageStatus,
    /// Its run's status after the batch, when the write made the page
    /// terminal (so the run's counters changed); `None` for a requeue.
    pub run_status: Option<RunStatus>,
    /// Pages the batch added to the page's run by following links (the
    /// same number on every write of that run).
    pub run_added: i64,
    /// Of the links the write found ([`super::FoundLinks::links`]), the places
    /// of those its run has now (had already, or added by this batch or a
    /// racing one); empty without links.
    pub links_in_run: Vec<usize>,
}

/// The part of [`RECORD_PAGES`] and [`RECORD_PAGES_FINDING`] up to the
/// run counters: the writes, the runs locked, the pages changed, the
/// hosts paced, the per-run counts.
macro_rules! record_pages_head {
    () => {
        "with input as (
        select * from unnest($1::bigint[], $2::uuid[], $3::int[], $4::text[], $5::jsonb[],
                $6::jsonb[], $7::float8[], $8::int[], $9::int[], $10::bool[])
            as t(page_id, run_id, attempt, status, result, error, retry_after, refund, throttle,
                to_browser)),
    locked as materialized (
        select id, total_pages from runs where id in (select run_id from input)
        order by id for no key update),
    previous as materialized (
        -- a 304 Not Modified keeps the facts of its URL's row in its run's
        -- validators_from run (the row whose validators it was sent: one
        -- without validators was sent none, and a 304 then keeps nothing)
        select i.page_id, v.result, v.etag, v.last_modified
        from input i
        join pages c on c.id = i.page_id and c.run_id = i.run_id
        join runs r on r.id = c.run_id
        join pages v on v.run_id = r.validators_from
            and md5(v.url) = md5(c.url) and v.url = c.url and v.status = 'succeeded'
            and (v.etag is not null or v.last_modified is not null)
        where i.retry_after is null and (i.result->>'not_modified')::boolean),
    reported as (
        select i.*, k.result as kept_result, k.etag as kept_etag,
            k.last_modified as kept_last_modified,
            coalesce(i.retry_after is null and (i.result->>'not_modified')::boolean, false)
                as not_modified,
            k.page_id is not null as kept
        from input i left join previous k on k.page_id = i.page_id),
    changed as (
        update pages p set
            -- a 304 whose previous facts are gone (the run they were in
            -- was deleted) cannot be recorded as a success
            status = case when i.not_modified and not i.kept then 'failed' else i.status end,
            error = case when i.not_modified and not i.kept then jsonb_build_object(
                    'kind', 'other', 'retryable', false, 'message',
                    'the site answered 304 Not Modified, but the previous run''s facts it would keep are gone')
                else i.error end,
            attempt = p.attempt - i.refund,
            site_throttles = p.site_throttles + i.throttle + i.to_browser::int,
            render = p.render or i.to_browser,
            escalated = p.escalated or i.to_browser,
            reported_attempt = case when i.retry_after is null then i.attempt else p.reported_attempt end,
            result = case when i.retry_after is null and i.not_modified then
                    case when i.kept then i.result || jsonb_build_object(
                            'title', i.kept_result->'title',
                            'fields', coalesce(i.kept_result->'fields', '{}'::jsonb),
                            'content_sha256', i.kept_result->'content_sha256',
                            'bytes', i.kept_result->'bytes')
                        || case when i.result->'etag' is null and i.kept_etag is not null
                            then jsonb_build_object('etag', i.kept_etag) else '{}' end
                        || case when i.result->'last_modified' is null
                                and i.kept_last_modified is not null
                            then jsonb_build_object('last_modified', i.kept_last_modified)
                            else '{}' end
                    end
                when i.retry_after is null then i.result else p.result end,
            etag = case when i.retry_after is null and i.result is not null
                then coalesce(i.result->>'etag', i.kept_etag) else p.etag end,
            last_modified = case when i.retry_after is null and i.result is not null
                then coalesce(i.result->>'last_modified', i.kept_last_modified)
                else p.last_modified end,
            not_modified = case when i.retry_after is null and i.result is not null
                then i.not_modified and i.kept else p.not_modified end,
            via_proxy = case when i.retry_after is null and i.result is not null
                then coalesce((i.result->>'via_proxy')::boolean, false) else p.via_proxy end,
            finished_at = case when i.retry_after is null then now() else p.finished_at end,
            not_before = case when i.retry_after is null then null
                else now() + make_interval(secs => i.retry_after) end,
            updated_at = now()
        from reported i
        where p.id = i.page_id and p.run_id = i.run_id
            and p.run_id = any(array(select id from locked))
            and case when i.retry_after is null then p.status in ('pending', 'dispatched')
                else p.status = 'dispatched' and p.attempt = i.attempt end
        returning p.id, p.run_id, p.status, p.host, p.depth, i.throttle, i.retry_after),
    paced as (
        update run_hosts h set
            interval = case
                when s.throttled = 0 then greatest(h.base_interval, h.interval * power(0.9::float8, s.eased::float8))
                when h.throttled_at is null
                    or h.throttled_at <= now() - make_interval(secs => h.interval)
                    then least(greatest(h.interval * 2, 0.25, h.base_interval), 60)
                else h.interval end,
            throttled_at = case when s.throttled > 0 then now() else h.throttled_at end,
            throttles = h.throttles + s.throttled,
            paused_until = case when s.throttled > 0
                then greatest(h.paused_until, now() + make_interval(secs => s.wait))
                else h.paused_until end
        from (select run_id, host,
                     count(*) filter (where status = 'succeeded') as eased,
                     count(*) filter (where throttle = 1) as throttled,
                     max(retry_after) filter (where throttle = 1) as wait
              from changed group by run_id, host) s
        where h.run_id = s.run_id and h.host = s.host
            and (s.throttled > 0 or h.interval > h.base_interval)),
    counts as (
        select run_id, count(*) as n,
            count(*) filter (where status = 'succeeded') as succeeded,
            count(*) filter (where status = 'failed') as failed,
            count(*) filter (where status = 'timed_out') as timed_out,
            count(*) filter (where status = 'cancelled') as cancelled
        from changed where status <> 'pending' group by run_id),
"
    };
}
pub(crate) use record_pages_head;

/// The statement of [`record_pages`]: every write of a batch in one
/// statement. $1 page ids, $2 run ids, $3 attempts, $4 statuses, $5
/// results, $6 errors, $7 requeue delays in seconds (null: terminal), $8
/// refunds (0/1), $9 site throttles (0/1), $10 sent on to the browser.
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
///
/// Host pacing changes in the same statement, on the touched runs'
/// `run_hosts` rows (locked after their run, so batches sharing a row
/// queue on the run first): a site throttle doubles the host's interval
/// (to at least 0.25 s, at most 60 s, once per interval) and pauses the
/// host for the retry delay; each page that succeeded eases a throttled
/// interval back by a tenth, down to the run's base interval.
///
/// A success that says `not_modified` (the site answered 304 to the
/// validators the claim sent) keeps the title, fields, hash and size of the
/// same URL's row in the run's `validators_from` run, and its validators
/// unless the 304 carried new ones; without such a row (that run was
/// deleted, or the row had no validators) the page fails instead. The
/// page's `etag`, `last_modified` and `not_modified` are set with its
/// result.
pub const RECORD_PAGES: &str = concat!(
    record_pages_head!(),
    "
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
    select ch.id, ch.status, m.status as run_status, 0::bigint as run_added, null::int[] as in_run
    from changed ch left join moved m on m.id = ch.run_id and ch.status <> 'pending'"
);

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
    let mut throttles = Vec::with_capacity(n);
    let mut to_browsers = Vec::with_capacity(n);
    for w in writes {
        pages.push(w.page_id);
        runs.push(w.run_id);
        attempts.push(w.attempt);
        match &w.change {
            PageChange::Terminal {
                status,
                result,
                error,
                ..
            } => {
                statuses.push(status.as_str());
                results.push(result.as_ref().filter(|_| *status == PageStatus::Succeeded));
                errors.push(error.as_ref().map(Json));
                delays.push(None);
                refunds.push(0i32);
                throttles.push(0i32);
                to_browsers.push(false);
            }
            PageChange::Requeue {
                after,
                error,
                refund,
                site_throttle,
                to_browser,
            } => {
                statuses.push(PageStatus::Pending.as_str());
                results.push(None);
                errors.push(Some(Json(error)));
                delays.push(Some(after.as_secs_f64()));
                refunds.push(i32::from(*refund));
                throttles.push(i32::from(*site_throttle));
                to_browsers.push(*to_browser);
            }
        }
    }
    let finding = super::links::FindingArrays::of(writes);
    // Where each write's links start in the statement's array of links.
    let mut first_link = HashMap::new();
    if finding.is_some() {
        let mut at = 1usize;
        for w in writes {
            if let PageChange::Terminal {
                found: Some(found), ..
            } = &w.change
            {
                first_link.insert(w.page_id, at);
                at += found.links.len();
            }
        }
    }
    let statement = if finding.is_some() {
        super::links::RECORD_PAGES_FINDING
    } else {
        RECORD_PAGES
    };
    let query = sqlx::query_as(statement)
        .bind(pages)
        .bind(runs)
        .bind(attempts)
        .bind(statuses)
        .bind(results)
        .bind(errors)
        .bind(delays)
        .bind(refunds)
        .bind(throttles)
        .bind(to_browsers);
    let query = match finding {
        None => query,
        Some(finding) => finding.bind(query),
    };
    let rows: Vec<RecordedRow> = query.fetch_all(db).await?;
    Ok(rows
        .into_iter()
        .map(|(page_id, status, run_status, run_added, in_run)| {
            let first = first_link.get(&page_id).copied().unwrap_or(1);
            PageRecorded {
                page_id,
                status,
                run_status,
                run_added,
                links_in_run: in_run
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|n| usize::try_from(n).ok()?.checked_sub(first))
                    .collect(),
            }
        })
        .collect())
}

/// A row of [`RECORD_PAGES`]: page, status, run status, pages the run
/// gained, the places of the page's links its run has.
type RecordedRow = (i64, PageStatus, Option<RunStatus>, i64, Option<Vec<i32>>);

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
    /// Dispatches of the page the site throttled (they do not count
    /// against `max_attempts`).
    pub site_throttles: i32,
    /// When to invoke it: now, or later when its host is paced.
    pub dispatch_at: DateTime<Utc>,
    /// When this attempt's report is due.
    pub deadline: DateTime<Utc>,
    /// The page goes to the browser.
    pub render: bool,
    /// The `ETag` of the URL's successful fetch in the run's
    /// `validators_from` run, when the claim was conditional.
    pub if_none_match: Option<String>,
    /// Its `Last-Modified`, likewise.
    pub if_modified_since: Option<String>,
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

/// How many of `schedule`'s pages are ready to dispatch (pending, their
/// backoff over): after a claim that took fewer pages than the schedule had
/// room for, each of them waits on a host limit.
pub async fn ready_pages<'e, E: PgExecutor<'e>>(db: E, schedule: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "select count(*) from pages
         where run_id = any(array(
                 select id from runs where schedule = $1 and status <> 'finished'))
             and status = 'pending' and (not_before is null or not_before <= now())",
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
    /// The claim took fewer pages than the schedule's `max_in_flight` and
    /// the batch left room for: the ready pages left wait on a host limit.
    pub held_back: bool,
}

/// How far ahead a claim gives paced hosts their dispatch times: a host
/// allowed one page a second gets up to two pages per claim, the second
/// to be invoked a second after the first.
pub const PACING_HORIZON: Duration = Duration::from_secs(2);
/// The most hosts one claim takes pages of; the hosts whose turn is
/// oldest go first.
pub const CLAIM_HOSTS: i64 = 4_096;

/// The statement of [`claim_pages`]. $1 schedule, $2 batch size, $3 page
/// timeout (s), $4 the schedule's max_in_flight, $5 the pacing horizon (s),
/// $6 the most hosts, $7 whether every page claimed goes to the browser,
/// $8 whether the pages of hosts the schedule learned need the browser
/// (`render_hosts`) go to it (either way they are marked `render`), $9
/// with $8, the schedule's `render_after`: a host of the run that is
/// suspected (some of its pages were sent on to the browser, fewer than
/// $9) gets plain pages only while fewer than $9 less its sends-on are in
/// flight, so no more of its pages are fetched plainly than could still
/// be sent on before it is learned. $10: whether the pages claimed carry
/// the validators of their URL's successful fetch in their run's
/// `validators_from` run (pages going to the browser never do).
///
/// Hosts of the schedule's runs with a ready page, whose clock
/// (`hosts.next_at`) is inside the horizon, oldest turn first; each host's
/// limits are the strictest of every unfinished run that has the host (any
/// schedule): the smallest in-flight limit, the longest interval, the
/// latest pause. A host gets as many pages as it has in-flight room
/// (counted over every run) and, when paced, dispatch times inside the
/// horizon: `start`, `start + interval`, … A host's pages come from the
/// pending index: retries that are due (oldest first), then new pages in
/// id order. Pages are taken round-robin over
/// the hosts up to the batch and the schedule's in-flight room, marked
/// dispatched with their dispatch time and a deadline one page timeout
/// after it, and each host's clock moves past its last page.
pub const CLAIM_PAGES: &str = "with mine as materialized (
        select id from runs where schedule = $1 and status <> 'finished'),
    active as materialized (
        select id from runs where status <> 'finished'),
    flight as materialized (
        select count(*) as n from pages
        where run_id = any(array(select id from mine)) and status = 'dispatched'),
    cand as materialized (
        select h.host, h.next_at from hosts h
        where h.host in (
                select rh.host from run_hosts rh
                where rh.run_id = any(array(select id from mine))
                    -- a ready page, looked up in the pending index (its
                    -- order is what only that index has, so the planner
                    -- walks neither every pending page nor those claimed)
                    and (select true from pages p
                        where p.run_id = rh.run_id and p.host = rh.host and p.status = 'pending'
                            and (p.not_before is null or p.not_before <= now())
                        order by p.not_before nulls last, p.id
                        limit 1))
            and h.next_at < now() + make_interval(secs => $5)
        order by h.next_at, h.host
        limit $6),
    policy as materialized (
        select c.host, greatest(c.next_at, max(o.paused_until), now()) as start,
            min(o.in_flight_limit) as lim, max(o.interval) as iv
        from cand c join run_hosts o
            on o.host = c.host and o.run_id = any(array(select id from active))
        group by c.host, c.next_at),
    room as materialized (
        select host, start, iv,
            greatest(0, least(
                lim - (select count(*) from pages d where d.host = policy.host and d.status = 'dispatched'),
                case when start >= now() + make_interval(secs => $5) then 0
                    when iv > 0
                    then ceil((extract(epoch from now() - start) + $5) / iv)::bigint
                    else $2 end)) as n
        from policy),
    suspect as materialized (
        select h.host, greatest(0, $9 - h.escalations - (
                select count(*) from pages d
                where d.host = h.host and d.status = 'dispatched' and not d.render
                    and d.run_id = h.run_id)) as plain_room
        from render_hosts h
        where $8 and h.schedule = $1 and not h.needs_browser and h.escalations >= 1
            and h.run_id = any(array(select id from mine))
            and h.host in (select host from room where n > 0)),
    picked as materialized (
        select k.id, k.host, k.start, k.iv, k.rn
        from (
            -- each (run, host) in the pending index's order (retries that
            -- are due, oldest first, then new pages by id: an order no
            -- other index has, so the scan never walks the pages already
            -- claimed), then numbered per host across the schedule's runs
            select q.id, q.render, r.host, r.start, r.iv, r.n,
                row_number() over (partition by r.host order by q.ord) as rn,
                row_number() over (partition by r.host, q.render order by q.ord) as prn
            from room r
            join run_hosts rh on rh.host = r.host and rh.run_id = any(array(select id from mine))
            cross join lateral (
                select p.id, p.render, row_number() over () as ord from (
                    select p.id, p.render from pages p
                    where p.run_id = rh.run_id and p.host = r.host
                        and p.status = 'pending' and (p.not_before is null or p.not_before <= now())
                    order by p.not_before nulls last, p.id limit r.n
                    for update skip locked) p) q
            where r.n > 0) k
        left join suspect s on s.host = k.host
        where k.rn <= k.n and (k.render or s.host is null or k.prn <= s.plain_room)
        order by k.rn, k.start, k.id
        limit greatest(0, least($2, $4 - (select n from flight)))),
    claimed as (
        update pages p set status = 'dispatched', attempt = p.attempt + 1,
            dispatched_at = k.start + make_interval(secs => k.iv * (k.rn - 1)),
            deadline = k.start + make_interval(secs => k.iv * (k.rn - 1) + $3),
            not_before = null,
            render = p.render or $7 or ($8 and exists (
                select 1 from render_hosts r
                where r.schedule = $1 and r.host = p.host and r.needs_browser)),
            updated_at = now()
        from picked k where p.id = k.id
        returning p.id, p.run_id, p.url, p.attempt, p.site_throttles, p.dispatched_at, p.deadline,
            p.render),
    clocked as (
        update hosts h set next_at = s.start + make_interval(secs => s.iv * s.n)
        from (select host, min(start) as start, max(iv) as iv, count(*) as n
              from picked group by host) s
        where h.host = s.host)
    select c.id, c.run_id, c.url, c.attempt, c.site_throttles, c.dispatched_at as dispatch_at,
        c.deadline, c.render, (select n from flight) as in_flight_before,
        v.etag as if_none_match, v.last_modified as if_modified_since
    from claimed c
    left join lateral (
        -- the same URL's row in the run's validators_from run: one probe
        -- of the pages_url_once_per_run index per claimed page
        select v.etag, v.last_modified
        from runs r join pages v on v.run_id = r.validators_from
            and md5(v.url) = md5(c.url) and v.url = c.url
        where $10 and not c.render and r.id = c.run_id and v.status = 'succeeded'
            and (v.etag is not null or v.last_modified is not null)) v on true";

/// Claims up to `limit` ready pages of `schedule`'s unfinished runs within
/// every host's limits ([`CLAIM_PAGES`]), keeping the schedule's
/// dispatched-and-unreported pages at most `max_in_flight`, in one
/// transaction. Claims take turns through one advisory lock (across
/// schedules and replicas), so the in-flight counts a claim reads hold
/// until it commits; `SKIP LOCKED` keeps a claim from waiting on pages a
/// recorder batch is changing.
pub async fn claim_pages<'a, A: Acquire<'a, Database = Postgres>>(
    db: A,
    schedule: &str,
    max_in_flight: i64,
    limit: i64,
    page_timeout: Duration,
) -> Result<Claim, sqlx::Error> {
    claim_pages_to(
        db,
        schedule,
        max_in_flight,
        limit,
        page_timeout,
        ClaimRender::Marked,
    )
    .await
}

/// Which claimed pages go to the browser (are marked `render`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimRender {
    /// Those already marked (sent on after a plain fetch).
    Marked,
    /// Every page.
    All,
    /// Those already marked, and those of hosts the schedule learned need
    /// the browser ([`crate::ledger::note_escalation`]) after
    /// `render_after` of their pages needed it; while a host is suspected
    /// (fewer did), its plain pages are held back ([`CLAIM_PAGES`]).
    Learned {
        /// The schedule's `render_after`.
        render_after: i32,
    },
}

/// [`claim_pages`], marking the pages claimed that go to the browser as
/// `render` says.
pub async fn claim_pages_to<'a, A: Acquire<'a, Database = Postgres>>(
    db: A,
    schedule: &str,
    max_in_flight: i64,
    limit: i64,
    page_timeout: Duration,
    render: ClaimRender,
) -> Result<Claim, sqlx::Error> {
    claim_pages_with(
        db,
        schedule,
        max_in_flight,
        limit,
        page_timeout,
        render,
        false,
    )
    .await
}

/// [`claim_pages_to`]; with `conditional`, each page claimed carries the
/// validators its URL's successful fetch got in its run's
/// `validators_from` run ([`ClaimedPage::if_none_match`]), unless it goes
/// to the browser.
#[tracing::instrument(skip(db))]
pub async fn claim_pages_with<'a, A: Acquire<'a, Database = Postgres>>(
    db: A,
    schedule: &str,
    max_in_flight: i64,
    limit: i64,
    page_timeout: Duration,
    render: ClaimRender,
    conditional: bool,
) -> Result<Claim, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("select pg_advisory_xact_lock(hashtextextended('fanfare.claim', 0))")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<ClaimedRow> = sqlx::query_as(CLAIM_PAGES)
        .bind(schedule)
        .bind(limit)
        .bind(page_timeout.as_secs_f64())
        .bind(max_in_flight)
        .bind(PACING_HORIZON.as_secs_f64())
        .bind(CLAIM_HOSTS)
        .bind(render == ClaimRender::All)
        .bind(matches!(render, ClaimRender::Learned { .. }))
        .bind(match render {
            ClaimRender::Learned { render_after } => render_after,
            _ => i32::MAX,
        })
        .bind(conditional)
        .fetch_all(&mut *tx)
        .await?;
    let in_flight_before = match rows.first() {
        Some(row) => row.in_flight_before,
        None => schedule_in_flight(&mut *tx, schedule).await?,
    };
    tx.commit().await?;
    let room = (max_in_flight - in_flight_before).min(limit);
    let pages: Vec<ClaimedPage> = rows.into_iter().map(|r| r.page).collect();
    Ok(Claim {
        in_flight: in_flight_before + pages.len() as i64,
        held_back: (pages.len() as i64) < room,
        pages,
    })
}

/// A row of [`CLAIM_PAGES`].
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    page: ClaimedPage,
    in_flight_before: i64,
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
    /// Dispatches of the page the site throttled.
    pub site_throttles: i32,
    /// The run's schedule.
    pub schedule: String,
}

/// Dispatched pages past their deadline, oldest first.
pub async fn overdue_pages<'e, E: PgExecutor<'e>>(
    db: E,
    limit: i64,
) -> Result<Vec<OverduePage>, sqlx::Error> {
    sqlx::query_as(
        "select p.id, p.run_id, p.attempt, p.site_throttles, r.schedule
         from pages p join runs r on r.id = p.run_id
         where p.status = 'dispatched' and p.deadline < now()
         order by p.deadline limit $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// How many dispatches of a page its site throttled (0 for an unknown page).
pub async fn site_throttles<'e, E: PgExecutor<'e>>(
    db: E,
    run_id: Uuid,
    page_id: i64,
) -> Result<i32, sqlx::Error> {
    let n: Option<i32> =
        sqlx::query_scalar("select site_throttles from pages where id = $1 and run_id = $2")
            .bind(page_id)
            .bind(run_id)
            .fetch_optional(db)
            .await?;
    Ok(n.unwrap_or(0))
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
    /// Links followed to reach it: 0 for a listed page, 1 for a page a
    /// listed page links to, and so on.
    pub depth: i32,
    /// The page whose report carried the link to it (none for a listed page).
    pub found_on: Option<i64>,
    /// Whether its successful report came through a proxy (the report's
    /// `via_proxy`); none until a report succeeded.
    pub via_proxy: Option<bool>,
}

/// A run's pages in id order, optionally of one state.
pub async fn list_pages<'e, E: PgExecutor<'e>>(
    db: E,
    rows: RunRows<PageStatus>,
) -> Result<Vec<Page>, sqlx::Error> {
    rows.query(
        "select id, url, status, attempt, result, error, dispatched_at, finished_at, depth, found_on,
             via_proxy
         from pages
         where run_id = $1 and ($2::text is null or status = $2) and id > $3
         order by id limit $4",
    )
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

/// A run's pages in id order as the export shows them, optionally of one
/// state: an export reads a run some rows at a time, holding a connection
/// only while it reads them.
pub async fn page_results<'e, E: PgExecutor<'e>>(
    db: E,
    rows: RunRows<PageStatus>,
) -> Result<Vec<PageResult>, sqlx::Error> {
    rows.query(
        "select id, url, status, attempt, result, error, finished_at from pages
         where run_id = $1 and ($2::text is null or status = $2) and id > $3
         order by id limit $4",
    )
    .fetch_all(db)
    .await
}

/// A run's failed and timed-out pages in id order, after `after_id`.
pub async fn list_failures<'e, E: PgExecutor<'e>>(
    db: E,
    run_id: Uuid,
    after_id: i64,
    limit: i64,
) -> Result<Vec<Page>, sqlx::Error> {
    sqlx::query_as(
        "select id, url, status, attempt, result, error, dispatched_at, finished_at, depth, found_on,
             via_proxy
         from pages
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

/// A run's succeeded pages by how they were fetched, with conditional
/// fetches.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    sqlx::FromRow,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct FetchCounts {
    /// Fetched in full (the site sent the page).
    pub fetched: i64,
    /// The site answered `304 Not Modified` to the previous run's
    /// validators: the previous run's facts were kept.
    pub not_modified: i64,
}

/// Run `run_id`'s [`FetchCounts`].
pub async fn fetch_counts<'e, E: PgExecutor<'e>>(
    db: E,
    run_id: Uuid,
) -> Result<FetchCounts, sqlx::Error> {
    sqlx::query_as(
        "select count(*) filter (where not coalesce(not_modified, false)) as fetched,
             count(*) filter (where not_modified) as not_modified
         from pages where run_id = $1 and status = 'succeeded'",
    )
    .bind(run_id)
    .fetch_one(db)
    .await
}
