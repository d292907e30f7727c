//! A server on port 0 over a fresh store (embedded, or a fresh schema of the test PostgreSQL),
//! with a settable clock, and a client for it.

use base64::Engine;
use imreport::launch::{self, Hooks, Running};
use imreport::settings::Settings;
use imreport_domain::Clock;
use imreport_server::{AppState, Connections};
use imreport_store::embedded::EmbeddedStore;
use imreport_store::postgres::PostgresStore;
use imreport_store::{Store, apps};
use serde_json::Value;
use std::sync::Arc;

/// 2026-11-20 12:00:00 UTC: the clock's start in tests.
pub const T0: i64 = 1_795_176_000_000;
pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 24 * HOUR;

#[derive(Clone)]
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
    /// PostgreSQL on a Citus cluster (a coordinator and two workers), which imreport finds and
    /// distributes its tables on.
    Citus,
}

impl Backend {
    /// On PostgreSQL (plain or Citus): a fresh schema of the test database.
    pub fn postgres(self) -> bool {
        matches!(self, Backend::Postgres | Backend::Citus)
    }

    /// Cases of a property test on this backend: a third on Citus, whose every statement takes
    /// two hops (the same SQL runs the full count on plain PostgreSQL; Citus adds the routing).
    pub fn cases(self, full: u32) -> u32 {
        match self {
            Backend::Citus => full.div_ceil(3),
            _ => full,
        }
    }
}

/// The Citus cluster the tests use: `IMREPORT_TEST_CITUS_URL`, or the one `.ci/run` starts
/// (`../shared/citus/cluster.sh start /tmp/imreport-citus 9700`).
pub fn test_citus_url() -> String {
    std::env::var("IMREPORT_TEST_CITUS_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:9700/imreport".into())
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

/// Opens a PostgreSQL store on a schema (created if missing); fails loudly (never skips)
/// when the database cannot be reached.
pub async fn postgres_store(
    schema: &str,
    clock: Clock,
    tz: &str,
    retention_days: u32,
) -> PostgresStore {
    let dir = tempfile::tempdir().unwrap();
    let s = Settings {
        report_tz: tz.into(),
        retention_days,
        pg_schema: schema.into(),
        ..test_settings(Backend::Postgres, dir.path())
    };
    match launch::open_store(&s, &clock).await {
        Ok(stores) => stores.postgres.unwrap(),
        Err(e) => panic!(
            "the PostgreSQL tests need a server at {} (set IMREPORT_TEST_DATABASE_URL, or start \
             this machine's with `pg_ctlcluster --skip-systemctl-redirect 15 main start`): {e:#}",
            test_database_url()
        ),
    }
}

/// Drops a test schema from a thread of its own (a `Drop` cannot await, and the test's runtime
/// may be the one blocked in it).
pub fn drop_schema(schema: String) {
    drop_schema_at(test_database_url(), schema)
}

/// [`drop_schema`] in the database at `url`.
pub fn drop_schema_at(url: String, schema: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
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
    /// The store itself (not the wrapper a test may have put before the HTTP layer).
    pub store: Arc<dyn Store>,
    /// The embedded store, for tests of what only it has (a stalled writer, a full disk).
    pub embedded: Option<EmbeddedStore>,
    /// The server's state, for tests that look at its shared budgets.
    pub state: AppState,
    /// Its connections.
    pub conns: Arc<Connections>,
    pub app: Creds,
    /// The database and schema to drop afterwards.
    schema: Option<(String, String)>,
    _running: Running,
    _dir: tempfile::TempDir,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some((db, schema)) = self.schema.take() {
            drop_schema_at(db, schema);
        }
    }
}

pub use imreport::launch::WrapStore;

/// The settings of a test server: the defaults, on loopback port 0, with a fixed cursor key and
/// no free-disk reserve (temporary dirs may sit on small disks).
pub fn test_settings(backend: Backend, data_dir: &std::path::Path) -> Settings {
    let mut s = Settings {
        data_dir: data_dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        cursor_key: "integration-test-cursor-key".into(),
        min_free_disk_mb: 0,
        pg_pool_size: 4,
        ..Settings::default()
    };
    if backend.postgres() {
        s.store = match backend {
            Backend::Citus => test_citus_url(),
            _ => test_database_url(),
        };
        s.pg_schema = fresh_schema();
    }
    s
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(Backend::Embedded, |_| {}).await
    }

    pub async fn start_on(backend: Backend) -> TestServer {
        Self::start_with(backend, |_| {}).await
    }

    /// A server whose settings `set` changes from the test defaults.
    pub async fn start_with(backend: Backend, set: impl FnOnce(&mut Settings)) -> TestServer {
        Self::start_hooked(backend, set, None).await
    }

    /// ...and whose HTTP layer sees the store through `wrap`.
    pub async fn start_hooked(
        backend: Backend,
        set: impl FnOnce(&mut Settings),
        wrap: Option<WrapStore>,
    ) -> TestServer {
        // Errors the server logs show up in a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warn,fjall=error,lsm_tree=error")
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(T0);
        let mut settings = test_settings(backend, dir.path());
        set(&mut settings);
        let schema = backend
            .postgres()
            .then(|| (settings.store.clone(), settings.pg_schema.clone()));
        let hooks = Hooks {
            clock: clock.clone(),
            wrap_store: wrap,
        };
        let running = match launch::start(&settings, hooks).await {
            Ok(r) => r,
            Err(e) => panic!(
                "cannot start a test server on {backend:?} (the PostgreSQL tests need a server at \
                 {}: set IMREPORT_TEST_DATABASE_URL, or start this machine's with \
                 `pg_ctlcluster --skip-systemctl-redirect 15 main start`; the Citus tests a \
                 cluster at {}: IMREPORT_TEST_CITUS_URL, or .ci/run starts one): {e:#}",
                test_database_url(),
                test_citus_url()
            ),
        };
        let mut server = TestServer {
            url: running.url(),
            http: reqwest::Client::new(),
            clock,
            store: running.stores.store.clone(),
            embedded: running.stores.embedded.clone(),
            state: running.state.clone(),
            conns: running.conns.clone(),
            schema,
            app: Creds {
                key: String::new(),
                secret: String::new(),
            },
            _running: running,
            _dir: dir,
        };
        server.app = server.create_app().await;
        server
    }

    /// The PostgreSQL schema the server runs in (PostgreSQL and Citus backends).
    pub fn pg_schema(&self) -> Option<&str> {
        self.schema.as_ref().map(|(_, s)| s.as_str())
    }

    /// The server's `host:port`, for raw sockets.
    pub fn addr(&self) -> &str {
        self.url.strip_prefix("http://").unwrap()
    }

    pub async fn create_app(&self) -> Creds {
        let c = apps::create_app(self.store.as_ref(), apps::CreateApp::default())
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

/// Starts the real binary serving `data` on a free loopback port with `extra` flags, logging as
/// `IMREPORT_LOG=log` says to `stderr`; returns it, reaped when dropped, and the lines it
/// printed at start up to the first that begins with `until`.
pub fn spawn_server_printing(
    data: &std::path::Path,
    extra: &[&str],
    log: &str,
    stderr: std::process::Stdio,
    until: &str,
) -> (Reaped, Vec<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(BIN)
        .args([
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("IMREPORT_LOG", log)
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the server never printed {until}"
        );
        let done = line.starts_with(until);
        lines.push(line.trim().to_owned());
        if done {
            break;
        }
    }
    // The rest of its output is read (and dropped) for as long as it runs.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (Reaped(child), lines)
}

/// The value a `prefix…` line of `lines` gives.
pub fn printed(lines: &[String], prefix: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}"))
        .to_owned()
}

/// Creates an app with these credentials in a data dir, through the real binary.
pub fn create_app_at(data: &std::path::Path, creds: &Creds) {
    let (ok, _, err) = imreport(&[
        "app",
        "create",
        "--data-dir",
        data.to_str().unwrap(),
        "--app-key",
        &creds.key,
        "--master-secret",
        &creds.secret,
    ]);
    assert!(ok, "{err}");
}

/// A `name: value` line of the binary's output.
pub fn field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap()
        .trim()
        .to_owned()
}

/// A child process killed (SIGKILL) when dropped, so that a failing test leaves no server behind.
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // The rest of its output is read (and dropped) for as long as it runs.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let url = line
        .trim()
        .strip_prefix("imreport listening on ")
        .expect("the server started")
        .to_owned();
    (child, url)
}

/// Posts events to a server's ingest API as NDJSON; panics unless 200; returns the answer.
pub async fn ingest_at(
    http: &reqwest::Client,
    url: &str,
    creds: &Creds,
    events: &[Value],
) -> Value {
    let r = http
        .post(format!("{url}/ingest/v1/events"))
        .header("authorization", creds.header())
        .body(ndjson(events))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
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

/// A multi-threaded runtime for a test that is not async itself (a property test's cases).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Checks a property on `cases` generated inputs and panics with the smallest failing one.
/// Failures are kept in, and replayed from, `source`'s `proptest-regressions` file, as
/// `proptest!` does.
pub fn check_property<S: proptest::strategy::Strategy>(
    cases: u32,
    source: &'static str,
    inputs: S,
    test: impl Fn(S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
) {
    use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
    let mut runner = TestRunner::new(Config {
        cases,
        source_file: Some(source),
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..Config::default()
    });
    if let Err(e) = runner.run(&inputs, test) {
        panic!("{e}");
    }
}
