//! `imreport serve`: opens the store, starts the public and admin listeners, runs retention, and
//! shuts down gracefully on SIGTERM or Ctrl-C.

use crate::settings::{Settings, StoreChoice};
use anyhow::{Context, Result};
use imreport_domain::Clock;
use imreport_domain::app::generate_token;
use imreport_domain::cursor::CursorKey;
use imreport_domain::event::IngestLimits;
use imreport_domain::time::ReportTz;
use imreport_server::rate::RateLimiter;
use imreport_server::{
    AppState, BodyLimits, Capacity, ConnLimits, admin, router, serve_router, serve_router_with,
};
use imreport_store::Store;
use imreport_store::embedded::{EmbeddedConfig, EmbeddedStore};
use imreport_store::postgres::{PostgresConfig, PostgresStore};
use serde::{Deserialize, Serialize};
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

fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The cursor key: the setting, or a random one created once and kept in the data dir (or, on
/// PostgreSQL, in the database, so that every server on it continues every other's cursors).
async fn cursor_key(s: &Settings, pg: Option<&PostgresStore>) -> Result<CursorKey> {
    if let Some(text) = &s.cursor_key {
        return Ok(CursorKey::from_text(text)?);
    }
    if let Some(pg) = pg {
        let text = pg
            .shared_secret("cursor_key", || {
                format!("{}{}", generate_token(), generate_token())
            })
            .await?;
        return Ok(CursorKey::from_text(&text)?);
    }
    let path = s.data_dir.join("cursor.key");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let t = format!("{}{}", generate_token(), generate_token());
            write_private(&path, t.as_bytes())?;
            t
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(CursorKey::from_text(&text)?)
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

async fn shutdown_signal(mut stop: watch::Receiver<bool>) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
        _ = stop.changed() => {},
    }
}

pub async fn run(s: Settings) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // The storage engine's own info lines (tables created, flushes) are noise for operators.
            tracing_subscriber::EnvFilter::try_from_env("IMREPORT_LOG")
                .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let tz = ReportTz::new(&s.report_tz)?;
    let (store, pg): (Arc<dyn Store>, Option<PostgresStore>) = match &s.store {
        StoreChoice::Embedded => {
            let config = EmbeddedConfig {
                retention_days: s.retention_days,
                queue_depth: s.queue_depth,
                clock: Clock::System,
                tz: tz.clone(),
                min_free_disk_bytes: s.min_free_disk_mb * 1024 * 1024,
                ..EmbeddedConfig::default()
            };
            (Arc::new(EmbeddedStore::open(&s.data_dir, config)?), None)
        }
        StoreChoice::Postgres { url, schema } => {
            imreport_store::private_dir(&s.data_dir)?;
            let config = PostgresConfig {
                schema: schema.clone(),
                pool_size: s.pg_pool_size,
                retention_days: s.retention_days,
                clock: Clock::System,
                tz: tz.clone(),
                ..PostgresConfig::new(url.clone())
            };
            let pg = PostgresStore::connect(config)
                .await
                .context("cannot open the PostgreSQL store")?;
            (Arc::new(pg.clone()), Some(pg))
        }
    };
    let mut state = AppState::new(
        store.clone(),
        tz,
        cursor_key(&s, pg.as_ref()).await?,
        (s.cursor_ttl_secs as i64).saturating_mul(1000),
        IngestLimits {
            max_events: s.max_events,
            max_body_bytes: s.max_body_bytes,
            max_msg_body_bytes: s.max_msg_body_bytes,
        },
        Clock::System,
    );
    state.set_capacity(Capacity {
        ingest_slots: s.ingest_concurrency,
        page_slots: s.page_concurrency,
        response_bytes: s.response_buffer_mb * 1024 * 1024,
    });
    state.body = BodyLimits {
        read_timeout: Duration::from_secs(s.body_read_timeout_secs),
        min_rate: s.min_body_rate,
        ..BodyLimits::default()
    };
    if s.rate_limit > 0 {
        state.rate_limit = Some(Arc::new(RateLimiter::new(
            s.rate_limit,
            s.rate_limit_window_secs,
            Clock::System,
        )));
    }
    let conn_limits = ConnLimits {
        header_read_timeout: Duration::from_secs(s.header_read_timeout_secs),
        idle_timeout: Duration::from_secs(s.idle_timeout_secs),
        send_timeout: Duration::from_secs(s.send_timeout_secs),
        max_connections: connections_that_fit(s.max_connections),
        ..ConnLimits::default()
    };

    let public = TcpListener::bind(s.listen)
        .await
        .with_context(|| format!("cannot listen on {}", s.listen))?;
    let admin_listener = TcpListener::bind(s.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", s.admin_listen))?;
    let token = generate_token() + &generate_token();
    let admin_addr = admin_listener.local_addr()?;
    let endpoint = AdminEndpoint {
        url: format!("http://{admin_addr}"),
        token: token.clone(),
    };
    let admin_file = s.data_dir.join(ADMIN_FILE);
    write_private(&admin_file, &serde_json::to_vec_pretty(&endpoint)?)?;

    let demo = if s.demo {
        Some(demo_app(&s, store.as_ref()).await?)
    } else {
        None
    };
    let addr = public.local_addr()?;
    let backend = match &s.store {
        StoreChoice::Embedded => "embedded",
        StoreChoice::Postgres { .. } => "postgres",
    };
    tracing::info!(%addr, admin = %admin_addr, store = backend, data_dir = %s.data_dir.display(), report_tz = %s.report_tz, "imreport serving");
    println!("imreport listening on http://{addr}");
    if let Some(d) = &demo {
        print_demo(d, addr);
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let retention_store = store.clone();
    let mut retention_stop = stop_rx.clone();
    let retention = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = retention_store.enforce_retention().await {
                        tracing::warn!(error = %e, "retention pass failed; will retry");
                    }
                }
                _ = retention_stop.changed() => return,
            }
        }
    });
    let admin_task = tokio::spawn(serve_router(
        admin_listener,
        admin::router(store.clone(), token),
        {
            let rx = stop_rx.clone();
            async move {
                let mut rx = rx;
                let _ = rx.changed().await;
            }
        },
    ));

    let signal = shutdown_signal(stop_rx.clone());
    let public_result = serve_router_with(
        public,
        router(state),
        async move {
            signal.await;
            tracing::info!("shutting down: finishing requests in flight");
            let _ = stop_tx.send(true);
        },
        conn_limits,
    )
    .await;
    let _ = admin_task.await;
    let _ = retention.await;
    let _ = std::fs::remove_file(&admin_file);
    public_result?;
    tracing::info!("stopped");
    Ok(())
}

/// The demo app's credentials, kept in DATA_DIR/demo.json so that later starts can print them.
#[derive(Serialize, Deserialize)]
struct DemoApp {
    app_key: String,
    master_secret: String,
}

const DEMO_FILE: &str = "demo.json";
const DEMO_MESSAGES: u64 = 200_000;

/// Creates the demo app and fills it with a week of generated traffic ending now (first start
/// only; later starts reuse it).
async fn demo_app(s: &Settings, store: &dyn Store) -> Result<DemoApp> {
    let path = s.data_dir.join(DEMO_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(serde_json::from_str(&text)?);
    }
    let creds = admin::create_app(
        store,
        admin::CreateApp {
            name: Some("demo".into()),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!(e.message))?;
    let app = store
        .app(&creds.app_key)
        .await?
        .context("demo app just created")?;
    let args = crate::loadgen::LoadgenArgs::for_demo(DEMO_MESSAGES, &s.report_tz);
    let now = imreport_domain::time::now_ms();
    let mut generator = crate::loadgen::Generator::new(&args, now)?;
    let limits = IngestLimits {
        max_events: 10_000,
        ..IngestLimits::default()
    };
    tracing::info!(
        messages = DEMO_MESSAGES,
        "filling the demo app with a week of generated traffic"
    );
    loop {
        let mut body = String::new();
        let n = generator
            .by_ref()
            .take(5_000)
            .map(|e| e.write_ndjson(&mut body))
            .count();
        if n == 0 {
            break;
        }
        let events =
            imreport_domain::event::decode_batch(body.as_bytes(), &app.key, now + 1, &limits)?;
        store.ingest(&app, events).await?;
    }
    let demo = DemoApp {
        app_key: creds.app_key,
        master_secret: creds.master_secret,
    };
    write_private(&path, &serde_json::to_vec_pretty(&demo)?)?;
    Ok(demo)
}

fn print_demo(d: &DemoApp, addr: std::net::SocketAddr) {
    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    println!(
        "demo app: app_key={} master_secret={}",
        d.app_key, d.master_secret
    );
    println!("try:");
    println!(
        "  curl -s -u {}:{} \"http://{host}/v2/statistic/messages?time_unit=DAY&start=$(TZ=Asia/Shanghai date -d '-6 day' +%Y-%m-%d)&duration=7\"",
        d.app_key, d.master_secret
    );
    println!(
        "  curl -s -u {}:{} \"http://{host}/v2/messages?count=5&begin_time=$(TZ=Asia/Shanghai date -d '-1 hour' '+%Y-%m-%d+%H:%M:%S')&end_time=$(TZ=Asia/Shanghai date '+%Y-%m-%d+%H:%M:%S')\"",
        d.app_key, d.master_secret
    );
}
