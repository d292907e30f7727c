//! The conformance suite on PostgreSQL (a fresh schema per server).

pub const BACKEND: crate::support::Backend = crate::support::Backend::Postgres;

#[path = "conformance/bad_inputs.rs"]
mod bad_inputs;
#[path = "conformance/history.rs"]
mod history;
#[path = "conformance/ingest.rs"]
mod ingest;
#[path = "conformance/model.rs"]
mod model;
#[path = "conformance/retention.rs"]
mod retention;
#[path = "conformance/stats.rs"]
mod stats;
