//! The server side of the API's conventions, for the node's own routes and for the routes a kind contributes:
//! JSON request bodies read within [`MAX_REQUEST`](crate::MAX_REQUEST) whatever their content type, every error
//! as `{"error": "..."}` with its status, and the 404 of unknown endpoints.

use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::ErrorBody;

/// An error answer: an HTTP status and a message the user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// HTTP status code.
    pub status: u16,
    /// What went wrong.
    pub message: String,
}

impl Error {
    /// 400: the request itself is wrong.
    pub fn bad(m: impl Into<String>) -> Error {
        Error { status: 400, message: m.into() }
    }

    /// 404: no such thing.
    pub fn not_found(m: impl Into<String>) -> Error {
        Error { status: 404, message: m.into() }
    }

    /// 500: this node failed.
    pub fn internal(m: impl Into<String>) -> Error {
        Error { status: 500, message: m.into() }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(ErrorBody { error: self.message })).into_response()
    }
}

/// A JSON body in (as an extractor) or out (as a response). Unlike `axum::Json`, it takes bodies without a
/// content type (`curl -d`), and its rejections are [`Error`]s, so they read like every other error.
#[derive(Debug, Clone, Default)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| Error::bad(format!("cannot read the request body: {}", root_cause(&e))))?;
        serde_json::from_slice(&body).map(Json).map_err(|e| Error::bad(format!("bad request body: {e}")))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// The innermost error of a chain: axum wraps "length limit exceeded" in two layers of "failed to buffer".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

/// The answer to a path no route serves (and to a method a route does not take).
pub async fn no_endpoint(uri: Uri) -> Error {
    Error::not_found(format!("no API endpoint {}", uri.path()))
}

/// The request body limit of every route: [`MAX_REQUEST`](crate::MAX_REQUEST).
pub fn body_limit() -> axum::extract::DefaultBodyLimit {
    axum::extract::DefaultBodyLimit::max(crate::MAX_REQUEST)
}
