//! The crawler as an AWS Lambda function: the event is a
//! [`CrawlRequest`](fanfare_crawler::CrawlRequest); the function crawls the
//! page and POSTs the report to the daemon.
//!
//! Settings come from the environment (`FANFARE_CRAWLER_TIMEOUT_SECS`,
//! `FANFARE_CRAWLER_MAX_BODY_BYTES`, `FANFARE_CRAWLER_USER_AGENT`,
//! `FANFARE_CRAWLER_ALLOW_PRIVATE_NETWORKS` (default false: pages on
//! loopback, link-local, private and other non-public addresses, and the
//! Lambda runtime API, are refused as `blocked`), `FANFARE_CRAWLER_PROXY_URL`
//! (the crawler's own proxy, for events whose `proxy` names none; a
//! secret, logged with its password redacted), `FANFARE_CRAWLER_EXTRA_CA`
//! (a PEM file of CA certificates trusted besides the public roots),
//! `FANFARE_CHROMIUM` and
//! `FANFARE_CRAWLER_BROWSERS` (the browser that renders events with
//! `render`, and how many pages it renders at once); logs filtered by
//! `RUST_LOG`, default `info`). A bad value fails the cold start
//! naming the variable. When the report cannot be delivered the invocation
//! fails, so that Lambda's asynchronous retry redelivers the event.

use fanfare_crawler::{CrawlRequest, Crawler, CrawlerConfig, Report};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let config = CrawlerConfig::from_env().inspect_err(|error| {
        tracing::error!(%error, "invalid crawler configuration");
    })?;
    let crawler = Crawler::new(config)?;
    tracing::info!(
        timeout = ?crawler.config().timeout,
        max_body_bytes = crawler.config().max_body_bytes,
        allow_private_networks = crawler.config().net.allows_private(),
        proxy = crawler.config().proxy.as_ref().map(|p| p.to_string()),
        "crawler ready"
    );
    lambda_runtime::run(service_fn(|event: LambdaEvent<CrawlRequest>| {
        let crawler = crawler.clone();
        async move { handle(&crawler, event).await }
    }))
    .await
}

async fn handle(crawler: &Crawler, event: LambdaEvent<CrawlRequest>) -> Result<Report, Error> {
    let (request, context) = event.into_parts();
    // The daemon only sends the version it was built with; anything else is
    // a deployment mismatch that a guess would hide.
    if let Err(error) = request.check_version() {
        tracing::error!(
            lambda_request_id = %context.request_id,
            run_id = %request.run_id,
            page_id = %request.page_id,
            %error,
            "refusing request"
        );
        return Err(error.into());
    }
    match crawler.handle(request).await {
        Ok(report) => Ok(report),
        Err(error) => {
            tracing::error!(lambda_request_id = %context.request_id, %error, "report not delivered");
            Err(error.into())
        }
    }
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .init();
}
