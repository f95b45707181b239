//! Slow-client benchmark: does the server cut off clients that trickle
//! their headers, and does it keep answering everyone else meanwhile?
//!
//! The real [`fanfare::Application`] runs on a fresh database with
//! `server.header_timeout` set short (`--header-timeout`, default 5 s) and a
//! schedule whose pages go to a recording stand-in for the Lambda API (so
//! the benchmark holds valid task tokens). Then, at once:
//!
//! - `--connections` (default 1,000) TCP connections at once each send one
//!   byte of a never-ending request header per second; each, once the
//!   server closes it, is opened again, for `--seconds` (default 30). For
//!   every connection the time from its connect to the server closing it is
//!   measured. Figures: p50, p99 and max against the bound `header_timeout +
//!   5 s`, and how many were still open when given up on (must be 0).
//! - Meanwhile `/healthz` and valid callbacks (a `succeeded` report for the
//!   next dispatched page) are each requested every `--interval-ms`
//!   (default 20) on keep-alive connections. Figures: p50, p99 and max
//!   latency, and answers other than 200 (target: p99 < 100 ms).
//!
//! The application runs on a multi-threaded runtime of its own; the load
//! (slow connections and probes) on a separate current-thread runtime, so
//! the probes' latency is the server's, not the load generator's queueing.
//! The open-file soft limit is raised to the hard limit at start (each
//! connection is two descriptors in this one process); both are printed.
//!
//! It stops by itself: the load ends after `--seconds` and every slow
//! connection gives up `header_timeout + 15 s` after it opened, so a run
//! with the defaults takes about 40 s. It asserts
//! nothing about speed and drops its database at the end.
//!
//! ```sh
//! cargo bench --bench slow_clients
//! cargo bench --bench slow_clients -- --connections 200 --header-timeout 2
//! ```
//!
//! It needs a Postgres it may create databases on: `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Logs are off unless
//! `RUST_LOG` is set.

use std::time::{Duration, Instant};

use anyhow::ensure;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use fanfare_testkit as common;

use common::bench::{probe, raise_open_file_limit, Latencies};
use common::{RecordingLambda, ADMIN_TOKEN};

#[derive(Debug, serde::Deserialize)]
struct Args {
    connections: usize,
    header_timeout: u64,
    interval_ms: u64,
    seconds: u64,
    app_threads: Option<usize>,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
fanfare against clients that send their headers one byte per second

  --connections N       slow connections opened at once [default: 1000]
  --header-timeout N    the server's header_timeout, in seconds [default: 5]
  --interval-ms N       time between two probes of each kind, in milliseconds [default: 20]
  --seconds N           how long the load lasts, in seconds: each slow connection,
                        once closed, is opened again until then, and the probes
                        run until then [default: 30]
  --app-threads N       worker threads of the application's runtime (default: one per core)
";

fn main() -> anyhow::Result<()> {
    let args: Args = common::bench::start(USAGE)?;
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(args.interval_ms > 0, "--interval-ms must be at least 1");
    let (soft, hard) = raise_open_file_limit()?;
    println!("FIGURE open_files soft_limit={soft} hard_limit={hard}");
    ensure!(
        soft >= 2 * args.connections as u64 + 256,
        "the open-file limit ({soft}) is too low for {} connections in one process: raise it (ulimit -n) or pass fewer --connections",
        args.connections
    );
    let runtimes = common::bench::runtimes(args.app_threads)?;
    let db = runtimes.0.block_on(common::fresh_database());
    // Enough pages for one callback per probe interval for the whole run.
    let pages = ((args.seconds + 5) * 1000 / args.interval_ms) as usize + 100;
    let schedule = common::lambda_schedule_block("bench", pages, "", "");
    let mut settings = common::bench::settings(&db, 10, &schedule)?;
    settings.server.header_timeout = Duration::from_secs(args.header_timeout);
    let result = common::bench::run_app(&runtimes, settings, |address, lambda| async move {
        measure(&args, &address, &lambda, pages).await
    });
    drop(db); // the kit's guard drops the database
    result
}

async fn measure(
    args: &Args,
    address: &str,
    lambda: &RecordingLambda,
    pages: usize,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    common::trigger(&http, address, ADMIN_TOKEN, "bench").await;
    let requests = lambda.wait_for(pages).await;
    let header_timeout = Duration::from_secs(args.header_timeout);
    let bound = header_timeout + Duration::from_secs(5);
    let give_up = header_timeout + Duration::from_secs(15);
    let host = address.trim_start_matches("http://").to_string();

    let started = Instant::now();
    let load_for = Duration::from_secs(args.seconds);
    // Each task keeps one slow connection open until the load ends.
    let slow: Vec<_> = (0..args.connections)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    seen.push(slow_connection(host.clone(), give_up).await);
                    if started.elapsed() >= load_for {
                        return seen;
                    }
                }
            })
        })
        .collect();
    let slow_done = async {
        let mut closed = Vec::new();
        let mut still_open = 0;
        let mut failed = 0;
        for handle in slow {
            for seen in handle.await? {
                match seen {
                    Ok(Some(after)) => closed.push(after),
                    Ok(None) => still_open += 1,
                    Err(_) => failed += 1,
                }
            }
        }
        anyhow::Ok((closed, still_open, failed))
    };
    let probing = tokio_util::sync::CancellationToken::new();
    let interval = Duration::from_millis(args.interval_ms);
    let healthz = probe(interval, probing.clone(), {
        let (http, url) = (reqwest::Client::new(), format!("{address}/healthz"));
        move |_| http.get(&url).send()
    });
    let callbacks = probe(interval, probing.clone(), {
        let (http, url) = (reqwest::Client::new(), format!("{address}/v1/callbacks"));
        move |i| {
            let r = &requests[i % requests.len()];
            http.post(&url)
                .bearer_auth(&r.callback_token)
                .json(&common::succeeded(r))
                .send()
        }
    });
    let stopper = async {
        tokio::time::sleep(load_for).await;
        probing.cancel();
    };
    let (slow_result, (), healthz, callbacks) =
        tokio::join!(slow_done, stopper, healthz, callbacks);
    let (closed, still_open, failed) = slow_result?;
    let within = closed.iter().filter(|d| **d <= bound).count();
    let closed = Latencies::new(closed, 0);
    println!(
        "FIGURE slow_connections at_once={} opened={} closed={} still_open={still_open} connect_failed={failed} header_timeout_s={} bound_s={} within_bound={within} close_p50_s={:.2} close_p99_s={:.2} close_max_s={:.2} load_s={}",
        args.connections,
        closed.len() + still_open + failed,
        closed.len(),
        args.header_timeout,
        bound.as_secs(),
        closed.secs(0.50),
        closed.secs(0.99),
        closed.secs(1.0),
        args.seconds,
    );
    for (name, samples) in [("healthz", healthz), ("callbacks", callbacks)] {
        let latencies = Latencies::new(samples.0, samples.1);
        println!(
            "FIGURE {name} requests={} not_200={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} interval_ms={}",
            latencies.len() + latencies.failed,
            latencies.failed,
            latencies.ms(0.50),
            latencies.ms(0.99),
            latencies.max_ms(),
            args.interval_ms,
        );
    }
    println!("FIGURE wall_seconds={:.1}", started.elapsed().as_secs_f64());
    Ok(())
}

/// One client that sends a request line and then one byte of an endless
/// header per second; returns how long after connecting the server closed
/// it (`None`: still open after `give_up`).
async fn slow_connection(host: String, give_up: Duration) -> std::io::Result<Option<Duration>> {
    let stream = TcpStream::connect(&host).await?;
    let opened = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let header = format!("GET /healthz HTTP/1.1\r\nhost: {host}\r\nx-slow: ");
    let trickle = async move {
        let mut bytes = header
            .into_bytes()
            .into_iter()
            .chain(std::iter::repeat(b'a'));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let byte = bytes.next().expect("endless");
            if writer.write_all(&[byte]).await.is_err() {
                // Closed by the server; the reader sees it too.
                std::future::pending::<()>().await;
            }
        }
    };
    let closed = async {
        let mut buf = [0u8; 512];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {}
            }
        }
    };
    Ok(tokio::time::timeout(give_up, async {
        tokio::select! {
            after = closed => after,
            _ = trickle => unreachable!("the trickle never ends"),
        }
    })
    .await
    .ok())
}
