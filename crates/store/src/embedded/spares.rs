//! Keyspaces made before the writer needs them. A new day takes three (its partition's index
//! and records, its presence sets), and creating one costs 4-24 ms of fsyncs (fjall writes and
//! syncs its version files and directory): on the writer, the whole app's ingest stalls for it,
//! ~0.22 s per 1M-message load spread over 7 days (bench/LIMITS.md, session 24), and ~50 ms at
//! every midnight of live traffic. So when the writer creates a day's keyspaces, a thread of its
//! own makes the next day's, which the writer then takes ready.
//!
//! A spare is empty and invisible to readers (not in `days`/`acts`) until the writer takes it;
//! one spare lock serializes making, taking and dropping them, and the writer publishes a day
//! under it, so a keyspace is never made twice nor both spare and published. A spare left at
//! shutdown is an empty keyspace on disk, which the next open makes a spare again; retention
//! deletes spares before the window like any day.

use super::{Format, Inner, Partition, day_options, keys, ks_options, records_options};
use crate::Result;
use fjall::Keyspace;
use std::collections::BTreeMap;

#[derive(Default)]
pub(crate) struct Spares {
    pub(crate) days: BTreeMap<i64, Partition>,
    pub(crate) acts: BTreeMap<i64, Keyspace>,
}

/// A keyspace to make ahead: a partition day's, or a civil day's presence sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ahead {
    Day(i64),
    Act(i64),
}

impl Spares {
    /// Sorts what an open found: empty keyspaces are spares, or deleted when their partition's
    /// format is not the configured one (the writer would otherwise fill it in the old format).
    pub(crate) fn sort_found(
        db: &fjall::Database,
        days: &mut BTreeMap<i64, Partition>,
        formats: &mut std::collections::HashMap<i64, Format>,
        acts: &mut BTreeMap<i64, Keyspace>,
        format: Format,
    ) -> Result<Spares> {
        let mut spares = Spares::default();
        for (day, p) in std::mem::take(days) {
            if !empty(&p)? {
                days.insert(day, p);
            } else if formats.remove(&day) == Some(format) {
                spares.days.insert(day, p);
            } else {
                for ks in p.keyspaces() {
                    db.delete_keyspace(ks)?;
                }
            }
        }
        for (day, ks) in std::mem::take(acts) {
            if ks.first_key_value().is_none() {
                spares.acts.insert(day, ks);
            } else {
                acts.insert(day, ks);
            }
        }
        Ok(spares)
    }
}

/// Whether a partition holds nothing but its format markers.
fn empty(p: &Partition) -> Result<bool> {
    for ks in p.keyspaces() {
        for kv in ks.iter() {
            let key = kv.key()?;
            if !Format::MARKERS.iter().any(|(_, m)| *m == &*key) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

impl Inner {
    /// A new partition in the configured format (markers written), published nowhere.
    fn new_partition(&self, day: i64) -> Result<Partition> {
        let ks = self.db.keyspace(&keys::day_name(day), day_options)?;
        let format = self.config.partition_format;
        // A crash before the markers are written leaves a records keyspace that no partition
        // claims: the next open deletes it.
        let records = if format >= Format::RecordKeyspace {
            self.db
                .keyspace(&keys::records_name(day), records_options)?
        } else {
            ks.clone()
        };
        for (f, marker) in Format::MARKERS {
            if f <= format {
                ks.insert(marker, b"")?;
            }
        }
        Ok(Partition { ks, records })
    }

    /// The day's partition, made (or taken from the spares) if it has none. The writer's.
    pub(crate) fn day_or_create(&self, day: i64) -> Result<Partition> {
        if let Some(p) = self.day(day) {
            return Ok(p);
        }
        let mut spares = self.spares.lock().expect("lock");
        let p = match spares.days.remove(&day) {
            Some(p) => p,
            None => {
                tracing::debug!(day, "no spare partition: making it on the writer");
                self.new_partition(day)?
            }
        };
        let format = self.config.partition_format;
        self.formats.write().expect("lock").insert(day, format);
        self.days.write().expect("lock").insert(day, p.clone());
        Ok(p)
    }

    /// The day's presence sets, made (or taken from the spares) if it has none. The writer's.
    pub(crate) fn act(&self, day: i64) -> Result<Keyspace> {
        if let Some(ks) = self.acts.read().expect("lock").get(&day) {
            return Ok(ks.clone());
        }
        let mut spares = self.spares.lock().expect("lock");
        let ks = match spares.acts.remove(&day) {
            Some(ks) => ks,
            None => {
                tracing::debug!(day, "no spare presence sets: making them on the writer");
                self.new_act(day)?
            }
        };
        self.acts.write().expect("lock").insert(day, ks.clone());
        Ok(ks)
    }

    /// A new presence-set keyspace, published nowhere.
    fn new_act(&self, day: i64) -> Result<Keyspace> {
        Ok(self.db.keyspace(&keys::act_name(day), ks_options)?)
    }

    /// Whether a spare is worth making: up to tomorrow in the server's clock (data from further
    /// ahead is refused or rare, and a spare for it would sit unused).
    fn wanted(&self, ahead: Ahead) -> bool {
        let now = self.config.clock.now_ms();
        match ahead {
            Ahead::Day(day) => day <= self.pday(now) + 1,
            Ahead::Act(day) => day <= self.window.tz.civil_day(now) + 1,
        }
    }

    /// Makes a spare if it is wanted and the day has no keyspace yet.
    fn make_spare(&self, ahead: Ahead) -> Result<()> {
        if !self.wanted(ahead) {
            return Ok(());
        }
        let mut spares = self.spares.lock().expect("lock");
        match ahead {
            Ahead::Day(day) => {
                if self.day(day).is_none() && !spares.days.contains_key(&day) {
                    let p = self.new_partition(day)?;
                    spares.days.insert(day, p);
                    tracing::debug!(day, "made a spare partition");
                }
            }
            Ahead::Act(day) => {
                if !self.acts.read().expect("lock").contains_key(&day)
                    && !spares.acts.contains_key(&day)
                {
                    let ks = self.new_act(day)?;
                    spares.acts.insert(day, ks);
                    tracing::debug!(day, "made spare presence sets");
                }
            }
        }
        Ok(())
    }

    /// Deletes the spares before the window (retention's horizons); a spare counts as no day.
    pub(crate) fn drop_spares(&self, horizon: i64, stats_horizon: i64) -> Result<()> {
        let mut spares = self.spares.lock().expect("lock");
        let keep = spares.days.split_off(&horizon);
        for p in std::mem::replace(&mut spares.days, keep).into_values() {
            for ks in p.keyspaces() {
                self.db.delete_keyspace(ks)?;
            }
        }
        let keep = spares.acts.split_off(&stats_horizon);
        for ks in std::mem::replace(&mut spares.acts, keep).into_values() {
            self.db.delete_keyspace(ks)?;
        }
        Ok(())
    }

    /// The days holding spares, for tests.
    #[cfg(test)]
    pub(crate) fn spare_days(&self) -> (Vec<i64>, Vec<i64>) {
        let s = self.spares.lock().expect("lock");
        (
            s.days.keys().copied().collect(),
            s.acts.keys().copied().collect(),
        )
    }
}

/// Starts the thread that makes the spares the writer asks for (the day after each day it
/// first writes). Its failures only cost the writer the time to make the keyspace itself.
pub(crate) fn spawn(inner: std::sync::Arc<Inner>) -> Result<std::sync::mpsc::Sender<Ahead>> {
    let (tx, rx) = std::sync::mpsc::channel::<Ahead>();
    // A store already written today (live traffic) gets tomorrow's keyspaces ready now.
    let now = inner.config.clock.now_ms();
    let (day, civil) = (inner.pday(now), inner.window.tz.civil_day(now));
    if inner.day(day).is_some() {
        let _ = tx.send(Ahead::Day(day + 1));
    }
    if inner.acts.read().expect("lock").contains_key(&civil) {
        let _ = tx.send(Ahead::Act(civil + 1));
    }
    std::thread::Builder::new()
        .name("imreport-spare".into())
        .spawn(move || {
            for ahead in rx {
                if let Err(e) = inner.make_spare(ahead) {
                    tracing::warn!(?ahead, error = %e, "could not make a keyspace ahead of need");
                }
            }
        })
        .map_err(|e| crate::StoreError::io("cannot start the spare-keyspace thread", e))?;
    Ok(tx)
}
