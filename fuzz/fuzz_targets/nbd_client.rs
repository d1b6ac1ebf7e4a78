//! Fuzzes the NBD client side against a hostile server: the input is everything the server sends (greeting, option
//! replies, read replies and their payloads). The first byte picks what is driven and how far in the input starts:
//!
//! - `0`: `metac_block::cat` (what `metac file cat` runs), the input from the greeting on;
//! - `1`: `cat` after a valid greeting, the input from the option replies on;
//! - `2`: `cat` after a whole valid handshake (an export of a size and a maximum block size read from the next three
//!   bytes, so that reads are small), the input from the read replies on;
//! - `3`: the `file` bind's endpoint (`metac file bind`), which keeps a stream to the exporter open ahead of the
//!   next client with the server's greeting read; the input is what that stream carries;
//! - `4`: `Connection::write_from` (what `metac file put` runs on the node) after a whole valid handshake of a
//!   writable export (size, maximum block size and the write's offset from the next four bytes), the input from
//!   the WRITE and FLUSH replies on;
//! - `5`: `Connection::read_to` from an offset (`metac file get` resuming), set up as `4` on a read-only export.
//!
//! The server closes its end after the input. Whatever it sent, the client must return an error or finish, never
//! panic, end within a few seconds, and never make an allocation above 1 MiB (its largest legitimate buffer is one
//! 1 MiB read): a larger one means a length from the server was trusted. `cat`'s progress never goes back or past
//! the export size, and it reports success only with exactly the export's size copied; the endpoint never reports
//! the bind up for a stream whose greeting is not NBD.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use metac_block::file::{Endpoint, Listen, PROTOCOL};
use metac_block::Connection;
use metac_block::nbd::proto::{handshake, opt, put_option_reply, rep, tflag, BlockSize, Greeting, Info};
use metac_mesh::{Identity, Kind, ResourceId, Rights, Token};
use metac_resource::{BoxFuture, BoxStream, Caller, Error, Link, Opener, Ref, Session, State, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Allocations above this mean a length field from the server was trusted: the client's largest buffer is one read
/// of 1 MiB (its stream buffer is 128 KiB).
const ALLOC_LIMIT: usize = 1 << 20;
/// Longer than any session on this input takes; reaching it means the client hung on a closed stream.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Passes every call to the system allocator and remembers the largest size asked for.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s guarantees hold;
// the only addition is an atomic update that neither allocates nor touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`, as our caller promises for us.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The runtime, a directory for the endpoint's socket and a ref to bind, made once.
struct Fixture {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    reference: Ref,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let dir = tempfile::tempdir().expect("temporary directory");
        let issuer = Identity::from_secret([1; 32]);
        let token = Token::issue(&issuer, ResourceId([7; 16]), Kind::File, Rights::READ, None, None).expect("a token");
        Fixture { rt, dir, reference: Ref::new(token) }
    })
}

/// Hands out the hostile stream once; the exporter is unreachable after that.
struct OneStream(Mutex<Option<BoxStream>>);

impl Opener for OneStream {
    fn open<'a>(&'a self, _: &'a Ref, _: &'static str) -> BoxFuture<'a, Result<BoxStream, Error>> {
        let s = self.0.lock().expect("opener lock").take();
        Box::pin(async move { s.ok_or_else(|| Error::Unreachable("the fuzz server is gone".into())) })
    }
}

fn greeting() -> Vec<u8> {
    Greeting { flags: handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES }.encode().to_vec()
}

/// A greeting and the answer to the client's `NBD_OPT_GO`: the export's size and block sizes, then the ACK.
fn handshake(size: u64, max: u32) -> Vec<u8> {
    handshake_with(size, max, tflag::HAS_FLAGS | tflag::READ_ONLY)
}

/// [`handshake`] with the export's transmission flags chosen.
fn handshake_with(size: u64, max: u32, flags: u16) -> Vec<u8> {
    let mut b = greeting();
    let export = Info::Export { size, flags };
    put_option_reply(&mut b, opt::GO, rep::INFO, &export.encode());
    let block = Info::BlockSize(BlockSize { min: 1, preferred: max.min(4096), max });
    put_option_reply(&mut b, opt::GO, rep::INFO, &block.encode());
    put_option_reply(&mut b, opt::GO, rep::ACK, &[]);
    b
}

/// Runs `cat` against a server that sends `server` and closes; checks its progress and outcome.
async fn cat(server: Vec<u8>) {
    let (client_end, server_end) = tokio::io::duplex(64 << 10);
    let serve = async move {
        let (mut rd, mut wr) = tokio::io::split(server_end);
        // The client may hang up early; the server sends what it has, closes, and reads what the client sends.
        let send = async {
            let _ = wr.write_all(&server).await;
            let _ = wr.shutdown().await;
        };
        let drain = async {
            let mut buf = [0u8; 4096];
            while let Ok(1..) = rd.read(&mut buf).await {}
        };
        tokio::join!(send, drain);
    };
    let mut seen: Option<(u64, u64)> = None;
    let progress = |done: u64, total: u64| {
        assert!(done <= total, "progress {done} past the export size {total}");
        if let Some((d, t)) = seen {
            assert!(done >= d && total == t, "progress went from {d}/{t} to {done}/{total}");
        }
        seen = Some((done, total));
    };
    let mut out = tokio::io::sink();
    let (result, ()) = tokio::join!(metac_block::cat(client_end, &mut out, progress), serve);
    match result {
        Ok(n) => assert_eq!(Some((n, n)), seen, "success with {n} bytes, progress {seen:?}"),
        Err(e) => drop(e.to_string()),
    }
}

/// A server that sends `server` and closes, reading and dropping what the client sends.
async fn hostile(server_end: tokio::io::DuplexStream, server: Vec<u8>) {
    let (mut rd, mut wr) = tokio::io::split(server_end);
    let send = async {
        let _ = wr.write_all(&server).await;
        let _ = wr.shutdown().await;
    };
    let drain = async {
        let mut buf = [0u8; 4096];
        while let Ok(1..) = rd.read(&mut buf).await {}
    };
    tokio::join!(send, drain);
}

/// Size, maximum block size and offset from the first four bytes of `input`, and the rest.
fn layout(input: &[u8]) -> (u64, u32, u64, &[u8]) {
    match input {
        [a, b, c, d, rest @ ..] => {
            let size = u64::from(u16::from_be_bytes([*a, *b]));
            (size, 1u32 << (c % 17), u64::from(*d) * size / 255, rest)
        }
        _ => (0, 1, 0, &[][..]),
    }
}

/// Runs a write (put) of zeros from an offset to the end against a server that sends `replies` after a valid
/// handshake of a writable export; success only with the whole range acknowledged, progress never going back.
async fn put(input: &[u8]) {
    let (size, max, offset, replies) = layout(input);
    let flags = tflag::HAS_FLAGS | tflag::SEND_FLUSH;
    let server = [&handshake_with(size, max, flags)[..], replies].concat();
    let (client_end, server_end) = tokio::io::duplex(64 << 10);
    let mut last = offset;
    let client = async {
        let conn = Connection::open(client_end).await?;
        let mut zeros = tokio::io::repeat(0);
        conn.write_from(offset, size - offset, &mut zeros, |done, end| {
            assert!(done >= last && done <= end && end == size, "progress {last} -> {done} of {end}");
            last = done;
        })
        .await
    };
    let (result, ()) = tokio::join!(client, hostile(server_end, server));
    match result {
        Ok(n) => assert!(n == size - offset && last == size, "success with {n} bytes, acknowledged to {last}"),
        Err(e) => drop(e.to_string()),
    }
}

/// Runs a read from an offset (a resumed get) against a server that sends `replies` after a valid handshake.
async fn get(input: &[u8]) {
    let (size, max, offset, replies) = layout(input);
    let server = [&handshake(size, max)[..], replies].concat();
    let (client_end, server_end) = tokio::io::duplex(64 << 10);
    let mut out = tokio::io::sink();
    let mut last = offset;
    let client = async {
        let conn = Connection::open(client_end).await?;
        conn.read_to(offset, &mut out, |done, total| {
            assert!(done >= last && done <= total && total == size, "progress {last} -> {done} of {total}");
            last = done;
        })
        .await
    };
    let (result, ()) = tokio::join!(client, hostile(server_end, server));
    match result {
        Ok(n) => assert!(n == size - offset && last == size, "success with {n} bytes, progress at {last}"),
        Err(e) => drop(e.to_string()),
    }
}

/// Runs the bind endpoint on one stream that carries `server`; it must end with an error once the stream ends.
async fn endpoint(server: Vec<u8>) {
    let f = fixture();
    let nbd = server.get(..Greeting::LEN).is_some_and(|g| Greeting::decode(g.try_into().expect("18 bytes")).is_ok());
    let (client_end, mut server_end) = tokio::io::duplex(64 << 10);
    let serve = async move {
        let _ = server_end.write_all(&server).await;
        let _ = server_end.shutdown().await;
        // Keep the stream (and so the client's reads) alive until the endpoint has read what it wants.
        let mut buf = [0u8; 4096];
        while let Ok(1..) = server_end.read(&mut buf).await {}
    };
    let status = Arc::new(Status::default());
    let opener = Arc::new(OneStream(Mutex::new(Some(Box::new(client_end) as BoxStream))));
    let link = Link::new(f.reference.clone(), PROTOCOL, opener, Arc::clone(&status));
    let mut session = Endpoint::new(Listen::Unix(f.dir.path().join("bind.sock")), Caller::root(), false);
    let cancel = CancellationToken::new();
    let run = async {
        let r = session.run(&link, &cancel).await;
        session.close().await;
        r
    };
    let (result, ()) = tokio::join!(run, serve);
    let e = result.expect_err("the endpoint outlived its only stream");
    drop(e.to_string());
    if !nbd {
        assert_eq!(status.state(), State::Connecting, "the bind went up on a stream that is not NBD");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else { return };
    let f = fixture();
    LARGEST.store(0, Ordering::Relaxed);
    let finished = f.rt.block_on(async {
        let run = async {
            match mode % 8 {
                0 => cat(input.to_vec()).await,
                1 => cat([&greeting()[..], input].concat()).await,
                2 => {
                    let (size, max, rest) = match input {
                        [a, b, c, rest @ ..] => (u64::from(u16::from_be_bytes([*a, *b])), 1u32 << (c % 17), rest),
                        _ => (0, 1, &[][..]),
                    };
                    cat([&handshake(size, max)[..], rest].concat()).await
                }
                4 => put(input).await,
                5 => get(input).await,
                _ => endpoint(input.to_vec()).await,
            }
        };
        tokio::time::timeout(TIMEOUT, run).await
    });
    assert!(finished.is_ok(), "the client did not end within {TIMEOUT:?} of the server closing");
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(largest <= ALLOC_LIMIT, "an allocation of {largest} bytes");
});
