//! `POST /v1/callbacks`: the fan-in. A crawler reports one page attempt,
//! with the attempt's task token as bearer credentials.
//!
//! Answers: 200 `recorded` when the report made the page terminal (or, for a
//! retryable failure with attempts left, scheduled its next attempt), 200
//! `duplicate` for every later report of that page (Lambda delivers at least
//! once); 401 for a missing, forged, expired or mismatched token; 400 for
//! unreadable JSON; 422 for a contract violation; 413 over 256 KiB; 503 while
//! the ledger is unreachable (the crawler retries). No error changes the
//! ledger.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use chrono::Utc;
use fanfare_crawler::contract::{
    CallbackAck, CallbackStatus, Outcome, Report, CONTRACT_VERSION, MAX_REPORT_BYTES,
};

use crate::http::{bearer, ApiError, AppState};
use crate::ledger::{Completion, PageStatus};
use crate::runs::RetryOutcome;
use crate::token::Claims;

/// Handles one report.
#[tracing::instrument(skip_all, fields(run_id, page_id, attempt))]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CallbackAck>, ApiError> {
    let started = Instant::now();
    let result = handle(&state, &headers, body).await;
    let answer = match &result {
        Ok(ack) => match ack.status {
            CallbackStatus::Recorded => "recorded",
            CallbackStatus::Duplicate => "duplicate",
        },
        Err(e) => match e {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::PayloadTooLarge(_) => "too_large",
            ApiError::Unavailable(_) => "unavailable",
            _ => "error",
        },
    };
    metrics::counter!("fanfare_callbacks_total", "answer" => answer).increment(1);
    metrics::histogram!("fanfare_callback_seconds").record(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        tracing::info!(answer, reason = %e, "callback refused");
    }
    result.map(Json)
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<CallbackAck, ApiError> {
    let token = bearer(headers)
        .ok_or_else(|| ApiError::Unauthorized("missing bearer task token".into()))?;
    let claims = state
        .runs
        .signer
        .verify(token, Utc::now())
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let span = tracing::Span::current();
    span.record("run_id", tracing::field::display(claims.run_id));
    span.record("page_id", claims.page_id);
    span.record("attempt", claims.attempt);

    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!(
                "the report is larger than {MAX_REPORT_BYTES} bytes"
            ))
        } else {
            ApiError::BadRequest(format!("could not read the body: {e}"))
        }
    })?;
    let report = parse(&body)?;
    check_matches(&report, &claims)?;
    let (status, result, error) = outcome(report)?;

    let retryable = error
        .as_ref()
        .and_then(|e| e.get("retryable"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    if status == PageStatus::Failed && retryable {
        let error = error.unwrap_or_default();
        let retried = state
            .runs
            .retry_reported_failure(claims.run_id, claims.page_id, claims.attempt, &error)
            .await?;
        return Ok(CallbackAck {
            status: match retried {
                RetryOutcome::Retrying | RetryOutcome::Failed => CallbackStatus::Recorded,
                RetryOutcome::Stale => CallbackStatus::Duplicate,
            },
        });
    }

    let completion = state
        .runs
        .complete_page(
            claims.run_id,
            claims.page_id,
            claims.attempt,
            status,
            result.as_ref(),
            error.as_ref(),
        )
        .await?;
    Ok(CallbackAck {
        status: match completion {
            Completion::Recorded { .. } => CallbackStatus::Recorded,
            Completion::Duplicate => CallbackStatus::Duplicate,
        },
    })
}

fn parse(body: &[u8]) -> Result<Report, ApiError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::Unprocessable(format!("the report breaks the contract: {e}"))
        }
        _ => ApiError::BadRequest(format!("the body is not valid JSON: {e}")),
    })
}

/// The token is bound to one run, page and attempt; a report about another
/// is refused as unauthorized.
fn check_matches(report: &Report, claims: &Claims) -> Result<(), ApiError> {
    let same = report.run_id.parse::<uuid::Uuid>().ok() == Some(claims.run_id)
        && report.page_id.parse::<i64>().ok() == Some(claims.page_id)
        && i64::from(report.attempt) == i64::from(claims.attempt);
    if !same {
        return Err(ApiError::Unauthorized(
            "the task token is for another run, page or attempt than the report".into(),
        ));
    }
    if report.version != CONTRACT_VERSION {
        return Err(ApiError::Unprocessable(format!(
            "contract version {} is not supported (this daemon speaks version {CONTRACT_VERSION})",
            report.version
        )));
    }
    Ok(())
}

type Recorded = (
    PageStatus,
    Option<serde_json::Value>,
    Option<serde_json::Value>,
);

fn outcome(report: Report) -> Result<Recorded, ApiError> {
    match report.outcome {
        Outcome::Succeeded(facts) => {
            if !(100..=599).contains(&facts.http_status) {
                return Err(ApiError::Unprocessable(format!(
                    "http_status {} is not an HTTP status code",
                    facts.http_status
                )));
            }
            if facts.content_sha256.len() != 64
                || !facts.content_sha256.chars().all(|c| c.is_ascii_hexdigit())
            {
                return Err(ApiError::Unprocessable(
                    "content_sha256 must be 64 hexadecimal characters".into(),
                ));
            }
            let result = serde_json::to_value(&facts).map_err(|e| ApiError::Internal(e.into()))?;
            Ok((PageStatus::Succeeded, Some(result), None))
        }
        Outcome::Failed { error } => {
            let error = serde_json::to_value(&error).map_err(|e| ApiError::Internal(e.into()))?;
            Ok((PageStatus::Failed, None, Some(error)))
        }
    }
}
