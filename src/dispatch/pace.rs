//! Per-schedule invoke pacing: the configured `max_invokes_per_second`
//! token bucket (governor), lowered adaptively when Lambda throttles and
//! raised again as invokes succeed (additive increase, multiplicative
//! decrease), with a pause for Lambda's `retryAfterSeconds`.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The slowest pace throttling can push a schedule to.
const MIN_RATE: f64 = 1.0;
/// Without a configured cap, adaptive pacing ends once the rate is back here.
const UNCAPPED_CEILING: f64 = 1000.0;

/// The pace of one schedule's invokes.
pub struct Pace {
    cap: Option<f64>,
    state: Mutex<State>,
}

struct State {
    /// Invokes per second now allowed; `None` is unlimited.
    rate: Option<f64>,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    /// The rate the limiter was built for.
    built_for: f64,
    paused_until: Option<Instant>,
    /// Invokes that went through in the current one-second window, to
    /// estimate the pace when unlimited.
    window_start: Instant,
    window_count: u32,
    last_window_rate: f64,
}

fn limiter(rate: f64) -> Arc<DefaultDirectRateLimiter> {
    // Quota in whole invokes per period: below 1/s use a longer period.
    let per_second = NonZeroU32::new(rate.floor().max(1.0) as u32).expect("at least 1");
    Arc::new(RateLimiter::direct(
        Quota::per_second(per_second).allow_burst(per_second),
    ))
}

impl Pace {
    /// A pace capped at `max_per_second`, or unlimited.
    pub fn new(max_per_second: Option<u32>) -> Self {
        let cap = max_per_second.map(f64::from);
        Self {
            cap,
            state: Mutex::new(State {
                rate: cap,
                limiter: cap.map(limiter),
                built_for: cap.unwrap_or(0.0),
                paused_until: None,
                window_start: Instant::now(),
                window_count: 0,
                last_window_rate: 0.0,
            }),
        }
    }

    /// Invokes per second now allowed (`None`: unlimited).
    pub fn rate(&self) -> Option<f64> {
        self.state.lock().expect("pace lock").rate
    }

    /// Whether invokes wait for a throttling pause now.
    pub fn is_paused(&self) -> bool {
        let s = self.state.lock().expect("pace lock");
        s.paused_until.is_some_and(|p| p > Instant::now())
    }

    /// How many pages are worth claiming at once at this pace.
    pub fn claim_hint(&self, default: i64) -> i64 {
        match self.rate() {
            Some(r) => ((r * 2.0).ceil() as i64).clamp(1, default),
            None => default,
        }
    }

    /// Waits for the pause (if any) and a token of the bucket.
    pub async fn until_ready(&self) {
        loop {
            let (pause, limiter) = {
                let s = self.state.lock().expect("pace lock");
                (s.paused_until, s.limiter.clone())
            };
            if let Some(until) = pause {
                if until > Instant::now() {
                    tokio::time::sleep_until(until).await;
                    continue;
                }
            }
            if let Some(l) = limiter {
                l.until_ready().await;
            }
            return;
        }
    }

    /// An invoke went through: counts toward the observed pace, and raises
    /// a lowered rate by a little.
    pub fn on_success(&self) {
        let mut s = self.state.lock().expect("pace lock");
        let now = Instant::now();
        s.window_count += 1;
        let elapsed = now - s.window_start;
        if elapsed >= Duration::from_secs(1) {
            s.last_window_rate = f64::from(s.window_count) / elapsed.as_secs_f64();
            s.window_start = now;
            s.window_count = 0;
        }
        let Some(rate) = s.rate else { return };
        let ceiling = self.cap.unwrap_or(UNCAPPED_CEILING);
        let raised = (rate + 1.0 / rate.max(1.0)).min(ceiling);
        if self.cap.is_none() && raised >= UNCAPPED_CEILING {
            s.rate = None;
            s.limiter = None;
            return;
        }
        s.rate = Some(raised);
        if raised >= s.built_for * 1.1 || raised >= ceiling && s.built_for < ceiling {
            s.limiter = Some(limiter(raised));
            s.built_for = raised;
        }
    }

    /// Lambda throttled: halve the rate and pause for `retry_after` (1 s
    /// when Lambda did not say).
    pub fn on_throttle(&self, retry_after: Option<Duration>) -> f64 {
        let mut s = self.state.lock().expect("pace lock");
        let current = s
            .rate
            .unwrap_or_else(|| s.last_window_rate.max(f64::from(s.window_count)).max(2.0));
        let lowered = (current / 2.0).max(MIN_RATE);
        s.rate = Some(lowered);
        s.limiter = Some(limiter(lowered));
        s.built_for = lowered;
        let until = Instant::now() + retry_after.unwrap_or(Duration::from_secs(1));
        s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
        lowered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_halves_the_rate_down_to_one_per_second() {
        let pace = Pace::new(Some(40));
        assert_eq!(pace.on_throttle(None), 20.0);
        assert_eq!(pace.on_throttle(None), 10.0);
        for _ in 0..10 {
            pace.on_throttle(None);
        }
        assert_eq!(pace.rate(), Some(1.0));
        assert_eq!(pace.claim_hint(500), 2);
    }

    #[test]
    fn successes_raise_a_lowered_rate_back_to_the_cap_and_not_beyond() {
        let pace = Pace::new(Some(8));
        pace.on_throttle(None);
        assert_eq!(pace.rate(), Some(4.0));
        for _ in 0..1000 {
            pace.on_success();
        }
        assert_eq!(pace.rate(), Some(8.0));
    }

    #[test]
    fn an_unlimited_pace_becomes_limited_when_throttled_and_unlimited_again() {
        let pace = Pace::new(None);
        assert_eq!(pace.rate(), None);
        assert!(pace.on_throttle(Some(Duration::from_millis(1))) >= MIN_RATE);
        assert!(pace.rate().is_some());
        for _ in 0..2_000_000 {
            pace.on_success();
            if pace.rate().is_none() {
                return;
            }
        }
        panic!("the pace never recovered: {:?}", pace.rate());
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_pauses_invokes_for_retry_after() {
        let pace = Pace::new(None);
        pace.on_throttle(Some(Duration::from_secs(3)));
        let start = tokio::time::Instant::now();
        pace.until_ready().await;
        assert!(start.elapsed() >= Duration::from_secs(3));
    }
}
