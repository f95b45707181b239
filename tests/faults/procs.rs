//! `fanfare serve` as a subprocess that cannot outlive its test: killed
//! (SIGKILL) on drop, panic included.

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::helpers::{config_toml_on, get, test_pool, trigger, wait_ready};

/// A free loopback port: bound, read, released.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// A directory for one test's configurations and daemon logs; removed on
/// drop unless the test is failing (the logs are then kept, and named).
pub struct Workdir(PathBuf);

impl Workdir {
    /// Creates `$TMPDIR/fanfare-faults-<name>-<uuid>`.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "fanfare-faults-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create the work directory");
        Self(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("daemon logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A `fanfare serve` subprocess on a port of its own.
pub struct Daemon {
    name: String,
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    log: PathBuf,
}

impl Daemon {
    /// Writes a configuration for `database_url` on a free port (with
    /// `schedules` appended) into `dir` and starts `fanfare serve` on it;
    /// its output goes to `dir/<name>.log`.
    pub fn spawn(
        name: &str,
        dir: &Path,
        database_url: &str,
        max_connections: u32,
        schedules: &str,
    ) -> Self {
        let port = free_port();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            config_toml_on(database_url, port, max_connections, schedules),
        )
        .expect("write the daemon's configuration");
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("create the daemon's log");
        let err = out.try_clone().expect("clone the log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_fanfare"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,sqlx=warn,tower_http=warn")
            .env("FANFARE_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start fanfare serve: {e}"));
        Self {
            name: name.to_string(),
            child: Some(child),
            address: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Waits until `/readyz` answers 200; panics with the log when the
    /// daemon exits or is not ready within `within`.
    pub async fn wait_ready(&mut self, within: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            assert!(
                self.is_running(),
                "{} exited before it was ready; its log:\n{}",
                self.name,
                self.log_tail(40)
            );
            if wait_ready(&client, &self.address, Duration::from_millis(200)).await {
                return;
            }
        }
        panic!(
            "{} was not ready within {within:?}; its log:\n{}",
            self.name,
            self.log_tail(40)
        );
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the process with SIGKILL and reaps it; panics unless it was
    /// running and died of that signal (the fault was delivered).
    pub fn sigkill(&mut self) -> ExitStatus {
        assert!(
            self.is_running(),
            "{} is not running, so it cannot be killed; its log:\n{}",
            self.name,
            self.log_tail(40)
        );
        let mut child = self.child.take().expect("running");
        child.kill().expect("send SIGKILL");
        let status = child.wait().expect("reap the killed daemon");
        assert_eq!(
            status.signal(),
            Some(9),
            "{} died of SIGKILL ({status})",
            self.name
        );
        status
    }

    /// Sends SIGTERM and waits for a graceful exit (SIGKILL after
    /// `within`); returns whether it exited cleanly in time.
    pub async fn sigterm(&mut self, within: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + within;
        while sent && Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The last `n` lines of its output.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A run recorded by two replicas, one of them killed mid-run and
/// replaced ([`run_with_a_replica_killed`]).
pub struct KilledMidRun {
    /// The run.
    pub run: Uuid,
    /// What the kill condition counted when the replica was killed.
    pub count_at_kill: i64,
    /// The finished run, as `GET /v1/runs/{id}` shows it.
    pub finished: serde_json::Value,
    /// The replicas still running (the one that raced the killed one, and
    /// its replacement), until this is dropped.
    _replicas: (Daemon, Daemon),
}

/// Starts replicas `a` and `b` of `schedules` on `db`, triggers
/// `schedule` on `a`, kills `a` with SIGKILL once `count_sql` (a count
/// bound to the run id) reaches `kill_at`, starts `c` in its place, and
/// waits for the run to finish (as `b` shows it), `within` for each wait.
pub async fn run_with_a_replica_killed(
    dir: &Path,
    db: &str,
    schedules: &str,
    schedule: &str,
    count_sql: &str,
    kill_at: i64,
    within: Duration,
) -> KilledMidRun {
    let mut a = Daemon::spawn("a", dir, db, 6, schedules);
    let mut b = Daemon::spawn("b", dir, db, 6, schedules);
    a.wait_ready(Duration::from_secs(30)).await;
    b.wait_ready(Duration::from_secs(30)).await;
    let client = reqwest::Client::new();
    let pool = test_pool(db).await;
    let run = trigger(&client, &a.address, schedule).await;

    let deadline = Instant::now() + within;
    let count_at_kill = loop {
        let count: i64 = sqlx::query_scalar(count_sql)
            .bind(run)
            .fetch_one(&pool)
            .await
            .expect("count for the kill");
        if count >= kill_at {
            break count;
        }
        assert!(
            Instant::now() < deadline,
            "the run made no progress ({count} of {kill_at}: {count_sql}); a's log:\n{}",
            a.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    a.sigkill();
    let mut c = Daemon::spawn("c", dir, db, 6, schedules);
    c.wait_ready(Duration::from_secs(30)).await;

    let deadline = Instant::now() + within;
    let finished = loop {
        let (_, shown) = get(&client, &b.address, &format!("/v1/runs/{run}")).await;
        if shown["status"] == "finished" {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish: {shown:#}\n{}",
            c.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    KilledMidRun {
        run,
        count_at_kill,
        finished,
        _replicas: (b, c),
    }
}
