//! What the benchmarks share: their command line ([`start`]), the
//! application and its runtimes ([`run_app`], [`start_app`]), `/healthz`
//! probes, latency quantiles ([`Latencies`]), CPU seconds and memory from
//! `/proc` ([`Sampler`]), the load average, and what they print about
//! where they ran.

use std::collections::HashMap;
use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fanfare::dispatch::LambdaApi;
use fanfare::startup::Overrides;
use fanfare::Settings;
use tokio_util::sync::CancellationToken;

use crate::{AppTask, RecordingLambda, ADMIN_TOKEN, CALLBACK_SECRET};

mod options;

/// Reads this benchmark's options by its usage text (see the module
/// `options`: the lines of `usage` that start with `--`); `--help` prints
/// `usage` and exits. Logs go to stderr when `RUST_LOG` is set.
pub fn start<T: serde::de::DeserializeOwned>(usage: &str) -> anyhow::Result<T> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{usage}");
        std::process::exit(0);
    }
    let parsed = options::parse(usage, args)?;
    if std::env::var_os("RUST_LOG").is_some() {
        fanfare::telemetry::init();
    }
    Ok(parsed)
}

/// The command that runs this measurement again: `cargo bench --bench
/// NAME --` and every option of `usage` as given or defaulted.
pub fn reproduce(bench: &str, usage: &str) -> String {
    match options::command_line(usage, std::env::args().skip(1)) {
        Ok(options) => format!("cargo bench --bench {bench} -- {options}"),
        Err(e) => format!("(not known: {e})"),
    }
}

/// The checkout's short commit, with "(with uncommitted changes)" when
/// tracked files differ from it; "unknown" outside a git checkout.
pub fn git_commit() -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            // Read-only: `git status` must not refresh the index.
            .env("GIT_OPTIONAL_LOCKS", "0")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{head} (with uncommitted changes)")
            } else {
                head
            }
        }
        None => "unknown".into(),
    }
}

/// An integer with thousands separators (`1,000,000`).
pub fn thousands(n: impl std::fmt::Display) -> String {
    let text = n.to_string();
    let (sign, digits) = match text.strip_prefix('-') {
        Some(digits) => ("-", digits),
        None => ("", text.as_str()),
    };
    let mut out = String::from(sign);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Runs `work` on a fresh database `fanfare_bench_<uuid>` on the server of
/// `DATABASE_URL`, and drops it afterwards, whatever `work` returned,
/// unless `keep` (then its name is printed).
pub async fn with_bench_database<T, F, Fut>(keep: bool, work: F) -> anyhow::Result<T>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    use anyhow::Context;
    use sqlx::{Connection, Executor, PgConnection};
    let admin_url = crate::admin_database_url();
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .with_context(|| format!("connecting to DATABASE_URL ({admin_url})"))?;
    let name = format!("fanfare_bench_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute(format!(r#"create database "{name}""#).as_str())
        .await
        .context("creating the bench database")?;
    let mut db = url::Url::parse(&admin_url).context("DATABASE_URL is not a URL")?;
    db.set_path(&name);
    let result = work(db.to_string()).await;
    if keep {
        println!("database kept: {name}");
    } else {
        admin
            .execute(format!(r#"drop database if exists "{name}" with (force)"#).as_str())
            .await
            .context("dropping the bench database")?;
    }
    result
}

/// Asks for a checkpoint, so that the next measurement does not start with
/// the previous one's dirty buffers; a role that may not is not an error.
pub async fn checkpoint(conn: &mut sqlx::PgConnection) {
    use sqlx::Executor;
    if let Err(e) = conn.execute("checkpoint").await {
        println!("note: no checkpoint between measurements ({e})");
    }
}

/// `COPY`s `n` rows `run_id<TAB>url(i)` into `table (run_id, url)`, in
/// messages of about 1 MiB (the URLs must need no `COPY` text escapes);
/// returns the rows the server stored.
pub async fn copy_urls(
    conn: &mut sqlx::PgConnection,
    table: &str,
    run_id: uuid::Uuid,
    n: usize,
    url: impl Fn(usize) -> String,
) -> Result<u64, sqlx::Error> {
    let run = run_id.hyphenated().to_string();
    let mut copy = conn
        .copy_in_raw(&format!("copy {table} (run_id, url) from stdin"))
        .await?;
    let mut chunk = Vec::with_capacity(1 << 20);
    for i in 0..n {
        chunk.extend_from_slice(run.as_bytes());
        chunk.push(b'\t');
        chunk.extend_from_slice(url(i).as_bytes());
        chunk.push(b'\n');
        if chunk.len() >= 1 << 20 {
            copy.send(std::mem::take(&mut chunk)).await?;
            chunk.reserve(1 << 20);
        }
    }
    if !chunk.is_empty() {
        copy.send(chunk).await?;
    }
    copy.finish().await
}

/// The `q` quantile (0..=1) of `values`, nearest rank; 0 when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize]
}

/// What `/proc/PID/stat` says of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    /// Its parent.
    pub ppid: u32,
    /// User and system CPU time, in clock ticks.
    pub ticks: u64,
}

/// `/proc/PID/stat` of `pid`, if it is running.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(ProcStat {
        ppid: fields.get(1)?.parse().ok()?,
        ticks: fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?,
    })
}

/// User and system CPU seconds of process `pid` so far.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(proc_stat(pid)?.ticks as f64 / hz)
}

/// CPU seconds used so far by each Postgres backend connected to
/// `database` (read through `pool`), by process id, when the server runs
/// on this machine. Two readings give a workload's Postgres CPU with
/// [`postgres_cpu_since`]; backends of other databases (other tests,
/// other benches on the same server) are not counted.
pub async fn postgres_cpu(pool: &sqlx::PgPool, database: &str) -> HashMap<u32, f64> {
    let pids: Vec<i32> = sqlx::query_scalar("select pid from pg_stat_activity where datname = $1")
        .bind(database)
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    pids.into_iter()
        .filter_map(|pid| {
            let pid = u32::try_from(pid).ok()?;
            Some((pid, process_cpu_seconds(pid)?))
        })
        .collect()
}

/// The CPU seconds `after`'s backends used since `before` (a backend
/// started in between counts from zero; one that ended in between is
/// lost, so the pool should keep its connections); `None` when no backend
/// could be read (a server on another machine).
pub fn postgres_cpu_since(before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> Option<f64> {
    (!after.is_empty()).then(|| {
        after
            .iter()
            .map(|(pid, s)| s - before.get(pid).copied().unwrap_or(0.0))
            .sum()
    })
}

/// User and system CPU seconds of the calling thread so far
/// (`getrusage(RUSAGE_THREAD)`): a benchmark's load threads read it before
/// they end, so the process's CPU less theirs is the server's.
pub fn thread_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is valid, and getrusage writes only it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage of this stack frame.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` has them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// The `q` quantile of `sorted` latencies, nearest rank above; `None`
/// when there are none.
pub fn duration_quantile(sorted: &[std::time::Duration], q: f64) -> Option<std::time::Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

/// `d` in milliseconds; NaN for none.
pub fn millis(d: Option<std::time::Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// Raises this process's soft open-file limit to the hard one (a load of
/// thousands of connections in one process); returns both.
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
    Ok((limit.rlim_cur as u64, limit.rlim_max as u64))
}

/// Prints the machine line every benchmark starts with: cores, load
/// average, the checkout's commit.
pub fn print_machine() {
    println!(
        "FIGURE machine cores={} load_average={} commit={}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        git_commit()
    );
}

/// The runtimes of a benchmark that runs the application in-process: a
/// multi-threaded one for the application ([`app_runtime`]: `app_threads`
/// workers, or one per core), and a current-thread one for the load, so
/// that the load's queueing does not show as the server's latency.
pub fn runtimes(
    app_threads: Option<usize>,
) -> std::io::Result<(tokio::runtime::Runtime, tokio::runtime::Runtime)> {
    let app = app_runtime(app_threads).build()?;
    let load = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok((app, load))
}

/// Serves `urls` as a JSON array at `http://127.0.0.1:PORT/pages.json` on
/// a task of its own (a schedule's `pages = { http = … }`); returns that
/// URL.
pub async fn serve_page_list(urls: impl IntoIterator<Item = String>) -> std::io::Result<String> {
    use axum::routing::get;
    let urls: Vec<String> = urls.into_iter().collect();
    let body = axum::body::Bytes::from(serde_json::to_vec(&urls)?);
    let app = axum::Router::new().route(
        "/pages.json",
        get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/pages.json", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// Polls `GET /v1/runs/{run}` every 200 ms until the run is finished and
/// returns its view, or `None` once `deadline` has passed (a benchmark
/// reports a run that did not finish instead of panicking).
pub async fn finished_by(
    client: &reqwest::Client,
    address: &str,
    run: uuid::Uuid,
    deadline: std::time::Instant,
) -> reqwest::Result<Option<serde_json::Value>> {
    let path = format!("/v1/runs/{run}");
    loop {
        let (_, body) = crate::api::get(client, address, crate::ADMIN_TOKEN, &path).await?;
        if body["status"] == "finished" {
            return Ok(Some(body));
        }
        if std::time::Instant::now() > deadline {
            return Ok(None);
        }
        // Each read counts the run's pages in Postgres: reading more often
        // would load the server the bench measures.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A run a benchmark triggered and waited for, with what it cost.
pub struct TimedRun {
    /// The run.
    pub run: uuid::Uuid,
    /// Its `GET /v1/runs/{id}` view once finished.
    pub view: serde_json::Value,
    /// Trigger to finished.
    pub seconds: f64,
    /// This process's CPU meanwhile.
    pub cpu_seconds: f64,
    /// The CPU of the Postgres backends serving `database` meanwhile
    /// (`None`: not on this machine).
    pub pg_cpu_seconds: Option<f64>,
}

/// Triggers `schedule`, waits until its run is finished (an error after
/// `timeout`) and measures its wall time, this process's CPU and that of
/// the Postgres backends serving `database`.
pub async fn timed_run(
    client: &reqwest::Client,
    address: &str,
    schedule: &str,
    timeout: Duration,
    (pool, database): (&sqlx::PgPool, &str),
) -> anyhow::Result<TimedRun> {
    let pid = std::process::id();
    let pg_before = postgres_cpu(pool, database).await;
    let cpu_before = process_cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    let run = crate::trigger(client, address, ADMIN_TOKEN, schedule).await;
    let view = finished_by(client, address, run, started + timeout)
        .await?
        .with_context(|| {
            format!(
                "{schedule}: the run did not finish in {} s",
                timeout.as_secs()
            )
        })?;
    Ok(TimedRun {
        run,
        view,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: process_cpu_seconds(pid).unwrap_or(0.0) - cpu_before,
        pg_cpu_seconds: postgres_cpu_since(&pg_before, &postgres_cpu(pool, database).await),
    })
}

/// A multi-threaded runtime for the application: `threads` workers, or
/// one per core.
pub fn app_runtime(threads: Option<usize>) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    builder
}

/// Runs `work` to its end on a thread named `name` with a current-thread
/// runtime of its own (a loopback site, a load, a probe that must not
/// queue behind the application's tasks).
pub fn on_thread<T, F, Fut>(name: &str, work: F) -> std::io::Result<std::thread::JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || runtime.block_on(work()))
}

/// The settings of a benchmark's application on `database_url`: the kit's
/// secrets, a free port, `pool` connections, `rest` appended.
pub fn settings(database_url: &str, pool: u32, rest: &str) -> anyhow::Result<Settings> {
    let toml = crate::config_toml_with(database_url, 0, pool, CALLBACK_SECRET, ADMIN_TOKEN, rest);
    Settings::from_toml(&toml).context("the benchmark's configuration")
}

/// Starts the application with `settings` (and `lambda` for its Lambda
/// API) on this runtime and waits until it is ready; returns its address.
pub async fn start_app(
    settings: Settings,
    lambda: Option<Arc<dyn LambdaApi>>,
) -> anyhow::Result<(String, AppTask)> {
    let overrides = Overrides {
        lambda,
        ..Default::default()
    };
    let (address, app) = AppTask::start(settings, overrides).await;
    let client = reqwest::Client::new();
    anyhow::ensure!(
        crate::wait_ready(&client, &address, Duration::from_secs(30)).await,
        "the application did not become ready"
    );
    Ok((address, app))
}

/// Runs the application on `app` with a [`RecordingLambda`] for its Lambda
/// API, and `work` (given its address and the stand-in) on `load`, so that
/// the load's CPU and queueing are not the application's; then stops the
/// application.
pub fn run_app<T, F, Fut>(
    (app, load): &(tokio::runtime::Runtime, tokio::runtime::Runtime),
    settings: Settings,
    work: F,
) -> anyhow::Result<T>
where
    F: FnOnce(String, Arc<RecordingLambda>) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let lambda = Arc::new(RecordingLambda::default());
    let stand_in = lambda.clone() as Arc<dyn LambdaApi>;
    let (address, task) = app.block_on(start_app(settings, Some(stand_in)))?;
    let result = load.block_on(work(address, lambda));
    app.block_on(task.stop());
    result
}

/// Waits until `lambda` has recorded `n` invokes and returns them; gives up
/// when `stall` passes without a new one.
pub async fn dispatched(
    lambda: &RecordingLambda,
    n: usize,
    stall: Duration,
) -> anyhow::Result<Vec<fanfare_crawler::contract::CrawlRequest>> {
    let mut seen = 0;
    loop {
        let notified = lambda.invoked.notified();
        let now = lambda.events.lock().expect("never poisoned").len();
        if now >= n {
            return Ok(lambda.requests());
        }
        if now > seen {
            seen = now;
        } else if tokio::time::timeout(stall, notified).await.is_err() {
            anyhow::bail!(
                "fan-out stalled: {now} of {n} pages dispatched after {stall:?} without progress"
            );
        }
    }
}

/// Sends `request(i)` every `interval` until `stop`; returns the latencies
/// of 200 answers and the number of other answers (or failures).
pub async fn probe<F, Fut>(
    interval: Duration,
    stop: CancellationToken,
    request: F,
) -> (Vec<Duration>, usize)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = reqwest::Result<reqwest::Response>>,
{
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let sent = Instant::now();
        match request(i).await {
            Ok(r) if r.status() == 200 => {
                let _ = r.bytes().await;
                latencies.push(sent.elapsed());
            }
            _ => errors += 1,
        }
    }
    (latencies, errors)
}

/// `GET /healthz` every `interval` from a thread of its own, until
/// [`HealthzProbe::finish`].
pub struct HealthzProbe {
    stop: CancellationToken,
    thread: std::thread::JoinHandle<(Vec<Duration>, usize)>,
}

impl HealthzProbe {
    /// Starts probing the application at `address`.
    pub fn start(address: &str, interval: Duration) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let url = format!("{address}/healthz");
        let until = stop.clone();
        let thread = on_thread("healthz", move || async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default();
            probe(interval, until, |_| client.get(&url).send()).await
        })?;
        Ok(Self { stop, thread })
    }

    /// Stops probing; returns the latencies of 200 answers and the number
    /// of other answers.
    pub fn finish(self) -> Latencies {
        self.stop.cancel();
        let (latencies, failed) = self.thread.join().unwrap_or_default();
        Latencies::new(latencies, failed)
    }
}

/// Latencies, sorted, and how many requests got no good answer.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    sorted: Vec<Duration>,
    /// Requests without a good answer.
    pub failed: usize,
}

impl Latencies {
    /// `latencies` in any order.
    pub fn new(mut latencies: Vec<Duration>, failed: usize) -> Self {
        latencies.sort();
        Self {
            sorted: latencies,
            failed,
        }
    }

    /// How many were measured.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether none were.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The `q` quantile in milliseconds (nearest rank above); NaN for none.
    pub fn ms(&self, q: f64) -> f64 {
        millis(duration_quantile(&self.sorted, q))
    }

    /// The longest in milliseconds; NaN for none.
    pub fn max_ms(&self) -> f64 {
        millis(self.sorted.last().copied())
    }

    /// The `q` quantile in seconds; NaN for none.
    pub fn secs(&self, q: f64) -> f64 {
        duration_quantile(&self.sorted, q).map_or(f64::NAN, |d| d.as_secs_f64())
    }
}

/// User and system CPU seconds of this process so far.
pub fn self_cpu_seconds() -> f64 {
    process_cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// A field of `/proc/PID/status` (of this process for `None`) as a number:
/// `VmRSS:`, `VmHWM:`, `RssAnon:` in kB, `Threads:`.
pub fn status_field(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples a reading (memory, in kB) every so often on a thread of its
/// own: the last value, and the peak since the start or [`Sampler::reset_peak`].
pub struct Sampler {
    last: Arc<AtomicU64>,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    read: Arc<dyn Fn() -> Option<u64> + Send + Sync>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    /// Reads `read` every `every` (a `None` is skipped: the process is gone).
    pub fn start(
        every: Duration,
        read: impl Fn() -> Option<u64> + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let read: Arc<dyn Fn() -> Option<u64> + Send + Sync> = Arc::new(read);
        let (last, peak, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = {
            let (last, peak, stop, read) = (last.clone(), peak.clone(), stop.clone(), read.clone());
            std::thread::Builder::new()
                .name("sampler".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(v) = read() {
                            last.store(v, Ordering::Relaxed);
                            peak.fetch_max(v, Ordering::Relaxed);
                        }
                        std::thread::sleep(every);
                    }
                })?
        };
        Ok(Self {
            last,
            peak,
            stop,
            read,
            thread: Some(thread),
        })
    }

    /// `VmRSS` of process `pid` (this one for `None`) every 50 ms.
    pub fn rss(pid: Option<u32>) -> std::io::Result<Self> {
        Self::start(Duration::from_millis(50), move || {
            status_field(pid, "VmRSS:")
        })
    }

    /// The last reading.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    /// The highest reading since the start or the last reset.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Starts a new peak from a reading taken now; returns that reading.
    pub fn reset_peak(&self) -> u64 {
        let now = (self.read)().unwrap_or_else(|| self.last());
        self.last.store(now, Ordering::Relaxed);
        self.peak.store(now, Ordering::Relaxed);
        now
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

/// A body generated chunk by chunk as it is sent: `head`, then `item(i)`
/// for `i` in `0..count` (in chunks of about 64 KiB), then `tail`.
pub fn generated_body(
    head: String,
    count: usize,
    item: impl Fn(usize) -> String + Send + Sync + 'static,
    tail: String,
) -> axum::body::Body {
    use axum::body::Bytes;
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
    axum::body::Body::from_stream(futures::stream::iter(
        chunks.map(Ok::<_, std::convert::Infallible>),
    ))
}
