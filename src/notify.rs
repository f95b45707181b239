//! Notifications: Standard Webhooks signing, Slack messages, and the
//! notifier that drains the outbox (the payloads are the lifecycle's:
//! [`crate::lifecycle::run`]).
//!
//! The outbox row is written in the same transaction that finishes the run,
//! so a notification exists if and only if the run finished. Delivery is at
//! least once: a receiver dedupes on `webhook-id`, which is stable per run
//! and target.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::Utc;
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::config::{webhook_key, NotifyTarget};
use crate::ledger::{self, NotifyEvent, Outbound};
use crate::lifecycle::backoff;
use crate::redact;
use crate::runs::Runs;
use crate::telemetry::error_chain;

/// How long a claimed notification is leased to the replica sending it,
/// beyond the delivery timeout: a replica that dies mid-delivery delays the
/// notification by about this much.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "{id}.{ts}.{body}">`.
pub fn sign_webhook(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The Slack incoming-webhook message for a notification payload.
pub fn slack_message(payload: &Value) -> Value {
    let s = |k: &str| {
        payload
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let n = |k: &str| payload["pages"].get(k).and_then(Value::as_i64).unwrap_or(0);
    if payload.get("type").and_then(Value::as_str) == Some("run.stuck") {
        return json!({ "text": format!(
            ":hourglass: fanfare run of *{}* is stuck: no progress since {} ({} of {} pages still open; run {}).",
            s("schedule"),
            s("last_progress_at"),
            n("open"),
            n("total"),
            s("run_id"),
        ) });
    }
    let outcome = s("outcome");
    let icon = match outcome.as_str() {
        "succeeded" => ":white_check_mark:",
        "partial" => ":warning:",
        _ => ":x:",
    };
    let mut text = format!(
        "{icon} fanfare run of *{}* {outcome}: {} of {} pages succeeded, {} failed, {} timed out (run {}, scheduled for {}).",
        s("schedule"),
        n("succeeded"),
        n("total"),
        n("failed"),
        n("timed_out"),
        s("run_id"),
        s("scheduled_for"),
    );
    if let Some(err) = payload.get("error").and_then(Value::as_str) {
        text.push_str(&format!("\nError: {}", slack_escape(err)));
    }
    if let Some(c) = payload.get("changes").filter(|c| c.is_object()) {
        let n = |k: &str| c.get(k).and_then(Value::as_i64).unwrap_or(0);
        text.push_str(&format!(
            "\nSince the previous run: {} new, {} changed, {} gone, {} unchanged.",
            n("new"),
            n("changed"),
            n("gone"),
            n("unchanged"),
        ));
        let listed = payload
            .get("changed_pages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for p in listed.iter().take(SLACK_CHANGES) {
            text.push('\n');
            text.push_str(&change_line(p));
        }
        let more = n("new") + n("changed") + n("gone") - listed.len().min(SLACK_CHANGES) as i64;
        if more > 0 {
            text.push_str(&format!("\n… and {more} more changes"));
        }
    }
    if let Some(failed) = payload.get("failed_pages").and_then(Value::as_array) {
        for p in failed.iter().take(10) {
            text.push_str(&format!(
                "\n• {}: {}",
                slack_escape(p["url"].as_str().unwrap_or("?")),
                slack_escape(p["error"].as_str().unwrap_or("?"))
            ));
        }
        if failed.len() > 10 {
            text.push_str(&format!("\n… and {} more", failed.len() - 10));
        }
    }
    json!({ "text": text })
}

/// How many changed pages a Slack message lists at most.
const SLACK_CHANGES: usize = 5;

/// Text for a Slack message: `&`, `<` and `>` are control characters of
/// Slack's markup (links, mentions), so third-party text is escaped.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One change of a `run.finished` payload as a Slack line: `+ url` (new),
/// `- url` (gone), `~ url: price 10 → 12, title A → B` (changed; the first
/// three differences, each value cut at 40 characters).
fn change_line(change: &Value) -> String {
    let url = slack_escape(change["url"].as_str().unwrap_or("?"));
    match change["kind"].as_str() {
        Some("new") => format!("+ {url}"),
        Some("gone") => format!("- {url}"),
        _ => {
            let (before, after) = (&change["before"], &change["after"]);
            let shown = |v: &Value| -> String {
                let text = match v {
                    Value::Null => "–".to_string(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let cut: String = text.chars().take(40).collect();
                let cut = if cut.len() < text.len() {
                    cut + "…"
                } else {
                    cut
                };
                slack_escape(&cut)
            };
            let mut diffs = Vec::new();
            if before["title"] != after["title"] {
                diffs.push(format!(
                    "title {} → {}",
                    shown(&before["title"]),
                    shown(&after["title"])
                ));
            }
            let no_fields = serde_json::Map::new();
            let (b, a) = (
                before["fields"].as_object().unwrap_or(&no_fields),
                after["fields"].as_object().unwrap_or(&no_fields),
            );
            let names: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for name in names {
                let (old, new) = (
                    b.get(name).unwrap_or(&Value::Null),
                    a.get(name).unwrap_or(&Value::Null),
                );
                if old != new {
                    diffs.push(format!(
                        "{} {} → {}",
                        slack_escape(name),
                        shown(old),
                        shown(new)
                    ));
                }
            }
            if diffs.is_empty() {
                // compare = "content": the body changed, the facts did not.
                format!("~ {url}: content")
            } else {
                diffs.truncate(3);
                format!("~ {url}: {}", diffs.join(", "))
            }
        }
    }
}

/// Delivers outbox rows; any number of replicas may run one.
pub struct Notifier {
    runs: Arc<Runs>,
    http: reqwest::Client,
}

impl Notifier {
    /// A notifier, woken by `runs.wake_notify` when a run finishes.
    pub fn new(runs: Arc<Runs>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(runs.settings.notify.timeout)
            .user_agent(concat!("fanfare/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with a timeout and user agent builds");
        Self { runs, http }
    }

    /// A claimed batch is delivered concurrently, so one delivery's timeout
    /// bounds it.
    fn lease(&self) -> Duration {
        self.runs.settings.notify.timeout + LEASE_MARGIN
    }

    /// Drains the outbox until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let claimed = match ledger::claim_notifications(&self.runs.pool, 16, self.lease()).await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the notification outbox; retrying");
                    Vec::new()
                }
            };
            let busy = !claimed.is_empty();
            futures::future::join_all(claimed.into_iter().map(|n| self.deliver_one(n))).await;
            if busy {
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.runs.wake_notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    #[tracing::instrument(skip_all, fields(run_id = %n.run_id, schedule = %n.schedule, webhook_id = %n.webhook_id, attempt = n.attempts))]
    async fn deliver_one(&self, n: Outbound) {
        let target = self
            .runs
            .settings
            .schedule(&n.schedule)
            .and_then(|s| s.notify.get(n.target as usize))
            .map(|t| &t.target);
        let result = match target {
            Some(t) => self.send(t, &n).await,
            None => Err(format!(
                "schedule {:?} no longer has notify target {}",
                n.schedule, n.target
            )),
        };
        let kind = target.map(NotifyTarget::kind).unwrap_or("unknown");
        let stored = match result {
            Ok(()) => {
                metrics::counter!("fanfare_notifications_sent_total", "kind" => kind).increment(1);
                tracing::info!(kind, "notification delivered");
                ledger::notification_delivered(&self.runs.pool, n.id).await
            }
            Err(error) => {
                let age = (Utc::now() - n.created_at).to_std().unwrap_or_default();
                let retry_in = (target.is_some() && age < self.runs.settings.notify.retry_for)
                    .then(|| backoff(n.attempts));
                match retry_in {
                    Some(wait) => {
                        metrics::counter!("fanfare_notification_attempts_failed_total", "kind" => kind).increment(1);
                        tracing::warn!(kind, %error, retry_in = ?wait, "notification delivery failed; will retry");
                    }
                    None => {
                        metrics::counter!("fanfare_notifications_failed_total", "kind" => kind)
                            .increment(1);
                        tracing::error!(kind, %error, "notification delivery failed; giving up");
                    }
                }
                ledger::notification_failed(&self.runs.pool, n.id, &error, retry_in).await
            }
        };
        if let Err(e) = stored {
            // The lease expires and the row is tried again; a receiver sees
            // the same webhook-id and dedupes.
            tracing::warn!(error = %e, "could not record the notification's delivery state");
        }
    }

    /// Delivers `n` to `target`. An error names the target by kind and
    /// index (`webhook 0`), never by URL: webhook and Slack URLs are secrets,
    /// and the error is stored in the outbox and shown by the API.
    async fn send(&self, target: &NotifyTarget, n: &Outbound) -> Result<(), String> {
        match target {
            NotifyTarget::Webhook {
                url,
                secret,
                previous_secret,
            } => {
                let what = format!("webhook {}", n.target);
                let key = webhook_key(secret)?;
                let body = serde_json::to_vec(&n.payload).map_err(|e| e.to_string())?;
                let ts = Utc::now().timestamp();
                let mut sig = sign_webhook(&key, &n.webhook_id, ts, &body);
                if let Some(old) = previous_secret {
                    // Standard Webhooks: several space-separated signatures,
                    // the receiver accepts the delivery if any verifies.
                    sig.push(' ');
                    sig.push_str(&sign_webhook(&webhook_key(old)?, &n.webhook_id, ts, &body));
                }
                let resp = self
                    .http
                    .post(url.expose().clone())
                    .header("content-type", "application/json")
                    .header("webhook-id", &n.webhook_id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", sig)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| {
                        let error = error_chain(&e.without_url());
                        format!("POST to {what}: {}", redact::scrub(&error, url.expose()))
                    })?;
                check_status(resp, &what)
                    .await
                    .map_err(|e| redact::scrub(&e, url.expose()))
            }
            NotifyTarget::Slack { url } => {
                let what = format!("Slack {}", n.target);
                let resp = self
                    .http
                    .post(url.expose_secret())
                    .json(&slack_message(&n.payload))
                    .send()
                    .await
                    .map_err(|e| format!("POST to {what}: {}", error_chain(&e.without_url())))?;
                check_status(resp, &what).await
            }
            NotifyTarget::Stdout if n.event == NotifyEvent::RunStuck => {
                let p = &n.payload;
                // Above `fanfare dev`'s live progress lines, if any.
                crate::telemetry::suspend(|| {
                    println!(
                        "\n⏳ run.stuck — run {} of {:?}: no progress since {}\n",
                        p["run_id"].as_str().unwrap_or("?"),
                        p["schedule"].as_str().unwrap_or("?"),
                        p["last_progress_at"].as_str().unwrap_or("?"),
                    )
                });
                Ok(())
            }
            NotifyTarget::Stdout => {
                let p = &n.payload;
                let c = &p["changes"];
                let changes = if c.is_object() {
                    format!(
                        "; since the previous run {} new, {} changed, {} gone",
                        c["new"], c["changed"], c["gone"]
                    )
                } else {
                    String::new()
                };
                crate::telemetry::suspend(|| {
                    println!(
                    "\n🎺 {} {} — run {} of {:?}: {}/{} pages succeeded, {} failed, {} timed out{changes}\n",
                    p["type"].as_str().unwrap_or("?"),
                    p["outcome"].as_str().unwrap_or("?"),
                    p["run_id"].as_str().unwrap_or("?"),
                    p["schedule"].as_str().unwrap_or("?"),
                    p["pages"]["succeeded"],
                    p["pages"]["total"],
                    p["pages"]["failed"],
                    p["pages"]["timed_out"],
                )
                });
                Ok(())
            }
        }
    }
}

async fn check_status(resp: reqwest::Response, what: &str) -> Result<(), String> {
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(200).collect();
    Err(format!("{what} answered {status}: {body}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn webhook_signatures_match_the_standard_webhooks_reference() {
        // The example from the Standard Webhooks specification's test vectors.
        let key = webhook_key(&SecretString::from(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
        ))
        .unwrap();
        let sig = sign_webhook(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn slack_shows_the_change_counts_and_the_first_five_changes_escaped() {
        let page = |i: usize| {
            json!({"url": format!("https://shop.example/p/{i}?a=1&b=<2>"), "kind": "new",
                   "before": null, "after": {"title": "T", "fields": {}, "content_sha256": "00"}})
        };
        let mut pages = vec![
            json!({"url": "https://shop.example/p/0", "kind": "changed",
                   "before": {"title": "T", "fields": {"price": "10", "name": "A"}, "content_sha256": "00"},
                   "after": {"title": "T", "fields": {"price": "12", "name": "A"}, "content_sha256": "01"}}),
            json!({"url": "https://shop.example/gone", "kind": "gone",
                   "before": {"title": "T", "fields": {}, "content_sha256": "00"}, "after": null}),
        ];
        pages.extend((1..=5).map(page));
        let payload = json!({
            "type": "run.finished", "schedule": "s", "outcome": "succeeded", "run_id": "r",
            "scheduled_for": "t", "pages": {"total": 9, "succeeded": 9},
            "changes": {"since_run_id": "q", "new": 5, "changed": 1, "unchanged": 3, "gone": 1, "unknown": 0},
            "changed_pages": pages,
        });
        let text = slack_message(&payload)["text"]
            .as_str()
            .unwrap()
            .to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1..],
            [
                "Since the previous run: 5 new, 1 changed, 1 gone, 3 unchanged.",
                "~ https://shop.example/p/0: price 10 → 12",
                "- https://shop.example/gone",
                "+ https://shop.example/p/1?a=1&amp;b=&lt;2&gt;",
                "+ https://shop.example/p/2?a=1&amp;b=&lt;2&gt;",
                "+ https://shop.example/p/3?a=1&amp;b=&lt;2&gt;",
                "… and 2 more changes",
            ],
            "{text}"
        );
    }

    #[test]
    fn secrets_without_the_whsec_prefix_are_refused() {
        assert!(webhook_key(&SecretString::from("abc".to_string())).is_err());
        assert!(webhook_key(&SecretString::from("whsec_!!".to_string())).is_err());
    }
}
