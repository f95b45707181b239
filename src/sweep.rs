//! The sweeper: dispatched pages whose report did not come by their deadline
//! are dispatched again (attempt + 1) after a backoff, or, with their attempts
//! spent, become `timed_out`.
//!
//! A report from an earlier attempt that arrives later is still accepted
//! while the page is not terminal: the work was done.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::ledger::{self, PageStatus};
use crate::runs::Runs;

/// How often the sweeper looks for overdue pages.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Sweeps until `cancel` fires.
pub async fn run(runs: Arc<Runs>, cancel: CancellationToken) {
    loop {
        if let Err(e) = sweep_once(&runs).await {
            tracing::warn!(error = %e, "sweep failed; will try again");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

/// One pass: handles up to a batch of overdue pages; returns how many.
pub async fn sweep_once(runs: &Runs) -> Result<usize, sqlx::Error> {
    let overdue = ledger::overdue_pages(&runs.pool, 1000).await?;
    for page in &overdue {
        let max_attempts = runs
            .settings
            .schedule(&page.schedule)
            .map(|s| s.max_attempts)
            .unwrap_or(1);
        let detail = json!({
            "kind": "deadline",
            "message": format!("no report for attempt {} before its deadline", page.attempt),
            "retryable": (page.attempt as u32) < max_attempts,
        });
        if (page.attempt as u32) < max_attempts {
            let wait = crate::notify::backoff(page.attempt);
            if ledger::requeue_page(&runs.pool, page.id, page.attempt, wait, &detail, false).await?
            {
                metrics::counter!("fanfare_pages_retried_total", "reason" => "deadline")
                    .increment(1);
                tracing::warn!(run_id = %page.run_id, page_id = page.id, attempt = page.attempt, retry_in = ?wait, "no report by the deadline; the page will be dispatched again");
            }
        } else {
            runs.complete_page(
                page.run_id,
                page.id,
                page.attempt,
                PageStatus::TimedOut,
                None,
                Some(&detail),
            )
            .await?;
            tracing::warn!(run_id = %page.run_id, page_id = page.id, attempt = page.attempt, "no report by the deadline of the last attempt; the page timed out");
        }
    }
    if !overdue.is_empty() {
        runs.wake_dispatch.notify_one();
    }
    Ok(overdue.len())
}
