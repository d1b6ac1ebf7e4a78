//! What the node does for kinds beyond binding ([`metac_resource::Host`]): exports made for one run of a kind
//! (in memory only, not adverted, made out to one node), the refs users saved by name, and the peers the mesh knows.
//! Remote launch uses all three: the caller's files go to the running node as such exports, the node to run on is
//! found among the caller's saved compute refs, and `--on any` reads load figures from peers' adverts.

use std::sync::{Arc, Weak};

use metac_mesh::token::{Caveat, Ref, ResourceId, Token};
use metac_resource::{BoxFuture, Caller, Error, ExportReq, Host, PeerInfo, SavedRef};

use crate::binds::api_to_resource;
use crate::error::ApiError;
use crate::node::{unix_now, Node};
use crate::store::Saved;

/// Most saved refs one user keeps.
pub const MAX_SAVED: usize = 1024;
/// Most exports kinds hold in memory at once (each is an open exporter).
pub const MAX_EPHEMERAL: usize = 4096;

/// The node as kinds see it through [`metac_resource::Ctx::host`].
pub(crate) struct NodeHost(pub(crate) Weak<Node>);

impl NodeHost {
    fn node(&self) -> Result<Arc<Node>, Error> {
        self.0.upgrade().ok_or(Error::Cancelled)
    }
}

impl Host for NodeHost {
    fn export(&self, req: ExportReq) -> BoxFuture<'_, Result<(ResourceId, Ref), Error>> {
        Box::pin(async move { self.node()?.export_ephemeral(req).await.map_err(api_to_resource) })
    }

    fn unexport(&self, id: ResourceId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.node()?.unexport_ephemeral(&id).await;
            Ok(())
        })
    }

    fn saved_refs(&self, owner: &Caller) -> Result<Vec<SavedRef>, Error> {
        let node = self.node()?;
        let saved = node.store.saved().map_err(|e| Error::Store(e.to_string()))?;
        Ok(saved
            .into_iter()
            .filter(|s| s.owner == owner.uid)
            .filter_map(|s| Some(SavedRef { reference: s.reference.parse().ok()?, name: s.name }))
            .collect())
    }

    fn peers(&self) -> BoxFuture<'_, Result<Vec<PeerInfo>, Error>> {
        Box::pin(async move {
            let snap = self.node()?.snapshot().await.map_err(api_to_resource)?;
            Ok(snap
                .nodes
                .into_iter()
                .filter_map(|n| {
                    Some(PeerInfo {
                        key: metac_mesh::NodeKey::from_hex(&n.key)?,
                        overlay: n.overlay,
                        reachable: n.reachable,
                        resources: n.resources,
                        revoked: n.revoked,
                    })
                })
                .collect())
        })
    }
}

/// A saved ref's name: as a container's (letters, digits, `_`, `.`, `-`), so that it is never mistaken for a key
/// prefix with a colon, a path or an option.
pub fn check_saved_name(name: &str) -> Result<(), ApiError> {
    metac_resource::text::check_name("name", name).map_err(ApiError::bad)
}

impl Node {
    /// Exports for one of a kind's users, in memory: opened now, served like any export, never adverted or stored.
    pub(crate) async fn export_ephemeral(&self, req: ExportReq) -> Result<(ResourceId, Ref), ApiError> {
        if self.ephemeral.lock().expect("ephemeral lock").len() >= MAX_EPHEMERAL {
            return Err(ApiError::unavailable(format!(
                "this node holds {MAX_EPHEMERAL} exports for runs already; wait for some to end"
            )));
        }
        let export = self.new_export(
            req.kind,
            &req.source,
            Some(req.name),
            Some(req.rights),
            serde_json::Value::Null,
            &req.owner,
        )?;
        let id = export.id;
        self.ephemeral.lock().expect("ephemeral lock").insert(id, export.clone());
        if let Err(e) = self.exporter(&export).await {
            self.ephemeral.lock().expect("ephemeral lock").remove(&id);
            return Err(e);
        }
        let token = Token::issue(&self.id, id, req.kind, req.rights, None, None)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let caveat = Caveat { rights: None, expires: req.expires, audience: Some(req.audience), path: None };
        let narrowed = token.attenuate(&caveat).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok((id, Ref::new(narrowed)))
    }

    /// Removes an export made by [`Node::export_ephemeral`]: its binds are cut and its exporter closed.
    pub(crate) async fn unexport_ephemeral(&self, id: &ResourceId) {
        if self.ephemeral.lock().expect("ephemeral lock").remove(id).is_some() {
            self.served.cut(|s| s.resource == *id);
            self.close_export(id).await;
        }
    }

    /// Saves `reference` under `name` for `caller`, replacing one of the same name.
    pub fn save_ref(&self, name: &str, reference: &Ref, caller: &Caller) -> Result<(), ApiError> {
        check_saved_name(name)?;
        let all = self.store.saved()?;
        let mine = all.iter().filter(|s| s.owner == caller.uid).count();
        if mine >= MAX_SAVED && !all.iter().any(|s| s.owner == caller.uid && s.name == name) {
            return Err(ApiError::bad(format!("you keep {MAX_SAVED} saved refs already: forget some first")));
        }
        self.store.put_saved(&Saved {
            owner: caller.uid,
            name: name.to_string(),
            reference: reference.to_string(),
            created: unix_now(),
        })?;
        Ok(())
    }

    /// The refs `caller` saved.
    pub fn saved_refs(&self, caller: &Caller) -> Result<Vec<Saved>, ApiError> {
        let mut v: Vec<_> = self.store.saved()?.into_iter().filter(|s| s.owner == caller.uid).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// Forgets a saved ref of `caller`'s.
    pub fn forget_ref(&self, name: &str, caller: &Caller) -> Result<(), ApiError> {
        if self.store.remove_saved(caller.uid, name)? {
            Ok(())
        } else {
            Err(ApiError::not_found(format!("you have no saved ref named {name:?} (see `metac ref ls --saved`)")))
        }
    }
}
