//! The node's side of containers: it checks a [`Spec`] for its caller, binds the refs it mounts, makes its cgroup,
//! writes its `config.json` and starts its shim (`metac shim DIR`), then keeps a record in the kind's store and
//! watches the shim's pid (a pidfd: no polling) to learn when the container has ended for good (`--rm`, binds to
//! let go, waiters to wake). After a node restart it re-adopts the containers whose shims are still running.
//!
//! Every container belongs to the local user who ran it ([`Caller`]); only they and root see and manage it. A
//! container of a user other than root gets a user namespace that maps root inside to that user outside.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metac_resource::{Caller, Ctx, Error, Kind, Ref};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::cgroup::{Cgroup, Hierarchy, Limits, Stats};
use crate::security::Caps;
use crate::shim::{self, Config, Phase, Reply, Request, State};
use crate::spec::{Process, Source, Spec, User};
use crate::stdio::Exit;

/// Store keys of container records.
const KEY: &str = "container/";
/// Most containers, running or not, a node keeps (each holds logs on disk).
pub const MAX_CONTAINERS: usize = 4096;
/// How long the node waits for a shim to say whether its container started.
const START_WAIT: Duration = Duration::from_secs(60);

/// What the node keeps about a container (JSON in the kind's store).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Its id: 12 hex digits.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Who ran it.
    pub owner: Caller,
    /// What it is.
    pub spec: Spec,
    /// When it was made (milliseconds since the epoch).
    pub created: u64,
    /// The shim's pid while it runs.
    pub shim: Option<u32>,
    /// The binds of its fs refs, cut when it ends.
    #[serde(default)]
    pub binds: Vec<String>,
    /// Its cgroup, if it has one.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Paused (frozen) by `metac pause`.
    #[serde(default)]
    pub paused: bool,
    /// Who ran it from another node (remote launch).
    #[serde(default)]
    pub origin: Option<Origin>,
}

/// The node and user that ran a container from afar (`metac run --on`), and whom its refs are bound as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The calling node's key, hex.
    pub node: String,
    /// The user's uid on the calling node.
    pub uid: u32,
    /// The local user the caller's files are bound as here (their files show as this user's).
    pub bind_as: Caller,
}

/// A container as `metac ps` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// created, running, paused, restarting, exited or dead (its shim died).
    pub state: String,
    /// The first process's pid on this host, while it runs.
    pub pid: Option<u32>,
    /// The command.
    pub command: Vec<String>,
    /// When it was made (milliseconds since the epoch).
    pub created: u64,
    /// When its process last started.
    pub started: Option<u64>,
    /// When it last ended.
    pub finished: Option<u64>,
    /// How it last ended.
    pub exit: Option<Exit>,
    /// Why it could not run.
    pub error: Option<String>,
    /// Restarts so far.
    pub restarts: u32,
    /// Its limits.
    pub limits: Limits,
    /// The uid of the user who ran it.
    pub owner: u32,
    /// For a remote run: the other node's key (where it runs, in the calling node's list; who ran it, in the
    /// running node's).
    #[serde(default)]
    pub node: Option<String>,
}

/// Everything about one container (`metac inspect`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inspect {
    /// As listed.
    #[serde(flatten)]
    pub info: Info,
    /// Its spec.
    pub spec: Spec,
    /// The capabilities its processes keep.
    pub capabilities: Vec<String>,
    /// Its cgroup's name, and the hierarchy's layout.
    pub cgroup: Option<String>,
    /// The host's cgroup layout.
    pub cgroup_layout: Option<String>,
    /// Where its logs and state are.
    pub dir: PathBuf,
    /// The ids of the binds of its refs.
    pub binds: Vec<String>,
}

/// The containers of one node.
pub struct Manager {
    ctx: Ctx,
    /// Durable: a directory per container (config, state, logs).
    dir: PathBuf,
    /// Runtime: shim sockets and scratch roots, reachable by every user.
    run: PathBuf,
    cgroups: Result<Hierarchy, String>,
    /// The binary with the `shim` command.
    shim_bin: PathBuf,
    /// Containers whose shims are watched: a channel that turns true when the shim is gone.
    live: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// One create at a time checks and takes names.
    naming: tokio::sync::Mutex<()>,
    /// Turns true when the node stops: the watches end (the containers and their shims go on).
    stopping: watch::Sender<bool>,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |e| Error::Io(io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// The binary that runs shims: `METAC_BIN`, this program when it is `metac`, or `metac` beside it or on the PATH.
pub fn shim_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("METAC_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(me) = std::env::current_exe() {
        if me.file_name().is_some_and(|n| n == "metac") {
            return me;
        }
        if let Some(p) = me.parent().and_then(|d| d.parent()).map(|d| d.join("metac")).filter(|p| p.exists()) {
            return p; // a test binary in target/debug/deps: metac is in target/debug
        }
    }
    PathBuf::from("metac")
}

impl Manager {
    /// The containers of the node `ctx` belongs to.
    pub fn new(ctx: Ctx) -> Manager {
        let dir = ctx.state_dir.join("containers");
        let run = ctx.run_dir.join("containers");
        let cgroups = Hierarchy::detect().map_err(|e| e.to_string());
        Manager {
            ctx,
            dir,
            run,
            cgroups,
            shim_bin: shim_binary(),
            live: Mutex::new(HashMap::new()),
            naming: tokio::sync::Mutex::new(()),
            stopping: watch::channel(false).0,
        }
    }

    /// The node stops: the watches of the shims end, and with them what they hold of the node. Containers keep
    /// running; the next start takes them back.
    pub fn let_go(&self) {
        self.stopping.send_replace(true);
    }

    fn records(&self) -> Result<Vec<Record>, Error> {
        let mut out = Vec::new();
        for (k, v) in self.ctx.store.list()? {
            if k.starts_with(KEY) {
                match serde_json::from_slice::<Record>(&v) {
                    Ok(r) => out.push(r),
                    Err(e) => tracing::warn!("container record {k} is unreadable, skipped: {e}"),
                }
            }
        }
        out.sort_by_key(|r| r.created);
        Ok(out)
    }

    fn put(&self, r: &Record) -> Result<(), Error> {
        self.ctx.store.put(&format!("{KEY}{}", r.id), &serde_json::to_vec(r).expect("record serializes"))
    }

    /// The container `key` (id, a unique id prefix, or name) of `caller` (root sees all).
    pub fn find(&self, key: &str, caller: &Caller) -> Result<Record, Error> {
        let mine: Vec<Record> =
            self.records()?.into_iter().filter(|r| caller.is_root() || r.owner.uid == caller.uid).collect();
        find_in(mine, key)
    }

    /// The container `key` that `uid` of node `node` ran here (remote launch): only theirs, and nothing said of
    /// anyone else's.
    pub fn find_from(&self, key: &str, node: &str, uid: u32) -> Result<Record, Error> {
        let theirs = |r: &Record| r.origin.as_ref().is_some_and(|o| o.node == node && o.uid == uid);
        find_in(self.records()?.into_iter().filter(theirs).collect(), key)
    }

    /// The containers `uid` of node `node` ran here.
    pub fn list_from(&self, node: &str, uid: u32, all: bool) -> Result<Vec<Info>, Error> {
        Ok(self
            .records()?
            .iter()
            .filter(|r| r.origin.as_ref().is_some_and(|o| o.node == node && o.uid == uid))
            .map(|r| self.info(r))
            .filter(|i| all || !matches!(i.state.as_str(), "exited" | "dead"))
            .collect())
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn socket(&self, id: &str) -> PathBuf {
        self.run.join(format!("{id}.sock"))
    }

    /// The state its shim last wrote, and whether that shim still runs.
    fn state(&self, r: &Record) -> (State, bool) {
        let st = State::read(&self.container_dir(&r.id)).unwrap_or_default();
        let alive = r.shim.is_some_and(|pid| shim_alive(pid, &r.id));
        (st, alive)
    }

    fn info(&self, r: &Record) -> Info {
        let (st, alive) = self.state(r);
        let state = match st.phase {
            Phase::Exited => "exited",
            _ if !alive => "dead",
            _ if r.paused => "paused",
            Phase::Created => "created",
            Phase::Running => "running",
            Phase::Restarting => "restarting",
        };
        Info {
            id: r.id.clone(),
            name: r.name.clone(),
            state: state.into(),
            pid: if alive { st.pid } else { None },
            command: r.spec.process.args.clone(),
            created: r.created,
            started: st.started,
            finished: st.finished,
            exit: st.exit,
            error: st.error.clone(),
            restarts: st.restarts,
            limits: r.spec.limits,
            owner: r.owner.uid,
            node: r.origin.as_ref().map(|o| o.node.clone()),
        }
    }

    /// The containers of `caller` (every one for root); with `all`, also those that ended.
    pub fn list(&self, caller: &Caller, all: bool) -> Result<Vec<Info>, Error> {
        Ok(self
            .records()?
            .iter()
            .filter(|r| caller.is_root() || r.owner.uid == caller.uid)
            .map(|r| self.info(r))
            .filter(|i| all || !matches!(i.state.as_str(), "exited" | "dead"))
            .collect())
    }

    /// Everything about one container.
    pub fn inspect(&self, key: &str, caller: &Caller) -> Result<Inspect, Error> {
        let r = self.find(key, caller)?;
        let caps =
            Caps::docker_default().with(&r.spec.cap_add, &r.spec.cap_drop).map(|c| c.names()).unwrap_or_default();
        Ok(Inspect {
            info: self.info(&r),
            spec: r.spec.clone(),
            capabilities: caps,
            cgroup: r.cgroup.clone(),
            cgroup_layout: self.cgroups.as_ref().ok().map(|h| h.layout().to_string()),
            dir: self.container_dir(&r.id),
            binds: r.binds.clone(),
        })
    }

    /// Creates and starts a container for `caller`. With `attach`, its command waits (a few seconds at most) for a
    /// client to attach before it runs, so that the client sees all of its output.
    pub async fn create(self: &Arc<Self>, spec: Spec, caller: Caller, attach: bool) -> Result<Info, Error> {
        self.create_for(spec, caller, attach, None).await
    }

    /// [`Manager::create`] for a run from another node: the record keeps its origin.
    pub async fn create_for(
        self: &Arc<Self>,
        mut spec: Spec,
        caller: Caller,
        attach: bool,
        origin: Option<Origin>,
    ) -> Result<Info, Error> {
        spec.check().map_err(|e| Error::BadOptions(e.0))?;
        Caps::docker_default().with(&spec.cap_add, &spec.cap_drop).map_err(|e| Error::BadOptions(e.to_string()))?;
        if let Ok(h) = &self.cgroups {
            h.prime();
        }
        if !caller.is_root() {
            unmapped(&caller, spec.process.user)?;
        }
        let guard = self.naming.lock().await;
        let records = self.records()?;
        if records.len() >= MAX_CONTAINERS {
            return Err(Error::Unavailable(format!(
                "this node keeps {MAX_CONTAINERS} containers already: remove some (metac rm)"
            )));
        }
        let id = new_id();
        let name = match &spec.name {
            Some(n) => n.clone(),
            None => format!("{}-{}", base_name(&spec.process.args[0]), &id[..6]),
        };
        if records.iter().any(|r| r.name == name) {
            return Err(Error::BadOptions(format!(
                "the name {name:?} is taken: pick another or remove that container"
            )));
        }
        let dir = self.container_dir(&id);
        make_dir(&self.dir, 0o700)?;
        make_dir(&dir, 0o700)?;
        make_dir(&self.run, 0o711)?;
        let scratch = self.run.join(format!("{id}.root"));
        make_dir(&scratch, 0o755)?;
        let mut record = Record {
            id: id.clone(),
            name: name.clone(),
            owner: caller.clone(),
            spec: spec.clone(),
            created: shim::now_ms(),
            shim: None,
            binds: vec![],
            cgroup: None,
            paused: false,
            origin,
        };
        // Taken from here on: the record exists, so the name is the container's.
        self.put(&record)?;
        drop(guard);
        match self.start(&mut record, &mut spec, &scratch, attach).await {
            Ok(()) => Ok(self.info(&record)),
            Err(e) => {
                self.cleanup(&record).await;
                let _ = self.ctx.store.remove(&format!("{KEY}{id}"));
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_dir(&scratch);
                Err(e)
            }
        }
    }

    async fn start(
        self: &Arc<Self>,
        record: &mut Record,
        spec: &mut Spec,
        scratch: &Path,
        attach: bool,
    ) -> Result<(), Error> {
        let id = record.id.clone();
        let dir = self.container_dir(&id);
        // Refs are bound for the container's life, as its owner, at a mountpoint in its directory.
        let mut binding = vec![];
        for (i, m) in spec.mounts.iter().enumerate() {
            let Source::Ref(r) = &m.source else { continue };
            let reference: Ref = r.parse().map_err(|e| Error::BadOptions(format!("bad ref in --mount: {e}")))?;
            if reference.token.kind() != Kind::Fs {
                return Err(Error::BadOptions(format!(
                    "--mount {} takes an fs ref; this one is for a {} resource",
                    m.target.display(),
                    reference.token.kind()
                )));
            }
            let at = self.run.join(format!("{id}.mnt{i}"));
            make_dir(&at, 0o755)?;
            if !record.owner.is_root() {
                let (uid, gid) = (record.owner.uid, record.owner.gid);
                std::os::unix::fs::chown(&at, Some(uid), Some(gid)).map_err(io_err("chown the mountpoint"))?;
            }
            // Read-only content comes through the fs kind's content cache (by hash, verified), so a program run
            // again from the same ref is not fetched again.
            let options = serde_json::json!({ "mountpoint": at, "read_only": m.read_only, "cache": m.read_only });
            let bind_as = record.origin.as_ref().map_or_else(|| record.owner.clone(), |o| o.bind_as.clone());
            if !bind_as.is_root() && bind_as.uid != record.owner.uid {
                std::os::unix::fs::chown(&at, Some(bind_as.uid), Some(bind_as.gid))
                    .map_err(io_err("chown the mountpoint"))?;
            }
            let started = self.ctx.binder.bind(reference, options, false, bind_as).await?;
            record.binds.push(started.id.clone());
            self.put(record)?;
            binding.push((i, started.status, at));
        }
        // The binds come up side by side (each its own connection and mount); the container waits for all.
        let ups = binding.iter().map(|(i, status, _)| wait_up(status, &spec.mounts[*i].target));
        futures::future::try_join_all(ups).await?;
        for (i, _, at) in binding {
            spec.mounts[i].source = Source::Local(at);
        }
        if let Ok(h) = &self.cgroups {
            // Recorded with the shim's pid below: a node that dies in between leaves a group named by the id,
            // which `cleanup` finds by that name.
            let cg = h.create(&id, &spec.limits).map_err(|e| Error::Unavailable(format!("cgroup: {e}")))?;
            record.cgroup = Some(cg.name().to_string());
        } else if spec.limits != Limits::default() {
            let why = self.cgroups.as_ref().err().cloned().unwrap_or_default();
            return Err(Error::Unavailable(format!("limits need cgroups, and this node has none it can use: {why}")));
        }
        let owner = if record.owner.is_root() {
            User { uid: 0, gid: 0 }
        } else {
            User { uid: record.owner.uid, gid: record.owner.gid }
        };
        let cfg = Config {
            id: id.clone(),
            name: record.name.clone(),
            spec: spec.clone(),
            owner,
            cgroup: record.cgroup.clone(),
            socket: self.socket(&id),
            scratch: scratch.to_path_buf(),
            wait_attach: attach,
        };
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&cfg).expect("config serializes"))
            .map_err(io_err("write config.json"))?;
        let (shim_pid, _pid) = self.spawn_shim(&dir).await?;
        record.shim = Some(shim_pid);
        self.put(record)?;
        self.watch(record.id.clone(), shim_pid);
        Ok(())
    }

    /// Starts `metac shim DIR` and reads its first word.
    async fn spawn_shim(&self, dir: &Path) -> Result<(u32, u32), Error> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err("pipe")(e.into()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("shim.log"))
            .map_err(io_err("open shim.log"))?;
        let mut cmd = tokio::process::Command::new(&self.shim_bin);
        cmd.arg("shim").arg(dir).stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let w_raw = w.as_raw_fd();
        // SAFETY: between fork and exec the closure only calls dup2, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(w_raw, shim::READY_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut first = cmd.spawn().map_err(io_err(format!("start {} shim", self.shim_bin.display())))?;
        drop(w);
        let _ = first.wait().await;
        let r = tokio::fs::File::from_std(std::fs::File::from(r));
        let mut line = String::new();
        let read = read_line(r, &mut line);
        match tokio::time::timeout(START_WAIT, read).await {
            Err(_) => return Err(Error::Unavailable("the container's shim did not answer within a minute".into())),
            Ok(Err(e)) => return Err(io_err("read the shim's answer")(e)),
            Ok(Ok(_)) => {}
        }
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("ok ") {
            let mut it = rest.split(' ').map(|v| v.parse::<u32>());
            if let (Some(Ok(shim)), Some(Ok(pid))) = (it.next(), it.next()) {
                return Ok((shim, pid));
            }
        }
        if let Some(why) = line.strip_prefix("error ") {
            return Err(Error::BadOptions(format!("the container could not start: {why}")));
        }
        let log = std::fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
        Err(Error::Unavailable(format!("the container's shim ended without a word: {}", log.trim())))
    }

    /// Watches a shim's pid; when it is gone the container has ended for good.
    fn watch(self: &Arc<Self>, id: String, shim_pid: u32) {
        let (tx, rx) = watch::channel(false);
        self.live.lock().expect("live lock").insert(id.clone(), rx);
        let me = Arc::clone(self);
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                r = wait_pid(shim_pid) => {
                    if let Err(e) = r {
                        tracing::warn!("cannot watch the shim of container {id}: {e}");
                    }
                }
                _ = stopping.wait_for(|s| *s) => return,
            }
            me.ended(&id).await;
            me.live.lock().expect("live lock").remove(&id);
            let _ = tx.send(true);
        });
    }

    /// A container's shim is gone: let go of its binds, and remove it if it asked for that.
    async fn ended(&self, id: &str) {
        let Ok(Some(v)) = self.ctx.store.get(&format!("{KEY}{id}")) else { return };
        let Ok(mut r) = serde_json::from_slice::<Record>(&v) else { return };
        self.cleanup(&r).await;
        r.binds.clear();
        r.shim = None;
        r.paused = false;
        if r.spec.remove {
            let _ = self.ctx.store.remove(&format!("{KEY}{id}"));
            let _ = std::fs::remove_dir_all(self.container_dir(id));
        } else {
            let _ = self.put(&r);
        }
    }

    /// Cuts a container's binds and removes what the shim would have (after a shim that died).
    async fn cleanup(&self, r: &Record) {
        for b in &r.binds {
            if let Err(e) = self.ctx.binder.unbind(b).await {
                tracing::debug!("unbind {b} of container {}: {e}", r.id);
            }
        }
        for i in 0..r.spec.mounts.len() {
            let _ = std::fs::remove_dir(self.run.join(format!("{}.mnt{i}", r.id)));
        }
        if let Ok(h) = &self.cgroups {
            let name = r.cgroup.as_deref().unwrap_or(&r.id);
            if let Ok(Some(cg)) = h.open(name) {
                let _ = cg.kill_all(libc::SIGKILL);
                let _ = cg.remove();
            }
        }
        let _ = std::fs::remove_file(self.socket(&r.id));
        let _ = std::fs::remove_dir(self.run.join(format!("{}.root", r.id)));
    }

    /// At node start: watch the shims still running; finish those that ended while the node was away.
    pub fn recover(self: &Arc<Self>) {
        let records = match self.records() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot read container records: {e}");
                return;
            }
        };
        for r in records {
            match r.shim {
                Some(pid) if shim_alive(pid, &r.id) => {
                    tracing::info!("re-adopting container {} ({}), shim pid {pid}", r.name, r.id);
                    self.watch(r.id.clone(), pid);
                    if r.origin.is_some() {
                        // A remote run lives as long as its stream to the calling node, which ended with the node
                        // that served it: no orphans.
                        tracing::info!("container {} ran for another node, whose stream is gone: killing it", r.id);
                        let me = Arc::clone(self);
                        tokio::spawn(async move {
                            if let Err(e) = me.kill_and_cut(&r.id, &Caller::root()).await {
                                tracing::warn!("cannot kill the remote run {}: {e}", r.id);
                            }
                        });
                    }
                }
                Some(_) => {
                    let me = Arc::clone(self);
                    tokio::spawn(async move { me.ended(&r.id).await });
                }
                None => {}
            }
        }
    }

    /// Sends a request to a container's shim and reads its reply.
    async fn ask(&self, r: &Record, req: &Request) -> Result<(), Error> {
        let mut s = self.connect(r).await?;
        let mut line = serde_json::to_vec(req).expect("request serializes");
        line.push(b'\n');
        s.write_all(&line).await?;
        let mut answer = String::new();
        let read = read_line(s, &mut answer);
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .map_err(|_| Error::Unavailable(format!("container {} did not answer", r.name)))??;
        let reply: Reply = serde_json::from_str(answer.trim())
            .map_err(|e| Error::Protocol(format!("container {}'s shim answered {answer:?}: {e}", r.name)))?;
        match reply.error {
            None => Ok(()),
            Some(e) => Err(Error::BadOptions(e)),
        }
    }

    async fn connect(&self, r: &Record) -> Result<tokio::net::UnixStream, Error> {
        let (st, alive) = self.state(r);
        if st.phase == Phase::Exited || !alive {
            return Err(Error::Unavailable(format!("container {} is not running", r.name)));
        }
        tokio::net::UnixStream::connect(self.socket(&r.id))
            .await
            .map_err(io_err(format!("connect to container {}'s shim", r.name)))
    }

    /// Kills a container at once and cuts its binds: a process whose files come from a node that went away could
    /// otherwise wait in its exit for that node (a close on a FUSE mount waits for the exporter).
    pub async fn kill_and_cut(&self, id: &str, caller: &Caller) -> Result<(), Error> {
        let r = self.find(id, caller)?;
        let killed = self.ask(&r, &Request::Kill { signal: libc::SIGKILL, stop: true }).await;
        for b in &r.binds {
            if let Err(e) = self.ctx.binder.unbind(b).await {
                tracing::debug!("unbind {b} of container {}: {e}", r.id);
            }
        }
        killed
    }

    /// Sends `signal` to a container's first process.
    pub async fn kill(&self, key: &str, caller: &Caller, signal: i32) -> Result<(), Error> {
        let r = self.find(key, caller)?;
        self.ask(&r, &Request::Kill { signal, stop: signal == libc::SIGKILL }).await
    }

    /// Stops a container: SIGTERM, and SIGKILL after `grace`; no restart after that. Returns how it ended.
    pub async fn stop(&self, key: &str, caller: &Caller, grace: Duration) -> Result<Option<Exit>, Error> {
        let r = self.find(key, caller)?;
        if r.paused {
            self.set_paused(&r, false)?;
        }
        if self.ask(&r, &Request::Kill { signal: libc::SIGTERM, stop: true }).await.is_err() {
            return Ok(self.wait_record(&r).await);
        }
        if tokio::time::timeout(grace, self.wait_record(&r)).await.is_err() {
            let _ = self.ask(&r, &Request::Kill { signal: libc::SIGKILL, stop: true }).await;
        }
        Ok(self.wait_record(&r).await)
    }

    /// Waits until a container has ended for good; returns how it ended.
    pub async fn wait(&self, key: &str, caller: &Caller) -> Result<Option<Exit>, Error> {
        let r = self.find(key, caller)?;
        Ok(self.wait_record(&r).await)
    }

    async fn wait_record(&self, r: &Record) -> Option<Exit> {
        let rx = self.live.lock().expect("live lock").get(&r.id).cloned();
        if let Some(mut rx) = rx {
            let _ = rx.wait_for(|gone| *gone).await;
        }
        State::read(&self.container_dir(&r.id)).ok().and_then(|s| s.exit)
    }

    /// Removes a container: its record, logs and state. A running one only with `force` (it is killed).
    pub async fn remove(&self, key: &str, caller: &Caller, force: bool) -> Result<(), Error> {
        let r = self.find(key, caller)?;
        let (st, alive) = self.state(&r);
        if alive && st.phase != Phase::Exited {
            if !force {
                return Err(Error::Unavailable(format!(
                    "container {} is {}: stop it first, or remove it with -f",
                    r.name,
                    self.info(&r).state
                )));
            }
            if r.paused {
                self.set_paused(&r, false)?;
            }
            let _ = self.ask(&r, &Request::Kill { signal: libc::SIGKILL, stop: true }).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), self.wait_record(&r)).await;
        }
        self.cleanup(&r).await;
        self.ctx.store.remove(&format!("{KEY}{}", r.id))?;
        std::fs::remove_dir_all(self.container_dir(&r.id))
            .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
            .map_err(io_err("remove the container's directory"))?;
        Ok(())
    }

    fn cgroup_of(&self, r: &Record) -> Result<Cgroup, Error> {
        let h = self.cgroups.as_ref().map_err(|e| Error::Unavailable(format!("no cgroups: {e}")))?;
        let name =
            r.cgroup.as_ref().ok_or_else(|| Error::Unavailable(format!("container {} has no cgroup", r.name)))?;
        h.open(name)
            .map_err(|e| Error::Unavailable(format!("cgroup: {e}")))?
            .ok_or_else(|| Error::Unavailable(format!("container {} is not running", r.name)))
    }

    fn set_paused(&self, r: &Record, paused: bool) -> Result<(), Error> {
        let cg = self.cgroup_of(r)?;
        if paused { cg.freeze() } else { cg.thaw() }.map_err(|e| Error::Unavailable(format!("cgroup: {e}")))?;
        let mut r = r.clone();
        r.paused = paused;
        self.put(&r)
    }

    /// Freezes (`true`) or thaws a running container.
    pub fn pause(&self, key: &str, caller: &Caller, paused: bool) -> Result<(), Error> {
        let r = self.find(key, caller)?;
        let (st, alive) = self.state(&r);
        if !alive || st.phase == Phase::Exited {
            return Err(Error::Unavailable(format!("container {} is not running", r.name)));
        }
        self.set_paused(&r, paused)
    }

    /// Its cgroup's figures.
    pub fn stats(&self, key: &str, caller: &Caller) -> Result<(Info, Stats), Error> {
        let r = self.find(key, caller)?;
        let s = self.cgroup_of(&r)?.stats().map_err(|e| Error::Unavailable(format!("cgroup: {e}")))?;
        Ok((self.info(&r), s))
    }

    /// Changes a running container's limits (and its record's).
    pub fn update(&self, key: &str, caller: &Caller, limits: Limits) -> Result<Info, Error> {
        let mut r = self.find(key, caller)?;
        let mut spec = r.spec.clone();
        let l = &mut spec.limits;
        l.memory = limits.memory.or(l.memory);
        l.cpus = limits.cpus.or(l.cpus);
        l.pids = limits.pids.or(l.pids);
        spec.check().map_err(|e| Error::BadOptions(e.0))?;
        self.cgroup_of(&r)?.update(&limits).map_err(|e| Error::BadOptions(format!("cgroup: {e}")))?;
        r.spec = spec;
        self.put(&r)?;
        Ok(self.info(&r))
    }

    /// Opens an attached stream to a container's shim: the request is sent, frames follow.
    pub async fn attach(&self, key: &str, caller: &Caller, stdin: bool) -> Result<tokio::net::UnixStream, Error> {
        let r = self.find(key, caller)?;
        let (st, alive) = self.state(&r);
        if st.phase == Phase::Exited || !alive {
            return Err(Error::Unavailable(format!("container {} is not running (see metac logs {})", r.name, r.name)));
        }
        let mut s = self.connect(&r).await?;
        let mut line = serde_json::to_vec(&Request::Attach { stdin }).expect("request serializes");
        line.push(b'\n');
        s.write_all(&line).await?;
        Ok(s)
    }

    /// Starts another process in a running container (`metac exec`): the stream carries its frames.
    pub async fn exec(&self, key: &str, caller: &Caller, process: Process) -> Result<tokio::net::UnixStream, Error> {
        process.check().map_err(|e| Error::BadOptions(e.0))?;
        let r = self.find(key, caller)?;
        if !caller.is_root() {
            unmapped(caller, process.user)?;
        }
        let mut s = self.connect(&r).await?;
        let mut line = serde_json::to_vec(&Request::Exec { process }).expect("request serializes");
        line.push(b'\n');
        s.write_all(&line).await?;
        Ok(s)
    }

    /// The directory with a container's logs.
    pub fn log_dir(&self, key: &str, caller: &Caller) -> Result<(Record, PathBuf), Error> {
        let r = self.find(key, caller)?;
        let d = self.container_dir(&r.id);
        Ok((r, d))
    }

    /// Whether the container's shim still runs (its output may still grow).
    pub fn running(&self, r: &Record) -> bool {
        let (st, alive) = self.state(r);
        alive && st.phase != Phase::Exited
    }
}

/// The container `key` (id, name, or a unique id prefix) among `records`.
fn find_in(records: Vec<Record>, key: &str) -> Result<Record, Error> {
    if let Some(r) = records.iter().find(|r| r.id == key || r.name == key) {
        return Ok(r.clone());
    }
    let by_prefix: Vec<&Record> = records.iter().filter(|r| !key.is_empty() && r.id.starts_with(key)).collect();
    match by_prefix.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::NotFound(format!("no container {key:?}"))),
        _ => Err(Error::BadOptions(format!("{key:?} is the start of more than one container's id"))),
    }
}

/// Refuses a user a rootless container of `caller`'s cannot run as (see [`crate::idmap`]).
fn unmapped(caller: &Caller, user: Option<User>) -> Result<(), Error> {
    match user {
        Some(u) if !crate::idmap::Maps::of_host(caller.uid, caller.gid).maps(u.uid, u.gid) => {
            Err(Error::BadOptions(format!(
                "{caller} runs rootless containers: root inside is {caller} outside, and user {}:{} is not mapped \
                 (no subordinate ids for it in /etc/subuid and /etc/subgid); drop --user",
                u.uid, u.gid
            )))
        }
        _ => Ok(()),
    }
}

/// Waits until an fs bind is mounted, or says why it is not.
async fn wait_up(status: &metac_resource::Status, target: &Path) -> Result<(), Error> {
    use metac_resource::session::State as S;
    let settled = status.wait_for(|s| *s == S::Up || s.is_final());
    match tokio::time::timeout(Duration::from_secs(30), settled).await {
        Ok(S::Up) => Ok(()),
        Ok(S::Refused { reason }) => Err(Error::Refused { by: "the exporting node".into(), reason }),
        Ok(s) => Err(Error::Unavailable(format!(
            "the ref for {} could not be mounted: {}",
            target.display(),
            s.reason().unwrap_or(s.name())
        ))),
        Err(_) => {
            let s = status.state();
            Err(Error::Unavailable(format!(
                "the ref for {} is not mounted after 30 s ({}{})",
                target.display(),
                s.name(),
                s.reason().map(|r| format!(": {r}")).unwrap_or_default()
            )))
        }
    }
}

/// Whether `pid` is the shim of container `id` (and not a process that took its pid since).
fn shim_alive(pid: u32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"shim") && String::from_utf8_lossy(&c).contains(id))
}

/// Waits for a process that is not this one's child to end: a pidfd turns readable.
async fn wait_pid(pid: u32) -> io::Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ESRCH) { Ok(()) } else { Err(e) };
    }
    // SAFETY: the descriptor is new and owned here only.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: `fd` is owned by this function and outlives the registration, dropped first at its end.
    let afd =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd.as_raw_fd(), tokio::io::Interest::READABLE) }?;
    let _ = afd.readable().await?;
    drop(afd);
    drop(fd);
    Ok(())
}

fn make_dir(p: &Path, mode: u32) -> Result<(), Error> {
    if let Some(parent) = p.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)
            .map_err(io_err(format!("make {}", parent.display())))?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(io_err(format!("chmod {}", p.display())))
        }
        Err(e) => Err(io_err(format!("make {}", p.display()))(e)),
    }
}

/// 12 random hex digits.
fn new_id() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A name from a command: its file name, cut to what names allow.
pub(crate) fn base_name(cmd: &str) -> String {
    let base = Path::new(cmd).file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let clean: String = base.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(40).collect();
    if clean.is_empty() || !clean.as_bytes()[0].is_ascii_alphanumeric() {
        "c".into()
    } else {
        clean
    }
}

/// Reads one line of at most 64 KiB from `r`.
async fn read_line(r: impl tokio::io::AsyncRead + Unpin, line: &mut String) -> io::Result<usize> {
    use tokio::io::AsyncReadExt;
    tokio::io::BufReader::new(r.take(64 * 1024)).read_line(line).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_command() {
        assert_eq!(base_name("/bin/sleep"), "sleep");
        assert_eq!(base_name("./my prog"), "myprog");
        assert_eq!(base_name("..."), "c");
        assert_eq!(new_id().len(), 12);
        assert_ne!(new_id(), new_id());
    }
}
