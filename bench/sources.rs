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

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::body::{Body, Bytes};
use axum::routing::get;
use axum::Router;
use clap::Parser;
use fanfare::dispatch::{InvokeError, LambdaApi};
use fanfare::startup::Overrides;
use fanfare::Settings;
use futures::future::BoxFuture;

use fanfare_testkit as common;

use common::{AppTask, ADMIN_TOKEN, CALLBACK_SECRET};

#[derive(Parser, Debug)]
#[command(about = "Page sources: time and memory under hostile and huge lists")]
struct Args {
    /// One case (self-index, nested, million) in this process; without it,
    /// every case in a child process of its own.
    #[arg(long)]
    case: Option<String>,
    /// URLs of the `million` case.
    #[arg(long, default_value_t = 1_000_000)]
    urls: usize,
    /// Size of the `nested` document in MB.
    #[arg(long, default_value_t = 40)]
    nested_mb: usize,
    /// Seconds a case may take.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// A case stops once RSS passes this many MB.
    #[arg(long, default_value_t = 1500)]
    rss_ceiling_mb: u64,
    /// cargo bench passes `--bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

const CASES: [&str; 3] = ["self-index", "nested", "million"];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
    if std::env::var_os("RUST_LOG").is_some() {
        fanfare::telemetry::init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(&args, &case));
    // A case stopped early may leave a listing running; don't wait for it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// `VmRSS` and `VmHWM` of this process, in kB.
fn memory_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Samples RSS every 50 ms on a thread of its own; keeps the peak.
struct Sampler {
    peak_kb: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start() -> Self {
        let peak_kb = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (peak, stopping) = (peak_kb.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                peak.fetch_max(memory_kb().0, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            peak_kb,
            stop,
            thread: Some(thread),
        }
    }

    fn peak_mb(&self) -> f64 {
        self.peak_kb.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A Lambda API that accepts every invoke and does nothing.
struct NullLambda;

impl LambdaApi for NullLambda {
    fn invoke_event(
        &self,
        _function: &str,
        _payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Option<String>, InvokeError>> {
        Box::pin(async { Ok(None) })
    }
}

/// A body generated chunk by chunk: `head`, then `count` times `item(i)`
/// (in chunks of about 64 KiB), then `tail`.
fn generated(
    head: String,
    count: usize,
    item: impl Fn(usize) -> String + Send + Sync + 'static,
    tail: String,
) -> Body {
    let mut next = 0usize;
    let mut state = 0u8;
    let chunks = std::iter::from_fn(move || match state {
        0 => {
            state = 1;
            Some(Bytes::from(head.clone()))
        }
        1 if next < count => {
            let mut chunk = String::with_capacity(70 * 1024);
            while next < count && chunk.len() < 64 * 1024 {
                chunk.push_str(&item(next));
                next += 1;
            }
            Some(Bytes::from(chunk))
        }
        1 => {
            state = 2;
            Some(Bytes::from(tail.clone()))
        }
        _ => None,
    });
    Body::from_stream(futures::stream::iter(chunks.map(Ok::<_, Infallible>)))
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
    let sampler = Sampler::start();
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
    let settings = Settings::from_toml(&common::config_toml_with(
        database_url,
        0,
        10,
        CALLBACK_SECRET,
        ADMIN_TOKEN,
        &schedule,
    ))
    .map_err(|e| anyhow::anyhow!("the bench configuration: {e}"))?;
    let (address, app) = AppTask::start(
        settings,
        Overrides {
            lambda: Some(Arc::new(NullLambda) as Arc<dyn LambdaApi>),
            ..Default::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    if !common::wait_ready(&http, &address, Duration::from_secs(10)).await {
        bail!("the application did not become ready");
    }
    let baseline_mb = memory_kb().0 as f64 / 1024.0;
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
        if sampler.peak_mb() > args.rss_ceiling_mb as f64 {
            break (
                view,
                Some(format!("RSS passed the {} MB ceiling", args.rss_ceiling_mb)),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    let peak_mb = sampler.peak_mb();
    let hwm_mb = memory_kb().1 as f64 / 1024.0;
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
