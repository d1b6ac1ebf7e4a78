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
pub(crate) struct OpenExports(pub(crate) Mutex<HashMap<ResourceId, Arc<dyn Exporter>>>);

/// Whether two notes say the same for advert purposes: load figures (`load=0.42 ...`) that moved by less than 0.5
/// are the same, so an advert is not signed and gossiped for noise.
fn same_note(a: &str, b: &str) -> bool {
    let load = |s: &str| s.split_whitespace().find_map(|w| w.strip_prefix("load=")).and_then(|v| v.parse::<f64>().ok());
    match (load(a), load(b)) {
        (Some(x), Some(y)) => (x - y).abs() < 0.5,
        _ => a == b,
    }
}

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

    /// The refs of exports for every member of a private mesh ([`Exporter::public`]): their first token's.
    fn public_refs(&self) -> HashMap<ResourceId, String> {
        if !self.private {
            return HashMap::new();
        }
        let public: Vec<ResourceId> = {
            let open = self.open.0.lock().expect("exports lock");
            open.iter().filter(|(_, e)| e.public()).map(|(id, _)| *id).collect()
        };
        if public.is_empty() {
            return HashMap::new();
        }
        let tokens = self.store.tokens().unwrap_or_default();
        public
            .into_iter()
            .filter_map(|id| {
                let t = tokens.iter().find(|t| t.resource == id && t.parent.is_none())?;
                Some((id, t.reference.clone()))
            })
            .collect()
    }

    /// The notes open exporters would advert now (compute's load figures), by export.
    fn current_notes(&self) -> HashMap<ResourceId, String> {
        let open = self.open.0.lock().expect("exports lock");
        let ephemeral = self.ephemeral.lock().expect("ephemeral lock");
        open.iter().filter(|(id, _)| !ephemeral.contains_key(id)).map(|(id, e)| (*id, e.note())).collect()
    }

    /// Whether a note changed since the last advert.
    pub(crate) fn notes_changed(&self) -> bool {
        let now = self.current_notes();
        let last = self.notes.lock().expect("notes lock");
        now.iter().any(|(id, n)| last.get(id).is_some_and(|l| !same_note(l, n)))
    }

    /// Adverts this node's exports and recent revocations to the mesh.
    pub(crate) async fn publish(&self) {
        let notes = self.current_notes();
        let public = self.public_refs();
        let resources = match self.store.exports() {
            Ok(e) => e
                .into_iter()
                .map(|e| ResourceInfo {
                    id: e.id,
                    kind: e.kind,
                    name: e.name,
                    description: notes.get(&e.id).cloned().unwrap_or_default(),
                    public_ref: public.get(&e.id).cloned(),
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
        *self.notes.lock().expect("notes lock") = notes;
        let _ = self.mesh.set_local(resources, revoked).await;
    }

    /// This node's exports.
    pub fn exports(&self) -> Result<Vec<ExportView>, ApiError> {
        let tokens = self.store.tokens()?;
        let binds = self.served.count_by_resource();
        let ephemeral: Vec<Export> = self.ephemeral.lock().expect("ephemeral lock").values().cloned().collect();
        Ok(self
            .store
            .exports()?
            .into_iter()
            .chain(ephemeral)
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

    /// The record of a new export of `kind` for `owner`, once its kind has checked the request (as `owner`) and the
    /// rights are ones the kind has (all of them when `None`).
    pub(crate) fn new_export(
        &self,
        kind: Kind,
        source: &str,
        name: Option<String>,
        rights: Option<Rights>,
        options: serde_json::Value,
        owner: &Caller,
    ) -> Result<Export, ApiError> {
        let prepared = self.kind(kind)?.prepare(source, options, owner)?;
        let rights = rights.unwrap_or_else(|| kind.rights());
        if rights.is_empty() || !rights.is_subset_of(kind.rights()) {
            return Err(ApiError::bad(format!(
                "rights {rights} are not valid for kind {kind} (valid: {})",
                kind.rights()
            )));
        }
        Ok(Export {
            id: ResourceId::random().map_err(|e| ApiError::internal(e.to_string()))?,
            kind,
            name: name.unwrap_or(prepared.name),
            source: prepared.source,
            created: unix_now(),
            rights,
            options: prepared.options.to_string(),
            owner: owner.clone(),
        })
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
        let export = self.new_export(kind, &source, name, rights, options, owner)?;
        let (id, rights) = (export.id, export.rights);
        // Open first: an export that cannot be opened is not recorded.
        let opened = self.open_export(&export).await?;
        if opened.public() && !self.private {
            self.close_export(&id).await;
            return Err(ApiError::bad(
                "an export for every mesh member needs a private mesh (`metac node --mesh-key FILE`): in an open \
                 mesh its ref would reach strangers",
            ));
        }
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

    /// The export of `id`: recorded, or made for a run ([`crate::host`]).
    pub(crate) fn find_export(&self, id: &ResourceId) -> Result<Option<Export>, ApiError> {
        if let Some(e) = self.ephemeral.lock().expect("ephemeral lock").get(id) {
            return Ok(Some(e.clone()));
        }
        Ok(self.store.exports()?.into_iter().find(|e| e.id == *id))
    }
}

#[cfg(test)]
mod tests {
    use super::same_note;

    /// Load figures re-advert only when they moved by half a point: a node does not sign and gossip noise.
    #[test]
    fn notes_that_moved_little_are_the_same() {
        assert!(same_note("load=0.40 cpus=2", "load=0.80 cpus=2"));
        assert!(!same_note("load=0.40 cpus=2", "load=1.00 cpus=2"));
        assert!(same_note("", ""));
        assert!(!same_note("", "load=0.1"));
        assert!(!same_note("a", "b"));
    }
}
