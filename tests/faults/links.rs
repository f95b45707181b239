//! A run that grows by following links, recorded by two racing replicas,
//! one of them killed with SIGKILL mid-run and replaced: every page of the
//! site is found and crawled, none more often than it was dispatched (no
//! page is crawled twice because two reports found it), the run finishes
//! once and its notification is one.

use std::collections::HashMap;
use std::time::Duration;

use fanfare_testkit::{crawl_schedule_block, LinkSite, LinkSiteSpec};

use crate::helpers::*;
use crate::procs::{run_with_a_replica_killed, Workdir};

/// Pages of the site (a tree of fanout 6: depth 4 holds them all).
const PAGES: usize = 1500;

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
    let killed = run_with_a_replica_killed(
        dir.path(),
        &db,
        &schedules,
        "crawl",
        "select count(*) from pages where run_id = $1 and status = 'succeeded'",
        // A fifth of the site done, while both record.
        (PAGES / 5) as i64,
        Duration::from_secs(180),
    )
    .await;
    let (run, done_at_kill, shown) = (killed.run, killed.count_at_kill, &killed.finished);
    assert_eq!(shown["outcome"], "succeeded", "{shown:#}");
    assert_eq!(shown["pages"]["total"], PAGES as i64, "{shown:#}");
    assert_eq!(shown["pages"]["succeeded"], PAGES as i64, "{shown:#}");
    assert_eq!(shown["discovery"]["added"], (PAGES - 1) as i64, "{shown:#}");
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
    assert_notified_once(&receiver, &pool, run).await;
    println!(
        "FIGURE links_replicas pages={PAGES} done_at_kill={done_at_kill} refetched={}",
        site.repeated().len()
    );
    drop(killed);
}
