//! `metac file get` and `put` end to end: two real nodes in one process (see `common`), the copy logic of
//! `metac_block::file::copy` (what the CLI runs) calling the second node's API, which reads and writes the first
//! node's export over NBD.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{Cluster, ROOT};
use metac_api::Client;
use metac_block::file::copy::{self, CopyError, GetReport, PutReport};
use metac_mesh::kind::{Kind, Rights};
use metac_mesh::token::{Caveat, Ref};
use metac_node::access::Access;
use metac_node::Node;
use tokio_util::sync::CancellationToken;

const MIB: usize = 1 << 20;

/// Serves node `i`'s API on a socket of its own and returns a client of it.
fn api(c: &Cluster, i: usize) -> (Client, CancellationToken) {
    let sock = c.dir.path().join(format!("api{i}.sock"));
    let listener = metac_node::api::bind(&sock, None).unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(metac_node::api::serve(listener, Arc::clone(c.nodes[i].n()), Access::new(None), cancel.clone()));
    (Client::new(sock), cancel)
}

async fn export(node: &Node, path: &Path) -> String {
    let (_, r): (_, Ref) =
        node.export(Kind::File, path.display().to_string(), None, None, serde_json::Value::Null, &ROOT).await.unwrap();
    r.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_copies_resumes_a_partial_file_and_leaves_a_complete_one() {
    let mut c = Cluster::start(2).await;
    let (path, data) = c.file("disk.img", 9 * MIB + 5);
    let r = export(c.nodes[0].n(), &path).await;
    let (client, stop) = api(&c, 1);
    let local = c.dir.path().join("copy.img");

    let got = copy::get(&client, &r, &local, false, false).await.unwrap();
    assert_eq!(got, GetReport { size: data.len() as u64, resumed_from: 0, copied: data.len() as u64, complete: false });
    assert!(std::fs::read(&local).unwrap() == data);

    // An interrupted copy: the file is a prefix of the export.
    let cut = 5 * MIB + 3;
    std::fs::write(&local, &data[..cut]).unwrap();
    let got = copy::get(&client, &r, &local, false, false).await.unwrap();
    assert_eq!((got.resumed_from, got.copied, got.complete), (cut as u64, (data.len() - cut) as u64, false));
    assert!(std::fs::read(&local).unwrap() == data);

    let got = copy::get(&client, &r, &local, false, false).await.unwrap();
    assert_eq!((got.copied, got.complete), (0, true));

    // Shorter than the check window too.
    std::fs::write(&local, &data[..100]).unwrap();
    copy::get(&client, &r, &local, false, false).await.unwrap();
    assert!(std::fs::read(&local).unwrap() == data);
    stop.cancel();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_refuses_a_partial_file_that_is_not_this_export_unless_forced() {
    let mut c = Cluster::start(2).await;
    let (path, data) = c.file("disk.img", 3 * MIB);
    let r = export(c.nodes[0].n(), &path).await;
    let (client, stop) = api(&c, 1);
    let local = c.dir.path().join("other.img");
    let mut other = data[..2 * MIB].to_vec();
    other[2 * MIB - 10] ^= 0xff;
    std::fs::write(&local, &other).unwrap();

    let e = copy::get(&client, &r, &local, false, false).await.unwrap_err();
    assert!(matches!(e, CopyError::Mismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("--force"), "{e}");
    assert!(std::fs::read(&local).unwrap() == other, "a refused get changed the file");

    // Larger than the export: not a partial copy either.
    std::fs::write(&local, vec![0u8; 3 * MIB + 1]).unwrap();
    let e = copy::get(&client, &r, &local, false, false).await.unwrap_err();
    assert!(matches!(e, CopyError::Larger { .. }), "{e:?}");

    let got = copy::get(&client, &r, &local, true, false).await.unwrap();
    assert_eq!((got.resumed_from, got.copied), (0, data.len() as u64));
    assert!(std::fs::read(&local).unwrap() == data);
    stop.cancel();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_then_get_gives_the_same_bytes_and_resume_writes_only_the_rest() {
    let mut c = Cluster::start(2).await;
    let (remote, _) = c.file("disk.img", 12 * MIB);
    std::fs::write(&remote, vec![0u8; 12 * MIB]).unwrap();
    let r = export(c.nodes[0].n(), &remote).await;
    let (client, stop) = api(&c, 1);
    let (local, data) = c.file("local.img", 10 * MIB + 77);

    let put = copy::put(&client, &local, &r, false, false).await.unwrap();
    assert_eq!(put, PutReport { size: data.len() as u64, skipped: 0, written: data.len() as u64 });
    let on_disk = std::fs::read(&remote).unwrap();
    assert!(on_disk[..data.len()] == data[..], "the export does not hold the file after put");
    assert!(on_disk[data.len()..].iter().all(|&b| b == 0), "put wrote past the file's end");
    let back = c.dir.path().join("back.img");
    copy::get(&client, &r, &back, false, false).await.unwrap();
    assert!(std::fs::read(&back).unwrap()[..data.len()] == data[..]);

    // An interrupted put: only the first 8 MiB made it.
    let mut half = data[..8 * MIB].to_vec();
    half.resize(12 * MIB, 0);
    std::fs::write(&remote, &half).unwrap();
    let put = copy::put(&client, &local, &r, true, false).await.unwrap();
    assert_eq!(put, PutReport { size: data.len() as u64, skipped: 8 * MIB as u64, written: (2 * MIB + 77) as u64 });
    // The exporter's own count of the bytes a write sends is checked at the NBD level (`metac-block`'s
    // `pipelined_writes_land_flushed_and_counted`): one-shot sessions leave the node's listing when they end.
    assert!(std::fs::read(&remote).unwrap()[..data.len()] == data[..]);

    // Nothing left to write.
    let put = copy::put(&client, &local, &r, true, false).await.unwrap();
    assert_eq!((put.skipped, put.written), (data.len() as u64, 0));
    stop.cancel();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_refuses_a_read_only_ref_and_a_larger_file_before_writing() {
    let mut c = Cluster::start(2).await;
    let (remote, original) = c.file("disk.img", 2 * MIB);
    let a = c.nodes[0].n();
    let (_, rw): (_, Ref) =
        a.export(Kind::File, remote.display().to_string(), None, None, serde_json::Value::Null, &ROOT).await.unwrap();
    let ro = a.delegate(&rw, &Caveat { rights: Some(Rights::READ), ..Caveat::default() }, false, &ROOT).unwrap();
    let (client, stop) = api(&c, 1);
    let (small, _) = c.file("small.img", MIB);
    std::fs::write(&small, vec![1u8; MIB]).unwrap();

    let e = copy::put(&client, &small, &ro.to_string(), false, false).await.unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");

    let (large, _) = c.file("large.img", 2 * MIB + 1);
    let e = copy::put(&client, &large, &rw.to_string(), false, false).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&(2 * MIB + 1).to_string()) && msg.contains(&(2 * MIB).to_string()), "{msg}");
    let e = copy::put(&client, &large, &rw.to_string(), true, false).await.unwrap_err();
    assert!(
        matches!(e, CopyError::Larger { local, remote, .. } if local == 2 * MIB as u64 + 1 && remote == 2 * MIB as u64),
        "{e:?}"
    );

    assert!(std::fs::read(&remote).unwrap() == original, "a refused put changed the export");
    stop.cancel();
    c.stop().await;
}
