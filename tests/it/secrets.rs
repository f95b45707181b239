//! Secrets: webhook URLs never show in stored errors, API answers or
//! `Debug` output; callback and webhook secrets rotate without refusing a
//! genuine caller.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use fanfare::startup::Overrides;
use fanfare::Settings;
use hmac::Mac;
use serde_json::Value;

use crate::helpers::*;
use fanfare_testkit::{self as common, AppTask};

/// A second webhook secret, the one being rotated out.
const PREVIOUS_WEBHOOK_SECRET: &str = "whsec_cHJldmlvdXMtd2ViaG9vay1rZXktMDEyMw==";
/// The callback secret a rotated daemon signs with.
const NEW_CALLBACK_SECRET: &str = "rotated-callback-secret-fedcba9876543210";

/// The Standard Webhooks signature under `secret`, computed independently
/// of fanfare's code.
fn signature_under(secret: &str, d: &Delivery) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(d.header("webhook-id").as_bytes());
    mac.update(b".");
    mac.update(d.header("webhook-timestamp").as_bytes());
    mac.update(b".");
    mac.update(&d.body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// Starts a one-page run, reports it succeeded and waits for it to finish.
async fn finish_one_page_run(app: &TestApp, lambda: &RecordingLambda) -> uuid::Uuid {
    let run = app.trigger("s").await;
    let reqs = lambda.wait_for(1).await;
    let (status, _) = app
        .post_report(Some(&reqs[0].callback_token), &succeeded(&reqs[0]))
        .await;
    assert_eq!(status, 200);
    app.wait_finished(run, Duration::from_secs(10)).await;
    run
}

#[tokio::test]
async fn a_failing_webhook_with_a_secret_path_and_query_shows_its_url_nowhere() {
    // One receiver answers 503 to everything (its query carries the
    // secret); the other URL has a secret in its userinfo, path and query
    // and nothing listens there.
    let receiver = Receiver::start(usize::MAX).await;
    let answering = format!("{}?token=sekrit-query-4711", receiver.url);
    let refused = format!(
        "http://hook-user:sekrit-password@127.0.0.1:{}/sekrit-path-0815/in?sig=sekrit-sig-0816",
        closed_port().await
    );
    let notify = format!(
        "{}{}",
        common::webhook_block(&answering),
        common::webhook_block(&refused)
    );
    let schedule = common::lambda_schedule_block("s", 1, "", &notify);

    let settings = Settings::from_toml(&config_toml("postgres://x@127.0.0.1/db", &schedule))
        .expect("the configuration is valid");
    let debug = format!("{settings:?} {:#?}", settings.schedules[0].notify);
    assert!(!debug.contains("sekrit"), "Debug shows a secret: {debug}");
    assert!(debug.contains("[redacted]"), "{debug}");

    let (app, lambda) = TestApp::spawn_recording(&schedule).await;
    let run = finish_one_page_run(&app, &lambda).await;

    // Both targets failed at least once and stored why.
    let notes = eventually("both deliveries failed once", secs(15), || async {
        let (_, body) = app.get(&format!("/v1/runs/{run}")).await;
        let notes = body["notifications"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let failed = notes.len() == 2 && notes.iter().all(|n| n["last_error"].is_string());
        holds(failed, format!("{body:#}")).map(|()| body)
    })
    .await;
    let text = notes.to_string();
    assert!(!text.contains("sekrit"), "the API shows a secret: {text}");
    assert!(
        !text.contains("hook-user"),
        "the API shows a secret: {text}"
    );
    let errors = texts(&notes["notifications"], "last_error");
    assert!(
        errors[0].starts_with("webhook 0 answered 503"),
        "{errors:?}"
    );
    assert!(errors[1].starts_with("POST to webhook 1: "), "{errors:?}");
    assert!(
        errors[1].to_lowercase().contains("connect"),
        "the cause is still said: {errors:?}"
    );

    let stored = app.ledger_snapshot().await;
    assert!(!stored.contains("sekrit"), "the ledger stores a secret");
    app.stop().await;
}

#[test]
fn a_webhook_or_slack_url_that_is_not_http_is_refused_without_quoting_it() {
    let schedule = r#"
[[schedules]]
name = "s"
invoker = "local"
pages = { urls = [] }

[[schedules.notify]]
webhook = { url = "ftp://hooks.example/sekrit-path", secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", previous_secret = "sekrit-not-whsec" }

[[schedules.notify]]
slack = { url = "hooks.slack.example/services/sekrit" }
"#;
    let problems = match Settings::from_toml(&config_toml("postgres://x@127.0.0.1/db", schedule)) {
        Ok(_) => panic!("the configuration is invalid"),
        Err(e) => e.0,
    };
    let text = problems.join("\n");
    assert!(!text.contains("sekrit"), "{text}");
    for expected in [
        r#"schedule "s": notify[0].webhook.url: must be an http or https URL"#,
        r#"schedule "s": notify[0].webhook.previous_secret: must start with "whsec_""#,
        r#"schedule "s": notify[1].slack.url: is not a URL"#,
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "missing {expected:?} in {problems:#?}"
        );
    }
}

#[tokio::test]
async fn during_webhook_secret_rotation_each_delivery_carries_both_signatures() {
    let receiver = Receiver::start(0).await;
    let notify = format!(
        "[[schedules.notify]]\nwebhook = {{ url = \"{}\", secret = \"{WEBHOOK_SECRET}\", previous_secret = \"{PREVIOUS_WEBHOOK_SECRET}\" }}\n",
        receiver.url
    );
    let (app, lambda) =
        TestApp::spawn_recording(&common::lambda_schedule_block("s", 1, "", &notify)).await;
    finish_one_page_run(&app, &lambda).await;

    let d = receiver
        .wait_for(1, Duration::from_secs(10))
        .await
        .remove(0);
    let signatures: Vec<&str> = d.header("webhook-signature").split(' ').collect();
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    assert_eq!(signatures[0], signature_under(WEBHOOK_SECRET, &d));
    assert_eq!(signatures[1], signature_under(PREVIOUS_WEBHOOK_SECRET, &d));
    assert_ne!(signatures[0], signatures[1]);
    app.stop().await;
}

#[tokio::test]
async fn without_a_previous_secret_a_delivery_carries_one_signature() {
    let (app, lambda, receiver) = notifying_app("s", 1, "").await;
    finish_one_page_run(&app, &lambda).await;
    let d = receiver
        .wait_for(1, Duration::from_secs(10))
        .await
        .remove(0);
    assert!(!d.header("webhook-signature").contains(' '));
    d.assert_signed();
    app.stop().await;
}

/// The application on `db` signing task tokens with `secret` and also
/// accepting `previous`.
async fn daemon(
    db: &str,
    secret: &str,
    previous: &[&str],
    lambda: Arc<RecordingLambda>,
) -> (String, AppTask) {
    let schedule = lambda_schedule("s", 1, None, "");
    let previous: Vec<String> = previous.iter().map(|p| format!("{p:?}")).collect();
    let toml = common::config_toml_with(db, 0, 5, secret, ADMIN_TOKEN, &schedule).replacen(
        "allow_private_networks = true",
        &format!(
            "allow_private_networks = true\nprevious_callback_secrets = [{}]",
            previous.join(", ")
        ),
        1,
    );
    let settings = Settings::from_toml(&toml).unwrap_or_else(|e| panic!("{e}"));
    let overrides = Overrides {
        lambda: Some(lambda),
        ..Default::default()
    };
    let (address, app) = AppTask::start(settings, overrides).await;
    assert!(common::wait_ready(&reqwest::Client::new(), &address, Duration::from_secs(5)).await);
    (address, app)
}

async fn page_status(client: &reqwest::Client, address: &str, run: uuid::Uuid) -> Value {
    let (status, body) = common::get(
        client,
        address,
        ADMIN_TOKEN,
        &format!("/v1/runs/{run}/pages"),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body:#}");
    let pages = body
        .get("pages")
        .and_then(Value::as_array)
        .or_else(|| body.as_array())
        .cloned()
        .unwrap_or_default();
    pages[0]["status"].clone()
}

#[tokio::test]
async fn a_token_signed_with_a_previous_callback_secret_is_accepted_while_listed() {
    let db = fresh_database().await;
    let client = reqwest::Client::new();
    let lambda = Arc::new(RecordingLambda::default());

    // Daemon A signs with the old secret and dispatches the page.
    let (a, app_a) = daemon(&db, CALLBACK_SECRET, &[], lambda.clone()).await;
    let run = common::trigger(&client, &a, ADMIN_TOKEN, "s").await;
    let request = lambda.wait_for(1).await.remove(0);
    app_a.stop().await;
    let report = serde_json::to_vec(&succeeded(&request)).unwrap();

    // A daemon that no longer knows the old secret refuses the report and
    // changes nothing.
    let (c, app_c) = daemon(&db, NEW_CALLBACK_SECRET, &[], lambda.clone()).await;
    let (status, body) =
        common::post_callback(&client, &c, Some(&request.callback_token), report.clone())
            .await
            .unwrap();
    assert_eq!(status, 401, "{body:#}");
    assert_eq!(page_status(&client, &c, run).await, "dispatched");
    app_c.stop().await;

    // Mid-rotation: signs with the new secret, still accepts the old one.
    let (b, app_b) = daemon(&db, NEW_CALLBACK_SECRET, &[CALLBACK_SECRET], lambda.clone()).await;
    let (status, body) = common::post_callback(&client, &b, Some(&request.callback_token), report)
        .await
        .unwrap();
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("recorded")),
        "{body:#}"
    );
    assert_eq!(page_status(&client, &b, run).await, "succeeded");
    app_b.stop().await;
}
