//! metac-net/1, the wire protocol of a bind. After the node's handshake (`Hello`, `Accept`) the exporter sends one
//! [`Welcome`] frame (a u32 big-endian length and postcard, the framing every kind uses); from then on both sides
//! send records, each a u32 big-endian length and a [`crate::frame`] record (virtio-net header and Ethernet
//! frame), as many in one write as are ready. A length outside [`MIN_RECORD`]..=[`MAX_RECORD`] ends the bind: the
//! stream cannot be trusted past it.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::frame::{MAX_RECORD, MIN_RECORD};

/// The protocol name a bind asks for.
pub const PROTOCOL: &str = "/metac/net/1";
/// The largest Welcome accepted.
pub const MAX_WELCOME: usize = 1024;

/// What the exporter tells a binder about the segment before the first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The segment's MTU: the binder's interface gets it, and larger frames are dropped.
    pub mtu: u16,
    /// False for a ref without `write`: the binder's frames are dropped (a monitor port).
    pub can_send: bool,
    /// The export's name, for listings.
    pub segment: String,
}

/// Why a stream of records cannot be read further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a record of {0} bytes, outside the {MIN_RECORD}..={MAX_RECORD} a frame may have")]
pub struct BadLength(pub usize);

/// Appends `record` to `out`, framed.
pub fn encode(out: &mut Vec<u8>, record: &[u8]) {
    out.extend_from_slice(&(record.len() as u32).to_be_bytes());
    out.extend_from_slice(record);
}

/// Takes the next whole record off the front of `buf`: `Ok(None)` when more bytes are needed. The length is checked
/// before anything is taken, so no length a peer sends makes this reserve or wait for more than [`MAX_RECORD`].
pub fn decode(buf: &mut BytesMut) -> Result<Option<Bytes>, BadLength> {
    let Some(len) = buf.get(..4) else { return Ok(None) };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if !(MIN_RECORD..=MAX_RECORD).contains(&len) {
        return Err(BadLength(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn records_round_trip_whole_and_in_pieces() {
        let a: Vec<u8> = (0..100u8).collect();
        let b = vec![7u8; MAX_RECORD];
        let mut wire = Vec::new();
        encode(&mut wire, &a);
        encode(&mut wire, &b);
        assert_eq!(&wire[..4], &[0, 0, 0, 100], "u32 big-endian length");
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(1000) {
            buf.extend_from_slice(chunk);
            while let Some(r) = decode(&mut buf).unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, vec![Bytes::from(a), Bytes::from(b)]);
        assert!(buf.is_empty());
    }

    #[test]
    fn lengths_out_of_bounds_end_the_stream() {
        for len in [0usize, MIN_RECORD - 1, MAX_RECORD + 1, u32::MAX as usize] {
            let mut buf = BytesMut::from(&(len as u32).to_be_bytes()[..]);
            assert_eq!(decode(&mut buf), Err(BadLength(len)));
        }
        assert_eq!(decode(&mut BytesMut::from(&[0u8, 0][..])), Ok(None));
    }

    /// The Welcome's encoding is pinned: an older or newer node reads the same bytes.
    #[test]
    fn welcome_encoding_is_pinned() {
        let w = Welcome { mtu: 1500, can_send: true, segment: "lab".into() };
        let b = postcard::to_allocvec(&w).unwrap();
        assert_eq!(b, [0xdc, 0x0b, 1, 3, b'l', b'a', b'b']);
        assert_eq!(postcard::from_bytes::<Welcome>(&b).unwrap(), w);
    }

    proptest! {
        #[test]
        fn any_bytes_decode_to_records_or_a_bad_length(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(r)) = decode(&mut buf) {
                prop_assert!(r.len() >= MIN_RECORD && r.len() <= MAX_RECORD);
            }
        }
    }
}
