//! Event-stream benchmark: many console event streams of one open run, as
//! a script (or a great many browser tabs) would open them. Are they capped,
//! does the run's progress cost one read of the ledger per interval however
//! many follow it, and does the daemon keep answering everything else?
//!
//! The real [`fanfare::Application`] runs on a fresh database with a
//! schedule whose pages go to a recording stand-in for the Lambda API and
//! are never reported, so its run stays open. Then:
//!
//! 1. after 11 s for Postgres's counts to settle, a window of `--seconds`
//!    (default 15) with no stream: the daemon's transactions per second
//!    (`xact_commit` of its database in `pg_stat_database`) and its CPU,
//!    `/healthz` probed every `--interval-ms` (default 20);
//! 2. `--sessions` (default 5) console sessions open `--attempts` (default
//!    5,000) event streams of the run between them, all at once; each is
//!    answered 200 (served, and held open, reading its events) or 429
//!    (refused; the refusals by limit come from the daemon's
//!    `fanfare_console_event_streams_refused_total`);
//! 3. once every attempt has its answer, a window of `--seconds` with the
//!    served streams open, measured as in 1.
//!
//! Figures: served and refused; `/healthz` p50, p99 and max in each window
//! (target p99 ≤ 100 ms); transactions per second in each window and their
//! difference, the part due to the streams (target: at most one per open
//! run per poll interval, here 1/s); the load average (`/proc/loadavg`);
//! the daemon's CPU-seconds per 1,000 attempts (the burst in 2) and per
//! second of each window. The daemon's CPU is that of its runtime's
//! threads (named `fanfare-app`, read from `/proc/self/task/*/stat`); the
//! clients and probes run on a thread of their own, `bench-load`, and
//! Postgres in its own processes (the load average counts them all).
//!
//! It stops by itself (about `2 × --seconds` plus 11 s and the burst, under
//! a minute with the defaults), talks only to loopback, asserts nothing about
//! speed and drops its database at the end.
//!
//! ```sh
//! cargo bench --bench event_streams
//! cargo bench --bench event_streams -- --sessions 40   # past the replica's limit too
//! ```
//!
//! It needs a Postgres it may create databases on: `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Logs are off unless
//! `RUST_LOG` is set.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use fanfare::dispatch::LambdaApi;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use fanfare_testkit as common;

use common::bench::{
    git_commit, load_average, raise_open_file_limit, thousands, with_bench_database, Latencies,
};
use common::{RecordingLambda, ADMIN_TOKEN};

/// The name of the application runtime's threads, whose CPU is the daemon's.
const APP_THREAD: &str = "fanfare-app";
/// Postgres counts a backend's transactions when it flushes its statistics,
/// at the latest 10 s after them (PGSTAT_IDLE_INTERVAL): the first window
/// starts once the start-up's transactions have been counted.
const SETTLE: Duration = Duration::from_secs(11);

#[derive(Debug, serde::Deserialize)]
struct Args {
    attempts: usize,
    sessions: usize,
    seconds: u64,
    interval_ms: u64,
    app_threads: Option<usize>,
    keep_database: bool,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
fanfare against thousands of console event streams of one run

  --attempts N          event-stream requests, all at once [default: 5000]
  --sessions N          console sessions the requests are spread over [default: 5]
  --seconds N           length of each measured window, in seconds [default: 15]
  --interval-ms N       time between two `/healthz` probes, in milliseconds [default: 20]
  --app-threads N       worker threads of the application's runtime (default: one per core)
  --keep-database       keep the database (its name is printed)
";

fn main() -> anyhow::Result<()> {
    let args: Args = common::bench::start(USAGE)?;
    ensure!(args.attempts > 0, "--attempts must be at least 1");
    ensure!(args.sessions > 0, "--sessions must be at least 1");
    ensure!(args.interval_ms > 0, "--interval-ms must be at least 1");
    let (soft, hard) = raise_open_file_limit()?;
    println!("commit {}", git_commit());
    println!("FIGURE open_files soft_limit={soft} hard_limit={hard}");
    ensure!(
        soft >= 2 * args.attempts as u64 + 256,
        "the open-file limit ({soft}) is too low for {} connections in one process: raise it (ulimit -n) or pass fewer --attempts",
        args.attempts
    );
    let app_runtime = common::bench::app_runtime(args.app_threads)
        .thread_name(APP_THREAD)
        .build()?;
    app_runtime.block_on(with_bench_database(args.keep_database, |url| async move {
        let name = url.rsplit('/').next().unwrap_or_default().to_string();
        let schedule = common::lambda_schedule_block("bench", 10, "", "");
        let settings = common::bench::settings(&url, 10, &schedule)?;
        let limits = (
            settings.server.max_event_streams,
            settings.server.max_event_streams_per_session,
        );
        let lambda = Arc::new(RecordingLambda::default());
        let stand_in = lambda.clone() as Arc<dyn LambdaApi>;
        let (address, app) = common::bench::start_app(settings, Some(stand_in)).await?;
        // The load runs on a thread of its own, so that its CPU is not
        // counted as the daemon's and the probes do not queue behind it.
        let load = common::bench::on_thread("bench-load", move || async move {
            measure(&args, &address, &lambda, &name, limits).await
        })?;
        let measured = tokio::task::spawn_blocking(move || load.join()).await;
        app.stop().await;
        measured?.map_err(|_| anyhow!("the load thread panicked"))?
    }))
}

/// What one window measured.
struct Window {
    seconds: f64,
    commits: i64,
    cpu: Duration,
    healthz: Latencies,
    /// `/proc/loadavg` at its end.
    loadavg: String,
}

impl Window {
    fn commits_per_second(&self) -> f64 {
        self.commits as f64 / self.seconds
    }

    fn print(&self, name: &str) {
        let latencies = &self.healthz;
        println!(
            "FIGURE window={name} seconds={:.1} xact_per_s={:.2} daemon_cpu_s_per_s={:.3} healthz_requests={} healthz_not_200={} healthz_p50_ms={:.1} healthz_p99_ms={:.1} healthz_max_ms={:.1} loadavg=\"{}\"",
            self.seconds,
            self.commits_per_second(),
            self.cpu.as_secs_f64() / self.seconds,
            latencies.len() + latencies.failed,
            latencies.failed,
            latencies.ms(0.50),
            latencies.ms(0.99),
            latencies.max_ms(),
            self.loadavg,
        );
    }
}

/// How one event-stream request went.
enum Attempt {
    /// 200: the number of events it read until told to stop.
    Served(usize),
    /// 429.
    Refused,
    /// Another answer.
    Other(u16),
    /// No answer.
    Failed,
}

async fn measure(
    args: &Args,
    address: &str,
    lambda: &RecordingLambda,
    database: &str,
    (limit_total, limit_per_session): (usize, usize),
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut stats = PgConnection::connect(&common::admin_database_url())
        .await
        .context("connecting to DATABASE_URL for pg_stat_database")?;
    let run = common::trigger(&http, address, ADMIN_TOKEN, "bench").await;
    lambda.wait_for(10).await;
    wait_listed(&http, address, run).await?;
    println!(
        "FIGURE setup attempts={} sessions={} limit_total={limit_total} limit_per_session={limit_per_session} poll_interval_ms=1000 open_runs=1 window_s={} settle_s={} cores={}",
        thousands(args.attempts),
        args.sessions,
        args.seconds,
        SETTLE.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let window_for = Duration::from_secs(args.seconds);
    let interval = Duration::from_millis(args.interval_ms);
    tokio::time::sleep(SETTLE).await;
    let idle = window(&mut stats, database, address, interval, window_for).await?;
    idle.print("no_streams");

    // Per session a cookie and a client whose connections are closed after
    // their answer (not kept idle, which would hold one of the server's
    // connections per refusal for its idle timeout).
    let mut sessions = Vec::new();
    for _ in 0..args.sessions {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()?;
        sessions.push((client, sign_in(address).await?));
    }
    let stop = CancellationToken::new();
    let answered = Arc::new(AtomicUsize::new(0));
    let url = format!("{address}/ui/runs/{run}/events");
    let cpu_before = daemon_cpu()?;
    let burst = Instant::now();
    let attempts: Vec<_> = (0..args.attempts)
        .map(|i| {
            let (client, cookie) = sessions[i % sessions.len()].clone();
            let (url, stop, answered) = (url.clone(), stop.clone(), answered.clone());
            tokio::spawn(attempt(client, url, cookie, stop, answered))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.load(Ordering::SeqCst) < args.attempts {
        ensure!(
            Instant::now() < deadline,
            "only {} of {} attempts were answered within 60 s",
            answered.load(Ordering::SeqCst),
            args.attempts
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let burst_s = burst.elapsed().as_secs_f64();
    let burst_cpu = daemon_cpu()? - cpu_before;
    let metrics = common::metrics_text(&http, address).await;
    let open_streams = common::metric_in(&metrics, "fanfare_console_event_streams", "");

    let streaming = window(&mut stats, database, address, interval, window_for).await?;
    stop.cancel();
    let (mut served, mut refused, mut failed, mut events) = (0, 0, 0, 0);
    let mut other = std::collections::BTreeMap::<u16, usize>::new();
    for handle in attempts {
        match handle.await? {
            Attempt::Served(n) => {
                served += 1;
                events += n;
            }
            Attempt::Refused => refused += 1,
            Attempt::Other(status) => *other.entry(status).or_default() += 1,
            Attempt::Failed => failed += 1,
        }
    }
    let refused_by = |limit: &str| {
        common::metric_in(
            &metrics,
            "fanfare_console_event_streams_refused_total",
            &format!("limit=\"{limit}\""),
        )
    };
    println!(
        "FIGURE attempts={} served={served} refused={refused} refused_session_limit={} refused_replica_limit={} other_status={other:?} failed={failed} open_streams_gauge={open_streams} burst_s={burst_s:.2} events_read={}",
        thousands(args.attempts),
        refused_by("session"),
        refused_by("replica"),
        thousands(events),
    );
    streaming.print("streams_open");
    let attributable = streaming.commits_per_second() - idle.commits_per_second();
    println!(
        "FIGURE streams_xact_per_s={attributable:.2} target_at_most=1.00 (one open run, one read per 1 s interval)"
    );
    println!(
        "FIGURE daemon_cpu_s_per_1000_attempts={:.3} burst_cpu_s={:.3}",
        burst_cpu.as_secs_f64() * 1000.0 / args.attempts as f64,
        burst_cpu.as_secs_f64(),
    );
    Ok(())
}

/// One event-stream request: a 200 is held open, reading its events,
/// until `stop`.
async fn attempt(
    client: reqwest::Client,
    url: String,
    cookie: String,
    stop: CancellationToken,
    answered: Arc<AtomicUsize>,
) -> Attempt {
    let response = client
        .get(&url)
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await;
    answered.fetch_add(1, Ordering::SeqCst);
    let mut response = match response {
        Ok(r) if r.status() == 200 => r,
        Ok(r) if r.status() == 429 => {
            let _ = r.bytes().await;
            return Attempt::Refused;
        }
        Ok(r) => return Attempt::Other(r.status().as_u16()),
        Err(_) => return Attempt::Failed,
    };
    let mut events = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Attempt::Served(events),
            chunk = response.chunk() => match chunk {
                Ok(Some(bytes)) => {
                    events += bytes.windows(7).filter(|w| w == b"event: ").count();
                }
                _ => return Attempt::Served(events),
            },
        }
    }
}

/// Measures `for`: the database's commits, the daemon's CPU and `/healthz`.
async fn window(
    stats: &mut PgConnection,
    database: &str,
    address: &str,
    interval: Duration,
    r#for: Duration,
) -> anyhow::Result<Window> {
    let http = reqwest::Client::new();
    let url = format!("{address}/healthz");
    // The probe's connection is open before the window starts.
    http.get(&url).send().await?.bytes().await?;
    let started = Instant::now();
    let commits_before = commits(stats, database).await?;
    let cpu_before = daemon_cpu()?;
    let stop = CancellationToken::new();
    let probing = common::bench::probe(interval, stop.clone(), |_| http.get(&url).send());
    let stopper = async {
        tokio::time::sleep(r#for).await;
        stop.cancel();
    };
    let ((healthz, healthz_failed), ()) = tokio::join!(probing, stopper);
    let commits_after = commits(stats, database).await?;
    Ok(Window {
        seconds: started.elapsed().as_secs_f64(),
        commits: commits_after - commits_before,
        cpu: daemon_cpu()? - cpu_before,
        healthz: Latencies::new(healthz, healthz_failed),
        loadavg: load_average(),
    })
}

/// Transactions committed in `database` so far.
async fn commits(stats: &mut PgConnection, database: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("select xact_commit from pg_stat_database where datname = $1")
            .bind(database)
            .fetch_one(stats)
            .await?,
    )
}

/// Signs in with the admin token; returns the `Cookie` header value.
async fn sign_in(address: &str) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let response = client
        .post(format!("{address}/ui/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await?;
    let set = response
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .context("the sign-in sets a cookie")?
        .to_str()?;
    Ok(set.split(';').next().unwrap_or_default().to_string())
}

/// Waits until the run's pages are listed.
async fn wait_listed(http: &reqwest::Client, address: &str, run: uuid::Uuid) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) =
            common::get(http, address, ADMIN_TOKEN, &format!("/v1/runs/{run}")).await?;
        if status == 200 && body["status"] != "listing" {
            ensure!(
                body["status"] != "finished",
                "the run finished early: {body}"
            );
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "run {run} still listing after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU time (user and system) of this process's threads named
/// [`APP_THREAD`]: the daemon's.
fn daemon_cpu() -> anyhow::Result<Duration> {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").context("/proc/self/task")? {
        let dir = task?.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim_end() != APP_THREAD {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised name: state is the 3rd field,
        // utime the 14th and stime the 15th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        total += field(14).unwrap_or(0) + field(15).unwrap_or(0);
    }
    Ok(Duration::from_secs_f64(total as f64 / ticks))
}
