//! Prometheus metrics, on a listener of their own (`metrics_listen`), off the public port.
//! The HTTP layer, the ingest path and the embedded writer record through the `metrics`
//! facade as things happen; what is a state rather than an event (disk used, partitions,
//! refused connections, stream lag) is read when Prometheus scrapes.

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};

/// Latency buckets (seconds) of every histogram: 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's recorder, installed once (servers in one test process share it).
pub fn handle() -> Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let h = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .context("histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    describe();
    Ok(HANDLE.get_or_init(|| h).clone())
}

/// Help texts and units, once.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "imreport_http_requests_total",
        "HTTP requests answered, by route and status"
    );
    describe_histogram!(
        "imreport_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by route"
    );
    describe_counter!(
        "imreport_refusals_total",
        "Requests refused by a rate limit (rate_limit) or for overload (overloaded)"
    );
    describe_counter!(
        "imreport_ingest_batches_total",
        "Ingest requests: stored, rejected (4xx) or refused (5xx)"
    );
    describe_counter!(
        "imreport_ingest_events_total",
        "Events of stored ingest requests: accepted, duplicate or expired"
    );
    describe_counter!(
        "imreport_cursor_expired_total",
        "History cursors refused because they had expired"
    );
    describe_gauge!(
        "imreport_writer_queue_depth",
        "Ingest requests waiting for the embedded writer"
    );
    describe_histogram!(
        "imreport_writer_commit_seconds",
        Unit::Seconds,
        "Time the embedded writer takes to write a commit group"
    );
    describe_histogram!(
        "imreport_writer_fsync_seconds",
        Unit::Seconds,
        "Time an fsync of the embedded store takes"
    );
    describe_gauge!(
        "imreport_store_disk_bytes",
        Unit::Bytes,
        "Bytes on disk of the store: the embedded data dir, or the PostgreSQL schema's tables and indexes"
    );
    describe_gauge!(
        "imreport_store_day_partitions",
        "Day partitions the store holds (PostgreSQL: of the messages table)"
    );
    describe_gauge!(
        "imreport_store_memtable_bytes",
        Unit::Bytes,
        "Embedded store: bytes written to memtables and not yet flushed to tables"
    );
    describe_gauge!(
        "imreport_store_pending_flushes",
        "Embedded store: sealed memtables waiting to be flushed"
    );
    describe_gauge!(
        "imreport_store_block_cache_bytes",
        Unit::Bytes,
        "Embedded store: bytes held by the block cache (at most its configured size)"
    );
    describe_gauge!(
        "imreport_store_block_cache_capacity_bytes",
        Unit::Bytes,
        "Embedded store: the block cache's configured size (block_cache_mb)"
    );
    describe_histogram!(
        "imreport_postgres_ingest_seconds",
        Unit::Seconds,
        "Time one ingest transaction takes on PostgreSQL, from its first statement to its commit"
    );
    describe_gauge!(
        "imreport_postgres_fold_pending_hours",
        "PostgreSQL: finished hours not counted yet (their first pages count their rows)"
    );
    describe_gauge!(
        "imreport_postgres_standby_lag_seconds",
        Unit::Seconds,
        "PostgreSQL: how far each read replica is behind the primary, measured each second"
    );
    describe_counter!(
        "imreport_postgres_standby_fallbacks_total",
        "PostgreSQL: next pages read on the primary because no standby had replayed what their walk saw in time"
    );
    describe_counter!(
        "imreport_postgres_vacuumed_partitions_total",
        "PostgreSQL: day partitions the upkeep vacuumed (see docs/API.md, Vacuum)"
    );
    describe_counter!(
        "imreport_retention_dropped_partitions_total",
        "Day partitions retention dropped"
    );
    describe_counter!(
        "imreport_connections_refused_total",
        "Connections refused at max_connections"
    );
    describe_gauge!(
        "imreport_intake_pending_messages",
        "Stream messages not yet delivered to the intake"
    );
    describe_gauge!(
        "imreport_intake_ack_pending_messages",
        "Stream messages delivered and not yet acknowledged"
    );
    describe_counter!(
        "imreport_intake_messages_total",
        "Stream messages settled: acked, dead_lettered or retried"
    );
}

/// What is read at each scrape (before the answer is rendered).
pub type Scrape = Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Serves `GET /metrics` on `listener` until `done`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    scrape: Scrape,
    done: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (handle, scrape) = (handle.clone(), scrape.clone());
            async move {
                scrape().await;
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(done)
        .await
        .context("the metrics listener failed")
}
