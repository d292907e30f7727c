//! Which msgids of an app were stored since the writer started, so that a message below the
//! app's msgid watermark needs a duplicate-index lookup only when it may really be a duplicate.
//!
//! Concurrent clients deliver batches out of order, so most messages arrive below the
//! watermark; without this each of them would cost a point read of the `ids` keyspace. Ids come
//! mostly in runs (server-assigned, or a client's own counter), so the set is kept as intervals.

use std::collections::BTreeMap;

/// Most intervals kept per app; beyond it the lowest are forgotten (their ids are then looked
/// up in the store again), so that sparse ids cannot grow memory without bound.
const MAX_RUNS: usize = 1 << 16;

#[derive(Debug, Default)]
pub(crate) struct RecentIds {
    /// Every msgid at or above `floor` that the app holds was stored since the writer started
    /// (or since `floor` was last raised) and is in `runs`.
    floor: u64,
    /// `start → end` (exclusive) of stored ids at or above `floor`.
    runs: BTreeMap<u64, u64>,
}

impl RecentIds {
    /// Tracking that starts at `watermark`: the app holds no msgid at or above it.
    pub(crate) fn new(watermark: u64) -> RecentIds {
        RecentIds {
            floor: watermark,
            runs: BTreeMap::new(),
        }
    }

    /// `true` when `msgid` is certainly not stored; `false` when the store must be asked.
    pub(crate) fn certainly_new(&self, msgid: u64) -> bool {
        msgid >= self.floor
            && self
                .runs
                .range(..=msgid)
                .next_back()
                .is_none_or(|(_, &end)| msgid >= end)
    }

    /// `true` when no msgid in `lo..hi` is stored (a duplicate-index block covering them holds
    /// nothing yet); `false` when the store must be asked.
    pub(crate) fn certainly_none_in(&self, lo: u64, hi: u64) -> bool {
        lo >= self.floor
            && self
                .runs
                .range(..hi)
                .next_back()
                .is_none_or(|(_, &end)| end <= lo)
    }

    /// Records ids stored by a commit (any order; duplicates allowed).
    pub(crate) fn extend(&mut self, ids: &mut [u64]) {
        ids.sort_unstable();
        let mut i = 0;
        while i < ids.len() {
            let start = ids[i];
            let mut end = start + 1;
            i += 1;
            while i < ids.len() && ids[i] <= end {
                end = end.max(ids[i] + 1);
                i += 1;
            }
            if end > self.floor {
                self.insert(start.max(self.floor), end);
            }
        }
        while self.runs.len() > MAX_RUNS {
            let (_, end) = self.runs.pop_first().expect("not empty");
            self.floor = end;
        }
    }

    /// Adds `[start, end)`, merging with the runs it touches.
    fn insert(&mut self, mut start: u64, mut end: u64) {
        if let Some((&s, &e)) = self.runs.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
        }
        let touched: Vec<u64> = self.runs.range(start..=end).map(|(&s, _)| s).collect();
        for s in touched {
            let e = self.runs.remove(&s).expect("present");
            end = end.max(e);
        }
        self.runs.insert(start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    proptest! {
        /// Against a plain set: an id stored since tracking began is never called certainly
        /// new, and an id never stored at or above the watermark always is.
        #[test]
        fn agrees_with_a_set(
            watermark in 0u64..50,
            commits in prop::collection::vec(prop::collection::vec(0u64..300, 0..40), 0..30),
            probes in prop::collection::vec(0u64..320, 0..100),
        ) {
            let mut fresh = RecentIds::new(watermark);
            let mut stored = HashSet::new();
            for mut ids in commits {
                stored.extend(ids.iter().copied());
                fresh.extend(&mut ids);
                for w in fresh.runs.iter().collect::<Vec<_>>().windows(2) {
                    prop_assert!(w[0].1 < w[1].0, "runs stay disjoint and apart: {:?}", w);
                }
            }
            for lo in (0..320).step_by(7) {
                for len in [1, 5, 64] {
                    let any = (lo..lo + len).any(|id| stored.contains(&id));
                    let sure = fresh.certainly_none_in(lo, lo + len);
                    if any || lo < watermark {
                        prop_assert!(!sure, "{}..{} holds a stored id or is below the watermark", lo, lo + len);
                    } else {
                        prop_assert!(sure, "nothing in {}..{} was stored", lo, lo + len);
                    }
                }
            }
            for id in probes.into_iter().chain(0..320) {
                let sure = fresh.certainly_new(id);
                if stored.contains(&id) {
                    prop_assert!(!sure, "{} was stored", id);
                } else if id >= watermark {
                    prop_assert!(sure, "{} was never stored", id);
                } else {
                    prop_assert!(!sure, "{} is below the watermark", id);
                }
            }
        }
    }

    #[test]
    fn sparse_ids_are_capped_by_raising_the_floor() {
        let mut fresh = RecentIds::new(0);
        let mut ids: Vec<u64> = (0..(MAX_RUNS as u64 + 10)).map(|i| i * 2).collect();
        fresh.extend(&mut ids);
        assert_eq!(fresh.runs.len(), MAX_RUNS);
        assert!(!fresh.certainly_new(0), "forgotten ids are looked up again");
        assert!(!fresh.certainly_new(1), "below the raised floor");
        let top = (MAX_RUNS as u64 + 9) * 2;
        assert!(!fresh.certainly_new(top));
        assert!(fresh.certainly_new(top - 1));
        assert!(fresh.certainly_new(top + 1));
    }
}
