//! The `fanfare-crawler` binary under a stand-in for the Lambda Runtime API
//! (`/2018-06-01/runtime/invocation/...`) on loopback: it hands the binary
//! one event and records what the function answers.

mod support;

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use fanfare_crawler::{ErrorKind, Report};
use serde_json::{json, Value};
use support::{serve, Receiver};
use tokio::process::Command;
use tokio::sync::mpsc;

const BINARY: &str = env!("CARGO_BIN_EXE_fanfare-crawler");

/// What the function posted for an invocation.
#[derive(Debug)]
enum Answer {
    Response(Value),
    Error(Value),
}

#[derive(Clone)]
struct Runtime {
    event: Arc<Mutex<Option<Value>>>,
    answers: mpsc::UnboundedSender<Answer>,
}

async fn next(State(runtime): State<Runtime>) -> Response {
    let event = runtime.event.lock().unwrap().take();
    let Some(event) = event else {
        // No more events: hold the long poll, as Lambda does between events.
        std::future::pending::<()>().await;
        unreachable!()
    };
    let deadline = chrono::Utc::now().timestamp_millis() + 60_000;
    let mut headers = HeaderMap::new();
    headers.insert(
        "lambda-runtime-aws-request-id",
        HeaderValue::from_static("req-1"),
    );
    headers.insert(
        "lambda-runtime-deadline-ms",
        HeaderValue::from_str(&deadline.to_string()).unwrap(),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:eu-west-1:000000000000:function:fanfare-crawler"),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        HeaderValue::from_static("Root=1-0-0"),
    );
    (headers, event.to_string()).into_response()
}

async fn response(
    State(runtime): State<Runtime>,
    Path(_id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let _ = runtime
        .answers
        .send(Answer::Response(serde_json::from_slice(&body).unwrap()));
    StatusCode::ACCEPTED
}

async fn error(State(runtime): State<Runtime>, Path(_id): Path<String>, body: Bytes) -> StatusCode {
    let _ = runtime
        .answers
        .send(Answer::Error(serde_json::from_slice(&body).unwrap()));
    StatusCode::ACCEPTED
}

/// Runs the binary against a fake Runtime API serving `event`, with the
/// network guard opened (the pages here are on loopback); returns the
/// function's answer.
async fn invoke(event: Value) -> Answer {
    invoke_with(event, Some("true")).await
}

/// Like [`invoke`], with `FANFARE_CRAWLER_ALLOW_PRIVATE_NETWORKS` set to
/// `allow_private` (unset when `None`).
async fn invoke_with(event: Value, allow_private: Option<&str>) -> Answer {
    let (answers, mut received) = mpsc::unbounded_channel();
    let runtime = Runtime {
        event: Arc::new(Mutex::new(Some(event))),
        answers,
    };
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .with_state(runtime);
    let addr = serve(app).await;

    let mut command = Command::new(BINARY);
    command.env_remove("FANFARE_CRAWLER_ALLOW_PRIVATE_NETWORKS");
    if let Some(value) = allow_private {
        command.env("FANFARE_CRAWLER_ALLOW_PRIVATE_NETWORKS", value);
    }
    let mut child = command
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "fanfare-crawler")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("FANFARE_CRAWLER_TIMEOUT_SECS", "5")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(30), received.recv())
        .await
        .expect("the function answers within 30s")
        .expect("an answer");
    child.kill().await.unwrap();
    answer
}

fn event(url: &str, callback_url: &str) -> Value {
    json!({
        "version": 1,
        "run_id": "run-9",
        "page_id": "page-9",
        "attempt": 1,
        "url": url,
        "extract": {"h": "h1"},
        "callback_url": callback_url,
        "callback_token": "tok-9",
        "deadline": "2026-11-26T03:05:00Z"
    })
}

async fn page() -> String {
    page_counting(Arc::default()).await
}

/// A page that counts the requests it is sent in `hits`.
async fn page_counting(hits: Arc<AtomicUsize>) -> String {
    let app = Router::new().route(
        "/",
        get(move || async move {
            hits.fetch_add(1, Ordering::SeqCst);
            Html("<title>Hi</title><h1> Hello </h1>")
        }),
    );
    format!("http://{}/", serve(app).await)
}

#[tokio::test]
async fn lambda_event_is_crawled_reported_and_answered_with_the_report() {
    let url = page().await;
    let (receiver, callback_url) = Receiver::start(&[]).await;

    let answer = invoke(event(&url, &callback_url)).await;

    let Answer::Response(body) = answer else {
        panic!("expected a response, got {answer:?}");
    };
    let report: Report = serde_json::from_value(body).unwrap();
    assert_eq!(report.run_id, "run-9");
    let facts = report.outcome.facts().expect("crawled");
    assert_eq!(facts.title.as_deref(), Some("Hi"));
    assert_eq!(facts.fields["h"].as_str(), Some("Hello"));
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].authorization.as_deref(), Some("Bearer tok-9"));
    assert_eq!(
        received[0].content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(
        serde_json::from_str::<Report>(&received[0].body).unwrap(),
        report
    );
}

#[tokio::test]
async fn lambda_event_in_another_contract_version_fails_naming_the_version() {
    let url = page().await;
    let (receiver, callback_url) = Receiver::start(&[]).await;
    let mut event = event(&url, &callback_url);
    event["version"] = json!(2);

    let answer = invoke(event).await;

    let Answer::Error(body) = answer else {
        panic!("expected an error, got {answer:?}");
    };
    let message = body["errorMessage"].as_str().unwrap();
    assert!(message.contains("version 2"), "{message}");
    assert!(receiver.received().is_empty(), "nothing is reported");
}

#[tokio::test]
async fn lambda_invocation_fails_when_the_callback_is_refused_so_lambda_retries_it() {
    let url = page().await;
    let (receiver, callback_url) =
        Receiver::start(&[(StatusCode::UNAUTHORIZED, "invalid task token")]).await;

    let answer = invoke(event(&url, &callback_url)).await;

    let Answer::Error(body) = answer else {
        panic!("expected an error, got {answer:?}");
    };
    let message = body["errorMessage"].as_str().unwrap();
    assert!(message.contains("401"), "{message}");
    assert_eq!(receiver.received().len(), 1);
}

/// Starts the function with `variable` set to `value`; asserts the cold
/// start fails naming the variable.
async fn cold_start_fails_naming(variable: &str, value: &str) {
    let output = Command::new(BINARY)
        .env(variable, value)
        .env("RUST_LOG", "info")
        .output()
        .await
        .unwrap();

    assert!(!output.status.success(), "{variable}={value} started");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(variable), "stdout: {stdout}");
}

#[tokio::test]
async fn bad_setting_fails_the_cold_start_naming_the_variable() {
    cold_start_fails_naming("FANFARE_CRAWLER_MAX_BODY_BYTES", "ten megs").await;
}

#[tokio::test]
async fn lambda_crawler_refuses_loopback_pages_unless_its_environment_opens_private_networks() {
    let hits = Arc::new(AtomicUsize::new(0));
    let url = page_counting(hits.clone()).await;
    let (receiver, callback_url) = Receiver::start(&[]).await;

    // Unset: closed. The report (to a loopback callback URL: callbacks are
    // not guarded) says blocked, and the page was never asked for.
    let Answer::Response(body) = invoke_with(event(&url, &callback_url), None).await else {
        panic!("expected a response");
    };
    let report: Report = serde_json::from_value(body).unwrap();
    let error = report.outcome.error().expect("refused");
    assert_eq!(error.kind, ErrorKind::Blocked);
    assert!(!error.retryable);
    // Here the stand-in runtime API is on 127.0.0.1 too, and that address
    // is named for what it is to this function.
    assert!(
        error
            .message
            .starts_with("127.0.0.1 is the Lambda runtime API's address"),
        "{}",
        error.message
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the page saw no request");
    assert_eq!(receiver.received().len(), 1, "the refusal is reported");

    // "0" is closed too; "1" opens it.
    let Answer::Response(body) = invoke_with(event(&url, &callback_url), Some("0")).await else {
        panic!("expected a response");
    };
    let report: Report = serde_json::from_value(body).unwrap();
    assert_eq!(
        report.outcome.error().map(|e| e.kind),
        Some(ErrorKind::Blocked)
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    let Answer::Response(body) = invoke_with(event(&url, &callback_url), Some("1")).await else {
        panic!("expected a response");
    };
    let report: Report = serde_json::from_value(body).unwrap();
    let facts = report.outcome.facts().expect("crawled");
    assert_eq!(facts.title.as_deref(), Some("Hi"));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bad_private_networks_setting_fails_the_cold_start_naming_the_variable() {
    cold_start_fails_naming("FANFARE_CRAWLER_ALLOW_PRIVATE_NETWORKS", "sometimes").await;
}

#[tokio::test]
async fn lambda_event_with_validators_sends_them_and_reports_not_modified() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = support::validated_page(true, seen.clone()).await;
    let (receiver, callback_url) = Receiver::start(&[]).await;
    let mut event = event(&url, &callback_url);
    event["if_none_match"] = json!(support::PAGE_ETAG);
    event["if_modified_since"] = json!(support::PAGE_LAST_MODIFIED);

    let Answer::Response(body) = invoke(event).await else {
        panic!("expected a response");
    };
    let sent = seen.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["if-none-match"], support::PAGE_ETAG);
    assert_eq!(sent[0]["if-modified-since"], support::PAGE_LAST_MODIFIED);
    assert_eq!(body["not_modified"], true, "{body}");
    assert_eq!(body["http_status"], 304, "{body}");
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let reported: Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(reported, body);
}
