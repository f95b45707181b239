//! Statements for pages that need a browser (`render`): which hosts a
//! schedule has learned need it (and has unlearned), and a run's counts of
//! plain, rendered and escalated pages.

use sqlx::PgExecutor;
use uuid::Uuid;

/// Counts one more page of page `page_id`'s host in run `run_id` of
/// `schedule` sent on to the browser (when the page is still dispatched on
/// `attempt` and was not sent on before: a late copy of a report counts
/// nothing); once `render_after` of them in one
/// run have, the host needs the browser, for this run and the schedule's
/// next ones (a claim sends its pages straight there). Returns whether the
/// host needs the browser.
pub async fn note_escalation<'e, E: PgExecutor<'e>>(
    db: E,
    schedule: &str,
    run_id: Uuid,
    page_id: i64,
    attempt: i32,
    render_after: i32,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "with page as (
            select host from pages
            where id = $2 and run_id = $3 and status = 'dispatched' and attempt = $5
                and not escalated),
        learned as (
            insert into render_hosts as r (schedule, host, run_id, escalations, needs_browser)
            select $1, host, $3, 1, 1 >= $4 from page
            on conflict (schedule, host) do update set
                escalations = case when r.run_id = excluded.run_id then r.escalations + 1 else 1 end,
                run_id = excluded.run_id,
                needs_browser = r.needs_browser
                    or (case when r.run_id = excluded.run_id then r.escalations + 1 else 1 end) >= $4,
                updated_at = now()
            returning needs_browser)
        select coalesce((select needs_browser from learned), false)",
    )
    .bind(schedule)
    .bind(page_id)
    .bind(run_id)
    .bind(render_after)
    .bind(attempt)
    .fetch_one(db)
    .await
}

/// Forgets, for `schedule`, that a host needs the browser when run
/// `run_id` rendered at least `render_after` of the host's pages and
/// every one of them reports that its document as served would have done
/// (`served_sufficed`): the schedule's next runs fetch the host's pages
/// plainly again (and learn it again should they look unrendered).
/// Returns how many hosts it forgot.
pub async fn unlearn_hosts<'e, E: PgExecutor<'e>>(
    db: E,
    schedule: &str,
    run_id: Uuid,
    render_after: i32,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "update render_hosts r set needs_browser = false, escalations = 0, run_id = $2,
             updated_at = now()
         from (select host from pages
               where run_id = $2 and render and status = 'succeeded'
               group by host
               having count(*) >= $3
                   and bool_and(coalesce((result->>'served_sufficed')::boolean, false))) h
         where r.schedule = $1 and r.host = h.host and r.needs_browser",
    )
    .bind(schedule)
    .bind(run_id)
    .bind(render_after)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// A run's pages by how they were fetched.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    sqlx::FromRow,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct RenderCounts {
    /// Fetched as served only.
    pub plain: i64,
    /// Sent to the browser (from the start or escalated).
    pub rendered: i64,
    /// Sent on to the browser after their plain fetch looked unrendered.
    pub escalated: i64,
}

/// Run `run_id`'s [`RenderCounts`].
pub async fn render_counts<'e, E: PgExecutor<'e>>(
    db: E,
    run_id: Uuid,
) -> Result<RenderCounts, sqlx::Error> {
    sqlx::query_as(
        "select count(*) filter (where not render) as plain,
             count(*) filter (where render) as rendered,
             count(*) filter (where escalated) as escalated
         from pages where run_id = $1",
    )
    .bind(run_id)
    .fetch_one(db)
    .await
}
