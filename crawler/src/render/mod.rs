//! Rendering a page in headless Chromium, for pages whose content scripts
//! fill in.
//!
//! One browser process per [`Renderer`] (one per Lambda container, one per
//! daemon), started at the first render and started again if it exits; a
//! fresh browser context (incognito: no cookies, cache or storage shared
//! with another page) per page; at most [`RenderConfig::pages`] pages
//! rendering at once. The browser is driven over the DevTools protocol
//! through a pipe ([`cdp`]).
//!
//! # The network guard inside the browser
//!
//! A page's scripts, subresources and redirects make requests the crawler
//! never sees in a plain fetch. Chromium is therefore given no network of
//! its own: it is launched with every host name mapped to "not found"
//! (`--host-resolver-rules`) and every connection sent to a proxy whose
//! name cannot resolve (`--proxy-server`, with `<-loopback>` so that not
//! even loopback bypasses it), and with WebRTC kept off UDP
//! (`--force-webrtc-ip-handling-policy=disable_non_proxied_udp`). A page's
//! requests are intercepted over the protocol (`Fetch.enable` for every
//! URL) and each is either refused (`Fetch.failRequest`, `BlockedByClient`)
//! or fetched by the crawler's own guarded HTTP client and handed back
//! (`Fetch.fulfillRequest`): the same resolver, the same check of the
//! address actually connected to ([`crate::netguard`]), one redirect hop at
//! a time (each hop comes back to Chromium, which asks again and is checked
//! again). What cannot be intercepted (WebSockets, service workers, workers
//! and out-of-process frames, WebRTC, DNS prefetching) meets the dead proxy
//! and the empty resolver, so it reaches nothing.

mod cdp;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::{Mutex, Semaphore};
use url::Url;

use crate::contract::{CrawlError, ErrorKind, RenderRequest, ResourceType};
use crate::netguard::{self, NetPolicy};

use cdp::Cdp;

/// Environment variable naming the Chromium (or Chrome) executable.
pub const ENV_CHROMIUM: &str = "FANFARE_CHROMIUM";

/// Where Chromium is looked for when [`ENV_CHROMIUM`] is not set: these
/// paths, then these names on `PATH`.
const KNOWN_PATHS: [&str; 4] = [
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
    "/usr/bin/google-chrome-stable",
];
const KNOWN_NAMES: [&str; 4] = [
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];

/// How long the browser may take to start and answer its first command.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(20);

/// Without `wait_for`, a page counts as rendered once its load event has
/// fired and none of its requests has been open for this long.
const QUIET_AFTER_LOAD: Duration = Duration::from_millis(500);

/// How often `wait_for` is tried.
const WAIT_FOR_EVERY: Duration = Duration::from_millis(100);

/// How the renderer runs the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderConfig {
    /// The browser executable; found with [`find_chromium`] when unset.
    pub chromium: Option<PathBuf>,
    /// Pages rendering at once, at most (at least 1).
    pub pages: usize,
    /// The longest render a request may ask for.
    pub max_timeout: Duration,
    /// The `User-Agent` of the page's requests.
    pub user_agent: String,
    /// The largest response (after decoding) handed to the browser for any
    /// one of the page's requests.
    pub max_body_bytes: u64,
    /// Which addresses the page's requests may reach.
    pub net: NetPolicy,
}

/// A page as the browser left it.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The final HTTP status of the page's document.
    pub http_status: u16,
    /// `document.documentElement.outerHTML` once rendered.
    pub html: String,
    /// Milliseconds from opening the page to reading its document.
    pub render_ms: u64,
    /// The requests the network guard refused (URL and why), in order.
    pub refused: Vec<String>,
    /// The page's document as served (its last hop's body, decoded),
    /// before any script ran.
    pub served: Vec<u8>,
}

/// Finds the browser: `explicit`, else [`ENV_CHROMIUM`], else the usual
/// install paths and names. The error says what to install.
pub fn find_chromium(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(format!(
                "the browser {} does not exist ({ENV_CHROMIUM}); {}",
                path.display(),
                INSTALL_HINT
            ))
        };
    }
    if let Some(path) = std::env::var_os(ENV_CHROMIUM).filter(|p| !p.is_empty()) {
        return find_chromium(Some(Path::new(&path)));
    }
    if let Some(found) = KNOWN_PATHS.iter().map(Path::new).find(|p| p.is_file()) {
        return Ok(found.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if let Some(found) = KNOWN_NAMES
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
        {
            return Ok(found);
        }
    }
    Err(format!("no Chromium was found; {INSTALL_HINT}"))
}

/// What to do when no browser is found.
pub const INSTALL_HINT: &str = "pages with render = \"always\" or \"auto\" need one: install \
     Chromium (Debian/Ubuntu: apt-get install chromium) or set FANFARE_CHROMIUM to a Chromium \
     or Chrome executable";

/// Renders pages in one shared browser. Cheap to share behind an `Arc`;
/// the browser starts at the first render.
pub struct Renderer {
    config: RenderConfig,
    permits: Semaphore,
    browser: Mutex<Option<Arc<Browser>>>,
    /// Fetches a page's requests for the browser: guarded, one hop at a
    /// time (no redirects followed), no cookies kept.
    client: reqwest::Client,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Renderer {
    /// A renderer; no browser runs until the first [`Renderer::render`].
    pub fn new(config: RenderConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(config.user_agent.clone())
            .connect_timeout(config.max_timeout)
            .gzip(true);
        let client = config
            .net
            .apply(client, 0)
            // Each hop goes back to the browser, which asks for the next.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            permits: Semaphore::new(config.pages.max(1)),
            config,
            browser: Mutex::new(None),
            client,
        })
    }

    /// The settings this renderer was built with.
    pub fn config(&self) -> &RenderConfig {
        &self.config
    }

    /// Renders `url` as `how` asks, within its timeout (capped by
    /// [`RenderConfig::max_timeout`]; the wait for a free browser tab is
    /// not counted). Every failure is a [`CrawlError`].
    pub async fn render(
        &self,
        url: &Url,
        how: &RenderRequest,
        user_agent: Option<&str>,
    ) -> Result<Rendered, CrawlError> {
        self.render_through(url, how, user_agent, None).await
    }

    /// [`Renderer::render`], with every request of the page fetched through
    /// `proxy` when one is given: a client that sends each request through
    /// a forward proxy and follows no redirects. The proxy resolves the
    /// targets' names, so the guard resolves and checks each target itself
    /// before its request is sent ([`NetPolicy::check_target`]).
    pub async fn render_through(
        &self,
        url: &Url,
        how: &RenderRequest,
        user_agent: Option<&str>,
        proxy: Option<&reqwest::Client>,
    ) -> Result<Rendered, CrawlError> {
        let _permit = self.permits.acquire().await.map_err(|_| {
            CrawlError::new(ErrorKind::Other, "the renderer is shutting down", true)
        })?;
        let browser = self.browser().await?;
        let bound = Duration::from_millis(how.timeout_ms.max(1)).min(self.config.max_timeout);
        let page = Page {
            renderer: self,
            cdp: &browser.cdp,
            url,
            how,
            user_agent: user_agent.unwrap_or(&self.config.user_agent),
            bound,
            proxy,
        };
        page.render().await
    }

    /// Starts a browser of this renderer's settings apart from the shared
    /// one and waits for its first answer; returns how long that took (a
    /// Lambda container's cold start pays it once, at its first render).
    /// The browser is stopped again.
    pub async fn start_browser(&self) -> Result<Duration, String> {
        let started = std::time::Instant::now();
        let browser = Browser::launch(&self.config).await?;
        let took = started.elapsed();
        drop(browser);
        Ok(took)
    }

    /// The running browser, started (again) when there is none.
    async fn browser(&self) -> Result<Arc<Browser>, CrawlError> {
        let mut slot = self.browser.lock().await;
        if let Some(browser) = slot.as_ref().filter(|b| !b.cdp.is_closed()) {
            return Ok(browser.clone());
        }
        if slot.take().is_some() {
            tracing::warn!("the browser exited; starting another");
        }
        let browser = Arc::new(
            Browser::launch(&self.config)
                .await
                .map_err(|message| CrawlError::new(ErrorKind::Other, message, false))?,
        );
        *slot = Some(browser.clone());
        Ok(browser)
    }
}

/// One Chromium process; killed when dropped.
struct Browser {
    cdp: Cdp,
    _child: tokio::process::Child,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The profile holds many small files: removed off the async
        // runtime's threads when there is one.
        let profile = std::mem::take(&mut self.profile);
        let remove = move || {
            let _ = std::fs::remove_dir_all(profile);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

static PROFILES: AtomicU64 = AtomicU64::new(0);

impl Browser {
    async fn launch(config: &RenderConfig) -> Result<Self, String> {
        let chromium = find_chromium(config.chromium.as_deref())?;
        let profile = std::env::temp_dir().join(format!(
            "fanfare-chromium-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::Relaxed)
        ));
        // The pipe is the browser's file descriptors 3 (commands in) and 4
        // (answers out). A shell puts our stdin and stdout there, which
        // needs no unsafe code; the browser's own stdin and stdout are
        // /dev/null.
        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(&chromium)
            .args(launch_flags(&profile))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let started = std::time::Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| format!("could not start the browser {}: {e}", chromium.display()))?;
        let (Some(to_browser), Some(from_browser)) = (child.stdin.take(), child.stdout.take())
        else {
            return Err("the browser's pipes were not set up".into());
        };
        let cdp = Cdp::new(to_browser, from_browser);
        let version = tokio::time::timeout(
            LAUNCH_TIMEOUT,
            cdp.call(None, "Browser.getVersion", json!({})),
        )
        .await
        .map_err(|_| {
            format!(
                "the browser {} did not answer within {LAUNCH_TIMEOUT:?} of starting",
                chromium.display()
            )
        })?
        .map_err(|e| {
            format!(
                "the browser {} did not start ({e}); run it by hand with --headless to see why",
                chromium.display()
            )
        })?;
        tracing::info!(
            browser = %chromium.display(),
            product = version["product"].as_str().unwrap_or("?"),
            start_ms = started.elapsed().as_millis() as u64,
            "browser started"
        );
        Ok(Self {
            cdp,
            _child: child,
            profile,
        })
    }
}

/// Chromium's flags: headless, quiet, and no network of its own (see the
/// module's documentation).
fn launch_flags(profile: &Path) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--headless",
        "--remote-debugging-pipe",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--disable-breakpad",
        "--disable-domain-reliability",
        "--disable-features=Translate,MediaRouter,OptimizationHints,DnsOverHttps,\
         NetworkPrediction,InterestFeedContentSuggestions,AutofillServerCommunication",
        "--metrics-recording-only",
        "--mute-audio",
        "--hide-scrollbars",
        "--password-store=basic",
        "--use-mock-keychain",
        // No network of its own: nothing resolves, everything goes to a
        // proxy that does not exist (loopback included), no UDP for WebRTC.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://fanfare-no-network.invalid:9",
        "--proxy-bypass-list=<-loopback>",
        "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
        "--webrtc-ip-handling-policy=disable_non_proxied_udp",
        "--dns-prefetch-disable",
    ]
    .map(String::from)
    .to_vec();
    flags.push(format!("--user-data-dir={}", profile.display()));
    // Chromium's sandbox refuses to run as root, and Lambda offers no
    // namespaces for it.
    if running_as_root() || std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
        flags.push("--no-sandbox".into());
    }
    flags.push("about:blank".into());
    flags
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// One page's render.
struct Page<'a> {
    renderer: &'a Renderer,
    cdp: &'a Cdp,
    url: &'a Url,
    how: &'a RenderRequest,
    user_agent: &'a str,
    bound: Duration,
    /// The client that fetches through the page's proxy, if it has one.
    proxy: Option<&'a reqwest::Client>,
}

/// What a page's requests have done so far.
#[derive(Default)]
struct Progress {
    loaded: bool,
    /// The page's document answered (its last redirect hop's status).
    document_status: Option<u16>,
    /// Why the page's own document could not be fetched.
    document_error: Option<CrawlError>,
    /// The page's document as served (its last hop's body).
    document_body: Vec<u8>,
    open_requests: usize,
    last_activity: Option<Instant>,
    refused: Vec<String>,
}

impl Page<'_> {
    async fn render(&self) -> Result<Rendered, CrawlError> {
        let context = self
            .cdp
            .call(
                None,
                "Target.createBrowserContext",
                json!({ "disposeOnDetach": true }),
            )
            .await
            .map_err(|e| self.browser_error(&e))?;
        let context = context["browserContextId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let started = Instant::now();
        let result = tokio::time::timeout(self.bound, self.render_in(&context, started)).await;
        // Closes the page and drops everything it stored, whatever happened.
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.cdp.call(
                None,
                "Target.disposeBrowserContext",
                json!({ "browserContextId": context }),
            ),
        )
        .await;
        match result {
            Ok(rendered) => rendered,
            Err(_) => Err(self.timed_out()),
        }
    }

    fn timed_out(&self) -> CrawlError {
        let what = match &self.how.wait_for {
            Some(selector) => format!("wait_for {selector:?} matched nothing"),
            None => "the page did not finish loading".to_string(),
        };
        CrawlError::new(
            ErrorKind::Timeout,
            format!("{}: {what} within the render's {:?}", self.url, self.bound),
            true,
        )
    }

    fn status_error(&self, status: u16) -> CrawlError {
        let status =
            reqwest::StatusCode::from_u16(status).unwrap_or(reqwest::StatusCode::BAD_GATEWAY);
        crate::crawl::status_error(status, self.url)
    }

    fn browser_error(&self, message: &str) -> CrawlError {
        CrawlError::new(
            ErrorKind::Other,
            format!("{}: the browser failed: {message}", self.url),
            true,
        )
    }

    async fn render_in(&self, context: &str, started: Instant) -> Result<Rendered, CrawlError> {
        let target = self
            .cdp
            .call(
                None,
                "Target.createTarget",
                json!({ "url": "about:blank", "browserContextId": context }),
            )
            .await
            .map_err(|e| self.browser_error(&e))?;
        let target = target["targetId"].as_str().unwrap_or_default().to_string();
        let session = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await
            .map_err(|e| self.browser_error(&e))?;
        let session = session["sessionId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut events = self.cdp.events(&session);
        let result = self.drive(&session, &target, &mut events, started).await;
        self.cdp.forget(&session);
        result
    }

    async fn drive(
        &self,
        session: &str,
        main_frame: &str,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<cdp::Event>,
        started: Instant,
    ) -> Result<Rendered, CrawlError> {
        let call = |method: &'static str, params: Value| async move {
            self.cdp
                .call(Some(session), method, params)
                .await
                .map_err(|e| self.browser_error(&e))
        };
        call(
            "Fetch.enable",
            json!({ "patterns": [{ "urlPattern": "*", "requestStage": "Request" }] }),
        )
        .await?;
        call("Page.enable", json!({})).await?;
        call(
            "Emulation.setUserAgentOverride",
            json!({ "userAgent": self.user_agent }),
        )
        .await?;
        let wait_for = self.how.wait_for.as_deref().map(|selector| {
            let selector = serde_json::to_string(selector).unwrap_or_default();
            format!("(() => {{ try {{ return document.querySelector({selector}) !== null }} catch (e) {{ return false }} }})()")
        });
        let blocked: HashSet<&'static str> = self
            .how
            .block
            .iter()
            .copied()
            .map(cdp_resource_type)
            .collect();

        let progress = Arc::new(std::sync::Mutex::new(Progress::default()));
        let navigate = self.cdp.call(
            Some(session),
            "Page.navigate",
            json!({ "url": self.url.as_str() }),
        );
        tokio::pin!(navigate);
        let mut navigated = false;
        let mut tick = tokio::time::interval(WAIT_FOR_EVERY);
        loop {
            tokio::select! {
                answer = &mut navigate, if !navigated => {
                    navigated = true;
                    let answer = answer.map_err(|e| self.browser_error(&e))?;
                    if answer.get("errorText").and_then(Value::as_str).is_some() {
                        return Err(self.document_failed(&progress, &answer["errorText"]));
                    }
                }
                event = events.recv() => {
                    let Some(event) = event else {
                        return Err(self.browser_error("the browser exited during the render"));
                    };
                    match event.method.as_str() {
                        "Fetch.requestPaused" => {
                            self.on_request(session, main_frame, event.params, &blocked, &progress);
                        }
                        "Page.loadEventFired" => lock(&progress).loaded = true,
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    if let Some(error) = lock(&progress).document_error.take() {
                        return Err(error);
                    }
                    // A page that answered 404 or 500 is that answer, not
                    // a wait for a wait_for that will never match.
                    if let Some(status) = lock(&progress).document_status.filter(|s| *s >= 400) {
                        return Err(self.status_error(status));
                    }
                    let ready = match &wait_for {
                        Some(test) => navigated && self.evaluate(session, test).await? == Value::Bool(true),
                        None => {
                            let p = lock(&progress);
                            p.loaded && p.open_requests == 0
                                && p.last_activity.is_none_or(|at| at.elapsed() >= QUIET_AFTER_LOAD)
                        }
                    };
                    if ready {
                        break;
                    }
                }
            }
        }
        let html = self
            .evaluate(session, "document.documentElement.outerHTML")
            .await?;
        let Value::String(html) = html else {
            return Err(self.browser_error("the page has no document element"));
        };
        let progress = std::mem::take(&mut *lock(&progress));
        let http_status = progress.document_status.unwrap_or(200);
        if !(200..300).contains(&http_status) {
            return Err(self.status_error(http_status));
        }
        Ok(Rendered {
            http_status,
            html,
            render_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            refused: progress.refused,
            served: progress.document_body,
        })
    }

    /// The page's own document failed to load: the guard's or the fetch's
    /// error when it was ours, else the browser's reason.
    fn document_failed(&self, progress: &std::sync::Mutex<Progress>, reason: &Value) -> CrawlError {
        lock(progress).document_error.take().unwrap_or_else(|| {
            CrawlError::new(
                ErrorKind::Other,
                format!(
                    "{}: the browser could not open the page: {}",
                    self.url,
                    reason.as_str().unwrap_or("?")
                ),
                true,
            )
        })
    }

    async fn evaluate(&self, session: &str, expression: &str) -> Result<Value, CrawlError> {
        let answer = self
            .cdp
            .call(
                Some(session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await
            .map_err(|e| self.browser_error(&e))?;
        Ok(answer["result"]["value"].clone())
    }

    /// Answers one of the page's requests: refused (a blocked resource
    /// type, a URL that is not http(s), an address the guard refuses) or
    /// fetched by the crawler and handed to the browser. Runs on its own
    /// task, so slow requests do not hold up the others.
    fn on_request(
        &self,
        session: &str,
        main_frame: &str,
        params: Value,
        blocked: &HashSet<&'static str>,
        progress: &Arc<std::sync::Mutex<Progress>>,
    ) {
        let id = params["requestId"].as_str().unwrap_or_default().to_string();
        let kind = params["resourceType"].as_str().unwrap_or_default();
        let url = params["request"]["url"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let is_document = kind == "Document" && params["frameId"].as_str() == Some(main_frame);
        let fail = |reason: &str| {
            self.cdp.send(
                session,
                "Fetch.failRequest",
                json!({ "requestId": id, "errorReason": reason }),
            );
        };
        if blocked.contains(kind) {
            fail("BlockedByClient");
            return;
        }
        let parsed = match Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            _ => {
                lock(progress)
                    .refused
                    .push(format!("{url}: not an http(s) URL"));
                fail("BlockedByClient");
                return;
            }
        };
        if let Err(refusal) = self.renderer.config.net.check_url(&parsed) {
            self.refuse(progress, is_document, &url, &refusal);
            fail("BlockedByClient");
            return;
        }
        {
            let mut p = lock(progress);
            p.open_requests += 1;
            p.last_activity = Some(Instant::now());
        }
        let fetch = Fetch {
            client: self.proxy.unwrap_or(&self.renderer.client).clone(),
            through_proxy: self.proxy.map(|_| self.renderer.config.net.clone()),
            cdp_session: session.to_string(),
            max_body_bytes: self.renderer.config.max_body_bytes,
            user_agent: self.user_agent.to_string(),
            timeout: self.bound,
        };
        let progress = progress.clone();
        // The task needs the connection beyond this borrow: commands are
        // sent through a clone of its sender.
        let cdp = self.cdp.sender();
        let page_url = self.url.clone();
        tokio::spawn(async move {
            let answer = fetch.run(&parsed, &params).await;
            let mut p = lock(&progress);
            p.open_requests = p.open_requests.saturating_sub(1);
            p.last_activity = Some(Instant::now());
            match answer {
                Ok((status, command, body)) => {
                    if is_document {
                        p.document_status = Some(status);
                        p.document_body = body;
                    }
                    cdp.send(&fetch.cdp_session, "Fetch.fulfillRequest", command);
                }
                Err(FetchFailure::Blocked(blocked)) => {
                    p.refused.push(format!("{url}: {blocked}"));
                    if is_document {
                        let hop = p.document_status.is_some();
                        p.document_error = Some(crate::crawl::blocked(&blocked, hop));
                    }
                    cdp.send(
                        &fetch.cdp_session,
                        "Fetch.failRequest",
                        json!({ "requestId": id, "errorReason": "BlockedByClient" }),
                    );
                }
                Err(FetchFailure::Other(error)) => {
                    if is_document {
                        let mut error = error;
                        error.message = format!("{page_url}: {}", error.message);
                        p.document_error = Some(error);
                    }
                    cdp.send(
                        &fetch.cdp_session,
                        "Fetch.failRequest",
                        json!({ "requestId": id, "errorReason": "Failed" }),
                    );
                }
            }
        });
    }

    fn refuse(
        &self,
        progress: &std::sync::Mutex<Progress>,
        is_document: bool,
        url: &str,
        blocked: &netguard::Blocked,
    ) {
        let mut p = lock(progress);
        p.refused.push(format!("{url}: {blocked}"));
        if is_document {
            let hop = p.document_status.is_some();
            p.document_error = Some(crate::crawl::blocked(blocked, hop));
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The protocol's name of a resource type (`Network.ResourceType`).
fn cdp_resource_type(kind: ResourceType) -> &'static str {
    match kind {
        ResourceType::Image => "Image",
        ResourceType::Font => "Font",
        ResourceType::Media => "Media",
        ResourceType::Stylesheet => "Stylesheet",
    }
}

/// One of a page's requests, fetched by the crawler for the browser.
struct Fetch {
    client: reqwest::Client,
    /// With a proxy (which resolves the target itself), the policy the
    /// target is checked against before the request.
    through_proxy: Option<NetPolicy>,
    cdp_session: String,
    max_body_bytes: u64,
    user_agent: String,
    timeout: Duration,
}

enum FetchFailure {
    Blocked(netguard::Blocked),
    Other(CrawlError),
}

/// Request headers the crawler's client sets itself (or that would be
/// wrong on a hop it makes on its own).
const SKIPPED_REQUEST_HEADERS: [&str; 5] = [
    "host",
    "user-agent",
    "accept-encoding",
    "content-length",
    "connection",
];

/// Response headers that describe the body as it came over the wire, not
/// as it is handed to the browser (decoded, whole).
const SKIPPED_RESPONSE_HEADERS: [&str; 4] = [
    "content-encoding",
    "content-length",
    "transfer-encoding",
    "connection",
];

impl Fetch {
    /// Fetches the request `paused` describes; the status, the
    /// `Fetch.fulfillRequest` parameters that hand the answer over, and the
    /// body.
    async fn run(&self, url: &Url, paused: &Value) -> Result<(u16, Value, Vec<u8>), FetchFailure> {
        if let Some(net) = &self.through_proxy {
            net.check_target(url)
                .await
                .map_err(|refused| match refused {
                    netguard::TargetRefused::Blocked(blocked) => FetchFailure::Blocked(blocked),
                    netguard::TargetRefused::Unresolved { host, error } => {
                        FetchFailure::Other(CrawlError::new(
                            ErrorKind::Dns,
                            format!("{url}: {host} did not resolve: {error}"),
                            true,
                        ))
                    }
                })?;
        }
        let request = &paused["request"];
        let method = request["method"]
            .as_str()
            .and_then(|m| reqwest::Method::from_bytes(m.as_bytes()).ok())
            .unwrap_or(reqwest::Method::GET);
        let mut builder = self
            .client
            .request(method, url.clone())
            .header(reqwest::header::USER_AGENT, &self.user_agent);
        if let Some(headers) = request["headers"].as_object() {
            for (name, value) in headers {
                let lower = name.to_ascii_lowercase();
                if SKIPPED_REQUEST_HEADERS.contains(&lower.as_str()) {
                    continue;
                }
                if let Some(value) = value.as_str() {
                    builder = builder.header(name.as_str(), value);
                }
            }
        }
        if let Some(body) = request["postData"].as_str() {
            builder = builder.body(body.to_string());
        }
        let fetch = async {
            let mut response = builder.send().await.map_err(|e| self.failure(&e, url))?;
            let status = response.status().as_u16();
            let headers: Vec<Value> = response
                .headers()
                .iter()
                .filter(|(name, _)| !SKIPPED_RESPONSE_HEADERS.contains(&name.as_str()))
                .filter_map(|(name, value)| {
                    Some(json!({ "name": name.as_str(), "value": value.to_str().ok()? }))
                })
                .collect();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| self.failure(&e, url))? {
                if body.len() as u64 + chunk.len() as u64 > self.max_body_bytes {
                    return Err(FetchFailure::Other(CrawlError::new(
                        ErrorKind::TooLarge,
                        format!("{url} is larger than {} bytes", self.max_body_bytes),
                        false,
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((status, headers, body))
        };
        let (status, headers, body) =
            tokio::time::timeout(self.timeout, fetch)
                .await
                .map_err(|_| {
                    FetchFailure::Other(CrawlError::new(
                        ErrorKind::Timeout,
                        format!("{url} did not answer within {:?}", self.timeout),
                        true,
                    ))
                })??;
        let command = json!({
            "requestId": paused["requestId"],
            "responseCode": status,
            "responseHeaders": headers,
            "body": base64::engine::general_purpose::STANDARD.encode(&body),
        });
        Ok((status, command, body))
    }

    fn failure(&self, error: &reqwest::Error, url: &Url) -> FetchFailure {
        match netguard::find_blocked(error) {
            Some(blocked) => FetchFailure::Blocked(blocked.clone()),
            None => FetchFailure::Other(CrawlError::new(
                ErrorKind::Connect,
                format!("{url}: {}", crate::errors::chain_text(error)),
                true,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_browser_says_what_to_install() {
        let error = find_chromium(Some(Path::new("/nonexistent/chromium"))).unwrap_err();
        assert!(error.contains("/nonexistent/chromium"), "{error}");
        assert!(error.contains("apt-get install chromium"), "{error}");
        assert!(error.contains(ENV_CHROMIUM), "{error}");
    }

    fn config(chromium: Option<&str>) -> RenderConfig {
        RenderConfig {
            chromium: chromium.map(PathBuf::from),
            pages: 1,
            max_timeout: Duration::from_secs(30),
            user_agent: "fanfare-test".into(),
            max_body_bytes: 1 << 20,
            net: NetPolicy::closed(),
        }
    }

    /// Needs Chromium (Debian's `chromium`, as the render tests do).
    #[tokio::test]
    async fn a_browser_start_is_timed_and_stopped_and_a_missing_one_is_named() {
        let missing = Renderer::new(config(Some("/nonexistent/chromium"))).unwrap();
        let error = missing.start_browser().await.unwrap_err();
        assert!(error.contains("/nonexistent/chromium"), "{error}");
        let renderer = Renderer::new(config(None)).unwrap();
        let took = renderer.start_browser().await.expect("Chromium starts");
        assert!(
            took > Duration::ZERO && took < LAUNCH_TIMEOUT,
            "took {took:?}"
        );
        // The timed browser is not the renderer's shared one.
        assert!(renderer.browser.lock().await.is_none());
    }

    #[test]
    fn the_browser_gets_no_network_of_its_own() {
        let flags = launch_flags(Path::new("/tmp/profile"));
        for flag in [
            "--remote-debugging-pipe",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-bypass-list=<-loopback>",
            "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
        ] {
            assert!(
                flags.iter().any(|f| f == flag),
                "{flag} missing from {flags:?}"
            );
        }
        assert!(flags.iter().any(|f| f.starts_with("--proxy-server=")));
        assert!(!flags
            .iter()
            .any(|f| f.starts_with("--remote-debugging-port")));
    }
}
