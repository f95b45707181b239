#![allow(dead_code)]
//! Helpers shared by the test binaries (`tests/it`, `tests/aws`,
//! `tests/faults`) and the callback benchmark: a fresh database per test,
//! configuration TOML, the real application on a task of its own and calls
//! to its API, a recording stand-in for the Lambda API, contract reports,
//! loopback webhook receivers and Standard Webhooks signatures.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use fanfare::dispatch::{InvokeError, LambdaApi};
use fanfare::startup::Overrides;
use fanfare::{Application, Settings};
use fanfare_crawler::contract::CrawlRequest;
use futures::future::BoxFuture;
use hmac::Mac;
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The secret every test configuration signs task tokens with.
pub const CALLBACK_SECRET: &str = "test-callback-secret-0123456789abcdef";
/// The admin token of every test configuration.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdefghijklm";
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

/// Configuration TOML: `listen_port` 0 binds a free port; `rest` (further
/// sections, schedules) is appended verbatim.
pub fn config_toml_with(
    database_url: &str,
    listen_port: u16,
    max_connections: u32,
    callback_secret: &str,
    admin_token: &str,
    rest: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{listen_port}"
public_url = "http://127.0.0.1:{listen_port}"
shutdown_grace = "5s"

[database]
url = "{database_url}"
max_connections = {max_connections}

[security]
callback_secret = "{callback_secret}"
admin_token = "{admin_token}"
# The crawl targets, sitemaps and lists of the tests are loopback servers.
allow_private_networks = true

[notify]
timeout = "2s"

{rest}
"#
    )
}

/// A `[[schedules.notify]]` block for a webhook to `url`, signed with
/// [`WEBHOOK_SECRET`].
pub fn webhook_block(url: &str) -> String {
    format!(
        "[[schedules.notify]]\nwebhook = {{ url = \"{url}\", secret = \"{WEBHOOK_SECRET}\" }}\n"
    )
}

/// A schedule block using a Lambda stand-in, with URLs
/// `http://127.0.0.1:9/p/1..=pages`; `extra` and then `notify` are appended.
pub fn lambda_schedule_block(name: &str, pages: usize, extra: &str, notify: &str) -> String {
    let urls: Vec<String> = (1..=pages)
        .map(|i| format!("\"http://127.0.0.1:9/p/{i}\""))
        .collect();
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

/// The application running on a task of its own.
pub struct AppTask {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl AppTask {
    /// Builds the application from `settings` with `overrides` and runs it;
    /// returns its address (`http://127.0.0.1:PORT`) too.
    pub async fn start(settings: Settings, overrides: Overrides) -> (String, Self) {
        let app = Application::build_with(settings, overrides)
            .await
            .expect("the application builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let stop = app.shutdown_token();
        let handle = tokio::spawn(app.run_until_stopped());
        (address, Self { stop, handle })
    }

    /// Stops the application gracefully and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        self.handle
            .await
            .expect("the app task does not panic")
            .expect("the app stops cleanly");
    }
}

/// Polls `/readyz` until it answers 200.
pub async fn wait_ready(client: &reqwest::Client, address: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{address}/readyz")).send().await {
            if r.status().is_success() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// POSTs a trigger for `schedule`; returns the run id.
pub async fn trigger(
    client: &reqwest::Client,
    address: &str,
    admin_token: &str,
    schedule: &str,
) -> Uuid {
    let resp = client
        .post(format!("{address}/v1/schedules/{schedule}/trigger"))
        .bearer_auth(admin_token)
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

/// GETs an admin endpoint; returns (status, body as JSON or null).
pub async fn get(
    client: &reqwest::Client,
    address: &str,
    admin_token: &str,
    path: &str,
) -> reqwest::Result<(u16, serde_json::Value)> {
    let resp = client
        .get(format!("{address}{path}"))
        .bearer_auth(admin_token)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(serde_json::Value::Null)))
}

/// POSTs raw bytes to the callback endpoint, with a bearer token if given;
/// returns (status, body as JSON or null).
pub async fn post_callback(
    client: &reqwest::Client,
    address: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Result<(u16, serde_json::Value)> {
    let mut req = client
        .post(format!("{address}/v1/callbacks"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(serde_json::Value::Null)))
}

/// The text of `/metrics`.
pub async fn metrics_text(client: &reqwest::Client, address: &str) -> String {
    client
        .get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
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

    /// Waits until `done` holds for the recorded events.
    pub async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[CrawlRequest]) -> bool,
    ) -> Vec<CrawlRequest> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.invoked.notified();
            let got = self.requests();
            if done(&got) {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("{what}: not within {within:?} ({} invokes seen)", got.len());
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

/// A header's value; empty when absent or not text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The Standard Webhooks signature (`v1,<base64>`) a delivery with these
/// headers and body must carry under [`WEBHOOK_SECRET`], computed
/// independently of fanfare's code.
pub fn expected_signature(headers: &HeaderMap, body: &[u8]) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(WEBHOOK_SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(header(headers, "webhook-id").as_bytes());
    mac.update(b".");
    mac.update(header(headers, "webhook-timestamp").as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
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
        header(&self.headers, name)
    }

    /// The Standard Webhooks signature this delivery must carry.
    pub fn expected_signature(&self) -> String {
        expected_signature(&self.headers, &self.body)
    }

    /// Verifies the Standard Webhooks signature independently of fanfare's
    /// code.
    pub fn assert_signed(&self) {
        assert_eq!(
            self.header("webhook-signature"),
            self.expected_signature(),
            "the webhook signature verifies"
        );
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

    /// Waits for the first delivery, then a little longer to catch a
    /// second one that must not come; returns everything received.
    pub async fn wait_for_one(&self, within: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            if !self.deliveries().is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("no webhook delivery within {within:?}");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.deliveries()
    }
}
