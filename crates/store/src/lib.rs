//! imreport's storage layer: the domain-level [`Store`] trait that the server talks to, and its
//! backends. The embedded backend ([`embedded::EmbeddedStore`], on fjall) is the default; the
//! PostgreSQL backend ([`postgres::PostgresStore`]) lets stateless servers share one database.

pub mod apps;
pub mod archive;
pub mod embedded;
pub mod postgres;
pub mod priority;
pub mod window;

/// A user's, group's or chatroom's hour gets its own message counter once it holds this many
/// messages (both backends); a quieter hour is counted from its index entries, a few dozen at
/// most, so most scope-hours (a user in one message) never write one.
pub const BUSY_HOUR: u64 = 32;

use async_trait::async_trait;
use imreport_domain::app::{App, SecretHash};
use imreport_domain::cursor::{Position, Snapshot};
use imreport_domain::event::Event;
use imreport_domain::rollup::{Busiest, DayStats, MsgCounts};
use imreport_domain::scope::Scope;
use imreport_domain::time::TimeRange;
use serde::Serialize;
use std::sync::Arc;

/// What the store can fail with. Callers act on the first variants (through to `Invalid`); the
/// rest are the unexpected, each with its source. Clone, because one failed commit of the
/// embedded writer answers every request of its group.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("an app with key {0:?} already exists")]
    AppExists(String),
    #[error("no app has key {0:?}")]
    AppNotFound(String),
    #[error("the ingest queue is full; retry shortly")]
    Overloaded,
    #[error(
        "the data directory {0} is in use by another imreport process; stop it first, or use another --data-dir"
    )]
    Locked(String),
    #[error("the store is shutting down")]
    ShuttingDown,
    #[error("the data directory's disk is (nearly) full: {0}")]
    DiskFull(String),
    /// What the caller sent cannot be stored as sent (nothing of it was): a client error.
    #[error("{0}")]
    Invalid(#[from] imreport_domain::Error),
    /// The store is open but cannot take writes now (a read-only standby, a failed commit).
    #[error("not ready: {0}")]
    NotReady(String),
    /// The embedded storage engine failed.
    #[error("storage engine: {0}")]
    Engine(#[source] Arc<fjall::Error>),
    /// PostgreSQL answered with an error.
    #[error("postgres: {0}")]
    Postgres(#[source] Arc<tokio_postgres::Error>),
    /// The database cannot be reached or cannot take writes now (a connection lost or refused,
    /// a server shutting down, a primary demoted to a standby): nothing of the request was
    /// stored, and the same request may succeed in a moment, on a new connection (to the new
    /// primary, with a multi-host URL and `target_session_attrs=read-write`).
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] Arc<tokio_postgres::Error>),
    /// A day partition a write needed was dropped meanwhile (by another server's retention).
    #[error("a partition was dropped meanwhile: {0}")]
    PartitionGone(#[source] Arc<tokio_postgres::Error>),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Stored data that cannot be read: a bug or a damaged disk.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// Settings the store cannot work with (a URL, a schema name, a schema version).
    #[error("{0}")]
    Config(String),
    /// A store thread or task could not start or ended abnormally, or a store limit was reached.
    #[error("{0}")]
    Internal(String),
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Engine(Arc::new(e))
    }
}

impl StoreError {
    /// A file operation's failure, saying what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            what: what.into(),
            source: Arc::new(source),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Creates a data directory readable by its owner only, and takes group and other access off
/// everything already in it (a data dir from a version that left it world-readable): messages
/// and secret hashes are nobody else's business.
pub fn private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let fail = |e: std::io::Error| StoreError::io(format!("cannot secure {}", dir.display()), e);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(fail)?;
    // Files may come and go meanwhile (a store still closing in this process): what vanished
    // needs no tightening.
    let gone = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = match std::fs::read_dir(&d) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            other => other.map_err(fail)?,
        };
        for entry in entries {
            let entry = entry.map_err(fail)?;
            let meta = match entry.metadata() {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                other => other.map_err(fail)?,
            };
            if meta.is_dir() {
                pending.push(entry.path());
            }
            gone(tighten(&entry.path(), &meta)).map_err(fail)?;
        }
    }
    let meta = std::fs::metadata(dir).map_err(fail)?;
    return tighten(dir, &meta).map_err(fail);

    fn tighten(path: &std::path::Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 && !meta.file_type().is_symlink() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o077))?;
        }
        Ok(())
    }
}

/// The result of one ingest request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct IngestOutcome {
    pub accepted: u64,
    pub duplicates: u64,
    pub expired: u64,
}

impl std::ops::AddAssign for IngestOutcome {
    fn add_assign(&mut self, o: IngestOutcome) {
        self.accepted += o.accepted;
        self.duplicates += o.duplicates;
        self.expired += o.expired;
    }
}

/// One page of history, its messages already in wire JSON.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Messages matching the whole query (as of `snapshot`).
    pub total: u64,
    /// The commits the walk reads; messages committed later are not part of it.
    pub snapshot: Snapshot,
    /// Number of messages in `json`.
    pub count: usize,
    /// The page's message objects, comma-separated (the inside of a JSON array).
    pub json: Vec<u8>,
    /// Where the next page starts, when more messages remain.
    pub next: Option<Position>,
}

/// Day rollups and the totals they continue from.
#[derive(Debug, Clone, Default)]
pub struct DaysReport {
    pub days: Vec<DayStats>,
    pub users_before: i64,
    pub groups_before: i64,
}

impl DaysReport {
    /// The report of civil days `from..=to` from the stored day rows of `from` on (later days
    /// included: what they added to the totals is taken off) and the all-time totals of users
    /// and groups: the arithmetic of `total_*`, written once for every backend.
    pub fn assemble(
        from: i64,
        to: i64,
        rows: impl IntoIterator<Item = (i64, DayStats)>,
        (users, groups): (i64, i64),
    ) -> Self {
        let n = usize::try_from(to - from + 1).unwrap_or(0);
        let mut days = vec![DayStats::default(); n];
        let (mut net_users, mut net_groups) = (0i64, 0i64);
        for (day, row) in rows {
            if day < from {
                continue;
            }
            net_users += row.net_users;
            net_groups += row.net_groups;
            if day <= to {
                days[(day - from) as usize] = row;
            }
        }
        DaysReport {
            days,
            users_before: users - net_users,
            groups_before: groups - net_groups,
        }
    }
}

/// Where the walk stands when a page is asked for.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub range: TimeRange,
    pub count: u16,
    /// `None` for the first page.
    pub after: Option<Position>,
    /// For next pages: the walk's snapshot and carried total.
    pub snapshot: Snapshot,
    pub total: u64,
}

/// A batch made ready to store by [`Store::prepare`].
pub struct Prepared {
    pub(crate) events: Vec<Event>,
    /// The embedded store's: each message's record, encoded ahead.
    pub(crate) records: Option<Records>,
}

/// Messages' records encoded ahead ([`imreport_domain::message::encode_record_ahead`]): by
/// event index, where each lies in `arena` (empty for the other events).
pub(crate) struct Records {
    pub(crate) arena: Vec<u8>,
    pub(crate) ranges: Vec<(usize, usize)>,
}

/// The domain-level storage interface. Every backend implements it; the server knows nothing else.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Adds an app; `AppExists` if its key is taken.
    async fn create_app(&self, key: &str, name: &str, secret: SecretHash) -> Result<App>;
    async fn list_apps(&self) -> Result<Vec<App>>;
    async fn app(&self, key: &str) -> Result<Option<App>>;
    async fn set_secret(&self, key: &str, secret: SecretHash) -> Result<App>;
    /// Removes an app: its credentials stop working at once; its data ages out with retention.
    async fn delete_app(&self, key: &str) -> Result<()>;

    /// Stores a validated batch atomically and durably: when this returns `Ok`, every event is on
    /// disk; on `Err`, none is.
    async fn ingest(&self, app: &App, events: Vec<Event>) -> Result<IngestOutcome>;

    /// Does the work of storing a batch that needs nothing of the store's state, on the
    /// caller's thread: the server calls it where it decodes the batch, below the queries'
    /// priority, so that less is left for the store's serial stage. Nothing by default.
    fn prepare(&self, app: &App, events: Vec<Event>) -> Prepared {
        let _ = app;
        Prepared {
            events,
            records: None,
        }
    }

    /// [`Store::ingest`] of a batch [`Store::prepare`] made (for this store and app).
    async fn ingest_prepared(&self, app: &App, batch: Prepared) -> Result<IngestOutcome> {
        self.ingest(app, batch.events).await
    }

    /// One page of a scope's history.
    async fn page(&self, app: &App, scope: &Scope, req: PageRequest) -> Result<Page>;

    /// Rollups of civil days `from..=to` of the report zone, one per day (zeros where nothing
    /// happened), with the users and groups that existed at the end of the day before `from`.
    async fn stats_days(&self, app: &App, from: i64, to: i64) -> Result<DaysReport>;

    /// Message counts of civil hours `from..=to`, one per hour.
    async fn stats_hours(&self, app: &App, from: i64, to: i64) -> Result<Vec<MsgCounts>>;

    /// The `n` busiest senders and groups of civil day `day` (see [`Busiest`]), from the tallies
    /// kept at ingest.
    async fn busiest(&self, app: &App, day: i64, n: usize) -> Result<Busiest>;

    /// Sends every app (with its secret hash) and then its events, as of one instant: every
    /// batch committed before it and no part of any later one (see [`archive`]). Stops with an
    /// error when the receiver goes away.
    async fn backup(&self, out: tokio::sync::mpsc::Sender<archive::BackupItem>) -> Result<()>;

    /// The first civil day whose statistics are still retained.
    fn stats_retained_from(&self) -> i64;

    /// Drops data older than the retention window; returns how many day partitions went.
    async fn enforce_retention(&self) -> Result<usize>;

    /// Upkeep that keeps reads fast and never changes an answer, run every few seconds (the
    /// PostgreSQL backend counts finished hours ahead of reads; the embedded store does its own
    /// in its own threads).
    async fn tidy(&self) -> Result<()>;

    /// `Ok` when the store is open and accepts writes.
    async fn check_ready(&self) -> Result<()>;
}
