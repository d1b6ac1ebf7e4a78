//! Fuzzes the resource handshake as the exporting node and the binder receive it: a frame body decoded as a
//! `Hello` or a `Reply`, and the same bytes read as a length-prefixed frame off a stream. Each must return Ok or
//! Err, never panic, and whatever decodes must survive an encode/decode round trip.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use metac_resource::{frame, Hello, Reply, MAX_HELLO_BYTES};
use serde::de::DeserializeOwned;
use serde::Serialize;

fuzz_target!(|data: &[u8]| {
    round_trip::<Hello>(data);
    round_trip::<Reply>(data);
    read_frame::<Hello>(data);
    read_frame::<Reply>(data);
});

/// Decodes `body`; if that works, re-encoding must give a body that decodes to the same value.
fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(body: &[u8]) {
    if let Ok(v) = frame::decode::<T>(body) {
        let again = postcard::to_allocvec(&v).expect("a decoded message encodes");
        assert_eq!(frame::decode::<T>(&again).expect("re-decoding an encoded message"), v);
    }
}

/// Reads one frame off `data` as a stream. A byte slice never blocks, so one poll finishes the read.
fn read_frame<T: DeserializeOwned>(data: &[u8]) {
    let mut stream = data;
    let read = pin!(frame::read::<_, T>(&mut stream, MAX_HELLO_BYTES));
    let Poll::Ready(_) = read.poll(&mut Context::from_waker(Waker::noop())) else {
        panic!("reading a frame from a byte slice did not finish");
    };
}
