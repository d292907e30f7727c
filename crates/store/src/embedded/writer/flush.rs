//! Writing a commit group: records in runs, index chunks, counters, rollups and sequences in
//! one batch.

use super::*;

impl Writer {
    /// Adds the gathered deltas to what is stored and commits everything at once.
    pub(super) fn flush(&mut self, mut g: Group) -> Result<()> {
        let inner = self.inner.clone();
        // Each partition's records of each app, sorted and cut into runs; the runs' first
        // positions, for the index chunks to point at.
        let mut runs: HashMap<(i64, u32), Vec<Position>> = HashMap::default();
        for ((day, app), mut recs) in g.records.drain() {
            recs.sort_unstable_by_key(|r| r.0);
            let (part, format) = &g.partitions[&day];
            let directory = *format >= Format::RunDirectories;
            let mut firsts = Vec::with_capacity(recs.len() / keys::RUN_MAX + 1);
            for run in cut_runs(&recs) {
                let first = run[0].0;
                let bytes = |(s, e): ArenaRange| s..e;
                g.rec.clear();
                let records = run.iter().map(|r| (r.0, &g.arena[bytes(r.1)]));
                keys::encode_run(first, records, directory, &mut g.rec);
                g.staged.put(
                    &part.records,
                    keys::msg_key(app, first.0, first.1),
                    g.rec.as_slice(),
                );
                firsts.push(first);
            }
            runs.insert((day, app), firsts);
        }
        // The counts this commit leaves, to cache once it is committed (a size hint).
        let mut counted = Vec::with_capacity(
            g.scopes.values().map(HashMap::len).sum::<usize>()
                + g.counters.len()
                + g.app_hours.len()
                + g.app_minutes.len(),
        );
        let scopes = g.scopes.drain().flat_map(|((day, hour), by_scope)| {
            by_scope
                .into_iter()
                .map(move |(prefix, positions)| (day, hour, prefix, positions))
        });
        for (day, hour, mut prefix, mut positions) in scopes {
            let (part, format) = &g.partitions[&day];
            let ks = &part.ks;
            if *format >= Format::Chunks {
                positions.sort_unstable();
                let entries: Vec<keys::Entry> = if *format >= Format::Runs {
                    // Positions and run firsts both ascend, and a commit's runs do not
                    // overlap: each position's run is the last one starting at or before it.
                    let app = u32::from_be_bytes(prefix[1..5].try_into().expect("4 bytes"));
                    let firsts = &runs[&(day, app)];
                    // A scope's few positions among a commit's hundreds of runs: search for
                    // the first one's run, then step.
                    let mut r = firsts.partition_point(|f| *f <= positions[0]).max(1) - 1;
                    positions
                        .iter()
                        .map(|p| {
                            while r + 1 < firsts.len() && firsts[r + 1] <= *p {
                                r += 1;
                            }
                            (*p, firsts[r])
                        })
                        .collect()
                } else {
                    positions.iter().map(|p| (*p, *p)).collect()
                };
                prefix[0] = keys::CHUNK;
                g.staged.put(
                    ks,
                    keys::chunk_key(&prefix, hour, g.seq),
                    keys::encode_chunk(hour, &entries, *format >= Format::Runs),
                );
                if *format >= Format::SparseCounters {
                    // A busy hour has a counter (readers count the chunks of the others); the
                    // cache holds every hour's count, keyed by the counter prefix. An hour the
                    // cache no longer holds (a late message, a backfill, the first writes after
                    // a restart) is read from the store: its counter if it has one, else (unless
                    // the hour's sketch says the scope stays quiet, see `counters::Sketch`) by
                    // counting its chunks, and then it keeps a counter whatever its count, so
                    // that its next write reads one key. A held hour never has one below
                    // `busy_hour` (an hour once dropped stays dropped).
                    prefix[0] = keys::CNT;
                    let new = positions.len() as u64;
                    let busy = inner.config.busy_hour;
                    let (before, read) = match self.counters.get(day, hour, &prefix) {
                        Some(n) => (n, false),
                        None => match ks.get(keys::counter_key(&prefix, hour))? {
                            Some(v) => (keys::u64_value(&v), true),
                            None if self.counters.add_if_quiet(day, hour, &prefix, new, busy) => {
                                continue;
                            }
                            None => (chunk_count(ks, &prefix, hour)?, true),
                        },
                    };
                    let total = before + positions.len() as u64;
                    if total >= busy || read {
                        g.staged
                            .put(ks, keys::counter_key(&prefix, hour), total.to_be_bytes());
                    }
                    counted.push((day, hour, prefix, total));
                    continue;
                }
            } else {
                for (ctime, msgid) in &positions {
                    g.staged.put(
                        ks,
                        keys::with_position(&prefix, *ctime, *msgid),
                        b"".as_slice(),
                    );
                }
            }
            prefix[0] = keys::CNT;
            *g.counters
                .entry((day, keys::counter_key(&prefix, hour)))
                .or_default() += positions.len() as u64;
        }
        for (block, new) in g.id_blocks.drain() {
            g.staged.put(
                &inner.id_blocks,
                block,
                keys::encode_id_block(&self.merge_id_block(&block, new, g.horizon)?),
            );
        }
        let app_prefix = |app| keys::scope_prefix(keys::CNT, app, &Scope::App);
        for ((day, app, hour), n) in g.app_hours.drain() {
            *g.counters
                .entry((day, keys::counter_key(&app_prefix(app), hour)))
                .or_default() += n;
        }
        for ((day, app, minute), n) in g.app_minutes.drain() {
            let key = keys::minute_counter_key(app, minute).to_vec();
            *g.counters.entry((day, key)).or_default() += n;
        }
        for ((day, key), delta) in g.counters.drain() {
            let ks = &g.partitions[&day].0.ks;
            let hour = keys::counter_hour(&key);
            let current = match self.counters.get(day, hour, &key) {
                Some(n) => n,
                None => ks.get(&key)?.map(|v| keys::u64_value(&v)).unwrap_or(0),
            };
            g.staged
                .put(ks, key.as_slice(), (current + delta).to_be_bytes());
            counted.push((day, hour, ScopeKey::from_vec(key), current + delta));
        }
        // The rows rewritten, for readers to look up (see `hot_rows`).
        let mut rewritten = Vec::with_capacity(g.days.len() + g.hours.len());
        for ((app, day), delta) in g.days.drain() {
            let key = keys::stat_key(app, keys::STAT_DAY, day);
            rewritten.push(key);
            let mut row = inner
                .stats
                .get(key)?
                .map(|v| DayStats::decode(&v))
                .unwrap_or_default();
            row.add(&delta);
            g.batch.insert(&inner.stats, key, row.encode());
        }
        for ((app, hour), delta) in g.hours.drain() {
            let key = keys::stat_key(app, keys::STAT_HOUR, hour);
            rewritten.push(key);
            let mut row = inner
                .stats
                .get(key)?
                .map(|v| decode_counts(&v))
                .unwrap_or_default();
            for (r, d) in row.iter_mut().flatten().zip(delta.iter().flatten()) {
                *r += d;
            }
            g.batch.insert(&inner.stats, key, encode_counts(&row));
        }
        inner.hot_stats.touch(g.seq, rewritten);
        for (app, (users, groups)) in g.totals.drain() {
            let key = keys::stat_total_key(app);
            let (u, gr) = inner
                .stats
                .get(key)?
                .map(|v| decode_totals(&v))
                .unwrap_or_default();
            let mut v = (u + users).to_be_bytes().to_vec();
            v.extend_from_slice(&(gr + groups).to_be_bytes());
            g.batch.insert(&inner.stats, key, v);
        }
        for (app, next) in &g.next_ids {
            g.batch
                .insert(&inner.meta, next_id_key(*app), next.to_be_bytes());
        }
        g.batch.insert(&inner.meta, SEQ_KEY, g.seq.to_be_bytes());
        let tallied = self.stage_tallies(&mut g)?;
        g.staged.drain_into(&mut g.batch);
        // Visible to readers now, durable at the syncer's next fsync, which answers the group.
        g.batch.commit()?;
        self.seq = g.seq;
        // The arena's memory serves the next commit, unless an unusually large one grew it.
        if g.arena.capacity() <= ARENA_KEPT {
            g.arena.clear();
            self.arena = g.arena;
        }
        let now = Instant::now();
        for day in g.partitions.keys() {
            self.written.insert(
                *day,
                Written {
                    at: now,
                    found: false,
                },
            );
        }
        self.next_ids.extend(g.next_ids);
        let mut by_app: HashMap<u32, Vec<u64>> = HashMap::default();
        for (app, id) in g.seen {
            by_app.entry(app).or_default().push(id);
        }
        for (app, mut ids) in by_app {
            if let Some(f) = self.fresh.get_mut(&app) {
                f.extend(&mut ids);
            }
        }
        for (day, keys) in g.presence {
            self.present.entry(day).or_default().extend(keys);
        }
        for (day, key, n) in tallied.values {
            self.tallies.entry(day).or_default().insert(key, n);
        }
        for at in tallied.folded {
            self.tally_logs.remove(&at);
        }
        for at in tallied.logged {
            *self.tally_logs.entry(at).or_default() += 1;
        }
        for (day, hour, key, n) in counted {
            self.counters.set(day, hour, key, n);
        }
        self.counters
            .trim(inner.config.counter_cache_keys, inner.config.busy_hour);
        if let Some(&newest) = self.present.keys().max() {
            self.present.retain(|d, _| *d > newest - PRESENT_DAYS);
            let present = &self.present;
            self.complete.retain(|d| present.contains_key(d));
            self.tallies.retain(|d, _| present.contains_key(d));
            // A day dropped here counts its logs again from its next write; its logs are
            // counted by readers meanwhile, and folded with the others then.
            self.tally_logs.retain(|(d, _), _| present.contains_key(d));
        }
        Ok(())
    }
}

/// A scope's messages in one hour of a [`Format::SparseCounters`] partition that has no
/// counter for it (`prefix` from [`keys::scope_prefix`] with [`keys::CNT`]): the positions in
/// its index chunks.
fn chunk_count(ks: &Keyspace, prefix: &[u8], hour: u32) -> Result<u64> {
    let mut chunk = prefix.to_vec();
    chunk[0] = keys::CHUNK;
    let lo = keys::chunk_key(&chunk, hour, 0);
    let hi = keys::chunk_key(&chunk, hour, u64::MAX);
    let mut n = 0;
    for kv in ks.range(lo..=hi) {
        let (_, v) = kv.into_inner()?;
        n += keys::chunk_entries(hour, &v, true).count() as u64;
    }
    Ok(n)
}
