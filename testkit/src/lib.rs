//! fanfare's test kit, shared by every test binary (`tests/it`, `tests/aws`,
//! `tests/faults`, `tests/model`) and the benchmarks under `bench/`:
//!
//! - [`db`]: a fresh database per test, dropped when its guard is dropped,
//!   after a panic too;
//! - [`config`]: the secrets and configuration TOML of every test;
//! - [`app`]: the real application on a task of its own ([`AppTask`]) and
//!   the one [`TestApp`] the tests talk to;
//! - [`api`]: calls to a running daemon's API (in-process or a subprocess);
//! - [`lambda`]: a Lambda API stand-in that records every invoke;
//! - [`linksite`]: a loopback site of pages linked as a tree, for crawls;
//! - [`appshop`]: a loopback shop of app shells a script fills in and of
//!   pages served whole, counting each script page's renders;
//! - [`reports`]: contract reports, as a crawler sends them;
//! - [`validsite`]: a loopback site whose pages carry `ETag` and
//!   `Last-Modified` and answer 304 to a matching conditional GET,
//!   counting what it sent;
//! - [`webhooks`]: loopback webhook receivers and Standard Webhooks
//!   signatures computed independently of fanfare's code;
//! - [`metrics`]: samples of a Prometheus text exposition;
//! - [`net`]: loopback HTTP servers;
//! - [`proxy`]: a loopback proxy to a test database that can be cut;
//! - [`forward_proxy`]: a loopback HTTP forward proxy that records what it
//!   forwards and checks its credentials;
//! - [`wait`]: [`eventually`], the one way a test waits for a condition.
//!
//! A dev-dependency of `fanfare` only; never published.

pub mod api;
pub mod app;
pub mod appshop;
pub mod bench;
pub mod config;
pub mod db;
pub mod forward_proxy;
pub mod lambda;
pub mod linksite;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod reports;
pub mod tls_site;
pub mod validsite;
pub mod wait;
pub mod webhooks;

pub use api::{get, metrics_text, post_callback, texts, trigger, wait_ready, wait_run, RunState};
pub use app::{AppTask, TestApp, TestAppBuilder};
pub use config::{
    config_toml, config_toml_with, crawl_schedule_block, env_parsed, lambda_schedule_block,
    schedule, webhook_block, ConfigFile, ScheduleToml, ADMIN_TOKEN, CALLBACK_SECRET,
    WEBHOOK_SECRET,
};
pub use db::{admin_database_url, fresh_database, TestDatabase, DATABASE_PREFIX};
pub use forward_proxy::{ForwardProxy, Forwarded};
pub use lambda::RecordingLambda;
pub use linksite::{LinkSite, LinkSiteSpec};
pub use metrics::metric_in;
pub use proxy::PgProxy;
pub use reports::{failed, succeeded};
pub use tls_site::{TlsSite, TEST_CA_PEM};
pub use validsite::{Served, ValidatorSite, ValidatorSiteSpec};
pub use wait::{eventually, eventually_notified, holds, secs};
pub use webhooks::{by_webhook_id, expected_signature, header, Delivery, Hit, Policy, Receiver};
