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
use fanfare_crawler::{field_text, same_field_value};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::config::{webhook_key, NotifyTarget};
use crate::ledger::{self, ChangeKind, Outbound, Outcome};
use crate::lifecycle::backoff;
use crate::lifecycle::changes::{ChangedPage, PageSnapshot};
use crate::lifecycle::run::NotificationBody;
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

/// The Slack incoming-webhook message for a notification body.
pub fn slack_message(body: &NotificationBody) -> Value {
    let run = match body {
        NotificationBody::Stuck(stuck) => {
            return json!({ "text": format!(
                ":hourglass: fanfare run of *{}* is stuck: no progress since {} ({} of {} pages still open; run {}).",
                slack_escape(&stuck.schedule),
                stuck.last_progress_at.to_rfc3339(),
                stuck.pages.open,
                stuck.pages.total,
                stuck.run_id,
            ) });
        }
        NotificationBody::Finished(run) => run,
    };
    let outcome = run.outcome.map_or("unfinished", Outcome::as_str);
    let icon = match run.outcome {
        Some(Outcome::Succeeded) => ":white_check_mark:",
        Some(Outcome::Partial) => ":warning:",
        _ => ":x:",
    };
    let pages = &run.pages;
    let mut text = format!(
        "{icon} fanfare run of *{}* {outcome}: {} of {} pages succeeded, {} failed, {} timed out (run {}, scheduled for {}).",
        slack_escape(&run.schedule),
        pages.succeeded,
        pages.total,
        pages.failed,
        pages.timed_out,
        run.run_id,
        run.scheduled_for.to_rfc3339(),
    );
    if let Some(err) = &run.error {
        text.push_str(&format!("\nError: {}", slack_escape(err)));
    }
    if let Some(d) = &run.discovery {
        text.push_str(&format!("\n{}.", discovery_text(d)));
    }
    if let Some(r) = render_text(&run.render) {
        text.push_str(&format!("\n{r}."));
    }
    if let Some(f) = fetches_text(&run.fetches) {
        text.push_str(&format!("\n{f}."));
    }
    if let Some(c) = &run.changes {
        text.push_str(&format!(
            "\nSince the previous run: {} new, {} changed, {} gone, {} unchanged.",
            c.new, c.changed, c.gone, c.unchanged,
        ));
        let listed = &run.changed_pages;
        for page in listed.iter().take(SLACK_CHANGES) {
            text.push('\n');
            text.push_str(&change_line(page));
        }
        let more = c.new + c.changed + c.gone - listed.len().min(SLACK_CHANGES) as i64;
        if more > 0 {
            text.push_str(&format!("\n… and {more} more changes"));
        }
    }
    for p in run.failed_pages.iter().take(10) {
        text.push_str(&format!(
            "\n• {}: {}",
            slack_escape(&p.url),
            slack_escape(&p.error)
        ));
    }
    if run.failed_pages.len() > 10 {
        text.push_str(&format!("\n… and {} more", run.failed_pages.len() - 10));
    }
    json!({ "text": text })
}

/// What rendering did, when any page went to the browser: `rendered in a
/// browser: 100 (36 sent on after a plain fetch), 50 as served`.
fn render_text(r: &crate::ledger::RenderCounts) -> Option<String> {
    (r.rendered > 0).then(|| {
        format!(
            "rendered in a browser: {} ({} sent on after a plain fetch), {} as served",
            r.rendered, r.escalated, r.plain
        )
    })
}

/// What conditional fetches saved, when any page was not modified:
/// `not modified since the previous run: 900, fetched in full: 100`.
fn fetches_text(f: &crate::ledger::FetchCounts) -> Option<String> {
    (f.not_modified > 0).then(|| {
        format!(
            "not modified since the previous run: {}, fetched in full: {}",
            f.not_modified, f.fetched
        )
    })
}

/// One line of what following links found: `followed links: 120 found,
/// 30 pages added, 80 known, left out 4 by pattern, 6 by depth`.
fn discovery_text(d: &crate::ledger::Discovery) -> String {
    let off = &d.left_out;
    let left: Vec<String> = [
        ("pattern", off.pattern),
        ("depth", off.depth),
        ("host", off.host),
        ("robots.txt", off.robots),
        ("max_pages", off.cap),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(why, n)| format!("{n} by {why}"))
    .collect();
    let mut text = format!(
        "followed links: {} found, {} pages added, {} known",
        d.found, d.added, d.known
    );
    if !left.is_empty() {
        text.push_str(&format!(", left out {}", left.join(", ")));
    }
    text
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

/// One change of a `run.finished` body as a Slack line: `+ url` (new),
/// `- url` (gone), `~ url: price 10 → 12, title A → B` (changed; the first
/// three differences, each value cut at 40 characters).
fn change_line(change: &ChangedPage) -> String {
    let url = slack_escape(&change.url);
    match change.kind {
        ChangeKind::New => format!("+ {url}"),
        ChangeKind::Gone => format!("- {url}"),
        ChangeKind::Changed => {
            let shown = |v: Option<&str>| -> String {
                let text = v.unwrap_or("–");
                let cut: String = text.chars().take(40).collect();
                let cut = if cut.len() < text.len() {
                    cut + "…"
                } else {
                    cut
                };
                slack_escape(&cut)
            };
            let none = PageSnapshot {
                title: None,
                fields: Default::default(),
                content_sha256: None,
            };
            let before = change.before.as_ref().unwrap_or(&none);
            let after = change.after.as_ref().unwrap_or(&none);
            let mut diffs = Vec::new();
            if before.title != after.title {
                diffs.push(format!(
                    "title {} → {}",
                    shown(before.title.as_deref()),
                    shown(after.title.as_deref())
                ));
            }
            let names: std::collections::BTreeSet<&String> =
                before.fields.keys().chain(after.fields.keys()).collect();
            let null = Value::Null;
            for name in names {
                // Compared by their text, as the ledger compares them: a
                // price 1299 is the text "1299".
                let old = before.fields.get(name).unwrap_or(&null);
                let new = after.fields.get(name).unwrap_or(&null);
                if !same_field_value(old, new) {
                    diffs.push(format!(
                        "{} {} → {}",
                        slack_escape(name),
                        shown(field_text(old).as_deref()),
                        shown(field_text(new).as_deref())
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

/// What a stored payload says, typed; a payload this release cannot read
/// (written by a later one) is logged and shown by its type alone.
fn read_body(n: &Outbound) -> Option<NotificationBody> {
    match serde_json::from_value(n.payload.clone()) {
        Ok(body) => Some(body),
        Err(e) => {
            tracing::warn!(webhook_id = %n.webhook_id, error = %e, "a notification's body is not one this release knows; it is shown by its type alone");
            None
        }
    }
}

/// The text shown for a payload [`read_body`] could not read.
fn unread_text(n: &Outbound) -> String {
    format!(
        "fanfare {} notification {} (this release cannot show its body)",
        n.event.as_str(),
        n.webhook_id
    )
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
        let kind = target.map_or("unknown", |t| t.kind().as_str());
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
                    .json(&match read_body(n) {
                        Some(body) => slack_message(&body),
                        None => json!({ "text": unread_text(n) }),
                    })
                    .send()
                    .await
                    .map_err(|e| format!("POST to {what}: {}", error_chain(&e.without_url())))?;
                check_status(resp, &what).await
            }
            NotifyTarget::Stdout => {
                let line = match read_body(n) {
                    Some(body) => stdout_line(&body),
                    None => unread_text(n),
                };
                // Above `fanfare dev`'s live progress lines, if any.
                crate::telemetry::suspend(|| println!("\n{line}\n"));
                Ok(())
            }
        }
    }
}

/// The line the stdout target prints (`fanfare dev`).
fn stdout_line(body: &NotificationBody) -> String {
    match body {
        NotificationBody::Stuck(stuck) => format!(
            "⏳ run.stuck — run {} of {:?}: no progress since {}",
            stuck.run_id,
            stuck.schedule,
            stuck.last_progress_at.to_rfc3339(),
        ),
        NotificationBody::Finished(run) => {
            let changes = run
                .changes
                .as_ref()
                .map(|c| {
                    format!(
                        "; since the previous run {} new, {} changed, {} gone",
                        c.new, c.changed, c.gone
                    )
                })
                .unwrap_or_default();
            let found = run
                .discovery
                .as_ref()
                .map(|d| format!("; {}", discovery_text(d)))
                .unwrap_or_default()
                + &render_text(&run.render)
                    .map(|r| format!("; {r}"))
                    .unwrap_or_default()
                + &fetches_text(&run.fetches)
                    .map(|f| format!("; {f}"))
                    .unwrap_or_default();
            format!(
                "🎺 run.finished {} — run {} of {:?}: {}/{} pages succeeded, {} failed, {} timed out{found}{changes}",
                run.outcome.map_or("unfinished", Outcome::as_str),
                run.run_id,
                run.schedule,
                run.pages.succeeded,
                run.pages.total,
                run.pages.failed,
                run.pages.timed_out,
            )
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
    use crate::ledger::NotifyEvent;
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
        let payload = finished_payload(
            "s",
            "cron",
            9,
            json!({
                "changes": {"since_run_id": "01a2513a-cfda-704c-b84f-b15c3cdc42b5", "new": 5, "changed": 1, "unchanged": 3, "gone": 1, "unknown": 0},
                "changed_pages": pages,
            }),
        );
        let body: NotificationBody = serde_json::from_value(payload).unwrap();
        let text = slack_message(&body)["text"].as_str().unwrap().to_string();
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

    /// A `run.finished` body of `schedule` whose `pages` all succeeded,
    /// with `extra`'s keys added.
    fn finished_payload(schedule: &str, trigger: &str, pages: u64, extra: Value) -> Value {
        let mut payload = json!({
            "type": "run.finished", "schedule": schedule, "outcome": "succeeded",
            "run_id": "01a2513a-d013-766b-b01f-ab89dd7e44ad", "trigger": trigger,
            "scheduled_for": "2026-12-07T10:00:00Z", "started_at": "2026-12-07T10:00:00Z",
            "finished_at": "2026-12-07T10:01:00Z", "failed_pages": [],
            "pages": {"total": pages, "succeeded": pages, "failed": 0, "timed_out": 0, "cancelled": 0},
        });
        if let (Some(body), Value::Object(extra)) = (payload.as_object_mut(), extra) {
            body.extend(extra);
        }
        payload
    }

    #[test]
    fn slack_and_the_terminal_say_how_many_pages_a_browser_rendered_only_when_one_did() {
        let mut payload = finished_payload(
            "spa",
            "manual",
            150,
            json!({
                "render": {"plain": 50, "rendered": 100, "escalated": 36},
            }),
        );
        let said = "rendered in a browser: 100 (36 sent on after a plain fetch), 50 as served";
        let body: NotificationBody = serde_json::from_value(payload.clone()).unwrap();
        let slack = slack_message(&body)["text"].as_str().unwrap().to_string();
        assert!(slack.lines().any(|l| l == format!("{said}.")), "{slack}");
        assert!(stdout_line(&body).contains(said), "{}", stdout_line(&body));

        payload["render"] = json!({"plain": 150, "rendered": 0, "escalated": 0});
        let body: NotificationBody = serde_json::from_value(payload).unwrap();
        let slack = slack_message(&body)["text"].as_str().unwrap().to_string();
        assert!(!slack.contains("browser"), "{slack}");
    }

    #[test]
    fn slack_and_the_terminal_say_how_many_pages_were_not_modified_only_when_some_were() {
        let mut payload = finished_payload(
            "shop",
            "manual",
            150,
            json!({
                "fetches": {"fetched": 10, "not_modified": 140},
            }),
        );
        let said = "not modified since the previous run: 140, fetched in full: 10";
        let body: NotificationBody = serde_json::from_value(payload.clone()).unwrap();
        let slack = slack_message(&body)["text"].as_str().unwrap().to_string();
        assert!(slack.lines().any(|l| l == format!("{said}.")), "{slack}");
        assert!(stdout_line(&body).contains(said), "{}", stdout_line(&body));

        // A body from before conditional fetches reads as none.
        payload.as_object_mut().unwrap().remove("fetches");
        let body: NotificationBody = serde_json::from_value(payload).unwrap();
        let slack = slack_message(&body)["text"].as_str().unwrap().to_string();
        assert!(!slack.contains("not modified"), "{slack}");
    }

    #[test]
    fn a_slack_change_line_shows_typed_values_and_skips_a_number_equal_to_its_text() {
        let change: ChangedPage = serde_json::from_value(json!({
            "url": "https://shop.example/p/1", "kind": "changed",
            "before": {"title": "T", "fields": {"price": "1299", "stock": 5, "tags": ["a"], "gone": "x"}},
            "after": {"title": "T", "fields": {"price": 1399, "stock": "5", "tags": ["a", "b"], "gone": null}},
        }))
        .unwrap();
        assert_eq!(
            change_line(&change),
            r#"~ https://shop.example/p/1: gone x → –, price 1299 → 1399, tags ["a"] → ["a","b"]"#
        );
    }

    #[test]
    fn a_body_this_release_cannot_read_is_shown_by_its_type_and_a_stuck_run_by_its_counts() {
        let outbound = |payload: Value| Outbound {
            id: 1,
            run_id: uuid::Uuid::nil(),
            schedule: "s".into(),
            event: NotifyEvent::RunStuck,
            target: 0,
            webhook_id: "msg_x".into(),
            payload,
            attempts: 1,
            created_at: Utc::now(),
        };
        let later = outbound(json!({"type": "run.stuck", "run_id": "not a uuid"}));
        assert_eq!(read_body(&later), None);
        assert_eq!(
            unread_text(&later),
            "fanfare run.stuck notification msg_x (this release cannot show its body)"
        );
        let stuck = outbound(json!({
            "type": "run.stuck", "run_id": "01a2513a-cfda-704c-b84f-b15c3cdc42b5",
            "schedule": "s<1>", "trigger": "cron", "scheduled_for": "2026-12-07T10:00:00Z",
            "started_at": "2026-12-07T10:00:00Z", "last_progress_at": "2026-12-07T10:05:00Z",
            "pages": {"total": 9, "open": 4, "succeeded": 5, "failed": 0, "timed_out": 0, "cancelled": 0},
        }));
        let body = read_body(&stuck).expect("a run.stuck body");
        assert!(matches!(body, NotificationBody::Stuck(_)));
        assert_eq!(
            slack_message(&body)["text"],
            ":hourglass: fanfare run of *s&lt;1&gt;* is stuck: no progress since 2026-12-07T10:05:00+00:00 (4 of 9 pages still open; run 01a2513a-cfda-704c-b84f-b15c3cdc42b5)."
        );
    }

    #[test]
    fn secrets_without_the_whsec_prefix_are_refused() {
        assert!(webhook_key(&SecretString::from("abc".to_string())).is_err());
        assert!(webhook_key(&SecretString::from("whsec_!!".to_string())).is_err());
    }
}
