//! metac-resource: what every resource kind shares. A bind is a byte stream to the exporting node, obtained from a
//! [`Transport`] and authenticated to that node's key; its first frame is a [`Hello`] carrying the capability token,
//! answered by [`Reply::Accept`] or [`Reply::Refuse`]; after that the kind's own wire protocol runs (NBD for files,
//! metac-fs/1 for filesystems, ...). The exporting node finds the kind's [`Handler`] in its registry.

pub mod frame;

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

pub use metac_mesh::kind::{Kind, Rights};
pub use metac_mesh::NodeKey;

/// The libp2p protocol every resource bind uses; the kind's protocol is named in the [`Hello`].
pub const RESOURCE_PROTOCOL: &str = "/metac/resource/1";
/// Largest handshake frame.
pub const MAX_HELLO_BYTES: usize = 16 * 1024;

/// A byte stream to a peer.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A boxed stream, what transports hand out.
pub type BoxStream = Box<dyn Stream>;
/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Errors of the shared resource layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Frame(#[from] frame::Error),
    #[error("refused by the exporting node: {0}")]
    Refused(String),
    #[error("cannot reach the exporting node: {0}")]
    Transport(String),
}

/// Where bytes between nodes travel: one trait, so the fastest path (libp2p stream, dedicated TLS connection,
/// overlay) can be chosen by measurement without touching the resource kinds.
pub trait Transport: Send + Sync {
    /// Opens a stream for `protocol` to `node`, authenticated to that node's key.
    fn open(&self, node: NodeKey, protocol: &'static str) -> BoxFuture<'_, Result<BoxStream, Error>>;
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
        Reply::Refuse { reason } => Err(Error::Refused(reason)),
    }
}

/// What a verified token lets the binder do, handed to the kind's handler.
#[derive(Debug, Clone)]
pub struct Bind {
    /// The node that binds.
    pub peer: NodeKey,
    /// The effective rights after every narrowing.
    pub rights: Rights,
    /// Sub-path narrowing (fs).
    pub path: Option<String>,
}

/// What an export of any kind records: enough for the kind's handler to serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSpec {
    /// Kind of resource.
    pub kind: Kind,
    /// What is exported, in the kind's own terms (a path for files).
    pub source: String,
}

/// One resource kind on the exporting side. The node's registry holds one handler per kind.
pub trait Handler: Send + Sync {
    /// The kind this handler serves.
    fn kind(&self) -> Kind;
    /// The wire protocol named in [`Hello::protocol`].
    fn protocol(&self) -> &'static str;
    /// Checks an export request before it is recorded (the path exists, is the right type, ...).
    fn check(&self, spec: &ExportSpec) -> Result<(), String>;
    /// Serves one authorized bind until the peer is done or `cancel` fires (revocation, unexport, shutdown).
    fn serve(
        &self,
        spec: ExportSpec,
        bind: Bind,
        stream: BoxStream,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<(), String>>;
}
