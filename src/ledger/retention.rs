//! Statements of retention: which finished runs may be deleted, and their
//! deletion in bounded steps (pages, then page changes, a chunk per
//! transaction, then the run row).
//!
//! Every step locks the run's row first with `FOR UPDATE SKIP LOCKED`:
//! a pruner (on this replica or another) that finds the row locked skips
//! the run, so two pruners never work on one run in the same moment, and a
//! row is deleted by one transaction only. Nothing else locks a finished
//! run's row for long (reports, claims and the notifier touch open runs,
//! and notifications only through their own rows), so the lock waits for
//! no one and no one waits for it.

use chrono::{DateTime, Utc};
use sqlx::{Acquire, PgConnection, PgExecutor};
use uuid::Uuid;

use super::{RunStatus, Trigger};

/// How long the runs of each schedule are kept: `schedules[i]` for
/// `keep_for[i]`, `default` for every other schedule (one no longer
/// configured, too).
#[derive(Debug, Clone, Default)]
pub struct Keep {
    /// Schedules with a duration of their own.
    pub schedules: Vec<String>,
    /// Their durations, in seconds, in the order of `schedules`.
    pub keep_for: Vec<f64>,
    /// Every other schedule's duration, in seconds.
    pub default: f64,
}

/// A finished run old enough to be deleted and deletable.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct PrunableRun {
    /// The run.
    pub id: Uuid,
    /// Its schedule.
    pub schedule: String,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// Its pages.
    pub total_pages: i64,
}

/// What a finished run must not be to be deleted (`r` the run; `$S` the
/// finished status, `$R` the redrive trigger): the run a later run of its
/// schedule is compared with (the rule of [`super::previous_run`]: the
/// latest finished, fully listed, non-redrive run created before it; for a
/// run not yet created that is the schedule's latest such run, and every
/// open run has its own), the run whose validators an open run's fetches
/// carry and whose facts its 304s keep (`runs.validators_from`), a run with
/// a notification not yet delivered, or the parent of an open redrive run. A notification given up on (status
/// `failed`) does not keep its run: it will never be delivered. A
/// schedule with no finished, fully listed run protects none of its runs
/// that way (the scalar subqueries are then null, hence the `coalesce`).
const PROTECTED: &str = "coalesce((
    exists (select 1 from notifications n where n.run_id = r.id and n.status = 'pending')
    or exists (select 1 from runs c where c.parent_run_id = r.id and c.status <> $S)
    or exists (select 1 from runs v where v.validators_from = r.id and v.status <> $S)
    or r.id = (select p.id from runs p
        where p.schedule = r.schedule and p.status = $S and p.trigger <> $R
            and p.listed_at is not null
        order by p.created_at desc, p.id desc limit 1)
    or exists (select 1 from runs o
        where o.schedule = r.schedule and o.status <> $S
            and r.id = (select p.id from runs p
                where p.schedule = o.schedule and p.created_at < o.created_at and p.id <> o.id
                    and p.status = $S and p.trigger <> $R and p.listed_at is not null
                order by p.created_at desc, p.id desc limit 1))
), false)";

/// `sql` with [`PROTECTED`] for `{PROTECTED}`, its placeholders numbered
/// `first` (the finished status) and `first + 1` (the redrive trigger).
fn with_protected(sql: &str, first: usize) -> String {
    sql.replace(
        "{PROTECTED}",
        &PROTECTED
            .replace("$S", &format!("${first}"))
            .replace("$R", &format!("${}", first + 1)),
    )
}

/// [`PROTECTED`] for every run at once, as a set of ids (`$S`, `$R` as
/// there): one pass over the runs instead of one look per run, for
/// [`prunable_runs`], which weighs every finished run past its keep
/// duration. The two state one rule; the tests go through both.
const KEPT: &str = "(
    select distinct on (schedule) id from runs
    where status = $S and trigger <> $R and listed_at is not null
    order by schedule, created_at desc, id desc
) union (
    select (select p.id from runs p
        where p.schedule = o.schedule and p.created_at < o.created_at and p.id <> o.id
            and p.status = $S and p.trigger <> $R and p.listed_at is not null
        order by p.created_at desc, p.id desc limit 1)
    from runs o where o.status <> $S
) union (
    select parent_run_id from runs where parent_run_id is not null and status <> $S
) union (
    select validators_from from runs where validators_from is not null and status <> $S
) union (
    select run_id from notifications where status = 'pending'
)";

/// Finished runs past their schedule's keep duration that may be deleted,
/// oldest first, at most `limit`, leaving out `skip` (runs a pass is done
/// with).
pub async fn prunable_runs<'e, E: PgExecutor<'e>>(
    db: E,
    keep: &Keep,
    skip: &[Uuid],
    limit: i64,
) -> Result<Vec<PrunableRun>, sqlx::Error> {
    let sql = format!(
        "with kept as ({}) select r.id, r.schedule, r.finished_at, r.total_pages
         from runs r
         left join unnest($1::text[], $2::float8[]) as k(schedule, keep_for)
             on k.schedule = r.schedule
         where r.status = $6 and r.finished_at is not null
             and r.finished_at < now() - make_interval(secs => coalesce(k.keep_for, $3))
             and r.id <> all($4::uuid[])
             and not exists (select 1 from kept where kept.id = r.id)
         order by r.finished_at, r.id
         limit $5",
        KEPT.replace("$S", "$6").replace("$R", "$7")
    );
    sqlx::query_as(&sql)
        .bind(&keep.schedules)
        .bind(&keep.keep_for)
        .bind(keep.default)
        .bind(skip)
        .bind(limit)
        .bind(RunStatus::Finished)
        .bind(Trigger::Redrive)
        .fetch_all(db)
        .await
}

/// One step of deleting a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneStep {
    /// This many of its pages were deleted (more may be left).
    Pages(u64),
    /// This many of its page changes were deleted (more may be left).
    Changes(u64),
    /// The run's row was deleted, with its notifications and hosts.
    RunDeleted,
    /// Another pruner holds the run (its row is locked), or it is gone.
    Skipped,
    /// The run may no longer be deleted (a redrive of it started, a
    /// notification was queued): nothing was deleted in this step.
    Kept,
}

/// A statement deleting the next chunk of a run's rows of one table, and
/// the step it makes.
type ChunkDelete = (&'static str, fn(u64) -> PruneStep);

/// Deletes the next part of run `run_id` in one transaction: up to `chunk`
/// of its pages; with none left, up to `chunk` of its page changes; with
/// none of those left either, the run's row, after checking once more
/// that it may go (a run is never deleted while [`PROTECTED`]).
pub async fn prune_step(
    conn: &mut PgConnection,
    run_id: Uuid,
    chunk: i64,
) -> Result<PruneStep, sqlx::Error> {
    let mut tx = conn.begin().await?;
    // The cheap conditions, each step: a redrive of it started, or a
    // notification queued, stop it. The others cannot start to hold for a
    // run once it did not meet them (a newer finished run stays newer),
    // and are checked again before the row goes.
    let deletable = "r.id = $1 and r.status = $2
        and not exists (select 1 from notifications n where n.run_id = r.id and n.status = 'pending')
        and not exists (select 1 from runs c where c.parent_run_id = r.id and c.status <> $2)";
    let locked: Option<Uuid> = sqlx::query_scalar(&format!(
        "select r.id from runs r where {deletable} for update skip locked"
    ))
    .bind(run_id)
    .bind(RunStatus::Finished)
    .fetch_optional(&mut *tx)
    .await?;
    if locked.is_none() {
        // Deletable but not locked by us: another pruner holds it. Not
        // deletable: kept, or gone (another pruner deleted it).
        let (exists, held): (bool, bool) = sqlx::query_as(&format!(
            "select exists (select 1 from runs where id = $1),
                 exists (select 1 from runs r where {deletable})"
        ))
        .bind(run_id)
        .bind(RunStatus::Finished)
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
        return Ok(if exists && !held {
            PruneStep::Kept
        } else {
            PruneStep::Skipped
        });
    }
    // Pages first, then page changes: the next chunk of the first that has rows.
    let chunks: [ChunkDelete; 2] = [
        (
            "delete from pages where id in (
                 select id from pages where run_id = $1 order by id limit $2)",
            PruneStep::Pages,
        ),
        (
            "delete from page_changes where id in (
                 select id from page_changes where run_id = $1 order by id limit $2)",
            PruneStep::Changes,
        ),
    ];
    for (statement, step) in chunks {
        let deleted = sqlx::query(statement)
            .bind(run_id)
            .bind(chunk)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted > 0 {
            tx.commit().await?;
            return Ok(step(deleted));
        }
    }
    let sql = with_protected(
        "delete from runs r where r.id = $1 and r.status = $2 and not {PROTECTED}",
        2,
    );
    let deleted = sqlx::query(&sql)
        .bind(run_id)
        .bind(RunStatus::Finished)
        .bind(Trigger::Redrive)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(if deleted == 1 {
        PruneStep::RunDeleted
    } else {
        PruneStep::Kept
    })
}
