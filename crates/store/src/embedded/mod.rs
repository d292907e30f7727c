//! The embedded backend: one fjall database in the data directory, one writer thread that
//! group-commits ingest batches (one fsync for every request waiting), and reads on tokio's
//! blocking pool so that storage work never stalls the async workers.

mod hot_rows;
mod id_index_retention;
mod keys;
mod read;
mod recent_ids;
mod spares;
mod writer;

use crate::window::Window;
use crate::{DaysReport, IngestOutcome, Page, PageRequest, Result, Store, StoreError};
use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use imreport_domain::app::{App, SecretHash};
use imreport_domain::event::Event;
use imreport_domain::rollup::{Busiest, MsgCounts};
use imreport_domain::scope::Scope;
use imreport_domain::time::ReportTz;
use imreport_domain::{Clock, Millis};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Days of messages kept.
    pub retention_days: u32,
    /// Ingest requests that may wait for the writer; beyond this, ingest answers "overloaded".
    pub queue_depth: usize,
    /// Block cache size in bytes.
    pub cache_bytes: u64,
    pub clock: Clock,
    /// The report time zone: statistics are bucketed in its civil hours and days.
    pub tz: ReportTz,
    /// Ingest is refused (`DiskFull`) rather than written when the disk has less free space:
    /// a write that fails for lack of space would leave the database unusable until restart.
    pub min_free_disk_bytes: u64,
    /// A day partition left unwritten this long is merged into one level in the background,
    /// which makes its point reads cheap (see `writer::tidy`).
    pub tidy_after: std::time::Duration,
    /// Most per-hour scope counters the writer keeps in memory (see `writer::Counters`); the
    /// oldest hours are dropped beyond it and read from the store again when written. The
    /// default, 128k (~2 hours of a 1.7M-messages-a-day app), holds ~10 MB; 256k was ~13% of
    /// the peak heap of a 20M load (heaptrack, session 17).
    pub counter_cache_keys: usize,
    /// The format of the day partitions this creates: [`Format::LATEST`]; an earlier one only
    /// to test that partitions left by earlier versions are still read and written.
    pub partition_format: Format,
    /// From how many messages a scope's hour gets a counter (in [`Format::SparseCounters`]
    /// partitions): below it, counting the hour's index chunks is as cheap as reading a
    /// counter, and most scope-hours (a user in one message) never write one. Any value reads
    /// right; tests lower it to reach both sides.
    pub busy_hour: u64,
    /// How much lower than the process the writer, its fsync and merge threads and fjall's
    /// background worker run ([`crate::priority`]).
    pub ingest_nice: i32,
}

/// The layout of a day partition, fixed when it is created (each format's marker key in the
/// partition says which); each adds to the one before, and every one is still read and written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// One record and one index key per message; partial hours counted by scanning.
    Plain,
    /// Per-minute app counters ([`keys::MINUTES`]).
    Minutes,
    /// Scope index in chunks, one per scope, hour and commit ([`keys::CHUNKS`]).
    Chunks,
    /// Message records in runs, one key per run of a commit's consecutive records, and index
    /// chunk entries that name their record's run ([`keys::RUNS`]).
    Runs,
    /// Hour counters of scopes other than the app only for hours of at least
    /// [`EmbeddedConfig::busy_hour`] messages; the other hours are counted from their index
    /// chunks ([`keys::SPARSE_COUNTERS`]).
    SparseCounters,
    /// Record runs open with a directory of their records ([`keys::RUN_DIRECTORIES`]).
    RunDirectories,
    /// Records in a keyspace of their own ([`keys::RECORD_KEYSPACE`]).
    RecordKeyspace,
}

impl Format {
    pub const LATEST: Format = Format::RecordKeyspace;
    /// Every format, oldest first (the tests write and read each).
    pub const ALL: [Format; 7] = [
        Format::Plain,
        Format::Minutes,
        Format::Chunks,
        Format::Runs,
        Format::SparseCounters,
        Format::RunDirectories,
        Format::RecordKeyspace,
    ];

    /// Marker keys, in format order: a partition holds those of its format and the ones before.
    const MARKERS: [(Format, &'static [u8]); 6] = [
        (Format::Minutes, keys::MINUTES),
        (Format::Chunks, keys::CHUNKS),
        (Format::Runs, keys::RUNS),
        (Format::SparseCounters, keys::SPARSE_COUNTERS),
        (Format::RunDirectories, keys::RUN_DIRECTORIES),
        (Format::RecordKeyspace, keys::RECORD_KEYSPACE),
    ];
}

impl EmbeddedConfig {
    /// A store's settings (they come from the server's settings), and the engine's own knobs
    /// at the values measured best (BENCHMARKS.md, bench/LIMITS.md).
    pub fn new(
        retention_days: u32,
        queue_depth: usize,
        tz: ReportTz,
        min_free_disk_bytes: u64,
        clock: Clock,
    ) -> Self {
        EmbeddedConfig {
            retention_days,
            queue_depth,
            cache_bytes: CACHE_BYTES,
            clock,
            tz,
            min_free_disk_bytes,
            tidy_after: std::time::Duration::from_secs(5),
            counter_cache_keys: 128 * 1024,
            partition_format: Format::LATEST,
            busy_hour: crate::BUSY_HOUR,
            ingest_nice: crate::priority::DEFAULT_INGEST_NICE,
        }
    }
}

/// A day partition: its keyspace, and its records' (the same keyspace in partitions from
/// before [`Format::RecordKeyspace`]). Cheap to clone.
#[derive(Clone)]
pub(crate) struct Partition {
    pub(crate) ks: Keyspace,
    pub(crate) records: Keyspace,
}

impl Partition {
    /// Its keyspaces, each once.
    pub(crate) fn keyspaces(&self) -> Vec<Keyspace> {
        if self.records.id() == self.ks.id() {
            vec![self.ks.clone()]
        } else {
            vec![self.ks.clone(), self.records.clone()]
        }
    }
}

pub(crate) struct Inner {
    db: Database,
    meta: Keyspace,
    /// The duplicate index from before `id_blocks`: read, no longer written.
    ids: Keyspace,
    id_blocks: Keyspace,
    /// Whether `ids` held anything at open: if not, a msgid missing from `id_blocks` needs no
    /// second lookup (`ids` is no longer written).
    legacy_ids: bool,
    entities: Keyspace,
    stats: Keyspace,
    /// The statistics rows rewritten last, which readers look up instead of scanning.
    hot_stats: hot_rows::HotRows,
    /// Message partitions by partition day (see [`Inner::pday`]).
    days: RwLock<BTreeMap<i64, Partition>>,
    /// The format of each partition in `days`.
    formats: RwLock<HashMap<i64, Format>>,
    /// Presence sets (active users, senders, active groups) by civil day.
    acts: RwLock<BTreeMap<i64, Keyspace>>,
    /// Empty keyspaces made ahead of the writer's need (see `spares`).
    spares: Mutex<spares::Spares>,
    /// Partition days and retention horizons; the partition offset is the report zone's offset
    /// when the data dir was created, fixed forever (see [`Window`]).
    window: Window,
    /// First retained partition day, for the compaction filter that drops stale `ids` entries.
    ids_horizon: id_index_retention::Horizon,
    /// Serializes app administration (rare) so that id allocation is race-free.
    admin: Mutex<()>,
    /// Every app, by key. This process is the data dir's only writer, so the cache is always
    /// current, and authenticating a request costs no I/O.
    apps: RwLock<HashMap<String, App>>,
    config: EmbeddedConfig,
    path: PathBuf,
    min_free: std::sync::atomic::AtomicU64,
}

impl Inner {
    /// The partition day of an instant.
    pub(crate) fn pday(&self, ms: Millis) -> i64 {
        self.window.pday(ms)
    }

    /// First partition day still retained at `now`.
    fn horizon_day(&self, now: Millis) -> i64 {
        self.window.horizon_day(now)
    }

    /// First civil day whose statistics are still retained at `now`.
    fn stats_horizon_day(&self, now: Millis) -> i64 {
        self.window.stats_horizon_day(now)
    }

    /// Refuses a write when the disk has less free space than the reserve.
    fn check_free_space(&self) -> Result<()> {
        let min = self.min_free.load(std::sync::atomic::Ordering::Relaxed);
        if min == 0 {
            return Ok(());
        }
        let st = rustix::fs::statvfs(&self.path)
            .map_err(|e| StoreError::io("statvfs of the data dir", e.into()))?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free < min {
            return Err(StoreError::DiskFull(format!(
                "{} MiB free, below the {} MiB reserve; free space or raise min_free_disk_mb",
                free / (1024 * 1024),
                min / (1024 * 1024)
            )));
        }
        Ok(())
    }

    /// Whether every partition that `from..=to` touches has at least format `f`.
    fn all_at_least(&self, f: Format, from: Millis, to: Millis) -> bool {
        let formats = self.formats.read().expect("lock");
        (self.pday(from)..=self.pday(to)).all(|d| formats.get(&d).is_none_or(|x| *x >= f))
    }

    /// A partition's format (`Plain` for one that does not exist, which holds nothing).
    fn format(&self, day: i64) -> Format {
        self.formats
            .read()
            .expect("lock")
            .get(&day)
            .copied()
            .unwrap_or(Format::Plain)
    }

    /// The ids of every app.
    fn app_ids(&self) -> Vec<u32> {
        self.apps
            .read()
            .expect("lock")
            .values()
            .map(|a| a.id)
            .collect()
    }

    fn day(&self, day: i64) -> Option<Partition> {
        self.days.read().expect("lock").get(&day).cloned()
    }
}

/// The block cache's size (decompressed blocks of every keyspace), unless configured otherwise
/// (`block_cache_mb`). Ingest's own reads fill it over a long load (full by the end of 100M
/// messages loaded through the API); 48 MiB did not lower that load's peak RSS, which comes
/// from transient allocations, not the cache (bench/LIMITS.md, Memory).
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// See [`EmbeddedStore::memory`].
#[derive(Debug, Clone, Copy)]
pub struct StoreMemory {
    pub memtable_bytes: u64,
    pub pending_flushes: u64,
    pub cache_bytes: u64,
    /// What the block cache may hold (`EmbeddedConfig::cache_bytes`).
    pub cache_capacity_bytes: u64,
}

/// The embedded store. Cheap to clone; all clones share one database and writer.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    writer: writer::Handle,
}

const APP_PREFIX: &str = "app/";
const APP_SEQ: &str = "app_seq";
const WRITE_BUFFER_BYTES: u64 = 48 * 1024 * 1024;
const JOURNAL_BYTES: u64 = 128 * 1024 * 1024;
/// Per keyspace; one active and up to four sealed awaiting flush each. Halving it from 16 MiB
/// took peak RSS of a fast 1M-message load from ~290 to ~210 MB at no measured ingest cost.
const MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;

/// Options of every keyspace: small memtables keep skiplist searches short and memory flat;
/// every level LZ4-compressed in 16 KiB blocks (fjall leaves the first two levels uncompressed,
/// which is where a week of messages lives), for the bytes-per-message budget.
fn ks_options() -> KeyspaceCreateOptions {
    use fjall::config::{BlockSizePolicy, CompressionPolicy, PartitioningPolicy, PinningPolicy};
    KeyspaceCreateOptions::default()
        .max_memtable_size(MEMTABLE_BYTES)
        .filter_block_pinning_policy(PinningPolicy::all(false))
        // Partitioned filters: a table writer then holds the key hashes of one 4 KiB filter
        // partition at a time (and the finished filter, ~1.2 bytes a key), not 8 bytes for every
        // key of a 64 MiB compaction output in a Vec doubling as it grows. 100M loaded through
        // the API peaked at 258 MiB against 284-290 with whole-table filters (bench/LIMITS.md,
        // Memory). A point read loads one partition, not the table's whole filter.
        .filter_block_partitioning_policy(PartitioningPolicy::all(true))
        .index_block_pinning_policy(PinningPolicy::all(false))
        .data_block_compression_policy(CompressionPolicy::all(fjall::CompressionType::Lz4))
        .data_block_size_policy(BlockSizePolicy::all(16 * 1024))
}
/// Day partitions take a whole day's index entries in random key order, so every flushed
/// memtable overlaps all of level 1: letting more tables gather in level 0 before they are
/// merged divides how often the day is rewritten.
fn day_options() -> KeyspaceCreateOptions {
    flushed_uncompressed(ks_options()).compaction_strategy(Arc::new(
        fjall::compaction::Leveled::default().with_l0_threshold(L0_TABLES),
    ))
}
/// A day partition's flushes are written uncompressed, its deeper levels with LZ4 (as RocksDB
/// is commonly configured): every table flushed is rewritten later, merged into level 1 or by
/// the merge once the day goes quiet (`writer::tidy`, which merges every day written), so
/// compressing at the flush was LZ4 work thrown away, a quarter to a third of fjall's worker
/// while ingesting. Level 0 of the day being written is read without decompressing.
fn flushed_uncompressed(o: KeyspaceCreateOptions) -> KeyspaceCreateOptions {
    use fjall::CompressionType::{Lz4, None};
    o.data_block_compression_policy(fjall::config::CompressionPolicy::new([None, Lz4]))
}
const L0_TABLES: u8 = 16;
/// A partition's records ([`Format::RecordKeyspace`]) arrive mostly in time order, so their
/// flushed tables overlap little (a commit's neighbours at their edges) and merging them costs
/// little: fjall's defaults (4 tables in level 0) keep point reads to few tables.
fn records_options() -> KeyspaceCreateOptions {
    flushed_uncompressed(ks_options())
}
const FJALL_WORKERS: usize = 1;
const PARTITION_OFFSET: &str = "partition_offset_ms";

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. Fails with `Locked` if another process has it open.
    pub fn open(dir: &Path, config: EmbeddedConfig) -> Result<Self> {
        // Opened on a lowered thread: the threads it starts (fjall's worker, the writer, its
        // fsync and merge threads) inherit its priority, below the queries'.
        crate::priority::on_lowered_thread(config.ingest_nice, || Self::open_here(dir, config))
    }

    fn open_here(dir: &Path, config: EmbeddedConfig) -> Result<Self> {
        crate::private_dir(dir)?;
        let path = dir.join("db");
        // Bounded memtables and journal: memory stays flat however many day partitions are
        // written (each would otherwise buffer up to 64 MiB until the journal reaches 512 MiB).
        let ids_horizon: id_index_retention::Horizon =
            Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN));
        let filter_horizon = ids_horizon.clone();
        type Assigner =
            Arc<dyn Fn(&str) -> Option<Arc<dyn fjall::compaction::filter::Factory>> + Send + Sync>;
        let assigner: Assigner = Arc::new(move |name: &str| {
            let horizon = filter_horizon.clone();
            match name {
                "ids" => Some(Arc::new(id_index_retention::StaleIds(horizon)) as _),
                "id-blocks" => Some(Arc::new(id_index_retention::StaleIdBlocks(horizon)) as _),
                _ => None,
            }
        });
        #[allow(deprecated)]
        let builder = Database::builder(&path)
            .with_compaction_filter_factories(assigner)
            .cache_size(config.cache_bytes)
            // fjall 3.1.13 takes this cap but does not enforce it yet; what bounds memtable
            // memory is the per-keyspace size above (one active, at most 4 sealed awaiting
            // flush before fjall stalls writes) and the journal cap below.
            .max_write_buffer_size(Some(WRITE_BUFFER_BYTES))
            .max_journaling_size(JOURNAL_BYTES)
            // Uncompressed: the writer compressed every batch it journaled (an eighth of its
            // time), for a file deleted once its memtables are flushed (bench/LIMITS.md).
            .journal_compression(fjall::CompressionType::None)
            // One background worker for flushes and compactions. With more, fjall's first
            // worker hands every compaction request back to their shared queue and takes it
            // straight back for as long as another worker compacts: a core spinning through
            // each merge of a growing day partition. 10M loaded, then live traffic at 130k
            // messages/s: fjall 82-83% of a core with two, 45% with one, which reached the
            // asked rate (122k with two) and loaded as fast (bench/LIMITS.md, Session 21).
            .worker_threads(FJALL_WORKERS);
        let db = match builder.open() {
            Err(fjall::Error::Locked) => return Err(StoreError::Locked(dir.display().to_string())),
            other => other?,
        };
        let meta = db.keyspace("meta", ks_options)?;
        let ids = db.keyspace("ids", ks_options)?;
        let id_blocks = db.keyspace("id-blocks", ks_options)?;
        let legacy_ids = ids.first_key_value().is_some();
        let entities = db.keyspace("entities", ks_options)?;
        let stats = db.keyspace("stats", ks_options)?;
        let (mut days, mut acts) = (BTreeMap::new(), BTreeMap::new());
        let mut formats = HashMap::new();
        for name in db.list_keyspace_names() {
            if let Some(day) = keys::parse_day_name(&name) {
                let ks = db.keyspace(&name, day_options)?;
                let mut format = Format::Plain;
                for (f, marker) in Format::MARKERS {
                    if ks.contains_key(marker)? {
                        format = f;
                    }
                }
                let records = if format >= Format::RecordKeyspace {
                    db.keyspace(&keys::records_name(day), records_options)?
                } else {
                    ks.clone()
                };
                formats.insert(day, format);
                days.insert(day, Partition { ks, records });
            } else if let Some(day) = keys::parse_act_name(&name) {
                acts.insert(day, db.keyspace(&name, ks_options)?);
            }
        }
        for name in db.list_keyspace_names() {
            if let Some(day) = keys::parse_records_name(&name)
                && formats
                    .get(&day)
                    .is_none_or(|f| *f < Format::RecordKeyspace)
            {
                db.delete_keyspace(db.keyspace(&name, records_options)?)?;
            }
        }
        let spares = spares::Spares::sort_found(
            &db,
            &mut days,
            &mut formats,
            &mut acts,
            config.partition_format,
        )?;
        let partition_offset_ms = match meta.get(PARTITION_OFFSET)? {
            Some(v) => keys::u64_value(&v) as i64,
            None => {
                let off = i64::from(config.tz.offset_secs(config.clock.now_ms())) * 1000;
                meta.insert(PARTITION_OFFSET, (off as u64).to_be_bytes())?;
                off
            }
        };
        let mut apps = HashMap::new();
        for kv in meta.prefix(APP_PREFIX) {
            let (_, v) = kv.into_inner()?;
            let app: App = serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt(format!("an app record: {e}")))?;
            apps.insert(app.key.clone(), app);
        }
        let inner = Arc::new(Inner {
            db,
            meta,
            ids,
            id_blocks,
            legacy_ids,
            entities,
            stats,
            hot_stats: Default::default(),
            days: RwLock::new(days),
            formats: RwLock::new(formats),
            acts: RwLock::new(acts),
            spares: Mutex::new(spares),
            window: Window {
                retention_days: config.retention_days,
                partition_offset_ms,
                tz: config.tz.clone(),
            },
            ids_horizon,
            admin: Mutex::new(()),
            apps: RwLock::new(apps),
            min_free: std::sync::atomic::AtomicU64::new(config.min_free_disk_bytes),
            config,
            path: dir.to_owned(),
        });
        let writer = writer::Handle::spawn(inner.clone())?;
        Ok(EmbeddedStore { inner, writer })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Blocks the writer until the returned sender is dropped or sent to: for tests of a full
    /// ingest queue.
    #[cfg(any(test, feature = "test-util"))]
    pub fn stall_writer(&self) -> std::sync::mpsc::Sender<()> {
        self.writer.stall()
    }

    /// Changes the free-space reserve at run time (tests simulate a full disk with it).
    #[cfg(any(test, feature = "test-util"))]
    pub fn set_min_free_disk_bytes(&self, bytes: u64) {
        self.inner
            .min_free
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Day partitions held.
    pub fn day_partitions(&self) -> usize {
        self.inner.days.read().expect("lock").len()
    }

    /// Where the store's memory is: memtable bytes (written, not yet flushed to tables),
    /// memtables sealed and waiting for a flush, and bytes held by the block cache.
    pub fn memory(&self) -> StoreMemory {
        let db = &self.inner.db;
        StoreMemory {
            memtable_bytes: db.write_buffer_size(),
            pending_flushes: db.outstanding_flushes() as u64,
            cache_bytes: db.cache_size(),
            cache_capacity_bytes: self.inner.config.cache_bytes,
        }
    }

    /// Bytes on disk of the whole database.
    pub fn disk_space(&self) -> u64 {
        self.inner.db.disk_space().unwrap_or(0)
    }

    fn app_blocking(&self, key: &str) -> Result<Option<App>> {
        Ok(self.inner.apps.read().expect("lock").get(key).cloned())
    }

    fn put_app(&self, app: &App, extra: Option<(&str, Vec<u8>)>) -> Result<()> {
        let mut b = self.inner.db.batch();
        b.insert(
            &self.inner.meta,
            format!("{APP_PREFIX}{}", app.key),
            serde_json::to_vec(app).expect("serializable"),
        );
        if let Some((k, v)) = extra {
            b.insert(&self.inner.meta, k, v);
        }
        b.commit()?;
        self.inner.db.persist(PersistMode::SyncAll)?;
        self.inner
            .apps
            .write()
            .expect("lock")
            .insert(app.key.clone(), app.clone());
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EmbeddedStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| StoreError::Internal(format!("a store task failed: {e}")))?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn create_app(&self, key: &str, name: &str, secret: SecretHash) -> Result<App> {
        let (key, name) = (key.to_owned(), name.to_owned());
        self.blocking(move |s| {
            let _guard = s.inner.admin.lock().expect("lock");
            if s.app_blocking(&key)?.is_some() {
                return Err(StoreError::AppExists(key));
            }
            let id = s
                .inner
                .meta
                .get(APP_SEQ)?
                .map(|v| keys::u64_value(&v))
                .unwrap_or(0)
                + 1;
            let app = App {
                id: u32::try_from(id)
                    .map_err(|_| StoreError::Internal("app ids are used up".into()))?,
                key,
                name,
                secret,
                created_ms: s.inner.config.clock.now_ms(),
            };
            s.put_app(&app, Some((APP_SEQ, id.to_be_bytes().to_vec())))?;
            Ok(app)
        })
        .await
    }

    async fn list_apps(&self) -> Result<Vec<App>> {
        let mut apps: Vec<App> = self
            .inner
            .apps
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        apps.sort_by_key(|a| a.id);
        Ok(apps)
    }

    async fn app(&self, key: &str) -> Result<Option<App>> {
        self.app_blocking(key)
    }

    async fn set_secret(&self, key: &str, secret: SecretHash) -> Result<App> {
        let key = key.to_owned();
        self.blocking(move |s| {
            let _guard = s.inner.admin.lock().expect("lock");
            let mut app = s
                .app_blocking(&key)?
                .ok_or_else(|| StoreError::AppNotFound(key.clone()))?;
            app.secret = secret;
            s.put_app(&app, None)?;
            Ok(app)
        })
        .await
    }

    async fn delete_app(&self, key: &str) -> Result<()> {
        let key = key.to_owned();
        self.blocking(move |s| {
            let _guard = s.inner.admin.lock().expect("lock");
            if s.app_blocking(&key)?.is_none() {
                return Err(StoreError::AppNotFound(key));
            }
            s.inner.meta.remove(format!("{APP_PREFIX}{key}"))?;
            s.inner.db.persist(PersistMode::SyncAll)?;
            s.inner.apps.write().expect("lock").remove(&key);
            Ok(())
        })
        .await
    }

    async fn ingest(&self, app: &App, events: Vec<Event>) -> Result<IngestOutcome> {
        self.writer.ingest(app.clone(), events, None).await
    }

    /// Encodes the messages' records (with their sequence left for the writer to fill in):
    /// ~9% of the writer's time when it did, reading each message's strings from cold memory.
    fn prepare(&self, app: &App, events: Vec<Event>) -> crate::Prepared {
        let mut r = crate::Records {
            arena: Vec::with_capacity(events.len() * 256),
            ranges: Vec::with_capacity(events.len()),
        };
        for ev in &events {
            let start = r.arena.len();
            if let Event::Message(m) = ev {
                imreport_domain::message::encode_record_ahead(m, &app.key, &mut r.arena);
            }
            r.ranges.push((start, r.arena.len()));
        }
        crate::Prepared {
            events,
            records: Some(r),
        }
    }

    async fn ingest_prepared(&self, app: &App, batch: crate::Prepared) -> Result<IngestOutcome> {
        self.writer
            .ingest(app.clone(), batch.events, batch.records)
            .await
    }

    async fn page(&self, app: &App, scope: &Scope, req: PageRequest) -> Result<Page> {
        let (app, scope) = (app.clone(), scope.clone());
        self.blocking(move |s| read::page(&s.inner, &app, &scope, req))
            .await
    }

    // Statistics read inline, unlike pages: one range scan of a small keyspace, bounded by the
    // retained days (or 24 hours), answered from memory in microseconds; handing it to the
    // blocking pool and back costs more than that (two thread wake-ups: most of a statistics
    // request's server time when it did).
    async fn stats_days(&self, app: &App, from: i64, to: i64) -> Result<DaysReport> {
        read::stats_days(&self.inner, app.id, from, to)
    }

    async fn stats_hours(&self, app: &App, from: i64, to: i64) -> Result<Vec<MsgCounts>> {
        read::stats_hours(&self.inner, app.id, from, to)
    }

    async fn busiest(&self, app: &App, day: i64, n: usize) -> Result<Busiest> {
        // A scan of every sender of the day: off the async workers.
        let app = app.id;
        self.blocking(move |s| read::busiest(&s.inner, app, day, n))
            .await
    }

    async fn backup(
        &self,
        out: tokio::sync::mpsc::Sender<crate::archive::BackupItem>,
    ) -> Result<()> {
        let apps = self.list_apps().await?;
        self.blocking(move |s| read::backup(&s.inner, apps, &out))
            .await
    }

    fn stats_retained_from(&self) -> i64 {
        self.inner
            .stats_horizon_day(self.inner.config.clock.now_ms())
    }

    async fn tidy(&self) -> Result<()> {
        // Its upkeep runs in its own threads (the tidy thread, fjall's flushes and merges).
        Ok(())
    }

    async fn enforce_retention(&self) -> Result<usize> {
        self.writer.retention().await
    }

    /// Reads state only: the writer thread's health and the disk's free space (a `statvfs`).
    /// Nothing is queued to the writer, so readiness probes cannot slow ingest.
    async fn check_ready(&self) -> Result<()> {
        self.writer.check_health()?;
        self.inner.check_free_space()
    }
}

#[cfg(test)]
mod tests;
