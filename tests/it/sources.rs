//! Page sources read from real loopback servers: sitemap indexes, gzip,
//! entities, duplicates, invalid entries, JSON lists, size caps, loops,
//! file limits, the host rule, the network guard, redaction.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::routing::get;
use axum::Router;

use crate::helpers::*;

use fanfare_testkit::net::serve;
use uuid::Uuid;

fn urlset(locs: &[String]) -> String {
    let body: String = locs
        .iter()
        .map(|l| format!("<url><loc>{l}</loc></url>\n"))
        .collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{body}</urlset>"#
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn schedule(name: &str, pages: &str, extra: &str) -> String {
    fanfare_testkit::schedule(name)
        .lambda("crawler")
        .pages(pages)
        .key("max_in_flight", 100000)
        .raw(extra)
        .to_string()
}

/// `{ http = "URL" }`: pages from the JSON list at `url`.
fn http(url: &str) -> String {
    format!("{{ http = \"{url}\" }}")
}

/// Serves `list` (JSON text) as `/pages.json`; returns its URL.
async fn json_list(list: String) -> String {
    let routes = Router::new().route(
        "/pages.json",
        get(move || {
            std::future::ready(([(header::CONTENT_TYPE, "application/json")], list.clone()))
        }),
    );
    format!("{}/pages.json", serve(routes).await)
}

/// `{ sitemap = "URL" }`.
fn sitemap(url: &str) -> String {
    format!("{{ sitemap = \"{url}\" }}")
}

/// Starts the Lambda schedule `name` over a recording stand-in with
/// `pages` and the keys `extra`, and triggers it.
async fn listing(name: &str, pages: &str, extra: &str) -> (TestApp, Arc<RecordingLambda>, Uuid) {
    let (app, lambda) = TestApp::spawn_recording(&schedule(name, pages, extra)).await;
    let run = app.trigger(name).await;
    (app, lambda, run)
}

/// Runs the Lambda schedule `name` with `pages` until it has finished;
/// asserts it failed and returns the app, the run and its error.
async fn failed_listing(name: &str, pages: &str) -> (TestApp, Uuid, String) {
    let (app, _, run) = listing(name, pages, "").await;
    let finished = app.wait_finished(run, Duration::from_secs(10)).await;
    assert_eq!(finished["outcome"], "failed", "{finished:#}");
    let error = finished["error"].as_str().unwrap().to_string();
    (app, run, error)
}

/// The URLs of `requests`, sorted.
fn sorted_urls(requests: &[fanfare_crawler::contract::CrawlRequest]) -> Vec<String> {
    let mut urls: Vec<String> = requests.iter().map(|r| r.url.clone()).collect();
    urls.sort();
    urls
}

#[tokio::test]
async fn nested_gzipped_sitemaps_are_read_with_duplicates_dropped_and_invalid_entries_counted() {
    // index -> (nested index -> a.xml.gz), b.xml
    let a: Vec<String> = (0..3000)
        .map(|i| format!("https://shop.example/p/{i}"))
        .collect();
    let mut b: Vec<String> = (2990..3010)
        .map(|i| format!("https://shop.example/p/{i}"))
        .collect();
    b.push("  https://shop.example/q?a=1&amp;b=2  ".into());
    b.push("not a url".into());
    b.push("ftp://shop.example/file".into());
    let a_gz = gzip(urlset(&a).as_bytes());
    let b_xml = urlset(&b);
    let base_holder = Arc::new(std::sync::OnceLock::<String>::new());
    let (h1, h2) = (base_holder.clone(), base_holder.clone());
    let routes = Router::new()
        .route(
            "/sitemap.xml",
            get(move || {
                let base = h1.get().unwrap().clone();
                async move {
                    format!(
                        r#"<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
                           <sitemap><loc>{base}/nested.xml</loc></sitemap>
                           <sitemap><loc> {base}/b.xml </loc></sitemap></sitemapindex>"#
                    )
                }
            }),
        )
        .route(
            "/nested.xml",
            get(move || {
                let base = h2.get().unwrap().clone();
                async move {
                    format!(r#"<sitemapindex><sitemap><loc>{base}/a.xml.gz</loc></sitemap></sitemapindex>"#)
                }
            }),
        )
        .route(
            "/a.xml.gz",
            get(move || {
                let body = a_gz.clone();
                async move { ([(header::CONTENT_TYPE, "application/x-gzip")], body) }
            }),
        )
        .route("/b.xml", get(move || std::future::ready(b_xml.clone())));
    let base = serve(routes).await;
    base_holder.set(base.clone()).unwrap();

    let (app, lambda, run) = listing("sitemap", &sitemap(&format!("{base}/sitemap.xml")), "").await;
    let requests = lambda.wait_for(3011).await;
    app.wait_listed(run, Duration::from_secs(10)).await;
    let (_, view) = app.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(
        view["pages"]["total"], 3011,
        "3000 + 10 new + the unescaped one"
    );
    assert_eq!(view["listing"]["urls_read"], 3021);
    assert_eq!(view["listing"]["duplicates"], 10);
    assert_eq!(view["listing"]["invalid"], 2);
    assert_eq!(view["listing"]["invalid_examples"][0], "not a url");
    let mut urls: Vec<&str> = requests.iter().map(|r| r.url.as_str()).collect();
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), 3011, "each URL dispatched once");
    assert!(urls.contains(&"https://shop.example/q?a=1&b=2"));
    app.stop().await;
}

#[tokio::test]
async fn a_json_list_of_urls_or_objects_becomes_the_page_list() {
    let list = serde_json::json!([
        "https://shop.example/1",
        {"url": "https://shop.example/2", "priority": 1},
        "https://shop.example/1",
        42
    ]);
    let (app, lambda, run) = listing("json", &http(&json_list(list.to_string()).await), "").await;
    assert_eq!(
        sorted_urls(&lambda.wait_for(2).await),
        ["https://shop.example/1", "https://shop.example/2"]
    );
    // Pages are dispatched while the list is read; its counts are written
    // when the listing ends.
    app.wait_listed(run, Duration::from_secs(10)).await;
    let (_, view) = app.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(view["listing"]["invalid"], 1);
    assert_eq!(view["listing"]["duplicates"], 1);
    app.stop().await;
}

#[tokio::test]
async fn a_list_longer_than_max_pages_fails_the_run_naming_the_cap() {
    let urls: Vec<String> = (0..50)
        .map(|i| format!("https://shop.example/{i}"))
        .collect();
    let list = json_list(serde_json::to_string(&urls).unwrap()).await;
    let receiver = Receiver::start(0).await;
    let capped = schedule("capped", &http(&list), "max_pages = 10");
    let notify = fanfare_testkit::webhook_block(&receiver.url);
    let (app, _) = TestApp::spawn_recording(&format!("{capped}{notify}")).await;
    let (_, finished) = app.run_once("capped", Duration::from_secs(10)).await;
    assert_eq!(finished["outcome"], "failed");
    let error = finished["error"].as_str().unwrap();
    assert!(
        error.contains("more than 10 URLs (the schedule's max_pages)"),
        "{error}"
    );
    assert_eq!(finished["pages"]["open"], 0);
    let d = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert!(d[0].json()["error"].as_str().unwrap().contains("max_pages"));
    app.stop().await;
}

/// Serves `routes` on loopback, counting every request; returns the base
/// URL and the count.
async fn serve_counted(routes: Router) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let routes = routes.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            counter.fetch_add(1, Ordering::SeqCst);
            next.run(req)
        },
    ));
    (serve(routes).await, hits)
}

fn sitemap_index(locs: &[String]) -> String {
    let body: String = locs
        .iter()
        .map(|l| format!("<sitemap><loc>{l}</loc></sitemap>\n"))
        .collect();
    format!(
        r#"<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{body}</sitemapindex>"#
    )
}

/// Serves `/sitemap.xml` as `make(base)` (the index needs the server's own
/// address); returns the base URL and the request count.
async fn serve_index(
    make: impl Fn(&str) -> String + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let base_holder = Arc::new(std::sync::OnceLock::<String>::new());
    let holder = base_holder.clone();
    let make = Arc::new(make);
    let routes = Router::new().route(
        "/sitemap.xml",
        get(move || {
            let body = make(holder.get().unwrap());
            async move { body }
        }),
    );
    let (base, hits) = serve_counted(routes).await;
    base_holder.set(base.clone()).unwrap();
    (base, hits)
}

#[tokio::test]
async fn a_sitemap_index_naming_itself_fails_the_run_as_a_loop_after_one_fetch() {
    let (base, hits) =
        serve_index(|base| sitemap_index(&vec![format!("{base}/sitemap.xml"); 50_000])).await;
    let (app, _, error) = failed_listing("self", &sitemap(&format!("{base}/sitemap.xml"))).await;
    assert!(error.contains("names itself again, a loop"), "{error}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the index was fetched once");
    app.stop().await;
}

#[tokio::test]
async fn a_sitemap_tree_naming_more_files_than_the_limit_fails_before_fetching_them() {
    let (base, hits) = serve_index(|base| {
        let children: Vec<String> = (0..1_001).map(|i| format!("{base}/s/{i}.xml")).collect();
        sitemap_index(&children)
    })
    .await;
    let (app, _, error) = failed_listing("wide", &sitemap(&format!("{base}/sitemap.xml"))).await;
    assert!(
        error.contains("names more than 1000 sitemap files (the limit of one listing)"),
        "{error}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "no child was fetched");
    app.stop().await;
}

#[tokio::test]
async fn a_child_sitemap_on_another_host_is_skipped_and_counted_unless_the_schedule_allows_any_host(
) {
    // `localhost` and `127.0.0.1` are different hosts on the same server.
    let base_holder = Arc::new(std::sync::OnceLock::<String>::new());
    let holder = base_holder.clone();
    let routes = Router::new()
        .route(
            "/sitemap.xml",
            get(move || {
                let base = holder.get().unwrap().clone();
                let foreign = base.replace("127.0.0.1", "localhost");
                async move {
                    sitemap_index(&[
                        format!("{foreign}/foreign.xml"),
                        format!("{base}/own.xml"),
                        format!("{base}/own.xml"),
                    ])
                }
            }),
        )
        .route(
            "/own.xml",
            get(|| async { urlset(&["https://shop.example/own".to_string()]) }),
        )
        .route(
            "/foreign.xml",
            get(|| async { urlset(&["https://shop.example/foreign".to_string()]) }),
        );
    let (base, _hits) = serve_counted(routes).await;
    base_holder.set(base.clone()).unwrap();
    let pages = sitemap(&format!("{base}/sitemap.xml"));
    let config = format!(
        "{}{}",
        schedule("same", &pages, ""),
        schedule("any", &pages, "sitemap_any_host = true")
    );
    let (app, lambda) = TestApp::spawn_recording(&config).await;

    let same = app.trigger("same").await;
    lambda.wait_for(1).await;
    app.wait_listed(same, Duration::from_secs(10)).await;
    let (_, view) = app.get(&format!("/v1/runs/{same}")).await;
    assert_eq!(view["pages"]["total"], 1, "{view:#}");
    assert_eq!(view["listing"]["foreign_sitemaps"], 1);
    assert_eq!(view["listing"]["repeated_sitemaps"], 1);
    assert_eq!(view["listing"]["sitemap_files"], 2);
    let example = view["listing"]["foreign_sitemap_examples"][0]
        .as_str()
        .unwrap();
    assert!(
        example.starts_with("http://localhost:") && example.ends_with("/foreign.xml"),
        "{example}"
    );

    let any = app.trigger("any").await;
    lambda.wait_for(3).await;
    app.wait_listed(any, Duration::from_secs(10)).await;
    let (_, view) = app.get(&format!("/v1/runs/{any}")).await;
    assert_eq!(view["pages"]["total"], 2, "{view:#}");
    assert_eq!(view["listing"]["foreign_sitemaps"], 0);
    assert_eq!(view["listing"]["sitemap_files"], 3);
    let urls: Vec<String> = lambda.requests().iter().map(|r| r.url.clone()).collect();
    assert!(
        urls.contains(&"https://shop.example/foreign".to_string()),
        "{urls:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_document_over_max_document_bytes_fails_the_run_naming_the_cap_plain_or_gzipped() {
    // 200 URLs of ~40 bytes: about 8 KiB, over a 4 KiB cap; gzipped, far under it.
    let locs: Vec<String> = (0..200)
        .map(|i| format!("https://shop.example/page/{i:06}"))
        .collect();
    let plain = urlset(&locs);
    let zipped = gzip(plain.as_bytes());
    assert!(plain.len() > 4096 && zipped.len() < 4096);
    let routes = Router::new()
        .route("/plain.xml", get(move || std::future::ready(plain.clone())))
        .route(
            "/zipped.xml.gz",
            get(move || {
                let body = zipped.clone();
                async move { ([(header::CONTENT_TYPE, "application/x-gzip")], body) }
            }),
        );
    let base = serve(routes).await;
    let config = format!(
        "{}{}",
        schedule(
            "plain",
            &sitemap(&format!("{base}/plain.xml")),
            "max_document_bytes = 4096"
        ),
        schedule(
            "zipped",
            &sitemap(&format!("{base}/zipped.xml.gz")),
            "max_document_bytes = 4096"
        ),
    );
    let app = TestApp::spawn(&config, Some(Arc::new(RecordingLambda::default()))).await;
    for (name, expect) in [
        (
            "plain",
            "larger than 4096 bytes (the schedule's max_document_bytes)",
        ),
        (
            "zipped",
            "larger than 4096 bytes uncompressed (the schedule's max_document_bytes)",
        ),
    ] {
        let (_, finished) = app.run_once(name, Duration::from_secs(10)).await;
        assert_eq!(finished["outcome"], "failed", "{name}");
        let error = finished["error"].as_str().unwrap();
        assert!(error.contains(expect), "{name}: {error}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_json_list_keeps_strings_and_url_objects_and_counts_numbers_nested_arrays_and_other_objects(
) {
    let list = r#"[
        "https://shop.example/1",
        {"meta": {"deep": [1, [2, [3]]]}, "url": "https://shop.example/2", "tags": ["a"]},
        [[0, 0, 0], [0]],
        12.5,
        null,
        {"url": 7},
        {"href": "https://shop.example/3"},
        "https://shop.example/4"
    ]"#;
    let (app, lambda, run) = listing("mixed", &http(&json_list(list.into()).await), "").await;
    assert_eq!(
        sorted_urls(&lambda.wait_for(3).await),
        [
            "https://shop.example/1",
            "https://shop.example/2",
            "https://shop.example/4"
        ]
    );
    app.wait_listed(run, Duration::from_secs(10)).await;
    let (_, view) = app.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(view["listing"]["invalid"], 5, "{view:#}");
    assert_eq!(
        view["listing"]["invalid_examples"],
        serde_json::json!([
            "an array",
            "a number",
            "null",
            "an object without a url string",
            "an object without a url string"
        ])
    );
    app.stop().await;
}

#[tokio::test]
async fn a_sitemap_on_loopback_with_the_guard_closed_fails_the_run_as_blocked_without_a_request() {
    let routes = Router::new().route(
        "/sitemap.xml",
        get(|| async { urlset(&["https://shop.example/1".to_string()]) }),
    );
    let (base, hits) = serve_counted(routes).await;
    let db = fresh_database().await;
    let toml = config_toml(
        &db,
        &schedule("closed", &sitemap(&format!("{base}/sitemap.xml")), ""),
    );
    assert!(toml.contains("allow_private_networks = true"));
    let toml = toml.replace(
        "allow_private_networks = true",
        "allow_private_networks = false",
    );
    let settings = fanfare::Settings::from_toml(&toml).unwrap();
    let lambda: Arc<dyn fanfare::dispatch::LambdaApi> = Arc::new(RecordingLambda::default());
    let overrides = fanfare::startup::Overrides {
        lambda: Some(lambda),
        ..Default::default()
    };
    let (address, task) = fanfare_testkit::AppTask::start(settings, overrides).await;
    let client = reqwest::Client::new();
    assert!(fanfare_testkit::wait_ready(&client, &address, Duration::from_secs(5)).await);
    let run = fanfare_testkit::trigger(&client, &address, ADMIN_TOKEN, "closed").await;
    let finished = fanfare_testkit::RunState::Finished;
    let finished =
        fanfare_testkit::wait_run(&client, &address, ADMIN_TOKEN, run, finished, secs(10)).await;
    assert_eq!(finished["outcome"], "failed");
    let error = finished["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "fetching {base}/sitemap.xml: blocked: 127.0.0.1 is a loopback address"
        )),
        "{error}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the server saw no request");
    task.stop().await;
}

#[tokio::test]
async fn a_sitemap_url_with_credentials_and_a_token_never_appears_unredacted_in_the_run_error() {
    let routes = Router::new().route(
        "/sitemap.xml",
        get(|| async { (axum::http::StatusCode::NOT_FOUND, "no") }),
    );
    let base = serve(routes).await;
    let secret_url = base.replace("http://", "http://user:hunter2@") + "/sitemap.xml?token=s3cr3t";
    let (app, run, error) = failed_listing("secret", &sitemap(&secret_url)).await;
    assert_eq!(
        error,
        format!("fetching {base}/sitemap.xml?…: HTTP 404 Not Found")
    );
    let (stored,): (Option<String>,) = sqlx::query_as("select error from runs where id = $1")
        .bind(run)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let stored = stored.unwrap();
    for secret in ["hunter2", "user:", "s3cr3t", "token="] {
        assert!(
            !stored.contains(secret),
            "{secret} in the stored error: {stored}"
        );
        assert!(
            !error.contains(secret),
            "{secret} in the API's error: {error}"
        );
    }
    app.stop().await;
}
