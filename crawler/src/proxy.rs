//! Fetching through a forward proxy.
//!
//! Lambda's traffic leaves from AWS address ranges, which many sites block;
//! a schedule can send its pages through an HTTP or HTTPS forward proxy
//! instead. The proxy is named in the event ([`ProxyRoute`]) or, so that
//! the event need not carry its credentials, in the crawler's own
//! environment ([`ENV_PROXY_URL`]).
//!
//! A proxy's URL usually carries a user and a password: [`ProxyUrl`] keeps
//! the password out of every `Debug` and `Display` output, so a request or
//! a configuration can be logged whole.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

/// Environment variable with the crawler's own proxy, used when an event's
/// [`ProxyRoute`] names no URL (a deployment fills it from a secret).
pub const ENV_PROXY_URL: &str = "FANFARE_CRAWLER_PROXY_URL";

/// A forward proxy's URL (`http://user:pass@proxy.example:8080`): `http`
/// or `https` (TLS to the proxy), with a host; the password is a secret.
///
/// `Debug` and `Display` show it with the password replaced by
/// `[redacted]`; [`ProxyUrl::expose`] gives the URL itself, for building a
/// client. It is serialized as the full URL (the event must carry it) and
/// deserialized from a string, checked as [`ProxyUrl::parse`] checks it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProxyUrl(Url);

/// Why a text is not a usable proxy URL. The message never quotes the
/// password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    /// Not a URL at all.
    #[error("is not a URL ({0})")]
    NotAUrl(String),
    /// A scheme other than http and https.
    #[error("has scheme {0:?}; a proxy must be http:// or https://")]
    Scheme(String),
    /// A SOCKS proxy: the crawler is built without SOCKS support.
    #[error("has scheme {0:?}; SOCKS proxies are not supported, use an http:// or https:// proxy")]
    Socks(String),
    /// No host to connect to.
    #[error("has no host")]
    NoHost,
    /// A path, query or fragment, which a proxy URL has no use for (often a
    /// sign that a page URL was given by mistake).
    #[error("must be only scheme, credentials, host and port (it has a path, query or fragment)")]
    NotBare,
}

impl ProxyUrl {
    /// Checks `raw` as a proxy URL.
    pub fn parse(raw: &str) -> Result<Self, ProxyUrlError> {
        let url = Url::parse(raw.trim()).map_err(|e| ProxyUrlError::NotAUrl(e.to_string()))?;
        match url.scheme() {
            "http" | "https" => {}
            s if s.starts_with("socks") => return Err(ProxyUrlError::Socks(s.to_string())),
            s => return Err(ProxyUrlError::Scheme(s.to_string())),
        }
        if url.host().is_none() {
            return Err(ProxyUrlError::NoHost);
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(ProxyUrlError::NotBare);
        }
        Ok(Self(url))
    }

    /// The URL itself, credentials included: for building a client, never
    /// for a log line.
    pub fn expose(&self) -> &Url {
        &self.0
    }

    /// The password, when there is one (to scrub it from error messages).
    pub(crate) fn password(&self) -> Option<&str> {
        self.0.password().filter(|p| !p.is_empty())
    }

    /// The URL with its password replaced by `[redacted]`.
    pub fn redacted(&self) -> String {
        let mut shown = self.0.clone();
        if self.password().is_some() {
            let _ = shown.set_password(Some("[redacted]"));
        }
        shown
            .as_str()
            .trim_end_matches('/')
            .replace("%5Bredacted%5D", "[redacted]")
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({})", self.redacted())
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::str::FromStr for ProxyUrl {
    type Err = ProxyUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for ProxyUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for ProxyUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(|e| serde::de::Error::custom(format!("proxy URL {e}")))
    }
}

/// When a page is fetched through its proxy.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyOn {
    /// Every fetch goes through the proxy (the default).
    #[default]
    Always,
    /// The page is fetched directly first, and again through the proxy
    /// (within the same attempt) only when the site answers 403 or 429 or
    /// the connection is refused or reset.
    Blocked,
}

impl ProxyOn {
    /// The word on the wire and in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyOn::Always => "always",
            ProxyOn::Blocked => "blocked",
        }
    }
}

/// How to fetch one page through a proxy: the event's `proxy`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyRoute {
    /// The proxy (`http://user:pass@proxy.example:8080`; a secret when it
    /// carries a password). Absent: the crawler's own proxy, from its
    /// environment (`FANFARE_CRAWLER_PROXY_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = "uri"))]
    pub url: Option<ProxyUrl>,
    /// `always` (the default) or `blocked`.
    #[serde(default)]
    pub on: ProxyOn,
}

/// `text` with `proxy`'s password (as written and percent-decoded)
/// replaced by `[redacted]`: for messages from libraries that may quote
/// what they were given.
pub(crate) fn scrub(text: String, proxy: &ProxyUrl) -> String {
    let Some(password) = proxy.password() else {
        return text;
    };
    let mut out = text;
    let decoded = percent_decode(password);
    for needle in [password, decoded.as_str()] {
        if needle.len() >= 3 {
            out = out.replace(needle, "[redacted]");
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_password_and_serde_keeps_it() {
        let proxy = ProxyUrl::parse("http://bob:hunter2-s3cret@proxy.example:8080").unwrap();
        let shown = format!("{proxy:?} {proxy}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("http://bob:[redacted]@proxy.example:8080"),
            "{shown}"
        );
        let json = serde_json::to_string(&proxy).unwrap();
        assert_eq!(json, r#""http://bob:hunter2-s3cret@proxy.example:8080/""#);
        assert_eq!(serde_json::from_str::<ProxyUrl>(&json).unwrap(), proxy);
        let plain = ProxyUrl::parse("https://proxy.example").unwrap();
        assert_eq!(plain.to_string(), "https://proxy.example");
    }

    #[test]
    fn unusable_proxy_urls_are_refused_without_quoting_the_password() {
        for (raw, want) in [
            ("not a url", "is not a URL"),
            ("ftp://u:pw-sekrit@proxy.example:21", "has scheme \"ftp\""),
            (
                "socks5://u:pw-sekrit@proxy.example:1080",
                "SOCKS proxies are not supported",
            ),
            (
                "http://u:pw-sekrit@proxy.example:8080/page?x=1",
                "must be only scheme",
            ),
            ("unix:/run/proxy.sock", "has scheme \"unix\""),
        ] {
            let error = ProxyUrl::parse(raw).unwrap_err().to_string();
            assert!(error.contains(want), "{raw}: {error}");
            assert!(!error.contains("sekrit"), "{error}");
        }
        let error = serde_json::from_str::<ProxyUrl>(r#""gopher://u:pw-sekrit@h""#).unwrap_err();
        assert!(!error.to_string().contains("sekrit"), "{error}");
    }

    #[test]
    fn scrub_removes_the_password_as_written_and_decoded() {
        let proxy = ProxyUrl::parse("http://u:p%40ss-w0rd@proxy.example:8080").unwrap();
        let text = "failed: p%40ss-w0rd and p@ss-w0rd".to_string();
        assert_eq!(scrub(text, &proxy), "failed: [redacted] and [redacted]");
    }

    #[test]
    fn a_route_without_url_means_the_crawlers_own_proxy() {
        let route: ProxyRoute = serde_json::from_str(r#"{"on":"blocked"}"#).unwrap();
        assert_eq!(route.url, None);
        assert_eq!(route.on, ProxyOn::Blocked);
        let route: ProxyRoute = serde_json::from_str(r#"{"url":"http://p.example:3128"}"#).unwrap();
        assert_eq!(route.on, ProxyOn::Always);
        assert!(serde_json::from_str::<ProxyRoute>(r#"{"on":"sometimes"}"#).is_err());
    }
}
