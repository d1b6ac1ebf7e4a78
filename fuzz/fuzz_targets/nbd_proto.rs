//! Fuzzes the pure NBD message decoders of `metac_block::nbd::proto` on the front of the input: fixed-size headers
//! (greeting, option, option reply, request, simple reply) and the variable payloads (`NBD_OPT_GO`/`INFO`,
//! `NBD_REP_INFO`). Each must return Ok or Err, never panic, and whatever decodes must encode back to exactly the
//! bytes it came from: every field of these messages is fixed-width, so there is one encoding per message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metac_block::nbd::proto::{Greeting, Info, InfoRequest, OptionHeader, OptionReplyHeader, Request, SimpleReply};

fuzz_target!(|data: &[u8]| {
    if let Some(b) = head(data) {
        if let Ok(m) = Greeting::decode(b) {
            assert_eq!(&m.encode(), b);
        }
    }
    if let Some(b) = head(data) {
        if let Ok(m) = OptionHeader::decode(b) {
            assert_eq!(&m.encode(), b);
        }
    }
    if let Some(b) = head(data) {
        if let Ok(m) = OptionReplyHeader::decode(b) {
            assert_eq!(&m.encode(), b);
        }
    }
    if let Some(b) = head(data) {
        if let Ok(m) = Request::decode(b) {
            assert_eq!(&m.encode(), b);
        }
    }
    if let Some(b) = head(data) {
        if let Ok(m) = SimpleReply::decode(b) {
            assert_eq!(&m.encode(), b);
        }
    }
    if let Ok(r) = InfoRequest::decode(data) {
        let requests: Vec<u16> = r.requests().collect();
        assert_eq!(InfoRequest::encode(r.name, &requests), data);
    }
    match Info::decode(data) {
        // An unknown information type keeps only its type; the rest of the payload is ignored.
        Ok(i @ Info::Other(_)) => assert_eq!(i.encode(), data[..2]),
        Ok(i) => assert_eq!(i.encode(), data),
        Err(_) => {}
    }
});

/// The first `N` bytes of `data`, if it has that many.
fn head<const N: usize>(data: &[u8]) -> Option<&[u8; N]> {
    data.get(..N)?.try_into().ok()
}
