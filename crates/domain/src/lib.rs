//! imreport's domain: the types, validation rules, time handling, cursor codec and message
//! encoding shared by every store backend and the HTTP server. No I/O lives here.

pub mod app;
pub mod cursor;
pub mod error;
pub mod event;
pub mod lifecycle;
pub mod message;
pub mod query;
pub mod rollup;
pub mod scope;
pub mod session;
pub mod stats;
pub mod time;

pub use error::Error;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Maximum length in bytes of any id (user name, group id, chatroom id, target id).
pub const MAX_ID_BYTES: usize = 128;

pub mod clock;
pub use clock::Clock;
