//! Fuzzes metac-fs/2 as both ends receive it: a frame body decoded as a `Request` (what a binder sends the
//! exporter) and as a `Response` (what an exporter sends the binder). Each must return Ok or Err, never panic;
//! whatever decodes must survive an encode/decode round trip, and a decoded request must be answered by a real
//! server on a small read-only tree with a reply or an errno, never a panic.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use metac_fs::proto::{decode_request, decode_response};
use metac_fs::server::Server;

struct Tree {
    _dir: tempfile::TempDir,
    server: Server,
}

fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("d/e")).unwrap();
        std::fs::write(dir.path().join("f"), b"data").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink("../..", dir.path().join("d/up")).unwrap();
        let root = std::fs::File::open(dir.path()).unwrap();
        let server = Server::new(root.into(), true).unwrap();
        Tree { _dir: dir, server }
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode_request(data) {
        let again = postcard::to_allocvec(&r).expect("a decoded request encodes");
        assert_eq!(decode_request(&again).expect("re-decoding an encoded request"), r);
        let _ = tree().server.handle(r.op);
    }
    if let Ok(r) = decode_response(data) {
        let again = postcard::to_allocvec(&r).expect("a decoded response encodes");
        assert_eq!(decode_response(&again).expect("re-decoding an encoded response"), r);
    }
});
