//! Tables for people: aligned columns, and the few formats they show.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// `rows` under `headers`, each column as wide as its widest cell, columns
/// two spaces apart; the last column is not padded. Widths count
/// characters, not bytes.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        let cells: Vec<&str> = cells.collect();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(
            &mut row.iter().map(String::as_str).take(widths.len()),
        ));
    }
    out
}

/// A JSON value as a cell: strings bare, null as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An RFC 3339 time from the API as `2026-11-26 03:00:05` (UTC); `-` when
/// absent, the text itself when it is not a time.
pub fn time(v: &Value) -> String {
    match v.as_str() {
        None => "-".into(),
        Some(s) => s
            .parse::<DateTime<Utc>>()
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|_| s.to_string()),
    }
}

/// Seconds as `850 ms`, `12.4 s`, `3 min 05 s`, `2 h 03 min`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".into();
    }
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else if seconds < 3600.0 {
        let s = seconds.round() as u64;
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = (seconds / 60.0).round() as u64;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_on_the_widest_cell_counting_characters() {
        let out = render(
            &["ID", "NAME", "N"],
            &[
                vec!["1".into(), "café au lait".into(), "3".into()],
                vec!["22".into(), "x".into(), "4".into()],
            ],
        );
        assert_eq!(
            out,
            "ID  NAME          N\n1   café au lait  3\n22  x             4\n"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(12.44), "12.4 s");
        assert_eq!(duration(185.0), "3 min 05 s");
        assert_eq!(duration(7380.0), "2 h 03 min");
        assert_eq!(duration(f64::NAN), "-");
    }

    #[test]
    fn times_drop_the_fraction_and_absent_ones_show_a_dash() {
        assert_eq!(
            time(&Value::String("2026-11-26T03:00:05.123456Z".into())),
            "2026-11-26 03:00:05"
        );
        assert_eq!(time(&Value::Null), "-");
    }
}
