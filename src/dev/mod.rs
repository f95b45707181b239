//! `fanfare dev`: the whole system on one machine with zero configuration.
//!
//! A private Postgres (or `DATABASE_URL`), the built-in demo shop on
//! loopback, a demo schedule that fires at start and every minute, the
//! crawler in-process, and notifications printed to the terminal.

mod monitor;
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

/// The log filter of `fanfare dev` when `RUST_LOG` is not set: the lines
/// about single pages and runs (dispatch, crawls, reports, retries) are
/// left out, since each run shows as one live line instead; warnings still
/// show. The daemon's own levels are unchanged (`fanfare serve` logs them).
pub const LOG_FILTER: &str = "info,sqlx=warn,tower_http=warn,aws_config=warn,\
    fanfare_crawler=warn,fanfare::dispatch=warn,fanfare::runs=warn,fanfare::schedule=warn,\
    fanfare::notify=warn,fanfare::sweep=warn,fanfare::lifecycle=warn,fanfare::http=warn,\
    fanfare::demo=warn,fanfare::startup=warn";

/// The configuration `fanfare dev` runs with, as TOML.
pub fn dev_config(database_url: &str, port: u16, sitemap: &str) -> String {
    let secret = Alphanumeric.sample_string(&mut rand::rng(), 48);
    let extract = DEMO_EXTRACT
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
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

# The same shop crawled from its home page, following its links
# (`fanfare trigger demo-crawl`).
[[schedules]]
name = "demo-crawl"
invoker = "local"
pages = {{ crawl = "{home}", exclude = ["*.xml", "*.json"] }}
extract = {{ {extract} }}
page_timeout = "30s"
max_in_flight = 8

[[schedules.notify]]
stdout = {{}}
"#,
        home = sitemap.strip_suffix("sitemap.xml").unwrap_or(sitemap),
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
    println!("{}", banner(&api, &site.base_url()));
    println!(
        "{}",
        browser_status(fanfare_crawler::render::find_chromium(None))
    );
    let stop = app.shutdown_token();
    tokio::spawn(async move {
        crate::startup::shutdown_signal().await;
        stop.cancel();
    });
    let monitor = tokio::spawn(monitor::show_runs(
        app.runs().pool.clone(),
        api.clone(),
        app.shutdown_token(),
    ));
    app.trigger("demo").await?;
    let result = app.run_until_stopped().await;
    monitor.abort();
    site.shutdown().await;
    if let Some(pg) = postgres {
        pg.stop().await?;
    }
    result
}

/// The line `fanfare dev` prints about the browser that renders pages
/// (`render = "always"` or `"auto"`): which one was found, or what to
/// install.
pub fn browser_status(found: Result<PathBuf, String>) -> String {
    match found {
        Ok(path) => format!(
            "  browser:    {} (for schedules with render = \"always\" or \"auto\")\n",
            path.display()
        ),
        Err(missing) => format!("  browser:    none: {missing}\n"),
    }
}

/// What `fanfare dev` prints when it is up: where the console, the API and
/// the demo site are, how to sign in, and what to try.
pub fn banner(api: &str, site: &str) -> String {
    let exe = std::env::current_exe()
        .ok()
        .map(|exe| {
            std::env::current_dir()
                .ok()
                .and_then(|dir| exe.strip_prefix(dir).ok().map(|p| p.to_path_buf()))
                .unwrap_or(exe)
                .display()
                .to_string()
        })
        .unwrap_or_else(|| "fanfare".into());
    format!(
        "\nfanfare dev is up.\n\
         \x20 console:    {api}/ui/   (admin token: {DEV_ADMIN_TOKEN})\n\
         \x20 API:        {api}\n\
         \x20 demo site:  {site}  ({DEMO_PAGES} product pages)\n\
         \x20 schedule:   \"demo\", now and at every minute; the crawler runs in-process\n\
         \x20             \"demo-crawl\" crawls the shop from its home page, on trigger\n\
         \n\
         From another terminal:\n\
         \x20 export FANFARE_URL={api} FANFARE_ADMIN_TOKEN={DEV_ADMIN_TOKEN}\n\
         \x20 {exe} runs list\n\
         \x20 {exe} trigger demo --wait\n\
         \x20 {exe} export RUN_ID --format csv -o demo.csv\n\
         \n\
         Each run shows as one line below; Ctrl-C stops.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanfare_crawler::{FieldSpec, ValueType};

    #[test]
    fn the_demo_schedule_reads_its_json_ld_price_as_a_number() {
        let config = dev_config(
            "postgres://x@127.0.0.1/db",
            0,
            "http://127.0.0.1:1/sitemap.xml",
        );
        let settings =
            crate::config::Settings::from_toml(&config).expect("the dev config is valid");
        let demo = settings.schedule("demo").expect("the demo schedule");
        assert_eq!(demo.extract["name"], FieldSpec::from("h1.name"));
        let FieldSpec::Table(price) = &demo.extract["offer_price"] else {
            panic!("offer_price is a table: {:?}", demo.extract)
        };
        assert_eq!(price.jsonld.as_deref(), Some("Product.offers.price"));
        assert_eq!(price.value_type, Some(ValueType::Number));
    }

    #[test]
    fn the_browser_line_names_the_browser_or_says_what_to_install() {
        let found = browser_status(Ok(PathBuf::from("/usr/bin/chromium")));
        assert!(found.contains("/usr/bin/chromium"), "{found}");
        let missing = browser_status(fanfare_crawler::render::find_chromium(Some(
            std::path::Path::new("/nonexistent/chrome"),
        )));
        assert!(missing.contains("none"), "{missing}");
        assert!(missing.contains("apt-get install chromium"), "{missing}");
        assert!(missing.contains("FANFARE_CHROMIUM"), "{missing}");
    }
}
