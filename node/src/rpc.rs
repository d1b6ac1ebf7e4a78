//! Requests one node sends another over the mesh RPC (besides sync, which the mesh core does itself).

use serde::{Deserialize, Serialize};

/// A request to another node.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Revoke the token (its last block, so its descendants too). Any holder of a token may revoke it.
    Revoke { token: Vec<u8> },
}

/// The answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    /// Done; a message for the user.
    Ok(String),
    /// Refused, and why.
    Err(String),
}

/// Encodes a message.
pub fn encode<T: Serialize>(m: &T) -> Vec<u8> {
    postcard::to_allocvec(m).expect("rpc messages always encode")
}

/// Decodes a message.
pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("malformed rpc message: {e}"))
}
