//! A resource kind as a plug-in. A kind implements [`ResourceKind`] in its own crate: its typed export and bind
//! options, how an export is opened ([`Exporter`]), how a bind runs ([`Session`]) and its API routes. The node keeps
//! a list of kinds (as [`Plugin`], the same thing with options in JSON) and hands each a [`Ctx`]; nothing else in
//! the node knows about any one kind. docs/adding-a-kind.md walks through the `file` kind.

use std::path::PathBuf;
use std::sync::Arc;

use metac_mesh::token::Ref;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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
    /// A directory for the kind's local sockets and other runtime files (mode 0700, the node's own).
    pub run_dir: PathBuf,
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
    /// Binds `reference` with its kind's bind options (JSON), as `POST /v1/binds` does: compute mounts fs refs,
    /// `vm start` binds a file ref.
    fn bind(&self, reference: Ref, options: serde_json::Value, persist: bool) -> BoxFuture<'_, Result<Started, Error>>;
    /// Cuts a bind by id.
    fn unbind<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), Error>>;
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
    /// Checks an export request: `source` is what the user named (a path), `options` the kind's options if the
    /// request carried them. Called before anything is recorded.
    fn prepare(
        &self,
        source: &str,
        options: Option<Self::ExportOptions>,
    ) -> Result<Prepared<Self::ExportOptions>, Error>;
    /// Opens an export, at export time and after each node start.
    fn open<'a>(
        &'a self,
        spec: ExportSpec<Self::ExportOptions>,
        ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Arc<dyn Exporter>, Error>>;
    /// Makes the session of a bind of `reference` (not yet running; the node starts it).
    fn bind(&self, reference: &Ref, options: Self::BindOptions, ctx: &Ctx) -> Result<Box<dyn Session>, Error>;
    /// The kind's own API routes, merged into the node's (e.g. `/v1/file/cat`). Their state is applied here.
    fn routes(&self, _ctx: Ctx) -> axum::Router {
        axum::Router::new()
    }
}

/// A kind as the node holds it: [`ResourceKind`] with its options in JSON.
pub trait Plugin: Send + Sync + 'static {
    /// The kind.
    fn kind(&self) -> Kind;
    /// Its wire protocol.
    fn protocol(&self) -> &'static str;
    /// [`ResourceKind::prepare`], options in JSON (`null` for none).
    fn prepare(&self, source: &str, options: serde_json::Value) -> Result<Prepared<serde_json::Value>, Error>;
    /// [`ResourceKind::open`], options in JSON.
    fn open<'a>(
        &'a self,
        spec: ExportSpec<serde_json::Value>,
        ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Arc<dyn Exporter>, Error>>;
    /// [`ResourceKind::bind`], options in JSON (`null` for the defaults).
    fn bind(&self, reference: &Ref, options: serde_json::Value, ctx: &Ctx) -> Result<Box<dyn Session>, Error>;
    /// [`ResourceKind::routes`].
    fn routes(&self, ctx: Ctx) -> axum::Router;
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

    fn prepare(&self, source: &str, options: serde_json::Value) -> Result<Prepared<serde_json::Value>, Error> {
        let options = match options {
            serde_json::Value::Null => None,
            v => Some(from_json(&format!("{} export", ResourceKind::kind(self)), v)?),
        };
        let p = ResourceKind::prepare(self, source, options)?;
        Ok(Prepared { options: to_json(&p.options), source: p.source, name: p.name })
    }

    fn open<'a>(
        &'a self,
        spec: ExportSpec<serde_json::Value>,
        ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Arc<dyn Exporter>, Error>> {
        Box::pin(async move {
            let options = from_json(&format!("{} export", spec.kind), spec.options)?;
            let spec = ExportSpec { id: spec.id, kind: spec.kind, name: spec.name, rights: spec.rights, options };
            ResourceKind::open(self, spec, ctx).await
        })
    }

    fn bind(&self, reference: &Ref, options: serde_json::Value, ctx: &Ctx) -> Result<Box<dyn Session>, Error> {
        // `null` means "no options": the kind's defaults, if its options have them (`{}` decodes to them).
        let options = match options {
            serde_json::Value::Null => serde_json::Value::Object(Default::default()),
            v => v,
        };
        let options = from_json(&format!("{} bind", ResourceKind::kind(self)), options)?;
        ResourceKind::bind(self, reference, options, ctx)
    }

    fn routes(&self, ctx: Ctx) -> axum::Router {
        ResourceKind::routes(self, ctx)
    }
}
