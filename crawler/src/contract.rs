//! The versioned wire contract between the fanfare daemon and a crawler.
//!
//! The daemon sends a [`CrawlRequest`] as the Lambda event (InvocationType
//! `Event`); the crawler answers, at least once, by POSTing a [`Report`] to
//! `callback_url` with `Authorization: Bearer <callback_token>`. Ids are
//! opaque to the crawler: it echoes them. `docs/crawler-contract.md` documents both shapes
//! with a full example so that a crawler in another language can implement
//! them from that page alone.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::proxy::ProxyRoute;

/// The contract version this crate speaks. A report with any other version
/// is rejected by the daemon.
pub const CONTRACT_VERSION: u32 = 1;

/// The largest report body the daemon accepts (256 KiB); larger gets 413.
pub const MAX_REPORT_BYTES: usize = 256 * 1024;

/// One page to crawl: the Lambda event.
///
/// `Debug` redacts `callback_token` and the proxy's password, so a request
/// can be logged whole.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CrawlRequest {
    /// Contract version: 1 ([`CONTRACT_VERSION`]).
    pub version: u32,
    /// The run this page belongs to (opaque; echoed in the report).
    pub run_id: String,
    /// The page (opaque; echoed in the report).
    pub page_id: String,
    /// Which dispatch of this page this is, starting at 1 (echoed).
    pub attempt: u32,
    /// The page to fetch.
    pub url: String,
    /// Fields to extract: field name -> a CSS selector (the text of its
    /// first match) or a table ([`FieldSpec`]).
    #[serde(default)]
    pub extract: BTreeMap<String, FieldSpec>,
    /// Where to POST the report.
    pub callback_url: String,
    /// Bearer token for the callback, bound to this run, page and attempt.
    pub callback_token: String,
    /// The `User-Agent` to fetch with (the schedule's `user_agent`); the
    /// crawler's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Fetch the page through this proxy (the schedule's `proxy`); directly
    /// when absent. Its URL carries the proxy's credentials, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyRoute>,
    /// Render the page in a headless browser (its scripts run) and extract
    /// from the rendered document; fetched as served when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render: Option<RenderRequest>,
    /// When the daemon stops waiting for this attempt.
    pub deadline: DateTime<Utc>,
    /// Report the page's links ([`PageFacts::links`]) this way; absent:
    /// report none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<LinksWanted>,
    /// The `ETag` the previous run's fetch of this URL got: send it as
    /// `If-None-Match`, and report a `304 Not Modified` as
    /// [`PageFacts::not_modified`]. Absent: fetch unconditionally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_none_match: Option<String>,
    /// The `Last-Modified` the previous run's fetch of this URL got: send
    /// it as `If-Modified-Since` (as [`CrawlRequest::if_none_match`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_modified_since: Option<String>,
}

/// Which of a page's links a crawler reports, when the daemon follows them.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinksWanted {
    /// Report at most this many links (the first ones in document order,
    /// after dropping repeats); a crawler may report fewer to keep the
    /// report within [`MAX_REPORT_BYTES`].
    pub max: u32,
    /// Leave out links whose `rel` includes `nofollow`.
    #[serde(default)]
    pub skip_nofollow: bool,
}

impl CrawlRequest {
    /// Checks that this request speaks [`CONTRACT_VERSION`]; a crawler must
    /// not guess at the meaning of another version.
    pub fn check_version(&self) -> Result<(), UnsupportedVersion> {
        if self.version == CONTRACT_VERSION {
            Ok(())
        } else {
            Err(UnsupportedVersion {
                version: self.version,
            })
        }
    }
}

// Hand-written so that the bearer token never reaches a log line.
impl std::fmt::Debug for CrawlRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrawlRequest")
            .field("version", &self.version)
            .field("run_id", &self.run_id)
            .field("page_id", &self.page_id)
            .field("attempt", &self.attempt)
            .field("url", &self.url)
            .field("extract", &self.extract)
            .field("callback_url", &self.callback_url)
            .field("callback_token", &"[redacted]")
            .field("user_agent", &self.user_agent)
            .field("proxy", &self.proxy)
            .field("render", &self.render)
            .field("deadline", &self.deadline)
            .field("links", &self.links)
            .field("if_none_match", &self.if_none_match)
            .field("if_modified_since", &self.if_modified_since)
            .finish()
    }
}

/// How one field is extracted: a CSS selector string (the trimmed text of
/// its first match), or a table saying where the value comes from and what
/// is done with it. A selector serializes as a JSON string, a table as a
/// JSON object.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FieldSpec {
    /// A CSS selector: the text of its first match, whitespace collapsed.
    Selector(String),
    /// A table: exactly one of `css`, `meta` or `jsonld`, and optionally
    /// `attr`, `all`, `type` and `regex`.
    Table(FieldTable),
}

impl From<&str> for FieldSpec {
    fn from(css: &str) -> Self {
        FieldSpec::Selector(css.to_string())
    }
}

// By hand rather than `untagged`, so that a table with a mistake is
// refused naming it (an unknown key, a bad `type` word) instead of "did not
// match any variant".
impl<'de> Deserialize<'de> for FieldSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, Visitor};

        struct Spec;

        impl<'de> Visitor<'de> for Spec {
            type Value = FieldSpec;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a CSS selector string or a table with one of css, meta or jsonld")
            }

            fn visit_str<E: de::Error>(self, css: &str) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Selector(css.to_string()))
            }

            fn visit_string<E: de::Error>(self, css: String) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Selector(css))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldSpec, A::Error> {
                FieldTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(FieldSpec::Table)
            }
        }

        deserializer.deserialize_any(Spec)
    }
}

/// A field given as a table. Exactly one of `css`, `meta` and `jsonld` says
/// where its values come from; the other keys say what is made of them.
/// `docs/crawler-contract.md` gives the rules and examples.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldTable {
    /// A CSS selector: its matches' text (or `attr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub css: Option<String>,
    /// The `content` of the `<meta>` tags whose `property`, `name` or
    /// `itemprop` is this (ASCII case-insensitive), e.g. `og:price:amount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<String>,
    /// A path into the page's JSON-LD: a schema.org type, then property
    /// names, e.g. `Product.offers.price`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonld: Option<String>,
    /// With `css`: this attribute of the match instead of its text
    /// (`href` and `src` resolved against the page's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attr: Option<String>,
    /// Every match, as a JSON array (empty when nothing matched), instead of
    /// the first match.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// What each value is turned into: `text` or `number`; unset, a value is
    /// text, except that JSON-LD values keep their JSON type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub value_type: Option<ValueType>,
    /// A regular expression applied to each value's text: its first capture
    /// group, else the whole match; no match gives null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// What a field's values are turned into (a table's `type`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    /// A JSON string.
    Text,
    /// A JSON number, read locale-tolerantly (`1.299,00 €` and `$1,299.00`
    /// are both 1299); null when the text holds no number.
    Number,
}

impl ValueType {
    /// Every type word, in the order a message lists them.
    pub const WORDS: &'static [&'static str] =
        &[ValueType::Text.as_str(), ValueType::Number.as_str()];

    /// The word that names it in a table's `type`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ValueType::Text => "text",
            ValueType::Number => "number",
        }
    }
}

impl FieldTable {
    /// The keys a table takes, in the order a message lists them.
    pub const KEYS: &'static [&'static str] =
        &["css", "meta", "jsonld", "attr", "all", "type", "regex"];
}

/// A field value's text: a string as it is, a number or boolean as JSON
/// writes it, an array or object as its JSON text; `None` for null.
///
/// This is what values are compared and shown by, so that a price read as
/// text (`"1299"`) and as a number (`1299`) are the same value.
pub fn field_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s)),
        other => Some(Cow::Owned(other.to_string())),
    }
}

/// Whether two field values are the same by [`field_text`]; an array is
/// compared element by element the same way.
pub fn same_field_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_field_value(a, b))
        }
        (Value::Array(_), _) | (_, Value::Array(_)) => false,
        _ => field_text(a) == field_text(b),
    }
}

/// How to render a page in a browser (the request's `render`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderRequest {
    /// A CSS selector: the page counts as rendered once it matches. Without
    /// it, once the load event has fired and the page's requests have been
    /// quiet for a moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<String>,
    /// Resource types the browser does not fetch.
    #[serde(default)]
    pub block: Vec<ResourceType>,
    /// The most time the render may take, in milliseconds, from opening the
    /// page to reading its document (the crawler caps it at its own limit).
    pub timeout_ms: u64,
}

/// A resource type a render may leave unfetched.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    /// Images (`<img>`, CSS backgrounds, favicons).
    Image,
    /// Web fonts.
    Font,
    /// Audio and video.
    Media,
    /// Style sheets.
    Stylesheet,
}

impl ResourceType {
    /// Every resource type, in wire order.
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Image,
        ResourceType::Font,
        ResourceType::Media,
        ResourceType::Stylesheet,
    ];

    /// The snake_case name used on the wire (and in the configuration).
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Image => "image",
            ResourceType::Font => "font",
            ResourceType::Media => "media",
            ResourceType::Stylesheet => "stylesheet",
        }
    }
}

/// A request in a contract version this crate does not speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unsupported contract version {version}: this crawler speaks version {CONTRACT_VERSION}")]
pub struct UnsupportedVersion {
    /// The version the request carried.
    pub version: u32,
}

/// What a crawler reports for one page attempt: the callback body.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Contract version: 1 ([`CONTRACT_VERSION`]).
    pub version: u32,
    /// Echoed from the request.
    pub run_id: String,
    /// Echoed from the request.
    pub page_id: String,
    /// Echoed from the request.
    pub attempt: u32,
    /// `succeeded` with the page's facts, or `failed` with an error.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Report {
    /// A report for `request` with the given outcome, ids echoed and the
    /// version set to [`CONTRACT_VERSION`].
    pub fn for_request(request: &CrawlRequest, outcome: Outcome) -> Self {
        Self {
            version: CONTRACT_VERSION,
            run_id: request.run_id.clone(),
            page_id: request.page_id.clone(),
            attempt: request.attempt,
            outcome,
        }
    }
}

/// The result of one page attempt, tagged by the `outcome` key.
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(as = ReportOutcome)
)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The page was fetched (2xx) and the fields extracted.
    Succeeded(PageFacts),
    /// The page could not be crawled.
    Failed {
        /// What went wrong and whether retrying may help.
        error: CrawlError,
    },
}

/// What a successful crawl learned about a page.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageFacts {
    /// The final HTTP status (after redirects).
    pub http_status: u16,
    /// Text of the page's `<title>`, trimmed; null when there is none.
    #[serde(default)]
    pub title: Option<String>,
    /// Field name -> its value: a string, a number, an array (`all`) or
    /// null when nothing matched. A crawler that only extracts text sends
    /// strings and nulls.
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
    /// Size of the body in bytes.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the body.
    pub content_sha256: String,
    /// Milliseconds from request start to the end of the body.
    pub fetch_ms: u64,
    /// Whether the page was fetched through the event's proxy (with `proxy`
    /// `on = "blocked"`, only after the site refused the direct fetch).
    /// Absent means false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub via_proxy: bool,
    /// The page's links, when the request asked for them
    /// ([`CrawlRequest::links`]): absolute http(s) URLs (resolved against
    /// the page's final URL or its `<base href>`), without fragment, scheme
    /// and host lowercased, default port removed, each once, in document
    /// order. Absent when none were asked for or found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// Whether the page was rendered in a browser (the request's `render`);
    /// the fields were then read from the rendered document. Absent means
    /// false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rendered: bool,
    /// The plain fetch's verdict: a field found nothing and the document
    /// looks like an app shell that scripts fill in (little text, an empty
    /// root element, mostly scripts). Only set on pages that were not
    /// rendered; absent means false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub looks_unrendered: bool,
    /// Rendered pages only: the document as served, before any script ran,
    /// would not have looked unrendered (the plain fetch's verdict above
    /// is false for it), so a plain fetch would have found the same. With
    /// `render = "auto"` a host whose rendered pages all say so stops
    /// going to the browser. Absent means false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub served_sufficed: bool,
    /// The response's `ETag`, when it sent one (at most
    /// [`MAX_VALIDATOR_BYTES`]); the daemon sends it back as the next run's
    /// [`CrawlRequest::if_none_match`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The response's `Last-Modified`, when it sent one (at most
    /// [`MAX_VALIDATOR_BYTES`]); sent back as the next run's
    /// [`CrawlRequest::if_modified_since`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// The site answered `304 Not Modified` to the request's validators:
    /// there was no body and nothing was extracted (`http_status` 304,
    /// `title` null, `fields` empty, `bytes` 0, `content_sha256` empty);
    /// the daemon keeps the previous run's facts. Absent means false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_modified: bool,
}

/// The longest `ETag` or `Last-Modified` a crawler reports (longer ones are
/// left out: the page is then fetched in full next time).
pub const MAX_VALIDATOR_BYTES: usize = 512;

impl PageFacts {
    /// The facts of a `304 Not Modified` answer: nothing but the status,
    /// the time it took, the route and the validators it carried.
    pub fn not_modified(fetch_ms: u64, via_proxy: bool) -> Self {
        Self {
            http_status: 304,
            title: None,
            fields: BTreeMap::new(),
            bytes: 0,
            content_sha256: String::new(),
            fetch_ms,
            via_proxy,
            links: Vec::new(),
            rendered: false,
            looks_unrendered: false,
            served_sufficed: false,
            etag: None,
            last_modified: None,
            not_modified: true,
        }
    }
}

/// Why a crawl failed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrawlError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// A human-readable explanation naming the culprit.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// The site's HTTP status, for an `http_status` error. A retryable 429
    /// or 503 tells the daemon the site is throttling: it slows down for
    /// that host and retries without using up an attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The site's `Retry-After`, in seconds (an HTTP date is turned into
    /// the seconds until it), when it sent one with a 429 or 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

/// Classes of crawl failure. Unknown kinds sent by other crawlers are read as
/// `other` ([`ErrorKind::Other`]).
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(as = CrawlErrorKind)
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The fetch did not finish in time.
    Timeout,
    /// The host name did not resolve.
    Dns,
    /// The connection was refused or reset.
    Connect,
    /// The TLS handshake or certificate failed.
    Tls,
    /// The server answered with a non-2xx status.
    HttpStatus,
    /// The body was larger than the crawler's cap.
    TooLarge,
    /// Too many redirects, or a redirect loop.
    Redirect,
    /// The URL could not be fetched as given (bad scheme, bad syntax).
    InvalidUrl,
    /// The body could not be read or decoded.
    Body,
    /// A configured selector is not valid CSS.
    InvalidSelector,
    /// The URL (or a redirect hop) leads to a loopback, private, link-local
    /// or otherwise non-public address, and private networks are closed.
    Blocked,
    /// Anything else.
    #[serde(other)]
    Other,
}

impl CrawlError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            kind,
            message: message.into(),
            retryable,
            http_status: None,
            retry_after_secs: None,
        }
    }
}

impl std::fmt::Display for CrawlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let retry = if self.retryable {
            "retryable"
        } else {
            "not retryable"
        };
        write!(f, "{}: {} ({retry})", self.kind, self.message)
    }
}

impl std::error::Error for CrawlError {}

impl Outcome {
    /// A failed outcome.
    pub fn failed(kind: ErrorKind, message: impl Into<String>, retryable: bool) -> Self {
        Outcome::Failed {
            error: CrawlError::new(kind, message, retryable),
        }
    }

    /// The error, when the crawl failed.
    pub fn error(&self) -> Option<&CrawlError> {
        match self {
            Outcome::Succeeded(_) => None,
            Outcome::Failed { error } => Some(error),
        }
    }

    /// The page's facts, when the crawl succeeded.
    pub fn facts(&self) -> Option<&PageFacts> {
        match self {
            Outcome::Succeeded(facts) => Some(facts),
            Outcome::Failed { .. } => None,
        }
    }

    /// `"succeeded"` or `"failed"`, as on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Succeeded(_) => "succeeded",
            Outcome::Failed { .. } => "failed",
        }
    }
}

impl ErrorKind {
    /// Every kind, in the order declared (`Other` last).
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::Timeout,
        ErrorKind::Dns,
        ErrorKind::Connect,
        ErrorKind::Tls,
        ErrorKind::HttpStatus,
        ErrorKind::TooLarge,
        ErrorKind::Redirect,
        ErrorKind::InvalidUrl,
        ErrorKind::Body,
        ErrorKind::InvalidSelector,
        ErrorKind::Blocked,
        ErrorKind::Other,
    ];

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Dns => "dns",
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Redirect => "redirect",
            ErrorKind::InvalidUrl => "invalid_url",
            ErrorKind::Body => "body",
            ErrorKind::InvalidSelector => "invalid_selector",
            ErrorKind::Blocked => "blocked",
            ErrorKind::Other => "other",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The daemon's answer to an accepted callback.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackStatus {
    /// This report moved the page to a terminal state.
    Recorded,
    /// The page was already terminal; nothing changed.
    Duplicate,
}

/// Body of a 200 answer to `POST /v1/callbacks`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackAck {
    /// Recorded or duplicate.
    pub status: CallbackStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &str = r#"{"version":1,"run_id":"r-1","page_id":"p-1","attempt":1,"url":"https://shop.example.com/item/1","extract":{"price":".price"},"callback_url":"https://fanfare.example.com/v1/callbacks","callback_token":"tok","deadline":"2026-11-26T03:05:00Z"}"#;

    fn request() -> CrawlRequest {
        serde_json::from_str(REQUEST).expect("the documented request parses")
    }

    #[test]
    fn request_round_trips_to_the_documented_json() {
        let request = request();
        assert_eq!(request.extract["price"], FieldSpec::from(".price"));
        assert_eq!(serde_json::to_string(&request).unwrap(), REQUEST);
    }

    #[test]
    fn field_tables_serialize_as_objects_beside_plain_selectors() {
        let json = r##"{"version":1,"run_id":"r-1","page_id":"p-1","attempt":1,"url":"https://shop.example.com/item/1","extract":{"next":{"css":"a.next","attr":"href"},"price":{"jsonld":"Product.offers.price","type":"number"},"tags":{"css":".tag","all":true,"regex":"#(\\w+)"},"title":"h1"},"callback_url":"https://fanfare.example.com/v1/callbacks","callback_token":"tok","deadline":"2026-11-26T03:05:00Z"}"##;
        let request: CrawlRequest = serde_json::from_str(json).unwrap();
        assert_eq!(request.extract["title"], FieldSpec::from("h1"));
        assert_eq!(
            request.extract["price"],
            FieldSpec::Table(FieldTable {
                jsonld: Some("Product.offers.price".into()),
                value_type: Some(ValueType::Number),
                ..FieldTable::default()
            })
        );
        let FieldSpec::Table(tags) = &request.extract["tags"] else {
            panic!("a table")
        };
        assert!(tags.all);
        assert_eq!(tags.regex.as_deref(), Some("#(\\w+)"));
        assert_eq!(serde_json::to_string(&request).unwrap(), json);
    }

    #[test]
    fn typed_field_values_round_trip_and_text_only_reports_still_parse() {
        let json = r#"{"version":1,"run_id":"r","page_id":"p","attempt":1,"outcome":"succeeded","http_status":200,"title":null,"fields":{"a":"9.99","b":null},"bytes":1,"content_sha256":"00","fetch_ms":1}"#;
        let report: Report = serde_json::from_str(json).unwrap();
        let facts = report.outcome.facts().unwrap();
        assert_eq!(facts.fields["a"], "9.99");
        assert_eq!(facts.fields["b"], Value::Null);
        assert_eq!(serde_json::to_string(&report).unwrap(), json);

        let typed = r#"{"version":1,"run_id":"r","page_id":"p","attempt":1,"outcome":"succeeded","http_status":200,"title":"T","fields":{"price":1299,"rating":4.4,"tags":["a","b"]},"bytes":1,"content_sha256":"00","fetch_ms":1}"#;
        let report: Report = serde_json::from_str(typed).unwrap();
        assert_eq!(report.outcome.facts().unwrap().fields["price"], 1299);
        assert_eq!(serde_json::to_string(&report).unwrap(), typed);
    }

    #[test]
    fn table_keys_and_type_words_are_the_names_on_the_wire() {
        let full = FieldTable {
            css: Some("a".into()),
            meta: Some("m".into()),
            jsonld: Some("j".into()),
            attr: Some("href".into()),
            all: true,
            value_type: Some(ValueType::Number),
            regex: Some("r".into()),
        };
        let json = serde_json::to_value(&full).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut documented = FieldTable::KEYS.to_vec();
        keys.sort_unstable();
        documented.sort_unstable();
        assert_eq!(keys, documented);
        for t in [ValueType::Text, ValueType::Number] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        assert_eq!(ValueType::WORDS, ["text", "number"]);
    }

    #[test]
    fn field_values_are_the_same_by_their_text() {
        use serde_json::json;
        assert!(same_field_value(&json!(1299), &json!("1299")));
        assert!(same_field_value(&json!(9.99), &json!("9.99")));
        assert!(same_field_value(&json!([1, "b"]), &json!(["1", "b"])));
        assert!(same_field_value(&Value::Null, &Value::Null));
        assert!(!same_field_value(&json!(1299), &json!(1399)));
        assert!(!same_field_value(&json!(1299), &Value::Null));
        assert!(!same_field_value(&json!(["a"]), &json!("a")));
        assert!(!same_field_value(&json!("null"), &Value::Null));
        assert_eq!(field_text(&json!(["a", 1])).as_deref(), Some(r#"["a",1]"#));
        assert_eq!(field_text(&json!("x")).as_deref(), Some("x"));
        assert_eq!(field_text(&Value::Null), None);
    }

    #[test]
    fn request_without_extract_has_no_fields_to_extract() {
        let json = r#"{"version":1,"run_id":"r","page_id":"p","attempt":2,"url":"https://a.example/","callback_url":"https://d.example/v1/callbacks","callback_token":"t","deadline":"2026-11-26T03:05:00Z"}"#;
        let request: CrawlRequest = serde_json::from_str(json).unwrap();
        assert!(request.extract.is_empty());
        assert_eq!(request.attempt, 2);
    }

    #[test]
    fn succeeded_report_serializes_to_the_documented_json() {
        let facts = PageFacts {
            http_status: 200,
            title: Some("Item 1".into()),
            fields: BTreeMap::from([("price".to_string(), Value::from("9.99"))]),
            bytes: 18211,
            content_sha256: "ab12".into(),
            fetch_ms: 212,
            via_proxy: false,
            links: Vec::new(),
            rendered: false,
            looks_unrendered: false,
            served_sufficed: false,
            etag: None,
            last_modified: None,
            not_modified: false,
        };
        let report = Report::for_request(&request(), Outcome::Succeeded(facts));
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"run_id":"r-1","page_id":"p-1","attempt":1,"outcome":"succeeded","http_status":200,"title":"Item 1","fields":{"price":"9.99"},"bytes":18211,"content_sha256":"ab12","fetch_ms":212}"#
        );
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    }

    #[test]
    fn failed_report_serializes_to_the_documented_json() {
        let report = Report::for_request(
            &request(),
            Outcome::failed(ErrorKind::Timeout, "no answer in 30s", true),
        );
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"run_id":"r-1","page_id":"p-1","attempt":1,"outcome":"failed","error":{"kind":"timeout","message":"no answer in 30s","retryable":true}}"#
        );
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    }

    #[test]
    fn unknown_error_kind_is_read_as_other() {
        let json = r#"{"version":1,"run_id":"r","page_id":"p","attempt":1,"outcome":"failed","error":{"kind":"captcha","message":"blocked","retryable":false}}"#;
        let report: Report = serde_json::from_str(json).unwrap();
        let error = report.outcome.error().expect("a failed outcome");
        assert_eq!(error.kind, ErrorKind::Other);
        assert_eq!(error.message, "blocked");
        assert!(!error.retryable);
    }

    #[test]
    fn report_without_outcome_does_not_deserialize() {
        let json = r#"{"version":1,"run_id":"r","page_id":"p","attempt":1,"http_status":200,"fields":{},"bytes":1,"content_sha256":"00","fetch_ms":1}"#;
        assert!(serde_json::from_str::<Report>(json).is_err());
    }

    #[test]
    fn every_error_kind_name_matches_its_wire_name() {
        for kind in ErrorKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.as_str().to_string())
            );
        }
    }

    #[test]
    fn request_debug_output_hides_the_callback_token() {
        let mut request = request();
        request.callback_token = "s3cr3t-token".into();
        let debug = format!("{request:?}");
        assert!(!debug.contains("s3cr3t-token"), "{debug}");
        assert!(debug.contains("[redacted]"));
    }

    #[test]
    fn request_debug_output_hides_the_proxy_password() {
        let json = REQUEST.replace(
            r#""deadline""#,
            r#""proxy":{"url":"http://bob:pr0xy-s3cret@proxy.example:8080","on":"blocked"},"deadline""#,
        );
        let request: CrawlRequest = serde_json::from_str(&json).unwrap();
        let debug = format!("{request:?}");
        assert!(!debug.contains("pr0xy-s3cret"), "{debug}");
        assert!(
            debug.contains("bob:[redacted]@proxy.example:8080"),
            "{debug}"
        );
        // The wire keeps the credentials: the crawler needs them.
        assert!(serde_json::to_string(&request)
            .unwrap()
            .contains("pr0xy-s3cret"));
    }

    #[test]
    fn request_in_another_contract_version_is_refused_naming_the_version() {
        let mut request = request();
        assert!(request.check_version().is_ok());
        request.version = 2;
        let error = request.check_version().unwrap_err();
        assert_eq!(error.version, 2);
        assert!(error.to_string().contains("version 2"), "{error}");
    }

    #[test]
    fn render_request_round_trips_and_old_requests_have_none() {
        assert_eq!(request().render, None);
        let json = REQUEST.replace(
            r#""deadline""#,
            r##""render":{"wait_for":"#price","block":["image","font"],"timeout_ms":20000},"deadline""##,
        );
        let request: CrawlRequest = serde_json::from_str(&json).unwrap();
        let render = request.render.as_ref().expect("render is read");
        assert_eq!(render.wait_for.as_deref(), Some("#price"));
        assert_eq!(render.block, [ResourceType::Image, ResourceType::Font]);
        assert_eq!(render.timeout_ms, 20_000);
        assert_eq!(serde_json::to_string(&request).unwrap(), json);
        for kind in ResourceType::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.as_str().to_string())
            );
        }
    }

    #[test]
    fn rendered_and_looks_unrendered_are_sent_only_when_true() {
        let json = r#"{"version":1,"run_id":"r","page_id":"p","attempt":1,"outcome":"succeeded","http_status":200,"title":null,"fields":{},"bytes":1,"content_sha256":"00","fetch_ms":1,"rendered":true}"#;
        let report: Report = serde_json::from_str(json).unwrap();
        let facts = report.outcome.facts().unwrap();
        assert!(facts.rendered && !facts.looks_unrendered);
        assert_eq!(serde_json::to_string(&report).unwrap(), json);
    }

    #[test]
    fn validators_round_trip_and_old_requests_and_reports_have_none() {
        assert_eq!(request().if_none_match, None);
        assert_eq!(request().if_modified_since, None);
        let json = REQUEST.replace(
            r#","deadline":"2026-11-26T03:05:00Z""#,
            r#","deadline":"2026-11-26T03:05:00Z","if_none_match":"\"v1\"","if_modified_since":"Wed, 21 Oct 2026 07:28:00 GMT""#,
        );
        let request: CrawlRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(request.if_none_match.as_deref(), Some("\"v1\""));
        assert_eq!(
            request.if_modified_since.as_deref(),
            Some("Wed, 21 Oct 2026 07:28:00 GMT")
        );
        assert_eq!(serde_json::to_string(&request).unwrap(), json);

        let old = r#"{"version":1,"run_id":"r","page_id":"p","attempt":1,"outcome":"succeeded","http_status":200,"title":null,"fields":{},"bytes":1,"content_sha256":"00","fetch_ms":1}"#;
        let facts = serde_json::from_str::<Report>(old).unwrap().outcome;
        let facts = facts.facts().unwrap();
        assert!(facts.etag.is_none() && facts.last_modified.is_none() && !facts.not_modified);

        let report = Report::for_request(
            &request,
            Outcome::Succeeded(PageFacts {
                etag: Some("\"v1\"".into()),
                ..PageFacts::not_modified(3, false)
            }),
        );
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"run_id":"r-1","page_id":"p-1","attempt":1,"outcome":"succeeded","http_status":304,"title":null,"fields":{},"bytes":0,"content_sha256":"","fetch_ms":3,"etag":"\"v1\"","not_modified":true}"#
        );
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    }

    #[test]
    fn callback_ack_parses_recorded_and_duplicate() {
        let ack: CallbackAck = serde_json::from_str(r#"{"status":"recorded"}"#).unwrap();
        assert_eq!(ack.status, CallbackStatus::Recorded);
        let ack: CallbackAck = serde_json::from_str(r#"{"status":"duplicate"}"#).unwrap();
        assert_eq!(ack.status, CallbackStatus::Duplicate);
    }
}
