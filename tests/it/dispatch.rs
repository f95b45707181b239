//! Fan-out in batches: the next claim overlaps the current batch's invokes,
//! at most one batch ahead, and a stopping daemon invokes what it claimed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanfare::dispatch::{InvokeError, LambdaApi};
use fanfare_crawler::contract::CrawlRequest;
use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::helpers::*;

/// Pages of the runs below: more than two claims' worth.
const PAGES: usize = 4_500;

/// A Lambda API stand-in that holds every invoke until the test lets it
/// through, and keeps the events that went through.
struct Gate {
    open: Semaphore,
    arrived: AtomicUsize,
    passed: Mutex<Vec<CrawlRequest>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            open: Semaphore::new(0),
            arrived: AtomicUsize::new(0),
            passed: Mutex::new(Vec::new()),
        }
    }
}

impl Gate {
    /// Lets `n` more invokes through.
    fn release(&self, n: usize) {
        self.open.add_permits(n);
    }

    fn passed(&self) -> Vec<CrawlRequest> {
        self.passed.lock().unwrap().clone()
    }
}

impl LambdaApi for Gate {
    fn invoke_event(
        &self,
        _function: &str,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Option<String>, InvokeError>> {
        Box::pin(async move {
            self.arrived.fetch_add(1, Ordering::SeqCst);
            self.open.acquire().await.expect("never closed").forget();
            let request: CrawlRequest =
                serde_json::from_slice(&payload).expect("the event is a contract request");
            self.passed.lock().unwrap().push(request);
            Ok(None)
        })
    }
}

/// Pages of `run` the ledger has dispatched (claimed).
async fn dispatched(pool: &PgPool, run: Uuid) -> i64 {
    sqlx::query_scalar("select count(*) from pages where run_id = $1 and status = 'dispatched'")
        .bind(run)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Polls until `run` has `n` pages dispatched; panics after 30 s, or at once
/// when more than `n` are.
async fn wait_dispatched(pool: &PgPool, run: Uuid, n: i64) {
    eventually(&format!("{n} pages dispatched"), secs(30), || async {
        let now = dispatched(pool, run).await;
        assert!(now <= n, "{now} pages dispatched, expected {n}");
        holds(now == n, format!("{now} dispatched"))
    })
    .await
}

/// Polls until the ledger has dispatched some pages of `run` and the
/// stand-in holds an invoke; returns how many the first claim took.
async fn first_claim(pool: &PgPool, run: Uuid, gate: &Gate) -> i64 {
    eventually("a first claim held at the stand-in", secs(30), || async {
        let claimed = dispatched(pool, run).await;
        let arrived = gate.arrived.load(Ordering::SeqCst);
        if claimed > 0 && arrived > 0 {
            Ok(claimed)
        } else {
            Err(format!("{claimed} dispatched, {arrived} at the stand-in"))
        }
    })
    .await
}

/// Every page of `run` went through exactly once, as attempt 1.
fn assert_once_each(passed: &[CrawlRequest], run: Uuid, expected: usize) {
    let pages: HashSet<&str> = passed.iter().map(|r| r.page_id.as_str()).collect();
    assert_eq!(pages.len(), passed.len(), "no page was invoked twice");
    assert_eq!(passed.len(), expected);
    assert!(passed
        .iter()
        .all(|r| r.attempt == 1 && r.run_id == run.to_string()));
}

#[tokio::test]
async fn the_next_claim_overlaps_the_invokes_of_the_current_batch_but_never_runs_further_ahead() {
    let gate = Arc::new(Gate::default());
    let app = TestApp::spawn(
        &lambda_schedule("big", PAGES, None, ""),
        Some(gate.clone() as Arc<dyn LambdaApi>),
    )
    .await;
    let run = app.trigger("big").await;
    app.wait_listed(run, Duration::from_secs(30)).await;

    // Every invoke of the first batch is held: nothing is claimed beyond it.
    let batch = first_claim(&app.pool, run, &gate).await;
    assert!(
        batch * 2 < PAGES as i64,
        "the test wants a run of more than two claims (a claim took {batch} of {PAGES} pages)"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dispatched(&app.pool, run).await, batch);

    // One invoke returns: the next batch is claimed while the rest of the
    // first is still being invoked, and no third one.
    gate.release(1);
    wait_dispatched(&app.pool, run, batch * 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dispatched(&app.pool, run).await, batch * 2);
    assert_eq!(gate.passed().len(), 1);

    // Let everything through: every page is invoked once.
    gate.release(PAGES);
    wait_dispatched(&app.pool, run, PAGES as i64).await;
    eventually("every invoke through", secs(30), || async {
        let passed = gate.passed().len();
        holds(passed >= PAGES, format!("{passed} of {PAGES}"))
    })
    .await;
    assert_once_each(&gate.passed(), run, PAGES);
    let metrics = app.metrics().await;
    assert_eq!(
        fanfare_testkit::metric_in(&metrics, "fanfare_invokes_total", r#"outcome="accepted""#),
        PAGES as f64,
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_stopping_daemon_invokes_every_page_it_has_claimed() {
    let db = fresh_database().await;
    let gate = Arc::new(Gate::default());
    let app = TestApp::builder()
        .database(db.url())
        .toml(&lambda_schedule("big", PAGES, None, ""))
        .lambda(gate.clone())
        .spawn()
        .await;
    let run = app.trigger("big").await;
    app.wait_listed(run, Duration::from_secs(30)).await;
    first_claim(&app.pool, run, &gate).await;

    // Stop while the claimed pages wait for their invokes, then let them
    // through: the daemon stops only once they went out.
    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    gate.release(PAGES);
    stopping.await.unwrap();

    let pool = PgPool::connect(db.url()).await.unwrap();
    let claimed: Vec<i64> = sqlx::query_scalar(
        "select id from pages where run_id = $1 and status = 'dispatched' order by id",
    )
    .bind(run)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!claimed.is_empty());
    let passed = gate.passed();
    assert_once_each(&passed, run, claimed.len());
    let mut invoked: Vec<i64> = passed.iter().map(|r| r.page_id.parse().unwrap()).collect();
    invoked.sort_unstable();
    assert_eq!(
        invoked, claimed,
        "every claimed page, and only those, was invoked"
    );
    pool.close().await;
}
