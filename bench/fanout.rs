//! Fan-out benchmark: how many Lambda Invoke calls per second does one
//! replica make?
//!
//! The real [`fanfare::Application`] (through the test kit's `TestApp`, on a
//! fresh database dropped at the end) runs one Lambda schedule of `--pages`
//! pages (default 100,000) read from a loopback JSON list. Its `[lambda]
//! endpoint_url` is a local nginx, started by the benchmark with a
//! configuration of its own, that answers every
//! `POST /2015-03-31/functions/{name}/invocations` with `202 {}` and an
//! `x-amzn-RequestId` header, as Lambda answers an Event invoke: the
//! daemon's own aws-sdk-lambda client (SigV4 with dummy credentials from
//! the environment, HTTP/1.1 keep-alive) makes every call. nginx keeps
//! connections alive, logs no access, and counts requests (`stub_status`).
//! `max_in_flight` is the page count and `max_invokes_per_second` high
//! (1,000,000 by default), so neither caps the figure; `page_timeout` is an
//! hour, so no page is dispatched twice.
//!
//! Figures (`FIGURE` lines; nothing is asserted):
//!
//! - **Invoke calls/s from one replica**: pages invoked ÷ the wall time from
//!   the first page's claim (`min(pages.dispatched_at)` in the ledger) to the
//!   moment the daemon's `fanfare_invokes_total` counted the last one
//!   (polled every 20 ms);
//! - the same with the listing excluded: pages claimed after the run's
//!   listing was done (`runs.listed_at`), over that part of the window;
//! - CPU seconds used meanwhile (`getrusage` of this process: the daemon,
//!   plus the page-list server and the polling, which are small), by nginx
//!   (master and workers, from `/proc`) and by the Postgres backends serving
//!   the bench database (from `/proc`, when Postgres is on this machine);
//! - requests nginx answered, and the invoke outcomes (anything but
//!   `accepted` is printed as an ANOMALY, as is a page not dispatched once).
//!
//! nginx, Postgres and the daemon share this machine's cores: on a 2-core
//! machine the figure is what one replica does with what is left of two
//! cores.
//!
//! ```sh
//! cargo bench --bench fanout                                   # 100,000 pages, 1 nginx worker
//! cargo bench --bench fanout -- --pages 5000                   # smoke run
//! cargo bench --bench fanout -- --nginx-workers 2 --repeat 3
//! ```
//!
//! It needs nginx (`/usr/sbin/nginx`, or `--nginx PATH`; Debian:
//! `apt-get install -y nginx`) and a Postgres it may create databases on
//! (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`).
//! Logs are off unless `RUST_LOG` is set. Options: `--pages`,
//! `--nginx-workers` (default 1), `--max-invokes-per-second` (0: no cap),
//! `--pool` (the daemon's `database.max_connections`, default 10),
//! `--app-threads` (worker threads of the runtime, default one per core),
//! `--repeat` (measurements, each on a fresh database), `--stall` (seconds
//! without progress before a measurement gives up, default 60).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use fanfare_testkit::bench::{load_average, proc_stat, process_cpu_seconds, self_cpu_seconds};
use fanfare_testkit::{metric_in, TestApp};

#[derive(Debug, serde::Deserialize)]
struct Args {
    pages: usize,
    nginx_workers: usize,
    nginx: PathBuf,
    max_invokes_per_second: u32,
    pool: u32,
    app_threads: Option<usize>,
    repeat: usize,
    stall: u64,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
fanfare fan-out: Invoke calls per second from one replica against nginx

  --pages N                   pages of the run [default: 100000]
  --nginx-workers N           nginx worker processes [default: 1]
  --nginx PATH                the nginx binary [default: /usr/sbin/nginx]
  --max-invokes-per-second N  the schedule's max_invokes_per_second; 0 leaves it
                              unset (no cap) [default: 1000000]
  --pool N                    the daemon's database.max_connections [default: 10]
  --app-threads N             worker threads of the runtime (default: one per core)
  --repeat N                  measurements, each on a fresh database [default: 1]
  --stall N                   seconds without a new invoke before a measurement
                              gives up [default: 60]
";

fn main() -> anyhow::Result<()> {
    let args: Args = fanfare_testkit::bench::start(USAGE)?;
    ensure!(args.pages > 0, "--pages must be at least 1");
    ensure!(args.repeat > 0, "--repeat must be at least 1");
    ensure!(args.nginx_workers > 0, "--nginx-workers must be at least 1");
    if !args.nginx.exists() {
        bail!(
            "nginx is not at {} (Debian: `apt-get install -y nginx`, or pass --nginx PATH): \
             the benchmark needs it as its Lambda API stand-in",
            args.nginx.display()
        );
    }
    // The daemon's AWS SDK client signs with these; the endpoint is nginx,
    // so they never reach AWS. Set before any thread starts.
    for (name, value) in [
        ("AWS_ACCESS_KEY_ID", "AKIDBENCHFANOUT00000"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "bench-secret-access-key-not-a-real-one",
        ),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        std::env::set_var(name, value);
    }
    std::env::remove_var("AWS_SESSION_TOKEN");
    std::env::remove_var("AWS_PROFILE");
    let nginx = Nginx::start(&args.nginx, args.nginx_workers)?;
    let runtime = fanfare_testkit::bench::app_runtime(args.app_threads).build()?;
    let result = runtime.block_on(run(&args, &nginx));
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(nginx);
    result
}

async fn run(args: &Args, nginx: &Nginx) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("fanfare fan-out benchmark");
    println!(
        "  machine: {cores} cores, load average {}; commit {}",
        load_average(),
        fanfare_testkit::bench::git_commit()
    );
    println!(
        "  Lambda API stand-in: nginx ({}) with {} worker(s) on 127.0.0.1:{}, answering 202 {{}}",
        nginx_version(&args.nginx),
        args.nginx_workers,
        nginx.port
    );
    println!(
        "  reproduce: {}",
        fanfare_testkit::bench::reproduce("fanout", USAGE)
    );
    let pages_url = serve_page_list(args.pages).await?;
    let mut rates = Vec::new();
    for i in 1..=args.repeat {
        println!(
            "\n== measurement {i} of {}: {} pages",
            args.repeat, args.pages
        );
        rates.push(measure(args, nginx, &pages_url).await?);
    }
    if args.repeat > 1 {
        rates.sort_by(f64::total_cmp);
        let shown: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "FIGURE Invoke calls/s from one replica, median of {}: {:.0} (all: {})",
            rates.len(),
            rates[rates.len() / 2],
            shown.join(", ")
        );
    }
    Ok(())
}

/// One measurement on a fresh database; returns the Invoke calls/s.
async fn measure(args: &Args, nginx: &Nginx, pages_url: &str) -> anyhow::Result<f64> {
    let pace = match args.max_invokes_per_second {
        0 => String::new(),
        n => format!("max_invokes_per_second = {n}"),
    };
    let app = TestApp::builder()
        .max_connections(args.pool)
        .toml(&format!(
            "[lambda]\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:{}\"\ninvoke_timeout = \"10s\"\n{}",
            nginx.port,
            fanfare_testkit::schedule("bench")
                .lambda("bench-crawler")
                .pages(&format!(r#"{{ http = "{pages_url}" }}"#))
                .extract(r#"{ price = ".price", name = "h1" }"#)
                .text("page_timeout", "1h")
                .key("max_in_flight", args.pages)
                .key("max_pages", args.pages.max(1_000_000))
                .raw(&pace)
        ))
        .spawn()
        .await;
    let database: String = app.database.rsplit('/').next().unwrap_or_default().into();

    let requests_before = nginx.requests()?;
    let nginx_cpu_before = nginx.cpu_seconds();
    let pg_before = postgres_cpu(&app, &database).await;
    let self_before = self_cpu_seconds();
    let started = Instant::now();
    let run_id = app.trigger("bench").await;

    // Poll the daemon's own count of Invoke calls until every page has had
    // one, or nothing moved for --stall seconds.
    let mut last = (0.0, Instant::now());
    let (invokes, metrics) = loop {
        let text = app.metrics().await;
        let invokes = metric_in(&text, "fanfare_invokes_total", r#"schedule="bench""#);
        if invokes >= args.pages as f64 {
            break (invokes, text);
        }
        if invokes > last.0 {
            last = (invokes, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(args.stall) {
            println!(
                "  ANOMALY: stalled at {invokes} of {} invokes for {} s",
                args.pages, args.stall
            );
            break (invokes, text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let done_at = Utc::now();
    let wall = started.elapsed();
    let self_cpu = self_cpu_seconds() - self_before;
    let nginx_cpu = nginx.cpu_seconds() - nginx_cpu_before;
    let pg_cpu = postgres_cpu(&app, &database).await;
    let requests = nginx.requests()? - requests_before;

    let ledger: (i64, i64, i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>) = sqlx::query_as(
        "select count(*), count(*) filter (where status = 'dispatched'),
             count(*) filter (where attempt <> 1), min(dispatched_at), max(dispatched_at)
         from pages where run_id = $1",
    )
    .bind(run_id)
    .fetch_one(&app.pool)
    .await?;
    let (total, dispatched, not_once, first, last_claim) = ledger;
    let listed_at: Option<DateTime<Utc>> =
        sqlx::query_scalar("select listed_at from runs where id = $1")
            .bind(run_id)
            .fetch_one(&app.pool)
            .await?;
    let first = first.ok_or_else(|| anyhow!("no page of run {run_id} was dispatched"))?;
    let last_claim = last_claim.unwrap_or(first);

    let accepted = metric_in(&metrics, "fanfare_invokes_total", r#"outcome="accepted""#);
    if accepted != invokes {
        println!(
            "  ANOMALY: {} of {invokes} invokes were not accepted",
            invokes - accepted
        );
    }
    if total != args.pages as i64 || dispatched != total || not_once != 0 {
        println!(
            "  ANOMALY: the run has {total} pages, {dispatched} dispatched, {not_once} not on attempt 1"
        );
    }
    let window = seconds(done_at - first);
    let rate = invokes / window;
    println!(
        "FIGURE Invoke calls/s from one replica: {rate:.0} ({invokes} invokes in {window:.2} s, \
         first claim to last invoke; nginx answered {requests} requests)"
    );
    println!(
        "FIGURE claims: first to last claim {:.2} s; trigger to last invoke {:.2} s",
        seconds(last_claim - first),
        wall.as_secs_f64()
    );
    match listed_at {
        Some(listed) if listed > first => {
            let after: i64 = sqlx::query_scalar(
                "select count(*) from pages where run_id = $1 and dispatched_at >= $2",
            )
            .bind(run_id)
            .bind(listed)
            .fetch_one(&app.pool)
            .await?;
            let span = seconds(done_at - listed);
            println!(
                "FIGURE listing done {:.2} s after the first claim; after it: {after} invokes in \
                 {span:.2} s = {:.0}/s",
                seconds(listed - first),
                after as f64 / span
            );
        }
        Some(_) => println!("FIGURE listing done before the first claim"),
        None => println!("  ANOMALY: the run's listing is not done"),
    }
    let per_1000 = |cpu: f64| cpu / invokes * 1000.0;
    println!(
        "FIGURE CPU s: daemon (this process) {self_cpu:.2} ({:.0}% of a core over the window, \
         {:.3} s per 1,000 invokes); nginx {nginx_cpu:.2} ({:.3} per 1,000); Postgres backends {}",
        self_cpu / window * 100.0,
        per_1000(self_cpu),
        per_1000(nginx_cpu),
        match (pg_before, pg_cpu) {
            (Some(b), Some(a)) => format!("{:.2} ({:.3} per 1,000)", a - b, per_1000(a - b)),
            _ => "n/a (Postgres is not on this machine)".into(),
        }
    );
    app.stop().await;
    Ok(rate)
}

fn seconds(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// Serves a JSON list of `pages` distinct URLs; returns its URL.
async fn serve_page_list(pages: usize) -> anyhow::Result<String> {
    let urls = (1..=pages).map(|i| format!("https://shop.example/products/{i}"));
    Ok(fanfare_testkit::bench::serve_page_list(urls).await?)
}

/// nginx as a Lambda Invoke API that accepts every Event invoke, in the
/// foreground, with its own configuration in a temporary directory.
struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Nginx {
    fn start(binary: &Path, workers: usize) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("fanfare-bench-nginx-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        // A free port: bound and released (nginx binds it right after).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let d = dir.display();
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_body_buffer_size 512k;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /nginx_status {{
            stub_status;
        }}
        location ~ ^/2015-03-31/functions/[^/]+/invocations$ {{
            default_type application/json;
            add_header x-amzn-RequestId $request_id always;
            return 202 '{{}}';
        }}
        location / {{
            return 404;
        }}
    }}
}}
"#
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let log = std::fs::File::create(dir.join("stderr.log"))?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut nginx = Self { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if nginx.requests().is_ok() {
                return Ok(nginx);
            }
            if let Some(status) = nginx.child.try_wait()? {
                let said = std::fs::read_to_string(nginx.dir.join("stderr.log"))
                    .unwrap_or_default()
                    + &std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
                bail!("nginx exited with {status}: {said}");
            }
            if Instant::now() > deadline {
                bail!("nginx did not answer on 127.0.0.1:{port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Requests nginx has answered so far (its `stub_status`), this one
    /// included.
    fn requests(&self) -> anyhow::Result<u64> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(
            b"GET /nginx_status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        // "... server accepts handled requests\n 1 1 1 \n"
        let counts = answer
            .lines()
            .skip_while(|l| !l.contains("accepts handled requests"))
            .nth(1)
            .ok_or_else(|| anyhow!("no counts in nginx's stub_status: {answer}"))?;
        counts
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("unreadable stub_status counts: {counts}"))
    }

    /// CPU seconds used so far by the master and its workers.
    fn cpu_seconds(&self) -> f64 {
        let master = self.child.id();
        let mut total = process_cpu_seconds(master).unwrap_or(0.0);
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if proc_stat(pid).is_some_and(|s| s.ppid == master) {
                    total += process_cpu_seconds(pid).unwrap_or(0.0);
                }
            }
        }
        total
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers and exits.
        // SAFETY: kill(2) on the pid of a child this value owns.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "nginx (pid {}) did not stop within 5 s of SIGTERM; killing it",
            self.child.id()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds used so far by the Postgres backends connected to
/// `database`, when they run on this machine.
async fn postgres_cpu(app: &TestApp, database: &str) -> Option<f64> {
    let pids: Vec<i32> = sqlx::query_scalar("select pid from pg_stat_activity where datname = $1")
        .bind(database)
        .fetch_all(&app.pool)
        .await
        .ok()?;
    let seconds: Vec<f64> = pids
        .iter()
        .filter_map(|&pid| process_cpu_seconds(u32::try_from(pid).ok()?))
        .collect();
    (!seconds.is_empty()).then(|| seconds.iter().sum())
}

fn nginx_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .and_then(|s| s.strip_prefix("nginx version: ").map(str::to_string))
        .unwrap_or_else(|| "version unknown".into())
}
