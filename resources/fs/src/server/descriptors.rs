//! The node's descriptors that fs binds may hold between them. Each bind holds an O_PATH descriptor per inode its
//! binder knows and one per open file; a binder that never forgets (a hostile one: metac's own trims what its kernel
//! holds) could otherwise take every descriptor the process may have, and the node's other work (the mesh's
//! sockets, the API, other kinds' binds) would get EMFILE. The binds together stop short of the limit by a reserve:
//! past it, the lookup or open that would take one more gets ENFILE, and everything else goes on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Descriptors kept out of the binds' reach: an eighth of the limit, and at least this many (or a quarter of a
/// limit smaller than four times it).
pub const RESERVE: usize = 1024;

/// A budget of descriptors, shared by the binds that draw on it.
#[derive(Debug)]
pub struct Descriptors {
    held: AtomicUsize,
    limit: usize,
    /// A refusal was logged, and the budget has not fallen below nine tenths since (one line per squeeze).
    told: AtomicBool,
}

impl Descriptors {
    /// A budget of `limit` descriptors.
    pub fn new(limit: usize) -> Arc<Descriptors> {
        Arc::new(Descriptors { held: AtomicUsize::new(0), limit, told: AtomicBool::new(false) })
    }

    /// The node's budget: its open-files limit when first asked (the node raises the limit at start, before any
    /// bind) less the reserve.
    pub fn node() -> Arc<Descriptors> {
        static NODE: OnceLock<Arc<Descriptors>> = OnceLock::new();
        Arc::clone(NODE.get_or_init(|| Descriptors::new(share_of(open_files_limit()))))
    }

    /// One descriptor more, if the budget has it; given back when the [`Held`] is dropped.
    pub fn take(self: &Arc<Self>) -> Option<Held> {
        let was = self.held.fetch_add(1, Ordering::Relaxed);
        if was >= self.limit {
            self.held.fetch_sub(1, Ordering::Relaxed);
            if !self.told.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "fs binds hold {} descriptors, all this node lets them have (its open-files limit less a reserve); \
                     lookups and opens are refused with ENFILE until binders forget some or binds end",
                    self.limit
                );
            }
            return None;
        }
        Some(Held(Arc::clone(self)))
    }

    /// Descriptors held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The most that may be held.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// One descriptor of a budget, for as long as it lives.
#[derive(Debug)]
pub struct Held(Arc<Descriptors>);

impl Drop for Held {
    fn drop(&mut self) {
        let was = self.0.held.fetch_sub(1, Ordering::Relaxed);
        if was < self.0.limit / 10 * 9 {
            self.0.told.store(false, Ordering::Relaxed);
        }
    }
}

/// What binds may hold of a process limit of `limit` descriptors.
pub fn share_of(limit: usize) -> usize {
    limit - (limit / 8).max(RESERVE.min(limit / 4))
}

fn open_files_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the limit into `lim`, a valid rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_gives_what_it_has_and_takes_back_what_is_dropped() {
        let b = Descriptors::new(2);
        let (x, y) = (b.take().unwrap(), b.take().unwrap());
        assert!(b.take().is_none(), "the third is refused");
        assert_eq!(b.held(), 2, "a refusal holds nothing");
        drop(x);
        let z = b.take().expect("one came back");
        drop((y, z));
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn the_reserve_is_an_eighth_and_at_least_1024_or_a_quarter() {
        assert_eq!(share_of(1 << 20), (1 << 20) - (1 << 17));
        assert_eq!(share_of(4096), 4096 - 1024);
        assert_eq!(share_of(1024), 768);
        assert_eq!(share_of(0), 0);
        assert!(Descriptors::node().limit() > 0);
    }
}
