//! The order an exporter keeps among one bind's operations on the same inode ([`crate::proto::ORDERED`]): each
//! waits for the earlier ones it must follow ([`crate::proto::Op::is_ordered`]): a change of the inode's data or
//! attributes, or a close of a file open on it, for all earlier ones; a read, for the earlier changes. Operations
//! on different inodes, and reads of one, still run side by side on the bind's workers.
//!
//! What it is for: a binder with write-behind answers its kernel's write of a cached page at once and sends the
//! write on, and the kernel's next operation on the file (a `utimensat` of tar's, a read, the close) follows on
//! the stream before the write is done. Done in any other order than they came, a write could land after the
//! mtime set after it, or after a newer write of the same page.
//!
//! Nothing here waits: [`Order::admit`] says whether an operation may run now, and keeps it if not;
//! [`Order::done`] gives back those that may run once one has ended, to run in the order given.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Operations of type `T` waiting for earlier ones on their inode.
pub(crate) struct Order<T> {
    inodes: Mutex<HashMap<u64, Line<T>>>,
}

/// One inode's operations: how many run now, and those waiting their turn, in order.
struct Line<T> {
    /// Reads running.
    reading: u32,
    /// A change running (alone).
    changing: bool,
    waiting: VecDeque<(T, bool)>,
}

impl<T> Default for Order<T> {
    fn default() -> Order<T> {
        Order { inodes: Mutex::new(HashMap::new()) }
    }
}

impl<T> Order<T> {
    /// `item`, an operation on `ino` that must follow every earlier one if `after_all` (else only earlier
    /// changes): given back if it may run now (and counted as running until [`Order::done`]), else kept.
    pub(crate) fn admit(&self, ino: u64, after_all: bool, item: T) -> Option<T> {
        let mut inodes = self.inodes.lock().expect("order");
        let line = inodes.entry(ino).or_insert_with(|| Line { reading: 0, changing: false, waiting: VecDeque::new() });
        let free = line.waiting.is_empty() && !line.changing && (!after_all || line.reading == 0);
        if !free {
            line.waiting.push_back((item, after_all));
            return None;
        }
        if after_all {
            line.changing = true;
        } else {
            line.reading += 1;
        }
        Some(item)
    }

    /// An operation admitted on `ino` (as `after_all`) has ended: the waiting ones that may run now, in order, each
    /// counted as running.
    pub(crate) fn done(&self, ino: u64, after_all: bool) -> Vec<T> {
        let mut inodes = self.inodes.lock().expect("order");
        let Some(line) = inodes.get_mut(&ino) else { return Vec::new() };
        if after_all {
            line.changing = false;
        } else {
            line.reading = line.reading.saturating_sub(1);
        }
        let mut now = Vec::new();
        while let Some(&(_, after_all)) = line.waiting.front() {
            if line.changing || (after_all && line.reading > 0) {
                break;
            }
            let (item, _) = line.waiting.pop_front().expect("a front");
            if after_all {
                line.changing = true;
            } else {
                line.reading += 1;
            }
            now.push(item);
        }
        if line.reading == 0 && !line.changing && line.waiting.is_empty() {
            inodes.remove(&ino);
        }
        now
    }

    /// Inodes with operations running or waiting (for tests).
    #[cfg(test)]
    fn lines(&self) -> usize {
        self.inodes.lock().expect("order").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_run_together_and_a_change_waits_for_them_and_holds_what_follows() {
        let o = Order::default();
        assert_eq!(o.admit(1, false, "r1"), Some("r1"));
        assert_eq!(o.admit(1, false, "r2"), Some("r2"), "reads run side by side");
        assert_eq!(o.admit(1, true, "w1"), None, "a write waits for the reads before it");
        assert_eq!(o.admit(1, false, "r3"), None, "a read after a waiting write waits for it");
        assert_eq!(o.admit(2, true, "other"), Some("other"), "another inode is not held");
        assert_eq!(o.done(1, false), Vec::<&str>::new(), "one read is still running");
        assert_eq!(o.done(1, false), vec!["w1"]);
        assert_eq!(o.admit(1, true, "w2"), None);
        assert_eq!(o.done(1, true), vec!["r3"], "the read, and not the write after it");
        assert_eq!(o.done(1, false), vec!["w2"]);
        assert_eq!(o.done(1, true), Vec::<&str>::new());
        assert_eq!(o.done(2, true), Vec::<&str>::new());
        assert_eq!(o.lines(), 0, "nothing is kept of idle inodes");
    }

    #[test]
    fn reads_waiting_behind_a_change_run_together_after_it() {
        let o = Order::default();
        assert_eq!(o.admit(7, true, "w"), Some("w"));
        for r in ["a", "b", "c"] {
            assert_eq!(o.admit(7, false, r), None);
        }
        assert_eq!(o.admit(7, true, "close"), None);
        assert_eq!(o.done(7, true), vec!["a", "b", "c"]);
        assert_eq!(o.done(7, false), Vec::<&str>::new());
        assert_eq!(o.done(7, false), Vec::<&str>::new());
        assert_eq!(o.done(7, false), vec!["close"], "the close after the last read");
        assert_eq!(o.done(7, true), Vec::<&str>::new());
        assert_eq!(o.lines(), 0);
    }

    #[test]
    fn a_done_of_an_unknown_inode_gives_nothing() {
        let o: Order<u8> = Order::default();
        assert!(o.done(3, true).is_empty());
        assert!(o.done(3, false).is_empty());
    }
}
