//! Lock-order cases the race property found, made deterministic: a third
//! session holds the run's row lock while the two calls queue up behind it
//! in the order that matters, then lets go.
//!
//! Recording a report once locked the page's row, then the run's,
//! while every other writer that touches both (`insert_pages`, `close_run`)
//! locks the run's first; it now locks the run's first too. Both calls must
//! succeed (one waits for the other); a deadlock aborts one of them, which
//! for `insert_pages` fails the whole run (`Runs::list_inner` closes the run
//! as failed on an insert error).

use std::time::Duration;

use fanfare::config::Tolerance;
use fanfare::ledger;
use fanfare::lifecycle::{Closing, Event};
use fanfare::runs::{Handled, PageAttempt};
use serde_json::json;
use sqlx::Acquire;
use uuid::Uuid;

use crate::harness::{check_invariants, unlimited_hosts, Database, Policy, PAGE_TIMEOUT, SCHEDULE};

fn policy() -> Policy {
    Policy {
        max_attempts: 2,
        max_in_flight: 8,
        tolerated: Tolerance::Count(0),
        targets: 1,
        render_auto: false,
    }
}

/// A run still listing, with one page dispatched (attempt 1).
async fn run_with_a_dispatched_page(db: &Database, url: &str) -> (Uuid, i64) {
    let run_id = db.new_run(&[url.to_string()]).await;
    let claim = ledger::claim_pages(&db.observer, SCHEDULE, 8, 8, PAGE_TIMEOUT)
        .await
        .expect("claim_pages");
    assert_eq!(claim.pages.len(), 1);
    (run_id, claim.pages[0].id)
}

/// The first attempt at `page_id` of `run_id` reported succeeded, as a
/// callback records it through `runs`.
async fn report_succeeded(
    runs: std::sync::Arc<fanfare::runs::Runs>,
    run_id: Uuid,
    page_id: i64,
) -> Result<Handled, sqlx::Error> {
    let at = PageAttempt::new(run_id, page_id, 1);
    runs.page_event(at, Event::ReportSucceeded, Some(json!({"report": 1})))
        .await
}

/// Runs `first` and `second` (each a future on its own replica) so that
/// `first` gets the run's row lock before `second`, with `second` already
/// holding whatever it locks before the run's row.
macro_rules! queue_behind_a_run_lock {
    ($db:expr, $run_id:expr, ($first_replica:expr, $first:expr), ($second_replica:expr, $second:expr)) => {{
        let mut holder = $db.observer.acquire().await.expect("a connection");
        let mut tx = holder.begin().await.expect("begin");
        sqlx::query("select id from runs where id = $1 for update")
            .bind($run_id)
            .execute(&mut *tx)
            .await
            .expect("lock the run");
        let first = tokio::spawn($first);
        $db.wait_until_blocked(&$first_replica).await;
        let second = tokio::spawn($second);
        $db.wait_until_blocked(&$second_replica).await;
        tx.commit().await.expect("release the run");
        let both = tokio::time::timeout(Duration::from_secs(30), async {
            (first.await.expect("first"), second.await.expect("second"))
        })
        .await
        .expect("both calls return");
        both
    }};
}

#[test]
fn a_report_racing_a_relisting_of_its_url_does_not_deadlock() {
    crate::runtime().block_on(async {
        let db = Database::fresh().await;
        let url = "https://example.test/p/0";
        let (run_id, page_id) = run_with_a_dispatched_page(&db, url).await;
        let settings = policy().settings(&db.url);
        let lister = db.replica(settings.clone()).await;
        let callback = db.replica(settings).await;
        let (pool, runs) = (lister.pool().clone(), callback.runs.clone());
        // The lister (a takeover, or a source listing the URL twice)
        // inserts the URL again while the page's report is being recorded.
        let (inserted, completed) = queue_behind_a_run_lock!(
            db,
            run_id,
            (lister, async move {
                let urls = [url.to_string()];
                ledger::insert_pages(
                    &pool,
                    &ledger::Lease::first(run_id),
                    &urls,
                    &unlimited_hosts(&urls),
                )
                .await
            }),
            (callback, report_succeeded(runs, run_id, page_id))
        );
        let inserted = inserted.map_err(|e| e.to_string());
        let completed = completed.map_err(|e| e.to_string());
        assert!(
            matches!(inserted, Ok(Some(0))) && matches!(completed, Ok(Handled::Recorded { .. })),
            "insert_pages answered {inserted:?} and page_event answered {:?}",
            completed.map(|c| format!("{c:?}").chars().take(40).collect::<String>())
        );
        let snap = db.snapshot(run_id).await;
        check_invariants(&snap, &policy()).unwrap();
    });
}

#[test]
fn a_report_racing_the_closing_of_its_run_does_not_deadlock() {
    crate::runtime().block_on(async {
        let db = Database::fresh().await;
        let (run_id, page_id) = run_with_a_dispatched_page(&db, "https://example.test/p/0").await;
        let settings = policy().settings(&db.url);
        let closer = db.replica(settings.clone()).await;
        let callback = db.replica(settings).await;
        let (closing, runs) = (closer.runs.clone(), callback.runs.clone());
        // The run's timeout (or an operator's cancel) closes it while its
        // page's report is being recorded.
        let (closed, completed) = queue_behind_a_run_lock!(
            db,
            run_id,
            (closer, async move {
                closing
                    .close_run(run_id, Closing::TimedOut("run_timeout"))
                    .await
                    .map(|r| r.is_some())
            }),
            (callback, async move {
                report_succeeded(runs, run_id, page_id)
                    .await
                    .map(|c| matches!(c, Handled::Stale))
            })
        );
        let closed = closed.map_err(|e| e.to_string());
        let duplicate = completed.map_err(|e| e.to_string());
        assert!(
            matches!(closed, Ok(true)) && matches!(duplicate, Ok(true)),
            "close_run answered {closed:?} and page_event answered (stale) {duplicate:?}"
        );
        let snap = db.snapshot(run_id).await;
        check_invariants(&snap, &policy()).unwrap();
    });
}
