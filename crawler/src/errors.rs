//! Errors as text: the chain of causes a failure reports, for crawl
//! errors and failed callbacks alike.

use std::error::Error as StdError;

/// The error and all its causes, outermost first. `io::Error::source`
/// skips the error an `io::Error` wraps (and tokio-rustls wraps a rustls
/// error in an `io::Error` inside another), so descend into those explicitly.
pub(crate) fn causes<'a>(error: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut current = Some(error);
    while let Some(err) = current {
        out.push(err);
        current = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    out
}

/// The error and its causes, joined with ": ", skipping repeats (an
/// `io::Error` displays the same text as the error it wraps).
pub(crate) fn chain_text(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for err in causes(error) {
        let text = err.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
