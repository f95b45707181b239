//! Change detection: the same schedule run three times against a loopback
//! shop whose prices change and whose pages appear, vanish and answer 404
//! between runs; what each `run.finished` says changed, what a
//! `when = "changes"` target is sent, and `GET /v1/runs/{id}/changes`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::helpers::*;

/// One product page of the shop: its title and price, or a 404.
#[derive(Clone)]
pub(crate) enum Product {
    Page { title: String, price: String },
    NotFound,
}

/// A loopback shop: `/pages.json` lists the listed products' URLs in
/// order, `/p/{name}` serves each (title, `.price`) or a 404. Its content
/// is changed between runs through [`Shop::set`] and [`Shop::list`].
#[derive(Clone)]
pub(crate) struct Shop {
    pub base: String,
    state: Arc<Mutex<ShopState>>,
}

#[derive(Default)]
struct ShopState {
    listed: Vec<String>,
    products: BTreeMap<String, Product>,
}

/// The HTML of a product page.
fn product_html(title: &str, price: &str) -> String {
    format!("<html><head><title>{title}</title></head><body><h1>{title}</h1><span class=\"price\">{price}</span></body></html>")
}

impl Shop {
    pub async fn start() -> Self {
        async fn list(State(shop): State<Shop>) -> Json<Vec<String>> {
            let s = shop.state.lock().unwrap();
            Json(
                s.listed
                    .iter()
                    .map(|n| format!("{}/p/{n}", shop.base))
                    .collect(),
            )
        }
        async fn product(State(shop): State<Shop>, Path(name): Path<String>) -> Response {
            let product = shop.state.lock().unwrap().products.get(&name).cloned();
            match product {
                Some(Product::Page { title, price }) => {
                    Html(product_html(&title, &price)).into_response()
                }
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }
        let (listener, base) = fanfare_testkit::net::loopback().await;
        let shop = Shop {
            base,
            state: Arc::default(),
        };
        let app = Router::new()
            .route("/pages.json", get(list))
            .route("/p/{name}", get(product))
            .with_state(shop.clone());
        fanfare_testkit::net::serve_on(listener, app);
        shop
    }

    /// Sets a product's page (listing is separate: [`Shop::list`]).
    pub fn set(&self, name: &str, product: Product) {
        self.state
            .lock()
            .unwrap()
            .products
            .insert(name.to_string(), product);
    }

    /// Sets what `/pages.json` lists, in order.
    pub fn list(&self, names: &[&str]) {
        self.state.lock().unwrap().listed = names.iter().map(|n| n.to_string()).collect();
    }

    /// A product's URL.
    pub fn url(&self, name: &str) -> String {
        format!("{}/p/{name}", self.base)
    }

    /// A schedule `name` over this shop, crawled in-process, extracting
    /// `price`; `notify` is appended.
    pub fn schedule(&self, name: &str, extra: &str, notify: &str) -> String {
        fanfare_testkit::schedule(name)
            .pages(&format!("{{ http = \"{}/pages.json\" }}", self.base))
            .extract(r#"{ price = ".price" }"#)
            .key("max_attempts", 1)
            .raw(extra)
            .notify_block(notify)
            .to_string()
    }
}

pub(crate) fn page(title: &str, price: &str) -> Product {
    Product::Page {
        title: title.into(),
        price: price.into(),
    }
}

/// What a change shows of a product page served as `title` and `price`.
fn facts(title: &str, price: &str) -> Value {
    let sha = Sha256::digest(product_html(title, price).as_bytes());
    json!({"title": title, "fields": {"price": price}, "content_sha256": format!("{sha:x}")})
}

/// The shop of the three-run test before its first run: four products.
pub(crate) async fn shop_of_four() -> Shop {
    let shop = Shop::start().await;
    for (name, price) in [("a", "10"), ("b", "20"), ("c", "30"), ("d", "40")] {
        shop.set(name, page(&format!("Product {name}"), price));
    }
    shop.list(&["a", "b", "c", "d"]);
    shop
}

/// Between the first and second run: b's price changes, e appears, c is
/// no longer listed and d answers 404.
pub(crate) fn change_the_shop(shop: &Shop) {
    shop.set("b", page("Product b", "25"));
    shop.set("e", page("Product e", "50"));
    shop.set("d", Product::NotFound);
    shop.list(&["a", "b", "d", "e"]);
}

/// An application with the schedule `shop` over [`shop_of_four`], run
/// once, [`change_the_shop`] and run again; returns the app and both runs.
pub(crate) async fn two_runs_of_a_changing_shop() -> (TestApp, Shop, Uuid, Uuid) {
    let shop = shop_of_four().await;
    let app = TestApp::spawn(&shop.schedule("shop", "", ""), None).await;
    let (run1, _) = app.run_once("shop", Duration::from_secs(30)).await;
    change_the_shop(&shop);
    let (run2, _) = app.run_once("shop", Duration::from_secs(30)).await;
    (app, shop, run1, run2)
}

/// The one `run.finished` body `receiver` got for `run`, after waiting
/// for it.
async fn finished_body(receiver: &Receiver, run: Uuid) -> Value {
    receiver.wait_delivered(run, Duration::from_secs(20)).await;
    let bodies: Vec<Value> = receiver
        .deliveries()
        .iter()
        .map(|d| d.json())
        .filter(|b| b["run_id"] == run.to_string() && b["type"] == "run.finished")
        .collect();
    assert_eq!(bodies.len(), 1, "one delivery for run {run}: {bodies:#?}");
    bodies.into_iter().next().unwrap()
}

/// The targets (index) with an outbox row for `run`.
async fn notified_targets(app: &TestApp, run: Uuid) -> Vec<i64> {
    let (status, body) = app.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(status, 200, "{body}");
    body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["target"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn three_runs_report_new_changed_and_gone_pages_and_when_changes_skips_a_quiet_run() {
    let shop = shop_of_four().await;
    let always = Receiver::accepting().await;
    let on_changes = Receiver::accepting().await;
    let slack = Receiver::accepting().await;
    let notify = format!(
        "{}[[schedules.notify]]\nwebhook = {{ url = \"{}\", secret = \"{WEBHOOK_SECRET}\" }}\nwhen = \"changes\"\n[[schedules.notify]]\nslack = {{ url = \"{}\" }}\n",
        fanfare_testkit::webhook_block(&always.url),
        on_changes.url,
        slack.url,
    );
    let app = TestApp::spawn(&shop.schedule("shop", "", &notify), None).await;

    // Run 1: nothing to compare with.
    let (run1, finished) = app.run_once("shop", Duration::from_secs(30)).await;
    assert_eq!(finished["pages"]["succeeded"], 4, "{finished:#}");
    let body = finished_body(&always, run1).await;
    assert_eq!(body["changes"], Value::Null, "{body:#}");
    assert_eq!(body["changed_pages"], json!([]), "{body:#}");
    assert_eq!(
        notified_targets(&app, run1).await,
        [0, 2],
        "a first run has no changes: no row for the when = \"changes\" target"
    );

    // Run 2: b changed, e new, c unlisted and d 404 gone, a unchanged.
    change_the_shop(&shop);
    let (run2, finished) = app.run_once("shop", Duration::from_secs(30)).await;
    assert_eq!(finished["pages"]["succeeded"], 3, "{finished:#}");
    assert_eq!(finished["pages"]["failed"], 1, "{finished:#}");
    let expected_changes = json!({"since_run_id": run1, "new": 1, "changed": 1, "unchanged": 1, "gone": 2, "unknown": 0});
    let expected_pages = json!([
        {"url": shop.url("b"), "kind": "changed", "before": facts("Product b", "20"), "after": facts("Product b", "25")},
        {"url": shop.url("d"), "kind": "gone", "before": facts("Product d", "40"), "after": null},
        {"url": shop.url("e"), "kind": "new", "before": null, "after": facts("Product e", "50")},
        {"url": shop.url("c"), "kind": "gone", "before": facts("Product c", "30"), "after": null},
    ]);
    for receiver in [&always, &on_changes] {
        let body = finished_body(receiver, run2).await;
        assert_eq!(body["changes"], expected_changes, "{body:#}");
        assert_eq!(body["changed_pages"], expected_pages, "{body:#}");
    }
    assert_eq!(notified_targets(&app, run2).await, [0, 1, 2]);
    let slack_text = slack
        .wait_for(2, Duration::from_secs(20))
        .await
        .iter()
        .map(|d| d.json()["text"].as_str().unwrap().to_string())
        .find(|t| t.contains(&run2.to_string()))
        .expect("a Slack message about run 2");
    let change_lines: Vec<&str> = slack_text.lines().skip(1).collect();
    assert_eq!(
        change_lines,
        [
            "Since the previous run: 1 new, 1 changed, 2 gone, 1 unchanged.".to_string(),
            format!("~ {}: price 20 → 25", shop.url("b")),
            format!("- {}", shop.url("d")),
            format!("+ {}", shop.url("e")),
            format!("- {}", shop.url("c")),
            format!(
                "• {}: {} answered HTTP 404 Not Found",
                shop.url("d"),
                shop.url("d")
            ),
        ],
        "{slack_text}"
    );

    // Run 3: nothing changed (d still 404: neither gone again nor compared).
    let run3 = app.trigger("shop").await;
    app.wait_finished(run3, Duration::from_secs(30)).await;
    let body = finished_body(&always, run3).await;
    assert_eq!(
        body["changes"],
        json!({"since_run_id": run2, "new": 0, "changed": 0, "unchanged": 3, "gone": 0, "unknown": 1}),
        "{body:#}"
    );
    assert_eq!(body["changed_pages"], json!([]), "{body:#}");
    slack.wait_for(3, Duration::from_secs(20)).await;
    assert_eq!(
        notified_targets(&app, run3).await,
        [0, 2],
        "no outbox row for the when = \"changes\" target of a run without changes"
    );
    let to_changes: Vec<String> = on_changes.hits().into_iter().map(|h| h.run_id).collect();
    assert_eq!(
        to_changes,
        [run2.to_string()],
        "the when = \"changes\" target got run 2 only"
    );
    let to_always: Vec<String> = always.hits().into_iter().map(|h| h.run_id).collect();
    assert_eq!(
        to_always,
        [run1, run2, run3].map(|r| r.to_string()),
        "the always target got every run"
    );
    app.stop().await;
}

#[tokio::test]
async fn compare_content_counts_a_page_whose_body_changed_but_not_its_fields() {
    let shop = Shop::start().await;
    shop.set("a", page("A", "10"));
    shop.set("b", page("B", "20"));
    shop.list(&["a", "b"]);
    let hook = Receiver::accepting().await;
    let app = TestApp::spawn(
        &format!(
            "{}{}",
            shop.schedule("by-fields", "", &fanfare_testkit::webhook_block(&hook.url)),
            shop.schedule("by-content", "compare = \"content\"", ""),
        ),
        None,
    )
    .await;
    let mut first = Vec::new();
    for schedule in ["by-fields", "by-content"] {
        let run = app.trigger(schedule).await;
        app.wait_finished(run, Duration::from_secs(30)).await;
        first.push(run);
    }
    // A new body with the same title and price: extracted text is trimmed.
    shop.set("a", page("A", "10 "));
    for (schedule, since) in ["by-fields", "by-content"].into_iter().zip(first) {
        let run = app.trigger(schedule).await;
        app.wait_finished(run, Duration::from_secs(30)).await;
        let (status, body) = app.get(&format!("/v1/runs/{run}/changes")).await;
        assert_eq!(status, 200, "{body}");
        let (changed, unchanged) = if schedule == "by-content" {
            (1, 1)
        } else {
            // The crawler trims extracted text: "10 " is still "10".
            (0, 2)
        };
        assert_eq!(
            body["changes"],
            json!({"since_run_id": since, "new": 0, "changed": changed, "unchanged": unchanged, "gone": 0, "unknown": 0}),
            "{schedule}: {body:#}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_changes_endpoint_pages_by_kind_and_refuses_bad_queries() {
    let (app, shop, run1, run2) = two_runs_of_a_changing_shop().await;

    let urls = |body: &Value| -> Vec<String> {
        body["pages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{} {}",
                    p["kind"].as_str().unwrap(),
                    p["url"].as_str().unwrap()
                )
            })
            .collect()
    };
    let (status, first) = app.get(&format!("/v1/runs/{run1}/changes")).await;
    assert_eq!(status, 200);
    assert_eq!(
        first,
        json!({"changes": null, "pages": [], "next_after": null})
    );

    let (status, all) = app.get(&format!("/v1/runs/{run2}/changes")).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["changes"]["gone"], 2, "{all:#}");
    assert_eq!(
        urls(&all),
        [
            format!("changed {}", shop.url("b")),
            format!("gone {}", shop.url("d")),
            format!("new {}", shop.url("e")),
            format!("gone {}", shop.url("c")),
        ]
    );
    assert_eq!(all["next_after"], Value::Null);

    let (_, gone) = app.get(&format!("/v1/runs/{run2}/changes?kind=gone")).await;
    assert_eq!(
        urls(&gone),
        [
            format!("gone {}", shop.url("d")),
            format!("gone {}", shop.url("c"))
        ]
    );
    assert_eq!(gone["changes"], all["changes"], "the counts are the run's");

    // Keyset paging: two, then the rest after the last id seen.
    let (_, page1) = app.get(&format!("/v1/runs/{run2}/changes?limit=2")).await;
    assert_eq!(urls(&page1), urls(&all)[..2]);
    let after = page1["next_after"].as_i64().expect("a next page");
    assert_eq!(after, page1["pages"][1]["id"].as_i64().unwrap());
    let (_, page2) = app
        .get(&format!("/v1/runs/{run2}/changes?limit=2&after={after}"))
        .await;
    assert_eq!(urls(&page2), urls(&all)[2..]);

    for bad in [
        "kind=unchanged",
        "kind=",
        "limit=0",
        "limit=1001",
        "after=x",
    ] {
        let (status, body) = app.get(&format!("/v1/runs/{run2}/changes?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    for unknown in [Uuid::now_v7().to_string(), "nope".to_string()] {
        let (status, _) = app.get(&format!("/v1/runs/{unknown}/changes")).await;
        assert_eq!(status, 404, "{unknown}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_redrive_run_is_not_compared_and_is_not_the_run_compared_with() {
    let shop = shop_of_four().await;
    shop.set("d", Product::NotFound);
    let app = TestApp::spawn(&shop.schedule("shop", "", ""), None).await;
    let (run1, _) = app.run_once("shop", Duration::from_secs(30)).await;
    let (status, redrive) = app.post(&format!("/v1/runs/{run1}/redrive")).await;
    assert_eq!(status, 202, "{redrive}");
    let redrive: Uuid = redrive["run_id"].as_str().unwrap().parse().unwrap();
    app.wait_finished(redrive, Duration::from_secs(30)).await;
    let (_, body) = app.get(&format!("/v1/runs/{redrive}/changes")).await;
    assert_eq!(body["changes"], Value::Null, "{body:#}");

    shop.set("a", page("Product a", "11"));
    let run3 = app.trigger("shop").await;
    app.wait_finished(run3, Duration::from_secs(30)).await;
    let (_, body) = app.get(&format!("/v1/runs/{run3}/changes")).await;
    assert_eq!(
        body["changes"],
        json!({"since_run_id": run1, "new": 0, "changed": 1, "unchanged": 2, "gone": 0, "unknown": 1}),
        "{body:#}"
    );
    app.stop().await;
}
