//! End to end through cargo-lambda's emulator (`cargo lambda watch`)
//! running the real `fanfare-crawler` binary.
//!
//! What the emulator does, as observed with cargo-lambda 1.9.2:
//! - it routes an Invoke by function name to the binary of that name: the
//!   function must be called `fanfare-crawler`;
//! - it starts the function with `cargo run --manifest-path <manifest> --bin
//!   <name>`, on the first invoke, one instance per `--concurrency` slot.
//!   From the workspace root that fails ("no bin target named
//!   fanfare-crawler in default-run packages"), so the emulator is given
//!   `--manifest-path crawler/Cargo.toml`; `cargo run` then compiles the
//!   crawler when it is not built yet (`scripts/test` builds it first, with
//!   the same package selection, so the run only checks freshness);
//! - it answers an `Event` invoke synchronously, when the function returns:
//!   200 with the function's result, or 500 with its error, never 202. The
//!   page is terminal by then (the crawler reports before it returns), but
//!   fanfare counts each such invoke as `retryable_error` (it wants 202);
//!   so this test checks the pages and the run, not the invoke metrics;
//! - it puts every function instance in a session of its own (see
//!   `procs.rs` for how they are found and killed).
//!
//! The browser crawler is the same binary with `FANFARE_CHROMIUM` set, as
//! its image sets it (`Dockerfile.browser`): the second test runs it under
//! the emulator with Debian's Chromium.
//!
//! Timeouts: the first invoke waits up to `FIRST_INVOKE_TIMEOUT`, which
//! covers a cold compile of the crawler (about a minute on 2 cores). With
//! the crawler prebuilt it answers in 1.5-2 s (10 s and more while other
//! cargo commands hold the target directory's locks); the run of 20 pages
//! then takes well under a second, bounded by `RUN_TIMEOUT`. Both together
//! stay under nextest's 5-minute limit.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use fanfare::demo::{self, DemoSite};
use fanfare_testkit::appshop::{script_price, AppShop, EXTRACT};
use serde_json::json;
use sha2::Digest;

use crate::helpers::*;
use crate::procs::{free_port, tagged_processes, tool, Spawned};

/// The crawler's binary name, which is the emulator's function name.
const FUNCTION: &str = "fanfare-crawler";
/// The first invoke, which may compile the crawler.
const FIRST_INVOKE_TIMEOUT: Duration = Duration::from_secs(210);
/// The emulator's HTTP port accepting connections.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// A run of the demo pages, once the crawler is warm.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// `cargo lambda watch` serving the crawler, on a free loopback port.
pub struct Emulator {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    process: Spawned,
}

impl Emulator {
    /// Starts the emulator, its functions given the variables `env` on top
    /// of the emulator's own, and waits until it accepts connections.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let binary = tool("cargo-lambda", "pip install cargo-lambda==1.9.2");
        let port = free_port();
        let mut command = Command::new(binary);
        // What `cargo lambda watch ...` runs.
        command
            .args(["lambda", "watch", "--ignore-changes", "--concurrency", "4"])
            .args(["-A", "127.0.0.1", "-P", &port.to_string()])
            .args(["--manifest-path", "crawler/Cargo.toml"])
            // The crawl targets are loopback servers: open the crawler's
            // private-network guard, which is closed on Lambda by default.
            .args(["--env-var", "FANFARE_CRAWLER_ALLOW_PRIVATE_NETWORKS=true"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        for (name, value) in env {
            command.args(["--env-var", &format!("{name}={value}")]);
        }
        // Cargo sets these for this test process; inherited by the emulator's
        // `cargo run`, they change the fingerprints of build scripts that
        // watch them (ring's watches CARGO_PKG_NAME, CARGO_MANIFEST_DIR,
        // OUT_DIR...), and the crawler would be rebuilt from ring up on every
        // first invoke instead of reusing the build scripts/test made.
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if is_set_by_cargo_for_tests(name) {
                command.env_remove(name);
            }
        }
        let mut process = Spawned::spawn("cargo-lambda", command);
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            process.assert_running();
            assert!(
                Instant::now() < deadline,
                "cargo lambda watch did not listen on port {port} within {LISTEN_TIMEOUT:?}; its output:\n{}",
                process.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            url: format!("http://127.0.0.1:{port}"),
            process,
        }
    }

    /// Invokes the crawler once with an event of an unknown contract
    /// version, which it refuses; waits for the answer (and so for the
    /// instance to be built and started) and returns how long it took.
    pub async fn first_invoke(&mut self) -> Duration {
        let started = Instant::now();
        let event = json!({
            "version": 2,
            "run_id": "warm-up",
            "page_id": "0",
            "attempt": 1,
            "url": "http://127.0.0.1:9/",
            "callback_url": "http://127.0.0.1:9/v1/callbacks",
            "callback_token": "none",
            "deadline": "2030-01-01T00:00:00Z"
        });
        let invoke = reqwest::Client::new()
            .post(format!(
                "{}/2015-03-31/functions/{FUNCTION}/invocations",
                self.url
            ))
            .json(&event)
            .timeout(FIRST_INVOKE_TIMEOUT)
            .send();
        tokio::pin!(invoke);
        // A crawler that fails to build or start leaves the invoke hanging
        // for good: watch the emulator's output meanwhile.
        let resp = loop {
            tokio::select! {
                resp = &mut invoke => break resp,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    self.process.assert_running();
                    let output = self.process.output();
                    assert!(
                        !output.contains("ERROR command exited"),
                        "the crawler did not start under the emulator; its output:\n{output}"
                    );
                }
            }
        };
        let resp = resp.unwrap_or_else(|e| {
            panic!(
                "the first invoke did not answer within {FIRST_INVOKE_TIMEOUT:?} ({e}); the emulator's output:\n{}",
                self.process.output()
            )
        });
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert!(
            body.contains("unsupported contract version 2"),
            "the crawler refuses an event of another contract version: {status} {body}"
        );
        started.elapsed()
    }

    /// The tag its processes (the emulator and the crawler instances) carry.
    pub fn tag(&self) -> String {
        self.process.tag().to_string()
    }

    /// The emulator's output so far.
    pub fn output(&self) -> String {
        self.process.output()
    }
}

#[tokio::test]
async fn the_real_crawler_under_cargo_lambdas_emulator_crawls_twenty_demo_pages_and_the_run_ends_with_one_signed_webhook(
) {
    const PAGES: usize = 20;
    use_test_aws_credentials();
    let test_started = Instant::now();
    let shop = DemoSite::start(PAGES).await.expect("the demo shop starts");
    let mut emulator = Emulator::start(&[]).await;
    let first_invoke = emulator.first_invoke().await;
    eprintln!("cargo lambda watch: first invoke answered after {first_invoke:?}");

    let receiver = Receiver::start(0).await;
    let schedule = fanfare_testkit::schedule("emulated")
        .lambda(FUNCTION)
        .sitemap(&shop.sitemap_url())
        .extract(r#"{ name = "h1.name", price = ".price" }"#)
        .webhook(&receiver.url)
        .to_string();
    // The emulator answers an Event invoke only when the crawl is done.
    let app = spawn_app(&lambda_section(&emulator.url, "60s"), &schedule).await;
    let (run_id, run) = app.run_once("emulated", RUN_TIMEOUT).await;
    eprintln!(
        "run of {PAGES} pages through the emulator: {}s",
        run["duration_seconds"]
    );

    assert_eq!(
        run["outcome"],
        "succeeded",
        "{run:#}\nthe emulator's output:\n{}",
        emulator.output()
    );
    assert_eq!(run["pages"]["total"], PAGES);
    assert_eq!(run["pages"]["succeeded"], PAGES);

    // Every page carries what the real crawler extracted from it.
    let pages = app.pages(run_id).await;
    assert_eq!(pages.len(), PAGES);
    for page in &pages {
        let url = page["url"].as_str().unwrap();
        let n: usize = url
            .rsplit('/')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a demo product URL: {url}"));
        assert_eq!(page["status"], "succeeded", "{page:#}");
        assert_eq!(page["attempt"], 1, "one attempt each: {page:#}");
        let result = &page["result"];
        assert_eq!(result["http_status"], 200, "{page:#}");
        assert_eq!(result["title"], format!("Product {n} | Demo Shop"));
        assert_eq!(result["fields"]["name"], format!("Product {n}"));
        assert_eq!(result["fields"]["price"], demo::price(n));
    }
    // One page's hash and size against the page itself.
    let seven = pages
        .iter()
        .find(|p| p["url"] == shop.page_url(7))
        .expect("page 7 is in the run");
    let body = reqwest::get(shop.page_url(7))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(seven["result"]["bytes"], body.len());
    assert_eq!(
        seven["result"]["content_sha256"],
        hex_lower(&sha2::Sha256::digest(&body))
    );

    let deliveries = receiver.wait_for_one(Duration::from_secs(30)).await;
    assert_eq!(deliveries.len(), 1, "exactly one webhook");
    deliveries[0].assert_signed();
    let payload = deliveries[0].json();
    assert_eq!(payload["run_id"], run_id.to_string());
    assert_eq!(payload["schedule"], "emulated");
    assert_eq!(payload["outcome"], "succeeded");
    assert_eq!(payload["pages"]["total"], PAGES);
    assert_eq!(payload["pages"]["succeeded"], PAGES);
    assert_eq!(payload["failed_pages"], json!([]));

    app.stop().await;
    // The crawler instances carry the emulator's tag, and none survives it.
    let tag = emulator.tag();
    let running = tagged_processes(&tag);
    assert!(
        running.iter().any(|(_, name)| name == FUNCTION),
        "the crawler instances are found by the tag: {running:?}"
    );
    drop(emulator);
    let left = tagged_processes(&tag);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    eprintln!("whole test: {:?}", test_started.elapsed());
}

#[tokio::test]
async fn the_browser_crawler_under_the_emulator_renders_script_filled_pages_and_reports_them_rendered(
) {
    const CHROMIUM: &str = "/usr/bin/chromium";
    assert!(
        std::path::Path::new(CHROMIUM).is_file(),
        "this test needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
    );
    use_test_aws_credentials();
    let shop = AppShop::start(Ipv4Addr::LOCALHOST).await;
    // What the browser crawler's image sets (Dockerfile.browser).
    let mut emulator = Emulator::start(&[
        ("FANFARE_CHROMIUM", CHROMIUM),
        ("FANFARE_CRAWLER_BROWSERS", "1"),
    ])
    .await;
    let first_invoke = emulator.first_invoke().await;
    eprintln!("cargo lambda watch: first invoke answered after {first_invoke:?}");

    // The emulator routes by binary name: the plain and the browser
    // function are the same crawler, as they are on Lambda.
    let urls = [shop.script(1), shop.script(2)];
    let schedule = fanfare_testkit::schedule("rendered")
        .lambda(FUNCTION)
        .urls(&urls)
        .extract(EXTRACT)
        .text("render", "always")
        .text("browser_function", FUNCTION)
        .text("wait_for", ".price")
        .to_string();
    let app = spawn_app(&lambda_section(&emulator.url, "90s"), &schedule).await;
    let run_id = app.trigger("rendered").await;
    let run = app.wait_finished(run_id, RUN_TIMEOUT).await;
    assert_eq!(
        run["outcome"],
        "succeeded",
        "{run:#}\nthe emulator's output:\n{}",
        emulator.output()
    );
    assert_eq!(
        run["render"],
        json!({ "plain": 0, "rendered": 2, "escalated": 0 }),
        "{run:#}"
    );
    for page in app.pages(run_id).await {
        let url = page["url"].as_str().unwrap();
        let id = if url == urls[0] { 1 } else { 2 };
        assert_eq!(page["status"], "succeeded", "{page:#}");
        let result = &page["result"];
        assert_eq!(result["rendered"], true, "{page:#}");
        assert_eq!(
            result["title"],
            format!("Script item {id} | Shop"),
            "{page:#}"
        );
        assert_eq!(result["fields"]["price"], script_price(id), "{page:#}");
    }
    // Each page's script ran once: one render per page.
    assert_eq!(
        shop.renders_by_page(),
        std::collections::BTreeMap::from([(1, 1), (2, 1)])
    );
    app.stop().await;
}

/// Variables cargo (and nextest) set for a test process that describe the
/// package under test, not the build a nested cargo should make.
fn is_set_by_cargo_for_tests(name: &str) -> bool {
    [
        "CARGO_PKG_",
        "CARGO_BIN_EXE_",
        "CARGO_CFG_",
        "NEXTEST",
        "__NEXTEST",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
        || [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_MANIFEST_LINKS",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .contains(&name)
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
