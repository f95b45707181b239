//! `GET /v1/schedules` and `GET /v1/schedules/{name}`: configuration, pause
//! state, next fire and last run of each schedule.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};

use crate::helpers::*;

/// A local-invoker schedule firing at 03:00 on January 1st in Chicago (it
/// does not fire while a test runs), then a trigger-only Lambda schedule.
fn schedules() -> String {
    format!(
        "{}{}",
        schedule("new-year")
            .cron("0 0 3 1 1 *")
            .text("timezone", "America/Chicago")
            .urls(["http://127.0.0.1:9/ny"]),
        lambda_schedule("adhoc", 1, None, "")
    )
}

/// 03:00 CST (UTC-6) on the next January 1st, computed without fanfare.
fn next_new_year_in_chicago(now: DateTime<Utc>) -> DateTime<Utc> {
    let this_year = Utc
        .with_ymd_and_hms(now.year(), 1, 1, 9, 0, 0)
        .single()
        .unwrap();
    if this_year > now {
        this_year
    } else {
        Utc.with_ymd_and_hms(now.year() + 1, 1, 1, 9, 0, 0)
            .single()
            .unwrap()
    }
}

#[tokio::test]
async fn schedules_show_their_cron_pause_next_fire_and_newest_run() {
    let (app, lambda) = TestApp::spawn_recording(&schedules()).await;

    let (status, body) = app.get("/v1/schedules").await;
    assert_eq!(status, 200, "{body}");
    let list = body["schedules"].as_array().expect("a schedules array");
    let names: Vec<&str> = list.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["new-year", "adhoc"],
        "configuration order: {body:#}"
    );
    let new_year = &list[0];
    assert_eq!(new_year["cron"], "0 0 3 1 1 *");
    assert_eq!(new_year["timezone"], "America/Chicago");
    assert_eq!(new_year["paused"], false);
    assert_eq!(new_year["invoker"], "local");
    assert!(new_year["last_run"].is_null(), "{new_year:#}");
    let next: DateTime<Utc> = new_year["next_fire_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(next, next_new_year_in_chicago(Utc::now()));
    let adhoc = &list[1];
    assert!(adhoc["cron"].is_null(), "{adhoc:#}");
    assert!(adhoc["timezone"].is_null(), "{adhoc:#}");
    assert!(adhoc["next_fire_at"].is_null(), "{adhoc:#}");
    assert_eq!(adhoc["invoker"], "lambda");
    assert!(adhoc["last_run"].is_null(), "{adhoc:#}");

    // A paused schedule still shows its next nominal fire.
    let (status, paused) = app.post("/v1/schedules/new-year/pause").await;
    assert_eq!(status, 200, "{paused}");
    let (status, one) = app.get("/v1/schedules/new-year").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["paused"], true);
    assert_eq!(one["next_fire_at"], new_year["next_fire_at"]);

    // The last run is the newest: a finished one, then one still open.
    let first = app.trigger("adhoc").await;
    let request = lambda.wait_for(1).await.remove(0);
    app.post_report(Some(&request.callback_token), &failed(&request, false))
        .await;
    app.wait_finished(first, Duration::from_secs(5)).await;
    let (_, one) = app.get("/v1/schedules/adhoc").await;
    let last = &one["last_run"];
    assert_eq!(last["id"], first.to_string(), "{one:#}");
    assert_eq!(last["trigger"], "manual");
    assert_eq!(last["status"], "finished");
    assert_eq!(last["outcome"], "failed");
    assert!(last["finished_at"].is_string(), "{one:#}");
    assert!(last["scheduled_for"].is_string(), "{one:#}");
    assert!(last["created_at"].is_string(), "{one:#}");
    assert!(last["duration_seconds"].as_f64().unwrap() >= 0.0, "{one:#}");

    let second = app.trigger("adhoc").await;
    lambda.wait_for(2).await;
    let (_, body) = app.get("/v1/schedules").await;
    let adhoc = &body["schedules"][1];
    assert_eq!(adhoc["last_run"]["id"], second.to_string(), "{body:#}");
    assert_ne!(adhoc["last_run"]["status"], "finished", "{body:#}");
    assert!(adhoc["last_run"]["outcome"].is_null(), "{body:#}");
    assert!(adhoc["last_run"]["duration_seconds"].is_null(), "{body:#}");
    assert!(body["schedules"][0]["last_run"].is_null(), "{body:#}");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_schedule_is_404_and_schedules_need_the_admin_token() {
    let app = TestApp::spawn(&schedules(), Some(Arc::new(RecordingLambda::default()))).await;
    let (status, body) = app.get("/v1/schedules/nope").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("\"nope\""),
        "{body}"
    );
    for path in ["/v1/schedules", "/v1/schedules/adhoc"] {
        let status = app.status_without_token(path).await;
        assert_eq!(status, 401, "{path} without a token");
    }
    app.stop().await;
}
