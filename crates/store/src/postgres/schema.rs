//! The PostgreSQL schema: versioned migrations applied at startup (serialized across servers by
//! an advisory lock), and the day partitions that messages, their scope index and presence sets
//! live in.
//!
//! Every table leads with `app_id` (the app's internal number, standing for its key), so that on
//! Citus every table distributes by tenant and each app's rows are co-located.

use crate::{Result, StoreError};
use tokio_postgres::Client;

/// Applied in order, each once, each in its own transaction. Never edit one that has shipped:
/// add the next.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE imreport_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
CREATE SEQUENCE app_ids;
CREATE TABLE apps (
    app_id        integer PRIMARY KEY,
    app_key       text NOT NULL UNIQUE,
    name          text NOT NULL,
    secret_salt   text NOT NULL,
    secret_sha256 text NOT NULL,
    created_ms    bigint NOT NULL
);
-- Per app: the commit sequence (cursors read as of one) and the next server-assigned msgid.
-- Every ingest transaction updates this row first, so one app's ingests commit one at a time.
CREATE TABLE app_state (
    app_id     integer PRIMARY KEY,
    seq        bigint NOT NULL,
    next_msgid bigint NOT NULL
);
-- rec: the message in imreport's compact record form (imreport_domain::message).
CREATE TABLE messages (
    app_id    integer NOT NULL,
    msg_ctime bigint NOT NULL,
    msgid     bigint NOT NULL,
    seq       bigint NOT NULL,
    rec       bytea NOT NULL,
    PRIMARY KEY (app_id, msg_ctime, msgid)
) PARTITION BY RANGE (msg_ctime);
CREATE INDEX messages_by_msgid ON messages (app_id, msgid);
-- scope: 1 user (sender, and target of single chats), 2 group, 3 chatroom.
CREATE TABLE msg_index (
    app_id    integer NOT NULL,
    scope     smallint NOT NULL,
    scope_id  text NOT NULL,
    msg_ctime bigint NOT NULL,
    msgid     bigint NOT NULL,
    seq       bigint NOT NULL,
    PRIMARY KEY (app_id, scope, scope_id, msg_ctime, msgid)
) PARTITION BY RANGE (msg_ctime);
-- Who was active (kind a), sent (s), or which group was active (g) on a civil day.
CREATE TABLE presence (
    app_id integer NOT NULL,
    day    integer NOT NULL,
    kind   smallint NOT NULL,
    id     text NOT NULL,
    PRIMARY KEY (app_id, day, kind, id)
) PARTITION BY RANGE (day);
-- Lifecycle history of a user (kind u) or group (g): (what u8, time i64) per event.
CREATE TABLE entities (
    app_id  integer NOT NULL,
    kind    smallint NOT NULL,
    id      text NOT NULL,
    history bytea NOT NULL,
    PRIMARY KEY (app_id, kind, id)
);
-- v: DayStats::fields (12 message counts by target and class, then new/net/active/sending
-- users, new/net/active groups).
CREATE TABLE stat_days (
    app_id integer NOT NULL,
    day    integer NOT NULL,
    v      bigint[] NOT NULL,
    PRIMARY KEY (app_id, day)
);
-- v: 12 message counts by target type and class.
CREATE TABLE stat_hours (
    app_id integer NOT NULL,
    hour   integer NOT NULL,
    v      bigint[] NOT NULL,
    PRIMARY KEY (app_id, hour)
);
CREATE TABLE stat_totals (
    app_id integer PRIMARY KEY,
    users  bigint NOT NULL,
    groups bigint NOT NULL
);
"#,
    ),
    (
        2,
        r#"
-- Messages of an app per hour, the hours aligned with the partition days (`hour` is the hour's
-- first instant, ms), partitioned with the messages: the `total` of a first page of the whole
-- app sums one counter per whole hour of its window and counts rows only in the partial hours
-- at its edges. The days already stored are counted here, once.
CREATE TABLE msg_counts (
    app_id integer NOT NULL,
    hour   bigint NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (app_id, hour)
) PARTITION BY RANGE (hour);
DO $$
DECLARE
    p record;
    off bigint;
BEGIN
    SELECT value::bigint INTO off FROM imreport_meta WHERE key = 'partition_offset_ms';
    FOR p IN
        SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
          JOIN pg_class pc ON pc.oid = i.inhparent
          JOIN pg_namespace n ON n.oid = pc.relnamespace
         WHERE pc.relname = 'messages' AND n.nspname = current_schema()
    LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF msg_counts %s',
                       replace(p.name, 'messages_p', 'msg_counts_p'), p.bound);
        EXECUTE format('INSERT INTO msg_counts (app_id, hour, n)
                        SELECT app_id,
                               msg_ctime - mod(mod(msg_ctime + %s, 3600000) + 3600000, 3600000),
                               count(*)
                          FROM %I GROUP BY 1, 2',
                       coalesce(off, 0), p.name);
    END LOOP;
END
$$;
"#,
    ),
    (
        3,
        r#"
-- Messages a sender (kind s) sent or a group (g) received that day: the tallies the busiest
-- lists rank. Rows stored before this version count from 0 (a constant default: no rewrite).
ALTER TABLE presence ADD COLUMN n bigint NOT NULL DEFAULT 0;
"#,
    ),
    (
        4,
        r#"
-- Counted ("folded") hours, so that a first page's `total` costs about the same whatever its
-- window holds (see postgres/fold.rs). Per app, each whole hour before `folded` (ms, an hour
-- start aligned with the partitions) is counted unless `fold_dirty` names it: `msg_counts`
-- holds its messages (no row: none) and `scope_counts` a user's, group's or chatroom's messages
-- in it when they are at least the busy-hour threshold (no row: count its index entries).
-- Ingest writes none of these for hours at or after `folded`; a message for an earlier hour
-- marks that hour dirty (counted from rows until the folder counts it again).
ALTER TABLE app_state ADD COLUMN folded bigint NOT NULL DEFAULT 0;
-- Earlier versions counted every hour as ingest went; the folder counts them again.
TRUNCATE msg_counts;
CREATE TABLE scope_counts (
    app_id   integer NOT NULL,
    scope    smallint NOT NULL,
    scope_id text NOT NULL,
    hour     bigint NOT NULL,
    n        bigint NOT NULL,
    PRIMARY KEY (app_id, scope, scope_id, hour)
) PARTITION BY RANGE (hour);
-- touched: the app's commit sequence of the last ingest that wrote into the hour, so that the
-- folder waits for an hour to go quiet before it counts it again.
CREATE TABLE fold_dirty (
    app_id  integer NOT NULL,
    hour    bigint NOT NULL,
    touched bigint NOT NULL,
    PRIMARY KEY (app_id, hour)
) PARTITION BY RANGE (hour);
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN
        SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
          JOIN pg_class pc ON pc.oid = i.inhparent
          JOIN pg_namespace n ON n.oid = pc.relnamespace
         WHERE pc.relname = 'messages' AND n.nspname = current_schema()
    LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF scope_counts %s',
                       replace(p.name, 'messages_p', 'scope_counts_p'), p.bound);
        EXECUTE format('CREATE TABLE %I PARTITION OF fold_dirty %s',
                       replace(p.name, 'messages_p', 'fold_dirty_p'), p.bound);
    END LOOP;
END
$$;
"#,
    ),
    (
        5,
        r#"
-- Msgids claimed by ingest transactions, so that the same msgid sent through two servers at
-- once is stored once (postgres/write.rs). Unlogged: a claim matters only while the batches
-- that could collide run, and PostgreSQL empties the table after a crash, which ends them.
CREATE UNLOGGED TABLE msgid_claims (
    app_id integer NOT NULL,
    msgid  bigint NOT NULL,
    PRIMARY KEY (app_id, msgid)
);
"#,
    ),
];

fn pg(e: tokio_postgres::Error) -> StoreError {
    super::pg_error(e)
}

/// Applies every migration not yet applied. Several servers starting at once serialize on an
/// advisory lock (per schema); the first applies, the others find nothing left to do.
pub async fn migrate(client: &mut Client) -> Result<()> {
    client
        .execute(
            "SELECT pg_advisory_lock(hashtext(current_schema() || '.imreport.migrate'))",
            &[],
        )
        .await
        .map_err(pg)?;
    let result = match apply(client).await {
        Ok(()) => distribute(client).await,
        Err(e) => Err(e),
    };
    let unlock = client
        .execute(
            "SELECT pg_advisory_unlock(hashtext(current_schema() || '.imreport.migrate'))",
            &[],
        )
        .await
        .map_err(pg);
    result.and(unlock.map(|_| ()))
}

async fn apply(client: &mut Client) -> Result<()> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS imreport_migrations (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(pg)?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM imreport_migrations", &[])
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(newer) = applied.iter().find(|v| **v > MIGRATIONS.len() as i32) {
        return Err(StoreError::Config(format!(
            "the database schema is at version {newer}, newer than this imreport knows ({}); upgrade imreport",
            MIGRATIONS.len()
        )));
    }
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let tx = client.transaction().await.map_err(pg)?;
        tx.batch_execute(sql).await.map_err(pg)?;
        tx.execute(
            "INSERT INTO imreport_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

/// Tables Citus replicates to every node (small, read by every statement's routing).
pub const REFERENCE_TABLES: [&str; 2] = ["imreport_meta", "apps"];

/// Tables Citus distributes by `app_id`, all co-located with the first: one app's rows, and so
/// each of its transactions, on one worker.
pub const DISTRIBUTED_TABLES: [&str; 12] = [
    "app_state",
    "msgid_claims",
    "messages",
    "msg_index",
    "msg_counts",
    "scope_counts",
    "fold_dirty",
    "presence",
    "entities",
    "stat_days",
    "stat_hours",
    "stat_totals",
];

/// Whether the database is a Citus coordinator (the `citus` extension is installed).
pub(crate) async fn has_citus(client: &Client) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')",
            &[],
        )
        .await
        .map_err(pg)?
        .get(0))
}

/// On a Citus coordinator (the `citus` extension is installed in the database), distributes the
/// tables not yet distributed: on the first start, and after a migration adds a table. Data
/// already in a table is moved to the workers as it is distributed. Without Citus: nothing.
async fn distribute(client: &Client) -> Result<()> {
    if !has_citus(client).await? {
        return Ok(());
    }
    let done: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_dist_partition d
               JOIN pg_class c ON c.oid = d.logicalrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = current_schema()",
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let todo = |t: &str| !done.iter().any(|d| d == t);
    for table in REFERENCE_TABLES.into_iter().filter(|t| todo(t)) {
        client
            .execute(
                "SELECT create_reference_table($1::text::regclass)",
                &[&table],
            )
            .await
            .map_err(pg)?;
        tracing::info!(table, "Citus: replicated to every node");
    }
    for table in DISTRIBUTED_TABLES.into_iter().filter(|t| todo(t)) {
        let sql = if table == DISTRIBUTED_TABLES[0] {
            "SELECT create_distributed_table($1::text::regclass, 'app_id')"
        } else {
            "SELECT create_distributed_table($1::text::regclass, 'app_id', colocate_with => 'app_state')"
        };
        client.execute(sql, &[&table]).await.map_err(pg)?;
        tracing::info!(table, "Citus: distributed by app");
    }
    Ok(())
}

/// Partitioned tables and what their partitions are keyed by.
pub const MESSAGE_TABLES: [&str; 5] = [
    "messages",
    "msg_index",
    "msg_counts",
    "scope_counts",
    "fold_dirty",
];
pub const PRESENCE_TABLE: &str = "presence";

pub fn partition_name(table: &str, day: i64) -> String {
    format!("{table}_p{day}")
}

pub fn parse_partition_name(table: &str, name: &str) -> Option<i64> {
    name.strip_prefix(table)?.strip_prefix("_p")?.parse().ok()
}

/// The day partitions of `table` in the current schema.
pub async fn partitions(client: &Client, table: &str) -> Result<Vec<i64>> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid
               JOIN pg_class p ON p.oid = i.inhparent
               JOIN pg_namespace n ON n.oid = p.relnamespace
              WHERE p.relname = $1 AND n.nspname = current_schema()",
            &[&table],
        )
        .await
        .map_err(pg)?;
    Ok(rows
        .iter()
        .filter_map(|r| parse_partition_name(table, r.get::<_, &str>(0)))
        .collect())
}
