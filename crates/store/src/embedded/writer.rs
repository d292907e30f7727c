//! The single writer. Ingest requests queue on a bounded channel; the writer takes every request
//! waiting (up to a cap), checks idempotency against the store, and writes messages, indexes,
//! counters, statistics rollups and sequences in one atomic fjall batch; a sync thread fsyncs
//! and only then answers them all, while the writer prepares the next group. One thread owning every write also makes read-modify-write of counters and
//! rollups race-free, so history and statistics can never disagree.

use super::fresh::Fresh;
use super::{Format, Inner, keys};
use crate::{IngestOutcome, Result, StoreError};
use fjall::{Keyspace, OwnedWriteBatch, PersistMode, Slice};
use imreport_domain::Millis;
use imreport_domain::app::App;
use imreport_domain::event::{Event, check_msgids_assignable};
use imreport_domain::lifecycle::{apply_lifecycle, decode_history, encode_history};
use imreport_domain::message::{Message, encode_record};
use imreport_domain::rollup::{
    DayStats, Mark, MessageRollup, MsgCounts, decode_counts, encode_counts, login_mark,
};
use imreport_domain::scope::Scope;
use imreport_domain::time::{MILLIS_PER_HOUR, MILLIS_PER_MINUTE};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::time::Instant;
use tokio::sync::oneshot;

/// A writer idle this long seals its memtables (see `flush_memtables`).
const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_secs(3);

/// Most events folded into one commit; bounds the memory and latency of a group.
const MAX_GROUP_EVENTS: usize = 100_000;
const SEQ_KEY: &str = "seq";
const USER: u8 = b'u';
const GROUP: u8 = b'g';

pub(crate) enum Job {
    Ingest {
        app: App,
        events: Vec<Event>,
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
        let (tidy, tidy_rx) = std::sync::mpsc::channel::<(i64, Keyspace)>();
        std::thread::Builder::new()
            .name("imreport-tidy".into())
            .spawn(move || {
                for (day, ks) in tidy_rx {
                    match merge(&ks) {
                        Ok(()) => tracing::debug!(day, "merged a quiet day partition"),
                        Err(e) => {
                            tracing::warn!(day, error = %e, "could not merge a day partition")
                        }
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
            .map(|d| (*d, long_ago))
            .collect();
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
            written,
            last_tidy: Instant::now(),
            seq,
            next_ids: HashMap::default(),
            fresh: HashMap::default(),
            present: HashMap::default(),
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
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(StoreError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::ShuttingDown),
        };
        async move {
            sent?;
            rx.await.map_err(|_| StoreError::ShuttingDown)?
        }
    }

    pub(crate) async fn ingest(&self, app: App, events: Vec<Event>) -> Result<IngestOutcome> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Ingest { app, events, reply }, rx).await
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

struct Writer {
    inner: Arc<Inner>,
    health: Arc<Health>,
    /// Committed groups' replies, for the thread that answers them once they are durable.
    sync: std::sync::mpsc::Sender<Durable>,
    /// Set by that thread when an fsync failed: the caches may be ahead of the disk.
    sync_failed: Arc<AtomicBool>,
    /// Day partitions to merge into one level, for the tidy thread.
    tidy: std::sync::mpsc::Sender<(i64, Keyspace)>,
    /// When each day partition was last written, until it is handed to `tidy`.
    written: HashMap<i64, Instant>,
    last_tidy: Instant,
    /// Last committed sequence.
    seq: u64,
    /// Next server-assigned msgid per app (loaded on first use): above every msgid the app
    /// ever stored, so a message at or above it needs no duplicate lookup.
    next_ids: HashMap<u32, u64>,
    /// Per app, the msgids stored since its watermark was loaded (see `fresh`).
    fresh: HashMap<u32, Fresh>,
    /// Presence-set keys known to be stored, for the latest few civil days: most messages come
    /// from someone already active that day, and this saves a store lookup for each.
    present: HashMap<i64, HashSet<PresenceKey>>,
    /// Civil days whose presence set this writer created, so `present` holds all of it and a
    /// key missing there is missing from the store too: no lookup needed.
    complete: HashSet<i64>,
    counters: Counters,
    /// The last commit's record arena (see `Group::arena`), emptied.
    arena: Vec<u8>,
}

/// Largest record arena kept from one commit for the next.
const ARENA_KEPT: usize = 16 << 20;

/// Per-hour scope counts of the day partitions this writer created, in memory for the latest
/// hours: counter values by key, and in [`Format::SparseCounters`] partitions every scope's
/// count for the hour by counter prefix (whether or not the hour has a counter yet). Such a
/// partition holds only what this writer wrote, so a count missing here is zero and a commit
/// adds to it without reading the store (those reads, one per scope and hour a commit touched,
/// were a tenth of the writer's time and most of its block-cache traffic).
#[derive(Default)]
struct Counters {
    days: HashMap<i64, DayCounters>,
    /// Keys held, over all days.
    len: usize,
}

#[derive(Default)]
struct DayCounters {
    /// Every counter the day has for each hour held.
    hours: HashMap<u32, HashMap<ScopeKey, u64>>,
    /// Hours dropped from memory to bound it: their counters are read from the store.
    dropped: HashSet<u32>,
}

impl Counters {
    /// The stored value, if this knows it without a read.
    fn get(&self, day: i64, hour: u32, key: &[u8]) -> Option<u64> {
        let d = self.days.get(&day)?;
        if d.dropped.contains(&hour) {
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
    fn set(&mut self, day: i64, hour: u32, key: ScopeKey, value: u64) {
        if let Some(d) = self.days.get_mut(&day)
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
    fn drop_day(&mut self, day: i64) {
        if let Some(d) = self.days.remove(&day) {
            self.len -= d.hours.values().map(HashMap::len).sum::<usize>();
        }
    }

    /// Drops the oldest hours until at most `max` keys are held.
    fn trim(&mut self, max: usize) {
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

/// A message's place in its scope's order: `(msg_ctime, msgid)`.
type Position = (Millis, u64);

/// Where an encoded record lies in a commit's arena: start and end offsets (a group's arena
/// can pass 4 GiB: up to `queue_depth` requests of up to `max_body_bytes`).
type ArenaRange = (usize, usize);

/// A commit's sorted records cut into runs: at [`keys::RUN_MAX`] records, before a record
/// lying [`keys::RUN_SPAN`] or more after its run's first, and before a record that would take
/// the run's bytes past [`RUN_BYTES`] (a scoped page reads a whole run for one record).
fn cut_runs(recs: &[(Position, ArenaRange)]) -> impl Iterator<Item = &[(Position, ArenaRange)]> {
    let mut rest = recs;
    std::iter::from_fn(move || {
        let first = rest.first()?.0.0;
        let mut bytes = 0;
        let n = rest
            .iter()
            .take(keys::RUN_MAX)
            .take_while(|((ctime, _), (s, e))| {
                bytes += e - s;
                *ctime - first < keys::RUN_SPAN && bytes <= RUN_BYTES
            })
            .count()
            .max(1);
        let (run, after) = rest.split_at(n);
        rest = after;
        Some(run)
    })
}

/// Most record bytes in a run, unless its first record alone is larger.
const RUN_BYTES: usize = 64 * 1024;

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

type IngestJob = (App, Vec<Event>, oneshot::Sender<Result<IngestOutcome>>);

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
    partitions: HashMap<i64, (Keyspace, Format)>,
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
                    Ok(j) => j,
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
                Job::Ingest { app, events, reply } => {
                    let mut size = events.len();
                    let mut group: Vec<IngestJob> = vec![(app, events, reply)];
                    while size < MAX_GROUP_EVENTS {
                        match rx.try_recv() {
                            Ok(Job::Ingest { app, events, reply }) => {
                                size += events.len();
                                group.push((app, events, reply));
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

    /// Hands the day partitions unwritten for `tidy_after` with more than one level-0 table to
    /// the tidy thread (checked at most once per `tidy_after`; each day once per spell of
    /// writes). Day partitions let 16 tables gather in level 0 before merging (cheap writes),
    /// and a point read checks every one of them; once a day goes quiet (live traffic moves on
    /// to the next day, or a bulk load ends) one merge makes its reads cheap for good.
    fn tidy(&mut self) {
        let quiet_for = self.inner.config.tidy_after;
        if self.last_tidy.elapsed() < quiet_for {
            return;
        }
        self.last_tidy = Instant::now();
        let mut quiet: Vec<i64> = self
            .written
            .iter()
            .filter(|(_, t)| t.elapsed() >= quiet_for)
            .map(|(d, _)| *d)
            .collect();
        // Newest first: recent days are the ones read most.
        quiet.sort_unstable_by(|a, b| b.cmp(a));
        for day in quiet {
            self.written.remove(&day);
            // Its writes have moved on; late ones can afford a read.
            self.counters.drop_day(day);
            if let Some(ks) = self.inner.day(day)
                && ks.l0_table_count() > 1
            {
                let _ = self.tidy.send((day, ks));
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
        all.extend(inner.days.read().expect("lock").values().cloned());
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
        let split = |map: &std::sync::RwLock<std::collections::BTreeMap<i64, Keyspace>>,
                     at: i64|
         -> Vec<Keyspace> {
            let mut m = map.write().expect("lock");
            let keep = m.split_off(&at);
            std::mem::replace(&mut *m, keep).into_values().collect()
        };
        inner
            .ids_horizon
            .fetch_max(horizon, std::sync::atomic::Ordering::Relaxed);
        let old_days = split(&inner.days, horizon);
        let old_acts = split(&inner.acts, stats_horizon);
        let dropped = old_days.len();
        for ks in old_days.into_iter().chain(old_acts) {
            inner.db.delete_keyspace(ks)?;
        }
        let apps: Vec<u32> = inner
            .apps
            .read()
            .expect("lock")
            .values()
            .map(|a| a.id)
            .collect();
        let mut batch = inner.db.batch();
        for app in apps {
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
        let (jobs, replies): (Vec<_>, Vec<_>) =
            group.into_iter().map(|(a, e, r)| ((a, e), r)).unzip();
        if self.sync_failed.swap(false, Ordering::Relaxed) {
            self.forget();
        }
        let written = self.write(jobs);
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
                if let Err(std::sync::mpsc::SendError(durable)) = self.sync.send(durable) {
                    for (reply, _) in durable {
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
        self.fresh.insert(app, Fresh::new(n));
        Ok(n)
    }

    /// Stages and commits a group of requests; each gets its outcome, or its refusal when it
    /// cannot be stored as sent (the others commit all the same).
    fn write(&mut self, jobs: Vec<(App, Vec<Event>)>) -> Result<Vec<Result<IngestOutcome>>> {
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
            app_hours: HashMap::default(),
            app_minutes: HashMap::default(),
            key: Vec::with_capacity(64),
            rec: Vec::with_capacity(512),
        };
        let mut outcomes = Vec::with_capacity(jobs.len());
        for (app, events) in jobs {
            let next = self.next_id(&g, app.id)?;
            let kept = events.iter().filter_map(|ev| match ev {
                Event::Message(m) if inner.pday(m.msg_ctime) >= g.horizon => Some(m),
                _ => None,
            });
            if let Err(e) = check_msgids_assignable(next, kept) {
                outcomes.push(Err(StoreError::Invalid(e)));
                continue;
            }
            let mut out = IngestOutcome::default();
            for ev in events {
                let changed = match ev {
                    Event::Message(m) => self.message(&mut g, &app, m)?,
                    Event::UserLogin { username, time } => {
                        if inner.pday(time) < g.horizon {
                            None
                        } else {
                            let mark = login_mark(&username, time, &inner.config.tz);
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
        }
        self.flush(g)?;
        Ok(outcomes)
    }

    /// Stores one message; `None` when expired, `Some(false)` when a duplicate.
    fn message(&mut self, g: &mut Group, app: &App, mut m: Message) -> Result<Option<bool>> {
        let inner = self.inner.clone();
        let day = inner.pday(m.msg_ctime);
        if day < g.horizon {
            return Ok(None);
        }
        let next = self.next_id(g, app.id)?;
        if m.msgid == 0 {
            m.msgid = next;
        } else if m.msgid < next
            && (g.seen.contains(&(app.id, m.msgid))
                || (!self
                    .fresh
                    .get(&app.id)
                    .is_some_and(|f| f.certainly_new(m.msgid))
                    && self.stored(app, m.msgid, g.horizon)?))
        {
            return Ok(Some(false));
        }
        g.seen.insert((app.id, m.msgid));
        g.next_ids.insert(app.id, next.max(m.msgid + 1));
        let (ks, format) = match g.partitions.get(&day) {
            Some(p) => p.clone(),
            None => {
                let ks = match inner.day(day) {
                    Some(ks) => ks,
                    None => {
                        let ks = inner.day_or_create(day)?;
                        self.counters.days.insert(day, DayCounters::default());
                        ks
                    }
                };
                let p = (ks, inner.format(day));
                g.partitions.insert(day, p.clone());
                p
            }
        };
        if format >= Format::Runs {
            let start = g.arena.len();
            encode_record(&m, &app.key, g.seq, &mut g.arena);
            g.records
                .entry((day, app.id))
                .or_default()
                .push(((m.msg_ctime, m.msgid), (start, g.arena.len())));
        } else {
            g.rec.clear();
            encode_record(&m, &app.key, g.seq, &mut g.rec);
            g.staged.put(
                &ks,
                keys::msg_key(app.id, m.msg_ctime, m.msgid),
                g.rec.as_slice(),
            );
        }
        let (block, bit) = keys::id_block(app.id, m.msgid);
        let pairs = g.id_blocks.entry(block).or_default();
        match pairs.iter_mut().find(|(d, _)| *d == day) {
            Some((_, mask)) => *mask |= bit,
            None => pairs.push((day, bit)),
        }
        let hour = (m.msg_ctime / MILLIS_PER_HOUR) as u32;
        *g.app_hours.entry((day, app.id, hour)).or_default() += 1;
        if format >= Format::Minutes {
            let minute = (m.msg_ctime / MILLIS_PER_MINUTE) as u32;
            *g.app_minutes.entry((day, app.id, minute)).or_default() += 1;
        }
        let by_scope = g.scopes.entry((day, hour)).or_default();
        for (tag, id) in m.scope_ids() {
            keys::scope_prefix_into(keys::IDX, app.id, tag, id, &mut g.key);
            let position = (m.msg_ctime, m.msgid);
            match by_scope.get_mut(g.key.as_slice()) {
                Some(positions) => positions.push(position),
                None => {
                    by_scope.insert(ScopeKey::from_slice(&g.key), vec![position]);
                }
            }
        }

        // Statistics rollups, in the same batch.
        let r = MessageRollup::of(&m, &inner.config.tz);
        r.count(
            g.hours.entry((app.id, r.hour)).or_default(),
            g.days.entry((app.id, r.day)).or_default(),
        );
        for mark in r.marks() {
            self.mark(g, app.id, mark)?;
        }
        Ok(Some(true))
    }

    /// Adds an id to a day's presence set and, if it was not there yet, counts it in the day's
    /// row; `true` then. (`g.presence` holds the keys this group found or added; they join the
    /// cache once the group is committed.)
    fn mark(&mut self, g: &mut Group, app: u32, mark: Mark<'_>) -> Result<bool> {
        let day = mark.day;
        keys::entity_key_into(app, mark.set.code(), mark.id, &mut g.key);
        let key = g.key.as_slice();
        if self.present.get(&day).is_some_and(|s| s.contains(key))
            || g.presence.get(&day).is_some_and(|s| s.contains(key))
        {
            return Ok(false);
        }
        let key = PresenceKey::from_slice(key);
        let ks = self.act(day)?;
        if !self.complete.contains(&day) && ks.contains_key(&key)? {
            g.presence.entry(day).or_default().insert(key);
            return Ok(false);
        }
        g.staged.put(&ks, key.as_slice(), b"".as_slice());
        g.presence.entry(day).or_default().insert(key);
        mark.set.count(g.days.entry((app, day)).or_default());
        Ok(true)
    }

    /// The day's presence keyspace; one this writer creates starts out complete in `present`.
    fn act(&mut self, day: i64) -> Result<Keyspace> {
        if let Some(ks) = self.inner.acts.read().expect("lock").get(&day) {
            return Ok(ks.clone());
        }
        let ks = self.inner.act(day)?;
        self.complete.insert(day);
        Ok(ks)
    }

    /// Whether the app already holds a message with this id (in a day still retained).
    fn stored(&self, app: &App, msgid: u64, horizon: i64) -> Result<bool> {
        // An entry whose day was dropped by retention is stale: that message is gone.
        let live = |day: i64| day >= horizon && self.inner.day(day).is_some();
        let (block, bit) = keys::id_block(app.id, msgid);
        if let Some(v) = self.inner.id_blocks.get(block)?
            && let Some((day, _)) = keys::id_block_pairs(&v).find(|(_, m)| m & bit != 0)
        {
            return Ok(live(day));
        }
        // Stored before the blocks, if at all.
        if !self.inner.legacy_ids {
            return Ok(false);
        }
        let Some(v) = self.inner.ids.get(keys::id_key(app.id, msgid))? else {
            return Ok(false);
        };
        let day = v
            .as_ref()
            .try_into()
            .map(i64::from_be_bytes)
            .unwrap_or(i64::MIN);
        Ok(live(day))
    }

    /// A duplicate-index block with a commit's msgids added: read-modify-write, but a block of
    /// ids none of which is stored yet (ids mostly come in runs: most blocks are new) needs no
    /// read. Pairs of days retention dropped go on the way.
    fn merge_id_block(
        &self,
        block: &[u8; 12],
        new: Vec<(i64, u64)>,
        horizon: i64,
    ) -> Result<Vec<(i64, u64)>> {
        let app = u32::from_be_bytes(block[..4].try_into().expect("4 bytes"));
        let lo = u64::from_be_bytes(block[4..].try_into().expect("8 bytes")) * keys::ID_BLOCK;
        let unread = self
            .fresh
            .get(&app)
            .is_some_and(|f| f.certainly_none_in(lo, lo.saturating_add(keys::ID_BLOCK)));
        let mut pairs: Vec<(i64, u64)> = match unread {
            true => Vec::new(),
            false => match self.inner.id_blocks.get(block)? {
                Some(v) => keys::id_block_pairs(&v)
                    .filter(|(d, _)| *d >= horizon)
                    .collect(),
                None => Vec::new(),
            },
        };
        for (day, mask) in new {
            match pairs.iter_mut().find(|(d, _)| *d == day) {
                Some((_, m)) => *m |= mask,
                None => pairs.push((day, mask)),
            }
        }
        pairs.sort_unstable();
        Ok(pairs)
    }

    /// Records a user or group lifecycle event in the entity's history and applies the change
    /// it makes to the day rows and all-time totals. `Some(false)` when it changes nothing.
    fn lifecycle(
        &self,
        g: &mut Group,
        app: u32,
        kind: u8,
        id: &str,
        what: u8,
        time: Millis,
    ) -> Result<Option<bool>> {
        let key = keys::entity_key(app, kind, id);
        let mut history = match g.entities.get(&key) {
            Some(h) => h.clone(),
            None => self
                .inner
                .entities
                .get(&key)?
                .map(|v| decode_history(&v))
                .unwrap_or_default(),
        };
        let tz = &self.inner.config.tz;
        let Some(change) = apply_lifecycle(&mut history, time, what, |t| tz.civil_day(t)) else {
            return Ok(Some(false));
        };
        g.batch
            .insert(&self.inner.entities, key.clone(), encode_history(&history));
        g.entities.insert(key, history);
        if change.days.is_empty() {
            return Ok(Some(false));
        }
        for (day, d_new, d_net) in change.days {
            if day >= g.stats_horizon {
                g.days
                    .entry((app, day))
                    .or_default()
                    .add_lifecycle(kind == USER, d_new, d_net);
            }
        }
        let total = g.totals.entry(app).or_default();
        if kind == USER {
            total.0 += change.net_total;
        } else {
            total.1 += change.net_total;
        }
        Ok(Some(true))
    }

    /// Adds the gathered deltas to what is stored and commits everything at once.
    fn flush(&mut self, mut g: Group) -> Result<()> {
        let inner = self.inner.clone();
        // Each partition's records of each app, sorted and cut into runs; the runs' first
        // positions, for the index chunks to point at.
        let mut runs: HashMap<(i64, u32), Vec<Position>> = HashMap::default();
        for ((day, app), mut recs) in g.records.drain() {
            recs.sort_unstable_by_key(|r| r.0);
            let ks = &g.partitions[&day].0;
            let mut firsts = Vec::with_capacity(recs.len() / keys::RUN_MAX + 1);
            for run in cut_runs(&recs) {
                let first = run[0].0;
                let bytes = |(s, e): ArenaRange| s..e;
                g.rec.clear();
                let records = run.iter().map(|r| (r.0, &g.arena[bytes(r.1)]));
                keys::encode_run(first, records, &mut g.rec);
                g.staged
                    .put(ks, keys::msg_key(app, first.0, first.1), g.rec.as_slice());
                firsts.push(first);
            }
            runs.insert((day, app), firsts);
        }
        // The counts this commit leaves, to cache once it is committed (a size hint).
        let mut counted = Vec::with_capacity(
            g.scopes.values().map(HashMap::len).sum::<usize>()
                + g.counters.len()
                + g.app_hours.len()
                + g.app_minutes.len(),
        );
        let scopes = g.scopes.drain().flat_map(|((day, hour), by_scope)| {
            by_scope
                .into_iter()
                .map(move |(prefix, positions)| (day, hour, prefix, positions))
        });
        for (day, hour, mut prefix, mut positions) in scopes {
            let (ks, format) = &g.partitions[&day];
            if *format >= Format::Chunks {
                positions.sort_unstable();
                let entries: Vec<keys::Entry> = if *format >= Format::Runs {
                    // Positions and run firsts both ascend, and a commit's runs do not
                    // overlap: each position's run is the last one starting at or before it.
                    let app = u32::from_be_bytes(prefix[1..5].try_into().expect("4 bytes"));
                    let firsts = &runs[&(day, app)];
                    // A scope's few positions among a commit's hundreds of runs: search for
                    // the first one's run, then step.
                    let mut r = firsts.partition_point(|f| *f <= positions[0]).max(1) - 1;
                    positions
                        .iter()
                        .map(|p| {
                            while r + 1 < firsts.len() && firsts[r + 1] <= *p {
                                r += 1;
                            }
                            (*p, firsts[r])
                        })
                        .collect()
                } else {
                    positions.iter().map(|p| (*p, *p)).collect()
                };
                prefix[0] = keys::CHUNK;
                g.staged.put(
                    ks,
                    keys::chunk_key(&prefix, hour, g.seq),
                    keys::encode_chunk(hour, &entries, *format >= Format::Runs),
                );
                if *format >= Format::SparseCounters {
                    // Only a busy hour has a counter (readers count the chunks of the others);
                    // the cache holds every hour's count, keyed by the counter prefix.
                    prefix[0] = keys::CNT;
                    let before = match self.counters.get(day, hour, &prefix) {
                        Some(n) => n,
                        None => stored_hour_count(ks, &prefix, hour)?,
                    };
                    let total = before + positions.len() as u64;
                    if total >= inner.config.busy_hour {
                        g.staged
                            .put(ks, keys::counter_key(&prefix, hour), total.to_be_bytes());
                    }
                    counted.push((day, hour, prefix, total));
                    continue;
                }
            } else {
                for (ctime, msgid) in &positions {
                    g.staged.put(
                        ks,
                        keys::with_position(&prefix, *ctime, *msgid),
                        b"".as_slice(),
                    );
                }
            }
            prefix[0] = keys::CNT;
            *g.counters
                .entry((day, keys::counter_key(&prefix, hour)))
                .or_default() += positions.len() as u64;
        }
        for (block, new) in g.id_blocks.drain() {
            g.staged.put(
                &inner.id_blocks,
                block,
                keys::encode_id_block(&self.merge_id_block(&block, new, g.horizon)?),
            );
        }
        let app_prefix = |app| keys::scope_prefix(keys::CNT, app, &Scope::App);
        for ((day, app, hour), n) in g.app_hours.drain() {
            *g.counters
                .entry((day, keys::counter_key(&app_prefix(app), hour)))
                .or_default() += n;
        }
        for ((day, app, minute), n) in g.app_minutes.drain() {
            let key = keys::minute_counter_key(app, minute).to_vec();
            *g.counters.entry((day, key)).or_default() += n;
        }
        for ((day, key), delta) in g.counters.drain() {
            let ks = &g.partitions[&day].0;
            let hour = keys::counter_hour(&key);
            let current = match self.counters.get(day, hour, &key) {
                Some(n) => n,
                None => ks.get(&key)?.map(|v| keys::u64_value(&v)).unwrap_or(0),
            };
            g.staged
                .put(ks, key.as_slice(), (current + delta).to_be_bytes());
            counted.push((day, hour, ScopeKey::from_vec(key), current + delta));
        }
        for ((app, day), delta) in g.days.drain() {
            let key = keys::stat_key(app, keys::STAT_DAY, day);
            let mut row = inner
                .stats
                .get(key)?
                .map(|v| DayStats::decode(&v))
                .unwrap_or_default();
            row.add(&delta);
            g.batch.insert(&inner.stats, key, row.encode());
        }
        for ((app, hour), delta) in g.hours.drain() {
            let key = keys::stat_key(app, keys::STAT_HOUR, hour);
            let mut row = inner
                .stats
                .get(key)?
                .map(|v| decode_counts(&v))
                .unwrap_or_default();
            for (r, d) in row.iter_mut().flatten().zip(delta.iter().flatten()) {
                *r += d;
            }
            g.batch.insert(&inner.stats, key, encode_counts(&row));
        }
        for (app, (users, groups)) in g.totals.drain() {
            let key = keys::stat_total_key(app);
            let (u, gr) = inner
                .stats
                .get(key)?
                .map(|v| decode_totals(&v))
                .unwrap_or_default();
            let mut v = (u + users).to_be_bytes().to_vec();
            v.extend_from_slice(&(gr + groups).to_be_bytes());
            g.batch.insert(&inner.stats, key, v);
        }
        for (app, next) in &g.next_ids {
            g.batch
                .insert(&inner.meta, next_id_key(*app), next.to_be_bytes());
        }
        g.batch.insert(&inner.meta, SEQ_KEY, g.seq.to_be_bytes());
        g.staged.drain_into(&mut g.batch);
        // Visible to readers now, durable at the syncer's next fsync, which answers the group.
        g.batch.commit()?;
        self.seq = g.seq;
        // The arena's memory serves the next commit, unless an unusually large one grew it.
        if g.arena.capacity() <= ARENA_KEPT {
            g.arena.clear();
            self.arena = g.arena;
        }
        let now = Instant::now();
        for day in g.partitions.keys() {
            self.written.insert(*day, now);
        }
        self.next_ids.extend(g.next_ids);
        let mut by_app: HashMap<u32, Vec<u64>> = HashMap::default();
        for (app, id) in g.seen {
            by_app.entry(app).or_default().push(id);
        }
        for (app, mut ids) in by_app {
            if let Some(f) = self.fresh.get_mut(&app) {
                f.extend(&mut ids);
            }
        }
        for (day, keys) in g.presence {
            self.present.entry(day).or_default().extend(keys);
        }
        for (day, hour, key, n) in counted {
            self.counters.set(day, hour, key, n);
        }
        self.counters.trim(inner.config.counter_cache_keys);
        if let Some(&newest) = self.present.keys().max() {
            self.present.retain(|d, _| *d > newest - PRESENT_DAYS);
            let present = &self.present;
            self.complete.retain(|d| present.contains_key(d));
        }
        Ok(())
    }
}

/// A scope's messages in one hour of a [`Format::SparseCounters`] partition (`prefix` from
/// [`keys::scope_prefix`] with [`keys::CNT`]): its counter if the hour is busy enough to have
/// one, else the positions in its index chunks.
fn stored_hour_count(ks: &Keyspace, prefix: &[u8], hour: u32) -> Result<u64> {
    if let Some(v) = ks.get(keys::counter_key(prefix, hour))? {
        return Ok(keys::u64_value(&v));
    }
    let mut chunk = prefix.to_vec();
    chunk[0] = keys::CHUNK;
    let lo = keys::chunk_key(&chunk, hour, 0);
    let hi = keys::chunk_key(&chunk, hour, u64::MAX);
    let mut n = 0;
    for kv in ks.range(lo..=hi) {
        let (_, v) = kv.into_inner()?;
        n += keys::chunk_entries(hour, &v, true).count() as u64;
    }
    Ok(n)
}

/// A committed group's replies and what each is to be told.
type Durable = Vec<(oneshot::Sender<Result<IngestOutcome>>, IngestOutcome)>;

/// Starts the thread that makes committed groups durable and only then answers them: one fsync
/// covers every group committed before it began. The writer goes on preparing the next group
/// meanwhile, instead of waiting out each fsync (about a fifth of its time when it did).
fn spawn_syncer(
    inner: Arc<Inner>,
    failed: Arc<AtomicBool>,
) -> Result<std::sync::mpsc::Sender<Durable>> {
    let (tx, rx) = std::sync::mpsc::channel::<Durable>();
    std::thread::Builder::new()
        .name("imreport-sync".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut waiting = vec![first];
                waiting.extend(rx.try_iter());
                let synced = inner
                    .db
                    .persist(PersistMode::SyncAll)
                    .map_err(StoreError::from);
                if let Err(e) = &synced {
                    tracing::error!(error = %e, "fsync failed; the groups it covered are refused");
                    failed.store(true, Ordering::Relaxed);
                }
                for (reply, outcome) in waiting.into_iter().flatten() {
                    let _ = reply.send(match &synced {
                        Ok(()) => Ok(outcome),
                        Err(e) => Err(e.clone()),
                    });
                }
            }
        })
        .map_err(|e| StoreError::io("cannot start the sync thread", e))?;
    Ok(tx)
}

/// Writes gathered per keyspace and put into the batch in key order. A memtable is a skiplist,
/// and an insert costs a search from its top; inserts in key order walk nearly the same path each
/// time, from cache, where scattered ones (a message's index entries land all over the day)
/// miss it at almost every level. Measured: most of the writer's time was those misses.
#[derive(Default)]
struct Staged(HashMap<Keyspace, Vec<(u128, Slice, Slice)>>);

/// A key's first 16 bytes (zero-padded) as a number: never orders two keys against their byte
/// order, only ties some (then the whole keys decide), and compares in one instruction. The
/// keys of one group mostly differ there (app and ctime, or app, scope and the id's start).
fn sort_prefix(key: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = key.len().min(16);
    b[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(b)
}

impl Staged {
    fn put(&mut self, ks: &Keyspace, key: impl Into<Slice>, value: impl Into<Slice>) {
        let puts = match self.0.get_mut(ks) {
            Some(p) => p,
            None => self.0.entry(ks.clone()).or_default(),
        };
        let key = key.into();
        puts.push((sort_prefix(&key), key, value.into()));
    }

    fn drain_into(&mut self, batch: &mut OwnedWriteBatch) {
        for (ks, mut puts) in self.0.drain() {
            // Each key is written once per group, so the order among equal keys is moot.
            puts.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
            for (_, k, v) in puts {
                batch.insert(&ks, k, v);
            }
        }
    }
}

/// Merges a day partition into one level and frees the tables it replaced. fjall deletes those
/// at the partition's next flush or compaction after the merge, which a quiet partition would
/// not have: a tombstone for a key no reader asks for, flushed, is that next flush.
fn merge(ks: &Keyspace) -> fjall::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Runs cover the records in order, each within every limit, and each cut only where
        /// the next record would break one.
        #[test]
        fn runs_are_cut_only_at_a_limit(
            steps in proptest::collection::vec((0i64..4_000, 0usize..20_000), 1..200),
        ) {
            let (mut t, mut at) = (1_000_000i64, 0usize);
            let recs: Vec<(Position, ArenaRange)> = steps
                .iter()
                .enumerate()
                .map(|(i, (dt, len))| {
                    t += dt;
                    at += len;
                    ((t, i as u64), (at - len, at))
                })
                .collect();
            let runs: Vec<&[(Position, ArenaRange)]> = cut_runs(&recs).collect();
            proptest::prop_assert_eq!(runs.concat(), recs.clone());
            let bytes = |run: &[(Position, ArenaRange)]| run.iter().map(|r| r.1.1 - r.1.0).sum::<usize>();
            for (i, run) in runs.iter().enumerate() {
                let first = run[0].0.0;
                proptest::prop_assert!(!run.is_empty() && run.len() <= keys::RUN_MAX);
                proptest::prop_assert!(run.iter().all(|r| r.0.0 - first < keys::RUN_SPAN));
                proptest::prop_assert!(run.len() == 1 || bytes(run) <= RUN_BYTES);
                if let Some(next) = runs.get(i + 1) {
                    let n = next[0];
                    proptest::prop_assert!(
                        run.len() == keys::RUN_MAX
                            || n.0.0 - first >= keys::RUN_SPAN
                            || bytes(run) + (n.1.1 - n.1.0) > RUN_BYTES
                    );
                }
            }
        }
    }
}
