//! A fresh database per test, dropped when the test ends.
//!
//! [`TestDatabase`] is a guard: its `Drop` drops the database `with (force)`
//! (closing every connection to it, those of a daemon killed with SIGKILL
//! included) on a thread and runtime of its own, since `Drop` cannot be
//! async and may run inside the test's runtime. It runs when the test
//! returns and when it panics (the guard is dropped while unwinding).
//! A database is named `fanfare_test_<pid>_<uuid>`, `<pid>` the creating
//! test process: `scripts/test` drops the leftovers of processes that could
//! not unwind (killed by a timeout, say), those whose process is gone and
//! to which nobody is connected.

use std::ops::Deref;
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// Prefix of every database the kit creates, followed by the creating
/// process's id and a UUID (`scripts/test` drops leftovers matching it).
pub const DATABASE_PREFIX: &str = "fanfare_test_";

/// How long dropping a database may take before the guard gives up (and
/// says so): an unreachable server must not hang a test's end.
const DROP_TIMEOUT: Duration = Duration::from_secs(30);

/// The server every test database is created on: `DATABASE_URL`, default
/// `postgres://postgres@127.0.0.1:5432/postgres`.
pub fn admin_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Creates an empty database; dropped when the returned guard is.
pub async fn fresh_database() -> TestDatabase {
    TestDatabase::create().await
}

/// An empty database of one test, dropped (`with (force)`) when this guard
/// is dropped. Dereferences to its URL.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    name: String,
}

impl TestDatabase {
    /// Creates `fanfare_test_<pid>_<uuid>` on the server of
    /// [`admin_database_url`].
    pub async fn create() -> Self {
        let admin = admin_database_url();
        let mut conn = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("tests need a Postgres at DATABASE_URL ({admin}): {e}"));
        let name = format!(
            "{DATABASE_PREFIX}{}_{}",
            std::process::id(),
            Uuid::new_v4().simple()
        );
        conn.execute(format!(r#"create database "{name}""#).as_str())
            .await
            .expect("create the test database");
        let _ = conn.close().await;
        let mut url = url::Url::parse(&admin).expect("DATABASE_URL is a URL");
        url.set_path(&name);
        Self {
            url: url.to_string(),
            name,
        }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Deref for TestDatabase {
    type Target = str;

    fn deref(&self) -> &str {
        &self.url
    }
}

impl AsRef<str> for TestDatabase {
    fn as_ref(&self) -> &str {
        &self.url
    }
}

impl std::fmt::Display for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || drop_database_blocking(&name))
            .join()
            .unwrap_or_else(|_| Err("the dropping thread panicked".to_string()));
        // A leftover is not a test result: say so, do not panic (a panic
        // while unwinding would abort the test process).
        if let Err(e) = dropped {
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}

/// Drops database `name` (its connections too) on a runtime of its own.
fn drop_database_blocking(name: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let drop = async {
            let mut conn = PgConnection::connect(&admin_database_url()).await?;
            conn.execute(format!(r#"drop database if exists "{name}" with (force)"#).as_str())
                .await?;
            conn.close().await
        };
        match tokio::time::timeout(DROP_TIMEOUT, drop).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("not within {DROP_TIMEOUT:?}")),
        }
    })
}
