//! Counting hours ahead of reads ("folding"), so that a first page's `total` costs about the
//! same whatever its window holds.
//!
//! Ingest writes no counters: a message for an hour at or after its app's `folded` mark adds
//! rows only. The folder (every server's upkeep, one server at a time) counts each whole hour
//! once it ended [`FOLD_LAG_MS`] ago: the app's messages in it (`msg_counts`) and each user's,
//! group's and chatroom's when they are at least the busy-hour threshold (`scope_counts`), then
//! moves `folded` past it. A message that arrives later for a counted hour marks the hour dirty
//! (`fold_dirty`): reads count that hour from its rows again, and the folder recounts it once
//! no ingest has touched it between two of its passes (a load of old days is counted once it
//! has moved on, not after every batch).
//!
//! Exact at every instant: each fold step locks the app's `app_state` row, as every ingest of
//! the app does first, so an ingest either commits before the step counts (and is counted) or
//! starts after it and sees the new `folded` mark (and marks what it adds to counted hours).
//! Reads take `folded`, the dirty hours and the counters from one snapshot.

use super::{PostgresStore, pg_error};
use crate::Result;
use imreport_domain::time::MILLIS_PER_HOUR;
use rustc_hash::FxHashMap as HashMap;
use std::collections::BTreeMap;

/// How long after its end an hour is counted: messages for the hour just ended still arrive for
/// a while, and each one for a counted hour makes it dirty.
pub const FOLD_LAG_MS: i64 = 5 * 60_000;

/// What the folder saw dirty at its last pass: per app, each dirty hour's `touched` mark.
pub(super) type Seen = HashMap<i32, HashMap<i64, i64>>;

/// When a pass read the apps' msgid watermarks, and them (see [`clear_claims`]).
pub(super) type ClaimMarks = (std::time::SystemTime, Vec<(i32, i64)>);

/// One pass over every app; returns the hours still waiting to be counted (dirty ones not quiet
/// yet, and hours not reached: none once the folder has caught up).
pub(super) async fn fold(s: &PostgresStore) -> Result<u64> {
    // One server at a time; the others skip this pass.
    let Some(mut client) = s.lock_alone("fold").await? else {
        return Ok(0);
    };
    let result = fold_apps(s, &mut client).await;
    PostgresStore::unlock(&client, "fold").await?;
    result
}

async fn fold_apps(s: &PostgresStore, client: &mut deadpool_postgres::Object) -> Result<u64> {
    let apps: Vec<i32> = client
        .query(
            "SELECT s.app_id FROM app_state s JOIN apps a ON a.app_id = s.app_id",
            &[],
        )
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut pending = 0;
    for &app_id in &apps {
        pending += fold_app(s, client, app_id).await?;
    }
    clear_claims(s, client, &apps).await?;
    Ok(pending)
}

async fn fold_app(
    s: &PostgresStore,
    client: &mut deadpool_postgres::Object,
    app_id: i32,
) -> Result<u64> {
    let w = &s.inner.window;
    let now = s.inner.config.clock.now_ms();
    let target = w.hour_start(now - FOLD_LAG_MS);
    let horizon = w.pday_start(w.horizon_day(now));
    advance(s, client, app_id, horizon, target).await?;
    let row = client
        .query_one(
            "SELECT ARRAY(SELECT hour FROM fold_dirty WHERE app_id = $1 ORDER BY hour),
                    ARRAY(SELECT touched FROM fold_dirty WHERE app_id = $1 ORDER BY hour)
               FROM app_state WHERE app_id = $1",
            &[&app_id],
        )
        .await
        .map_err(pg_error)?;
    let dirty: HashMap<i64, i64> = row
        .get::<_, Vec<i64>>(0)
        .into_iter()
        .zip(row.get::<_, Vec<i64>>(1))
        .collect();
    // Ready: just reached (touched 0), or untouched since the last pass saw it dirty.
    let ready: Vec<(i64, i64)> = {
        let mut seen = s.inner.fold_seen.lock().expect("lock");
        let last = seen.entry(app_id).or_default();
        let ready = dirty
            .iter()
            .filter(|(h, t)| **t == 0 || last.get(h) == Some(t))
            .map(|(h, t)| (*h, *t))
            .collect();
        *last = dirty.clone();
        ready
    };
    let mut by_day: BTreeMap<i64, Vec<(i64, i64)>> = BTreeMap::new();
    for (hour, touched) in ready {
        by_day
            .entry(w.pday(hour))
            .or_default()
            .push((hour, touched));
    }
    let mut counted = 0;
    for (day, hours) in by_day {
        if w.pday_start(day) < horizon {
            continue; // retention drops it
        }
        counted += count(s, client, app_id, hours).await?;
    }
    Ok((dirty.len() as u64).saturating_sub(counted))
}

/// Moves the app's `folded` mark to `target`, marking each hour it passes dirty (touched 0: to
/// be counted). Short, and the only step that holds the app's ingests off: each holds the app's
/// ingest lock shared (`write::INGEST_LOCK`) and this takes it alone, so one that began before
/// has committed (its rows are in what the counting reads) and one that begins after reads the
/// new mark and marks what it adds to those hours.
async fn advance(
    s: &PostgresStore,
    client: &mut deadpool_postgres::Object,
    app_id: i32,
    horizon: i64,
    target: i64,
) -> Result<()> {
    let folded: i64 = client
        .query_one("SELECT folded FROM app_state WHERE app_id = $1", &[&app_id])
        .await
        .map_err(pg_error)?
        .get(0);
    if folded >= target {
        return Ok(());
    }
    let w = &s.inner.window;
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute(super::write::FOLD_LOCK, &[&app_id])
        .await
        .map_err(pg_error)?;
    let folded: i64 = tx
        .query_one("SELECT folded FROM app_state WHERE app_id = $1", &[&app_id])
        .await
        .map_err(pg_error)?
        .get(0);
    // Hours with messages only (the app's hour rows, from the primary key's ranges); an hour
    // reached with none is counted as none.
    let from = w.hour_start(folded.max(horizon));
    if from < target {
        let hour_of = "msg_ctime - mod(mod(msg_ctime + $4, 3600000) + 3600000, 3600000)";
        tx.execute(
            &format!(
                "INSERT INTO fold_dirty (app_id, hour, touched)
                 SELECT DISTINCT app_id, {hour_of}, 0 FROM messages
                  WHERE app_id = $1 AND msg_ctime >= $2 AND msg_ctime < $3
                 ON CONFLICT (app_id, hour) DO NOTHING"
            ),
            &[&app_id, &from, &target, &w.partition_offset_ms],
        )
        .await
        .map_err(pg_error)?;
    }
    tx.execute(
        "UPDATE app_state SET folded = $2 WHERE app_id = $1 AND folded < $2",
        &[&app_id, &target],
    )
    .await
    .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    Ok(())
}

/// Counts the `(hour, touched)` marks of one partition day from one snapshot, then writes their
/// counters and clears the marks still as they were, in one transaction. An ingest that wrote
/// into an hour since the snapshot changed its mark: that hour stays dirty (read from rows)
/// until a later pass. Holds nothing off but the marks' rows.
async fn count(
    s: &PostgresStore,
    client: &mut deadpool_postgres::Object,
    app_id: i32,
    marks: Vec<(i64, i64)>,
) -> Result<u64> {
    let off = s.inner.window.partition_offset_ms;
    let busy = s.inner.config.busy_hour as i64;
    let (hours, touched): (Vec<i64>, Vec<i64>) = marks.into_iter().unzip();
    let (lo, hi) = (
        *hours.iter().min().expect("some"),
        hours.iter().max().expect("some") + MILLIS_PER_HOUR,
    );
    let hour_of = "msg_ctime - mod(mod(msg_ctime + $5, 3600000) + 3600000, 3600000)";
    // The counts, from one snapshot taken after the marks were read: every row of an ingest
    // that left a mark as read is in it.
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_error)?;
    let apps = tx
        .query(
            &format!(
                "SELECT h, count(*) FROM (
                     SELECT {hour_of} AS h FROM messages
                      WHERE app_id = $1 AND msg_ctime >= $3 AND msg_ctime < $4) t
                  WHERE h = ANY($2) GROUP BY h"
            ),
            &[&app_id, &hours, &lo, &hi, &off],
        )
        .await
        .map_err(pg_error)?;
    let scopes = tx
        .query(
            &format!(
                "SELECT scope, scope_id, h, count(*) FROM (
                     SELECT scope, scope_id, {hour_of} AS h FROM msg_index
                      WHERE app_id = $1 AND msg_ctime >= $3 AND msg_ctime < $4) t
                  WHERE h = ANY($2) GROUP BY scope, scope_id, h HAVING count(*) >= $6"
            ),
            &[&app_id, &hours, &lo, &hi, &off, &busy],
        )
        .await
        .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    let (a_hour, a_n): (Vec<i64>, Vec<i64>) = apps
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
        .unzip();
    let (mut s_scope, mut s_id, mut s_hour, mut s_n) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in &scopes {
        s_scope.push(r.get::<_, i16>(0));
        s_id.push(r.get::<_, &str>(1));
        s_hour.push(r.get::<_, i64>(2));
        s_n.push(r.get::<_, i64>(3));
    }
    let tx = client.transaction().await.map_err(pg_error)?;
    for table in ["msg_counts", "scope_counts"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE app_id = $1 AND hour = ANY($2)"),
            &[&app_id, &hours],
        )
        .await
        .map_err(pg_error)?;
    }
    tx.execute(
        "INSERT INTO msg_counts (app_id, hour, n)
         SELECT $1, h, n FROM unnest($2::int8[], $3::int8[]) AS t(h, n)",
        &[&app_id, &a_hour, &a_n],
    )
    .await
    .map_err(pg_error)?;
    tx.execute(
        "INSERT INTO scope_counts (app_id, scope, scope_id, hour, n)
         SELECT $1, s, i, h, n FROM unnest($2::int2[], $3::text[], $4::int8[], $5::int8[]) AS t(s, i, h, n)",
        &[&app_id, &s_scope, &s_id, &s_hour, &s_n],
    )
    .await
    .map_err(pg_error)?;
    let cleared = tx
        .execute(
            "DELETE FROM fold_dirty d USING unnest($2::int8[], $3::int8[]) AS q(h, t)
              WHERE d.app_id = $1 AND d.hour = q.h AND d.touched = q.t",
            &[&app_id, &hours, &touched],
        )
        .await
        .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    Ok(cleared)
}

/// How long after a watermark was read its claims may be cleared, beyond the start of the
/// oldest transaction running: a batch reads the watermark just before its transaction begins.
const CLAIM_MARGIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Clears msgid claims no running batch can need: those below a watermark read before the
/// oldest transaction now running began (a batch looks up every msgid below the watermark it
/// read anyway; claims above it are what tell it of batches that committed since). Each pass
/// reads the watermarks; claims go a pass or more later.
async fn clear_claims(
    s: &PostgresStore,
    client: &mut deadpool_postgres::Object,
    apps: &[i32],
) -> Result<()> {
    let now = std::time::SystemTime::now();
    let row = client
        .query_one(
            "SELECT extract(epoch FROM coalesce(min(xact_start), now()))::float8
               FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .map_err(pg_error)?;
    let oldest =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(row.get::<_, f64>(0).max(0.0));
    let marks: Vec<(i32, i64)> = client
        .query(
            "SELECT app_id, next_msgid FROM app_state WHERE app_id = ANY($1)",
            &[&apps],
        )
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let clear: Vec<(i32, i64)> = {
        let mut seen = s.inner.claim_marks.lock().expect("lock");
        // The latest pass's watermarks read before `oldest - CLAIM_MARGIN`.
        let mut clear = Vec::new();
        while let Some((at, _)) = seen.front() {
            if *at + CLAIM_MARGIN > oldest {
                break;
            }
            let (_, wm) = seen.pop_front().expect("front");
            clear = wm;
        }
        seen.push_back((now, marks));
        clear
    };
    for (app_id, below) in clear {
        client
            .execute(
                "DELETE FROM msgid_claims WHERE app_id = $1 AND msgid < $2",
                &[&app_id, &below],
            )
            .await
            .map_err(pg_error)?;
    }
    Ok(())
}
