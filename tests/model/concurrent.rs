//! Two replicas racing on one run: each plays its own random script of
//! claims, reports, duplicates and sweeps at the same time (Lambda's
//! callbacks reach either replica), while an observer checks every
//! snapshot it can take. No model predicts the interleaving; what must hold
//! is what holds under any interleaving: no (page, attempt) is claimed
//! twice, no page is made terminal twice, the in-flight cap holds, every
//! snapshot satisfies the invariants, and the run finishes once, with one
//! notification per target.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use fanfare::ledger::{self, PageError};
use fanfare::lifecycle::{run as rules, Closing, Event};
use fanfare::runs::{Handled, PageAttempt};
use fanfare::sweep;
use fanfare_crawler::ErrorKind;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::json;
use uuid::Uuid;

use crate::harness::{
    check_invariants, unlimited_hosts, Database, History, Policy, Replica, PAGE_TIMEOUT, SCHEDULE,
};
use crate::model::{policy, Close, Op, Pick, Report};

/// What both replicas share: what Lambda holds, and what they observed.
#[derive(Debug, Default)]
struct Shared {
    /// Invoked events (page id, attempt): any replica may get their reports.
    events: Vec<(i64, i32)>,
    /// Reports delivered so far.
    delivered: Vec<((i64, i32), Report)>,
    /// Who claimed each (page, attempt).
    claims: HashMap<(i64, i32), usize>,
    /// Reports that made a page terminal, as their callers were told.
    terminal_reports: Vec<(i64, &'static str)>,
    /// Calls that were told they finished the run.
    finishes: usize,
    reports_sent: u64,
    ops: u64,
    /// Calls Postgres aborted as deadlock victims (see `deadlocks.rs`).
    deadlocks: u64,
    violations: Vec<String>,
}

/// A case: the schedule, the page list, and one script per replica.
#[derive(Debug, Clone)]
pub struct RaceCase {
    policy: Policy,
    pages: usize,
    listed: usize,
    scripts: [Vec<Op>; 2],
}

fn race_op() -> impl Strategy<Value = Op> {
    let report = prop_oneof![
        3 => Just(Report::Succeeded),
        1 => Just(Report::Failed),
        2 => Just(Report::Retryable),
    ];
    prop_oneof![
        12 => (1i64..=8, any::<bool>())
            .prop_map(|(limit, backoff_over)| Op::Dispatch { limit, backoff_over }),
        18 => (any::<Pick>(), report).prop_map(|(event, report)| Op::Report { event, report }),
        6 => any::<Pick>().prop_map(|delivered| Op::Duplicate { delivered }),
        3 => any::<Pick>().prop_map(|event| Op::Lose { event }),
        6 => any::<u8>().prop_map(|mask| Op::Deadline { mask }),
        3 => Just(Op::ListRest),
        3 => Just(Op::FinishListing),
        1 => prop_oneof![Just(Close::TimedOut), Just(Close::Cancelled)].prop_map(Op::Close),
    ]
}

fn race_case() -> impl Strategy<Value = RaceCase> {
    (policy(), 1usize..=8)
        .prop_flat_map(|(policy, pages)| {
            (
                Just(policy),
                Just(pages),
                0..=pages,
                prop::collection::vec(race_op(), 0..=24),
                prop::collection::vec(race_op(), 0..=24),
            )
        })
        .prop_map(|(policy, pages, listed, a, b)| RaceCase {
            policy,
            pages,
            listed,
            scripts: [a, b],
        })
}

struct Race<'a> {
    db: &'a Database,
    run_id: Uuid,
    urls: Vec<String>,
    policy: Policy,
    shared: Mutex<Shared>,
}

impl Race<'_> {
    fn violation(&self, what: String) {
        self.shared.lock().unwrap().violations.push(what);
    }

    /// A call's result. A deadlock victim is counted and is a violation:
    /// every ledger function takes the run's row before its pages'.
    fn settle<T>(&self, what: &str, result: Result<T, sqlx::Error>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("40P01") => {
                let mut shared = self.shared.lock().unwrap();
                shared.deadlocks += 1;
                shared.violations.push(format!("{what}: deadlock ({e})"));
                None
            }
            Err(e) => panic!("{what} failed: {e}"),
        }
    }

    async fn claim(&self, who: usize, replica: &Replica, limit: i64) -> Vec<(i64, i32)> {
        let claimed = ledger::claim_pages(
            replica.pool(),
            SCHEDULE,
            self.policy.max_in_flight,
            limit,
            PAGE_TIMEOUT,
        )
        .await;
        let Some(claim) = self.settle("claim_pages", claimed) else {
            return Vec::new();
        };
        let got: Vec<(i64, i32)> = claim.pages.iter().map(|p| (p.id, p.attempt)).collect();
        let mut shared = self.shared.lock().unwrap();
        for &key in &got {
            if let Some(other) = shared.claims.insert(key, who) {
                shared.violations.push(format!(
                    "page {} attempt {} was claimed by replica {other} and again by replica {who}",
                    key.0, key.1
                ));
            }
            shared.events.push(key);
        }
        if claim.in_flight > self.policy.max_in_flight {
            shared.violations.push(format!(
                "claim_pages reports {} in flight, over max_in_flight = {}",
                claim.in_flight, self.policy.max_in_flight
            ));
        }
        got
    }

    async fn deliver(&self, replica: &Replica, (page_id, attempt): (i64, i32), report: Report) {
        let n = {
            let mut shared = self.shared.lock().unwrap();
            shared.reports_sent += 1;
            shared.delivered.push(((page_id, attempt), report));
            shared.reports_sent
        };
        let runs = &replica.runs;
        let error = |kind, retryable| PageError::new(kind, format!("report {n}"), retryable);
        let (event, name) = match report {
            Report::Succeeded => (Event::ReportSucceeded, "succeeded"),
            Report::Failed => (
                Event::ReportFailed(error(ErrorKind::HttpStatus, false)),
                "failed",
            ),
            Report::Retryable => (
                Event::ReportFailed(error(ErrorKind::Connect, true)),
                "failed",
            ),
            Report::Unrendered => unreachable!("the race plays no unrendered report"),
        };
        let result = json!({"report": n});
        let at = PageAttempt::new(self.run_id, page_id, attempt);
        let handled = runs.page_event(at, event, Some(result.clone())).await;
        let (terminal, finished) = match self.settle("report", handled) {
            Some(Handled::Recorded { finished }) => (Some(name), finished.is_some()),
            Some(Handled::Requeued) => {
                if report != Report::Retryable || attempt as u32 >= self.policy.max_attempts {
                    self.violation(format!(
                        "page {page_id} was requeued by a {report:?} report of attempt {attempt}"
                    ));
                }
                (None, false)
            }
            Some(Handled::Stale | Handled::RunFailed(_)) | None => (None, false),
        };
        let mut shared = self.shared.lock().unwrap();
        if let Some(status) = terminal {
            shared.terminal_reports.push((page_id, status));
        }
        if finished {
            shared.finishes += 1;
        }
    }

    async fn sweep(&self, replica: &Replica, mask: u8) {
        let ids = self.db.page_ids(self.run_id).await;
        let picked: Vec<i64> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << (i % 8)) != 0)
            .map(|(_, &id)| id)
            .collect();
        self.db.pass_deadlines(&picked).await;
        let swept = sweep::sweep_once(&replica.runs).await;
        self.settle("sweep_once", swept);
    }

    async fn list(&self, replica: &Replica, finish: bool) {
        let inserted = ledger::insert_pages(
            replica.pool(),
            &ledger::Lease::first(self.run_id),
            &self.urls,
            &unlimited_hosts(&self.urls),
        )
        .await;
        // The daemon fails the run when an insert fails; here the lister
        // stops this attempt and lists again later.
        if self.settle("insert_pages", inserted).is_none() {
            return;
        }
        if finish {
            let listing = json!({"pages": self.urls.len()});
            let finished = rules::finish_listing(
                replica.pool(),
                &replica.runs.settings,
                &ledger::Lease::first(self.run_id),
                &listing,
            )
            .await;
            if self.settle("finish_listing", finished).flatten().is_some() {
                self.shared.lock().unwrap().finishes += 1;
            }
        }
    }

    async fn play(&self, who: usize, replica: &Replica, script: &[Op]) {
        for op in script {
            self.shared.lock().unwrap().ops += 1;
            match op {
                Op::Dispatch {
                    limit,
                    backoff_over,
                } => {
                    if *backoff_over {
                        self.db.end_backoffs(self.run_id).await;
                    }
                    self.claim(who, replica, *limit).await;
                }
                Op::Report { event, report } => {
                    let picked = {
                        let shared = self.shared.lock().unwrap();
                        (!shared.events.is_empty())
                            .then(|| shared.events[event.index(shared.events.len())])
                    };
                    if let Some(key) = picked {
                        self.deliver(replica, key, *report).await;
                    }
                }
                Op::Duplicate { delivered } => {
                    let picked = {
                        let shared = self.shared.lock().unwrap();
                        (!shared.delivered.is_empty())
                            .then(|| shared.delivered[delivered.index(shared.delivered.len())])
                    };
                    if let Some((key, report)) = picked {
                        self.deliver(replica, key, report).await;
                    }
                }
                Op::Lose { event } => {
                    let mut shared = self.shared.lock().unwrap();
                    if !shared.events.is_empty() {
                        let n = event.index(shared.events.len());
                        shared.events.remove(n);
                    }
                }
                Op::Deadline { mask } => self.sweep(replica, *mask).await,
                Op::ListRest => self.list(replica, false).await,
                Op::FinishListing => self.list(replica, true).await,
                Op::Close(close) => {
                    let closing = match close {
                        Close::Cancelled => Closing::Cancelled,
                        Close::Failed => Closing::Failed("the model failed the run"),
                        Close::TimedOut => Closing::TimedOut("the model's run timeout"),
                    };
                    let closed = replica.runs.close_run(self.run_id, closing).await;
                    if self.settle("close_run", closed).flatten().is_some() {
                        self.shared.lock().unwrap().finishes += 1;
                    }
                }
                other => panic!("no {other:?} in a race"),
            }
            tokio::task::yield_now().await;
        }
    }

    /// Watches the ledger until `done`, checking every snapshot.
    async fn observe(&self, done: &AtomicBool, history: &mut History) -> u64 {
        let mut seen = 0;
        loop {
            let finished = done.load(Ordering::Acquire);
            let snap = self.db.snapshot(self.run_id).await;
            seen += 1;
            if let Err(e) =
                check_invariants(&snap, &self.policy).and_then(|()| history.check(&snap))
            {
                self.violation(format!("snapshot {seen}: {e}"));
                return seen;
            }
            if finished {
                return seen;
            }
        }
    }

    /// Finishes the run with one replica: list, dispatch, report success,
    /// sweep lost events.
    async fn drain(&self, replica: &Replica) -> Result<(), String> {
        for _ in 0..64 {
            let snap = self.db.snapshot(self.run_id).await;
            if snap.run.status == "finished" {
                return Ok(());
            }
            if snap.run.status == "listing" {
                self.list(replica, true).await;
            }
            self.db.end_backoffs(self.run_id).await;
            for key in self.claim(0, replica, 8).await {
                self.deliver(replica, key, Report::Succeeded).await;
            }
            self.sweep(replica, u8::MAX).await;
        }
        Err("the run did not finish while draining".into())
    }
}

/// Counts for the figure line.
#[derive(Debug, Default)]
struct RaceStats {
    cases: u64,
    ops: u64,
    pages: u64,
    claims: u64,
    reports: u64,
    snapshots: u64,
    deadlocks: u64,
}

async fn race(db: &Database, case: &RaceCase, stats: &RefCell<RaceStats>) -> Result<(), String> {
    db.reset().await;
    let urls: Vec<String> = (0..case.pages)
        .map(|i| format!("https://example.test/p/{i}"))
        .collect();
    let run_id = db.new_run(&urls[..case.listed]).await;
    let settings = case.policy.settings(&db.url);
    let a = db.replica(settings.clone()).await;
    let b = db.replica(settings).await;
    let race = Race {
        db,
        run_id,
        urls,
        policy: case.policy.clone(),
        shared: Mutex::new(Shared::default()),
    };
    let done = AtomicBool::new(false);
    let mut history = History::default();
    let ((), snapshots) = tokio::join!(
        async {
            tokio::join!(
                race.play(0, &a, &case.scripts[0]),
                race.play(1, &b, &case.scripts[1])
            );
            done.store(true, Ordering::Release);
        },
        race.observe(&done, &mut history)
    );
    let drained = race.drain(&a).await;
    db.kill(a).await;
    db.kill(b).await;
    drained?;

    let snap = db.snapshot(run_id).await;
    check_invariants(&snap, &case.policy).and_then(|()| history.check(&snap))?;
    let shared = race.shared.into_inner().unwrap();
    {
        let mut s = stats.borrow_mut();
        s.cases += 1;
        s.ops += shared.ops;
        s.pages += case.pages as u64;
        s.claims += shared.claims.len() as u64;
        s.reports += shared.reports_sent;
        s.snapshots += snapshots;
        s.deadlocks += shared.deadlocks;
    }
    if let Some(first) = shared.violations.first() {
        return Err(format!(
            "{} violations; the first: {first}",
            shared.violations.len()
        ));
    }
    if snap.run.status != "finished" || snap.pages.iter().any(|p| !p.terminal()) {
        return Err(format!(
            "the run did not end with every page terminal: {snap:#?}"
        ));
    }
    if shared.finishes > 1 {
        return Err(format!(
            "{} calls were told they finished the run",
            shared.finishes
        ));
    }
    for page in &snap.pages {
        let made: Vec<&str> = shared
            .terminal_reports
            .iter()
            .filter(|(id, _)| *id == page.id)
            .map(|(_, s)| *s)
            .collect();
        match made.as_slice() {
            // Swept past its last deadline, or closed with the run.
            [] if matches!(page.status.as_str(), "timed_out" | "cancelled") => {}
            [] => {
                return Err(format!(
                    "page {} is {} but no report made it terminal",
                    page.id, page.status
                ))
            }
            [status] if *status == page.status => {}
            [status] => {
                return Err(format!(
                    "page {} is {} but the report that made it terminal said {status}",
                    page.id, page.status
                ))
            }
            many => {
                return Err(format!(
                    "page {} was made terminal {} times: {many:?}",
                    page.id,
                    many.len()
                ))
            }
        }
    }
    Ok(())
}

#[test]
fn two_replicas_racing_never_claim_a_page_attempt_twice_nor_finish_a_page_or_run_twice() {
    let rt = crate::runtime();
    let db = rt.block_on(Database::fresh());
    let started = Instant::now();
    let stats = RefCell::new(RaceStats::default());
    let mut runner = TestRunner::new(crate::config());
    let result = runner.run(&race_case(), |case| {
        rt.block_on(race(&db, &case, &stats))
            .map_err(TestCaseError::fail)
    });
    crate::report("two racing replicas", result);
    let s = stats.into_inner();
    println!(
        "FIGURE model-race cases={} ops={} pages={} claims={} reports={} snapshots={} deadlocks={} violations=0 seconds={:.1}",
        s.cases,
        s.ops,
        s.pages,
        s.claims,
        s.reports,
        s.snapshots,
        s.deadlocks,
        started.elapsed().as_secs_f64()
    );
}
