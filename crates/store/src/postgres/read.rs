//! Reads: history pages (keyset SQL on the primary key or the scope index) and rollups.

use super::{PostgresStore, pg_error, standby};
use crate::archive::{BATCH, BackupItem};
use crate::{DaysReport, Page, PageRequest, Result, StoreError};
use futures::future::BoxFuture;
use imreport_domain::app::App;
use imreport_domain::cursor::{Position, Snapshot};
use imreport_domain::lifecycle::decode_history;
use imreport_domain::message::view_record;
use imreport_domain::rollup::{Busiest, DAY_FIELDS, DayStats, MsgCounts, Presence, Tally};
use imreport_domain::scope::Scope;
use imreport_domain::time::MILLIS_PER_HOUR;
use tokio_postgres::IsolationLevel;
use tokio_postgres::types::ToSql;

/// Rows of transactions the walk's snapshot had in flight are left out after the query (see
/// `page`): a condition on them here made the planner trade the ordered index walk for a
/// bitmap scan and sort of the rest of the window (a 10M walk at 66k messages/s).
const APP_PAGE: &str = "SELECT msg_ctime, msgid, rec, seq FROM messages
    WHERE app_id = $1 AND msg_ctime >= $2 AND msg_ctime <= $4 AND (msg_ctime, msgid) > ($2, $3)
      AND seq <= $5
    ORDER BY msg_ctime, msgid LIMIT $6";

/// Planner settings of a page's transaction (see `page_on`).
const PLAN_GUARD: &str = "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off";

/// The scope's page from its index: keys only, so that a partition the upkeep has vacuumed
/// answers from the index alone (`seq` is not in the index); the records and their `seq` follow
/// in one statement ([`RECORDS`]), and rows past the snapshot are left out after it.
const SCOPE_PAGE: &str = "SELECT x.msg_ctime, x.msgid
    FROM msg_index x
    WHERE x.app_id = $1 AND x.scope = $6 AND x.scope_id = $7
      AND x.msg_ctime >= $2 AND x.msg_ctime <= $4 AND (x.msg_ctime, x.msgid) > ($2, $3)
    ORDER BY x.msg_ctime, x.msgid LIMIT $5";

/// The records of a scope's page, by primary key from arrays of its keys, bounded by the
/// page's time span so that only its day partitions are opened. One statement for the page
/// instead of a lookup per row (a subquery per row re-entered the partitioned table a
/// thousand times: 7.7 ms against 1 + 3.9 ms for keys then records, EXPLAIN ANALYZE at 10M).
/// A lateral subquery (`OFFSET 0` keeps it one) so that each key is one primary-key lookup:
/// as a plain join, the plans made for the first executions (which see the arrays) chose a
/// hash join over every message of the page's span (57 ms for a chatroom page at 10M, 3 ms
/// as lookups).
const RECORDS: &str = "SELECT k.ct, k.id, m.rec, m.seq
    FROM unnest($2::int8[], $3::int8[]) AS k(ct, id)
    CROSS JOIN LATERAL (SELECT rec, seq FROM messages
        WHERE app_id = $1 AND msg_ctime = k.ct AND msgid = k.id
          AND msg_ctime >= $4 AND msg_ctime <= $5 OFFSET 0) m";

/// The transaction's snapshot (from the app's node: on Citus, its worker), the app's `folded` mark and the dirty hours of `[$2, $3)`: what says which
/// hours are counted (see `fold.rs`).
const FOLD_STATE: &str = "SELECT pg_current_snapshot()::text, folded,
        ARRAY(SELECT hour FROM fold_dirty WHERE app_id = $1 AND hour >= $2 AND hour < $3)
    FROM app_state WHERE app_id = $1";

/// The counters of `[$2, $3)`: the app's, or a scope's ($4, $5).
const APP_COUNTERS: &str =
    "SELECT hour, n FROM msg_counts WHERE app_id = $1 AND hour >= $2 AND hour < $3";
const SCOPE_COUNTERS: &str = "SELECT hour, n FROM scope_counts
    WHERE app_id = $1 AND scope = $4 AND scope_id = $5 AND hour >= $2 AND hour < $3";

/// Rows in the intervals `[$2[i], $3[i])`, each counted `$4[i]` times (1, or -1 for the rest of
/// an hour whose counter stands in for it): one index range count each.
const APP_ROWS: &str = "SELECT coalesce(sum(c * r.sign), 0)::int8
    FROM unnest($2::int8[], $3::int8[], $4::int8[]) AS r(lo, hi, sign),
         LATERAL (SELECT count(*) AS c FROM messages
                   WHERE app_id = $1 AND msg_ctime >= r.lo AND msg_ctime < r.hi) x";
const SCOPE_ROWS: &str = "SELECT coalesce(sum(c * r.sign), 0)::int8
    FROM unnest($2::int8[], $3::int8[], $4::int8[]) AS r(lo, hi, sign),
         LATERAL (SELECT count(*) AS c FROM msg_index
                   WHERE app_id = $1 AND scope = $5 AND scope_id = $6
                     AND msg_ctime >= r.lo AND msg_ctime < r.hi) x";

/// Row ranges to count, each added or (`sign` -1) taken away; consecutive added ranges merge
/// into one.
#[derive(Default)]
struct Ranges {
    lo: Vec<i64>,
    hi: Vec<i64>,
    sign: Vec<i64>,
}

impl Ranges {
    fn push(&mut self, lo: i64, hi: i64, sign: i64) {
        if lo >= hi {
            return;
        }
        if sign == 1 && self.sign.last() == Some(&1) && self.hi.last() == Some(&lo) {
            *self.hi.last_mut().expect("one range") = hi;
            return;
        }
        self.lo.push(lo);
        self.hi.push(hi);
        self.sign.push(sign);
    }
}

/// The app's commit sequence and the messages of `scope` in `[begin, end]`: the counters of the
/// window's counted hours, and rows only where no counter stands (hours not counted yet or
/// dirty, and a scope's quiet hours), so that the cost stays that of ~168 counters and a few
/// hours of rows whatever a 7-day window holds. An hour the window's edge cuts is its counter
/// less the rows of the part outside the window when that part is the shorter (a window from
/// `hh:00:01` counts one second of rows, not an hour's).
async fn total(
    tx: &deadpool_postgres::Transaction<'_>,
    s: &PostgresStore,
    app_id: i32,
    scope: &Scope,
    begin: i64,
    end: i64,
) -> Result<(Snapshot, u64)> {
    let w = &s.inner.window;
    let h = MILLIS_PER_HOUR;
    // Every hour the window touches, `[first, last)`, aligned as the counters are.
    let first = w.hour_start(begin);
    let last = w.hour_start(end) + h;
    let (tag, sid) = (i16::from(scope.tag()), scope.id());
    let state = tx.prepare_cached(FOLD_STATE).await.map_err(pg_error)?;
    let q = match scope {
        Scope::App => tx.prepare_cached(APP_COUNTERS).await,
        _ => tx.prepare_cached(SCOPE_COUNTERS).await,
    }
    .map_err(pg_error)?;
    let app_params: [&(dyn ToSql + Sync); 3] = [&app_id, &first, &last];
    let scope_params: [&(dyn ToSql + Sync); 5] = [&app_id, &first, &last, &tag, &sid];
    let params: &[&(dyn ToSql + Sync)] = match scope {
        Scope::App => &app_params,
        _ => &scope_params,
    };
    // Both in one round trip (the connection pipelines them).
    let (counters, state) =
        tokio::try_join!(tx.query(&q, params), tx.query_opt(&state, &app_params))
            .map_err(pg_error)?;
    let Some(state) = state else {
        // Nothing ever ingested for the app.
        return Ok((Snapshot::default(), 0));
    };
    let (snapshot, folded, dirty): (&str, i64, Vec<i64>) =
        (state.get(0), state.get(1), state.get(2));
    let counters: std::collections::HashMap<i64, i64> =
        counters.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut n = 0i64;
    let mut ranges = Ranges::default();
    for hour in (first..last).step_by(h as usize) {
        // The window's part of the hour.
        let (lo, hi) = (hour.max(begin), (hour + h).min(end + 1));
        let counted = hour < folded && !dirty.contains(&hour);
        // What stands in for the hour's rows: its counter (a counted app hour with none
        // holds no message; a scope's quiet hour has none and is counted from rows).
        let counter = match scope {
            Scope::App if counted => Some(counters.get(&hour).copied().unwrap_or(0)),
            _ if counted => counters.get(&hour).copied(),
            _ => None,
        };
        match counter {
            None => ranges.push(lo, hi, 1),
            Some(0) => {}
            Some(c) if h - (hi - lo) < hi - lo => {
                n += c;
                ranges.push(hour, lo, -1);
                ranges.push(hi, hour + h, -1);
            }
            Some(_) => ranges.push(lo, hi, 1),
        }
    }
    if !ranges.lo.is_empty() {
        let row = match scope {
            Scope::App => {
                let q = tx.prepare_cached(APP_ROWS).await.map_err(pg_error)?;
                tx.query_one(&q, &[&app_id, &ranges.lo, &ranges.hi, &ranges.sign])
                    .await
            }
            _ => {
                let q = tx.prepare_cached(SCOPE_ROWS).await.map_err(pg_error)?;
                tx.query_one(
                    &q,
                    &[&app_id, &ranges.lo, &ranges.hi, &ranges.sign, &tag, &sid],
                )
                .await
            }
        }
        .map_err(pg_error)?;
        n += row.get::<_, i64>(0);
    }
    Ok((super::walk_snapshot(snapshot)?, n as u64))
}

/// A read-only transaction whose statements all see one snapshot.
async fn snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_error)
}

/// What one attempt at a page came to.
enum Attempt {
    Page(Page),
    /// The standby has not replayed everything the walk sees yet.
    Behind,
    /// More transactions were in flight than a cursor carries; a moment later there are fewer.
    Crowded,
}

/// A page from a fresh standby when there is one and it has replayed what the walk sees
/// (waiting up to [`standby::CATCH_UP`] for it), else from the primary.
pub(super) async fn page(
    s: &PostgresStore,
    app: &App,
    scope: &Scope,
    req: PageRequest,
) -> Result<Page> {
    let started = std::time::Instant::now();
    let mut standbys = true;
    let mut crowded = 0u64;
    loop {
        let standby = standbys.then(|| s.inner.standbys.pick()).flatten();
        let attempt = match standby {
            Some(sb) => {
                let Some(mut client) = sb.client().await else {
                    continue;
                };
                match page_on(s, &mut client, true, app, scope, &req).await {
                    Err(e) if standby::elsewhere(&e) => {
                        sb.failed(&e.to_string());
                        continue;
                    }
                    other => other?,
                }
            }
            None => {
                let mut cuts = 0;
                loop {
                    let mut client = s.client().await?;
                    match page_on(s, &mut client, false, app, scope, &req).await {
                        Err(e) if cut_under(&e, &mut cuts) => discard(client),
                        other => break other?,
                    }
                }
            }
        };
        match attempt {
            Attempt::Page(p) => return Ok(p),
            Attempt::Behind if started.elapsed() < standby::CATCH_UP => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Attempt::Behind => {
                metrics::counter!("imreport_postgres_standby_fallbacks_total").increment(1);
                standbys = false;
            }
            Attempt::Crowded if crowded < 20 => {
                crowded += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5 * crowded)).await;
            }
            Attempt::Crowded => return Err(StoreError::Overloaded),
        }
    }
}

async fn page_on(
    s: &PostgresStore,
    client: &mut deadpool_postgres::Object,
    on_standby: bool,
    app: &App,
    scope: &Scope,
    req: &PageRequest,
) -> Result<Attempt> {
    // One snapshot for the sequence, the total and the page.
    let tx = snapshot(client).await?;
    // A page is an ordered walk of a primary key from a position, `LIMIT`ed: the index scan is
    // always the plan. Day partitions not analyzed yet (right after a load, before autovacuum
    // gets to them) have no statistics, and the planner then guessed a few rows and chose a
    // bitmap scan and sort of the whole window instead (0.76 s for a day of 10M messages,
    // 5.5 s for 7 days); nothing it could pick instead of these is right for a page.
    tx.batch_execute(PLAN_GUARD).await.map_err(pg_error)?;
    let app_id = app.id as i32;
    let (tag, sid) = (i16::from(scope.tag()), scope.id());
    let (begin, end) = (req.range.begin, req.range.end);
    let (snapshot, total) = match req.after {
        None => total(&tx, s, app_id, scope, begin, end).await?,
        Some(_) => {
            if on_standby {
                let own: String = tx
                    .query_one("SELECT pg_current_snapshot()::text", &[])
                    .await
                    .map_err(pg_error)?
                    .get(0);
                if !super::walk_snapshot(&own)?.covers(&req.snapshot) {
                    return Ok(Attempt::Behind);
                }
            }
            (req.snapshot.clone(), req.total)
        }
    };
    if !snapshot.fits() {
        return Ok(Attempt::Crowded);
    }
    let (after_ctime, after_msgid) = match req.after {
        Some(p) => (p.ctime, p.msgid as i64),
        // Stored msgids start at 1, so (begin, 0) is just before the window.
        None => (begin, 0),
    };
    let want = i64::from(req.count);
    let upto = snapshot.upto as i64;
    let (page_q, records_q) = match scope {
        Scope::App => (tx.prepare_cached(APP_PAGE).await, None),
        _ => (
            tx.prepare_cached(SCOPE_PAGE).await,
            Some(tx.prepare_cached(RECORDS).await.map_err(pg_error)?),
        ),
    };
    let page_q = page_q.map_err(pg_error)?;
    // want + 1 rows the snapshot sees (the last says whether more follow), asking again past
    // the last row read when rows of transactions in flight at the snapshot were left out.
    // Rows are (msg_ctime, msgid, rec, seq) for every scope.
    let mut rows = Vec::new();
    let mut from = (after_ctime, after_msgid);
    loop {
        let limit = want + 1 - rows.len() as i64;
        // The rows read, each one's key first: for a scope, its keys and their records.
        let (keys, got) = match &records_q {
            None => {
                let params: [&(dyn ToSql + Sync); 6] =
                    [&app_id, &from.0, &from.1, &end, &upto, &limit];
                let got = tx.query(&page_q, &params).await.map_err(pg_error)?;
                (None, got)
            }
            Some(records_q) => {
                let params: [&(dyn ToSql + Sync); 7] =
                    [&app_id, &from.0, &from.1, &end, &limit, &tag, &sid];
                let keys = tx.query(&page_q, &params).await.map_err(pg_error)?;
                let got = records(&tx, records_q, app_id, &keys).await?;
                (Some(keys), got)
            }
        };
        let read = keys.as_ref().unwrap_or(&got);
        let n = read.len() as i64;
        if let Some(r) = read.last() {
            from = (r.get(0), r.get(1));
        }
        rows.extend(got.into_iter().filter(|r| {
            let seq = r.get::<_, i64>(3);
            seq <= upto && !snapshot.pending.contains(&(seq as u64))
        }));
        if n < limit || rows.len() as i64 > want {
            break;
        }
    }
    tx.commit().await.map_err(pg_error)?;
    let more = rows.len() as i64 > want;
    rows.truncate(want as usize);
    let mut json = Vec::with_capacity(rows.len() * 512);
    let mut last = None;
    for (n, row) in rows.iter().enumerate() {
        let (ctime, msgid, rec): (i64, i64, &[u8]) = (row.get(0), row.get(1), row.get(2));
        let view = view_record(rec).map_err(|_| StoreError::Corrupt("a message record".into()))?;
        if n > 0 {
            json.push(b',');
        }
        view.write_json(msgid as u64, ctime, &app.key, &mut json);
        last = Some(Position {
            ctime,
            msgid: msgid as u64,
        });
    }
    Ok(Attempt::Page(Page {
        total,
        snapshot,
        count: rows.len().min(want as usize),
        json,
        next: if more { last } else { None },
    }))
}

/// The records of a scope page's `keys` (msg_ctime, msgid), in the keys' order, as rows of
/// (msg_ctime, msgid, rec, seq).
async fn records(
    tx: &deadpool_postgres::Transaction<'_>,
    q: &tokio_postgres::Statement,
    app_id: i32,
    keys: &[tokio_postgres::Row],
) -> Result<Vec<tokio_postgres::Row>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (cts, ids): (Vec<i64>, Vec<i64>) = keys
        .iter()
        .map(|k| (k.get::<_, i64>(0), k.get::<_, i64>(1)))
        .unzip();
    let (lo, hi) = (cts[0], cts[cts.len() - 1]);
    let mut got = tx
        .query(q, &[&app_id, &cts, &ids, &lo, &hi])
        .await
        .map_err(pg_error)?;
    if got.len() != keys.len() {
        return Err(StoreError::Corrupt(
            "an indexed message has no record".into(),
        ));
    }
    // The lookups return rows in the keys' order; sorting keeps that a property of this code,
    // not of the plan.
    got.sort_unstable_by_key(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)));
    Ok(got)
}

/// Runs a read on a fresh standby when there is one, else (or when the standby fails it) on
/// the primary.
pub(super) async fn on_reader<T>(
    s: &PostgresStore,
    read: impl for<'c> Fn(&'c mut deadpool_postgres::Object) -> BoxFuture<'c, Result<T>>,
) -> Result<T> {
    if let Some(sb) = s.inner.standbys.pick()
        && let Some(mut client) = sb.client().await
    {
        match read(&mut client).await {
            Err(e) if standby::elsewhere(&e) => sb.failed(&e.to_string()),
            other => return other,
        }
    }
    let mut cuts = 0;
    loop {
        let mut client = s.client().await?;
        match read(&mut client).await {
            Err(e) if cut_under(&e, &mut cuts) => discard(client),
            other => return other,
        }
    }
}

/// Whether a read failed because the database cut its connection under it (a restart, a
/// failover, an operator's `pg_terminate_backend`), and may be tried again on another: reads
/// change nothing. A cut reaches every pooled connection at once and the pool learns of each
/// only when it is used, so up to [`CUT_RETRIES`] are tried before the error is answered.
pub(super) fn cut_under(e: &StoreError, cuts: &mut u32) -> bool {
    let cut = matches!(e, StoreError::Unavailable(_)) && *cuts < CUT_RETRIES;
    *cuts += u32::from(cut);
    cut
}

const CUT_RETRIES: u32 = 3;

/// Closes a connection that failed for want of the database instead of returning it to the
/// pool: one the server ended with a fatal error is not yet seen closed, and would be handed
/// out again.
pub(super) fn discard(client: deadpool_postgres::Object) {
    drop(deadpool_postgres::Object::take(client));
}

/// Day rows `from..=to` and the totals at the end of `from - 1` (the all-time totals minus the
/// net changes of every day from `from` on), from one snapshot.
pub(super) async fn stats_days(
    s: &PostgresStore,
    app: &App,
    from: i64,
    to: i64,
) -> Result<DaysReport> {
    let app_id = app.id as i32;
    let (rows, totals) = on_reader(s, move |client| {
        Box::pin(async move {
            let tx = snapshot(client).await?;
            let q = tx
                .prepare_cached("SELECT day, v FROM stat_days WHERE app_id = $1 AND day >= $2")
                .await
                .map_err(pg_error)?;
            let rows = tx
                .query(&q, &[&app_id, &(from as i32)])
                .await
                .map_err(pg_error)?;
            let totals = tx
                .query_opt(
                    "SELECT users, groups FROM stat_totals WHERE app_id = $1",
                    &[&app_id],
                )
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok((rows, totals))
        })
    })
    .await?;
    let rows = rows.iter().map(|r| {
        let mut f = [0i64; DAY_FIELDS];
        for (x, y) in f.iter_mut().zip(r.get::<_, Vec<i64>>(1)) {
            *x = y;
        }
        (i64::from(r.get::<_, i32>(0)), DayStats::from_fields(&f))
    });
    let totals = totals
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
        .unwrap_or_default();
    Ok(DaysReport::assemble(from, to, rows, totals))
}

/// Message counts of civil hours `from..=to`.
pub(super) async fn stats_hours(
    s: &PostgresStore,
    app: &App,
    from: i64,
    to: i64,
) -> Result<Vec<MsgCounts>> {
    let app_id = app.id as i32;
    let rows = on_reader(s, move |client| {
        Box::pin(async move {
            let q = client
                .prepare_cached(
                    "SELECT hour, v FROM stat_hours WHERE app_id = $1 AND hour >= $2 AND hour <= $3",
                )
                .await
                .map_err(pg_error)?;
            client
                .query(&q, &[&app_id, &(from as i32), &(to as i32)])
                .await
                .map_err(pg_error)
        })
    })
    .await?;
    let n = usize::try_from(to - from + 1).unwrap_or(0);
    let mut out = vec![MsgCounts::default(); n];
    for r in &rows {
        let hour = i64::from(r.get::<_, i32>(0));
        let v: Vec<i64> = r.get(1);
        let c = &mut out[(hour - from) as usize];
        for (i, x) in v.into_iter().take(12).enumerate() {
            c[i / 4][i % 4] = x as u64;
        }
    }
    Ok(out)
}

/// A day's busiest senders and groups: the top `n` tallies of each, ranked as
/// [`imreport_domain::rollup::top_tallies`] ranks them (ids in byte order: `COLLATE "C"`).
pub(super) async fn busiest(s: &PostgresStore, app: &App, day: i64, n: usize) -> Result<Busiest> {
    let app_id = app.id as i32;
    let mut lists = on_reader(s, move |client| {
        Box::pin(async move {
            let q = client
                .prepare_cached(
                    "SELECT id, n FROM presence
                      WHERE app_id = $1 AND day = $2 AND kind = $3 AND n > 0
                      ORDER BY n DESC, id COLLATE \"C\" LIMIT $4",
                )
                .await
                .map_err(pg_error)?;
            let mut lists: Vec<Vec<Tally>> = Vec::with_capacity(2);
            for set in [Presence::Sender, Presence::ActiveGroup] {
                let rows = client
                    .query(
                        &q,
                        &[&app_id, &(day as i32), &i16::from(set.code()), &(n as i64)],
                    )
                    .await
                    .map_err(pg_error)?;
                lists.push(
                    rows.iter()
                        .map(|r| Tally {
                            id: r.get(0),
                            messages: r.get::<_, i64>(1) as u64,
                        })
                        .collect(),
                );
            }
            Ok(lists)
        })
    })
    .await?;
    let groups = lists.pop().unwrap_or_default();
    let senders = lists.pop().unwrap_or_default();
    Ok(Busiest { senders, groups })
}

/// Sends each app and its events as of one snapshot (a repeatable-read transaction; see
/// [`crate::Store::backup`]), read through portals a batch at a time: lifecycle histories,
/// messages, and the logins that made a user active on a day without a message (as a login at
/// the day's start).
pub(super) async fn backup(
    s: &PostgresStore,
    out: tokio::sync::mpsc::Sender<BackupItem>,
) -> Result<()> {
    use imreport_domain::event::Event;
    let mut client = s.client().await?;
    let tx = snapshot(&mut client).await?;
    let apps: Vec<App> = tx
        .query(
            &format!("SELECT {} FROM apps ORDER BY app_id", super::APP_COLUMNS),
            &[],
        )
        .await
        .map_err(pg_error)?
        .iter()
        .map(super::app_from_row)
        .collect();
    let gone = || StoreError::Internal("the backup's reader went away".into());
    let tz = &s.inner.config.tz;
    let queries = [
        "SELECT kind, id, history FROM entities WHERE app_id = $1",
        "SELECT msg_ctime, msgid, rec FROM messages WHERE app_id = $1",
        "SELECT p.day, p.id FROM presence p WHERE p.app_id = $1 AND p.kind = 97
            AND NOT EXISTS (SELECT 1 FROM presence s WHERE s.app_id = p.app_id AND s.day = p.day
                                                     AND s.kind = 115 AND s.id = p.id)",
    ];
    for app in apps {
        let (id, key) = (app.id as i32, app.key.clone());
        out.send(BackupItem::App(app)).await.map_err(|_| gone())?;
        for (what, sql) in queries.iter().enumerate() {
            let stmt = tx.prepare(sql).await.map_err(pg_error)?;
            let portal = tx.bind(&stmt, &[&id]).await.map_err(pg_error)?;
            loop {
                let rows = tx
                    .query_portal(&portal, BATCH as i32)
                    .await
                    .map_err(pg_error)?;
                if rows.is_empty() {
                    break;
                }
                let mut events = Vec::with_capacity(rows.len());
                for r in &rows {
                    match what {
                        0 => events.extend(Event::from_history(
                            r.get::<_, i16>(0) == i16::from(b'u'),
                            r.get::<_, &str>(1),
                            &decode_history(r.get::<_, &[u8]>(2)),
                        )),
                        1 => {
                            let view = view_record(r.get::<_, &[u8]>(2))
                                .map_err(|_| StoreError::Corrupt("a message record".into()))?;
                            events.push(Event::Message(view.to_message(
                                r.get::<_, i64>(1) as u64,
                                r.get(0),
                                &key,
                            )));
                        }
                        _ => events.push(Event::UserLogin {
                            username: r.get(1),
                            time: tz.day_start(i64::from(r.get::<_, i32>(0))),
                        }),
                    }
                }
                out.send(BackupItem::Events(events))
                    .await
                    .map_err(|_| gone())?;
            }
        }
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(())
}
