//! A private PostgreSQL cluster for `fanfare dev`, started from the machine's own
//! PostgreSQL binaries, so trying fanfare needs no database set up by hand.
//!
//! The cluster listens on 127.0.0.1 only, on a free port, with trust authentication:
//! it is for one developer's machine, never for anything shared.

use std::ffi::OsString;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::process::Command;

/// The superuser initdb creates, and the role `url()` connects as.
const SUPERUSER: &str = "postgres";
/// The database `start` makes sure exists.
const DATABASE: &str = "fanfare";
/// The OS user the server runs as when we are root: PostgreSQL refuses to run as root.
const SERVER_OS_USER: &str = "postgres";
/// Where unix-socket paths stop fitting in `sun_path` (104 bytes on macOS, 108 on Linux).
const MAX_SOCKET_PATH: usize = 100;
/// The server log, inside the data directory (the one place the server user can always write).
const LOG_FILE: &str = "server.log";

const NOT_FOUND: &str = "PostgreSQL server binaries not found (initdb, pg_ctl): install them \
     (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@16) \
     or set DATABASE_URL";

/// A private PostgreSQL cluster started from the local PostgreSQL binaries.
///
/// The server is stopped by [`LocalPostgres::stop`], or failing that when the value is
/// dropped. A server left running by a process that was killed is found and restarted
/// by the next [`LocalPostgres::start`] on the same data directory.
#[derive(Debug)]
pub struct LocalPostgres {
    data_dir: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    run_as: RunAs,
    running: bool,
}

impl LocalPostgres {
    /// Starts a cluster in `data_dir`, initialising it first if the directory is empty
    /// or missing, and makes sure the database `fanfare` exists.
    ///
    /// Finds `initdb` and `pg_ctl` on `PATH`, then in the usual install locations
    /// (`/usr/lib/postgresql/<highest>/bin`, `/usr/local/pgsql/bin`, Homebrew...).
    /// The server listens on 127.0.0.1 on a free port, with its unix socket in
    /// `data_dir`'s parent when that path is short enough and writable. As root, the
    /// server runs as the `postgres` user, which then owns `data_dir`.
    pub async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let data_dir = std::path::absolute(data_dir)
            .with_context(|| format!("resolving data directory {}", data_dir.display()))?;
        let bin_dir = find_bin_dir().context(NOT_FOUND)?;
        let run_as = RunAs::detect().await?;
        tracing::debug!(bin_dir = %bin_dir.display(), ?run_as, "found PostgreSQL binaries");

        let mut pg = LocalPostgres {
            data_dir,
            bin_dir,
            port: 0,
            run_as,
            running: false,
        };
        pg.prepare_data_dir().await?;
        pg.clear_leftover_server().await?;
        pg.start_server().await?;
        pg.create_database().await?;
        tracing::info!(
            data_dir = %pg.data_dir.display(),
            url = %pg.url(),
            "private PostgreSQL started"
        );
        Ok(pg)
    }

    /// The URL of the `fanfare` database: `postgres://postgres@127.0.0.1:PORT/fanfare`.
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The TCP port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory (absolute).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the server (`pg_ctl stop -m fast`: open sessions are disconnected).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let args = self.stop_args();
        self.running = false;
        self.pg_ctl(args).await?;
        tracing::info!(data_dir = %self.data_dir.display(), "private PostgreSQL stopped");
        Ok(())
    }

    /// Creates `data_dir` if needed and runs initdb in it if it holds no cluster yet.
    async fn prepare_data_dir(&self) -> anyhow::Result<()> {
        let dir = &self.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
        if self.run_as.is_root() {
            let mut chown = std::process::Command::new("chown");
            chown.arg("-R").arg(format!("{SERVER_OS_USER}:")).arg(dir);
            run(
                chown.into(),
                &format!("chown -R {SERVER_OS_USER}: {}", dir.display()),
            )
            .await?;
            if !self.run_as.test_writable(dir).await {
                bail!(
                    "the {SERVER_OS_USER} user, which runs the server when fanfare runs as root, \
                     cannot write to {}: use a data directory it can reach (e.g. under /var/tmp) \
                     or set DATABASE_URL",
                    dir.display()
                );
            }
        }

        let version_file = dir.join("PG_VERSION");
        if version_file.exists() {
            return self.check_version(&version_file).await;
        }
        let is_empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading data directory {}", dir.display()))?
            .next()
            .is_none();
        if !is_empty {
            bail!(
                "{} is neither empty nor a PostgreSQL data directory: \
                 point fanfare dev at an empty or missing directory",
                dir.display()
            );
        }

        tracing::info!(data_dir = %dir.display(), "initialising a PostgreSQL cluster");
        let initdb = self.bin_dir.join("initdb");
        let args: Vec<OsString> = vec![
            "-D".into(),
            dir.into(),
            "-U".into(),
            SUPERUSER.into(),
            "--auth=trust".into(),
            "--encoding=UTF8".into(),
            // The C locale exists everywhere, and keeps sorting the same on every machine.
            "--locale=C".into(),
        ];
        run(self.run_as.command(&initdb, &args), "initdb").await?;
        Ok(())
    }

    /// A cluster made by another major version won't start: say so plainly.
    async fn check_version(&self, version_file: &Path) -> anyhow::Result<()> {
        let data_version = std::fs::read_to_string(version_file)
            .with_context(|| format!("reading {}", version_file.display()))?;
        let data_major = data_version.trim();
        let out = run(
            self.run_as
                .command(&self.bin_dir.join("pg_ctl"), &["--version".into()]),
            "pg_ctl --version",
        )
        .await?;
        // "pg_ctl (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"
        let stdout = String::from_utf8_lossy(&out.stdout);
        let bin_major = stdout
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .unwrap_or_default();
        if !bin_major.is_empty() && bin_major != data_major {
            bail!(
                "{} holds a PostgreSQL {data_major} cluster but the binaries in {} are \
                 PostgreSQL {bin_major}: install PostgreSQL {data_major}, or delete the \
                 directory to start afresh (its data is lost)",
                self.data_dir.display(),
                self.bin_dir.display()
            );
        }
        Ok(())
    }

    /// Deals with a `postmaster.pid` left by an earlier run: a server of ours still
    /// running (its owner was killed) is stopped, so it can be started with our
    /// options; a pid file whose process is gone, or is now some other program, is
    /// removed, since the server would refuse to start past a live pid.
    async fn clear_leftover_server(&self) -> anyhow::Result<()> {
        let pid_file = self.data_dir.join("postmaster.pid");
        if !pid_file.exists() {
            return Ok(());
        }
        let status = self
            .run_as
            .command(
                &self.bin_dir.join("pg_ctl"),
                &["status".into(), "-D".into(), self.data_dir.clone().into()],
            )
            .output()
            .await
            .context("running pg_ctl status")?;
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        match (status.status.code(), pid) {
            // pg_ctl status: 0 = the pid in postmaster.pid is alive.
            (Some(0), Some(pid)) if process_is_live_postgres(pid).await => {
                tracing::warn!(
                    pid,
                    data_dir = %self.data_dir.display(),
                    "a PostgreSQL server from an earlier run is still running; restarting it"
                );
                if let Err(err) = self.pg_ctl(self.stop_args()).await {
                    // It may have died meanwhile, leaving its pid file behind.
                    if process_is_live_postgres(pid).await {
                        return Err(err.context("stopping the server left by an earlier run"));
                    }
                    remove_if_exists(&pid_file)?;
                }
            }
            (code, pid) => {
                tracing::warn!(
                    ?pid,
                    pg_ctl_status = ?code,
                    "removing a stale postmaster.pid left by an unclean stop"
                );
                remove_if_exists(&pid_file)?;
            }
        }
        Ok(())
    }

    /// `pg_ctl start` on a free port; another process may grab the port between our
    /// probe and the server's bind, so a bind failure is retried on a new port.
    async fn start_server(&mut self) -> anyhow::Result<()> {
        const ATTEMPTS: usize = 3;
        let socket_dir = self.socket_dir().await;
        let log = self.data_dir.join(LOG_FILE);
        for attempt in 1..=ATTEMPTS {
            let port = free_port()?;
            let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            let mut options = format!("-p {port} -c listen_addresses=127.0.0.1 -k ");
            match &socket_dir {
                Some(dir) => options.push_str(&shell_quote(&dir.to_string_lossy())),
                // No unix socket at all: clients use TCP.
                None => options.push_str("''"),
            }
            let args: Vec<OsString> = vec![
                "start".into(),
                "-D".into(),
                self.data_dir.clone().into(),
                "-l".into(),
                log.clone().into(),
                "-w".into(),
                "-t".into(),
                "60".into(),
                "-o".into(),
                options.into(),
            ];
            match self.pg_ctl(args).await {
                Ok(_) => {
                    self.port = port;
                    self.running = true;
                    return self.wait_until_accepting().await;
                }
                Err(err) => {
                    let log_tail = read_from(&log, log_start);
                    let port_taken = log_tail.contains("could not bind")
                        || log_tail.contains("Address already in use");
                    if port_taken && attempt < ATTEMPTS {
                        tracing::warn!(port, "port taken before the server bound it; retrying");
                        continue;
                    }
                    return Err(err.context(format!(
                        "starting PostgreSQL in {}; server log ({}):\n{}",
                        self.data_dir.display(),
                        log.display(),
                        last_lines(&log_tail, 20)
                    )));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// `pg_ctl -w` has waited for the server to be ready; this checks that a client can
    /// really get in over TCP, which is how everything else will connect.
    async fn wait_until_accepting(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.connect("postgres").await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    return Ok(());
                }
                Err(err) if tokio::time::Instant::now() >= deadline => {
                    return Err(err).with_context(|| {
                        format!(
                            "PostgreSQL started but accepts no connection on 127.0.0.1:{}",
                            self.port
                        )
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn create_database(&self) -> anyhow::Result<()> {
        let mut conn = self
            .connect("postgres")
            .await
            .context("connecting to create the database")?;
        let exists: bool =
            sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
                .bind(DATABASE)
                .fetch_one(&mut conn)
                .await
                .context("looking for the fanfare database")?;
        if !exists {
            match sqlx::query(&format!("create database {DATABASE}"))
                .execute(&mut conn)
                .await
            {
                Ok(_) => tracing::info!(database = DATABASE, "created database"),
                // Someone else created it in between: just as good.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(e).context("create database fanfare"),
            }
        }
        let _ = conn.close().await;
        Ok(())
    }

    async fn connect(&self, database: &str) -> Result<PgConnection, sqlx::Error> {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(SUPERUSER)
            .database(database)
            .ssl_mode(PgSslMode::Disable)
            .disable_statement_logging()
            .connect()
            .await
    }

    /// `data_dir`'s parent, when the server can make its socket there: its user can
    /// write to it and the socket's path fits the OS limit. Otherwise none (TCP only).
    async fn socket_dir(&self) -> Option<PathBuf> {
        let parent = self.data_dir.parent()?.to_path_buf();
        // The server names its socket `.s.PGSQL.<port>`.
        let socket_len = parent.as_os_str().len() + "/.s.PGSQL.65535".len();
        if socket_len > MAX_SOCKET_PATH {
            tracing::debug!(dir = %parent.display(), "path too long for a unix socket; TCP only");
            return None;
        }
        if !self.run_as.test_writable(&parent).await {
            tracing::debug!(dir = %parent.display(), "server cannot write its socket there; TCP only");
            return None;
        }
        Some(parent)
    }

    fn stop_args(&self) -> Vec<OsString> {
        vec![
            "stop".into(),
            "-D".into(),
            self.data_dir.clone().into(),
            "-m".into(),
            "fast".into(),
            "-w".into(),
        ]
    }

    async fn pg_ctl(&self, args: Vec<OsString>) -> anyhow::Result<Output> {
        let what = format!("pg_ctl {}", args[0].to_string_lossy());
        run(
            self.run_as.command(&self.bin_dir.join("pg_ctl"), &args),
            &what,
        )
        .await
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        // Blocking is fine here: this is the last thing a `fanfare dev` does.
        let args = self.stop_args();
        let mut cmd = self.run_as.std_command(&self.bin_dir.join("pg_ctl"), &args);
        match cmd.stdin(Stdio::null()).output() {
            Ok(out) if out.status.success() => {
                tracing::info!(data_dir = %self.data_dir.display(), "private PostgreSQL stopped");
            }
            Ok(out) => tracing::warn!(
                stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                "pg_ctl stop failed"
            ),
            Err(err) => tracing::warn!(error = %err, "could not run pg_ctl stop"),
        }
    }
}

/// Who runs the PostgreSQL commands.
#[derive(Clone, Debug)]
enum RunAs {
    /// Ourselves.
    Me,
    /// We are root: the `postgres` user, through runuser(1) at this path.
    Runuser(PathBuf),
    /// We are root and have no runuser: the `postgres` user, through su(1).
    Su,
}

impl RunAs {
    async fn detect() -> anyhow::Result<Self> {
        let mut id = Command::new("id");
        id.arg("-u");
        let out = run(id, "id -u").await?;
        if String::from_utf8_lossy(&out.stdout).trim() != "0" {
            return Ok(RunAs::Me);
        }
        let user_exists = Command::new("id")
            .arg("-u")
            .arg(SERVER_OS_USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if !user_exists {
            bail!(
                "running as root, and PostgreSQL refuses to run as root, but there is no \
                 `{SERVER_OS_USER}` user to run it as: create one (Debian/Ubuntu: installing the \
                 postgresql package does), run fanfare dev as a normal user, or set DATABASE_URL"
            );
        }
        let runuser = which("runuser").or_else(|| {
            ["/usr/sbin/runuser", "/sbin/runuser"]
                .iter()
                .map(PathBuf::from)
                .find(|p| is_executable(p))
        });
        Ok(runuser.map_or(RunAs::Su, RunAs::Runuser))
    }

    fn is_root(&self) -> bool {
        !matches!(self, RunAs::Me)
    }

    fn std_command(&self, program: &Path, args: &[OsString]) -> std::process::Command {
        let mut cmd;
        match self {
            RunAs::Me => {
                cmd = std::process::Command::new(program);
                cmd.args(args);
            }
            RunAs::Runuser(runuser) => {
                cmd = std::process::Command::new(runuser);
                cmd.args(["-u", SERVER_OS_USER, "--"])
                    .arg(program)
                    .args(args);
                // Our working directory may be closed to the postgres user (say /root).
                cmd.current_dir("/");
            }
            RunAs::Su => {
                let script = std::iter::once(program.as_os_str())
                    .chain(args.iter().map(OsString::as_os_str))
                    .map(|a| shell_quote(&a.to_string_lossy()))
                    .collect::<Vec<_>>()
                    .join(" ");
                cmd = std::process::Command::new("su");
                cmd.args([SERVER_OS_USER, "-s", "/bin/sh", "-c"])
                    .arg(script);
                cmd.current_dir("/");
            }
        }
        cmd
    }

    fn command(&self, program: &Path, args: &[OsString]) -> Command {
        self.std_command(program, args).into()
    }

    /// Can the user who runs the server write to `dir`?
    async fn test_writable(&self, dir: &Path) -> bool {
        let test = which("test").unwrap_or_else(|| PathBuf::from("/usr/bin/test"));
        self.command(&test, &["-w".into(), dir.into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success())
    }
}

/// Runs `cmd` to completion; a failure names `what` and carries its stderr.
async fn run(mut cmd: Command, what: &str) -> anyhow::Result<Output> {
    tracing::debug!(command = what, "running");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("could not run `{what}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        // pg_ctl and initdb put some of their reasons on stdout.
        let said = [stderr.trim(), stdout.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        bail!("`{what}` failed ({}): {said}", out.status);
    }
    Ok(out)
}

/// The directory holding both `initdb` and `pg_ctl`: `PATH` first, then the places
/// packages put them, newest version first.
fn find_bin_dir() -> Option<PathBuf> {
    let has_both =
        |dir: &Path| is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"));
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut candidates = on_path;
    // Debian/Ubuntu: /usr/lib/postgresql/15/bin; RHEL: /usr/pgsql-15/bin.
    candidates.extend(versioned_dirs(Path::new("/usr/lib/postgresql"), "", "bin"));
    candidates.extend(versioned_dirs(Path::new("/usr"), "pgsql-", "bin"));
    candidates.push("/usr/local/pgsql/bin".into());
    // Homebrew's versioned formulae are keg-only: postgresql@16 lives in opt/.
    for prefix in ["/opt/homebrew/opt", "/usr/local/opt"] {
        candidates.extend(versioned_dirs(Path::new(prefix), "postgresql@", "bin"));
    }
    candidates.extend(
        [
            "/opt/homebrew/bin",
            "/usr/local/bin",
            "/Applications/Postgres.app/Contents/Versions/latest/bin",
        ]
        .map(PathBuf::from),
    );
    candidates.into_iter().find(|d| has_both(d))
}

/// `parent/<prefix><version>/<sub>` for every version found, highest version first.
fn versioned_dirs(parent: &Path, prefix: &str, sub: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name.strip_prefix(prefix)?;
            let key = version
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((key, entry.path().join(sub)))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, dir)| dir).collect()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Is `pid` a running PostgreSQL server, rather than another program that reused its
/// pid, or a killed server not yet reaped (a zombie, as a container's init may leave)?
async fn process_is_live_postgres(pid: u32) -> bool {
    // Linux: "PID (COMM) STATE ...", where COMM may itself hold spaces or parentheses.
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            return false;
        };
        let name = &stat[open + 1..close];
        let state = stat[close + 1..].trim_start().chars().next();
        return is_postgres_name(name) && !matches!(state, Some('Z' | 'X'));
    }
    if Path::new("/proc/self/stat").exists() {
        // Linux, and no such process.
        return false;
    }
    // No /proc (macOS): ask ps.
    match Command::new("ps")
        .args(["-o", "stat=,comm=", "-p", &pid.to_string()])
        .stdin(Stdio::null())
        .output()
        .await
    {
        Ok(out) if out.status.success() => {
            let line = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut fields = line.split_whitespace();
            let state = fields.next().unwrap_or_default();
            let name = fields.collect::<Vec<_>>().join(" ");
            is_postgres_name(&name) && !state.starts_with('Z')
        }
        _ => false,
    }
}

fn is_postgres_name(name: &str) -> bool {
    name.contains("postgres") || name.contains("postmaster")
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing stale {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// A loopback port nobody is listening on right now.
fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// Quotes `s` for /bin/sh: pg_ctl hands `-o` to a shell, and su takes a script.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The text of `path` from byte `offset` on (what the server logged since then).
fn read_from(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_postgres_starts_serves_the_fanfare_database_and_stops() {
        let parent = std::env::temp_dir().join(format!("fanfare-pg-test-{}", std::process::id()));
        std::fs::create_dir_all(&parent).unwrap();
        let data_dir = parent.join("pgdata");

        let pg = LocalPostgres::start(&data_dir).await.expect("start");
        let mut conn = PgConnection::connect(&pg.url()).await.expect("connect");
        let db: String = sqlx::query_scalar("select current_database()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(db, "fanfare");
        conn.close().await.unwrap();
        let port = pg.port();
        pg.stop().await.expect("stop");
        assert!(std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());

        // A second start on the same directory reuses the cluster.
        let pg = LocalPostgres::start(&data_dir).await.expect("restart");
        drop(pg);
        let _ = std::fs::remove_dir_all(&parent);
    }

    #[test]
    fn shell_quote_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
