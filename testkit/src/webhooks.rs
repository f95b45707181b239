//! Loopback webhook receivers that record every delivery and answer as
//! told, and Standard Webhooks signatures computed independently of
//! fanfare's code.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use hmac::Mac;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::WEBHOOK_SECRET;
use crate::wait::{eventually_notified, holds};

/// A header's value; empty when absent or not text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The Standard Webhooks signature (`v1,<base64>`) a delivery with these
/// headers and body must carry under [`WEBHOOK_SECRET`], computed
/// independently of fanfare's code.
pub fn expected_signature(headers: &HeaderMap, body: &[u8]) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(WEBHOOK_SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(header(headers, "webhook-id").as_bytes());
    mac.update(b".");
    mac.update(header(headers, "webhook-timestamp").as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// One received webhook.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Request headers.
    pub headers: HeaderMap,
    /// Raw body.
    pub body: Bytes,
    /// What the receiver answered.
    pub answered: u16,
    /// When it arrived.
    pub at: Instant,
}

impl Delivery {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> &str {
        header(&self.headers, name)
    }

    /// The Standard Webhooks signature this delivery must carry.
    pub fn expected_signature(&self) -> String {
        expected_signature(&self.headers, &self.body)
    }

    /// Verifies the Standard Webhooks signature independently of fanfare's
    /// code.
    pub fn assert_signed(&self) {
        assert_eq!(
            self.header("webhook-signature"),
            self.expected_signature(),
            "the webhook signature verifies"
        );
    }

    /// This delivery summarised.
    pub fn hit(&self) -> Hit {
        let json: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        Hit {
            webhook_id: self.header("webhook-id").to_string(),
            run_id: json["run_id"].as_str().unwrap_or_default().to_string(),
            event: json["type"].as_str().unwrap_or_default().to_string(),
            signature_ok: self.header("webhook-signature") == self.expected_signature(),
            answered: self.answered,
            at: self.at,
        }
    }
}

/// One webhook delivery summarised: who, what, whether it verified, what it
/// was answered.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The `webhook-id` header.
    pub webhook_id: String,
    /// `run_id` of the body.
    pub run_id: String,
    /// `type` of the body.
    pub event: String,
    /// Whether the Standard Webhooks signature verified.
    pub signature_ok: bool,
    /// What the receiver answered.
    pub answered: u16,
    /// When it arrived.
    pub at: Instant,
}

impl Hit {
    /// Whether the receiver accepted it.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.answered)
    }
}

/// Deliveries per webhook-id.
pub fn by_webhook_id(hits: &[Hit]) -> BTreeMap<String, Vec<Hit>> {
    let mut map: BTreeMap<String, Vec<Hit>> = BTreeMap::new();
    for h in hits {
        map.entry(h.webhook_id.clone()).or_default().push(h.clone());
    }
    map
}

/// Chooses the answer to a delivery: given its 0-based index among all
/// deliveries and the time since the first delivery.
pub type Policy = dyn Fn(usize, Duration) -> u16 + Send + Sync;

/// A loopback webhook receiver at `http://127.0.0.1:PORT/hook` that records
/// every delivery and answers as its policy says.
#[derive(Clone)]
pub struct Receiver {
    /// Its URL.
    pub url: String,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    notify: Arc<Notify>,
}

struct ReceiverState {
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    notify: Arc<Notify>,
    policy: Box<Policy>,
    first: Mutex<Option<Instant>>,
}

impl Receiver {
    /// A receiver that answers its first `fail_first` deliveries with 503,
    /// then 200.
    pub async fn start(fail_first: usize) -> Self {
        Self::with_policy(Box::new(move |i, _| if i < fail_first { 503 } else { 200 })).await
    }

    /// A receiver that accepts everything.
    pub async fn accepting() -> Self {
        Self::start(0).await
    }

    /// A receiver answering as `policy` says.
    pub async fn with_policy(policy: Box<Policy>) -> Self {
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(Notify::new());
        let state = Arc::new(ReceiverState {
            deliveries: deliveries.clone(),
            notify: notify.clone(),
            policy,
            first: Mutex::new(None),
        });
        async fn hook(
            State(s): State<Arc<ReceiverState>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let at = Instant::now();
            let since_first = at - *s.first.lock().unwrap().get_or_insert(at);
            let mut deliveries = s.deliveries.lock().unwrap();
            let answered = (s.policy)(deliveries.len(), since_first);
            deliveries.push(Delivery {
                headers,
                body,
                answered,
                at,
            });
            drop(deliveries);
            s.notify.notify_waiters();
            StatusCode::from_u16(answered).expect("the policy answers a valid status")
        }
        let app = Router::new().route("/hook", post(hook)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            deliveries,
            notify,
        }
    }

    /// Everything received so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    /// Everything received so far, summarised.
    pub fn hits(&self) -> Vec<Hit> {
        self.deliveries().iter().map(Delivery::hit).collect()
    }

    /// The `run.finished` deliveries about `run` so far.
    pub fn hits_for(&self, run: Uuid) -> Vec<Hit> {
        let run = run.to_string();
        self.hits()
            .into_iter()
            .filter(|h| h.run_id == run && h.event == "run.finished")
            .collect()
    }

    /// Waits until `n` deliveries arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Delivery> {
        let what = format!("{n} webhook deliveries");
        eventually_notified(&what, within, &self.notify, || {
            let got = self.deliveries();
            holds(got.len() >= n, format!("{} deliveries", got.len())).map(|()| got)
        })
        .await
    }

    /// Waits for the first delivery, then a little longer to catch a
    /// second one that must not come; returns everything received.
    pub async fn wait_for_one(&self, within: Duration) -> Vec<Delivery> {
        self.wait_for(1, within).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.deliveries()
    }

    /// Waits until a delivery about `run` was accepted; returns the
    /// deliveries about it.
    pub async fn wait_delivered(&self, run: Uuid, within: Duration) -> Vec<Hit> {
        let what = format!("an accepted webhook delivery for run {run}");
        eventually_notified(&what, within, &self.notify, || {
            let got = self.hits_for(run);
            holds(got.iter().any(Hit::accepted), format!("{got:?}")).map(|()| got)
        })
        .await
    }
}
