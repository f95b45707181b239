//! The web console at the HTTP level: sessions, CSRF, escaping, the
//! security headers, live events. (tests/console drives it in a browser.)

use std::sync::Arc;
use std::time::Duration;

use fanfare::http::ui::session::{SessionKey, COOKIE};
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE as COOKIE_HEADER, LOCATION, SET_COOKIE};

use crate::helpers::*;

/// A client that does not follow redirects, so their targets can be checked.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `token`; returns the answer.
async fn sign_in(app: &TestApp, token: &str) -> reqwest::Response {
    client()
        .post(format!("{}/ui/login", app.address))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
}

/// Signs in with the admin token; returns the session cookie's value.
pub(crate) async fn session(app: &TestApp) -> String {
    let resp = sign_in(app, ADMIN_TOKEN).await;
    assert_eq!(resp.status(), 303);
    let set = resp.headers()[SET_COOKIE].to_str().unwrap().to_string();
    let value = set
        .strip_prefix(&format!("{COOKIE}="))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("a session cookie: {set}"));
    value.to_string()
}

/// GETs a console page with `cookie`; returns (status, headers, body).
pub(crate) async fn page(
    app: &TestApp,
    cookie: Option<&str>,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = client().get(format!("{}{path}", app.address));
    if let Some(c) = cookie {
        req = req.header(COOKIE_HEADER, format!("{COOKIE}={c}"));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

/// POSTs a console form with `cookie` and these fields; returns the answer.
async fn form_answer(
    app: &TestApp,
    cookie: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    client()
        .post(format!("{}{path}", app.address))
        .header(COOKIE_HEADER, format!("{COOKIE}={cookie}"))
        .form(fields)
        .send()
        .await
        .unwrap()
}

/// POSTs a console form with `cookie` and these fields; returns (status, Location).
async fn post_form(
    app: &TestApp,
    cookie: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> (u16, String) {
    let resp = form_answer(app, cookie, path, fields).await;
    let location = resp
        .headers()
        .get(LOCATION)
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default();
    (resp.status().as_u16(), location)
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .unwrap_or_else(|| panic!("a form with a CSRF token in {html}"));
    let rest = &html[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Signs in to a new session and opens `path` in it; returns the session
/// cookie and the page's CSRF token.
async fn signed_in_at(app: &TestApp, path: &str) -> (String, String) {
    let cookie = session(app).await;
    let (status, _, html) = page(app, Some(&cookie), path).await;
    assert_eq!(status, 200, "{path}: {html}");
    let csrf = csrf_of(&html);
    (cookie, csrf)
}

async fn run_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from runs")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn without_a_session_every_console_page_redirects_to_the_sign_in() {
    let app = app_with_one_lambda_page().await;
    let run = uuid::Uuid::now_v7();
    for (path, next) in [
        ("/ui/", "%2Fui%2F"),
        ("/ui/runs?status=failed", "%2Fui%2Fruns%3Fstatus%3Dfailed"),
        (&format!("/ui/runs/{run}"), &format!("%2Fui%2Fruns%2F{run}")),
    ] {
        let (status, headers, _) = page(&app, None, path).await;
        assert_eq!(status, 303, "{path}");
        assert_eq!(
            headers[LOCATION],
            format!("/ui/login?next={next}").as_str(),
            "{path}"
        );
    }
    for path in ["/ui/schedules/s/trigger", "/ui/logout"] {
        let resp = client()
            .post(format!("{}{path}", app.address))
            .form(&[("csrf", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303, "{path}");
        assert_eq!(resp.headers()[LOCATION], "/ui/login", "{path}");
    }
    assert_eq!(run_count(&app).await, 0, "no refused form started a run");

    // The sign-in itself: one input named token, the policy, no inline script.
    let (status, headers, body) = page(&app, None, "/ui/login").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#"name="token""#), "{body}");
    let csp = headers[CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(!body.contains("<script>"), "only external scripts: {body}");
    assert!(!body.contains("style="), "no inline styles: {body}");
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_admin_token_gets_a_401_page_and_no_session() {
    let app = app_with_one_lambda_page().await;
    let wrong = "not-the-admin-token-but-just-as-long-00000";
    for token in [wrong, "", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]] {
        let resp = sign_in(&app, token).await;
        assert_eq!(resp.status(), 401, "{token:?}");
        assert!(resp.headers().get(SET_COOKIE).is_none(), "{token:?}");
        let body = resp.text().await.unwrap();
        assert!(body.contains("That token was not accepted."), "{body}");
        assert!(!body.contains(wrong), "the token is not echoed");
    }
    // The right one gets a session that opens the console.
    let resp = sign_in(&app, ADMIN_TOKEN).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()[LOCATION], "/ui/");
    let set = resp.headers()[SET_COOKIE].to_str().unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    assert!(!set.contains("Secure"), "plain http here: {set}");
    app.stop().await;
}

#[tokio::test]
async fn the_session_cookie_is_secure_when_the_console_is_served_over_https() {
    let app = app_with_one_lambda_page_and(|s| {
        s.server.public_url = "https://fanfare.example.com".parse().unwrap()
    })
    .await;
    let resp = sign_in(&app, ADMIN_TOKEN).await;
    assert_eq!(resp.status(), 303);
    let set = resp.headers()[SET_COOKIE].to_str().unwrap();
    assert!(set.contains("; Secure"), "{set}");
    app.stop().await;
}

#[tokio::test]
async fn forged_edited_and_expired_session_cookies_are_sent_to_the_sign_in() {
    let app = app_with_one_lambda_page().await;
    let genuine = session(&app).await;
    let (status, _, body) = page(&app, Some(&genuine), "/ui/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#"data-schedule="s""#), "{body}");

    let now = chrono::Utc::now();
    let other_key = SessionKey::derive("some-other-admin-token-0123456789abcdef");
    let ours = SessionKey::derive(ADMIN_TOKEN);
    let expired = ours.issue(now - chrono::Duration::hours(13));
    let (body_part, _) = genuine.rsplit_once('.').unwrap();
    let edited = format!("{body_part}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    for (what, cookie) in [
        ("signed under another admin token", other_key.issue(now)),
        ("expired", expired),
        ("with a wrong signature", edited),
        ("garbage", "garbage".to_string()),
    ] {
        let (status, headers, _) = page(&app, Some(&cookie), "/ui/").await;
        assert_eq!(status, 303, "a cookie {what}");
        assert_eq!(headers[LOCATION], "/ui/login?next=%2Fui%2F", "{what}");
    }
    app.stop().await;
}

#[tokio::test]
async fn forms_without_their_csrf_token_are_refused_and_change_nothing() {
    let app = app_with_one_lambda_page().await;
    let (cookie, csrf) = signed_in_at(&app, "/ui/").await;
    // Another session's token is no good for this one.
    let (_, other_csrf) = signed_in_at(&app, "/ui/").await;
    assert_ne!(csrf, other_csrf);

    for fields in [
        vec![],
        vec![("csrf", "")],
        vec![("csrf", other_csrf.as_str())],
    ] {
        for action in ["trigger", "pause"] {
            let (status, _) =
                post_form(&app, &cookie, &format!("/ui/schedules/s/{action}"), &fields).await;
            assert_eq!(status, 403, "{action} with {fields:?}");
        }
    }
    assert_eq!(run_count(&app).await, 0, "no refused trigger started a run");
    let paused: Option<bool> = sqlx::query_scalar("select paused from schedule_state")
        .fetch_optional(&app.pool)
        .await
        .unwrap();
    assert_eq!(paused, None, "no refused pause paused anything");

    // With the token: the same calls as the admin API, then a redirect.
    let (status, location) =
        post_form(&app, &cookie, "/ui/schedules/s/pause", &[("csrf", &csrf)]).await;
    assert_eq!((status, location.as_str()), (303, "/ui/"));
    let (_, _, overview) = page(&app, Some(&cookie), "/ui/").await;
    assert!(overview.contains(r#"data-action="resume""#), "{overview}");
    let (status, location) =
        post_form(&app, &cookie, "/ui/schedules/s/trigger", &[("csrf", &csrf)]).await;
    assert_eq!(status, 303);
    let run: uuid::Uuid = location
        .strip_prefix("/ui/runs/")
        .unwrap_or_else(|| panic!("to the run's page: {location}"))
        .parse()
        .unwrap();
    let (status, body) = app.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["trigger"], "manual", "{body}");
    let (status, _) = post_form(
        &app,
        &cookie,
        "/ui/schedules/nope/trigger",
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(status, 404);

    // Sign-out needs the token too, and deletes the cookie.
    let (status, _) = post_form(&app, &cookie, "/ui/logout", &[]).await;
    assert_eq!(status, 403);
    let resp = form_answer(&app, &cookie, "/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()[LOCATION], "/ui/login");
    let set = resp.headers()[SET_COOKIE].to_str().unwrap();
    assert!(
        set.starts_with(&format!("{COOKIE}=;")) && set.contains("Max-Age=0"),
        "{set}"
    );
    app.stop().await;
}

#[tokio::test]
async fn text_from_page_lists_and_crawlers_is_escaped_in_the_console() {
    // A JSON page list on loopback with an entry that is not a URL.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let list_url = format!("http://{}/pages.json", listener.local_addr().unwrap());
    let list = axum::Router::new().route(
        "/pages.json",
        axum::routing::get(|| async {
            axum::Json(serde_json::json!([
                "http://127.0.0.1:9/p/1",
                "<script>alert('listed')</script>"
            ]))
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, list).await });
    let lambda = Arc::new(RecordingLambda::default());
    let schedule = schedule("s")
        .lambda("crawler-fn")
        .pages(&format!(r#"{{ http = "{list_url}" }}"#))
        .to_string();
    let app = TestApp::spawn(&schedule, Some(lambda.clone())).await;
    let run = app.trigger("s").await;
    let request = lambda.wait_for(1).await.remove(0);
    let mut report = failed(&request, false);
    report["error"]["message"] = "<script>alert('crawled')</script> & more".into();
    let (status, _) = app
        .post_report(Some(&request.callback_token), &report)
        .await;
    assert_eq!(status, 200);
    app.wait_finished(run, Duration::from_secs(10)).await;
    // The ledger holds the text as it came.
    let (_, api) = app.get(&format!("/v1/runs/{run}")).await;
    assert!(
        api["listing"]
            .to_string()
            .contains("<script>alert('listed')"),
        "{api}"
    );

    let cookie = session(&app).await;
    let (status, headers, body) = page(&app, Some(&cookie), &format!("/ui/runs/{run}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(headers[CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    assert!(
        body.contains("&lt;script&gt;alert('crawled')&lt;/script&gt; &amp; more"),
        "the crawler's message, escaped: {body}"
    );
    assert!(
        body.contains("&lt;script&gt;alert('listed')&lt;/script&gt;"),
        "the invalid listing entry, escaped: {body}"
    );
    assert!(!body.contains("<script>alert"), "{body}");
    assert!(
        body.contains("http://127.0.0.1:9/p/1"),
        "the failed page's URL: {body}"
    );
    app.stop().await;
    server.abort();
}

#[tokio::test]
async fn a_finished_runs_event_stream_sends_its_counts_once_and_ends() {
    let (app, lambda) = TestApp::spawn_recording(&lambda_schedule("s", 2, None, "")).await;
    let run = app.trigger("s").await;
    let cookie = session(&app).await;
    let requests = lambda.wait_for(2).await;
    // While open, progress events with the counts so far.
    app.report_success(&requests[0]).await;
    let mut open = client()
        .get(format!("{}/ui/runs/{run}/events", app.address))
        .header(COOKIE_HEADER, format!("{COOKIE}={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    assert!(open.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let first = String::from_utf8(open.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(first.starts_with("event: progress\n"), "{first}");
    assert!(
        first.contains(r#""succeeded":1"#) && first.contains(r#""open":1"#),
        "{first}"
    );
    drop(open);

    app.report_success(&requests[1]).await;
    app.wait_finished(run, Duration::from_secs(10)).await;
    let done = tokio::time::timeout(
        Duration::from_secs(10),
        page(&app, Some(&cookie), &format!("/ui/runs/{run}/events")),
    )
    .await
    .expect("the stream of a finished run ends");
    assert_eq!(done.0, 200);
    assert_eq!(done.2.matches("event: ").count(), 1, "{}", done.2);
    assert!(done.2.starts_with("event: done\n"), "{}", done.2);
    assert!(
        done.2.contains(r#""succeeded":2"#) && done.2.contains(r#""status":"finished""#),
        "{}",
        done.2
    );
    app.stop().await;
}

#[tokio::test]
async fn the_run_page_shows_what_changed_since_the_previous_run() {
    let (app, shop, run1, run2) = crate::changes::two_runs_of_a_changing_shop().await;
    let cookie = session(&app).await;

    let (status, _, body) = page(&app, Some(&cookie), &format!("/ui/runs/{run1}")).await;
    assert_eq!(status, 200);
    assert!(body.contains("Not compared"), "{body}");
    assert!(!body.contains(r#"data-table="changes""#), "{body}");

    let (status, _, body) = page(&app, Some(&cookie), &format!("/ui/runs/{run2}")).await;
    assert_eq!(status, 200);
    for (kind, n) in [
        ("new", 1),
        ("changed", 1),
        ("gone", 2),
        ("unchanged", 1),
        ("unknown", 0),
    ] {
        assert!(
            body.contains(&format!(r#"data-change-count="{kind}">{n}<"#)),
            "{kind} {n}: {body}"
        );
    }
    assert!(
        body.contains(&format!("/ui/runs/{run1}")),
        "links the run compared with"
    );
    let table = &body[body
        .find(r#"data-table="changes""#)
        .expect("a changes table")..];
    let table = &table[..table.find("</table>").unwrap()];
    let rows: Vec<String> = table
        .split("<tr>")
        .skip(2)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let text = &cell[cell.find('>').unwrap() + 1..];
                    text[..text.find("</td>").unwrap()].to_string()
                })
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect();
    assert_eq!(
        rows,
        [
            format!("changed | {} | price: 20 | price: 25", shop.url("b")),
            format!("gone | {} | title: Product d; price: 40 | —", shop.url("d")),
            format!("new | {} | — | title: Product e; price: 50", shop.url("e")),
            format!("gone | {} | title: Product c; price: 30 | —", shop.url("c")),
        ],
        "{table}"
    );
    app.stop().await;
}

/// One event stream of a run, read an event at a time.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    /// Opens `/ui/runs/{run}/events` with `cookie`; the answer must be 200.
    async fn open(app: &TestApp, cookie: &str, run: uuid::Uuid) -> Self {
        let response = events_answer(app, cookie, run).await;
        assert_eq!(response.status(), 200, "an event stream of run {run}");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event as (name, data), comments skipped; `None` once the
    /// stream has ended. Panics, naming `what`, after 10 s without one.
    async fn next(&mut self, what: &str) -> Option<(String, String)> {
        let within = Duration::from_secs(10);
        tokio::time::timeout(within, async {
            loop {
                if let Some(at) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..at + 2).collect();
                    let mut name = None;
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event: ") {
                            name = Some(v.to_string());
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            data.push_str(v);
                        }
                    }
                    match name {
                        Some(name) => return Some((name, data)),
                        None => continue,
                    }
                }
                match self.response.chunk().await.expect("the stream reads") {
                    Some(chunk) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                    None => return None,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {within:?}"))
    }
}

/// GETs the event stream of `run` with `cookie`; returns the answer as it
/// starts.
async fn events_answer(app: &TestApp, cookie: &str, run: uuid::Uuid) -> reqwest::Response {
    client()
        .get(format!("{}/ui/runs/{run}/events", app.address))
        .header(COOKIE_HEADER, format!("{COOKIE}={cookie}"))
        .send()
        .await
        .unwrap()
}

/// Transactions committed in the test's database so far, as Postgres counts
/// them (every `get_run` of the daemon is one).
async fn commits(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "select xact_commit from pg_stat_database where datname = current_database()",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn many_streams_of_an_open_run_share_one_read_of_it_per_second() {
    let (app, lambda) = lambda_app_with(2, |s| s.server.max_event_streams_per_session = 100).await;
    let run = app.trigger("s").await;
    lambda.wait_for(2).await;
    app.wait_listed(run, Duration::from_secs(10)).await;
    let cookie = session(&app).await;
    const WINDOW: usize = 5;
    const STREAMS: usize = 40;
    // Postgres counts a backend's transactions when it flushes its
    // statistics, at the latest 10 s after them (PGSTAT_IDLE_INTERVAL): the
    // windows start once the start-up's have been counted.
    const SETTLE: usize = 11;

    // One stream: the daemon's transactions over WINDOW of its events.
    let mut first = Events::open(&app, &cookie, run).await;
    for _ in 0..SETTLE {
        first.next("a progress event while the counts settle").await;
    }
    let before = commits(&app).await;
    for _ in 0..WINDOW {
        first.next("a progress event of the only stream").await;
    }
    let alone = commits(&app).await - before;

    // Forty: as many over as many events.
    let mut others = Vec::new();
    for _ in 1..STREAMS {
        let mut stream = Events::open(&app, &cookie, run).await;
        let (name, _) = stream.next("another stream's first event").await.unwrap();
        assert_eq!(name, "progress");
        others.push(stream);
    }
    // The newest stream keeps time: it has no events queued from before.
    let clock = others.last_mut().unwrap();
    let before = commits(&app).await;
    for _ in 0..WINDOW {
        clock.next("a progress event among forty streams").await;
    }
    let together = commits(&app).await - before;
    // Reading the run once per stream would add (STREAMS - 1) * WINDOW
    // (195); sharing adds none, give or take the other work's counts that
    // Postgres had not flushed when a window began or ended.
    let allowed = ((STREAMS - 1) * WINDOW / 4) as i64;
    assert!(
        together - alone <= allowed,
        "{STREAMS} streams: {together} transactions over {WINDOW} events, one stream: {alone} (at most {allowed} more)"
    );
    for stream in std::iter::once(&mut first).chain(&mut others) {
        let (name, data) = stream.next("every stream's progress").await.unwrap();
        assert_eq!(name, "progress");
        assert!(data.contains(r#""open":2"#), "{data}");
    }
    assert_eq!(
        app.metric("fanfare_console_event_streams", "").await,
        STREAMS as f64
    );
    app.stop().await;
}

#[tokio::test]
async fn streams_beyond_a_sessions_or_the_replicas_limit_are_answered_429() {
    let (app, lambda) = lambda_app_with(1, |s| {
        s.server.max_event_streams_per_session = 3;
        s.server.max_event_streams = 4;
    })
    .await;
    let run = app.trigger("s").await;
    lambda.wait_for(1).await;
    let (a, b) = (session(&app).await, session(&app).await);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Events::open(&app, &a, run).await);
    }
    let refused = events_answer(&app, &a, run).await;
    assert_eq!(refused.status(), 429, "the session's fourth stream");
    assert_eq!(refused.headers()["retry-after"], "30");
    // Another session still has room, until the replica is full.
    open.push(Events::open(&app, &b, run).await);
    let refused = events_answer(&app, &b, run).await;
    assert_eq!(refused.status(), 429, "the replica's fifth stream");
    assert_eq!(
        app.metric(
            "fanfare_console_event_streams_refused_total",
            r#"limit="session""#
        )
        .await,
        1.0
    );
    assert_eq!(
        app.metric(
            "fanfare_console_event_streams_refused_total",
            r#"limit="replica""#
        )
        .await,
        1.0
    );
    // The pages work without live updates.
    let (status, _, body) = page(&app, Some(&a), &format!("/ui/runs/{run}")).await;
    assert_eq!(status, 200);
    assert!(body.contains("http-equiv=\"refresh\""), "{body}");

    // A stream whose client leaves gives its place back.
    drop(open.remove(0));
    streams_open(&app, 3.0, "the closed stream's place given back").await;
    let _again = Events::open(&app, &a, run).await;
    // A run that does not exist is a 404, and holds no place.
    let missing = uuid::Uuid::now_v7();
    drop(open.remove(0));
    streams_open(&app, 3.0, "the second closed stream's place given back").await;
    assert_eq!(events_answer(&app, &b, missing).await.status(), 404);
    assert_eq!(app.metric("fanfare_console_event_streams", "").await, 3.0);
    app.stop().await;
}

#[tokio::test]
async fn every_stream_of_a_run_ends_with_one_done_event_when_the_run_finishes() {
    let (app, _, run, requests) = dispatched_run("s", 2).await;
    app.report_success(&requests[0]).await;
    let (a, b) = (session(&app).await, session(&app).await);
    let mut streams = Vec::new();
    for cookie in [&a, &a, &b] {
        let mut stream = Events::open(&app, cookie, run).await;
        let (name, _) = stream.next("a progress event").await.unwrap();
        assert_eq!(name, "progress");
        streams.push(stream);
    }

    app.report_success(&requests[1]).await;
    for stream in &mut streams {
        let mut last = None;
        while let Some((name, data)) = stream.next("the stream's end").await {
            assert!(last.is_none(), "nothing after done: {name} {data}");
            if name == "done" {
                last = Some(data);
            } else {
                assert_eq!(name, "progress");
            }
        }
        let done = last.expect("a done event before the end");
        assert!(
            done.contains(r#""succeeded":2"#) && done.contains(r#""status":"finished""#),
            "{done}"
        );
    }
    streams_open(&app, 0.0, "every ended stream's place given back").await;
    app.stop().await;
}

#[tokio::test]
async fn the_consoles_csv_download_neutralises_formulas_from_page_titles() {
    let app = app_with_one_lambda_page().await;
    let run_id = crate::results::finished_run_with_titles(
        &app.pool,
        &[("=HYPERLINK(\"http://evil.example\",\"Click\")", "@x")],
    )
    .await;
    let cookie = session(&app).await;
    let csv = |query: &'static str| {
        let (app, cookie) = (&app, &cookie);
        async move {
            let path = format!("/ui/runs/{run_id}/results.csv{query}");
            let (status, _, body) = page(app, Some(cookie), &path).await;
            assert_eq!(status, 200, "{path}: {body}");
            body
        }
    };
    let body = csv("").await;
    let mut rows = csv::Reader::from_reader(body.as_bytes());
    let row = rows.records().next().unwrap().unwrap();
    assert_eq!(&row[3], "'=HYPERLINK(\"http://evil.example\",\"Click\")");
    assert_eq!(&row[4], "'@x");
    let body = csv("?cells=raw").await;
    assert!(body.contains(",\"=HYPERLINK("), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_sign_in_goes_back_only_to_a_normalised_console_path() {
    let app = app_with_one_lambda_page().await;
    for (next, want) in [
        ("/ui/runs?status=failed", "/ui/runs?status=failed"),
        ("/ui/runs/x/../", "/ui/runs/"),
        ("/ui/../evil", "/ui/"),
        ("/ui/%2e%2e/evil", "/ui/"),
        ("/ui/.%2E/%2e%2e/evil", "/ui/"),
        ("/ui/..%2fevil", "/ui/"),
        ("/ui/%5c%5cevil.example", "/ui/"),
        ("/ui\\..\\evil", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
    ] {
        let resp = client()
            .post(format!("{}/ui/login", app.address))
            .form(&[("token", ADMIN_TOKEN), ("next", next)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303, "{next}");
        assert_eq!(resp.headers()[LOCATION], want, "{next}");
        // The sign-in page carries only a normalised console path on.
        let (status, _, body) =
            page(&app, None, &format!("/ui/login?next={}", query_value(next))).await;
        assert_eq!(status, 200, "{next}");
        if want == "/ui/" {
            assert!(!body.contains(r#"name="next""#), "{next}: {body}");
        }
    }
    app.stop().await;
}

/// `s` percent-encoded for a query string.
fn query_value(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn a_second_redrive_from_the_console_while_the_first_is_open_is_refused() {
    let (app, lambda) = TestApp::spawn_recording(&lambda_schedule("s", 1, None, "")).await;
    let run = app.trigger("s").await;
    let r = lambda.wait_for(1).await.remove(0);
    app.post_report(Some(&r.callback_token), &failed(&r, false))
        .await;
    app.wait_finished(run, Duration::from_secs(5)).await;
    let (cookie, csrf) = signed_in_at(&app, &format!("/ui/runs/{run}")).await;
    let path = format!("/ui/runs/{run}/redrive");
    let (status, location) = post_form(&app, &cookie, &path, &[("csrf", &csrf)]).await;
    assert_eq!(status, 303);
    assert!(location.starts_with("/ui/runs/"), "{location}");
    let resp = form_answer(&app, &cookie, &path, &[("csrf", &csrf)]).await;
    assert_eq!(resp.status(), 409);
    let body = resp.text().await.unwrap();
    assert!(body.contains("is being redriven already"), "{body}");
    assert!(body.contains(&location["/ui/runs/".len()..]), "{body}");
    assert_eq!(run_count(&app).await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_signed_out_session_and_its_csrf_token_are_refused_by_every_replica() {
    let schedule = lambda_schedule("s", 1, None, "");
    let lambda: Arc<RecordingLambda> = Arc::new(RecordingLambda::default());
    let a = TestApp::spawn(&schedule, Some(lambda.clone())).await;
    let b = TestApp::spawn_on(&a.database, &schedule, Some(lambda.clone())).await;
    // A revocation whose session has expired: deleted by the next sign-out.
    sqlx::query(
        "insert into revoked_console_sessions (nonce, expires_at)
         values ('expired-nonce', now() - interval '1 minute')",
    )
    .execute(&a.pool)
    .await
    .unwrap();

    let cookie = session(&a).await;
    let other = session(&a).await;
    for app in [&a, &b] {
        let (status, _, body) = page(app, Some(&cookie), "/ui/").await;
        assert_eq!(status, 200, "the session opens both replicas: {body}");
    }
    let (_, _, html) = page(&b, Some(&cookie), "/ui/").await;
    let csrf = csrf_of(&html);

    let (status, location) = post_form(&a, &cookie, "/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!((status, location.as_str()), (303, "/ui/login"));

    // The replica that signed it out refuses it at once; the other once it
    // reads the list again (within a few seconds).
    let (status, headers, _) = page(&a, Some(&cookie), "/ui/").await;
    assert_eq!(status, 303);
    assert_eq!(headers[LOCATION], "/ui/login?next=%2Fui%2F");
    eventually(
        "the other replica refuses the signed-out session",
        secs(15),
        || async {
            let (status, _, _) = page(&b, Some(&cookie), "/ui/").await;
            holds(status == 303, format!("/ui/ answered {status}"))
        },
    )
    .await;
    // Its CSRF token is worthless with it, on both replicas.
    for app in [&a, &b] {
        let (status, location) =
            post_form(app, &cookie, "/ui/schedules/s/trigger", &[("csrf", &csrf)]).await;
        assert_eq!((status, location.as_str()), (303, "/ui/login"));
        // The sign-in page does not take it for a signed-in browser either.
        let (status, _, body) = page(app, Some(&cookie), "/ui/login").await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(run_count(&a).await, 0, "no run was started with it");
    // Other sessions are untouched.
    let (status, _, _) = page(&b, Some(&other), "/ui/").await;
    assert_eq!(status, 200);

    let nonces: Vec<String> = sqlx::query_scalar("select nonce from revoked_console_sessions")
        .fetch_all(&a.pool)
        .await
        .unwrap();
    assert_eq!(
        nonces.len(),
        1,
        "the expired revocation is gone: {nonces:?}"
    );
    assert!(
        cookie.contains(&format!(".{}.", nonces[0])),
        "{cookie} {nonces:?}"
    );
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn console_actions_on_an_unknown_run_or_schedule_are_404_and_on_a_finished_run_409() {
    let (app, run) = app_with_a_finished_run().await;
    let (cookie, csrf) = signed_in_at(&app, &format!("/ui/runs/{run}")).await;
    for (action, status, _, says) in refused_actions(run) {
        let path = format!("/ui/{action}");
        let resp = form_answer(&app, &cookie, &path, &[("csrf", &csrf)]).await;
        let got = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
    assert_eq!(run_count(&app).await, 1, "no refused action started a run");
    app.stop().await;
}

/// Waits until `n` console event streams are open on `app`, failing with
/// `why` after 10 s.
async fn streams_open(app: &TestApp, n: f64, why: &str) {
    app.wait_for_metric(
        "fanfare_console_event_streams",
        "",
        Duration::from_secs(10),
        why,
        |open| open == n,
    )
    .await;
}
