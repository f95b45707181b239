//! The real pieces the model drives: one fresh database per test function,
//! "replicas" (a real [`Runs`] on their own connection pool, which can be
//! killed like a process), and consistent snapshots of the ledger with the
//! invariants every snapshot must satisfy, whatever the interleaving.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fanfare::config::Tolerance;
use fanfare::ledger;
use fanfare::runs::Runs;
use fanfare::sources::Lister;
use fanfare::Settings;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// The one schedule every model run belongs to.
pub const SCHEDULE: &str = "model";

/// The schedule's page timeout: long enough that no deadline passes unless
/// a test moves it.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(600);

/// A schedule's settings as the model varies them.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Dispatches a page gets at most.
    pub max_attempts: u32,
    /// The schedule's dispatched-and-unreported cap.
    pub max_in_flight: i64,
    /// Failures that still count as success.
    pub tolerated: Tolerance,
    /// How many notification targets (1: a webhook; 2: and stdout).
    pub targets: usize,
    /// `render = "auto"`: a page whose plain fetch looks unrendered is sent
    /// on to the browser.
    pub render_auto: bool,
}

impl Policy {
    /// The configuration TOML of a replica with this schedule.
    fn toml(&self, database_url: &str) -> String {
        let tolerated = match self.tolerated {
            Tolerance::Count(n) => n.to_string(),
            Tolerance::Percent(p) => format!("\"{p}%\""),
        };
        let mut notify = String::from(
            "[[schedules.notify]]\nwebhook = { url = \"http://127.0.0.1:9/hook\", secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\" }\n",
        );
        if self.targets > 1 {
            notify.push_str("[[schedules.notify]]\nstdout = {}\n");
        }
        let render = if self.render_auto {
            "render = \"auto\"\nbrowser_function = \"browser-fn\"\n"
        } else {
            ""
        };
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:0"

[database]
url = "{database_url}"

[security]
callback_secret = "model-callback-secret-0123456789abcdef"
admin_token = "model-admin-token-0123456789abcdefghij"

[[schedules]]
name = "{SCHEDULE}"
invoker = "lambda"
function = "crawler-fn"
pages = {{ urls = [] }}
page_timeout = "{}s"
max_attempts = {}
max_in_flight = {}
tolerated_failures = {tolerated}
{render}
{notify}
"#,
            PAGE_TIMEOUT.as_secs(),
            self.max_attempts,
            self.max_in_flight,
        )
    }

    /// The validated settings of a replica with this schedule.
    pub fn settings(&self, database_url: &str) -> Arc<Settings> {
        Arc::new(
            Settings::from_toml(&self.toml(database_url))
                .unwrap_or_else(|e| panic!("the model's configuration is valid: {e}")),
        )
    }

    /// The failures this schedule tolerates in a run of `total` pages.
    pub fn tolerated_of(&self, total: i64) -> i64 {
        match self.tolerated {
            Tolerance::Count(n) => n,
            Tolerance::Percent(p) => (total as f64 * p / 100.0).floor() as i64,
        }
    }
}

/// One database for one test function.
pub struct Database {
    /// Its URL.
    pub url: String,
    /// A pool that belongs to no replica: the test's own eyes and hands.
    pub observer: PgPool,
    replicas: AtomicU32,
    // Last: dropped after the pools that use it.
    _guard: fanfare_testkit::TestDatabase,
}

impl Database {
    /// Creates an empty, migrated database (the test kit's: dropped when
    /// this is, after a panic too).
    pub async fn fresh() -> Self {
        let guard = fanfare_testkit::fresh_database().await;
        let url = guard.url().to_string();
        let observer = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("connect to the test database");
        ledger::migrate(&observer).await.expect("migrations apply");
        Self {
            url,
            observer,
            replicas: AtomicU32::new(0),
            _guard: guard,
        }
    }

    /// Empties the ledger between cases.
    pub async fn reset(&self) {
        sqlx::query("truncate notifications, pages, runs, schedule_state restart identity cascade")
            .execute(&self.observer)
            .await
            .expect("truncate the ledger");
    }

    /// A new run of the model schedule (still listing) with `urls` listed.
    pub async fn new_run(&self, urls: &[String]) -> Uuid {
        let run_id = ledger::create_run(
            &self.observer,
            SCHEDULE,
            Utc::now(),
            ledger::Trigger::Manual,
        )
        .await
        .expect("create_run")
        .expect("a new run");
        if !urls.is_empty() {
            ledger::insert_pages(
                &self.observer,
                &ledger::Lease::first(run_id),
                urls,
                &unlimited_hosts(urls),
            )
            .await
            .expect("insert_pages")
            .expect("the run is listing");
        }
        run_id
    }

    /// The run's page ids in id order.
    pub async fn page_ids(&self, run_id: Uuid) -> Vec<i64> {
        sqlx::query_scalar("select id from pages where run_id = $1 order by id")
            .bind(run_id)
            .fetch_all(&self.observer)
            .await
            .expect("read page ids")
    }

    /// Test-only time travel: the backoff of requeued pages is over.
    pub async fn end_backoffs(&self, run_id: Uuid) {
        sqlx::query("update pages set not_before = null where run_id = $1 and status = 'pending'")
            .bind(run_id)
            .execute(&self.observer)
            .await
            .expect("end backoffs");
    }

    /// Test-only time freeze: backoffs set so far are not over yet, however
    /// slowly the test runs.
    pub async fn hold_backoffs(&self, run_id: Uuid) {
        sqlx::query(
            "update pages set not_before = greatest(not_before, now() + interval '1 hour')
             where run_id = $1 and status = 'pending' and not_before is not null",
        )
        .bind(run_id)
        .execute(&self.observer)
        .await
        .expect("hold backoffs");
    }

    /// Test-only time travel: the deadlines of these dispatched pages passed.
    pub async fn pass_deadlines(&self, page_ids: &[i64]) {
        sqlx::query(
            "update pages set deadline = now() - interval '1 second'
             where id = any($1) and status = 'dispatched'",
        )
        .bind(page_ids)
        .execute(&self.observer)
        .await
        .expect("pass deadlines");
    }

    /// Starts a replica of the daemon with `settings`.
    pub async fn replica(&self, settings: Arc<Settings>) -> Replica {
        let name = format!(
            "model-replica-{}",
            self.replicas.fetch_add(1, Ordering::Relaxed)
        );
        let options: PgConnectOptions = self.url.parse().expect("the database URL parses");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.application_name(&name))
            .await
            .expect("a replica connects");
        let runs = Runs::new(
            pool,
            settings,
            Lister::new(reqwest::Client::new(), None),
            TaskTracker::new(),
        );
        Replica { runs, name }
    }

    /// Kills a replica like SIGKILL would: its connections go away,
    /// whatever they were doing; returns once the server has let go of
    /// every one of them (so nothing of the dead replica commits later).
    pub async fn kill(&self, replica: Replica) {
        let Replica { runs, name } = replica;
        // The process stops, and its tasks with it (the recorder's batches
        // among them): nothing of it starts a statement from now on.
        let pool = runs.pool.clone();
        assert_eq!(
            Arc::strong_count(&runs),
            1,
            "the killed replica {name} is still referenced: its tasks would outlive it"
        );
        drop(runs);
        tokio::task::yield_now().await;
        // The server drops the replica's sessions, rolling back whatever
        // they had not committed, as it does when a process dies.
        sqlx::query(
            "select pg_terminate_backend(pid) from pg_stat_activity
             where datname = current_database() and application_name = $1",
        )
        .bind(&name)
        .execute(&self.observer)
        .await
        .expect("terminate the replica's sessions");
        let _ = tokio::time::timeout(Duration::from_secs(5), pool.close()).await;
        for _ in 0..2000 {
            let alive: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and application_name = $1",
            )
            .bind(&name)
            .fetch_one(&self.observer)
            .await
            .expect("read pg_stat_activity");
            if alive == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the killed replica {name}'s connections did not go away");
    }

    /// Waits until a session of `replica` waits for a lock.
    pub async fn wait_until_blocked(&self, replica: &Replica) {
        for _ in 0..2000 {
            let blocked: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and application_name = $1
                     and wait_event_type = 'Lock'",
            )
            .bind(&replica.name)
            .fetch_one(&self.observer)
            .await
            .expect("read pg_stat_activity");
            if blocked > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{} never waited for a lock", replica.name);
    }

    /// A consistent snapshot of the run (one repeatable-read transaction).
    pub async fn snapshot(&self, run_id: Uuid) -> Snapshot {
        let mut tx = self.observer.begin().await.expect("begin");
        sqlx::query("set transaction isolation level repeatable read")
            .execute(&mut *tx)
            .await
            .expect("repeatable read");
        let run: RunRow = sqlx::query_as(
            "select status, outcome, error, total_pages, open_pages, succeeded_pages,
                 failed_pages, timed_out_pages, cancelled_pages, finished_at
             from runs where id = $1",
        )
        .bind(run_id)
        .fetch_one(&mut *tx)
        .await
        .expect("read the run");
        let pages: Vec<PageRow> = sqlx::query_as(
            "select id, status, attempt, reported_attempt,
                 not_before is not null as backoff,
                 coalesce(not_before >= updated_at, true) as backoff_ahead,
                 site_throttles, render, escalated,
                 deadline is not null as has_deadline,
                 result, error, finished_at
             from pages where run_id = $1 order by id",
        )
        .bind(run_id)
        .fetch_all(&mut *tx)
        .await
        .expect("read the pages");
        let notes: Vec<NoteRow> = sqlx::query_as(
            "select event, target, kind, webhook_id, payload from notifications
             where run_id = $1 order by event, target",
        )
        .bind(run_id)
        .fetch_all(&mut *tx)
        .await
        .expect("read the notifications");
        tx.commit().await.expect("commit the snapshot");
        Snapshot { run, pages, notes }
    }
}

/// A replica: a real [`Runs`] on its own pool.
pub struct Replica {
    /// What its workers share.
    pub runs: Arc<Runs>,
    /// Its sessions' `application_name`.
    pub name: String,
}

impl Replica {
    /// Its pool.
    pub fn pool(&self) -> &PgPool {
        &self.runs.pool
    }
}

/// The run's row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RunRow {
    pub status: String,
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub total_pages: i64,
    pub open_pages: i64,
    pub succeeded_pages: i64,
    pub failed_pages: i64,
    pub timed_out_pages: i64,
    pub cancelled_pages: i64,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A page's row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PageRow {
    pub id: i64,
    pub status: String,
    pub attempt: i32,
    pub reported_attempt: Option<i32>,
    /// `not_before` is set.
    pub backoff: bool,
    /// `not_before`, when set, does not lie before the row's last update
    /// (a page sent on to the browser waits for nothing).
    pub backoff_ahead: bool,
    /// Dispatches that do not count against `max_attempts`.
    pub site_throttles: i32,
    /// The page goes to the browser.
    pub render: bool,
    /// It was sent on to the browser after its plain fetch.
    pub escalated: bool,
    pub has_deadline: bool,
    pub result: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl PageRow {
    /// Whether the page is in a terminal state.
    pub fn terminal(&self) -> bool {
        !matches!(self.status.as_str(), "pending" | "dispatched")
    }
}

/// A notification row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct NoteRow {
    pub event: String,
    pub target: i32,
    pub kind: String,
    pub webhook_id: String,
    pub payload: serde_json::Value,
}

/// The run, its pages and its notifications at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub run: RunRow,
    pub pages: Vec<PageRow>,
    pub notes: Vec<NoteRow>,
}

/// The outcome a run's counts give under `policy`.
pub fn outcome_of(policy: &Policy, total: i64, succeeded: i64, bad: i64) -> &'static str {
    if bad <= policy.tolerated_of(total) {
        "succeeded"
    } else if succeeded == 0 {
        "failed"
    } else {
        "partial"
    }
}

/// The invariants every snapshot satisfies, whatever happened before.
pub fn check_invariants(snap: &Snapshot, policy: &Policy) -> Result<(), String> {
    let run = &snap.run;
    let count = |s: &str| snap.pages.iter().filter(|p| p.status == s).count() as i64;
    let open = count("pending") + count("dispatched");
    let counted = (
        snap.pages.len() as i64,
        open,
        count("succeeded"),
        count("failed"),
        count("timed_out"),
        count("cancelled"),
    );
    let stored = (
        run.total_pages,
        run.open_pages,
        run.succeeded_pages,
        run.failed_pages,
        run.timed_out_pages,
        run.cancelled_pages,
    );
    if counted != stored {
        return Err(format!(
            "the run's counters (total, open, succeeded, failed, timed_out, cancelled) are \
             {stored:?} but its pages say {counted:?}"
        ));
    }
    let finished = run.status == "finished";
    if count("dispatched") > policy.max_in_flight {
        return Err(format!(
            "{} pages dispatched at once, over max_in_flight = {}",
            count("dispatched"),
            policy.max_in_flight
        ));
    }
    match run.status.as_str() {
        "listing" => {}
        "running" if open == 0 => {
            return Err("the run is listed, every page is terminal, yet it is not finished".into())
        }
        "running" => {}
        // Between the statement that recorded the last page and the
        // transaction that finishes the run.
        "finishing" if open > 0 => {
            return Err(format!(
                "the run is finishing with {open} pages not terminal"
            ))
        }
        "finishing" => {}
        "finished" if open > 0 => {
            return Err(format!(
                "the run is finished with {open} pages not terminal"
            ))
        }
        "finished" => {}
        other => return Err(format!("unknown run status {other:?}")),
    }
    if finished != run.outcome.is_some() || finished != run.finished_at.is_some() {
        return Err(format!(
            "status {} with outcome {:?} and finished_at {:?}",
            run.status, run.outcome, run.finished_at
        ));
    }
    if let Some(outcome) = &run.outcome {
        let bad = run.failed_pages + run.timed_out_pages + run.cancelled_pages;
        let counted = outcome_of(policy, run.total_pages, run.succeeded_pages, bad);
        let forced = run.error.is_some() || outcome == "cancelled";
        if (!forced || matches!(outcome.as_str(), "succeeded" | "partial")) && outcome != counted {
            return Err(format!(
                "outcome {outcome:?} but the counts give {counted:?} ({run:?})"
            ));
        }
    }
    // Notifications: one run.finished per target iff the run is finished.
    let finished_notes: Vec<&NoteRow> = snap
        .notes
        .iter()
        .filter(|n| n.event == "run.finished")
        .collect();
    let want = if finished { policy.targets } else { 0 };
    if finished_notes.len() != want {
        return Err(format!(
            "{} run.finished notifications for a run that is {} (want {want})",
            finished_notes.len(),
            run.status
        ));
    }
    let targets: HashSet<i32> = finished_notes.iter().map(|n| n.target).collect();
    let ids: HashSet<&str> = snap.notes.iter().map(|n| n.webhook_id.as_str()).collect();
    if targets.len() != finished_notes.len() || ids.len() != snap.notes.len() {
        return Err(format!(
            "duplicate notification targets or ids: {:?}",
            snap.notes
        ));
    }
    for note in &finished_notes {
        let p = &note.payload;
        let pages = &p["pages"];
        let same = p["outcome"].as_str() == run.outcome.as_deref()
            && pages["total"].as_i64() == Some(run.total_pages)
            && pages["succeeded"].as_i64() == Some(run.succeeded_pages)
            && pages["failed"].as_i64() == Some(run.failed_pages)
            && pages["timed_out"].as_i64() == Some(run.timed_out_pages)
            && pages["cancelled"].as_i64() == Some(run.cancelled_pages);
        if !same {
            return Err(format!("the notification says {p} but the run is {run:?}"));
        }
    }
    for page in &snap.pages {
        let bad = |what: &str| Err(format!("page {}: {what} ({page:?})", page.id));
        // Sending a page on to the browser uses no attempt: its plain
        // dispatch is one that does not count.
        let counted = page.attempt - page.site_throttles;
        if counted < 0 || counted as u32 > policy.max_attempts {
            return bad("attempts that count out of 0..=max_attempts");
        }
        // The model's sites never throttle: the only uncounted dispatch is
        // the plain fetch of a page sent on to the browser, once at most.
        if page.site_throttles != i32::from(page.escalated) {
            return bad(
                "sent on to the browser more than once, or a dispatch uncounted without it",
            );
        }
        if page.escalated && (!policy.render_auto || !page.render) {
            return bad("sent on to the browser without render = \"auto\", or not marked render");
        }
        if page
            .reported_attempt
            .is_some_and(|a| a > page.attempt || a < 1)
        {
            return bad("reported for an attempt it never had");
        }
        match page.status.as_str() {
            "pending" => {
                if page.finished_at.is_some() || page.reported_attempt.is_some() {
                    return bad("pending but finished");
                }
                if page.backoff && !page.backoff_ahead {
                    return bad("a retry backoff that ends before it began");
                }
            }
            "dispatched" => {
                if page.attempt < 1 || !page.has_deadline || page.backoff {
                    return bad("dispatched without an attempt and a deadline");
                }
                if page.finished_at.is_some() || page.reported_attempt.is_some() {
                    return bad("dispatched but finished");
                }
            }
            "succeeded" => {
                if page.result.is_none() || page.reported_attempt.is_none() {
                    return bad("succeeded without a result");
                }
            }
            "failed" | "timed_out" | "cancelled" => {}
            other => return bad(&format!("unknown status {other:?}")),
        }
        if page.terminal() && page.finished_at.is_none() {
            return bad("terminal without finished_at");
        }
    }
    Ok(())
}

/// What has been seen terminal stays exactly as it was first seen.
#[derive(Debug, Default)]
pub struct History {
    pages: HashMap<i64, PageRow>,
    run: Option<RunRow>,
    notes: Option<Vec<NoteRow>>,
}

impl History {
    /// Checks `snap` against everything seen before, then remembers it.
    pub fn check(&mut self, snap: &Snapshot) -> Result<(), String> {
        let now: HashMap<i64, &PageRow> = snap.pages.iter().map(|p| (p.id, p)).collect();
        for (id, first) in &self.pages {
            match now.get(id) {
                Some(page) if *page == first => {}
                Some(page) => {
                    return Err(format!(
                        "page {id} changed after it was terminal: first {first:?}, now {page:?}"
                    ))
                }
                None => return Err(format!("page {id} disappeared")),
            }
        }
        for page in &snap.pages {
            if page.terminal() {
                self.pages.entry(page.id).or_insert_with(|| page.clone());
            }
        }
        let finished = snap.run.status == "finished";
        unchanged_once_finished(&mut self.run, &snap.run, finished, "the run")?;
        unchanged_once_finished(&mut self.notes, &snap.notes, finished, "the notifications")
    }
}

/// Keeps `now` once the run has `finished`; from then on, an error naming
/// `what` when `now` is not what was kept.
fn unchanged_once_finished<T: PartialEq + Clone + std::fmt::Debug>(
    kept: &mut Option<T>,
    now: &T,
    finished: bool,
    what: &str,
) -> Result<(), String> {
    match kept {
        Some(first) if first != now => Err(format!(
            "{what} changed after the run finished: first {first:?}, now {now:?}"
        )),
        Some(_) => Ok(()),
        None => {
            if finished {
                *kept = Some(now.clone());
            }
            Ok(())
        }
    }
}

/// The hosts of `urls` with no per-host limit worth the name: the model
/// checks the lifecycle, not politeness (tests/it/politeness.rs does).
pub fn unlimited_hosts(urls: &[String]) -> Vec<ledger::HostPolicy> {
    ledger::host_policies(urls, i32::MAX as u32, Duration::ZERO)
}
