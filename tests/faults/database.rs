//! Postgres connections terminated (`pg_terminate_backend`) under the
//! daemon, which runs in-process and crawls the demo shop:
//!
//! - every 300 ms while a 300-page run crawls: statements fail mid-flight,
//!   callbacks are answered 503 and retried by the crawler, pools
//!   reconnect; no page may be lost or counted twice, and the run must
//!   notify once;
//! - once, exactly while the run stores its page list: the test holds the
//!   run's row lock so that the listing's insert waits inside its
//!   transaction, terminates that backend, then releases the lock. A
//!   database blip must not fail the run.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use fanfare::demo::DemoSite;
use sqlx::{Connection, PgConnection};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const PAGES: usize = 300;

fn shop(sitemap: &str, receiver: &Receiver) -> String {
    shop_schedule(sitemap, "5s", receiver)
}

/// The checks both tests make once the run finished.
async fn check_run(
    app: &TestApp,
    receiver: &Receiver,
    run: uuid::Uuid,
) -> (LedgerView, usize, usize) {
    // A notification claimed before a termination is retried when its
    // lease (60 s) runs out.
    receiver.wait_delivered(run, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits = receiver.hits_for(run);
    let ids = by_webhook_id(&hits).len();
    let ledger = ledger_view(&app.pool, run).await.unwrap();
    (ledger, ids, hits.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_terminated_every_300_ms_mid_run_lose_no_page_and_count_none_twice() {
    let site = DemoSite::start(PAGES).await.unwrap();
    let receiver = Receiver::accepting().await;
    let app = TestApp::spawn(&shop(&site.sitemap_url(), &receiver), None).await;
    let database = database_name(&app.database);
    let stop = CancellationToken::new();
    let terminated = Arc::new(AtomicI64::new(0));
    let rounds = Arc::new(AtomicI64::new(0));
    // When a connection was first terminated, by the server's clock.
    let first_at = Arc::new(Mutex::new(None::<DateTime<Utc>>));
    let started = Instant::now();
    let run = app.trigger("shop").await;
    app.wait_listed(run, secs(30)).await;
    let terminator = {
        let (stop, terminated, rounds) = (stop.clone(), terminated.clone(), rounds.clone());
        let first_at = first_at.clone();
        tokio::spawn(async move {
            // From the server's own database: never one of the terminated.
            let mut admin = PgConnection::connect(&admin_database_url())
                .await
                .expect("an admin connection");
            loop {
                let (n, at): (i64, DateTime<Utc>) = sqlx::query_as(
                    "select count(*) filter (where done), clock_timestamp() from (
                         select pg_terminate_backend(pid) as done from pg_stat_activity
                         where datname = $1 and pid <> pg_backend_pid()) t",
                )
                .bind(&database)
                .fetch_one(&mut admin)
                .await
                .expect("terminate the test database's connections");
                terminated.fetch_add(n, Ordering::SeqCst);
                if n > 0 {
                    first_at.lock().unwrap().get_or_insert(at);
                }
                rounds.fetch_add(1, Ordering::SeqCst);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
            }
        })
    };
    let finished = app.wait_finished(run, Duration::from_secs(120)).await;
    let finish_s = started.elapsed().as_secs_f64();
    stop.cancel();
    terminator.await.expect("the terminator does not panic");
    let (ledger, ids, deliveries) = check_run(&app, &receiver, run).await;
    let metric = |labels: &'static str| app.metric("fanfare_callbacks_total", labels);
    let (recorded, duplicate, unavailable) = (
        metric("answer=\"recorded\"").await,
        metric("answer=\"duplicate\"").await,
        metric("answer=\"unavailable\"").await,
    );
    let terminated = terminated.load(Ordering::SeqCst);
    let first_at = *first_at.lock().unwrap();
    // The terminations hit the crawl, not only its aftermath.
    let finished_at = finished["finished_at"]
        .as_str()
        .and_then(|t| t.parse::<DateTime<Utc>>().ok());
    let mid_run = matches!((first_at, finished_at), (Some(f), Some(e)) if f < e);
    println!(
        "FIGURE database pages={PAGES} termination_rounds={} connections_terminated={terminated} mid_run={mid_run} callbacks_recorded={recorded} callbacks_duplicate={duplicate} callbacks_unavailable_503={unavailable} redispatched={} outcome={} succeeded={} notifications={} webhook_ids={ids} deliveries={deliveries} finish_s={finish_s:.1}",
        rounds.load(Ordering::SeqCst),
        ledger.redispatched,
        finished["outcome"],
        ledger.count("succeeded"),
        ledger.notifications,
    );

    assert!(terminated > 0, "connections were terminated");
    assert!(
        mid_run,
        "connections were terminated before the run finished"
    );
    assert_eq!(finished["outcome"], "succeeded", "{finished:#}");
    assert_eq!(ledger.counters[0], PAGES as i64, "{ledger:?}");
    assert_eq!(ledger.count("succeeded"), PAGES as i64, "{ledger:?}");
    assert!(ledger.consistent(), "each page counted once: {ledger:?}");
    assert!(recorded <= PAGES as f64, "no page recorded twice");
    assert_eq!(ledger.notifications, 1);
    assert_eq!(ids, 1, "one webhook-id");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_connection_terminated_while_the_run_stores_its_page_list_does_not_fail_the_run()
{
    let site = DemoSite::start(PAGES).await.unwrap();
    let receiver = Receiver::accepting().await;
    // The shop's sitemap, held back until the test lets it go.
    let gate = Arc::new(Semaphore::new(0));
    let sitemap = {
        let body = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{}</urlset>"#,
            site.page_urls()
                .iter()
                .map(|u| format!("<url><loc>{u}</loc></url>"))
                .collect::<String>()
        );
        let gate = gate.clone();
        let app = Router::new().route(
            "/sitemap.xml",
            get(move || {
                let (gate, body) = (gate.clone(), body.clone());
                async move {
                    // Once open, the gate stays open (a later listing reads it again).
                    drop(gate.acquire().await);
                    ([("content-type", "application/xml")], body)
                }
            }),
        );
        let base = fanfare_testkit::net::serve(app).await;
        format!("{base}/sitemap.xml")
    };
    let app = TestApp::spawn(&shop(&sitemap, &receiver), None).await;
    let database = database_name(&app.database);
    let admin = PgConnection::connect(&admin_database_url()).await.unwrap();
    let mut holder = PgConnection::connect(&app.database).await.unwrap();

    let started = Instant::now();
    let run = app.trigger("shop").await;
    // Hold the run's row: the listing's insert will wait for it, inside
    // its transaction.
    let mut lock = holder.begin().await.unwrap();
    sqlx::query("select id from runs where id = $1 for update")
        .bind(run)
        .execute(&mut *lock)
        .await
        .unwrap();
    gate.add_permits(1);
    let admin = &tokio::sync::Mutex::new(admin);
    let waiting: Vec<i32> = eventually("the listing waits for the run's row", secs(20), || async {
        let waiting: Vec<i32> = sqlx::query_scalar(
            "select pid from pg_stat_activity
             where datname = $1 and wait_event_type = 'Lock' and query like '%for update%'",
        )
        .bind(&database)
        .fetch_all(&mut *admin.lock().await)
        .await
        .unwrap();
        holds(!waiting.is_empty(), "no backend waiting on a lock").map(|()| waiting)
    })
    .await;
    let mut admin = admin.lock().await;
    let terminated: i64 = sqlx::query_scalar(
        "select count(*) from unnest($1::int[]) as pid where pg_terminate_backend(pid)",
    )
    .bind(&waiting)
    .fetch_one(&mut *admin)
    .await
    .unwrap();
    lock.commit().await.unwrap();

    let finished = app.wait_finished(run, Duration::from_secs(90)).await;
    let finish_s = started.elapsed().as_secs_f64();
    let (ledger, ids, deliveries) = check_run(&app, &receiver, run).await;
    println!(
        "FIGURE database_listing pages={PAGES} listing_backends_terminated={terminated} outcome={} error={} succeeded={} notifications={} webhook_ids={ids} deliveries={deliveries} finish_s={finish_s:.1}",
        finished["outcome"],
        finished["error"],
        ledger.count("succeeded"),
        ledger.notifications,
    );

    assert!(terminated > 0, "the listing's backend was terminated");
    assert_eq!(finished["outcome"], "succeeded", "{finished:#}");
    assert_eq!(ledger.counters[0], PAGES as i64, "{ledger:?}");
    assert_eq!(ledger.count("succeeded"), PAGES as i64, "{ledger:?}");
    assert!(ledger.consistent(), "each page counted once: {ledger:?}");
    assert_eq!(ledger.notifications, 1);
    assert_eq!(ids, 1, "one webhook-id");
    app.stop().await;
}
