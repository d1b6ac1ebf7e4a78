//! The bind side used by `metac file cat`, `get` and `put`: reads an export over NBD in order, or writes a range
//! of it, with requests pipelined.
//!
//! After the handshake (`NBD_OPT_GO`, [`Connection::open`]), two futures run joined in the caller's task. `send_reads` issues one READ
//! per chunk while the window (a semaphore of [`WINDOW`] permits) has room. `receive` reads replies, which the
//! protocol lets a server send in any order, parks early chunks in their window slot, writes chunks to the sink in
//! order and only then gives their permit back. So at most `WINDOW` chunks are requested or held at once, and a slow
//! sink slows the requests instead of growing memory. Writes mirror this: `send_writes` reads one chunk of the
//! input at a time and sends it as a WRITE while the window has room, `receive_acks` takes the answers and gives a
//! permit back as the acknowledged prefix grows; then one `NBD_CMD_FLUSH`, sent only after every WRITE was
//! answered, because it covers just those. Finally `NBD_CMD_DISC`, and the server closes the stream.
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
    cmd, handshake, info, opt, rep, tflag, BlockSize, Greeting, Info, InfoRequest, OptionHeader, OptionReplyHeader,
    Request, SimpleReply, MAX_OPTION_LEN,
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
pub async fn cat<S, W>(stream: S, out: &mut W, progress: impl FnMut(u64, u64)) -> Result<u64, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    W: AsyncWrite + Unpin,
{
    Connection::open(stream).await?.read_to(0, out, progress).await
}

/// An NBD connection past the handshake: the export chosen, its size known, requests not yet sent. Each transfer
/// ([`read_to`](Connection::read_to), [`write_from`](Connection::write_from)) consumes it and ends it with
/// `NBD_CMD_DISC`; the handshake comes first so that a caller can refuse (a read-only export, a size that does not
/// fit) before any byte moves.
pub struct Connection<S> {
    stream: BufReader<Watchdog<S>>,
    remote: Remote,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    /// Runs the handshake (`NBD_OPT_GO` on the default export) on `stream`.
    pub async fn open(stream: S) -> Result<Connection<S>, Error> {
        let stream = Watchdog { inner: stream, limit: SERVER_STALL_TIMEOUT, deadline: None };
        let mut stream = BufReader::with_capacity(STREAM_BUF, stream);
        let remote = negotiate(&mut stream).await?;
        Ok(Connection { stream, remote })
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.remote.size
    }

    /// Whether the server refuses writes (the ref or the export grants no write).
    pub fn read_only(&self) -> bool {
        self.remote.flags & tflag::READ_ONLY != 0
    }

    /// Reads the export from `offset` to its end, in order, into `out`; returns the bytes copied.
    /// `progress(position, size)` is called once before the first read and after every chunk written to `out`,
    /// with the position in the export (so it starts at `offset`).
    pub async fn read_to<W>(self, offset: u64, out: &mut W, mut progress: impl FnMut(u64, u64)) -> Result<u64, Error>
    where
        W: AsyncWrite + Unpin,
    {
        let Connection { stream, remote } = self;
        if offset > remote.size {
            return Err(Error::OutOfRange { end: offset, size: remote.size });
        }
        let plan = Plan { start: offset, total: remote.size, chunk: chunk_len(remote.block) };
        progress(offset, plan.total);
        let (rd, wr) = tokio::io::split(stream);
        let window = Semaphore::new(WINDOW);
        let issued = AtomicU64::new(0);
        let (wr, rd) = tokio::try_join!(
            send_reads(wr, plan, &window, &issued),
            receive(rd, out, plan, &window, &issued, &mut progress),
        )?;
        disconnect(wr, rd, plan.chunks()).await?;
        Ok(plan.total - offset)
    }

    /// Writes `len` bytes of `input` into the export at `offset`, with up to `WINDOW` WRITEs in flight, then
    /// `NBD_CMD_FLUSH` (if the server takes it) so that the data is durable on the server before this returns.
    /// `progress(position, end)` is called once before the first write and whenever the acknowledged prefix grows.
    /// Returns the bytes written. A read-only export or a range past its end is refused before any write.
    pub async fn write_from<R>(
        self,
        offset: u64,
        len: u64,
        input: &mut R,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, Error>
    where
        R: AsyncRead + Unpin,
    {
        let Connection { stream, remote } = self;
        if remote.flags & tflag::READ_ONLY != 0 {
            return Err(Error::ReadOnly);
        }
        let end = offset.saturating_add(len);
        if end > remote.size {
            return Err(Error::OutOfRange { end, size: remote.size });
        }
        let plan = Plan { start: offset, total: end, chunk: chunk_len(remote.block) };
        progress(offset, end);
        let (rd, wr) = tokio::io::split(stream);
        let window = Semaphore::new(WINDOW);
        let issued = AtomicU64::new(0);
        let (mut wr, mut rd) = tokio::try_join!(
            send_writes(input, wr, plan, &window, &issued),
            receive_acks(rd, plan, &window, &issued, &mut progress),
        )?;
        // Only now: a FLUSH covers the writes the server had answered when it received it.
        if remote.flags & tflag::SEND_FLUSH != 0 {
            let handle = plan.chunks();
            wr.write_all(&Request { flags: 0, command: cmd::FLUSH, handle, offset: 0, len: 0 }.encode()).await?;
            wr.flush().await?;
            let mut header = [0u8; SimpleReply::LEN];
            rd.read_exact(&mut header).await?;
            let reply = SimpleReply::decode(&header)?;
            if reply.handle != handle {
                return Err(Error::Violation(format!("reply with unexpected handle {} to FLUSH", reply.handle)));
            }
            if reply.error != 0 {
                return Err(Error::Remote { command: "flush", errno: reply.error, offset: 0, len: 0 });
            }
        }
        disconnect(wr, rd, plan.chunks() + 1).await?;
        Ok(len)
    }
}

/// Sends `NBD_CMD_DISC` and waits for the server to close the stream.
async fn disconnect<W, R>(mut wr: W, mut rd: R, handle: u64) -> Result<(), Error>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let disc = Request { flags: 0, command: cmd::DISC, handle, offset: 0, len: 0 };
    wr.write_all(&disc.encode()).await?;
    wr.flush().await?;
    // Half-close so that a server waiting for end of stream sees it; it may have closed already.
    let _ = wr.shutdown().await;
    let mut rest = [0u8; 64];
    match rd.read(&mut rest).await {
        Ok(0) => Ok(()),
        Ok(_) => Err(Error::Violation("server sent data after NBD_CMD_DISC".into())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
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

/// How the range `start..total` of the export is split into requests; chunk `i` has handle `i`.
#[derive(Debug, Clone, Copy)]
struct Plan {
    start: u64,
    total: u64,
    chunk: u32,
}

impl Plan {
    fn chunks(&self) -> u64 {
        (self.total - self.start).div_ceil(self.chunk.into())
    }

    /// Offset and length of chunk `i`.
    fn range(&self, i: u64) -> (u64, u32) {
        let offset = self.start + i * u64::from(self.chunk);
        (offset, (self.total - offset).min(self.chunk.into()) as u32)
    }
}

/// Takes a slot of the request window, first sending what `w` holds if there is none (the replies that free one
/// can only come for requests sent); false once the window is closed.
async fn slot<W: AsyncWrite + Unpin>(w: &mut BufWriter<W>, window: &Semaphore) -> Result<bool, Error> {
    if window.available_permits() == 0 {
        w.flush().await?;
    }
    Ok(match window.acquire().await {
        Ok(permit) => {
            permit.forget();
            true
        }
        Err(_) => false,
    })
}

/// Sends one READ per chunk, as the window allows; returns the writer for the final `NBD_CMD_DISC`.
async fn send_reads<W>(wr: W, plan: Plan, window: &Semaphore, issued: &AtomicU64) -> Result<BufWriter<W>, Error>
where
    W: AsyncWrite + Unpin,
{
    let mut w = BufWriter::with_capacity(4096, wr);
    for i in 0..plan.chunks() {
        if !slot(&mut w, window).await? {
            break;
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
        io::ErrorKind::UnexpectedEof => Error::Truncated { done: plan.start + done, total: plan.total },
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
            return Err(Error::Remote { command: "read", errno: reply.error, offset, len });
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
            progress(plan.start + done, plan.total);
        }
    }
    out.flush().await?;
    Ok(rd)
}

/// Sends one WRITE per chunk of `input`, as the window allows; returns the writer for FLUSH and DISC.
async fn send_writes<R, W>(
    input: &mut R,
    wr: W,
    plan: Plan,
    window: &Semaphore,
    issued: &AtomicU64,
) -> Result<BufWriter<W>, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut w = BufWriter::with_capacity(4096, wr);
    let mut buf = vec![0u8; plan.chunk.min(CHUNK) as usize];
    for i in 0..plan.chunks() {
        let (offset, len) = plan.range(i);
        let data = &mut buf[..len as usize];
        if let Err(e) = input.read_exact(data).await {
            return Err(match e.kind() {
                io::ErrorKind::UnexpectedEof => Error::InputEnded { offset, end: plan.total },
                _ => Error::Io(e),
            });
        }
        if !slot(&mut w, window).await? {
            break;
        }
        issued.store(i + 1, Ordering::Release);
        w.write_all(&Request { flags: 0, command: cmd::WRITE, handle: i, offset, len }.encode()).await?;
        w.write_all(data).await?;
    }
    w.flush().await?;
    Ok(w)
}

/// Receives the answer to every WRITE; `progress` follows the prefix the server acknowledged, which is also what
/// the window advances on, so that handles in flight never share a slot. Returns the reader.
async fn receive_acks<R>(
    mut rd: R,
    plan: Plan,
    window: &Semaphore,
    issued: &AtomicU64,
    progress: &mut impl FnMut(u64, u64),
) -> Result<R, Error>
where
    R: AsyncRead + Unpin,
{
    let mut acked = [false; WINDOW];
    let mut next = 0u64;
    while next < plan.chunks() {
        let mut header = [0u8; SimpleReply::LEN];
        rd.read_exact(&mut header).await.map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => Error::Truncated { done: plan.range(next).0, total: plan.total },
            _ => Error::Io(e),
        })?;
        let reply = SimpleReply::decode(&header)?;
        let i = reply.handle;
        let slot = (i % WINDOW as u64) as usize;
        if i < next || i >= issued.load(Ordering::Acquire) || acked[slot] {
            return Err(Error::Violation(format!("reply with unexpected handle {i}")));
        }
        if reply.error != 0 {
            let (offset, len) = plan.range(i);
            return Err(Error::Remote { command: "write", errno: reply.error, offset, len });
        }
        acked[slot] = true;
        let before = next;
        while acked[(next % WINDOW as u64) as usize] {
            acked[(next % WINDOW as u64) as usize] = false;
            next += 1;
            window.add_permits(1);
        }
        if next > before {
            let (offset, len) = plan.range(next - 1);
            progress(offset + u64::from(len), plan.total);
        }
    }
    Ok(rd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_the_export() {
        let p = Plan { start: 0, total: 3 * u64::from(CHUNK) + 5, chunk: CHUNK };
        assert_eq!(p.chunks(), 4);
        assert_eq!(p.range(3), (3 * u64::from(CHUNK), 5));
        assert_eq!(Plan { start: 0, total: 0, chunk: CHUNK }.chunks(), 0);
        let from = Plan { start: 10, total: u64::from(CHUNK) + 20, chunk: CHUNK };
        assert_eq!(from.chunks(), 2);
        assert_eq!(from.range(0), (10, CHUNK));
        assert_eq!(from.range(1), (u64::from(CHUNK) + 10, 10));
        assert_eq!(Plan { start: 7, total: 7, chunk: CHUNK }.chunks(), 0);
    }

    #[test]
    fn chunk_follows_block_size() {
        assert_eq!(chunk_len(None), CHUNK);
        assert_eq!(chunk_len(Some(BlockSize { min: 1, preferred: 4096, max: 32 << 20 })), CHUNK);
        assert_eq!(chunk_len(Some(BlockSize { min: 512, preferred: 4096, max: 65_000 })), 64_512);
    }
}
