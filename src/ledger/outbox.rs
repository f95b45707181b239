//! Statements on the `notifications` table: the outbox.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::NotifyEvent;

/// Writes one outbox row (once per run, event and target: a second write is
/// a no-op). The caller wakes the notifiers when its transaction commits.
#[allow(clippy::too_many_arguments)]
pub async fn insert_notification(
    conn: &mut PgConnection,
    run_id: Uuid,
    event: NotifyEvent,
    target: i32,
    kind: &str,
    webhook_id: &str,
    payload: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into notifications (run_id, event, target, kind, webhook_id, payload)
         values ($1, $2, $3, $4, $5, $6)
         on conflict (run_id, event, target) do nothing",
    )
    .bind(run_id)
    .bind(event)
    .bind(target)
    .bind(kind)
    .bind(webhook_id)
    .bind(payload)
    .execute(conn)
    .await?;
    Ok(())
}

/// A notification waiting in the outbox.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Outbound {
    /// Outbox row id.
    pub id: i64,
    /// The run it is about.
    pub run_id: Uuid,
    /// The schedule (to find the target's settings).
    pub schedule: String,
    /// What it is about.
    pub event: NotifyEvent,
    /// Index of the target in the schedule's notify list.
    pub target: i32,
    /// The stable idempotency key.
    pub webhook_id: String,
    /// The body.
    pub payload: serde_json::Value,
    /// Delivery attempts so far, this one included.
    pub attempts: i32,
    /// When the notification was queued.
    pub created_at: DateTime<Utc>,
}

/// Claims due notifications for delivery: each is leased for `lease` (a
/// replica that dies mid-delivery leaves it to be retried then).
pub async fn claim_notifications<'e, E: PgExecutor<'e>>(
    db: E,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Outbound>, sqlx::Error> {
    sqlx::query_as(
        "with due as (
             select id from notifications
             where status = 'pending' and next_attempt_at <= now()
             order by next_attempt_at limit $1
             for update skip locked)
         update notifications n set attempts = n.attempts + 1,
             next_attempt_at = now() + make_interval(secs => $2), updated_at = now()
         from due, runs r
         where n.id = due.id and r.id = n.run_id
         returning n.id, n.run_id, r.schedule, n.event, n.target, n.webhook_id, n.payload,
             n.attempts, n.created_at",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(db)
    .await
}

/// Records a successful delivery.
pub async fn notification_delivered<'e, E: PgExecutor<'e>>(
    db: E,
    id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update notifications set status = 'delivered', delivered_at = now(), last_error = null,
             updated_at = now() where id = $1",
    )
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// Records a failed delivery: retried after `retry_in`, or given up on when
/// `retry_in` is `None`.
pub async fn notification_failed<'e, E: PgExecutor<'e>>(
    db: E,
    id: i64,
    error: &str,
    retry_in: Option<Duration>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update notifications set last_error = $2, updated_at = now(),
             status = case when $3::float8 is null then 'failed' else 'pending' end,
             next_attempt_at = now() + make_interval(secs => coalesce($3, 0))
         where id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(retry_in.map(|d| d.as_secs_f64()))
    .execute(db)
    .await?;
    Ok(())
}

/// A notification's delivery state, for the API.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct NotificationState {
    /// What it is about.
    pub event: NotifyEvent,
    /// Target index.
    pub target: i32,
    /// `webhook`, `slack` or `stdout`.
    #[schema(pattern = "^(webhook|slack|stdout)$")]
    pub kind: String,
    /// The idempotency key.
    pub webhook_id: String,
    /// `pending`, `delivered` or `failed`.
    #[schema(pattern = "^(pending|delivered|failed)$")]
    pub status: String,
    /// Attempts so far.
    pub attempts: i32,
    /// The last delivery error.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A run's notifications.
pub async fn run_notifications<'e, E: PgExecutor<'e>>(
    db: E,
    run_id: Uuid,
) -> Result<Vec<NotificationState>, sqlx::Error> {
    sqlx::query_as(
        "select event, target, kind, webhook_id, status, attempts, last_error, delivered_at
         from notifications where run_id = $1 order by event, target",
    )
    .bind(run_id)
    .fetch_all(db)
    .await
}
