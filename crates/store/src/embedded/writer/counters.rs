//! The writer's cache of per-hour scope counters.

use super::*;

/// Per-hour scope counts of the day partitions this writer created, in memory for the latest
/// hours: counter values by key, and in [`Format::SparseCounters`] partitions every scope's
/// count for the hour by counter prefix (whether or not the hour has a counter yet). Such a
/// partition holds only what this writer wrote, so a count missing here is zero and a commit
/// adds to it without reading the store (those reads, one per scope and hour a commit touched,
/// were a tenth of the writer's time and most of its block-cache traffic).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) days: HashMap<i64, DayCounters>,
    /// Keys held, over all days.
    len: usize,
    /// Bytes of the dropped hours' sketches, over all days.
    sketch_bytes: usize,
}

/// Most bytes of [`Sketch`]es kept (the oldest hours' go first): every hour of a week of a
/// 1M-messages-a-week app takes ~5 MB, ~2 days of a 1.7M-a-day one 16 MB.
const SKETCH_BYTES: usize = 16 << 20;

/// An upper bound of each quiet scope's count in an hour the cache dropped: a count-min
/// sketch (two rows of cells, each scope adding to one cell of each, the bound the lesser).
/// A write to a scope with no counter in such an hour needs the hour's count only to learn
/// whether it becomes busy: when the bound says it cannot, the write adds to the sketch and
/// reads nothing; otherwise the index chunks are counted. Those counts were 62% of the
/// writer's time while a backfill swept a week it had written. Never below a count, so a
/// collision costs a count, never a wrong counter.
pub(super) struct Sketch {
    mask: usize,
    cells: Vec<u8>,
}

impl Sketch {
    fn new(scopes: usize) -> Sketch {
        let width = scopes.next_power_of_two().max(64);
        Sketch {
            mask: width - 1,
            cells: vec![0; 2 * width],
        }
    }

    fn slots(&self, key: &[u8]) -> [usize; 2] {
        use std::hash::BuildHasher;
        let h = rustc_hash::FxBuildHasher.hash_one(key);
        // The second row from the hash multiplied again, so that two scopes sharing one
        // row's cell rarely share the other's.
        let g = h.rotate_left(29).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        [
            (h >> 32) as usize & self.mask,
            self.mask + 1 + ((g >> 32) as usize & self.mask),
        ]
    }

    fn add(&mut self, key: &[u8], n: u64) {
        let n = u8::try_from(n).unwrap_or(u8::MAX);
        for s in self.slots(key) {
            self.cells[s] = self.cells[s].saturating_add(n);
        }
    }

    /// At least the scope's count (a full cell bounds nothing).
    fn bound(&self, key: &[u8]) -> u64 {
        match self.slots(key).map(|s| self.cells[s]).into_iter().min() {
            Some(u8::MAX) | None => u64::MAX,
            Some(n) => u64::from(n),
        }
    }
}

#[derive(Default)]
pub(super) struct DayCounters {
    /// Every counter the day has for each hour held.
    hours: HashMap<u32, HashMap<ScopeKey, u64>>,
    /// Hours dropped from memory to bound it: their counters are read from the store.
    dropped: HashSet<u32>,
    /// Hours before this one hold what an earlier run of the writer stored: their counters
    /// are read from the store too.
    read_before: u32,
    /// Of the dropped hours, the latest ones' quiet scopes (see [`Sketch`]).
    sketches: HashMap<u32, Sketch>,
}

impl DayCounters {
    /// A partition that already holds messages, the last at or before instant `last`: its
    /// hours through `last`'s are read from the store, the later ones start empty. Without
    /// it a restarted writer read the store for every scope and hour of the current day, its
    /// quiet hours by counting their index chunks (~3x the writer's time a message).
    pub(super) fn holding_through(last: Option<Millis>) -> DayCounters {
        DayCounters {
            read_before: last.map_or(0, |t| t.div_euclid(MILLIS_PER_HOUR) as u32 + 1),
            ..DayCounters::default()
        }
    }
}

impl Counters {
    /// The stored value, if this knows it without a read.
    pub(super) fn get(&self, day: i64, hour: u32, key: &[u8]) -> Option<u64> {
        let d = self.days.get(&day)?;
        if hour < d.read_before || d.dropped.contains(&hour) {
            return None;
        }
        Some(
            d.hours
                .get(&hour)
                .and_then(|h| h.get(key))
                .copied()
                .unwrap_or(0),
        )
    }

    /// After a commit: the values it wrote, for the days and hours still held.
    pub(super) fn set(&mut self, day: i64, hour: u32, key: ScopeKey, value: u64) {
        if let Some(d) = self.days.get_mut(&day)
            && hour >= d.read_before
            && !d.dropped.contains(&hour)
            && d.hours
                .entry(hour)
                .or_default()
                .insert(key, value)
                .is_none()
        {
            self.len += 1;
        }
    }

    /// Whether a scope with no counter in a dropped hour certainly stays below `busy` after
    /// `new` more messages; if so, they are added to its bound.
    pub(super) fn add_if_quiet(
        &mut self,
        day: i64,
        hour: u32,
        key: &[u8],
        new: u64,
        busy: u64,
    ) -> bool {
        let Some(s) = self
            .days
            .get_mut(&day)
            .and_then(|d| d.sketches.get_mut(&hour))
        else {
            return false;
        };
        if s.bound(key).saturating_add(new) >= busy {
            return false;
        }
        s.add(key, new);
        true
    }

    /// Drops the day's hours from memory (its writes have moved on), keeping their sketches.
    pub(super) fn drop_day(&mut self, day: i64, busy: u64) {
        let hours: Vec<u32> = match self.days.get(&day) {
            Some(d) => d.hours.keys().copied().collect(),
            None => return,
        };
        for hour in hours {
            self.drop_hour(day, hour, busy);
        }
        self.bound_sketches();
    }

    /// Drops the oldest hours until at most `max` keys are held, keeping their sketches.
    pub(super) fn trim(&mut self, max: usize, busy: u64) {
        if self.len <= max {
            return;
        }
        let mut held: Vec<(i64, u32)> = self
            .days
            .iter()
            .flat_map(|(day, d)| d.hours.keys().map(move |h| (*day, *h)))
            .collect();
        held.sort_unstable();
        for (day, hour) in held {
            if self.len <= max {
                break;
            }
            self.drop_hour(day, hour, busy);
        }
        self.bound_sketches();
    }

    /// Drops one held hour: its counters are read from the store from now on, and its quiet
    /// scopes (the ones below `busy`, which have no counter) go into its sketch.
    fn drop_hour(&mut self, day: i64, hour: u32, busy: u64) {
        let d = self.days.get_mut(&day).expect("a held day");
        let held = d.hours.remove(&hour).unwrap_or_default();
        self.len -= held.len();
        d.dropped.insert(hour);
        let quiet: Vec<(&ScopeKey, u64)> = held
            .iter()
            .filter(|(_, n)| **n < busy)
            .map(|(k, n)| (k, *n))
            .collect();
        let mut sketch = Sketch::new(quiet.len());
        for (key, n) in quiet {
            sketch.add(key, n);
        }
        self.sketch_bytes += sketch.cells.len();
        if let Some(old) = d.sketches.insert(hour, sketch) {
            self.sketch_bytes -= old.cells.len();
        }
    }

    /// Forgets the oldest hours' sketches until they fit in [`SKETCH_BYTES`].
    fn bound_sketches(&mut self) {
        while self.sketch_bytes > SKETCH_BYTES {
            let oldest = self
                .days
                .iter()
                .flat_map(|(day, d)| d.sketches.keys().map(move |h| (*day, *h)))
                .min();
            let Some((day, hour)) = oldest else { break };
            let d = self.days.get_mut(&day).expect("listed above");
            let s = d.sketches.remove(&hour).expect("listed above");
            self.sketch_bytes -= s.cells.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever the scopes and counts (colliding, saturating), a sketch's bound is never
        /// below a scope's count.
        #[test]
        fn a_sketch_never_bounds_below_a_count(
            counts in proptest::collection::vec(
                (proptest::collection::vec(proptest::num::u8::ANY, 0..12), 0u64..400),
                0..300,
            ),
            width in 0usize..200,
        ) {
            let mut sketch = Sketch::new(width);
            let mut model: HashMap<Vec<u8>, u64> = HashMap::default();
            for (key, n) in &counts {
                sketch.add(key, *n);
                *model.entry(key.clone()).or_default() += n;
            }
            for (key, n) in &model {
                proptest::prop_assert!(sketch.bound(key) >= *n);
            }
        }
    }
}
