//! The `fanfare` command line: the daemon's commands (`serve`,
//! `check-config`, `migrate`, `prune`, `dev`, run by `main.rs`) and the client
//! commands that talk to a running daemon's API (`schedules`, `runs`,
//! `trigger`, `export`).
//!
//! Client commands find the daemon at `--url` (or `FANFARE_URL`), else at
//! the configuration's `server.listen` on loopback, else at
//! `http://127.0.0.1:8080`; the admin token is `FANFARE_ADMIN_TOKEN`, else
//! the configuration's `security.admin_token`. The configuration
//! (`--config`, `FANFARE_CONFIG` or `FANFARE_CONFIG_TOML`) is read only
//! when one of the two is missing.
//!
//! Exit codes: 0 done (for `runs watch` and `trigger --wait`: the run
//! succeeded); 1 the watched run finished otherwise (partial, failed,
//! cancelled); 2 usage, configuration or connection errors, and error
//! answers from the daemon (unknown run, refused token, a conflict).

pub mod client;
mod commands;
pub mod progress;
pub mod table;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use client::{CliError, Client};

/// The `fanfare` command.
#[derive(Debug, Parser)]
#[command(
    name = "fanfare",
    version,
    about = "Fans scheduled crawls out to AWS Lambda and fans the results back in."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Deletes the finished runs past retention now (one pass of the
    /// pruner), or with --dry-run lists what would go.
    Prune {
        /// The TOML configuration file.
        #[arg(long, env = "FANFARE_CONFIG")]
        config: PathBuf,
        /// List the runs a pass would delete (schedule, id, finished_at,
        /// pages) and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Everything embedded: a private Postgres, a demo site, a demo schedule
    /// and the crawler in-process.
    Dev,
    /// Starts a run of a schedule now, through a running daemon's API.
    Trigger {
        /// The schedule's name.
        name: String,
        /// Follow the run until it finishes (exit 0 when it succeeded, 1 otherwise).
        #[arg(long)]
        wait: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The daemon's API and its admin token.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The schedules and their last runs.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Runs: list, show, watch, cancel, redrive.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Downloads every page's result of a run (CSV or JSON Lines), streamed.
    Export {
        /// The run's id.
        run_id: String,
        /// The file format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
        /// Only pages in this state (succeeded, failed, timed_out, cancelled, pending, dispatched).
        #[arg(long)]
        status: Option<String>,
        /// CSV cells beginning with = + - @, a tab or a carriage return:
        /// `safe` puts a single quote in front (a spreadsheet shows them as
        /// text, not formulas); `raw` writes them as they are.
        #[arg(long, value_enum, default_value_t = ExportCells::Safe)]
        cells: ExportCells,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The daemon's API and its admin token.
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `fanfare schedules …`.
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Lists the configured schedules with their next fire and last run.
    List {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The daemon's API and its admin token.
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `fanfare runs …`.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Lists runs, newest first.
    List {
        /// Only runs of this schedule.
        #[arg(long)]
        schedule: Option<String>,
        /// How many runs at most (1-500).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The daemon's API and its admin token.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Shows one run: state, page counts, timings, notifications.
    Show {
        /// The run's id.
        id: String,
        /// Print the API's JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The daemon's API and its admin token.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Follows a run until it finishes: exit 0 when it succeeded, 1 otherwise.
    Watch {
        /// The run's id.
        id: String,
        /// Print only the finished run's JSON.
        #[arg(long)]
        json: bool,
        /// The daemon's API and its admin token.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancels a run: its open pages are cancelled and it is notified.
    Cancel {
        /// The run's id.
        id: String,
        /// Print the API's JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The daemon's API and its admin token.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Starts a new run of a run's failed and timed-out pages.
    Redrive {
        /// The run's id.
        id: String,
        /// Print the API's JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The daemon's API and its admin token.
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Where the daemon's API is and how to sign in to it.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The daemon's base URL [default: the configuration's server.listen on
    /// loopback, else http://127.0.0.1:8080].
    #[arg(long, env = "FANFARE_URL")]
    pub url: Option<String>,
    /// The daemon's configuration file, for the admin token (unless
    /// FANFARE_ADMIN_TOKEN is set) and the address (unless --url is given).
    #[arg(long, env = "FANFARE_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The formats of `fanfare export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl ExportFormat {
    /// The name the API takes.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Jsonl => "jsonl",
        }
    }
}

/// How `fanfare export` asks for CSV cells that a spreadsheet would run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportCells {
    /// A single quote in front of a cell beginning with = + - @, tab or CR.
    Safe,
    /// Every cell as it is.
    Raw,
}

impl ExportCells {
    /// The name the API takes.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportCells::Safe => "safe",
            ExportCells::Raw => "raw",
        }
    }
}

/// The exit code of a finished run for `runs watch` and `trigger --wait`.
pub const EXIT_RUN_NOT_SUCCEEDED: u8 = 1;
/// The exit code of usage, configuration, connection and API errors.
pub const EXIT_USAGE: u8 = 2;

/// Runs a client command (the daemon's own commands are `main.rs`'s) and
/// returns its exit code; errors are printed on standard error.
pub async fn run_client(command: Command) -> ExitCode {
    match commands::run(command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fanfare: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
