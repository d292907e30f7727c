//! Key layout of the embedded store. All integers are big-endian so that byte order is numeric
//! order and one page is one range scan.
//!
//! Day partitions (one fjall keyspace per UTC day of `msg_ctime`, so retention drops whole days):
//! - `m | app u32 | ctime u64 | msgid u64` → a run of message records: up to [`RUN_MAX`]
//!   consecutive records of one commit, the first at the key's position (see [`encode_run`]),
//!   in partitions holding [`RUNS`], opening with a directory of their records in partitions
//!   holding [`RUN_DIRECTORIES`]; in older partitions, one record per key (the app scope reads
//!   these directly). In partitions holding [`RECORD_KEYSPACE`] these keys are in a keyspace
//!   of their own beside the partition's ([`records_name`]), the rest below in the partition's
//! - `k | app u32 | scope u8 | len u8 | id | hour u32 | seq u64` → the positions (`ctime`,
//!   `msgid`) of the scope's messages that hour written by commit `seq`, sorted (user, group,
//!   chatroom; see [`encode_chunk`]), each with the position of the run holding its record in
//!   partitions holding [`RUNS`]: one key per scope, hour and commit instead of one per
//!   message, in partitions holding [`CHUNKS`]
//! - `x | app u32 | scope u8 | len u8 | id | ctime u64 | msgid u64` → empty: the same index one
//!   key per message, in partitions from before the chunks
//! - `c | app u32 | scope u8 | len u8 | id | hour u32` → u64 count of the scope's messages that
//!   hour; in partitions holding [`SPARSE_COUNTERS`], for the other scopes than the app only
//!   once the hour has a few dozen (where there is none, its index chunks are counted)
//! - `n | app u32 | minute u32` → u64 count of the app's messages that minute (in partitions
//!   holding [`MINUTES`]): a `total`'s partial hours cost minute counters and at most two
//!   partial minutes of records, not up to two hours of them
//!
//! Presence keyspaces (one per civil day of the report time zone, [`act_name`]):
//! - `app u32 | code u8 | id` → empty: the id is in the day's set (`s` senders, `a` active
//!   users, `g` active groups). Written only for members nothing else implies: a sender's or
//!   group's tally (below) makes it a member, and a sender is an active user; so since the
//!   tallies these are mostly users who logged in without sending. Earlier days hold every
//!   member's, and are read alike
//! - `app u32 | code u8 | id` with the code upper case (`S`, `G`) → u64 messages of that sender
//!   or group that day ([`tally_key_into`]), plus its entries in the day's tally logs
//! - `app u32 | 'L' | seq u64` → a commit's tally deltas not yet folded ([`tally_log_key`])
//!
//! Global keyspaces:
//! - `id-blocks`: `app u32 | msgid >> 6` → the block's stored msgids as `(partition day i64,
//!   mask u64)` pairs, bit `msgid & 63` of a day's mask set for each msgid stored in that day's
//!   partition: the duplicate index, one key per 64 consecutive ids (see [`id_block_pairs`])
//! - `ids`: `app u32 | msgid u64` → partition day (i64): the same index one key per message, as
//!   written before the blocks; still read, and emptied by retention
//! - `entities`: `app u32 | kind u8 | id` → state byte and time, for user and group lifecycle
//! - `meta`: apps, sequences

use imreport_domain::Millis;
use imreport_domain::rollup::Presence;
use imreport_domain::scope::Scope;

pub const MSG: u8 = b'm';
pub const IDX: u8 = b'x';
pub const CHUNK: u8 = b'k';
pub const CNT: u8 = b'c';
pub const MIN_CNT: u8 = b'n';
/// Written when a day partition is created by a version that keeps minute counters; older
/// partitions (without it) count their partial hours by scanning.
pub const MINUTES: &[u8] = b"~minutes";
/// Written when a day partition is created by a version that keeps its scope index in chunks;
/// older partitions (without it) keep one index key per message, and are written and read so.
pub const CHUNKS: &[u8] = b"~chunks";
/// Written when a day partition is created by a version that keeps message records in runs;
/// older partitions (without it) keep one record per key.
pub const RUNS: &[u8] = b"~runs";
/// Written when a day partition is created by a version that keeps a scope's hour counter only
/// for busy hours; older partitions (without it) keep one for every scope and hour.
pub const SPARSE_COUNTERS: &[u8] = b"~sparse-counters";
/// Written when a day partition is created by a version whose record runs open with a
/// directory of their records (see [`encode_run`]); older partitions' runs interleave each
/// record's entry with its bytes.
pub const RUN_DIRECTORIES: &[u8] = b"~run-directories";
/// Written when a day partition is created by a version that keeps its message records (the
/// `m` keys) in a keyspace of their own ([`records_name`]); older partitions keep them beside
/// their index. Apart, the records of traffic arriving in time order are flushed in tables of
/// disjoint key ranges: a point read visits one table a level instead of every table of level
/// 0, and compaction merges a flushed table with the few it overlaps, or moves it, instead of
/// rewriting the day's records each time the index's tables merge.
pub const RECORD_KEYSPACE: &[u8] = b"~record-keyspace";
/// Written (as a tombstone) by the tidy thread after merging a day partition; no scan reaches
/// it, since every read is under one of the tags above.
pub const TIDY: &[u8] = b"~tidy";

pub fn msg_key(app: u32, ctime: Millis, msgid: u64) -> [u8; 21] {
    let mut k = [0u8; 21];
    k[0] = MSG;
    k[1..5].copy_from_slice(&app.to_be_bytes());
    k[5..13].copy_from_slice(&(ctime as u64).to_be_bytes());
    k[13..21].copy_from_slice(&msgid.to_be_bytes());
    k
}

/// `tag | app | scope | len | id`: the common prefix of a scope's index or counter keys.
pub fn scope_prefix(tag: u8, app: u32, scope: &Scope) -> Vec<u8> {
    let mut k = Vec::with_capacity(7 + scope.id().len() + 16);
    scope_prefix_into(tag, app, scope.tag(), scope.id(), &mut k);
    k
}

/// [`scope_prefix`] of a scope given as `(Scope::tag, id)`, written over `k`.
pub fn scope_prefix_into(tag: u8, app: u32, scope_tag: u8, id: &str, k: &mut Vec<u8>) {
    k.clear();
    k.push(tag);
    k.extend_from_slice(&app.to_be_bytes());
    k.push(scope_tag);
    k.push(id.len() as u8);
    k.extend_from_slice(id.as_bytes());
}

/// Prefix of the keys that order a scope's messages: the primary keys for the whole app, the
/// index keys for any other scope. Followed by `ctime | msgid`.
pub fn order_prefix(app: u32, scope: &Scope) -> Vec<u8> {
    match scope {
        Scope::App => {
            let mut k = vec![MSG];
            k.extend_from_slice(&app.to_be_bytes());
            k
        }
        _ => scope_prefix(IDX, app, scope),
    }
}

pub fn with_position(prefix: &[u8], ctime: Millis, msgid: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 16);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&(ctime as u64).to_be_bytes());
    k.extend_from_slice(&msgid.to_be_bytes());
    k
}

/// The `(ctime, msgid)` at the end of an ordering key.
pub fn position_of(key: &[u8]) -> (Millis, u64) {
    let n = key.len();
    let ctime = u64::from_be_bytes(key[n - 16..n - 8].try_into().expect("8 bytes")) as Millis;
    let msgid = u64::from_be_bytes(key[n - 8..].try_into().expect("8 bytes"));
    (ctime, msgid)
}

/// `prefix | hour | seq`: a chunk of a scope's index (`prefix` from [`scope_prefix`] with
/// [`CHUNK`]).
pub fn chunk_key(prefix: &[u8], hour: u32, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 12);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&hour.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The hour and commit sequence at the end of a chunk key.
pub fn chunk_hour_seq(key: &[u8]) -> (u32, u64) {
    let n = key.len();
    let hour = u32::from_be_bytes(key[n - 12..n - 8].try_into().expect("4 bytes"));
    let seq = u64::from_be_bytes(key[n - 8..].try_into().expect("8 bytes"));
    (hour, seq)
}

/// A position and the position of the run holding its record (itself, where each record has a
/// key of its own).
pub type Entry = ((Millis, u64), (Millis, u64));

/// A chunk's value: its positions (sorted, all within `hour`) as varints, each the step in
/// milliseconds from the previous position (the first: from the hour's start) and the zigzag
/// step in msgid from the previous msgid (the first: from zero); with `runs`, each followed by
/// the steps back to its run's first position (milliseconds, zigzag msgid). Messages close in
/// time have close msgids, so a position takes 3-5 bytes where fixed width took 12 (and its run
/// 2-3 more), and LZ4 on disk found little to take out of those.
pub fn encode_chunk(hour: u32, entries: &[Entry], runs: bool) -> Vec<u8> {
    use varint_rs::VarintWriter;
    let base = i64::from(hour) * imreport_domain::time::MILLIS_PER_HOUR;
    let mut v = Vec::with_capacity(entries.len() * if runs { 8 } else { 5 });
    let (mut at, mut prev) = (base, 0u64);
    for &((ctime, msgid), (run_ctime, run_msgid)) in entries {
        // Writing to a Vec cannot fail.
        let _ = v.write_u64_varint((ctime - at) as u64);
        let _ = v.write_i64_varint(msgid.wrapping_sub(prev) as i64);
        if runs {
            let _ = v.write_u64_varint((ctime - run_ctime) as u64);
            let _ = v.write_i64_varint(msgid.wrapping_sub(run_msgid) as i64);
        }
        (at, prev) = (ctime, msgid);
    }
    v
}

/// The entries of a chunk of `hour`, in the order written (a truncated last entry, which no
/// writer makes, ends them); without `runs`, each position is its own run.
pub fn chunk_entries(hour: u32, mut v: &[u8], runs: bool) -> impl Iterator<Item = Entry> + '_ {
    use varint_rs::VarintReader;
    let (mut at, mut prev) = (
        i64::from(hour) * imreport_domain::time::MILLIS_PER_HOUR,
        0u64,
    );
    std::iter::from_fn(move || {
        if v.is_empty() {
            return None;
        }
        let step = v.read_u64_varint().ok()?;
        let id_step = v.read_i64_varint().ok()?;
        at = at.wrapping_add(step as i64);
        prev = prev.wrapping_add(id_step as u64);
        let run = if runs {
            let back = v.read_u64_varint().ok()?;
            let id_back = v.read_i64_varint().ok()?;
            (
                at.wrapping_sub(back as i64),
                prev.wrapping_sub(id_back as u64),
            )
        } else {
            (at, prev)
        };
        Some(((at, prev), run))
    })
}

/// Most records in one run.
pub const RUN_MAX: usize = 32;
/// A run's records lie within this many milliseconds of its first: a walk from instant `t`
/// finds every run holding a record at or after `t` by starting `RUN_SPAN - 1` ms before it.
pub const RUN_SPAN: Millis = 30_000;

/// The first key a reader of the app's runs must look at for records at or after `ctime`: a
/// run starting up to `RUN_SPAN - 1` ms earlier can hold one.
pub fn first_run_key(app: u32, ctime: Millis) -> [u8; 21] {
    msg_key(app, ctime.saturating_sub(RUN_SPAN - 1), 0)
}

/// Appends a run's value: each record (sorted, the first at the run key's position `first`) as
/// an entry (the step back to `first` in milliseconds, the zigzag step back in msgid, its
/// length) and its bytes. With `directory` (partitions holding [`RUN_DIRECTORIES`]) the
/// entries come first, behind their length in bytes, and the records' bytes follow in order;
/// otherwise each record's bytes follow its entry. A page wants one record of most runs it
/// reads: through a directory it steps over ~6 bytes an entry instead of every record's
/// ~400, one cache miss each in the runs of 1000 scattered messages (82% of finding them).
pub fn encode_run<'a>(
    first: (Millis, u64),
    records: impl Iterator<Item = ((Millis, u64), &'a [u8])> + Clone,
    directory: bool,
    v: &mut Vec<u8>,
) {
    use varint_rs::VarintWriter;
    let entry = |v: &mut Vec<u8>, (ctime, msgid): (Millis, u64), len: usize| {
        let _ = v.write_u64_varint((ctime - first.0) as u64);
        let _ = v.write_i64_varint(msgid.wrapping_sub(first.1) as i64);
        let _ = v.write_usize_varint(len);
    };
    if !directory {
        for (pos, rec) in records {
            entry(v, pos, rec.len());
            v.extend_from_slice(rec);
        }
        return;
    }
    let at = v.len();
    for (pos, rec) in records.clone() {
        entry(v, pos, rec.len());
    }
    let mut len = Vec::with_capacity(2);
    let _ = len.write_usize_varint(v.len() - at);
    v.splice(at..at, len);
    for (_, rec) in records {
        v.extend_from_slice(rec);
    }
}

/// The records of a run whose key holds `first`, encoded with or without a `directory` (see
/// [`encode_run`]): each position and where its bytes lie in `v` (a truncated entry or
/// record, which no writer makes, ends them). Reads only the entries, never the bytes.
pub fn run_records(
    first: (Millis, u64),
    v: &[u8],
    directory: bool,
) -> impl Iterator<Item = ((Millis, u64), std::ops::Range<usize>)> + '_ {
    use varint_rs::VarintReader;
    // The entries still to read, and (with a directory) where the next record's bytes start.
    let (mut entries, mut next) = (v, 0);
    if directory {
        let mut r = v;
        let dir = r.read_usize_varint().ok().and_then(|n| {
            let at = v.len() - r.len();
            at.checked_add(n)
                .filter(|end| *end <= v.len())
                .map(|end| (at, end))
        });
        (entries, next) = match dir {
            Some((at, end)) => (&v[at..end], end),
            None => (&v[..0], v.len()),
        };
    }
    std::iter::from_fn(move || {
        if entries.is_empty() {
            return None;
        }
        let back = entries.read_u64_varint().ok()?;
        let id_back = entries.read_i64_varint().ok()?;
        let len = entries.read_usize_varint().ok()?;
        let start = if directory {
            next
        } else {
            v.len() - entries.len()
        };
        let end = start.checked_add(len).filter(|e| *e <= v.len())?;
        if directory {
            next = end;
        } else {
            entries = &v[end..];
        }
        Some((
            (
                first.0.wrapping_add(back as i64),
                first.1.wrapping_add(id_back as u64),
            ),
            start..end,
        ))
    })
}

pub fn counter_key(prefix: &[u8], hour: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 4);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&hour.to_be_bytes());
    k
}

/// The hour of a counter key (hour counters end with it, minute counters with the minute).
pub fn counter_hour(key: &[u8]) -> u32 {
    let n = u32::from_be_bytes(key[key.len() - 4..].try_into().expect("4 bytes"));
    if key[0] == MIN_CNT { n / 60 } else { n }
}

pub fn minute_counter_key(app: u32, minute: u32) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = MIN_CNT;
    k[1..5].copy_from_slice(&app.to_be_bytes());
    k[5..].copy_from_slice(&minute.to_be_bytes());
    k
}

pub fn id_key(app: u32, msgid: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&app.to_be_bytes());
    k[4..].copy_from_slice(&msgid.to_be_bytes());
    k
}

/// Msgids per duplicate-index block.
pub const ID_BLOCK: u64 = 64;

/// The `id-blocks` key of a msgid's block, and the msgid's bit in a mask.
pub fn id_block(app: u32, msgid: u64) -> ([u8; 12], u64) {
    (id_key(app, msgid / ID_BLOCK), 1 << (msgid % ID_BLOCK))
}

/// The `(day, mask)` pairs of a duplicate-index block (a trailing partial pair, which no writer
/// makes, is ignored).
pub fn id_block_pairs(v: &[u8]) -> impl Iterator<Item = (i64, u64)> + '_ {
    v.chunks_exact(16).map(|p| {
        (
            i64::from_be_bytes(p[..8].try_into().expect("8 bytes")),
            u64::from_be_bytes(p[8..].try_into().expect("8 bytes")),
        )
    })
}

pub fn encode_id_block(pairs: &[(i64, u64)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(pairs.len() * 16);
    for (day, mask) in pairs {
        v.extend_from_slice(&day.to_be_bytes());
        v.extend_from_slice(&mask.to_be_bytes());
    }
    v
}

pub fn entity_key(app: u32, kind: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + id.len());
    entity_key_into(app, kind, id, &mut k);
    k
}

/// [`entity_key`], written over `k`.
pub fn entity_key_into(app: u32, kind: u8, id: &str, k: &mut Vec<u8>) {
    k.clear();
    k.extend_from_slice(&app.to_be_bytes());
    k.push(kind);
    k.extend_from_slice(id.as_bytes());
}

/// An [`entity_key`] (or tally key) as its app and the rest (`kind | id`).
pub fn split_entity_key(key: &[u8]) -> (u32, &[u8]) {
    let (app, rest) = key.split_at(4);
    (u32::from_be_bytes(app.try_into().expect("4 bytes")), rest)
}

/// The key [`split_entity_key`] split, joined again over `k`.
pub fn join_entity_key(app: u32, rest: &[u8], k: &mut impl Extend<u8>) {
    k.extend(app.to_be_bytes());
    k.extend(rest.iter().copied());
}

/// The key of a day's tally (messages of one sender or group, see [`Presence::tallied`]) in the
/// day's presence keyspace: `app | code | id`, the set's code in upper case (`S`, `G`), beside
/// the set's own keys (`s`, `g`).
pub fn tally_key_into(app: u32, set: Presence, id: &str, k: &mut Vec<u8>) {
    entity_key_into(app, set.code().to_ascii_uppercase(), id, k);
}

/// Marks a tally log key (beside the presence sets' and tallies' codes, `s a g S G`).
pub const TALLY_LOG: u8 = b'L';

/// A commit's messages per sender and group of one app and civil day, not yet added to their
/// tallies (see `Writer::stage_tallies`): `app | 'L' | seq` in the day's presence keyspace. Its
/// value is [`encode_tally_log`]'s; a tally's count is its key's value plus its entries in every
/// log of the day.
pub fn tally_log_key(app: u32, seq: u64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..4].copy_from_slice(&app.to_be_bytes());
    k[4] = TALLY_LOG;
    k[5..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The prefix of an app's tally logs in a day's presence keyspace.
pub fn tally_log_prefix(app: u32) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&app.to_be_bytes());
    k[4] = TALLY_LOG;
    k
}

/// Appends one log entry: a tally key without its app (`code | id`, see [`split_entity_key`])
/// and the messages it adds.
pub fn encode_tally_log(key: &[u8], delta: u64, out: &mut Vec<u8>) {
    use varint_rs::VarintWriter;
    let _ = out.write_usize_varint(key.len());
    out.extend_from_slice(key);
    let _ = out.write_u64_varint(delta);
}

/// The entries of a tally log (a truncated entry, which no writer makes, ends them).
pub fn tally_log_entries(v: &[u8]) -> impl Iterator<Item = (&[u8], u64)> + '_ {
    use varint_rs::VarintReader;
    let mut rest = v;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = rest.read_usize_varint().ok()?;
        let key = rest.get(..len)?;
        rest = &rest[len..];
        let delta = rest.read_u64_varint().ok()?;
        Some((key, delta))
    })
}

pub fn u64_value(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

pub fn day_name(day: i64) -> String {
    format!("day-{day}")
}

pub fn parse_day_name(name: &str) -> Option<i64> {
    name.strip_prefix("day-")?.parse().ok()
}

/// Signed numbers as order-preserving big-endian bytes.
pub fn ordered_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

pub const STAT_DAY: u8 = b'D';
pub const STAT_HOUR: u8 = b'H';
pub const STAT_TOTAL: u8 = b'T';

/// `stats` keyspace: `app | D | day` → day row, `app | H | hour` → message counts,
/// `app | T` → all-time registered users and groups.
pub fn stat_key(app: u32, kind: u8, n: i64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..4].copy_from_slice(&app.to_be_bytes());
    k[4] = kind;
    k[5..].copy_from_slice(&ordered_i64(n));
    k
}

pub fn stat_total_key(app: u32) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&app.to_be_bytes());
    k[4] = STAT_TOTAL;
    k
}

/// The keyspace of a civil day's presence sets: keys `app | kind | id`, the kind being the
/// set's [`imreport_domain::rollup::Presence::code`].
/// The keyspace of a day partition's records (partitions holding [`RECORD_KEYSPACE`]).
pub fn records_name(day: i64) -> String {
    format!("rec-{day}")
}

pub fn parse_records_name(name: &str) -> Option<i64> {
    name.strip_prefix("rec-")?.parse().ok()
}

pub fn act_name(day: i64) -> String {
    format!("act-{day}")
}

pub fn parse_act_name(name: &str) -> Option<i64> {
    name.strip_prefix("act-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever positions a chunk holds (ties, msgids falling and rising by any amount),
        /// they decode to what was encoded.
        #[test]
        fn chunk_positions_decode_to_what_was_encoded(
            hour in 0u32..1_000_000,
            mut raw in proptest::collection::vec((0i64..3_600_000, proptest::num::u64::ANY), 0..300),
            backs in proptest::collection::vec((0i64..RUN_SPAN, proptest::num::u64::ANY), 1..10),
        ) {
            let base = i64::from(hour) * imreport_domain::time::MILLIS_PER_HOUR;
            for p in raw.iter_mut() {
                p.0 += base;
            }
            raw.sort_unstable();
            let entries: Vec<Entry> = raw.iter().map(|p| (*p, *p)).collect();
            let v = encode_chunk(hour, &entries, false);
            let back: Vec<Entry> = chunk_entries(hour, &v, false).collect();
            proptest::prop_assert_eq!(&back, &entries);
            // With runs: each position names a run at or before it, up to RUN_SPAN earlier.
            let entries: Vec<Entry> = raw
                .iter()
                .zip(backs.iter().cycle())
                .map(|(p, (back, id_back))| (*p, (p.0 - back, p.1.wrapping_sub(*id_back))))
                .collect();
            let v = encode_chunk(hour, &entries, true);
            let back: Vec<Entry> = chunk_entries(hour, &v, true).collect();
            proptest::prop_assert_eq!(back, entries);
        }

        /// Whatever records a run holds (empty ones, ties in time, msgids either side of the
        /// first), with or without a directory, they decode to the positions and bytes encoded.
        #[test]
        fn run_records_decode_to_what_was_encoded(
            first in (0i64..1 << 45, proptest::num::u64::ANY),
            raw in proptest::collection::vec(
                (0i64..RUN_SPAN, proptest::num::u64::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..40)),
                1..RUN_MAX,
            ),
        ) {
            let records: Vec<((Millis, u64), Vec<u8>)> = raw
                .into_iter()
                .map(|(dt, id, rec)| ((first.0 + dt, id), rec))
                .collect();
            for directory in [false, true] {
                let mut v = vec![7u8; 3]; // appended after what is there
                encode_run(first, records.iter().map(|(p, r)| (*p, r.as_slice())), directory, &mut v);
                proptest::prop_assert_eq!(&v[..3], &[7u8; 3]);
                let v = &v[3..];
                let back: Vec<((Millis, u64), Vec<u8>)> = run_records(first, v, directory)
                    .map(|(p, r)| (p, v[r].to_vec()))
                    .collect();
                proptest::prop_assert_eq!(&back, &records);
                // A run cut short yields a prefix of its records, never bytes past its end.
                for cut in [1, v.len() / 2, v.len() - 1] {
                    let v = &v[..cut.min(v.len())];
                    let back: Vec<((Millis, u64), Vec<u8>)> = run_records(first, v, directory)
                        .map(|(p, r)| (p, v[r].to_vec()))
                        .collect();
                    proptest::prop_assert!(back.len() < records.len() && records.starts_with(&back));
                }
            }
        }
    }
}
