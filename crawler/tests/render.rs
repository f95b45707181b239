//! Rendering in real headless Chromium (`/usr/bin/chromium`, or
//! `FANFARE_CHROMIUM`): a page its script fills in is read as rendered,
//! and the network guard holds for every request the page makes.
//!
//! The pages are served from 127.0.0.2 and the crawler's guard is closed
//! with one exception, 127.0.0.2 ([`NetPolicy::with_exception`]): the page
//! itself is reachable, while 127.0.0.1 (loopback), 169.254.169.254
//! (link-local metadata) and every other non-public address stay refused.
//! The forbidden target on 127.0.0.1 counts every TCP connection it
//! accepts, so a request that got through by any route (fetch, image,
//! WebSocket, frame, redirect) shows.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::{Html, Redirect};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use fanfare_crawler::contract::{RenderRequest, ResourceType};
use fanfare_crawler::netguard::NetPolicy;
use fanfare_crawler::{CrawlError, CrawlRequest, Crawler, ErrorKind, Outcome};
use support::crawler_with;

const PAGE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A loopback address that counts the connections made to it.
struct Forbidden {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Forbidden {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                use tokio::io::AsyncWriteExt;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret")
                    .await;
            }
        });
        Self { addr, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Serves `app` on 127.0.0.2 at a free port.
async fn serve(app: Router) -> SocketAddr {
    support::serve_on(IpAddr::V4(PAGE_IP), app).await
}

/// A crawler whose guard is closed except for the pages' own address.
fn crawler() -> Crawler {
    let net = NetPolicy::closed().with_exception(IpAddr::V4(PAGE_IP));
    crawler_with(net, Duration::from_secs(10))
}

/// A request for `url` with the fields `name` and `price`, rendered as
/// `render` says.
fn request(url: String, render: Option<RenderRequest>) -> CrawlRequest {
    let mut request = support::request(url);
    request.extract = BTreeMap::from([
        ("name".to_string(), "h1".into()),
        ("price".to_string(), ".price".into()),
    ]);
    request.render = render;
    request.deadline = Utc::now() + chrono::Duration::minutes(5);
    request
}

/// Renders `url` as `how` says; the error it failed with, else the test
/// fails naming `what` was not expected.
async fn render_failure(url: String, how: RenderRequest, what: &str) -> CrawlError {
    match crawler().crawl(&request(url, Some(how))).await {
        Outcome::Failed { error } => error,
        outcome => panic!("{what}: {outcome:?}"),
    }
}

fn render(wait_for: Option<&str>, block: &[ResourceType], timeout: Duration) -> RenderRequest {
    RenderRequest {
        wait_for: wait_for.map(str::to_string),
        block: block.to_vec(),
        timeout_ms: timeout.as_millis() as u64,
    }
}

/// An app shell: the title and price come from `/api/item` after load.
const SHELL: &str = r#"<!doctype html><html><head><title>Shop</title></head><body>
<noscript>You need to enable JavaScript to run this app.</noscript>
<div id="root"></div>
<script>
  fetch('/api/item').then(r => r.json()).then(item => {
    document.getElementById('root').innerHTML =
      '<h1>' + item.name + '</h1><span class="price">' + item.price + '</span>';
  });
</script></body></html>"#;

#[tokio::test]
async fn a_page_its_script_fills_in_is_read_as_rendered_and_looks_unrendered_when_fetched_plainly()
{
    let app = Router::new()
        .route("/item", get(|| async { Html(SHELL) }))
        .route(
            "/api/item",
            get(|| async {
                axum::Json(serde_json::json!({"name": "Blue kettle", "price": "29.99"}))
            }),
        );
    let addr = serve(app).await;
    let url = format!("http://{addr}/item");
    let crawler = crawler();

    let plain = crawler.crawl(&request(url.clone(), None)).await;
    let Outcome::Succeeded(plain) = plain else {
        panic!("the plain fetch failed: {plain:?}");
    };
    assert!(plain.fields["price"].is_null());
    assert!(!plain.rendered);
    assert!(plain.looks_unrendered, "an app shell: {plain:?}");

    for wait_for in [Some(".price"), None] {
        let how = render(wait_for, &[ResourceType::Image], Duration::from_secs(20));
        let outcome = crawler.crawl(&request(url.clone(), Some(how))).await;
        let Outcome::Succeeded(facts) = outcome else {
            panic!("the render failed (wait_for {wait_for:?}): {outcome:?}");
        };
        assert!(facts.rendered);
        assert!(!facts.looks_unrendered);
        assert_eq!(facts.http_status, 200);
        assert_eq!(facts.title.as_deref(), Some("Shop"));
        assert_eq!(facts.fields["name"].as_str(), Some("Blue kettle"));
        assert_eq!(facts.fields["price"].as_str(), Some("29.99"));
    }
}

#[tokio::test]
async fn a_rendered_pages_requests_to_loopback_link_local_and_redirects_into_them_reach_nothing() {
    let forbidden = Forbidden::start().await;
    let to = forbidden.addr;
    let page = format!(
        r#"<!doctype html><html><body>
<img src="http://169.254.169.254/latest/meta-data/iam/security-credentials/">
<img src="http://{to}/pixel.png">
<iframe src="http://{to}/frame"></iframe>
<link rel="stylesheet" href="http://localhost:{port}/style.css">
<script>
  const tries = [
    fetch('http://{to}/runtime/invocation/next').catch(() => 'refused'),
    fetch('http://169.254.170.2/v2/credentials').catch(() => 'refused'),
    fetch('/hop').catch(() => 'refused'),
    new Promise(done => {{
      try {{
        const ws = new WebSocket('ws://{to}/ws');
        ws.onerror = () => done('refused');
        ws.onopen = () => done('open');
      }} catch (e) {{ done('refused'); }}
    }}),
    navigator.serviceWorker
      ? navigator.serviceWorker.register('/sw.js').catch(() => 'refused')
      : Promise.resolve('none'),
  ];
  Promise.all(tries).then(() => {{
    setTimeout(() => {{
      document.body.insertAdjacentHTML('beforeend', '<h1 id="done">done</h1><span class="price">1</span>');
    }}, 300);
  }});
</script></body></html>"#,
        port = to.port()
    );
    let hop = format!("http://{to}/redirected");
    let app = Router::new()
        .route("/", get(move || async move { Html(page) }))
        .route(
            "/hop",
            get(move || async move { Redirect::temporary(&hop) }),
        );
    let addr = serve(app).await;
    let crawler = crawler();
    let how = render(Some("#done"), &[], Duration::from_secs(20));
    let rendered = crawler
        .renderer()
        .render(&format!("http://{addr}/").parse().unwrap(), &how, None)
        .await
        .unwrap_or_else(|e| panic!("the page itself renders: {e}"));
    assert!(rendered.html.contains(r#"id="done""#), "{}", rendered.html);
    // Give anything that slipped past a moment to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        forbidden.connections(),
        0,
        "a request reached loopback; the guard refused {:#?}",
        rendered.refused
    );
    let refused = rendered.refused.join("\n");
    for needle in [
        "169.254.169.254",
        "169.254.170.2",
        "/runtime/invocation/next",
        "/pixel.png",
        "/redirected",
        "localhost",
    ] {
        assert!(refused.contains(needle), "{needle} not refused:\n{refused}");
    }
    assert!(refused.contains("a link-local address"), "{refused}");
    assert!(refused.contains("a loopback address"), "{refused}");
}

#[tokio::test]
async fn a_page_redirected_into_loopback_is_blocked_and_the_target_sees_nothing() {
    let forbidden = Forbidden::start().await;
    let to = format!("http://{}/", forbidden.addr);
    let app = Router::new().route("/", get(move || async move { Redirect::temporary(&to) }));
    let addr = serve(app).await;
    let how = render(None, &[], Duration::from_secs(20));
    let url = format!("http://{addr}/");
    let error = render_failure(url, how, "the redirect into loopback was followed").await;
    assert_eq!(error.kind, ErrorKind::Blocked, "{error}");
    assert!(error.message.contains("a loopback address"), "{error}");
    assert!(error.message.contains("redirect"), "{error}");
    assert_eq!(forbidden.connections(), 0);

    // A page named by a loopback address is refused before the browser.
    let how = render(None, &[], Duration::from_secs(20));
    let outcome = crawler()
        .crawl(&request(format!("http://{}/", forbidden.addr), Some(how)))
        .await;
    assert_eq!(outcome.error().map(|e| e.kind), Some(ErrorKind::Blocked));
    assert_eq!(forbidden.connections(), 0);
}

#[tokio::test]
async fn a_wait_for_that_never_matches_fails_clearly_within_the_render_timeout() {
    let app = Router::new().route("/", get(|| async { Html("<title>t</title><p>static</p>") }));
    let addr = serve(app).await;
    let bound = Duration::from_millis(1500);
    let how = render(Some("#never"), &[], bound);
    let started = Instant::now();
    let error = render_failure(
        format!("http://{addr}/"),
        how,
        "a page without #never rendered",
    )
    .await;
    let took = started.elapsed();
    assert_eq!(error.kind, ErrorKind::Timeout, "{error}");
    assert!(error.message.contains("#never"), "{error}");
    assert!(error.message.contains("1.5s"), "{error}");
    // The bound holds (the browser's start, at most 20 s, is outside it).
    assert!(took < bound + Duration::from_secs(25), "took {took:?}");
}

#[tokio::test]
async fn a_rendered_page_that_answers_404_fails_as_its_status_without_waiting_for_wait_for() {
    let app = Router::new().route(
        "/gone",
        get(|| async { (axum::http::StatusCode::NOT_FOUND, Html("<h1>Not here</h1>")) }),
    );
    let addr = serve(app).await;
    let how = render(Some(".price"), &[], Duration::from_secs(20));
    let started = Instant::now();
    let error = render_failure(format!("http://{addr}/gone"), how, "a 404 rendered").await;
    assert_eq!(error.kind, ErrorKind::HttpStatus, "{error}");
    assert_eq!(error.http_status, Some(404), "{error}");
    assert!(!error.retryable);
    assert!(error.message.contains("404"), "{error}");
    // Well inside the 20 s bound: the status ends the render.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn blocked_resource_types_are_never_fetched() {
    let images = Arc::new(AtomicUsize::new(0));
    let counted = images.clone();
    let app = Router::new()
        .route(
            "/",
            get(|| async {
                Html(r#"<h1>Kettle</h1><img src="/kettle.png"><span class="price">3</span>"#)
            }),
        )
        .route(
            "/kettle.png",
            get(move || async move {
                counted.fetch_add(1, Ordering::SeqCst);
                "png"
            }),
        );
    let addr = serve(app).await;
    let crawler = crawler();
    let url = format!("http://{addr}/");
    let how = render(None, &[ResourceType::Image], Duration::from_secs(20));
    let outcome = crawler.crawl(&request(url.clone(), Some(how))).await;
    assert!(outcome.facts().is_some_and(|f| f.rendered), "{outcome:?}");
    assert_eq!(
        images.load(Ordering::SeqCst),
        0,
        "a blocked image was fetched"
    );
    // Unblocked, the same image is fetched: the count above could move.
    let how = render(None, &[], Duration::from_secs(20));
    let outcome = crawler.crawl(&request(url, Some(how))).await;
    assert!(outcome.facts().is_some_and(|f| f.rendered), "{outcome:?}");
    assert_eq!(images.load(Ordering::SeqCst), 1);
}
