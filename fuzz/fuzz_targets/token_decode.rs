//! Fuzzes every way untrusted token bytes enter metac: raw postcard bytes, base64 text and full `ref://` strings.
//! Each must return Ok or Err, never panic, and whatever decodes must survive an encode/decode round trip.

#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use metac_mesh::token::{Ref, Token};

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Token::decode(data) {
        // postcard varints accept non-canonical forms, so compare tokens, not bytes.
        assert_eq!(Token::decode(&t.encode()).expect("re-decoding an encoded token"), t);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Token::from_base64(s);
        if let Ok(r) = Ref::from_str(s) {
            assert_eq!(Ref::from_str(&r.to_string()).expect("re-parsing a displayed ref"), r);
        }
    }
});
