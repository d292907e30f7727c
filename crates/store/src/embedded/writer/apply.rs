//! Applying one event of a commit group: a message (duplicate check, record, index entries,
//! counters, rollups) or a lifecycle change, and the presence marks they make.

use super::super::spares::Ahead;
use super::*;

impl Writer {
    /// Stores one message; `None` when expired, `Some(false)` when a duplicate.
    pub(super) fn message(
        &mut self,
        g: &mut Group,
        app: &App,
        m: &mut Message,
        ahead: Option<&[u8]>,
    ) -> Result<Option<bool>> {
        let inner = self.inner.clone();
        let day = inner.pday(m.msg_ctime);
        if day < g.horizon {
            return Ok(None);
        }
        let next = self.next_id(g, app.id)?;
        if m.msgid == 0 {
            m.msgid = next;
        } else if m.msgid < next
            && (g.seen.contains(&(app.id, m.msgid))
                || (!self
                    .fresh
                    .get(&app.id)
                    .is_some_and(|f| f.certainly_new(m.msgid))
                    && self.stored(app, m.msgid, g.horizon)?))
        {
            return Ok(Some(false));
        }
        g.seen.insert((app.id, m.msgid));
        g.next_ids.insert(app.id, next.max(m.msgid + 1));
        // The partition's handle (two keyspaces) is cloned only for a day new to the group:
        // cloning it for every message was ~1% of the writer's time.
        let format = match g.partitions.get(&day) {
            Some((_, format)) => *format,
            None => {
                let part = match inner.day(day) {
                    Some(part) => {
                        if let std::collections::hash_map::Entry::Vacant(e) =
                            self.counters.days.entry(day)
                        {
                            e.insert(DayCounters::holding_through(last_message(
                                &inner,
                                &part.records,
                            )?));
                        }
                        part
                    }
                    None => {
                        let part = inner.day_or_create(day)?;
                        self.counters.days.insert(day, DayCounters::default());
                        let _ = self.ahead.send(Ahead::Day(day + 1));
                        part
                    }
                };
                let format = inner.format(day);
                g.partitions.insert(day, (part, format));
                format
            }
        };
        if format >= Format::Runs {
            let start = g.arena.len();
            match ahead {
                Some(rec) => sequence_record(rec, g.seq, &mut g.arena),
                None => encode_record(m, &app.key, g.seq, &mut g.arena),
            }
            g.records
                .entry((day, app.id))
                .or_default()
                .push(((m.msg_ctime, m.msgid), (start, g.arena.len())));
        } else {
            g.rec.clear();
            encode_record(m, &app.key, g.seq, &mut g.rec);
            g.staged.put(
                &g.partitions[&day].0.records,
                keys::msg_key(app.id, m.msg_ctime, m.msgid),
                g.rec.as_slice(),
            );
        }
        let (block, bit) = keys::id_block(app.id, m.msgid);
        let pairs = g.id_blocks.entry(block).or_default();
        match pairs.iter_mut().find(|(d, _)| *d == day) {
            Some((_, mask)) => *mask |= bit,
            None => pairs.push((day, bit)),
        }
        let hour = (m.msg_ctime / MILLIS_PER_HOUR) as u32;
        *g.app_hours.entry((day, app.id, hour)).or_default() += 1;
        if format >= Format::Minutes {
            let minute = (m.msg_ctime / MILLIS_PER_MINUTE) as u32;
            *g.app_minutes.entry((day, app.id, minute)).or_default() += 1;
        }
        let by_scope = g.scopes.entry((day, hour)).or_default();
        for (tag, id) in m.scope_ids() {
            keys::scope_prefix_into(keys::IDX, app.id, tag, id, &mut g.key);
            let position = (m.msg_ctime, m.msgid);
            match by_scope.get_mut(g.key.as_slice()) {
                Some(positions) => positions.push(position),
                None => {
                    by_scope.insert(ScopeKey::from_slice(&g.key), vec![position]);
                }
            }
        }

        // Statistics rollups, in the same batch.
        let r = MessageRollup::of(m, &inner.config.tz);
        r.count(
            g.hours.entry((app.id, r.hour)).or_default(),
            g.days.entry((app.id, r.day)).or_default(),
        );
        // A sender already in the day's set is among its active users too (a message marks
        // both, the sender first, and a stored sender implies the other): its second lookup,
        // in a set of the day's every member, was ~3% of the writer's time.
        let mut known_sender = false;
        for mark in r.marks() {
            if known_sender && mark.set == Presence::ActiveUser {
                continue;
            }
            if mark.set.tallied() {
                tally(g, app.id, mark);
            }
            let added = self.mark(g, app.id, mark)?;
            known_sender = mark.set == Presence::Sender && !added;
        }
        Ok(Some(true))
    }

    /// The group's tally deltas, staged. Writing each sender's and group's tally at every commit
    /// that holds their messages was a quarter of the writer's time (a commit of 5,000 messages
    /// touches ~2,600 of them). So a commit writes its deltas per app and day as one log key
    /// instead, and every [`TALLY_FOLD`]th commit of an app and day adds the day's logs (read
    /// back: they are recent) and its own deltas to the tallies and deletes those logs, all in
    /// its batch: a tally read adds a day's logs to its tallies (see `read::busiest`), so every
    /// snapshot counts each message once. Returns the tallies written, to cache once the group
    /// is committed, and the logs written and folded, to count then.
    pub(super) fn stage_tallies(&mut self, g: &mut Group) -> Result<StagedTallies> {
        let mut out = StagedTallies::default();
        for (day, deltas) in std::mem::take(&mut g.tallies) {
            let ks = self.act(day)?;
            let mut by_app: BTreeMap<u32, Vec<(PresenceKey, u64)>> = BTreeMap::new();
            for (key, delta) in deltas {
                let (app, _) = keys::split_entity_key(&key);
                by_app.entry(app).or_default().push((key, delta));
            }
            for (app, deltas) in by_app {
                let logs = self.tally_logs.get(&(day, app)).copied().unwrap_or(0);
                if logs + 1 < TALLY_FOLD {
                    let mut log = Vec::with_capacity(deltas.len() * 16);
                    for (key, delta) in &deltas {
                        keys::encode_tally_log(keys::split_entity_key(key).1, *delta, &mut log);
                    }
                    g.staged
                        .put(&ks, keys::tally_log_key(app, g.seq).as_slice(), log);
                    out.logged.push((day, app));
                    continue;
                }
                // Fold every log of the app and day found (those of an earlier run of the
                // writer too), with this commit's deltas.
                let mut all: HashMap<PresenceKey, u64> = deltas.into_iter().collect();
                let mut key = PresenceKey::new();
                for kv in ks.prefix(keys::tally_log_prefix(app)) {
                    let (k, v) = kv.into_inner()?;
                    for (rest, delta) in keys::tally_log_entries(&v) {
                        key.clear();
                        keys::join_entity_key(app, rest, &mut key);
                        *all.entry(key.clone()).or_default() += delta;
                    }
                    g.batch.remove(&ks, k);
                }
                let known = self.tallies.get(&day);
                let complete = self.complete.contains(&day);
                for (key, delta) in all {
                    let stored = match known.and_then(|t| t.get(&key)) {
                        Some(n) => *n,
                        None if complete => 0,
                        None => ks.get(&key)?.map_or(0, |v| keys::u64_value(&v)),
                    };
                    let n = stored + delta;
                    g.staged
                        .put(&ks, key.as_slice(), n.to_be_bytes().as_slice());
                    out.values.push((day, key, n));
                }
                out.folded.push((day, app));
            }
        }
        Ok(out)
    }

    /// Adds an id to a day's presence set and, if it was not there yet, counts it in the day's
    /// row; `true` then. (`g.presence` holds the keys this group found or added; they join the
    /// cache once the group is committed.)
    ///
    /// A member is stored as a key of its own only where nothing else stored implies it: a
    /// sender or group (a tallied set) is a member through its tally, which this batch writes
    /// (as a tally log, or folded), and a user active that day as its sender through that
    /// membership. Those keys were ~19% of the writer's memtable inserts (bench/LIMITS.md).
    /// Presence keys written before are still read (see [`Writer::stored_member`]).
    pub(super) fn mark(&mut self, g: &mut Group, app: u32, mark: Mark<'_>) -> Result<bool> {
        let day = mark.day;
        keys::entity_key_into(app, mark.set.code(), mark.id, &mut g.key);
        if self.held(g, day, &g.key) {
            return Ok(false);
        }
        let key = PresenceKey::from_slice(&g.key);
        let ks = self.act(day)?;
        if !self.complete.contains(&day) && self.stored_member(g, &ks, app, mark)? {
            g.presence.entry(day).or_default().insert(key);
            return Ok(false);
        }
        let implied = mark.set.tallied() || {
            // Messages mark their sender before it as active (`MessageRollup::marks`).
            keys::entity_key_into(app, Presence::Sender.code(), mark.id, &mut g.key);
            self.held(g, day, &g.key)
        };
        if !implied {
            g.staged.put(&ks, key.as_slice(), b"".as_slice());
        }
        g.presence.entry(day).or_default().insert(key);
        mark.set.count(g.days.entry((app, day)).or_default());
        Ok(true)
    }

    /// Whether this writer holds `key` in the day's presence set (stored, or added by `g`).
    fn held(&self, g: &Group, day: i64, key: &[u8]) -> bool {
        self.present.get(&day).is_some_and(|s| s.contains(key))
            || g.presence.get(&day).is_some_and(|s| s.contains(key))
    }

    /// Whether a day's stored presence set (keyspace `ks`) holds the mark's id, for a day this
    /// writer does not hold whole in memory: through its own key (every member's, as written
    /// before tallies implied them; a user's who logged in before sending), its tally or an
    /// unfolded tally log (a sender's or group's), or, for an active user, its membership of
    /// the day's senders.
    pub(super) fn stored_member(
        &self,
        g: &mut Group,
        ks: &Keyspace,
        app: u32,
        mark: Mark<'_>,
    ) -> Result<bool> {
        let mut key = Vec::with_capacity(5 + mark.id.len());
        keys::entity_key_into(app, mark.set.code(), mark.id, &mut key);
        if ks.contains_key(&key)? {
            return Ok(true);
        }
        let tallied = match mark.set {
            Presence::ActiveUser => Presence::Sender,
            set if set.tallied() => set,
            _ => return Ok(false),
        };
        if tallied != mark.set {
            keys::entity_key_into(app, tallied.code(), mark.id, &mut key);
            if ks.contains_key(&key)? {
                return Ok(true);
            }
        }
        keys::tally_key_into(app, tallied, mark.id, &mut key);
        if ks.contains_key(&key)? {
            return Ok(true);
        }
        let logged = match g.logged.entry((mark.day, app)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut keys = HashSet::default();
                for kv in ks.prefix(keys::tally_log_prefix(app)) {
                    let (_, v) = kv.into_inner()?;
                    for (rest, _) in keys::tally_log_entries(&v) {
                        let mut k = PresenceKey::new();
                        keys::join_entity_key(app, rest, &mut k);
                        keys.insert(k);
                    }
                }
                e.insert(keys)
            }
        };
        Ok(logged.contains(key.as_slice()))
    }

    /// The day's presence keyspace; one this writer creates starts out complete in `present`.
    pub(super) fn act(&mut self, day: i64) -> Result<Keyspace> {
        if let Some(ks) = self.inner.acts.read().expect("lock").get(&day) {
            return Ok(ks.clone());
        }
        let ks = self.inner.act(day)?;
        self.complete.insert(day);
        let _ = self.ahead.send(Ahead::Act(day + 1));
        Ok(ks)
    }

    /// Whether the app already holds a message with this id (in a day still retained).
    pub(super) fn stored(&self, app: &App, msgid: u64, horizon: i64) -> Result<bool> {
        // An entry whose day was dropped by retention is stale: that message is gone.
        let live = |day: i64| day >= horizon && self.inner.day(day).is_some();
        let (block, bit) = keys::id_block(app.id, msgid);
        if let Some(v) = self.inner.id_blocks.get(block)?
            && let Some((day, _)) = keys::id_block_pairs(&v).find(|(_, m)| m & bit != 0)
        {
            return Ok(live(day));
        }
        // Stored before the blocks, if at all.
        if !self.inner.legacy_ids {
            return Ok(false);
        }
        let Some(v) = self.inner.ids.get(keys::id_key(app.id, msgid))? else {
            return Ok(false);
        };
        let day = v
            .as_ref()
            .try_into()
            .map(i64::from_be_bytes)
            .unwrap_or(i64::MIN);
        Ok(live(day))
    }

    /// A duplicate-index block with a commit's msgids added: read-modify-write, but a block of
    /// ids none of which is stored yet (ids mostly come in runs: most blocks are new) needs no
    /// read. Pairs of days retention dropped go on the way.
    pub(super) fn merge_id_block(
        &self,
        block: &[u8; 12],
        new: Vec<(i64, u64)>,
        horizon: i64,
    ) -> Result<Vec<(i64, u64)>> {
        let app = u32::from_be_bytes(block[..4].try_into().expect("4 bytes"));
        let lo = u64::from_be_bytes(block[4..].try_into().expect("8 bytes")) * keys::ID_BLOCK;
        let unread = self
            .fresh
            .get(&app)
            .is_some_and(|f| f.certainly_none_in(lo, lo.saturating_add(keys::ID_BLOCK)));
        let mut pairs: Vec<(i64, u64)> = match unread {
            true => Vec::new(),
            false => match self.inner.id_blocks.get(block)? {
                Some(v) => keys::id_block_pairs(&v)
                    .filter(|(d, _)| *d >= horizon)
                    .collect(),
                None => Vec::new(),
            },
        };
        for (day, mask) in new {
            match pairs.iter_mut().find(|(d, _)| *d == day) {
                Some((_, m)) => *m |= mask,
                None => pairs.push((day, mask)),
            }
        }
        pairs.sort_unstable();
        Ok(pairs)
    }

    /// Records a user or group lifecycle event in the entity's history and applies the change
    /// it makes to the day rows and all-time totals. `Some(false)` when it changes nothing.
    pub(super) fn lifecycle(
        &self,
        g: &mut Group,
        app: u32,
        kind: u8,
        id: &str,
        what: u8,
        time: Millis,
    ) -> Result<Option<bool>> {
        let key = keys::entity_key(app, kind, id);
        let mut history = match g.entities.get(&key) {
            Some(h) => h.clone(),
            None => self
                .inner
                .entities
                .get(&key)?
                .map(|v| decode_history(&v))
                .unwrap_or_default(),
        };
        let tz = &self.inner.config.tz;
        let Some(change) = apply_lifecycle(&mut history, time, what, |t| tz.civil_day(t)) else {
            return Ok(Some(false));
        };
        g.batch
            .insert(&self.inner.entities, key.clone(), encode_history(&history));
        g.entities.insert(key, history);
        if change.days.is_empty() {
            return Ok(Some(false));
        }
        for (day, d_new, d_net) in change.days {
            if day >= g.stats_horizon {
                g.days
                    .entry((app, day))
                    .or_default()
                    .add_lifecycle(kind == USER, d_new, d_net);
            }
        }
        let total = g.totals.entry(app).or_default();
        if kind == USER {
            total.0 += change.net_total;
        } else {
            total.1 += change.net_total;
        }
        Ok(Some(true))
    }
}

/// Counts a message in a tally of its day (the sender's, or the group's).
fn tally(g: &mut Group, app: u32, mark: Mark<'_>) {
    keys::tally_key_into(app, mark.set, mark.id, &mut g.key);
    let deltas = g.tallies.entry(mark.day).or_default();
    match deltas.get_mut(g.key.as_slice()) {
        Some(n) => *n += 1,
        None => {
            deltas.insert(PresenceKey::from_slice(&g.key), 1);
        }
    }
}

/// The latest instant any app's message in partition `ks` can have (its last run's first
/// position plus a run's span), if it holds any.
fn last_message(inner: &Inner, ks: &Keyspace) -> Result<Option<Millis>> {
    let mut last = None;
    for app in inner.app_ids() {
        let mut prefix = vec![keys::MSG];
        prefix.extend_from_slice(&app.to_be_bytes());
        if let Some(kv) = ks.prefix(&prefix).next_back() {
            let (ctime, _) = keys::position_of(&kv.key()?);
            last = last.max(Some(ctime + keys::RUN_SPAN));
        }
    }
    Ok(last)
}
