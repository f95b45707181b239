//! Statements on the `schedule_state` table: pauses and buffered fires.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::{create_run, open_runs_of, Trigger};

/// Whether fires of `schedule` are paused.
pub async fn is_paused<'e, E: PgExecutor<'e>>(db: E, schedule: &str) -> Result<bool, sqlx::Error> {
    let paused: Option<bool> =
        sqlx::query_scalar("select paused from schedule_state where schedule = $1")
            .bind(schedule)
            .fetch_optional(db)
            .await?;
    Ok(paused.unwrap_or(false))
}

/// Which of `schedules` are paused.
pub async fn paused_among<'e, E: PgExecutor<'e>>(
    db: E,
    schedules: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select schedule from schedule_state where paused and schedule = any($1::text[])",
    )
    .bind(schedules)
    .fetch_all(db)
    .await
}

/// Pauses or resumes `schedule`.
pub async fn set_paused<'e, E: PgExecutor<'e>>(
    db: E,
    schedule: &str,
    paused: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into schedule_state (schedule, paused) values ($1, $2)
         on conflict (schedule) do update set paused = $2, updated_at = now()",
    )
    .bind(schedule)
    .bind(paused)
    .execute(db)
    .await?;
    Ok(())
}

/// Keeps `fire` as the schedule's one buffered fire (a later one replaces
/// an earlier one).
pub async fn buffer_fire<'e, E: PgExecutor<'e>>(
    db: E,
    schedule: &str,
    fire: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into schedule_state (schedule, buffered_fire) values ($1, $2)
         on conflict (schedule) do update set
             buffered_fire = greatest(schedule_state.buffered_fire, $2), updated_at = now()",
    )
    .bind(schedule)
    .bind(fire)
    .execute(db)
    .await?;
    Ok(())
}

/// Takes the schedule's buffered fire, if any (exactly one caller gets it).
pub async fn take_buffered_fire<'e, E: PgExecutor<'e>>(
    db: E,
    schedule: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let fire: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
        "update schedule_state s set buffered_fire = null, updated_at = now()
         from (select schedule, buffered_fire from schedule_state
               where schedule = $1 and buffered_fire is not null for update) old
         where s.schedule = old.schedule
         returning old.buffered_fire",
    )
    .bind(schedule)
    .fetch_optional(db)
    .await?;
    Ok(fire.flatten())
}

/// What [`start_run_unless_open`] did with a fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExclusiveStart {
    /// No run of the schedule was open: this run was created.
    Started(Uuid),
    /// A run for this fire exists already (another replica created it).
    Exists,
    /// Runs of the schedule were open (how many); nothing was created, and
    /// the fire was buffered when asked to be.
    Open(usize),
}

/// Takes the schedule's lock for the rest of `tx`: fires of one schedule
/// whose runs may not overlap decide one at a time, across replicas.
async fn lock_schedule(tx: &mut PgConnection, schedule: &str) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_advisory_xact_lock(hashtextextended('fanfare.schedule.' || $1, 0))")
        .bind(schedule)
        .execute(tx)
        .await?;
    Ok(())
}

/// Starts a run of `schedule` for the fire at `fire` only if none of the
/// schedule's runs is open; with `buffer`, a fire that finds one open is
/// kept as the schedule's buffered fire instead. Decided under the
/// schedule's lock, so two fires (of two replicas, or a cron fire and the
/// buffered fire a finishing run starts) cannot both find no run open.
pub async fn start_run_unless_open(
    pool: &PgPool,
    schedule: &str,
    fire: DateTime<Utc>,
    trigger: Trigger,
    buffer: bool,
) -> Result<ExclusiveStart, sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock_schedule(&mut tx, schedule).await?;
    let open = open_runs_of(&mut *tx, schedule).await?;
    let started = if !open.is_empty() {
        if buffer {
            buffer_fire(&mut *tx, schedule, fire).await?;
        }
        ExclusiveStart::Open(open.len())
    } else {
        if buffer {
            // A fire buffered earlier whose starter never came (the replica
            // that finished the run died first) is superseded by this one.
            sqlx::query(
                "update schedule_state set buffered_fire = null, updated_at = now()
                 where schedule = $1 and buffered_fire <= $2",
            )
            .bind(schedule)
            .bind(fire)
            .execute(&mut *tx)
            .await?;
        }
        match create_run(&mut *tx, schedule, fire, trigger).await? {
            Some(run_id) => ExclusiveStart::Started(run_id),
            None => ExclusiveStart::Exists,
        }
    };
    tx.commit().await?;
    Ok(started)
}

/// Starts the schedule's buffered fire, if it has one and none of its runs
/// is open (a buffered fire waits for the open run to finish); returns the
/// run and its nominal time. Under the same lock as
/// [`start_run_unless_open`].
pub async fn start_buffered_run(
    pool: &PgPool,
    schedule: &str,
) -> Result<Option<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock_schedule(&mut tx, schedule).await?;
    if !open_runs_of(&mut *tx, schedule).await?.is_empty() {
        return Ok(None);
    }
    let Some(fire) = take_buffered_fire(&mut *tx, schedule).await? else {
        return Ok(None);
    };
    let run_id = create_run(&mut *tx, schedule, fire, Trigger::Cron).await?;
    tx.commit().await?;
    Ok(run_id.map(|id| (id, fire)))
}
