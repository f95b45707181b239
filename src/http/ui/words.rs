//! Cron expressions, durations and times in words, for people.

use chrono::{DateTime, TimeZone, Utc};

/// A cron expression (6 fields, seconds first, or 5) in words for the
/// common patterns (`every 15 minutes`, `at 06:00 every day`, `at 02:30
/// Monday to Friday`); anything else is answered as `cron <expr>`.
pub fn cron_in_words(expr: &str) -> String {
    describe(expr).unwrap_or_else(|| format!("cron {}", expr.trim()))
}

fn describe(expr: &str) -> Option<String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let (sec, min, hour, dom, mon, dow) = match fields.as_slice() {
        [s, m, h, d, mo, w] => (*s, *m, *h, *d, *mo, *w),
        [m, h, d, mo, w] => ("0", *m, *h, *d, *mo, *w),
        _ => return None,
    };
    let num = |s: &str, hi: u32| s.parse::<u32>().ok().filter(|n| *n <= hi);
    let step = |s: &str| {
        s.strip_prefix("*/")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n > 0)
    };
    let any = |s: &str| s == "*" || s == "?";
    let plural = |n: u32, one: &str, many: &str| {
        if n == 1 {
            format!("every {one}")
        } else {
            format!("every {n} {many}")
        }
    };

    // Sub-daily repetition on every day.
    if any(dom) && any(mon) && any(dow) {
        if let Some(n) = step(sec) {
            if any(min) && any(hour) {
                return Some(plural(n, "second", "seconds"));
            }
        }
        if any(sec) && any(min) && any(hour) {
            return Some("every second".into());
        }
        if sec == "0" {
            if any(min) && any(hour) {
                return Some("every minute".into());
            }
            if let Some(n) = step(min) {
                if any(hour) {
                    return Some(plural(n, "minute", "minutes"));
                }
            }
            if let Some(m) = num(min, 59) {
                if any(hour) {
                    return Some(if m == 0 {
                        "every hour".into()
                    } else {
                        format!("at minute {m} of every hour")
                    });
                }
                if let Some(n) = step(hour) {
                    let every = plural(n, "hour", "hours");
                    return Some(if m == 0 {
                        every
                    } else {
                        format!("{every}, at minute {m}")
                    });
                }
            }
        }
    }

    // Once a day at a fixed time, on some days.
    let (Some(s), Some(m), Some(h)) = (num(sec, 59), num(min, 59), num(hour, 23)) else {
        return None;
    };
    let time = if s == 0 {
        format!("{h:02}:{m:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    };
    if !any(mon) {
        return None;
    }
    let days = match (any(dom), any(dow)) {
        (true, true) => "every day".to_string(),
        (true, false) => weekdays(dow)?,
        (false, true) => format!(
            "on day {} of every month",
            num(dom, 31).filter(|d| *d >= 1)?
        ),
        (false, false) => return None,
    };
    Some(format!("at {time} {days}"))
}

const DAYS: [&str; 8] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// `1-5` -> `Monday to Friday`, `1,3` -> `on Monday and Wednesday`, `MON` too.
fn weekdays(field: &str) -> Option<String> {
    let day = |s: &str| -> Option<usize> {
        let names = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
        s.parse::<usize>()
            .ok()
            .filter(|n| *n <= 7)
            .or_else(|| names.iter().position(|n| n.eq_ignore_ascii_case(s)))
    };
    if let Some((a, b)) = field.split_once('-') {
        let (a, b) = (day(a)?, day(b)?);
        if a >= b {
            return None;
        }
        return Some(format!("{} to {}", DAYS[a], DAYS[b]));
    }
    let list: Vec<&str> = field
        .split(',')
        .map(|d| day(d).map(|d| DAYS[d]))
        .collect::<Option<_>>()?;
    Some(match list.as_slice() {
        [one] => format!("on {one}"),
        [init @ .., last] => format!("on {} and {last}", init.join(", ")),
        [] => return None,
    })
}

/// A duration in words: `850 ms`, `42 s`, `2 min 41 s`, `3 h 5 min`.
pub fn duration(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    if ms < 1_000 {
        return format!("{ms} ms");
    }
    let s = ms / 1_000;
    if s < 60 {
        let tenths = (ms % 1_000) / 100;
        return if s < 10 && tenths > 0 {
            format!("{s}.{tenths} s")
        } else {
            format!("{s} s")
        };
    }
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    if h == 0 {
        format!("{m} min {s} s")
    } else {
        format!("{h} h {m} min")
    }
}

/// A time in UTC, to the second: `2026-11-26 09:00:00 UTC`.
pub fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A time in a schedule's zone: `2026-11-26 03:00 CST`.
pub fn local<Tz: TimeZone>(t: DateTime<Utc>, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    t.with_timezone(tz).format("%Y-%m-%d %H:%M %Z").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_cron_patterns_read_as_words() {
        let cases = [
            ("0 * * * * *", "every minute"),
            ("* * * * *", "every minute"),
            ("0 */15 * * * *", "every 15 minutes"),
            ("*/15 * * * *", "every 15 minutes"),
            ("*/30 * * * * *", "every 30 seconds"),
            ("0 0 * * * *", "every hour"),
            ("0 30 * * * *", "at minute 30 of every hour"),
            ("0 0 */6 * * *", "every 6 hours"),
            ("0 0 6 * * *", "at 06:00 every day"),
            ("0 6 * * *", "at 06:00 every day"),
            ("0 30 2 * * 1-5", "at 02:30 Monday to Friday"),
            ("0 0 3 * * MON", "at 03:00 on Monday"),
            (
                "0 0 3 * * 1,3,5",
                "at 03:00 on Monday, Wednesday and Friday",
            ),
            ("0 0 3 1 * *", "at 03:00 on day 1 of every month"),
            ("15 0 3 * * *", "at 03:00:15 every day"),
        ];
        for (expr, words) in cases {
            assert_eq!(cron_in_words(expr), words, "{expr}");
        }
    }

    #[test]
    fn other_expressions_fall_back_to_the_expression() {
        for expr in [
            "0 0 3 1 1 *",
            "0 0 3 * * 5-1",
            "0 0 8-17 * * *",
            "0 0 3 1 * 1",
        ] {
            assert_eq!(cron_in_words(expr), format!("cron {expr}"));
        }
    }

    #[test]
    fn durations_read_as_words() {
        let d = chrono::Duration::milliseconds;
        assert_eq!(duration(d(850)), "850 ms");
        assert_eq!(duration(d(4_250)), "4.2 s");
        assert_eq!(duration(d(42_000)), "42 s");
        assert_eq!(duration(d(161_730)), "2 min 41 s");
        assert_eq!(duration(d(11_100_000)), "3 h 5 min");
        assert_eq!(duration(d(-5)), "0 ms");
    }
}
