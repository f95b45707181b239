//! Proxies: a schedule's pages fetched through a loopback forward proxy by
//! the in-process crawler (the crawler's own code), in turn over several
//! proxies, or only after the site refused the direct fetch; credentials
//! in no log line; the network guard still refusing a private target
//! through a proxy; a rendered page's requests through the proxy too;
//! and every configuration mistake named at its key.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use fanfare::config::{ProxyVia, ScheduleProxy};
use fanfare::Settings;
use fanfare_crawler::netguard::NetPolicy;
use fanfare_crawler::proxy::{ProxyOn, ProxyRoute, ProxyUrl};
use fanfare_crawler::{CrawlRequest, Crawler, CrawlerConfig, ErrorKind, Outcome, CONTRACT_VERSION};
use fanfare_testkit::appshop::{self, AppShop};
use fanfare_testkit::{ForwardProxy, Forwarded, TlsSite, TEST_CA_PEM};

use crate::helpers::*;

const USER: &str = "crawl-user";
const PASSWORD: &str = "pr0xy-pa55-sekrit";

/// A loopback site: `/p/{n}` answers to anyone; `/walled/{n}` answers 403
/// unless the request came through a proxy (it carries `Via`). Counts the
/// direct and the proxied requests.
struct Site {
    base: String,
    direct: Arc<AtomicUsize>,
    proxied: Arc<AtomicUsize>,
}

impl Site {
    async fn start() -> Self {
        let direct = Arc::new(AtomicUsize::new(0));
        let proxied = Arc::new(AtomicUsize::new(0));
        let (d, p) = (direct.clone(), proxied.clone());
        let count = move |headers: &HeaderMap| {
            let via = headers.contains_key("via");
            if via { &p } else { &d }.fetch_add(1, Ordering::SeqCst);
            via
        };
        let open = count.clone();
        let app = Router::new()
            .route(
                "/p/{n}",
                get(move |Path(n): Path<u32>, headers: HeaderMap| async move {
                    open(&headers);
                    Html(format!("<title>Page {n}</title>"))
                }),
            )
            .route(
                "/walled/{n}",
                get(move |Path(n): Path<u32>, headers: HeaderMap| async move {
                    if count(&headers) {
                        Html(format!("<title>Walled {n}</title>")).into_response()
                    } else {
                        (StatusCode::FORBIDDEN, "no crawlers from this address").into_response()
                    }
                }),
            );
        Self {
            base: fanfare_testkit::net::serve(app).await,
            direct,
            proxied,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn direct(&self) -> usize {
        self.direct.load(Ordering::SeqCst)
    }

    fn proxied(&self) -> usize {
        self.proxied.load(Ordering::SeqCst)
    }
}

/// Runs schedule `s` (a local schedule of `urls` with `extra` keys) once
/// to the end; returns the finished run and its pages.
/// A schedule of `urls` crawled in-process, with `extra` keys.
fn local_schedule(name: &str, urls: &[String], extra: &str) -> String {
    schedule(name).urls(urls).raw(extra).to_string()
}

async fn run_once(urls: &[String], extra: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
    let app = TestApp::spawn(&local_schedule("s", urls, extra), None).await;
    let (run, finished) = app.run_once("s", Duration::from_secs(20)).await;
    let pages = app.pages(run).await;
    app.stop().await;
    (finished, pages)
}

fn assert_all_succeeded(finished: &serde_json::Value, pages: &[serde_json::Value], n: usize) {
    assert_eq!(finished["outcome"], "succeeded", "{finished:#}");
    assert_eq!(pages.len(), n);
    for page in pages {
        assert_eq!(page["status"], "succeeded", "{page:#}");
    }
}

#[tokio::test]
async fn a_schedules_pages_are_fetched_through_its_proxy_with_its_credentials() {
    let site = Site::start().await;
    let proxy = ForwardProxy::start(USER, PASSWORD).await;
    let urls: Vec<String> = (1..=3).map(|n| site.url(&format!("/p/{n}"))).collect();

    let (finished, pages) = run_once(&urls, &format!("proxy = {:?}", proxy.url)).await;

    assert_all_succeeded(&finished, &pages, 3);
    let seen = proxy.seen();
    assert!(
        seen.iter().all(|f| f.authorized && f.method == "GET"),
        "{seen:#?}"
    );
    let forwarded: BTreeSet<String> = proxy.forwarded().into_iter().collect();
    assert_eq!(
        forwarded,
        urls.iter().cloned().collect(),
        "the proxy saw every page"
    );
    assert_eq!((site.direct(), site.proxied()), (0, 3));
}

#[tokio::test]
async fn pages_take_two_proxies_in_turn() {
    let site = Site::start().await;
    let first = ForwardProxy::start(USER, PASSWORD).await;
    let second = ForwardProxy::start("other-user", "other-pa55").await;
    let urls: Vec<String> = (1..=4).map(|n| site.url(&format!("/p/{n}"))).collect();

    let extra = format!("proxy = [{:?}, {:?}]", first.url, second.url);
    let (finished, pages) = run_once(&urls, &extra).await;

    assert_all_succeeded(&finished, &pages, 4);
    let (a, b) = (first.forwarded(), second.forwarded());
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both proxies are used: {a:?} {b:?}"
    );
    let all: BTreeSet<String> = a.iter().chain(&b).cloned().collect();
    assert_eq!(a.len() + b.len(), 4, "each page once: {a:?} {b:?}");
    assert_eq!(all, urls.iter().cloned().collect());
    assert!(first
        .seen()
        .iter()
        .chain(&second.seen())
        .all(|f| f.authorized));
}

#[test]
fn round_robin_is_by_page_and_attempt() {
    let urls: Vec<ProxyUrl> = [
        "http://a.example:1",
        "http://b.example:2",
        "http://c.example:3",
    ]
    .iter()
    .map(|u| ProxyUrl::parse(u).unwrap())
    .collect();
    let proxy = ScheduleProxy {
        via: ProxyVia::Urls(urls.clone()),
        on: ProxyOn::Blocked,
    };
    let pick = |page, attempt| proxy.route(page, attempt).url.unwrap();
    // Consecutive pages take the proxies in turn; a retry takes the next.
    let firsts: std::collections::HashSet<ProxyUrl> = (10..13).map(|page| pick(page, 1)).collect();
    assert_eq!(firsts.len(), 3);
    assert_ne!(pick(10, 1), pick(10, 2));
    assert_eq!(pick(10, 2), pick(11, 1));
    assert_eq!(pick(10, 1), pick(10, 1), "deterministic");
    assert_eq!(proxy.route(10, 1).on, ProxyOn::Blocked);
    let own = ScheduleProxy {
        via: ProxyVia::Crawler,
        on: ProxyOn::Always,
    };
    assert_eq!(
        own.route(7, 1),
        ProxyRoute {
            url: None,
            on: ProxyOn::Always
        }
    );
}

#[tokio::test]
async fn with_proxy_on_blocked_only_the_page_the_site_refuses_goes_through_the_proxy() {
    let site = Site::start().await;
    let proxy = ForwardProxy::start(USER, PASSWORD).await;
    let open = site.url("/p/1");
    let walled = site.url("/walled/1");

    let extra = format!("proxy = {:?}\nproxy_on = \"blocked\"", proxy.url);
    let (finished, pages) = run_once(&[open.clone(), walled.clone()], &extra).await;

    assert_all_succeeded(&finished, &pages, 2);
    let titles: BTreeMap<String, String> = pages
        .iter()
        .map(|p| {
            (
                p["url"].as_str().unwrap().into(),
                p["result"]["title"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(titles[&walled], "Walled 1", "{pages:#?}");
    assert_eq!(titles[&open], "Page 1");
    // The ledger keeps which way each page came.
    let via: BTreeMap<String, Option<bool>> = pages
        .iter()
        .map(|p| (p["url"].as_str().unwrap().into(), p["via_proxy"].as_bool()))
        .collect();
    assert_eq!(
        via,
        BTreeMap::from([(walled.clone(), Some(true)), (open.clone(), Some(false))]),
        "{pages:#?}"
    );
    assert_eq!(
        proxy.forwarded(),
        vec![walled],
        "the proxy only for the refused page"
    );
    // Both pages were tried directly; only the walled one again, proxied.
    assert_eq!((site.direct(), site.proxied()), (2, 1));
    for page in &pages {
        assert_eq!(
            page["attempt"], 1,
            "the retry through the proxy is the same attempt"
        );
    }
}

#[tokio::test]
async fn the_ledger_keeps_whether_a_report_came_through_a_proxy_and_a_crawler_that_does_not_say_means_no(
) {
    let lambda = Arc::new(RecordingLambda::default());
    let app = TestApp::spawn(&lambda_schedule("s", 3, None, ""), Some(lambda.clone())).await;
    let run = app.trigger("s").await;
    let requests = lambda.wait_for(3).await;
    let mut through = succeeded(&requests[0]);
    through["via_proxy"] = true.into();
    // A version 1 crawler that predates the field sends none.
    let silent = succeeded(&requests[1]);
    for (request, report) in requests.iter().zip([through, silent]) {
        let (status, body) = app
            .post_report(Some(&request.callback_token), &report)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let via: BTreeMap<String, Option<bool>> = app
        .pages(run)
        .await
        .iter()
        .map(|p| (p["id"].to_string(), p["via_proxy"].as_bool()))
        .collect();
    let id = |r: &CrawlRequest| r.page_id.clone();
    assert_eq!(
        via,
        BTreeMap::from([
            (id(&requests[0]), Some(true)),
            (id(&requests[1]), Some(false)),
            (id(&requests[2]), None),
        ]),
        "the third page has no report yet"
    );
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn proxy_credentials_reach_no_log_line_of_the_daemon_or_the_crawler() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("fanfare=trace,fanfare_crawler=trace")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The test's runtime has one thread: the daemon's tasks and the
    // crawls all log through this subscriber.
    let _logging = tracing::subscriber::set_default(subscriber);

    let site = Site::start().await;
    let proxy = ForwardProxy::start(USER, PASSWORD).await;
    // One page through the proxy after a refusal (the crawler logs that it
    // switches), one that fails through it (a closed port: an error
    // message).
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let urls = [
        site.url("/walled/1"),
        format!("http://127.0.0.1:{closed}/gone"),
    ];
    let extra = format!(
        "proxy = {:?}\nproxy_on = \"blocked\"\nmax_attempts = 1",
        proxy.url
    );
    let (finished, pages) = run_once(&urls, &extra).await;

    assert_eq!(finished["status"], "finished", "{finished:#}");
    assert_eq!(
        proxy.forwarded().len(),
        2,
        "both pages went through the proxy"
    );
    let failed = pages
        .iter()
        .find(|p| p["status"] == "failed")
        .expect("one page failed");
    let logs = logs.text();
    assert!(
        logs.contains("page crawled"),
        "the crawler's lines are captured: {logs}"
    );
    assert!(
        logs.contains("fetching through the proxy"),
        "the switch to the proxy is logged: {logs}"
    );
    assert!(logs.contains(&format!("{USER}:[redacted]@")), "{logs}");
    assert!(
        !logs.contains(PASSWORD),
        "a log line carries the password: {logs}"
    );
    let stored = failed["error"].to_string();
    assert!(
        !stored.contains(PASSWORD),
        "the stored error carries it: {stored}"
    );
}

fn request_through(proxy: &ForwardProxy, url: String) -> CrawlRequest {
    CrawlRequest {
        version: CONTRACT_VERSION,
        run_id: "run-1".into(),
        page_id: "page-1".into(),
        attempt: 1,
        url,
        extract: BTreeMap::new(),
        callback_url: "http://127.0.0.1:9/v1/callbacks".into(),
        callback_token: "token-1".into(),
        user_agent: None,
        proxy: Some(ProxyRoute {
            url: Some(ProxyUrl::parse(&proxy.url).unwrap()),
            on: ProxyOn::Always,
        }),
        links: None,
        render: None,
        deadline: Utc::now() + chrono::Duration::minutes(5),
        if_none_match: None,
        if_modified_since: None,
    }
}

fn closed_crawler(net: NetPolicy) -> Crawler {
    Crawler::new(CrawlerConfig {
        timeout: Duration::from_secs(5),
        net,
        ..CrawlerConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn through_a_proxy_the_guard_still_refuses_private_targets_and_the_proxy_sees_nothing() {
    let site = Site::start().await;
    let proxy = ForwardProxy::start(USER, PASSWORD).await;
    let port = site.base.rsplit(':').next().unwrap().to_string();
    // The proxy itself is on loopback: the operator's choice, allowed.
    let crawler = closed_crawler(NetPolicy::closed());
    for url in [
        site.url("/p/1"),
        format!("http://localhost:{port}/p/1"),
        format!("http://[::1]:{port}/p/1"),
    ] {
        let outcome = crawler.crawl(&request_through(&proxy, url.clone())).await;
        let Outcome::Failed { error } = outcome else {
            panic!("{url} was crawled through the proxy with the guard closed: {outcome:?}");
        };
        assert_eq!(error.kind, ErrorKind::Blocked, "{url}: {error}");
        assert!(!error.retryable);
        assert!(
            error.message.contains("a loopback address"),
            "{}",
            error.message
        );
    }
    assert_eq!(proxy.seen(), vec![], "the proxy was sent nothing");
    assert_eq!((site.direct(), site.proxied()), (0, 0));

    // The same crawl with private networks open goes through.
    let open = closed_crawler(NetPolicy::open());
    let outcome = open.crawl(&request_through(&proxy, site.url("/p/1"))).await;
    let facts = outcome.facts().expect("crawled with the guard open");
    assert!(facts.via_proxy);
    assert_eq!(facts.title.as_deref(), Some("Page 1"));
}

#[tokio::test]
async fn an_https_page_goes_through_the_proxys_connect_tunnel_with_its_credentials() {
    let site = TlsSite::start().await;
    let proxy = ForwardProxy::start(USER, PASSWORD).await;
    let url = site.url("/p/1");
    let crawler = |extra_roots_pem: &[u8]| {
        Crawler::new(CrawlerConfig {
            timeout: Duration::from_secs(5),
            net: NetPolicy::open(),
            extra_roots_pem: extra_roots_pem.to_vec(),
            ..CrawlerConfig::default()
        })
        .unwrap()
    };

    let outcome = crawler(TEST_CA_PEM)
        .crawl(&request_through(&proxy, url.clone()))
        .await;
    let facts = outcome.facts().expect("fetched through the tunnel");
    assert!(facts.via_proxy);
    assert_eq!(facts.title.as_deref(), Some("Secure /p/1"));
    let tunnel = Forwarded {
        method: "CONNECT".into(),
        target: site.addr.to_string(),
        authorized: true,
    };
    assert_eq!(
        proxy.seen(),
        vec![tunnel.clone()],
        "one tunnel, to the site"
    );
    assert_eq!(site.served(), 1);

    // Without the test CA the tunnel is made and TLS then fails: the
    // crawler trusts the test CA only when told to.
    let outcome = crawler(&[])
        .crawl(&request_through(&proxy, url.clone()))
        .await;
    let error = outcome.error().expect("an untrusted certificate fails");
    assert_eq!(error.kind, ErrorKind::Tls, "{error}");
    assert_eq!(proxy.seen(), vec![tunnel.clone(), tunnel]);
    assert_eq!(site.served(), 1);
}

#[tokio::test]
async fn through_a_proxy_a_redirect_to_a_private_target_is_refused_before_the_hop() {
    let site = Site::start().await;
    let proxy = ForwardProxy::start(USER, PASSWORD).await;
    let port = site.base.rsplit(':').next().unwrap().to_string();
    let inward = format!("http://localhost:{port}/p/1");
    // A "public" redirector: 127.0.0.2, let through by the policy.
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = Router::new().route(
        "/",
        get(move || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Redirect::to(&inward)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let redirector = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let policy = NetPolicy::closed().with_exception("127.0.0.2".parse().unwrap());
    let outcome = closed_crawler(policy)
        .crawl(&request_through(&proxy, redirector.clone()))
        .await;

    let error = outcome.error().expect("the redirect is refused");
    assert_eq!(error.kind, ErrorKind::Blocked, "{error}");
    assert!(
        error.message.starts_with("a redirect was refused"),
        "{}",
        error.message
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        proxy.forwarded(),
        vec![redirector],
        "only the first hop went out"
    );
    assert_eq!((site.direct(), site.proxied()), (0, 0));
}

fn problems(toml: &str) -> Vec<String> {
    match Settings::from_toml(&config_toml("postgres://x@127.0.0.1/db", toml)) {
        Ok(_) => panic!("configuration should be invalid:\n{toml}"),
        Err(e) => e.0,
    }
}

fn assert_named(found: &[String], expect: &[&str]) {
    for e in expect {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "missing {e:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
    let all = found.join("\n");
    assert!(
        !all.contains("pw-sekrit"),
        "a problem quotes a password: {all}"
    );
}

#[test]
fn check_config_names_every_proxy_mistake_at_its_key() {
    let urls = ["https://a.example/".to_string()];
    let schedule = |name: &str, extra: &str| local_schedule(name, &urls, extra);
    let toml = [
        schedule("bad-url", r#"proxy = "http://u:pw-sekrit@[::1""#),
        schedule("ftp", r#"proxy = "ftp://u:pw-sekrit@proxy.example:21""#),
        schedule(
            "socks",
            r#"proxy = "socks5://u:pw-sekrit@proxy.example:1080""#,
        ),
        schedule(
            "list",
            r#"proxy = ["http://u:pw-sekrit@p.example:1", "gopher://p.example", "crawler"]"#,
        ),
        schedule("empty", "proxy = []"),
        schedule("on-alone", r#"proxy_on = "blocked""#),
        schedule("on-none", "proxy = \"none\"\nproxy_on = \"always\""),
        schedule("on-word", "proxy = \"crawler\"\nproxy_on = \"sometimes\""),
    ]
    .concat();
    assert_named(
        &problems(&toml),
        &[
            r#"schedule "bad-url": proxy: is not a URL"#,
            r#"schedule "ftp": proxy: has scheme "ftp"; a proxy must be http:// or https://"#,
            r#"schedule "socks": proxy: has scheme "socks5"; SOCKS proxies are not supported"#,
            r#"schedule "list": proxy[1]: has scheme "gopher""#,
            r#"schedule "list": proxy[2]: "crawler" stands alone, not in a list"#,
            r#"schedule "empty": proxy: must name at least one proxy"#,
            r#"schedule "on-alone": proxy_on: is set but the schedule has no proxy"#,
            r#"schedule "on-none": proxy_on: is set but the schedule has no proxy"#,
            r#"schedule "on-word": proxy_on: "sometimes" must be "always" or "blocked""#,
        ],
    );
    // In [politeness]: named once there, not in each schedule.
    let politeness = |keys: &str, schedules: &str| {
        let toml = config_toml("postgres://x@127.0.0.1/db", schedules)
            .replace("\n[politeness]\n", &format!("\n[politeness]\n{keys}\n"));
        match Settings::from_toml(&toml) {
            Ok(_) => panic!("configuration should be invalid:\n{toml}"),
            Err(e) => e.0,
        }
    };
    let two = [schedule("one", ""), schedule("two", "")].concat();
    assert_named(
        &politeness(
            "proxy = \"http://u:pw-sekrit@proxy.example/path\"\nproxy_on = \"never\"",
            &two,
        ),
        &[
            "politeness.proxy: must be only scheme, credentials, host and port",
            r#"politeness.proxy_on: "never" must be "always" or "blocked""#,
        ],
    );
    assert_named(
        &politeness("proxy_on = \"blocked\"", &two),
        &["politeness.proxy_on: is set but politeness.proxy is not"],
    );
}

#[test]
fn the_politeness_proxy_is_every_schedules_default_and_none_opts_out() {
    let urls = ["https://a.example/".to_string()];
    let toml = [
        local_schedule("inherits", &urls, ""),
        local_schedule("own", &urls, "proxy = \"crawler\"\nproxy_on = \"blocked\""),
        local_schedule("direct", &urls, "proxy = \"none\""),
    ]
    .concat();
    let text = config_toml("postgres://x@127.0.0.1/db", &toml).replace(
        "\n[politeness]\n",
        "\n[politeness]\nproxy = [\"http://u:pw-sekrit@p1.example:8080\", \"https://p2.example\"]\nproxy_on = \"always\"\n",
    );
    let settings = Settings::from_toml(&text).expect("valid");
    let proxy = |name: &str| settings.schedule(name).unwrap().proxy.clone();
    let inherited = proxy("inherits").expect("the default proxy");
    assert_eq!(inherited.on, ProxyOn::Always);
    let ProxyVia::Urls(list) = &inherited.via else {
        panic!("{inherited:?}")
    };
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].expose().password(), Some("pw-sekrit"));
    assert_eq!(
        proxy("own"),
        Some(ScheduleProxy {
            via: ProxyVia::Crawler,
            on: ProxyOn::Blocked
        })
    );
    assert_eq!(proxy("direct"), None);
    let debug = format!("{settings:?}");
    assert!(!debug.contains("pw-sekrit"), "{debug}");
}

#[tokio::test]
async fn a_rendered_pages_document_and_its_scripts_request_both_go_through_the_schedules_proxy() {
    let shop = AppShop::start(std::net::Ipv4Addr::LOCALHOST).await;
    let proxy = ForwardProxy::start(USER, PASSWORD).await;
    let page = shop.script(7);
    let schedule = schedule("rendered")
        .urls([page.clone()])
        .extract(appshop::EXTRACT)
        .text("render", "always")
        .text("wait_for", ".price")
        .text("proxy", &proxy.url)
        .to_string();
    let app = TestApp::spawn(&schedule, None).await;
    let run = app.trigger("rendered").await;
    let finished = app.wait_finished(run, Duration::from_secs(60)).await;
    let pages = app.pages(run).await;
    app.stop().await;

    assert_all_succeeded(&finished, &pages, 1);
    let result = &pages[0]["result"];
    assert_eq!(result["rendered"], true, "{result:#}");
    assert_eq!(result["via_proxy"], true, "{result:#}");
    assert_eq!(
        result["fields"]["price"],
        appshop::script_price(7),
        "{result:#}"
    );
    // The document, then the request its script made: both through the
    // proxy, with its credentials.
    let seen = proxy.seen();
    assert!(seen.iter().all(|f| f.authorized), "{seen:#?}");
    let forwarded: BTreeSet<String> = proxy.forwarded().into_iter().collect();
    let api = format!("{}/api/item/7", shop.base());
    assert!(
        forwarded.contains(&page) && forwarded.contains(&api),
        "the proxy forwarded {forwarded:?}"
    );
    assert_eq!(shop.renders(), 1);
}
