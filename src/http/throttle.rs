//! Logging that cannot be driven by a client: a WARN at most once per
//! interval, carrying how many events it stands for.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts events and says when one may be logged: the first at once, then
/// at most one per interval, each carrying the number of events since the
/// last one logged (itself included).
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Debug)]
struct ThrottleState {
    last: Option<Instant>,
    count: u64,
}

impl LogThrottle {
    /// At most one log line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new(ThrottleState {
                last: None,
                count: 0,
            }),
        }
    }

    /// Counts one event now; `Some(n)` when it should be logged, standing
    /// for `n` events.
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    /// [`LogThrottle::hit`] at a given instant.
    pub fn hit_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.count += 1;
        let due = match s.last {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= self.every,
        };
        if !due {
            return None;
        }
        s.last = Some(now);
        Some(std::mem::take(&mut s.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_logs_then_one_line_per_interval_carries_the_count_since_the_last() {
        let throttle = LogThrottle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(throttle.hit_at(t0), Some(1));
        for i in 1..=2999 {
            assert_eq!(throttle.hit_at(t0 + Duration::from_millis(i * 10)), None);
        }
        assert_eq!(throttle.hit_at(t0 + Duration::from_secs(60)), Some(3000));
        assert_eq!(throttle.hit_at(t0 + Duration::from_secs(61)), None);
        assert_eq!(throttle.hit_at(t0 + Duration::from_secs(125)), Some(2));
    }
}
