//! The typed values the ledger stores: statuses, outcomes, triggers and
//! error kinds are enums mapped to the `text` columns that hold them, never
//! compared as strings. Their serde names are the stored names, which the
//! API and the notifications show.

use std::borrow::Cow;

use fanfare_crawler::contract::ErrorKind as CrawlErrorKind;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

/// The state of one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum PageStatus {
    /// Listed, not yet dispatched (or waiting for a retry).
    Pending,
    /// Handed to a crawler; waiting for its report.
    Dispatched,
    /// Terminal: crawled.
    Succeeded,
    /// Terminal: the crawl failed.
    Failed,
    /// Terminal: no report within the page's attempts.
    TimedOut,
    /// Terminal: the run was cancelled or failed before the page ran.
    Cancelled,
}

impl PageStatus {
    /// The name stored in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            PageStatus::Pending => "pending",
            PageStatus::Dispatched => "dispatched",
            PageStatus::Succeeded => "succeeded",
            PageStatus::Failed => "failed",
            PageStatus::TimedOut => "timed_out",
            PageStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored or requested name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => PageStatus::Pending,
            "dispatched" => PageStatus::Dispatched,
            "succeeded" => PageStatus::Succeeded,
            "failed" => PageStatus::Failed,
            "timed_out" => PageStatus::TimedOut,
            "cancelled" => PageStatus::Cancelled,
            _ => return None,
        })
    }

    /// Whether the page is done (no further attempt).
    pub fn is_terminal(self) -> bool {
        !matches!(self, PageStatus::Pending | PageStatus::Dispatched)
    }
}

/// The state of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum RunStatus {
    /// Its pages are being read from the source.
    Listing,
    /// Listed; pages are being dispatched and reported.
    Running,
    /// Every page is terminal; the outcome and notifications are being written.
    Finishing,
    /// Done, with an outcome.
    Finished,
}

/// How a finished run went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[schema(as = RunOutcome)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Outcome {
    /// Failures within the schedule's tolerance.
    Succeeded,
    /// Some pages succeeded, more failed than tolerated.
    Partial,
    /// No page succeeded (and more failed than tolerated), or the run failed as a whole.
    Failed,
    /// An operator (or a newer fire) cancelled it.
    Cancelled,
}

impl Outcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// What a run found in a host's robots.txt (`run_hosts.robots_outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum RobotsOutcome {
    /// The schedule does not obey robots.txt.
    NotRead,
    /// No rules: a 4xx, or a host the daemon may not reach (the crawler
    /// refuses those pages itself).
    Allowed,
    /// Rules for the run's crawler (in `robots_rules`).
    Rules,
    /// The file could not be fetched (5xx, 429, a timeout): the host's
    /// pages are left out of the run.
    Unreachable,
    /// The rules would cost more to keep or match than a listing allows:
    /// the host's pages are left out of the run.
    TooComplex,
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Trigger {
    /// A cron fire.
    Cron,
    /// A fire missed while no replica ran, started afterwards.
    Catchup,
    /// The API or the CLI.
    Manual,
    /// A new run of another run's failed and timed-out pages.
    Redrive,
}

/// The class of a page's error: the crawler's kinds (see the contract) and
/// fanfare's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No report came before the attempt's deadline.
    Deadline,
    /// The crawler could not be invoked.
    Invoke,
    /// The run's `run_timeout` passed before the page finished.
    RunTimeout,
    /// The page as served looked unrendered; it went on to the browser.
    Unrendered,
    /// A kind the crawler reported, under its own name (one it does not
    /// know is read as `other`).
    #[serde(untagged)]
    Crawl(CrawlErrorKind),
}

impl ErrorKind {
    /// fanfare's own kinds, in the order declared.
    const OWN: [ErrorKind; 4] = [
        ErrorKind::Deadline,
        ErrorKind::Invoke,
        ErrorKind::RunTimeout,
        ErrorKind::Unrendered,
    ];

    /// The snake_case name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Deadline => "deadline",
            ErrorKind::Invoke => "invoke",
            ErrorKind::RunTimeout => "run_timeout",
            ErrorKind::Unrendered => "unrendered",
            ErrorKind::Crawl(kind) => kind.as_str(),
        }
    }
}

impl From<CrawlErrorKind> for ErrorKind {
    fn from(kind: CrawlErrorKind) -> Self {
        ErrorKind::Crawl(kind)
    }
}

impl utoipa::PartialSchema for ErrorKind {
    /// A string enum of every name: the crawler's kinds, fanfare's own,
    /// then `other`.
    fn schema() -> RefOr<Schema> {
        let crawler = CrawlErrorKind::ALL
            .into_iter()
            .filter(|k| *k != CrawlErrorKind::Other)
            .map(ErrorKind::Crawl);
        let names: Vec<&str> = crawler
            .chain(ErrorKind::OWN)
            .chain([ErrorKind::Crawl(CrawlErrorKind::Other)])
            .map(ErrorKind::as_str)
            .collect();
        ObjectBuilder::new()
            .schema_type(Type::String)
            // The type's own doc, as a derived schema would say it.
            .description(Some(
                "The class of a page's error: the crawler's kinds (see the contract) and\nfanfare's own.",
            ))
            .enum_values(Some(names))
            .into()
    }
}

impl ToSchema for ErrorKind {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PageErrorKind")
    }
}

/// A page's last error, stored as `pages.error` (jsonb).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PageError {
    /// Its class.
    pub kind: ErrorKind,
    /// What happened, naming the culprit.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// The site's HTTP status, for an `http_status` error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
}

impl PageError {
    /// An error of `kind`.
    pub fn new(kind: impl Into<ErrorKind>, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            retryable,
            http_status: None,
        }
    }
}

impl From<fanfare_crawler::contract::CrawlError> for PageError {
    fn from(e: fanfare_crawler::contract::CrawlError) -> Self {
        Self {
            http_status: e.http_status,
            ..Self::new(e.kind, e.message, e.retryable)
        }
    }
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[sqlx(type_name = "text")]
pub enum NotifyEvent {
    /// Every page of the run is terminal (or the run was closed).
    #[serde(rename = "run.finished")]
    #[sqlx(rename = "run.finished")]
    RunFinished,
    /// The run made no progress for its `stuck_after`.
    #[serde(rename = "run.stuck")]
    #[sqlx(rename = "run.stuck")]
    RunStuck,
}

impl NotifyEvent {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::RunFinished => "run.finished",
            NotifyEvent::RunStuck => "run.stuck",
        }
    }
}

/// How a page of a run differs from the same URL in the schedule's
/// previous run (stored for the kinds worth telling; unchanged pages are
/// only counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[schema(as = ChangeKind)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum ChangeKind {
    /// Crawled now; not in the previous run, or gone (404/410) there.
    New,
    /// Crawled in both runs, with a different title or field (or body,
    /// with `compare = "content"`).
    Changed,
    /// In the previous run, and now no longer listed or answering 404/410.
    Gone,
}

impl ChangeKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::New => "new",
            ChangeKind::Changed => "changed",
            ChangeKind::Gone => "gone",
        }
    }

    /// Parses a stored or requested name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "new" => ChangeKind::New,
            "changed" => ChangeKind::Changed,
            "gone" => ChangeKind::Gone,
            _ => return None,
        })
    }
}
