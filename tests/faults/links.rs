//! A run that grows by following links, recorded by two racing replicas,
//! one of them killed with SIGKILL mid-run and replaced: every page of the
//! site is found and crawled, none more often than it was dispatched (no
//! page is crawled twice because two reports found it), the run finishes
//! once and its notification is one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fanfare_testkit::{crawl_schedule_block, LinkSite, LinkSiteSpec};

use crate::helpers::*;
use crate::procs::{Daemon, Workdir};

/// Pages of the site (a tree of fanout 6: depth 4 holds them all).
const PAGES: usize = 1500;

/// The count `sql` answers about `run` (its `$1`).
async fn count_of(pool: &sqlx::PgPool, sql: &str, run: uuid::Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(run)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_crawling_one_growing_run_with_one_killed_lose_no_page_and_notify_once() {
    let site = LinkSite::start(LinkSiteSpec::tree(PAGES, 6)).await;
    let receiver = Receiver::accepting().await;
    let dir = Workdir::new("links");
    let db = fresh_database().await;
    let pool = test_pool(&db).await;
    let schedules = crawl_schedule_block(
        "crawl",
        &site.home(),
        "max_depth = 4",
        "page_timeout = \"5s\"\nmax_in_flight = 32",
        &fanfare_testkit::webhook_block(&receiver.url),
    );
    let mut a = Daemon::spawn("a", dir.path(), &db, 6, &schedules);
    let mut b = Daemon::spawn("b", dir.path(), &db, 6, &schedules);
    a.wait_ready(Duration::from_secs(30)).await;
    b.wait_ready(Duration::from_secs(30)).await;
    let client = reqwest::Client::new();
    let run = trigger(&client, &a.address, "crawl").await;

    // Kill `a` once a fifth of the site is done, while both record.
    let deadline = Instant::now() + Duration::from_secs(120);
    let done_at_kill = loop {
        let done = count_of(
            &pool,
            "select count(*) from pages where run_id = $1 and status = 'succeeded'",
            run,
        )
        .await;
        if done >= (PAGES / 5) as i64 {
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "the crawl made no progress: {done} pages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    a.sigkill();
    let mut c = Daemon::spawn("c", dir.path(), &db, 6, &schedules);
    c.wait_ready(Duration::from_secs(30)).await;

    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, shown) = get(&client, &b.address, &format!("/v1/runs/{run}")).await;
        if shown["status"] == "finished" {
            assert_eq!(shown["outcome"], "succeeded", "{shown:#}");
            assert_eq!(shown["pages"]["total"], PAGES as i64, "{shown:#}");
            assert_eq!(shown["pages"]["succeeded"], PAGES as i64, "{shown:#}");
            assert_eq!(shown["discovery"]["added"], (PAGES - 1) as i64, "{shown:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish: {shown:#}\n{}",
            c.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(done_at_kill < PAGES as i64, "the kill came mid-run");

    // Each URL is in the run once (every site page), and no page was
    // fetched more often than it was dispatched.
    let rows: Vec<(String, i32)> =
        sqlx::query_as("select url, attempt from pages where run_id = $1")
            .bind(run)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), PAGES);
    let attempts: HashMap<String, i32> = rows
        .into_iter()
        .map(|(url, attempt)| {
            (
                url.strip_prefix(&site.url("")).unwrap().to_string(),
                attempt,
            )
        })
        .collect();
    for i in 0..PAGES {
        let path = format!("/n/{i}");
        let fetched = site.hits().get(&path).copied().unwrap_or(0);
        let dispatched = attempts[&path];
        assert!(
            fetched >= 1 && fetched <= dispatched as usize,
            "{path} fetched {fetched} times, dispatched {dispatched} times"
        );
    }

    // One notification (delivered at least once, under one webhook-id).
    receiver.wait_delivered(run, Duration::from_secs(90)).await;
    let ids = by_webhook_id(&receiver.hits_for(run));
    assert_eq!(ids.len(), 1, "{ids:?}");
    let outbox = count_of(
        &pool,
        "select count(*) from notifications where run_id = $1 and event = 'run.finished'",
        run,
    )
    .await;
    assert_eq!(outbox, 1);
    println!(
        "FIGURE links_replicas pages={PAGES} done_at_kill={done_at_kill} refetched={}",
        site.repeated().len()
    );
    drop((b, c));
}
