//! Remote launch (`metac run --on PEER`): a process runs on another node while its files come from the caller's.
//!
//! - the calling node ([`caller`]) finds a compute ref for the peer among its user's saved refs, exports what the
//!   process needs (the working directory read-write, the root read-only, `local:` mounts) made out to that peer
//!   for the run's life, and asks the peer to run the command with those mounts;
//! - the running node ([`serve`]) is the exporter of its compute ref: it checks the ref's `exec` right, runs the
//!   command in a container as the caller's user, binds the caller's files (read-only content through the fs
//!   kind's content cache), and relays the process's standard streams;
//! - both relay [`stdio`](crate::stdio) frames, each sending a [`Frame::Ping`] every second: a node that hears
//!   nothing from the other for [`SILENCE`] ends the run (the running node kills it, the calling node reports it).
//!
//! # Wire format (metac-run/1)
//!
//! After the resource handshake the calling node sends one request, the running node one answer; both are a u32
//! big-endian length and that many bytes of JSON (at most [`MAX_MESSAGE`]). The request is an [`Envelope`]; the
//! answer is an [`Answer`]. After the answer to `run` with `attach`, `attach`, `exec` and `logs`, the stream
//! carries stdio frames; after `run` without `attach`, only pings and, last, the exit.

pub mod caller;
pub mod serve;

use std::time::Duration;

use metac_resource::Error;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::api::LogsReq;
use crate::spec::{Process, Spec};
use crate::stdio::{Exit, Frame};

/// The largest request or answer, in bytes.
pub const MAX_MESSAGE: usize = 1 << 20;
/// How often each side says it is still there.
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// How long a side waits without a frame from the other before it ends the run.
pub const SILENCE: Duration = Duration::from_secs(3);
/// How long a request's answer may take (a run binds the caller's files first).
pub const ANSWER_WAIT: Duration = Duration::from_secs(120);

/// A request and the local user it is for, on the calling node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The user's uid on the calling node.
    pub uid: u32,
    /// Their gid.
    pub gid: u32,
    /// What they ask.
    pub request: Request,
}

/// What a calling node asks of a running node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Run a container; its mounts name refs the calling node made out to this one.
    Run {
        /// The container.
        spec: Spec,
        /// Relay its standard streams on this stream.
        attach: bool,
    },
    /// The user's runs here.
    List {
        /// Also those that ended.
        all: bool,
    },
    /// Everything about one run.
    Inspect {
        /// Its id or name.
        id: String,
    },
    /// Send a signal to a run's first process.
    Kill {
        /// Its id or name.
        id: String,
        /// The signal.
        signal: i32,
    },
    /// SIGTERM, then SIGKILL after `timeout` seconds.
    Stop {
        /// Its id or name.
        id: String,
        /// Seconds.
        timeout: u64,
    },
    /// Remove an ended run (a running one with `force`).
    Remove {
        /// Its id or name.
        id: String,
        /// Kill it first.
        force: bool,
    },
    /// Wait until it ends.
    Wait {
        /// Its id or name.
        id: String,
    },
    /// Attach to its standard streams.
    Attach {
        /// Its id or name.
        id: String,
        /// Send input.
        stdin: bool,
    },
    /// Run another process in it.
    Exec {
        /// Its id or name.
        id: String,
        /// The process.
        process: Process,
    },
    /// Its output.
    Logs {
        /// Its id or name.
        id: String,
        /// What of it.
        logs: LogsReq,
    },
}

/// The running node's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Done; the value depends on the request (a run's `Info`, a list, an `Ended`, `null`).
    Ok(serde_json::Value),
    /// Refused or failed: the HTTP status the calling node answers its user with, and why.
    Err {
        /// 400, 403, 404, 409, 5xx.
        status: u16,
        /// Why.
        message: String,
    },
}

impl Answer {
    /// The answer for a result.
    pub fn of<T: Serialize>(r: Result<T, Error>) -> Answer {
        match r {
            Ok(v) => Answer::Ok(serde_json::to_value(v).expect("answers serialize")),
            Err(e) => Answer::Err { status: e.status(), message: e.to_string() },
        }
    }

    /// The value, typed, or the error as the running node gave it.
    pub fn into_result<T: DeserializeOwned>(self, node: &str) -> Result<T, Error> {
        match self {
            Answer::Ok(v) => serde_json::from_value(v)
                .map_err(|e| Error::Protocol(format!("node {node} answered something unexpected: {e}"))),
            Answer::Err { status, message } => Err(match status {
                400 => Error::BadOptions(format!("node {node}: {message}")),
                403 => Error::Refused { by: format!("node {node}"), reason: message },
                404 => Error::NotFound(format!("node {node}: {message}")),
                409 => Error::Unavailable(format!("node {node}: {message}")),
                _ => Error::Protocol(format!("node {node}: {message}")),
            }),
        }
    }
}

/// Writes one message: a u32 big-endian length and JSON.
pub async fn send<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> Result<(), Error> {
    let body = serde_json::to_vec(msg).expect("messages serialize");
    if body.len() > MAX_MESSAGE {
        return Err(Error::BadOptions(format!(
            "the request is {} bytes, more than the {MAX_MESSAGE} a node takes",
            body.len()
        )));
    }
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one message of at most [`MAX_MESSAGE`] bytes.
pub async fn recv<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<T, Error> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(Error::Protocol(format!("a message of {len} bytes, more than the {MAX_MESSAGE} allowed")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    decode(&body)
}

/// Decodes a message body (bounded by its caller): refused with what is wrong.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Protocol(format!("a malformed message: {e}")))
}

/// How a relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The process exited, and its exit was passed on.
    Exited(Exit),
    /// The local side (the client, the shim) closed without an exit.
    LocalClosed,
    /// The other node closed the stream, or it broke.
    PeerClosed(String),
    /// Nothing came from the other node for [`SILENCE`].
    PeerSilent,
    /// Either side sent a frame out of step.
    Bad(String),
}

/// Relays stdio frames between `local` (a shim's socket on the running node, a client's connection on the
/// calling node) and `mesh`, pinging the other node every second and ending when it falls silent. With no `local`
/// only pings and the exit travel, and `done` (the process's end, on the running node) ends the relay with an
/// exit sent to the other node.
pub async fn relay<L, M>(local: Option<L>, mesh: M, done: impl std::future::Future<Output = Option<Exit>>) -> End
where
    L: AsyncRead + AsyncWrite + Unpin,
    M: AsyncRead + AsyncWrite + Unpin,
{
    let (mut mr, mut mw) = tokio::io::split(mesh);
    let (mut lr, mut lw) = match local {
        Some(l) => {
            let (r, w) = tokio::io::split(l);
            (Some(r), Some(w))
        }
        None => (None, None),
    };
    tokio::pin!(done);
    let mut done_open = lr.is_none();
    let mut from_local = Vec::with_capacity(64 * 1024);
    let mut from_mesh = Vec::with_capacity(64 * 1024);
    let mut lbuf = vec![0u8; 64 * 1024];
    let mut mbuf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Reset whenever anything comes from the other node.
    let silence = tokio::time::sleep(SILENCE);
    tokio::pin!(silence);
    loop {
        tokio::select! {
            () = &mut silence => return End::PeerSilent,
            _ = tick.tick() => {
                out.clear();
                Frame::Ping.encode(&mut out);
                if let Err(e) = write_all(&mut mw, &out).await {
                    return End::PeerClosed(e.to_string());
                }
            }
            exit = &mut done, if done_open => {
                done_open = false;
                if let Some(x) = exit {
                    out.clear();
                    Frame::Exit(x).encode(&mut out);
                    if let Err(e) = write_all(&mut mw, &out).await {
                        return End::PeerClosed(e.to_string());
                    }
                    let _ = mw.shutdown().await;
                    return End::Exited(x);
                }
            }
            n = read_some(lr.as_mut(), &mut lbuf) => {
                let n = match n {
                    Ok(0) | Err(_) => return End::LocalClosed,
                    Ok(n) => n,
                };
                from_local.extend_from_slice(&lbuf[..n]);
                out.clear();
                let exited = match pass(&mut from_local, &mut out) {
                    Ok(x) => x,
                    Err(e) => return End::Bad(format!("from this node's side: {e}")),
                };
                if let Err(e) = write_all(&mut mw, &out).await {
                    return End::PeerClosed(e.to_string());
                }
                if let Some(x) = exited {
                    let _ = mw.shutdown().await;
                    return End::Exited(x);
                }
            }
            n = mr.read(&mut mbuf) => {
                let n = match n {
                    Ok(0) => return End::PeerClosed("it closed the stream".into()),
                    Err(e) => return End::PeerClosed(e.to_string()),
                    Ok(n) => n,
                };
                silence.as_mut().reset(tokio::time::Instant::now() + SILENCE);
                from_mesh.extend_from_slice(&mbuf[..n]);
                out.clear();
                let exited = match pass(&mut from_mesh, &mut out) {
                    Ok(x) => x,
                    Err(e) => return End::Bad(format!("from the other node: {e}")),
                };
                if let Some(w) = lw.as_mut() {
                    if !out.is_empty() && write_all(w, &out).await.is_err() {
                        return End::LocalClosed;
                    }
                }
                if let Some(x) = exited {
                    return End::Exited(x);
                }
            }
        }
    }
}

/// Moves the whole frames at the start of `buf` into `out`, pings left out, up to and with an exit; answers the
/// exit if one came. A frame out of step is an error: the two sides are no longer in step.
fn pass(buf: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<Option<Exit>, crate::stdio::Error> {
    while let Some((f, used)) = Frame::decode(buf)? {
        buf.drain(..used);
        match f {
            Frame::Ping => {}
            Frame::Exit(x) => {
                f.encode(out);
                return Ok(Some(x));
            }
            f => f.encode(out),
        }
    }
    Ok(None)
}

async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, b: &[u8]) -> std::io::Result<()> {
    w.write_all(b).await?;
    w.flush().await
}

/// Reads from `r` if there is one; never ready otherwise.
async fn read_some<R: AsyncRead + Unpin>(r: Option<&mut R>, buf: &mut [u8]) -> std::io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
