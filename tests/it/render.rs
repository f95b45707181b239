//! Pages that need a browser, end to end: the daemon with its in-process
//! crawler and real headless Chromium, against a loopback test shop where
//! some product pages are app shells whose script fills in the name and
//! price after load and the others are served whole.
//!
//! (The test kit opens private networks, so the shop is reachable; the
//! guard inside the browser is tested with it closed in
//! crawler/tests/render.rs.)

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use fanfare_testkit::appshop::{AppShop as Shop, EXTRACT};
use fanfare_testkit::schedule;

use crate::helpers::TestApp;

/// Each page's URL -> (price, whether it was rendered), read through the API.
async fn prices(app: &TestApp, run: uuid::Uuid) -> BTreeMap<String, (Option<String>, bool)> {
    app.pages(run)
        .await
        .into_iter()
        .map(|page| {
            assert_eq!(page["status"], "succeeded", "{page:#}");
            let result = &page["result"];
            let price = result["fields"]["price"].as_str().map(str::to_string);
            let rendered = result["rendered"].as_bool().unwrap_or(false);
            (page["url"].as_str().unwrap().to_string(), (price, rendered))
        })
        .collect()
}

#[tokio::test]
async fn never_reads_only_static_prices_always_renders_every_page_and_auto_renders_only_the_script_pages(
) {
    let shop = Shop::start(Ipv4Addr::LOCALHOST).await;
    let urls: Vec<String> = (1..=3)
        .map(|i| shop.script(i))
        .chain((1..=3).map(|i| shop.plain(i)))
        .collect();
    let schedules = [
        schedule("never").urls(&urls).extract(EXTRACT).to_string(),
        schedule("always")
            .urls(&urls)
            .extract(EXTRACT)
            .text("render", "always")
            .text("wait_for", ".price")
            .to_string(),
        // render_after above the shop's size: every script page escalates
        // on its own, so the renders are exactly the script pages.
        schedule("auto")
            .urls(&urls)
            .extract(EXTRACT)
            .text("render", "auto")
            .text("wait_for", ".price")
            .key("render_after", 100)
            .to_string(),
    ]
    .concat();
    let app = TestApp::spawn(&schedules, None).await;
    let within = Duration::from_secs(90);

    let (run, finished) = app.run_once("never", within).await;
    assert_eq!(finished["outcome"], "succeeded", "{finished:#}");
    let never = prices(&app, run).await;
    for i in 1..=3 {
        assert_eq!(never[&shop.script(i)], (None, false), "script page {i}");
        assert_eq!(never[&shop.plain(i)], (Some(format!("{i}.50")), false));
    }
    assert_eq!(finished["render"]["rendered"], 0, "{finished:#}");
    assert_eq!(finished["render"]["plain"], 6, "{finished:#}");
    assert_eq!(shop.renders(), 0);

    let (run, finished) = app.run_once("always", within).await;
    assert_eq!(finished["outcome"], "succeeded", "{finished:#}");
    let always = prices(&app, run).await;
    for i in 1..=3 {
        assert_eq!(always[&shop.script(i)], (Some(format!("{i}.99")), true));
        assert_eq!(always[&shop.plain(i)], (Some(format!("{i}.50")), true));
    }
    assert_eq!(finished["render"]["rendered"], 6, "{finished:#}");
    assert_eq!(finished["render"]["escalated"], 0, "{finished:#}");

    let (run, finished) = app.run_once("auto", within).await;
    assert_eq!(finished["outcome"], "succeeded", "{finished:#}");
    let auto = prices(&app, run).await;
    for i in 1..=3 {
        assert_eq!(auto[&shop.script(i)], (Some(format!("{i}.99")), true));
        assert_eq!(auto[&shop.plain(i)], (Some(format!("{i}.50")), false));
    }
    assert_eq!(
        finished["render"],
        serde_json::json!({ "plain": 3, "rendered": 3, "escalated": 3 }),
        "{finished:#}"
    );
    // The plain fetch did not use an attempt: each page is on its first.
    for page in app.pages(run).await {
        let attempts = page["attempt"].as_i64().unwrap_or_default();
        let rendered = page["result"]["rendered"].as_bool().unwrap_or(false);
        assert!(attempts <= 2, "{page:#}");
        assert_eq!(attempts, 1 + i64::from(rendered), "{page:#}");
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("fanfare_pages_rendered_total 9"),
        "6 pages of always and 3 of auto were rendered:\n{metrics}"
    );
    app.stop().await;
}

/// An `auto` schedule of `urls` that learns a host after two of its pages
/// needed the browser, one page at a time (so "after two" is not
/// overtaken by pages already in flight).
fn learning_schedule(name: &str, urls: &[String]) -> fanfare_testkit::ScheduleToml {
    schedule(name)
        .urls(urls)
        .extract(EXTRACT)
        .text("render", "auto")
        .text("wait_for", ".price")
        .key("render_after", 2)
        .key("max_in_flight", 1)
}

#[tokio::test]
async fn a_host_that_needed_the_browser_render_after_times_goes_straight_to_it_in_this_run_and_the_next(
) {
    let shells = Shop::start(Ipv4Addr::LOCALHOST).await;
    let statics = Shop::start(Ipv4Addr::new(127, 0, 0, 2)).await;
    let urls: Vec<String> = (1..=5)
        .map(|i| shells.script(i))
        .chain((1..=3).map(|i| statics.plain(i)))
        .collect();
    let schedules = learning_schedule("learns", &urls).to_string();
    let app = TestApp::spawn(&schedules, None).await;
    let within = Duration::from_secs(120);

    let (run, first) = app.run_once("learns", within).await;
    assert_eq!(first["outcome"], "succeeded", "{first:#}");
    let pages = prices(&app, run).await;
    for i in 1..=5 {
        assert_eq!(pages[&shells.script(i)], (Some(format!("{i}.99")), true));
    }
    for i in 1..=3 {
        assert_eq!(pages[&statics.plain(i)], (Some(format!("{i}.50")), false));
    }
    assert_eq!(
        first["render"],
        serde_json::json!({ "plain": 3, "rendered": 5, "escalated": 2 }),
        "two pages of the shell host escalate, its other three go straight to the browser: {first:#}"
    );
    let cookie = crate::console::session(&app).await;
    let (status, _, body) =
        crate::console::page(&app, Some(&cookie), &format!("/ui/runs/{run}")).await;
    assert_eq!(status, 200);
    let section = body
        .split(r#"id="rendering""#)
        .nth(1)
        .unwrap_or_else(|| panic!("the run page has a rendering section: {body}"));
    for fact in [
        "<dt>as served</dt><dd>3</dd>",
        "<dt>in a browser</dt><dd>5</dd>",
        "<dt>sent on to the browser</dt><dd>2</dd>",
    ] {
        assert!(section.contains(fact), "{fact} missing: {section}");
    }

    let (_, second) = app.run_once("learns", within).await;
    assert_eq!(second["outcome"], "succeeded", "{second:#}");
    assert_eq!(
        second["render"],
        serde_json::json!({ "plain": 3, "rendered": 5, "escalated": 0 }),
        "the next run starts from what the first learned: {second:#}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_learned_host_goes_back_to_plain_fetches_once_a_run_rendered_its_pages_without_need() {
    let shop = Shop::start(Ipv4Addr::LOCALHOST).await;
    let urls: Vec<String> = (1..=3).map(|i| shop.switching(i)).collect();
    let schedules = learning_schedule("unlearns", &urls).to_string();
    let app = TestApp::spawn(&schedules, None).await;
    let within = Duration::from_secs(120);
    let run_once = || async {
        let run = app.trigger("unlearns").await;
        let finished = app.wait_finished(run, within).await;
        assert_eq!(finished["outcome"], "succeeded", "{finished:#}");
        (finished["render"].clone(), app.pages(run).await)
    };

    // App shells: two pages sent on, the host learned, the third straight
    // to the browser; the rendered pages needed it.
    let (render, pages) = run_once().await;
    assert_eq!(
        render,
        serde_json::json!({ "plain": 0, "rendered": 3, "escalated": 2 })
    );
    for page in &pages {
        assert_eq!(
            page["result"]["served_sufficed"],
            serde_json::Value::Null,
            "{page:#}"
        );
    }

    // The site now serves its pages whole. Still learned: every page goes
    // to the browser, and each says the page as served would have done.
    shop.serve_whole();
    let (render, pages) = run_once().await;
    assert_eq!(
        render,
        serde_json::json!({ "plain": 0, "rendered": 3, "escalated": 0 })
    );
    for page in &pages {
        let result = &page["result"];
        assert_eq!(result["rendered"], true, "{page:#}");
        assert_eq!(result["served_sufficed"], true, "{page:#}");
    }

    // That run's rendered pages, render_after (2) or more and all without
    // need, unlearned the host: plain fetches again.
    let (render, pages) = run_once().await;
    assert_eq!(
        render,
        serde_json::json!({ "plain": 3, "rendered": 0, "escalated": 0 })
    );
    for page in &pages {
        let id: usize = page["url"]
            .as_str()
            .and_then(|u| u.rsplit('/').next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("a shop URL: {page:#}"));
        assert_eq!(
            page["result"]["fields"]["price"],
            fanfare_testkit::appshop::static_price(id)
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_api_document_describes_render_in_the_event_and_rendered_in_the_report() {
    let app = TestApp::spawn(&schedule("s").to_string(), None).await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    let schemas = &doc["components"]["schemas"];
    let render = &schemas["CrawlRequest"]["properties"]["render"];
    assert!(
        render
            .to_string()
            .contains("#/components/schemas/RenderRequest"),
        "{render:#}"
    );
    let request = &schemas["RenderRequest"]["properties"];
    for key in ["wait_for", "block", "timeout_ms"] {
        assert!(
            request.get(key).is_some(),
            "RenderRequest.{key}: {request:#}"
        );
    }
    assert_eq!(
        schemas["ResourceType"]["enum"],
        serde_json::json!(["image", "font", "media", "stylesheet"])
    );
    for key in ["rendered", "looks_unrendered", "served_sufficed"] {
        assert_eq!(
            schemas["PageFacts"]["properties"][key]["type"], "boolean",
            "PageFacts.{key}: {:#}",
            schemas["PageFacts"]
        );
    }
    let counts = &schemas["RenderCounts"]["properties"];
    for key in ["plain", "rendered", "escalated"] {
        assert!(counts.get(key).is_some(), "RenderCounts.{key}: {counts:#}");
    }
    app.stop().await;
}
