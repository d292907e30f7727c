//! The traffic model: who writes to whom, when, and what.

use super::*;

#[derive(Debug, Clone)]
pub enum GenEvent {
    Message(GenMessage),
    Lifecycle {
        kind: &'static str,
        id_field: &'static str,
        id: String,
        time: i64,
    },
}

#[derive(Debug, Clone)]
pub struct GenMessage {
    pub msgid: u64,
    pub ctime: i64,
    pub target_type: &'static str,
    pub target_id: String,
    pub from_id: String,
    pub platform: &'static str,
    pub msg_type: &'static str,
    pub body: String,
    /// The full profile's other exported fields.
    pub full: Option<FullFields>,
}

/// What the full profile adds to a message: the names and app keys JMessage exports.
#[derive(Debug, Clone)]
pub struct FullFields {
    pub target_name: String,
    pub from_name: String,
    pub appkey: String,
}

/// A text of a random number of words in `len`, separated by spaces, appended to `out`.
fn words(r: &mut ChaCha8Rng, len: std::ops::Range<usize>, out: &mut String) {
    let n = r.random_range(len);
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[r.random_range(0..WORDS.len())]);
    }
}

/// Appends an integer's decimal digits (`format!` and `write!` were a third of the generator's
/// time, which shares the benchmark's cores with the server).
fn int(out: &mut String, v: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// Appends the low `digits` hex digits of `v`, upper case, zero-padded (`{:0N X}`).
fn hex(out: &mut String, v: u64, digits: u32) {
    for i in (0..digits).rev() {
        out.push(char::from(
            b"0123456789ABCDEF"[(v >> (4 * i) & 0xf) as usize],
        ));
    }
}

/// Opens a media body: `{"media_id":"<prefix><hex>","media_crc32":<crc>`, the id a u64 in hex
/// (and, in the full profile, a u32 after it), drawn in that order.
fn media(r: &mut ChaCha8Rng, b: &mut String, prefix: &str, long_id: bool) {
    b.push_str(r#"{"media_id":""#);
    b.push_str(prefix);
    hex(b, r.random::<u64>(), 16);
    if long_id {
        hex(b, u64::from(r.random::<u32>()), 8);
    }
    b.push_str(r#"","media_crc32":"#);
    int(b, r.random::<u32>());
}

/// An image body's fields, without its closing brace (the full profile adds a hash).
fn image(r: &mut ChaCha8Rng, b: &mut String, full: bool) {
    media(r, b, "qiniu/image/j/", full);
    b.push_str(r#","width":"#);
    int(b, r.random_range(320i32..4096));
    b.push_str(r#","height":"#);
    int(b, r.random_range(240i32..4096));
    b.push_str(r#","format":"jpg","fsize":"#);
    int(b, r.random_range(20_000i32..4_000_000));
}

/// A voice body's fields, without its closing brace.
fn voice(r: &mut ChaCha8Rng, b: &mut String, full: bool) {
    media(r, b, "qiniu/voice/j/", full);
    b.push_str(r#","duration":"#);
    int(b, r.random_range(1i32..60));
    b.push_str(r#","format":"amr","fsize":"#);
    int(b, r.random_range(1_000i32..100_000));
}

/// `"<prefix><n>"`, as the generator's ids are written.
fn id(prefix: &str, n: u32) -> String {
    let mut s = String::with_capacity(prefix.len() + 10);
    s.push_str(prefix);
    int(&mut s, n);
    s
}

/// A user's display name: a syllable pair and the user's number.
fn nickname(n: u32) -> String {
    const SYL: &[&str] = &[
        "ka", "li", "mo", "ren", "su", "tao", "wei", "xin", "yu", "zhen",
    ];
    let mut s = String::with_capacity(16);
    s.push_str(SYL[(n % 10) as usize]);
    s.push_str(SYL[(n / 10 % 10) as usize]);
    s.push(' ');
    int(&mut s, n);
    s
}

const WORDS: &[&str] = &[
    "hi", "hello", "ok", "yes", "no", "thanks", "see", "you", "later", "lol", "where", "are", "we",
    "meeting", "today", "tomorrow", "at", "the", "office", "lunch", "dinner", "coffee", "call",
    "me", "when", "free", "sure", "sounds", "good", "great", "haha", "on", "my", "way", "sorry",
    "late", "traffic", "photo", "look", "this", "nice", "wow", "好的", "谢谢", "在吗", "晚上",
    "一起", "吃饭", "明天", "见", "哈哈", "收到",
];
const PLATFORMS: &[&str] = &["a", "a", "a", "i", "i", "web", "api"];

pub struct Generator {
    pub(super) rng: ChaCha8Rng,
    profile: Profile,
    /// The app key the full profile writes in `target_appkey` and `from_appkey`.
    appkey: String,
    pub(super) users: WeightedAliasIndex<f64>,
    groups: WeightedAliasIndex<f64>,
    chatrooms: WeightedAliasIndex<f64>,
    n_users: u32,
    /// Messages left to place, per slot (an hour; a second when live), from the first on.
    hours: Vec<u64>,
    hour_idx: usize,
    start_ms: i64,
    slot_ms: i64,
    next_msgid: u64,
    pending: std::collections::VecDeque<GenEvent>,
    registered: HashSet<u32>,
    created: HashSet<u32>,
    logged_in: HashSet<u32>,
    login_day: i64,
    tz: imreport_domain::time::ReportTz,
}

const HOUR: i64 = 3_600_000;

/// Messages per hour of `days` ending at `end_ms`, on a diurnal curve: quiet at 04:00, busiest
/// around 21:00 in the report zone. Returns the counts, the first hour's start and the slot.
fn diurnal_hours(
    tz: &imreport_domain::time::ReportTz,
    messages: u64,
    days: u32,
    end_ms: i64,
) -> (Vec<u64>, i64, i64) {
    let n_hours = (days.max(1) as usize) * 24;
    let start_ms = end_ms - n_hours as i64 * HOUR + 1;
    let weights: Vec<f64> = (0..n_hours)
        .map(|h| {
            let local_hour = tz.civil_hour(start_ms + h as i64 * HOUR).rem_euclid(24) as f64;
            1.0 + 0.85 * ((local_hour - 15.0) / 24.0 * std::f64::consts::TAU).sin()
        })
        .collect();
    let sum: f64 = weights.iter().sum();
    (spread(messages, &weights, sum), start_ms, HOUR)
}

/// Live traffic: `rate` messages in each second from `now_ms`, so that a message posted on
/// schedule carries (within a second) the time it is posted at.
fn live_slots(messages: u64, rate: f64, now_ms: i64) -> (Vec<u64>, i64, i64) {
    let seconds = (messages as f64 / rate).ceil().max(1.0) as usize;
    let weights = vec![1.0; seconds];
    // Each second gets `rate`, the last what is left (the running total is capped).
    (
        spread(messages, &weights, messages as f64 / rate),
        now_ms,
        1000,
    )
}

/// `messages` split over slots in proportion to `weights` (of total `sum`), rounding so that
/// the running total stays exact.
fn spread(messages: u64, weights: &[f64], sum: f64) -> Vec<u64> {
    let mut out = Vec::with_capacity(weights.len());
    let (mut placed, mut acc) = (0u64, 0.0);
    for w in weights {
        acc += w / sum * messages as f64;
        let upto = (acc.round() as u64).min(messages);
        out.push(upto - placed);
        placed = upto;
    }
    out
}

impl Generator {
    pub fn new(a: &LoadgenArgs, end_ms: i64) -> Result<Self> {
        let tz = imreport_domain::time::ReportTz::new(&a.report_tz)?;
        let (hours, start_ms, slot_ms) = match a.live_rate() {
            Some(rate) => live_slots(a.messages, rate, jiff::Timestamp::now().as_millisecond()),
            None => diurnal_hours(&tz, a.messages, a.days, end_ms),
        };
        // Zipf (exponent 1.07) over the ranks as an alias table: one draw is two random numbers
        // and a lookup, where rand_distr's `Zipf` (rejection sampling, a `powf` or more per
        // draw) was ~30% of the generator's CPU, which shares the machine with the server in
        // the benchmark.
        let zipf = |n: u32, s: f64| {
            let weights = (1..=n.max(1)).map(|k| f64::from(k).powf(-s)).collect();
            WeightedAliasIndex::new(weights).context("zipf")
        };
        let (users, groups, chatrooms, spread) = a.populations();
        Ok(Generator {
            rng: ChaCha8Rng::seed_from_u64(a.seed),
            profile: a.profile,
            appkey: a
                .app_key
                .clone()
                .unwrap_or_else(|| "4f7aef34fb361292c566a1cd".into()),
            users: zipf(users, 1.07)?,
            groups: zipf(groups, spread)?,
            chatrooms: zipf(chatrooms, spread)?,
            n_users: users.max(2),
            hours,
            hour_idx: 0,
            start_ms,
            slot_ms,
            next_msgid: a.first_msgid,
            pending: Default::default(),
            registered: HashSet::new(),
            created: HashSet::new(),
            logged_in: HashSet::new(),
            login_day: i64::MIN,
            tz,
        })
    }

    /// A rank from 0 (the most active) to n - 1.
    pub(super) fn pick(rng: &mut ChaCha8Rng, z: &WeightedAliasIndex<f64>) -> u32 {
        z.sample(rng) as u32
    }

    fn body(&mut self, msg_type: &str) -> String {
        if self.profile == Profile::Full {
            return self.full_body(msg_type);
        }
        // Each field is drawn in the order it is written: the same seed, the same bytes.
        let r = &mut self.rng;
        let mut b = String::with_capacity(160);
        match msg_type {
            "text" => {
                b.push_str(r#"{"text":""#);
                words(r, 1..12, &mut b);
                b.push_str(r#"","extras":"#);
                b.push_str(if r.random_bool(0.1) {
                    r#"{"mentions":["all"]}"#
                } else {
                    "{}"
                });
                b.push('}');
            }
            "image" => {
                image(r, &mut b, false);
                b.push('}');
            }
            "voice" => {
                voice(r, &mut b, false);
                b.push('}');
            }
            "location" => {
                let (lat, lon) = (r.random_range(18.0..53.0), r.random_range(73.0..135.0));
                let _ = write!(
                    b,
                    r#"{{"latitude":{lat:.6},"longitude":{lon:.6},"scale":16,"label":"somewhere"}}"#
                );
            }
            "file" => {
                media(r, &mut b, "qiniu/file/j/", false);
                b.push_str(r#","fname":"doc"#);
                int(&mut b, r.random_range(1i32..999));
                b.push_str(r#".pdf","fsize":"#);
                int(&mut b, r.random_range(1_000i32..9_000_000));
                b.push('}');
            }
            _ => {
                b.push_str(r#"{"kind":"card","id":"#);
                int(&mut b, r.random_range(1i32..100_000));
                b.push_str(r#","extras":{"v":2}}"#);
            }
        }
        b
    }

    /// A body as a JMessage client sends it: media with their store ids, CRCs, sizes and hashes,
    /// text with the extras clients attach.
    fn full_body(&mut self, msg_type: &str) -> String {
        let r = &mut self.rng;
        let hash = |r: &mut ChaCha8Rng, b: &mut String| {
            const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            for _ in 0..28 {
                b.push(char::from(B64[r.random_range(0..64)]));
            }
        };
        let mut b = String::with_capacity(256);
        match msg_type {
            "text" => {
                b.push_str(r#"{"text":""#);
                words(r, 1..10, &mut b);
                b.push_str(r#"","extras":"#);
                match r.random_range(0..10) {
                    0..3 => {
                        b.push_str(r#"{"msg_from":""#);
                        b.push_str(["android", "ios", "web"][r.random_range(0..3)]);
                        b.push_str(r#""}"#);
                    }
                    _ => b.push_str("{}"),
                }
                b.push('}');
            }
            "image" => {
                image(r, &mut b, true);
                b.push_str(r#","hash":""#);
                hash(r, &mut b);
                b.push_str(r#"","img_link":""}"#);
            }
            "voice" => {
                voice(r, &mut b, true);
                b.push_str(r#","hash":""#);
                hash(r, &mut b);
                b.push_str(r#""}"#);
            }
            "file" => {
                media(r, &mut b, "qiniu/file/j/", true);
                b.push_str(r#","fname":"report-"#);
                int(&mut b, r.random_range(1i32..999));
                b.push_str(r#".pdf","fsize":"#);
                int(&mut b, r.random_range(1_000i32..9_000_000));
                b.push_str(r#","hash":""#);
                hash(r, &mut b);
                b.push_str(r#"","extras":{}}"#);
            }
            "location" => {
                let (lat, lon) = (r.random_range(18.0..53.0), r.random_range(73.0..135.0));
                let _ = write!(
                    b,
                    r#"{{"latitude":{lat:.6},"longitude":{lon:.6},"scale":16,"label":"No. {} Some Road, Some District","extras":{{}}}}"#,
                    r.random_range(1i32..999)
                );
            }
            _ => {
                b.push_str(r#"{"kind":"card","id":"#);
                int(&mut b, r.random_range(1i32..100_000));
                b.push_str(r#","title":"shared card","extras":{"v":2,"source":"share"}}"#);
            }
        }
        b
    }

    /// Events of the next hour that has messages, in time order.
    fn fill_hour(&mut self) -> bool {
        while self.hour_idx < self.hours.len() && self.hours[self.hour_idx] == 0 {
            self.hour_idx += 1;
        }
        if self.hour_idx >= self.hours.len() {
            return false;
        }
        let n = self.hours[self.hour_idx];
        let hour_start = self.start_ms + self.hour_idx as i64 * self.slot_ms;
        self.hour_idx += 1;
        let mut times: Vec<i64> = Vec::with_capacity(n as usize);
        while (times.len() as u64) < n {
            let t = hour_start + self.rng.random_range(0..self.slot_ms);
            // About 1% of messages open a burst sharing one millisecond.
            let burst = if self.rng.random_bool(0.01) {
                self.rng.random_range(5..200)
            } else {
                1
            };
            for _ in 0..burst.min(n - times.len() as u64) {
                times.push(t);
            }
        }
        times.sort_unstable();
        for t in times {
            self.message(t);
        }
        true
    }

    fn message(&mut self, t: i64) {
        let day = self.tz.civil_day(t);
        if day != self.login_day {
            self.login_day = day;
            self.logged_in.clear();
        }
        let from = Self::pick(&mut self.rng, &self.users);
        if self.registered.insert(from) {
            // Most users registered before the window; the rest just before their first message.
            let back = if self.rng.random_bool(0.8) {
                self.rng.random_range(1..90) * 86_400_000
            } else {
                self.rng.random_range(1..600_000)
            };
            self.pending.push_back(GenEvent::Lifecycle {
                kind: "user_registered",
                id_field: "username",
                id: id("u", from),
                time: t - back,
            });
        }
        if self.logged_in.insert(from) && self.rng.random_bool(0.7) {
            self.pending.push_back(GenEvent::Lifecycle {
                kind: "user_login",
                id_field: "username",
                id: id("u", from),
                time: t,
            });
        }
        let roll = self.rng.random_range(0..100);
        let (target_type, target_id) = if roll < 60 {
            let mut to = Self::pick(&mut self.rng, &self.users);
            if to == from {
                to = (to + 1) % self.n_users;
            }
            ("single", id("u", to))
        } else if roll < 95 {
            let g = Self::pick(&mut self.rng, &self.groups);
            if self.created.insert(g) {
                let back = self.rng.random_range(1..30) * 86_400_000;
                self.pending.push_back(GenEvent::Lifecycle {
                    kind: "group_created",
                    id_field: "gid",
                    id: id("", 10_000_000 + g),
                    time: t - back,
                });
            }
            ("group", id("", 10_000_000 + g))
        } else {
            (
                "chatroom",
                id("", 20_000_000 + Self::pick(&mut self.rng, &self.chatrooms)),
            )
        };
        let kind = self.rng.random_range(0..100);
        let msg_type = match kind {
            0..80 => "text",
            80..90 => "image",
            90..95 => "voice",
            95..97 => "custom",
            97..99 => "file",
            _ => "location",
        };
        let body = self.body(msg_type);
        let platform = PLATFORMS[self.rng.random_range(0..PLATFORMS.len())];
        let msgid = self.next_msgid;
        self.next_msgid += 1;
        let full = (self.profile == Profile::Full).then(|| FullFields {
            target_name: match target_type {
                "single" => nickname(target_id[1..].parse().unwrap_or(0)),
                "group" => format!("group {target_id}"),
                _ => format!("room {target_id}"),
            },
            from_name: nickname(from),
            appkey: self.appkey.clone(),
        });
        self.pending.push_back(GenEvent::Message(GenMessage {
            msgid,
            ctime: t,
            target_type,
            target_id,
            from_id: id("u", from),
            platform,
            msg_type,
            body,
            full,
        }));
    }
}

impl Iterator for Generator {
    type Item = GenEvent;
    fn next(&mut self) -> Option<GenEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if !self.fill_hour() {
                return None;
            }
        }
    }
}

impl GenEvent {
    pub fn is_message(&self) -> bool {
        matches!(self, GenEvent::Message(_))
    }

    /// One NDJSON line of the ingest API, with its newline.
    pub fn write_ndjson(&self, out: &mut String) {
        match self {
            GenEvent::Message(m) if m.full.is_some() => {
                let f = m.full.as_ref().expect("full");
                // Every field JMessage exports, in its order.
                for (field, value) in [
                    (r#"{"event":"message","target_type":""#, m.target_type),
                    (r#"","msg_type":""#, m.msg_type),
                    (r#"","target_name":""#, &f.target_name),
                    (r#"","target_id":""#, &m.target_id),
                    (r#"","target_appkey":""#, &f.appkey),
                    (r#"","from_id":""#, &m.from_id),
                    (r#"","from_name":""#, &f.from_name),
                    (r#"","from_type":"user","from_appkey":""#, &f.appkey),
                    (r#"","from_platform":""#, m.platform),
                    (r#"","msg_body":"#, &m.body),
                ] {
                    out.push_str(field);
                    out.push_str(value);
                }
                out.push_str(r#","create_time":"#);
                int(out, m.ctime.div_euclid(1000));
                out.push_str(r#","version":1,"msgid":"#);
                int(out, m.msgid);
                out.push_str(r#","msg_level":0,"set_from_name":0,"msg_ctime":"#);
                int(out, m.ctime);
                out.push_str("}\n");
            }
            GenEvent::Message(m) => {
                out.push_str(r#"{"event":"message","msgid":"#);
                int(out, m.msgid);
                out.push_str(r#","msg_ctime":"#);
                int(out, m.ctime);
                for (field, value) in [
                    (r#","target_type":""#, m.target_type),
                    (r#"","target_id":""#, &m.target_id),
                    (r#"","from_id":""#, &m.from_id),
                    (r#"","from_platform":""#, m.platform),
                    (r#"","msg_type":""#, m.msg_type),
                    (r#"","msg_body":"#, &m.body),
                ] {
                    out.push_str(field);
                    out.push_str(value);
                }
                out.push_str("}\n");
            }
            GenEvent::Lifecycle {
                kind,
                id_field,
                id,
                time,
            } => {
                for part in [r#"{"event":""#, kind, r#"",""#, id_field, r#"":""#, id] {
                    out.push_str(part);
                }
                out.push_str(r#"","time":"#);
                int(out, *time);
                out.push_str("}\n");
            }
        }
    }
}
