//! `fanfare dev`'s view of its runs: on a terminal each run is one live
//! progress line (pages done/total, rate, ETA, failures) that ends in a
//! summary with the outcome and a link to the run's console page; other
//! output gets a line when a run starts and its summary when it ends.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cli::progress::{summary_line, LiveBar, RunView};
use crate::ledger;

/// How often the ledger is asked for the runs' counts.
const POLL: Duration = Duration::from_millis(250);
/// How many of the newest runs are looked at.
const NEWEST: i64 = 20;

/// Shows the runs created from now on (and any unfinished ones) until
/// `stop` is cancelled. `api` is the daemon's base URL, for the links.
pub async fn show_runs(pool: PgPool, api: String, stop: CancellationToken) {
    let live = std::io::stderr().is_terminal();
    // Runs finished before this `fanfare dev` started are not shown.
    let since = Utc::now() - chrono::Duration::seconds(5);
    let mut bars: BTreeMap<Uuid, LiveBar> = BTreeMap::new();
    let mut shown: BTreeSet<Uuid> = BTreeSet::new();
    loop {
        match ledger::list_runs(&pool, None, NEWEST).await {
            Ok(mut runs) => {
                runs.reverse();
                for run in runs {
                    let finished = run.status == ledger::RunStatus::Finished;
                    if shown.contains(&run.id) || (finished && run.created_at < since) {
                        continue;
                    }
                    let view = RunView::from_run(&run);
                    if finished {
                        if let Some(bar) = bars.remove(&run.id) {
                            bar.finish();
                        }
                        shown.insert(run.id);
                        let link = format!("{api}/ui/runs/{}", run.id);
                        let line = summary_line(&view, Some(&link));
                        crate::telemetry::suspend(|| println!("{line}\n"));
                        continue;
                    }
                    match bars.get(&run.id) {
                        Some(bar) => bar.update(&view),
                        None => {
                            let bar = LiveBar::new(&view, None);
                            if live {
                                crate::telemetry::live_lines().add(bar.bar().clone());
                            } else {
                                println!(
                                    "run {} of {:?} started ({})",
                                    run.id,
                                    run.schedule,
                                    trigger_word(run.trigger)
                                );
                            }
                            bars.insert(run.id, bar);
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not read the runs to show their progress"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    for bar in bars.values() {
        bar.finish();
    }
}

fn trigger_word(trigger: ledger::Trigger) -> &'static str {
    match trigger {
        ledger::Trigger::Cron => "cron",
        ledger::Trigger::Catchup => "catch-up",
        ledger::Trigger::Manual => "triggered",
        ledger::Trigger::Redrive => "redrive",
    }
}
