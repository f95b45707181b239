//! The admin API, health, readiness and metrics.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn admin_endpoints_need_the_admin_token() {
    let app = app_with_one_lambda_page().await;
    for (method, path) in [("POST", "/v1/schedules/s/trigger"), ("GET", "/v1/runs")] {
        for token in [None, Some("wrong-token-0123456789")] {
            let mut req = app
                .client
                .request(method.parse().unwrap(), format!("{}{path}", app.address));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{method} {path} with {token:?}");
        }
    }
    let count: i64 = sqlx::query_scalar("select count(*) from runs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0, "no refused trigger started a run");
    app.stop().await;
}

#[tokio::test]
async fn triggering_an_unknown_schedule_is_404() {
    let app = app_with_one_lambda_page().await;
    let (status, body) = app.post("/v1/schedules/nope/trigger").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("\"nope\""));
    app.stop().await;
}

#[tokio::test]
async fn runs_are_listed_newest_first_with_their_pages() {
    let schedules = [
        lambda_schedule("a", 3, None, ""),
        lambda_schedule("b", 1, None, ""),
    ];
    let (app, lambda) = TestApp::spawn_recording(&schedules.concat()).await;
    let first = app.trigger("a").await;
    let second = app.trigger("a").await;
    let other = app.trigger("b").await;
    let reqs = lambda.wait_for(7).await;
    for r in reqs.iter().filter(|r| r.run_id == first.to_string()) {
        app.post_report(Some(&r.callback_token), &failed(r, false))
            .await;
    }
    app.wait_finished(first, Duration::from_secs(5)).await;

    let (status, body) = app.get("/v1/runs?schedule=a&limit=10").await;
    assert_eq!(status, 200);
    let ids = texts(&body["runs"], "id");
    assert_eq!(ids, vec![second.to_string(), first.to_string()]);
    assert_eq!(body["runs"][1]["outcome"], "failed");
    assert_eq!(body["runs"][1]["pages"]["failed"], 3);
    assert_eq!(body["runs"][0]["status"], "running");

    let (_, all) = app.get("/v1/runs?limit=1").await;
    assert_eq!(all["runs"][0]["id"], other.to_string());

    let (_, run) = app.get(&format!("/v1/runs/{second}")).await;
    assert_eq!(run["pages"]["in_flight"], 3);
    assert_eq!(run["pages"]["pending"], 0);
    assert_eq!(run["trigger"], "manual");

    let (_, pages) = app
        .get(&format!("/v1/runs/{first}/pages?status=failed"))
        .await;
    let pages = pages["pages"].as_array().unwrap();
    assert_eq!(pages.len(), 3);
    assert_eq!(pages[0]["error"]["kind"], "http_status");
    assert_eq!(pages[0]["attempt"], 1);

    assert_eq!(
        app.get("/v1/runs/00000000-0000-0000-0000-000000000000")
            .await
            .0,
        404
    );
    assert_eq!(app.get("/v1/runs/not-a-uuid").await.0, 404);
    assert_eq!(
        app.get(&format!("/v1/runs/{first}/pages?status=bogus"))
            .await
            .0,
        400
    );
    app.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let (app, lambda) = TestApp::spawn_recording(&lambda_schedule("m", 2, None, "")).await;
    assert_eq!(app.status_without_token("/healthz").await, 200);
    assert_eq!(app.status_without_token("/readyz").await, 200);

    let run = app.trigger("m").await;
    for r in lambda.wait_for(2).await {
        app.post_report(Some(&r.callback_token), &succeeded(&r))
            .await;
        app.post_report(Some(&r.callback_token), &succeeded(&r))
            .await;
    }
    app.wait_finished(run, Duration::from_secs(5)).await;
    let text = app.metrics().await;
    for name in [
        "fanfare_runs_started_total",
        "fanfare_runs_finished_total",
        "fanfare_pages_dispatched_total",
        "fanfare_callbacks_total{answer=\"recorded\"}",
        "fanfare_callbacks_total{answer=\"duplicate\"}",
        "fanfare_callback_seconds_bucket",
        "fanfare_pages_in_flight",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    app.stop().await;
}

#[tokio::test]
async fn readiness_fails_while_the_database_is_unreachable() {
    // A pool pointed at a port where nothing listens: the app cannot even
    // migrate, and says which setting to look at.
    let settings =
        fanfare::Settings::from_toml(&config_toml("postgres://postgres@127.0.0.1:1/none", ""))
            .unwrap();
    let err = match fanfare::Application::build(settings).await {
        Ok(_) => panic!("an unreachable database must not start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("database"), "{err}");
}

/// `fanfare trigger ARGS --url APP --config FILE`.
async fn fanfare_trigger(
    app: &TestApp,
    config: &ConfigFile,
    args: &[&str],
) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_fanfare"))
        .arg("trigger")
        .args(args)
        .args(["--url", &app.address, "--config"])
        .arg(config.path())
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_trigger_command_starts_a_run_through_the_api() {
    let (app, lambda) = TestApp::spawn_recording(&lambda_schedule("cli", 1, None, "")).await;
    let config = ConfigFile::write(&config_toml(
        "postgres://unused@127.0.0.1/db",
        &lambda_schedule("cli", 1, None, ""),
    ));
    let out = fanfare_trigger(&app, &config, &["cli", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run_id = printed["run_id"].as_str().unwrap().to_string();
    let reqs = lambda.wait_for(1).await;
    assert_eq!(reqs[0].run_id, run_id);

    // Without --json, a line for people naming the run.
    let out = fanfare_trigger(&app, &config, &["cli"]).await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("run ") && text.trim_end().ends_with("of \"cli\" started"),
        "{text}"
    );

    let out = fanfare_trigger(&app, &config, &["nope"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    app.stop().await;
}

#[tokio::test]
async fn actions_on_an_unknown_run_or_schedule_are_404_and_on_a_finished_run_409() {
    let (app, run) = app_with_a_finished_run().await;
    for (action, status, says, _) in refused_actions(run) {
        let path = format!("/v1/{action}");
        let (got, body) = app.post(&path).await;
        let error = body["error"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{path}: {error}");
        assert!(error.contains(says), "{path}: {error}");
    }
    app.stop().await;
}
