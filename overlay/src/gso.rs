//! How the datagrams of one run, encrypted end to end into one buffer, are cut into UDP GSO sends ("trains").
//!
//! The kernel cuts a GSO send into segments of one size, of which only the last may be shorter. So a train is a
//! run of datagrams of equal length, which one shorter datagram may close; a longer one starts the next train.
//! A train holds at most the socket's GSO segment count (the caller passes 1 for a narrow endpoint, whose
//! datagrams the kernel must fragment one by one) and at most [`MAX_BYTES`]. Within those limits trains are as
//! long as they can be: every send is a syscall.
//!
//! This is the pure part of the TUN -> network path (`engine::tx` does the sends): no IO and no allocation, so it
//! is tested here on its own.

use std::ops::Range;

/// Most payload bytes in one GSO send: a UDP datagram's length field (and IPv6's payload length) is 16 bits.
pub(crate) const MAX_BYTES: usize = 65535 - 8;

/// One GSO send: datagrams laid end to end, all `size` long but the last, which may be shorter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Train {
    /// Which datagrams it carries (indices into the lengths given to [`trains`]).
    pub datagrams: Range<usize>,
    /// Where they are in the buffer.
    pub bytes: Range<usize>,
    /// The length of the first datagram, and of every other but the last: the GSO segment size.
    pub size: usize,
}

impl Train {
    /// The segment size to ask the kernel for: none for a lone datagram, which goes out as plain UDP.
    pub fn segment_size(&self) -> Option<usize> {
        (self.datagrams.end - self.datagrams.start > 1).then_some(self.size)
    }
}

/// The trains that send datagrams of lengths `lens`, laid end to end from the start of a buffer, in order; at most
/// `max_segments` datagrams (taken as 1 if 0) and `max_bytes` bytes in each, but a lone datagram longer than
/// `max_bytes` still has a train of its own.
pub(crate) fn trains(lens: &[usize], max_segments: usize, max_bytes: usize) -> Trains<'_> {
    Trains { lens, max_segments, max_bytes, next: 0, start: 0 }
}

/// The iterator of [`trains`]: computes each train as the sender reaches it, without allocating.
pub(crate) struct Trains<'a> {
    lens: &'a [usize],
    max_segments: usize,
    max_bytes: usize,
    /// The first datagram of the next train.
    next: usize,
    /// Where that datagram starts in the buffer.
    start: usize,
}

impl Iterator for Trains<'_> {
    type Item = Train;

    fn next(&mut self) -> Option<Train> {
        let (lens, max, k) = (self.lens, self.max_segments, self.next);
        if k >= lens.len() {
            return None;
        }
        let size = lens[k];
        let (mut m, mut len) = (k + 1, size);
        while m < lens.len() && m - k < max && lens[m] == size && len + size <= self.max_bytes {
            len += size;
            m += 1;
        }
        if m < lens.len() && m - k < max && lens[m] < size && len + lens[m] <= self.max_bytes {
            len += lens[m]; // a shorter last segment may end a GSO train
            m += 1;
        }
        let train = Train { datagrams: k..m, bytes: self.start..self.start + len, size };
        self.start += len;
        self.next = m;
        Some(train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A full-size datagram: the default MTU (1420) plus WireGuard's 32 bytes.
    const FULL: usize = 1452;

    /// The trains as (datagram range, segment size) pairs, with their byte ranges checked against `lens`.
    fn plan(lens: &[usize], max_segments: usize, max_bytes: usize) -> Vec<(Range<usize>, Option<usize>)> {
        let mut at = 0;
        trains(lens, max_segments, max_bytes)
            .map(|t| {
                let len: usize = lens[t.datagrams.clone()].iter().sum();
                assert_eq!(t.bytes, at..at + len, "bytes of {t:?}");
                assert_eq!(t.size, lens[t.datagrams.start]);
                at += len;
                (t.datagrams.clone(), t.segment_size())
            })
            .collect()
    }

    #[test]
    fn nothing_to_send_is_no_train() {
        assert_eq!(plan(&[], 64, MAX_BYTES), vec![]);
        assert_eq!(plan(&[], 0, 0), vec![]);
    }

    #[test]
    fn one_datagram_is_plain_udp() {
        assert_eq!(plan(&[148], 64, MAX_BYTES), vec![(0..1, None)]);
        assert_eq!(plan(&[FULL], 1, MAX_BYTES), vec![(0..1, None)]);
    }

    #[test]
    fn equal_lengths_make_one_train() {
        assert_eq!(plan(&[FULL; 10], 64, MAX_BYTES), vec![(0..10, Some(FULL))]);
        assert_eq!(plan(&[92; 2], 64, MAX_BYTES), vec![(0..2, Some(92))]);
    }

    #[test]
    fn a_shorter_datagram_closes_a_train() {
        // The tail of a TCP super-segment: full pieces, then a short one, then the next run.
        assert_eq!(
            plan(&[FULL, FULL, FULL, 500, FULL, FULL], 64, MAX_BYTES),
            vec![(0..4, Some(FULL)), (4..6, Some(FULL))]
        );
        // A shorter one after a lone datagram makes a train of two.
        assert_eq!(plan(&[FULL, 500], 64, MAX_BYTES), vec![(0..2, Some(FULL))]);
        // Only one shorter datagram fits at the end: the second starts a train.
        assert_eq!(plan(&[FULL, FULL, 500, 500], 64, MAX_BYTES), vec![(0..3, Some(FULL)), (3..4, None)]);
        assert_eq!(plan(&[FULL, 500, 400, 300], 64, MAX_BYTES), vec![(0..2, Some(FULL)), (2..4, Some(400))]);
    }

    #[test]
    fn a_longer_datagram_starts_a_train() {
        assert_eq!(plan(&[500, 500, FULL, FULL], 64, MAX_BYTES), vec![(0..2, Some(500)), (2..4, Some(FULL))]);
        assert_eq!(plan(&[100, 200, 300], 64, MAX_BYTES), vec![(0..1, None), (1..2, None), (2..3, None)]);
        // A handshake initiation (148) queued ahead of data goes alone, the data after it together.
        assert_eq!(plan(&[148, FULL, FULL], 64, MAX_BYTES), vec![(0..1, None), (1..3, Some(FULL))]);
    }

    #[test]
    fn the_segment_limit_splits_a_train() {
        assert_eq!(plan(&[FULL; 10], 4, MAX_BYTES), vec![(0..4, Some(FULL)), (4..8, Some(FULL)), (8..10, Some(FULL))]);
        // The closing shorter datagram counts as a segment too.
        assert_eq!(plan(&[FULL, FULL, FULL, FULL, 500], 4, MAX_BYTES), vec![(0..4, Some(FULL)), (4..5, None)]);
        assert_eq!(plan(&[FULL, FULL, FULL, 500], 4, MAX_BYTES), vec![(0..4, Some(FULL))]);
    }

    #[test]
    fn a_narrow_endpoint_gets_one_datagram_per_send() {
        // The engine passes 1 for a narrow endpoint; 0 (no GSO reported) means the same.
        for max in [0, 1] {
            assert_eq!(plan(&[FULL, FULL, 500], max, MAX_BYTES), vec![(0..1, None), (1..2, None), (2..3, None)]);
        }
    }

    #[test]
    fn a_train_stays_under_64_kib() {
        // 45 full datagrams are 65340 bytes; a 46th would pass 65527.
        assert_eq!(45 * FULL, 65340);
        assert_eq!(plan(&[FULL; 64], 64, MAX_BYTES), vec![(0..45, Some(FULL)), (45..64, Some(FULL))]);
        // A shorter datagram closes the train only if it still fits: 187 bytes do, exactly; 188 do not.
        assert_eq!(plan(&[&[FULL; 45][..], &[187]].concat(), 64, MAX_BYTES), vec![(0..46, Some(FULL))]);
        assert_eq!(plan(&[&[FULL; 45][..], &[188]].concat(), 64, MAX_BYTES), vec![(0..45, Some(FULL)), (45..46, None)]);
        // Small datagrams reach the segment limit first.
        assert_eq!(plan(&[92; 100], 64, MAX_BYTES), vec![(0..64, Some(92)), (64..100, Some(92))]);
        // A lone datagram longer than the limit still goes (the kernel will refuse or fragment it).
        assert_eq!(plan(&[70_000, FULL], 64, MAX_BYTES), vec![(0..1, None), (1..2, None)]);
    }

    /// Lengths that repeat often, as a real run's do, with some of any length between them.
    fn lens() -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(
            prop_oneof![4 => Just(FULL), 2 => Just(500), 1 => Just(148), 2 => 1usize..=2000],
            0..200,
        )
    }

    proptest! {
        #[test]
        fn trains_cover_every_datagram_within_the_limits(
            lens in lens(),
            max_segments in 0usize..=70,
            max_bytes in prop_oneof![Just(MAX_BYTES), 1usize..=20_000],
        ) {
            let trains: Vec<Train> = trains(&lens, max_segments, max_bytes).collect();
            let (mut next, mut at) = (0, 0);
            for (i, t) in trains.iter().enumerate() {
                // Every datagram once, in order, and its bytes where the previous train's end.
                prop_assert_eq!(t.datagrams.start, next);
                prop_assert!(t.datagrams.end > t.datagrams.start);
                let ls = &lens[t.datagrams.clone()];
                let len: usize = ls.iter().sum();
                prop_assert_eq!(t.bytes.clone(), at..at + len);
                // Equal segments, then perhaps one shorter.
                prop_assert_eq!(t.size, ls[0]);
                prop_assert!(ls[..ls.len() - 1].iter().all(|&l| l == t.size));
                prop_assert!(ls[ls.len() - 1] <= t.size);
                prop_assert_eq!(t.segment_size().is_some(), ls.len() > 1);
                // Within the limits, but a lone oversized datagram.
                prop_assert!(ls.len() <= max_segments.max(1));
                prop_assert!(len <= max_bytes || ls.len() == 1);
                // As long as allowed: the next datagram could not have joined this train.
                if let Some(n) = trains.get(i + 1) {
                    let l = lens[n.datagrams.start];
                    prop_assert!(
                        ls.len() >= max_segments.max(1)
                            || ls[ls.len() - 1] < t.size
                            || l > t.size
                            || len + l > max_bytes,
                        "{:?} could have joined {:?}", l, t
                    );
                }
                next = t.datagrams.end;
                at = t.bytes.end;
            }
            prop_assert_eq!(next, lens.len());
        }
    }
}
