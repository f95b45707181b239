//! The web console in a real browser: Debian's Chromium, headless, driven
//! through WebDriver (chromedriver) by fantoccini, against the real daemon
//! crawling the demo shop on loopback with the in-process crawler.
//!
//! `scripts/test` installs `chromium` and `chromium-driver` when
//! `/usr/bin/chromedriver` is missing; without them this test fails saying
//! so. It leaves screenshots of the run page in the target directory
//! (`console-run-page.png`, `console-run-page-phone.png`); with
//! `FANFARE_DOCS_SCREENSHOT=1` it also writes `docs/console-run.png`, the
//! picture in `docs/console.md`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fanfare::demo::DemoSite;
use fanfare_testkit::{eventually, holds, schedule, secs, TestApp, ADMIN_TOKEN};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

/// Where chromedriver and chromium are, unless the environment says otherwise.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free loopback port, killed when dropped.
struct ChromeDriver {
    child: Child,
    url: String,
    profile: PathBuf,
}

impl ChromeDriver {
    async fn start() -> Self {
        let binary =
            std::env::var("FANFARE_CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.to_string());
        assert!(
            Path::new(&binary).exists(),
            "{binary} not found: this test drives Debian's Chromium through chromedriver; \
             run scripts/test, which installs them (apt-get install chromium chromium-driver), \
             or set FANFARE_CHROMEDRIVER"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let profile = std::env::temp_dir().join(format!("fanfare-console-{}", std::process::id()));
        let driver = Self {
            child,
            url,
            profile,
        };
        let http = reqwest::Client::new();
        let status = format!("{}/status", driver.url);
        eventually("chromedriver is ready", secs(30), || async {
            let resp = http.get(&status).send().await.map_err(|e| e.to_string())?;
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            holds(body["value"]["ready"] == true, &body)
        })
        .await;
        driver
    }

    /// A headless Chromium session (as root it needs --no-sandbox; the
    /// background-networking flags keep it off the closed network).
    async fn browser(&self) -> Client {
        let chromium = std::env::var("FANFARE_CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_string());
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                    "--window-size=1280,1900",
                    format!("--user-data-dir={}", self.profile.display()),
                ]
            }
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("a Chromium session through chromedriver: {e}"))
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The target directory (screenshots go there).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .to_path_buf()
}

/// Waits until the text of the first match of `css` satisfies `done`;
/// returns it.
async fn wait_text(
    c: &Client,
    css: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    eventually(what, within, || async {
        let text = match c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.map_err(|e| format!("{css}: {e}"))?,
            Err(e) => return Err(format!("{css}: {e}")),
        };
        if done(&text) {
            return Ok(text);
        }
        let url = c.current_url().await.map(|u| u.to_string());
        Err(format!(
            "{css} on {} reads {text:?}",
            url.unwrap_or_default()
        ))
    })
    .await
}

async fn path_of(c: &Client) -> String {
    c.current_url()
        .await
        .expect("the current URL")
        .path()
        .to_string()
}

/// Waits until the browser is on a path that satisfies `done` (a click
/// that submits a form returns before the next page has loaded); returns it.
async fn wait_path(c: &Client, what: &str, done: impl Fn(&str) -> bool) -> String {
    eventually(what, secs(15), || async {
        let path = path_of(c).await;
        let loaded = c
            .execute("return document.readyState", vec![])
            .await
            .map(|s| s == "complete")
            .unwrap_or(false);
        holds(loaded && done(&path), format!("on {path}")).map(|()| path)
    })
    .await
}

/// Fills in the sign-in form the browser is on with the admin token and
/// waits to land on the schedules.
async fn sign_in(c: &Client) {
    c.find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(ADMIN_TOKEN)
        .await
        .unwrap();
    click(c, "form[action='/ui/login'] button[type=submit]").await;
    wait_path(c, "signed in, to the schedules", |p| p == "/ui/").await;
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} on the page: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

async fn save_screenshot(c: &Client, name: &str) -> PathBuf {
    let png = c.screenshot().await.expect("a screenshot");
    let path = target_dir().join(name);
    std::fs::write(&path, &png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    println!("screenshot: {}", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_triggers_the_demo_watches_it_finish_and_redrives_its_failure() {
    let driver = ChromeDriver::start().await;
    let site = DemoSite::start(24).await.expect("the demo shop starts");
    // The shop's pages, three slow ones so the run stays open for a moment,
    // and one that does not exist.
    let missing = format!("{}/products/404", site.base_url());
    let mut urls = site.page_urls();
    urls.extend((1..=3).map(|i| format!("{}/slow/{}", site.base_url(), 1500 + i)));
    urls.push(missing.clone());
    let schedule = schedule("demo")
        .cron("0 0 6 * * *")
        .text("timezone", "Europe/Paris")
        .urls(urls)
        .extract(r#"{ name = "h1.name", price = ".price" }"#)
        .key("max_attempts", 1);
    let app = TestApp::spawn(&schedule.to_string(), None).await;
    let c = driver.browser().await;

    // Signing in: the console sends us to the form, then back.
    c.goto(&format!("{}/ui/", app.address)).await.unwrap();
    assert_eq!(path_of(&c).await, "/ui/login");
    sign_in(&c).await;

    // The demo schedule, its cron in words, and no run yet.
    let card = wait_text(
        &c,
        "[data-schedule=demo]",
        Duration::from_secs(5),
        "the demo schedule",
        |t| t.contains("demo"),
    )
    .await;
    assert!(card.contains("at 06:00 every day"), "{card}");
    assert!(card.contains("Europe/Paris"), "{card}");
    assert!(card.contains("none yet"), "{card}");

    // Trigger: the run's page, live while the run is open.
    click(&c, "[data-schedule=demo] button[data-action=trigger]").await;
    let run_path = wait_path(&c, "the new run's page", |p| p.starts_with("/ui/runs/")).await;
    let summary = wait_text(
        &c,
        "[data-percent]",
        Duration::from_secs(60),
        "the run reaches 100 %",
        |t| t.ends_with("(100 %)"),
    )
    .await;
    assert_eq!(summary, "28 of 28 pages reported (100 %)");
    assert_eq!(
        path_of(&c).await,
        run_path,
        "the page followed the run itself"
    );
    // Read through wait_text: the live script may replace the element
    // between finding and reading it.
    let counts = wait_text(
        &c,
        "ul.counts",
        Duration::from_secs(10),
        "the counts",
        |_| true,
    )
    .await;
    assert!(
        counts.contains("succeeded 27") && counts.contains("failed 1"),
        "{counts}"
    );

    // The failed page, its URL and error in the table.
    let failures = wait_text(
        &c,
        "table[data-table=failures] tbody",
        Duration::from_secs(10),
        "the failed page is listed",
        |t| t.contains(&missing),
    )
    .await;
    assert!(failures.contains("http_status"), "{failures}");
    assert!(failures.contains("404"), "{failures}");
    save_screenshot(&c, "console-run-page.png").await;
    if std::env::var("FANFARE_DOCS_SCREENSHOT").is_ok_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(
            target_dir().join("console-run-page.png"),
            docs.join("console-run.png"),
        )
        .unwrap();
    }
    c.set_window_size(390, 1600).await.unwrap();
    save_screenshot(&c, "console-run-page-phone.png").await;
    c.set_window_size(1280, 1900).await.unwrap();

    // Redrive: a new run of the failed page, linked to this one.
    click(&c, "button[data-action=redrive]").await;
    wait_path(&c, "the redrive run's page", |p| {
        p.starts_with("/ui/runs/") && p != run_path
    })
    .await;
    let facts = wait_text(
        &c,
        "dl.facts",
        Duration::from_secs(10),
        "the redrive run's facts",
        |t| t.contains("Redrive of"),
    )
    .await;
    assert!(
        facts.contains(run_path.trim_start_matches("/ui/runs/")),
        "{facts}"
    );
    wait_text(
        &c,
        "[data-percent]",
        Duration::from_secs(30),
        "the redrive run finishes",
        |t| t == "1 of 1 pages reported (100 %)",
    )
    .await;

    // The overview and the list of runs now show both runs.
    c.goto(&format!("{}/ui/", app.address)).await.unwrap();
    let card = c.find(Locator::Css("[data-schedule=demo]")).await.unwrap();
    // The last run is the redrive, of the missing page alone: failed.
    let text = card.text().await.unwrap();
    assert!(text.contains("failed"), "the last run's outcome: {text}");
    assert_eq!(
        card.find_all(Locator::Css("svg.spark rect"))
            .await
            .unwrap()
            .len(),
        2,
        "one bar per run of the schedule"
    );
    save_screenshot(&c, "console-schedules.png").await;
    c.goto(&format!("{}/ui/runs", app.address)).await.unwrap();
    let rows = c.find_all(Locator::Css("tr[data-run]")).await.unwrap();
    assert_eq!(rows.len(), 2, "the run and its redrive");
    save_screenshot(&c, "console-runs.png").await;

    // Sign out: the console is closed again.
    click(&c, "button[data-action=sign-out]").await;
    wait_path(&c, "signed out", |p| p == "/ui/login").await;
    c.goto(&format!("{}/ui/", app.address)).await.unwrap();
    assert_eq!(path_of(&c).await, "/ui/login");

    c.close().await.unwrap();
    drop(driver);
    app.stop().await;
    site.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_page_refused_its_live_updates_says_so_and_keeps_working() {
    let driver = ChromeDriver::start().await;
    let lambda = std::sync::Arc::new(fanfare_testkit::RecordingLambda::default());
    // A run that stays open (its pages are never reported), and room for
    // one event stream per session.
    let app = TestApp::builder()
        .toml(&fanfare_testkit::lambda_schedule_block("s", 2, "", ""))
        .lambda(lambda.clone())
        .tweak(|s| s.server.max_event_streams_per_session = 1)
        .spawn()
        .await;
    let run = app.trigger("s").await;
    lambda.wait_for(2).await;
    let c = driver.browser().await;
    c.goto(&format!("{}/ui/login", app.address)).await.unwrap();
    sign_in(&c).await;

    // The session's one stream is taken (as by another tab).
    let cookie = c
        .get_named_cookie("fanfare_console")
        .await
        .expect("the session cookie");
    let taken = reqwest::Client::new()
        .get(format!("{}/ui/runs/{run}/events", app.address))
        .header("cookie", format!("fanfare_console={}", cookie.value()))
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 200);

    c.goto(&format!("{}/ui/runs/{run}", app.address))
        .await
        .unwrap();
    let note = wait_text(
        &c,
        "[data-live=off]",
        Duration::from_secs(10),
        "the page says it is not live",
        |t| !t.is_empty(),
    )
    .await;
    assert!(note.contains("reloads itself"), "{note}");
    let summary = wait_text(
        &c,
        "[data-percent]",
        Duration::from_secs(5),
        "the progress as rendered",
        |_| true,
    )
    .await;
    assert_eq!(summary, "0 of 2 pages reported (0 %)");
    save_screenshot(&c, "console-run-page-not-live.png").await;

    drop(taken);
    c.close().await.unwrap();
    drop(driver);
    app.stop().await;
}
