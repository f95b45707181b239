//! What the integration tests share, from the test kit (`testkit/`): a
//! fresh database per test, the real application on port 0, a recording
//! stand-in for the Lambda API, loopback webhook receivers.

pub use fanfare_testkit::{
    config_toml, eventually, failed, fresh_database, holds, schedule, secs, succeeded, Delivery,
    Receiver, RecordingLambda, TestApp, ADMIN_TOKEN, CALLBACK_SECRET, WEBHOOK_SECRET,
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

/// An application with the one-page Lambda schedule `s` over a recording
/// stand-in that nobody reads.
pub async fn app_with_one_lambda_page() -> TestApp {
    let lambda = std::sync::Arc::new(RecordingLambda::default());
    TestApp::spawn(&lambda_schedule("s", 1, None, ""), Some(lambda)).await
}

/// An application with the one-page Lambda schedule `s`, and a run of it
/// that succeeded.
pub async fn app_with_a_finished_run() -> (TestApp, uuid::Uuid) {
    let lambda = std::sync::Arc::new(RecordingLambda::default());
    let app = TestApp::spawn(&lambda_schedule("s", 1, None, ""), Some(lambda.clone())).await;
    let run = app.trigger("s").await;
    let r = lambda.wait_for(1).await.remove(0);
    app.post_report(Some(&r.callback_token), &succeeded(&r))
        .await;
    app.wait_finished(run, std::time::Duration::from_secs(5))
        .await;
    (app, run)
}
