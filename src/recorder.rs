//! The fan-in's writer: page changes that arrive together are recorded
//! together.
//!
//! Every change to a page attempt (a crawler's report, a deadline, an
//! invoke error: whatever [`page::next`](crate::lifecycle::page::next)
//! decided) is handed to the [`Recorder`], which writes the changes of all
//! runs in batches: one statement per batch ([`ledger::record_pages`]:
//! `UPDATE pages ... FROM unnest(...)` guarded by the page still being
//! open, each touched run's counters changed once), committed, and only then
//! is each waiting caller answered. A run whose open pages reach zero in a
//! batch moves to `finishing` in that statement; the batch then finishes it
//! (outcome, outbox rows) before answering the callers whose pages it
//! carried, so a report that completes a run returns once the run is
//! finished. Should the daemon die between the commit and the answers,
//! nothing is lost: the crawler retries and is answered `duplicate`; a run
//! left `finishing` is the sweeper's.
//!
//! There is no timer. A batch closes when a writer is free (at once when the
//! ledger is idle) or when it holds [`MAX_BATCH`] changes; while
//! [`WRITERS`] batches are being written, the next one fills. Under load the
//! wait is what the batch ahead takes to commit (a few milliseconds), and
//! batches grow instead of queueing statements on a hot run's row lock.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::config::Settings;
use crate::discovery::KnownUrls;
use crate::ledger::{self, PageChange, PageRecorded, PageWrite, Run, RunStatus};
use crate::lifecycle::run as rules;

/// The most changes one batch carries.
pub const MAX_BATCH: usize = 512;
/// How many batches are written at once. Two: while one commits (its fsync),
/// the next is already waiting at the server for the rows they share.
pub const WRITERS: usize = 2;
/// How many changes may wait for a batch before callers wait to hand theirs
/// over.
const QUEUE: usize = 8 * MAX_BATCH;

/// What recording one change did.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// The change was applied. `finished` is the run, when this change made
    /// its last page terminal and the run was finished (exactly one change
    /// per run carries it).
    Changed {
        /// The run this change finished.
        finished: Option<Box<Run>>,
    },
    /// The page had moved on (terminal, or requeued already): nothing changed.
    Unchanged,
}

/// Why a change could not be recorded: the batch it was in failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RecordError {
    /// The ledger could not be reached (the caller may retry).
    pub unavailable: bool,
    /// What failed.
    pub message: String,
}

impl From<RecordError> for sqlx::Error {
    fn from(e: RecordError) -> Self {
        if e.unavailable {
            sqlx::Error::Io(std::io::Error::other(e.message))
        } else {
            sqlx::Error::Decode(e.message.into())
        }
    }
}

/// Where the outcome of one change goes.
type Reply = oneshot::Sender<Result<Recorded, RecordError>>;

struct Entry {
    write: PageWrite,
    reply: Reply,
}

/// Records page changes in batches (see the module documentation).
pub struct Recorder {
    writer: Arc<Writer>,
    /// The batching task's queue and the task, made with the first change.
    /// Dropping the recorder stops the task and the batches it is writing,
    /// as the end of the process would: their callers are answered with an
    /// error, and a statement already sent commits or not on its own.
    queue: OnceLock<(mpsc::Sender<Entry>, AbortOnDrop)>,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What writing a batch needs.
struct Writer {
    pool: PgPool,
    settings: Arc<Settings>,
    /// Pages this recorder added by following links, and when it next
    /// refreshes the planner's statistics of `pages`.
    found: std::sync::Mutex<(u64, u64)>,
    /// Where the links a committed batch says its runs have are
    /// remembered.
    known: Arc<KnownUrls>,
}

impl Recorder {
    /// A recorder writing to `pool`, remembering in `known` the links its
    /// batches found in their runs; its batching task starts with the
    /// first change.
    pub fn new(pool: PgPool, settings: Arc<Settings>, known: Arc<KnownUrls>) -> Arc<Self> {
        Arc::new(Self {
            writer: Arc::new(Writer {
                pool,
                settings,
                found: std::sync::Mutex::new((0, ledger::ANALYZE_FIRST_AT)),
                known,
            }),
            queue: OnceLock::new(),
        })
    }

    /// Records one change, in whichever batch it lands in; returns once that
    /// batch has committed.
    ///
    /// A change whose caller stops waiting (its future dropped: a client
    /// that hung up, a task shut down) before its batch is formed is not
    /// written, as if it never arrived; once in a batch it is written.
    pub async fn record(&self, write: PageWrite) -> Result<Recorded, RecordError> {
        let (queue, _) = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let task = tokio::spawn(collect(self.writer.clone(), rx));
            (tx, AbortOnDrop(task.abort_handle()))
        });
        let (reply, answer) = oneshot::channel();
        let gone = || RecordError {
            unavailable: true,
            message: "the recorder stopped".into(),
        };
        queue
            .send(Entry { write, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl Writer {
    /// Writes one batch (and, for pages it carried twice, the rounds after
    /// it), finishes the runs it completed, and answers every entry.
    async fn write(self: Arc<Self>, mut batch: Vec<Entry>, _permit: OwnedSemaphorePermit) {
        metrics::histogram!("fanfare_record_batch_size").record(batch.len() as f64);
        while !batch.is_empty() {
            // One write per page per statement; a page's later writes go
            // in the next round, after the first is settled.
            let mut seen = HashSet::with_capacity(batch.len());
            let (round, later): (Vec<Entry>, Vec<Entry>) = batch
                .into_iter()
                .partition(|e| seen.insert(e.write.page_id));
            batch = later;
            self.write_round(round).await;
        }
    }

    async fn write_round(&self, round: Vec<Entry>) {
        // The writes go to the statement as they are (no copy of their
        // results); the replies wait beside them, in the same order.
        let (writes, replies): (Vec<PageWrite>, Vec<Reply>) =
            round.into_iter().map(|e| (e.write, e.reply)).unzip();
        let recorded = match self.write_statement(&writes).await {
            Ok(recorded) => recorded,
            Err(e) if writes.len() > 1 && !ledger::is_unavailable(&e) => {
                // Something in the batch the server refused: each change on
                // its own, so that one bad change fails alone.
                tracing::warn!(error = %e, changes = writes.len(), "a batch of page changes failed; recording them one by one");
                for (write, reply) in writes.into_iter().zip(replies) {
                    Box::pin(self.write_round(vec![Entry { write, reply }])).await;
                }
                return;
            }
            Err(e) => {
                let error = RecordError {
                    unavailable: ledger::is_unavailable(&e),
                    message: e.to_string(),
                };
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
                return;
            }
        };
        // Pages found by following links: each run's count is on each of
        // its writes, so it is taken once per run.
        if recorded.iter().any(|r| r.run_added > 0) {
            let run_of: HashMap<i64, Uuid> = writes.iter().map(|w| (w.page_id, w.run_id)).collect();
            let mut counted: HashSet<Uuid> = HashSet::new();
            let found: i64 = recorded
                .iter()
                .filter(|r| r.run_added > 0)
                .filter_map(|r| {
                    let run = run_of.get(&r.page_id)?;
                    counted.insert(*run).then_some(r.run_added)
                })
                .sum();
            metrics::counter!("fanfare_pages_found_total").increment(found.max(0) as u64);
            self.found(found.max(0) as u64);
        }
        let changed: HashMap<i64, PageRecorded> =
            recorded.into_iter().map(|r| (r.page_id, r)).collect();
        // Committed: the links the statement says their runs have are
        // remembered, so that later reports need not send them.
        for write in &writes {
            let (
                Some(r),
                PageChange::Terminal {
                    found: Some(found), ..
                },
            ) = (changed.get(&write.page_id), &write.change)
            else {
                continue;
            };
            let urls = r
                .links_in_run
                .iter()
                .filter_map(|&i| found.links.get(i).map(|(url, _)| url.as_str()));
            self.known.add(write.run_id, urls);
        }
        // Runs this batch moved to `finishing`, each finished once, by the
        // first of its changes.
        let mut finishing: Vec<Uuid> = Vec::new();
        let mut waiting: Vec<(Uuid, Reply, bool)> = Vec::new();
        for (write, reply) in writes.iter().zip(replies) {
            match changed.get(&write.page_id) {
                None => {
                    let _ = reply.send(Ok(Recorded::Unchanged));
                }
                Some(r) if r.run_status == Some(RunStatus::Finishing) => {
                    let first = !finishing.contains(&write.run_id);
                    if first {
                        finishing.push(write.run_id);
                    }
                    waiting.push((write.run_id, reply, first));
                }
                Some(_) => {
                    let _ = reply.send(Ok(Recorded::Changed { finished: None }));
                }
            }
        }
        let mut finished: HashMap<Uuid, Box<Run>> = HashMap::new();
        for run_id in finishing {
            self.known.forget(run_id);
            // The pages are recorded whatever happens now: a failure to
            // finish leaves the run to the sweeper, not the reports to a retry.
            match rules::finish_finishing(&self.pool, &self.settings, run_id).await {
                Ok(Some(run)) => {
                    finished.insert(run_id, Box::new(run));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%run_id, error = %e, "recorded the run's last page but could not finish the run; the sweeper will");
                }
            }
        }
        for (run_id, reply, first) in waiting {
            let run = first.then(|| finished.remove(&run_id)).flatten();
            let _ = reply.send(Ok(Recorded::Changed { finished: run }));
        }
    }

    /// Counts pages added by following links; past each threshold (as a
    /// listing does: [`ledger::ANALYZE_FIRST_AT`], then four times the last)
    /// the planner's statistics of `pages` are refreshed in the background,
    /// so that claims are planned for the runs as they have grown.
    fn found(&self, added: u64) {
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        found.0 += added;
        if found.0 < found.1 {
            return;
        }
        found.1 = found.0.saturating_mul(4);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if let Err(e) = ledger::analyze_pages(&pool).await {
                tracing::warn!(error = %e, "could not refresh the statistics of the pages table");
            }
        });
    }

    async fn write_statement(
        &self,
        writes: &[PageWrite],
    ) -> Result<Vec<PageRecorded>, sqlx::Error> {
        let mut tries = 0;
        loop {
            match ledger::record_pages(&self.pool, writes).await {
                // A deadlock with a statement outside the lock order (none
                // is known): the server rolled the batch back; write it again.
                Err(sqlx::Error::Database(db))
                    if db.code().as_deref() == Some("40P01") && tries < 3 =>
                {
                    tries += 1;
                    tracing::warn!(error = %db, "a batch of page changes deadlocked; writing it again");
                }
                other => return other,
            }
        }
    }
}

/// Forms batches and hands each to a writer. The batches being written are
/// this task's: they stop when it is aborted.
async fn collect(writer: Arc<Writer>, mut rx: mpsc::Receiver<Entry>) {
    let writers = Arc::new(Semaphore::new(WRITERS));
    let mut writing = tokio::task::JoinSet::new();
    loop {
        while writing.try_join_next().is_some() {}
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        let permit = loop {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(entry) => batch.push(entry),
                    Err(_) => break,
                }
            }
            if batch.len() >= MAX_BATCH {
                break writers.clone().acquire_owned().await;
            }
            tokio::select! {
                biased;
                permit = writers.clone().acquire_owned() => break permit,
                entry = rx.recv() => match entry {
                    Some(entry) => batch.push(entry),
                    None => break writers.clone().acquire_owned().await,
                },
            }
        };
        let Ok(permit) = permit else { return };
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        batch.retain(|entry| !entry.reply.is_closed());
        if !batch.is_empty() {
            writing.spawn(writer.clone().write(batch, permit));
        }
    }
}
