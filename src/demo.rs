//! A built-in demo shop to crawl: numbered product pages, a sitemap and a JSON list of
//! the pages, served on loopback. `fanfare dev` points its demo schedule here, and the
//! integration tests use it as a real HTTP target.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Extraction rules for the demo shop's product pages: field name -> its
/// spec as TOML (a CSS selector, or a table reading the page's JSON-LD).
pub const DEMO_EXTRACT: &[(&str, &str)] = &[
    ("name", r#""h1.name""#),
    ("price", r#"".price""#),
    (
        "offer_price",
        r#"{ jsonld = "Product.offers.price", type = "number" }"#,
    ),
];

/// The longest `/slow/{ms}` will wait, so a typo can't hold a connection for hours.
const MAX_SLOW_MS: u64 = 60_000;
/// Sitemap and JSON list are streamed this many URLs at a time, so a site of a million
/// pages never builds its listing in memory all at once.
const LISTING_CHUNK: usize = 1_000;
/// How long `shutdown` lets in-flight requests finish before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A demo shop with `pages` product pages, served on loopback.
///
/// The server stops when the value is dropped, or gracefully with [`DemoSite::shutdown`].
#[derive(Debug)]
pub struct DemoSite {
    addr: SocketAddr,
    pages: usize,
    handle: JoinHandle<()>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl DemoSite {
    /// Binds 127.0.0.1 on a free port and serves the shop until dropped or shut down.
    pub async fn start(pages: usize) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let app = router(pages);
        let handle = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                // A dropped sender means stop too.
                let _ = stopped.await;
            });
            if let Err(err) = serve.await {
                tracing::warn!(error = %err, "demo shop stopped with an error");
            }
        });
        tracing::info!(%addr, pages, "demo shop listening");
        Ok(DemoSite {
            addr,
            pages,
            handle,
            shutdown: Some(shutdown),
        })
    }

    /// The address the shop listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many product pages the shop has.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// The shop's root URL, without a trailing slash: `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of product page `n` (1-based; pages outside `1..=pages` answer 404).
    pub fn page_url(&self, n: usize) -> String {
        format!("{}/products/{n}", self.base_url())
    }

    /// All product page URLs, in order.
    pub fn page_urls(&self) -> Vec<String> {
        (1..=self.pages).map(|n| self.page_url(n)).collect()
    }

    /// The sitemap (a sitemaps.org `urlset`) listing every product page.
    pub fn sitemap_url(&self) -> String {
        format!("{}/sitemap.xml", self.base_url())
    }

    /// A JSON array of every product page URL, in order.
    pub fn pages_json_url(&self) -> String {
        format!("{}/pages.json", self.base_url())
    }

    /// Stops accepting connections, lets in-flight requests finish (for a few seconds
    /// at most), and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // Drop aborts the task if the grace period runs out.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut self.handle).await;
    }
}

impl Drop for DemoSite {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.handle.abort();
    }
}

/// The price product page `n` shows: deterministic, so tests can check extraction.
pub fn price(n: usize) -> String {
    format!("{}.{:02}", n % 97 + 1, (n * 37) % 100)
}

/// The demo shop's axum Router with `pages` product pages, for embedding.
///
/// Routes: `/` (an index), `/products/{n}`, `/sitemap.xml`, `/pages.json`,
/// `/slow/{ms}` (answers after `ms` milliseconds, at most 60 s) and `/status/{code}`
/// (answers with that status). Absolute URLs in the listings use the request's host.
pub fn router(pages: usize) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/products/{n}", get(product))
        .route("/sitemap.xml", get(sitemap))
        .route("/pages.json", get(pages_json))
        .route("/slow/{ms}", get(slow))
        .route("/status/{code}", get(status))
        .with_state(Shop { pages })
}

#[derive(Clone, Copy)]
struct Shop {
    pages: usize,
}

const ADJECTIVES: &[&str] = &[
    "sturdy",
    "handmade",
    "lightweight",
    "classic",
    "weatherproof",
    "compact",
    "elegant",
];
const NOUNS: &[&str] = &[
    "kettle", "backpack", "lamp", "notebook", "teapot", "umbrella", "chair", "wallet",
];

async fn product(State(shop): State<Shop>, Path(n): Path<String>) -> Response {
    let Some(n) = n
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=shop.pages).contains(n))
    else {
        return not_found();
    };
    let adjective = ADJECTIVES[n % ADJECTIVES.len()];
    let noun = NOUNS[n % NOUNS.len()];
    let prev = if n > 1 {
        format!(r#" <a rel="prev" href="/products/{}">Previous</a>"#, n - 1)
    } else {
        String::new()
    };
    let next = if n < shop.pages {
        format!(r#" <a rel="next" href="/products/{}">Next</a>"#, n + 1)
    } else {
        String::new()
    };
    let price = price(n);
    Html(format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Product {n} | Demo Shop</title>
<script type="application/ld+json">
{{"@context": "https://schema.org", "@type": "Product", "name": "Product {n}",
  "offers": {{"@type": "Offer", "price": "{price}", "priceCurrency": "EUR"}}}}
</script>
</head>
<body>
<nav><a href="/">Demo Shop</a>{prev}{next}</nav>
<main class="product">
<h1 class="name">Product {n}</h1>
<p>Price: <span class="price">{price}</span> EUR</p>
<p class="description">A {adjective} {noun}, number {n} in our catalogue. It ships in
recycled packaging within two working days, and comes with a two-year warranty.</p>
<p class="filler">Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod
tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud
exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat.</p>
</main>
</body>
</html>
"#
    ))
    .into_response()
}

async fn index(State(shop): State<Shop>) -> Html<String> {
    // A browser-friendly start page; the full list is in the sitemap.
    let shown = shop.pages.min(100);
    let items: String = (1..=shown)
        .map(|n| format!("<li><a href=\"/products/{n}\">Product {n}</a></li>\n"))
        .collect();
    let more = if shop.pages > shown {
        format!("<p>and {} more: see the sitemap.</p>\n", shop.pages - shown)
    } else {
        String::new()
    };
    Html(format!(
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Demo Shop</title></head>\n\
         <body>\n<h1>Demo Shop</h1>\n<p>{} products. <a href=\"/sitemap.xml\">sitemap.xml</a>, \
         <a href=\"/pages.json\">pages.json</a></p>\n<ul>\n{items}</ul>\n{more}</body>\n</html>\n",
        shop.pages
    ))
}

async fn sitemap(State(shop): State<Shop>, headers: HeaderMap, uri: Uri) -> Response {
    let base = base_url(&headers, &uri);
    let head = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                <urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">\n"
        .to_string();
    let urls = listing_chunks(shop.pages, move |n, out| {
        out.push_str(&format!("<url><loc>{base}/products/{n}</loc></url>\n"));
    });
    let body = std::iter::once(head)
        .chain(urls)
        .chain(std::iter::once("</urlset>\n".to_string()));
    streamed("application/xml", body)
}

async fn pages_json(State(shop): State<Shop>, headers: HeaderMap, uri: Uri) -> Response {
    let base = base_url(&headers, &uri);
    // The host is checked to need no escaping (see base_url), so no JSON encoder is needed.
    let urls = listing_chunks(shop.pages, move |n, out| {
        if n > 1 {
            out.push(',');
        }
        out.push_str(&format!("\n\"{base}/products/{n}\""));
    });
    let body = std::iter::once("[".to_string())
        .chain(urls)
        .chain(std::iter::once("\n]\n".to_string()));
    streamed("application/json", body)
}

async fn slow(Path(ms): Path<u64>) -> Html<String> {
    let ms = ms.min(MAX_SLOW_MS);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Html(format!(
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Slow page | Demo Shop</title></head>\n\
         <body><h1 class=\"name\">Slow page</h1><p>Answered after {ms} ms.</p></body>\n</html>\n"
    ))
}

async fn status(Path(code): Path<u16>) -> Response {
    // 1xx are not final responses: they can't be the answer to a request.
    match StatusCode::from_u16(code).ok().filter(|s| !s.is_informational()) {
        Some(status) => (
            status,
            Html(format!(
                "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Status {code} | Demo Shop</title></head>\n\
                 <body><h1>Status {code}</h1></body>\n</html>\n"
            )),
        )
            .into_response(),
        None => (StatusCode::BAD_REQUEST, "no such final status code\n").into_response(),
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(
            "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Not found | Demo Shop</title></head>\n\
             <body><h1>Not found</h1></body>\n</html>\n",
        ),
    )
        .into_response()
}

/// `http://HOST` for absolute URLs, from the request's Host header (HTTP/1.1) or URI
/// authority (HTTP/2), so the router works wherever it is mounted. A host with any
/// character that would need escaping in XML or JSON is ignored.
fn base_url(headers: &HeaderMap, uri: &Uri) -> String {
    let plain = |h: &&str| {
        !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(plain)
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

/// Pages `1..=pages` in chunks of [`LISTING_CHUNK`], each chunk rendered by `item`
/// into one string. Lazy: nothing is rendered until the body is polled.
fn listing_chunks(
    pages: usize,
    item: impl Fn(usize, &mut String) + Send + 'static,
) -> impl Iterator<Item = String> + Send + 'static {
    (0..pages.div_ceil(LISTING_CHUNK)).map(move |chunk| {
        let first = chunk * LISTING_CHUNK + 1;
        let last = (first + LISTING_CHUNK - 1).min(pages);
        let mut out = String::with_capacity(LISTING_CHUNK * 64);
        for n in first..=last {
            item(n, &mut out);
        }
        out
    })
}

fn streamed(
    content_type: &'static str,
    parts: impl Iterator<Item = String> + Send + 'static,
) -> Response {
    let stream = futures::stream::iter(parts.map(Ok::<_, Infallible>));
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(url: &str) -> (StatusCode, String) {
        let response = reqwest::get(url).await.expect("request");
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (status, response.text().await.expect("body"))
    }

    #[tokio::test]
    async fn product_page_shows_its_name_and_deterministic_price() {
        let site = DemoSite::start(3).await.unwrap();
        let (status, body) = get(&site.page_urls()[1]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("<title>Product 2 | Demo Shop</title>"),
            "{body}"
        );
        assert!(
            body.contains(r#"<h1 class="name">Product 2</h1>"#),
            "{body}"
        );
        assert!(
            body.contains(r#"<span class="price">3.74</span>"#),
            "{body}"
        );
        assert_eq!(price(2), "3.74");
        site.shutdown().await;
    }

    #[tokio::test]
    async fn pages_outside_the_catalogue_are_not_found() {
        let site = DemoSite::start(3).await.unwrap();
        for path in ["/products/0", "/products/4", "/products/abc", "/nothing"] {
            let (status, _) = get(&format!("{}{path}", site.base_url())).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[tokio::test]
    async fn sitemap_and_pages_json_list_every_page_in_order() {
        // More than one streamed chunk, ending part-way through the last.
        let site = DemoSite::start(2 * LISTING_CHUNK + 5).await.unwrap();
        let (status, sitemap) = get(&site.sitemap_url()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(sitemap.contains("<urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">"));
        let locs: Vec<String> = sitemap
            .split("<loc>")
            .skip(1)
            .map(|s| s.split("</loc>").next().unwrap().to_string())
            .collect();
        assert_eq!(locs, site.page_urls());

        let (status, json) = get(&site.pages_json_url()).await;
        assert_eq!(status, StatusCode::OK);
        let urls: Vec<String> = serde_json::from_str(&json).expect("a JSON array of strings");
        assert_eq!(urls, site.page_urls());
    }

    #[tokio::test]
    async fn an_empty_shop_lists_no_pages() {
        let site = DemoSite::start(0).await.unwrap();
        let (_, json) = get(&site.pages_json_url()).await;
        assert_eq!(
            serde_json::from_str::<Vec<String>>(&json).unwrap(),
            Vec::<String>::new()
        );
        let (_, sitemap) = get(&site.sitemap_url()).await;
        assert!(!sitemap.contains("<url>"));
    }

    #[tokio::test]
    async fn status_route_answers_with_the_asked_status_and_slow_route_answers() {
        let site = DemoSite::start(1).await.unwrap();
        let (status, _) = get(&format!("{}/status/503", site.base_url())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, _) = get(&format!("{}/status/100", site.base_url())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, body) = get(&format!("{}/slow/20", site.base_url())).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("after 20 ms"));
    }

    #[tokio::test]
    async fn a_shut_down_site_refuses_connections() {
        let site = DemoSite::start(1).await.unwrap();
        let addr = site.addr();
        site.shutdown().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
