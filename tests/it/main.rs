//! Integration tests: the real application, on port 0, against a real
//! Postgres (one fresh database per test).

mod api;
mod callbacks;
mod config;
mod deploy;
mod fuzz_callbacks;
mod helpers;
mod lambda_errors;
mod lifecycle;
mod private_networks;
mod runs;
mod secrets;
mod server;
mod sources;
