//! The real application on a task of its own, and the one [`TestApp`] the
//! tests talk to.

use std::sync::Arc;
use std::time::Duration;

use fanfare::dispatch::LambdaApi;
use fanfare::startup::Overrides;
use fanfare::{Application, Settings};
use fanfare_crawler::contract::CrawlRequest;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::{self, RunState};
use crate::config::{config_toml_with, ScheduleToml, ADMIN_TOKEN, CALLBACK_SECRET};
use crate::db::TestDatabase;
use crate::lambda::RecordingLambda;
use crate::metrics::metric_in;
use crate::reports::succeeded;

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

/// Settings changed after parsing (e.g. short server timeouts).
type Tweak = Box<dyn FnOnce(&mut Settings)>;

/// How to start a [`TestApp`]: [`TestApp::builder`].
pub struct TestAppBuilder {
    toml: String,
    database: Option<String>,
    lambda: Option<Arc<dyn LambdaApi>>,
    tweak: Option<Tweak>,
    max_connections: u32,
    pool_size: u32,
    ready_within: Duration,
}

impl TestAppBuilder {
    /// Appends TOML to the configuration (sections such as `[lambda]`,
    /// schedules).
    pub fn toml(mut self, toml: &str) -> Self {
        self.toml.push_str(toml);
        self.toml.push('\n');
        self
    }

    /// Runs on this existing database (not dropped by the app) instead of
    /// a fresh one (dropped when the app is).
    pub fn database(mut self, url: &str) -> Self {
        self.database = Some(url.to_string());
        self
    }

    /// Uses this Lambda API instead of one the application builds from its
    /// settings.
    pub fn lambda(mut self, lambda: Arc<dyn LambdaApi>) -> Self {
        self.lambda = Some(lambda);
        self
    }

    /// Uses this Lambda API when one is given.
    pub fn lambda_opt(self, lambda: Option<Arc<dyn LambdaApi>>) -> Self {
        match lambda {
            Some(l) => self.lambda(l),
            None => self,
        }
    }

    /// Changes the parsed settings before the application is built.
    pub fn tweak(mut self, tweak: impl FnOnce(&mut Settings) + 'static) -> Self {
        self.tweak = Some(Box::new(tweak));
        self
    }

    /// The daemon's `[database] max_connections` (default 20).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Connections of the test's own pool, [`TestApp::pool`] (default 4).
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = n;
        self
    }

    /// How long `/readyz` may take to answer 200 (default 10 s).
    pub fn ready_within(mut self, within: Duration) -> Self {
        self.ready_within = within;
        self
    }

    /// Starts the application and waits until it is ready. Its `client` has
    /// made no connection yet: the readiness check uses a client of its own.
    pub async fn spawn(self) -> TestApp {
        let (owned, database) = match self.database {
            Some(url) => (None, url),
            None => {
                let db = TestDatabase::create().await;
                let url = db.url().to_string();
                (Some(db), url)
            }
        };
        let toml = config_toml_with(
            &database,
            0,
            self.max_connections,
            CALLBACK_SECRET,
            ADMIN_TOKEN,
            &self.toml,
        );
        let mut settings = Settings::from_toml(&toml)
            .unwrap_or_else(|e| panic!("test configuration is valid: {e}"));
        if let Some(tweak) = self.tweak {
            tweak(&mut settings);
        }
        let overrides = Overrides {
            lambda: self.lambda,
            ..Default::default()
        };
        let (address, app) = AppTask::start(settings, overrides).await;
        let ready = api::wait_ready(&reqwest::Client::new(), &address, self.ready_within).await;
        assert!(ready, "the application did not become ready");
        let pool = PgPoolOptions::new()
            .max_connections(self.pool_size)
            .connect(&database)
            .await
            .expect("connect to the test database");
        TestApp {
            address,
            pool,
            database,
            client: reqwest::Client::new(),
            app,
            _owned: owned,
        }
    }
}

/// A running application and what a test needs to talk to it. Its fresh
/// database (unless it was started on an existing one) is dropped when it
/// is, after a panic too.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// A pool on the test's database.
    pub pool: PgPool,
    /// The URL of the test's database.
    pub database: String,
    /// An HTTP client.
    pub client: reqwest::Client,
    app: AppTask,
    // Last: dropped after everything that uses the database.
    _owned: Option<TestDatabase>,
}

impl TestApp {
    /// How to start one: configuration TOML, Lambda API, database, tweaks.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            toml: String::new(),
            database: None,
            lambda: None,
            tweak: None,
            max_connections: 20,
            pool_size: 4,
            ready_within: Duration::from_secs(10),
        }
    }

    /// Starts the application on a fresh database with `schedules` (TOML)
    /// and, if given, a Lambda API stand-in.
    pub async fn spawn(schedules: &str, lambda: Option<Arc<dyn LambdaApi>>) -> Self {
        Self::builder()
            .toml(schedules)
            .lambda_opt(lambda)
            .spawn()
            .await
    }

    /// Starts the application on a fresh database with `schedules` (TOML)
    /// and a [`RecordingLambda`] the test reads; returns both.
    pub async fn spawn_recording(schedules: &str) -> (Self, Arc<RecordingLambda>) {
        let lambda = Arc::new(RecordingLambda::default());
        let app = Self::spawn(schedules, Some(lambda.clone())).await;
        (app, lambda)
    }

    /// Starts the application on a fresh database with the one schedule
    /// `schedule` and triggers it; returns the app and the run.
    pub async fn spawn_and_trigger(schedule: &ScheduleToml) -> (Self, Uuid) {
        let app = Self::spawn(&schedule.to_string(), None).await;
        let run = app.trigger(schedule.name()).await;
        (app, run)
    }

    /// Starts the application on an existing database (a restart, a second
    /// replica), which it does not drop.
    pub async fn spawn_on(db: &str, schedules: &str, lambda: Option<Arc<dyn LambdaApi>>) -> Self {
        Self::builder()
            .database(db)
            .toml(schedules)
            .lambda_opt(lambda)
            .spawn()
            .await
    }

    /// Stops the application gracefully, waits for it, and drops its
    /// database if it made it.
    pub async fn stop(self) {
        self.app.stop().await;
        self.pool.close().await;
    }

    /// The callback URL the application hands crawlers.
    pub fn callback_url(&self) -> String {
        format!("{}/v1/callbacks", self.address)
    }

    /// POSTs a trigger for `schedule`; returns the run id.
    pub async fn trigger(&self, schedule: &str) -> Uuid {
        api::trigger(&self.client, &self.address, ADMIN_TOKEN, schedule).await
    }

    /// Triggers `schedule` and waits until that run is finished; returns
    /// its id and its API view.
    pub async fn run_once(&self, schedule: &str, within: Duration) -> (Uuid, serde_json::Value) {
        let run = self.trigger(schedule).await;
        (run, self.wait_finished(run, within).await)
    }

    /// GETs an admin endpoint as JSON; status 0 when the request failed.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        api::get(&self.client, &self.address, ADMIN_TOKEN, path)
            .await
            .unwrap_or((0, serde_json::Value::Null))
    }

    /// Sends `method` to an admin endpoint with the admin token; panics
    /// only when no answer came.
    pub async fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: no answer: {e}"))
    }

    /// GETs `path` without a token (health, readiness, a refused call);
    /// returns the status, 0 when the request failed.
    pub async fn status_without_token(&self, path: &str) -> u16 {
        match self
            .client
            .get(format!("{}{path}", self.address))
            .send()
            .await
        {
            Ok(resp) => resp.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// POSTs to an admin endpoint (an action: trigger, cancel, redrive,
    /// pause); returns (status, body as JSON or null).
    pub async fn post(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = self.admin(reqwest::Method::POST, path).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        api::metrics_text(&self.client, &self.address).await
    }

    /// A counter or gauge from `/metrics` (the sum over label sets that
    /// contain `labels`); 0 when absent.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        metric_in(&self.metrics().await, name, labels)
    }

    /// Waits until the counter or gauge `name` (over label sets containing
    /// `labels`) satisfies `done`; returns its value. The panic names `what`.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &str,
        within: Duration,
        what: &str,
        done: impl Fn(f64) -> bool,
    ) -> f64 {
        crate::eventually(what, within, || async {
            let value = self.metric(name, labels).await;
            if done(value) {
                Ok(value)
            } else {
                Err(format!("{name}{{{labels}}} is {value}"))
            }
        })
        .await
    }

    /// POSTs a report with a bearer token if given; returns (status, body),
    /// status 0 when the request failed.
    pub async fn post_report(
        &self,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.post_raw(token, serde_json::to_vec(body).unwrap())
            .await
    }

    /// POSTs raw bytes to the callback endpoint; status 0 when the request
    /// failed.
    pub async fn post_raw(&self, token: Option<&str>, body: Vec<u8>) -> (u16, serde_json::Value) {
        api::post_callback(&self.client, &self.address, token, body)
            .await
            .unwrap_or((0, serde_json::Value::Null))
    }

    /// POSTs `report` about `request` with its token; asserts it was
    /// recorded (200, `recorded`).
    pub async fn report_recorded(&self, request: &CrawlRequest, report: &serde_json::Value) {
        let (status, body) = self
            .post_report(Some(&request.callback_token), report)
            .await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("recorded")),
            "page {} attempt {}: {body}",
            request.page_id,
            request.attempt
        );
    }

    /// Plays the crawler: POSTs a succeeded report for `request` to the
    /// callback URL it names, with its token; returns (status, body).
    pub async fn report_success(&self, request: &CrawlRequest) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(&request.callback_url)
            .bearer_auth(&request.callback_token)
            .json(&succeeded(request))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Waits until the run's page list is complete (its status is past
    /// `listing`). Pages can be dispatched before the listing commits, so a
    /// test that snapshots the ledger to show it unchanged waits for this
    /// first.
    pub async fn wait_listed(&self, run_id: Uuid, within: Duration) {
        let listed = RunState::Listed;
        api::wait_run(
            &self.client,
            &self.address,
            ADMIN_TOKEN,
            run_id,
            listed,
            within,
        )
        .await;
    }

    /// Waits until the run is finished; returns its API view. Answers
    /// other than 200 (the ledger unreachable) are waited out.
    pub async fn wait_finished(&self, run_id: Uuid, within: Duration) -> serde_json::Value {
        let finished = RunState::Finished;
        api::wait_run(
            &self.client,
            &self.address,
            ADMIN_TOKEN,
            run_id,
            finished,
            within,
        )
        .await
    }

    /// Waits until the run is finished; returns its outcome.
    pub async fn wait_outcome(&self, run_id: Uuid, within: Duration) -> String {
        let view = self.wait_finished(run_id, within).await;
        view["outcome"].as_str().unwrap_or_default().to_string()
    }

    /// Every page of a run through `GET /v1/runs/{id}/pages`, in id order.
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
