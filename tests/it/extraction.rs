//! Structured extraction end to end: the demo shop's JSON-LD price, a
//! list of links and a regex-read number, crawled in-process, keep their
//! JSON types through the ledger, the API and the CSV/JSONL export; and a
//! field moved from text to `type = "number"` is compared by its text.

use std::time::Duration;

use fanfare::demo::{self, DemoSite, DEMO_EXTRACT};
use serde_json::{json, Value};

use crate::changes::{page, Shop};
use crate::helpers::*;

/// A schedule crawling every page of `site` in-process with the demo's own
/// extraction rules and two more typed fields.
fn demo_schedule(name: &str, site: &DemoSite) -> String {
    let mut fields: Vec<String> = DEMO_EXTRACT
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    fields.push(r#"links = { css = "nav a", attr = "href", all = true }"#.into());
    fields.push(
        r#"number = { css = ".description", regex = "number (\\d+)", type = "number" }"#.into(),
    );
    schedule(name)
        .urls(site.page_urls())
        .extract(&format!("{{ {} }}", fields.join(", ")))
        .key("max_attempts", 1)
        .to_string()
}

/// The demo price of page `n` as the number a `type = "number"` field gives.
fn demo_price(n: usize) -> Value {
    let price: f64 = demo::price(n).parse().unwrap();
    json!(price)
}

#[tokio::test]
async fn typed_fields_keep_their_json_types_through_the_ledger_the_api_and_the_export() {
    let site = DemoSite::start(3).await.unwrap();
    let app = TestApp::spawn(&demo_schedule("demo", &site), None).await;
    let (run, finished) = app.run_once("demo", Duration::from_secs(30)).await;
    assert_eq!(finished["pages"]["succeeded"], 3, "{finished:#}");
    let base = site.base_url();

    // The API's page list: typed values as the crawler reported them.
    let pages = app.pages(run).await;
    for (i, page) in pages.iter().enumerate() {
        let n = i + 1;
        let fields = &page["result"]["fields"];
        assert_eq!(fields["name"], format!("Product {n}"), "{page:#}");
        assert_eq!(fields["price"], demo::price(n), "text stays text: {page:#}");
        assert_eq!(fields["offer_price"], demo_price(n), "{page:#}");
        assert!(fields["offer_price"].is_number(), "{page:#}");
        assert_eq!(fields["number"], json!(n), "{page:#}");
        assert!(fields["links"].is_array(), "{page:#}");
    }
    assert_eq!(
        pages[1]["result"]["fields"]["links"],
        json!([
            format!("{base}/"),
            format!("{base}/products/1"),
            format!("{base}/products/3")
        ])
    );

    // JSON Lines: the same values, the same types.
    let jsonl = export(&app, run, "jsonl").await;
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{jsonl}");
    for (line, page) in lines.iter().zip(&pages) {
        assert_eq!(line["fields"], page["result"]["fields"], "{line:#}");
    }

    // CSV: a number as a number, an array as its JSON text.
    let csv = export(&app, run, "csv").await;
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    assert_eq!(rows.len(), 3, "{csv}");
    let second = &rows[1];
    assert_eq!(second[column("offer_price")], demo_price(2).to_string());
    assert_eq!(second[column("number")], "2");
    assert_eq!(second[column("price")], demo::price(2));
    let links: Value = serde_json::from_str(&second[column("links")]).unwrap();
    assert_eq!(links, pages[1]["result"]["fields"]["links"]);
    app.stop().await;
    site.shutdown().await;
}

async fn export(app: &TestApp, run: uuid::Uuid, format: &str) -> String {
    let path = format!("/v1/runs/{run}/results?format={format}");
    let resp = app.admin(Method::GET, &path).await;
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

#[tokio::test]
async fn a_field_moved_from_text_to_a_number_changes_only_where_its_value_does() {
    let db = fanfare_testkit::TestDatabase::create().await;
    let shop = Shop::start().await;
    shop.set("a", page("A", "1299"));
    shop.set("b", page("B", "1299"));
    shop.set("c", page("C", "9.99"));
    shop.list(&["a", "b", "c"]);

    // Run 1: the price as text.
    let app = TestApp::spawn_on(db.url(), &shop.schedule("shop", "", ""), None).await;
    let run1 = app.trigger("shop").await;
    app.wait_finished(run1, Duration::from_secs(30)).await;
    let pages = app.pages(run1).await;
    assert_eq!(pages[0]["result"]["fields"]["price"], "1299");
    app.stop().await;

    // Run 2: the same schedule reading the price as a number; b's price moved.
    shop.set("b", page("B", "1399"));
    let hook = Receiver::accepting().await;
    let schedule = shop
        .schedule("shop", "", &fanfare_testkit::webhook_block(&hook.url))
        .replace(
            r#"extract = { price = ".price" }"#,
            r#"extract = { price = { css = ".price", type = "number" } }"#,
        );
    assert!(schedule.contains("type = \"number\""), "{schedule}");
    let app = TestApp::spawn_on(db.url(), &schedule, None).await;
    let run2 = app.trigger("shop").await;
    app.wait_finished(run2, Duration::from_secs(30)).await;
    let (status, body) = app.get(&format!("/v1/runs/{run2}/changes")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["changes"],
        json!({"since_run_id": run1, "new": 0, "changed": 1, "unchanged": 2, "gone": 0, "unknown": 0}),
        "1299 is \"1299\" and 9.99 is \"9.99\"; only b changed: {body:#}"
    );

    // The notification shows the typed values: the text before, the number after.
    hook.wait_delivered(run2, Duration::from_secs(20)).await;
    let finished = hook
        .deliveries()
        .iter()
        .map(|d| d.json())
        .find(|b| b["run_id"] == run2.to_string() && b["type"] == "run.finished")
        .expect("run 2's run.finished");
    let changed = &finished["changed_pages"];
    assert_eq!(changed.as_array().map(Vec::len), Some(1), "{finished:#}");
    assert_eq!(changed[0]["url"], shop.url("b"));
    assert_eq!(changed[0]["before"]["fields"]["price"], "1299");
    assert_eq!(changed[0]["after"]["fields"]["price"], 1399);
    app.stop().await;
}
