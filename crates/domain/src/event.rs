//! Ingest events: what one event is once validated, the limits on a request, and the rule that
//! server-assigned msgids never pass the largest. Decoding a request body into events
//! ([`decode_batch`]) and checking message bodies ([`compact_body`]) live in the submodules.

mod body;
mod decode;

pub use body::compact_body;
pub use decode::{Form, decode_batch, decode_lines_from, decode_routed};

use crate::message::Message;
use crate::{Error, Millis};

/// Events more than this far in the future are a clock error.
pub const MAX_FUTURE_MS: Millis = 5 * 60 * 1000;
/// Longest name (`from_name`, `target_name`) accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 512;
/// Longest `msg_type` / `from_platform`, in bytes.
pub const MAX_TAG_BYTES: usize = 32;
/// Deepest nesting of objects and arrays in a `msg_body` (the body itself is depth 1). A page
/// adds three levels around it, which keeps it well inside what common JSON parsers accept
/// (serde_json 128, jq 256 and more).
pub const MAX_BODY_DEPTH: usize = 64;
/// The largest msgid: Java's `long`, which the official SDKs read msgids into.
pub const MAX_MSGID: u64 = i64::MAX as u64;

/// Checks that the server can give every message of a batch that has no `msgid` one, before
/// any of it is stored: assigned msgids count up from `next` (the app's next free one, above
/// every msgid it holds) and a client's msgid at or above it moves it on, exactly as both stores
/// assign them. `messages` are those that will be stored (not expired).
pub fn check_msgids_assignable<'a>(
    next: u64,
    messages: impl IntoIterator<Item = &'a Message>,
) -> Result<(), Error> {
    let mut next = next;
    for m in messages {
        if m.msgid != 0 {
            next = next.max(m.msgid + 1);
        } else if next > MAX_MSGID {
            return Err(Error::invalid(format!(
                "a message without msgid cannot be given one: this app already holds msgid {MAX_MSGID} (2^63-1), the largest there is; send each message with its own msgid"
            )));
        } else {
            next += 1;
        }
    }
    Ok(())
}

/// Ingest limits (settings). The default is the contract's: 10,000 events and 16 MiB a
/// request, 16 KiB a `msg_body`; the settings take their defaults from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IngestLimits {
    /// Most events in one request.
    pub max_events: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest `msg_body`, in bytes.
    pub max_msg_body_bytes: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            max_events: 10_000,
            max_body_bytes: 16 * 1024 * 1024,
            max_msg_body_bytes: 16 * 1024,
        }
    }
}

/// One validated event, defaults applied.
// Nearly every event is a message, so boxing the large variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message; `msgid` is 0 when the server is to assign one.
    Message(Message),
    UserRegistered {
        username: String,
        time: Millis,
    },
    UserDeleted {
        username: String,
        time: Millis,
    },
    UserLogin {
        username: String,
        time: Millis,
    },
    GroupCreated {
        gid: String,
        time: Millis,
    },
    GroupDeleted {
        gid: String,
        time: Millis,
    },
}

/// A user or group lifecycle event, in the form the stores record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle<'a> {
    /// A user (`true`) or a group.
    pub user: bool,
    pub id: &'a str,
    /// [`crate::lifecycle::CREATED`] or [`crate::lifecycle::REMOVED`].
    pub what: u8,
    pub time: Millis,
}

impl Event {
    /// The registration, deletion, creation or removal this event records, if it is one.
    pub fn lifecycle(&self) -> Option<Lifecycle<'_>> {
        use crate::lifecycle::{CREATED, REMOVED};
        let (user, id, what, time) = match self {
            Event::UserRegistered { username, time } => (true, username, CREATED, *time),
            Event::UserDeleted { username, time } => (true, username, REMOVED, *time),
            Event::GroupCreated { gid, time } => (false, gid, CREATED, *time),
            Event::GroupDeleted { gid, time } => (false, gid, REMOVED, *time),
            Event::Message(_) | Event::UserLogin { .. } => return None,
        };
        Some(Lifecycle {
            user,
            id,
            what,
            time,
        })
    }

    /// The event as one ingest line (NDJSON, no newline), every field explicit: decoding it
    /// gives the event back. Messages are written by the one wire writer, after `event`.
    pub fn write_ingest_json(&self, app_key: &str, out: &mut Vec<u8>) {
        match self {
            Event::Message(m) => {
                let mut rec = Vec::with_capacity(256);
                crate::message::encode_record(m, app_key, 0, &mut rec);
                let mut wire = Vec::with_capacity(rec.len() + 256);
                crate::message::view_record(&rec)
                    .expect("a record just encoded")
                    .write_json(m.msgid, m.msg_ctime, app_key, &mut wire);
                out.extend_from_slice(b"{\"event\":\"message\"");
                // The wire object starts `{"msgid":N,`; a message without one keeps none.
                let from = match m.msgid {
                    0 => wire
                        .iter()
                        .position(|b| *b == b',')
                        .expect("more fields follow"),
                    _ => 0,
                };
                out.push(b',');
                out.extend_from_slice(&wire[from + 1..]);
            }
            Event::UserLogin { username, time } => {
                write_plain(out, "user_login", "username", username, *time)
            }
            _ => {
                let l = self
                    .lifecycle()
                    .expect("every other event is a lifecycle event");
                let kind = match (l.user, l.what == crate::lifecycle::CREATED) {
                    (true, true) => "user_registered",
                    (true, false) => "user_deleted",
                    (false, true) => "group_created",
                    (false, false) => "group_deleted",
                };
                write_plain(
                    out,
                    kind,
                    if l.user { "username" } else { "gid" },
                    l.id,
                    l.time,
                );
            }
        }
    }

    /// The events a stored lifecycle history (see [`crate::lifecycle`]) was made of: ingesting
    /// them gives the history back.
    pub fn from_history(
        user: bool,
        id: &str,
        history: &[(Millis, u8)],
    ) -> impl Iterator<Item = Event> {
        use crate::lifecycle::CREATED;
        history.iter().map(move |&(time, what)| {
            let id = id.to_owned();
            match (user, what == CREATED) {
                (true, true) => Event::UserRegistered { username: id, time },
                (true, false) => Event::UserDeleted { username: id, time },
                (false, true) => Event::GroupCreated { gid: id, time },
                (false, false) => Event::GroupDeleted { gid: id, time },
            }
        })
    }

    /// The instant the event happened (`msg_ctime` for messages).
    pub fn time(&self) -> Millis {
        match self {
            Event::Message(m) => m.msg_ctime,
            Event::UserRegistered { time, .. }
            | Event::UserDeleted { time, .. }
            | Event::UserLogin { time, .. }
            | Event::GroupCreated { time, .. }
            | Event::GroupDeleted { time, .. } => *time,
        }
    }
}

fn write_plain(out: &mut Vec<u8>, kind: &str, field: &str, id: &str, time: Millis) {
    let v = serde_json::json!({"event": kind, field: id, "time": time});
    serde_json::to_writer(&mut *out, &v).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests;
