//! The web console under `/ui/`: server-rendered pages over the ledger,
//! for people with the admin token.
//!
//! - Sign-in (`/ui/login`) takes the admin token and sets a signed,
//!   expiring session cookie ([`session`]) that any replica accepts;
//!   without one every page redirects to the sign-in. Signing out revokes
//!   the session on every replica.
//! - Every state-changing form POSTs with the session's CSRF token and
//!   calls the operator's action the admin API calls ([`Actions`]), then
//!   redirects (303).
//! - Charts are SVG drawn on the server ([`svg`]); the one script,
//!   `console.js`, follows an open run's progress over server-sent events
//!   (`/ui/runs/{id}/events`), one poll of the ledger per run shared by
//!   every stream of it, and a cap on streams per session and per replica
//!   ([`streams`]). Without script an open run's page refreshes itself.
//!   Every answer carries a Content-Security-Policy that allows no
//!   inline script or style.
//!
//! [`Actions`]: crate::actions::Actions

mod pages;
pub mod session;
pub mod streams;
mod svg;
mod words;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{FromRef, FromRequest, FromRequestParts, OriginalUri, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::Utc;
use futures::Stream;
use secrecy::ExposeSecret;
use serde::Deserialize;
use uuid::Uuid;

use self::pages::{Chrome, RunView, RunsFilter, ScheduleRow};
use self::session::{Revocations, Session, SessionKey};
use self::streams::{EventHub, ReadRun, Reading, Refused as StreamRefused, StreamLimits, Ticket};
use super::auth::{Client, Refused, Surface};
use super::{ApiError, AppState};
use crate::actions::ActionError;
use crate::ledger::{self, Outcome, RunStatus};
use crate::lifecycle::changes::ChangeEntry;

/// The Content-Security-Policy of every console answer: nothing inline,
/// nothing from elsewhere, no framing, forms only to the console.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; frame-ancestors 'none'; form-action 'self'";

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");

/// Runs per page of `/ui/runs`; failed pages per page of a run.
const PAGE_SIZE: i64 = 50;
/// Slices of the "pages reported over time" chart.
const TIME_SLICES: i32 = 40;
/// How often the events of an open run are sent.
const EVENT_EVERY: Duration = Duration::from_secs(1);
/// An event stream ends after this; the browser reconnects (to any replica).
const EVENT_STREAM_FOR: Duration = Duration::from_secs(600);
/// The `Retry-After` of a refused event stream (console.js reloads the page
/// about this often instead of following the run).
const STREAM_RETRY_AFTER: Duration = Duration::from_secs(30);

/// What the console's handlers share.
#[derive(Clone)]
struct Console {
    app: AppState,
    key: Arc<SessionKey>,
    /// Sessions signed out before they expired.
    revoked: Arc<Revocations>,
    /// The console is served over https: the cookie is `Secure`.
    secure: bool,
    /// The event streams of open runs on this replica.
    streams: EventHub,
}

impl FromRef<Console> for AppState {
    fn from_ref(console: &Console) -> AppState {
        console.app.clone()
    }
}

impl Console {
    fn chrome<'a>(&self, csrf: &'a str) -> Chrome<'a> {
        Chrome { csrf }
    }

    fn check_csrf(&self, session: &Session, token: &str) -> Result<(), UiError> {
        if self.key.csrf_ok(session, token) {
            return Ok(());
        }
        tracing::warn!("console form refused: missing or wrong CSRF token");
        Err(UiError::new(
            StatusCode::FORBIDDEN,
            "This form is out of date or did not come from this console: reload the page and try again.",
        ))
    }
}

/// The console's routes, every one under `/ui` (merged into the daemon's
/// router; a path under `/ui/` that is none of them answers a 404 page).
pub fn router(app: AppState) -> Router<AppState> {
    let settings = app.settings();
    let console = Console {
        key: Arc::new(SessionKey::derive(
            settings.security.admin_token.expose_secret(),
        )),
        revoked: Arc::new(Revocations::default()),
        secure: settings.server.public_url.scheme() == "https",
        streams: EventHub::new(
            read_progress(app.readers.clone()),
            EVENT_EVERY,
            StreamLimits {
                total: settings.server.max_event_streams,
                per_session: settings.server.max_event_streams_per_session,
            },
            app.health.clone(),
        ),
        app: app.clone(),
    };
    let signed_in = Router::new()
        .route("/ui/", get(schedules))
        .route("/ui/runs", get(runs))
        .route("/ui/runs/{id}", get(run))
        .route("/ui/runs/{id}/events", get(events))
        .route("/ui/runs/{id}/results.csv", get(results_csv))
        .route("/ui/runs/{id}/results.jsonl", get(results_jsonl))
        .route("/ui/runs/{id}/cancel", post(cancel))
        .route("/ui/runs/{id}/redrive", post(redrive))
        .route("/ui/schedules/{name}/trigger", post(trigger))
        .route("/ui/schedules/{name}/pause", post(pause))
        .route("/ui/schedules/{name}/resume", post(resume))
        .route("/ui/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(
            console.clone(),
            require_session,
        ));
    Router::new()
        .route("/ui", get(|| async { see_other("/ui/") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/static/console.css", get(css))
        .route("/ui/static/console.js", get(js))
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .merge(signed_in)
        .layer(middleware::map_response(security_headers))
        .with_state(console)
}

// ---------------------------------------------------------------------------
// Errors

/// An error answered as an HTML page.
#[derive(Debug)]
struct UiError {
    status: StatusCode,
    message: String,
}

impl UiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        let status = e.status();
        let message = match e {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "console: internal error");
                "Something went wrong; the daemon's log says what.".to_string()
            }
            other => other.to_string(),
        };
        Self { status, message }
    }
}

impl From<sqlx::Error> for UiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::from(e).into()
    }
}

/// An operator action refused or failed, said as the console says it: an
/// unknown schedule or run is a 404 page, an action the run's or schedule's
/// state does not allow a 409 page, the ledger's errors as [`sqlx::Error`]s.
impl From<ActionError> for UiError {
    fn from(e: ActionError) -> Self {
        let conflict = |message: String| Self::new(StatusCode::CONFLICT, message);
        match e {
            ActionError::UnknownSchedule(name) => {
                Self::not_found(format!("No schedule is called {name:?}."))
            }
            ActionError::UnknownRun(id) => Self::not_found(format!("No run has the id {id}.")),
            ActionError::RunExists {
                schedule,
                scheduled_for,
            } => conflict(format!(
                "A run of {schedule:?} for {scheduled_for} exists already."
            )),
            ActionError::RunFinishing(id) => conflict(format!(
                "Every page of run {id} has reported; it is finishing."
            )),
            ActionError::RunFinished(id) => conflict(format!("Run {id} has finished already.")),
            ActionError::NothingToRedrive(id) => conflict(format!(
                "Run {id} has no failed or timed-out pages to redrive."
            )),
            ActionError::RedriveOpen {
                parent,
                open: Some(open),
            } => conflict(format!(
                "Run {parent} is being redriven already (run {open}): redrive it again once that run has finished."
            )),
            ActionError::RedriveOpen { parent, open: None } => conflict(format!(
                "Run {parent} was being redriven already: reload the page."
            )),
            ActionError::LedgerUnavailable(e) | ActionError::Ledger(e) => e.into(),
        }
    }
}

impl From<FormRejection> for UiError {
    fn from(e: FormRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.body_text())
    }
}

impl From<QueryRejection> for UiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.body_text())
    }
}

impl From<PathRejection> for UiError {
    fn from(e: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.body_text())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let title = match self.status {
            StatusCode::BAD_REQUEST => "Bad request",
            StatusCode::UNAUTHORIZED => "Not signed in",
            StatusCode::FORBIDDEN => "Refused",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::CONFLICT => "Not possible now",
            StatusCode::TOO_MANY_REQUESTS => "Too many requests",
            StatusCode::NOT_IMPLEMENTED => "Not available",
            StatusCode::SERVICE_UNAVAILABLE => "Unavailable",
            _ => "Error",
        };
        (
            self.status,
            Html(pages::error(title, &self.message, None).into_string()),
        )
            .into_response()
    }
}

/// `axum::Form` whose rejection is a [`UiError`] (400 page).
#[derive(FromRequest)]
#[from_request(via(axum::Form), rejection(UiError))]
struct Form<T>(T);

/// `axum::extract::Query` whose rejection is a [`UiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(UiError))]
struct Query<T>(T);

/// `axum::extract::Path` whose rejection is a [`UiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(UiError))]
struct Path<T>(T);

fn run_id(id: &str) -> Result<Uuid, UiError> {
    id.parse()
        .map_err(|_| UiError::not_found(format!("No run has the id {id:?}.")))
}

// ---------------------------------------------------------------------------
// Headers, sessions, the client's address

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Why a request has no session.
enum NoSession {
    /// No cookie, or one that does not verify, has expired or was signed
    /// out.
    Refused(String),
    /// The list of signed-out sessions could not be read.
    Ledger(sqlx::Error),
}

/// The session of a request's cookie, if it verifies and was not signed out.
async fn session_of(console: &Console, headers: &HeaderMap) -> Result<Session, NoSession> {
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find_map(|h| session::cookie(h, session::COOKIE))
        .ok_or_else(|| NoSession::Refused("no session cookie".into()))?;
    let session = console
        .key
        .verify(value, Utc::now())
        .map_err(|e| NoSession::Refused(e.to_string()))?;
    match console
        .revoked
        .is_revoked(console.app.ledger(), &session)
        .await
    {
        Ok(false) => Ok(session),
        Ok(true) => Err(NoSession::Refused("session signed out".into())),
        Err(e) => Err(NoSession::Ledger(e)),
    }
}

/// Lets a request with a valid session through (with the [`Session`] as an
/// extension); sends any other to the sign-in, which brings a GET back to
/// where it was going.
async fn require_session(
    State(console): State<Console>,
    mut request: Request,
    next: Next,
) -> Response {
    match session_of(&console, request.headers()).await {
        Ok(session) => {
            request.extensions_mut().insert(session);
            next.run(request).await
        }
        Err(NoSession::Ledger(e)) => UiError::from(e).into_response(),
        Err(NoSession::Refused(why)) => {
            let path = request
                .extensions()
                .get::<OriginalUri>()
                .map(|u| u.0.clone())
                .unwrap_or_else(|| request.uri().clone());
            tracing::debug!(path = %path.path(), reason = %why, "console request without a valid session: sent to the sign-in");
            let target = match (request.method(), path.path_and_query()) {
                (&Method::GET, Some(pq)) => match safe_next(pq.as_str()) {
                    Some(next) => format!("/ui/login?next={}", pages::urlencode(&next)),
                    None => "/ui/login".to_string(),
                },
                _ => "/ui/login".to_string(),
            };
            see_other(&target)
        }
    }
}

/// `next` normalised, when it is a console path to come back to after
/// signing in (so a sign-in link cannot send anyone elsewhere).
///
/// The path's dot segments are resolved, percent-encoded ones too
/// (`/ui/%2e%2e/x` is `/x`), as a browser would before requesting it; the
/// result must be `/ui` or under `/ui/` and not the sign-in or sign-out.
/// Backslashes, empty segments (`//`), an encoded `/` or `\` in a segment,
/// control characters and anything but printable ASCII are refused.
fn safe_next(next: &str) -> Option<String> {
    if !next.bytes().all(|b| b.is_ascii_graphic()) || next.contains('\\') {
        return None;
    }
    let (path, rest) = next.split_at(next.find(['?', '#']).unwrap_or(next.len()));
    let segments = path.strip_prefix('/')?.split('/').collect::<Vec<_>>();
    let last = segments.len() - 1;
    // Each kept segment as written, and decoded (for the checks).
    let mut kept: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut ends_in_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        let decoded = percent_decode(segment)?;
        if (decoded.is_empty() && i != last)
            || decoded
                .iter()
                .any(|&b| b == b'/' || b == b'\\' || b.is_ascii_control())
        {
            return None;
        }
        match decoded.as_slice() {
            b"." => ends_in_slash = i == last,
            b".." => {
                kept.pop()?;
                ends_in_slash = i == last;
            }
            _ => kept.push((segment, decoded)),
        }
    }
    let mut normal = String::new();
    for (segment, _) in &kept {
        normal.push('/');
        normal.push_str(segment);
    }
    if ends_in_slash || normal.is_empty() {
        normal.push('/');
    }
    let under_ui = kept.first().is_some_and(|(s, _)| *s == "ui");
    let sign_in_or_out = kept
        .get(1)
        .is_some_and(|(_, d)| d.as_slice() == b"login" || d.as_slice() == b"logout");
    (under_ui && !sign_in_or_out).then(|| format!("{normal}{rest}"))
}

/// The bytes of a percent-encoded path segment; `None` when a `%` is not
/// followed by two hex digits.
fn percent_decode(segment: &str) -> Option<Vec<u8>> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

// ---------------------------------------------------------------------------
// Sign-in and sign-out

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_page(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = q.next.as_deref().and_then(safe_next);
    if session_of(&console, &headers).await.is_ok() {
        return see_other(next.as_deref().unwrap_or("/ui/"));
    }
    Html(pages::login(next.as_deref(), false).into_string()).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    next: Option<String>,
}

async fn login(
    State(console): State<Console>,
    client: Client,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = form.next.as_deref().and_then(safe_next);
    match console
        .app
        .auth
        .verify(&client, Some(&form.token), Surface::ConsoleSignIn)
    {
        Ok(()) => {
            tracing::info!(client = %client, "console sign-in");
            let cookie = session::set_cookie(&console.key.issue(Utc::now()), console.secure);
            let mut response = see_other(next.as_deref().unwrap_or("/ui/"));
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            response
        }
        Err(Refused::LockedOut { retry_after }) => {
            let secs = Refused::retry_after_secs(retry_after);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, secs.to_string())],
                Html(
                    pages::error(
                        "Too many attempts",
                        &format!(
                            "Too many wrong tokens came from your address. Try again in {secs} s."
                        ),
                        None,
                    )
                    .into_string(),
                ),
            )
                .into_response()
        }
        Err(Refused::Missing | Refused::Wrong) => (
            StatusCode::UNAUTHORIZED,
            Html(pages::login(next.as_deref(), true).into_string()),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// A form POST whose CSRF token belongs to the signed-in session: the only
/// way an action's handler gets its session, so none can forget the check.
/// Read last (it reads the body).
struct Checked(Session);

impl FromRequest<Console> for Checked {
    type Rejection = UiError;

    async fn from_request(req: Request, console: &Console) -> Result<Self, UiError> {
        let session = req.extensions().get::<Session>().cloned().ok_or_else(|| {
            UiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "This form has no session.",
            )
        })?;
        let Form(form) = Form::<CsrfForm>::from_request(req, console).await?;
        console.check_csrf(&session, &form.csrf)?;
        Ok(Checked(session))
    }
}

async fn logout(
    State(console): State<Console>,
    client: Client,
    Checked(session): Checked,
) -> Result<Response, UiError> {
    // Revoked for every replica (with its CSRF token), not only deleted
    // from this browser: a copy of the cookie is refused too.
    console
        .revoked
        .revoke(console.app.ledger(), &session)
        .await?;
    tracing::info!(client = %client, "console sign-out");
    let mut response = see_other("/ui/login");
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(console.secure)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}

// ---------------------------------------------------------------------------
// Static files

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        CSS,
    )
}

async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        JS,
    )
}

async fn not_found() -> UiError {
    UiError::not_found("There is no such page in the console.")
}

// ---------------------------------------------------------------------------
// Pages

async fn schedules(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
) -> Result<Html<String>, UiError> {
    let now = Utc::now();
    let views = crate::overview::schedule_views(&console.app.runs).await?;
    let names: Vec<String> = views.iter().map(|v| v.name.clone()).collect();
    let mut recent = ledger::recent_runs(&console.app.readers, &names, 30).await?;
    let rows: Vec<ScheduleRow> = views
        .into_iter()
        .map(|view| {
            let (mine, rest) = recent.drain(..).partition(|r| r.schedule == view.name);
            recent = rest;
            ScheduleRow { view, recent: mine }
        })
        .collect();
    let csrf = console.key.csrf(&session);
    Ok(Html(
        pages::schedules(&console.chrome(&csrf), &rows, now).into_string(),
    ))
}

#[derive(Debug, Deserialize)]
struct RunsQuery {
    schedule: Option<String>,
    status: Option<String>,
    before: Option<String>,
}

async fn runs(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Query(q): Query<RunsQuery>,
) -> Result<Html<String>, UiError> {
    let schedule = q.schedule.as_deref().filter(|s| !s.is_empty());
    let status = q.status.as_deref().filter(|s| !s.is_empty());
    let open = [RunStatus::Listing, RunStatus::Running, RunStatus::Finishing];
    let finished = [RunStatus::Finished];
    let (statuses, outcome): (Option<&[RunStatus]>, Option<Outcome>) = match status {
        None => (None, None),
        Some("open") => (Some(&open), None),
        Some("finished") => (Some(&finished), None),
        Some("succeeded") => (None, Some(Outcome::Succeeded)),
        Some("partial") => (None, Some(Outcome::Partial)),
        Some("failed") => (None, Some(Outcome::Failed)),
        Some("cancelled") => (None, Some(Outcome::Cancelled)),
        Some(other) => {
            let known: Vec<&str> = pages::RUN_FILTERS.iter().map(|(v, _)| *v).collect();
            return Err(UiError::new(
                StatusCode::BAD_REQUEST,
                format!("status {other:?} must be one of {}", known.join(", ")),
            ));
        }
    };
    let before = match q.before.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(b) => Some(b.parse::<Uuid>().map_err(|_| {
            UiError::new(
                StatusCode::BAD_REQUEST,
                format!("before {b:?} is not a run id"),
            )
        })?),
    };
    let mut found = ledger::list_runs_before(
        &console.app.readers,
        schedule,
        statuses,
        outcome,
        before,
        PAGE_SIZE + 1,
    )
    .await?;
    let older = if found.len() as i64 > PAGE_SIZE {
        found.truncate(PAGE_SIZE as usize);
        found.last().map(|r| r.id.to_string())
    } else {
        None
    };
    let names: Vec<String> = console
        .app
        .settings()
        .schedules
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let csrf = console.key.csrf(&session);
    Ok(Html(
        pages::runs(
            &console.chrome(&csrf),
            &names,
            &RunsFilter { schedule, status },
            &found,
            older,
            before.is_none(),
            Utc::now(),
        )
        .into_string(),
    ))
}

#[derive(Debug, Deserialize)]
struct RunQuery {
    after: Option<i64>,
    changes_after: Option<i64>,
}

async fn run(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Query(q): Query<RunQuery>,
) -> Result<Html<String>, UiError> {
    let id = run_id(&id)?;
    let pool = &console.app.readers;
    let run = ledger::get_run(pool, id)
        .await?
        .ok_or_else(|| UiError::not_found(format!("No run has the id {id}.")))?;
    let now = Utc::now();
    let from = run.created_at;
    let to = run
        .finished_at
        .unwrap_or(now)
        .max(from + chrono::Duration::seconds(1));
    let over_time = ledger::finished_over_time(pool, id, from, to, TIME_SLICES).await?;
    let fetch = ledger::fetch_ms_percentiles(pool, id).await?;
    let fetch_buckets = ledger::fetch_ms_histogram(pool, id, pages::FETCH_THRESHOLDS).await?;
    let after = q.after.unwrap_or(0).max(0);
    let mut failures = ledger::list_failures(pool, id, after, PAGE_SIZE + 1).await?;
    let failures_next = if failures.len() as i64 > PAGE_SIZE {
        failures.truncate(PAGE_SIZE as usize);
        failures.last().map(|p| p.id)
    } else {
        None
    };
    let changes = ledger::run_changes(pool, id).await?;
    let changes_after = q.changes_after.unwrap_or(0).max(0);
    let rows = ledger::RunRows {
        run_id: id,
        only: None,
        after_id: changes_after,
        limit: PAGE_SIZE + 1,
    };
    let mut change_rows = ledger::list_changes(pool, rows)
        .await?
        .into_iter()
        .map(ChangeEntry::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    let changes_next = if change_rows.len() as i64 > PAGE_SIZE {
        change_rows.truncate(PAGE_SIZE as usize);
        change_rows.last().map(|c| c.id)
    } else {
        None
    };
    let notifications = ledger::run_notifications(pool, id).await?;
    let render = ledger::render_counts(pool, id).await?;
    let fetches = ledger::fetch_counts(pool, id).await?;
    let view = RunView {
        run,
        over_time,
        span: (from, to),
        slices: TIME_SLICES,
        fetch,
        fetch_buckets,
        failures,
        failures_after: after,
        failures_next,
        changes,
        change_rows,
        changes_after,
        changes_next,
        notifications,
        render,
        fetches,
    };
    let csrf = console.key.csrf(&session);
    Ok(Html(
        pages::run(&console.chrome(&csrf), &view, now).into_string(),
    ))
}

/// The JSON of one progress event: the run's status and page counts.
fn progress_json(run: &ledger::Run) -> String {
    let mut v = serde_json::to_value(svg::Counts::of(run)).unwrap_or_default();
    v["status"] = serde_json::to_value(run.status).unwrap_or_default();
    v.to_string()
}

/// Reads a run's progress from the ledger, for the event streams.
fn read_progress(pool: sqlx::PgPool) -> ReadRun {
    Arc::new(move |id| {
        let pool = pool.clone();
        Box::pin(async move {
            match ledger::get_run(&pool, id).await {
                Ok(Some(run)) if run.status == RunStatus::Finished => {
                    Reading::Finished(progress_json(&run).into())
                }
                Ok(Some(run)) => Reading::Open(progress_json(&run).into()),
                Ok(None) => Reading::Missing,
                Err(e) => {
                    tracing::warn!(run_id = %id, error = %e, "console events: reading the run failed; trying again");
                    Reading::Unavailable
                }
            }
        })
    })
}

/// `/ui/runs/{id}/events`: a `progress` event with the run's counts every
/// second while it is open, then one `done` event, and the stream ends.
/// It also ends on shutdown and after [`EVENT_STREAM_FOR`]; the browser
/// reconnects by itself. Every stream of a run on this replica shares one
/// read of it a second ([`streams`]); beyond the streams a session or the
/// replica may have open, the answer is 429.
async fn events(
    State(console): State<Console>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let id = run_id(&id)?;
    if console.app.health.shutting_down.load(Ordering::SeqCst) {
        return Ok(ended_stream());
    }
    let ticket = match console.streams.admit(session.nonce()) {
        Ok(ticket) => ticket,
        Err(refused) => return Ok(too_many_streams(id, refused)),
    };
    let mut readings = console.streams.follow(id);
    let first = readings
        .wait_for(|r| *r != Reading::Pending)
        .await
        .map(|r| r.clone());
    match first {
        // Shutdown began before the run was read.
        Err(_) => Ok(ended_stream()),
        Ok(Reading::Missing) => Err(UiError::not_found(format!("No run has the id {id}."))),
        Ok(Reading::Unavailable) => Err(UiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The ledger cannot be read just now; try again shortly.",
        )),
        Ok(_) => Ok(Sse::new(follow(readings, ticket))
            .keep_alive(KeepAlive::default())
            .into_response()),
    }
}

/// The events of one stream: the latest reading at once, then each new
/// one, until the run finishes (`done`), its poller stops (shutdown) or
/// [`EVENT_STREAM_FOR`] has passed. The ticket goes with the stream.
fn follow(
    readings: tokio::sync::watch::Receiver<Reading>,
    ticket: Ticket,
) -> impl Stream<Item = Result<Event, Infallible>> {
    struct Follower {
        readings: tokio::sync::watch::Receiver<Reading>,
        _ticket: Ticket,
        until: tokio::time::Instant,
        first: bool,
        done: bool,
    }
    let follower = Follower {
        readings,
        _ticket: ticket,
        until: tokio::time::Instant::now() + EVENT_STREAM_FOR,
        first: true,
        done: false,
    };
    futures::stream::unfold(follower, |mut f| async move {
        loop {
            if f.done {
                return None;
            }
            if f.first {
                f.first = false;
            } else {
                tokio::select! {
                    changed = f.readings.changed() => changed.ok()?,
                    _ = tokio::time::sleep_until(f.until) => return None,
                }
            }
            let reading = f.readings.borrow_and_update().clone();
            let event = match reading {
                Reading::Open(data) => Event::default().event("progress").data(&*data),
                Reading::Finished(data) => {
                    f.done = true;
                    Event::default().event("done").data(&*data)
                }
                Reading::Unavailable => Event::default().comment("ledger unavailable"),
                Reading::Missing => return None,
                Reading::Pending => continue,
            };
            return Some((Ok(event), f));
        }
    })
}

/// An event stream that ends at once (the browser reconnects later).
fn ended_stream() -> Response {
    Sse::new(futures::stream::empty::<Result<Event, Infallible>>()).into_response()
}

/// The 429 of a stream beyond a limit: `EventSource` stops on it, and
/// console.js reloads the page now and then instead.
fn too_many_streams(id: Uuid, refused: StreamRefused) -> Response {
    tracing::debug!(run_id = %id, limit = refused.limit(), "console event stream refused: {refused}");
    let mut response = UiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("Not following the run live: {refused}. Reload the page for its progress."),
    )
    .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(STREAM_RETRY_AFTER.as_secs()),
    );
    response
}

/// A download of the run's results: the admin API's export, for a browser
/// that has a session cookie instead of the admin token.
async fn results(
    console: &Console,
    id: &str,
    format: &str,
    cells: Option<&str>,
) -> Result<Response, UiError> {
    Ok(crate::http::results::export_run(&console.app, id, Some(format), None, cells).await?)
}

#[derive(Debug, Deserialize)]
struct CellsQuery {
    cells: Option<String>,
}

/// The CSV download: cells a spreadsheet would run as formulas are
/// neutralised unless `?cells=raw`.
async fn results_csv(
    State(console): State<Console>,
    Path(id): Path<String>,
    Query(q): Query<CellsQuery>,
) -> Result<Response, UiError> {
    results(&console, &id, "csv", q.cells.as_deref()).await
}

async fn results_jsonl(
    State(console): State<Console>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    results(&console, &id, "jsonl", None).await
}

// ---------------------------------------------------------------------------
// Actions

async fn trigger(
    State(console): State<Console>,
    Path(name): Path<String>,
    _: Checked,
) -> Result<Response, UiError> {
    let run_id = console.app.actions().trigger(&name).await?;
    Ok(see_other(&format!("/ui/runs/{run_id}")))
}

async fn set_paused(console: &Console, name: &str, paused: bool) -> Result<Response, UiError> {
    console.app.actions().set_paused(name, paused).await?;
    Ok(see_other("/ui/"))
}

async fn pause(
    State(console): State<Console>,
    Path(name): Path<String>,
    _: Checked,
) -> Result<Response, UiError> {
    set_paused(&console, &name, true).await
}

async fn resume(
    State(console): State<Console>,
    Path(name): Path<String>,
    _: Checked,
) -> Result<Response, UiError> {
    set_paused(&console, &name, false).await
}

async fn cancel(
    State(console): State<Console>,
    Path(id): Path<String>,
    _: Checked,
) -> Result<Response, UiError> {
    let id = run_id(&id)?;
    console.app.actions().cancel(id).await?;
    tracing::info!(run_id = %id, "run cancelled from the console");
    Ok(see_other(&format!("/ui/runs/{id}")))
}

async fn redrive(
    State(console): State<Console>,
    Path(id): Path<String>,
    _: Checked,
) -> Result<Response, UiError> {
    let id = run_id(&id)?;
    let new = console.app.actions().redrive(id).await?;
    Ok(see_other(&format!("/ui/runs/{new}")))
}

#[cfg(test)]
mod tests {
    use super::{safe_next, ActionError, StatusCode, UiError};

    #[test]
    fn action_errors_are_the_same_status_pages_as_the_apis_answers() {
        let id = uuid::Uuid::nil();
        let open = uuid::Uuid::from_u128(1);
        for (e, status, says) in [
            (
                ActionError::UnknownSchedule("s".into()),
                StatusCode::NOT_FOUND,
                "No schedule is called \"s\".",
            ),
            (
                ActionError::UnknownRun(id),
                StatusCode::NOT_FOUND,
                "No run has the id",
            ),
            (
                ActionError::RunFinishing(id),
                StatusCode::CONFLICT,
                "it is finishing.",
            ),
            (
                ActionError::RunFinished(id),
                StatusCode::CONFLICT,
                "has finished already.",
            ),
            (
                ActionError::NothingToRedrive(id),
                StatusCode::CONFLICT,
                "no failed or timed-out pages",
            ),
            (
                ActionError::RedriveOpen {
                    parent: id,
                    open: Some(open),
                },
                StatusCode::CONFLICT,
                "is being redriven already (run 00000000-0000-0000-0000-000000000001)",
            ),
            (
                ActionError::RedriveOpen {
                    parent: id,
                    open: None,
                },
                StatusCode::CONFLICT,
                "reload the page",
            ),
            (
                ActionError::from(sqlx::Error::PoolTimedOut),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
        ] {
            let page = UiError::from(e);
            assert_eq!(page.status, status, "{}", page.message);
            assert!(page.message.contains(says), "{}", page.message);
        }
    }

    #[test]
    fn next_is_normalised_and_honoured_only_under_ui() {
        for (next, want) in [
            ("/ui", "/ui"),
            ("/ui/", "/ui/"),
            ("/ui/runs?status=failed", "/ui/runs?status=failed"),
            ("/ui/runs/0193/../", "/ui/runs/"),
            ("/ui/runs/..", "/ui/"),
            ("/ui/./runs", "/ui/runs"),
            ("/ui/runs/%2e/x", "/ui/runs/x"),
            ("/ui/runs/%2E%2e", "/ui/"),
            ("/ui/a%20b", "/ui/a%20b"),
        ] {
            assert_eq!(safe_next(next).as_deref(), Some(want), "{next}");
        }
        for next in [
            "/ui/../evil",
            "/ui/..",
            "/ui/%2e%2e/evil",
            "/ui/%2E%2E/evil",
            "/ui/.%2e/evil",
            "/ui/runs/../../evil",
            "/../ui/",
            "/ui/..%2fevil",
            "/ui/%2f%2fevil.example",
            "/ui/%5c%5cevil.example",
            "/ui/\\evil.example",
            "//evil.example/ui/",
            "/ui//evil.example",
            "/ui/%00",
            "/ui/%zz",
            "/ui/%2",
            "https://evil.example/ui/",
            "ui/",
            "/uix",
            "/",
            "/ui/login",
            "/ui/logout",
            "/ui/%6cogin",
            "/ui/runs/../login?next=/ui/",
            "/ui/caf\u{e9}",
            "/ui/a b",
        ] {
            assert_eq!(safe_next(next), None, "{next}");
        }
    }
}
