//! Hostile-listing benchmark: do one site's robots.txt and hundreds of
//! hosts that never answer stay within the listing's bounds, while the
//! daemon keeps answering?
//!
//! The real [`fanfare::Application`] runs on a fresh database with a
//! recording stand-in for the Lambda API (nothing is crawled), and lists
//! pages from a JSON list served on loopback, obeying robots.txt:
//!
//! - `robots` (twice): a site whose robots.txt is 512 KiB of `Disallow:
//!   /*a*a…*a*b<i>` rules (5,237 of them, each 41 `*a` then `*b<i>`) and a
//!   list of `--urls` (default 20,000) URLs on it with 2,000-character
//!   paths: first paths of `a`s (what a regex-based matcher backtracks on),
//!   then paths naming `b0`, `b1`, … (every rule's literal parts occur, so
//!   every rule must be looked at: the matcher's budget is what ends it).
//!   Figures: the listing's time, `/healthz` latency (p50/p99/max, probed
//!   every 20 ms throughout, against the same probes idle just before),
//!   the listing's robots counts and `robots_match_ms`, and the process's
//!   CPU-seconds during the listing (per 1,000 URLs).
//! - `dead-hosts`: `--hosts` (default 300) loopback listeners that accept
//!   connections and never answer, one URL on each. Figures: the listing's
//!   time against the robots.txt timeout (10 s), robots.txt requests the
//!   hosts received (each connection accepted is one), and whether the
//!   listing was taken over (the run's `listing_owner` is no longer its id).
//!
//! The application runs on a multi-threaded runtime of two workers (one
//! per core of a Fargate task's two vCPUs); the sites and probes on a
//! current-thread runtime of their own. It asserts nothing about speed and
//! drops its database at the end.
//!
//! ```sh
//! cargo bench --bench hostile_listing
//! cargo bench --bench hostile_listing -- --scenario robots --urls 5000
//! ```
//!
//! It needs a Postgres it may create databases on: `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Logs are off unless
//! `RUST_LOG` is set.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use axum::routing::get;
use axum::Router;
use serde_json::Value;

use fanfare_testkit as common;

use common::bench::{load_average, quantile, self_cpu_seconds};
use common::ADMIN_TOKEN;

const RULES: usize = 5237;
const PATH_CHARS: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    Robots,
    DeadHosts,
    Both,
}

#[derive(Debug, serde::Deserialize)]
struct Args {
    scenario: Scenario,
    urls: usize,
    hosts: usize,
    give_up: u64,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
fanfare listing against a pathological robots.txt and hosts that never answer

  --scenario MODE       which scenario to run: robots, dead-hosts or both [default: both]
  --urls N              URLs on the site with the pathological robots.txt [default: 20000]
  --hosts N             hosts that never answer [default: 300]
  --give-up N           give up on a listing after this many seconds [default: 120]
";

fn main() -> anyhow::Result<()> {
    let args: &Args = &common::bench::start(USAGE)?;
    common::bench::print_machine();
    let runtimes = common::bench::runtimes(Some(2))?;
    let (app_runtime, load) = &runtimes;
    if matches!(args.scenario, Scenario::Robots | Scenario::Both) {
        let sites = load.block_on(RobotsSite::start(args.urls))?;
        for (name, list) in [("plain", &sites.plain_list), ("keys", &sites.keys_list)] {
            let db = app_runtime.block_on(common::fresh_database());
            let settings = common::bench::settings(&db, 10, &schedule(name, list))?;
            common::bench::run_app(&runtimes, settings, |address, _| async move {
                robots_run(args, &address, name).await
            })?;
        }
    }
    if matches!(args.scenario, Scenario::DeadHosts | Scenario::Both) {
        let (list, accepted) = load.block_on(dead_hosts(args.hosts))?;
        let db = app_runtime.block_on(common::fresh_database());
        let settings = common::bench::settings(&db, 10, &schedule("dead", &list))?;
        let (db, accepted) = (&db, &accepted);
        common::bench::run_app(&runtimes, settings, |address, _| async move {
            dead_hosts_run(args, &address, db, accepted).await
        })?;
    }
    Ok(())
}

fn schedule(name: &str, list: &str) -> String {
    common::schedule(name)
        .lambda("crawler-fn")
        .pages(&format!(r#"{{ http = "{list}" }}"#))
        .key("obey_robots", true)
        .key("max_in_flight", 100000)
        .key("max_pages", 1000000)
        .to_string()
}

/// The site with the pathological robots.txt and its two page lists.
struct RobotsSite {
    plain_list: String,
    keys_list: String,
}

impl RobotsSite {
    async fn start(urls: usize) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let mut robots = String::from("User-agent: *\n");
        for i in 0..RULES {
            robots.push_str("Disallow: /");
            robots.push_str(&"*a".repeat(41));
            robots.push_str(&format!("*b{i}\n"));
        }
        // Every rule's key named in each path, until the path is long enough.
        let keys: String = (0..RULES)
            .map(|i| format!("b{i}"))
            .collect::<String>()
            .chars()
            .take(PATH_CHARS - 8)
            .collect();
        let list = |path: &dyn Fn(usize) -> String| -> String {
            let urls: Vec<String> = (0..urls).map(|i| format!("{base}{}", path(i))).collect();
            serde_json::to_string(&urls).expect("a list of strings")
        };
        let plain = list(&|i| format!("/{i:06}/{}", "a".repeat(PATH_CHARS - 8)));
        let keyed = list(&|i| format!("/{i:06}/{keys}"));
        ensure!(
            robots.len() <= fanfare::robots::MAX_ROBOTS_BYTES,
            "the robots.txt ({} bytes) must be read whole",
            robots.len()
        );
        println!(
            "FIGURE robots_site robots_txt_bytes={} rules={RULES} urls={urls} path_chars={PATH_CHARS}",
            robots.len()
        );
        let app = Router::new()
            .route("/robots.txt", get(move || async move { robots }))
            .route("/plain.json", get(move || async move { plain }))
            .route("/keys.json", get(move || async move { keyed }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            plain_list: format!("{base}/plain.json"),
            keys_list: format!("{base}/keys.json"),
        })
    }
}

async fn robots_run(args: &Args, address: &str, name: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let idle = probe_healthz(&http, address, Duration::from_secs(3), || false).await;
    let cpu_before = self_cpu_seconds();
    let started = Instant::now();
    let run = common::trigger(&http, address, ADMIN_TOKEN, name).await;
    let give_up = Duration::from_secs(args.give_up);
    let listing = Arc::new(std::sync::Mutex::new(None::<Value>));
    let busy = {
        let (poller, at, listing) = (http.clone(), address.to_string(), listing.clone());
        // Polls the run on its own task; the probes run until it has left listing.
        let watcher = tokio::spawn(async move {
            loop {
                let run = get_json(&poller, &at, &format!("/v1/runs/{run}")).await;
                if run["status"] != "listing" || started.elapsed() > give_up {
                    *listing.lock().unwrap() = Some(run);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let probes = probe_healthz(&http, address, give_up, || watcher.is_finished()).await;
        watcher.await?;
        probes
    };
    let listed_s = started.elapsed().as_secs_f64();
    let cpu = self_cpu_seconds() - cpu_before;
    let run = listing.lock().unwrap().take().unwrap_or_default();
    let l = &run["listing"];
    println!(
        "FIGURE robots paths={name} urls={} listed_s={listed_s:.1} status={} pages={} disallowed_by_robots={} robots_too_complex={} robots_match_ms={} process_cpu_s={cpu:.2} cpu_s_per_1000_urls={:.3} load_average={}",
        args.urls,
        run["status"],
        l["pages"],
        l["disallowed_by_robots"],
        l["robots_too_complex"],
        l["robots_match_ms"],
        cpu * 1000.0 / args.urls as f64,
        load_average(),
    );
    println!(
        "FIGURE robots_healthz paths={name} probes={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} failed={} idle_p99_ms={:.1} p99_vs_idle={:.2}",
        busy.latencies.len(),
        quantile(&busy.latencies, 0.5),
        quantile(&busy.latencies, 0.99),
        quantile(&busy.latencies, 1.0),
        busy.failed,
        quantile(&idle.latencies, 0.99),
        quantile(&busy.latencies, 0.99) / quantile(&idle.latencies, 0.99).max(0.01),
    );
    Ok(())
}

/// `hosts` loopback listeners that accept connections and never answer;
/// the page list naming one URL on each, and how many connections they
/// accepted.
async fn dead_hosts(hosts: usize) -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut urls = Vec::with_capacity(hosts);
    for _ in 0..hosts {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        urls.push(format!("http://{}/page", listener.local_addr()?));
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
    }
    let list = serde_json::to_string(&urls)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/dead.json", listener.local_addr()?);
    let app = Router::new().route("/dead.json", get(move || async move { list }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, accepted))
}

async fn dead_hosts_run(
    args: &Args,
    address: &str,
    db: &common::TestDatabase,
    accepted: &AtomicUsize,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let cpu_before = self_cpu_seconds();
    let started = Instant::now();
    let run_id = common::trigger(&http, address, ADMIN_TOKEN, "dead").await;
    let run = loop {
        let run = get_json(&http, address, &format!("/v1/runs/{run_id}")).await;
        if run["status"] != "listing" || started.elapsed() > Duration::from_secs(args.give_up) {
            break run;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let listed_s = started.elapsed().as_secs_f64();
    let cpu = self_cpu_seconds() - cpu_before;
    let pool = sqlx::PgPool::connect(db.url()).await?;
    let owner: uuid::Uuid = sqlx::query_scalar("select listing_owner from runs where id = $1")
        .bind(run_id)
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    let robots_timeout = fanfare::robots::ROBOTS_TIMEOUT.as_secs_f64();
    println!(
        "FIGURE dead_hosts hosts={} listed_s={listed_s:.1} robots_timeout_s={robots_timeout:.0} listed_vs_timeout={:.2} robots_requests={} robots_unreachable={} taken_over={} process_cpu_s={cpu:.2} load_average={}",
        args.hosts,
        listed_s / robots_timeout,
        accepted.load(Ordering::SeqCst),
        run["listing"]["robots_unreachable"],
        owner != run_id,
        load_average(),
    );
    Ok(())
}

/// `/healthz` latencies, probed every 20 ms until `done` or `within`.
struct Probes {
    latencies: Vec<f64>,
    failed: usize,
}

async fn probe_healthz(
    http: &reqwest::Client,
    address: &str,
    within: Duration,
    done: impl Fn() -> bool,
) -> Probes {
    let started = Instant::now();
    let mut probes = Probes {
        latencies: Vec::new(),
        failed: 0,
    };
    let url = format!("{address}/healthz");
    while started.elapsed() < within && !done() {
        let at = Instant::now();
        match http.get(&url).timeout(Duration::from_secs(5)).send().await {
            Ok(r) if r.status() == 200 => probes.latencies.push(at.elapsed().as_secs_f64() * 1e3),
            _ => probes.failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    probes
}

async fn get_json(http: &reqwest::Client, address: &str, path: &str) -> Value {
    match http
        .get(format!("{address}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Value::Null,
    }
}
