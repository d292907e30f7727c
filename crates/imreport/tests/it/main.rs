//! imreport's integration tests: one binary, real HTTP against servers started on port 0, and
//! the real `imreport` binary. The conformance suite (`conformance/`) runs unchanged against
//! each backend (`embedded`, `postgres`); the rest covers what is specific to one.
//! Run with `cargo nextest run --workspace` (or `cargo test`).

mod backup;
mod binary;
mod citus;
mod conformance;
mod connections;
mod console;
mod crash;
mod hostile;
mod logs;
mod memory;
mod metrics;
mod mirror;
mod nats;
mod openapi;
mod replicas;
mod sdk;
mod standby;
mod support;
