//! `imreport loadgen`: deterministic synthetic IM traffic. Users, groups and chatrooms with
//! Zipf-distributed activity; a single/group/chatroom mix; ~80% text, 10% image, 5% voice, 5%
//! custom/file/location; realistic bodies; registrations, logins and group creation before first
//! use; a diurnal curve in the report zone; bursts of messages sharing one millisecond. The same
//! seed gives the same events, byte for byte.

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;
use rand_distr::weighted::WeightedAliasIndex;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Clone, Args)]
pub struct LoadgenArgs {
    /// Seed of the generator: the same seed gives the same events
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Messages to generate (lifecycle events come on top)
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Days the traffic spans, ending at --end
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// Last instant of the traffic, `yyyy-MM-dd HH:mm:ss` in --report-tz, or `now`
    #[arg(long, default_value = "now")]
    pub end: String,
    #[arg(long, default_value = "Asia/Shanghai")]
    pub report_tz: String,
    #[arg(long, default_value_t = 20_000)]
    pub users: u32,
    #[arg(long, default_value_t = 2_000)]
    pub groups: u32,
    #[arg(long, default_value_t = 50)]
    pub chatrooms: u32,
    /// First msgid (ids are consecutive from it)
    #[arg(long, default_value_t = 1)]
    pub first_msgid: u64,
    /// Output format: ndjson (the ingest API's), or csv (PREFIX.messages.csv and PREFIX.events.csv)
    #[arg(long, default_value = "ndjson")]
    pub format: String,
    /// Output file (or prefix for csv); `-` is stdout
    #[arg(long, default_value = "-")]
    pub out: String,
    /// Post to this server instead of writing, e.g. http://127.0.0.1:8080
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long, requires = "url")]
    pub app_key: Option<String>,
    #[arg(long, requires = "url")]
    pub master_secret: Option<String>,
    /// Concurrent clients when posting
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Events per request when posting
    #[arg(long, default_value_t = 5_000)]
    pub batch: usize,
    /// No progress bar
    #[arg(long)]
    pub quiet: bool,
}

impl LoadgenArgs {
    /// The traffic `serve --demo` fills its app with: a week ending now.
    pub fn for_demo(messages: u64, report_tz: &str) -> Self {
        LoadgenArgs {
            seed: 42,
            messages,
            days: 7,
            end: "now".into(),
            report_tz: report_tz.into(),
            users: 5_000,
            groups: 300,
            chatrooms: 20,
            first_msgid: 1,
            format: "ndjson".into(),
            out: "-".into(),
            url: None,
            app_key: None,
            master_secret: None,
            concurrency: 1,
            batch: 5_000,
            quiet: true,
        }
    }
}

/// One generated event.
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
    rng: ChaCha8Rng,
    users: WeightedAliasIndex<f64>,
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
        let zipf = |n: u32| {
            let weights = (1..=n.max(1)).map(|k| f64::from(k).powf(-1.07)).collect();
            WeightedAliasIndex::new(weights).context("zipf")
        };
        Ok(Generator {
            rng: ChaCha8Rng::seed_from_u64(a.seed),
            users: zipf(a.users)?,
            groups: zipf(a.groups)?,
            chatrooms: zipf(a.chatrooms)?,
            n_users: a.users.max(2),
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
    fn pick(rng: &mut ChaCha8Rng, z: &WeightedAliasIndex<f64>) -> u32 {
        z.sample(rng) as u32
    }

    fn body(&mut self, msg_type: &str) -> String {
        let r = &mut self.rng;
        match msg_type {
            "text" => {
                let n = r.random_range(1..12);
                let mut text = String::new();
                for i in 0..n {
                    if i > 0 {
                        text.push(' ');
                    }
                    text.push_str(WORDS[r.random_range(0..WORDS.len())]);
                }
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
        self.pending.push_back(GenEvent::Message(GenMessage {
            msgid,
            ctime: t,
            target_type,
            target_id,
            from_id: format!("u{from}"),
            platform,
            msg_type,
            body,
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

fn csv_field(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn end_ms(a: &LoadgenArgs) -> Result<i64> {
    if a.end == "now" {
        return Ok(jiff::Timestamp::now().as_millisecond());
    }
    let tz = imreport_domain::time::ReportTz::new(&a.report_tz)?;
    let dt = imreport_domain::time::parse_second("--end", &a.end)?;
    Ok(tz.end_of(dt)?)
}

pub async fn run(a: LoadgenArgs) -> Result<()> {
    let end = end_ms(&a)?;
    let generator = Generator::new(&a, end)?;
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(a.messages)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} messages ({per_sec}, eta {eta})",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let summary = match &a.url {
        Some(url) => post(&a, url, generator, &bar).await?,
        None => {
            write(&a, generator, &bar)?;
            Summary::default()
        }
    };
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let events = summary.events.max(bar.position());
    eprintln!(
        "loadgen: {} messages, {} events in {:.2} s: {:.0} messages/s, {:.0} events/s; {} requests, {} errors; accepted {}, duplicates {}, expired {}",
        bar.position(),
        events,
        secs,
        bar.position() as f64 / secs,
        events as f64 / secs,
        summary.requests,
        summary.errors,
        summary.accepted,
        summary.duplicates,
        summary.expired
    );
    anyhow::ensure!(summary.errors == 0, "{} requests failed", summary.errors);
    Ok(())
}

fn write(a: &LoadgenArgs, generator: Generator, bar: &ProgressBar) -> Result<()> {
    let open = |path: &str| -> Result<Box<dyn Write>> {
        Ok(if path == "-" {
            Box::new(std::io::BufWriter::with_capacity(
                1 << 20,
                std::io::stdout().lock(),
            ))
        } else {
            Box::new(std::io::BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(path).with_context(|| format!("cannot create {path}"))?,
            ))
        })
    };
    let mut line = String::with_capacity(512);
    match a.format.as_str() {
        "ndjson" => {
            let mut out = open(&a.out)?;
            for e in generator {
                line.clear();
                e.write_ndjson(&mut line);
                out.write_all(line.as_bytes())?;
                if e.is_message() {
                    bar.inc(1);
                }
            }
            out.flush()?;
        }
        "csv" => {
            anyhow::ensure!(
                a.out != "-",
                "csv needs --out PREFIX (writes PREFIX.messages.csv and PREFIX.events.csv)"
            );
            let mut msgs = open(&format!("{}.messages.csv", a.out))?;
            let mut evs = open(&format!("{}.events.csv", a.out))?;
            for e in generator {
                line.clear();
                match &e {
                    GenEvent::Message(m) => {
                        let _ = writeln!(
                            line,
                            "{},{},{},{},user,{},{},{},{}",
                            m.msgid,
                            m.ctime,
                            m.target_type,
                            csv_field(&m.target_id),
                            csv_field(&m.from_id),
                            m.platform,
                            m.msg_type,
                            csv_field(&m.body)
                        );
                        msgs.write_all(line.as_bytes())?;
                        bar.inc(1);
                    }
                    GenEvent::Lifecycle { kind, id, time, .. } => {
                        let _ = writeln!(line, "{kind},{},{time}", csv_field(id));
                        evs.write_all(line.as_bytes())?;
                    }
                }
            }
            msgs.flush()?;
            evs.flush()?;
        }
        other => anyhow::bail!("unknown --format {other:?}: use ndjson or csv"),
    }
    Ok(())
}

#[derive(Default, Debug)]
struct Summary {
    events: u64,
    requests: u64,
    errors: u64,
    accepted: u64,
    duplicates: u64,
    expired: u64,
}

async fn post(
    a: &LoadgenArgs,
    url: &str,
    generator: Generator,
    bar: &ProgressBar,
) -> Result<Summary> {
    let key = a
        .app_key
        .clone()
        .context("--app-key is required with --url")?;
    let secret = a
        .master_secret
        .clone()
        .context("--master-secret is required with --url")?;
    // One thread generates the batches and keeps one ready per client: a client whose answer
    // arrives sends its next batch at once, instead of the clients taking turns to generate
    // while the server, having answered them all, waits for work.
    let clients = a.concurrency.max(1);
    let batch = a.batch.max(1);
    let (ready, batches) = tokio::sync::mpsc::channel::<(bytes::Bytes, u64, u64)>(clients);
    let producer = std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || {
            let mut events = generator.peekable();
            let mut body = String::with_capacity(batch * 256);
            while events.peek().is_some() {
                body.clear();
                let (mut n, mut msgs) = (0u64, 0u64);
                for e in events.by_ref().take(batch) {
                    e.write_ndjson(&mut body);
                    n += 1;
                    msgs += u64::from(e.is_message());
                }
                let payload = bytes::Bytes::copy_from_slice(body.as_bytes());
                if ready.blocking_send((payload, n, msgs)).is_err() {
                    return;
                }
            }
        })
        .context("cannot start the generator thread")?;
    let batches = Arc::new(tokio::sync::Mutex::new(batches));
    let summary = Arc::new(Mutex::new(Summary::default()));
    let client = reqwest::Client::new();
    let endpoint = format!("{}/ingest/v1/events", url.trim_end_matches('/'));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (batches, summary, client, endpoint, bar) = (
            batches.clone(),
            summary.clone(),
            client.clone(),
            endpoint.clone(),
            bar.clone(),
        );
        let (key, secret) = (key.clone(), secret.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = batches.lock().await.recv().await;
                let Some((payload, n, msgs)) = next else {
                    return;
                };
                let result = loop {
                    let r = client
                        .post(&endpoint)
                        .basic_auth(&key, Some(&secret))
                        .header("content-type", "application/x-ndjson")
                        .body(payload.clone())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 503 || r.status() == 429 => {
                            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        }
                        Ok(r) if r.status().is_success() => {
                            break r.json::<serde_json::Value>().await.ok();
                        }
                        Ok(r) => {
                            eprintln!(
                                "loadgen: {} {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                            break None;
                        }
                        Err(e) => {
                            eprintln!("loadgen: {e}");
                            break None;
                        }
                    }
                };
                let mut s = summary.lock().expect("lock");
                s.requests += 1;
                s.events += n;
                match result {
                    Some(v) => {
                        s.accepted += v["accepted"].as_u64().unwrap_or(0);
                        s.duplicates += v["duplicates"].as_u64().unwrap_or(0);
                        s.expired += v["expired"].as_u64().unwrap_or(0);
                    }
                    None => s.errors += 1,
                }
                bar.inc(msgs);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?;
    let s = std::mem::take(&mut *summary.lock().expect("lock"));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        a: LoadgenArgs,
    }

    fn args(extra: &[&str]) -> LoadgenArgs {
        let mut v = vec![
            "x",
            "--messages",
            "5000",
            "--days",
            "2",
            "--end",
            "2026-11-20 12:00:00",
        ];
        v.extend_from_slice(extra);
        Wrap::parse_from(v).a
    }

    fn lines(a: &LoadgenArgs) -> Vec<String> {
        let g = Generator::new(a, end_ms(a).unwrap()).unwrap();
        g.map(|e| {
            let mut s = String::new();
            e.write_ndjson(&mut s);
            s
        })
        .collect()
    }

    #[test]
    fn same_seed_same_events_and_the_mix_is_right() {
        let a = args(&[]);
        let first = lines(&a);
        assert_eq!(first, lines(&a));
        assert_ne!(first, lines(&args(&["--seed", "7"])));
        let events: Vec<serde_json::Value> = first
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let msgs: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["event"] == "message").collect();
        assert_eq!(msgs.len(), 5000);
        let share = |f: &dyn Fn(&serde_json::Value) -> bool| {
            msgs.iter().filter(|m| f(m)).count() as f64 / 5000.0
        };
        assert!((0.75..0.85).contains(&share(&|m| m["msg_type"] == "text")));
        assert!((0.5..0.7).contains(&share(&|m| m["target_type"] == "single")));
        // In time order, inside the window, with ties in one millisecond.
        let times: Vec<i64> = msgs
            .iter()
            .map(|m| m["msg_ctime"].as_i64().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert!(times.windows(2).any(|w| w[0] == w[1]));
        let end = end_ms(&a).unwrap();
        assert!(times[0] > end - 2 * 86_400_000 && *times.last().unwrap() <= end);
        // Every body decodes, and the ingest decoder accepts every line.
        let all = first.concat();
        let decoded = imreport_domain::event::decode_batch(
            all.as_bytes(),
            "K",
            end + 1,
            &imreport_domain::event::IngestLimits {
                max_events: 1_000_000,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(decoded.len(), events.len());
    }

    /// Activity is Zipf with exponent 1.07: rank k draws in proportion to k^-1.07.
    #[test]
    fn activity_follows_zipf() {
        let a = args(&[]);
        let mut g = Generator::new(&a, end_ms(&a).unwrap()).unwrap();
        let n = a.users;
        let draws = 400_000;
        let mut counts = vec![0u32; n as usize];
        for _ in 0..draws {
            counts[Generator::pick(&mut g.rng, &g.users) as usize] += 1;
        }
        let h: f64 = (1..=n).map(|k| f64::from(k).powf(-1.07)).sum();
        for rank in [0usize, 1, 9, 99] {
            let expected = f64::from(draws) * ((rank + 1) as f64).powf(-1.07) / h;
            let got = f64::from(counts[rank]);
            // Within five standard deviations of a binomial count.
            assert!(
                (got - expected).abs() < 5.0 * expected.sqrt() + 1.0,
                "rank {rank}: {got} draws, expected {expected:.0}"
            );
        }
        assert!(counts[n as usize - 1] < counts[0] / 1000 + 5);
    }
}
