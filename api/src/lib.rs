//! metac-api: the node's local API as Rust. [`types`] are the requests and responses, shared by the node that
//! serves them and every client; [`Client`] calls them over the node's Unix socket (JSON calls, streamed bodies,
//! upgraded connections); [`blocking::Client`] does the same for synchronous callers (the simulator, the
//! benchmarks). With the `server` feature, [`server`] holds the pieces a kind needs to serve its own routes with
//! the same error bodies and limits as the node's. [`group`] looks Unix groups up: the node's API group, and the
//! group a client refused at the socket would need ([`Error::Denied`]).

pub mod blocking;
pub mod client;
pub mod group;
pub mod progress;
#[cfg(feature = "server")]
pub mod server;
pub mod types;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{BodyStream, Client, Upgraded};

/// Largest JSON request body the node accepts; the client refuses to send more.
pub const MAX_REQUEST: usize = 64 * 1024;

/// An error a boxed source can carry: hyper's and http-body's errors arrive boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What can go wrong calling the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing listens on the socket. The io error is part of the message rather than its source, so that the
    /// message reads the same however it is printed.
    #[error(
        "metac node is not running (cannot connect to {}: {error}); start it with `metac node`, or point \
         --socket / METAC_SOCKET at its socket",
        socket.display()
    )]
    NotRunning {
        /// The socket tried.
        socket: PathBuf,
        /// Why connecting failed.
        error: std::io::Error,
    },
    /// The socket is there but the kernel did not let this user connect: only root and the members of its
    /// group may use a shared node.
    #[error("permission denied on {}: {}", socket.display(), who_may(group.as_deref()))]
    Denied {
        /// The socket tried.
        socket: PathBuf,
        /// The group whose members may use it (by name if it has one); `None` when only its owner may.
        group: Option<String>,
    },
    /// The node answered with an error: its message, as is.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The node's `error` field.
        message: String,
    },
    /// The HTTP exchange itself failed (`what`: handshake, request, answer, upgrade).
    #[error("API {what}")]
    Http {
        /// The step that failed.
        what: &'static str,
        /// Why.
        source: BoxError,
    },
    /// The answer is not the JSON expected.
    #[error("the node answered {status} with something that is not the expected JSON")]
    Decode {
        /// HTTP status of the answer.
        status: u16,
        /// Why it does not decode.
        source: serde_json::Error,
    },
    /// The request body cannot be encoded as JSON.
    #[error("cannot encode the request body")]
    Encode(#[source] serde_json::Error),
    /// The request body is over [`MAX_REQUEST`].
    #[error("the request body for {path} is {size} bytes, over the API's limit of {MAX_REQUEST}")]
    TooLarge {
        /// The endpoint.
        path: String,
        /// The encoded body's size.
        size: usize,
    },
    /// The path does not make a valid request URI.
    #[error("bad API path {path:?}")]
    BadPath {
        /// The path given.
        path: String,
        /// Why it is refused.
        source: hyper::http::Error,
    },
    /// A streamed body ended with an error after `bytes` bytes.
    #[error("transfer interrupted after {bytes} bytes")]
    Interrupted {
        /// Bytes received before the error.
        bytes: u64,
        /// The error that ended the body.
        source: hyper::Error,
    },
    /// The node ended a streamed body with the reason the transfer behind it failed (the `metac-error` trailer).
    #[error("transfer failed after {bytes} bytes: {message}")]
    Failed {
        /// Bytes received before the failure.
        bytes: u64,
        /// The node's reason.
        message: String,
    },
    /// Writing a streamed body out failed.
    #[error("cannot write the transfer out after {bytes} bytes")]
    Write {
        /// Bytes received when the write failed.
        bytes: u64,
        /// The write's error.
        source: std::io::Error,
    },
    /// The node answered a success but did not upgrade the connection.
    #[error("the node answered {status} instead of upgrading the connection")]
    NotUpgraded {
        /// HTTP status of the answer.
        status: u16,
    },
    /// The call took longer than the client's timeout.
    #[error("the node did not answer {path} within {after:?}")]
    Timeout {
        /// The endpoint.
        path: String,
        /// The timeout.
        after: Duration,
    },
    /// The blocking client could not start its runtime.
    #[error("cannot start the API client's runtime")]
    Runtime(#[source] std::io::Error),
}

/// Who may use a node whose socket refused this user, and what to do about it.
fn who_may(group: Option<&str>) -> String {
    match group {
        Some(g) => format!(
            "only root and members of group {g} may use this node (an administrator adds a user with \
             `usermod -aG {g} USER`; the user then logs in again)"
        ),
        None => "only root may use this node; it has no API group (an administrator creates one with \
                 `groupadd metac` and restarts the node, or starts it with --api-group GROUP)"
            .into(),
    }
}

impl Error {
    /// The HTTP status of an error answer of the node, if that is what this is.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}
