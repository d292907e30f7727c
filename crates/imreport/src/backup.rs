//! `imreport backup` and `imreport restore`: an archive of everything stored (see
//! [`imreport_store::archive`]) taken from a running server without stopping ingest (through its
//! admin API), from a stopped data dir, or from PostgreSQL (a repeatable-read snapshot, servers
//! running or not); and loaded into an empty data dir or database of either backend, which is
//! also how a deployment moves between the embedded store and PostgreSQL.

use crate::apps::{Target, open_target};
use crate::settings::SettingsArgs;
use anyhow::{Context, Result, bail};
use clap::Args;
use imreport_store::archive::{self, Totals};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// The archive to write (created owner-only; refused if it exists)
    #[arg(long, short)]
    pub out: PathBuf,
    /// No progress bar
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The archive `imreport backup` wrote
    pub file: PathBuf,
    /// No progress bar
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

fn bar(quiet: bool, template: &str) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// A file being written next to its final name, renamed into place once complete and synced,
/// removed if anything fails first.
struct Partial {
    path: PathBuf,
    done: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub async fn backup(a: BackupArgs) -> Result<()> {
    if a.out.exists() {
        bail!(
            "{} already exists: choose another name, or remove it first",
            a.out.display()
        );
    }
    let s = a.settings.resolve()?;
    let mut partial = Partial {
        path: a.out.with_extension("partial"),
        done: false,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial.path)
        .with_context(|| format!("cannot create {}", partial.path.display()))?;
    let started = Instant::now();
    let pb = bar(
        a.quiet,
        "{spinner} {elapsed_precise} {binary_bytes} written {binary_bytes_per_sec} {msg}",
    );
    let out = Counted {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        bar: pb.clone(),
    };
    match open_target(&s).await? {
        Target::Online(ep) => {
            // The running server writes the archive from one snapshot of its store; this side
            // saves the bytes.
            let mut resp = reqwest::Client::new()
                .get(format!("{}/admin/v1/backup", ep.url))
                .bearer_auth(&ep.token)
                .send()
                .await
                .context("cannot reach the running server's admin API")?;
            if !resp.status().is_success() {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                bail!("the server refused the backup ({status}): {body}");
            }
            let mut out = out;
            while let Some(chunk) = resp
                .chunk()
                .await
                .context("the backup stream broke off (see the server's log)")?
            {
                out.write_all(&chunk)?;
            }
            finish(out)?;
        }
        Target::Offline(store) => {
            let p = pb.clone();
            let totals = archive::backup(
                store,
                &s.report_tz,
                imreport_domain::time::now_ms(),
                Finishing(Some(out)),
                move |t: Totals| p.set_message(format!("{} apps, {} events", t.apps, t.events)),
            )
            .await?;
            pb.set_message(format!("{} apps, {} events", totals.apps, totals.events));
        }
    }
    pb.finish_and_clear();
    // Read back: what was written is a whole archive (an end line matching its contents).
    let (_, totals) = verify(&partial.path).context("the archive written does not verify")?;
    std::fs::rename(&partial.path, &a.out)
        .with_context(|| format!("cannot rename into {}", a.out.display()))?;
    partial.done = true;
    sync_dir(&a.out);
    eprintln!(
        "backup: {} apps, {} events in {:.1} s, {} bytes, to {}",
        totals.apps,
        totals.events,
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0),
        a.out.display()
    );
    Ok(())
}

/// The archive's writer, synced when the archive is finished (at its last flush).
struct Finishing(Option<Counted<std::io::BufWriter<std::fs::File>>>);

impl Write for Finishing {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.as_mut().expect("open").write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.as_mut().expect("open").flush()?;
        let f = self.0.as_mut().expect("open").inner.get_ref();
        f.sync_all()
    }
}

fn finish(mut out: Counted<std::io::BufWriter<std::fs::File>>) -> Result<()> {
    out.flush()?;
    out.inner.get_ref().sync_all()?;
    Ok(())
}

fn sync_dir(file: &Path) {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// Counts the bytes written, for the progress bar.
struct Counted<W: Write> {
    inner: W,
    bar: ProgressBar,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn verify(path: &Path) -> Result<(archive::Opened, Totals)> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut raw = std::io::BufReader::new(f);
    if !raw.fill_buf()?.starts_with(&[0x1f, 0x8b]) {
        bail!(
            "{} is not an imreport backup archive (archives are gzip-compressed)",
            path.display()
        );
    }
    let mut input = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(raw));
    Ok(archive::verify(&mut input)?)
}

pub async fn restore(a: RestoreArgs) -> Result<()> {
    let s = a.settings.resolve()?;
    // Checked whole before anything is loaded: a cut-off or corrupt archive restores nothing.
    let (opened, expected) = verify(&a.file)?;
    if opened.report_tz != s.report_tz {
        eprintln!(
            "restore: the archive was taken with report_tz {}; this store uses {}: statistics will be bucketed in {}",
            opened.report_tz, s.report_tz, s.report_tz
        );
    }
    let stores = crate::launch::open_store(&s, &imreport_domain::Clock::System)
        .await
        .context("cannot open the target store (restore needs it stopped: no server on it)")?;
    let pb = bar(
        a.quiet,
        "{spinner} {elapsed_precise} {wide_bar} {pos}/{len} events {per_sec} eta {eta}",
    );
    pb.set_length(expected.events);
    let started = Instant::now();
    let f = std::fs::File::open(&a.file)
        .with_context(|| format!("cannot open {}", a.file.display()))?;
    let mut input = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(
        std::io::BufReader::new(f),
    ));
    let p = pb.clone();
    let (totals, outcome) = archive::restore(stores.store.as_ref(), &mut input, &move |t| {
        p.set_position(t.events)
    })
    .await?;
    pb.finish_and_clear();
    eprintln!(
        "restore: {} apps, {} events in {:.1} s: {} accepted, {} duplicates, {} expired (older than this store's retention)",
        totals.apps,
        totals.events,
        started.elapsed().as_secs_f64(),
        outcome.accepted,
        outcome.duplicates,
        outcome.expired
    );
    Ok(())
}
