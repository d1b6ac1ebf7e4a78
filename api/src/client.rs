//! The typed async client of the node's local API: one HTTP/1.1 connection per call over the Unix socket, JSON in
//! and out, chunked bodies read frame by frame for streams, and HTTP upgrades for interactive sessions.
//!
//! A connection per call keeps the client stateless (a node restarted between two calls is simply reached again)
//! and costs a few tens of microseconds on a Unix socket.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONNECTION, CONTENT_TYPE, HOST, TE, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::progress::Progress;
use crate::types::ErrorBody;
use crate::{Error, MAX_REQUEST};

/// Largest JSON answer read: far above any real listing (a 100k-node mesh's peers are a few tens of MiB), there
/// only so that a confused server cannot exhaust the client's memory.
const MAX_ANSWER: usize = 128 << 20;

/// The trailer a node ends a streamed body with when the transfer behind it failed: the reason, in words. Asked for
/// with `te: trailers`; a client that does not ask sees the body cut instead.
pub const ERROR_TRAILER: &str = "metac-error";

/// The protocol named in `upgrade:` when a call asks for a raw bidirectional stream.
pub const UPGRADE_PROTOCOL: &str = "metac";

/// The IO of an upgraded connection: bytes both ways, no HTTP framing any more.
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// A client of the node listening on one socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Option<Duration>,
}

impl Client {
    /// A client for the node listening on `socket`; nothing is connected until the first call.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client { socket: socket.into(), timeout: None }
    }

    /// Bounds every call: a JSON call must be answered in full, a stream or upgrade must get its head, within `t`.
    pub fn with_timeout(mut self, t: Duration) -> Client {
        self.timeout = Some(t);
        self
    }

    /// The socket this client calls.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`, answer decoded as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.bounded(path, async { json(self.send(Method::GET, path, None, false).await?).await }).await
    }

    /// `POST path` with a JSON body, answer decoded as `T`.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Error> {
        let body = encode(path, body)?;
        self.bounded(path, async { json(self.send(Method::POST, path, Some(body), false).await?).await }).await
    }

    /// `DELETE path`, answer decoded as `T`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.bounded(path, async { json(self.send(Method::DELETE, path, None, false).await?).await }).await
    }

    /// `POST path` with a JSON body to a streaming endpoint: an error answer is returned as [`Error::Api`], a
    /// success as the stream of its body.
    pub async fn post_stream<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<BodyStream, Error> {
        let body = encode(path, body)?;
        let resp = self.bounded(path, self.send(Method::POST, path, Some(body), false)).await?;
        if !resp.status().is_success() {
            return Err(failure(resp).await);
        }
        let (parts, body) = resp.into_parts();
        Ok(BodyStream { body, headers: parts.headers, bytes: 0 })
    }

    /// Calls a streaming endpoint and copies its body to `out`, with bytes and rate on stderr if `progress`.
    /// Returns the bytes copied.
    pub async fn copy_to<B, W>(&self, path: &str, body: &B, out: &mut W, progress: bool) -> Result<u64, Error>
    where
        B: Serialize + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut stream = self.post_stream(path, body).await?;
        let mut progress = Progress::new(progress);
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    progress.finish(stream.bytes());
                    return Err(e);
                }
            };
            out.write_all(&chunk).await.map_err(|source| Error::Write { bytes: stream.bytes(), source })?;
            progress.update(stream.bytes());
        }
        out.flush().await.map_err(|source| Error::Write { bytes: stream.bytes(), source })?;
        progress.finish(stream.bytes());
        Ok(stream.bytes())
    }

    /// `POST path` with a JSON body asking to upgrade the connection (`connection: upgrade`, `upgrade: metac`);
    /// on `101 Switching Protocols` returns the raw connection, for sessions such as attach and exec.
    pub async fn upgrade<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<Upgraded, Error> {
        let body = encode(path, body)?;
        let resp = self.bounded(path, self.send(Method::POST, path, Some(body), true)).await?;
        match resp.status() {
            StatusCode::SWITCHING_PROTOCOLS => {}
            s if s.is_success() => return Err(Error::NotUpgraded { status: s.as_u16() }),
            _ => return Err(failure(resp).await),
        }
        let io = hyper::upgrade::on(resp).await.map_err(|e| Error::Http { what: "upgrade", source: e.into() })?;
        Ok(TokioIo::new(io))
    }

    /// Connects and sends one request; the connection is driven by its own task so that a streamed body or an
    /// upgraded connection outlives this call.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, Error> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|error| self.not_connected(error))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Http { what: "handshake", source: e.into() })?;
        // The connection's own errors reach the caller through the response or its body.
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        // `te: trailers` lets a streaming answer end with the reason it failed (`ERROR_TRAILER`).
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://metac{path}"))
            .header(HOST, "metac")
            .header(TE, "trailers");
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if upgrade {
            req = req.header(CONNECTION, "upgrade").header(UPGRADE, UPGRADE_PROTOCOL);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| Error::BadPath { path: path.to_string(), source })?;
        sender.send_request(req).await.map_err(|e| Error::Http { what: "request", source: e.into() })
    }

    /// Why connecting failed, in words: a node that is not running, or a socket this user may not use.
    fn not_connected(&self, error: std::io::Error) -> Error {
        use std::os::unix::fs::MetadataExt;
        match (error.kind(), std::fs::metadata(&self.socket)) {
            (std::io::ErrorKind::PermissionDenied, Ok(m)) => {
                let group = (m.mode() & 0o060 == 0o060).then(|| crate::group::display(m.gid()));
                Error::Denied { socket: self.socket.clone(), group }
            }
            _ => Error::NotRunning { socket: self.socket.clone(), error },
        }
    }

    async fn bounded<T>(&self, path: &str, f: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        match self.timeout {
            None => f.await,
            Some(after) => tokio::time::timeout(after, f)
                .await
                .unwrap_or_else(|_| Err(Error::Timeout { path: path.to_string(), after })),
        }
    }
}

/// The body of a streaming answer, read frame by frame.
pub struct BodyStream {
    body: Incoming,
    headers: HeaderMap,
    bytes: u64,
}

impl BodyStream {
    /// The next chunk; `None` once the body ended cleanly, an [`Error::Failed`] with the node's reason if it ended
    /// with the [`ERROR_TRAILER`], an [`Error::Interrupted`] if it was cut.
    pub async fn next(&mut self) -> Option<Result<Bytes, Error>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => {
                        self.bytes += data.len() as u64;
                        return Some(Ok(data));
                    }
                    Err(frame) => {
                        let failed = frame.trailers_ref().and_then(|t| t.get(ERROR_TRAILER));
                        if let Some(why) = failed {
                            let message = String::from_utf8_lossy(why.as_bytes()).into_owned();
                            return Some(Err(Error::Failed { bytes: self.bytes, message }));
                        }
                    }
                },
                Err(source) => return Some(Err(Error::Interrupted { bytes: self.bytes, source })),
            }
        }
    }

    /// A header of the answer, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

fn encode<B: Serialize + ?Sized>(path: &str, body: &B) -> Result<Vec<u8>, Error> {
    let bytes = serde_json::to_vec(body).map_err(Error::Encode)?;
    if bytes.len() > MAX_REQUEST {
        return Err(Error::TooLarge { path: path.to_string(), size: bytes.len() });
    }
    Ok(bytes)
}

async fn read(resp: Response<Incoming>) -> Result<(StatusCode, Bytes), Error> {
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|source| Error::Http { what: "answer", source })?
        .to_bytes();
    Ok((status, bytes))
}

/// A JSON answer, or the node's error message.
async fn json<T: DeserializeOwned>(resp: Response<Incoming>) -> Result<T, Error> {
    let (status, bytes) = read(resp).await?;
    if !status.is_success() {
        return Err(api_error(status, &bytes));
    }
    serde_json::from_slice(&bytes).map_err(|source| Error::Decode { status: status.as_u16(), source })
}

/// The error of an error answer.
async fn failure(resp: Response<Incoming>) -> Error {
    match read(resp).await {
        Ok((status, bytes)) => api_error(status, &bytes),
        Err(e) => e,
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> Error {
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => b.error,
        // Not one of the node's own errors (a proxy, a panic): show what came, briefly.
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(200).collect();
            format!("the node answered {status} without an error message: {text:?}")
        }
    };
    Error::Api { status: status.as_u16(), message }
}
