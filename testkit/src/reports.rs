//! Contract reports, as a crawler sends them.

use fanfare_crawler::contract::CrawlRequest;

/// A succeeded report for `request`.
pub fn succeeded(request: &CrawlRequest) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "run_id": request.run_id,
        "page_id": request.page_id,
        "attempt": request.attempt,
        "outcome": "succeeded",
        "http_status": 200,
        "title": "A page",
        "fields": {"price": "9.99"},
        "bytes": 1234,
        "content_sha256": "a".repeat(64),
        "fetch_ms": 12
    })
}

/// A failed report for `request`.
pub fn failed(request: &CrawlRequest, retryable: bool) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "run_id": request.run_id,
        "page_id": request.page_id,
        "attempt": request.attempt,
        "outcome": "failed",
        "error": {"kind": "http_status", "message": "HTTP 404 Not Found", "retryable": retryable}
    })
}
