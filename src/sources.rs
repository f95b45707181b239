//! Page sources: where a run's list of pages comes from.
//!
//! A source is read as a stream of batches that reach the ledger while the
//! source is still being read, so a long list is never held whole in memory.
//! Invalid URLs are counted and skipped (the first few are logged); duplicate
//! URLs are dropped by the ledger.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use quick_xml::events::Event;
use serde_json::Value;
use tokio::sync::mpsc;
use url::Url;

use crate::config::PageSource;
use crate::dispatch::LambdaApi;
use crate::ledger::INSERT_BATCH;

/// The most URLs one run may list.
pub const MAX_URLS: usize = 5_000_000;
/// The largest document (sitemap, JSON list, lister answer) read.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;
/// How deep sitemap indexes may nest.
const MAX_SITEMAP_DEPTH: usize = 4;

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
    /// More URLs than a run may hold.
    #[error("the page list has more than {MAX_URLS} URLs")]
    TooMany,
    /// The consumer stopped (shutdown).
    #[error("listing was interrupted")]
    Interrupted,
}

/// Counts of what a listing read.
#[derive(Debug, Default, Clone, Copy)]
pub struct ListStats {
    /// Valid URLs passed on.
    pub urls: usize,
    /// Entries skipped as invalid.
    pub invalid: usize,
}

/// Reads page sources into batches.
#[derive(Clone)]
pub struct Lister {
    http: reqwest::Client,
    lambda: Option<Arc<dyn LambdaApi>>,
}

struct Batcher {
    tx: mpsc::Sender<Vec<String>>,
    batch: Vec<String>,
    stats: ListStats,
    source: String,
}

impl Batcher {
    async fn push(&mut self, raw: &str) -> Result<(), SourceError> {
        let raw = raw.trim();
        match Url::parse(raw) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                self.stats.urls += 1;
                if self.stats.urls > MAX_URLS {
                    return Err(SourceError::TooMany);
                }
                self.batch.push(u.to_string());
                if self.batch.len() >= INSERT_BATCH {
                    self.flush().await?;
                }
            }
            _ => {
                self.stats.invalid += 1;
                if self.stats.invalid <= 5 {
                    tracing::warn!(source = %self.source, entry = %raw.chars().take(200).collect::<String>(), "skipping an entry that is not an http(s) URL");
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SourceError> {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.tx
                .send(batch)
                .await
                .map_err(|_| SourceError::Interrupted)?;
        }
        Ok(())
    }
}

impl Lister {
    /// A lister fetching with `http`; `lambda` serves `pages = { lambda = … }`.
    pub fn new(http: reqwest::Client, lambda: Option<Arc<dyn LambdaApi>>) -> Self {
        Self { http, lambda }
    }

    /// Reads `source`, sending batches of valid URLs to `tx`.
    pub async fn list(
        &self,
        source: &PageSource,
        tx: mpsc::Sender<Vec<String>>,
    ) -> Result<ListStats, SourceError> {
        let mut out = Batcher {
            tx,
            batch: Vec::with_capacity(INSERT_BATCH),
            stats: ListStats::default(),
            source: describe(source),
        };
        match source {
            PageSource::Urls(urls) => {
                for u in urls {
                    out.push(u).await?;
                }
            }
            PageSource::Http(url) => {
                let body = self.fetch(url).await?;
                self.json_list(&body, url.as_str(), &mut out).await?;
            }
            PageSource::Sitemap(url) => self.sitemap(url.clone(), &mut out).await?,
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
                self.json_list(&body, function, &mut out).await?;
            }
        }
        out.flush().await?;
        if out.stats.invalid > 0 {
            tracing::warn!(source = %out.source, invalid = out.stats.invalid, "skipped invalid entries in the page list");
        }
        Ok(out.stats)
    }

    async fn json_list(
        &self,
        body: &[u8],
        what: &str,
        out: &mut Batcher,
    ) -> Result<(), SourceError> {
        let parse = |message: String| SourceError::Parse {
            url: what.to_string(),
            message,
        };
        let items: Vec<Value> = serde_json::from_slice(body)
            .map_err(|e| parse(format!("expected a JSON array of URLs: {e}")))?;
        for item in items {
            match &item {
                Value::String(s) => out.push(s).await?,
                Value::Object(o) => match o.get("url").and_then(Value::as_str) {
                    Some(s) => out.push(s).await?,
                    None => out.push("").await?,
                },
                _ => out.push("").await?,
            }
        }
        Ok(())
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
        Ok(body)
    }

    /// A sitemap or sitemap index (nested up to a few levels); gzip bodies
    /// are decoded by the HTTP client.
    async fn sitemap(&self, root: Url, out: &mut Batcher) -> Result<(), SourceError> {
        let mut queue = VecDeque::from([(root, 0usize)]);
        while let Some((url, depth)) = queue.pop_front() {
            let body = self.fetch(&url).await?;
            let (kind, locs) = parse_sitemap(&body).map_err(|message| SourceError::Parse {
                url: url.to_string(),
                message,
            })?;
            match kind {
                SitemapKind::Urlset => {
                    for loc in locs {
                        out.push(&loc).await?;
                    }
                }
                SitemapKind::Index if depth < MAX_SITEMAP_DEPTH => {
                    for loc in locs {
                        match Url::parse(loc.trim()) {
                            Ok(u) => queue.push_back((u, depth + 1)),
                            Err(_) => out.stats.invalid += 1,
                        }
                    }
                }
                SitemapKind::Index => {
                    return Err(SourceError::Parse {
                        url: url.to_string(),
                        message: format!("sitemap indexes nest deeper than {MAX_SITEMAP_DEPTH}"),
                    })
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq)]
enum SitemapKind {
    Urlset,
    Index,
}

/// The `<loc>` values of a sitemap, and whether it is an index.
fn parse_sitemap(body: &[u8]) -> Result<(SitemapKind, Vec<String>), String> {
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut kind = None;
    let mut in_loc = false;
    let mut locs = Vec::new();
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
                locs.push(current.trim().to_string());
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
    let kind = kind.ok_or("not a sitemap: no <urlset> or <sitemapindex> element")?;
    Ok((kind, locs))
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

    #[test]
    fn sitemap_locs_are_trimmed_and_unescaped() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <url><loc>
     https://example.com/a?x=1&amp;y=2
  </loc></url>
  <url><loc>https://example.com/b</loc><lastmod>2026-01-01</lastmod></url>
</urlset>"#;
        let (kind, locs) = parse_sitemap(xml).unwrap();
        assert_eq!(kind, SitemapKind::Urlset);
        assert_eq!(
            locs,
            vec!["https://example.com/a?x=1&y=2", "https://example.com/b"]
        );
    }

    #[test]
    fn sitemap_indexes_are_recognised() {
        let xml = br#"<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
<sitemap><loc>https://example.com/s1.xml</loc></sitemap></sitemapindex>"#;
        let (kind, locs) = parse_sitemap(xml).unwrap();
        assert_eq!(kind, SitemapKind::Index);
        assert_eq!(locs, vec!["https://example.com/s1.xml"]);
    }

    #[test]
    fn documents_that_are_not_sitemaps_are_refused() {
        assert!(parse_sitemap(b"<html><body>hi</body></html>").is_err());
        assert!(parse_sitemap(b"<urlset><url><loc>x</url>").is_err());
    }
}
