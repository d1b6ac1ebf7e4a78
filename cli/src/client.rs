//! A small HTTP/1.1 client for the node's Unix socket API.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// A connection target: the node's API socket.
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the node listening on `socket`.
    pub fn new(socket: &Path) -> Client {
        Client { socket: socket.to_path_buf() }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            anyhow!(
                "metac node is not running (cannot connect to {}: {e}); start it with `metac node`, or point --socket / METAC_SOCKET at its socket",
                self.socket.display()
            )
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("API handshake")?;
        tokio::spawn(conn);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(format!("http://metac{path}"))
            .header("host", "metac")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))?;
        sender.send_request(req).await.context("API request")
    }

    /// Calls an endpoint and returns its JSON, turning API errors into errors with the node's message.
    pub async fn call(&self, method: Method, path: &str, body: Option<serde_json::Value>) -> Result<serde_json::Value> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.context("reading the API answer")?.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("the node answered {status} with something that is not JSON"))?;
        if !status.is_success() {
            bail!("{}", v.get("error").and_then(|e| e.as_str()).unwrap_or("unknown error"));
        }
        Ok(v)
    }

    /// Calls a streaming endpoint and copies the body to `out`, with progress on stderr if asked. Returns the bytes
    /// copied.
    pub async fn stream_to<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        path: &str,
        body: serde_json::Value,
        out: &mut W,
        show_progress: bool,
    ) -> Result<u64> {
        let resp = self.send(Method::POST, path, Some(body)).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            bail!("{}", v.get("error").and_then(|e| e.as_str()).unwrap_or("unknown error"));
        }
        let mut n = 0u64;
        let mut progress = Progress::new(show_progress);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                progress.finish(n);
                anyhow!("transfer interrupted after {n} bytes: {e}")
            })?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data).await?;
                n += data.len() as u64;
                progress.update(n);
            }
        }
        out.flush().await?;
        progress.finish(n);
        Ok(n)
    }
}

/// Bytes and rate on stderr, redrawn at most four times a second; only when asked (stderr is a terminal).
struct Progress {
    on: bool,
    start: Instant,
    last: Instant,
}

impl Progress {
    fn new(on: bool) -> Progress {
        let now = Instant::now();
        Progress { on, start: now, last: now }
    }

    fn update(&mut self, n: u64) {
        if self.on && self.last.elapsed() >= Duration::from_millis(250) {
            self.last = Instant::now();
            self.draw(n);
        }
    }

    fn draw(&self, n: u64) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let mib = n as f64 / (1 << 20) as f64;
        eprint!("\r{mib:10.1} MiB  {:8.1} MiB/s", mib / secs);
    }

    fn finish(&mut self, n: u64) {
        if self.on && self.start.elapsed() >= Duration::from_millis(250) {
            self.draw(n);
            eprintln!();
        }
        self.on = false;
    }
}
