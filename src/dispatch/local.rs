//! The local invoker: the crawler library in-process, for `fanfare dev` and
//! tests. It runs the same code as the Lambda function, and its report still
//! travels over HTTP to `/v1/callbacks`.
//!
//! In-process crawls share the daemon's memory and CPUs, so at most
//! `[local] concurrency` of them run at once (HTML is parsed on blocking
//! threads by the crawler itself).

use std::sync::Arc;

use fanfare_crawler::contract::CrawlRequest;
use fanfare_crawler::crawl::Crawler;
use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{InvokeError, Invoker};

/// Runs each crawl as a task tracked for graceful shutdown, at most
/// `concurrency` at once.
pub struct LocalInvoker {
    crawler: Crawler,
    tracker: TaskTracker,
    permits: Arc<Semaphore>,
    cancel: CancellationToken,
}

impl LocalInvoker {
    /// An invoker whose crawls are tracked by `tracker` (drained at
    /// shutdown), at most `concurrency` (at least 1) running at once; crawls
    /// still waiting for their turn when `cancel` fires are dropped.
    pub fn new(
        crawler: Crawler,
        tracker: TaskTracker,
        concurrency: usize,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            crawler,
            tracker,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            cancel,
        }
    }

    /// Crawls that may start now (for tests and figures).
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

impl Invoker for LocalInvoker {
    fn invoke(&self, request: CrawlRequest) -> BoxFuture<'_, Result<Option<String>, InvokeError>> {
        // The spawned task waits for a permit, not the dispatcher: the
        // dispatcher goes through every schedule in turn, so waiting here
        // would stall Lambda schedules behind local crawls. A waiting task
        // holds only its request (a few hundred bytes, and no more of them
        // than the schedule's max_in_flight claims); the page's body is
        // fetched only once the permit is held. A page whose deadline passes
        // while it waits is left to the sweeper (it re-dispatches it as a
        // new attempt) instead of being crawled for a report that would be
        // stale.
        let crawler = self.crawler.clone();
        let permits = self.permits.clone();
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            let page = request.page_id.clone();
            let permit = tokio::select! {
                permit = permits.acquire_owned() => permit,
                _ = cancel.cancelled() => {
                    tracing::debug!(page_id = %page, "shutting down; a queued local crawl is left to the sweeper");
                    return;
                }
            };
            let Ok(_permit) = permit else { return };
            if request.deadline <= chrono::Utc::now() {
                tracing::debug!(page_id = %page, "the page's deadline passed while its crawl was queued; left to the sweeper");
                return;
            }
            if let Err(e) = crawler.handle(request).await {
                tracing::warn!(page_id = %page, error = %e, "local crawler could not deliver its report");
            }
        });
        Box::pin(async { Ok(None) })
    }
}
