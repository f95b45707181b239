//! Child processes that cannot outlive their test.
//!
//! Every process a test starts carries an environment variable with a tag
//! unique to it, inherited by everything it spawns in turn. A process group
//! is not enough: cargo-lambda starts each function instance in a session
//! of its own, so a group kill of the emulator leaves the crawlers running.
//! The tag finds them wherever they were reparented. On drop the child gets
//! SIGTERM (cargo-lambda then stops its instances), then every process still
//! carrying the tag gets SIGKILL. A watchdog (`sh`, reading a pipe only this
//! process holds) does the same sweep when the test process dies without
//! unwinding, e.g. killed by nextest's timeout.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The environment variable holding a spawned process tree's tag.
pub const TAG_VAR: &str = "FANFARE_AWS_TEST_TAG";

/// Lines of output kept for failure messages.
const KEEP_LINES: usize = 400;

/// Finds `name` on PATH, then in the venv `scripts/test` builds; panics
/// with what to install when it is in neither.
pub fn tool(name: &str, install: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let cache = std::env::var_os("FANFARE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/fanfare-cache"));
    let venv = cache.join("venv").join("bin");
    on_path
        .iter()
        .chain(std::iter::once(&venv))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is needed by this test but is neither on PATH nor in {}: run the tests \
                 through scripts/test, which installs it there, or install it yourself ({install})",
                venv.display()
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A running child process tree, killed on drop.
pub struct Spawned {
    name: String,
    child: Child,
    tag: String,
    output: Arc<Mutex<VecDeque<String>>>,
    watchdog: Option<Child>,
}

impl Spawned {
    /// Spawns `command` (its stdout and stderr captured) with a fresh tag.
    pub fn spawn(name: &str, mut command: Command) -> Self {
        let tag = format!("{name}-{}", uuid::Uuid::new_v4().simple());
        command
            .env(TAG_VAR, &tag)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {name} ({command:?}): {e}"));
        let output = Arc::new(Mutex::new(VecDeque::new()));
        drain(child.stdout.take().expect("piped"), output.clone());
        drain(child.stderr.take().expect("piped"), output.clone());
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("fanfare-aws-test-watchdog")
            .arg(format!("{TAG_VAR}={tag}"))
            .env_remove(TAG_VAR)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        Self {
            name: name.to_string(),
            child,
            tag,
            output,
            watchdog,
        }
    }

    /// The tag its processes carry.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The output captured so far (the last lines of stdout and stderr).
    pub fn output(&self) -> String {
        let lines = self.output.lock().unwrap();
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Panics with the output when the child has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); its output:\n{}",
                self.name,
                self.output()
            );
        }
    }

    /// Polls the output until `find` returns something, for at most `within`.
    pub async fn wait_for_output<T>(
        &mut self,
        within: Duration,
        what: &str,
        find: impl Fn(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            let found = {
                let lines = self.output.lock().unwrap();
                lines.iter().find_map(|l| find(l))
            };
            if let Some(found) = found {
                return found;
            }
            self.assert_running();
            if Instant::now() > deadline {
                panic!(
                    "{} did not print {what} within {within:?}; its output:\n{}",
                    self.name,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Politely first: cargo-lambda stops its function instances on SIGTERM.
        signal("TERM", &[self.child.id()]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Then whatever still carries the tag, wherever it was reparented.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = tagged_pids(&self.tag);
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            signal("KILL", &left);
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
        }
    }
}

/// The watchdog: waits for EOF on stdin (this process gone, or the guard
/// dropped), then kills every process whose environment holds `$1`.
const WATCHDOG: &str = r#"cat >/dev/null
for d in /proc/[0-9]*; do
  if tr '\0' '\n' < "$d/environ" 2>/dev/null | grep -qxF "$1"; then kill -KILL "${d#/proc/}" 2>/dev/null; fi
done"#;

fn drain(stream: impl Read + Send + 'static, into: Arc<Mutex<VecDeque<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut lines = into.lock().unwrap();
            if lines.len() == KEEP_LINES {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    });
}

fn signal(name: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Live processes (not zombies) whose environment carries `tag`, with
/// their command names.
pub fn tagged_processes(tag: &str) -> Vec<(u32, String)> {
    let needle = format!("{TAG_VAR}={tag}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
                .unwrap_or(false)
        })
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_string())
        })
        .collect()
}

fn tagged_pids(tag: &str) -> Vec<u32> {
    tagged_processes(tag)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

/// A free loopback port (for tools that cannot be told to take port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}
