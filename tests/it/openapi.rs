//! `GET /openapi.json`: an OpenAPI 3.1 document that names every route of
//! the router (a route added without a document entry fails here), with
//! its security schemes and the webhook payloads as schemas that describe
//! what fanfare really sends.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use chrono::{TimeZone, Utc};
use fanfare::ledger::{Outcome, Run, RunStatus, Trigger};
use fanfare::Settings;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::helpers::*;

/// Paths of the router not in the API document: the web console's HTML
/// pages, for browsers rather than API clients.
const UNDOCUMENTED_PREFIXES: &[&str] = &["/ui"];

/// The router of a real application on a fresh database (built, not run:
/// the document and the routes are all this needs).
async fn router() -> (Router, fanfare::Application, fanfare_testkit::TestDatabase) {
    let db = fanfare_testkit::TestDatabase::create().await;
    let settings = Settings::from_toml(&config_toml(db.url(), &lambda_schedule("s", 1, None, "")))
        .unwrap_or_else(|e| panic!("{e}"));
    let overrides = fanfare::startup::Overrides {
        lambda: Some(Arc::new(RecordingLambda::default())),
        ..Default::default()
    };
    let app = fanfare::Application::build_with(settings, overrides)
        .await
        .expect("the application builds");
    (fanfare::http::router(app.state()), app, db)
}

async fn call(router: &Router, method: Method, path: &str) -> axum::response::Response {
    call_as(router, method, path, None).await
}

async fn call_as(
    router: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> axum::response::Response {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Body::empty()).unwrap();
    router.clone().oneshot(request).await.unwrap()
}

/// The path templates the router holds, read from its `Debug` output
/// (axum has no other way to list them): every quoted string that starts
/// with `/` in its path router (the part before its fallback router).
fn router_paths(router: &Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    let routes = debug
        .split_once("fallback_router")
        .map_or(debug.as_str(), |(routes, _)| routes);
    let paths: BTreeSet<String> = routes
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with('/') && !s.contains("__private__axum"))
        .map(str::to_string)
        .collect();
    // Should axum's Debug output change, say so instead of passing on an
    // empty list.
    for known in ["/v1/callbacks", "/v1/runs/{id}", "/healthz"] {
        assert!(
            paths.contains(known),
            "{known} not found among the router's paths {paths:?}: has axum's Debug output of a Router changed?"
        );
    }
    paths
}

/// The methods routed at `path`, from the `Allow` header of the 405 that a
/// method no route has gets (with the admin token: the admin routes
/// authenticate before the method is looked at). HEAD, which axum answers
/// for every GET, is left out.
async fn routed_methods(router: &Router, path: &str) -> BTreeSet<String> {
    let concrete: String = path
        .split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/");
    let probe = Method::from_bytes(b"PROBE").unwrap();
    let response = call_as(router, probe, &concrete, Some(ADMIN_TOKEN)).await;
    assert_eq!(
        response.status(),
        405,
        "{path} ({concrete}) answers an unrouted method with 405"
    );
    let allow = response
        .headers()
        .get("allow")
        .unwrap_or_else(|| panic!("{path}: a 405 without Allow"))
        .to_str()
        .unwrap()
        .to_string();
    allow
        .split(',')
        .map(|m| m.trim().to_ascii_lowercase())
        .filter(|m| !m.is_empty() && m != "head")
        .collect()
}

async fn document(router: &Router) -> Value {
    // No Authorization header: the document is public.
    let response = call(router, Method::GET, "/openapi.json").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/json"
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).expect("the document is JSON")
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_names_every_route_of_the_router() {
    let (router, _app, _db) = router().await;
    let doc = document(&router).await;
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi {version:?}");
    let paths = doc["paths"].as_object().expect("paths");

    let mut routed = BTreeSet::new();
    for path in router_paths(&router) {
        if UNDOCUMENTED_PREFIXES
            .iter()
            .any(|p| path == *p || path.starts_with(&format!("{p}/")))
        {
            continue;
        }
        for method in routed_methods(&router, &path).await {
            routed.insert(format!("{} {path}", method.to_ascii_uppercase()));
        }
    }
    let documented: BTreeSet<String> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| {
                    [
                        "get", "put", "post", "delete", "options", "head", "patch", "trace",
                    ]
                    .contains(&k.as_str())
                })
                .map(move |m| format!("{} {path}", m.to_ascii_uppercase()))
        })
        .collect();
    let missing: Vec<_> = routed.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes without an entry in /openapi.json: {missing:?}"
    );
    let stale: Vec<_> = documented.difference(&routed).collect();
    assert!(stale.is_empty(), "documented but not routed: {stale:?}");
    for endpoint in [
        "GET /v1/schedules",
        "GET /v1/schedules/{name}",
        "POST /v1/callbacks",
        "GET /openapi.json",
    ] {
        assert!(
            routed.contains(endpoint),
            "{endpoint} is routed: {routed:?}"
        );
    }
}

#[tokio::test]
async fn admin_routes_use_the_admin_scheme_and_callbacks_the_task_token() {
    let (router, _app, _db) = router().await;
    let doc = document(&router).await;
    for scheme in ["admin", "task_token"] {
        let s = &doc["components"]["securitySchemes"][scheme];
        assert_eq!(s["type"], "http", "{scheme}: {s}");
        assert_eq!(s["scheme"], "bearer", "{scheme}: {s}");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let security = &op["security"];
            if path == "/v1/callbacks" {
                assert_eq!(security, &serde_json::json!([{"task_token": []}]));
            } else if path.starts_with("/v1/") {
                assert_eq!(
                    security,
                    &serde_json::json!([{"admin": []}]),
                    "{method} {path}"
                );
                for status in ["200", "401", "429"] {
                    let answered = op["responses"][status].is_object()
                        || (status == "200" && op["responses"]["202"].is_object());
                    assert!(answered, "{method} {path} documents {status}");
                }
                assert!(
                    op["responses"]["429"]["headers"]["Retry-After"]["required"] == true,
                    "{method} {path}: the lockout's 429 documents Retry-After"
                );
            } else {
                assert!(security.is_null(), "{method} {path} needs no credentials");
            }
        }
    }
    let callback = &doc["paths"]["/v1/callbacks"]["post"];
    for status in ["200", "400", "401", "408", "413", "422", "503"] {
        assert!(
            callback["responses"][status].is_object(),
            "POST /v1/callbacks documents {status}"
        );
    }
    assert_eq!(
        callback["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CallbackAck"
    );
    assert_eq!(
        callback["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Report"
    );
    assert_eq!(
        callback["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
}

/// A finished run as the ledger returns it.
fn finished_run() -> Run {
    let at = Utc.with_ymd_and_hms(2026, 11, 26, 3, 0, 0).unwrap();
    Run {
        id: uuid::Uuid::now_v7(),
        schedule: "s".into(),
        scheduled_for: at,
        trigger: Trigger::Cron,
        status: RunStatus::Finished,
        outcome: Some(Outcome::Partial),
        error: None,
        total_pages: 3,
        open_pages: 0,
        succeeded_pages: 2,
        failed_pages: 1,
        timed_out_pages: 0,
        cancelled_pages: 0,
        created_at: at,
        listed_at: Some(at),
        finished_at: Some(at),
        listing: Some(serde_json::json!({"pages": 3})),
        parent_run_id: None,
        stuck_at: None,
        updated_at: at,
        discovery: None,
    }
}

/// The properties of a component schema, and its required ones.
fn properties(doc: &Value, schema: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let s = &doc["components"]["schemas"][schema];
    let props = s["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {schema} has properties: {s}"))
        .keys()
        .cloned()
        .collect();
    let required = s["required"]
        .as_array()
        .map(|r| r.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    (props, required)
}

#[tokio::test]
async fn webhook_payloads_are_documented_as_the_schemas_of_what_is_sent() {
    let (router, _app, _db) = router().await;
    let doc = document(&router).await;
    let run = finished_run();
    let failed = vec![fanfare::ledger::FailedPage {
        url: "https://shop.example.com/a".into(),
        status: fanfare::ledger::PageStatus::Failed,
        error: Some(
            serde_json::json!({"kind": "http_status", "message": "HTTP 404", "retryable": false}),
        ),
    }];
    let snapshot = |price: &str| fanfare::lifecycle::changes::PageSnapshot {
        title: Some("A".into()),
        fields: [("price".to_string(), price.into())].into(),
        content_sha256: Some("00".into()),
    };
    let changes = fanfare::lifecycle::changes::RunChanges {
        summary: Some(fanfare::lifecycle::changes::Changes {
            since_run_id: Some(uuid::Uuid::now_v7()),
            new: 0,
            changed: 1,
            unchanged: 1,
            gone: 0,
            unknown: 1,
        }),
        pages: vec![fanfare::lifecycle::changes::ChangedPage {
            url: "https://shop.example.com/b".into(),
            kind: fanfare::ledger::ChangeKind::Changed,
            before: Some(snapshot("10")),
            after: Some(snapshot("12")),
        }],
    };
    let sent = [
        (
            "run.finished",
            "RunFinished",
            serde_json::to_value(fanfare::lifecycle::run::finished_payload(
                &run, &failed, &changes,
            ))
            .unwrap(),
        ),
        (
            "run.stuck",
            "RunStuck",
            serde_json::to_value(fanfare::lifecycle::run::stuck_payload(&run)).unwrap(),
        ),
    ];
    for (event, schema, payload) in sent {
        let hook = &doc["webhooks"][event]["post"];
        assert_eq!(
            hook["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{schema}"),
            "webhook {event}: {hook}"
        );
        assert_eq!(payload["type"], event);
        let keys: BTreeSet<String> = payload.as_object().unwrap().keys().cloned().collect();
        let (props, required) = properties(&doc, schema);
        assert_eq!(
            keys, props,
            "{schema}: the payload's keys are its properties"
        );
        assert!(
            required.is_subset(&keys),
            "{schema}: required {required:?} are all sent"
        );
        let kind = &doc["components"]["schemas"][schema]["properties"]["type"];
        assert!(
            kind.to_string().contains(event),
            "{schema}.type names {event}: {kind}"
        );
    }
    // The nested shapes are documented too.
    let (props, _) = properties(&doc, "FailedPageBrief");
    assert_eq!(props, ["url", "status", "error"].map(String::from).into());
    let finished = serde_json::to_value(fanfare::lifecycle::run::finished_payload(
        &run, &failed, &changes,
    ))
    .unwrap();
    for (schema, value) in [
        ("Changes", &finished["changes"]),
        ("ChangedPage", &finished["changed_pages"][0]),
        ("PageSnapshot", &finished["changed_pages"][0]["after"]),
    ] {
        let keys: BTreeSet<String> = value.as_object().unwrap().keys().cloned().collect();
        assert_eq!(properties(&doc, schema).0, keys, "{schema}: {value}");
    }
}

#[tokio::test]
async fn a_nul_in_the_schedule_filter_and_a_non_utf8_path_get_the_documented_400() {
    let (router, _app, _db) = router().await;
    let doc = document(&router).await;
    // Postgres text cannot hold NUL: the filter is refused before the query.
    for (path, template, culprit) in [
        ("/v1/runs?schedule=a%00b", "/v1/runs", "schedule"),
        ("/v1/schedules/%FF", "/v1/schedules/{name}", "UTF-8"),
        ("/v1/runs/%FF/pages", "/v1/runs/{id}/pages", "UTF-8"),
    ] {
        let response = call_as(&router, Method::GET, path, Some(ADMIN_TOKEN)).await;
        assert_eq!(response.status(), 400, "{path}");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(culprit), "{path}: {body}");
        assert!(
            doc["paths"][template]["get"]["responses"]["400"].is_object(),
            "GET {template} documents 400"
        );
    }
}

#[tokio::test]
async fn every_path_parameter_is_in_its_path_and_every_query_parameter_is_not() {
    let (router, _app, _db) = router().await;
    let doc = document(&router).await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let in_template: BTreeSet<String> = path
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_string()))
            .collect();
        for (method, operation) in item.as_object().expect("a path item") {
            let params = operation["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut in_path = BTreeSet::new();
            for param in &params {
                let name = param["name"]
                    .as_str()
                    .expect("a parameter name")
                    .to_string();
                match param["in"].as_str() {
                    Some("path") => {
                        assert!(
                            in_template.contains(&name),
                            "{method} {path}: path parameter {name:?} is not in the path"
                        );
                        in_path.insert(name);
                    }
                    Some("query") => assert!(
                        !in_template.contains(&name),
                        "{method} {path}: {name:?} is in the path but documented as a query parameter"
                    ),
                    other => panic!("{method} {path}: parameter {name:?} in {other:?}"),
                }
                checked += 1;
            }
            assert_eq!(
                in_path, in_template,
                "{method} {path}: every part of the path template is documented"
            );
        }
    }
    assert!(checked > 0, "the document has parameters to check");
}
