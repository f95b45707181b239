//! What the integration tests share, from the test kit (`testkit/`): a
//! fresh database per test, the real application on port 0, a recording
//! stand-in for the Lambda API, loopback webhook receivers.

pub use fanfare_testkit::{
    config_toml, failed, fresh_database, succeeded, Delivery, Receiver, RecordingLambda, TestApp,
    ADMIN_TOKEN, CALLBACK_SECRET, WEBHOOK_SECRET,
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
