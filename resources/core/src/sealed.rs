//! Sealed records: a byte stream encrypted and authenticated with AES-256-GCM, one key per direction, for the
//! direct transport (a plain TCP connection per bind whose keys were agreed over the noise-authenticated mesh
//! stream). Compared with the libp2p stream it replaces for bulk data, records are large (up to [`MAX_PLAIN`],
//! against noise's 64 KiB messages cut into 16 KiB yamux frames), the cipher has hardware support on every x86-64
//! and arm64 CPU metac runs on (ChaCha20 of noise has not), and there is no connection task between the kind and
//! its socket.
//!
//! A record is a 4-byte big-endian length, then that many bytes of ciphertext with its 16-byte tag. The length is
//! the additional authenticated data; the nonce is a per-direction counter, so a record cannot be replayed,
//! dropped or reordered without the next one failing. An empty record ends the stream: a connection that ends
//! without one was cut, and reads say so instead of looking like a clean end (a forged FIN cannot truncate).
//! Reads are bounded: a length outside `16..=MAX_PLAIN + 16` is refused before anything is read into it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest plaintext of one record: a 256 KiB payload and its protocol's header (an NBD or metac-fs reply)
/// fit one record, so that the usual 256 KiB READ is one record and one write, not a second record of 16 bytes.
pub const MAX_PLAIN: usize = 256 * 1024 + 4096;
/// Bytes of authentication tag per record.
pub const TAG: usize = 16;
/// Bytes of length before each record.
const HEADER: usize = 4;
/// The largest record on the wire.
const MAX_RECORD: usize = HEADER + MAX_PLAIN + TAG;
/// Read buffer: room for four whole records, so that one read from the socket can bring more than one, and the
/// tail of a record cut by the buffer's end is moved to its front once per three records rather than each.
const READ_BUF: usize = 4 * MAX_RECORD;

/// The two directions' keys of one connection.
pub struct Keys {
    /// Seals what this end sends.
    pub send: [u8; 32],
    /// Opens what this end receives.
    pub recv: [u8; 32],
}

impl Keys {
    /// Both ends' keys from the secrets they exchanged: `client` and `server` random 32-byte shares and the
    /// connection's `ticket`. Each direction gets a key of its own (blake3's key derivation, one context each), so
    /// the two counters never meet under one key.
    pub fn derive(client: &[u8; 32], server: &[u8; 32], ticket: &[u8]) -> (Keys, Keys) {
        let mut material = Vec::with_capacity(64 + ticket.len());
        material.extend_from_slice(client);
        material.extend_from_slice(server);
        material.extend_from_slice(ticket);
        let c2s = blake3::derive_key("metac direct/1 2026-12 client to server", &material);
        let s2c = blake3::derive_key("metac direct/1 2026-12 server to client", &material);
        (Keys { send: c2s, recv: s2c }, Keys { send: s2c, recv: c2s })
    }
}

/// A sealed record stream over `S`.
pub struct Sealed<S: AsyncWrite + Unpin> {
    io: S,
    seal: LessSafeKey,
    sent: u64,
    open: LessSafeKey,
    received: u64,
    /// Bytes read from `io`: `[start, end)` not yet parsed.
    rbuf: Vec<u8>,
    start: usize,
    end: usize,
    /// Opened plaintext not yet handed out: `rbuf[plain.0..plain.1]`.
    plain: (usize, usize),
    /// The end-of-stream record came.
    eof: bool,
    /// The record being written: `wbuf[wpos..wlen]` still to go. `wbuf` is [`MAX_RECORD`] long from the start,
    /// so that records are sealed straight into it from the caller's bytes (one pass over them, not a copy and
    /// then a pass).
    wbuf: Vec<u8>,
    wpos: usize,
    wlen: usize,
    /// Plaintext bytes of the record in `wbuf` that a `poll_write` answered `Pending` for (see `poll_write`).
    owed: Option<usize>,
    /// The end-of-stream record was queued.
    shut: bool,
}

impl<S: AsyncWrite + Unpin> Sealed<S> {
    /// Seals and opens over `io` with `keys`.
    pub fn new(io: S, keys: &Keys) -> Sealed<S> {
        let key = |k: &[u8; 32]| LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("a 32-byte AES-256 key"));
        Sealed {
            io,
            seal: key(&keys.send),
            sent: 0,
            open: key(&keys.recv),
            received: 0,
            rbuf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            plain: (0, 0),
            eof: false,
            wbuf: vec![0; MAX_RECORD],
            wpos: 0,
            wlen: 0,
            owed: None,
            shut: false,
        }
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    fn nonce(n: u64) -> Nonce {
        let mut b = [0u8; 12];
        b[4..].copy_from_slice(&n.to_be_bytes());
        Nonce::assume_unique_for_key(b)
    }

    /// Seals `data` as the next record into `wbuf` (which must be drained).
    fn push(&mut self, data: &[u8]) -> io::Result<()> {
        debug_assert!(self.wpos == self.wlen && data.len() <= MAX_PLAIN);
        let header = ((data.len() + TAG) as u32).to_be_bytes();
        let end = HEADER + data.len();
        self.wbuf[..HEADER].copy_from_slice(&header);
        let (body, tag) = self.wbuf[HEADER..end + TAG].split_at_mut(data.len());
        let nonce = Self::nonce(self.sent);
        self.sent += 1;
        self.seal
            .seal_out_of_place_scatter(nonce, Aad::from(header), data, body, &[], tag)
            .map_err(|_| io::Error::other("cannot seal a record"))?;
        self.wpos = 0;
        self.wlen = end + TAG;
        Ok(())
    }

    /// Opens the next whole record in the read buffer, if there is one. `Ok(false)`: more bytes are needed.
    fn next_record(&mut self) -> io::Result<bool> {
        let have = self.end - self.start;
        if have < HEADER {
            return Ok(false);
        }
        let header: [u8; HEADER] = self.rbuf[self.start..self.start + HEADER].try_into().expect("4 bytes");
        let len = u32::from_be_bytes(header) as usize;
        if !(TAG..=MAX_PLAIN + TAG).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a sealed record of {len} bytes is outside the {TAG}..={} allowed", MAX_PLAIN + TAG),
            ));
        }
        if have < HEADER + len {
            return Ok(false);
        }
        let body = self.start + HEADER;
        let nonce = Self::nonce(self.received);
        let opened = self
            .open
            .open_in_place(nonce, Aad::from(header), &mut self.rbuf[body..body + len])
            .map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "a sealed record failed authentication (forged or damaged)")
            })?
            .len();
        self.received += 1;
        self.plain = (body, body + opened);
        self.start = body + len;
        if opened == 0 {
            self.eof = true;
        }
        Ok(true)
    }

    /// Makes room at the end of the read buffer for the rest of the record being read.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.rbuf.len() - self.start < MAX_RECORD {
            self.rbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Writes out the record in `wbuf`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wlen {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..self.wlen]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Sealed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain.0 < this.plain.1 {
                let n = out.remaining().min(this.plain.1 - this.plain.0);
                out.put_slice(&this.rbuf[this.plain.0..this.plain.0 + n]);
                this.plain.0 += n;
                return Poll::Ready(Ok(()));
            }
            if this.eof || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.next_record()? {
                continue;
            }
            this.make_room();
            let mut rb = ReadBuf::new(&mut this.rbuf[this.end..]);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                let what = if this.start == this.end { "between records" } else { "inside a record" };
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the direct connection was cut {what}, before its end-of-stream record"),
                )));
            }
            this.end += n;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sealed<S> {
    /// Answers `Ready(n)` once the record holding the first `n` bytes is in the socket, so that nothing waits in
    /// this layer for a flush the kinds' code (written against libp2p streams) may never call. When the socket is
    /// full, the record stays here and the call is `Pending`; the caller calls again with the same bytes (as
    /// `write_all` does), and is answered with the count of the record already sealed.
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.shut {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "the stream was shut down")));
        }
        ready!(this.poll_drain(cx))?;
        if let Some(n) = this.owed.take() {
            return Poll::Ready(Ok(n));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(MAX_PLAIN);
        this.push(&buf[..n])?;
        this.owed = Some(n);
        ready!(this.poll_drain(cx))?;
        this.owed = None;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if !this.shut {
            this.owed = None;
            this.push(&[])?;
            this.shut = true;
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<S: AsyncWrite + Unpin> Drop for Sealed<S> {
    /// A stream dropped without a shutdown still ends cleanly when it can: the end-of-stream record is offered to
    /// the socket once, without waiting (a socket with no room for 20 bytes is cut, which the peer then sees).
    fn drop(&mut self) {
        if self.shut || self.wpos < self.wlen {
            return;
        }
        if self.push(&[]).is_ok() {
            self.shut = true;
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            let _ = self.poll_drain(&mut cx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn pair(cap: usize) -> (Sealed<DuplexStream>, Sealed<DuplexStream>) {
        let (a, b) = tokio::io::duplex(cap);
        let (client, server) = Keys::derive(&[1; 32], &[2; 32], &[3; 16]);
        (Sealed::new(a, &client), Sealed::new(b, &server))
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Megabytes cross both ways at once through a small pipe, in records of every size up to the largest, and a
    /// shutdown reads as a clean end.
    #[tokio::test]
    async fn bytes_cross_both_ways_and_a_shutdown_is_a_clean_end() {
        let (mut a, mut b) = pair(64 * 1024);
        let data = pattern(3 * MAX_PLAIN + 12345);
        let (d1, d2) = (data.clone(), data.clone());
        let w = tokio::spawn(async move {
            for chunk in d1.chunks(MAX_PLAIN + 1000).chain(d1.chunks(7).take(20)) {
                a.write_all(chunk).await.unwrap();
            }
            a.shutdown().await.unwrap();
            let mut back = Vec::new();
            a.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        let mut want = d2.clone();
        want.extend(d2.chunks(7).take(20).flatten());
        assert_eq!(got, want);
        b.write_all(b"and back").await.unwrap();
        b.shutdown().await.unwrap();
        assert_eq!(w.await.unwrap(), b"and back");
    }

    /// A flipped bit anywhere in a record, a record replayed, or a stream cut without its end record: each is an
    /// error, never data or a clean end.
    #[tokio::test]
    async fn forged_replayed_or_cut_streams_are_errors() {
        async fn wire(records: &[&[u8]], shut: bool) -> Vec<u8> {
            let (a, mut raw) = tokio::io::duplex(1 << 20);
            let (client, _) = Keys::derive(&[1; 32], &[2; 32], &[3; 16]);
            let mut s = Sealed::new(a, &client);
            for r in records {
                s.write_all(r).await.unwrap();
            }
            if shut {
                s.shutdown().await.unwrap();
            } else {
                std::mem::forget(s); // no end record, as a cut connection
            }
            let mut v = vec![0; 1 << 16];
            let n = raw.read(&mut v).await.unwrap();
            v.truncate(n);
            v
        }
        async fn read(bytes: Vec<u8>) -> io::Result<Vec<u8>> {
            let (mut a, b) = tokio::io::duplex(1 << 20);
            let (_, server) = Keys::derive(&[1; 32], &[2; 32], &[3; 16]);
            let mut s = Sealed::new(b, &server);
            a.write_all(&bytes).await.unwrap();
            drop(a);
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.map(|_| got)
        }
        let good = wire(&[b"hello", b"world"], true).await;
        assert_eq!(read(good.clone()).await.unwrap(), b"helloworld");
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            let e = read(bad).await.unwrap_err();
            // A changed length reads as a record cut short, or one too large; any other byte fails its tag.
            let ok = matches!(e.kind(), io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof);
            assert!(ok, "byte {i}: {e}");
        }
        // The first record twice: the second copy is opened with the next nonce and fails.
        let first = wire(&[b"hello"], false).await;
        let mut replayed = first.clone();
        replayed.extend_from_slice(&first);
        assert_eq!(read(replayed).await.unwrap_err().kind(), io::ErrorKind::InvalidData);
        // Cut after a whole record, and inside one.
        let e = read(first.clone()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert!(e.to_string().contains("between records"), "{e}");
        let e = read(good[..good.len() - 3].to_vec()).await.unwrap_err();
        assert!(e.to_string().contains("inside a record"), "{e}");
        // Another connection's keys open nothing.
        let (_, other) = Keys::derive(&[9; 32], &[2; 32], &[3; 16]);
        let (mut a, b) = tokio::io::duplex(1 << 20);
        a.write_all(&good).await.unwrap();
        let mut s = Sealed::new(b, &other);
        assert_eq!(s.read_u8().await.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    /// A length beyond the largest record is refused from its 4 bytes alone, before any of it is read or kept.
    #[tokio::test]
    async fn a_huge_length_is_refused_before_it_is_read() {
        let (mut a, b) = tokio::io::duplex(1 << 10);
        let (_, server) = Keys::derive(&[1; 32], &[2; 32], &[3; 16]);
        let mut s = Sealed::new(b, &server);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let e = s.read_u8().await.unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        let (mut a, b) = tokio::io::duplex(1 << 10);
        let mut s = Sealed::new(b, &server);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        assert!(s.read_u8().await.unwrap_err().to_string().contains("outside"));
    }

    /// A stream dropped without shutdown still ends cleanly for its peer.
    #[tokio::test]
    async fn a_dropped_stream_ends_cleanly() {
        let (mut a, mut b) = pair(1 << 16);
        a.write_all(b"last words").await.unwrap();
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }

    #[test]
    fn each_direction_has_its_own_key() {
        let (c, s) = Keys::derive(&[1; 32], &[2; 32], &[3; 16]);
        assert_eq!((c.send, c.recv), (s.recv, s.send));
        assert_ne!(c.send, c.recv);
        let (c2, _) = Keys::derive(&[1; 32], &[2; 32], &[4; 16]);
        assert_ne!(c.send, c2.send, "the ticket is part of the key");
    }
}
