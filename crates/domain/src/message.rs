//! Messages: the owned form, the compact stored record, and the writer that turns a stored record
//! straight into the wire JSON of the Report V2 API without building an intermediate value.

use crate::Millis;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetType {
    Single,
    Group,
    Chatroom,
}

impl TargetType {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetType::Single => "single",
            TargetType::Group => "group",
            TargetType::Chatroom => "chatroom",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "single" => TargetType::Single,
            "group" => TargetType::Group,
            "chatroom" => TargetType::Chatroom,
            _ => return None,
        })
    }
    fn code(self) -> u8 {
        self as u8
    }
    fn from_code(c: u8) -> Option<Self> {
        [TargetType::Single, TargetType::Group, TargetType::Chatroom]
            .get(usize::from(c))
            .copied()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FromType {
    User,
    Admin,
}

impl FromType {
    pub fn as_str(self) -> &'static str {
        match self {
            FromType::User => "user",
            FromType::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "user" => FromType::User,
            "admin" => FromType::Admin,
            _ => return None,
        })
    }
}

/// A message with every field resolved (defaults applied), as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub msgid: u64,
    pub msg_ctime: Millis,
    pub create_time: i64,
    pub target_type: TargetType,
    pub target_id: String,
    pub target_name: String,
    pub target_appkey: String,
    pub from_type: FromType,
    pub from_id: String,
    pub from_name: String,
    pub from_appkey: String,
    pub from_platform: String,
    pub msg_type: String,
    /// The body as sent, a JSON object, whitespace removed.
    pub msg_body: String,
    pub version: i64,
    pub msg_level: i64,
    pub set_from_name: i64,
}

impl Message {
    /// The non-app scopes the message belongs to: its sender, and its target (once, when a
    /// user writes to themself).
    /// [`Message::scopes`] as `(Scope::tag, id)` pairs, borrowing the ids: for the store's
    /// writer, which needs only their key bytes.
    pub fn scope_ids(&self) -> impl Iterator<Item = (u8, &str)> {
        let target = match self.target_type {
            TargetType::Single if self.target_id != self.from_id => Some(1),
            TargetType::Single => None,
            TargetType::Group => Some(2),
            TargetType::Chatroom => Some(3),
        };
        std::iter::once((1, self.from_id.as_str()))
            .chain(target.map(|tag| (tag, self.target_id.as_str())))
    }

    pub fn scopes(&self) -> Vec<crate::scope::Scope> {
        use crate::scope::Scope;
        let mut v = vec![Scope::User(self.from_id.clone())];
        match self.target_type {
            TargetType::Single if self.target_id != self.from_id => {
                v.push(Scope::User(self.target_id.clone()))
            }
            TargetType::Single => {}
            TargetType::Group => v.push(Scope::Group(self.target_id.clone())),
            TargetType::Chatroom => v.push(Scope::Chatroom(self.target_id.clone())),
        }
        v
    }
}

const F_FROM_NAME_IS_ID: u8 = 1;
const F_FROM_APPKEY_IS_APP: u8 = 2;
const F_TARGET_APPKEY_IS_APP: u8 = 4;
const F_CREATE_TIME_IS_CTIME: u8 = 8;
const F_DEFAULT_FLAGS: u8 = 16;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The stored record is corrupt (a bug or disk damage; never client input).
#[derive(Debug, thiserror::Error)]
#[error("corrupt message record")]
pub struct CorruptRecord;

struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn byte(&mut self) -> Result<u8, CorruptRecord> {
        let (&b, rest) = self.0.split_first().ok_or(CorruptRecord)?;
        self.0 = rest;
        Ok(b)
    }
    fn varint(&mut self) -> Result<u64, CorruptRecord> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(CorruptRecord)
    }
    fn str(&mut self) -> Result<&'a str, CorruptRecord> {
        let n = usize::try_from(self.varint()?).map_err(|_| CorruptRecord)?;
        if n > self.0.len() {
            return Err(CorruptRecord);
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        std::str::from_utf8(s).map_err(|_| CorruptRecord)
    }
}

/// A stored record read in place: borrowed strings, nothing decoded that the writer does not need.
#[derive(Debug)]
pub struct RecordView<'a> {
    pub seq: u64,
    pub target_type: TargetType,
    pub from_type: FromType,
    pub target_id: &'a str,
    pub from_id: &'a str,
    pub target_name: &'a str,
    pub from_platform: &'a str,
    pub msg_type: &'a str,
    /// `None` where the field equals its default (from_id, the app key, msg_ctime / 1000).
    pub from_name: Option<&'a str>,
    pub from_appkey: Option<&'a str>,
    pub target_appkey: Option<&'a str>,
    pub create_time: Option<i64>,
    pub version: i64,
    pub msg_level: i64,
    pub set_from_name: i64,
    /// The body's JSON text as stored. Not checked for UTF-8 again on every read (that was a
    /// tenth of serving a page): the writer stored it from a validated `String`, and fjall
    /// checks every block's checksum as it reads it.
    pub msg_body: &'a [u8],
}

/// Encodes a message as its compact stored record. `msgid` and `msg_ctime` live in the store key
/// and are not repeated; fields equal to their defaults take a flag bit instead of bytes.
pub fn encode_record(m: &Message, app_key: &str, seq: u64, out: &mut Vec<u8>) {
    let mut flags = 0;
    if m.from_name == m.from_id {
        flags |= F_FROM_NAME_IS_ID;
    }
    if m.from_appkey == app_key {
        flags |= F_FROM_APPKEY_IS_APP;
    }
    if m.target_appkey == app_key {
        flags |= F_TARGET_APPKEY_IS_APP;
    }
    if m.create_time == m.msg_ctime.div_euclid(1000) {
        flags |= F_CREATE_TIME_IS_CTIME;
    }
    if (m.version, m.msg_level, m.set_from_name) == (1, 0, 0) {
        flags |= F_DEFAULT_FLAGS;
    }
    out.push(flags);
    put_varint(out, seq);
    out.push(m.target_type.code());
    out.push(m.from_type as u8);
    put_str(out, &m.target_id);
    put_str(out, &m.from_id);
    put_str(out, &m.target_name);
    put_str(out, &m.from_platform);
    put_str(out, &m.msg_type);
    if flags & F_FROM_NAME_IS_ID == 0 {
        put_str(out, &m.from_name);
    }
    if flags & F_FROM_APPKEY_IS_APP == 0 {
        put_str(out, &m.from_appkey);
    }
    if flags & F_TARGET_APPKEY_IS_APP == 0 {
        put_str(out, &m.target_appkey);
    }
    if flags & F_CREATE_TIME_IS_CTIME == 0 {
        put_varint(out, zigzag(m.create_time));
    }
    if flags & F_DEFAULT_FLAGS == 0 {
        put_varint(out, zigzag(m.version));
        put_varint(out, zigzag(m.msg_level));
        put_varint(out, zigzag(m.set_from_name));
    }
    out.extend_from_slice(m.msg_body.as_bytes());
}

/// [`encode_record`] before its commit's sequence is known, for [`sequence_record`] to finish:
/// the encoding done where the batch is decoded, off the store's writer (which only copies).
pub fn encode_record_ahead(m: &Message, app_key: &str, out: &mut Vec<u8>) {
    // Sequence 0 takes one byte, which `sequence_record` replaces.
    encode_record(m, app_key, 0, out);
}

/// A record [`encode_record_ahead`] made, with the sequence of the commit that stores it: the
/// bytes [`encode_record`] writes for the same message and sequence.
pub fn sequence_record(ahead: &[u8], seq: u64, out: &mut Vec<u8>) {
    out.push(ahead[0]);
    put_varint(out, seq);
    out.extend_from_slice(&ahead[2..]);
}

/// Reads a stored record in place.
pub fn view_record(rec: &[u8]) -> Result<RecordView<'_>, CorruptRecord> {
    let mut c = Cur(rec);
    let flags = c.byte()?;
    let seq = c.varint()?;
    let target_type = TargetType::from_code(c.byte()?).ok_or(CorruptRecord)?;
    let from_type = match c.byte()? {
        0 => FromType::User,
        1 => FromType::Admin,
        _ => return Err(CorruptRecord),
    };
    let target_id = c.str()?;
    let from_id = c.str()?;
    let target_name = c.str()?;
    let from_platform = c.str()?;
    let msg_type = c.str()?;
    let from_name = if flags & F_FROM_NAME_IS_ID == 0 {
        Some(c.str()?)
    } else {
        None
    };
    let from_appkey = if flags & F_FROM_APPKEY_IS_APP == 0 {
        Some(c.str()?)
    } else {
        None
    };
    let target_appkey = if flags & F_TARGET_APPKEY_IS_APP == 0 {
        Some(c.str()?)
    } else {
        None
    };
    let create_time = if flags & F_CREATE_TIME_IS_CTIME == 0 {
        Some(unzigzag(c.varint()?))
    } else {
        None
    };
    let (version, msg_level, set_from_name) = if flags & F_DEFAULT_FLAGS == 0 {
        (
            unzigzag(c.varint()?),
            unzigzag(c.varint()?),
            unzigzag(c.varint()?),
        )
    } else {
        (1, 0, 0)
    };
    let msg_body = c.0;
    Ok(RecordView {
        seq,
        target_type,
        from_type,
        target_id,
        from_id,
        target_name,
        from_platform,
        msg_type,
        from_name,
        from_appkey,
        target_appkey,
        create_time,
        version,
        msg_level,
        set_from_name,
        msg_body,
    })
}

/// The commit sequence a record was written in, without reading the rest.
pub fn record_seq(rec: &[u8]) -> Result<u64, CorruptRecord> {
    let mut c = Cur(rec);
    c.byte()?;
    c.varint()
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Ids, names and tags rarely hold a byte JSON must escape: copy those between quotes
    // (serde_json's escaper, byte by byte through a table, was a tenth of serving a page).
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    }
}

fn json_int(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

impl RecordView<'_> {
    /// Writes the wire JSON object of this message.
    pub fn write_json(&self, msgid: u64, msg_ctime: Millis, app_key: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"msgid\":");
        out.extend_from_slice(itoa::Buffer::new().format(msgid).as_bytes());
        out.extend_from_slice(b",\"msg_ctime\":");
        json_int(out, msg_ctime);
        out.extend_from_slice(b",\"create_time\":");
        json_int(out, self.create_time.unwrap_or(msg_ctime.div_euclid(1000)));
        out.extend_from_slice(b",\"target_type\":\"");
        out.extend_from_slice(self.target_type.as_str().as_bytes());
        out.extend_from_slice(b"\",\"target_id\":");
        json_str(out, self.target_id);
        out.extend_from_slice(b",\"target_name\":");
        json_str(out, self.target_name);
        out.extend_from_slice(b",\"target_appkey\":");
        json_str(out, self.target_appkey.unwrap_or(app_key));
        out.extend_from_slice(b",\"from_type\":\"");
        out.extend_from_slice(self.from_type.as_str().as_bytes());
        out.extend_from_slice(b"\",\"from_id\":");
        json_str(out, self.from_id);
        out.extend_from_slice(b",\"from_name\":");
        json_str(out, self.from_name.unwrap_or(self.from_id));
        out.extend_from_slice(b",\"from_appkey\":");
        json_str(out, self.from_appkey.unwrap_or(app_key));
        out.extend_from_slice(b",\"from_platform\":");
        json_str(out, self.from_platform);
        out.extend_from_slice(b",\"msg_type\":");
        json_str(out, self.msg_type);
        out.extend_from_slice(b",\"msg_body\":");
        out.extend_from_slice(self.msg_body);
        out.extend_from_slice(b",\"version\":");
        json_int(out, self.version);
        out.extend_from_slice(b",\"msg_level\":");
        json_int(out, self.msg_level);
        out.extend_from_slice(b",\"set_from_name\":");
        json_int(out, self.set_from_name);
        out.push(b'}');
    }

    /// The owned message (for tests and for backends that store columns).
    pub fn to_message(&self, msgid: u64, msg_ctime: Millis, app_key: &str) -> Message {
        Message {
            msgid,
            msg_ctime,
            create_time: self.create_time.unwrap_or(msg_ctime.div_euclid(1000)),
            target_type: self.target_type,
            target_id: self.target_id.to_owned(),
            target_name: self.target_name.to_owned(),
            target_appkey: self.target_appkey.unwrap_or(app_key).to_owned(),
            from_type: self.from_type,
            from_id: self.from_id.to_owned(),
            from_name: self.from_name.unwrap_or(self.from_id).to_owned(),
            from_appkey: self.from_appkey.unwrap_or(app_key).to_owned(),
            from_platform: self.from_platform.to_owned(),
            msg_type: self.msg_type.to_owned(),
            msg_body: String::from_utf8_lossy(self.msg_body).into_owned(),
            version: self.version,
            msg_level: self.msg_level,
            set_from_name: self.set_from_name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_message() -> impl Strategy<Value = Message> {
        (
            (
                1u64..u64::MAX / 2,
                0i64..4_000_000_000_000,
                any::<bool>(),
                -5i64..5_000_000_000,
            ),
            (0u8..3, any::<bool>(), ".{0,12}", ".{0,12}", ".{0,6}"),
            (
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                "[a-z]{1,6}",
                "[a-z]{1,8}",
            ),
            (".{0,20}", 0i64..3, 0i64..2, 0i64..2),
        )
            .prop_map(|(a, b, c, d)| {
                let (msgid, msg_ctime, ct_default, ct) = a;
                let (tt, admin, target_id, from_id, target_name) = b;
                let (name_is_id, fk_default, tk_default, platform, msg_type) = c;
                let (text, version, msg_level, set_from_name) = d;
                Message {
                    msgid,
                    msg_ctime,
                    create_time: if ct_default { msg_ctime / 1000 } else { ct },
                    target_type: TargetType::from_code(tt).unwrap(),
                    target_id,
                    target_name,
                    target_appkey: if tk_default {
                        "APP".into()
                    } else {
                        "other".into()
                    },
                    from_type: if admin {
                        FromType::Admin
                    } else {
                        FromType::User
                    },
                    from_name: if name_is_id {
                        from_id.clone()
                    } else {
                        format!("{from_id}!")
                    },
                    from_id,
                    from_appkey: if fk_default {
                        "APP".into()
                    } else {
                        String::new()
                    },
                    from_platform: platform,
                    msg_type,
                    msg_body: serde_json::to_string(
                        &serde_json::json!({"text": text, "extras": {}}),
                    )
                    .unwrap(),
                    version,
                    msg_level,
                    set_from_name,
                }
            })
    }

    #[test]
    fn strings_are_escaped_as_serde_escapes_them() {
        for s in [
            "",
            "plain id",
            "q\"uote",
            "back\\slash",
            "tab\there",
            "\u{1}",
            "中文 ok",
            "\u{7f}",
        ] {
            let mut out = Vec::new();
            json_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }

    proptest! {
        /// The writer's borrowed scope ids name the same scopes as `scopes`.
        #[test]
        fn scope_ids_name_the_scopes(mut m in arb_message(), to_self in any::<bool>()) {
            if to_self {
                m.target_id = m.from_id.clone();
            }
            let named: Vec<crate::scope::Scope> = m
                .scope_ids()
                .map(|(tag, id)| crate::scope::Scope::from_tag(tag, id.to_owned()).unwrap())
                .collect();
            prop_assert_eq!(named, m.scopes());
        }

        #[test]
        fn a_record_encoded_ahead_and_sequenced_is_the_record(m in arb_message(), seq in any::<u64>()) {
            let (mut ahead, mut rec, mut want) = (Vec::new(), b"prefix".to_vec(), b"prefix".to_vec());
            encode_record_ahead(&m, "APP", &mut ahead);
            sequence_record(&ahead, seq, &mut rec);
            encode_record(&m, "APP", seq, &mut want);
            prop_assert_eq!(rec, want);
        }

        #[test]
        fn record_round_trips_and_writes_the_same_json_as_serde(m in arb_message(), seq in any::<u64>()) {
            let mut rec = Vec::new();
            encode_record(&m, "APP", seq, &mut rec);
            let v = view_record(&rec).unwrap();
            prop_assert_eq!(v.seq, seq);
            prop_assert_eq!(record_seq(&rec).unwrap(), seq);
            prop_assert_eq!(v.to_message(m.msgid, m.msg_ctime, "APP"), m.clone());
            let mut json = Vec::new();
            v.write_json(m.msgid, m.msg_ctime, "APP", &mut json);
            let parsed: serde_json::Value = serde_json::from_slice(&json).unwrap();
            let expected = serde_json::json!({
                "msgid": m.msgid, "msg_ctime": m.msg_ctime, "create_time": m.create_time,
                "target_type": m.target_type.as_str(), "target_id": m.target_id,
                "target_name": m.target_name, "target_appkey": m.target_appkey,
                "from_type": m.from_type.as_str(), "from_id": m.from_id, "from_name": m.from_name,
                "from_appkey": m.from_appkey, "from_platform": m.from_platform, "msg_type": m.msg_type,
                "msg_body": serde_json::from_str::<serde_json::Value>(&m.msg_body).unwrap(),
                "version": m.version, "msg_level": m.msg_level, "set_from_name": m.set_from_name,
            });
            prop_assert_eq!(parsed, expected);
        }

        #[test]
        fn garbage_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = view_record(&bytes);
        }
    }
}
