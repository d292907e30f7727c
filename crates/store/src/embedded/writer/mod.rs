//! The single writer. Ingest requests queue on a bounded channel; the writer takes every request
//! waiting (up to a cap), checks idempotency against the store, and writes messages, indexes,
//! counters, statistics rollups and sequences in one atomic fjall batch; a sync thread fsyncs
//! and only then answers them all, while the writer prepares the next group. One thread owning every write also makes read-modify-write of counters and
//! rollups race-free, so history and statistics can never disagree.

mod apply;
mod counters;
mod flush;
mod runs;
mod staging;
mod syncer;

use super::recent_ids::RecentIds;
use super::spares::Ahead;
use super::{Format, Inner, Partition, keys};
use crate::{IngestOutcome, Records, Result, StoreError};
use counters::{Counters, DayCounters};
use fjall::{Keyspace, OwnedWriteBatch, PersistMode, Slice};
use imreport_domain::Millis;
use imreport_domain::app::App;
use imreport_domain::event::{Event, check_msgids_assignable};
use imreport_domain::lifecycle::{apply_lifecycle, decode_history, encode_history};
use imreport_domain::message::{Message, encode_record, sequence_record};
use imreport_domain::rollup::{
    DayStats, Mark, MessageRollup, MsgCounts, Presence, decode_counts, encode_counts, login_mark,
};
use imreport_domain::scope::Scope;
use imreport_domain::time::{MILLIS_PER_HOUR, MILLIS_PER_MINUTE};
use runs::{ArenaRange, Position, cut_runs};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use staging::Staged;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::time::{Duration, Instant};
use syncer::{Durable, spawn_syncer};
use tokio::sync::oneshot;

/// A writer idle this long seals its memtables (see `flush_memtables`).
const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_secs(3);

/// Commits of one app and civil day per fold of its tally logs into its tallies (see
/// `Writer::stage_tallies`): a tally read adds at most this many logs less one.
pub(super) const TALLY_FOLD: usize = 16;

/// Most events folded into one commit; bounds the memory and latency of a group.
const MAX_GROUP_EVENTS: usize = 100_000;
const SEQ_KEY: &str = "seq";
const USER: u8 = b'u';
const GROUP: u8 = b'g';

pub(crate) enum Job {
    Ingest {
        app: App,
        events: Vec<Event>,
        /// Their records, when encoded ahead ([`crate::Store::prepare`]).
        records: Option<Records>,
        reply: oneshot::Sender<Result<IngestOutcome>>,
    },
    Retention {
        reply: oneshot::Sender<Result<usize>>,
    },
    /// Blocks the writer until the sender side is dropped or sent to (tests).
    #[cfg(any(test, feature = "test-util"))]
    Stall(std::sync::mpsc::Receiver<()>),
}

#[derive(Clone)]
pub(crate) struct Handle {
    tx: SyncSender<Job>,
    health: Arc<Health>,
}

/// What readiness reads of the writer, without queueing anything behind (or ahead of) ingest.
#[derive(Default)]
struct Health {
    /// Cleared when the writer thread ends.
    running: AtomicBool,
    /// Set while the last commit failed for a reason other than a full disk.
    failing: AtomicBool,
}

/// Marks the writer stopped when its thread ends, however it ends.
struct Running(Arc<Health>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Relaxed);
    }
}

impl Handle {
    pub(crate) fn spawn(inner: Arc<Inner>) -> Result<Handle> {
        let (tx, rx) = sync_channel(inner.config.queue_depth.max(1));
        let seq = inner
            .meta
            .get(SEQ_KEY)?
            .map(|v| keys::u64_value(&v))
            .unwrap_or(0);
        let (tidy, tidy_rx) = std::sync::mpsc::channel::<(i64, Partition)>();
        let acts = inner.clone();
        std::thread::Builder::new()
            .name("imreport-tidy".into())
            .spawn(move || {
                for (day, p) in tidy_rx {
                    match p.keyspaces().iter().try_for_each(merge) {
                        Ok(()) => tracing::debug!(day, "merged a quiet day partition"),
                        Err(e) => {
                            tracing::warn!(day, error = %e, "could not merge a day partition")
                        }
                    }
                    // The day's presence keyspace too: every commit rewrote the tallies of the
                    // senders and groups it touched, and compaction keeps only the last value.
                    let act = acts.acts.read().expect("lock").get(&day).cloned();
                    if let Some(act) = act
                        && let Err(e) = act.major_compact()
                    {
                        tracing::warn!(day, error = %e, "could not merge a day's presence sets");
                    }
                }
            })
            .map_err(|e| StoreError::io("cannot start the tidy thread", e))?;
        // Partitions from before this start are checked once, at the first tidy pass.
        let long_ago = Instant::now()
            .checked_sub(inner.config.tidy_after)
            .unwrap_or_else(Instant::now);
        let written = inner
            .days
            .read()
            .expect("lock")
            .keys()
            .map(|d| {
                (
                    *d,
                    Written {
                        at: long_ago,
                        found: true,
                    },
                )
            })
            .collect();
        let ahead = super::spares::spawn(inner.clone())?;
        let sync_failed = Arc::new(AtomicBool::new(false));
        let sync = spawn_syncer(inner.clone(), sync_failed.clone())?;
        let health = Arc::new(Health {
            running: AtomicBool::new(true),
            failing: AtomicBool::new(false),
        });
        let mut w = Writer {
            inner,
            health: health.clone(),
            sync,
            sync_failed,
            tidy,
            ahead,
            written,
            last_tidy: Instant::now(),
            seq,
            next_ids: HashMap::default(),
            fresh: HashMap::default(),
            present: HashMap::default(),
            tallies: HashMap::default(),
            tally_logs: HashMap::default(),
            complete: HashSet::default(),
            counters: Counters::default(),
            arena: Vec::new(),
        };
        std::thread::Builder::new()
            .name("imreport-writer".into())
            .spawn(move || {
                let _running = Running(w.health.clone());
                w.run(rx)
            })
            .map_err(|e| StoreError::io("cannot start the writer thread", e))?;
        Ok(Handle { tx, health })
    }

    /// `Ok` while the writer runs and its last commit did not fail.
    pub(crate) fn check_health(&self) -> Result<()> {
        if !self.health.running.load(Ordering::Relaxed) {
            return Err(StoreError::ShuttingDown);
        }
        if self.health.failing.load(Ordering::Relaxed) {
            return Err(StoreError::NotReady(
                "the last ingest commit failed; see the server log".into(),
            ));
        }
        Ok(())
    }

    fn send<T>(
        &self,
        job: Job,
        rx: oneshot::Receiver<Result<T>>,
    ) -> impl Future<Output = Result<T>> + use<T> {
        let sent = match self.tx.try_send(job) {
            Ok(()) => {
                metrics::gauge!("imreport_writer_queue_depth").increment(1.0);
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(StoreError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::ShuttingDown),
        };
        async move {
            sent?;
            rx.await.map_err(|_| StoreError::ShuttingDown)?
        }
    }

    pub(crate) async fn ingest(
        &self,
        app: App,
        events: Vec<Event>,
        records: Option<Records>,
    ) -> Result<IngestOutcome> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Ingest {
            app,
            events,
            records,
            reply,
        };
        self.send(job, rx).await
    }

    pub(crate) async fn retention(&self) -> Result<usize> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Retention { reply }, rx).await
    }

    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn stall(&self) -> std::sync::mpsc::Sender<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = self.tx.send(Job::Stall(rx));
        tx
    }
}

/// A day partition's last write, for `Writer::tidy`.
#[derive(Clone, Copy)]
struct Written {
    at: Instant,
    /// Found at the start and not written since: merged only if its level 0 holds more than
    /// one table (a merged day keeps one, its `TIDY` tombstone's).
    found: bool,
}

struct Writer {
    inner: Arc<Inner>,
    health: Arc<Health>,
    /// Committed groups' replies, for the thread that answers them once they are durable.
    sync: std::sync::mpsc::Sender<Durable>,
    /// Set by that thread when an fsync failed: the caches may be ahead of the disk.
    sync_failed: Arc<AtomicBool>,
    /// Day partitions to merge into one level, for the tidy thread.
    tidy: std::sync::mpsc::Sender<(i64, Partition)>,
    /// Keyspaces for the spare thread to make before they are needed.
    ahead: std::sync::mpsc::Sender<Ahead>,
    /// When each day partition was last written, until it is handed to `tidy`.
    written: HashMap<i64, Written>,
    last_tidy: Instant,
    /// Last committed sequence.
    seq: u64,
    /// Next server-assigned msgid per app (loaded on first use): above every msgid the app
    /// ever stored, so a message at or above it needs no duplicate lookup.
    next_ids: HashMap<u32, u64>,
    /// Per app, the msgids stored since its watermark was loaded (see `recent_ids`).
    fresh: HashMap<u32, RecentIds>,
    /// Presence-set keys known to be stored, for the latest few civil days: most messages come
    /// from someone already active that day, and this saves a store lookup for each.
    present: HashMap<i64, HashSet<PresenceKey>>,
    /// Civil days whose presence set this writer created, so `present` holds all of it and a
    /// key missing there is missing from the store too: no lookup needed.
    complete: HashSet<i64>,
    /// The stored tallies (see [`keys::tally_key_into`]) of the days in `present`: a commit adds
    /// its deltas to these without a read; a complete day's missing tally is zero.
    tallies: HashMap<i64, HashMap<PresenceKey, u64>>,
    /// Tally logs this writer wrote since it last folded them, by civil day and app.
    tally_logs: HashMap<(i64, u32), usize>,
    counters: Counters,
    /// The last commit's record arena (see `Group::arena`), emptied.
    arena: Vec<u8>,
}

/// Largest record arena kept from one commit for the next.
const ARENA_KEPT: usize = 16 << 20;

/// A presence key (`app | kind | id`), held inline up to 24 bytes (ids up to 19): the sets hold
/// every user and group active on each recent day, and a lookup that had to follow a pointer
/// to the key's bytes missed the cache on nearly every hit (a seventh of the writer's time).
type PresenceKey = smallvec::SmallVec<[u8; 24]>;

/// A scope's index or counter key prefix (`tag | app | scope | len | id`, ids up to 25 bytes
/// inline), or a counter key: keys of the per-commit and cached per-hour maps, compared in place
/// (with `Vec` keys each lookup followed a pointer to the key's bytes).
type ScopeKey = smallvec::SmallVec<[u8; 32]>;

/// Civil days of presence keys kept in memory, counting back from the newest.
const PRESENT_DAYS: i64 = 2;

/// A batch: its app, events and their records if encoded ahead.
type Batch = (App, Vec<Event>, Option<Records>);
type IngestJob = (Batch, oneshot::Sender<Result<IngestOutcome>>);

/// What [`Writer::stage_tallies`] staged: tallies written (day, key, value), and the logs
/// written and folded (day, app).
#[derive(Default)]
struct StagedTallies {
    values: Vec<(i64, PresenceKey, u64)>,
    logged: Vec<(i64, u32)>,
    folded: Vec<(i64, u32)>,
}

/// Everything one commit group changes, gathered before it is written.
struct Group {
    horizon: i64,
    stats_horizon: i64,
    seq: u64,
    batch: OwnedWriteBatch,
    /// The high-volume writes (messages, indexes, counters, duplicate index, presence), per
    /// keyspace; sorted before they join `batch` (see `Staged`).
    staged: Staged,
    seen: HashSet<(u32, u64)>,
    counters: HashMap<(i64, Vec<u8>), u64>,
    /// The partitions written, and their formats.
    partitions: HashMap<i64, (Partition, Format)>,
    /// The records for partitions that keep them in runs, by partition day and app: each
    /// message's position and where its encoded record lies in `arena`; cut into runs at
    /// `flush`.
    records: HashMap<(i64, u32), Vec<(Position, ArenaRange)>>,
    arena: Vec<u8>,
    /// The positions of each scope's messages, by partition day, hour and scope index prefix
    /// (`scope_prefix(IDX, ..)`): one index chunk each at `flush` (and, in partitions from
    /// before [`Format::SparseCounters`], one counter delta).
    scopes: HashMap<(i64, u32), HashMap<ScopeKey, Vec<Position>>>,
    /// The msgids stored, as `(day, mask)` pairs by duplicate-index block key.
    id_blocks: HashMap<[u8; 12], Vec<(i64, u64)>>,
    entities: HashMap<Vec<u8>, Vec<(Millis, u8)>>,
    next_ids: HashMap<u32, u64>,
    days: HashMap<(u32, i64), DayStats>,
    hours: HashMap<(u32, i64), MsgCounts>,
    totals: HashMap<u32, (i64, i64)>,
    /// Presence keys this group found or added, by civil day.
    presence: HashMap<i64, HashSet<PresenceKey>>,
    /// Messages this group adds to each tally, by civil day and tally key.
    tallies: HashMap<i64, HashMap<PresenceKey, u64>>,
    /// The tally keys in the stored tally logs of an app's civil day (`(day, app)`), read when
    /// a presence check of a day not held in memory first needs them (see `Writer::mark`).
    logged: HashMap<(i64, u32), HashSet<PresenceKey>>,
    /// Messages per app and hour (`(day, app, hour)`) and per app and minute, in partitions
    /// keeping minute counters: counter deltas, keyed at `flush`.
    app_hours: HashMap<(i64, u32, u32), u64>,
    app_minutes: HashMap<(i64, u32, u32), u64>,
    /// Scratch space for a key being looked up.
    key: Vec<u8>,
    rec: Vec<u8>,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Job>) {
        let mut carry: Option<Job> = None;
        let mut dirty = false;
        loop {
            self.tidy();
            let job = match carry.take() {
                Some(j) => j,
                None => match rx.recv_timeout(IDLE_FLUSH) {
                    Ok(j) => {
                        metrics::gauge!("imreport_writer_queue_depth").decrement(1.0);
                        j
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if std::mem::take(&mut dirty) {
                            self.flush_memtables();
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            dirty |= matches!(job, Job::Ingest { .. });
            match job {
                Job::Retention { reply } => {
                    let _ = reply.send(self.retention());
                    self.forget();
                }
                #[cfg(any(test, feature = "test-util"))]
                Job::Stall(until) => {
                    let _ = until.recv();
                }
                Job::Ingest {
                    app,
                    events,
                    records,
                    reply,
                } => {
                    let mut size = events.len();
                    let mut group: Vec<IngestJob> = vec![((app, events, records), reply)];
                    while size < MAX_GROUP_EVENTS {
                        let next = rx.try_recv();
                        if next.is_ok() {
                            metrics::gauge!("imreport_writer_queue_depth").decrement(1.0);
                        }
                        match next {
                            Ok(Job::Ingest {
                                app,
                                events,
                                records,
                                reply,
                            }) => {
                                size += events.len();
                                group.push(((app, events, records), reply));
                            }
                            Ok(other) => {
                                carry = Some(other);
                                break;
                            }
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                    self.commit_group(group);
                }
            }
        }
    }

    /// Hands the day partitions unwritten for `tidy_after` to the tidy thread (checked at most
    /// once per `tidy_after`; each day once per spell of writes). Day partitions let 16 tables
    /// gather in level 0 before merging (cheap writes), and a point read checks every one of
    /// them; once a day goes quiet (live traffic moves on to the next day, or a bulk load ends)
    /// one merge makes its reads cheap for good, and compresses what its flushes left
    /// uncompressed (see `day_options`). A day found at the start is merged only if more than
    /// one table is in its level 0: merging every day at each start would rewrite the store.
    fn tidy(&mut self) {
        let quiet_for = self.inner.config.tidy_after;
        if self.last_tidy.elapsed() < quiet_for {
            return;
        }
        self.last_tidy = Instant::now();
        let mut quiet: Vec<(i64, bool)> = self
            .written
            .iter()
            .filter(|(_, w)| w.at.elapsed() >= quiet_for)
            .map(|(d, w)| (*d, w.found))
            .collect();
        // Newest first: recent days are the ones read most.
        quiet.sort_unstable_by_key(|(day, _)| std::cmp::Reverse(*day));
        for (day, found) in quiet {
            self.written.remove(&day);
            // Its writes have moved on; late ones can afford a read (or none, if its sketch
            // says the scope stays quiet).
            self.counters.drop_day(day, self.inner.config.busy_hour);
            if let Some(p) = self.inner.day(day)
                && (!found || p.keyspaces().iter().any(|ks| ks.l0_table_count() > 1))
            {
                let _ = self.tidy.send((day, p));
            }
        }
    }

    /// After a quiet spell, seals every memtable so that it is flushed to a compressed table
    /// and the journal behind it can go: disk use settles at the tables' size, and a restart
    /// has little journal to replay.
    fn flush_memtables(&self) {
        let inner = &self.inner;
        let mut all = vec![
            inner.meta.clone(),
            inner.ids.clone(),
            inner.id_blocks.clone(),
            inner.entities.clone(),
            inner.stats.clone(),
        ];
        all.extend(
            inner
                .days
                .read()
                .expect("lock")
                .values()
                .flat_map(Partition::keyspaces),
        );
        all.extend(inner.acts.read().expect("lock").values().cloned());
        for ks in all {
            if let Err(e) = ks.rotate_memtable() {
                tracing::warn!(error = %e, "could not seal a memtable");
            }
        }
    }

    /// Drops whole partitions (messages, indexes, counters; presence sets) before the window,
    /// and the few rollup rows of the days before it. The all-time totals stay.
    fn retention(&self) -> Result<usize> {
        let inner = &self.inner;
        let now = inner.config.clock.now_ms();
        let (horizon, stats_horizon) = (inner.horizon_day(now), inner.stats_horizon_day(now));
        fn split<T>(
            map: &std::sync::RwLock<std::collections::BTreeMap<i64, T>>,
            at: i64,
        ) -> Vec<T> {
            let mut m = map.write().expect("lock");
            let keep = m.split_off(&at);
            std::mem::replace(&mut *m, keep).into_values().collect()
        }
        inner
            .ids_horizon
            .fetch_max(horizon, std::sync::atomic::Ordering::Relaxed);
        let old_days = split(&inner.days, horizon);
        let old_acts = split(&inner.acts, stats_horizon);
        inner.drop_spares(horizon, stats_horizon)?;
        let dropped = old_days.len();
        let old_days = old_days.iter().flat_map(Partition::keyspaces);
        for ks in old_days.chain(old_acts) {
            inner.db.delete_keyspace(ks)?;
        }
        let mut batch = inner.db.batch();
        for app in inner.app_ids() {
            for (kind, upto) in [
                (keys::STAT_DAY, stats_horizon),
                (keys::STAT_HOUR, stats_horizon * 24),
            ] {
                let lo = keys::stat_key(app, kind, i64::MIN);
                let hi = keys::stat_key(app, kind, upto);
                for kv in inner.stats.range(lo..hi) {
                    batch.remove(&inner.stats, kv.key()?);
                }
            }
        }
        if !batch.is_empty() {
            batch.commit()?;
            inner.db.persist(PersistMode::SyncAll)?;
        }
        if dropped > 0 {
            tracing::info!(
                dropped_days = dropped,
                horizon_day = horizon,
                "retention dropped old day partitions"
            );
        }
        Ok(dropped)
    }

    fn commit_group(&mut self, group: Vec<IngestJob>) {
        let (jobs, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        if self.sync_failed.swap(false, Ordering::Relaxed) {
            self.forget();
        }
        let started = std::time::Instant::now();
        let mut spent = Vec::with_capacity(jobs.len());
        let written = self.write(jobs, &mut spent);
        metrics::histogram!("imreport_writer_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        self.health.failing.store(
            matches!(&written, Err(e) if !matches!(e, StoreError::DiskFull(_))),
            Ordering::Relaxed,
        );
        match written {
            Ok(outcomes) => {
                let mut durable = Vec::with_capacity(outcomes.len());
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    match outcome {
                        Ok(o) => durable.push((reply, o)),
                        // Refused before any of it was staged: nothing to wait for.
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                let durable = Durable {
                    replies: durable,
                    spent,
                };
                if let Err(std::sync::mpsc::SendError(durable)) = self.sync.send(durable) {
                    for (reply, _) in durable.replies {
                        let _ = reply.send(Err(StoreError::ShuttingDown));
                    }
                }
            }
            Err(StoreError::DiskFull(why)) => {
                tracing::warn!(%why, "ingest refused: disk full");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::DiskFull(why.clone())));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "ingest commit failed; nothing of the group was stored");
                // What is cached may be ahead of what is on disk: forget it.
                self.forget();
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Drops every cache of what is stored, after a failed commit (the caches may be ahead of
    /// the disk) or a retention pass (they may hold dropped days).
    fn forget(&mut self) {
        self.next_ids.clear();
        self.fresh.clear();
        self.present.clear();
        self.complete.clear();
        self.tallies.clear();
        self.tally_logs.clear();
        self.counters = Counters::default();
    }

    fn next_id(&mut self, g: &Group, app: u32) -> Result<u64> {
        if let Some(n) = g.next_ids.get(&app).or_else(|| self.next_ids.get(&app)) {
            return Ok(*n);
        }
        let n = self
            .inner
            .meta
            .get(next_id_key(app))?
            .map(|v| keys::u64_value(&v))
            .unwrap_or(1);
        self.next_ids.insert(app, n);
        self.fresh.insert(app, RecentIds::new(n));
        Ok(n)
    }

    /// Stages and commits a group of requests; each gets its outcome, or its refusal when it
    /// cannot be stored as sent (the others commit all the same).
    /// Commits the jobs' events as one group; the events go to `spent`, to be freed off the
    /// writer.
    fn write(
        &mut self,
        jobs: Vec<Batch>,
        spent: &mut Vec<(Vec<Event>, Option<Records>)>,
    ) -> Result<Vec<Result<IngestOutcome>>> {
        let inner = self.inner.clone();
        inner.check_free_space()?;
        let now = inner.config.clock.now_ms();
        let mut g = Group {
            horizon: inner.horizon_day(now),
            stats_horizon: inner.stats_horizon_day(now),
            seq: self.seq + 1,
            batch: inner.db.batch(),
            staged: Staged::default(),
            seen: HashSet::default(),
            counters: HashMap::default(),
            partitions: HashMap::default(),
            records: HashMap::default(),
            arena: std::mem::take(&mut self.arena),
            scopes: HashMap::default(),
            id_blocks: HashMap::default(),
            entities: HashMap::default(),
            next_ids: HashMap::default(),
            days: HashMap::default(),
            hours: HashMap::default(),
            totals: HashMap::default(),
            presence: HashMap::default(),
            tallies: HashMap::default(),
            logged: HashMap::default(),
            app_hours: HashMap::default(),
            app_minutes: HashMap::default(),
            key: Vec::with_capacity(64),
            rec: Vec::with_capacity(512),
        };
        let mut outcomes = Vec::with_capacity(jobs.len());
        for (app, mut events, records) in jobs {
            let next = self.next_id(&g, app.id)?;
            let kept = events.iter().filter_map(|ev| match ev {
                Event::Message(m) if inner.pday(m.msg_ctime) >= g.horizon => Some(m),
                _ => None,
            });
            if let Err(e) = check_msgids_assignable(next, kept) {
                outcomes.push(Err(StoreError::Invalid(e)));
                spent.push((events, records));
                continue;
            }
            let mut out = IngestOutcome::default();
            for (i, ev) in events.iter_mut().enumerate() {
                let changed = match ev {
                    Event::Message(m) => {
                        let ahead = records.as_ref().map(|r| {
                            let (start, end) = r.ranges[i];
                            &r.arena[start..end]
                        });
                        self.message(&mut g, &app, m, ahead)?
                    }
                    Event::UserLogin { username, time } => {
                        if inner.pday(*time) < g.horizon {
                            None
                        } else {
                            let mark = login_mark(username, *time, &inner.config.tz);
                            Some(self.mark(&mut g, app.id, mark)?)
                        }
                    }
                    _ => {
                        let l = ev
                            .lifecycle()
                            .expect("every other event is a lifecycle event");
                        let kind = if l.user { USER } else { GROUP };
                        self.lifecycle(&mut g, app.id, kind, l.id, l.what, l.time)?
                    }
                };
                match changed {
                    None => out.expired += 1,
                    Some(true) => out.accepted += 1,
                    Some(false) => out.duplicates += 1,
                }
            }
            outcomes.push(Ok(out));
            spent.push((events, records));
        }
        self.flush(g)?;
        Ok(outcomes)
    }
}

/// Merges a day partition into one level and frees the tables it replaced. Its memtables are
/// flushed first, those the writer sealed when it went idle included (fjall's
/// `rotate_memtable_and_wait` waits only when it seals one itself): a flush landing after the
/// merge would stay in level 0, uncompressed. fjall deletes the replaced tables at the
/// partition's next flush or compaction after the merge, which a quiet partition would not
/// have: a tombstone for a key no reader asks for, flushed, is that next flush.
fn merge(ks: &Keyspace) -> fjall::Result<()> {
    ks.rotate_memtable()?;
    while ks.sealed_memtable_count() > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    ks.major_compact()?;
    ks.remove(keys::TIDY)?;
    ks.rotate_memtable_and_wait()
}

pub(crate) fn decode_totals(v: &[u8]) -> (i64, i64) {
    let get = |r: std::ops::Range<usize>| {
        v.get(r)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_be_bytes)
            .unwrap_or(0)
    };
    (get(0..8), get(8..16))
}

fn next_id_key(app: u32) -> String {
    format!("nextid/{app}")
}
