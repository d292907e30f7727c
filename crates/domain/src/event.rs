//! Ingest events: decoding a batch (NDJSON or a JSON array), applying defaults, and validating
//! every field before anything is stored, so that one bad event rejects the whole batch with an
//! error naming its line (or index) and field.

use crate::message::{FromType, Message, TargetType};
use crate::{Error, MAX_ID_BYTES, Millis};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

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

/// JSON's whitespace (RFC 8259): the only characters trimmed around events.
fn json_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

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

/// Ingest limits (settings).
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

#[derive(Deserialize, Default)]
struct RawEvent<'a> {
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    msgid: Option<&'a RawValue>,
    #[serde(borrow)]
    msg_ctime: Option<&'a RawValue>,
    #[serde(borrow)]
    create_time: Option<&'a RawValue>,
    #[serde(borrow)]
    target_type: Option<&'a RawValue>,
    #[serde(borrow)]
    target_id: Option<&'a RawValue>,
    #[serde(borrow)]
    target_name: Option<&'a RawValue>,
    #[serde(borrow)]
    target_appkey: Option<&'a RawValue>,
    #[serde(borrow)]
    from_type: Option<&'a RawValue>,
    #[serde(borrow)]
    from_id: Option<&'a RawValue>,
    #[serde(borrow)]
    from_name: Option<&'a RawValue>,
    #[serde(borrow)]
    from_appkey: Option<&'a RawValue>,
    #[serde(borrow)]
    from_platform: Option<&'a RawValue>,
    #[serde(borrow)]
    msg_type: Option<&'a RawValue>,
    #[serde(borrow)]
    msg_body: Option<&'a RawValue>,
    #[serde(borrow)]
    version: Option<&'a RawValue>,
    #[serde(borrow)]
    msg_level: Option<&'a RawValue>,
    #[serde(borrow)]
    set_from_name: Option<&'a RawValue>,
    #[serde(borrow)]
    username: Option<&'a RawValue>,
    #[serde(borrow)]
    gid: Option<&'a RawValue>,
    #[serde(borrow)]
    time: Option<&'a RawValue>,
}

/// Where an event sits in the request, for error messages.
#[derive(Clone, Copy)]
enum Place {
    Line(usize),
    Index(usize),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Line(n) => write!(f, "line {n}"),
            Place::Index(n) => write!(f, "index {n}"),
        }
    }
}

/// Present and not JSON `null`.
fn present(v: Option<&RawValue>) -> Option<&str> {
    v.map(RawValue::get).filter(|s| *s != "null")
}

struct Ctx<'a> {
    place: Place,
    app_key: &'a str,
    now: Millis,
    limits: &'a IngestLimits,
}

impl Ctx<'_> {
    fn err(&self, field: &str, why: impl std::fmt::Display) -> Error {
        Error::invalid(format!("{}: field \"{field}\" {why}", self.place))
    }

    fn string(&self, field: &str, raw: &str, max: usize) -> Result<String, Error> {
        self.str(field, raw, max).map(Cow::into_owned)
    }

    /// A JSON string's text, borrowed from the request unless it holds escapes: the parser has
    /// already checked `raw` is valid JSON, so a quoted run without a backslash is the text.
    fn str<'r>(&self, field: &str, raw: &'r str, max: usize) -> Result<Cow<'r, str>, Error> {
        let inner = raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .ok_or_else(|| self.err(field, "must be a string"))?;
        let s = if inner.contains('\\') {
            Cow::Owned(serde_json::from_str(raw).map_err(|_| self.err(field, "must be a string"))?)
        } else {
            Cow::Borrowed(inner)
        };
        if s.len() > max {
            return Err(self.err(
                field,
                format!(
                    "is {} bytes long; at most {max} bytes are accepted",
                    s.len()
                ),
            ));
        }
        Ok(s)
    }

    fn opt_string(
        &self,
        field: &str,
        v: Option<&RawValue>,
        max: usize,
    ) -> Result<Option<String>, Error> {
        present(v)
            .map(|raw| self.string(field, raw, max))
            .transpose()
    }

    /// Ids may be JSON strings or integers; they are kept as strings.
    fn id(&self, field: &str, v: Option<&RawValue>) -> Result<String, Error> {
        let raw = present(v).ok_or_else(|| self.err(field, "is required"))?;
        let s = if raw.starts_with('"') {
            self.string(field, raw, MAX_ID_BYTES)?
        } else if raw.parse::<i128>().is_ok() {
            raw.to_owned()
        } else {
            return Err(self.err(field, "must be a string or an integer"));
        };
        if s.is_empty() {
            return Err(self.err(field, "must not be empty"));
        }
        if s.len() > MAX_ID_BYTES {
            return Err(self.err(
                field,
                format!(
                    "is {} bytes long; ids are at most {MAX_ID_BYTES} bytes",
                    s.len()
                ),
            ));
        }
        Ok(s)
    }

    fn int(&self, field: &str, v: Option<&RawValue>) -> Result<Option<i64>, Error> {
        present(v)
            .map(|raw| {
                raw.parse::<i64>().map_err(|_| {
                    self.err(field, format!("must be an integer, got {}", truncate(raw)))
                })
            })
            .transpose()
    }

    fn flag(&self, field: &str, v: Option<&RawValue>, default: i64) -> Result<i64, Error> {
        match self.int(field, v)?.unwrap_or(default) {
            x @ (0 | 1) => Ok(x),
            x => Err(self.err(field, format!("must be 0 or 1, got {x}"))),
        }
    }

    fn time(&self, field: &str, v: Option<&RawValue>) -> Result<Millis, Error> {
        let t = self.int(field, v)?.unwrap_or(self.now);
        if t < 0 {
            return Err(self.err(
                field,
                "must be milliseconds since the Unix epoch, not negative",
            ));
        }
        if t > self.now + MAX_FUTURE_MS {
            return Err(self.err(
                field,
                format!("is {t}, more than 5 minutes in the future (server time {}): check the sender's clock", self.now),
            ));
        }
        Ok(t)
    }

    fn tag(
        &self,
        field: &str,
        v: Option<&RawValue>,
        default: Option<&str>,
    ) -> Result<String, Error> {
        match self.opt_string(field, v, MAX_TAG_BYTES)? {
            Some(s) if s.is_empty() => Err(self.err(field, "must not be empty")),
            Some(s) => Ok(s),
            None => default
                .map(str::to_owned)
                .ok_or_else(|| self.err(field, "is required")),
        }
    }

    fn message(&self, r: &RawEvent<'_>) -> Result<Message, Error> {
        let msgid = match present(r.msgid) {
            None => 0,
            Some(raw) => {
                let digits = raw
                    .strip_prefix('"')
                    .and_then(|s| s.strip_suffix('"'))
                    .unwrap_or(raw);
                // Canonical decimal only: no sign, no leading zero (u64's parser takes both).
                let canonical =
                    digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
                match digits.parse::<u64>() {
                    Ok(n) if canonical && (1..=MAX_MSGID).contains(&n) => n,
                    _ => {
                        return Err(self.err(
                            "msgid",
                            format!(
                                "must be a positive integer below 2^63, got {}",
                                truncate(raw)
                            ),
                        ));
                    }
                }
            }
        };
        let target_type_raw =
            present(r.target_type).ok_or_else(|| self.err("target_type", "is required"))?;
        let target_type = TargetType::parse(&self.str("target_type", target_type_raw, 16)?)
            .ok_or_else(|| {
                self.err(
                    "target_type",
                    "must be one of \"single\", \"group\", \"chatroom\"",
                )
            })?;
        let target_id = self.id("target_id", r.target_id)?;
        let from_id = self.id("from_id", r.from_id)?;
        let msg_type = self.tag("msg_type", r.msg_type, None)?;
        let body_raw = present(r.msg_body).ok_or_else(|| self.err("msg_body", "is required"))?;
        if !body_raw.starts_with('{') {
            return Err(self.err(
                "msg_body",
                "must be a JSON object, e.g. {\"text\": \"hi\", \"extras\": {}}",
            ));
        }
        if body_raw.len() > self.limits.max_msg_body_bytes {
            return Err(self.err(
                "msg_body",
                format!(
                    "is {} bytes; at most {} bytes are accepted",
                    body_raw.len(),
                    self.limits.max_msg_body_bytes
                ),
            ));
        }
        let msg_body = compact_body(body_raw).map_err(|why| self.err("msg_body", why))?;
        let from_type = match self.opt_string("from_type", r.from_type, 16)? {
            None => FromType::User,
            Some(s) => FromType::parse(&s)
                .ok_or_else(|| self.err("from_type", "must be \"user\" or \"admin\""))?,
        };
        let msg_ctime = self.time("msg_ctime", r.msg_ctime)?;
        let create_time = self
            .int("create_time", r.create_time)?
            .unwrap_or(msg_ctime.div_euclid(1000));
        let from_name = self
            .opt_string("from_name", r.from_name, MAX_NAME_BYTES)?
            .unwrap_or_else(|| from_id.clone());
        let appkey = |field, v| -> Result<String, Error> {
            Ok(self
                .opt_string(field, v, 64)?
                .unwrap_or_else(|| self.app_key.to_owned()))
        };
        let version = self.int("version", r.version)?.unwrap_or(1);
        if !(0..=i64::from(i32::MAX)).contains(&version) {
            return Err(self.err("version", "must be a small non-negative integer (1)"));
        }
        Ok(Message {
            msgid,
            msg_ctime,
            create_time,
            target_type,
            target_name: self
                .opt_string("target_name", r.target_name, MAX_NAME_BYTES)?
                .unwrap_or_default(),
            target_appkey: appkey("target_appkey", r.target_appkey)?,
            target_id,
            from_type,
            from_name,
            from_id,
            from_appkey: appkey("from_appkey", r.from_appkey)?,
            from_platform: self.tag("from_platform", r.from_platform, Some("api"))?,
            msg_type,
            msg_body,
            version,
            msg_level: self.flag("msg_level", r.msg_level, 0)?,
            set_from_name: self.flag("set_from_name", r.set_from_name, 0)?,
        })
    }

    fn event(&self, text: &str) -> Result<Event, Error> {
        // serde would also fill the struct from an array, field by position.
        if !text.starts_with('{') {
            return Err(Error::invalid(format!(
                "{}: an event must be a JSON object, got {}; send one JSON object per line, or a JSON array of objects",
                self.place,
                truncate(text)
            )));
        }
        let r: RawEvent<'_> = serde_json::from_str(text).map_err(|e| {
            Error::invalid(format!(
                "{}: not a valid JSON event object ({e}); send one JSON object per line, or a JSON array of objects",
                self.place
            ))
        })?;
        let kind_raw = present(r.event).ok_or_else(|| {
            self.err("event", "is required: one of message, user_registered, user_deleted, user_login, group_created, group_deleted")
        })?;
        let kind = self.str("event", kind_raw, 32)?;
        Ok(match &*kind {
            "message" => Event::Message(self.message(&r)?),
            "user_registered" | "user_deleted" | "user_login" => {
                let username = self.id("username", r.username)?;
                let time = self.time("time", r.time)?;
                match &*kind {
                    "user_registered" => Event::UserRegistered { username, time },
                    "user_deleted" => Event::UserDeleted { username, time },
                    _ => Event::UserLogin { username, time },
                }
            }
            "group_created" | "group_deleted" => {
                let gid = self.id("gid", r.gid)?;
                let time = self.time("time", r.time)?;
                if kind == "group_created" {
                    Event::GroupCreated { gid, time }
                } else {
                    Event::GroupDeleted { gid, time }
                }
            }
            other => {
                return Err(self.err(
                    "event",
                    format!(
                        "is {:?}; expected one of message, user_registered, user_deleted, user_login, group_created, group_deleted",
                        truncate(other)
                    ),
                ));
            }
        })
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 40 {
        s.to_owned()
    } else {
        let mut end = 40;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

/// The value of four hex digits (already checked by the JSON parser; anything else reads as 0).
fn hex4(b: &[u8]) -> u32 {
    std::str::from_utf8(b)
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

/// Checks a `msg_body` that the JSON parser has accepted and removes its insignificant
/// whitespace, refusing what strict readers of a page would fail on: an escaped surrogate
/// without its pair (`"\ud800"`, which is no Unicode text), and objects or arrays nested deeper
/// than [`MAX_BODY_DEPTH`].
///
/// One pass over the bytes, copying whole spans between removed ones: JSON's whitespace,
/// brackets and quotes are ASCII, and no byte of a multi-byte UTF-8 character is. Strings, most
/// of a body, are crossed with `memchr` to their next quote or backslash rather than byte by
/// byte (this was an eighth of decoding an ingest request).
pub fn compact_body(s: &str) -> Result<String, &'static str> {
    const LONE: &str = "holds an escaped UTF-16 surrogate without its pair (such as \\ud800), which is not Unicode text; send valid UTF-8 or paired escapes";
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let (mut i, mut from, mut depth) = (0, 0, 0usize);
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while let Some(j) = memchr::memchr2(b'"', b'\\', &b[i..]) {
                    let at = i + j;
                    if b[at] == b'"' {
                        i = at;
                        break;
                    }
                    if b.get(at + 1) != Some(&b'u') {
                        i = (at + 2).min(b.len());
                        continue;
                    }
                    let unit = hex4(b.get(at + 2..at + 6).unwrap_or_default());
                    if (0xDC00..0xE000).contains(&unit) {
                        return Err(LONE);
                    }
                    i = at + 6;
                    if (0xD800..0xDC00).contains(&unit) {
                        let low = b.get(at + 6..at + 8) == Some(b"\\u")
                            && (0xDC00..0xE000)
                                .contains(&hex4(b.get(at + 8..at + 12).unwrap_or_default()));
                        if !low {
                            return Err(LONE);
                        }
                        i = at + 12;
                    }
                    i = i.min(b.len());
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_BODY_DEPTH {
                    return Err("nests objects and arrays more than 64 levels deep; flatten it");
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b' ' | b'\n' | b'\r' | b'\t' => {
                out.extend_from_slice(&b[from..i]);
                from = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.extend_from_slice(&b[from..]);
    Ok(String::from_utf8(out).expect("only ASCII bytes between UTF-8 characters were removed"))
}

/// Decodes a JSON array of events element by element, so that neither a long array nor one of
/// non-events is ever held whole: the first bad element, or the one past `max_events`, stops it.
fn decode_array<'c>(
    text: &str,
    ctx: &dyn Fn(Place) -> Ctx<'c>,
    max_events: usize,
    too_many: impl Fn() -> Error,
    events: &mut Vec<Event>,
) -> Result<(), Error> {
    use serde::de::{Deserializer as _, Error as _, SeqAccess, Visitor};
    struct Elements<'e, 'c> {
        ctx: &'e dyn Fn(Place) -> Ctx<'c>,
        max_events: usize,
        too_many: &'e dyn Fn() -> Error,
        events: &'e mut Vec<Event>,
        /// Why decoding stopped, when an element (not the JSON) was at fault.
        failed: &'e mut Option<Error>,
    }
    impl<'de> Visitor<'de> for Elements<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON array of events")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(raw) = seq.next_element::<&'de RawValue>()? {
                let i = self.events.len();
                let event = if i == self.max_events {
                    Err((self.too_many)())
                } else {
                    (self.ctx)(Place::Index(i)).event(raw.get())
                };
                match event {
                    Ok(e) => self.events.push(e),
                    Err(e) => {
                        *self.failed = Some(e);
                        return Err(A::Error::custom("stopped at a bad event"));
                    }
                }
            }
            Ok(())
        }
    }
    let mut failed = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = de
        .deserialize_seq(Elements {
            ctx,
            max_events,
            too_many: &too_many,
            events,
            failed: &mut failed,
        })
        .and_then(|()| de.end());
    if let Some(e) = failed {
        return Err(e);
    }
    parsed.map_err(|e| {
        Error::invalid(format!(
            "request body is not a valid JSON array of events: {e}"
        ))
    })
}

/// Decodes and validates a whole ingest request body. A body whose first non-blank character is
/// `[` is a JSON array of events; anything else is NDJSON (blank lines are skipped). `now` is the
/// server's clock, used for defaults and the 5-minute future limit.
pub fn decode_batch(
    body: &[u8],
    app_key: &str,
    now: Millis,
    limits: &IngestLimits,
) -> Result<Vec<Event>, Error> {
    if body.len() > limits.max_body_bytes {
        return Err(Error::TooLarge(format!(
            "request body is {} bytes; at most {} bytes are accepted per request: split the batch",
            body.len(),
            limits.max_body_bytes
        )));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        Error::invalid(format!(
            "request body is not valid UTF-8 (at byte {}); send UTF-8 JSON",
            e.valid_up_to()
        ))
    })?;
    let too_many = || {
        Error::TooLarge(format!(
            "the batch holds more than {} events; split it into requests of at most {} events",
            limits.max_events, limits.max_events
        ))
    };
    let mut events = Vec::new();
    let ctx = |place| Ctx {
        place,
        app_key,
        now,
        limits,
    };
    if text.trim_start_matches(json_ws).starts_with('[') {
        decode_array(text, &ctx, limits.max_events, too_many, &mut events)?;
    } else {
        // Sized up front: growing a Vec of a few thousand events by doubling copied megabytes
        // per request into freshly faulted pages (~15% of the decoding threads' time).
        let lines = body.iter().filter(|b| **b == b'\n').count() + 1;
        events.reserve_exact(lines.min(limits.max_events));
        for (i, line) in text.split('\n').enumerate() {
            let line = line.trim_matches(json_ws);
            if line.is_empty() {
                continue;
            }
            if events.len() == limits.max_events {
                return Err(too_many());
            }
            events.push(ctx(Place::Line(i + 1)).event(line)?);
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_700_000_000_000;

    fn decode(body: &str) -> Result<Vec<Event>, Error> {
        decode_batch(body.as_bytes(), "APPKEY", NOW, &IngestLimits::default())
    }

    #[test]
    fn escaped_strings_are_decoded_and_plain_ones_kept_as_sent() {
        let ev = decode(
            r#"{"event":"mess\u0061ge","target_type":"\u0067roup","target_id":"g\/1","from_id":"u1","from_name":"Zo\u00eb \"Z\"","msg_type":"text","from_platform":"web","msg_body":{}}"#,
        )
        .unwrap();
        let Event::Message(m) = &ev[0] else { panic!() };
        assert_eq!(m.target_type, TargetType::Group);
        assert_eq!(m.target_id, "g/1");
        assert_eq!(m.from_name, "Zo\u{eb} \"Z\"");
        assert_eq!(
            (m.from_id.as_str(), m.from_platform.as_str()),
            ("u1", "web")
        );
        // The limit applies to the decoded text: 32 escaped characters are 32 bytes.
        let tag = "\\u0061".repeat(32);
        let line = format!(
            r#"{{"event":"message","target_type":"single","target_id":"u2","from_id":"u1","msg_type":"{tag}","msg_body":{{}}}}"#
        );
        let Event::Message(m) = &decode(&line).unwrap()[0] else {
            panic!()
        };
        assert_eq!(m.msg_type, "a".repeat(32));
        let line = line.replace("\\u0061\"", "\\u0061a\"");
        assert!(decode(&line).unwrap_err().to_string().contains("msg_type"));
    }

    #[test]
    fn message_defaults_are_applied() {
        let ev = decode(r#"{"event":"message","target_type":"single","target_id":10010648,"from_id":"u1","msg_type":"text","msg_body":{ "text" : "hi there" , "extras":{}}}"#).unwrap();
        let Event::Message(m) = &ev[0] else { panic!() };
        assert_eq!(m.msgid, 0);
        assert_eq!(m.msg_ctime, NOW);
        assert_eq!(m.create_time, NOW / 1000);
        assert_eq!(m.target_id, "10010648");
        assert_eq!(m.from_type, FromType::User);
        assert_eq!(m.from_name, "u1");
        assert_eq!(m.from_platform, "api");
        assert_eq!(m.target_name, "");
        assert_eq!(m.from_appkey, "APPKEY");
        assert_eq!(m.target_appkey, "APPKEY");
        assert_eq!((m.version, m.msg_level, m.set_from_name), (1, 0, 0));
        assert_eq!(m.msg_body, r#"{"text":"hi there","extras":{}}"#);
    }

    #[test]
    fn array_and_ndjson_and_lifecycle_events() {
        let ev = decode(r#"[{"event":"user_registered","username":"alice","time":1},{"event":"group_created","gid":5}]"#).unwrap();
        assert_eq!(
            ev[0],
            Event::UserRegistered {
                username: "alice".into(),
                time: 1
            }
        );
        assert_eq!(
            ev[1],
            Event::GroupCreated {
                gid: "5".into(),
                time: NOW
            }
        );
        let ev = decode("{\"event\":\"user_login\",\"username\":\"a\"}\n\n{\"event\":\"user_deleted\",\"username\":\"a\",\"time\":5}\n").unwrap();
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn errors_name_the_place_and_field() {
        let cases = [
            ("{\"event\":\"message\"}", "line 1: field \"target_type\""),
            ("\n{\"event\":\"user_login\"}", "line 2: field \"username\""),
            (
                "[{\"event\":\"group_created\",\"gid\":\"g\"},{\"event\":\"bogus\"}]",
                "index 1: field \"event\"",
            ),
            (
                "{\"event\":\"message\",\"target_type\":\"single\",\"target_id\":\"a\",\"from_id\":\"b\",\"msg_type\":\"text\",\"msg_body\":\"hi\"}",
                "field \"msg_body\"",
            ),
            (
                "{\"event\":\"user_login\",\"username\":\"a\",\"time\":99999999999999}",
                "future",
            ),
            (
                "{\"event\":\"user_login\",\"username\":\"a\",\"time\":1.5}",
                "field \"time\"",
            ),
            (
                "{\"event\":\"user_login\",\"username\":{}}",
                "field \"username\"",
            ),
            ("{not json", "line 1: not a valid JSON"),
            ("{\"event\":\"message\",\"msgid\":-3}", "field \"msgid\""),
        ];
        for (body, want) in cases {
            let err = decode(body).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
        let long = format!(
            "{{\"event\":\"user_login\",\"username\":\"{}\"}}",
            "x".repeat(129)
        );
        assert!(decode(&long).unwrap_err().to_string().contains("128"));
    }

    #[test]
    fn limits_give_too_large() {
        let limits = IngestLimits {
            max_events: 2,
            ..IngestLimits::default()
        };
        let body = "{\"event\":\"user_login\",\"username\":\"a\"}\n".repeat(3);
        assert!(matches!(
            decode_batch(body.as_bytes(), "K", NOW, &limits),
            Err(Error::TooLarge(_))
        ));
        let limits = IngestLimits {
            max_body_bytes: 10,
            ..IngestLimits::default()
        };
        assert!(matches!(
            decode_batch(body.as_bytes(), "K", NOW, &limits),
            Err(Error::TooLarge(_))
        ));
    }

    fn message_with(extra: &str) -> String {
        format!(
            r#"{{"event":"message","target_type":"single","target_id":"u2","from_id":"u1","msg_type":"text","msg_body":{{}}{extra}}}"#
        )
    }

    #[test]
    fn events_are_objects_and_msgids_canonical() {
        let by_position = format!("[[{}]]", vec!["\"message\""; 21].join(","));
        let err = decode(&by_position).unwrap_err().to_string();
        assert!(
            err.contains("index 0: an event must be a JSON object"),
            "{err}"
        );
        for bad in [
            r#""+5""#, r#""007""#, r#""0""#, r#"" 5""#, r#""5 ""#, "1.0", "1e3",
        ] {
            let err = decode(&message_with(&format!(r#","msgid":{bad}"#)))
                .unwrap_err()
                .to_string();
            assert!(err.contains("field \"msgid\""), "{bad}: {err}");
        }
        for (good, n) in [
            (r#""5""#, 5),
            ("5", 5),
            (r#""9223372036854775807""#, MAX_MSGID),
        ] {
            let ev = decode(&message_with(&format!(r#","msgid":{good}"#))).unwrap();
            let Event::Message(m) = &ev[0] else { panic!() };
            assert_eq!(m.msgid, n);
        }
    }

    #[test]
    fn only_json_whitespace_is_trimmed() {
        let line = message_with("");
        assert_eq!(decode(&format!(" \t{line}\r\n\n")).unwrap().len(), 1);
        for ws in ["\u{a0}", "\u{2003}", "\u{feff}"] {
            let err = decode(&format!("{ws}{line}")).unwrap_err().to_string();
            assert!(err.starts_with("line 1"), "{ws:?}: {err}");
            assert!(
                decode(&format!("[{line}]{ws}")).is_err(),
                "{ws:?} after an array"
            );
        }
    }

    #[test]
    fn bodies_must_be_unicode_and_shallow() {
        let body = |b: &str| {
            decode(&message_with("").replace("\"msg_body\":{}", &format!("\"msg_body\":{b}")))
        };
        for bad in [
            r#"{"t":"\ud800"}"#,
            r#"{"t":"\ude00\ud83d"}"#,
            r#"{"t":"a\ud83dx"}"#,
            r#"{"t":"\ud83d\u0041"}"#,
            r#"{"\udfff":1}"#,
        ] {
            let err = body(bad).unwrap_err().to_string();
            assert!(
                err.contains("field \"msg_body\"") && err.contains("surrogate"),
                "{bad}: {err}"
            );
        }
        let Event::Message(m) = &body(r#"{ "t" : "\ud83d\ude00 \\ud800 \u00e9" }"#).unwrap()[0]
        else {
            panic!()
        };
        assert_eq!(
            m.msg_body, r#"{"t":"\ud83d\ude00 \\ud800 \u00e9"}"#,
            "pairs and escaped backslashes pass"
        );
        let nested = |depth: usize| {
            let inner = "[".repeat(depth - 1) + &"]".repeat(depth - 1);
            format!(r#"{{"a":{inner}}}"#)
        };
        assert!(body(&nested(MAX_BODY_DEPTH)).is_ok());
        let err = body(&nested(MAX_BODY_DEPTH + 1)).unwrap_err().to_string();
        assert!(err.contains("64 levels"), "{err}");
        assert!(
            body(&format!("{{\"a\":\"{}\"}}", "[".repeat(100))).is_ok(),
            "brackets in strings"
        );
    }

    #[test]
    fn a_long_array_stops_at_its_first_bad_element_or_its_limit() {
        let ones = format!("[{}1]", "1,".repeat(1_000_000));
        let err = decode(&ones).unwrap_err().to_string();
        assert!(err.starts_with("index 0"), "{err}");
        let limits = IngestLimits {
            max_events: 3,
            ..IngestLimits::default()
        };
        let line = message_with("");
        let four = format!("[{line},{line},{line},{line}]");
        assert!(matches!(
            decode_batch(four.as_bytes(), "K", NOW, &limits),
            Err(Error::TooLarge(_))
        ));
        let three = format!("[{line},{line},{line}]");
        assert_eq!(
            decode_batch(three.as_bytes(), "K", NOW, &limits)
                .unwrap()
                .len(),
            3
        );
        assert!(
            decode(&format!("[{line}] x")).is_err(),
            "trailing text after the array"
        );
        assert!(decode(&format!("[{line}")).is_err(), "an unclosed array");
    }

    #[test]
    fn assigned_msgids_never_pass_the_largest() {
        let msg = |msgid| {
            let Event::Message(mut m) = decode(&message_with("")).unwrap().remove(0) else {
                panic!()
            };
            m.msgid = msgid;
            m
        };
        let (own, none) = (msg(MAX_MSGID), msg(0));
        assert!(check_msgids_assignable(1, [&none, &none]).is_ok());
        assert!(check_msgids_assignable(MAX_MSGID, [&none]).is_ok());
        assert!(check_msgids_assignable(MAX_MSGID, [&none, &none]).is_err());
        assert!(
            check_msgids_assignable(5, [&own]).is_ok(),
            "a client's own msgid is fine"
        );
        let err = check_msgids_assignable(5, [&own, &none]).unwrap_err();
        assert!(err.to_string().contains("2^63-1"), "{err}");
        assert!(check_msgids_assignable(MAX_MSGID + 1, [&own]).is_ok());
    }

    proptest::proptest! {
        /// Any JSON pretty-printed (strings with spaces, quotes, escapes and multi-byte
        /// characters) minifies to its compact form.
        #[test]
        fn minify_turns_pretty_json_compact(
            pairs in proptest::collection::vec((".{0,8}", ".{0,12}", proptest::num::i64::ANY), 0..6),
        ) {
            let value: serde_json::Value = pairs
                .iter()
                .map(|(k, v, n)| (k.clone(), serde_json::json!([v, n, {"s": v}])))
                .collect::<serde_json::Map<_, _>>()
                .into();
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            let compact = serde_json::to_string(&value).unwrap();
            proptest::prop_assert_eq!(compact_body(&pretty).unwrap(), compact.clone());
            proptest::prop_assert_eq!(compact_body(&compact).unwrap(), compact);
        }
    }

    #[test]
    fn minify_keeps_strings() {
        assert_eq!(
            compact_body("{ \"a b\" : [1, 2],\n\"c\":\"x \\\" y\" }").unwrap(),
            "{\"a b\":[1,2],\"c\":\"x \\\" y\"}"
        );
    }
}
