//! The application on port 0 with a real Lambda client (built from its
//! settings, as in production), a fresh database per test, a webhook
//! receiver (the last two from `tests/common`, which `tests/it` uses too).

use std::time::Duration;

use fanfare::Settings;
use fanfare_crawler::contract::CrawlRequest;
use uuid::Uuid;

use crate::common::{self, AppTask};
pub use crate::common::{fresh_database, Receiver};

/// The secret every test configuration signs task tokens with.
pub const CALLBACK_SECRET: &str = "aws-test-callback-secret-0123456789abcdef";
/// The admin token of every test configuration.
pub const ADMIN_TOKEN: &str = "aws-test-admin-token-0123456789abcdefghij";
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

/// A `[lambda]` section pointing at a local Lambda API.
pub fn lambda_section(endpoint: &str, invoke_timeout: &str) -> String {
    format!(
        "[lambda]\nregion = \"{REGION}\"\nendpoint_url = \"{endpoint}\"\ninvoke_timeout = \"{invoke_timeout}\"\n"
    )
}

/// A `[[schedules.notify]]` webhook block for `receiver`.
pub fn webhook_to(receiver: &Receiver) -> String {
    common::webhook_block(&receiver.url)
}

fn config_toml(database_url: &str, lambda: &str, schedules: &str) -> String {
    common::config_toml_with(
        database_url,
        0,
        20,
        CALLBACK_SECRET,
        ADMIN_TOKEN,
        &format!("{lambda}\n\n{schedules}"),
    )
}

/// A running application.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// An HTTP client.
    pub client: reqwest::Client,
    app: AppTask,
}

impl TestApp {
    /// Starts the application on a fresh database with its Lambda client
    /// built from `lambda` (a `[lambda]` section) by the application itself.
    pub async fn spawn(lambda: &str, schedules: &str) -> Self {
        let db = fresh_database().await;
        let settings = Settings::from_toml(&config_toml(&db, lambda, schedules))
            .unwrap_or_else(|e| panic!("test configuration is valid: {e}"));
        let (address, app) = AppTask::start(settings, Default::default()).await;
        let this = Self {
            address,
            client: reqwest::Client::new(),
            app,
        };
        assert!(
            common::wait_ready(&this.client, &this.address, Duration::from_secs(10)).await,
            "the application did not become ready"
        );
        this
    }

    /// The callback URL the application hands crawlers.
    pub fn callback_url(&self) -> String {
        format!("{}/v1/callbacks", self.address)
    }

    /// Stops the application gracefully and waits for it.
    pub async fn stop(self) {
        self.app.stop().await;
    }

    /// POSTs a trigger for `schedule`; returns the run id.
    pub async fn trigger(&self, schedule: &str) -> Uuid {
        common::trigger(&self.client, &self.address, ADMIN_TOKEN, schedule).await
    }

    /// GETs an admin endpoint as JSON.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        let (status, body) = common::get(&self.client, &self.address, ADMIN_TOKEN, path)
            .await
            .unwrap();
        assert_eq!(status, 200, "GET {path}");
        body
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
        let report = common::succeeded(request);
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
