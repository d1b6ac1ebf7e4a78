//! metac-resource: what every resource kind shares, and the plug-in interface through which a kind joins the node.
//!
//! A bind is a byte stream to the exporting node, obtained from a [`Transport`] and authenticated to that node's
//! key; its first frame is a [`Hello`] carrying the capability token, answered by [`Reply::Accept`] or
//! [`Reply::Refuse`]; after that the kind's own wire protocol runs (NBD for files, metac-fs/2 for filesystems, ...).
//!
//! Module map: [`kind`] (the [`ResourceKind`] plug-in trait, its [`Ctx`] and the [`Binder`] kinds bind through),
//! [`export`] (the exporting side: one [`Exporter`] per export), [`session`] (the binding side: a [`Session`] the
//! node runs, its [`Link`] and [`State`]), [`caller`] (the local user who asks, and acting as that user),
//! [`transport`], [`clock`], [`store`] (a kind's own durable keys), and [`frame`] (the one framing helper).

pub mod buffers;
pub mod caller;
pub mod clock;
pub mod export;
pub mod frame;
pub mod kind;
pub mod sealed;
pub mod session;
pub mod store;
pub mod text;
pub mod transport;

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

pub use caller::Caller;
pub use clock::{Clock, ManualClock, SystemClock};
pub use export::{Bind, ExportSpec, Exporter};
pub use kind::{Binder, Ctx, ExportReq, Host, PeerInfo, Plugin, Prepared, ResourceKind, SavedRef, Start, Started};
pub use metac_mesh::kind::{Kind, Rights};
pub use metac_mesh::token::{Ref, ResourceId};
pub use metac_mesh::NodeKey;
pub use session::{Link, Opener, Session, State, Status};
pub use store::{KindStore, MemStore};
pub use transport::{BoxStream, Incoming, Stream, Transport};

/// The libp2p protocol every resource bind uses; the kind's protocol is named in the [`Hello`].
pub const RESOURCE_PROTOCOL: &str = "/metac/resource/1";
/// Largest handshake frame.
pub const MAX_HELLO_BYTES: usize = 16 * 1024;

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What failed, across the boundary between the node and its kinds. The variant, not the text, says what kind of
/// failure it is: [`Error::retryable`] and [`Error::status`] read it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A frame could not be read or written (the connection broke, or the peer sent garbage).
    #[error("{0}")]
    Frame(#[from] frame::Error),
    /// The exporter refused the ref or the request, and said why. Final: trying again gives the same answer.
    #[error("refused by {by}: {reason}")]
    Refused {
        /// Who refused ("node 31d734c364ff76dc", "the exporting node").
        by: String,
        /// The exporter's reason.
        reason: String,
    },
    /// No advert of the node has reached this one.
    #[error("{0}")]
    UnknownNode(String),
    /// The node is known but could not be reached now.
    #[error("{0}")]
    Unreachable(String),
    /// The kind's options (export or bind) are wrong.
    #[error("{0}")]
    BadOptions(String),
    /// No such export, bind or thing.
    #[error("{0}")]
    NotFound(String),
    /// The exported thing cannot be opened now (a file that went away).
    #[error("{0}")]
    Unavailable(String),
    /// The kind's own protocol failed (the peer broke a rule, a transfer ended early).
    #[error("{0}")]
    Protocol(String),
    /// Local IO failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The node's store failed.
    #[error("store: {0}")]
    Store(String),
    /// The work was cancelled (unbind, revocation, node stop).
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// Whether trying again later may succeed (the exporter may come back); refusals and bad requests never do.
    pub fn retryable(&self) -> bool {
        !matches!(self, Error::Refused { .. } | Error::BadOptions(_) | Error::NotFound(_) | Error::Cancelled)
    }

    /// The HTTP status the local API answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadOptions(_) => 400,
            Error::Refused { .. } => 403,
            Error::UnknownNode(_) | Error::NotFound(_) => 404,
            Error::Unavailable(_) => 409,
            Error::Frame(_) | Error::Unreachable(_) | Error::Protocol(_) => 502,
            Error::Cancelled => 503,
            Error::Io(_) | Error::Store(_) => 500,
        }
    }
}

/// The local API answers an error as `{"error": "..."}` with the status [`Error::status`] gives.
impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        let status =
            axum::http::StatusCode::from_u16(self.status()).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

/// The first frame of every bind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The encoded capability token.
    pub token: Vec<u8>,
    /// The kind's wire protocol, e.g. "nbd".
    pub protocol: String,
    /// Its version.
    pub version: u16,
}

/// The exporter's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The token is good; the kind's protocol starts now.
    Accept,
    /// The token or the request was refused, and why.
    Refuse { reason: String },
}

/// Client side of the handshake: sends the hello and waits for the answer.
pub async fn hello<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, hello: &Hello) -> Result<(), Error> {
    frame::write(stream, hello).await?;
    match frame::read::<_, Reply>(stream, MAX_HELLO_BYTES).await? {
        Reply::Accept => Ok(()),
        Reply::Refuse { reason } => Err(Error::Refused { by: "the exporting node".into(), reason }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handshake's bytes are pinned: nodes of different versions must keep understanding each other.
    #[test]
    fn handshake_encoding_is_pinned() {
        let h = Hello { token: vec![1, 2], protocol: "nbd".into(), version: 1 };
        assert_eq!(postcard::to_allocvec(&h).unwrap(), [2, 1, 2, 3, b'n', b'b', b'd', 1]);
        assert_eq!(postcard::to_allocvec(&Reply::Accept).unwrap(), [0]);
        assert_eq!(postcard::to_allocvec(&Reply::Refuse { reason: "no".into() }).unwrap(), [1, 2, b'n', b'o']);
    }

    #[test]
    fn errors_say_what_kind_of_failure_they_are() {
        let refused = Error::Refused { by: "node 1234".into(), reason: "revoked".into() };
        assert_eq!(refused.to_string(), "refused by node 1234: revoked");
        assert!(!refused.retryable());
        assert_eq!(refused.status(), 403);
        assert!(Error::Unreachable("gone".into()).retryable());
        assert!(Error::UnknownNode("who".into()).retryable());
        assert!(!Error::BadOptions("x".into()).retryable());
    }
}
