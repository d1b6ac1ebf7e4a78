//! Where the bytes of a bind travel. Both directions sit behind [`Transport`], so a faster path (a dedicated TLS
//! connection per bind, the overlay) can be added beside the libp2p streams and chosen by measurement without the
//! kinds or the node's bind logic changing. A transport's [`Transport::accept`] yields only streams of peers that the
//! mesh has admitted (a private mesh's key proven), the same check every other inbound message passes.

use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::{BoxFuture, Error, NodeKey};

/// A byte stream to a peer.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A boxed stream, what transports hand out.
pub type BoxStream = Box<dyn Stream>;

/// Inbound streams of one protocol: (the authenticated peer, its stream).
pub type Incoming = Pin<Box<dyn futures::Stream<Item = (NodeKey, BoxStream)> + Send>>;

/// A way to carry resource streams between nodes, authenticated to the node keys at both ends.
pub trait Transport: Send + Sync {
    /// A short name for logs and status (`mesh`, `tls`, ...).
    fn name(&self) -> &'static str;
    /// Opens a stream for `protocol` to `node`. Errors say whether the node is unknown ([`Error::UnknownNode`]) or
    /// known but not reachable now ([`Error::Unreachable`]).
    fn open(&self, node: NodeKey, protocol: &'static str) -> BoxFuture<'_, Result<BoxStream, Error>>;
    /// Inbound streams for `protocol`, from admitted peers only. Called once per protocol.
    fn accept(&self, protocol: &'static str) -> Result<Incoming, Error>;
    /// One line for `metac status`: what carries streams and how many went which way.
    fn summary(&self) -> String {
        format!("{} streams", self.name())
    }
}
