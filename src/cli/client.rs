//! The daemon's API as the command line calls it: where it is, the admin
//! token, and errors that name the URL and what the daemon answered.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::ApiArgs;
use crate::config::{Settings, CONFIG_TOML_ENV};
use crate::telemetry::error_chain;

/// The address used when neither `--url` nor a configuration gives one
/// (`fanfare dev` listens there when the port is free).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// The environment variable holding the admin token.
pub const ADMIN_TOKEN_ENV: &str = "FANFARE_ADMIN_TOKEN";

/// Why a client command could not do its work (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command was given something it cannot use.
    #[error("{0}")]
    Usage(String),
    /// The daemon could not be reached.
    #[error("could not reach {url}: {reason} (is `fanfare serve` running there? set --url, FANFARE_URL or the configuration's server.listen)")]
    Connection {
        /// The URL requested.
        url: String,
        /// What went wrong, with its causes.
        reason: String,
    },
    /// The daemon answered with an error.
    #[error("{method} {url} answered {status}: {message}")]
    Api {
        /// The request's method.
        method: &'static str,
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The daemon's `error`, or the body.
        message: String,
    },
    /// Writing the output failed.
    #[error("{0}")]
    Output(String),
}

/// A client of one daemon's admin API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: SecretString,
    http: reqwest::Client,
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`) with `token`.
    pub fn new(base: &str, token: SecretString) -> Result<Self, CliError> {
        let base = base.trim_end_matches('/').to_string();
        let parsed = url::Url::parse(&base)
            .map_err(|e| CliError::Usage(format!("--url {base:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(CliError::Usage(format!(
                "--url {base:?} must be an http:// or https:// URL"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| CliError::Usage(format!("HTTP client: {}", error_chain(&e))))?;
        Ok(Self { base, token, http })
    }

    /// The client `args` describe: URL and token from the flags, the
    /// environment, or the configuration (read only when needed).
    pub fn from_args(args: &ApiArgs) -> Result<Self, CliError> {
        let env_token = std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| SecretString::from(t.trim().to_string()));
        let url = args.url.clone().filter(|u| !u.trim().is_empty());
        let has_config = args.config.is_some() || std::env::var_os(CONFIG_TOML_ENV).is_some();
        let settings = if (url.is_none() || env_token.is_none()) && has_config {
            Some(load(args)?)
        } else {
            None
        };
        let url = url
            .or_else(|| settings.as_ref().map(|s| listen_url(s.server.listen)))
            .unwrap_or_else(|| DEFAULT_URL.to_string());
        let token = env_token
            .or_else(|| settings.map(|s| s.security.admin_token))
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "no admin token: set {ADMIN_TOKEN_ENV}, or pass --config (or FANFARE_CONFIG) naming the daemon's configuration"
                ))
            })?;
        Self::new(&url, token)
    }

    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GETs `path` (e.g. `/v1/runs`) as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        let url = self.url(path);
        let req = self.http.get(&url).timeout(Duration::from_secs(30));
        json(self.send("GET", &url, req).await?, "GET", &url).await
    }

    /// POSTs to `path` with no body; returns the JSON answer.
    pub async fn post(&self, path: &str) -> Result<Value, CliError> {
        let url = self.url(path);
        let req = self.http.post(&url).timeout(Duration::from_secs(30));
        json(self.send("POST", &url, req).await?, "POST", &url).await
    }

    /// GETs `path` and returns the response, its status checked, for the
    /// caller to read as a stream (no overall timeout).
    pub async fn get_stream(&self, path: &str) -> Result<reqwest::Response, CliError> {
        let url = self.url(path);
        let req = self.http.get(&url);
        self.send("GET", &url, req).await
    }

    async fn send(
        &self,
        method: &'static str,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, CliError> {
        let resp = req
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| CliError::Connection {
                url: url.to_string(),
                reason: error_chain(&e.without_url()),
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(300).collect());
        Err(CliError::Api {
            method,
            url: url.to_string(),
            status: status.as_u16(),
            message,
        })
    }
}

async fn json(resp: reqwest::Response, method: &'static str, url: &str) -> Result<Value, CliError> {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| CliError::Connection {
        url: url.to_string(),
        reason: error_chain(&e.without_url()),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| CliError::Api {
        method,
        url: url.to_string(),
        status,
        message: format!("the answer is not JSON: {e}"),
    })
}

fn load(args: &ApiArgs) -> Result<Settings, CliError> {
    let what = if std::env::var_os(CONFIG_TOML_ENV).is_some() {
        CONFIG_TOML_ENV.to_string()
    } else {
        args.config
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    Settings::load(args.config.as_deref()).map_err(|e| CliError::Usage(format!("{what}: {e}")))
}

/// The URL of a daemon listening on `addr`: loopback when it listens on
/// every address.
pub fn listen_url(mut addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}
