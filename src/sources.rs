//! Page sources: where a run's list of pages comes from.
//!
//! A source is read as a stream of batches that reach the ledger while the
//! source is still being read, so a long list is never held whole in memory:
//! documents (a sitemap, a JSON list, a lister's answer) are parsed on a
//! blocking thread **as they arrive** (a bounded channel of network chunks
//! feeds a [`std::io::Read`], through a gzip decoder when the document is
//! gzip data), which hands on a batch every few thousand URLs. Memory is
//! O(chunk + batch), not O(document). Entries that are not http(s) URLs are
//! counted and skipped (the first few are kept as examples and logged);
//! duplicate URLs are dropped by the ledger; a list longer than the
//! schedule's `max_pages` fails the run.
//!
//! Page sources are third-party input, so every listing is bounded:
//!
//! - one document is at most the schedule's `max_document_bytes` (50 MiB by
//!   default, the sitemaps.org limit) after decompression;
//! - a sitemap URL is fetched at most once per listing; an index naming
//!   itself or an index above it is a loop and fails the listing; other
//!   repeats are skipped and counted;
//! - an index names at most 50,000 sitemaps (sitemaps.org), nesting is at
//!   most [`MAX_SITEMAP_DEPTH`] deep, and one listing reads at most
//!   [`MAX_SITEMAP_FILES`] sitemap files (counted when queued, so an index
//!   naming too many fails before any of them is fetched);
//! - child sitemaps must be on the root sitemap's host (sitemaps.org) unless
//!   the schedule sets `sitemap_any_host`; others are skipped and counted;
//! - every fetch goes through the network guard
//!   ([`fanfare_crawler::netguard`]): a source on a private network fails
//!   the run as `blocked` unless `[security] allow_private_networks`.
//!
//! Source URLs in logs and errors go through [`crate::redact::url`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use fanfare_crawler::netguard::{self, NetPolicy};
use futures::StreamExt;
use quick_xml::events::Event;
use serde::de::{self, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use url::Url;

use crate::config::{PageSource, Schedule, DEFAULT_MAX_DOCUMENT_BYTES};
use crate::lambda::LambdaApi;
use crate::ledger::INSERT_BATCH;
use crate::redact;

/// How deep sitemap indexes may nest.
pub const MAX_SITEMAP_DEPTH: usize = 4;
/// How many sitemap files one listing may read, the root included.
///
/// sitemaps.org allows 50,000 sitemaps per index, but one listing never
/// needs that many: 1,000 files of up to 50,000 URLs each is 50 million
/// URLs, fifty times the default `max_pages`. A tree naming more is broken
/// or hostile; reading 50,000 files of up to 50 MiB each would hold a
/// listing (and its lease) for hours.
pub const MAX_SITEMAP_FILES: usize = 1_000;
/// URLs one sitemap file may hold, and sitemaps one index may name
/// (sitemaps.org).
pub const SITEMAP_URL_LIMIT: usize = 50_000;
/// Invalid entries (and foreign child sitemaps) kept as examples.
const INVALID_EXAMPLES: usize = 5;
/// Network chunks buffered between the fetch and the parser.
const CHUNKS_IN_FLIGHT: usize = 8;
/// Redirects a source fetch follows.
pub const MAX_REDIRECTS: usize = 5;

/// Why a page list could not be read; the run fails with this message.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Fetching the list failed.
    #[error("fetching {url}: {message}")]
    Fetch {
        /// What was fetched (redacted).
        url: String,
        /// Why it failed.
        message: String,
    },
    /// The list is not of the expected shape.
    #[error("reading {url}: {message}")]
    Parse {
        /// What was read (redacted).
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The lister Lambda failed.
    #[error("lister function {function}: {message}")]
    Lister {
        /// The function.
        function: String,
        /// Its error.
        message: String,
    },
    /// More URLs than the schedule allows.
    #[error("the page list has more than {0} URLs (the schedule's max_pages)")]
    TooMany(usize),
    /// The consumer stopped (shutdown).
    #[error("listing was interrupted")]
    Interrupted,
}

/// What a listing read.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ListStats {
    /// Valid URLs passed on (duplicates included).
    pub urls: usize,
    /// Entries skipped as not being http(s) URLs.
    pub invalid: usize,
    /// The first few of them.
    pub invalid_examples: Vec<String>,
    /// Sitemap files with more than 50,000 URLs (read anyway).
    pub oversized_sitemaps: usize,
    /// Sitemap files read (the root included).
    pub sitemap_files: usize,
    /// Child sitemaps skipped because an index of this listing had already
    /// named them.
    pub repeated_sitemaps: usize,
    /// Child sitemaps skipped because they are not on the root sitemap's
    /// host (and the schedule does not set `sitemap_any_host`).
    pub foreign_sitemaps: usize,
    /// The first few of them (redacted).
    pub foreign_sitemap_examples: Vec<String>,
}

/// The schedule's bounds on one listing.
#[derive(Debug, Clone, Copy)]
pub struct ListLimits {
    /// More URLs than this fail the run.
    pub max_pages: usize,
    /// The largest document read, after decompression.
    pub max_document_bytes: usize,
    /// Child sitemaps may be on any host.
    pub sitemap_any_host: bool,
}

impl ListLimits {
    /// The limits `schedule` sets.
    pub fn of(schedule: &Schedule) -> Self {
        Self {
            max_pages: schedule.max_pages,
            max_document_bytes: schedule.max_document_bytes,
            sitemap_any_host: schedule.sitemap_any_host,
        }
    }

    /// `max_pages` with the defaults for the rest.
    pub fn pages(max_pages: usize) -> Self {
        Self {
            max_pages,
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            sitemap_any_host: false,
        }
    }
}

/// Reads page sources into batches.
#[derive(Clone)]
pub struct Lister {
    http: reqwest::Client,
    policy: NetPolicy,
    lambda: Option<Arc<dyn LambdaApi>>,
}

/// Validates entries and hands them on in batches; used from a blocking
/// thread.
struct Batcher {
    tx: mpsc::Sender<Vec<String>>,
    batch: Vec<String>,
    stats: ListStats,
    max_pages: usize,
    source: String,
}

impl Batcher {
    fn push(&mut self, raw: &str) -> Result<(), SourceError> {
        let raw = raw.trim();
        match Url::parse(raw) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                self.stats.urls += 1;
                if self.stats.urls > self.max_pages {
                    return Err(SourceError::TooMany(self.max_pages));
                }
                self.batch.push(u.to_string());
                if self.batch.len() >= INSERT_BATCH {
                    self.flush()?;
                }
            }
            _ => self.skip(raw),
        }
        Ok(())
    }

    /// Counts an entry that is not a URL; `example` describes it.
    fn skip(&mut self, example: &str) {
        self.stats.invalid += 1;
        if self.stats.invalid_examples.len() < INVALID_EXAMPLES {
            let example: String = example.chars().take(200).collect();
            tracing::warn!(source = %self.source, entry = %example, "skipping an entry that is not an http(s) URL");
            self.stats.invalid_examples.push(example);
        }
    }

    fn flush(&mut self) -> Result<(), SourceError> {
        if !self.batch.is_empty() {
            let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(INSERT_BATCH));
            self.tx
                .blocking_send(batch)
                .map_err(|_| SourceError::Interrupted)?;
        }
        Ok(())
    }
}

/// Runs `work` on a blocking thread with the batcher, and gives it back.
async fn blocking<F>(mut out: Batcher, work: F) -> Result<Batcher, SourceError>
where
    F: FnOnce(&mut Batcher) -> Result<(), SourceError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || work(&mut out).map(|()| out))
        .await
        .map_err(|e| SourceError::Parse {
            url: "the page list".into(),
            message: format!("the parser failed: {e}"),
        })?
}

/// Why a document stream stopped early; the parser's own error (which wraps
/// the I/O error) says less.
type StreamFailure = Arc<Mutex<Option<String>>>;

/// A [`Read`] over network chunks handed in through a channel (on a
/// blocking thread).
struct ChunkReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
    failure: StreamFailure,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(message)) => {
                    *self.failure.lock().unwrap() = Some(message.clone());
                    return Err(std::io::Error::other(message));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// A [`Read`] that fails once more than `cap` bytes came through.
struct Capped<R> {
    inner: R,
    read: usize,
    cap: usize,
    what: &'static str,
    failure: StreamFailure,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n;
        if self.read > self.cap {
            let message = format!(
                "larger than {} bytes{} (the schedule's max_document_bytes)",
                self.cap, self.what
            );
            *self.failure.lock().unwrap() = Some(message.clone());
            return Err(std::io::Error::other(message));
        }
        Ok(n)
    }
}

/// `raw` as a buffered reader of the document: gunzipped when it is gzip
/// data (a `.xml.gz` sitemap; a `Content-Encoding` was already decoded by
/// the client), capped at `cap` bytes before and after decompression.
fn document(
    raw: impl Read + Send + 'static,
    cap: usize,
    failure: &StreamFailure,
) -> Box<dyn BufRead + Send> {
    let mut raw = BufReader::with_capacity(
        64 * 1024,
        Capped {
            inner: raw,
            read: 0,
            cap,
            what: "",
            failure: failure.clone(),
        },
    );
    // `fill_buf` may return fewer than two bytes at a chunk's end; a gzip
    // stream split after its first byte is read as plain text and fails to
    // parse, which is what a one-byte first chunk deserves.
    let gzip = matches!(raw.fill_buf(), Ok(head) if head.starts_with(&[0x1f, 0x8b]));
    if gzip {
        Box::new(BufReader::with_capacity(
            64 * 1024,
            Capped {
                inner: flate2::bufread::MultiGzDecoder::new(raw),
                read: 0,
                cap,
                what: " uncompressed",
                failure: failure.clone(),
            },
        ))
    } else {
        Box::new(raw)
    }
}

impl Lister {
    /// A lister fetching with `http`; `lambda` serves `pages = { lambda = … }`.
    /// Private networks are closed (see [`Lister::with_policy`]).
    pub fn new(http: reqwest::Client, lambda: Option<Arc<dyn LambdaApi>>) -> Self {
        Self {
            http,
            policy: NetPolicy::closed(),
            lambda,
        }
    }

    /// This lister, checking source URLs against `policy` (the same policy
    /// `http` was built with, see [`NetPolicy::apply`]).
    pub fn with_policy(mut self, policy: NetPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The HTTP client sources are fetched with (the network guard applied).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The network policy the client was built with.
    pub fn policy(&self) -> &NetPolicy {
        &self.policy
    }

    /// Reads `source`, sending batches of valid URLs to `tx`; fails past
    /// `limits.max_pages` URLs.
    pub async fn list(
        &self,
        source: &PageSource,
        limits: ListLimits,
        tx: mpsc::Sender<Vec<String>>,
    ) -> Result<ListStats, SourceError> {
        let mut out = Batcher {
            tx,
            batch: Vec::with_capacity(INSERT_BATCH),
            stats: ListStats::default(),
            max_pages: limits.max_pages,
            source: describe(source),
        };
        match source {
            PageSource::Urls(urls) => {
                let urls = urls.clone();
                out = blocking(out, move |out| urls.iter().try_for_each(|u| out.push(u))).await?;
            }
            PageSource::Http(url) => {
                let what = redact::url(url);
                out = self
                    .stream(url, limits.max_document_bytes, out, move |doc, out| {
                        json_list(doc, &what, out)
                    })
                    .await?
                    .0;
            }
            PageSource::Sitemap(url) => out = self.sitemap(url.clone(), limits, out).await?,
            PageSource::Lambda { function, payload } => {
                let lambda = self.lambda.as_ref().ok_or_else(|| SourceError::Lister {
                    function: function.clone(),
                    message: "no Lambda client is configured".into(),
                })?;
                let body = lambda
                    .invoke_sync(function, serde_json::to_vec(payload).unwrap_or_default())
                    .await
                    .map_err(|message| SourceError::Lister {
                        function: function.clone(),
                        message,
                    })?;
                let what = format!("the answer of lister function {function}");
                let cap = limits.max_document_bytes;
                out = blocking(out, move |out| {
                    let failure = StreamFailure::default();
                    let doc = document(std::io::Cursor::new(body), cap, &failure);
                    json_list(doc, &what, out).map_err(|e| match failure.lock().unwrap().take() {
                        Some(message) => SourceError::Parse {
                            url: what.clone(),
                            message,
                        },
                        None => e,
                    })
                })
                .await?;
            }
        }
        out = blocking(out, |out| out.flush()).await?;
        if out.stats.invalid > 0 {
            tracing::warn!(source = %out.source, invalid = out.stats.invalid, "skipped invalid entries in the page list");
        }
        Ok(out.stats)
    }

    /// Fetches `url` and runs `parse` on its body as it streams in, on a
    /// blocking thread; gives back the batcher and what `parse` returned.
    async fn stream<T, F>(
        &self,
        url: &Url,
        cap: usize,
        out: Batcher,
        parse: F,
    ) -> Result<(Batcher, T), SourceError>
    where
        T: Send + 'static,
        F: FnOnce(Box<dyn BufRead + Send>, &mut Batcher) -> Result<T, SourceError> + Send + 'static,
    {
        let shown = redact::url(url);
        let fetch = |message: String| SourceError::Fetch {
            url: shown.clone(),
            message,
        };
        self.policy
            .check_url(url)
            .map_err(|b| fetch(format!("blocked: {b}")))?;
        let resp = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| fetch(request_error(e)))?;
        if !resp.status().is_success() {
            return Err(fetch(format!("HTTP {}", resp.status())));
        }
        if resp.content_length().is_some_and(|n| n > cap as u64) {
            return Err(fetch(format!(
                "larger than {cap} bytes (the schedule's max_document_bytes)"
            )));
        }
        let (chunks_tx, chunks_rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let pump = async move {
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(request_error);
                let stop = chunk.is_err();
                if chunks_tx.send(chunk).await.is_err() || stop {
                    break;
                }
            }
        };
        let failure = StreamFailure::default();
        let seen = failure.clone();
        let parser = tokio::task::spawn_blocking(move || {
            let mut out = out;
            let reader = ChunkReader {
                rx: chunks_rx,
                current: Bytes::new(),
                failure: seen.clone(),
            };
            let doc = document(reader, cap, &seen);
            parse(doc, &mut out).map(|t| (out, t))
        });
        let ((), parsed) = tokio::join!(pump, parser);
        let parsed = parsed.map_err(|e| SourceError::Parse {
            url: shown.clone(),
            message: format!("the parser failed: {e}"),
        })?;
        match parsed {
            Err(SourceError::Parse { .. }) if failure.lock().unwrap().is_some() => {
                Err(fetch(failure.lock().unwrap().take().unwrap_or_default()))
            }
            other => other,
        }
    }

    /// A sitemap or sitemap index (nested up to a few levels).
    async fn sitemap(
        &self,
        root: Url,
        limits: ListLimits,
        mut out: Batcher,
    ) -> Result<Batcher, SourceError> {
        let root_host = root.host_str().unwrap_or_default().to_string();
        // Every sitemap queued, with the index that named it (loops are
        // found by walking up).
        let mut parents: HashMap<String, Option<String>> = HashMap::new();
        parents.insert(root.to_string(), None);
        let mut queue = VecDeque::from([(root, 0usize)]);
        while let Some((url, depth)) = queue.pop_front() {
            let what = redact::url(&url);
            let cap = limits.max_document_bytes;
            let (batcher, children) = self
                .stream(&url, cap, out, move |doc, out| {
                    let mut children = Vec::new();
                    read_sitemap(doc, &what, out, &mut children).map(|()| children)
                })
                .await?;
            out = batcher;
            out.stats.sitemap_files += 1;
            let what = redact::url(&url);
            if !children.is_empty() && depth >= MAX_SITEMAP_DEPTH {
                return Err(SourceError::Parse {
                    url: what,
                    message: format!("sitemap indexes nest deeper than {MAX_SITEMAP_DEPTH}"),
                });
            }
            let mut named_here = HashSet::new();
            for child in children {
                let Ok(child) = Url::parse(child.trim()) else {
                    out.skip(&child);
                    continue;
                };
                if !matches!(child.scheme(), "http" | "https") {
                    out.skip(child.as_str());
                    continue;
                }
                let key = child.to_string();
                if is_ancestor(&parents, url.as_str(), &key) {
                    return Err(SourceError::Parse {
                        url: what,
                        message: format!(
                            "the sitemap index names {} again, a loop (each sitemap is read at most once per listing)",
                            if key == url.as_str() { "itself".to_string() } else { format!("an index above it, {}", redact::url(&child)) }
                        ),
                    });
                }
                if parents.contains_key(&key) || !named_here.insert(key.clone()) {
                    out.stats.repeated_sitemaps += 1;
                    continue;
                }
                if !limits.sitemap_any_host && child.host_str().unwrap_or_default() != root_host {
                    out.stats.foreign_sitemaps += 1;
                    if out.stats.foreign_sitemap_examples.len() < INVALID_EXAMPLES {
                        let shown = redact::url(&child);
                        tracing::warn!(source = %out.source, sitemap = %shown, "skipping a child sitemap on another host than the root sitemap (sitemap_any_host is off)");
                        out.stats.foreign_sitemap_examples.push(shown);
                    }
                    continue;
                }
                if parents.len() >= MAX_SITEMAP_FILES {
                    return Err(SourceError::Parse {
                        url: what,
                        message: format!(
                            "the sitemap index tree names more than {MAX_SITEMAP_FILES} sitemap files (the limit of one listing)"
                        ),
                    });
                }
                parents.insert(key, Some(url.to_string()));
                queue.push_back((child, depth + 1));
            }
        }
        Ok(out)
    }
}

/// Whether `candidate` is `from` or an index above it.
fn is_ancestor(parents: &HashMap<String, Option<String>>, from: &str, candidate: &str) -> bool {
    let mut current = Some(from.to_string());
    while let Some(at) = current {
        if at == candidate {
            return true;
        }
        current = parents.get(&at).cloned().flatten();
    }
    false
}

/// The message of a source fetch's error: the guard's refusal when there
/// is one, else the error chain (without the URL, which is shown redacted).
fn request_error(e: reqwest::Error) -> String {
    if let Some(b) = netguard::find_blocked(&e) {
        return format!("blocked: {b}");
    }
    crate::telemetry::error_chain(&e.without_url())
}

/// One element of a JSON page list: a URL, or what it was instead. Reading
/// it never builds a generic JSON value: strings are kept, an object's
/// `url` string is kept and everything else is skipped as it is read.
enum Entry {
    Url(String),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EntryVisitor)
    }
}

struct EntryVisitor;

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = Entry;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a URL or an object with a url")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Entry, E> {
        Ok(Entry::Url(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Entry, E> {
        Ok(Entry::Url(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Entry, E> {
        Ok(Entry::Other("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Entry, E> {
        Ok(Entry::Other("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Entry, E> {
        Ok(Entry::Other("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Entry, E> {
        Ok(Entry::Other("a number"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Entry, E> {
        Ok(Entry::Other("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entry, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Entry::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
        let mut url = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Url if url.is_none() => url = map.next_value::<MaybeString>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(url.map_or(Entry::Other("an object without a url string"), Entry::Url))
    }
}

/// An object key: `url` or another one (not kept).
enum Key {
    Url,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(if v == "url" { Key::Url } else { Key::Other })
            }
        }
        d.deserialize_str(V)
    }
}

/// A string, or `None` for any other value (skipped as it is read).
struct MaybeString(Option<String>);

impl<'de> Deserialize<'de> for MaybeString {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MaybeString, E> {
                Ok(MaybeString(Some(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<MaybeString, E> {
                Ok(MaybeString(Some(v)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<MaybeString, E> {
                Ok(MaybeString(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeString, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeString(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeString, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeString(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads a JSON array of URLs, or of objects with a `url`, element by
/// element as it streams from `doc`.
fn json_list(doc: impl Read, what: &str, out: &mut Batcher) -> Result<(), SourceError> {
    struct Elements<'a> {
        out: &'a mut Batcher,
        stop: &'a mut Option<SourceError>,
    }
    impl<'de> Visitor<'de> for Elements<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON array of URLs")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(item) = seq.next_element::<Entry>()? {
                match item {
                    Entry::Url(url) => {
                        if let Err(e) = self.out.push(&url) {
                            *self.stop = Some(e);
                            return Err(de::Error::custom("stopped"));
                        }
                    }
                    Entry::Other(what) => self.out.skip(what),
                }
            }
            Ok(())
        }
    }
    let parse = |message: String| SourceError::Parse {
        url: what.to_string(),
        message,
    };
    let mut stop = None;
    let mut de = serde_json::Deserializer::from_reader(doc);
    let read = de.deserialize_seq(Elements {
        out,
        stop: &mut stop,
    });
    if let Some(stop) = stop {
        return Err(stop);
    }
    read.map_err(|e| parse(format!("expected a JSON array of URLs: {e}")))?;
    de.end()
        .map_err(|e| parse(format!("trailing data after the array: {e}")))
}

/// Reads one sitemap file as it streams from `doc`: a `<urlset>`'s
/// `<loc>`s go to `out`, a `<sitemapindex>`'s to `children` (at most
/// 50,000).
fn read_sitemap(
    doc: impl BufRead,
    what: &str,
    out: &mut Batcher,
    children: &mut Vec<String>,
) -> Result<(), SourceError> {
    let mut in_file = 0usize;
    let parsed = parse_sitemap(doc, |k, loc| match k {
        SitemapKind::Urlset => {
            in_file += 1;
            out.push(loc)
        }
        SitemapKind::Index => {
            if children.len() >= SITEMAP_URL_LIMIT {
                return Err(SourceError::Parse {
                    url: what.to_string(),
                    message: format!(
                        "the sitemap index names more than {SITEMAP_URL_LIMIT} sitemaps (the sitemaps.org limit)"
                    ),
                });
            }
            children.push(loc.to_string());
            Ok(())
        }
    });
    match parsed {
        Ok(Ok(_)) => {}
        Ok(Err(stop)) => return Err(stop),
        Err(message) => {
            return Err(SourceError::Parse {
                url: what.to_string(),
                message,
            })
        }
    }
    if in_file > SITEMAP_URL_LIMIT {
        out.stats.oversized_sitemaps += 1;
        tracing::warn!(sitemap = %what, urls = in_file, "sitemap has more URLs than the 50,000 sitemaps.org allows; all were read");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SitemapKind {
    Urlset,
    Index,
}

/// Calls `each` with every `<loc>` of a sitemap (trimmed, entities
/// resolved) and whether it is an index; stops at the first `Err` of `each`.
/// The outer `Err` is a document that is not a sitemap.
fn parse_sitemap<E>(
    body: impl BufRead,
    mut each: impl FnMut(SitemapKind, &str) -> Result<(), E>,
) -> Result<Result<SitemapKind, E>, String> {
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut kind = None;
    let mut in_loc = false;
    let mut current = String::new();
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => match e.local_name().as_ref() {
                b"urlset" => kind = Some(SitemapKind::Urlset),
                b"sitemapindex" => kind = Some(SitemapKind::Index),
                b"loc" => {
                    in_loc = true;
                    current.clear();
                }
                _ => {}
            },
            Ok(Event::Text(t)) if in_loc => {
                let text = t.decode().map_err(|e| e.to_string())?;
                let text = quick_xml::escape::unescape(&text).map_err(|e| e.to_string())?;
                current.push_str(&text);
            }
            Ok(Event::GeneralRef(r)) if in_loc => {
                let name = r.decode().map_err(|e| e.to_string())?;
                let entity = format!("&{name};");
                let text = quick_xml::escape::unescape(&entity).map_err(|e| e.to_string())?;
                current.push_str(&text);
            }
            Ok(Event::CData(t)) if in_loc => current.push_str(&String::from_utf8_lossy(&t)),
            Ok(Event::End(e)) if e.local_name().as_ref() == b"loc" => {
                in_loc = false;
                let Some(k) = kind else {
                    return Err("a <loc> outside <urlset> or <sitemapindex>".into());
                };
                if let Err(stop) = each(k, current.trim()) {
                    return Ok(Err(stop));
                }
            }
            Ok(Event::Eof) => break,
            Err(e) => {
                return Err(format!(
                    "not valid XML at byte {}: {e}",
                    reader.buffer_position()
                ))
            }
            _ => {}
        }
        buf.clear();
    }
    kind.map(Ok)
        .ok_or_else(|| "not a sitemap: no <urlset> or <sitemapindex> element".into())
}

/// A short description of a source for logs and errors.
pub fn describe(source: &PageSource) -> String {
    match source {
        PageSource::Urls(u) => format!("{} listed URLs", u.len()),
        PageSource::Sitemap(u) => format!("sitemap {}", redact::url(u)),
        PageSource::Http(u) => format!("JSON list {}", redact::url(u)),
        PageSource::Lambda { function, .. } => format!("lister function {function}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locs(xml: &[u8]) -> Result<(SitemapKind, Vec<String>), String> {
        let mut found = Vec::new();
        let kind = parse_sitemap(xml, |_, loc| {
            found.push(loc.to_string());
            Ok::<(), ()>(())
        })?
        .expect("no stop");
        Ok((kind, found))
    }

    fn batcher(max_pages: usize) -> (Batcher, mpsc::Receiver<Vec<String>>) {
        let (tx, rx) = mpsc::channel(100);
        let b = Batcher {
            tx,
            batch: Vec::new(),
            stats: ListStats::default(),
            max_pages,
            source: "test".into(),
        };
        (b, rx)
    }

    #[test]
    fn sitemap_locs_are_trimmed_and_unescaped() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <url><loc>
     https://example.com/a?x=1&amp;y=2
  </loc></url>
  <url><loc>https://example.com/b</loc><lastmod>2026-01-01</lastmod></url>
</urlset>"#;
        let (kind, found) = locs(xml).unwrap();
        assert_eq!(kind, SitemapKind::Urlset);
        assert_eq!(
            found,
            vec!["https://example.com/a?x=1&y=2", "https://example.com/b"]
        );
    }

    #[test]
    fn sitemap_indexes_are_recognised() {
        let xml = br#"<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
<sitemap><loc>https://example.com/s1.xml</loc></sitemap></sitemapindex>"#;
        let (kind, found) = locs(xml).unwrap();
        assert_eq!(kind, SitemapKind::Index);
        assert_eq!(found, vec!["https://example.com/s1.xml"]);
    }

    #[test]
    fn documents_that_are_not_sitemaps_are_refused() {
        assert!(locs(b"<html><body>hi</body></html>").is_err());
        assert!(locs(b"<urlset><url><loc>x</url>").is_err());
    }

    #[test]
    fn json_lists_take_strings_and_objects_and_count_the_rest_as_invalid() {
        let (mut b, mut rx) = batcher(100);
        json_list(
            &br#"["https://a.example/1", {"url": "https://a.example/2", "x": 1}, "ftp://nope", 7, {"nourl": true}]"#[..],
            "test",
            &mut b,
        )
        .unwrap();
        b.flush().unwrap();
        assert_eq!(
            rx.try_recv().unwrap(),
            vec!["https://a.example/1", "https://a.example/2"]
        );
        assert_eq!(b.stats.urls, 2);
        assert_eq!(b.stats.invalid, 3);
        assert_eq!(b.stats.invalid_examples[0], "ftp://nope");
    }

    #[test]
    fn a_list_over_max_pages_stops_with_a_clear_error() {
        let (mut b, _rx) = batcher(2);
        let err = json_list(
            &br#"["https://a.example/1","https://a.example/2","https://a.example/3"]"#[..],
            "t",
            &mut b,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the page list has more than 2 URLs (the schedule's max_pages)"
        );
    }

    #[test]
    fn a_json_document_that_is_not_an_array_is_refused() {
        let (mut b, _rx) = batcher(10);
        let err = json_list(
            &br#"{"pages": []}"#[..],
            "https://api.example/pages.json",
            &mut b,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("expected a JSON array of URLs"),
            "{err}"
        );
    }

    #[test]
    fn batches_are_handed_on_every_insert_batch_urls() {
        let (mut b, mut rx) = batcher(usize::MAX);
        for i in 0..(INSERT_BATCH + 3) {
            b.push(&format!("https://a.example/{i}")).unwrap();
        }
        assert_eq!(rx.try_recv().unwrap().len(), INSERT_BATCH);
        b.flush().unwrap();
        assert_eq!(rx.try_recv().unwrap().len(), 3);
    }
}
