//! Extraction benchmark: what ten structured fields cost the crawler per
//! page, against the title alone.
//!
//! The page is the crawler's schema.org product test page
//! (`crawler/tests/pages/product.html`: JSON-LD offers, meta tags, a
//! gallery, tags) grown to about 67 KB with the markup a real product page
//! carries below the fold: related-product cards, reviews, footer links.
//! The ten fields use every kind: CSS text, `attr`, `all`, `meta`, `jsonld`
//! (text and `all` numbers), `type = "number"` and `regex`.
//!
//! In rounds, alternating so that a change of load on the machine falls on
//! both alike, it times the crawler's own code ([`Extractor`], the one the
//! Lambda and the in-process crawler run) on the parsed page:
//!
//! - `parse+extract`: parse the HTML and extract (what one crawl costs
//!   after the fetch);
//! - `extract`: extraction alone, on a page parsed once.
//!
//! It prints `FIGURE` lines: µs per page (median of the rounds) for the
//! title only and for ten fields, their ratio, and the process's CPU
//! seconds per 1,000 pages of each. It asserts nothing about speed.
//!
//! ```sh
//! cargo bench --bench extraction                   # 4,000 pages of each
//! cargo bench --bench extraction -- --pages 200    # smoke run
//! ```

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use fanfare_crawler::extract::Extractor;
use fanfare_crawler::FieldSpec;
use fanfare_testkit::bench::{load_average, print_machine, process_cpu_seconds, quantile};
use scraper::Html;
use serde_json::json;
use url::Url;

#[derive(Debug, serde::Deserialize)]
struct Args {
    pages: usize,
    rounds: usize,
}

/// The command line, as `--help` prints it.
const USAGE: &str = "\
fanfare: the crawler's cost of ten structured fields per page vs the title

  --pages N             pages extracted in each mode, in all [default: 4000]
  --rounds N            rounds the pages are split into, alternating the modes [default: 20]
";

/// The product test page grown to about 67 KB with below-the-fold markup.
fn product_page() -> String {
    let page = include_str!("../crawler/tests/pages/product.html");
    let mut more = String::from("<section class=\"related\"><h2>Customers also bought</h2>\n");
    for i in 0..100 {
        more.push_str(&format!(
            "<div class=\"card\" data-sku=\"SKU-{i:05}\"><a href=\"/produkt/related-{i}\">\
             <img src=\"/photos/related-{i}.jpg\" alt=\"Related product {i}\" loading=\"lazy\"></a>\
             <h3 class=\"card-title\">Related product {i} with a longer descriptive name</h3>\
             <span class=\"card-price\">{},{:02}&nbsp;€</span>\
             <ul class=\"card-tags\"><li>Werkzeug</li><li>Stahl</li><li>Neu</li></ul></div>\n",
            i * 7 + 19,
            i % 100
        ));
    }
    more.push_str("</section>\n<section class=\"reviews-list\">\n");
    for i in 0..60 {
        more.push_str(&format!(
            "<article class=\"review\"><header><span class=\"author\">Reviewer {i}</span> \
             <time datetime=\"2026-0{}-1{}\">vor {i} Tagen</time> <span class=\"stars\">{} von 5</span></header>\
             <p>Solid anvil, arrived well packed. Dropped it from the second floor twice and it is \
             still perfectly flat. The finish is better than on the classic model, and the horn is \
             long enough for scrolls. Would buy again for the workshop.</p></article>\n",
            i % 9 + 1,
            i % 10,
            i % 5 + 1
        ));
    }
    more.push_str("</section>\n<footer><ul>");
    for i in 0..80 {
        more.push_str(&format!(
            "<li><a href=\"/hilfe/thema-{i}\">Hilfe-Thema {i}</a></li>"
        ));
    }
    more.push_str("</ul></footer>\n");
    page.replace("</body>", &format!("{more}</body>"))
}

/// Ten fields, one of every kind.
fn ten_fields() -> BTreeMap<String, FieldSpec> {
    serde_json::from_value(json!({
        "name": "h1.product-title",
        "canonical": { "css": "link[rel=canonical]", "attr": "href" },
        "images": { "css": ".gallery img", "attr": "src", "all": true },
        "tags": { "css": ".tag", "all": true },
        "price": { "css": ".price", "type": "number" },
        "description": { "meta": "description" },
        "offer_price": { "jsonld": "Product.offers.price", "type": "number" },
        "offer_prices": { "jsonld": "Product.offers.price", "all": true, "type": "number" },
        "brand": { "jsonld": "Product.brand.name" },
        "stock": { "css": ".stock", "regex": "(\\d+) auf Lager", "type": "number" },
    }))
    .expect("the benchmark's field specs parse")
}

/// Microseconds per page of each round, for parse+extract and extract alone.
#[derive(Default)]
struct Mode {
    parse_extract: Vec<f64>,
    extract: Vec<f64>,
    cpu_parse_extract: f64,
    pages: usize,
}

fn main() -> anyhow::Result<()> {
    let args: Args = fanfare_testkit::bench::start(USAGE)?;
    print_machine();
    let page = product_page();
    let base = Url::parse("https://shop.example.com/produkt/executive-anvil")?;
    let title_only = Extractor::new(&BTreeMap::new()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ten = Extractor::new(&ten_fields()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let parsed = Html::parse_document(&page);
    let (_, sample) = ten.extract(&parsed, &base);
    anyhow::ensure!(
        sample["offer_price"] == json!(1299) && sample["stock"] == json!(3),
        "the ten fields must read the page: {sample:?}"
    );
    println!(
        "FIGURE page bytes={} fields={}",
        page.len(),
        serde_json::to_string(&sample)?
    );

    let rounds = args.rounds.max(1);
    let per_round = (args.pages / rounds).max(1);
    let pid = std::process::id();
    let mut modes = [
        ("title", &title_only, Mode::default()),
        ("ten_fields", &ten, Mode::default()),
    ];
    for _ in 0..rounds {
        for (_, extractor, mode) in modes.iter_mut() {
            let cpu = process_cpu_seconds(pid).unwrap_or(0.0);
            let started = Instant::now();
            for _ in 0..per_round {
                let document = Html::parse_document(black_box(&page));
                black_box(extractor.extract(&document, &base));
            }
            mode.parse_extract
                .push(started.elapsed().as_secs_f64() * 1e6 / per_round as f64);
            mode.cpu_parse_extract += process_cpu_seconds(pid).unwrap_or(0.0) - cpu;
            mode.pages += per_round;

            let started = Instant::now();
            for _ in 0..per_round {
                black_box(extractor.extract(black_box(&parsed), &base));
            }
            mode.extract
                .push(started.elapsed().as_secs_f64() * 1e6 / per_round as f64);
        }
    }
    for (name, _, mode) in &modes {
        println!(
            "FIGURE {name} parse_extract_us_per_page_p50={:.1} extract_us_per_page_p50={:.1} \
             cpu_seconds_per_1000_pages={:.2} pages={}",
            quantile(&mode.parse_extract, 0.5),
            quantile(&mode.extract, 0.5),
            mode.cpu_parse_extract * 1000.0 / mode.pages as f64,
            mode.pages
        );
    }
    let [(_, _, title), (_, _, fields)] = &modes;
    let p50 = |v: &[f64]| quantile(v, 0.5);
    println!(
        "FIGURE ratio ten_fields_vs_title parse_extract={:.2} extract_added_us_per_page={:.1} load_average={}",
        p50(&fields.parse_extract) / p50(&title.parse_extract),
        p50(&fields.extract) - p50(&title.extract),
        load_average()
    );
    Ok(())
}
