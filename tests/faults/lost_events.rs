//! An invoker that loses a tenth of the events: the Lambda API accepts every
//! invoke but silently drops about 10 % of the events (chosen by a seeded
//! hash of page and attempt); the test plays the crawler for the others,
//! reporting each as it arrives. The sweeper must dispatch the lost pages
//! again once their deadline (1 s) passed.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fanfare::dispatch::{InvokeError, LambdaApi};
use fanfare_crawler::contract::CrawlRequest;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::helpers::*;

const PAGES: usize = 300;
/// Events dropped per thousand.
const DROP_PER_MILLE: u64 = 100;

/// SplitMix64: a well-mixed hash of one word.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Accepts every event; drops some, hands the others to the test's crawler.
struct LosingLambda {
    seed: u64,
    crawler: mpsc::UnboundedSender<CrawlRequest>,
    sent: AtomicUsize,
    /// (page, attempt) of every dropped event.
    dropped: Mutex<BTreeSet<(i64, u32)>>,
}

impl LambdaApi for LosingLambda {
    fn invoke_event(
        &self,
        _function: &str,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Option<String>, InvokeError>> {
        Box::pin(async move {
            let request: CrawlRequest = serde_json::from_slice(&payload).expect("a contract event");
            self.sent.fetch_add(1, Ordering::SeqCst);
            let page: i64 = request.page_id.parse().unwrap();
            let attempt = request.attempt;
            let key = self.seed ^ ((page as u64) << 8) ^ u64::from(attempt);
            if mix(key) % 1000 < DROP_PER_MILLE {
                self.dropped.lock().unwrap().insert((page, attempt));
            } else {
                let _ = self.crawler.send(request);
            }
            Ok(Some(format!("req-{page}-{attempt}")))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoker_that_loses_a_tenth_of_the_events_still_gets_every_page_crawled_through_redispatch(
) {
    let seed = seed();
    let receiver = Receiver::accepting().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<CrawlRequest>();
    let lambda = Arc::new(LosingLambda {
        seed,
        crawler: tx,
        sent: AtomicUsize::new(0),
        dropped: Mutex::new(BTreeSet::new()),
    });
    let app = TestApp::spawn(
        &lambda_schedule(
            "lossy",
            PAGES,
            &receiver,
            "page_timeout = \"1s\"\nmax_attempts = 5",
        ),
        Some(lambda.clone() as Arc<dyn LambdaApi>),
    )
    .await;
    // The crawler: reports every delivered event at once.
    let client = reqwest::Client::new();
    let address = app.address.clone();
    let delivered = Arc::new(Mutex::new(Vec::<CrawlRequest>::new()));
    let unaccepted = Arc::new(AtomicUsize::new(0));
    let crawler = {
        let delivered = delivered.clone();
        let unaccepted = unaccepted.clone();
        tokio::spawn(async move {
            while let Some(request) = rx.recv().await {
                delivered.lock().unwrap().push(request.clone());
                let (client, address) = (client.clone(), address.clone());
                let unaccepted = unaccepted.clone();
                tokio::spawn(async move {
                    for _ in 0..5 {
                        let (status, _) = post_report(
                            &client,
                            &address,
                            &request.callback_token,
                            &succeeded(&request),
                        )
                        .await;
                        if status == 200 {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    unaccepted.fetch_add(1, Ordering::SeqCst);
                });
            }
        })
    };
    let started = Instant::now();
    let (run, finished) = app.run_once("lossy", Duration::from_secs(60)).await;
    let finish_s = started.elapsed().as_secs_f64();
    receiver.wait_delivered(run, Duration::from_secs(10)).await;
    let pages = app.pages(run).await;
    let dropped = lambda.dropped.lock().unwrap().clone();
    let sent = lambda.sent.load(Ordering::SeqCst);
    let events: Vec<CrawlRequest> = delivered.lock().unwrap().clone();
    let redispatched = events.iter().filter(|r| r.attempt > 1).count()
        + dropped.iter().filter(|(_, a)| *a > 1).count();
    let first_dropped: BTreeSet<i64> = dropped
        .iter()
        .filter(|(_, a)| *a == 1)
        .map(|(p, _)| *p)
        .collect();
    let attempt_of = |page: i64| {
        pages
            .iter()
            .find(|p| p["id"] == page)
            .and_then(|p| p["attempt"].as_i64())
            .unwrap_or(0)
    };
    let not_retried: Vec<i64> = first_dropped
        .iter()
        .copied()
        .filter(|p| attempt_of(*p) < 2)
        .collect();
    // Pages dispatched again although none of their events was dropped: a
    // report slower than the page's 1 s deadline.
    let retried_without_drop = pages
        .iter()
        .filter(|p| p["attempt"].as_i64().unwrap_or(0) > 1)
        .filter(|p| !first_dropped.contains(&p["id"].as_i64().unwrap()))
        .count();
    let retried_metric = app
        .metric("fanfare_pages_retried_total", "reason=\"deadline\"")
        .await;
    println!(
        "FIGURE lost_events pages={PAGES} events_sent={sent} dropped={} dropped_first_attempt={} redispatched={redispatched} retried_deadline_metric={retried_metric} retried_without_drop={retried_without_drop} max_attempt={} outcome={} succeeded={} finish_s={finish_s:.1} seed={seed}",
        dropped.len(),
        first_dropped.len(),
        pages.iter().filter_map(|p| p["attempt"].as_i64()).max().unwrap_or(0),
        finished["outcome"],
        finished["pages"]["succeeded"],
    );

    assert!(!dropped.is_empty(), "some events were dropped");
    assert_eq!(finished["outcome"], "succeeded", "{finished:#}");
    assert_eq!(finished["pages"]["total"], PAGES);
    assert_eq!(finished["pages"]["succeeded"], PAGES);
    assert_eq!(pages.len(), PAGES);
    assert!(
        pages.iter().all(|p| p["status"] == "succeeded"),
        "every page terminal and succeeded"
    );
    assert!(
        not_retried.is_empty(),
        "pages whose first event was lost were dispatched again: {not_retried:?}"
    );
    assert_eq!(sent, events.len() + dropped.len());
    assert_eq!(
        unaccepted.load(Ordering::SeqCst),
        0,
        "every report was answered 200"
    );
    app.stop().await;
    crawler.abort();
}
