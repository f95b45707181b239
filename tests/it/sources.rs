//! Page sources read from real loopback servers: sitemap indexes, gzip,
//! entities, duplicates, invalid entries, JSON lists, size caps.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::routing::get;
use axum::Router;

use crate::helpers::*;

/// Serves `routes` on loopback; returns the base URL.
async fn serve(routes: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, routes).await });
    base
}

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
    format!(
        "[[schedules]]\nname = \"{name}\"\ninvoker = \"lambda\"\nfunction = \"crawler\"\npages = {pages}\nmax_in_flight = 100000\n{extra}\n"
    )
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

    let lambda = Arc::new(RecordingLambda::default());
    let app = TestApp::spawn(
        &schedule(
            "sitemap",
            &format!("{{ sitemap = \"{base}/sitemap.xml\" }}"),
            "",
        ),
        Some(lambda.clone()),
    )
    .await;
    let run = app.trigger("sitemap").await;
    let requests = lambda.wait_for(3011).await;
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
    let routes = Router::new().route(
        "/pages.json",
        get(|| async {
            axum::Json(serde_json::json!([
                "https://shop.example/1",
                {"url": "https://shop.example/2", "priority": 1},
                "https://shop.example/1",
                42
            ]))
        }),
    );
    let base = serve(routes).await;
    let lambda = Arc::new(RecordingLambda::default());
    let app = TestApp::spawn(
        &schedule("json", &format!("{{ http = \"{base}/pages.json\" }}"), ""),
        Some(lambda.clone()),
    )
    .await;
    let run = app.trigger("json").await;
    let requests = lambda.wait_for(2).await;
    let mut urls: Vec<String> = requests.iter().map(|r| r.url.clone()).collect();
    urls.sort();
    assert_eq!(
        urls,
        vec!["https://shop.example/1", "https://shop.example/2"]
    );
    let (_, view) = app.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(view["listing"]["invalid"], 1);
    assert_eq!(view["listing"]["duplicates"], 1);
    app.stop().await;
}

#[tokio::test]
async fn a_list_longer_than_max_pages_fails_the_run_naming_the_cap() {
    let routes = Router::new().route(
        "/pages.json",
        get(|| async {
            let urls: Vec<String> = (0..50)
                .map(|i| format!("https://shop.example/{i}"))
                .collect();
            axum::Json(urls)
        }),
    );
    let base = serve(routes).await;
    let receiver = Receiver::start(0).await;
    let app =
        TestApp::spawn(
            &format!(
            "{}[[schedules.notify]]\nwebhook = {{ url = \"{}\", secret = \"{WEBHOOK_SECRET}\" }}\n",
            schedule("capped", &format!("{{ http = \"{base}/pages.json\" }}"), "max_pages = 10"),
            receiver.url
        ),
            Some(Arc::new(RecordingLambda::default())),
        )
        .await;
    let run = app.trigger("capped").await;
    let finished = app.wait_finished(run, Duration::from_secs(10)).await;
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
