//! The exporting side of a kind. An export is opened once ([`crate::ResourceKind::open`]) when it is made and again
//! after every node start, serves any number of binds, and is closed on unexport, on revocation of its root token,
//! and when the node stops. What must live as long as the export (an open file, a TAP device, a claimed USB device,
//! an X11 capture several viewers share, a container's cgroup) lives in the [`Exporter`], not in one bind.

use std::sync::Arc;

use metac_mesh::token::ResourceId;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{BoxFuture, BoxStream, Caller, Error, Kind, NodeKey, Rights};

/// What an export is: its id, kind, name and the kind's typed options (`O`; JSON in the node's store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSpec<O> {
    /// The resource id, as in tokens and adverts.
    pub id: ResourceId,
    /// The kind.
    pub kind: Kind,
    /// The name shown in the mesh.
    pub name: String,
    /// The most any ref of this export grants (its root token's rights): a read-only export opens read-only.
    pub rights: Rights,
    /// The local user who made the export: the kind opens what it exports as this user ([`Caller::act`]), at
    /// export time and after every node start.
    pub owner: Caller,
    /// The kind's own options.
    pub options: O,
}

/// One verified bind, as the exporter serves it.
#[derive(Debug, Clone)]
pub struct Bind {
    /// The node that binds (authenticated by the transport).
    pub peer: NodeKey,
    /// The effective rights after every narrowing of the token.
    pub rights: Rights,
    /// Sub-path narrowing (fs).
    pub path: Option<String>,
    /// Unix second at which the token expires; the node cuts the bind then.
    pub expires: Option<u64>,
}

/// An open export of some kind.
pub trait Exporter: Send + Sync + 'static {
    /// Serves one authorized bind until the peer is done or `cancel` fires (unbind, revocation, expiry, unexport,
    /// node stop). `stream` is past the handshake: the kind's own protocol starts with its first byte.
    fn serve(
        self: Arc<Self>,
        bind: Bind,
        stream: BoxStream,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<(), Error>>;

    /// Whether the export's ref goes in its advert, for every member of a private mesh to use (`metac compute
    /// export --mesh`). The node refuses such an export outside a private mesh.
    fn public(&self) -> bool {
        false
    }

    /// A short note the node adds to the export's advert (the compute kind's load figures); empty for none.
    fn note(&self) -> String {
        String::new()
    }

    /// Releases what the export holds. Binds are cancelled before this is called.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
