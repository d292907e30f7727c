//! Range reads of the statistics rows that skip what makes them slow while ingest runs.
//!
//! Every commit rewrites the day and hour rows it adds to (and the all-time totals), and each
//! rewrite is a new version of the key in the keyspace's memtable until fjall flushes it (8 MiB:
//! thousands of commits). A point lookup goes straight to a key's newest version; a range scan
//! steps over every version of every key it passes. So a statistics read over the day being
//! written cost ~1 ms per few thousand commits, during ingest, instead of microseconds. The
//! writer notes the rows it rewrote last ([`HotRows::touch`]); readers scan the stretches between
//! those and look the noted ones up ([`HotRows::range`]). Which rows are noted decides only the
//! speed: the stretches and lookups together cover the whole range whatever the list holds.

use fjall::{Keyspace, Readable, Snapshot, UserKey, UserValue};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

/// A statistics row's key (see `keys::stat_key`).
pub(crate) type RowKey = [u8; 13];

/// How many rows are remembered: a commit group touches a few days and hours of each app it
/// writes; the least recently rewritten are forgotten first.
const KEPT: usize = 512;

/// The rows the writer rewrote most recently, each with the commit that last did.
#[derive(Default)]
pub(crate) struct HotRows(Mutex<BTreeMap<RowKey, u64>>);

impl HotRows {
    /// Notes the rows commit `seq` rewrites.
    pub(crate) fn touch(&self, seq: u64, rows: impl IntoIterator<Item = RowKey>) {
        let mut hot = self.0.lock().expect("lock");
        for k in rows {
            hot.insert(k, seq);
        }
        if hot.len() > KEPT {
            // Rare (more distinct rows than KEPT since the last trim): keep the newest half.
            let mut stamps: Vec<u64> = hot.values().copied().collect();
            let (_, cut, _) = stamps.select_nth_unstable(KEPT / 2);
            let cut = *cut;
            hot.retain(|_, s| *s > cut);
        }
    }

    /// The rows of `ks` in `lo..=hi` as of `snap`, in key order.
    pub(crate) fn range(
        &self,
        snap: &Snapshot,
        ks: &Keyspace,
        lo: RowKey,
        hi: RowKey,
    ) -> fjall::Result<Vec<(UserKey, UserValue)>> {
        if lo > hi {
            return Ok(Vec::new());
        }
        let hot: Vec<RowKey> = self
            .0
            .lock()
            .expect("lock")
            .range(lo..=hi)
            .map(|(k, _)| *k)
            .collect();
        let mut rows = Vec::new();
        let scan = |from: Bound<RowKey>, to: Bound<RowKey>, rows: &mut Vec<_>| {
            for kv in snap.range(ks, (from, to)) {
                rows.push(kv.into_inner()?);
            }
            fjall::Result::Ok(())
        };
        let mut from = Bound::Included(lo);
        for k in hot {
            scan(from, Bound::Excluded(k), &mut rows)?;
            if let Some(v) = snap.get(ks, k)? {
                rows.push((UserKey::from(&k[..]), v));
            }
            from = Bound::Excluded(k);
        }
        scan(from, Bound::Included(hi), &mut rows)?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    fn key(app: u8, day: u8) -> RowKey {
        let mut k = [0u8; 13];
        k[3] = app;
        k[4] = b'D';
        k[12] = day;
        k
    }

    /// Whatever rows are noted as hot, a read returns exactly what a plain range scan returns,
    /// including rows rewritten many times, deleted rows, and noted rows that were never written.
    #[test]
    fn reads_equal_a_plain_scan_whatever_rows_are_noted() {
        let dir = tempfile::tempdir().unwrap();
        let db = fjall::Database::builder(dir.path()).open().unwrap();
        let case = std::sync::atomic::AtomicUsize::new(0);
        let writes = proptest::collection::vec((0u8..3, 0u8..12, 0u8..4, any::<bool>()), 0..80);
        let noted = proptest::collection::vec((0u8..3, 0u8..12), 0..10);
        let bounds = (0u8..3, 0u8..12, 0u8..3, 0u8..12);
        TestRunner::new(Config::with_cases(64))
            .run(
                &(writes, noted, bounds),
                |(writes, noted, (a0, d0, a1, d1))| {
                    let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let ks = db.keyspace(&format!("case{n}"), Default::default).unwrap();
                    for (app, day, v, delete) in writes {
                        if delete {
                            ks.remove(key(app, day)).unwrap();
                        } else {
                            ks.insert(key(app, day), [v]).unwrap();
                        }
                    }
                    let hot = HotRows::default();
                    hot.touch(1, noted.into_iter().map(|(a, d)| key(a, d)));
                    let (lo, hi) = (key(a0, d0), key(a1, d1));
                    let snap = db.snapshot();
                    let plain: Vec<_> = snap
                        .range(&ks, lo..=hi)
                        .map(|kv| kv.into_inner().unwrap())
                        .collect();
                    prop_assert_eq!(hot.range(&snap, &ks, lo, hi).unwrap(), plain);
                    Ok(())
                },
            )
            .unwrap();
    }

    /// The list stays bounded, and trimming it forgets the rows rewritten longest ago.
    #[test]
    fn the_list_keeps_the_rows_rewritten_last() {
        let hot = HotRows::default();
        for seq in 0..(KEPT as u64 * 3) {
            let k = seq.to_be_bytes();
            let mut row = [0u8; 13];
            row[5..].copy_from_slice(&k);
            hot.touch(seq, [row]);
            assert!(hot.0.lock().unwrap().len() <= KEPT);
        }
        let kept = hot.0.lock().unwrap();
        let newest = KEPT as u64 * 3 - 1;
        assert!(kept.values().any(|&s| s == newest));
        assert!(kept.values().all(|&s| s > newest - KEPT as u64));
    }
}
