//! Fan-out: claiming pending pages and handing each to a crawler.
//!
//! Pages are claimed in a short transaction that marks them dispatched with a
//! deadline; the invoke happens after it commits (the crawler's callback can
//! arrive before the invoke returns). An invoke that fails puts the attempt
//! back to pending with a backoff, or fails the page when its attempts are
//! spent; a page whose report never comes is the sweeper's.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use fanfare_crawler::contract::{CrawlRequest, CONTRACT_VERSION};
use fanfare_crawler::crawl::Crawler;
use futures::future::BoxFuture;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{InvokerKind, LambdaSettings, Schedule};
use crate::ledger::{self, ClaimedPage, PageStatus};
use crate::runs::Runs;
use crate::token::Claims;

/// How many pages one claim takes at most.
const CLAIM_BATCH: i64 = 500;
/// How many invokes run at once per replica.
const INVOKE_CONCURRENCY: usize = 64;

/// Why an invoke did not go through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvokeError {
    /// Worth another attempt (throttling, 5xx, network).
    #[error("{0}")]
    Retryable(String),
    /// Another attempt cannot help (no such function, access denied, event too large).
    #[error("{0}")]
    Permanent(String),
}

/// Hands one page to a crawler, asynchronously: `Ok` means the crawler has
/// it and will report to the callback URL.
pub trait Invoker: Send + Sync {
    /// Starts the crawl of `request`.
    fn invoke(&self, request: CrawlRequest) -> BoxFuture<'_, Result<(), InvokeError>>;
}

/// The parts of the Lambda API fanfare uses, behind a trait so that the
/// lister can be given any implementation.
pub trait LambdaApi: Send + Sync {
    /// Invokes `function` with InvocationType `Event`.
    fn invoke_event(
        &self,
        function: &str,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), InvokeError>>;
    /// Invokes `function` with InvocationType `RequestResponse` and returns
    /// its answer; a function error is an `Err` carrying its message.
    fn invoke_sync(
        &self,
        function: &str,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Vec<u8>, String>>;
}

/// The AWS Lambda API through aws-sdk-lambda.
#[derive(Clone, Debug)]
pub struct AwsLambda {
    client: aws_sdk_lambda::Client,
}

impl AwsLambda {
    /// A client from the default AWS chain (credentials, region) with the
    /// configured region and endpoint taking precedence.
    pub async fn from_settings(settings: &LambdaSettings) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint_url {
            loader = loader.endpoint_url(endpoint.as_str().trim_end_matches('/'));
        }
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(settings.invoke_timeout)
            .build();
        let shared = loader.timeout_config(timeouts).load().await;
        Self {
            client: aws_sdk_lambda::Client::new(&shared),
        }
    }

    /// A client built from an explicit SDK config (tests).
    pub fn from_client(client: aws_sdk_lambda::Client) -> Self {
        Self { client }
    }
}

fn classify_sdk_error<E, R>(err: &aws_sdk_lambda::error::SdkError<E, R>) -> InvokeError
where
    E: aws_sdk_lambda::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_lambda::error::SdkError;
    let message = match err {
        SdkError::ServiceError(e) => {
            let code = e.err().code().unwrap_or("Unknown");
            let msg = e.err().message().unwrap_or("");
            let text = format!("{code}: {msg}");
            return match code {
                "ResourceNotFoundException"
                | "AccessDeniedException"
                | "InvalidParameterValueException"
                | "RequestTooLargeException"
                | "InvalidRequestContentException"
                | "UnrecognizedClientException" => InvokeError::Permanent(text),
                _ => InvokeError::Retryable(text),
            };
        }
        other => crate::notify::error_chain(other),
    };
    InvokeError::Retryable(message)
}

impl LambdaApi for AwsLambda {
    fn invoke_event(
        &self,
        function: &str,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), InvokeError>> {
        let function = function.to_string();
        Box::pin(async move {
            let out = self
                .client
                .invoke()
                .function_name(&function)
                .invocation_type(InvocationType::Event)
                .payload(Blob::new(payload))
                .send()
                .await
                .map_err(|e| classify_sdk_error(&e))?;
            if out.status_code() != 202 {
                return Err(InvokeError::Retryable(format!(
                    "Invoke of {function} answered {} instead of 202",
                    out.status_code()
                )));
            }
            Ok(())
        })
    }

    fn invoke_sync(
        &self,
        function: &str,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        let function = function.to_string();
        Box::pin(async move {
            let out = self
                .client
                .invoke()
                .function_name(&function)
                .invocation_type(InvocationType::RequestResponse)
                .payload(Blob::new(payload))
                .send()
                .await
                .map_err(|e| classify_sdk_error(&e).to_string())?;
            let body = out
                .payload()
                .map(|b| b.as_ref().to_vec())
                .unwrap_or_default();
            if let Some(kind) = out.function_error() {
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| {
                        v.get("errorMessage")
                            .and_then(|m| m.as_str())
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(500).collect());
                return Err(format!("function error ({kind}): {message}"));
            }
            Ok(body)
        })
    }
}

/// Invokes a crawler Lambda function with InvocationType `Event`.
pub struct LambdaInvoker {
    api: Arc<dyn LambdaApi>,
    function: String,
}

impl LambdaInvoker {
    /// An invoker of `function` through `api`.
    pub fn new(api: Arc<dyn LambdaApi>, function: String) -> Self {
        Self { api, function }
    }
}

impl Invoker for LambdaInvoker {
    fn invoke(&self, request: CrawlRequest) -> BoxFuture<'_, Result<(), InvokeError>> {
        Box::pin(async move {
            let payload = serde_json::to_vec(&request)
                .map_err(|e| InvokeError::Permanent(format!("encoding the event: {e}")))?;
            if payload.len() > 256 * 1024 {
                return Err(InvokeError::Permanent(format!(
                    "the event is {} bytes, over Lambda's 256 KiB limit for asynchronous invokes",
                    payload.len()
                )));
            }
            self.api.invoke_event(&self.function, payload).await
        })
    }
}

/// Runs the crawler library in-process: the same code as the Lambda
/// function, its report still travelling over HTTP to `/v1/callbacks`.
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
    fn invoke(&self, request: CrawlRequest) -> BoxFuture<'_, Result<(), InvokeError>> {
        let crawler = self.crawler.clone();
        self.tracker.spawn(async move {
            let page = request.page_id.clone();
            if let Err(e) = crawler.handle(request).await {
                tracing::warn!(page_id = %page, error = %e, "local crawler could not deliver its report");
            }
        });
        Box::pin(async { Ok(()) })
    }
}

/// Claims and dispatches pages for every schedule with unfinished runs.
pub struct Dispatcher {
    runs: Arc<Runs>,
    lambda: Option<Arc<dyn LambdaApi>>,
    local: Arc<LocalInvoker>,
}

impl Dispatcher {
    /// A dispatcher; `runs.wake_dispatch` is notified when pages become
    /// dispatchable.
    pub fn new(
        runs: Arc<Runs>,
        lambda: Option<Arc<dyn LambdaApi>>,
        local: Arc<LocalInvoker>,
    ) -> Self {
        Self {
            runs,
            lambda,
            local,
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
                crate::notify::backoff(failures.min(5))
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
            if !busy.contains(&schedule.name) {
                metrics::gauge!("fanfare_pages_in_flight", "schedule" => schedule.name.clone())
                    .set(0.0);
                continue;
            }
            let claimed = ledger::claim_pages(
                &self.runs.pool,
                &schedule.name,
                schedule.max_in_flight as i64,
                CLAIM_BATCH,
                schedule.page_timeout,
            )
            .await?;
            metrics::gauge!("fanfare_pages_in_flight", "schedule" => schedule.name.clone())
                .set(claimed.in_flight as f64);
            total += claimed.pages.len();
            if !claimed.pages.is_empty() {
                self.dispatch(schedule, claimed.pages).await;
            }
        }
        Ok(total)
    }

    async fn dispatch(&self, schedule: &Schedule, pages: Vec<ClaimedPage>) {
        let Some(invoker) = self.invoker_for(schedule) else {
            for page in pages {
                self.invoke_failed(
                    schedule,
                    &page,
                    InvokeError::Permanent("no Lambda client is configured".into()),
                )
                .await;
            }
            return;
        };
        let invoker = &invoker;
        futures::stream::iter(pages)
            .for_each_concurrent(INVOKE_CONCURRENCY, |page| async move {
                let request = self.request_for(schedule, &page);
                let started = std::time::Instant::now();
                let result = invoker.invoke(request).await;
                metrics::histogram!("fanfare_invoke_seconds").record(started.elapsed().as_secs_f64());
                match result {
                    Ok(()) => {
                        metrics::counter!("fanfare_pages_dispatched_total", "schedule" => schedule.name.clone()).increment(1);
                        tracing::debug!(run_id = %page.run_id, page_id = page.id, attempt = page.attempt, "page dispatched");
                    }
                    Err(e) => self.invoke_failed(schedule, &page, e).await,
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

    async fn invoke_failed(&self, schedule: &Schedule, page: &ClaimedPage, error: InvokeError) {
        let permanent = matches!(error, InvokeError::Permanent(_));
        metrics::counter!("fanfare_invoke_errors_total", "schedule" => schedule.name.clone(), "retryable" => (!permanent).to_string()).increment(1);
        let detail =
            json!({ "kind": "invoke", "message": error.to_string(), "retryable": !permanent });
        let result = if permanent || page.attempt as u32 >= schedule.max_attempts {
            tracing::error!(run_id = %page.run_id, page_id = page.id, attempt = page.attempt, %error, "invoke failed; the page fails");
            self.runs
                .complete_page(
                    page.run_id,
                    page.id,
                    page.attempt,
                    PageStatus::Failed,
                    None,
                    Some(&detail),
                )
                .await
                .map(|_| ())
        } else {
            let wait = crate::notify::backoff(page.attempt);
            tracing::warn!(run_id = %page.run_id, page_id = page.id, attempt = page.attempt, %error, retry_in = ?wait, "invoke failed; will retry");
            ledger::requeue_page(&self.runs.pool, page.id, page.attempt, wait, &detail)
                .await
                .map(|_| ())
        };
        if let Err(e) = result {
            // The page stays dispatched; the sweeper retries it at its deadline.
            tracing::warn!(page_id = page.id, error = %e, "could not record the invoke failure");
        }
    }
}

struct LocalRef<'a>(&'a Arc<LocalInvoker>);

impl Invoker for LocalRef<'_> {
    fn invoke(&self, request: CrawlRequest) -> BoxFuture<'_, Result<(), InvokeError>> {
        self.0.invoke(request)
    }
}
