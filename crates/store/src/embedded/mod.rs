//! The embedded backend: one fjall database in the data directory, one writer thread that
//! group-commits ingest batches (one fsync for every request waiting), and reads on tokio's
//! blocking pool so that storage work never stalls the async workers.

mod fresh;
mod keys;
mod read;
mod stale;
mod writer;

use crate::window::Window;
use crate::{DaysReport, IngestOutcome, Page, PageRequest, Result, Store, StoreError};
use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use imreport_domain::app::{App, SecretHash};
use imreport_domain::event::Event;
use imreport_domain::rollup::MsgCounts;
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
    /// oldest hours are dropped beyond it and read from the store again when written.
    pub counter_cache_keys: usize,
    /// The format of the day partitions this creates: [`Format::LATEST`]; an earlier one only
    /// to test that partitions left by earlier versions are still read and written.
    pub partition_format: Format,
    /// From how many messages a scope's hour gets a counter (in [`Format::SparseCounters`]
    /// partitions): below it, counting the hour's index chunks is as cheap as reading a
    /// counter, and most scope-hours (a user in one message) never write one. Any value reads
    /// right; tests lower it to reach both sides.
    pub busy_hour: u64,
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
}

impl Format {
    pub const LATEST: Format = Format::SparseCounters;

    /// Marker keys, in format order: a partition holds those of its format and the ones before.
    const MARKERS: [(Format, &'static [u8]); 4] = [
        (Format::Minutes, keys::MINUTES),
        (Format::Chunks, keys::CHUNKS),
        (Format::Runs, keys::RUNS),
        (Format::SparseCounters, keys::SPARSE_COUNTERS),
    ];
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            retention_days: 60,
            queue_depth: 256,
            cache_bytes: 64 * 1024 * 1024,
            clock: Clock::System,
            tz: ReportTz::new("Asia/Shanghai").expect("bundled zone"),
            min_free_disk_bytes: 256 * 1024 * 1024,
            tidy_after: std::time::Duration::from_secs(5),
            counter_cache_keys: 256 * 1024,
            partition_format: Format::LATEST,
            busy_hour: 32,
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
    /// Message partitions by partition day (see [`Inner::pday`]).
    days: RwLock<BTreeMap<i64, Keyspace>>,
    /// The format of each partition in `days`.
    formats: RwLock<HashMap<i64, Format>>,
    /// Presence sets (active users, senders, active groups) by civil day.
    acts: RwLock<BTreeMap<i64, Keyspace>>,
    /// Partition days and retention horizons; the partition offset is the report zone's offset
    /// when the data dir was created, fixed forever (see [`Window`]).
    window: Window,
    /// First retained partition day, for the compaction filter that drops stale `ids` entries.
    ids_horizon: stale::Horizon,
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

    fn act(&self, day: i64) -> Result<Keyspace> {
        if let Some(ks) = self.acts.read().expect("lock").get(&day) {
            return Ok(ks.clone());
        }
        let ks = self.db.keyspace(&keys::act_name(day), ks_options)?;
        self.acts.write().expect("lock").insert(day, ks.clone());
        Ok(ks)
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

    fn day(&self, day: i64) -> Option<Keyspace> {
        self.days.read().expect("lock").get(&day).cloned()
    }

    fn day_or_create(&self, day: i64) -> Result<Keyspace> {
        if let Some(ks) = self.day(day) {
            return Ok(ks);
        }
        let ks = self.db.keyspace(&keys::day_name(day), day_options)?;
        let format = self.config.partition_format;
        for (f, marker) in Format::MARKERS {
            if f <= format {
                ks.insert(marker, b"")?;
            }
        }
        self.formats.write().expect("lock").insert(day, format);
        self.days.write().expect("lock").insert(day, ks.clone());
        Ok(ks)
    }
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
    use fjall::config::{BlockSizePolicy, CompressionPolicy, PinningPolicy};
    KeyspaceCreateOptions::default()
        .max_memtable_size(MEMTABLE_BYTES)
        .filter_block_pinning_policy(PinningPolicy::all(false))
        .index_block_pinning_policy(PinningPolicy::all(false))
        .data_block_compression_policy(CompressionPolicy::all(fjall::CompressionType::Lz4))
        .data_block_size_policy(BlockSizePolicy::all(16 * 1024))
}
/// Day partitions take a whole day's index entries in random key order, so every flushed
/// memtable overlaps all of level 1: letting more tables gather in level 0 before they are
/// merged divides how often the day is rewritten.
fn day_options() -> KeyspaceCreateOptions {
    ks_options().compaction_strategy(Arc::new(
        fjall::compaction::Leveled::default().with_l0_threshold(L0_TABLES),
    ))
}
const L0_TABLES: u8 = 16;
const PARTITION_OFFSET: &str = "partition_offset_ms";

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. Fails with `Locked` if another process has it open.
    pub fn open(dir: &Path, config: EmbeddedConfig) -> Result<Self> {
        crate::private_dir(dir)?;
        let path = dir.join("db");
        // Bounded memtables and journal: memory stays flat however many day partitions are
        // written (each would otherwise buffer up to 64 MiB until the journal reaches 512 MiB).
        let ids_horizon: stale::Horizon = Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN));
        let filter_horizon = ids_horizon.clone();
        type Assigner =
            Arc<dyn Fn(&str) -> Option<Arc<dyn fjall::compaction::filter::Factory>> + Send + Sync>;
        let assigner: Assigner = Arc::new(move |name: &str| {
            let horizon = filter_horizon.clone();
            match name {
                "ids" => Some(Arc::new(stale::StaleIds(horizon)) as _),
                "id-blocks" => Some(Arc::new(stale::StaleIdBlocks(horizon)) as _),
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
            .journal_compression(fjall::CompressionType::Lz4);
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
                formats.insert(day, format);
                days.insert(day, ks);
            } else if let Some(day) = keys::parse_act_name(&name) {
                acts.insert(day, db.keyspace(&name, ks_options)?);
            }
        }
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
            days: RwLock::new(days),
            formats: RwLock::new(formats),
            acts: RwLock::new(acts),
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
        self.writer.ingest(app.clone(), events).await
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

    fn stats_retained_from(&self) -> i64 {
        self.inner
            .stats_horizon_day(self.inner.config.clock.now_ms())
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
mod tests {
    use super::*;
    use imreport_domain::event::{IngestLimits, decode_batch};
    use imreport_domain::time::{MILLIS_PER_DAY, MILLIS_PER_HOUR, MILLIS_PER_MINUTE};

    const T0: i64 = 1_795_176_000_000;

    /// The tests' base settings: a manual clock at `T0`, and no free-disk reserve (temp dirs
    /// may sit on small disks).
    fn test_config() -> EmbeddedConfig {
        EmbeddedConfig {
            clock: Clock::manual(T0),
            min_free_disk_bytes: 0,
            ..Default::default()
        }
    }

    async fn store_with_app(dir: &Path, config: EmbeddedConfig) -> (EmbeddedStore, App) {
        let store = EmbeddedStore::open(dir, config).unwrap();
        let app = store
            .create_app("app", "app", SecretHash::new("secret-secret"))
            .await
            .unwrap();
        (store, app)
    }

    #[tokio::test]
    async fn retention_also_clears_the_duplicate_index_at_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let (store, app, clock) = two_day_store(dir.path()).await;
        assert_eq!(
            ingest(&store, &app, &[single(7, T0 - 1000, "b")])
                .await
                .accepted,
            1
        );
        let (block, _) = keys::id_block(app.id, 7);
        // And an entry in the index from before the blocks, of a message in the same day.
        let day = store.inner.pday(T0 - 1000);
        let legacy = keys::id_key(app.id, 9);
        store.inner.ids.insert(legacy, day.to_be_bytes()).unwrap();
        for ks in [&store.inner.id_blocks, &store.inner.ids] {
            ks.rotate_memtable_and_wait().unwrap();
            ks.major_compact().unwrap();
        }
        assert!(
            store.inner.id_blocks.get(block).unwrap().is_some(),
            "a retained message keeps its entry"
        );
        assert!(store.inner.ids.get(legacy).unwrap().is_some());
        clock.set(T0 + 5 * MILLIS_PER_DAY);
        assert_eq!(store.enforce_retention().await.unwrap(), 1);
        for ks in [&store.inner.id_blocks, &store.inner.ids] {
            ks.rotate_memtable_and_wait().unwrap();
            ks.major_compact().unwrap();
        }
        assert!(
            store.inner.id_blocks.get(block).unwrap().is_none(),
            "the stale block is gone after compaction"
        );
        assert!(
            store.inner.ids.get(legacy).unwrap().is_none(),
            "so is the stale entry"
        );
    }

    /// A block holding msgids of a dropped day and of a retained one keeps only the retained
    /// day's pair at compaction; the dropped msgid can be stored again, the retained one not.
    #[tokio::test]
    async fn a_duplicate_index_block_loses_only_the_days_retention_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (store, app, clock) = two_day_store(dir.path()).await;
        let ingest = async |lines: &[String]| ingest_at(&store, &app, clock.now_ms(), lines).await;
        let at = |msgid: u64, t: Millis| single(msgid, t, "b");
        assert_eq!(ingest(&[at(1, T0 - 1000)]).await.accepted, 1);
        // Both days retained here: the block gets a second pair.
        clock.set(T0 + MILLIS_PER_DAY);
        let late = T0 + MILLIS_PER_DAY - 1000;
        assert_eq!(ingest(&[at(2, late)]).await.accepted, 1);
        clock.set(T0 + 3 * MILLIS_PER_DAY);
        assert_eq!(store.enforce_retention().await.unwrap(), 1);
        let (block, _) = keys::id_block(app.id, 1);
        let pairs = |v: fjall::Slice| keys::id_block_pairs(&v).count();
        assert_eq!(pairs(store.inner.id_blocks.get(block).unwrap().unwrap()), 2);
        store.inner.id_blocks.rotate_memtable_and_wait().unwrap();
        store.inner.id_blocks.major_compact().unwrap();
        let pairs: Vec<(i64, u64)> =
            keys::id_block_pairs(&store.inner.id_blocks.get(block).unwrap().unwrap()).collect();
        assert_eq!(pairs, vec![(store.inner.pday(late), 1 << 2)]);
        let out = ingest(&[at(1, late), at(2, late)]).await;
        assert_eq!((out.accepted, out.duplicates), (1, 1));
    }

    /// A message whose duplicate-index entry was written before the blocks (one `ids` key per
    /// message) is still a duplicate, after a restart too.
    #[tokio::test]
    async fn an_entry_in_the_index_from_before_the_blocks_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (store, app) = store_with_app(dir.path(), test_config()).await;
        assert_eq!(
            ingest(&store, &app, &[message(5, "a", "g")]).await.accepted,
            1
        );
        // Rewrite its entry in the old form.
        let (block, _) = keys::id_block(app.id, 5);
        let day = store.inner.pday(T0 - 1000 + 5);
        store.inner.id_blocks.remove(block).unwrap();
        store
            .inner
            .ids
            .insert(keys::id_key(app.id, 5), day.to_be_bytes())
            .unwrap();
        drop(store);
        let store = reopen(dir.path(), test_config()).await;
        let out = ingest(&store, &app, &[message(5, "a", "g"), message(4, "a", "g")]).await;
        assert_eq!((out.accepted, out.duplicates), (1, 1));
    }

    fn message(msgid: u64, from: &str, group: &str) -> String {
        format!(
            r#"{{"event":"message","msgid":{msgid},"msg_ctime":{},"target_type":"group","target_id":"{group}","from_id":"{from}","msg_type":"text","msg_body":{{}}}}"#,
            T0 - 1000 + msgid as i64
        )
    }

    async fn ingest(store: &EmbeddedStore, app: &App, lines: &[String]) -> IngestOutcome {
        ingest_at(store, app, T0, lines).await
    }

    /// Ingests as the server would at `now` (events more than 5 minutes ahead are refused).
    async fn ingest_at(
        store: &EmbeddedStore,
        app: &App,
        now: Millis,
        lines: &[String],
    ) -> IngestOutcome {
        let body = lines.join("\n");
        let events = decode_batch(body.as_bytes(), "app", now, &IngestLimits::default()).unwrap();
        store.ingest(app, events).await.unwrap()
    }

    /// Ingests the odd lines, then the even ones: two commits covering the same span, so that
    /// their record runs and index chunks interleave. Returns how many were accepted.
    async fn ingest_interleaved(store: &EmbeddedStore, app: &App, lines: &[String]) -> u64 {
        let mut accepted = 0;
        for parity in [1, 0] {
            let part: Vec<String> = lines.iter().skip(parity).step_by(2).cloned().collect();
            accepted += ingest(store, app, &part).await.accepted;
        }
        accepted
    }

    /// A one-to-one message from `from` to `a` at `t`.
    fn single(msgid: u64, t: Millis, from: &str) -> String {
        format!(
            r#"{{"event":"message","msgid":{msgid},"msg_ctime":{t},"target_type":"single","target_id":"a","from_id":"{from}","msg_type":"text","msg_body":{{}}}}"#
        )
    }

    /// A store keeping 2 days, on a manual clock at `T0`.
    async fn two_day_store(dir: &Path) -> (EmbeddedStore, App, Clock) {
        let clock = Clock::manual(T0);
        let config = EmbeddedConfig {
            retention_days: 2,
            clock: clock.clone(),
            ..test_config()
        };
        let (store, app) = store_with_app(dir, config).await;
        (store, app, clock)
    }

    /// The writer's caches (msgids stored since start, presence sets it created) start empty
    /// after a restart: what it stored before must still count as stored.
    #[tokio::test]
    async fn a_restarted_writer_still_sees_what_was_stored_before() {
        let dir = tempfile::tempdir().unwrap();
        let (store, app) = store_with_app(dir.path(), test_config()).await;
        let first = [message(10, "a", "g1"), message(5, "b", "g1")];
        let out = ingest(&store, &app, &first).await;
        assert_eq!((out.accepted, out.duplicates), (2, 0));
        // Below the watermark, stored in this run: a duplicate without a restart too.
        let out = ingest(
            &store,
            &app,
            &[message(5, "b", "g1"), message(7, "b", "g2")],
        )
        .await;
        assert_eq!((out.accepted, out.duplicates), (1, 1));
        drop(store);

        let store = loop {
            match EmbeddedStore::open(dir.path(), test_config()) {
                Err(StoreError::Locked(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                other => break other.unwrap(),
            }
        };
        let again = [
            message(5, "b", "g1"),
            message(7, "b", "g2"),
            message(6, "c", "g1"),
            message(11, "a", "g3"),
        ];
        let out = ingest(&store, &app, &again).await;
        assert_eq!(
            (out.accepted, out.duplicates),
            (2, 2),
            "5 and 7 were stored before the restart"
        );
        let day = store.inner.config.tz.civil_day(T0);
        let report = store.stats_days(&app, day, day + 1).await.unwrap();
        let row = &report.days[0];
        assert_eq!(row.active_users, 3, "a, b and c, each once");
        assert_eq!(row.send_msg_users, 3);
        assert_eq!(row.active_groups, 3, "g1, g2, g3");
    }

    /// A day partition that goes quiet is merged into one level, and the tables it had are
    /// deleted from disk, its messages all still there.
    #[tokio::test]
    async fn a_quiet_day_partition_is_merged_and_its_old_tables_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedConfig {
            tidy_after: std::time::Duration::from_secs(1),
            ..test_config()
        };
        let (store, app) = store_with_app(dir.path(), config).await;
        for id in 1..=3 {
            ingest(&store, &app, &[message(id, "a", "g1")]).await;
            let day = *store.inner.days.read().unwrap().keys().next().unwrap();
            store
                .inner
                .day(day)
                .unwrap()
                .rotate_memtable_and_wait()
                .unwrap();
        }
        let (day, ks) = {
            let days = store.inner.days.read().unwrap();
            let (d, ks) = days.iter().next().unwrap();
            (*d, ks.clone())
        };
        // (Within `tidy_after` of the start: not merged yet.)
        assert_eq!(ks.table_count(), 3, "one table per flush");
        assert_eq!(ks.l0_table_count(), 2, "(the first went below level 0)");
        let files = || std::fs::read_dir(ks.path().join("tables")).unwrap().count();
        assert_eq!(files(), 3);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while ks.table_count() > 2 || files() != ks.table_count() {
            assert!(
                std::time::Instant::now() < deadline,
                "day {day} never merged"
            );
            drop(store.stall_writer()); // wakes the writer, which hands the day over
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(ks.l0_table_count() <= 1, "at most the flushed tombstone");
        let range = imreport_domain::time::TimeRange {
            begin: T0 - 10_000,
            end: T0,
        };
        let page = store
            .page(
                &app,
                &Scope::App,
                PageRequest {
                    range,
                    count: 100,
                    after: None,
                    snapshot: 0,
                    total: 0,
                },
            )
            .await
            .unwrap();
        assert_eq!(page.total, 3);
        assert_eq!(page.count, 3);
    }

    async fn reopen(dir: &Path, config: EmbeddedConfig) -> EmbeddedStore {
        loop {
            match EmbeddedStore::open(dir, config.clone()) {
                Err(StoreError::Locked(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                other => break other.unwrap(),
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]
        /// Whatever the writer keeps of the per-hour scope counts in memory (down to nothing),
        /// each stored counter equals the count of the stored messages, and each scope's hour
        /// counts them all, through batches in any time order and a restart; in sparse
        /// partitions, exactly the hours of `busy` messages or more of scopes other than the
        /// app have a counter (messages crowd 2 hours or spread over 60).
        #[test]
        fn every_scope_counter_counts_its_messages(
            msgs in proptest::collection::vec((0i64..60, 0u8..4, 0u8..3, 0u8..3), 1..160),
            cuts in proptest::collection::vec(1usize..40, 1..8),
            cache in 0usize..12,
            restart_after in proptest::option::of(0usize..8),
            format in proptest::sample::select(vec![Format::Minutes, Format::Chunks, Format::Runs, Format::SparseCounters]),
            busy in proptest::sample::select(vec![1u64, 3, 32]),
            span in proptest::sample::select(vec![2i64, 60]),
        ) {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let config = EmbeddedConfig {
                    counter_cache_keys: cache,
                    partition_format: format,
                    busy_hour: busy,
                    ..test_config()
                };
                let (mut store, app) = store_with_app(dir.path(), config.clone()).await;
                let lines: Vec<String> = msgs
                    .iter()
                    .enumerate()
                    .map(|(i, (hour, from, kind, to))| {
                        let (tt, target) = match kind {
                            0 => ("single", format!("u{to}")),
                            1 => ("group", format!("g{to}")),
                            _ => ("chatroom", format!("c{to}")),
                        };
                        format!(
                            r#"{{"event":"message","msgid":{},"msg_ctime":{},"target_type":"{tt}","target_id":"{target}","from_id":"u{from}","msg_type":"text","msg_body":{{}}}}"#,
                            i + 1,
                            T0 - 61 * MILLIS_PER_HOUR + (hour % span) * MILLIS_PER_HOUR + i as i64
                        )
                    })
                    .collect();
                let mut model: std::collections::HashMap<(i64, Vec<u8>), u64> = Default::default();
                // Messages by scope and hour, as `total` must count them.
                let mut hours: std::collections::HashMap<(Scope, u32), u64> = Default::default();
                let events =
                    decode_batch(lines.join("\n").as_bytes(), "app", T0, &IngestLimits::default())
                        .unwrap();
                for ev in events {
                    let imreport_domain::event::Event::Message(m) = ev else { unreachable!() };
                    let day = store.inner.pday(m.msg_ctime);
                    let hour = (m.msg_ctime / MILLIS_PER_HOUR) as u32;
                    for scope in std::iter::once(Scope::App).chain(m.scopes()) {
                        let key = keys::counter_key(&keys::scope_prefix(keys::CNT, app.id, &scope), hour);
                        *model.entry((day, key)).or_default() += 1;
                        *hours.entry((scope, hour)).or_default() += 1;
                    }
                    let minute = (m.msg_ctime / MILLIS_PER_MINUTE) as u32;
                    *model
                        .entry((day, keys::minute_counter_key(app.id, minute).to_vec()))
                        .or_default() += 1;
                }
                let (mut at, mut batch) = (0, 0);
                while at < lines.len() {
                    let n = cuts[batch % cuts.len()].min(lines.len() - at);
                    assert_eq!(ingest(&store, &app, &lines[at..at + n]).await.accepted, n as u64);
                    at += n;
                    if restart_after == Some(batch) {
                        drop(store);
                        store = reopen(dir.path(), config.clone()).await;
                    }
                    batch += 1;
                }
                // In sparse partitions, a scope's hour below `busy` has no counter.
                let app_scope = keys::scope_prefix(keys::CNT, app.id, &Scope::App);
                model.retain(|(_, key), n| {
                    format < Format::SparseCounters
                        || key[0] == keys::MIN_CNT
                        || key.starts_with(&app_scope)
                        || *n >= busy
                });
                for ((day, key), n) in &model {
                    let stored = store.inner.day(*day).unwrap().get(key).unwrap();
                    assert_eq!(stored.map(|v| keys::u64_value(&v)), Some(*n));
                }
                for ((scope, hour), n) in &hours {
                    let start = i64::from(*hour) * MILLIS_PER_HOUR;
                    let total = scope_total(&store, &app, scope, start, start + MILLIS_PER_HOUR - 1);
                    assert_eq!(total.await, *n, "{scope:?} hour {hour}");
                }
                let stored: usize = store
                    .inner
                    .days
                    .read()
                    .unwrap()
                    .values()
                    .map(|ks| ks.prefix([keys::CNT]).count() + ks.prefix([keys::MIN_CNT]).count())
                    .sum();
                assert_eq!(stored, model.len(), "no counter beyond the model's");
            });
        }
    }

    async fn app_total(store: &EmbeddedStore, app: &App, begin: Millis, end: Millis) -> u64 {
        scope_total(store, app, &Scope::App, begin, end).await
    }

    async fn scope_total(
        store: &EmbeddedStore,
        app: &App,
        scope: &Scope,
        begin: Millis,
        end: Millis,
    ) -> u64 {
        let req = PageRequest {
            range: imreport_domain::time::TimeRange { begin, end },
            count: 1,
            after: None,
            snapshot: 0,
            total: 0,
        };
        store.page(app, scope, req).await.unwrap().total
    }

    /// A window's partial hours are counted from minute counters where a partition has them,
    /// and by scanning in partitions from before they existed (counting keys, or the records
    /// of runs): the same totals in every format. A user's partial hours (no minute counters)
    /// are scanned when short and counted as the hour's counter minus the rest of the hour
    /// when long (the hour's count read from its last index chunk, in counted partitions): the
    /// same totals as the app's here, where the user is in every message.
    #[tokio::test]
    async fn partial_hours_count_the_same_in_every_format() {
        let base = T0 - 3 * MILLIS_PER_HOUR;
        // Spread over three hours, plus messages on each side of some minute boundaries.
        let mut times: Vec<Millis> = (0..400)
            .map(|i| base + i * 25_013 % (3 * MILLIS_PER_HOUR))
            .collect();
        for k in [1, 2, 3, 30, 50, 51, 59, 60, 61, 70, 119, 120, 150] {
            let edge = base + k * MILLIS_PER_MINUTE;
            times.extend([edge - 1, edge, edge + 999, edge + 1000]);
        }
        let lines: Vec<String> = times
            .iter()
            .enumerate()
            .map(|(i, t)| {
                format!(
                    r#"{{"event":"message","msgid":{},"msg_ctime":{t},"target_type":"single","target_id":"a","from_id":"b","msg_type":"text","msg_body":{{}}}}"#,
                    i + 1
                )
            })
            .collect();
        // Second-aligned windows, as the API takes them: inside one minute, across minutes,
        // across an hour boundary, and over whole hours with partial edges.
        let windows: Vec<(Millis, Millis)> = [
            (61, 119),
            (60, 179),
            (61, 1799),
            (120, 3599),
            (3001, 4200),
            (3540, 7259),
            (59, 3 * 3600 - 61),
            (0, 3 * 3600 - 1),
            (1, 3598),
            (1800, 5000),
            (1799, 3600),
            (3599, 3600),
            (3599, 7201),
        ]
        .iter()
        .map(|(b, e)| (base + b * 1000, base + e * 1000 + 999))
        .collect();
        let want: Vec<u64> = windows
            .iter()
            .map(|(b, e)| times.iter().filter(|t| (b..=e).contains(t)).count() as u64)
            .collect();
        let user = Scope::User("b".into());
        for format in [
            Format::Plain,
            Format::Minutes,
            Format::Chunks,
            Format::Runs,
            Format::SparseCounters,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let config = EmbeddedConfig {
                partition_format: format,
                ..test_config()
            };
            let (store, app) = store_with_app(dir.path(), config.clone()).await;
            ingest_interleaved(&store, &app, &lines).await;
            drop(store);
            let store = reopen(dir.path(), config).await;
            assert_eq!(
                store.inner.all_at_least(Format::Minutes, base, T0 - 1),
                format >= Format::Minutes
            );
            for ((b, e), want) in windows.iter().zip(&want) {
                let at = format!("{format:?} {b}..={e}");
                assert_eq!(app_total(&store, &app, *b, *e).await, *want, "{at}");
                assert_eq!(
                    scope_total(&store, &app, &user, *b, *e).await,
                    *want,
                    "user {at}"
                );
            }
        }
    }

    /// Walks of the app's and a user's messages across partitions of every format still
    /// written (one index key and one record per message; index chunks; record runs; chunks
    /// carrying counts), in pages
    /// of every size: every message once, in order, with the right total, whether the window's
    /// edges cut hours or not. Each later partition is written in commits that interleave in
    /// time, so that runs and chunks of one hour overlap.
    #[tokio::test]
    async fn walks_read_partitions_of_every_format_alike() {
        let dir = tempfile::tempdir().unwrap();
        let formats = [
            Format::Minutes,
            Format::Chunks,
            Format::Runs,
            Format::SparseCounters,
        ];
        let line = |msgid: u64, t: Millis, from: &str| single(msgid, t, from);
        // Per format, a partition day: fours of messages 0, 5, 10 and 10 s after the fours'
        // start (the last two sharing a millisecond); msgids out of time order; every fourth
        // message from someone else.
        let mut all: Vec<(Millis, u64, bool)> = Vec::new();
        let mut app = None;
        for (f, format) in formats.iter().enumerate() {
            let config = EmbeddedConfig {
                partition_format: *format,
                ..test_config()
            };
            let (store, a) = match app.take() {
                None => store_with_app(dir.path(), config).await,
                Some(a) => (reopen(dir.path(), config).await, a),
            };
            let day = T0 - (formats.len() - f) as i64 * MILLIS_PER_DAY;
            let msgs: Vec<(Millis, u64, bool)> = (0..90)
                .map(|i| {
                    let t = day + (i / 4) * 300_007 + [0, 5_000, 10_000, 10_000][i as usize % 4];
                    (t, 1000 * (f as u64 + 1) - i as u64, i % 4 != 0)
                })
                .collect();
            let lines: Vec<String> = msgs
                .iter()
                .map(|(t, m, b)| line(*m, *t, if *b { "b" } else { "other" }))
                .collect();
            let accepted = ingest_interleaved(&store, &a, &lines).await;
            assert_eq!(accepted, lines.len() as u64);
            assert_eq!(store.inner.format(store.inner.pday(day)), *format);
            all.extend(msgs);
            app = Some(a);
            drop(store);
        }
        let store = reopen(dir.path(), test_config()).await;
        let app = app.unwrap();
        all.sort();
        // The first and last partition days.
        let (d0, d2) = (
            T0 - formats.len() as i64 * MILLIS_PER_DAY,
            T0 - MILLIS_PER_DAY,
        );
        for (begin, end) in [
            (d0 - MILLIS_PER_DAY, T0),
            (d0 + 300_007 * 7 + 1, d2 + 300_007 * 20 - 1),
            (d0 + 300_007 * 20, d2 + 300_007 * 2),
            (d2 + 300_007 * 4 + 3_500, d2 + 300_007 * 4 + 12_000),
        ] {
            for scope in [Scope::User("b".into()), Scope::User("a".into()), Scope::App] {
                let want: Vec<(Millis, u64)> = all
                    .iter()
                    .filter(|(t, _, b)| {
                        (begin..=end).contains(t) && (*b || scope != Scope::User("b".into()))
                    })
                    .map(|(t, m, _)| (*t, *m))
                    .collect();
                for count in [1u16, 4, 1000] {
                    let mut got = Vec::new();
                    let mut req = PageRequest {
                        range: imreport_domain::time::TimeRange { begin, end },
                        count,
                        after: None,
                        snapshot: 0,
                        total: 0,
                    };
                    loop {
                        let page = store.page(&app, &scope, req).await.unwrap();
                        assert_eq!(page.total, want.len() as u64, "{scope:?} {begin}..={end}");
                        let json: Vec<serde_json::Value> =
                            serde_json::from_slice(&[b"[", &page.json[..], b"]"].concat()).unwrap();
                        got.extend(json.iter().map(|m| {
                            (
                                m["msg_ctime"].as_i64().unwrap(),
                                m["msgid"].as_u64().unwrap(),
                            )
                        }));
                        match page.next {
                            Some(p) => {
                                req.after = Some(p);
                                req.snapshot = page.snapshot;
                                req.total = page.total;
                            }
                            None => break,
                        }
                    }
                    assert_eq!(got, want, "{scope:?} {begin}..={end} by {count}");
                }
            }
        }
    }
}
