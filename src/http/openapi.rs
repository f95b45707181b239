//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP API, generated
//! from the handlers' own annotations and body types (utoipa), with the
//! webhook notifications (`run.finished`, `run.stuck`) under `webhooks`.
//!
//! `tests/it/openapi.rs` checks that every route of the router is in it,
//! and `scripts/test` validates it and runs schemathesis against a live
//! daemon with it.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{json, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::lifecycle::run::{RunFinished, RunStuck};

/// The document's paths, schemas and security schemes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "fanfare",
        description = "fanfare runs scheduled scraping jobs on AWS Lambda: a schedule fires, its pages are fanned out to crawlers, their callbacks fanned back in, and one notification is sent per run. The admin API (`/v1/schedules`, `/v1/runs`) needs `Authorization: Bearer <admin_token>`; crawlers report to `POST /v1/callbacks` with their task token. The notifications are under `webhooks`."
    ),
    paths(
        super::callback::receive,
        super::api::list_schedules,
        super::api::get_schedule,
        super::api::trigger,
        super::api::pause,
        super::api::resume,
        super::api::list_runs,
        super::api::get_run,
        super::api::list_pages,
        super::api::list_changes,
        super::api::cancel_run,
        super::api::redrive_run,
        super::results::export,
        super::healthz,
        super::readyz,
        super::metrics,
        serve,
    ),
    components(schemas(RunFinished, RunStuck, fanfare_crawler::contract::CrawlRequest)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "callbacks", description = "The fan-in: crawlers report each page attempt"),
        (name = "schedules", description = "Schedules: list, trigger, pause, resume"),
        (name = "runs", description = "Runs and their pages: read, cancel, redrive"),
        (name = "health", description = "Liveness, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// Adds the two bearer schemes: the admin token and a page attempt's task
/// token.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The configuration's `security.admin_token` (at least 32 characters)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "task_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("v1.<run>.<page>.<attempt>.<expires>.<mac>")
                    .description(Some(
                        "The `callback_token` of the crawl event: bound to one run, page and attempt, signed by the daemon, valid until the attempt's deadline plus `callback_grace`",
                    ))
                    .build(),
            ),
        );
    }
}

/// A webhook notification as an OpenAPI 3.1 path item: fanfare POSTs
/// `schema` to the configured URL with the Standard Webhooks headers.
fn webhook(event: &str, schema: &str, description: &str) -> Value {
    let header = |name: &str, description: &str| {
        json!({
            "name": name,
            "in": "header",
            "required": true,
            "description": description,
            "schema": { "type": "string" },
        })
    };
    json!({
        "post": {
            "operationId": format!("webhook_{}", event.replace('.', "_")),
            "summary": format!("The {event} notification"),
            "description": description,
            "tags": ["notifications"],
            "parameters": [
                header("webhook-id", "`msg_<run id>_<target index>` (`msg_<run id>_stuck_<target index>` for run.stuck), the same on every retry: dedupe on it"),
                header("webhook-timestamp", "Unix seconds of this attempt"),
                header("webhook-signature", "`v1,<base64 HMAC-SHA256 of \"{webhook-id}.{webhook-timestamp}.{body}\">` under the webhook's secret; while a secret is rotated, a second signature under `previous_secret` follows, space-separated"),
            ],
            "requestBody": {
                "required": true,
                "content": {
                    "application/json": {
                        "schema": { "$ref": format!("#/components/schemas/{schema}") }
                    }
                }
            },
            "responses": {
                "2XX": { "description": "Delivered; any other answer (or none) is retried with backoff for `notify.retry_for`" }
            }
        }
    })
}

/// The whole document, as served.
pub fn document() -> Value {
    let mut doc = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(doc) => doc,
        // utoipa's types serialize to JSON; this cannot happen, but an
        // error document is better than a panic.
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document does not serialize");
            return json!({ "error": "the OpenAPI document could not be built" });
        }
    };
    doc["webhooks"] = json!({
        "run.finished": webhook(
            "run.finished",
            "RunFinished",
            "Sent once per finished run and target when every page of the run is terminal, or the run was cancelled, failed as a whole or timed out; to a target with `when = \"changes\"` only when a page of the run is new, changed or gone since the previous run.",
        ),
        "run.stuck": webhook(
            "run.stuck",
            "RunStuck",
            "Sent once per run and target when the run made no progress for its schedule's `stuck_after`.",
        ),
    });
    add_lockout_answers(&mut doc);
    if let Some(tags) = doc["tags"].as_array_mut() {
        tags.push(json!({
            "name": "notifications",
            "description": "What fanfare sends to each configured webhook (Standard Webhooks)",
        }));
    }
    doc
}

/// Adds the 429 of a client locked out for wrong admin tokens to every
/// operation that needs the admin token (the bearer check answers it
/// before any handler runs).
fn add_lockout_answers(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for op in item.values_mut() {
            let admin = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("admin").is_some()));
            if !admin {
                continue;
            }
            if let Some(responses) = op["responses"].as_object_mut() {
                responses.insert(
                    "429".into(),
                    json!({
                        "description": "This client presented too many wrong admin tokens and is locked out for Retry-After seconds; its token is not looked at until then (security.lockout_after_failures)",
                        "headers": {
                            "Retry-After": {
                                "description": "Seconds until the lockout ends",
                                "required": true,
                                "schema": { "type": "integer", "minimum": 1 }
                            }
                        },
                        "content": {
                            "application/json": {
                                "schema": { "$ref": "#/components/schemas/ErrorBody" }
                            }
                        }
                    }),
                );
            }
        }
    }
}

/// `GET /openapi.json`: this document (no authentication).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub async fn serve() -> impl IntoResponse {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let body = DOCUMENT.get_or_init(|| document().to_string());
    ([(header::CONTENT_TYPE, "application/json")], body.as_str())
}
