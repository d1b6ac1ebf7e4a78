//! The fs data path's buffers come from the node-wide pool of `metac_resource::buffers` (frames and large byte
//! strings); this module adds the pooled frame writer.

pub use metac_resource::buffers::{give, release_idle, take, LARGE};

use crate::proto::MAX_FRAME;

const _: () = assert!(MAX_FRAME <= metac_resource::buffers::POOLED, "a frame fits a pooled buffer");

/// Writes `msg` as one frame (u32 big-endian length, postcard), encoded into a pooled buffer.
pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin, T: serde::Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), metac_resource::Error> {
    use tokio::io::AsyncWriteExt;
    let mut body = take(MAX_FRAME);
    body.extend_from_slice(&[0; 4]);
    let mut body = postcard::to_extend(msg, body).map_err(|e| metac_resource::Error::Protocol(e.to_string()))?;
    let len = u32::try_from(body.len() - 4).map_err(|_| metac_resource::Error::Protocol("frame too large".into()))?;
    body[..4].copy_from_slice(&len.to_be_bytes());
    let r = async {
        w.write_all(&body).await?;
        w.flush().await
    }
    .await;
    give(body);
    r.map_err(metac_resource::Error::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pooled writer writes the bytes the project's one framing helper writes (and a request of a borrowed
    /// operation encodes as the owned one), so both ends read either.
    #[tokio::test]
    async fn pooled_frames_are_the_framing_helpers_bytes() {
        use crate::proto::{Op, Request};
        let op = Op::Write { fh: 3, offset: 1 << 40, data: vec![9; 100_000] };
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        write_frame(&mut ours, &crate::client::request_ref(7, &op)).await.unwrap();
        metac_resource::frame::write(&mut theirs, &Request { id: 7, op }).await.unwrap();
        assert_eq!(ours, theirs);
    }
}
