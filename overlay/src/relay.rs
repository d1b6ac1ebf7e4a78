//! Framing of the relay path: WireGuard datagrams carried over a mesh stream (`/metac/overlay/1`) when no UDP path
//! works between two nodes. Each frame is a big-endian u16 length and that many bytes of one datagram, exactly as
//! it would have gone over UDP (already encrypted and authenticated by WireGuard). Decoding is bounded: a frame of
//! length 0 or above [`MAX_DATAGRAM`] is refused.

/// The mesh stream protocol of the relay path.
pub const PROTOCOL: &str = "/metac/overlay/1";

/// The largest datagram a frame may carry: an MTU-sized packet plus WireGuard's overhead, with room to spare.
pub const MAX_DATAGRAM: usize = 4096;

/// A frame that cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is 0.
    #[error("relay frame of length 0")]
    Empty,
    /// The length field is above the limit.
    #[error("relay frame of {0} bytes is larger than the limit of {MAX_DATAGRAM}")]
    TooLarge(usize),
}

/// Appends one frame holding `datagram` to `out`.
pub fn encode(datagram: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    check(datagram.len())?;
    out.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
    out.extend_from_slice(datagram);
    Ok(())
}

/// Checks a length field read from the wire.
pub fn check(len: usize) -> Result<usize, FrameError> {
    match len {
        0 => Err(FrameError::Empty),
        n if n > MAX_DATAGRAM => Err(FrameError::TooLarge(n)),
        n => Ok(n),
    }
}

/// A datagram and the bytes after its frame.
pub type Split<'a> = (&'a [u8], &'a [u8]);

/// Splits the first whole frame off `buf`: `Ok(Some((datagram, rest)))`, `Ok(None)` if `buf` holds only part of
/// one, or the error of a bad length.
pub fn decode(buf: &[u8]) -> Result<Option<Split<'_>>, FrameError> {
    let Some(head) = buf.get(..2) else { return Ok(None) };
    let len = check(u16::from_be_bytes([head[0], head[1]]) as usize)?;
    Ok(buf[2..].split_at_checked(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_bounds() {
        let mut out = vec![];
        encode(b"abc", &mut out).unwrap();
        encode(b"de", &mut out).unwrap();
        let (a, rest) = decode(&out).unwrap().unwrap();
        assert_eq!(a, b"abc");
        let (b, rest) = decode(rest).unwrap().unwrap();
        assert_eq!((b, rest), (&b"de"[..], &[][..]));
        assert_eq!(decode(&out[..4]).unwrap(), None);
        assert_eq!(decode(&[0, 0, 1]), Err(FrameError::Empty));
        assert_eq!(decode(&[0xff, 0xff]), Err(FrameError::TooLarge(65535)));
        assert_eq!(encode(&[0; MAX_DATAGRAM + 1], &mut out), Err(FrameError::TooLarge(MAX_DATAGRAM + 1)));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(Some((d, rest))) = decode(&bytes) {
                prop_assert_eq!(d.len() + rest.len() + 2, bytes.len());
            }
        }
    }
}
