//! Model-based tests of the page and run state machine: random
//! interleavings of dispatch, report (unrendered-looking pages sent on to
//! the browser among them), duplicate, lost event, deadline, crash and
//! restart, played against the real ledger functions on a real
//! Postgres (one fresh database per test function, emptied between cases)
//! and against a reference model. After every operation the ledger must be
//! what the model says, every terminal page must be as it was first seen,
//! the counters must add up, and the run must be finished, with one
//! notification per target, if and only if every page is terminal.
//!
//! `PROPTEST_CASES` sets the number of cases (default 64). Each property
//! prints a `FIGURE` line (visible with `--no-capture`).

mod concurrent;
mod deadlocks;
mod harness;
mod holdback;
mod integrity;
mod leases;
mod model;
mod overlap;
mod regressions;

use std::cell::RefCell;
use std::time::Instant;

use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use crate::harness::Database;
use crate::model::{case, Stats, World};

/// The number of cases per property.
pub fn cases() -> u32 {
    fanfare_testkit::env_parsed("PROPTEST_CASES").unwrap_or(64)
}

/// A proptest configuration sized for speed.
pub fn config() -> Config {
    Config {
        cases: cases(),
        max_shrink_iters: 2048,
        // Minimal failing cases are kept as named tests (regressions.rs),
        // not as seed files next to other test binaries' seeds.
        failure_persistence: None,
        ..Config::default()
    }
}

/// A runtime for one test function.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Fails the test with proptest's minimal case.
pub fn report<T: std::fmt::Debug>(name: &str, result: Result<(), TestError<T>>) {
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, minimal)) => {
            panic!("{name}: {reason}\nminimal failing case:\n{minimal:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("{name}: aborted: {reason}"),
    }
}

#[test]
fn every_page_ends_terminal_exactly_once_and_the_run_notifies_iff_all_pages_are_terminal() {
    let rt = runtime();
    let db = rt.block_on(Database::fresh());
    let started = Instant::now();
    let total = RefCell::new(Stats::default());
    let mut runner = TestRunner::new(config());
    let result = runner.run(&case(40), |case| {
        let stats = rt.block_on(async {
            let mut world = World::start(&db, &case).await;
            let played = world.play(&case).await;
            let _ = world.finish().await;
            played.map(|()| world.stats)
        });
        match stats {
            Ok(stats) => {
                total.borrow_mut().add(&stats);
                Ok(())
            }
            Err(e) => Err(TestCaseError::fail(e)),
        }
    });
    report("the sequential model", result);
    let total = total.into_inner();
    println!(
        "FIGURE model cases={} ops={} pages={} claims={} reports={} duplicates_answered={} sweeps={} \
         crashes={} (before={} partial={}) restarts={} finished={} closed={} escalated={} violations={} seconds={:.1}",
        total.cases,
        total.ops,
        total.pages,
        total.claims,
        total.reports,
        total.duplicates_answered,
        total.sweeps,
        total.crashes,
        total.crashes_before,
        total.crashes_partial,
        total.restarts,
        total.finished,
        total.closed,
        total.escalated,
        total.violations,
        started.elapsed().as_secs_f64()
    );
}
