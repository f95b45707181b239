//! The client commands: each asks the daemon's API and prints a table or
//! text for people, or the API's JSON with `--json`. On a terminal, text
//! from third parties (titles, errors) is shown with its control characters
//! escaped ([`terminal`]); pipes, files and `--json` get it as it is.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::ProgressDrawTarget;
use serde_json::Value;

use super::client::{CliError, Client};
use super::progress::{plain_line, summary_line, LiveBar, RunView};
use super::table::{self, cell, render};
use super::terminal;
use super::{
    ApiArgs, Command, ExportFormat, RunsCommand, SchedulesCommand, EXIT_RUN_NOT_SUCCEEDED,
};

/// How often `watch` asks for the run on a terminal, and otherwise.
const POLL_LIVE: Duration = Duration::from_millis(500);
const POLL_PLAIN: Duration = Duration::from_secs(1);
/// Plain progress lines are printed at most this often (and on every
/// change of the run's status).
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub(super) async fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Trigger {
            name,
            wait,
            json,
            api,
        } => trigger(&name, wait, json, &api).await,
        Command::Schedules(SchedulesCommand::List { json, api }) => {
            let client = Client::from_args(&api)?;
            let answer = client.get("/v1/schedules").await?;
            print_json_or(json, &answer, || schedules_table(&answer, on_terminal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs(command) => runs(command).await,
        Command::Export {
            run_id,
            format,
            status,
            cells,
            output,
            api,
        } => {
            let client = Client::from_args(&api)?;
            let mut path = format!(
                "/v1/runs/{}/results?format={}",
                segment(&run_id),
                format.as_str()
            );
            if format == ExportFormat::Csv {
                path.push_str(&format!("&cells={}", cells.as_str()));
            }
            if let Some(s) = &status {
                path.push_str(&format!("&status={}", query(s)));
            }
            export(&client, &path, format, output.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { .. }
        | Command::CheckConfig { .. }
        | Command::Migrate { .. }
        | Command::Prune { .. }
        | Command::Dev => Err(CliError::Usage(
            "this command is the daemon's, not a client's".into(),
        )),
    }
}

/// `fanfare trigger`: starts a run of schedule `name`, and follows it
/// with `wait`.
async fn trigger(name: &str, wait: bool, json: bool, api: &ApiArgs) -> Result<ExitCode, CliError> {
    let client = Client::from_args(api)?;
    let answer = client
        .post(&format!("/v1/schedules/{}/trigger", segment(name)))
        .await?;
    let run_id = answer["run_id"].as_str().unwrap_or_default().to_string();
    if !wait {
        print_json_or(json, &answer, || {
            format!("run {run_id} of {name:?} started\n")
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        out(&format!("run {run_id} of {name:?} started\n"))?;
    }
    watch(&client, &run_id, json).await
}

/// `fanfare runs ...`.
async fn runs(command: RunsCommand) -> Result<ExitCode, CliError> {
    match command {
        RunsCommand::List {
            schedule,
            limit,
            json,
            api,
        } => {
            let client = Client::from_args(&api)?;
            let mut path = format!("/v1/runs?limit={limit}");
            if let Some(s) = &schedule {
                path.push_str(&format!("&schedule={}", query(s)));
            }
            let answer = client.get(&path).await?;
            print_json_or(json, &answer, || runs_table(&answer, on_terminal()))?;
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Show { id, json, api } => {
            let client = Client::from_args(&api)?;
            let answer = client.get(&format!("/v1/runs/{}", segment(&id))).await?;
            print_json_or(json, &answer, || run_text(&answer, on_terminal()))?;
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Watch { id, json, api } => {
            let client = Client::from_args(&api)?;
            watch(&client, &id, json).await
        }
        RunsCommand::Cancel { id, json, api } => {
            let client = Client::from_args(&api)?;
            let answer = client
                .post(&format!("/v1/runs/{}/cancel", segment(&id)))
                .await?;
            print_json_or(json, &answer, || {
                format!(
                    "run {id} cancelled: {} open pages cancelled\n",
                    cell(&answer["pages"]["cancelled"])
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Redrive { id, json, api } => {
            let client = Client::from_args(&api)?;
            let answer = client
                .post(&format!("/v1/runs/{}/redrive", segment(&id)))
                .await?;
            print_json_or(json, &answer, || {
                format!(
                    "run {} started: a redrive of run {id}'s failed and timed-out pages\n",
                    cell(&answer["run_id"])
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Follows a run until it is finished: a live bar on a terminal, plain
/// lines otherwise, then the summary. Exit 0 when it succeeded, 1 when it
/// finished otherwise.
async fn watch(client: &Client, id: &str, json: bool) -> Result<ExitCode, CliError> {
    let path = format!("/v1/runs/{}", segment(id));
    let live = !json && std::io::stdout().is_terminal();
    let mut bar: Option<LiveBar> = None;
    let mut last_plain: Option<(Instant, String)> = None;
    loop {
        let run = match client.get(&path).await {
            Ok(run) => run,
            // The ledger is briefly unreachable: keep watching.
            Err(CliError::Api { status: 503, .. }) => {
                tokio::time::sleep(POLL_PLAIN).await;
                continue;
            }
            Err(e) => {
                if let Some(b) = &bar {
                    b.finish();
                }
                return Err(e);
            }
        };
        let mut view = RunView::from_api(&run).ok_or_else(|| CliError::Api {
            method: "GET",
            url: format!("{}{path}", client.base()),
            status: 200,
            message: "the answer is not a run".into(),
        })?;
        if view.finished() {
            if let Some(b) = &bar {
                b.finish();
            }
            if on_terminal() {
                view.error = view.error.as_deref().map(terminal::line);
            }
            if json {
                out(&format!("{}\n", pretty(&run)))?;
            } else {
                let link = format!("{}/ui/runs/{}", client.base(), view.id);
                out(&format!("{}\n", summary_line(&view, Some(&link))))?;
            }
            return Ok(if view.succeeded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_RUN_NOT_SUCCEEDED)
            });
        }
        if live {
            match &bar {
                Some(b) => b.update(&view),
                None => bar = Some(LiveBar::new(&view, Some(ProgressDrawTarget::stdout()))),
            }
        } else if !json {
            let line = plain_line(&view);
            let due = match &last_plain {
                None => true,
                Some((at, prev)) => {
                    let status_changed = prev.split(',').next() != line.split(',').next();
                    (status_changed || at.elapsed() >= PLAIN_EVERY) && *prev != line
                }
            };
            if due {
                out(&format!("{line}\n"))?;
                last_plain = Some((Instant::now(), line));
            }
        }
        tokio::time::sleep(if live { POLL_LIVE } else { POLL_PLAIN }).await;
    }
}

/// Streams an export to `output` (written next to it and renamed when
/// complete, so a failed download leaves no partial file) or to standard
/// output: as it is to a pipe, with control characters escaped to a
/// terminal.
async fn export(
    client: &Client,
    path: &str,
    format: ExportFormat,
    output: Option<&std::path::Path>,
) -> Result<(), CliError> {
    let resp = client.get_stream(path).await?;
    let url = format!("{}{path}", client.base());
    let mut body = resp.bytes_stream();
    let (mut sink, partial): (Box<dyn Write>, Option<std::path::PathBuf>) = match output {
        Some(file) => {
            let mut name = file.as_os_str().to_owned();
            name.push(".partial");
            let partial = std::path::PathBuf::from(name);
            let f = std::fs::File::create(&partial).map_err(|e| {
                CliError::Output(format!("cannot write {}: {e}", partial.display()))
            })?;
            (Box::new(std::io::BufWriter::new(f)), Some(partial))
        }
        None => (Box::new(std::io::stdout().lock()), None),
    };
    let mut escaper = (output.is_none() && on_terminal())
        .then(|| terminal::Escaper::new(format == ExportFormat::Csv));
    let fail = |partial: &Option<std::path::PathBuf>, e: CliError| {
        if let Some(p) = partial {
            let _ = std::fs::remove_file(p);
        }
        e
    };
    let mut bytes = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            fail(
                &partial,
                CliError::Connection {
                    url: url.clone(),
                    reason: format!(
                        "the export broke off after {bytes} bytes: {}",
                        crate::telemetry::error_chain(&e.without_url())
                    ),
                },
            )
        })?;
        bytes += chunk.len() as u64;
        let written = match escaper.as_mut() {
            Some(e) => sink.write_all(e.push(&chunk).as_bytes()),
            None => sink.write_all(&chunk),
        };
        written.map_err(|e| {
            fail(
                &partial,
                CliError::Output(format!("writing the export: {e}")),
            )
        })?;
    }
    if let Some(e) = escaper.as_mut() {
        sink.write_all(e.finish().as_bytes())
            .map_err(|e| CliError::Output(format!("writing the export: {e}")))?;
    }
    sink.flush().map_err(|e| {
        fail(
            &partial,
            CliError::Output(format!("writing the export: {e}")),
        )
    })?;
    drop(sink);
    if let (Some(partial), Some(file)) = (&partial, output) {
        std::fs::rename(partial, file).map_err(|e| {
            fail(
                &Some(partial.clone()),
                CliError::Output(format!("cannot move the export to {}: {e}", file.display())),
            )
        })?;
        eprintln!("wrote {bytes} bytes to {}", file.display());
    }
    Ok(())
}

/// Whether standard output is a terminal (third-party text is escaped).
fn on_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// Each cell as a terminal should show it, when `terminal`.
fn shown(terminal: bool, rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    if !terminal {
        return rows;
    }
    rows.into_iter()
        .map(|row| row.iter().map(|c| terminal::line(c)).collect())
        .collect()
}

fn schedules_table(answer: &Value, terminal: bool) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = answer["schedules"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|s| {
            let last = &s["last_run"];
            let last_run = if last.is_null() {
                "-".to_string()
            } else {
                let state = if last["outcome"].is_null() {
                    cell(&last["status"])
                } else {
                    cell(&last["outcome"])
                };
                format!(
                    "{} {state} ({})",
                    cell(&last["id"]),
                    table::time(&last["created_at"])
                )
            };
            vec![
                cell(&s["name"]),
                cell(&s["cron"]),
                cell(&s["timezone"]),
                cell(&s["invoker"]),
                if s["paused"].as_bool() == Some(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
                table::time(&s["next_fire_at"]),
                last_run,
            ]
        })
        .collect();
    render(
        &[
            "NAME",
            "CRON",
            "TIMEZONE",
            "INVOKER",
            "PAUSED",
            "NEXT FIRE (UTC)",
            "LAST RUN",
        ],
        &shown(terminal, rows),
    )
}

fn runs_table(answer: &Value, terminal: bool) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = answer["runs"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|r| {
            let p = &r["pages"];
            let done = p["total"].as_i64().unwrap_or(0) - p["open"].as_i64().unwrap_or(0);
            let failed = p["failed"].as_i64().unwrap_or(0) + p["timed_out"].as_i64().unwrap_or(0);
            vec![
                cell(&r["id"]),
                cell(&r["schedule"]),
                cell(&r["trigger"]),
                cell(&r["status"]),
                cell(&r["outcome"]),
                format!("{done}/{}", cell(&p["total"])),
                failed.to_string(),
                table::time(&r["created_at"]),
                r["duration_seconds"]
                    .as_f64()
                    .map(table::duration)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    render(
        &[
            "ID",
            "SCHEDULE",
            "TRIGGER",
            "STATUS",
            "OUTCOME",
            "DONE",
            "FAILED",
            "CREATED (UTC)",
            "DURATION",
        ],
        &shown(terminal, rows),
    )
}

fn run_text(run: &Value, terminal: bool) -> String {
    let p = &run["pages"];
    let mut lines: Vec<(String, String)> = vec![
        ("run".into(), cell(&run["id"])),
        ("schedule".into(), cell(&run["schedule"])),
        ("trigger".into(), cell(&run["trigger"])),
        ("status".into(), cell(&run["status"])),
        ("outcome".into(), cell(&run["outcome"])),
    ];
    if !run["error"].is_null() {
        lines.push(("error".into(), cell(&run["error"])));
    }
    if !run["redrive_of"].is_null() {
        lines.push(("redrive of".into(), cell(&run["redrive_of"])));
    }
    lines.extend([
        (
            "pages".into(),
            format!(
                "{} total: {} succeeded, {} failed, {} timed out, {} cancelled, {} open ({} in flight)",
                cell(&p["total"]),
                cell(&p["succeeded"]),
                cell(&p["failed"]),
                cell(&p["timed_out"]),
                cell(&p["cancelled"]),
                cell(&p["open"]),
                cell(&p["in_flight"]),
            ),
        ),
        ("scheduled for".into(), table::time(&run["scheduled_for"])),
        ("created".into(), table::time(&run["created_at"])),
        ("listed".into(), table::time(&run["listed_at"])),
        ("finished".into(), table::time(&run["finished_at"])),
        (
            "duration".into(),
            run["duration_seconds"]
                .as_f64()
                .map(table::duration)
                .unwrap_or_else(|| "-".into()),
        ),
    ]);
    if terminal {
        for (_, v) in &mut lines {
            *v = terminal::line(v);
        }
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out: String = lines
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect();
    if let Some(notes) = run["notifications"].as_array().filter(|n| !n.is_empty()) {
        out.push_str("\nnotifications:\n");
        let rows: Vec<Vec<String>> = notes
            .iter()
            .map(|n| {
                vec![
                    cell(&n["event"]),
                    format!("{} {}", cell(&n["kind"]), cell(&n["target"])),
                    cell(&n["status"]),
                    cell(&n["attempts"]),
                    cell(&n["last_error"]),
                ]
            })
            .collect();
        out.push_str(&render(
            &["EVENT", "TARGET", "STATUS", "ATTEMPTS", "LAST ERROR"],
            &shown(terminal, rows),
        ));
    }
    out
}

/// Prints `answer` as JSON when `json`, else the text `text` makes.
fn print_json_or(
    json: bool,
    answer: &Value,
    text: impl FnOnce() -> String,
) -> Result<(), CliError> {
    if json {
        out(&format!("{}\n", pretty(answer)))
    } else {
        out(&text())
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Writes to standard output (to a terminal, with control characters but
/// newline escaped); a closed pipe is an output error, not a panic.
fn out(text: &str) -> Result<(), CliError> {
    let text = if on_terminal() {
        terminal::text(text)
    } else {
        text.to_string()
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::Output(format!("writing to standard output: {e}")))
}

/// A value as one URL path segment.
fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A value in a query string.
fn query(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
