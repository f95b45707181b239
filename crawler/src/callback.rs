//! Delivering a [`Report`] to the daemon: `POST` to the request's
//! `callback_url`, at least once.
//!
//! Connection failures, timeouts, 408, 429 and 5xx are retried with
//! exponential backoff and jitter, up to
//! [`CrawlerConfig::callback_attempts`](crate::CrawlerConfig::callback_attempts) ([`Reporter`]).
//! Any other non-2xx answer (400, 401, 413, 422, and 3xx, since redirects are
//! not followed) will not change on a retry, so it is returned at once as
//! [`CallbackError::Rejected`]. The daemon deduplicates, so a report that
//! arrives twice is harmless.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use url::Url;

use crate::contract::{CallbackAck, CrawlRequest, Report};
use crate::errors::chain_text;

/// At most this much of a rejection's body is kept in the error.
const MAX_ERROR_BODY_CHARS: usize = 1024;

/// Ceiling for one backoff delay, however many attempts are configured.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why a report was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The request's `callback_url` is not an absolute http(s) URL.
    #[error("callback url {url:?} is invalid: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The daemon answered with a status that a retry will not change.
    #[error("callback rejected with HTTP {status}: {body}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body (the daemon's reason).
        body: String,
    },
    /// Every attempt failed with a transient error.
    #[error("callback not delivered after {attempts} attempts; last error: {last}")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: String,
    },
    /// The daemon accepted the report but its answer is not a
    /// [`CallbackAck`].
    #[error(
        "callback answered HTTP {status} with an unreadable acknowledgement {body:?}: {reason}"
    )]
    BadAck {
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body.
        body: String,
        /// Why it could not be read.
        reason: String,
    },
    /// The report could not be encoded as JSON.
    #[error("report could not be encoded as JSON: {0}")]
    Encode(#[from] serde_json::Error),
}

impl CallbackError {
    /// The HTTP status the daemon answered with, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallbackError::Rejected { status, .. } | CallbackError::BadAck { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// One attempt's failure: worth another attempt, or final.
enum AttemptError {
    Transient(String),
    Final(CallbackError),
}

/// Delivers reports: a client that never follows redirects (a redirected
/// POST would lose its body or carry the bearer token somewhere
/// unexpected), and how often and how patiently to try.
#[derive(Debug, Clone)]
pub struct Reporter {
    http: reqwest::Client,
    attempts: u32,
    backoff: Duration,
}

impl Reporter {
    /// A reporter sending `user_agent`, each POST bounded by `timeout`
    /// (reading the answer included), `attempts` tries in all (at least
    /// one), the second after `backoff`, doubling with jitter.
    pub fn new(
        user_agent: &str,
        timeout: Duration,
        attempts: u32,
        backoff: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(user_agent)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            attempts: attempts.max(1),
            backoff,
        })
    }

    /// POSTs `report` as JSON to `request.callback_url` with
    /// `Authorization: Bearer {callback_token}`, retrying transient failures,
    /// and returns the daemon's acknowledgement.
    pub async fn report(
        &self,
        request: &CrawlRequest,
        report: &Report,
    ) -> Result<CallbackAck, CallbackError> {
        let url = parse_callback_url(&request.callback_url)?;
        let body = serde_json::to_vec(report)?;
        let attempts = self.attempts;
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self.post_once(&url, &request.callback_token, &body).await {
                Ok(ack) => return Ok(ack),
                Err(AttemptError::Final(error)) => {
                    tracing::warn!(attempt, %error, "callback rejected; not retrying");
                    return Err(error);
                }
                Err(AttemptError::Transient(error)) => {
                    if attempt < attempts {
                        let delay = backoff(self.backoff, attempt);
                        tracing::warn!(attempt, %error, ?delay, "callback failed; retrying");
                        tokio::time::sleep(delay).await;
                    } else {
                        tracing::warn!(attempt, %error, "callback failed; giving up");
                    }
                    last = error;
                }
            }
        }
        Err(CallbackError::Exhausted { attempts, last })
    }

    async fn post_once(
        &self,
        url: &Url,
        token: &str,
        body: &[u8],
    ) -> Result<CallbackAck, AttemptError> {
        let response = self
            .http
            .post(url.clone())
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| AttemptError::Transient(chain_text(&e)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| AttemptError::Transient(format!("HTTP {status}: {}", chain_text(&e))))?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| {
                AttemptError::Final(CallbackError::BadAck {
                    status: status.as_u16(),
                    body: shorten(&text),
                    reason: e.to_string(),
                })
            });
        }
        if is_transient(status) {
            return Err(AttemptError::Transient(format!(
                "HTTP {status}: {}",
                shorten(&text)
            )));
        }
        Err(AttemptError::Final(CallbackError::Rejected {
            status: status.as_u16(),
            body: shorten(&text),
        }))
    }
}

fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

fn parse_callback_url(raw: &str) -> Result<Url, CallbackError> {
    let invalid = |reason: String| CallbackError::InvalidUrl {
        url: raw.to_string(),
        reason,
    };
    let url = Url::parse(raw).map_err(|e| invalid(e.to_string()))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        "http" | "https" => Err(invalid("it has no host".into())),
        scheme => Err(invalid(format!("scheme {scheme:?} is not http or https"))),
    }
}

fn shorten(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_ERROR_BODY_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The delay after failed attempt `attempt` (1-based): `initial * 2^(attempt-1)`,
/// capped, then scaled by a random factor in [0.5, 1] so that many crawlers
/// failing together do not retry together.
fn backoff(initial: Duration, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(16);
    let full = initial.saturating_mul(1 << exponent).min(MAX_BACKOFF);
    full.mul_f64(0.5 + 0.5 * random_unit())
}

/// A random number in [0, 1) without a dependency: `RandomState` is seeded
/// randomly per instance.
fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let initial = Duration::from_millis(200);
        for attempt in 1..=4 {
            let full = initial * (1 << (attempt - 1));
            for _ in 0..50 {
                let delay = backoff(initial, attempt);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "attempt {attempt}: {delay:?}"
                );
            }
        }
        assert!(backoff(initial, 40) <= MAX_BACKOFF);
        assert!(backoff(initial, 40) >= MAX_BACKOFF / 2);
    }

    #[test]
    fn jitter_varies_between_calls() {
        let delays: std::collections::HashSet<_> = (0..20)
            .map(|_| backoff(Duration::from_secs(1), 1))
            .collect();
        assert!(delays.len() > 1);
    }

    #[test]
    fn only_408_429_and_5xx_answers_are_retried() {
        for (code, transient) in [
            (200, false),
            (301, false),
            (400, false),
            (401, false),
            (408, true),
            (413, false),
            (422, false),
            (429, true),
            (500, true),
            (503, true),
        ] {
            assert_eq!(
                is_transient(StatusCode::from_u16(code).unwrap()),
                transient,
                "HTTP {code}"
            );
        }
    }

    #[test]
    fn callback_url_must_be_absolute_http() {
        assert!(parse_callback_url("https://d.example/v1/callbacks").is_ok());
        for bad in ["/v1/callbacks", "ftp://d.example/x", "not a url"] {
            let error = parse_callback_url(bad).unwrap_err();
            assert!(matches!(error, CallbackError::InvalidUrl { .. }), "{bad}");
            assert!(error.to_string().contains(bad), "{error}");
        }
    }

    #[test]
    fn long_error_bodies_are_shortened() {
        let long = "x".repeat(5000);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), MAX_ERROR_BODY_CHARS + 1);
        assert_eq!(shorten("  bad token \n"), "bad token");
    }
}
