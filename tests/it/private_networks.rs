//! The daemon's in-process crawler: no reach into private networks unless
//! `[security] allow_private_networks` opens it, and at most `[local]
//! concurrency` crawls at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use fanfare::startup::Overrides;
use fanfare::Settings;
use fanfare_crawler::crawl::CrawlerConfig;
use fanfare_crawler::netguard::NetPolicy;

use crate::helpers::*;
use fanfare_testkit::{self as common, AppTask};

/// A port that was free a moment ago (the page URL must name the daemon's
/// own port before the daemon binds it).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn wait_finished(
    client: &reqwest::Client,
    address: &str,
    run: uuid::Uuid,
) -> serde_json::Value {
    let finished = common::RunState::Finished;
    common::wait_run(client, address, ADMIN_TOKEN, run, finished, secs(20)).await
}

#[tokio::test]
async fn a_page_aimed_at_the_daemons_own_metrics_fails_as_blocked_when_private_networks_are_closed()
{
    let db = fresh_database().await;
    let port = free_port();
    let schedule = schedule("inward")
        .urls([format!("http://127.0.0.1:{port}/metrics")])
        .to_string();
    let toml = common::config_toml_with(&db, port, 20, CALLBACK_SECRET, ADMIN_TOKEN, &schedule);
    assert!(toml.contains("allow_private_networks = true"));
    let toml = toml.replace(
        "allow_private_networks = true",
        "allow_private_networks = false",
    );
    let settings = Settings::from_toml(&toml).expect("valid configuration");
    // Crawler settings passed by a test that open the guard do not win over
    // the configuration's switch.
    let overrides = Overrides {
        crawler: Some(CrawlerConfig {
            net: NetPolicy::open(),
            timeout: Duration::from_secs(5),
            ..CrawlerConfig::default()
        }),
        ..Default::default()
    };
    let (address, app) = AppTask::start(settings, overrides).await;
    let client = reqwest::Client::new();
    assert!(common::wait_ready(&client, &address, Duration::from_secs(5)).await);

    let run = common::trigger(&client, &address, ADMIN_TOKEN, "inward").await;
    let finished = wait_finished(&client, &address, run).await;

    assert_eq!(finished["outcome"], "failed", "{finished:#}");
    assert_eq!(finished["pages"]["failed"], 1, "{finished:#}");
    let (_, pages) = common::get(
        &client,
        &address,
        ADMIN_TOKEN,
        &format!("/v1/runs/{run}/pages"),
    )
    .await
    .unwrap();
    let page = &pages["pages"][0];
    assert_eq!(page["status"], "failed", "{page:#}");
    assert_eq!(page["error"]["kind"], "blocked", "{page:#}");
    assert_eq!(page["error"]["retryable"], false, "{page:#}");
    let message = page["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("127.0.0.1 is a loopback address"),
        "{message}"
    );
    assert!(
        !message.contains("fanfare_"),
        "nothing of the metrics page leaks: {message}"
    );
    assert_eq!(page["attempt"], 1, "a refusal is not retried");
    app.stop().await;
}

#[tokio::test]
async fn no_more_in_process_crawls_run_at_once_than_local_concurrency() {
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let (r, m, s) = (running.clone(), most.clone(), served.clone());
    let target = Router::new().route(
        "/p/{n}",
        get(move || {
            let (r, m, s) = (r.clone(), m.clone(), s.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                s.fetch_add(1, Ordering::SeqCst);
                axum::response::Html("<title>p</title>")
            }
        }),
    );
    let base = fanfare_testkit::net::serve(target).await;
    let schedule = format!(
        "[local]\nconcurrency = 2\n{}",
        schedule("few-at-a-time").urls((1..=8).map(|i| format!("{base}/p/{i}")))
    );
    let app = TestApp::spawn(&schedule, None).await;

    let (_, finished) = app.run_once("few-at-a-time", Duration::from_secs(30)).await;

    assert_eq!(finished["pages"]["succeeded"], 8, "{finished:#}");
    assert_eq!(served.load(Ordering::SeqCst), 8);
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "at most [local] concurrency crawls at once, and that many in parallel"
    );
    app.stop().await;
}
