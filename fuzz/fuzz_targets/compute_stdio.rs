//! Fuzzes the attach framing of metac-compute (`stdio`) as the shim and the node receive it: any bytes, decoded
//! frame by frame with `Frame::decode`, through the shim's streaming `Decoder` fed in uneven pieces, and through
//! the blocking `read_frame`, give frames or an error, never a panic. Whatever decodes re-encodes to the bytes it
//! came from, and the three readers agree on the frames and on where and why they stopped.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metac_compute::stdio::{read_frame, Decoder, Frame};

fuzz_target!(|data: &[u8]| {
    // Frame by frame from the whole buffer; ends with the bytes left over, or the error.
    let mut whole = Vec::new();
    let mut rest = data;
    let whole_end = loop {
        match Frame::decode(rest) {
            Ok(Some((frame, used))) => {
                assert!(used > 0 && used <= rest.len());
                let mut again = Vec::new();
                frame.encode(&mut again);
                assert_eq!(again, rest[..used], "a decoded frame re-encodes to its bytes");
                whole.push(frame);
                rest = &rest[used..];
            }
            Ok(None) => break Ok(rest.len()),
            Err(e) => break Err(e.to_string()),
        }
    };

    // The same bytes through the streaming decoder, in pieces of 1 to 17 bytes chosen by the data.
    let step = data.first().map_or(1, |b| usize::from(b % 17) + 1);
    let mut decoder = Decoder::new();
    let mut streamed = Vec::new();
    let mut input = data;
    let streamed_end = 'feed: loop {
        loop {
            match decoder.next() {
                Ok(Some(frame)) => streamed.push(frame),
                Ok(None) => break,
                Err(e) => break 'feed Err(e.to_string()),
            }
        }
        if input.is_empty() {
            break Ok(decoder.buffered());
        }
        let n = decoder.read_from(&mut &input[..step.min(input.len())]).expect("room once the frames are taken");
        input = &input[n..];
    };
    assert_eq!(streamed, whole);
    assert_eq!(streamed_end, whole_end);

    // And through the blocking reader, which stops at the same frame.
    let mut r = data;
    let mut read = Vec::new();
    while let Ok(Some(frame)) = read_frame(&mut r) {
        read.push(frame);
    }
    assert_eq!(read, whole);
});
