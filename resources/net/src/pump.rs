//! The loops that move records: TAP -> stream (batched: what is waiting is taken with the first record and sent in
//! one write), stream -> TAP, a port's queue -> stream, and the switch's side of a TAP. Buffers are reused: a TAP's
//! records are read straight into the bytes that go out, so no record is allocated or copied on the binder, and
//! records read from a stream share a chunk until they are written.

use std::future::Future;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use metac_resource::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::frame::{self, MAX_RECORD};
use crate::proto;
use crate::switch::{Counters, PortHandle};
use crate::tap::Tap;

/// Bytes gathered before one write to a stream.
const BATCH: usize = 256 << 10;
/// Bytes read from a stream at a time.
const CHUNK: usize = 1 << 20;

/// Records from `tap` to `w`, checked against `mtu` (rejects counted in `c.oversize`/`c.malformed`, sent ones in
/// `c.rx_*`). With `can_send` false (a read-only ref) records are read and dropped (`c.refused`), so the TAP's
/// queue does not fill. Returns only on an error.
pub async fn tap_to_stream<W: AsyncWrite + Unpin>(
    tap: &Tap,
    w: &mut W,
    mtu: u16,
    can_send: bool,
    c: &Counters,
    sent: impl Fn(u64),
) -> io::Result<()> {
    let mut out = BytesMut::with_capacity(BATCH + 2 * (MAX_RECORD + 4));
    loop {
        out.clear();
        let mut first = true;
        while out.len() < BATCH {
            let start = out.len();
            out.extend_from_slice(&[0; 4]);
            let got = if first { Some(tap.recv(&mut out).await?) } else { tap.try_recv(&mut out)? };
            let Some(n) = got else {
                out.truncate(start);
                break;
            };
            let keep = if !can_send {
                Counters::add(&c.refused, 1);
                false
            } else if let Err(r) = frame::check(&out[start + 4..], mtu) {
                c.reject(r);
                false
            } else {
                true
            };
            if keep {
                out[start..start + 4].copy_from_slice(&(n as u32).to_be_bytes());
                Counters::add(&c.rx_frames, 1);
                Counters::add(&c.rx_bytes, n.saturating_sub(frame::VNET_HDR) as u64);
                first = false;
            } else {
                out.truncate(start);
            }
        }
        if !out.is_empty() {
            w.write_all(&out).await?;
            w.flush().await?;
            sent(out.len() as u64);
        }
    }
}

/// Records off a stream, bounded ([`proto::decode`]): they share 1 MiB chunks, so reading one allocates nothing.
pub struct Records<R> {
    r: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> Records<R> {
    pub fn new(r: R) -> Records<R> {
        Records { r, buf: BytesMut::with_capacity(CHUNK) }
    }

    /// The next record; `None` when the stream ends. `received` counts the bytes read.
    pub async fn next(&mut self, received: &impl Fn(u64)) -> Result<Option<Bytes>, Error> {
        loop {
            if let Some(rec) = proto::decode(&mut self.buf).map_err(|e| Error::Protocol(e.to_string()))? {
                return Ok(Some(rec));
            }
            if self.buf.capacity() - self.buf.len() < MAX_RECORD + 4 {
                self.buf.reserve(CHUNK);
            }
            let n = self.r.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            received(n as u64);
        }
    }
}

/// Records from `r` written to `tap` (checked against `mtu`; what the kernel refuses is counted as malformed).
pub async fn stream_to_tap<R: AsyncRead + Unpin>(
    r: R,
    tap: &Tap,
    mtu: u16,
    c: &Counters,
    received: impl Fn(u64),
) -> Result<(), Error> {
    let mut records = Records::new(r);
    while let Some(rec) = records.next(&received).await? {
        write_checked(tap, &rec, mtu, c).await?;
    }
    Ok(())
}

/// Writes one record to `tap` if it passes [`frame::check`]; counts it either way (`c.tx_*` when written).
async fn write_checked(tap: &Tap, rec: &[u8], mtu: u16, c: &Counters) -> io::Result<()> {
    if let Err(r) = frame::check(rec, mtu) {
        c.reject(r);
        return Ok(());
    }
    match tap.send(rec).await {
        Ok(()) => {
            Counters::add(&c.tx_frames, 1);
            Counters::add(&c.tx_bytes, (rec.len() - frame::VNET_HDR) as u64);
            Ok(())
        }
        // The kernel's own check of the header (virtio_net_hdr_to_skb) refused it: a frame lost, not the device.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EIO) | Some(libc::ENOBUFS)) => {
            Counters::add(&c.malformed, 1);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A port's queue written to `w`, batched, until the queue closes or the stream breaks.
pub async fn queue_to_stream<W: AsyncWrite + Unpin>(
    rx: &mut mpsc::Receiver<Bytes>,
    w: &mut W,
    sent: impl Fn(u64),
) -> io::Result<()> {
    let mut out = Vec::with_capacity(BATCH + MAX_RECORD + 4);
    while let Some(r) = rx.recv().await {
        out.clear();
        proto::encode(&mut out, &r);
        while out.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => proto::encode(&mut out, &r),
                Err(_) => break,
            }
        }
        w.write_all(&out).await?;
        w.flush().await?;
        sent(out.len() as u64);
    }
    Ok(())
}

/// The exporter's own interface as a port: its frames into the switch. The switch writes frames for it straight
/// to the TAP ([`Tap::try_send`], made a direct port by the exporter).
pub async fn local_port(tap: Arc<Tap>, port: PortHandle, cancel: CancellationToken) {
    let reader = async {
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            if buf.capacity() - buf.len() < MAX_RECORD {
                buf.reserve(CHUNK);
            }
            match tap.recv(&mut buf).await {
                Ok(n) => port.forward(buf.split_to(n).freeze()),
                Err(e) => return e,
            }
        }
    };
    tokio::select! {
        e = reader => tracing::warn!(interface = tap.name(), "the segment's interface cannot be read: {e}"),
        _ = cancel.cancelled() => {}
    }
}

/// Runs `a` and `b` on tasks of their own (both directions of a bind, on both cores) until the first ends or
/// `cancel` fires; the other is stopped. `None` when cancelled.
pub async fn race<T: Send + 'static>(
    a: impl Future<Output = T> + Send + 'static,
    b: impl Future<Output = T> + Send + 'static,
    cancel: &CancellationToken,
) -> Option<T> {
    let (mut a, mut b) = (AbortOnDrop(tokio::spawn(a)), AbortOnDrop(tokio::spawn(b)));
    let r = tokio::select! {
        r = &mut a.0 => r.ok(),
        r = &mut b.0 => r.ok(),
        _ = cancel.cancelled() => None,
    };
    // Both tasks are gone when this returns, and what they held with them (a TAP goes with its last descriptor).
    for t in [&mut a, &mut b] {
        if !t.0.is_finished() {
            t.0.abort();
            let _ = (&mut t.0).await;
        }
    }
    r
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
