//! The one error type of the HTTP layer. Client errors say what was wrong;
//! server errors are logged with their cause and answered generically.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::actions::ActionError;

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong, naming the culprit (`"internal error"` for a 500,
    /// whose cause is logged).
    pub error: String,
}

/// An HTTP error answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: missing or invalid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 400: the request is not readable.
    #[error("{0}")]
    BadRequest(String),
    /// 409: the request conflicts with the ledger's state.
    #[error("{0}")]
    Conflict(String),
    /// 408: the request body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// 413: the body is too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 422: readable, but it breaks the contract.
    #[error("{0}")]
    Unprocessable(String),
    /// 429: the client is locked out for a while, or too many of these
    /// run at once (its `Retry-After`).
    #[error("{message}")]
    TooManyRequests {
        /// What to tell the client.
        message: String,
        /// How long to wait before asking again.
        retry_after: std::time::Duration,
    },
    /// 503: a dependency (the database) is unavailable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// 500: logged, answered generically.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// The status code this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            e if crate::ledger::is_unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::Unavailable("the database is unavailable; retry later".into())
            }
            sqlx::Error::Database(db)
                if db.is_unique_violation() || db.is_foreign_key_violation() =>
            {
                ApiError::Conflict(db.message().to_string())
            }
            _ => ApiError::Internal(e.into()),
        }
    }
}

/// An operator action refused or failed: an unknown schedule or run is
/// 404, an action the run's or schedule's state does not allow is 409, the
/// ledger's errors answer as [`sqlx::Error`]s do (503 when unavailable).
impl From<ActionError> for ApiError {
    fn from(e: ActionError) -> Self {
        match e {
            ActionError::UnknownSchedule(_) | ActionError::UnknownRun(_) => {
                ApiError::NotFound(e.to_string())
            }
            ActionError::RunExists { .. }
            | ActionError::RunFinishing(_)
            | ActionError::RunFinished(_)
            | ActionError::NothingToRedrive(_)
            | ActionError::RedriveOpen { .. } => ApiError::Conflict(e.to_string()),
            ActionError::LedgerUnavailable(e) | ActionError::Ledger(e) => e.into(),
        }
    }
}

/// A query string that does not fit the endpoint's parameters.
impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::BadRequest(e.body_text())
    }
}

/// A path segment that cannot be read (e.g. not UTF-8 once decoded).
impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::BadRequest(e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let mut resp = (status, Json(ErrorBody { error: message })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if let ApiError::TooManyRequests { retry_after, .. } = self {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                super::auth::Refused::retry_after_secs(retry_after).into(),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn action_errors_answer_404_409_or_as_the_ledger_does() {
        let id = Uuid::nil();
        for (e, status) in [
            (
                ActionError::UnknownSchedule("s".into()),
                StatusCode::NOT_FOUND,
            ),
            (ActionError::UnknownRun(id), StatusCode::NOT_FOUND),
            (
                ActionError::RunExists {
                    schedule: "s".into(),
                    scheduled_for: chrono::Utc::now(),
                },
                StatusCode::CONFLICT,
            ),
            (ActionError::RunFinishing(id), StatusCode::CONFLICT),
            (ActionError::RunFinished(id), StatusCode::CONFLICT),
            (ActionError::NothingToRedrive(id), StatusCode::CONFLICT),
            (
                ActionError::RedriveOpen {
                    parent: id,
                    open: None,
                },
                StatusCode::CONFLICT,
            ),
            (
                ActionError::from(sqlx::Error::PoolTimedOut),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                ActionError::from(sqlx::Error::RowNotFound),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ] {
            let said = e.to_string();
            let api = ApiError::from(e);
            assert_eq!(api.status(), status, "{said}");
            if status.is_client_error() {
                assert_eq!(api.to_string(), said, "a client error says what was wrong");
            }
        }
    }
}
