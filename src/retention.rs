//! Retention: the pruner, run by every replica, deletes finished runs
//! older than their schedule's `keep_runs_for` with their pages, page
//! changes and delivered notifications, so that the ledger stays bounded.
//!
//! Never deleted: the run a later run of its schedule will be compared with
//! (change detection's rule, [`ledger::previous_run`]), a run with a
//! notification not yet delivered, an open run, and the parent of an open
//! redrive run (the rules are the ledger's, [`ledger::prunable_runs`]).
//!
//! A run is deleted in steps of at most `[retention] batch_rows` rows, each
//! its own short transaction that first locks the run's row with
//! `FOR UPDATE SKIP LOCKED`: replicas pruning at the same time share the
//! runs between them instead of queueing, and the recorder and the claim,
//! which never touch a finished run, wait at most for one step's commit
//! where they touch the same index pages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Settings;
use crate::ledger::{self, Keep, PrunableRun, PruneStep};

/// Candidate runs read at a time by a pass.
const RUNS_AT_ONCE: i64 = 100;

/// What one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Runs deleted.
    pub runs: u64,
    /// Their pages deleted.
    pub pages: u64,
    /// Their page changes deleted.
    pub changes: u64,
    /// Runs left to another pruner that held them.
    pub skipped: u64,
}

/// The keep durations of `settings`, as the ledger takes them.
pub fn keep(settings: &Settings) -> Keep {
    let (schedules, keep_for) = settings
        .schedules
        .iter()
        .filter_map(|s| s.keep_runs_for.map(|k| (s.name.clone(), k.as_secs_f64())))
        .unzip();
    Keep {
        schedules,
        keep_for,
        default: settings.retention.keep_runs_for.as_secs_f64(),
    }
}

/// The runs a pass would delete now, oldest first, at most `limit`.
pub async fn would_prune(
    pool: &PgPool,
    settings: &Settings,
    limit: i64,
) -> Result<Vec<PrunableRun>, sqlx::Error> {
    ledger::prunable_runs(pool, &keep(settings), &[], limit).await
}

/// One pass: deletes every run that may go now, step by step; stops early
/// (between steps) when `cancel` fires. Counts what it deleted in
/// `fanfare_pruned_runs_total` and `fanfare_pruned_pages_total` as it goes
/// and logs one line at the end.
pub async fn prune_once(
    pool: &PgPool,
    settings: &Settings,
    cancel: &CancellationToken,
) -> Result<Pruned, sqlx::Error> {
    let started = Instant::now();
    let keep = keep(settings);
    let chunk = i64::from(settings.retention.batch_rows);
    let mut pruned = Pruned::default();
    // Runs this pass is done with (deleted, kept, or held by another
    // pruner), so that the next read of candidates moves past them.
    let mut done: Vec<Uuid> = Vec::new();
    let result = async {
        let mut conn = pool.acquire().await?;
        'pass: loop {
            let candidates = ledger::prunable_runs(&mut *conn, &keep, &done, RUNS_AT_ONCE).await?;
            if candidates.is_empty() {
                break;
            }
            for run in candidates {
                done.push(run.id);
                loop {
                    if cancel.is_cancelled() {
                        break 'pass;
                    }
                    match ledger::prune_step(&mut conn, run.id, chunk).await? {
                        PruneStep::Pages(n) => {
                            pruned.pages += n;
                            metrics::counter!("fanfare_pruned_pages_total").increment(n);
                        }
                        PruneStep::Changes(n) => pruned.changes += n,
                        PruneStep::RunDeleted => {
                            pruned.runs += 1;
                            metrics::counter!("fanfare_pruned_runs_total").increment(1);
                            tracing::debug!(run_id = %run.id, schedule = %run.schedule, finished_at = %run.finished_at, "run deleted");
                            break;
                        }
                        PruneStep::Skipped => {
                            pruned.skipped += 1;
                            break;
                        }
                        PruneStep::Kept => break,
                    }
                }
            }
        }
        Ok::<_, sqlx::Error>(())
    }
    .await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(()) => tracing::info!(
            runs = pruned.runs,
            pages = pruned.pages,
            changes = pruned.changes,
            skipped = pruned.skipped,
            elapsed_ms,
            "prune pass"
        ),
        Err(e) => tracing::warn!(
            runs = pruned.runs,
            pages = pruned.pages,
            changes = pruned.changes,
            elapsed_ms,
            error = %e,
            "prune pass stopped by an error; the next pass goes on"
        ),
    }
    result.map(|()| pruned)
}

/// Prunes every `[retention] prune_every` until `cancel` fires; the first
/// pass comes one interval after the start, so a deploy's new replicas do
/// not all prune at once on top of their start.
pub async fn run(pool: PgPool, settings: Arc<Settings>, cancel: CancellationToken) {
    let every: Duration = settings.retention.prune_every;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        // Errors are logged by the pass itself.
        let _ = prune_once(&pool, &settings, &cancel).await;
    }
}
