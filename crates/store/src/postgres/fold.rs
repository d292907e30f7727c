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

/// One pass over every app; returns the hours still waiting to be counted (dirty ones not quiet
/// yet, and hours not reached: none once the folder has caught up).
pub(super) async fn fold(s: &PostgresStore) -> Result<u64> {
    let mut client = s.client().await?;
    // One server at a time; the others skip this pass.
    let lock = "hashtext(current_schema() || '.imreport.fold')";
    let got: bool = client
        .query_one(&format!("SELECT pg_try_advisory_lock({lock})"), &[])
        .await
        .map_err(pg_error)?
        .get(0);
    if !got {
        return Ok(0);
    }
    let result = fold_apps(s, &mut client).await;
    client
        .execute(&format!("SELECT pg_advisory_unlock({lock})"), &[])
        .await
        .map_err(pg_error)?;
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
    for app_id in apps {
        pending += fold_app(s, client, app_id).await?;
    }
    Ok(pending)
}

/// Hours of one app to count in one step (one partition day's): `recount` dirty hours with the
/// `touched` marks they must still carry, then `advance` the `folded` mark to this end.
#[derive(Default)]
struct Step {
    recount: Vec<(i64, i64)>,
    advance: Option<(i64, i64)>,
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
    let row = client
        .query_one(
            "SELECT folded, ARRAY(SELECT hour FROM fold_dirty WHERE app_id = $1 ORDER BY hour),
                    ARRAY(SELECT touched FROM fold_dirty WHERE app_id = $1 ORDER BY hour)
               FROM app_state WHERE app_id = $1",
            &[&app_id],
        )
        .await
        .map_err(pg_error)?;
    let folded: i64 = row.get(0);
    let dirty: HashMap<i64, i64> = row
        .get::<_, Vec<i64>>(1)
        .into_iter()
        .zip(row.get::<_, Vec<i64>>(2))
        .collect();
    // Quiet: untouched since the last pass saw it dirty.
    let quiet: Vec<(i64, i64)> = {
        let mut seen = s.inner.fold_seen.lock().expect("lock");
        let last = seen.entry(app_id).or_default();
        let quiet = dirty
            .iter()
            .filter(|(h, t)| last.get(h) == Some(t) && **h >= horizon)
            .map(|(h, t)| (*h, *t))
            .collect();
        *last = dirty.clone();
        quiet
    };
    let mut steps: BTreeMap<i64, Step> = BTreeMap::new();
    for (hour, touched) in quiet {
        steps
            .entry(w.pday(hour))
            .or_default()
            .recount
            .push((hour, touched));
    }
    let from = w.hour_start(folded.max(horizon));
    let mut at = from;
    while at < target {
        let day = w.pday(at);
        let end = w.pday_start(day + 1).min(target);
        steps.entry(day).or_default().advance = Some((at, end));
        at = end;
    }
    let mut counted = 0;
    for (_, step) in steps {
        counted += step.recount.len() as u64;
        count_step(s, client, app_id, step).await?;
    }
    Ok((dirty.len() as u64).saturating_sub(counted))
}

/// Counts the hours of one step in one transaction that holds the app's ingests off.
async fn count_step(
    s: &PostgresStore,
    client: &mut deadpool_postgres::Object,
    app_id: i32,
    step: Step,
) -> Result<()> {
    let off = s.inner.window.partition_offset_ms;
    let busy = s.inner.config.busy_hour as i64;
    let tx = client.transaction().await.map_err(pg_error)?;
    let folded: i64 = tx
        .query_one(
            "SELECT folded FROM app_state WHERE app_id = $1 FOR UPDATE",
            &[&app_id],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    let mut hours: Vec<i64> = Vec::new();
    if !step.recount.is_empty() {
        // Only those still untouched: an ingest may have come between the look and the lock.
        let (h, t): (Vec<i64>, Vec<i64>) = step.recount.into_iter().unzip();
        hours = tx
            .query(
                "DELETE FROM fold_dirty d USING unnest($2::int8[], $3::int8[]) AS q(h, t)
                  WHERE d.app_id = $1 AND d.hour = q.h AND d.touched = q.t
                  RETURNING d.hour",
                &[&app_id, &h, &t],
            )
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| r.get(0))
            .collect();
    }
    let mut advance_to = None;
    if let Some((lo, hi)) = step.advance {
        // Another server may have moved the mark since the look.
        let mut h = lo.max(folded);
        while h < hi {
            hours.push(h);
            h += MILLIS_PER_HOUR;
        }
        if hi > folded {
            advance_to = Some(hi);
        }
    }
    if !hours.is_empty() {
        let (lo, hi) = (
            *hours.iter().min().expect("some"),
            hours.iter().max().expect("some") + MILLIS_PER_HOUR,
        );
        let hour_of = "msg_ctime - mod(mod(msg_ctime + $5, 3600000) + 3600000, 3600000)";
        tx.execute(
            "DELETE FROM msg_counts WHERE app_id = $1 AND hour = ANY($2)",
            &[&app_id, &hours],
        )
        .await
        .map_err(pg_error)?;
        tx.execute(
            "DELETE FROM scope_counts WHERE app_id = $1 AND hour = ANY($2)",
            &[&app_id, &hours],
        )
        .await
        .map_err(pg_error)?;
        tx.execute(
            &format!(
                "INSERT INTO msg_counts (app_id, hour, n)
                 SELECT app_id, h, count(*) FROM (
                     SELECT app_id, {hour_of} AS h FROM messages
                      WHERE app_id = $1 AND msg_ctime >= $3 AND msg_ctime < $4) t
                  WHERE h = ANY($2) GROUP BY app_id, h"
            ),
            &[&app_id, &hours, &lo, &hi, &off],
        )
        .await
        .map_err(pg_error)?;
        tx.execute(
            &format!(
                "INSERT INTO scope_counts (app_id, scope, scope_id, hour, n)
                 SELECT app_id, scope, scope_id, h, count(*) FROM (
                     SELECT app_id, scope, scope_id, {hour_of} AS h FROM msg_index
                      WHERE app_id = $1 AND msg_ctime >= $3 AND msg_ctime < $4) t
                  WHERE h = ANY($2) GROUP BY app_id, scope, scope_id, h HAVING count(*) >= $6"
            ),
            &[&app_id, &hours, &lo, &hi, &off, &busy],
        )
        .await
        .map_err(pg_error)?;
    }
    if let Some(to) = advance_to {
        tx.execute(
            "UPDATE app_state SET folded = $2 WHERE app_id = $1",
            &[&app_id, &to],
        )
        .await
        .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(())
}
