//! The reference model of one run and the operations that drive it: each
//! operation is played against the real ledger functions (through a real
//! [`Runs`](fanfare::runs::Runs) replica) and against the model, and the
//! ledger must then look exactly like the model says.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fanfare::config::Tolerance;
use fanfare::ledger::{self, PageError};
use fanfare::lifecycle::page::{self, Event as PageEvent, Next, Retry, RetryReason};
use fanfare::lifecycle::{run as rules, Closing};
use fanfare::runs::{Handled, PageAttempt};
use fanfare::sweep;
use fanfare::Settings;
use fanfare_crawler::ErrorKind;
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

use crate::harness::{
    check_invariants, outcome_of, unlimited_hosts, Database, History, Policy, Replica, Snapshot,
    PAGE_TIMEOUT, SCHEDULE,
};

/// What a crawler reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Succeeded,
    /// A failure no retry fixes.
    Failed,
    /// A failure another attempt may fix.
    Retryable,
    /// The page as served looks unrendered (an app shell): with `render =
    /// "auto"` it goes on to the browser. (A browser's report of a page it
    /// rendered is a success whatever it found.)
    Unrendered,
}

/// How a run is closed early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    Cancelled,
    Failed,
    TimedOut,
}

/// The page event a report of an event is (as the callback makes it), and
/// its facts.
fn report_event(report: Report, n: u64, event: Event) -> (PageEvent, Option<serde_json::Value>) {
    let error = |kind, retryable| PageError::new(kind, format!("report {n}"), retryable);
    match report {
        Report::Succeeded => (PageEvent::ReportSucceeded, Some(json!({"report": n}))),
        Report::Unrendered if event.render => {
            (PageEvent::ReportSucceeded, Some(json!({"report": n})))
        }
        // What the callback makes of it; the schedule decides `auto`.
        Report::Unrendered => (
            PageEvent::LooksUnrendered { auto: false },
            Some(json!({"report": n, "looks_unrendered": true})),
        ),
        Report::Failed => (
            PageEvent::ReportFailed(error(ErrorKind::HttpStatus, false)),
            None,
        ),
        Report::Retryable => (
            PageEvent::ReportFailed(error(ErrorKind::Connect, true)),
            None,
        ),
    }
}

/// How the dispatcher's invoke of a claimed page fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeFailure {
    /// Lambda throttled it: the page never ran, the attempt is refunded.
    Throttled,
    /// A failure another invoke may fix: retried while attempts are left.
    Retryable,
    /// Lambda rejected the page: it fails.
    Rejected,
}

impl InvokeFailure {
    /// The page event the dispatcher makes of it.
    fn event(self) -> PageEvent {
        let message = "invoke failed".to_string();
        match self {
            InvokeFailure::Throttled => PageEvent::InvokeThrottled {
                message,
                retry_after: Some(Duration::from_secs(1)),
            },
            InvokeFailure::Retryable => PageEvent::InvokeFailedRetryable(message),
            InvokeFailure::Rejected => PageEvent::InvokeRejected(message),
        }
    }
}

/// One step of a case.
#[derive(Debug, Clone)]
pub enum Op {
    /// A replica's dispatcher claims up to `limit` pages and invokes them;
    /// with `backoff_over`, the retry backoffs set so far have passed.
    Dispatch { limit: i64, backoff_over: bool },
    /// A dispatch (backoffs over) whose every invoke fails; the
    /// dispatcher records each failure as `Dispatcher::invoke_failed` does.
    DispatchFailing { limit: i64, failure: InvokeFailure },
    /// A crawler reports one invoked event (Lambda may run an event more
    /// than once, so an event may be reported again, differently).
    Report { event: Pick, report: Report },
    /// A report already delivered is delivered again, unchanged.
    Duplicate { delivered: Pick },
    /// Lambda drops an event: it is never reported.
    Lose { event: Pick },
    /// The deadlines of the dispatched pages picked by `mask` (bit i: page
    /// i) pass, and a replica sweeps.
    Deadline { mask: u8 },
    /// The lister inserts the rest of the page list.
    ListRest,
    /// The lister inserts the rest and marks the list complete.
    FinishListing,
    /// The replica restarts cleanly.
    Restart,
    /// The replica is killed `after_ms` into `op` (a dispatch, a report or
    /// a sweep), which then happened entirely, not at all, or (a sweep) for
    /// some pages; a dispatch's claim, if it happened, was never invoked.
    Crash { op: Box<Op>, after_ms: u8 },
    /// The run is closed early (operator cancel, failure, run timeout).
    Close(Close),
}

/// A case: the schedule, the page list and the operations.
#[derive(Debug, Clone)]
pub struct Case {
    pub policy: Policy,
    /// Pages in the run's list.
    pub pages: usize,
    /// Pages listed before the first operation.
    pub listed: usize,
    /// Whether the listing is complete before the first operation (only
    /// when every page is listed).
    pub listing_done: bool,
    pub ops: Vec<Op>,
}

fn report() -> impl Strategy<Value = Report> {
    prop_oneof![
        3 => Just(Report::Succeeded),
        1 => Just(Report::Failed),
        2 => Just(Report::Retryable),
        3 => Just(Report::Unrendered),
    ]
}

fn crashable() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1i64..=8, any::<bool>()).prop_map(|(limit, backoff_over)| Op::Dispatch {
            limit,
            backoff_over
        }),
        (any::<Pick>(), report()).prop_map(|(event, report)| Op::Report { event, report }),
        any::<u8>().prop_map(|mask| Op::Deadline { mask }),
    ]
}

/// Any operation, weighted towards the common ones.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (1i64..=8, any::<bool>())
            .prop_map(|(limit, backoff_over)| Op::Dispatch { limit, backoff_over }),
        18 => (any::<Pick>(), report()).prop_map(|(event, report)| Op::Report { event, report }),
        6 => any::<Pick>().prop_map(|delivered| Op::Duplicate { delivered }),
        3 => any::<Pick>().prop_map(|event| Op::Lose { event }),
        2 => (
            1i64..=8,
            prop_oneof![
                Just(InvokeFailure::Throttled),
                Just(InvokeFailure::Retryable),
                Just(InvokeFailure::Rejected)
            ]
        )
            .prop_map(|(limit, failure)| Op::DispatchFailing { limit, failure }),
        6 => any::<u8>().prop_map(|mask| Op::Deadline { mask }),
        2 => Just(Op::ListRest),
        3 => Just(Op::FinishListing),
        2 => Just(Op::Restart),
        6 => (crashable(), 0u8..=4).prop_map(|(op, after_ms)| Op::Crash { op: Box::new(op), after_ms }),
        1 => prop_oneof![Just(Close::Cancelled), Just(Close::Failed), Just(Close::TimedOut)]
            .prop_map(Op::Close),
    ]
}

/// A schedule's settings.
pub fn policy() -> impl Strategy<Value = Policy> {
    let tolerated = prop_oneof![
        3 => Just(Tolerance::Count(0)),
        1 => (1i64..=2).prop_map(Tolerance::Count),
        1 => prop_oneof![Just(0.0), Just(20.0), Just(50.0), Just(100.0)].prop_map(Tolerance::Percent),
    ];
    (1u32..=3, 1i64..=8, tolerated, 1usize..=2, any::<bool>()).prop_map(
        |(max_attempts, max_in_flight, tolerated, targets, render_auto)| Policy {
            max_attempts,
            max_in_flight,
            tolerated,
            targets,
            render_auto,
        },
    )
}

/// A whole case with up to `max_ops` operations.
pub fn case(max_ops: usize) -> impl Strategy<Value = Case> {
    (policy(), 1usize..=8)
        .prop_flat_map(move |(policy, pages)| {
            (
                Just(policy),
                Just(pages),
                0..=pages,
                any::<bool>(),
                prop::collection::vec(op(), 0..=max_ops),
            )
        })
        .prop_map(|(policy, pages, listed, done, ops)| Case {
            policy,
            pages,
            listed,
            listing_done: done && listed == pages,
            ops,
        })
}

/// A page as the model has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Pending { backoff: bool },
    Dispatched,
    Terminal(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Page {
    id: i64,
    state: State,
    attempt: i32,
    reported_attempt: Option<i32>,
    /// Dispatched and past its deadline (until the next claim).
    overdue: bool,
    /// Dispatches that do not count against `max_attempts` (the plain
    /// fetch of a page sent on to the browser).
    uncounted: i32,
    /// Dispatched to the browser.
    render: bool,
    /// Sent on to the browser after its plain fetch.
    escalated: bool,
}

/// What the ledger should hold about the run.
#[derive(Debug, Clone)]
pub struct Model {
    policy: Policy,
    pages: Vec<Page>,
    listing: bool,
    outcome: Option<String>,
}

/// What a page completion should answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Recorded { finished: bool },
    Duplicate,
}

/// What handling a page event should answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Requeued,
    Recorded { finished: bool },
    Stale,
}

impl Want {
    fn of(handled: &Handled) -> Self {
        match handled {
            Handled::Requeued => Want::Requeued,
            Handled::Recorded { finished } => Want::Recorded {
                finished: finished.is_some(),
            },
            Handled::Stale | Handled::RunFailed(_) => Want::Stale,
        }
    }
}

impl Model {
    fn new(policy: Policy, ids: &[i64], listing: bool) -> Self {
        let mut model = Self {
            policy,
            pages: Vec::new(),
            listing: true,
            outcome: None,
        };
        model.add(ids);
        if !listing {
            model.finish_listing();
        }
        model
    }

    fn add(&mut self, ids: &[i64]) {
        self.pages.extend(ids.iter().map(|&id| Page {
            id,
            state: State::Pending { backoff: false },
            attempt: 0,
            reported_attempt: None,
            overdue: false,
            uncounted: 0,
            render: false,
            escalated: false,
        }));
    }

    fn finished(&self) -> bool {
        self.outcome.is_some()
    }

    fn open(&self) -> usize {
        self.pages
            .iter()
            .filter(|p| !matches!(p.state, State::Terminal(_)))
            .count()
    }

    fn count(&self, status: &str) -> i64 {
        self.pages
            .iter()
            .filter(|p| p.state == State::Terminal(status_name(status)))
            .count() as i64
    }

    fn finish(&mut self, forced: Option<&str>) {
        let bad = self.count("failed") + self.count("timed_out") + self.count("cancelled");
        let outcome = forced.unwrap_or_else(|| {
            outcome_of(
                &self.policy,
                self.pages.len() as i64,
                self.count("succeeded"),
                bad,
            )
        });
        self.outcome = Some(outcome.to_string());
    }

    /// A page becomes terminal if it is not already.
    fn complete(&mut self, i: usize, attempt: i32, status: &'static str) -> Expect {
        let page = &mut self.pages[i];
        if matches!(page.state, State::Terminal(_)) {
            return Expect::Duplicate;
        }
        page.state = State::Terminal(status);
        page.reported_attempt = Some(attempt);
        let finished = !self.listing && !self.finished() && self.open() == 0;
        if finished {
            self.finish(None);
        }
        Expect::Recorded { finished }
    }

    /// `event` happened to page `i`'s `attempt`: its next state is what the
    /// daemon's own transition function says, over the attempts that count.
    fn event(&mut self, i: usize, attempt: i32, event: PageEvent) -> Want {
        let event = match event {
            PageEvent::LooksUnrendered { .. } => PageEvent::LooksUnrendered {
                auto: self.policy.render_auto,
            },
            other => other,
        };
        let counted = attempt - self.pages[i].uncounted;
        match page::next(counted, self.policy.max_attempts, event) {
            Next::Requeue(Retry {
                uses_attempt,
                reason,
                ..
            }) => {
                let page = &self.pages[i];
                if page.state == State::Dispatched && page.attempt == attempt {
                    if reason == RetryReason::Render {
                        self.send_to_browser(i);
                    } else {
                        self.requeue(i, !uses_attempt);
                    }
                    Want::Requeued
                } else {
                    Want::Stale
                }
            }
            Next::Terminal(status, _) => {
                match self.complete(i, attempt, status_name(status.as_str())) {
                    Expect::Recorded { finished } => Want::Recorded { finished },
                    Expect::Duplicate => Want::Stale,
                }
            }
            Next::FailRun(reason) => {
                panic!("the model plays no event that fails the run ({reason})")
            }
        }
    }

    /// The pages a claim of `limit` takes: (index, attempt).
    fn claim(&mut self, limit: i64) -> (i64, Vec<(usize, i32)>) {
        if self.finished() {
            return (0, Vec::new());
        }
        let in_flight = self
            .pages
            .iter()
            .filter(|p| p.state == State::Dispatched)
            .count() as i64;
        let room = (self.policy.max_in_flight - in_flight).min(limit);
        let mut claimed = Vec::new();
        for (i, page) in self.pages.iter_mut().enumerate() {
            if (claimed.len() as i64) >= room {
                break;
            }
            if page.state == (State::Pending { backoff: false }) {
                page.state = State::Dispatched;
                page.attempt += 1;
                page.overdue = false;
                claimed.push((i, page.attempt));
            }
        }
        (in_flight + claimed.len() as i64, claimed)
    }

    /// Puts dispatched page `i` back to pending after a backoff; with
    /// `refund`, its attempt does not count.
    fn requeue(&mut self, i: usize, refund: bool) {
        let page = &mut self.pages[i];
        page.state = State::Pending { backoff: true };
        page.overdue = false;
        if refund {
            page.attempt -= 1;
        }
    }

    /// Dispatched page `i` goes on to the browser: pending again at once
    /// (the test's clock holds it like a backoff until a dispatch ends
    /// them), its attempt kept but not counted.
    fn send_to_browser(&mut self, i: usize) {
        let page = &mut self.pages[i];
        page.state = State::Pending { backoff: true };
        page.overdue = false;
        page.uncounted += 1;
        page.render = true;
        page.escalated = true;
    }

    /// The dispatched pages past their deadline: the ones a sweep handles.
    fn overdue(&self) -> Vec<usize> {
        (0..self.pages.len())
            .filter(|&i| self.pages[i].state == State::Dispatched && self.pages[i].overdue)
            .collect()
    }

    fn end_backoffs(&mut self) {
        for page in &mut self.pages {
            if let State::Pending { backoff } = &mut page.state {
                *backoff = false;
            }
        }
    }

    /// The deadline of dispatched page `i` passed and a sweep handled it.
    fn sweep(&mut self, i: usize) {
        self.pages[i].overdue = false;
        let attempt = self.pages[i].attempt;
        self.event(i, attempt, PageEvent::DeadlinePassed);
    }

    /// Marks the list complete; whether that finished the run.
    fn finish_listing(&mut self) -> Option<bool> {
        if !self.listing {
            return None;
        }
        self.listing = false;
        let finished = !self.finished() && self.open() == 0;
        if finished {
            self.finish(None);
        }
        Some(finished)
    }

    /// Closes the run early; whether it was still open.
    fn close(&mut self, close: Close) -> bool {
        if self.finished() {
            return false;
        }
        let status = match close {
            Close::Cancelled | Close::Failed => "cancelled",
            Close::TimedOut => "timed_out",
        };
        for page in &mut self.pages {
            if !matches!(page.state, State::Terminal(_)) {
                page.state = State::Terminal(status);
            }
        }
        self.listing = false;
        self.finish(match close {
            Close::Cancelled => Some("cancelled"),
            Close::Failed => Some("failed"),
            Close::TimedOut => None,
        });
        true
    }

    fn run_status(&self) -> &'static str {
        if self.finished() {
            "finished"
        } else if self.listing {
            "listing"
        } else {
            "running"
        }
    }

    /// Whether the ledger holds what the model says.
    fn matches(&self, snap: &Snapshot) -> Result<(), String> {
        let differ = |what: String| {
            Err(format!(
                "the ledger differs from the model: {what}\nmodel: {self:?}\nledger: {snap:#?}"
            ))
        };
        if snap.run.status != self.run_status() {
            return differ(format!(
                "run status {} (model: {})",
                snap.run.status,
                self.run_status()
            ));
        }
        if snap.run.outcome != self.outcome {
            return differ(format!(
                "outcome {:?} (model: {:?})",
                snap.run.outcome, self.outcome
            ));
        }
        if snap.pages.len() != self.pages.len() {
            return differ(format!(
                "{} pages (model: {})",
                snap.pages.len(),
                self.pages.len()
            ));
        }
        for (page, row) in self.pages.iter().zip(&snap.pages) {
            let (status, backoff) = match page.state {
                State::Pending { backoff } => ("pending", backoff),
                State::Dispatched => ("dispatched", false),
                State::Terminal(s) => (s, row.backoff),
            };
            let same = row.id == page.id
                && row.status == status
                && row.backoff == backoff
                && row.attempt == page.attempt
                && row.reported_attempt == page.reported_attempt
                && row.site_throttles == page.uncounted
                && row.render == page.render
                && row.escalated == page.escalated;
            if !same {
                return differ(format!("page {} is {row:?} (model: {page:?})", page.id));
            }
        }
        Ok(())
    }
}

fn status_name(status: &str) -> &'static str {
    match status {
        "succeeded" => "succeeded",
        "failed" => "failed",
        "timed_out" => "timed_out",
        "cancelled" => "cancelled",
        other => panic!("not a terminal status: {other}"),
    }
}

/// An invoked event: Lambda holds it and may deliver it (again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Event {
    page: usize,
    attempt: i32,
    /// It went to the browser.
    render: bool,
}

/// Counts for the figure line.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub cases: u64,
    pub ops: u64,
    pub pages: u64,
    pub claims: u64,
    pub reports: u64,
    pub duplicates_answered: u64,
    pub sweeps: u64,
    pub crashes: u64,
    /// Crashes after which the interrupted operation had not happened.
    pub crashes_before: u64,
    /// Crashes after which only part of a sweep had happened.
    pub crashes_partial: u64,
    pub restarts: u64,
    pub finished: u64,
    pub closed: u64,
    /// Pages sent on to the browser.
    pub escalated: u64,
    pub violations: u64,
}

impl Stats {
    /// Adds another's counts.
    pub fn add(&mut self, o: &Stats) {
        self.cases += o.cases;
        self.ops += o.ops;
        self.pages += o.pages;
        self.claims += o.claims;
        self.reports += o.reports;
        self.duplicates_answered += o.duplicates_answered;
        self.sweeps += o.sweeps;
        self.crashes += o.crashes;
        self.crashes_before += o.crashes_before;
        self.crashes_partial += o.crashes_partial;
        self.restarts += o.restarts;
        self.finished += o.finished;
        self.closed += o.closed;
        self.escalated += o.escalated;
        self.violations += o.violations;
    }
}

/// One case being played.
pub struct World<'a> {
    db: &'a Database,
    settings: Arc<Settings>,
    replica: Option<Replica>,
    run_id: Uuid,
    urls: Vec<String>,
    model: Model,
    events: Vec<Event>,
    delivered: Vec<(Event, Report)>,
    claimed: HashSet<(i64, i32)>,
    history: History,
    reports_sent: u64,
    pub stats: Stats,
}

impl<'a> World<'a> {
    /// Resets the database and creates the case's run.
    pub async fn start(db: &'a Database, case: &Case) -> World<'a> {
        db.reset().await;
        let urls: Vec<String> = (0..case.pages)
            .map(|i| format!("https://example.test/p/{i}"))
            .collect();
        let run_id = db.new_run(&urls[..case.listed]).await;
        let ids = db.page_ids(run_id).await;
        let settings = case.policy.settings(&db.url);
        let replica = db.replica(settings.clone()).await;
        let mut world = World {
            db,
            settings,
            replica: Some(replica),
            run_id,
            urls,
            model: Model::new(case.policy.clone(), &ids, true),
            events: Vec::new(),
            delivered: Vec::new(),
            claimed: HashSet::new(),
            history: History::default(),
            reports_sent: 0,
            stats: Stats {
                cases: 1,
                pages: case.pages as u64,
                ..Stats::default()
            },
        };
        if case.listing_done {
            world
                .apply(&Op::FinishListing)
                .await
                .expect("finishing the listing of a fresh run");
        }
        world
    }

    fn replica(&self) -> &Replica {
        self.replica.as_ref().expect("a live replica")
    }

    /// Plays every operation of `case`, then drains the run to its end.
    pub async fn play(&mut self, case: &Case) -> Result<(), String> {
        self.check().await?;
        for (n, op) in case.ops.iter().enumerate() {
            self.apply(op)
                .await
                .map_err(|e| format!("after operation {n} ({op:?}): {e}"))?;
        }
        self.drain().await?;
        self.finish().await
    }

    /// Stops the replica.
    pub async fn finish(&mut self) -> Result<(), String> {
        if let Some(replica) = self.replica.take() {
            self.db.kill(replica).await;
        }
        Ok(())
    }

    /// Finishes the run the way the daemon would: the listing completes,
    /// every page is dispatched and reported, lost events time out.
    async fn drain(&mut self) -> Result<(), String> {
        for _ in 0..64 {
            if self.model.finished() {
                let snap = self.db.snapshot(self.run_id).await;
                if snap.pages.iter().any(|p| !p.terminal()) {
                    return Err("the run finished with pages not terminal".into());
                }
                self.stats.finished += 1;
                return Ok(());
            }
            if self.model.listing {
                self.apply(&Op::FinishListing)
                    .await
                    .map_err(|e| format!("draining, finishing the listing: {e}"))?;
            }
            let before = self.events.len();
            self.apply(&Op::Dispatch {
                limit: 8,
                backoff_over: true,
            })
            .await
            .map_err(|e| format!("draining, dispatching: {e}"))?;
            for n in before..self.events.len() {
                let op = Op::Report {
                    event: Pick(n as u16),
                    report: Report::Succeeded,
                };
                self.apply(&op)
                    .await
                    .map_err(|e| format!("draining, reporting: {e}"))?;
            }
            self.apply(&Op::Deadline { mask: u8::MAX })
                .await
                .map_err(|e| format!("draining, sweeping: {e}"))?;
        }
        Err(format!(
            "the run did not finish while draining: {:?}",
            self.model
        ))
    }

    /// Checks the ledger against the model and the invariants.
    async fn check(&mut self) -> Result<(), String> {
        let snap = self.db.snapshot(self.run_id).await;
        self.check_snapshot(&snap)
    }

    fn check_snapshot(&mut self, snap: &Snapshot) -> Result<(), String> {
        let result = check_invariants(snap, &self.model.policy)
            .and_then(|()| self.history.check(snap))
            .and_then(|()| self.model.matches(snap));
        if result.is_err() {
            self.stats.violations += 1;
        }
        result
    }

    /// Plays one operation and checks the ledger after it.
    pub async fn apply(&mut self, op: &Op) -> Result<(), String> {
        self.stats.ops += 1;
        match op {
            Op::Crash { op, after_ms } => self.crash(op, *after_ms).await?,
            _ => self.play_op(op).await?,
        }
        self.check().await
    }

    async fn prepare_dispatch(&mut self, backoff_over: bool) {
        if backoff_over {
            self.db.end_backoffs(self.run_id).await;
            self.model.end_backoffs();
        } else {
            self.db.hold_backoffs(self.run_id).await;
        }
    }

    /// The event and the report body an operation delivers, if any.
    fn pick(&mut self, op: &Op) -> Option<(Event, Report)> {
        match op {
            Op::Report { event, report } if !self.events.is_empty() => {
                Some((self.events[event.index(self.events.len())], *report))
            }
            Op::Duplicate { delivered } if !self.delivered.is_empty() => {
                Some(self.delivered[delivered.index(self.delivered.len())])
            }
            _ => None,
        }
    }

    /// Time passes: the deadlines of the dispatched pages `mask` picks
    /// pass. Returns every overdue page (earlier ones a crashed sweep left
    /// included).
    async fn pass_deadlines(&mut self, mask: u8) -> Vec<usize> {
        let picked: Vec<usize> = (0..self.model.pages.len())
            .filter(|&i| mask & (1 << (i % 8)) != 0)
            .filter(|&i| self.model.pages[i].state == State::Dispatched)
            .collect();
        let ids: Vec<i64> = picked.iter().map(|&i| self.model.pages[i].id).collect();
        self.db.pass_deadlines(&ids).await;
        for &i in &picked {
            self.model.pages[i].overdue = true;
        }
        self.model.overdue()
    }

    async fn deliver(&mut self, event: Event, report: Report) -> Result<(), String> {
        let run_id = self.run_id;
        let page_id = self.model.pages[event.page].id;
        self.reports_sent += 1;
        self.stats.reports += 1;
        let runs = self.replica().runs.clone();
        let (page_event, result) = report_event(report, self.reports_sent, event);
        let want = self
            .model
            .event(event.page, event.attempt, page_event.clone());
        let escalates =
            want == Want::Requeued && matches!(page_event, PageEvent::LooksUnrendered { .. });
        let at = PageAttempt::new(run_id, page_id, event.attempt);
        let got = runs
            .page_event(at, page_event, result.clone())
            .await
            .map_err(|e| format!("report failed: {e}"))?;
        let got_kind = Want::of(&got);
        if got_kind == Want::Stale {
            self.stats.duplicates_answered += 1;
        }
        if got_kind != want {
            self.stats.violations += 1;
            return Err(format!(
                "the {report:?} report of page {page_id} attempt {} answered {got_kind:?}, the model says {want:?}",
                event.attempt
            ));
        }
        self.stats.escalated += u64::from(escalates);
        if let Handled::Recorded {
            finished: Some(run),
        } = &got
        {
            let outcome = run.outcome.map(|o| o.as_str().to_string());
            if outcome != self.model.outcome {
                self.stats.violations += 1;
                return Err(format!(
                    "the run finished as {outcome:?}, the model says {:?}",
                    self.model.outcome
                ));
            }
        }
        self.delivered.push((event, report));
        Ok(())
    }

    fn record_claims(&mut self, claims: &[(i64, i32)]) -> Result<(), String> {
        for &(id, attempt) in claims {
            if !self.claimed.insert((id, attempt)) {
                self.stats.violations += 1;
                return Err(format!("page {id} attempt {attempt} was claimed twice"));
            }
        }
        self.stats.claims += claims.len() as u64;
        Ok(())
    }

    async fn insert_rest(&mut self) -> Result<(), String> {
        let listed = self.model.pages.len();
        if listed == self.urls.len() {
            return Ok(());
        }
        let got = ledger::insert_pages(
            self.replica().pool(),
            &ledger::Lease::first(self.run_id),
            &self.urls[listed..],
            &unlimited_hosts(&self.urls[listed..]),
        )
        .await
        .map_err(|e| format!("insert_pages failed: {e}"))?;
        let want = self
            .model
            .listing
            .then_some((self.urls.len() - listed) as u64);
        if got != want {
            self.stats.violations += 1;
            return Err(format!(
                "insert_pages answered {got:?}, the model says {want:?}"
            ));
        }
        if got.is_some() {
            let ids = self.db.page_ids(self.run_id).await;
            self.model.add(&ids[listed..]);
        }
        Ok(())
    }

    /// Claims up to `limit` pages; returns them as (model index, attempt).
    async fn claim(&mut self, limit: i64) -> Result<Vec<(usize, i32)>, String> {
        let (in_flight, want) = self.model.claim(limit);
        let got = ledger::claim_pages(
            self.replica().pool(),
            SCHEDULE,
            self.model.policy.max_in_flight,
            limit,
            PAGE_TIMEOUT,
        )
        .await
        .map_err(|e| format!("claim_pages failed: {e}"))?;
        let mut got_pages: Vec<(i64, i32)> = got.pages.iter().map(|p| (p.id, p.attempt)).collect();
        got_pages.sort_unstable();
        self.record_claims(&got_pages)?;
        let want_pages: Vec<(i64, i32)> = want
            .iter()
            .map(|&(i, a)| (self.model.pages[i].id, a))
            .collect();
        if got_pages != want_pages || (!want.is_empty() && got.in_flight != in_flight) {
            self.stats.violations += 1;
            return Err(format!(
                "claim_pages took {got_pages:?} (in flight {}), the model says {want_pages:?} (in flight {in_flight})",
                got.in_flight
            ));
        }
        Ok(want)
    }

    /// Records a failed invoke of page `i`'s `attempt` through the same
    /// lifecycle entry the dispatcher uses ([`Runs::page_event`](fanfare::runs::Runs::page_event)).
    async fn invoke_failed(
        &mut self,
        i: usize,
        attempt: i32,
        failure: InvokeFailure,
    ) -> Result<(), String> {
        let page_id = self.model.pages[i].id;
        let runs = self.replica().runs.clone();
        let want = self.model.event(i, attempt, failure.event());
        // As the dispatcher does, with the counts read with the page (its
        // uncounted dispatches: the model's sites never throttle, but a
        // page sent on to the browser has one).
        let uncounted = self.model.pages[i].uncounted;
        let at = PageAttempt::new(self.run_id, page_id, attempt)
            .with_counts(uncounted, self.model.policy.max_attempts);
        let got = runs
            .page_event(at, failure.event(), None)
            .await
            .map_err(|e| format!("page_event failed: {e}"))?;
        let got = Want::of(&got);
        if got != want {
            self.stats.violations += 1;
            return Err(format!(
                "the {failure:?} invoke failure of page {page_id} attempt {attempt} answered {got:?}, the model says {want:?}"
            ));
        }
        if got == Want::Requeued && failure == InvokeFailure::Throttled {
            // The attempt never ran: it will be claimed again.
            self.claimed.remove(&(page_id, attempt));
        }
        Ok(())
    }

    async fn play_op(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::Dispatch {
                limit,
                backoff_over,
            } => {
                self.prepare_dispatch(*backoff_over).await;
                // The dispatcher invokes each claimed page: Lambda holds the event.
                for (page, attempt) in self.claim(*limit).await? {
                    let render = self.model.pages[page].render;
                    self.events.push(Event {
                        page,
                        attempt,
                        render,
                    });
                }
            }
            Op::DispatchFailing { limit, failure } => {
                self.prepare_dispatch(true).await;
                for (page, attempt) in self.claim(*limit).await? {
                    self.invoke_failed(page, attempt, *failure).await?;
                }
            }
            Op::Report { .. } | Op::Duplicate { .. } => {
                if let Some((event, report)) = self.pick(op) {
                    self.deliver(event, report).await?;
                }
            }
            Op::Lose { event } => {
                if !self.events.is_empty() {
                    self.events.remove(event.index(self.events.len()));
                }
            }
            Op::Deadline { mask } => {
                let due = self.pass_deadlines(*mask).await;
                for &i in &due {
                    self.model.sweep(i);
                }
                self.stats.sweeps += 1;
                let swept = sweep::sweep_once(&self.replica().runs)
                    .await
                    .map_err(|e| format!("sweep_once failed: {e}"))?;
                if swept != due.len() {
                    self.stats.violations += 1;
                    return Err(format!(
                        "sweep_once handled {swept} overdue pages, the model says {}",
                        due.len()
                    ));
                }
            }
            Op::ListRest => self.insert_rest().await?,
            Op::FinishListing => {
                self.insert_rest().await?;
                let runs = self.replica().runs.clone();
                let got = rules::finish_listing(
                    &runs.pool,
                    &runs.settings,
                    &ledger::Lease::first(self.run_id),
                    &json!({"pages": self.urls.len()}),
                )
                .await
                .map_err(|e| format!("finish_listing failed: {e}"))?;
                let want = self.model.finish_listing() == Some(true);
                if got.is_some() != want {
                    self.stats.violations += 1;
                    return Err(format!(
                        "finish_listing finished the run: {}, the model says {want}",
                        got.is_some()
                    ));
                }
            }
            Op::Restart => {
                self.stats.restarts += 1;
                let old = self.replica.take().expect("a live replica");
                self.db.kill(old).await;
                self.replica = Some(self.db.replica(self.settings.clone()).await);
            }
            Op::Close(close) => {
                let closing = match close {
                    Close::Cancelled => Closing::Cancelled,
                    Close::Failed => Closing::Failed("the model closed the run"),
                    Close::TimedOut => Closing::TimedOut("the model's run timeout"),
                };
                let want = self.model.close(*close);
                let got = self
                    .replica()
                    .runs
                    .close_run(self.run_id, closing)
                    .await
                    .map_err(|e| format!("close_run failed: {e}"))?;
                if want {
                    self.stats.closed += 1;
                }
                if got.is_some() != want {
                    self.stats.violations += 1;
                    return Err(format!(
                        "close_run closed the run: {}, the model says {want}",
                        got.is_some()
                    ));
                }
            }
            Op::Crash { .. } => unreachable!("crashes are played by crash()"),
        }
        Ok(())
    }

    /// Plays `op` on a replica killed `after_ms` into it, then accepts the
    /// ledger if it is one of the states the interrupted operation may
    /// have left, and goes on from there with a new replica.
    async fn crash(&mut self, op: &Op, after_ms: u8) -> Result<(), String> {
        self.stats.crashes += 1;
        // What the test does around the operation (time passing) is not
        // interrupted by the crash.
        let mut due = Vec::new();
        match op {
            Op::Dispatch { backoff_over, .. } => self.prepare_dispatch(*backoff_over).await,
            Op::Deadline { mask } => {
                due = self.pass_deadlines(*mask).await;
            }
            _ => {}
        }
        let before = self.model.clone();
        // Every state the ledger may be in once the replica is dead, the
        // state before the operation first.
        let mut candidates = vec![before.clone()];
        let mut claim: Vec<(i64, i32)> = Vec::new();
        let run_id = self.run_id;
        let mut partial = Vec::new();
        let work: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match op {
            Op::Dispatch { limit, .. } => {
                let mut after = self.model.clone();
                let (_, want) = after.claim(*limit);
                claim = want.iter().map(|&(i, a)| (after.pages[i].id, a)).collect();
                candidates.insert(0, after);
                let (pool, limit, cap) = (
                    self.replica().runs.pool.clone(),
                    *limit,
                    self.model.policy.max_in_flight,
                );
                Box::pin(async move {
                    let _ = ledger::claim_pages(&pool, SCHEDULE, cap, limit, PAGE_TIMEOUT).await;
                })
            }
            Op::Report { .. } => {
                let Some((event, report)) = self.pick(op) else {
                    return self.restart_after_crash(&[before]).await.map(|_| ());
                };
                let page_id = self.model.pages[event.page].id;
                let mut after = self.model.clone();
                self.reports_sent += 1;
                let (page_event, result) = report_event(report, self.reports_sent, event);
                after.event(event.page, event.attempt, page_event.clone());
                candidates.insert(0, after);
                self.delivered.push((event, report));
                let runs = self.replica().runs.clone();
                Box::pin(async move {
                    let at = PageAttempt::new(run_id, page_id, event.attempt);
                    let _ = runs.page_event(at, page_event, result.clone()).await;
                })
            }
            Op::Deadline { .. } => {
                // Any subset of the overdue pages may have been swept.
                for subset in 1u32..(1 << due.len()) {
                    let mut after = self.model.clone();
                    for (bit, &i) in due.iter().enumerate() {
                        if subset & (1 << bit) != 0 {
                            after.sweep(i);
                        }
                    }
                    if subset == (1 << due.len()) - 1 {
                        candidates.insert(0, after);
                    } else {
                        partial.push(after);
                    }
                }
                let runs = self.replica().runs.clone();
                Box::pin(async move {
                    let _ = sweep::sweep_once(&runs).await;
                })
            }
            other => panic!("no crash in the middle of {other:?}"),
        };
        let _ = tokio::time::timeout(Duration::from_millis(u64::from(after_ms)), work).await;
        let full = candidates.len();
        candidates.extend(partial);
        let adopted = self.restart_after_crash(&candidates).await?;
        if adopted == full - 1 {
            self.stats.crashes_before += 1;
        } else if adopted >= full {
            self.stats.crashes_partial += 1;
        } else if matches!(op, Op::Dispatch { .. }) {
            // The claim committed; its events were never invoked.
            self.record_claims(&claim)?;
        }
        Ok(())
    }

    /// Kills the replica, adopts the first candidate model the ledger
    /// matches (returning its index), and starts a new replica.
    async fn restart_after_crash(&mut self, candidates: &[Model]) -> Result<usize, String> {
        let old = self.replica.take().expect("a live replica");
        self.db.kill(old).await;
        let replica = self.db.replica(self.settings.clone()).await;
        // What the sweeper of any replica does first: finish a run whose last
        // page the dead replica recorded without finishing the run.
        replica
            .runs
            .finish_stranded(Duration::ZERO)
            .await
            .map_err(|e| format!("finishing stranded runs: {e}"))?;
        self.replica = Some(replica);
        let snap = self.db.snapshot(self.run_id).await;
        let mut mismatches = Vec::new();
        for (n, candidate) in candidates.iter().enumerate() {
            match candidate.matches(&snap) {
                Ok(()) => {
                    self.model = candidate.clone();
                    return Ok(n);
                }
                Err(e) => mismatches.push(e),
            }
        }
        self.stats.violations += 1;
        Err(format!(
            "after the crash the ledger is in none of the {} states the operation may have left: {}",
            candidates.len(),
            mismatches.join("\n---\n")
        ))
    }
}

/// Picks one of a list whose length is known only when the pick is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick(pub u16);

impl Pick {
    /// The picked position in a list of `len` (> 0).
    pub fn index(self, len: usize) -> usize {
        usize::from(self.0) % len
    }
}

impl Arbitrary for Pick {
    type Parameters = ();
    type Strategy = proptest::strategy::Map<std::ops::Range<u16>, fn(u16) -> Pick>;

    fn arbitrary_with((): ()) -> Self::Strategy {
        (0u16..64).prop_map(Pick)
    }
}
