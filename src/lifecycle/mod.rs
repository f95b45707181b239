//! The lifecycle's one owner: what happens to a page ([`page`]: its next
//! state after a report, a deadline, an invoke error or its run closing,
//! and the backoff of every retry) and the rules of a run ([`run`]: its
//! outcome, when it finishes, its notifications), and what changed since
//! the previous run ([`changes`]). Above the ledger, which
//! only runs the statements these decide; below the workers (callback,
//! sweeper, dispatcher, notifier) that call them.

pub mod changes;
pub mod page;
pub mod run;

pub use page::{backoff, Event, Next, RetryReason};
pub use run::{Closing, RunPolicy, TargetRef};
