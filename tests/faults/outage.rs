//! A 30 s database outage under the daemon (a loopback proxy to Postgres,
//! cut and restored), seen the way the deployment's load balancer sees it:
//! `/healthz` (the target group's health check: every 10 s, 5 s timeout,
//! unhealthy after 2 failures) keeps answering 200 quickly throughout, while
//! `/readyz` reports the database unavailable; afterwards the daemon resumes
//! without a restart and the run it had in flight finishes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fanfare::Settings;

use crate::helpers::*;
use fanfare_testkit::{AppTask, PgProxy};

const OUTAGE: Duration = Duration::from_secs(30);
/// The load balancer's health check timeout (deploy/fanfare.yaml).
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// One answer of an endpoint: its status (0: no answer) and how long it took.
async fn probe(client: &reqwest::Client, url: &str) -> (u16, Duration) {
    let started = Instant::now();
    let status = match client.get(url).timeout(HEALTH_CHECK_TIMEOUT).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    };
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_30_s_database_outage_healthz_stays_200_and_fast_while_readyz_is_503_and_the_run_resumes_after(
) {
    let db = fresh_database().await;
    let proxy = PgProxy::start(&db).await;

    let lambda = Arc::new(RecordingLambda::default());
    let schedule = fanfare_testkit::lambda_schedule_block("outage", 2, "", "");
    let settings = Settings::from_toml(&config_toml_on(&proxy.url, 0, 8, &schedule))
        .unwrap_or_else(|e| panic!("test configuration is valid: {e}"));
    let overrides = fanfare::startup::Overrides {
        lambda: Some(lambda.clone()),
        ..Default::default()
    };
    let (address, app) = AppTask::start(settings, overrides).await;
    let client = reqwest::Client::new();
    assert!(wait_ready(&client, &address, Duration::from_secs(10)).await);
    let run = trigger(&client, &address, "outage").await;
    let reqs = lambda.wait_for(2).await;
    let (healthz, readyz) = (format!("{address}/healthz"), format!("{address}/readyz"));

    // The outage: every answer of /healthz (every 250 ms) and /readyz (every
    // second) recorded.
    proxy.cut();
    let outage_started = Instant::now();
    let mut health: Vec<(u16, Duration)> = Vec::new();
    let mut ready: Vec<(Duration, u16)> = Vec::new();
    let mut next_ready = Instant::now();
    while outage_started.elapsed() < OUTAGE {
        health.push(probe(&client, &healthz).await);
        if Instant::now() >= next_ready {
            ready.push((outage_started.elapsed(), probe(&client, &readyz).await.0));
            next_ready += Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A report arriving now is refused with 503, for the crawler to retry.
    let (report_status, _) = post_report(
        &client,
        &address,
        &reqs[0].callback_token,
        &succeeded(&reqs[0]),
    )
    .await;
    proxy.restore();

    let restored = Instant::now();
    while probe(&client, &readyz).await.0 != 200 {
        assert!(
            restored.elapsed() < Duration::from_secs(30),
            "readyz did not recover without a restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready_again_s = restored.elapsed().as_secs_f64();
    for r in &reqs {
        let (status, body) = post_report(&client, &address, &r.callback_token, &succeeded(r)).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("recorded")));
    }
    let finished = fanfare_testkit::RunState::Finished;
    let outcome =
        fanfare_testkit::wait_run(&client, &address, ADMIN_TOKEN, run, finished, secs(15)).await
            ["outcome"]
            .clone();

    let health_ok = health.iter().filter(|(s, _)| *s == 200).count();
    let health_max = health.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let ready_503 = ready.iter().filter(|(_, s)| *s == 503).count();
    // After the first few seconds (the pool notices the cut), /readyz must
    // say unavailable every time.
    let settled: Vec<u16> = ready
        .iter()
        .filter(|(at, _)| *at >= Duration::from_secs(10))
        .map(|(_, s)| *s)
        .collect();
    println!(
        "FIGURE outage outage_s={} healthz_polls={} healthz_200={health_ok} healthz_max_ms={} readyz_polls={} readyz_503={ready_503} callback_during_outage={report_status} ready_again_s={ready_again_s:.1} outcome={outcome}",
        OUTAGE.as_secs(),
        health.len(),
        health_max.as_millis(),
        ready.len(),
    );

    assert!(health.len() >= 60, "healthz was polled through the outage");
    assert_eq!(
        health_ok,
        health.len(),
        "every healthz answer is 200: {health:?}"
    );
    assert!(
        health_max < HEALTH_CHECK_TIMEOUT,
        "healthz answers within the health check timeout: {health_max:?}"
    );
    assert!(
        !settled.is_empty() && settled.iter().all(|s| *s == 503),
        "readyz reports the database unavailable: {ready:?}"
    );
    assert_eq!(report_status, 503, "a report during the outage is refused");
    assert_eq!(outcome, "succeeded");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cron_fire_during_a_database_outage_gets_its_run_once_the_database_is_back() {
    use chrono::{SubsecRound, Utc};

    let db = fresh_database().await;
    let proxy = PgProxy::start(&db).await;
    let pool = test_pool(&db).await;
    let schedule = schedule("tick").every_second().to_string();
    let settings = Settings::from_toml(&config_toml_on(&proxy.url, 0, 4, &schedule))
        .unwrap_or_else(|e| panic!("test configuration is valid: {e}"));
    let (address, app) = AppTask::start(settings, Default::default()).await;
    let client = reqwest::Client::new();
    assert!(wait_ready(&client, &address, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every fire from the next whole second on must get its run.
    let window_start = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(8)).await;
    proxy.restore();
    let window_end = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(2);
    let window = window_start..=window_end;
    let missing = |fired: Vec<chrono::DateTime<Utc>>| -> Vec<chrono::DateTime<Utc>> {
        (0..=(*window.end() - *window.start()).num_seconds())
            .map(|s| *window.start() + chrono::Duration::seconds(s))
            .filter(|t| !fired.contains(t))
            .collect()
    };
    eventually(
        "every second of the window has its run",
        secs(60),
        || async {
            let fired: Vec<chrono::DateTime<Utc>> = sqlx::query_scalar(
                "select scheduled_for from runs where schedule = 'tick'
                 and scheduled_for between $1 and $2 order by scheduled_for",
            )
            .bind(window_start)
            .bind(window_end)
            .fetch_all(&pool)
            .await
            .unwrap();
            let missing = missing(fired);
            holds(
                missing.is_empty(),
                format!("fires without a run: {missing:?}"),
            )
        },
    )
    .await;
    let retried = fanfare_testkit::metric_in(
        &fanfare_testkit::metrics_text(&client, &address).await,
        "fanfare_fires_retried_total",
        "",
    );
    println!(
        "FIGURE fires_through_outage window_s={} missing=0 fires_retried={retried}",
        (window_end - window_start).num_seconds() + 1,
    );
    assert!(retried > 0.0, "a fire met the outage and was tried again");
    app.stop().await;
}
