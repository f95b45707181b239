//! Integration tests: the real application, on port 0, against a real
//! Postgres (one fresh database per test).

mod api;
mod callbacks;
mod changes;
mod cli;
mod conditional;
mod config;
mod console;
mod deploy;
mod dispatch;
mod extraction;
mod fuzz_callbacks;
mod helpers;
mod lambda_errors;
mod lifecycle;
mod links;
mod lockout;
mod openapi;
mod politeness;
mod private_networks;
mod proxies;
mod render;
mod results;
mod retention;
mod runs;
mod schedules;
mod secrets;
mod server;
mod sources;
