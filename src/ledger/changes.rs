//! Statements on the `page_changes` table and the comparison counts on
//! `runs`: what changed in a run since the previous run of its schedule.

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{ChangeKind, RunRows, RunStatus, Trigger};

/// The run a finished run is compared with: the latest other run of the
/// same schedule created before it that is finished, was listed to the end
/// and is not a redrive run (whose pages are only another run's failures);
/// `None` when there is none.
pub async fn previous_run(
    conn: &mut PgConnection,
    run_id: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "select p.id from runs r
         join runs p on p.schedule = r.schedule and p.created_at < r.created_at
         where r.id = $1 and p.id <> r.id and p.status = $2 and p.trigger <> $3
             and p.listed_at is not null
         order by p.created_at desc, p.id desc limit 1",
    )
    .bind(run_id)
    .bind(RunStatus::Finished)
    .bind(Trigger::Redrive)
    .fetch_optional(conn)
    .await
}

/// What changed in a run since the previous run of its schedule, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow, Serialize, Deserialize, ToSchema)]
#[schema(as = Changes)]
pub struct ChangeCounts {
    /// The run this one was compared with (`null` only once that run was
    /// deleted).
    pub since_run_id: Option<Uuid>,
    /// Pages crawled now that the previous run did not have, or had gone
    /// (404/410).
    pub new: i64,
    /// Pages crawled in both runs whose title or an extracted field differs
    /// (their body's SHA-256, with the schedule's `compare = "content"`).
    pub changed: i64,
    /// Pages crawled in both runs that do not differ.
    pub unchanged: i64,
    /// Pages of the previous run that are no longer listed, or now answer
    /// HTTP 404 or 410.
    pub gone: i64,
    /// Pages of this run that could not be compared: they failed for
    /// another reason (timeout, 5xx, ...) or were not crawled, now or in
    /// the previous run, or answered 404/410 in both.
    pub unknown: i64,
}

/// Whether a page's row says it is gone: it failed with HTTP 404 or 410.
/// The status is the error's `http_status` when the crawler sent one; a
/// crawler that does not is read from the message, which ends with it (the
/// Rust crawler writes `<url> answered HTTP 404 Not Found`; the reason
/// phrase may be missing): the kind `http_status` alone covers every non-2xx.
const GONE: &str = "coalesce(status = 'failed' and error->>'kind' = 'http_status'
    and case when jsonb_typeof(error->'http_status') = 'number'
        then (error->>'http_status')::int in (404, 410)
        else error->>'message' ~ 'HTTP (404|410)( [^0-9]*)?$' end, false)";

/// What a page's row is compared on: its title and fields (`$3` false), or
/// its body's hash (`$3` true). Only for succeeded pages; jsonb's text form
/// is canonical (keys sorted), so equal values hash equal.
///
/// Field values are compared by their text ([`FIELDS_AS_TEXT`]): a field
/// that a schedule moves from text to `type = "number"` reads `"1299"` in
/// one run and `1299` in the next, and that is no change.
const FINGERPRINT: &str = "case when status <> 'succeeded' then null
    when $3::boolean then result->>'content_sha256'
    else md5(jsonb_build_array(result->'title', {FIELDS_AS_TEXT})::text) end";

/// A row's `result->'fields'` with every number and boolean, at the top or
/// in an array, replaced by its text (`1299` becomes `"1299"`, as
/// `fanfare_crawler::field_text` writes it); strings, nulls and objects as
/// they are. Fields that are all strings and nulls (every field of a
/// text-only schedule) skip the rewrite: a jsonpath test costs about a
/// tenth of it.
const FIELDS_AS_TEXT: &str = "case when coalesce(result->'fields', '{}'::jsonb)
        @? 'strict $.* ? (@.type() != \"string\" && @.type() != \"null\")'
    then (select coalesce(jsonb_object_agg(f.key,
        case jsonb_typeof(f.value)
            when 'number' then to_jsonb(f.value #>> '{}')
            when 'boolean' then to_jsonb(f.value #>> '{}')
            when 'array' then (select coalesce(jsonb_agg(
                    case when jsonb_typeof(e.v) in ('number', 'boolean') then to_jsonb(e.v #>> '{}')
                        else e.v end order by e.n), '[]'::jsonb)
                from jsonb_array_elements(f.value) with ordinality as e(v, n))
            else f.value end), '{}'::jsonb)
        from jsonb_each(result->'fields') as f)
    else coalesce(result->'fields', '{}'::jsonb) end";

/// A page's facts as a change shows them: title, fields, content hash.
const SNAPSHOT: &str = "case when {p}.result is null then null
    else jsonb_build_object('title', {p}.result->'title',
        'fields', coalesce({p}.result->'fields', '{}'::jsonb),
        'content_sha256', {p}.result->'content_sha256') end";

/// The comparison of run `$1` with run `$2` (`$3`: compare bodies rather
/// than titles and fields), one statement: a full outer join of the two
/// runs' pages on the URL, carrying only ids, flags and a fingerprint per
/// page; the new, changed and gone pages are written to `page_changes` in
/// page order (this run's pages in id order, then the previous run's pages
/// no longer listed), with their facts read back by id; the counts go on
/// the run and are returned.
pub fn compare_statement() -> String {
    let side = |run: &str| {
        format!(
            "select id, url, status = 'succeeded' as ok, {GONE} as gone, {FINGERPRINT} as fp
             from pages where run_id = {run}"
        )
        .replace("{FIELDS_AS_TEXT}", FIELDS_AS_TEXT)
    };
    let before = SNAPSHOT.replace("{p}", "p");
    let after = SNAPSHOT.replace("{p}", "c");
    format!(
        "with cmp as (
             select c.id as cur_id, p.id as prev_id,
                 case
                     when c.ok and (p.id is null or p.gone) then 'new'
                     when c.ok and p.ok then
                         case when c.fp is distinct from p.fp then 'changed' else 'unchanged' end
                     when p.id is not null and not p.gone and (c.id is null or c.gone) then 'gone'
                     when c.id is not null then 'unknown'
                 end as kind
             from ({cur}) c full join ({prev}) p on p.url = c.url
         ), stored as (
             insert into page_changes (run_id, url, kind, before, after)
             select $1, coalesce(c.url, p.url), cmp.kind,
                 case when cmp.kind <> 'new' then {before} end,
                 case when cmp.kind <> 'gone' then {after} end
             from cmp
             left join pages c on c.id = cmp.cur_id
             left join pages p on p.id = cmp.prev_id
             where cmp.kind in ('new', 'changed', 'gone')
             order by cmp.cur_id nulls last, cmp.prev_id
         ), counts as (
             select count(*) filter (where kind = 'new') as n,
                 count(*) filter (where kind = 'changed') as c,
                 count(*) filter (where kind = 'unchanged') as u,
                 count(*) filter (where kind = 'gone') as g,
                 count(*) filter (where kind = 'unknown') as x
             from cmp
         )
         update runs set changes_since = $2, changes_new = counts.n, changes_changed = counts.c,
             changes_unchanged = counts.u, changes_gone = counts.g, changes_unknown = counts.x
         from counts where runs.id = $1
         returning changes_since as since_run_id, changes_new as \"new\",
             changes_changed as changed, changes_unchanged as unchanged,
             changes_gone as gone, changes_unknown as unknown",
        cur = side("$1"),
        prev = side("$2"),
    )
}

/// Compares run `run_id` with run `since` (see [`compare_statement`]),
/// writing its changes and counts; `by_content` compares the bodies' hashes
/// instead of titles and fields. Run once per run, in the transaction that
/// finishes it.
pub async fn compare_runs(
    conn: &mut PgConnection,
    run_id: Uuid,
    since: Uuid,
    by_content: bool,
) -> Result<ChangeCounts, sqlx::Error> {
    sqlx::query_as(&compare_statement())
        .bind(run_id)
        .bind(since)
        .bind(by_content)
        .fetch_one(conn)
        .await
}

/// A run's comparison counts; `None` when it was not compared.
pub async fn run_changes<'e, E: PgExecutor<'e>>(
    db: E,
    run_id: Uuid,
) -> Result<Option<ChangeCounts>, sqlx::Error> {
    sqlx::query_as(
        "select changes_since as since_run_id, changes_new as \"new\",
             changes_changed as changed, changes_unchanged as unchanged,
             changes_gone as gone, changes_unknown as unknown
         from runs where id = $1 and changes_new is not null",
    )
    .bind(run_id)
    .fetch_optional(db)
    .await
}

/// One stored change.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredChange {
    /// Its id: its place among the run's changes.
    pub id: i64,
    /// The page's URL.
    pub url: String,
    /// New, changed or gone.
    pub kind: ChangeKind,
    /// The page in the previous run (`{title, fields, content_sha256}`).
    pub before: Option<serde_json::Value>,
    /// The page in this run.
    pub after: Option<serde_json::Value>,
}

/// A run's changes in id order, optionally of one kind.
pub async fn list_changes<'e, E: PgExecutor<'e>>(
    db: E,
    rows: RunRows<ChangeKind>,
) -> Result<Vec<StoredChange>, sqlx::Error> {
    rows.query(
        "select id, url, kind, before, after from page_changes
         where run_id = $1 and ($2::text is null or kind = $2) and id > $3
         order by id limit $4",
    )
    .fetch_all(db)
    .await
}
