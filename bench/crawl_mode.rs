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
//! pages of this process (daemon, crawler and site: they share it) from
//! `/proc`, peak RSS (`VmHWM`, target under 256 MB) and the load average.
//!
//! ```sh
//! cargo bench --bench crawl_mode                      # 20,000 pages
//! cargo bench --bench crawl_mode -- --pages 2000      # smoke run
//! ```
//!
//! It needs a Postgres it may create a database on (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Logs are off unless
//! `RUST_LOG` is set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use fanfare_testkit as common;

use common::bench::{load_average, print_machine, process_cpu_seconds};
use common::{LinkSite, LinkSiteSpec, Receiver, ADMIN_TOKEN};

const FANOUT: usize = 8;

#[derive(Debug, serde::Deserialize)]
struct Args {
    pages: usize,
    max_in_flight: usize,
    timeout_secs: u64,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
fanfare: a run that follows links against the same pages listed

  --pages N             pages of the site [default: 20000]
  --max-in-flight N     the schedules' max_in_flight [default: 1000]
  --timeout-secs N      give up on a run after this many seconds [default: 900]
";

/// What one run measured.
struct Measured {
    pages: i64,
    seconds: f64,
    cpu_seconds: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.pages as f64 / self.seconds
    }

    fn cpu_per_thousand(&self) -> f64 {
        self.cpu_seconds * 1000.0 / self.pages as f64
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

    let list = run(args, &client, &address, "list", list_site, receiver).await?;
    let crawl = run(args, &client, &address, "crawl", crawl_site, receiver).await?;
    let hwm_mb = common::bench::status_field(None, "VmHWM:").unwrap_or(0) / 1024;
    for (name, m) in [("list", &list), ("crawl", &crawl)] {
        println!(
            "FIGURE crawl_mode {name}: {} pages in {:.1} s, {:.0} pages/s, {:.2} CPU-s per 1,000 pages",
            m.pages,
            m.seconds,
            m.rate(),
            m.cpu_per_thousand()
        );
    }
    println!(
        "FIGURE crawl_mode ratio: crawl/list {:.2} (target >= 0.8); peak RSS (VmHWM, daemon + crawler + site) {hwm_mb} MB (target < 256 MB); load average {}",
        crawl.rate() / list.rate(),
        load_average()
    );
    app.stop().await;
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
) -> anyhow::Result<Measured> {
    let pid = std::process::id();
    let cpu_before = process_cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    let run = common::trigger(client, address, ADMIN_TOKEN, schedule).await;
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let shown = common::bench::finished_by(client, address, run, deadline)
        .await?
        .with_context(|| {
            format!(
                "{schedule}: the run did not finish in {} s",
                args.timeout_secs
            )
        })?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
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
    })
}
