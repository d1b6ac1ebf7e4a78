//! Our client against our server over an in-memory duplex stream: sizes around the chunk size, an empty export,
//! cancellation in the middle of a transfer, reads from an offset, and pipelined writes (what `metac file get`
//! and `put` run on the node).

mod common;

use std::time::{Duration, Instant};

use common::random_file;
use metac_block::{cat, serve, Connection, Error, Export};
use tokio_util::sync::CancellationToken;

const MIB: usize = 1 << 20;

async fn roundtrip(len: usize) {
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "disk", len, len as u64);
    let export = Export::open(&file, true).unwrap();
    assert_eq!(export.size(), len as u64);
    let (a, b) = tokio::io::duplex(256 << 10);
    let mut out = Vec::new();
    let mut last = (u64::MAX, u64::MAX);
    let (served, copied) =
        tokio::join!(serve(a, &export, CancellationToken::new()), cat(b, &mut out, |done, total| last = (done, total)));
    assert_eq!(copied.unwrap(), len as u64);
    assert_eq!(last, (len as u64, len as u64));
    assert!(out == std::fs::read(&file).unwrap(), "bytes differ for a {len}-byte export");
    let stats = served.unwrap();
    assert_eq!(stats.bytes_read, len as u64);
    assert_eq!(stats.requests, len.div_ceil(MIB) as u64 + 1, "one READ per MiB, then DISC");
    assert_eq!(stats.errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_export() {
    roundtrip(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_around_the_chunk() {
    for len in [1, 4095, MIB - 1, MIB, MIB + 1, 3 * MIB + 12_345] {
        roundtrip(len).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larger_than_the_window() {
    roundtrip(40 * MIB + 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "disk", 64 * MIB, 9);
    let export = Export::open(&file, true).unwrap();
    let cancel = CancellationToken::new();
    let (a, b) = tokio::io::duplex(64 << 10);
    let mut fired = None;
    let mut out = Vec::new();
    let server = {
        let cancel = cancel.clone();
        async move {
            let r = serve(a, &export, cancel).await;
            (r, Instant::now())
        }
    };
    let client = cat(b, &mut out, |done, _| {
        if done >= 4 * MIB as u64 && fired.is_none() {
            fired = Some(Instant::now());
            cancel.cancel();
        }
    });
    let ((served, ended), copied) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(server, client) })
            .await
            .expect("serve or cat hung after cancellation");
    assert!(matches!(served, Err(Error::Cancelled)), "{served:?}");
    let err = copied.expect_err("the client must see the transfer cut short");
    assert!(matches!(err, Error::Truncated { .. } | Error::Io(_)), "{err:?}");
    let waited = ended.duration_since(fired.expect("cancel fired"));
    assert!(waited < Duration::from_millis(500), "serve took {waited:?} to return after cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_from_an_offset() {
    let dir = tempfile::tempdir().unwrap();
    let len = 5 * MIB + 321;
    let file = random_file(dir.path(), "disk", len, 3);
    let data = std::fs::read(&file).unwrap();
    let export = Export::open(&file, true).unwrap();
    for offset in [0, 1, MIB - 1, 2 * MIB, len - 1, len] {
        let (a, b) = tokio::io::duplex(256 << 10);
        let mut out = Vec::new();
        let mut seen = vec![];
        let client = async {
            let conn = Connection::open(b).await?;
            assert_eq!((conn.size(), conn.read_only()), (len as u64, true));
            conn.read_to(offset as u64, &mut out, |done, total| seen.push((done, total))).await
        };
        let (served, copied) = tokio::join!(serve(a, &export, CancellationToken::new()), client);
        assert_eq!(copied.unwrap(), (len - offset) as u64);
        assert!(out == data[offset..], "bytes from {offset} differ");
        assert_eq!(seen.first(), Some(&(offset as u64, len as u64)));
        assert_eq!(seen.last(), Some(&(len as u64, len as u64)));
        assert_eq!(served.unwrap().bytes_read, (len - offset) as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_land_flushed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let len = 20 * MIB + 5;
    let file = random_file(dir.path(), "disk", len, 4);
    let before = std::fs::read(&file).unwrap();
    let export = Export::open(&file, false).unwrap();
    let new = common::random_bytes(11 * MIB + 9, 5);
    let offset = 3 * MIB as u64 + 1;
    let (a, b) = tokio::io::duplex(256 << 10);
    let mut acked = vec![];
    let client = async {
        let conn = Connection::open(b).await?;
        assert!(!conn.read_only());
        conn.write_from(offset, new.len() as u64, &mut &new[..], |done, _| acked.push(done)).await
    };
    let (served, wrote) = tokio::join!(serve(a, &export, CancellationToken::new()), client);
    assert_eq!(wrote.unwrap(), new.len() as u64);
    let stats = served.unwrap();
    assert_eq!(stats.bytes_written, new.len() as u64, "the server got exactly the range");
    assert_eq!(stats.requests, new.len().div_ceil(MIB) as u64 + 2, "one WRITE per MiB, FLUSH, DISC");
    assert!(acked.windows(2).all(|w| w[0] < w[1]), "progress went back: {acked:?}");
    assert_eq!(acked.last(), Some(&(offset + new.len() as u64)));
    let mut want = before;
    want[offset as usize..offset as usize + new.len()].copy_from_slice(&new);
    assert!(std::fs::read(&file).unwrap() == want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_on_a_read_only_export_or_past_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "disk", MIB, 6);
    for (read_only, offset, len) in [(true, 0, 10), (false, 0, MIB as u64 + 1), (false, MIB as u64, 1)] {
        let export = Export::open(&file, read_only).unwrap();
        let (a, b) = tokio::io::duplex(64 << 10);
        let client = async {
            let conn = Connection::open(b).await?;
            conn.write_from(offset, len, &mut &[0u8; 16][..], |_, _| {}).await
        };
        let (served, wrote) = tokio::join!(serve(a, &export, CancellationToken::new()), client);
        let e = wrote.unwrap_err();
        match read_only {
            true => assert!(matches!(e, Error::ReadOnly), "{e:?}"),
            false => assert!(matches!(e, Error::OutOfRange { size, .. } if size == MIB as u64), "{e:?}"),
        }
        assert_eq!(served.unwrap().bytes_written, 0);
    }
}

/// The node spawns both futures on a multi-threaded runtime, so they must be `Send`.
#[allow(dead_code)]
fn futures_are_send(export: &Export, a: tokio::net::UnixStream, b: tokio::net::UnixStream, out: &mut tokio::fs::File) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&serve(a, export, CancellationToken::new()));
    is_send(&cat(b, out, |_, _| {}));
}
