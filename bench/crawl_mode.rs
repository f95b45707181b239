//! Crawl-mode benchmark: does a run that grows by following links record
//! its reports as fast as the same pages given as a list?
//!
//! A loopback site of `--pages` pages (default 20,000) linked as a tree of
//! fanout 8 (`fanfare_testkit::LinkSite`: 5 links deep for 20,000; each
//! page also links to the home page and its parent) is crawled by the
//! real [`fanfare::Application`] with the in-process crawler, twice in one
//! process:
//!
//! - **list**: a schedule listing every page's URL (`pages = { urls = [...] }`);
//! - **crawl**: a schedule crawling from the home page (`pages = { crawl =
//!   ... }`, `max_depth` deep enough for the whole tree).
//!
//! Each run is checked: every page exactly once (in the ledger and at the
//! site), succeeded, one notification to a loopback webhook receiver. It
//! prints `FIGURE` lines: pages/s of each run (trigger to finished), the
//! crawl/list ratio (the target is at least 0.8), CPU-seconds per 1,000
//! pages of this process (daemon, crawler and site: they share it) and of
//! the Postgres backends serving the bench's database, from `/proc`; the
//! steady rate (pages that finished between the run's 10% and 90% mark,
//! over that time: the ramp-up of a crawl, whose tree's depth limits what
//! is in flight at first, is what the whole-run rate has besides), peak
//! RSS (`VmHWM`, target under 256 MB) and the load average.
//!
//! `--auto-explain-ms N` loads Postgres's `auto_explain` for the bench's
//! database: every statement slower than N ms is logged with its plan and
//! the time of each step (`EXPLAIN ANALYZE`) to the server's log. It slows
//! the statements it times; figures of such a run are not figures.
//!
//! ```sh
//! cargo bench --bench crawl_mode                      # 20,000 pages
//! cargo bench --bench crawl_mode -- --pages 2000      # smoke run
//! cargo bench --bench crawl_mode -- --auto-explain-ms 20   # plans, to the server log
//! ```
//!
//! It needs a Postgres it may create a database on (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Logs are off unless
//! `RUST_LOG` is set.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use fanfare_testkit as common;

use common::bench::{load_average, print_machine, TimedRun};
use common::{LinkSite, LinkSiteSpec, Receiver};

const FANOUT: usize = 8;

#[derive(Debug, serde::Deserialize)]
struct Args {
    pages: usize,
    max_in_flight: usize,
    timeout_secs: u64,
    auto_explain_ms: Option<u64>,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
fanfare: a run that follows links against the same pages listed

  --pages N             pages of the site [default: 20000]
  --max-in-flight N     the schedules' max_in_flight [default: 1000]
  --timeout-secs N      give up on a run after this many seconds [default: 900]
  --auto-explain-ms N   log the plan of each statement slower than N ms (Postgres's
                        auto_explain, with timings) to the server's log
";

/// What one run measured.
struct Measured {
    pages: i64,
    seconds: f64,
    cpu_seconds: f64,
    /// The Postgres backends' CPU seconds (`None`: not on this machine).
    pg_cpu_seconds: Option<f64>,
    /// Pages per second between the run's 10% and 90% mark.
    steady_rate: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.pages as f64 / self.seconds
    }

    fn per_thousand(&self, cpu_seconds: f64) -> f64 {
        cpu_seconds * 1000.0 / self.pages as f64
    }
}

fn main() -> anyhow::Result<()> {
    let args: Args = common::bench::start(USAGE)?;
    ensure!(args.pages > 1, "--pages must be at least 2");
    print_machine();
    // The site and the webhook receivers on a thread and runtime of their
    // own, so that the application's runtime serves only the application.
    let (tx, rx) = std::sync::mpsc::channel();
    let pages = args.pages;
    common::bench::on_thread("site", move || async move {
        let list = LinkSite::start(LinkSiteSpec::tree(pages, FANOUT)).await;
        let crawl = LinkSite::start(LinkSiteSpec::tree(pages, FANOUT)).await;
        let receiver = Arc::new(Receiver::accepting().await);
        if tx.send((list, crawl, receiver)).is_ok() {
            std::future::pending::<()>().await;
        }
    })?;
    let (list_site, crawl_site, receiver) = rx.recv().context("the sites did not start")?;
    let depth = list_site.depth(args.pages - 1);
    println!(
        "crawl_mode: {} pages linked {depth} deep (fanout {FANOUT}); max_in_flight {}",
        args.pages, args.max_in_flight
    );

    let app_rt = common::bench::app_runtime(None).build()?;
    let result = app_rt.block_on(measure(&args, &list_site, &crawl_site, &receiver, depth));
    app_rt.shutdown_timeout(Duration::from_secs(10));
    result
}

async fn measure(
    args: &Args,
    list_site: &LinkSite,
    crawl_site: &LinkSite,
    receiver: &Receiver,
    depth: u32,
) -> anyhow::Result<()> {
    let db = common::fresh_database().await;
    // One connection of the bench's own, to find the backends serving the
    // bench's database.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(db.url())
        .await
        .context("connect to the bench's database")?;
    if let Some(ms) = args.auto_explain_ms {
        for setting in [
            "session_preload_libraries = 'auto_explain'".to_string(),
            format!("auto_explain.log_min_duration = {ms}"),
            "auto_explain.log_analyze = on".to_string(),
            "auto_explain.log_nested_statements = on".to_string(),
        ] {
            sqlx::query(&format!(r#"alter database "{}" set {setting}"#, db.name()))
                .execute(&pool)
                .await
                .context("set up auto_explain")?;
        }
        println!("crawl_mode: statements over {ms} ms are logged with their plans to the server's log; the figures are slowed by it");
    }
    let list = common::schedule("list")
        .urls((0..args.pages).map(|i| list_site.url(&format!("/n/{i}"))))
        .extract(r#"{ price = ".price" }"#)
        .key("max_in_flight", args.max_in_flight)
        .key("max_attempts", 1)
        .webhook(&receiver.url);
    let crawl = common::crawl_schedule_block(
        "crawl",
        &crawl_site.home(),
        &format!("max_depth = {depth}"),
        &format!("max_in_flight = {}\nmax_attempts = 1", args.max_in_flight),
        &common::webhook_block(&receiver.url),
    );
    let settings = common::bench::settings(&db, 10, &format!("{list}{crawl}"))?;
    let (address, app) = common::bench::start_app(settings, None).await?;
    let client = reqwest::Client::new();

    let database = (&pool, db.name());
    let list = run(
        args, &client, &address, "list", list_site, receiver, database,
    )
    .await?;
    let crawl = run(
        args, &client, &address, "crawl", crawl_site, receiver, database,
    )
    .await?;
    let hwm_mb = common::bench::status_field(None, "VmHWM:").unwrap_or(0) / 1024;
    for (name, m) in [("list", &list), ("crawl", &crawl)] {
        println!(
            "FIGURE crawl_mode {name}: {} pages in {:.1} s, {:.0} pages/s ({:.0} pages/s between 10% and 90%), CPU-s per 1,000 pages: {:.2} this process, {} Postgres",
            m.pages,
            m.seconds,
            m.rate(),
            m.steady_rate,
            m.per_thousand(m.cpu_seconds),
            m.pg_cpu_seconds
                .map_or("n/a".into(), |s| format!("{:.2}", m.per_thousand(s)))
        );
    }
    println!(
        "FIGURE crawl_mode ratio: crawl/list {:.2} (target >= 0.8), between 10% and 90% {:.2}; peak RSS (VmHWM, daemon + crawler + site) {hwm_mb} MB (target < 256 MB); load average {}",
        crawl.rate() / list.rate(),
        crawl.steady_rate / list.steady_rate,
        load_average()
    );
    app.stop().await;
    pool.close().await;
    drop(db);
    Ok(())
}

/// Triggers `schedule`, waits for its run, checks it and returns its figures.
async fn run(
    args: &Args,
    client: &reqwest::Client,
    address: &str,
    schedule: &str,
    site: &LinkSite,
    receiver: &Receiver,
    (pool, database): (&sqlx::PgPool, &str),
) -> anyhow::Result<Measured> {
    let TimedRun {
        run,
        view: shown,
        seconds,
        cpu_seconds,
        pg_cpu_seconds,
    } = common::bench::timed_run(
        client,
        address,
        schedule,
        Duration::from_secs(args.timeout_secs),
        (pool, database),
    )
    .await?;
    // The 10% and 90% marks of the pages' finishing times.
    let (from, to): (Option<f64>, Option<f64>) = sqlx::query_as(
        "select percentile_disc(0.1) within group (order by extract(epoch from finished_at))::float8,
             percentile_disc(0.9) within group (order by extract(epoch from finished_at))::float8
         from pages where run_id = $1",
    )
    .bind(run)
    .fetch_one(pool)
    .await
    .context("read the pages' finishing times")?;
    let steady_rate = match (from, to) {
        (Some(from), Some(to)) if to > from => 0.8 * args.pages as f64 / (to - from),
        _ => f64::NAN,
    };
    let pages = shown["pages"]["total"].as_i64().unwrap_or(0);
    ensure!(
        pages == args.pages as i64 && shown["pages"]["succeeded"] == pages,
        "{schedule}: the run has {pages} pages, not {}: {shown}",
        args.pages
    );
    let fetched = site.hits().keys().filter(|p| p.starts_with("/n/")).count();
    ensure!(
        fetched == args.pages && site.repeated().is_empty(),
        "{schedule}: the site saw {fetched} pages, {} of them more than once",
        site.repeated().len()
    );
    let notified = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let hits = receiver.hits_for(run);
            if hits.iter().any(|h| h.accepted()) {
                return hits;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .context("no notification")?;
    ensure!(
        common::by_webhook_id(&notified).len() == 1,
        "{schedule}: more than one notification"
    );
    if schedule == "crawl" {
        println!("crawl_mode crawl discovery: {}", shown["discovery"]);
    }
    Ok(Measured {
        pages,
        seconds,
        cpu_seconds,
        pg_cpu_seconds,
        steady_rate,
    })
}
