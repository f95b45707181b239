//! fanfare: runs scheduled scraping jobs on AWS Lambda.
//!
//! A schedule fires; fanfare lists the run's pages into its Postgres ledger,
//! fans one asynchronous crawler invocation out per page, fans the crawlers'
//! callbacks back in, and sends one notification when every page of the run
//! has reported. See `docs/configuration.md`, `docs/crawler-contract.md`
//! and `docs/api.md` for the configuration, the crawler contract and the API.

#![warn(missing_docs)]

pub mod actions;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dev;
pub mod discovery;
pub mod dispatch;
pub mod http;
pub mod lambda;
pub mod ledger;
pub mod lifecycle;
pub mod memory;
pub mod notify;
pub mod overview;
pub mod recorder;
pub mod redact;
pub mod retention;
pub mod robots;
pub mod runs;
pub mod schedule;
pub mod sources;
pub mod startup;
pub mod sweep;
pub mod telemetry;
pub mod token;

#[cfg(test)]
mod module_graph_tests;

pub use config::Settings;
pub use http::callback;
pub use startup::Application;
