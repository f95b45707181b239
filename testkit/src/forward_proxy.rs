//! A loopback HTTP forward proxy that records every request it is sent and
//! checks its credentials: the stand-in for the proxy a schedule fetches
//! its pages through.
//!
//! It takes absolute-form requests (`GET http://host:port/path HTTP/1.1`,
//! how a client sends an `http://` page through a proxy), answers `407`
//! unless `Proxy-Authorization` carries its user and password (Basic), and
//! forwards the rest with a `Via` header, redirects not followed, so a
//! target can tell a proxied request from a direct one. `CONNECT` (how an
//! `https://` page goes through a proxy) is recorded and refused with
//! `501`: the tests' targets are plain HTTP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;

/// The `Via` header the proxy adds to what it forwards.
pub const VIA: &str = "1.1 fanfare-testkit-proxy";

/// One request the proxy was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// `GET`, `CONNECT`, …
    pub method: String,
    /// The request target as sent: absolute-form for an `http://` page.
    pub target: String,
    /// Whether `Proxy-Authorization` carried the proxy's credentials (the
    /// request was forwarded only then).
    pub authorized: bool,
}

/// A running forward proxy.
pub struct ForwardProxy {
    /// `http://USER:PASSWORD@127.0.0.1:PORT`: the URL to configure.
    pub url: String,
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Forwarded>>>,
}

#[derive(Clone)]
struct Shared {
    expected: String,
    seen: Arc<Mutex<Vec<Forwarded>>>,
    upstream: reqwest::Client,
}

impl ForwardProxy {
    /// Starts a proxy on 127.0.0.1 at a free port that wants `user` and
    /// `password` (URL-safe text) as Basic proxy credentials.
    pub async fn start(user: &str, password: &str) -> Self {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            expected,
            seen: seen.clone(),
            upstream: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("the proxy's client builds"),
        };
        let app = Router::new().fallback(forward).with_state(shared);
        let base = crate::net::serve(app).await;
        let addr = base
            .trim_start_matches("http://")
            .parse()
            .expect("an address");
        Self {
            url: format!("http://{user}:{password}@{addr}"),
            addr,
            seen,
        }
    }

    /// Every request sent so far, in order.
    pub fn seen(&self) -> Vec<Forwarded> {
        self.seen.lock().unwrap().clone()
    }

    /// The targets of the requests it forwarded (with the right
    /// credentials), in order.
    pub fn forwarded(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|f| f.authorized)
            .map(|f| f.target)
            .collect()
    }
}

/// Headers that are the proxy's own business, or that the forwarding
/// client sets itself.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "connection"
            | "proxy-connection"
            | "proxy-authorization"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "accept-encoding"
            | "content-encoding"
    )
}

async fn forward(State(shared): State<Shared>, request: Request) -> Response {
    let authorized = request
        .headers()
        .get(header::PROXY_AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == shared.expected.as_bytes());
    let method = request.method().clone();
    let target = request.uri().to_string();
    shared.seen.lock().unwrap().push(Forwarded {
        method: method.to_string(),
        target: target.clone(),
        authorized,
    });
    if !authorized {
        return (
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            [(
                header::PROXY_AUTHENTICATE,
                "Basic realm=\"fanfare-testkit\"",
            )],
        )
            .into_response();
    }
    if method == axum::http::Method::CONNECT || request.uri().scheme().is_none() {
        return (
            StatusCode::NOT_IMPLEMENTED,
            "only absolute-form http requests",
        )
            .into_response();
    }
    let mut upstream = shared.upstream.request(method, &target);
    for (name, value) in request.headers() {
        if !hop_by_hop(name) {
            upstream = upstream.header(name, value);
        }
    }
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let answer = match upstream.header(header::VIA, VIA).body(body).send().await {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            response = response.header(
                name.as_str(),
                HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response.body(Body::from(bytes)).unwrap()
}
