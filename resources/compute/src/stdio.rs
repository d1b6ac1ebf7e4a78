//! The framing of an attached container's standard streams. A client attached to a container (`metac run`
//! without `-d`, `metac attach`) and the container's shim talk over one byte stream (a Unix socket at the shim,
//! relayed by the node across the mesh): the shim sends what the container prints and, last, how it exited; the
//! client sends what the user types, window-size changes and signals. Everything travels as [`Frame`]s.
//!
//! # Wire format
//!
//! A frame is a 5-byte header and a payload:
//!
//! ```text
//! offset  size  field
//! 0       1     type (below)
//! 1       4     payload length, unsigned big-endian
//! 5       len   payload
//! ```
//!
//! | type | frame        | sent by | payload                                                              |
//! |------|--------------|---------|----------------------------------------------------------------------|
//! | 1    | `Stdin`      | client  | 0 to 65536 bytes for the container's standard input                  |
//! | 2    | `Stdout`     | shim    | 0 to 65536 bytes the container wrote to standard output (or the PTY) |
//! | 3    | `Stderr`     | shim    | 0 to 65536 bytes the container wrote to standard error               |
//! | 4    | `CloseStdin` | client  | empty: the client's input ended, close the container's stdin         |
//! | 5    | `Resize`     | client  | 4 bytes: rows u16 big-endian, then columns u16 big-endian            |
//! | 6    | `Signal`     | client  | 4 bytes: the signal number, i32 big-endian, 1 to 64                  |
//! | 7    | `Exit`       | shim    | 9 bytes, below; the shim's last frame                                |
//! | 8    | `Error`      | either  | 0 to 4096 bytes of UTF-8: why the sender is ending the stream        |
//! | 9    | `Ping`       | either  | empty: "still here", sent each second between two nodes of a remote run |
//!
//! The `Exit` payload is one flags byte (bit 0: the process exited with a code; bit 1: a signal killed it; bit 2:
//! the kernel's OOM killer acted in the container; the other bits are zero), the exit code as i32 big-endian (0 to
//! 255, and 0 when bit 0 is clear), then the signal number as i32 big-endian (1 to 64, and 0 when bit 1 is clear).
//!
//! Type 0 is never used, so a stream of zeros is refused at once. A receiver checks the type and the length
//! against the table as soon as it has the header, before allocating anything or waiting for the payload, and
//! refuses anything else: an unknown type, a length out of range, a payload that does not parse. Each of those
//! means the two sides are out of step, so the stream is dropped rather than resynchronised.
//!
//! Frames are separate from the fs and block protocols' postcard frames ([`metac_resource::frame`]) on purpose:
//! the shim is a small single-threaded process without serde or tokio, and output is relayed in hot loops where a
//! fixed header read straight into a reused buffer is what is wanted.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest payload of one frame. Output longer than this is sent as several frames.
pub const MAX_PAYLOAD: usize = 65536;
/// The longest reason an [`Frame::Error`] carries; a longer one is cut (at a character boundary) when encoded.
pub const MAX_ERROR: usize = 4096;
/// The size of a frame's header: the type byte and the big-endian u32 length.
pub const HEADER: usize = 5;
/// The highest signal number Linux has (SIGRTMAX); anything above it cannot name a signal.
const MAX_SIGNAL: i32 = 64;
/// The size of an [`Exit`] payload: flags, code, signal.
const EXIT_LEN: usize = 9;

const STDIN: u8 = 1;
const STDOUT: u8 = 2;
const STDERR: u8 = 3;
const CLOSE_STDIN: u8 = 4;
const RESIZE: u8 = 5;
const SIGNAL: u8 = 6;
const EXIT: u8 = 7;
const ERROR: u8 = 8;
const PING: u8 = 9;

const EXIT_CODE: u8 = 1;
const EXIT_SIGNAL: u8 = 2;
const EXIT_OOM: u8 = 4;

/// One message on an attached stream. See the module documentation for which side sends which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes for the container's standard input (or its PTY).
    Stdin(Vec<u8>),
    /// Bytes the container wrote to standard output, or to its PTY when it has one (a PTY merges both streams).
    Stdout(Vec<u8>),
    /// Bytes the container wrote to standard error (only when it runs without a PTY).
    Stderr(Vec<u8>),
    /// The client's standard input ended; the shim closes the container's stdin (or sends EOF on the PTY).
    CloseStdin,
    /// The client's terminal changed size; the shim sets the container's PTY to match.
    Resize {
        /// Height in character cells.
        rows: u16,
        /// Width in character cells.
        cols: u16,
    },
    /// Forward a signal (1 to 64) to the container's main process, as `docker kill -s` or a proxied Ctrl-C.
    Signal(i32),
    /// How the container's main process ended: the shim's last frame.
    Exit(Exit),
    /// The sender's reason for ending the stream, for the other side to show (at most [`MAX_ERROR`] bytes).
    Error(String),
    /// A sign of life between the two nodes of a remote run ([`crate::remote`]); never passed to a shim or a
    /// client.
    Ping,
}

/// How a container's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The code it passed to `exit`, if it exited (0 to 255).
    pub code: Option<i32>,
    /// The signal that killed it, if one did (1 to 64).
    pub signal: Option<i32>,
    /// Whether the kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
}

impl Exit {
    /// The status a shell would report, which `metac run` exits with: the exit code, or 128 plus the signal
    /// number for a killed process (137 for SIGKILL, which is also what an OOM kill without a recorded signal
    /// reports). 255 when neither is known or a value is out of range, so an unknown end never reads as success.
    pub fn status(&self) -> i32 {
        if let Some(code) = self.code {
            return if (0..=255).contains(&code) { code } else { 255 };
        }
        if let Some(signal) = self.signal {
            return if (1..=127).contains(&signal) { 128 + signal } else { 255 };
        }
        if self.oom_killed {
            137
        } else {
            255
        }
    }
}

/// Why a frame or a stream of frames was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the stream failed.
    #[error("reading the attached stream: {0}")]
    Io(#[from] io::Error),
    /// The header names a type this version does not know: the peer speaks another version, or is out of step.
    #[error("unknown stdio frame type {0}: the other side speaks another protocol version or is out of step")]
    UnknownType(u8),
    /// The header's length is outside what its type allows.
    #[error("{frame} frame of {len} bytes: it must carry {}", allowed(*.min, *.max))]
    Length {
        /// The frame's name.
        frame: &'static str,
        /// The length the header gave.
        len: u32,
        /// The fewest bytes the type carries.
        min: usize,
        /// The most bytes the type carries.
        max: usize,
    },
    /// The payload is the right size but does not parse.
    #[error("malformed {frame} frame: {why}")]
    Malformed {
        /// The frame's name.
        frame: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The stream ended part way through a frame: the other side died or closed early.
    #[error("the attached stream ended inside a frame, after {have} of its {need} bytes")]
    Truncated {
        /// How many bytes of the frame arrived.
        have: usize,
        /// How many it needed (the header's 5 while the header itself is short).
        need: usize,
    },
}

fn allowed(min: usize, max: usize) -> String {
    if min == max {
        format!("exactly {min}")
    } else {
        format!("{min} to {max}")
    }
}

fn name(kind: u8) -> &'static str {
    match kind {
        STDIN => "stdin",
        STDOUT => "stdout",
        STDERR => "stderr",
        CLOSE_STDIN => "close-stdin",
        RESIZE => "resize",
        SIGNAL => "signal",
        EXIT => "exit",
        ERROR => "error",
        PING => "ping",
        _ => "unknown",
    }
}

fn known(kind: u8) -> bool {
    (STDIN..=PING).contains(&kind)
}

/// Checks a header and returns its payload length: the one place a type's allowed lengths are written down.
fn check_header(kind: u8, len: u32) -> Result<usize, Error> {
    let (min, max) = match kind {
        STDIN | STDOUT | STDERR => (0, MAX_PAYLOAD),
        CLOSE_STDIN | PING => (0, 0),
        RESIZE | SIGNAL => (4, 4),
        EXIT => (EXIT_LEN, EXIT_LEN),
        ERROR => (0, MAX_ERROR),
        other => return Err(Error::UnknownType(other)),
    };
    match usize::try_from(len) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(Error::Length { frame: name(kind), len, min, max }),
    }
}

/// Parses the payload of a frame whose header [`check_header`] accepted.
fn parse(kind: u8, p: &[u8]) -> Result<Frame, Error> {
    let malformed = |why: String| Error::Malformed { frame: name(kind), why };
    let be32 = |b: &[u8]| i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Ok(match kind {
        STDIN => Frame::Stdin(p.to_vec()),
        STDOUT => Frame::Stdout(p.to_vec()),
        STDERR => Frame::Stderr(p.to_vec()),
        CLOSE_STDIN => Frame::CloseStdin,
        PING => Frame::Ping,
        RESIZE => Frame::Resize { rows: u16::from_be_bytes([p[0], p[1]]), cols: u16::from_be_bytes([p[2], p[3]]) },
        SIGNAL => {
            let signal = be32(p);
            if !(1..=MAX_SIGNAL).contains(&signal) {
                return Err(malformed(format!("signal number {signal} is not between 1 and {MAX_SIGNAL}")));
            }
            Frame::Signal(signal)
        }
        EXIT => {
            let (flags, code, signal) = (p[0], be32(&p[1..5]), be32(&p[5..9]));
            if flags & !(EXIT_CODE | EXIT_SIGNAL | EXIT_OOM) != 0 {
                return Err(malformed(format!("unknown flags {flags:#04x}")));
            }
            let code = match flags & EXIT_CODE != 0 {
                true if (0..=255).contains(&code) => Some(code),
                true => return Err(malformed(format!("exit code {code} is not between 0 and 255"))),
                false if code == 0 => None,
                false => return Err(malformed(format!("exit code {code} given without its flag"))),
            };
            let signal = match flags & EXIT_SIGNAL != 0 {
                true if (1..=MAX_SIGNAL).contains(&signal) => Some(signal),
                true => return Err(malformed(format!("signal number {signal} is not between 1 and {MAX_SIGNAL}"))),
                false if signal == 0 => None,
                false => return Err(malformed(format!("signal {signal} given without its flag"))),
            };
            Frame::Exit(Exit { code, signal, oom_killed: flags & EXIT_OOM != 0 })
        }
        ERROR => match std::str::from_utf8(p) {
            Ok(s) => Frame::Error(s.to_owned()),
            Err(e) => return Err(malformed(format!("the reason is not UTF-8 ({e})"))),
        },
        other => return Err(Error::UnknownType(other)),
    })
}

fn put(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.push(kind);
    // Payloads are at most MAX_PAYLOAD here, so the length fits.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Stdin(_) => STDIN,
            Frame::Stdout(_) => STDOUT,
            Frame::Stderr(_) => STDERR,
            Frame::CloseStdin => CLOSE_STDIN,
            Frame::Resize { .. } => RESIZE,
            Frame::Signal(_) => SIGNAL,
            Frame::Exit(_) => EXIT,
            Frame::Error(_) => ERROR,
            Frame::Ping => PING,
        }
    }

    /// Appends the frame's bytes to `out`. Data longer than [`MAX_PAYLOAD`] becomes several frames of the same
    /// type, which a reader of the byte stream cannot tell apart from one; an error reason longer than
    /// [`MAX_ERROR`] is cut. Values no real process produces (a signal outside 1 to 64, an exit code outside 0
    /// to 255) are written as given and refused by the receiver.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let kind = self.kind();
        match self {
            Frame::Stdin(data) | Frame::Stdout(data) | Frame::Stderr(data) => {
                if data.is_empty() {
                    put(out, kind, &[]);
                }
                for chunk in data.chunks(MAX_PAYLOAD) {
                    put(out, kind, chunk);
                }
            }
            Frame::CloseStdin | Frame::Ping => put(out, kind, &[]),
            Frame::Resize { rows, cols } => {
                let [r0, r1] = rows.to_be_bytes();
                let [c0, c1] = cols.to_be_bytes();
                put(out, kind, &[r0, r1, c0, c1]);
            }
            Frame::Signal(signal) => put(out, kind, &signal.to_be_bytes()),
            Frame::Exit(exit) => {
                let flags = if exit.code.is_some() { EXIT_CODE } else { 0 }
                    | if exit.signal.is_some() { EXIT_SIGNAL } else { 0 }
                    | if exit.oom_killed { EXIT_OOM } else { 0 };
                let mut p = [0u8; EXIT_LEN];
                p[0] = flags;
                p[1..5].copy_from_slice(&exit.code.unwrap_or(0).to_be_bytes());
                p[5..9].copy_from_slice(&exit.signal.unwrap_or(0).to_be_bytes());
                put(out, kind, &p);
            }
            Frame::Error(reason) => {
                let mut end = reason.len().min(MAX_ERROR);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                put(out, kind, &reason.as_bytes()[..end]);
            }
        }
    }

    /// Decodes the frame at the start of `buf`: `Ok(None)` while `buf` holds only part of it, otherwise the frame
    /// and the number of bytes it took. A bad header is refused as soon as `buf` holds it (a bad type as soon as
    /// `buf` holds one byte), so a caller never waits for, or buffers, the payload of a frame it will refuse.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, Error> {
        let Some(&kind) = buf.first() else { return Ok(None) };
        if !known(kind) {
            return Err(Error::UnknownType(kind));
        }
        let Some(head) = buf.get(..HEADER) else { return Ok(None) };
        let len = check_header(kind, u32::from_be_bytes([head[1], head[2], head[3], head[4]]))?;
        let Some(payload) = buf.get(HEADER..HEADER + len) else { return Ok(None) };
        Ok(Some((parse(kind, payload)?, HEADER + len)))
    }
}

/// Reads into `buf` until it is full or the stream ends; returns how many bytes arrived.
fn fill<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

async fn fill_async<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Checks a complete or short header read off a stream: `None` for a clean end before it, the type and payload
/// length otherwise.
fn stream_header(head: &[u8; HEADER], got: usize) -> Result<Option<(u8, usize)>, Error> {
    if got == 0 {
        return Ok(None);
    }
    if !known(head[0]) {
        return Err(Error::UnknownType(head[0]));
    }
    if got < HEADER {
        return Err(Error::Truncated { have: got, need: HEADER });
    }
    let len = check_header(head[0], u32::from_be_bytes([head[1], head[2], head[3], head[4]]))?;
    Ok(Some((head[0], len)))
}

/// Reads one frame from a blocking stream: `None` when the stream ends cleanly between frames. The payload is
/// allocated only after its header was checked, so at most [`MAX_PAYLOAD`] bytes.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Frame>, Error> {
    let mut head = [0u8; HEADER];
    let got = fill(r, &mut head)?;
    let Some((kind, len)) = stream_header(&head, got)? else { return Ok(None) };
    let mut payload = vec![0u8; len];
    let got = fill(r, &mut payload)?;
    if got < len {
        return Err(Error::Truncated { have: HEADER + got, need: HEADER + len });
    }
    parse(kind, &payload).map(Some)
}

/// Writes one frame (or several, for data over [`MAX_PAYLOAD`]) to a blocking stream, and flushes it.
pub fn write_frame<W: Write>(w: &mut W, f: &Frame) -> io::Result<()> {
    let mut buf = Vec::new();
    f.encode(&mut buf);
    w.write_all(&buf)?;
    w.flush()
}

/// [`read_frame`] for tokio streams (the node's side).
pub async fn read_frame_async<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, Error> {
    let mut head = [0u8; HEADER];
    let got = fill_async(r, &mut head).await?;
    let Some((kind, len)) = stream_header(&head, got)? else { return Ok(None) };
    let mut payload = vec![0u8; len];
    let got = fill_async(r, &mut payload).await?;
    if got < len {
        return Err(Error::Truncated { have: HEADER + got, need: HEADER + len });
    }
    parse(kind, &payload).map(Some)
}

/// [`write_frame`] for tokio streams (the node's side).
pub async fn write_frame_async<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> io::Result<()> {
    let mut buf = Vec::new();
    f.encode(&mut buf);
    w.write_all(&buf).await?;
    w.flush().await
}

/// Frames from a non-blocking stream, for the shim's poll loop: read whatever the socket has into the decoder,
/// then take frames out until there are none. Its buffer is one largest frame, allocated once: a complete frame
/// is always decodable from that much, so after [`Decoder::next`] returns `Ok(None)` there is room to read.
pub struct Decoder {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Decoder {
        Decoder { buf: vec![0u8; HEADER + MAX_PAYLOAD].into_boxed_slice(), start: 0, end: 0 }
    }

    /// The free space to read into; pass the number of bytes read to [`Decoder::filled`]. Empty only if frames
    /// are waiting to be taken with [`Decoder::next`].
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`Decoder::spare`] (at most its length).
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Does one read from `r` into the spare space and returns what it returned: `Ok(0)` is the end of the
    /// stream, `WouldBlock` means nothing to read yet. Fails if there is no space (take the frames first).
    pub fn read_from<R: Read>(&mut self, r: &mut R) -> io::Result<usize> {
        let spare = self.spare();
        if spare.is_empty() {
            return Err(io::Error::other("stdio decoder is full: take its frames before reading more"));
        }
        let n = r.read(spare)?;
        self.filled(n);
        Ok(n)
    }

    /// The next complete frame, or `None` until more bytes arrive. After an error the stream is out of step
    /// and should be dropped; the decoder keeps returning the error.
    #[allow(clippy::should_implement_trait)] // Not an Iterator: it can fail and resumes after more input.
    pub fn next(&mut self) -> Result<Option<Frame>, Error> {
        match Frame::decode(&self.buf[self.start..self.end])? {
            Some((frame, used)) => {
                self.start += used;
                Ok(Some(frame))
            }
            None => Ok(None),
        }
    }

    /// Bytes of an unfinished frame held: non-zero when the stream ends means it ended inside a frame.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(f: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        f.encode(&mut out);
        out
    }

    #[test]
    fn golden_bytes() {
        let exit = |code, signal, oom_killed| Frame::Exit(Exit { code, signal, oom_killed });
        let cases: Vec<(Frame, Vec<u8>)> = vec![
            (Frame::Stdin(b"ls\n".to_vec()), vec![1, 0, 0, 0, 3, b'l', b's', b'\n']),
            (Frame::Stdout(b"hi".to_vec()), vec![2, 0, 0, 0, 2, b'h', b'i']),
            (Frame::Stderr(vec![0xff]), vec![3, 0, 0, 0, 1, 0xff]),
            (Frame::Stdout(vec![]), vec![2, 0, 0, 0, 0]),
            (Frame::CloseStdin, vec![4, 0, 0, 0, 0]),
            (Frame::Resize { rows: 24, cols: 0x1234 }, vec![5, 0, 0, 0, 4, 0, 24, 0x12, 0x34]),
            (Frame::Signal(2), vec![6, 0, 0, 0, 4, 0, 0, 0, 2]),
            (exit(Some(3), None, false), vec![7, 0, 0, 0, 9, 1, 0, 0, 0, 3, 0, 0, 0, 0]),
            (exit(None, Some(9), true), vec![7, 0, 0, 0, 9, 6, 0, 0, 0, 0, 0, 0, 0, 9]),
            (exit(None, None, false), vec![7, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            (Frame::Error("no".into()), vec![8, 0, 0, 0, 2, b'n', b'o']),
        ];
        for (frame, want) in cases {
            assert_eq!(bytes(&frame), want, "{frame:?}");
            assert_eq!(Frame::decode(&want).unwrap(), Some((frame, want.len())));
        }
    }

    #[test]
    fn long_data_is_split_and_long_errors_cut() {
        let data: Vec<u8> = (0..MAX_PAYLOAD * 2 + 10).map(|i| i as u8).collect();
        let out = bytes(&Frame::Stdout(data.clone()));
        assert_eq!(out.len(), 3 * HEADER + data.len());
        let mut rest = &out[..];
        let mut joined = Vec::new();
        let mut sizes = Vec::new();
        while let Some((Frame::Stdout(d), used)) = Frame::decode(rest).unwrap() {
            sizes.push(d.len());
            joined.extend(d);
            rest = &rest[used..];
        }
        assert_eq!(sizes, [MAX_PAYLOAD, MAX_PAYLOAD, 10]);
        assert_eq!(joined, data);

        // A three-byte character straddles the limit: the cut falls before it.
        let reason = format!("{}€", "x".repeat(MAX_ERROR - 1));
        let out = bytes(&Frame::Error(reason));
        let (frame, _) = Frame::decode(&out).unwrap().unwrap();
        assert_eq!(frame, Frame::Error("x".repeat(MAX_ERROR - 1)));
    }

    #[test]
    fn bad_headers_are_refused_before_the_payload() {
        let err = |buf: &[u8]| Frame::decode(buf).unwrap_err().to_string();
        assert!(err(&[0]).contains("unknown stdio frame type 0"), "{}", err(&[0]));
        assert!(err(&[10, 0, 0]).contains("type 10"));
        assert!(err(&[9, 0, 0, 0, 1]).contains("ping frame of 1 bytes: it must carry exactly 0"));
        assert_eq!(Frame::decode(&[9, 0, 0, 0, 0]).unwrap(), Some((Frame::Ping, 5)));
        // An oversize length is refused from the header alone: no payload needed, nothing allocated.
        let e = err(&[2, 0, 1, 0, 1]);
        assert!(e.contains("stdout frame of 65537 bytes: it must carry 0 to 65536"), "{e}");
        assert!(err(&[8, 0xff, 0xff, 0xff, 0xff]).contains("4294967295"));
        assert!(err(&[4, 0, 0, 0, 1]).contains("close-stdin frame of 1 bytes: it must carry exactly 0"));
        assert!(err(&[5, 0, 0, 0, 3]).contains("exactly 4"));
        assert!(err(&[7, 0, 0, 0, 8]).contains("exactly 9"));
        // A good header waits for its payload.
        assert!(Frame::decode(&[2, 0, 1, 0, 0]).unwrap().is_none());
        assert!(Frame::decode(&[2, 0, 0]).unwrap().is_none());
        assert!(Frame::decode(&[]).unwrap().is_none());
    }

    #[test]
    fn bad_payloads_are_refused() {
        let err = |buf: &[u8]| Frame::decode(buf).unwrap_err().to_string();
        assert!(err(&[6, 0, 0, 0, 4, 0, 0, 0, 0]).contains("signal number 0 is not between 1 and 64"));
        assert!(err(&[6, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).contains("signal number -1"));
        assert!(err(&[6, 0, 0, 0, 4, 0, 0, 0, 65]).contains("65"));
        assert!(err(&[7, 0, 0, 0, 9, 8, 0, 0, 0, 0, 0, 0, 0, 0]).contains("unknown flags 0x08"));
        assert!(err(&[7, 0, 0, 0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0]).contains("exit code 256"));
        assert!(err(&[7, 0, 0, 0, 9, 0, 0, 0, 0, 1, 0, 0, 0, 0]).contains("exit code 1 given without its flag"));
        assert!(err(&[7, 0, 0, 0, 9, 2, 0, 0, 0, 0, 0, 0, 0, 0]).contains("signal number 0"));
        assert!(err(&[7, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 9]).contains("signal 9 given without its flag"));
        assert!(err(&[8, 0, 0, 0, 2, 0xc3, 0x28]).contains("not UTF-8"));
    }

    #[test]
    fn exit_status_follows_the_shell() {
        let s = |code, signal, oom_killed| Exit { code, signal, oom_killed }.status();
        assert_eq!(s(Some(0), None, false), 0);
        assert_eq!(s(Some(3), None, true), 3);
        assert_eq!(s(None, Some(15), false), 143);
        assert_eq!(s(None, Some(9), true), 137);
        assert_eq!(s(None, None, true), 137);
        assert_eq!(s(None, None, false), 255);
        assert_eq!(s(Some(256), None, false), 255, "exit(256) must not read as success");
        assert_eq!(s(None, Some(-1), false), 255);
    }

    #[test]
    fn read_frame_ends_cleanly_only_between_frames() {
        let mut stream = bytes(&Frame::Stdout(b"abc".to_vec()));
        Frame::Exit(Exit { code: Some(1), signal: None, oom_killed: false }).encode(&mut stream);
        let mut r = &stream[..];
        assert_eq!(read_frame(&mut r).unwrap(), Some(Frame::Stdout(b"abc".to_vec())));
        assert!(matches!(read_frame(&mut r).unwrap(), Some(Frame::Exit(e)) if e.status() == 1));
        assert_eq!(read_frame(&mut r).unwrap(), None);

        let e = read_frame(&mut &stream[..3]).unwrap_err();
        assert!(matches!(e, Error::Truncated { have: 3, need: 5 }), "{e}");
        let e = read_frame(&mut &stream[..6]).unwrap_err();
        assert!(matches!(e, Error::Truncated { have: 6, need: 8 }), "{e}");
        // The length check comes before the payload is allocated or read.
        assert!(matches!(read_frame(&mut &[3u8, 0x7f, 0, 0, 0][..]), Err(Error::Length { .. })));
    }

    #[test]
    fn write_then_read_sync_and_async() {
        let frames = [Frame::Stdin(b"x".to_vec()), Frame::Resize { rows: 1, cols: 2 }, Frame::CloseStdin];
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).unwrap();
        }
        let mut r = &buf[..];
        for f in &frames {
            assert_eq!(read_frame(&mut r).unwrap().as_ref(), Some(f));
        }

        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let (mut a, mut b) = tokio::io::duplex(16);
            let writer = async {
                for f in &frames {
                    write_frame_async(&mut a, f).await.unwrap();
                }
                drop(a);
            };
            let reader = async {
                let mut got = Vec::new();
                while let Some(f) = read_frame_async(&mut b).await.unwrap() {
                    got.push(f);
                }
                got
            };
            let ((), got) = tokio::join!(writer, reader);
            assert_eq!(got, frames);

            let mut short = &[2u8, 0, 0, 0, 4, b'a'][..];
            assert!(matches!(read_frame_async(&mut short).await, Err(Error::Truncated { have: 6, need: 9 })));
        });
    }

    /// A reader that hands out its bytes a few at a time, as a non-blocking socket does.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(self.0.len()).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn decoder_reassembles_frames_from_pieces() {
        let frames = vec![
            Frame::Stdout(vec![7; MAX_PAYLOAD]),
            Frame::Signal(15),
            Frame::Stdout(vec![8; MAX_PAYLOAD]),
            Frame::Error("bye".into()),
        ];
        let mut stream = Vec::new();
        frames.iter().for_each(|f| f.encode(&mut stream));
        for step in [1, 7, 4096, 70000] {
            let mut d = Decoder::new();
            let mut r = Trickle(&stream, step);
            let mut got = Vec::new();
            while d.read_from(&mut r).unwrap() > 0 {
                while let Some(f) = d.next().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "step {step}");
            assert_eq!(d.buffered(), 0);
        }

        let mut d = Decoder::new();
        d.read_from(&mut &stream[..HEADER + 10][..]).unwrap();
        assert!(d.next().unwrap().is_none());
        assert_eq!(d.buffered(), HEADER + 10, "a stream ending now ends inside a frame");

        let mut d = Decoder::new();
        d.read_from(&mut &[42u8, 1, 2][..]).unwrap();
        assert!(matches!(d.next(), Err(Error::UnknownType(42))));
    }

    #[test]
    fn full_decoder_refuses_to_read() {
        let mut stream = Vec::new();
        Frame::Stdout(vec![1; MAX_PAYLOAD]).encode(&mut stream);
        Frame::CloseStdin.encode(&mut stream);
        let mut d = Decoder::new();
        let mut r = &stream[..];
        assert_eq!(d.read_from(&mut r).unwrap(), HEADER + MAX_PAYLOAD);
        assert!(d.read_from(&mut r).is_err(), "no space until the frame is taken");
        assert!(d.next().unwrap().is_some());
        assert_eq!(d.read_from(&mut r).unwrap(), HEADER);
        assert_eq!(d.next().unwrap(), Some(Frame::CloseStdin));
    }

    fn frame() -> impl Strategy<Value = Frame> {
        let data = || proptest::collection::vec(any::<u8>(), 0..300);
        let exit = (proptest::option::of(0..=255i32), proptest::option::of(1..=MAX_SIGNAL), any::<bool>())
            .prop_map(|(code, signal, oom_killed)| Frame::Exit(Exit { code, signal, oom_killed }));
        prop_oneof![
            data().prop_map(Frame::Stdin),
            data().prop_map(Frame::Stdout),
            data().prop_map(Frame::Stderr),
            Just(Frame::CloseStdin),
            (any::<u16>(), any::<u16>()).prop_map(|(rows, cols)| Frame::Resize { rows, cols }),
            (1..=MAX_SIGNAL).prop_map(Frame::Signal),
            exit,
            ".{0,40}".prop_map(Frame::Error),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(frames in proptest::collection::vec(frame(), 0..8)) {
            let mut stream = Vec::new();
            frames.iter().for_each(|f| f.encode(&mut stream));
            let mut rest = &stream[..];
            let mut got = Vec::new();
            while let Some((f, used)) = Frame::decode(rest).unwrap() {
                got.push(f);
                rest = &rest[used..];
            }
            prop_assert!(rest.is_empty());
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panic(
            mut buf in proptest::collection::vec(any::<u8>(), 0..64),
            plausible in any::<bool>(),
        ) {
            if plausible && buf.len() >= HEADER {
                // Make known types and short lengths common, so payload parsing is reached.
                buf[0] %= 10;
                buf[1..4].fill(0);
                buf[4] %= 16;
            }
            match Frame::decode(&buf) {
                Ok(Some((f, used))) => {
                    prop_assert!(used <= buf.len());
                    prop_assert_eq!(&bytes(&f)[..], &buf[..used]);
                }
                Ok(None) => {
                    // Only ever for a prefix of a frame: a short header, or a payload still to come.
                    if let Some(head) = buf.get(..HEADER) {
                        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                        prop_assert!(buf.len() < HEADER + len);
                    }
                }
                Err(_) => {}
            }
            let _ = read_frame(&mut &buf[..]);
        }
    }
}
