//! The storage contract, checked at the `Store` trait itself on every backend: the embedded
//! store in a temporary directory, and PostgreSQL on a fresh schema of the test database
//! (`IMREPORT_TEST_DATABASE_URL`, default this machine's; these tests fail, never skip, when it
//! is unreachable). Each test is written once and runs as `embedded::…` and `postgres::…`.

use imreport_domain::Clock;
use imreport_domain::app::{App, SecretHash};
use imreport_domain::event::{Event, IngestLimits, MAX_MSGID, decode_batch};
use imreport_domain::scope::Scope;
use imreport_domain::time::{MILLIS_PER_DAY, MILLIS_PER_HOUR, ReportTz, TimeRange};
use imreport_store::embedded::{EmbeddedConfig, EmbeddedStore};
use imreport_store::postgres::{PostgresConfig, PostgresStore};
use imreport_store::{IngestOutcome, PageRequest, Store, StoreError};
use std::sync::Arc;

/// 2026-11-20 12:00:00 UTC.
const T0: i64 = 1_795_176_000_000;
/// Asia/Shanghai, the report zone of these stores.
const SH: i64 = 8 * MILLIS_PER_HOUR;

#[derive(Clone, Copy)]
enum Backend {
    Embedded,
    Postgres,
}

/// A fresh store of a backend, with a manual clock at `T0`; cleans up after itself.
struct Fresh {
    store: Arc<dyn Store>,
    clock: Clock,
    /// The database URL and schema, to drop it after the test.
    schema: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Drop for Fresh {
    fn drop(&mut self) {
        // On a connection of its own, from a thread of its own: a Drop cannot await, and the
        // store's pooled connections run on the test's runtime, which is the one blocked here.
        if let Some((url, schema)) = self.schema.take() {
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async {
                        let (client, conn) =
                            tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                        tokio::spawn(conn);
                        client
                            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                            .await
                    })
            })
            .join();
        }
    }
}

async fn fresh(backend: Backend, retention_days: u32) -> Fresh {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let tz = ReportTz::new("Asia/Shanghai").unwrap();
    match backend {
        Backend::Embedded => {
            let config = EmbeddedConfig::new(retention_days, 256, tz, 0, clock.clone());
            let store = EmbeddedStore::open(dir.path(), config).unwrap();
            Fresh {
                store: Arc::new(store),
                clock,
                schema: None,
                _dir: dir,
            }
        }
        Backend::Postgres => {
            let url = std::env::var("IMREPORT_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let schema = format!("suite_{}_{}", std::process::id(), rand_suffix());
            let config = PostgresConfig {
                schema: Some(schema.clone()),
                pool_size: 4,
                retention_days,
                clock: clock.clone(),
                tz,
                busy_hour: imreport_store::BUSY_HOUR,
                standbys: Vec::new(),
                standby_max_lag: std::time::Duration::from_secs(5),
                url: url.clone(),
            };
            let pg = PostgresStore::connect(config).await.unwrap_or_else(|e| {
                panic!("the PostgreSQL store suite needs a server at {url}: {e}")
            });
            Fresh {
                store: Arc::new(pg),
                clock,
                schema: Some((url, schema)),
                _dir: dir,
            }
        }
    }
}

/// A suffix no two tests of this process share.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos) * 1000 + N.fetch_add(1, Ordering::Relaxed)
}

async fn app(store: &dyn Store, key: &str) -> App {
    store
        .create_app(key, key, SecretHash::new("secret-secret"))
        .await
        .unwrap()
}

/// Events decoded from NDJSON lines, as the ingest API would hand them over.
fn events(app: &App, lines: &[String]) -> Vec<Event> {
    decode_batch(
        lines.join("\n").as_bytes(),
        &app.key,
        T0,
        &IngestLimits::default(),
    )
    .unwrap()
}

fn message(msgid: u64, ctime: i64, target_type: &str, target: &str, from: &str) -> String {
    let id = if msgid == 0 {
        String::new()
    } else {
        format!(r#""msgid":{msgid},"#)
    };
    format!(
        r#"{{"event":"message",{id}"msg_ctime":{ctime},"target_type":"{target_type}","target_id":"{target}","from_id":"{from}","msg_type":"text","msg_body":{{"text":"m{msgid}"}}}}"#
    )
}

/// Every page of a scope's window: (total of the first page, (ctime, msgid) of each message).
async fn walk(
    store: &dyn Store,
    app: &App,
    scope: &Scope,
    range: TimeRange,
    count: u16,
) -> (u64, Vec<(i64, u64)>) {
    let mut req = PageRequest {
        range,
        count,
        after: None,
        snapshot: Default::default(),
        total: 0,
    };
    let mut seen = Vec::new();
    let mut total = None;
    loop {
        let page = store.page(app, scope, req.clone()).await.unwrap();
        let first_total = *total.get_or_insert(page.total);
        assert_eq!(page.total, first_total, "total is carried");
        let body: serde_json::Value =
            serde_json::from_slice(&[b"[", page.json.as_slice(), b"]"].concat()).unwrap();
        let msgs = body.as_array().unwrap();
        assert_eq!(msgs.len(), page.count);
        seen.extend(msgs.iter().map(|m| {
            (
                m["msg_ctime"].as_i64().unwrap(),
                m["msgid"].as_u64().unwrap(),
            )
        }));
        match page.next {
            None => return (first_total, seen),
            Some(after) => {
                req = PageRequest {
                    after: Some(after),
                    snapshot: page.snapshot.clone(),
                    total: page.total,
                    ..req
                }
            }
        }
    }
}

fn around_t0() -> TimeRange {
    TimeRange {
        begin: T0 - MILLIS_PER_DAY,
        end: T0 + 60_000,
    }
}

macro_rules! on_every_backend {
    ($($t:ident),* $(,)?) => {
        mod embedded {
            $( #[tokio::test] async fn $t() { super::$t(super::Backend::Embedded).await } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $t() { super::$t(super::Backend::Postgres).await } )*
        }
    };
}

on_every_backend!(
    apps_are_created_found_rotated_and_deleted,
    a_batch_is_stored_whole_and_every_scope_pages_in_order,
    duplicates_and_expired_events_are_counted_not_stored,
    a_walk_reads_what_was_stored_when_it_began,
    assigned_msgids_are_fresh_and_stop_at_the_largest,
    rollups_agree_with_what_was_stored,
    retention_drops_whole_days_and_keeps_the_totals,
    an_open_store_is_ready,
);

async fn apps_are_created_found_rotated_and_deleted(backend: Backend) {
    let f = fresh(backend, 60).await;
    let s = f.store.as_ref();
    let a = app(s, "app-a").await;
    let b = app(s, "app-b").await;
    assert_ne!(a.id, b.id);
    assert!(matches!(
        s.create_app("app-a", "again", SecretHash::new("x-secret-x"))
            .await,
        Err(StoreError::AppExists(_))
    ));
    assert_eq!(s.app("app-a").await.unwrap(), Some(a.clone()));
    assert_eq!(s.app("nobody").await.unwrap(), None);
    let keys: Vec<String> = s
        .list_apps()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.key)
        .collect();
    assert_eq!(keys, ["app-a", "app-b"]);
    let rotated = s
        .set_secret("app-a", SecretHash::new("new-secret"))
        .await
        .unwrap();
    assert!(rotated.secret.verify("new-secret") && !rotated.secret.verify("secret-secret"));
    assert!(
        s.app("app-a")
            .await
            .unwrap()
            .unwrap()
            .secret
            .verify("new-secret")
    );
    assert!(matches!(
        s.set_secret("nobody", SecretHash::new("new-secret")).await,
        Err(StoreError::AppNotFound(_))
    ));
    s.delete_app("app-a").await.unwrap();
    assert_eq!(s.app("app-a").await.unwrap(), None);
    let again = app(s, "app-a").await;
    assert!(again.id > b.id, "app ids are never reused");
}

async fn a_batch_is_stored_whole_and_every_scope_pages_in_order(backend: Backend) {
    let f = fresh(backend, 60).await;
    let s = f.store.as_ref();
    let a = app(s, "app").await;
    // 30 messages, several in one millisecond, out of time order.
    let mut lines = Vec::new();
    for i in 0..30u64 {
        let ctime = T0 - 10_000 + (i as i64 % 7) * 100;
        let (tt, target) = match i % 3 {
            0 => ("single", "bob"),
            1 => ("group", "g1"),
            _ => ("chatroom", "r1"),
        };
        lines.push(message(100 - i, ctime, tt, target, "alice"));
    }
    let out = s.ingest(&a, events(&a, &lines)).await.unwrap();
    assert_eq!(
        out,
        IngestOutcome {
            accepted: 30,
            duplicates: 0,
            expired: 0
        }
    );
    let mut all: Vec<(i64, u64)> = (0..30u64)
        .map(|i| (T0 - 10_000 + (i as i64 % 7) * 100, 100 - i))
        .collect();
    all.sort();
    for (scope, want) in [
        (Scope::App, all.clone()),
        (Scope::User("alice".into()), all.clone()),
        (
            Scope::User("bob".into()),
            all.iter()
                .copied()
                .filter(|(_, id)| (100 - id) % 3 == 0)
                .collect(),
        ),
        (
            Scope::Group("g1".into()),
            all.iter()
                .copied()
                .filter(|(_, id)| (100 - id) % 3 == 1)
                .collect(),
        ),
        (
            Scope::Chatroom("r1".into()),
            all.iter()
                .copied()
                .filter(|(_, id)| (100 - id) % 3 == 2)
                .collect(),
        ),
        (Scope::Group("nobody".into()), Vec::new()),
    ] {
        for count in [1, 4, 1000] {
            let (total, got) = walk(s, &a, &scope, around_t0(), count).await;
            assert_eq!(total as usize, want.len(), "{scope:?}");
            assert_eq!(got, want, "{scope:?} in pages of {count}");
        }
    }
    // Inclusive bounds to the millisecond.
    let exact = TimeRange {
        begin: T0 - 10_000 + 100,
        end: T0 - 10_000 + 200,
    };
    let (total, got) = walk(s, &a, &Scope::App, exact, 3).await;
    assert_eq!(total as usize, got.len());
    assert!(
        got.iter()
            .all(|(t, _)| (exact.begin..=exact.end).contains(t))
    );
    assert_eq!(got.len(), 9);
}

async fn duplicates_and_expired_events_are_counted_not_stored(backend: Backend) {
    let f = fresh(backend, 60).await;
    let s = f.store.as_ref();
    let a = app(s, "app").await;
    let b = app(s, "other").await;
    let lines = vec![
        message(1, T0 - 1000, "single", "bob", "alice"),
        message(1, T0 - 900, "single", "bob", "alice"),
        message(2, T0 - 61 * MILLIS_PER_DAY, "single", "bob", "alice"),
        r#"{"event":"user_login","username":"dave","time":1795175000000}"#.into(),
        r#"{"event":"user_login","username":"dave","time":1795175000001}"#.into(),
    ];
    let out = s.ingest(&a, events(&a, &lines)).await.unwrap();
    assert_eq!(
        out,
        IngestOutcome {
            accepted: 2,
            duplicates: 2,
            expired: 1
        }
    );
    let again = s.ingest(&a, events(&a, &lines[..1])).await.unwrap();
    assert_eq!(
        again,
        IngestOutcome {
            accepted: 0,
            duplicates: 1,
            expired: 0
        }
    );
    // Another app's msgid 1 is its own.
    let other = s.ingest(&b, events(&b, &lines[..1])).await.unwrap();
    assert_eq!(other.accepted, 1);
    let (total, got) = walk(s, &a, &Scope::App, around_t0(), 10).await;
    assert_eq!((total, got), (1, vec![(T0 - 1000, 1)]));
}

async fn a_walk_reads_what_was_stored_when_it_began(backend: Backend) {
    let f = fresh(backend, 60).await;
    let s = f.store.as_ref();
    let a = app(s, "app").await;
    let lines: Vec<String> = (1..=6)
        .map(|i| message(i * 10, T0 - 1000 + i as i64, "single", "bob", "alice"))
        .collect();
    s.ingest(&a, events(&a, &lines)).await.unwrap();
    let first = s
        .page(
            &a,
            &Scope::App,
            PageRequest {
                range: around_t0(),
                count: 2,
                after: None,
                snapshot: Default::default(),
                total: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!((first.total, first.count), (6, 2));
    // Stored after the first page, some after its position: not part of this walk.
    let later = vec![
        message(5, T0 - 1000 + 3, "single", "bob", "alice"),
        message(999, T0 - 10, "single", "bob", "alice"),
    ];
    s.ingest(&a, events(&a, &later)).await.unwrap();
    let mut req = PageRequest {
        range: around_t0(),
        count: 2,
        after: first.next,
        snapshot: first.snapshot.clone(),
        total: first.total,
    };
    let mut rest = Vec::new();
    while req.after.is_some() {
        let page = s.page(&a, &Scope::App, req.clone()).await.unwrap();
        assert_eq!(page.total, 6);
        rest.push(page.count);
        req.after = page.next;
    }
    assert_eq!(
        rest.iter().sum::<usize>(),
        4,
        "the walk yields its total, no more"
    );
    let (total, _) = walk(s, &a, &Scope::App, around_t0(), 100).await;
    assert_eq!(total, 8, "a new walk sees them");
}

async fn assigned_msgids_are_fresh_and_stop_at_the_largest(backend: Backend) {
    let f = fresh(backend, 60).await;
    let s = f.store.as_ref();
    let a = app(s, "app").await;
    let unnumbered = |t| message(0, t, "single", "bob", "alice");
    let batch = vec![
        unnumbered(T0 - 30),
        message(500, T0 - 20, "single", "bob", "alice"),
        unnumbered(T0 - 10),
    ];
    s.ingest(&a, events(&a, &batch)).await.unwrap();
    let (_, got) = walk(s, &a, &Scope::App, around_t0(), 10).await;
    let ids: Vec<u64> = got.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids, [1, 500, 501]);
    s.ingest(
        &a,
        events(&a, &[message(MAX_MSGID, T0 - 5, "single", "bob", "alice")]),
    )
    .await
    .unwrap();
    let refused = s.ingest(&a, events(&a, &[unnumbered(T0 - 4)])).await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    let (total, _) = walk(s, &a, &Scope::App, around_t0(), 10).await;
    assert_eq!(total, 4, "nothing of the refused batch");
}

async fn rollups_agree_with_what_was_stored(backend: Backend) {
    let f = fresh(backend, 60).await;
    let s = f.store.as_ref();
    let a = app(s, "app").await;
    let day = (T0 + SH).div_euclid(MILLIS_PER_DAY);
    let hour = (T0 + SH).div_euclid(MILLIS_PER_HOUR);
    let lines = vec![
        r#"{"event":"user_registered","username":"alice","time":1795170000000}"#.to_owned(),
        r#"{"event":"user_registered","username":"bob","time":1795170000000}"#.to_owned(),
        r#"{"event":"group_created","gid":"g1","time":1795170000000}"#.to_owned(),
        message(1, T0 - 10, "single", "bob", "alice"),
        message(2, T0 - 9, "group", "g1", "alice"),
        message(3, T0 - 8, "group", "g1", "bob"),
        message(4, T0 + 10, "chatroom", "r1", "carol"),
        r#"{"event":"user_login","username":"dave","time":1795176000000}"#.to_owned(),
        r#"{"event":"user_deleted","username":"bob","time":1795176000000}"#.to_owned(),
    ];
    s.ingest(&a, events(&a, &lines)).await.unwrap();
    let r = s.stats_days(&a, day - 1, day).await.unwrap();
    assert_eq!(r.days.len(), 2);
    let d = r.days[1];
    assert_eq!(d.msgs[0][0] + d.msgs[1][0] + d.msgs[2][0], 4);
    assert_eq!((d.msgs[0][0], d.msgs[1][0], d.msgs[2][0]), (1, 2, 1));
    assert_eq!(
        (d.send_msg_users, d.active_users, d.active_groups),
        (3, 4, 1)
    );
    assert_eq!(
        (d.new_users, d.net_users, d.new_groups, d.net_groups),
        (2, 1, 1, 1)
    );
    assert_eq!((r.users_before, r.groups_before), (0, 0));
    let hours = s.stats_hours(&a, hour - 1, hour).await.unwrap();
    let sum = |h: &[[u64; 4]; 3]| h.iter().flatten().sum::<u64>();
    assert_eq!((sum(&hours[0]), sum(&hours[1])), (3, 1));
    // The day's statistics count what its history holds.
    let civil = TimeRange {
        begin: day * MILLIS_PER_DAY - SH,
        end: (day + 1) * MILLIS_PER_DAY - SH - 1,
    };
    let (total, _) = walk(s, &a, &Scope::App, civil, 100).await;
    assert_eq!(total, 4);
    // Later days carry the totals.
    let r = s.stats_days(&a, day + 1, day + 2).await.unwrap();
    assert_eq!((r.users_before, r.groups_before), (1, 1));
}

async fn retention_drops_whole_days_and_keeps_the_totals(backend: Backend) {
    let f = fresh(backend, 3).await;
    let s = f.store.as_ref();
    let a = app(s, "app").await;
    let lines = vec![
        r#"{"event":"user_registered","username":"alice","time":1795170000000}"#.to_owned(),
        message(1, T0 - 2 * MILLIS_PER_DAY, "single", "bob", "alice"),
        message(2, T0, "single", "bob", "alice"),
    ];
    s.ingest(&a, events(&a, &lines)).await.unwrap();
    let wide = TimeRange {
        begin: T0 - 3 * MILLIS_PER_DAY,
        end: T0 + 1000,
    };
    assert_eq!(walk(s, &a, &Scope::App, wide, 10).await.0, 2);
    let retained_before = s.stats_retained_from();
    f.clock.set(T0 + 2 * MILLIS_PER_DAY);
    s.enforce_retention().await.unwrap();
    assert!(s.stats_retained_from() > retained_before);
    let (total, got) = walk(s, &a, &Scope::App, wide, 10).await;
    assert_eq!(
        (total, got),
        (1, vec![(T0, 2)]),
        "the oldest day is gone, whole"
    );
    let today = (T0 + 2 * MILLIS_PER_DAY + SH).div_euclid(MILLIS_PER_DAY);
    let r = s.stats_days(&a, today, today).await.unwrap();
    assert_eq!(r.users_before, 1, "the all-time total keeps its baseline");
}

async fn an_open_store_is_ready(backend: Backend) {
    let f = fresh(backend, 60).await;
    f.store.check_ready().await.unwrap();
}
