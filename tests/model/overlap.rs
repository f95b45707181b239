//! Fires of a schedule whose runs may not overlap (`overlap = "skip"` or
//! `"buffer_one"`), racing each other and the finishing of the open run:
//! whoever decides, at most one run of the schedule is open, and a
//! buffered fire starts exactly once.

use chrono::{DateTime, Duration as Span, SubsecRound, Utc};
use fanfare::ledger::{self, ExclusiveStart, RunStatus, Trigger};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::harness::Database;

const SCHEDULE: &str = "no-overlap";

/// Plays `test` on a fresh database, with a pool wide enough for every
/// racer and a start time on a whole second (as the ledger stores it).
fn race<F, Fut>(test: F)
where
    F: FnOnce(PgPool, DateTime<Utc>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    crate::runtime().block_on(async {
        let db = Database::fresh().await;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(&db.url)
            .await
            .expect("connect to the test database");
        test(pool, Utc::now().trunc_subsecs(0)).await;
    });
}

async fn open_runs(pool: &PgPool) -> usize {
    ledger::open_runs_of(pool, SCHEDULE)
        .await
        .expect("open runs")
        .len()
}

async fn buffered(pool: &PgPool) -> Option<DateTime<Utc>> {
    sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
        "select buffered_fire from schedule_state where schedule = $1",
    )
    .bind(SCHEDULE)
    .fetch_optional(pool)
    .await
    .expect("schedule state")
    .flatten()
}

async fn finish(pool: &PgPool, run_id: uuid::Uuid) {
    sqlx::query("update runs set status = $2 where id = $1")
        .bind(run_id)
        .bind(RunStatus::Finished)
        .execute(pool)
        .await
        .expect("finish the run");
}

#[test]
fn sixteen_racing_fires_start_one_run_and_buffer_the_latest_of_the_rest() {
    race(|pool, t0| async move {
        let fires: Vec<_> = (0..16)
            .map(|i| {
                let pool = pool.clone();
                let fire = t0 + Span::seconds(i);
                tokio::spawn(async move {
                    let buffer = i % 2 == 0;
                    let started =
                        ledger::start_run_unless_open(&pool, SCHEDULE, fire, Trigger::Cron, buffer)
                            .await
                            .expect("start_run_unless_open");
                    (fire, buffer, started)
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for fire in fires {
            outcomes.push(fire.await.expect("the fire's task"));
        }
        let started: Vec<_> = outcomes
            .iter()
            .filter(|(_, _, s)| matches!(s, ExclusiveStart::Started(_)))
            .collect();
        assert_eq!(
            started.len(),
            1,
            "exactly one fire starts a run: {outcomes:?}"
        );
        assert_eq!(open_runs(&pool).await, 1);
        let latest_buffered = outcomes
            .iter()
            .filter(|(_, buffer, s)| *buffer && matches!(s, ExclusiveStart::Open(1)))
            .map(|(fire, _, _)| *fire)
            .max();
        // Every fire that found a run open came after the one that started
        // it, so the buffer holds the latest of the buffering fires.
        assert_eq!(buffered(&pool).await, latest_buffered);
    });
}

#[test]
fn a_run_finishing_while_a_fire_buffers_starts_the_buffered_fire_exactly_once() {
    race(|pool, t0| async move {
        for round in 0..40i64 {
            let first = t0 + Span::seconds(2 * round);
            let ExclusiveStart::Started(run_id) =
                ledger::start_run_unless_open(&pool, SCHEDULE, first, Trigger::Cron, true)
                    .await
                    .expect("the round's first run")
            else {
                panic!("round {round}: the previous round left a run open");
            };
            let finisher = {
                let pool = pool.clone();
                tokio::spawn(async move {
                    finish(&pool, run_id).await;
                    ledger::start_buffered_run(&pool, SCHEDULE)
                        .await
                        .expect("start_buffered_run")
                })
            };
            let fire = {
                let pool = pool.clone();
                let at = first + Span::seconds(1);
                tokio::spawn(async move {
                    ledger::start_run_unless_open(&pool, SCHEDULE, at, Trigger::Cron, true)
                        .await
                        .expect("start_run_unless_open")
                })
            };
            let buffered_start = finisher.await.expect("finisher");
            let fired = fire.await.expect("fire");
            let started_by_fire = matches!(fired, ExclusiveStart::Started(_));
            assert_eq!(
                usize::from(started_by_fire) + usize::from(buffered_start.is_some()),
                1,
                "round {round}: the second fire starts exactly once (fire: {fired:?}, buffered start: {buffered_start:?})"
            );
            assert_eq!(open_runs(&pool).await, 1, "round {round}");
            assert_eq!(
                buffered(&pool).await,
                None,
                "round {round}: nothing left waiting"
            );
            for run in ledger::open_runs_of(&pool, SCHEDULE)
                .await
                .expect("open runs")
            {
                finish(&pool, run).await;
            }
        }
    });
}
