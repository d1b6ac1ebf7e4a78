//! The mesh RPC: the messages nodes exchange (anti-entropy sync and application requests), their length-prefixed
//! postcard framing, and the admission proof that keeps a private mesh private.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::advert::Signed;
use crate::core::KeyRange;
use crate::identity::NodeKey;

/// Protocol of the mesh RPC (sync + application requests).
pub(super) const RPC_PROTOCOL: StreamProtocol = StreamProtocol::new("/metac/rpc/1");
/// Largest RPC message, checked before allocating. Syncs go in pages ([`PAGE_ENTRIES`], [`PAGE_BYTES`]) to fit it
/// at any mesh size; application requests are small.
pub const MAX_RPC_BYTES: usize = 1024 * 1024;
/// Digest entries in one sync page: at most 16384 x 42 bytes (a key and a varint seq), well under a frame.
pub const PAGE_ENTRIES: usize = 16 * 1024;
/// Bytes of adverts in one sync page answer; the first advert of a page is sent whatever its size (at most
/// [`crate::advert::MAX_ADVERT_BYTES`]), so a page always fits a frame.
pub const PAGE_BYTES: usize = 768 * 1024;

/// The key of admission proofs: derived from the mesh key, or a fixed one for the public mesh.
pub(super) fn mesh_secret(key: Option<&[u8]>) -> [u8; 32] {
    match key {
        Some(k) => blake3::derive_key("metac mesh key v1", k),
        None => blake3::derive_key("metac public mesh v1", b""),
    }
}

/// Proof that `from` knows the mesh key, bound to both peers so it cannot be replayed by anyone else.
pub(super) fn admission_proof(secret: &[u8; 32], from: &PeerId, to: &PeerId) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(b"metac admit v1");
    h.update(&from.to_bytes());
    h.update(&to.to_bytes());
    *h.finalize().as_bytes()
}

/// Compares a received admission proof with the expected one in constant time (blake3::Hash's `Eq`), so that the
/// time of a refusal says nothing about how many bytes matched.
pub(super) fn proof_matches(got: &[u8; 32], want: &[u8; 32]) -> bool {
    blake3::Hash::from(*got) == blake3::Hash::from(*want)
}

/// RPC requests between nodes. Variants are only ever added at the end: their index is their wire tag.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// A whole digest (an empty one: the admission proof alone). Answered with at most one page.
    Sync { proof: [u8; 32], digest: Vec<(NodeKey, u64)> },
    /// An application request (the node's own protocol).
    App(Vec<u8>),
    /// One page of a sync: the digest of the nodes in `range` (at most [`PAGE_ENTRIES`]).
    SyncPage { proof: [u8; 32], range: KeyRange, digest: Vec<(NodeKey, u64)> },
    /// Anti-entropy: a [`crate::core::Core::summary`] of the sender's table in `2^bits` key ranges (`bits` at most
    /// [`crate::core::MAX_SUMMARY_BITS`]).
    Summary { proof: [u8; 32], bits: u8, hashes: Vec<u64> },
}

/// RPC responses. Variants are only ever added at the end.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The answer to [`Request::Sync`].
    Sync { proof: [u8; 32], adverts: Vec<Signed> },
    /// Refused, and why.
    Denied(String),
    /// The answer to [`Request::App`].
    App(Vec<u8>),
    /// The answer to [`Request::SyncPage`]: adverts of the range the digest lacks, in key order, at most
    /// [`PAGE_BYTES`]; `next` is where the range goes on when the page is full.
    SyncPage { proof: [u8; 32], adverts: Vec<Signed>, next: Option<NodeKey> },
    /// The answer to [`Request::Summary`]: the buckets whose hashes differ from ours, by index.
    Summary { proof: [u8; 32], differ: Vec<u16> },
}

/// Decodes one RPC frame's payload as a request (what a peer sends us), bounded like the codec; for fuzzing and
/// tools.
pub fn decode_request(bytes: &[u8]) -> Result<Request, String> {
    decode(bytes)
}

/// Decodes one RPC frame's payload as a response, bounded like the codec.
pub fn decode_response(bytes: &[u8]) -> Result<Response, String> {
    decode(bytes)
}

/// Encodes a message as a frame's payload.
pub fn encode<M: Serialize>(msg: &M) -> Result<Vec<u8>, String> {
    let buf = postcard::to_allocvec(msg).map_err(|e| e.to_string())?;
    if buf.len() > MAX_RPC_BYTES {
        return Err(format!("rpc message of {} bytes is more than the {MAX_RPC_BYTES} allowed", buf.len()));
    }
    Ok(buf)
}

fn decode<M: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<M, String> {
    if bytes.len() > MAX_RPC_BYTES {
        return Err(format!("rpc frame of {} bytes is more than the {MAX_RPC_BYTES} allowed", bytes.len()));
    }
    match postcard::take_from_bytes(bytes) {
        Ok((m, [])) => Ok(m),
        Ok((_, rest)) => Err(format!("bad rpc frame: {} bytes after the message", rest.len())),
        Err(e) => Err(format!("bad rpc frame: {e}")),
    }
}

/// Length-prefixed postcard frames, bounded by [`MAX_RPC_BYTES`].
#[derive(Clone, Default)]
pub(super) struct Codec;

async fn read_frame<T: AsyncRead + Unpin + Send, M: serde::de::DeserializeOwned>(io: &mut T) -> io::Result<M> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_RPC_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("rpc frame of {len} bytes is too large")));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    decode(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_frame<T: AsyncWrite + Unpin + Send, M: Serialize>(io: &mut T, msg: &M) -> io::Result<()> {
    let buf = encode(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    io.write_all(&(buf.len() as u32).to_be_bytes()).await?;
    io.write_all(&buf).await?;
    io.close().await
}

impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Request> {
        read_frame(io).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Response> {
        read_frame(io).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()> {
        write_frame(io, &req).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()> {
        write_frame(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_proof_depends_on_key_and_direction() {
        let a = PeerId::random();
        let b = PeerId::random();
        let k1 = mesh_secret(Some(b"one"));
        let k2 = mesh_secret(Some(b"two"));
        let open = mesh_secret(None);
        assert_ne!(admission_proof(&k1, &a, &b), admission_proof(&k2, &a, &b));
        assert_ne!(admission_proof(&k1, &a, &b), admission_proof(&k1, &b, &a));
        assert_ne!(admission_proof(&k1, &a, &b), admission_proof(&open, &a, &b));
        let p = admission_proof(&k1, &a, &b);
        assert!(proof_matches(&p, &p));
        assert!(!proof_matches(&p, &admission_proof(&k2, &a, &b)));
    }

    /// The RPC messages' bytes are pinned: nodes of different versions must keep understanding each other.
    #[test]
    fn encoding_is_pinned() {
        let key = NodeKey([3; 32]);
        let sync = Request::Sync { proof: [1; 32], digest: vec![(key, 7)] };
        let app = Request::App(vec![1, 2, 3]);
        let denied = Response::Denied("no".into());
        let hex = |v: &[u8]| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let got = [
            hex(&postcard::to_allocvec(&sync).unwrap()),
            hex(&postcard::to_allocvec(&app).unwrap()),
            hex(&postcard::to_allocvec(&denied).unwrap()),
        ];
        let want =
            [format!("00{}01{}07", "01".repeat(32), "03".repeat(32)), "0103010203".to_string(), "01026e6f".to_string()];
        assert_eq!(got, want);
        // The page variants come after the old ones, whose tags stay.
        let page = Request::SyncPage { proof: [1; 32], range: KeyRange { start: key, end: None }, digest: vec![] };
        let next = Response::SyncPage { proof: [1; 32], adverts: vec![], next: Some(key) };
        assert_eq!(
            hex(&postcard::to_allocvec(&page).unwrap()),
            format!("02{}{}0000", "01".repeat(32), "03".repeat(32))
        );
        assert_eq!(
            hex(&postcard::to_allocvec(&next).unwrap()),
            format!("03{}0001{}", "01".repeat(32), "03".repeat(32))
        );
        // And the summary variants after those.
        let summary = Request::Summary { proof: [1; 32], bits: 1, hashes: vec![1, 300] };
        let differ = Response::Summary { proof: [1; 32], differ: vec![1] };
        assert_eq!(hex(&postcard::to_allocvec(&summary).unwrap()), format!("03{}010201ac02", "01".repeat(32)));
        assert_eq!(hex(&postcard::to_allocvec(&differ).unwrap()), format!("04{}0101", "01".repeat(32)));
    }

    /// The frame bound holds both ways, and trailing bytes are refused.
    #[test]
    fn frames_are_bounded_and_exact() {
        let big = Request::App(vec![0; MAX_RPC_BYTES]);
        assert!(encode(&big).unwrap_err().contains("more than"));
        assert!(decode_request(&vec![1; MAX_RPC_BYTES + 1]).unwrap_err().contains("more than"));
        let mut ok = encode(&Request::App(vec![1])).unwrap();
        assert_eq!(decode_request(&ok), Ok(Request::App(vec![1])));
        ok.push(0);
        assert!(decode_request(&ok).unwrap_err().contains("after the message"));
        // A full digest page and a full advert page fit a frame.
        let digest: Vec<(NodeKey, u64)> = (0..PAGE_ENTRIES).map(|i| (NodeKey([i as u8; 32]), u64::MAX)).collect();
        let range = KeyRange { start: NodeKey([0; 32]), end: Some(NodeKey([255; 32])) };
        assert!(encode(&Request::SyncPage { proof: [0; 32], range, digest }).is_ok());
    }
}
