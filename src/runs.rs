//! The run lifecycle shared by every worker: firing (pause, overlap and
//! catch-up policies), starting a run (listing its pages into the ledger,
//! under a lease another replica takes over if this one dies), recording
//! page results, closing runs early (cancel, failure, timeout), and
//! announcing finished runs. The operator's actions over it are in
//! [`crate::actions`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{Catchup, Overlap, RenderMode, Schedule, Settings};
use crate::discovery::Discoverer;
use crate::ledger::{self, Outcome, PageChange, PageStatus, PageWrite, Run, Trigger};
use crate::lifecycle::page::{self, Event, Next, RetryReason};
use crate::lifecycle::run as rules;
use crate::lifecycle::Closing;
use crate::recorder::{Recorded, Recorder};
use crate::schedule::CronSchedule;
use crate::sources::{self, Lister};
use crate::token::TokenSigner;

/// How many missed fires catch-up looks at, at most.
const CATCHUP_SCAN_LIMIT: usize = 100_000;

/// What every worker of one replica shares.
pub struct Runs {
    /// The ledger.
    pub pool: PgPool,
    /// The validated configuration.
    pub settings: Arc<Settings>,
    /// Signs and verifies task tokens.
    pub(crate) signer: TokenSigner,
    /// Reads page sources.
    pub(crate) lister: Lister,
    /// Background work (listing, local crawls), drained at shutdown.
    pub(crate) tracker: TaskTracker,
    /// Notified when pages may be dispatchable (a run listed pages, a page
    /// finished and freed an in-flight slot the dispatcher was waiting for).
    pub(crate) wake_dispatch: Notify,
    /// Set by the dispatcher when a schedule is at its `max_in_flight`: the
    /// next recorded page wakes it (and clears this), instead of every
    /// recorded page waking it for nothing.
    pub(crate) dispatch_capped: AtomicBool,
    /// Notified when a notification was queued.
    pub(crate) wake_notify: Notify,
    /// Records page changes in batches.
    pub(crate) recorder: Arc<Recorder>,
    /// Judges the links reports carry, for runs that follow them.
    discoverer: Discoverer,
    /// Each recent run's `max_attempts` (from its schedule), so a failure
    /// report does not read the run's row: bounded, cleared when full.
    max_attempts: std::sync::Mutex<HashMap<Uuid, u32>>,
    /// This value's own `Arc` (built with `Arc::new_cyclic`), for work that
    /// outlives a borrow.
    pub(crate) me: std::sync::Weak<Runs>,
}

/// How many runs' `max_attempts` [`Runs`] keeps at most.
const MAX_ATTEMPTS_CACHED: usize = 4096;

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

/// One attempt of one page: what a page event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageAttempt {
    /// The page's run.
    pub run_id: Uuid,
    /// The page.
    pub page_id: i64,
    /// The attempt (1 for the first dispatch).
    pub attempt: i32,
    /// What decides whether another attempt is left, when the caller read
    /// it with the page; [`Runs::page_event`] reads it when an event needs
    /// it and it is not given.
    pub counts: Option<AttemptCounts>,
}

/// What decides whether a page has another attempt left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptCounts {
    /// The page's dispatches its site answered 429/503: they do not count.
    pub site_throttles: i32,
    /// Its schedule's `max_attempts`.
    pub max_attempts: u32,
}

impl PageAttempt {
    /// Attempt `attempt` of page `page_id` of run `run_id`, its counts to
    /// be read when needed (a crawler's report names no more).
    pub fn new(run_id: Uuid, page_id: i64, attempt: i32) -> Self {
        Self {
            run_id,
            page_id,
            attempt,
            counts: None,
        }
    }

    /// This attempt with the counts the caller read with the page.
    pub fn with_counts(self, site_throttles: i32, max_attempts: u32) -> Self {
        Self {
            counts: Some(AttemptCounts {
                site_throttles,
                max_attempts,
            }),
            ..self
        }
    }
}

/// What handling a page event did.
#[derive(Debug, Clone)]
pub enum Handled {
    /// The page will be dispatched again.
    Requeued,
    /// The page became terminal; `finished` is set when that finished the run.
    Recorded {
        /// The run, when this page was its last.
        finished: Option<Box<Run>>,
    },
    /// The page had moved on (terminal, or already requeued): nothing changed.
    Stale,
    /// The run failed as a whole; `None` when it had finished already.
    RunFailed(Option<Box<Run>>),
}

impl Runs {
    /// The run lifecycle over `pool`; `tracker` holds its background work
    /// (listing, local crawls) so that shutdown can drain it.
    pub fn new(
        pool: PgPool,
        settings: Arc<Settings>,
        lister: Lister,
        tracker: TaskTracker,
    ) -> Arc<Self> {
        let recorder = Recorder::new(pool.clone(), settings.clone());
        let discoverer = Discoverer::new(pool.clone(), settings.clone());
        Arc::new_cyclic(|me| Runs {
            pool,
            signer: TokenSigner::new(settings.security.callback_secret.clone())
                .accepting(settings.security.previous_callback_secrets.iter().cloned()),
            lister,
            settings,
            tracker,
            wake_dispatch: Notify::new(),
            dispatch_capped: AtomicBool::new(false),
            wake_notify: Notify::new(),
            recorder,
            discoverer,
            max_attempts: std::sync::Mutex::new(HashMap::new()),
            me: me.clone(),
        })
    }

    /// A cron fire of `schedule` at its nominal time, under the schedule's
    /// pause and overlap policies.
    #[tracing::instrument(skip(self), fields(schedule = %schedule.name))]
    pub async fn fire(
        self: &Arc<Self>,
        schedule: &Schedule,
        scheduled_for: DateTime<Utc>,
        trigger: Trigger,
    ) -> Result<Option<Uuid>, StartError> {
        let name = schedule.name.as_str();
        if ledger::is_paused(&self.pool, name).await? {
            metrics::counter!("fanfare_fires_skipped_total", "schedule" => name.to_string(), "reason" => "paused").increment(1);
            tracing::info!(%scheduled_for, "the schedule is paused; this fire is skipped");
            return Ok(None);
        }
        let buffer = match schedule.overlap {
            Overlap::Allow => return self.start(name, scheduled_for, trigger).await,
            Overlap::CancelPrevious => {
                for run_id in ledger::open_runs_of(&self.pool, name).await? {
                    tracing::warn!(%run_id, %scheduled_for, "cancelling the unfinished run for a new fire (overlap = \"cancel_previous\")");
                    self.close_run(run_id, Closing::Cancelled).await?;
                }
                return self.start(name, scheduled_for, trigger).await;
            }
            Overlap::Skip => false,
            Overlap::BufferOne => true,
        };
        match ledger::start_run_unless_open(&self.pool, name, scheduled_for, trigger, buffer)
            .await?
        {
            ledger::ExclusiveStart::Started(run_id) => {
                self.begin(run_id, schedule.clone(), scheduled_for);
                Ok(Some(run_id))
            }
            ledger::ExclusiveStart::Exists => {
                tracing::info!(%scheduled_for, "run for this fire exists already; nothing to do");
                Ok(None)
            }
            ledger::ExclusiveStart::Open(_) if buffer => {
                tracing::info!(%scheduled_for, "the previous run is unfinished; this fire waits for it (overlap = \"buffer_one\")");
                Ok(None)
            }
            ledger::ExclusiveStart::Open(unfinished) => {
                metrics::counter!("fanfare_fires_skipped_total", "schedule" => name.to_string(), "reason" => "overlap").increment(1);
                tracing::warn!(%scheduled_for, unfinished, "the previous run is unfinished; this fire is skipped (overlap = \"skip\")");
                Ok(None)
            }
        }
    }

    /// Starts the runs of fires missed while no replica was running, per
    /// the schedule's catch-up policy; older ones are counted as missed.
    pub async fn catch_up(
        self: &Arc<Self>,
        schedule: &Schedule,
        cron: &CronSchedule,
        now: DateTime<Utc>,
    ) {
        let name = schedule.name.as_str();
        let last = match ledger::last_fire(&self.pool, name).await {
            Ok(Some(last)) => last,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(schedule = name, error = %e, "could not read the last fire; no catch-up");
                return;
            }
        };
        let window_start =
            now - chrono::Duration::from_std(schedule.catchup_window).unwrap_or_default();
        let mut missed = Vec::new();
        let mut t = last;
        while let Some(next) = cron.next_after(t) {
            if next > now || missed.len() >= CATCHUP_SCAN_LIMIT {
                break;
            }
            missed.push(next);
            t = next;
        }
        let (inside, outside): (Vec<_>, Vec<_>) =
            missed.into_iter().partition(|t| *t >= window_start);
        let run: Vec<DateTime<Utc>> = match schedule.catchup {
            Catchup::Skip => Vec::new(),
            Catchup::Once => inside.last().copied().into_iter().collect(),
            Catchup::All => inside.clone(),
        };
        let skipped = outside.len() + inside.len() - run.len();
        if skipped > 0 {
            metrics::counter!("fanfare_fires_missed_total", "schedule" => name.to_string())
                .increment(skipped as u64);
            tracing::warn!(schedule = name, skipped, since = %last, "fires were missed while no replica was running; skipped per catchup policy");
        }
        for fire in run {
            tracing::info!(schedule = name, scheduled_for = %fire, "catching up a missed fire");
            if let Err(e) = self.fire(schedule, fire, Trigger::Catchup).await {
                tracing::error!(schedule = name, scheduled_for = %fire, error = %e, "could not catch up this fire");
            }
        }
    }

    /// Creates the run of `schedule` for `scheduled_for` and starts listing
    /// its pages in the background. `Ok(None)` when that run already exists
    /// (another replica created it).
    #[tracing::instrument(skip(self), fields(run_id))]
    pub async fn start(
        self: &Arc<Self>,
        schedule: &str,
        scheduled_for: DateTime<Utc>,
        trigger: Trigger,
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
        self.begin(run_id, sched, scheduled_for);
        Ok(Some(run_id))
    }

    /// Lists a run just created: its first lease is this replica's.
    fn begin(self: &Arc<Self>, run_id: Uuid, sched: Schedule, scheduled_for: DateTime<Utc>) {
        tracing::Span::current().record("run_id", tracing::field::display(run_id));
        metrics::counter!("fanfare_runs_started_total", "schedule" => sched.name.clone())
            .increment(1);
        tracing::info!(%run_id, schedule = %sched.name, %scheduled_for, source = %sources::describe(&sched.pages), "run started");
        let this = self.clone();
        self.tracker
            .spawn(async move { this.list(ledger::Lease::first(run_id), sched).await });
    }

    /// Takes over the listing of runs whose lister died; returns how many.
    pub async fn recover_listings(self: &Arc<Self>) -> Result<usize, sqlx::Error> {
        let abandoned = ledger::claim_abandoned_listings(&self.pool).await?;
        for (lease, schedule) in &abandoned {
            let run_id = lease.run_id;
            match self.settings.schedule(schedule) {
                Some(s) => {
                    tracing::warn!(%run_id, schedule, "taking over the listing of a run whose lister stopped renewing its lease");
                    let (this, s, lease) = (self.clone(), s.clone(), *lease);
                    self.tracker.spawn(async move { this.list(lease, s).await });
                }
                None => {
                    let reason = format!("schedule {schedule:?} is no longer configured");
                    self.close_run(run_id, Closing::Failed(&reason)).await?;
                }
            }
        }
        Ok(abandoned.len())
    }

    /// Reads the run's page source into the ledger in batches under
    /// `lease` (renewed by a heartbeat of its own whatever the listing
    /// waits on), then marks the run listed (finishing it at once if it
    /// has no pages). A source that cannot be read fails the run; a lister
    /// that loses its lease stops.
    ///
    /// Boxed: listing can finish a run, whose buffered fire starts another
    /// listing.
    fn list(self: Arc<Self>, lease: ledger::Lease, schedule: Schedule) -> BoxFuture<'static, ()> {
        let span = tracing::info_span!("list", run_id = %lease.run_id, schedule = %schedule.name);
        Box::pin(tracing::Instrument::instrument(
            self.list_inner(lease, schedule),
            span,
        ))
    }

    async fn list_inner(self: Arc<Self>, lease: ledger::Lease, schedule: Schedule) {
        let run_id = lease.run_id;
        let lost = CancellationToken::new();
        let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat(
            self.pool.clone(),
            lease,
            lost.clone(),
        )));
        let (tx, mut rx) = mpsc::channel::<Vec<String>>(4);
        let lister = self.lister.clone();
        let source = schedule.pages.clone();
        let limits = sources::ListLimits::of(&schedule);
        let Some(mut polite) = self.politeness(run_id, &schedule).await else {
            return;
        };
        let mut reader = AbortOnDrop(tokio::spawn(async move {
            lister.list(&source, limits, tx).await
        }));
        let Some((inserted, failure)) =
            self.store_listed(&lease, &mut rx, &mut polite, &lost).await
        else {
            return;
        };
        drop(rx);
        let listed = match (&mut reader.0).await {
            Ok(result) => result,
            Err(e) => Err(sources::SourceError::Fetch {
                url: sources::describe(&schedule.pages),
                message: format!("the listing task failed: {e}"),
            }),
        };
        let failure = failure.or_else(|| listed.as_ref().err().map(|e| e.to_string()));
        if let Some(error) = failure {
            tracing::error!(%run_id, %error, "could not list the run's pages; the run fails");
            if let Err(e) = self.close_run(run_id, Closing::Failed(&error)).await {
                // The lease expires and another attempt lists the run again.
                tracing::error!(%run_id, error = %e, "could not record the failed listing");
            }
            return;
        }
        let stats = listed.unwrap_or_default();
        let robots = polite.stats();
        // Pages inserted by an earlier lister of this run count as duplicates here.
        let duplicates = (stats.urls as u64)
            .saturating_sub(inserted)
            .saturating_sub(robots.disallowed_by_robots);
        tracing::info!(%run_id, pages = inserted, duplicates, invalid = stats.invalid, disallowed_by_robots = robots.disallowed_by_robots, "page list read");
        let listing = listing_summary(&stats, inserted, duplicates, robots);
        match rules::finish_listing(&self.pool, &self.settings, &lease, &listing).await {
            Ok(Some(run)) => self.announce(&run).await,
            Ok(None) => {}
            // Left in `listing`: the lease expires and the run is listed again.
            Err(e) => tracing::error!(%run_id, error = %e, "could not record the end of listing"),
        }
        self.wake_dispatch.notify_one();
    }

    /// Filters each batch the page source sends through the run's
    /// politeness and stores it, until the source is read out: how many
    /// pages were inserted, and why the listing fails when it does. `None`
    /// when this lister must stop (its lease is lost or taken over, or the
    /// ledger is unreachable).
    async fn store_listed(
        &self,
        lease: &ledger::Lease,
        rx: &mut mpsc::Receiver<Vec<String>>,
        polite: &mut crate::robots::Politeness,
        lost: &CancellationToken,
    ) -> Option<(u64, Option<String>)> {
        let run_id = lease.run_id;
        let mut inserted = 0u64;
        let mut analyze_at = ledger::ANALYZE_FIRST_AT;
        loop {
            let batch = tokio::select! {
                batch = rx.recv() => batch,
                _ = lost.cancelled() => return None,
            };
            let Some(batch) = batch else {
                return Some((inserted, None));
            };
            // robots.txt is read once per host per run, as its first URL comes.
            let filtered = tokio::select! {
                filtered = polite.filter(batch) => filtered,
                _ = lost.cancelled() => return None,
            };
            let (batch, hosts) = match filtered {
                Ok(filtered) => filtered,
                Err(e) => return Some((inserted, Some(e.to_string()))),
            };
            match self.store_batch(lease, &batch, &hosts).await {
                Ok(Some(n)) => {
                    inserted += n;
                    if inserted >= analyze_at {
                        // The claim's plan follows the run as it grows.
                        analyze_at = inserted.saturating_mul(4);
                        if let Err(e) = ledger::analyze_pages(&self.pool).await {
                            tracing::warn!(%run_id, error = %e, "could not refresh the statistics of the pages table");
                        }
                    }
                    self.wake_dispatch.notify_one();
                }
                Ok(None) => {
                    tracing::warn!(%run_id, "the run's page list was closed, or its listing taken over; this lister stops");
                    return None;
                }
                Err(e) if ledger::is_unavailable(&e) => {
                    // Left listing: its lease runs out and the run is listed again.
                    tracing::error!(%run_id, error = %e, "could not store the page list; the listing will be taken over");
                    return None;
                }
                Err(e) => return Some((inserted, Some(format!("storing the page list: {e}")))),
            }
        }
    }

    /// The politeness of a listing of `schedule` for run `run_id`, with
    /// what an earlier lister of the run read of its hosts' robots.txt;
    /// `None` when that cannot be read (the listing is left to be taken
    /// over).
    async fn politeness(
        &self,
        run_id: Uuid,
        schedule: &Schedule,
    ) -> Option<crate::robots::Politeness> {
        let mut polite = crate::robots::Politeness::new(
            schedule,
            self.lister.http().clone(),
            self.lister.policy().clone(),
        );
        match ledger::run_robots(&self.pool, run_id).await {
            Ok(known) if !known.is_empty() => {
                tracing::info!(%run_id, hosts = known.len(), "robots.txt of hosts read by an earlier lister of this run are not fetched again");
                polite.known(known).await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(%run_id, error = %e, "could not read what the run's robots.txt files said; the listing will be taken over");
                return None;
            }
        }
        Some(polite)
    }

    /// Stores a batch of the page list under `lease`, trying again a few
    /// times while the ledger is unavailable.
    async fn store_batch(
        &self,
        lease: &ledger::Lease,
        batch: &[String],
        hosts: &[ledger::HostPolicy],
    ) -> Result<Option<u64>, sqlx::Error> {
        let mut tries = 0;
        loop {
            match ledger::insert_pages(&self.pool, lease, batch, hosts).await {
                Err(e) if ledger::is_unavailable(&e) && tries < 4 => {
                    tries += 1;
                    tracing::warn!(run_id = %lease.run_id, error = %e, "could not store a batch of the page list; retrying");
                    tokio::time::sleep(page::backoff(tries)).await;
                }
                other => return other,
            }
        }
    }

    /// Something happened to page attempt `at` (see [`Event`]): the one
    /// door of every page event (a crawler's report, a passed deadline, an
    /// invoke error). Its next state is decided by [`page::next`] over the
    /// attempts that count (the attempt less the dispatches its site
    /// throttled) and written through the recorder; a run the page
    /// finished is announced. The attempt's counts are read only when the
    /// event depends on them and `at` does not carry them. `result` is the
    /// report's facts, when it succeeded. Every retry counts in
    /// `fanfare_pages_retried_total{reason}`.
    pub async fn page_event(
        &self,
        at: PageAttempt,
        event: Event,
        result: Option<serde_json::Value>,
    ) -> Result<Handled, sqlx::Error> {
        self.page_report(at, event, result, Vec::new()).await
    }

    /// [`Runs::page_event`] for a crawler's report, with the links it
    /// carried: when the report makes the page succeed and its run follows
    /// links, those the run may take join it in the statement that records
    /// the report ([`Discoverer::judge`]); otherwise they are dropped.
    pub async fn page_report(
        &self,
        at: PageAttempt,
        event: Event,
        result: Option<serde_json::Value>,
        links: Vec<String>,
    ) -> Result<Handled, sqlx::Error> {
        let PageAttempt {
            run_id,
            page_id,
            attempt,
            counts,
        } = at;
        let counts = match counts {
            Some(counts) => counts,
            None => self.attempt_counts(run_id, page_id, &event).await?,
        };
        let event = self
            .settle_event(event, run_id, page_id, attempt, counts)
            .await?;
        let counted = attempt - counts.site_throttles;
        let (change, retried) = match page::next(counted, counts.max_attempts, event) {
            Next::Requeue(retry) => (retry.change(), Some(retry)),
            Next::Terminal(status, error) => {
                let found = if status == PageStatus::Succeeded && !links.is_empty() {
                    self.discoverer.judge(run_id, links).await?
                } else {
                    None
                };
                let change = PageChange::Terminal {
                    status,
                    result: result.filter(|_| status == PageStatus::Succeeded),
                    error,
                    found,
                };
                (change, None)
            }
            Next::FailRun(reason) => {
                tracing::error!(%run_id, page_id, %reason, "the run fails");
                let closed = self.close_run(run_id, Closing::Failed(&reason)).await?;
                return Ok(Handled::RunFailed(closed.map(Box::new)));
            }
        };
        let write = PageWrite {
            run_id,
            page_id,
            attempt,
            change,
        };
        Ok(match (self.recorder.record(write).await?, retried) {
            (Recorded::Unchanged, _) => Handled::Stale,
            (Recorded::Changed { .. }, Some(retry)) => {
                note_retry(run_id, page_id, attempt, &retry);
                Handled::Requeued
            }
            (Recorded::Changed { finished }, None) => {
                if self.dispatch_capped.swap(false, Ordering::AcqRel) {
                    self.wake_dispatch.notify_one();
                }
                if let Some(run) = &finished {
                    self.announce(run).await;
                }
                Handled::Recorded { finished }
            }
        })
    }

    /// The counts of page `page_id` of run `run_id` that `event`'s next
    /// state depends on, read from the ledger when it depends on them.
    async fn attempt_counts(
        &self,
        run_id: Uuid,
        page_id: i64,
        event: &Event,
    ) -> Result<AttemptCounts, sqlx::Error> {
        if !event.depends_on_attempts() {
            // Decided without them: any counts do.
            return Ok(AttemptCounts {
                site_throttles: 0,
                max_attempts: 1,
            });
        }
        Ok(AttemptCounts {
            site_throttles: ledger::site_throttles(&self.pool, run_id, page_id).await?,
            max_attempts: self.max_attempts_of(run_id).await?,
        })
    }

    /// `event` with what the report could not know filled in: whether an
    /// unrendered-looking page goes on to the browser (its schedule's
    /// `render`; counted for its host when it does) and how often the
    /// page's site throttled it before.
    async fn settle_event(
        &self,
        event: Event,
        run_id: Uuid,
        page_id: i64,
        attempt: i32,
        counts: AttemptCounts,
    ) -> Result<Event, sqlx::Error> {
        Ok(match event {
            Event::LooksUnrendered { .. } => {
                let schedule = ledger::run_schedule(&self.pool, run_id).await?;
                let schedule = schedule.and_then(|s| self.settings.schedule(&s));
                let auto = schedule.filter(|s| s.render.mode == RenderMode::Auto);
                if let Some(schedule) = auto {
                    // Counted before the page is requeued, so that no claim
                    // of the host's next page can come before it.
                    self.note_escalation(schedule, run_id, page_id, attempt)
                        .await;
                }
                Event::LooksUnrendered {
                    auto: auto.is_some(),
                }
            }
            Event::SiteThrottled {
                error, retry_after, ..
            } => Event::SiteThrottled {
                error,
                retry_after,
                throttles: counts.site_throttles.max(0) as u32,
            },
            other => other,
        })
    }

    /// Counts page `page_id` (on attempt `attempt`, still dispatched) of
    /// run `run_id` as sent on to the browser for its host; once
    /// `render_after` pages of the host have been, the host goes straight
    /// to the browser. A failure only loses the shortcut: the host's pages
    /// are still sent on one by one.
    async fn note_escalation(&self, schedule: &Schedule, run_id: Uuid, page_id: i64, attempt: i32) {
        let after = i32::try_from(schedule.render.render_after).unwrap_or(i32::MAX);
        let noted =
            ledger::note_escalation(&self.pool, &schedule.name, run_id, page_id, attempt, after)
                .await;
        match noted {
            Ok(true) => {
                tracing::debug!(%run_id, page_id, "the page's host goes straight to the browser")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(%run_id, page_id, error = %e, "could not note that the page's host needed the browser")
            }
        }
    }

    /// The `max_attempts` of a run's schedule (1 when the schedule is gone).
    async fn max_attempts_of(&self, run_id: Uuid) -> Result<u32, sqlx::Error> {
        let cached = |m: &std::sync::Mutex<HashMap<Uuid, u32>>| {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&run_id)
                .copied()
        };
        if let Some(n) = cached(&self.max_attempts) {
            return Ok(n);
        }
        let n = ledger::run_schedule(&self.pool, run_id)
            .await?
            .and_then(|s| self.settings.schedule(&s).map(|s| s.max_attempts))
            .unwrap_or(1);
        let mut map = self.max_attempts.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ATTEMPTS_CACHED {
            map.clear();
        }
        map.insert(run_id, n);
        Ok(n)
    }

    /// Finishes the runs left `finishing` for longer than `grace` by a
    /// daemon that stopped between recording a run's last page and
    /// finishing the run; returns how many it finished.
    pub async fn finish_stranded(&self, grace: std::time::Duration) -> Result<usize, sqlx::Error> {
        let mut finished = 0;
        for run_id in ledger::finishing_runs(&self.pool, grace).await? {
            if let Some(run) = rules::finish_finishing(&self.pool, &self.settings, run_id).await? {
                tracing::warn!(%run_id, schedule = %run.schedule, "finished a run whose last page was recorded by a daemon that stopped before finishing it");
                self.announce(&run).await;
                finished += 1;
            }
        }
        Ok(finished)
    }

    /// Closes a run early (see [`rules::close`]) and announces it;
    /// `None` when it had already finished.
    pub async fn close_run(
        &self,
        run_id: Uuid,
        closing: Closing<'_>,
    ) -> Result<Option<Run>, sqlx::Error> {
        let closed = rules::close(&self.pool, &self.settings, run_id, closing).await?;
        if let Some(run) = &closed {
            self.announce(run).await;
        }
        Ok(closed)
    }

    /// Logs and counts a finished run, wakes the notifier, and starts the
    /// schedule's buffered fire if it has one.
    pub async fn announce(&self, run: &Run) {
        let outcome = run.outcome.map(Outcome::as_str).unwrap_or_default();
        metrics::counter!("fanfare_runs_finished_total", "schedule" => run.schedule.clone(), "outcome" => outcome)
            .increment(1);
        tracing::info!(
            run_id = %run.id,
            schedule = %run.schedule,
            %outcome,
            total = run.total_pages,
            succeeded = run.succeeded_pages,
            failed = run.failed_pages,
            timed_out = run.timed_out_pages,
            cancelled = run.cancelled_pages,
            "run finished"
        );
        self.wake_notify.notify_one();
        if self
            .settings
            .schedule(&run.schedule)
            .is_some_and(|s| s.overlap == Overlap::BufferOne)
        {
            self.start_buffered(&run.schedule).await;
        }
    }

    async fn start_buffered(&self, schedule: &str) {
        let Some(this) = self.me.upgrade() else {
            return;
        };
        let Some(sched) = self.settings.schedule(schedule).cloned() else {
            return;
        };
        match ledger::start_buffered_run(&self.pool, schedule).await {
            Ok(Some((run_id, fire))) => {
                tracing::info!(schedule, scheduled_for = %fire, "starting the buffered fire");
                this.begin(run_id, sched, fire);
            }
            Ok(None) => {}
            Err(e) => tracing::error!(schedule, error = %e, "could not start the buffered fire"),
        }
    }
}

/// Renews `lease` every third of [`ledger::LISTING_LEASE`] until the
/// listing ends (the task is aborted) or the lease is lost: the run is no
/// longer listing, or another lister took it over; `lost` then tells the
/// listing to stop. A renewal the database refuses is tried again at the
/// next beat: should the lease lapse meanwhile, the lister's next write
/// finds it gone.
async fn heartbeat(pool: sqlx::PgPool, lease: ledger::Lease, lost: CancellationToken) {
    let mut beat = tokio::time::interval(ledger::LISTING_LEASE / 3);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    loop {
        beat.tick().await;
        match ledger::renew_listing_lease(&pool, &lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(run_id = %lease.run_id, "the run is no longer listing, or another lister took it over; this lister stops");
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(run_id = %lease.run_id, error = %e, "could not renew the listing lease; trying again");
            }
        }
    }
}

/// A task aborted when this is dropped (a listing that stops, however it
/// stops, leaves nothing of itself running).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What reading a run's page source found, as stored in `runs.listing`:
/// the source's counts and examples, the pages inserted, the duplicates
/// and what robots.txt held back.
fn listing_summary(
    stats: &sources::ListStats,
    inserted: u64,
    duplicates: u64,
    robots: &crate::robots::RobotsStats,
) -> serde_json::Value {
    let mut listing = serde_json::json!({
        "urls_read": stats.urls,
        "pages": inserted,
        "duplicates": duplicates,
        "invalid": stats.invalid,
        "invalid_examples": stats.invalid_examples,
        "oversized_sitemaps": stats.oversized_sitemaps,
        "sitemap_files": stats.sitemap_files,
        "repeated_sitemaps": stats.repeated_sitemaps,
        "foreign_sitemaps": stats.foreign_sitemaps,
        "foreign_sitemap_examples": stats.foreign_sitemap_examples,
    });
    if let (Some(listing), Ok(serde_json::Value::Object(robots))) =
        (listing.as_object_mut(), serde_json::to_value(robots))
    {
        listing.extend(robots);
    }
    listing
}

/// Counts and logs a recorded retry of page `page_id`'s `attempt`.
fn note_retry(run_id: Uuid, page_id: i64, attempt: i32, retry: &page::Retry) {
    let reason = retry.reason;
    metrics::counter!("fanfare_pages_retried_total", "reason" => reason.as_str()).increment(1);
    if reason == RetryReason::SiteThrottled {
        metrics::counter!("fanfare_host_throttled_total").increment(1);
    }
    if reason == RetryReason::Render {
        metrics::counter!("fanfare_pages_escalated_total").increment(1);
    }
    tracing::info!(%run_id, page_id, attempt, reason = reason.as_str(), uses_attempt = retry.uses_attempt, retry_in = ?retry.after, error = %retry.error.message, "the page will be dispatched again");
}
