//! The compute kind's API routes, merged into the node's, and the request types the CLI sends.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/containers {spec, attach}` | create and start; answers its [`Info`] |
//! | `GET /v1/containers?all=true` | list |
//! | `GET /v1/containers/{id}` | inspect |
//! | `POST /v1/containers/{id}/attach {stdin}` | upgrade to [`stdio`](crate::stdio) frames with the container |
//! | `POST /v1/containers/{id}/logs {follow, tail, timestamps}` | its output, as frames in a streamed body |
//! | `POST /v1/containers/{id}/kill {signal}`, `.../stop {timeout}`, `.../wait` | signals and ends |
//! | `POST /v1/containers/{id}/pause`, `.../unpause`, `.../update {limits}`, `GET .../stats` | its cgroup |
//! | `DELETE /v1/containers/{id}?force=true` | remove |
//!
//! Every route acts for its caller: a user sees and manages their own containers, root all of them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::TokioIo;
use metac_api::server::Json;
use metac_resource::{Caller, Error};
use serde::{Deserialize, Serialize};

use crate::cgroup::{Limits, Stats};
use crate::logs;
use crate::manager::{Info, Manager};
use crate::remote::caller::{On, Remote};
use crate::remote::Request as RemoteReq;
use crate::spec::{Process, Spec};
use crate::stdio::{Exit, Frame};

/// `POST /v1/containers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReq {
    /// The container.
    pub spec: Spec,
    /// The client attaches next: hold the command until it does.
    #[serde(default)]
    pub attach: bool,
    /// Run on another node, with the caller's files (`--on`).
    #[serde(default)]
    pub on: Option<On>,
}

/// `POST /v1/containers/{id}/attach`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttachReq {
    /// The client sends input.
    #[serde(default)]
    pub stdin: bool,
}

/// `POST /v1/containers/{id}/exec`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecReq {
    /// The process to start in the container.
    pub process: Process,
}

/// `POST /v1/containers/{id}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsReq {
    /// Keep streaming what it prints until it ends.
    #[serde(default)]
    pub follow: bool,
    /// Only the last N lines.
    #[serde(default)]
    pub tail: Option<usize>,
    /// Each line with the time it was printed.
    #[serde(default)]
    pub timestamps: bool,
}

/// `POST /v1/containers/{id}/kill`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KillReq {
    /// The signal number.
    pub signal: i32,
}

/// `POST /v1/containers/{id}/stop`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StopReq {
    /// Seconds between SIGTERM and SIGKILL [default: 10].
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// `POST /v1/containers/{id}/update`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateReq {
    /// The limits to change (the others stay).
    pub limits: Limits,
}

/// How a container ended (`wait`, `stop`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ended {
    /// Its exit, if it ran.
    pub exit: Option<Exit>,
}

/// `GET /v1/containers/{id}/stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsReply {
    /// The container.
    pub info: Info,
    /// Its cgroup's figures.
    pub stats: Stats,
}

#[derive(Debug, Deserialize)]
struct AllQuery {
    #[serde(default)]
    all: bool,
    /// The node to list (`ps --on`).
    #[serde(default)]
    on: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    on: Option<String>,
}

/// `?on=PEER`: the container runs on that node.
#[derive(Debug, Default, Deserialize)]
struct OnQuery {
    #[serde(default)]
    on: Option<String>,
}

/// The routes' state: this node's containers and its runs on others.
#[derive(Clone)]
struct Containers {
    m: Arc<Manager>,
    r: Arc<Remote>,
}

/// The routes, on a node's containers and its remote runs. A container command whose id is a run started here,
/// or that names a node (`?on=PEER`), goes to the node it runs on.
pub fn routes(m: Arc<Manager>, r: Arc<Remote>) -> Router {
    Router::new()
        .route("/v1/containers", post(create).get(list))
        .route("/v1/containers/{id}", get(inspect).delete(remove))
        .route("/v1/containers/{id}/attach", post(attach))
        .route("/v1/containers/{id}/exec", post(exec))
        .route("/v1/containers/{id}/logs", post(logs_route))
        .route("/v1/containers/{id}/kill", post(kill))
        .route("/v1/containers/{id}/stop", post(stop))
        .route("/v1/containers/{id}/wait", post(wait))
        .route("/v1/containers/{id}/pause", post(pause))
        .route("/v1/containers/{id}/unpause", post(unpause))
        .route("/v1/containers/{id}/update", post(update))
        .route("/v1/containers/{id}/stats", get(stats))
        .with_state(Containers { m, r })
}

type M = State<Containers>;

async fn create(State(s): M, caller: Caller, Json(req): Json<RunReq>) -> Result<Json<Info>, Error> {
    match req.on {
        Some(on) => s.r.run(caller, req.spec, req.attach, on).await.map(Json),
        None => s.m.create(req.spec, caller, req.attach).await.map(Json),
    }
}

async fn list(State(s): M, caller: Caller, Query(q): Query<AllQuery>) -> Result<Json<Vec<Info>>, Error> {
    if let Some(on) = q.on {
        let r = s.r.resolve(&on, &caller).await?;
        let mut v: Vec<Info> = s.r.call(&r, &caller, RemoteReq::List { all: q.all }).await?;
        for i in &mut v {
            i.node = Some(r.token.issuer().to_hex());
        }
        return Ok(Json(v));
    }
    let mut v = s.m.list(&caller, q.all)?;
    v.extend(s.r.list(&caller, q.all));
    Ok(Json(v))
}

async fn inspect(
    State(s): M,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<OnQuery>,
) -> Result<Json<serde_json::Value>, Error> {
    if let Some(r) = s.r.target(&id, q.on.as_deref(), &caller).await? {
        return s.r.call(&r, &caller, RemoteReq::Inspect { id }).await.map(Json);
    }
    s.m.inspect(&id, &caller).map(|i| Json(serde_json::to_value(i).expect("inspect serializes")))
}

async fn remove(
    State(s): M,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<ForceQuery>,
) -> Result<Json<serde_json::Value>, Error> {
    if let Some(r) = s.r.target(&id, q.on.as_deref(), &caller).await? {
        let () = s.r.call(&r, &caller, RemoteReq::Remove { id: id.clone(), force: q.force }).await?;
        s.r.forget(&id, &caller);
    } else {
        s.m.remove(&id, &caller, q.force).await?;
    }
    Ok(Json(serde_json::json!({ "removed": id })))
}

async fn kill(
    State(s): M,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<OnQuery>,
    Json(req): Json<KillReq>,
) -> Result<Json<()>, Error> {
    if let Some(r) = s.r.target(&id, q.on.as_deref(), &caller).await? {
        return s.r.call(&r, &caller, RemoteReq::Kill { id, signal: req.signal }).await.map(Json);
    }
    s.m.kill(&id, &caller, req.signal).await.map(Json)
}

async fn stop(
    State(s): M,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<OnQuery>,
    Json(req): Json<StopReq>,
) -> Result<Json<Ended>, Error> {
    let secs = req.timeout.unwrap_or(10).min(3600);
    if let Some(r) = s.r.target(&id, q.on.as_deref(), &caller).await? {
        return s.r.call(&r, &caller, RemoteReq::Stop { id, timeout: secs }).await.map(Json);
    }
    s.m.stop(&id, &caller, Duration::from_secs(secs)).await.map(|exit| Json(Ended { exit }))
}

async fn wait(
    State(s): M,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<OnQuery>,
) -> Result<Json<Ended>, Error> {
    if q.on.is_none() {
        if let Some(r) = s.r.wait_started(&id, &caller).await {
            return r.map(|exit| Json(Ended { exit }));
        }
    }
    if let Some(r) = s.r.target(&id, q.on.as_deref(), &caller).await? {
        return s.r.call(&r, &caller, RemoteReq::Wait { id }).await.map(Json);
    }
    s.m.wait(&id, &caller).await.map(|exit| Json(Ended { exit }))
}

async fn pause(State(s): M, caller: Caller, Path(id): Path<String>) -> Result<Json<()>, Error> {
    s.m.pause(&id, &caller, true).map(Json)
}

async fn unpause(State(s): M, caller: Caller, Path(id): Path<String>) -> Result<Json<()>, Error> {
    s.m.pause(&id, &caller, false).map(Json)
}

async fn update(
    State(s): M,
    caller: Caller,
    Path(id): Path<String>,
    Json(req): Json<UpdateReq>,
) -> Result<Json<Info>, Error> {
    s.m.update(&id, &caller, req.limits).map(Json)
}

async fn stats(State(s): M, caller: Caller, Path(id): Path<String>) -> Result<Json<StatsReply>, Error> {
    s.m.stats(&id, &caller).map(|(info, stats)| Json(StatsReply { info, stats }))
}

/// The JSON body of an upgrade request.
async fn body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, Error> {
    let body = axum::body::to_bytes(body, metac_api::MAX_REQUEST)
        .await
        .map_err(|e| Error::BadOptions(format!("cannot read the request body: {e}")))?;
    serde_json::from_slice(&body).map_err(|e| Error::BadOptions(format!("bad request body: {e}")))
}

/// Checks the container, then splices the upgraded connection with the shim's socket (or, for a remote run, with
/// the stream to the node it runs on).
async fn attach(
    State(s): M,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<OnQuery>,
    req: Request,
) -> Response {
    let (parts, b) = req.into_parts();
    let a = match body::<AttachReq>(b).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if q.on.is_none() && s.r.awaits_client(&id, &caller) {
        let (r, c) = (Arc::clone(&s.r), caller.clone());
        return upgrade(parts, id.clone(), move |conn| async move {
            if r.attach_started(&id, &c, conn).is_some() {
                tracing::debug!("attach to {id}: the run no longer waits for a client");
            }
        });
    }
    match s.r.target(&id, q.on.as_deref(), &caller).await {
        Ok(Some(r)) => {
            let stream = s.r.open(&r, &caller, RemoteReq::Attach { id: id.clone(), stdin: a.stdin }).await;
            return relayed(parts, id, stream);
        }
        Ok(None) => {}
        Err(e) => return e.into_response(),
    }
    splice(parts, id.clone(), s.m.attach(&id, &caller, a.stdin).await)
}

/// Starts a process in the container, then splices as [`attach`].
async fn exec(State(s): M, caller: Caller, Path(id): Path<String>, Query(q): Query<OnQuery>, req: Request) -> Response {
    let (parts, b) = req.into_parts();
    let e = match body::<ExecReq>(b).await {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    match s.r.target(&id, q.on.as_deref(), &caller).await {
        Ok(Some(r)) => {
            let stream = s.r.open(&r, &caller, RemoteReq::Exec { id: id.clone(), process: e.process }).await;
            return relayed(parts, id, stream);
        }
        Ok(None) => {}
        Err(e) => return e.into_response(),
    }
    splice(parts, id.clone(), s.m.exec(&id, &caller, e.process).await)
}

fn splice(parts: axum::http::request::Parts, id: String, shim: Result<tokio::net::UnixStream, Error>) -> Response {
    let mut shim = match shim {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    upgrade(parts, id, move |mut io| async move {
        let _ = tokio::io::copy_bidirectional(&mut io, &mut shim).await;
    })
}

/// Relays an upgraded connection with a stream to the node a remote run is on, with pings.
fn relayed(
    parts: axum::http::request::Parts,
    id: String,
    stream: Result<metac_resource::BoxStream, Error>,
) -> Response {
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    upgrade(parts, id, move |mut io| async move {
        let end = crate::remote::relay(Some(&mut io), &mut stream, std::future::pending()).await;
        tracing::debug!("remote attach ended: {end:?}");
    })
}

/// Answers 101 and hands the upgraded connection to `then`.
fn upgrade<F, Fut>(parts: axum::http::request::Parts, id: String, then: F) -> Response
where
    F: FnOnce(metac_resource::BoxStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut req = Request::from_parts(parts, ());
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on.await {
            Ok(up) => then(Box::new(TokioIo::new(up))).await,
            Err(e) => tracing::debug!("attach to {id}: the upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "metac-stdio")
        .body(Body::empty())
        .expect("response")
}

async fn logs_route(
    State(s): M,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<OnQuery>,
    Json(req): Json<LogsReq>,
) -> Response {
    match s.r.target(&id, q.on.as_deref(), &caller).await {
        Ok(Some(r)) => {
            let stream = match s.r.open(&r, &caller, RemoteReq::Logs { id, logs: req }).await {
                Ok(st) => st,
                Err(e) => return e.into_response(),
            };
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(stream));
            return ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response();
        }
        Ok(None) => {}
        Err(e) => return e.into_response(),
    }
    let rx = match log_frames(&s.m, &id, &caller, req) {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    let stream = futures_stream(rx);
    ([(header::CONTENT_TYPE, "application/octet-stream")], Body::from_stream(stream)).into_response()
}

/// A container's output as encoded stdio frames, read (and followed) on a blocking thread.
pub fn log_frames(
    m: &Arc<Manager>,
    id: &str,
    caller: &Caller,
    req: LogsReq,
) -> Result<tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>, Error> {
    let (record, dir) = m.log_dir(id, caller)?;
    let follow = req.follow && m.running(&record);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    let m2 = Arc::clone(m);
    tokio::task::spawn_blocking(move || {
        let send = |r: &logs::Record| {
            let line = logs::format_line(r, req.timestamps);
            let f = match r.stream {
                logs::Stream::Stdout => Frame::Stdout(line),
                logs::Stream::Stderr => Frame::Stderr(line),
            };
            let mut b = Vec::new();
            f.encode(&mut b);
            tx.blocking_send(Ok(b.into())).is_ok()
        };
        let run = || -> Result<(), logs::Error> {
            let (records, mut follower) = if follow {
                let (r, f) = logs::Follow::start(&dir)?;
                (r, Some(f))
            } else {
                (logs::read(&dir)?, None)
            };
            let shown = match req.tail {
                Some(n) => logs::tail_lines(&records, n),
                None => logs::lines(&records),
            };
            if !shown.iter().all(&send) {
                return Ok(());
            }
            let Some(f) = follower.as_mut() else { return Ok(()) };
            // Lines cut across records are put together before they are sent.
            let mut lines = logs::Lines::new();
            let mut out = Vec::new();
            loop {
                match f.wait(Some(Duration::from_secs(1)))? {
                    logs::Next::Records(rs) => {
                        for r in &rs {
                            lines.push(r, &mut out);
                        }
                        if !out.drain(..).all(|l| send(&l)) {
                            return Ok(());
                        }
                    }
                    logs::Next::Ended | logs::Next::Stopped => break,
                    // A shim that died leaves no end mark: its not running is the end.
                    logs::Next::Timeout if tx.is_closed() || !m2.running(&record) => break,
                    logs::Next::Timeout => {}
                }
            }
            lines.finish().iter().all(&send);
            Ok(())
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    Ok(rx)
}

fn futures_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
