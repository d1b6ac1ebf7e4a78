//! A synchronous client for callers without a runtime (the simulator's watchers, the benchmarks' pollers): it
//! owns a current-thread tokio runtime and runs the async [`crate::Client`] on it, so both speak exactly the same
//! HTTP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::Error;

/// A blocking client of the node listening on one socket.
#[derive(Debug)]
pub struct Client {
    inner: crate::Client,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// A client for the node listening on `socket`, with its own runtime (nothing is connected yet).
    pub fn new(socket: impl Into<PathBuf>) -> Result<Client, Error> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Error::Runtime)?;
        Ok(Client { inner: crate::Client::new(socket), rt })
    }

    /// Bounds every call to `t` (see [`crate::Client::with_timeout`]).
    pub fn with_timeout(mut self, t: Duration) -> Client {
        self.inner = self.inner.with_timeout(t);
        self
    }

    /// The socket this client calls.
    pub fn socket(&self) -> &Path {
        self.inner.socket()
    }

    /// `GET path`, answer decoded as `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.rt.block_on(self.inner.get(path))
    }

    /// `POST path` with a JSON body, answer decoded as `T`.
    pub fn post<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Error> {
        self.rt.block_on(self.inner.post(path, body))
    }

    /// `DELETE path`, answer decoded as `T`.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.rt.block_on(self.inner.delete(path))
    }

    /// `GET path` as untyped JSON.
    pub fn get_value(&self, path: &str) -> Result<Value, Error> {
        self.get(path)
    }

    /// `POST path` with a JSON body, as untyped JSON.
    pub fn post_value(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.post(path, body)
    }
}
