//! `GET /v1/runs/{id}/results`: every page's result of a run, streamed from
//! Postgres as JSON Lines or CSV.
//!
//! Titles and fields come from third-party pages. A spreadsheet opening the
//! CSV would run a cell that begins with `=`, `+`, `-`, `@`, a tab or a
//! carriage return as a formula, so by default (`cells=safe`) such a cell is
//! written with a single quote in front (OWASP's advice for CSV injection);
//! `cells=raw` writes every cell as it is. JSON Lines are written as they are.
//!
//! The rows are read [`ROWS_AT_ONCE`] at a time (by id, after the last one
//! sent) from the readers' pool and written into the response body through
//! a bounded channel: a slow client slows the reading down (the channel
//! fills), so a run of a million pages is never in memory, whatever the
//! client's speed, and a connection is held only while one page of rows is
//! read, never while a client is slow to take them. A client that goes
//! away drops the channel's receiver, and the reader stops.
//!
//! At most [`EXPORTS_AT_ONCE`] exports stream at once per replica; one more
//! is answered 429 with `Retry-After`.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::api::{Path, Query};
use super::{ApiError, AppState};
use crate::ledger::{self, PageResult, PageStatus};

/// A chunk of the body is sent once it holds this many bytes.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks written ahead of the client at most.
const CHUNKS_AHEAD: usize = 4;
/// Rows read from the ledger in one statement.
pub const ROWS_AT_ONCE: i64 = 1000;
/// Exports one replica streams at once.
pub const EXPORTS_AT_ONCE: usize = 4;
/// What a refused export is told to wait.
const RETRY_EXPORT_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// The export's formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (`application/x-ndjson`).
    Jsonl,
    /// A header line, then one record per page (`text/csv`).
    Csv,
}

impl Format {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Jsonl => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
        }
    }
}

/// How CSV cells that a spreadsheet would read as a formula are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cells {
    /// A cell beginning with `=`, `+`, `-`, `@`, a tab or a carriage return
    /// gets a single quote in front, so a spreadsheet shows it as text.
    Safe,
    /// Every cell as it is (for programs that read the CSV).
    Raw,
}

impl Cells {
    /// `safe` or `raw`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "safe" => Some(Cells::Safe),
            "raw" => Some(Cells::Raw),
            _ => None,
        }
    }

    /// `cell` as it is written under this policy.
    pub fn write(self, cell: String) -> String {
        match self {
            Cells::Safe if starts_a_formula(&cell) => format!("'{cell}"),
            _ => cell,
        }
    }
}

/// Whether a spreadsheet would read `cell` as a formula (OWASP, CSV
/// injection: `=`, `+`, `-`, `@`, tab, carriage return first).
pub fn starts_a_formula(cell: &str) -> bool {
    matches!(
        cell.as_bytes().first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
    )
}

/// The query of `GET /v1/runs/{id}/results`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResultsQuery {
    /// `jsonl` (the default) or `csv`.
    #[param(pattern = "^(jsonl|csv)$")]
    format: Option<String>,
    /// Only pages in this state (pending, dispatched, succeeded, failed,
    /// timed_out, cancelled).
    #[param(pattern = "^(pending|dispatched|succeeded|failed|timed_out|cancelled)$")]
    status: Option<String>,
    /// CSV only: `safe` (the default) writes a cell beginning with `=`, `+`,
    /// `-`, `@`, a tab or a carriage return with a single quote in front, so
    /// that a spreadsheet does not run it as a formula; `raw` writes every
    /// cell as it is.
    #[param(pattern = "^(safe|raw)$")]
    cells: Option<String>,
}

/// The CSV columns before the schedule's extract fields.
const LEADING: [&str; 4] = ["url", "status", "http_status", "title"];
/// The CSV columns after them (then `fields_json`).
const TRAILING: [&str; 4] = ["content_sha256", "fetch_ms", "error_kind", "error_message"];

/// The CSV header for a schedule whose extract fields are `fields`. A field
/// named like a fixed column is shown as `field:<name>` so that no two
/// columns share a name.
pub fn csv_header(fields: &[String]) -> Vec<String> {
    let fixed =
        |name: &str| LEADING.contains(&name) || TRAILING.contains(&name) || name == "fields_json";
    let mut header: Vec<String> = LEADING.iter().map(|s| s.to_string()).collect();
    header.extend(fields.iter().map(|f| {
        if fixed(f) {
            format!("field:{f}")
        } else {
            f.clone()
        }
    }));
    header.extend(TRAILING.iter().map(|s| s.to_string()));
    header.push("fields_json".into());
    header
}

/// `GET /v1/runs/{id}/results?format=jsonl|csv&status=S&cells=safe|raw`.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/results",
    tag = "runs",
    summary = "Export a run's results",
    description = "Every page's result, streamed from the ledger in id order: one JSON object per line (`format=jsonl`), or CSV with the header `url,status,http_status,title,<each extract field>,content_sha256,fetch_ms,error_kind,error_message,fields_json`. In CSV, a cell beginning with `=`, `+`, `-`, `@`, a tab or a carriage return is written with a single quote in front unless `cells=raw`.",
    params(
        super::api::RunPath,
        ResultsQuery,
    ),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The results, streamed", content(
            (String = "application/x-ndjson"),
            (String = "text/csv"),
        )),
        (status = 400, description = "A malformed query string, an unknown `format`, `status` or `cells`", body = super::error::ErrorBody),
        super::api::AdminErrors,
        (status = 404, description = "No run has this id", body = super::error::ErrorBody),
        (status = 429, description = "As many exports as a replica streams at once are streaming; retry after `Retry-After` seconds", body = super::error::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn export(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ResultsQuery>,
) -> Result<Response, ApiError> {
    export_run(
        &state,
        &id,
        q.format.as_deref(),
        q.status.as_deref(),
        q.cells.as_deref(),
    )
    .await
}

/// The export of run `id` in `format` (`jsonl` when `None`), optionally of
/// the pages in one `status`, CSV cells written under `cells` (`safe` when
/// `None`): what `GET /v1/runs/{id}/results` answers, and the console's
/// download links.
pub async fn export_run(
    state: &AppState,
    id: &str,
    format: Option<&str>,
    status: Option<&str>,
    cells: Option<&str>,
) -> Result<Response, ApiError> {
    let run_id = super::api::parse_run_id(id)?;
    let format = match format {
        None => Format::Jsonl,
        Some(f) => Format::parse(f)
            .ok_or_else(|| ApiError::BadRequest(format!("format {f:?} must be jsonl or csv")))?,
    };
    let cells = match cells {
        None => Cells::Safe,
        Some(c) => Cells::parse(c)
            .ok_or_else(|| ApiError::BadRequest(format!("cells {c:?} must be safe or raw")))?,
    };
    let status = super::api::parse_page_status(status)?;
    let Ok(permit) = state.exports.clone().try_acquire_owned() else {
        metrics::counter!("fanfare_exports_refused_total").increment(1);
        tracing::warn!(%run_id, at_once = EXPORTS_AT_ONCE, "results export refused: as many exports as allowed are streaming");
        return Err(ApiError::TooManyRequests {
            message: format!(
                "{EXPORTS_AT_ONCE} results exports are streaming from this replica; retry later"
            ),
            retry_after: RETRY_EXPORT_AFTER,
        });
    };
    let run = ledger::get_run(&state.readers, run_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run has the id {run_id}")))?;
    // A run of a schedule no longer configured has no known fields: every
    // field then goes to fields_json.
    let fields: Vec<String> = state
        .settings()
        .schedule(&run.schedule)
        .map(|s| s.extract.keys().cloned().collect())
        .unwrap_or_default();

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_AHEAD);
    let encoder = Encoder::new(format, cells, fields);
    tokio::spawn(stream_results(
        state.readers.clone(),
        run_id,
        status,
        encoder,
        tx,
        permit,
    ));

    let disposition = format!(
        "attachment; filename=\"run-{run_id}.{}\"",
        format.extension()
    );
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        })),
    )
        .into_response())
}

/// Reads run `run_id`'s pages (only those in `status`, when given) some
/// rows at a time and sends them through `tx`, encoded, until every page
/// is sent, reading fails or the client goes away; the export's `permit`
/// is held until then.
async fn stream_results(
    pool: sqlx::PgPool,
    run_id: uuid::Uuid,
    status: Option<PageStatus>,
    mut encoder: Encoder,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let (mut count, mut after) = (0u64, 0i64);
    loop {
        let next = ledger::RunRows {
            run_id,
            only: status,
            after_id: after,
            limit: ROWS_AT_ONCE,
        };
        let rows = match ledger::page_results(&pool, next).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(%run_id, rows = count, error = %e, "results export stopped: reading the pages failed");
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "reading the pages of run {run_id} failed after {count} rows"
                    ))))
                    .await;
                return;
            }
        };
        let last_page = (rows.len() as i64) < ROWS_AT_ONCE;
        for row in &rows {
            count += 1;
            after = row.id;
            if let Err(e) = encoder.row(row) {
                tracing::error!(%run_id, page_id = row.id, error = %e, "results export stopped: encoding a row failed");
                let _ = tx.send(Err(std::io::Error::other(e))).await;
                return;
            }
            if encoder.len() >= CHUNK_BYTES && tx.send(Ok(encoder.take())).await.is_err() {
                tracing::debug!(%run_id, rows = count, "results export: the client went away");
                return;
            }
        }
        if last_page {
            break;
        }
    }
    let last = encoder.take();
    if !last.is_empty() {
        let _ = tx.send(Ok(last)).await;
    }
    tracing::debug!(%run_id, rows = count, "results exported");
}

/// Turns pages into the export's bytes, a chunk at a time.
struct Encoder {
    format: Format,
    cells: Cells,
    fields: Vec<String>,
    csv: Option<csv::Writer<Vec<u8>>>,
    json: Vec<u8>,
}

impl Encoder {
    fn new(format: Format, cells: Cells, fields: Vec<String>) -> Self {
        let mut encoder = Self {
            format,
            cells,
            csv: None,
            json: Vec::new(),
            fields,
        };
        if format == Format::Csv {
            let mut w = csv_writer();
            let header = csv_header(&encoder.fields)
                .into_iter()
                .map(|h| cells.write(h));
            // Writing into a Vec cannot fail.
            let _ = w.write_record(header);
            encoder.csv = Some(w);
        }
        encoder
    }

    fn row(&mut self, page: &PageResult) -> Result<(), String> {
        let facts = Facts::of(page);
        match self.format {
            Format::Jsonl => {
                let record = json!({
                    "page_id": page.id,
                    "url": page.url,
                    "status": page.status,
                    "attempt": page.attempt,
                    "http_status": facts.http_status,
                    "title": facts.title,
                    "fields": facts.fields,
                    "bytes": facts.bytes,
                    "content_sha256": facts.content_sha256,
                    "fetch_ms": facts.fetch_ms,
                    "error_kind": facts.error_kind,
                    "error_message": facts.error_message,
                    "finished_at": page.finished_at,
                });
                serde_json::to_writer(&mut self.json, &record).map_err(|e| e.to_string())?;
                self.json.push(b'\n');
                Ok(())
            }
            Format::Csv => {
                let w = self.csv.as_mut().expect("a CSV encoder has a writer");
                // A number is written as JSON writes it, and never taken for
                // a formula (a price of -5 stays -5); an array or object as
                // its JSON text.
                let text = |v: Option<&Value>| match v {
                    None | Some(Value::Null) => (String::new(), false),
                    Some(Value::String(s)) => (s.clone(), false),
                    Some(Value::Number(n)) => (n.to_string(), true),
                    Some(other) => (other.to_string(), false),
                };
                let mut record: Vec<(String, bool)> = Vec::with_capacity(self.fields.len() + 9);
                record.push((page.url.clone(), false));
                record.push((page.status.as_str().to_string(), false));
                record.push(text(facts.http_status));
                record.push(text(facts.title));
                let mut extra = Map::new();
                if let Some(Value::Object(all)) = facts.fields {
                    for (k, v) in all {
                        if !self.fields.iter().any(|f| f == k) {
                            extra.insert(k.clone(), v.clone());
                        }
                    }
                }
                let all = match facts.fields {
                    Some(Value::Object(all)) => Some(all),
                    _ => None,
                };
                for f in &self.fields {
                    record.push(text(all.and_then(|a| a.get(f))));
                }
                record.push(text(facts.content_sha256));
                record.push(text(facts.fetch_ms));
                record.push(text(facts.error_kind));
                record.push(text(facts.error_message));
                record.push(if extra.is_empty() {
                    (String::new(), false)
                } else {
                    (Value::Object(extra).to_string(), false)
                });
                let cells = self.cells;
                w.write_record(
                    record
                        .into_iter()
                        .map(|(c, number)| if number { c } else { cells.write(c) }),
                )
                .map_err(|e| e.to_string())
            }
        }
    }

    /// Bytes encoded and not yet taken.
    fn len(&self) -> usize {
        match &self.csv {
            // The writer's own buffer (8 KiB) reaches the Vec whenever it fills.
            Some(w) => w.get_ref().len(),
            None => self.json.len(),
        }
    }

    /// Takes the bytes encoded so far.
    fn take(&mut self) -> Bytes {
        match &mut self.csv {
            Some(w) => {
                let full = std::mem::replace(w, csv_writer());
                // Flushing into a Vec cannot fail.
                Bytes::from(full.into_inner().unwrap_or_default())
            }
            None => Bytes::from(std::mem::take(&mut self.json)),
        }
    }
}

/// A CSV writer into a fresh chunk.
fn csv_writer() -> csv::Writer<Vec<u8>> {
    csv::Writer::from_writer(Vec::with_capacity(CHUNK_BYTES + 16 * 1024))
}

/// The facts of a page's report and its last error, as they were stored.
struct Facts<'a> {
    http_status: Option<&'a Value>,
    title: Option<&'a Value>,
    fields: Option<&'a Value>,
    bytes: Option<&'a Value>,
    content_sha256: Option<&'a Value>,
    fetch_ms: Option<&'a Value>,
    error_kind: Option<&'a Value>,
    error_message: Option<&'a Value>,
}

impl<'a> Facts<'a> {
    fn of(page: &'a PageResult) -> Self {
        let r = |k: &str| page.result.as_ref().and_then(|v| v.get(k));
        let e = |k: &str| page.error.as_ref().and_then(|v| v.get(k));
        Facts {
            http_status: r("http_status"),
            title: r("title"),
            fields: r("fields"),
            bytes: r("bytes"),
            content_sha256: r("content_sha256"),
            fetch_ms: r("fetch_ms"),
            error_kind: e("kind"),
            error_message: e("message"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_cells_quote_what_a_spreadsheet_would_run_and_raw_cells_are_left_alone() {
        for formula in [
            "=HYPERLINK(\"http://evil.example\",\"x\")",
            "+1+1",
            "-2+3",
            "@SUM(A1:A2)",
            "\t=1",
            "\r=1",
        ] {
            assert_eq!(Cells::Safe.write(formula.into()), format!("'{formula}"));
            assert_eq!(Cells::Raw.write(formula.into()), formula);
        }
        for plain in [
            "",
            "Kettle",
            " =1",
            "'=1",
            "9,99 €",
            "https://a.example/=x",
            "\n=1",
        ] {
            assert_eq!(Cells::Safe.write(plain.into()), plain, "{plain:?}");
        }
        assert_eq!(Cells::parse("safe"), Some(Cells::Safe));
        assert_eq!(Cells::parse("raw"), Some(Cells::Raw));
        assert_eq!(Cells::parse("Raw"), None);
    }
}
