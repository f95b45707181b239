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
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;

use fanfare_testkit as common;

use common::bench::{HealthzProbe, Sampler};
use common::{appshop, ADMIN_TOKEN};
use fanfare_crawler::netguard::NetPolicy;
use fanfare_crawler::render::{RenderConfig, Renderer};

#[derive(Debug, serde::Deserialize)]
struct Args {
    script_pages: usize,
    static_pages: usize,
    browsers: usize,
    timeout_secs: u64,
    browser_starts: usize,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
fanfare: render = never / always / auto on a shop of app shells

  --script-pages N      pages whose name and price a script fills in [default: 100]
  --static-pages N      pages served whole [default: 50]
  --browsers N          `[local] browsers`: pages rendering at once [default: 2]
  --timeout-secs N      give up on a run after this many seconds [default: 900]
  --browser-starts N    Chromium starts timed before the runs (0: none) [default: 7]
";

fn main() -> anyhow::Result<()> {
    let args: Args = common::bench::start(USAGE)?;
    ensure!(args.script_pages + args.static_pages > 0, "no pages");
    common::bench::print_machine();
    let runtime = common::bench::app_runtime(None).build()?;
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
    common::bench::on_thread("shop", move || async move {
        let app = appshop::router(Default::default(), Arc::new(true.into()));
        let scripts = tokio::net::TcpListener::from_std(scripts)?;
        let statics = tokio::net::TcpListener::from_std(statics)?;
        let other = app.clone();
        tokio::spawn(async move { axum::serve(statics, other).await });
        axum::serve(scripts, app).await
    })?;
    Ok(bases)
}

/// Proportional set size (KiB) of `pid` and every process below it: each
/// shared page counted once across the tree, where a sum of RSS would
/// count Chromium's shared pages once per process.
fn tree_rss_kib(root: u32) -> u64 {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, common::bench::proc_stat(pid)?.ppid)))
        .collect();
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

async fn measure(args: &Args) -> anyhow::Result<()> {
    let (scripts, statics) = start_shop()?;
    let urls: Vec<String> = (1..=args.script_pages)
        .map(|i| format!("{scripts}/s/{i}"))
        .chain((1..=args.static_pages).map(|i| format!("{statics}/p/{i}")))
        .collect();
    browser_start(args.browser_starts).await?;
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
    let settings = common::bench::settings(&db, 10, &rest)?;
    let (address, app) = common::bench::start_app(settings, None).await?;
    let client = reqwest::Client::new();
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
    let prober = HealthzProbe::start(address, Duration::from_millis(10))?;
    let me = std::process::id();
    let sampler = Sampler::start(Duration::from_millis(100), move || Some(tree_rss_kib(me)))?;

    let started = Instant::now();
    let run = common::trigger(client, address, ADMIN_TOKEN, mode).await;
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let finished = common::bench::finished_by(client, address, run, deadline).await?;
    let wall = started.elapsed();
    let latencies = prober.finish();
    let peak = sampler.peak();
    drop(sampler);
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
    let render_times = common::bench::Latencies::new(render_times, 0);
    let plain_times = common::bench::Latencies::new(plain_times, 0);
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
        render_times.ms(0.5),
        render_times.ms(0.99),
        plain_times.ms(0.5),
        peak / 1024,
        latencies.ms(0.5),
        latencies.ms(0.99),
        latencies.len(),
        common::bench::load_average(),
    );
    Ok(true)
}

/// Starts Chromium `times` times as the crawler does (its own flags, a
/// fresh profile each time) and prints how long each took to answer its
/// first DevTools command: what a browser crawler's cold start adds.
async fn browser_start(times: usize) -> anyhow::Result<()> {
    if times == 0 {
        return Ok(());
    }
    let renderer = Renderer::new(RenderConfig {
        chromium: None,
        pages: 1,
        max_timeout: Duration::from_secs(30),
        user_agent: "fanfare-bench".into(),
        max_body_bytes: 1 << 20,
        net: NetPolicy::open(),
    })?;
    let mut took = Vec::with_capacity(times);
    for _ in 0..times {
        took.push(renderer.start_browser().await.map_err(anyhow::Error::msg)?);
    }
    took.sort();
    println!(
        "FIGURE render browser start: median {:.0} ms, min {:.0} ms, max {:.0} ms over {times} starts (Chromium started to its first DevTools answer); load average {}",
        took[times / 2].as_secs_f64() * 1e3,
        took[0].as_secs_f64() * 1e3,
        took[times - 1].as_secs_f64() * 1e3,
        common::bench::load_average()
    );
    Ok(())
}
