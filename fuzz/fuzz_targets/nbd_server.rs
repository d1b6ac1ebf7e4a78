//! Fuzzes the NBD server end to end: the input is everything a client sends on the stream (client flags, options,
//! requests, write payloads), served by `metac_block::serve` over a small temporary export. The first byte picks
//! a read-only or a writable export, and whether the input starts right after a valid handshake that chose the
//! export with `NBD_OPT_GO` (so that the fuzzer spends its time on requests, not on finding the option magic).
//! `serve` must end with Ok or Err within a few seconds, never panic, and never make an allocation larger than the
//! export and the fixed buffers warrant: a larger one means a length field from the client was trusted. The
//! server's replies are read and dropped.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use metac_block::nbd::proto::{handshake, opt, InfoRequest, OptionHeader};
use metac_block::{serve, Export};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// Export size: legitimate buffers are at most this plus a reply header.
const EXPORT_LEN: usize = 64 << 10;
/// Allocations above this mean a length field was trusted (the server's stream buffers are 128 KiB).
const ALLOC_LIMIT: usize = 1 << 20;
/// Longer than any legitimate session on this input takes; reaching it means the server hung.
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

/// The runtime and the exports, made once: building them per input would dominate the run time.
struct Fixture {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    rw: Export,
    ro: Export,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio runtime");
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("disk");
        let content: Vec<u8> = (0..EXPORT_LEN).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, content).expect("writing the export");
        let rw = Export::open(&path, false).expect("opening the export");
        let ro = Export::open(&path, true).expect("opening the export read-only");
        Fixture { rt, _dir: dir, rw, ro }
    })
}

/// What a well-behaved client sends before its first request: fixed newstyle flags and `NBD_OPT_GO` for "".
fn go() -> Vec<u8> {
    let payload = InfoRequest::encode(b"", &[]);
    let mut b = (handshake::C_FIXED_NEWSTYLE | handshake::C_NO_ZEROES).to_be_bytes().to_vec();
    b.extend_from_slice(&OptionHeader { option: opt::GO, len: payload.len() as u32 }.encode());
    b.extend_from_slice(&payload);
    b
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else { return };
    let f = fixture();
    let export = if pick & 1 == 0 { &f.ro } else { &f.rw };
    let input = if pick & 2 == 0 { input.to_vec() } else { [&go()[..], input].concat() };
    LARGEST.store(0, Ordering::Relaxed);
    let finished = f.rt.block_on(async {
        let (server_end, client_end) = tokio::io::duplex(64 << 10);
        let (mut rd, mut wr) = tokio::io::split(client_end);
        let client = async {
            // The server may hang up early; whatever it does, the client sends what it has and reads to the end,
            // through a small fixed buffer so that only the server's allocations can trip the check below.
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
            let _ = tokio::io::copy(&mut rd, &mut tokio::io::sink()).await;
        };
        let server = serve(server_end, export, CancellationToken::new());
        tokio::time::timeout(TIMEOUT, async { tokio::join!(server, client).0 }).await
    });
    // Ok or Err are both fine; what matters is that it ended.
    assert!(finished.is_ok(), "serve did not end within {TIMEOUT:?}");
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(largest <= ALLOC_LIMIT, "an allocation of {largest} bytes");
});
