//! Read replicas on real streaming replication: a PostgreSQL primary and a hot standby started
//! from this machine's PostgreSQL 15 binaries for each test, servers reading from the standby
//! (`pg_standbys`) while ingest goes to the primary, and the primary lost and the standby
//! promoted under ingest.

use crate::support::*;
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A primary and its streaming hot standby in a temporary dir on free ports (run as the
/// `postgres` user when the tests run as root: PostgreSQL refuses root), stopped at once and
/// removed on drop.
struct Streaming {
    dir: tempfile::TempDir,
    primary: u16,
    standby: u16,
}

fn root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// Runs a PostgreSQL program, as `postgres` when we are root.
fn pg(program: &str, args: &[&str]) -> Output {
    let path = format!("{PG_BIN}/{program}");
    let mut cmd = if root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(&path)
    };
    cmd.args(args).output().unwrap()
}

fn pg_ok(program: &str, args: &[&str]) {
    let out = pg(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn append(file: PathBuf, lines: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    f.write_all(lines.as_bytes()).unwrap();
}

impl Streaming {
    fn start() -> Streaming {
        let dir = tempfile::Builder::new()
            .prefix("imreport-streaming")
            .tempdir()
            .unwrap();
        if root() {
            let id = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .unwrap();
                String::from_utf8(out.stdout)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            };
            std::os::unix::fs::chown(dir.path(), Some(id("-u")), Some(id("-g"))).unwrap();
        }
        let (primary, standby) = (free_port(), free_port());
        let s = Streaming {
            dir,
            primary,
            standby,
        };
        let (p, sb, sock) = (s.data("primary"), s.data("standby"), s.path_str());
        pg_ok(
            "initdb",
            &["-D", &p, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        // fsync off: the tests kill servers, never the machine.
        append(
            Path::new(&p).join("postgresql.conf"),
            &format!(
                "listen_addresses = '127.0.0.1'\nport = {primary}\nunix_socket_directories = '{sock}'\n\
                 fsync = off\nwal_keep_size = '512MB'\nmax_wal_senders = 5\nshared_buffers = '64MB'\n"
            ),
        );
        pg_ok(
            "pg_ctl",
            &["-D", &p, "-l", &s.log("primary"), "-w", "start"],
        );
        pg_ok(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.to_string(),
                "-U",
                "postgres",
                "-D",
                &sb,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        );
        append(
            Path::new(&sb).join("postgresql.conf"),
            &format!("port = {standby}\n"),
        );
        pg_ok(
            "pg_ctl",
            &["-D", &sb, "-l", &s.log("standby"), "-w", "start"],
        );
        s
    }

    fn path_str(&self) -> String {
        self.dir.path().to_str().unwrap().to_owned()
    }

    fn data(&self, which: &str) -> String {
        format!("{}/{which}", self.path_str())
    }

    fn log(&self, which: &str) -> String {
        format!("{}/{which}.log", self.path_str())
    }

    fn url(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    }

    async fn sql(&self, port: u16, sql: &str) {
        let (client, conn) = tokio_postgres::connect(&self.url(port), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute(sql).await.unwrap();
    }

    async fn lsn(&self, port: u16, expr: &str) -> i64 {
        let (client, conn) = tokio_postgres::connect(&self.url(port), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .query_one(&format!("SELECT ({expr} - '0/0'::pg_lsn)::int8"), &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Waits until the standby has replayed everything the primary has written so far.
    async fn caught_up(&self) {
        let written = self.lsn(self.primary, "pg_current_wal_lsn()").await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.lsn(self.standby, "pg_last_wal_replay_lsn()").await < written {
            assert!(Instant::now() < deadline, "the standby does not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(&self, which: &str) {
        let _ = pg(
            "pg_ctl",
            &["-D", &self.data(which), "-m", "immediate", "stop"],
        );
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.stop("primary");
        self.stop("standby");
    }
}

/// `count` messages from msgid `first` on, `step` ms apart from `at`, to one user, group or
/// chatroom in turn.
fn messages(first: u64, count: u64, at: i64, step: i64) -> Vec<Value> {
    (first..first + count)
        .map(|i| {
            let (tt, target) = match i % 3 {
                0 => ("single", "u1"),
                1 => ("group", "g1"),
                _ => ("chatroom", "r1"),
            };
            text_message(i, at + (i - first) as i64 * step, tt, target, "u2")
        })
        .collect()
}

fn ids(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["msgid"].as_u64().unwrap()).collect()
}

/// A walk whose first page is read through `first` and every next page through `rest`.
async fn walk_across(
    first: &TestServer,
    rest: &TestServer,
    creds: &Creds,
    path: &str,
    window: &str,
) -> (u64, Vec<u64>) {
    let (status, mut page) = first
        .get_as(creds, &format!("{path}?count=40&{window}"))
        .await;
    assert_eq!(status, 200, "{page}");
    let total = page["total"].as_u64().unwrap();
    let mut got = Vec::new();
    loop {
        got.extend(ids(page["messages"].as_array().unwrap()));
        let Some(c) = page["cursor"].as_str() else {
            break;
        };
        let (status, next) = rest.get_as(creds, &format!("{path}?cursor={c}")).await;
        assert_eq!(status, 200, "{next}");
        assert_eq!(next["total"].as_u64().unwrap(), total, "total is carried");
        page = next;
    }
    (total, got)
}

/// Ingests through `s` as the app `creds` names; panics unless 200.
async fn ingest_as(s: &TestServer, creds: &Creds, events: &[Value]) {
    let (status, out) = s.ingest_as(creds, ndjson(events)).await;
    assert_eq!(status, 200, "{out}");
}

/// The messages the hourly statistics of `creds`'s app count in `hours` hours from `from`.
async fn counted(s: &TestServer, creds: &Creds, from: i64, hours: i64) -> u64 {
    let mut n = 0;
    for h in 0..hours {
        let (status, stats) = s
            .get_as(
                creds,
                &format!(
                    "/v2/statistic/messages?time_unit=HOUR&start={}&duration=1",
                    enc(&sh(from + h * HOUR)[..13])
                ),
            )
            .await;
        assert_eq!(status, 200, "{stats}");
        for bucket in stats["send_msg_stat"].as_array().unwrap() {
            n += bucket_total(bucket);
        }
    }
    n
}

/// Walks served by a standby equal walks served by the primary; with the standby's replay
/// paused, a walk that began on the primary after new ingest still yields exactly its `total`
/// through a server that reads the standby (it waits, then reads the primary), a walk begun on
/// the (behind) standby continues exactly on the primary, and a standby lagging more than
/// `pg_standby_max_lag_secs` serves no first page.
#[tokio::test]
async fn walks_on_a_standby_equal_the_primarys_and_never_outrun_its_replay() {
    let pg = Streaming::start();
    let with_standby = |lag: f64| {
        let (primary, standby) = (pg.url(pg.primary), pg.url(pg.standby));
        move |s: &mut imreport::settings::Settings| {
            s.store = primary;
            s.pg_standbys = standby;
            s.pg_standby_max_lag_secs = lag;
        }
    };
    let a = TestServer::start_with(Backend::Postgres, with_standby(3600.0)).await;
    let schema = a.pg_schema().unwrap().to_owned();
    let same_schema = |s: &mut imreport::settings::Settings| s.pg_schema = schema.clone();
    let b = TestServer::start_with(Backend::Postgres, |s| {
        s.store = pg.url(pg.primary);
        same_schema(s);
    })
    .await;
    let creds = a.app.clone();
    let base = T0 - 2 * HOUR;
    a.ingest_ok(&messages(1, 300, base, 1000)).await;
    pg.caught_up().await;
    let window = format!(
        "begin_time={}&end_time={}",
        enc(&sh(base)),
        enc(&sh(T0 - 1))
    );
    let every: Vec<u64> = (1..=300).collect();
    for path in [
        "/v2/messages",
        "/v2/groups/g1/messages",
        "/v2/chatrooms/r1/messages",
    ] {
        let on_a = walk_across(&a, &a, &creds, path, &window).await;
        let on_b = walk_across(&b, &b, &creds, path, &window).await;
        assert_eq!(on_a, on_b, "{path}");
        assert_eq!(on_a.0 as usize, on_a.1.len());
    }

    // Replay paused, 100 more messages in between the others, through the primary.
    pg.sql(pg.standby, "SELECT pg_wal_replay_pause()").await;
    ingest_as(&b, &creds, &messages(301, 100, base + 500, 1000)).await;
    // A standby is set aside from a read that failed on it (a query cancelled by replay) or
    // until the watcher's first look, and served again at the watcher's next tick (1 s): the
    // primary answers meanwhile. Within a few ticks the first page is the standby's.
    let mut first = Value::Null;
    for _ in 0..50 {
        let (status, page) = a.get(&format!("/v2/messages?count=40&{window}")).await;
        assert_eq!(status, 200);
        first = page;
        if first["total"] == 300 {
            break;
        }
        assert_eq!(
            first["total"], 400,
            "the primary's, while the standby is set aside"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(first["total"], 300, "the first page is the standby's");
    assert_eq!(
        counted(&a, &creds, base, 1).await,
        300,
        "its statistics agree"
    );
    // Begun on the standby, continued on the primary: the standby's snapshot.
    let (total, got) = walk_across(&a, &b, &creds, "/v2/messages", &window).await;
    assert_eq!(total, 300);
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, every, "the walk is the standby's snapshot");
    // Begun on the primary, continued through the server that reads the (behind) standby.
    let (total, got) = walk_across(&b, &a, &creds, "/v2/messages", &window).await;
    assert_eq!(total, 400);
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=400).collect::<Vec<u64>>(), "{got:?}");
    let (_, primary_walk) = walk_across(&b, &b, &creds, "/v2/messages", &window).await;
    assert_eq!(got, primary_walk, "in the same order");

    // A server allowing 1 s of lag stops reading first pages from the paused standby.
    let c = TestServer::start_with(Backend::Postgres, |s| {
        with_standby(1.0)(s);
        same_schema(s);
    })
    .await;
    ingest_as(&b, &creds, &messages(401, 50, base + 700, 1000)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, page) = c
            .get_as(&creds, &format!("/v2/messages?count=40&{window}"))
            .await;
        if page["total"] == 450 && counted(&c, &creds, base, 1).await == 450 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lagging standby still serves"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it stays set aside while it lags.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(counted(&c, &creds, base, 1).await, 450);
    let (status, first) = a.get(&format!("/v2/messages?count=40&{window}")).await;
    assert_eq!(
        (status, &first["total"]),
        (200, &Value::from(300)),
        "the standby still serves a server allowing it to lag"
    );

    // Replay resumed: the standby serves the walk again.
    pg.sql(pg.standby, "SELECT pg_wal_replay_resume()").await;
    pg.caught_up().await;
    let (total, got) = walk_across(&b, &a, &creds, "/v2/messages", &window).await;
    assert_eq!((total, got.len()), (450, 450));
    assert_eq!(counted(&a, &creds, base, 1).await, 450);
    drop((a, b, c));
}

/// The primary is killed while several clients ingest through a server whose URL lists both
/// hosts (`target_session_attrs=read-write`) and which reads the standby; replication is
/// synchronous. While no host takes writes, ingest answers 503 (never 500) and history is read
/// from the standby; once the standby is promoted the same server ingests again with no
/// restart. Every acknowledged batch is stored whole, nothing is stored twice, and the
/// statistics equal the history.
#[tokio::test]
async fn killing_the_primary_under_ingest_loses_no_acknowledged_batch() {
    let pg = Streaming::start();
    pg.sql(
        pg.primary,
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
    )
    .await;
    pg.sql(pg.primary, "SELECT pg_reload_conf()").await;
    let both = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        pg.primary, pg.standby
    );
    let s = TestServer::start_with(Backend::Postgres, |s| {
        s.store = both;
        s.pg_standbys = pg.url(pg.standby);
        s.pg_standby_max_lag_secs = 3600.0;
    })
    .await;
    let base = T0 - 2 * HOUR;
    const CLIENTS: u64 = 4;
    const PER: u64 = 40;
    // Client c's batch k: msgids from 1 + c * 1,000,000 + k * PER.
    let first = |c: u64, k: u64| 1 + c * 1_000_000 + k * PER;
    let s = std::sync::Arc::new(s);
    // 1: the primary is down; 2: the standby is promoted and a batch went through since.
    let phase = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    use std::sync::atomic::Ordering::SeqCst;
    let clients = (0..CLIENTS).map(|c| {
        let (s, phase, stop) = (s.clone(), phase.clone(), stop.clone());
        async move {
            let (mut acked, mut refused_while_down) = (0u64, 0u64);
            while !stop.load(SeqCst) {
                let at = base + (acked * PER) as i64 * 5 + c as i64;
                let body = ndjson(&messages(first(c, acked), PER, at, 5));
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let (status, out) = s.ingest(body.clone()).await;
                    match status {
                        200 => {
                            assert_eq!(
                                out["accepted"].as_u64().unwrap()
                                    + out["duplicates"].as_u64().unwrap(),
                                PER,
                                "{out}"
                            );
                            if phase.load(SeqCst) == 2 {
                                phase.store(3, SeqCst);
                            }
                            break;
                        }
                        503 => {
                            assert_eq!(out["error"]["code"], 899030, "{out}");
                            if phase.load(SeqCst) == 1 {
                                refused_while_down += 1;
                            }
                        }
                        other => panic!("ingest answered {other}: {out}"),
                    }
                    assert!(Instant::now() < deadline, "ingest does not resume");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                acked += 1;
            }
            (acked, refused_while_down)
        }
    });
    let failover = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        pg.stop("primary");
        phase.store(1, SeqCst);
        // Reads go on from the standby meanwhile.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let window = format!(
            "begin_time={}&end_time={}",
            enc(&sh(base)),
            enc(&sh(T0 - 1))
        );
        let (status, page) = s.get(&format!("/v2/messages?count=10&{window}")).await;
        assert_eq!(status, 200, "{page}");
        pg_ok("pg_ctl", &["-D", &pg.data("standby"), "-w", "promote"]);
        phase.store(2, SeqCst);
        let deadline = Instant::now() + Duration::from_secs(60);
        while phase.load(SeqCst) != 3 {
            assert!(Instant::now() < deadline, "ingest does not resume");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A while of ingest on the new primary.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, SeqCst);
    };
    let (answers, ()) = tokio::join!(futures::future::join_all(clients), failover);
    assert!(
        answers.iter().map(|a| a.1).sum::<u64>() > 0,
        "ingest was refused while no host took writes: {answers:?}"
    );
    let mut want: Vec<u64> = (0..CLIENTS)
        .flat_map(|c| first(c, 0)..first(c, answers[c as usize].0))
        .collect();
    want.sort_unstable();
    let (total, msgs) = s
        .walk(&s.app, "/v2/messages", 500, &sh(base), &sh(T0 - 1))
        .await;
    let mut got = ids(&msgs);
    got.sort_unstable();
    assert_eq!((total, got), (want.len() as u64, want), "every batch once");
    assert_eq!(
        counted(&s, &s.app, base, 1).await,
        total,
        "statistics equal history"
    );
}
