//! The Postgres ledger: every SQL statement fanfare runs lives here, split
//! by table ([`runs`], [`pages`], [`changes`], [`outbox`], [`schedules`],
//! [`sessions`]), and [`retention`]'s deletion of old runs.
//!
//! Statements only: each function runs one statement (or one short
//! transaction of its own) on the connection, transaction or pool it is
//! given, and decides nothing. What to write (a page's next state, a run's
//! outcome, a notification's body) is decided above, in
//! [`crate::lifecycle`], which passes one transaction down when several
//! statements must commit together. Nothing here is held across a network
//! call, and this module imports nothing else of fanfare's.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub mod changes;
pub mod links;
pub mod outbox;
pub mod pages;
pub mod render;
pub mod retention;
pub mod runs;
pub mod schedules;
pub mod sessions;
mod types;

pub use changes::*;
pub use links::*;
pub use outbox::*;
pub use pages::*;
pub use render::*;
pub use retention::*;
pub use runs::*;
pub use schedules::*;
pub use sessions::*;
pub use types::*;

/// Which of a run's rows a listing reads: those after `after_id` in id
/// order, `limit` at most, and only those in the state or of the kind
/// `only` when it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunRows<T> {
    /// The run.
    pub run_id: uuid::Uuid,
    /// The one state or kind listed; every row when `None`.
    pub only: Option<T>,
    /// The last id already listed (0 for the first rows).
    pub after_id: i64,
    /// How many rows at most.
    pub limit: i64,
}

impl<T> RunRows<T> {
    /// `sql` with these rows' bounds bound: `$1` the run, `$2` the state or
    /// kind (null for every row), `$3` the last id listed, `$4` the limit.
    fn query<'q, R>(
        self,
        sql: &'q str,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, R, sqlx::postgres::PgArguments>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
        T: 'q + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        sqlx::query_as(sql)
            .bind(self.run_id)
            .bind(self.only)
            .bind(self.after_id)
            .bind(self.limit)
    }
}

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool of at most `max_connections` to `url`; the connection itself
/// is made lazily, so a database that is down at start is retried, not fatal.
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    named_pool(url, max_connections, "fanfare")
}

/// [`pool`] for readers (exports, console pages, the API's reads), shown
/// as `fanfare-readers` in `pg_stat_activity`.
pub fn reader_pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    named_pool(url, max_connections, "fanfare-readers")
}

fn named_pool(url: &str, max_connections: u32, name: &str) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.application_name(name)))
}

/// Applies every pending migration.
#[tracing::instrument(skip_all)]
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether an error means the database could not be reached or dropped the
/// connection (retry later), rather than a fault of the statement.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        // 08xxx: connection exceptions; 57P01-57P03: the server is shutting
        // down, was restarted, or terminated this backend.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Whether the database answers and every embedded migration is applied.
pub async fn ready(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
        .fetch_one(pool)
        .await?;
    Ok(applied as usize >= MIGRATOR.iter().count())
}

/// The channel replicas LISTEN on to wake each other.
pub const WAKE_CHANNEL: &str = "fanfare_wake";
/// Payload: pages may be dispatchable.
pub const WAKE_DISPATCH: &str = "dispatch";
/// Payload: a notification is queued.
pub const WAKE_NOTIFY: &str = "notify";

/// Queues a NOTIFY, delivered to every listening replica on commit.
pub async fn wake<'e, E: sqlx::PgExecutor<'e>>(executor: E, what: &str) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_notify($1, $2)")
        .bind(WAKE_CHANNEL)
        .bind(what)
        .execute(executor)
        .await?;
    Ok(())
}
