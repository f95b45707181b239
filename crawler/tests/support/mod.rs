//! Loopback servers and contract requests shared by the integration tests.
// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::{TimeZone, Utc};
use fanfare_crawler::netguard::NetPolicy;
use fanfare_crawler::{CrawlRequest, Crawler, CrawlerConfig, CONTRACT_VERSION};

/// Serves `router` on 127.0.0.1 at a free port until the test ends.
pub async fn serve(router: Router) -> SocketAddr {
    serve_on(IpAddr::V4(Ipv4Addr::LOCALHOST), router).await
}

/// Serves `router` on `ip` at a free port until the test ends.
pub async fn serve_on(ip: IpAddr, router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// A request for `url` as the daemon sends one: the first attempt at a
/// page, no fields, a callback to a port where nothing listens.
pub fn request(url: impl Into<String>) -> CrawlRequest {
    CrawlRequest {
        version: CONTRACT_VERSION,
        run_id: "run-1".into(),
        page_id: "page-1".into(),
        attempt: 1,
        url: url.into(),
        extract: BTreeMap::new(),
        callback_url: "http://127.0.0.1:9/v1/callbacks".into(),
        callback_token: "token-1".into(),
        user_agent: None,
        proxy: None,
        render: None,
        deadline: Utc.with_ymd_and_hms(2026, 11, 26, 3, 5, 0).unwrap(),
        links: None,
        if_none_match: None,
        if_modified_since: None,
    }
}

/// A crawler with the network guard `net` and the page timeout `timeout`.
pub fn crawler_with(net: NetPolicy, timeout: Duration) -> Crawler {
    Crawler::new(CrawlerConfig {
        timeout,
        net,
        ..CrawlerConfig::default()
    })
    .unwrap()
}

/// One request the receiver was sent.
#[derive(Debug, Clone)]
pub struct Received {
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The body as sent.
    pub body: String,
}

/// A callback receiver: answers with the scripted responses in order, then
/// with `{"status":"recorded"}`, and records every request.
#[derive(Clone, Default)]
pub struct Receiver {
    script: Arc<Mutex<VecDeque<(StatusCode, &'static str)>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Starts a receiver at `/v1/callbacks`; returns it and its URL.
    pub async fn start(script: &[(StatusCode, &'static str)]) -> (Self, String) {
        let receiver = Receiver::default();
        receiver
            .script
            .lock()
            .unwrap()
            .extend(script.iter().copied());
        let app = Router::new()
            .route("/v1/callbacks", post(record))
            .with_state(receiver.clone());
        let addr = serve(app).await;
        (receiver, format!("http://{addr}/v1/callbacks"))
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn record(State(receiver): State<Receiver>, headers: HeaderMap, body: String) -> Response {
    let header = |name| {
        headers
            .get(name)
            .map(|v: &header::HeaderValue| v.to_str().unwrap().to_string())
    };
    receiver.received.lock().unwrap().push(Received {
        authorization: header(header::AUTHORIZATION),
        content_type: header(header::CONTENT_TYPE),
        body,
    });
    let next = receiver.script.lock().unwrap().pop_front();
    let (status, body) = next.unwrap_or((StatusCode::OK, r#"{"status":"recorded"}"#));
    (status, body).into_response()
}

/// The `ETag` of [`validated_page`].
pub const PAGE_ETAG: &str = "\"v1\"";
/// The `Last-Modified` of [`validated_page`].
pub const PAGE_LAST_MODIFIED: &str = "Mon, 07 Dec 2026 10:00:00 GMT";

/// A page at `/` that carries [`PAGE_ETAG`] and [`PAGE_LAST_MODIFIED`] and
/// answers `304 Not Modified` (with its `ETag`, no body) when a request's
/// `If-None-Match` is its ETag or, without one, its `If-Modified-Since` is
/// its `Last-Modified`; with `honour` false it always sends the page. The
/// headers of every request it was sent are kept in `seen`. Returns its URL.
pub async fn validated_page(honour: bool, seen: Arc<Mutex<Vec<HeaderMap>>>) -> String {
    let app = Router::new().route(
        "/",
        axum::routing::get(move |headers: HeaderMap| async move {
            seen.lock().unwrap().push(headers.clone());
            let sent = |name| headers.get(name).and_then(|v| v.to_str().ok());
            let unchanged = match (sent(header::IF_NONE_MATCH), sent(header::IF_MODIFIED_SINCE)) {
                (Some(tags), _) => tags.split(',').any(|t| t.trim() == PAGE_ETAG),
                (None, Some(since)) => since == PAGE_LAST_MODIFIED,
                (None, None) => false,
            };
            let validators = [
                (header::ETAG, PAGE_ETAG),
                (header::LAST_MODIFIED, PAGE_LAST_MODIFIED),
            ];
            if unchanged && honour {
                (StatusCode::NOT_MODIFIED, [(header::ETAG, PAGE_ETAG)]).into_response()
            } else {
                (
                    StatusCode::OK,
                    validators,
                    axum::response::Html("<title>Hi</title><h1> Hello </h1>"),
                )
                    .into_response()
            }
        }),
    );
    format!("http://{}/", serve(app).await)
}
