//! Three replicas on one every-second schedule for 30 s; one is killed with
//! SIGKILL at ~10 s and restarted at ~15 s. Two replicas are up at every
//! instant, so every fire time of the window must have exactly one run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use crate::helpers::*;
use crate::procs::{Daemon, Workdir};

async fn count(pool: &sqlx::PgPool, sql: &str, until: DateTime<Utc>) -> i64 {
    sqlx::query_scalar(sql)
        .bind(until)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_an_every_second_schedule_start_exactly_one_run_per_fire_while_one_is_killed_and_restarted(
) {
    let receiver = Receiver::accepting().await;
    let dir = Workdir::new("replicas");
    let db = fresh_database().await;
    let pool = test_pool(&db).await;
    let schedules = schedule("tick")
        .every_second()
        .webhook(&receiver.url)
        .to_string();
    let mut replicas = Vec::new();
    for name in ["a", "b", "c"] {
        let mut d = Daemon::spawn(name, dir.path(), &db, 6, &schedules);
        d.wait_ready(Duration::from_secs(30)).await;
        replicas.push(d);
    }
    let t0 = tokio::time::Instant::now();
    // The first whole second after all three tick.
    let window_start = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(1);

    tokio::time::sleep_until(t0 + Duration::from_secs(10)).await;
    replicas[0].sigkill();
    let killed_at = Utc::now();
    tokio::time::sleep_until(t0 + Duration::from_secs(15)).await;
    let mut restarted = Daemon::spawn("a-restarted", dir.path(), &db, 6, &schedules);
    restarted.wait_ready(Duration::from_secs(30)).await;
    let restarted_at = Utc::now();
    replicas[0] = restarted;
    tokio::time::sleep_until(t0 + Duration::from_secs(30)).await;
    // The last whole second surely fired.
    let window_end = Utc::now().trunc_subsecs(0) - chrono::Duration::seconds(1);

    // A run whose lister was killed is taken over when its 30 s lease ends.
    const UNFINISHED: &str =
        "select count(*) from runs where scheduled_for <= $1 and status <> 'finished'";
    const UNDELIVERED: &str = "select count(*) from notifications n join runs r on r.id = n.run_id
         where r.scheduled_for <= $1 and n.status <> 'delivered'";
    let unfinished_at_end = count(&pool, UNFINISHED, window_end).await;
    eventually("the window's runs finish and notify", secs(60), || async {
        let unfinished = count(&pool, UNFINISHED, window_end).await;
        let undelivered = count(&pool, UNDELIVERED, window_end).await;
        holds(
            unfinished == 0 && undelivered == 0,
            format!("{unfinished} runs unfinished, {undelivered} notifications undelivered"),
        )
    })
    .await;
    let mut clean_stops = 0;
    for d in &mut replicas {
        clean_stops += usize::from(d.sigterm(Duration::from_secs(10)).await);
    }
    // Room for a duplicate delivery to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let runs: Vec<(Uuid, DateTime<Utc>, String)> =
        sqlx::query_as("select id, scheduled_for, trigger from runs order by scheduled_for")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut per_fire: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for (_, at, _) in &runs {
        *per_fire.entry(*at).or_default() += 1;
    }
    let mut expected = BTreeSet::new();
    let mut t = window_start;
    while t <= window_end {
        expected.insert(t);
        t += chrono::Duration::seconds(1);
    }
    let covered = expected
        .iter()
        .filter(|t| per_fire.contains_key(*t))
        .count();
    let missing: Vec<_> = expected
        .iter()
        .filter(|t| !per_fire.contains_key(*t))
        .collect();
    let multiple: Vec<_> = per_fire.iter().filter(|(_, n)| **n != 1).collect();
    let in_window: Vec<&(Uuid, DateTime<Utc>, String)> = runs
        .iter()
        .filter(|(_, at, _)| expected.contains(at))
        .collect();
    let catchup = runs.iter().filter(|(_, _, t)| t == "catchup").count();
    let mut notified_once = 0;
    let mut dup_deliveries = 0;
    let mut wrong: Vec<String> = Vec::new();
    for (id, at, _) in &in_window {
        let ids = by_webhook_id(&receiver.hits_for(*id));
        let accepted = ids.values().flatten().filter(|h| h.accepted()).count();
        if ids.len() == 1 && accepted >= 1 {
            notified_once += 1;
        } else {
            wrong.push(format!("{at} {id}: {ids:?}"));
        }
        dup_deliveries += accepted.saturating_sub(1);
    }
    let max_per_fire = per_fire.values().copied().max().unwrap_or(0);
    println!(
        "FIGURE replicas replicas=3 kills=1 killed_at={} restarted_at={} window_s={} fire_times_expected={} fire_times_covered={covered} missing={} runs_per_fire_max={max_per_fire} fires_with_other_than_one_run={} runs_total={} catchup_runs={catchup} runs_unfinished_at_window_end={unfinished_at_end} notified_once={notified_once}/{} dup_deliveries={dup_deliveries} clean_stops={clean_stops}/3",
        killed_at.format("%H:%M:%S%.3f"),
        restarted_at.format("%H:%M:%S%.3f"),
        (window_end - window_start).num_seconds() + 1,
        expected.len(),
        missing.len(),
        multiple.len(),
        runs.len(),
        in_window.len(),
    );
    pool.close().await;

    assert!(
        expected.len() >= 25,
        "the window spans ~30 fire times: {}",
        expected.len()
    );
    assert!(missing.is_empty(), "fire times without a run: {missing:?}");
    assert!(
        multiple.is_empty(),
        "fire times with more than one run: {multiple:?}"
    );
    assert!(
        wrong.is_empty(),
        "runs not notified exactly once: {wrong:#?}"
    );
    assert_eq!(clean_stops, 3, "every replica stops cleanly on SIGTERM");
}
