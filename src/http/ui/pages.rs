//! The console's pages, rendered on the server with maud: every
//! interpolated value is escaped by it, and none of them carries inline
//! script or style.

use chrono::{DateTime, Utc};
use fanfare_crawler::{field_text, same_field_value};
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;
use uuid::Uuid;

use super::svg::{self, Bar, Counts, RunBar};
use super::words;
use crate::ledger::{
    Discovery, FetchCounts, FetchPercentiles, NotificationState, Outcome, Page, RenderCounts, Run,
    RunStatus, TimeBucket,
};
use crate::lifecycle::changes::{ChangeEntry, Changes, PageSnapshot};
use crate::overview::ScheduleView;

/// What every signed-in page's header needs.
pub struct Chrome<'a> {
    /// The session's CSRF token, for the sign-out form (and every other).
    pub csrf: &'a str,
}

fn layout(title: &str, chrome: Option<&Chrome<'_>>, head: Markup, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " · fanfare" }
                link rel="stylesheet" href="/ui/static/console.css";
                script src="/ui/static/console.js" defer {}
                (head)
            }
            body {
                header.top {
                    a.brand href="/ui/" { "fanfare" }
                    @if let Some(chrome) = chrome {
                        nav {
                            a href="/ui/" { "Schedules" }
                            a href="/ui/runs" { "Runs" }
                        }
                        form method="post" action="/ui/logout" {
                            (csrf_input(chrome.csrf))
                            button type="submit" data-action="sign-out" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn csrf_input(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

/// A form of one button that POSTs to `action` with the CSRF token.
fn post_button(action: &str, csrf: &str, label: &str, class: &str, name: &str) -> Markup {
    html! {
        form method="post" action=(action) {
            (csrf_input(csrf))
            button type="submit" class=(class) data-action=(name) { (label) }
        }
    }
}

/// The sign-in page; `failed` adds the generic refusal.
pub fn login(next: Option<&str>, failed: bool) -> Markup {
    layout(
        "Sign in",
        None,
        html! {},
        html! {
            section.card.login {
                h1 { "Sign in" }
                @if failed {
                    p.error role="alert" { "That token was not accepted." }
                }
                form method="post" action="/ui/login" {
                    label for="token" { "Admin token" }
                    input #token type="password" name="token" autocomplete="current-password"
                        required autofocus;
                    @if let Some(next) = next {
                        input type="hidden" name="next" value=(next);
                    }
                    button.primary type="submit" { "Sign in" }
                }
                p.muted.small { "The admin token is the daemon's " code { "[security] admin_token" } "." }
            }
        },
    )
}

/// An error page.
pub fn error(title: &str, message: &str, signed_in: Option<&Chrome<'_>>) -> Markup {
    layout(
        title,
        signed_in,
        html! {},
        html! {
            section.card {
                h1 { (title) }
                p { (message) }
                p { a href="/ui/" { "Back to the schedules" } }
            }
        },
    )
}

fn status_badge(run: &Run) -> Markup {
    badge(run.status, run.outcome)
}

fn badge(status: RunStatus, outcome: Option<Outcome>) -> Markup {
    match (status, outcome) {
        (RunStatus::Finished, Some(o)) => {
            html! { span class=(format!("badge {}", o.as_str())) { (o.as_str()) } }
        }
        (status, _) => html! { span.badge.open { (status_name(status)) } },
    }
}

fn status_name(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Listing => "listing",
        RunStatus::Running => "running",
        RunStatus::Finishing => "finishing",
        RunStatus::Finished => "finished",
    }
}

fn trigger_name(run: &Run) -> String {
    serde_json::to_value(run.trigger)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn run_duration(run: &Run, now: DateTime<Utc>) -> String {
    let took = words::duration(run.finished_at.unwrap_or(now) - run.created_at);
    if run.finished_at.is_some() {
        took
    } else {
        format!("{took} so far")
    }
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_string()
}

/// One schedule on the overview.
pub struct ScheduleRow {
    /// What the schedules API shows of it.
    pub view: ScheduleView,
    /// Its latest runs, newest first (at most 30), for the chart.
    pub recent: Vec<Run>,
}

fn next_fire(view: &ScheduleView) -> Option<String> {
    let at = view.next_fire_at?;
    let tz: chrono_tz::Tz = view
        .timezone
        .as_deref()
        .and_then(|tz| tz.parse().ok())
        .unwrap_or(chrono_tz::UTC);
    Some(words::local(at, &tz))
}

/// `/ui/`: every schedule.
pub fn schedules(chrome: &Chrome<'_>, rows: &[ScheduleRow], now: DateTime<Utc>) -> Markup {
    layout(
        "Schedules",
        Some(chrome),
        html! {},
        html! {
            h1 { "Schedules" }
            @if rows.is_empty() {
                p.muted { "No schedule is configured." }
            }
            div.cards {
                @for row in rows {
                    @let v = &row.view;
                    section.card data-schedule=(v.name) {
                        h2 {
                            a href=(format!("/ui/runs?schedule={}", urlencode(&v.name))) { (v.name) }
                            " "
                            @if v.paused { span.badge.paused { "paused" } }
                        }
                        dl.facts {
                            dt { "When" }
                            dd {
                                @match &v.cron {
                                    Some(expr) => {
                                        (words::cron_in_words(expr)) " "
                                        span.muted.small { code { (expr) } }
                                    }
                                    None => { "only when triggered" }
                                }
                            }
                            dt { "Time zone" }
                            dd { (v.timezone.as_deref().unwrap_or("—")) }
                            dt { "Next fire" }
                            dd {
                                @match (next_fire(v), v.paused) {
                                    (Some(t), false) => { (t) }
                                    (Some(t), true) => { (t) " " span.muted { "(skipped while paused)" } }
                                    (None, _) => { "—" }
                                }
                            }
                            dt { "Last run" }
                            dd {
                                @match &v.last_run {
                                    Some(run) => {
                                        a href=(format!("/ui/runs/{}", run.id)) { (words::utc(run.scheduled_for)) }
                                        " " (badge(run.status, run.outcome)) " "
                                        span.muted {
                                            @match run.finished_at {
                                                Some(f) => { (words::duration(f - run.created_at)) }
                                                None => { (words::duration(now - run.created_at)) " so far" }
                                            }
                                        }
                                    }
                                    None => { "none yet" }
                                }
                            }
                        }
                        @if !row.recent.is_empty() {
                            @let bars: Vec<RunBar> = row.recent.iter().rev().map(|r| RunBar::of(r, now)).collect();
                            (svg::durations(&bars, 30))
                            p.muted.small { "Duration of the last " (row.recent.len()) " runs, oldest first" }
                        }
                        div.actions {
                            (post_button(&format!("/ui/schedules/{}/trigger", urlencode(&v.name)), chrome.csrf, "Trigger now", "primary", "trigger"))
                            @if v.paused {
                                (post_button(&format!("/ui/schedules/{}/resume", urlencode(&v.name)), chrome.csrf, "Resume", "", "resume"))
                            } @else {
                                (post_button(&format!("/ui/schedules/{}/pause", urlencode(&v.name)), chrome.csrf, "Pause", "", "pause"))
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The filters of `/ui/runs`.
pub struct RunsFilter<'a> {
    /// Only this schedule's runs.
    pub schedule: Option<&'a str>,
    /// Only runs in this state (see [`RUN_FILTERS`]).
    pub status: Option<&'a str>,
}

/// The `status` values `/ui/runs` understands, with their labels.
pub const RUN_FILTERS: &[(&str, &str)] = &[
    ("open", "open"),
    ("finished", "finished"),
    ("succeeded", "succeeded"),
    ("partial", "partial"),
    ("failed", "failed"),
    ("cancelled", "cancelled"),
];

/// `/ui/runs`: runs newest first, with a link to the next (older) page.
pub fn runs(
    chrome: &Chrome<'_>,
    schedules: &[String],
    filter: &RunsFilter<'_>,
    runs: &[Run],
    older: Option<String>,
    first_page: bool,
    now: DateTime<Utc>,
) -> Markup {
    layout(
        "Runs",
        Some(chrome),
        html! {},
        html! {
            h1 { "Runs" }
            form.filters method="get" action="/ui/runs" {
                label {
                    "Schedule"
                    select name="schedule" {
                        option value="" { "all" }
                        @for s in schedules {
                            option value=(s) selected[filter.schedule == Some(s.as_str())] { (s) }
                        }
                    }
                }
                label {
                    "Status"
                    select name="status" {
                        option value="" { "any" }
                        @for (value, label) in RUN_FILTERS {
                            option value=(value) selected[filter.status == Some(*value)] { (label) }
                        }
                    }
                }
                button type="submit" { "Show" }
            }
            @if runs.is_empty() {
                p.muted { "No runs." }
            } @else {
                div.scroll {
                    table {
                        thead { tr {
                            th { "Scheduled for" } th { "Schedule" } th { "Trigger" } th { "Progress" }
                            th.num { "Pages" } th.num { "Failed" } th { "Outcome" } th { "Duration" }
                        } }
                        tbody {
                            @for run in runs {
                                @let c = Counts::of(run);
                                tr data-run=(run.id) {
                                    td.when { a href=(format!("/ui/runs/{}", run.id)) { (words::utc(run.scheduled_for)) } }
                                    td { (run.schedule) }
                                    td { (trigger_name(run)) }
                                    td { (svg::progress(&c)) span.small.muted { (c.percent()) " %" } }
                                    td.num { (c.terminal()) " / " (c.total) }
                                    td.num { (c.failed + c.timed_out) }
                                    td { (status_badge(run)) }
                                    td { (run_duration(run, now)) }
                                }
                            }
                        }
                    }
                }
            }
            div.pager {
                @if !first_page {
                    a href=(runs_href(filter, None)) { "Newest" }
                }
                @if let Some(before) = older {
                    a href=(runs_href(filter, Some(&before))) { "Older" }
                }
            }
        },
    )
}

fn runs_href(filter: &RunsFilter<'_>, before: Option<&str>) -> String {
    let mut q = Vec::new();
    if let Some(s) = filter.schedule {
        q.push(format!("schedule={}", urlencode(s)));
    }
    if let Some(s) = filter.status {
        q.push(format!("status={}", urlencode(s)));
    }
    if let Some(b) = before {
        q.push(format!("before={}", urlencode(b)));
    }
    if q.is_empty() {
        "/ui/runs".into()
    } else {
        format!("/ui/runs?{}", q.join("&"))
    }
}

/// Percent-encodes a query value or path segment.
pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Everything `/ui/runs/{id}` shows.
pub struct RunView {
    /// The run.
    pub run: Run,
    /// Pages that became terminal over time.
    pub over_time: Vec<TimeBucket>,
    /// The span `over_time` divides.
    pub span: (DateTime<Utc>, DateTime<Utc>),
    /// How many slices the span is divided into.
    pub slices: i32,
    /// fetch_ms percentiles.
    pub fetch: FetchPercentiles,
    /// fetch_ms buckets (1-based, see [`FETCH_THRESHOLDS`]) and counts.
    pub fetch_buckets: Vec<(i32, i64)>,
    /// One page of failed and timed-out pages.
    pub failures: Vec<Page>,
    /// The id the failures page starts after (0 for the first).
    pub failures_after: i64,
    /// Where the next failures page starts, when there is one.
    pub failures_next: Option<i64>,
    /// What changed since the previous run; `None` when not compared.
    pub changes: Option<Changes>,
    /// One page of its new, changed and gone pages.
    pub change_rows: Vec<ChangeEntry>,
    /// The id the changes page starts after (0 for the first).
    pub changes_after: i64,
    /// Where the next changes page starts, when there is one.
    pub changes_next: Option<i64>,
    /// Its notifications.
    pub notifications: Vec<NotificationState>,
    /// Its pages by how they were fetched (as served, in a browser, sent
    /// on to the browser).
    pub render: RenderCounts,
    /// Its succeeded pages by how they were fetched (in full, or not
    /// modified since the previous run).
    pub fetches: FetchCounts,
}

/// The lower bounds (ms) of the fetch_ms chart's buckets.
pub const FETCH_THRESHOLDS: &[f64] = &[
    0.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
];

fn ms_label(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", ms / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{} ms", v.round() as i64))
        .unwrap_or_else(|| "—".into())
}

fn error_parts(error: &Option<Value>) -> (String, String) {
    match error {
        Some(e) => (
            e["kind"].as_str().unwrap_or("").to_string(),
            e["message"].as_str().unwrap_or("").to_string(),
        ),
        None => (String::new(), String::new()),
    }
}

fn listing_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "—".into(),
        Value::Array(items) => items
            .iter()
            .map(listing_value)
            .collect::<Vec<_>>()
            .join(", "),
        Value::Null => "—".into(),
        other => other.to_string(),
    }
}

/// A page's facts in a table cell: `title; field: value, ...`, only the
/// ones in `only` when given.
fn snapshot_text(s: &PageSnapshot, only: Option<&[String]>) -> String {
    let wanted = |name: &str| only.is_none_or(|o| o.iter().any(|n| n == name));
    let mut parts = Vec::new();
    if wanted("title") {
        parts.push(format!("title: {}", s.title.as_deref().unwrap_or("—")));
    }
    for (name, value) in &s.fields {
        if wanted(name) {
            parts.push(format!(
                "{name}: {}",
                field_text(value).as_deref().unwrap_or("—")
            ));
        }
    }
    if parts.is_empty() {
        // compare = "content": the body differs, not the facts.
        parts.push(format!(
            "sha256 {}",
            s.content_sha256
                .as_deref()
                .map_or("—", |h| &h[..h.len().min(12)])
        ));
    }
    parts.join("; ")
}

/// The before and after cells of a change: for a changed page only what
/// differs.
fn change_texts(c: &ChangeEntry) -> (String, String) {
    let (before, after) = (&c.page.before, &c.page.after);
    let differing: Option<Vec<String>> = match (before, after) {
        (Some(b), Some(a)) => {
            let mut names = Vec::new();
            if b.title != a.title {
                names.push("title".to_string());
            }
            let null = Value::Null;
            for name in b.fields.keys().chain(a.fields.keys()) {
                let (old, new) = (
                    b.fields.get(name).unwrap_or(&null),
                    a.fields.get(name).unwrap_or(&null),
                );
                if !same_field_value(old, new) && !names.contains(name) {
                    names.push(name.clone());
                }
            }
            Some(names)
        }
        _ => None,
    };
    let text = |s: &Option<PageSnapshot>| {
        s.as_ref()
            .map(|s| snapshot_text(s, differing.as_deref()))
            .unwrap_or_else(|| "—".into())
    };
    (text(before), text(after))
}

/// `/ui/runs/{id}`.
pub fn run(chrome: &Chrome<'_>, v: &RunView, now: DateTime<Utc>) -> Markup {
    let run = &v.run;
    let c = Counts::of(run);
    let open = run.status != RunStatus::Finished;
    let title = format!("Run {} of {}", short(run.id), run.schedule);
    let head = if open {
        // Without script the page refreshes itself while the run is open;
        // with it, console.js follows the run's events instead.
        html! { noscript { meta http-equiv="refresh" content="5"; } }
    } else {
        html! {}
    };
    layout(
        &title,
        Some(chrome),
        head,
        html! {
            (run_progress(chrome, run, &c, open))
            (run_facts(run, now))
            (run_charts(v))
            (run_changes(v, open))
            (run_failures(v))
            (run_notifications(v, open))
            @if let Some(d) = &run.discovery {
                (run_discovery(&d.0))
            }
            @if v.render.rendered > 0 {
                (run_rendering(&v.render))
            }
            @if v.fetches.not_modified > 0 {
                (run_fetches(&v.fetches))
            }
            @if let Some(Value::Object(listing)) = &run.listing {
                (run_listing(listing))
            }
        },
    )
}

/// The run page's heading and its progress card with the run's actions.
fn run_progress(chrome: &Chrome<'_>, run: &Run, c: &Counts, open: bool) -> Markup {
    let failures = c.failed + c.timed_out;
    html! {
        h1 {
            "Run " span.mono { (short(run.id)) } " of "
            a href=(format!("/ui/runs?schedule={}", urlencode(&run.schedule))) { (run.schedule) }
            " " (status_badge(run))
        }
        section.card #progress data-events=[open.then(|| format!("/ui/runs/{}/events", run.id))] {
            p data-percent { (c.summary()) }
            (svg::progress(c))
            ul.counts {
                @for (name, label, n, _) in c.segments() {
                    li { span class=(format!("dot {name}")) {} (label) " " strong data-count=(name) { (n) } }
                }
            }
            div.actions {
                @if open && run.status != RunStatus::Finishing {
                    (post_button(&format!("/ui/runs/{}/cancel", run.id), chrome.csrf, "Cancel run", "danger", "cancel"))
                }
                @if failures > 0 {
                    (post_button(&format!("/ui/runs/{}/redrive", run.id), chrome.csrf, "Redrive failed pages", "primary", "redrive"))
                }
                a.button href=(format!("/ui/runs/{}/results.csv", run.id)) download { "Results (CSV)" }
                a.button href=(format!("/ui/runs/{}/results.jsonl", run.id)) download { "Results (JSON Lines)" }
                @if open {
                    noscript { a href=(format!("/ui/runs/{}", run.id)) { "Refresh" } }
                }
            }
        }
    }
}

/// The run page's card of facts about the run.
fn run_facts(run: &Run, now: DateTime<Utc>) -> Markup {
    html! {
        section.card {
            dl.facts {
                dt { "Status" } dd { span data-status { (status_name(run.status)) } }
                dt { "Outcome" } dd { (run.outcome.map(Outcome::as_str).unwrap_or("—")) }
                dt { "Trigger" } dd { (trigger_name(run)) }
                @if let Some(parent) = run.parent_run_id {
                    dt { "Redrive of" } dd { a.mono href=(format!("/ui/runs/{parent}")) { (parent) } }
                }
                dt { "Scheduled for" } dd { (words::utc(run.scheduled_for)) }
                dt { "Started" } dd { (words::utc(run.created_at)) }
                dt { "Listed" } dd { (run.listed_at.map(words::utc).unwrap_or_else(|| "—".into())) }
                dt { "Finished" } dd { (run.finished_at.map(words::utc).unwrap_or_else(|| "—".into())) }
                dt { "Duration" } dd { (run_duration(run, now)) }
                @if let Some(stuck) = run.stuck_at {
                    dt { "Reported stuck" } dd { (words::utc(stuck)) }
                }
                @if let Some(error) = &run.error {
                    dt { "Error" } dd.error { (error) }
                }
                dt { "Run id" } dd.mono { (run.id) }
            }
        }
    }
}

/// The run page's charts: pages reported over time and fetch times.
fn run_charts(v: &RunView) -> Markup {
    html! {
        div.charts {
            section.card {
                h2 { "Pages reported over time" }
                (over_time_chart(v))
            }
            section.card {
                h2 { "Fetch time (fetch_ms)" }
                @if v.fetch.pages > 0 {
                    (fetch_chart(v))
                    p.small.muted {
                        (v.fetch.pages) " pages · p50 " (opt_ms(v.fetch.p50)) " · p90 " (opt_ms(v.fetch.p90))
                        " · p99 " (opt_ms(v.fetch.p99)) " · max " (opt_ms(v.fetch.max))
                    }
                } @else {
                    p.muted { "No page has succeeded yet." }
                }
            }
        }
    }
}

/// The run page's changes since the previous run, a page at a time.
fn run_changes(v: &RunView, open: bool) -> Markup {
    html! {
        h2 #changes { "Changes since the previous run" }
        @if let Some(ch) = &v.changes {
            ul.counts data-changes {
                @for (name, n) in [("new", ch.new), ("changed", ch.changed), ("gone", ch.gone), ("unchanged", ch.unchanged), ("unknown", ch.unknown)] {
                    li { span class=(format!("dot {name}")) {} (name) " " strong data-change-count=(name) { (n) } }
                }
            }
            @if let Some(since) = ch.since_run_id {
                p.small.muted { "Compared with run " a.mono href=(format!("/ui/runs/{since}")) { (short(since)) } "." }
            }
            @if v.change_rows.is_empty() && v.changes_after == 0 {
                p.muted { "No page is new, changed or gone." }
            } @else {
                div.scroll {
                    table data-table="changes" {
                        thead { tr { th { "Change" } th { "URL" } th { "Before" } th { "After" } } }
                        tbody {
                            @for c in &v.change_rows {
                                @let (before, after) = change_texts(c);
                                tr {
                                    td { (c.page.kind.as_str()) }
                                    td.url { (c.page.url) }
                                    td { (before) }
                                    td { (after) }
                                }
                            }
                        }
                    }
                }
                (pager(v.run.id, "changes", "changes_after", v.changes_after, v.changes_next))
            }
        } @else {
            p.muted {
                @if open { "Compared with the previous run when this run finishes." }
                @else { "Not compared: the schedule's first run, a redrive run, or a run whose page list was never read to the end." }
            }
        }
    }
}

/// The run page's failed and timed-out pages, a page at a time.
fn run_failures(v: &RunView) -> Markup {
    html! {
        h2 #failures { "Failed and timed-out pages" }
        @if v.failures.is_empty() && v.failures_after == 0 {
            p.muted { "None." }
        } @else {
            div.scroll {
                table data-table="failures" {
                    thead { tr { th { "URL" } th { "Status" } th.num { "Attempts" } th { "Error" } th { "Message" } } }
                    tbody {
                        @for p in &v.failures {
                            @let (kind, message) = error_parts(&p.error);
                            tr {
                                td.url { (p.url) }
                                td { (p.status.as_str()) }
                                td.num { (p.attempt) }
                                td { (kind) }
                                td { (message) }
                            }
                        }
                    }
                }
            }
            (pager(v.run.id, "failures", "after", v.failures_after, v.failures_next))
        }
    }
}

/// Links to the first and the next page of the run page's table at
/// `#anchor`, whose pages start after the id in the query's `param`.
fn pager(run_id: Uuid, anchor: &str, param: &str, after: i64, next: Option<i64>) -> Markup {
    html! {
        div.pager {
            @if after > 0 {
                a href=(format!("/ui/runs/{run_id}#{anchor}")) { "First" }
            }
            @if let Some(next) = next {
                a href=(format!("/ui/runs/{run_id}?{param}={next}#{anchor}")) { "Next" }
            }
        }
    }
}

/// The run page's notifications and their delivery.
fn run_notifications(v: &RunView, open: bool) -> Markup {
    html! {
        h2 { "Notifications" }
        @if v.notifications.is_empty() {
            p.muted { @if open { "Sent when the run finishes." } @else { "None configured." } }
        } @else {
            div.scroll {
                table {
                    thead { tr { th { "Event" } th { "Target" } th { "State" } th.num { "Attempts" } th { "Delivered" } th { "Last error" } } }
                    tbody {
                        @for n in &v.notifications {
                            tr {
                                td { (n.event.as_str()) }
                                td { (n.kind) " " (n.target) }
                                td { (n.status) }
                                td.num { (n.attempts) }
                                td { (n.delivered_at.map(words::utc).unwrap_or_else(|| "—".into())) }
                                td { (n.last_error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The run page's card of what following links found.
fn run_discovery(d: &Discovery) -> Markup {
    html! {
        section.card {
            h2 { "Links followed" }
            dl.facts {
                dt { "links found" } dd { (d.found) }
                dt { "pages added" } dd { (d.added) }
                dt { "already in the run" } dd { (d.known) }
                dt { "left out by pattern" } dd { (d.left_out.pattern) }
                dt { "left out by depth" } dd { (d.left_out.depth) }
                dt { "left out by host" } dd { (d.left_out.host) }
                dt { "left out by robots.txt" } dd { (d.left_out.robots) }
                dt { "left out by max_pages" } dd { (d.left_out.cap) }
                @for e in &d.examples {
                    dt { "e.g. " (e.reason.as_str()) } dd { (e.url) }
                }
            }
        }
    }
}

/// The run page's card of its conditional fetches: pages fetched in full
/// and pages the site said had not changed since the previous run.
fn run_fetches(fetches: &FetchCounts) -> Markup {
    html! {
        section.card #fetches {
            h2 { "Fetches" }
            dl.facts {
                dt { "fetched in full" } dd { (fetches.fetched) }
                dt { "not modified" } dd { (fetches.not_modified) }
            }
        }
    }
}

/// The run page's card of how its pages were fetched.
fn run_rendering(render: &RenderCounts) -> Markup {
    html! {
        section.card #rendering {
            h2 { "Rendering" }
            dl.facts {
                dt { "as served" } dd { (render.plain) }
                dt { "in a browser" } dd { (render.rendered) }
                dt { "sent on to the browser" } dd { (render.escalated) }
            }
        }
    }
}

/// The run page's card of what reading its page source found.
fn run_listing(listing: &serde_json::Map<String, Value>) -> Markup {
    html! {
        section.card {
            h2 { "Listing" }
            dl.facts {
                @for (k, val) in listing {
                    dt { (k.replace('_', " ")) } dd { (listing_value(val)) }
                }
            }
        }
    }
}

fn over_time_chart(v: &RunView) -> Markup {
    let (from, to) = v.span;
    let total: i64 = v.over_time.iter().map(|b| b.succeeded + b.other).sum();
    if total == 0 {
        return html! { p.muted { "No page has reported yet." } };
    }
    let slice = (to - from) / v.slices.max(1);
    let bars: Vec<Bar> = (1..=v.slices)
        .map(|i| {
            let b = v.over_time.iter().find(|b| b.bucket == i);
            let (ok, other) = b.map(|b| (b.succeeded, b.other)).unwrap_or((0, 0));
            let start = slice * (i - 1);
            Bar {
                label: String::new(),
                title: format!(
                    "{} – {}: {ok} succeeded, {other} failed, timed out or cancelled",
                    words::duration(start),
                    words::duration(start + slice)
                ),
                stack: vec![(ok, svg::GREEN), (other, svg::RED)],
            }
        })
        .collect();
    html! {
        (svg::bars(&bars, "pages reported over time", "0 s", &words::duration(to - from)))
        p.small.muted { "Pages that became terminal, by time since the run started; green succeeded, red did not." }
    }
}

fn fetch_chart(v: &RunView) -> Markup {
    let bars: Vec<Bar> = FETCH_THRESHOLDS
        .iter()
        .enumerate()
        .map(|(i, lo)| {
            let n = v
                .fetch_buckets
                .iter()
                .find(|(b, _)| *b as usize == i + 1)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            let range = match FETCH_THRESHOLDS.get(i + 1) {
                Some(hi) => format!("{} – {}", ms_label(*lo), ms_label(*hi)),
                None => format!("{} and more", ms_label(*lo)),
            };
            Bar {
                label: ms_label(*lo).replace(' ', ""),
                title: format!("{range}: {n} pages"),
                stack: vec![(n, svg::BLUE)],
            }
        })
        .collect();
    html! {
        (svg::bars(&bars, "fetch_ms distribution", "", "ms to the end of the body"))
    }
}
