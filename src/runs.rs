//! The run lifecycle shared by every worker: starting a run (listing its
//! pages into the ledger), recording that a page became terminal, and
//! announcing finished runs.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use crate::config::{Schedule, Settings};
use crate::ledger::{self, Completion, PageStatus, Run, TargetRef, Trigger};
use crate::sources::{self, Lister};
use crate::token::TokenSigner;

/// What every worker of one replica shares.
pub struct Runs {
    /// The ledger.
    pub pool: PgPool,
    /// The validated configuration.
    pub settings: Arc<Settings>,
    /// Signs and verifies task tokens.
    pub signer: TokenSigner,
    /// Reads page sources.
    pub lister: Lister,
    /// Notified when pages may be dispatchable (a run listed pages, a page
    /// finished and freed an in-flight slot).
    pub wake_dispatch: Notify,
    /// Notified when a run finished (its notification is queued).
    pub wake_notify: Notify,
}

/// Why a run could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No schedule has that name.
    #[error("unknown schedule {0:?}")]
    UnknownSchedule(String),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] sqlx::Error),
}

impl Runs {
    /// The notification targets of `schedule`, as the outbox records them.
    pub fn targets(&self, schedule: &str) -> Vec<TargetRef> {
        self.settings
            .schedule(schedule)
            .map(|s| {
                s.notify
                    .iter()
                    .enumerate()
                    .map(|(i, t)| TargetRef {
                        index: i as i32,
                        kind: t.kind(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Creates the run of `schedule` for `scheduled_for` and starts listing
    /// its pages in the background. `Ok(None)` when that run already exists
    /// (another replica created it).
    #[tracing::instrument(skip(self, tracker), fields(run_id))]
    pub async fn start(
        self: &Arc<Self>,
        schedule: &str,
        scheduled_for: DateTime<Utc>,
        trigger: Trigger,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Result<Option<Uuid>, StartError> {
        let sched = self
            .settings
            .schedule(schedule)
            .ok_or_else(|| StartError::UnknownSchedule(schedule.to_string()))?
            .clone();
        let Some(run_id) = ledger::create_run(&self.pool, schedule, scheduled_for, trigger).await?
        else {
            tracing::info!(schedule, %scheduled_for, "run for this fire exists already; nothing to do");
            return Ok(None);
        };
        tracing::Span::current().record("run_id", tracing::field::display(run_id));
        metrics::counter!("fanfare_runs_started_total", "schedule" => schedule.to_string())
            .increment(1);
        tracing::info!(%run_id, schedule, %scheduled_for, source = %sources::describe(&sched.pages), "run started");
        let this = self.clone();
        tracker.spawn(async move { this.list(run_id, sched).await });
        Ok(Some(run_id))
    }

    /// Reads the run's page source into the ledger in batches, then marks
    /// the run listed (finishing it at once if it has no pages). A source
    /// that cannot be read fails the run with the reason.
    #[tracing::instrument(skip(self, schedule), fields(schedule = %schedule.name))]
    async fn list(self: Arc<Self>, run_id: Uuid, schedule: Schedule) {
        let (tx, mut rx) = mpsc::channel::<Vec<String>>(4);
        let lister = self.lister.clone();
        let source = schedule.pages.clone();
        let max_pages = schedule.max_pages;
        let reader = tokio::spawn(async move { lister.list(&source, max_pages, tx).await });
        let mut inserted = 0u64;
        let mut failure: Option<String> = None;
        while let Some(batch) = rx.recv().await {
            match ledger::insert_pages(&self.pool, run_id, &batch).await {
                Ok(Some(n)) => {
                    inserted += n;
                    self.wake_dispatch.notify_one();
                }
                Ok(None) => {
                    tracing::warn!(%run_id, "the run's page list was closed by someone else; listing stops");
                    drop(rx);
                    let _ = reader.await;
                    return;
                }
                Err(e) => {
                    failure = Some(format!("storing the page list: {e}"));
                    break;
                }
            }
        }
        drop(rx);
        let listed = match reader.await {
            Ok(result) => result,
            Err(e) => Err(sources::SourceError::Fetch {
                url: sources::describe(&schedule.pages),
                message: format!("the listing task failed: {e}"),
            }),
        };
        let failure = failure.or_else(|| listed.as_ref().err().map(|e| e.to_string()));
        let targets = |s: &str| self.targets(s);
        let finished = match &failure {
            Some(error) => {
                tracing::error!(%run_id, %error, "could not list the run's pages; the run fails");
                // fail_run announces the run itself.
                if let Err(e) = self.fail_run(run_id, error).await {
                    tracing::error!(%run_id, error = %e, "could not record the failed listing");
                }
                self.wake_dispatch.notify_one();
                return;
            }
            None => {
                let stats = listed.unwrap_or_default();
                let duplicates = (stats.urls as u64).saturating_sub(inserted);
                tracing::info!(%run_id, pages = inserted, duplicates, invalid = stats.invalid, "page list read");
                let listing = serde_json::json!({
                    "urls_read": stats.urls,
                    "pages": inserted,
                    "duplicates": duplicates,
                    "invalid": stats.invalid,
                    "invalid_examples": stats.invalid_examples,
                    "oversized_sitemaps": stats.oversized_sitemaps,
                });
                ledger::finish_listing(&self.pool, run_id, &listing, &targets).await
            }
        };
        match finished {
            Ok(Some(run)) => self.announce(&run),
            Ok(None) => {}
            // Left in `listing`: a later start-up recovery can pick it up.
            Err(e) => tracing::error!(%run_id, error = %e, "could not record the end of listing"),
        }
        self.wake_dispatch.notify_one();
    }

    /// Moves a page to a terminal state (see [`ledger::complete_page`]) and
    /// announces the run when that finished it.
    pub async fn complete_page(
        &self,
        run_id: Uuid,
        page_id: i64,
        attempt: i32,
        status: PageStatus,
        result: Option<&serde_json::Value>,
        error: Option<&serde_json::Value>,
    ) -> Result<Completion, sqlx::Error> {
        let targets = |s: &str| self.targets(s);
        let completion = ledger::complete_page(
            &self.pool, run_id, page_id, attempt, status, result, error, &targets,
        )
        .await?;
        if let Completion::Recorded { finished } = &completion {
            self.wake_dispatch.notify_one();
            if let Some(run) = finished {
                self.announce(run);
            }
        }
        Ok(completion)
    }

    /// Fails a run as a whole with `error` (see [`ledger::fail_run`]) and
    /// announces it; `None` when it had already finished.
    pub async fn fail_run(&self, run_id: Uuid, error: &str) -> Result<Option<Run>, sqlx::Error> {
        let targets = |s: &str| self.targets(s);
        let failed = ledger::fail_run(&self.pool, run_id, error, &targets).await?;
        if let Some(run) = &failed {
            self.announce(run);
        }
        Ok(failed)
    }

    /// Logs and counts a finished run and wakes the notifier.
    pub fn announce(&self, run: &Run) {
        let outcome = run.outcome.clone().unwrap_or_default();
        metrics::counter!("fanfare_runs_finished_total", "schedule" => run.schedule.clone(), "outcome" => outcome.clone())
            .increment(1);
        tracing::info!(
            run_id = %run.id,
            schedule = %run.schedule,
            %outcome,
            total = run.total_pages,
            succeeded = run.succeeded_pages,
            failed = run.failed_pages,
            timed_out = run.timed_out_pages,
            "run finished"
        );
        self.wake_notify.notify_one();
    }
}
