//! Vacuuming the day partitions pages read, as part of the upkeep (docs/API.md, "Vacuum").
//!
//! A scoped page reads its keys from `msg_index` and `total` counts index ranges: both answer
//! from the index alone only on pages the visibility map marks all-visible, which only VACUUM
//! sets; otherwise each key costs a visit to a heap page of its own (a chatroom's 1000 keys
//! scattered through a busy day: ~700 pages, 5.5 ms at 10M, against 0.5 ms index-only).
//! Autovacuum leaves the last inserts of an insert-only partition (up to 20% of it) unvacuumed
//! once its day is over, and does nothing where it is turned off; so the upkeep vacuums them:
//!
//! - a partition still taking inserts, by autovacuum's insert rule (1000 + 20% of its rows since
//!   its last vacuum);
//! - a partition whose inserts stopped (the same count since the previous pass), once.
//!
//! Vacuuming a partition reads only the pages not yet all-visible, so the work is about one
//! pass over what was written. On Citus the tables are the workers' shards: their autovacuum
//! keeps them.

use super::{PostgresStore, pg_error, schema};
use crate::Result;
use std::collections::HashMap;

/// Autovacuum's defaults: `autovacuum_vacuum_insert_threshold` and `_scale_factor`, and
/// `autovacuum_analyze_threshold` and `_scale_factor`.
const INSERT_BASE: f64 = 1000.0;
const INSERT_SCALE: f64 = 0.2;
const ANALYZE_BASE: f64 = 50.0;
const ANALYZE_SCALE: f64 = 0.1;

/// The tables pages read; their day partitions are what this vacuums.
const TABLES: [&str; 2] = ["messages", "msg_index"];

/// Partitions' inserts since their last vacuum, rows changed since their last analyze and row
/// estimates, by name.
const STATS: &str = "SELECT s.relname::text, s.n_ins_since_vacuum, s.n_mod_since_analyze,
        greatest(c.reltuples, 0)::float8
    FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
    WHERE s.schemaname = current_schema() AND s.relname = ANY($1)";

/// Each partition's insert count at the previous pass.
pub(crate) type Seen = HashMap<String, i64>;

/// Vacuums the partitions due, analyzing those changed enough (autovacuum's analyze rule); one
/// server at a time. Returns how many.
pub(super) async fn vacuum(s: &PostgresStore) -> Result<usize> {
    if s.inner.citus {
        return Ok(0);
    }
    let Some(client) = s.lock_alone("vacuum").await? else {
        return Ok(0);
    };
    let result = pass(s, &client).await;
    PostgresStore::unlock(&client, "vacuum").await?;
    result
}

async fn pass(s: &PostgresStore, client: &deadpool_postgres::Object) -> Result<usize> {
    let mut names = Vec::new();
    for table in TABLES {
        for day in schema::partitions(client, table).await? {
            names.push(schema::partition_name(table, day));
        }
    }
    let rows = client.query(STATS, &[&names]).await.map_err(pg_error)?;
    // (partition, whether to analyze it too)
    let due: Vec<(String, bool)> = {
        let mut seen = s.inner.vacuum_seen.lock().expect("lock");
        let mut now = Seen::new();
        let mut due = Vec::new();
        for r in &rows {
            let (name, inserts, changed, rows): (String, i64, i64, f64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let quiet = seen.get(&name) == Some(&inserts);
            if inserts > 0 && (quiet || inserts as f64 >= INSERT_BASE + INSERT_SCALE * rows) {
                // A few late rows are not worth sampling the whole partition again.
                let analyze = changed as f64 >= ANALYZE_BASE + ANALYZE_SCALE * rows;
                due.push((name.clone(), analyze));
            }
            now.insert(name, inserts);
        }
        *seen = now;
        due
    };
    for (name, analyze) in &due {
        let options = if *analyze { " (ANALYZE)" } else { "" };
        // Partition names are ours (`{table}_p{day}`); quoted all the same. A partition
        // retention dropped meanwhile, or any other failure: the next pass tries again what is
        // still due.
        if let Err(e) = client
            .batch_execute(&format!("VACUUM{options} \"{name}\""))
            .await
        {
            tracing::debug!(error = %e, partition = %name, "vacuum postponed");
            continue;
        }
        // Vacuumed: its count starts again from 0.
        s.inner
            .vacuum_seen
            .lock()
            .expect("lock")
            .insert(name.clone(), 0);
        tracing::debug!(partition = %name, analyze, "vacuumed");
    }
    metrics::counter!("imreport_postgres_vacuumed_partitions_total").increment(due.len() as u64);
    Ok(due.len())
}
