//! Ingest: one request, one transaction. The app's `app_state` row is locked first, so the
//! duplicate check, msgid assignment and every read-modify-write below see all earlier commits
//! of the app and none in flight.

use super::{PostgresStore, pg_error};
use crate::{IngestOutcome, Result};
use imreport_domain::app::App;
use imreport_domain::event::{Event, check_msgids_assignable};
use imreport_domain::lifecycle::{apply_lifecycle, decode_history, encode_history};
use imreport_domain::message::encode_record;
use imreport_domain::rollup::{DayStats, Mark, MessageRollup, MsgCounts, Presence, login_mark};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::BTreeSet;

/// Entity kinds.
const USER: i16 = b'u' as i16;
const GROUP: i16 = b'g' as i16;

/// A presence row: civil day, the set's code ([`Presence::code`]) and the id.
type PresenceKey = (i32, i16, String);

fn presence_key(mark: Mark<'_>) -> PresenceKey {
    (
        mark.day as i32,
        i16::from(mark.set.code()),
        mark.id.to_owned(),
    )
}

/// The transaction's id, from the app's node (on Citus, the worker's: the one whose snapshots
/// reads take).
const XID: &str = "SELECT pg_current_xact_id()::text::int8 FROM app_state WHERE app_id = $1";

/// What an event turned out to be, before presence freshness is known.
enum Fate {
    Accepted,
    Duplicate,
    Expired,
    /// A login: accepted if it is the first in the batch to mark a fresh presence key.
    Login,
    /// A lifecycle event: accepted if it changes a count (settled once histories are read).
    Lifecycle,
}

pub(super) async fn ingest(
    s: &PostgresStore,
    app: &App,
    events: Vec<Event>,
) -> Result<IngestOutcome> {
    match try_ingest(s, app, &events).await {
        // Another server's retention dropped a partition this one thought existed; forget
        // what is cached and try once more (the events of that day are expired by now).
        Err(crate::StoreError::PartitionGone(_)) => {
            s.forget_partitions();
            try_ingest(s, app, &events).await
        }
        other => other,
    }
}

async fn try_ingest(s: &PostgresStore, app: &App, events: &[Event]) -> Result<IngestOutcome> {
    let inner = &s.inner;
    let w = &inner.window;
    let tz = &inner.config.tz;
    let now = inner.config.clock.now_ms();
    let (horizon, stats_horizon) = (w.horizon_day(now), w.stats_horizon_day(now));
    let horizon_ms = w.pday_start(horizon);
    let app_id = app.id as i32;

    let (mut pdays, mut cdays) = (BTreeSet::new(), BTreeSet::new());
    for ev in events {
        match ev {
            Event::Message(m) if w.pday(m.msg_ctime) >= horizon => {
                pdays.insert(w.pday(m.msg_ctime));
                cdays.insert(tz.civil_day(m.msg_ctime));
            }
            Event::UserLogin { time, .. } if w.pday(*time) >= horizon => {
                cdays.insert(tz.civil_day(*time));
            }
            _ => {}
        }
    }
    s.ensure_partitions(&pdays, &cdays).await?;

    let mut client = s.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    let lock = tx
        .prepare_cached(
            "INSERT INTO app_state (app_id, seq, next_msgid) VALUES ($1, 1, 1)
             ON CONFLICT (app_id) DO UPDATE SET seq = app_state.seq + 1
             RETURNING seq, next_msgid, folded",
        )
        .await
        .map_err(pg_error)?;
    let row = tx.query_one(&lock, &[&app_id]).await.map_err(pg_error)?;
    let (stored_next, folded): (i64, i64) = (row.get(1), row.get(2));
    // The commit's number, as walks see it (see `super::commit_seq`).
    let q = tx.prepare_cached(XID).await.map_err(pg_error)?;
    let seq = super::commit_seq(tx.query_one(&q, &[&app_id]).await.map_err(pg_error)?.get(0));
    let stored_next = stored_next as u64;
    let kept = events.iter().filter_map(|ev| match ev {
        Event::Message(m) if w.pday(m.msg_ctime) >= horizon => Some(m),
        _ => None,
    });
    // Refused before anything is written; the transaction rolls back on drop.
    check_msgids_assignable(stored_next, kept)?;

    // Client msgids below the watermark may be stored already: one lookup for all of them.
    let probe: Vec<i64> = events
        .iter()
        .filter_map(|ev| match ev {
            Event::Message(m) if m.msgid != 0 && m.msgid < stored_next => Some(m.msgid as i64),
            _ => None,
        })
        .collect();
    let stored: HashSet<u64> = if probe.is_empty() {
        HashSet::default()
    } else {
        // Only `(app_id, msgid)` in the condition, so that each partition answers from its msgid
        // index; rows of days before the window (not dropped yet) are stale and filtered here.
        let q = tx
            .prepare_cached(
                "SELECT msgid, msg_ctime FROM messages WHERE app_id = $1 AND msgid = ANY($2)",
            )
            .await
            .map_err(pg_error)?;
        tx.query(&q, &[&app_id, &probe])
            .await
            .map_err(pg_error)?
            .iter()
            .filter(|r| r.get::<_, i64>(1) >= horizon_ms)
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect()
    };

    let mut next = stored_next;
    let mut seen: HashSet<u64> = HashSet::default();
    let mut fates = Vec::with_capacity(events.len());
    // Message rows and scope index rows, column by column.
    let (mut m_ctime, mut m_id, mut m_rec) = (Vec::new(), Vec::new(), Vec::<Vec<u8>>::new());
    let (mut x_scope, mut x_sid, mut x_ctime, mut x_id) = (
        Vec::<i16>::new(),
        Vec::<String>::new(),
        Vec::new(),
        Vec::new(),
    );
    // The hours the batch adds messages to (see `fold.rs`).
    let mut touched: BTreeSet<i64> = BTreeSet::new();
    // Presence keys in event order, and the rollup each one bumps when fresh.
    let mut marks: Vec<PresenceKey> = Vec::new();
    // Messages each sender sent and each group received, by day (see `Presence::tallied`).
    let mut tallies: HashMap<PresenceKey, i64> = HashMap::default();
    let mut days: HashMap<i32, DayStats> = HashMap::default();
    let mut hours: HashMap<i32, MsgCounts> = HashMap::default();
    let mut lifecycle: Vec<(i16, &str, u8, i64)> = Vec::new();
    for ev in events {
        let marks_at = marks.len();
        let fate = match ev {
            Event::Message(m) => {
                if w.pday(m.msg_ctime) < horizon {
                    Fate::Expired
                } else if m.msgid != 0
                    && m.msgid < next
                    && (seen.contains(&m.msgid) || stored.contains(&m.msgid))
                {
                    Fate::Duplicate
                } else {
                    let mut m = m.clone();
                    if m.msgid == 0 {
                        m.msgid = next;
                    }
                    seen.insert(m.msgid);
                    next = next.max(m.msgid + 1);
                    let mut rec = Vec::with_capacity(256);
                    encode_record(&m, &app.key, seq as u64, &mut rec);
                    m_ctime.push(m.msg_ctime);
                    m_id.push(m.msgid as i64);
                    m_rec.push(rec);
                    touched.insert(w.hour_start(m.msg_ctime));
                    for scope in m.scopes() {
                        x_scope.push(i16::from(scope.tag()));
                        x_sid.push(scope.id().to_owned());
                        x_ctime.push(m.msg_ctime);
                        x_id.push(m.msgid as i64);
                    }
                    let r = MessageRollup::of(&m, tz);
                    r.count(
                        hours.entry(r.hour as i32).or_default(),
                        days.entry(r.day as i32).or_default(),
                    );
                    for mark in r.marks().filter(|m| m.set.tallied()) {
                        *tallies.entry(presence_key(mark)).or_default() += 1;
                    }
                    marks.extend(r.marks().map(presence_key));
                    Fate::Accepted
                }
            }
            Event::UserLogin { username, time } => {
                if w.pday(*time) < horizon {
                    Fate::Expired
                } else {
                    marks.push(presence_key(login_mark(username, *time, tz)));
                    Fate::Login
                }
            }
            _ => {
                let l = ev
                    .lifecycle()
                    .expect("every other event is a lifecycle event");
                lifecycle.push((if l.user { USER } else { GROUP }, l.id, l.what, l.time));
                Fate::Lifecycle
            }
        };
        fates.push((fate, marks_at..marks.len()));
    }

    if !m_id.is_empty() {
        let q = tx
            .prepare_cached(
                "INSERT INTO messages (app_id, msg_ctime, msgid, seq, rec)
                 SELECT $1, c, i, $2, r FROM unnest($3::int8[], $4::int8[], $5::bytea[]) AS t(c, i, r)",
            )
            .await
            .map_err(pg_error)?;
        tx.execute(&q, &[&app_id, &seq, &m_ctime, &m_id, &m_rec])
            .await
            .map_err(pg_error)?;
        let q = tx
            .prepare_cached(
                "INSERT INTO msg_index (app_id, scope, scope_id, msg_ctime, msgid, seq)
                 SELECT $1, s, d, c, i, $6 FROM unnest($2::int2[], $3::text[], $4::int8[], $5::int8[]) AS t(s, d, c, i)",
            )
            .await
            .map_err(pg_error)?;
        tx.execute(&q, &[&app_id, &x_scope, &x_sid, &x_ctime, &x_id, &seq])
            .await
            .map_err(pg_error)?;
        // Hours already counted no longer are: marked dirty, they are counted from their rows
        // until the folder counts them again. Later hours need nothing.
        let late: Vec<i64> = touched.range(..folded).copied().collect();
        if !late.is_empty() {
            let q = tx
                .prepare_cached(
                    "INSERT INTO fold_dirty (app_id, hour, touched)
                     SELECT $1, h, $3 FROM unnest($2::int8[]) AS h
                     ON CONFLICT (app_id, hour) DO UPDATE SET touched = excluded.touched",
                )
                .await
                .map_err(pg_error)?;
            tx.execute(&q, &[&app_id, &late, &seq])
                .await
                .map_err(pg_error)?;
        }
    }

    // Presence: the keys that were not there yet come back; each counts once, for the first
    // event in the batch that marks it.
    let fresh: HashSet<PresenceKey> = if marks.is_empty() {
        HashSet::default()
    } else {
        // Each distinct key once, column by column.
        let mut unique = HashSet::default();
        let (mut d, mut k, mut i, mut n) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for key in marks.iter().filter(|key| unique.insert(*key)) {
            d.push(key.0);
            k.push(key.1);
            i.push(key.2.as_str());
            n.push(tallies.get(key).copied().unwrap_or(0));
        }
        let q = tx
            .prepare_cached(
                "INSERT INTO presence (app_id, day, kind, id, n)
                 SELECT $1, d, k, i, n
                   FROM unnest($2::int4[], $3::int2[], $4::text[], $5::int8[]) AS t(d, k, i, n)
                 ON CONFLICT DO NOTHING RETURNING day, kind, id",
            )
            .await
            .map_err(pg_error)?;
        tx.query(&q, &[&app_id, &d, &k, &i, &n])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    };
    // The tallies of rows that were there already: one set-based update per batch (a fresh row
    // got its tally as it was inserted).
    let (mut d, mut k, mut i, mut n) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (key, delta) in &tallies {
        if !fresh.contains(key) {
            d.push(key.0);
            k.push(key.1);
            i.push(key.2.as_str());
            n.push(*delta);
        }
    }
    if !d.is_empty() {
        let q = tx
            .prepare_cached(
                "UPDATE presence p SET n = p.n + t.n
                   FROM unnest($2::int4[], $3::int2[], $4::text[], $5::int8[]) AS t(d, k, i, n)
                  WHERE p.app_id = $1 AND p.day = t.d AND p.kind = t.k AND p.id = t.i",
            )
            .await
            .map_err(pg_error)?;
        tx.execute(&q, &[&app_id, &d, &k, &i, &n])
            .await
            .map_err(pg_error)?;
    }
    // Each fresh key counts once, for the first event (in batch order) that marks it; a login
    // is accepted only if it is that event.
    let mut claimed: HashSet<&PresenceKey> = HashSet::default();
    let mut login_fresh = Vec::new();
    for (fate, range) in &fates {
        let mut first = false;
        for key in &marks[range.clone()] {
            if fresh.contains(key) && claimed.insert(key) {
                first = true;
                let set = Presence::from_code(key.1 as u8).expect("a presence code");
                set.count(days.entry(key.0).or_default());
            }
        }
        if matches!(fate, Fate::Login) {
            login_fresh.push(first);
        }
    }

    // Lifecycle histories: read each entity once, apply the batch's events in order.
    let mut totals = (0i64, 0i64);
    let mut lifecycle_changed = Vec::with_capacity(lifecycle.len());
    if !lifecycle.is_empty() {
        let (kinds, ids): (Vec<i16>, Vec<&str>) =
            lifecycle.iter().map(|(k, i, _, _)| (*k, *i)).unzip();
        let q = tx
            .prepare_cached(
                "SELECT e.kind, e.id, e.history FROM entities e
                   JOIN unnest($2::int2[], $3::text[]) AS t(k, i) ON e.kind = t.k AND e.id = t.i
                  WHERE e.app_id = $1",
            )
            .await
            .map_err(pg_error)?;
        let mut histories: HashMap<(i16, String), Vec<(i64, u8)>> = tx
            .query(&q, &[&app_id, &kinds, &ids])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| ((r.get(0), r.get(1)), decode_history(r.get::<_, &[u8]>(2))))
            .collect();
        let mut dirty: HashSet<(i16, String)> = HashSet::default();
        for &(kind, id, what, time) in &lifecycle {
            let key = (kind, id.to_owned());
            let history = histories.entry(key.clone()).or_default();
            let changed = match apply_lifecycle(history, time, what, |t| tz.civil_day(t)) {
                None => false,
                Some(change) => {
                    dirty.insert(key);
                    for (day, d_new, d_net) in &change.days {
                        if *day >= stats_horizon {
                            days.entry(*day as i32).or_default().add_lifecycle(
                                kind == USER,
                                *d_new,
                                *d_net,
                            );
                        }
                    }
                    if kind == USER {
                        totals.0 += change.net_total;
                    } else {
                        totals.1 += change.net_total;
                    }
                    !change.days.is_empty()
                }
            };
            lifecycle_changed.push(changed);
        }
        let (mut k, mut i, mut h) = (Vec::new(), Vec::new(), Vec::new());
        for key in dirty {
            h.push(encode_history(&histories[&key]));
            k.push(key.0);
            i.push(key.1);
        }
        let q = tx
            .prepare_cached(
                "INSERT INTO entities (app_id, kind, id, history)
                 SELECT $1, k, i, h FROM unnest($2::int2[], $3::text[], $4::bytea[]) AS t(k, i, h)
                 ON CONFLICT (app_id, kind, id) DO UPDATE SET history = excluded.history",
            )
            .await
            .map_err(pg_error)?;
        tx.execute(&q, &[&app_id, &k, &i, &h])
            .await
            .map_err(pg_error)?;
    }

    add_rows(
        &tx,
        app_id,
        "stat_days",
        "day",
        days.into_iter()
            .map(|(d, r)| (d, r.fields().to_vec()))
            .collect(),
    )
    .await?;
    add_rows(
        &tx,
        app_id,
        "stat_hours",
        "hour",
        hours
            .into_iter()
            .map(|(h, c)| (h, c.iter().flatten().map(|v| *v as i64).collect()))
            .collect(),
    )
    .await?;
    if totals != (0, 0) {
        let q = tx
            .prepare_cached(
                "INSERT INTO stat_totals (app_id, users, groups) VALUES ($1, $2, $3)
                 ON CONFLICT (app_id) DO UPDATE
                 SET users = stat_totals.users + excluded.users, groups = stat_totals.groups + excluded.groups",
            )
            .await
            .map_err(pg_error)?;
        tx.execute(&q, &[&app_id, &totals.0, &totals.1])
            .await
            .map_err(pg_error)?;
    }
    if next != stored_next {
        let q = tx
            .prepare_cached("UPDATE app_state SET next_msgid = $2 WHERE app_id = $1")
            .await
            .map_err(pg_error)?;
        tx.execute(&q, &[&app_id, &(next as i64)])
            .await
            .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)?;

    let mut out = IngestOutcome::default();
    let (mut logins, mut changes) = (login_fresh.into_iter(), lifecycle_changed.into_iter());
    for (fate, _) in &fates {
        let accepted = match fate {
            Fate::Expired => {
                out.expired += 1;
                continue;
            }
            Fate::Accepted => true,
            Fate::Duplicate => false,
            Fate::Login => logins.next().unwrap_or(false),
            Fate::Lifecycle => changes.next().unwrap_or(false),
        };
        if accepted {
            out.accepted += 1;
        } else {
            out.duplicates += 1;
        }
    }
    Ok(out)
}

/// Adds `deltas` to rollup rows (read, add, write back: the app lock makes it race-free).
async fn add_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    app_id: i32,
    table: &str,
    col: &str,
    deltas: Vec<(i32, Vec<i64>)>,
) -> Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    let keys: Vec<i32> = deltas.iter().map(|(k, _)| *k).collect();
    let q = tx
        .prepare_cached(&format!(
            "SELECT {col}, v FROM {table} WHERE app_id = $1 AND {col} = ANY($2)"
        ))
        .await
        .map_err(pg_error)?;
    let current: HashMap<i32, Vec<i64>> = tx
        .query(&q, &[&app_id, &keys])
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let width = deltas[0].1.len();
    let mut flat = Vec::with_capacity(deltas.len() * width);
    for (k, d) in &deltas {
        match current.get(k) {
            Some(c) => flat.extend(
                d.iter()
                    .zip(c.iter().chain(std::iter::repeat(&0)))
                    .map(|(a, b)| a + b),
            ),
            None => flat.extend_from_slice(d),
        }
    }
    let q = tx
        .prepare_cached(&format!(
            "INSERT INTO {table} (app_id, {col}, v)
             SELECT $1, k, ($3::int8[])[(n - 1) * {width} + 1 : n * {width}]
               FROM unnest($2::int4[]) WITH ORDINALITY AS t(k, n)
             ON CONFLICT (app_id, {col}) DO UPDATE SET v = excluded.v"
        ))
        .await
        .map_err(pg_error)?;
    tx.execute(&q, &[&app_id, &keys, &flat])
        .await
        .map_err(pg_error)?;
    Ok(())
}
