//! Gives back memory an idle node does not use: the heap's free pages (`malloc_trim`), and the pages of its own
//! binary that only start-up or a burst of work touched.
//!
//! The second needs a word. Code and read-only data are mapped from the binary; every page a thread ever ran or
//! read stays mapped, and the kernel maps up to 64 KiB around each one it faults in. A node touches most of its
//! 17 MB of code while it starts (argument parsing, the store, the overlay, nftables, every kind's registration),
//! so an idle node showed 15-16 MiB "resident" from its binary, of which it went on using about 5. Those pages
//! are clean page cache, shared by every process running the binary; dropping our mappings of them
//! (`MADV_DONTNEED` on the binary's read-only, never-written mappings) frees nothing the node needs: what it runs
//! next faults back in from the page cache, as the kernel drops its own `__init` code after boot. A mapping
//! written to (relocations made read-only afterwards, a debugger's breakpoint) has anonymous pages and is left
//! alone, as is anything writable.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The first trim, once start-up and the first syncs are over.
pub const FIRST_TRIM: Duration = Duration::from_secs(15);
/// Trims after that.
pub const TRIM_EVERY: Duration = Duration::from_secs(60);

/// What one trim gave back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Bytes of the binary's mappings dropped (resident before; the idle work maps some back).
    pub binary_bytes: u64,
    /// Whether `malloc_trim` returned memory to the system.
    pub heap: bool,
}

/// Trims after [`FIRST_TRIM`] and then every [`TRIM_EVERY`] until `cancel`.
pub async fn run(cancel: CancellationToken) {
    let mut wait = FIRST_TRIM;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = TRIM_EVERY;
        match tokio::task::spawn_blocking(trim).await {
            Ok(t) => tracing::debug!(binary_kib = t.binary_bytes / 1024, heap = t.heap, "trimmed idle memory"),
            Err(e) => tracing::warn!("memory trim failed: {e}"),
        }
    }
}

/// Buffers of [`MMAP_FROM`] bytes and more come from their own mappings, given back to the system when freed.
/// glibc's default raises that threshold past every size freed, so after an fs bind's 1 MiB reads and writes the
/// heaps kept them: a binding node measured 43 MiB more resident at idle after five binds, which `malloc_trim` did
/// not give back; with the threshold fixed, 3 MiB. It costs a mapping per large buffer (about a tenth of a cold
/// sequential read's speed here) where buffers are not reused; the fs and block data paths reuse theirs
/// (`metac_resource::buffers`).
pub fn large_buffers_from_mmap() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only changes the allocator's policy for later allocations; glibc makes it thread-safe.
        if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_FROM) } != 1 {
            tracing::debug!("mallopt(M_MMAP_THRESHOLD) was refused");
        }
    }
}

/// See [`large_buffers_from_mmap`].
pub const MMAP_FROM: i32 = 512 << 10;

/// Trims once (see the module doc).
pub fn trim() -> Trimmed {
    let mut t = Trimmed::default();
    // The data paths' reused buffers, once they have been idle.
    metac_resource::buffers::release_idle();
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim only returns free heap memory to the system; it is thread-safe in glibc.
        t.heap = unsafe { libc::malloc_trim(0) } == 1;
    }
    let (Ok(exe), Ok(smaps)) = (std::fs::read_link("/proc/self/exe"), std::fs::read_to_string("/proc/self/smaps"))
    else {
        return t;
    };
    for m in clean_mappings(&smaps, &exe.to_string_lossy()) {
        // SAFETY: `m` is a whole mapping of our own binary that is neither writable nor holds a written (anonymous)
        // page, so its content is exactly the file's: dropping its pages loses nothing, and the next access maps
        // the same bytes back from the page cache. No Rust object lives in such a mapping as mutable memory.
        let r = unsafe { libc::madvise(m.start as *mut libc::c_void, m.len, libc::MADV_DONTNEED) };
        if r == 0 {
            t.binary_bytes += m.rss;
        }
    }
    t
}

/// A mapping that may be dropped.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    len: usize,
    /// Resident bytes before.
    rss: u64,
}

/// The mappings of `path` in `smaps` (the text of `/proc/self/smaps`) that are not writable and hold no anonymous
/// page, with some resident bytes.
fn clean_mappings(smaps: &str, path: &str) -> Vec<Mapping> {
    let mut out = vec![];
    // The mapping being read: its range and whether it qualifies so far, then its Rss and Anonymous lines.
    let mut cur: Option<(usize, usize, bool)> = None;
    let (mut rss, mut anon) = (0u64, 0u64);
    let flush = |cur: &Option<(usize, usize, bool)>, rss: u64, anon: u64, out: &mut Vec<Mapping>| {
        if let Some((start, end, true)) = *cur {
            if anon == 0 && rss > 0 {
                out.push(Mapping { start, len: end - start, rss });
            }
        }
    };
    for line in smaps.lines() {
        if let Some((range, perms, name)) = header(line) {
            flush(&cur, rss, anon, &mut out);
            (rss, anon) = (0, 0);
            cur = range.map(|(s, e)| (s, e, !perms.contains('w') && name == path));
        } else if let Some(v) = line.strip_prefix("Rss:") {
            rss = kib(v) * 1024;
        } else if let Some(v) = line.strip_prefix("Anonymous:") {
            anon = kib(v);
        }
    }
    flush(&cur, rss, anon, &mut out);
    out
}

/// What a mapping's header line says: its range (if it parses), its permissions and its path.
type Header<'a> = (Option<(usize, usize)>, &'a str, &'a str);

/// A mapping's header line: `start-end perms offset dev inode [path]`.
fn header(line: &str) -> Option<Header<'_>> {
    let mut f = line.splitn(6, ' ');
    let range = f.next()?;
    let (s, e) = range.split_once('-')?;
    let perms = f.next()?;
    if perms.len() != 4 {
        return None;
    }
    let (_offset, _dev, _inode) = (f.next()?, f.next()?, f.next()?);
    let name = f.next().unwrap_or("").trim_start();
    let range = match (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16)) {
        (Ok(s), Ok(e)) if e > s => Some((s, e)),
        _ => None,
    };
    Some((range, perms, name))
}

fn kib(v: &str) -> u64 {
    v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fe:01 1234                       /usr/bin/metac
Size:               1024 kB
Rss:                 512 kB
Anonymous:             0 kB
55d0a0100000-55d0a0200000 r-xp 00100000 fe:01 1234                       /usr/bin/metac
Size:               1024 kB
Rss:                 900 kB
Anonymous:             0 kB
55d0a0200000-55d0a0210000 r--p 00200000 fe:01 1234                       /usr/bin/metac
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
55d0a0210000-55d0a0220000 rw-p 00210000 fe:01 1234                       /usr/bin/metac
Size:                 64 kB
Rss:                  64 kB
Anonymous:            12 kB
55d0a0220000-55d0a0230000 r-xp 00000000 fe:01 99                         /usr/lib/libc.so.6
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
55d0a0230000-55d0a0240000 r--p 00000000 fe:01 1234                       /usr/bin/metac
Size:                 64 kB
Rss:                   0 kB
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  20 kB
Anonymous:            20 kB
";

    /// Only the binary's read-only mappings that nothing wrote to: the relocated (written, then made read-only)
    /// one, the writable data, other files, empty mappings and anonymous memory stay.
    #[test]
    fn only_clean_read_only_mappings_of_the_binary_are_dropped() {
        let got = clean_mappings(SMAPS, "/usr/bin/metac");
        assert_eq!(
            got,
            vec![
                Mapping { start: 0x55d0a0000000, len: 0x100000, rss: 512 * 1024 },
                Mapping { start: 0x55d0a0100000, len: 0x100000, rss: 900 * 1024 },
            ]
        );
        assert!(clean_mappings(SMAPS, "/usr/bin/other").is_empty());
        assert!(clean_mappings("garbage\n1-2\n", "/usr/bin/metac").is_empty());
    }

    /// On this process: a trim drops resident pages of the test binary, and the process goes on running the code
    /// it dropped (this test's own code, the test harness) without harm.
    #[test]
    fn a_trim_drops_pages_of_the_running_binary_and_the_process_runs_on() {
        let t = trim();
        assert!(t.binary_bytes > 0, "{t:?}");
        let again: u64 = (0..1000u64).map(|i| i * i).sum();
        assert_eq!(again, 332_833_500);
        let t2 = trim();
        assert!(t2.binary_bytes > 0 && t2.binary_bytes <= t.binary_bytes + (1 << 20), "{t2:?}");
    }
}
