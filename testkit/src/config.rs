//! The secrets and configuration TOML of every test.

use std::path::{Path, PathBuf};

/// The secret every test configuration signs task tokens with.
pub const CALLBACK_SECRET: &str = "test-callback-secret-0123456789abcdef";
/// The admin token of every test configuration.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdefghijklm";
/// The webhook secret (`whsec_` + base64 of 24 bytes).
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Configuration TOML of a test on `database_url`: port 0, 20 connections,
/// the kit's secrets; `rest` (further sections, schedules) is appended
/// verbatim.
pub fn config_toml(database_url: &str, rest: &str) -> String {
    config_toml_with(database_url, 0, 20, CALLBACK_SECRET, ADMIN_TOKEN, rest)
}

/// Configuration TOML: `listen_port` 0 binds a free port; `rest` (further
/// sections, schedules) is appended verbatim.
pub fn config_toml_with(
    database_url: &str,
    listen_port: u16,
    max_connections: u32,
    callback_secret: &str,
    admin_token: &str,
    rest: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{listen_port}"
public_url = "http://127.0.0.1:{listen_port}"
shutdown_grace = "5s"

[database]
url = "{database_url}"
max_connections = {max_connections}

[security]
callback_secret = "{callback_secret}"
admin_token = "{admin_token}"
# The crawl targets, sitemaps and lists of the tests are loopback servers.
allow_private_networks = true

[notify]
timeout = "2s"

# Most tests crawl stand-ins (a Lambda stand-in, 127.0.0.1:9) that have no
# robots.txt and must not be paced; tests/it/politeness.rs turns these on.
[politeness]
obey_robots = false
per_host_in_flight = 1000000

{rest}
"#
    )
}

/// The environment variable `name` parsed as a `T` (a trial count, a
/// seed); `None` when it is unset or does not parse.
pub fn env_parsed<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A configuration file in a directory of its own, removed when dropped
/// (after a panic too): for the commands that read `--config`.
pub struct ConfigFile {
    dir: PathBuf,
    path: PathBuf,
}

impl ConfigFile {
    /// Writes `toml` to `fanfare.toml` in a fresh temporary directory.
    pub fn write(toml: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fanfare-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        let path = dir.join("fanfare.toml");
        std::fs::write(&path, toml).expect("write the configuration file");
        Self { dir, path }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory the file is in, for other files of the test; removed
    /// with it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// A `[[schedules.notify]]` block for a webhook to `url`, signed with
/// [`WEBHOOK_SECRET`].
pub fn webhook_block(url: &str) -> String {
    format!(
        "[[schedules.notify]]\nwebhook = {{ url = \"{url}\", secret = \"{WEBHOOK_SECRET}\" }}\n"
    )
}

/// A schedule block using a Lambda stand-in, with URLs
/// `http://127.0.0.1:9/p/1..=pages`; `extra` and then `notify` are appended.
pub fn lambda_schedule_block(name: &str, pages: usize, extra: &str, notify: &str) -> String {
    schedule(name)
        .lambda("crawler-fn")
        .urls((1..=pages).map(|i| format!("http://127.0.0.1:9/p/{i}")))
        .extract(r#"{ price = ".price" }"#)
        .key("max_in_flight", 10000)
        .raw(extra)
        .notify_block(notify)
        .to_string()
}

/// A `[[schedules]]` block named `name`: crawled in-process, no pages and
/// no cron until the builder's methods say otherwise. Displays as TOML.
///
/// ```ignore
/// let toml = schedule("shop").sitemap(&site.sitemap_url()).extract(r#"{ price = ".price" }"#)
///     .key("max_in_flight", 64).webhook(&receiver.url).to_string();
/// ```
pub fn schedule(name: &str) -> ScheduleToml {
    ScheduleToml {
        name: name.to_string(),
        invoker: "invoker = \"local\"".to_string(),
        pages: "{ urls = [] }".to_string(),
        keys: Vec::new(),
        tail: Vec::new(),
    }
}

/// A schedule being built by [`schedule`].
#[derive(Debug, Clone)]
pub struct ScheduleToml {
    name: String,
    invoker: String,
    pages: String,
    keys: Vec<String>,
    tail: Vec<String>,
}

impl ScheduleToml {
    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Crawled by the Lambda function `function` (the tests' stand-in).
    pub fn lambda(mut self, function: &str) -> Self {
        self.invoker = format!("invoker = \"lambda\"\nfunction = \"{function}\"");
        self
    }

    /// Fires on `cron` (croner syntax, seconds first when six fields).
    pub fn cron(self, cron: &str) -> Self {
        self.text("cron", cron)
    }

    /// Fires every second, `overlap = "allow"`.
    pub fn every_second(self) -> Self {
        self.cron("* * * * * *").text("overlap", "allow")
    }

    /// A static list of pages.
    pub fn urls<I>(mut self, urls: I) -> Self
    where
        I: IntoIterator,
        I::Item: std::fmt::Display,
    {
        let urls: Vec<String> = urls.into_iter().map(|u| format!("\"{u}\"")).collect();
        self.pages = format!("{{ urls = [{}] }}", urls.join(", "));
        self
    }

    /// Pages from the sitemap at `url`.
    pub fn sitemap(mut self, url: &str) -> Self {
        self.pages = format!("{{ sitemap = \"{url}\" }}");
        self
    }

    /// Pages from the `pages` inline table as written, e.g.
    /// `{ json = "http://…" }`.
    pub fn pages(mut self, table: &str) -> Self {
        self.pages = table.to_string();
        self
    }

    /// The `extract` inline table as written.
    pub fn extract(self, table: &str) -> Self {
        self.key("extract", table)
    }

    /// `key = value` with `value` written as TOML as it is (numbers, tables,
    /// booleans, arrays).
    pub fn key(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        self.keys.push(format!("{key} = {value}"));
        self
    }

    /// `key = "value"`.
    pub fn text(self, key: &str, value: &str) -> Self {
        self.key(key, format!("\"{value}\""))
    }

    /// A webhook target to `url`, signed with [`WEBHOOK_SECRET`].
    pub fn webhook(mut self, url: &str) -> Self {
        self.tail.push(webhook_block(url));
        self
    }

    /// A Slack target to `url`.
    pub fn slack(mut self, url: &str) -> Self {
        self.tail.push(format!(
            "[[schedules.notify]]\nslack = {{ url = \"{url}\" }}\n"
        ));
        self
    }

    /// Keys written as they are, after the others (several lines allowed).
    pub fn raw(mut self, keys: &str) -> Self {
        if !keys.trim().is_empty() {
            self.keys.push(keys.trim_end().to_string());
        }
        self
    }

    /// A `[[schedules.notify]]` block (or several) written as it is, after
    /// every key.
    pub fn notify_block(mut self, toml: &str) -> Self {
        if !toml.trim().is_empty() {
            self.tail.push(toml.to_string());
        }
        self
    }
}

impl std::fmt::Display for ScheduleToml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "\n[[schedules]]\nname = \"{}\"", self.name)?;
        writeln!(f, "{}\npages = {}", self.invoker, self.pages)?;
        for key in &self.keys {
            writeln!(f, "{key}")?;
        }
        for block in &self.tail {
            writeln!(f, "{block}")?;
        }
        Ok(())
    }
}

/// A schedule that crawls from `start`, following links, with the
/// in-process crawler: `pages_keys` go into its `pages` table after
/// `crawl` (`max_depth = 2, exclude = ["*/cart*"]`); `extra` and then
/// `notify` are appended.
pub fn crawl_schedule_block(
    name: &str,
    start: &str,
    pages_keys: &str,
    extra: &str,
    notify: &str,
) -> String {
    let keys = if pages_keys.is_empty() {
        String::new()
    } else {
        format!(", {pages_keys}")
    };
    schedule(name)
        .pages(&format!("{{ crawl = \"{start}\"{keys} }}"))
        .extract(r#"{ price = ".price" }"#)
        .raw(extra)
        .notify_block(notify)
        .to_string()
}
