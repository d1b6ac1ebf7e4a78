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

#[cfg(test)]
mod tests {
    use super::*;

    /// Node-to-node requests are pinned: nodes of different versions must keep understanding each other.
    #[test]
    fn encoding_is_pinned() {
        assert_eq!(encode(&Request::Revoke { token: vec![7, 8] }), [0, 2, 7, 8]);
        assert_eq!(encode(&Response::Ok("ok".into())), [0, 2, b'o', b'k']);
        assert_eq!(encode(&Response::Err("no".into())), [1, 2, b'n', b'o']);
        assert!(matches!(decode::<Request>(&[0, 1, 9]), Ok(Request::Revoke { token }) if token == [9]));
        assert!(decode::<Request>(&[5]).unwrap_err().contains("malformed rpc message"));
    }
}
