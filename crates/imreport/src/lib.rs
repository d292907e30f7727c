//! The imreport application above the server library: its settings, declared once; the wiring
//! that builds a running server from them ([`launch`]), used by `imreport serve`, the
//! `imreport app` commands and the tests alike; and the operator tools.

pub mod apps;
pub mod backup;
pub mod client;
pub mod export;
pub mod import;
pub mod launch;
pub mod loadgen;
pub mod metrics;
pub mod mirror;
pub mod serve;
pub mod settings;
