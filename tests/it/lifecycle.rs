//! The run lifecycle under retries, deadlines, timeouts, stalls, admin
//! actions, overlapping and missed fires, shutdown and database outages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fanfare::schedule::CronSchedule;
use fanfare_testkit::PgProxy;
use serde_json::json;

use crate::helpers::*;

fn retryable_failure(r: &fanfare_crawler::contract::CrawlRequest) -> serde_json::Value {
    let mut body = failed(r, true);
    body["error"]["kind"] = json!("timeout");
    body
}

async fn metric(app: &TestApp, line_start: &str) -> Option<f64> {
    let text = app.metrics().await;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn runs_of(app: &TestApp, schedule: &str) -> Vec<serde_json::Value> {
    let (_, body) = app
        .get(&format!("/v1/runs?schedule={schedule}&limit=100"))
        .await;
    body["runs"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_retryable_failure_is_dispatched_again_and_fails_only_with_its_last_attempt() {
    let (app, lambda) =
        TestApp::spawn_recording(&lambda_schedule("retry", 2, None, "max_attempts = 2")).await;
    let run = app.trigger("retry").await;
    let first = lambda.wait_for(2).await;
    for r in &first {
        app.report_recorded(r, &retryable_failure(r)).await;
        // The same report again (Lambda redelivers): nothing more happens.
        let (_, body) = app
            .post_report(Some(&r.callback_token), &retryable_failure(r))
            .await;
        assert_eq!(body["status"], "duplicate");
    }
    let second = lambda.wait_for(4).await;
    assert_eq!((second[2].attempt, second[3].attempt), (2, 2));
    // Page A succeeds on its second attempt; page B fails again, with no attempts left.
    let (a, b) = (&second[2], &second[3]);
    app.post_report(Some(&a.callback_token), &succeeded(a))
        .await;
    let (_, body) = app
        .post_report(Some(&b.callback_token), &retryable_failure(b))
        .await;
    assert_eq!(body["status"], "recorded");
    let finished = app.wait_finished(run, Duration::from_secs(5)).await;
    assert_eq!(finished["outcome"], "partial");
    assert_eq!(
        (
            finished["pages"]["succeeded"].as_i64(),
            finished["pages"]["failed"].as_i64()
        ),
        (Some(1), Some(1))
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(lambda.requests().len(), 4, "no third attempt");
    app.stop().await;
}

#[tokio::test]
async fn a_late_report_of_an_earlier_attempt_is_accepted_while_the_page_is_open() {
    let (app, lambda) = TestApp::spawn_recording(&lambda_schedule(
        "late",
        1,
        None,
        "page_timeout = \"1s\"\nmax_attempts = 3",
    ))
    .await;
    let run = app.trigger("late").await;
    let reqs = lambda.wait_for(2).await;
    assert_eq!(
        (reqs[0].attempt, reqs[1].attempt),
        (1, 2),
        "re-dispatched after the deadline"
    );
    // Attempt 1 reports now, while attempt 2 is in flight: the work is done.
    let (_, body) = app
        .post_report(Some(&reqs[0].callback_token), &succeeded(&reqs[0]))
        .await;
    assert_eq!(body["status"], "recorded");
    let (_, body) = app
        .post_report(Some(&reqs[1].callback_token), &succeeded(&reqs[1]))
        .await;
    assert_eq!(body["status"], "duplicate");
    assert_eq!(app.wait_outcome(run, secs(5)).await, "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn past_its_run_timeout_a_run_times_out_its_open_pages_and_notifies() {
    let (app, _, receiver, run, reqs) =
        lambda_run("slow", 3, "run_timeout = \"2s\"\npage_timeout = \"1h\"", 3).await;
    app.post_report(Some(&reqs[0].callback_token), &succeeded(&reqs[0]))
        .await;
    let finished = app.wait_finished(run, Duration::from_secs(10)).await;
    assert_eq!(finished["outcome"], "partial");
    assert_eq!(finished["pages"]["timed_out"], 2);
    assert!(finished["error"]
        .as_str()
        .unwrap()
        .contains("run_timeout of 2s"));
    let d = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(d[0].json()["pages"]["timed_out"], 2);
    // A report arriving afterwards is a duplicate.
    let (_, body) = app
        .post_report(Some(&reqs[1].callback_token), &succeeded(&reqs[1]))
        .await;
    assert_eq!(body["status"], "duplicate");
    app.stop().await;
}

#[tokio::test]
async fn tolerated_failures_keep_the_outcome_succeeded_up_to_the_limit() {
    for (tolerance, failures, expect) in [
        ("\"1\"", 1, "succeeded"),
        ("\"1\"", 2, "partial"),
        ("\"50%\"", 2, "succeeded"),
        ("1", 2, "partial"),
    ] {
        let (app, lambda) = TestApp::spawn_recording(&lambda_schedule(
            "tol",
            4,
            None,
            &format!("tolerated_failures = {tolerance}"),
        ))
        .await;
        let run = app.trigger("tol").await;
        for (i, r) in lambda.wait_for(4).await.iter().enumerate() {
            let body = if i < failures {
                failed(r, false)
            } else {
                succeeded(r)
            };
            app.post_report(Some(&r.callback_token), &body).await;
        }
        let finished = app.wait_finished(run, Duration::from_secs(5)).await;
        assert_eq!(
            finished["outcome"], expect,
            "tolerance {tolerance} with {failures} failures"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn a_run_without_progress_is_reported_stuck_once() {
    let (app, _, receiver, run, reqs) =
        lambda_run("stall", 2, "stuck_after = \"1s\"\npage_timeout = \"1h\"", 2).await;
    let d = receiver.wait_for(1, Duration::from_secs(10)).await;
    let stuck = d[0].json();
    assert_eq!(stuck["type"], "run.stuck");
    assert_eq!(stuck["run_id"], run.to_string());
    assert_eq!(
        d[0].header("webhook-id"),
        format!("msg_{}_stuck_0", run.simple())
    );
    assert_eq!(metric(&app, "fanfare_runs_stuck").await, Some(1.0));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(receiver.deliveries().len(), 1, "reported once");
    for r in &reqs {
        app.post_report(Some(&r.callback_token), &succeeded(r))
            .await;
    }
    app.wait_finished(run, Duration::from_secs(5)).await;
    let d = receiver.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(d[1].json()["type"], "run.finished");
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_run_cancels_its_open_pages_and_later_reports_are_duplicates() {
    let receiver = Receiver::start(0).await;
    let (app, lambda) = TestApp::spawn_recording(
        &lambda_schedule("stop", 5, Some(&receiver), "")
            .replace("max_in_flight = 10000", "max_in_flight = 2"),
    )
    .await;
    let run = app.trigger("stop").await;
    let reqs = lambda.wait_for(2).await;
    app.post_report(Some(&reqs[0].callback_token), &succeeded(&reqs[0]))
        .await;
    let cancel = format!("/v1/runs/{run}/cancel");
    let (status, body) = app.post(&cancel).await;
    assert_eq!(status, 200, "{body}");
    let dispatched_before_cancel = lambda.requests().len();
    assert_eq!(body["outcome"], "cancelled");
    assert_eq!(body["pages"]["cancelled"], 4);
    assert_eq!(body["pages"]["succeeded"], 1);
    let (_, b) = app
        .post_report(Some(&reqs[1].callback_token), &succeeded(&reqs[1]))
        .await;
    assert_eq!(b["status"], "duplicate");
    assert_eq!(app.post(&cancel).await.0, 409, "already finished");
    let d = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(d[0].json()["outcome"], "cancelled");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        lambda.requests().len(),
        dispatched_before_cancel,
        "no page of a cancelled run is dispatched"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_redrive_crawls_the_failed_and_timed_out_pages_again_in_a_linked_run() {
    let (app, lambda, run, reqs) = dispatched_run("again", 4).await;
    for (i, r) in reqs.iter().enumerate() {
        let body = if i % 2 == 0 {
            failed(r, false)
        } else {
            succeeded(r)
        };
        app.post_report(Some(&r.callback_token), &body).await;
    }
    app.wait_finished(run, Duration::from_secs(5)).await;
    let (status, body) = app.post(&format!("/v1/runs/{run}/redrive")).await;
    assert_eq!(status, 202, "{body}");
    let new_run: uuid::Uuid = body["run_id"].as_str().unwrap().parse().unwrap();
    let all = lambda.wait_for(6).await;
    let mut redriven: Vec<&str> = all[4..].iter().map(|r| r.url.as_str()).collect();
    redriven.sort();
    let mut failed_urls: Vec<&str> = reqs.iter().step_by(2).map(|r| r.url.as_str()).collect();
    failed_urls.sort();
    assert_eq!(redriven, failed_urls);
    for r in &all[4..] {
        app.post_report(Some(&r.callback_token), &succeeded(r))
            .await;
    }
    let finished = app.wait_finished(new_run, Duration::from_secs(5)).await;
    assert_eq!(finished["trigger"], "redrive");
    assert_eq!(finished["redrive_of"], run.to_string());
    assert_eq!(finished["outcome"], "succeeded");
    assert_eq!(
        app.post(&format!("/v1/runs/{new_run}/redrive")).await.0,
        409,
        "nothing left to redrive"
    );
    app.stop().await;
}

#[tokio::test]
async fn racing_redrives_of_one_run_create_one_run_and_the_others_get_409_until_it_finishes() {
    let (app, lambda) = TestApp::spawn_recording(&lambda_schedule("again", 3, None, "")).await;
    let run = app.trigger("again").await;
    for r in lambda.wait_for(3).await {
        app.post_report(Some(&r.callback_token), &failed(&r, false))
            .await;
    }
    app.wait_finished(run, Duration::from_secs(5)).await;
    let redrive = |client: reqwest::Client| {
        let url = format!("{}/v1/runs/{run}/redrive", app.address);
        async move {
            let resp = client
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    // Eight requests at once, each on a connection of its own.
    let answers = futures::future::join_all((0..8).map(|_| redrive(reqwest::Client::new()))).await;
    let created: Vec<&serde_json::Value> = answers
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(created.len(), 1, "exactly one redrive run: {answers:?}");
    let new_run: uuid::Uuid = created[0]["run_id"].as_str().unwrap().parse().unwrap();
    for (status, body) in answers.iter().filter(|(s, _)| *s != 202) {
        assert_eq!(*status, 409, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("still open") && error.contains(&new_run.to_string()),
            "{error}"
        );
    }
    let children: i64 = sqlx::query_scalar("select count(*) from runs where parent_run_id = $1")
        .bind(run)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(children, 1);
    assert_eq!(lambda.wait_for(6).await.len(), 6, "its 3 pages, once");

    // Once the redrive run has finished, the run may be redriven again.
    for r in &lambda.requests()[3..] {
        app.post_report(Some(&r.callback_token), &failed(r, false))
            .await;
    }
    app.wait_finished(new_run, Duration::from_secs(5)).await;
    let (status, body) = redrive(app.client.clone()).await;
    assert_eq!(status, 202, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_paused_schedule_skips_its_fires_until_resumed() {
    let schedule = schedule("tick").cron("* * * * * *").to_string();
    let app = TestApp::spawn(&schedule, None).await;
    assert_eq!(app.post("/v1/schedules/tick/pause").await.0, 200);
    let paused_at = runs_of(&app, "tick").await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = runs_of(&app, "tick").await.len();
    assert!(
        during <= paused_at + 1,
        "fires skipped while paused ({paused_at} -> {during})"
    );
    assert!(
        metric(
            &app,
            "fanfare_fires_skipped_total{schedule=\"tick\",reason=\"paused\"}"
        )
        .await
        .unwrap_or(0.0)
            >= 2.0
    );
    assert_eq!(app.post("/v1/schedules/tick/resume").await.0, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        runs_of(&app, "tick").await.len() >= during + 2,
        "fires run again once resumed"
    );
    assert_eq!(app.post("/v1/schedules/nope/pause").await.0, 404);
    app.stop().await;
}

fn every_second(name: &str, overlap: &str) -> String {
    schedule(name)
        .cron("* * * * * *")
        .lambda("f")
        .urls(["http://127.0.0.1:9/x"])
        .text("overlap", overlap)
        .text("page_timeout", "1h")
        .to_string()
}

#[tokio::test]
async fn with_overlap_skip_a_fire_during_an_unfinished_run_is_skipped() {
    let (app, _) = TestApp::spawn_recording(&every_second("o", "skip")).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let runs = runs_of(&app, "o").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(
        metric(
            &app,
            "fanfare_fires_skipped_total{schedule=\"o\",reason=\"overlap\"}"
        )
        .await
        .unwrap_or(0.0)
            >= 2.0
    );
    app.stop().await;
}

#[tokio::test]
async fn with_overlap_buffer_one_the_latest_fire_starts_when_the_run_finishes() {
    let (app, lambda) = TestApp::spawn_recording(&every_second("b", "buffer_one")).await;
    let first = lambda.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(runs_of(&app, "b").await.len(), 1, "later fires wait");
    let before = chrono::Utc::now();
    app.post_report(Some(&first[0].callback_token), &succeeded(&first[0]))
        .await;
    let second = lambda.wait_for(2).await;
    let runs = runs_of(&app, "b").await;
    assert_eq!(
        runs.len(),
        2,
        "one buffered fire, not one per skipped second"
    );
    let nominal: chrono::DateTime<chrono::Utc> =
        runs[0]["scheduled_for"].as_str().unwrap().parse().unwrap();
    assert!(
        nominal <= before,
        "the buffered fire keeps its nominal time"
    );
    assert_ne!(second[1].run_id, first[0].run_id);
    app.stop().await;
}

#[tokio::test]
async fn with_overlap_cancel_previous_a_new_fire_cancels_the_unfinished_run() {
    let (app, lambda) = TestApp::spawn_recording(&every_second("c", "cancel_previous")).await;
    lambda.wait_for(2).await;
    let runs = runs_of(&app, "c").await;
    assert!(runs.len() >= 2);
    let oldest = runs.last().unwrap();
    let finished = app
        .wait_finished(
            oldest["id"].as_str().unwrap().parse().unwrap(),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(finished["outcome"], "cancelled");
    let open = runs_of(&app, "c")
        .await
        .iter()
        .filter(|r| r["status"] != "finished")
        .count();
    assert!(open <= 1, "at most one run open at a time");
    app.stop().await;
}

async fn seed_past_fire(
    db: &str,
    schedule: &str,
    minutes_ago: i64,
) -> chrono::DateTime<chrono::Utc> {
    let pool = sqlx::PgPool::connect(db).await.unwrap();
    fanfare::ledger::migrate(&pool).await.unwrap();
    let last: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "insert into runs (id, schedule, scheduled_for, trigger, status, outcome, finished_at)
         values (gen_random_uuid(), $1, date_trunc('minute', now()) - make_interval(mins => $2::int), 'cron', 'finished', 'succeeded', now())
         returning scheduled_for",
    )
    .bind(schedule)
    .bind(minutes_ago as i32)
    .fetch_one(&pool)
    .await
    .unwrap();
    last
}

async fn catchup_runs(app: &TestApp) -> Vec<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar(
        "select scheduled_for from runs where trigger = 'catchup' order by scheduled_for",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// The catch-up runs once at least `at_least` exist (or after 20 s, so a
/// loaded machine gets time; the caller's assertions then say what is
/// missing), plus a short settle so that an extra run would show.
async fn catchup_runs_when(app: &TestApp, at_least: usize) -> Vec<chrono::DateTime<chrono::Utc>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while catchup_runs(app).await.len() < at_least && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    catchup_runs(app).await
}

fn minutely(catchup: &str, window: &str) -> String {
    // Catch-up fires go through the overlap policy like any fire: "all"
    // needs overlap = "allow" to run them side by side.
    schedule("m")
        .cron("0 * * * * *")
        .text("catchup", catchup)
        .text("catchup_window", window)
        .text("overlap", "allow")
        .to_string()
}

#[tokio::test]
async fn missed_fires_are_caught_up_per_policy_with_their_nominal_times() {
    // all: every missed minute, in order, from the one after the last fire.
    let db = fresh_database().await;
    let last = seed_past_fire(&db, "m", 10).await;
    let app = TestApp::spawn_on(&db, &minutely("all", "1h"), None).await;
    let caught = catchup_runs_when(&app, 10).await;
    assert!((10..=11).contains(&caught.len()), "{caught:?}");
    assert_eq!(caught[0], last + chrono::Duration::minutes(1));
    for pair in caught.windows(2) {
        assert_eq!(pair[1] - pair[0], chrono::Duration::minutes(1));
    }
    app.stop().await;

    // once: only the latest missed minute.
    let db = fresh_database().await;
    seed_past_fire(&db, "m", 10).await;
    // The latest minute missed when the daemon starts (or a later one, if a
    // minute turns meanwhile), not the first of the ten.
    let before = chrono::Utc::now();
    let app = TestApp::spawn_on(&db, &minutely("once", "1h"), None).await;
    let caught = catchup_runs_when(&app, 1).await;
    assert_eq!(caught.len(), 1, "{caught:?}");
    assert!(
        before - caught[0] < chrono::Duration::minutes(1) && caught[0] <= chrono::Utc::now(),
        "started at {before}, caught up {caught:?}"
    );
    app.stop().await;

    // skip, or outside the window: none run, all counted as missed.
    let db = fresh_database().await;
    seed_past_fire(&db, "m", 10).await;
    let app = TestApp::spawn_on(&db, &minutely("all", "3m"), None).await;
    let caught = catchup_runs_when(&app, 3).await;
    assert!(
        (3..=4).contains(&caught.len()),
        "only inside the window: {caught:?}"
    );
    let missed = metric(&app, "fanfare_fires_missed_total{schedule=\"m\"}")
        .await
        .unwrap_or(0.0);
    assert!(missed >= 6.0, "older fires counted as missed: {missed}");
    app.stop().await;
}

#[test]
fn nominal_fire_times_survive_a_dst_change_in_the_ledger_key() {
    // The same fire computed by two replicas gives the same key.
    let s = CronSchedule::new("0 30 1 * * *", "America/Chicago").unwrap();
    let t: chrono::DateTime<chrono::Utc> = "2026-11-01T06:00:00Z".parse().unwrap();
    assert_eq!(
        s.next_after(t),
        s.next_after(t + chrono::Duration::milliseconds(1))
    );
}

#[tokio::test]
async fn while_postgres_is_unreachable_readiness_and_callbacks_answer_503_and_everything_resumes() {
    let db = fresh_database().await;
    let proxy = PgProxy::start(&db).await;
    let lambda = Arc::new(RecordingLambda::default());
    let app = TestApp::spawn_on(
        &proxy.url,
        &lambda_schedule("pg", 2, None, ""),
        Some(lambda.clone()),
    )
    .await;
    let run = app.trigger("pg").await;
    let reqs = lambda.wait_for(2).await;

    proxy.cut();
    let readyz = || app.client.get(format!("{}/readyz", app.address)).send();
    let started = Instant::now();
    loop {
        let resp = readyz().await.unwrap();
        if resp.status() == 503 {
            // A generic reason: the database's own error text is logged only.
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["reason"], "database unavailable", "{body}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "readyz should turn 503"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = app
        .post_report(Some(&reqs[0].callback_token), &succeeded(&reqs[0]))
        .await;
    assert_eq!(status, 503, "{body}");

    proxy.restore();
    let started = Instant::now();
    loop {
        if readyz().await.unwrap().status() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "readyz should recover without a restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for r in &reqs {
        app.report_recorded(r, &succeeded(r)).await;
    }
    assert_eq!(app.wait_outcome(run, secs(10)).await, "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn sigterm_turns_readiness_off_at_once_and_exits_within_the_shutdown_grace() {
    let site = fanfare::demo::DemoSite::start(1).await.unwrap();
    let db = fresh_database().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let slow = (0..4).map(|i| format!("{}/slow/{}", site.base_url(), 8000 + i));
    let config = config_toml(&db, &schedule("slow").urls(slow).to_string())
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"2s\"");
    let config = ConfigFile::write(&config);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fanfare"))
        .args(["serve", "--config"])
        .arg(config.path())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let ready = fanfare_testkit::wait_ready(&client, &base, Duration::from_secs(20)).await;
    assert!(ready, "the daemon did not become ready");
    fanfare_testkit::trigger(&client, &base, ADMIN_TOKEN, "slow").await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the slow crawls are in flight

    let pid = child.id().unwrap();
    let term = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let mut saw_503 = false;
    for _ in 0..20 {
        match client.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status() == 503 => {
                saw_503 = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    assert!(saw_503, "readyz answers 503 while draining");
    let status = tokio::time::timeout(Duration::from_secs(6), child.wait())
        .await
        .expect("exits")
        .unwrap();
    let took = term.elapsed();
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        took < Duration::from_millis(3500),
        "exited within shutdown_grace (2s) + 1.5s: {took:?}"
    );
}
