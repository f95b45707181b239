//! The `fanfare` client commands: the real binary against a running
//! daemon, its output read as a script would (not a terminal: plain lines).

use std::process::Output;
use std::time::Duration;

use fanfare::demo::DemoSite;
use serde_json::Value;

use crate::helpers::*;

/// `fanfare ARGS` with none of the CLI's settings in its environment.
fn fanfare_command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fanfare"));
    command.args(args);
    for setting in [
        "FANFARE_URL",
        "FANFARE_ADMIN_TOKEN",
        "FANFARE_CONFIG",
        "FANFARE_CONFIG_TOML",
    ] {
        command.env_remove(setting);
    }
    command
}

/// Runs `fanfare ARGS` against `url` with the admin token in the
/// environment, no configuration.
async fn fanfare(url: &str, args: &[&str]) -> Output {
    fanfare_command(args)
        .env("FANFARE_URL", url)
        .env("FANFARE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("the fanfare binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A schedule crawling the demo site in-process: `paths` on it.
fn local_schedule(name: &str, site: &DemoSite, paths: &[&str]) -> String {
    fanfare_testkit::schedule(name)
        .urls(paths.iter().map(|p| format!("{}{p}", site.base_url())))
        .extract(r#"{ price = ".price" }"#)
        .to_string()
}

#[tokio::test]
async fn runs_list_and_show_print_the_run_as_json_and_as_a_table() {
    let (app, _, run_id, _) = dispatched_run("s", 2).await;

    let out = fanfare(&app.address, &["runs", "list", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).expect("runs list --json is JSON");
    let ids = texts(&listed["runs"], "id");
    assert_eq!(ids, [run_id.to_string()]);

    let out = fanfare(&app.address, &["runs", "list", "--schedule", "s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("ID "), "{table}");
    assert!(lines[1].starts_with(&run_id.to_string()), "{table}");
    // Aligned: each header starts where its cell starts.
    let col = lines[0].find("SCHEDULE").unwrap();
    assert_eq!(&lines[1][col..col + 1], "s", "{table}");
    assert!(lines[1].contains(" 0/2 "), "{table}");

    let out = fanfare(&app.address, &["runs", "show", &run_id.to_string()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.contains(&format!("run            {run_id}")),
        "{shown}"
    );
    assert!(shown.contains("2 total: 0 succeeded"), "{shown}");
    app.stop().await;
}

#[tokio::test]
async fn schedules_list_shows_each_schedule_with_its_last_run() {
    let (app, lambda) = TestApp::spawn_recording(&format!(
        "{}{}",
        lambda_schedule(
            "nightly",
            1,
            None,
            "cron = \"0 0 3 * * *\"\ntimezone = \"Europe/Paris\""
        ),
        lambda_schedule("adhoc", 1, None, "")
    ))
    .await;
    let run_id = app.trigger("adhoc").await;
    lambda.wait_for(1).await;

    let out = fanfare(&app.address, &["schedules", "list", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let body: Value = serde_json::from_slice(&out.stdout).expect("schedules list --json is JSON");
    let (_, api) = app.get("/v1/schedules").await;
    assert_eq!(body, api);

    let out = fanfare(&app.address, &["schedules", "list"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("NAME "), "{table}");
    let words = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let nightly = words(lines[1]);
    assert_eq!(nightly[..5], ["nightly", "0", "0", "3", "*"], "{table}");
    assert!(
        lines[1].contains("Europe/Paris") && lines[1].ends_with(" -"),
        "{table}"
    );
    let adhoc = words(lines[2]);
    assert_eq!(adhoc[..5], ["adhoc", "-", "-", "lambda", "no"], "{table}");
    assert!(lines[2].contains(&format!("{run_id} running")), "{table}");
    app.stop().await;
}

#[tokio::test]
async fn trigger_wait_exits_0_when_the_run_succeeds_and_1_when_it_partly_fails() {
    let site = DemoSite::start(3).await.unwrap();
    let app = TestApp::spawn(
        &format!(
            "{}{}",
            local_schedule("good", &site, &["/products/1", "/products/2"]),
            local_schedule("mixed", &site, &["/products/3", "/status/404"])
        ),
        None,
    )
    .await;

    let out = fanfare(&app.address, &["trigger", "good", "--wait"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let first = stdout.lines().next().unwrap();
    assert!(
        first.starts_with("run ") && first.ends_with(" of \"good\" started"),
        "{stdout}"
    );
    let run_id = first.split(' ').nth(1).unwrap();
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('✔'))
        .unwrap_or("");
    assert!(
        last.contains(&format!(
            "run {run_id} of \"good\" succeeded: 2/2 pages succeeded, 0 failed"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{}/ui/runs/{run_id}", app.address)),
        "{stdout}"
    );
    assert!(
        !stdout.contains('\r') && !stdout.contains('\u{1b}'),
        "plain lines, no terminal codes: {stdout:?}"
    );
    let (_, run) = app.get(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(run["outcome"], "succeeded");

    let out = fanfare(&app.address, &["trigger", "mixed", "--wait"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("\"mixed\" partial: 1/2 pages succeeded, 1 failed"),
        "{stdout}"
    );

    // `runs redrive`: a new run of the failed page alone, linked to it.
    let mixed = stdout
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap()
        .to_string();
    let out = fanfare(&app.address, &["runs", "redrive", &mixed]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = String::from_utf8(out.stdout).unwrap();
    let redrive = said.split(' ').nth(1).unwrap_or_default().to_string();
    assert!(
        said.starts_with("run ")
            && said.contains(&format!(
                "a redrive of run {mixed}'s failed and timed-out pages"
            )),
        "{said}"
    );
    let (status, run) = app.get(&format!("/v1/runs/{redrive}")).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["trigger"], "redrive", "{run}");
    let out = fanfare(&app.address, &["runs", "watch", &redrive]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (_, run) = app.get(&format!("/v1/runs/{redrive}")).await;
    assert_eq!(run["pages"]["total"], 1, "{run}");
    assert_eq!(run["pages"]["failed"], 1, "{run}");

    // --json: the finished run's JSON only.
    let out = fanfare(&app.address, &["trigger", "good", "--wait", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run: Value = serde_json::from_slice(&out.stdout).expect("the finished run as JSON");
    assert_eq!(run["status"], "finished");
    assert_eq!(run["pages"]["succeeded"], 2);
    app.stop().await;
    site.shutdown().await;
}

#[tokio::test]
async fn runs_cancel_cancels_an_open_run_and_a_second_cancel_exits_2() {
    let (app, lambda) = TestApp::spawn_recording(&lambda_schedule("s", 3, None, "")).await;
    let run_id = app.trigger("s").await.to_string();
    lambda.wait_for(3).await;

    let out = fanfare(&app.address, &["runs", "cancel", &run_id]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("run {run_id} cancelled: 3 open pages cancelled\n")
    );
    let (_, run) = app.get(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(run["outcome"], "cancelled");
    assert_eq!(run["pages"]["cancelled"], 3);

    let out = fanfare(&app.address, &["runs", "cancel", &run_id]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("409") && stderr.contains("finished already"),
        "{stderr}"
    );

    // Watching it now: it finished, not succeeded.
    let out = fanfare(&app.address, &["runs", "watch", &run_id]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" cancelled: 0/3 pages succeeded"),
        "{}",
        text(&out)
    );
    app.stop().await;
}

#[tokio::test]
async fn export_to_a_file_equals_the_api_answer() {
    let site = DemoSite::start(3).await.unwrap();
    let app = TestApp::spawn(
        &local_schedule(
            "shop",
            &site,
            &["/products/1", "/products/2", "/status/404"],
        ),
        None,
    )
    .await;
    let run_id = app.trigger("shop").await;
    app.wait_finished(run_id, Duration::from_secs(20)).await;
    let dir = std::env::temp_dir().join(format!("fanfare-export-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();

    let run = run_id.to_string();
    for format in ["csv", "jsonl"] {
        let export = ["export", &run, "--format", format];
        let path = format!("/v1/runs/{run_id}/results?format={format}");
        let api = app.admin(Method::GET, &path).await.bytes().await.unwrap();
        let file = dir.join(format!("run.{format}"));
        let out = fanfare(
            &app.address,
            &[&export[..], &["-o", file.to_str().unwrap()]].concat(),
        )
        .await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let written = std::fs::read(&file).unwrap();
        assert_eq!(written, api.to_vec(), "{format}");
        assert_eq!(
            String::from_utf8_lossy(&written).lines().count(),
            if format == "csv" { 4 } else { 3 }
        );
        // To standard output, filtered.
        let out = fanfare(
            &app.address,
            &[&export[..], &["--status", "failed"]].concat(),
        )
        .await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.contains("/status/404"), "{stdout}");
        assert!(!stdout.contains("/products/1"), "{stdout}");
    }
    // An unknown run leaves no file behind.
    let file = dir.join("none.csv");
    let out = fanfare(
        &app.address,
        &[
            "export",
            &uuid::Uuid::now_v7().to_string(),
            "-o",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!file.exists() && std::fs::read_dir(&dir).unwrap().count() == 2);
    std::fs::remove_dir_all(&dir).unwrap();
    app.stop().await;
    site.shutdown().await;
}

#[tokio::test]
async fn a_refused_connection_or_a_missing_token_exits_2_naming_what_is_wrong() {
    // A port nobody listens on: bound, read, released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        &["runs", "list"][..],
        &["runs", "watch", "x"],
        &["trigger", "s", "--wait"],
    ] {
        let out = fanfare(&url, args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("could not reach {url}/")),
            "{args:?}: {stderr}"
        );
    }

    let out = fanfare_command(&["runs", "list"])
        .env("FANFARE_URL", &url)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no admin token: set FANFARE_ADMIN_TOKEN"),
        "{}",
        text(&out)
    );

    // A usage error (clap's own) exits 2 as well.
    let out = fanfare(&url, &["runs", "list", "--limit", "many"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test]
async fn the_token_and_address_come_from_the_configuration_file() {
    let (app, _) = TestApp::spawn_recording(&lambda_schedule("s", 1, None, "")).await;
    let run_id = app.trigger("s").await;
    let port = app.address.rsplit(':').next().unwrap();
    let config = ConfigFile::write(
        &fanfare_testkit::config_toml_with(
            &app.database,
            port.parse().unwrap(),
            2,
            CALLBACK_SECRET,
            ADMIN_TOKEN,
            "",
        )
        .replace("listen = \"127.0.0.1:", "listen = \"0.0.0.0:"),
    );
    let out = fanfare_command(&["runs", "show", &run_id.to_string(), "--json", "--config"])
        .arg(config.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["id"], run_id.to_string());
    app.stop().await;
}

#[tokio::test]
async fn export_neutralises_csv_formulas_unless_cells_raw_is_asked_for() {
    let app = app_with_one_lambda_page().await;
    let title = "=HYPERLINK(\"http://evil.example\",\"Click\")";
    let run_id = crate::results::finished_run_with_titles(&app.pool, &[(title, "-1")]).await;
    let run = run_id.to_string();
    for (args, want_title, want_price) in [
        (vec!["export", &run], format!("'{title}"), "'-1"),
        (
            vec!["export", &run, "--cells", "safe"],
            format!("'{title}"),
            "'-1",
        ),
        (
            vec!["export", &run, "--cells", "raw"],
            title.to_string(),
            "-1",
        ),
    ] {
        let out = fanfare(&app.address, &args).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let mut reader = csv::Reader::from_reader(&out.stdout[..]);
        let row = reader.records().next().unwrap().unwrap();
        assert_eq!(
            (&row[3], &row[4]),
            (want_title.as_str(), want_price),
            "{args:?}"
        );
    }
    let out = fanfare(&app.address, &["export", &run, "--cells", "formulas"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    app.stop().await;
}

/// Runs `fanfare ARGS` against `url` with its standard output on a
/// pseudo-terminal in raw mode (no newline translation); returns its exit
/// code and what reached the terminal.
async fn fanfare_on_terminal(url: &str, args: &[&str]) -> (Option<i32>, Vec<u8>) {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let url = url.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two descriptors, which are owned below;
        // the termios struct is written by tcgetattr before it is read.
        let (master, slave) = unsafe {
            let opened = libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            );
            assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
            libc::fcntl(master, libc::F_SETFD, libc::FD_CLOEXEC);
            let mut raw: libc::termios = std::mem::zeroed();
            libc::tcgetattr(slave, &mut raw);
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(slave, libc::TCSANOW, &raw);
            (
                std::fs::File::from_raw_fd(master),
                OwnedFd::from_raw_fd(slave),
            )
        };
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fanfare"));
        command
            .args(&args)
            .env("FANFARE_URL", &url)
            .env("FANFARE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("FANFARE_CONFIG")
            .env_remove("FANFARE_CONFIG_TOML")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(slave));
        let mut child = command.spawn().expect("the fanfare binary runs");
        // Our copy of the terminal's end closes with the command, so that
        // reading ends (EIO) once the child has exited.
        drop(command);
        let reader = std::thread::spawn(move || {
            let mut master = master;
            let mut seen = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = master.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&chunk[..n]);
            }
            seen
        });
        let status = child.wait().unwrap();
        (status.code(), reader.join().unwrap())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn on_a_terminal_titles_and_errors_are_shown_with_control_characters_escaped() {
    let app = app_with_one_lambda_page().await;
    let title = "Kettle\x1b]0;owned\x07 \x1b[2J\u{9b}31m red\nline\tx";
    let run_id = crate::results::finished_run_with_titles(&app.pool, &[(title, "9.99")]).await;
    let run = run_id.to_string();
    let raw_controls = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .chars()
            .any(|c| c != '\n' && (c.is_control()))
    };

    for format in ["csv", "jsonl"] {
        let (code, shown) =
            fanfare_on_terminal(&app.address, &["export", &run, "--format", format]).await;
        assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&shown));
        let shown = String::from_utf8(shown).unwrap();
        assert!(!raw_controls(shown.as_bytes()), "{shown:?}");
        // JSON escapes C0 controls itself; C1 ones (CSI) only the terminal escape.
        let osc = if format == "csv" {
            "\\x1b]0;owned\\x07"
        } else {
            "\\u001b]0;owned\\u0007"
        };
        assert!(shown.contains(osc), "{shown:?}");
        assert!(shown.contains("\\u{9b}31m"), "{shown:?}");
        assert_eq!(
            shown.lines().count(),
            if format == "csv" { 2 } else { 1 },
            "{shown:?}"
        );
        // Through a pipe, the bytes are as the API sent them.
        let piped = fanfare(&app.address, &["export", &run, "--format", format]).await;
        assert_eq!(piped.status.code(), Some(0), "{}", text(&piped));
        let path = format!("/v1/runs/{run}/results?format={format}&cells=safe");
        let api = app.admin(Method::GET, &path).await.bytes().await.unwrap();
        assert_eq!(piped.stdout, api.to_vec(), "{format}");
    }

    // A run's error and a notification's last error, in runs show and runs list.
    sqlx::query("update runs set error = $2 where id = $1")
        .bind(run_id)
        .bind("listing failed: \x1b[31mboom\x1b[0m\nrun  fake  succeeded")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into notifications (run_id, event, target, kind, webhook_id, payload, attempts, last_error)
         values ($1, 'run.finished', 0, 'webhook', 'msg_test_0', '{}', 1, $2)",
    )
    .bind(run_id)
    .bind("HTTP 500: \x1b[5mblink\x1b[0m")
    .execute(&app.pool)
    .await
    .unwrap();
    let (code, shown) = fanfare_on_terminal(&app.address, &["runs", "show", &run]).await;
    assert_eq!(code, Some(0));
    let shown = String::from_utf8(shown).unwrap();
    assert!(!raw_controls(shown.as_bytes()), "{shown:?}");
    assert!(
        shown.contains("listing failed: \\x1b[31mboom\\x1b[0m\\nrun  fake  succeeded"),
        "{shown:?}"
    );
    assert!(
        shown.contains("HTTP 500: \\x1b[5mblink\\x1b[0m"),
        "{shown:?}"
    );
    let (code, shown) = fanfare_on_terminal(&app.address, &["runs", "list"]).await;
    assert_eq!(code, Some(0));
    assert!(
        !raw_controls(&shown),
        "{:?}",
        String::from_utf8_lossy(&shown)
    );
    let piped = fanfare(&app.address, &["runs", "show", &run]).await;
    assert!(
        String::from_utf8_lossy(&piped.stdout).contains("\x1b[31mboom"),
        "{}",
        text(&piped)
    );
    app.stop().await;
}

#[tokio::test]
async fn version_prints_the_release_the_daemon_reports() {
    let out = fanfare_command(&["--version"]).output().await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("fanfare {}\n", env!("CARGO_PKG_VERSION"))
    );
}
