//! The cost of the per-host claim: a 100,000-page run spread over 1,000
//! hosts and over 1 host, next to the claim before per-host limits.
//!
//! Each scenario, on a fresh migrated database: one run of `--pages`
//! pages (`http://h<k>.example/p/<i>`) is listed through
//! `ledger::insert_pages` with the scenario's per-host limit, then drained
//! by a loop that claims (`ledger::claim_pages`: the schedule's
//! `max_in_flight` 1,000, batches of 2,000, as the dispatcher does) and
//! marks every claimed page succeeded (one statement, counters included),
//! like reports arriving all at once, until no page is left. Each claim is
//! timed (its transaction, advisory lock included). "today's" runs the
//! same loop with the claim statement from before per-host limits (a
//! per-schedule advisory lock, a count of the schedule's in-flight pages,
//! `for update skip locked` over the run's pending pages in id order).
//!
//! Printed per scenario: claims, pages claimed per claim, the claims'
//! total time, µs per claimed page, and p50/p99 ms per claim.
//!
//! ```sh
//! cargo bench --bench claim                    # 100,000 pages
//! cargo bench --bench claim -- --pages 20000   # quicker
//! cargo bench --bench claim -- --only "1 host"  # the scenarios whose name has this
//! ```
//!
//! Needs a Postgres it may create databases on (`DATABASE_URL`); drops them.

use std::time::{Duration, Instant};

use chrono::Utc;
use fanfare::ledger::{self, HostPolicy, RunStatus, Trigger};
use fanfare_testkit::bench::quantile;
use fanfare_testkit::TestDatabase;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Acquire, PgPool};
use uuid::Uuid;

const SCHEDULE: &str = "bench";
const MAX_IN_FLIGHT: i64 = 1_000;
const BATCH: i64 = 2_000;

/// The claim before per-host limits, as it was.
async fn old_claim(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("select pg_advisory_xact_lock(hashtextextended('fanfare.claim:' || $1, 0))")
        .bind(SCHEDULE)
        .execute(&mut *tx)
        .await?;
    let runs: Vec<Uuid> = sqlx::query_scalar(
        "select id from runs where schedule = $1 and status <> 'finished' order by created_at",
    )
    .bind(SCHEDULE)
    .fetch_all(&mut *tx)
    .await?;
    let in_flight: i64 = sqlx::query_scalar(
        "select count(*) from pages where run_id = any($1) and status = 'dispatched'",
    )
    .bind(&runs)
    .fetch_one(&mut *tx)
    .await?;
    let room = (MAX_IN_FLIGHT - in_flight).min(BATCH);
    if room <= 0 {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = sqlx::query_scalar(
        "with c as (
             select id from pages
             where run_id = any($1) and status = 'pending'
                 and (not_before is null or not_before <= now())
             order by id limit $2 for update skip locked)
         update pages p set status = 'dispatched', attempt = p.attempt + 1, dispatched_at = now(),
             deadline = now() + interval '5 minutes', not_before = null, updated_at = now()
         from c where p.id = c.id
         returning p.id",
    )
    .bind(&runs)
    .bind(room)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ids)
}

async fn new_claim(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let claim = ledger::claim_pages(
        pool,
        SCHEDULE,
        MAX_IN_FLIGHT,
        BATCH,
        Duration::from_secs(300),
    )
    .await?;
    Ok(claim.pages.iter().map(|p| p.id).collect())
}

/// Every claimed page reported at once.
async fn report(pool: &PgPool, run: Uuid, ids: &[i64]) {
    sqlx::query(
        "with done as (update pages set status = 'succeeded', finished_at = now()
                       where id = any($2) returning 1),
              n as (select count(*) as n from done)
         update runs set open_pages = open_pages - n.n, succeeded_pages = succeeded_pages + n.n
         from n where id = $1",
    )
    .bind(run)
    .bind(ids)
    .execute(pool)
    .await
    .expect("report");
}

struct Figures {
    claims: usize,
    pages: usize,
    total: Duration,
    per_claim_ms: Vec<f64>,
}

async fn scenario(pages: usize, hosts: usize, per_host: u32, old: bool) -> Figures {
    let db = TestDatabase::create().await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(db.url())
        .await
        .expect("connect");
    ledger::migrate(&pool).await.expect("migrate");
    let run = ledger::create_run(&pool, SCHEDULE, Utc::now(), Trigger::Manual)
        .await
        .expect("create run")
        .expect("a new run");
    let urls: Vec<String> = (0..pages)
        .map(|i| format!("http://h{}.example/p/{i}", i % hosts))
        .collect();
    for chunk in urls.chunks(ledger::INSERT_BATCH) {
        let policies: Vec<HostPolicy> = ledger::host_policies(chunk, per_host, Duration::ZERO);
        ledger::insert_pages(&pool, &ledger::Lease::first(run), chunk, &policies)
            .await
            .expect("insert")
            .expect("listing");
    }
    sqlx::query("update runs set status = $2, listed_at = now() where id = $1")
        .bind(run)
        .bind(RunStatus::Running)
        .execute(&pool)
        .await
        .expect("listed");
    sqlx::query("vacuum analyze pages")
        .execute(&pool)
        .await
        .expect("analyze");
    let mut figures = Figures {
        claims: 0,
        pages: 0,
        total: Duration::ZERO,
        per_claim_ms: Vec::new(),
    };
    loop {
        let started = Instant::now();
        let ids = if old {
            old_claim(&pool).await
        } else {
            new_claim(&pool).await
        }
        .expect("claim");
        let took = started.elapsed();
        if ids.is_empty() {
            break;
        }
        figures.claims += 1;
        figures.pages += ids.len();
        figures.total += took;
        figures.per_claim_ms.push(took.as_secs_f64() * 1000.0);
        report(&pool, run, &ids).await;
        if figures.claims % 1000 == 0 {
            let last = &figures.per_claim_ms[figures.claims - 1000..];
            println!(
                "  {} claims, {} pages: the last 1,000 claims {:.2} ms each",
                figures.claims,
                figures.pages,
                last.iter().sum::<f64>() / 1000.0
            );
        }
    }
    assert_eq!(figures.pages, pages, "every page is claimed once");
    pool.close().await;
    if std::env::var_os("FANFARE_BENCH_KEEP_DB").is_some() {
        println!("kept database {}", db.url());
        std::mem::forget(db);
    } else {
        drop(db);
    }
    figures
}

#[derive(Debug, serde::Deserialize)]
struct Args {
    pages: usize,
    only: Option<String>,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
fanfare: the cost of claiming pages, by the old and the per-host claim

  --pages N             pages of each scenario's run [default: 100000]
  --only TEXT           only the scenarios whose name holds this text
";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args { pages, only } = fanfare_testkit::bench::start(USAGE)?;
    println!(
        "claim cost: {pages} pages, max_in_flight {MAX_IN_FLIGHT}, batches of {BATCH}, every claimed page reported before the next claim (commit {})",
        fanfare_testkit::bench::git_commit()
    );
    let scenarios: [(&str, usize, u32, bool); 5] = [
        ("today's claim, 1 host", 1, 0, true),
        ("today's claim, 1,000 hosts", 1_000, 0, true),
        (
            "per-host claim, 1,000 hosts, per_host_in_flight 8",
            1_000,
            8,
            false,
        ),
        ("per-host claim, 1 host, per_host_in_flight 8", 1, 8, false),
        (
            "per-host claim, 1 host, no per-host limit",
            1,
            i32::MAX as u32,
            false,
        ),
    ];
    for (name, hosts, per_host, old) in scenarios {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let f = scenario(pages, hosts, per_host.max(1), old).await;
        println!(
            "FIGURE {name}: {} claims, {:.0} pages/claim, {:.2} s claiming, {:.1} us/page, p50 {:.2} ms, p99 {:.2} ms per claim",
            f.claims,
            f.pages as f64 / f.claims.max(1) as f64,
            f.total.as_secs_f64(),
            f.total.as_secs_f64() * 1e6 / f.pages.max(1) as f64,
            quantile(&f.per_claim_ms, 0.5),
            quantile(&f.per_claim_ms, 0.99),
        );
    }
    Ok(())
}
