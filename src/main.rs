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
        Command::Prune { config, dry_run } => prune(&config, dry_run).await,
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

/// How many runs `prune --dry-run` lists at most.
const DRY_RUN_LIMIT: i64 = 10_000;

async fn prune(config: &std::path::Path, dry_run: bool) -> anyhow::Result<()> {
    let settings = load(config)?;
    let pool = fanfare::ledger::pool(settings.database.url.expose_secret(), 2)?;
    // No migration here: a dry run changes nothing, the schema included
    // (the pruner's statements read only tables every release has).
    if dry_run {
        let runs = fanfare::retention::would_prune(&pool, &settings, DRY_RUN_LIMIT)
            .await
            .context("reading the runs past retention")?;
        let pages: i64 = runs.iter().map(|r| r.total_pages).sum();
        println!(
            "would delete {} runs with {pages} pages (dry run: nothing deleted)",
            runs.len()
        );
        if !runs.is_empty() {
            let rows: Vec<Vec<String>> = runs
                .iter()
                .map(|run| {
                    vec![
                        run.schedule.clone(),
                        run.id.to_string(),
                        run.finished_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        run.total_pages.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                fanfare::cli::table::render(&["SCHEDULE", "RUN", "FINISHED_AT", "PAGES"], &rows)
            );
        }
        if runs.len() as i64 == DRY_RUN_LIMIT {
            println!("(the oldest {DRY_RUN_LIMIT} only)");
        }
        return Ok(());
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        fanfare::startup::shutdown_signal().await;
        stop.cancel();
    });
    let pruned = fanfare::retention::prune_once(&pool, &settings, &cancel)
        .await
        .context("pruning")?;
    println!(
        "deleted {} runs with {} pages and {} page changes",
        pruned.runs, pruned.pages, pruned.changes
    );
    Ok(())
}
