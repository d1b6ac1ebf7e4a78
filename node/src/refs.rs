//! Refs as this node handles them: the tokens it issued or delegated, narrowing, and revocation (here when this
//! node issued the ref, otherwise by asking its exporter over the mesh RPC). Revoking cuts the live binds the
//! token served at once, and revoking an export's first token closes the export.
//!
//! Refs are capabilities: each recorded token belongs to the local user it was issued or delegated for, and its
//! ref is shown to that user and root only. A ref this node issued is revoked here only by the owner of its export
//! or root.

use metac_api::types::{RefView, TokenView};
use metac_mesh::kind::{Kind, Rights};
use metac_mesh::net;
use metac_mesh::token::{Caveat, Ref, Token, TokenId};
use metac_mesh::NodeKey;
use metac_resource::Caller;

use crate::access::{may_see, owner_only};
use crate::error::ApiError;
use crate::node::{short, unix_now, Node};
use crate::rpc;
use crate::store::TokenRecord;

/// A ref decoded without verifying it (only its exporter can), with what is known of its revocation.
pub fn ref_view(r: &Ref, state: impl Into<String>) -> RefView {
    let t = &r.token;
    let g = t.effective();
    RefView {
        issuer: t.issuer().to_hex(),
        overlay: r.addr.to_string(),
        resource: g.resource.to_string(),
        kind: g.kind.to_string(),
        rights: g.rights.to_string(),
        expires: g.expires,
        audience: g.audience.map(|a| a.to_hex()),
        path: g.path,
        id: t.id().to_string(),
        chain: t.ids().iter().map(|i| i.to_string()).collect(),
        sealed: t.is_sealed(),
        state: state.into(),
    }
}

/// How many revocations one peer may ask for per [`REVOCATION_WINDOW`] seconds.
pub const REVOCATIONS_PER_WINDOW: u32 = 20;
/// The window of [`REVOCATIONS_PER_WINDOW`], in seconds.
pub const REVOCATION_WINDOW: u64 = 60;
/// Peers whose revocation counts are kept at once; the oldest windows are forgotten first.
const TRACKED_PEERS: usize = 1024;

/// Revocations asked for by each peer in its current window: a peer cannot make the exporter write its store and
/// re-sign its advert without bound.
#[derive(Default)]
pub(crate) struct RevocationLimit(std::sync::Mutex<std::collections::HashMap<NodeKey, (u64, u32)>>);

impl RevocationLimit {
    /// Counts one request of `peer` at `now` (unix seconds), or refuses it.
    pub(crate) fn admit(&self, peer: NodeKey, now: u64) -> Result<(), String> {
        let mut m = self.0.lock().expect("revocation limit lock");
        if m.len() >= TRACKED_PEERS && !m.contains_key(&peer) {
            m.retain(|_, (start, _)| now.saturating_sub(*start) < REVOCATION_WINDOW);
            if m.len() >= TRACKED_PEERS {
                return Err("too many peers are revoking at once; try again in a minute".into());
            }
        }
        let (start, count) = m.entry(peer).or_insert((now, 0));
        if now.saturating_sub(*start) >= REVOCATION_WINDOW {
            (*start, *count) = (now, 0);
        }
        if *count >= REVOCATIONS_PER_WINDOW {
            return Err(format!(
                "more than {REVOCATIONS_PER_WINDOW} revocations asked within {REVOCATION_WINDOW} s; try again later"
            ));
        }
        *count += 1;
        Ok(())
    }
}

/// The rights a narrowed copy keeps: `read_only` keeps read alone (not admin: a "read-only" holder must not manage
/// the export); `rights` (`read,admin`) keeps those of the current ones. `None`: keep the current rights.
pub fn narrowed(current: Rights, read_only: bool, rights: Option<&str>) -> Result<Option<Rights>, ApiError> {
    let mut keep = match rights {
        Some(s) => {
            let asked: Rights = s.parse().map_err(|e: metac_mesh::kind::Error| ApiError::bad(e.to_string()))?;
            if !asked.is_subset_of(current) {
                return Err(ApiError::bad(format!("this ref grants {current}: a copy cannot have {asked}")));
            }
            Some(asked)
        }
        None => None,
    };
    if read_only {
        keep = Some(keep.unwrap_or(current).intersect(Rights::READ));
    }
    match keep {
        Some(k) if k.is_empty() => {
            Err(ApiError::bad(format!("a copy with these rights would grant nothing (the ref grants {current})")))
        }
        k => Ok(k),
    }
}

/// The sub-tree a narrowed copy of a ref of `kind` is limited to, from what the user typed (`sub/dir` or
/// `/sub/dir`, relative to the export's root). Only trees have sub-trees: a path on a ref of another kind is refused
/// rather than carried where nothing would enforce it.
pub fn sub_path(kind: Kind, path: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(p) = path else { return Ok(None) };
    if kind != Kind::Fs {
        return Err(ApiError::bad(format!("--path narrows fs refs to a sub-tree; this is a {kind} ref")));
    }
    if p.is_empty() {
        return Err(ApiError::bad("--path is empty: give a directory of the export, such as sub/dir"));
    }
    let p = if p.starts_with('/') { p.to_string() } else { format!("/{p}") };
    if p.contains('\0') || p.split('/').any(|c| c == "..") {
        return Err(ApiError::bad(format!("--path {p:?} must stay beneath the export's root (no '..', no NUL)")));
    }
    Ok(Some(p))
}

/// Parses a ref given by a user.
pub fn parse_ref(s: &str) -> Result<Ref, ApiError> {
    s.trim().parse::<Ref>().map_err(|e| ApiError::bad(format!("bad ref: {e}")))
}

impl Node {
    pub(crate) fn record_token(&self, r: &Ref, parent: Option<TokenId>, owner: &Caller) -> Result<(), ApiError> {
        let t = &r.token;
        self.store.put_token(&TokenRecord {
            id: t.id(),
            resource: t.resource(),
            reference: r.to_string(),
            created: unix_now(),
            parent,
            owner: owner.uid,
        })?;
        Ok(())
    }

    /// Tokens recorded here, as `viewer` may see them: every one listed, the ref itself only when it is the
    /// viewer's (or the viewer is root).
    pub fn refs(&self, viewer: &Caller) -> Result<Vec<TokenView>, ApiError> {
        let revoked = self.revoked.lock().expect("revoked lock").clone();
        let mut out = vec![];
        for t in self.store.tokens()? {
            let Ok(r) = t.reference.parse::<Ref>() else { continue };
            let g = r.token.effective();
            out.push(TokenView {
                id: t.id.to_string(),
                parent: t.parent.map(|p| p.to_string()),
                resource: t.resource.to_string(),
                kind: g.kind.to_string(),
                rights: g.rights.to_string(),
                expires: g.expires,
                audience: g.audience.map(|a| a.to_hex()),
                revoked: r.token.ids().iter().any(|i| revoked.contains(i)),
                reference: if may_see(viewer, t.owner) { t.reference } else { String::new() },
                owner: t.owner,
            });
        }
        out.sort_by_key(|t| t.id.clone());
        Ok(out)
    }

    /// Resolves a node given as a hex key, a peer id or an overlay address.
    pub async fn resolve_node(&self, q: &str) -> Result<NodeKey, ApiError> {
        if let Some(k) = NodeKey::from_hex(q) {
            return Ok(k);
        }
        if let Ok(p) = q.parse::<libp2p::PeerId>() {
            return net::node_key(&p)
                .ok_or_else(|| ApiError::bad(format!("peer id {q} does not carry an ed25519 key")));
        }
        if let Ok(a) = q.trim_matches(|c| c == '[' || c == ']').parse::<std::net::Ipv6Addr>() {
            if a == self.me().overlay_addr() {
                return Ok(self.me());
            }
            let snap = self.snapshot().await?;
            return snap.nodes.iter().find(|n| n.overlay == a).and_then(|n| NodeKey::from_hex(&n.key)).ok_or_else(
                || ApiError::not_found(format!("no known node has overlay address {a} (see `metac peers`)")),
            );
        }
        Err(ApiError::bad(format!("{q:?} is not a node key (64 hex digits), a peer id or an overlay address")))
    }

    /// Narrows a ref offline-style (any node can, with the secret the token carries) and records the result as
    /// `owner`'s.
    pub fn delegate(&self, r: &Ref, caveat: &Caveat, seal: bool, owner: &Caller) -> Result<Ref, ApiError> {
        let t = r.token.attenuate(caveat).map_err(|e| ApiError::bad(format!("cannot delegate: {e}")))?;
        let t = if seal { t.seal() } else { t };
        let child = Ref::new(t);
        self.record_token(&child, Some(r.token.id()), owner)?;
        Ok(child)
    }

    /// Revokes a ref for `caller`: here when this node issued it (if `caller` owns its export, or is root),
    /// otherwise by asking its exporter (which decides by the ref itself).
    pub async fn revoke(&self, r: &Ref, caller: &Caller) -> Result<String, ApiError> {
        let issuer = r.token.issuer();
        if issuer == self.me() {
            let resource = r.token.resource();
            let owner = self.find_export(&resource)?.map_or(0, |e| e.owner.uid);
            owner_only(caller, owner, &format!("export {resource}"))?;
            return self.revoke_local(&r.token, None).await.map_err(ApiError::refused);
        }
        let body = rpc::encode(&rpc::Request::Revoke { token: r.token.encode() });
        let answer = self.mesh.request(issuer, body).await.map_err(|e| ApiError::remote(e.to_string()))?;
        match rpc::decode::<rpc::Response>(&answer).map_err(ApiError::remote)? {
            rpc::Response::Ok(m) => Ok(m),
            rpc::Response::Err(m) => Err(ApiError::refused(format!("the exporting node refused: {m}"))),
        }
    }

    /// Revokes a token this node issued. `from` is the peer asking over the mesh, `None` for this node's own user
    /// (the exporter may revoke anything it issued).
    async fn revoke_local(&self, token: &Token, from: Option<NodeKey>) -> Result<String, String> {
        let me = self.me();
        if let Some(peer) = from {
            self.revocations.admit(peer, self.clock.now())?;
        }
        // Only authentic tokens may revoke: check the chain (any expiry, any audience).
        let audience = token.effective().audience;
        token.verify(&me, 0, &audience.unwrap_or(me), |_| false).map_err(|e| e.to_string())?;
        // A ref made out to one node is that node's to revoke (or the exporter's), not anyone's who saw it.
        if let (Some(peer), Some(a)) = (from, audience) {
            if peer != a {
                return Err(format!(
                    "this ref is made out to node {}; only that node or the exporter may revoke it",
                    short(&a)
                ));
            }
        }
        let id = token.id();
        if self.revoked.lock().expect("revoked lock").contains(&id) {
            // Nothing to write and nothing new to advert: a repeated revocation costs nothing.
            return Ok(format!("token {id} was already revoked"));
        }
        self.store.revoke(&id, unix_now()).map_err(|e| e.to_string())?;
        self.revoked.lock().expect("revoked lock").insert(id);
        let cut = self.served.cut(|s| s.ids.contains(&id));
        // The export's first token revoked: no ref of it can bind again, so what the export holds is let go.
        if token.depth() == 1 {
            self.close_export(&token.resource()).await;
        }
        tracing::info!(%id, cut, "token revoked");
        // Tell the mesh too, for everyone's information (this node enforces it either way).
        self.publish().await;
        Ok(format!("revoked token {id}{}", if cut > 0 { format!("; cut {cut} live bind(s)") } else { String::new() }))
    }

    pub(crate) async fn on_request(&self, from: NodeKey, body: &[u8]) -> rpc::Response {
        match rpc::decode::<rpc::Request>(body) {
            Ok(rpc::Request::Revoke { token }) => match Token::decode(&token) {
                Ok(t) => match self.revoke_local(&t, Some(from)).await {
                    Ok(m) => {
                        tracing::info!(%from, "revocation requested by peer");
                        rpc::Response::Ok(m)
                    }
                    Err(e) => rpc::Response::Err(e),
                },
                Err(e) => rpc::Response::Err(format!("bad token: {e}")),
            },
            Err(e) => rpc::Response::Err(e),
        }
    }

    /// What this node knows of a ref's revocation: from its own list when it issued the ref, otherwise from the
    /// revocations its exporter adverts (the newest few hundred; only the exporter knows for sure).
    pub async fn revocation_state(&self, r: &Ref) -> &'static str {
        let ids = r.token.ids();
        if r.token.issuer() == self.me() {
            let revoked = self.revoked.lock().expect("revoked lock");
            return if ids.iter().any(|i| revoked.contains(i)) { "revoked" } else { "valid" };
        }
        let Ok(snap) = self.mesh.snapshot().await else { return "unknown" };
        let issuer = r.token.issuer().to_hex();
        match snap.nodes.iter().find(|n| n.key == issuer) {
            Some(n) if ids.iter().any(|i| n.revoked.contains(i)) => "revoked",
            Some(_) => "not revoked as far as its exporter's advert says",
            None => "unknown: this node has no advert of the exporter",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--path` takes a sub-tree of an fs export, with or without the leading slash; it refuses to climb out, to
    /// be empty, and to go on a ref of a kind that has no tree (nothing there would enforce it).
    #[test]
    fn a_sub_path_is_for_fs_refs_and_stays_beneath_the_root() {
        assert_eq!(sub_path(Kind::Fs, None).unwrap(), None);
        assert_eq!(sub_path(Kind::Fs, Some("sub/dir")).unwrap().as_deref(), Some("/sub/dir"));
        assert_eq!(sub_path(Kind::Fs, Some("/sub")).unwrap().as_deref(), Some("/sub"));
        assert!(sub_path(Kind::Fs, Some("../etc")).unwrap_err().message.contains("beneath the export's root"));
        assert!(sub_path(Kind::Fs, Some("a/../../b")).unwrap_err().message.contains("beneath"));
        assert!(sub_path(Kind::Fs, Some("")).unwrap_err().message.contains("empty"));
        assert!(sub_path(Kind::File, Some("sub")).unwrap_err().message.contains("this is a file ref"));
    }

    /// Attack (issue 10, finding 10): `--read-only` kept admin, so a "read-only" holder could still manage the
    /// export.
    /// Attack (issue 10, finding 7): revocation requests were unbounded, each a store write and a new advert.
    #[test]
    fn revocations_are_limited_per_peer_and_window() {
        let l = RevocationLimit::default();
        let (a, b) = (NodeKey([1; 32]), NodeKey([2; 32]));
        for _ in 0..REVOCATIONS_PER_WINDOW {
            l.admit(a, 100).unwrap();
        }
        assert!(l.admit(a, 130).unwrap_err().contains("more than 20 revocations"));
        l.admit(b, 130).unwrap();
        l.admit(a, 100 + REVOCATION_WINDOW).unwrap();
    }

    #[test]
    fn read_only_means_read_alone() {
        let all = Rights::READ | Rights::WRITE | Rights::ADMIN;
        assert_eq!(narrowed(all, true, None).unwrap(), Some(Rights::READ));
        assert_eq!(narrowed(all, false, Some("read,admin")).unwrap(), Some(Rights::READ | Rights::ADMIN));
        assert_eq!(narrowed(all, true, Some("read,admin")).unwrap(), Some(Rights::READ));
        assert_eq!(narrowed(all, false, None).unwrap(), None);
        let e = narrowed(Rights::READ, false, Some("write")).unwrap_err();
        assert!(e.message.contains("cannot have write"), "{}", e.message);
        assert!(narrowed(Rights::EXEC, true, None).unwrap_err().message.contains("grant nothing"));
        assert!(narrowed(all, false, Some("fly")).is_err());
    }
}
