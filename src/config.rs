//! Configuration: built-in defaults, then a TOML file, then
//! `FANFARE__SECTION__KEY` environment variables.
//!
//! Loading happens in two steps. The file is first read into plain "raw"
//! structs (unknown keys rejected, so a typo is named); then [`Settings`] is
//! built from them, collecting *every* problem with the schedule and key it
//! concerns, so one `check-config` lists all of them at once.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use fanfare_crawler::contract::{RenderRequest, ResourceType};
use fanfare_crawler::extract::check_field;
use fanfare_crawler::proxy::{ProxyOn, ProxyRoute, ProxyUrl};
use fanfare_crawler::{FieldSpec, FieldTable, ValueType};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::redact::SecretUrl;
use crate::schedule::{CronError, CronSchedule};

/// Every problem found in a configuration, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// HTTP server settings.
    pub server: ServerSettings,
    /// Postgres settings.
    pub database: DatabaseSettings,
    /// Secrets for task tokens and the admin API.
    pub security: SecuritySettings,
    /// How to reach the Lambda API.
    pub lambda: LambdaSettings,
    /// How notifications are delivered.
    pub notify: NotifySettings,
    /// The in-process crawler (`invoker = "local"`).
    pub local: LocalSettings,
    /// How long finished runs are kept, and how they are pruned.
    pub retention: RetentionSettings,
    /// The schedules, in file order.
    pub schedules: Vec<Schedule>,
}

/// HTTP server settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address to bind; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The base URL crawlers use to reach this service.
    pub public_url: Url,
    /// How long shutdown waits for in-flight work.
    pub shutdown_grace: Duration,
    /// A connection must deliver a request's headers within this.
    pub header_timeout: Duration,
    /// A request's body must arrive within this.
    pub body_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed
    /// (longer than the AWS load balancer's 60 s, so the balancer closes first).
    pub idle_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Console event streams (`/ui/runs/{id}/events`) open at once on
    /// this replica; more are answered 429.
    pub max_event_streams: usize,
    /// Console event streams one session may have open at once; more are
    /// answered 429.
    pub max_event_streams_per_session: usize,
    /// The load balancers and proxies in front of the daemon: a request
    /// from one of them is taken to come from the nearest address in its
    /// `X-Forwarded-For` that is not one of them (empty: the peer address
    /// is the client).
    pub trusted_proxies: Vec<IpNet>,
}

impl ServerSettings {
    /// The callback URL sent to crawlers.
    pub fn callback_url(&self) -> String {
        let mut base = self.public_url.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        format!("{base}v1/callbacks")
    }
}

/// Postgres settings.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// Connection URL; may carry a password, so it is secret.
    pub url: SecretString,
    /// Pool size of the daemon's own work: callbacks, dispatch, sweeps,
    /// cron fires, listing, notifications.
    pub max_connections: u32,
    /// Pool size of readers (exports, console pages, the API's run and
    /// page listings): a second pool, so that they never take a
    /// connection from the daemon's own work.
    pub reader_connections: u32,
}

/// Secrets for task tokens and the admin API.
#[derive(Debug, Clone)]
pub struct SecuritySettings {
    /// Key that signs task tokens (at least 32 bytes).
    pub callback_secret: SecretString,
    /// Bearer token for the admin API.
    pub admin_token: SecretString,
    /// Earlier callback secrets, still accepted when verifying task tokens
    /// (never used to sign), so rotating the secret refuses no crawler.
    pub previous_callback_secrets: Vec<SecretString>,
    /// How long after a page's deadline its token is still accepted.
    pub callback_grace: Duration,
    /// Let page-list fetches and in-process crawls reach loopback, private,
    /// link-local and other non-public addresses (off by default).
    pub allow_private_networks: bool,
    /// Wrong admin tokens a client may present (console sign-in and admin
    /// API together) before it is locked out.
    pub lockout_after_failures: u32,
    /// The first lockout; each wrong token after it doubles it.
    pub lockout_first: Duration,
    /// The longest lockout.
    pub lockout_max: Duration,
}

/// The in-process crawler.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// In-process crawls running at once in this daemon.
    pub concurrency: usize,
    /// Pages rendering in the daemon's browser at once.
    pub browsers: usize,
}

/// How to reach the Lambda API.
#[derive(Debug, Clone, Default)]
pub struct LambdaSettings {
    /// AWS region; the default provider chain decides when unset.
    pub region: Option<String>,
    /// A Lambda-compatible endpoint (a local emulator), instead of AWS's.
    pub endpoint_url: Option<Url>,
    /// Timeout of one Invoke call.
    pub invoke_timeout: Duration,
}

/// How notifications are delivered.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// Keep retrying an undelivered notification for this long.
    pub retry_for: Duration,
    /// Timeout of one delivery attempt.
    pub timeout: Duration,
}

/// `[retention]`: how long finished runs are kept, and how the pruner
/// deletes them (docs/operations.md, "Retention").
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Finished runs older than this are deleted (a schedule's own
    /// `keep_runs_for` wins).
    pub keep_runs_for: Duration,
    /// How often each replica's pruner makes a pass.
    pub prune_every: Duration,
    /// Rows (pages, page changes) deleted per transaction.
    pub batch_rows: u32,
}

/// The default of `[retention] keep_runs_for`: 90 days.
pub const DEFAULT_KEEP_RUNS_FOR: Duration = Duration::from_secs(90 * 24 * 3600);
/// The largest `[retention] batch_rows`: a transaction deleting more holds
/// its locks and its WAL for longer than a report should wait.
pub const MAX_PRUNE_BATCH_ROWS: u32 = 100_000;

impl Settings {
    /// How long the runs of `schedule` are kept: its own `keep_runs_for`,
    /// else `[retention] keep_runs_for`.
    pub fn keep_runs_for(&self, schedule: &str) -> Duration {
        self.schedule(schedule)
            .and_then(|s| s.keep_runs_for)
            .unwrap_or(self.retention.keep_runs_for)
    }
}

/// A value that is none of the words its key accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} must be {}", one_of(.allowed))]
pub struct NotOneOf {
    /// The value given.
    pub given: String,
    /// The words accepted, in the order the message lists them.
    pub allowed: &'static [&'static str],
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
fn one_of(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// Gives a fieldless enum its configuration words: `as_str` and `Display`
/// write a value's word, `FromStr` reads one back (a [`NotOneOf`] lists
/// them all), so each word is written once, beside its variant.
macro_rules! words {
    ($ty:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            /// The word that names the value in the configuration.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $word,)+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NotOneOf;

            fn from_str(s: &str) -> Result<Self, NotOneOf> {
                match s {
                    $($word => Ok($ty::$variant),)+
                    _ => Err(NotOneOf {
                        given: s.to_string(),
                        allowed: &[$($word),+],
                    }),
                }
            }
        }
    };
}

/// Where a schedule's crawls run (`"lambda"` or `"local"` in the API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Invoker)]
#[serde(rename_all = "snake_case")]
pub enum InvokerKind {
    /// AWS Lambda, InvocationType `Event` (the default).
    #[default]
    Lambda,
    /// The crawler library, in-process (development and tests).
    Local,
}

words!(InvokerKind {
    Lambda => "lambda",
    Local => "local",
});

/// Whether a schedule's pages are rendered in a browser.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RenderMode {
    /// Never: the HTML as served (the default).
    #[default]
    Never,
    /// Every page.
    Always,
    /// A page whose plain fetch looks unrendered is sent on to the browser;
    /// a host that needed it `render_after` times goes straight there.
    Auto,
}

words!(RenderMode {
    Never => "never",
    Always => "always",
    Auto => "auto",
});

/// A schedule's `render_timeout` when it sets none.
pub const DEFAULT_RENDER_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest `render_timeout`.
pub const MAX_RENDER_TIMEOUT: Duration = Duration::from_secs(60);
/// A schedule's `render_after` when it sets none.
pub const DEFAULT_RENDER_AFTER: u32 = 3;
/// A schedule's `block` when it sets none.
pub const DEFAULT_BLOCK: [ResourceType; 3] =
    [ResourceType::Image, ResourceType::Font, ResourceType::Media];

/// How a schedule's pages are rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderSettings {
    /// Never, always, or when the plain fetch looks unrendered.
    pub mode: RenderMode,
    /// The page counts as rendered once this CSS selector matches.
    pub wait_for: Option<String>,
    /// Resource types the browser does not fetch.
    pub block: Vec<ResourceType>,
    /// The most time one render may take.
    pub timeout: Duration,
    /// The Lambda function that renders (for `invoker = "lambda"`).
    pub browser_function: Option<String>,
    /// With `auto`: after this many of a host's pages in a run needed the
    /// browser, its other pages go straight to it.
    pub render_after: u32,
}

impl Default for RenderSettings {
    fn default() -> Self {
        Self {
            mode: RenderMode::Never,
            wait_for: None,
            block: DEFAULT_BLOCK.to_vec(),
            timeout: DEFAULT_RENDER_TIMEOUT,
            browser_function: None,
            render_after: DEFAULT_RENDER_AFTER,
        }
    }
}

impl RenderSettings {
    /// The event's `render` for a page that goes to the browser.
    pub fn request(&self) -> RenderRequest {
        RenderRequest {
            wait_for: self.wait_for.clone(),
            block: self.block.clone(),
            timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Where a run's page list comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum PageSource {
    /// A fixed list of URLs.
    Urls(Vec<String>),
    /// A sitemap (sitemaps.org) URL.
    Sitemap(Url),
    /// A URL answering with a JSON array of URLs.
    Http(Url),
    /// A lister Lambda function, invoked synchronously with `payload`.
    Lambda {
        /// Function name or ARN.
        function: String,
        /// The event sent to it.
        payload: serde_json::Value,
    },
}

/// How many links the crawler reports per page, at most (the request's
/// `links.max`).
pub const MAX_LINKS_PER_PAGE: u32 = 1000;
/// A crawl's `max_depth` when it sets none.
pub const DEFAULT_MAX_DEPTH: u32 = 3;
/// The deepest `max_depth` accepted.
pub const MAX_DEPTH_LIMIT: u32 = 100;
/// Patterns in one `include` or `exclude` list, at most.
const MAX_PATTERNS: usize = 100;
/// The longest pattern accepted, in bytes.
const MAX_PATTERN_BYTES: usize = 1024;

/// How a run grows by following the links of its pages (`pages = { crawl =
/// ... }`, or another source with `follow_links = true`).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkRules {
    /// Links are followed from pages up to this depth: the listed (start)
    /// pages are depth 0, a page they link to depth 1, and so on.
    pub max_depth: u32,
    /// A followed URL must match one of these (any URL when empty).
    pub include: Vec<UrlGlob>,
    /// A followed URL must match none of these.
    pub exclude: Vec<UrlGlob>,
    /// Only links to the host of the page they are on are followed; when
    /// false, links to any host the run already crawls (whose robots.txt
    /// it has read) are.
    pub same_host: bool,
    /// Links marked `rel="nofollow"` are not followed.
    pub obey_nofollow: bool,
}

impl LinkRules {
    /// Whether `url` passes `include` and `exclude`.
    pub fn admits(&self, url: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.matches(url)))
            && !self.exclude.iter().any(|g| g.matches(url))
    }
}

/// A URL pattern of `include` / `exclude`: a glob matched against the
/// whole URL (as the crawler reports it: scheme and host lowercased, no
/// fragment), where `*` stands for any run of characters, `/` included,
/// and every other character for itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlGlob(String);

impl UrlGlob {
    /// A pattern; empty, or longer than 1024 bytes, is refused.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("an empty pattern matches nothing; leave it out".into());
        }
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(format!("is longer than {MAX_PATTERN_BYTES} bytes"));
        }
        Ok(Self(pattern.to_string()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the whole of `url` matches. Linear in the URL per star
    /// (the classic backtrack to the last `*`), never exponential.
    pub fn matches(&self, url: &str) -> bool {
        let (p, u) = (self.0.as_bytes(), url.as_bytes());
        let (mut i, mut j) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while j < u.len() {
            if i < p.len() && p[i] == b'*' {
                star = Some((i, j));
                i += 1;
            } else if i < p.len() && p[i] == u[j] {
                i += 1;
                j += 1;
            } else if let Some((si, sj)) = star {
                i = si + 1;
                j = sj + 1;
                star = Some((si, sj + 1));
            } else {
                return false;
            }
        }
        p[i..].iter().all(|&c| c == b'*')
    }
}

/// One notification target.
#[derive(Debug, Clone)]
pub enum NotifyTarget {
    /// A Standard Webhooks endpoint.
    Webhook {
        /// Where to POST; held as a secret (its path or query often carries
        /// a token), so it shows in no `Debug` output, log line or stored
        /// error.
        url: SecretUrl,
        /// `whsec_<base64 key>`; the decoded key signs each delivery.
        secret: SecretString,
        /// The secret being rotated out: while it is set, each delivery
        /// carries a second signature under it, so a receiver still
        /// verifying with the old key accepts the delivery.
        previous_secret: Option<SecretString>,
    },
    /// A Slack incoming webhook.
    Slack {
        /// The incoming-webhook URL (itself a secret).
        url: SecretString,
    },
    /// A line on standard output (used by `fanfare dev`).
    Stdout,
}

/// What kind of target a [`NotifyTarget`] is; its word is stored in the
/// outbox and labels the notification metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyKind {
    /// [`NotifyTarget::Webhook`].
    Webhook,
    /// [`NotifyTarget::Slack`].
    Slack,
    /// [`NotifyTarget::Stdout`].
    Stdout,
}

words!(NotifyKind {
    Webhook => "webhook",
    Slack => "slack",
    Stdout => "stdout",
});

/// Which finished runs a notify target is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NotifyWhen {
    /// Every finished run (the default).
    #[default]
    Always,
    /// Only runs in which a page is new, changed or gone since the previous
    /// run (decided when the run finishes; `run.stuck` is sent regardless).
    Changes,
}

words!(NotifyWhen {
    Always => "always",
    Changes => "changes",
});

/// One entry of a schedule's `notify` list: where, and for which runs.
#[derive(Debug, Clone)]
pub struct Notify {
    /// Where the notification goes.
    pub target: NotifyTarget,
    /// Which finished runs it is sent.
    pub when: NotifyWhen,
}

/// What makes a page `changed` since the previous run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compare {
    /// Its title or an extracted field differs (the default).
    #[default]
    Fields,
    /// Its body's SHA-256 differs.
    Content,
}

words!(Compare {
    Fields => "fields",
    Content => "content",
});

impl NotifyTarget {
    /// The target's kind (its word is stored in the outbox).
    pub fn kind(&self) -> NotifyKind {
        match self {
            NotifyTarget::Webhook { .. } => NotifyKind::Webhook,
            NotifyTarget::Slack { .. } => NotifyKind::Slack,
            NotifyTarget::Stdout => NotifyKind::Stdout,
        }
    }
}

/// What to do with fires missed while no replica was running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Catchup {
    /// Skip them (counted in `fanfare_fires_missed_total`).
    Skip,
    /// Run the latest one inside the window (the default).
    #[default]
    Once,
    /// Run every one inside the window.
    All,
}

words!(Catchup {
    Skip => "skip",
    Once => "once",
    All => "all",
});

/// What to do with a fire that comes while the schedule's previous run is
/// unfinished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overlap {
    /// Skip the fire (counted and logged; the default).
    #[default]
    Skip,
    /// Start it anyway.
    Allow,
    /// Keep the latest such fire and start it when the running run finishes.
    BufferOne,
    /// Cancel the unfinished runs, then start it.
    CancelPrevious,
}

words!(Overlap {
    Skip => "skip",
    Allow => "allow",
    BufferOne => "buffer_one",
    CancelPrevious => "cancel_previous",
});

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Unique name; part of every run's identity.
    pub name: String,
    /// When it fires; `None` for a schedule that only runs when triggered.
    pub cron: Option<CronSchedule>,
    /// Where its crawls run.
    pub invoker: InvokerKind,
    /// The crawler function (name or ARN) for the Lambda invoker.
    pub function: Option<String>,
    /// Where its page list comes from (for a crawl, its start URLs).
    pub pages: PageSource,
    /// How its runs follow links, when they do.
    pub links: Option<LinkRules>,
    /// Field name -> how it is extracted: a CSS selector, or a table
    /// (`css`/`meta`/`jsonld`, `attr`, `all`, `type`, `regex`), each
    /// checked by the crawler's own rules.
    pub extract: BTreeMap<String, FieldSpec>,
    /// How long one attempt of a page may take before it is retried.
    pub page_timeout: Duration,
    /// Dispatches of one page at most.
    pub max_attempts: u32,
    /// Pages of this schedule dispatched and unreported at once, at most.
    pub max_in_flight: u32,
    /// Invokes per second at most (token bucket); unlimited when unset.
    pub max_invokes_per_second: Option<u32>,
    /// Pages of one host dispatched and unreported at once, at most
    /// (across runs and replicas; the strictest schedule crawling a host
    /// holds for it).
    pub per_host_in_flight: u32,
    /// The least time between two dispatches to one host (from
    /// `per_host_rate`); none when unset.
    pub per_host_interval: Duration,
    /// Fetch each host's robots.txt at listing and leave out what it
    /// disallows; its `Crawl-delay` paces the host.
    pub obey_robots: bool,
    /// The `User-Agent` the crawler sends (and robots.txt is matched for);
    /// the crawler's own when unset.
    pub user_agent: Option<String>,
    /// The forward proxy the crawler fetches pages through; directly when
    /// unset.
    pub proxy: Option<ScheduleProxy>,
    /// Whether and how pages are rendered in a browser.
    pub render: RenderSettings,
    /// The most pages one run may list; a longer list fails the run.
    pub max_pages: usize,
    /// The largest page-list document (after decompression) read.
    pub max_document_bytes: usize,
    /// Child sitemaps of an index may be on another host than the root
    /// sitemap (sitemaps.org only allows the same host).
    pub sitemap_any_host: bool,
    /// Past this, a run's open pages time out and the run finishes.
    pub run_timeout: Duration,
    /// How many failed or timed-out pages still make the run `succeeded`.
    pub tolerated_failures: Tolerance,
    /// A run with no progress for this long is reported stuck (once).
    pub stuck_after: Duration,
    /// What to do with fires missed while no replica was running.
    pub catchup: Catchup,
    /// Missed fires older than this are skipped (and counted).
    pub catchup_window: Duration,
    /// What to do with a fire while the previous run is unfinished.
    pub overlap: Overlap,
    /// What makes a page `changed` since the previous run.
    pub compare: Compare,
    /// Fetch a page conditionally (`If-None-Match` / `If-Modified-Since`
    /// with the validators of the previous run's fetch), keeping the
    /// previous run's facts when the site answers `304 Not Modified`.
    /// Pages rendered in a browser and runs that follow links are always
    /// fetched in full.
    pub conditional: bool,
    /// Where the run's notification goes.
    pub notify: Vec<Notify>,
    /// How long its finished runs are kept, when not `[retention]
    /// keep_runs_for`.
    pub keep_runs_for: Option<Duration>,
}

/// Which proxy a schedule's pages go through.
#[derive(Debug, Clone, PartialEq)]
pub enum ProxyVia {
    /// The crawler's own (`proxy = "crawler"`: its
    /// `FANFARE_CRAWLER_PROXY_URL`), so the event carries no credentials.
    Crawler,
    /// These proxies, one per page in turn (never empty). `Debug` hides
    /// their passwords.
    Urls(Vec<ProxyUrl>),
}

/// A schedule's `proxy` and `proxy_on`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleProxy {
    /// Which proxy.
    pub via: ProxyVia,
    /// Always, or only after the site refused the direct fetch.
    pub on: ProxyOn,
}

impl ScheduleProxy {
    /// The event's `proxy` for one attempt of one page. With several
    /// proxies, page `id`'s attempt `attempt` goes through proxy
    /// `(id + attempt - 1) mod n`: pages in turn, and each retry of a page
    /// through the next proxy.
    pub fn route(&self, page_id: i64, attempt: i32) -> ProxyRoute {
        let url = match &self.via {
            ProxyVia::Crawler => None,
            ProxyVia::Urls(urls) if urls.is_empty() => None,
            ProxyVia::Urls(urls) => {
                let turn =
                    (i128::from(page_id) + i128::from(attempt) - 1).rem_euclid(urls.len() as i128);
                urls.get(turn as usize).cloned()
            }
        };
        ProxyRoute { url, on: self.on }
    }
}

/// The words of `proxy_on`.
const PROXY_ON_WORDS: &[&str] = &["always", "blocked"];

/// The environment variable whose value, when set, is the whole
/// configuration file's text: it takes the place of the file.
pub const CONFIG_TOML_ENV: &str = "FANFARE_CONFIG_TOML";

impl Settings {
    /// The schedule called `name`.
    pub fn schedule(&self, name: &str) -> Option<&Schedule> {
        self.schedules.iter().find(|s| s.name == name)
    }

    /// Reads `path` (when given) over the built-in defaults, then the
    /// `FANFARE__…` environment, and validates the result.
    ///
    /// When the environment variable [`CONFIG_TOML_ENV`] is set (to the text
    /// of a configuration file, e.g. from one Secrets Manager secret), that
    /// text takes the place of the file and `path` is not read.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        if let Some(text) = std::env::var_os(CONFIG_TOML_ENV) {
            let text = text
                .into_string()
                .map_err(|_| ConfigError(vec![format!("{CONFIG_TOML_ENV}: is not valid UTF-8")]))?;
            return Self::from_builder(
                config::Config::builder()
                    .add_source(config::File::from_str(&text, config::FileFormat::Toml)),
            );
        }
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError(vec![format!(
                    "config file {} does not exist",
                    path.display()
                )]));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        Self::from_builder(builder)
    }

    /// Parses TOML text (then the environment) and validates it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_builder(
            config::Config::builder()
                .add_source(config::File::from_str(text, config::FileFormat::Toml)),
        )
    }

    fn from_builder(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = builder
            .add_source(
                config::Environment::with_prefix("FANFARE")
                    .prefix_separator("__")
                    .separator("__"),
            )
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(vec![e.to_string()]))?;
        raw.validate()
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    security: RawSecurity,
    #[serde(default)]
    lambda: RawLambda,
    #[serde(default)]
    notify: RawNotify,
    #[serde(default)]
    local: RawLocal,
    #[serde(default)]
    politeness: RawPoliteness,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    schedules: Vec<RawSchedule>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_runs_for: Option<String>,
    prune_every: Option<String>,
    batch_rows: Option<u32>,
}

/// `[politeness]`: defaults of the per-host keys for every schedule that
/// does not set them itself.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawPoliteness {
    per_host_in_flight: Option<u32>,
    per_host_rate: Option<String>,
    obey_robots: Option<bool>,
    user_agent: Option<String>,
    proxy: Option<RawProxy>,
    proxy_on: Option<String>,
}

/// A `proxy` key: one string (a URL, `"crawler"` or `"none"`) or a list of
/// URLs. Held as secrets: the URLs carry credentials.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
enum RawProxy {
    One(SecretString),
    List(Vec<SecretString>),
}

/// A `proxy` key, checked.
enum ProxyChoice {
    /// `"none"`: fetch directly, whatever `[politeness]` says.
    Direct,
    /// Through a proxy.
    Via(ProxyVia),
}

/// The `proxy` key at `at`; `None` (with a problem) when it is unusable.
fn proxy_choice(p: &mut Problems, at: &str, raw: &RawProxy) -> Option<ProxyChoice> {
    // A problem never quotes the value: it carries credentials.
    let url = |p: &mut Problems, at: &str, raw: &str| match ProxyUrl::parse(raw) {
        Ok(u) => Some(u),
        Err(e) => {
            p.add(at, e);
            None
        }
    };
    match raw {
        RawProxy::One(one) => match one.expose_secret().trim() {
            "crawler" => Some(ProxyChoice::Via(ProxyVia::Crawler)),
            "none" => Some(ProxyChoice::Direct),
            text => url(p, at, text).map(|u| ProxyChoice::Via(ProxyVia::Urls(vec![u]))),
        },
        RawProxy::List(list) if list.is_empty() => {
            p.add(at, "must name at least one proxy (or be \"none\")");
            None
        }
        RawProxy::List(list) => {
            let mut urls = Vec::new();
            for (i, one) in list.iter().enumerate() {
                let at = format!("{at}[{i}]");
                match one.expose_secret().trim() {
                    word @ ("crawler" | "none") => {
                        p.add(&at, format!("{word:?} stands alone, not in a list"));
                    }
                    text => urls.extend(url(p, &at, text)),
                }
            }
            (urls.len() == list.len()).then_some(ProxyChoice::Via(ProxyVia::Urls(urls)))
        }
    }
}

/// The `proxy_on` word at `at`; a problem, and `always`, when unknown.
fn proxy_on(p: &mut Problems, at: &str, raw: Option<&str>) -> ProxyOn {
    match raw.map(str::trim) {
        None | Some("always") => ProxyOn::Always,
        Some("blocked") => ProxyOn::Blocked,
        Some(other) => {
            p.add(
                at,
                NotOneOf {
                    given: other.to_string(),
                    allowed: PROXY_ON_WORDS,
                },
            );
            ProxyOn::Always
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    public_url: Option<String>,
    shutdown_grace: Option<String>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    max_event_streams: Option<usize>,
    max_event_streams_per_session: Option<usize>,
    trusted_proxies: Option<AddressList>,
}

/// A list of addresses or CIDR blocks: a TOML array, or one string of
/// comma-separated entries (as an environment variable gives it).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AddressList {
    List(Vec<String>),
    Text(String),
}

impl AddressList {
    fn entries(&self) -> Vec<String> {
        match self {
            AddressList::List(list) => list.iter().map(|e| e.trim().to_string()).collect(),
            AddressList::Text(text) => text
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<SecretString>,
    max_connections: Option<u32>,
    reader_connections: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    callback_secret: Option<SecretString>,
    admin_token: Option<SecretString>,
    #[serde(default)]
    previous_callback_secrets: Vec<SecretString>,
    callback_grace: Option<String>,
    allow_private_networks: Option<bool>,
    lockout_after_failures: Option<u32>,
    lockout_first: Option<String>,
    lockout_max: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    concurrency: Option<usize>,
    browsers: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLambda {
    region: Option<String>,
    endpoint_url: Option<String>,
    invoke_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    retry_for: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    name: Option<String>,
    cron: Option<String>,
    timezone: Option<String>,
    invoker: Option<String>,
    function: Option<String>,
    pages: Option<RawPages>,
    /// Read as plain values, so that a table's mistakes are named here
    /// (its key, its word) rather than by the deserializer.
    #[serde(default)]
    extract: BTreeMap<String, serde_json::Value>,
    page_timeout: Option<String>,
    max_attempts: Option<u32>,
    max_in_flight: Option<u32>,
    max_invokes_per_second: Option<u32>,
    per_host_in_flight: Option<u32>,
    per_host_rate: Option<String>,
    obey_robots: Option<bool>,
    user_agent: Option<String>,
    proxy: Option<RawProxy>,
    proxy_on: Option<String>,
    conditional: Option<bool>,
    render: Option<String>,
    wait_for: Option<String>,
    block: Option<Vec<String>>,
    render_timeout: Option<String>,
    browser_function: Option<String>,
    render_after: Option<u32>,
    max_pages: Option<usize>,
    max_document_bytes: Option<usize>,
    sitemap_any_host: Option<bool>,
    run_timeout: Option<String>,
    tolerated_failures: Option<RawTolerance>,
    stuck_after: Option<String>,
    catchup: Option<String>,
    catchup_window: Option<String>,
    overlap: Option<String>,
    compare: Option<String>,
    keep_runs_for: Option<String>,
    #[serde(default)]
    notify: Vec<RawNotifyTarget>,
}

/// How many failed pages a run may have and still be `succeeded`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// At most this many failed or timed-out pages.
    Count(i64),
    /// At most this percentage of the run's pages.
    Percent(f64),
}

/// A schedule's `per_host_in_flight` when it sets none (Scrapy's
/// `CONCURRENT_REQUESTS_PER_DOMAIN`).
pub const DEFAULT_PER_HOST_IN_FLIGHT: u32 = 8;

/// The crawler's robots.txt product token when a schedule sets no
/// `user_agent` (the crawler's own agent starts with it).
pub const DEFAULT_ROBOTS_AGENT: &str = "fanfare-crawler";

impl Schedule {
    /// The product token robots.txt is matched for: the `user_agent` up to
    /// its first `/` or space (`acme-bot/2.1 (+https://…)` is `acme-bot`).
    pub fn robots_agent(&self) -> &str {
        match self.user_agent.as_deref() {
            Some(agent) => agent
                .split(['/', ' '])
                .next()
                .filter(|t| !t.is_empty())
                .unwrap_or(DEFAULT_ROBOTS_AGENT),
            None => DEFAULT_ROBOTS_AGENT,
        }
    }
}

/// The interval of a rate such as `"5/s"`, `"30/min"`, `"0.5/s"` or
/// `"100/h"`: the least time between two dispatches.
fn rate_interval(rate: &str) -> Result<Duration, String> {
    let bad = || format!("{rate:?} must look like \"5/s\", \"30/min\" or \"100/h\"");
    let (count, per) = rate.split_once('/').ok_or_else(bad)?;
    let count: f64 = count.trim().parse().map_err(|_| bad())?;
    let per = match per.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return Err(bad()),
    };
    if !(count.is_finite() && count > 0.0) {
        return Err(format!("{rate:?}: the count must be above 0"));
    }
    Ok(Duration::from_secs_f64(per / count))
}

/// A `User-Agent` a schedule may set: printable ASCII, at most 200 bytes.
fn user_agent_ok(agent: &str) -> Result<(), String> {
    if agent.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if agent.len() > 200 {
        return Err("must be at most 200 bytes".into());
    }
    if !agent.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!("{agent:?} must be printable ASCII"));
    }
    Ok(())
}

/// Decodes a `whsec_<base64>` webhook secret into the HMAC key.
pub fn webhook_key(secret: &SecretString) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let s = secret.expose_secret();
    let b64 = s
        .strip_prefix("whsec_")
        .ok_or("must start with \"whsec_\"")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the part after \"whsec_\" is not base64 ({e})"))?;
    if key.len() < 16 {
        return Err("the decoded key must be at least 16 bytes".into());
    }
    Ok(key)
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawTolerance {
    Count(i64),
    Text(String),
}

fn tolerance(p: &mut Problems, at: &str, raw: Option<&RawTolerance>) -> Tolerance {
    let bad = |p: &mut Problems, v: &str| {
        p.add(
            at,
            format!("{v:?} must be a count (\"5\") or a percentage (\"2%\")"),
        );
        Tolerance::Count(0)
    };
    match raw {
        None => Tolerance::Count(0),
        Some(&RawTolerance::Count(n)) if n >= 0 => Tolerance::Count(n),
        Some(&RawTolerance::Count(n)) => bad(p, &n.to_string()),
        Some(RawTolerance::Text(t)) => {
            let text = t.trim();
            if let Some(pct) = text.strip_suffix('%') {
                match pct.trim().parse::<f64>() {
                    Ok(v) if (0.0..=100.0).contains(&v) => Tolerance::Percent(v),
                    _ => bad(p, t),
                }
            } else {
                match text.parse::<i64>() {
                    Ok(n) if n >= 0 => Tolerance::Count(n),
                    _ => bad(p, t),
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPages {
    urls: Option<Vec<String>>,
    crawl: Option<RawStartUrls>,
    follow_links: Option<bool>,
    max_depth: Option<u32>,
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    same_host: Option<bool>,
    obey_nofollow: Option<bool>,
    sitemap: Option<String>,
    http: Option<String>,
    lambda: Option<String>,
    payload: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotifyTarget {
    webhook: Option<RawWebhook>,
    slack: Option<RawSlack>,
    stdout: Option<RawStdout>,
    when: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: SecretString,
    secret: SecretString,
    previous_secret: Option<SecretString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlack {
    url: SecretString,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStdout {}

/// Collects problems; each is prefixed with where it was found.
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, at: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("{at}: {msg}"));
    }

    /// The duration at `at`, `default` when unset (see [`duration`]).
    fn duration(&mut self, at: &str, raw: Option<&str>, default: Duration) -> Duration {
        duration(self, at, raw, default)
    }

    /// `value`, with a problem at `at` when it is zero.
    fn at_least_one<T: Copy + Default + PartialEq>(&mut self, at: &str, value: T) -> T {
        if value == T::default() {
            self.add(at, "must be at least 1");
        }
        value
    }

    /// The word at `at` read as `T`, its default when unset; a word `T`
    /// does not know is a problem, and `fallback` stands in for it.
    fn word<T: FromStr<Err = NotOneOf> + Default>(
        &mut self,
        at: &str,
        raw: Option<&str>,
        fallback: T,
    ) -> T {
        match raw.map(str::parse) {
            None => T::default(),
            Some(Ok(value)) => value,
            Some(Err(e)) => {
                self.add(at, e);
                fallback
            }
        }
    }
}

fn duration(p: &mut Problems, at: &str, raw: Option<&str>, default: Duration) -> Duration {
    match raw {
        None => default,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                p.add(at, format!("{s:?} must be longer than zero"));
                default
            }
            Err(e) => {
                p.add(
                    at,
                    format!("{s:?} is not a duration ({e}); write e.g. \"30s\", \"5m\", \"2h\""),
                );
                default
            }
        },
    }
}

fn http_url(p: &mut Problems, at: &str, raw: &str) -> Option<Url> {
    match Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
        Ok(_) => {
            p.add(at, format!("{raw:?} must be an http or https URL"));
            None
        }
        Err(e) => {
            p.add(at, format!("{raw:?} is not a URL ({e})"));
            None
        }
    }
}

/// [`http_url`] for a URL that is a secret (webhook and Slack endpoints):
/// a problem names the key and what is wrong, never the URL.
fn secret_http_url(p: &mut Problems, at: &str, raw: &str) -> Option<Url> {
    match Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
        Ok(_) => {
            p.add(at, "must be an http or https URL");
            None
        }
        Err(e) => {
            p.add(at, format!("is not a URL ({e})"));
            None
        }
    }
}

const PLACEHOLDER_URL: &str = "http://invalid.invalid/";

/// The default of a schedule's `max_pages`.
pub const DEFAULT_MAX_PAGES: usize = 1_000_000;
/// The default of a schedule's `max_document_bytes`: 50 MiB, the
/// sitemaps.org limit of one sitemap file.
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 50 * 1024 * 1024;
/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

impl RawConfig {
    fn validate(self) -> Result<Settings, ConfigError> {
        let mut p = Problems(Vec::new());
        let server = self.server.validate(&mut p);
        let database = self.database.validate(&mut p);
        let security = self.security.validate(&mut p);
        let local = self.local.validate(&mut p);
        let lambda = self.lambda.validate(&mut p);
        let notify = self.notify.validate(&mut p);
        let retention = self.retention.validate(&mut p);
        let schedules = self.politeness.validate_schedules(self.schedules, &mut p);
        if !p.0.is_empty() {
            return Err(ConfigError(p.0));
        }
        Ok(Settings {
            server,
            database,
            security,
            lambda,
            notify,
            local,
            retention,
            schedules,
        })
    }
}

impl RawServer {
    fn validate(self, p: &mut Problems) -> ServerSettings {
        let listen = self.listen.as_deref().unwrap_or("0.0.0.0:8080");
        let listen: SocketAddr = listen.parse().unwrap_or_else(|_| {
            p.add(
                "server.listen",
                format!("{listen:?} is not an address such as \"0.0.0.0:8080\""),
            );
            SocketAddr::from(([0, 0, 0, 0], 8080))
        });
        let public_url = match self.public_url.as_deref() {
            Some(u) => http_url(p, "server.public_url", u),
            None => {
                p.add(
                    "server.public_url",
                    "is required: the base URL crawlers call back to",
                );
                None
            }
        }
        .unwrap_or_else(|| Url::parse(PLACEHOLDER_URL).expect("static URL"));
        // Problems are listed in the order the fields are read here.
        let [shutdown_grace, header_timeout, body_timeout, idle_timeout] = [
            ("shutdown_grace", &self.shutdown_grace, 20),
            ("header_timeout", &self.header_timeout, 10),
            ("body_timeout", &self.body_timeout, 30),
            ("idle_timeout", &self.idle_timeout, 75),
        ]
        .map(|(key, raw, secs)| {
            p.duration(
                &format!("server.{key}"),
                raw.as_deref(),
                Duration::from_secs(secs),
            )
        });
        let [max_connections, max_event_streams, max_event_streams_per_session] = [
            ("max_connections", self.max_connections, 4096),
            ("max_event_streams", self.max_event_streams, 256),
            (
                "max_event_streams_per_session",
                self.max_event_streams_per_session,
                8,
            ),
        ]
        .map(|(key, raw, default)| {
            p.at_least_one(&format!("server.{key}"), raw.unwrap_or(default))
        });
        ServerSettings {
            listen,
            public_url,
            shutdown_grace,
            header_timeout,
            body_timeout,
            idle_timeout,
            max_connections,
            max_event_streams,
            max_event_streams_per_session,
            trusted_proxies: trusted_proxies(p, self.trusted_proxies.as_ref()),
        }
    }
}

/// `server.trusted_proxies` as networks (an address is its own /32 or /128).
fn trusted_proxies(p: &mut Problems, raw: Option<&AddressList>) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for entry in raw.map(AddressList::entries).unwrap_or_default() {
        let parsed = entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => nets.push(net.trunc()),
            Err(_) => p.add(
                "server.trusted_proxies",
                format!("{entry:?} is not an address or a CIDR block such as \"10.0.0.0/16\""),
            ),
        }
    }
    nets
}

impl RawDatabase {
    fn validate(self, p: &mut Problems) -> DatabaseSettings {
        let url = self.url.unwrap_or_else(|| {
            p.add("database.url", "is required (postgres://user:pass@host/db)");
            SecretString::from("")
        });
        let text = url.expose_secret();
        if !(text.is_empty()
            || text.starts_with("postgres://")
            || text.starts_with("postgresql://"))
        {
            p.add(
                "database.url",
                "must start with postgres:// or postgresql://",
            );
        }
        DatabaseSettings {
            url,
            max_connections: p.at_least_one(
                "database.max_connections",
                self.max_connections.unwrap_or(16),
            ),
            reader_connections: p.at_least_one(
                "database.reader_connections",
                self.reader_connections.unwrap_or(4),
            ),
        }
    }
}

impl RawSecurity {
    fn validate(self, p: &mut Problems) -> SecuritySettings {
        let callback_secret = self.callback_secret.unwrap_or_else(|| {
            p.add(
                "security.callback_secret",
                "is required (at least 32 bytes; it signs task tokens)",
            );
            SecretString::from("")
        });
        let secret_bytes = callback_secret.expose_secret().len();
        if secret_bytes > 0 && secret_bytes < 32 {
            p.add(
                "security.callback_secret",
                format!("is {secret_bytes} bytes; it must be at least 32"),
            );
        }
        let admin_token = self.admin_token.unwrap_or_else(|| {
            p.add(
                "security.admin_token",
                "is required (bearer token for the admin API)",
            );
            SecretString::from("")
        });
        let token_chars = admin_token.expose_secret().chars().count();
        if token_chars > 0 && token_chars < MIN_ADMIN_TOKEN_CHARS {
            p.add(
                "security.admin_token",
                format!("is {token_chars} characters; it must be at least {MIN_ADMIN_TOKEN_CHARS} (e.g. `openssl rand -hex 32`)"),
            );
        }
        for (i, old) in self.previous_callback_secrets.iter().enumerate() {
            let bytes = old.expose_secret().len();
            if bytes < 32 {
                p.add(
                    &format!("security.previous_callback_secrets[{i}]"),
                    format!("is {bytes} bytes; it must be at least 32"),
                );
            }
        }
        let lockout_after_failures = p.at_least_one(
            "security.lockout_after_failures",
            self.lockout_after_failures.unwrap_or(10),
        );
        let lockout_first = p.duration(
            "security.lockout_first",
            self.lockout_first.as_deref(),
            Duration::from_secs(1),
        );
        let lockout_max = p.duration(
            "security.lockout_max",
            self.lockout_max.as_deref(),
            Duration::from_secs(15 * 60),
        );
        if lockout_max < lockout_first {
            p.add(
                "security.lockout_max",
                "must be at least security.lockout_first",
            );
        }
        SecuritySettings {
            callback_secret,
            admin_token,
            previous_callback_secrets: self.previous_callback_secrets,
            callback_grace: p.duration(
                "security.callback_grace",
                self.callback_grace.as_deref(),
                Duration::from_secs(15 * 60),
            ),
            allow_private_networks: self.allow_private_networks.unwrap_or(false),
            lockout_after_failures,
            lockout_first,
            lockout_max,
        }
    }
}

impl RawLocal {
    fn validate(self, p: &mut Problems) -> LocalSettings {
        LocalSettings {
            concurrency: p.at_least_one("local.concurrency", self.concurrency.unwrap_or(16)),
            browsers: p.at_least_one("local.browsers", self.browsers.unwrap_or(2)),
        }
    }
}

impl RawLambda {
    fn validate(self, p: &mut Problems) -> LambdaSettings {
        LambdaSettings {
            region: self.region,
            endpoint_url: self
                .endpoint_url
                .as_deref()
                .and_then(|u| http_url(p, "lambda.endpoint_url", u)),
            invoke_timeout: p.duration(
                "lambda.invoke_timeout",
                self.invoke_timeout.as_deref(),
                Duration::from_secs(10),
            ),
        }
    }
}

impl RawRetention {
    fn validate(self, p: &mut Problems) -> RetentionSettings {
        let batch_rows = p.at_least_one("retention.batch_rows", self.batch_rows.unwrap_or(5000));
        if batch_rows > MAX_PRUNE_BATCH_ROWS {
            p.add(
                "retention.batch_rows",
                format!("{batch_rows} is more than {MAX_PRUNE_BATCH_ROWS}"),
            );
        }
        RetentionSettings {
            keep_runs_for: p.duration(
                "retention.keep_runs_for",
                self.keep_runs_for.as_deref(),
                DEFAULT_KEEP_RUNS_FOR,
            ),
            prune_every: p.duration(
                "retention.prune_every",
                self.prune_every.as_deref(),
                Duration::from_secs(600),
            ),
            batch_rows,
        }
    }
}

impl RawNotify {
    fn validate(self, p: &mut Problems) -> NotifySettings {
        NotifySettings {
            retry_for: p.duration(
                "notify.retry_for",
                self.retry_for.as_deref(),
                Duration::from_secs(24 * 3600),
            ),
            timeout: p.duration(
                "notify.timeout",
                self.timeout.as_deref(),
                Duration::from_secs(10),
            ),
        }
    }
}

impl RawPoliteness {
    /// Validates every schedule, each over these defaults; a name used by
    /// two schedules is a problem.
    fn validate_schedules(self, raws: Vec<RawSchedule>, p: &mut Problems) -> Vec<Schedule> {
        let mut seen = HashSet::new();
        let mut schedules = Vec::new();
        // Checked once here, so a mistake is named at its own key, not in
        // every schedule that inherits it.
        let default_proxy = match &self.proxy {
            None => None,
            Some(raw) => proxy_choice(p, "politeness.proxy", raw),
        };
        let default_on = proxy_on(p, "politeness.proxy_on", self.proxy_on.as_deref());
        if self.proxy_on.is_some() && self.proxy.is_none() {
            p.add(
                "politeness.proxy_on",
                "is set but politeness.proxy is not; set proxy_on beside each schedule's proxy",
            );
        }
        for (i, mut raw) in raws.into_iter().enumerate() {
            raw.per_host_in_flight = raw.per_host_in_flight.or(self.per_host_in_flight);
            raw.per_host_rate = raw.per_host_rate.or_else(|| self.per_host_rate.clone());
            raw.obey_robots = raw.obey_robots.or(self.obey_robots);
            raw.user_agent = raw.user_agent.or_else(|| self.user_agent.clone());
            let own_proxy = raw.proxy.take();
            let own_on = raw.proxy_on.take();
            if let Some(mut s) = raw.validate(i, p) {
                let at = format!("schedule {:?}", s.name);
                let choice = match &own_proxy {
                    Some(raw) => proxy_choice(p, &format!("{at}: proxy"), raw),
                    None => default_proxy.as_ref().map(|c| match c {
                        ProxyChoice::Direct => ProxyChoice::Direct,
                        ProxyChoice::Via(via) => ProxyChoice::Via(via.clone()),
                    }),
                };
                let on = match &own_on {
                    Some(word) => proxy_on(p, &format!("{at}: proxy_on"), Some(word)),
                    None => default_on,
                };
                // (A proxy key with a mistake has its own problem already.)
                let no_proxy = match &choice {
                    Some(ProxyChoice::Direct) => true,
                    Some(ProxyChoice::Via(_)) => false,
                    None => own_proxy.is_none() && self.proxy.is_none(),
                };
                if own_on.is_some() && no_proxy {
                    p.add(
                        &format!("{at}: proxy_on"),
                        "is set but the schedule has no proxy (set proxy here or in [politeness])",
                    );
                }
                s.proxy = match choice {
                    Some(ProxyChoice::Via(via)) => Some(ScheduleProxy { via, on }),
                    _ => None,
                };
                if !seen.insert(s.name.clone()) {
                    p.add(
                        &format!("schedule {:?}", s.name),
                        "name is used by more than one schedule",
                    );
                }
                schedules.push(s);
            }
        }
        schedules
    }
}

/// A schedule's checked keys that are not copied as given, in the order
/// their problems are listed.
struct ScheduleLimits {
    page_timeout: Duration,
    max_attempts: u32,
    max_in_flight: u32,
    run_timeout: Duration,
    stuck_after: Duration,
    catchup_window: Duration,
    tolerated_failures: Tolerance,
}

impl RawSchedule {
    fn validate(mut self, index: usize, p: &mut Problems) -> Option<Schedule> {
        let name = self.checked_name(index, p)?;
        let at = format!("schedule {name:?}");
        let key = |k: &str| format!("{at}: {k}");
        let cron = self.cron(&at, p);
        let invoker = p.word(&key("invoker"), self.invoker.as_deref(), InvokerKind::Local);
        if invoker == InvokerKind::Lambda && self.function.as_deref().is_none_or(str::is_empty) {
            p.add(&key("function"), "is required with invoker = \"lambda\"");
        }
        let (pages, links) = match self.pages.take() {
            None => {
                p.add(
                    &key("pages"),
                    "is required: { urls = [...] }, { sitemap = \"...\" }, { http = \"...\" }, { lambda = \"...\" } or { crawl = \"...\" }",
                );
                (None, None)
            }
            Some(raw) => {
                let links = raw.link_rules(&key("pages"), p);
                (raw.validate(&key("pages"), p), links)
            }
        };
        let extract = std::mem::take(&mut self.extract)
            .into_iter()
            .filter_map(|(field, raw)| {
                field_spec(p, &key(&format!("extract.{field}")), raw).map(|spec| (field, spec))
            })
            .collect();
        let limits = self.limits(&at, p);
        let catchup = p.word(&key("catchup"), self.catchup.as_deref(), Catchup::Skip);
        let overlap = p.word(&key("overlap"), self.overlap.as_deref(), Overlap::Skip);
        let (per_host_in_flight, per_host_interval) = self.per_host(&at, p);
        let compare = p.word(&key("compare"), self.compare.as_deref(), Compare::Fields);
        let render = self.render(&at, invoker, p);
        // Asked for where it cannot apply: pages rendered in a browser and
        // runs that follow links are always fetched in full.
        if self.conditional == Some(true) {
            if render.mode == RenderMode::Always {
                p.add(
                    &key("conditional"),
                    "is true but every page is rendered (render = \"always\"), and rendered pages are always fetched in full",
                );
            } else if links.is_some() {
                p.add(
                    &key("conditional"),
                    "is true but the schedule follows links, and a run that follows links fetches every page in full",
                );
            }
        }
        let mut notify = Vec::new();
        for (i, t) in std::mem::take(&mut self.notify).into_iter().enumerate() {
            notify.extend(t.validate(&key(&format!("notify[{i}]")), p));
        }
        Some(Schedule {
            name,
            cron,
            invoker,
            function: self.function.filter(|f| !f.is_empty()),
            pages: pages.unwrap_or(PageSource::Urls(Vec::new())),
            links,
            extract,
            page_timeout: limits.page_timeout,
            max_attempts: limits.max_attempts,
            max_in_flight: limits.max_in_flight,
            max_invokes_per_second: self.max_invokes_per_second,
            per_host_in_flight,
            per_host_interval,
            obey_robots: self.obey_robots.unwrap_or(true),
            user_agent: self.user_agent,
            // Set over the `[politeness]` default by `validate_schedules`.
            proxy: None,
            render,
            max_pages: self.max_pages.unwrap_or(DEFAULT_MAX_PAGES),
            max_document_bytes: self
                .max_document_bytes
                .unwrap_or(DEFAULT_MAX_DOCUMENT_BYTES),
            sitemap_any_host: self.sitemap_any_host.unwrap_or(false),
            run_timeout: limits.run_timeout,
            tolerated_failures: limits.tolerated_failures,
            stuck_after: limits.stuck_after,
            catchup,
            catchup_window: limits.catchup_window,
            overlap,
            compare,
            conditional: self.conditional.unwrap_or(true),
            notify,
            keep_runs_for: self
                .keep_runs_for
                .as_deref()
                .map(|raw| p.duration(&key("keep_runs_for"), Some(raw), DEFAULT_KEEP_RUNS_FOR)),
        })
    }

    /// The trimmed name; without a valid one the schedule's other problems
    /// could not say which schedule they are in, so it is not checked further.
    fn checked_name(&self, index: usize, p: &mut Problems) -> Option<String> {
        match self.name.as_deref().map(str::trim) {
            Some(n) if valid_name(n) => Some(n.to_string()),
            Some(n) => {
                p.add(
                    &format!("schedules[{index}] name {n:?}"),
                    "must be 1-64 characters of letters, digits, '-', '_' or '.'",
                );
                None
            }
            None => {
                p.add(&format!("schedules[{index}]"), "name is required");
                None
            }
        }
    }

    /// `cron` in `timezone`; the time zone is checked even without a cron.
    fn cron(&self, at: &str, p: &mut Problems) -> Option<CronSchedule> {
        let tz = self.timezone.as_deref().unwrap_or("UTC");
        let Some(expr) = self.cron.as_deref() else {
            if self.timezone.is_some() {
                if let Err(e) = tz.parse::<chrono_tz::Tz>() {
                    p.add(
                        &format!("{at}: timezone"),
                        format!("unknown time zone {tz:?} ({e})"),
                    );
                }
            }
            return None;
        };
        match CronSchedule::new(expr, tz) {
            Ok(c) => Some(c),
            Err(e @ CronError::UnknownTimeZone(_)) => {
                p.add(&format!("{at}: timezone"), e);
                None
            }
            Err(e @ CronError::Expression(_)) => {
                p.add(&format!("{at}: cron {expr:?}"), e);
                None
            }
        }
    }

    fn limits(&self, at: &str, p: &mut Problems) -> ScheduleLimits {
        let key = |k: &str| format!("{at}: {k}");
        ScheduleLimits {
            page_timeout: p.duration(
                &key("page_timeout"),
                self.page_timeout.as_deref(),
                Duration::from_secs(300),
            ),
            max_attempts: p.at_least_one(&key("max_attempts"), self.max_attempts.unwrap_or(3)),
            max_in_flight: p.at_least_one(&key("max_in_flight"), self.max_in_flight.unwrap_or(100)),
            run_timeout: p.duration(
                &key("run_timeout"),
                self.run_timeout.as_deref(),
                Duration::from_secs(12 * 3600),
            ),
            stuck_after: p.duration(
                &key("stuck_after"),
                self.stuck_after.as_deref(),
                Duration::from_secs(3600),
            ),
            catchup_window: p.duration(
                &key("catchup_window"),
                self.catchup_window.as_deref(),
                Duration::from_secs(3600),
            ),
            tolerated_failures: tolerance(
                p,
                &key("tolerated_failures"),
                self.tolerated_failures.as_ref(),
            ),
        }
    }

    /// The render keys, checked: a wrong word, selector, resource type or
    /// duration, a lambda schedule that renders without
    /// `browser_function`, and a render key on a schedule that never
    /// renders are each named.
    fn render(&self, at: &str, invoker: InvokerKind, p: &mut Problems) -> RenderSettings {
        let key = |k: &str| format!("{at}: {k}");
        // An unknown word stands in as "auto", so the other render keys are
        // still checked without also being called unused.
        let mode = p.word(&key("render"), self.render.as_deref(), RenderMode::Auto);
        let mut settings = RenderSettings {
            mode,
            ..RenderSettings::default()
        };
        if let Some(selector) = &self.wait_for {
            match scraper_selector_ok(selector) {
                Ok(()) => settings.wait_for = Some(selector.clone()),
                Err(e) => p.add(
                    &key("wait_for"),
                    format!("{selector:?} is not a CSS selector ({e})"),
                ),
            }
        }
        if let Some(words) = &self.block {
            settings.block.clear();
            for word in words {
                match ResourceType::ALL.iter().find(|t| t.as_str() == word) {
                    Some(kind) if !settings.block.contains(kind) => settings.block.push(*kind),
                    Some(_) => {}
                    None => p.add(
                        &key("block"),
                        format!(
                            "{word:?} must be {}",
                            one_of(&ResourceType::ALL.map(ResourceType::as_str))
                        ),
                    ),
                }
            }
        }
        settings.timeout = p.duration(
            &key("render_timeout"),
            self.render_timeout.as_deref(),
            DEFAULT_RENDER_TIMEOUT,
        );
        if settings.timeout > MAX_RENDER_TIMEOUT {
            p.add(
                &key("render_timeout"),
                format!(
                    "{:?} is longer than the most a render may take, {}",
                    self.render_timeout.as_deref().unwrap_or_default(),
                    humantime::format_duration(MAX_RENDER_TIMEOUT)
                ),
            );
            settings.timeout = MAX_RENDER_TIMEOUT;
        }
        settings.render_after = self.render_after.unwrap_or(DEFAULT_RENDER_AFTER);
        if self.render_after == Some(0) {
            p.add(&key("render_after"), "must be at least 1");
        }
        settings.browser_function = self.browser_function.clone().filter(|f| !f.is_empty());
        if self.browser_function.as_deref() == Some("") {
            p.add(&key("browser_function"), "must not be empty");
        }
        if mode == RenderMode::Never {
            let set = [
                ("wait_for", self.wait_for.is_some()),
                ("block", self.block.is_some()),
                ("render_timeout", self.render_timeout.is_some()),
                ("browser_function", self.browser_function.is_some()),
                ("render_after", self.render_after.is_some()),
            ];
            for (name, _) in set.iter().filter(|(_, set)| *set) {
                p.add(
                    &key(name),
                    "is set but the schedule never renders (set render = \"always\" or \"auto\")",
                );
            }
        } else {
            if invoker == InvokerKind::Lambda && self.browser_function.is_none() {
                p.add(
                    &key("browser_function"),
                    format!(
                        "is required with render = \"{mode}\" and invoker = \"lambda\" \
                         (the Lambda function that renders pages)"
                    ),
                );
            }
            if mode == RenderMode::Always && self.render_after.is_some() {
                p.add(&key("render_after"), "is only used with render = \"auto\"");
            }
        }
        settings
    }

    /// Checks the listing and pacing keys; returns `per_host_in_flight` and
    /// the interval of `per_host_rate`.
    fn per_host(&self, at: &str, p: &mut Problems) -> (u32, Duration) {
        let key = |k: &str| format!("{at}: {k}");
        if self.max_document_bytes.is_some_and(|b| b < 1024) {
            p.add(&key("max_document_bytes"), "must be at least 1024");
        }
        if self.max_pages == Some(0) {
            p.add(&key("max_pages"), "must be at least 1");
        }
        if self.max_invokes_per_second == Some(0) {
            p.add(
                &key("max_invokes_per_second"),
                "must be at least 1 (leave it out for no limit)",
            );
        }
        let in_flight = p.at_least_one(
            &key("per_host_in_flight"),
            self.per_host_in_flight
                .unwrap_or(DEFAULT_PER_HOST_IN_FLIGHT),
        );
        let interval = match self.per_host_rate.as_deref().map(rate_interval) {
            None => Duration::ZERO,
            Some(Ok(interval)) => interval,
            Some(Err(e)) => {
                p.add(&key("per_host_rate"), e);
                Duration::ZERO
            }
        };
        if let Some(agent) = &self.user_agent {
            if let Err(e) = user_agent_ok(agent) {
                p.add(&key("user_agent"), e);
            }
        }
        (in_flight, interval)
    }
}

impl RawNotifyTarget {
    /// The target at `at` (`schedule "x": notify[0]`).
    fn validate(self, at: &str, p: &mut Problems) -> Option<Notify> {
        let when = p.word(
            &format!("{at}.when"),
            self.when.as_deref(),
            NotifyWhen::Always,
        );
        let target = match (self.webhook, self.slack, self.stdout) {
            (Some(w), None, None) => w.validate(&format!("{at}.webhook"), p),
            (None, Some(s), None) => {
                secret_http_url(p, &format!("{at}.slack.url"), s.url.expose_secret())
                    .map(|_| NotifyTarget::Slack { url: s.url })
            }
            (None, None, Some(_)) => Some(NotifyTarget::Stdout),
            _ => {
                p.add(at, "must have exactly one of webhook, slack or stdout");
                None
            }
        };
        target.map(|target| Notify { target, when })
    }
}

impl RawWebhook {
    fn validate(self, at: &str, p: &mut Problems) -> Option<NotifyTarget> {
        if let Err(e) = webhook_key(&self.secret) {
            p.add(&format!("{at}.secret"), e);
        }
        if let Some(old) = &self.previous_secret {
            if let Err(e) = webhook_key(old) {
                p.add(&format!("{at}.previous_secret"), e);
            }
        }
        let url = secret_http_url(p, &format!("{at}.url"), self.url.expose_secret())?;
        Some(NotifyTarget::Webhook {
            url: SecretUrl::new(url),
            secret: self.secret,
            previous_secret: self.previous_secret,
        })
    }
}

/// `crawl = "https://..."` or `crawl = ["https://...", ...]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawStartUrls {
    One(String),
    Many(Vec<String>),
}

impl RawPages {
    /// The link rules of a crawl, or of another source with
    /// `follow_links = true`; each link key given without either is a
    /// problem.
    fn link_rules(&self, at: &str, p: &mut Problems) -> Option<LinkRules> {
        let key = |k: &str| format!("{at}.{k}");
        let follow = match (&self.crawl, self.follow_links) {
            (Some(_), Some(false)) => {
                p.add(
                    &key("follow_links"),
                    "cannot be false with crawl (a crawl follows links; use urls for a fixed list)",
                );
                true
            }
            (Some(_), _) => true,
            (None, follow) => follow.unwrap_or(false),
        };
        if !follow {
            for (name, given) in [
                ("max_depth", self.max_depth.is_some()),
                ("include", self.include.is_some()),
                ("exclude", self.exclude.is_some()),
                ("same_host", self.same_host.is_some()),
                ("obey_nofollow", self.obey_nofollow.is_some()),
            ] {
                if given {
                    p.add(
                        &key(name),
                        "only goes with crawl = ... or follow_links = true",
                    );
                }
            }
            return None;
        }
        let max_depth = self.max_depth.unwrap_or(DEFAULT_MAX_DEPTH);
        if max_depth > MAX_DEPTH_LIMIT {
            p.add(
                &key("max_depth"),
                format!("{max_depth} is deeper than {MAX_DEPTH_LIMIT}"),
            );
        }
        let globs = |p: &mut Problems, name: &str, list: &Option<Vec<String>>| {
            let list = list.as_deref().unwrap_or_default();
            if list.len() > MAX_PATTERNS {
                p.add(
                    &key(name),
                    format!("has {} patterns; at most {MAX_PATTERNS}", list.len()),
                );
            }
            list.iter()
                .enumerate()
                .filter_map(|(i, g)| match UrlGlob::new(g) {
                    Ok(g) => Some(g),
                    Err(e) => {
                        p.add(&format!("{at}.{name}[{i}] {g:?}"), e);
                        None
                    }
                })
                .collect::<Vec<_>>()
        };
        let include = globs(p, "include", &self.include);
        let exclude = globs(p, "exclude", &self.exclude);
        Some(LinkRules {
            max_depth: max_depth.min(MAX_DEPTH_LIMIT),
            include,
            exclude,
            same_host: self.same_host.unwrap_or(true),
            obey_nofollow: self.obey_nofollow.unwrap_or(true),
        })
    }

    fn validate(self, at: &str, p: &mut Problems) -> Option<PageSource> {
        let given = [
            self.crawl.is_some(),
            self.urls.is_some(),
            self.sitemap.is_some(),
            self.http.is_some(),
            self.lambda.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            p.add(
                at,
                "must have exactly one of urls, sitemap, http or lambda (or crawl, to follow links from start URLs)",
            );
            return None;
        }
        if self.payload.is_some() && self.lambda.is_none() {
            p.add(&format!("{at}.payload"), "only goes with lambda");
        }
        // A crawl's start URLs are listed as a list of URLs is.
        let (urls, list_key) = match self.crawl {
            Some(RawStartUrls::One(u)) => (Some(vec![u]), "crawl"),
            Some(RawStartUrls::Many(urls)) => {
                if urls.is_empty() {
                    p.add(&format!("{at}.crawl"), "must name at least one start URL");
                }
                (Some(urls), "crawl")
            }
            None => (self.urls, "urls"),
        };
        if let Some(urls) = urls {
            for (i, u) in urls.iter().enumerate() {
                http_url(p, &format!("{at}.{list_key}[{i}]"), u);
            }
            return Some(PageSource::Urls(urls));
        }
        if let Some(s) = self.sitemap {
            return http_url(p, &format!("{at}.sitemap"), &s).map(PageSource::Sitemap);
        }
        if let Some(h) = self.http {
            return http_url(p, &format!("{at}.http"), &h).map(PageSource::Http);
        }
        let function = self.lambda.unwrap_or_default();
        if function.is_empty() {
            p.add(&format!("{at}.lambda"), "must name a function");
        }
        Some(PageSource::Lambda {
            function,
            payload: self
                .payload
                .unwrap_or(serde_json::Value::Object(Default::default())),
        })
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// One `extract` entry at `at`: a selector string or a table, checked by
/// the crawler's own rules ([`check_field`]) so that what passes here
/// compiles there. Each mistake is a problem naming the key (and the word).
fn field_spec(p: &mut Problems, at: &str, raw: serde_json::Value) -> Option<FieldSpec> {
    use serde_json::Value;
    let spec = match raw {
        Value::String(css) => FieldSpec::Selector(css),
        Value::Object(table) => {
            let before = p.0.len();
            for (k, v) in &table {
                let at = format!("{at}.{k}");
                match k.as_str() {
                    "all" if !v.is_boolean() => p.add(&at, "must be true or false"),
                    "type" => match v.as_str() {
                        Some(w) if ValueType::WORDS.contains(&w) => {}
                        given => p.add(
                            &at,
                            NotOneOf {
                                given: given.map_or_else(|| v.to_string(), str::to_string),
                                allowed: ValueType::WORDS,
                            },
                        ),
                    },
                    "all" => {}
                    k if FieldTable::KEYS.contains(&k) => {
                        if !v.is_string() {
                            p.add(&at, "must be a string");
                        }
                    }
                    _ => p.add(
                        &at,
                        format!(
                            "is not a key of a field table; it takes {}",
                            one_of(FieldTable::KEYS)
                        ),
                    ),
                }
            }
            if p.0.len() > before {
                return None;
            }
            match serde_json::from_value(Value::Object(table)) {
                Ok(spec) => spec,
                Err(e) => {
                    p.add(at, e);
                    return None;
                }
            }
        }
        _ => {
            p.add(
                at,
                "must be a CSS selector string or a table such as { css = \"a.next\", attr = \"href\" }",
            );
            return None;
        }
    };
    match check_field(&spec) {
        Ok(()) => Some(spec),
        Err(e) => {
            p.add(at, e);
            None
        }
    }
}

/// Whether `selector` parses as CSS, as the crawler's browser reads it.
fn scraper_selector_ok(selector: &str) -> Result<(), String> {
    scraper::Selector::parse(selector)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_reads_back_as_its_value() {
        for v in [InvokerKind::Lambda, InvokerKind::Local] {
            assert_eq!(v.as_str().parse(), Ok(v));
        }
        for v in [Catchup::Skip, Catchup::Once, Catchup::All] {
            assert_eq!(v.as_str().parse(), Ok(v));
        }
        for v in [
            Overlap::Skip,
            Overlap::Allow,
            Overlap::BufferOne,
            Overlap::CancelPrevious,
        ] {
            assert_eq!(v.as_str().parse(), Ok(v));
        }
        for v in [Compare::Fields, Compare::Content] {
            assert_eq!(v.as_str().parse(), Ok(v));
        }
        for v in [NotifyWhen::Always, NotifyWhen::Changes] {
            assert_eq!(v.as_str().parse(), Ok(v));
        }
        for v in [NotifyKind::Webhook, NotifyKind::Slack, NotifyKind::Stdout] {
            assert_eq!(v.as_str().parse(), Ok(v));
        }
    }

    #[test]
    fn an_unknown_word_lists_the_allowed_ones() {
        let err = "sideways".parse::<InvokerKind>().unwrap_err();
        assert_eq!(err.to_string(), r#""sideways" must be "lambda" or "local""#);
        let err = "Skip".parse::<Catchup>().unwrap_err();
        assert_eq!(err.allowed, ["skip", "once", "all"]);
    }

    #[test]
    fn a_target_kind_is_stored_by_its_word() {
        assert_eq!(NotifyTarget::Stdout.kind().as_str(), "stdout");
        assert_eq!(NotifyKind::Webhook.to_string(), "webhook");
    }
}
