//! Page-source benchmark: does a hostile or huge page list stay bounded in
//! time and memory?
//!
//! Each case runs the real [`fanfare::Application`] in this process on a
//! fresh database, with one schedule whose page source is served by a
//! loopback server in the same process. The server generates its documents
//! chunk by chunk as it sends them (it holds none of them whole), so the
//! process's memory is the daemon's. A Lambda stand-in accepts every invoke
//! and does nothing; `max_in_flight = 1` keeps dispatch out of the figures.
//!
//! Cases (`--case`; without it, each runs in a fresh child process so that
//! peaks don't mix):
//!
//! - `self-index`: a sitemap index of 50,000 `<loc>`s that all name the
//!   index itself. Figures: time until the run is `finished`, its outcome
//!   and error, how many times the server was asked for the index, peak RSS.
//! - `nested`: a 40 MB JSON page list `[[0,0,...]]` (one element, an array
//!   of 20 million zeros). Figures: time until listed, outcome, peak RSS.
//! - `million`: a JSON list of 1,000,000 distinct URLs (about 35 MB).
//!   Figures: listing time (trigger to the run leaving `listing`), pages
//!   listed, peak RSS.
//!
//! RSS is sampled from `/proc/self/status` (`VmRSS`) every 50 ms; `VmHWM`
//! (the kernel's high-water mark) is printed too. Each case stops after
//! `--timeout` seconds (default 60) or once RSS passes `--rss-ceiling-mb`
//! (default 1500), whichever comes first, and prints what it saw. Figures
//! are printed as `FIGURE` lines; nothing is asserted.
//!
//! ```sh
//! cargo bench --bench sources                      # all three cases
//! cargo bench --bench sources -- --case million    # one case
//! ```
//!
//! It needs a Postgres it may create databases on (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), and drops its database at
//! the end. Logs are off unless `RUST_LOG` is set.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::routing::get;
use axum::Router;
use fanfare::dispatch::LambdaApi;

use fanfare_testkit as common;

use common::bench::{generated_body as generated, status_field, Sampler};
use common::{RecordingLambda, ADMIN_TOKEN};

#[derive(Debug, serde::Deserialize)]
struct Args {
    case: Option<String>,
    urls: usize,
    nested_mb: usize,
    timeout: u64,
    rss_ceiling_mb: u64,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
Page sources: time and memory under hostile and huge lists

  --case TEXT           one case (self-index, nested, million) in this process;
                        without it, every case in a child process of its own
  --urls N              URLs of the `million` case [default: 1000000]
  --nested-mb N         size of the `nested` document in MB [default: 40]
  --timeout N           seconds a case may take [default: 60]
  --rss-ceiling-mb N    a case stops once RSS passes this many MB [default: 1500]
";

const CASES: [&str; 3] = ["self-index", "nested", "million"];

fn main() -> anyhow::Result<()> {
    let args: Args = common::bench::start(USAGE)?;
    let Some(case) = args.case.clone() else {
        let exe = std::env::current_exe()?;
        for case in CASES {
            println!("\n== case {case}");
            let status = std::process::Command::new(&exe)
                .args(std::env::args().skip(1).filter(|a| a != "--bench"))
                .args(["--case", case])
                .status()
                .with_context(|| format!("running case {case}"))?;
            if !status.success() {
                println!("case {case} exited with {status}");
            }
        }
        return Ok(());
    };
    if !CASES.contains(&case.as_str()) {
        bail!("--case must be one of {CASES:?}");
    }
    let runtime = common::bench::app_runtime(None).build()?;
    let result = runtime.block_on(run(&args, &case));
    // A case stopped early may leave a listing running; don't wait for it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// `VmRSS` or `VmHWM` of this process, in MB.
fn memory_mb(field: &str) -> f64 {
    status_field(None, field).unwrap_or(0) as f64 / 1024.0
}

/// Serves the case's document at `/doc`; returns the URL and the request
/// count.
async fn serve(case: &str, args: &Args) -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/doc", listener.local_addr()?);
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let (case, urls, nested_mb, own) = (case.to_string(), args.urls, args.nested_mb, url.clone());
    let routes = Router::new().route(
        "/doc",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let own = own.clone();
            let body = match case.as_str() {
                "self-index" => generated(
                    r#"<?xml version="1.0" encoding="UTF-8"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">"#.into(),
                    50_000,
                    move |_| format!("<sitemap><loc>{own}</loc></sitemap>\n"),
                    "</sitemapindex>".into(),
                ),
                "nested" => generated(
                    "[[".into(),
                    nested_mb * 1_000_000 / 2,
                    |_| "0,".to_string(),
                    "0]]".into(),
                ),
                _ => generated(
                    "[".into(),
                    urls,
                    |i| format!("\"https://shop.example/p/{i:07}\","),
                    "\"https://shop.example/p/0000000\"]".into(),
                ),
            };
            async move { body }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, routes).await });
    Ok((url, hits))
}

async fn run(args: &Args, case: &str) -> anyhow::Result<()> {
    common::bench::with_bench_database(false, |db| async move { measure(args, case, &db).await })
        .await
}

async fn measure(args: &Args, case: &str, database_url: &str) -> anyhow::Result<()> {
    let sampler = Sampler::rss(None)?;
    let (doc_url, hits) = serve(case, args).await?;
    let pages = if case == "self-index" {
        format!("{{ sitemap = \"{doc_url}\" }}")
    } else {
        format!("{{ http = \"{doc_url}\" }}")
    };
    let schedule = common::schedule("bench")
        .lambda("crawler")
        .pages(&pages)
        .key("max_in_flight", 1)
        .key("max_pages", args.urls.max(1_000_000) + 1)
        .to_string();
    let settings = common::bench::settings(database_url, 10, &schedule)?;
    let lambda = Arc::new(RecordingLambda::default()) as Arc<dyn LambdaApi>;
    let (address, app) = common::bench::start_app(settings, Some(lambda)).await?;
    let http = reqwest::Client::new();
    let baseline_mb = memory_mb("VmRSS:");
    let started = Instant::now();
    let run = common::trigger(&http, &address, ADMIN_TOKEN, "bench").await;
    let deadline = started + Duration::from_secs(args.timeout);
    // The self-index case ends when the run is finished; the lists when the
    // run leaves `listing`.
    let (view, stopped) = loop {
        let (_, view) = common::get(&http, &address, ADMIN_TOKEN, &format!("/v1/runs/{run}"))
            .await
            .map_err(|e| anyhow::anyhow!("reading the run: {e}"))?;
        let done = if case == "self-index" {
            view["status"] == "finished"
        } else {
            view["status"] != "listing"
        };
        if done {
            break (view, None);
        }
        if Instant::now() > deadline {
            break (view, Some(format!("timeout after {} s", args.timeout)));
        }
        if sampler.peak() > args.rss_ceiling_mb * 1024 {
            break (
                view,
                Some(format!("RSS passed the {} MB ceiling", args.rss_ceiling_mb)),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    let peak_mb = sampler.peak() as f64 / 1024.0;
    let hwm_mb = memory_mb("VmHWM:");
    println!("FIGURE case={case} seconds={:.2}", elapsed.as_secs_f64());
    if let Some(why) = &stopped {
        println!("FIGURE case={case} stopped=\"{why}\"");
    }
    println!(
        "FIGURE case={case} status={} outcome={} pages_total={}",
        view["status"], view["outcome"], view["pages"]["total"]
    );
    if !view["error"].is_null() {
        println!("FIGURE case={case} error={}", view["error"]);
    }
    if !view["listing"].is_null() {
        println!("FIGURE case={case} listing={}", view["listing"]);
    }
    println!(
        "FIGURE case={case} document_requests={}",
        hits.load(Ordering::SeqCst)
    );
    println!(
        "FIGURE case={case} rss_baseline_mb={baseline_mb:.0} rss_peak_mb={peak_mb:.0} vm_hwm_mb={hwm_mb:.0}"
    );
    if stopped.is_some() {
        // The listing may still be running away: don't wait for a graceful
        // stop, the database is dropped with force.
        return Ok(());
    }
    app.stop().await;
    Ok(())
}
