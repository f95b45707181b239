//! Runs that grow by following links: a loopback site of pages linked as a
//! tree (`fanfare_testkit::LinkSite`), crawled by the in-process crawler
//! from its home page, with depth, patterns, robots.txt, the cap, and
//! pages linked from many pages; one notification per run.

use std::collections::HashMap;
use std::time::Duration;

use fanfare::config::Settings;
use fanfare_testkit::{crawl_schedule_block, webhook_block, LinkSite, LinkSiteSpec};
use serde_json::Value;

use crate::helpers::{config_toml, lambda_schedule, schedule, texts, Receiver, TestApp};

const WITHIN: Duration = Duration::from_secs(30);

/// Starts the application with the schedule `shop`, crawling `site` from
/// its home page (`pages_keys`, `extra`, `notify` as
/// [`crawl_schedule_block`] takes them), and runs it once; returns the
/// app, the run and its finished view.
async fn crawl_once(
    site: &LinkSite,
    pages_keys: &str,
    extra: &str,
    notify: &str,
) -> (TestApp, uuid::Uuid, Value) {
    let schedule = crawl_schedule_block("shop", &site.home(), pages_keys, extra, notify);
    let app = TestApp::spawn(&schedule, None).await;
    let (run, shown) = app.run_once("shop", WITHIN).await;
    (app, run, shown)
}

/// Each page of a finished run by its site path, and what the run's
/// pages say of depth and referrer agrees with the site's tree: a found
/// page was found on a page one link closer to the home page.
async fn pages_by_path(app: &TestApp, run: uuid::Uuid, site: &LinkSite) -> HashMap<String, Value> {
    let pages = app.pages(run).await;
    let by_id: HashMap<i64, Value> = pages
        .iter()
        .map(|p| (p["id"].as_i64().unwrap(), p.clone()))
        .collect();
    let mut by_path = HashMap::new();
    for p in &pages {
        let url = p["url"].as_str().unwrap();
        let path = url.strip_prefix(&site.url("")).unwrap().to_string();
        assert_eq!(p["status"], "succeeded", "{p}");
        match p["found_on"].as_i64() {
            None => assert_eq!(p["depth"], 0, "a listed page is depth 0: {p}"),
            Some(on) => {
                let referrer = &by_id[&on];
                assert_eq!(
                    referrer["depth"].as_i64().unwrap() + 1,
                    p["depth"].as_i64().unwrap(),
                    "{p} found on {referrer}"
                );
            }
        }
        by_path.insert(path, p.clone());
    }
    by_path
}

#[tokio::test]
async fn a_crawl_takes_every_page_within_max_depth_once_and_counts_the_deeper_links() {
    let site = LinkSite::start(LinkSiteSpec::tree(40, 3)).await;
    let receiver = Receiver::accepting().await;
    let (app, run, shown) =
        crawl_once(&site, "max_depth = 2", "", &webhook_block(&receiver.url)).await;

    let expected = site.pages_within(2);
    assert_eq!(expected.len(), 13);
    assert_eq!(shown["outcome"], "succeeded", "{shown:#}");
    assert_eq!(shown["pages"]["total"], 13, "{shown:#}");
    assert_eq!(shown["pages"]["succeeded"], 13);
    let pages = pages_by_path(&app, run, &site).await;
    let mut paths: Vec<String> = pages.keys().cloned().collect();
    paths.sort();
    let mut want: Vec<String> = expected.iter().map(|i| format!("/n/{i}")).collect();
    want.sort();
    assert_eq!(paths, want);
    assert_eq!(site.repeated(), [], "every page is fetched once");
    for i in expected {
        let depth = pages[&format!("/n/{i}")]["depth"].as_u64().unwrap() as u32;
        assert_eq!(depth, site.depth(i), "page {i}");
    }

    let d = &shown["discovery"];
    assert_eq!(d["added"], 12, "{d:#}");
    // The 9 pages at depth 2 link to 3 children each (all below page 40),
    // which are left out by depth (their home and parent links are known).
    assert_eq!(d["left_out"]["depth"], 27, "{d:#}");
    let examples = d["examples"].as_array().unwrap();
    assert!(examples.len() <= 3, "at most 3 per reason: {d:#}");
    let distinct: std::collections::HashSet<&Value> = examples.iter().collect();
    assert_eq!(distinct.len(), examples.len(), "{d:#}");
    // Every link reported is accounted for exactly once.
    let left: i64 = ["pattern", "depth", "host", "robots", "cap"]
        .iter()
        .map(|k| d["left_out"][k].as_i64().unwrap())
        .sum();
    assert_eq!(
        d["found"].as_i64().unwrap(),
        d["added"].as_i64().unwrap() + d["known"].as_i64().unwrap() + left,
        "{d:#}"
    );
    assert!(
        d["examples"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "depth"),
        "{d:#}"
    );

    // One notification, carrying the same counts.
    let hits = receiver.wait_delivered(run, WITHIN).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deliveries: Vec<_> = receiver
        .deliveries()
        .into_iter()
        .filter(|d| d.json()["run_id"] == run.to_string())
        .collect();
    assert_eq!(deliveries.len(), 1, "{hits:?}");
    let body = deliveries[0].json();
    assert_eq!(body["pages"]["total"], 13);
    assert_eq!(body["discovery"], *d);

    assert_eq!(app.metric("fanfare_pages_found_total", "").await, 12.0);

    // The console's run page shows the same counts.
    let page = console_run_page(&app, run).await;
    assert!(page.contains("Links followed"), "{page}");
    assert!(page.contains("left out by depth"), "{page}");
}

/// The console's page of `run`, signed in with the admin token.
async fn console_run_page(app: &TestApp, run: uuid::Uuid) -> String {
    use fanfare::http::ui::session::COOKIE;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = client
        .post(format!("{}/ui/login", app.address))
        .form(&[("token", crate::helpers::ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    let set = signed_in.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    assert!(cookie.starts_with(&format!("{COOKIE}=")), "{set}");
    let page = client
        .get(format!("{}/ui/runs/{run}", app.address))
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    page.text().await.unwrap()
}

#[tokio::test]
async fn include_and_exclude_patterns_leave_links_out_and_count_them() {
    let mut spec = LinkSiteSpec::tree(40, 3);
    spec.extra_links = vec!["/elsewhere/x".into()];
    let site = LinkSite::start(spec).await;
    let keys = format!(
        "max_depth = 3, include = [\"{}\"], exclude = [\"*/n/1\"]",
        site.url("/n/*")
    );
    let (app, run, shown) = crawl_once(&site, &keys, "", "").await;

    let pages = pages_by_path(&app, run, &site).await;
    // Page 1 is excluded, so its subtree (4-6, 13-21) is never linked from
    // a page of the run; /elsewhere/x matches no include pattern.
    for gone in ["/n/1", "/n/4", "/n/13", "/elsewhere/x"] {
        assert!(!pages.contains_key(gone), "{gone} crawled");
        assert!(!site.hits().contains_key(gone), "{gone} fetched");
    }
    let want = (0..40).filter(|&i| {
        let mut j = i;
        while j > 0 && j != 1 {
            j = (j - 1) / 3;
        }
        j != 1
    });
    assert_eq!(pages.len(), want.count(), "{shown:#}");
    let d = &shown["discovery"];
    assert!(d["left_out"]["pattern"].as_i64().unwrap() >= 2, "{d:#}");
    let examples: Vec<&str> = d["examples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "pattern")
        .map(|e| e["url"].as_str().unwrap())
        .collect();
    assert!(!examples.is_empty(), "{d:#}");
    assert!(site.repeated().is_empty(), "{:?}", site.repeated());
}

#[tokio::test]
async fn links_robots_txt_disallows_are_left_out_and_counted() {
    let mut spec = LinkSiteSpec::tree(13, 3);
    spec.robots = Some("User-agent: *\nDisallow: /n/2\n".into());
    let site = LinkSite::start(spec).await;
    let (app, run, shown) = crawl_once(&site, "", "obey_robots = true", "").await;

    let pages = pages_by_path(&app, run, &site).await;
    // /n/2 is disallowed; its children 7, 8, 9 are linked from it only.
    for gone in ["/n/2", "/n/7", "/n/8", "/n/9"] {
        assert!(!pages.contains_key(gone), "{gone} crawled");
        assert!(!site.hits().contains_key(gone), "{gone} fetched");
    }
    assert_eq!(pages.len(), 9, "{shown:#}");
    let d = &shown["discovery"];
    // Linked from the home page, and as the parent from nowhere else.
    assert_eq!(d["left_out"]["robots"], 1, "{d:#}");
    assert!(d["examples"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["reason"] == "robots" && e["url"] == site.url("/n/2")));
}

#[tokio::test]
async fn a_host_first_seen_in_a_link_has_its_robots_txt_read_once_and_obeyed() {
    let mut other = LinkSiteSpec::tree(4, 3);
    other.robots = Some("User-agent: *\nDisallow: /n/2\n".into());
    let other = LinkSite::start(other).await;
    // Every page of the start site links to the other site's home page.
    let mut start = LinkSiteSpec::tree(4, 3);
    start.extra_links = vec![other.home()];
    let start = LinkSite::start(start).await;
    let app = TestApp::spawn(
        &crawl_schedule_block(
            "shop",
            &start.home(),
            "max_depth = 2, same_host = false",
            "obey_robots = true",
            "",
        ),
        None,
    )
    .await;
    let run = app.trigger("shop").await;
    let shown = app.wait_finished(run, WITHIN).await;

    let mut urls: Vec<String> = app
        .pages(run)
        .await
        .iter()
        .map(|p| {
            assert_eq!(p["status"], "succeeded", "{p}");
            p["url"].as_str().unwrap().to_string()
        })
        .collect();
    urls.sort();
    let mut expected: Vec<String> = (0..4)
        .map(|i| start.url(&format!("/n/{i}")))
        .chain([0, 1, 3].map(|i| other.url(&format!("/n/{i}"))))
        .collect();
    expected.sort();
    assert_eq!(urls, expected, "{shown:#}");
    assert!(!other.hits().contains_key("/n/2"), "{:?}", other.hits());
    assert_eq!(
        other.hits().get("/robots.txt"),
        Some(&1),
        "the new host's robots.txt is read once, whichever pages link to it"
    );
    let d = &shown["discovery"];
    assert_eq!(
        (
            d["left_out"]["robots"].as_i64(),
            d["left_out"]["host"].as_i64()
        ),
        (Some(1), Some(0)),
        "{d:#}"
    );
    assert!(d["examples"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["reason"] == "robots" && e["url"] == other.url("/n/2")));
}

#[tokio::test]
async fn max_pages_caps_a_crawl_and_the_links_past_it_are_counted() {
    let receiver = Receiver::accepting().await;
    let site = LinkSite::start(LinkSiteSpec::tree(40, 3)).await;
    let (_app, run, shown) =
        crawl_once(&site, "", "max_pages = 5", &webhook_block(&receiver.url)).await;
    assert_eq!(shown["pages"]["total"], 5, "{shown:#}");
    assert_eq!(shown["outcome"], "succeeded");
    let d = &shown["discovery"];
    assert_eq!(d["added"], 4, "{d:#}");
    assert!(d["left_out"]["cap"].as_i64().unwrap() > 0, "{d:#}");
    assert!(site.repeated().is_empty());
    receiver.wait_delivered(run, WITHIN).await;
    assert_eq!(receiver.hits_for(run).len(), 1);
}

#[tokio::test]
async fn follow_links_grows_a_listed_run_from_its_list() {
    let site = LinkSite::start(LinkSiteSpec::tree(40, 3)).await;
    let pages = format!(
        "{{ urls = [\"{}\", \"{}\"], follow_links = true, max_depth = 1 }}",
        site.home(),
        site.url("/n/1"),
    );
    let app = TestApp::spawn(&schedule("list").pages(&pages).to_string(), None).await;
    let (run, shown) = app.run_once("list", WITHIN).await;
    let pages = pages_by_path(&app, run, &site).await;
    // Both listed pages are depth 0: the home page's children 1-3 and page
    // 1's children 4-6 are depth 1 (page 1 is listed, so not found).
    assert_eq!(pages.len(), 7, "{shown:#}");
    assert_eq!(pages["/n/1"]["depth"], 0);
    assert_eq!(pages["/n/4"]["depth"], 1);
    assert!(site.repeated().is_empty());
}

#[tokio::test]
async fn a_report_with_links_on_a_schedule_that_does_not_follow_them_adds_nothing() {
    let (app, lambda) = TestApp::spawn_recording(&lambda_schedule("plain", 1, None, "")).await;
    let run = app.trigger("plain").await;
    let request = lambda.wait_for(1).await.remove(0);
    assert_eq!(request.links, None, "a listed run asks for no links");
    let mut report = crate::helpers::succeeded(&request);
    report["links"] = serde_json::json!(["http://127.0.0.1:9/p/2", "http://127.0.0.1:9/p/3"]);
    app.report_recorded(&request, &report).await;
    let shown = app.wait_finished(run, WITHIN).await;
    assert_eq!(shown["pages"]["total"], 1, "{shown:#}");
    assert!(shown["discovery"].is_null(), "{shown:#}");
    let pages = app.pages(run).await;
    assert_eq!(pages.len(), 1);
    assert!(
        pages[0]["result"].get("links").is_none(),
        "links are not stored with the facts: {}",
        pages[0]
    );
}

#[tokio::test]
async fn a_crawl_run_compares_with_the_previous_one_and_a_page_no_longer_linked_is_gone() {
    let site = LinkSite::start(LinkSiteSpec::tree(13, 3)).await;
    let receiver = Receiver::accepting().await;
    let app = TestApp::spawn(
        &crawl_schedule_block("shop", &site.home(), "", "", &webhook_block(&receiver.url)),
        None,
    )
    .await;
    let first = app.trigger("shop").await;
    app.wait_finished(first, WITHIN).await;
    site.hide(1);
    let (second, shown) = app.run_once("shop", WITHIN).await;
    assert_eq!(shown["pages"]["total"], 9, "{shown:#}");
    let hits = receiver.wait_delivered(second, WITHIN).await;
    assert!(!hits.is_empty());
    let body = receiver
        .deliveries()
        .into_iter()
        .map(|d| d.json())
        .find(|b| b["run_id"] == second.to_string())
        .unwrap();
    assert_eq!(body["changes"]["gone"], 4, "{body:#}");
    assert_eq!(body["changes"]["unchanged"], 9, "{body:#}");
    assert_eq!(body["changes"]["new"], 0, "{body:#}");
    let gone = texts(&body["changed_pages"], "url");
    assert!(gone.contains(&site.url("/n/1").as_str()), "{gone:?}");
}

fn problems(schedules: &str) -> Vec<String> {
    match Settings::from_toml(&config_toml("postgres://x@127.0.0.1/db", schedules)) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    }
}

#[test]
fn check_config_names_each_link_following_mistake() {
    let ok = problems(
        "[[schedules]]\nname = \"c\"\ninvoker = \"local\"\n\
         pages = { crawl = [\"https://a.example/\", \"https://b.example/\"], max_depth = 5, include = [\"https://a.example/*\"], same_host = false }\n",
    );
    assert_eq!(ok, Vec::<String>::new());
    let found = problems(
        "[[schedules]]\nname = \"c\"\ninvoker = \"local\"\n\
         pages = { crawl = \"notaurl\", follow_links = false, max_depth = 500, include = [\"\"] }\n\
         [[schedules]]\nname = \"l\"\ninvoker = \"local\"\n\
         pages = { urls = [\"https://a.example/\"], exclude = [\"*.pdf\"], same_host = false }\n\
         [[schedules]]\nname = \"e\"\ninvoker = \"local\"\npages = { crawl = [] }\n",
    );
    let text = found.join("\n");
    for expected in [
        "schedule \"c\": pages.follow_links: cannot be false with crawl",
        "schedule \"c\": pages.max_depth: 500 is deeper than 100",
        "schedule \"c\": pages.include[0] \"\"",
        "schedule \"c\": pages.crawl[0]",
        "schedule \"l\": pages.exclude: only goes with crawl = ... or follow_links = true",
        "schedule \"l\": pages.same_host: only goes with crawl = ... or follow_links = true",
        "schedule \"e\": pages.crawl: must name at least one start URL",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
}

#[test]
fn url_globs_match_whole_urls_with_stars_only() {
    use fanfare::config::UrlGlob;
    let g = |p: &str| UrlGlob::new(p).unwrap();
    assert!(g("https://a.example/*").matches("https://a.example/x/y?z=1"));
    assert!(!g("https://a.example/*").matches("https://b.example/x"));
    assert!(g("*/item/*/reviews").matches("https://a.example/item/42/reviews"));
    assert!(!g("*/item/*/reviews").matches("https://a.example/item/42/reviews/2"));
    assert!(g("*.pdf").matches("http://a.example/doc.pdf"));
    assert!(g("http://a.example/?").matches("http://a.example/?"));
    assert!(!g("http://a.example/?").matches("http://a.example/x"));
    // A pathological pattern stays fast.
    let long = "a".repeat(2000);
    assert!(!g("*a*a*a*a*a*a*a*a*a*b").matches(&long));
    assert!(UrlGlob::new("").is_err());
}

#[tokio::test]
async fn the_demo_shop_is_crawled_from_its_home_page_by_the_demo_crawl_schedule() {
    let site = fanfare::demo::DemoSite::start(12).await.unwrap();
    let db = crate::helpers::fresh_database().await;
    let config = fanfare::dev::dev_config(&db, 0, &site.sitemap_url());
    let settings = Settings::from_toml(&config).unwrap();
    let (address, app) =
        fanfare_testkit::AppTask::start(settings, fanfare::startup::Overrides::default()).await;
    let client = reqwest::Client::new();
    let token = fanfare::dev::DEV_ADMIN_TOKEN;
    let run = fanfare_testkit::trigger(&client, &address, token, "demo-crawl").await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    let shown = loop {
        let (_, shown) = fanfare_testkit::get(&client, &address, token, &format!("/v1/runs/{run}"))
            .await
            .unwrap();
        if shown["status"] == "finished" {
            break shown;
        }
        assert!(tokio::time::Instant::now() < deadline, "{shown:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The home page and its 12 products; the sitemap and pages.json are
    // excluded by pattern.
    assert_eq!(shown["outcome"], "succeeded", "{shown:#}");
    assert_eq!(shown["pages"]["total"], 13, "{shown:#}");
    let d = &shown["discovery"];
    assert!(d["left_out"]["pattern"].as_i64().unwrap() >= 2, "{d:#}");
    assert!(
        d["examples"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["url"] == site.sitemap_url()),
        "{d:#}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_report_adds_its_links_once_and_its_repeat_adds_nothing() {
    let schedule = schedule("crawl")
        .lambda("crawler-fn")
        .pages(r#"{ crawl = "http://127.0.0.1:9/p/1" }"#)
        .key("max_in_flight", 100);
    let (app, lambda) = TestApp::spawn_recording(&schedule.to_string()).await;
    let run = app.trigger("crawl").await;
    let first = lambda.wait_for(1).await.remove(0);
    let wanted = first.links.expect("a crawl asks for links");
    assert!(wanted.skip_nofollow && wanted.max > 0, "{wanted:?}");
    let mut report = crate::helpers::succeeded(&first);
    report["links"] = serde_json::json!([
        "http://127.0.0.1:9/p/2",
        "http://127.0.0.1:9/p/3",
        "http://127.0.0.1:9/p/2#again",
        "http://other.example/x",
        "ftp://127.0.0.1:9/p/4"
    ]);
    let (status, body) = app.post_report(Some(&first.callback_token), &report).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("recorded")));
    let (_, shown) = app.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(shown["pages"]["total"], 3, "{shown:#}");
    assert_eq!(
        shown["pages"]["open"], 2,
        "the report kept its run open: {shown:#}"
    );
    // The crawler's retry of the same report is a duplicate and adds nothing.
    let (status, body) = app.post_report(Some(&first.callback_token), &report).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("duplicate")));
    let (_, shown) = app.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(shown["pages"]["total"], 3, "{shown:#}");
    assert_eq!(shown["discovery"]["found"], 3, "{shown:#}");

    // The other two link only to a page the first report added: known
    // before the ledger (the replica remembers what that report's batch
    // said the run has), they are recorded without judging and counted as
    // found and known, once, however often they are sent.
    for request in lambda.wait_for(3).await.into_iter().skip(1) {
        let mut report = crate::helpers::succeeded(&request);
        report["links"] = serde_json::json!(["http://127.0.0.1:9/p/2"]);
        let (status, _) = app
            .post_report(Some(&request.callback_token), &report)
            .await;
        assert_eq!(status, 200);
        let (status, body) = app
            .post_report(Some(&request.callback_token), &report)
            .await;
        assert_eq!((status, body["status"].as_str()), (200, Some("duplicate")));
    }
    let shown = app.wait_finished(run, WITHIN).await;
    let d = &shown["discovery"];
    assert_eq!(shown["pages"]["total"], 3, "{shown:#}");
    assert_eq!(
        (
            d["found"].as_i64(),
            d["added"].as_i64(),
            d["known"].as_i64()
        ),
        (Some(5), Some(2), Some(2)),
        "{d:#}"
    );
    assert_eq!(d["left_out"]["host"], 1, "{d:#}");
    let pages = app.pages(run).await;
    let first_id = pages[0]["id"].as_i64().unwrap();
    for p in &pages[1..] {
        assert_eq!(
            (p["depth"].as_i64(), p["found_on"].as_i64()),
            (Some(1), Some(first_id)),
            "{p}"
        );
    }
}
