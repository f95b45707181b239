//! A Lambda API stand-in that records every Event invoke and does nothing
//! else: the test plays the crawler.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use fanfare::dispatch::{InvokeError, LambdaApi};
use fanfare_crawler::contract::CrawlRequest;
use futures::future::BoxFuture;
use tokio::sync::Notify;

use crate::wait::eventually_notified;

/// A Lambda API stand-in that records every Event invoke and does nothing
/// else: the test plays the crawler.
#[derive(Default)]
pub struct RecordingLambda {
    /// (function, event) in the order invoked.
    pub events: Mutex<Vec<(String, CrawlRequest)>>,
    /// Errors to answer with, first come first served, before accepting.
    pub fail_next: Mutex<VecDeque<InvokeError>>,
    /// Notified on every invoke.
    pub invoked: Notify,
}

impl RecordingLambda {
    /// The recorded events.
    pub fn requests(&self) -> Vec<CrawlRequest> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Waits until at least `n` events were recorded.
    pub async fn wait_for(&self, n: usize) -> Vec<CrawlRequest> {
        let what = format!("{n} invokes");
        self.wait_until(Duration::from_secs(30), &what, |got| got.len() >= n)
            .await
    }

    /// Waits until `done` holds for the recorded events.
    pub async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[CrawlRequest]) -> bool,
    ) -> Vec<CrawlRequest> {
        eventually_notified(what, within, &self.invoked, || {
            let got = self.requests();
            if done(&got) {
                Ok(got)
            } else {
                Err(format!("{} invokes", got.len()))
            }
        })
        .await
    }
}

impl LambdaApi for RecordingLambda {
    fn invoke_event(
        &self,
        function: &str,
        payload: Vec<u8>,
    ) -> BoxFuture<'_, Result<Option<String>, InvokeError>> {
        let function = function.to_string();
        Box::pin(async move {
            if let Some(e) = self.fail_next.lock().unwrap().pop_front() {
                return Err(e);
            }
            let request: CrawlRequest =
                serde_json::from_slice(&payload).expect("the event is a contract request");
            self.events.lock().unwrap().push((function, request));
            self.invoked.notify_waiters();
            Ok(None)
        })
    }
}
