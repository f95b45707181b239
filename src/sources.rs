//! Page sources: where a run's list of pages comes from.
//!
//! A source is read as a stream of batches that reach the ledger while the
//! source is still being read, so a long list is never held whole in memory:
//! documents (a sitemap, a JSON list, a lister's answer) are parsed on a
//! blocking thread that hands on a batch every few thousand URLs. Entries
//! that are not http(s) URLs are counted and skipped (the first few are kept
//! as examples and logged); duplicate URLs are dropped by the ledger; a list
//! longer than the schedule's `max_pages` fails the run.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::Arc;

use futures::StreamExt;
use quick_xml::events::Event;
use serde::de::{Deserializer as _, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use url::Url;

use crate::config::PageSource;
use crate::dispatch::LambdaApi;
use crate::ledger::INSERT_BATCH;

/// The largest document (sitemap, JSON list, lister answer) read, after
/// decompression.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024 * 1024;
/// How deep sitemap indexes may nest.
const MAX_SITEMAP_DEPTH: usize = 4;
/// How many sitemap files one index tree may name.
const MAX_SITEMAP_FILES: usize = 50_000;
/// URLs one sitemap file may hold (sitemaps.org).
pub const SITEMAP_URL_LIMIT: usize = 50_000;
/// Invalid entries kept as examples.
const INVALID_EXAMPLES: usize = 5;

/// Why a page list could not be read; the run fails with this message.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Fetching the list failed.
    #[error("fetching {url}: {message}")]
    Fetch {
        /// What was fetched.
        url: String,
        /// Why it failed.
        message: String,
    },
    /// The list is not of the expected shape.
    #[error("reading {url}: {message}")]
    Parse {
        /// What was read.
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
}

/// Reads page sources into batches.
#[derive(Clone)]
pub struct Lister {
    http: reqwest::Client,
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
            _ => {
                self.stats.invalid += 1;
                if self.stats.invalid_examples.len() < INVALID_EXAMPLES {
                    let example: String = raw.chars().take(200).collect();
                    tracing::warn!(source = %self.source, entry = %example, "skipping an entry that is not an http(s) URL");
                    self.stats.invalid_examples.push(example);
                }
            }
        }
        Ok(())
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

impl Lister {
    /// A lister fetching with `http`; `lambda` serves `pages = { lambda = … }`.
    pub fn new(http: reqwest::Client, lambda: Option<Arc<dyn LambdaApi>>) -> Self {
        Self { http, lambda }
    }

    /// Reads `source`, sending batches of valid URLs to `tx`; fails past
    /// `max_pages` URLs.
    pub async fn list(
        &self,
        source: &PageSource,
        max_pages: usize,
        tx: mpsc::Sender<Vec<String>>,
    ) -> Result<ListStats, SourceError> {
        let mut out = Batcher {
            tx,
            batch: Vec::with_capacity(INSERT_BATCH),
            stats: ListStats::default(),
            max_pages,
            source: describe(source),
        };
        match source {
            PageSource::Urls(urls) => {
                let urls = urls.clone();
                out = blocking(out, move |out| urls.iter().try_for_each(|u| out.push(u))).await?;
            }
            PageSource::Http(url) => {
                let body = self.fetch(url).await?;
                let what = url.to_string();
                out = blocking(out, move |out| json_list(&body, &what, out)).await?;
            }
            PageSource::Sitemap(url) => out = self.sitemap(url.clone(), out).await?,
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
                out = blocking(out, move |out| json_list(&body, &what, out)).await?;
            }
        }
        out = blocking(out, |out| out.flush()).await?;
        if out.stats.invalid > 0 {
            tracing::warn!(source = %out.source, invalid = out.stats.invalid, "skipped invalid entries in the page list");
        }
        Ok(out.stats)
    }

    async fn fetch(&self, url: &Url) -> Result<Vec<u8>, SourceError> {
        let fetch = |message: String| SourceError::Fetch {
            url: url.to_string(),
            message,
        };
        let resp = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| fetch(crate::notify::error_chain(&e.without_url())))?;
        if !resp.status().is_success() {
            return Err(fetch(format!("HTTP {}", resp.status())));
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| fetch(crate::notify::error_chain(&e.without_url())))?;
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(fetch(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        // A `.xml.gz` sitemap is gzip data itself (not a Content-Encoding,
        // which the client already decoded).
        if body.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .take(MAX_DOCUMENT_BYTES as u64 + 1)
                .read_to_end(&mut plain)
                .map_err(|e| fetch(format!("not valid gzip: {e}")))?;
            if plain.len() > MAX_DOCUMENT_BYTES {
                return Err(fetch(format!(
                    "larger than {MAX_DOCUMENT_BYTES} bytes uncompressed"
                )));
            }
            body = plain;
        }
        Ok(body)
    }

    /// A sitemap or sitemap index (nested up to a few levels).
    async fn sitemap(&self, root: Url, mut out: Batcher) -> Result<Batcher, SourceError> {
        let mut queue = VecDeque::from([(root, 0usize)]);
        let mut files = 0;
        while let Some((url, depth)) = queue.pop_front() {
            files += 1;
            if files > MAX_SITEMAP_FILES {
                return Err(SourceError::Parse {
                    url: url.to_string(),
                    message: format!("the sitemap index names more than {MAX_SITEMAP_FILES} files"),
                });
            }
            let body = self.fetch(&url).await?;
            let what = url.to_string();
            let (batcher, children) = tokio::task::spawn_blocking(move || {
                let mut children = Vec::new();
                let result = read_sitemap(&body, &what, &mut out, &mut children);
                result.map(|()| (out, children))
            })
            .await
            .map_err(|e| SourceError::Parse {
                url: url.to_string(),
                message: format!("the parser failed: {e}"),
            })??;
            out = batcher;
            if !children.is_empty() && depth >= MAX_SITEMAP_DEPTH {
                return Err(SourceError::Parse {
                    url: url.to_string(),
                    message: format!("sitemap indexes nest deeper than {MAX_SITEMAP_DEPTH}"),
                });
            }
            for child in children {
                match Url::parse(child.trim()) {
                    Ok(u) => queue.push_back((u, depth + 1)),
                    Err(_) => out.stats.invalid += 1,
                }
            }
        }
        Ok(out)
    }
}

/// Reads a JSON array of URLs, or of objects with a `url`, element by
/// element.
fn json_list(body: &[u8], what: &str, out: &mut Batcher) -> Result<(), SourceError> {
    struct Elements<'a> {
        out: &'a mut Batcher,
        stop: &'a mut Option<SourceError>,
    }
    impl<'de> Visitor<'de> for Elements<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of URLs")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(item) = seq.next_element::<Value>()? {
                let url = match &item {
                    Value::String(s) => s.as_str(),
                    Value::Object(o) => o.get("url").and_then(Value::as_str).unwrap_or(""),
                    _ => "",
                };
                let pushed = if url.is_empty() {
                    self.out.push(&item.to_string())
                } else {
                    self.out.push(url)
                };
                if let Err(e) = pushed {
                    *self.stop = Some(e);
                    return Err(serde::de::Error::custom("stopped"));
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
    let mut de = serde_json::Deserializer::from_slice(body);
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

/// Reads one sitemap file: a `<urlset>`'s `<loc>`s go to `out`, a
/// `<sitemapindex>`'s to `children`.
fn read_sitemap(
    body: &[u8],
    what: &str,
    out: &mut Batcher,
    children: &mut Vec<String>,
) -> Result<(), SourceError> {
    let mut in_file = 0usize;
    let parsed = parse_sitemap(body, |k, loc| match k {
        SitemapKind::Urlset => {
            in_file += 1;
            out.push(loc)
        }
        SitemapKind::Index => {
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
    body: &[u8],
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
        PageSource::Sitemap(u) => format!("sitemap {u}"),
        PageSource::Http(u) => format!("JSON list {u}"),
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
            br#"["https://a.example/1", {"url": "https://a.example/2", "x": 1}, "ftp://nope", 7, {"nourl": true}]"#,
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
            br#"["https://a.example/1","https://a.example/2","https://a.example/3"]"#,
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
            br#"{"pages": []}"#,
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
