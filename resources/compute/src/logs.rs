//! A container's output, kept in bounded, rotated files. The container's shim writes everything the container
//! prints through a [`Log`]; the node reads it back for `metac logs` with [`read`], [`tail_lines`] and
//! [`format_line`], and follows it for `metac logs -f` with a [`Follow`], which inotify wakes (no polling).
//!
//! # Files
//!
//! A container's log directory holds `log`, the file being written, and `log.1` .. `log.<files-1>`, older files,
//! `log.1` the newest of them. When the next record would take `log` past the size limit, the shim renames
//! `log.<k>` to `log.<k+1>` from the oldest down (the oldest is replaced, so dropped), `log` to `log.1`, and starts
//! a new `log`. So at most `files` files of at most `max_file` bytes are kept: the output is bounded whatever
//! the container prints. A file named `exited`, created by [`Log::finish`] once the container has exited and its
//! output is all written, tells followers no more is coming.
//!
//! # Records
//!
//! Each file is a sequence of records, each a 13-byte header and its data, all integers big-endian (as the
//! attach frames of [`crate::stdio`] are):
//!
//! ```text
//! offset  size  field
//! 0       8     time the shim read the data, nanoseconds since the Unix epoch (u64)
//! 8       1     stream: 1 stdout (or the PTY), 2 stderr
//! 9       4     data length, 0 to 65536 (u32)
//! 13      len   data: the bytes as the container wrote them, not split at lines
//! ```
//!
//! A record never spans two files. A record whose header is incomplete or whose data runs past the end of the
//! file was being written when the shim died (or is being written now): readers ignore it, and the next
//! [`Log::open`] cuts it off. A header with a length over 65536 or an unknown stream can only be damage, so
//! readers stop there with an error naming the file and offset, rather than guess where the next record starts.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde::{Deserialize, Serialize};

/// The most data one record holds; longer writes become several records.
pub const MAX_RECORD: usize = 65536;
/// The size of a record's header.
pub const HEADER: usize = 13;
/// The longest line [`Lines`] assembles: a longer one is cut into pieces of this size, so a container printing
/// without newlines cannot make the node buffer without bound.
pub const MAX_LINE: usize = 65536;
/// The name of the file being written.
pub const CURRENT: &str = "log";
/// The name of the marker [`Log::finish`] creates: the container exited and its output is all in the log.
pub const EXITED: &str = "exited";
/// How many times a reader retries listing and opening the files when a rotation happens under it.
const TRIES: usize = 8;

/// Which of the container's output streams a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output, or the PTY, which carries both streams, when the container has one.
    Stdout,
    /// Standard error, when the container runs without a PTY.
    Stderr,
}

impl Stream {
    fn byte(self) -> u8 {
        match self {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }

    fn index(self) -> usize {
        usize::from(self.byte() - 1)
    }
}

/// Some output of the container: one record on disk, or one line once cut by [`Lines`] or [`tail_lines`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When the shim read it from the container.
    pub at: SystemTime,
    /// Which stream it came from.
    pub stream: Stream,
    /// The bytes, as the container wrote them.
    pub data: Vec<u8>,
}

/// The record header for `len` bytes of `stream` read at `at` (clamped to the epoch and to year 2554).
fn header(at: SystemTime, stream: Stream, len: usize) -> [u8; HEADER] {
    let nanos = at.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&nanos.to_be_bytes());
    h[8] = stream.byte();
    // len is at most MAX_RECORD (the writer splits), so it fits.
    h[9..].copy_from_slice(&(len as u32).to_be_bytes());
    h
}

/// Parses a record header: time, stream and data length, or what is wrong with it.
fn parse_header(h: &[u8; HEADER]) -> Result<(SystemTime, Stream, usize), String> {
    let nanos = u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    let stream = match h[8] {
        1 => Stream::Stdout,
        2 => Stream::Stderr,
        other => return Err(format!("unknown stream {other}")),
    };
    let len = u32::from_be_bytes([h[9], h[10], h[11], h[12]]);
    match usize::try_from(len) {
        Ok(len) if len <= MAX_RECORD => Ok((UNIX_EPOCH + Duration::from_nanos(nanos), stream, len)),
        _ => Err(format!("record length {len} is over the {MAX_RECORD} a record holds")),
    }
}

/// Decodes the record at the start of `buf`: `Ok(None)` if `buf` holds only part of one, else the record and
/// its size on disk.
fn decode(buf: &[u8]) -> Result<Option<(Record, usize)>, String> {
    let Some(h) = buf.first_chunk::<HEADER>() else { return Ok(None) };
    let (at, stream, len) = parse_header(h)?;
    let Some(data) = buf.get(HEADER..HEADER + len) else { return Ok(None) };
    Ok(Some((Record { at, stream, data: data.to_vec() }, HEADER + len)))
}

/// The path of the file `k` rotations old: `log` for 0, `log.<k>` after.
fn file_path(dir: &Path, k: usize) -> PathBuf {
    match k {
        0 => dir.join(CURRENT),
        k => dir.join(format!("{CURRENT}.{k}")),
    }
}

/// The log files in `dir` with how many rotations old each is, oldest first.
fn list(dir: &Path) -> io::Result<Vec<(usize, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let k = match name.strip_prefix(CURRENT) {
            Some("") => 0,
            Some(rest) => match rest.strip_prefix('.').and_then(|n| n.parse::<usize>().ok()) {
                // Only the names the writer makes: `log.01` or `log.0` are someone else's.
                Some(k) if k > 0 && rest == format!(".{k}") => k,
                _ => continue,
            },
            None => continue,
        };
        found.push((k, dir.join(name)));
    }
    found.sort_by_key(|(k, _)| std::cmp::Reverse(*k));
    Ok(found)
}

/// The writer of a container's log, owned by its shim. Not for sharing: one writer per directory.
pub struct Log {
    dir: PathBuf,
    file: File,
    /// The length of `file`, all complete records.
    size: u64,
    max_file: u64,
    files: usize,
    /// One record's bytes, reused.
    buf: Vec<u8>,
}

impl Log {
    /// Opens the log in `dir` (created if missing) to append, keeping at most `files` files of at most
    /// `max_file` bytes. An unfinished record at the end of `log` (the shim died writing it) is cut off, as is a
    /// damaged one with everything after it (with a warning: appending after damage would leave the rest
    /// unreadable). Files a larger `files` setting left behind are removed, and so is an `exited` marker from an
    /// earlier run.
    pub fn open(dir: &Path, max_file: u64, files: usize) -> io::Result<Log> {
        if files == 0 || max_file <= HEADER as u64 {
            let why = format!("a log needs at least 1 file of more than {HEADER} bytes, not {files} of {max_file}");
            return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        }
        fs::create_dir_all(dir)?;
        match fs::remove_file(dir.join(EXITED)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for (k, path) in list(dir)? {
            if k >= files {
                fs::remove_file(path)?;
            }
        }
        let file = create(dir)?;
        let size = complete_len(&file)?;
        if size < file.metadata()?.len() {
            tracing::warn!(dir = %dir.display(), offset = size, "cutting an unfinished or damaged record off the log");
            file.set_len(size)?;
        }
        let buf = Vec::with_capacity(HEADER + MAX_RECORD);
        Ok(Log { dir: dir.to_owned(), file, size, max_file, files, buf })
    }

    /// Appends what the container wrote on `stream`, timestamped now: one record, or several if it is longer than
    /// a record (or a file) holds. Rotates first whenever the next record would take `log` past the limit.
    pub fn append(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        self.append_at(SystemTime::now(), stream, data)
    }

    fn append_at(&mut self, at: SystemTime, stream: Stream, data: &[u8]) -> io::Result<()> {
        // A record must fit in one file, or the files could pass their bound.
        let most = usize::try_from(self.max_file - HEADER as u64).unwrap_or(usize::MAX).min(MAX_RECORD);
        for part in data.chunks(most) {
            let len = (HEADER + part.len()) as u64;
            if self.size > 0 && self.size + len > self.max_file {
                self.rotate()?;
            }
            self.buf.clear();
            self.buf.extend_from_slice(&header(at, stream, part.len()));
            self.buf.extend_from_slice(part);
            if let Err(e) = self.file.write_all(&self.buf) {
                // Leave no half record behind for readers (if the disk lets us).
                let _ = self.file.set_len(self.size);
                return Err(e);
            }
            self.size += len;
        }
        Ok(())
    }

    /// Shifts the files one place older, dropping the oldest, and starts a new `log`. Files are renamed, never
    /// truncated, so a reader holding one open keeps reading what it held.
    fn rotate(&mut self) -> io::Result<()> {
        if self.files == 1 {
            fs::remove_file(file_path(&self.dir, 0))?;
        }
        for k in (1..self.files).rev() {
            match fs::rename(file_path(&self.dir, k - 1), file_path(&self.dir, k)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.file = create(&self.dir)?;
        self.size = 0;
        Ok(())
    }

    /// Marks the log finished: call it once the container has exited for good (no restart coming) and all it
    /// wrote is appended. Followers return [`Next::Ended`] once they have read it all. The next [`Log::open`]
    /// clears the mark.
    pub fn finish(&mut self) -> io::Result<()> {
        File::create(self.dir.join(EXITED)).map(drop)
    }
}

/// Opens (creating) `log` in `dir` to append; only the node and the shim read a container's output.
fn create(dir: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(file_path(dir, 0))
}

/// The length of the complete, sound records at the start of `file`: where an unfinished or damaged one starts.
fn complete_len(file: &File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    let mut at = 0u64;
    let mut h = [0u8; HEADER];
    while len - at >= HEADER as u64 {
        file.read_exact_at(&mut h, at)?;
        match parse_header(&h) {
            Ok((_, _, n)) if at + (HEADER + n) as u64 <= len => at += (HEADER + n) as u64,
            _ => break,
        }
    }
    Ok(at)
}

/// Why reading a log failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or the directory could not be read.
    #[error("reading the container log {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A record header that no writer produces: the file was damaged.
    #[error(
        "the container log {} is damaged at byte {offset}: {why} (moving that file away drops its records and \
         lets the others be read)",
        path.display()
    )]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong with it.
        why: String,
    },
    /// The files kept rotating while being listed and opened: the container prints faster than it can be read.
    #[error("the container log in {} kept rotating while being read; try again", dir.display())]
    Busy {
        /// The log directory.
        dir: PathBuf,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_owned(), source }
}

/// An open log file, with its identity to recognise it after renames.
struct Opened {
    path: PathBuf,
    file: File,
    id: (u64, u64),
}

fn identity(m: &fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

/// Opens every log file, oldest first, as one consistent set: if a rotation renamed files between listing and
/// opening (the same file opened twice, or one missed), it tries again.
fn snapshot(dir: &Path) -> Result<Vec<Opened>, Error> {
    'again: for _ in 0..TRIES {
        let names = list(dir).map_err(io_error(dir))?;
        let mut opened = Vec::with_capacity(names.len());
        for (_, path) in &names {
            let file = match File::open(path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue 'again,
                Err(e) => return Err(io_error(path)(e)),
            };
            let id = identity(&file.metadata().map_err(io_error(path))?);
            opened.push(Opened { path: path.clone(), file, id });
        }
        let same = |o: &Opened| fs::metadata(&o.path).is_ok_and(|m| identity(&m) == o.id);
        if list(dir).map_err(io_error(dir))? == names && opened.iter().all(same) {
            return Ok(opened);
        }
    }
    Err(Error::Busy { dir: dir.to_owned() })
}

/// Appends the complete records of `o` from byte `*pos` on to `out`, and moves `*pos` past them. Returns the
/// bytes after them: an unfinished record. Memory is bounded by the file, which the writer bounds.
fn read_records(o: &Opened, pos: &mut u64, out: &mut Vec<Record>) -> Result<usize, Error> {
    let mut buf = Vec::new();
    let mut file = &o.file;
    file.seek(SeekFrom::Start(*pos)).and_then(|_| file.read_to_end(&mut buf)).map_err(io_error(&o.path))?;
    let mut used = 0;
    loop {
        match decode(&buf[used..]) {
            Ok(Some((record, n))) => {
                out.push(record);
                used += n;
            }
            Ok(None) => break,
            Err(why) => return Err(Error::Corrupt { path: o.path.clone(), offset: *pos + used as u64, why }),
        }
    }
    *pos += used as u64;
    Ok(buf.len() - used)
}

/// Reads a file that will not grow again; an unfinished record at its end is dropped.
fn read_finished(o: &Opened, mut pos: u64, out: &mut Vec<Record>) -> Result<(), Error> {
    let rest = read_records(o, &mut pos, out)?;
    if rest > 0 {
        tracing::debug!(path = %o.path.display(), bytes = rest, "ignoring an unfinished record");
    }
    Ok(())
}

/// Everything the log in `dir` keeps, oldest first. Bounded by the writer's limits (at most `files` times
/// `max_file` bytes); a damaged record is an error, an unfinished one at the end of a file is skipped.
pub fn read(dir: &Path) -> Result<Vec<Record>, Error> {
    let mut out = Vec::new();
    for o in snapshot(dir)? {
        read_finished(&o, 0, &mut out)?;
    }
    Ok(out)
}

/// Cuts output into lines, for `--tail` and `--timestamps`. Each stream is cut on its own (a line of stdout may
/// span several records, with stderr records between). A line is stamped with the time of the record holding its
/// last byte, when the container finished printing it, and lines longer than [`MAX_LINE`] are cut into pieces.
#[derive(Debug, Default)]
pub struct Lines {
    /// Each stream's unfinished line, with the number of the record that last added to it.
    open: [Option<(usize, Record)>; 2],
    /// How many records were pushed.
    pushed: usize,
}

impl Lines {
    /// A cutter with no unfinished lines.
    pub fn new() -> Lines {
        Lines::default()
    }

    /// Takes the next record and appends to `out` each line it completes, `\n` included.
    pub fn push(&mut self, r: &Record, out: &mut Vec<Record>) {
        let seq = self.pushed;
        self.pushed += 1;
        let slot = &mut self.open[r.stream.index()];
        let mut rest = &r.data[..];
        while !rest.is_empty() {
            let open = slot.get_or_insert_with(|| (seq, Record { at: r.at, stream: r.stream, data: Vec::new() }));
            open.0 = seq;
            let line = &mut open.1;
            let room = MAX_LINE - line.data.len();
            let take = match rest[..rest.len().min(room)].iter().position(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => rest.len().min(room),
            };
            line.data.extend_from_slice(&rest[..take]);
            line.at = r.at;
            rest = &rest[take..];
            if line.data.ends_with(b"\n") || line.data.len() == MAX_LINE {
                out.extend(slot.take().map(|(_, line)| line));
            }
        }
    }

    /// The unfinished lines (at most one a stream), in the order of their latest bytes.
    pub fn finish(self) -> Vec<Record> {
        self.unfinished().into_iter().map(|(_, line)| line).collect()
    }

    fn unfinished(self) -> Vec<(usize, Record)> {
        let mut open: Vec<_> = self.open.into_iter().flatten().collect();
        open.sort_by_key(|(seq, _)| *seq);
        open
    }
}

/// All of `records` cut into lines, as [`Lines`] cuts them (for `metac logs` without `--tail`).
pub fn lines(records: &[Record]) -> Vec<Record> {
    tail_lines(records, usize::MAX)
}

/// The last `n` lines of `records` (as `tail -n`), as [`Lines`] cuts them, in the order the container finished
/// printing them; an unfinished line counts as one. Holds no more than the `n` lines it returns.
pub fn tail_lines(records: &[Record], n: usize) -> Vec<Record> {
    if n == 0 {
        return Vec::new();
    }
    let mut lines = Lines::new();
    let mut kept: VecDeque<(usize, Record)> = VecDeque::new();
    let mut done = Vec::new();
    for (seq, r) in records.iter().enumerate() {
        lines.push(r, &mut done);
        for line in done.drain(..) {
            if kept.len() == n {
                kept.pop_front();
            }
            kept.push_back((seq, line));
        }
    }
    // An unfinished line goes after the lines finished in the record that last added to it, or before.
    for (seq, line) in lines.unfinished() {
        let at = kept.partition_point(|(s, _)| *s <= seq);
        kept.insert(at, (seq, line));
    }
    let extra = kept.len().saturating_sub(n);
    kept.into_iter().skip(extra).map(|(_, line)| line).collect()
}

/// The bytes `metac logs` prints for `r`: its data, and with `timestamps` its time in RFC 3339 (UTC, to the
/// nanosecond) and a space before each line in it. Meant for records cut by [`Lines`] or [`tail_lines`], which
/// start at the start of a line.
pub fn format_line(r: &Record, timestamps: bool) -> Vec<u8> {
    if !timestamps {
        return r.data.clone();
    }
    let stamp = rfc3339(r.at);
    let mut out = Vec::with_capacity(r.data.len() + stamp.len() + 1);
    for line in r.data.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(stamp.as_bytes());
        out.push(b' ');
        out.extend_from_slice(line);
    }
    out
}

/// `at` as RFC 3339 in UTC with nanoseconds, `2025-12-02T16:20:00.500000000Z`, fixed width so columns line up.
/// Times before the epoch print as the epoch (the log cannot hold them).
pub fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil(secs / 86400);
    let (h, m, s) = (secs % 86400 / 3600, secs % 3600 / 60, secs % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:09}Z", since.subsec_nanos())
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`, for days >= 0): a
/// day count shifted to eras of 400 years starting on 1 March, so the leap day falls at the end of the year.
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// What [`Follow::wait`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Records appended since the last ones returned, oldest first (never empty).
    Records(Vec<Record>),
    /// No more will come: the container exited (its `exited` marker is there and everything before it was
    /// returned), or its log directory was removed.
    Ended,
    /// The wait's timeout passed with nothing new.
    Timeout,
    /// [`Stop::stop`] was called.
    Stopped,
}

/// Follows a log as it is written, for `metac logs -f`: returns the records appended after a point, across
/// rotations, sleeping on inotify until there are some. Blocking: run it on a blocking thread, and end it with
/// a [`Stop`], a timeout, or the container's exit. Output the writer rotates away before the follower reads it
/// (more than `files` files' worth while the follower is not reading) is missed, as `tail -F` misses it.
pub struct Follow {
    dir: PathBuf,
    inotify: Inotify,
    /// The newest file read so far, and how far.
    current: Option<Opened>,
    pos: u64,
    stop_rx: UnixStream,
    stop_tx: UnixStream,
    stopped: bool,
    /// The directory's identity, to notice it being removed or replaced.
    dir_id: (u64, u64),
}

/// Stops a [`Follow`] from another thread: its wait (the current one, or the next) returns [`Next::Stopped`].
/// Dropping it does not stop the follower.
pub struct Stop(UnixStream);

impl Stop {
    /// Wakes the follower and makes it return [`Next::Stopped`] from now on.
    pub fn stop(&self) {
        // One byte is enough and stays unread; when the buffer is full a stop is already pending.
        let _ = (&self.0).write(&[1]);
    }
}

impl Follow {
    /// Starts following the log in `dir`: returns everything kept now (as [`read`] does) and a follower whose
    /// waits return what is appended after it, with nothing lost or repeated in between.
    pub fn start(dir: &Path) -> Result<(Vec<Record>, Follow), Error> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(errno(dir))?;
        // Watching the directory sees writes to `log`, the renames and creations of a rotation, the marker, and
        // the files' removal with the container. It is set before the first read so nothing written after that
        // read goes unnoticed. (The directory's own deletion is reported only once no file in it is open, and
        // the follower holds one: removing `log` is what wakes it.)
        let events = AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        inotify.add_watch(dir, events).map_err(errno(dir))?;
        let dir_id = identity(&fs::metadata(dir).map_err(io_error(dir))?);
        let (stop_rx, stop_tx) = UnixStream::pair().map_err(io_error(dir))?;
        stop_rx.set_nonblocking(true).map_err(io_error(dir))?;
        stop_tx.set_nonblocking(true).map_err(io_error(dir))?;
        let mut follow =
            Follow { dir: dir.to_owned(), inotify, current: None, pos: 0, stop_rx, stop_tx, stopped: false, dir_id };
        let mut out = Vec::new();
        follow.advance(snapshot(dir)?, &mut out)?;
        Ok((out, follow))
    }

    /// A handle that stops this follower from another thread.
    pub fn stopper(&self) -> io::Result<Stop> {
        self.stop_tx.try_clone().map(Stop)
    }

    /// Waits, up to `timeout` (`None`: no limit), for records appended since the last ones returned, the end of
    /// the log, or a stop.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Next, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.stop_requested() {
                return Ok(Next::Stopped);
            }
            // Looked at before reading: the marker is made after the last append, so once it is seen, the read
            // that follows gets everything.
            let ended = self.gone() || self.dir.join(EXITED).exists();
            let mut out = Vec::new();
            self.catch_up(&mut out)?;
            if !out.is_empty() {
                return Ok(Next::Records(out));
            }
            if ended {
                return Ok(Next::Ended);
            }
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    // Rounded up, so the poll never ends a little early and leaves a busy wait for the rest.
                    let ms = d.saturating_duration_since(Instant::now()).as_nanos().div_ceil(1_000_000);
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [
                PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.stop_rx.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(0) => return Ok(Next::Timeout),
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(errno(&self.dir)(e)),
            }
            self.drain_events()?;
        }
    }

    fn stop_requested(&mut self) -> bool {
        if !self.stopped {
            self.stopped = matches!((&self.stop_rx).read(&mut [0]), Ok(1));
        }
        self.stopped
    }

    /// Whether the log directory was removed (with its container) or replaced.
    fn gone(&self) -> bool {
        !fs::metadata(&self.dir).is_ok_and(|m| identity(&m) == self.dir_id)
    }

    /// Empties the inotify queue: the events only wake the follower, which then looks at the files themselves.
    fn drain_events(&mut self) -> Result<(), Error> {
        loop {
            match self.inotify.read_events() {
                Ok(_) => {}
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(errno(&self.dir)(e)),
            }
        }
    }

    /// Reads what was appended to the current file and, if `log` is now another file, the files after it.
    fn catch_up(&mut self, out: &mut Vec<Record>) -> Result<(), Error> {
        if let Some(current) = &self.current {
            read_records(current, &mut self.pos, out)?;
            let path = file_path(&self.dir, 0);
            match fs::metadata(&path) {
                Ok(m) if identity(&m) == current.id => return Ok(()),
                // Between a rotation's rename and its new `log`: the creation will wake us.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_error(&path)(e)),
                Ok(_) => {}
            }
        }
        let files = match snapshot(&self.dir) {
            // Removed with the container: nothing newer will come.
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => return Ok(()),
            files => files?,
        };
        self.advance(files, out)
    }

    /// Moves on to the files in `files` (oldest first) newer than the current one: finishes the current one,
    /// reads those between whole, and makes the newest current.
    fn advance(&mut self, files: Vec<Opened>, out: &mut Vec<Record>) -> Result<(), Error> {
        let newer = match &self.current {
            // Not found: rotated away, so every file kept is newer.
            Some(current) => files.iter().position(|o| o.id == current.id).map_or(0, |i| i + 1),
            None => 0,
        };
        let mut files = files.into_iter().skip(newer).collect::<Vec<_>>();
        let Some(newest) = files.pop() else { return Ok(()) };
        if let Some(current) = self.current.take() {
            read_finished(&current, self.pos, out)?;
        }
        for o in &files {
            read_finished(o, 0, out)?;
        }
        self.pos = 0;
        read_records(&newest, &mut self.pos, out)?;
        self.current = Some(newest);
        Ok(())
    }
}

fn errno(path: &Path) -> impl FnOnce(Errno) -> Error + '_ {
    move |e| io_error(path)(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::mpsc;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    fn rec(t: u64, stream: Stream, data: &[u8]) -> Record {
        Record { at: at(t, 0), stream, data: data.to_vec() }
    }

    fn sizes(dir: &Path) -> Vec<(usize, u64)> {
        list(dir).unwrap().into_iter().map(|(k, p)| (k, fs::metadata(p).unwrap().len())).collect()
    }

    #[test]
    fn rotation_keeps_the_bound_and_the_newest_output() {
        let dir = tempfile::tempdir().unwrap();
        let (max_file, files) = (200u64, 3usize);
        let mut log = Log::open(dir.path(), max_file, files).unwrap();
        let mut written = Vec::new();
        for i in 0..300u64 {
            let data = vec![b'a' + (i % 26) as u8; (i as usize * 7) % 90];
            log.append_at(at(i, 0), Stream::Stdout, &data).unwrap();
            written.push(rec(i, Stream::Stdout, &data));
            let kept = sizes(dir.path());
            assert!(kept.len() <= files, "{kept:?}");
            assert!(kept.iter().all(|&(_, len)| len <= max_file), "{kept:?}");
        }
        assert_eq!(sizes(dir.path()).iter().map(|&(k, _)| k).collect::<Vec<_>>(), [2, 1, 0]);

        let got = read(dir.path()).unwrap();
        // Oldest first, no gaps: the newest records written, as many as the files hold.
        assert!(got.len() > 4, "only {} records kept", got.len());
        assert_eq!(got[..], written[written.len() - got.len()..]);
        let on_disk: u64 = got.iter().map(|r| (HEADER + r.data.len()) as u64).sum();
        assert_eq!(on_disk, sizes(dir.path()).iter().map(|&(_, len)| len).sum::<u64>());
        // The two older files are full enough that the next record did not fit.
        assert!(sizes(dir.path()).iter().filter(|&&(k, _)| k > 0).all(|&(_, len)| len > max_file - 90 - 13));
    }

    #[test]
    fn one_file_rotates_by_starting_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), 100, 1).unwrap();
        for i in 0..10 {
            log.append_at(at(i, 0), Stream::Stderr, &[i as u8; 30]).unwrap();
        }
        assert_eq!(sizes(dir.path()), [(0, 2 * (HEADER as u64 + 30))]);
        assert_eq!(read(dir.path()).unwrap(), [rec(8, Stream::Stderr, &[8; 30]), rec(9, Stream::Stderr, &[9; 30])]);
    }

    #[test]
    fn long_writes_are_split_to_fit_records_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), 1 << 20, 2).unwrap();
        let data: Vec<u8> = (0..MAX_RECORD * 2 + 5).map(|i| i as u8).collect();
        log.append(Stream::Stdout, &data).unwrap();
        let got = read(dir.path()).unwrap();
        assert_eq!(got.iter().map(|r| r.data.len()).collect::<Vec<_>>(), [MAX_RECORD, MAX_RECORD, 5]);
        assert_eq!(got.concat_data(), data);

        let small = tempfile::tempdir().unwrap();
        let mut log = Log::open(small.path(), 50, 4).unwrap();
        log.append(Stream::Stdout, &[7; 100]).unwrap();
        assert_eq!(read(small.path()).unwrap().iter().map(|r| r.data.len()).collect::<Vec<_>>(), [37, 37, 26]);
        assert!(sizes(small.path()).iter().all(|&(_, len)| len <= 50));

        assert!(Log::open(small.path(), HEADER as u64, 2).is_err());
        assert!(Log::open(small.path(), 100, 0).is_err());
    }

    trait ConcatData {
        fn concat_data(&self) -> Vec<u8>;
    }

    impl ConcatData for Vec<Record> {
        fn concat_data(&self) -> Vec<u8> {
            self.iter().flat_map(|r| r.data.iter().copied()).collect()
        }
    }

    #[test]
    fn unfinished_record_is_ignored_then_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), 1000, 2).unwrap();
        log.append_at(at(1, 0), Stream::Stdout, b"one").unwrap();
        drop(log);
        // The shim died after writing a header and part of its data.
        let path = dir.path().join(CURRENT);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&header(at(2, 0), Stream::Stdout, 10)).unwrap();
        f.write_all(b"part").unwrap();
        assert_eq!(read(dir.path()).unwrap(), [rec(1, Stream::Stdout, b"one")]);

        let mut log = Log::open(dir.path(), 1000, 2).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), (HEADER + 3) as u64, "the partial record is cut off");
        log.append_at(at(3, 0), Stream::Stderr, b"two").unwrap();
        assert_eq!(read(dir.path()).unwrap(), [rec(1, Stream::Stdout, b"one"), rec(3, Stream::Stderr, b"two")]);

        // A short header alone is cut off too.
        drop(log);
        OpenOptions::new().append(true).open(&path).unwrap().write_all(&[0, 0, 0]).unwrap();
        assert_eq!(read(dir.path()).unwrap().len(), 2);
        Log::open(dir.path(), 1000, 2).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * (HEADER + 3) as u64);
    }

    #[test]
    fn damaged_record_names_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), 40, 3).unwrap();
        for i in 0..3 {
            log.append_at(at(i, 0), Stream::Stdout, &[b'x'; 20]).unwrap();
        }
        // log.2, log.1 and log hold one record of 33 bytes each; damage the second record's length in log.1.
        let older = dir.path().join("log.1");
        let mut bytes = fs::read(&older).unwrap();
        bytes.extend_from_slice(&header(at(9, 0), Stream::Stdout, 0));
        bytes[33 + 9..33 + 13].copy_from_slice(&(MAX_RECORD as u32 + 1).to_be_bytes());
        fs::write(&older, &bytes).unwrap();
        let e = read(dir.path()).unwrap_err();
        assert!(matches!(&e, Error::Corrupt { path, offset: 33, .. } if *path == older), "{e}");
        assert!(e.to_string().contains("record length 65537 is over the 65536"), "{e}");

        bytes[33 + 8] = 3;
        fs::write(&older, &bytes).unwrap();
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("log.1 is damaged at byte 33: unknown stream 3"), "{e}");
    }

    #[test]
    fn open_tidies_files_and_marker() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), 20, 4).unwrap();
        for i in 0..5 {
            log.append_at(at(i, 0), Stream::Stdout, b"x").unwrap();
        }
        log.finish().unwrap();
        fs::write(dir.path().join("log.01"), b"not ours").unwrap();
        assert!(dir.path().join(EXITED).exists());
        assert_eq!(list(dir.path()).unwrap().len(), 4);
        Log::open(dir.path(), 20, 2).unwrap();
        assert!(!dir.path().join(EXITED).exists());
        assert_eq!(list(dir.path()).unwrap().iter().map(|(k, _)| *k).collect::<Vec<_>>(), [1, 0]);
        assert!(dir.path().join("log.01").exists(), "files that are not the log's are left alone");
        assert_eq!(read(dir.path()).unwrap(), [rec(3, Stream::Stdout, b"x"), rec(4, Stream::Stdout, b"x")]);
    }

    #[test]
    fn tail_cuts_lines_per_stream() {
        let records = [
            rec(0, Stream::Stdout, b"a\nb"),
            rec(1, Stream::Stderr, b"E1\n"),
            rec(2, Stream::Stdout, b"c\nd\n"),
            rec(3, Stream::Stderr, b"E2"),
        ];
        let all = [
            rec(0, Stream::Stdout, b"a\n"),
            rec(1, Stream::Stderr, b"E1\n"),
            rec(2, Stream::Stdout, b"bc\n"),
            rec(2, Stream::Stdout, b"d\n"),
            rec(3, Stream::Stderr, b"E2"),
        ];
        assert_eq!(lines(&records), all);
        assert_eq!(tail_lines(&records, 5), all);
        assert_eq!(tail_lines(&records, 2), all[3..]);
        assert_eq!(tail_lines(&records, 3), all[2..]);
        assert_eq!(tail_lines(&records, 0), []);
        assert_eq!(tail_lines(&[], 3), []);

        // An unfinished line is placed by its latest bytes, before lines finished after them.
        let records = [rec(0, Stream::Stdout, b"pro"), rec(1, Stream::Stdout, b"mpt"), rec(2, Stream::Stderr, b"x\n")];
        let want = [rec(1, Stream::Stdout, b"prompt"), rec(2, Stream::Stderr, b"x\n")];
        assert_eq!(tail_lines(&records, 10), want);
        assert_eq!(tail_lines(&records, 1), want[1..]);
    }

    #[test]
    fn lines_are_bounded() {
        let mut data = vec![b'y'; MAX_LINE * 2 + 3];
        data.extend_from_slice(b"\nz");
        let records = [rec(0, Stream::Stdout, &data[..100]), rec(1, Stream::Stdout, &data[100..])];
        let lines = lines(&records);
        assert_eq!(lines.iter().map(|l| l.data.len()).collect::<Vec<_>>(), [MAX_LINE, MAX_LINE, 4, 1]);
        assert_eq!(lines.concat_data(), data);

        let mut cut = Lines::new();
        let mut out = Vec::new();
        cut.push(&rec(5, Stream::Stderr, b"half"), &mut out);
        assert!(out.is_empty());
        assert_eq!(cut.finish(), [rec(5, Stream::Stderr, b"half")]);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(at(1_764_692_400, 500_000_000)), "2025-12-02T16:20:00.500000000Z");
        assert_eq!(rfc3339(at(951_782_399, 123_456_789)), "2000-02-28T23:59:59.123456789Z");
        assert_eq!(rfc3339(at(951_782_400, 1)), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(rfc3339(at(4_107_542_400, 0)), "2100-03-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(1)), "1970-01-01T00:00:00.000000000Z");

        let r = Record { at: at(1_764_692_400, 500_000_000), stream: Stream::Stdout, data: b"a\n\nb".to_vec() };
        let s = "2025-12-02T16:20:00.500000000Z";
        assert_eq!(String::from_utf8(format_line(&r, true)).unwrap(), format!("{s} a\n{s} \n{s} b"));
        assert_eq!(format_line(&r, false), b"a\n\nb");
        assert_eq!(format_line(&rec(0, Stream::Stdout, b""), true), b"");
    }

    #[test]
    fn calendar_matches_counting_days() {
        // Walk 500 years a day at a time with the Gregorian rules and compare every date.
        let leap = |y: u64| y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for days in 0..500 * 366 {
            assert_eq!(civil(days), (y, m, d), "day {days}");
            let month_len = match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > month_len {
                (d, m) = (1, m + 1);
                if m > 12 {
                    (m, y) = (1, y + 1);
                }
            }
        }
    }

    fn record() -> impl Strategy<Value = Record> {
        (any::<u64>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200)).prop_map(|(n, err, data)| {
            let stream = if err { Stream::Stderr } else { Stream::Stdout };
            Record { at: UNIX_EPOCH + Duration::from_nanos(n), stream, data }
        })
    }

    proptest! {
        #[test]
        fn records_round_trip(records in proptest::collection::vec(record(), 0..10)) {
            let mut buf = Vec::new();
            for r in &records {
                buf.extend_from_slice(&header(r.at, r.stream, r.data.len()));
                buf.extend_from_slice(&r.data);
            }
            let mut got = Vec::new();
            let mut rest = &buf[..];
            while let Some((r, n)) = decode(rest).unwrap() {
                got.push(r);
                rest = &rest[n..];
            }
            prop_assert!(rest.is_empty());
            prop_assert_eq!(got, records);
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panic(mut buf in proptest::collection::vec(any::<u8>(), 0..80), small in any::<bool>()) {
            if small && buf.len() >= HEADER {
                // Make plausible headers common: a known stream and a short length.
                buf[8] %= 3;
                buf[9..12].fill(0);
            }
            match decode(&buf) {
                Ok(Some((r, n))) => prop_assert_eq!(n, HEADER + r.data.len()),
                Ok(None) => {
                    if let Some(h) = buf.first_chunk::<HEADER>() {
                        prop_assert!(buf.len() < HEADER + u32::from_be_bytes([h[9], h[10], h[11], h[12]]) as usize);
                    }
                }
                Err(_) => {}
            }
        }

        #[test]
        fn lines_keep_every_byte(records in proptest::collection::vec(record(), 0..12), n in 0usize..20) {
            let lines = lines(&records);
            for stream in [Stream::Stdout, Stream::Stderr] {
                let of = |rs: &[Record]| rs.iter().filter(|r| r.stream == stream).flat_map(|r| r.data.clone()).collect::<Vec<u8>>();
                prop_assert_eq!(of(&lines), of(&records));
            }
            let newlines = lines.iter().filter(|l| l.data.ends_with(b"\n")).count();
            prop_assert!(lines.iter().all(|l| !l.data.is_empty() && !l.data[..l.data.len() - 1].contains(&b'\n')));
            prop_assert!(lines.len() - newlines <= 2);
            let tail = tail_lines(&records, n);
            prop_assert_eq!(&tail[..], &lines[lines.len().saturating_sub(n)..]);
        }
    }

    /// Waits until `follow` has returned `want` more records, failing after a few seconds.
    fn collect(follow: &mut Follow, want: usize) -> Vec<Record> {
        let mut got = Vec::new();
        while got.len() < want {
            match follow.wait(Some(Duration::from_secs(5))).unwrap() {
                Next::Records(rs) => got.extend(rs),
                other => panic!("{other:?} after {} of {want} records", got.len()),
            }
        }
        got
    }

    #[test]
    fn follow_sees_appends_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), 100, 2).unwrap();
        log.append_at(at(0, 0), Stream::Stdout, b"before").unwrap();
        let (before, mut follow) = Follow::start(dir.path()).unwrap();
        assert_eq!(before, [rec(0, Stream::Stdout, b"before")]);

        // The writer sends a batch, then waits for the follower to have read it: a file holds two 40-byte records,
        // so every batch of three rotates, while the follower may be reading.
        let (ack_tx, ack_rx) = mpsc::sync_channel::<()>(0);
        let writer = std::thread::spawn(move || {
            let mut written = Vec::new();
            for batch in 0..6u64 {
                for i in 0..3 {
                    let t = batch * 10 + i + 1;
                    let data = format!("{t:>27}").into_bytes();
                    log.append_at(at(t, 0), if i == 1 { Stream::Stderr } else { Stream::Stdout }, &data).unwrap();
                    written.push(Record {
                        at: at(t, 0),
                        stream: if i == 1 { Stream::Stderr } else { Stream::Stdout },
                        data,
                    });
                }
                ack_rx.recv().unwrap();
            }
            log.finish().unwrap();
            written
        });
        let mut got = Vec::new();
        for _ in 0..6 {
            got.extend(collect(&mut follow, 3));
            assert_eq!(got.len() % 3, 0, "no record twice");
            ack_tx.send(()).unwrap();
        }
        let written = writer.join().unwrap();
        assert_eq!(got, written);
        assert_eq!(follow.wait(Some(Duration::from_secs(5))).unwrap(), Next::Ended);
        assert_eq!(read(dir.path()).unwrap(), written[written.len() - 4..], "the writer rotated");
    }

    #[test]
    fn follow_reads_every_file_rotations_passed() {
        // Files of two 33-byte records. Between two waits the writer rotates twice: the follower must finish the
        // file it was reading, read the file between whole, and start on the new one.
        let r = |i: u64| rec(i, Stream::Stdout, format!("{i:>20}").as_bytes());
        for files in [3, 2] {
            let dir = tempfile::tempdir().unwrap();
            let mut log = Log::open(dir.path(), 70, files).unwrap();
            let mut append = |i| log.append_at(at(i, 0), Stream::Stdout, &r(i).data).unwrap();
            append(0);
            let (before, mut follow) = Follow::start(dir.path()).unwrap();
            assert_eq!(before, [r(0)]);
            (1..5).for_each(&mut append);
            let next = follow.wait(Some(Duration::from_secs(5))).unwrap();
            assert_eq!(next, Next::Records((1..5).map(r).collect()), "{files} files");
            // The first file is gone when only two are kept: it was read through the follower's open file.
            assert_eq!(list(dir.path()).unwrap().len(), files);
            (5..9).for_each(&mut append);
            let next = follow.wait(Some(Duration::from_secs(5))).unwrap();
            assert_eq!(next, Next::Records((5..9).map(r).collect()), "{files} files");
            assert_eq!(follow.wait(Some(Duration::ZERO)).unwrap(), Next::Timeout);
        }
    }

    #[test]
    fn follow_with_one_file_and_a_burst() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), 1000, 1).unwrap();
        let (before, mut follow) = Follow::start(dir.path()).unwrap();
        assert!(before.is_empty());
        let writer = std::thread::spawn(move || {
            for i in 0..20u64 {
                log.append_at(at(i, 0), Stream::Stdout, &[i as u8; 40]).unwrap();
            }
            log
        });
        let got = collect(&mut follow, 20);
        let mut log = writer.join().unwrap();
        assert_eq!(got, (0..20).map(|i| rec(i, Stream::Stdout, &[i as u8; 40])).collect::<Vec<_>>());
        // 18 records filled the first file, which was deleted under the follower when the 19th came.
        assert_eq!(fs::metadata(dir.path().join(CURRENT)).unwrap().len(), 2 * (HEADER + 40) as u64);
        log.finish().unwrap();
        assert_eq!(follow.wait(Some(Duration::from_secs(5))).unwrap(), Next::Ended);
    }

    #[test]
    fn follow_times_out_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let _log = Log::open(dir.path(), 1000, 2).unwrap();
        let (_, mut follow) = Follow::start(dir.path()).unwrap();
        let started = Instant::now();
        assert_eq!(follow.wait(Some(Duration::from_millis(50))).unwrap(), Next::Timeout);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(50) && waited < Duration::from_secs(5), "{waited:?}");

        let stop = follow.stopper().unwrap();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            stop.stop();
        });
        assert_eq!(follow.wait(None).unwrap(), Next::Stopped);
        stopper.join().unwrap();
        assert_eq!(follow.wait(None).unwrap(), Next::Stopped, "stays stopped");
    }

    #[test]
    fn follow_ends_when_the_directory_goes() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("c1");
        Log::open(&logs, 1000, 2).unwrap().append(Stream::Stdout, b"x").unwrap();
        let (before, mut follow) = Follow::start(&logs).unwrap();
        assert_eq!(before.len(), 1);
        fs::remove_dir_all(&logs).unwrap();
        assert_eq!(follow.wait(Some(Duration::from_secs(5))).unwrap(), Next::Ended);
    }
}
