//! Fan-out: claiming pending pages and handing each to a crawler.
//!
//! Pages are claimed in a short transaction that marks them dispatched with a
//! deadline; the invoke happens after it commits (the crawler's callback can
//! arrive before the invoke returns). What happens when an invoke fails
//! depends on why:
//!
//! - throttled (429): the schedule's pace is lowered, and the page goes back
//!   to pending after Lambda's `retryAfterSeconds` without using up an
//!   attempt: throttling alone never fails a page;
//! - a transient error (5xx, network): the page goes back to pending after a
//!   backoff with jitter, using up the attempt, or fails with its last one;
//! - the page can never be sent (its event is over 256 KiB): the page fails;
//! - the function cannot be invoked at all (not found, access denied): the
//!   run fails at once with that reason, instead of retrying every page.
//!
//! Claiming and invoking overlap. Each schedule has a [`Lane`]: a claimed
//! batch is handed to it and invoked in the background (each invoke a task
//! of its own, at most [`INVOKE_CONCURRENCY`] at once per replica, each after
//! the schedule's pace lets it go), while the claim loop goes on to the next
//! schedule and the next batch. A lane takes a new batch only while fewer
//! pages than one batch wait in it, so at most about two batches of a
//! schedule are claimed and not yet invoked: the deadlines of claimed pages
//! start at most that much before their invoke, a paced schedule claims no
//! more than two seconds of its pace at a time, and `max_in_flight` holds as
//! before (claimed pages are counted as dispatched by every claim, on every
//! replica).
//!
//! A page whose report never comes is the sweeper's.

mod lambda;
mod local;
mod pace;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fanfare_crawler::contract::{CrawlRequest, LinksWanted, CONTRACT_VERSION};
use futures::future::BoxFuture;
use metrics::{Counter, Gauge, Histogram};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use crate::lambda::{InvokeError, LambdaApi};
pub use lambda::{classify, AwsLambda, LambdaInvoker, MAX_EVENT_BYTES};
pub use local::LocalInvoker;
pub use pace::Pace;

use crate::config::{InvokerKind, RenderMode, Schedule};
use crate::ledger::{self, ClaimedPage};
use crate::lifecycle::{self, Event};
use crate::runs::{PageAttempt, Runs};
use crate::token::Claims;

/// How many pages one claim takes at most. Every claim counts the
/// schedule's in-flight pages, so larger batches spread that count over
/// more pages.
const CLAIM_BATCH: i64 = 2_000;
/// How many invokes run at once per replica, across schedules.
const INVOKE_CONCURRENCY: usize = 128;
/// How often an idle dispatcher recounts a busy schedule's in-flight pages
/// for `fanfare_pages_in_flight` (a pass that claims counts them anyway).
const GAUGE_EVERY: Duration = Duration::from_secs(5);

/// Hands one page to a crawler, asynchronously: `Ok` means the crawler has
/// it and will report to the callback URL; it carries the invocation's
/// request id when there is one.
pub trait Invoker: Send + Sync {
    /// Starts the crawl of `request`.
    fn invoke(&self, request: CrawlRequest) -> BoxFuture<'_, Result<Option<String>, InvokeError>>;
}

/// Claims and dispatches pages for every schedule with unfinished runs.
pub struct Dispatcher {
    runs: Arc<Runs>,
    /// One per configured schedule, in configuration order.
    lanes: Vec<Arc<Lane>>,
    /// Invokes running at once on this replica.
    permits: Arc<Semaphore>,
    /// The lanes' background work, awaited when dispatch stops.
    tracker: TaskTracker,
    /// Notified when a lane that was full has room again.
    room: Arc<Notify>,
}

impl Dispatcher {
    /// A dispatcher; `runs.wake_dispatch` is notified when pages become
    /// dispatchable.
    pub fn new(
        runs: Arc<Runs>,
        lambda: Option<Arc<dyn LambdaApi>>,
        local: Arc<LocalInvoker>,
    ) -> Self {
        let room = Arc::new(Notify::new());
        let callback_url = runs.settings.server.callback_url();
        let token_grace = chrono::Duration::from_std(runs.settings.security.callback_grace)
            .unwrap_or_else(|_| chrono::Duration::minutes(15));
        let lanes = runs
            .settings
            .schedules
            .iter()
            .map(|schedule| {
                let invoker: Option<Arc<dyn Invoker>> = match schedule.invoker {
                    InvokerKind::Local => Some(local.clone() as Arc<dyn Invoker>),
                    InvokerKind::Lambda => lambda.as_ref().map(|api| {
                        Arc::new(LambdaInvoker::new(
                            api.clone(),
                            schedule.function.clone().unwrap_or_default(),
                        )) as Arc<dyn Invoker>
                    }),
                };
                let browser_invoker = match (&schedule.invoker, &schedule.render.browser_function) {
                    (InvokerKind::Lambda, Some(function)) => lambda.as_ref().map(|api| {
                        Arc::new(LambdaInvoker::new(api.clone(), function.clone()))
                            as Arc<dyn Invoker>
                    }),
                    _ => invoker.clone(),
                };
                Arc::new(Lane {
                    runs: runs.clone(),
                    schedule: schedule.clone(),
                    pace: Pace::new(schedule.max_invokes_per_second),
                    invoker,
                    browser_invoker,
                    queued: AtomicUsize::new(0),
                    room_below: AtomicUsize::new(usize::MAX),
                    room: room.clone(),
                    failed_runs: Mutex::new(HashSet::new()),
                    callback_url: callback_url.clone(),
                    token_grace,
                    metrics: LaneMetrics::new(&schedule.name),
                    gauged_at: Mutex::new(None),
                    waiting_at: Mutex::new(None),
                })
            })
            .collect();
        Self {
            runs,
            lanes,
            permits: Arc::new(Semaphore::new(INVOKE_CONCURRENCY)),
            tracker: TaskTracker::new(),
            room,
        }
    }

    /// Dispatches until `cancel` fires, then lets the pages already claimed
    /// be invoked.
    pub async fn run(self, cancel: CancellationToken) {
        let mut failures = 0;
        loop {
            let dispatched = match self.pass(&cancel).await {
                Ok(n) => {
                    failures = 0;
                    n
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "dispatch pass failed; backing off");
                    0
                }
            };
            if cancel.is_cancelled() {
                break;
            }
            if dispatched > 0 {
                continue;
            }
            let idle = if failures > 0 {
                lifecycle::backoff(failures.min(5))
            } else {
                Duration::from_millis(500)
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.runs.wake_dispatch.notified() => {}
                _ = self.room.notified() => {}
                _ = tokio::time::sleep(idle) => {}
            }
        }
        // Claimed pages are dispatched in the ledger: invoke them now rather
        // than leave them to the sweeper at their deadline.
        self.tracker.close();
        self.tracker.wait().await;
    }

    async fn pass(&self, cancel: &CancellationToken) -> Result<usize, sqlx::Error> {
        let busy = ledger::busy_schedules(&self.runs.pool).await?;
        for name in &busy {
            if self.runs.settings.schedule(name).is_none() {
                tracing::warn!(schedule = %name, "unfinished run of a schedule that is no longer configured");
            }
        }
        let mut total = 0;
        for lane in &self.lanes {
            if cancel.is_cancelled() {
                break;
            }
            let schedule = &lane.schedule;
            if lane.pace.is_paused() {
                continue;
            }
            if !busy.contains(&schedule.name) {
                lane.metrics.in_flight.set(0.0);
                lane.gauged();
                continue;
            }
            let batch = lane.pace.claim_hint(CLAIM_BATCH);
            let queued = lane.queued.load(Ordering::Acquire);
            if queued >= batch as usize {
                // A batch is still waiting for its invokes: the lane says
                // when it has room. Checked again after saying where room
                // starts, so that a page finishing in between is not missed.
                lane.room_below.store(batch as usize, Ordering::Release);
                if lane.queued.load(Ordering::Acquire) >= batch as usize {
                    continue;
                }
            }
            if queued == 0 {
                // No page of a run failed earlier can still be waiting.
                lane.failed_runs().clear();
            }
            if !ledger::has_ready_pages(&self.runs.pool, &schedule.name).await? {
                // Nothing to claim; the in-flight gauge is refreshed now and then.
                if lane.gauge_due() {
                    let in_flight =
                        ledger::schedule_in_flight(&self.runs.pool, &schedule.name).await?;
                    lane.metrics.in_flight.set(in_flight as f64);
                    lane.gauged();
                }
                continue;
            }
            let claimed = ledger::claim_pages_with(
                &self.runs.pool,
                &schedule.name,
                schedule.max_in_flight as i64,
                batch,
                schedule.page_timeout,
                match schedule.render.mode {
                    RenderMode::Never => ledger::ClaimRender::Marked,
                    RenderMode::Always => ledger::ClaimRender::All,
                    RenderMode::Auto => ledger::ClaimRender::Learned {
                        render_after: i32::try_from(schedule.render.render_after)
                            .unwrap_or(i32::MAX),
                    },
                },
                // A page fetched conditionally reports no links when the
                // site answers 304: a run that follows links fetches in full.
                schedule.conditional && schedule.links.is_none(),
            )
            .await?;
            lane.metrics.in_flight.set(claimed.in_flight as f64);
            if claimed.held_back {
                // Every ready page left waits on a host's limit; counted now
                // and then, not on every claim.
                if lane.waiting_due() {
                    let waiting = ledger::ready_pages(&self.runs.pool, &schedule.name).await?;
                    lane.metrics.waiting_on_host.set(waiting as f64);
                }
            } else {
                lane.metrics.waiting_on_host.set(0.0);
            }
            lane.gauged();
            if claimed.in_flight >= schedule.max_in_flight as i64 {
                // Full: the next recorded page frees a slot and wakes us.
                self.runs.dispatch_capped.store(true, Ordering::Release);
            }
            total += claimed.pages.len();
            if !claimed.pages.is_empty() {
                self.hand_over(lane, claimed.pages);
            }
        }
        Ok(total)
    }

    /// Invokes `pages` in the background, each at its dispatch time (a
    /// paced host's pages are spread out), after the lane's pace lets it go
    /// and a permit of the replica's concurrency is free.
    fn hand_over(&self, lane: &Arc<Lane>, pages: Vec<ClaimedPage>) {
        lane.queued.fetch_add(pages.len(), Ordering::AcqRel);
        let (now, mut later): (Vec<_>, Vec<_>) = pages
            .into_iter()
            .partition(|p| p.dispatch_at <= chrono::Utc::now());
        // Pages whose host is paced wait for their time apart, then join
        // the lane's queue one by one.
        later.sort_by_key(|p| p.dispatch_at);
        let hand = || HandOver {
            lane: lane.clone(),
            permits: self.permits.clone(),
            tracker: self.tracker.clone(),
        };
        if !later.is_empty() {
            let this = hand();
            self.tracker.spawn(async move {
                for page in later {
                    let wait = (page.dispatch_at - chrono::Utc::now())
                        .to_std()
                        .unwrap_or_default();
                    tokio::time::sleep(wait).await;
                    this.one(page).await;
                }
            });
        }
        let this = hand();
        self.tracker.spawn(async move {
            for page in now {
                this.one(page).await;
            }
        });
    }
}

/// What invoking a claimed page needs.
struct HandOver {
    lane: Arc<Lane>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
}

impl HandOver {
    /// Invokes `page` once the lane's pace and a permit let it go.
    async fn one(&self, page: ClaimedPage) {
        let lane = &self.lane;
        if lane.run_failed(page.run_id) {
            lane.done_one();
            return;
        }
        lane.pace.until_ready().await;
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            // Never closed; were it, the page is left to the sweeper.
            lane.done_one();
            return;
        };
        let lane = lane.clone();
        self.tracker.spawn(async move {
            lane.invoke(page).await;
            drop(permit);
            lane.done_one();
        });
    }
}

/// What one schedule's dispatch keeps between claims.
struct Lane {
    runs: Arc<Runs>,
    schedule: Schedule,
    pace: Pace,
    /// `None`: a Lambda schedule without a Lambda client.
    invoker: Option<Arc<dyn Invoker>>,
    /// Where the pages that go to the browser are invoked: the schedule's
    /// `browser_function` on Lambda, else the same as the others.
    browser_invoker: Option<Arc<dyn Invoker>>,
    /// Pages claimed and not yet through their invoke.
    queued: AtomicUsize,
    /// The lane has room for another claim once `queued` is below this.
    room_below: AtomicUsize,
    /// Notified when `queued` drops below `room_below`.
    room: Arc<Notify>,
    /// Runs that failed because their function cannot be invoked: their
    /// pages still waiting here are not sent.
    failed_runs: Mutex<HashSet<Uuid>>,
    callback_url: String,
    /// How long after an attempt's deadline its task token is accepted.
    token_grace: chrono::Duration,
    metrics: LaneMetrics,
    /// When the in-flight gauge was last set.
    gauged_at: Mutex<Option<Instant>>,
    /// When the waiting-on-host gauge was last counted.
    waiting_at: Mutex<Option<Instant>>,
}

/// A schedule's metric handles, made once: looking a labelled metric up
/// for every invoke would cost more than the invoke's bookkeeping.
struct LaneMetrics {
    accepted: Counter,
    throttled: Counter,
    retryable_error: Counter,
    page_rejected: Counter,
    function_unusable: Counter,
    dispatched: Counter,
    invoke_seconds: Histogram,
    in_flight: Gauge,
    waiting_on_host: Gauge,
}

impl LaneMetrics {
    fn new(schedule: &str) -> Self {
        let invokes = |outcome: &'static str| metrics::counter!("fanfare_invokes_total", "schedule" => schedule.to_owned(), "outcome" => outcome);
        Self {
            accepted: invokes("accepted"),
            // The outcomes of `InvokeError::outcome`.
            throttled: invokes("throttled"),
            retryable_error: invokes("retryable_error"),
            page_rejected: invokes("page_rejected"),
            function_unusable: invokes("function_unusable"),
            dispatched: metrics::counter!("fanfare_pages_dispatched_total", "schedule" => schedule.to_owned()),
            invoke_seconds: metrics::histogram!("fanfare_invoke_seconds"),
            in_flight: metrics::gauge!("fanfare_pages_in_flight", "schedule" => schedule.to_owned()),
            waiting_on_host: metrics::gauge!("fanfare_pages_waiting_on_host", "schedule" => schedule.to_owned()),
        }
    }

    /// The counter of `error`'s outcome (its `InvokeError::outcome`).
    fn failed(&self, error: &InvokeError) -> &Counter {
        match error {
            InvokeError::Throttled { .. } => &self.throttled,
            InvokeError::Retryable(_) => &self.retryable_error,
            InvokeError::PageRejected(_) => &self.page_rejected,
            InvokeError::FunctionUnusable(_) => &self.function_unusable,
        }
    }
}

impl Lane {
    fn failed_runs(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.failed_runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run_failed(&self, run_id: Uuid) -> bool {
        let failed = self.failed_runs();
        !failed.is_empty() && failed.contains(&run_id)
    }

    /// One page of the lane is through; says so when that makes room.
    fn done_one(&self) {
        let before = self.queued.fetch_sub(1, Ordering::AcqRel);
        if before == self.room_below.load(Ordering::Acquire) {
            self.room.notify_one();
        }
    }

    /// Whether the in-flight gauge was last set more than [`GAUGE_EVERY`]
    /// ago.
    fn gauge_due(&self) -> bool {
        let at = self.gauged_at.lock().unwrap_or_else(|e| e.into_inner());
        at.is_none_or(|at| at.elapsed() >= GAUGE_EVERY)
    }

    /// Whether the waiting-on-host gauge is due a count (every
    /// [`GAUGE_EVERY`]); marks it counted when it is.
    fn waiting_due(&self) -> bool {
        let mut at = self.waiting_at.lock().unwrap_or_else(|e| e.into_inner());
        let due = at.is_none_or(|at| at.elapsed() >= GAUGE_EVERY);
        if due {
            *at = Some(Instant::now());
        }
        due
    }

    /// The in-flight gauge was just set.
    fn gauged(&self) {
        *self.gauged_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Invokes one claimed page and records what became of it.
    async fn invoke(&self, page: ClaimedPage) {
        if self.run_failed(page.run_id) {
            return;
        }
        let invoker = if self.renders(&page) {
            &self.browser_invoker
        } else {
            &self.invoker
        };
        let Some(invoker) = invoker else {
            let error = InvokeError::FunctionUnusable("no Lambda client is configured".into());
            self.invoke_failed(&page, error).await;
            return;
        };
        let request = self.request_for(&page);
        let started = Instant::now();
        let result = invoker.invoke(request).await;
        self.metrics
            .invoke_seconds
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(request_id) => {
                self.metrics.accepted.increment(1);
                self.pace.on_success();
                self.metrics.dispatched.increment(1);
                tracing::debug!(run_id = %page.run_id, page_id = page.id, attempt = page.attempt, request_id = request_id.as_deref().unwrap_or("-"), "page dispatched");
            }
            Err(e) => {
                self.metrics.failed(&e).increment(1);
                if matches!(e, InvokeError::FunctionUnusable(_)) {
                    self.failed_runs().insert(page.run_id);
                }
                self.invoke_failed(&page, e).await;
            }
        }
    }

    /// Whether `page` goes to the browser: every page with `render =
    /// "always"`, with `"auto"` those the claim marked (sent on after a
    /// plain fetch, or of a host the schedule learned needs it).
    fn renders(&self, page: &ClaimedPage) -> bool {
        match self.schedule.render.mode {
            RenderMode::Never => false,
            RenderMode::Always => true,
            RenderMode::Auto => page.render,
        }
    }

    /// The Lambda event for one claimed page.
    fn request_for(&self, page: &ClaimedPage) -> CrawlRequest {
        CrawlRequest {
            version: CONTRACT_VERSION,
            run_id: page.run_id.to_string(),
            page_id: page.id.to_string(),
            attempt: page.attempt as u32,
            url: page.url.clone(),
            extract: self.schedule.extract.clone(),
            callback_url: self.callback_url.clone(),
            user_agent: self.schedule.user_agent.clone(),
            proxy: self
                .schedule
                .proxy
                .as_ref()
                .map(|proxy| proxy.route(page.id, page.attempt)),
            render: self.renders(page).then(|| self.schedule.render.request()),
            callback_token: self.runs.signer.sign(&Claims {
                run_id: page.run_id,
                page_id: page.id,
                attempt: page.attempt,
                expires: page.deadline + self.token_grace,
            }),
            deadline: page.deadline,
            links: self.schedule.links.as_ref().map(|links| LinksWanted {
                max: crate::config::MAX_LINKS_PER_PAGE,
                skip_nofollow: links.obey_nofollow,
            }),
            // Claimed with the previous run's validators only when the
            // schedule is conditional and the page is fetched as served.
            if_none_match: page.if_none_match.clone(),
            if_modified_since: page.if_modified_since.clone(),
        }
    }

    /// Records a failed invoke through the lifecycle ([`Event`]s of the
    /// invoke kind); a throttle also slows the schedule's pace.
    async fn invoke_failed(&self, page: &ClaimedPage, error: InvokeError) {
        let schedule = &self.schedule;
        let (run_id, page_id, attempt) = (page.run_id, page.id, page.attempt);
        let event = match error {
            InvokeError::Throttled {
                message,
                retry_after,
            } => {
                let rate = self.pace.on_throttle(retry_after);
                tracing::warn!(%run_id, page_id, attempt, error = %message, invokes_per_second = rate, "Lambda throttled the invoke; slowing down and retrying without using up an attempt");
                Event::InvokeThrottled {
                    message,
                    retry_after,
                }
            }
            InvokeError::Retryable(message) => {
                tracing::warn!(%run_id, page_id, attempt, error = %message, "invoke failed");
                Event::InvokeFailedRetryable(message)
            }
            InvokeError::PageRejected(message) => {
                tracing::error!(%run_id, page_id, attempt, error = %message, "the page can never be sent; it fails");
                Event::InvokeRejected(message)
            }
            InvokeError::FunctionUnusable(reason) => {
                let function = schedule.function.as_deref().unwrap_or("(none)");
                Event::FunctionUnusable(format!(
                    "the crawler function {function} cannot be invoked: {reason}"
                ))
            }
        };
        let at = PageAttempt::new(run_id, page_id, attempt)
            .with_counts(page.site_throttles, schedule.max_attempts);
        if let Err(e) = self.runs.page_event(at, event, None).await {
            // The page stays dispatched; the sweeper retries it at its deadline.
            tracing::warn!(page_id, error = %e, "could not record the invoke failure");
        }
    }
}
