//! Shared harness of the fault suite (on top of `tests/common`, which
//! `tests/it` uses too): a fresh database per test, the real application
//! in-process on port 0, a recording stand-in for the Lambda API, a loopback
//! webhook receiver that can be told to fail, figures.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use fanfare::dispatch::LambdaApi;
use fanfare::Settings;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::common::{self, AppTask};
pub use crate::common::{
    admin_database_url, failed, fresh_database, succeeded, wait_ready, RecordingLambda,
    ADMIN_TOKEN, CALLBACK_SECRET,
};

/// How many SIGKILL trials to run: `FANFARE_FAULT_TRIALS`, default 20.
pub fn trials() -> usize {
    std::env::var("FANFARE_FAULT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// The random seed: `FANFARE_FAULT_SEED`, else a fresh one (printed by the
/// tests, so a failure can be replayed).
pub fn seed() -> u64 {
    std::env::var("FANFARE_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random)
}

/// The database name of a URL made by [`fresh_database`].
pub fn database_name(url: &str) -> String {
    url::Url::parse(url)
        .expect("a database URL")
        .path()
        .trim_start_matches('/')
        .to_string()
}

/// Drops a database made by [`fresh_database`] (its connections too); a
/// failure is only reported: the database is a leftover, not a test result.
pub async fn drop_database(url: &str) {
    let name = database_name(url);
    let result = async {
        let mut conn = PgConnection::connect(&admin_database_url()).await?;
        conn.execute(format!(r#"drop database if exists "{name}" with (force)"#).as_str())
            .await
    }
    .await;
    if let Err(e) = result {
        eprintln!("could not drop the test database {name}: {e}");
    }
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
    common::config_toml_with(
        database_url,
        listen_port,
        max_connections,
        CALLBACK_SECRET,
        ADMIN_TOKEN,
        schedules,
    )
}

/// A `[[schedules.notify]]` block for a webhook to `receiver`.
pub fn webhook_to(receiver: &Receiver) -> String {
    common::webhook_block(&receiver.url)
}

/// A schedule block using a Lambda stand-in, with URLs
/// `http://127.0.0.1:9/p/1..=pages` and a webhook to `receiver`.
pub fn lambda_schedule(name: &str, pages: usize, receiver: &Receiver, extra: &str) -> String {
    common::lambda_schedule_block(name, pages, extra, &webhook_to(receiver))
}

/// One webhook delivery as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The `webhook-id` header.
    pub webhook_id: String,
    /// `run_id` of the body.
    pub run_id: String,
    /// `type` of the body.
    pub event: String,
    /// Whether the Standard Webhooks signature verified.
    pub signature_ok: bool,
    /// What the receiver answered.
    pub answered: u16,
    /// When it arrived.
    pub at: Instant,
}

impl Hit {
    /// Whether the receiver accepted it.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.answered)
    }
}

/// Chooses the answer to a delivery: given its 0-based index among all
/// deliveries and the time since the first delivery.
pub type Policy = dyn Fn(usize, Duration) -> u16 + Send + Sync;

/// A loopback webhook receiver that records every delivery and answers as
/// its policy says.
#[derive(Clone)]
pub struct Receiver {
    /// Its URL.
    pub url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    notify: Arc<Notify>,
}

struct ReceiverState {
    hits: Arc<Mutex<Vec<Hit>>>,
    notify: Arc<Notify>,
    policy: Box<Policy>,
    first: Mutex<Option<Instant>>,
}

fn signature_ok(headers: &HeaderMap, body: &[u8]) -> bool {
    common::header(headers, "webhook-signature") == common::expected_signature(headers, body)
}

impl Receiver {
    /// A receiver that accepts everything.
    pub async fn accepting() -> Self {
        Self::start(Box::new(|_, _| 200)).await
    }

    /// Starts a receiver at `http://127.0.0.1:PORT/hook`.
    pub async fn start(policy: Box<Policy>) -> Self {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(Notify::new());
        let state = Arc::new(ReceiverState {
            hits: hits.clone(),
            notify: notify.clone(),
            policy,
            first: Mutex::new(None),
        });
        async fn hook(
            State(s): State<Arc<ReceiverState>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let now = Instant::now();
            let since_first = now - *s.first.lock().unwrap().get_or_insert(now);
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let mut hits = s.hits.lock().unwrap();
            let answered = (s.policy)(hits.len(), since_first);
            hits.push(Hit {
                webhook_id: common::header(&headers, "webhook-id").to_string(),
                run_id: json["run_id"].as_str().unwrap_or_default().to_string(),
                event: json["type"].as_str().unwrap_or_default().to_string(),
                signature_ok: signature_ok(&headers, &body),
                answered,
                at: now,
            });
            drop(hits);
            s.notify.notify_waiters();
            StatusCode::from_u16(answered).unwrap()
        }
        let app = Router::new().route("/hook", post(hook)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, hits, notify }
    }

    /// Everything received so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// The `run.finished` deliveries about `run` so far.
    pub fn hits_for(&self, run: Uuid) -> Vec<Hit> {
        let run = run.to_string();
        self.hits()
            .into_iter()
            .filter(|h| h.run_id == run && h.event == "run.finished")
            .collect()
    }

    /// Waits until a delivery about `run` was accepted; returns the
    /// deliveries about it.
    pub async fn wait_delivered(&self, run: Uuid, within: Duration) -> Vec<Hit> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            let got = self.hits_for(run);
            if got.iter().any(Hit::accepted) {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("no accepted webhook delivery for run {run} within {within:?}: {got:?}");
            }
        }
    }
}

/// Deliveries per webhook-id.
pub fn by_webhook_id(hits: &[Hit]) -> BTreeMap<String, Vec<Hit>> {
    let mut map: BTreeMap<String, Vec<Hit>> = BTreeMap::new();
    for h in hits {
        map.entry(h.webhook_id.clone()).or_default().push(h.clone());
    }
    map
}

/// A running application and what a test needs to talk to it.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// A pool on the test's database.
    pub pool: PgPool,
    /// The test's database.
    pub database: String,
    /// An HTTP client.
    pub client: reqwest::Client,
    app: AppTask,
}

impl TestApp {
    /// Starts the application on a fresh database with `schedules` (TOML)
    /// and any Lambda API.
    pub async fn spawn(schedules: &str, lambda: Option<Arc<dyn LambdaApi>>) -> Self {
        let db = fresh_database().await;
        let settings = Settings::from_toml(&config_toml_on(&db, 0, 20, schedules))
            .unwrap_or_else(|e| panic!("test configuration is valid: {e}"));
        let overrides = fanfare::startup::Overrides {
            lambda,
            ..Default::default()
        };
        let (address, app) = AppTask::start(settings, overrides).await;
        let pool = test_pool(&db).await;
        let this = Self {
            address,
            pool,
            database: db,
            client: reqwest::Client::new(),
            app,
        };
        assert!(
            wait_ready(&this.client, &this.address, Duration::from_secs(10)).await,
            "the application did not become ready"
        );
        this
    }

    /// Stops the application gracefully, waits for it, drops its database.
    pub async fn stop(self) {
        self.app.stop().await;
        self.pool.close().await;
        drop_database(&self.database).await;
    }

    /// POSTs a trigger for `schedule`; returns the run id.
    pub async fn trigger(&self, schedule: &str) -> Uuid {
        trigger(&self.client, &self.address, schedule).await
    }

    /// GETs an admin endpoint as JSON; status 0 when the request failed.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        get(&self.client, &self.address, path).await
    }

    /// POSTs a report with a bearer token; returns (status, body).
    pub async fn post_report(
        &self,
        token: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        post_report(&self.client, &self.address, token, body).await
    }

    /// Waits until the run is finished; returns its API view. Answers
    /// other than 200 (the ledger unreachable) are waited out.
    pub async fn wait_finished(&self, run_id: Uuid, within: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, run) = self.get(&format!("/v1/runs/{run_id}")).await;
            if status == 200 && run["status"] == "finished" {
                return run;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("run {run_id} did not finish in {within:?}: {status} {run:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every page of a run through `GET /v1/runs/{id}/pages`.
    pub async fn pages(&self, run_id: Uuid) -> Vec<serde_json::Value> {
        let mut all = Vec::new();
        let mut after = 0i64;
        loop {
            let (status, body) = self
                .get(&format!("/v1/runs/{run_id}/pages?limit=1000&after={after}"))
                .await;
            assert_eq!(status, 200, "listing pages: {body}");
            all.extend(body["pages"].as_array().unwrap().iter().cloned());
            match body["next_after"].as_i64() {
                Some(next) => after = next,
                None => return all,
            }
        }
    }

    /// A counter or gauge from `/metrics` (the sum over label sets that
    /// contain `labels`); 0 when absent.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = common::metrics_text(&self.client, &self.address).await;
        metric_in(&text, name, labels)
    }
}

/// The sum of the samples of `name` whose labels contain `labels` in a
/// Prometheus text exposition.
pub fn metric_in(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            (metric == name && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .fold(0.0, |sum, v| sum + v)
}

/// POSTs a trigger for `schedule` to a daemon; returns the run id.
pub async fn trigger(client: &reqwest::Client, address: &str, schedule: &str) -> Uuid {
    common::trigger(client, address, ADMIN_TOKEN, schedule).await
}

/// GETs an admin endpoint as JSON; status 0 when the request failed.
pub async fn get(client: &reqwest::Client, address: &str, path: &str) -> (u16, serde_json::Value) {
    common::get(client, address, ADMIN_TOKEN, path)
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
    common::post_callback(client, address, Some(token), body)
        .await
        .unwrap_or((0, serde_json::Value::Null))
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
