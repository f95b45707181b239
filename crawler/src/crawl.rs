//! The crawl itself: fetch one page with reqwest, parse it with scraper and
//! hand it to [`Extractor`] for its facts.
//!
//! [`Crawler::crawl`] turns every failure into an [`Outcome::Failed`] with an
//! [`ErrorKind`] and a `retryable` flag; it never panics and never returns a
//! Rust error, because a failed page is a result to report, not a crash.

use std::collections::{BTreeMap, HashMap};
use std::error::Error as StdError;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use html5ever::tendril::{StrTendril, TendrilSink};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::StatusCode;
use scraper::{Html, HtmlTreeSink, Selector};
use sha2::{Digest, Sha256};
use tracing::Instrument;
use url::Url;

use crate::callback::{CallbackError, Reporter};
use crate::contract::{
    CallbackAck, CrawlError, CrawlRequest, ErrorKind, LinksWanted, Outcome, PageFacts, Report,
    MAX_REPORT_BYTES, MAX_VALIDATOR_BYTES,
};
use crate::errors::{causes, chain_text};
use crate::extract::Extractor;
use crate::netguard::{self, NetPolicy, TargetRefused, ENV_ALLOW_PRIVATE_NETWORKS};
use crate::proxy::{self, ProxyOn, ProxyUrl, ENV_PROXY_URL};
use crate::render::{RenderConfig, Renderer, ENV_CHROMIUM};

pub use crate::extract::MAX_TEXT_BYTES;

/// The most links one report carries, whatever the request asks.
pub const MAX_LINKS: u32 = 10_000;
/// A link longer than this many bytes (after resolving) is left out.
pub const MAX_LINK_BYTES: usize = 2048;
/// The most bytes of links one report carries, all links together; the
/// report as a whole must still fit [`MAX_REPORT_BYTES`] (see
/// [`fit_report`]), which drops links from the end first.
pub const MAX_LINKS_BYTES: usize = 192 * 1024;

/// The default [`CrawlerConfig::parse_budget_bytes`]: the most HTML (in
/// bytes) one [`Crawler`] and its clones hold for parsing at once (or one
/// page over it, alone). A parsed document takes many times its size in
/// memory (a 10 MiB catalogue page is some 200 MB of nodes), and parsing is
/// CPU-bound, so large pages are parsed one or two at a time while small
/// ones still go in parallel. A page whose length is announced takes its
/// share before its body is read, so bodies waiting for their turn do not
/// pile up in memory either.
pub const PARSE_BUDGET_BYTES: usize = 16 * 1024 * 1024;

/// Environment variable for [`CrawlerConfig::timeout`], in whole seconds.
pub const ENV_TIMEOUT_SECS: &str = "FANFARE_CRAWLER_TIMEOUT_SECS";
/// Environment variable for [`CrawlerConfig::max_body_bytes`].
pub const ENV_MAX_BODY_BYTES: &str = "FANFARE_CRAWLER_MAX_BODY_BYTES";
/// Environment variable for [`CrawlerConfig::user_agent`].
pub const ENV_USER_AGENT: &str = "FANFARE_CRAWLER_USER_AGENT";

/// How a [`Crawler`] fetches pages and delivers reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrawlerConfig {
    /// `User-Agent` sent with every request (page fetches and callbacks).
    pub user_agent: String,
    /// Budget for one page fetch, from connecting to the end of the body;
    /// time spent waiting for the parse budget is not counted.
    pub timeout: Duration,
    /// Largest body accepted, after content decoding; larger fails as
    /// [`ErrorKind::TooLarge`].
    pub max_body_bytes: u64,
    /// Redirects followed before failing as [`ErrorKind::Redirect`].
    pub max_redirects: usize,
    /// Budget for one callback POST, including reading the answer.
    pub callback_timeout: Duration,
    /// Callback POSTs tried in all before giving up (at least 1).
    pub callback_attempts: u32,
    /// Delay before the second callback attempt; it doubles for each later
    /// attempt, with random jitter.
    pub callback_backoff: Duration,
    /// Which addresses page fetches may reach (closed by default: no
    /// loopback, link-local, private or other non-public address). Callbacks
    /// are not subject to it: the callback URL is the daemon's own.
    pub net: NetPolicy,
    /// Bytes of HTML held for parsing at once by a crawler and its clones
    /// (at least 1); see [`PARSE_BUDGET_BYTES`].
    pub parse_budget_bytes: usize,
    /// The crawler's own proxy ([`ENV_PROXY_URL`]): used for an event whose
    /// `proxy` names no URL. `Debug` hides its password.
    pub proxy: Option<ProxyUrl>,
    /// The browser for pages whose request asks to render them
    /// ([`ENV_CHROMIUM`]); found where it is usually installed when unset.
    pub chromium: Option<std::path::PathBuf>,
    /// Pages rendering in the browser at once, at most (at least 1;
    /// [`ENV_BROWSERS`]).
    pub browsers: usize,
    /// The longest render a request may ask for.
    pub max_render_timeout: Duration,
    /// CA certificates (PEM) trusted for page fetches besides the public
    /// roots the crawler ships with, directly and through a proxy
    /// ([`ENV_EXTRA_CA`]); empty for none.
    pub extra_roots_pem: Vec<u8>,
}

/// Environment variable for [`CrawlerConfig::browsers`].
pub const ENV_BROWSERS: &str = "FANFARE_CRAWLER_BROWSERS";
/// Environment variable naming a PEM file for
/// [`CrawlerConfig::extra_roots_pem`].
pub const ENV_EXTRA_CA: &str = "FANFARE_CRAWLER_EXTRA_CA";

impl Default for CrawlerConfig {
    fn default() -> Self {
        Self {
            user_agent: concat!(
                "fanfare-crawler/",
                env!("CARGO_PKG_VERSION"),
                " (+https://github.com/fanfare)"
            )
            .to_string(),
            timeout: Duration::from_secs(30),
            max_body_bytes: 10 * 1024 * 1024,
            max_redirects: 5,
            callback_timeout: Duration::from_secs(10),
            callback_attempts: 5,
            callback_backoff: Duration::from_millis(200),
            net: NetPolicy::closed(),
            parse_budget_bytes: PARSE_BUDGET_BYTES,
            proxy: None,
            chromium: None,
            browsers: 2,
            max_render_timeout: Duration::from_secs(60),
            extra_roots_pem: Vec::new(),
        }
    }
}

impl CrawlerConfig {
    /// The defaults, overridden by [`ENV_TIMEOUT_SECS`],
    /// [`ENV_MAX_BODY_BYTES`], [`ENV_USER_AGENT`],
    /// [`ENV_ALLOW_PRIVATE_NETWORKS`], [`ENV_PROXY_URL`] and
    /// [`ENV_EXTRA_CA`] where they are set.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`CrawlerConfig::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        if let Some(value) = lookup(ENV_TIMEOUT_SECS) {
            let secs = parse_positive(ENV_TIMEOUT_SECS, &value)?;
            config.timeout = Duration::from_secs(secs);
        }
        if let Some(value) = lookup(ENV_MAX_BODY_BYTES) {
            config.max_body_bytes = parse_positive(ENV_MAX_BODY_BYTES, &value)?;
        }
        if let Some(value) = lookup(ENV_USER_AGENT) {
            if value.trim().is_empty() {
                return Err(ConfigError::new(
                    ENV_USER_AGENT,
                    &value,
                    "must not be empty",
                ));
            }
            if reqwest::header::HeaderValue::from_str(&value).is_err() {
                return Err(ConfigError::new(
                    ENV_USER_AGENT,
                    &value,
                    "is not a valid HTTP header value",
                ));
            }
            config.user_agent = value;
        }
        if let Some(value) = lookup(ENV_ALLOW_PRIVATE_NETWORKS) {
            let allow = match value.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => {
                    return Err(ConfigError::new(
                        ENV_ALLOW_PRIVATE_NETWORKS,
                        &value,
                        "must be true or false (or 1 or 0)",
                    ))
                }
            };
            config.net = NetPolicy::allowing_private(allow);
        }
        if let Some(value) = lookup(ENV_CHROMIUM).filter(|v| !v.is_empty()) {
            config.chromium = Some(value.into());
        }
        if let Some(value) = lookup(ENV_BROWSERS) {
            config.browsers =
                usize::try_from(parse_positive(ENV_BROWSERS, &value)?).unwrap_or(usize::MAX);
        }
        if let Some(path) = lookup(ENV_EXTRA_CA).filter(|v| !v.is_empty()) {
            let pem = std::fs::read(&path).map_err(|e| {
                ConfigError::new(ENV_EXTRA_CA, &path, format!("cannot be read: {e}"))
            })?;
            match reqwest::Certificate::from_pem_bundle(&pem) {
                Ok(certs) if !certs.is_empty() => config.extra_roots_pem = pem,
                Ok(_) => {
                    return Err(ConfigError::new(
                        ENV_EXTRA_CA,
                        &path,
                        "holds no PEM certificate",
                    ))
                }
                Err(e) => {
                    return Err(ConfigError::new(
                        ENV_EXTRA_CA,
                        &path,
                        format!("holds no usable PEM certificates: {e}"),
                    ))
                }
            }
        }
        if let Some(value) = lookup(ENV_PROXY_URL) {
            // The value is a secret: the error does not quote it.
            match ProxyUrl::parse(&value) {
                Ok(proxy) => config.proxy = Some(proxy),
                Err(e) => return Err(ConfigError::new(ENV_PROXY_URL, "[redacted]", e.to_string())),
            }
        }
        Ok(config)
    }
}

fn parse_positive(name: &'static str, value: &str) -> Result<u64, ConfigError> {
    match value.trim().parse::<u64>() {
        Ok(0) => Err(ConfigError::new(name, value, "must be greater than zero")),
        Ok(n) => Ok(n),
        Err(e) => Err(ConfigError::new(
            name,
            value,
            format!("must be a positive whole number ({e})"),
        )),
    }
}

/// A crawler setting read from the environment has an invalid value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {name} has invalid value {value:?}: {reason}")]
pub struct ConfigError {
    /// The variable's name.
    pub name: &'static str,
    /// The value it had.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(name: &'static str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            name,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Crawls pages and reports them. Cheap to clone: clones share one
/// connection pool.
#[derive(Debug, Clone)]
pub struct Crawler {
    /// Follows redirects, decodes gzip; for the pages.
    pub(crate) fetch: reqwest::Client,
    /// Delivers reports to the daemon.
    callback: Reporter,
    pub(crate) config: Arc<CrawlerConfig>,
    /// [`CrawlerConfig::parse_budget_bytes`] permits, one per byte of a
    /// body held for parsing (from before its read when its length is
    /// announced, else from the end of its read) until it is parsed.
    parsing: Arc<tokio::sync::Semaphore>,
    /// One client per distinct proxy, kept across pages (and, on Lambda,
    /// across invocations) for its connection pool.
    proxied: Arc<Mutex<HashMap<ProxyUrl, reqwest::Client>>>,
    /// The browser, for requests that ask to render (it starts at the
    /// first such request).
    renderer: Arc<Renderer>,
}

/// Distinct proxies whose clients are kept at once; past it the cache
/// starts over (a schedule names a handful).
const MAX_PROXY_CLIENTS: usize = 64;

/// `builder` trusting the CA certificates of `pem` too (none when empty).
fn trusting(
    builder: reqwest::ClientBuilder,
    pem: &[u8],
) -> Result<reqwest::ClientBuilder, reqwest::Error> {
    if pem.is_empty() {
        return Ok(builder);
    }
    Ok(reqwest::Certificate::from_pem_bundle(pem)?
        .into_iter()
        .fold(builder, |b, cert| b.add_root_certificate(cert)))
}

impl Crawler {
    /// Builds the HTTP clients (rustls, gzip, limited redirects). The fetch
    /// client is guarded by [`CrawlerConfig::net`] (resolver, every redirect
    /// hop, no proxy); the callback client is not.
    pub fn new(config: CrawlerConfig) -> Result<Self, reqwest::Error> {
        // No total timeout on the client: [`CrawlerConfig::timeout`] is
        // applied around sending and around reading the body, so a wait for
        // the parse budget between the two does not count against it.
        let fetch = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(config.user_agent.clone())
            .connect_timeout(config.timeout)
            .gzip(true);
        let fetch = trusting(fetch, &config.extra_roots_pem)?;
        let fetch = config.net.apply(fetch, config.max_redirects).build()?;
        let callback = Reporter::new(
            &config.user_agent,
            config.callback_timeout,
            config.callback_attempts,
            config.callback_backoff,
        )?;
        let renderer = Renderer::new(RenderConfig {
            chromium: config.chromium.clone(),
            pages: config.browsers.max(1),
            max_timeout: config.max_render_timeout,
            user_agent: config.user_agent.clone(),
            max_body_bytes: config.max_body_bytes,
            net: config.net.clone(),
        })?;
        Ok(Self {
            fetch,
            callback,
            renderer: Arc::new(renderer),
            parsing: Arc::new(tokio::sync::Semaphore::new(
                config.parse_budget_bytes.clamp(1, MAX_PARSE_BUDGET),
            )),
            proxied: Arc::default(),
            config: Arc::new(config),
        })
    }

    /// The settings this crawler was built with.
    pub fn config(&self) -> &CrawlerConfig {
        &self.config
    }

    /// Bytes of the parse budget not held by any crawl now (for tests and
    /// figures).
    pub fn parse_budget_available(&self) -> usize {
        self.parsing.available_permits()
    }

    /// What a body of `bytes` bytes takes from the parse budget: a page
    /// over the budget takes all of it and is parsed alone.
    fn parse_weight(&self, bytes: u64) -> u32 {
        let budget = self.config.parse_budget_bytes.clamp(1, MAX_PARSE_BUDGET) as u64;
        u32::try_from(bytes.clamp(1, budget)).unwrap_or(u32::MAX)
    }

    /// Waits for `weight` bytes of the parse budget.
    async fn hold_parse_budget(&self, weight: u32) -> ParsePermit {
        // (The semaphore is never closed; were it, parsing would go on.)
        let permit = self.parsing.clone().acquire_many_owned(weight).await.ok();
        ParsePermit {
            weight,
            _permit: permit,
        }
    }

    /// A page fetch that took longer than [`CrawlerConfig::timeout`].
    fn timed_out(&self, url: &Url, what: &str) -> CrawlError {
        CrawlError::new(
            ErrorKind::Timeout,
            format!(
                "{url} did not answer in full within {:?}: {what}",
                self.config.timeout
            ),
            true,
        )
    }

    /// Fetches `request.url` and extracts its facts. Every failure is an
    /// [`Outcome::Failed`]; this never panics and never returns a Rust error.
    pub async fn crawl(&self, request: &CrawlRequest) -> Outcome {
        match self.fetch_and_extract(request).await {
            Ok(facts) => Outcome::Succeeded(facts),
            Err(error) => Outcome::Failed { error },
        }
    }

    /// POSTs `report` as JSON to `request.callback_url` with
    /// `Authorization: Bearer {callback_token}`, retrying transient
    /// failures (see [`Reporter::report`]), and returns the daemon's
    /// acknowledgement.
    pub async fn report(
        &self,
        request: &CrawlRequest,
        report: &Report,
    ) -> Result<CallbackAck, CallbackError> {
        self.callback.report(request, report).await
    }

    /// Crawls `request` and delivers the report to its callback URL; returns
    /// the report that the daemon acknowledged.
    pub async fn handle(&self, request: CrawlRequest) -> Result<Report, CallbackError> {
        let span = tracing::info_span!(
            "crawl",
            run_id = %request.run_id,
            page_id = %request.page_id,
            attempt = request.attempt,
            url = %request.url,
        );
        async move {
            let outcome = self.crawl(&request).await;
            match &outcome {
                Outcome::Succeeded(facts) => tracing::info!(
                    http_status = facts.http_status,
                    bytes = facts.bytes,
                    fetch_ms = facts.fetch_ms,
                    via_proxy = facts.via_proxy,
                    "page crawled"
                ),
                Outcome::Failed { error } => tracing::info!(
                    kind = %error.kind,
                    retryable = error.retryable,
                    message = %error.message,
                    "page failed"
                ),
            }
            let report = fit_report(Report::for_request(&request, outcome));
            let ack = self.report(&request, &report).await?;
            tracing::info!(status = ?ack.status, "report delivered");
            Ok(report)
        }
        .instrument(span)
        .await
    }

    async fn fetch_and_extract(&self, request: &CrawlRequest) -> Result<PageFacts, CrawlError> {
        let url = parse_target(&request.url)?;
        // An IP literal never reaches the guard's resolver: check it here.
        self.config
            .net
            .check_url(&url)
            .map_err(|b| blocked(&b, false))?;
        // Before fetching: a bad selector fails the same way whatever the page.
        let extractor = Extractor::new(&request.extract)?;
        if let Some(how) = &request.render {
            return self.render_and_extract(request, &url, how, extractor).await;
        }
        let max = self.config.max_body_bytes;

        // The fetch timeout covers connecting, redirects and headers, then
        // the body with what is left of it; not the wait for the parse
        // budget in between.
        let timeout = self.config.timeout;
        let started = Instant::now();
        let (mut response, via_proxy) = self.send(request, &url, timeout).await?;
        let mut fetching = started.elapsed();
        let status = response.status();
        let (etag, last_modified) = validators_of(response.headers());
        if status == StatusCode::NOT_MODIFIED {
            // Only asked for with validators ([`success_only`]): no body,
            // nothing to parse; the daemon keeps the previous facts.
            let fetch_ms = u64::try_from(fetching.as_millis()).unwrap_or(u64::MAX);
            return Ok(PageFacts {
                etag,
                last_modified,
                ..PageFacts::not_modified(fetch_ms, via_proxy)
            });
        }
        if let Some(length) = response.content_length() {
            if length > max {
                return Err(too_large(response.url(), max, &format!("{length} bytes")));
            }
        }
        let final_url = response.url().clone();
        let charset = charset_of(&response);

        // With the length announced, the body's share of the parse budget is
        // taken before the body is read, so that at most about the budget
        // in bodies is in memory at once, however many crawls are waiting
        // (unread, a body stays with the server and in socket buffers).
        // Without it (chunked, or gzip-decoded) the body is read first, as
        // its size is known only then.
        let announced = response.content_length();
        let mut parsing = match announced {
            Some(length) => Some(self.hold_parse_budget(self.parse_weight(length)).await),
            None => None,
        };

        let reading = Instant::now();
        let (body, bytes, content_sha256) = self
            .read_body(&mut response, &final_url, timeout.saturating_sub(fetching))
            .await?;
        fetching += reading.elapsed();
        let fetch_ms = u64::try_from(fetching.as_millis()).unwrap_or(u64::MAX);

        let weight = self.parse_weight(bytes);
        if parsing.as_ref().is_none_or(|held| held.weight < weight) {
            // Unknown length, or more than announced: let go of any share
            // first, as waiting for more while holding some could deadlock
            // two crawls.
            drop(parsing.take());
            parsing = Some(self.hold_parse_budget(weight).await);
        }
        let _parsing = parsing;
        let page = extract_apart(
            move || parse(body, charset.as_deref()),
            extractor,
            &final_url,
            request.links,
            Judge::AppShell,
        )
        .await?;
        Ok(PageFacts {
            http_status: status.as_u16(),
            title: page.title,
            fields: page.fields,
            bytes,
            content_sha256,
            fetch_ms,
            via_proxy,
            links: page.links,
            rendered: false,
            looks_unrendered: page.looks_unrendered,
            served_sufficed: false,
            etag,
            last_modified,
            not_modified: false,
        })
    }

    /// Sends the request for `url` within `timeout`, directly or through
    /// the proxy as the request asks: the response (headers read, body
    /// not) and whether it came through the proxy. With the request's
    /// validators it is a conditional GET, and a `304 Not Modified` is an
    /// answer like a 2xx.
    async fn send(
        &self,
        request: &CrawlRequest,
        url: &Url,
        timeout: Duration,
    ) -> Result<(reqwest::Response, bool), CrawlError> {
        let headers = &request_headers(request);
        let proxy = self.proxy_for(request)?;
        // With `blocked`, the direct fetch and the one through the proxy
        // share the one timeout: the retry happens inside this attempt, so
        // the ledger's accounting of attempts is the same either way.
        let send = async {
            match &proxy {
                None => Ok((self.send_direct(url, headers).await?, false)),
                Some((proxy, ProxyOn::Always)) => {
                    Ok((self.send_proxied(proxy, url, headers).await?, true))
                }
                Some((proxy, ProxyOn::Blocked)) => match self.send_direct(url, headers).await {
                    Err(error) if refused_by_site(&error) => {
                        tracing::info!(
                            reason = %error,
                            proxy = %proxy,
                            "the site refused the direct fetch; fetching through the proxy"
                        );
                        Ok((self.send_proxied(proxy, url, headers).await?, true))
                    }
                    direct => Ok((direct?, false)),
                },
            }
        };
        tokio::time::timeout(timeout, send)
            .await
            .map_err(|_| self.timed_out(url, "no response headers in time"))?
    }

    /// Reads the response's body within `time_left`, at most
    /// [`CrawlerConfig::max_body_bytes`]: the chunks it came in, its size
    /// and its SHA-256 (hex). The chunks are not copied into one buffer:
    /// the parser takes them one at a time and each is freed once fed.
    async fn read_body(
        &self,
        response: &mut reqwest::Response,
        url: &Url,
        time_left: Duration,
    ) -> Result<(Vec<impl AsRef<[u8]> + Send + 'static>, u64, String), CrawlError> {
        let max = self.config.max_body_bytes;
        let mut body = Vec::new();
        let mut bytes = 0u64;
        let mut hasher = Sha256::new();
        let read = async {
            while let Some(chunk) = response.chunk().await.map_err(|e| self.classify(&e, url))? {
                if bytes + chunk.len() as u64 > max {
                    return Err(too_large(url, max, "more than that"));
                }
                hasher.update(&chunk);
                bytes += chunk.len() as u64;
                body.push(chunk);
            }
            Ok(())
        };
        tokio::time::timeout(time_left, read)
            .await
            .map_err(|_| self.timed_out(url, "the body did not arrive in time"))??;
        Ok((body, bytes, hex::encode(hasher.finalize())))
    }

    /// Renders the page in the browser and extracts from the rendered
    /// document, as a plain fetch extracts from the served one.
    async fn render_and_extract(
        &self,
        request: &CrawlRequest,
        url: &Url,
        how: &crate::contract::RenderRequest,
        extractor: Extractor,
    ) -> Result<PageFacts, CrawlError> {
        if let Some(selector) = &how.wait_for {
            if let Err(e) = Selector::parse(selector) {
                return Err(CrawlError::new(
                    ErrorKind::InvalidSelector,
                    format!("wait_for {selector:?} is not a valid CSS selector: {e}"),
                    false,
                ));
            }
        }
        // Every request of the page through its proxy when it always
        // fetches through one; with `proxy_on = "blocked"` the browser's
        // requests go direct (a refusal fails the render like any error).
        let proxy = match self.proxy_for(request)? {
            Some((proxy, ProxyOn::Always)) => Some((self.proxied_client(&proxy)?, proxy)),
            Some((_, ProxyOn::Blocked)) | None => None,
        };
        let rendered = self
            .renderer
            .render_through(
                url,
                how,
                request.user_agent.as_deref(),
                proxy.as_ref().map(|(client, _)| client),
            )
            .await
            .map_err(|mut error| {
                if let Some((_, proxy)) = &proxy {
                    error.message = proxy::scrub(
                        format!("through the proxy {proxy}: {}", error.message),
                        proxy,
                    );
                }
                error
            })?;
        for refused in &rendered.refused {
            tracing::info!(%refused, "the network guard refused one of the page's requests");
        }
        let bytes = rendered.html.len() as u64;
        let content_sha256 = hex::encode(Sha256::digest(rendered.html.as_bytes()));
        let _parsing = self.hold_parse_budget(self.parse_weight(bytes)).await;
        let html = rendered.html;
        let page = extract_apart(
            move || Html::parse_document(&html),
            extractor,
            url,
            request.links,
            Judge::Rendered {
                served: rendered.served,
            },
        )
        .await?;
        Ok(PageFacts {
            http_status: rendered.http_status,
            title: page.title,
            fields: page.fields,
            bytes,
            content_sha256,
            fetch_ms: rendered.render_ms,
            via_proxy: proxy.is_some(),
            links: page.links,
            rendered: true,
            looks_unrendered: false,
            served_sufficed: page.served_sufficed,
            // A rendered page is never fetched conditionally: its facts
            // depend on more than its document.
            etag: None,
            last_modified: None,
            not_modified: false,
        })
    }

    /// The renderer this crawler's rendered pages go through.
    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    /// The proxy `request` is to be fetched through and when, if any: its
    /// own URL, else the crawler's ([`CrawlerConfig::proxy`]).
    fn proxy_for(&self, request: &CrawlRequest) -> Result<Option<(ProxyUrl, ProxyOn)>, CrawlError> {
        let Some(route) = &request.proxy else {
            return Ok(None);
        };
        match route.url.as_ref().or(self.config.proxy.as_ref()) {
            Some(url) => Ok(Some((url.clone(), route.on))),
            None => Err(CrawlError::new(
                ErrorKind::Other,
                format!(
                    "the event asks for the crawler's own proxy, but this crawler has none \
                     ({ENV_PROXY_URL} is not set)"
                ),
                false,
            )),
        }
    }

    /// GETs `url` directly (the guarded client follows redirects) with
    /// `headers` ([`request_headers`]); only a 2xx answer (or a 304 to a
    /// conditional GET) is `Ok`.
    async fn send_direct(
        &self,
        url: &Url,
        headers: &HeaderMap,
    ) -> Result<reqwest::Response, CrawlError> {
        let get = self.fetch.get(url.clone()).headers(headers.clone());
        let response = get.send().await.map_err(|e| self.classify(&e, url))?;
        success_only(response, is_conditional(headers))
    }

    /// GETs `url` through `proxy`, following redirects itself: the proxy
    /// resolves the target's name, so the network guard checks the target
    /// ([`NetPolicy::check_target`]) before the request and before every
    /// redirect hop. Only a 2xx answer (or a 304 to a conditional GET) is
    /// `Ok`. Error messages never carry the proxy's password.
    async fn send_proxied(
        &self,
        proxy: &ProxyUrl,
        url: &Url,
        headers: &HeaderMap,
    ) -> Result<reqwest::Response, CrawlError> {
        let client = self.proxied_client(proxy)?;
        let mut target = url.clone();
        let mut hops = 0usize;
        loop {
            if let Err(refused) = self.config.net.check_target(&target).await {
                return Err(match refused {
                    TargetRefused::Blocked(b) => blocked(&b, hops > 0),
                    TargetRefused::Unresolved { host, error } => CrawlError::new(
                        ErrorKind::Dns,
                        format!("{target}: {host} did not resolve: {error}"),
                        true,
                    ),
                });
            }
            let get = client.get(target.clone()).headers(headers.clone());
            let response = get.send().await.map_err(|e| {
                let mut error = self.classify(&e, &target);
                error.message = proxy::scrub(
                    format!("through the proxy {proxy}: {}", error.message),
                    proxy,
                );
                error
            })?;
            let status = response.status();
            if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
                return Err(CrawlError::new(
                    ErrorKind::Connect,
                    format!("the proxy {proxy} refused its credentials (HTTP 407) for {target}"),
                    false,
                ));
            }
            let location = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
                .then(|| response.headers().get(reqwest::header::LOCATION))
                .flatten();
            let Some(location) = location else {
                return success_only(response, is_conditional(headers));
            };
            hops += 1;
            if hops > self.config.max_redirects {
                return Err(CrawlError::new(
                    ErrorKind::Redirect,
                    format!(
                        "{url} redirected more than {} times (or in a loop)",
                        self.config.max_redirects
                    ),
                    false,
                ));
            }
            let next = location
                .to_str()
                .ok()
                .and_then(|l| target.join(l).ok())
                .filter(|next| matches!(next.scheme(), "http" | "https"));
            let Some(next) = next else {
                return Err(CrawlError::new(
                    ErrorKind::Redirect,
                    format!("{target} redirected to a Location that is not an http(s) URL"),
                    false,
                ));
            };
            target = next;
        }
    }

    /// The client for `proxy`, built once and then reused: it sends every
    /// request through the proxy (credentials from the URL's userinfo as
    /// `Proxy-Authorization`), follows no redirects itself and uses no
    /// proxy from the environment.
    fn proxied_client(&self, proxy: &ProxyUrl) -> Result<reqwest::Client, CrawlError> {
        let mut clients = self.proxied.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(proxy) {
            return Ok(client.clone());
        }
        let unusable = |e: reqwest::Error| {
            CrawlError::new(
                ErrorKind::Other,
                proxy::scrub(format!("the proxy {proxy} cannot be used: {e}"), proxy),
                false,
            )
        };
        let via = reqwest::Proxy::all(proxy.expose().as_str()).map_err(unusable)?;
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(self.config.user_agent.clone())
            .connect_timeout(self.config.timeout)
            .gzip(true)
            .proxy(via)
            .redirect(reqwest::redirect::Policy::none());
        let client = trusting(client, &self.config.extra_roots_pem)
            .and_then(|c| c.build())
            .map_err(unusable)?;
        if clients.len() >= MAX_PROXY_CLIENTS {
            clients.clear();
        }
        clients.insert(proxy.clone(), client.clone());
        Ok(client)
    }

    /// Sorts a reqwest error into an [`ErrorKind`] by walking its source
    /// chain, since reqwest's own predicates do not tell DNS, refusal and TLS
    /// apart.
    fn classify(&self, error: &reqwest::Error, url: &Url) -> CrawlError {
        // First: a refusal by the guard surfaces as a connect error (from
        // the resolver) or a redirect error (from the redirect policy); the
        // message is the refusal alone, nothing the server sent.
        if let Some(b) = netguard::find_blocked(error) {
            return blocked(b, error.is_redirect());
        }
        let detail = chain_text(error);
        if error.is_timeout() {
            return self.timed_out(url, &detail);
        }
        let (kind, message, retryable) = if error.is_redirect() {
            let most = self.config.max_redirects;
            let message =
                format!("{url} redirected more than {most} times (or in a loop): {detail}");
            (ErrorKind::Redirect, message, false)
        } else if error.is_builder() {
            let message = format!("{url} cannot be fetched: {detail}");
            (ErrorKind::InvalidUrl, message, false)
        } else if let Some(kind) = kind_from_sources(error) {
            (
                kind,
                format!("{url}: {detail}"),
                !matches!(kind, ErrorKind::Tls),
            )
        } else if error.is_connect() {
            (ErrorKind::Connect, format!("{url}: {detail}"), true)
        } else if error.is_decode() {
            let message = format!("{url} sent a body that could not be decoded: {detail}");
            (ErrorKind::Body, message, false)
        } else if error.is_body() {
            let message = format!("{url}: the body could not be read: {detail}");
            (ErrorKind::Body, message, true)
        } else {
            (ErrorKind::Other, format!("{url}: {detail}"), true)
        };
        CrawlError::new(kind, message, retryable)
    }
}

/// Looks through the error's causes for a TLS failure (a rustls error), a
/// DNS failure (hyper-util's connect error says "dns error"), a refused or
/// reset connection, or an I/O timeout.
fn kind_from_sources(error: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    let causes = causes(error);
    if causes.iter().any(|err| err.is::<rustls::Error>()) {
        return Some(ErrorKind::Tls);
    }
    if causes
        .iter()
        .any(|err| err.to_string().to_ascii_lowercase().contains("dns error"))
    {
        return Some(ErrorKind::Dns);
    }
    for err in &causes {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as Io;
            match io.kind() {
                Io::ConnectionRefused
                | Io::ConnectionReset
                | Io::ConnectionAborted
                | Io::NotConnected
                | Io::BrokenPipe
                | Io::AddrNotAvailable
                | Io::UnexpectedEof => return Some(ErrorKind::Connect),
                Io::TimedOut => return Some(ErrorKind::Timeout),
                _ => {}
            }
        }
        // hyper's IncompleteMessage: the server hung up mid-answer.
        if err
            .to_string()
            .contains("connection closed before message completed")
        {
            return Some(ErrorKind::Connect);
        }
    }
    None
}

fn parse_target(raw: &str) -> Result<Url, CrawlError> {
    let url = Url::parse(raw).map_err(|e| {
        CrawlError::new(
            ErrorKind::InvalidUrl,
            format!("{raw:?} is not a valid URL: {e}"),
            false,
        )
    })?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        "http" | "https" => Err(CrawlError::new(
            ErrorKind::InvalidUrl,
            format!("{raw:?} has no host"),
            false,
        )),
        scheme => Err(CrawlError::new(
            ErrorKind::InvalidUrl,
            format!("{raw:?} has scheme {scheme:?}; only http and https can be crawled"),
            false,
        )),
    }
}

/// A fetch the network guard refused: never retryable (the same URL
/// resolves to the same kind of address), the message naming the address
/// class.
pub(crate) fn blocked(refusal: &netguard::Blocked, on_redirect: bool) -> CrawlError {
    let message = if on_redirect {
        format!("a redirect was refused: {refusal}")
    } else {
        refusal.to_string()
    };
    CrawlError::new(ErrorKind::Blocked, message, false)
}

/// `response` when it is a 2xx (or a 304 to a `conditional` GET), else
/// its status as an error (with the site's `Retry-After` for a 429 or 503).
fn success_only(
    response: reqwest::Response,
    conditional: bool,
) -> Result<reqwest::Response, CrawlError> {
    let status = response.status();
    if status.is_success() || (conditional && status == StatusCode::NOT_MODIFIED) {
        return Ok(response);
    }
    let mut error = status_error(status, response.url());
    if matches!(status.as_u16(), 429 | 503) {
        error.retry_after_secs = retry_after(response.headers(), SystemTime::now());
    }
    Err(error)
}

/// The headers of a page's GET: the request's `User-Agent` and, when it
/// carries validators, `If-None-Match` and `If-Modified-Since`. A value
/// that is not a valid header value is left out (the daemon checks the
/// user agent; validators are the site's own, stored as it sent them).
fn request_headers(request: &CrawlRequest) -> HeaderMap {
    use reqwest::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH, USER_AGENT};
    let mut headers = HeaderMap::new();
    for (name, value) in [
        (USER_AGENT, &request.user_agent),
        (IF_NONE_MATCH, &request.if_none_match),
        (IF_MODIFIED_SINCE, &request.if_modified_since),
    ] {
        if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, value);
        }
    }
    headers
}

/// Whether a GET with `headers` is conditional (a 304 is then an answer).
fn is_conditional(headers: &HeaderMap) -> bool {
    headers.contains_key(reqwest::header::IF_NONE_MATCH)
        || headers.contains_key(reqwest::header::IF_MODIFIED_SINCE)
}

/// A response's `ETag` and `Last-Modified`, each when present, visible
/// ASCII and at most [`MAX_VALIDATOR_BYTES`].
fn validators_of(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let read = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= MAX_VALIDATOR_BYTES)
            .map(str::to_string)
    };
    (
        read(reqwest::header::ETAG),
        read(reqwest::header::LAST_MODIFIED),
    )
}

/// Whether a direct fetch's failure looks like the site refusing this
/// crawler's address (403, 429, or a refused or reset connection), so that
/// `proxy_on = "blocked"` tries again through the proxy. A refusal by the
/// network guard is not one: the proxy must not get around it.
fn refused_by_site(error: &CrawlError) -> bool {
    matches!(error.http_status, Some(403 | 429)) || error.kind == ErrorKind::Connect
}

/// 408, 429 and 5xx may pass on a later attempt; other statuses will not.
pub(crate) fn status_error(status: StatusCode, url: &Url) -> CrawlError {
    let retryable = status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error();
    CrawlError {
        http_status: Some(status.as_u16()),
        ..CrawlError::new(
            ErrorKind::HttpStatus,
            format!("{url} answered HTTP {status}"),
            retryable,
        )
    }
}

/// The seconds a `Retry-After` header asks for (delay-seconds, or an
/// HTTP date turned into the seconds from `now` until it, 0 when past);
/// `None` when absent or unreadable.
fn retry_after(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<u64> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).map_or(0, |d| d.as_secs()))
}

/// Which document [`extract_apart`] reads: one as served, which may turn
/// out to be an app shell, or one a browser rendered (with the document as
/// served, which the plain fetch's test is applied to).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Judge {
    AppShell,
    Rendered { served: Vec<u8> },
}

/// What a page's document gave.
struct Extracted {
    title: Option<String>,
    fields: BTreeMap<String, serde_json::Value>,
    links: Vec<String>,
    /// A field found nothing and the document looks like an app shell
    /// (only judged for a document as served).
    looks_unrendered: bool,
    /// A rendered page's document as served would not have looked
    /// unrendered: a plain fetch would have done.
    served_sufficed: bool,
}

/// Parses a document with `parse` and extracts its facts (and its links,
/// when `links` asks for them) with `page` as its URL. Parsing a large page
/// takes a CPU for a long while (hundreds of ms for 10 MiB): on a blocking
/// thread, never on the async runtime's workers, which serve the daemon's
/// HTTP and dispatch. What `parse` holds (the body) is moved in and freed
/// there.
async fn extract_apart(
    parse: impl FnOnce() -> Html + Send + 'static,
    extractor: Extractor,
    page: &Url,
    links: Option<LinksWanted>,
    judge: Judge,
) -> Result<Extracted, CrawlError> {
    let page_url = page.clone();
    let what = match judge {
        Judge::AppShell => "page",
        Judge::Rendered { .. } => "rendered page",
    };
    tokio::task::spawn_blocking(move || {
        let unrendered = |document: &Html, fields: &BTreeMap<String, serde_json::Value>| {
            fields.values().any(serde_json::Value::is_null) && looks_like_app_shell(document)
        };
        let (looks_unrendered, served_sufficed) = match judge {
            Judge::AppShell => (None, false),
            Judge::Rendered { served } => {
                let served = self::parse([served], None);
                let (_, served_fields) = extractor.extract(&served, &page_url);
                (Some(false), !unrendered(&served, &served_fields))
            }
        };
        let document = parse();
        let (title, fields) = extractor.extract(&document, &page_url);
        let links = links
            .map(|wanted| links_of(&document, &page_url, wanted))
            .unwrap_or_default();
        let looks_unrendered = looks_unrendered.unwrap_or_else(|| unrendered(&document, &fields));
        Extracted {
            title,
            fields,
            links,
            looks_unrendered,
            served_sufficed,
        }
    })
    .await
    .map_err(|e| {
        CrawlError::new(
            ErrorKind::Other,
            format!("{page}: extracting the {what}'s facts failed: {e}"),
            false,
        )
    })
}

fn too_large(url: &Url, max: u64, seen: &str) -> CrawlError {
    CrawlError::new(
        ErrorKind::TooLarge,
        format!("{url} sent a body over the {max}-byte cap ({seen})"),
        false,
    )
}

fn charset_of(response: &reqwest::Response) -> Option<String> {
    let content_type = response.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    content_type.split(';').skip(1).find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"').to_string())
    })
}

/// Decodes `chunks` by the declared charset when it is known, else as
/// UTF-8 (a BOM wins over both, malformed sequences become U+FFFD), handing
/// the text to `each` piece by piece; each chunk is dropped once decoded. A
/// character split between chunks is decoded whole.
fn decode_each<B: AsRef<[u8]>>(
    chunks: impl IntoIterator<Item = B>,
    charset: Option<&str>,
    mut each: impl FnMut(&str),
) {
    let encoding = charset
        .and_then(|label| encoding_rs::Encoding::for_label(label.as_bytes()))
        .unwrap_or(encoding_rs::UTF_8);
    let mut decoder = encoding.new_decoder();
    let mut text = String::new();
    let mut chunks = chunks.into_iter();
    loop {
        let chunk = chunks.next();
        let last = chunk.is_none();
        let mut input = chunk.as_ref().map_or(&[][..], AsRef::as_ref);
        loop {
            let room = decoder.max_utf8_buffer_length(input.len());
            text.reserve(room.unwrap_or(input.len().saturating_add(1024)));
            let (result, read, _) = decoder.decode_to_string(input, &mut text, last);
            input = &input[read..];
            if !text.is_empty() {
                each(&text);
                text.clear();
            }
            if result == encoding_rs::CoderResult::InputEmpty {
                break;
            }
        }
        if last {
            return;
        }
    }
}

/// Parses the body's chunks into a document, each decoded and fed to the
/// parser in turn, so the whole body is never copied into one string.
fn parse<B: AsRef<[u8]>>(chunks: impl IntoIterator<Item = B>, charset: Option<&str>) -> Html {
    let mut parser = html5ever::driver::parse_document(
        HtmlTreeSink::new(Html::new_document()),
        Default::default(),
    );
    decode_each(chunks, charset, |text| {
        parser.process(StrTendril::from_slice(text));
    });
    parser.finish()
}

/// The largest parse budget: a page's weight must fit a `u32`, and tokio's
/// semaphore holds fewer than `usize::MAX >> 3` permits.
const MAX_PARSE_BUDGET: usize = u32::MAX as usize >> 3;

/// A share of the parse budget, released when dropped.
struct ParsePermit {
    weight: u32,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

static LINKS: LazyLock<Selector> =
    LazyLock::new(|| Selector::parse("a[href], area[href]").expect("the link selector is valid"));
static BASE: LazyLock<Selector> =
    LazyLock::new(|| Selector::parse("base[href]").expect("`base[href]` is a valid selector"));

/// The document's links as [`PageFacts::links`] describes them: resolved
/// against the first `<base href>` (itself resolved against `page`) or
/// `page`, http(s) only, without fragment, each once, at most
/// `wanted.max` (and [`MAX_LINKS`]) of them and [`MAX_LINKS_BYTES`] in
/// all; with `skip_nofollow`, those whose `rel` says `nofollow` are left
/// out. The `url` crate lowercases scheme and host and drops a default
/// port as it parses.
fn links_of(document: &Html, page: &Url, wanted: LinksWanted) -> Vec<String> {
    let base = document
        .select(&BASE)
        .next()
        .and_then(|b| b.value().attr("href"))
        .and_then(|href| page.join(href.trim()).ok())
        .filter(|b| matches!(b.scheme(), "http" | "https"))
        .unwrap_or_else(|| page.clone());
    let max = wanted.max.min(MAX_LINKS) as usize;
    let mut seen = std::collections::HashSet::new();
    let mut links = Vec::new();
    let mut bytes = 0usize;
    for element in document.select(&LINKS) {
        if links.len() >= max {
            break;
        }
        let value = element.value();
        if wanted.skip_nofollow
            && value.attr("rel").is_some_and(|rel| {
                rel.split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("nofollow"))
            })
        {
            continue;
        }
        let Some(href) = value.attr("href") else {
            continue;
        };
        let Ok(mut url) = base.join(href.trim()) else {
            continue;
        };
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            continue;
        }
        url.set_fragment(None);
        let url = String::from(url);
        if url.len() > MAX_LINK_BYTES || bytes + url.len() > MAX_LINKS_BYTES {
            continue;
        }
        if seen.insert(url.clone()) {
            bytes += url.len();
            links.push(url);
        }
    }
    links
}

/// Visible text (outside scripts, styles and templates) under this many
/// characters is "little text".
const SHELL_TEXT_CHARS: usize = 100;

static SHELL_ROOT: LazyLock<Selector> = LazyLock::new(|| {
    Selector::parse(
        "#root, #app, #__next, #__nuxt, #___gatsby, [data-reactroot], [ng-app], app-root",
    )
    .expect("a valid selector")
});
static SCRIPT: LazyLock<Selector> =
    LazyLock::new(|| Selector::parse("script").expect("a valid selector"));
static NOSCRIPT: LazyLock<Selector> =
    LazyLock::new(|| Selector::parse("noscript").expect("a valid selector"));
static BODY: LazyLock<Selector> =
    LazyLock::new(|| Selector::parse("body").expect("a valid selector"));

/// Whether the document looks like a page its scripts fill in: it has
/// scripts and little visible text, and either an app's root element with
/// nothing in it (`<div id="root"></div>`, `#app`, `#__next`, ...), a
/// `<noscript>` asking for JavaScript, or no visible text at all.
fn looks_like_app_shell(document: &Html) -> bool {
    if document.select(&SCRIPT).next().is_none() {
        return false;
    }
    let text = visible_text_chars(document);
    if text >= SHELL_TEXT_CHARS {
        return false;
    }
    let empty_root = document
        .select(&SHELL_ROOT)
        .any(|root| root.text().all(|t| t.trim().is_empty()));
    let asks_for_javascript = document.select(&NOSCRIPT).any(|n| {
        n.text()
            .any(|t| t.to_ascii_lowercase().contains("javascript"))
    });
    empty_root || asks_for_javascript || text == 0
}

/// Characters of text in the body outside `script`, `style`, `noscript`
/// and `template`, whitespace not counted.
fn visible_text_chars(document: &Html) -> usize {
    let Some(body) = document.select(&BODY).next() else {
        return 0;
    };
    body.descendants()
        .filter_map(|node| {
            let text = node.value().as_text()?;
            let hidden = node.ancestors().any(|a| {
                a.value().as_element().is_some_and(|e| {
                    matches!(e.name(), "script" | "style" | "noscript" | "template")
                })
            });
            (!hidden).then(|| text.chars().filter(|c| !c.is_whitespace()).count())
        })
        .sum()
}

/// Replaces the outcome with a [`ErrorKind::TooLarge`] failure when the
/// report would exceed [`MAX_REPORT_BYTES`]; the daemon would answer 413,
/// and a report it refuses helps no one.
pub(crate) fn fit_report(mut report: Report) -> Report {
    let mut size = serde_json::to_vec(&report).map_or(0, |json| json.len());
    // Links are what a report can spare: the last ones go first, each
    // taking its bytes, quotes and comma with it.
    while size > MAX_REPORT_BYTES {
        let Outcome::Succeeded(facts) = &mut report.outcome else {
            break;
        };
        if facts.links.is_empty() {
            break;
        }
        let mut excess = size - MAX_REPORT_BYTES;
        while excess > 0 {
            let Some(link) = facts.links.pop() else { break };
            excess = excess.saturating_sub(link.len() + 3);
        }
        size = serde_json::to_vec(&report).map_or(0, |json| json.len());
    }
    if size <= MAX_REPORT_BYTES {
        return report;
    }
    let outcome = Outcome::failed(
        ErrorKind::TooLarge,
        format!(
            "the report would be {size} bytes, over the daemon's {MAX_REPORT_BYTES}-byte limit; \
             extract fewer or smaller fields"
        ),
        false,
    );
    Report { outcome, ..report }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after(&h, now)
        };
        assert_eq!(with("2"), Some(2));
        assert_eq!(with(" 120 "), Some(120));
        // 2015-10-21 07:28:00 GMT is the `now` above; 07:30:00 is 120 s later.
        assert_eq!(with("Wed, 21 Oct 2015 07:30:00 GMT"), Some(120));
        assert_eq!(with("Wed, 21 Oct 2015 07:00:00 GMT"), Some(0));
        assert_eq!(with("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn default_config_has_the_documented_values() {
        let config = CrawlerConfig::default();
        assert_eq!(config.timeout, Duration::from_secs(30));
        assert_eq!(config.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(config.max_redirects, 5);
        assert_eq!(config.callback_timeout, Duration::from_secs(10));
        assert_eq!(config.callback_attempts, 5);
        assert_eq!(config.callback_backoff, Duration::from_millis(200));
        assert!(config.user_agent.starts_with("fanfare-crawler/0."));
        assert_eq!(config.parse_budget_bytes, PARSE_BUDGET_BYTES);
    }

    #[test]
    fn environment_overrides_timeout_body_cap_and_user_agent() {
        let config = CrawlerConfig::from_lookup(lookup(&[
            (ENV_TIMEOUT_SECS, "7"),
            (ENV_MAX_BODY_BYTES, "1024"),
            (ENV_USER_AGENT, "acme-bot/1"),
        ]))
        .unwrap();
        assert_eq!(config.timeout, Duration::from_secs(7));
        assert_eq!(config.max_body_bytes, 1024);
        assert_eq!(config.user_agent, "acme-bot/1");
        assert_eq!(
            CrawlerConfig::from_lookup(lookup(&[])).unwrap(),
            CrawlerConfig::default()
        );
    }

    #[test]
    fn bad_environment_value_fails_naming_the_variable() {
        for (name, value) in [
            (ENV_TIMEOUT_SECS, "soon"),
            (ENV_TIMEOUT_SECS, "0"),
            (ENV_MAX_BODY_BYTES, "-1"),
            (ENV_USER_AGENT, " "),
            (ENV_USER_AGENT, "bad\nagent"),
            (ENV_ALLOW_PRIVATE_NETWORKS, "yes"),
            (ENV_ALLOW_PRIVATE_NETWORKS, ""),
        ] {
            let error = CrawlerConfig::from_lookup(lookup(&[(name, value)])).unwrap_err();
            assert_eq!(error.name, name);
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    fn the_crawlers_own_proxy_comes_from_the_environment_and_a_bad_one_is_named_unquoted() {
        let config = CrawlerConfig::from_lookup(lookup(&[(
            ENV_PROXY_URL,
            "http://u:env-s3cret@proxy.example:3128",
        )]))
        .unwrap();
        let proxy = config.proxy.as_ref().expect("the proxy is read");
        assert_eq!(proxy.expose().password(), Some("env-s3cret"));
        assert!(!format!("{config:?}").contains("env-s3cret"));
        assert_eq!(CrawlerConfig::default().proxy, None);
        for bad in ["socks5://u:env-s3cret@p.example:1080", "u:env-s3cret@p"] {
            let error = CrawlerConfig::from_lookup(lookup(&[(ENV_PROXY_URL, bad)])).unwrap_err();
            assert_eq!(error.name, ENV_PROXY_URL);
            assert!(!error.to_string().contains("env-s3cret"), "{error}");
        }
    }

    #[test]
    fn private_networks_are_closed_unless_the_environment_opens_them() {
        assert!(!CrawlerConfig::default().net.allows_private());
        for (value, open) in [
            ("true", true),
            ("1", true),
            (" TRUE ", true),
            ("false", false),
            ("0", false),
        ] {
            let config =
                CrawlerConfig::from_lookup(lookup(&[(ENV_ALLOW_PRIVATE_NETWORKS, value)])).unwrap();
            assert_eq!(config.net.allows_private(), open, "{value:?}");
        }
    }

    #[test]
    fn app_shells_look_unrendered_and_served_pages_do_not() {
        let shell = |html: &str| looks_like_app_shell(&Html::parse_document(html));
        // An empty root element that a bundle fills.
        assert!(shell(
            r#"<html><body><div id="root"></div><script src="/app.js"></script></body></html>"#
        ));
        // A <noscript> asking for JavaScript, the rest a spinner.
        assert!(shell(
            "<body><noscript>You need to enable JavaScript to run this app.</noscript>\
             <div class=spinner>Loading…</div><script>boot()</script></body>"
        ));
        // Price and title there, scripts only for tracking.
        assert!(!shell(
            "<body><h1>Blue kettle</h1><p>A kettle that is blue and boils water fast, \
             with a lid that stays shut and a handle that stays cool. Made of steel. \
             Holds 1.7 litres. Ships in two days from our warehouse. Free returns for \
             thirty days.</p><span class=price>29.99</span><div id=app></div>\
             <script>track()</script></body>"
        ));
        // Little text but no scripts: nothing a browser would add.
        assert!(!shell("<body><div id=root></div></body>"));
    }

    #[test]
    fn declared_charset_is_honoured_and_utf8_is_the_default() {
        assert_eq!(decode(b"caf\xe9", Some("ISO-8859-1")), "café");
        assert_eq!(decode("café".as_bytes(), None), "café");
        assert_eq!(decode(b"caf\xff", None), "caf\u{fffd}");
        assert_eq!(decode("café".as_bytes(), Some("no-such-charset")), "café");
        assert_eq!(
            decode(b"\xef\xbb\xbfcaf\xc3\xa9", Some("ISO-8859-1")),
            "café"
        );
    }

    /// The whole body decoded, fed one byte at a time.
    fn decode(body: &[u8], charset: Option<&str>) -> String {
        let mut text = String::new();
        decode_each(body.chunks(1), charset, |piece| text.push_str(piece));
        text
    }

    #[test]
    fn page_parsed_from_chunks_is_the_page_parsed_whole() {
        let page = "<html><head><title>Caf\u{e9} \u{1f600}</title></head>\
                    <body><p class=a>d\u{e9}j\u{e0} vu</p></body></html>";
        let whole = Html::parse_document(page);
        for size in [1, 2, 3, 7, page.len()] {
            let chunked = parse(page.as_bytes().chunks(size), None);
            assert_eq!(chunked.html(), whole.html(), "chunks of {size} bytes");
        }
    }

    #[test]
    fn only_408_429_and_5xx_statuses_are_retryable() {
        let url = Url::parse("https://a.example/").unwrap();
        for (code, retryable) in [
            (400, false),
            (401, false),
            (403, false),
            (404, false),
            (408, true),
            (410, false),
            (429, true),
            (500, true),
            (502, true),
            (503, true),
            (304, false),
        ] {
            let error = status_error(StatusCode::from_u16(code).unwrap(), &url);
            assert_eq!(error.kind, ErrorKind::HttpStatus);
            assert_eq!(error.retryable, retryable, "HTTP {code}");
            assert!(
                error.message.contains(&code.to_string()),
                "{}",
                error.message
            );
        }
    }

    /// Stands in for hyper-util's `ConnectError`: a message and a cause.
    #[derive(Debug)]
    struct Wrapped(&'static str, Box<dyn StdError + Send + Sync>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Wrapped {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.1)
        }
    }

    fn io(
        kind: std::io::ErrorKind,
        inner: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> std::io::Error {
        std::io::Error::new(kind, inner)
    }

    #[test]
    fn error_causes_are_classified_through_nested_io_errors() {
        use std::io::ErrorKind as Io;
        let dns = Wrapped(
            "client error (Connect)",
            Box::new(Wrapped(
                "dns error",
                Box::new(io(Io::Other, "failed to lookup address information")),
            )),
        );
        assert_eq!(kind_from_sources(&dns), Some(ErrorKind::Dns));

        let refused = Wrapped(
            "client error (Connect)",
            Box::new(io(Io::Other, io(Io::ConnectionRefused, "refused"))),
        );
        assert_eq!(kind_from_sources(&refused), Some(ErrorKind::Connect));

        let tls = Wrapped(
            "client error (Connect)",
            Box::new(io(
                Io::Other,
                io(Io::InvalidData, rustls::Error::General("bad cert".into())),
            )),
        );
        assert_eq!(kind_from_sources(&tls), Some(ErrorKind::Tls));
        assert!(
            chain_text(&tls).ends_with("bad cert"),
            "{}",
            chain_text(&tls)
        );

        let timed_out = Wrapped("read", Box::new(io(Io::TimedOut, "slow")));
        assert_eq!(kind_from_sources(&timed_out), Some(ErrorKind::Timeout));

        let unknown = Wrapped("something", Box::new(io(Io::Other, "odd")));
        assert_eq!(kind_from_sources(&unknown), None);
    }

    /// A request for `https://a.example/` on `attempt`.
    fn a_request(attempt: u32) -> CrawlRequest {
        serde_json::from_value(serde_json::json!({
            "version": 1, "run_id": "r", "page_id": "p", "attempt": attempt,
            "url": "https://a.example/", "callback_url": "https://d.example/v1/callbacks",
            "callback_token": "t", "deadline": "2026-11-26T03:05:00Z"
        }))
        .unwrap()
    }

    /// A page's facts with `count` fields of [`MAX_TEXT_BYTES`] each and
    /// `links`.
    fn full_fields(count: usize, links: Vec<String>) -> PageFacts {
        PageFacts {
            http_status: 200,
            title: None,
            fields: (0..count)
                .map(|i| (format!("f{i}"), "x".repeat(MAX_TEXT_BYTES).into()))
                .collect(),
            bytes: 1,
            content_sha256: "00".into(),
            fetch_ms: 1,
            via_proxy: false,
            links,
            rendered: false,
            looks_unrendered: false,
            served_sufficed: false,
            etag: None,
            last_modified: None,
            not_modified: false,
        }
    }

    #[test]
    fn oversized_report_becomes_a_too_large_failure() {
        let request = a_request(3);
        let facts = full_fields(64, Vec::new());
        let report = fit_report(Report::for_request(&request, Outcome::Succeeded(facts)));
        let error = report.outcome.error().expect("replaced by a failure");
        assert_eq!(error.kind, ErrorKind::TooLarge);
        assert!(!error.retryable);
        assert_eq!(report.attempt, 3);

        let small = Report::for_request(&request, Outcome::failed(ErrorKind::Dns, "x", true));
        assert_eq!(fit_report(small.clone()), small);
    }

    fn links(html: &str, page: &str, wanted: LinksWanted) -> Vec<String> {
        let document = parse([html.as_bytes()], None);
        links_of(&document, &Url::parse(page).unwrap(), wanted)
    }

    #[test]
    fn links_are_absolute_normalized_http_only_and_each_once() {
        let html = r##"<html><body>
            <a href="/a#top">a</a>
            <a href="b?x=1">b</a>
            <a href="HTTP://Shop.Example.COM:80/c">c</a>
            <a href="https://other.example:443/d#frag">d</a>
            <a href="/a">a again</a>
            <a href="mailto:x@example.com">mail</a>
            <a href="javascript:void(0)">js</a>
            <a href="ftp://shop.example.com/f">ftp</a>
            <a href="/n" rel="external NoFollow">nofollow</a>
            <area href="/map">
            <a>no href</a>
        </body></html>"##;
        let all = LinksWanted {
            max: 100,
            skip_nofollow: false,
        };
        assert_eq!(
            links(html, "http://shop.example.com/dir/page", all),
            [
                "http://shop.example.com/a",
                "http://shop.example.com/dir/b?x=1",
                "http://shop.example.com/c",
                "https://other.example/d",
                "http://shop.example.com/n",
                "http://shop.example.com/map",
            ]
        );
        let polite = LinksWanted {
            skip_nofollow: true,
            ..all
        };
        let found = links(html, "http://shop.example.com/dir/page", polite);
        assert!(
            !found.contains(&"http://shop.example.com/n".to_string()),
            "{found:?}"
        );
        let two = LinksWanted { max: 2, ..all };
        assert_eq!(
            links(html, "http://shop.example.com/dir/page", two).len(),
            2
        );
    }

    #[test]
    fn links_resolve_against_the_base_href() {
        let html = r#"<html><head><base href="https://cdn.example/en/"></head>
            <body><a href="item/1">1</a><a href="/top">top</a></body></html>"#;
        let wanted = LinksWanted {
            max: 10,
            skip_nofollow: true,
        };
        assert_eq!(
            links(html, "https://shop.example/x/y", wanted),
            ["https://cdn.example/en/item/1", "https://cdn.example/top"]
        );
    }

    #[test]
    fn links_are_bounded_in_bytes() {
        let long = format!("/{}", "x".repeat(MAX_LINK_BYTES));
        let mut html = format!(r#"<a href="{long}">too long</a>"#);
        for i in 0..200 {
            html.push_str(&format!(r#"<a href="/{i}/{}">p</a>"#, "y".repeat(1500)));
        }
        let found = links(
            &html,
            "https://a.example/",
            LinksWanted {
                max: MAX_LINKS,
                skip_nofollow: false,
            },
        );
        assert!(found.iter().all(|l| l.len() <= MAX_LINK_BYTES));
        let total: usize = found.iter().map(String::len).sum();
        assert!(total <= MAX_LINKS_BYTES, "{total}");
        assert!(found.len() > 100 && found.len() < 200, "{}", found.len());
    }

    #[test]
    fn an_oversized_report_sheds_links_before_it_fails() {
        let request = a_request(1);
        let links: Vec<String> = (0..2000)
            .map(|i| format!("https://a.example/{i}/{}", "z".repeat(100)))
            .collect();
        let facts = full_fields(20, links.clone());
        let report = fit_report(Report::for_request(&request, Outcome::Succeeded(facts)));
        let kept = &report.outcome.facts().expect("still a success").links;
        assert!(
            !kept.is_empty() && kept.len() < links.len(),
            "{}",
            kept.len()
        );
        assert_eq!(kept[..], links[..kept.len()], "the first links are kept");
        assert!(serde_json::to_vec(&report).unwrap().len() <= MAX_REPORT_BYTES);
    }
}
