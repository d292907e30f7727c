//! `imreport loadgen`: deterministic synthetic IM traffic. Users, groups and chatrooms with
//! Zipf-distributed activity; a single/group/chatroom mix; ~80% text, 10% image, 5% voice, 5%
//! custom/file/location; realistic bodies; registrations, logins and group creation before first
//! use; a diurnal curve in the report zone; bursts of messages sharing one millisecond. The same
//! seed gives the same events, byte for byte.

mod generator;
mod post;

pub use generator::{GenEvent, GenMessage, Generator};
use post::{Summary, post};

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

/// What the generated traffic looks like (the benchmark runs each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// The messages as most clients send them: the fields that matter, ~270 bytes of NDJSON.
    Standard,
    /// Every field JMessage exports (17: names, app keys, create_time, version, levels), with
    /// realistic media bodies (ids, CRCs, sizes, hashes): ~450 bytes of NDJSON a message.
    Full,
    /// Many groups (50,000) and chatrooms (5,000) by default, activity spread flat (Zipf
    /// exponent 0.6): each a small share of the app's traffic, scattered through the day.
    Sparse,
}

impl Profile {
    /// Default populations, and the Zipf exponent of group and chatroom activity.
    fn populations(self) -> (u32, u32, u32, f64) {
        match self {
            Profile::Standard | Profile::Full => (20_000, 2_000, 50, 1.07),
            Profile::Sparse => (20_000, 50_000, 5_000, 0.6),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct LoadgenArgs {
    /// The kind of traffic: standard, full (every exported field), sparse (many small groups
    /// and chatrooms)
    #[arg(long, value_enum, default_value_t = Profile::Standard)]
    pub profile: Profile,
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
    /// Users (default: 20000)
    #[arg(long)]
    pub users: Option<u32>,
    /// Groups (default: 2000; sparse 50000)
    #[arg(long)]
    pub groups: Option<u32>,
    /// Chatrooms (default: 50; sparse 5000)
    #[arg(long)]
    pub chatrooms: Option<u32>,
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
    /// When posting, at most this many messages a second (batches are released on schedule);
    /// as fast as the server takes them when absent
    #[arg(long)]
    pub rate: Option<f64>,
    /// No progress bar
    #[arg(long)]
    pub quiet: bool,
    /// Live traffic: each message carries the time it is due to be posted at (from the start,
    /// --rate messages a second) instead of a time in the --days ending at --end; needs --rate
    #[arg(long, requires = "rate")]
    pub live: bool,
}

impl LoadgenArgs {
    /// The rate live traffic is generated at, when it is live.
    pub fn live_rate(&self) -> Option<f64> {
        self.rate.filter(|r| self.live && *r > 0.0)
    }

    /// Users, groups and chatrooms, and the Zipf exponent of group and chatroom activity: as
    /// given, else the profile's.
    pub fn populations(&self) -> (u32, u32, u32, f64) {
        let (u, g, c, s) = self.profile.populations();
        (
            self.users.unwrap_or(u),
            self.groups.unwrap_or(g),
            self.chatrooms.unwrap_or(c),
            s,
        )
    }

    /// The traffic `serve --demo` fills its app with: a week ending now.
    pub fn for_demo(messages: u64, report_tz: &str) -> Self {
        LoadgenArgs {
            profile: Profile::Standard,
            seed: 42,
            messages,
            days: 7,
            end: "now".into(),
            report_tz: report_tz.into(),
            users: Some(5_000),
            groups: Some(300),
            chatrooms: Some(20),
            first_msgid: 1,
            format: "ndjson".into(),
            out: "-".into(),
            url: None,
            app_key: None,
            master_secret: None,
            concurrency: 1,
            batch: 5_000,
            rate: None,
            quiet: true,
            live: false,
        }
    }
}

/// One generated event.
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
                        let _ = write!(
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
                        // The full profile's other exported fields, in the order bench.py
                        // declares them.
                        if let Some(f) = &m.full {
                            let _ = write!(
                                line,
                                ",{},{},{},{},{},1,0,0",
                                csv_field(&f.target_name),
                                csv_field(&f.from_name),
                                csv_field(&f.appkey),
                                csv_field(&f.appkey),
                                m.ctime.div_euclid(1000),
                            );
                        }
                        line.push('\n');
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

#[cfg(test)]
mod tests;
