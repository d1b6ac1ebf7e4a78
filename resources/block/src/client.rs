//! The bind side used by `metac file cat`: reads a whole export over NBD, in order, with requests pipelined.
//!
//! After the handshake (`NBD_OPT_GO`), two futures run joined in the caller's task. `send_reads` issues one READ
//! per chunk while the window (a semaphore of [`WINDOW`] permits) has room. `receive` reads replies, which the
//! protocol lets a server send in any order, parks early chunks in their window slot, writes chunks to the sink in
//! order and only then gives their permit back. So at most `WINDOW` chunks are requested or held at once, and a slow
//! sink slows the requests instead of growing memory. Finally `NBD_CMD_DISC`, and the server closes the stream.
//! A server that goes silent with the stream open is given up on after [`SERVER_STALL_TIMEOUT`] without a byte
//! while the client waits for one.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, ReadBuf};
use tokio::sync::Semaphore;

use crate::nbd::proto::{
    cmd, handshake, info, opt, rep, BlockSize, Greeting, Info, InfoRequest, OptionHeader, OptionReplyHeader, Request,
    SimpleReply, MAX_OPTION_LEN,
};
use crate::Error;

/// Bytes asked for by one READ.
const CHUNK: u32 = 1 << 20;
/// Most READs outstanding (or received but not yet written out).
const WINDOW: usize = 8;
/// Most option replies accepted in answer to `NBD_OPT_GO`.
const MAX_OPTION_REPLIES: usize = 64;
/// Buffer size of the stream reader.
const STREAM_BUF: usize = 128 << 10;

/// How long the client waits for the server's next byte, when it is waiting for one, before giving up on it.
pub const SERVER_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A stream whose reads fail once one has waited [`SERVER_STALL_TIMEOUT`] for data. Time passes only while a read
/// is pending: a slow sink, which keeps the client from reading, never trips it.
struct Watchdog<S> {
    inner: S,
    limit: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watchdog<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = this.limit;
                let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the NBD server sent nothing for {limit:?}"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watchdog<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// NBD client: reads the whole export in order and writes it to `out`; returns the bytes copied.
///
/// The handshake uses `NBD_OPT_GO` on the default export. Reads are `CHUNK`-sized (smaller if the server's
/// maximum block size says so) with up to `WINDOW` in flight. `progress(bytes_done, total)` is called once before
/// the first read and after every chunk written to `out`. At the end it sends `NBD_CMD_DISC` and waits for the
/// server to close the stream. A server silent for [`SERVER_STALL_TIMEOUT`] while a reply is due ends it with an
/// error.
pub async fn cat<S, W>(stream: S, out: &mut W, mut progress: impl FnMut(u64, u64)) -> Result<u64, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    W: AsyncWrite + Unpin,
{
    let stream = Watchdog { inner: stream, limit: SERVER_STALL_TIMEOUT, deadline: None };
    let mut stream = BufReader::with_capacity(STREAM_BUF, stream);
    let remote = negotiate(&mut stream).await?;
    let plan = Plan { total: remote.size, chunk: chunk_len(remote.block) };
    progress(0, plan.total);

    let (rd, wr) = tokio::io::split(stream);
    let window = Semaphore::new(WINDOW);
    let issued = AtomicU64::new(0);
    let (mut wr, mut rd) = tokio::try_join!(
        send_reads(wr, plan, &window, &issued),
        receive(rd, out, plan, &window, &issued, &mut progress),
    )?;

    let disc = Request { flags: 0, command: cmd::DISC, handle: plan.chunks(), offset: 0, len: 0 };
    wr.write_all(&disc.encode()).await?;
    wr.flush().await?;
    // Half-close so that a server waiting for end of stream sees it; it may have closed already.
    let _ = wr.shutdown().await;
    let mut rest = [0u8; 64];
    match rd.read(&mut rest).await {
        Ok(0) => Ok(plan.total),
        Ok(_) => Err(Error::Violation("server sent data after NBD_CMD_DISC".into())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(plan.total),
        Err(e) => Err(e.into()),
    }
}

/// What the server said about its export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Remote {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Block size constraints, if the server gave them.
    pub block: Option<BlockSize>,
}

/// Runs the handshake up to transmission (`NBD_OPT_GO` on the default export).
pub(crate) async fn negotiate<S>(s: &mut S) -> Result<Remote, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut greeting = [0u8; Greeting::LEN];
    s.read_exact(&mut greeting).await?;
    let greeting = Greeting::decode(&greeting)?;
    if greeting.flags & handshake::FIXED_NEWSTYLE == 0 {
        return Err(Error::Violation("the server does not speak fixed newstyle NBD".into()));
    }
    let mut client_flags = handshake::C_FIXED_NEWSTYLE;
    if greeting.flags & handshake::NO_ZEROES != 0 {
        client_flags |= handshake::C_NO_ZEROES;
    }
    let go = InfoRequest::encode(b"", &[info::BLOCK_SIZE]);
    let mut msg = client_flags.to_be_bytes().to_vec();
    msg.extend_from_slice(&OptionHeader { option: opt::GO, len: go.len() as u32 }.encode());
    msg.extend_from_slice(&go);
    s.write_all(&msg).await?;
    s.flush().await?;

    let mut export = None;
    let mut block = None;
    let mut data = Vec::new();
    for _ in 0..MAX_OPTION_REPLIES {
        let mut header = [0u8; OptionReplyHeader::LEN];
        s.read_exact(&mut header).await?;
        let header = OptionReplyHeader::decode(&header)?;
        if header.option != opt::GO {
            return Err(Error::Violation(format!("reply to option {} while negotiating NBD_OPT_GO", header.option)));
        }
        if header.len > MAX_OPTION_LEN {
            return Err(Error::Violation(format!("option reply of {} bytes", header.len)));
        }
        data.resize(header.len as usize, 0);
        s.read_exact(&mut data).await?;
        match header.reply {
            rep::ACK => {
                let (size, flags) =
                    export.ok_or_else(|| Error::Violation("NBD_OPT_GO without NBD_INFO_EXPORT".into()))?;
                return Ok(Remote { size, flags, block });
            }
            rep::INFO => match Info::decode(&data)? {
                Info::Export { size, flags } => export = Some((size, flags)),
                Info::BlockSize(b) => block = Some(b),
                Info::Other(_) => {}
            },
            reply if reply & rep::ERR != 0 => {
                let message = String::from_utf8_lossy(&data).into_owned();
                return Err(Error::Refused { option: opt::GO, reply, message });
            }
            // A reply type this client does not know, and not an error: skip it.
            _ => {}
        }
    }
    Err(Error::Violation(format!("more than {MAX_OPTION_REPLIES} replies to NBD_OPT_GO")))
}

/// The READ size: [`CHUNK`], or less if the server's maximum block size is smaller.
fn chunk_len(block: Option<BlockSize>) -> u32 {
    match block {
        Some(b) if b.max > 0 && b.max < CHUNK => {
            let aligned = if b.min > 1 { b.max - b.max % b.min } else { b.max };
            aligned.max(1)
        }
        _ => CHUNK,
    }
}

/// How the export is split into reads; chunk `i` has handle `i`.
#[derive(Debug, Clone, Copy)]
struct Plan {
    total: u64,
    chunk: u32,
}

impl Plan {
    fn chunks(&self) -> u64 {
        self.total.div_ceil(self.chunk.into())
    }

    /// Offset and length of chunk `i`.
    fn range(&self, i: u64) -> (u64, u32) {
        let offset = i * u64::from(self.chunk);
        (offset, (self.total - offset).min(self.chunk.into()) as u32)
    }
}

/// Sends one READ per chunk, as the window allows; returns the writer for the final `NBD_CMD_DISC`.
async fn send_reads<W>(wr: W, plan: Plan, window: &Semaphore, issued: &AtomicU64) -> Result<BufWriter<W>, Error>
where
    W: AsyncWrite + Unpin,
{
    let mut w = BufWriter::with_capacity(4096, wr);
    for i in 0..plan.chunks() {
        if window.available_permits() == 0 {
            w.flush().await?;
        }
        match window.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => break,
        }
        issued.store(i + 1, Ordering::Release);
        let (offset, len) = plan.range(i);
        w.write_all(&Request { flags: 0, command: cmd::READ, handle: i, offset, len }.encode()).await?;
    }
    w.flush().await?;
    Ok(w)
}

/// Receives every chunk and writes them to `out` in order; returns the reader to wait for the server's close.
async fn receive<R, W>(
    mut rd: R,
    out: &mut W,
    plan: Plan,
    window: &Semaphore,
    issued: &AtomicU64,
    progress: &mut impl FnMut(u64, u64),
) -> Result<R, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let truncated = |done, e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Truncated { done, total: plan.total },
        _ => Error::Io(e),
    };
    // Slot `i % WINDOW` holds chunk `i` if it arrived before the chunks preceding it were written.
    let mut slots: Vec<Option<Vec<u8>>> = (0..WINDOW).map(|_| None).collect();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut next = 0u64;
    let mut done = 0u64;
    while next < plan.chunks() {
        let mut header = [0u8; SimpleReply::LEN];
        rd.read_exact(&mut header).await.map_err(|e| truncated(done, e))?;
        let reply = SimpleReply::decode(&header)?;
        let i = reply.handle;
        let slot = (i % WINDOW as u64) as usize;
        if i < next || i >= issued.load(Ordering::Acquire) || slots[slot].is_some() {
            return Err(Error::Violation(format!("reply with unexpected handle {i}")));
        }
        let (offset, len) = plan.range(i);
        if reply.error != 0 {
            return Err(Error::Remote { errno: reply.error, offset, len });
        }
        let mut buf = spare.pop().unwrap_or_default();
        buf.resize(len as usize, 0);
        rd.read_exact(&mut buf).await.map_err(|e| truncated(done, e))?;
        slots[slot] = Some(buf);
        while let Some(buf) = slots[(next % WINDOW as u64) as usize].take() {
            out.write_all(&buf).await?;
            done += buf.len() as u64;
            next += 1;
            spare.push(buf);
            window.add_permits(1);
            progress(done, plan.total);
        }
    }
    out.flush().await?;
    Ok(rd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_the_export() {
        let p = Plan { total: 3 * u64::from(CHUNK) + 5, chunk: CHUNK };
        assert_eq!(p.chunks(), 4);
        assert_eq!(p.range(3), (3 * u64::from(CHUNK), 5));
        assert_eq!(Plan { total: 0, chunk: CHUNK }.chunks(), 0);
    }

    #[test]
    fn chunk_follows_block_size() {
        assert_eq!(chunk_len(None), CHUNK);
        assert_eq!(chunk_len(Some(BlockSize { min: 1, preferred: 4096, max: 32 << 20 })), CHUNK);
        assert_eq!(chunk_len(Some(BlockSize { min: 512, preferred: 4096, max: 65_000 })), 64_512);
    }
}
