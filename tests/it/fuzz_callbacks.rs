//! A property test of `POST /v1/callbacks`: the real router, in-process,
//! with the state of a real application on a fresh database, is sent
//! arbitrary bodies, headers and tokens (valid, mutated, truncated, forged
//! for other pages, attempts and runs, expired, signed with another key;
//! reports with NULs and arbitrary text, truncated and bit-flipped JSON,
//! invalid UTF-8, huge and empty bodies, wrong content types). Whatever it
//! is sent, it never answers 5xx, never panics, and a request it refuses
//! (any answer but 200) leaves the `pages` and `runs` tables as they were.
//!
//! `FANFARE_FUZZ_CASES` sets the number of cases (default 2,000; the
//! benchmark profile runs 100,000).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Request};
use axum::Router;
use chrono::Utc;
use fanfare::token::{Claims, TokenSigner};
use fanfare::Settings;
use fanfare_crawler::contract::CrawlRequest;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::helpers::*;
use fanfare_testkit as common;

/// Pages of the fuzzed run: enough that valid reports keep finding open
/// pages for a while.
const PAGES: usize = 300;
const DEFAULT_CASES: u32 = 2_000;
/// Just over the 256 KiB report limit, and far over it.
const HUGE_SIZES: [usize; 3] = [256 * 1024 + 1, 300 * 1024, 2 * 1024 * 1024];

fn cases() -> u32 {
    std::env::var("FANFARE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// The `Authorization` header of a case, about the case's page.
#[derive(Debug, Clone)]
enum Auth {
    Missing,
    Valid,
    /// One character of a valid token replaced.
    Mutated {
        at: usize,
        with: char,
    },
    /// A valid token cut short.
    Truncated {
        keep: usize,
    },
    /// Signed with the daemon's real secret, for any page, attempt and run.
    Forged {
        page_id: i64,
        attempt: i32,
        own_run: bool,
        expired: bool,
    },
    /// A well-formed token under another key.
    WrongKey,
    /// A valid token under another scheme or spacing.
    Scheme(String),
    /// Any bytes a header value may hold (NULs and line breaks cannot
    /// cross HTTP, so they are dropped).
    Raw(Vec<u8>),
}

/// What the report says.
#[derive(Debug, Clone)]
enum Said {
    Succeeded {
        http_status: i64,
        title: Option<String>,
        field: String,
        sha_ok: bool,
        bytes: i64,
    },
    Failed {
        kind: String,
        message: String,
        retryable: bool,
    },
}

/// A report about the case's page (or `other_page`), its attempt or
/// another, its run or another.
#[derive(Debug, Clone)]
struct ReportSpec {
    other_page: Option<usize>,
    attempt_delta: i64,
    other_run: bool,
    version: i64,
    said: Said,
}

/// The body of a case.
#[derive(Debug, Clone)]
enum BodySpec {
    Report(ReportSpec),
    BitFlipped {
        report: ReportSpec,
        flips: Vec<(usize, u8)>,
    },
    Truncated {
        report: ReportSpec,
        keep: usize,
    },
    InvalidUtf8 {
        report: ReportSpec,
        at: usize,
    },
    Huge {
        report: ReportSpec,
        size: usize,
    },
    Deep(usize),
    Raw(Vec<u8>),
    Empty,
}

#[derive(Debug, Clone)]
struct Case {
    page: usize,
    auth: Auth,
    body: BodySpec,
    content_type: Option<String>,
}

/// Text with NULs, control characters and arbitrary Unicode.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::char::range('a', 'z'),
            1 => Just('\0'),
            1 => Just('\u{fffd}'),
            1 => prop::char::range('\u{1}', '\u{1f}'),
            2 => any::<char>(),
        ],
        0..40,
    )
    .prop_map(String::from_iter)
}

fn said() -> impl Strategy<Value = Said> {
    prop_oneof![
        (
            prop_oneof![3 => Just(200i64), 1 => -5i64..70000],
            prop::option::of(text()),
            text(),
            any::<bool>(),
            prop_oneof![Just(1234i64), any::<i64>()],
        )
            .prop_map(
                |(http_status, title, field, sha_ok, bytes)| Said::Succeeded {
                    http_status,
                    title,
                    field,
                    sha_ok,
                    bytes,
                }
            ),
        (
            prop_oneof![
                Just("http_status".to_string()),
                Just("timeout".to_string()),
                Just("blocked".to_string()),
                text()
            ],
            text(),
            any::<bool>(),
        )
            .prop_map(|(kind, message, retryable)| Said::Failed {
                kind,
                message,
                retryable,
            }),
    ]
}

fn report(pages: usize) -> impl Strategy<Value = ReportSpec> {
    (
        prop_oneof![8 => Just(None), 1 => (0..pages).prop_map(Some)],
        prop_oneof![6 => Just(0i64), 1 => -3i64..3],
        prop_oneof![9 => Just(false), 1 => Just(true)],
        prop_oneof![9 => Just(1i64), 1 => -2i64..5],
        said(),
    )
        .prop_map(
            |(other_page, attempt_delta, other_run, version, said)| ReportSpec {
                other_page,
                attempt_delta,
                other_run,
                version,
                said,
            },
        )
}

fn case(pages: usize) -> impl Strategy<Value = Case> {
    let auth = prop_oneof![
        1 => Just(Auth::Missing),
        8 => Just(Auth::Valid),
        2 => (any::<usize>(), any::<char>())
            .prop_map(|(at, with)| Auth::Mutated { at, with }),
        2 => any::<usize>().prop_map(|keep| Auth::Truncated { keep }),
        2 => (-3i64..(pages as i64 + 3), -1i32..4, any::<bool>(), prop_oneof![4 => Just(false), 1 => Just(true)])
            .prop_map(|(page_id, attempt, own_run, expired)| Auth::Forged { page_id, attempt, own_run, expired }),
        1 => Just(Auth::WrongKey),
        1 => prop_oneof![
                Just("bearer ".to_string()),
                Just("Bearer  ".to_string()),
                Just("Basic ".to_string()),
                Just("Bearer".to_string()),
                Just("BEARER\t".to_string()),
            ].prop_map(Auth::Scheme),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Auth::Raw),
    ];
    let body = prop_oneof![
        6 => report(pages).prop_map(BodySpec::Report),
        2 => (report(pages), prop::collection::vec((any::<usize>(), any::<u8>()), 1..6))
            .prop_map(|(report, flips)| BodySpec::BitFlipped { report, flips }),
        1 => (report(pages), any::<usize>()).prop_map(|(report, keep)| BodySpec::Truncated { report, keep }),
        1 => (report(pages), any::<usize>()).prop_map(|(report, at)| BodySpec::InvalidUtf8 { report, at }),
        1 => (report(pages), prop::sample::select(HUGE_SIZES.to_vec()))
            .prop_map(|(report, size)| BodySpec::Huge { report, size }),
        1 => (1usize..5000).prop_map(BodySpec::Deep),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(BodySpec::Raw),
        1 => Just(BodySpec::Empty),
    ];
    let content_type = prop_oneof![
        6 => Just(Some("application/json".to_string())),
        1 => Just(None),
        1 => Just(Some("text/plain".to_string())),
        1 => Just(Some("application/json; charset=latin1".to_string())),
        1 => Just(Some("multipart/form-data; boundary=x".to_string())),
    ];
    (0..pages, auth, body, content_type).prop_map(|(page, auth, body, content_type)| Case {
        page,
        auth,
        body,
        content_type,
    })
}

/// What the cases are built from: the real run's dispatched requests.
struct Target {
    requests: Vec<CrawlRequest>,
    run_id: uuid::Uuid,
    signer: TokenSigner,
    stranger: TokenSigner,
}

impl Target {
    fn token(&self, page: usize) -> &str {
        &self.requests[page].callback_token
    }

    fn authorization(&self, page: usize, auth: &Auth) -> Option<Vec<u8>> {
        let bearer = |t: &str| format!("Bearer {t}").into_bytes();
        Some(match auth {
            Auth::Missing => return None,
            Auth::Valid => bearer(self.token(page)),
            Auth::Mutated { at, with } => {
                let mut chars: Vec<char> = self.token(page).chars().collect();
                let at = at % chars.len();
                chars[at] = *with;
                bearer(&String::from_iter(chars))
            }
            Auth::Truncated { keep } => {
                let t = self.token(page);
                bearer(&t[..keep % t.len()])
            }
            Auth::Forged {
                page_id,
                attempt,
                own_run,
                expired,
            } => {
                let offset = chrono::Duration::hours(if *expired { -1 } else { 1 });
                let claims = Claims {
                    run_id: if *own_run {
                        self.run_id
                    } else {
                        uuid::Uuid::now_v7()
                    },
                    page_id: *page_id,
                    attempt: *attempt,
                    expires: chrono::SubsecRound::trunc_subsecs(Utc::now() + offset, 0),
                };
                bearer(&self.signer.sign(&claims))
            }
            Auth::WrongKey => {
                let r = &self.requests[page];
                let claims = Claims {
                    run_id: self.run_id,
                    page_id: r.page_id.parse().unwrap(),
                    attempt: r.attempt as i32,
                    expires: chrono::SubsecRound::trunc_subsecs(
                        Utc::now() + chrono::Duration::hours(1),
                        0,
                    ),
                };
                bearer(&self.stranger.sign(&claims))
            }
            Auth::Scheme(scheme) => format!("{scheme}{}", self.token(page)).into_bytes(),
            Auth::Raw(bytes) => bytes
                .iter()
                .copied()
                .filter(|b| !matches!(b, 0 | b'\r' | b'\n'))
                .collect(),
        })
    }

    fn report_json(&self, page: usize, spec: &ReportSpec) -> Value {
        let r = &self.requests[spec.other_page.unwrap_or(page)];
        let run_id = if spec.other_run {
            uuid::Uuid::now_v7().to_string()
        } else {
            r.run_id.clone()
        };
        let mut report = json!({
            "version": spec.version,
            "run_id": run_id,
            "page_id": r.page_id,
            "attempt": i64::from(r.attempt) + spec.attempt_delta,
        });
        let outcome = match &spec.said {
            Said::Succeeded {
                http_status,
                title,
                field,
                sha_ok,
                bytes,
            } => json!({
                "outcome": "succeeded",
                "http_status": http_status,
                "title": title,
                "fields": { "price": field, field.clone(): null },
                "bytes": bytes,
                "content_sha256": if *sha_ok { "ab".repeat(32) } else { field.clone() },
                "fetch_ms": 12,
            }),
            Said::Failed {
                kind,
                message,
                retryable,
            } => json!({
                "outcome": "failed",
                "error": { "kind": kind, "message": message, "retryable": retryable },
            }),
        };
        report
            .as_object_mut()
            .unwrap()
            .extend(outcome.as_object().unwrap().clone());
        report
    }

    fn body(&self, page: usize, spec: &BodySpec) -> Vec<u8> {
        let bytes = |r: &ReportSpec| serde_json::to_vec(&self.report_json(page, r)).unwrap();
        match spec {
            BodySpec::Report(r) => bytes(r),
            BodySpec::BitFlipped { report, flips } => {
                let mut b = bytes(report);
                for (at, x) in flips {
                    let i = at % b.len();
                    b[i] ^= x;
                }
                b
            }
            BodySpec::Truncated { report, keep } => {
                let b = bytes(report);
                b[..keep % b.len()].to_vec()
            }
            BodySpec::InvalidUtf8 { report, at } => {
                // Inside the title or message when there is one, anywhere
                // otherwise.
                let mut b = bytes(report);
                let i = at % b.len();
                b.splice(i..i, [0xff, 0xc3, 0x28]);
                b
            }
            BodySpec::Huge { report, size } => {
                let mut v = self.report_json(page, report);
                v["padding"] = Value::String("x".repeat(*size));
                serde_json::to_vec(&v).unwrap()
            }
            BodySpec::Deep(depth) => {
                let mut b = vec![b'['; *depth];
                b.extend(std::iter::repeat_n(b']', *depth));
                b
            }
            BodySpec::Raw(b) => b.clone(),
            BodySpec::Empty => Vec::new(),
        }
    }
}

/// A fingerprint of the `pages` and `runs` tables: every column of every
/// row.
async fn ledger_fingerprint(pool: &PgPool) -> String {
    sqlx::query_scalar(
        "select md5(coalesce((select string_agg(row_to_json(p)::text, ',' order by p.id) from pages p), '')
                 || '|' ||
                 coalesce((select string_agg(row_to_json(r)::text, ',' order by r.id) from runs r), ''))",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Counts of answers, to show the cases reached every branch.
#[derive(Debug, Default)]
struct Tally {
    recorded: u32,
    duplicate: u32,
    by_status: std::collections::BTreeMap<u16, u32>,
    serve: Duration,
    check: Duration,
}

async fn one_case(
    router: &Router,
    pool: &PgPool,
    target: &Target,
    case: &Case,
    before: &mut String,
    tally: &Mutex<Tally>,
) -> Result<(), TestCaseError> {
    let mut request = Request::post("/v1/callbacks");
    if let Some(auth) = target.authorization(case.page, &case.auth) {
        if let Ok(v) = HeaderValue::from_bytes(&auth) {
            request = request.header("authorization", v);
        }
    }
    if let Some(ct) = &case.content_type {
        request = request.header("content-type", ct);
    }
    let request = request
        .body(Body::from(target.body(case.page, &case.body)))
        .unwrap();
    let t0 = Instant::now();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1024 * 1024)
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    prop_assert!(
        !status.is_server_error(),
        "answered {status} {answer}: the body was {:?}",
        String::from_utf8_lossy(&target.body(case.page, &case.body))
    );
    let t1 = Instant::now();
    let after = ledger_fingerprint(pool).await;
    {
        let mut t = tally.lock().unwrap();
        t.serve += t1 - t0;
        t.check += t1.elapsed();
        *t.by_status.entry(status.as_u16()).or_default() += 1;
        match answer["status"].as_str() {
            Some("recorded") if status == 200 => t.recorded += 1,
            Some("duplicate") if status == 200 => t.duplicate += 1,
            _ => {}
        }
    }
    if status != 200 {
        prop_assert_eq!(
            &after,
            &*before,
            "a refused request ({} {}) changed the ledger",
            status,
            answer
        );
    }
    *before = after;
    Ok(())
}

#[test]
fn no_callback_gets_a_5xx_or_a_panic_and_a_refused_one_changes_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lambda = Arc::new(RecordingLambda::default());
    // One attempt per page and long timeouts: no page is dispatched again
    // and nothing times out while the cases run, so only the requests
    // under test change the ledger.
    let schedule = lambda_schedule(
        "s",
        PAGES,
        None,
        "max_attempts = 1\npage_timeout = \"1h\"\nrun_timeout = \"2h\"\nstuck_after = \"2h\"",
    );
    // `_db` keeps the test database until the test ends.
    let (router, pool, target, app, _db) = rt.block_on(async {
        let db = fresh_database().await;
        let settings =
            Settings::from_toml(&config_toml(&db, &schedule)).unwrap_or_else(|e| panic!("{e}"));
        let overrides = fanfare::startup::Overrides {
            lambda: Some(lambda.clone()),
            ..Default::default()
        };
        let app = fanfare::Application::build_with(settings, overrides)
            .await
            .expect("the application builds");
        let router = fanfare::http::router(app.state());
        let address = format!("http://127.0.0.1:{}", app.port());
        let stop = app.shutdown_token();
        let handle = tokio::spawn(app.run_until_stopped());
        let client = reqwest::Client::new();
        assert!(common::wait_ready(&client, &address, Duration::from_secs(5)).await);
        let run_id = common::trigger(&client, &address, ADMIN_TOKEN, "s").await;
        let requests = lambda.wait_for(PAGES).await;
        let pool = PgPool::connect(&db).await.unwrap();
        // Pages are dispatched before the listing commits: wait for the run
        // to leave `listing`, so the fingerprint below changes only through
        // the fuzz's own requests.
        fanfare_testkit::eventually("the run is listed", Duration::from_secs(20), || async {
            let status: String = sqlx::query_scalar("select status from runs")
                .fetch_one(&pool)
                .await
                .unwrap();
            fanfare_testkit::holds(status != "listing", status)
        })
        .await;
        let target = Target {
            requests,
            run_id,
            signer: TokenSigner::new(SecretString::from(CALLBACK_SECRET)),
            stranger: TokenSigner::new(SecretString::from("a-stranger-key-0123456789abcdefgh")),
        };
        (router, pool, target, (stop, handle), db)
    });

    let before = Mutex::new(rt.block_on(ledger_fingerprint(&pool)));
    let tally = Mutex::new(Tally::default());
    let cases = cases();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let started = Instant::now();
    let result = runner.run(&case(PAGES), |case| {
        let mut before = before.lock().unwrap();
        rt.block_on(one_case(
            &router,
            &pool,
            &target,
            &case,
            &mut before,
            &tally,
        ))
    });
    let elapsed = started.elapsed();
    let tally = tally.into_inner().unwrap();
    eprintln!(
        "callback fuzz: {cases} cases in {:.1} s ({:.0} cases/s; {:.1} s answering, {:.1} s checking the ledger); answers {:?}; {} recorded, {} duplicate",
        elapsed.as_secs_f64(),
        f64::from(cases) / elapsed.as_secs_f64(),
        tally.serve.as_secs_f64(),
        tally.check.as_secs_f64(),
        tally.by_status,
        tally.recorded,
        tally.duplicate,
    );
    let (stop, handle) = app;
    stop.cancel();
    rt.block_on(handle).unwrap().unwrap();
    if let Err(e) = result {
        panic!("{e}");
    }
    // The cases reached the ledger, not only the refusals.
    assert!(tally.recorded > 0, "{tally:?}");
    assert!(
        tally.by_status.get(&401).copied().unwrap_or(0) > 0,
        "{tally:?}"
    );
}
