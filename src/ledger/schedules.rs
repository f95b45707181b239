//! Statements on the `schedule_state` table: pauses and buffered fires.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

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
