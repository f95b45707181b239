//! `POST /v1/callbacks`: the fan-in. A crawler reports one page attempt,
//! with the attempt's task token as bearer credentials.
//!
//! Answers: 200 `recorded` when the report made the page terminal (or, for a
//! retryable failure with attempts left, scheduled its next attempt), 200
//! `duplicate` for every later report of that page (Lambda delivers at least
//! once); 401 for a missing, forged, expired or mismatched token; 400 for
//! unreadable JSON; 422 for a contract violation; 413 over 256 KiB; 408 when
//! the body does not arrive within `server.body_timeout`; 503 while the
//! ledger is unreachable (the crawler retries). No error changes the ledger.
//!
//! The token is verified from the headers before a byte of the body is
//! read, so an unauthenticated client cannot make the server wait for (or
//! buffer) a body. Text the report carries is stored with each NUL replaced
//! by U+FFFD (Postgres text and jsonb refuse NUL).
//!
//! Refusals are counted in `fanfare_callbacks_total{answer}` and logged at
//! DEBUG; a WARN at most once a minute carries how many were refused since
//! the last one, so refused requests cannot flood the logs.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use chrono::Utc;
use fanfare_crawler::contract::{
    CallbackAck, CallbackStatus, Outcome, Report, CONTRACT_VERSION, MAX_REPORT_BYTES,
    MAX_VALIDATOR_BYTES,
};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::http::serve::BodyTimedOut;
use crate::http::throttle::LogThrottle;
use crate::http::{bearer, ApiError, AppState, ErrorBody};
use crate::ledger::PageError;
use crate::lifecycle::Event;
use crate::runs::{Handled, PageAttempt};
use crate::token::Claims;

/// Handles one report.
#[utoipa::path(
    post,
    path = "/v1/callbacks",
    tag = "callbacks",
    summary = "Report one page attempt (the crawler's callback)",
    description = "A crawler reports the outcome of one page attempt, with that attempt's task token (`callback_token` of the event) as bearer credentials. The token is checked from the headers before the body is read. No error answer changes the ledger. Retry on connection errors, 408, 429 and 5xx; do not retry other 4xx.",
    request_body(
        content = Report,
        content_type = "application/json",
        description = "The report, at most 256 KiB (`MAX_REPORT_BYTES`)"
    ),
    security(("task_token" = [])),
    responses(
        (status = 200, description = "`recorded`: this report made the page terminal (or, for a retryable failure with attempts left, scheduled its next attempt); `duplicate`: the page was already terminal and nothing changed", body = CallbackAck),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 401, description = "Token missing, forged or expired, or for another run, page or attempt than the body", body = ErrorBody),
        (status = 408, description = "The body did not arrive within `server.body_timeout`", body = ErrorBody),
        (status = 413, description = "The body is over 256 KiB", body = ErrorBody),
        (status = 422, description = "JSON that breaks the contract (a missing field, an unknown version, a bad hash)", body = ErrorBody),
        (status = 503, description = "The ledger is unreachable: retry with backoff", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(run_id, page_id, attempt))]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
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
            ApiError::RequestTimeout(_) => "timeout",
            ApiError::Unavailable(_) => "unavailable",
            _ => "error",
        },
    };
    metrics::counter!("fanfare_callbacks_total", "answer" => answer).increment(1);
    metrics::histogram!("fanfare_callback_seconds").record(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        tracing::debug!(answer, reason = %e, "callback refused");
        static REFUSED: LogThrottle = LogThrottle::new(Duration::from_secs(60));
        if let Some(refused) = REFUSED.hit() {
            tracing::warn!(
                refused,
                last_answer = answer,
                last_reason = %e,
                "callbacks refused since the last such warning (each one is logged at DEBUG and counted in fanfare_callbacks_total)"
            );
        }
    }
    result.map(Json)
}

async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<CallbackAck, ApiError> {
    let token = bearer(headers)
        .ok_or_else(|| ApiError::Unauthorized("missing bearer task token".into()))?;
    let claims = state
        .signer()
        .verify(token, Utc::now())
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let span = tracing::Span::current();
    span.record("run_id", tracing::field::display(claims.run_id));
    span.record("page_id", claims.page_id);
    span.record("attempt", claims.attempt);

    let body = read_body(headers, body).await?;
    let report = parse(&body)?;
    check_matches(&report, &claims)?;
    let (event, result, links) = event_of(report)?;
    let at = PageAttempt::new(claims.run_id, claims.page_id, claims.attempt);
    let handled = state.runs.page_report(at, event, result, links).await?;
    Ok(CallbackAck {
        status: match handled {
            Handled::Requeued | Handled::Recorded { .. } | Handled::RunFailed(_) => {
                CallbackStatus::Recorded
            }
            Handled::Stale => CallbackStatus::Duplicate,
        },
    })
}

/// Reads the body, at most [`MAX_REPORT_BYTES`] (refused from its
/// Content-Length when that says more).
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "the report is larger than {MAX_REPORT_BYTES} bytes"
        ))
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REPORT_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(body, MAX_REPORT_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) if BodyTimedOut::is_cause_of(&*e) => Err(ApiError::RequestTimeout(
            "the report did not arrive within the body timeout".into(),
        )),
        Err(e) => Err(ApiError::BadRequest(format!(
            "could not read the body: {e}"
        ))),
    }
}

/// Replaces each NUL in every string (and object key) with U+FFFD:
/// Postgres `text` and `jsonb` cannot hold NUL, and a report that says so
/// must still be recorded rather than answered 500 and retried forever.
fn replace_nul(value: &mut serde_json::Value) {
    use serde_json::Value;
    const NUL: char = '\0';
    match value {
        Value::String(s) if s.contains(NUL) => *s = s.replace(NUL, "\u{FFFD}"),
        Value::Array(items) => items.iter_mut().for_each(replace_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains(NUL)) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (k.replace(NUL, "\u{FFFD}"), v))
                    .collect();
            }
            map.values_mut().for_each(replace_nul);
        }
        _ => {}
    }
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

/// A report's page event, facts to store and links.
type ReportEvent = (Event, Option<serde_json::Value>, Vec<String>);

/// The page event a report is, with the facts to store when it succeeded
/// and the links it found (which are not stored with the facts).
fn event_of(report: Report) -> Result<ReportEvent, ApiError> {
    match report.outcome {
        Outcome::Succeeded(mut facts) => {
            let mut links = std::mem::take(&mut facts.links);
            links.iter_mut().for_each(|l| {
                if l.contains('\0') {
                    *l = l.replace('\0', "%00");
                }
            });
            if !(100..=599).contains(&facts.http_status) {
                return Err(ApiError::Unprocessable(format!(
                    "http_status {} is not an HTTP status code",
                    facts.http_status
                )));
            }
            // A 304 has no body: its hash is the previous run's, kept by
            // the ledger.
            if !facts.not_modified
                && (facts.content_sha256.len() != 64
                    || !facts.content_sha256.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(ApiError::Unprocessable(
                    "content_sha256 must be 64 hexadecimal characters".into(),
                ));
            }
            if facts.rendered {
                metrics::counter!("fanfare_pages_rendered_total").increment(1);
            }
            if facts.not_modified {
                metrics::counter!("fanfare_pages_not_modified_total").increment(1);
            }
            // Validators go back to the site as headers: one too long to be
            // a header a site sent is not kept (the page is fetched in full
            // next time).
            for validator in [&mut facts.etag, &mut facts.last_modified] {
                if validator
                    .as_ref()
                    .is_some_and(|v| v.len() > MAX_VALIDATOR_BYTES)
                {
                    *validator = None;
                }
            }
            // Whether it goes on to the browser is the schedule's
            // `render` (decided by the lifecycle).
            let event = if facts.looks_unrendered && !facts.rendered {
                Event::LooksUnrendered { auto: false }
            } else {
                Event::ReportSucceeded
            };
            let mut result =
                serde_json::to_value(&facts).map_err(|e| ApiError::Internal(e.into()))?;
            replace_nul(&mut result);
            Ok((event, Some(result), links))
        }
        Outcome::Failed { mut error } => {
            error.message = error.message.replace('\0', "\u{FFFD}");
            let retry_after = error.retry_after_secs.map(Duration::from_secs);
            let error = PageError::from(error);
            // The site asked the crawler to slow down: the host is paced and
            // the page waits, without using up an attempt.
            let event = if error.retryable && matches!(error.http_status, Some(429 | 503)) {
                Event::SiteThrottled {
                    error,
                    retry_after,
                    throttles: 0,
                }
            } else {
                Event::ReportFailed(error)
            };
            Ok((event, None, Vec::new()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_is_replaced_in_every_string_and_key_and_nothing_else_changes() {
        let mut value = json!({
            "title": "a\u{0}b",
            "fields": {"k\u{0}": ["\u{0}", 1, null, "plain"]},
            "bytes": 3
        });
        replace_nul(&mut value);
        assert_eq!(
            value,
            json!({
                "title": "a\u{FFFD}b",
                "fields": {"k\u{FFFD}": ["\u{FFFD}", 1, null, "plain"]},
                "bytes": 3
            })
        );
    }
}
