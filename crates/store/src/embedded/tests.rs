//! The embedded store's own tests: what the Store suite cannot see from outside (formats of
//! earlier versions, the duplicate index, upkeep, restarts).

use super::*;
use imreport_domain::event::{IngestLimits, decode_batch};
use imreport_domain::time::{MILLIS_PER_DAY, MILLIS_PER_HOUR, MILLIS_PER_MINUTE};

const T0: i64 = 1_795_176_000_000;

/// The tests' base settings: a manual clock at `T0`, and no free-disk reserve (temp dirs
/// may sit on small disks).
fn test_config() -> EmbeddedConfig {
    EmbeddedConfig::new(
        60,
        256,
        ReportTz::new("Asia/Shanghai").unwrap(),
        0,
        Clock::manual(T0),
    )
}

async fn store_with_app(dir: &Path, config: EmbeddedConfig) -> (EmbeddedStore, App) {
    let store = EmbeddedStore::open(dir, config).unwrap();
    let app = store
        .create_app("app", "app", SecretHash::new("secret-secret"))
        .await
        .unwrap();
    (store, app)
}

#[tokio::test]
async fn retention_also_clears_the_duplicate_index_at_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let (store, app, clock) = two_day_store(dir.path()).await;
    assert_eq!(
        ingest(&store, &app, &[single(7, T0 - 1000, "b")])
            .await
            .accepted,
        1
    );
    let (block, _) = keys::id_block(app.id, 7);
    // And an entry in the index from before the blocks, of a message in the same day.
    let day = store.inner.pday(T0 - 1000);
    let legacy = keys::id_key(app.id, 9);
    store.inner.ids.insert(legacy, day.to_be_bytes()).unwrap();
    for ks in [&store.inner.id_blocks, &store.inner.ids] {
        ks.rotate_memtable_and_wait().unwrap();
        ks.major_compact().unwrap();
    }
    assert!(
        store.inner.id_blocks.get(block).unwrap().is_some(),
        "a retained message keeps its entry"
    );
    assert!(store.inner.ids.get(legacy).unwrap().is_some());
    clock.set(T0 + 5 * MILLIS_PER_DAY);
    assert_eq!(store.enforce_retention().await.unwrap(), 1);
    for ks in [&store.inner.id_blocks, &store.inner.ids] {
        ks.rotate_memtable_and_wait().unwrap();
        ks.major_compact().unwrap();
    }
    assert!(
        store.inner.id_blocks.get(block).unwrap().is_none(),
        "the stale block is gone after compaction"
    );
    assert!(
        store.inner.ids.get(legacy).unwrap().is_none(),
        "so is the stale entry"
    );
}

/// A block holding msgids of a dropped day and of a retained one keeps only the retained
/// day's pair at compaction; the dropped msgid can be stored again, the retained one not.
#[tokio::test]
async fn a_duplicate_index_block_loses_only_the_days_retention_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (store, app, clock) = two_day_store(dir.path()).await;
    let ingest = async |lines: &[String]| ingest_at(&store, &app, clock.now_ms(), lines).await;
    let at = |msgid: u64, t: Millis| single(msgid, t, "b");
    assert_eq!(ingest(&[at(1, T0 - 1000)]).await.accepted, 1);
    // Both days retained here: the block gets a second pair.
    clock.set(T0 + MILLIS_PER_DAY);
    let late = T0 + MILLIS_PER_DAY - 1000;
    assert_eq!(ingest(&[at(2, late)]).await.accepted, 1);
    clock.set(T0 + 3 * MILLIS_PER_DAY);
    assert_eq!(store.enforce_retention().await.unwrap(), 1);
    let (block, _) = keys::id_block(app.id, 1);
    let pairs = |v: fjall::Slice| keys::id_block_pairs(&v).count();
    assert_eq!(pairs(store.inner.id_blocks.get(block).unwrap().unwrap()), 2);
    store.inner.id_blocks.rotate_memtable_and_wait().unwrap();
    store.inner.id_blocks.major_compact().unwrap();
    let pairs: Vec<(i64, u64)> =
        keys::id_block_pairs(&store.inner.id_blocks.get(block).unwrap().unwrap()).collect();
    assert_eq!(pairs, vec![(store.inner.pday(late), 1 << 2)]);
    let out = ingest(&[at(1, late), at(2, late)]).await;
    assert_eq!((out.accepted, out.duplicates), (1, 1));
}

/// A message whose duplicate-index entry was written before the blocks (one `ids` key per
/// message) is still a duplicate, after a restart too.
#[tokio::test]
async fn an_entry_in_the_index_from_before_the_blocks_still_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (store, app) = store_with_app(dir.path(), test_config()).await;
    assert_eq!(
        ingest(&store, &app, &[message(5, "a", "g")]).await.accepted,
        1
    );
    // Rewrite its entry in the old form.
    let (block, _) = keys::id_block(app.id, 5);
    let day = store.inner.pday(T0 - 1000 + 5);
    store.inner.id_blocks.remove(block).unwrap();
    store
        .inner
        .ids
        .insert(keys::id_key(app.id, 5), day.to_be_bytes())
        .unwrap();
    drop(store);
    let store = reopen(dir.path(), test_config()).await;
    let out = ingest(&store, &app, &[message(5, "a", "g"), message(4, "a", "g")]).await;
    assert_eq!((out.accepted, out.duplicates), (1, 1));
}

fn message(msgid: u64, from: &str, group: &str) -> String {
    format!(
        r#"{{"event":"message","msgid":{msgid},"msg_ctime":{},"target_type":"group","target_id":"{group}","from_id":"{from}","msg_type":"text","msg_body":{{}}}}"#,
        T0 - 1000 + msgid as i64
    )
}

async fn ingest(store: &EmbeddedStore, app: &App, lines: &[String]) -> IngestOutcome {
    ingest_at(store, app, T0, lines).await
}

/// Ingests as the server would at `now` (events more than 5 minutes ahead are refused).
async fn ingest_at(
    store: &EmbeddedStore,
    app: &App,
    now: Millis,
    lines: &[String],
) -> IngestOutcome {
    let body = lines.join("\n");
    let events = decode_batch(body.as_bytes(), "app", now, &IngestLimits::default()).unwrap();
    store.ingest(app, events).await.unwrap()
}

/// Ingests the odd lines, then the even ones: two commits covering the same span, so that
/// their record runs and index chunks interleave. Returns how many were accepted.
async fn ingest_interleaved(store: &EmbeddedStore, app: &App, lines: &[String]) -> u64 {
    let mut accepted = 0;
    for parity in [1, 0] {
        let part: Vec<String> = lines.iter().skip(parity).step_by(2).cloned().collect();
        accepted += ingest(store, app, &part).await.accepted;
    }
    accepted
}

/// A one-to-one message from `from` to `a` at `t`.
fn single(msgid: u64, t: Millis, from: &str) -> String {
    format!(
        r#"{{"event":"message","msgid":{msgid},"msg_ctime":{t},"target_type":"single","target_id":"a","from_id":"{from}","msg_type":"text","msg_body":{{}}}}"#
    )
}

/// A store keeping 2 days, on a manual clock at `T0`.
async fn two_day_store(dir: &Path) -> (EmbeddedStore, App, Clock) {
    let clock = Clock::manual(T0);
    let config = EmbeddedConfig {
        retention_days: 2,
        clock: clock.clone(),
        ..test_config()
    };
    let (store, app) = store_with_app(dir, config).await;
    (store, app, clock)
}

/// The writer's caches (msgids stored since start, presence sets it created) start empty
/// after a restart: what it stored before must still count as stored.
#[tokio::test]
async fn a_restarted_writer_still_sees_what_was_stored_before() {
    let dir = tempfile::tempdir().unwrap();
    let (store, app) = store_with_app(dir.path(), test_config()).await;
    let login = |user: &str| {
        format!(
            r#"{{"event":"user_login","username":"{user}","time":{}}}"#,
            T0 - 500
        )
    };
    let first = [message(10, "a", "g1"), message(5, "b", "g1"), login("e")];
    let out = ingest(&store, &app, &first).await;
    assert_eq!((out.accepted, out.duplicates), (3, 0));
    // Below the watermark, stored in this run: a duplicate without a restart too.
    let out = ingest(
        &store,
        &app,
        &[message(5, "b", "g1"), message(7, "b", "g2")],
    )
    .await;
    assert_eq!((out.accepted, out.duplicates), (1, 1));
    drop(store);

    let store = loop {
        match EmbeddedStore::open(dir.path(), test_config()) {
            Err(StoreError::Locked(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            other => break other.unwrap(),
        }
    };
    let again = [
        message(5, "b", "g1"),
        message(7, "b", "g2"),
        message(6, "c", "g1"),
        message(11, "a", "g3"),
        // Known before the restart as a sender (only through its tally log), a user who only
        // logged in, and a new one.
        login("a"),
        login("e"),
        login("d"),
    ];
    let out = ingest(&store, &app, &again).await;
    assert_eq!(
        (out.accepted, out.duplicates),
        (3, 4),
        "5 and 7 were stored before the restart, and a and e active"
    );
    let day = store.inner.config.tz.civil_day(T0);
    let report = store.stats_days(&app, day, day + 1).await.unwrap();
    let row = &report.days[0];
    assert_eq!(row.active_users, 5, "a to e, each once");
    assert_eq!(row.send_msg_users, 3);
    assert_eq!(row.active_groups, 3, "g1, g2, g3");
    // Senders and groups are stored as their tallies, and a sender's activity as its sending:
    // the only presence keys of their own are those of the users who only logged in.
    let ks = store.inner.acts.read().unwrap()[&day].clone();
    let own: Vec<Vec<u8>> = ks
        .iter()
        .map(|kv| kv.key().unwrap().to_vec())
        .filter(|k| k.starts_with(&app.id.to_be_bytes()) && b"sag".contains(&k[4]))
        .map(|k| k[4..].to_vec())
        .collect();
    assert_eq!(own, [b"ad".to_vec(), b"ae".to_vec()]);
    // Tallies continue from what was stored before the restart (read, not restarted at 0).
    let b = store.busiest(&app, day, 10).await.unwrap();
    let pairs = |v: &[imreport_domain::rollup::Tally]| {
        v.iter()
            .map(|t| (t.id.clone(), t.messages))
            .collect::<Vec<_>>()
    };
    let owned = |v: &[(&str, u64)]| {
        v.iter()
            .map(|(i, n)| (i.to_string(), *n))
            .collect::<Vec<_>>()
    };
    assert_eq!(pairs(&b.senders), owned(&[("a", 2), ("b", 2), ("c", 1)]));
    assert_eq!(pairs(&b.groups), owned(&[("g1", 3), ("g2", 1), ("g3", 1)]));
}

/// A day partition that goes quiet is merged into one level, and the tables it had are
/// deleted from disk, its messages all still there.
#[tokio::test]
async fn a_quiet_day_partition_is_merged_and_its_old_tables_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        tidy_after: std::time::Duration::from_secs(1),
        ..test_config()
    };
    let (store, app) = store_with_app(dir.path(), config).await;
    for id in 1..=3 {
        ingest(&store, &app, &[message(id, "a", "g1")]).await;
        let day = *store.inner.days.read().unwrap().keys().next().unwrap();
        for ks in store.inner.day(day).unwrap().keyspaces() {
            ks.rotate_memtable_and_wait().unwrap();
        }
    }
    let (day, part) = {
        let days = store.inner.days.read().unwrap();
        let (d, p) = days.iter().next().unwrap();
        (*d, p.clone())
    };
    assert_eq!(part.keyspaces().len(), 2, "the index's and the records'");
    // (Within `tidy_after` of the start: the index is not merged yet. The records' keyspace
    // merges its level 0 as fjall's defaults say, so it may be already.)
    assert_eq!(part.ks.table_count(), 3, "one table per flush");
    assert_eq!(
        part.ks.l0_table_count(),
        2,
        "(the first went below level 0)"
    );
    for ks in part.keyspaces() {
        let files = || std::fs::read_dir(ks.path().join("tables")).unwrap().count();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while ks.table_count() > 2 || files() != ks.table_count() {
            assert!(
                std::time::Instant::now() < deadline,
                "day {day} never merged"
            );
            drop(store.stall_writer()); // wakes the writer, which hands the day over
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(ks.l0_table_count() <= 1, "at most the flushed tombstone");
    }
    let range = imreport_domain::time::TimeRange {
        begin: T0 - 10_000,
        end: T0,
    };
    let page = store
        .page(
            &app,
            &Scope::App,
            PageRequest {
                range,
                count: 100,
                after: None,
                snapshot: Default::default(),
                total: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total, 3);
    assert_eq!(page.count, 3);
}

/// Flushes write uncompressed tables (`day_options`), so a day that goes quiet is merged
/// even with one table, after its last flush (the one the idle writer seals included): its
/// tables end compressed, nothing but the merge's tombstone left in level 0.
#[tokio::test]
async fn a_quiet_day_ends_compressed_after_its_last_flush() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        tidy_after: std::time::Duration::from_secs(1),
        ..test_config()
    };
    let (store, app) = store_with_app(dir.path(), config).await;
    let text = "see you at the office tomorrow ".repeat(8);
    let lines: Vec<String> = (1..=2000)
        .map(|id| {
            message(id, "a", "g1").replace(
                r#""msg_body":{}"#,
                &format!(r#""msg_body":{{"text":"{text}"}}"#),
            )
        })
        .collect();
    assert_eq!(ingest(&store, &app, &lines).await.accepted, 2000);
    let part = {
        let days = store.inner.days.read().unwrap();
        days.values().next().unwrap().clone()
    };
    // Left alone past `IDLE_FLUSH`: the writer seals its memtables without waiting for them.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let raw: usize = part
        .records
        .iter()
        .map(|kv| {
            let (k, v) = kv.into_inner().unwrap();
            k.len() + v.len()
        })
        .sum();
    // Merged: compressed, with nothing but the tombstone's flush left in level 0.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let merged = || {
        part.records.disk_space() as usize * 3 < raw
            && part
                .keyspaces()
                .iter()
                .all(|ks| ks.l0_table_count() <= 1 && ks.sealed_memtable_count() == 0)
    };
    while !merged() {
        assert!(
            std::time::Instant::now() < deadline,
            "never merged compressed: the records take {} bytes on disk for {raw} bytes of keys and values",
            part.records.disk_space()
        );
        drop(store.stall_writer()); // wakes the writer, which hands the day over
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        app_total(&store, &app, T0 - 10_000, T0 + 10_000).await,
        2000
    );
}

async fn reopen(dir: &Path, config: EmbeddedConfig) -> EmbeddedStore {
    loop {
        match EmbeddedStore::open(dir, config.clone()) {
            Err(StoreError::Locked(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            other => break other.unwrap(),
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]
    /// Whatever the writer keeps of the per-hour scope counts in memory (down to nothing),
    /// each stored counter equals the count of the stored messages, and each scope's hour
    /// counts them all, through batches in any time order and a restart; in sparse
    /// partitions, exactly the hours of `busy` messages or more of scopes other than the
    /// app have a counter (messages crowd 2 hours or spread over 60).
    #[test]
    fn every_scope_counter_counts_its_messages(
        msgs in proptest::collection::vec((0i64..60, 0u8..4, 0u8..3, 0u8..3), 1..160),
        cuts in proptest::collection::vec(1usize..40, 1..8),
        cache in 0usize..12,
        restart_after in proptest::option::of(0usize..8),
        format in proptest::sample::select(Format::ALL[1..].to_vec()),
        busy in proptest::sample::select(vec![1u64, 3, 32]),
        span in proptest::sample::select(vec![2i64, 60]),
    ) {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let config = EmbeddedConfig {
                counter_cache_keys: cache,
                partition_format: format,
                busy_hour: busy,
                ..test_config()
            };
            let (mut store, app) = store_with_app(dir.path(), config.clone()).await;
            let lines: Vec<String> = msgs
                .iter()
                .enumerate()
                .map(|(i, (hour, from, kind, to))| {
                    let (tt, target) = match kind {
                        0 => ("single", format!("u{to}")),
                        1 => ("group", format!("g{to}")),
                        _ => ("chatroom", format!("c{to}")),
                    };
                    format!(
                        r#"{{"event":"message","msgid":{},"msg_ctime":{},"target_type":"{tt}","target_id":"{target}","from_id":"u{from}","msg_type":"text","msg_body":{{}}}}"#,
                        i + 1,
                        T0 - 61 * MILLIS_PER_HOUR + (hour % span) * MILLIS_PER_HOUR + i as i64
                    )
                })
                .collect();
            let mut model: std::collections::HashMap<(i64, Vec<u8>), u64> = Default::default();
            // Messages by scope and hour, as `total` must count them.
            let mut hours: std::collections::HashMap<(Scope, u32), u64> = Default::default();
            let events =
                decode_batch(lines.join("\n").as_bytes(), "app", T0, &IngestLimits::default())
                    .unwrap();
            for ev in events {
                let imreport_domain::event::Event::Message(m) = ev else { unreachable!() };
                let day = store.inner.pday(m.msg_ctime);
                let hour = (m.msg_ctime / MILLIS_PER_HOUR) as u32;
                for scope in std::iter::once(Scope::App).chain(m.scopes()) {
                    let key = keys::counter_key(&keys::scope_prefix(keys::CNT, app.id, &scope), hour);
                    *model.entry((day, key)).or_default() += 1;
                    *hours.entry((scope, hour)).or_default() += 1;
                }
                let minute = (m.msg_ctime / MILLIS_PER_MINUTE) as u32;
                *model
                    .entry((day, keys::minute_counter_key(app.id, minute).to_vec()))
                    .or_default() += 1;
            }
            let (mut at, mut batch) = (0, 0);
            while at < lines.len() {
                let n = cuts[batch % cuts.len()].min(lines.len() - at);
                assert_eq!(ingest(&store, &app, &lines[at..at + n]).await.accepted, n as u64);
                at += n;
                if restart_after == Some(batch) {
                    drop(store);
                    store = reopen(dir.path(), config.clone()).await;
                }
                batch += 1;
            }
            // In sparse partitions, a scope's hour below `busy` has a counter only if the
            // writer had to count it from the store (it no longer held the hour, or restarted
            // since): then it counts the hour's messages like any other.
            let app_scope = keys::scope_prefix(keys::CNT, app.id, &Scope::App);
            let mut optional = 0;
            model.retain(|(day, key), n| {
                let needed = format < Format::SparseCounters
                    || key[0] == keys::MIN_CNT
                    || key.starts_with(&app_scope)
                    || *n >= busy;
                if !needed {
                    let stored = store.inner.day(*day).unwrap().ks.get(key).unwrap();
                    if let Some(v) = stored {
                        assert_eq!(keys::u64_value(&v), *n, "a quiet hour's counter");
                        optional += 1;
                    }
                }
                needed
            });
            for ((day, key), n) in &model {
                let stored = store.inner.day(*day).unwrap().ks.get(key).unwrap();
                assert_eq!(stored.map(|v| keys::u64_value(&v)), Some(*n));
            }
            for ((scope, hour), n) in &hours {
                let start = i64::from(*hour) * MILLIS_PER_HOUR;
                let total = scope_total(&store, &app, scope, start, start + MILLIS_PER_HOUR - 1);
                assert_eq!(total.await, *n, "{scope:?} hour {hour}");
            }
            let stored: usize = store
                .inner
                .days
                .read()
                .unwrap()
                .values()
                .map(|p| p.ks.prefix([keys::CNT]).count() + p.ks.prefix([keys::MIN_CNT]).count())
                .sum();
            assert_eq!(stored, model.len() + optional, "no counter beyond the model's");
        });
    }
}

/// A quiet scope in an hour the writer no longer holds is written without a read while the
/// hour's sketch says it stays below `busy_hour`; once it may not, its chunks are counted and
/// it keeps a counter from then on, exactly as an hour the writer holds does.
#[tokio::test]
async fn a_dropped_hours_quiet_scope_is_written_unread_until_it_may_be_busy() {
    for cache in [0, 128] {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedConfig {
            counter_cache_keys: cache,
            busy_hour: 3,
            ..test_config()
        };
        let (store, app) = store_with_app(dir.path(), config).await;
        let t = T0 - 3 * MILLIS_PER_HOUR;
        let user = Scope::User("quiet".into());
        let prefix = keys::scope_prefix(keys::CNT, app.id, &user);
        let key = keys::counter_key(&prefix, (t / MILLIS_PER_HOUR) as u32);
        let hour = t.div_euclid(MILLIS_PER_HOUR) * MILLIS_PER_HOUR;
        for (i, counter) in [None, None, Some(3), Some(4)].into_iter().enumerate() {
            let line = single(i as u64 + 1, t + i as i64, "quiet");
            assert_eq!(ingest(&store, &app, &[line]).await.accepted, 1);
            let ks = store.inner.day(store.inner.pday(t)).unwrap().ks;
            let stored = ks.get(&key).unwrap().map(|v| keys::u64_value(&v));
            assert_eq!(stored, counter, "cache {cache}, after {} messages", i + 1);
            let total = scope_total(&store, &app, &user, hour, hour + MILLIS_PER_HOUR - 1);
            assert_eq!(total.await, i as u64 + 1);
        }
    }
}

/// A restarted writer holds the hours after the last message of a partition it finds: a quiet
/// hour written there gets no counter (no read), while one it had written before the restart
/// is read and keeps one; both count every message.
#[tokio::test]
async fn a_restarted_writer_holds_the_hours_after_a_partitions_last_message() {
    let dir = tempfile::tempdir().unwrap();
    let (store, app) = store_with_app(dir.path(), test_config()).await;
    let early = T0 - 3 * MILLIS_PER_HOUR;
    let late = early + MILLIS_PER_HOUR;
    assert_eq!(store.inner.pday(early), store.inner.pday(late));
    let write = |msgid: u64, t: Millis| vec![single(msgid, t, "quiet")];
    assert_eq!(ingest(&store, &app, &write(1, early)).await.accepted, 1);
    drop(store);
    let store = reopen(dir.path(), test_config()).await;
    for (msgid, t) in [(2, late), (3, late + 1), (4, early + 1)] {
        assert_eq!(ingest(&store, &app, &write(msgid, t)).await.accepted, 1);
    }
    let user = Scope::User("quiet".into());
    let prefix = keys::scope_prefix(keys::CNT, app.id, &user);
    let ks = store.inner.day(store.inner.pday(early)).unwrap().ks;
    for (t, counter) in [(early, Some(2)), (late, None)] {
        let key = keys::counter_key(&prefix, (t / MILLIS_PER_HOUR) as u32);
        let stored = ks.get(key).unwrap().map(|v| keys::u64_value(&v));
        assert_eq!(stored, counter, "hour at {t}");
        let hour = t.div_euclid(MILLIS_PER_HOUR) * MILLIS_PER_HOUR;
        assert_eq!(
            scope_total(&store, &app, &user, hour, hour + MILLIS_PER_HOUR - 1).await,
            2
        );
    }
}

async fn app_total(store: &EmbeddedStore, app: &App, begin: Millis, end: Millis) -> u64 {
    scope_total(store, app, &Scope::App, begin, end).await
}

async fn scope_total(
    store: &EmbeddedStore,
    app: &App,
    scope: &Scope,
    begin: Millis,
    end: Millis,
) -> u64 {
    let req = PageRequest {
        range: imreport_domain::time::TimeRange { begin, end },
        count: 1,
        after: None,
        snapshot: Default::default(),
        total: 0,
    };
    store.page(app, scope, req).await.unwrap().total
}

/// A window's partial hours are counted from minute counters where a partition has them,
/// and by scanning in partitions from before they existed (counting keys, or the records
/// of runs): the same totals in every format. A user's partial hours (no minute counters)
/// are scanned when short and counted as the hour's counter minus the rest of the hour
/// when long (the hour's count read from its last index chunk, in counted partitions): the
/// same totals as the app's here, where the user is in every message.
#[tokio::test]
async fn partial_hours_count_the_same_in_every_format() {
    let base = T0 - 3 * MILLIS_PER_HOUR;
    // Spread over three hours, plus messages on each side of some minute boundaries.
    let mut times: Vec<Millis> = (0..400)
        .map(|i| base + i * 25_013 % (3 * MILLIS_PER_HOUR))
        .collect();
    for k in [1, 2, 3, 30, 50, 51, 59, 60, 61, 70, 119, 120, 150] {
        let edge = base + k * MILLIS_PER_MINUTE;
        times.extend([edge - 1, edge, edge + 999, edge + 1000]);
    }
    let lines: Vec<String> = times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                r#"{{"event":"message","msgid":{},"msg_ctime":{t},"target_type":"single","target_id":"a","from_id":"b","msg_type":"text","msg_body":{{}}}}"#,
                i + 1
            )
        })
        .collect();
    // Second-aligned windows, as the API takes them: inside one minute, across minutes,
    // across an hour boundary, and over whole hours with partial edges.
    let windows: Vec<(Millis, Millis)> = [
        (61, 119),
        (60, 179),
        (61, 1799),
        (120, 3599),
        (3001, 4200),
        (3540, 7259),
        (59, 3 * 3600 - 61),
        (0, 3 * 3600 - 1),
        (1, 3598),
        (1800, 5000),
        (1799, 3600),
        (3599, 3600),
        (3599, 7201),
    ]
    .iter()
    .map(|(b, e)| (base + b * 1000, base + e * 1000 + 999))
    .collect();
    let want: Vec<u64> = windows
        .iter()
        .map(|(b, e)| times.iter().filter(|t| (b..=e).contains(t)).count() as u64)
        .collect();
    let user = Scope::User("b".into());
    for format in Format::ALL {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedConfig {
            partition_format: format,
            ..test_config()
        };
        let (store, app) = store_with_app(dir.path(), config.clone()).await;
        ingest_interleaved(&store, &app, &lines).await;
        drop(store);
        let store = reopen(dir.path(), config).await;
        assert_eq!(
            store.inner.all_at_least(Format::Minutes, base, T0 - 1),
            format >= Format::Minutes
        );
        for ((b, e), want) in windows.iter().zip(&want) {
            let at = format!("{format:?} {b}..={e}");
            assert_eq!(app_total(&store, &app, *b, *e).await, *want, "{at}");
            assert_eq!(
                scope_total(&store, &app, &user, *b, *e).await,
                *want,
                "user {at}"
            );
        }
    }
}

/// Walks of the app's and a user's messages across partitions of every format still
/// written (one index key and one record per message; index chunks; record runs; chunks
/// carrying counts; runs opening with a directory; records in a keyspace of their own), in pages
/// of every size: every message once, in order, with the right total, whether the window's
/// edges cut hours or not. Each later partition is written in commits that interleave in
/// time, so that runs and chunks of one hour overlap.
#[tokio::test]
async fn walks_read_partitions_of_every_format_alike() {
    let dir = tempfile::tempdir().unwrap();
    let formats = &Format::ALL[1..];
    let line = |msgid: u64, t: Millis, from: &str| single(msgid, t, from);
    // Per format, a partition day: fours of messages 0, 5, 10 and 10 s after the fours'
    // start (the last two sharing a millisecond); msgids out of time order; every fourth
    // message from someone else.
    let mut all: Vec<(Millis, u64, bool)> = Vec::new();
    let mut app = None;
    for (f, format) in formats.iter().enumerate() {
        let config = EmbeddedConfig {
            partition_format: *format,
            ..test_config()
        };
        let (store, a) = match app.take() {
            None => store_with_app(dir.path(), config).await,
            Some(a) => (reopen(dir.path(), config).await, a),
        };
        let day = T0 - (formats.len() - f) as i64 * MILLIS_PER_DAY;
        let msgs: Vec<(Millis, u64, bool)> = (0..90)
            .map(|i| {
                let t = day + (i / 4) * 300_007 + [0, 5_000, 10_000, 10_000][i as usize % 4];
                (t, 1000 * (f as u64 + 1) - i as u64, i % 4 != 0)
            })
            .collect();
        let lines: Vec<String> = msgs
            .iter()
            .map(|(t, m, b)| line(*m, *t, if *b { "b" } else { "other" }))
            .collect();
        let accepted = ingest_interleaved(&store, &a, &lines).await;
        assert_eq!(accepted, lines.len() as u64);
        assert_eq!(store.inner.format(store.inner.pday(day)), *format);
        all.extend(msgs);
        app = Some(a);
        drop(store);
    }
    let store = reopen(dir.path(), test_config()).await;
    let app = app.unwrap();
    all.sort();
    // The first and last partition days.
    let (d0, d2) = (
        T0 - formats.len() as i64 * MILLIS_PER_DAY,
        T0 - MILLIS_PER_DAY,
    );
    for (begin, end) in [
        (d0 - MILLIS_PER_DAY, T0),
        (d0 + 300_007 * 7 + 1, d2 + 300_007 * 20 - 1),
        (d0 + 300_007 * 20, d2 + 300_007 * 2),
        (d2 + 300_007 * 4 + 3_500, d2 + 300_007 * 4 + 12_000),
    ] {
        for scope in [Scope::User("b".into()), Scope::User("a".into()), Scope::App] {
            let want: Vec<(Millis, u64)> = all
                .iter()
                .filter(|(t, _, b)| {
                    (begin..=end).contains(t) && (*b || scope != Scope::User("b".into()))
                })
                .map(|(t, m, _)| (*t, *m))
                .collect();
            for count in [1u16, 4, 1000] {
                let mut got = Vec::new();
                let mut req = PageRequest {
                    range: imreport_domain::time::TimeRange { begin, end },
                    count,
                    after: None,
                    snapshot: Default::default(),
                    total: 0,
                };
                loop {
                    let page = store.page(&app, &scope, req.clone()).await.unwrap();
                    assert_eq!(page.total, want.len() as u64, "{scope:?} {begin}..={end}");
                    let json: Vec<serde_json::Value> =
                        serde_json::from_slice(&[b"[", &page.json[..], b"]"].concat()).unwrap();
                    got.extend(json.iter().map(|m| {
                        (
                            m["msg_ctime"].as_i64().unwrap(),
                            m["msgid"].as_u64().unwrap(),
                        )
                    }));
                    match page.next {
                        Some(p) => {
                            req.after = Some(p);
                            req.snapshot = page.snapshot.clone();
                            req.total = page.total;
                        }
                        None => break,
                    }
                }
                assert_eq!(got, want, "{scope:?} {begin}..={end} by {count}");
            }
        }
    }
}

/// The busiest lists count every message once while commits log their tallies, fold the logs
/// into the tallies (every `TALLY_FOLD`th commit of an app and day) and a restart leaves logs
/// no writer remembers: checked against a count after every commit, for two apps and two days.
#[tokio::test]
async fn busiest_counts_each_message_once_across_tally_logs_folds_and_restarts() {
    use std::collections::HashMap as Map;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config();
    let tz = config.tz.clone();
    let (mut store, a) = store_with_app(dir.path(), config.clone()).await;
    let b = store
        .create_app("other", "other", SecretHash::new("secret-secret"))
        .await
        .unwrap();
    let days = [T0 - 1000, T0 - MILLIS_PER_DAY];
    // (app, civil day) -> sender or group -> messages.
    let mut senders: Map<(u32, i64), Map<String, u64>> = Map::new();
    let mut groups: Map<(u32, i64), Map<String, u64>> = Map::new();
    let mut msgid = 0;
    for commit in 0..6 * super::writer::TALLY_FOLD as u64 + 5 {
        if commit == 3 * super::writer::TALLY_FOLD as u64 - 3 {
            drop(store);
            store = reopen(dir.path(), config.clone()).await;
        }
        let app = if commit % 3 == 2 { &b } else { &a };
        let mut lines = Vec::new();
        for i in 0..1 + commit % 4 {
            msgid += 1;
            let t = days[((commit + i) % 2) as usize] + msgid as i64;
            let (from, gid) = (format!("u{}", (commit * 7 + i) % 5), format!("g{}", i % 3));
            lines.push(format!(
                r#"{{"event":"message","msgid":{msgid},"msg_ctime":{t},"target_type":"group","target_id":"{gid}","from_id":"{from}","msg_type":"text","msg_body":{{}}}}"#
            ));
            let day = tz.civil_day(t);
            *senders
                .entry((app.id, day))
                .or_default()
                .entry(from)
                .or_default() += 1;
            *groups
                .entry((app.id, day))
                .or_default()
                .entry(gid)
                .or_default() += 1;
        }
        assert_eq!(
            ingest(&store, app, &lines).await.accepted,
            lines.len() as u64
        );
        for app in [&a, &b] {
            for t in days {
                let day = tz.civil_day(t);
                let want = |m: &Map<(u32, i64), Map<String, u64>>| {
                    let mut v: Vec<(String, u64)> = m
                        .get(&(app.id, day))
                        .map(|m| m.iter().map(|(k, n)| (k.clone(), *n)).collect())
                        .unwrap_or_default();
                    v.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
                    v
                };
                let got = store.busiest(app, day, 100).await.unwrap();
                let list = |t: &[imreport_domain::rollup::Tally]| -> Vec<(String, u64)> {
                    t.iter().map(|t| (t.id.clone(), t.messages)).collect()
                };
                assert_eq!(
                    list(&got.senders),
                    want(&senders),
                    "senders after commit {commit}"
                );
                assert_eq!(
                    list(&got.groups),
                    want(&groups),
                    "groups after commit {commit}"
                );
            }
        }
    }
    // Both days of the busier app were folded (tallies stored) and hold fewer logs than a fold.
    let acts = store.inner.acts.read().unwrap();
    for t in days {
        let ks = &acts[&tz.civil_day(t)];
        let mut tally = Vec::new();
        keys::tally_key_into(
            a.id,
            imreport_domain::rollup::Presence::Sender,
            "",
            &mut tally,
        );
        assert!(ks.prefix(&tally).count() > 0);
        let logs = ks.prefix(keys::tally_log_prefix(a.id)).count();
        assert!(logs < super::writer::TALLY_FOLD, "{logs} logs");
    }
}

/// Nice values and scheduling policies of this process's threads, by name.
#[cfg(target_os = "linux")]
fn thread_nices() -> Vec<(String, (i32, i32))> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
            let name = stat[stat.find('(')? + 1..stat.rfind(')')?].to_owned();
            // Fields after the name: state is the first, nice the 17th, the policy the 39th.
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            let field = |i: usize| fields.get(i)?.parse().ok();
            Some((name, (field(16)?, field(38)?)))
        })
        .collect()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_stores_ingest_threads_run_below_the_queries() {
    let dir = tempfile::tempdir().unwrap();
    let own = rustix::process::getpriority_process(None).unwrap();
    let config = test_config();
    let lowered = (own + config.ingest_nice).min(19);
    assert!(lowered > own, "the default lowers them");
    let (store, app) = store_with_app(dir.path(), config).await;
    ingest(&store, &app, &[single(1, T0 - 1000, "a")]).await;
    let threads = thread_nices();
    for name in [
        "imreport-writer",
        "imreport-sync",
        "imreport-tidy",
        "fjall:worker",
    ] {
        let of: Vec<(i32, i32)> = threads
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, nice)| *nice)
            .collect();
        assert!(!of.is_empty(), "no {name} thread");
        // Every store of this test process is opened with the default.
        assert!(
            of.iter().all(|n| *n == (lowered, libc::SCHED_BATCH)),
            "{name}: {of:?}"
        );
    }
    assert_eq!(
        rustix::process::getpriority_process(None).unwrap(),
        own,
        "opening a store leaves the caller's priority alone"
    );
}

/// In the latest format a day's records are in a keyspace of their own and its index in the
/// partition's; retention drops both, and a records keyspace no partition claims (a crash
/// while a partition was created) is deleted at the next open.
#[tokio::test]
async fn records_live_in_their_own_keyspace_and_go_with_their_day() {
    let dir = tempfile::tempdir().unwrap();
    let (store, app, clock) = two_day_store(dir.path()).await;
    let out = ingest(&store, &app, &[single(1, T0 - 1000, "a")]).await;
    assert_eq!(out.accepted, 1);
    let day = store.inner.pday(T0 - 1000);
    let part = store.inner.day(day).unwrap();
    let msgs = |ks: &Keyspace| ks.prefix([keys::MSG]).count();
    assert_eq!((msgs(&part.records), msgs(&part.ks)), (1, 0));
    assert!(part.ks.prefix([keys::CHUNK]).count() > 0, "the index stays");
    let names = |s: &EmbeddedStore| {
        s.inner
            .db
            .list_keyspace_names()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
    };
    assert!(names(&store).contains(&keys::records_name(day)));
    let orphan = keys::records_name(day - 1);
    store.inner.db.keyspace(&orphan, ks_options).unwrap();
    drop((store, part));
    let config = EmbeddedConfig {
        retention_days: 2,
        clock: clock.clone(),
        ..test_config()
    };
    let store = reopen(dir.path(), config).await;
    assert!(!names(&store).contains(&orphan), "{:?}", names(&store));
    assert_eq!(app_total(&store, &app, T0 - 10_000, T0).await, 1);
    clock.set(T0 + 5 * MILLIS_PER_DAY);
    assert_eq!(store.enforce_retention().await.unwrap(), 1);
    let left = names(&store);
    assert!(
        !left.contains(&keys::records_name(day)) && !left.contains(&keys::day_name(day)),
        "{left:?}"
    );
}

/// Waits (a bound, not a timing) until the store holds these spares.
async fn spares_become(store: &EmbeddedStore, want: (Vec<i64>, Vec<i64>)) {
    for _ in 0..1000 {
        if store.inner.spare_days() == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("spares {:?}, not {want:?}", store.inner.spare_days());
}

/// A day's first message has the spare thread make the next day's keyspaces (up to tomorrow),
/// which the writer takes when that day comes: invisible to readers and retention until then.
/// A spare left at shutdown is a spare again after a restart, and retention deletes it without
/// counting a day.
#[tokio::test]
async fn the_next_days_keyspaces_are_made_ahead_and_taken_when_the_day_comes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, app, clock) = two_day_store(dir.path()).await;
    let (today, yesterday) = (T0 - 1000, T0 - 1000 - MILLIS_PER_DAY);
    let (d, a) = (
        store.inner.pday(yesterday),
        store.inner.window.tz.civil_day(yesterday),
    );
    let out = ingest(&store, &app, &[single(1, yesterday, "a")]).await;
    assert_eq!(out.accepted, 1);
    spares_become(&store, (vec![d + 1], vec![a + 1])).await;
    assert_eq!(store.day_partitions(), 1, "a spare is no partition");
    assert_eq!(app_total(&store, &app, yesterday, T0).await, 1);

    let spare = store.inner.spares.lock().unwrap().days[&(d + 1)].clone();
    let out = ingest(&store, &app, &[single(2, today, "a")]).await;
    assert_eq!(out.accepted, 1);
    let taken = store.inner.day(d + 1).unwrap();
    assert_eq!(
        (taken.ks.id(), taken.records.id()),
        (spare.ks.id(), spare.records.id())
    );
    assert_eq!(
        store.inner.format(d + 1),
        store.inner.config.partition_format
    );
    // Today's first message asks for tomorrow's; none beyond.
    spares_become(&store, (vec![d + 2], vec![a + 2])).await;
    assert_eq!(app_total(&store, &app, yesterday, T0).await, 2);
    drop((store, spare, taken));

    let config = EmbeddedConfig {
        retention_days: 2,
        clock: clock.clone(),
        ..test_config()
    };
    let store = reopen(dir.path(), config).await;
    assert_eq!(store.inner.spare_days(), (vec![d + 2], vec![a + 2]));
    assert_eq!(store.day_partitions(), 2);
    assert_eq!(app_total(&store, &app, yesterday, T0).await, 2);
    clock.set(T0 + 5 * MILLIS_PER_DAY);
    assert_eq!(store.enforce_retention().await.unwrap(), 2);
    assert_eq!(store.inner.spare_days(), (vec![], vec![]));
    let names: Vec<String> = store
        .inner
        .db
        .list_keyspace_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| ["day-", "rec-", "act-"].iter().any(|p| n.starts_with(p))),
        "{names:?}"
    );
}
