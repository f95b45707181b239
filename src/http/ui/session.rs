//! Console sessions: a signed, expiring cookie that any replica accepts,
//! and the CSRF token of every form.
//!
//! The cookie's value is `v1.<expires>.<nonce>.<mac>`: `expires` in Unix
//! seconds, `nonce` 16 random bytes and `mac` the HMAC-SHA256 of
//! `v1.<expires>.<nonce>`, both base64url. The key is derived from the
//! admin token, so every replica with the same configuration accepts every
//! session without storing it; rotating the admin token signs everyone
//! out.
//!
//! Signing out deletes the cookie from the browser and revokes the session
//! for every replica ([`Revocations`]): its nonce is recorded in the ledger
//! until it would have expired, and each replica refuses a cookie whose
//! nonce is listed, reading the list again at most every
//! [`REVOCATIONS_TTL`] (the replica that signed it out refuses it at once).
//!
//! A form's CSRF token is the base64url HMAC of `csrf.` and the cookie's
//! value under the same key: a page from another site cannot read it, and
//! it is worthless with any other session, or once its session is revoked.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::ledger;

type HmacSha256 = Hmac<Sha256>;

/// The session cookie's name.
pub const COOKIE: &str = "fanfare_console";
/// How long a session lasts.
pub const LIFETIME: chrono::Duration = chrono::Duration::hours(12);

/// Why a session cookie was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Not of the cookie's shape.
    #[error("malformed session cookie")]
    Malformed,
    /// The signature does not verify (forged, or signed under another admin token).
    #[error("session cookie signature does not verify")]
    BadSignature,
    /// Past its expiry.
    #[error("session expired")]
    Expired,
}

/// Signs and verifies sessions and CSRF tokens with a key derived from the
/// admin token.
#[derive(Clone)]
pub struct SessionKey {
    key: [u8; 32],
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// A verified session: its cookie value (what the CSRF token is bound to),
/// its nonce (what a revocation names) and its expiry.
#[derive(Debug, Clone)]
pub struct Session {
    value: String,
    nonce: String,
    /// When it stops being accepted.
    pub expires: DateTime<Utc>,
}

impl Session {
    /// The nonce that tells this session from every other (base64url).
    pub fn nonce(&self) -> &str {
        &self.nonce
    }
}

impl SessionKey {
    /// The key of the sessions of a daemon whose admin token is `admin_token`.
    pub fn derive(admin_token: &str) -> Self {
        let mut mac = HmacSha256::new_from_slice(admin_token.as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(b"fanfare console session key v1");
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    /// A new session's cookie value, valid until `now` + [`LIFETIME`].
    pub fn issue(&self, now: DateTime<Utc>) -> String {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        self.issue_with(now + LIFETIME, &nonce)
    }

    fn issue_with(&self, expires: DateTime<Utc>, nonce: &[u8]) -> String {
        let body = format!(
            "v1.{}.{}",
            expires.timestamp(),
            URL_SAFE_NO_PAD.encode(nonce)
        );
        let sig = URL_SAFE_NO_PAD.encode(self.mac(&[body.as_bytes()]));
        format!("{body}.{sig}")
    }

    /// The session of a genuine, unexpired cookie value.
    pub fn verify(&self, value: &str, now: DateTime<Utc>) -> Result<Session, SessionError> {
        let (body, sig) = value.rsplit_once('.').ok_or(SessionError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| SessionError::Malformed)?;
        let expected = self.mac(&[body.as_bytes()]);
        if !bool::from(expected.as_slice().ct_eq(&sig)) {
            return Err(SessionError::BadSignature);
        }
        let mut parts = body.split('.');
        let (Some("v1"), Some(expires), Some(nonce), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SessionError::Malformed);
        };
        let expires = expires
            .parse()
            .ok()
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .ok_or(SessionError::Malformed)?;
        if now >= expires {
            return Err(SessionError::Expired);
        }
        Ok(Session {
            value: value.to_string(),
            nonce: nonce.to_string(),
            expires,
        })
    }

    /// The CSRF token of `session`'s forms.
    pub fn csrf(&self, session: &Session) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(&[b"csrf.", session.value.as_bytes()]))
    }

    /// Whether `token` is `session`'s CSRF token (compared in constant time).
    pub fn csrf_ok(&self, session: &Session, token: &str) -> bool {
        let expected = self.csrf(session);
        bool::from(expected.as_bytes().ct_eq(token.as_bytes()))
    }
}

/// How long a replica answers from the list of revoked sessions it read
/// before reading it again: how long a session signed out on one replica
/// may still be accepted by another.
pub const REVOCATIONS_TTL: Duration = Duration::from_secs(2);

/// The sessions signed out before they expired, as this replica knows them:
/// read from the ledger at most once per [`REVOCATIONS_TTL`] (callers that
/// arrive while it is read wait for it and share the answer).
#[derive(Debug, Default)]
pub struct Revocations {
    known: Mutex<Option<(Instant, Arc<HashSet<String>>)>>,
}

impl Revocations {
    /// Whether `session` was signed out (on any replica, up to
    /// [`REVOCATIONS_TTL`] ago).
    pub async fn is_revoked(&self, pool: &PgPool, session: &Session) -> Result<bool, sqlx::Error> {
        let mut known = self.known.lock().await;
        let fresh = known
            .as_ref()
            .filter(|(at, _)| at.elapsed() < REVOCATIONS_TTL)
            .map(|(_, set)| set.clone());
        let set = match fresh {
            Some(set) => set,
            None => {
                let set: Arc<HashSet<String>> = Arc::new(
                    ledger::revoked_console_sessions(pool)
                        .await?
                        .into_iter()
                        .collect(),
                );
                *known = Some((Instant::now(), set.clone()));
                set
            }
        };
        Ok(set.contains(session.nonce()))
    }

    /// Signs `session` out for every replica: recorded in the ledger, and
    /// refused by this replica from now on.
    pub async fn revoke(&self, pool: &PgPool, session: &Session) -> Result<(), sqlx::Error> {
        ledger::revoke_console_session(pool, session.nonce(), session.expires).await?;
        // After the commit, under the lock: a reading of the list that
        // started before the commit has finished, and this one is added to it.
        let mut known = self.known.lock().await;
        if let Some((_, set)) = known.as_mut() {
            Arc::make_mut(set).insert(session.nonce().to_string());
        }
        Ok(())
    }
}

/// The value of the cookie `name` in a `Cookie` request header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim())
    })
}

/// The `Set-Cookie` value of a session, `Secure` when the console is served
/// over https.
pub fn set_cookie(value: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={value}; Path=/ui; Max-Age={}; HttpOnly; SameSite=Strict{}",
        LIFETIME.num_seconds(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that deletes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn an_issued_session_verifies_until_it_expires() {
        let key = SessionKey::derive("an admin token of at least 32 characters");
        let now = at("2026-11-26T03:00:00Z");
        let value = key.issue(now);
        let session = key.verify(&value, now).unwrap();
        assert_eq!(session.expires, now + LIFETIME);
        assert!(key
            .verify(&value, now + LIFETIME - chrono::Duration::seconds(1))
            .is_ok());
        assert_eq!(
            key.verify(&value, now + LIFETIME).unwrap_err(),
            SessionError::Expired
        );
    }

    #[test]
    fn sessions_of_another_admin_token_or_edited_ones_are_refused() {
        let key = SessionKey::derive("an admin token of at least 32 characters");
        let other = SessionKey::derive("another admin token of 32 characters!");
        let now = at("2026-11-26T03:00:00Z");
        assert_eq!(
            key.verify(&other.issue(now), now).unwrap_err(),
            SessionError::BadSignature
        );
        // A later expiry written into a genuine cookie no longer verifies.
        let value = key.issue(now);
        let exp = (now + LIFETIME).timestamp().to_string();
        let later = (now + LIFETIME * 10).timestamp().to_string();
        let edited = value.replacen(&exp, &later, 1);
        assert_ne!(edited, value);
        assert_eq!(
            key.verify(&edited, now).unwrap_err(),
            SessionError::BadSignature
        );
        for junk in ["", "v1", "v1.x.y.z", "a.b.c.!!!", "v1.1.2.3.4.5"] {
            assert!(key.verify(junk, now).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn a_csrf_token_is_bound_to_its_session() {
        let key = SessionKey::derive("an admin token of at least 32 characters");
        let now = at("2026-11-26T03:00:00Z");
        let a = key.verify(&key.issue(now), now).unwrap();
        let b = key.verify(&key.issue(now), now).unwrap();
        assert_ne!(a.nonce(), b.nonce(), "each sign-in is a session of its own");
        let token = key.csrf(&a);
        assert!(key.csrf_ok(&a, &token));
        assert!(!key.csrf_ok(&b, &token));
        assert!(!key.csrf_ok(&a, ""));
        assert!(!key.csrf_ok(&a, &token[1..]));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        assert_eq!(
            cookie("a=1; fanfare_console=v1.2.3.4; b=2", COOKIE),
            Some("v1.2.3.4")
        );
        assert_eq!(cookie("a=1", COOKIE), None);
        assert!(set_cookie("x", true).ends_with("; Secure"));
        assert!(!set_cookie("x", false).contains("Secure"));
        assert!(set_cookie("x", false).contains("HttpOnly; SameSite=Strict"));
    }
}
