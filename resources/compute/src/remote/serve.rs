//! The running node's side of remote launch: the exporter of a compute ref (`metac compute export`). A bind is one
//! request of a calling node's user; a run is a container of this node's, as the caller's user where it can be,
//! whose mounts are the caller's files bound here, and which is killed when the calling node goes away.
//!
//! What a ref holder may ask is narrower than what a local user may: no mounts of this node's paths, no `--rootfs`,
//! no added capabilities, no host network, no user but their own. Their runs are theirs alone: other requests find
//! only containers that the same user of the same node ran.

use std::sync::Arc;
use std::time::Duration;

use metac_resource::{Bind, BoxFuture, BoxStream, Caller, Error, Exporter, Rights};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::{recv, relay, send, Answer, End, Envelope, Request};
use crate::api::Ended;
use crate::manager::{Manager, Origin};
use crate::spec::{Network, Source, Spec, User};

/// How long a calling node has to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// An open compute export: runs for ref holders, as the export's owner allows.
pub struct ComputeExporter {
    /// The node's containers.
    pub manager: Arc<Manager>,
    /// Who exported: root runs each caller's processes as their own uid; another user runs them rootless, as
    /// themselves.
    pub owner: Caller,
    /// For every member of the private mesh (its ref in the advert).
    pub mesh: bool,
}

impl ComputeExporter {
    /// The load figures this node adverts with its compute export: `--on any` picks the least loaded.
    pub fn load_note() -> String {
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
            .unwrap_or(0.0);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemAvailable:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).map(|kib| kib >> 10))
            })
            .unwrap_or(0);
        format!("load={load:.2} cpus={cpus} mem_mib={mem}")
    }

    async fn serve_one(&self, bind: Bind, mut stream: BoxStream, cancel: CancellationToken) -> Result<(), Error> {
        let env: Envelope = match tokio::time::timeout(REQUEST_WAIT, recv(&mut stream)).await {
            Ok(r) => r?,
            Err(_) => return Err(Error::Protocol("no request within 10 s".into())),
        };
        if !bind.rights.contains(Rights::EXEC) {
            let no = Error::Refused { by: "this node".into(), reason: "this compute ref does not grant exec".into() };
            return send(&mut stream, &Answer::of::<()>(Err(no))).await;
        }
        let node = bind.peer.to_hex();
        let m = &self.manager;
        let answer = |r| Answer::of(r);
        match env.request {
            Request::Run { spec, attach } => {
                return self.run(env.uid, env.gid, &node, spec, attach, stream, cancel).await
            }
            Request::List { all } => send(&mut stream, &answer(m.list_from(&node, env.uid, all))).await,
            Request::Inspect { id } => {
                let r = m.find_from(&id, &node, env.uid).and_then(|r| m.inspect(&r.id, &r.owner));
                send(&mut stream, &Answer::of(r)).await
            }
            Request::Kill { id, signal } => {
                let r = match m.find_from(&id, &node, env.uid) {
                    Ok(r) => m.kill(&r.id, &r.owner, signal).await,
                    Err(e) => Err(e),
                };
                send(&mut stream, &Answer::of(r)).await
            }
            Request::Stop { id, timeout } => {
                let r = match m.find_from(&id, &node, env.uid) {
                    Ok(r) => m.stop(&r.id, &r.owner, Duration::from_secs(timeout.min(3600))).await,
                    Err(e) => Err(e),
                };
                send(&mut stream, &Answer::of(r.map(|exit| Ended { exit }))).await
            }
            Request::Remove { id, force } => {
                let r = match m.find_from(&id, &node, env.uid) {
                    Ok(r) => m.remove(&r.id, &r.owner, force).await,
                    Err(e) => Err(e),
                };
                send(&mut stream, &Answer::of(r)).await
            }
            Request::Wait { id } => {
                let r = match m.find_from(&id, &node, env.uid) {
                    Ok(r) => tokio::select! {
                        r = m.wait(&r.id, &r.owner) => r,
                        () = cancel.cancelled() => Err(Error::Cancelled),
                    },
                    Err(e) => Err(e),
                };
                send(&mut stream, &Answer::of(r.map(|exit| Ended { exit }))).await
            }
            Request::Attach { id, stdin } => {
                let shim = match m.find_from(&id, &node, env.uid) {
                    Ok(r) => m.attach(&r.id, &r.owner, stdin).await,
                    Err(e) => Err(e),
                };
                self.splice(shim, stream, cancel).await
            }
            Request::Exec { id, mut process } => {
                let shim = match m.find_from(&id, &node, env.uid) {
                    Ok(r) => {
                        if process.user.is_none() {
                            process.user = r.spec.process.user;
                        }
                        match own_user(process.user, env.uid, env.gid, &self.owner) {
                            Ok(()) => m.exec(&r.id, &r.owner, process).await,
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                self.splice(shim, stream, cancel).await
            }
            Request::Logs { id, logs } => {
                let rx = match m.find_from(&id, &node, env.uid) {
                    Ok(r) => crate::api::log_frames(m, &r.id, &r.owner, logs),
                    Err(e) => Err(e),
                };
                let mut rx = match rx {
                    Ok(rx) => {
                        send(&mut stream, &Answer::Ok(serde_json::Value::Null)).await?;
                        rx
                    }
                    Err(e) => return send(&mut stream, &Answer::of::<()>(Err(e))).await,
                };
                loop {
                    let chunk = tokio::select! {
                        c = rx.recv() => c,
                        () = cancel.cancelled() => None,
                    };
                    match chunk {
                        Some(Ok(b)) => stream.write_all(&b).await?,
                        Some(Err(e)) => return Err(Error::Io(e)),
                        None => break,
                    }
                }
                stream.shutdown().await?;
                Ok(())
            }
        }
    }

    /// Answers an attach or exec, then relays the shim's frames with pings.
    async fn splice(
        &self,
        shim: Result<tokio::net::UnixStream, Error>,
        mut stream: BoxStream,
        cancel: CancellationToken,
    ) -> Result<(), Error> {
        let mut shim = match shim {
            Ok(s) => s,
            Err(e) => return send(&mut stream, &Answer::of::<()>(Err(e))).await,
        };
        send(&mut stream, &Answer::Ok(serde_json::Value::Null)).await?;
        tokio::select! {
            end = relay(Some(&mut shim), &mut stream, std::future::pending()) => {
                tracing::debug!("remote attach ended: {end:?}");
            }
            () = cancel.cancelled() => {}
        }
        Ok(())
    }

    /// Runs a container for `uid`:`gid` of `node`, relays it, and kills it if the calling node goes away.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        uid: u32,
        gid: u32,
        node: &str,
        mut spec: Spec,
        attach: bool,
        mut stream: BoxStream,
        cancel: CancellationToken,
    ) -> Result<(), Error> {
        if let Err(e) = allowed(&spec).and_then(|()| own_user(spec.process.user, uid, gid, &self.owner)) {
            return send(&mut stream, &Answer::of::<()>(Err(e))).await;
        }
        if spec.hostname.is_none() {
            spec.hostname = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok());
        }
        // Root runs each caller as their own uid, with their files bound as that uid (so they show as theirs);
        // another exporting user runs rootless containers, as themselves.
        let (owner, bind_as) = if self.owner.is_root() {
            spec.process.user.get_or_insert(User { uid, gid });
            (Caller::root(), Caller { uid, gid, groups: vec![] })
        } else {
            (self.owner.clone(), self.owner.clone())
        };
        let origin = Origin { node: node.to_string(), uid, bind_as };
        let stdin = spec.process.stdin;
        let info = match self.manager.create_for(spec, owner.clone(), attach, Some(origin)).await {
            Ok(i) => i,
            Err(e) => return send(&mut stream, &Answer::of::<()>(Err(e))).await,
        };
        let id = info.id.clone();
        let shim = if attach {
            match self.manager.attach(&id, &owner, stdin).await {
                Ok(s) => Some(s),
                Err(e) => {
                    let _ = self.manager.remove(&id, &owner, true).await;
                    return send(&mut stream, &Answer::of::<()>(Err(e))).await;
                }
            }
        } else {
            None
        };
        if let Err(e) = send(&mut stream, &Answer::of(Ok(info))).await {
            let _ = self.manager.remove(&id, &owner, true).await;
            return Err(e);
        }
        tracing::info!(%id, node = &node[..16], "remote run started");
        let m = Arc::clone(&self.manager);
        let (id2, owner2) = (id.clone(), owner.clone());
        let done = async move { m.wait(&id2, &owner2).await.ok().flatten() };
        let end = tokio::select! {
            end = relay(shim, &mut stream, done) => end,
            () = cancel.cancelled() => End::PeerClosed("the bind was cut (revoked, expired or unexported)".into()),
        };
        match end {
            End::Exited(x) => tracing::info!(%id, status = x.status(), "remote run ended"),
            End::LocalClosed => {
                // The shim closed without an exit (its process ended as the shim died): say how it ended.
                let x = self.manager.wait(&id, &owner).await.ok().flatten();
                if let Some(x) = x {
                    let mut b = Vec::new();
                    crate::stdio::Frame::Exit(x).encode(&mut b);
                    let _ = stream.write_all(&b).await;
                    let _ = stream.shutdown().await;
                }
            }
            why => {
                // The calling node, its client or the network went away: no orphans.
                tracing::info!(%id, "the calling node went away ({why:?}): killing the run");
                if let Err(e) = self.manager.kill_and_cut(&id, &owner).await {
                    tracing::debug!(%id, "kill: {e}");
                }
            }
        }
        Ok(())
    }
}

impl Exporter for ComputeExporter {
    fn serve(
        self: Arc<Self>,
        bind: Bind,
        stream: BoxStream,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move { self.serve_one(bind, stream, cancel).await })
    }

    fn note(&self) -> String {
        Self::load_note()
    }

    fn public(&self) -> bool {
        self.mesh
    }
}

/// What a ref holder may not ask of this node, refused with the reason.
pub fn allowed(spec: &Spec) -> Result<(), Error> {
    spec.check().map_err(|e| Error::BadOptions(e.0))?;
    let no = |what: &str| Err(Error::Refused { by: "this node".into(), reason: format!("a remote run {what}") });
    if spec.rootfs.is_some() {
        return no("cannot use a directory of this node as its root (--rootfs): mount the caller's instead");
    }
    if let Some(m) = spec.mounts.iter().find(|m| matches!(m.source, Source::Local(_))) {
        return no(&format!(
            "cannot mount a path of this node ({}): only the caller's files (refs) and tmpfs",
            m.source
        ));
    }
    if !spec.cap_add.is_empty() {
        return no("cannot add capabilities");
    }
    if spec.network == Network::Host {
        return no("cannot use this node's network (--network host)");
    }
    Ok(())
}

/// A remote caller runs as themselves: the user asked for, if any, must be the caller's own uid (with root
/// exporting) or none (rootless, with another user exporting).
fn own_user(user: Option<User>, uid: u32, gid: u32, exporter: &Caller) -> Result<(), Error> {
    match user {
        None => Ok(()),
        Some(u) if exporter.is_root() && u.uid == uid && u.gid == gid => Ok(()),
        Some(u) => Err(Error::Refused {
            by: "this node".into(),
            reason: format!("a remote run runs as its caller; it cannot be user {}:{}", u.uid, u.gid),
        }),
    }
}
