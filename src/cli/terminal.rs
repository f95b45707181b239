//! Third-party text printed to a terminal. Page titles, fields and error
//! messages come from sites and services fanfare does not control; printed
//! as they are, their control characters would drive the terminal (move
//! the cursor, rewrite what is shown, set the window title, ring the bell,
//! and worse on some terminals). On a terminal, the client commands show
//! each control character as an escape instead:
//!
//! - C0 controls (U+0000-U+001F) as `\t`, `\r`, `\n` or `\xNN` (ESC is
//!   `\x1b`, which leaves an ANSI escape sequence as harmless text), DEL as
//!   `\x7f`, C1 controls (U+0080-U+009F, CSI among them) as `\u{9b}`, and
//!   bytes that are not UTF-8 as `\xNN`;
//! - newline is kept where it ends a line of the output (a row of a table or
//!   an export), and escaped inside a value (a CSV field, a table cell).
//!
//! Files (`-o`), pipes and `--json` get the bytes as they are.

use std::fmt::Write as _;

/// Appends `c` as the terminal should show it.
fn push_shown(out: &mut String, c: char) {
    match c {
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        '\n' => out.push_str("\\n"),
        '\u{0}'..='\u{1f}' | '\u{7f}' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        '\u{80}'..='\u{9f}' => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// Whether `c` is shown escaped.
fn is_control(c: char) -> bool {
    c.is_ascii_control() || ('\u{80}'..='\u{9f}').contains(&c)
}

/// `value` on one line with every control character escaped (a table
/// cell, a field of `runs show`).
pub fn line(value: &str) -> String {
    if !value.chars().any(is_control) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        push_shown(&mut out, c);
    }
    out
}

/// `text` with every control character escaped but newline (lines of
/// output).
pub fn text(text: &str) -> String {
    if !text.chars().any(|c| c != '\n' && is_control(c)) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\n' {
            out.push(c);
        } else {
            push_shown(&mut out, c);
        }
    }
    out
}

/// Escapes a streamed export for a terminal, chunk by chunk: UTF-8 split
/// across chunks is decoded whole, and in CSV a newline inside a quoted
/// field is escaped while the newline that ends a record is kept. (JSON
/// Lines have no raw newline inside a value: JSON escapes it.)
#[derive(Debug)]
pub struct Escaper {
    csv: bool,
    in_quotes: bool,
    /// The start of a UTF-8 character whose end is in the next chunk.
    pending: Vec<u8>,
}

impl Escaper {
    /// An escaper for CSV (`csv`) or JSON Lines.
    pub fn new(csv: bool) -> Self {
        Self {
            csv,
            in_quotes: false,
            pending: Vec::new(),
        }
    }

    /// The next chunk, as the terminal should show it.
    pub fn push(&mut self, chunk: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(chunk);
        let mut out = String::with_capacity(bytes.len() + 16);
        let mut rest = &bytes[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.shown(&mut out, s);
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // The bytes up to `valid_up_to` are UTF-8.
                    self.shown(&mut out, std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // A character cut by the chunk's end.
                        None => {
                            self.pending = after.to_vec();
                            break;
                        }
                        Some(n) => {
                            for b in &after[..n] {
                                let _ = write!(out, "\\x{b:02x}");
                            }
                            rest = &after[n..];
                        }
                    }
                }
            }
        }
        out
    }

    /// What is left once the export has ended (a cut character's bytes).
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        for b in std::mem::take(&mut self.pending) {
            let _ = write!(out, "\\x{b:02x}");
        }
        out
    }

    fn shown(&mut self, out: &mut String, s: &str) {
        for c in s.chars() {
            if self.csv && c == '"' {
                // RFC 4180 doubles a quote inside a quoted field: toggling
                // twice leaves the state as it was.
                self.in_quotes = !self.in_quotes;
            }
            if c == '\n' && !self.in_quotes {
                out.push('\n');
            } else {
                push_shown(out, c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped_and_other_text_is_left_alone() {
        assert_eq!(
            line("a\x1b[31mred\x07\tb\r\nc\u{9b}2J\x7f"),
            "a\\x1b[31mred\\x07\\tb\\r\\nc\\u{9b}2J\\x7f"
        );
        assert_eq!(line("Café « ok » — 東京"), "Café « ok » — 東京");
        assert_eq!(
            text("row 1\x1b]0;pwned\x07\nrow 2\n"),
            "row 1\\x1b]0;pwned\\x07\nrow 2\n"
        );
    }

    #[test]
    fn an_export_keeps_its_record_newlines_and_escapes_those_inside_csv_fields() {
        let csv = "url,title\nhttps://a/1,\"two\nlines \"\"q\"\" \x1b[2J\"\nhttps://a/2,ok\r\n";
        let mut e = Escaper::new(true);
        let shown = e.push(csv.as_bytes()) + &e.finish();
        assert_eq!(
            shown,
            "url,title\nhttps://a/1,\"two\\nlines \"\"q\"\" \\x1b[2J\"\nhttps://a/2,ok\\r\n"
        );
        let jsonl = "{\"title\":\"a\\u001b b\u{9b}\"}\n{\"title\":\"c\"}\n";
        let mut e = Escaper::new(false);
        assert_eq!(
            e.push(jsonl.as_bytes()),
            "{\"title\":\"a\\u001b b\\u{9b}\"}\n{\"title\":\"c\"}\n"
        );
    }

    #[test]
    fn characters_cut_between_chunks_are_decoded_whole_and_invalid_bytes_escaped() {
        let bytes = "é\u{9b}x".as_bytes();
        for cut in 0..=bytes.len() {
            let mut e = Escaper::new(false);
            let shown = e.push(&bytes[..cut]) + &e.push(&bytes[cut..]) + &e.finish();
            assert_eq!(shown, "é\\u{9b}x", "cut at {cut}");
        }
        let mut e = Escaper::new(false);
        assert_eq!(e.push(b"a\xff\x9bb\xc3"), "a\\xff\\x9bb");
        assert_eq!(e.finish(), "\\xc3");
    }
}
