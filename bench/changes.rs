//! Change detection on a 1,000,000-page run: the comparison's time vs a
//! listing's.
//!
//! How long does the statement that compares a finished run with the
//! previous run of its schedule (`ledger::compare_runs`, the one
//! `run.finished` waits for, inside the transaction that finishes the run
//! and holds its row lock) take for two runs of `--pages` pages each, next
//! to getting the same number of URLs into the ledger?
//!
//! On a fresh database (migrated by the bench):
//!
//! 1. **The listing proxy**: `--pages` URLs, with a run id, are streamed
//!    by `COPY pages (run_id, url) FROM STDIN` (text format, one
//!    transaction) into the real `pages` table, with its indexes and its
//!    foreign key, for a run of their own: what a listing must at least do
//!    (the daemon's own listing of a JSON list took 1.25 to 1.76 × this on
//!    the development VM, see `bench/million.rs` and `docs/benchmarks.md`).
//! 2. **Two runs** of one schedule, written directly by `insert .. select
//!    generate_series` (not timed), finished and listed, every page
//!    terminal: the previous run's `--pages` pages all succeeded (title,
//!    `price` and `name` fields, a content hash); the current run lists
//!    the same URLs but for every 200th (0.5 %, no longer listed), has
//!    0.5 % more new URLs, every 100th page's price (and hash) changed
//!    (1 %), every 1000th answering 404 (0.1 %, gone) and every 1000th
//!    timed out (0.1 %, not comparable). Then `analyze` (`--no-analyze`
//!    leaves it out: a run compared just after its last report, before
//!    autovacuum has looked at it) and a checkpoint.
//! 3. **The comparison**: `compare_runs(current, previous)` in a
//!    transaction, `--repeat` times (rolled back but for the last, so each
//!    starts from the same tables; by fields, then once by content). Its
//!    counts are checked against the expected ones. Figures: seconds per
//!    comparison, the median, the ratio to the COPY, and the rows written
//!    to `page_changes`. `--explain` prints the statement's plan
//!    (`explain (analyze, buffers)`).
//!
//! Nothing is asserted about time: figures are printed as `FIGURE` lines.
//!
//! ```sh
//! cargo bench --bench changes                       # 1,000,000 pages: a few minutes
//! cargo bench --bench changes -- --pages 20000      # smoke run, seconds
//! ```
//!
//! It needs a Postgres it may create databases on (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and drops its database at
//! the end (`--keep-database` leaves it).

use std::time::Instant;

use anyhow::{ensure, Context};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

use fanfare_testkit as common;

use common::bench::{checkpoint, copy_urls, thousands};

#[derive(Debug, serde::Deserialize)]
struct Args {
    pages: i64,
    repeat: usize,
    no_analyze: bool,
    explain: bool,
    keep_database: bool,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
Change detection on a 1,000,000-page run: comparison time vs listing time

  --pages N             pages of the previous run (the current one lists as many,
                        give or take 0.5 %) [default: 1000000]
  --repeat N            comparisons by fields (the median is printed) [default: 3]
  --no-analyze          leave out `analyze` after writing the runs
  --explain             print the comparison's plan
  --keep-database       leave the bench database in place
";

fn main() -> anyhow::Result<()> {
    let args: Args = common::bench::start(USAGE)?;
    ensure!(args.pages >= 1000, "--pages must be at least 1000");
    ensure!(args.repeat > 0, "--repeat must be at least 1");
    let runtime = common::bench::app_runtime(None).build()?;
    runtime.block_on(bench(&args))
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    println!(
        "FIGURE change detection, {} pages per run: comparison vs listing (commit {})",
        thousands(args.pages),
        common::bench::git_commit()
    );
    common::bench::with_bench_database(
        args.keep_database,
        |db| async move { measure(args, &db).await },
    )
    .await
}

/// A run of schedule `bench`, finished and listed.
async fn insert_run(
    conn: &mut PgConnection,
    id: Uuid,
    offset_s: i64,
    trigger: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "insert into runs (id, schedule, scheduled_for, trigger, status, outcome, listed_at,
             finished_at, created_at)
         values ($1, 'bench', now() + make_interval(secs => $2), $3, 'finished', 'succeeded',
             now(), now(), now() + make_interval(secs => $2))",
    )
    .bind(id)
    .bind(offset_s as f64)
    .bind(trigger)
    .execute(conn)
    .await?;
    Ok(())
}

/// Page `i`'s facts in a run (`changed`: another price and hash).
const RESULT: &str = "jsonb_build_object('http_status', 200, 'title', 'Product ' || i,
    'fields', jsonb_build_object('price', case when changed then (i % 997 + 1)::text || '.99'
        else (i % 997)::text || '.99' end, 'name', 'Product ' || i),
    'bytes', 20000 + i % 5000,
    'content_sha256', md5(i::text || changed::text) || md5(changed::text || i::text),
    'fetch_ms', 100 + i % 400)";

async fn measure(args: &Args, database_url: &str) -> anyhow::Result<()> {
    let pool = fanfare::ledger::pool(database_url, 2)?;
    fanfare::ledger::migrate(&pool)
        .await
        .context("migrating the bench database")?;
    pool.close().await;
    let mut conn = PgConnection::connect(database_url).await?;
    let n = args.pages;
    let url = |i: i64| format!("https://shop.example/products/{i:07}");

    // 1. The listing proxy: COPY of the URLs into pages.
    let listing = Uuid::now_v7();
    insert_run(&mut conn, listing, -7200, "manual").await?;
    checkpoint(&mut conn).await;
    let started = Instant::now();
    let copied = copy_urls(&mut conn, "pages", listing, n as usize, |i| url(i as i64)).await?;
    let copy_s = started.elapsed().as_secs_f64();
    ensure!(copied == n as u64, "COPY stored {copied} rows, not {n}");
    println!(
        "FIGURE listing proxy: COPY of {} URLs into pages {copy_s:.2} s",
        thousands(n)
    );

    // 2. The two runs.
    let (previous, current) = (Uuid::now_v7(), Uuid::now_v7());
    insert_run(&mut conn, previous, -3600, "cron").await?;
    insert_run(&mut conn, current, 0, "cron").await?;
    let started = Instant::now();
    sqlx::query(&format!(
        "insert into pages (run_id, url, status, attempt, reported_attempt, result, finished_at)
         select $1, 'https://shop.example/products/' || lpad(i::text, 7, '0'), 'succeeded', 1, 1,
             {RESULT}, now()
         from generate_series(0, $2 - 1) i, (values (false)) v(changed)"
    ))
    .bind(previous)
    .bind(n)
    .execute(&mut conn)
    .await?;
    // Listed now: all but every 200th, then 0.5 % new ones.
    sqlx::query(&format!(
        "insert into pages (run_id, url, status, attempt, reported_attempt, result, error, finished_at)
         select $1, 'https://shop.example/products/' || lpad(i::text, 7, '0'),
             case when i % 1000 = 7 then 'failed' when i % 1000 = 9 then 'timed_out'
                 else 'succeeded' end,
             1, 1,
             case when i % 1000 in (7, 9) then null else {RESULT} end,
             case when i % 1000 = 7 then jsonb_build_object('kind', 'http_status',
                     'message', 'https://shop.example/products/' || i || ' answered HTTP 404 Not Found',
                     'retryable', false)
                 when i % 1000 = 9 then jsonb_build_object('kind', 'deadline',
                     'message', 'no report before its deadline', 'retryable', false) end,
             now()
         from generate_series(0, $2 + $2 / 200 - 1) i,
             lateral (select i % 100 = 1 as changed) v
         where i >= $2 or i % 200 <> 0"
    ))
    .bind(current)
    .bind(n)
    .execute(&mut conn)
    .await?;
    let (total,): (i64,) = sqlx::query_as("select count(*) from pages where run_id = $1")
        .bind(current)
        .fetch_one(&mut conn)
        .await?;
    println!(
        "written: previous run {} pages, current run {} pages in {:.1} s",
        thousands(n),
        thousands(total),
        started.elapsed().as_secs_f64()
    );
    if !args.no_analyze {
        conn.execute("analyze pages").await?;
    }
    checkpoint(&mut conn).await;

    // Expected counts, from the same rules as the statement's.
    let listed_old = (0..n).filter(|i| i % 200 != 0);
    let (mut changed, mut gone, mut unknown, mut unchanged) = (0i64, n / 200, 0i64, 0i64);
    for i in listed_old {
        match i % 1000 {
            7 => gone += 1,
            9 => unknown += 1,
            _ if i % 100 == 1 => changed += 1,
            _ => unchanged += 1,
        }
    }
    // New URLs are new unless they failed (then not comparable).
    let mut new = 0i64;
    for i in n..n + n / 200 {
        match i % 1000 {
            7 | 9 => unknown += 1,
            _ => new += 1,
        }
    }

    if args.explain {
        let plan: Vec<(String,)> = sqlx::query_as(&format!(
            "explain (analyze, buffers) {}",
            fanfare::ledger::compare_statement()
        ))
        .bind(current)
        .bind(previous)
        .bind(false)
        .fetch_all(&mut conn)
        .await?;
        // explain analyze ran the statement: undo it.
        conn.execute("delete from page_changes").await?;
        for (line,) in plan {
            println!("  {line}");
        }
    }

    // 3. The comparisons.
    let mut times = Vec::new();
    for round in 0..=args.repeat {
        let by_content = round == args.repeat;
        let mut tx = conn.begin().await?;
        let started = Instant::now();
        let counts = fanfare::ledger::compare_runs(&mut tx, current, previous, by_content).await?;
        let seconds = started.elapsed().as_secs_f64();
        let (stored,): (i64,) =
            sqlx::query_as("select count(*) from page_changes where run_id = $1")
                .bind(current)
                .fetch_one(&mut *tx)
                .await?;
        ensure!(
            (counts.new, counts.changed, counts.unchanged, counts.gone, counts.unknown)
                == (new, changed, unchanged, gone, unknown),
            "counts {counts:?}, expected new {new}, changed {changed}, unchanged {unchanged}, gone {gone}, unknown {unknown}"
        );
        ensure!(
            stored == new + changed + gone,
            "{stored} rows in page_changes"
        );
        println!(
            "FIGURE comparison {} by {}: {seconds:.2} s ({:.2} × the COPY); new {}, changed {}, unchanged {}, gone {}, unknown {}; {} rows in page_changes",
            round + 1,
            if by_content { "content" } else { "fields" },
            seconds / copy_s,
            thousands(counts.new),
            thousands(counts.changed),
            thousands(counts.unchanged),
            thousands(counts.gone),
            thousands(counts.unknown),
            thousands(stored),
        );
        tx.rollback().await?;
        if !by_content {
            times.push(seconds);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "FIGURE median comparison by fields {median:.2} s for {} + {} pages: {:.2} × the COPY of {} URLs ({copy_s:.2} s)",
        thousands(n),
        thousands(total),
        median / copy_s,
        thousands(n),
    );
    Ok(())
}
