//! The AWS Lambda API through aws-sdk-lambda, and the invoker that sends
//! each page as an asynchronous (`Event`) invocation.
//!
//! The SDK's own retries are switched off: a retried 5xx may have enqueued
//! the event already, and throttling needs the dispatcher's pacing, so
//! fanfare's policy decides every retry and each attempt is recorded.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_lambda::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::operation::invoke::InvokeError as SdkInvokeError;
use aws_sdk_lambda::operation::RequestId;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use fanfare_crawler::contract::CrawlRequest;
use futures::future::BoxFuture;

use super::{InvokeError, Invoker, LambdaApi};
use crate::config::LambdaSettings;

/// Lambda's limit for an asynchronous invocation's payload.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// The AWS Lambda API through aws-sdk-lambda.
#[derive(Clone, Debug)]
pub struct AwsLambda {
    client: aws_sdk_lambda::Client,
}

impl AwsLambda {
    /// A client from the default AWS chain (credentials, region), with the
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
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(settings.invoke_timeout)
            .build();
        let shared = loader.timeout_config(timeouts).load().await;
        Self::from_client(aws_sdk_lambda::Client::new(&shared))
    }

    /// Wraps an existing client (tests build one with mocked responses);
    /// its SDK retries are switched off like those of every fanfare client.
    pub fn from_client(client: aws_sdk_lambda::Client) -> Self {
        let config = client
            .config()
            .to_builder()
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        Self {
            client: aws_sdk_lambda::Client::from_conf(config),
        }
    }
}

/// Sorts an Invoke failure into what fanfare does about it.
pub fn classify(err: &SdkError<SdkInvokeError>) -> InvokeError {
    let request_id = err
        .request_id()
        .map(|id| format!(" (request id {id})"))
        .unwrap_or_default();
    let SdkError::ServiceError(service) = err else {
        // Timeouts, connection failures, unreadable responses.
        return InvokeError::Retryable(format!(
            "{}{request_id}",
            crate::telemetry::error_chain(err)
        ));
    };
    let e = service.err();
    let status = service.raw().status().as_u16();
    let code = e.code().unwrap_or("Unknown");
    let text = match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}{request_id}"),
        // Modeled errors name themselves in their Display.
        _ => format!("{e}{request_id}"),
    };
    match e {
        SdkInvokeError::TooManyRequestsException(t) => {
            let retry_after = t
                .retry_after_seconds()
                .or_else(|| service.raw().headers().get("retry-after"))
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(900.0)));
            return InvokeError::Throttled {
                message: text,
                retry_after,
            };
        }
        SdkInvokeError::RequestTooLargeException(_)
        | SdkInvokeError::InvalidRequestContentException(_)
        | SdkInvokeError::UnsupportedMediaTypeException(_) => {
            return InvokeError::PageRejected(text)
        }
        SdkInvokeError::ResourceNotFoundException(_)
        | SdkInvokeError::InvalidParameterValueException(_)
        | SdkInvokeError::InvalidRuntimeException(_)
        | SdkInvokeError::InvalidZipFileException(_)
        | SdkInvokeError::KmsAccessDeniedException(_)
        | SdkInvokeError::KmsDisabledException(_)
        | SdkInvokeError::KmsNotFoundException(_) => return InvokeError::FunctionUnusable(text),
        _ => {}
    }
    match (code, status) {
        (
            "AccessDeniedException" | "UnrecognizedClientException" | "InvalidSignatureException",
            _,
        )
        | (_, 401 | 403 | 404) => InvokeError::FunctionUnusable(text),
        (_, 413) => InvokeError::PageRejected(text),
        (_, 429) => InvokeError::Throttled {
            message: text,
            retry_after: None,
        },
        _ => InvokeError::Retryable(text),
    }
}

impl AwsLambda {
    /// One Invoke call (one attempt: SDK retries are off).
    async fn invoke(
        &self,
        function: &str,
        kind: InvocationType,
        payload: Vec<u8>,
    ) -> Result<aws_sdk_lambda::operation::invoke::InvokeOutput, InvokeError> {
        self.client
            .invoke()
            .function_name(function)
            .invocation_type(kind)
            .payload(Blob::new(payload))
            .send()
            .await
            .map_err(|e| classify(&e))
    }

    /// An `Event` invoke of `function`: Lambda's request id, when it gave one.
    async fn event(
        &self,
        function: String,
        payload: Vec<u8>,
    ) -> Result<Option<String>, InvokeError> {
        let out = self
            .invoke(&function, InvocationType::Event, payload)
            .await?;
        let request_id = out.request_id().map(str::to_string);
        // Lambda answers 202 to an Event invoke; local emulators answer 200.
        if !(200..300).contains(&out.status_code()) {
            return Err(InvokeError::Retryable(format!(
                "Invoke of {function} answered {} instead of 202 (request id {})",
                out.status_code(),
                request_id.as_deref().unwrap_or("unknown")
            )));
        }
        Ok(request_id)
    }

    /// A `RequestResponse` invoke of `function`: the function's answer, or
    /// what went wrong (its own error message for a function error).
    async fn request_response(
        &self,
        function: String,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        let out = self
            .invoke(&function, InvocationType::RequestResponse, payload)
            .await
            .map_err(|e| e.to_string())?;
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
    }
}

impl LambdaApi for AwsLambda {
    fn invoke_event(
        &self,
        function: &str,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Option<String>, InvokeError>> {
        Box::pin(self.event(function.to_string(), payload))
    }

    fn invoke_sync(
        &self,
        function: &str,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        Box::pin(self.request_response(function.to_string(), payload))
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
    fn invoke(&self, request: CrawlRequest) -> BoxFuture<'_, Result<Option<String>, InvokeError>> {
        Box::pin(async move {
            let payload = serde_json::to_vec(&request)
                .map_err(|e| InvokeError::PageRejected(format!("encoding the event: {e}")))?;
            if payload.len() > MAX_EVENT_BYTES {
                return Err(InvokeError::PageRejected(format!(
                    "the event is {} bytes, over Lambda's {MAX_EVENT_BYTES}-byte limit for asynchronous invocations",
                    payload.len()
                )));
            }
            self.api.invoke_event(&self.function, payload).await
        })
    }
}
