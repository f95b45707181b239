//! Logging: JSON lines in production, human-readable in a terminal.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressDrawTarget};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=warn,aws_config=warn";

/// Installs the global subscriber. `RUST_LOG` filters (default
/// [`DEFAULT_FILTER`]); `FANFARE_LOG_FORMAT=json|pretty` overrides the
/// choice made from whether standard error is a terminal.
pub fn init() {
    init_with(DEFAULT_FILTER)
}

/// [`init`] with another filter for when `RUST_LOG` is not set.
pub fn init_with(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = match std::env::var("FANFARE_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("pretty") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_target(false)
                    .with_writer(|| AboveLiveLines),
            )
            .try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// The error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

static LIVE_LINES: OnceLock<MultiProgress> = OnceLock::new();

/// The live lines (progress bars) drawn at the bottom of standard error,
/// created on first use. Human-readable log lines and [`suspend`]ed output
/// are printed above them, so neither garbles the other. Only `fanfare dev`
/// draws them; the daemon never does.
pub fn live_lines() -> &'static MultiProgress {
    LIVE_LINES.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// Runs `f`, which prints to the terminal, with the live lines (if any)
/// cleared, and draws them again afterwards. `f` must not log.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match LIVE_LINES.get() {
        Some(lines) => lines.suspend(f),
        None => f(),
    }
}

/// Standard error, written above the live lines.
struct AboveLiveLines;

impl Write for AboveLiveLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        suspend(|| std::io::stderr().write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        suspend(|| std::io::stderr().write_all(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
