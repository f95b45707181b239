//! A loopback site whose pages link to each other as a tree, for crawls
//! that follow links: page `/n/i` links to its children
//! `/n/{f*i+1}` ..= `/n/{f*i+f}` (those below the site's page count), to
//! the home page `/n/0` and to its parent, so every page but the home is
//! linked from more than one page. It counts the requests of each path
//! and can hide pages (their links go, and they answer 404).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The site's shape.
#[derive(Debug, Clone)]
pub struct LinkSiteSpec {
    /// Pages `/n/0` ..= `/n/{pages-1}`.
    pub pages: usize,
    /// Children per page.
    pub fanout: usize,
    /// robots.txt's body (404 when `None`).
    pub robots: Option<String>,
    /// Further links every page carries (paths or absolute URLs).
    pub extra_links: Vec<String>,
}

impl LinkSiteSpec {
    /// `pages` pages, `fanout` children each, no robots.txt.
    pub fn tree(pages: usize, fanout: usize) -> Self {
        Self {
            pages,
            fanout,
            robots: None,
            extra_links: Vec::new(),
        }
    }
}

/// The running site.
pub struct LinkSite {
    base: String,
    spec: LinkSiteSpec,
    hits: Mutex<HashMap<String, usize>>,
    hidden: Mutex<HashSet<usize>>,
}

impl LinkSite {
    /// Serves `spec` on a loopback port until the process ends.
    pub async fn start(spec: LinkSiteSpec) -> Arc<Self> {
        let (listener, base) = crate::net::loopback().await;
        let site = Arc::new(LinkSite {
            base,
            spec,
            hits: Mutex::new(HashMap::new()),
            hidden: Mutex::new(HashSet::new()),
        });
        let app = Router::new()
            .route("/n/{i}", get(page))
            .route("/robots.txt", get(robots))
            .fallback(other)
            .with_state(site.clone());
        crate::net::serve_on(listener, app);
        site
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The home page's URL (`/n/0`).
    pub fn home(&self) -> String {
        self.url("/n/0")
    }

    /// The depth of page `i` (links from the home page).
    pub fn depth(&self, mut i: usize) -> u32 {
        let mut d = 0;
        while i > 0 {
            i = (i - 1) / self.spec.fanout;
            d += 1;
        }
        d
    }

    /// The pages at most `depth` links from the home page.
    pub fn pages_within(&self, depth: u32) -> Vec<usize> {
        (0..self.spec.pages)
            .filter(|&i| self.depth(i) <= depth)
            .collect()
    }

    /// Requests of each path so far.
    pub fn hits(&self) -> HashMap<String, usize> {
        self.hits.lock().unwrap().clone()
    }

    /// Page paths (`/n/...`) requested more than once.
    pub fn repeated(&self) -> Vec<(String, usize)> {
        let mut repeated: Vec<(String, usize)> = self
            .hits()
            .into_iter()
            .filter(|(p, n)| p.starts_with("/n/") && *n > 1)
            .collect();
        repeated.sort();
        repeated
    }

    /// Hides page `i` and so its subtree: its links go, it answers 404.
    pub fn hide(&self, i: usize) {
        self.hidden.lock().unwrap().insert(i);
    }

    fn children(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let f = self.spec.fanout;
        (f * i + 1..=f * i + f).filter(move |&c| c < self.spec.pages)
    }
}

async fn page(State(site): State<Arc<LinkSite>>, Path(i): Path<String>) -> Response {
    *site
        .hits
        .lock()
        .unwrap()
        .entry(format!("/n/{i}"))
        .or_default() += 1;
    let Ok(i) = i.parse::<usize>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let hidden = site.hidden.lock().unwrap().clone();
    if i >= site.spec.pages || hidden.contains(&i) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut links = String::new();
    for c in site.children(i).filter(|c| !hidden.contains(c)) {
        links.push_str(&format!("<li><a href=\"/n/{c}\">page {c}</a></li>"));
    }
    if i > 0 {
        let parent = (i - 1) / site.spec.fanout;
        links.push_str(&format!(
            "<li><a href=\"/n/0#top\">home</a></li><li><a href=\"../n/{parent}\">up</a></li>"
        ));
    }
    for extra in &site.spec.extra_links {
        links.push_str(&format!("<li><a href=\"{extra}\">more</a></li>"));
    }
    Html(format!(
        "<!doctype html><html><head><title>Page {i}</title></head><body>\
         <h1>Page {i}</h1><p class=\"price\">{i}.00</p><ul>{links}</ul></body></html>"
    ))
    .into_response()
}

async fn robots(State(site): State<Arc<LinkSite>>) -> Response {
    match &site.spec.robots {
        Some(body) => body.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn other(State(site): State<Arc<LinkSite>>, uri: axum::http::Uri) -> Response {
    *site
        .hits
        .lock()
        .unwrap()
        .entry(uri.path().to_string())
        .or_default() += 1;
    Html("<html><head><title>Other</title></head><body>other</body></html>").into_response()
}
