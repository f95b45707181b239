//! Conditional fetches: a schedule run again over a loopback site that
//! serves `ETag` and `Last-Modified` and answers 304 to a matching
//! conditional GET. The second run sends the first run's validators, the
//! site sends no page again, and the run keeps the first run's facts, so
//! exports and change detection see a complete run; changed pages are
//! fetched in full and are exactly the `changed` ones. Also: a schedule
//! with `conditional = false`, a site that ignores validators, and the
//! Lambda event's validators.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fanfare_testkit::{Served, ValidatorSite, ValidatorSiteSpec};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

const PAGES: usize = 12;
const WITHIN: Duration = Duration::from_secs(30);

/// The site and an application with the schedule `cond` over it,
/// extracting `price` (and `keys`, e.g. `conditional = false`).
async fn site_and_app(keys: &str) -> (Arc<ValidatorSite>, TestApp) {
    let site = ValidatorSite::start(ValidatorSiteSpec::pages(PAGES)).await;
    let schedule = schedule("cond")
        .pages(&format!("{{ http = \"{}\" }}", site.list_url()))
        .extract(r#"{ price = ".price" }"#)
        .key("max_attempts", 1)
        .raw(keys)
        .to_string();
    let app = TestApp::spawn(&schedule, None).await;
    (site, app)
}

/// Runs `cond` once; returns the run, its API view and what the site
/// served for it.
async fn run(app: &TestApp, site: &ValidatorSite) -> (Uuid, Value, Served) {
    let before = site.served();
    let (run, view) = app.run_once("cond", WITHIN).await;
    (run, view, site.served() - before)
}

/// A run's page results by URL.
async fn results(app: &TestApp, run: Uuid) -> BTreeMap<String, Value> {
    app.pages(run)
        .await
        .into_iter()
        .map(|p| (p["url"].as_str().unwrap().to_string(), p))
        .collect()
}

/// The facts change detection and exports read: title, fields, hash.
fn facts(page: &Value) -> Value {
    let r = &page["result"];
    json!({"title": r["title"], "fields": r["fields"], "content_sha256": r["content_sha256"], "bytes": r["bytes"]})
}

/// A run's changes (`GET /v1/runs/{id}/changes`): the counts and the URLs
/// of its changed pages.
async fn changes(app: &TestApp, run: Uuid) -> (Value, BTreeSet<String>) {
    let (status, body) = app.get(&format!("/v1/runs/{run}/changes")).await;
    assert_eq!(status, 200, "{body}");
    let urls = body["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["url"].as_str().unwrap().to_string())
        .collect();
    (body["changes"].clone(), urls)
}

/// The `fetches` counts of a run's API view.
fn fetches(view: &Value) -> (i64, i64) {
    (
        view["fetches"]["fetched"].as_i64().unwrap(),
        view["fetches"]["not_modified"].as_i64().unwrap(),
    )
}

#[tokio::test]
async fn an_unchanged_site_answers_304_everywhere_and_the_run_keeps_the_previous_facts() {
    let (site, app) = site_and_app("").await;
    let n = PAGES as u64;

    let (run1, view, served) = run(&app, &site).await;
    assert_eq!(view["pages"]["succeeded"], PAGES, "{view:#}");
    assert_eq!((served.full, served.conditional), (n, 0), "{served:?}");
    assert_eq!(fetches(&view), (PAGES as i64, 0), "{view:#}");
    let first = results(&app, run1).await;
    for page in first.values() {
        assert!(page["result"]["etag"].is_string(), "{page:#}");
        assert!(page["result"]["last_modified"].is_string(), "{page:#}");
    }

    // Nothing changed: every page is asked for conditionally, none is sent.
    let (run2, view, served) = run(&app, &site).await;
    assert_eq!(
        served,
        Served {
            requests: n,
            conditional: n,
            full: 0,
            not_modified: n,
            body_bytes: 0
        }
    );
    assert_eq!(view["pages"]["succeeded"], PAGES, "{view:#}");
    assert_eq!(fetches(&view), (0, PAGES as i64), "{view:#}");
    let second = results(&app, run2).await;
    assert_eq!(second.len(), PAGES);
    for (url, page) in &second {
        assert_eq!(facts(page), facts(&first[url]), "{url}: {page:#}");
        assert_eq!(page["result"]["not_modified"], true, "{page:#}");
        assert_eq!(page["result"]["http_status"], 304, "{page:#}");
        assert_eq!(page["result"]["etag"], first[url]["result"]["etag"]);
    }
    let (counts, changed) = changes(&app, run2).await;
    assert_eq!(
        counts,
        json!({"since_run_id": run1, "new": 0, "changed": 0, "unchanged": PAGES, "gone": 0, "unknown": 0})
    );
    assert!(changed.is_empty(), "{changed:?}");
    // The console's run page says so; run 1's, with nothing kept, does not.
    let cookie = crate::console::session(&app).await;
    let (status, _, body) =
        crate::console::page(&app, Some(&cookie), &format!("/ui/runs/{run2}")).await;
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!("<dt>not modified</dt><dd>{PAGES}</dd>"))
            && body.contains("<dt>fetched in full</dt><dd>0</dd>"),
        "{body}"
    );
    let (_, _, body) = crate::console::page(&app, Some(&cookie), &format!("/ui/runs/{run1}")).await;
    assert!(!body.contains(r#"id="fetches""#), "{body}");
    // The export reads the kept facts.
    let export = app
        .admin(
            Method::GET,
            &format!("/v1/runs/{run2}/results?format=jsonl"),
        )
        .await
        .text()
        .await
        .unwrap();
    let exported: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported.len(), PAGES, "{export}");
    for (i, line) in exported.iter().enumerate() {
        assert_eq!(line["title"], ValidatorSite::title(i, 0), "{line:#}");
        assert_eq!(
            line["fields"]["price"],
            ValidatorSite::price(i, 0),
            "{line:#}"
        );
    }

    // Three pages change: exactly those are fetched, and are `changed`.
    let changed_pages = [1, 5, 9];
    for i in changed_pages {
        site.change(i);
    }
    let (run3, view, served) = run(&app, &site).await;
    assert_eq!(
        (served.conditional, served.full, served.not_modified),
        (n, 3, n - 3),
        "{served:?}"
    );
    assert_eq!(fetches(&view), (3, PAGES as i64 - 3), "{view:#}");
    let (counts, changed) = changes(&app, run3).await;
    assert_eq!(counts["changed"], 3, "{counts:#}");
    assert_eq!(counts["unchanged"], PAGES - 3, "{counts:#}");
    assert_eq!(
        changed,
        changed_pages.iter().map(|&i| site.url(i)).collect(),
    );
    let third = results(&app, run3).await;
    for i in changed_pages {
        let page = &third[&site.url(i)];
        assert_eq!(
            page["result"]["fields"]["price"],
            ValidatorSite::price(i, 1),
            "{page:#}"
        );
    }

    // A run after a run that kept its facts is conditional again: the
    // kept rows carry their validators on.
    let (_, view, served) = run(&app, &site).await;
    assert_eq!((served.full, served.not_modified), (0, n), "{served:?}");
    assert_eq!(fetches(&view), (0, PAGES as i64), "{view:#}");
    let counted = app.metric("fanfare_pages_not_modified_total", "").await;
    assert_eq!(counted, (n + n - 3 + n) as f64);
}

#[tokio::test]
async fn a_schedule_with_conditional_false_sends_no_validators() {
    let (site, app) = site_and_app("conditional = false").await;
    let n = PAGES as u64;
    let (_, _, served) = run(&app, &site).await;
    assert_eq!(served.full, n);
    let (run2, view, served) = run(&app, &site).await;
    assert_eq!((served.conditional, served.full), (0, n), "{served:?}");
    assert_eq!(fetches(&view), (PAGES as i64, 0), "{view:#}");
    let (counts, _) = changes(&app, run2).await;
    assert_eq!(counts["unchanged"], PAGES, "{counts:#}");
}

#[tokio::test]
async fn a_site_that_ignores_validators_costs_a_full_fetch_and_nothing_changes() {
    let (site, app) = site_and_app("").await;
    let n = PAGES as u64;
    let (run1, _, _) = run(&app, &site).await;
    site.honour_validators(false);
    let (run2, view, served) = run(&app, &site).await;
    assert_eq!(
        (served.conditional, served.full, served.not_modified),
        (n, n, 0),
        "{served:?}"
    );
    assert_eq!(fetches(&view), (PAGES as i64, 0), "{view:#}");
    let (counts, _) = changes(&app, run2).await;
    assert_eq!(
        counts,
        json!({"since_run_id": run1, "new": 0, "changed": 0, "unchanged": PAGES, "gone": 0, "unknown": 0})
    );
}

/// A succeeded report for `request` with validators.
fn with_validators(request: &fanfare_crawler::CrawlRequest, i: usize) -> Value {
    let mut report = succeeded(request);
    report["title"] = json!(format!("Page {i}"));
    report["etag"] = json!(format!("\"e{i}\""));
    report["last_modified"] = json!("Mon, 07 Dec 2026 10:00:00 GMT");
    report
}

/// A 304 report for `request`, as a crawler sends one.
fn not_modified(request: &fanfare_crawler::CrawlRequest) -> Value {
    json!({
        "version": 1, "run_id": request.run_id, "page_id": request.page_id,
        "attempt": request.attempt, "outcome": "succeeded", "http_status": 304,
        "title": null, "fields": {}, "bytes": 0, "content_sha256": "", "fetch_ms": 3,
        "not_modified": true
    })
}

/// The page of `requests` for `url`.
fn for_url<'a>(
    requests: &'a [fanfare_crawler::CrawlRequest],
    url: &str,
) -> &'a fanfare_crawler::CrawlRequest {
    requests.iter().find(|r| r.url == url).unwrap()
}

#[tokio::test]
async fn the_lambda_event_carries_the_previous_runs_validators_and_a_304_keeps_its_facts() {
    let (app, lambda) = TestApp::spawn_recording(&lambda_schedule("s", 3, None, "")).await;
    let url = |i: usize| format!("http://127.0.0.1:9/p/{i}");

    // Run 1: pages 1 and 2 report validators, page 3 none.
    let run1 = app.trigger("s").await;
    let first = lambda.wait_for(3).await;
    assert!(first
        .iter()
        .all(|r| r.if_none_match.is_none() && r.if_modified_since.is_none()));
    for i in 1..=2 {
        let r = for_url(&first, &url(i));
        app.report_recorded(r, &with_validators(r, i)).await;
    }
    let r3 = for_url(&first, &url(3));
    app.report_recorded(r3, &succeeded(r3)).await;
    app.wait_finished(run1, WITHIN).await;

    // Run 2: the events of pages 1 and 2 carry them, page 3's none.
    let run2 = app.trigger("s").await;
    let all = lambda.wait_for(6).await;
    let second: Vec<_> = all
        .iter()
        .filter(|r| r.run_id == run2.to_string())
        .cloned()
        .collect();
    assert_eq!(second.len(), 3);
    for i in 1..=2 {
        let r = for_url(&second, &url(i));
        assert_eq!(r.if_none_match.as_deref(), Some(&*format!("\"e{i}\"")));
        assert_eq!(
            r.if_modified_since.as_deref(),
            Some("Mon, 07 Dec 2026 10:00:00 GMT")
        );
    }
    let r3 = for_url(&second, &url(3));
    assert_eq!((&r3.if_none_match, &r3.if_modified_since), (&None, &None));

    // Page 1 answers 304 and keeps run 1's facts; page 2 changed (a full
    // report); page 3 reports a 304 it was never asked for: there are no
    // facts to keep, so it fails.
    let r1 = for_url(&second, &url(1));
    app.report_recorded(r1, &not_modified(r1)).await;
    let r2 = for_url(&second, &url(2));
    let mut changed = with_validators(r2, 2);
    changed["fields"] = json!({"price": "12.00"});
    app.report_recorded(r2, &changed).await;
    app.report_recorded(r3, &not_modified(r3)).await;
    let view = app.wait_finished(run2, WITHIN).await;
    assert_eq!(fetches(&view), (1, 1), "{view:#}");
    let pages = results(&app, run2).await;
    let kept = &pages[&url(1)];
    assert_eq!(kept["status"], "succeeded", "{kept:#}");
    assert_eq!(kept["result"]["title"], "Page 1", "{kept:#}");
    assert_eq!(
        kept["result"]["fields"],
        json!({"price": "9.99"}),
        "{kept:#}"
    );
    assert_eq!(kept["result"]["content_sha256"], "a".repeat(64));
    assert_eq!(kept["result"]["etag"], "\"e1\"", "kept from run 1");
    let lost = &pages[&url(3)];
    assert_eq!(lost["status"], "failed", "{lost:#}");
    assert!(
        lost["error"]["message"]
            .as_str()
            .unwrap()
            .contains("304 Not Modified"),
        "{lost:#}"
    );
    let (counts, changed) = changes(&app, run2).await;
    assert_eq!(counts["changed"], 1, "{counts:#}");
    assert_eq!(counts["unchanged"], 1, "{counts:#}");
    assert_eq!(changed, BTreeSet::from([url(2)]));
}
