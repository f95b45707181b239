//! The kit's database guard against a real Postgres (`DATABASE_URL`).

use fanfare_testkit::{admin_database_url, fresh_database, DATABASE_PREFIX};
use sqlx::{Connection, PgConnection};

/// Whether a database of that name exists on the test server.
async fn exists(name: &str) -> bool {
    let mut conn = PgConnection::connect(&admin_database_url()).await.unwrap();
    sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_fresh_database_is_named_after_the_process_and_dropped_with_its_guard_even_while_connected(
) {
    let db = fresh_database().await;
    let name = db.name().to_string();
    assert!(
        name.starts_with(&format!("{DATABASE_PREFIX}{}_", std::process::id())),
        "{name} names the kit's prefix and this process"
    );
    assert!(exists(&name).await, "{name} was created");
    // A connection still open, as a killed daemon's would be.
    let mut open = PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("select 1").execute(&mut open).await.unwrap();
    drop(db);
    assert!(!exists(&name).await, "{name} was dropped with its guard");
}

#[test]
fn a_test_that_panics_still_drops_its_database() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let created = std::sync::Mutex::new(String::new());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            let db = fresh_database().await;
            *created.lock().unwrap() = db.name().to_string();
            panic!("the test fails while holding {}", db.name());
        })
    }));
    assert!(outcome.is_err(), "the test body panicked");
    let name = created.into_inner().unwrap();
    assert!(!name.is_empty(), "a database was created before the panic");
    assert!(
        !runtime.block_on(exists(&name)),
        "{name} was dropped while unwinding"
    );
}
