//! `render = "auto"` recorded by two racing replicas (each with its own
//! in-process crawler and Chromium), one of them killed with SIGKILL
//! mid-run and replaced: every page reports, every script page with the
//! price its script fills in, no page is rendered more often than it was
//! dispatched to the browser (sending a page on to the browser never
//! renders it twice), and the run's notification is one.

use std::net::Ipv4Addr;
use std::time::Duration;

use fanfare_testkit::appshop::{script_price, static_price, AppShop, EXTRACT};

use crate::helpers::*;
use crate::procs::{run_with_a_replica_killed, Workdir};

/// App shells on 127.0.0.1, filled in by script.
const SCRIPT_PAGES: usize = 24;
/// Pages served whole on 127.0.0.2.
const STATIC_PAGES: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_rendering_an_auto_run_with_one_killed_lose_no_page_render_none_twice_and_notify_once(
) {
    let shells = AppShop::start(Ipv4Addr::LOCALHOST).await;
    let statics = AppShop::start(Ipv4Addr::new(127, 0, 0, 2)).await;
    let urls: Vec<String> = (1..=SCRIPT_PAGES)
        .map(|i| shells.script(i))
        .chain((1..=STATIC_PAGES).map(|i| statics.plain(i)))
        .collect();
    let receiver = Receiver::accepting().await;
    let dir = Workdir::new("render");
    let db = fresh_database().await;
    let pool = test_pool(&db).await;
    let schedules = format!(
        "[local]\nbrowsers = 1\n{}",
        schedule("auto")
            .urls(&urls)
            .extract(EXTRACT)
            .text("render", "auto")
            .text("wait_for", ".price")
            .key("render_after", 3)
            .key("max_in_flight", 6)
            // A page the killed replica held is dispatched again after this.
            .text("page_timeout", "15s")
            .webhook(&receiver.url)
    );
    let killed = run_with_a_replica_killed(
        dir.path(),
        &db,
        &schedules,
        "auto",
        "select count(*) from pages where run_id = $1 and status = 'succeeded' and render",
        // A few pages rendered, while both render.
        4,
        Duration::from_secs(240),
    )
    .await;
    let (run, rendered_at_kill, shown) = (killed.run, killed.count_at_kill, &killed.finished);
    let total = (SCRIPT_PAGES + STATIC_PAGES) as i64;
    assert_eq!(shown["outcome"], "succeeded", "{shown:#}");
    assert_eq!(shown["pages"]["total"], total, "{shown:#}");
    assert_eq!(shown["pages"]["succeeded"], total, "{shown:#}");
    assert!(
        rendered_at_kill < SCRIPT_PAGES as i64,
        "the kill came mid-run: {rendered_at_kill} rendered"
    );

    // Nothing lost: every page reported what its shop serves, the script
    // pages rendered, the static ones as served.
    let rows: Vec<(String, i32, bool, bool, Option<String>)> = sqlx::query_as(
        "select url, attempt, render, escalated, result->'fields'->>'price' from pages
          where run_id = $1",
    )
    .bind(run)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), SCRIPT_PAGES + STATIC_PAGES);
    let renders = shells.renders_by_page();
    let mut escalated_pages = 0;
    let mut crash_retries = 0;
    for (url, attempt, render, escalated, price) in &rows {
        if let Some(id) = url
            .strip_prefix(&format!("{}/s/", shells.base()))
            .and_then(|id| id.parse::<usize>().ok())
        {
            assert!(render, "{url} was rendered");
            assert_eq!(price.as_deref(), Some(script_price(id).as_str()), "{url}");
            // Dispatches to the browser: every attempt but the plain fetch
            // that sent it on (the escalation reuses no attempt of the
            // browser's). More renders than that would be a page rendered
            // twice because of its escalation.
            let browser_dispatches = *attempt - i32::from(*escalated);
            let rendered = renders.get(&id).copied().unwrap_or(0);
            assert!(
                (1..=browser_dispatches as usize).contains(&rendered),
                "{url}: rendered {rendered} times, dispatched to the browser {browser_dispatches} times"
            );
            escalated_pages += usize::from(*escalated);
            crash_retries += usize::from(browser_dispatches > 1);
        } else {
            let id: usize = url
                .rsplit('/')
                .next()
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("a shop URL: {url}"));
            assert!(!render && !escalated, "{url} is served whole");
            assert_eq!(price.as_deref(), Some(static_price(id).as_str()), "{url}");
        }
    }
    assert_eq!(statics.renders(), 0, "no static page ran a script");
    assert!(
        escalated_pages >= 1,
        "some pages were sent on to the browser"
    );
    assert_eq!(
        shown["render"]["rendered"], SCRIPT_PAGES as i64,
        "{shown:#}"
    );
    assert_eq!(
        shown["render"]["escalated"], escalated_pages as i64,
        "{shown:#}"
    );

    // One notification (delivered at least once, under one webhook-id).
    assert_notified_once(&receiver, &pool, run).await;
    println!(
        "FIGURE render_replicas pages={total} rendered_at_kill={rendered_at_kill} \
         escalated={escalated_pages} renders={} browser_retries={crash_retries}",
        shells.renders()
    );
    drop(killed);
}
