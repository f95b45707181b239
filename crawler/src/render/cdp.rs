//! A small Chrome DevTools Protocol client over Chromium's
//! `--remote-debugging-pipe`: commands go to the browser's file descriptor
//! 3, answers and events come back on 4, each message a JSON object ended
//! by a NUL byte.
//!
//! A pipe instead of `--remote-debugging-port`: no websocket client to
//! build, and no DevTools port listening on loopback for a page's scripts
//! (or anything else on the host) to find.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

/// The largest message read from the browser (a rendered document comes
/// back as one). Past it the connection is closed.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// An event the browser sent for one session.
#[derive(Debug)]
pub(crate) struct Event {
    /// `Domain.event`.
    pub method: String,
    /// The event's parameters.
    pub params: Value,
}

type Pending = HashMap<u64, oneshot::Sender<Result<Value, String>>>;
type Sessions = HashMap<String, mpsc::UnboundedSender<Event>>;

/// The connection to one browser. Cheap to share behind an `Arc`.
pub(crate) struct Cdp {
    next_id: Arc<AtomicU64>,
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    pending: Arc<Mutex<Pending>>,
    sessions: Arc<Mutex<Sessions>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Cdp {
    /// Talks to a browser that reads commands from `to_browser` and writes
    /// to `from_browser`; spawns the reader and writer tasks, which end
    /// when the browser closes its end.
    pub(crate) fn new(
        to_browser: impl AsyncWrite + Unpin + Send + 'static,
        from_browser: impl AsyncRead + Unpin + Send + 'static,
    ) -> Self {
        let (outgoing, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
        let pending: Arc<Mutex<Pending>> = Arc::default();
        let sessions: Arc<Mutex<Sessions>> = Arc::default();
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut to_browser = to_browser;
        tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if to_browser.write_all(&message).await.is_err() {
                    break;
                }
            }
        });
        let reader = Reader {
            pending: pending.clone(),
            sessions: sessions.clone(),
            closed: closed.clone(),
        };
        tokio::spawn(reader.run(from_browser));
        Self {
            next_id: Arc::new(AtomicU64::new(1)),
            outgoing,
            pending,
            sessions,
            closed,
        }
    }

    /// Whether the browser's end of the pipe has closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed) || self.outgoing.is_closed()
    }

    /// Sends `method` (to the browser, or to a page's `session`) and waits
    /// for its answer: the result, or the protocol's error message.
    pub(crate) async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = Value::String(session.to_string());
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let mut bytes = serde_json::to_vec(&message).map_err(|e| e.to_string())?;
        bytes.push(0);
        if self.is_closed() || self.outgoing.send(bytes).is_err() {
            lock(&self.pending).remove(&id);
            return Err("the browser has exited".into());
        }
        match rx.await {
            Ok(answer) => answer.map_err(|e| format!("{method}: {e}")),
            Err(_) => Err(format!("{method}: the browser exited before answering")),
        }
    }

    /// Sends `method` without waiting for its answer (a page's requests are
    /// answered this way, from the event loop).
    pub(crate) fn send(&self, session: &str, method: &str, params: Value) {
        self.sender().send(session, method, params);
    }

    /// A handle that sends commands without waiting for their answers, for
    /// tasks that outlive a borrow of the connection.
    pub(crate) fn sender(&self) -> Sender {
        Sender {
            next_id: self.next_id.clone(),
            outgoing: self.outgoing.clone(),
        }
    }

    /// The events of `session` from now on, until [`Cdp::forget`].
    pub(crate) fn events(&self, session: &str) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.sessions).insert(session.to_string(), tx);
        rx
    }

    /// Stops routing `session`'s events.
    pub(crate) fn forget(&self, session: &str) {
        lock(&self.sessions).remove(session);
    }
}

/// Sends commands to the browser without waiting for their answers.
#[derive(Clone)]
pub(crate) struct Sender {
    next_id: Arc<AtomicU64>,
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
}

impl Sender {
    /// Sends `method` to `session`; the answer is dropped when it comes.
    pub(crate) fn send(&self, session: &str, method: &str, params: Value) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = json!({ "id": id, "method": method, "params": params, "sessionId": session });
        if let Ok(mut bytes) = serde_json::to_vec(&message) {
            bytes.push(0);
            let _ = self.outgoing.send(bytes);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

struct Reader {
    pending: Arc<Mutex<Pending>>,
    sessions: Arc<Mutex<Sessions>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Reader {
    async fn run(self, from_browser: impl AsyncRead + Unpin) {
        let mut from_browser = BufReader::with_capacity(64 * 1024, from_browser);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match read_message(&mut from_browser, &mut buf).await {
                Ok(true) => self.route(&buf),
                Ok(false) | Err(_) => break,
            }
        }
        self.closed.store(true, Ordering::Relaxed);
        // Every caller still waiting learns that the browser is gone.
        lock(&self.pending).clear();
        lock(&self.sessions).clear();
    }

    fn route(&self, message: &[u8]) {
        let Ok(mut message) = serde_json::from_slice::<Value>(message) else {
            tracing::debug!("the browser sent a message that is not JSON");
            return;
        };
        if let Some(id) = message.get("id").and_then(Value::as_u64) {
            let answer = match message.get_mut("error") {
                Some(error) => Err(error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the browser answered with an error")
                    .to_string()),
                None => Ok(message
                    .get_mut("result")
                    .map(Value::take)
                    .unwrap_or_default()),
            };
            if let Some(tx) = lock(&self.pending).remove(&id) {
                let _ = tx.send(answer);
            }
            return;
        }
        let (Some(method), Some(session)) = (
            message
                .get("method")
                .and_then(Value::as_str)
                .map(str::to_string),
            message
                .get("sessionId")
                .and_then(Value::as_str)
                .map(str::to_string),
        ) else {
            return;
        };
        let event = Event {
            method,
            params: message
                .get_mut("params")
                .map(Value::take)
                .unwrap_or_default(),
        };
        if let Some(tx) = lock(&self.sessions).get(&session) {
            let _ = tx.send(event);
        }
    }
}

/// Reads one NUL-ended message into `buf`; `false` at the end of the pipe.
async fn read_message(
    from_browser: &mut (impl AsyncBufReadExt + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    loop {
        let available = from_browser.fill_buf().await?;
        if available.is_empty() {
            return Ok(false);
        }
        let (taken, done) = match memchr(available) {
            Some(end) => (end + 1, true),
            None => (available.len(), false),
        };
        let piece = &available[..taken];
        buf.extend_from_slice(piece.strip_suffix(&[0]).unwrap_or(piece));
        from_browser.consume(taken);
        if buf.len() > MAX_MESSAGE_BYTES {
            return Err(std::io::Error::other(
                "a message from the browser is too large",
            ));
        }
        if done {
            return Ok(true);
        }
    }
}

fn memchr(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_reach_their_callers_and_events_their_sessions() {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (their_read, mut their_write) = tokio::io::split(theirs);
        let (our_read, our_write) = tokio::io::split(ours);
        let cdp = Arc::new(Cdp::new(our_write, our_read));
        let mut events = cdp.events("s1");
        let call = tokio::spawn({
            let cdp = cdp.clone();
            async move {
                cdp.call(Some("s1"), "Page.navigate", json!({"url": "x"}))
                    .await
            }
        });
        let mut their_read = BufReader::new(their_read);
        let mut sent = Vec::new();
        assert!(read_message(&mut their_read, &mut sent).await.unwrap());
        let sent: Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(sent["method"], "Page.navigate");
        assert_eq!(sent["sessionId"], "s1");
        let id = sent["id"].as_u64().unwrap();
        // An event, split across writes, then the answer.
        their_write
            .write_all(br#"{"method":"Page.loadEventFired","sessionId":"s1","#)
            .await
            .unwrap();
        their_write
            .write_all(b"\"params\":{\"timestamp\":1}}\0")
            .await
            .unwrap();
        their_write
            .write_all(format!(r#"{{"id":{id},"result":{{"frameId":"f"}}}}"#).as_bytes())
            .await
            .unwrap();
        their_write.write_all(b"\0").await.unwrap();
        let answer = call.await.unwrap().unwrap();
        assert_eq!(answer["frameId"], "f");
        let event = events.recv().await.unwrap();
        assert_eq!(event.method, "Page.loadEventFired");
        assert_eq!(event.params["timestamp"], 1);

        // An error answer names the method; a closed pipe ends every call.
        let call = tokio::spawn({
            let cdp = cdp.clone();
            async move { cdp.call(None, "Target.nothing", json!({})).await }
        });
        let mut sent = Vec::new();
        assert!(read_message(&mut their_read, &mut sent).await.unwrap());
        let id = serde_json::from_slice::<Value>(&sent).unwrap()["id"].clone();
        their_write
            .write_all(
                format!(r#"{{"id":{id},"error":{{"message":"no such method"}}}}"#).as_bytes(),
            )
            .await
            .unwrap();
        their_write.write_all(b"\0").await.unwrap();
        let error = call.await.unwrap().unwrap_err();
        assert!(
            error.contains("Target.nothing") && error.contains("no such method"),
            "{error}"
        );
        drop(their_write);
        drop(their_read);
        let error = cdp
            .call(None, "Browser.getVersion", json!({}))
            .await
            .unwrap_err();
        assert!(error.contains("exited"), "{error}");
    }
}
