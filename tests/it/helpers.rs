//! Shared test harness: a fresh database per test, the real application on
//! port 0, a recording stand-in for the Lambda API, loopback webhook
//! receivers (the pieces the other test binaries use too live in
//! `tests/common`).

use std::sync::Arc;
use std::time::Duration;

use fanfare::dispatch::LambdaApi;
use fanfare::Settings;
use sqlx::PgPool;
use uuid::Uuid;

use crate::common::{self, AppTask};
pub use crate::common::{
    failed, fresh_database, succeeded, Delivery, Receiver, RecordingLambda, ADMIN_TOKEN,
    CALLBACK_SECRET, WEBHOOK_SECRET,
};

/// A running application and what a test needs to talk to it.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// A pool on the test's database.
    pub pool: PgPool,
    /// An HTTP client.
    pub client: reqwest::Client,
    app: AppTask,
}

/// Configuration TOML for a test: `schedules` is appended verbatim.
pub fn config_toml(database_url: &str, schedules: &str) -> String {
    common::config_toml_with(database_url, 0, 20, CALLBACK_SECRET, ADMIN_TOKEN, schedules)
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
        let (address, app) = AppTask::start(settings, overrides).await;
        let pool = PgPool::connect(db).await.unwrap();
        let this = Self {
            address,
            pool,
            client: reqwest::Client::new(),
            app,
        };
        assert!(
            common::wait_ready(&this.client, &this.address, Duration::from_secs(5)).await,
            "the application did not become ready"
        );
        this
    }

    /// Starts the application on a fresh database with `schedules` and the
    /// parsed settings changed by `tweak` (e.g. short server timeouts). Its
    /// `client` has made no connection yet: the readiness check used a
    /// client of its own, since dropped.
    pub async fn spawn_tweaked(
        schedules: &str,
        lambda: Option<Arc<RecordingLambda>>,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        let db = fresh_database().await;
        let mut settings = Settings::from_toml(&config_toml(&db, schedules))
            .unwrap_or_else(|e| panic!("test configuration is valid: {e}"));
        tweak(&mut settings);
        let overrides = fanfare::startup::Overrides {
            lambda: lambda.map(|l| l as Arc<dyn LambdaApi>),
            ..Default::default()
        };
        let (address, app) = AppTask::start(settings, overrides).await;
        let ready =
            common::wait_ready(&reqwest::Client::new(), &address, Duration::from_secs(5)).await;
        assert!(ready, "the application did not become ready");
        Self {
            address,
            pool: PgPool::connect(&db).await.unwrap(),
            client: reqwest::Client::new(),
            app,
        }
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
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        common::get(&self.client, &self.address, ADMIN_TOKEN, path)
            .await
            .unwrap()
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        common::metrics_text(&self.client, &self.address).await
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
        common::post_callback(&self.client, &self.address, token, body)
            .await
            .unwrap()
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

/// A schedule block using the recording Lambda stand-in, with URLs
/// `http://127.0.0.1:9/p/1..=pages` and a webhook to `receiver`.
pub fn lambda_schedule(
    name: &str,
    pages: usize,
    receiver: Option<&Receiver>,
    extra: &str,
) -> String {
    let notify = receiver
        .map(|r| common::webhook_block(&r.url))
        .unwrap_or_default();
    common::lambda_schedule_block(name, pages, extra, &notify)
}
