//! Shared test harness: a fresh database per test, the real application on
//! port 0, a recording stand-in for the Lambda API, loopback webhook
//! receivers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use fanfare::dispatch::{InvokeError, LambdaApi};
use fanfare::{Application, Settings};
use fanfare_crawler::contract::CrawlRequest;
use futures::future::BoxFuture;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The secret every test configuration signs task tokens with.
pub const CALLBACK_SECRET: &str = "test-callback-secret-0123456789abcdef";
/// The admin token of every test configuration.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The webhook secret (`whsec_` + base64 of 24 bytes).
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The server every test database is created on.
pub fn admin_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> String {
    let admin = admin_database_url();
    let mut conn = PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("tests need a Postgres at DATABASE_URL ({admin}): {e}"));
    let name = format!("fanfare_test_{}", Uuid::new_v4().simple());
    conn.execute(format!(r#"create database "{name}""#).as_str())
        .await
        .expect("create the test database");
    let mut url = url::Url::parse(&admin).expect("DATABASE_URL is a URL");
    url.set_path(&name);
    url.to_string()
}

/// A Lambda API stand-in that records every Event invoke and does nothing
/// else: the test plays the crawler.
#[derive(Default)]
pub struct RecordingLambda {
    /// (function, event) in the order invoked.
    pub events: Mutex<Vec<(String, CrawlRequest)>>,
    /// Errors to answer with, first come first served, before accepting.
    pub fail_next: Mutex<VecDeque<InvokeError>>,
    /// Notified on every invoke.
    pub invoked: Notify,
}

impl RecordingLambda {
    /// The recorded events.
    pub fn requests(&self) -> Vec<CrawlRequest> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Waits until at least `n` events were recorded.
    pub async fn wait_for(&self, n: usize) -> Vec<CrawlRequest> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let notified = self.invoked.notified();
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("expected {n} invokes, saw {}", self.requests().len());
            }
        }
    }
}

impl LambdaApi for RecordingLambda {
    fn invoke_event(
        &self,
        function: &str,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Option<String>, InvokeError>> {
        let function = function.to_string();
        Box::pin(async move {
            if let Some(e) = self.fail_next.lock().unwrap().pop_front() {
                return Err(e);
            }
            let request: CrawlRequest =
                serde_json::from_slice(&payload).expect("the event is a contract request");
            self.events.lock().unwrap().push((function, request));
            self.invoked.notify_waiters();
            Ok(None)
        })
    }

    fn invoke_sync(
        &self,
        function: &str,
        _payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        let function = function.to_string();
        Box::pin(async move { Err(format!("{function}: no lister in this test")) })
    }
}

/// One received webhook.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Request headers.
    pub headers: HeaderMap,
    /// Raw body.
    pub body: Bytes,
}

impl Delivery {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// A loopback webhook receiver that records deliveries and answers 200,
/// after first answering `fail_first` times with 503.
#[derive(Clone)]
pub struct Receiver {
    /// Its URL.
    pub url: String,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    notify: Arc<Notify>,
}

struct ReceiverState {
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    notify: Arc<Notify>,
    fail_first: Mutex<usize>,
}

impl Receiver {
    /// Starts a receiver at `http://127.0.0.1:PORT/hook`.
    pub async fn start(fail_first: usize) -> Self {
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(Notify::new());
        let state = Arc::new(ReceiverState {
            deliveries: deliveries.clone(),
            notify: notify.clone(),
            fail_first: Mutex::new(fail_first),
        });
        async fn hook(
            State(s): State<Arc<ReceiverState>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let mut fail = s.fail_first.lock().unwrap();
            s.deliveries
                .lock()
                .unwrap()
                .push(Delivery { headers, body });
            s.notify.notify_waiters();
            if *fail > 0 {
                *fail -= 1;
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            StatusCode::OK
        }
        let app = Router::new().route("/hook", post(hook)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            deliveries,
            notify,
        }
    }

    /// Everything received so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    /// Waits until `n` deliveries arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            let got = self.deliveries();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "expected {n} webhook deliveries, got {}",
                    self.deliveries().len()
                );
            }
        }
    }
}

/// A running application and what a test needs to talk to it.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// A pool on the test's database.
    pub pool: PgPool,
    /// An HTTP client.
    pub client: reqwest::Client,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Configuration TOML for a test: `schedules` is appended verbatim.
pub fn config_toml(database_url: &str, schedules: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:0"
shutdown_grace = "5s"

[database]
url = "{database_url}"
max_connections = 20

[security]
callback_secret = "{CALLBACK_SECRET}"
admin_token = "{ADMIN_TOKEN}"

[notify]
timeout = "2s"

{schedules}
"#
    )
}

impl TestApp {
    /// Starts the application on a fresh database with `schedules` (TOML).
    pub async fn spawn(schedules: &str, lambda: Option<Arc<RecordingLambda>>) -> Self {
        let db = fresh_database().await;
        Self::spawn_on(&db, schedules, lambda).await
    }

    /// Starts the application on an existing database.
    pub async fn spawn_on(db: &str, schedules: &str, lambda: Option<Arc<RecordingLambda>>) -> Self {
        Self::spawn_with_api(db, schedules, lambda.map(|l| l as Arc<dyn LambdaApi>)).await
    }

    /// Starts the application on an existing database with any Lambda API.
    pub async fn spawn_with_api(
        db: &str,
        schedules: &str,
        lambda: Option<Arc<dyn LambdaApi>>,
    ) -> Self {
        let settings = Settings::from_toml(&config_toml(db, schedules))
            .unwrap_or_else(|e| panic!("test configuration is valid: {e}"));
        let overrides = fanfare::startup::Overrides {
            lambda,
            ..Default::default()
        };
        let app = Application::build_with(settings, overrides)
            .await
            .expect("the application builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let stop = app.shutdown_token();
        let handle = tokio::spawn(app.run_until_stopped());
        let pool = PgPool::connect(db).await.unwrap();
        let this = Self {
            address,
            pool,
            client: reqwest::Client::new(),
            stop,
            handle,
        };
        this.wait_ready().await;
        this
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self
                .client
                .get(format!("{}/readyz", self.address))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the application did not become ready");
    }

    /// Stops the application gracefully and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        self.handle
            .await
            .expect("the app task does not panic")
            .expect("the app stops cleanly");
    }

    /// POSTs a trigger for `schedule`; returns the run id.
    pub async fn trigger(&self, schedule: &str) -> Uuid {
        let resp = self
            .client
            .post(format!("{}/v1/schedules/{schedule}/trigger", self.address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            202,
            "trigger answered {:?}",
            resp.text().await
        );
        let body: serde_json::Value = resp.json().await.unwrap();
        body["run_id"].as_str().unwrap().parse().unwrap()
    }

    /// GETs an admin endpoint as JSON.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .get(format!("{}{path}", self.address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// POSTs a report with a bearer token; returns (status, body).
    pub async fn post_report(
        &self,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.post_raw(token, serde_json::to_vec(body).unwrap())
            .await
    }

    /// POSTs raw bytes to the callback endpoint.
    pub async fn post_raw(&self, token: Option<&str>, body: Vec<u8>) -> (u16, serde_json::Value) {
        let mut req = self
            .client
            .post(format!("{}/v1/callbacks", self.address))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Waits until the run is finished; returns its API view.
    pub async fn wait_finished(&self, run_id: Uuid, within: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (_, run) = self.get(&format!("/v1/runs/{run_id}")).await;
            if run["status"] == "finished" {
                return run;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("run {run_id} did not finish in {within:?}: {run:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A snapshot of the ledger's rows, to show an answer changed nothing.
    pub async fn ledger_snapshot(&self) -> String {
        let runs: Vec<(String,)> =
            sqlx::query_as("select row_to_json(r)::text from runs r order by id")
                .fetch_all(&self.pool)
                .await
                .unwrap();
        let pages: Vec<(String,)> =
            sqlx::query_as("select row_to_json(p)::text from pages p order by id")
                .fetch_all(&self.pool)
                .await
                .unwrap();
        let notes: Vec<(String,)> =
            sqlx::query_as("select row_to_json(n)::text from notifications n order by id")
                .fetch_all(&self.pool)
                .await
                .unwrap();
        format!("{runs:?}\n{pages:?}\n{notes:?}")
    }
}

/// A succeeded report for `request`.
pub fn succeeded(request: &CrawlRequest) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "run_id": request.run_id,
        "page_id": request.page_id,
        "attempt": request.attempt,
        "outcome": "succeeded",
        "http_status": 200,
        "title": "A page",
        "fields": {"price": "9.99"},
        "bytes": 1234,
        "content_sha256": "a".repeat(64),
        "fetch_ms": 12
    })
}

/// A failed report for `request`.
pub fn failed(request: &CrawlRequest, retryable: bool) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "run_id": request.run_id,
        "page_id": request.page_id,
        "attempt": request.attempt,
        "outcome": "failed",
        "error": {"kind": "http_status", "message": "HTTP 404 Not Found", "retryable": retryable}
    })
}

/// A schedule block using the recording Lambda stand-in, with URLs
/// `http://127.0.0.1:9/p/1..=pages` and a webhook to `receiver`.
pub fn lambda_schedule(
    name: &str,
    pages: usize,
    receiver: Option<&Receiver>,
    extra: &str,
) -> String {
    let urls: Vec<String> = (1..=pages)
        .map(|i| format!("\"http://127.0.0.1:9/p/{i}\""))
        .collect();
    let notify = receiver
        .map(|r| {
            format!(
                "[[schedules.notify]]\nwebhook = {{ url = \"{}\", secret = \"{WEBHOOK_SECRET}\" }}\n",
                r.url
            )
        })
        .unwrap_or_default();
    format!(
        r#"
[[schedules]]
name = "{name}"
invoker = "lambda"
function = "crawler-fn"
pages = {{ urls = [{}] }}
extract = {{ price = ".price" }}
max_in_flight = 10000
{extra}
{notify}
"#,
        urls.join(", ")
    )
}
