//! The calling node's side of remote launch: which node runs a command (`--on NAME | NODE | any | REF`), the
//! caller's files exported to it for the run's life, and the run relayed between the user's client and that node.
//! Runs started here are listed here with the node they run on (`metac ps`), and every container command reaches
//! them by id; `--on` reaches any run of the user's on a node.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metac_resource::{BoxStream, Caller, Ctx, Error, ExportReq, Kind, NodeKey, PeerInfo, Ref, ResourceId, Rights};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use super::{recv, relay, send, Answer, End, Envelope, Request, ANSWER_WAIT};
use crate::manager::Info;
use crate::spec::{Mount, Source, Spec};
use crate::stdio::{Exit, Frame};

/// Most remote runs a node keeps track of (the oldest ended ones are forgotten first).
pub const MAX_RUNS: usize = 1024;
/// How long a run started for an attaching client waits for it.
const ATTACH_WAIT: Duration = Duration::from_secs(60);

/// What became of a remote run, as this node saw it.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    Running,
    Exited(Exit),
    /// The running node went away, or the client did (then the running node killed it).
    Lost(String),
}

struct Run {
    owner: Caller,
    node: NodeKey,
    reference: Ref,
    info: Info,
    fate: Fate,
    /// Where an attaching client's connection goes, until one comes.
    attach: Option<oneshot::Sender<BoxStream>>,
    /// Wakes waiters when the run ends.
    ended: tokio::sync::watch::Sender<bool>,
}

/// This node's remote runs.
pub struct Remote {
    ctx: Ctx,
    runs: Mutex<HashMap<String, Run>>,
}

/// Where to run, and what of the caller's to take along: what `metac run --on` sends besides the spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct On {
    /// A saved name, a node key or a unique prefix of one, an overlay address, `any`, or a compute ref.
    pub peer: String,
    /// Use the running node's root rather than the caller's (faster, for programs it has).
    #[serde(default)]
    pub no_root: bool,
}

fn short(k: &NodeKey) -> String {
    k.to_hex()[..16].to_string()
}

impl Remote {
    /// The remote runs of the node `ctx` belongs to.
    pub fn new(ctx: Ctx) -> Remote {
        Remote { ctx, runs: Mutex::new(HashMap::new()) }
    }

    /// The compute ref to reach `peer` with, from the refs `caller` saved.
    pub async fn resolve(&self, peer: &str, caller: &Caller) -> Result<Ref, Error> {
        if peer.starts_with("ref://") {
            let r: Ref = peer.parse().map_err(|e| Error::BadOptions(format!("bad ref in --on: {e}")))?;
            return compute_ref(r);
        }
        let mut saved: Vec<_> = self
            .ctx
            .host
            .saved_refs(caller)?
            .into_iter()
            .filter(|s| s.reference.token.kind() == Kind::Compute)
            .collect();
        if let Some(s) = saved.iter().find(|s| s.name == peer) {
            return Ok(s.reference.clone());
        }
        let me = self.ctx.me.to_hex();
        let how = format!(
            "ask its owner for one (`metac compute export --to {me}` there), then `metac ref save NAME REF` here"
        );
        // Nodes of a private mesh that run for every member advert their compute ref.
        let peers = self.ctx.host.peers().await?;
        for p in &peers {
            for r in p.resources.iter().filter(|r| r.kind == Kind::Compute) {
                let Some(Ok(reference)) = r.public_ref.as_deref().map(str::parse::<Ref>) else { continue };
                if reference.token.issuer() == p.key && reference.token.kind() == Kind::Compute {
                    saved.push(metac_resource::SavedRef { name: format!("{}:{}", short(&p.key), r.name), reference });
                }
            }
        }
        if peer == "any" {
            return self.least_loaded(&saved, &peers, &how);
        }
        let node = node_of(peer, &peers)?;
        saved.iter().find(|s| s.reference.token.issuer() == node).map(|s| s.reference.clone()).ok_or_else(|| {
            Error::Refused {
                by: "this node".into(),
                reason: format!("you have no compute ref for node {}: {how}", short(&node)),
            }
        })
    }

    /// `--on any`: of the nodes the caller holds compute refs for, a reachable one with the lowest load per cpu
    /// (from the figures each adverts with its compute export).
    fn least_loaded(&self, saved: &[metac_resource::SavedRef], peers: &[PeerInfo], how: &str) -> Result<Ref, Error> {
        if saved.is_empty() {
            return Err(Error::Refused { by: "this node".into(), reason: format!("you hold no compute ref: {how}") });
        }
        let now = self.ctx.clock.now();
        let mut best: Option<(f64, &Ref)> = None;
        for s in saved {
            let t = &s.reference.token;
            let g = t.effective();
            // A ref that cannot be used from here, or that its node says it revoked, does not accept.
            if g.expires.is_some_and(|e| e <= now) || g.audience.is_some_and(|a| a != self.ctx.me) {
                continue;
            }
            let Some(p) = peers.iter().find(|p| p.key == t.issuer() && p.reachable) else { continue };
            if t.ids().iter().any(|i| p.revoked.contains(i)) {
                continue;
            }
            let note = p.resources.iter().find(|r| r.id == t.resource()).map(|r| r.description.as_str());
            let score = note.and_then(load_per_cpu).unwrap_or(f64::MAX / 2.0);
            if best.is_none_or(|(b, _)| score < b) {
                best = Some((score, &s.reference));
            }
        }
        best.map(|(_, r)| r.clone())
            .ok_or_else(|| Error::Unreachable("none of the nodes you hold compute refs for is reachable now".into()))
    }

    /// Opens a stream to the node of `reference` and asks `request` for `caller`.
    async fn ask(&self, reference: &Ref, caller: &Caller, request: Request) -> Result<(BoxStream, Answer), Error> {
        let node = short(&reference.token.issuer());
        let mut s = self.ctx.binder.open(reference, super::super::PROTOCOL).await?;
        send(&mut s, &Envelope { uid: caller.uid, gid: caller.gid, request }).await?;
        let a = tokio::time::timeout(ANSWER_WAIT, recv::<_, Answer>(&mut s))
            .await
            .map_err(|_| Error::Unreachable(format!("node {node} did not answer within {} s", ANSWER_WAIT.as_secs())))?
            .map_err(|e| Error::Unreachable(format!("node {node} went away: {e}")))?;
        Ok((s, a))
    }

    /// Runs `spec` on the node `on` names, with the caller's files: its working directory read-write, its root
    /// read-only (unless `no_root`), and its `local:` mounts, each exported to that node alone until the run ends.
    pub async fn run(self: &Arc<Self>, caller: Caller, spec: Spec, attach: bool, on: On) -> Result<Info, Error> {
        let reference = self.resolve(&on.peer, &caller).await?;
        let node = reference.token.issuer();
        let mut exported = vec![];
        let result = self.start(&caller, spec, attach, &on, &reference, &mut exported).await;
        let (stream, info) = match result {
            Ok(v) => v,
            Err(e) => {
                self.unexport(&exported).await;
                return Err(e);
            }
        };
        let (tx, rx) = oneshot::channel();
        let id = info.id.clone();
        {
            let mut runs = self.runs.lock().expect("runs lock");
            if runs.len() >= MAX_RUNS {
                let old = runs.iter().filter(|(_, r)| r.fate != Fate::Running).map(|(k, _)| k.clone()).next();
                if let Some(k) = old {
                    runs.remove(&k);
                }
            }
            let mut info = info.clone();
            info.node = Some(node.to_hex());
            info.owner = caller.uid;
            runs.insert(
                id.clone(),
                Run {
                    owner: caller,
                    node,
                    reference,
                    info,
                    fate: Fate::Running,
                    attach: attach.then_some(tx),
                    ended: tokio::sync::watch::channel(false).0,
                },
            );
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let fate = me.follow(stream, attach.then_some(rx)).await;
            tracing::info!(%id, "remote run ended: {fate:?}");
            me.unexport(&exported).await;
            if let Some(r) = me.runs.lock().expect("runs lock").get_mut(&id) {
                r.fate = fate;
                r.attach = None;
                r.ended.send_replace(true);
            }
        });
        Ok(info)
    }

    /// Exports the caller's files, asks the node to run, and answers its stream and the run.
    async fn start(
        &self,
        caller: &Caller,
        mut spec: Spec,
        attach: bool,
        on: &On,
        reference: &Ref,
        exported: &mut Vec<ResourceId>,
    ) -> Result<(BoxStream, Info), Error> {
        let node = reference.token.issuer();
        let tag = spec.name.clone().unwrap_or_else(|| crate::manager::base_name(&spec.process.args[0]));
        let mut mounts = vec![];
        // The caller's root, read-only, unless the node's own is asked for or another root is given.
        let own_root = spec.rootfs.take();
        if (!on.no_root || own_root.is_some()) && spec.root().is_none() {
            let root = own_root.unwrap_or_else(|| PathBuf::from("/"));
            let r = self.export(caller, node, &root, false, &format!("run:{tag}:root"), exported).await?;
            mounts.push(Mount { target: "/".into(), source: Source::Ref(r.to_string()), read_only: true });
            if !spec.mounts.iter().any(|m| m.target == Path::new("/tmp")) {
                mounts.push(Mount { target: "/tmp".into(), source: Source::Tmpfs, read_only: false });
            }
        }
        // The working directory, read-write at the same path.
        if let Some(cwd) = spec.process.cwd.clone() {
            if cwd != Path::new("/") && !spec.mounts.iter().any(|m| m.target == cwd) {
                let r = self.export(caller, node, &cwd, true, &format!("run:{tag}:cwd"), exported).await?;
                mounts.push(Mount { target: cwd, source: Source::Ref(r.to_string()), read_only: false });
            }
        }
        for m in std::mem::take(&mut spec.mounts) {
            let m = match &m.source {
                Source::Local(p) => {
                    let name = format!("run:{tag}:{}", m.target.display());
                    let r = self.export(caller, node, p, !m.read_only, &name, exported).await?;
                    Mount { source: Source::Ref(r.to_string()), ..m }
                }
                _ => m,
            };
            mounts.push(m);
        }
        spec.mounts = mounts;
        spec.check().map_err(|e| Error::BadOptions(e.0))?;
        let (stream, answer) = self.ask(reference, caller, Request::Run { spec, attach }).await?;
        let info: Info = answer.into_result(&short(&node))?;
        Ok((stream, info))
    }

    /// Exports `path` for `caller`, to `node` alone.
    async fn export(
        &self,
        caller: &Caller,
        node: NodeKey,
        path: &Path,
        write: bool,
        name: &str,
        exported: &mut Vec<ResourceId>,
    ) -> Result<Ref, Error> {
        let rights = if write { Rights::READ | Rights::WRITE | Rights::ADMIN } else { Rights::READ };
        let (id, r) = self
            .ctx
            .host
            .export(ExportReq {
                kind: Kind::Fs,
                source: format!("local:{}", path.display()),
                name: name.to_string(),
                rights,
                owner: caller.clone(),
                audience: node,
                expires: None,
            })
            .await?;
        exported.push(id);
        Ok(r)
    }

    async fn unexport(&self, ids: &[ResourceId]) {
        for id in ids {
            let _ = self.ctx.host.unexport(*id).await;
        }
    }

    /// Relays a run until it ends: first waiting for the client to attach (pinging the running node meanwhile),
    /// then between the two.
    async fn follow(&self, mut stream: BoxStream, attach: Option<oneshot::Receiver<BoxStream>>) -> Fate {
        let mut client = None;
        if let Some(mut rx) = attach {
            let deadline = tokio::time::Instant::now() + ATTACH_WAIT;
            let mut tick = tokio::time::interval(super::PING_EVERY);
            let mut ping = Vec::new();
            Frame::Ping.encode(&mut ping);
            loop {
                tokio::select! {
                    c = &mut rx => match c {
                        Ok(c) => {
                            client = Some(c);
                            break;
                        }
                        Err(_) => return Fate::Lost("its client went away before attaching".into()),
                    },
                    _ = tick.tick() => {
                        if tokio::time::Instant::now() > deadline {
                            return Fate::Lost("no client attached within a minute".into());
                        }
                        if stream.write_all(&ping).await.is_err() || stream.flush().await.is_err() {
                            return Fate::Lost("the running node went away".into());
                        }
                    }
                }
            }
        }
        let end = relay(client.as_mut(), &mut stream, std::future::pending()).await;
        let fate = match end {
            End::Exited(x) => Fate::Exited(x),
            End::LocalClosed => Fate::Lost("its client went away; the running node kills it".into()),
            End::PeerClosed(why) => Fate::Lost(format!("the running node went away ({why})")),
            End::PeerSilent => Fate::Lost(format!(
                "the running node fell silent for {} s (network or node gone)",
                super::SILENCE.as_secs()
            )),
            End::Bad(why) => Fate::Lost(format!("the stream went out of step: {why}")),
        };
        if let (Some(c), Fate::Lost(why)) = (client.as_mut(), &fate) {
            let mut b = Vec::new();
            Frame::Error(format!("the remote run is lost: {why}")).encode(&mut b);
            let _ = c.write_all(&b).await;
            let _ = c.flush().await;
            let _ = c.shutdown().await;
        }
        fate
    }

    /// Hands an attaching client's connection to a run started for it; `None` if `id` is no such run of `caller`.
    pub fn attach_started(&self, id: &str, caller: &Caller, conn: BoxStream) -> Option<BoxStream> {
        let mut runs = self.runs.lock().expect("runs lock");
        match runs.get_mut(id) {
            Some(r) if r.owner.uid == caller.uid || caller.is_root() => match r.attach.take() {
                Some(tx) => tx.send(conn).err(),
                None => Some(conn),
            },
            _ => Some(conn),
        }
    }

    /// Whether `id` is a run started here that waits for its client.
    pub fn awaits_client(&self, id: &str, caller: &Caller) -> bool {
        let runs = self.runs.lock().expect("runs lock");
        runs.get(id).is_some_and(|r| (r.owner.uid == caller.uid || caller.is_root()) && r.attach.is_some())
    }

    /// The ref to reach a container by: `--on` if given, else the node of a run started here.
    pub async fn target(&self, id: &str, on: Option<&str>, caller: &Caller) -> Result<Option<Ref>, Error> {
        if let Some(on) = on {
            return self.resolve(on, caller).await.map(Some);
        }
        let runs = self.runs.lock().expect("runs lock");
        Ok(self.find(&runs, id, caller).map(|r| r.reference.clone()))
    }

    fn find<'a>(&self, runs: &'a HashMap<String, Run>, key: &str, caller: &Caller) -> Option<&'a Run> {
        let mine = |r: &&Run| r.owner.uid == caller.uid || caller.is_root();
        if let Some(r) = runs.get(key).filter(mine) {
            return Some(r);
        }
        let hits: Vec<&Run> = runs
            .values()
            .filter(mine)
            .filter(|r| r.info.name == key || (key.len() >= 3 && r.info.id.starts_with(key)))
            .collect();
        match hits.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The runs `caller` started here (all of them for root), as listed: running, or with `all` ended too.
    pub fn list(&self, caller: &Caller, all: bool) -> Vec<Info> {
        let runs = self.runs.lock().expect("runs lock");
        let mut v: Vec<Info> = runs
            .values()
            .filter(|r| r.owner.uid == caller.uid || caller.is_root())
            .filter(|r| all || r.fate == Fate::Running)
            .map(|r| {
                let mut i = r.info.clone();
                match &r.fate {
                    Fate::Running => i.state = "running".into(),
                    Fate::Exited(x) => {
                        i.state = "exited".into();
                        i.exit = Some(*x);
                    }
                    Fate::Lost(why) => {
                        i.state = "lost".into();
                        i.error = Some(why.clone());
                    }
                }
                i
            })
            .collect();
        v.sort_by_key(|i| i.created);
        v
    }

    /// How a run started here ended, once it has (`None`: lost, with why).
    pub async fn wait_started(&self, id: &str, caller: &Caller) -> Option<Result<Option<Exit>, Error>> {
        let mut rx = {
            let runs = self.runs.lock().expect("runs lock");
            self.find(&runs, id, caller)?.ended.subscribe()
        };
        let _ = rx.wait_for(|e| *e).await;
        let runs = self.runs.lock().expect("runs lock");
        let r = self.find(&runs, id, caller)?;
        Some(match &r.fate {
            Fate::Exited(x) => Ok(Some(*x)),
            Fate::Lost(why) => Err(Error::Unreachable(format!("the run on node {} is lost: {why}", short(&r.node)))),
            Fate::Running => Ok(None),
        })
    }

    /// Asks the node of `reference` for `request` of `caller` and answers its value.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        reference: &Ref,
        caller: &Caller,
        request: Request,
    ) -> Result<T, Error> {
        let (_s, a) = self.ask(reference, caller, request).await?;
        a.into_result(&short(&reference.token.issuer()))
    }

    /// Asks for a streaming request (attach, exec, logs): answers the stream once the node accepted.
    pub async fn open(&self, reference: &Ref, caller: &Caller, request: Request) -> Result<BoxStream, Error> {
        let (s, a) = self.ask(reference, caller, request).await?;
        a.into_result::<serde_json::Value>(&short(&reference.token.issuer()))?;
        Ok(s)
    }

    /// Forgets the ended runs a removal named (the running node removed its container).
    pub fn forget(&self, id: &str, caller: &Caller) {
        let mut runs = self.runs.lock().expect("runs lock");
        let key = self.find(&runs, id, caller).filter(|r| r.fate != Fate::Running).map(|r| r.info.id.clone());
        if let Some(k) = key {
            runs.remove(&k);
        }
    }
}

/// The node `q` names: a key or a unique prefix of one (at least 4 hex digits), or an overlay address.
fn node_of(q: &str, peers: &[PeerInfo]) -> Result<NodeKey, Error> {
    if let Some(k) = NodeKey::from_hex(q) {
        return Ok(k);
    }
    if let Ok(a) = q.trim_matches(|c| c == '[' || c == ']').parse::<std::net::Ipv6Addr>() {
        return peers
            .iter()
            .find(|p| p.overlay == a)
            .map(|p| p.key)
            .ok_or_else(|| Error::UnknownNode(format!("no known node has overlay address {a} (see `metac peers`)")));
    }
    let q = q.to_ascii_lowercase();
    if q.len() < 4 || !q.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::BadOptions(format!(
            "--on {q:?} is not a saved name (`metac ref ls --saved`), a node key or a prefix of one (4 hex digits \
             or more), an overlay address, `any`, or a compute ref"
        )));
    }
    let hits: Vec<_> = peers.iter().filter(|p| p.key.to_hex().starts_with(&q)).collect();
    match hits.as_slice() {
        [one] => Ok(one.key),
        [] => Err(Error::UnknownNode(format!("no known node's key starts with {q} (see `metac peers`)"))),
        _ => Err(Error::BadOptions(format!("{q} is the start of {} nodes' keys: give more of it", hits.len()))),
    }
}

/// A ref given to `--on` must be a compute ref.
fn compute_ref(r: Ref) -> Result<Ref, Error> {
    if r.token.kind() != Kind::Compute {
        return Err(Error::BadOptions(format!(
            "--on takes a compute ref; this one is for a {} resource",
            r.token.kind()
        )));
    }
    Ok(r)
}

/// The load per cpu a compute export's note says (`load=0.42 cpus=2 ...`).
pub fn load_per_cpu(note: &str) -> Option<f64> {
    let field = |k: &str| note.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse::<f64>().ok());
    let load = field("load=")?;
    let cpus = field("cpus=").filter(|c| *c >= 1.0).unwrap_or(1.0);
    Some(load / cpus)
}
