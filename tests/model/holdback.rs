//! With `render = "auto"`, a host suspected of needing the browser (some
//! of its pages were sent on, fewer than `render_after`) gets its plain
//! pages claimed only while fewer than `render_after` less its sends-on
//! are in flight; pages marked for the browser are not held, and a host
//! that is learned, or not suspected, is not held at all.

use fanfare::ledger::{self, ClaimRender};
use uuid::Uuid;

use crate::harness::{Database, PAGE_TIMEOUT, SCHEDULE};

const AUTO: ClaimRender = ClaimRender::Learned { render_after: 3 };

/// Claims up to `limit` pages as the schedule's dispatcher would: the
/// claimed pages' ids and whether each goes to the browser.
async fn claim(db: &Database, limit: i64) -> Vec<(i64, bool)> {
    let claim = ledger::claim_pages_to(&db.observer, SCHEDULE, 100, limit, PAGE_TIMEOUT, AUTO)
        .await
        .expect("claim");
    let mut pages: Vec<(i64, bool)> = claim.pages.iter().map(|p| (p.id, p.render)).collect();
    pages.sort_unstable();
    pages
}

/// The schedule's knowledge of the test host for `run`.
async fn suspect(db: &Database, run: Uuid, escalations: i32, needs_browser: bool) {
    sqlx::query(
        "insert into render_hosts (schedule, host, run_id, escalations, needs_browser)
         values ($1, 'example.test', $2, $3, $4)
         on conflict (schedule, host) do update
            set run_id = $2, escalations = $3, needs_browser = $4",
    )
    .bind(SCHEDULE)
    .bind(run)
    .bind(escalations)
    .bind(needs_browser)
    .execute(&db.observer)
    .await
    .expect("note the host");
}

/// Page `id` reported: terminal.
async fn report(db: &Database, id: i64) {
    sqlx::query(
        "update pages set status = 'succeeded', result = '{}', finished_at = now() where id = $1",
    )
    .bind(id)
    .execute(&db.observer)
    .await
    .expect("report a page");
}

#[test]
fn a_suspected_hosts_plain_pages_are_held_back_until_it_is_learned_or_cleared() {
    crate::runtime().block_on(async {
        let db = Database::fresh().await;
        let urls: Vec<String> = (0..12)
            .map(|i| format!("https://example.test/p/{i}"))
            .collect();
        let run = db.new_run(&urls).await;
        let ids = db.page_ids(run).await;

        // Not suspected: nothing is held.
        let unheld = claim(&db, 4).await;
        assert_eq!(
            unheld,
            ids[..4].iter().map(|&id| (id, false)).collect::<Vec<_>>()
        );
        for &id in &ids[..4] {
            report(&db, id).await;
        }
        let left = &ids[4..];

        // One page was sent on (it waits for the browser, marked render):
        // of 3, 2 more plain pages may be in flight, and the page for the
        // browser is not held.
        let sent_on = left[0];
        sqlx::query("update pages set render = true, escalated = true where id = $1")
            .bind(sent_on)
            .execute(&db.observer)
            .await
            .expect("send a page on");
        suspect(&db, run, 1, false).await;
        let held = claim(&db, 100).await;
        assert_eq!(
            held,
            vec![(sent_on, true), (left[1], false), (left[2], false)],
            "the page for the browser and two plain pages"
        );
        assert_eq!(
            claim(&db, 100).await,
            vec![],
            "no more while two are in flight"
        );

        // One of them reported as served: one more may go.
        report(&db, left[1]).await;
        assert_eq!(claim(&db, 100).await, vec![(left[3], false)]);

        // The host is learned: the rest go to the browser, none held.
        suspect(&db, run, 3, true).await;
        let learned = claim(&db, 100).await;
        let want: Vec<(i64, bool)> = left[4..].iter().map(|&id| (id, true)).collect();
        assert_eq!(learned, want);
    });
}
