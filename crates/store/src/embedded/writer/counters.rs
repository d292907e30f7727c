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
}

#[derive(Default)]
pub(super) struct DayCounters {
    /// Every counter the day has for each hour held.
    hours: HashMap<u32, HashMap<ScopeKey, u64>>,
    /// Hours dropped from memory to bound it: their counters are read from the store.
    dropped: HashSet<u32>,
    /// Hours before this one hold what an earlier run of the writer (or this one, before it
    /// forgot the day) stored: their counters are read from the store too.
    read_before: u32,
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

    /// Forgets the day: its counters are read from the store from now on.
    pub(super) fn drop_day(&mut self, day: i64) {
        if let Some(d) = self.days.remove(&day) {
            self.len -= d.hours.values().map(HashMap::len).sum::<usize>();
        }
    }

    /// Drops the oldest hours until at most `max` keys are held.
    pub(super) fn trim(&mut self, max: usize) {
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
            let d = self.days.get_mut(&day).expect("listed above");
            self.len -= d.hours.remove(&hour).map_or(0, |h| h.len());
            d.dropped.insert(hour);
        }
    }
}
