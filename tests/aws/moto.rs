//! fanfare against moto's Lambda API in simple mode (no Docker: an Invoke
//! runs nothing), read back through moto's request recorder.
//!
//! In simple mode moto answers an Event invoke 202 and a RequestResponse
//! invoke with the next result queued at
//! `/moto-api/static/lambda-simple/response` (else with the request body).
//! The queue is shared by every invoke of the region, so a test queues at
//! most one result and only where the lister is the first invoke. A queued
//! result over 6,000,000 bytes makes moto answer like Lambda does for an
//! oversized response: `X-Amz-Function-Error: Unhandled` with
//! `Function.ResponseSizeTooLarge`, which is how the function-error case is
//! produced here (moto has no other way to make a simple-mode function
//! fail).

use std::collections::{BTreeSet, HashSet};
use std::process::Command;
use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{FunctionCode, Runtime};
use base64::Engine;
use fanfare_crawler::contract::CrawlRequest;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::procs::{tool, Spawned};

/// moto's default account, which owns the role.
const ACCOUNT: &str = "123456789012";
const ROLE: &str = "fanfare-crawler-role";

/// A `moto_server` child process on a free loopback port.
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    http: reqwest::Client,
    recording: std::path::PathBuf,
    role_created: bool,
    process: Option<Spawned>,
}

/// One Invoke request as moto recorded it.
#[derive(Debug, Clone)]
pub struct RecordedInvoke {
    /// The function name from the request path (as sent: fanfare's
    /// test functions have plain names).
    pub function: String,
    /// The `X-Amz-Invocation-Type` header, when sent.
    pub invocation_type: Option<String>,
    /// The `Authorization` header.
    pub authorization: String,
    /// The payload.
    pub body: Vec<u8>,
}

impl RecordedInvoke {
    /// The payload as a crawl request.
    pub fn crawl_request(&self) -> CrawlRequest {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the Event payload is a contract CrawlRequest ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl Moto {
    /// Starts moto on a port of its choosing, in simple Lambda mode.
    pub async fn start() -> Self {
        let binary = tool("moto_server", "pip install 'moto[server]==5.2.5'");
        let dir = std::env::temp_dir().join(format!("fanfare-moto-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let recording = dir.join("recording.jsonl");
        let mut command = Command::new(binary);
        command
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env("MOTO_RECORDER_FILEPATH", &recording)
            .current_dir(&dir);
        let mut process = Spawned::spawn("moto_server", command);
        // Werkzeug prints the port it bound: " * Running on http://127.0.0.1:PORT".
        let url = process
            .wait_for_output(Duration::from_secs(30), "its address", |line| {
                let at = line.find("Running on http://127.0.0.1:")?;
                let rest = &line[at + "Running on ".len()..];
                Some(
                    rest.split_whitespace()
                        .next()?
                        .trim_end_matches('/')
                        .to_string(),
                )
            })
            .await;
        let moto = Self {
            url,
            http: reqwest::Client::new(),
            recording,
            role_created: false,
            process: Some(process),
        };
        let config = moto
            .post_json(
                "/moto-api/config",
                &json!({"lambda": {"use_docker": false}}),
            )
            .await;
        assert_eq!(
            config["lambda"]["use_docker"], false,
            "moto is in simple Lambda mode: {config}"
        );
        moto
    }

    async fn post_json(&self, path: &str, body: &Value) -> Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("moto POST {path}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "moto POST {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    fn sdk(&self) -> aws_sdk_lambda::Client {
        let config = aws_sdk_lambda::Config::builder()
            .behavior_version(aws_sdk_lambda::config::BehaviorVersion::latest())
            .region(aws_sdk_lambda::config::Region::new(REGION))
            .endpoint_url(&self.url)
            .credentials_provider(aws_sdk_lambda::config::Credentials::new(
                "test",
                "test",
                None,
                None,
                "fanfare-aws-tests",
            ))
            .build();
        aws_sdk_lambda::Client::from_conf(config)
    }

    /// With the test's AWS credentials set, starts moto and creates each of
    /// `functions` in it.
    pub async fn with_functions(functions: &[&str]) -> Self {
        use_test_aws_credentials();
        let mut moto = Self::start().await;
        moto.create_functions(functions).await;
        moto
    }

    /// Creates each of `names` (see [`Moto::create_function`]).
    pub async fn create_functions(&mut self, names: &[&str]) {
        for name in names {
            self.create_function(name).await;
        }
    }

    /// Creates the IAM role (once) and a function `name` with any zip.
    pub async fn create_function(&mut self, name: &str) {
        if !self.role_created {
            // IAM's query API; moto routes it by the signing scope and does
            // not check the signature.
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("Action", "CreateRole")
                .append_pair("Version", "2010-05-08")
                .append_pair("RoleName", ROLE)
                .append_pair(
                    "AssumeRolePolicyDocument",
                    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
                )
                .finish();
            let resp = self
                .http
                .post(format!("{}/", self.url))
                .header(
                    "authorization",
                    format!("AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/iam/aws4_request, SignedHeaders=host, Signature=0"),
                )
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form)
                .send()
                .await
                .expect("moto CreateRole");
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            assert!(
                status.is_success() && text.contains("<CreateRoleResponse"),
                "moto CreateRole: {status} {text}"
            );
            self.role_created = true;
        }
        let created = self
            .sdk()
            .create_function()
            .function_name(name)
            .runtime(Runtime::Providedal2023)
            .handler("bootstrap")
            .role(format!("arn:aws:iam::{ACCOUNT}:role/{ROLE}"))
            .code(
                FunctionCode::builder()
                    .zip_file(Blob::new(b"PK\x05\x06not really a zip".to_vec()))
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("moto CreateFunction {name}: {e:?}"));
        assert_eq!(created.function_name(), Some(name));
    }

    /// Queues the answer of the next invoke (simple mode).
    pub async fn queue_result(&self, result: &str) {
        self.post_json(
            "/moto-api/static/lambda-simple/response",
            &json!({"region": REGION, "results": [result]}),
        )
        .await;
    }

    /// Clears the recording and records every request from now on.
    pub async fn start_recording(&self) {
        for path in [
            "/moto-api/recorder/reset-recording",
            "/moto-api/recorder/start-recording",
        ] {
            let resp = self
                .http
                .post(format!("{}{path}", self.url))
                .send()
                .await
                .unwrap_or_else(|e| panic!("moto {path}: {e}"));
            assert!(resp.status().is_success(), "moto {path}: {}", resp.status());
        }
    }

    /// Every Invoke recorded so far, in order.
    pub async fn invokes(&self) -> Vec<RecordedInvoke> {
        let resp = self
            .http
            .get(format!("{}/moto-api/recorder/download-recording", self.url))
            .send()
            .await
            .expect("moto download-recording");
        assert!(
            resp.status().is_success(),
            "download-recording: {}",
            resp.status()
        );
        let text = resp.text().await.unwrap();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|line| {
                let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!(
                        "a recording line is JSON ({e}): {}",
                        line.chars().take(300).collect::<String>()
                    )
                });
                parse_invoke(&entry)
            })
            .collect()
    }

    /// Waits until at least `n` invokes were recorded.
    pub async fn wait_for_invokes(&self, n: usize, within: Duration) -> Vec<RecordedInvoke> {
        fanfare_testkit::eventually(&format!("{n} Invoke requests at moto"), within, || async {
            let got = self.invokes().await;
            let seen = got.len();
            fanfare_testkit::holds(seen >= n, format!("{seen} seen")).map(|()| got)
        })
        .await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        drop(self.process.take());
        if let Some(dir) = self.recording.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// An Invoke (`POST /2015-03-31/functions/{name}/invocations`) from a
/// recorder entry; `None` for any other request.
fn parse_invoke(entry: &Value) -> Option<RecordedInvoke> {
    if entry["method"] != "POST" {
        return None;
    }
    let url = url::Url::parse(entry["url"].as_str()?).ok()?;
    let segments: Vec<&str> = url.path_segments()?.collect();
    let [_, "functions", function, "invocations"] = segments.as_slice() else {
        return None;
    };
    let function = function.to_string();
    let header = |name: &str| {
        entry["headers"].as_object().and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.as_str())
                .map(str::to_string)
        })
    };
    let raw = entry["body"].as_str().unwrap_or_default();
    let body = if entry["body_encoded"] == true {
        base64::engine::general_purpose::STANDARD
            .decode(raw)
            .expect("a recorded body is base64")
    } else {
        raw.as_bytes().to_vec()
    };
    Some(RecordedInvoke {
        function,
        invocation_type: header("x-amz-invocation-type"),
        authorization: header("authorization").unwrap_or_default(),
        body,
    })
}

/// Starts recording, then the daemon with schedule `listed`, whose pages
/// come from the `lister` Lambda and are crawled by `crawler`.
async fn spawn_listed(moto: &Moto) -> (TestApp, Receiver) {
    moto.start_recording().await;
    let receiver = Receiver::start(0).await;
    let lister = r#"{ lambda = "lister", payload = { site = "shop" } }"#;
    let schedule = crawler_schedule("listed", lister, &receiver);
    (
        spawn_app(&lambda_section(&moto.url, "10s"), &schedule).await,
        receiver,
    )
}

fn crawler_schedule(name: &str, pages: &str, receiver: &Receiver) -> String {
    fanfare_testkit::schedule(name)
        .lambda("crawler")
        .pages(pages)
        .extract(r#"{ price = ".price" }"#)
        .key("max_in_flight", 10000)
        .webhook(&receiver.url)
        .to_string()
}

/// Plays the crawler for every request: a succeeded report each, each
/// answered `recorded`.
async fn report_all(app: &TestApp, requests: &[CrawlRequest]) {
    for request in requests {
        let (status, body) = app.report_success(request).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("recorded")),
            "page {}: {body}",
            request.page_id
        );
    }
}

#[tokio::test]
async fn a_run_of_fifty_pages_makes_exactly_fifty_event_invokes_of_the_configured_function_each_with_a_contract_request(
) {
    const N: usize = 50;
    use_test_aws_credentials();
    let mut moto = Moto::start().await;
    moto.create_function("crawler").await;
    moto.start_recording().await;
    let receiver = Receiver::start(0).await;
    let urls: Vec<String> = (1..=N)
        .map(|i| format!("http://127.0.0.1:9/products/{i}"))
        .collect();
    let list = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let app = spawn_app(
        &lambda_section(&moto.url, "10s"),
        &crawler_schedule("moto-fanout", &format!("{{ urls = [{list}] }}"), &receiver),
    )
    .await;

    let run_id = app.trigger("moto-fanout").await;
    let invokes = moto.wait_for_invokes(N, Duration::from_secs(30)).await;

    assert_eq!(invokes.len(), N, "exactly one invoke per page");
    let mut page_ids = HashSet::new();
    let mut seen_urls = Vec::new();
    let mut requests = Vec::new();
    for invoke in &invokes {
        assert_eq!(invoke.function, "crawler", "the configured function");
        assert_eq!(
            invoke.invocation_type.as_deref(),
            Some("Event"),
            "X-Amz-Invocation-Type"
        );
        // Signed with the credentials from the environment, for the
        // configured region.
        assert!(
            invoke
                .authorization
                .starts_with("AWS4-HMAC-SHA256 Credential=test/")
                && invoke
                    .authorization
                    .contains(&format!("/{REGION}/lambda/aws4_request")),
            "SigV4 with the test credentials and region: {}",
            invoke.authorization
        );
        let request = invoke.crawl_request();
        assert_eq!(request.version, 1);
        assert_eq!(request.run_id, run_id.to_string());
        assert_eq!(request.attempt, 1);
        assert_eq!(request.callback_url, app.callback_url());
        assert_eq!(request.extract.get("price"), Some(&".price".into()));
        assert!(request.deadline > chrono::Utc::now(), "deadline ahead");
        assert_valid_token(&request);
        assert!(
            page_ids.insert(request.page_id.clone()),
            "page id {} sent twice",
            request.page_id
        );
        seen_urls.push(request.url.clone());
        requests.push(request);
    }
    seen_urls.sort();
    let mut expected = urls.clone();
    expected.sort();
    assert_eq!(seen_urls, expected, "every URL exactly once");

    report_all(&app, &requests).await;
    let run = app.wait_finished(run_id, Duration::from_secs(30)).await;
    assert_eq!(run["outcome"], "succeeded", "{run:#}");
    assert_eq!(run["pages"]["total"], N);
    assert_eq!(run["pages"]["succeeded"], N);

    let deliveries = receiver.wait_for_one(Duration::from_secs(30)).await;
    assert_eq!(deliveries.len(), 1, "exactly one webhook");
    deliveries[0].assert_signed();
    let payload = deliveries[0].json();
    assert_eq!(payload["type"], "run.finished");
    assert_eq!(payload["run_id"], run_id.to_string());
    assert_eq!(payload["outcome"], "succeeded");
    assert_eq!(payload["pages"]["succeeded"], N);

    // Nothing was invoked again (no retry, no duplicate) in the meantime.
    assert_eq!(moto.invokes().await.len(), N, "still exactly {N} invokes");
    app.stop().await;
}

#[tokio::test]
async fn a_lister_function_is_invoked_request_response_with_its_payload_and_its_answer_becomes_the_runs_pages(
) {
    let moto = Moto::with_functions(&["lister", "crawler"]).await;
    // The lister's answer: strings and objects with "url"; invalid entries
    // are skipped.
    moto.queue_result(
        r#"["http://127.0.0.1:9/a", {"url": "http://127.0.0.1:9/b"}, "not a url", "http://127.0.0.1:9/c"]"#,
    )
    .await;
    let (app, receiver) = spawn_listed(&moto).await;

    let run_id = app.trigger("listed").await;
    let invokes = moto.wait_for_invokes(4, Duration::from_secs(30)).await;

    let (listers, crawls): (Vec<_>, Vec<_>) = invokes.iter().partition(|i| i.function == "lister");
    assert_eq!(listers.len(), 1, "the lister is invoked once: {invokes:?}");
    assert_eq!(
        invokes[0].function, "lister",
        "the lister is invoked before any page"
    );
    assert_eq!(
        listers[0].invocation_type.as_deref(),
        Some("RequestResponse"),
        "the lister is invoked synchronously"
    );
    let payload: Value = serde_json::from_slice(&listers[0].body).expect("the payload is JSON");
    assert_eq!(payload, json!({"site": "shop"}), "the configured payload");

    assert_eq!(crawls.len(), 3, "one crawl per listed URL: {invokes:?}");
    let requests: Vec<CrawlRequest> = crawls.iter().map(|i| i.crawl_request()).collect();
    for (invoke, request) in crawls.iter().zip(&requests) {
        assert_eq!(invoke.function, "crawler");
        assert_eq!(invoke.invocation_type.as_deref(), Some("Event"));
        assert_eq!(request.run_id, run_id.to_string());
        assert_valid_token(request);
    }
    let urls: BTreeSet<&str> = requests.iter().map(|r| r.url.as_str()).collect();
    let expected = BTreeSet::from([
        "http://127.0.0.1:9/a",
        "http://127.0.0.1:9/b",
        "http://127.0.0.1:9/c",
    ]);
    assert_eq!(urls, expected, "the lister's answer is the page list");

    report_all(&app, &requests).await;
    let run = app.wait_finished(run_id, Duration::from_secs(30)).await;
    assert_eq!(run["outcome"], "succeeded", "{run:#}");
    assert_eq!(run["pages"]["total"], 3);
    let pages = app.pages(run_id).await;
    let ledger_urls: BTreeSet<&str> = pages.iter().filter_map(|p| p["url"].as_str()).collect();
    assert_eq!(ledger_urls, expected, "the ledger holds the listed pages");
    let deliveries = receiver.wait_for_one(Duration::from_secs(30)).await;
    assert_eq!(deliveries.len(), 1, "exactly one webhook");
    deliveries[0].assert_signed();
    assert_eq!(deliveries[0].json()["outcome"], "succeeded");
    assert_eq!(moto.invokes().await.len(), 4, "no further invokes");
    app.stop().await;
}

#[tokio::test]
async fn a_lister_answering_with_a_function_error_fails_the_run_with_that_error_and_invokes_no_crawler(
) {
    let moto = Moto::with_functions(&["lister", "crawler"]).await;
    // Over 6,000,000 bytes: moto answers X-Amz-Function-Error: Unhandled,
    // {"errorType": "Function.ResponseSizeTooLarge", "errorMessage": ...}.
    moto.queue_result(&"x".repeat(6_000_001)).await;
    let (app, receiver) = spawn_listed(&moto).await;

    let (_, run) = app.run_once("listed", Duration::from_secs(30)).await;

    assert_eq!(run["outcome"], "failed", "{run:#}");
    assert_eq!(run["pages"]["total"], 0);
    let error = run["error"].as_str().unwrap_or_default();
    for part in [
        "lister function lister",
        "function error (Unhandled)",
        "Response payload size exceeded maximum allowed payload size",
    ] {
        assert!(
            error.contains(part),
            "the run's error names {part:?}: {error}"
        );
    }
    let deliveries = receiver.wait_for_one(Duration::from_secs(30)).await;
    assert_eq!(deliveries.len(), 1, "exactly one webhook");
    deliveries[0].assert_signed();
    let payload = deliveries[0].json();
    assert_eq!(payload["outcome"], "failed");
    assert_eq!(payload["error"], error);

    let invokes = moto.invokes().await;
    assert_eq!(invokes.len(), 1, "only the lister was invoked: {invokes:?}");
    assert_eq!(invokes[0].function, "lister");
    assert_eq!(
        invokes[0].invocation_type.as_deref(),
        Some("RequestResponse")
    );
    app.stop().await;
}

#[tokio::test]
async fn the_second_runs_invoke_payloads_carry_the_validators_the_first_run_reported() {
    use_test_aws_credentials();
    let mut moto = Moto::start().await;
    moto.create_function("crawler").await;
    moto.start_recording().await;
    let receiver = Receiver::start(0).await;
    let urls = r#"{ urls = ["http://127.0.0.1:9/p/1", "http://127.0.0.1:9/p/2"] }"#;
    let app = spawn_app(
        &lambda_section(&moto.url, "10s"),
        &crawler_schedule("moto-conditional", urls, &receiver),
    )
    .await;

    // Run 1: page 1 reports an ETag and a Last-Modified, page 2 neither.
    let run1 = app.trigger("moto-conditional").await;
    let first: Vec<CrawlRequest> = moto
        .wait_for_invokes(2, Duration::from_secs(30))
        .await
        .iter()
        .map(RecordedInvoke::crawl_request)
        .collect();
    for request in &first {
        let mut report = fanfare_testkit::succeeded(request);
        if request.url.ends_with("/p/1") {
            report["etag"] = json!("W/\"p1-v1\"");
            report["last_modified"] = json!("Mon, 07 Dec 2026 10:00:00 GMT");
        }
        app.report_recorded(request, &report).await;
    }
    app.wait_finished(run1, Duration::from_secs(30)).await;

    // Run 2: the payloads, as moto received them.
    let run2 = app.trigger("moto-conditional").await;
    let invokes = moto.wait_for_invokes(4, Duration::from_secs(30)).await;
    let second: Vec<Value> = invokes[2..]
        .iter()
        .map(|i| serde_json::from_slice(&i.body).unwrap())
        .collect();
    assert!(second.iter().all(|p| p["run_id"] == run2.to_string()));
    let page = |n: &str| {
        second
            .iter()
            .find(|p| p["url"].as_str().unwrap().ends_with(n))
            .unwrap()
    };
    assert_eq!(page("/p/1")["if_none_match"], "W/\"p1-v1\"", "{second:#?}");
    assert_eq!(
        page("/p/1")["if_modified_since"],
        "Mon, 07 Dec 2026 10:00:00 GMT"
    );
    let p2 = page("/p/2").as_object().unwrap();
    assert!(
        !p2.contains_key("if_none_match") && !p2.contains_key("if_modified_since"),
        "{p2:#?}"
    );
    app.stop().await;
}
