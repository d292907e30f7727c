//! imreport's integration tests: one binary, real HTTP against servers started on port 0, and
//! the real `imreport` binary. The conformance suite (`conformance/`) runs unchanged against
//! each backend (`embedded`, `postgres`); the rest covers what is specific to one.
//! Run with `cargo nextest run --workspace` (or `cargo test`).

// On purpose: `embedded` and `postgres` each load the same conformance files, with their own
// `BACKEND`.
#![allow(clippy::duplicate_mod)]

mod binary;
mod connections;
mod crash;
mod embedded;
mod hostile;
mod memory;
mod postgres;
mod replicas;
mod support;
