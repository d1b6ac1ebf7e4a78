//! Serves a file over NBD on a Unix socket until killed, for trying real clients and measuring throughput:
//! `cargo run --release -p metac-block --example serve_unix -- FILE SOCKET [--rw] [--sndbuf BYTES]`.
//!
//! `--sndbuf` sets SO_SNDBUF on each accepted socket: replies of 256 KiB and more do not fit the default (208 KiB
//! on Linux), and each partial write costs a wake-up; 4 MiB made 1 GiB reads with nbdcopy ~20% faster here.

use std::path::PathBuf;

use metac_block::{serve, Export};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: serve_unix FILE SOCKET [--rw] [--sndbuf BYTES]");
        std::process::exit(2);
    }
    let (file, sock) = (PathBuf::from(&args[0]), PathBuf::from(&args[1]));
    let read_only = !args.iter().any(|a| a == "--rw");
    let sndbuf = args.iter().position(|a| a == "--sndbuf").and_then(|i| args.get(i + 1)?.parse::<usize>().ok());
    let export = Export::open(&file, read_only).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap_or_else(|e| panic!("bind {}: {e}", sock.display()));
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        if let Some(size) = sndbuf {
            socket2::SockRef::from(&stream).set_send_buffer_size(size).expect("SO_SNDBUF");
        }
        let export = export.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, &export, CancellationToken::new()).await {
                eprintln!("serve: {e}");
            }
        });
    }
}
