//! Stateless replicas: two real `imreport serve` processes over one PostgreSQL schema, as an
//! operator scaling out runs them (no shared cursor key configured: they find it in the database).

use crate::support::*;
use serde_json::Value;

struct Replicas {
    children: Vec<std::process::Child>,
    db: String,
    schema: String,
    _dirs: Vec<tempfile::TempDir>,
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        drop_schema_at(self.db.clone(), std::mem::take(&mut self.schema));
    }
}

fn dir_path(r: &Replicas) -> std::path::PathBuf {
    r._dirs[0].path().to_owned()
}

/// Two real servers over one fresh schema (no configured cursor key), and an app created
/// through the first one's admin API.
struct TwoServers {
    replicas: Replicas,
    schema: String,
    urls: [String; 2],
    data: [String; 2],
    creds: Creds,
}

fn two_servers(backend: Backend) -> TwoServers {
    let schema = fresh_schema();
    let db = match backend {
        Backend::Citus => test_citus_url(),
        _ => test_database_url(),
    };
    let store = ["--store", db.as_str(), "--pg-schema", schema.as_str()];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let data = dirs
        .each_ref()
        .map(|d| d.path().to_str().unwrap().to_owned());
    let (a, url_a) = spawn_server(&data[0], &store);
    let (b, url_b) = spawn_server(&data[1], &store);
    let replicas = Replicas {
        children: vec![a, b],
        db: db.clone(),
        schema: schema.clone(),
        _dirs: dirs.into(),
    };
    let (ok, out, err) = imreport(&["app", "create", "--data-dir", &data[0]]);
    assert!(ok, "{err}");
    let creds = Creds {
        key: field(&out, "app_key"),
        secret: field(&out, "master_secret"),
    };
    TwoServers {
        replicas,
        schema,
        urls: [url_a, url_b],
        data,
        creds,
    }
}

#[tokio::test]
async fn two_servers_over_one_database_answer_as_one() {
    answer_as_one(Backend::Postgres).await
}

#[tokio::test]
async fn two_servers_over_one_citus_cluster_answer_as_one() {
    answer_as_one(Backend::Citus).await
}

async fn answer_as_one(backend: Backend) {
    let TwoServers {
        replicas: _replicas,
        schema,
        urls: [url_a, url_b],
        data: [_, data_b],
        creds,
    } = two_servers(backend);
    let db = _replicas.db.clone();

    // An app created through server A's admin API works on server B at once.
    let (ok, out, err) = imreport(&["app", "list", "--data-dir", &data_b]);
    assert!(ok && out.contains(&creds.key), "{out}{err}");
    // ...and straight in the database, with no server involved.
    let (ok, out, err) = imreport(&["app", "list", "--store", &db, "--pg-schema", &schema]);
    assert!(ok && out.contains(&creds.key), "{out}{err}");

    // Ingest through A is visible through B at once.
    let http = reqwest::Client::new();
    let now = jiff::Timestamp::now().as_millisecond();
    let base = now - 2 * HOUR;
    let events: Vec<Value> = (0..2500u64)
        .map(|i| text_message(i + 1, base + (i as i64 / 10), "single", "bob", "alice"))
        .collect();
    let out = ingest_at(&http, &url_a, &creds, &events).await;
    assert_eq!(out["accepted"], 2500);
    let window = format!(
        "begin_time={}&end_time={}",
        enc(&sh(base - 1000)),
        enc(&sh(now))
    );
    let first = get_json(
        &http,
        &format!("{url_b}/v2/messages?count=1000&{window}"),
        &creds,
    )
    .await;
    assert_eq!(first["total"], 2500, "{first}");

    // A cursor issued by B continues on A, then on B again: every message exactly once.
    let mut seen: Vec<u64> = Vec::new();
    let mut page = first;
    let urls = [&url_a, &url_b];
    for turn in 0.. {
        seen.extend(
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["msgid"].as_u64().unwrap()),
        );
        let Some(cursor) = page["cursor"].as_str() else {
            break;
        };
        let url = urls[turn % 2];
        page = get_json(&http, &format!("{url}/v2/messages?cursor={cursor}"), &creds).await;
        assert_eq!(page["total"], 2500, "{page}");
    }
    assert_eq!(seen, (1..=2500).collect::<Vec<u64>>());

    // `imreport export` walks the same window through one server into NDJSON.
    let out = dir_path(&_replicas).join("export.ndjson");
    let (ok, _, err) = imreport(&[
        "export",
        "--url",
        &url_a,
        "--app-key",
        &creds.key,
        "--master-secret",
        &creds.secret,
        "--begin",
        &sh(base - 1000),
        "--end",
        &sh(now),
        "--count",
        "700",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Every message once, in order (pages are written while the next is fetched).
    let msgids: Vec<u64> = lines.iter().map(|m| m["msgid"].as_u64().unwrap()).collect();
    assert_eq!(msgids, (1..=2500).collect::<Vec<u64>>(), "{err}");

    // The same msgids through both servers at the same moment: stored and counted once.
    let dupes: Vec<Value> = (0..300u64)
        .map(|i| text_message(10_000 + i, now - HOUR, "group", "g1", "carol"))
        .collect();
    let (x, y) = tokio::join!(
        ingest_at(&http, &url_a, &creds, &dupes),
        ingest_at(&http, &url_b, &creds, &dupes)
    );
    assert_eq!(
        x["accepted"].as_u64().unwrap() + y["accepted"].as_u64().unwrap(),
        300
    );
    assert_eq!(
        x["duplicates"].as_u64().unwrap() + y["duplicates"].as_u64().unwrap(),
        300
    );
    for url in urls {
        let p = get_json(
            &http,
            &format!("{url}/v2/groups/g1/messages?count=10&{window}"),
            &creds,
        )
        .await;
        assert_eq!(p["total"], 300, "{p}");
    }
    // Hour by hour (the 2500 and then the 300 an hour later, whose hour is the next one even
    // when the 2500 straddle an hour's end): an HOUR query may not run past the end of its
    // day, which three hours from `now - 2h` would between 00:00 and 02:00 in the report zone.
    let mut counted = 0;
    for at in [base, now - HOUR] {
        let stats = get_json(
            &http,
            &format!(
                "{url_b}/v2/statistic/messages?time_unit=HOUR&start={}&duration=1",
                enc(&sh(at)[..13])
            ),
            &creds,
        )
        .await;
        counted += stats["send_msg_stat"]
            .as_array()
            .unwrap_or_else(|| panic!("{stats}"))
            .iter()
            .map(bucket_total)
            .sum::<u64>();
    }
    assert_eq!(counted, 2800);
}

/// An app named `app` with a fixed secret, created through the store.
async fn create_app(store: &impl imreport_store::Store) -> imreport_domain::app::App {
    store
        .create_app(
            "app",
            "app",
            imreport_domain::app::SecretHash::new("secret-secret"),
        )
        .await
        .unwrap()
}

/// Stores `events` as one batch straight through the store (no server), decoded at `T0`.
async fn store_events(
    store: &impl imreport_store::Store,
    app: &imreport_domain::app::App,
    events: &[Value],
) {
    let decoded = imreport_domain::event::decode_batch(
        ndjson(events).as_bytes(),
        "app",
        T0,
        &imreport_domain::event::IngestLimits::default(),
    )
    .unwrap();
    store.ingest(app, decoded).await.unwrap();
}

/// A plain connection to the test database, to look at or alter a schema behind the store.
async fn connect() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&test_database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// The one `bigint` a query answers.
async fn scalar(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn servers_starting_at_once_migrate_the_schema_once() {
    let schema = fresh_schema();
    let clock = imreport_domain::Clock::manual(T0);
    let open = || postgres_store(&schema, clock.clone(), "Asia/Shanghai", 60);
    let (a, b, c, d) = tokio::join!(open(), open(), open(), open());
    // Every one of them works on the same tables.
    use imreport_store::Store;
    let app = create_app(&a).await;
    for s in [&b, &c, &d] {
        assert_eq!(s.app("app").await.unwrap().unwrap().id, app.id);
    }
    let client = connect().await;
    let applied = scalar(
        &client,
        &format!("SELECT count(*) FROM {schema}.imreport_migrations"),
    )
    .await;
    assert_eq!(
        applied as usize,
        imreport_store::postgres::schema::MIGRATIONS.len()
    );
    drop((a, b, c, d));
    drop_schema(schema);
}

/// `total` agrees with the rows for windows whose edges fall anywhere in an hour (in a zone whose
/// hours are offset by 30 minutes from UTC's): as ingested (counted from rows), once the folder
/// has counted the finished hours, after late messages make counted hours dirty, once those are
/// counted again, and on a database written before hours were counted (schema 3) once migrated.
#[tokio::test]
async fn totals_agree_with_the_rows_before_and_after_hours_are_counted() {
    use imreport_domain::scope::Scope;
    use imreport_domain::time::TimeRange;
    use imreport_store::{PageRequest, Store};
    let schema = fresh_schema();
    let clock = imreport_domain::Clock::manual(T0);
    let open = || postgres_store(&schema, clock.clone(), "Asia/Kolkata", 60);
    let store = open().await;
    let app = create_app(&store).await;
    // 3 days of messages, one every 7 min 10 s: u0-u4 to groups g0-g2, the chatroom c0, or u5.
    let mut model: Vec<(i64, &'static str, String, String)> = Vec::new();
    let mut events = Vec::new();
    let t = |i: i64| T0 - 3 * DAY + i * 430_000;
    for i in 0..600u64 {
        let t = t(i as i64);
        let from = format!("u{}", i % 5);
        let (tt, target) = match i % 4 {
            0 | 1 => ("group", format!("g{}", i % 3)),
            2 => ("chatroom", "c0".to_owned()),
            _ => ("single", "u5".to_owned()),
        };
        events.push(text_message(i + 1, t, tt, &target, &from));
        model.push((t, tt, target, from));
    }
    store_events(&store, &app, &events).await;
    let scopes = [
        Scope::App,
        Scope::User("u1".into()),
        Scope::User("u5".into()),
        Scope::Group("g2".into()),
        Scope::Chatroom("c0".into()),
    ];
    let windows = [
        (T0 - 3 * DAY, T0 - 1),
        (T0 - 3 * DAY + 17_000, T0 - DAY + 1_234_999),
        (T0 - 2 * DAY + 30 * 60_000, T0 - 2 * DAY + 90 * 60_000 - 1),
        (T0 - 2 * DAY + 61_000, T0 - 2 * DAY + 62 * 60_000 - 1),
        (T0 - 2 * DAY + 600_000, T0 - 2 * DAY + 600_999),
        // Edges just past messages near an hour's start and just before one near its end
        // (message i at T0 - 3d + i * 430 s; hours start at :00 in Kolkata, T0 - 3d at :30): a
        // counted hour's counter less the rows of its shorter part outside the window.
        (t(300) + 1, t(305) - 1),
        (t(100) + 1, t(305) - 1),
    ];
    type Model = Vec<(i64, &'static str, String, String)>;
    let expected = |model: &Model, scope: &Scope, (b, e): (i64, i64)| {
        model
            .iter()
            .filter(|(t, tt, target, from)| {
                (b..=e).contains(t)
                    && match scope {
                        Scope::App => true,
                        Scope::User(u) => from == u || (*tt == "single" && target == u),
                        Scope::Group(g) => *tt == "group" && target == g,
                        Scope::Chatroom(c) => *tt == "chatroom" && target == c,
                    }
            })
            .count() as u64
    };
    let totals = |store: imreport_store::postgres::PostgresStore| {
        let app = app.clone();
        let scopes = scopes.clone();
        async move {
            let mut out = Vec::new();
            for scope in &scopes {
                for (begin, end) in windows {
                    let req = PageRequest {
                        range: TimeRange { begin, end },
                        count: 1,
                        after: None,
                        snapshot: Default::default(),
                        total: 0,
                    };
                    out.push(store.page(&app, scope, req).await.unwrap().total);
                }
            }
            out
        }
    };
    let want: Vec<u64> = scopes
        .iter()
        .flat_map(|s| windows.iter().map(move |w| (s, *w)))
        .map(|(s, w)| expected(&model, s, w))
        .collect();
    assert!(want.iter().filter(|n| **n > 0).count() >= 15, "{want:?}");
    assert_eq!(
        totals(store.clone()).await,
        want,
        "counted from rows as ingested"
    );
    let client = connect().await;
    let counted = format!(
        "SELECT count(*)::int8 FROM {schema}.msg_counts m JOIN {schema}.app_state s USING (app_id)
          WHERE m.hour < s.folded"
    );
    store.tidy().await.unwrap();
    assert!(
        scalar(&client, &counted).await >= 70,
        "the finished hours are counted"
    );
    assert_eq!(totals(store.clone()).await, want, "from the counted hours");

    // Late messages for counted hours: those hours are dirty (counted from rows) until a pass
    // finds them untouched since the one before.
    let mut late = Vec::new();
    for i in 0..40u64 {
        let t = T0 - 2 * DAY + (i as i64) * 97_000;
        let (tt, target, from) = match i % 3 {
            0 => ("group", "g2", "u1"),
            1 => ("chatroom", "c0", "u5"),
            _ => ("single", "u5", "u1"),
        };
        late.push(text_message(10_000 + i, t, tt, target, from));
        model.push((t, tt, target.to_owned(), from.to_owned()));
    }
    store_events(&store, &app, &late).await;
    let dirty = format!("SELECT count(*)::int8 FROM {schema}.fold_dirty");
    assert!(scalar(&client, &dirty).await >= 1);
    let want: Vec<u64> = scopes
        .iter()
        .flat_map(|s| windows.iter().map(move |w| (s, *w)))
        .map(|(s, w)| expected(&model, s, w))
        .collect();
    assert_eq!(totals(store.clone()).await, want, "with dirty hours");
    store.tidy().await.unwrap();
    store.tidy().await.unwrap();
    assert_eq!(scalar(&client, &dirty).await, 0, "counted again");
    assert_eq!(totals(store).await, want, "counted again");

    // Back to schema 3: as a database written by an older imreport, whose hour counters were
    // kept at ingest and no hour is folded.
    client
        .batch_execute(&format!(
            "DROP TABLE {schema}.scope_counts, {schema}.fold_dirty;
             ALTER TABLE {schema}.app_state DROP COLUMN folded;
             DELETE FROM {schema}.imreport_migrations WHERE version = 4"
        ))
        .await
        .unwrap();
    let store = open().await;
    assert_eq!(scalar(&client, &counted).await, 0, "nothing counted yet");
    assert_eq!(
        totals(store.clone()).await,
        want,
        "counted from rows once migrated"
    );
    store.tidy().await.unwrap();
    assert!(scalar(&client, &counted).await >= 70);
    assert_eq!(
        totals(store).await,
        want,
        "counted by the folder once migrated"
    );
    drop_schema(schema);
}

/// A walk on PostgreSQL is its first page's snapshot, even for a transaction that was in
/// flight then and commits during the walk: its rows are neither counted nor served (the cursor
/// carries the transactions in flight), and a walk begun after it sees them.
#[tokio::test]
async fn a_transaction_in_flight_when_a_walk_began_stays_out_of_it() {
    let s = TestServer::start_on(Backend::Postgres).await;
    let schema = s.pg_schema().unwrap().to_owned();
    let evs: Vec<Value> = (1..=30)
        .map(|i| text_message(i, T0 - 60_000 + i as i64, "single", "u", "v"))
        .collect();
    s.ingest_ok(&evs).await;
    // A writer in flight: a copy of message 5 under msgid 1000005 (after message 25 in walk
    // order, so a later page would reach it), stamped as ingest stamps
    // rows (its transaction's id, moved up by 2^62), not committed yet.
    let mut raw = connect().await;
    let tx = raw.transaction().await.unwrap();
    let xid: i64 = tx
        .query_one("SELECT pg_current_xact_id()::text::int8", &[])
        .await
        .unwrap()
        .get(0);
    let copied = tx
        .execute(
            &format!(
                "INSERT INTO {schema}.messages (app_id, msg_ctime, msgid, seq, rec)
                 SELECT app_id, msg_ctime + 20, 1000005, $1, rec FROM {schema}.messages WHERE msgid = 5"
            ),
            &[&((1i64 << 62) + xid)],
        )
        .await
        .unwrap();
    assert_eq!(copied, 1);
    // And its entry in user u's index, so that u's walk (keys from the index, records and
    // their stamps after) meets it too.
    let indexed = tx
        .execute(
            &format!(
                "INSERT INTO {schema}.msg_index (app_id, scope, scope_id, msg_ctime, msgid, seq)
                 SELECT app_id, scope, scope_id, msg_ctime + 20, 1000005, $1 FROM {schema}.msg_index
                  WHERE msgid = 5 AND scope = 1 AND scope_id = 'u'"
            ),
            &[&((1i64 << 62) + xid)],
        )
        .await
        .unwrap();
    assert_eq!(indexed, 1);
    // A later transaction commits meanwhile: the snapshot's `xmax` passes the one in flight,
    // which the snapshot (and so the cursor) then lists as in flight.
    s.ingest_ok(&[text_message(31, T0 - 1_000, "single", "u", "v")])
        .await;
    let paths = ["/v2/messages", "/v2/users/u/messages"];
    let mut firsts = Vec::new();
    for path in paths {
        let q = format!(
            "{path}?count=10&begin_time={}&end_time={}",
            enc(&sh(T0 - 120_000)),
            enc(&sh(T0))
        );
        let (status, first) = s.get(&q).await;
        assert_eq!(status, 200, "{first}");
        assert_eq!(first["total"], 31, "{path}");
        let cursor = first["cursor"].as_str().unwrap();
        assert!(
            cursor.len() > imreport_domain::cursor::CURSOR_LEN
                && cursor.len() <= imreport_domain::cursor::MAX_CURSOR_LEN,
            "the cursor carries the transaction in flight, within the contract's length"
        );
        firsts.push(first);
    }
    tx.commit().await.unwrap();
    for (path, first) in paths.into_iter().zip(firsts) {
        let mut ids: Vec<u64> = first["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["msgid"].as_u64().unwrap())
            .collect();
        let mut next = first["cursor"].as_str().map(str::to_owned);
        while let Some(c) = next {
            let (status, page) = s.get(&format!("{path}?cursor={c}")).await;
            assert_eq!(status, 200, "{page}");
            ids.extend(
                page["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["msgid"].as_u64().unwrap()),
            );
            next = page["cursor"].as_str().map(str::to_owned);
        }
        assert_eq!(
            ids,
            (1..=31).collect::<Vec<u64>>(),
            "{path}: the walk is its snapshot"
        );
        let (total, all) = s.walk(&s.app, path, 10, &sh(T0 - 120_000), &sh(T0)).await;
        assert_eq!((total, all.len()), (32, 32), "{path}: a new walk sees it");
    }
}

/// The upkeep vacuums each day partition of the messages and their index once its inserts stop
/// (so that scoped pages and counts answer from the index alone), once, and pages read the same
/// after it.
#[tokio::test]
async fn day_partitions_are_vacuumed_once_their_inserts_stop() {
    use imreport_domain::scope::Scope;
    use imreport_domain::time::TimeRange;
    use imreport_store::{PageRequest, Store};
    let schema = fresh_schema();
    let store = postgres_store(
        &schema,
        imreport_domain::Clock::manual(T0),
        "Asia/Shanghai",
        60,
    )
    .await;
    let app = create_app(&store).await;
    // Two days of messages, one every 3 minutes, to three groups.
    let events: Vec<Value> = (0..960u64)
        .map(|i| {
            let t = T0 - 2 * DAY + i as i64 * 180_000;
            text_message(i + 1, t, "group", &format!("g{}", i % 3), "u0")
        })
        .collect();
    store_events(&store, &app, &events).await;
    let page = || async {
        let req = PageRequest {
            range: TimeRange {
                begin: T0 - 2 * DAY,
                end: T0 - 1,
            },
            count: 1000,
            after: None,
            snapshot: Default::default(),
            total: 0,
        };
        let p = store
            .page(&app, &Scope::Group("g1".into()), req)
            .await
            .unwrap();
        (p.total, p.count, p.json)
    };
    let before = page().await;
    assert_eq!((before.0, before.1), (320, 320));
    let client = connect().await;
    // The partitions holding rows, and how many of them are not vacuumed since their last
    // insert, or have pages not marked all-visible.
    let mut holding = Vec::new();
    for table in ["messages", "msg_index"] {
        for r in client
            .query(
                &format!("SELECT DISTINCT tableoid::regclass::text FROM {schema}.{table}"),
                &[],
            )
            .await
            .unwrap()
        {
            let name: String = r.get(0);
            holding.push(name.rsplit('.').next().unwrap().to_owned());
        }
    }
    assert!(holding.len() >= 4, "{holding:?}");
    let unvacuumed = format!(
        "SELECT count(*)::int8 FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
          WHERE s.schemaname = '{schema}' AND s.relname = ANY($1)
            AND (s.vacuum_count = 0 OR s.n_ins_since_vacuum > 0 OR c.relallvisible < c.relpages)"
    );
    let vacuums = format!(
        "SELECT sum(vacuum_count)::int8 FROM pg_stat_user_tables
          WHERE schemaname = '{schema}' AND relname = ANY($1)"
    );
    let count = |sql: String| {
        let (client, holding) = (&client, &holding);
        async move {
            client
                .query_one(&sql, &[holding])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    // Inserts reach the statistics a while after their commit (up to 10 s); passes go on until
    // every partition is done, or a minute.
    let mut left = -1;
    for _ in 0..120 {
        store.tidy().await.unwrap();
        left = count(unvacuumed.clone()).await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(
        left, 0,
        "every partition holding rows is vacuumed and all-visible"
    );
    let done = count(vacuums.clone()).await;
    store.tidy().await.unwrap();
    store.tidy().await.unwrap();
    assert_eq!(count(vacuums).await, done, "once: nothing inserted since");
    assert_eq!(page().await, before, "the same page after");
    drop(store);
    drop_schema(schema);
}

/// One app's batches commit concurrently through two servers (PostgreSQL): six clients send
/// overlapping msgids in different orders, plus messages without msgid, at once. Every msgid is
/// stored once (the first batch to commit it wins), every message without msgid is stored under
/// a msgid of its own, the batches' answers add up to what is stored, a walk through either
/// server yields it exactly once and equals its `total`, and the statistics equal the history.
#[tokio::test]
async fn one_app_ingests_through_two_servers_at_once_exactly() {
    ingest_through_two_servers_at_once(Backend::Postgres).await
}

#[tokio::test]
async fn one_app_ingests_through_two_servers_at_once_exactly_on_citus() {
    ingest_through_two_servers_at_once(Backend::Citus).await
}

async fn ingest_through_two_servers_at_once(backend: Backend) {
    let TwoServers {
        replicas: _replicas,
        urls: [url_a, url_b],
        creds,
        ..
    } = two_servers(backend);
    let http = reqwest::Client::new();
    let now = jiff::Timestamp::now().as_millisecond();
    let base = now - 3 * HOUR;
    const IDS: u64 = 2400;
    const CLIENTS: u64 = 6;
    const BATCHES: u64 = 8;
    const UNNAMED: u64 = 15; // messages without msgid in each batch
    // Client c sends every msgid, in batches starting at a different place, each message with
    // a target of its own (which one is stored depends on which batch commits first).
    let batch = |c: u64, k: u64| -> Vec<Value> {
        let per = IDS / BATCHES;
        let start = ((k + c * 3) % BATCHES) * per;
        let mut evs: Vec<Value> = (start..start + per)
            .map(|i| {
                let (tt, target) = match (i + c) % 3 {
                    0 => ("single", format!("u{}", i % 7)),
                    1 => ("group", format!("g{}", i % 5)),
                    _ => ("chatroom", format!("r{}", i % 3)),
                };
                text_message(
                    i + 1,
                    base + (i as i64) * 1000,
                    tt,
                    &target,
                    &format!("u{}", c),
                )
            })
            .collect();
        for j in 0..UNNAMED {
            let mut m = text_message(0, base + (j as i64) * 7_000, "group", "g9", "u9");
            m.as_object_mut().unwrap().remove("msgid");
            evs.push(m);
        }
        evs
    };
    // The app already holds msgid 1000000: the msgids the server gives are above it, so none
    // is a client's (a client sending one the server gave earlier is a duplicate, by design).
    let out = ingest_at(
        &http,
        &url_a,
        &creds,
        &[text_message(1_000_000, base, "single", "u0", "u1")],
    )
    .await;
    assert_eq!(out["accepted"], 1);
    let sends = (0..CLIENTS).map(|c| {
        let (http, creds) = (http.clone(), creds.clone());
        let url = if c % 2 == 0 {
            url_a.clone()
        } else {
            url_b.clone()
        };
        async move {
            let (mut accepted, mut duplicates) = (0, 0);
            for k in 0..BATCHES {
                let out = ingest_at(&http, &url, &creds, &batch(c, k)).await;
                accepted += out["accepted"].as_u64().unwrap();
                duplicates += out["duplicates"].as_u64().unwrap();
            }
            (accepted, duplicates)
        }
    });
    let answers = futures::future::join_all(sends).await;
    let stored = IDS + CLIENTS * BATCHES * UNNAMED;
    let accepted: u64 = answers.iter().map(|a| a.0).sum();
    let duplicates: u64 = answers.iter().map(|a| a.1).sum();
    assert_eq!(accepted, stored, "{answers:?}");
    assert_eq!(duplicates, (CLIENTS - 1) * IDS, "{answers:?}");

    let window = format!(
        "begin_time={}&end_time={}",
        enc(&sh(base - 1000)),
        enc(&sh(now))
    );
    let mut msgs: Vec<Value> = Vec::new();
    let mut page = get_json(
        &http,
        &format!("{url_a}/v2/messages?count=700&{window}"),
        &creds,
    )
    .await;
    let total = page["total"].as_u64().unwrap();
    for turn in 0.. {
        msgs.extend(page["messages"].as_array().unwrap().iter().cloned());
        let Some(cursor) = page["cursor"].as_str() else {
            break;
        };
        let url = [&url_b, &url_a][turn % 2];
        page = get_json(&http, &format!("{url}/v2/messages?cursor={cursor}"), &creds).await;
    }
    let stored = stored + 1;
    assert_eq!((total, msgs.len() as u64), (stored, stored));
    let mut ids: Vec<u64> = msgs.iter().map(|m| m["msgid"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len() as u64, stored, "every msgid once");
    assert_eq!(ids[..IDS as usize], (1..=IDS).collect::<Vec<u64>>()[..]);

    // The statistics equal the history, kind by kind (hour by hour, the window's 4 hours).
    let mut by_kind = std::collections::BTreeMap::<String, u64>::new();
    for m in &msgs {
        *by_kind
            .entry(m["target_type"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let mut counted = std::collections::BTreeMap::<String, u64>::new();
    for h in 0..4 {
        let stats = get_json(
            &http,
            &format!(
                "{url_b}/v2/statistic/messages?time_unit=HOUR&start={}&duration=1",
                enc(&sh(base + h * HOUR)[..13])
            ),
            &creds,
        )
        .await;
        for bucket in stats["send_msg_stat"].as_array().unwrap() {
            for kind in ["single", "group", "chatroom"] {
                *counted.entry(kind.to_owned()).or_default() +=
                    bucket[format!("{kind}_send_msg")].as_u64().unwrap();
            }
        }
    }
    assert_eq!(counted, by_kind);
}

/// Losing the writable database (its primary demoted to a read-only standby, every connection
/// cut) answers ingest `503` with `Retry-After`, never a 500, and stores nothing of those
/// requests; history reads go on; once the database takes writes again the server finds it on
/// new connections by itself, with no restart. (Simulated on this machine's one server: the
/// server's own role is made read-only and its sessions are terminated.)
#[tokio::test]
async fn ingest_answers_503_while_the_database_cannot_take_writes_and_recovers_by_itself() {
    let role = format!("it_role_{}", &fresh_schema()[3..]);
    let admin = connect().await;
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN SUPERUSER"))
        .await
        .unwrap();
    let url = test_database_url().replacen("postgres@", &format!("{role}@"), 1);
    assert!(url.contains(&role), "{url}");
    let s = TestServer::start_with(Backend::Postgres, |s| s.store = url.clone()).await;
    let msgs = |from: u64| -> Vec<Value> {
        (from..from + 10)
            .map(|i| text_message(i, T0 - 50_000 + i as i64, "group", "g1", "u1"))
            .collect()
    };
    s.ingest_ok(&msgs(1)).await;
    let cut = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{role}'"
    );
    admin
        .batch_execute(&format!(
            "ALTER ROLE {role} SET default_transaction_read_only = on; {cut}"
        ))
        .await
        .unwrap();
    let path = format!(
        "/v2/groups/g1/messages?count=5&begin_time={}&end_time={}",
        enc(&sh(T0 - 60_000)),
        enc(&sh(T0))
    );
    // Reads right after the cut meet pooled connections the database has just closed: each is
    // tried again on another, never answered 503.
    for _ in 0..3 {
        let (status, page) = s.get(&path).await;
        assert_eq!((status, page["total"].as_u64()), (200, Some(10)), "{page}");
    }
    for _ in 0..3 {
        let r = s
            .http
            .post(format!("{}/ingest/v1/events", s.url))
            .header("authorization", s.app.header())
            .body(ndjson(&msgs(100)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["error"]["code"],
            imreport_server::error::CODE_BUSY,
            "{body}"
        );
        // Reads go on.
        let (status, page) = s.get(&path).await;
        assert_eq!((status, page["total"].as_u64()), (200, Some(10)), "{page}");
    }
    admin
        .batch_execute(&format!(
            "ALTER ROLE {role} RESET default_transaction_read_only; {cut}"
        ))
        .await
        .unwrap();
    // Writable again: the first request may still meet a connection cut above (503); then 200.
    let mut status = 0;
    for _ in 0..5 {
        (status, _) = s.ingest(ndjson(&msgs(100))).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
    }
    assert_eq!(status, 200);
    let (total, all) = s
        .walk(
            &s.app,
            "/v2/groups/g1/messages",
            7,
            &sh(T0 - 60_000),
            &sh(T0),
        )
        .await;
    assert_eq!(
        (total, all.len()),
        (20, 20),
        "only what was acknowledged is stored"
    );
    drop(s);
    // The server's schema is dropped (by the role) as it stops; then the role itself.
    for _ in 0..50 {
        let gone = admin
            .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
            .await;
        if gone.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the test role {role} could not be dropped");
}

/// A multi-host URL with `target_session_attrs=read-write` reaches whichever host takes writes:
/// here the first host refuses connections (a primary gone) and the server works on the second.
#[tokio::test]
async fn a_multi_host_url_reaches_the_host_that_takes_writes() {
    // A port nothing listens on: bound, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!(
        "postgres://postgres@127.0.0.1:{dead},127.0.0.1:5432/test?target_session_attrs=read-write"
    );
    let s = TestServer::start_with(Backend::Postgres, |s| s.store = url.clone()).await;
    s.ingest_ok(&[text_message(1, T0 - 1_000, "single", "u", "v")])
        .await;
    let (total, _) = s
        .walk(&s.app, "/v2/messages", 10, &sh(T0 - 60_000), &sh(T0))
        .await;
    assert_eq!(total, 1);
}
