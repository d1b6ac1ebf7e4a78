//! Interop with real NBD tools: libnbd's nbdinfo and nbdcopy and qemu-img against our server, and our client
//! against nbdkit and qemu-nbd. Needs `apt-get install -y libnbd-bin nbdkit qemu-utils`; fails if they are missing.

mod common;

use std::process::Stdio;

use common::{hash_file, random_file, require, run, run_ok, uri, wait_for_socket, UnixServer};
use metac_block::{cat, Export};
use tokio::net::UnixStream;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_reports_size_and_read_only() {
    require("nbdinfo", "libnbd-bin");
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "disk", 3 * MIB + 17, 1);
    for read_only in [true, false] {
        let sub = tempfile::tempdir_in(dir.path()).unwrap();
        let server = UnixServer::start(sub.path(), Export::open(&file, read_only).unwrap());
        let out = run_ok("nbdinfo", &["--json", &uri(&server.sock)]).await;
        let json = String::from_utf8(out.stdout).unwrap();
        assert!(json.contains(&format!("\"export-size\": {}", 3 * MIB + 17)), "{json}");
        assert!(json.contains(&format!("\"is_read_only\": {read_only}")), "{json}");
        assert!(json.contains("\"can_flush\": true") && json.contains("\"can_multi_conn\": true"), "{json}");
        assert!(json.contains("\"protocol\": \"newstyle-fixed\""), "{json}");
        for r in server.stop().await {
            r.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_reads_identical_bytes() {
    require("nbdcopy", "libnbd-bin");
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "disk", 64 * MIB + 4097, 2);
    let server = UnixServer::start(dir.path(), Export::open(&file, true).unwrap());
    let copy = dir.path().join("copy");
    run_ok("nbdcopy", &[&uri(&server.sock), copy.to_str().unwrap()]).await;
    assert_eq!(hash_file(&copy), hash_file(&file));
    let results = server.stop().await;
    assert!(!results.is_empty());
    let read: u64 = results.into_iter().map(|r| r.unwrap().bytes_read).sum();
    assert_eq!(read, (64 * MIB + 4097) as u64, "every byte read exactly once over all connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_writes_to_a_writable_export_only() {
    require("nbdcopy", "libnbd-bin");
    let dir = tempfile::tempdir().unwrap();
    let len = 8 * MIB + 333;
    let target = random_file(dir.path(), "target", len, 3);
    let source = random_file(dir.path(), "source", len, 4);
    let before = hash_file(&target);

    let ro = tempfile::tempdir_in(dir.path()).unwrap();
    let server = UnixServer::start(ro.path(), Export::open(&target, true).unwrap());
    let out = run("nbdcopy", &[source.to_str().unwrap(), &uri(&server.sock)]).await;
    assert!(!out.status.success(), "nbdcopy to a read-only export must fail");
    server.stop().await;
    assert_eq!(hash_file(&target), before);

    let rw = tempfile::tempdir_in(dir.path()).unwrap();
    let server = UnixServer::start(rw.path(), Export::open(&target, false).unwrap());
    run_ok("nbdcopy", &["--flush", source.to_str().unwrap(), &uri(&server.sock)]).await;
    let written: u64 = server.stop().await.into_iter().map(|r| r.unwrap().bytes_written).sum();
    assert_eq!(written, len as u64);
    assert_eq!(hash_file(&target), hash_file(&source));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_converts_from_our_server() {
    require("qemu-img", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "disk", 5 * MIB + 512, 5);
    let server = UnixServer::start(dir.path(), Export::open(&file, true).unwrap());
    let copy = dir.path().join("copy");
    run_ok("qemu-img", &["convert", "-f", "raw", "-O", "raw", &uri(&server.sock), copy.to_str().unwrap()]).await;
    assert_eq!(hash_file(&copy), hash_file(&file));
    server.stop().await;
}

/// Runs our client against a socket and returns the bytes it produced.
async fn cat_socket(sock: &std::path::Path) -> Vec<u8> {
    let stream = UnixStream::connect(sock).await.unwrap();
    let mut out = Vec::new();
    let mut calls = 0;
    let n = cat(stream, &mut out, |_, _| calls += 1).await.unwrap();
    assert_eq!(n, out.len() as u64);
    assert!(calls >= 2);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cat_reads_from_nbdkit() {
    require("nbdkit", "nbdkit");
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "disk", 20 * MIB + 123, 6);
    let sock = dir.path().join("nbdkit.sock");
    let mut child = tokio::process::Command::new("nbdkit")
        .args(["-r", "-f", "--unix", sock.to_str().unwrap(), "file", file.to_str().unwrap()])
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot run nbdkit");
    wait_for_socket(&sock).await;
    let out = cat_socket(&sock).await;
    assert_eq!(blake3::hash(&out), hash_file(&file));
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cat_reads_from_qemu_nbd() {
    require("qemu-nbd", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(dir.path(), "disk", 9 * MIB + 4096, 7);
    let sock = dir.path().join("qemu.sock");
    let mut child = tokio::process::Command::new("qemu-nbd")
        .args(["-r", "-t", "-f", "raw", "-k", sock.to_str().unwrap(), file.to_str().unwrap()])
        .kill_on_drop(true)
        .spawn()
        .expect("cannot run qemu-nbd");
    wait_for_socket(&sock).await;
    let out = cat_socket(&sock).await;
    assert_eq!(blake3::hash(&out), hash_file(&file));
    child.kill().await.unwrap();
}
