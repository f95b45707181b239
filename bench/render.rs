//! Rendering benchmark: what `render = "never" | "always" | "auto"` cost and
//! find on a shop of app shells and served pages.
//!
//! The real [`fanfare::Application`] with its in-process crawler and real
//! headless Chromium (`[local] browsers`, default 2), against a loopback
//! shop of `--script-pages` (default 100) pages on 127.0.0.1 whose name and
//! price a script fetches and fills in after load, and `--static-pages`
//! (default 50) served whole on 127.0.0.2. One run per mode, one after
//! another; for each it prints a `FIGURE` line: prices extracted, pages
//! rendered and sent on to the browser, wall time, pages/s, the rendered
//! pages' render time (p50/p99) and the others' plain fetch time (p50), the peak memory of the daemon plus its
//! Chromium processes (proportional set size, sampled every 100 ms over the
//! process tree), and
//! `/healthz` p50/p99 while it ran. It asserts nothing about speed and
//! drops its database at the end.
//!
//! ```sh
//! cargo bench --bench render
//! cargo bench --bench render -- --script-pages 10 --static-pages 5   # smoke run
//! ```
//!
//! It needs a Postgres it may create a database on (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and Chromium
//! (`FANFARE_CHROMIUM`, else `/usr/bin/chromium`).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use fanfare::startup::Overrides;
use fanfare::Settings;

use fanfare_testkit as common;

use common::{appshop, AppTask};

// The test kit's: its finished_by polls with them.
use fanfare_testkit::{ADMIN_TOKEN, CALLBACK_SECRET};

#[derive(Debug, Parser)]
#[command(about = "fanfare: render = never / always / auto on a shop of app shells")]
struct Args {
    /// Pages whose name and price a script fills in.
    #[arg(long, default_value_t = 100)]
    script_pages: usize,
    /// Pages served whole.
    #[arg(long, default_value_t = 50)]
    static_pages: usize,
    /// `[local] browsers`: pages rendering at once.
    #[arg(long, default_value_t = 2)]
    browsers: usize,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.script_pages + args.static_pages > 0, "no pages");
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    common::bench::print_machine();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(measure(&args));
    runtime.shutdown_timeout(Duration::from_secs(10));
    result
}

/// Serves the shop from a thread of its own: script pages on 127.0.0.1,
/// static ones on 127.0.0.2. Returns both base URLs.
fn start_shop() -> anyhow::Result<(String, String)> {
    let bind = |ip: Ipv4Addr| -> anyhow::Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind((IpAddr::V4(ip), 0))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    };
    let (scripts, statics) = (
        bind(Ipv4Addr::LOCALHOST)?,
        bind(Ipv4Addr::new(127, 0, 0, 2))?,
    );
    let bases = (
        format!("http://{}", scripts.local_addr()?),
        format!("http://{}", statics.local_addr()?),
    );
    std::thread::Builder::new()
        .name("shop".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the shop's runtime");
            rt.block_on(async move {
                let app = appshop::router(Default::default(), Arc::new(true.into()));
                let scripts = tokio::net::TcpListener::from_std(scripts).expect("listener");
                let statics = tokio::net::TcpListener::from_std(statics).expect("listener");
                let other = app.clone();
                tokio::spawn(async move { axum::serve(statics, other).await });
                let _ = axum::serve(scripts, app).await;
            });
        })?;
    Ok(bases)
}

/// Proportional set size (KiB) of `pid` and every process below it: each
/// shared page counted once across the tree, where a sum of RSS would
/// count Chromium's shared pages once per process.
fn tree_rss_kib(root: u32) -> u64 {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The fields after the command's closing parenthesis: state, ppid, ...
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = HashSet::from([root]);
    loop {
        let before = tree.len();
        for (pid, ppid) in &parents {
            if tree.contains(ppid) {
                tree.insert(*pid);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    tree.iter()
        .filter_map(|pid| {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
            rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn measure(args: &Args) -> anyhow::Result<()> {
    let (scripts, statics) = start_shop()?;
    let urls: Vec<String> = (1..=args.script_pages)
        .map(|i| format!("{scripts}/s/{i}"))
        .chain((1..=args.static_pages).map(|i| format!("{statics}/p/{i}")))
        .collect();
    let db = common::fresh_database().await;
    let extract = appshop::EXTRACT;
    let schedules = ["never", "always", "auto"]
        .iter()
        .map(|mode| {
            let s = common::schedule(mode)
                .urls(&urls)
                .extract(extract)
                .key("max_in_flight", 64)
                .text("page_timeout", "2m");
            match *mode {
                "never" => s,
                _ => s.text("render", mode).text("wait_for", ".price"),
            }
            .to_string()
        })
        .collect::<String>();
    let rest = format!("[local]\nbrowsers = {}\n{schedules}", args.browsers);
    let toml = common::config_toml_with(&db, 0, 10, CALLBACK_SECRET, ADMIN_TOKEN, &rest);
    let settings = Settings::from_toml(&toml).context("the bench configuration")?;
    let (address, app) = AppTask::start(settings, Overrides::default()).await;
    let client = reqwest::Client::new();
    ensure!(
        common::wait_ready(&client, &address, Duration::from_secs(10)).await,
        "the application did not become ready"
    );
    println!(
        "render: {} script pages on {scripts}, {} static pages on {statics}; [local] browsers = {}",
        args.script_pages, args.static_pages, args.browsers
    );
    let mut all_finished = true;
    for mode in ["never", "always", "auto"] {
        all_finished &= run_mode(args, &client, &address, mode).await?;
    }
    app.stop().await;
    drop(db);
    ensure!(all_finished, "a run did not finish in time");
    Ok(())
}

async fn run_mode(
    args: &Args,
    client: &reqwest::Client,
    address: &str,
    mode: &str,
) -> anyhow::Result<bool> {
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let prober = {
        let (stop, latencies) = (stop.clone(), latencies.clone());
        let url = format!("{address}/healthz");
        std::thread::Builder::new()
            .name("healthz".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the prober's runtime");
                rt.block_on(async move {
                    let client = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        if let Ok(r) = client.get(&url).send().await {
                            if r.status().is_success() && r.bytes().await.is_ok() {
                                latencies.lock().unwrap().push(started.elapsed());
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                });
            })?
    };
    let peak = Arc::new(Mutex::new(0u64));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::Builder::new()
            .name("rss".into())
            .spawn(move || {
                let me = std::process::id();
                while !stop.load(Ordering::Relaxed) {
                    let kib = tree_rss_kib(me);
                    let mut peak = peak.lock().unwrap();
                    *peak = (*peak).max(kib);
                    drop(peak);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })?
    };

    let started = Instant::now();
    let run = common::trigger(client, address, ADMIN_TOKEN, mode).await;
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let finished = common::bench::finished_by(client, address, run, deadline).await?;
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = prober.join();
    let _ = sampler.join();
    let Some(finished) = finished else {
        println!(
            "FIGURE render {mode}: NOT FINISHED within {} s",
            args.timeout_secs
        );
        return Ok(false);
    };

    let mut prices = 0usize;
    let mut render_times = Vec::new();
    let mut plain_times = Vec::new();
    let mut after = 0i64;
    loop {
        let (_, body) = common::get(
            client,
            address,
            ADMIN_TOKEN,
            &format!("/v1/runs/{run}/pages?limit=1000&after={after}"),
        )
        .await?;
        for page in body["pages"].as_array().into_iter().flatten() {
            let result = &page["result"];
            prices += usize::from(result["fields"]["price"].is_string());
            if let Some(ms) = result["fetch_ms"].as_u64() {
                let times = if result["rendered"] == true {
                    &mut render_times
                } else {
                    &mut plain_times
                };
                times.push(Duration::from_millis(ms));
            }
        }
        match body["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    render_times.sort();
    plain_times.sort();
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort();
    let pages = args.script_pages + args.static_pages;
    println!(
        "FIGURE render {mode}: {prices} of {pages} prices, rendered {}, escalated {}, succeeded {}, \
         wall {:.1} s, {:.2} pages/s; render p50 {:.0} ms p99 {:.0} ms; plain fetch p50 {:.0} ms; peak PSS daemon + Chromium {} MB; \
         /healthz p50 {:.1} ms p99 {:.1} ms ({} probes); load {}",
        finished["render"]["rendered"],
        finished["render"]["escalated"],
        finished["pages"]["succeeded"],
        wall.as_secs_f64(),
        pages as f64 / wall.as_secs_f64(),
        ms(common::bench::duration_quantile(&render_times, 0.5).unwrap_or_default()),
        ms(common::bench::duration_quantile(&render_times, 0.99).unwrap_or_default()),
        ms(common::bench::duration_quantile(&plain_times, 0.5).unwrap_or_default()),
        *peak.lock().unwrap() / 1024,
        ms(common::bench::duration_quantile(&latencies, 0.5).unwrap_or_default()),
        ms(common::bench::duration_quantile(&latencies, 0.99).unwrap_or_default()),
        latencies.len(),
        common::bench::load_average(),
    );
    Ok(true)
}
