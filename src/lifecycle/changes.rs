//! What changed since the previous run: which runs are compared, with
//! which run, and how the comparison shows in the `run.finished`
//! notification and the API. The comparison itself is one statement over
//! the ledger ([`ledger::compare_runs`]), run once, in the transaction that
//! finishes the run.
//!
//! - A run is compared when it was listed to the end and is not a redrive
//!   run (a redrive run holds only another run's failures, so every other
//!   page would look gone); a run never fully listed (its source failed, it
//!   was cancelled while listing) is not compared either: its missing pages
//!   are not gone.
//! - It is compared with [`ledger::previous_run`]: the latest finished,
//!   fully listed, non-redrive run of the same schedule created before it,
//!   whatever its outcome. Without one (the first run), `changes` is `null`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use utoipa::ToSchema;

use crate::config::Compare;
use crate::ledger::{self, ChangeCounts, ChangeKind, Run, StoredChange, Trigger};

/// How many changed pages a `run.finished` notification lists at most.
pub const CHANGED_PAGES_IN_NOTIFICATION: i64 = 100;

/// What changed in a run since the previous run of its schedule, by kind
/// (as the ledger counts it).
pub type Changes = ChangeCounts;

impl Changes {
    /// Whether a page is new, changed or gone (what `when = "changes"`
    /// notify targets are sent).
    pub fn any(&self) -> bool {
        self.new + self.changed + self.gone > 0
    }
}

/// A page's facts as a change shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PageSnapshot {
    /// Its `<title>`, when it had one.
    pub title: Option<String>,
    /// Its extracted fields as the crawler reported them: strings,
    /// numbers, arrays, null where nothing matched.
    pub fields: BTreeMap<String, Value>,
    /// Lowercase hex SHA-256 of its body.
    pub content_sha256: Option<String>,
}

/// A page that is new, changed or gone, as `run.finished` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChangedPage {
    /// The page's URL.
    pub url: String,
    /// `new`, `changed` or `gone`.
    pub kind: ChangeKind,
    /// The page in the previous run; `null` for a new page (and for a gone
    /// page the previous run could not crawl).
    pub before: Option<PageSnapshot>,
    /// The page in this run; `null` for a gone page.
    pub after: Option<PageSnapshot>,
}

/// A stored change as the API lists it: a [`ChangedPage`] with its id.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ChangeEntry {
    /// Its id: its place among the run's changes (pass as `after`).
    pub id: i64,
    /// The change.
    #[serde(flatten)]
    pub page: ChangedPage,
}

fn snapshot(v: Option<Value>) -> Result<Option<PageSnapshot>, sqlx::Error> {
    v.map(|v| serde_json::from_value(v).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()
}

impl TryFrom<StoredChange> for ChangeEntry {
    type Error = sqlx::Error;

    fn try_from(c: StoredChange) -> Result<Self, Self::Error> {
        Ok(ChangeEntry {
            id: c.id,
            page: ChangedPage {
                url: c.url,
                kind: c.kind,
                before: snapshot(c.before)?,
                after: snapshot(c.after)?,
            },
        })
    }
}

/// A finished run's comparison as its notification carries it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunChanges {
    /// The counts; `None` when the run was not compared.
    pub summary: Option<Changes>,
    /// The first [`CHANGED_PAGES_IN_NOTIFICATION`] changes, in page order.
    pub pages: Vec<ChangedPage>,
}

impl RunChanges {
    /// Whether a page is new, changed or gone.
    pub fn any(&self) -> bool {
        self.summary.as_ref().is_some_and(Changes::any)
    }
}

/// Whether `run` (just finished) is compared with a previous run at all.
pub fn is_compared(run: &Run) -> bool {
    run.trigger != Trigger::Redrive && run.listed_at.is_some()
}

/// Compares a run that has just finished with its schedule's previous run,
/// writing its changes and counts on `tx`, and returns what its
/// notification says of them (nothing when it is not compared, or has no
/// previous run).
pub async fn compare(
    tx: &mut PgConnection,
    run: &Run,
    compare: Compare,
) -> Result<RunChanges, sqlx::Error> {
    if !is_compared(run) {
        return Ok(RunChanges::default());
    }
    let Some(since) = ledger::previous_run(tx, run.id).await? else {
        return Ok(RunChanges::default());
    };
    let counts = ledger::compare_runs(tx, run.id, since, compare == Compare::Content).await?;
    let first = ledger::RunRows {
        run_id: run.id,
        only: None,
        after_id: 0,
        limit: CHANGED_PAGES_IN_NOTIFICATION,
    };
    let pages = ledger::list_changes(&mut *tx, first)
        .await?
        .into_iter()
        .map(|c| ChangeEntry::try_from(c).map(|e| e.page))
        .collect::<Result<_, _>>()?;
    Ok(RunChanges {
        summary: Some(counts),
        pages,
    })
}
