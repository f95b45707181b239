//! Guessing the admin token: wrong tokens from one client (the console's
//! sign-in and the admin API's bearer check counted together) are answered
//! 401 ten times, then 429 with Retry-After, the right token included; other
//! clients are not delayed. Clients are told apart by their loopback
//! address (127.0.0.1, 127.0.0.2, …), or behind a trusted proxy by the
//! X-Forwarded-For it appends.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::header::{LOCATION, RETRY_AFTER};

use crate::helpers::*;

const WRONG: &str = "not-the-admin-token-but-just-as-long-00000";

/// A client whose connections come from `from` (a loopback address), not
/// following redirects.
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn sign_in(app: &TestApp, client: &reqwest::Client, token: &str) -> reqwest::Response {
    client
        .post(format!("{}/ui/login", app.address))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
}

async fn api(
    app: &TestApp,
    client: &reqwest::Client,
    token: Option<&str>,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut req = client.get(format!("{}/v1/schedules", app.address));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    req.send().await.unwrap()
}

fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get(RETRY_AFTER)
        .unwrap_or_else(|| panic!("a Retry-After header: {:?}", resp.headers()))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The app with a first lockout of 10 minutes, so that a lockout outlasts
/// the test however slowly it runs.
async fn spawn() -> TestApp {
    app_with_one_lambda_page_and(|s| s.security.lockout_first = Duration::from_secs(600)).await
}

#[tokio::test]
async fn after_ten_wrong_tokens_a_client_gets_429_with_retry_after_even_for_the_right_token() {
    let app = spawn().await;
    let guesser = client_from("127.0.0.1");
    // The console and the API count together: 5 + 5 wrong tokens.
    for _ in 0..5 {
        assert_eq!(sign_in(&app, &guesser, WRONG).await.status(), 401);
        assert_eq!(api(&app, &guesser, Some(WRONG), None).await.status(), 401);
    }
    let resp = sign_in(&app, &guesser, WRONG).await;
    assert_eq!(resp.status(), 429);
    assert!(
        (590..=600).contains(&retry_after(&resp)),
        "{:?}",
        resp.headers()
    );
    let body = resp.text().await.unwrap();
    assert!(body.contains("Too many wrong tokens"), "{body}");

    // The right token is not looked at while the client is locked out.
    let resp = sign_in(&app, &guesser, ADMIN_TOKEN).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("set-cookie").is_none());
    let resp = api(&app, &guesser, Some(ADMIN_TOKEN), None).await;
    assert_eq!(resp.status(), 429);
    assert!(retry_after(&resp) >= 1);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("too many wrong admin tokens"),
        "{body}"
    );

    // Another client is not delayed, on either surface.
    let other = client_from("127.0.0.2");
    let resp = sign_in(&app, &other, ADMIN_TOKEN).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()[LOCATION], "/ui/");
    assert_eq!(
        api(&app, &other, Some(ADMIN_TOKEN), None).await.status(),
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn requests_without_a_token_are_not_counted_as_guesses() {
    let app = spawn().await;
    let client = client_from("127.0.0.3");
    for _ in 0..30 {
        assert_eq!(api(&app, &client, None, None).await.status(), 401);
        assert_eq!(sign_in(&app, &client, "").await.status(), 401);
    }
    assert_eq!(
        api(&app, &client, Some(ADMIN_TOKEN), None).await.status(),
        200
    );
    // The right token forgets the wrong ones before it.
    for _ in 0..9 {
        assert_eq!(api(&app, &client, Some(WRONG), None).await.status(), 401);
    }
    assert_eq!(
        api(&app, &client, Some(ADMIN_TOKEN), None).await.status(),
        200
    );
    for _ in 0..9 {
        assert_eq!(api(&app, &client, Some(WRONG), None).await.status(), 401);
    }
    assert_eq!(
        api(&app, &client, Some(ADMIN_TOKEN), None).await.status(),
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_client_is_the_address_it_forwarded() {
    let app = app_with_one_lambda_page_and(|s| {
        s.security.lockout_first = Duration::from_secs(600);
        s.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let proxy = client_from("127.0.0.1");
    // The proxy appends the address it saw; what the client wrote before
    // it (a different address each time) is not believed.
    for i in 0..10 {
        let xff = format!("198.51.100.{i}, 203.0.113.5");
        let resp = api(&app, &proxy, Some(WRONG), Some(&xff)).await;
        assert_eq!(resp.status(), 401, "{xff}");
    }
    let resp = api(&app, &proxy, Some(ADMIN_TOKEN), Some("203.0.113.5")).await;
    assert_eq!(resp.status(), 429);
    // Other clients behind the same proxy are not delayed.
    let resp = api(&app, &proxy, Some(ADMIN_TOKEN), Some("203.0.113.6")).await;
    assert_eq!(resp.status(), 200);
    // A peer that is not a trusted proxy is the client, whatever it forwards.
    let direct = client_from("127.0.0.4");
    let resp = api(&app, &direct, Some(ADMIN_TOKEN), Some("203.0.113.5")).await;
    assert_eq!(resp.status(), 200);
    app.stop().await;
}
