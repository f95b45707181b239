//! The local invoker: the crawler library in-process, for `fanfare dev` and
//! tests. It runs the same code as the Lambda function, and its report still
//! travels over HTTP to `/v1/callbacks`.

use fanfare_crawler::contract::CrawlRequest;
use fanfare_crawler::crawl::Crawler;
use futures::future::BoxFuture;
use tokio_util::task::TaskTracker;

use super::{InvokeError, Invoker};

/// Runs each crawl as a task tracked for graceful shutdown.
pub struct LocalInvoker {
    crawler: Crawler,
    tracker: TaskTracker,
}

impl LocalInvoker {
    /// An invoker whose crawls are tracked by `tracker` (drained at shutdown).
    pub fn new(crawler: Crawler, tracker: TaskTracker) -> Self {
        Self { crawler, tracker }
    }
}

impl Invoker for LocalInvoker {
    fn invoke(&self, request: CrawlRequest) -> BoxFuture<'_, Result<Option<String>, InvokeError>> {
        let crawler = self.crawler.clone();
        self.tracker.spawn(async move {
            let page = request.page_id.clone();
            if let Err(e) = crawler.handle(request).await {
                tracing::warn!(page_id = %page, error = %e, "local crawler could not deliver its report");
            }
        });
        Box::pin(async { Ok(None) })
    }
}
