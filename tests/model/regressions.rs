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

#[test]
fn a_late_report_of_an_earlier_attempt_after_a_deadline_retry_finishes_the_page_once() {
    play(Case {
        policy: policy(3),
        pages: 1,
        listed: 1,
        listing_done: true,
        ops: vec![
            DISPATCH,
            Op::Deadline { mask: 1 },
            DISPATCH,
            // Attempt 1's report arrives after attempt 2 was dispatched.
            Op::Report {
                event: Pick(0),
                report: Report::Succeeded,
            },
            // Attempt 2's report is a duplicate.
            Op::Report {
                event: Pick(1),
                report: Report::Failed,
            },
            Op::Duplicate { delivered: Pick(0) },
        ],
    });
}

#[test]
fn a_retryable_failure_of_the_last_attempt_fails_the_page_and_finishes_the_run() {
    play(Case {
        policy: policy(2),
        pages: 2,
        listed: 2,
        listing_done: true,
        ops: vec![
            DISPATCH,
            Op::Report {
                event: Pick(0),
                report: Report::Retryable,
            },
            Op::Report {
                event: Pick(1),
                report: Report::Succeeded,
            },
            DISPATCH,
            Op::Report {
                event: Pick(2),
                report: Report::Retryable,
            },
            Op::Duplicate { delivered: Pick(2) },
        ],
    });
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
            Op::Report {
                event: Pick(0),
                report: Report::Succeeded,
            },
            Op::ListRest,
            DISPATCH,
            Op::Report {
                event: Pick(1),
                report: Report::Succeeded,
            },
            Op::Report {
                event: Pick(2),
                report: Report::Failed,
            },
            Op::FinishListing,
        ],
    });
}

#[test]
fn a_replica_killed_during_claims_reports_and_sweeps_leaves_nothing_half_done() {
    play(Case {
        policy: policy(2),
        pages: 4,
        listed: 4,
        listing_done: true,
        ops: vec![
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
                op: Box::new(Op::Report {
                    event: Pick(0),
                    report: Report::Succeeded,
                }),
                after_ms: 1,
            },
            Op::Crash {
                op: Box::new(Op::Deadline { mask: u8::MAX }),
                after_ms: 1,
            },
            Op::Restart,
        ],
    });
}

#[test]
fn reports_after_a_run_is_cancelled_change_nothing() {
    play(Case {
        policy: policy(3),
        pages: 3,
        listed: 3,
        listing_done: true,
        ops: vec![
            DISPATCH,
            Op::Report {
                event: Pick(0),
                report: Report::Succeeded,
            },
            Op::Close(Close::Cancelled),
            Op::Report {
                event: Pick(1),
                report: Report::Succeeded,
            },
            Op::Report {
                event: Pick(2),
                report: Report::Retryable,
            },
            Op::Deadline { mask: u8::MAX },
        ],
    });
}

#[test]
fn pages_sent_on_to_the_browser_use_no_attempt_and_are_sent_on_once() {
    let stats = play(Case {
        policy: Policy {
            render_auto: true,
            ..policy(1)
        },
        pages: 2,
        listed: 2,
        listing_done: true,
        ops: vec![
            DISPATCH,
            // Both plain fetches look unrendered: both pages go on to the
            // browser, neither using its one attempt.
            Op::Report {
                event: Pick(0),
                report: Report::Unrendered,
            },
            Op::Report {
                event: Pick(1),
                report: Report::Unrendered,
            },
            // A second copy of a plain report changes nothing.
            Op::Duplicate { delivered: Pick(0) },
            DISPATCH,
            // The first page's browser attempt is its only counted one: a
            // retryable failure fails it.
            Op::Report {
                event: Pick(2),
                report: Report::Retryable,
            },
            // A rendered page is not sent on again, whatever it found.
            Op::Report {
                event: Pick(3),
                report: Report::Unrendered,
            },
        ],
    });
    assert_eq!(stats.escalated, 2, "{stats:?}");
}
