//! URLs as they may appear in logs, stored errors and API answers.
//!
//! Page-list URLs, page URLs and webhook URLs can carry credentials
//! (`https://user:pass@host/…`) or tokens in their query string
//! (`?key=…`, `?sig=…`). Wherever such a URL is logged or stored, it goes
//! through [`url`] first: userinfo removed, the query replaced by `?…`, the
//! fragment dropped. Path and host stay, so the URL still says which
//! resource was meant.

use url::Url;

/// `u` with userinfo removed, its query string replaced by `?…` and its
/// fragment dropped.
pub fn url(u: &Url) -> String {
    let mut shown = u.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_fragment(None);
    let had_query = shown.query().is_some();
    shown.set_query(None);
    let mut text = shown.to_string();
    if had_query {
        text.push_str("?…");
    }
    text
}

/// [`url`] for text that may not parse as a URL: what does not parse is cut
/// at the first `?` or `#`, and anything up to an `@` after the scheme is
/// dropped.
pub fn url_text(raw: &str) -> String {
    if let Ok(u) = Url::parse(raw.trim()) {
        return url(&u);
    }
    let (head, had_query) = match raw.find(['?', '#']) {
        Some(i) => (&raw[..i], raw[i..].starts_with('?')),
        None => (raw, false),
    };
    let head = match head.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => head.to_string(),
            }
        }
        None => head.to_string(),
    };
    if had_query {
        format!("{head}?…")
    } else {
        head
    }
}

/// A URL that is itself a secret (a webhook endpoint whose path or query
/// carries a token): `Debug` and `Display` print `[redacted]`, and the URL
/// is reached only through [`SecretUrl::expose`], where it is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(Url);

impl SecretUrl {
    /// Holds `u` as a secret.
    pub fn new(u: Url) -> Self {
        Self(u)
    }

    /// The URL itself, for sending a request to it; never for a log line or
    /// a stored message.
    pub fn expose(&self) -> &Url {
        &self.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `text` with every occurrence of `secret` (as written, and as
/// [`url`] would show it) replaced by `[redacted]`: for messages from
/// libraries that may quote the URL they were given.
pub fn scrub(text: &str, secret: &Url) -> String {
    let mut out = text.to_string();
    let raw = secret.as_str();
    let shown = url(secret);
    for needle in [raw, raw.trim_end_matches('/'), shown.as_str()] {
        if needle.len() > "http://".len() {
            out = out.replace(needle, "[redacted]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_query_and_fragment_never_show() {
        let u =
            Url::parse("https://bob:hunter2@shop.example.com/sitemap.xml?token=abc#top").unwrap();
        assert_eq!(url(&u), "https://shop.example.com/sitemap.xml?…");
        let u = Url::parse("https://shop.example.com/a/b").unwrap();
        assert_eq!(url(&u), "https://shop.example.com/a/b");
        let u = Url::parse("https://hooks.example.com/x?").unwrap();
        assert_eq!(url(&u), "https://hooks.example.com/x?…");
    }

    #[test]
    fn unparseable_text_is_cut_the_same_way() {
        assert_eq!(
            url_text("https://shop.example.com/p/1"),
            "https://shop.example.com/p/1"
        );
        assert_eq!(url_text("http://a:b@[bad/x?k=v"), "http://[bad/x?…");
        assert_eq!(url_text("not a url?secret=1"), "not a url?…");
    }

    #[test]
    fn a_secret_url_prints_as_redacted() {
        let u = SecretUrl::new(Url::parse("https://hooks.example.com/t/sekrit?sig=abc").unwrap());
        assert_eq!(format!("{u:?} {u}"), "[redacted] [redacted]");
        assert_eq!(u.expose().path(), "/t/sekrit");
    }

    #[test]
    fn scrub_removes_the_url_in_every_form_it_is_quoted() {
        let u = Url::parse("https://hooks.example.com/t/sekrit?sig=abc").unwrap();
        let text = "error sending request for url (https://hooks.example.com/t/sekrit?sig=abc): \
                    and https://hooks.example.com/t/sekrit?…";
        let clean = scrub(text, &u);
        assert!(!clean.contains("sekrit"), "{clean}");
        assert!(!clean.contains("sig=abc"), "{clean}");
    }
}
