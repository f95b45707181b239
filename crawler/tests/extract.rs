//! Structured extraction on the test pages in `tests/pages/` (real-world
//! markup shapes), crawled from a loopback server by the crawler's own code.

mod support;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use fanfare_crawler::netguard::NetPolicy;
use fanfare_crawler::{
    CrawlRequest, Crawler, ErrorKind, FieldSpec, Outcome, PageFacts, CONTRACT_VERSION,
};
use serde_json::{json, Value};
use support::{crawler_with, serve};

const PAGES: [(&str, &str); 4] = [
    (
        "/produkt/executive-anvil",
        include_str!("pages/product.html"),
    ),
    ("/shoes/trail-runner/", include_str!("pages/graph.html")),
    ("/title/tt0117500/", include_str!("pages/opengraph.html")),
    ("/catalog/anvils", include_str!("pages/list.html")),
];

/// Serves every test page; returns the server's base URL.
async fn site() -> String {
    let mut router = Router::new();
    for (path, page) in PAGES {
        router = router.route(path, get(move || async move { axum::response::Html(page) }));
    }
    format!("http://{}", serve(router).await)
}

fn crawler() -> Crawler {
    crawler_with(NetPolicy::open(), Duration::from_secs(5))
}

/// A request for `url` with `fields` as the daemon would send them: the
/// event's JSON, each spec written as JSON.
fn request(url: String, fields: Value) -> CrawlRequest {
    serde_json::from_value(json!({
        "version": CONTRACT_VERSION,
        "run_id": "run-1",
        "page_id": "page-1",
        "attempt": 1,
        "url": url,
        "extract": fields,
        "callback_url": "http://127.0.0.1:9/v1/callbacks",
        "callback_token": "token-1",
        "deadline": "2026-11-26T03:05:00Z",
    }))
    .expect("the event parses")
}

async fn crawl(path: &str, fields: Value) -> PageFacts {
    crawl_at(&site().await, path, fields).await
}

async fn crawl_at(base: &str, path: &str, fields: Value) -> PageFacts {
    let url = format!("{base}{path}");
    match crawler().crawl(&request(url, fields)).await {
        Outcome::Succeeded(facts) => facts,
        Outcome::Failed { error } => panic!("expected a success, got {error}"),
    }
}

#[tokio::test]
async fn css_fields_give_text_attributes_and_every_match() {
    let base = site().await;
    let facts = crawl_at(
        &base,
        "/catalog/anvils",
        json!({
            "heading": "h1",
            "next": { "css": "a.next", "attr": "href" },
            "next_link": { "css": "link[rel=next]", "attr": "href" },
            "tags": { "css": ".tag", "all": true },
            "images": { "css": ".product img", "attr": "src", "all": true },
            "links": { "css": "a.product-link", "attr": "href", "all": true },
            "missing": { "css": ".no-such-thing", "all": true },
            "missing_one": { "css": ".no-such-thing" },
        }),
    )
    .await;
    let f = &facts.fields;
    assert_eq!(
        facts.title.as_deref(),
        Some("Anvils – page 2 of 5 – Acme Hardware")
    );
    assert_eq!(f["heading"], "Anvils");
    // `href` and `src` are resolved against the page's URL.
    assert_eq!(f["next"], format!("{base}/catalog/anvils?page=3"));
    assert_eq!(f["next_link"], format!("{base}/catalog/anvils?page=3"));
    assert_eq!(f["tags"], json!(["iron", "heavy", "steel"]));
    // The lazy image has no `src`: it is no match, not an empty value.
    assert_eq!(
        f["images"],
        json!([
            format!("{base}/img/classic-anvil.jpg"),
            format!("{base}/img/travel-anvil.jpg")
        ])
    );
    assert_eq!(
        f["links"],
        json!([
            format!("{base}/p/classic-anvil"),
            format!("{base}/p/travel-anvil"),
            "https://other.example.org/p/anvil-stand"
        ])
    );
    assert_eq!(f["missing"], json!([]));
    assert_eq!(f["missing_one"], Value::Null);
}

#[tokio::test]
async fn numbers_are_read_from_text_in_either_locale() {
    let facts = crawl(
        "/catalog/anvils",
        json!({
            "prices": { "css": ".price", "all": true, "type": "number" },
            "first_price": { "css": ".price", "type": "number" },
            "of": { "css": ".result-count", "regex": "of (\\d+)", "type": "number" },
        }),
    )
    .await;
    // "Sold out" holds no number: left out of the array.
    assert_eq!(facts.fields["prices"], json!([1299, 89.5]));
    assert_eq!(facts.fields["first_price"], json!(1299));
    assert_eq!(facts.fields["of"], json!(112));

    let facts = crawl(
        "/produkt/executive-anvil",
        json!({
            "price": { "css": ".price", "type": "number" },
            "old": { "css": ".price-old", "type": "number" },
            "from_attr": { "css": ".price", "attr": "data-price", "type": "number" },
            "rating": { "css": ".rating", "type": "number" },
            "price_text": ".price",
        }),
    )
    .await;
    assert_eq!(facts.fields["price"], json!(1299));
    assert_eq!(facts.fields["old"], json!(1499));
    assert_eq!(facts.fields["from_attr"], json!(1299));
    assert_eq!(facts.fields["rating"], json!(4.4));
    assert_eq!(facts.fields["price_text"], "1.299,00 €");
}

#[tokio::test]
async fn regex_gives_the_first_capture_group_else_the_whole_match() {
    let facts = crawl(
        "/produkt/executive-anvil",
        json!({
            "stock": { "css": ".stock", "regex": "(\\d+) auf Lager", "type": "number" },
            "sku": { "css": ".sku", "regex": "\\d{6,}" },
            "no_match": { "css": ".sku", "regex": "EAN (\\d+)" },
            "tag_starts": { "css": ".tag", "all": true, "regex": "^(\\w{2})" },
            "long_tags": { "css": ".tag", "all": true, "regex": "\\w{7,}" },
        }),
    )
    .await;
    assert_eq!(facts.fields["stock"], json!(3));
    assert_eq!(facts.fields["sku"], "0446310786");
    assert_eq!(facts.fields["no_match"], Value::Null);
    assert_eq!(facts.fields["tag_starts"], json!(["Am", "Sc", "Re"]));
    // A value the regex does not match is left out of the array.
    assert_eq!(facts.fields["long_tags"], json!(["Ambosse", "Schmieden"]));
}

#[tokio::test]
async fn meta_fields_read_open_graph_and_named_tags() {
    let facts = crawl(
        "/title/tt0117500/",
        json!({
            "og_title": { "meta": "og:title" },
            "images": { "meta": "og:image", "all": true },
            "description": { "meta": "og:description" },
            "price": { "meta": "og:price:amount", "type": "number" },
            "product_price": { "meta": "product:price:amount", "type": "number" },
            "author": { "meta": "author" },
            "card": { "meta": "twitter:card" },
            "absent": { "meta": "og:video" },
            "locales": { "meta": "og:locale:alternate", "all": true },
        }),
    )
    .await;
    let f = &facts.fields;
    assert_eq!(f["og_title"], "The Rock");
    assert_eq!(
        f["images"],
        json!([
            "https://ia.media-imdb.example/images/rock.jpg",
            "https://ia.media-imdb.example/images/rock-poster.jpg"
        ])
    );
    assert_eq!(
        f["description"],
        "Sean Connery found fame and fortune as the suave, sophisticated British agent, James Bond."
    );
    assert_eq!(f["price"], json!(1299));
    assert_eq!(f["product_price"], json!(1299));
    assert_eq!(f["author"], "Example Studios");
    assert_eq!(f["card"], "summary_large_image");
    assert_eq!(f["absent"], Value::Null);
    assert_eq!(f["locales"], json!(["fr_FR", "es_ES"]));
}

#[tokio::test]
async fn jsonld_paths_follow_offers_arrays_and_keep_json_types() {
    let facts = crawl(
        "/produkt/executive-anvil",
        json!({
            "name": { "jsonld": "Product.name" },
            "price": { "jsonld": "Product.offers.price" },
            "price_number": { "jsonld": "Product.offers.price", "type": "number" },
            "prices": { "jsonld": "Product.offers.price", "all": true, "type": "number" },
            "rating": { "jsonld": "Product.aggregateRating.ratingValue" },
            "brand": { "jsonld": "Product.brand.name" },
            "images": { "jsonld": "Product.image", "all": true },
            "crumbs": { "jsonld": "BreadcrumbList.itemListElement.name", "all": true },
            "availability": { "jsonld": "Offer.availability", "regex": "schema.org/(\\w+)", "all": true },
            "sku_text": { "jsonld": "Product.sku", "type": "number" },
            "nothing": { "jsonld": "Recipe.name" },
        }),
    )
    .await;
    let f = &facts.fields;
    assert_eq!(f["name"], "Executive Anvil");
    // The first offer in document order; a JSON-LD string stays a string
    // unless the field asks for a number.
    assert_eq!(f["price"], "1299.00");
    assert_eq!(f["price_number"], json!(1299));
    assert_eq!(f["prices"], json!([1299, 1499]));
    assert_eq!(f["rating"], json!(4.4));
    assert_eq!(f["brand"], "ACME");
    assert_eq!(f["images"].as_array().map(Vec::len), Some(3));
    assert_eq!(f["crumbs"], json!(["Werkzeuge", "Ambosse"]));
    assert_eq!(f["availability"], json!(["InStock", "PreOrder"]));
    assert_eq!(f["sku_text"], json!(446310786));
    assert_eq!(f["nothing"], Value::Null);
}

#[tokio::test]
async fn jsonld_graph_nodes_are_found_by_type_iri_and_type_array() {
    let facts = crawl(
        "/shoes/trail-runner/",
        json!({
            "product": { "jsonld": "Product.name" },
            "low": { "jsonld": "Product.offers.lowPrice", "type": "number" },
            "offer_prices": { "jsonld": "Product.offers.offers.price", "all": true },
            "offer_count": { "jsonld": "AggregateOffer.offerCount" },
            "page": { "jsonld": "ItemPage.datePublished" },
            "publisher": { "jsonld": "Organization.logo.url" },
            "first_offer": { "jsonld": "Offer" },
        }),
    )
    .await;
    let f = &facts.fields;
    assert_eq!(f["product"], "Trail Runner 3");
    assert_eq!(f["low"], json!(119.95));
    // A `{"@value": ...}` literal gives its value.
    assert_eq!(f["offer_prices"], json!(["119.95", "129.95", "139.95"]));
    assert_eq!(f["offer_count"], json!(3));
    assert_eq!(f["page"], "2026-03-02T08:00:00+00:00");
    assert_eq!(f["publisher"], "https://outfitters.example.com/logo.png");
    // A path ending on a node gives the node as a JSON object.
    assert_eq!(
        f["first_offer"],
        json!({ "@type": "Offer", "price": { "@value": "119.95", "@type": "xsd:decimal" }, "sku": "TR3-BLU-42" })
    );
}

#[tokio::test]
async fn a_bad_field_spec_fails_the_page_naming_the_field_before_fetching() {
    let base = site().await;
    for (spec, want) in [
        (
            json!({ "css": "a", "regex": "(" }),
            "is not a regular expression",
        ),
        (
            json!({ "css": "a", "meta": "og:title" }),
            "has css and meta",
        ),
        (
            json!({ "jsonld": "Product.offers", "attr": "href" }),
            "attr goes only with css",
        ),
    ] {
        let request = request(
            format!("{base}/catalog/anvils"),
            json!({ "ok": "h1", "broken": spec }),
        );
        let Outcome::Failed { error } = crawler().crawl(&request).await else {
            panic!("{spec} must fail the page");
        };
        assert_eq!(error.kind, ErrorKind::InvalidSelector);
        assert!(!error.retryable);
        assert!(error.message.contains("\"broken\""), "{}", error.message);
        assert!(error.message.contains(want), "{}", error.message);
    }
}

#[test]
fn a_table_with_an_unknown_key_or_type_word_does_not_parse_and_says_which() {
    let error = serde_json::from_value::<FieldSpec>(json!({ "css": "a", "colour": "red" }))
        .unwrap_err()
        .to_string();
    assert!(error.contains("colour"), "{error}");
    let error = serde_json::from_value::<FieldSpec>(json!({ "css": "a", "type": "price" }))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("price") && error.contains("number"),
        "{error}"
    );
    let error = serde_json::from_value::<FieldSpec>(json!(12))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("a CSS selector string or a table"),
        "{error}"
    );
}
