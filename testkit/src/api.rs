//! Calls to a running daemon's API, in-process or a subprocess.

use std::time::{Duration, Instant};

use uuid::Uuid;

/// Polls `/readyz` until it answers 200 or `within` passed.
pub async fn wait_ready(client: &reqwest::Client, address: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{address}/readyz")).send().await {
            if r.status().is_success() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Waits until the run reaches `status` (past `listing`: any other word
/// than `listing`; else `finished`) as `GET /v1/runs/{id}` shows it; returns
/// that view. Answers other than 200 (the ledger unreachable) are waited
/// out.
pub async fn wait_run(
    client: &reqwest::Client,
    address: &str,
    admin_token: &str,
    run: Uuid,
    until: RunState,
    within: Duration,
) -> serde_json::Value {
    let path = format!("/v1/runs/{run}");
    crate::eventually(&format!("run {run} {until:?}"), within, || async {
        match get(client, address, admin_token, &path).await {
            Ok((200, view)) if until.reached(&view) => Ok(view),
            Ok((status, view)) => Err(format!("{status} {view:#}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// What [`wait_run`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// The page list is complete: the status is past `listing`.
    Listed,
    /// The run is finished.
    Finished,
}

impl RunState {
    fn reached(self, view: &serde_json::Value) -> bool {
        match self {
            RunState::Listed => view["status"].is_string() && view["status"] != "listing",
            RunState::Finished => view["status"] == "finished",
        }
    }
}

/// POSTs a trigger for `schedule`; returns the run id.
pub async fn trigger(
    client: &reqwest::Client,
    address: &str,
    admin_token: &str,
    schedule: &str,
) -> Uuid {
    let resp = client
        .post(format!("{address}/v1/schedules/{schedule}/trigger"))
        .bearer_auth(admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        202,
        "trigger answered {:?}",
        resp.text().await
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    body["run_id"].as_str().unwrap().parse().unwrap()
}

/// GETs an admin endpoint; returns (status, body as JSON or null).
pub async fn get(
    client: &reqwest::Client,
    address: &str,
    admin_token: &str,
    path: &str,
) -> reqwest::Result<(u16, serde_json::Value)> {
    let resp = client
        .get(format!("{address}{path}"))
        .bearer_auth(admin_token)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(serde_json::Value::Null)))
}

/// POSTs raw bytes to the callback endpoint, with a bearer token if given;
/// returns (status, body as JSON or null).
pub async fn post_callback(
    client: &reqwest::Client,
    address: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Result<(u16, serde_json::Value)> {
    let mut req = client
        .post(format!("{address}/v1/callbacks"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(serde_json::Value::Null)))
}

/// The text of `/metrics`.
pub async fn metrics_text(client: &reqwest::Client, address: &str) -> String {
    client
        .get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The `field` text of every item of the JSON array `list`, in order; a
/// test fails when `list` is no array or an item has no such text.
pub fn texts<'a>(list: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    let items = list
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"));
    items
        .iter()
        .map(|item| {
            item[field]
                .as_str()
                .unwrap_or_else(|| panic!("no text {field:?} in {item}"))
        })
        .collect()
}
