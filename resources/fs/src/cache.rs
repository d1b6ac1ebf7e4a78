//! The binding side's content cache: whole read-only files, kept on this node by the blake3 hash of their content,
//! so that a program run again from a read-only bind (`FsBind::cache`) reads its binary and libraries from here and
//! not over the network.
//!
//! A file opened read-only on such a bind is asked for its hash ([`crate::proto::Op::Hash`], the exporter's word);
//! the cache file of that name serves every read of the open file. When there is none, the whole file is fetched,
//! its blake3 checked against the exporter's word, and only then entered ([`Cache::fill`]): content that does not
//! hash to its name never lands here, so a file found by its name is the content asked for, whichever bind or
//! exporter fetched it first.
//!
//! The cache is a directory of the kind's state (`<state>/kinds/fs/cache`, mode 0700: the node's alone), one file
//! per hash, named by its hex. Its total size is bounded by the node's `--cache-size`: least recently used files go
//! first ([`Index`], in memory, rebuilt from the directory at first use, ordered by the files' modification time,
//! which each use sets to now). Files are written to a temporary name and renamed into place; temporary files a
//! crash left are removed when the index is rebuilt. Two opens of the same uncached file at once fetch it once:
//! the second waits for the first ([`Cache::fill`] holds a lock per hash).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::proto::MAX_IO;

/// The cache's bound unless the node is told otherwise (`metac node --cache-size`): 2 GiB.
pub const DEFAULT_LIMIT: u64 = 2 << 30;
/// The largest file cached, whatever the limit: larger ones are read through as usual.
pub const MAX_FILE: u64 = 512 << 20;
/// Reads in flight while a file is fetched.
const FETCH_AHEAD: usize = 4;
/// The prefix of a file being written.
const TEMP: &str = ".tmp-";

/// A content hash.
pub type Hash = [u8; 32];

/// Why a file was not entered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The exporter failed a read.
    #[error("the exporter failed a read at {offset}: {}", std::io::Error::from_raw_os_error(*errno))]
    Read { offset: u64, errno: i32 },
    /// The exporter's bytes are not the size it stated (the file changed since it was hashed).
    #[error("the exporter sent {got} bytes of a file it said has {want}")]
    Size { got: u64, want: u64 },
    /// The bytes do not hash to what the exporter stated: dropped.
    #[error("the content fetched hashes to {got}, not to {want} as the exporter stated; not cached")]
    Mismatch { got: String, want: String },
    /// The local disk.
    #[error("cache: {0}")]
    Io(#[from] std::io::Error),
}

/// The figures `metac fs stats` shows of the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Files in the cache.
    pub entries: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The most bytes it holds.
    pub limit: u64,
    /// Opens served from the cache.
    pub hits: u64,
    /// Files fetched into it.
    pub misses: u64,
}

/// The cache's bookkeeping, with no IO: entries by hash, their sizes and last use, least recently used evicted
/// past the limit.
#[derive(Debug)]
pub struct Index {
    limit: u64,
    bytes: u64,
    tick: u64,
    entries: HashMap<Hash, (u64, u64)>,
    by_use: BTreeMap<u64, Hash>,
}

impl Index {
    /// An empty index holding at most `limit` bytes.
    pub fn new(limit: u64) -> Index {
        Index { limit, bytes: 0, tick: 0, entries: HashMap::new(), by_use: BTreeMap::new() }
    }

    /// Marks `hash` used now; whether it is there.
    pub fn touch(&mut self, hash: &Hash) -> bool {
        let Some((_, used)) = self.entries.get_mut(hash) else { return false };
        self.by_use.remove(used);
        self.tick += 1;
        *used = self.tick;
        self.by_use.insert(self.tick, *hash);
        true
    }

    /// Enters `hash` of `size` bytes as used now, and gives back what goes to stay within the limit, least
    /// recently used first (the new entry itself if it alone is larger than the limit).
    pub fn insert(&mut self, hash: Hash, size: u64) -> Vec<Hash> {
        if self.touch(&hash) {
            return vec![];
        }
        self.tick += 1;
        self.entries.insert(hash, (size, self.tick));
        self.by_use.insert(self.tick, hash);
        self.bytes += size;
        let mut evicted = vec![];
        while self.bytes > self.limit {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            if let Some((size, _)) = self.entries.remove(&oldest) {
                self.bytes -= size;
            }
            evicted.push(oldest);
        }
        evicted
    }

    /// Forgets `hash`.
    pub fn remove(&mut self, hash: &Hash) {
        if let Some((size, used)) = self.entries.remove(hash) {
            self.by_use.remove(&used);
            self.bytes -= size;
        }
    }

    /// How many entries and bytes it holds.
    pub fn held(&self) -> (u64, u64) {
        (self.entries.len() as u64, self.bytes)
    }
}

/// A node's content cache (one per node, shared by every bind that asks for it).
pub struct Cache {
    dir: PathBuf,
    limit: u64,
    /// `None` until first used (then rebuilt from the directory).
    index: Mutex<Option<Index>>,
    /// A lock per hash being fetched.
    fetching: Mutex<HashMap<Hash, Arc<tokio::sync::Mutex<()>>>>,
    hits: AtomicU64,
    misses: AtomicU64,
    temp: AtomicU64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("dir", &self.dir).field("limit", &self.limit).finish_non_exhaustive()
    }
}

impl Cache {
    /// The cache in directory `dir` (made when first used), of at most `limit` bytes.
    pub fn new(dir: PathBuf, limit: u64) -> Cache {
        Cache {
            dir,
            limit,
            index: Mutex::new(None),
            fetching: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            temp: AtomicU64::new(0),
        }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The largest file it takes: [`MAX_FILE`], or a quarter of the limit if that is less (one file does not
    /// empty the cache of everything else).
    pub fn max_file(&self) -> u64 {
        MAX_FILE.min(self.limit / 4)
    }

    /// Its figures (rebuilding the index if this is its first use).
    pub fn stats(&self) -> Stats {
        let (entries, bytes) = self.with_index(|i| i.held()).unwrap_or_default();
        let (hits, misses) = (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed));
        Stats { entries, bytes, limit: self.limit, hits, misses }
    }

    /// Rebuilds the index from the directory if not done yet (and removes what a crash left half written).
    pub fn load(&self) -> std::io::Result<()> {
        self.with_index(|_| ())
    }

    /// The file of `hash`, if the cache has it and it has the size stated; marked used.
    pub fn open(&self, hash: &Hash, size: u64) -> Option<std::fs::File> {
        let f = self.lookup(hash, size)?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(f)
    }

    fn lookup(&self, hash: &Hash, size: u64) -> Option<std::fs::File> {
        if !self.with_index(|i| i.touch(hash)).unwrap_or(false) {
            return None;
        }
        let path = self.path(hash);
        match std::fs::File::open(&path) {
            Ok(f) if f.metadata().is_ok_and(|m| m.len() == size) => {
                // Its last use, for the order after a restart.
                let _ = f.set_modified(SystemTime::now());
                Some(f)
            }
            r => {
                tracing::warn!(path = %path.display(), "fs cache: an entry is gone or of the wrong size ({:?}); dropped", r.err());
                let _ = std::fs::remove_file(&path);
                let _ = self.with_index(|i| i.remove(hash));
                None
            }
        }
    }

    /// The file of `hash` (`size` bytes): from the cache, or fetched with `read(offset, len)` (several in flight),
    /// checked to hash to `hash`, and entered. Only one fetch of a hash runs at once: another open of it waits and
    /// then finds it in the cache. Nothing enters that is not `size` bytes hashing to `hash`.
    pub async fn fill<R, F>(&self, hash: &Hash, size: u64, read: R) -> Result<std::fs::File, Error>
    where
        R: Fn(u64, u32) -> F,
        F: Future<Output = Result<Vec<u8>, i32>> + Send + 'static,
    {
        let lock = Arc::clone(self.fetching.lock().expect("fetching").entry(*hash).or_default());
        let guard = lock.lock().await;
        let r = match self.open(hash, size) {
            Some(f) => Ok(f),
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                self.fetch(hash, size, read).await
            }
        };
        drop(guard);
        let mut fetching = self.fetching.lock().expect("fetching");
        // The last one out takes the lock away (the map holds one reference, this function another).
        if Arc::strong_count(&lock) == 2 {
            fetching.remove(hash);
        }
        r
    }

    async fn fetch<R, F>(&self, hash: &Hash, size: u64, read: R) -> Result<std::fs::File, Error>
    where
        R: Fn(u64, u32) -> F,
        F: Future<Output = Result<Vec<u8>, i32>> + Send + 'static,
    {
        self.load()?;
        let n = self.temp.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join(format!("{TEMP}{}-{n}", hex(hash)));
        let r = self.fetch_to(&temp, hash, size, read).await;
        if r.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        r
    }

    async fn fetch_to<R, F>(&self, temp: &Path, hash: &Hash, size: u64, read: R) -> Result<std::fs::File, Error>
    where
        R: Fn(u64, u32) -> F,
        F: Future<Output = Result<Vec<u8>, i32>> + Send + 'static,
    {
        let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o644).open(temp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        let mut hasher = blake3::Hasher::new();
        let mut reads = std::collections::VecDeque::new();
        let (mut asked, mut got) = (0u64, 0u64);
        loop {
            while reads.len() < FETCH_AHEAD && asked < size {
                let len = (size - asked).min(MAX_IO as u64) as u32;
                reads.push_back((asked, tokio::spawn(read(asked, len))));
                asked += len as u64;
            }
            let Some((offset, next)) = reads.pop_front() else { break };
            let data = match next.await {
                Ok(Ok(data)) => data,
                Ok(Err(errno)) => return Err(Error::Read { offset, errno }),
                Err(_) => return Err(Error::Read { offset, errno: libc::EIO }),
            };
            let short = data.len() as u64 != (size - offset).min(MAX_IO as u64);
            hasher.update(&data);
            f.write_all_at(&data, offset)?;
            got += data.len() as u64;
            crate::buffers::give(data);
            if short {
                return Err(Error::Size { got, want: size });
            }
        }
        let got = *hasher.finalize().as_bytes();
        if &got != hash {
            return Err(Error::Mismatch { got: hex(&got), want: hex(hash) });
        }
        std::fs::rename(temp, self.path(hash))?;
        let evicted = self.with_index(|i| i.insert(*hash, size))?;
        self.evict(&evicted);
        if evicted.contains(hash) {
            // Larger than the whole cache: served from this open file alone, gone already.
            tracing::debug!("fs cache: {} is larger than the cache", hex(hash));
        }
        Ok(f)
    }

    fn evict(&self, hashes: &[Hash]) {
        for h in hashes {
            if let Err(e) = std::fs::remove_file(self.path(h)) {
                tracing::warn!("fs cache: cannot remove {}: {e}", self.path(h).display());
            }
        }
    }

    fn path(&self, hash: &Hash) -> PathBuf {
        self.dir.join(hex(hash))
    }

    /// Runs `f` on the index, rebuilding it from the directory first if this is its first use.
    fn with_index<T>(&self, f: impl FnOnce(&mut Index) -> T) -> std::io::Result<T> {
        let mut index = self.index.lock().expect("cache index");
        if index.is_none() {
            let (i, evicted) = self.scan()?;
            self.evict(&evicted);
            *index = Some(i);
        }
        Ok(f(index.as_mut().expect("loaded")))
    }

    /// The index of what the directory holds, oldest use first, and what is over the limit now (a smaller one
    /// than last time); temporary files are removed.
    fn scan(&self) -> std::io::Result<(Index, Vec<Hash>)> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        let mut found = vec![];
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TEMP) {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let (Some(hash), Ok(m)) = (unhex(&name), e.metadata()) else { continue };
            if m.is_file() {
                found.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), hash, m.len()));
            }
        }
        found.sort();
        let mut index = Index::new(self.limit);
        let mut evicted = vec![];
        for (_, hash, len) in found {
            evicted.extend(index.insert(hash, len));
        }
        Ok((index, evicted))
    }
}

/// A hash as 64 lowercase hex digits.
pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Hash> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(h)
}

/// Parses a size for `--cache-size` (`2G`, `512M`), as every size flag takes it.
pub fn parse_size(s: &str) -> Result<u64, String> {
    metac_resource::text::parse_size(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> Hash {
        [n; 32]
    }

    /// The total stays within the limit, and what goes is what was used least lately.
    #[test]
    fn eviction_keeps_the_total_under_the_limit_and_takes_the_least_recently_used() {
        let mut i = Index::new(100);
        assert!(i.insert(h(1), 40).is_empty());
        assert!(i.insert(h(2), 40).is_empty());
        assert!(i.touch(&h(1)), "1 is now the most recently used");
        assert_eq!(i.insert(h(3), 40), vec![h(2)], "2, used least lately, goes");
        assert_eq!(i.held(), (2, 80));
        assert!(i.insert(h(3), 40).is_empty(), "entering what is there only marks it used");
        assert_eq!(i.insert(h(4), 90), vec![h(1), h(3)]);
        assert_eq!(i.held(), (1, 90));
        assert_eq!(i.insert(h(5), 101), vec![h(4), h(5)], "larger than the whole cache: nothing stays");
        assert_eq!(i.held(), (0, 0));
        assert!(!i.touch(&h(4)));
        for n in 0..50 {
            i.insert(h(n), 7);
            assert!(i.held().1 <= 100);
        }
        assert_eq!(i.held(), (14, 98));
    }

    /// Reads from `content`, counting them.
    fn reader(
        content: Arc<Vec<u8>>,
        reads: Arc<AtomicU64>,
    ) -> impl Fn(u64, u32) -> std::future::Ready<Result<Vec<u8>, i32>> {
        move |offset, len| {
            reads.fetch_add(1, Ordering::Relaxed);
            let start = (offset as usize).min(content.len());
            let end = (start + len as usize).min(content.len());
            std::future::ready(Ok(content[start..end].to_vec()))
        }
    }

    fn read_all(mut f: std::fs::File) -> Vec<u8> {
        let mut v = vec![];
        std::io::Read::read_to_end(&mut f, &mut v).unwrap();
        v
    }

    /// A file fetched whole is entered by its hash and served from there the next time, with no read; the cache
    /// survives a restart (a new `Cache` on the same directory), in the order of last use, and a temporary file a
    /// crash left is removed.
    #[tokio::test]
    async fn a_fetched_file_is_served_again_without_reads_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let content: Arc<Vec<u8>> = Arc::new((0..(3 * MAX_IO as usize + 7)).map(|i| (i % 253) as u8).collect());
        let hash = *blake3::hash(&content).as_bytes();
        let reads = Arc::new(AtomicU64::new(0));
        let cache = Cache::new(dir.path().join("cache"), 64 << 20);
        let size = content.len() as u64;
        assert!(cache.open(&hash, size).is_none());
        let f = cache.fill(&hash, size, reader(Arc::clone(&content), Arc::clone(&reads))).await.unwrap();
        assert_eq!(read_all(f), *content);
        assert_eq!(reads.load(Ordering::Relaxed), 4, "fetched in MAX_IO pieces");
        let f = cache.fill(&hash, size, reader(Arc::clone(&content), Arc::clone(&reads))).await.unwrap();
        assert_eq!(read_all(f), *content);
        assert_eq!(reads.load(Ordering::Relaxed), 4, "the second time from the cache");
        let mode = std::fs::metadata(cache.path(&hash)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let dmode = std::fs::metadata(cache.dir()).unwrap().permissions().mode();
        assert_eq!(dmode & 0o777, 0o700, "the cache is the node's alone");
        assert_eq!(cache.stats(), Stats { entries: 1, bytes: size, limit: 64 << 20, hits: 1, misses: 1 });

        // After a restart: a second entry, used before the first, and a crash's leftover.
        let small = b"small".to_vec();
        let small_hash = *blake3::hash(&small).as_bytes();
        cache.fill(&small_hash, 5, reader(Arc::new(small.clone()), Arc::clone(&reads))).await.unwrap();
        cache.open(&hash, size).unwrap();
        std::fs::write(dir.path().join("cache/.tmp-leftover"), b"half").unwrap();
        drop(cache);
        let cache = Cache::new(dir.path().join("cache"), size + 5);
        assert_eq!(cache.stats().entries, 2);
        assert!(!dir.path().join("cache/.tmp-leftover").exists(), "a crash's leftover is removed");
        let reads_before = reads.load(Ordering::Relaxed);
        assert_eq!(read_all(cache.open(&hash, size).unwrap()), *content);
        // One byte over: the least recently used (the small file, used before the big one) goes.
        let one = b"1".to_vec();
        let one_hash = *blake3::hash(&one).as_bytes();
        cache.fill(&one_hash, 1, reader(Arc::new(one), Arc::clone(&reads))).await.unwrap();
        assert!(!cache.path(&small_hash).exists(), "evicted from the disk too");
        assert!(cache.open(&small_hash, 5).is_none());
        assert!(cache.open(&hash, size).is_some());
        assert_eq!(reads.load(Ordering::Relaxed), reads_before + 1);
    }

    /// Content that does not hash to what the exporter stated, or that is shorter than it said, never lands in
    /// the cache (nor does any temporary file stay), and a later fetch of the right content does.
    #[tokio::test]
    async fn content_that_does_not_match_its_hash_never_lands_in_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"), 64 << 20);
        let reads = Arc::new(AtomicU64::new(0));
        let good = b"what the exporter hashed".to_vec();
        let hash = *blake3::hash(&good).as_bytes();
        let bad = Arc::new(b"what the exporter sent!!".to_vec());
        let e = cache.fill(&hash, good.len() as u64, reader(bad, Arc::clone(&reads))).await.unwrap_err();
        assert!(matches!(e, Error::Mismatch { .. }), "{e}");
        let short = Arc::new(good[..10].to_vec());
        let e = cache.fill(&hash, good.len() as u64, reader(short, Arc::clone(&reads))).await.unwrap_err();
        assert!(matches!(e, Error::Size { got: 10, .. }), "{e}");
        let failing = |_, _| std::future::ready(Err::<Vec<u8>, i32>(libc::EIO));
        let e = cache.fill(&hash, good.len() as u64, failing).await.unwrap_err();
        assert!(matches!(e, Error::Read { offset: 0, errno: libc::EIO }), "{e}");
        assert_eq!(std::fs::read_dir(cache.dir()).unwrap().count(), 0, "nothing entered, nothing left behind");
        assert!(cache.open(&hash, good.len() as u64).is_none());
        assert_eq!(cache.stats().entries, 0);
        let f = cache.fill(&hash, good.len() as u64, reader(Arc::new(good.clone()), reads)).await.unwrap();
        assert_eq!(read_all(f), good);
        assert_eq!(std::fs::read(cache.path(&hash)).unwrap(), good);
    }

    /// Two opens of the same uncached file at once fetch it once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_opens_at_once_fetch_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::new(dir.path().join("cache"), 64 << 20));
        let content = Arc::new(vec![9u8; 2 * MAX_IO as usize]);
        let hash = *blake3::hash(&content).as_bytes();
        let reads = Arc::new(AtomicU64::new(0));
        let slow = {
            let (content, reads) = (Arc::clone(&content), Arc::clone(&reads));
            move |offset: u64, len: u32| {
                let (content, reads) = (Arc::clone(&content), Arc::clone(&reads));
                async move {
                    reads.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    Ok(content[offset as usize..offset as usize + len as usize].to_vec())
                }
            }
        };
        let size = content.len() as u64;
        let (a, b) = tokio::join!(cache.fill(&hash, size, slow.clone()), cache.fill(&hash, size, slow));
        assert_eq!(read_all(a.unwrap()), *content);
        assert_eq!(read_all(b.unwrap()), *content);
        assert_eq!(reads.load(Ordering::Relaxed), 2, "one fetch of two pieces");
        assert!(cache.fetching.lock().unwrap().is_empty(), "no lock left behind");
    }

    #[test]
    fn sizes_parse_as_the_other_size_flags_do() {
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").unwrap_err().contains("bad size \"lots\""));
        assert!(parse_size("-1G").is_err());
        assert_eq!(unhex(&hex(&h(0xab))), Some(h(0xab)));
        assert_eq!(unhex("zz"), None);
    }
}
