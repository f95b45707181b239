//! The crawler against real loopback HTTP servers: targets that answer as
//! real sites do, and a callback receiver that records what it was sent.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Redirect;
use axum::routing::get;
use axum::Router;
use fanfare_crawler::netguard::NetPolicy;
use fanfare_crawler::{
    CallbackAck, CallbackError, CallbackStatus, CrawlError, CrawlRequest, Crawler, CrawlerConfig,
    ErrorKind, Outcome, PageFacts, Report, CONTRACT_VERSION,
};
use sha2::{Digest, Sha256};
use support::{request, serve, Receiver};

const PAGE: &str = "<!doctype html>
<html><head><title>
    Blue Widget | Shop
</title></head>
<body>
  <h1 class=\"name\">Blue   Widget</h1>
  <div class=\"price\">
      <span>$</span>
      9.99
  </div>
  <div class=\"desc\"><p>Made of
     <b>blue</b>
     things.</p></div>
</body></html>";

/// Settings small enough for tests: short timeouts, quick retries; the
/// network guard opened on purpose, since every target here is on loopback
/// (the guard's own tests are in `tests/private_networks.rs`).
fn config() -> CrawlerConfig {
    CrawlerConfig {
        timeout: Duration::from_secs(5),
        callback_timeout: Duration::from_secs(2),
        callback_backoff: Duration::from_millis(10),
        net: NetPolicy::open(),
        ..CrawlerConfig::default()
    }
}

fn crawler() -> Crawler {
    Crawler::new(config()).unwrap()
}

fn with_fields(mut request: CrawlRequest, fields: &[(&str, &str)]) -> CrawlRequest {
    request.extract = fields
        .iter()
        .map(|(name, css)| (name.to_string(), (*css).into()))
        .collect();
    request
}

fn facts(outcome: Outcome) -> PageFacts {
    match outcome {
        Outcome::Succeeded(facts) => facts,
        Outcome::Failed { error } => panic!("expected success, got {error}"),
    }
}

fn failure(outcome: Outcome) -> CrawlError {
    match outcome {
        Outcome::Failed { error } => error,
        Outcome::Succeeded(facts) => panic!("expected failure, got {facts:?}"),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn target(path: &'static str, handler: axum::routing::MethodRouter) -> String {
    let addr = serve(Router::new().route(path, handler)).await;
    format!("http://{addr}{path}")
}

async fn status_page(status: StatusCode) -> String {
    target(
        "/page",
        get(move || async move { (status, "<html><title>Nope</title></html>") }),
    )
    .await
}

// ---- crawling ----

#[tokio::test]
async fn page_with_title_and_selectors_reports_its_facts() {
    let url = target("/item", get(|| async { axum::response::Html(PAGE) })).await;
    let request = with_fields(
        request(&url),
        &[
            ("name", "h1.name"),
            ("price", ".price"),
            ("desc", ".desc p"),
            ("sku", ".sku"),
        ],
    );

    let facts = facts(crawler().crawl(&request).await);

    assert_eq!(facts.http_status, 200);
    assert_eq!(facts.title.as_deref(), Some("Blue Widget | Shop"));
    assert_eq!(facts.fields["name"].as_str(), Some("Blue Widget"));
    assert_eq!(facts.fields["price"].as_str(), Some("$ 9.99"));
    assert_eq!(facts.fields["desc"].as_str(), Some("Made of blue things."));
    assert_eq!(
        facts.fields["sku"],
        serde_json::Value::Null,
        "no match is null"
    );
    assert_eq!(facts.fields.len(), 4);
    assert_eq!(facts.bytes, PAGE.len() as u64);
    assert_eq!(facts.content_sha256, sha256_hex(PAGE.as_bytes()));
    assert!(facts.fetch_ms < 5_000);
}

#[tokio::test]
async fn page_without_a_title_reports_no_title_and_no_fields() {
    let url = target("/bare", get(|| async { "<p>just text</p>" })).await;

    let facts = facts(crawler().crawl(&request(&url)).await);

    assert_eq!(facts.title, None);
    assert!(facts.fields.is_empty());
    assert_eq!(facts.bytes, "<p>just text</p>".len() as u64);
}

#[tokio::test]
async fn page_in_latin1_is_decoded_by_its_declared_charset() {
    const LATIN1: &[u8] = b"<title>Caf\xe9 cr\xe8me</title>";
    let url = target(
        "/latin1",
        get(|| async {
            (
                [(header::CONTENT_TYPE, "text/html; charset=ISO-8859-1")],
                LATIN1,
            )
        }),
    )
    .await;

    let facts = facts(crawler().crawl(&request(&url)).await);

    assert_eq!(facts.title.as_deref(), Some("Café crème"));
    assert_eq!(
        facts.bytes,
        LATIN1.len() as u64,
        "bytes counts the body as sent"
    );
    assert_eq!(facts.content_sha256, sha256_hex(LATIN1));
}

#[tokio::test]
async fn error_statuses_fail_as_http_status_retried_for_503_and_429_and_not_for_404() {
    for (status, retryable) in [
        (StatusCode::NOT_FOUND, false),
        (StatusCode::SERVICE_UNAVAILABLE, true),
        (StatusCode::TOO_MANY_REQUESTS, true),
    ] {
        let url = status_page(status).await;

        let error = failure(crawler().crawl(&request(&url)).await);

        assert_eq!(error.kind, ErrorKind::HttpStatus, "{status}");
        assert_eq!(error.retryable, retryable, "{status}");
        let code = status.as_u16().to_string();
        assert!(error.message.contains(&code), "{status}: {}", error.message);
    }
}

#[tokio::test]
async fn slow_page_fails_as_timeout_with_retry() {
    let url = target(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "too late"
        }),
    )
    .await;
    let crawler = Crawler::new(CrawlerConfig {
        timeout: Duration::from_millis(300),
        ..config()
    })
    .unwrap();

    let started = std::time::Instant::now();
    let error = failure(crawler.crawl(&request(&url)).await);

    assert_eq!(error.kind, ErrorKind::Timeout);
    assert!(error.retryable);
    assert!(error.message.contains("300ms"), "{}", error.message);
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn body_that_stalls_midway_fails_as_timeout_with_retry() {
    let url = target(
        "/stall",
        get(|| async {
            let chunks = futures_util::stream::unfold(0, |n| async move {
                if n > 0 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                (n < 2).then(|| (Ok::<_, std::io::Error>(Bytes::from("<p>part</p>")), n + 1))
            });
            Body::from_stream(chunks)
        }),
    )
    .await;
    let crawler = Crawler::new(CrawlerConfig {
        timeout: Duration::from_millis(300),
        ..config()
    })
    .unwrap();

    let error = failure(crawler.crawl(&request(&url)).await);

    assert_eq!(error.kind, ErrorKind::Timeout);
    assert!(error.retryable);
    assert!(error.message.contains("300ms"), "{}", error.message);
}

/// A page of `PAGE_BYTES` bytes, its `Content-Length` announced, sent as a
/// first part at once and the rest `pause` after `go` is notified.
fn slow_page(go: Arc<tokio::sync::Notify>, pause: Duration) -> axum::response::Response {
    const PAGE_BYTES: usize = 2_000;
    let page = format!("<title>Slow</title><p>{}</p>", "x".repeat(PAGE_BYTES));
    let page = Bytes::from(page[..PAGE_BYTES].to_string());
    let length = page.len();
    let chunks = futures_util::stream::unfold(0, move |n| {
        let (page, go) = (page.clone(), go.clone());
        async move {
            let part = match n {
                0 => page.slice(..100),
                1 => {
                    go.notified().await;
                    tokio::time::sleep(pause).await;
                    page.slice(100..)
                }
                _ => return None,
            };
            Some((Ok::<_, std::io::Error>(part), n + 1))
        }
    });
    let mut response = axum::response::Response::new(Body::from_stream(chunks));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, length.into());
    response
}

#[tokio::test]
async fn slow_body_under_the_timeout_succeeds_after_waiting_for_the_parse_budget() {
    // One page at a time fits the parse budget, and a page of announced
    // length takes its share before its body is read. Each body takes 1.2 s
    // of a 2 s timeout to arrive; the second's arrives only once the first
    // is crawled, so it waits for the budget and then for its body, over
    // 2 s in all, and fails if the wait is counted against its timeout.
    let (first_go, second_go) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    first_go.notify_one();
    let pause = Duration::from_millis(1_200);
    let first_url = {
        let go = first_go.clone();
        target("/first", get(move || async move { slow_page(go, pause) })).await
    };
    let second_url = {
        let go = second_go.clone();
        target("/second", get(move || async move { slow_page(go, pause) })).await
    };
    let crawler = Crawler::new(CrawlerConfig {
        timeout: Duration::from_secs(2),
        parse_budget_bytes: 1_024,
        ..config()
    })
    .unwrap();

    let started = std::time::Instant::now();
    let first = tokio::spawn({
        let crawler = crawler.clone();
        async move { crawler.crawl(&request(&first_url)).await }
    });
    while crawler.parse_budget_available() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the first crawl never took the parse budget"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = tokio::spawn({
        let crawler = crawler.clone();
        async move { crawler.crawl(&request(&second_url)).await }
    });
    let first = facts(first.await.unwrap());
    second_go.notify_one();
    let second = facts(second.await.unwrap());

    assert!(started.elapsed() > Duration::from_secs(2));
    assert_eq!(first.title.as_deref(), Some("Slow"));
    assert_eq!(second.title.as_deref(), Some("Slow"));
    assert_eq!(second.bytes, 2_000);
    assert!(second.fetch_ms < 2_000, "fetch_ms {}", second.fetch_ms);
    assert_eq!(crawler.parse_budget_available(), 1_024);
}

fn capped_crawler(max_body_bytes: u64) -> Crawler {
    Crawler::new(CrawlerConfig {
        max_body_bytes,
        ..config()
    })
    .unwrap()
}

#[tokio::test]
async fn page_over_the_size_cap_fails_as_too_large_without_retry() {
    let url = target("/big", get(|| async { "x".repeat(2_000) })).await;

    let error = failure(capped_crawler(1_000).crawl(&request(&url)).await);

    assert_eq!(error.kind, ErrorKind::TooLarge);
    assert!(!error.retryable);
    assert!(error.message.contains("1000"), "{}", error.message);
    assert!(error.message.contains("2000 bytes"), "{}", error.message);
}

#[tokio::test]
async fn chunked_page_over_the_size_cap_fails_as_too_large_without_retry() {
    let url = target(
        "/chunked",
        get(|| async {
            // No Content-Length: 100 chunks of 100 bytes, far past the cap.
            let chunks = futures_util::stream::iter(
                (0..100).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 100]))),
            );
            Body::from_stream(chunks)
        }),
    )
    .await;

    let error = failure(capped_crawler(1_000).crawl(&request(&url)).await);

    assert_eq!(error.kind, ErrorKind::TooLarge);
    assert!(!error.retryable);
}

#[tokio::test]
async fn page_exactly_at_the_size_cap_is_crawled() {
    let url = target("/exact", get(|| async { "x".repeat(1_000) })).await;

    let facts = facts(capped_crawler(1_000).crawl(&request(&url)).await);

    assert_eq!(facts.bytes, 1_000);
}

#[tokio::test]
async fn redirect_is_followed_to_the_final_page() {
    let app = Router::new()
        .route("/old", get(|| async { Redirect::permanent("/moved") }))
        .route("/moved", get(|| async { Redirect::temporary("/item") }))
        .route("/item", get(|| async { axum::response::Html(PAGE) }));
    let addr = serve(app).await;
    let request = with_fields(
        request(format!("http://{addr}/old")),
        &[("price", ".price")],
    );

    let facts = facts(crawler().crawl(&request).await);

    assert_eq!(facts.http_status, 200);
    assert_eq!(facts.title.as_deref(), Some("Blue Widget | Shop"));
    assert_eq!(facts.fields["price"].as_str(), Some("$ 9.99"));
    assert_eq!(facts.content_sha256, sha256_hex(PAGE.as_bytes()));
}

#[tokio::test]
async fn redirect_loop_fails_as_redirect_without_retry() {
    let app = Router::new()
        .route("/a", get(|| async { Redirect::temporary("/b") }))
        .route("/b", get(|| async { Redirect::temporary("/a") }));
    let addr = serve(app).await;

    let error = failure(crawler().crawl(&request(format!("http://{addr}/a"))).await);

    assert_eq!(error.kind, ErrorKind::Redirect);
    assert!(!error.retryable);
}

#[tokio::test]
async fn refused_connection_fails_as_connect_with_retry() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);

    let error = failure(crawler().crawl(&request(format!("http://{addr}/"))).await);

    assert_eq!(error.kind, ErrorKind::Connect);
    assert!(error.retryable);
    assert!(
        error.message.contains(&addr.to_string()),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn https_to_a_plain_http_server_fails_as_tls_without_retry() {
    let addr = serve(Router::new().route("/", get(|| async { "plain" }))).await;

    let error = failure(crawler().crawl(&request(format!("https://{addr}/"))).await);

    assert_eq!(error.kind, ErrorKind::Tls, "{}", error.message);
    assert!(!error.retryable);
}

#[tokio::test]
async fn invalid_selector_fails_naming_the_field_and_selector_without_fetching() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let url = target(
        "/item",
        get(move || async move {
            counter.fetch_add(1, Ordering::SeqCst);
            axum::response::Html(PAGE)
        }),
    )
    .await;
    let request = with_fields(request(&url), &[("price", ".price"), ("broken", "div[[")]);

    let error = failure(crawler().crawl(&request).await);

    assert_eq!(error.kind, ErrorKind::InvalidSelector);
    assert!(!error.retryable);
    assert!(error.message.contains("\"broken\""), "{}", error.message);
    assert!(error.message.contains("div[["), "{}", error.message);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn non_http_scheme_fails_as_invalid_url_without_retry() {
    for url in ["ftp://example.com/file", "file:///etc/passwd", "not a url"] {
        let error = failure(crawler().crawl(&request(url)).await);

        assert_eq!(error.kind, ErrorKind::InvalidUrl, "{url}");
        assert!(!error.retryable);
        assert!(error.message.contains(url), "{}", error.message);
    }
}

// ---- callbacks ----

fn failed_report(request: &CrawlRequest) -> Report {
    Report::for_request(
        request,
        Outcome::failed(ErrorKind::Timeout, "no answer within 30s", true),
    )
}

/// Sends a failed report about a page to `callback_url`, trying
/// `attempts` times (the test crawler's number when `None`).
async fn report_failure(
    callback_url: String,
    attempts: Option<u32>,
) -> Result<CallbackAck, CallbackError> {
    let mut request = request("https://shop.example.com/item/1");
    request.callback_url = callback_url;
    let defaults = config();
    let crawler = Crawler::new(CrawlerConfig {
        callback_attempts: attempts.unwrap_or(defaults.callback_attempts),
        ..defaults
    })
    .unwrap();
    crawler.report(&request, &failed_report(&request)).await
}

#[tokio::test]
async fn report_is_posted_with_the_bearer_token_and_exact_json() {
    let (receiver, callback_url) = Receiver::start(&[]).await;
    let mut request = request("https://shop.example.com/item/1");
    request.callback_url = callback_url;
    request.callback_token = "tok-abc.123".into();

    let ack = crawler()
        .report(&request, &failed_report(&request))
        .await
        .unwrap();

    assert_eq!(ack.status, CallbackStatus::Recorded);
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].authorization.as_deref(),
        Some("Bearer tok-abc.123")
    );
    assert_eq!(
        received[0].content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(
        received[0].body,
        r#"{"version":1,"run_id":"run-1","page_id":"page-1","attempt":1,"outcome":"failed","error":{"kind":"timeout","message":"no answer within 30s","retryable":true}}"#
    );
}

#[tokio::test]
async fn callback_is_retried_after_two_503s_then_recorded() {
    let unavailable = (StatusCode::SERVICE_UNAVAILABLE, "try later");
    let (receiver, callback_url) = Receiver::start(&[unavailable, unavailable]).await;
    let mut request = request("https://shop.example.com/item/1");
    request.callback_url = callback_url;
    let report = failed_report(&request);

    let ack = crawler().report(&request, &report).await.unwrap();

    assert_eq!(ack.status, CallbackStatus::Recorded);
    let received = receiver.received();
    assert_eq!(received.len(), 3);
    let expected = serde_json::to_string(&report).unwrap();
    assert!(received.iter().all(|r| r.body == expected));
}

#[tokio::test]
async fn callback_rejected_with_401_is_not_retried() {
    let (receiver, callback_url) =
        Receiver::start(&[(StatusCode::UNAUTHORIZED, "invalid task token")]).await;

    let error = report_failure(callback_url, None).await.unwrap_err();

    assert!(
        matches!(&error, CallbackError::Rejected { status: 401, body } if body == "invalid task token"),
        "{error:?}"
    );
    assert_eq!(error.status(), Some(401));
    assert!(error.to_string().contains("401"), "{error}");
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn callback_that_keeps_failing_gives_up_after_the_configured_attempts() {
    let unavailable = (StatusCode::BAD_GATEWAY, "down");
    let (receiver, callback_url) = Receiver::start(&[unavailable; 10]).await;

    let error = report_failure(callback_url, Some(3)).await.unwrap_err();

    assert!(
        matches!(&error, CallbackError::Exhausted { attempts: 3, last } if last.contains("502")),
        "{error:?}"
    );
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test]
async fn callback_to_a_refused_port_is_retried_then_gives_up() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);

    let refused = format!("http://{addr}/v1/callbacks");
    let error = report_failure(refused, Some(2)).await.unwrap_err();

    assert!(
        matches!(&error, CallbackError::Exhausted { attempts: 2, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn duplicate_acknowledgement_is_returned_as_duplicate() {
    let (_receiver, callback_url) =
        Receiver::start(&[(StatusCode::OK, r#"{"status":"duplicate"}"#)]).await;

    let ack = report_failure(callback_url, None).await.unwrap();

    assert_eq!(ack.status, CallbackStatus::Duplicate);
}

#[tokio::test]
async fn unreadable_acknowledgement_is_an_error_and_not_retried() {
    let (receiver, callback_url) = Receiver::start(&[(StatusCode::OK, "ok!")]).await;

    let error = report_failure(callback_url, None).await.unwrap_err();

    assert!(
        matches!(&error, CallbackError::BadAck { status: 200, .. }),
        "{error:?}"
    );
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn handle_crawls_the_page_and_delivers_its_report() {
    let url = target("/item", get(|| async { axum::response::Html(PAGE) })).await;
    let (receiver, callback_url) = Receiver::start(&[]).await;
    let mut request = with_fields(request(&url), &[("price", ".price"), ("sku", ".sku")]);
    request.callback_url = callback_url;
    request.attempt = 2;

    let report = crawler().handle(request.clone()).await.unwrap();

    assert_eq!(report.version, CONTRACT_VERSION);
    assert_eq!(report.run_id, "run-1");
    assert_eq!(report.page_id, "page-1");
    assert_eq!(report.attempt, 2);
    let facts = report.outcome.facts().expect("the page was crawled");
    assert_eq!(facts.fields["price"].as_str(), Some("$ 9.99"));
    assert_eq!(facts.fields["sku"], serde_json::Value::Null);
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let sent: Report = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(sent, report);
    let sent: serde_json::Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(sent["outcome"], "succeeded");
    assert_eq!(sent["fields"]["sku"], serde_json::Value::Null);
}

#[tokio::test]
async fn handle_reports_a_failed_crawl_as_a_failed_outcome() {
    let url = status_page(StatusCode::GONE).await;
    let (receiver, callback_url) = Receiver::start(&[]).await;
    let mut request = request(&url);
    request.callback_url = callback_url;

    let report = crawler().handle(request).await.unwrap();

    let error = report.outcome.error().expect("the crawl failed");
    assert_eq!(error.kind, ErrorKind::HttpStatus);
    assert!(!error.retryable);
    let sent: serde_json::Value = serde_json::from_str(&receiver.received()[0].body).unwrap();
    assert_eq!(sent["outcome"], "failed");
    assert_eq!(sent["error"]["kind"], "http_status");
}

#[tokio::test]
async fn handle_returns_the_callback_error_when_the_report_is_refused() {
    let url = target("/item", get(|| async { axum::response::Html(PAGE) })).await;
    let (_receiver, callback_url) =
        Receiver::start(&[(StatusCode::UNPROCESSABLE_ENTITY, "unknown page")]).await;
    let mut request = request(&url);
    request.callback_url = callback_url;

    let error = crawler().handle(request).await.unwrap_err();

    assert_eq!(error.status(), Some(422));
    assert!(error.to_string().contains("unknown page"), "{error}");
}

#[tokio::test]
async fn a_page_reports_its_validators_and_a_matching_conditional_get_reports_not_modified() {
    use support::{validated_page, PAGE_ETAG, PAGE_LAST_MODIFIED};
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let url = validated_page(true, seen.clone()).await;

    // Unconditional: the page, with its validators reported.
    let full = facts(crawler().crawl(&request(url.clone())).await);
    assert_eq!(full.http_status, 200);
    assert!(!full.not_modified);
    assert_eq!(full.title.as_deref(), Some("Hi"));
    assert_eq!(full.etag.as_deref(), Some(PAGE_ETAG));
    assert_eq!(full.last_modified.as_deref(), Some(PAGE_LAST_MODIFIED));

    // With both validators: the headers are sent, the 304 is a success
    // with nothing extracted.
    let mut conditional = request(url.clone());
    conditional.if_none_match = full.etag.clone();
    conditional.if_modified_since = full.last_modified.clone();
    let kept = facts(crawler().crawl(&conditional).await);
    assert!(kept.not_modified, "{kept:?}");
    assert_eq!(kept.http_status, 304);
    assert_eq!((kept.title.as_deref(), kept.bytes), (None, 0));
    assert!(kept.fields.is_empty() && kept.content_sha256.is_empty());
    assert_eq!(kept.etag.as_deref(), Some(PAGE_ETAG), "the 304's own ETag");
    let sent = seen.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert!(sent[0].get(header::IF_NONE_MATCH).is_none());
    assert!(sent[0].get(header::IF_MODIFIED_SINCE).is_none());
    assert_eq!(sent[1][header::IF_NONE_MATCH], PAGE_ETAG);
    assert_eq!(sent[1][header::IF_MODIFIED_SINCE], PAGE_LAST_MODIFIED);

    // Last-Modified alone works too; a stale ETag gets the page again.
    let mut since = request(url.clone());
    since.if_modified_since = Some(PAGE_LAST_MODIFIED.into());
    assert!(facts(crawler().crawl(&since).await).not_modified);
    let mut stale = request(url);
    stale.if_none_match = Some("\"v0\"".into());
    let again = facts(crawler().crawl(&stale).await);
    assert!(!again.not_modified);
    assert_eq!(again.title.as_deref(), Some("Hi"));
}

#[tokio::test]
async fn a_site_that_ignores_validators_is_crawled_in_full_and_a_304_unasked_for_fails() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let url = support::validated_page(false, seen).await;
    let mut conditional = request(url);
    conditional.if_none_match = Some(support::PAGE_ETAG.into());
    let full = facts(crawler().crawl(&conditional).await);
    assert!(!full.not_modified);
    assert_eq!(full.title.as_deref(), Some("Hi"));

    // A 304 to a request without validators is not an answer to it.
    let app = Router::new().route("/", get(|| async { StatusCode::NOT_MODIFIED }));
    let url = format!("http://{}/", serve(app).await);
    let error = failure(crawler().crawl(&request(url)).await);
    assert_eq!(error.kind, ErrorKind::HttpStatus);
    assert_eq!(error.http_status, Some(304));
}
