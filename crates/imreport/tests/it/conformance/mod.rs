//! The conformance suite: what every backend must answer alike, over real HTTP. Each test is
//! written once, as a function of the backend, and [`on_every_backend!`] makes it a test on
//! each: `conformance::<file>::embedded::<name>` and `conformance::<file>::postgres::<name>`
//! (the latter on a fresh schema of the test PostgreSQL).

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
    };
}
pub(crate) use on_every_backend;
