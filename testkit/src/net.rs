//! Loopback HTTP servers for the tests: pages, lists, proxies, receivers.

use axum::Router;
use tokio::net::TcpListener;

/// A listener on a free loopback port and its base URL
/// (`http://127.0.0.1:PORT`), for a server whose state needs its own URL
/// before it serves.
pub async fn loopback() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let base = format!("http://{}", listener.local_addr().expect("a bound address"));
    (listener, base)
}

/// Serves `router` on `listener` until the test's runtime ends.
pub fn serve_on(listener: TcpListener, router: Router) {
    tokio::spawn(async move { axum::serve(listener, router).await });
}

/// Serves `router` on a free loopback port until the test's runtime ends;
/// returns its base URL.
pub async fn serve(router: Router) -> String {
    let (listener, base) = loopback().await;
    serve_on(listener, router);
    base
}
