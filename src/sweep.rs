//! The sweeper, run by every replica: dispatched pages whose report did not
//! come by their deadline are dispatched again (attempt + 1) after a backoff,
//! or, with their attempts spent, become `timed_out`; runs past their
//! `run_timeout` are closed; runs with no progress for `stuck_after` are
//! reported stuck (once); listings whose replica died are taken over; runs
//! whose last page was recorded by a daemon that died before finishing them
//! are finished.
//!
//! A report from an earlier attempt that arrives later is still accepted
//! while the page is not terminal: the work was done.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ledger;
use crate::lifecycle::{run as rules, Closing, Event};
use crate::runs::{Handled, PageAttempt, Runs};

/// How often the sweeper looks for overdue pages.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long a run may stay `finishing` before the sweeper finishes it (the
/// report that recorded its last page normally does within milliseconds).
pub const FINISHING_GRACE: Duration = Duration::from_secs(5);

/// Sweeps until `cancel` fires.
pub async fn run(runs: Arc<Runs>, cancel: CancellationToken) {
    loop {
        if let Err(e) = sweep_once(&runs).await {
            tracing::warn!(error = %e, "sweep failed; will try again");
        }
        if let Err(e) = runs.finish_stranded(FINISHING_GRACE).await {
            tracing::warn!(error = %e, "could not finish runs left finishing; will try again");
        }
        if let Err(e) = sweep_runs(&runs).await {
            tracing::warn!(error = %e, "run sweep failed; will try again");
        }
        if let Err(e) = runs.recover_listings().await {
            tracing::warn!(error = %e, "could not look for abandoned listings; will try again");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

/// How many overdue pages one pass hands to the recorder at once (they are
/// written in a few batches, not one statement each).
const OVERDUE_AT_ONCE: usize = 256;

/// One pass: handles up to a batch of overdue pages; returns how many.
pub async fn sweep_once(runs: &Runs) -> Result<usize, sqlx::Error> {
    use futures::{StreamExt, TryStreamExt};
    let overdue = ledger::overdue_pages(&runs.pool, 1000).await?;
    let handled = futures::stream::iter(overdue.iter().cloned())
        .map(|page: ledger::OverduePage| async move {
            let max_attempts = runs
                .settings
                .schedule(&page.schedule)
                .map(|s| s.max_attempts)
                .unwrap_or(1);
            let at = PageAttempt::new(page.run_id, page.id, page.attempt)
                .with_counts(page.site_throttles, max_attempts);
            match runs.page_event(at, Event::DeadlinePassed, None).await?
            {
                Handled::Requeued => {
                    tracing::warn!(run_id = %page.run_id, page_id = page.id, attempt = page.attempt, "no report by the deadline; the page will be dispatched again")
                }
                Handled::Recorded { .. } => {
                    tracing::warn!(run_id = %page.run_id, page_id = page.id, attempt = page.attempt, "no report by the deadline of the last attempt; the page timed out")
                }
                Handled::Stale | Handled::RunFailed(_) => {}
            }
            Ok::<_, sqlx::Error>(())
        })
        .buffer_unordered(OVERDUE_AT_ONCE)
        .try_collect::<Vec<()>>()
        .await;
    if !overdue.is_empty() {
        runs.wake_dispatch.notify_one();
    }
    handled?;
    Ok(overdue.len())
}

/// Closes runs past their `run_timeout` and reports runs with no progress
/// for `stuck_after`; sets the `fanfare_runs_stuck` gauge.
pub async fn sweep_runs(runs: &Runs) -> Result<(), sqlx::Error> {
    let now = chrono::Utc::now();
    let mut stuck = 0u64;
    for run in ledger::open_runs(&runs.pool).await? {
        let Some(schedule) = runs.settings.schedule(&run.schedule) else {
            continue;
        };
        let age = (now - run.created_at).to_std().unwrap_or_default();
        if age > schedule.run_timeout {
            let note = format!(
                "the run's run_timeout of {} passed",
                humantime::format_duration(schedule.run_timeout)
            );
            if let Some(closed) = runs.close_run(run.id, Closing::TimedOut(&note)).await? {
                tracing::warn!(run_id = %run.id, schedule = %run.schedule, timed_out = closed.timed_out_pages, "{note}; its open pages timed out");
            }
            continue;
        }
        let idle = (now - run.updated_at).to_std().unwrap_or_default();
        if idle > schedule.stuck_after {
            stuck += 1;
            let since = now - chrono::Duration::from_std(schedule.stuck_after).unwrap_or_default();
            if run.stuck_at.is_none()
                && rules::mark_stuck(&runs.pool, &runs.settings, run.id, since).await?
            {
                runs.wake_notify.notify_one();
                tracing::warn!(run_id = %run.id, schedule = %run.schedule, last_progress = %run.updated_at, "run stuck");
            }
        }
    }
    metrics::gauge!("fanfare_runs_stuck").set(stuck as f64);
    Ok(())
}
