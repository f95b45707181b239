//! Every page belongs to a run that exists: migration
//! `20261130000007_pages_run_check.sql` checks it once per statement (the
//! foreign key it replaced checked every row on its own). These cases hold
//! the triggers to what the foreign key guaranteed.

use std::time::Duration;

use sqlx::{Acquire, Connection};
use uuid::Uuid;

use crate::harness::Database;

fn is_missing_run(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.is_foreign_key_violation() && db.constraint() == Some("pages_run_id_exists"))
}

async fn pages_of(db: &Database, run_id: Uuid) -> i64 {
    sqlx::query_scalar("select count(*) from pages where run_id = $1")
        .bind(run_id)
        .fetch_one(&db.observer)
        .await
        .expect("count pages")
}

/// Runs `sql` with the runs `$1` and `$2`; asserts the ledger refused it
/// for naming a missing run (else fails saying `unexpected` happened) and
/// returns the error.
async fn refused_as_a_missing_run(
    db: &Database,
    sql: &str,
    (first, second): (Uuid, Uuid),
    unexpected: &str,
) -> sqlx::Error {
    let done = sqlx::query(sql)
        .bind(first)
        .bind(second)
        .execute(&db.observer)
        .await;
    let e = done.expect_err(unexpected);
    assert!(is_missing_run(&e), "{e}");
    e
}

#[test]
fn a_page_cannot_name_a_run_that_does_not_exist() {
    crate::runtime().block_on(async {
        let db = Database::fresh().await;
        let run_id = db.new_run(&["https://example.test/a".to_string()]).await;
        let nowhere = Uuid::now_v7();

        // One statement naming an existing run and a missing one fails whole.
        let e = refused_as_a_missing_run(
            &db,
            "insert into pages (run_id, url) values ($1, 'https://example.test/b'), ($2, 'https://example.test/c')",
            (run_id, nowhere),
            "a page of a missing run was inserted",
        )
        .await;
        assert!(e.to_string().contains(&nowhere.to_string()), "{e}");

        // COPY, as the listing writes pages, is checked the same.
        let mut conn = db.observer.acquire().await.expect("a connection");
        let mut copy = conn
            .copy_in_raw("copy pages (run_id, url) from stdin")
            .await
            .expect("copy in");
        copy.send(format!("{nowhere}\thttps://example.test/d\n").into_bytes())
            .await
            .expect("send");
        let e = copy.finish().await.expect_err("COPY of a missing run's page succeeded");
        assert!(is_missing_run(&e), "{e}");
        drop(conn);

        assert_eq!(pages_of(&db, run_id).await, 1);
        assert_eq!(pages_of(&db, nowhere).await, 0);

        // A page does not move to another run, not even an existing one.
        let other = db.new_run(&[]).await;
        refused_as_a_missing_run(
            &db,
            "update pages set run_id = $2 where run_id = $1",
            (run_id, other),
            "a page moved to another run",
        )
        .await;
        assert_eq!(pages_of(&db, run_id).await, 1);
    });
}

#[test]
fn deleting_a_run_deletes_its_pages_and_waits_for_a_listing_in_progress() {
    crate::runtime().block_on(async {
        let db = Database::fresh().await;
        let urls: Vec<String> = (0..3)
            .map(|i| format!("https://example.test/{i}"))
            .collect();
        let run_id = db.new_run(&urls).await;
        let kept = db.new_run(&urls).await;
        assert_eq!(pages_of(&db, run_id).await, 3);

        // A listing adds a page and has not committed yet: the run it names
        // is locked, so deleting the run waits (here: gives up) for it.
        let mut lister = db.observer.acquire().await.expect("a connection");
        let mut listing = lister.begin().await.expect("begin");
        sqlx::query("insert into pages (run_id, url) values ($1, 'https://example.test/late')")
            .bind(run_id)
            .execute(&mut *listing)
            .await
            .expect("insert a page");
        let mut deleter = sqlx::PgConnection::connect(&db.url).await.expect("connect");
        sqlx::query("set lock_timeout = '300ms'")
            .execute(&mut deleter)
            .await
            .expect("lock timeout");
        let blocked = sqlx::query("delete from runs where id = $1")
            .bind(run_id)
            .execute(&mut deleter)
            .await;
        let e = blocked.expect_err("the run was deleted under an uncommitted listing");
        assert!(
            matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03")),
            "{e}"
        );
        listing.commit().await.expect("commit the listing");
        assert_eq!(pages_of(&db, run_id).await, 4);

        // Once it committed, deleting the run deletes every page of it, the
        // late one included, and no other run's.
        let deleted = tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::query("delete from runs where id = $1")
                .bind(run_id)
                .execute(&mut deleter),
        )
        .await
        .expect("the delete returns")
        .expect("delete the run");
        assert_eq!(deleted.rows_affected(), 1);
        assert_eq!(pages_of(&db, run_id).await, 0);
        assert_eq!(pages_of(&db, kept).await, 3);
    });
}
