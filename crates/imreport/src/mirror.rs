//! `imreport mirror`: copies an app's history from a Report V2 endpoint (JiGuang's, or another
//! imreport) into imreport, then follows it.
//!
//! The range is walked in windows of at most 7 days (the API's limit), page by page; each
//! page's messages are stored through the ingest rules (idempotent by `msgid`) before the
//! position in the state file moves past them, so a mirror killed at any point resumes where
//! it stopped and stores nothing twice. A cursor that expires (or any refused next page)
//! restarts the window at the second of the last message read: that second is read again and
//! its messages are duplicates the destination drops. Once caught up, every `--every` seconds
//! it reads again from `--overlap` seconds before where it stopped, for messages that arrive
//! late. The source's `429` and `503` are waited out as `Retry-After` says.

use crate::client::{DestArgs, Destination, retry_after};
use crate::export::PageBody;
use anyhow::{Context, Result, bail};
use clap::Args;
use imreport_domain::Millis;
use imreport_domain::event::{Form, IngestLimits, decode_lines_from};
use imreport_domain::time::{MILLIS_PER_DAY, ReportTz, now_ms, parse_second};
use imreport_store::IngestOutcome;
use indicatif::{ProgressBar, ProgressStyle};
use jiff::ToSpan;
use jiff::civil::DateTime;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Args)]
pub struct MirrorArgs {
    /// The Report V2 endpoint to copy from: https://report.im.jpush.cn, or another imreport
    #[arg(long)]
    pub source: String,
    /// The app's key at the source
    #[arg(long)]
    pub source_app_key: String,
    /// The app's master secret at the source
    #[arg(long)]
    pub source_master_secret: String,
    /// The zone the source reads begin_time/end_time in (JMessage's is Asia/Shanghai; for an
    /// imreport source, its report_tz)
    #[arg(long, default_value = "Asia/Shanghai")]
    pub source_tz: String,
    #[command(flatten)]
    pub dest: DestArgs,
    /// First second to copy, `yyyy-MM-dd HH:mm:ss` in the source's zone (default: 60 days ago,
    /// all JMessage keeps); ignored when the state file holds a position
    #[arg(long)]
    pub since: Option<String>,
    /// Last second to copy; the mirror then stops (default: follow new messages)
    #[arg(long)]
    pub until: Option<String>,
    /// Stop once caught up with the present instead of following
    #[arg(long)]
    pub once: bool,
    /// Seconds between reads of new messages once caught up
    #[arg(long, default_value_t = 60)]
    pub every: u64,
    /// Seconds each read of new messages goes back before the last one ended, for messages
    /// stored late at the source
    #[arg(long, default_value_t = 300)]
    pub overlap: u64,
    /// Messages per page (1..=1000)
    #[arg(long, default_value_t = 1000)]
    pub count: u16,
    /// Where the position is kept (default: mirror-SOURCE_APP_KEY.json in the current
    /// directory)
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// No progress bar
    #[arg(long)]
    pub quiet: bool,
}

/// How far a mirror has come: every message of the source with `msg_ctime < next_ms` (as of
/// when it was read) is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    source: String,
    source_app_key: String,
    app_key: String,
    next_ms: Millis,
    /// The range given was copied (or the mirror caught up with the present once): reads now
    /// go back by the overlap.
    caught_up: bool,
}

impl State {
    fn load(path: &Path) -> Result<Option<State>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a mirror state file", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Replaces the file atomically and durably: a crash leaves the old position or the new.
    fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// What the reader hands the writer, in source order.
enum Item {
    /// A page's messages (NDJSON) and the position to resume from once they are stored: the
    /// last one's `msg_ctime` (its second is read again on a restart).
    Page { ndjson: Vec<u8>, resume_ms: Millis },
    /// A window is done: everything before `next_ms` is read.
    Done { next_ms: Millis },
}

#[derive(Default)]
struct Tally {
    read: u64,
    pages: u64,
    windows: u64,
    restarts: u64,
    waits: u64,
    stored: IngestOutcome,
    rejected: u64,
}

#[derive(Deserialize)]
struct Ctime {
    msg_ctime: Millis,
}

/// Consecutive failures (connections, 5xx other than 503) tolerated before giving up.
const MAX_FAILURES: u32 = 10;
/// Restarts of one window that make no progress before giving up.
const MAX_IDLE_RESTARTS: u32 = 5;
/// Longest wait for the source, whatever its `Retry-After` says.
const MAX_WAIT: Duration = Duration::from_secs(120);
/// Bad messages named in full; the rest are counted.
const BAD_SHOWN: u64 = 20;

struct Source {
    http: reqwest::Client,
    base: String,
    key: String,
    secret: String,
    count: u16,
    tz: ReportTz,
}

/// What a request to the source came to.
enum Fetched {
    Ok(bytes::Bytes),
    /// Refused with a 4xx (the message is the source's).
    Refused(u16, String),
}

impl Source {
    /// GETs a URL, waiting out `429`/`503` and retrying failures with a backoff.
    async fn get(&self, url: &str, tally: &mut Tally) -> Result<Fetched> {
        let mut failures = 0;
        let mut pause = Duration::from_millis(250);
        loop {
            let r = self
                .http
                .get(url)
                .basic_auth(&self.key, Some(&self.secret))
                .send()
                .await;
            let retry = match r {
                Ok(r) if r.status().is_success() => match r.bytes().await {
                    Ok(b) => return Ok(Fetched::Ok(b)),
                    Err(e) => format!("the page broke off: {e}"),
                },
                Ok(r) if r.status() == 429 || r.status() == 503 => {
                    tally.waits += 1;
                    let wait = retry_after(&r).unwrap_or(pause).min(MAX_WAIT);
                    tracing::debug!(status = %r.status(), ?wait, "the source asks to wait");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status().as_u16();
                    return Ok(Fetched::Refused(status, r.text().await.unwrap_or_default()));
                }
                Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => format!("cannot reach {}: {e}", self.base),
            };
            failures += 1;
            if failures >= MAX_FAILURES {
                bail!("the source failed {failures} times in a row; last: {retry}");
            }
            tracing::warn!(%retry, "retrying the source");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(30));
        }
    }

    fn first_page(&self, begin: DateTime, end: DateTime) -> String {
        let q = |dt: DateTime| {
            form_urlencoded::byte_serialize(dt.strftime("%Y-%m-%d %H:%M:%S").to_string().as_bytes())
                .collect::<String>()
        };
        format!(
            "{}/v2/messages?count={}&begin_time={}&end_time={}",
            self.base,
            self.count,
            q(begin),
            q(end)
        )
    }

    fn next_page(&self, cursor: &str) -> String {
        let c: String = form_urlencoded::byte_serialize(cursor.as_bytes()).collect();
        format!("{}/v2/messages?cursor={c}", self.base)
    }

    /// The second an instant falls in, as the source writes it.
    fn shown(&self, ms: Millis) -> String {
        self.second(ms).strftime("%Y-%m-%d %H:%M:%S").to_string()
    }

    /// The second an instant falls in, in the source's zone.
    fn second(&self, ms: Millis) -> DateTime {
        let dt = self.tz.civil(ms);
        dt.with().subsec_nanosecond(0).build().unwrap_or(dt)
    }

    /// Reads every message from the second of `from_ms` to that of `to_ms` into `out`, window
    /// by window.
    async fn read_range(
        &self,
        from_ms: Millis,
        to_ms: Millis,
        out: &mpsc::Sender<Item>,
        tally: &mut Tally,
    ) -> Result<()> {
        let last = self.second(to_ms);
        let mut begin = self.second(from_ms);
        let mut idle_restarts = 0;
        while begin <= last {
            let end = begin.checked_add(7.days()).map_or(last, |e| e.min(last));
            let mut url = self.first_page(begin, end);
            let (mut total, mut walked, mut resume) = (None, 0u64, None);
            let restart = loop {
                let body = match self.get(&url, tally).await? {
                    Fetched::Ok(b) => b,
                    // A next page refused: its cursor expired (or the source forgot it).
                    Fetched::Refused(status, why) if total.is_some() => {
                        tracing::info!(status, %why, "a cursor was refused; restarting the window");
                        break true;
                    }
                    Fetched::Refused(status, why) => {
                        bail!("the source refused {url}: {status} {why}")
                    }
                };
                let page: PageBody = serde_json::from_slice(&body)
                    .context("the source sent something not a page")?;
                total.get_or_insert(page.total);
                tally.pages += 1;
                walked += page.messages.len() as u64;
                if let Some(m) = page.messages.last() {
                    let ms = serde_json::from_str::<Ctime>(m.get())
                        .context("a message without msg_ctime")?
                        .msg_ctime;
                    let mut ndjson = Vec::with_capacity(body.len());
                    for m in &page.messages {
                        ndjson.extend_from_slice(m.get().as_bytes());
                        ndjson.push(b'\n');
                    }
                    tally.read += page.messages.len() as u64;
                    resume = Some(ms);
                    if out
                        .send(Item::Page {
                            ndjson,
                            resume_ms: ms,
                        })
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                match page.cursor {
                    Some(c) => url = self.next_page(c),
                    None => break false,
                }
            };
            if restart {
                tally.restarts += 1;
                let at = resume.map(|ms| self.second(ms)).unwrap_or(begin);
                idle_restarts = if at > begin { 0 } else { idle_restarts + 1 };
                if idle_restarts >= MAX_IDLE_RESTARTS {
                    bail!(
                        "cursors keep expiring at {at} before a page is stored: store faster (a closer or less busy destination) or raise the source's cursor TTL"
                    );
                }
                begin = at;
                continue;
            }
            idle_restarts = 0;
            if Some(walked) != total {
                tracing::warn!(
                    walked,
                    total,
                    %begin,
                    %end,
                    "the source's walk yielded a number of messages other than its total"
                );
            }
            tally.windows += 1;
            let next_ms = self.tz.end_of(end)? + 1;
            if out.send(Item::Done { next_ms }).await.is_err() {
                return Ok(());
            }
            begin = match end.checked_add(1.second()) {
                Ok(b) => b,
                Err(_) => break,
            };
        }
        Ok(())
    }
}

/// Stores what the reader hands over, moving the state file past each page once it is
/// durable.
struct Writer<'a> {
    dest: &'a Destination,
    app_key: &'a str,
    state: State,
    path: &'a Path,
    bar: &'a ProgressBar,
    from_ms: Millis,
}

impl Writer<'_> {
    async fn run(&mut self, mut rx: mpsc::Receiver<Item>, tally: &mut Tally) -> Result<()> {
        let limits = IngestLimits::default();
        while let Some(item) = rx.recv().await {
            let (ndjson, next_ms) = match item {
                Item::Page { ndjson, resume_ms } => (ndjson, resume_ms),
                Item::Done { next_ms } => (Vec::new(), next_ms),
            };
            let now = now_ms();
            let mut events = Vec::new();
            for (i, line) in ndjson.split(|b| *b == b'\n').enumerate() {
                if line.is_empty() {
                    continue;
                }
                match decode_lines_from(
                    line,
                    self.app_key,
                    now,
                    &limits,
                    Form::EventsOrMessages,
                    i + 1,
                ) {
                    Ok(mut e) => events.append(&mut e),
                    Err(e) => {
                        tally.rejected += 1;
                        if tally.rejected <= BAD_SHOWN {
                            let shown = String::from_utf8_lossy(&line[..line.len().min(200)]);
                            self.bar
                                .suspend(|| eprintln!("mirror: skipped a message ({e}): {shown}"));
                        }
                    }
                }
            }
            if !events.is_empty() {
                tally.stored += self.dest.send(self.app_key, events).await?;
            }
            if next_ms > self.state.next_ms {
                self.state.next_ms = next_ms;
                self.state.save(self.path)?;
            }
            self.bar
                .set_position(((next_ms - self.from_ms) / 1000).max(0) as u64);
            self.bar.set_message(format!(
                "{} messages, {} new",
                tally.read, tally.stored.accepted
            ));
        }
        Ok(())
    }
}

fn parse_at(tz: &ReportTz, flag: &str, value: &str) -> Result<Millis> {
    let dt = parse_second(flag, value)?;
    Ok(tz.start_of(dt)?)
}

pub async fn run(a: MirrorArgs) -> Result<()> {
    anyhow::ensure!((1..=1000).contains(&a.count), "--count must be 1..=1000");
    let tz = ReportTz::new(&a.source_tz)?;
    let source = Source {
        http: reqwest::Client::new(),
        base: a.source.trim_end_matches('/').to_owned(),
        key: a.source_app_key.clone(),
        secret: a.source_master_secret.clone(),
        count: a.count,
        tz: tz.clone(),
    };
    let until = match &a.until {
        Some(u) => Some(tz.end_of(parse_second("--until", u)?)?),
        None => None,
    };
    let path = a
        .state
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("mirror-{}.json", a.source_app_key)));
    let mut state = match State::load(&path)? {
        Some(s) => {
            if s.source != source.base
                || s.source_app_key != a.source_app_key
                || s.app_key != a.dest.app_key
            {
                bail!(
                    "{} belongs to the mirror of {} ({}) into {}; give this one its own --state",
                    path.display(),
                    s.source,
                    s.source_app_key,
                    s.app_key
                );
            }
            eprintln!(
                "mirror: resuming from {} ({})",
                source.shown(s.next_ms),
                path.display()
            );
            s
        }
        None => State {
            source: source.base.clone(),
            source_app_key: a.source_app_key.clone(),
            app_key: a.dest.app_key.clone(),
            next_ms: match &a.since {
                Some(s) => parse_at(&tz, "--since", s)?,
                None => now_ms() - 60 * MILLIS_PER_DAY,
            },
            caught_up: false,
        },
    };
    let dest = Destination::open(&a.dest).await?;
    let started = Instant::now();
    let mut tally = Tally::default();
    crate::serve::init_logging("warn", false);
    let stop = crate::serve::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let round_start = now_ms();
        let to_ms = until.unwrap_or(round_start - 1000);
        let overlap = if state.caught_up {
            a.overlap as Millis * 1000
        } else {
            0
        };
        let from_ms = state.next_ms - overlap;
        let bar = if a.quiet || state.caught_up {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(((to_ms - from_ms) / 1000).max(0) as u64)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {wide_bar} {percent}% of the range, eta {eta} {msg}",
            )
            .expect("valid template"),
        );
        let before = (tally.read, tally.stored.accepted);
        if from_ms <= to_ms {
            let (tx, rx) = mpsc::channel(4);
            let mut writer = Writer {
                dest: &dest,
                app_key: &a.dest.app_key,
                state: state.clone(),
                path: &path,
                bar: &bar,
                from_ms,
            };
            // Reading and storing overlap: the next pages are fetched while one is stored.
            let mut read_tally = Tally::default();
            let reading = async {
                let r = source
                    .read_range(from_ms, to_ms, &tx, &mut read_tally)
                    .await;
                drop(tx);
                r
            };
            let copied = async {
                let (r, w) = tokio::join!(reading, writer.run(rx, &mut tally));
                r.and(w)
            };
            let interrupted = tokio::select! {
                r = copied => { r?; false }
                _ = &mut stop => true,
            };
            state = writer.state.clone();
            for (t, r) in [
                (&mut tally.read, read_tally.read),
                (&mut tally.pages, read_tally.pages),
                (&mut tally.windows, read_tally.windows),
                (&mut tally.restarts, read_tally.restarts),
                (&mut tally.waits, read_tally.waits),
            ] {
                *t += r;
            }
            bar.finish_and_clear();
            if interrupted {
                eprintln!("mirror: interrupted; the next run resumes where this one stopped");
                break;
            }
        }
        if !state.caught_up {
            state.caught_up = true;
            state.save(&path)?;
        } else if tally.read > before.0 {
            eprintln!(
                "mirror: to {}: {} read, {} new",
                source.shown(to_ms),
                tally.read - before.0,
                tally.stored.accepted - before.1
            );
        }
        if until.is_some() || a.once {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(a.every.max(1))) => {}
            _ = &mut stop => break,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "mirror: {} messages read in {} pages over {} windows in {secs:.1} s ({:.0}/s): {} stored, {} already there, {} expired, {} rejected; {} cursor restarts, {} waits for the source; next from {}",
        tally.read,
        tally.pages,
        tally.windows,
        tally.read as f64 / secs.max(1e-9),
        tally.stored.accepted,
        tally.stored.duplicates,
        tally.stored.expired,
        tally.rejected,
        tally.restarts,
        tally.waits,
        source.shown(state.next_ms),
    );
    if tally.rejected > 0 {
        bail!(
            "{} messages could not be stored (see above)",
            tally.rejected
        );
    }
    Ok(())
}
