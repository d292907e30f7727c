//! imreport's integration tests: one binary, real HTTP against servers started on port 0, and
//! the real `imreport` binary. Run with `cargo nextest run --workspace` (or `cargo test`).

mod bad_inputs;
mod binary;
mod crash;
mod history;
mod hostile;
mod ingest;
mod model;
mod retention;
mod stats;
mod support;
