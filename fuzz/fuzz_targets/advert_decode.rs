//! Fuzzes signed adverts as they arrive from the mesh, through both decoders: `Signed::decode` (a whole message)
//! and the serde impl (an advert inside another postcard message). Both must return Ok or Err, never panic, and
//! agree; checking the signature of whatever decodes must not panic; and an advert must survive a round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metac_mesh::advert::{Signed, MAX_ADVERT_BYTES};

fuzz_target!(|data: &[u8]| {
    let decoded = Signed::decode(data);
    if data.len() <= MAX_ADVERT_BYTES {
        let via_serde = postcard::from_bytes::<Signed>(data);
        assert_eq!(decoded.as_ref().ok(), via_serde.as_ref().ok(), "the two advert decoders disagree");
    }
    if let Ok(s) = decoded {
        let _ = s.verify();
        assert_eq!(Signed::decode(&s.encode()).expect("re-decoding an encoded advert"), s);
    }
});
