//! Fuzzes the direct transport's sealed records as a node reads them off a TCP connection: arbitrary bytes (a
//! stranger on the network, or a damaged stream) must end in data or an error, never a panic, and never more than
//! one record's worth of buffering; and any input sealed into records by the writer with the same keys must read
//! back exactly.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use metac_resource::sealed::{Keys, Sealed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let (client, server) = Keys::derive(&[1; 32], &[2; 32], &[3; 16]);
    // Arbitrary bytes as the wire.
    let _ = now(async {
        let mut s = Sealed::new(tokio::io::join(data, tokio::io::sink()), &server);
        let mut out = Vec::new();
        s.read_to_end(&mut out).await
    });
    // The input sealed (cut at its first byte's worth, so records of many sizes), then opened.
    let cut = 1 + data.first().copied().unwrap_or(0) as usize * 64;
    let wire = now(async {
        let mut wire = Vec::new();
        let mut w = Sealed::new(tokio::io::join(tokio::io::empty(), &mut wire), &client);
        for chunk in data.chunks(cut) {
            w.write_all(chunk).await.expect("writing to a Vec");
        }
        w.shutdown().await.expect("shutting down a Vec");
        drop(w);
        wire
    });
    let back = now(async {
        let mut r = Sealed::new(tokio::io::join(&wire[..], tokio::io::sink()), &server);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.map(|_| out)
    });
    assert_eq!(back.expect("what was sealed opens"), data);
});

/// Runs `f` to its end: slices and Vecs never block, so one poll finishes it.
fn now<T>(f: impl Future<Output = T>) -> T {
    let f = pin!(f);
    let Poll::Ready(v) = f.poll(&mut Context::from_waker(Waker::noop())) else {
        panic!("IO on in-memory buffers did not finish");
    };
    v
}
