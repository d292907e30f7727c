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

/// A text of a random number of words in `len`, separated by spaces.
fn words(r: &mut ChaCha8Rng, len: std::ops::Range<usize>) -> String {
    let n = r.random_range(len);
    (0..n)
        .map(|_| WORDS[r.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// A user's display name: a syllable pair and the user's number.
fn nickname(n: u32) -> String {
    const SYL: &[&str] = &[
        "ka", "li", "mo", "ren", "su", "tao", "wei", "xin", "yu", "zhen",
    ];
    format!(
        "{}{} {n}",
        SYL[(n % 10) as usize],
        SYL[(n / 10 % 10) as usize]
    )
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
    /// Messages left to place, per hour, from the first hour on.
    hours: Vec<u64>,
    hour_idx: usize,
    start_ms: i64,
    next_msgid: u64,
    pending: std::collections::VecDeque<GenEvent>,
    registered: HashSet<u32>,
    created: HashSet<u32>,
    logged_in: HashSet<u32>,
    login_day: i64,
    tz: imreport_domain::time::ReportTz,
}

const HOUR: i64 = 3_600_000;

impl Generator {
    pub fn new(a: &LoadgenArgs, end_ms: i64) -> Result<Self> {
        let tz = imreport_domain::time::ReportTz::new(&a.report_tz)?;
        let n_hours = (a.days.max(1) as usize) * 24;
        let start_ms = end_ms - n_hours as i64 * HOUR + 1;
        // Diurnal weight: quiet at 04:00, busiest around 21:00 local time.
        let weights: Vec<f64> = (0..n_hours)
            .map(|h| {
                let local_hour = tz.civil_hour(start_ms + h as i64 * HOUR).rem_euclid(24) as f64;
                1.0 + 0.85 * ((local_hour - 15.0) / 24.0 * std::f64::consts::TAU).sin()
            })
            .collect();
        let sum: f64 = weights.iter().sum();
        let mut hours = Vec::with_capacity(n_hours);
        let (mut placed, mut acc) = (0u64, 0.0);
        for w in &weights {
            acc += w / sum * a.messages as f64;
            let upto = acc.round() as u64;
            hours.push(upto - placed);
            placed = upto;
        }
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
        let r = &mut self.rng;
        match msg_type {
            "text" => {
                let text = words(r, 1..12);
                let extras = if r.random_bool(0.1) {
                    r#"{"mentions":["all"]}"#
                } else {
                    "{}"
                };
                format!(r#"{{"text":"{text}","extras":{extras}}}"#)
            }
            "image" => format!(
                r#"{{"media_id":"qiniu/image/j/{:016X}","media_crc32":{},"width":{},"height":{},"format":"jpg","fsize":{}}}"#,
                r.random::<u64>(),
                r.random::<u32>(),
                r.random_range(320..4096),
                r.random_range(240..4096),
                r.random_range(20_000..4_000_000)
            ),
            "voice" => format!(
                r#"{{"media_id":"qiniu/voice/j/{:016X}","media_crc32":{},"duration":{},"format":"amr","fsize":{}}}"#,
                r.random::<u64>(),
                r.random::<u32>(),
                r.random_range(1..60),
                r.random_range(1_000..100_000)
            ),
            "location" => format!(
                r#"{{"latitude":{:.6},"longitude":{:.6},"scale":16,"label":"somewhere"}}"#,
                r.random_range(18.0..53.0),
                r.random_range(73.0..135.0)
            ),
            "file" => format!(
                r#"{{"media_id":"qiniu/file/j/{:016X}","media_crc32":{},"fname":"doc{}.pdf","fsize":{}}}"#,
                r.random::<u64>(),
                r.random::<u32>(),
                r.random_range(1..999),
                r.random_range(1_000..9_000_000)
            ),
            _ => format!(
                r#"{{"kind":"card","id":{},"extras":{{"v":2}}}}"#,
                r.random_range(1..100_000)
            ),
        }
    }

    /// A body as a JMessage client sends it: media with their store ids, CRCs, sizes and hashes,
    /// text with the extras clients attach.
    fn full_body(&mut self, msg_type: &str) -> String {
        let r = &mut self.rng;
        let hash = |r: &mut ChaCha8Rng| -> String {
            const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            (0..28)
                .map(|_| B64[r.random_range(0..64)] as char)
                .collect()
        };
        match msg_type {
            "text" => {
                let text = words(r, 1..10);
                let extras = match r.random_range(0..10) {
                    0..3 => format!(
                        r#"{{"msg_from":"{}"}}"#,
                        ["android", "ios", "web"][r.random_range(0..3)]
                    ),
                    _ => "{}".into(),
                };
                format!(r#"{{"text":"{text}","extras":{extras}}}"#)
            }
            "image" => format!(
                r#"{{"media_id":"qiniu/image/j/{:016X}{:08X}","media_crc32":{},"width":{},"height":{},"format":"jpg","fsize":{},"hash":"{}","img_link":""}}"#,
                r.random::<u64>(),
                r.random::<u32>(),
                r.random::<u32>(),
                r.random_range(320..4096),
                r.random_range(240..4096),
                r.random_range(20_000..4_000_000),
                hash(r)
            ),
            "voice" => format!(
                r#"{{"media_id":"qiniu/voice/j/{:016X}{:08X}","media_crc32":{},"duration":{},"format":"amr","fsize":{},"hash":"{}"}}"#,
                r.random::<u64>(),
                r.random::<u32>(),
                r.random::<u32>(),
                r.random_range(1..60),
                r.random_range(1_000..100_000),
                hash(r)
            ),
            "file" => format!(
                r#"{{"media_id":"qiniu/file/j/{:016X}{:08X}","media_crc32":{},"fname":"report-{}.pdf","fsize":{},"hash":"{}","extras":{{}}}}"#,
                r.random::<u64>(),
                r.random::<u32>(),
                r.random::<u32>(),
                r.random_range(1..999),
                r.random_range(1_000..9_000_000),
                hash(r)
            ),
            "location" => format!(
                r#"{{"latitude":{:.6},"longitude":{:.6},"scale":16,"label":"No. {} Some Road, Some District","extras":{{}}}}"#,
                r.random_range(18.0..53.0),
                r.random_range(73.0..135.0),
                r.random_range(1..999)
            ),
            _ => format!(
                r#"{{"kind":"card","id":{},"title":"shared card","extras":{{"v":2,"source":"share"}}}}"#,
                r.random_range(1..100_000)
            ),
        }
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
        let hour_start = self.start_ms + self.hour_idx as i64 * HOUR;
        self.hour_idx += 1;
        let mut times: Vec<i64> = Vec::with_capacity(n as usize);
        while (times.len() as u64) < n {
            let t = hour_start + self.rng.random_range(0..HOUR);
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
                id: format!("u{from}"),
                time: t - back,
            });
        }
        if self.logged_in.insert(from) && self.rng.random_bool(0.7) {
            self.pending.push_back(GenEvent::Lifecycle {
                kind: "user_login",
                id_field: "username",
                id: format!("u{from}"),
                time: t,
            });
        }
        let roll = self.rng.random_range(0..100);
        let (target_type, target_id) = if roll < 60 {
            let mut to = Self::pick(&mut self.rng, &self.users);
            if to == from {
                to = (to + 1) % self.n_users;
            }
            ("single", format!("u{to}"))
        } else if roll < 95 {
            let g = Self::pick(&mut self.rng, &self.groups);
            if self.created.insert(g) {
                let back = self.rng.random_range(1..30) * 86_400_000;
                self.pending.push_back(GenEvent::Lifecycle {
                    kind: "group_created",
                    id_field: "gid",
                    id: format!("{}", 10_000_000 + g),
                    time: t - back,
                });
            }
            ("group", format!("{}", 10_000_000 + g))
        } else {
            (
                "chatroom",
                format!(
                    "{}",
                    20_000_000 + Self::pick(&mut self.rng, &self.chatrooms)
                ),
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
            from_id: format!("u{from}"),
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
                let _ = writeln!(
                    out,
                    r#"{{"event":"message","target_type":"{}","msg_type":"{}","target_name":"{}","target_id":"{}","target_appkey":"{}","from_id":"{}","from_name":"{}","from_type":"user","from_appkey":"{}","from_platform":"{}","msg_body":{},"create_time":{},"version":1,"msgid":{},"msg_level":0,"set_from_name":0,"msg_ctime":{}}}"#,
                    m.target_type,
                    m.msg_type,
                    f.target_name,
                    m.target_id,
                    f.appkey,
                    m.from_id,
                    f.from_name,
                    f.appkey,
                    m.platform,
                    m.body,
                    m.ctime.div_euclid(1000),
                    m.msgid,
                    m.ctime
                );
            }
            GenEvent::Message(m) => {
                let _ = writeln!(
                    out,
                    r#"{{"event":"message","msgid":{},"msg_ctime":{},"target_type":"{}","target_id":"{}","from_id":"{}","from_platform":"{}","msg_type":"{}","msg_body":{}}}"#,
                    m.msgid,
                    m.ctime,
                    m.target_type,
                    m.target_id,
                    m.from_id,
                    m.platform,
                    m.msg_type,
                    m.body
                );
            }
            GenEvent::Lifecycle {
                kind,
                id_field,
                id,
                time,
            } => {
                let _ = writeln!(
                    out,
                    r#"{{"event":"{kind}","{id_field}":"{id}","time":{time}}}"#
                );
            }
        }
    }
}
