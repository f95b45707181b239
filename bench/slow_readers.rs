//! Slow-reader benchmark: do sixteen slow CSV exports leave the daemon's
//! own work alone: callbacks, cron fires, the API?
//!
//! The real [`fanfare::Application`] runs on a fresh database with its
//! default pools (`database.max_connections` 16, `reader_connections` 4),
//! a recording stand-in for the Lambda API, a schedule `load` of
//! `--pages` (default 60,000) pages from a loopback JSON list, and a
//! schedule `tick` that fires every second (an empty page list, overlap
//! allowed). A run of `--export-pages` (default 100,000) pages is written
//! into the ledger directly for the exports to read.
//!
//! 1. **Baseline**: 32 clients post valid `succeeded` reports for half of
//!    the `load` pages, each report once; per answer its status and
//!    latency.
//! 2. **With slow readers**: `--readers` (default 16) clients each ask for
//!    the big run's CSV export and read it at `--read-kbps` (default 200)
//!    KB/s; one refused (429) waits its `Retry-After` and asks again. A
//!    second later the same 32 clients post the other half.
//!
//! Figures per phase: reports/s, p50/p99/max latency, answers other than
//! 200 (5xx counted apart), the process's CPU-seconds per 1,000 reports
//! (load generator included), and for phase 2 the ratio of its p99 to the
//! baseline's; the exports' answers (200 streaming, 429 refused) and bytes
//! read; the `tick` fires over the whole measurement against the runs
//! they made. It asserts nothing about speed and drops its database.
//!
//! ```sh
//! cargo bench --bench slow_readers
//! cargo bench --bench slow_readers -- --pages 20000 --export-pages 30000
//! ```
//!
//! It needs a Postgres it may create databases on: `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Logs are off unless
//! `RUST_LOG` is set.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use chrono::{SubsecRound, Utc};
use fanfare::ledger::{self, Lease, Trigger};
use fanfare::Settings;
use fanfare_crawler::contract::CrawlRequest;
use tokio_util::sync::CancellationToken;

use fanfare_testkit as common;

use common::bench::{load_average, quantile, self_cpu_seconds};
use common::{RecordingLambda, ADMIN_TOKEN, CALLBACK_SECRET};

const CLIENTS: usize = 32;

#[derive(Debug, serde::Deserialize)]
struct Args {
    pages: usize,
    export_pages: usize,
    readers: usize,
    read_kbps: u64,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
fanfare's callbacks and cron fires while slow clients export results

  --pages N             pages of the `load` run (half reported in each phase) [default: 60000]
  --export-pages N      pages of the run the readers export [default: 100000]
  --readers N           slow export readers [default: 16]
  --read-kbps N         each reader's pace, in KB/s [default: 200]
";

fn main() -> anyhow::Result<()> {
    let args: Args = common::bench::start(USAGE)?;
    ensure!(args.pages >= 2, "--pages must be at least 2");
    let runtimes = common::bench::runtimes(Some(2))?;
    common::bench::print_machine();
    let db = runtimes.0.block_on(common::fresh_database());
    let list = runtimes.1.block_on(serve_list(args.pages))?;
    let schedules = format!(
        "{}{}",
        common::schedule("load")
            .lambda("crawler-fn")
            .pages(&format!(r#"{{ http = "{list}" }}"#))
            .key("max_in_flight", 1000000)
            .text("page_timeout", "15m"),
        common::schedule("tick").lambda("crawler-fn").every_second()
    );
    // The default pools: no database.max_connections.
    let toml = common::config_toml_with(db.url(), 0, 16, CALLBACK_SECRET, ADMIN_TOKEN, &schedules)
        .replace("max_connections = 16\n", "");
    let settings = Settings::from_toml(&toml).context("the benchmark's configuration")?;
    println!(
        "FIGURE pools max_connections={} reader_connections={}",
        settings.database.max_connections, settings.database.reader_connections
    );
    let database = db.url();
    let result = common::bench::run_app(&runtimes, settings, |address, lambda| async move {
        measure(&args, &address, database, &lambda).await
    });
    drop(db);
    result
}

/// Serves the `load` schedule's page list; returns its URL.
async fn serve_list(pages: usize) -> anyhow::Result<String> {
    let urls = (0..pages).map(|i| format!("https://shop.example/p/{i}"));
    Ok(common::bench::serve_page_list(urls).await?)
}

async fn measure(
    args: &Args,
    address: &str,
    database: &str,
    lambda: &RecordingLambda,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let window_start = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(1);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(database)
        .await?;
    let big = ledger::create_run(&pool, "exported", Utc::now(), Trigger::Manual)
        .await?
        .context("a new run")?;
    let pad = "x".repeat(60);
    for chunk in (0..args.export_pages).collect::<Vec<_>>().chunks(20_000) {
        let urls: Vec<String> = chunk
            .iter()
            .map(|i| format!("https://export.example/{pad}/{i}"))
            .collect();
        let hosts = ledger::host_policies(&urls, 8, Duration::ZERO);
        ledger::insert_pages(&pool, &Lease::first(big), &urls, &hosts).await?;
    }
    common::trigger(&http, address, ADMIN_TOKEN, "load").await;
    let mut requests = lambda.wait_for(args.pages).await;
    requests.retain(|r| r.url.starts_with("https://shop.example/p/"));
    let second = requests.split_off(requests.len() / 2);

    let baseline = report_phase(address, requests).await;
    print_phase("baseline", &baseline, None);

    let stop = CancellationToken::new();
    let exports = Arc::new(ExportCounts::default());
    let readers: Vec<_> = (0..args.readers)
        .map(|_| {
            let (stop, exports) = (stop.clone(), exports.clone());
            let url = format!("{address}/v1/runs/{big}/results?format=csv");
            let pace = args.read_kbps * 1000;
            tokio::spawn(slow_reader(url, pace, exports, stop))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = report_phase(address, second).await;
    print_phase("with_slow_readers", &loaded, Some(&baseline));
    stop.cancel();
    for r in readers {
        r.await?;
    }
    println!(
        "FIGURE exports readers={} pace_kbps={} answered_200={} answered_429={} other={} bytes_read={}",
        args.readers,
        args.read_kbps,
        exports.streaming.load(Ordering::SeqCst),
        exports.refused.load(Ordering::SeqCst),
        exports.other.load(Ordering::SeqCst),
        exports.bytes.load(Ordering::SeqCst),
    );

    // Every whole second of the window fired; give the last fire a moment.
    let window_end = Utc::now().trunc_subsecs(0) - chrono::Duration::seconds(1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fired: Vec<chrono::DateTime<Utc>> = sqlx::query_scalar(
        "select scheduled_for from runs where schedule = 'tick' and scheduled_for between $1 and $2",
    )
    .bind(window_start)
    .bind(window_end)
    .fetch_all(&pool)
    .await?;
    let expected = (window_end - window_start).num_seconds() + 1;
    println!(
        "FIGURE cron_fires window_s={expected} runs={} missing={}",
        fired.len(),
        expected - fired.len() as i64
    );
    pool.close().await;
    Ok(())
}

#[derive(Default)]
struct ExportCounts {
    streaming: AtomicUsize,
    refused: AtomicUsize,
    other: AtomicUsize,
    bytes: AtomicU64,
}

/// Asks for the export and reads it at `pace` bytes/s until `stop`; asks
/// again after `Retry-After` when refused, and when the export ends.
async fn slow_reader(url: String, pace: u64, counts: Arc<ExportCounts>, stop: CancellationToken) {
    let http = reqwest::Client::new();
    while !stop.is_cancelled() {
        let response = tokio::select! {
            r = http.get(&url).bearer_auth(ADMIN_TOKEN).send() => r,
            _ = stop.cancelled() => return,
        };
        let mut response = match response {
            Ok(r) => r,
            Err(_) => {
                counts.other.fetch_add(1, Ordering::SeqCst);
                continue;
            }
        };
        match response.status().as_u16() {
            200 => {
                counts.streaming.fetch_add(1, Ordering::SeqCst);
            }
            429 => {
                counts.refused.fetch_add(1, Ordering::SeqCst);
                let wait = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(1);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(wait)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
            _ => {
                counts.other.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        let started = Instant::now();
        let mut read = 0u64;
        loop {
            let chunk = tokio::select! {
                c = response.chunk() => c,
                _ = stop.cancelled() => return,
            };
            let Ok(Some(chunk)) = chunk else { break };
            read += chunk.len() as u64;
            counts.bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            // Hold the pace: no faster than `pace` bytes per second.
            let due = Duration::from_secs_f64(read as f64 / pace as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// What the clients of one phase saw.
struct Phase {
    reports: usize,
    seconds: f64,
    latencies_ms: Vec<f64>,
    not_200: usize,
    server_errors: usize,
    cpu_seconds: f64,
}

/// 32 clients post a `succeeded` report for each of `requests`.
async fn report_phase(address: &str, requests: Vec<CrawlRequest>) -> Phase {
    let reports = requests.len();
    let work = Arc::new(std::sync::Mutex::new(requests));
    let cpu_before = self_cpu_seconds();
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (work, address) = (work.clone(), address.to_string());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let (mut latencies, mut not_200, mut server_errors) = (Vec::new(), 0, 0);
                loop {
                    let Some(r) = work.lock().unwrap().pop() else {
                        return (latencies, not_200, server_errors);
                    };
                    let body = serde_json::to_vec(&common::succeeded(&r)).unwrap_or_default();
                    let at = Instant::now();
                    match common::post_callback(&http, &address, Some(&r.callback_token), body)
                        .await
                    {
                        Ok((200, _)) => latencies.push(at.elapsed().as_secs_f64() * 1e3),
                        Ok((status, _)) => {
                            not_200 += 1;
                            server_errors += usize::from(status >= 500);
                        }
                        Err(_) => not_200 += 1,
                    }
                }
            })
        })
        .collect();
    let mut phase = Phase {
        reports,
        seconds: 0.0,
        latencies_ms: Vec::new(),
        not_200: 0,
        server_errors: 0,
        cpu_seconds: 0.0,
    };
    for c in clients {
        if let Ok((l, n, s)) = c.await {
            phase.latencies_ms.extend(l);
            phase.not_200 += n;
            phase.server_errors += s;
        }
    }
    phase.seconds = started.elapsed().as_secs_f64();
    phase.cpu_seconds = self_cpu_seconds() - cpu_before;
    phase
}

fn print_phase(name: &str, phase: &Phase, baseline: Option<&Phase>) {
    let p99 = quantile(&phase.latencies_ms, 0.99);
    let ratio = baseline
        .map(|b| {
            format!(
                " p99_vs_baseline={:.2}",
                p99 / quantile(&b.latencies_ms, 0.99).max(0.01)
            )
        })
        .unwrap_or_default();
    println!(
        "FIGURE callbacks phase={name} clients={CLIENTS} reports={} per_s={:.0} p50_ms={:.1} p99_ms={p99:.1} max_ms={:.1} not_200={} server_errors_5xx={} cpu_s_per_1000_reports={:.3} load_average={}{ratio}",
        phase.reports,
        phase.reports as f64 / phase.seconds,
        quantile(&phase.latencies_ms, 0.5),
        quantile(&phase.latencies_ms, 1.0),
        phase.not_200,
        phase.server_errors,
        phase.cpu_seconds * 1000.0 / phase.reports.max(1) as f64,
        load_average(),
    );
}
