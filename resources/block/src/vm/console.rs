//! A VM's serial console as the node keeps it: what the guest printed last ([`Ring`], [`RING_BYTES`]) so that a
//! console attached later (`metac vm console`, or after the VM ended) shows it, and the live output fanned out to
//! every attached console. What any console types goes to the guest's serial line.
//!
//! One task reads qemu's stdout ([`Console::pump`]); it adds each chunk to the ring and sends it to the attached
//! consoles under one lock, and [`Console::attach`] takes the ring's copy and subscribes under the same lock, so a
//! console sees every byte once, in order, with nothing lost in between. Everything is bounded: the ring, the
//! broadcast of live chunks (a console too slow to keep up is told how much it missed), the input queue.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};

/// How much of the console's output is kept for consoles attached later.
pub const RING_BYTES: usize = 64 << 10;
/// Live chunks queued for one attached console before it is counted as lagging.
const LIVE_CHUNKS: usize = 256;
/// The largest chunk read from qemu or from a console at once.
const CHUNK: usize = 4096;
/// Input chunks queued for the guest.
const INPUT_CHUNKS: usize = 64;

/// The last [`RING_BYTES`] (or `cap`) bytes written.
#[derive(Debug)]
pub struct Ring {
    buf: VecDeque<u8>,
    cap: usize,
}

impl Ring {
    /// An empty ring keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Ring {
        Ring { buf: VecDeque::with_capacity(cap.min(RING_BYTES)), cap }
    }

    /// Appends `data`, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.cap)..];
        let over = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..over);
        self.buf.extend(data);
    }

    /// What it holds, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        self.buf.iter().copied().collect()
    }
}

struct Shared {
    ring: Ring,
    /// `None` once the guest's output ended (the VM is gone).
    live: Option<broadcast::Sender<Bytes>>,
}

/// A VM's console.
pub struct Console {
    shared: Mutex<Shared>,
    input: mpsc::Sender<Bytes>,
}

/// One attached console: what was printed before it came, and the live output from then on.
pub struct Attached {
    past: Vec<u8>,
    live: Option<broadcast::Receiver<Bytes>>,
    input: mpsc::Sender<Bytes>,
}

impl Console {
    /// A console whose input goes to `input` (the guest's serial line, written by [`Console::feed`]).
    pub fn new() -> (Console, mpsc::Receiver<Bytes>) {
        let (input, rx) = mpsc::channel(INPUT_CHUNKS);
        let (live, _) = broadcast::channel(LIVE_CHUNKS);
        (Console { shared: Mutex::new(Shared { ring: Ring::new(RING_BYTES), live: Some(live) }), input }, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the guest's output from `out` (qemu's stdout) until it ends; then attached consoles see the end.
    pub async fn pump(&self, mut out: impl AsyncRead + Unpin) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match out.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut s = self.lock();
                    s.ring.push(&buf[..n]);
                    if let Some(live) = &s.live {
                        // No console attached is no error.
                        let _ = live.send(Bytes::copy_from_slice(&buf[..n]));
                    }
                }
            }
        }
        self.lock().live = None;
    }

    /// Writes what consoles type to `guest` (qemu's stdin) until every console and the VM are gone.
    pub async fn feed(mut input: mpsc::Receiver<Bytes>, mut guest: impl AsyncWrite + Unpin) {
        while let Some(b) = input.recv().await {
            if guest.write_all(&b).await.is_err() || guest.flush().await.is_err() {
                return;
            }
        }
    }

    /// Attaches a console.
    pub fn attach(&self) -> Attached {
        let s = self.lock();
        Attached { past: s.ring.contents(), live: s.live.as_ref().map(|l| l.subscribe()), input: self.input.clone() }
    }

    /// What the guest printed last (at most [`RING_BYTES`]).
    pub fn recent(&self) -> Vec<u8> {
        self.lock().ring.contents()
    }
}

impl Attached {
    /// Serves the console on `io` (an upgraded API connection): the past output, then the live output, while
    /// what the client sends goes to the guest. Ends when the guest's output ends or the client goes away.
    pub async fn serve(mut self, io: impl AsyncRead + AsyncWrite) {
        let (mut rd, mut wr) = tokio::io::split(io);
        if wr.write_all(&self.past).await.is_err() {
            return;
        }
        let Some(mut live) = self.live.take() else {
            let _ = wr.shutdown().await;
            return;
        };
        let mut buf = vec![0u8; CHUNK];
        let mut reading = true;
        loop {
            tokio::select! {
                r = live.recv() => {
                    let out = match r {
                        Ok(b) => b,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            Bytes::from(format!("\r\n[metac: {n} chunks of console output skipped: this console \
                                                 read too slowly]\r\n"))
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    };
                    if wr.write_all(&out).await.is_err() {
                        return;
                    }
                }
                r = rd.read(&mut buf), if reading => match r {
                    // The client sends no more; it may still read.
                    Ok(0) | Err(_) => reading = false,
                    Ok(n) => {
                        if self.input.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                            reading = false;
                        }
                    }
                },
            }
        }
        let _ = wr.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_bytes() {
        let mut r = Ring::new(8);
        r.push(b"abc");
        r.push(b"defg");
        assert_eq!(r.contents(), b"abcdefg");
        r.push(b"hij");
        assert_eq!(r.contents(), b"cdefghij");
        r.push(b"0123456789");
        assert_eq!(r.contents(), b"23456789");
        r.push(b"");
        assert_eq!(r.contents(), b"23456789");
    }

    /// A console attached late sees what was printed before, then the live output, then the end; what it types
    /// reaches the guest.
    #[tokio::test]
    async fn a_console_sees_the_past_then_the_live_output_and_types_to_the_guest() {
        let (console, input) = Console::new();
        let console = std::sync::Arc::new(console);
        let (mut qemu_out, out) = tokio::io::duplex(1024);
        let (guest_in, mut guest) = tokio::io::duplex(1024);
        let pump = tokio::spawn({
            let c = std::sync::Arc::clone(&console);
            async move { c.pump(out).await }
        });
        tokio::spawn(Console::feed(input, guest_in));
        qemu_out.write_all(b"booting\n").await.unwrap();
        while console.recent() != b"booting\n" {
            tokio::task::yield_now().await;
        }
        let (client, server) = tokio::io::duplex(1024);
        tokio::spawn(console.attach().serve(server));
        let (mut crd, mut cwr) = tokio::io::split(client);
        let mut got = vec![0u8; 8];
        crd.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"booting\n");
        qemu_out.write_all(b"login: ").await.unwrap();
        let mut got = vec![0u8; 7];
        crd.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"login: ");
        cwr.write_all(b"root\n").await.unwrap();
        let mut typed = vec![0u8; 5];
        guest.read_exact(&mut typed).await.unwrap();
        assert_eq!(typed, b"root\n");
        // The VM ends: the console ends too, and one attached afterwards gets the past and the end.
        drop(qemu_out);
        pump.await.unwrap();
        let mut rest = Vec::new();
        crd.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let (mut late, server) = tokio::io::duplex(1024);
        tokio::spawn(console.attach().serve(server));
        let mut all = Vec::new();
        late.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"booting\nlogin: ");
    }
}
