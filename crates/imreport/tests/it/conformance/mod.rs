//! The conformance suite: what every backend must answer alike, over real HTTP. Each test is
//! written once, as a function of the backend, and [`on_every_backend!`] makes it a test on
//! each: `conformance::<file>::embedded::<name>`, `conformance::<file>::postgres::<name>` (on a
//! fresh schema of the test PostgreSQL) and `conformance::<file>::citus::<name>` (a fresh schema
//! on the test Citus cluster, whose tables imreport distributes itself).

mod bad_inputs;
mod history;
mod ingest;
mod model;
mod retention;
mod stats;

/// Turns `async fn name(backend: Backend)` and `fn name(backend: Backend)` test bodies into
/// one test per backend.
macro_rules! on_every_backend {
    (async: $($a:ident),* ; sync: $($s:ident),* ;) => {
        mod embedded {
            $( #[tokio::test] async fn $a() { super::$a(crate::support::Backend::Embedded).await } )*
            $( #[test] fn $s() { super::$s(crate::support::Backend::Embedded) } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $a() { super::$a(crate::support::Backend::Postgres).await } )*
            $( #[test] fn $s() { super::$s(crate::support::Backend::Postgres) } )*
        }
        mod citus {
            $( #[tokio::test] async fn $a() { super::$a(crate::support::Backend::Citus).await } )*
            $( #[test] fn $s() { super::$s(crate::support::Backend::Citus) } )*
        }
    };
}
pub(crate) use on_every_backend;
