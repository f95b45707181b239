//! The operator's actions: trigger a schedule, cancel a run, redrive a
//! run's failures, pause and resume a schedule. Each lives here once, for
//! the admin API and the console alike, and says what went wrong with an
//! [`ActionError`] that each surface maps to its own answers.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use crate::ledger::{self, RedriveInsert, Run, RunStatus, Trigger};
use crate::lifecycle::Closing;
use crate::runs::{Runs, StartError};

/// Why an operator action was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// No schedule has this name.
    #[error("no schedule is called {0:?}")]
    UnknownSchedule(String),
    /// A run of the schedule for this very microsecond exists already.
    #[error("a run of {schedule:?} for {scheduled_for} exists already")]
    RunExists {
        /// The schedule triggered.
        schedule: String,
        /// The nominal fire time of the trigger.
        scheduled_for: DateTime<Utc>,
    },
    /// No run has this id.
    #[error("no run has the id {0}")]
    UnknownRun(Uuid),
    /// Every page of the run has reported; it is finishing.
    #[error("every page of run {0} has reported; it is finishing")]
    RunFinishing(Uuid),
    /// The run has finished already.
    #[error("run {0} has finished already")]
    RunFinished(Uuid),
    /// The run has no failed or timed-out pages.
    #[error("run {0} has no failed or timed-out pages to redrive")]
    NothingToRedrive(Uuid),
    /// A redrive of the run has not finished yet (`open`: that redrive run,
    /// unless it finished in the meantime).
    #[error("a redrive of run {parent} is still open{}: redrive again once it has finished", .open.map(|o| format!(" (run {o})")).unwrap_or_default())]
    RedriveOpen {
        /// The run asked to be redriven.
        parent: Uuid,
        /// Its open redrive run.
        open: Option<Uuid>,
    },
    /// The ledger cannot be reached just now; the action may be retried.
    #[error("the ledger is unavailable: {0}")]
    LedgerUnavailable(sqlx::Error),
    /// The ledger refused or failed otherwise.
    #[error(transparent)]
    Ledger(sqlx::Error),
}

impl From<sqlx::Error> for ActionError {
    fn from(e: sqlx::Error) -> Self {
        if ledger::is_unavailable(&e) {
            ActionError::LedgerUnavailable(e)
        } else {
            ActionError::Ledger(e)
        }
    }
}

impl From<StartError> for ActionError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::UnknownSchedule(name) => ActionError::UnknownSchedule(name),
            StartError::Ledger(e) => e.into(),
        }
    }
}

/// The operator's actions over one replica's run lifecycle.
#[derive(Clone, Copy)]
pub struct Actions<'a> {
    runs: &'a Arc<Runs>,
}

impl<'a> Actions<'a> {
    /// The actions over `runs`.
    pub fn new(runs: &'a Arc<Runs>) -> Self {
        Self { runs }
    }

    /// Starts a run of `schedule` now (trigger `manual`), even while the
    /// schedule is paused; answers the new run's id.
    pub async fn trigger(&self, schedule: &str) -> Result<Uuid, ActionError> {
        // Microseconds: the precision Postgres keeps, so the stored key equals this one.
        let now = Utc::now().trunc_subsecs(6);
        self.runs
            .start(schedule, now, Trigger::Manual)
            .await?
            .ok_or_else(|| ActionError::RunExists {
                schedule: schedule.to_string(),
                scheduled_for: now,
            })
    }

    /// Cancels a run: its open pages are cancelled and it finishes as
    /// `cancelled`; answers the finished run. A run that is not open is
    /// told apart from no run at all here, once, for every caller.
    pub async fn cancel(&self, run_id: Uuid) -> Result<Run, ActionError> {
        if let Some(run) = self.runs.close_run(run_id, Closing::Cancelled).await? {
            return Ok(run);
        }
        Err(match ledger::get_run(&self.runs.pool, run_id).await? {
            Some(run) if run.status == RunStatus::Finishing => ActionError::RunFinishing(run_id),
            Some(_) => ActionError::RunFinished(run_id),
            None => ActionError::UnknownRun(run_id),
        })
    }

    /// Starts a new run of `parent`'s failed and timed-out pages, unless a
    /// redrive of it is still open (two requests racing create one run);
    /// answers the new run's id.
    pub async fn redrive(&self, parent: Uuid) -> Result<Uuid, ActionError> {
        let runs = self.runs;
        let now = Utc::now().trunc_subsecs(6);
        match ledger::create_redrive(&runs.pool, parent, now).await? {
            RedriveInsert::Created(run_id) => {
                metrics::counter!("fanfare_runs_started_total", "schedule" => "redrive")
                    .increment(1);
                tracing::info!(%run_id, parent = %parent, "redrive run started");
                runs.wake_dispatch.notify_one();
                Ok(run_id)
            }
            RedriveInsert::AlreadyOpen => Err(ActionError::RedriveOpen {
                parent,
                open: ledger::open_redrive_of(&runs.pool, parent).await?,
            }),
            RedriveInsert::NothingToRedrive => match ledger::get_run(&runs.pool, parent).await? {
                Some(_) => Err(ActionError::NothingToRedrive(parent)),
                None => Err(ActionError::UnknownRun(parent)),
            },
        }
    }

    /// Pauses `schedule`: its cron fires are skipped until it is resumed.
    /// Pausing a paused schedule changes nothing.
    pub async fn pause(&self, schedule: &str) -> Result<(), ActionError> {
        self.set_paused(schedule, true).await
    }

    /// Resumes `schedule`. Resuming a schedule that is not paused changes
    /// nothing.
    pub async fn resume(&self, schedule: &str) -> Result<(), ActionError> {
        self.set_paused(schedule, false).await
    }

    /// Pauses (`paused`) or resumes `schedule`, and logs it.
    pub async fn set_paused(&self, schedule: &str, paused: bool) -> Result<(), ActionError> {
        if self.runs.settings.schedule(schedule).is_none() {
            return Err(ActionError::UnknownSchedule(schedule.to_string()));
        }
        ledger::set_paused(&self.runs.pool, schedule, paused).await?;
        let done = if paused { "paused" } else { "resumed" };
        tracing::info!(schedule, paused, "schedule {done}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_being_unreachable_is_told_apart_from_other_ledger_errors() {
        assert!(matches!(
            ActionError::from(sqlx::Error::PoolTimedOut),
            ActionError::LedgerUnavailable(_)
        ));
        assert!(matches!(
            ActionError::from(sqlx::Error::RowNotFound),
            ActionError::Ledger(_)
        ));
        assert!(matches!(
            ActionError::from(StartError::UnknownSchedule("s".into())),
            ActionError::UnknownSchedule(s) if s == "s"
        ));
    }

    #[test]
    fn an_open_redrive_is_named_when_it_is_known() {
        let parent = Uuid::nil();
        let open = Uuid::from_u128(1);
        let named = ActionError::RedriveOpen {
            parent,
            open: Some(open),
        }
        .to_string();
        assert!(named.contains("still open") && named.contains(&open.to_string()));
        let unnamed = ActionError::RedriveOpen { parent, open: None }.to_string();
        assert!(!unnamed.contains("(run"), "{unnamed}");
    }
}
