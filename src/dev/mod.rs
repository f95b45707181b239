//! `fanfare dev`: the whole system on one machine with zero configuration.
//!
//! A private Postgres (or `DATABASE_URL`), the built-in demo shop on
//! loopback, a demo schedule that fires at start and every minute, the
//! crawler in-process, and notifications printed to the terminal.

pub mod postgres;

use std::path::PathBuf;

use anyhow::Context;
use rand::distr::{Alphanumeric, SampleString};

use crate::demo::{DemoSite, DEMO_EXTRACT};
use crate::{Application, Settings};

/// Pages in the demo shop.
pub const DEMO_PAGES: usize = 36;
/// The admin token `fanfare dev` uses.
pub const DEV_ADMIN_TOKEN: &str = "fanfare-dev-admin-token-0123456789abcdef";

/// The configuration `fanfare dev` runs with, as TOML.
pub fn dev_config(database_url: &str, port: u16, sitemap: &str) -> String {
    let secret = Alphanumeric.sample_string(&mut rand::rng(), 48);
    let extract = DEMO_EXTRACT
        .iter()
        .map(|(k, v)| format!("{k} = {v:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
shutdown_grace = "5s"

[database]
url = {database_url:?}
max_connections = 8

[security]
callback_secret = "{secret}"
admin_token = "{DEV_ADMIN_TOKEN}"
# The demo shop is on loopback, which production keeps closed.
allow_private_networks = true

[[schedules]]
name = "demo"
cron = "0 * * * * *"
invoker = "local"
pages = {{ sitemap = "{sitemap}" }}
extract = {{ {extract} }}
page_timeout = "30s"
max_in_flight = 8

[[schedules.notify]]
stdout = {{}}
"#
    )
}

/// Runs `fanfare dev` until Ctrl-C.
pub async fn run() -> anyhow::Result<()> {
    let (database_url, postgres) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let dir = PathBuf::from(".fanfare-dev").join("pgdata");
            println!("Starting a private Postgres in {} …", dir.display());
            let pg = postgres::LocalPostgres::start(&dir).await?;
            (pg.url(), Some(pg))
        }
    };
    let site = DemoSite::start(DEMO_PAGES)
        .await
        .context("starting the demo site")?;
    // 8080 when free, any free port otherwise.
    let port = match std::net::TcpListener::bind(("127.0.0.1", 8080)) {
        Ok(l) => {
            drop(l);
            8080
        }
        Err(_) => 0,
    };
    let config = dev_config(&database_url, port, &site.sitemap_url());
    let settings = Settings::from_toml(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = Application::build(settings).await?;
    let api = format!("http://127.0.0.1:{}", app.port());
    println!(
        "\nfanfare dev is up.\n  API:        {api}  (admin token: {DEV_ADMIN_TOKEN})\n  demo site:  {}  ({DEMO_PAGES} product pages)\n  schedule:   \"demo\", now and at every minute; the crawler runs in-process\n\n  curl -s -H 'Authorization: Bearer {DEV_ADMIN_TOKEN}' {api}/v1/runs\n  curl -s -XPOST -H 'Authorization: Bearer {DEV_ADMIN_TOKEN}' {api}/v1/schedules/demo/trigger\n  curl -s {api}/metrics\n\nCtrl-C stops.\n",
        site.base_url()
    );
    let stop = app.shutdown_token();
    tokio::spawn(async move {
        crate::startup::shutdown_signal().await;
        stop.cancel();
    });
    let first = app.trigger("demo").await?;
    if let Some(run_id) = first {
        println!("Run {run_id} started: {api}/v1/runs/{run_id}\n");
    }
    let result = app.run_until_stopped().await;
    site.shutdown().await;
    if let Some(pg) = postgres {
        pg.stop().await?;
    }
    result
}
