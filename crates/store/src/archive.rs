//! Backups: a store's apps and events as of one instant, written as a versioned archive
//! (gzip-compressed NDJSON), and the restore that feeds an archive through the ingest path of an
//! empty store of either backend. Rollups are not archived: the restore rebuilds them from the
//! events, by the one set of rules every ingest follows.
//!
//! The archive, line by line:
//! 1. `{"imreport_backup":1,"created_ms":…,"report_tz":"…"}`
//! 2. per app, `{"app":{"app_key":…,"name":…,"secret":{"salt":…,"sha256":…}}}`, then its events
//!    as ingest lines (`Event::write_ingest_json`): lifecycle histories, messages, and the
//!    logins that made a user active on a day without a message;
//! 3. `{"end":{"apps":N,"events":M}}`: an archive without it is incomplete and restores nothing.

use crate::{IngestOutcome, Result, Store, StoreError};
use imreport_domain::Millis;
use imreport_domain::app::{App, SecretHash};
use imreport_domain::event::{Event, Form, IngestLimits, decode_lines_from};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::sync::Arc;

/// The archive format this version writes and the newest it reads.
pub const FORMAT: u32 = 1;

/// Events per item a backup yields and per batch a restore ingests.
pub const BATCH: usize = 5000;

/// What a store's backup yields, in order: each app, then its events.
#[derive(Debug)]
pub enum BackupItem {
    App(App),
    Events(Vec<Event>),
}

/// What one backup or restore moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub apps: u64,
    pub events: u64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    imreport_backup: u32,
    created_ms: Millis,
    report_tz: String,
}

#[derive(Serialize, Deserialize)]
struct AppRecord {
    app_key: String,
    name: String,
    secret: SecretHash,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Control {
    App(AppRecord),
    End(Totals),
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::io(what, e)
}

/// Writes the archive of `store` as of one instant into `out` (compressed here), calling
/// `progress` with the events written so far. `out` gets a complete archive, its end line last,
/// or an error and no end line.
pub async fn backup<W: Write + Send + 'static>(
    store: Arc<dyn Store>,
    report_tz: &str,
    now: Millis,
    out: W,
    progress: impl Fn(Totals) + Send + 'static,
) -> Result<Totals> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<BackupItem>(4);
    let header = Header {
        imreport_backup: FORMAT,
        created_ms: now,
        report_tz: report_tz.to_owned(),
    };
    // Compressing and writing are blocking work: a thread of their own, fed by the store.
    let writer = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
        let mut line = serde_json::to_vec(&header).expect("serializable");
        line.push(b'\n');
        gz.write_all(&line).map_err(io("writing the archive"))?;
        let (mut totals, mut key) = (Totals::default(), String::new());
        while let Some(item) = rx.blocking_recv() {
            line.clear();
            match item {
                BackupItem::App(app) => {
                    totals.apps += 1;
                    key = app.key.clone();
                    let c = Control::App(AppRecord {
                        app_key: app.key,
                        name: app.name,
                        secret: app.secret,
                    });
                    serde_json::to_writer(&mut line, &c).expect("serializable");
                    line.push(b'\n');
                }
                BackupItem::Events(events) => {
                    totals.events += events.len() as u64;
                    for e in &events {
                        e.write_ingest_json(&key, &mut line);
                        line.push(b'\n');
                    }
                }
            }
            gz.write_all(&line).map_err(io("writing the archive"))?;
            progress(totals);
        }
        Ok((gz, totals))
    });
    let produced = store.backup(tx).await;
    let (mut gz, totals) = writer
        .await
        .map_err(|e| StoreError::Internal(format!("the archive writer failed: {e}")))??;
    produced?;
    tokio::task::spawn_blocking(move || -> Result<Totals> {
        let mut line = serde_json::to_vec(&Control::End(totals)).expect("serializable");
        line.push(b'\n');
        gz.write_all(&line).map_err(io("writing the archive"))?;
        let mut out = gz.finish().map_err(io("writing the archive"))?;
        out.flush().map_err(io("writing the archive"))?;
        Ok(totals)
    })
    .await
    .map_err(|e| StoreError::Internal(format!("the archive writer failed: {e}")))?
}

/// An archive's header, checked.
pub struct Opened {
    pub created_ms: Millis,
    pub report_tz: String,
}

fn invalid(msg: String) -> StoreError {
    StoreError::Invalid(imreport_domain::Error::invalid(msg))
}

fn read_line(input: &mut dyn BufRead, line: &mut Vec<u8>, n: &mut usize) -> Result<bool> {
    line.clear();
    let got = input
        .read_until(b'\n', line)
        .map_err(|e| invalid(format!("cannot read the archive after line {n}: {e}")))?;
    if got > 0 {
        *n += 1;
    }
    Ok(got > 0)
}

fn header(input: &mut dyn BufRead, line: &mut Vec<u8>, n: &mut usize) -> Result<Opened> {
    if !read_line(input, line, n)? {
        return Err(invalid("the archive is empty".into()));
    }
    let h: Header = serde_json::from_slice(line)
        .map_err(|_| invalid("this is not an imreport backup archive".into()))?;
    if h.imreport_backup > FORMAT {
        return Err(invalid(format!(
            "the archive is in format {}, newer than this imreport reads ({FORMAT}); restore it with a newer imreport",
            h.imreport_backup
        )));
    }
    Ok(Opened {
        created_ms: h.created_ms,
        report_tz: h.report_tz,
    })
}

fn control(line: &[u8]) -> Option<Control> {
    // Event lines start `{"event"`; only control lines are tried as such.
    if line.starts_with(b"{\"app\"") || line.starts_with(b"{\"end\"") {
        serde_json::from_slice(line).ok()
    } else {
        None
    }
}

/// Reads a whole archive without loading anything: its header, and whether it ends with an end
/// line whose totals match what it holds (so a cut-off or corrupt archive restores nothing).
pub fn verify(input: &mut dyn BufRead) -> Result<(Opened, Totals)> {
    let (mut line, mut n) = (Vec::new(), 0);
    let opened = header(input, &mut line, &mut n)?;
    let mut seen = Totals::default();
    while read_line(input, &mut line, &mut n)? {
        match control(&line) {
            Some(Control::App(_)) => seen.apps += 1,
            Some(Control::End(end)) => {
                if end != seen {
                    return Err(invalid(format!(
                        "the archive's end line (line {n}) counts {} apps and {} events, but it holds {} and {}: it is corrupt",
                        end.apps, end.events, seen.apps, seen.events
                    )));
                }
                if read_line(input, &mut line, &mut n)? {
                    return Err(invalid(format!(
                        "the archive goes on after its end line (line {}): it is corrupt",
                        n - 1
                    )));
                }
                return Ok((opened, seen));
            }
            None if seen.apps == 0 => {
                return Err(invalid(format!(
                    "line {n} of the archive is an event before any app: it is corrupt"
                )));
            }
            None => seen.events += 1,
        }
    }
    Err(invalid(format!(
        "the archive ends at line {n} without its end line: it is incomplete (a backup that did not finish, or a cut-off copy)"
    )))
}

/// Loads an archive into `store`, which must hold no app: creates each app with its secret hash
/// and ingests its events in batches, by every ingest rule (events older than the store's
/// retention are expired, as they would be if sent now). `progress` is called after each batch.
pub async fn restore(
    store: &dyn Store,
    input: &mut dyn BufRead,
    progress: &(dyn Fn(Totals) + Sync),
) -> Result<(Totals, IngestOutcome)> {
    let existing = store.list_apps().await?;
    if !existing.is_empty() {
        return Err(invalid(format!(
            "the target already holds {} app(s) ({}): restore loads only into an empty data dir or database",
            existing.len(),
            existing
                .iter()
                .map(|a| a.key.as_str())
                .take(5)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let (mut line, mut n) = (Vec::new(), 0);
    let opened = header(input, &mut line, &mut n)?;
    // Events were accepted by the source up to 5 minutes ahead of its clock.
    let now = imreport_domain::time::now_ms().max(opened.created_ms);
    let limits = IngestLimits {
        max_events: usize::MAX,
        max_body_bytes: usize::MAX,
        max_msg_body_bytes: usize::MAX,
    };
    let (mut totals, mut outcome) = (Totals::default(), IngestOutcome::default());
    let mut app: Option<App> = None;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let more = read_line(input, &mut line, &mut n)?;
        let ctl = if more { control(&line) } else { None };
        if (!more || ctl.is_some() || batch.len() >= BATCH) && !batch.is_empty() {
            let a = app.as_ref().expect("events follow an app");
            totals.events += batch.len() as u64;
            outcome += store.ingest(a, std::mem::take(&mut batch)).await?;
            progress(totals);
        }
        if !more {
            return Err(invalid(format!(
                "the archive ends at line {n} without its end line: it is incomplete"
            )));
        }
        match ctl {
            Some(Control::App(r)) => {
                totals.apps += 1;
                app = Some(store.create_app(&r.app_key, &r.name, r.secret).await?);
            }
            Some(Control::End(end)) => {
                if end != totals {
                    return Err(invalid(format!(
                        "the archive's end line counts {} apps and {} events, but it held {} and {}",
                        end.apps, end.events, totals.apps, totals.events
                    )));
                }
                return Ok((totals, outcome));
            }
            None => {
                let a = app.as_ref().ok_or_else(|| {
                    invalid(format!(
                        "line {n} of the archive is an event before any app"
                    ))
                })?;
                let mut events = decode_lines_from(&line, &a.key, now, &limits, Form::Events, n)
                    .map_err(|e| invalid(format!("the archive is corrupt: {e}")))?;
                batch.append(&mut events);
            }
        }
    }
}
