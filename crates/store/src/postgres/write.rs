//! Ingest: one request, one transaction. The app's `app_state` row is locked first, so the
//! duplicate check, msgid assignment and every read-modify-write below see all earlier commits
//! of the app and none in flight.

use super::{PostgresStore, pg_error};
use crate::{IngestOutcome, Result};
use imreport_domain::app::App;
use imreport_domain::event::{Event, check_msgids_assignable};
use imreport_domain::lifecycle::{apply_lifecycle, decode_history, encode_history};
use imreport_domain::message::{Message, encode_record};
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
/// reads take), and the app's `folded` mark (see `fold.rs`).
const XID: &str =
    "SELECT pg_current_xact_id()::text::int8, folded FROM app_state WHERE app_id = $1";

/// Held shared by every ingest of the app until it commits; `fold.rs` takes it alone for the
/// moment it moves `folded` on.
pub(super) const INGEST_LOCK: &str =
    "SELECT pg_advisory_xact_lock_shared(hashtext(current_schema() || '.imreport.app'), $1)";
pub(super) const FOLD_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.imreport.app'), $1)";
const LIFECYCLE_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.imreport.lifecycle'), $1)";

/// Claims msgids for the batch (`msgid_claims`: unlogged, unique per app); returns those it
/// claimed. A msgid another batch has claimed and not committed waits for that batch.
const CLAIM: &str = "INSERT INTO msgid_claims (app_id, msgid)
    SELECT $1, m FROM unnest($2::int8[]) AS m ORDER BY m
    ON CONFLICT DO NOTHING RETURNING msgid";

/// Reads the app's msgid watermark (creating the app's state row on its first ingest), checks
/// that the batch's messages without msgid can be given one, and moves the watermark past every
/// msgid the batch would store, in a transaction of its own; returns the watermark it read.
/// That transaction commits without waiting for its log to reach disk: the batch's own commit
/// does that, and a watermark lost with an unacknowledged batch is no loss.
async fn reserve_msgids(
    client: &mut deadpool_postgres::Object,
    app_id: i32,
    kept: &[&Message],
) -> Result<u64> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await
        .map_err(pg_error)?;
    let q = tx
        .prepare_cached(
            "INSERT INTO app_state (app_id, seq, next_msgid) VALUES ($1, 0, 1)
             ON CONFLICT (app_id) DO NOTHING",
        )
        .await
        .map_err(pg_error)?;
    tx.execute(&q, &[&app_id]).await.map_err(pg_error)?;
    if kept.is_empty() {
        tx.commit().await.map_err(pg_error)?;
        return Ok(0);
    }
    let q = tx
        .prepare_cached("SELECT next_msgid FROM app_state WHERE app_id = $1 FOR UPDATE")
        .await
        .map_err(pg_error)?;
    let next = tx
        .query_one(&q, &[&app_id])
        .await
        .map_err(pg_error)?
        .get::<_, i64>(0) as u64;
    // Refused before anything is written; the transaction rolls back on drop.
    check_msgids_assignable(next, kept.iter().copied())?;
    let after = assigned_ids(next, kept)
        .iter()
        .map(|(id, _)| id + 1)
        .max()
        .unwrap_or(next)
        .max(next);
    if after != next {
        let q = tx
            .prepare_cached("UPDATE app_state SET next_msgid = $2 WHERE app_id = $1")
            .await
            .map_err(pg_error)?;
        tx.execute(&q, &[&app_id, &(after as i64)])
            .await
            .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(next)
}

/// The msgid each kept message would be stored under, counting up from `next` for those
/// without one as `check_msgids_assignable` does, and whether the server gave it.
fn assigned_ids(next: u64, kept: &[&Message]) -> Vec<(u64, bool)> {
    let mut next = next;
    kept.iter()
        .map(|m| {
            if m.msgid != 0 {
                next = next.max(m.msgid + 1);
                (m.msgid, false)
            } else {
                next += 1;
                (next - 1, true)
            }
        })
        .collect()
}

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

/// Why a batch is tried again: a msgid it was given was taken meanwhile (see `try_ingest`).
const ASSIGNED_TAKEN: &str = "a msgid given to this batch was taken meanwhile";

/// Most attempts at one batch: concurrent batches of one app can make one another try again
/// (a deadlock PostgreSQL broke, a msgid taken), never for long.
const ATTEMPTS: usize = 8;

pub(super) async fn ingest(
    s: &PostgresStore,
    app: &App,
    events: Vec<Event>,
) -> Result<IngestOutcome> {
    let mut attempt = 1;
    loop {
        match try_ingest(s, app, &events).await {
            // Another server's retention dropped a partition this one thought existed; forget
            // what is cached and try again (the events of that day are expired by now).
            Err(crate::StoreError::PartitionGone(_)) if attempt < ATTEMPTS => {
                s.forget_partitions();
            }
            Err(crate::StoreError::Internal(m)) if m == ASSIGNED_TAKEN && attempt < ATTEMPTS => {}
            Err(crate::StoreError::Postgres(e)) if super::retryable(&e) && attempt < ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "ingest transaction will be retried");
            }
            Err(crate::StoreError::Internal(m)) if m == ASSIGNED_TAKEN => {
                return Err(crate::StoreError::Overloaded);
            }
            other => return other,
        }
        attempt += 1;
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
    let kept: Vec<&imreport_domain::message::Message> = events
        .iter()
        .filter_map(|ev| match ev {
            Event::Message(m) if w.pday(m.msg_ctime) >= horizon => Some(m),
            _ => None,
        })
        .collect();
    // The app's msgid watermark: read and moved past this batch's msgids in a short transaction
    // of its own, before the batch's, so that server-assigned msgids never collide across
    // concurrent batches and every batch that stores a msgid has moved the watermark past it
    // before it claims it.
    let stored_next = reserve_msgids(&mut client, app_id, &kept).await?;

    let tx = client.transaction().await.map_err(pg_error)?;
    // Shared with the app's other ingests; the folder takes it alone to move `folded` on.
    let q = tx.prepare_cached(INGEST_LOCK).await.map_err(pg_error)?;
    tx.execute(&q, &[&app_id]).await.map_err(pg_error)?;
    if events.iter().any(|ev| ev.lifecycle().is_some()) {
        // Lifecycle histories are read, changed and written back: one batch at a time per app.
        let q = tx.prepare_cached(LIFECYCLE_LOCK).await.map_err(pg_error)?;
        tx.execute(&q, &[&app_id]).await.map_err(pg_error)?;
    }
    // The commit's number, as walks see it (see `super::commit_seq`), and what is counted.
    let q = tx.prepare_cached(XID).await.map_err(pg_error)?;
    let row = tx.query_one(&q, &[&app_id]).await.map_err(pg_error)?;
    let (seq, folded) = (super::commit_seq(row.get(0)), row.get::<_, i64>(1));

    // Claim every msgid the batch would store (in order: two batches claiming in the same order
    // cannot deadlock). A msgid another batch holds waits for it; one that comes back unclaimed
    // was claimed by a batch that has committed since this one reserved, and may be stored.
    let given = assigned_ids(stored_next, &kept);
    let mut ids: Vec<i64> = given.iter().map(|(id, _)| *id as i64).collect();
    ids.sort_unstable();
    ids.dedup();
    let claimed: HashSet<u64> = if ids.is_empty() {
        HashSet::default()
    } else {
        let q = tx.prepare_cached(CLAIM).await.map_err(pg_error)?;
        tx.query(&q, &[&app_id, &ids])
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect()
    };
    if given
        .iter()
        .any(|(id, assigned)| *assigned && !claimed.contains(id))
    {
        // A client sent, through another batch at the same moment, a msgid this one was just
        // given: give this batch new ones.
        return Err(crate::StoreError::Internal(ASSIGNED_TAKEN.into()));
    }

    // Client msgids below the watermark, or claimed by a batch since, may be stored already:
    // one lookup for all of them.
    let probe: Vec<i64> = kept
        .iter()
        .filter(|m| m.msgid != 0 && (m.msgid < stored_next || !claimed.contains(&m.msgid)))
        .map(|m| m.msgid as i64)
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
                } else {
                    // As `assigned_ids` gave them (what was reserved and claimed).
                    let id = if m.msgid != 0 { m.msgid } else { next };
                    next = next.max(id + 1);
                    if m.msgid != 0 && (seen.contains(&id) || stored.contains(&id)) {
                        Fate::Duplicate
                    } else {
                        let mut m = m.clone();
                        m.msgid = id;
                        seen.insert(m.msgid);
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
    }

    // Presence: the keys that were not there yet come back; each counts once, for the first
    // event in the batch that marks it.
    let fresh: HashSet<PresenceKey> = if marks.is_empty() {
        HashSet::default()
    } else {
        // Each distinct key once, column by column, in key order (concurrent batches inserting
        // the same new keys wait for one another in the same order: no deadlock).
        let mut unique = HashSet::default();
        let mut keys: Vec<&PresenceKey> = marks.iter().filter(|key| unique.insert(*key)).collect();
        keys.sort_unstable();
        let (mut d, mut k, mut i, mut n) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for key in keys {
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
    // Last, the rows concurrent batches of the app share (the tallies of busy senders and
    // groups, counted hours' marks; above, the day and hour rollups), each in key order: the
    // row locks are held only from here to the commit.
    let mut late: Vec<(&PresenceKey, i64)> = tallies
        .iter()
        .filter(|(key, _)| !fresh.contains(*key))
        .map(|(key, n)| (key, *n))
        .collect();
    late.sort_unstable();
    if !late.is_empty() {
        let (mut d, mut k, mut i, mut n) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (key, delta) in late {
            d.push(key.0);
            k.push(key.1);
            i.push(key.2.as_str());
            n.push(delta);
        }
        // The rows are there (not fresh): each is updated, in the order given.
        let q = tx
            .prepare_cached(
                "INSERT INTO presence (app_id, day, kind, id, n)
                 SELECT $1, d, k, i, n
                   FROM unnest($2::int4[], $3::int2[], $4::text[], $5::int8[]) AS t(d, k, i, n)
                 ON CONFLICT (app_id, day, kind, id) DO UPDATE SET n = presence.n + excluded.n",
            )
            .await
            .map_err(pg_error)?;
        tx.execute(&q, &[&app_id, &d, &k, &i, &n])
            .await
            .map_err(pg_error)?;
    }
    // Hours already counted no longer are: marked dirty, they are counted from their rows
    // until the folder counts them again. Later hours need nothing.
    let dirty: Vec<i64> = touched.range(..folded).copied().collect();
    if !dirty.is_empty() {
        let q = tx
            .prepare_cached(
                "INSERT INTO fold_dirty (app_id, hour, touched)
                 SELECT $1, h, $3 FROM unnest($2::int8[]) AS h
                 ON CONFLICT (app_id, hour) DO UPDATE SET touched = excluded.touched",
            )
            .await
            .map_err(pg_error)?;
        tx.execute(&q, &[&app_id, &dirty, &seq])
            .await
            .map_err(pg_error)?;
    }
    // The claims stay after the commit: a batch that reserved before this one committed and
    // claims one of these msgids after finds it claimed and looks it up (the folder clears
    // claims no running batch can need; see `fold::clear_claims`).
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

/// Adds `deltas` to rollup rows in one statement, in key order: concurrent batches of the app
/// add to the same day and hour rows, each waiting for the one before it to commit. Arrays of
/// different lengths (rows written by an older version) add as if padded with zeros.
async fn add_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    app_id: i32,
    table: &str,
    col: &str,
    mut deltas: Vec<(i32, Vec<i64>)>,
) -> Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    deltas.sort_unstable_by_key(|(k, _)| *k);
    let keys: Vec<i32> = deltas.iter().map(|(k, _)| *k).collect();
    let width = deltas[0].1.len();
    let flat: Vec<i64> = deltas.iter().flat_map(|(_, d)| d.iter().copied()).collect();
    let q = tx
        .prepare_cached(&format!(
            "INSERT INTO {table} (app_id, {col}, v)
             SELECT $1, k, ($3::int8[])[(n - 1) * {width} + 1 : n * {width}]
               FROM unnest($2::int4[]) WITH ORDINALITY AS t(k, n) ORDER BY n
             ON CONFLICT (app_id, {col}) DO UPDATE SET v = ARRAY(
                 SELECT coalesce(a, 0) + coalesce(b, 0)
                   FROM unnest({table}.v, excluded.v) WITH ORDINALITY AS u(a, b, i) ORDER BY i)"
        ))
        .await
        .map_err(pg_error)?;
    tx.execute(&q, &[&app_id, &keys, &flat])
        .await
        .map_err(pg_error)?;
    Ok(())
}
