//! The PostgreSQL backend: stateless imreport servers over one shared database (or Citus).
//!
//! Every ingest request is one transaction that first updates its app's `app_state` row: that
//! row lock orders one app's ingests (exactly like the embedded store's single writer), so
//! duplicate checks, server-assigned msgids, presence sets and read-modify-write rollups stay
//! exact however many servers write at once, while different apps ingest in parallel. History
//! reads run in read-only REPEATABLE READ transactions, so a first page's `total`, snapshot
//! sequence and messages come from one consistent view.

pub mod fold;
mod read;
pub mod schema;
mod standby;
mod vacuum;
mod write;

use crate::window::Window;
use crate::{DaysReport, IngestOutcome, Page, PageRequest, Result, Store, StoreError};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use imreport_domain::Clock;
use imreport_domain::app::{App, SecretHash};
use imreport_domain::event::Event;
use imreport_domain::rollup::{Busiest, MsgCounts};
use imreport_domain::scope::Scope;
use imreport_domain::time::ReportTz;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::NoTls;

/// Rows carry the id of the transaction that wrote them, moved up by `2^62`: above every commit
/// sequence number earlier versions wrote (so those rows stay visible to every walk), and below
/// `2^63`. A walk sees the rows its first page's snapshot saw (see [`walk_snapshot`]).
pub(crate) const XID_BASE: i64 = 1 << 62;

pub(crate) fn commit_seq(xid: i64) -> i64 {
    XID_BASE + xid
}

/// A walk's snapshot from PostgreSQL's (`pg_current_snapshot()` as text, `xmin:xmax:xip,...`):
/// the rows of transactions below `xmax` and not in flight.
pub(crate) fn walk_snapshot(pg: &str) -> Result<imreport_domain::cursor::Snapshot> {
    let bad = || StoreError::Internal(format!("unexpected snapshot from PostgreSQL: {pg:?}"));
    let mut parts = pg.split(':');
    let (_, xmax, xip) = (
        parts.next(),
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
    );
    let xmax: i64 = xmax.parse().map_err(|_| bad())?;
    let pending = xip
        .split(',')
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<i64>()
                .map(|x| commit_seq(x) as u64)
                .map_err(|_| bad())
        })
        .collect::<Result<Vec<u64>>>()?;
    Ok(imreport_domain::cursor::Snapshot {
        upto: (commit_seq(xmax) - 1) as u64,
        pending,
    })
}

/// Settings of the PostgreSQL backend.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/db` (libpq URL or key=value form).
    pub url: String,
    /// Schema to keep imreport's tables in (created if missing); `None`: the URL's search_path.
    pub schema: Option<String>,
    /// Most connections this server opens.
    pub pool_size: usize,
    /// Days of messages kept.
    pub retention_days: u32,
    pub clock: Clock,
    /// The report time zone: statistics are bucketed in its civil hours and days.
    pub tz: ReportTz,
    /// A user's, group's or chatroom's counted hour keeps a counter once it holds this many
    /// messages; quieter hours are counted from their index rows (see `fold.rs`). Any value
    /// reads right; tests lower it to reach both sides.
    pub busy_hour: u64,
    /// Hot standbys of the database to read history and statistics from (URLs), ingest and
    /// upkeep staying on `url`'s primary (see `standby.rs`).
    pub standbys: Vec<String>,
    /// Furthest a standby may lag the primary and still serve first pages and statistics.
    pub standby_max_lag: Duration,
}

/// Maps a database error to the store's errors by its SQLSTATE: a full disk is `DiskFull`, a
/// row with no partition to go to (the schema has no other checks) `PartitionGone`, a broken or
/// refused connection, a server shutting down or a read-only one `Unavailable`, and everything
/// else `Postgres`.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    if unavailable(&e) {
        return StoreError::Unavailable(Arc::new(e));
    }
    match e.code() {
        Some(c) if *c == SqlState::DISK_FULL => StoreError::DiskFull(
            e.as_db_error()
                .map_or_else(|| e.to_string(), |db| db.message().to_owned()),
        ),
        Some(c) if *c == SqlState::CHECK_VIOLATION => StoreError::PartitionGone(Arc::new(e)),
        _ => StoreError::Postgres(Arc::new(e)),
    }
}

/// The connection is gone or was never made (no SQLSTATE: closed, an I/O error, a timeout), or
/// the server says it cannot serve now: connection exceptions (class 08), an operator or crash
/// shutdown, still starting, or read-only (a standby, or a primary demoted to one).
fn unavailable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    match e.code() {
        None => e.as_db_error().is_none(),
        Some(c) => {
            c.code().starts_with("08")
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::READ_ONLY_SQL_TRANSACTION
        }
    }
}

/// A deadlock victim, a serialization failure or a lock timeout: the same transaction may
/// succeed when run again.
pub(crate) fn retryable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(e.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
        || *c == SqlState::T_R_SERIALIZATION_FAILURE
        || *c == SqlState::LOCK_NOT_AVAILABLE)
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        // Every connection busy for the whole wait: the database is the bottleneck; shed load.
        PoolError::Timeout(_) => StoreError::Overloaded,
        PoolError::Backend(e) => pg_error(e),
        other => StoreError::Internal(format!("postgres connection pool: {other}")),
    }
}

pub(crate) struct Inner {
    pool: Pool,
    standbys: standby::Standbys,
    config: PostgresConfig,
    window: Window,
    /// Partition days known to exist (messages and msg_index; presence by civil day), so that
    /// ingest creates a partition only the first time it needs one.
    pdays: Mutex<BTreeSet<i64>>,
    cdays: Mutex<BTreeSet<i64>>,
    fold_seen: Mutex<fold::Seen>,
    /// Each folder pass's msgid watermarks, oldest first (see `fold::clear_claims`).
    claim_marks: Mutex<std::collections::VecDeque<fold::ClaimMarks>>,
    /// A Citus coordinator: its tables are the workers' shards.
    citus: bool,
    vacuum_seen: Mutex<vacuum::Seen>,
}

/// The PostgreSQL store. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

const PARTITION_OFFSET: &str = "partition_offset_ms";

fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    url.parse()
        .map_err(|e| StoreError::Config(format!("invalid PostgreSQL URL: {e}")))
}

/// A connection pool on `pg` whose sessions use `schema`, created first when `create` says
/// so (on the primary; a standby only reads it).
async fn connect_pool(
    mut pg: tokio_postgres::Config,
    schema: Option<&str>,
    size: usize,
    create: bool,
) -> Result<Pool> {
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(10));
    }
    if let Some(schema) = schema
        && create
    {
        let (client, conn) = pg.connect(NoTls).await.map_err(pg_error)?;
        let task = tokio::spawn(conn);
        // Two servers creating it at once: one wins, the other sees it exist.
        let created = client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await;
        if let Err(e) = created {
            let exists = client
                .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
                .await
                .map_err(pg_error)?;
            if exists.is_none() {
                return Err(pg_error(e));
            }
        }
        drop(client);
        let _ = task.await;
    }
    // JIT compiling a query costs ~20 ms; the planner reaches for it on a range count over
    // every day partition whose rows it cannot foresee, when the count itself takes 0.3 ms.
    // After any options the URL gives.
    let mut options = pg
        .get_options()
        .map(|o| format!("{o} "))
        .unwrap_or_default();
    options.push_str("-c jit=off");
    if let Some(schema) = schema {
        options.push_str(&format!(" -c search_path={schema}"));
    }
    pg.options(options);
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(2))
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Config(format!("postgres connection pool: {e}")))
}

fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

impl PostgresStore {
    /// Connects, creates the schema if asked to, and applies pending migrations.
    pub async fn connect(config: PostgresConfig) -> Result<Self> {
        let schema = config.schema.as_deref();
        if let Some(schema) = schema
            && !valid_schema(schema)
        {
            return Err(StoreError::Config(format!(
                "invalid schema name {schema:?}: use lowercase letters, digits and _"
            )));
        }
        let pool = connect_pool(parse_url(&config.url)?, schema, config.pool_size, true).await?;
        let mut standbys = Vec::new();
        for url in &config.standbys {
            let pg = parse_url(url)?;
            let name = standby::name(&pg);
            standbys.push((
                name,
                connect_pool(pg, schema, config.pool_size, false).await?,
            ));
        }
        let mut client = pool.get().await.map_err(pool_error)?;
        schema::migrate(&mut client).await?;
        let citus = schema::has_citus(&client).await?;
        if !standbys.is_empty() && citus {
            // A walk's snapshot is its app's worker's, which a coordinator's standby lacks.
            return Err(StoreError::Config(
                "read replicas (standbys) are not supported on Citus; read from the coordinator"
                    .into(),
            ));
        }
        let offset = i64::from(config.tz.offset_secs(config.clock.now_ms())) * 1000;
        client
            .execute(
                "INSERT INTO imreport_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&PARTITION_OFFSET, &offset.to_string()],
            )
            .await
            .map_err(pg_error)?;
        let stored: String = client
            .query_one(
                "SELECT value FROM imreport_meta WHERE key = $1",
                &[&PARTITION_OFFSET],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        let partition_offset_ms = stored
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("{PARTITION_OFFSET}: {stored:?}")))?;
        drop(client);
        let window = Window {
            retention_days: config.retention_days,
            partition_offset_ms,
            tz: config.tz.clone(),
        };
        let watched = !standbys.is_empty();
        let store = PostgresStore {
            inner: Arc::new(Inner {
                pool,
                standbys: standby::Standbys::new(standbys, config.standby_max_lag),
                config,
                window,
                pdays: Mutex::new(BTreeSet::new()),
                cdays: Mutex::new(BTreeSet::new()),
                fold_seen: Mutex::new(Default::default()),
                claim_marks: Mutex::new(Default::default()),
                citus,
                vacuum_seen: Mutex::new(Default::default()),
            }),
        };
        if watched {
            tokio::spawn(standby::watch(Arc::downgrade(&store.inner)));
        }
        Ok(store)
    }

    pub(crate) async fn client(&self) -> Result<Object> {
        self.inner.pool.get().await.map_err(pool_error)
    }

    /// A secret shared by every server on this database (e.g. the cursor key): read it, or store
    /// `generate()` if none is stored yet. The first server to store one wins.
    pub async fn shared_secret(
        &self,
        name: &str,
        generate: impl FnOnce() -> String,
    ) -> Result<String> {
        let client = self.client().await?;
        let key = format!("secret.{name}");
        client
            .execute(
                "INSERT INTO imreport_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &generate()],
            )
            .await
            .map_err(pg_error)?;
        Ok(client
            .query_one("SELECT value FROM imreport_meta WHERE key = $1", &[&key])
            .await
            .map_err(pg_error)?
            .get(0))
    }

    /// The day partitions of the messages table.
    pub async fn day_partitions(&self) -> Result<usize> {
        let client = self.client().await?;
        Ok(schema::partitions(&client, "messages").await?.len())
    }

    /// Bytes the store's tables and indexes take on disk.
    pub async fn disk_space(&self) -> Result<u64> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm', 't')",
                &[],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Makes sure the day partitions exist. Creating one locks its parent table briefly, so it
    /// happens once per day and table (retention also creates the next days' ahead of time);
    /// servers creating the same partition at once serialize on an advisory lock.
    pub(crate) async fn ensure_partitions(
        &self,
        pdays: &BTreeSet<i64>,
        cdays: &BTreeSet<i64>,
    ) -> Result<()> {
        let missing = |known: &Mutex<BTreeSet<i64>>, wanted: &BTreeSet<i64>| -> Vec<i64> {
            let known = known.lock().expect("lock");
            wanted.difference(&known).copied().collect()
        };
        let missing_p = missing(&self.inner.pdays, pdays);
        let missing_c = missing(&self.inner.cdays, cdays);
        if missing_p.is_empty() && missing_c.is_empty() {
            return Ok(());
        }
        let mut statements = Vec::new();
        for &day in &missing_p {
            let (lo, hi) = (
                self.inner.window.pday_start(day),
                self.inner.window.pday_start(day + 1),
            );
            for table in schema::MESSAGE_TABLES {
                let name = schema::partition_name(table, day);
                statements.push(format!(
                    "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} FOR VALUES FROM ({lo}) TO ({hi})"
                ));
            }
        }
        for &day in &missing_c {
            let table = schema::PRESENCE_TABLE;
            let name = schema::partition_name(table, day);
            statements.push(format!(
                // Room on each page for the tallies' updates to stay heap-only (HOT): the
                // count column is in no index, so an update then touches no index either.
                "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} FOR VALUES FROM ({day}) TO ({}) WITH (fillfactor = 70)",
                day + 1
            ));
        }
        // One partition per transaction: a transaction holding one parent's lock while it waits
        // for another's would deadlock with a read that locks them in the other order.
        let mut client = self.client().await?;
        for sql in statements {
            let tx = client.transaction().await.map_err(pg_error)?;
            tx.batch_execute(&format!(
                "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.imreport.partitions')); {sql}"
            ))
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
        }
        self.inner.pdays.lock().expect("lock").extend(missing_p);
        self.inner.cdays.lock().expect("lock").extend(missing_c);
        Ok(())
    }

    /// Forgets which partitions exist (after another server may have dropped some).
    pub(crate) fn forget_partitions(&self) {
        self.inner.pdays.lock().expect("lock").clear();
        self.inner.cdays.lock().expect("lock").clear();
    }

    async fn retention(&self) -> Result<usize> {
        let w = &self.inner.window;
        let now = self.inner.config.clock.now_ms();
        let (horizon, stats_horizon) = (w.horizon_day(now), w.stats_horizon_day(now));
        // Tomorrow's partitions, ahead of time: creating one locks its parent briefly.
        let today = w.pday(now);
        let civil_today = w.tz.civil_day(now);
        self.ensure_partitions(
            &(today..=today + 1).collect(),
            &(civil_today..=civil_today + 1).collect(),
        )
        .await?;
        // One server at a time drops; the others skip this round.
        let Some(client) = self.lock_alone("retention").await? else {
            return Ok(0);
        };
        let result = self.drop_before(&client, horizon, stats_horizon).await;
        Self::unlock(&client, "retention").await?;
        let dropped = result?;
        if dropped > 0 {
            self.forget_partitions();
            tracing::info!(
                dropped_days = dropped,
                horizon_day = horizon,
                "retention dropped old day partitions"
            );
        }
        Ok(dropped)
    }

    /// A connection holding the schema's session advisory lock `name`, if no other server holds
    /// it (upkeep one server at a time; the others skip the pass). Release it with [`Self::unlock`].
    pub(crate) async fn lock_alone(&self, name: &str) -> Result<Option<Object>> {
        let client = self.client().await?;
        let got: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext(current_schema() || '.imreport.' || $1))",
                &[&name],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        Ok(got.then_some(client))
    }

    pub(crate) async fn unlock(client: &Object, name: &str) -> Result<()> {
        client
            .execute(
                "SELECT pg_advisory_unlock(hashtext(current_schema() || '.imreport.' || $1))",
                &[&name],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn drop_before(
        &self,
        client: &Object,
        horizon: i64,
        stats_horizon: i64,
    ) -> Result<usize> {
        let mut dropped = BTreeSet::new();
        let mut old = Vec::new();
        for table in schema::MESSAGE_TABLES {
            for day in schema::partitions(client, table).await? {
                if day < horizon {
                    old.push((table, day));
                    dropped.insert(day);
                }
            }
        }
        for day in schema::partitions(client, schema::PRESENCE_TABLE).await? {
            if day < stats_horizon {
                old.push((schema::PRESENCE_TABLE, day));
            }
        }
        for (table, day) in old {
            // Dropping a partition locks its parent for a moment; waiting longer than that
            // behind a long query would stall every query queued after it, so give up and
            // retry on the next pass instead.
            let name = schema::partition_name(table, day);
            let sql = format!("SET LOCAL lock_timeout = '1s'; DROP TABLE IF EXISTS {name}");
            for attempt in 1.. {
                let mut c = self.client().await?;
                let tx = c.transaction().await.map_err(pg_error)?;
                let result = match tx.batch_execute(&sql).await {
                    Ok(()) => tx.commit().await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => break,
                    // Chosen as a deadlock victim, or the parent stayed busy: try again
                    // shortly, then leave it to the next pass.
                    Err(e) if retryable(&e) && attempt < 5 => {
                        tracing::debug!(error = %e, %name, "partition drop will be retried");
                        tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                    }
                    Err(e) if retryable(&e) => {
                        tracing::warn!(error = %e, %name, "partition drop postponed to the next pass");
                        break;
                    }
                    Err(e) => return Err(pg_error(e)),
                }
            }
        }
        client
            .execute(
                "DELETE FROM stat_days WHERE day < $1",
                &[&(stats_horizon as i32)],
            )
            .await
            .map_err(pg_error)?;
        client
            .execute(
                "DELETE FROM stat_hours WHERE hour < $1",
                &[&((stats_horizon * 24) as i32)],
            )
            .await
            .map_err(pg_error)?;
        Ok(dropped.len())
    }
}

fn app_from_row(r: &tokio_postgres::Row) -> App {
    App {
        id: r.get::<_, i32>("app_id") as u32,
        key: r.get("app_key"),
        name: r.get("name"),
        secret: SecretHash {
            salt: r.get("secret_salt"),
            sha256: r.get("secret_sha256"),
        },
        created_ms: r.get("created_ms"),
    }
}

async fn find_app(client: &Object, key: String) -> Result<Option<App>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {APP_COLUMNS} FROM apps WHERE app_key = $1"
        ))
        .await
        .map_err(pg_error)?;
    let row = client.query_opt(&stmt, &[&key]).await.map_err(pg_error)?;
    Ok(row.map(|r| app_from_row(&r)))
}

const APP_COLUMNS: &str = "app_id, app_key, name, secret_salt, secret_sha256, created_ms";

#[async_trait]
impl Store for PostgresStore {
    async fn create_app(&self, key: &str, name: &str, secret: SecretHash) -> Result<App> {
        let client = self.client().await?;
        let now = self.inner.config.clock.now_ms();
        let row = client
            .query_opt(
                &format!(
                    "INSERT INTO apps ({APP_COLUMNS}) VALUES (nextval('app_ids'), $1, $2, $3, $4, $5)
                     ON CONFLICT (app_key) DO NOTHING RETURNING {APP_COLUMNS}"
                ),
                &[&key, &name, &secret.salt, &secret.sha256, &now],
            )
            .await
            .map_err(pg_error)?;
        row.map(|r| app_from_row(&r))
            .ok_or_else(|| StoreError::AppExists(key.to_owned()))
    }

    async fn list_apps(&self) -> Result<Vec<App>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {APP_COLUMNS} FROM apps ORDER BY app_id"),
                &[],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows.iter().map(app_from_row).collect())
    }

    async fn app(&self, key: &str) -> Result<Option<App>> {
        if self.inner.standbys.is_empty() {
            let mut cuts = 0;
            loop {
                let client = self.client().await?;
                match find_app(&client, key.to_owned()).await {
                    Err(e) if read::cut_under(&e, &mut cuts) => read::discard(client),
                    other => return other,
                }
            }
        }
        // Read on a standby, so that requests are authenticated while the primary is away.
        let owned = key.to_owned();
        let found = read::on_reader(self, move |client| {
            Box::pin(find_app(client, owned.clone()))
        })
        .await?;
        if found.is_some() {
            return Ok(found);
        }
        // An app created a moment ago may not be replayed yet: the primary knows.
        match self.client().await {
            Ok(client) => find_app(&client, key.to_owned()).await,
            Err(StoreError::Unavailable(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn set_secret(&self, key: &str, secret: SecretHash) -> Result<App> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE apps SET secret_salt = $2, secret_sha256 = $3 WHERE app_key = $1
                     RETURNING {APP_COLUMNS}"
                ),
                &[&key, &secret.salt, &secret.sha256],
            )
            .await
            .map_err(pg_error)?;
        row.map(|r| app_from_row(&r))
            .ok_or_else(|| StoreError::AppNotFound(key.to_owned()))
    }

    async fn delete_app(&self, key: &str) -> Result<()> {
        let client = self.client().await?;
        let n = client
            .execute("DELETE FROM apps WHERE app_key = $1", &[&key])
            .await
            .map_err(pg_error)?;
        if n == 0 {
            return Err(StoreError::AppNotFound(key.to_owned()));
        }
        Ok(())
    }

    async fn ingest(&self, app: &App, events: Vec<Event>) -> Result<IngestOutcome> {
        let started = std::time::Instant::now();
        let out = write::ingest(self, app, events).await;
        if out.is_ok() {
            metrics::histogram!("imreport_postgres_ingest_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        out
    }

    async fn page(&self, app: &App, scope: &Scope, req: PageRequest) -> Result<Page> {
        read::page(self, app, scope, req).await
    }

    async fn stats_days(&self, app: &App, from: i64, to: i64) -> Result<DaysReport> {
        read::stats_days(self, app, from, to).await
    }

    async fn stats_hours(&self, app: &App, from: i64, to: i64) -> Result<Vec<MsgCounts>> {
        read::stats_hours(self, app, from, to).await
    }

    async fn busiest(&self, app: &App, day: i64, n: usize) -> Result<Busiest> {
        read::busiest(self, app, day, n).await
    }

    async fn backup(
        &self,
        out: tokio::sync::mpsc::Sender<crate::archive::BackupItem>,
    ) -> Result<()> {
        read::backup(self, out).await
    }

    fn stats_retained_from(&self) -> i64 {
        self.inner
            .window
            .stats_horizon_day(self.inner.config.clock.now_ms())
    }

    async fn enforce_retention(&self) -> Result<usize> {
        self.retention().await
    }

    async fn tidy(&self) -> Result<()> {
        let pending = fold::fold(self).await?;
        metrics::gauge!("imreport_postgres_fold_pending_hours").set(pending as f64);
        vacuum::vacuum(self).await?;
        Ok(())
    }

    async fn check_ready(&self) -> Result<()> {
        let client = self.client().await?;
        let read_only: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(pg_error)?
            .get(0);
        if read_only {
            return Err(StoreError::NotReady(
                "the database is a read-only standby".into(),
            ));
        }
        Ok(())
    }
}
