//! The one framing helper: a frame is a u32 big-endian length and that many bytes of postcard. Reads are bounded
//! by a maximum the caller gives, checked before anything is allocated.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Framing errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes is larger than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Decode(String),
}

/// Writes one frame and flushes.
pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> Result<(), Error> {
    let body = postcard::to_allocvec(msg).map_err(|e| Error::Decode(e.to_string()))?;
    let len = u32::try_from(body.len()).map_err(|_| Error::TooLarge { len: body.len(), max: u32::MAX as usize })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame of at most `max` bytes.
pub async fn read<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R, max: usize) -> Result<T, Error> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(Error::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    decode(&body)
}

/// Decodes a frame body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let (v, rest) = postcard::take_from_bytes(body).map_err(|e| Error::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Error::Decode(format!("{} unexpected bytes after the message", rest.len())));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hello, Reply};

    #[tokio::test]
    async fn round_trip_and_bounds() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let h = Hello { token: vec![1, 2, 3], protocol: "nbd".into(), version: 1 };
        write(&mut a, &h).await.unwrap();
        assert_eq!(read::<_, Hello>(&mut b, 1024).await.unwrap(), h);
        write(&mut a, &h).await.unwrap();
        assert!(matches!(read::<_, Hello>(&mut b, 4).await, Err(Error::TooLarge { max: 4, .. })));
    }

    #[tokio::test]
    async fn handshake_refusal_carries_the_reason() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let _: Hello = read(&mut b, 1024).await.unwrap();
            write(&mut b, &Reply::Refuse { reason: "expired".into() }).await.unwrap();
        });
        let h = Hello { token: vec![], protocol: "nbd".into(), version: 1 };
        let err = crate::hello(&mut a, &h).await.unwrap_err();
        assert_eq!(err.to_string(), "refused by the exporting node: expired");
        server.await.unwrap();
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut body = postcard::to_allocvec(&Reply::Accept).unwrap();
        assert_eq!(decode::<Reply>(&body).unwrap(), Reply::Accept);
        body.push(0);
        assert_eq!(
            decode::<Reply>(&body).unwrap_err().to_string(),
            "malformed frame: 1 unexpected bytes after the message"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_error(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decode::<Hello>(&bytes);
            let _ = decode::<Reply>(&bytes);
        }
    }
}
