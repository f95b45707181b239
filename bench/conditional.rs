//! Conditional fetches: what a second run of an unchanged site costs.
//!
//! The real [`fanfare::Application`] runs one `invoker = "local"` schedule
//! (`conditional = true`, the default) over a loopback site of `--pages`
//! pages (default 10,000) of about `--filler` bytes each, every page with
//! an `ETag` and a `Last-Modified`, the site answering `304 Not Modified`
//! to a matching conditional GET ([`fanfare_testkit::ValidatorSite`]):
//!
//! 1. run 1 fetches every page in full;
//! 2. run 2, nothing changed: every page is asked for with the validators
//!    run 1 got and answered 304;
//! 3. `--changed` pages (default 100) change; run 3 fetches exactly those.
//!
//! With `--page-ms N` the site takes N ms to produce a whole page (a real
//! site renders it and sends it over a network slower than loopback) and
//! answers a 304 at once; at loopback speed (the default, 0) a page costs
//! the crawl next to nothing but its parse, and the run's wall time is the
//! daemon's own per-page work.
//!
//! Figures (`FIGURE` lines): each run's wall time, body bytes the site sent,
//! 200s and 304s, CPU-seconds per 1,000 pages (this process: daemon,
//! in-process crawler and site; and the Postgres backends of the bench's
//! database); run 2 / run 1 body bytes (target <= 5 %) and wall time
//! (target <= 0.5); run 3's `changed` count (must be exactly `--changed`:
//! checked, the bench fails otherwise). Nothing about time is asserted.
//!
//! ```sh
//! cargo bench --bench conditional                      # 10,000 pages
//! cargo bench --bench conditional -- --pages 1000      # smoke run
//! ```
//!
//! It needs a Postgres it may create a database on (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and drops it at the end.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use fanfare_testkit as common;

use common::bench::{load_average, thousands, TimedRun};
use common::{Served, ValidatorSite, ValidatorSiteSpec, ADMIN_TOKEN};

#[derive(Debug, serde::Deserialize)]
struct Args {
    pages: usize,
    changed: usize,
    filler: usize,
    per_host_in_flight: usize,
    page_ms: u64,
    timeout_secs: u64,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
fanfare: a second run of an unchanged site with conditional fetches

  --pages N               pages on the site [default: 10000]
  --changed N             pages changed before the third run [default: 100]
  --filler N              bytes of filler in each page's body [default: 8192]
  --per-host-in-flight N  the schedule's per_host_in_flight (every page is
                          on one host) [default: 64]
  --page-ms N             milliseconds the site takes to produce a whole page
                          (a 304 is answered at once); 0: loopback speed
                          [default: 0]
  --timeout-secs N        give up on a run after this many seconds [default: 900]
";

/// One run's figures.
struct Measured {
    seconds: f64,
    served: Served,
    cpu_seconds: f64,
    pg_cpu_seconds: Option<f64>,
    view: serde_json::Value,
    run: uuid::Uuid,
}

fn main() -> anyhow::Result<()> {
    let args: Args = common::bench::start(USAGE)?;
    ensure!(args.pages > 0, "--pages must be at least 1");
    ensure!(
        args.changed <= args.pages,
        "--changed must be at most --pages"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let spec = ValidatorSiteSpec {
        filler: args.filler,
        page_delay: Duration::from_millis(args.page_ms),
        ..ValidatorSiteSpec::pages(args.pages)
    };
    // The site on a thread of its own, so its work does not queue behind
    // the application's (its CPU is still this process's).
    common::bench::on_thread("site", move || async move {
        if tx.send(ValidatorSite::start(spec).await).is_ok() {
            std::future::pending::<()>().await;
        }
    })?;
    let site = rx.recv().context("the site did not start")?;
    let runtime = common::bench::app_runtime(None).build()?;
    let result = runtime.block_on(measure(&args, site));
    runtime.shutdown_timeout(Duration::from_secs(10));
    result
}

async fn measure(args: &Args, site: Arc<ValidatorSite>) -> anyhow::Result<()> {
    let db = common::fresh_database().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(db.url())
        .await
        .context("connect to the bench's database")?;
    let schedule = common::schedule("cond")
        .pages(&format!("{{ http = \"{}\" }}", site.list_url()))
        .extract(r#"{ price = ".price" }"#)
        .key("max_in_flight", 1000)
        .key("per_host_in_flight", args.per_host_in_flight)
        .key("max_attempts", 1)
        .to_string();
    let settings = common::bench::settings(db.url(), 10, &schedule)?;
    let (address, app) = common::bench::start_app(settings, None).await?;
    let client = reqwest::Client::new();
    println!(
        "conditional: {} pages of about {} bytes on one loopback host ({} ms to produce a whole page), per_host_in_flight {}, commit {}",
        thousands(args.pages),
        args.filler + 200,
        args.page_ms,
        args.per_host_in_flight,
        common::bench::git_commit()
    );

    let database = (&pool, db.name());
    let first = run(args, &client, &address, &site, database).await?;
    let second = run(args, &client, &address, &site, database).await?;
    for i in (0..args.pages)
        .step_by((args.pages / args.changed.max(1)).max(1))
        .take(args.changed)
    {
        site.change(i);
    }
    let third = run(args, &client, &address, &site, database).await?;

    for (name, m) in [
        ("run 1", &first),
        ("run 2 (unchanged)", &second),
        ("run 3", &third),
    ] {
        println!(
            "FIGURE conditional {name}: {:.2} s, {} body bytes, {} pages sent, {} not modified, fetches {}; CPU-s per 1,000 pages: {:.3} this process, {} Postgres",
            m.seconds,
            thousands(m.served.body_bytes),
            thousands(m.served.full),
            thousands(m.served.not_modified),
            m.view["fetches"],
            m.cpu_seconds * 1000.0 / args.pages as f64,
            m.pg_cpu_seconds
                .map_or("n/a".into(), |s| format!("{:.3}", s * 1000.0 / args.pages as f64)),
        );
    }
    let (status, changes) = common::get(
        &client,
        &address,
        ADMIN_TOKEN,
        &format!("/v1/runs/{}/changes", third.run),
    )
    .await?;
    ensure!(status == 200, "reading run 3's changes: {status} {changes}");
    let changed = changes["changes"]["changed"].as_i64().unwrap_or(-1);
    println!(
        "FIGURE conditional run 2 / run 1: body bytes {:.2} % (target <= 5 %), wall time {:.3} (target <= 0.5); run 3: {changed} changed of {} changed pages; load average {}",
        100.0 * second.served.body_bytes as f64 / first.served.body_bytes.max(1) as f64,
        second.seconds / first.seconds,
        args.changed,
        load_average()
    );
    app.stop().await;
    pool.close().await;
    drop(db);
    ensure!(
        changed == args.changed as i64,
        "run 3 counted {changed} changed pages, not {}: {}",
        args.changed,
        changes["changes"]
    );
    Ok(())
}

/// Triggers `cond`, waits for its run, checks every page succeeded and
/// returns its figures.
async fn run(
    args: &Args,
    client: &reqwest::Client,
    address: &str,
    site: &ValidatorSite,
    (pool, database): (&sqlx::PgPool, &str),
) -> anyhow::Result<Measured> {
    let served_before = site.served();
    let timed = common::bench::timed_run(
        client,
        address,
        "cond",
        Duration::from_secs(args.timeout_secs),
        (pool, database),
    )
    .await?;
    let served = site.served() - served_before;
    let TimedRun {
        run,
        view,
        seconds,
        cpu_seconds,
        pg_cpu_seconds,
    } = timed;
    ensure!(
        view["pages"]["succeeded"] == args.pages,
        "not every page succeeded: {}",
        view["pages"]
    );
    Ok(Measured {
        seconds,
        served,
        cpu_seconds,
        pg_cpu_seconds,
        view,
        run,
    })
}
