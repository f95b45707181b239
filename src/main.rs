//! The `fanfare` command: parses the CLI, sets up logging, loads the
//! configuration and hands over to the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fanfare::cli::{Cli, Command};
use fanfare::{Application, Settings};
use secrecy::ExposeSecret;

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
    fanfare::memory::configure();
    let cli = Cli::parse();
    match &cli.command {
        Command::Dev => fanfare::telemetry::init_with(fanfare::dev::LOG_FILTER),
        _ => fanfare::telemetry::init(),
    }
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
                return ExitCode::from(fanfare::cli::EXIT_USAGE);
            }
        },
        Command::Serve { config } => serve(&config).await,
        Command::Migrate { config } => migrate(&config).await,
        Command::Dev => fanfare::dev::run().await,
        client => return fanfare::cli::run_client(client).await,
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
