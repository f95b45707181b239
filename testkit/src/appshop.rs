//! A loopback shop for pages that need a browser: `/s/{id}` is an app
//! shell whose script fetches the item's name and price from `/api/item/{id}`
//! and fills them in after load; `/p/{id}` is served whole; `/x/{id}` is
//! script page `id` until the shop is told to serve it whole
//! ([`AppShop::serve_whole`]). Only a browser runs the script, so the
//! requests to the item API count the renders of each script page.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::get;
use axum::Router;

/// The extraction rules that read the shop's items.
pub const EXTRACT: &str = r#"{ name = ".name", price = ".price" }"#;

/// Script page `id`'s price, once a browser has filled it in.
pub fn script_price(id: usize) -> String {
    format!("{id}.99")
}

/// Static page `id`'s price.
pub fn static_price(id: usize) -> String {
    format!("{id}.50")
}

/// An app shell whose name and price a script fetches and fills in.
pub fn script_page(id: usize) -> String {
    format!(
        r#"<!doctype html><html><head><title>Shop</title></head><body>
<noscript>You need to enable JavaScript to run this app.</noscript><div id="root"></div>
<script>
  fetch('/api/item/{id}').then(r => r.json()).then(item => {{
    document.title = item.name + ' | Shop';
    document.getElementById('root').innerHTML =
      '<h1 class="name">' + item.name + '</h1><span class="price">' + item.price + '</span>';
  }});
</script></body></html>"#
    )
}

/// A product page served whole.
pub fn static_page(id: usize) -> String {
    format!(
        r#"<!doctype html><html><head><title>Shop</title></head><body>
<h1 class="name">Static item {id}</h1><span class="price">{}</span>
<p>Every product page of this shop comes with a long description, so that the page reads as a page and not as the shell of an app.</p>
</body></html>"#,
        static_price(id)
    )
}

/// The item API's answer for script page `id`.
pub fn item(id: usize) -> serde_json::Value {
    serde_json::json!({ "name": format!("Script item {id}"), "price": script_price(id) })
}

/// The shop's routes; `renders` counts the item API's requests per id;
/// `/x/{id}` is a script page while `scripted` holds.
pub fn router(renders: Arc<Mutex<BTreeMap<usize, usize>>>, scripted: Arc<AtomicBool>) -> Router {
    Router::new()
        .route(
            "/s/{id}",
            get(|Path(id): Path<usize>| async move { Html(script_page(id)) }),
        )
        .route(
            "/x/{id}",
            get(move |Path(id): Path<usize>| async move {
                Html(if scripted.load(Ordering::SeqCst) {
                    script_page(id)
                } else {
                    static_page(id)
                })
            }),
        )
        .route(
            "/p/{id}",
            get(|Path(id): Path<usize>| async move { Html(static_page(id)) }),
        )
        .route(
            "/api/item/{id}",
            get(
                |State(renders): State<Arc<Mutex<BTreeMap<usize, usize>>>>,
                 Path(id): Path<usize>| async move {
                    *renders.lock().unwrap().entry(id).or_default() += 1;
                    axum::Json(item(id))
                },
            ),
        )
        .with_state(renders)
}

/// The shop, served on a loopback address until the runtime ends.
pub struct AppShop {
    base: String,
    renders: Arc<Mutex<BTreeMap<usize, usize>>>,
    scripted: Arc<AtomicBool>,
}

impl AppShop {
    /// Serves the shop on `ip` (a loopback address), port 0.
    pub async fn start(ip: Ipv4Addr) -> Self {
        let renders = Arc::new(Mutex::new(BTreeMap::new()));
        let scripted = Arc::new(AtomicBool::new(true));
        let listener = tokio::net::TcpListener::bind((IpAddr::V4(ip), 0))
            .await
            .expect("bind the shop");
        let base = format!("http://{}", listener.local_addr().expect("its address"));
        let app = router(renders.clone(), scripted.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base,
            renders,
            scripted,
        }
    }

    /// `http://ip:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Script page `id`'s URL.
    pub fn script(&self, id: usize) -> String {
        format!("{}/s/{id}", self.base)
    }

    /// Static page `id`'s URL.
    pub fn plain(&self, id: usize) -> String {
        format!("{}/p/{id}", self.base)
    }

    /// Page `id` that is a script page until [`AppShop::serve_whole`].
    pub fn switching(&self, id: usize) -> String {
        format!("{}/x/{id}", self.base)
    }

    /// From now on the switching pages are served whole.
    pub fn serve_whole(&self) {
        self.scripted.store(false, Ordering::SeqCst);
    }

    /// The item API's requests so far, of every script page.
    pub fn renders(&self) -> usize {
        self.renders.lock().unwrap().values().sum()
    }

    /// The item API's requests so far, per script page id.
    pub fn renders_by_page(&self) -> BTreeMap<usize, usize> {
        self.renders.lock().unwrap().clone()
    }
}
