//! Whole runs: fan-out, fan-in, notification.

use std::sync::Arc;
use std::time::Duration;

use fanfare::demo::DemoSite;
use fanfare::dispatch::InvokeError;

use crate::helpers::*;

/// Verifies a Standard Webhooks signature independently of fanfare's code.
fn verify_signature(d: &Delivery) {
    let expected = d.expected_signature();
    assert_eq!(
        d.header("webhook-signature"),
        expected,
        "signature verifies"
    );
    let ts: i64 = d.header("webhook-timestamp").parse().unwrap();
    assert!(
        (chrono::Utc::now().timestamp() - ts).abs() < 300,
        "timestamp is current"
    );
}

#[tokio::test]
async fn a_thousand_page_run_through_the_local_crawler_ends_in_one_signed_webhook() {
    let site = DemoSite::start(1000).await.unwrap();
    let receiver = Receiver::start(0).await;
    let schedule = schedule("shop")
        .sitemap(&site.sitemap_url())
        .extract(r#"{ name = "h1.name", price = ".price" }"#)
        .key("max_in_flight", 64)
        .webhook(&receiver.url);
    let (app, run) = TestApp::spawn_and_trigger(&schedule).await;
    let finished = app.wait_finished(run, Duration::from_secs(120)).await;
    assert_eq!(finished["outcome"], "succeeded", "{finished:#}");
    assert_eq!(finished["pages"]["total"], 1000);
    assert_eq!(finished["pages"]["succeeded"], 1000);

    let deliveries = receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.deliveries().len(), 1, "exactly one webhook");
    let d = &deliveries[0];
    verify_signature(d);
    let body = d.json();
    assert_eq!(body["type"], "run.finished");
    assert_eq!(body["run_id"], run.to_string());
    assert_eq!(body["schedule"], "shop");
    assert_eq!(body["outcome"], "succeeded");
    assert_eq!(body["pages"]["total"], 1000);
    assert_eq!(body["pages"]["succeeded"], 1000);
    assert_eq!(body["failed_pages"], serde_json::json!([]));
    assert_eq!(d.header("webhook-id"), format!("msg_{}_0", run.simple()));

    // The crawler's facts reached the ledger.
    let (_, pages) = app.get(&format!("/v1/runs/{run}/pages?limit=1")).await;
    let page = &pages["pages"][0];
    assert_eq!(page["status"], "succeeded");
    let n: usize = page["url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(page["result"]["fields"]["name"], format!("Product {n}"));
    assert_eq!(page["result"]["http_status"], 200);
    assert_eq!(page["result"]["content_sha256"].as_str().unwrap().len(), 64);
    app.stop().await;
}

#[tokio::test]
async fn an_empty_page_list_finishes_at_once_as_succeeded_and_still_notifies() {
    let receiver = Receiver::start(0).await;
    let schedule = schedule("empty").webhook(&receiver.url);
    let (app, run) = TestApp::spawn_and_trigger(&schedule).await;
    let finished = app.wait_finished(run, Duration::from_secs(5)).await;
    assert_eq!(finished["outcome"], "succeeded");
    assert_eq!(finished["pages"]["total"], 0);
    let d = receiver.wait_for(1, Duration::from_secs(5)).await;
    verify_signature(&d[0]);
    assert_eq!(d[0].json()["pages"]["total"], 0);
    app.stop().await;
}

#[tokio::test]
async fn a_source_that_cannot_be_read_fails_the_run_with_the_reason_and_notifies() {
    let site = DemoSite::start(3).await.unwrap();
    let receiver = Receiver::start(0).await;
    let schedule = schedule("broken")
        .sitemap(&format!("{}/status/404", site.base_url()))
        .webhook(&receiver.url);
    let (app, run) = TestApp::spawn_and_trigger(&schedule).await;
    let finished = app.wait_finished(run, Duration::from_secs(10)).await;
    assert_eq!(finished["outcome"], "failed");
    assert!(
        finished["error"].as_str().unwrap().contains("404"),
        "{finished}"
    );
    let d = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert!(d[0].json()["error"].as_str().unwrap().contains("404"));
    app.stop().await;
}

#[tokio::test]
async fn dispatch_keeps_at_most_max_in_flight_pages_unreported() {
    let (app, lambda) = TestApp::spawn_recording(
        &lambda_schedule("capped", 30, None, "")
            .replace("max_in_flight = 10000", "max_in_flight = 7"),
    )
    .await;
    let run = app.trigger("capped").await;
    let first = lambda.wait_for(7).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        lambda.requests().len(),
        7,
        "no more than max_in_flight before any report"
    );
    // Each report frees one slot.
    for r in first.iter().take(3) {
        app.post_report(Some(&r.callback_token), &succeeded(r))
            .await;
    }
    lambda.wait_for(10).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(lambda.requests().len(), 10);
    // Report everything as it arrives until the run finishes.
    let mut reported = 3;
    while reported < 30 {
        let all = lambda.wait_for(reported + 1).await;
        for r in &all[reported..] {
            app.post_report(Some(&r.callback_token), &succeeded(r))
                .await;
        }
        reported = all.len();
    }
    let finished = app.wait_finished(run, Duration::from_secs(10)).await;
    assert_eq!(finished["pages"]["succeeded"], 30);
    // Every event carried the contract.
    for r in lambda.requests() {
        assert_eq!(r.version, 1);
        assert_eq!(r.run_id, run.to_string());
        assert_eq!(r.attempt, 1);
        assert!(r.callback_url.ends_with("/v1/callbacks"));
        assert_eq!(r.extract.get("price"), Some(&".price".into()));
    }
    app.stop().await;
}

#[tokio::test]
async fn a_failed_invoke_is_retried_and_an_unusable_function_fails_the_run() {
    let lambda = Arc::new(RecordingLambda::default());
    lambda
        .fail_next
        .lock()
        .unwrap()
        .push_back(InvokeError::Retryable(
            "TooManyRequestsException: slow down".into(),
        ));
    let app = TestApp::spawn(
        &lambda_schedule("flaky", 1, None, "max_attempts = 3"),
        Some(lambda.clone()),
    )
    .await;
    let run = app.trigger("flaky").await;
    let reqs = lambda.wait_for(1).await;
    assert_eq!(
        reqs[0].attempt, 2,
        "the first attempt's invoke failed; the second went through"
    );
    app.post_report(Some(&reqs[0].callback_token), &succeeded(&reqs[0]))
        .await;
    assert_eq!(app.wait_outcome(run, secs(5)).await, "succeeded");

    lambda
        .fail_next
        .lock()
        .unwrap()
        .push_back(InvokeError::FunctionUnusable(
            "ResourceNotFoundException: Function not found".into(),
        ));
    let (_, finished) = app.run_once("flaky", Duration::from_secs(5)).await;
    assert_eq!(finished["outcome"], "failed");
    assert!(finished["error"]
        .as_str()
        .unwrap()
        .contains("ResourceNotFound"));
    assert_eq!(finished["pages"]["cancelled"], 1);
    app.stop().await;
}

#[tokio::test]
async fn a_page_with_no_report_is_redispatched_then_times_out() {
    let (app, _, receiver, run, reqs) =
        lambda_run("silent", 1, "page_timeout = \"1s\"\nmax_attempts = 2", 2).await;
    assert_eq!((reqs[0].attempt, reqs[1].attempt), (1, 2));
    assert_eq!(reqs[0].page_id, reqs[1].page_id);
    let finished = app.wait_finished(run, Duration::from_secs(15)).await;
    assert_eq!(finished["outcome"], "failed");
    assert_eq!(finished["pages"]["timed_out"], 1);
    let d = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(
        d[0].json()["failed_pages"][0]["url"],
        "http://127.0.0.1:9/p/1"
    );
    // The first attempt's report, arriving late, is now a duplicate.
    let (s, b) = app
        .post_report(Some(&reqs[0].callback_token), &succeeded(&reqs[0]))
        .await;
    assert_eq!((s, b["status"].as_str()), (200, Some("duplicate")));
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_fails_at_first_gets_the_same_webhook_id_until_it_answers() {
    let receiver = Receiver::start(2).await;
    let schedule = schedule("retry").webhook(&receiver.url);
    let (app, run) = TestApp::spawn_and_trigger(&schedule).await;
    let d = receiver.wait_for(3, Duration::from_secs(20)).await;
    let ids: Vec<&str> = d.iter().map(|d| d.header("webhook-id")).collect();
    assert_eq!(ids, vec![ids[0]; 3]);
    for delivery in &d {
        verify_signature(delivery);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.deliveries().len(),
        3,
        "no delivery after the first success"
    );
    let (_, r) = app.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(r["notifications"][0]["status"], "delivered");
    assert_eq!(r["notifications"][0]["attempts"], 3);
    app.stop().await;
}

#[tokio::test]
async fn slack_gets_a_message_with_the_runs_facts() {
    let slack = Receiver::start(0).await;
    let schedule = schedule("to-slack").slack(&slack.url);
    let (app, run) = TestApp::spawn_and_trigger(&schedule).await;
    let d = slack.wait_for(1, secs(10)).await;
    let text = d[0].json()["text"].as_str().unwrap().to_string();
    assert!(text.contains("*to-slack*"), "{text}");
    assert!(text.contains("succeeded"), "{text}");
    assert!(text.contains(&run.to_string()), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn two_replicas_ticking_the_same_cron_create_one_run_per_fire() {
    let db = fresh_database().await;
    let schedule = schedule("every-second").cron("* * * * * *").to_string();
    let a = TestApp::spawn_on(&db, &schedule, None).await;
    let b = TestApp::spawn_on(&db, &schedule, None).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    a.stop().await;
    b.stop().await;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let fires: Vec<(chrono::DateTime<chrono::Utc>, String)> =
        sqlx::query_as("select scheduled_for, trigger from runs order by scheduled_for")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(fires.len() >= 3, "a fire per second: {fires:?}");
    for (t, trigger) in &fires {
        assert_eq!(trigger, "cron");
        assert_eq!(
            t.timestamp_subsec_nanos(),
            0,
            "nominal fire times are whole seconds"
        );
    }
    for pair in fires.windows(2) {
        assert_eq!(
            (pair[1].0 - pair[0].0).num_seconds(),
            1,
            "one run per fire: {fires:?}"
        );
    }
}
