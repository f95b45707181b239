//! Cron schedules: validated expressions, nominal fire times, and the loop
//! that turns each fire into a run.
//!
//! A run's identity is (schedule, nominal fire time). The nominal time comes
//! from the cron expression evaluated in the schedule's time zone, never from
//! `now()`, so every replica that sees the same fire computes the same key and
//! the ledger's unique constraint makes all but one insert a no-op.
//!
//! The loop evaluates expressions with `croner`, the engine
//! tokio-cron-scheduler is built on, directly: tokio-cron-scheduler's job
//! callback is not told which fire time it runs for, and it fixes a time
//! zone's UTC offset when the job is created, which moves fires by an hour
//! across a DST change.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use tokio_util::sync::CancellationToken;

/// A valid cron expression bound to an IANA time zone.
///
/// Six fields (seconds first) or five (seconds taken as 0). Construction
/// validates; a `CronSchedule` can never hold an invalid expression.
#[derive(Clone)]
pub struct CronSchedule {
    expr: String,
    cron: Cron,
    tz: Tz,
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronSchedule({:?} in {})", self.expr, self.tz)
    }
}

const FIELDS: [(&str, u32, u32); 6] = [
    ("seconds", 0, 59),
    ("minutes", 0, 59),
    ("hours", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];

/// Why a cron expression and time zone make no [`CronSchedule`]. The two
/// are told apart because the configuration names a different key for each
/// (`timezone` or `cron`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// The time zone is not an IANA name.
    #[error("unknown time zone {0:?} (use an IANA name such as \"Europe/Paris\" or \"UTC\")")]
    UnknownTimeZone(String),
    /// The expression is malformed or never fires; the text says why
    /// (`seconds must be 0-59`).
    #[error("{0}")]
    Expression(String),
}

impl CronSchedule {
    /// Parses `expr` and resolves `timezone`; the error says what is wrong
    /// (`seconds must be 0-59`, `unknown time zone "Mars/Base"`).
    pub fn new(expr: &str, timezone: &str) -> Result<Self, CronError> {
        let tz: Tz = timezone
            .parse()
            .map_err(|_| CronError::UnknownTimeZone(timezone.to_string()))?;
        Self::in_zone(expr, tz).map_err(CronError::Expression)
    }

    fn in_zone(expr: &str, tz: Tz) -> Result<Self, String> {
        let trimmed = expr.trim();
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        let named: &[(&str, u32, u32)] = match fields.len() {
            6 => &FIELDS,
            5 => &FIELDS[1..],
            n => {
                return Err(format!(
                    "has {n} fields; expected 6 (seconds minutes hours day-of-month month day-of-week) or 5 (without seconds)"
                ))
            }
        };
        for (field, (name, lo, hi)) in fields.iter().zip(named) {
            check_field(field, name, *lo, *hi)?;
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|e| format!("{e}"))?;
        // An expression such as "0 0 0 31 2 *" parses but never fires.
        cron.find_next_occurrence(&Utc::now().with_timezone(&tz), false)
            .map_err(|_| "never fires".to_string())?;
        Ok(Self {
            expr: trimmed.to_string(),
            cron,
            tz,
        })
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The schedule's time zone.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first nominal fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // croner carries the start's fraction of a second into its answer;
        // a nominal fire time is a whole second.
        let after = after.trunc_subsecs(0);
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Checks the numeric parts of one field against its range, so that the
/// error names the field (`seconds must be 0-59`).
fn check_field(field: &str, name: &str, lo: u32, hi: u32) -> Result<(), String> {
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        if let Some(step) = step {
            match step.parse::<u32>() {
                Ok(0) | Err(_) => {
                    return Err(format!("{name}: step {step:?} must be a positive number"))
                }
                Ok(_) => {}
            }
        }
        for bound in range.split('-') {
            if bound.chars().all(|c| c.is_ascii_digit()) && !bound.is_empty() {
                let n: u32 = bound
                    .parse()
                    .map_err(|_| format!("{name} must be {lo}-{hi}"))?;
                if n < lo || n > hi {
                    return Err(format!("{name} must be {lo}-{hi}"));
                }
            }
        }
    }
    Ok(())
}

/// Something that turns a fire into a run.
pub trait FireHandler: Send + Sync + 'static {
    /// Called once per nominal fire time of `schedule`.
    fn fire(
        &self,
        schedule: &str,
        scheduled_for: DateTime<Utc>,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// Ticks one schedule until `cancel` fires: sleeps to each nominal fire time
/// and hands it to `handler`.
pub async fn run_schedule<H: FireHandler>(
    name: String,
    schedule: CronSchedule,
    handler: Arc<H>,
    cancel: CancellationToken,
) {
    let mut after = Utc::now();
    loop {
        let Some(next) = schedule.next_after(after) else {
            tracing::warn!(schedule = %name, "schedule has no further fire times; its ticker stops");
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        tracing::info!(schedule = %name, scheduled_for = %next, "schedule fired");
        handler.fire(&name, next).await;
        after = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_seconds_are_named() {
        let err = CronSchedule::new("61 * * * * *", "UTC").unwrap_err();
        assert_eq!(err, CronError::Expression("seconds must be 0-59".into()));
    }

    #[test]
    fn five_field_expressions_start_at_second_zero() {
        let s = CronSchedule::new("*/5 * * * *", "UTC").unwrap();
        let t0: DateTime<Utc> = "2026-11-26T10:02:30Z".parse().unwrap();
        assert_eq!(
            s.next_after(t0).unwrap(),
            "2026-11-26T10:05:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn fire_times_are_whole_seconds() {
        let s = CronSchedule::new("* * * * * *", "UTC").unwrap();
        let t0: DateTime<Utc> = "2026-11-26T10:02:30.967Z".parse().unwrap();
        assert_eq!(
            s.next_after(t0).unwrap(),
            "2026-11-26T10:02:31Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn fire_times_follow_the_time_zone() {
        let s = CronSchedule::new("0 0 3 * * *", "America/Chicago").unwrap();
        let t0: DateTime<Utc> = "2026-11-26T00:00:00Z".parse().unwrap();
        // 03:00 in Chicago (CST, UTC-6) is 09:00 UTC.
        assert_eq!(
            s.next_after(t0).unwrap(),
            "2026-11-26T09:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn unknown_time_zones_and_wrong_field_counts_are_rejected() {
        let err = CronSchedule::new("0 0 3 * * *", "Mars/Base").unwrap_err();
        assert_eq!(err, CronError::UnknownTimeZone("Mars/Base".into()));
        assert!(err
            .to_string()
            .starts_with("unknown time zone \"Mars/Base\""));
        assert!(CronSchedule::new("0 0 3 *", "UTC")
            .unwrap_err()
            .to_string()
            .contains("has 4 fields"));
        assert!(CronSchedule::new("0 0 25 * * *", "UTC")
            .unwrap_err()
            .to_string()
            .contains("hours must be 0-23"));
    }
}

#[cfg(test)]
mod dst {
    use super::*;

    fn fires(expr: &str, tz: &str, from: &str, to: &str) -> Vec<DateTime<Utc>> {
        let s = CronSchedule::new(expr, tz).unwrap();
        let (mut t, end): (DateTime<Utc>, DateTime<Utc>) =
            (from.parse().unwrap(), to.parse().unwrap());
        let mut out = Vec::new();
        while let Some(next) = s.next_after(t) {
            if next > end {
                break;
            }
            out.push(next);
            t = next;
        }
        out
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_repeated_hour_of_the_fall_back_day_fires_once() {
        // 2026-11-01 in Chicago: 01:00-01:59 happens twice (CDT, then CST).
        let daily = fires(
            "0 30 1 * * *",
            "America/Chicago",
            "2026-10-31T00:00:00Z",
            "2026-11-03T00:00:00Z",
        );
        assert_eq!(
            daily,
            vec![
                at("2026-10-31T06:30:00Z"),
                at("2026-11-01T06:30:00Z"),
                at("2026-11-02T07:30:00Z")
            ]
        );
        let hourly = fires(
            "0 30 * * * *",
            "America/Chicago",
            "2026-11-01T05:00:00Z",
            "2026-11-01T09:00:00Z",
        );
        // 00:30 CDT, 01:30 CDT, (01:30 CST is not fired again), 02:30 CST.
        assert_eq!(
            hourly,
            vec![
                at("2026-11-01T05:30:00Z"),
                at("2026-11-01T06:30:00Z"),
                at("2026-11-01T08:30:00Z")
            ]
        );
    }

    #[test]
    fn a_time_missing_on_the_spring_forward_day_fires_when_the_gap_ends() {
        // 2026-03-08 in Chicago: 02:00-02:59 does not exist; 02:30 fires at 03:00 CDT.
        let daily = fires(
            "0 30 2 * * *",
            "America/Chicago",
            "2026-03-07T00:00:00Z",
            "2026-03-10T00:00:00Z",
        );
        assert_eq!(
            daily,
            vec![
                at("2026-03-07T08:30:00Z"),
                at("2026-03-08T08:00:00Z"),
                at("2026-03-09T07:30:00Z")
            ]
        );
    }
}
