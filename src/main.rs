//! The `fanfare` command: parses the CLI, sets up logging, loads the
//! configuration and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fanfare::{Application, Settings};
use secrecy::ExposeSecret;

#[derive(Parser)]
#[command(
    name = "fanfare",
    version,
    about = "Fans scheduled crawls out to AWS Lambda and fans the results back in."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the daemon (applies migrations at start).
    Serve {
        /// The TOML configuration file.
        #[arg(long, env = "FANFARE_CONFIG")]
        config: PathBuf,
    },
    /// Validates a configuration: exit 0 when valid, else every problem is listed.
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, env = "FANFARE_CONFIG")]
        config: PathBuf,
    },
    /// Applies the database migrations and exits.
    Migrate {
        /// The TOML configuration file.
        #[arg(long, env = "FANFARE_CONFIG")]
        config: PathBuf,
    },
    /// Starts a run of a schedule now, through a running daemon's API.
    Trigger {
        /// The schedule's name.
        name: String,
        /// The TOML configuration file (for the admin token and address).
        #[arg(long, env = "FANFARE_CONFIG")]
        config: PathBuf,
        /// The daemon's base URL; defaults to server.listen on loopback.
        #[arg(long)]
        url: Option<String>,
    },
    /// Everything embedded: a private Postgres, a demo site, a demo schedule
    /// and the crawler in-process.
    Dev,
}

fn load(path: &std::path::Path) -> anyhow::Result<Settings> {
    Settings::load(Some(path)).map_err(|e| anyhow::anyhow!("{}: {e}", source(path)))
}

/// Where the configuration is read from, for messages: the file, or the
/// environment variable that takes its place.
fn source(path: &std::path::Path) -> String {
    if std::env::var_os(fanfare::config::CONFIG_TOML_ENV).is_some() {
        fanfare::config::CONFIG_TOML_ENV.to_string()
    } else {
        path.display().to_string()
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    fanfare::telemetry::init();
    let result = match cli.command {
        Command::CheckConfig { config } => match Settings::load(Some(&config)) {
            Ok(s) => {
                println!(
                    "{}: valid ({} schedules)",
                    source(&config),
                    s.schedules.len()
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("{}: {e}", source(&config));
                return ExitCode::from(2);
            }
        },
        Command::Serve { config } => serve(&config).await,
        Command::Migrate { config } => migrate(&config).await,
        Command::Trigger { name, config, url } => trigger(&name, &config, url).await,
        Command::Dev => fanfare::dev::run().await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fanfare: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: &std::path::Path) -> anyhow::Result<()> {
    let settings = load(config)?;
    let app = Application::build(settings).await?;
    let stop = app.shutdown_token();
    tokio::spawn(async move {
        fanfare::startup::shutdown_signal().await;
        stop.cancel();
    });
    app.run_until_stopped().await
}

async fn migrate(config: &std::path::Path) -> anyhow::Result<()> {
    let settings = load(config)?;
    let pool = fanfare::ledger::pool(
        settings.database.url.expose_secret(),
        settings.database.max_connections,
    )?;
    fanfare::ledger::migrate(&pool)
        .await
        .context("applying migrations")?;
    println!("migrations applied");
    Ok(())
}

async fn trigger(name: &str, config: &std::path::Path, url: Option<String>) -> anyhow::Result<()> {
    let settings = load(config)?;
    let base = url.unwrap_or_else(|| {
        let mut addr = settings.server.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    });
    let endpoint = format!("{}/v1/schedules/{name}/trigger", base.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .post(&endpoint)
        .bearer_auth(settings.security.admin_token.expose_secret())
        .send()
        .await
        .with_context(|| format!("POST {endpoint} (is `fanfare serve` running there?)"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("{endpoint} answered {status}: {body}");
    }
    println!("{body}");
    Ok(())
}
