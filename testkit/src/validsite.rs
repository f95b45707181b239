//! A loopback site whose pages carry validators (`ETag`, `Last-Modified`)
//! and answer `304 Not Modified` to a conditional GET that matches, as a
//! well-behaved server does; or that ignores validators and always sends
//! the page. It counts requests, conditional requests, full answers, 304s
//! and the body bytes it sent, and a page can be changed between runs
//! (its title, price, body and validators all change).
//!
//! `/pages.json` lists every page's URL (a schedule's `http` source);
//! `/v/{i}` is page `i`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

/// The site's shape.
#[derive(Debug, Clone)]
pub struct ValidatorSiteSpec {
    /// Pages `/v/0` ..= `/v/{pages-1}`.
    pub pages: usize,
    /// Bytes of filler in each page's body besides its title and price.
    pub filler: usize,
    /// Pages carry an `ETag`.
    pub etag: bool,
    /// Pages carry a `Last-Modified`.
    pub last_modified: bool,
    /// How long the site takes to produce a whole page (a real site renders
    /// it, then sends it over a slower network than loopback); a 304 is
    /// answered at once.
    pub page_delay: std::time::Duration,
}

impl ValidatorSiteSpec {
    /// `pages` pages of about 2 KiB with both validators.
    pub fn pages(pages: usize) -> Self {
        Self {
            pages,
            filler: 2048,
            etag: true,
            last_modified: true,
            page_delay: std::time::Duration::ZERO,
        }
    }
}

/// What the site has served so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// Page requests (`/v/...`).
    pub requests: u64,
    /// Page requests with `If-None-Match` or `If-Modified-Since`.
    pub conditional: u64,
    /// Pages sent whole (200).
    pub full: u64,
    /// `304 Not Modified` answers.
    pub not_modified: u64,
    /// Body bytes sent for pages.
    pub body_bytes: u64,
}

impl std::ops::Sub for Served {
    type Output = Served;

    /// What was served between two readings (`later - earlier`).
    fn sub(self, earlier: Served) -> Served {
        Served {
            requests: self.requests - earlier.requests,
            conditional: self.conditional - earlier.conditional,
            full: self.full - earlier.full,
            not_modified: self.not_modified - earlier.not_modified,
            body_bytes: self.body_bytes - earlier.body_bytes,
        }
    }
}

/// The running site.
pub struct ValidatorSite {
    base: String,
    spec: ValidatorSiteSpec,
    /// Each page's version: 0 at the start, one more per change.
    versions: Mutex<Vec<u32>>,
    /// Whether a matching conditional GET gets a 304.
    honours: AtomicBool,
    requests: AtomicU64,
    conditional: AtomicU64,
    full: AtomicU64,
    not_modified: AtomicU64,
    body_bytes: AtomicU64,
}

impl ValidatorSite {
    /// Serves `spec` on a loopback port until the runtime ends.
    pub async fn start(spec: ValidatorSiteSpec) -> Arc<Self> {
        let (listener, base) = crate::net::loopback().await;
        let site = Arc::new(ValidatorSite {
            base,
            versions: Mutex::new(vec![0; spec.pages]),
            spec,
            honours: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            conditional: AtomicU64::new(0),
            full: AtomicU64::new(0),
            not_modified: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/pages.json", get(list))
            .route("/v/{i}", get(page))
            .with_state(site.clone());
        crate::net::serve_on(listener, app);
        site
    }

    /// Page `i`'s URL.
    pub fn url(&self, i: usize) -> String {
        format!("{}/v/{i}", self.base)
    }

    /// The URL of the list of every page (a schedule's `http` source).
    pub fn list_url(&self) -> String {
        format!("{}/pages.json", self.base)
    }

    /// Changes page `i`: its title, price, body and validators.
    pub fn change(&self, i: usize) {
        self.versions.lock().unwrap()[i] += 1;
    }

    /// From now on, answer every GET with the whole page (`false`), or
    /// honour validators again (`true`).
    pub fn honour_validators(&self, honours: bool) {
        self.honours.store(honours, Ordering::SeqCst);
    }

    /// What the site has served so far.
    pub fn served(&self) -> Served {
        Served {
            requests: self.requests.load(Ordering::SeqCst),
            conditional: self.conditional.load(Ordering::SeqCst),
            full: self.full.load(Ordering::SeqCst),
            not_modified: self.not_modified.load(Ordering::SeqCst),
            body_bytes: self.body_bytes.load(Ordering::SeqCst),
        }
    }

    /// Page `i`'s title at `version`.
    pub fn title(i: usize, version: u32) -> String {
        format!("Item {i} v{version}")
    }

    /// Page `i`'s `.price` at `version`.
    pub fn price(i: usize, version: u32) -> String {
        format!("{i}.{version:02}")
    }

    fn etag_of(i: usize, version: u32) -> String {
        format!("\"{i}-v{version}\"")
    }

    fn last_modified_of(version: u32) -> String {
        format!(
            "Mon, 07 Dec 2026 {:02}:{:02}:00 GMT",
            version / 60 % 24,
            version % 60
        )
    }

    fn body(&self, i: usize, version: u32) -> String {
        format!(
            "<!doctype html><html><head><title>{}</title></head><body><h1>{}</h1>\
             <p class=\"price\">{}</p><p>{}</p></body></html>",
            Self::title(i, version),
            Self::title(i, version),
            Self::price(i, version),
            "x".repeat(self.spec.filler)
        )
    }
}

async fn list(State(site): State<Arc<ValidatorSite>>) -> Json<Vec<String>> {
    Json((0..site.spec.pages).map(|i| site.url(i)).collect())
}

async fn page(
    State(site): State<Arc<ValidatorSite>>,
    Path(i): Path<usize>,
    headers: HeaderMap,
) -> Response {
    site.requests.fetch_add(1, Ordering::SeqCst);
    let Some(version) = site.versions.lock().unwrap().get(i).copied() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag = site.spec.etag.then(|| ValidatorSite::etag_of(i, version));
    let last_modified = site
        .spec
        .last_modified
        .then(|| ValidatorSite::last_modified_of(version));
    let sent = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let (none_match, modified_since) = (sent(IF_NONE_MATCH), sent(IF_MODIFIED_SINCE));
    if none_match.is_some() || modified_since.is_some() {
        site.conditional.fetch_add(1, Ordering::SeqCst);
    }
    // If-None-Match decides when both are sent (RFC 9110, 13.2.2).
    let unchanged = match (none_match, modified_since) {
        (Some(tags), _) => etag
            .as_deref()
            .is_some_and(|etag| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*")),
        (None, Some(since)) => last_modified.as_deref() == Some(since),
        (None, None) => false,
    };
    let mut answer = HeaderMap::new();
    if let Some(etag) = &etag {
        answer.insert(ETAG, etag.parse().unwrap());
    }
    if let Some(last_modified) = &last_modified {
        answer.insert(LAST_MODIFIED, last_modified.parse().unwrap());
    }
    if unchanged && site.honours.load(Ordering::SeqCst) {
        site.not_modified.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::NOT_MODIFIED, answer).into_response();
    }
    if !site.spec.page_delay.is_zero() {
        tokio::time::sleep(site.spec.page_delay).await;
    }
    let body = site.body(i, version);
    site.full.fetch_add(1, Ordering::SeqCst);
    site.body_bytes
        .fetch_add(body.len() as u64, Ordering::SeqCst);
    answer.insert(CONTENT_TYPE, "text/html; charset=utf-8".parse().unwrap());
    (StatusCode::OK, answer, body).into_response()
}
