//! Task tokens: the per-attempt bearer token a crawler presents with its
//! report.
//!
//! A token is `v1.<run>.<page>.<attempt>.<expires>.<mac>`, where `mac` is
//! the base64url HMAC-SHA256, under `callback_secret`, of everything before
//! it. It binds the report to one run, page and attempt, expires some grace
//! after the attempt's deadline, and is verified in constant time. No state
//! is stored: any replica can verify any token.
//!
//! Rotation: a signer may also hold earlier secrets
//! (`[security] previous_callback_secrets`). Tokens are signed with the
//! current secret only; a token that verifies under any held secret is
//! accepted, so a rolling deploy that changes the secret refuses no crawler
//! still holding a token from a replica with the old one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// What a valid token vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// The run.
    pub run_id: Uuid,
    /// The page.
    pub page_id: i64,
    /// The attempt.
    pub attempt: i32,
    /// When the token stops being accepted.
    pub expires: DateTime<Utc>,
}

/// Why a token was refused (all of them answer 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not of the token's shape.
    #[error("malformed task token")]
    Malformed,
    /// The signature does not verify.
    #[error("task token signature does not verify")]
    BadSignature,
    /// Past its expiry.
    #[error("task token expired")]
    Expired,
}

/// Signs task tokens with one secret and verifies them with it and any
/// earlier secrets still accepted.
#[derive(Clone)]
pub struct TokenSigner {
    key: SecretString,
    previous: Vec<SecretString>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    /// A signer keyed with `callback_secret`.
    pub fn new(key: SecretString) -> Self {
        Self {
            key,
            previous: Vec::new(),
        }
    }

    /// This signer, also accepting tokens signed with any of `previous`
    /// (never signing with them).
    pub fn accepting(mut self, previous: impl IntoIterator<Item = SecretString>) -> Self {
        self.previous.extend(previous);
        self
    }

    fn mac(&self) -> HmacSha256 {
        mac_for(&self.key)
    }

    /// A token for `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let body = format!(
            "v1.{}.{}.{}.{}",
            claims.run_id.simple(),
            claims.page_id,
            claims.attempt,
            claims.expires.timestamp()
        );
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{body}.{sig}")
    }

    /// The claims of a genuine, unexpired token.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        let (body, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        // verify_slice compares in constant time. Every held key is tried,
        // whichever matches, so the time taken does not say which one did.
        let verified = std::iter::once(&self.key)
            .chain(&self.previous)
            .fold(false, |ok, key| {
                let mut mac = mac_for(key);
                mac.update(body.as_bytes());
                mac.verify_slice(&sig).is_ok() | ok
            });
        if !verified {
            return Err(TokenError::BadSignature);
        }
        let mut parts = body.split('.');
        let (Some("v1"), Some(run), Some(page), Some(attempt), Some(exp), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let claims = Claims {
            run_id: Uuid::parse_str(run).map_err(|_| TokenError::Malformed)?,
            page_id: page.parse().map_err(|_| TokenError::Malformed)?,
            attempt: attempt.parse().map_err(|_| TokenError::Malformed)?,
            expires: exp
                .parse()
                .ok()
                .and_then(|s| DateTime::from_timestamp(s, 0))
                .ok_or(TokenError::Malformed)?,
        };
        if now > claims.expires {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

fn mac_for(key: &SecretString) -> HmacSha256 {
    HmacSha256::new_from_slice(key.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(key: &str) -> TokenSigner {
        TokenSigner::new(SecretString::from(key.to_string()))
    }

    fn claims() -> Claims {
        Claims {
            run_id: Uuid::now_v7(),
            page_id: 42,
            attempt: 2,
            expires: "2026-11-26T03:20:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn a_signed_token_verifies_to_its_claims() {
        let s = signer("0123456789abcdef0123456789abcdef");
        let c = claims();
        let now = "2026-11-26T03:00:00Z".parse().unwrap();
        assert_eq!(s.verify(&s.sign(&c), now), Ok(c));
    }

    #[test]
    fn tokens_from_another_key_or_edited_claims_are_refused() {
        let s = signer("0123456789abcdef0123456789abcdef");
        let other = signer("fedcba9876543210fedcba9876543210");
        let c = claims();
        let now = "2026-11-26T03:00:00Z".parse().unwrap();
        assert_eq!(
            s.verify(&other.sign(&c), now),
            Err(TokenError::BadSignature)
        );
        let token = s.sign(&c);
        let edited = token.replacen(".42.", ".43.", 1);
        assert_eq!(s.verify(&edited, now), Err(TokenError::BadSignature));
        assert_eq!(s.verify("garbage", now), Err(TokenError::Malformed));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let s = signer("0123456789abcdef0123456789abcdef");
        let c = claims();
        let later = "2026-11-26T03:20:01Z".parse().unwrap();
        assert_eq!(s.verify(&s.sign(&c), later), Err(TokenError::Expired));
    }

    #[test]
    fn tokens_signed_with_a_previous_secret_are_accepted_while_it_is_listed() {
        let old = "0123456789abcdef0123456789abcdef";
        let new = "fedcba9876543210fedcba9876543210";
        let rotated = signer(new).accepting([SecretString::from(old.to_string())]);
        let c = claims();
        let now = "2026-11-26T03:00:00Z".parse().unwrap();
        assert_eq!(rotated.verify(&signer(old).sign(&c), now), Ok(c));
        assert_eq!(rotated.verify(&signer(new).sign(&c), now), Ok(c));
        assert_eq!(
            signer(new).verify(&signer(old).sign(&c), now),
            Err(TokenError::BadSignature),
            "once the old secret is no longer listed, its tokens are refused"
        );
        let stranger = signer("00000000000000000000000000000000");
        assert_eq!(
            rotated.verify(&stranger.sign(&c), now),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn new_tokens_are_signed_with_the_current_secret_only() {
        let old = "0123456789abcdef0123456789abcdef";
        let new = "fedcba9876543210fedcba9876543210";
        let rotated = signer(new).accepting([SecretString::from(old.to_string())]);
        let c = claims();
        let now = "2026-11-26T03:00:00Z".parse().unwrap();
        let token = rotated.sign(&c);
        assert_eq!(token, signer(new).sign(&c));
        assert_eq!(signer(new).verify(&token, now), Ok(c));
        assert_eq!(
            signer(old).verify(&token, now),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn a_previous_secret_does_not_extend_an_expired_token() {
        let old = "0123456789abcdef0123456789abcdef";
        let rotated = signer("fedcba9876543210fedcba9876543210")
            .accepting([SecretString::from(old.to_string())]);
        let later = "2026-11-26T03:20:01Z".parse().unwrap();
        assert_eq!(
            rotated.verify(&signer(old).sign(&claims()), later),
            Err(TokenError::Expired)
        );
    }
}
