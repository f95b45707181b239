//! Callback (fan-in) benchmark: how many reports does `POST /v1/callbacks`
//! record per second, on one hot run and across many runs, against what
//! Postgres itself does for the naive one-statement-per-report transaction
//! and for the daemon's own batched statement?
//!
//! For each run count R (default 1 and 100) and client count N (default 8,
//! 32 and 128), on a fresh database:
//!
//! 1. **Fan-out** (set-up, timed but not the point): the real
//!    [`fanfare::Application`] runs R runs of one schedule, `--pages` pages
//!    in all, read from a loopback JSON list and dispatched to a recording
//!    stand-in for the Lambda API, which keeps every `CrawlRequest` with its
//!    task token.
//! 2. **Callbacks**: N concurrent clients, each with its own keep-alive
//!    `reqwest::Client`, POST a valid `succeeded` report for every page
//!    (each page exactly once, in an order shuffled across the runs) and
//!    check that every answer is 200 `{"status":"recorded"}`; anything else
//!    is counted and printed. Figures: callbacks/s over the wall time of the
//!    whole phase, p50/p99/max acknowledgement latency (request sent to
//!    answer read). Then every run must read `finished` with all its pages
//!    succeeded in the admin API.
//! 3. **pgbench, naive**: the application is stopped; in the same database
//!    R more runs with `--pgbench-pages` dispatched pages are made with SQL,
//!    and pgbench completes them with the naive transaction: one statement
//!    per report that updates the page and its run's counters
//!    ([`NAIVE_REPORT`]), at the same concurrency N. Figure: its tps.
//! 4. **pgbench, batched**: the same with the daemon's own statement
//!    (`ledger::RECORD_PAGES`), run as the daemon runs it: `recorder::WRITERS`
//!    connections, each transaction one batch of B = N / WRITERS reports
//!    (the batch the daemon forms when every client waits on a report).
//!    Figure: pages/s.
//!
//! It prints one row per measurement with `x naive` = callbacks/s ÷ naive
//! pgbench tps (issue target: >= 4 at 32 clients on one hot run, p99 <= 50
//! ms) and `of batched` = callbacks/s ÷ batched pgbench pages/s (how close
//! the HTTP path comes to the statement alone), and, with `--repeat`, the
//! medians. It asserts nothing about speed, and drops its databases.
//!
//! Run it (release build) with
//!
//! ```sh
//! cargo bench --bench callbacks                                      # 100,000 pages, R 1,100 x N 8,32,128
//! cargo bench --bench callbacks -- --pages 2000 --clients 4 --runs 1 # smoke run, seconds
//! ```
//!
//! It needs a Postgres it may create databases on: `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `pgbench` on `PATH`
//! (or `--pgbench PATH`); pgbench's client count is capped below the
//! server's `max_connections` (the row says so). Logs are off unless
//! `RUST_LOG` is set. Options: `--repeat` (measurements per combination,
//! default 1), `--pool` (the daemon's `database.max_connections`, default
//! 8: reports no longer hold a connection each), `--load-threads` (OS
//! threads running the clients, each a current-thread runtime; 0 runs them
//! on the application's runtime), `--app-threads` (worker threads of the
//! application's runtime, default one per core), `--skip-pgbench`,
//! `--keep-databases`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use axum::body::Bytes;
use fanfare::dispatch::LambdaApi;
use fanfare_crawler::contract::{CallbackAck, CallbackStatus, CrawlRequest};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use fanfare_testkit as common;

use common::bench::{load_average, process_cpu_seconds, thread_cpu_seconds, with_bench_database};
use common::{admin_database_url, succeeded, RecordingLambda, ADMIN_TOKEN};

/// What the daemon stores as `pages.result` for the report the clients send
/// (`serde_json::to_value(&PageFacts)`); the pgbench script stores the same.
const RESULT_JSON: &str = r#"{"bytes":1234,"content_sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","fetch_ms":12,"fields":{"price":"9.99"},"http_status":200,"title":"A page"}"#;

/// The naive per-report transaction: the page and its run's counters in
/// one statement, committed on its own (what fanfare ran per callback
/// before reports were batched). $1 run, $2 page, $3 status, $4 attempt,
/// $5 result, $6 error. It locks the run's row before its page's, like the
/// daemon's statement.
pub const NAIVE_REPORT: &str = "with run as (
        select id from runs where id = $1 for no key update),
    page as (
        update pages set status = $3, reported_attempt = $4, result = $5, error = $6,
            finished_at = now(), updated_at = now(), not_before = null
        where id = $2 and run_id = (select id from run) and status in ('pending', 'dispatched')
        returning run_id, status)
    update runs r set open_pages = r.open_pages - 1,
        succeeded_pages = r.succeeded_pages + (page.status = 'succeeded')::int,
        failed_pages = r.failed_pages + (page.status = 'failed')::int,
        timed_out_pages = r.timed_out_pages + (page.status = 'timed_out')::int,
        cancelled_pages = r.cancelled_pages + (page.status = 'cancelled')::int,
        status = case when r.status = 'running' and r.open_pages = 1 then 'finishing' else r.status end,
        updated_at = now()
    from page where r.id = page.run_id
    returning r.open_pages, r.status";

/// The naive pgbench script: each transaction takes the next page from a
/// sequence (and reads its run), then completes it with [`NAIVE_REPORT`].
fn naive_script() -> String {
    let statement = NAIVE_REPORT
        .replace("$1", ":run_id::uuid")
        .replace("$2", ":page_id")
        .replace("$3", "'succeeded'")
        .replace("$4", "1")
        .replace("$5", &format!("'{RESULT_JSON}'"))
        .replace("$6", "null");
    format!(
        "select :min_id + nextval('bench_page_seq') - 1 as page_id \\gset\n\
         select run_id from pages where id = :page_id \\gset\n\
         {statement};\n"
    )
}

/// The batched pgbench script: each transaction takes the next `batch`
/// pages (by id) and records them with the daemon's statement.
fn batched_script(batch: usize) -> String {
    // $10 to $12 before $1, which is their prefix.
    let statement = fanfare::ledger::RECORD_PAGES
        .replace("$10", &format!("array_fill(false, array[{batch}])"))
        .replace("$11", "array[]::bigint[]")
        .replace("$12", "array[]::bigint[]")
        .replace("$1", ":ids::bigint[]")
        .replace("$2", ":run_ids::uuid[]")
        .replace("$3", &format!("array_fill(1, array[{batch}])"))
        .replace(
            "$4",
            &format!("array_fill('succeeded'::text, array[{batch}])"),
        )
        .replace(
            "$5",
            &format!("array_fill('{RESULT_JSON}'::jsonb, array[{batch}])"),
        )
        .replace("$6", &format!("array_fill(null::jsonb, array[{batch}])"))
        .replace("$7", &format!("array_fill(null::float8, array[{batch}])"))
        .replace("$8", &format!("array_fill(0, array[{batch}])"))
        .replace("$9", &format!("array_fill(0, array[{batch}])"));
    format!(
        "select nextval('bench_page_seq') - 1 as k \\gset\n\
         select array_agg(id order by id) as ids, array_agg(run_id order by id) as run_ids \
         from pages where id >= :min_id + :k * {batch} and id < :min_id + (:k + 1) * {batch} \\gset\n\
         {};\n",
        statement.replace('\n', " ")
    )
}

#[derive(Debug, serde::Deserialize)]
struct Args {
    pages: usize,
    clients: Vec<usize>,
    runs: Vec<usize>,
    pgbench_pages: usize,
    pool: u32,
    load_threads: usize,
    app_threads: Option<usize>,
    pgbench: String,
    repeat: usize,
    skip_pgbench: bool,
    keep_databases: bool,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
fanfare callback throughput vs pgbench, naive and batched

  --pages N             pages per run [default: 100000]
  --clients N,...       concurrent clients, one measurement each [default: 8,32,128]
  --runs N,...          concurrent runs the pages are spread over, one measurement
                        each: 1 is one hot run [default: 1,100]
  --pgbench-pages N     pages pgbench completes with the naive transaction per
                        measurement [default: 20000]
  --pool N              the daemon's database.max_connections [default: 8]
  --load-threads N      OS threads running the HTTP clients (each a current-thread
                        runtime); 0 runs them as tasks on the application's
                        runtime [default: 1]
  --app-threads N       worker threads of the application's runtime (default: one per core)
  --pgbench PATH        the pgbench binary [default: pgbench]
  --repeat N            measurements per client count, each on a fresh database;
                        with more than one, the medians are printed too (the
                        machine's noise shows in the spread) [default: 1]
  --skip-pgbench        measure the daemon only
  --keep-databases      leave the bench databases in place
";

fn main() -> anyhow::Result<()> {
    let args: Args = common::bench::start(USAGE)?;
    ensure!(args.pages > 0, "--pages must be at least 1");
    ensure!(args.repeat > 0, "--repeat must be at least 1");
    ensure!(
        !args.clients.is_empty() && args.clients.iter().all(|&n| n > 0),
        "--clients must list client counts of at least 1"
    );
    ensure!(
        !args.runs.is_empty() && args.runs.iter().all(|&n| n > 0 && n <= args.pages),
        "--runs must list run counts between 1 and --pages"
    );
    let runtime = common::bench::app_runtime(args.app_threads).build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let admin_url = admin_database_url();
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .with_context(|| format!("connecting to DATABASE_URL ({admin_url})"))?;
    let server: String = sqlx::query_scalar("select current_setting('server_version')")
        .fetch_one(&mut admin)
        .await?;
    let sync_commit: String = sqlx::query_scalar("select current_setting('synchronous_commit')")
        .fetch_one(&mut admin)
        .await?;

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("fanfare callback benchmark");
    println!(
        "  machine: {cores} cores; commit {}; Postgres {server} (synchronous_commit = {sync_commit})",
        fanfare_testkit::bench::git_commit()
    );
    println!(
        "  reproduce: {}",
        common::bench::reproduce("callbacks", USAGE)
    );

    let max_connections: i64 =
        sqlx::query_scalar("select current_setting('max_connections')::int8")
            .fetch_one(&mut admin)
            .await?;
    let mut rows = Vec::new();
    let mut measurements = Vec::new();
    for &runs in &args.runs {
        for &clients in &args.clients {
            for _ in 0..args.repeat {
                measurements.push((runs, clients));
            }
        }
    }
    for (runs, clients) in measurements {
        let pages_url = serve_page_list(args.pages / runs).await?;
        let args = &args;
        let result = with_bench_database(args.keep_databases, |url| async move {
            let name = url.rsplit('/').next().unwrap_or_default();
            println!(
                "\n== {} pages over {runs} runs, {clients} clients (database {name})",
                args.pages / runs * runs
            );
            measure(args, runs, clients, max_connections, &url, &pages_url).await
        })
        .await;
        rows.push(result?);
    }
    print_table(&rows);
    Ok(())
}

/// One row of the result table.
struct Row {
    pages: usize,
    runs: usize,
    clients: usize,
    callbacks: Callbacks,
    naive: Option<PgbenchResult>,
    batched: Option<PgbenchResult>,
}

async fn measure(
    args: &Args,
    runs: usize,
    clients: usize,
    max_connections: i64,
    database_url: &str,
    pages_url: &str,
) -> anyhow::Result<Row> {
    let pages = args.pages / runs * runs;
    let lambda = Arc::new(RecordingLambda::default());
    let schedule = common::schedule("bench")
        .lambda("bench")
        .pages(&format!(r#"{{ http = "{pages_url}" }}"#))
        .extract(r#"{ price = ".price" }"#)
        .text("page_timeout", "1h")
        .key("max_in_flight", pages)
        .to_string();
    let settings = common::bench::settings(database_url, args.pool, &schedule)?;
    let stand_in = lambda.clone() as Arc<dyn LambdaApi>;
    let (address, app) = common::bench::start_app(settings, Some(stand_in)).await?;
    let http = reqwest::Client::new();

    // Fan-out: list and dispatch every page to the recorder.
    let started = Instant::now();
    let mut run_ids = Vec::with_capacity(runs);
    for _ in 0..runs {
        run_ids.push(common::trigger(&http, &address, ADMIN_TOKEN, "bench").await);
    }
    let mut requests = common::bench::dispatched(&lambda, pages, Duration::from_secs(60)).await?;
    shuffle(&mut requests);
    println!(
        "  fan-out: {} pages listed and dispatched in {:.1} s",
        requests.len(),
        started.elapsed().as_secs_f64()
    );
    let mut db = PgConnection::connect(database_url).await?;
    settle(&mut db).await?;

    // Fan-in: the measured phase.
    let callbacks = post_callbacks(requests, clients, args.load_threads).await?;
    println!(
        "  callbacks: {} in {:.2} s = {:.0}/s; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} anomalies",
        callbacks.recorded,
        callbacks.wall.as_secs_f64(),
        callbacks.per_second(),
        callbacks.p50_ms,
        callbacks.p99_ms,
        callbacks.max_ms,
        callbacks.anomalies.values().sum::<usize>()
    );
    for (what, n) in &callbacks.anomalies {
        println!("    ANOMALY x{n}: {what}");
    }
    for run_id in &run_ids {
        let (_, run) =
            common::get(&http, &address, ADMIN_TOKEN, &format!("/v1/runs/{run_id}")).await?;
        let finished = run["status"] == "finished";
        let succeeded = run["pages"]["succeeded"].as_u64().unwrap_or(0);
        if !finished || succeeded != (pages / runs) as u64 {
            println!(
                "  ANOMALY: run {run_id} is {} with {succeeded} of {} pages succeeded",
                run["status"],
                pages / runs
            );
        }
    }
    app.stop().await;

    let (naive, batched) = if args.skip_pgbench {
        (None, None)
    } else {
        // pgbench needs a connection per client; keep a few for everyone else.
        let capped = clients.min((max_connections - 10).max(1) as usize);
        if capped < clients {
            println!("  pgbench: {capped} clients, not {clients}: the server's max_connections is {max_connections}");
        }
        let naive = pgbench(args, &mut db, database_url, Pgbench::Naive, runs, capped).await?;
        println!(
            "  pgbench naive: {} pages with {} clients, {:.0} pages/s, latency average {:.3} ms",
            naive.pages, naive.clients, naive.pages_per_second, naive.latency_ms
        );
        let batch = (clients / fanfare::recorder::WRITERS).clamp(1, fanfare::recorder::MAX_BATCH);
        let batched = pgbench(
            args,
            &mut db,
            database_url,
            Pgbench::Batched(batch),
            runs,
            fanfare::recorder::WRITERS,
        )
        .await?;
        println!(
            "  pgbench batched: {} pages with {} clients in batches of {batch}, {:.0} pages/s, latency average {:.3} ms",
            batched.pages, batched.clients, batched.pages_per_second, batched.latency_ms
        );
        (Some(naive), Some(batched))
    };
    db.close().await?;
    Ok(Row {
        pages,
        runs,
        clients,
        callbacks,
        naive,
        batched,
    })
}

/// Shuffles the reports (a fixed seed: the same order every time), so that
/// the reports of many runs arrive interleaved.
fn shuffle<T>(items: &mut [T]) {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

/// Serves a JSON list of `pages` distinct URLs; returns its URL.
async fn serve_page_list(pages: usize) -> anyhow::Result<String> {
    let urls = (1..=pages).map(|i| format!("http://127.0.0.1:9/p/{i}"));
    Ok(common::bench::serve_page_list(urls).await?)
}

/// Vacuums, analyzes and checkpoints, so that both measured phases start
/// from the same kind of state (and autovacuum has nothing pressing).
async fn settle(db: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::raw_sql("vacuum analyze pages, runs")
        .execute(&mut *db)
        .await?;
    sqlx::raw_sql("checkpoint").execute(&mut *db).await?;
    Ok(())
}

/// One report to post.
struct Job {
    token: String,
    body: Bytes,
}

/// The figures of the callback phase.
struct Callbacks {
    recorded: usize,
    /// CPU seconds of this process while the reports were posted, less the
    /// load threads' own: the daemon's (NaN when the clients ran on its
    /// runtime).
    daemon_cpu: f64,
    wall: Duration,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    anomalies: BTreeMap<String, usize>,
}

impl Callbacks {
    fn per_second(&self) -> f64 {
        self.recorded as f64 / self.wall.as_secs_f64()
    }
}

/// What one client saw: latencies (µs) of recorded answers, and anomalies.
#[derive(Default)]
struct Seen {
    latencies_us: Vec<u32>,
    anomalies: BTreeMap<String, usize>,
}

async fn post_callbacks(
    requests: Vec<CrawlRequest>,
    clients: usize,
    load_threads: usize,
) -> anyhow::Result<Callbacks> {
    let callback_url: reqwest::Url = requests
        .first()
        .ok_or_else(|| anyhow!("no requests"))?
        .callback_url
        .parse()?;
    let jobs: Vec<Job> = requests
        .iter()
        .map(|r| {
            let body = succeeded(r);
            Ok(Job {
                token: format!("Bearer {}", r.callback_token),
                body: Bytes::from(serde_json::to_vec(&body)?),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let work = Arc::new(Work {
        url: callback_url,
        jobs,
        next: AtomicUsize::new(0),
    });

    let cpu_before = process_cpu_seconds(std::process::id()).unwrap_or(0.0);
    let (seen, wall, load_cpu) = if load_threads == 0 {
        let started = Instant::now();
        let seen = clients_on_this_runtime(&work, clients).await?;
        // The clients ran on the application's threads: not separable.
        (seen, started.elapsed(), f64::NAN)
    } else {
        let threads = load_threads.min(clients);
        let go = Arc::new(Barrier::new(threads + 1));
        let mut handles = Vec::new();
        for t in 0..threads {
            let share = clients / threads + usize::from(t < clients % threads);
            let work = work.clone();
            let go = go.clone();
            handles.push(std::thread::spawn(
                move || -> anyhow::Result<(Vec<Seen>, f64)> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    go.wait();
                    let seen = rt.block_on(clients_on_this_runtime(&work, share))?;
                    Ok((seen, thread_cpu_seconds()))
                },
            ));
        }
        let joined = tokio::task::spawn_blocking(move || {
            go.wait();
            let started = Instant::now();
            let mut seen = Vec::new();
            let mut load_cpu = 0.0;
            for h in handles {
                let (s, cpu) = h.join().map_err(|_| anyhow!("a load thread panicked"))??;
                seen.extend(s);
                load_cpu += cpu;
            }
            Ok::<_, anyhow::Error>((seen, started.elapsed(), load_cpu))
        })
        .await??;
        joined
    };

    let mut latencies: Vec<u32> = Vec::with_capacity(work.jobs.len());
    let mut anomalies = BTreeMap::new();
    for s in seen {
        latencies.extend(s.latencies_us);
        for (k, v) in s.anomalies {
            *anomalies.entry(k).or_insert(0) += v;
        }
    }
    latencies.sort_unstable();
    let quantile = |q: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        f64::from(latencies[rank - 1]) / 1000.0
    };
    let process_cpu = process_cpu_seconds(std::process::id()).unwrap_or(0.0) - cpu_before;
    Ok(Callbacks {
        recorded: latencies.len(),
        daemon_cpu: process_cpu - load_cpu,
        wall,
        p50_ms: quantile(0.50),
        p99_ms: quantile(0.99),
        max_ms: quantile(1.0),
        anomalies,
    })
}

/// Runs `n` clients as tasks of the current runtime until no report is
/// left; returns what each saw.
async fn clients_on_this_runtime(work: &Arc<Work>, n: usize) -> anyhow::Result<Vec<Seen>> {
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(client(work.clone()))).collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await?);
    }
    Ok(seen)
}

/// The reports, shared by the clients: each takes the next one.
struct Work {
    url: reqwest::Url,
    jobs: Vec<Job>,
    next: AtomicUsize,
}

/// One client: its own connection, posting reports until none is left.
async fn client(work: Arc<Work>) -> Seen {
    let mut seen = Seen::default();
    let http = match reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(60))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            seen.anomalies.insert(format!("building a client: {e}"), 1);
            return seen;
        }
    };
    loop {
        let i = work.next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = work.jobs.get(i) else {
            return seen;
        };
        let started = Instant::now();
        let answer = async {
            let resp = http
                .post(work.url.clone())
                .header("authorization", &job.token)
                .header("content-type", "application/json")
                .body(job.body.clone())
                .send()
                .await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        }
        .await;
        let elapsed = started.elapsed();
        let anomaly = match answer {
            Ok((status, body)) => {
                let ack: Option<CallbackAck> = serde_json::from_slice(&body).ok();
                match ack {
                    Some(CallbackAck {
                        status: CallbackStatus::Recorded,
                    }) if status == 200 => None,
                    _ => Some(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    )),
                }
            }
            Err(e) => Some(format!("request failed: {e}")),
        };
        match anomaly {
            None => seen
                .latencies_us
                .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)),
            Some(what) => *seen.anomalies.entry(what).or_insert(0) += 1,
        }
    }
}

/// Which transaction pgbench runs.
#[derive(Debug, Clone, Copy)]
enum Pgbench {
    /// [`NAIVE_REPORT`], one page per transaction.
    Naive,
    /// `ledger::RECORD_PAGES`, this many pages per transaction.
    Batched(usize),
}

/// pgbench's figures.
struct PgbenchResult {
    pages: u64,
    clients: usize,
    pages_per_second: f64,
    latency_ms: f64,
}

/// Makes `runs` more runs of dispatched pages with SQL (their pages
/// interleaved by id, as reports of concurrent runs arrive) and has pgbench
/// complete them with `kind`'s transaction.
async fn pgbench(
    args: &Args,
    db: &mut PgConnection,
    database_url: &str,
    kind: Pgbench,
    runs: usize,
    clients: usize,
) -> anyhow::Result<PgbenchResult> {
    let per_tx = match kind {
        Pgbench::Naive => 1,
        Pgbench::Batched(b) => b,
    };
    let wanted = match kind {
        Pgbench::Naive => args.pgbench_pages,
        Pgbench::Batched(_) => args.pages,
    };
    let per_client = (wanted / (clients * per_tx)).max(1);
    let pages = (per_client * clients * per_tx) as i64;
    let per_run = (pages as usize).div_ceil(runs) as i64;
    let run_ids: Vec<Uuid> = (0..runs).map(|_| Uuid::now_v7()).collect();
    sqlx::raw_sql(
        "drop sequence if exists bench_page_seq; create sequence bench_page_seq; \
         delete from pages where run_id in (select id from runs where schedule = 'pgbench'); \
         delete from runs where schedule = 'pgbench'",
    )
    .execute(&mut *db)
    .await?;
    sqlx::query(
        "insert into runs (id, schedule, scheduled_for, trigger, status, total_pages, open_pages, listed_at)
         select id, 'pgbench', now() + make_interval(secs => n), 'manual', 'running', $2, $2, now()
         from unnest($1::uuid[]) with ordinality as t(id, n)",
    )
    .bind(&run_ids)
    .bind(per_run)
    .execute(&mut *db)
    .await?;
    sqlx::query(
        "insert into pages (run_id, url, status, attempt, dispatched_at, deadline)
         select ($1::uuid[])[(g % $3) + 1], 'http://127.0.0.1:9/pgbench/' || g, 'dispatched', 1,
             now(), now() + interval '1 hour'
         from generate_series(0, $2 - 1) g",
    )
    .bind(&run_ids)
    .bind(pages)
    .bind(runs as i64)
    .execute(&mut *db)
    .await?;
    let (min_id, max_id): (i64, i64) =
        sqlx::query_as("select min(id), max(id) from pages where run_id = any($1)")
            .bind(&run_ids)
            .fetch_one(&mut *db)
            .await?;
    ensure!(
        max_id - min_id + 1 == pages,
        "the pgbench runs' page ids are not contiguous ({min_id}..={max_id})"
    );
    // Runs whose page count does not divide evenly: the counters match.
    sqlx::query(
        "update runs r set total_pages = c.n, open_pages = c.n
         from (select run_id, count(*) as n from pages where run_id = any($1) group by run_id) c
         where r.id = c.run_id",
    )
    .bind(&run_ids)
    .execute(&mut *db)
    .await?;
    settle(db).await?;

    let script = std::env::temp_dir().join(format!("fanfare-bench-{}.sql", Uuid::new_v4()));
    std::fs::write(
        &script,
        match kind {
            Pgbench::Naive => naive_script(),
            Pgbench::Batched(b) => batched_script(b),
        },
    )?;
    let url = url::Url::parse(database_url)?;
    let mut cmd = Command::new(&args.pgbench);
    cmd.args(["-n", "-M", "prepared"])
        .args(["-c", &clients.to_string()])
        .args(["-j", &clients.min(2).to_string()])
        .args(["-t", &per_client.to_string()])
        .arg("-f")
        .arg(&script)
        .args(["-D", &format!("min_id={min_id}")])
        .args(["-h", url.host_str().unwrap_or("localhost")])
        .args(["-p", &url.port().unwrap_or(5432).to_string()])
        .args([
            "-U",
            if url.username().is_empty() {
                "postgres"
            } else {
                url.username()
            },
        ])
        .arg(url.path().trim_start_matches('/'));
    if let Some(password) = url.password() {
        cmd.env("PGPASSWORD", password);
    }
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("running {}", args.pgbench))?;
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "pgbench failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let field = |prefix: &str| -> anyhow::Result<f64> {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            // "2000/2000" for the transactions processed: the first number.
            .and_then(|n| n.split('/').next()?.parse().ok())
            .ok_or_else(|| anyhow!("no {prefix:?} line in pgbench's output:\n{stdout}"))
    };
    let failed = field("number of failed transactions:").unwrap_or(0.0) as u64;
    let tps = field("tps =")?;
    let latency_ms = field("latency average =")?;

    let (open, succeeded): (i64, i64) = sqlx::query_as(
        "select sum(open_pages)::int8, sum(succeeded_pages)::int8 from runs where id = any($1)",
    )
    .bind(&run_ids)
    .fetch_one(&mut *db)
    .await?;
    if failed > 0 || succeeded != pages || open != 0 {
        println!(
            "  ANOMALY: pgbench ({kind:?}) reported {failed} failed transactions; its runs have \
             {succeeded} pages succeeded (expected {pages}) and {open} open"
        );
    }
    Ok(PgbenchResult {
        pages: pages as u64,
        clients,
        pages_per_second: tps * per_tx as f64,
        latency_ms,
    })
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:>7} {:>5} {:>7} {:>11} {:>7} {:>7} {:>8} {:>6} {:>9} {:>7} {:>11} {:>10}",
        "pages",
        "runs",
        "clients",
        "callbacks/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "naive/s",
        "x naive",
        "batched/s",
        "of batched"
    );
    for r in rows {
        let c = &r.callbacks;
        let show = |p: &Option<PgbenchResult>, ratio: fn(f64, f64) -> f64| match p {
            Some(p) => (
                format!("{:.0}", p.pages_per_second),
                format!("{:.2}", ratio(c.per_second(), p.pages_per_second)),
            ),
            None => ("-".into(), "-".into()),
        };
        let (naive, x_naive) = show(&r.naive, |a, b| a / b);
        let (batched, of_batched) = show(&r.batched, |a, b| a / b);
        println!(
            "{:>7} {:>5} {:>7} {:>11.0} {:>7.2} {:>7.2} {:>8.2} {:>6} {:>9} {:>7} {:>11} {:>10}",
            r.pages,
            r.runs,
            r.clients,
            c.per_second(),
            c.p50_ms,
            c.p99_ms,
            c.max_ms,
            c.anomalies.values().sum::<usize>(),
            naive,
            x_naive,
            batched,
            of_batched
        );
        println!(
            "FIGURE callbacks runs={} clients={} recorded_per_s={:.0} p50_ms={:.2} p99_ms={:.2} daemon_cpu_s_per_1000={:.3} naive_pgbench_per_s={naive} x_naive={x_naive} batched_pgbench_per_s={batched} of_batched={of_batched} load_average={}",
            r.runs, r.clients, c.per_second(), c.p50_ms, c.p99_ms,
            c.daemon_cpu / c.recorded.max(1) as f64 * 1000.0,
            load_average()
        );
    }
    let combos: BTreeSet<(usize, usize)> = rows.iter().map(|r| (r.runs, r.clients)).collect();
    if rows.len() > combos.len() {
        println!("\nmedians over the measurements of each combination:");
        println!(
            "{:>5} {:>7} {:>5} {:>11} {:>7} {:>10}",
            "runs", "clients", "n", "callbacks/s", "x naive", "of batched"
        );
        for (runs, clients) in combos {
            let of: Vec<&Row> = rows
                .iter()
                .filter(|r| r.runs == runs && r.clients == clients)
                .collect();
            let rate = median(of.iter().map(|r| r.callbacks.per_second()).collect());
            let ratio = |p: fn(&Row) -> Option<f64>| {
                median(
                    of.iter()
                        .filter_map(|r| Some(r.callbacks.per_second() / p(r)?))
                        .collect(),
                )
            };
            let x_naive = ratio(|r| Some(r.naive.as_ref()?.pages_per_second));
            let of_batched = ratio(|r| Some(r.batched.as_ref()?.pages_per_second));
            let show = |v: Option<f64>, digits: usize| {
                v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
            };
            println!(
                "{:>5} {:>7} {:>5} {:>11} {:>7} {:>10}",
                runs,
                clients,
                of.len(),
                show(rate, 0),
                show(x_naive, 2),
                show(of_batched, 2)
            );
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}
