//! Decoder robustness: any bytes a client sends make `serve` end with `Ok` or an error, never a panic, never a hang,
//! and never an allocation larger than the export and the fixed buffers warrant. A counting global allocator
//! records the largest single allocation made while the server runs.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metac_block::nbd::proto::{cflag, cmd, handshake, opt, InfoRequest, OptionHeader, Request, IHAVEOPT};
use metac_block::{serve, Export};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

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

/// Export size used by every case: legitimate buffers are at most this plus a reply header.
const EXPORT_LEN: usize = 64 << 10;
/// Allocations above this mean a length field was trusted.
const ALLOC_LIMIT: usize = 1 << 20;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
}

fn exports() -> &'static (tempfile::TempDir, Export, Export) {
    static E: OnceLock<(tempfile::TempDir, Export, Export)> = OnceLock::new();
    E.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = common::random_file(dir.path(), "disk", EXPORT_LEN, 3);
        let rw = Export::open(&path, false).unwrap();
        let ro = Export::open(&path, true).unwrap();
        (dir, rw, ro)
    })
}

/// One piece of client input: mostly well-framed messages with hostile fields, plus raw noise.
#[derive(Debug, Clone)]
enum Piece {
    Noise(Vec<u8>),
    Option { option: u32, len: u32, payload: Vec<u8> },
    Go { name_len: u32, count: u16, tail: Vec<u8> },
    Request { flags: u16, command: u16, offset: u64, len: u32 },
    Data(Vec<u8>),
}

fn len() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..64, 0u32..100_000, 0u32..(1 << 27), any::<u32>()]
}

/// Pieces of option haggling: options with hostile lengths, malformed GO payloads, noise.
fn haggling_piece() -> impl Strategy<Value = Piece> {
    let small = proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        1 => small.clone().prop_map(Piece::Noise),
        3 => (prop_oneof![0u32..12, any::<u32>()], len(), small.clone())
            .prop_map(|(option, len, payload)| Piece::Option { option, len, payload }),
        2 => (prop_oneof![0u32..16, any::<u32>()], any::<u16>(), small)
            .prop_map(|(name_len, count, tail)| Piece::Go { name_len, count, tail }),
    ]
}

/// Pieces of transmission: requests with hostile fields, payload bytes, noise.
fn transmission_piece() -> impl Strategy<Value = Piece> {
    let command = prop_oneof![Just(cmd::READ), Just(cmd::WRITE), 0u16..10, any::<u16>()];
    let offset = prop_oneof![0u64..(EXPORT_LEN as u64 * 2), any::<u64>()];
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Piece::Noise),
        6 => (prop_oneof![Just(0u16), Just(cflag::FUA), any::<u16>()], command, offset, len())
            .prop_map(|(flags, command, offset, len)| Piece::Request { flags, command, offset, len }),
        2 => proptest::collection::vec(any::<u8>(), 0..4096).prop_map(Piece::Data),
    ]
}

fn encode(client_flags: u32, go: bool, pieces: &[Piece]) -> Vec<u8> {
    let mut b = client_flags.to_be_bytes().to_vec();
    if go {
        let payload = InfoRequest::encode(b"", &[]);
        b.extend_from_slice(&OptionHeader { option: opt::GO, len: payload.len() as u32 }.encode());
        b.extend_from_slice(&payload);
    }
    for p in pieces {
        match p {
            Piece::Noise(n) | Piece::Data(n) => b.extend_from_slice(n),
            Piece::Option { option, len, payload } => {
                b.extend_from_slice(&OptionHeader { option: *option, len: *len }.encode());
                b.extend_from_slice(payload);
            }
            Piece::Go { name_len, count, tail } => {
                let mut payload = name_len.to_be_bytes().to_vec();
                payload.extend_from_slice(&count.to_be_bytes());
                payload.extend_from_slice(tail);
                b.extend_from_slice(&IHAVEOPT.to_be_bytes());
                b.extend_from_slice(&opt::GO.to_be_bytes());
                b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                b.extend_from_slice(&payload);
            }
            Piece::Request { flags, command, offset, len } => {
                let r = Request { flags: *flags, command: *command, handle: 7, offset: *offset, len: *len };
                b.extend_from_slice(&r.encode());
            }
        }
    }
    b
}

/// Feeds `input` to a server, drains its output, and closes; returns whether serve ended in time.
fn feed(input: Vec<u8>, read_only: bool) -> bool {
    let (_, rw, ro) = exports();
    let export = if read_only { ro } else { rw };
    runtime().block_on(async {
        let (server_end, client_end) = tokio::io::duplex(64 << 10);
        let (mut rd, mut wr) = tokio::io::split(client_end);
        let client = async {
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
            let mut sink = Vec::new();
            let _ = rd.read_to_end(&mut sink).await;
        };
        let server = serve(server_end, export, CancellationToken::new());
        let run = async { tokio::join!(server, client) };
        tokio::time::timeout(Duration::from_secs(10), run).await.is_ok()
    })
}

/// Runs one case and checks it ended in time without a large allocation.
fn check(input: Vec<u8>, read_only: bool) -> Result<(), TestCaseError> {
    LARGEST.store(0, Ordering::Relaxed);
    prop_assert!(feed(input, read_only), "serve hung");
    let largest = LARGEST.load(Ordering::Relaxed);
    prop_assert!(largest <= ALLOC_LIMIT, "an allocation of {} bytes", largest);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn hostile_options(
        client_flags in prop_oneof![Just(handshake::C_FIXED_NEWSTYLE | handshake::C_NO_ZEROES), any::<u32>()],
        read_only in any::<bool>(),
        pieces in proptest::collection::vec(haggling_piece(), 0..24),
    ) {
        check(encode(client_flags, false, &pieces), read_only)?;
    }

    #[test]
    fn hostile_requests(
        read_only in any::<bool>(),
        pieces in proptest::collection::vec(transmission_piece(), 0..24),
    ) {
        check(encode(handshake::C_FIXED_NEWSTYLE | handshake::C_NO_ZEROES, true, &pieces), read_only)?;
    }
}

#[test]
fn pure_noise_never_panics() {
    for seed in 0..200u64 {
        let len = (seed as usize * 37) % 3000;
        assert!(feed(common::random_bytes(len, seed), seed % 2 == 0));
    }
}
