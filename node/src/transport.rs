//! The transports of this build: libp2p streams over the mesh's connections (noise-authenticated to the node keys).
//! A faster path (a dedicated TLS connection per bind, the overlay) implements the same
//! [`Transport`](metac_resource::Transport) and is listed here.

use std::time::Duration;

use futures::StreamExt;
use metac_mesh::net::{self, Handle};
use metac_mesh::NodeKey;
use metac_resource::{BoxFuture, BoxStream, Error, Incoming, Transport};
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// How long an inbound stream may wait for its sender's admission (the sync that admits a peer runs as its
/// connection comes up, so a stream opened at once can arrive first).
pub(crate) const ADMISSION_WAIT: Duration = Duration::from_secs(5);

/// Resource streams as raw libp2p streams.
pub struct MeshTransport(pub Handle);

impl Transport for MeshTransport {
    fn name(&self) -> &'static str {
        "mesh"
    }

    fn open(&self, node: NodeKey, protocol: &'static str) -> BoxFuture<'_, Result<BoxStream, Error>> {
        Box::pin(async move {
            match self.0.open_stream(node, protocol).await {
                Ok(s) => Ok(Box::new(s.compat()) as BoxStream),
                Err(e @ net::Error::UnknownNode(_)) => Err(Error::UnknownNode(e.to_string())),
                Err(e) => Err(Error::Unreachable(e.to_string())),
            }
        })
    }

    fn accept(&self, protocol: &'static str) -> Result<Incoming, Error> {
        let incoming = self.0.accept(protocol).map_err(|e| Error::Unreachable(e.to_string()))?;
        let mesh = self.0.clone();
        // Only admitted peers' streams get through: in a private mesh, a peer that has not proven the mesh key is
        // served nothing, whatever protocol it opens. Checks run concurrently, a few at a time.
        let admitted = incoming
            .map(move |(peer, stream)| {
                let mesh = mesh.clone();
                async move {
                    if mesh.wait_admitted(peer, ADMISSION_WAIT).await {
                        Some((peer, Box::new(stream.compat()) as BoxStream))
                    } else {
                        tracing::info!(%peer, "stream from a peer that is not admitted to the mesh dropped");
                        None
                    }
                }
            })
            .buffer_unordered(16)
            .filter_map(std::future::ready);
        Ok(Box::pin(admitted))
    }
}
