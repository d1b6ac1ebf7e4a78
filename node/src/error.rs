//! The error the local API answers with: an HTTP status and a message the user can act on. Kinds' typed errors
//! ([`metac_resource::Error`]) map onto it by variant, never by their text.

/// An error for the API.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// What went wrong.
    pub message: String,
}

impl ApiError {
    /// 400: the request itself is wrong.
    pub fn bad(m: impl Into<String>) -> ApiError {
        ApiError { status: 400, message: m.into() }
    }
    /// 403: refused by a token check.
    pub fn refused(m: impl Into<String>) -> ApiError {
        ApiError { status: 403, message: m.into() }
    }
    /// 404: no such thing.
    pub fn not_found(m: impl Into<String>) -> ApiError {
        ApiError { status: 404, message: m.into() }
    }
    /// 503: this node cannot do it now (a bound reached).
    pub fn unavailable(m: impl Into<String>) -> ApiError {
        ApiError { status: 503, message: m.into() }
    }
    /// 502: another node could not be reached or failed.
    pub fn remote(m: impl Into<String>) -> ApiError {
        ApiError { status: 502, message: m.into() }
    }
    /// 500: this node failed.
    pub fn internal(m: impl Into<String>) -> ApiError {
        ApiError { status: 500, message: m.into() }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> Self {
        ApiError::internal(e.to_string())
    }
}

impl From<metac_resource::Error> for ApiError {
    fn from(e: metac_resource::Error) -> Self {
        match e {
            // This node is the one answering: its reason is the whole message (a peer would otherwise read
            // "refused by node X: refused by this node: ...").
            metac_resource::Error::Refused { by, reason } if by == "this node" => ApiError::refused(reason),
            e => ApiError { status: e.status(), message: e.to_string() },
        }
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let status =
            axum::http::StatusCode::from_u16(self.status).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}
