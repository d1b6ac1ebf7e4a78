//! Reads a whole NBD export from a Unix socket with the `metac file cat` client and writes it to stdout:
//! `cargo run --release -p metac-block --example cat_unix -- SOCKET > OUT`. Prints the rate on stderr.

use std::time::Instant;

use metac_block::cat;
use tokio::net::UnixStream;

#[tokio::main]
async fn main() {
    let Some(sock) = std::env::args_os().nth(1) else {
        eprintln!("usage: cat_unix SOCKET > OUT");
        std::process::exit(2);
    };
    let stream = UnixStream::connect(&sock).await.unwrap_or_else(|e| panic!("connect: {e}"));
    let mut out = tokio::io::stdout();
    let start = Instant::now();
    match cat(stream, &mut out, |_, _| {}).await {
        Ok(n) => {
            let secs = start.elapsed().as_secs_f64();
            eprintln!("{n} bytes in {secs:.3} s, {:.0} MiB/s", n as f64 / secs / 1048576.0);
        }
        Err(e) => {
            eprintln!("cat: {e}");
            std::process::exit(1);
        }
    }
}
