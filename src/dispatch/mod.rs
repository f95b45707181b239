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
//! A page whose report never comes is the sweeper's.

mod lambda;
mod local;
mod pace;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fanfare_crawler::contract::{CrawlRequest, CONTRACT_VERSION};
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use crate::lambda::{InvokeError, LambdaApi};
pub use lambda::{classify, AwsLambda, LambdaInvoker, MAX_EVENT_BYTES};
pub use local::LocalInvoker;
pub use pace::Pace;

use crate::config::{InvokerKind, Schedule};
use crate::ledger::{self, ClaimedPage};
use crate::lifecycle::{self, Event};
use crate::runs::{PageAttempt, Runs};
use crate::token::Claims;

/// How many pages one claim takes at most.
const CLAIM_BATCH: i64 = 500;
/// How many invokes run at once per replica.
const INVOKE_CONCURRENCY: usize = 64;
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
    lambda: Option<Arc<dyn LambdaApi>>,
    local: Arc<LocalInvoker>,
    paces: HashMap<String, Pace>,
    /// When each schedule's in-flight gauge was last set.
    gauged: Mutex<HashMap<String, Instant>>,
}

impl Dispatcher {
    /// A dispatcher; `runs.wake_dispatch` is notified when pages become
    /// dispatchable.
    pub fn new(
        runs: Arc<Runs>,
        lambda: Option<Arc<dyn LambdaApi>>,
        local: Arc<LocalInvoker>,
    ) -> Self {
        let paces = runs
            .settings
            .schedules
            .iter()
            .map(|s| (s.name.clone(), Pace::new(s.max_invokes_per_second)))
            .collect();
        Self {
            runs,
            lambda,
            local,
            paces,
            gauged: Mutex::new(HashMap::new()),
        }
    }

    fn invoker_for(&self, schedule: &Schedule) -> Option<Box<dyn Invoker + '_>> {
        match schedule.invoker {
            InvokerKind::Local => Some(Box::new(LocalRef(&self.local))),
            InvokerKind::Lambda => self.lambda.as_ref().map(|api| {
                Box::new(LambdaInvoker::new(
                    api.clone(),
                    schedule.function.clone().unwrap_or_default(),
                )) as Box<dyn Invoker>
            }),
        }
    }

    /// Dispatches until `cancel` fires.
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
            if dispatched > 0 && !cancel.is_cancelled() {
                continue;
            }
            let idle = if failures > 0 {
                lifecycle::backoff(failures.min(5))
            } else {
                Duration::from_millis(500)
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.runs.wake_dispatch.notified() => {}
                _ = tokio::time::sleep(idle) => {}
            }
        }
    }

    async fn pass(&self, cancel: &CancellationToken) -> Result<usize, sqlx::Error> {
        let busy = ledger::busy_schedules(&self.runs.pool).await?;
        for name in &busy {
            if self.runs.settings.schedule(name).is_none() {
                tracing::warn!(schedule = %name, "unfinished run of a schedule that is no longer configured");
            }
        }
        let mut total = 0;
        for schedule in &self.runs.settings.schedules {
            if cancel.is_cancelled() {
                break;
            }
            if self.paces[&schedule.name].is_paused() {
                continue;
            }
            if !busy.contains(&schedule.name) {
                metrics::gauge!("fanfare_pages_in_flight", "schedule" => schedule.name.clone())
                    .set(0.0);
                self.gauged(&schedule.name);
                continue;
            }
            if !ledger::has_ready_pages(&self.runs.pool, &schedule.name).await? {
                // Nothing to claim; the in-flight gauge is refreshed now and then.
                if self.gauge_due(&schedule.name) {
                    let in_flight =
                        ledger::schedule_in_flight(&self.runs.pool, &schedule.name).await?;
                    metrics::gauge!("fanfare_pages_in_flight", "schedule" => schedule.name.clone())
                        .set(in_flight as f64);
                    self.gauged(&schedule.name);
                }
                continue;
            }
            let claimed = ledger::claim_pages(
                &self.runs.pool,
                &schedule.name,
                schedule.max_in_flight as i64,
                self.paces[&schedule.name].claim_hint(CLAIM_BATCH),
                schedule.page_timeout,
            )
            .await?;
            metrics::gauge!("fanfare_pages_in_flight", "schedule" => schedule.name.clone())
                .set(claimed.in_flight as f64);
            self.gauged(&schedule.name);
            if claimed.in_flight >= schedule.max_in_flight as i64 {
                // Full: the next recorded page frees a slot and wakes us.
                self.runs.dispatch_capped.store(true, Ordering::Release);
            }
            total += claimed.pages.len();
            if !claimed.pages.is_empty() {
                self.dispatch(schedule, claimed.pages).await;
            }
        }
        Ok(total)
    }

    /// Whether the schedule's in-flight gauge was last set more than
    /// [`GAUGE_EVERY`] ago.
    fn gauge_due(&self, schedule: &str) -> bool {
        let gauged = self.gauged.lock().unwrap_or_else(|e| e.into_inner());
        gauged
            .get(schedule)
            .is_none_or(|at| at.elapsed() >= GAUGE_EVERY)
    }

    /// The schedule's in-flight gauge was just set.
    fn gauged(&self, schedule: &str) {
        let mut gauged = self.gauged.lock().unwrap_or_else(|e| e.into_inner());
        gauged.insert(schedule.to_owned(), Instant::now());
    }

    async fn dispatch(&self, schedule: &Schedule, pages: Vec<ClaimedPage>) {
        let pace = &self.paces[&schedule.name];
        let Some(invoker) = self.invoker_for(schedule) else {
            let error = InvokeError::FunctionUnusable("no Lambda client is configured".into());
            for page in pages {
                self.invoke_failed(schedule, &page, error.clone()).await;
            }
            return;
        };
        let invoker = &invoker;
        // Runs failed during this batch: their other pages are not sent.
        let failed_runs = &Mutex::new(HashSet::<Uuid>::new());
        futures::stream::iter(pages)
            .for_each_concurrent(INVOKE_CONCURRENCY, |page| async move {
                if failed_runs.lock().expect("lock").contains(&page.run_id) {
                    return;
                }
                pace.until_ready().await;
                let request = self.request_for(schedule, &page);
                let started = std::time::Instant::now();
                let result = invoker.invoke(request).await;
                metrics::histogram!("fanfare_invoke_seconds").record(started.elapsed().as_secs_f64());
                let outcome = match &result {
                    Ok(_) => "accepted",
                    Err(e) => e.outcome(),
                };
                metrics::counter!("fanfare_invokes_total", "schedule" => schedule.name.clone(), "outcome" => outcome).increment(1);
                match result {
                    Ok(request_id) => {
                        pace.on_success();
                        metrics::counter!("fanfare_pages_dispatched_total", "schedule" => schedule.name.clone()).increment(1);
                        tracing::debug!(run_id = %page.run_id, page_id = page.id, attempt = page.attempt, request_id = request_id.as_deref().unwrap_or("-"), "page dispatched");
                    }
                    Err(e) => {
                        if matches!(e, InvokeError::FunctionUnusable(_)) {
                            failed_runs.lock().expect("lock").insert(page.run_id);
                        }
                        self.invoke_failed(schedule, &page, e).await;
                    }
                }
            })
            .await;
    }

    /// The Lambda event for one claimed page.
    pub fn request_for(&self, schedule: &Schedule, page: &ClaimedPage) -> CrawlRequest {
        let expires = page.deadline
            + chrono::Duration::from_std(self.runs.settings.security.callback_grace)
                .unwrap_or_else(|_| chrono::Duration::minutes(15));
        CrawlRequest {
            version: CONTRACT_VERSION,
            run_id: page.run_id.to_string(),
            page_id: page.id.to_string(),
            attempt: page.attempt as u32,
            url: page.url.clone(),
            extract: schedule.extract.clone(),
            callback_url: self.runs.settings.server.callback_url(),
            callback_token: self.runs.signer.sign(&Claims {
                run_id: page.run_id,
                page_id: page.id,
                attempt: page.attempt,
                expires,
            }),
            deadline: page.deadline,
        }
    }

    /// Records a failed invoke through the lifecycle ([`Event`]s of the
    /// invoke kind); a throttle also slows the schedule's pace.
    async fn invoke_failed(&self, schedule: &Schedule, page: &ClaimedPage, error: InvokeError) {
        let (run_id, page_id, attempt) = (page.run_id, page.id, page.attempt);
        let event = match error {
            InvokeError::Throttled {
                message,
                retry_after,
            } => {
                let rate = self.paces[&schedule.name].on_throttle(retry_after);
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
        let at = PageAttempt {
            run_id,
            page_id,
            attempt,
        };
        if let Err(e) = self
            .runs
            .page_event(at, schedule.max_attempts, event, None)
            .await
        {
            // The page stays dispatched; the sweeper retries it at its deadline.
            tracing::warn!(page_id, error = %e, "could not record the invoke failure");
        }
    }
}

struct LocalRef<'a>(&'a Arc<LocalInvoker>);

impl Invoker for LocalRef<'_> {
    fn invoke(&self, request: CrawlRequest) -> BoxFuture<'_, Result<Option<String>, InvokeError>> {
        self.0.invoke(request)
    }
}
