//! What fanfare needs of the Lambda API, as a trait (the dispatcher invokes
//! crawlers through it, the lister reads `lambda:` page sources through
//! it), and how an invoke can fail. Implemented by
//! [`AwsLambda`](crate::dispatch::AwsLambda) and by the tests' stand-ins.

use std::time::Duration;

use futures::future::BoxFuture;

/// Why an invoke did not go through, sorted by what fanfare does about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvokeError {
    /// Throttled (429): retried after `retry_after` at a lower pace, without
    /// using up an attempt.
    #[error("{message}")]
    Throttled {
        /// What Lambda said.
        message: String,
        /// Lambda's `retryAfterSeconds`, when it gave one.
        retry_after: Option<Duration>,
    },
    /// Worth another attempt (5xx, network, timeout).
    #[error("{0}")]
    Retryable(String),
    /// This page can never be sent (its event is too large): the page fails.
    #[error("{0}")]
    PageRejected(String),
    /// The function cannot be invoked at all (not found, access denied, an
    /// invalid name): the run fails.
    #[error("{0}")]
    FunctionUnusable(String),
}

impl InvokeError {
    /// The `outcome` label of `fanfare_invokes_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            InvokeError::Throttled { .. } => "throttled",
            InvokeError::Retryable(_) => "retryable_error",
            InvokeError::PageRejected(_) => "page_rejected",
            InvokeError::FunctionUnusable(_) => "function_unusable",
        }
    }
}

/// The parts of the Lambda API fanfare uses, behind a trait so that tests
/// and the lister can be given any implementation.
pub trait LambdaApi: Send + Sync {
    /// Invokes `function` with InvocationType `Event`; `Ok` carries the
    /// request id of the accepted (202) invocation.
    fn invoke_event(
        &self,
        function: &str,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Option<String>, InvokeError>>;
    /// Invokes `function` with InvocationType `RequestResponse` and returns
    /// its answer; a function error is an `Err` carrying its message. By
    /// default an API answers only `Event` invokes: every synchronous invoke
    /// (a lister Lambda's) fails, naming the function.
    fn invoke_sync(
        &self,
        function: &str,
        _payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        let message = format!("{function}: this Lambda API answers only Event invokes");
        Box::pin(async move { Err(message) })
    }
}
