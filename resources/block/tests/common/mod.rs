//! Helpers shared by the integration tests: random files, hashing, a Unix-socket NBD server, external tools.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use metac_block::{serve, Error, Export, Stats};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Deterministic pseudo-random bytes (splitmix64), fast enough for files of hundreds of MiB.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `len` pseudo-random bytes to `dir/name` and returns the path.
pub fn random_file(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, random_bytes(len, seed)).unwrap();
    path
}

/// blake3 of a file's contents.
pub fn hash_file(path: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(path).unwrap())
}

/// An NBD URI for a Unix socket.
pub fn uri(sock: &Path) -> String {
    format!("nbd+unix:///?socket={}", sock.display())
}

/// Our server on a Unix socket: every accepted connection is served on the same export.
pub struct UnixServer {
    /// Socket path.
    pub sock: PathBuf,
    /// Stops accepting.
    stop_accepting: CancellationToken,
    /// Cancels every connection.
    pub cancel: CancellationToken,
    /// Results of every connection, in accept order, once accepting stopped and the connections ended.
    task: JoinHandle<Vec<Result<Stats, Error>>>,
}

impl UnixServer {
    /// Starts serving `export` on `dir/nbd.sock`.
    pub fn start(dir: &Path, export: Export) -> UnixServer {
        let sock = dir.join("nbd.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let (stop_accepting, cancel) = (CancellationToken::new(), CancellationToken::new());
        let (stop, token) = (stop_accepting.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            let mut conns = Vec::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    accepted = listener.accept() => {
                        let (stream, _) = accepted.unwrap();
                        let export = export.clone();
                        let token = token.clone();
                        conns.push(tokio::spawn(async move { serve(stream, &export, token).await }));
                    }
                }
            }
            let mut results = Vec::new();
            for c in conns {
                results.push(c.await.unwrap());
            }
            results
        });
        UnixServer { sock, stop_accepting, cancel, task }
    }

    /// Stops accepting, waits (10 s at most) for the connections to end by themselves, and returns their results.
    pub async fn stop(self) -> Vec<Result<Stats, Error>> {
        self.stop_accepting.cancel();
        let mut task = self.task;
        match tokio::time::timeout(Duration::from_secs(10), &mut task).await {
            Ok(results) => results.unwrap(),
            Err(_) => {
                self.cancel.cancel();
                panic!("connections still open 10 s after the client finished: {:?}", task.await.unwrap());
            }
        }
    }
}

/// Panics (the test fails, it is not skipped) if `tool` is not installed.
pub fn require(tool: &str, package: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false);
    assert!(found, "`{tool}` is missing: install it with `apt-get install -y {package}`");
}

/// Runs a command to completion (at most 120 s) and returns its output.
pub async fn run(program: &str, args: &[&str]) -> Output {
    let child = tokio::process::Command::new(program).args(args).kill_on_drop(true).output();
    tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} timed out"))
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs a command and panics with its stderr if it fails.
pub async fn run_ok(program: &str, args: &[&str]) -> Output {
    let out = run(program, args).await;
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Waits until a Unix socket accepts connections (a server started as a child process).
pub async fn wait_for_socket(sock: &Path) {
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(sock).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listens on {}", sock.display());
}
