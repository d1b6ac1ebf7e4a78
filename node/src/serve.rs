//! Inbound binds, the exporter's side. Every stream a transport accepts starts with a [`Hello`]; the token in it is
//! checked here (signatures, narrowing, expiry, audience against the authenticated peer, revocation) before the
//! kind's exporter sees a byte. A bind being served is registered, so that revocation and unexport cut it at once,
//! and it is cut at the second its token expires.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use metac_mesh::token::{ResourceId, Token, TokenId};
use metac_mesh::NodeKey;
use metac_resource::{frame, Bind, BoxStream, Exporter, Hello, Reply, RESOURCE_PROTOCOL};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::node::{short, Node};

/// How long a binder has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Live binds one peer may hold here at once: a holder of one ref opening a thousand binds gets refusals, not a
/// node out of file descriptors.
pub const MAX_BINDS_PER_PEER: usize = 64;

/// One bind being served.
pub(crate) struct Serving {
    /// Who binds.
    peer: NodeKey,
    /// Every block id of its token: revoking any of them cuts it.
    pub(crate) ids: Vec<TokenId>,
    /// The export it binds.
    pub(crate) resource: ResourceId,
    cancel: CancellationToken,
}

/// The binds this node serves right now.
#[derive(Default)]
pub(crate) struct Served {
    map: Mutex<HashMap<u64, Serving>>,
    next: AtomicU64,
}

impl Served {
    /// Registers a bind, unless its peer already holds [`MAX_BINDS_PER_PEER`].
    fn add(&self, s: Serving) -> Result<u64, String> {
        let mut map = self.map.lock().expect("served lock");
        if map.values().filter(|x| x.peer == s.peer).count() >= MAX_BINDS_PER_PEER {
            return Err(format!(
                "your node already holds {MAX_BINDS_PER_PEER} live binds here, the most allowed; unbind some first"
            ));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        map.insert(id, s);
        Ok(id)
    }

    fn remove(&self, id: u64) {
        self.map.lock().expect("served lock").remove(&id);
    }

    /// Cuts every bind `which` selects; returns how many.
    pub(crate) fn cut(&self, which: impl Fn(&Serving) -> bool) -> usize {
        let map = self.map.lock().expect("served lock");
        map.values().filter(|s| which(s)).map(|s| s.cancel.cancel()).count()
    }

    /// Cuts every bind (node stop).
    pub(crate) fn cut_all(&self) {
        self.cut(|_| true);
    }

    /// Live binds per export.
    pub(crate) fn count_by_resource(&self) -> HashMap<ResourceId, usize> {
        let mut out = HashMap::new();
        for s in self.map.lock().expect("served lock").values() {
            *out.entry(s.resource).or_default() += 1;
        }
        out
    }
}

/// What a verified hello allows.
struct Authorized {
    exporter: Arc<dyn Exporter>,
    bind: Bind,
    ids: Vec<TokenId>,
    resource: ResourceId,
}

impl Node {
    /// Accepts inbound binds on every transport until the node stops.
    pub(crate) fn accept_binds(self: &Arc<Self>) -> Result<tokio::task::JoinHandle<()>, crate::Error> {
        let incoming = self.transport.accept(RESOURCE_PROTOCOL).map_err(|e| crate::Error::Api(e.to_string()))?;
        let n = Arc::clone(self);
        Ok(tokio::spawn(async move {
            let mut incoming = incoming;
            loop {
                tokio::select! {
                    _ = n.cancel.cancelled() => break,
                    next = incoming.next() => match next {
                        Some((peer, stream)) => {
                            let n = Arc::clone(&n);
                            tokio::spawn(async move { n.serve_bind(peer, stream).await });
                        }
                        None => break,
                    },
                }
            }
        }))
    }

    /// Serves one inbound bind: handshake, verification, then the kind's exporter.
    pub(crate) async fn serve_bind(&self, peer: NodeKey, mut stream: BoxStream) {
        let hello = match tokio::time::timeout(
            HELLO_TIMEOUT,
            frame::read::<_, Hello>(&mut stream, metac_resource::MAX_HELLO_BYTES),
        )
        .await
        {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "bad hello: {e}");
                return;
            }
            Err(_) => return,
        };
        let a = match self.authorize(peer, &hello).await {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(peer = %short(&peer), "bind refused: {}", e.message);
                let _ = frame::write(&mut stream, &Reply::Refuse { reason: e.message }).await;
                return;
            }
        };
        let cancel = self.cancel.child_token();
        let serving = Serving { peer, ids: a.ids.clone(), resource: a.resource, cancel: cancel.clone() };
        let sid = match self.served.add(serving) {
            Ok(sid) => sid,
            Err(reason) => {
                tracing::info!(peer = %short(&peer), "bind refused: {reason}");
                let _ = frame::write(&mut stream, &Reply::Refuse { reason }).await;
                return;
            }
        };
        if frame::write(&mut stream, &Reply::Accept).await.is_err() {
            self.served.remove(sid);
            return;
        }
        // A revocation that landed between the check and the registration must still cut this bind.
        if a.ids.iter().any(|i| self.revoked.lock().expect("revoked lock").contains(i)) {
            cancel.cancel();
        }
        // Cut at the second the token expires, not at the next bind.
        if let Some(at) = a.bind.expires {
            let (clock, c) = (Arc::clone(&self.clock), cancel.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = c.cancelled() => {}
                    () = clock.sleep_until(at) => {
                        tracing::info!("bind cut: its token expired");
                        c.cancel();
                    }
                }
            });
        }
        tracing::info!(peer = %short(&peer), resource = %a.resource, "bind accepted");
        let result = a.exporter.serve(a.bind, stream, cancel.clone()).await;
        cancel.cancel();
        self.served.remove(sid);
        if let Err(e) = result {
            tracing::info!(peer = %short(&peer), "bind ended: {e}");
        }
    }

    async fn authorize(&self, peer: NodeKey, hello: &Hello) -> Result<Authorized, ApiError> {
        let token = Token::decode(&hello.token).map_err(|e| ApiError::bad(format!("bad token: {e}")))?;
        let grant = {
            let revoked = self.revoked.lock().expect("revoked lock");
            token
                .verify_cached(&self.me(), self.clock.now(), &peer, |id| revoked.contains(id), &self.sigs)
                .map_err(|e| ApiError::refused(e.to_string()))?
        };
        let export = self
            .find_export(&grant.resource)?
            .ok_or_else(|| ApiError::not_found(format!("resource {} is no longer exported", grant.resource)))?;
        let kind = self.kind(export.kind)?;
        if hello.protocol != kind.protocol() {
            return Err(ApiError::bad(format!(
                "protocol {} does not serve {} resources (use {})",
                hello.protocol,
                export.kind,
                kind.protocol()
            )));
        }
        let exporter = self.exporter(&export).await?;
        let bind = Bind { peer, rights: grant.rights, path: grant.path, expires: grant.expires };
        Ok(Authorized { exporter, bind, ids: token.ids(), resource: export.id })
    }
}
