//! Per-host politeness against loopback sites that record what they see:
//! how many requests are open at once, when each came and with which
//! `User-Agent`. The in-process crawler fetches the pages; robots.txt is
//! obeyed and the per-host limits apply as in production (the test kit's
//! `[politeness]` defaults, which switch both off for the other tests, are
//! overridden per schedule here).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::helpers::{secs, TestApp};

/// What a request to the site looked like.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    at: Instant,
    user_agent: String,
}

/// How the site answers.
#[derive(Default)]
struct Behaviour {
    /// robots.txt: status and body; 404 when unset.
    robots: Option<(u16, String)>,
    /// How long a page takes.
    page_delay: Duration,
    /// The first request of each of pages `/t/1` to `/t/N` gets 429 with
    /// `Retry-After: 2`.
    throttle_first: usize,
}

/// A loopback site that records every request and the most requests it
/// had open at once.
struct Site {
    base: String,
    behaviour: Behaviour,
    seen: Mutex<Vec<Seen>>,
    open: AtomicUsize,
    most_open: AtomicUsize,
    throttled: Mutex<Vec<String>>,
}

impl Site {
    async fn start(behaviour: Behaviour) -> Arc<Self> {
        let (listener, base) = fanfare_testkit::net::loopback().await;
        let site = Arc::new(Site {
            base,
            behaviour,
            seen: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            most_open: AtomicUsize::new(0),
            throttled: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(serve).with_state(site.clone());
        fanfare_testkit::net::serve_on(listener, app);
        site
    }

    /// A site whose robots.txt answers `status` with `body`.
    async fn with_robots(status: u16, body: impl Into<String>) -> Arc<Self> {
        Self::start(Behaviour {
            robots: Some((status, body.into())),
            ..Behaviour::default()
        })
        .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The URLs of pages `prefix/1` to `prefix/n`.
    fn urls(&self, prefix: &str, n: usize) -> Vec<String> {
        (1..=n)
            .map(|i| self.url(&format!("{prefix}/{i}")))
            .collect()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many times robots.txt was asked for.
    fn robots_requests(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.path == "/robots.txt")
            .count()
    }

    fn page_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path != "/robots.txt")
            .collect()
    }
}

async fn serve(State(site): State<Arc<Site>>, headers: HeaderMap, request: Request) -> Response {
    let path = request.uri().path().to_string();
    site.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        at: Instant::now(),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    });
    if path == "/robots.txt" {
        return match &site.behaviour.robots {
            Some((status, body)) => {
                (StatusCode::from_u16(*status).unwrap(), body.clone()).into_response()
            }
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    let open = site.open.fetch_add(1, Ordering::SeqCst) + 1;
    site.most_open.fetch_max(open, Ordering::SeqCst);
    let throttle = path
        .strip_prefix("/t/")
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| n <= site.behaviour.throttle_first)
        && {
            let mut throttled = site.throttled.lock().unwrap();
            let first = !throttled.contains(&path);
            if first {
                throttled.push(path.clone());
            }
            first
        };
    let response = if throttle {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "2")],
            "slow down",
        )
            .into_response()
    } else {
        tokio::time::sleep(site.behaviour.page_delay).await;
        (
            [(header::CONTENT_TYPE, "text/html")],
            format!(
                "<html><head><title>{path}</title></head><body><p class=price>10</p></body></html>"
            ),
        )
            .into_response()
    };
    site.open.fetch_sub(1, Ordering::SeqCst);
    response
}

/// A schedule of `urls` crawled in-process, with `extra` keys.
fn schedule(name: &str, urls: &[String], extra: &str) -> String {
    fanfare_testkit::schedule(name)
        .urls(urls)
        .key("max_in_flight", 1000)
        .raw(extra)
        .to_string()
}

/// Starts the application with the schedule `name` over `urls` (keys
/// `extra`) and runs it once, for at most `within_secs`; returns the app, the run and its view.
async fn crawl_once(
    name: &str,
    urls: &[String],
    extra: &str,
    within_secs: u64,
) -> (TestApp, uuid::Uuid, serde_json::Value) {
    let app = TestApp::spawn(&schedule(name, urls, extra), None).await;
    let (run, finished) = app.run_once(name, secs(within_secs)).await;
    (app, run, finished)
}

#[tokio::test]
async fn the_stricter_per_host_limit_holds_across_two_schedules_and_two_replicas() {
    let site = Site::start(Behaviour {
        page_delay: Duration::from_millis(150),
        ..Behaviour::default()
    })
    .await;
    let many = site.urls("/b", 40);
    let few = site.urls("/a", 10);
    let schedules = format!(
        "{}{}",
        schedule("loose", &few, "per_host_in_flight = 4"),
        schedule("strict", &many, "per_host_in_flight = 2"),
    );
    let first = TestApp::spawn(&schedules, None).await;
    let second = TestApp::spawn_on(&first.database, &schedules, None).await;
    // The strict run starts first and outlives the loose one: while both
    // crawl the host, the host's limit is the strict run's 2.
    let strict = first.trigger("strict").await;
    first.wait_listed(strict, Duration::from_secs(10)).await;
    let loose = second.trigger("loose").await;

    let mut waiting_seen = 0.0f64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        waiting_seen = waiting_seen
            .max(
                first
                    .metric("fanfare_pages_waiting_on_host", "schedule=\"strict\"")
                    .await,
            )
            .max(
                second
                    .metric("fanfare_pages_waiting_on_host", "schedule=\"strict\"")
                    .await,
            );
        let (_, run) = first.get(&format!("/v1/runs/{strict}")).await;
        if run["status"] == "finished" || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let strict_run = first.wait_finished(strict, Duration::from_secs(5)).await;
    let loose_run = first.wait_finished(loose, Duration::from_secs(30)).await;
    assert_eq!(strict_run["pages"]["succeeded"], 40, "{strict_run:#}");
    assert_eq!(loose_run["pages"]["succeeded"], 10, "{loose_run:#}");
    let most = site.most_open.load(Ordering::SeqCst);
    assert_eq!(
        most, 2,
        "the host had {most} pages open at once; the strictest limit is 2"
    );
    assert!(
        waiting_seen > 0.0,
        "fanfare_pages_waiting_on_host never counted the pages held back by the host limit"
    );
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn crawl_delay_spaces_the_dispatches_to_a_host() {
    let site = Site::with_robots(200, "User-agent: *\nCrawl-delay: 1\n").await;
    let urls = site.urls("/p", 4);
    let (app, _, finished) = crawl_once("delayed", &urls, "obey_robots = true", 30).await;
    assert_eq!(finished["pages"]["succeeded"], 4, "{finished:#}");
    let mut times: Vec<Instant> = site.page_requests().iter().map(|s| s.at).collect();
    times.sort();
    assert_eq!(times.len(), 4);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        // Dispatch times are a second apart; the crawl adds its own jitter.
        assert!(
            gap >= Duration::from_millis(900),
            "two requests {gap:?} apart; Crawl-delay is 1 s"
        );
    }
    let robots = site.robots_requests();
    assert_eq!(robots, 1, "robots.txt is read once per run");
    app.stop().await;
}

#[tokio::test]
async fn robots_txt_disallows_are_left_out_and_never_requested() {
    let site = Site::start(Behaviour {
        robots: Some((
            200,
            "User-agent: fanfare-crawler\nDisallow: /private\n\nUser-agent: acme-bot\nDisallow: /\n\nUser-agent: *\nDisallow: /pub\n".into(),
        )),
        ..Behaviour::default()
    })
    .await;
    let mut urls = site.urls("/pub", 3);
    urls.extend(site.urls("/private", 2));
    let schedules = format!(
        "{}{}",
        schedule("ours", &urls, "obey_robots = true"),
        schedule(
            "acme",
            &urls,
            "obey_robots = true\nuser_agent = \"acme-bot/2.0 (+https://acme.example/bot)\""
        ),
    );
    let app = TestApp::spawn(&schedules, None).await;

    // Our group disallows /private only.
    let (_, finished) = app.run_once("ours", Duration::from_secs(20)).await;
    assert_eq!(finished["pages"]["total"], 3, "{finished:#}");
    assert_eq!(finished["pages"]["succeeded"], 3, "{finished:#}");
    let listing = &finished["listing"];
    assert_eq!(listing["disallowed_by_robots"], 2, "{listing:#}");
    assert_eq!(
        listing["disallowed_examples"],
        serde_json::json!([site.url("/private/1"), site.url("/private/2")])
    );
    let requested: Vec<String> = site.page_requests().into_iter().map(|s| s.path).collect();
    assert!(
        requested.iter().all(|p| p.starts_with("/pub/")),
        "the site saw {requested:?}"
    );
    assert!(site
        .page_requests()
        .iter()
        .all(|s| s.user_agent.starts_with("fanfare-crawler/")));

    // acme-bot's group disallows everything: nothing is crawled.
    let (_, finished) = app.run_once("acme", Duration::from_secs(20)).await;
    assert_eq!(finished["pages"]["total"], 0, "{finished:#}");
    assert_eq!(finished["listing"]["disallowed_by_robots"], 5);
    let robots_agents: Vec<String> = site
        .seen()
        .into_iter()
        .filter(|s| s.path == "/robots.txt")
        .map(|s| s.user_agent)
        .collect();
    assert_eq!(robots_agents.len(), 2, "robots.txt is read once per run");
    assert_eq!(robots_agents[1], "acme-bot/2.0 (+https://acme.example/bot)");
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_robots_txt_disallows_the_host_and_a_missing_one_allows_it() {
    let down = Site::with_robots(503, "maintenance").await;
    let missing = Site::start(Behaviour::default()).await;
    let mut urls = down.urls("/x", 3);
    urls.extend(missing.urls("/y", 2));
    let (app, _, finished) = crawl_once("mixed", &urls, "obey_robots = true", 20).await;
    assert_eq!(finished["pages"]["total"], 2, "{finished:#}");
    assert_eq!(finished["pages"]["succeeded"], 2, "{finished:#}");
    let listing = &finished["listing"];
    assert_eq!(listing["disallowed_by_robots"], 3, "{listing:#}");
    assert_eq!(listing["robots_unreachable"], 1, "{listing:#}");
    assert!(down.page_requests().is_empty());
    assert_eq!(missing.page_requests().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_site_answering_429_with_retry_after_is_slowed_down_and_the_run_still_succeeds() {
    let site = Site::start(Behaviour {
        throttle_first: 3,
        ..Behaviour::default()
    })
    .await;
    let urls = site.urls("/t", 6);
    // One attempt per page: only throttles that do not use it let the
    // throttled pages pass. One page at a time, so that each 429's
    // Retry-After shows in the request times.
    let (app, run, finished) = crawl_once(
        "throttled",
        &urls,
        "max_attempts = 1\npage_timeout = \"30s\"\nper_host_in_flight = 1",
        40,
    )
    .await;
    assert_eq!(finished["pages"]["succeeded"], 6, "{finished:#}");
    assert_eq!(finished["outcome"], "succeeded");

    let seen = site.page_requests();
    for n in 1..=3 {
        let path = format!("/t/{n}");
        let times: Vec<Instant> = seen
            .iter()
            .filter(|s| s.path == path)
            .map(|s| s.at)
            .collect();
        assert_eq!(times.len(), 2, "{path} was requested {} times", times.len());
        assert!(
            times[1] - times[0] >= Duration::from_millis(1900),
            "{path} was requested again {:?} after its 429 with Retry-After: 2",
            times[1] - times[0]
        );
        // Nothing else of the host was requested while it was told to wait.
        let during = seen
            .iter()
            .filter(|s| s.at > times[0] && s.at < times[0] + Duration::from_millis(1900))
            .count();
        assert_eq!(during, 0, "the host was crawled during its Retry-After");
    }
    let throttled = app.metric("fanfare_host_throttled_total", "").await;
    assert_eq!(throttled, 3.0, "one count per throttled dispatch");
    let (interval, throttles): (f64, i32) =
        sqlx::query_as("select interval, throttles from run_hosts where run_id = $1")
            .bind(run)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(throttles >= 1, "the host's throttles were not counted");
    assert!(
        interval > 0.0,
        "the host's rate was not lowered (interval {interval})"
    );
    let pages = app.pages(run).await;
    let throttled_pages = pages
        .iter()
        .filter(|p| p["attempt"].as_i64().unwrap() > 1)
        .count();
    assert_eq!(throttled_pages, 3, "{pages:#?}");
    app.stop().await;
}

#[tokio::test]
async fn per_host_rate_paces_dispatches() {
    let site = Site::start(Behaviour::default()).await;
    let urls = site.urls("/r", 5);
    let (app, _, finished) = crawl_once("paced", &urls, "per_host_rate = \"4/s\"", 20).await;
    assert_eq!(finished["pages"]["succeeded"], 5, "{finished:#}");
    let mut times: Vec<Instant> = site.page_requests().iter().map(|s| s.at).collect();
    times.sort();
    let span = *times.last().unwrap() - times[0];
    // Five dispatches 250 ms apart span at least a second.
    assert!(
        span >= Duration::from_millis(900),
        "5 pages in {span:?} at 4/s"
    );
    assert!(
        site.seen().iter().all(|s| s.path != "/robots.txt"),
        "obey_robots = false reads no robots.txt"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_listing_taken_over_reads_robots_txt_from_the_ledger_instead_of_fetching_it_again() {
    use fanfare::ledger::{self, HostPolicy, HostRobots, Lease, RobotsOutcome, Trigger};

    // Fetched now, this file would leave every page out.
    let site = Site::with_robots(200, "User-agent: *\nDisallow: /\n").await;
    let mut urls = site.urls("/pub", 3);
    urls.extend(site.urls("/private", 2));
    let app = TestApp::spawn(&schedule("taken", &urls, "obey_robots = true"), None).await;

    // A first lister read robots.txt when it was kinder, stored the host's
    // first page and stopped renewing its lease.
    let run_id = ledger::create_run(&app.pool, "taken", chrono::Utc::now(), Trigger::Manual)
        .await
        .unwrap()
        .unwrap();
    let host = ledger::host_of(&urls[0]);
    let policy = HostPolicy {
        host,
        in_flight_limit: 8,
        interval: Duration::ZERO,
        robots: HostRobots {
            outcome: RobotsOutcome::Rules,
            rules: Some("user-agent: *\ndisallow: /private\n".into()),
            note: None,
        },
    };
    let added = ledger::insert_pages(&app.pool, &Lease::first(run_id), &urls[..1], &[policy])
        .await
        .unwrap();
    assert_eq!(added, Some(1));
    sqlx::query("update runs set listing_lease_until = now() - interval '1 second' where id = $1")
        .bind(run_id)
        .execute(&app.pool)
        .await
        .unwrap();

    // The sweeper takes the listing over and lists the rest by the stored rules.
    let finished = app.wait_finished(run_id, Duration::from_secs(30)).await;
    assert_eq!(finished["pages"]["total"], 3, "{finished:#}");
    assert_eq!(finished["pages"]["succeeded"], 3, "{finished:#}");
    let listing = &finished["listing"];
    assert_eq!(listing["disallowed_by_robots"], 2, "{listing:#}");
    assert_eq!(listing["robots_fetched"], 1, "{listing:#}");
    let robots_requests = site.robots_requests();
    assert_eq!(robots_requests, 0, "the takeover fetched robots.txt again");
    let owner: uuid::Uuid = sqlx::query_scalar("select listing_owner from runs where id = $1")
        .bind(run_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_ne!(
        owner, run_id,
        "the run was listed by the lister that took it over"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_robots_txt_too_costly_to_match_leaves_the_rest_of_its_host_out_and_says_so() {
    // Thousands of wildcard rules whose literal parts every URL names: each
    // URL costs hundreds of scans of its path.
    let mut rules = String::from("User-agent: *\n");
    for i in 0..3000 {
        rules.push_str(&format!("Disallow: /*a*a*a*a*b{i}z\n"));
    }
    let costly = Site::with_robots(200, rules).await;
    let kind = Site::with_robots(200, "User-agent: *\nDisallow: /private\n").await;
    let keys: String = (0..800).map(|i| format!("b{i}z")).collect();
    let mut urls: Vec<String> = (0..120)
        .map(|n| costly.url(&format!("/{keys}/{n}")))
        .collect();
    urls.extend(kind.urls("/p", 5));
    let (app, _, finished) = crawl_once(
        "costly",
        &urls,
        "obey_robots = true\nper_host_in_flight = 64",
        120,
    )
    .await;
    let listing = &finished["listing"];
    assert_eq!(listing["robots_too_complex"], 1, "{listing:#}");
    let example = listing["robots_too_complex_examples"][0]
        .as_str()
        .unwrap_or_default();
    assert!(
        example.starts_with(&ledger_host(&costly.base)) && example.contains("rules cost more"),
        "{listing:#}"
    );
    let left_out = listing["disallowed_by_robots"].as_u64().unwrap();
    let total = finished["pages"]["total"].as_u64().unwrap();
    assert!(
        left_out > 0 && left_out < 120,
        "the host's URLs matched before the budget ran out stay in, the rest are left out: {listing:#}"
    );
    assert_eq!(total + left_out, 125, "{finished:#}");
    assert_eq!(finished["pages"]["succeeded"], total, "{finished:#}");
    assert_eq!(
        kind.page_requests().len(),
        5,
        "the other host is crawled whole"
    );
    assert!(listing["robots_match_ms"].as_u64().is_some(), "{listing:#}");
    app.stop().await;
}

fn ledger_host(base: &str) -> String {
    fanfare::ledger::host_of(base)
}
