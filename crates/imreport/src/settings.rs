//! Server settings: flags, then `IMREPORT_*` environment variables (clap reads both), then an
//! optional TOML file, then defaults.

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_DATA_DIR: &str = "./imreport-data";

#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// TOML settings file (see `imreport config example`)
    #[arg(long, env = "IMREPORT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory of the embedded store [default: ./imreport-data]
    #[arg(long, env = "IMREPORT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where data lives: `embedded` (in the data dir), or a PostgreSQL URL such as
    /// postgres://user@host:5432/db, shared by any number of servers [default: embedded]
    #[arg(long, env = "IMREPORT_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// PostgreSQL schema for imreport's tables, created if missing [default: the URL's search_path]
    #[arg(long, env = "IMREPORT_PG_SCHEMA")]
    pub pg_schema: Option<String>,
    /// Most PostgreSQL connections this server opens [default: 16]
    #[arg(long, env = "IMREPORT_PG_POOL_SIZE")]
    pub pg_pool_size: Option<usize>,
    /// Address of the public API [default: 0.0.0.0:8080]
    #[arg(long, env = "IMREPORT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of the admin API; keep it on loopback [default: 127.0.0.1:0, a free port]
    #[arg(long, env = "IMREPORT_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// IANA time zone in which clients write times and statistics are bucketed [default: Asia/Shanghai]
    #[arg(long, env = "IMREPORT_REPORT_TZ")]
    pub report_tz: Option<String>,
    /// Seconds a history cursor stays valid [default: 120]
    #[arg(long, env = "IMREPORT_CURSOR_TTL_SECS")]
    pub cursor_ttl_secs: Option<u64>,
    /// Secret that seals cursors (at least 16 characters); servers sharing it continue each
    /// other's cursors [default: random, kept in DATA_DIR/cursor.key]
    #[arg(long, env = "IMREPORT_CURSOR_KEY", hide_env_values = true)]
    pub cursor_key: Option<String>,
    /// Days of messages and statistics kept [default: 60]
    #[arg(long, env = "IMREPORT_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
    /// Most events in one ingest request [default: 10000]
    #[arg(long, env = "IMREPORT_MAX_EVENTS")]
    pub max_events: Option<usize>,
    /// Largest ingest request body in bytes [default: 16777216]
    #[arg(long, env = "IMREPORT_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest msg_body in bytes [default: 16384]
    #[arg(long, env = "IMREPORT_MAX_MSG_BODY_BYTES")]
    pub max_msg_body_bytes: Option<usize>,
    /// Ingest requests that may wait for the writer before ingest answers 503 [default: 256]
    #[arg(long, env = "IMREPORT_QUEUE_DEPTH")]
    pub queue_depth: Option<usize>,
    /// Ingest requests read and decoded at once; more answer 503 [default: 8]
    #[arg(long, env = "IMREPORT_INGEST_CONCURRENCY")]
    pub ingest_concurrency: Option<usize>,
    /// Requests per app per rate window; 0 turns rate limiting off [default: 0]
    #[arg(long, env = "IMREPORT_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Length of the rate window in seconds [default: 60]
    #[arg(long, env = "IMREPORT_RATE_LIMIT_WINDOW_SECS")]
    pub rate_limit_window_secs: Option<u32>,
    /// Seconds a client has to send its request headers [default: 10]
    #[arg(long, env = "IMREPORT_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Seconds a client has to send an ingest body [default: 30]
    #[arg(long, env = "IMREPORT_BODY_READ_TIMEOUT_SECS")]
    pub body_read_timeout_secs: Option<u64>,
    /// Slowest ingest body accepted, in bytes per second after its first 2 s [default: 32768]
    #[arg(long, env = "IMREPORT_MIN_BODY_RATE")]
    pub min_body_rate: Option<u64>,
    /// Seconds a connection may stay open with no request in progress [default: 75]
    #[arg(long, env = "IMREPORT_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Seconds a response may go unread before it is dropped with its connection [default: 30]
    #[arg(long, env = "IMREPORT_SEND_TIMEOUT_SECS")]
    pub send_timeout_secs: Option<u64>,
    /// Most connections open at once; at the cap the one idle longest is closed [default: 10000]
    #[arg(long, env = "IMREPORT_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// History pages built at once [default: 8]
    #[arg(long, env = "IMREPORT_PAGE_CONCURRENCY")]
    pub page_concurrency: Option<usize>,
    /// Memory (MiB) for history pages built and not yet sent [default: 256]
    #[arg(long, env = "IMREPORT_RESPONSE_BUFFER_MB")]
    pub response_buffer_mb: Option<u64>,
    /// Create a demo app filled with a week of generated traffic (first start), and print its
    /// credentials
    #[arg(long)]
    pub demo: bool,
    /// Free disk space (MiB) below which ingest answers 503 instead of writing [default: 256]
    #[arg(long, env = "IMREPORT_MIN_FREE_DISK_MB")]
    pub min_free_disk_mb: Option<u64>,
}

/// The TOML file's form: the same names as the flags, with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    data_dir: Option<PathBuf>,
    store: Option<String>,
    pg_schema: Option<String>,
    pg_pool_size: Option<usize>,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    report_tz: Option<String>,
    cursor_ttl_secs: Option<u64>,
    cursor_key: Option<String>,
    retention_days: Option<u32>,
    max_events: Option<usize>,
    max_body_bytes: Option<usize>,
    max_msg_body_bytes: Option<usize>,
    queue_depth: Option<usize>,
    ingest_concurrency: Option<usize>,
    rate_limit: Option<u32>,
    rate_limit_window_secs: Option<u32>,
    header_read_timeout_secs: Option<u64>,
    body_read_timeout_secs: Option<u64>,
    min_body_rate: Option<u64>,
    idle_timeout_secs: Option<u64>,
    send_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    page_concurrency: Option<usize>,
    response_buffer_mb: Option<u64>,
    min_free_disk_mb: Option<u64>,
}

/// Settings with every default applied.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub store: StoreChoice,
    pub pg_pool_size: usize,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub report_tz: String,
    pub cursor_ttl_secs: u64,
    pub cursor_key: Option<String>,
    pub retention_days: u32,
    pub max_events: usize,
    pub max_body_bytes: usize,
    pub max_msg_body_bytes: usize,
    pub queue_depth: usize,
    pub ingest_concurrency: usize,
    pub rate_limit: u32,
    pub rate_limit_window_secs: u32,
    pub header_read_timeout_secs: u64,
    pub body_read_timeout_secs: u64,
    pub min_body_rate: u64,
    pub idle_timeout_secs: u64,
    pub send_timeout_secs: u64,
    pub max_connections: usize,
    pub page_concurrency: usize,
    pub response_buffer_mb: u64,
    pub min_free_disk_mb: u64,
    pub demo: bool,
}

impl ServeArgs {
    pub fn resolve(self) -> Result<Settings> {
        let file: FileSettings = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid settings file {}", path.display()))?
            }
            None => FileSettings::default(),
        };
        let s = Settings {
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            store: StoreChoice::parse(
                self.store.or(file.store).as_deref(),
                self.pg_schema.or(file.pg_schema),
            )?,
            pg_pool_size: self.pg_pool_size.or(file.pg_pool_size).unwrap_or(16),
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "0.0.0.0:8080".parse().expect("valid")),
            admin_listen: self
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or_else(|| "127.0.0.1:0".parse().expect("valid")),
            report_tz: self
                .report_tz
                .or(file.report_tz)
                .unwrap_or_else(|| "Asia/Shanghai".into()),
            cursor_ttl_secs: self.cursor_ttl_secs.or(file.cursor_ttl_secs).unwrap_or(120),
            cursor_key: self.cursor_key.or(file.cursor_key),
            retention_days: self.retention_days.or(file.retention_days).unwrap_or(60),
            max_events: self.max_events.or(file.max_events).unwrap_or(10_000),
            max_body_bytes: self
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(16 * 1024 * 1024),
            max_msg_body_bytes: self
                .max_msg_body_bytes
                .or(file.max_msg_body_bytes)
                .unwrap_or(16 * 1024),
            queue_depth: self.queue_depth.or(file.queue_depth).unwrap_or(256),
            ingest_concurrency: self
                .ingest_concurrency
                .or(file.ingest_concurrency)
                .unwrap_or(8),
            rate_limit: self.rate_limit.or(file.rate_limit).unwrap_or(0),
            rate_limit_window_secs: self
                .rate_limit_window_secs
                .or(file.rate_limit_window_secs)
                .unwrap_or(60),
            header_read_timeout_secs: self
                .header_read_timeout_secs
                .or(file.header_read_timeout_secs)
                .unwrap_or(10),
            body_read_timeout_secs: self
                .body_read_timeout_secs
                .or(file.body_read_timeout_secs)
                .unwrap_or(30),
            min_body_rate: self
                .min_body_rate
                .or(file.min_body_rate)
                .unwrap_or(32 * 1024),
            idle_timeout_secs: self
                .idle_timeout_secs
                .or(file.idle_timeout_secs)
                .unwrap_or(75),
            send_timeout_secs: self
                .send_timeout_secs
                .or(file.send_timeout_secs)
                .unwrap_or(30),
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(10_000),
            page_concurrency: self.page_concurrency.or(file.page_concurrency).unwrap_or(8),
            response_buffer_mb: self
                .response_buffer_mb
                .or(file.response_buffer_mb)
                .unwrap_or(256),
            min_free_disk_mb: self
                .min_free_disk_mb
                .or(file.min_free_disk_mb)
                .unwrap_or(256),
            demo: self.demo,
        };
        anyhow::ensure!(
            s.ingest_concurrency >= 1,
            "ingest_concurrency must be at least 1"
        );
        anyhow::ensure!(s.pg_pool_size >= 2, "pg_pool_size must be at least 2");
        anyhow::ensure!(
            s.page_concurrency >= 1 && s.max_connections >= 1 && s.response_buffer_mb >= 1,
            "page_concurrency, max_connections and response_buffer_mb must be at least 1"
        );
        anyhow::ensure!(
            s.header_read_timeout_secs >= 1
                && s.body_read_timeout_secs >= 1
                && s.idle_timeout_secs >= 1
                && s.send_timeout_secs >= 1,
            "timeouts must be at least 1 second"
        );
        anyhow::ensure!(s.retention_days >= 1, "retention_days must be at least 1");
        anyhow::ensure!(s.cursor_ttl_secs >= 1, "cursor_ttl_secs must be at least 1");
        anyhow::ensure!(
            s.max_events >= 1 && s.max_body_bytes >= 1024,
            "ingest limits are too small"
        );
        Ok(s)
    }
}

/// Which store a server (or `imreport app`) works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    Embedded,
    Postgres { url: String, schema: Option<String> },
}

impl StoreChoice {
    pub fn parse(store: Option<&str>, pg_schema: Option<String>) -> Result<StoreChoice> {
        match store {
            None | Some("embedded") => Ok(StoreChoice::Embedded),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(StoreChoice::Postgres {
                    url: url.to_owned(),
                    schema: pg_schema,
                })
            }
            Some(_) => anyhow::bail!(
                "store must be `embedded` or a PostgreSQL URL (postgres://user@host:5432/db)"
            ),
        }
    }
}

/// Settings shared by `imreport app …`: where the apps live.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Data directory of the embedded store
    #[arg(long, env = "IMREPORT_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// `embedded`, or the PostgreSQL URL the servers use [default: embedded]
    #[arg(long, env = "IMREPORT_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// PostgreSQL schema, as given to the servers
    #[arg(long, env = "IMREPORT_PG_SCHEMA")]
    pub pg_schema: Option<String>,
}

pub const EXAMPLE: &str = r#"# imreport settings file: `imreport serve --config imreport.toml`.
# Every setting is optional. Precedence: command-line flag > IMREPORT_* environment variable
# (the name in upper case, e.g. IMREPORT_RETENTION_DAYS) > this file > the default shown.

# Data directory of the embedded store (with PostgreSQL: only admin.json and demo.json).
data_dir = "./imreport-data"

# Where data lives: "embedded" (one process, the data dir), or a PostgreSQL URL shared by any
# number of stateless servers (see README "Scaling out"). The schema is created and migrated at
# startup; pg_schema picks a schema other than the URL's search_path.
store = "embedded"
# store = "postgres://imreport@db.internal:5432/imreport"
# pg_schema = "imreport"
pg_pool_size = 16

# Public API (Report V2, ingest, health).
listen = "0.0.0.0:8080"

# Admin API for app management while the server runs. Keep it on loopback; its address and
# bearer token are written to DATA_DIR/admin.json (mode 0600) for `imreport app ...`.
admin_listen = "127.0.0.1:0"

# IANA time zone in which clients write begin_time/end_time and statistics are bucketed.
report_tz = "Asia/Shanghai"

# Seconds a history cursor stays valid after it is issued.
cursor_ttl_secs = 120

# Secret sealing cursors (16+ characters). Servers sharing it continue each other's cursors.
# Unset: a random key is created once and kept in DATA_DIR/cursor.key (embedded store), or in
# the database, where every server on it finds the same one (PostgreSQL).
# cursor_key = "change-me-to-a-long-random-string"

# Days of messages and statistics kept.
retention_days = 60

# Ingest limits: events per request, bytes per request, bytes per msg_body.
max_events = 10000
max_body_bytes = 16777216
max_msg_body_bytes = 16384

# Ingest requests that may wait for the writer; past this ingest answers 503 with Retry-After.
queue_depth = 256

# Ingest requests read, decoded and stored at once, shared fairly between apps (bounds memory:
# each may hold about 3 x max_body_bytes).
ingest_concurrency = 8

# History pages built at once, and memory (MiB) for pages built and not yet sent; both shared
# fairly between apps, so slow or stalled readers cannot grow memory.
page_concurrency = 8
response_buffer_mb = 256

# Per-app rate limit: requests per window (0 = off), as JMessage's X-Rate-Limit-* headers report.
rate_limit = 0
rate_limit_window_secs = 60

# Slow and idle clients: seconds to begin a request and send its headers; to send an ingest
# body; the slowest body accepted (bytes per second, after its first 2 s); seconds a connection
# may sit with no request in progress; seconds a response may go unread.
header_read_timeout_secs = 10
body_read_timeout_secs = 30
min_body_rate = 32768
idle_timeout_secs = 75
send_timeout_secs = 30

# Most connections open at once; at the cap the one idle longest is closed to admit a new one.
# The server raises its open-file limit to the hard limit at start and keeps 1024 descriptors
# for storage, so it may lower this to fit.
max_connections = 10000

# Ingest answers 503 instead of writing when the data dir's disk has less free space than this.
min_free_disk_mb = 256
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imreport.toml");
        std::fs::write(
            &path,
            EXAMPLE.replace("retention_days = 60", "retention_days = 30"),
        )
        .unwrap();
        let s = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.retention_days, 30);
        assert_eq!(s.report_tz, "Asia/Shanghai");
        let s = ServeArgs {
            config: Some(path),
            retention_days: Some(7),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.retention_days, 7);
        assert_eq!(s.store, StoreChoice::Embedded);
    }

    #[test]
    fn store_is_embedded_or_a_postgres_url() {
        assert_eq!(
            StoreChoice::parse(Some("postgres://u@h/db"), Some("s".into())).unwrap(),
            StoreChoice::Postgres {
                url: "postgres://u@h/db".into(),
                schema: Some("s".into())
            }
        );
        assert!(StoreChoice::parse(Some("mysql://u@h/db"), None).is_err());
    }
}
