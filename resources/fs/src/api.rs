//! The fs kind's API: its one route, merged into the node's, and the answer type its CLI reads.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/fs/stats` | [`Stats`]: content bytes this node's exports served, files hashed, and its content cache |
//!
//! Binds (`metac fs bind`, `ls`, `unbind`) use the node's generic `/v1/binds` routes with this kind's
//! [`FsBind`](crate::FsBind) options.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::cache;

/// `GET /v1/fs/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// File content bytes this node's exports served (the data of read answers), since the node started.
    pub served_bytes: u64,
    /// Files this node's exports read through to hash (answers from the memo not counted).
    pub hashes: u64,
    /// This node's content cache, for its read-only binds.
    pub cache: cache::Stats,
}

/// The kind's routes.
pub(crate) fn routes(fs: crate::Fs) -> Router {
    Router::new().route("/v1/fs/stats", get(stats)).with_state(fs)
}

async fn stats(State(fs): State<crate::Fs>) -> Json<Stats> {
    // The first look at the cache after a start lists its directory.
    let stats = tokio::task::spawn_blocking(move || fs.stats()).await;
    Json(stats.unwrap_or_default())
}
