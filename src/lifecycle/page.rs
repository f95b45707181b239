//! A page's next state: one pure function over typed values, called by
//! every path that changes a page (the callback, the sweeper, the
//! dispatcher's invoke-error handling, closing a run, the model test).
//! Nothing else compares an attempt with `max_attempts`.

use std::time::Duration;

use rand::Rng;

use crate::ledger::{ErrorKind, PageChange, PageError, PageStatus};

/// What happened to a page's current attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The crawler reported success.
    ReportSucceeded,
    /// The crawler reported a failure; its `retryable` says whether another
    /// attempt may fix it.
    ReportFailed(PageError),
    /// The crawler reported that the site throttled it (HTTP 429 or 503);
    /// `retry_after` is the site's `Retry-After`, when it gave one, and
    /// `throttles` how many earlier dispatches of the page the site
    /// throttled.
    SiteThrottled {
        /// The crawler's error.
        error: PageError,
        /// When the site said to come back.
        retry_after: Option<Duration>,
        /// Earlier throttled dispatches of the page.
        throttles: u32,
    },
    /// No report came before the attempt's deadline.
    DeadlinePassed,
    /// Lambda throttled the invoke (429); `retry_after` is its
    /// `retryAfterSeconds`, when it gave one.
    InvokeThrottled {
        /// What Lambda said.
        message: String,
        /// When to try again.
        retry_after: Option<Duration>,
    },
    /// The invoke failed in a way another invoke may fix (5xx, network).
    InvokeFailedRetryable(String),
    /// This page can never be sent (its event is too large).
    InvokeRejected(String),
    /// The crawler function cannot be invoked at all (its reason).
    FunctionUnusable(String),
    /// The run was cancelled or failed as a whole.
    Cancelled,
    /// The run's `run_timeout` passed (the note says so).
    RunTimedOut(String),
    /// The crawler fetched the page as served and it looks unrendered (a
    /// field found nothing in what looks like an app shell); `auto` is
    /// whether its schedule has `render = "auto"`.
    LooksUnrendered {
        /// The schedule sends such pages on to the browser.
        auto: bool,
    },
}

impl Event {
    /// Whether [`next`] looks at the attempt counts for this event; callers
    /// that would have to look `max_attempts` up skip that otherwise.
    pub fn depends_on_attempts(&self) -> bool {
        matches!(
            self,
            Event::ReportFailed(PageError {
                retryable: true,
                ..
            }) | Event::SiteThrottled { .. }
                | Event::DeadlinePassed
                | Event::InvokeFailedRetryable(_)
        )
    }
}

/// Why a page is dispatched again: the `reason` label of
/// `fanfare_pages_retried_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The crawler reported a retryable failure.
    Reported,
    /// No report came by the deadline.
    Deadline,
    /// The invoke failed transiently.
    Invoke,
    /// Lambda throttled the invoke.
    Throttled,
    /// The site throttled the crawler (429/503).
    SiteThrottled,
    /// The page goes on to the browser.
    Render,
}

impl RetryReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Reported => "reported",
            RetryReason::Deadline => "deadline",
            RetryReason::Invoke => "invoke",
            RetryReason::Throttled => "throttled",
            RetryReason::SiteThrottled => "site_throttled",
            RetryReason::Render => "render",
        }
    }
}

/// What becomes of the page.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Back to pending, as the retry says.
    Requeue(Retry),
    /// Terminal, with the error recorded (none for a success, or a
    /// cancellation that keeps the page's last error).
    Terminal(PageStatus, Option<PageError>),
    /// The whole run fails with this reason (its open pages are cancelled).
    FailRun(String),
}

/// A page going back to pending, dispatched again after `after`; unless
/// `uses_attempt`, the attempt does not count (the page never ran).
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// The wait before the next dispatch.
    pub after: Duration,
    /// Whether the attempt counts against `max_attempts`.
    pub uses_attempt: bool,
    /// Why (for the retry counter and the log).
    pub reason: RetryReason,
    /// The error recorded on the page meanwhile.
    pub error: PageError,
}

impl Retry {
    /// The ledger's change for this retry.
    pub fn change(&self) -> PageChange {
        PageChange::Requeue {
            after: self.after,
            error: self.error.clone(),
            // The site's throttles keep the attempt's number (its report
            // may still be delivered again) and are counted apart;
            // Lambda's give it back.
            refund: !self.uses_attempt
                && !matches!(
                    self.reason,
                    RetryReason::SiteThrottled | RetryReason::Render
                ),
            site_throttle: self.reason == RetryReason::SiteThrottled,
            to_browser: self.reason == RetryReason::Render,
        }
    }
}

/// The longest a site's `Retry-After` is waited for; a longer one is
/// waited this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A page's next state after `event` happened to its `attempt` (1-based,
/// not counting the dispatches its site throttled) of at most
/// `max_attempts`. Pure but for the jitter drawn by [`backoff`].
pub fn next(attempt: i32, max_attempts: u32, event: Event) -> Next {
    let attempts_left = attempt < 0 || (attempt as u32) < max_attempts;
    match event {
        Event::ReportSucceeded | Event::LooksUnrendered { auto: false } => {
            Next::Terminal(PageStatus::Succeeded, None)
        }
        // Sent on to the browser at once, without using up an attempt: the
        // plain fetch worked, it only could not see what scripts add.
        Event::LooksUnrendered { auto: true } => Next::Requeue(Retry {
            after: Duration::ZERO,
            uses_attempt: false,
            reason: RetryReason::Render,
            error: PageError::new(
                ErrorKind::Unrendered,
                "the page as served looks unrendered (a field found nothing in an app shell); \
                 sent on to the browser",
                true,
            ),
        }),
        // A site that throttles is waited for without using up an attempt,
        // up to `max_attempts` times; after that the report is a failure
        // like any other.
        Event::SiteThrottled {
            error,
            retry_after,
            throttles,
        } if throttles < max_attempts => Next::Requeue(Retry {
            after: retry_after
                .unwrap_or_else(|| backoff(throttles as i32 + 1))
                .min(MAX_RETRY_AFTER),
            uses_attempt: false,
            reason: RetryReason::SiteThrottled,
            error,
        }),
        Event::SiteThrottled { error, .. } => {
            next(attempt, max_attempts, Event::ReportFailed(error))
        }
        Event::ReportFailed(error) if error.retryable && attempts_left => Next::Requeue(Retry {
            after: backoff(attempt),
            uses_attempt: true,
            reason: RetryReason::Reported,
            error,
        }),
        // The crawler's error is kept as it sent it, `retryable` included.
        Event::ReportFailed(error) => Next::Terminal(PageStatus::Failed, Some(error)),
        Event::DeadlinePassed => {
            let error = PageError::new(
                ErrorKind::Deadline,
                format!("no report for attempt {attempt} before its deadline"),
                attempts_left,
            );
            if attempts_left {
                Next::Requeue(Retry {
                    after: backoff(attempt),
                    uses_attempt: true,
                    reason: RetryReason::Deadline,
                    error,
                })
            } else {
                Next::Terminal(PageStatus::TimedOut, Some(error))
            }
        }
        // Throttling alone never fails a page: the attempt is refunded.
        Event::InvokeThrottled {
            message,
            retry_after,
        } => Next::Requeue(Retry {
            after: retry_after.unwrap_or(Duration::from_secs(1)),
            uses_attempt: false,
            reason: RetryReason::Throttled,
            error: PageError::new(ErrorKind::Invoke, message, true),
        }),
        Event::InvokeFailedRetryable(message) if attempts_left => Next::Requeue(Retry {
            after: backoff(attempt),
            uses_attempt: true,
            reason: RetryReason::Invoke,
            error: PageError::new(ErrorKind::Invoke, message, true),
        }),
        Event::InvokeFailedRetryable(message) | Event::InvokeRejected(message) => Next::Terminal(
            PageStatus::Failed,
            Some(PageError::new(ErrorKind::Invoke, message, false)),
        ),
        Event::FunctionUnusable(reason) => Next::FailRun(reason),
        Event::Cancelled => Next::Terminal(PageStatus::Cancelled, None),
        Event::RunTimedOut(note) => Next::Terminal(
            PageStatus::TimedOut,
            Some(PageError::new(ErrorKind::RunTimeout, note, false)),
        ),
    }
}

/// The longest wait [`backoff`] draws for `attempt`: 1 s, 2 s, 4 s … doubling
/// per attempt, capped at 15 min.
pub fn backoff_cap(attempt: i32) -> Duration {
    Duration::from_secs_f64(2f64.powi(attempt.clamp(1, 21) - 1).min(900.0))
}

/// Exponential backoff with equal jitter: a wait drawn uniformly from half
/// of [`backoff_cap`] to all of it (at least 0.5 s), so retries of pages that
/// failed together spread out without ever coming back at once. Used for
/// page retries, notification deliveries and the daemon's own reconnects.
pub fn backoff(attempt: i32) -> Duration {
    let cap = backoff_cap(attempt).as_secs_f64();
    let wait = rand::rng().random_range(cap / 2.0..=cap);
    Duration::from_secs_f64(wait.max(0.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crawl_error(retryable: bool) -> PageError {
        PageError::new(fanfare_crawler::ErrorKind::Connect, "refused", retryable)
    }

    /// Every event, with a sample payload.
    fn events() -> Vec<Event> {
        vec![
            Event::ReportSucceeded,
            Event::ReportFailed(crawl_error(true)),
            Event::ReportFailed(crawl_error(false)),
            Event::SiteThrottled {
                error: crawl_error(true),
                retry_after: Some(Duration::from_secs(2)),
                throttles: 0,
            },
            Event::DeadlinePassed,
            Event::InvokeThrottled {
                message: "slow down".into(),
                retry_after: Some(Duration::from_secs(7)),
            },
            Event::InvokeFailedRetryable("503".into()),
            Event::InvokeRejected("too large".into()),
            Event::FunctionUnusable("not found".into()),
            Event::Cancelled,
            Event::RunTimedOut("run_timeout passed".into()),
            Event::LooksUnrendered { auto: false },
            Event::LooksUnrendered { auto: true },
        ]
    }

    /// What the table says for `event` with attempts left (`left`) or spent,
    /// leaving the drawn backoff out.
    fn expected(event: &Event, left: bool) -> String {
        match (event, left) {
            (Event::ReportSucceeded, _) => "terminal succeeded".into(),
            (Event::ReportFailed(e), true) if e.retryable => "requeue reported uses".into(),
            (Event::ReportFailed(_), _) => "terminal failed connect".into(),
            (Event::SiteThrottled { .. }, _) => "requeue site_throttled refunds".into(),
            (Event::DeadlinePassed, true) => "requeue deadline uses".into(),
            (Event::DeadlinePassed, false) => "terminal timed_out deadline".into(),
            (Event::InvokeThrottled { .. }, _) => "requeue throttled refunds".into(),
            (Event::InvokeFailedRetryable(_), true) => "requeue invoke uses".into(),
            (Event::InvokeFailedRetryable(_) | Event::InvokeRejected(_), _) => {
                "terminal failed invoke".into()
            }
            (Event::FunctionUnusable(_), _) => "fail run".into(),
            (Event::Cancelled, _) => "terminal cancelled".into(),
            (Event::RunTimedOut(_), _) => "terminal timed_out run_timeout".into(),
            (Event::LooksUnrendered { auto: false }, _) => "terminal succeeded".into(),
            (Event::LooksUnrendered { auto: true }, _) => "requeue render refunds".into(),
        }
    }

    fn describe(next: &Next) -> String {
        match next {
            Next::Requeue(Retry {
                uses_attempt,
                reason,
                ..
            }) => format!(
                "requeue {} {}",
                reason.as_str(),
                if *uses_attempt { "uses" } else { "refunds" }
            ),
            Next::Terminal(status, None) => format!("terminal {}", status.as_str()),
            Next::Terminal(status, Some(e)) => format!(
                "terminal {} {}",
                status.as_str(),
                serde_json::to_value(e.kind).unwrap().as_str().unwrap()
            ),
            Next::FailRun(_) => "fail run".into(),
        }
    }

    #[test]
    fn every_event_with_attempts_left_and_spent_follows_the_table() {
        for max_attempts in [1u32, 3] {
            for attempt in 1..=max_attempts as i32 {
                let left = (attempt as u32) < max_attempts;
                for event in events() {
                    let got = next(attempt, max_attempts, event.clone());
                    assert_eq!(
                        describe(&got),
                        expected(&event, left),
                        "{event:?} at attempt {attempt} of {max_attempts}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_retried_page_records_why_and_marks_the_error_retryable() {
        let Next::Requeue(Retry { error, after, .. }) = next(1, 3, Event::DeadlinePassed) else {
            panic!("a deadline with attempts left requeues");
        };
        assert_eq!(error.message, "no report for attempt 1 before its deadline");
        assert!(error.retryable);
        assert!(after >= Duration::from_millis(500) && after <= Duration::from_secs(1));
        let Next::Terminal(_, Some(error)) = next(3, 3, Event::DeadlinePassed) else {
            panic!("a deadline of the last attempt is terminal");
        };
        assert!(!error.retryable);
    }

    #[test]
    fn a_throttled_invoke_waits_as_lambda_asks_and_never_uses_an_attempt() {
        let throttled = |retry_after| Event::InvokeThrottled {
            message: "429".into(),
            retry_after,
        };
        for attempt in [1, 5] {
            match next(attempt, 1, throttled(Some(Duration::from_secs(7)))) {
                Next::Requeue(Retry {
                    after,
                    uses_attempt,
                    ..
                }) => {
                    assert_eq!(after, Duration::from_secs(7));
                    assert!(!uses_attempt);
                }
                other => panic!("throttling must requeue, got {other:?}"),
            }
        }
        assert!(matches!(
            next(1, 1, throttled(None)),
            Next::Requeue(Retry { after, .. }) if after == Duration::from_secs(1)
        ));
    }

    #[test]
    fn a_throttling_site_is_waited_for_max_attempts_times_without_using_an_attempt() {
        let throttled = |retry_after, throttles| Event::SiteThrottled {
            error: crawl_error(true),
            retry_after,
            throttles,
        };
        // On the last attempt, with throttles left: waits as the site asks.
        match next(1, 1, throttled(Some(Duration::from_secs(2)), 0)) {
            Next::Requeue(Retry {
                after,
                uses_attempt,
                reason,
                ..
            }) => {
                assert_eq!(after, Duration::from_secs(2));
                assert!(!uses_attempt);
                assert_eq!(reason, RetryReason::SiteThrottled);
            }
            other => panic!("a throttled page must be requeued, got {other:?}"),
        }
        // Without Retry-After: a backoff; an absurd one is capped.
        let Next::Requeue(Retry { after, .. }) = next(1, 3, throttled(None, 2)) else {
            panic!("requeue expected");
        };
        assert!(after >= Duration::from_secs(2) && after <= Duration::from_secs(4));
        let Next::Requeue(Retry { after, .. }) =
            next(1, 3, throttled(Some(Duration::from_secs(86_400)), 0))
        else {
            panic!("requeue expected");
        };
        assert_eq!(after, MAX_RETRY_AFTER);
        // Throttles spent: an ordinary retryable failure, which uses the
        // attempt, and fails the page on its last one.
        assert!(matches!(
            next(1, 2, throttled(None, 2)),
            Next::Requeue(Retry {
                uses_attempt: true,
                reason: RetryReason::Reported,
                ..
            })
        ));
        assert_eq!(
            next(2, 2, throttled(None, 2)),
            Next::Terminal(PageStatus::Failed, Some(crawl_error(true)))
        );
    }

    #[test]
    fn an_unrendered_looking_page_goes_on_to_the_browser_at_once_only_with_auto() {
        for (attempt, max_attempts) in [(1, 1), (3, 3), (1, 5)] {
            match next(attempt, max_attempts, Event::LooksUnrendered { auto: true }) {
                Next::Requeue(Retry {
                    after,
                    uses_attempt,
                    reason,
                    error,
                }) => {
                    assert_eq!(after, Duration::ZERO);
                    assert!(!uses_attempt, "the plain fetch does not use an attempt");
                    assert_eq!(reason, RetryReason::Render);
                    assert_eq!(error.kind, ErrorKind::Unrendered);
                    assert!(error.message.contains("browser"), "{}", error.message);
                }
                other => panic!("auto sends the page to the browser, got {other:?}"),
            }
            assert_eq!(
                next(
                    attempt,
                    max_attempts,
                    Event::LooksUnrendered { auto: false }
                ),
                Next::Terminal(PageStatus::Succeeded, None)
            );
        }
    }

    #[test]
    fn a_reported_failure_on_its_last_attempt_keeps_the_crawlers_error_as_sent() {
        assert_eq!(
            next(2, 2, Event::ReportFailed(crawl_error(true))),
            Next::Terminal(PageStatus::Failed, Some(crawl_error(true)))
        );
    }

    #[test]
    fn backoff_doubles_per_attempt_within_equal_jitter_and_is_capped() {
        for attempt in 1..=30 {
            let cap = backoff_cap(attempt);
            for _ in 0..50 {
                let wait = backoff(attempt);
                assert!(
                    wait <= cap.max(Duration::from_millis(500)),
                    "{wait:?} > {cap:?}"
                );
                assert!(
                    wait >= (cap / 2).max(Duration::from_millis(500)),
                    "{wait:?}"
                );
            }
        }
        assert_eq!(backoff_cap(1), Duration::from_secs(1));
        assert_eq!(backoff_cap(4), Duration::from_secs(8));
        assert_eq!(backoff_cap(100), Duration::from_secs(900));
        assert!(backoff(5) >= Duration::from_secs(8));
    }
}
