//! The network guard in a real crawl: pages on loopback, named by IP
//! literal, IPv6 literal, a hostname, or reached through a redirect, are
//! refused as `blocked` with the guard closed (and the target never sees a
//! request), and crawled with it open.
//!
//! The hostname is `localhost`, which /etc/hosts maps to 127.0.0.1 here
//! (`<name>.localhost` does not resolve through this machine's resolver).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::{Html, Redirect};
use axum::routing::get;
use axum::Router;
use chrono::{TimeZone, Utc};
use fanfare_crawler::netguard::NetPolicy;
use fanfare_crawler::{CrawlRequest, Crawler, CrawlerConfig, ErrorKind, Outcome, CONTRACT_VERSION};

const PAGE: &str = "<title>Internal</title><h1>secret</h1>";

/// A loopback target that counts the requests it is sent.
struct Target {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Target {
    /// Serves [`PAGE`] at `/` on `ip`, at a free port.
    async fn start(ip: &str) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = Router::new().route(
            "/",
            get(move || async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Html(PAGE)
            }),
        );
        let addr = serve_on(ip, app).await;
        Self { addr, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn serve_on(ip: &str, app: Router) -> SocketAddr {
    let ip: IpAddr = ip.parse().unwrap();
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A server on 127.0.0.2 whose `/` answers 302 to `location`; returns its
/// address and its request count.
async fn redirector(location: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            let location = location.clone();
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Redirect::to(&location)
            }
        }),
    );
    (serve_on("127.0.0.2", app).await, hits)
}

fn crawler(net: NetPolicy) -> Crawler {
    Crawler::new(CrawlerConfig {
        timeout: Duration::from_secs(5),
        net,
        ..CrawlerConfig::default()
    })
    .unwrap()
}

fn request(url: impl Into<String>) -> CrawlRequest {
    CrawlRequest {
        version: CONTRACT_VERSION,
        run_id: "run-1".into(),
        page_id: "page-1".into(),
        attempt: 1,
        url: url.into(),
        extract: BTreeMap::from([("h".to_string(), "h1".into())]),
        callback_url: "http://127.0.0.1:9/v1/callbacks".into(),
        callback_token: "token-1".into(),
        user_agent: None,
        proxy: None,
        render: None,
        deadline: Utc.with_ymd_and_hms(2026, 11, 26, 3, 5, 0).unwrap(),
        links: None,
    }
}

/// Crawls `url` under `net`; asserts it was refused as blocked, not
/// retryable, with a message naming the loopback class and nothing of the
/// page.
async fn assert_blocked(net: NetPolicy, url: &str) -> String {
    let outcome = crawler(net).crawl(&request(url)).await;
    let Outcome::Failed { error } = outcome else {
        panic!("{url} was crawled with the guard closed: {outcome:?}");
    };
    assert_eq!(error.kind, ErrorKind::Blocked, "{url}: {error}");
    assert!(!error.retryable, "{url}");
    assert!(
        error.message.contains("a loopback address"),
        "{url}: {}",
        error.message
    );
    assert!(
        error.message.contains("allow_private_networks"),
        "the message names the switch: {}",
        error.message
    );
    assert!(!error.message.contains("secret"), "{}", error.message);
    error.message
}

/// Crawls `url` under the open policy; asserts it succeeded.
async fn assert_crawled(url: &str) {
    let outcome = crawler(NetPolicy::open()).crawl(&request(url)).await;
    let Outcome::Succeeded(facts) = outcome else {
        panic!("{url} was not crawled with the guard open: {outcome:?}");
    };
    assert_eq!(facts.title.as_deref(), Some("Internal"));
    assert_eq!(facts.fields["h"].as_str(), Some("secret"));
}

#[tokio::test]
async fn page_at_an_ipv4_loopback_literal_is_blocked_when_closed_and_crawled_when_open() {
    let target = Target::start("127.0.0.1").await;
    let url = format!("http://{}/", target.addr);

    let message = assert_blocked(NetPolicy::closed(), &url).await;
    assert!(
        message.starts_with("127.0.0.1 is a loopback address"),
        "{message}"
    );
    assert_eq!(target.hits(), 0, "the target saw no request");

    assert_crawled(&url).await;
    assert_eq!(target.hits(), 1);
}

#[tokio::test]
async fn page_at_the_ipv6_loopback_literal_is_blocked_when_closed_and_crawled_when_open() {
    let target = Target::start("::1").await;
    let url = format!("http://[::1]:{}/", target.addr.port());

    let message = assert_blocked(NetPolicy::closed(), &url).await;
    assert!(
        message.starts_with("[::1] is a loopback address"),
        "{message}"
    );
    assert_eq!(target.hits(), 0, "the target saw no request");

    assert_crawled(&url).await;
    assert_eq!(target.hits(), 1);
}

#[tokio::test]
async fn pages_at_6to4_and_ipv4_translated_literals_of_loopback_are_blocked_when_closed() {
    // Both carry 127.0.0.1: 6to4 after its 2002: prefix, IPv4-translated in
    // its last 32 bits (::ffff:0:a.b.c.d, not the IPv4-mapped ::ffff:a.b.c.d).
    for url in [
        "http://[2002:7f00:1::1]:8080/",
        "http://[::ffff:0:7f00:1]:8080/",
    ] {
        let message = assert_blocked(NetPolicy::closed(), url).await;
        assert!(message.contains("is a loopback address"), "{message}");
    }
}

#[tokio::test]
async fn page_at_a_hostname_resolving_to_loopback_is_blocked_when_closed_and_crawled_when_open() {
    let target = Target::start("127.0.0.1").await;
    let url = format!("http://localhost:{}/", target.addr.port());

    let message = assert_blocked(NetPolicy::closed(), &url).await;
    assert!(
        message.starts_with("localhost resolves to 127.0.0.1, a loopback address"),
        "{message}"
    );
    assert_eq!(target.hits(), 0, "the target saw no request");

    assert_crawled(&url).await;
    assert_eq!(target.hits(), 1);
}

#[tokio::test]
async fn redirect_to_a_loopback_literal_is_blocked_when_closed_and_followed_when_open() {
    let target = Target::start("127.0.0.1").await;
    let (first, first_hits) = redirector(format!("http://127.0.0.1:{}/", target.addr.port())).await;
    let url = format!("http://{first}/");
    let only_first_hop = NetPolicy::closed().with_exception("127.0.0.2".parse().unwrap());

    let message = assert_blocked(only_first_hop, &url).await;
    assert!(
        message.contains("127.0.0.1 is a loopback address"),
        "{message}"
    );
    assert_eq!(
        first_hits.load(Ordering::SeqCst),
        1,
        "the first hop was let through"
    );
    assert_eq!(target.hits(), 0, "the redirect target saw no request");

    assert_crawled(&url).await;
    assert_eq!(target.hits(), 1);
}

#[tokio::test]
async fn redirect_to_a_hostname_resolving_to_loopback_is_blocked_when_closed_and_followed_when_open(
) {
    let target = Target::start("127.0.0.1").await;
    let (first, first_hits) = redirector(format!("http://localhost:{}/", target.addr.port())).await;
    let url = format!("http://{first}/");
    let only_first_hop = NetPolicy::closed().with_exception("127.0.0.2".parse().unwrap());

    let message = assert_blocked(only_first_hop, &url).await;
    assert!(
        message.contains("localhost resolves to 127.0.0.1, a loopback address"),
        "{message}"
    );
    assert_eq!(
        first_hits.load(Ordering::SeqCst),
        1,
        "the first hop was let through"
    );
    assert_eq!(target.hits(), 0, "the redirect target saw no request");

    assert_crawled(&url).await;
    assert_eq!(target.hits(), 1);
}

#[tokio::test]
async fn too_many_redirects_through_the_guarded_policy_still_fail_as_redirect() {
    let app = Router::new()
        .route("/a", get(|| async { Redirect::temporary("/b") }))
        .route("/b", get(|| async { Redirect::temporary("/a") }));
    let addr = serve_on("127.0.0.2", app).await;
    let guarded = NetPolicy::closed().with_exception("127.0.0.2".parse().unwrap());

    let outcome = crawler(guarded)
        .crawl(&request(format!("http://{addr}/a")))
        .await;

    let error = outcome.error().expect("a redirect loop fails").clone();
    assert_eq!(error.kind, ErrorKind::Redirect, "{error}");
    assert!(!error.retryable);
}
