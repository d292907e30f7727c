//! `imreport import FILE|-`: loads NDJSON of ingest events, or of Report V2 message objects (as
//! `imreport export` writes them, so an export of JMessage or of another imreport imports as
//! it is), `.gz` read transparently, into a running server or straight into a store. Every
//! line is checked first; a bad line is reported with its number and skipped; the rest goes in
//! batches with every ingest rule, so importing the same file twice stores nothing twice
//! (messages are known by their `msgid`).

use crate::client::{DestArgs, Destination};
use anyhow::{Context, Result, bail};
use clap::Args;
use imreport_domain::event::{Event, Form, IngestLimits, decode_lines_from};
use imreport_store::IngestOutcome;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, Read};
use std::time::Instant;

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// NDJSON file of ingest events or message objects (`-` for standard input; `.gz`, or
    /// gzip data, is decompressed)
    pub file: String,
    #[command(flatten)]
    pub dest: DestArgs,
    /// Events per batch
    #[arg(long, default_value_t = 5000)]
    pub batch: usize,
    /// No progress bar
    #[arg(long)]
    pub quiet: bool,
}

/// Bad lines listed in full in the summary; the rest are counted.
const BAD_LINES_SHOWN: usize = 20;

/// Counts the compressed (or plain) bytes read, for the progress bar.
struct Counted<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// The input as lines of text, decompressed when it is gzip (by name or by its magic bytes).
fn open(file: &str, bar: &ProgressBar) -> Result<Box<dyn BufRead>> {
    let raw: Box<dyn Read> = if file == "-" {
        Box::new(std::io::stdin())
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("cannot open {file}"))?;
        if let Ok(meta) = f.metadata() {
            bar.set_length(meta.len());
        }
        Box::new(f)
    };
    let mut counted = std::io::BufReader::new(Counted {
        inner: raw,
        bar: bar.clone(),
    });
    let gz = counted.fill_buf()?.starts_with(&[0x1f, 0x8b]) || file.ends_with(".gz");
    Ok(if gz {
        Box::new(std::io::BufReader::new(
            flate2::bufread::MultiGzDecoder::new(counted),
        ))
    } else {
        Box::new(counted)
    })
}

pub async fn run(a: ImportArgs) -> Result<()> {
    let sink = Destination::open(&a.dest).await?;
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {binary_bytes}/{binary_total_bytes} {wide_bar} {binary_bytes_per_sec} eta {eta} {msg}",
        )
        .expect("valid template"),
    );
    let mut input = open(&a.file, &bar)?;
    let limits = IngestLimits::default();
    let batch = a.batch.clamp(1, limits.max_events);
    let started = Instant::now();
    let (mut total, mut lines, mut bad, mut unnumbered) =
        (IngestOutcome::default(), 0usize, Vec::new(), 0u64);
    let mut events = Vec::with_capacity(batch);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {} after line {lines}", a.file))?;
        if n > 0 {
            lines += 1;
            let now = imreport_domain::time::now_ms();
            match decode_lines_from(
                &line,
                &a.dest.app_key,
                now,
                &limits,
                Form::EventsOrMessages,
                lines,
            ) {
                Ok(mut ev) => {
                    unnumbered += ev
                        .iter()
                        .filter(|e| matches!(e, Event::Message(m) if m.msgid == 0))
                        .count() as u64;
                    events.append(&mut ev);
                }
                Err(e) => bad.push(e.to_string()),
            }
        }
        if events.len() >= batch || (n == 0 && !events.is_empty()) {
            total += sink
                .send(&a.dest.app_key, std::mem::take(&mut events))
                .await
                .with_context(|| format!("importing the batch that ends at line {lines}"))?;
            bar.set_message(format!("{lines} lines, {} accepted", total.accepted));
        }
        if n == 0 {
            break;
        }
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    for b in bad.iter().take(BAD_LINES_SHOWN) {
        eprintln!("import: skipped {b}");
    }
    if bad.len() > BAD_LINES_SHOWN {
        eprintln!(
            "import: ... and {} more bad lines",
            bad.len() - BAD_LINES_SHOWN
        );
    }
    if unnumbered > 0 {
        eprintln!(
            "import: {unnumbered} messages had no msgid and were given new ones: importing the file again would store them again"
        );
    }
    eprintln!(
        "import: {lines} lines in {secs:.1} s ({:.0} lines/s): {} accepted, {} duplicates, {} expired, {} bad lines",
        lines as f64 / secs.max(1e-9),
        total.accepted,
        total.duplicates,
        total.expired,
        bad.len()
    );
    if !bad.is_empty() {
        bail!("{} lines could not be imported (see above)", bad.len());
    }
    Ok(())
}
