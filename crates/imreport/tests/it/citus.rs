//! Citus: imreport distributes its own schema on a coordinator (no SQL by hand), idempotently.
//! The conformance suite's `citus` leg then checks every answer on that cluster.

use crate::support::*;

#[tokio::test]
async fn imreport_distributes_its_tables_by_app_on_a_citus_coordinator() {
    let s = TestServer::start_on(Backend::Citus).await;
    let (client, conn) = tokio_postgres::connect(&test_citus_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let schema = s.pg_schema().unwrap().to_owned();
    let rows = client
        .query(
            "SELECT c.relname::text, d.partmethod::text,
                    coalesce(d.partkey IS NOT NULL AND column_to_column_name(d.logicalrelid, d.partkey) = 'app_id', false),
                    d.colocationid
               FROM pg_dist_partition d
               JOIN pg_class c ON c.oid = d.logicalrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relispartition = false
              ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, bool, i32)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let reference: Vec<&str> = got
        .iter()
        .filter(|t| t.1 == "n")
        .map(|t| t.0.as_str())
        .collect();
    assert_eq!(reference, ["apps", "imreport_meta"], "{got:?}");
    let mut by_app: Vec<&str> = got
        .iter()
        .filter(|t| t.1 == "h" && t.2)
        .map(|t| t.0.as_str())
        .collect();
    by_app.sort();
    assert_eq!(
        by_app,
        [
            "app_state",
            "entities",
            "fold_dirty",
            "messages",
            "msg_counts",
            "msg_index",
            "msgid_claims",
            "presence",
            "scope_counts",
            "stat_days",
            "stat_hours",
            "stat_totals"
        ],
        "{got:?}"
    );
    let colocated: std::collections::BTreeSet<i32> =
        got.iter().filter(|t| t.1 == "h").map(|t| t.3).collect();
    assert_eq!(colocated.len(), 1, "one co-location group: {got:?}");
    // It works there: an ingest and a page.
    let (status, body) = s
        .ingest(ndjson(&[text_message(
            1,
            T0 - HOUR,
            "group",
            "g1",
            "alice",
        )]))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, page) = s
        .get(&format!(
            "/v2/groups/g1/messages?count=5&begin_time={}&end_time={}",
            enc(&sh(T0 - 2 * HOUR)),
            enc(&sh(T0))
        ))
        .await;
    assert_eq!(page["total"], 1, "{page}");
}

/// Read replicas are refused on a Citus coordinator, at the start and saying why: a walk's
/// snapshot is the app's worker's, which a coordinator's standby does not show.
#[tokio::test]
async fn read_replicas_are_refused_on_citus() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(Backend::Citus, dir.path());
    settings.pg_standbys = test_citus_url();
    let schema = settings.pg_schema.clone();
    let err =
        match imreport::launch::open_store(&settings, &imreport_domain::Clock::manual(T0)).await {
            Ok(_) => panic!("a server with standbys started on Citus"),
            Err(e) => format!("{e:#}"),
        };
    drop_schema_at(test_citus_url(), schema);
    assert!(err.contains("not supported on Citus"), "{err}");
}
