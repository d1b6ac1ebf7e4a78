//! Our client against our server over an in-memory duplex stream: sizes around the chunk size, an empty export,
//! and cancellation in the middle of a transfer.

mod common;

use std::time::{Duration, Instant};

use common::random_file;
use metac_block::{cat, serve, Error, Export};
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

/// The node spawns both futures on a multi-threaded runtime, so they must be `Send`.
#[allow(dead_code)]
fn futures_are_send(export: &Export, a: tokio::net::UnixStream, b: tokio::net::UnixStream, out: &mut tokio::fs::File) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&serve(a, export, CancellationToken::new()));
    is_send(&cat(b, out, |_, _| {}));
}
