//! Fuzzes the mesh RPC codec as a peer's bytes reach it: every frame payload decodes as a request and as a response
//! (`metac_mesh::net::decode_request`, `decode_response`) or fails, never panics; whatever decodes survives an
//! encode/decode round trip; and a decoded sync page (its range and digest, however wrong) is answered by a core
//! holding a few dozen nodes with a page inside that range and within its byte budget.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use metac_mesh::advert::Advert;
use metac_mesh::core::{Config, Core};
use metac_mesh::net::{decode_request, decode_response, encode, Request, Response, PAGE_BYTES};
use metac_mesh::Identity;

/// Signed adverts of 48 nodes, made once (signing is the slow part).
fn adverts() -> &'static Vec<metac_mesh::advert::Signed> {
    static ADVERTS: OnceLock<Vec<metac_mesh::advert::Signed>> = OnceLock::new();
    ADVERTS.get_or_init(|| {
        (0..48u8)
            .map(|i| {
                let id = Identity::from_secret([i; 32]);
                Advert { node: id.public(), seq: 1, addrs: vec![], tunnel: None, resources: vec![], revoked: vec![] }
                    .sign(&id)
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_request(data) {
        let again = encode(&req).expect("a decoded request encodes");
        assert_eq!(decode_request(&again).expect("re-decoding"), req);
        if let Request::SyncPage { range, digest, .. } = req {
            let mut core = Core::new(Identity::from_secret([200; 32]), Config::default(), 1, 0);
            let from = adverts()[0].node();
            core.handle_adverts(adverts().clone(), from, 0);
            let (page, next) = core.handle_sync_range(from, &range, &digest, PAGE_BYTES, 1);
            assert!(page.iter().all(|a| range.contains(&a.node())), "a page stays in its range");
            assert!(next.is_none_or(|k| range.contains(&k)), "a page goes on inside its range");
            let bytes: usize = page.iter().map(|a| a.wire_len()).sum();
            assert!(bytes <= PAGE_BYTES.max(page.first().map_or(0, |a| a.wire_len())));
        }
    }
    if let Ok(res) = decode_response(data) {
        let again = encode(&res).expect("a decoded response encodes");
        assert_eq!(decode_response(&again).expect("re-decoding"), res);
        if let Response::SyncPage { adverts, .. } | Response::Sync { adverts, .. } = res {
            for a in adverts.iter().take(4) {
                let _ = a.verify();
            }
        }
    }
});
