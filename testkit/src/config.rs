//! The secrets and configuration TOML of every test.

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
    let urls: Vec<String> = (1..=pages)
        .map(|i| format!("\"http://127.0.0.1:9/p/{i}\""))
        .collect();
    format!(
        r#"
[[schedules]]
name = "{name}"
invoker = "lambda"
function = "crawler-fn"
pages = {{ urls = [{}] }}
extract = {{ price = ".price" }}
max_in_flight = 10000
{extra}
{notify}
"#,
        urls.join(", ")
    )
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
    format!(
        r#"
[[schedules]]
name = "{name}"
invoker = "local"
pages = {{ crawl = "{start}"{keys} }}
extract = {{ price = ".price" }}
{extra}
{notify}
"#
    )
}
