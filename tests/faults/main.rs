//! The fault suite: the real daemon under the faults it must survive, each
//! test asserting that its fault actually happened and printing its figures
//! as `FIGURE <name> key=value ...` lines.
//!
//! - `sigkill`: the daemon (a subprocess) killed with SIGKILL at random
//!   points of a 1,000-page run, restarted on the same database;
//! - `replicas`: three replicas on an every-second schedule, one killed and
//!   restarted;
//! - `duplicates`: every report delivered three times in shuffled order,
//!   reports of superseded attempts included;
//! - `lost_events`: an invoker that silently drops a tenth of the events;
//! - `database`: the daemon's Postgres connections terminated repeatedly;
//! - `webhooks`: a webhook receiver that fails for a while, then recovers;
//! - `links`: a run that grows by following links, recorded by two
//!   replicas, one killed with SIGKILL and replaced;
//! - `render`: a `render = "auto"` run of app shells and served pages,
//!   recorded by two replicas, one killed with SIGKILL and replaced;
//! - `outage`: the database unreachable for 30 s; `/healthz` (the load
//!   balancer's check) stays 200, `/readyz` 503, the daemon resumes.
//!
//! `FANFARE_FAULT_TRIALS` sets the number of SIGKILL trials (default 20),
//! `FANFARE_FAULT_SEED` the random seed (default: a fresh one, printed).

mod database;
mod duplicates;
mod helpers;
mod links;
mod lost_events;
mod outage;
mod procs;
mod render;
mod replicas;
mod sigkill;
mod webhooks;
