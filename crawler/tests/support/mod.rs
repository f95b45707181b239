//! Loopback servers shared by the integration tests.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

/// Serves `router` on 127.0.0.1 at a free port until the test ends.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// One request the receiver was sent.
#[derive(Debug, Clone)]
pub struct Received {
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The body as sent.
    pub body: String,
}

/// A callback receiver: answers with the scripted responses in order, then
/// with `{"status":"recorded"}`, and records every request.
#[derive(Clone, Default)]
pub struct Receiver {
    script: Arc<Mutex<VecDeque<(StatusCode, &'static str)>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Starts a receiver at `/v1/callbacks`; returns it and its URL.
    pub async fn start(script: &[(StatusCode, &'static str)]) -> (Self, String) {
        let receiver = Receiver::default();
        receiver
            .script
            .lock()
            .unwrap()
            .extend(script.iter().copied());
        let app = Router::new()
            .route("/v1/callbacks", post(record))
            .with_state(receiver.clone());
        let addr = serve(app).await;
        (receiver, format!("http://{addr}/v1/callbacks"))
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn record(State(receiver): State<Receiver>, headers: HeaderMap, body: String) -> Response {
    let header = |name| {
        headers
            .get(name)
            .map(|v: &header::HeaderValue| v.to_str().unwrap().to_string())
    };
    receiver.received.lock().unwrap().push(Received {
        authorization: header(header::AUTHORIZATION),
        content_type: header(header::CONTENT_TYPE),
        body,
    });
    let next = receiver.script.lock().unwrap().pop_front();
    let (status, body) = next.unwrap_or((StatusCode::OK, r#"{"status":"recorded"}"#));
    (status, body).into_response()
}
