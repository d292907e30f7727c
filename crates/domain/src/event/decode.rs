//! Decoding a request body (NDJSON or a JSON array) into validated events: defaults applied,
//! every field checked before anything is stored, so that one bad event rejects the whole batch
//! with an error naming its line (or index) and field.

use super::*;
use crate::MAX_ID_BYTES;
use crate::message::{FromType, TargetType};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// JSON's whitespace (RFC 8259): the only characters trimmed around events.
fn json_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
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
    form: Form,
}

/// What a body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Ingest events, each with its `event`.
    Events,
    /// Ingest events, where an object without `event` is a message: Report V2 message objects
    /// (as `imreport export` writes them, and JMessage's message routing posts them) mixed
    /// with events.
    EventsOrMessages,
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
        let kind = match (present(r.event), self.form) {
            (Some(raw), _) => self.str("event", raw, 32)?,
            (None, Form::EventsOrMessages) => Cow::Borrowed("message"),
            (None, Form::Events) => return Err(self.err("event", "is required: one of message, user_registered, user_deleted, user_login, group_created, group_deleted")),
        };
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

/// Decodes the body JMessage's real-time message routing posts, `{"total": N, "messages":
/// [...]}` with Report V2 message objects, as a batch of messages (`total` is not checked: the
/// messages are what counts). Errors name the message's index in `messages`.
pub fn decode_routed(
    body: &[u8],
    app_key: &str,
    now: Millis,
    limits: &IngestLimits,
) -> Result<Vec<Event>, Error> {
    #[derive(Deserialize)]
    struct Routed<'a> {
        #[serde(borrow)]
        messages: Option<&'a RawValue>,
    }
    let text = utf8(body, limits)?;
    let routed: Routed<'_> = serde_json::from_str(text).map_err(|e| {
        Error::invalid(format!(
            "request body is not a JSON object with \"messages\", as JMessage's message routing posts: {e}"
        ))
    })?;
    let messages = routed
        .messages
        .ok_or_else(|| {
            Error::invalid("field \"messages\" is required: an array of message objects")
        })?
        .get();
    let mut events = Vec::new();
    decode_array(
        messages,
        &|place| Ctx {
            place,
            app_key,
            now,
            limits,
            form: Form::EventsOrMessages,
        },
        limits.max_events,
        || too_many(limits),
        &mut events,
    )?;
    Ok(events)
}

fn too_many(limits: &IngestLimits) -> Error {
    Error::TooLarge(format!(
        "the batch holds more than {} events; split it into requests of at most {} events",
        limits.max_events, limits.max_events
    ))
}

/// The body as text, within its size limit.
fn utf8<'b>(body: &'b [u8], limits: &IngestLimits) -> Result<&'b str, Error> {
    if body.len() > limits.max_body_bytes {
        return Err(Error::TooLarge(format!(
            "request body is {} bytes; at most {} bytes are accepted per request: split the batch",
            body.len(),
            limits.max_body_bytes
        )));
    }
    std::str::from_utf8(body).map_err(|e| {
        Error::invalid(format!(
            "request body is not valid UTF-8 (at byte {}); send UTF-8 JSON",
            e.valid_up_to()
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
    decode_lines_from(body, app_key, now, limits, Form::Events, 1)
}

/// [`decode_batch`] for a body of the given form, numbering NDJSON lines from `first_line` (for a body cut from a larger
/// file, so that errors name the file's line).
pub fn decode_lines_from(
    body: &[u8],
    app_key: &str,
    now: Millis,
    limits: &IngestLimits,
    form: Form,
    first_line: usize,
) -> Result<Vec<Event>, Error> {
    let text = utf8(body, limits)?;
    let mut events = Vec::new();
    let ctx = |place| Ctx {
        place,
        app_key,
        now,
        limits,
        form,
    };
    if text.trim_start_matches(json_ws).starts_with('[') {
        decode_array(
            text,
            &ctx,
            limits.max_events,
            || too_many(limits),
            &mut events,
        )?;
    } else {
        // Sized up front: growing a Vec of a few thousand events by doubling copied megabytes
        // per request into freshly faulted pages (~15% of the decoding threads' time).
        // Newlines found with memchr's SIMD search: a byte-by-byte count was a tenth of the
        // decoding time, and `str::split`'s search another twentieth.
        let lines = memchr::memchr_iter(b'\n', body).count() + 1;
        events.reserve_exact(lines.min(limits.max_events));
        let mut start = 0;
        let ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
        for (i, end) in ends.enumerate() {
            // Cut at ASCII newlines: always char boundaries of the UTF-8 text.
            let line = &text[start..end];
            start = end + 1;
            let line = line.trim_matches(json_ws);
            if line.is_empty() {
                continue;
            }
            if events.len() == limits.max_events {
                return Err(too_many(limits));
            }
            events.push(ctx(Place::Line(first_line + i)).event(line)?);
        }
    }
    Ok(events)
}
