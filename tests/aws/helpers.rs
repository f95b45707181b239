//! The application on port 0 with a real Lambda client (built from its
//! settings, as in production), a fresh database per test, a webhook
//! receiver. Adapted from `tests/it/helpers.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use fanfare::{Application, Settings};
use fanfare_crawler::contract::CrawlRequest;
use hmac::Mac;
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The secret every test configuration signs task tokens with.
pub const CALLBACK_SECRET: &str = "aws-test-callback-secret-0123456789abcdef";
/// The admin token of every test configuration.
pub const ADMIN_TOKEN: &str = "aws-test-admin-token-0123456789";
/// The webhook secret (`whsec_` + base64 of 24 bytes).
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The region of every test's Lambda client.
pub const REGION: &str = "us-east-1";

/// Credentials for the AWS default chain, which `AwsLambda::from_settings`
/// uses: local Lambda APIs accept any. Set before the application (and its
/// SDK client) is built; nextest runs each test in its own process, and the
/// tests use a current-thread runtime, so nothing reads the environment
/// concurrently.
pub fn use_test_aws_credentials() {
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::remove_var("AWS_SESSION_TOKEN");
    std::env::remove_var("AWS_PROFILE");
    // No instance metadata lookups on a machine that is not EC2.
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> String {
    let admin = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
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

/// A `[lambda]` section pointing at a local Lambda API.
pub fn lambda_section(endpoint: &str, invoke_timeout: &str) -> String {
    format!(
        "[lambda]\nregion = \"{REGION}\"\nendpoint_url = \"{endpoint}\"\ninvoke_timeout = \"{invoke_timeout}\"\n"
    )
}

/// A `[[schedules.notify]]` webhook block for `receiver`.
pub fn webhook_to(receiver: &Receiver) -> String {
    format!(
        "[[schedules.notify]]\nwebhook = {{ url = \"{}\", secret = \"{WEBHOOK_SECRET}\" }}\n",
        receiver.url
    )
}

fn config_toml(database_url: &str, lambda: &str, schedules: &str) -> String {
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

{lambda}

{schedules}
"#
    )
}

/// A running application.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// An HTTP client.
    pub client: reqwest::Client,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// Starts the application on a fresh database with its Lambda client
    /// built from `lambda` (a `[lambda]` section) by the application itself.
    pub async fn spawn(lambda: &str, schedules: &str) -> Self {
        let db = fresh_database().await;
        let settings = Settings::from_toml(&config_toml(&db, lambda, schedules))
            .unwrap_or_else(|e| panic!("test configuration is valid: {e}"));
        let app = Application::build(settings)
            .await
            .expect("the application builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let stop = app.shutdown_token();
        let handle = tokio::spawn(app.run_until_stopped());
        let this = Self {
            address,
            client: reqwest::Client::new(),
            stop,
            handle,
        };
        this.wait_ready().await;
        this
    }

    async fn wait_ready(&self) {
        for _ in 0..400 {
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

    /// The callback URL the application hands crawlers.
    pub fn callback_url(&self) -> String {
        format!("{}/v1/callbacks", self.address)
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
    pub async fn get(&self, path: &str) -> serde_json::Value {
        let resp = self
            .client
            .get(format!("{}{path}", self.address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.json().await.unwrap()
    }

    /// Every page of a run, in id order.
    pub async fn pages(&self, run_id: Uuid) -> Vec<serde_json::Value> {
        let body = self
            .get(&format!("/v1/runs/{run_id}/pages?limit=500"))
            .await;
        body["pages"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until the run is finished; returns its API view.
    pub async fn wait_finished(&self, run_id: Uuid, within: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let run = self.get(&format!("/v1/runs/{run_id}")).await;
            if run["status"] == "finished" {
                return run;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("run {run_id} did not finish in {within:?}: {run:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Plays the crawler: POSTs a succeeded report for `request` to its
    /// callback URL with its token; returns (status, body).
    pub async fn report_success(&self, request: &CrawlRequest) -> (u16, serde_json::Value) {
        let report = serde_json::json!({
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
        });
        let resp = self
            .client
            .post(&request.callback_url)
            .bearer_auth(&request.callback_token)
            .json(&report)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }
}

/// Checks that `token` is a valid task token for exactly this run, page
/// and attempt, using fanfare's verifier with the test secret.
pub fn assert_valid_token(request: &CrawlRequest) {
    let signer = fanfare::token::TokenSigner::new(secrecy::SecretString::from(CALLBACK_SECRET));
    let claims = signer
        .verify(&request.callback_token, chrono::Utc::now())
        .unwrap_or_else(|e| {
            panic!(
                "page {}: the callback token does not verify: {e:?}",
                request.page_id
            )
        });
    assert_eq!(claims.run_id.to_string(), request.run_id, "token's run");
    assert_eq!(claims.page_id.to_string(), request.page_id, "token's page");
    assert_eq!(claims.attempt as u32, request.attempt, "token's attempt");
    assert!(
        claims.expires > request.deadline,
        "the token outlives the attempt's deadline"
    );
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

    /// Verifies the Standard Webhooks signature independently of fanfare's
    /// code.
    pub fn assert_signed(&self) {
        let key = base64::engine::general_purpose::STANDARD
            .decode(WEBHOOK_SECRET.strip_prefix("whsec_").unwrap())
            .unwrap();
        let signed = format!(
            "{}.{}.{}",
            self.header("webhook-id"),
            self.header("webhook-timestamp"),
            std::str::from_utf8(&self.body).unwrap()
        );
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(signed.as_bytes());
        let expected = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(
            self.header("webhook-signature"),
            expected,
            "the webhook signature verifies"
        );
    }
}

/// A loopback webhook receiver that records deliveries and answers 200.
#[derive(Clone)]
pub struct Receiver {
    /// Its URL.
    pub url: String,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    notify: Arc<Notify>,
}

#[derive(Clone)]
struct ReceiverState {
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    notify: Arc<Notify>,
}

impl Receiver {
    /// Starts a receiver at `http://127.0.0.1:PORT/hook`.
    pub async fn start() -> Self {
        let state = ReceiverState {
            deliveries: Arc::default(),
            notify: Arc::default(),
        };
        async fn hook(
            State(s): State<ReceiverState>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            s.deliveries
                .lock()
                .unwrap()
                .push(Delivery { headers, body });
            s.notify.notify_waiters();
            StatusCode::OK
        }
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            deliveries: state.deliveries,
            notify: state.notify,
        }
    }

    /// Everything received so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
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
