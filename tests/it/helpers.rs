//! What the integration tests share, from the test kit (`testkit/`): a
//! fresh database per test, the real application on port 0, a recording
//! stand-in for the Lambda API, loopback webhook receivers.

pub use reqwest::Method;

pub use fanfare_testkit::{
    config_toml, eventually, failed, fresh_database, holds, schedule, secs, succeeded, texts,
    ConfigFile, Delivery, Receiver, RecordingLambda, TestApp, ADMIN_TOKEN, CALLBACK_SECRET,
    WEBHOOK_SECRET,
};

/// A schedule block using the recording Lambda stand-in, with URLs
/// `http://127.0.0.1:9/p/1..=pages` and a webhook to `receiver`.
pub fn lambda_schedule(
    name: &str,
    pages: usize,
    receiver: Option<&Receiver>,
    extra: &str,
) -> String {
    let notify = receiver
        .map(|r| fanfare_testkit::webhook_block(&r.url))
        .unwrap_or_default();
    fanfare_testkit::lambda_schedule_block(name, pages, extra, &notify)
}

/// Starts the Lambda schedule `name` of `pages` pages over a recording
/// stand-in, triggers it and waits until each page was dispatched; returns
/// the app, the stand-in, the run and its requests.
pub async fn dispatched_run(
    name: &str,
    pages: usize,
) -> (
    TestApp,
    std::sync::Arc<RecordingLambda>,
    uuid::Uuid,
    Vec<fanfare_crawler::contract::CrawlRequest>,
) {
    let (app, lambda) = TestApp::spawn_recording(&lambda_schedule(name, pages, None, "")).await;
    let run = app.trigger(name).await;
    let requests = lambda.wait_for(pages).await;
    (app, lambda, run, requests)
}

/// Starts the Lambda schedule `name` of `pages` pages with the keys
/// `extra` ([`lambda_schedule`]) over a recording stand-in, with a webhook
/// to a receiver that answers at once; returns the three.
pub async fn notifying_app(
    name: &str,
    pages: usize,
    extra: &str,
) -> (TestApp, std::sync::Arc<RecordingLambda>, Receiver) {
    let receiver = Receiver::start(0).await;
    let schedule = lambda_schedule(name, pages, Some(&receiver), extra);
    let (app, lambda) = TestApp::spawn_recording(&schedule).await;
    (app, lambda, receiver)
}

/// What [`lambda_run`] started: the application, the recording stand-in,
/// the schedule's webhook receiver, the run and the requests dispatched so
/// far.
pub type LambdaRun = (
    TestApp,
    std::sync::Arc<RecordingLambda>,
    Receiver,
    uuid::Uuid,
    Vec<fanfare_crawler::contract::CrawlRequest>,
);

/// Starts the Lambda schedule `name` of `pages` pages with the keys
/// `extra` ([`lambda_schedule`]) and a webhook to a receiver that answers
/// at once, triggers it, and waits until `dispatched` requests were made.
pub async fn lambda_run(name: &str, pages: usize, extra: &str, dispatched: usize) -> LambdaRun {
    let (app, lambda, receiver) = notifying_app(name, pages, extra).await;
    let run = app.trigger(name).await;
    let requests = lambda.wait_for(dispatched).await;
    (app, lambda, receiver, run, requests)
}

/// An application with the one-page Lambda schedule `s` over a recording
/// stand-in that nobody reads.
pub async fn app_with_one_lambda_page() -> TestApp {
    TestApp::spawn_recording(&lambda_schedule("s", 1, None, ""))
        .await
        .0
}

/// [`app_with_one_lambda_page`] with its settings changed by `tweak`.
pub async fn app_with_one_lambda_page_and(
    tweak: impl FnOnce(&mut fanfare::Settings) + 'static,
) -> TestApp {
    lambda_app_with(1, tweak).await.0
}

/// An application with the Lambda schedule `s` of `pages` pages over a
/// recording stand-in, its settings changed by `tweak`; returns both.
pub async fn lambda_app_with(
    pages: usize,
    tweak: impl FnOnce(&mut fanfare::Settings) + 'static,
) -> (TestApp, std::sync::Arc<RecordingLambda>) {
    let lambda = std::sync::Arc::new(RecordingLambda::default());
    let app = TestApp::builder()
        .toml(&lambda_schedule("s", pages, None, ""))
        .lambda(lambda.clone())
        .tweak(tweak)
        .spawn()
        .await;
    (app, lambda)
}

/// The actions refused once the run of [`app_with_a_finished_run`] has
/// finished, the same through the API and the console: (path below `/v1/`
/// or `/ui/`, status, what the API's error says, what the console's page
/// says).
pub fn refused_actions(run: uuid::Uuid) -> Vec<(String, u16, &'static str, &'static str)> {
    let unknown = uuid::Uuid::from_u128(7);
    let finished = "has finished already";
    let nothing = "no failed or timed-out pages";
    let (no_run, no_schedule) = ("no run has the id", "No schedule is called");
    vec![
        (format!("runs/{run}/cancel"), 409, finished, finished),
        (
            format!("runs/{unknown}/cancel"),
            404,
            no_run,
            "No run has the id",
        ),
        (format!("runs/{run}/redrive"), 409, nothing, nothing),
        (
            format!("runs/{unknown}/redrive"),
            404,
            no_run,
            "No run has the id",
        ),
        ("schedules/nope/pause".into(), 404, "\"nope\"", no_schedule),
        ("schedules/nope/resume".into(), 404, "\"nope\"", no_schedule),
    ]
}

/// An application with the one-page Lambda schedule `s`, and a run of it
/// that succeeded.
pub async fn app_with_a_finished_run() -> (TestApp, uuid::Uuid) {
    let (app, _, run, requests) = dispatched_run("s", 1).await;
    let r = &requests[0];
    app.post_report(Some(&r.callback_token), &succeeded(r))
        .await;
    app.wait_finished(run, std::time::Duration::from_secs(5))
        .await;
    (app, run)
}
