//! fanfare's crawler: fetch one page, extract a few facts, report back.
//!
//! The fanfare daemon fans a run out as one [`CrawlRequest`] per page. Each
//! request is crawled by [`Crawler::handle`]: [`Crawler::crawl`] fetches the
//! page with reqwest and extracts its fields ([`extract`]: CSS selectors,
//! attributes, `<meta>` tags, JSON-LD, typed values), then
//! [`Crawler::report`] POSTs the resulting [`Report`] to the daemon's
//! callback URL, retrying transient failures.
//!
//! The same library code runs in two places:
//!
//! - **On AWS Lambda**, as this crate's `fanfare-crawler` binary: the Lambda
//!   event is a [`CrawlRequest`], and a callback that ultimately fails makes
//!   the invocation fail so that Lambda's asynchronous retry redelivers it.
//! - **In-process in the daemon**, through its `LocalInvoker` (development
//!   and tests), which calls [`Crawler::handle`] directly.
//!
//! So the code the tests exercise is the code that runs in production. The
//! wire contract between the two sides lives once, in [`contract`].
//!
//! A crawl never fails as a Rust error: every failure to fetch or extract a
//! page becomes an [`Outcome::Failed`] with an [`ErrorKind`] and a
//! `retryable` flag, and is reported like a success.

#![warn(missing_docs)]

pub mod callback;
pub mod contract;
pub mod crawl;
mod errors;
pub mod extract;
pub mod netguard;
pub mod proxy;
pub mod render;

pub use callback::{CallbackError, Reporter};
pub use contract::{
    field_text, same_field_value, CallbackAck, CallbackStatus, CrawlError, CrawlRequest, ErrorKind,
    FieldSpec, FieldTable, Outcome, PageFacts, Report, UnsupportedVersion, ValueType,
    CONTRACT_VERSION, MAX_REPORT_BYTES,
};
pub use crawl::{ConfigError, Crawler, CrawlerConfig};
pub use proxy::{ProxyOn, ProxyRoute, ProxyUrl};
