//! The network guard in a real crawl: pages on loopback, named by IP
//! literal, IPv6 literal, a hostname, or reached through a redirect, are
//! refused as `blocked` with the guard closed (and the target never sees a
//! request), and crawled with it open.
//!
//! The hostname is `localhost`, which /etc/hosts maps to 127.0.0.1 here
//! (`<name>.localhost` does not resolve through this machine's resolver).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::{Html, Redirect};
use axum::routing::get;
use axum::Router;
use fanfare_crawler::netguard::NetPolicy;
use fanfare_crawler::{Crawler, ErrorKind, Outcome};
use support::{crawler_with, request};

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
        let page = {
            let hits = hits.clone();
            move || {
                hits.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Html(PAGE))
            }
        };
        let addr = serve_on(ip, Router::new().route("/", get(page))).await;
        Self { addr, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn serve_on(ip: &str, app: Router) -> SocketAddr {
    support::serve_on(ip.parse().unwrap(), app).await
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
    crawler_with(net, Duration::from_secs(5))
}

/// A request for `url` with the field `h` (the page's `h1`).
fn with_a_field(url: &str) -> fanfare_crawler::CrawlRequest {
    let mut request = request(url);
    request.extract.insert("h".to_string(), "h1".into());
    request
}

/// Crawls `url` under `net`; asserts it was refused as blocked, not
/// retryable, with a message naming the loopback class and nothing of the
/// page.
async fn assert_blocked(net: NetPolicy, url: &str) -> String {
    let outcome = crawler(net).crawl(&with_a_field(url)).await;
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
    let outcome = crawler(NetPolicy::open()).crawl(&with_a_field(url)).await;
    let Outcome::Succeeded(facts) = outcome else {
        panic!("{url} was not crawled with the guard open: {outcome:?}");
    };
    assert_eq!(facts.title.as_deref(), Some("Internal"));
    assert_eq!(facts.fields["h"].as_str(), Some("secret"));
}

/// Crawls `url` with `closed` and then with the guard open: refused first
/// with a message that `says` so, `target` seeing no request, then crawled,
/// `target` seeing one.
async fn blocked_when_closed_and_crawled_when_open(
    target: &Target,
    closed: NetPolicy,
    url: &str,
    says: impl Fn(&str) -> bool,
) {
    let message = assert_blocked(closed, url).await;
    assert!(says(&message), "{url}: {message}");
    assert_eq!(target.hits(), 0, "{url}: the target saw no request");

    assert_crawled(url).await;
    assert_eq!(target.hits(), 1, "{url}");
}

#[tokio::test]
async fn pages_at_loopback_literals_or_a_hostname_are_blocked_when_closed_and_crawled_when_open() {
    // (listening on, the URL's host, what the message starts with)
    for (ip, host, starts) in [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1 is a loopback address"),
        ("::1", "[::1]", "[::1] is a loopback address"),
        (
            "127.0.0.1",
            "localhost",
            "localhost resolves to 127.0.0.1, a loopback address",
        ),
    ] {
        let target = Target::start(ip).await;
        let url = format!("http://{host}:{}/", target.addr.port());
        let closed = NetPolicy::closed();
        blocked_when_closed_and_crawled_when_open(&target, closed, &url, |m| m.starts_with(starts))
            .await;
    }
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
async fn redirects_to_a_loopback_literal_or_hostname_are_blocked_when_closed_and_followed_when_open(
) {
    // (the redirect's host, what the message says)
    for (host, says) in [
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        (
            "localhost",
            "localhost resolves to 127.0.0.1, a loopback address",
        ),
    ] {
        let target = Target::start("127.0.0.1").await;
        let location = format!("http://{host}:{}/", target.addr.port());
        let (first, first_hits) = redirector(location).await;
        let url = format!("http://{first}/");
        let only_first_hop = NetPolicy::closed().with_exception("127.0.0.2".parse().unwrap());
        blocked_when_closed_and_crawled_when_open(&target, only_first_hop, &url, |m| {
            m.contains(says)
        })
        .await;
        assert_eq!(
            first_hits.load(Ordering::SeqCst),
            2,
            "{host}: the first hop was let through, closed and open"
        );
    }
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
