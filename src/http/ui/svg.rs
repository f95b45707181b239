//! Charts drawn on the server as inline SVG: no script, no style
//! attributes (the CSP forbids them), only presentation attributes. Every
//! text in them goes through maud, which escapes it.

use maud::{html, Markup};

use super::words;
use crate::ledger::{Outcome, Run, RunStatus};

/// Colours of outcomes and page states.
pub const GREEN: &str = "#2e9e5b";
/// Failed.
pub const RED: &str = "#d64545";
/// Timed out, partial.
pub const AMBER: &str = "#d98b00";
/// Cancelled.
pub const GREY: &str = "#8a8f98";
/// Open pages.
pub const OPEN: &str = "#c9d3df";
/// A run still open.
pub const BLUE: &str = "#3b82c4";
const AXIS: &str = "#5c6675";

/// The colour of a run by its outcome (blue while open).
pub fn outcome_colour(outcome: Option<Outcome>) -> &'static str {
    match outcome {
        None => BLUE,
        Some(Outcome::Succeeded) => GREEN,
        Some(Outcome::Partial) => AMBER,
        Some(Outcome::Failed) => RED,
        Some(Outcome::Cancelled) => GREY,
    }
}

/// A run's page counts, in the order the progress bar draws them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Pages listed.
    pub total: i64,
    /// Succeeded.
    pub succeeded: i64,
    /// Failed.
    pub failed: i64,
    /// Timed out.
    pub timed_out: i64,
    /// Cancelled.
    pub cancelled: i64,
    /// Not terminal yet.
    pub open: i64,
}

impl Counts {
    /// The counts of `run`.
    pub fn of(run: &Run) -> Self {
        Self {
            total: run.total_pages,
            succeeded: run.succeeded_pages,
            failed: run.failed_pages,
            timed_out: run.timed_out_pages,
            cancelled: run.cancelled_pages,
            open: run.open_pages,
        }
    }

    /// Pages that reached a terminal state.
    pub fn terminal(&self) -> i64 {
        self.total - self.open
    }

    /// Terminal pages as a whole percentage of the total, rounded down (100
    /// only when every page is terminal); 0 without pages.
    pub fn percent(&self) -> i64 {
        if self.total > 0 {
            self.terminal().max(0) * 100 / self.total
        } else {
            0
        }
    }

    /// `12 of 36 pages reported (33 %)`: the text the live script writes too.
    pub fn summary(&self) -> String {
        format!(
            "{} of {} pages reported ({} %)",
            self.terminal(),
            self.total,
            self.percent()
        )
    }

    /// (name, label, count, colour) of each segment, in drawing order.
    pub fn segments(&self) -> [(&'static str, &'static str, i64, &'static str); 5] {
        [
            ("succeeded", "succeeded", self.succeeded, GREEN),
            ("failed", "failed", self.failed, RED),
            ("timed_out", "timed out", self.timed_out, AMBER),
            ("cancelled", "cancelled", self.cancelled, GREY),
            ("open", "open", self.open, OPEN),
        ]
    }
}

/// A stacked bar of a run's pages by state, 1000 units wide (the live
/// script moves the same segments, found by `data-seg`).
pub fn progress(c: &Counts) -> Markup {
    let mut x = 0.0;
    let segments: Vec<(&str, f64, f64, &str)> = c
        .segments()
        .into_iter()
        .map(|(name, _, n, colour)| {
            let w = if c.total > 0 {
                n as f64 * 1000.0 / c.total as f64
            } else {
                0.0
            };
            x += w;
            (name, x - w, w, colour)
        })
        .collect();
    html! {
        svg.progress viewBox="0 0 1000 18" preserveAspectRatio="none" role="img"
            aria-label=(c.summary()) {
            rect x="0" y="0" width="1000" height="18" fill="#eef1f5" {}
            @for (name, x, w, colour) in segments {
                rect data-seg=(name) x=(fmt(x)) y="0" width=(fmt(w)) height="18" fill=(colour) {}
            }
        }
    }
}

fn fmt(v: f64) -> String {
    format!("{v:.2}")
}

/// One bar of [`durations`]: a run, its duration so far, its link.
pub struct RunBar {
    /// Where the bar links to.
    pub href: String,
    /// The tooltip.
    pub title: String,
    /// Seconds.
    pub seconds: f64,
    /// Its fill.
    pub colour: &'static str,
}

impl RunBar {
    /// The bar of `run` at `now` (an open run's duration is its time so far).
    pub fn of(run: &Run, now: chrono::DateTime<chrono::Utc>) -> Self {
        let end = run.finished_at.unwrap_or(now);
        let took = end - run.created_at;
        let state = match (run.status, run.outcome) {
            (RunStatus::Finished, Some(o)) => o.as_str().to_string(),
            (status, _) => format!("{status:?}").to_lowercase(),
        };
        Self {
            href: format!("/ui/runs/{}", run.id),
            title: format!(
                "{} · {} · {}",
                words::utc(run.scheduled_for),
                state,
                words::duration(took)
            ),
            seconds: took.num_milliseconds().max(0) as f64 / 1000.0,
            colour: if run.status == RunStatus::Finished {
                outcome_colour(run.outcome)
            } else {
                BLUE
            },
        }
    }
}

/// The last runs' durations as bars, oldest on the left, coloured by
/// outcome, each linking to its run.
pub fn durations(bars: &[RunBar], slots: usize) -> Markup {
    let (w, h, top) = (300.0, 64.0, 12.0);
    let slot = w / slots.max(1) as f64;
    let max = bars.iter().map(|b| b.seconds).fold(0.0, f64::max);
    let label = if max > 0.0 {
        words::duration(chrono::Duration::milliseconds((max * 1000.0) as i64))
    } else {
        String::new()
    };
    let start = slots.saturating_sub(bars.len());
    html! {
        svg.spark viewBox=(format!("0 0 {w} {}", h + 2.0)) role="img"
            aria-label=(format!("durations of the last {} runs", bars.len())) {
            line x1="0" y1=(fmt(h)) x2=(fmt(w)) y2=(fmt(h)) stroke=(AXIS) stroke-width="0.5" {}
            @if !label.is_empty() {
                text x="0" y="9" font-size="9" fill=(AXIS) { "max " (label) }
            }
            @for (i, b) in bars.iter().enumerate() {
                @let bh = if max > 0.0 { ((b.seconds / max) * (h - top)).max(1.5) } else { 1.5 };
                a href=(b.href) {
                    title { (b.title) }
                    rect x=(fmt((start + i) as f64 * slot + slot * 0.15)) y=(fmt(h - bh))
                        width=(fmt(slot * 0.7)) height=(fmt(bh)) fill=(b.colour) {}
                }
            }
        }
    }
}

/// A labelled bar in a [`bars`] chart: stacked values (value, colour).
pub struct Bar {
    /// The text under the bar (may be empty).
    pub label: String,
    /// The tooltip.
    pub title: String,
    /// Stacked from the bottom.
    pub stack: Vec<(i64, &'static str)>,
}

/// A bar chart with an x-axis caption at both ends and the largest value
/// on the y axis.
pub fn bars(bars: &[Bar], caption: &str, left: &str, right: &str) -> Markup {
    let (w, h, top, bottom) = (600.0, 170.0, 16.0, 30.0);
    let plot = h - top - bottom;
    let slot = w / bars.len().max(1) as f64;
    let max = bars
        .iter()
        .map(|b| b.stack.iter().map(|(v, _)| *v).sum::<i64>())
        .max()
        .unwrap_or(0);
    let label_every = (bars.len() / 12).max(1);
    html! {
        svg.chart viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(caption) {
            text x="0" y="11" font-size="11" fill=(AXIS) { (max) }
            line x1="0" y1=(fmt(top + plot)) x2=(fmt(w)) y2=(fmt(top + plot)) stroke=(AXIS) stroke-width="0.8" {}
            @for (i, b) in bars.iter().enumerate() {
                @let x = i as f64 * slot;
                g {
                    title { (b.title) }
                    @for (y, bh, colour) in stacked(&b.stack, max, top + plot, plot) {
                        rect x=(fmt(x + slot * 0.1)) y=(fmt(y)) width=(fmt(slot * 0.8))
                            height=(fmt(bh)) fill=(colour) {}
                    }
                }
                @if !b.label.is_empty() && i % label_every == 0 {
                    text x=(fmt(x + slot / 2.0)) y=(fmt(top + plot + 13.0)) font-size="10"
                        text-anchor="middle" fill=(AXIS) { (b.label) }
                }
            }
            text x="0" y=(fmt(h - 2.0)) font-size="11" fill=(AXIS) { (left) }
            text x=(fmt(w)) y=(fmt(h - 2.0)) font-size="11" text-anchor="end" fill=(AXIS) { (right) }
        }
    }
}

/// (top, height, colour) of each non-empty part of a stacked bar whose
/// base is at `base`, `plot` high for `max`.
fn stacked(
    stack: &[(i64, &'static str)],
    max: i64,
    base: f64,
    plot: f64,
) -> Vec<(f64, f64, &'static str)> {
    let mut y = base;
    stack
        .iter()
        .filter(|(v, _)| *v > 0)
        .map(|(v, colour)| {
            let bh = if max > 0 {
                *v as f64 / max as f64 * plot
            } else {
                0.0
            };
            y -= bh;
            (y, bh, *colour)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percentage_is_rounded_down_so_100_means_done() {
        let c = Counts {
            total: 300,
            succeeded: 298,
            failed: 1,
            open: 1,
            ..Default::default()
        };
        assert_eq!(c.percent(), 99);
        assert_eq!(c.summary(), "299 of 300 pages reported (99 %)");
        assert_eq!(Counts::default().percent(), 0);
    }

    #[test]
    fn progress_segments_fill_the_bar_in_proportion() {
        let c = Counts {
            total: 4,
            succeeded: 2,
            failed: 1,
            open: 1,
            ..Default::default()
        };
        let svg = progress(&c).into_string();
        assert!(
            svg.contains(r#"data-seg="succeeded" x="0.00" y="0" width="500.00""#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"data-seg="failed" x="500.00" y="0" width="250.00""#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"data-seg="open" x="750.00" y="0" width="250.00""#),
            "{svg}"
        );
        assert!(!svg.contains("style"), "{svg}");
    }

    #[test]
    fn bar_titles_are_escaped() {
        let chart = bars(
            &[Bar {
                label: "<b>".into(),
                title: "<script>alert(1)</script>".into(),
                stack: vec![(3, GREEN)],
            }],
            "c",
            "0 s",
            "1 s",
        )
        .into_string();
        assert!(
            chart.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{chart}"
        );
        assert!(!chart.contains("<script>"), "{chart}");
        assert!(!chart.contains("<b>"), "{chart}");
    }
}
