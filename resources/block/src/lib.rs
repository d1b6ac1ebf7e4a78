//! metac file and block export over the NBD protocol.
//!
//! A `file` resource is an [`Export`] (a regular file or a block device) served with [`serve`] over any byte
//! stream, one NBD client per stream. The stream is whatever the transport hands over (a metac resource stream, a
//! Unix socket for local tools); `serve` speaks fixed newstyle NBD on it, so real clients (`nbdinfo`, `nbdcopy`,
//! `qemu-img`, qemu, the kernel's nbd-client) work unchanged. [`Connection`] is the matching client used by
//! `metac file cat`, `get` and `put`: it reads the export from an offset, or writes a range of it, with several
//! requests in flight ([`cat`] reads the whole export to any sink).
//!
//! Layout: [`nbd::proto`] holds the wire messages (pure encode/decode), `server` and `client` drive them over a
//! stream, `export` is the OS glue (open, size, positional IO), and [`file`] is the `file` kind as the node sees it
//! (its exporter, its binds, its API routes). [`vm`] runs VMs whose disks are file binds (`metac vm`), and serves
//! its routes beside the file kind's.

mod client;
mod export;
pub mod file;
pub mod nbd;
mod server;
pub mod vm;

use std::io;
use std::path::PathBuf;

pub use client::{cat, Connection, SERVER_STALL_TIMEOUT};
pub use export::{Export, FileId};
pub use file::File;
pub use server::{serve, Stats, NEGOTIATION_TIMEOUT, STALL_TIMEOUT};

/// What failed while exporting, serving or reading an export.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path could not be opened or inspected.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The path no longer names the file that was exported.
    #[error("{} is now {what}, not the file that was exported: unexport it, and export the file again if that is \
             what you want", path.display())]
    Replaced {
        /// The path exported.
        path: PathBuf,
        /// What is there now.
        what: String,
    },
    /// A block device named without saying so.
    #[error("{} is a block device: export a disk only on purpose, with `metac file export --block`", path.display())]
    BlockNotNamed {
        /// The path given.
        path: PathBuf,
    },
    /// The path is neither a regular file nor a block device.
    #[error("{} is neither a regular file nor a block device; export one of those", path.display())]
    NotExportable {
        /// The path given.
        path: PathBuf,
    },
    /// Reading or writing the stream failed, or the peer closed it mid-message.
    #[error("NBD connection: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not NBD.
    #[error("NBD protocol: {0}")]
    Proto(#[from] nbd::proto::Error),
    /// The peer broke a rule of the protocol.
    #[error("NBD protocol violation: {0}")]
    Violation(String),
    /// The peer stalled: it did not finish the handshake, a request, or take its replies in time.
    #[error("NBD peer stalled: {0}")]
    Stalled(String),
    /// The client kept negotiating without ever choosing the export.
    #[error("NBD client sent more than {0} options without starting transmission")]
    TooManyOptions(usize),
    /// The server refused an option the client needs.
    #[error("NBD server refused option {option} (reply type {reply:#x}): {message:?}")]
    Refused {
        /// The option code.
        option: u32,
        /// The error reply type.
        reply: u32,
        /// The server's message, if any.
        message: String,
    },
    /// The server answered a request with an error.
    #[error("NBD server failed a {command} of {len} bytes at offset {offset}: error {errno}")]
    Remote {
        /// What was asked: `read`, `write` or `flush`.
        command: &'static str,
        /// NBD error value (errno-like).
        errno: u32,
        /// Offset of the failed request.
        offset: u64,
        /// Length of the failed request.
        len: u32,
    },
    /// The server closed the connection before the whole export was read.
    #[error("NBD server closed the connection after {done} of {total} bytes")]
    Truncated {
        /// Bytes received in order.
        done: u64,
        /// Export size.
        total: u64,
    },
    /// A write to an export the server shows read-only.
    #[error(
        "the export is read-only here (the ref grants no write, or the file was exported read-only): writing \
             needs a ref with write access"
    )]
    ReadOnly,
    /// A transfer that would reach past the end of the export.
    #[error("the range ends at byte {end} but the export is {size} bytes; NBD cannot grow an export")]
    OutOfRange {
        /// Where the transfer would end.
        end: u64,
        /// Export size.
        size: u64,
    },
    /// The data to write ended before the length announced.
    #[error("the data to write ended at offset {offset}, before the announced end {end}")]
    InputEnded {
        /// Where it ended.
        offset: u64,
        /// Where it should have ended.
        end: u64,
    },
    /// Serving stopped because the cancellation token fired.
    #[error("NBD export cancelled")]
    Cancelled,
}
