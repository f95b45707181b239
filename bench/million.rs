//! The 1,000,000-page run: listing time vs COPY, peak and idle RSS.
//!
//! How long does the daemon take to get a page list of a million URLs into
//! the ledger, next to what Postgres itself takes to `COPY` the same URLs
//! into a table of the same shape, and how much memory does the daemon use
//! meanwhile and afterwards?
//!
//! Each measurement, on a fresh database (migrated by the bench):
//!
//! 1. **COPY**: the same URLs, with a run id, are streamed by
//!    `COPY bench_copy (run_id, url) FROM STDIN` (text format, one
//!    transaction) into a fresh table made `LIKE pages INCLUDING ALL`
//!    (same columns, defaults, checks and indexes; `LIKE` copies no
//!    trigger, so not the statement-level check that each page's run
//!    exists). A second `COPY` goes into such a table with a foreign key to
//!    `runs` instead, as `pages` had before migration
//!    `20261130000007_pages_run_check.sql` (`--skip-fk-copy` leaves it
//!    out): what that check per row would cost. A checkpoint precedes each copy and
//!    the listing, so that none of them starts with another's dirty pages to
//!    write. Figures: seconds of each copy.
//! 2. **The daemon**: the real `fanfare serve` (this package's release
//!    binary) runs as a child process, so that its RSS is its own: the
//!    list server and the Lambda stand-in run in this process. It has one
//!    schedule whose page source is a JSON list of `--urls` distinct URLs
//!    (about 35 bytes each) served by a loopback server that generates it
//!    as it sends it, and whose `invoker = "lambda"` goes through the real
//!    AWS SDK to a stand-in for the Lambda API in this process: it answers
//!    every `Invoke` with 202 and, `--crawl-ms` later (default 1,000),
//!    posts a `succeeded` report for the page to the daemon's callback
//!    endpoint, like a crawler. With the schedule's `max_in_flight`
//!    (`--max-in-flight`, default 100, the schedule default) that is about
//!    `max_in_flight / crawl` pages dispatched and recorded per second while
//!    the list is read. After `--idle-seconds` (default 5) of idling at
//!    start, the run is triggered through the API; dispatch goes on for
//!    `--dispatch-seconds` (default 10) after the listing ends, then the
//!    run is cancelled and the daemon idles for `--idle-seconds` again.
//!    Figures: listing time (the run's `listed_at - created_at` in the
//!    ledger: created to `running` with every page in the ledger), the
//!    pages the ledger holds for the run, pages dispatched and reports
//!    recorded by the end of listing, the ratio listing / COPY, and the
//!    daemon's RSS (`VmRSS` of `/proc/<pid>/status`, sampled every 50 ms):
//!    at the end of the first idle period, the peak while listing and
//!    dispatching, `VmHWM` (the kernel's high-water mark), and at the end
//!    of the last idle period.
//!
//! The issue's targets: listing <= 1.5 × COPY, peak RSS < 256 MB, idle RSS
//! < 30 MB. Nothing is asserted: figures are printed as `FIGURE` lines;
//! with `--repeat N` (each on a fresh database) the medians are printed too.
//!
//! ```sh
//! cargo bench --bench million                          # 1,000,000 URLs
//! cargo bench --bench million -- --urls 20000          # smoke run, seconds
//! cargo bench --bench million -- --repeat 3            # medians of three
//! ```
//!
//! It needs a Postgres it may create databases on (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and drops its databases
//! at the end (`--keep-databases` leaves them). The daemon's log goes to a
//! temporary directory, named when the daemon fails; its `RUST_LOG` is
//! `--daemon-log` (default `info,sqlx=warn`, a production level).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use fanfare_crawler::contract::CrawlRequest;
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

use fanfare_testkit as common;

use common::bench::{checkpoint, copy_urls, status_field, thousands, with_bench_database, Sampler};
use common::{succeeded, ADMIN_TOKEN, CALLBACK_SECRET};

#[derive(Debug, serde::Deserialize)]
struct Args {
    urls: usize,
    max_in_flight: usize,
    crawl_ms: u64,
    dispatch_seconds: u64,
    idle_seconds: u64,
    timeout: u64,
    repeat: usize,
    skip_fk_copy: bool,
    daemon_log: String,
    pool: u32,
    keep_databases: bool,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
The 1,000,000-page run: listing time vs COPY, peak and idle RSS

  --urls N              URLs in the page list [default: 1000000]
  --max-in-flight N     the schedule's max_in_flight [default: 100]
  --crawl-ms N          milliseconds the Lambda stand-in \"crawls\" before reporting
                        a page [default: 1000]
  --dispatch-seconds N  seconds dispatch goes on after the listing, before the run
                        is cancelled [default: 10]
  --idle-seconds N      seconds the daemon idles after it is ready and after the
                        run [default: 5]
  --timeout N           seconds the listing may take before the measurement gives
                        up [default: 900]
  --repeat N            measurements, each on a fresh database; with more than one
                        the medians are printed too [default: 1]
  --skip-fk-copy        leave out the COPY into a table with the foreign key to `runs`
  --daemon-log TEXT     the daemon's RUST_LOG [default: info,sqlx=warn]
  --pool N              the daemon's database.max_connections [default: 16]
  --keep-databases      leave the bench databases in place
";

/// The `i`th URL of the list (and of the COPY).
fn url(i: usize) -> String {
    format!("https://shop.example/p/{i:07}")
}

fn main() -> anyhow::Result<()> {
    let args: Args = common::bench::start(USAGE)?;
    ensure!(args.urls > 0, "--urls must be at least 1");
    ensure!(args.repeat > 0, "--repeat must be at least 1");
    ensure!(args.max_in_flight > 0, "--max-in-flight must be at least 1");
    let runtime = common::bench::app_runtime(None).build()?;
    runtime.block_on(bench(&args))
}

/// One measurement's figures.
#[derive(Debug, Clone, Default)]
struct Figures {
    copy_s: f64,
    copy_fk_s: Option<f64>,
    listing_s: f64,
    pages: i64,
    dispatched_while_listing: i64,
    recorded_while_listing: i64,
    rss_idle_start_mb: f64,
    rss_peak_mb: f64,
    vm_hwm_mb: f64,
    rss_idle_end_mb: f64,
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    println!(
        "FIGURE the {}-page run: listing time vs COPY, peak and idle RSS",
        thousands(args.urls)
    );
    let mut all = Vec::new();
    for round in 1..=args.repeat {
        let figures = with_bench_database(args.keep_databases, |db| measure(args, db)).await?;
        print_round(round, &figures);
        all.push(figures);
    }
    if all.len() > 1 {
        let median = |f: &dyn Fn(&Figures) -> f64| {
            let mut v: Vec<f64> = all.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "FIGURE median of {}: listing_s={:.1} copy_s={:.1} ratio={:.2} rss_peak_mb={:.0} rss_idle_end_mb={:.1}",
            all.len(),
            median(&|f| f.listing_s),
            median(&|f| f.copy_s),
            median(&|f| f.listing_s / f.copy_s),
            median(&|f| f.rss_peak_mb),
            median(&|f| f.rss_idle_end_mb),
        );
        if !args.skip_fk_copy {
            println!(
                "FIGURE median of {}: copy_fk_s={:.1} ratio_fk={:.2}",
                all.len(),
                median(&|f| f.copy_fk_s.unwrap_or(f64::NAN)),
                median(&|f| f.listing_s / f.copy_fk_s.unwrap_or(f64::NAN)),
            );
        }
    }
    Ok(())
}

fn print_round(round: usize, f: &Figures) {
    println!(
        "FIGURE round={round} listing_s={:.1} pages={} dispatched_while_listing={} recorded_while_listing={}",
        f.listing_s, f.pages, f.dispatched_while_listing, f.recorded_while_listing
    );
    println!(
        "FIGURE round={round} copy_s={:.1} ratio={:.2} (target <= 1.5)",
        f.copy_s,
        f.listing_s / f.copy_s
    );
    if let Some(fk) = f.copy_fk_s {
        println!(
            "FIGURE round={round} copy_with_fk_s={fk:.1} ratio_fk={:.2}",
            f.listing_s / fk
        );
    }
    println!(
        "FIGURE round={round} rss_idle_start_mb={:.1} rss_peak_mb={:.0} vm_hwm_mb={:.0} rss_idle_end_mb={:.1} (targets: peak < 256, idle < 30)",
        f.rss_idle_start_mb, f.rss_peak_mb, f.vm_hwm_mb, f.rss_idle_end_mb
    );
}

async fn measure(args: &Args, database_url: String) -> anyhow::Result<Figures> {
    let pool = fanfare::ledger::pool(&database_url, 2)?;
    fanfare::ledger::migrate(&pool)
        .await
        .context("migrating the bench database")?;
    pool.close().await;
    let mut conn = PgConnection::connect(&database_url).await?;
    let mut figures = Figures {
        copy_s: copy_baseline(&mut conn, args.urls, false).await?,
        ..Figures::default()
    };
    if !args.skip_fk_copy {
        figures.copy_fk_s = Some(copy_baseline(&mut conn, args.urls, true).await?);
    }
    checkpoint(&mut conn).await;
    run_daemon(args, &database_url, &mut conn, &mut figures).await?;
    Ok(figures)
}

/// Seconds to `COPY` `urls` URLs, with a run id, into a fresh table of
/// `pages`' shape (with its foreign key to `runs` when `with_fk`).
async fn copy_baseline(conn: &mut PgConnection, urls: usize, with_fk: bool) -> anyhow::Result<f64> {
    let table = if with_fk {
        "bench_copy_fk"
    } else {
        "bench_copy"
    };
    conn.execute(format!("create table {table} (like pages including all)").as_str())
        .await?;
    let run_id = Uuid::now_v7();
    if with_fk {
        conn.execute(
            format!(
                "alter table {table} add foreign key (run_id) references runs (id) on delete cascade"
            )
            .as_str(),
        )
        .await?;
        sqlx::query(
            "insert into runs (id, schedule, scheduled_for, trigger) values ($1, 'bench-copy', now(), 'manual')",
        )
        .bind(run_id)
        .execute(&mut *conn)
        .await?;
    }
    checkpoint(conn).await;
    let started = Instant::now();
    let copied = copy_urls(conn, table, run_id, urls, url).await?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(
        copied == urls as u64,
        "COPY stored {copied} rows instead of {urls}"
    );
    conn.execute(format!("drop table {table}").as_str()).await?;
    if with_fk {
        sqlx::query("delete from runs where id = $1")
            .bind(run_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(seconds)
}

/// `fanfare serve` as a child process, killed on drop.
struct Daemon {
    child: Child,
    address: String,
    log: PathBuf,
    dir: PathBuf,
}

impl Daemon {
    fn spawn(args: &Args, config: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("fanfare-bench-million-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("fanfare.toml");
        std::fs::write(&path, config)?;
        let log = dir.join("fanfare.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_fanfare"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", &args.daemon_log)
            .env("FANFARE_LOG_FORMAT", "json")
            // The Lambda stand-in does not check signatures, but the SDK
            // signs every request and needs credentials to do so.
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting fanfare serve")?;
        Ok(Self {
            child,
            address: String::new(),
            log,
            dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, then up to 30 s for a graceful exit.
    async fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                ensure!(
                    status.success(),
                    "the daemon exited with {status}; log in {}",
                    self.log.display()
                );
                let _ = std::fs::remove_dir_all(&self.dir);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "the daemon did not stop within 30 s of SIGTERM; log in {}",
            self.log.display()
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A JSON array of `count` distinct URLs, generated as it is sent.
fn json_list(count: usize) -> Body {
    let item = |i: usize| format!("{}\"{}\"", if i > 0 { "," } else { "" }, url(i));
    common::bench::generated_body("[".into(), count, item, "]".into())
}

/// What the Lambda stand-in does and has done.
struct StandIn {
    http: reqwest::Client,
    crawl: Duration,
    /// Reports are posted while this is set.
    reporting: AtomicBool,
    invokes: AtomicUsize,
    reports_failed: AtomicUsize,
}

/// `POST /2015-03-31/functions/{name}/invocations`: 202, and the page's
/// report `crawl` later.
async fn invoke(stand_in: Arc<StandIn>, body: Bytes) -> impl IntoResponse {
    stand_in.invokes.fetch_add(1, Ordering::Relaxed);
    let request: CrawlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not a crawl request: {e}")),
    };
    tokio::spawn(async move {
        tokio::time::sleep(stand_in.crawl).await;
        if !stand_in.reporting.load(Ordering::Relaxed) {
            return;
        }
        let report = succeeded(&request);
        let sent = stand_in
            .http
            .post(&request.callback_url)
            .bearer_auth(&request.callback_token)
            .json(&report)
            .send()
            .await;
        if !sent.is_ok_and(|r| r.status().is_success()) {
            stand_in.reports_failed.fetch_add(1, Ordering::Relaxed);
        }
    });
    (StatusCode::ACCEPTED, String::new())
}

/// Serves the page list at `/pages.json` and the Lambda stand-in; returns
/// the base URL.
async fn serve(urls: usize, stand_in: Arc<StandIn>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let routes = Router::new()
        .route("/pages.json", get(move || async move { json_list(urls) }))
        .route(
            "/2015-03-31/functions/{name}/invocations",
            post(move |body: Bytes| invoke(stand_in.clone(), body)),
        );
    tokio::spawn(async move { axum::serve(listener, routes).await });
    Ok(base)
}

/// A free loopback port.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn run_daemon(
    args: &Args,
    database_url: &str,
    conn: &mut PgConnection,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let stand_in = Arc::new(StandIn {
        http: http.clone(),
        crawl: Duration::from_millis(args.crawl_ms),
        reporting: AtomicBool::new(true),
        invokes: AtomicUsize::new(0),
        reports_failed: AtomicUsize::new(0),
    });
    let base = serve(args.urls, stand_in.clone()).await?;
    let port = free_port()?;
    let schedule = format!(
        "[lambda]\nregion = \"us-east-1\"\nendpoint_url = \"{base}\"\n{}",
        common::schedule("million")
            .lambda("crawler")
            .pages(&format!(r#"{{ http = "{base}/pages.json" }}"#))
            .key("max_in_flight", args.max_in_flight)
            .key("max_pages", args.urls)
            .text("page_timeout", "15m")
    );
    let config = common::config_toml_with(
        database_url,
        port,
        args.pool,
        CALLBACK_SECRET,
        ADMIN_TOKEN,
        &schedule,
    );
    let mut daemon = Daemon::spawn(args, &config)?;
    daemon.address = format!("http://127.0.0.1:{port}");
    let sampler = Sampler::rss(Some(daemon.pid()))?;
    if !common::wait_ready(&http, &daemon.address, Duration::from_secs(30)).await {
        bail!(
            "the daemon was not ready within 30 s; its log:\n{}",
            daemon.log_tail()
        );
    }
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    figures.rss_idle_start_mb = sampler.last() as f64 / 1024.0;

    sampler.reset_peak();
    let run = common::trigger(&http, &daemon.address, ADMIN_TOKEN, "million").await;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let view = loop {
        let (_, view) = common::get(
            &http,
            &daemon.address,
            ADMIN_TOKEN,
            &format!("/v1/runs/{run}"),
        )
        .await
        .map_err(|e| anyhow!("reading the run: {e}"))?;
        if view["status"] != "listing" {
            break view;
        }
        if Instant::now() > deadline {
            bail!("the run was still listing after {} s", args.timeout);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        view["status"] == "running",
        "the run ended its listing as {} ({}); the daemon's log:\n{}",
        view["status"],
        view["error"],
        daemon.log_tail()
    );
    let (listing_s, pages, dispatched, recorded): (f64, i64, i64, i64) = sqlx::query_as(
        "select extract(epoch from r.listed_at - r.created_at)::float8,
             (select count(*) from pages p where p.run_id = r.id),
             (select count(*) from pages p where p.run_id = r.id and p.dispatched_at <= r.listed_at),
             (select count(*) from pages p where p.run_id = r.id and p.finished_at <= r.listed_at)
         from runs r where r.id = $1",
    )
    .bind(run)
    .fetch_one(&mut *conn)
    .await?;
    figures.listing_s = listing_s;
    figures.pages = pages;
    figures.dispatched_while_listing = dispatched;
    figures.recorded_while_listing = recorded;
    ensure!(
        pages == args.urls as i64,
        "the ledger holds {pages} pages of the run instead of {}",
        args.urls
    );

    tokio::time::sleep(Duration::from_secs(args.dispatch_seconds)).await;
    figures.rss_peak_mb = sampler.peak() as f64 / 1024.0;
    stand_in.reporting.store(false, Ordering::Relaxed);
    let cancelled = http
        .post(format!("{}/v1/runs/{run}/cancel", daemon.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    ensure!(
        cancelled.status().is_success(),
        "cancelling the run answered {}",
        cancelled.status()
    );
    // Reports still in the stand-in's hands land on a finished run.
    tokio::time::sleep(Duration::from_millis(args.crawl_ms)).await;
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    figures.rss_idle_end_mb = sampler.last() as f64 / 1024.0;
    let status = |field: &str| status_field(Some(daemon.pid()), field).unwrap_or(0);
    figures.vm_hwm_mb = status("VmHWM:") as f64 / 1024.0;
    // What the idle RSS is made of: the heap and other anonymous memory, or
    // pages of the binary and libraries (code run once stays mapped).
    println!(
        "FIGURE idle_end rss_anon_mb={:.1} rss_file_mb={:.1} threads={}",
        status("RssAnon:") as f64 / 1024.0,
        status("RssFile:") as f64 / 1024.0,
        status("Threads:")
    );
    println!(
        "FIGURE invokes={} reports_not_accepted={}",
        stand_in.invokes.load(Ordering::Relaxed),
        stand_in.reports_failed.load(Ordering::Relaxed)
    );
    drop(sampler);
    daemon.stop().await
}
