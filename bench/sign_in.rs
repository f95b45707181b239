//! Sign-in guessing benchmark: how many wrong admin tokens does one client
//! get checked once the lockout starts, what does hammering cost the
//! daemon, and how long does a genuine sign-in wait afterwards?
//!
//! The real [`fanfare::Application`] runs on a fresh database with the
//! default lockout (`security.lockout_after_failures` 10, then 1 s doubling
//! up to 15 min). Clients are told apart by their loopback source address.
//!
//! 1. **Before**: `--genuine` sign-ins with the right token from 127.0.0.2,
//!    one after the other. Figure: p50/p99 latency.
//! 2. **Guessing**: from 127.0.0.1, `--connections` (default 4) keep-alive
//!    connections POST `/ui/login` with wrong tokens as fast as the daemon
//!    answers, ignoring `Retry-After`, for `--seconds` (default 60).
//!    Meanwhile 127.0.0.3 signs in with the right token once a second.
//!    Figures: answers by status (401: a guess checked; 429: refused
//!    unchecked), guesses checked per minute after the first 10, attempts
//!    answered per second, the last `Retry-After`; the other client's
//!    sign-in latency during the attack; the process's CPU seconds (user +
//!    system, `/proc/self/stat`) per 1,000 attempts, in all and for the
//!    daemon alone (every thread but the load generator's, which runs on the
//!    main thread); the load average (`/proc/loadavg`).
//! 3. **After**: 127.0.0.1 signs in with the right token, honouring
//!    `Retry-After` until it gets in (figure: how long it waited), and a
//!    client that never guessed (127.0.0.4) signs in once (its latency).
//!
//! It asserts nothing about speed and drops its database. The default run
//! takes about 70 s:
//!
//! ```sh
//! cargo bench --bench sign_in
//! cargo bench --bench sign_in -- --seconds 20 --connections 1
//! ```
//!
//! It needs a Postgres it may create databases on: `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Logs are off unless
//! `RUST_LOG` is set.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use fanfare::dispatch::LambdaApi;
use fanfare::startup::Overrides;
use fanfare::Settings;
use futures::FutureExt;
use reqwest::StatusCode;

use fanfare_testkit as common;

use common::bench::{duration_quantile, git_commit, load_average, millis, thousands};
use common::{AppTask, RecordingLambda};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdefghij";
const WRONG_TOKEN: &str = "not-the-admin-token-but-just-as-long!!";
const CALLBACK_SECRET: &str = "bench-callback-secret-0123456789abcdef";

#[derive(Debug, Parser)]
#[command(about = "fanfare against one client guessing the admin token")]
struct Args {
    /// How long the guessing lasts, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Keep-alive connections the guesser sends on at once.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Genuine sign-ins measured before the guessing.
    #[arg(long, default_value_t = 50)]
    genuine: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(args.seconds > 0, "--seconds must be at least 1");
    if std::env::var_os("RUST_LOG").is_some() {
        fanfare::telemetry::init();
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("fanfare sign-in guessing benchmark");
    println!(
        "  machine: {cores} cores, load average {}; commit {}",
        load_average(),
        git_commit()
    );
    println!(
        "  reproduce: cargo bench --bench sign_in -- --seconds {} --connections {} --genuine {}",
        args.seconds, args.connections, args.genuine
    );

    let app_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The load runs on this (the main) thread, so that its CPU time can be
    // told from the daemon's.
    let load_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let db = app_runtime.block_on(common::fresh_database());
    let result = (|| {
        let lambda = Arc::new(RecordingLambda::default());
        let (address, app) = app_runtime.block_on(AppTask::start(
            settings(&db)?,
            Overrides {
                lambda: Some(lambda as Arc<dyn LambdaApi>),
                ..Default::default()
            },
        ));
        let measured = load_runtime.block_on(measure(&args, &address));
        app_runtime.block_on(app.stop());
        measured
    })();
    drop(db); // the kit's guard drops the database
    result
}

fn settings(db: &str) -> anyhow::Result<Settings> {
    let toml = common::config_toml_with(
        db,
        0,
        4,
        CALLBACK_SECRET,
        ADMIN_TOKEN,
        &common::lambda_schedule_block("bench", 1, "", ""),
    );
    Settings::from_toml(&toml).context("the benchmark's configuration")
}

/// A keep-alive client whose connections come from `from`, not following
/// redirects.
fn client_from(from: &str) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>()?)
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// One sign-in: its status, `Retry-After` (seconds) and latency.
async fn sign_in(
    client: &reqwest::Client,
    address: &str,
    token: &str,
) -> anyhow::Result<(StatusCode, Option<u64>, Duration)> {
    let sent = Instant::now();
    let resp = client
        .post(format!("{address}/ui/login"))
        .form(&[("token", token)])
        .send()
        .await?;
    let status = resp.status();
    let retry = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    resp.bytes().await?;
    Ok((status, retry, sent.elapsed()))
}

async fn measure(args: &Args, address: &str) -> anyhow::Result<()> {
    let started = Instant::now();

    // 1. Genuine sign-ins before any guessing.
    let genuine = client_from("127.0.0.2")?;
    let mut before = Vec::new();
    for _ in 0..args.genuine {
        let (status, _, took) = sign_in(&genuine, address, ADMIN_TOKEN).await?;
        ensure!(
            status == StatusCode::SEE_OTHER,
            "a genuine sign-in got {status}"
        );
        before.push(took);
    }
    before.sort();
    println!(
        "FIGURE genuine_before sign_ins={} p50_ms={:.2} p99_ms={:.2}",
        before.len(),
        millis(duration_quantile(&before, 0.50)),
        millis(duration_quantile(&before, 0.99)),
    );

    // 2. Guessing from 127.0.0.1, another client signing in meanwhile.
    let guesser = client_from("127.0.0.1")?;
    let unauthorized = Arc::new(AtomicU64::new(0));
    let throttled = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let last_retry = Arc::new(AtomicU64::new(0));
    let checked_at: Arc<std::sync::Mutex<Vec<Duration>>> = Arc::default();
    let cpu_before = cpu_seconds();
    let main_before = main_thread_cpu_seconds();
    let attack_started = Instant::now();
    let until = attack_started + Duration::from_secs(args.seconds);
    let loops = (0..args.connections).map(|_| {
        let guesser = guesser.clone();
        let (unauthorized, throttled, other, last_retry, checked_at) = (
            unauthorized.clone(),
            throttled.clone(),
            other.clone(),
            last_retry.clone(),
            checked_at.clone(),
        );
        async move {
            while Instant::now() < until {
                match sign_in(&guesser, address, WRONG_TOKEN).await {
                    Ok((StatusCode::UNAUTHORIZED, _, _)) => {
                        unauthorized.fetch_add(1, Ordering::Relaxed);
                        checked_at
                            .lock()
                            .expect("no panics hold it")
                            .push(attack_started.elapsed());
                    }
                    Ok((StatusCode::TOO_MANY_REQUESTS, retry, _)) => {
                        throttled.fetch_add(1, Ordering::Relaxed);
                        last_retry.store(retry.unwrap_or(0), Ordering::Relaxed);
                    }
                    Ok(_) | Err(_) => {
                        other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    let bystander = client_from("127.0.0.3")?;
    let during = async {
        let mut latencies = Vec::new();
        let mut refused = 0u64;
        while Instant::now() + Duration::from_secs(1) < until {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match sign_in(&bystander, address, ADMIN_TOKEN).await {
                Ok((StatusCode::SEE_OTHER, _, took)) => latencies.push(took),
                _ => refused += 1,
            }
        }
        (latencies, refused)
    };
    let ((), (mut during, refused)) =
        tokio::join!(futures::future::join_all(loops).map(|_| ()), during);
    let attack = attack_started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    let load_cpu = main_thread_cpu_seconds() - main_before;
    let unauthorized = unauthorized.load(Ordering::Relaxed);
    let throttled = throttled.load(Ordering::Relaxed);
    let attempts = unauthorized + throttled + other.load(Ordering::Relaxed);
    let checked = checked_at.lock().expect("no panics hold it").clone();
    // Guesses checked after the first 10, per minute of the time after the 10th.
    let (after_first, tenth) = match checked.get(9) {
        Some(&tenth) => (unauthorized.saturating_sub(10), tenth),
        None => (0, attack),
    };
    let per_minute = after_first as f64 / (attack - tenth).as_secs_f64().max(1e-9) * 60.0;
    println!(
        "FIGURE guessing seconds={:.1} connections={} attempts={} answered_401={unauthorized} answered_429={throttled} other={} attempts_per_s={:.0} checked_after_first_10={after_first} checked_per_min_after_first_10={per_minute:.1} last_retry_after_s={}",
        attack.as_secs_f64(),
        args.connections,
        thousands(attempts),
        other.load(Ordering::Relaxed),
        attempts as f64 / attack.as_secs_f64(),
        last_retry.load(Ordering::Relaxed),
    );
    let times: Vec<String> = checked
        .iter()
        .map(|t| format!("{:.1}", t.as_secs_f64()))
        .collect();
    println!("FIGURE guesses_checked_at_s [{}]", times.join(", "));
    during.sort();
    println!(
        "FIGURE other_client_during sign_ins={} refused={refused} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        during.len(),
        millis(duration_quantile(&during, 0.50)),
        millis(duration_quantile(&during, 0.99)),
        millis(during.last().copied()),
    );
    let per_k = |s: f64| s / attempts.max(1) as f64 * 1000.0;
    println!(
        "FIGURE cpu process_s={cpu:.2} per_1000_attempts_s={:.3} daemon_s={:.2} daemon_per_1000_attempts_s={:.3} load_average={}",
        per_k(cpu),
        cpu - load_cpu,
        per_k(cpu - load_cpu),
        load_average().replace(' ', "/"),
    );

    // 3. Genuine sign-ins afterwards: the guesser honouring Retry-After, and
    // a client that never guessed.
    let waited_from = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let (status, retry, _) = sign_in(&guesser, address, ADMIN_TOKEN).await?;
        match status {
            StatusCode::SEE_OTHER => break,
            StatusCode::TOO_MANY_REQUESTS => {
                tokio::time::sleep(Duration::from_secs(retry.unwrap_or(1))).await
            }
            other => anyhow::bail!("the guesser's genuine sign-in got {other}"),
        }
    }
    let waited = waited_from.elapsed();
    let fresh = client_from("127.0.0.4")?;
    let (status, _, took) = sign_in(&fresh, address, ADMIN_TOKEN).await?;
    ensure!(
        status == StatusCode::SEE_OTHER,
        "a fresh client's sign-in got {status}"
    );
    println!(
        "FIGURE genuine_after same_client_waited_s={:.2} same_client_tries={tries} other_client_ms={:.2}",
        waited.as_secs_f64(),
        millis(Some(took)),
    );
    println!(
        "FIGURE wall_seconds={:.1} load_average={}",
        started.elapsed().as_secs_f64(),
        load_average().replace(' ', "/")
    );
    Ok(())
}

/// User + system CPU seconds of a `/proc/.../stat` file (fields 14 and 15).
fn stat_cpu_seconds(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return f64::NAN;
    };
    // The command name (field 2) may hold spaces; fields after it follow ')'.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // Fields 14 and 15 are the 12th and 13th after the name and state.
    (ticks(11) + ticks(12)) / hz
}

/// The whole process's CPU seconds.
fn cpu_seconds() -> f64 {
    stat_cpu_seconds("/proc/self/stat")
}

/// The main thread's CPU seconds (the load generator's runtime).
fn main_thread_cpu_seconds() -> f64 {
    stat_cpu_seconds(&format!("/proc/self/task/{}/stat", std::process::id()))
}
