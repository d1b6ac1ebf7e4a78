//! This node's exports: recorded in the store, opened through their kind (one [`Exporter`] per export, opened at
//! export time and again at every start), adverted to the mesh, and closed on unexport, on revocation of their first
//! token, and at stop. An export belongs to the local user who made it: the kind opens it as that user, and only
//! that user or root may unexport it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use metac_api::types::ExportView;
use metac_mesh::advert::ResourceInfo;
use metac_mesh::kind::{Kind, Rights};
use metac_mesh::token::{Ref, ResourceId, Token};
use metac_resource::{Caller, ExportSpec, Exporter};

use crate::error::ApiError;
use crate::node::{unix_now, Node};
use crate::store::Export;

/// The open exporters, by resource.
#[derive(Default)]
pub(crate) struct OpenExports(Mutex<HashMap<ResourceId, Arc<dyn Exporter>>>);

impl OpenExports {
    fn get(&self, id: &ResourceId) -> Option<Arc<dyn Exporter>> {
        self.0.lock().expect("exports lock").get(id).cloned()
    }

    fn insert(&self, id: ResourceId, e: Arc<dyn Exporter>) {
        self.0.lock().expect("exports lock").insert(id, e);
    }

    fn remove(&self, id: &ResourceId) -> Option<Arc<dyn Exporter>> {
        self.0.lock().expect("exports lock").remove(id)
    }

    fn drain(&self) -> Vec<Arc<dyn Exporter>> {
        self.0.lock().expect("exports lock").drain().map(|(_, e)| e).collect()
    }
}

fn spec(e: &Export, options: serde_json::Value) -> ExportSpec<serde_json::Value> {
    ExportSpec { id: e.id, kind: e.kind, name: e.name.clone(), rights: e.rights, owner: e.owner.clone(), options }
}

impl Node {
    /// Opens an export through its kind; records from before kinds had options get them from their source.
    async fn open_export(&self, e: &Export) -> Result<Arc<dyn Exporter>, ApiError> {
        let kind = self.kind(e.kind)?;
        let options: serde_json::Value = serde_json::from_str(&e.options)
            .map_err(|err| ApiError::internal(format!("export {}: damaged options: {err}", e.name)))?;
        let options = match options {
            serde_json::Value::Null => kind.prepare(&e.source, serde_json::Value::Null, &e.owner)?.options,
            v => v,
        };
        let ctx = self.ctx(e.kind);
        let exporter = kind.open(spec(e, options), &ctx).await?;
        self.open.insert(e.id, Arc::clone(&exporter));
        Ok(exporter)
    }

    /// Opens every recorded export (at start). One that cannot be opened now is tried again at its next bind.
    pub(crate) async fn open_exports(&self) {
        let exports = match self.store.exports() {
            Ok(e) => e,
            Err(e) => return tracing::error!("cannot read exports: {e}"),
        };
        for e in exports {
            if let Err(err) = self.open_export(&e).await {
                tracing::warn!(export = %e.name, "cannot open the export now (binds will try again): {err}");
            }
        }
    }

    /// The open exporter of `e`, opening it if it is not (yet).
    pub(crate) async fn exporter(&self, e: &Export) -> Result<Arc<dyn Exporter>, ApiError> {
        match self.open.get(&e.id) {
            Some(x) => Ok(x),
            None => self.open_export(e).await,
        }
    }

    /// Closes the exporter of `id`, if open (its binds must be cut first).
    pub(crate) async fn close_export(&self, id: &ResourceId) {
        if let Some(e) = self.open.remove(id) {
            e.close().await;
        }
    }

    /// Closes every exporter (at stop).
    pub(crate) async fn close_exports(&self) {
        for e in self.open.drain() {
            e.close().await;
        }
    }

    /// Adverts this node's exports and recent revocations to the mesh.
    pub(crate) async fn publish(&self) {
        let resources = match self.store.exports() {
            Ok(e) => e
                .into_iter()
                .map(|e| ResourceInfo {
                    id: e.id,
                    kind: e.kind,
                    name: e.name,
                    description: String::new(),
                    public_ref: None,
                })
                .collect(),
            Err(e) => {
                tracing::error!("cannot read exports: {e}");
                return;
            }
        };
        let revoked = match self.store.recent_revocations(metac_mesh::advert::MAX_REVOKED) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot read revocations: {e}");
                vec![]
            }
        };
        let _ = self.mesh.set_local(resources, revoked).await;
    }

    /// This node's exports.
    pub fn exports(&self) -> Result<Vec<ExportView>, ApiError> {
        let tokens = self.store.tokens()?;
        let binds = self.served.count_by_resource();
        Ok(self
            .store
            .exports()?
            .into_iter()
            .map(|e| ExportView {
                id: e.id.to_string(),
                kind: e.kind.to_string(),
                tokens: tokens.iter().filter(|t| t.resource == e.id).count(),
                binds: binds.get(&e.id).copied().unwrap_or(0),
                name: e.name,
                source: e.source,
                created: e.created,
                owner: e.owner.uid,
            })
            .collect())
    }

    /// Exports a resource of `kind` for `owner` and issues its first token. `source` is what the user named (a
    /// path), `options` the kind's own options (JSON, `null` for none). The kind checks and opens it as `owner`.
    /// Returns the export and the ref.
    pub async fn export(
        &self,
        kind: Kind,
        source: String,
        name: Option<String>,
        rights: Option<Rights>,
        options: serde_json::Value,
        owner: &Caller,
    ) -> Result<(Export, Ref), ApiError> {
        let plugin = self.kind(kind)?;
        let prepared = plugin.prepare(&source, options, owner)?;
        let rights = rights.unwrap_or_else(|| kind.rights());
        if rights.is_empty() || !rights.is_subset_of(kind.rights()) {
            return Err(ApiError::bad(format!(
                "rights {rights} are not valid for kind {kind} (valid: {})",
                kind.rights()
            )));
        }
        let id = ResourceId::random().map_err(|e| ApiError::internal(e.to_string()))?;
        let export = Export {
            id,
            kind,
            name: name.unwrap_or(prepared.name),
            source: prepared.source,
            created: unix_now(),
            rights,
            options: prepared.options.to_string(),
            owner: owner.clone(),
        };
        // Open first: an export that cannot be opened is not recorded.
        self.open_export(&export).await?;
        let token =
            Token::issue(&self.id, id, kind, rights, None, None).map_err(|e| ApiError::internal(e.to_string()))?;
        let r = Ref::new(token);
        let recorded =
            self.store.put_export(&export).map_err(ApiError::from).and_then(|()| self.record_token(&r, None, owner));
        if let Err(e) = recorded {
            self.close_export(&id).await;
            return Err(e);
        }
        self.publish().await;
        Ok((export, r))
    }

    /// Removes an export, if `caller` owns it or is root: its tokens are revoked, its live binds cut and its
    /// exporter closed.
    pub async fn unexport(&self, id: &str, caller: &Caller) -> Result<Export, ApiError> {
        let rid: ResourceId = self.resolve_export(id)?;
        if let Some(e) = self.find_export(&rid)? {
            crate::access::owner_only(caller, e.owner.uid, &format!("export {} ({})", e.name, e.id))?;
        }
        let export = self
            .store
            .remove_export(&rid, unix_now())?
            .ok_or_else(|| ApiError::not_found(format!("no export {id}")))?;
        *self.revoked.lock().expect("revoked lock") =
            self.store.revoked()?.iter().filter_map(|s| s.parse().ok()).collect();
        self.served.cut(|s| s.resource == rid);
        self.close_export(&rid).await;
        self.publish().await;
        Ok(export)
    }

    /// Finds an export by full id, unique id prefix, or name.
    fn resolve_export(&self, q: &str) -> Result<ResourceId, ApiError> {
        if q.is_empty() {
            return Err(ApiError::bad("name an export: its id, a prefix of its id, or its name"));
        }
        let all = self.store.exports()?;
        let hits: Vec<_> = all.iter().filter(|e| e.id.to_string().starts_with(q) || e.name == q).collect();
        match hits.as_slice() {
            [one] => Ok(one.id),
            [] => Err(ApiError::not_found(format!("no export matches {q:?} (see `metac exports`)"))),
            _ => Err(ApiError::bad(format!("{q:?} matches {} exports: give more of the id", hits.len()))),
        }
    }

    /// The recorded export of `id`.
    pub(crate) fn find_export(&self, id: &ResourceId) -> Result<Option<Export>, ApiError> {
        Ok(self.store.exports()?.into_iter().find(|e| e.id == *id))
    }
}
