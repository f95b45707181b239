//! Pages found by following links: added to their run by the statement
//! that records the report that found them ([`RECORD_PAGES_FINDING`]), and
//! what following links found, kept on the run ([`Discovery`]).

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgArguments;
use sqlx::types::Json;
use sqlx::Postgres;
use utoipa::ToSchema;

use super::pages::{record_pages_head, PageChange, PageWrite};

/// Examples of left-out links a run keeps per reason (distinct URLs).
pub const EXAMPLES_PER_REASON: usize = 3;

/// Why a link a report carried did not become a page of its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeftOut {
    /// It matched no `include` pattern, or an `exclude` one.
    Pattern,
    /// The page it was on is at `max_depth` already.
    Depth,
    /// Its host is not the host of the page it was on (`same_host`), or is
    /// not a host of the run (whose robots.txt the run has read).
    Host,
    /// Its host's robots.txt disallows it (or could not be read).
    Robots,
    /// The run has `max_pages` pages already.
    Cap,
}

impl LeftOut {
    /// The word stored in the examples.
    pub fn as_str(self) -> &'static str {
        match self {
            LeftOut::Pattern => "pattern",
            LeftOut::Depth => "depth",
            LeftOut::Host => "host",
            LeftOut::Robots => "robots",
            LeftOut::Cap => "cap",
        }
    }
}

/// A left-out link, as an example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeftOutExample {
    /// Why it was left out.
    pub reason: LeftOut,
    /// The link (user info redacted).
    pub url: String,
}

/// How many links were left out, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeftOutCounts {
    /// By `include` / `exclude`.
    #[serde(default)]
    pub pattern: i64,
    /// By `max_depth`.
    #[serde(default)]
    pub depth: i64,
    /// By `same_host`, or to a host the run does not crawl.
    #[serde(default)]
    pub host: i64,
    /// By robots.txt.
    #[serde(default)]
    pub robots: i64,
    /// By `max_pages`.
    #[serde(default)]
    pub cap: i64,
}

/// What following links found in a run, so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Discovery {
    /// Links the run's recorded reports carried (each report's links are
    /// distinct; the same link on two pages counts twice).
    #[serde(default)]
    pub found: i64,
    /// Those that became pages of the run.
    #[serde(default)]
    pub added: i64,
    /// Those the run had already (listed, found before, or found twice in
    /// one batch).
    #[serde(default)]
    pub known: i64,
    /// Those left out, by reason.
    #[serde(default)]
    pub left_out: LeftOutCounts,
    /// A few of the left-out links, with why.
    #[serde(default)]
    pub examples: Vec<LeftOutExample>,
}

/// The links a successful report found, as the recorder hands them to the
/// ledger: what was left out before the ledger (by pattern, by robots.txt)
/// is counted here; the rest is judged by the statement that records the
/// report (depth, host, already in the run, the cap).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FoundLinks {
    /// Links the report carried.
    pub reported: i64,
    /// Left out by `include` / `exclude`.
    pub off_pattern: i64,
    /// Left out by robots.txt.
    pub off_robots: i64,
    /// Examples of those two.
    pub examples: Vec<LeftOutExample>,
    /// The links still in the running, each with its host
    /// ([`super::host_of`]).
    pub links: Vec<(String, String)>,
    /// The run's `max_depth`.
    pub max_depth: i32,
    /// Whether only links to the page's own host are followed.
    pub same_host: bool,
    /// The run's `max_pages`.
    pub max_pages: i64,
}

/// The found links of a batch, as the arrays [`RECORD_PAGES_FINDING`]
/// takes after [`super::RECORD_PAGES`]'s first ten: $11 the finding page of each
/// link, $12 its URL, $13 its host; then one entry per finding write:
/// $14 page, $15 max_depth, $16 same_host, $17 max_pages, $18 links
/// reported, $19 left out by pattern, $20 by robots, $21 examples (jsonb
/// array).
pub(crate) struct FindingArrays {
    link_pages: Vec<i64>,
    link_urls: Vec<String>,
    link_hosts: Vec<String>,
    pages: Vec<i64>,
    max_depth: Vec<i32>,
    same_host: Vec<bool>,
    max_pages: Vec<i64>,
    reported: Vec<i64>,
    off_pattern: Vec<i64>,
    off_robots: Vec<i64>,
    examples: Vec<Json<Vec<LeftOutExample>>>,
}

impl FindingArrays {
    /// The arrays of `writes`' found links; `None` when no write carries any.
    pub(crate) fn of(writes: &[PageWrite]) -> Option<Self> {
        fn found(w: &PageWrite) -> Option<&FoundLinks> {
            match &w.change {
                PageChange::Terminal {
                    found: Some(found), ..
                } => Some(found),
                _ => None,
            }
        }
        if !writes.iter().any(|w| found(w).is_some()) {
            return None;
        }
        let mut a = FindingArrays {
            link_pages: Vec::new(),
            link_urls: Vec::new(),
            link_hosts: Vec::new(),
            pages: Vec::new(),
            max_depth: Vec::new(),
            same_host: Vec::new(),
            max_pages: Vec::new(),
            reported: Vec::new(),
            off_pattern: Vec::new(),
            off_robots: Vec::new(),
            examples: Vec::new(),
        };
        for w in writes {
            let Some(found) = found(w) else { continue };
            a.pages.push(w.page_id);
            a.max_depth.push(found.max_depth);
            a.same_host.push(found.same_host);
            a.max_pages.push(found.max_pages);
            a.reported.push(found.reported);
            a.off_pattern.push(found.off_pattern);
            a.off_robots.push(found.off_robots);
            a.examples.push(Json(found.examples.clone()));
            for (url, host) in &found.links {
                a.link_pages.push(w.page_id);
                a.link_urls.push(url.clone());
                a.link_hosts.push(host.clone());
            }
        }
        Some(a)
    }

    /// The pages and link counts of `writes`' reports when none of them
    /// has a link left to judge (each was known to be in its run, none was
    /// left out before the ledger): [`super::RECORD_PAGES`] records such a
    /// batch and counts those links as found and known. `None` when some
    /// report's links need [`RECORD_PAGES_FINDING`].
    pub(crate) fn all_known(writes: &[PageWrite]) -> Option<(Vec<i64>, Vec<i64>)> {
        let mut known = (Vec::new(), Vec::new());
        for w in writes {
            if let PageChange::Terminal {
                found: Some(found), ..
            } = &w.change
            {
                if !found.links.is_empty()
                    || found.off_pattern != 0
                    || found.off_robots != 0
                    || !found.examples.is_empty()
                {
                    return None;
                }
                known.0.push(w.page_id);
                known.1.push(found.reported);
            }
        }
        Some(known)
    }

    /// Binds the arrays after the batch's.
    pub(crate) fn bind<'q, O>(
        self,
        query: sqlx::query::QueryAs<'q, Postgres, O, PgArguments>,
    ) -> sqlx::query::QueryAs<'q, Postgres, O, PgArguments> {
        query
            .bind(self.link_pages)
            .bind(self.link_urls)
            .bind(self.link_hosts)
            .bind(self.pages)
            .bind(self.max_depth)
            .bind(self.same_host)
            .bind(self.max_pages)
            .bind(self.reported)
            .bind(self.off_pattern)
            .bind(self.off_robots)
            .bind(self.examples)
    }
}

/// [`super::RECORD_PAGES`] for a batch whose reports found links: the same
/// writes, and in the same statement the pages they found join their runs
/// (parameters in [`FindingArrays`]).
///
/// A link of a report that changed its page (a success, not a repeat) is
/// judged in order: `known` when the run has the URL; `host` when it leads
/// to another host than that page's (`same_host`) or to a host the run has
/// no `run_hosts` row for (so no robots.txt read); `depth` when the page
/// it is on is at its run's `max_depth`. The new URLs, each
/// once (the shallowest finding wins), are numbered per run by depth and
/// the finding page, and those within `max_pages` less the run's pages
/// (read from the run's row as locked, so up to date) are inserted, each
/// with its depth and the page it was found on. A URL that a batch
/// committed after this statement's snapshot was taken (while it waited
/// for the run's lock) inserted is skipped by the unique index and counted
/// as known; it took a place under the cap, so a run whose batches race
/// near `max_pages` may stop a few pages short of it, never over it. The run's open and total counts
/// grow by the pages added in the same update that takes the recorded
/// pages off them, so a report that finds pages keeps its run open: the
/// run moves to `finishing` only when nothing is open after the batch.
/// The run's `discovery` adds up the batch's counts and keeps up to
/// [`EXAMPLES_PER_REASON`] distinct examples of each reason a link was
/// left out for. When pages were added, the dispatchers are woken
/// (`pg_notify` on [`super::WAKE_CHANNEL`] with [`super::WAKE_DISPATCH`],
/// delivered at commit). Each changed page's row says which of its links
/// the run has once the statement commits (`in_run`: their places in $12,
/// from 1): those it had, and the new ones within the cap (added, or added
/// by a racing batch).
pub const RECORD_PAGES_FINDING: &str = concat!(
    record_pages_head!(),
    "
    wants as (
        select * from unnest($14::bigint[], $15::int[], $16::bool[], $17::bigint[], $18::bigint[],
                $19::bigint[], $20::bigint[], $21::jsonb[])
            as w(page_id, max_depth, same_host, max_pages, reported, off_pattern, off_robots, examples)),
    finders as materialized (
        select ch.id, ch.run_id, ch.host, ch.depth, w.max_depth, w.same_host, w.max_pages,
            w.reported, w.off_pattern, w.off_robots, w.examples
        from changed ch join wants w on w.page_id = ch.id
        where ch.status = 'succeeded'),
    judged as materialized (
        select f.run_id, l.url, l.host, f.id as found_on, f.depth + 1 as depth, f.max_pages,
            l.n,
            case when exists (
                    select 1 from pages p where p.run_id = f.run_id and md5(p.url) = md5(l.url)) then 'known'
                when f.same_host and l.host <> f.host then 'host'
                when not f.same_host and not exists (
                    select 1 from run_hosts h where h.run_id = f.run_id and h.host = l.host) then 'host'
                when f.depth >= f.max_depth then 'depth'
                else 'new' end as verdict
        from finders f
        join unnest($11::bigint[], $12::text[], $13::text[]) with ordinality as l(page_id, url, host, n)
            on l.page_id = f.id),
    fresh as materialized (
        select distinct on (run_id, url) run_id, url, depth, found_on, max_pages
        from judged where verdict = 'new'
        order by run_id, url, depth, found_on),
    ranked as materialized (
        select f.*, f.max_pages - k.total_pages as room,
            row_number() over (partition by f.run_id order by f.depth, f.found_on, f.url) as rn
        from fresh f join locked k on k.id = f.run_id),
    added as (
        insert into pages (run_id, url, depth, found_on)
        select run_id, url, depth, found_on from ranked where rn <= room
        order by run_id, url
        on conflict (run_id, md5(url)) do nothing
        returning run_id),
    found as (
        select t.run_id, t.reported, t.off_pattern, t.off_robots,
            (select count(*) from judged j where j.run_id = t.run_id and j.verdict = 'depth') as off_depth,
            (select count(*) from judged j where j.run_id = t.run_id and j.verdict = 'host') as off_host,
            (select count(*) from ranked r where r.run_id = t.run_id and r.rn > r.room) as off_cap,
            (select count(*) from added a where a.run_id = t.run_id) as added,
            t.examples
                || coalesce((select jsonb_agg(jsonb_build_object('reason', j.verdict, 'url',
                        case when strpos(j.url, '?') > 0 then split_part(j.url, '?', 1) || '?…'
                            else j.url end))
                    from (select verdict, url from judged j
                          where j.run_id = t.run_id and j.verdict in ('depth', 'host') limit 4) j), '[]')
                || coalesce((select jsonb_agg(jsonb_build_object('reason', 'cap', 'url',
                        case when strpos(r.url, '?') > 0 then split_part(r.url, '?', 1) || '?…'
                            else r.url end))
                    from (select url from ranked r
                          where r.run_id = t.run_id and r.rn > r.room limit 4) r), '[]') as examples
        from (select f.run_id, sum(f.reported) as reported, sum(f.off_pattern) as off_pattern,
                  sum(f.off_robots) as off_robots,
                  coalesce(jsonb_agg(e.value) filter (where e.value is not null), '[]') as examples
              from finders f
              left join lateral jsonb_array_elements(f.examples) as e(value) on true
              group by f.run_id) t),
    moved as (
        update runs r set open_pages = r.open_pages - c.n + coalesce(d.added, 0),
            total_pages = r.total_pages + coalesce(d.added, 0),
            succeeded_pages = r.succeeded_pages + c.succeeded,
            failed_pages = r.failed_pages + c.failed,
            timed_out_pages = r.timed_out_pages + c.timed_out,
            cancelled_pages = r.cancelled_pages + c.cancelled,
            status = case when r.status = 'running' and r.open_pages - c.n + coalesce(d.added, 0) = 0
                then 'finishing' else r.status end,
            discovery = case when d.run_id is null then r.discovery else jsonb_build_object(
                'found', coalesce((r.discovery->>'found')::bigint, 0) + d.reported,
                'added', coalesce((r.discovery->>'added')::bigint, 0) + d.added,
                'known', coalesce((r.discovery->>'known')::bigint, 0) + d.reported - d.off_pattern
                    - d.off_robots - d.off_depth - d.off_host - d.off_cap - d.added,
                'left_out', jsonb_build_object(
                    'pattern', coalesce((r.discovery->'left_out'->>'pattern')::bigint, 0) + d.off_pattern,
                    'depth', coalesce((r.discovery->'left_out'->>'depth')::bigint, 0) + d.off_depth,
                    'host', coalesce((r.discovery->'left_out'->>'host')::bigint, 0) + d.off_host,
                    'robots', coalesce((r.discovery->'left_out'->>'robots')::bigint, 0) + d.off_robots,
                    'cap', coalesce((r.discovery->'left_out'->>'cap')::bigint, 0) + d.off_cap),
                'examples', coalesce(r.discovery->'examples', '[]') || coalesce((
                    select jsonb_agg(n.x) from (
                        select u.x, row_number() over (partition by u.x->>'reason') as rn
                        from (select distinct t.x from jsonb_array_elements(d.examples) as t(x)) u
                        where not coalesce(r.discovery->'examples', '[]') @> jsonb_build_array(u.x)) n
                    where n.rn + (
                        select count(*) from jsonb_array_elements(coalesce(r.discovery->'examples', '[]'))
                            as e(x)
                        where e.x->>'reason' = n.x->>'reason') <= 3), '[]')) end,
            updated_at = now()
        from counts c left join found d on d.run_id = c.run_id
        where r.id = c.run_id
        returning r.id, r.status, coalesce(d.added, 0) as added),
    woke as (
        select pg_notify('fanfare_wake', 'dispatch') from (select 1 from added limit 1) a),
    kept as (
        select j.found_on, array_agg(j.n::int) as ns
        from judged j left join ranked r on r.run_id = j.run_id and r.url = j.url
        where j.verdict = 'known' or (j.verdict = 'new' and r.rn <= r.room)
        group by j.found_on)
    select ch.id, ch.status, m.status as run_status, coalesce(m.added, 0)::bigint as run_added,
        kp.ns as in_run
    from changed ch left join moved m on m.id = ch.run_id and ch.status <> 'pending'
        left join kept kp on kp.found_on = ch.id
        cross join (select count(*) from woke) w"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finding_statement_wakes_the_dispatchers_on_their_channel() {
        let wake = format!(
            "pg_notify('{}', '{}')",
            super::super::WAKE_CHANNEL,
            super::super::WAKE_DISPATCH
        );
        assert!(RECORD_PAGES_FINDING.contains(&wake));
    }

    #[test]
    fn an_empty_discovery_reads_from_an_empty_object() {
        let d: Discovery = serde_json::from_str("{}").unwrap();
        assert_eq!(d, Discovery::default());
        let d: Discovery = serde_json::from_value(serde_json::json!({
            "found": 3, "added": 1, "known": 1,
            "left_out": {"pattern": 1},
            "examples": [{"reason": "pattern", "url": "https://a.example/x"}]
        }))
        .unwrap();
        assert_eq!(d.left_out.pattern, 1);
        assert_eq!(d.examples[0].reason, LeftOut::Pattern);
    }
}
