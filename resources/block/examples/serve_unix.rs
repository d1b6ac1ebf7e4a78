//! Serves a file over NBD on a Unix socket until killed, for trying real clients and measuring throughput:
//! `cargo run --release -p metac-block --example serve_unix -- FILE SOCKET [--rw]`.

use std::path::PathBuf;

use metac_block::{serve, Export};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(file), Some(sock)) = (args.next().map(PathBuf::from), args.next().map(PathBuf::from)) else {
        eprintln!("usage: serve_unix FILE SOCKET [--rw]");
        std::process::exit(2);
    };
    let read_only = args.next().is_none_or(|a| a != "--rw");
    let export = Export::open(&file, read_only).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap_or_else(|e| panic!("bind {}: {e}", sock.display()));
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        let export = export.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, &export, CancellationToken::new()).await {
                eprintln!("serve: {e}");
            }
        });
    }
}
