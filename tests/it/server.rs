//! The HTTP server against slow and hostile clients: header, body and idle
//! timeouts, the connection cap, the token checked before the body is read,
//! NUL in reports, JSON errors for bad query strings. Raw `TcpStream`s play
//! the clients, so nothing between the test and the server hides a byte.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

fn host_port(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_string()
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(host_port(app)).await.unwrap()
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n")
}

/// Reads one response (headers and a Content-Length body); `None` when the
/// server closed the connection first.
async fn read_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let status = head.split(' ').nth(1)?.parse().ok()?;
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
                return Some((status, body));
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Waits until the server closes `stream` (reading and discarding what it
/// sends); returns how long that took from `since`, or `None` if it was
/// still open after `within`.
async fn closed_after(
    stream: &mut TcpStream,
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// The result and the error the ledger stored for `request`'s page.
async fn stored_outcome(
    app: &TestApp,
    request: &fanfare_crawler::contract::CrawlRequest,
) -> (serde_json::Value, serde_json::Value) {
    let page: i64 = request.page_id.parse().unwrap();
    let (result, error): (Option<serde_json::Value>, Option<serde_json::Value>) =
        sqlx::query_as("select result, error from pages where id = $1")
            .bind(page)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    (result.unwrap_or_default(), error.unwrap_or_default())
}

#[tokio::test]
async fn a_connection_that_sends_its_headers_slower_than_the_header_timeout_is_closed() {
    let app = TestApp::builder()
        .tweak(|s| {
            s.server.header_timeout = Duration::from_secs(1);
        })
        .spawn()
        .await;
    let stream = connect(&app).await;
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    // One byte every 100 ms of a request that would take 4 s to send.
    let trickle = tokio::spawn(async move {
        for byte in b"GET /healthz HTTP/1.1\r\nhost: test\r\nx-padding: aaaaaaaaaaaaa\r\n\r\n" {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut chunk))
        .await
        .expect("the server closed the connection");
    let closed = started.elapsed();
    if let Ok(n @ 1..) = read {
        panic!(
            "the server answered a request whose headers never arrived in time: {:?}",
            String::from_utf8_lossy(&chunk[..n])
        );
    }
    trickle.abort();
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}, before the header timeout"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_and_not_before() {
    let app = TestApp::builder()
        .tweak(|s| {
            // Shorter than the idle timeout: waiting for the next request on a
            // keep-alive connection must not count as reading headers.
            s.server.header_timeout = Duration::from_secs(1);
            s.server.idle_timeout = Duration::from_secs(3);
        })
        .spawn()
        .await;
    let mut stream = connect(&app).await;
    stream
        .write_all(get_request("/healthz").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.unwrap().0, 200);

    // Past the header timeout, within the idle timeout: still served.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stream
        .write_all(get_request("/healthz").as_bytes())
        .await
        .unwrap();
    let second = read_response(&mut stream).await;
    assert_eq!(
        second.map(|r| r.0),
        Some(200),
        "the keep-alive connection was closed before the idle timeout"
    );
    let idle_since = Instant::now();
    let closed = closed_after(&mut stream, idle_since, Duration::from_secs(8))
        .await
        .expect("the idle connection was closed");
    assert!(
        closed >= Duration::from_millis(2900),
        "closed after {closed:?} idle, before the idle timeout of 3 s"
    );
    app.stop().await;
}

async fn app_with_dispatched_page(
    tweak: impl FnOnce(&mut fanfare::Settings) + 'static,
) -> (TestApp, fanfare_crawler::contract::CrawlRequest) {
    let lambda = Arc::new(RecordingLambda::default());
    let app = TestApp::builder()
        .toml(&lambda_schedule("s", 1, None, ""))
        .lambda(lambda.clone())
        .tweak(tweak)
        .spawn()
        .await;
    let run = app.trigger("s").await;
    let request = lambda.wait_for(1).await.remove(0);
    // So that a ledger snapshot taken now changes only through the test.
    app.wait_listed(run, Duration::from_secs(20)).await;
    (app, request)
}

#[tokio::test]
async fn a_callback_body_sent_too_slowly_ends_in_408_without_touching_the_ledger() {
    let (app, request) = app_with_dispatched_page(|s| {
        s.server.body_timeout = Duration::from_secs(1);
    })
    .await;
    let before = app.ledger_snapshot().await;
    let body = serde_json::to_vec(&succeeded(&request)).unwrap();
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /v1/callbacks HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        request.callback_token,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // Ten bytes every 500 ms: the whole body would take about 20 s, far
    // past both the body timeout (1 s) and the wait below (10 s), which
    // leaves room for a loaded machine.
    let trickle = tokio::spawn(async move {
        for chunk in body.chunks(10) {
            if writer.write_all(chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Keep the write half open (and the request incomplete on our side).
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answer)).await;
    trickle.abort();
    assert!(
        read.is_ok(),
        "the slow body was still being waited for after 10 s"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "a slow body ends in 408 or a closed connection, got {answer:?}"
    );
    assert_eq!(
        app.ledger_snapshot().await,
        before,
        "the slow report was not recorded"
    );
    // The page is still open for its real report.
    app.report_recorded(&request, &succeeded(&request)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_callback_with_a_bad_token_is_answered_401_without_waiting_for_its_body() {
    // The default body timeout (30 s) would be reached long after the
    // answer must have come.
    let (app, _request) = app_with_dispatched_page(|_| {}).await;
    let before = app.ledger_snapshot().await;
    let mut stream = connect(&app).await;
    let head = "POST /v1/callbacks HTTP/1.1\r\nhost: test\r\nauthorization: Bearer forged\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream))
        .await
        .expect("the 401 arrived without the body being sent");
    let (status, body) = answer.expect("a response, not a closed connection");
    assert_eq!(status, 401, "{body}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string(),
        "{body}"
    );
    assert_eq!(app.ledger_snapshot().await, before);
    app.stop().await;
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_and_are_served_when_one_closes() {
    let app = TestApp::builder()
        .tweak(|s| {
            s.server.max_connections = 2;
        })
        .spawn()
        .await;
    // The readiness check's connection may take a moment to be let go.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&app).await;
        stream
            .write_all(get_request("/healthz").as_bytes())
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream))
            .await
            .expect("a connection within the cap is served");
        assert_eq!(answer.map(|r| r.0), Some(200));
        held.push(stream);
    }

    // The third connects (the kernel's backlog takes it) but is not served.
    let mut third = connect(&app).await;
    third
        .write_all(get_request("/healthz").as_bytes())
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(1000), read_response(&mut third)).await;
    assert!(
        early.is_err(),
        "a connection beyond the cap was served: {early:?}"
    );

    // One closes: the third is served.
    drop(held.remove(0));
    let answer = tokio::time::timeout(Duration::from_secs(5), read_response(&mut third))
        .await
        .expect("the waiting connection is served once one closes");
    assert_eq!(answer.map(|r| r.0), Some(200));
    drop(held);
    app.stop().await;
}

#[tokio::test]
async fn a_report_with_nul_in_its_strings_is_recorded_with_replacement_characters() {
    let (app, _, _, requests) = dispatched_run("s", 2).await;
    let (ok, bad) = (&requests[0], &requests[1]);

    let mut report = succeeded(ok);
    report["title"] = json!("a\u{0}title");
    report["fields"] = json!({ "price\u{0}": "9\u{0}99", "sku": "\u{0}" });
    let (status, body) = app.post_report(Some(&ok.callback_token), &report).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("recorded")),
        "{body}"
    );

    let mut report = failed(bad, false);
    report["error"]["message"] = json!("HTTP 404\u{0}");
    let (status, body) = app.post_report(Some(&bad.callback_token), &report).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("recorded")),
        "{body}"
    );

    let (result, _) = stored_outcome(&app, ok).await;
    assert_eq!(result["title"], "a\u{FFFD}title");
    assert_eq!(
        result["fields"],
        json!({ "price\u{FFFD}": "9\u{FFFD}99", "sku": "\u{FFFD}" })
    );
    let (_, error) = stored_outcome(&app, bad).await;
    assert_eq!(error["message"], "HTTP 404\u{FFFD}");
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_query_string_is_answered_400_with_a_json_error() {
    let app = TestApp::spawn("", None).await;
    for path in [
        "/v1/runs?limit=abc",
        "/v1/runs/00000000-0000-0000-0000-000000000000/pages?after=x",
    ] {
        let resp = app.admin(Method::GET, path).await;
        assert_eq!(resp.status(), 400, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("limit") || e.contains("after")),
            "{path}: {body}"
        );
    }
    // An unknown endpoint answers JSON too.
    let (status, body) = app.get("/v1/nothing-here").await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string(), "{body}");
    app.stop().await;
}
