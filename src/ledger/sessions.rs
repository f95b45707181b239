//! Statements on the `revoked_console_sessions` table: console sessions
//! signed out before they expired.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// Records that the session `nonce`, valid until `expires_at`, was signed
/// out, and deletes the records of sessions that have expired since.
pub async fn revoke_console_session<'e, E: PgExecutor<'e>>(
    db: E,
    nonce: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "with expired as (
             delete from revoked_console_sessions where expires_at <= now())
         insert into revoked_console_sessions (nonce, expires_at) values ($1, $2)
         on conflict (nonce) do nothing",
    )
    .bind(nonce)
    .bind(expires_at)
    .execute(db)
    .await?;
    Ok(())
}

/// The nonces of the sessions signed out that have not expired yet.
pub async fn revoked_console_sessions<'e, E: PgExecutor<'e>>(
    db: E,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("select nonce from revoked_console_sessions where expires_at > now()")
        .fetch_all(db)
        .await
}
