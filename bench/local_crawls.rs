//! In-process crawl benchmark: can a run of large pages through the local
//! invoker starve the daemon?
//!
//! The real [`fanfare::Application`] runs one `invoker = "local"` schedule
//! of `--pages` pages (default 100), each served by a loopback server as a
//! `--page-mib` MiB (default 10, the crawler's body cap) HTML page of many
//! small elements (so parsing costs what it costs on a real catalogue page),
//! with a few selectors to extract. While the run goes:
//!
//! - a client on a thread of its own GETs `/healthz` every ~10 ms and
//!   records each answer's latency;
//! - a sampler reads this process's `VmRSS` (`/proc/self/status`) every
//!   ~50 ms; `VmHWM` is read at the end.
//!
//! It prints `FIGURE` lines: `/healthz` p50/p99/max latency, peak RSS (the
//! sampled maximum and `VmHWM`), run duration, and the pages' outcomes. The
//! issue's targets are p99 < 100 ms and peak RSS < 400 MB. It asserts
//! nothing about speed; it gives up after `--timeout-secs` (default 600)
//! and drops its database at the end.
//!
//! ```sh
//! cargo bench --bench local_crawls                       # 100 pages of 10 MiB
//! cargo bench --bench local_crawls -- --pages 10         # smoke run
//! ```
//!
//! `--max-in-flight N` (default 1000) sets the schedule's `max_in_flight`.
//!
//! It needs a Postgres it may create a database on (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Logs are off unless
//! `RUST_LOG` is set.

use std::time::{Duration, Instant};

use anyhow::ensure;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::header;
use axum::routing::get;
use axum::Router;

use fanfare_testkit as common;

use common::bench::{HealthzProbe, Sampler};
use common::ADMIN_TOKEN;

#[derive(Debug, serde::Deserialize)]
struct Args {
    pages: usize,
    page_mib: usize,
    max_in_flight: usize,
    timeout_secs: u64,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
fanfare: /healthz latency and RSS during in-process crawls of large pages

  --pages N             pages in the run [default: 100]
  --page-mib N          size of each page, in MiB [default: 10]
  --max-in-flight N     the schedule's max_in_flight (pages dispatched and
                        unreported at once); with it above `[local]
                        concurrency`, the daemon's own bound is what holds
                        [default: 1000]
  --timeout-secs N      give up on the run after this many seconds [default: 600]
";

fn main() -> anyhow::Result<()> {
    let args: Args = common::bench::start(USAGE)?;
    ensure!(args.pages > 0, "--pages must be at least 1");
    ensure!(args.page_mib > 0, "--page-mib must be at least 1");
    let page = Bytes::from(catalogue_page(args.page_mib * 1024 * 1024));
    let site = start_site(page.clone())?;
    println!(
        "local_crawls: {} pages of {} bytes each from {site}; parse budget {} bytes",
        args.pages,
        page.len(),
        fanfare_crawler::crawl::PARSE_BUDGET_BYTES,
    );

    // The application's runtime: as in `fanfare serve`, one worker per core.
    let runtime = common::bench::app_runtime(None).build()?;
    let result = runtime.block_on(measure(&args, &site));
    runtime.shutdown_timeout(Duration::from_secs(10));
    result
}

/// A product-listing page of exactly `size` bytes: many small elements
/// (about 40 per KiB), as a real catalogue page has.
fn catalogue_page(size: usize) -> Vec<u8> {
    let head = "<!doctype html><html><head><meta charset=\"utf-8\"><title>Catalogue</title></head><body><h1 class=\"name\">All products</h1><ul class=\"items\">\n";
    let tail = "</ul><footer class=\"legal\">The end</footer></body></html>\n";
    let mut page = String::with_capacity(size);
    page.push_str(head);
    let mut i = 0usize;
    loop {
        let item = format!(
            "<li class=\"item\" id=\"p{i}\"><a href=\"/p/{i}\"><img src=\"/img/{i}.jpg\" alt=\"\"><span class=\"title\">Product {i}</span></a><div class=\"meta\"><span class=\"price\">${}.{:02}</span><em>in stock</em><b>{}</b></div></li>\n",
            i % 997,
            i % 100,
            i % 7
        );
        if page.len() + item.len() + tail.len() > size {
            break;
        }
        page.push_str(&item);
        i += 1;
    }
    let pad = size.saturating_sub(page.len() + tail.len() + "<!---->".len());
    page.push_str("<!--");
    page.push_str(&"-".repeat(pad));
    page.push_str("-->");
    page.push_str(tail);
    assert_eq!(page.len(), size, "the page is exactly the size asked for");
    page.into_bytes()
}

/// Serves `page` at `/p/{n}` on 127.0.0.1 from a thread of its own; returns
/// the base URL.
fn start_site(page: Bytes) -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let base = format!("http://{}", listener.local_addr()?);
    common::bench::on_thread("site", move || async move {
        let app = Router::new().route(
            "/p/{n}",
            get(move |Path(_n): Path<u32>| {
                let page = page.clone();
                async move { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page) }
            }),
        );
        let listener = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(listener, app).await
    })?;
    Ok(base)
}

async fn measure(args: &Args, site: &str) -> anyhow::Result<()> {
    let db = common::fresh_database().await;
    let schedule = common::schedule("big-pages")
        .urls((1..=args.pages).map(|i| format!("{site}/p/{i}")))
        .extract(r#"{ heading = "h1.name", first_price = "li.item .price", legal = "footer.legal", missing = "table.none td" }"#)
        .key("max_in_flight", args.max_in_flight)
        .text("page_timeout", "10m")
        .to_string();
    let settings = common::bench::settings(&db, 10, &schedule)?;
    let concurrency = settings.local.concurrency;
    let rss_before = common::bench::status_field(None, "VmRSS:").unwrap_or(0);
    let (address, app) = common::bench::start_app(settings, None).await?;
    let client = reqwest::Client::new();
    println!(
        "local_crawls: [local] concurrency = {concurrency}; RSS at start {} MB",
        rss_before / 1024
    );

    let prober = HealthzProbe::start(&address, Duration::from_millis(10))?;
    let sampler = Sampler::rss(None)?;
    let started = Instant::now();
    let run = common::trigger(&client, &address, ADMIN_TOKEN, "big-pages").await;
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let finished = common::bench::finished_by(&client, &address, run, deadline).await?;
    let duration = started.elapsed();
    let latencies = prober.finish();
    let peak = sampler.peak();
    drop(sampler);
    let hwm = common::bench::status_field(None, "VmHWM:").unwrap_or(0);

    match &finished {
        Some(run) => println!(
            "FIGURE local_crawls run: {} pages of {} MiB, outcome {}, succeeded {}, failed {}, duration {:.1} s",
            args.pages,
            args.page_mib,
            run["outcome"],
            run["pages"]["succeeded"],
            run["pages"]["failed"],
            duration.as_secs_f64()
        ),
        None => println!(
            "FIGURE local_crawls run: NOT FINISHED within {} s",
            args.timeout_secs
        ),
    }
    println!(
        "FIGURE local_crawls healthz: {} probes ({} failed), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 < 100 ms)",
        latencies.len(),
        latencies.failed,
        latencies.ms(0.50),
        latencies.ms(0.99),
        latencies.max_ms(),
    );
    println!(
        "FIGURE local_crawls rss: peak sampled {} MB, VmHWM {} MB, at start {} MB (target peak < 400 MB)",
        peak / 1024,
        hwm / 1024,
        rss_before / 1024
    );

    app.stop().await;
    drop(db); // the kit's guard drops the database
    ensure!(finished.is_some(), "the run did not finish in time");
    Ok(())
}
