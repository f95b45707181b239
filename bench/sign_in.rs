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

use anyhow::ensure;
use futures::FutureExt;
use reqwest::StatusCode;

use fanfare_testkit as common;

use common::bench::{git_commit, load_average, self_cpu_seconds, thousands, Latencies};
use common::ADMIN_TOKEN;

#[derive(Debug, serde::Deserialize)]
struct Args {
    seconds: u64,
    connections: usize,
    genuine: usize,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
fanfare against one client guessing the admin token

  --seconds N           how long the guessing lasts, in seconds [default: 60]
  --connections N       keep-alive connections the guesser sends on at once [default: 4]
  --genuine N           genuine sign-ins measured before the guessing [default: 50]
";

fn main() -> anyhow::Result<()> {
    let args: Args = common::bench::start(USAGE)?;
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(args.seconds > 0, "--seconds must be at least 1");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("fanfare sign-in guessing benchmark");
    println!(
        "  machine: {cores} cores, load average {}; commit {}",
        load_average(),
        git_commit()
    );
    println!(
        "  reproduce: {}",
        common::bench::reproduce("sign_in", USAGE)
    );
    // The load runs on the main thread, so that its CPU time can be told
    // from the daemon's.
    let runtimes = common::bench::runtimes(None)?;
    let db = runtimes.0.block_on(common::fresh_database());
    let schedule = common::lambda_schedule_block("bench", 1, "", "");
    let settings = common::bench::settings(&db, 4, &schedule)?;
    let result = common::bench::run_app(&runtimes, settings, |address, _| async move {
        measure(&args, &address).await
    });
    drop(db); // the kit's guard drops the database
    result
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
    let before = Latencies::new(before, 0);
    println!(
        "FIGURE genuine_before sign_ins={} p50_ms={:.2} p99_ms={:.2}",
        before.len(),
        before.ms(0.50),
        before.ms(0.99),
    );

    // 2. Guessing from 127.0.0.1, another client signing in meanwhile.
    let guesser = client_from("127.0.0.1")?;
    let unauthorized = Arc::new(AtomicU64::new(0));
    let throttled = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let last_retry = Arc::new(AtomicU64::new(0));
    let checked_at: Arc<std::sync::Mutex<Vec<Duration>>> = Arc::default();
    let cpu_before = self_cpu_seconds();
    let main_before = common::bench::thread_cpu_seconds();
    let attack_started = Instant::now();
    let until = attack_started + Duration::from_secs(args.seconds);
    // A wrong token as long as the right one.
    let wrong_token = "x".repeat(ADMIN_TOKEN.len());
    let wrong_token = wrong_token.as_str();
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
                match sign_in(&guesser, address, wrong_token).await {
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
    let ((), (during, refused)) =
        tokio::join!(futures::future::join_all(loops).map(|_| ()), during);
    let attack = attack_started.elapsed();
    let cpu = self_cpu_seconds() - cpu_before;
    let load_cpu = common::bench::thread_cpu_seconds() - main_before;
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
    let during = Latencies::new(during, 0);
    println!(
        "FIGURE other_client_during sign_ins={} refused={refused} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        during.len(),
        during.ms(0.50),
        during.ms(0.99),
        during.max_ms(),
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
        took.as_secs_f64() * 1000.0,
    );
    println!(
        "FIGURE wall_seconds={:.1} load_average={}",
        started.elapsed().as_secs_f64(),
        load_average().replace(' ', "/")
    );
    Ok(())
}
