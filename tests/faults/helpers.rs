//! What the fault suite needs besides the test kit (`testkit/`, which gives
//! it a fresh database per test, the one `TestApp`, a recording stand-in for
//! the Lambda API, webhook receivers that can be told to fail): trial
//! counts and seeds, calls to daemons running as subprocesses, a view of the
//! ledger, figures.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

pub use fanfare_testkit::{
    admin_database_url, by_webhook_id, eventually, failed, fresh_database, holds, schedule, secs,
    succeeded, wait_ready, Receiver, RecordingLambda, TestApp, ADMIN_TOKEN, CALLBACK_SECRET,
};

/// How many SIGKILL trials to run: `FANFARE_FAULT_TRIALS`, default 20.
pub fn trials() -> usize {
    fanfare_testkit::env_parsed("FANFARE_FAULT_TRIALS").unwrap_or(20)
}

/// The random seed: `FANFARE_FAULT_SEED`, else a fresh one (printed by the
/// tests, so a failure can be replayed).
pub fn seed() -> u64 {
    fanfare_testkit::env_parsed("FANFARE_FAULT_SEED").unwrap_or_else(rand::random)
}

/// The schedule `shop` of the fault tests: the pages of `sitemap`, each
/// page's name and price, up to 5 attempts of `page_timeout` each, 50 in
/// flight, a webhook to `receiver`.
pub fn shop_schedule(sitemap: &str, page_timeout: &str, receiver: &Receiver) -> String {
    schedule("shop")
        .sitemap(sitemap)
        .extract(r#"{ name = "h1.name", price = ".price" }"#)
        .text("page_timeout", page_timeout)
        .key("max_attempts", 5)
        .key("max_in_flight", 50)
        .webhook(&receiver.url)
        .to_string()
}

/// The database name of a URL made by [`fresh_database`].
pub fn database_name(url: &str) -> String {
    url::Url::parse(url)
        .expect("a database URL")
        .path()
        .trim_start_matches('/')
        .to_string()
}

/// A small pool on a test database, for the test's own queries.
pub async fn test_pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .expect("connect to the test database")
}

/// Configuration TOML: `listen_port` 0 binds a free port; `schedules` is
/// appended verbatim.
pub fn config_toml_on(
    database_url: &str,
    listen_port: u16,
    max_connections: u32,
    schedules: &str,
) -> String {
    fanfare_testkit::config_toml_with(
        database_url,
        listen_port,
        max_connections,
        CALLBACK_SECRET,
        ADMIN_TOKEN,
        schedules,
    )
}

/// A schedule block using a Lambda stand-in, with URLs
/// `http://127.0.0.1:9/p/1..=pages` and a webhook to `receiver`.
pub fn lambda_schedule(name: &str, pages: usize, receiver: &Receiver, extra: &str) -> String {
    let webhook = fanfare_testkit::webhook_block(&receiver.url);
    fanfare_testkit::lambda_schedule_block(name, pages, extra, &webhook)
}

/// POSTs a trigger for `schedule` to a daemon; returns the run id.
pub async fn trigger(client: &reqwest::Client, address: &str, schedule: &str) -> Uuid {
    fanfare_testkit::trigger(client, address, ADMIN_TOKEN, schedule).await
}

/// GETs an admin endpoint as JSON; status 0 when the request failed.
pub async fn get(client: &reqwest::Client, address: &str, path: &str) -> (u16, serde_json::Value) {
    fanfare_testkit::get(client, address, ADMIN_TOKEN, path)
        .await
        .unwrap_or((0, serde_json::Value::Null))
}

/// POSTs a report; status 0 when the request failed.
pub async fn post_report(
    client: &reqwest::Client,
    address: &str,
    token: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let body = serde_json::to_vec(body).unwrap();
    fanfare_testkit::post_callback(client, address, Some(token), body)
        .await
        .unwrap_or((0, serde_json::Value::Null))
}

/// Waits for `run`'s notification at `receiver` and checks it was one:
/// delivered at least once under one `webhook-id`, from one outbox row.
pub async fn assert_notified_once(receiver: &Receiver, pool: &PgPool, run: Uuid) {
    receiver
        .wait_delivered(run, std::time::Duration::from_secs(90))
        .await;
    let ids = by_webhook_id(&receiver.hits_for(run));
    assert_eq!(ids.len(), 1, "{ids:?}");
    let outbox: i64 = sqlx::query_scalar(
        "select count(*) from notifications where run_id = $1 and event = 'run.finished'",
    )
    .bind(run)
    .fetch_one(pool)
    .await
    .expect("count the run's notifications");
    assert_eq!(outbox, 1);
}

/// What the ledger holds about one run: its counters, and its pages counted
/// by status.
#[derive(Debug, Clone)]
pub struct LedgerView {
    /// `runs.status`.
    pub status: String,
    /// `runs.outcome`.
    pub outcome: Option<String>,
    /// total, open, succeeded, failed, timed_out, cancelled counters.
    pub counters: [i64; 6],
    /// Pages by status, counted in the pages table.
    pub pages: BTreeMap<String, i64>,
    /// Pages dispatched more than once.
    pub redispatched: i64,
    /// Outbox rows of the run (`run.finished` per target).
    pub notifications: i64,
}

impl LedgerView {
    /// Pages with `status`, counted in the pages table.
    pub fn count(&self, status: &str) -> i64 {
        self.pages.get(status).copied().unwrap_or(0)
    }

    /// Whether the run's counters agree with its pages: every page was
    /// counted exactly once, in the state it ended in.
    pub fn consistent(&self) -> bool {
        let [total, open, succeeded, failed, timed_out, cancelled] = self.counters;
        total == self.pages.values().sum::<i64>()
            && open == self.count("pending") + self.count("dispatched")
            && succeeded == self.count("succeeded")
            && failed == self.count("failed")
            && timed_out == self.count("timed_out")
            && cancelled == self.count("cancelled")
    }
}

/// Reads [`LedgerView`] of `run`.
pub async fn ledger_view(pool: &PgPool, run: Uuid) -> Result<LedgerView, sqlx::Error> {
    let (status, outcome, total, open, succeeded, failed, timed_out, cancelled): (
        String,
        Option<String>,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "select status, outcome, total_pages, open_pages, succeeded_pages, failed_pages,
             timed_out_pages, cancelled_pages from runs where id = $1",
    )
    .bind(run)
    .fetch_one(pool)
    .await?;
    let pages: Vec<(String, i64)> =
        sqlx::query_as("select status, count(*) from pages where run_id = $1 group by status")
            .bind(run)
            .fetch_all(pool)
            .await?;
    let redispatched: i64 =
        sqlx::query_scalar("select count(*) from pages where run_id = $1 and attempt > 1")
            .bind(run)
            .fetch_one(pool)
            .await?;
    let notifications: i64 = sqlx::query_scalar(
        "select count(*) from notifications where run_id = $1 and event = 'run.finished'",
    )
    .bind(run)
    .fetch_one(pool)
    .await?;
    Ok(LedgerView {
        status,
        outcome,
        counters: [total, open, succeeded, failed, timed_out, cancelled],
        pages: pages.into_iter().collect(),
        redispatched,
        notifications,
    })
}

/// The `q`-quantile (0..=1) of `values`, nearest rank; 0 when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Distinct values, for figures.
pub fn distinct<T: Ord + Clone>(values: impl IntoIterator<Item = T>) -> BTreeSet<T> {
    values.into_iter().collect()
}
