//! fanfare against Lambda APIs it did not write: moto's Lambda API (simple
//! mode, with its request recorder) and cargo-lambda's emulator running the
//! real `fanfare-crawler` binary. Each test starts the tool it needs as a
//! child process on a free loopback port and kills it, and everything it
//! spawned, when the test ends.
//!
//! The tools come from the venv `scripts/test` sets up (`moto_server`,
//! `cargo-lambda`): they are looked up on PATH, then in
//! `$FANFARE_CACHE/venv/bin` (default `/var/tmp/fanfare-cache`). A missing
//! tool fails the test with what to install; nothing is skipped.

mod emulator;
mod helpers;
mod moto;
mod procs;
