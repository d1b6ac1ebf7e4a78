//! A resource kind as a plug-in. A kind implements [`ResourceKind`] in its own crate: its typed export and bind
//! options, how an export is opened ([`Exporter`]), how a bind runs ([`Session`]) and its API routes. The node keeps
//! a list of kinds (as [`Plugin`], the same thing with options in JSON) and hands each a [`Ctx`]; nothing else in
//! the node knows about any one kind. docs/adding-a-kind.md walks through the `file` kind.
//!
//! Every request names its [`Caller`], the local user who asked: `prepare` and `bind` take it, an export's
//! [`ExportSpec::owner`] is the user who made it, a session started through [`Binder`] names its owner, and a
//! kind's own routes take a `Caller` argument. What touches the local system is done as that user
//! ([`Caller::act`]).

use std::path::PathBuf;
use std::sync::Arc;

use metac_mesh::token::Ref;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::caller::Caller;
use crate::clock::Clock;
use crate::export::{ExportSpec, Exporter};
use crate::session::{Opener, Session, Status};
use crate::store::KindStore;
use crate::transport::Transport;
use crate::{BoxFuture, Error, Kind, NodeKey};

/// What the node lends a kind.
#[derive(Clone)]
pub struct Ctx {
    /// This node's key.
    pub me: NodeKey,
    /// Streams to other nodes (kinds usually go through [`Ctx::binder`], which does the handshake).
    pub transport: Arc<dyn Transport>,
    /// The node's clock.
    pub clock: Arc<dyn Clock>,
    /// The kind's own durable keys and values.
    pub store: Arc<dyn KindStore>,
    /// Binding refs (of this kind or others) as sessions the node owns.
    pub binder: Arc<dyn Binder>,
    /// Exporting for a user, their saved refs, and what the node knows of its peers (compute's remote launch).
    pub host: Arc<dyn Host>,
    /// A directory for the kind's local sockets and other runtime files (the node's own; others may pass through
    /// it, not list it). A caller's own files go in [`Ctx::run_dir_of`].
    pub run_dir: PathBuf,
    /// A directory of the kind's own for durable files the store is not made for (a container's logs), kept
    /// across restarts; the kind creates it when it first needs it.
    pub state_dir: PathBuf,
}

impl Ctx {
    /// Where `caller`'s local sockets go by default: the run directory for root and the node's user, a directory
    /// of the caller's own in it for anyone else ([`Caller::run_dir`]).
    pub fn run_dir_of(&self, caller: &Caller) -> Result<PathBuf, Error> {
        caller.run_dir(&self.run_dir).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot make a run directory for {caller} in {}: {e}", self.run_dir.display()),
            ))
        })
    }
}

/// A session to start: what [`Binder::start`] takes.
pub struct Start {
    /// The kind of the ref.
    pub kind: Kind,
    /// The ref to bind.
    pub reference: Ref,
    /// The session that does the work.
    pub session: Box<dyn Session>,
    /// The bind options to store when the bind is to persist across node restarts; `None` for a bind that lives
    /// as long as this node process (or less).
    pub persist: Option<serde_json::Value>,
    /// Who it is for: only that user (or root) may unbind it, and it comes back as theirs after a restart.
    pub owner: Caller,
}

/// A started bind.
#[derive(Debug, Clone)]
pub struct Started {
    /// Its id (`metac binds`, `metac unbind ID`).
    pub id: String,
    /// Its live state and figures.
    pub status: Arc<Status>,
}

/// The node's side of binding, as kinds use it.
pub trait Binder: Opener {
    /// Registers and runs a session the node owns (listed, cut by unbind, revocation, expiry and stop).
    fn start(&self, start: Start) -> Result<Started, Error>;
    /// Binds `reference` with its kind's bind options (JSON) for `owner`, as `POST /v1/binds` does: compute mounts
    /// fs refs, `vm start` binds a file ref.
    fn bind(
        &self,
        reference: Ref,
        options: serde_json::Value,
        persist: bool,
        owner: Caller,
    ) -> BoxFuture<'_, Result<Started, Error>>;
    /// Cuts a bind by id.
    fn unbind<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), Error>>;
}

/// An export a kind makes for one of its users ([`Host::export`]): it lives in the node's memory only, is not
/// adverted, and goes at [`Host::unexport`] or when the node stops (remote launch exports the caller's files for
/// the run's life this way).
#[derive(Debug, Clone)]
pub struct ExportReq {
    /// The kind of the export.
    pub kind: Kind,
    /// What to export, as the user would name it (`local:/home/ann/proj`).
    pub source: String,
    /// Its name in `metac exports`.
    pub name: String,
    /// The most its ref grants.
    pub rights: crate::Rights,
    /// The user it is exported as (opened and served as that user).
    pub owner: Caller,
    /// The only node that may use the ref.
    pub audience: NodeKey,
    /// Unix second at which the ref stops working, if ever.
    pub expires: Option<u64>,
}

/// A node as the mesh knows it (from its advert).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Its key.
    pub key: NodeKey,
    /// Its overlay address.
    pub overlay: std::net::Ipv6Addr,
    /// Whether a connection to it is up.
    pub reachable: bool,
    /// Its adverted resources.
    pub resources: Vec<metac_mesh::advert::ResourceInfo>,
    /// The token ids it says it revoked (newest first).
    pub revoked: Vec<metac_mesh::token::TokenId>,
}

/// A ref a user keeps under a name (`metac ref save NAME REF`).
#[derive(Debug, Clone)]
pub struct SavedRef {
    /// The name.
    pub name: String,
    /// The ref.
    pub reference: Ref,
}

/// What the node does for a kind beyond binding.
pub trait Host: Send + Sync {
    /// Exports something for a user, made out to one node; answers the export's id and its ref.
    fn export(&self, req: ExportReq) -> BoxFuture<'_, Result<(crate::ResourceId, Ref), Error>>;
    /// Removes an export made with [`Host::export`]: the binds it serves are cut.
    fn unexport(&self, id: crate::ResourceId) -> BoxFuture<'_, Result<(), Error>>;
    /// The refs `owner` saved, by name.
    fn saved_refs(&self, owner: &Caller) -> Result<Vec<SavedRef>, Error>;
    /// Every other node known.
    fn peers(&self) -> BoxFuture<'_, Result<Vec<PeerInfo>, Error>>;
}

/// What an export request becomes once the kind has checked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared<O> {
    /// The kind's typed options, as they will be stored.
    pub options: O,
    /// What is exported, in words for `metac exports` (a path).
    pub source: String,
    /// The name the export gets when the user gives none.
    pub name: String,
}

/// One resource kind, with typed options. Implement this; the node uses it through [`Plugin`].
pub trait ResourceKind: Send + Sync + 'static {
    /// What `metac <kind> export` records about an export.
    type ExportOptions: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What `metac <kind> bind` asks of a bind.
    type BindOptions: Serialize + DeserializeOwned + Send + 'static;

    /// The kind.
    fn kind(&self) -> Kind;
    /// Its wire protocol, named in every bind's hello (`nbd` for files).
    fn protocol(&self) -> &'static str;
    /// Checks an export request of `caller`: `source` is what the user named (a path), `options` the kind's
    /// options if the request carried them. Called before anything is recorded; what it looks at on the local
    /// system, it looks at as the caller ([`Caller::act`]).
    fn prepare(
        &self,
        source: &str,
        options: Option<Self::ExportOptions>,
        caller: &Caller,
    ) -> Result<Prepared<Self::ExportOptions>, Error>;
    /// Opens an export, at export time and after each node start, as its owner ([`ExportSpec::owner`]).
    fn open<'a>(
        &'a self,
        spec: ExportSpec<Self::ExportOptions>,
        ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Arc<dyn Exporter>, Error>>;
    /// Makes the session of a bind of `reference` for `caller` (not yet running; the node starts it). What the
    /// session makes on the local system (a socket, a mount) it makes as the caller.
    fn bind(
        &self,
        reference: &Ref,
        options: Self::BindOptions,
        caller: &Caller,
        ctx: &Ctx,
    ) -> Result<Box<dyn Session>, Error>;
    /// The kind's own API routes, merged into the node's (e.g. `/v1/file/cat`). Their state is applied here; a
    /// handler that acts for its caller takes a [`Caller`] argument.
    fn routes(&self, _ctx: Ctx) -> axum::Router {
        axum::Router::new()
    }
    /// Called once when the node starts, before exports are opened and binds restored: the kind cleans up what a
    /// node killed without stopping left behind (the fs kind: its dead mounts).
    fn recover(&self, _ctx: &Ctx) {}
    /// Called when the node stops, after its binds are cut and exports closed: the kind lets go of what it holds
    /// of the node (its tasks, its `Ctx`), so that the node's store can be opened again by the next start in the
    /// same process. What the kind runs outside the node (containers) keeps running.
    fn stop(&self) {}
}

/// A kind as the node holds it: [`ResourceKind`] with its options in JSON.
pub trait Plugin: Send + Sync + 'static {
    /// The kind.
    fn kind(&self) -> Kind;
    /// Its wire protocol.
    fn protocol(&self) -> &'static str;
    /// [`ResourceKind::prepare`], options in JSON (`null` for none).
    fn prepare(
        &self,
        source: &str,
        options: serde_json::Value,
        caller: &Caller,
    ) -> Result<Prepared<serde_json::Value>, Error>;
    /// [`ResourceKind::open`], options in JSON.
    fn open<'a>(
        &'a self,
        spec: ExportSpec<serde_json::Value>,
        ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Arc<dyn Exporter>, Error>>;
    /// [`ResourceKind::bind`], options in JSON (`null` for the defaults).
    fn bind(
        &self,
        reference: &Ref,
        options: serde_json::Value,
        caller: &Caller,
        ctx: &Ctx,
    ) -> Result<Box<dyn Session>, Error>;
    /// [`ResourceKind::routes`].
    fn routes(&self, ctx: Ctx) -> axum::Router;
    /// [`ResourceKind::recover`].
    fn recover(&self, ctx: &Ctx);
    /// [`ResourceKind::stop`].
    fn stop(&self);
}

fn from_json<T: DeserializeOwned>(what: &str, v: serde_json::Value) -> Result<T, Error> {
    serde_json::from_value(v).map_err(|e| Error::BadOptions(format!("bad {what} options: {e}")))
}

fn to_json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("kind options always serialize to JSON")
}

impl<K: ResourceKind> Plugin for K {
    fn kind(&self) -> Kind {
        ResourceKind::kind(self)
    }

    fn protocol(&self) -> &'static str {
        ResourceKind::protocol(self)
    }

    fn prepare(
        &self,
        source: &str,
        options: serde_json::Value,
        caller: &Caller,
    ) -> Result<Prepared<serde_json::Value>, Error> {
        let options = match options {
            serde_json::Value::Null => None,
            v => Some(from_json(&format!("{} export", ResourceKind::kind(self)), v)?),
        };
        let p = ResourceKind::prepare(self, source, options, caller)?;
        Ok(Prepared { options: to_json(&p.options), source: p.source, name: p.name })
    }

    fn open<'a>(
        &'a self,
        spec: ExportSpec<serde_json::Value>,
        ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Arc<dyn Exporter>, Error>> {
        Box::pin(async move {
            let options = from_json(&format!("{} export", spec.kind), spec.options)?;
            let spec = ExportSpec {
                id: spec.id,
                kind: spec.kind,
                name: spec.name,
                rights: spec.rights,
                owner: spec.owner,
                options,
            };
            ResourceKind::open(self, spec, ctx).await
        })
    }

    fn bind(
        &self,
        reference: &Ref,
        options: serde_json::Value,
        caller: &Caller,
        ctx: &Ctx,
    ) -> Result<Box<dyn Session>, Error> {
        // `null` means "no options": the kind's defaults, if its options have them (`{}` decodes to them).
        let options = match options {
            serde_json::Value::Null => serde_json::Value::Object(Default::default()),
            v => v,
        };
        let options = from_json(&format!("{} bind", ResourceKind::kind(self)), options)?;
        ResourceKind::bind(self, reference, options, caller, ctx)
    }

    fn routes(&self, ctx: Ctx) -> axum::Router {
        ResourceKind::routes(self, ctx)
    }

    fn recover(&self, ctx: &Ctx) {
        ResourceKind::recover(self, ctx)
    }

    fn stop(&self) {
        ResourceKind::stop(self)
    }
}
