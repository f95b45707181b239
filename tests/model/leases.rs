//! A run's listing is held by one lister at a time: a lister whose lease
//! expired and was taken over finds its token gone at its next write and
//! changes nothing, however late that write comes.

use serde_json::json;

use fanfare::ledger::{self, Lease};

use crate::harness::{unlimited_hosts, Database};

/// Lists `url` under `lease`: the pages added, `None` when the lease is no
/// longer the run's.
async fn insert_under(db: &Database, lease: &Lease, url: &str) -> Option<u64> {
    let urls = [url.to_string()];
    ledger::insert_pages(&db.observer, lease, &urls, &unlimited_hosts(&urls))
        .await
        .unwrap()
}

#[test]
fn a_lister_whose_lease_was_taken_over_changes_nothing() {
    crate::runtime().block_on(async {
        let db = Database::fresh().await;
        let first_url = vec!["https://example.test/a".to_string()];
        let run_id = db.new_run(&first_url).await;
        let first = Lease::first(run_id);

        // While the first lister renews, nobody takes the listing.
        assert!(ledger::renew_listing_lease(&db.observer, &first)
            .await
            .unwrap());
        assert!(ledger::claim_abandoned_listings(&db.observer)
            .await
            .unwrap()
            .is_empty());

        // Its lease lapses (the replica stalled) and another lister takes over.
        sqlx::query(
            "update runs set listing_lease_until = now() - interval '1 second' where id = $1",
        )
        .bind(run_id)
        .execute(&db.observer)
        .await
        .unwrap();
        let taken = ledger::claim_abandoned_listings(&db.observer)
            .await
            .unwrap();
        assert_eq!(taken.len(), 1, "{taken:?}");
        let (second, _) = taken[0];
        assert_eq!(second.run_id, run_id);
        assert_ne!(
            second.owner, first.owner,
            "the takeover has a token of its own"
        );

        // The first lister wakes up: its renewal, its pages and its end of
        // listing are all refused.
        assert!(!ledger::renew_listing_lease(&db.observer, &first)
            .await
            .unwrap());
        let inserted = insert_under(&db, &first, "https://example.test/late").await;
        assert_eq!(inserted, None, "a lister that lost its lease added pages");
        let mut conn = db.observer.acquire().await.unwrap();
        let listed = ledger::mark_listed(&mut conn, &first, &json!({"pages": 1}))
            .await
            .unwrap();
        assert_eq!(
            listed, None,
            "a lister that lost its lease ended the listing"
        );
        drop(conn);

        // The new lister writes.
        assert!(ledger::renew_listing_lease(&db.observer, &second)
            .await
            .unwrap());
        let inserted = insert_under(&db, &second, "https://example.test/b").await;
        assert_eq!(inserted, Some(1));
        let mut conn = db.observer.acquire().await.unwrap();
        let listed = ledger::mark_listed(&mut conn, &second, &json!({"pages": 2}))
            .await
            .unwrap();
        assert_eq!(listed.map(|(open, _)| open), Some(2));
        drop(conn);
        let urls: Vec<String> =
            sqlx::query_scalar("select url from pages where run_id = $1 order by id")
                .bind(run_id)
                .fetch_all(&db.observer)
                .await
                .unwrap();
        assert_eq!(urls, ["https://example.test/a", "https://example.test/b"]);
    });
}
