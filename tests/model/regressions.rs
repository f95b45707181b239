//! Named cases: scenarios worth keeping whatever the random search finds,
//! played through the same model and checks as the property.

use fanfare::config::Tolerance;

use crate::harness::{Database, Policy};
use crate::model::{Case, Close, Op, Pick, Report, Stats, World};

fn play(case: Case) -> Stats {
    let rt = crate::runtime();
    rt.block_on(async {
        let db = Database::fresh().await;
        let mut world = World::start(&db, &case).await;
        let played = world.play(&case).await;
        let _ = world.finish().await;
        if let Err(e) = played {
            panic!("{e}\ncase: {case:#?}");
        }
        world.stats
    })
}

fn policy(max_attempts: u32) -> Policy {
    Policy {
        max_attempts,
        max_in_flight: 8,
        tolerated: Tolerance::Count(0),
        targets: 2,
        render_auto: false,
    }
}

const DISPATCH: Op = Op::Dispatch {
    limit: 8,
    backoff_over: true,
};

/// A case whose pages are all listed before its first operation.
fn listed(policy: Policy, pages: usize, ops: Vec<Op>) -> Case {
    Case {
        policy,
        pages,
        listed: pages,
        listing_done: true,
        ops,
    }
}

/// The report of the `event`-th dispatched event.
fn reported(event: u16, report: Report) -> Op {
    Op::Report {
        event: Pick(event),
        report,
    }
}

#[test]
fn a_late_report_of_an_earlier_attempt_after_a_deadline_retry_finishes_the_page_once() {
    play(listed(
        policy(3),
        1,
        vec![
            DISPATCH,
            Op::Deadline { mask: 1 },
            DISPATCH,
            // Attempt 1's report arrives after attempt 2 was dispatched.
            reported(0, Report::Succeeded),
            // Attempt 2's report is a duplicate.
            reported(1, Report::Failed),
            Op::Duplicate { delivered: Pick(0) },
        ],
    ));
}

#[test]
fn a_retryable_failure_of_the_last_attempt_fails_the_page_and_finishes_the_run() {
    play(listed(
        policy(2),
        2,
        vec![
            DISPATCH,
            reported(0, Report::Retryable),
            reported(1, Report::Succeeded),
            DISPATCH,
            reported(2, Report::Retryable),
            Op::Duplicate { delivered: Pick(2) },
        ],
    ));
}

#[test]
fn pages_finished_while_still_listing_finish_the_run_when_the_listing_ends() {
    play(Case {
        policy: policy(1),
        pages: 3,
        listed: 1,
        listing_done: false,
        ops: vec![
            DISPATCH,
            reported(0, Report::Succeeded),
            Op::ListRest,
            DISPATCH,
            reported(1, Report::Succeeded),
            reported(2, Report::Failed),
            Op::FinishListing,
        ],
    });
}

#[test]
fn a_replica_killed_during_claims_reports_and_sweeps_leaves_nothing_half_done() {
    play(listed(
        policy(2),
        4,
        vec![
            Op::Crash {
                op: Box::new(DISPATCH),
                after_ms: 0,
            },
            Op::Crash {
                op: Box::new(DISPATCH),
                after_ms: 2,
            },
            DISPATCH,
            Op::Crash {
                op: Box::new(reported(0, Report::Succeeded)),
                after_ms: 1,
            },
            Op::Crash {
                op: Box::new(Op::Deadline { mask: u8::MAX }),
                after_ms: 1,
            },
            Op::Restart,
        ],
    ));
}

#[test]
fn reports_after_a_run_is_cancelled_change_nothing() {
    play(listed(
        policy(3),
        3,
        vec![
            DISPATCH,
            reported(0, Report::Succeeded),
            Op::Close(Close::Cancelled),
            reported(1, Report::Succeeded),
            reported(2, Report::Retryable),
            Op::Deadline { mask: u8::MAX },
        ],
    ));
}

#[test]
fn pages_sent_on_to_the_browser_use_no_attempt_and_are_sent_on_once() {
    let stats = play(listed(
        Policy {
            render_auto: true,
            ..policy(1)
        },
        2,
        vec![
            DISPATCH,
            // Both plain fetches look unrendered: both pages go on to the
            // browser, neither using its one attempt.
            reported(0, Report::Unrendered),
            reported(1, Report::Unrendered),
            // A second copy of a plain report changes nothing.
            Op::Duplicate { delivered: Pick(0) },
            DISPATCH,
            // The first page's browser attempt is its only counted one: a
            // retryable failure fails it.
            reported(2, Report::Retryable),
            // A rendered page is not sent on again, whatever it found.
            reported(3, Report::Unrendered),
        ],
    ));
    assert_eq!(stats.escalated, 2, "{stats:?}");
}
