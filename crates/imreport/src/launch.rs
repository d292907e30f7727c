//! The wiring of the application, written once: from [`Settings`] to an open store, the HTTP
//! state, and a running server (public and admin listeners, retention). `imreport serve`, the
//! `imreport app` commands and every test build the application through these functions.

use crate::settings::{Settings, StoreChoice};
use anyhow::{Context, Result};
use imreport_domain::Clock;
use imreport_domain::app::generate_token;
use imreport_domain::cursor::CursorKey;
use imreport_domain::time::ReportTz;
use imreport_server::rate::RateLimiter;
use imreport_server::{AppState, BodyLimits, Capacity, ConnLimits, Connections, admin, router};
use imreport_store::Store;
use imreport_store::embedded::{EmbeddedConfig, EmbeddedStore};
use imreport_store::postgres::{PostgresConfig, PostgresStore};
use imreport_store::priority::IngestPool;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Written to DATA_DIR/admin.json so that `imreport app …` can reach a running server.
#[derive(Serialize, Deserialize)]
pub struct AdminEndpoint {
    pub url: String,
    pub token: String,
}

pub const ADMIN_FILE: &str = "admin.json";

/// How often retention runs (and once at start).
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// How often the store's read-speeding upkeep runs (`Store::tidy`).
const TIDY_EVERY: Duration = Duration::from_secs(10);

/// Writes a file only its owner can read, atomically (a crash leaves the old one or the new).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Wraps the store the HTTP layer sees (tests inject faults with it).
pub type WrapStore = fn(Arc<dyn Store>) -> Arc<dyn Store>;

/// What the application runs with besides its settings: the clock (a manual one in tests) and,
/// for tests that inject faults, a wrapper of the store the HTTP layer sees.
#[derive(Clone, Default)]
pub struct Hooks {
    pub clock: Clock,
    pub wrap_store: Option<WrapStore>,
}

/// The store the settings name, opened.
#[derive(Clone)]
pub struct Stores {
    pub store: Arc<dyn Store>,
    /// The embedded store, when that is the one (for what only it has).
    pub embedded: Option<EmbeddedStore>,
    pub postgres: Option<PostgresStore>,
}

/// Opens (and on PostgreSQL, creates or migrates) the store the settings name.
pub async fn open_store(s: &Settings, clock: &Clock) -> Result<Stores> {
    let tz = ReportTz::new(&s.report_tz)?;
    Ok(match s.store_choice()? {
        StoreChoice::Embedded => {
            let config = EmbeddedConfig {
                busy_hour: s.busy_hour,
                ingest_nice: s.ingest_nice,
                cache_bytes: Settings::mib(s.block_cache_mb),
                ..EmbeddedConfig::new(
                    s.retention_days,
                    s.queue_depth,
                    tz,
                    Settings::mib(s.min_free_disk_mb),
                    clock.clone(),
                )
            };
            let store = EmbeddedStore::open(&s.data_dir, config)?;
            Stores {
                store: Arc::new(store.clone()),
                embedded: Some(store),
                postgres: None,
            }
        }
        StoreChoice::Postgres { url, schema } => {
            imreport_store::private_dir(&s.data_dir)?;
            let config = PostgresConfig {
                schema,
                pool_size: s.pg_pool_size,
                retention_days: s.retention_days,
                clock: clock.clone(),
                tz,
                busy_hour: s.busy_hour,
                standbys: s.standby_urls(),
                standby_max_lag: Settings::secs(s.pg_standby_max_lag_secs),
                url,
            };
            let pg = PostgresStore::connect(config)
                .await
                .context("cannot open the PostgreSQL store")?;
            Stores {
                store: Arc::new(pg.clone()),
                embedded: None,
                postgres: Some(pg),
            }
        }
    })
}

/// The cursor key: the setting, or a random one created once and kept in the data dir (or, on
/// PostgreSQL, in the database, so that every server on it continues every other's cursors).
async fn cursor_key(s: &Settings, pg: Option<&PostgresStore>) -> Result<CursorKey> {
    if !s.cursor_key.is_empty() {
        return Ok(CursorKey::from_text(&s.cursor_key)?);
    }
    let fresh = || format!("{}{}", generate_token(), generate_token());
    if let Some(pg) = pg {
        let text = pg.shared_secret("cursor_key", fresh).await?;
        return Ok(CursorKey::from_text(&text)?);
    }
    let path = s.data_dir.join("cursor.key");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let t = fresh();
            write_private(&path, t.as_bytes())?;
            t
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(CursorKey::from_text(&text)?)
}

/// The threads that decode ingest bodies (HTTP and stream intake alike), at `ingest_nice`.
pub fn ingest_pool(s: &Settings) -> Result<IngestPool> {
    IngestPool::new(s.ingest_nice).context("cannot start the ingest threads")
}

/// The HTTP layer's state for these settings.
pub async fn state(s: &Settings, stores: &Stores, hooks: &Hooks) -> Result<AppState> {
    let store = match hooks.wrap_store {
        Some(wrap) => wrap(stores.store.clone()),
        None => stores.store.clone(),
    };
    let mut state = AppState::new(
        store,
        ReportTz::new(&s.report_tz)?,
        cursor_key(s, stores.postgres.as_ref()).await?,
        (s.cursor_ttl_secs as i64).saturating_mul(1000),
        s.ingest_limits(),
        hooks.clock.clone(),
        Capacity {
            ingest_slots: s.ingest_concurrency,
            page_slots: s.page_concurrency,
            response_bytes: Settings::mib(s.response_buffer_mb),
        },
        BodyLimits {
            read_timeout: Settings::secs(s.body_read_timeout_secs),
            min_rate: s.min_body_rate,
            grace: Settings::secs(s.body_grace_secs),
        },
        Settings::secs(s.busy_wait_secs),
        Settings::secs(s.console_session_secs),
        ingest_pool(s)?,
    );
    if s.rate_limit > 0 {
        state.rate_limit = Some(Arc::new(RateLimiter::new(
            s.rate_limit,
            s.rate_limit_window_secs,
            hooks.clock.clone(),
        )));
    }
    Ok(state)
}

/// Descriptors kept for storage files, the admin listener and database connections.
const RESERVED_FDS: u64 = 1024;

/// Raises the soft open-file limit to the hard one, and returns how many of the `wanted`
/// connections fit in it beside [`RESERVED_FDS`] (so that accepting never fails for want of a
/// descriptor: at the cap, idle connections make room instead).
fn connections_that_fit(wanted: usize) -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(cur), max) = (limit.current, limit.maximum)
        && max.is_none_or(|m| m > cur)
    {
        // Capped: an unlimited hard limit is not a number the kernel takes for files.
        let raised = max.unwrap_or(1 << 20).min(1 << 20);
        if let Err(e) = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(raised),
                maximum: max,
            },
        ) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
    let files = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let fit = files.saturating_sub(RESERVED_FDS).max(64);
    if (wanted as u64) > fit {
        tracing::warn!(
            max_connections = wanted,
            open_file_limit = files,
            using = fit,
            "max_connections lowered to fit the open-file limit"
        );
        fit as usize
    } else {
        wanted
    }
}

/// What a connection may hold, from the settings. The admin listener has the same limits.
pub fn conn_limits(s: &Settings) -> ConnLimits {
    ConnLimits {
        header_read_timeout: Settings::secs(s.header_read_timeout_secs),
        idle_timeout: Settings::secs(s.idle_timeout_secs),
        send_timeout: Settings::secs(s.send_timeout_secs),
        max_connections: connections_that_fit(s.max_connections),
        // Fixed limits (docs/API.md, Connections).
        max_header_bytes: 64 * 1024,
        max_headers: 128,
        shutdown_grace: Duration::from_secs(30),
    }
}

/// A running server: its addresses, what it serves with, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Where `GET /metrics` answers, when `metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub stores: Stores,
    pub state: AppState,
    pub conns: Arc<Connections>,
    admin_file: std::path::PathBuf,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// The public API's base URL, with a loopback host when it listens on every interface.
    pub fn url(&self) -> String {
        if self.addr.ip().is_unspecified() {
            format!("http://127.0.0.1:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Stops accepting, finishes requests in flight (up to the grace period), stops retention,
    /// and removes admin.json.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.admin_file);
    }
}

/// What is read at each scrape: the store's size, refused connections, the stream's lag.
fn scrape(
    stores: &Stores,
    conns: &Arc<Connections>,
    intake: Option<Arc<imreport_intake::Status>>,
) -> crate::metrics::Scrape {
    let (embedded, postgres, conns) = (
        stores.embedded.clone(),
        stores.postgres.clone(),
        conns.clone(),
    );
    Arc::new(move || {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(e) = &embedded {
            metrics::gauge!("imreport_store_disk_bytes").set(e.disk_space() as f64);
            metrics::gauge!("imreport_store_day_partitions").set(e.day_partitions() as f64);
            let m = e.memory();
            metrics::gauge!("imreport_store_memtable_bytes").set(m.memtable_bytes as f64);
            metrics::gauge!("imreport_store_pending_flushes").set(m.pending_flushes as f64);
            metrics::gauge!("imreport_store_block_cache_bytes").set(m.cache_bytes as f64);
            metrics::gauge!("imreport_store_block_cache_capacity_bytes")
                .set(m.cache_capacity_bytes as f64);
        }
        metrics::counter!("imreport_connections_refused_total").absolute(conns.refused());
        if let Some(st) = &intake {
            metrics::gauge!("imreport_intake_pending_messages")
                .set(st.pending.load(Relaxed) as f64);
            metrics::gauge!("imreport_intake_ack_pending_messages")
                .set(st.ack_pending.load(Relaxed) as f64);
            for (what, n) in [
                ("acked", &st.acked),
                ("dead_lettered", &st.dead_lettered),
                ("retried", &st.retried),
            ] {
                metrics::counter!("imreport_intake_messages_total", "result" => what)
                    .absolute(n.load(Relaxed));
            }
        }
        let postgres = postgres.clone();
        Box::pin(async move {
            // Two catalog queries; a scrape never waits long on a busy database (the gauges
            // keep their last values then).
            let Some(pg) = postgres else { return };
            let read = async {
                Ok::<_, imreport_store::StoreError>((
                    pg.disk_space().await?,
                    pg.day_partitions().await?,
                ))
            };
            match tokio::time::timeout(Duration::from_secs(2), read).await {
                Ok(Ok((bytes, parts))) => {
                    metrics::gauge!("imreport_store_disk_bytes").set(bytes as f64);
                    metrics::gauge!("imreport_store_day_partitions").set(parts as f64);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the store's size for metrics")
                }
                Err(_) => tracing::warn!("reading the store's size for metrics took over 2 s"),
            }
        })
    })
}

/// The NATS intake until `done`: connects (again and again while NATS is unreachable), then
/// consumes.
async fn consume_nats(
    config: imreport_intake::nats::NatsConfig,
    engine: imreport_intake::Engine,
    done: impl Future<Output = ()>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    tokio::pin!(done);
    *engine
        .status
        .describe
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = serde_json::json!({
        "kind": "nats", "url": config.url, "stream": config.stream,
        "subjects": format!("{}.<app key>", config.subject_prefix),
        "dead_letters": format!("{}.<app key>", config.dead_letter_prefix),
        "dead_letter_stream": config.dead_letter_stream(), "consumer": config.consumer,
    });
    let mut pause = Duration::from_millis(500);
    loop {
        let connected = tokio::select! {
            _ = &mut done => return,
            c = imreport_intake::nats::NatsSource::connect(&config) => c,
        };
        match connected {
            Ok(source) => {
                tracing::info!(url = %config.url, stream = %config.stream, "stream intake: consuming from NATS");
                engine.status.connected.store(true, Relaxed);
                return engine.run(source, done).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "stream intake: cannot reach NATS; retrying");
                engine.status.error(&e);
                tokio::select! {
                    _ = &mut done => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Opens the store, applies retention once, and starts serving: the public API, the admin API
/// (its address and token written to DATA_DIR/admin.json) and retention every minute.
pub async fn start(s: &Settings, hooks: Hooks) -> Result<Running> {
    // Installed first, so that nothing recorded from the start on is lost.
    let metrics = match s.metrics_listen.is_empty() {
        true => None,
        false => Some(crate::metrics::handle()?),
    };
    let stores = open_store(s, &hooks.clock).await?;
    let state = state(s, &stores, &hooks).await?;
    let limits = conn_limits(s);
    let conns = Connections::new(limits);
    let public = TcpListener::bind(s.listen)
        .await
        .with_context(|| format!("cannot listen on {}", s.listen))?;
    let admin_listener = TcpListener::bind(s.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", s.admin_listen))?;
    let (addr, admin_addr) = (public.local_addr()?, admin_listener.local_addr()?);
    let token = generate_token() + &generate_token();
    let admin_file = s.data_dir.join(ADMIN_FILE);
    let endpoint = AdminEndpoint {
        url: format!("http://{admin_addr}"),
        token: token.clone(),
    };
    write_private(&admin_file, &serde_json::to_vec_pretty(&endpoint)?)?;

    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = Vec::new();
    // The first pass before serving, so that nothing old is served; then every minute.
    let retention_store = stores.store.clone();
    let retain = move || {
        let store = retention_store.clone();
        async move {
            match store.enforce_retention().await {
                Ok(n) => metrics::counter!("imreport_retention_dropped_partitions_total")
                    .increment(n as u64),
                Err(e) => tracing::warn!(error = %e, "retention pass failed; will retry"),
            }
        }
    };
    retain().await;
    let done = until_stopped();
    tasks.push(tokio::spawn(async move {
        let first = tokio::time::Instant::now() + RETENTION_EVERY;
        let mut tick = tokio::time::interval_at(first, RETENTION_EVERY);
        tokio::pin!(done);
        loop {
            tokio::select! {
                _ = tick.tick() => retain().await,
                _ = &mut done => return,
            }
        }
    }));
    let (tidy_store, done) = (stores.store.clone(), until_stopped());
    tasks.push(tokio::spawn(async move {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + TIDY_EVERY, TIDY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(done);
        loop {
            tokio::select! {
                _ = tick.tick() => if let Err(e) = tidy_store.tidy().await {
                    tracing::warn!(error = %e, "upkeep pass failed; will retry");
                },
                _ = &mut done => return,
            }
        }
    }));
    let mut intake_status = None;
    let intake = s.nats().map(|config| {
        let status = Arc::new(imreport_intake::Status::default());
        intake_status = Some(status.clone());
        let engine = imreport_intake::Engine {
            store: stores.store.clone(),
            limits: state.limits,
            clock: hooks.clock.clone(),
            status: status.clone(),
            batch: s.nats_batch,
            pool: state.ingest_pool.clone(),
        };
        tasks.push(tokio::spawn(consume_nats(config, engine, until_stopped())));
        let shown: admin::StatusFn = Arc::new(move || status.to_json());
        shown
    });
    let admin_conns = Connections::new(limits);
    let admin_router = admin::router(stores.store.clone(), token, intake, &s.report_tz);
    let done = until_stopped();
    tasks.push(tokio::spawn(async move {
        if let Err(e) =
            imreport_server::conn::serve(admin_listener, admin_router, done, admin_conns).await
        {
            tracing::error!(error = %e, "the admin API stopped");
        }
    }));
    let metrics_addr = match metrics {
        None => None,
        Some(handle) => {
            let addr = s.metrics_listen.as_str();
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (metrics)"))?;
            let bound = listener.local_addr()?;
            let scrape = scrape(&stores, &conns, intake_status);
            let done = until_stopped();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve(listener, handle, scrape, done).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            }));
            Some(bound)
        }
    };
    let (app, public_conns) = (router(state.clone()), conns.clone());
    let done = until_stopped();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = imreport_server::conn::serve(public, app, done, public_conns).await {
            tracing::error!(error = %e, "the public API stopped");
        }
    }));
    Ok(Running {
        addr,
        admin_addr,
        metrics_addr,
        stores,
        state,
        conns,
        admin_file,
        stop,
        tasks,
    })
}
