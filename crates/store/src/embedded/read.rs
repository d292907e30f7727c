//! Reads: one page of a scope, and `total` from per-hour counters plus at most two partial hours.

use super::{Format, Inner, Partition, keys};
use crate::archive::{BATCH, BackupItem};
use crate::{DaysReport, Page, PageRequest, Result, StoreError};
use fjall::{Keyspace, Readable, Snapshot};
use imreport_domain::Millis;
use imreport_domain::app::App;
use imreport_domain::cursor::{self, Position};
use imreport_domain::lifecycle::decode_history;
use imreport_domain::message::view_record;
use imreport_domain::rollup::{Busiest, DayStats, MsgCounts, Presence, decode_counts, top_tallies};
use imreport_domain::scope::Scope;
use imreport_domain::time::{MILLIS_PER_HOUR, MILLIS_PER_MINUTE, TimeRange};
use std::collections::HashMap;

impl Inner {
    /// The day partitions that exist between two instants, oldest first.
    fn partitions(&self, from: Millis, to: Millis) -> Vec<(i64, Partition)> {
        let days = self.days.read().expect("lock");
        days.range(self.pday(from)..=self.pday(to))
            .map(|(d, p)| (*d, p.clone()))
            .collect()
    }
}

fn corrupt(_: imreport_domain::message::CorruptRecord) -> StoreError {
    StoreError::Corrupt("a message record".into())
}

pub(crate) fn page(inner: &Inner, app: &App, scope: &Scope, req: PageRequest) -> Result<Page> {
    let snap = inner.db.snapshot();
    let (snapshot, total) = match req.after {
        // The first page fixes the walk: the commit sequence and the total, read from one snapshot.
        None => {
            let seq = snap
                .get(&inner.meta, "seq")?
                .map(|v| keys::u64_value(&v))
                .unwrap_or(0);
            let tally = Tally {
                inner,
                snap: &snap,
                app: app.id,
                scope,
            };
            (seq, tally.range(req.range)?)
        }
        Some(_) => (req.snapshot.upto, req.total),
    };
    let (start_ctime, start_msgid) = match req.after {
        Some(p) => (p.ctime, p.msgid.saturating_add(1)),
        None => (req.range.begin, 0),
    };
    let mut out = Out {
        key: &app.key,
        snapshot,
        want: usize::from(req.count),
        // A generated message is ~430 bytes of JSON: room for a page without regrowing (a copy).
        json: Vec::with_capacity(usize::from(req.count) * 512),
        n: 0,
        last: None,
        more: false,
    };
    let from = (start_ctime, start_msgid);
    let prefix = keys::order_prefix(app.id, scope);
    for (day, p) in inner.partitions(start_ctime, req.range.end) {
        let format = inner.format(day);
        let walk = Walk {
            snap: &snap,
            ks: &p.ks,
            records: &p.records,
            app: app.id,
            from,
            to: req.range.end,
            directory: format >= Format::RunDirectories,
        };
        let go_on = match (scope, format) {
            (Scope::App, f) if f >= Format::Runs => walk.runs(&mut out)?,
            (Scope::App, _) | (_, Format::Plain | Format::Minutes) => {
                walk.keys(&prefix, &mut out)?
            }
            _ => walk.chunks(scope, format, &mut out)?,
        };
        if !go_on {
            break;
        }
    }
    Ok(Page {
        total,
        snapshot: cursor::Snapshot::at(snapshot),
        count: out.n,
        json: out.json,
        next: if out.more { out.last } else { None },
    })
}

/// A page being assembled.
struct Out<'a> {
    key: &'a str,
    snapshot: u64,
    want: usize,
    json: Vec<u8>,
    n: usize,
    last: Option<Position>,
    more: bool,
}

impl Out<'_> {
    /// Adds a message to the page; `false` once the page is full and another message follows.
    fn push(&mut self, ctime: Millis, msgid: u64, rec: &[u8]) -> Result<bool> {
        let view = view_record(rec).map_err(corrupt)?;
        if view.seq > self.snapshot {
            return Ok(true); // committed after the walk began
        }
        if self.n == self.want {
            self.more = true;
            return Ok(false);
        }
        if self.n > 0 {
            self.json.push(b',');
        }
        view.write_json(msgid, ctime, self.key, &mut self.json);
        self.n += 1;
        self.last = Some(Position { ctime, msgid });
        Ok(true)
    }
}

/// A record waiting in [`Walk::runs`]: ordered by position only.
struct Pending {
    pos: (Millis, u64),
    run: fjall::Slice,
    bytes: std::ops::Range<usize>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.pos == other.pos
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.pos.cmp(&other.pos)
    }
}

/// One partition's part of a page: its messages from position `from` through instant `to`.
struct Walk<'a> {
    snap: &'a Snapshot,
    ks: &'a Keyspace,
    /// Where its records are (`ks` in partitions before [`Format::RecordKeyspace`]).
    records: &'a Keyspace,
    app: u32,
    from: (Millis, u64),
    to: Millis,
    /// Whether the partition's runs open with a directory ([`Format::RunDirectories`]).
    directory: bool,
}

impl Walk<'_> {
    /// From ordering keys: the app's records, or (in partitions from before index chunks) a
    /// scope's index keys. `false` once the page is full.
    fn keys(&self, prefix: &[u8], out: &mut Out) -> Result<bool> {
        let (snap, ks, app, from, to) = (self.snap, self.ks, self.app, self.from, self.to);
        // Ordering keys are records (the app's) or index keys, both in partitions from before
        // the records' keyspace, where it is `ks`.
        debug_assert!(self.records.id() == ks.id());
        let lo = keys::with_position(prefix, from.0, from.1);
        let hi = keys::with_position(prefix, to, u64::MAX);
        for kv in snap.range(ks, lo.as_slice()..=hi.as_slice()) {
            let (k, v) = kv.into_inner()?;
            let (ctime, msgid) = keys::position_of(&k);
            let rec = if k[0] == keys::MSG {
                v
            } else {
                match snap.get(ks, keys::msg_key(app, ctime, msgid))? {
                    Some(rec) => rec,
                    None => continue,
                }
            };
            if !out.push(ctime, msgid, &rec)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The app's page from its record runs. Runs of different commits can interleave (a late
    /// message, or two clients posting the same minute), so records are merged: every record at
    /// or before position `p` is in a run starting at or before `p`, so the least waiting record
    /// goes out once the next run starts after it. `false` once the page is full.
    fn runs(&self, out: &mut Out) -> Result<bool> {
        let (snap, ks, app, from, to) = (self.snap, self.records, self.app, self.from, self.to);
        let lo = keys::first_run_key(app, from.0);
        let hi = keys::msg_key(app, to, u64::MAX);
        let mut runs = snap
            .range(ks, lo.as_slice()..=hi.as_slice())
            .map(|kv| kv.into_inner())
            .peekable();
        let mut waiting: std::collections::BinaryHeap<std::cmp::Reverse<Pending>> =
            Default::default();
        loop {
            while let Some(next) = runs.peek() {
                let first = match next {
                    Ok((k, _)) => keys::position_of(k),
                    Err(_) => {
                        runs.next().expect("peeked")?;
                        unreachable!("an error was peeked")
                    }
                };
                if waiting.peek().is_some_and(|w| w.0.pos < first) {
                    break;
                }
                let (_, v) = runs.next().expect("peeked")?;
                for (pos, bytes) in keys::run_records(first, &v, self.directory) {
                    if pos >= from && pos.0 <= to {
                        let run = v.clone();
                        waiting.push(std::cmp::Reverse(Pending { pos, run, bytes }));
                    }
                }
            }
            let Some(std::cmp::Reverse(p)) = waiting.pop() else {
                return Ok(true);
            };
            if !out.push(p.pos.0, p.pos.1, &p.run[p.bytes])? {
                return Ok(false);
            }
        }
    }

    /// A scope's page from its index chunks: each hour's chunks (one per commit that wrote to
    /// it, each sorted) merged as they are decoded, so a page stops decoding where it fills
    /// rather than sorting the whole hour first; then their records (in their runs, with
    /// `runs`). `false` once the page is full.
    fn chunks(&self, scope: &Scope, format: Format, out: &mut Out) -> Result<bool> {
        let (snap, ks, app, from, to) = (self.snap, self.ks, self.app, self.from, self.to);
        let runs = format >= Format::Runs;
        let prefix = keys::scope_prefix(keys::CHUNK, app, scope);
        let lo = keys::chunk_key(&prefix, hour_of(from.0), 0);
        let hi = keys::chunk_key(&prefix, hour_of(to), u64::MAX);
        let mut hour = None;
        let mut chunks: Vec<fjall::Slice> = Vec::new();
        let mut records = Records {
            walk: self,
            runs,
            last: None,
            decoded: Vec::new(),
        };
        for kv in snap.range(ks, lo.as_slice()..=hi.as_slice()) {
            let (k, v) = kv.into_inner()?;
            let (h, seq) = keys::chunk_hour_seq(&k);
            if hour != Some(h) {
                if let Some(done) = hour
                    && !records.emit(done, &chunks, out)?
                {
                    return Ok(false);
                }
                chunks.clear();
                hour = Some(h);
            }
            if seq <= out.snapshot {
                chunks.push(v);
            } // else committed after the walk began
        }
        match hour {
            Some(h) => records.emit(h, &chunks, out),
            None => Ok(true),
        }
    }
}

/// Fetches the records of a scope's positions for [`Walk::chunks`].
struct Records<'a> {
    /// The partition, app and range walked.
    walk: &'a Walk<'a>,
    runs: bool,
    /// The run read last (neighbours in a scope's order often share one), with its records'
    /// positions and byte ranges decoded once a second record of it is wanted: finding each
    /// record by decoding the run from its start was a tenth of serving a dense scope's page.
    last: Option<((Millis, u64), fjall::Slice)>,
    decoded: Vec<((Millis, u64), std::ops::Range<usize>)>,
}

impl Records<'_> {
    /// Adds the positions of one hour's chunks within the walk's range to the page, in order.
    fn emit(&mut self, hour: u32, chunks: &[fjall::Slice], out: &mut Out) -> Result<bool> {
        let (from, to) = (self.walk.from, self.walk.to);
        let mut its: Vec<_> = chunks
            .iter()
            .map(|c| {
                keys::chunk_entries(hour, c, self.runs)
                    .skip_while(move |(p, _)| *p < from)
                    .take_while(move |(p, _)| p.0 <= to)
            })
            .collect();
        if let [one] = its.as_mut_slice() {
            // One chunk (an hour only one commit wrote to): already in order.
            for e in one {
                if !self.push(e, out)? {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        // Positions are unique across chunks: the chunk index never decides an order.
        let mut heads: std::collections::BinaryHeap<std::cmp::Reverse<(keys::Entry, usize)>> = its
            .iter_mut()
            .enumerate()
            .filter_map(|(i, it)| it.next().map(|e| std::cmp::Reverse((e, i))))
            .collect();
        while let Some(std::cmp::Reverse((e, i))) = heads.pop() {
            if !self.push(e, out)? {
                return Ok(false);
            }
            if let Some(next) = its[i].next() {
                heads.push(std::cmp::Reverse((next, i)));
            }
        }
        Ok(true)
    }

    fn push(&mut self, ((ctime, msgid), run): keys::Entry, out: &mut Out) -> Result<bool> {
        let Walk {
            snap,
            records: ks,
            app,
            ..
        } = *self.walk;
        if !self.runs {
            return match snap.get(ks, keys::msg_key(app, ctime, msgid))? {
                Some(rec) => out.push(ctime, msgid, &rec),
                None => Ok(true),
            };
        }
        if self.last.as_ref().is_none_or(|(at, _)| *at != run) {
            let Some(v) = snap.get(ks, keys::msg_key(app, run.0, run.1))? else {
                return Ok(true);
            };
            self.decoded.clear();
            self.last = Some((run, v));
            let v = &self.last.as_ref().expect("just read").1;
            // The first record wanted of a run: scanned to, not the whole run decoded (a sparse
            // scope wants one record of each run it reads: decoding all ~30 was a fifth of its
            // page). A run's records are in position order.
            let found = keys::run_records(run, v, self.walk.directory)
                .take_while(|(p, _)| *p <= (ctime, msgid))
                .find(|(p, _)| *p == (ctime, msgid));
            return match found {
                Some((_, bytes)) => out.push(ctime, msgid, &v[bytes]),
                None => Ok(true),
            };
        }
        let v = &self.last.as_ref().expect("read before").1;
        if self.decoded.is_empty() {
            // A second record of the run: a dense scope's neighbours often share one.
            self.decoded
                .extend(keys::run_records(run, v, self.walk.directory));
        }
        match self
            .decoded
            .binary_search_by_key(&(ctime, msgid), |(p, _)| *p)
        {
            Ok(i) => out.push(ctime, msgid, &v[self.decoded[i].1.clone()]),
            Err(_) => Ok(true),
        }
    }
}

/// The hour of an instant, as counters and index chunks number it.
fn hour_of(t: Millis) -> u32 {
    t.div_euclid(MILLIS_PER_HOUR) as u32
}

/// Counts one scope's messages in one snapshot.
struct Tally<'a> {
    inner: &'a Inner,
    snap: &'a Snapshot,
    app: u32,
    scope: &'a Scope,
}

impl Tally<'_> {
    /// Messages in a range: whole hours from [`Tally::whole_hours`], the partial hours at either
    /// edge from [`Tally::within_hour`]. Costs O(hours + two partial hours), never O(range).
    fn range(&self, range: TimeRange) -> Result<u64> {
        let h = MILLIS_PER_HOUR;
        let first_full = (range.begin + h - 1).div_euclid(h);
        let end_full = (range.end + 1).div_euclid(h);
        if first_full >= end_full {
            return self.within_hour(range.begin, range.end);
        }
        Ok(self.within_hour(range.begin, first_full * h - 1)?
            + self.within_hour(end_full * h, range.end)?
            + self.whole_hours(first_full, end_full)?)
    }

    /// Messages in the whole hours `first..end`: from the hour counters; for scopes other than
    /// the app in [`Format::SparseCounters`] partitions, where only busy hours have one, the
    /// other hours by counting their index chunks (a few dozen positions an hour at most), in
    /// one range read per stretch of hours between busy ones.
    fn whole_hours(&self, first: i64, end: i64) -> Result<u64> {
        let h = MILLIS_PER_HOUR;
        let counter = keys::scope_prefix(keys::CNT, self.app, self.scope);
        let chunk = keys::scope_prefix(keys::CHUNK, self.app, self.scope);
        let mut n = 0;
        for (day, p) in self.inner.partitions(first * h, end * h - 1) {
            let ks = p.ks;
            let format = self.inner.format(day);
            let sparse = *self.scope != Scope::App && format >= Format::SparseCounters;
            let lo = keys::counter_key(&counter, first as u32);
            let hi = keys::counter_key(&counter, end as u32);
            let mut busy = Vec::new();
            for kv in self.snap.range(&ks, lo..hi) {
                let (k, v) = kv.into_inner()?;
                n += keys::u64_value(&v);
                if sparse {
                    busy.push(i64::from(keys::counter_hour(&k)));
                }
            }
            if !sparse {
                continue;
            }
            // The hours this partition holds some of (an hour can straddle two partitions
            // when they start off the hour; each then counts its own part).
            let (start, next) = (
                self.inner.window.pday_start(day),
                self.inner.window.pday_start(day + 1),
            );
            let hours = start.div_euclid(h).max(first)..(next + h - 1).div_euclid(h).min(end);
            let mut from = hours.start;
            for stop in busy.into_iter().chain([hours.end]) {
                if from < stop {
                    let lo = keys::chunk_key(&chunk, from as u32, 0);
                    let hi = keys::chunk_key(&chunk, stop as u32 - 1, u64::MAX);
                    for kv in self.snap.range(&ks, lo..=hi) {
                        let (k, v) = kv.into_inner()?;
                        let (hour, _) = keys::chunk_hour_seq(&k);
                        n += keys::chunk_entries(hour, &v, format >= Format::Runs).count() as u64;
                    }
                }
                from = stop + 1;
            }
        }
        Ok(n)
    }

    /// Sum of the counters keyed `lo..hi` in the partitions covering `span`.
    fn counters(&self, span: (Millis, Millis), lo: &[u8], hi: &[u8]) -> Result<u64> {
        let mut n = 0;
        for (_, p) in self.inner.partitions(span.0, span.1) {
            for kv in self.snap.range(&p.ks, lo..hi) {
                let (_, v) = kv.into_inner()?;
                n += keys::u64_value(&v);
            }
        }
        Ok(n)
    }

    /// Messages in `from..=to` (under two hours): for the app scope, whose hour can be a
    /// hundred thousand records, whole minutes from the minute counters and the partial
    /// minutes at either edge by scanning; for other scopes, by counting the positions in the
    /// index chunks of those hours; in partitions from before minute counters or chunks, by
    /// [`Tally::hour_pieces`].
    fn within_hour(&self, from: Millis, to: Millis) -> Result<u64> {
        let m = MILLIS_PER_MINUTE;
        let first_full = (from + m - 1).div_euclid(m);
        let end_full = (to + 1).div_euclid(m);
        if from > to {
            return Ok(0);
        }
        if *self.scope != Scope::App {
            // Counting an hour's chunks is one short range read however the hour is cut.
            return if self.inner.all_at_least(Format::Chunks, from, to) {
                self.scan(from, to)
            } else {
                self.hour_pieces(from, to)
            };
        }
        if first_full >= end_full || !self.inner.all_at_least(Format::Minutes, from, to) {
            return self.hour_pieces(from, to);
        }
        Ok(self.scan(from, first_full * m - 1)?
            + self.scan(end_full * m, to)?
            + self.counters(
                (first_full * m, end_full * m - 1),
                &keys::minute_counter_key(self.app, first_full as u32),
                &keys::minute_counter_key(self.app, end_full as u32),
            )?)
    }

    /// Messages in `from..=to`, split at hour boundaries: a piece covering less than half its
    /// hour is scanned; a larger one is its hour's counter minus a scan of the rest of the
    /// hour, so a window starting a second past the hour (a busy user's hour is ~12k index
    /// keys at 10M messages) scans a second's keys, not the hour's.
    fn hour_pieces(&self, from: Millis, to: Millis) -> Result<u64> {
        let h = MILLIS_PER_HOUR;
        let mut n = 0;
        let mut t = from;
        while t <= to {
            let hour = t.div_euclid(h);
            let (start, end) = (hour * h, hour * h + h - 1);
            let b = to.min(end);
            if (b - t + 1) * 2 <= h {
                n += self.scan(t, b)?;
            } else {
                let whole = self.whole_hours(hour, hour + 1)?;
                let rest = self.scan(start, t - 1)? + self.scan(b + 1, end)?;
                n += whole.checked_sub(rest).ok_or_else(|| {
                    StoreError::Corrupt(format!("hour {hour}: counter below its index keys"))
                })?;
            }
            t = end + 1;
        }
        Ok(n)
    }

    /// Messages in `from..=to` by counting their keys, or the positions in the index chunks
    /// of the hours they fall in.
    fn scan(&self, from: Millis, to: Millis) -> Result<u64> {
        if from > to {
            return Ok(0);
        }
        let prefix = keys::order_prefix(self.app, self.scope);
        let lo = keys::with_position(&prefix, from, 0);
        let hi = keys::with_position(&prefix, to, u64::MAX);
        let chunk = keys::scope_prefix(keys::CHUNK, self.app, self.scope);
        let (clo, chi) = (
            keys::chunk_key(&chunk, hour_of(from), 0),
            keys::chunk_key(&chunk, hour_of(to), u64::MAX),
        );
        let mut n = 0;
        for (day, p) in self.inner.partitions(from, to) {
            let format = self.inner.format(day);
            if *self.scope != Scope::App && format >= Format::Chunks {
                for kv in self.snap.range(&p.ks, clo.as_slice()..=chi.as_slice()) {
                    let (k, v) = kv.into_inner()?;
                    let (hour, _) = keys::chunk_hour_seq(&k);
                    n += keys::chunk_entries(hour, &v, format >= Format::Runs)
                        .filter(|((ctime, _), _)| (from..=to).contains(ctime))
                        .count() as u64;
                }
            } else if *self.scope == Scope::App && format >= Format::Runs {
                let lo = keys::first_run_key(self.app, from);
                for kv in self.snap.range(&p.records, lo.as_slice()..=hi.as_slice()) {
                    let (k, v) = kv.into_inner()?;
                    n += keys::run_records(
                        keys::position_of(&k),
                        &v,
                        format >= Format::RunDirectories,
                    )
                    .filter(|((ctime, _), _)| (from..=to).contains(ctime))
                    .count() as u64;
                }
            } else {
                // Records or index keys, in partitions from before the records' keyspace.
                for kv in self.snap.range(&p.ks, lo.as_slice()..=hi.as_slice()) {
                    kv.key()?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// Day rows `from..=to`, and the totals at the end of `from - 1`: the all-time totals minus the
/// net changes of every day from `from` on (one range scan over at most the retained days).
pub(crate) fn stats_days(inner: &Inner, app: u32, from: i64, to: i64) -> Result<DaysReport> {
    let snap = inner.db.snapshot();
    let lo = keys::stat_key(app, keys::STAT_DAY, from);
    let hi = keys::stat_key(app, keys::STAT_DAY, i64::MAX);
    let mut rows = Vec::new();
    for (k, v) in inner.hot_stats.range(&snap, &inner.stats, lo, hi)? {
        let day = i64::from_be_bytes(k[5..13].try_into().expect("8 bytes")) ^ i64::MIN;
        rows.push((day, DayStats::decode(&v)));
    }
    let totals = snap
        .get(&inner.stats, keys::stat_total_key(app))?
        .map(|v| super::writer::decode_totals(&v))
        .unwrap_or_default();
    Ok(DaysReport::assemble(from, to, rows, totals))
}

/// Message counts of civil hours `from..=to`.
pub(crate) fn stats_hours(inner: &Inner, app: u32, from: i64, to: i64) -> Result<Vec<MsgCounts>> {
    let n = usize::try_from(to - from + 1).unwrap_or(0);
    let mut out = vec![MsgCounts::default(); n];
    let lo = keys::stat_key(app, keys::STAT_HOUR, from);
    let hi = keys::stat_key(app, keys::STAT_HOUR, to);
    let snap = inner.db.snapshot();
    for (k, v) in inner.hot_stats.range(&snap, &inner.stats, lo, hi)? {
        let hour = i64::from_be_bytes(k[5..13].try_into().expect("8 bytes")) ^ i64::MIN;
        out[(hour - from) as usize] = decode_counts(&v);
    }
    Ok(out)
}

/// A day's busiest senders and groups: a scan of the day's tallies of each (one key per sender
/// or group that day) plus the day's tally logs not yet folded into them (at most a few commits'
/// worth, see `Writer::stage_tallies`), keeping the top `n`.
pub(crate) fn busiest(inner: &Inner, app: u32, day: i64, n: usize) -> Result<Busiest> {
    let Some(ks) = inner.acts.read().expect("lock").get(&day).cloned() else {
        return Ok(Busiest::default());
    };
    let snap = inner.db.snapshot();
    // Logged messages by tally key without the app (`code | id`).
    let mut logged: HashMap<Vec<u8>, u64> = HashMap::new();
    for kv in snap.prefix(&ks, keys::tally_log_prefix(app)) {
        let (_, v) = kv.into_inner()?;
        for (key, delta) in keys::tally_log_entries(&v) {
            *logged.entry(key.to_vec()).or_default() += delta;
        }
    }
    let mut top = |set: Presence| -> Result<Vec<imreport_domain::rollup::Tally>> {
        let mut prefix = Vec::new();
        keys::tally_key_into(app, set, "", &mut prefix);
        let mut failed = None;
        let id = |k: &[u8]| String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        let stored = snap
            .prefix(&ks, &prefix)
            .map_while(|kv| match kv.into_inner() {
                Ok((k, v)) => Some((
                    id(&k),
                    keys::u64_value(&v) + logged.remove(keys::split_entity_key(&k).1).unwrap_or(0),
                )),
                Err(e) => {
                    failed = Some(e);
                    None
                }
            });
        // A heap of `n`: bounded memory however many members the day has.
        let mut top = top_tallies(stored, n);
        if let Some(e) = failed {
            return Err(e.into());
        }
        // Those only logged so far.
        let code = prefix[4];
        let fresh: Vec<(String, u64)> = logged
            .iter()
            .filter(|(k, _)| k.first() == Some(&code))
            .map(|(k, d)| (String::from_utf8_lossy(&k[1..]).into_owned(), *d))
            .collect();
        if !fresh.is_empty() {
            let kept = top.drain(..).map(|t| (t.id, t.messages));
            top = top_tallies(kept.chain(fresh), n);
        }
        Ok(top)
    };
    Ok(Busiest {
        senders: top(Presence::Sender)?,
        groups: top(Presence::ActiveGroup)?,
    })
}

/// Sends each app and its events as of one snapshot (see [`crate::Store::backup`]): its
/// lifecycle histories, its messages partition by partition, and the logins that made a user
/// active on a day without a message (as a login at the day's start).
pub(crate) fn backup(
    inner: &Inner,
    apps: Vec<App>,
    out: &tokio::sync::mpsc::Sender<BackupItem>,
) -> Result<()> {
    use imreport_domain::event::Event;
    let snap = inner.db.snapshot();
    let days: Vec<(i64, Keyspace)> = inner
        .days
        .read()
        .expect("lock")
        .iter()
        .map(|(d, p)| (*d, p.records.clone()))
        .collect();
    let acts: Vec<(i64, Keyspace)> = inner
        .acts
        .read()
        .expect("lock")
        .iter()
        .map(|(d, k)| (*d, k.clone()))
        .collect();
    let gone = || StoreError::Internal("the backup's reader went away".into());
    for app in apps {
        let id = app.id;
        let key = app.key.clone();
        out.blocking_send(BackupItem::App(app))
            .map_err(|_| gone())?;
        let mut events: Vec<Event> = Vec::with_capacity(BATCH);
        let flush = |events: &mut Vec<Event>, force: bool| -> Result<()> {
            if events.len() >= BATCH || (force && !events.is_empty()) {
                out.blocking_send(BackupItem::Events(std::mem::take(events)))
                    .map_err(|_| gone())?;
            }
            Ok(())
        };
        for kv in snap.prefix(&inner.entities, id.to_be_bytes()) {
            let (k, v) = kv.into_inner()?;
            let user = k[4] == b'u';
            let entity = String::from_utf8_lossy(&k[5..]);
            events.extend(Event::from_history(user, &entity, &decode_history(&v)));
            flush(&mut events, false)?;
        }
        let mut prefix = vec![keys::MSG];
        prefix.extend_from_slice(&id.to_be_bytes());
        for (day, ks) in &days {
            let format = inner.format(*day);
            let runs = format >= Format::Runs;
            let directory = format >= Format::RunDirectories;
            for kv in snap.prefix(ks, &prefix) {
                let (k, v) = kv.into_inner()?;
                let first = keys::position_of(&k);
                let mut one = |(ctime, msgid): (Millis, u64), rec: &[u8]| -> Result<()> {
                    let view = view_record(rec).map_err(corrupt)?;
                    events.push(Event::Message(view.to_message(msgid, ctime, &key)));
                    Ok(())
                };
                if runs {
                    for (pos, bytes) in keys::run_records(first, &v, directory) {
                        one(pos, &v[bytes])?;
                    }
                } else {
                    one(first, &v)?;
                }
                flush(&mut events, false)?;
            }
        }
        let tz = &inner.config.tz;
        let mut set = Vec::new();
        for (day, ks) in &acts {
            // The day's senders: by their own keys (written before tallies implied them), their
            // tallies and their unfolded tally logs (see `Writer::mark`).
            let mut senders = std::collections::HashSet::new();
            for code in [
                Presence::Sender.code(),
                Presence::Sender.code().to_ascii_uppercase(),
            ] {
                keys::entity_key_into(id, code, "", &mut set);
                for kv in snap.prefix(ks, &set) {
                    senders.insert(kv.key()?.to_vec()[set.len()..].to_vec());
                }
            }
            let tally = Presence::Sender.code().to_ascii_uppercase();
            for kv in snap.prefix(ks, keys::tally_log_prefix(id)) {
                let (_, v) = kv.into_inner()?;
                for (rest, _) in keys::tally_log_entries(&v) {
                    if rest.first() == Some(&tally) {
                        senders.insert(rest[1..].to_vec());
                    }
                }
            }
            keys::entity_key_into(id, Presence::ActiveUser.code(), "", &mut set);
            for kv in snap.prefix(ks, &set) {
                let k = kv.key()?;
                let user = &k[set.len()..];
                if !senders.contains(user) {
                    events.push(Event::UserLogin {
                        username: String::from_utf8_lossy(user).into_owned(),
                        time: tz.day_start(*day),
                    });
                    flush(&mut events, false)?;
                }
            }
        }
        flush(&mut events, true)?;
    }
    Ok(())
}
