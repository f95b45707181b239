//! Results export benchmark: does exporting a run of a million pages keep
//! the daemon's memory flat?
//!
//! A run of `--pages` pages (default 1,000,000; every tenth failed, the rest
//! succeeded with a title and three fields, one of which the schedule does
//! not extract) is written with SQL into a fresh database. The daemon is
//! the release `fanfare serve` binary as a child process, so the RSS
//! measured (`VmRSS` from `/proc/<pid>/status`, sampled every 50 ms) is its
//! own. The export is downloaded in each format, counting bytes and rows,
//! then once more by a client that reads at `--slow-mbps` for
//! `--slow-seconds` and goes away, to show that a slow reader holds the
//! reading back rather than filling memory.
//!
//! It prints `FIGURE` lines: for each download the rows, bytes, seconds,
//! rows/s, and the daemon's RSS before, its peak during, and the growth.
//! Nothing is asserted; the target is a growth under 50 MB.
//!
//! ```sh
//! cargo bench --bench export                      # 1,000,000 pages
//! cargo bench --bench export -- --pages 100000    # a quicker look
//! ```
//!
//! It needs a Postgres it may create databases on (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), and drops its database at
//! the end.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fanfare_testkit::bench::Sampler;
use fanfare_testkit::{config_toml_with, TestDatabase, ADMIN_TOKEN, CALLBACK_SECRET};
use futures::StreamExt;
use sqlx::postgres::PgPoolOptions;

#[derive(Debug, serde::Deserialize)]
struct Args {
    pages: i64,
    slow_mbps: u64,
    slow_seconds: u64,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
Results export: rows/s and the daemon's RSS for a run of a million pages

  --pages N             pages in the run [default: 1000000]
  --slow-mbps N         the slow reader's rate, in MB/s [default: 5]
  --slow-seconds N      how long the slow reader reads before it goes away [default: 10]
";

fn main() -> anyhow::Result<()> {
    let args: Args = fanfare_testkit::bench::start(USAGE)?;
    let runtime = fanfare_testkit::bench::app_runtime(None).build()?;
    runtime.block_on(run(&args))
}

/// The daemon as a child process, stopped (SIGTERM, then SIGKILL) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) with the child's own pid and a valid signal.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Counts the records of a CSV stream: line ends outside quoted fields.
#[derive(Default)]
struct CsvCounter {
    in_quotes: bool,
    lines: u64,
    newlines: u64,
}

impl CsvCounter {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.newlines += 1;
            }
            match b {
                b'"' => self.in_quotes = !self.in_quotes,
                b'\n' if !self.in_quotes => self.lines += 1,
                _ => {}
            }
        }
    }
}

const MB: f64 = 1024.0 * 1024.0;

async fn run(args: &Args) -> anyhow::Result<()> {
    let db = TestDatabase::create().await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(db.url())
        .await?;
    fanfare::ledger::migrate(&pool).await?;

    let started = Instant::now();
    let run_id = uuid::Uuid::now_v7();
    let failed = args.pages / 10;
    sqlx::query(
        "insert into runs (id, schedule, scheduled_for, trigger, status, outcome, total_pages,
             open_pages, succeeded_pages, failed_pages, listed_at, finished_at)
         values ($1, 'export', now(), 'manual', 'finished', 'partial', $2, 0, $3, $4, now(), now())",
    )
    .bind(run_id)
    .bind(args.pages)
    .bind(args.pages - failed)
    .bind(failed)
    .execute(&pool)
    .await?;
    sqlx::query(
        "insert into pages (run_id, url, status, attempt, result, error, finished_at)
         select $1, 'https://shop.example.com/products/' || i,
             case when i % 10 = 0 then 'failed' else 'succeeded' end, 1,
             case when i % 10 <> 0 then jsonb_build_object(
                 'http_status', 200,
                 'title', 'Product ' || i || ' | Demo Shop, \"the\" shop',
                 'fields', jsonb_build_object('price', (i % 97 + 1) || '.99', 'name', 'Product ' || i,
                                              'sku', 'SKU-' || i),
                 'bytes', 18211, 'content_sha256', md5(i::text) || md5((i + 1)::text),
                 'fetch_ms', i % 500) end,
             case when i % 10 = 0 then jsonb_build_object(
                 'kind', 'http_status', 'retryable', false,
                 'message', 'https://shop.example.com/products/' || i || ' answered HTTP 404 Not Found') end,
             now()
         from generate_series(1, $2) as i",
    )
    .bind(run_id)
    .bind(args.pages)
    .execute(&pool)
    .await
    .context("writing the run's pages")?;
    sqlx::query("analyze pages").execute(&pool).await?;
    println!(
        "FIGURE export setup: {} pages written in {:.1} s",
        args.pages,
        started.elapsed().as_secs_f64()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("fanfare-export-bench-{run_id}"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("fanfare.toml");
    std::fs::write(
        &config,
        config_toml_with(
            db.url(),
            port,
            8,
            CALLBACK_SECRET,
            ADMIN_TOKEN,
            &fanfare_testkit::schedule("export")
                .extract(r#"{ price = ".price", name = "h1" }"#)
                .to_string(),
        ),
    )?;
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let child = Command::new(env!("CARGO_BIN_EXE_fanfare"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env("FANFARE_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting fanfare serve")?;
    let pid = child.id();
    let daemon = Daemon(child);
    let address = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    if !fanfare_testkit::wait_ready(&client, &address, Duration::from_secs(30)).await {
        bail!(
            "fanfare serve was not ready in 30 s; its log is in {}",
            dir.display()
        );
    }
    // A request first, so the figures start from a daemon that has served.
    let (status, _) = fanfare_testkit::get(
        &client,
        &address,
        ADMIN_TOKEN,
        &format!("/v1/runs/{run_id}"),
    )
    .await?;
    if status != 200 {
        bail!("GET the run answered {status}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sampler = Sampler::rss(Some(pid))?;

    for format in ["csv", "jsonl"] {
        let before = sampler.reset_peak();
        let started = Instant::now();
        let resp = client
            .get(format!(
                "{address}/v1/runs/{run_id}/results?format={format}"
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("the {format} export answered {}", resp.status());
        }
        let mut body = resp.bytes_stream();
        let (mut bytes, mut csv) = (0u64, CsvCounter::default());
        while let Some(chunk) = body.next().await {
            let chunk = chunk.with_context(|| format!("reading the {format} export"))?;
            bytes += chunk.len() as u64;
            csv.feed(&chunk);
        }
        let secs = started.elapsed().as_secs_f64();
        // CSV: records after the header; JSON Lines: lines (JSON strings
        // hold no raw line end).
        let rows = if format == "csv" {
            csv.lines.saturating_sub(1)
        } else {
            csv.newlines
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let peak = sampler.peak();
        println!(
            "FIGURE export format={format} rows={rows} bytes={bytes} ({:.0} MB) seconds={secs:.1} rows_per_s={:.0} MB_per_s={:.1}",
            bytes as f64 / MB,
            rows as f64 / secs,
            bytes as f64 / MB / secs
        );
        println!(
            "FIGURE export format={format} rss_before_mb={:.1} rss_peak_mb={:.1} rss_growth_mb={:.1}",
            before as f64 / 1024.0,
            peak as f64 / 1024.0,
            (peak.saturating_sub(before)) as f64 / 1024.0
        );
    }

    // A slow reader: the daemon waits for it instead of reading ahead.
    let before = sampler.reset_peak();
    let resp = client
        .get(format!("{address}/v1/runs/{run_id}/results?format=jsonl"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    let mut body = resp.bytes_stream();
    let started = Instant::now();
    let budget = Duration::from_secs(args.slow_seconds);
    let per_second = args.slow_mbps * 1024 * 1024;
    let mut bytes = 0u64;
    while started.elapsed() < budget {
        let Some(chunk) = body.next().await else {
            break;
        };
        bytes += chunk?.len() as u64;
        let due = Duration::from_secs_f64(bytes as f64 / per_second as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    drop(body);
    let peak = sampler.peak();
    println!(
        "FIGURE export slow_reader mbps={} read_mb={:.1} seconds={:.1} rss_before_mb={:.1} rss_peak_mb={:.1} rss_growth_mb={:.1}",
        args.slow_mbps,
        bytes as f64 / MB,
        started.elapsed().as_secs_f64(),
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        (peak.saturating_sub(before)) as f64 / 1024.0
    );
    drop(sampler);
    drop(daemon);
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    drop(db);
    Ok(())
}
