//! SIGKILL of the daemon at random points of a 1,000-page run.
//!
//! Each trial: `fanfare serve` as a subprocess crawling the loopback demo
//! shop in-process, a manual trigger, SIGKILL at a chosen point, a new
//! daemon on the same database, and the run waited out. The first trial
//! kills during listing (the run then waits out the 30 s listing lease
//! before another daemon takes it over, so that trial runs alongside the
//! others, on a database of its own), every fifth as soon as the run is seen
//! finished (around its notification), the others once a random number of
//! pages has finished. A notification claimed by a killed daemon waits out
//! its 60 s lease; later trials' daemons deliver it, so deliveries are
//! counted at the end, with one more daemon per database up.

use std::time::{Duration, Instant};

use fanfare::demo::DemoSite;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;
use crate::procs::{Daemon, Workdir};

const PAGES: usize = 1000;

#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// Right after the trigger is answered: the run is listing.
    Listing,
    /// Once this many pages are terminal.
    Progress(i64),
    /// As soon as the run is seen finished.
    Finished,
}

#[derive(Debug)]
struct Trial {
    n: usize,
    run: Uuid,
    point: KillPoint,
    /// The run's status right after the kill.
    phase: String,
    /// Pages terminal right after the kill.
    done_at_kill: i64,
    /// Pages dispatched and unreported right after the kill (their crawls
    /// died with the daemon).
    in_flight_at_kill: i64,
    /// From the trigger to the run's end.
    finish_s: f64,
    /// When the test saw the run finished.
    finished: Instant,
    /// From spawning the first daemon to its readiness.
    start_s: f64,
    /// From the kill to the second daemon's readiness.
    restart_s: f64,
}

/// A trial's run as checked at the end.
#[derive(Debug)]
struct Checked {
    ledger: LedgerView,
    /// Deliveries per webhook-id.
    deliveries: Vec<(String, usize)>,
    /// From the run's end to its first accepted delivery.
    notify_s: f64,
    bad_signatures: usize,
}

async fn progress(pool: &PgPool, run: Uuid) -> (String, i64, i64) {
    sqlx::query_as(
        "select r.status, r.total_pages - r.open_pages,
             (select count(*) from pages p where p.run_id = r.id and p.status = 'dispatched')
         from runs r where r.id = $1",
    )
    .bind(run)
    .fetch_one(pool)
    .await
    .expect("read the run's progress")
}

fn schedules(site: &DemoSite, receiver: &Receiver) -> String {
    shop_schedule(&site.sitemap_url(), "2s", receiver)
}

async fn trial(n: usize, point: KillPoint, config: &str, dir: &Workdir, db: &str) -> Trial {
    let pool = test_pool(db).await;
    let client = reqwest::Client::new();
    let spawned = Instant::now();
    let mut first = Daemon::spawn(&format!("trial{n}-first"), dir.path(), db, 16, config);
    first.wait_ready(Duration::from_secs(30)).await;
    let start_s = spawned.elapsed().as_secs_f64();
    let started = Instant::now();
    let run = trigger(&client, &first.address, "shop").await;
    match point {
        KillPoint::Listing => {}
        KillPoint::Progress(target) => loop {
            let (status, done, _) = progress(&pool, run).await;
            if done >= target || status == "finished" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        },
        KillPoint::Finished => loop {
            if progress(&pool, run).await.0 == "finished" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        },
    }
    first.sigkill();
    let killed = Instant::now();
    let (phase, done_at_kill, in_flight_at_kill) = progress(&pool, run).await;

    let mut second = Daemon::spawn(&format!("trial{n}-second"), dir.path(), db, 16, config);
    second.wait_ready(Duration::from_secs(30)).await;
    let restart_s = killed.elapsed().as_secs_f64();
    let what = format!("trial {n} ({point:?}): run {run} finishes after the restart");
    eventually(&what, secs(120), || async {
        let phase = progress(&pool, run).await.0;
        holds(
            phase == "finished",
            format!("{phase}; log:\n{}", second.log_tail(30)),
        )
    })
    .await;
    let finish_s = started.elapsed().as_secs_f64();
    let finished = Instant::now();
    // Time for the notification to leave, unless the killed daemon held it.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !notification_delivered(&second, run).await {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.sigkill();
    pool.close().await;
    Trial {
        n,
        run,
        point,
        phase,
        done_at_kill,
        in_flight_at_kill,
        finish_s,
        finished,
        start_s,
        restart_s,
    }
}

/// Whether the daemon recorded the run's notification as delivered.
async fn notification_delivered(daemon: &Daemon, run: Uuid) -> bool {
    let (_, body) = get(
        &reqwest::Client::new(),
        &daemon.address,
        &format!("/v1/runs/{run}"),
    )
    .await;
    body["notifications"][0]["status"] == "delivered"
}

async fn check(t: &Trial, receiver: &Receiver, pool: &PgPool) -> Checked {
    let hits = receiver
        .wait_delivered(t.run, Duration::from_secs(90))
        .await;
    let first_accepted = hits.iter().find(|h| h.accepted()).expect("accepted").at;
    let ledger = ledger_view(pool, t.run).await.expect("read the ledger");
    let hits = receiver.hits_for(t.run);
    Checked {
        ledger,
        deliveries: by_webhook_id(&hits)
            .into_iter()
            .map(|(id, hits)| (id, hits.len()))
            .collect(),
        notify_s: first_accepted
            .saturating_duration_since(t.finished)
            .as_secs_f64(),
        bad_signatures: hits.iter().filter(|h| !h.signature_ok).count(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_with_sigkill_at_random_points_of_a_thousand_page_run_loses_no_page_and_notifies_once(
) {
    let trials = trials().max(1);
    let seed = seed();
    println!("sigkill: {trials} trials, FANFARE_FAULT_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let site = DemoSite::start(PAGES).await.unwrap();
    let receiver = Receiver::accepting().await;
    let config = schedules(&site, &receiver);
    let dir = Workdir::new("sigkill");
    let wall = Instant::now();
    let report = |t: &Trial| {
        println!(
            "FIGURE sigkill_trial n={} point={:?} phase_at_kill={} done_at_kill={} in_flight_at_kill={} finish_s={:.1} start_s={:.1} restart_s={:.1}",
            t.n, t.point, t.phase, t.done_at_kill, t.in_flight_at_kill, t.finish_s, t.start_s, t.restart_s,
        );
    };
    let points: Vec<KillPoint> = (1..trials)
        .map(|n| {
            if n % 5 == 4 {
                KillPoint::Finished
            } else {
                KillPoint::Progress(rng.random_range(0..(PAGES as i64 * 95 / 100)))
            }
        })
        .collect();
    // Dropping a database takes seconds here: one for the listing trial,
    // one for all the others (their runs follow each other).
    let (listing_db, db) = (fresh_database().await, fresh_database().await);
    let listing = async {
        let t = trial(0, KillPoint::Listing, &config, &dir, &listing_db).await;
        report(&t);
        t
    };
    let others = async {
        let mut done = Vec::new();
        for (i, point) in points.iter().enumerate() {
            let t = trial(i + 1, *point, &config, &dir, &db).await;
            report(&t);
            done.push(t);
        }
        done
    };
    let (first, others) = tokio::join!(listing, others);

    // Deliver what killed daemons left claimed, then check every run.
    let mut closers = Vec::new();
    for (name, db) in [("closer-listing", &listing_db), ("closer", &db)] {
        let mut d = Daemon::spawn(name, dir.path(), db, 4, &config);
        d.wait_ready(Duration::from_secs(30)).await;
        closers.push(d);
    }
    let (listing_pool, pool) = (test_pool(&listing_db).await, test_pool(&db).await);
    let mut results = vec![(check(&first, &receiver, &listing_pool).await, first)];
    for t in others {
        results.push((check(&t, &receiver, &pool).await, t));
    }
    // Room for a duplicate delivery to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (c, t) in &mut results {
        let hits = receiver.hits_for(t.run);
        c.deliveries = by_webhook_id(&hits)
            .into_iter()
            .map(|(id, hits)| (id, hits.len()))
            .collect();
    }
    for d in &mut closers {
        d.sigkill();
    }
    listing_pool.close().await;
    pool.close().await;

    let lost: i64 = results
        .iter()
        .map(|(c, _)| PAGES as i64 - c.ledger.count("succeeded"))
        .sum();
    let phase = |p: &str| results.iter().filter(|(_, t)| t.phase == p).count();
    let dup_deliveries: usize = results
        .iter()
        .flat_map(|(c, _)| c.deliveries.iter().map(|(_, n)| n.saturating_sub(1)))
        .sum();
    let ids_per_run = distinct(results.iter().map(|(c, _)| c.deliveries.len()));
    let finish: Vec<f64> = results.iter().map(|(_, t)| t.finish_s).collect();
    let after_listing: Vec<f64> = results
        .iter()
        .filter(|(_, t)| t.phase != "listing")
        .map(|(_, t)| t.finish_s)
        .collect();
    let listing_finish: Vec<String> = results
        .iter()
        .filter(|(_, t)| t.phase == "listing")
        .map(|(_, t)| format!("{:.1}", t.finish_s))
        .collect();
    let notify: Vec<f64> = results.iter().map(|(c, _)| c.notify_s).collect();
    // A notification the killed daemon had claimed waits out its lease.
    let lease_delayed = notify.iter().filter(|s| **s > 30.0).count();
    println!(
        "FIGURE sigkill trials={} kills={} kills_listing={} kills_running={} kills_finished={} pages_per_run={PAGES} pages_lost={lost} in_flight_lost_at_kill={} redispatched={} notifications_per_run={ids_per_run:?} dup_deliveries={dup_deliveries} lease_delayed_notifications={lease_delayed} max_notify_s={:.1} p50_finish_s={:.1} max_finish_s={:.1} p50_finish_after_listing_s={:.1} listing_kill_finish_s={} wall_s={:.0}",
        results.len(),
        results.len(),
        phase("listing"),
        phase("running"),
        phase("finished"),
        results.iter().map(|(_, t)| t.in_flight_at_kill).sum::<i64>(),
        results.iter().map(|(c, _)| c.ledger.redispatched).sum::<i64>(),
        quantile(&notify, 1.0),
        quantile(&finish, 0.5),
        quantile(&finish, 1.0),
        quantile(&after_listing, 0.5),
        listing_finish.join(","),
        wall.elapsed().as_secs_f64(),
    );

    for (c, t) in &results {
        let (n, l) = (t.n, &c.ledger);
        assert_eq!(l.status, "finished", "trial {n}: {t:?} {c:?}");
        assert_eq!(l.outcome.as_deref(), Some("succeeded"), "trial {n}: {c:?}");
        assert_eq!(l.counters[0], PAGES as i64, "trial {n}: listed once: {c:?}");
        assert_eq!(
            l.count("succeeded"),
            PAGES as i64,
            "trial {n}: none lost: {c:?}"
        );
        assert!(l.consistent(), "trial {n}: counters match the pages: {c:?}");
        assert_eq!(l.notifications, 1, "trial {n}: one outbox row: {c:?}");
        assert_eq!(c.deliveries.len(), 1, "trial {n}: one webhook-id: {c:?}");
        assert_eq!(
            c.deliveries[0].0,
            format!("msg_{}_0", t.run.simple()),
            "trial {n}: the webhook-id names the run"
        );
        assert_eq!(c.bad_signatures, 0, "trial {n}: signatures verify");
    }
    assert!(
        phase("listing") >= 1,
        "at least one kill landed while the run was listing: {results:?}"
    );
    if results.len() >= 3 {
        assert!(
            phase("running") >= 1,
            "at least one kill landed while pages were in flight: {results:?}"
        );
        assert!(
            results
                .iter()
                .map(|(_, t)| t.in_flight_at_kill)
                .sum::<i64>()
                > 0,
            "some kill lost crawls in flight: {results:?}"
        );
    }
}
