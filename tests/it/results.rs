//! `GET /v1/runs/{id}/results`: every page's result, streamed as JSON
//! Lines or CSV, read back and compared field by field.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// A succeeded report with these facts.
fn report(r: &fanfare_crawler::contract::CrawlRequest, title: Value, fields: Value) -> Value {
    json!({
        "version": 1,
        "run_id": r.run_id,
        "page_id": r.page_id,
        "attempt": r.attempt,
        "outcome": "succeeded",
        "http_status": 200,
        "title": title,
        "fields": fields,
        "bytes": 4321,
        "content_sha256": "0123456789abcdef".repeat(4),
        "fetch_ms": 77
    })
}

async fn download(app: &TestApp, path: &str) -> (u16, String, String, String) {
    let resp = app.admin(Method::GET, path).await;
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (ct, cd) = (header("content-type"), header("content-disposition"));
    (status, ct, cd, resp.text().await.unwrap())
}

/// The columns of a CSV export: the page's, then the schedule's `fields`,
/// then the rest.
fn csv_header(fields: &[&str]) -> Vec<String> {
    let page = ["url", "status", "http_status", "title"];
    let rest = [
        "content_sha256",
        "fetch_ms",
        "error_kind",
        "error_message",
        "fields_json",
    ];
    page.iter()
        .chain(fields)
        .chain(rest.iter())
        .map(|c| c.to_string())
        .collect()
}

fn csv_rows(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

#[tokio::test]
async fn results_export_as_jsonl_and_csv_read_back_field_by_field() {
    let (app, lambda) = TestApp::spawn_recording(
        &lambda_schedule(
            "s",
            3,
            None,
            "extract = { price = \".price\", name = \"h1\" }",
        )
        .replace("extract = { price = \".price\" }\n", ""),
    )
    .await;
    let run_id = app.trigger("s").await;
    let mut reqs = lambda.wait_for(3).await;
    reqs.sort_by_key(|r| r.page_id.parse::<i64>().unwrap());
    // Commas, quotes and a line break where CSV must quote them; a field
    // that the schedule does not extract; a selector that matched nothing.
    let title = "Kettle, \"deluxe\"\nedition";
    let sent = [
        report(
            &reqs[0],
            json!(title),
            json!({"price": "9,99 €", "name": "Kettle", "colour": "red"}),
        ),
        report(
            &reqs[2],
            Value::Null,
            json!({"price": null, "name": "Lamp"}),
        ),
    ];
    for (r, body) in [(&reqs[0], &sent[0]), (&reqs[2], &sent[1])] {
        let (status, _) = app.post_report(Some(&r.callback_token), body).await;
        assert_eq!(status, 200);
    }
    let (status, _) = app
        .post_report(Some(&reqs[1].callback_token), &failed(&reqs[1], false))
        .await;
    assert_eq!(status, 200);
    app.wait_finished(run_id, Duration::from_secs(10)).await;

    // JSON Lines: one object per page, in page order.
    let (status, ct, cd, body) =
        download(&app, &format!("/v1/runs/{run_id}/results?format=jsonl")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ct, "application/x-ndjson");
    assert_eq!(cd, format!("attachment; filename=\"run-{run_id}.jsonl\""));
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{body}");
    assert!(body.ends_with('\n'));
    let first = &lines[0];
    assert_eq!(first["page_id"].to_string(), reqs[0].page_id);
    assert_eq!(first["url"], reqs[0].url);
    assert_eq!(first["status"], "succeeded");
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["http_status"], 200);
    assert_eq!(first["title"], title);
    assert_eq!(first["fields"], sent[0]["fields"]);
    assert_eq!(first["bytes"], 4321);
    assert_eq!(first["content_sha256"], sent[0]["content_sha256"]);
    assert_eq!(first["fetch_ms"], 77);
    assert_eq!(first["error_kind"], Value::Null);
    assert!(first["finished_at"].is_string());
    let second = &lines[1];
    assert_eq!(second["url"], reqs[1].url);
    assert_eq!(second["status"], "failed");
    assert_eq!(second["http_status"], Value::Null);
    assert_eq!(second["fields"], Value::Null);
    assert_eq!(second["error_kind"], "http_status");
    assert_eq!(second["error_message"], "HTTP 404 Not Found");
    let third = &lines[2];
    assert_eq!(third["title"], Value::Null);
    assert_eq!(third["fields"], json!({"price": null, "name": "Lamp"}));

    // CSV: the schedule's fields as columns (in name order), the rest in fields_json.
    let (status, ct, cd, body) =
        download(&app, &format!("/v1/runs/{run_id}/results?format=csv")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ct, "text/csv; charset=utf-8");
    assert_eq!(cd, format!("attachment; filename=\"run-{run_id}.csv\""));
    let (header, rows) = csv_rows(&body);
    assert_eq!(header, csv_header(&["name", "price"]));
    assert_eq!(rows.len(), 3);
    let sha = sent[0]["content_sha256"].as_str().unwrap();
    assert_eq!(
        rows[0],
        [
            reqs[0].url.as_str(),
            "succeeded",
            "200",
            title,
            "Kettle",
            "9,99 €",
            sha,
            "77",
            "",
            "",
            "{\"colour\":\"red\"}"
        ]
    );
    assert_eq!(
        rows[1],
        [
            reqs[1].url.as_str(),
            "failed",
            "",
            "",
            "",
            "",
            "",
            "",
            "http_status",
            "HTTP 404 Not Found",
            ""
        ]
    );
    assert_eq!(
        rows[2],
        [
            reqs[2].url.as_str(),
            "succeeded",
            "200",
            "",
            "Lamp",
            "",
            sha,
            "77",
            "",
            "",
            ""
        ]
    );

    // The status filter, in both formats.
    let (_, _, _, body) = download(
        &app,
        &format!("/v1/runs/{run_id}/results?format=csv&status=failed"),
    )
    .await;
    let (_, rows) = csv_rows(&body);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], reqs[1].url);
    let (_, _, _, body) = download(
        &app,
        &format!("/v1/runs/{run_id}/results?format=jsonl&status=succeeded"),
    )
    .await;
    let urls: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["url"].clone())
        .collect();
    assert_eq!(urls, [json!(reqs[0].url), json!(reqs[2].url)]);
    app.stop().await;
}

#[tokio::test]
async fn results_of_a_run_whose_schedule_is_gone_put_every_field_in_fields_json() {
    let app = app_with_one_lambda_page().await;
    // A finished run of a schedule this configuration no longer has.
    let run_id = uuid::Uuid::now_v7();
    sqlx::query(
        "insert into runs (id, schedule, scheduled_for, trigger, status, outcome, total_pages,
             open_pages, succeeded_pages, listed_at, finished_at)
         values ($1, 'removed', now(), 'manual', 'finished', 'succeeded', 1, 0, 1, now(), now())",
    )
    .bind(run_id)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into pages (run_id, url, status, attempt, result, finished_at)
         values ($1, 'https://a.example/1', 'succeeded', 1, $2, now())",
    )
    .bind(run_id)
    .bind(
        json!({"http_status": 200, "title": "A", "fields": {"price": "1.00", "sku": "x-1"},
                 "bytes": 1, "content_sha256": "f".repeat(64), "fetch_ms": 3}),
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let (status, _, _, body) =
        download(&app, &format!("/v1/runs/{run_id}/results?format=csv")).await;
    assert_eq!(status, 200, "{body}");
    let (header, rows) = csv_rows(&body);
    assert_eq!(header, csv_header(&[]));
    let fields: Value = serde_json::from_str(&rows[0][8]).unwrap();
    assert_eq!(fields, json!({"price": "1.00", "sku": "x-1"}));
    app.stop().await;
}

#[tokio::test]
async fn results_refuse_an_unknown_run_format_or_status_and_need_the_token() {
    let (app, _) = TestApp::spawn_recording(&lambda_schedule("s", 1, None, "")).await;
    let run_id = app.trigger("s").await;
    for (path, want, names) in [
        (
            format!("/v1/runs/{}/results", uuid::Uuid::now_v7()),
            404,
            "no run",
        ),
        ("/v1/runs/not-a-run/results".to_string(), 404, "not-a-run"),
        (
            format!("/v1/runs/{run_id}/results?format=xml"),
            400,
            "\"xml\"",
        ),
        (
            format!("/v1/runs/{run_id}/results?status=done"),
            400,
            "\"done\"",
        ),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(names),
            "{path}: {body}"
        );
    }
    let without_token = app
        .status_without_token(&format!("/v1/runs/{run_id}/results"))
        .await;
    assert_eq!(without_token, 401);
    app.stop().await;
}

#[tokio::test]
async fn a_fifth_export_at_once_is_refused_with_retry_after_while_callbacks_and_reads_go_on() {
    use fanfare::ledger::{self, Lease, Trigger};

    let (app, lambda) = TestApp::spawn_recording(&lambda_schedule("s", 3, None, "")).await;
    // A run big enough that an export not read stalls with most of it unsent
    // (tens of MB, more than the loopback socket buffers hold), of a
    // schedule no longer configured (nothing dispatches its pages).
    let big = ledger::create_run(&app.pool, "gone", chrono::Utc::now(), Trigger::Manual)
        .await
        .unwrap()
        .unwrap();
    let pad = "x".repeat(300);
    let urls: Vec<String> = (0..60_000)
        .map(|i| format!("https://shop.example/{pad}/{i}"))
        .collect();
    let hosts = ledger::host_policies(&urls, 8, Duration::ZERO);
    ledger::insert_pages(&app.pool, &Lease::first(big), &urls, &hosts)
        .await
        .unwrap()
        .unwrap();

    let export = || {
        app.client
            .get(format!("{}/v1/runs/{big}/results?format=csv", app.address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    // Four slow readers: the answers' headers are in, their bodies unread.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let resp = export().await.unwrap();
        assert_eq!(resp.status(), 200);
        slow.push(resp);
    }
    let fifth = export().await.unwrap();
    assert_eq!(fifth.status(), 429);
    assert_eq!(
        fifth
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("10")
    );
    let body: serde_json::Value = fifth.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("results exports"),
        "{body}"
    );

    // Meanwhile the daemon's own work and the other reads are served.
    let run = app.trigger("s").await;
    for r in lambda.wait_for(3).await {
        let (status, answer) = app.report_success(&r).await;
        assert_eq!((status, answer["status"].as_str()), (200, Some("recorded")));
    }
    let finished = app.wait_finished(run, Duration::from_secs(10)).await;
    assert_eq!(finished["outcome"], "succeeded", "{finished:#}");
    let (status, _) = app.get("/v1/runs").await;
    assert_eq!(status, 200);
    let (status, _) = app.get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(
        app.metric("fanfare_exports_refused_total", "").await,
        1.0,
        "the refusal is counted"
    );

    // The slow readers hang up; their places free up.
    drop(slow);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = export().await.unwrap();
        if resp.status() == 200 {
            let text = resp.text().await.unwrap();
            assert_eq!(text.lines().count(), 60_001, "header and every page");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the exports of the readers that hung up still hold their places"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

/// A finished run of schedule `s` with one succeeded page per title, each
/// with `price` (the schedule's extract field) and `note` (not extracted).
pub(crate) async fn finished_run_with_titles(
    pool: &sqlx::PgPool,
    pages: &[(&str, &str)],
) -> uuid::Uuid {
    let run_id = uuid::Uuid::now_v7();
    let n = pages.len() as i64;
    sqlx::query(
        "insert into runs (id, schedule, scheduled_for, trigger, status, outcome, total_pages,
             open_pages, succeeded_pages, listed_at, finished_at)
         values ($1, 's', now(), 'manual', 'finished', 'succeeded', $2, 0, $2, now(), now())",
    )
    .bind(run_id)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
    for (i, (title, price)) in pages.iter().enumerate() {
        sqlx::query(
            "insert into pages (run_id, url, status, attempt, result, finished_at)
             values ($1, $2, 'succeeded', 1, $3, now())",
        )
        .bind(run_id)
        .bind(format!("https://a.example/{i}"))
        .bind(json!({"http_status": 200, "title": title,
                     "fields": {"price": price, "note": title},
                     "bytes": 1, "content_sha256": "f".repeat(64), "fetch_ms": 3}))
        .execute(pool)
        .await
        .unwrap();
    }
    run_id
}

#[tokio::test]
async fn csv_cells_that_a_spreadsheet_would_run_get_a_quote_unless_raw_is_asked_for() {
    let app = app_with_one_lambda_page().await;
    let pages = [
        ("=HYPERLINK(\"http://evil.example\",\"Click\")", "=1+1"),
        ("+cmd|' /C calc'!A0", "+3"),
        ("-2+3", "-4.50"),
        ("@SUM(1+1)*cmd|' /C calc'!A0", "@x"),
        ("\t=1+1", "\t2"),
        ("\r=1+1", "\r2"),
        ("Kettle = deluxe", "9.99"),
    ];
    let run_id = finished_run_with_titles(&app.pool, &pages).await;
    let quoted = |s: &str| {
        if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{s}")
        } else {
            s.to_string()
        }
    };

    for query in ["format=csv", "format=csv&cells=safe"] {
        let (status, _, _, body) =
            download(&app, &format!("/v1/runs/{run_id}/results?{query}")).await;
        assert_eq!(status, 200, "{body}");
        let (header, rows) = csv_rows(&body);
        assert_eq!(header[3..5], ["title", "price"]);
        for (row, (title, price)) in rows.iter().zip(pages) {
            assert_eq!(row[3], quoted(title), "{query}: {row:?}");
            assert_eq!(row[4], quoted(price), "{query}: {row:?}");
            // Fields not extracted go into fields_json, a JSON object: "{...".
            let extra: Value = serde_json::from_str(&row[9]).unwrap();
            assert_eq!(extra["note"], title);
        }
        assert_eq!(rows[6][3], "Kettle = deluxe", "plain text is left alone");
    }

    let (status, _, _, body) = download(
        &app,
        &format!("/v1/runs/{run_id}/results?format=csv&cells=raw"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, rows) = csv_rows(&body);
    for (row, (title, price)) in rows.iter().zip(pages) {
        assert_eq!((row[3].as_str(), row[4].as_str()), (title, price));
    }

    // JSON Lines carry the text as it is, whatever cells says.
    for query in ["format=jsonl", "format=jsonl&cells=safe"] {
        let (status, _, _, body) =
            download(&app, &format!("/v1/runs/{run_id}/results?{query}")).await;
        assert_eq!(status, 200, "{body}");
        let titles: Vec<Value> = body
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["title"].clone())
            .collect();
        let want: Vec<Value> = pages.iter().map(|(t, _)| json!(t)).collect();
        assert_eq!(titles, want, "{query}");
    }

    let (status, body) = app
        .get(&format!(
            "/v1/runs/{run_id}/results?format=csv&cells=formulas"
        ))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("\"formulas\""),
        "{body}"
    );
    app.stop().await;
}
