//! How the Lambda invoker answers Lambda's errors, with responses from
//! aws-smithy-mocks driving the real aws-sdk-lambda client.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_lambda::operation::invoke::{InvokeError as SdkInvokeError, InvokeOutput};
use aws_sdk_lambda::types::error::{
    RequestTooLargeException, ResourceNotFoundException, ServiceException, TooManyRequestsException,
};
use aws_smithy_mocks::{mock, mock_client, RuleMode};
use fanfare::dispatch::AwsLambda;
use fanfare_crawler::contract::CrawlRequest;

use crate::helpers::*;

/// Invokes seen by the mocked client: when, and the event.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(Instant, CrawlRequest)>>>);

impl Seen {
    fn record(&self, input: &aws_sdk_lambda::operation::invoke::InvokeInput) -> bool {
        let payload = input.payload().expect("an event has a payload");
        let request: CrawlRequest =
            serde_json::from_slice(payload.as_ref()).expect("a contract event");
        assert_eq!(input.invocation_type().map(|t| t.as_str()), Some("Event"));
        self.0.lock().unwrap().push((Instant::now(), request));
        true
    }

    /// A request matcher for a mock rule that records every invoke here.
    fn recorder(
        &self,
    ) -> impl Fn(&aws_sdk_lambda::operation::invoke::InvokeInput) -> bool + Send + Sync + 'static
    {
        let seen = self.clone();
        move |input| seen.record(input)
    }

    fn all(&self) -> Vec<(Instant, CrawlRequest)> {
        self.0.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) {
        eventually(&format!("{n} invokes"), secs(20), || async {
            let seen = self.all().len();
            holds(seen >= n, format!("{seen} invokes"))
        })
        .await
    }
}

fn accepted() -> InvokeOutput {
    InvokeOutput::builder().status_code(202).build()
}

fn throttled() -> SdkInvokeError {
    SdkInvokeError::TooManyRequestsException(
        TooManyRequestsException::builder()
            .retry_after_seconds("1")
            .message("Rate Exceeded.")
            .reason(aws_sdk_lambda::types::ThrottleReason::ReservedFunctionConcurrentInvocationLimitExceeded)
            .build(),
    )
}

async fn spawn(schedule: &str, api: AwsLambda) -> TestApp {
    TestApp::spawn(schedule, Some(Arc::new(api))).await
}

#[tokio::test]
async fn throttling_backs_off_for_retry_after_and_never_uses_up_an_attempt() {
    let seen = Seen::default();
    let rule = mock!(aws_sdk_lambda::Client::invoke)
        .match_requests(seen.recorder())
        .sequence()
        .error(throttled)
        .times(3)
        .output(accepted)
        .repeatedly()
        .build();
    let client = mock_client!(aws_sdk_lambda, RuleMode::Sequential, &[&rule]);
    // One attempt only: were throttling counted, the page would fail.
    let app = spawn(
        &lambda_schedule("t", 1, None, "max_attempts = 1"),
        AwsLambda::from_client(client),
    )
    .await;
    let run = app.trigger("t").await;
    seen.wait_for(4).await;
    let calls = seen.all();
    assert_eq!(rule.num_calls(), 4);
    for pair in calls.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(950),
            "retryAfterSeconds honoured: {gap:?}"
        );
    }
    assert!(
        calls.iter().all(|(_, r)| r.attempt == 1),
        "throttled invokes use up no attempt"
    );
    let accepted = &calls[3].1;
    app.report_recorded(accepted, &succeeded(accepted)).await;
    assert_eq!(app.wait_outcome(run, secs(5)).await, "succeeded");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"fanfare_invokes_total{schedule="t",outcome="throttled"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"fanfare_pages_retried_total{reason="throttled"} 3"#),
        "every throttled invoke is a retry and counts as one: {metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_request_too_large_answer_fails_the_page_without_retry() {
    let seen = Seen::default();
    let rule = mock!(aws_sdk_lambda::Client::invoke)
        .match_requests(seen.recorder())
        .then_error(|| {
            SdkInvokeError::RequestTooLargeException(
                RequestTooLargeException::builder()
                    .message("Request must be smaller than 262144 bytes")
                    .build(),
            )
        });
    let client = mock_client!(aws_sdk_lambda, RuleMode::MatchAny, &[&rule]);
    let app = spawn(
        &lambda_schedule("big", 1, None, "max_attempts = 3"),
        AwsLambda::from_client(client),
    )
    .await;
    let (run, finished) = app.run_once("big", Duration::from_secs(10)).await;
    assert_eq!(finished["outcome"], "failed");
    assert_eq!(finished["pages"]["failed"], 1);
    assert_eq!(rule.num_calls(), 1, "no retry");
    let (_, pages) = app.get(&format!("/v1/runs/{run}/pages")).await;
    assert!(pages["pages"][0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("RequestTooLargeException"));
    app.stop().await;
}

#[tokio::test]
async fn an_event_over_256_kib_fails_before_it_is_sent() {
    let rule = mock!(aws_sdk_lambda::Client::invoke).then_output(accepted);
    let client = mock_client!(aws_sdk_lambda, RuleMode::MatchAny, &[&rule]);
    let long_url = format!("http://127.0.0.1:9/{}", "a".repeat(270 * 1024));
    let schedule = schedule("huge")
        .lambda("crawler")
        .urls([long_url])
        .to_string();
    let app = spawn(&schedule, AwsLambda::from_client(client)).await;
    let (run, finished) = app.run_once("huge", Duration::from_secs(10)).await;
    assert_eq!(finished["pages"]["failed"], 1);
    assert_eq!(rule.num_calls(), 0, "nothing was sent");
    let (_, pages) = app.get(&format!("/v1/runs/{run}/pages")).await;
    let message = pages["pages"][0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("over Lambda's 262144-byte limit"),
        "{}",
        &message[..message.len().min(300)]
    );
    app.stop().await;
}

async fn assert_run_fails_fast(
    client: aws_sdk_lambda::Client,
    rule: &aws_smithy_mocks::Rule,
    expect: &str,
) {
    let receiver = Receiver::start(0).await;
    let pages = 40;
    let app = spawn(
        &lambda_schedule("gone", pages, Some(&receiver), "max_attempts = 3")
            .replace("max_in_flight = 10000", "max_in_flight = 10"),
        AwsLambda::from_client(client),
    )
    .await;
    let (_, finished) = app.run_once("gone", Duration::from_secs(10)).await;
    assert_eq!(finished["outcome"], "failed");
    let error = finished["error"].as_str().unwrap();
    assert!(
        error.contains("crawler-fn") && error.contains(expect),
        "{error}"
    );
    assert_eq!(finished["pages"]["open"], 0);
    assert!(
        rule.num_calls() <= 10,
        "failed fast: {} invokes for {pages} pages",
        rule.num_calls()
    );
    let d = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert!(d[0].json()["error"].as_str().unwrap().contains(expect));
    app.stop().await;
}

#[tokio::test]
async fn a_missing_function_fails_the_run_fast_with_the_reason_in_its_notification() {
    let rule = mock!(aws_sdk_lambda::Client::invoke).then_error(|| {
        SdkInvokeError::ResourceNotFoundException(
            ResourceNotFoundException::builder()
                .message(
                    "Function not found: arn:aws:lambda:us-east-1:123456789012:function:crawler-fn",
                )
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_lambda, RuleMode::MatchAny, &[&rule]);
    assert_run_fails_fast(client, &rule, "ResourceNotFoundException").await;
}

#[tokio::test]
async fn access_denied_fails_the_run_fast_with_the_reason_in_its_notification() {
    let rule = mock!(aws_sdk_lambda::Client::invoke).then_http_response(|| {
        let mut response = aws_smithy_runtime_api::http::Response::new(
            aws_smithy_runtime_api::http::StatusCode::try_from(403).unwrap(),
            aws_smithy_types::body::SdkBody::from(
                r#"{"Type":"User","Message":"User is not authorized to perform: lambda:InvokeFunction"}"#,
            ),
        );
        response.headers_mut().insert("x-amzn-errortype", "AccessDeniedException");
        response.headers_mut().insert("content-type", "application/json");
        response
    });
    let client = mock_client!(aws_sdk_lambda, RuleMode::MatchAny, &[&rule]);
    assert_run_fails_fast(
        client,
        &rule,
        "AccessDeniedException: User is not authorized",
    )
    .await;
}

/// Two `ServiceException`s (500), then accepted invokes; each invoke is
/// recorded in `seen`.
fn two_service_errors_then_accepted(seen: Seen) -> aws_smithy_mocks::Rule {
    mock!(aws_sdk_lambda::Client::invoke)
        .match_requests(seen.recorder())
        .sequence()
        .error(|| {
            SdkInvokeError::ServiceException(
                ServiceException::builder().message("internal").build(),
            )
        })
        .times(2)
        .output(accepted)
        .repeatedly()
        .build()
}

/// A one-page schedule `five` of `max_attempts` over `rule`; its run.
async fn run_five(rule: &aws_smithy_mocks::Rule, max_attempts: u32) -> (TestApp, uuid::Uuid) {
    let client = mock_client!(aws_sdk_lambda, RuleMode::Sequential, &[rule]);
    let extra = format!("max_attempts = {max_attempts}");
    let app = spawn(
        &lambda_schedule("five", 1, None, &extra),
        AwsLambda::from_client(client),
    )
    .await;
    let run = app.trigger("five").await;
    (app, run)
}

#[tokio::test]
async fn service_errors_are_retried_within_the_pages_attempts() {
    let seen = Seen::default();
    let rule = two_service_errors_then_accepted(seen.clone());
    let (app, run) = run_five(&rule, 3).await;
    seen.wait_for(3).await;
    let attempts: Vec<u32> = seen.all().iter().map(|(_, r)| r.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3], "each 5xx uses up an attempt");
    let last = &seen.all()[2].1;
    app.post_report(Some(&last.callback_token), &succeeded(last))
        .await;
    assert_eq!(app.wait_outcome(run, secs(5)).await, "succeeded");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"fanfare_pages_retried_total{reason="invoke"} 2"#),
        "every retried invoke counts as a retry: {metrics}"
    );
    app.stop().await;

    // With one attempt fewer, the same errors fail the page.
    let rule = two_service_errors_then_accepted(Seen::default());
    let (app, run) = run_five(&rule, 2).await;
    let finished = app.wait_finished(run, Duration::from_secs(15)).await;
    assert_eq!(finished["outcome"], "failed");
    assert_eq!(rule.num_calls(), 2);
    app.stop().await;
}
