//! Retention benchmark: what does deleting a large run cost the reports
//! that are recorded meanwhile, how long does it take, and does the table
//! give its space back to the next listing?
//!
//! On a fresh database:
//!
//! 1. **Set-up**: a finished run of `--pages` pages (default 200,000; the
//!    issue's figure is 1,000,000), finished 100 days ago, is written with
//!    SQL (the rows a listing and its reports write: URL, status, result),
//!    with a newer one-page run of its schedule (the run change detection
//!    keeps). The real application, in-process, fans out a run of
//!    `--report-pages` pages to a recording stand-in for Lambda.
//! 2. **Without pruning**: `--clients` clients (default 32), each with its
//!    own keep-alive client, POST a valid report for `--baseline-reports`
//!    of those pages. Figure: acknowledgement p50/p99/max.
//! 3. **With pruning**: a pruner pass (`retention::prune_once`, its own
//!    pool of 2 connections, `--batch-rows` rows per transaction) deletes
//!    the old run while the clients go on reporting further pages until it
//!    is done. Figures: the same latencies, the prune's time and pages/s.
//! 4. **Space**: `pg_total_relation_size('pages')` before the prune, right
//!    after it, once autovacuum has passed over `pages` (up to
//!    `--vacuum-wait` seconds; on a server with autovacuum off, after a
//!    plain `VACUUM pages`, the same work), and after the same number of
//!    pages is written again into a new run (space reused when it does not
//!    grow).
//! 5. **Prune alone**: that new run is pruned with no load: time, and
//!    Postgres CPU seconds per 1,000 pages (from `/proc`, the backends of
//!    the bench database).
//!
//! It prints `FIGURE` lines and asserts nothing.
//!
//! ```sh
//! cargo bench --bench prune                               # 200,000 pages
//! cargo bench --bench prune -- --pages 1000000            # the issue's figure
//! ```
//!
//! It needs a Postgres it may create databases on (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), and drops its database
//! at the end (unless `--keep-database`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use fanfare_crawler::contract::CrawlRequest;
use fanfare_testkit as common;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use common::bench::{
    dispatched, duration_quantile, load_average, millis, postgres_cpu, postgres_cpu_since,
    print_machine, process_cpu_seconds, reproduce, run_app, runtimes, serve_page_list, settings,
    thousands, with_bench_database,
};

const USAGE: &str = "\
Retention: report latency while a large run is pruned, prune time, space reused

  --pages N             pages of the run pruned [default: 200000]
  --report-pages N      pages of the run the clients report on [default: 100000]
  --baseline-reports N  reports sent before the prune starts [default: 20000]
  --clients N           concurrent reporting clients [default: 32]
  --batch-rows N        [retention] batch_rows: rows deleted per transaction [default: 5000]
  --vacuum-wait N       seconds to wait for autovacuum to pass over pages [default: 180]
  --keep-database       keep the bench database
";

#[derive(Debug, serde::Deserialize)]
struct Args {
    pages: i64,
    report_pages: usize,
    baseline_reports: usize,
    clients: usize,
    batch_rows: u32,
    vacuum_wait: u64,
    keep_database: bool,
}

fn main() -> anyhow::Result<()> {
    let args: Args = common::bench::start(USAGE)?;
    println!("{}", reproduce("prune", USAGE));
    print_machine();
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    setup.block_on(with_bench_database(args.keep_database, |url| async move {
        std::thread::spawn(move || bench(&args, &url))
            .join()
            .map_err(|_| anyhow::anyhow!("the benchmark panicked"))?
    }))
}

/// The pages of a finished run `run` of schedule `old`, written as a
/// listing and its reports write them: `n` succeeded pages with a result.
const WRITE_PAGES: &str = "insert into pages (run_id, url, status, attempt, reported_attempt, result, finished_at)
    select $1, 'https://shop.example.com/products/' || i, 'succeeded', 1, 1,
        jsonb_build_object('http_status', 200, 'title', 'Product ' || i,
            'fields', jsonb_build_object('price', (i % 97 + 1) || '.99', 'name', 'Product ' || i),
            'bytes', 18211, 'content_sha256', md5(i::text) || md5((i + 1)::text), 'fetch_ms', i % 500),
        now()
    from generate_series(1, $2) as i";

/// A finished run of schedule `old` with `pages` pages, created and
/// finished `days_ago` days ago.
async fn finished_run(pool: &PgPool, pages: i64, days_ago: f64) -> anyhow::Result<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into runs (id, schedule, scheduled_for, trigger, status, outcome, total_pages,
             open_pages, succeeded_pages, listed_at, finished_at, created_at)
         values ($1, 'old', now() - make_interval(days => $3::int), 'manual', 'finished', 'succeeded',
             $2, 0, $2, now() - make_interval(days => $3::int), now() - make_interval(days => $3::int),
             now() - make_interval(days => $3::int))",
    )
    .bind(id)
    .bind(pages)
    .bind(days_ago as i32)
    .execute(pool)
    .await?;
    sqlx::query(WRITE_PAGES)
        .bind(id)
        .bind(pages)
        .execute(pool)
        .await
        .context("writing the run's pages")?;
    Ok(id)
}

async fn pages_size(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("select pg_total_relation_size('pages')")
        .fetch_one(pool)
        .await?)
}

fn mb(bytes: i64) -> String {
    format!("{:.1} MB", bytes as f64 / 1024.0 / 1024.0)
}

/// Acknowledgement latencies of reports sent by `clients` clients, each
/// taking the next request from `requests` (from `next`), until `until`
/// (or the requests run out, or `limit` were sent in all).
async fn report(
    requests: Arc<Vec<CrawlRequest>>,
    next: Arc<AtomicUsize>,
    limit: usize,
    clients: usize,
    until: Option<Arc<AtomicBool>>,
) -> anyhow::Result<Vec<Duration>> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (requests, next, until) = (requests.clone(), next.clone(), until.clone());
        tasks.spawn(async move {
            let client = reqwest::Client::new();
            let mut latencies = Vec::new();
            loop {
                if until.as_ref().is_some_and(|u| u.load(Ordering::SeqCst)) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= limit.min(requests.len()) {
                    break;
                }
                let r = &requests[i];
                let sent = Instant::now();
                let resp = client
                    .post(&r.callback_url)
                    .bearer_auth(&r.callback_token)
                    .json(&common::succeeded(r))
                    .send()
                    .await?;
                let status = resp.status();
                let _ = resp.bytes().await?;
                latencies.push(sent.elapsed());
                ensure!(status == 200, "page {}: answered {status}", r.page_id);
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    all.sort();
    Ok(all)
}

fn latency_line(what: &str, latencies: &[Duration], seconds: f64) -> String {
    format!(
        "FIGURE prune {what}: {} reports in {seconds:.1} s ({:.0}/s), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        thousands(latencies.len()),
        latencies.len() as f64 / seconds.max(1e-9),
        millis(duration_quantile(latencies, 0.5)),
        millis(duration_quantile(latencies, 0.99)),
        millis(latencies.last().copied()),
    )
}

fn bench(args: &Args, url: &str) -> anyhow::Result<()> {
    let database = url.rsplit('/').next().unwrap_or_default().to_string();
    let runtimes = runtimes(None)?;
    // The daemon's own pruner stays out of the way: the bench runs the pass.
    let urls: Vec<String> = (0..args.report_pages)
        .map(|i| format!("http://127.0.0.1:9/p/{i}"))
        .collect();
    let list = runtimes.1.block_on(serve_page_list(urls))?;
    let rest = format!(
        "[retention]\nprune_every = \"24h\"\nbatch_rows = {}\n{}",
        args.batch_rows,
        common::schedule("load")
            .lambda("crawler-fn")
            .pages(&format!("{{ http = \"{list}\" }}"))
            .extract(r#"{ price = ".price" }"#)
            .key("max_in_flight", 1_000_000)
            .key("page_timeout", "\"1h\"")
    );
    let settings = settings(url, 16, &rest)?;
    let prune_settings = settings.clone();
    let url = url.to_string();
    run_app(&runtimes, settings, |address, lambda| async move {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await?;
        let started = Instant::now();
        let old = finished_run(&pool, args.pages, 100.0).await?;
        finished_run(&pool, 1, 99.0).await?;
        sqlx::query("vacuum analyze pages").execute(&pool).await?;
        println!(
            "FIGURE prune setup: run {old} of {} pages written in {:.1} s",
            thousands(args.pages),
            started.elapsed().as_secs_f64()
        );

        let run = common::trigger(
            &reqwest::Client::new(),
            &address,
            common::ADMIN_TOKEN,
            "load",
        )
        .await;
        let requests = dispatched(&lambda, args.report_pages, Duration::from_secs(60)).await?;
        let requests: Arc<Vec<CrawlRequest>> = Arc::new(
            requests
                .into_iter()
                .filter(|r| r.run_id == run.to_string())
                .collect(),
        );
        let next = Arc::new(AtomicUsize::new(0));
        let size_before = pages_size(&pool).await?;

        let t = Instant::now();
        let baseline = report(
            requests.clone(),
            next.clone(),
            args.baseline_reports,
            args.clients,
            None,
        )
        .await?;
        println!(
            "{}",
            latency_line(
                "reports without pruning",
                &baseline,
                t.elapsed().as_secs_f64()
            )
        );

        let done = Arc::new(AtomicBool::new(false));
        let prune_pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await?;
        let (s, d) = (prune_settings.clone(), done.clone());
        let pruner = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let result = rt.block_on(async {
                let t = Instant::now();
                let pruned =
                    fanfare::retention::prune_once(&prune_pool, &s, &CancellationToken::new())
                        .await?;
                Ok::<_, anyhow::Error>((pruned, t.elapsed()))
            });
            d.store(true, Ordering::SeqCst);
            result
        });
        let t = Instant::now();
        let during = report(
            requests.clone(),
            next.clone(),
            usize::MAX,
            args.clients,
            Some(done.clone()),
        )
        .await?;
        let seconds = t.elapsed().as_secs_f64();
        let (pruned, took) = pruner
            .join()
            .map_err(|_| anyhow::anyhow!("the pruner panicked"))??;
        println!(
            "{}",
            latency_line("reports while pruning", &during, seconds)
        );
        if next.load(Ordering::SeqCst) >= requests.len() {
            println!("note: the reports ran out before the prune ended; raise --report-pages");
        }
        ensure!(
            pruned.runs == 1,
            "the pass deleted {pruned:?}, not the one old run"
        );
        println!(
            "FIGURE prune time: {} pages in {:.1} s ({:.0} pages/s), {} rows per transaction",
            thousands(pruned.pages),
            took.as_secs_f64(),
            pruned.pages as f64 / took.as_secs_f64(),
            args.batch_rows
        );
        let size_after = pages_size(&pool).await?;

        // Autovacuum's pass over pages, with the migration's settings; on a
        // server with autovacuum off, a plain VACUUM (the same work, not a
        // rewrite) stands in for it.
        let autovacuum: String = sqlx::query_scalar("show autovacuum")
            .fetch_one(&pool)
            .await?;
        let prune_end = chrono::Utc::now();
        let waited = Instant::now();
        let vacuumed = if autovacuum == "on" {
            let mut vacuumed = false;
            while waited.elapsed() < Duration::from_secs(args.vacuum_wait) {
                let last: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
                    "select last_autovacuum from pg_stat_user_tables where relname = 'pages'",
                )
                .fetch_one(&pool)
                .await?;
                if last.is_some_and(|at| at > prune_end) {
                    vacuumed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if vacuumed {
                "autovacuum passed over pages"
            } else {
                "autovacuum had not passed over pages"
            }
        } else {
            sqlx::query("vacuum pages").execute(&pool).await?;
            "autovacuum is off on this server: a plain VACUUM pages took its place"
        };
        println!(
            "FIGURE prune vacuum: {vacuumed} after {:.1} s",
            waited.elapsed().as_secs_f64()
        );
        let size_vacuumed = pages_size(&pool).await?;

        // Older than the one-page run, so that it is not the run kept.
        finished_run(&pool, args.pages, 101.0).await?;
        let size_again = pages_size(&pool).await?;
        println!(
            "FIGURE prune pages size: before {}, after the prune {}, after vacuum {}, after {} pages again {} ({:+.1}% on before)",
            mb(size_before),
            mb(size_after),
            mb(size_vacuumed),
            thousands(args.pages),
            mb(size_again),
            (size_again - size_before) as f64 * 100.0 / size_before as f64
        );

        // The same pages pruned with no load: its own time and CPU.
        let cpu_before = postgres_cpu(&pool, &database).await;
        let own_before = process_cpu_seconds(std::process::id());
        let t = Instant::now();
        let alone =
            fanfare::retention::prune_once(&pool, &prune_settings, &CancellationToken::new())
                .await?;
        let took = t.elapsed().as_secs_f64();
        let cpu = postgres_cpu_since(&cpu_before, &postgres_cpu(&pool, &database).await);
        let own = process_cpu_seconds(std::process::id())
            .zip(own_before)
            .map(|(a, b)| a - b);
        ensure!(
            alone.runs == 1 && alone.pages as i64 == args.pages,
            "the second pass deleted {alone:?}"
        );
        println!(
            "FIGURE prune alone: {} pages in {took:.1} s ({:.0} pages/s); Postgres CPU {} s per 1,000 pages, this process {} s per 1,000 pages; load average {}",
            thousands(alone.pages),
            alone.pages as f64 / took,
            cpu.map_or("n/a".into(), |c| format!("{:.4}", c * 1000.0 / alone.pages as f64)),
            own.map_or("n/a".into(), |c| format!("{:.4}", c * 1000.0 / alone.pages as f64)),
            load_average()
        );
        Ok(())
    })
}
