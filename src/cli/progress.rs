//! A run's progress as people see it: a live bar on a terminal (pages
//! done/total, rate, ETA, failures), plain lines elsewhere, and one summary
//! line when it finishes. Shared by `fanfare runs watch`, `fanfare trigger
//! --wait` and `fanfare dev`.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde_json::Value;

use super::table;
use crate::ledger::{Outcome, Run, RunStatus};

/// What the progress display needs of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    /// The run's id.
    pub id: String,
    /// Its schedule.
    pub schedule: String,
    /// `listing`, `running`, `finishing` or `finished`.
    pub status: RunStatus,
    /// How it went, once finished.
    pub outcome: Option<Outcome>,
    /// Why it failed as a whole, when it did.
    pub error: Option<String>,
    /// Pages listed so far.
    pub total: u64,
    /// Pages not terminal yet.
    pub open: u64,
    /// Pages that succeeded.
    pub succeeded: u64,
    /// Pages that failed.
    pub failed: u64,
    /// Pages that timed out.
    pub timed_out: u64,
    /// Pages cancelled.
    pub cancelled: u64,
    /// From creation to finish, once finished.
    pub duration_seconds: Option<f64>,
}

impl RunView {
    /// Reads the API's run (`GET /v1/runs/{id}`); `None` when it lacks the
    /// fields this needs.
    pub fn from_api(run: &Value) -> Option<Self> {
        let n = |k: &str| run["pages"][k].as_u64().unwrap_or(0);
        Some(Self {
            id: run["id"].as_str()?.to_string(),
            schedule: run["schedule"].as_str().unwrap_or("?").to_string(),
            status: serde_json::from_value(run["status"].clone()).ok()?,
            outcome: serde_json::from_value(run["outcome"].clone())
                .ok()
                .flatten(),
            error: run["error"].as_str().map(str::to_string),
            total: n("total"),
            open: n("open"),
            succeeded: n("succeeded"),
            failed: n("failed"),
            timed_out: n("timed_out"),
            cancelled: n("cancelled"),
            duration_seconds: run["duration_seconds"].as_f64(),
        })
    }

    /// Reads a run from the ledger.
    pub fn from_run(run: &Run) -> Self {
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Self {
            id: run.id.to_string(),
            schedule: run.schedule.clone(),
            status: run.status,
            outcome: run.outcome,
            error: run.error.clone(),
            total: n(run.total_pages),
            open: n(run.open_pages),
            succeeded: n(run.succeeded_pages),
            failed: n(run.failed_pages),
            timed_out: n(run.timed_out_pages),
            cancelled: n(run.cancelled_pages),
            duration_seconds: run
                .finished_at
                .map(|f| (f - run.created_at).num_milliseconds() as f64 / 1000.0),
        }
    }

    /// Pages that reached a terminal state.
    pub fn done(&self) -> u64 {
        self.total.saturating_sub(self.open)
    }

    /// Whether the run is finished.
    pub fn finished(&self) -> bool {
        self.status == RunStatus::Finished
    }

    /// Whether it finished as `succeeded`.
    pub fn succeeded(&self) -> bool {
        self.finished() && self.outcome == Some(Outcome::Succeeded)
    }

    fn status_word(&self) -> &'static str {
        match self.status {
            RunStatus::Listing => "listing",
            RunStatus::Running => "running",
            RunStatus::Finishing => "finishing",
            RunStatus::Finished => "finished",
        }
    }

    fn failures(&self) -> String {
        let mut s = format!("{} failed", self.failed);
        if self.timed_out > 0 {
            s.push_str(&format!(", {} timed out", self.timed_out));
        }
        if self.cancelled > 0 {
            s.push_str(&format!(", {} cancelled", self.cancelled));
        }
        s
    }
}

/// One plain line about a run in progress (for output that is not a
/// terminal): `run ID of "demo": running, 20/36 pages done, 1 failed`.
pub fn plain_line(v: &RunView) -> String {
    format!(
        "run {} of {:?}: {}, {}/{} pages done, {}",
        v.id,
        v.schedule,
        v.status_word(),
        v.done(),
        v.total,
        v.failures()
    )
}

/// The line a finished run ends with: its outcome, counts, duration and,
/// when given, a link to it.
pub fn summary_line(v: &RunView, link: Option<&str>) -> String {
    let outcome = v.outcome.map(|o| o.as_str()).unwrap_or("unknown");
    let mark = if v.succeeded() { "✔" } else { "✘" };
    let mut s = format!(
        "{mark} run {} of {:?} {outcome}: {}/{} pages succeeded, {}",
        v.id,
        v.schedule,
        v.succeeded,
        v.total,
        v.failures()
    );
    if let Some(d) = v.duration_seconds {
        s.push_str(&format!(", in {}", table::duration(d)));
    }
    if let Some(e) = &v.error {
        s.push_str(&format!(" ({e})"));
    }
    if let Some(link) = link {
        s.push_str(&format!("\n  {link}"));
    }
    s
}

/// A run's live bar.
#[derive(Debug, Clone)]
pub struct LiveBar {
    bar: ProgressBar,
}

impl LiveBar {
    /// A bar for the run, drawn on `target` (a terminal), or added to a
    /// group of bars when `target` is `None` (the caller adds it).
    pub fn new(view: &RunView, target: Option<ProgressDrawTarget>) -> Self {
        let bar = ProgressBar::with_draw_target(Some(view.total), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30.cyan/blue}] {pos}/{len} pages  {rate}  ETA {eta}  {msg}",
            )
            .expect("the template is valid")
            .with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1}/s", state.per_sec());
                },
            )
            .progress_chars("=> "),
        );
        let short: String = view.id.chars().take(8).collect();
        bar.set_prefix(format!("{} {short}", view.schedule));
        if let Some(target) = target {
            bar.set_draw_target(target);
        }
        bar.enable_steady_tick(Duration::from_millis(250));
        let live = Self { bar };
        live.update(view);
        live
    }

    /// The indicatif bar, to add to a group.
    pub fn bar(&self) -> &ProgressBar {
        &self.bar
    }

    /// Shows the run's latest counts.
    pub fn update(&self, v: &RunView) {
        self.bar.set_length(v.total.max(v.done()));
        self.bar.set_position(v.done());
        self.bar.set_message(match v.status {
            RunStatus::Listing => format!("listing…  {}", v.failures()),
            _ => v.failures(),
        });
    }

    /// Removes the bar (the caller prints the summary in its place).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
