//! Every report delivered three times, in shuffled order, concurrently,
//! reports of superseded attempts included: the test plays the crawler of
//! an in-process daemon whose pages time out after 1 s, waits until about
//! half of them were dispatched again, then reports every attempt it saw.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fanfare_crawler::contract::CrawlRequest;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::helpers::*;

const PAGES: usize = 200;
const COPIES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_report_delivered_three_times_in_shuffled_order_with_superseded_attempts_makes_each_page_terminal_once(
) {
    let seed = seed();
    let receiver = Receiver::accepting().await;
    let (app, lambda) = TestApp::spawn_recording(&lambda_schedule(
        "dup",
        PAGES,
        &receiver,
        "page_timeout = \"1s\"\nmax_attempts = 5",
    ))
    .await;
    let started = Instant::now();
    let run = app.trigger("dup").await;
    // Every page dispatched once, then about half of them a second time
    // after their first attempt's deadline passed unreported.
    let attempts = |events: &[CrawlRequest], attempt: u32| {
        distinct(
            events
                .iter()
                .filter(|r| r.attempt >= attempt)
                .map(|r| r.page_id.clone()),
        )
        .len()
    };
    let events = lambda
        .wait_until(
            Duration::from_secs(30),
            "every page dispatched, half of them twice",
            |e| attempts(e, 1) == PAGES && attempts(e, 2) >= PAGES / 2,
        )
        .await;
    let mut latest: BTreeMap<String, u32> = BTreeMap::new();
    for r in &events {
        let a = latest.entry(r.page_id.clone()).or_default();
        *a = (*a).max(r.attempt);
    }
    // Three copies of the report of every attempt seen: a success for the
    // first attempt; for later ones a success or, on odd pages, a failure.
    let mut reports: Vec<(CrawlRequest, serde_json::Value)> = Vec::new();
    for r in &events {
        let odd = r.page_id.parse::<i64>().unwrap() % 2 == 1;
        let body = if r.attempt > 1 && odd {
            failed(r, false)
        } else {
            succeeded(r)
        };
        for _ in 0..COPIES {
            reports.push((r.clone(), body.clone()));
        }
    }
    reports.shuffle(&mut StdRng::seed_from_u64(seed));
    let superseded = reports
        .iter()
        .filter(|(r, _)| r.attempt < latest[&r.page_id])
        .count();
    let answers: Vec<(u16, String)> = futures::stream::iter(reports.iter())
        .map(|(r, body)| {
            let app = &app;
            async move {
                let (status, answer) = app.post_report(Some(&r.callback_token), body).await;
                (status, answer["status"].as_str().unwrap_or("").to_string())
            }
        })
        .buffer_unordered(48)
        .collect()
        .await;
    let finished = app.wait_finished(run, Duration::from_secs(30)).await;
    let finish_s = started.elapsed().as_secs_f64();
    let delivered = receiver.wait_delivered(run, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits = receiver.hits_for(run);
    let recorded = answers.iter().filter(|(_, a)| a == "recorded").count();
    let duplicate = answers.iter().filter(|(_, a)| a == "duplicate").count();
    let other: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    let ledger = ledger_view(&app.pool, run).await.unwrap();
    let finished_metric = app
        .metric("fanfare_runs_finished_total", "schedule=\"dup\"")
        .await;
    println!(
        "FIGURE duplicates pages={PAGES} events={} pages_dispatched_twice={} reports_sent={} superseded_reports={superseded} recorded={recorded} duplicates={duplicate} other_answers={} succeeded={} failed={} runs_finished={finished_metric} notifications={} deliveries={} finish_s={finish_s:.1} seed={seed}",
        events.len(),
        attempts(&events, 2),
        answers.len(),
        other.len(),
        ledger.count("succeeded"),
        ledger.count("failed"),
        ledger.notifications,
        hits.len(),
    );

    assert!(
        attempts(&events, 2) > 0 && superseded > 0,
        "reports of superseded attempts were sent"
    );
    assert_eq!(answers.len(), events.len() * COPIES);
    assert!(other.is_empty(), "every report answered 200: {other:?}");
    assert_eq!(recorded, PAGES, "each page was made terminal exactly once");
    assert_eq!(
        duplicate,
        answers.len() - PAGES,
        "every other report is a duplicate"
    );
    assert_eq!(finished["status"], "finished");
    assert_eq!(finished["pages"]["total"], PAGES);
    assert_eq!(
        ledger.count("succeeded") + ledger.count("failed"),
        PAGES as i64,
        "{ledger:?}"
    );
    assert!(ledger.consistent(), "counters match the pages: {ledger:?}");
    assert_eq!(finished_metric, 1.0, "the run finished once");
    assert_eq!(ledger.notifications, 1, "one outbox row");
    assert_eq!(hits.len(), 1, "one delivery: {delivered:?}");
    app.stop().await;
}
