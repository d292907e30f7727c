//! A server on port 0 over a fresh store (embedded, or a fresh schema of the test PostgreSQL),
//! with a settable clock, and a client for it.

use base64::Engine;
use imreport_domain::Clock;
use imreport_domain::cursor::CursorKey;
use imreport_domain::event::IngestLimits;
use imreport_domain::time::ReportTz;
use imreport_server::rate::RateLimiter;
use imreport_server::{AppState, BodyLimits, Capacity, ConnLimits, Connections, admin};
use imreport_store::Store;
use imreport_store::embedded::{EmbeddedConfig, EmbeddedStore};
use imreport_store::postgres::{PostgresConfig, PostgresStore};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::oneshot;

/// 2026-11-20 12:00:00 UTC: the clock's start in tests.
pub const T0: i64 = 1_795_176_000_000;
pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 24 * HOUR;

pub struct Creds {
    pub key: String,
    pub secret: String,
}

impl Creds {
    pub fn header(&self) -> String {
        let raw = format!("{}:{}", self.key, self.secret);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Which store a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Postgres,
}

/// The PostgreSQL the tests use: `IMREPORT_TEST_DATABASE_URL`, or this machine's server.
pub fn test_database_url() -> String {
    std::env::var("IMREPORT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema name, so that tests running at once never see each other's tables.
pub fn fresh_schema() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("it_{n:016x}")
}

/// Opens a PostgreSQL store on a fresh schema; fails loudly (never skips) when the database
/// cannot be reached.
pub async fn postgres_store(
    schema: &str,
    clock: Clock,
    tz: &str,
    retention_days: u32,
) -> PostgresStore {
    let config = PostgresConfig {
        schema: Some(schema.to_owned()),
        pool_size: 4,
        retention_days,
        clock,
        tz: ReportTz::new(tz).unwrap(),
        ..PostgresConfig::new(test_database_url())
    };
    match PostgresStore::connect(config).await {
        Ok(store) => store,
        Err(e) => panic!(
            "the PostgreSQL tests need a server at {} (set IMREPORT_TEST_DATABASE_URL, or start \
             this machine's with `pg_ctlcluster --skip-systemctl-redirect 15 main start`): {e}",
            test_database_url()
        ),
    }
}

/// Drops a test schema from a thread of its own (a `Drop` cannot await, and the test's runtime
/// may be the one blocked in it).
pub fn drop_schema(schema: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok((client, conn)) =
                tokio_postgres::connect(&test_database_url(), tokio_postgres::NoTls).await
            {
                tokio::spawn(conn);
                let _ = client
                    .batch_execute(&format!(
                        "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
                    ))
                    .await;
            }
        });
    })
    .join();
}

pub struct TestServer {
    pub url: String,
    pub http: reqwest::Client,
    pub clock: Clock,
    pub store: Arc<dyn Store>,
    /// The embedded store, for tests of what only it has (a stalled writer, a full disk).
    pub embedded: Option<EmbeddedStore>,
    /// The server's state, for tests that look at its shared budgets.
    pub state: AppState,
    /// Its connections.
    pub conns: Arc<Connections>,
    pub app: Creds,
    schema: Option<String>,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(schema) = self.schema.take() {
            drop_schema(schema);
        }
    }
}

/// Wraps a test server's store, to inject faults.
pub type WrapStore = fn(Arc<dyn Store>) -> Arc<dyn Store>;

pub struct Options {
    pub backend: Backend,
    pub limits: IngestLimits,
    pub queue_depth: usize,
    pub retention_days: u32,
    pub tz: &'static str,
    pub rate_limit: Option<(u32, u32)>,
    pub body: BodyLimits,
    pub capacity: Capacity,
    pub share_wait: std::time::Duration,
    pub conn: ConnLimits,
    /// Wraps the store the server sees (to inject faults).
    pub wrap: Option<WrapStore>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: Backend::Embedded,
            limits: IngestLimits::default(),
            queue_depth: 256,
            retention_days: 60,
            tz: "Asia/Shanghai",
            rate_limit: None,
            body: BodyLimits::default(),
            capacity: Capacity::default(),
            share_wait: std::time::Duration::from_secs(5),
            conn: ConnLimits::default(),
            wrap: None,
        }
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(Options::default()).await
    }

    pub async fn start_on(backend: Backend) -> TestServer {
        Self::start_with(Options {
            backend,
            ..Options::default()
        })
        .await
    }

    pub async fn start_with(opts: Options) -> TestServer {
        // Errors the server logs show up in a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warn,fjall=error,lsm_tree=error")
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(T0);
        let (store, embedded, schema): (Arc<dyn Store>, _, _) = match opts.backend {
            Backend::Embedded => {
                let config = EmbeddedConfig {
                    retention_days: opts.retention_days,
                    queue_depth: opts.queue_depth,
                    clock: clock.clone(),
                    tz: ReportTz::new(opts.tz).unwrap(),
                    min_free_disk_bytes: 0,
                    ..EmbeddedConfig::default()
                };
                let embedded = EmbeddedStore::open(dir.path(), config).unwrap();
                (Arc::new(embedded.clone()), Some(embedded), None)
            }
            Backend::Postgres => {
                let schema = fresh_schema();
                let store =
                    postgres_store(&schema, clock.clone(), opts.tz, opts.retention_days).await;
                (Arc::new(store), None, Some(schema))
            }
        };
        let served = match opts.wrap {
            Some(wrap) => wrap(store.clone()),
            None => store.clone(),
        };
        let mut state = AppState::new(
            served,
            ReportTz::new(opts.tz).unwrap(),
            CursorKey::from_text("integration-test-cursor-key").unwrap(),
            120_000,
            opts.limits,
            clock.clone(),
        );
        if let Some((limit, window)) = opts.rate_limit {
            state.rate_limit = Some(Arc::new(RateLimiter::new(limit, window, clock.clone())));
        }
        state.body = opts.body;
        state.set_capacity(opts.capacity);
        state.share_wait = opts.share_wait;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let conns = Connections::new(opts.conn);
        tokio::spawn(imreport_server::conn::serve(
            listener,
            imreport_server::router(state.clone()),
            async move {
                let _ = rx.await;
            },
            conns.clone(),
        ));
        let mut server = TestServer {
            url,
            http: reqwest::Client::new(),
            clock,
            store,
            embedded,
            state,
            conns,
            schema,
            app: Creds {
                key: String::new(),
                secret: String::new(),
            },
            _stop: tx,
            _dir: dir,
        };
        server.app = server.create_app().await;
        server
    }

    /// The server's `host:port`, for raw sockets.
    pub fn addr(&self) -> &str {
        self.url.strip_prefix("http://").unwrap()
    }

    pub async fn create_app(&self) -> Creds {
        let c = admin::create_app(self.store.as_ref(), admin::CreateApp::default())
            .await
            .unwrap();
        Creds {
            key: c.app_key,
            secret: c.master_secret,
        }
    }

    pub async fn get_as(&self, creds: &Creds, path_and_query: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path_and_query}", self.url))
            .header("authorization", creds.header())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        // Every answer states its length (a history page is sent as parts, not chunked).
        let length = r.content_length();
        let body = r.bytes().await.unwrap();
        assert_eq!(
            length,
            Some(body.len() as u64),
            "Content-Length of {path_and_query}"
        );
        (status, serde_json::from_slice(&body).unwrap())
    }

    pub async fn get(&self, path_and_query: &str) -> (u16, Value) {
        self.get_as(&self.app, path_and_query).await
    }

    pub async fn ingest_as(&self, creds: &Creds, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/ingest/v1/events", self.url))
            .header("authorization", creds.header())
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    pub async fn ingest(&self, body: impl Into<reqwest::Body>) -> (u16, Value) {
        self.ingest_as(&self.app, body).await
    }

    /// Ingests events given as JSON values, as NDJSON; panics unless 200.
    pub async fn ingest_ok(&self, events: &[Value]) -> Value {
        let (status, body) = self.ingest(ndjson(events)).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Walks every page of a history query; returns (total of the first page, every message).
    pub async fn walk(
        &self,
        creds: &Creds,
        path: &str,
        count: u16,
        begin: &str,
        end: &str,
    ) -> (u64, Vec<Value>) {
        let first = format!(
            "{path}?count={count}&begin_time={}&end_time={}",
            enc(begin),
            enc(end)
        );
        let (status, mut page) = self.get_as(creds, &first).await;
        assert_eq!(status, 200, "{first}: {page}");
        let total = page["total"].as_u64().unwrap();
        let mut all = Vec::new();
        loop {
            assert_eq!(page["total"].as_u64().unwrap(), total, "total is carried");
            let msgs = page["messages"].as_array().unwrap().clone();
            assert_eq!(page["count"].as_u64().unwrap() as usize, msgs.len());
            all.extend(msgs);
            match page.get("cursor").and_then(Value::as_str) {
                None => break,
                Some(c) => {
                    assert!(
                        page["count"].as_u64().unwrap() == u64::from(count),
                        "only full pages carry a cursor"
                    );
                    let (status, next) = self.get_as(creds, &format!("{path}?cursor={c}")).await;
                    assert_eq!(status, 200, "{next}");
                    page = next;
                }
            }
        }
        (total, all)
    }
}

/// Query-string encoding as the official SDKs send it (space as `+`).
pub fn enc(s: &str) -> String {
    form_encode(s)
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b' ' => "+".to_string(),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn ndjson(events: &[Value]) -> String {
    events.iter().map(|e| e.to_string() + "\n").collect()
}

/// A civil time string in Asia/Shanghai (UTC+8, no DST) for an instant.
pub fn sh(ms: i64) -> String {
    let ts = jiff::Timestamp::from_millisecond(ms + 8 * HOUR).unwrap();
    ts.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

pub fn text_message(msgid: u64, ctime: i64, target_type: &str, target: &str, from: &str) -> Value {
    serde_json::json!({
        "event": "message", "msgid": msgid, "msg_ctime": ctime, "target_type": target_type,
        "target_id": target, "from_id": from, "msg_type": "text",
        "msg_body": {"text": format!("hello {msgid}"), "extras": {}}
    })
}

/// The real `imreport` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_imreport");

/// Runs the real binary; returns (success, stdout, stderr).
pub fn imreport(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `name: value` line of the binary's output.
pub fn field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap()
        .trim()
        .to_owned()
}

/// Starts the real binary serving `data` on a free loopback port, with `extra` flags; returns the
/// process and its URL (read from the line it prints when it listens).
pub fn spawn_server(data: &str, extra: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--data-dir", data, "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("IMREPORT_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("imreport listening on ")
        .expect("the server started")
        .to_owned();
    (child, url)
}

/// GET `url` with an app's credentials, as JSON.
pub async fn get_json(http: &reqwest::Client, url: &str, creds: &Creds) -> Value {
    http.get(url)
        .header("authorization", creds.header())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Messages of one `send_msg_stat` bucket: single + group + chatroom.
pub fn bucket_total(bucket: &Value) -> u64 {
    ["single_send_msg", "group_send_msg", "chatroom_send_msg"]
        .iter()
        .map(|k| bucket[k].as_u64().unwrap())
        .sum()
}
