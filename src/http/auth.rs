//! The admin token: who presents it, whether it is right, and how a client
//! guessing it is slowed down. The console's sign-in and the admin API's
//! bearer check both go through [`AdminAuth::verify`], so their wrong
//! tokens count together.
//!
//! - **The client** is the connection's peer address, unless that peer is
//!   one of `server.trusted_proxies` (the load balancer): then it is the
//!   nearest address in `X-Forwarded-For`, read from the right, that is not
//!   a trusted proxy. Entries left of it were written by the client itself
//!   and are never believed. Behind a load balancer that is not listed,
//!   every client shares the balancer's few addresses, and one guesser
//!   locks all of them out.
//! - **Wrong tokens** are counted per client ([`FailureThrottle`]): the
//!   first `security.lockout_after_failures` (10) are answered 401 at once,
//!   the last of them locking the client out for `security.lockout_first`
//!   (1 s); each wrong token after a lockout doubles it, up to
//!   `security.lockout_max` (15 min). A client's count is forgotten after an
//!   hour without a wrong token, or when it presents the right one. A request without a token is not a guess and is not counted.
//! - **A locked-out client is refused (429, `Retry-After`) whatever it
//!   presents, the right token included**: its token is not even compared.
//!   Accepting the right token during a lockout would tell a guesser which
//!   guess was right, and the lockout would slow nothing down. A client
//!   that has not been presenting wrong tokens has no record and is never
//!   delayed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use super::throttle::{Attempt, Failure, FailureThrottle, LockoutPolicy, LogThrottle};
use super::AppState;
use crate::config::Settings;

/// Where the admin token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The console's sign-in form.
    ConsoleSignIn,
    /// An admin API request's bearer token.
    Api,
}

impl Surface {
    /// The label of logs and metrics: `console` or `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            Surface::ConsoleSignIn => "console",
            Surface::Api => "api",
        }
    }
}

/// Why the admin token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// None was presented (not counted as a guess).
    Missing,
    /// A wrong one (counted against the client).
    Wrong,
    /// The client is locked out after too many wrong tokens; what it
    /// presented was not looked at.
    LockedOut {
        /// When it may try again.
        retry_after: Duration,
    },
}

impl Refused {
    /// Whole seconds for a `Retry-After` header: the lockout left, rounded
    /// up, at least 1.
    pub fn retry_after_secs(retry_after: Duration) -> u64 {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// The admin token and the record of wrong ones.
pub struct AdminAuth {
    token: SecretString,
    trusted_proxies: Vec<IpNet>,
    failures: FailureThrottle,
    refused_log: LogThrottle,
    lockout_log: LogThrottle,
}

impl fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminAuth")
            .field("trusted_proxies", &self.trusted_proxies)
            .field("policy", self.failures.policy())
            .finish_non_exhaustive()
    }
}

impl AdminAuth {
    /// The admin token, trusted proxies and lockout of `settings`.
    pub fn new(settings: &Settings) -> Self {
        Self {
            token: settings.security.admin_token.clone(),
            trusted_proxies: settings.server.trusted_proxies.clone(),
            failures: FailureThrottle::new(LockoutPolicy {
                first_lockout: settings.security.lockout_first,
                max_lockout: settings.security.lockout_max,
                // Never forget a client while it may still be locked out.
                forget_after: settings.security.lockout_max.max(Duration::from_secs(3600)),
                ..LockoutPolicy::after(settings.security.lockout_after_failures)
            }),
            refused_log: LogThrottle::new(Duration::from_secs(60)),
            lockout_log: LogThrottle::new(Duration::from_secs(60)),
        }
    }

    /// Where a request came from, by its headers and connection.
    pub fn client(&self, headers: &HeaderMap, extensions: &Extensions) -> Client {
        let peer = extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Client {
            peer,
            ip: client_address(
                peer.map(|p| p.ip()),
                &forwarded.join(","),
                &self.trusted_proxies,
            ),
            forwarded_for: (!forwarded.is_empty())
                .then(|| forwarded.join(", ").chars().take(200).collect()),
        }
    }

    /// Whether `presented` is the admin token, for `client` on `surface`;
    /// counts a wrong one, and refuses a locked-out client without looking.
    pub fn verify(
        &self,
        client: &Client,
        presented: Option<&str>,
        surface: Surface,
    ) -> Result<(), Refused> {
        let ip = client.ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let now = Instant::now();
        let attempt = match presented.filter(|t| !t.is_empty()) {
            Some(presented) => {
                let expected = self.token.expose_secret().as_bytes();
                self.failures
                    .attempt(ip, now, || bool::from(presented.as_bytes().ct_eq(expected)))
            }
            // No token is no guess: refused, not counted (429 all the same
            // while the client is locked out).
            None => match self.failures.locked(ip, now) {
                Some(left) => Attempt::LockedOut(left),
                None => return Err(Refused::Missing),
            },
        };
        match attempt {
            Attempt::Right => Ok(()),
            Attempt::LockedOut(retry_after) => {
                metrics::counter!("fanfare_admin_token_refused_total", "surface" => surface.as_str(), "reason" => "locked_out")
                    .increment(1);
                tracing::debug!(
                    %client,
                    surface = surface.as_str(),
                    retry_after_ms = retry_after.as_millis() as u64,
                    "admin token not looked at: the client is locked out"
                );
                Err(Refused::LockedOut { retry_after })
            }
            Attempt::Wrong(failure) => {
                self.log_wrong(client, surface, failure);
                Err(Refused::Wrong)
            }
        }
    }

    fn log_wrong(&self, client: &Client, surface: Surface, failure: Failure) {
        metrics::counter!("fanfare_admin_token_refused_total", "surface" => surface.as_str(), "reason" => "wrong")
            .increment(1);
        tracing::debug!(
            %client,
            surface = surface.as_str(),
            failures = failure.failures,
            "admin token refused: wrong token"
        );
        if let Some(refused) = self.refused_log.hit() {
            tracing::warn!(
                refused,
                last_client = %client,
                "wrong admin tokens (console sign-ins and API requests) since the last such warning (each one is logged at DEBUG)"
            );
        }
        if let Some(locked_for) = failure.locked_for {
            if let Some(lockouts) = self.lockout_log.hit() {
                tracing::warn!(
                    %client,
                    failures = failure.failures,
                    locked_for_s = locked_for.as_secs_f64(),
                    lockouts,
                    "a client presenting wrong admin tokens is locked out (lockouts since the last such warning: {lockouts})"
                );
            }
        }
    }

    /// The load balancers and proxies whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.trusted_proxies
    }
}

/// The client's address: `peer`, unless it is a trusted proxy; then the
/// rightmost address of `forwarded` (X-Forwarded-For, comma-separated)
/// that is not a trusted proxy. When an entry cannot be read, the last
/// trusted hop is taken for the client (its clients then share it).
pub fn client_address(peer: Option<IpAddr>, forwarded: &str, trusted: &[IpNet]) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&unmapped(*ip)));
    let mut client = peer?;
    if !is_trusted(&client) {
        return Some(client);
    }
    for entry in forwarded
        .rsplit(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let Some(hop) = parse_hop(entry) else {
            return Some(client);
        };
        client = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    Some(client)
}

/// An IPv4-mapped IPv6 address as its IPv4 address.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// One X-Forwarded-For entry: `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]:443`
/// or `1.2.3.4:5678`.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .or_else(|_| entry.trim_matches(['[', ']']).parse::<IpAddr>())
        .ok()
        .map(unmapped)
}

/// Where a request came from, for the lockout and the log.
#[derive(Debug, Clone)]
pub struct Client {
    /// The connection's peer.
    pub peer: Option<SocketAddr>,
    /// The client's address ([`client_address`]).
    pub ip: Option<IpAddr>,
    /// The `X-Forwarded-For` it came with, as sent (at most 200 characters).
    pub forwarded_for: Option<String>,
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer {
            Some(peer) => write!(f, "{peer}")?,
            None => f.write_str("unknown")?,
        }
        if let Some(xff) = &self.forwarded_for {
            write!(f, " (X-Forwarded-For: {xff})")?;
        }
        if let (Some(ip), Some(peer)) = (self.ip, self.peer) {
            if ip != peer.ip() {
                write!(f, " as {ip}")?;
            }
        }
        Ok(())
    }
}

impl<S> FromRequestParts<S> for Client
where
    S: Send + Sync,
    AppState: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(AppState::from_ref(state)
            .auth
            .client(&parts.headers, &parts.extensions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let vpc: Vec<IpNet> = vec!["10.0.0.0/16".parse().unwrap()];
        let peer = Some(ip("10.0.3.7"));
        let cases = [
            // Not behind a trusted proxy: the header is the client's own words.
            (
                Some(ip("198.51.100.9")),
                "203.0.113.1",
                &[][..],
                Some(ip("198.51.100.9")),
            ),
            (
                Some(ip("198.51.100.9")),
                "203.0.113.1",
                &vpc[..],
                Some(ip("198.51.100.9")),
            ),
            // Behind the load balancer: the address it appended.
            (peer, "203.0.113.1", &vpc[..], Some(ip("203.0.113.1"))),
            // What the client wrote itself (left of it) is ignored.
            (
                peer,
                "1.1.1.1, 203.0.113.1",
                &vpc[..],
                Some(ip("203.0.113.1")),
            ),
            // Trusted hops are skipped, from the right.
            (
                peer,
                "203.0.113.1, 10.0.9.9",
                &vpc[..],
                Some(ip("203.0.113.1")),
            ),
            (peer, "[2001:db8::7]:443", &vpc[..], Some(ip("2001:db8::7"))),
            (
                peer,
                "::ffff:203.0.113.1",
                &vpc[..],
                Some(ip("203.0.113.1")),
            ),
            // No header, or one that cannot be read: the proxy itself.
            (peer, "", &vpc[..], peer),
            (peer, "203.0.113.1, junk", &vpc[..], peer),
            // Every hop trusted: the leftmost.
            (peer, "10.0.0.1, 10.0.0.2", &vpc[..], Some(ip("10.0.0.1"))),
            (None, "203.0.113.1", &vpc[..], None),
        ];
        for (peer, xff, trusted, want) in cases {
            assert_eq!(client_address(peer, xff, trusted), want, "{peer:?} {xff:?}");
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(Refused::retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(Refused::retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(Refused::retry_after_secs(Duration::from_secs(4)), 4);
        assert_eq!(Refused::retry_after_secs(Duration::ZERO), 1);
    }
}
