//! The single writer. Ingest requests queue on a bounded channel; the writer takes every request
//! waiting (up to a cap), validates idempotency against the store, writes messages, indexes,
//! counters and sequences in one atomic fjall batch, fsyncs once, and answers them all. One
//! thread owning every write also makes read-modify-write of counters race-free.

use super::{Inner, keys};
use crate::{IngestOutcome, Result, StoreError};
use fjall::{Keyspace, PersistMode};
use imreport_domain::app::App;
use imreport_domain::event::Event;
use imreport_domain::message::{Message, TargetType, encode_record};
use imreport_domain::scope::Scope;
use imreport_domain::time::{MILLIS_PER_HOUR, utc_day};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use tokio::sync::oneshot;

/// Most events folded into one commit; bounds the memory and latency of a group.
const MAX_GROUP_EVENTS: usize = 100_000;
const SEQ_KEY: &str = "seq";
const USER: u8 = b'u';
const GROUP: u8 = b'g';
const REGISTERED: u8 = 1;
const REMOVED: u8 = 0;

pub(crate) enum Job {
    Ingest {
        app: App,
        events: Vec<Event>,
        reply: oneshot::Sender<Result<IngestOutcome>>,
    },
    Retention {
        reply: oneshot::Sender<Result<usize>>,
    },
    Ping {
        reply: oneshot::Sender<Result<()>>,
    },
}

#[derive(Clone)]
pub(crate) struct Handle {
    tx: SyncSender<Job>,
}

impl Handle {
    pub(crate) fn spawn(inner: Arc<Inner>) -> Result<Handle> {
        let (tx, rx) = sync_channel(inner.config.queue_depth.max(1));
        let seq = inner
            .meta
            .get(SEQ_KEY)?
            .map(|v| keys::u64_value(&v))
            .unwrap_or(0);
        let mut w = Writer {
            inner,
            seq,
            next_ids: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("imreport-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
        Ok(Handle { tx })
    }

    fn send<T>(
        &self,
        job: Job,
        rx: oneshot::Receiver<Result<T>>,
    ) -> impl Future<Output = Result<T>> + use<T> {
        let sent = match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(StoreError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::ShuttingDown),
        };
        async move {
            sent?;
            rx.await.map_err(|_| StoreError::ShuttingDown)?
        }
    }

    pub(crate) async fn ingest(&self, app: App, events: Vec<Event>) -> Result<IngestOutcome> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Ingest { app, events, reply }, rx).await
    }

    pub(crate) async fn retention(&self) -> Result<usize> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Retention { reply }, rx).await
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Ping { reply }, rx).await
    }
}

struct Writer {
    inner: Arc<Inner>,
    /// Last committed sequence.
    seq: u64,
    /// Next server-assigned msgid per app (loaded on first use).
    next_ids: HashMap<u32, u64>,
}

type IngestJob = (App, Vec<Event>, oneshot::Sender<Result<IngestOutcome>>);

impl Writer {
    fn run(&mut self, rx: Receiver<Job>) {
        let mut carry: Option<Job> = None;
        loop {
            let job = match carry.take() {
                Some(j) => j,
                None => match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                },
            };
            match job {
                Job::Retention { reply } => {
                    let _ = reply.send(self.retention());
                }
                Job::Ping { reply } => {
                    let _ = reply.send(self.ping());
                }
                Job::Ingest { app, events, reply } => {
                    let mut size = events.len();
                    let mut group: Vec<IngestJob> = vec![(app, events, reply)];
                    while size < MAX_GROUP_EVENTS {
                        match rx.try_recv() {
                            Ok(Job::Ingest { app, events, reply }) => {
                                size += events.len();
                                group.push((app, events, reply));
                            }
                            Ok(other) => {
                                carry = Some(other);
                                break;
                            }
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                    self.commit_group(group);
                }
            }
        }
    }

    fn ping(&self) -> Result<()> {
        self.inner
            .meta
            .insert("probe", self.inner.config.clock.now_ms().to_be_bytes())?;
        self.inner.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    fn retention(&self) -> Result<usize> {
        let horizon = self.inner.horizon_day(self.inner.config.clock.now_ms());
        let old: Vec<Keyspace> = {
            let mut days = self.inner.days.write().expect("lock");
            let keep = days.split_off(&horizon);
            std::mem::replace(&mut *days, keep).into_values().collect()
        };
        let n = old.len();
        for ks in old {
            self.inner.db.delete_keyspace(ks)?;
        }
        if n > 0 {
            tracing::info!(
                dropped_days = n,
                horizon_day = horizon,
                "retention dropped old day partitions"
            );
        }
        Ok(n)
    }

    fn commit_group(&mut self, group: Vec<IngestJob>) {
        let (jobs, replies): (Vec<_>, Vec<_>) =
            group.into_iter().map(|(a, e, r)| ((a, e), r)).unzip();
        match self.write(jobs) {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "ingest commit failed; nothing of the group was stored");
                // What is cached may be ahead of what is on disk: forget it.
                self.next_ids.clear();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Storage(e.to_string())));
                }
            }
        }
    }

    fn next_id(&mut self, app: u32) -> Result<u64> {
        if let Some(n) = self.next_ids.get(&app) {
            return Ok(*n);
        }
        let n = self
            .inner
            .meta
            .get(next_id_key(app))?
            .map(|v| keys::u64_value(&v))
            .unwrap_or(1);
        self.next_ids.insert(app, n);
        Ok(n)
    }

    fn write(&mut self, jobs: Vec<(App, Vec<Event>)>) -> Result<Vec<IngestOutcome>> {
        let inner = self.inner.clone();
        let now = inner.config.clock.now_ms();
        let horizon = inner.horizon_day(now);
        let seq = self.seq + 1;
        let mut batch = inner.db.batch();
        let mut seen: HashSet<(u32, u64)> = HashSet::new();
        let mut counters: HashMap<(i64, Vec<u8>), u64> = HashMap::new();
        let mut partitions: HashMap<i64, Keyspace> = HashMap::new();
        let mut entities: HashMap<Vec<u8>, u8> = HashMap::new();
        let mut next_ids: HashMap<u32, u64> = HashMap::new();
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut rec = Vec::with_capacity(512);

        for (app, events) in jobs {
            let mut out = IngestOutcome::default();
            for ev in events {
                match ev {
                    Event::Message(mut m) => {
                        let day = utc_day(m.msg_ctime);
                        if day < horizon {
                            out.expired += 1;
                            continue;
                        }
                        let next = match next_ids.get(&app.id) {
                            Some(n) => *n,
                            None => self.next_id(app.id)?,
                        };
                        if m.msgid == 0 {
                            m.msgid = next;
                        } else if seen.contains(&(app.id, m.msgid))
                            || self.stored(&app, m.msgid, horizon)?
                        {
                            out.duplicates += 1;
                            continue;
                        }
                        seen.insert((app.id, m.msgid));
                        next_ids.insert(app.id, next.max(m.msgid + 1));
                        let ks = match partitions.get(&day) {
                            Some(ks) => ks.clone(),
                            None => {
                                let ks = inner.day_or_create(day)?;
                                partitions.insert(day, ks.clone());
                                ks
                            }
                        };
                        rec.clear();
                        encode_record(&m, &app.key, seq, &mut rec);
                        batch.insert(
                            &ks,
                            keys::msg_key(app.id, m.msg_ctime, m.msgid),
                            rec.as_slice(),
                        );
                        batch.insert(&inner.ids, keys::id_key(app.id, m.msgid), day.to_be_bytes());
                        let hour = (m.msg_ctime / MILLIS_PER_HOUR) as u32;
                        *counters
                            .entry((
                                day,
                                keys::counter_key(
                                    &keys::scope_prefix(keys::CNT, app.id, &Scope::App),
                                    hour,
                                ),
                            ))
                            .or_default() += 1;
                        for scope in scopes_of(&m) {
                            let idx = keys::scope_prefix(keys::IDX, app.id, &scope);
                            batch.insert(
                                &ks,
                                keys::with_position(&idx, m.msg_ctime, m.msgid),
                                b"".as_slice(),
                            );
                            let cnt = keys::scope_prefix(keys::CNT, app.id, &scope);
                            *counters
                                .entry((day, keys::counter_key(&cnt, hour)))
                                .or_default() += 1;
                        }
                        out.accepted += 1;
                    }
                    Event::UserRegistered { username, time } => self.lifecycle(
                        &mut batch,
                        &mut entities,
                        &mut out,
                        app.id,
                        USER,
                        &username,
                        REGISTERED,
                        time,
                    )?,
                    Event::UserDeleted { username, time } => self.lifecycle(
                        &mut batch,
                        &mut entities,
                        &mut out,
                        app.id,
                        USER,
                        &username,
                        REMOVED,
                        time,
                    )?,
                    Event::GroupCreated { gid, time } => self.lifecycle(
                        &mut batch,
                        &mut entities,
                        &mut out,
                        app.id,
                        GROUP,
                        &gid,
                        REGISTERED,
                        time,
                    )?,
                    Event::GroupDeleted { gid, time } => self.lifecycle(
                        &mut batch,
                        &mut entities,
                        &mut out,
                        app.id,
                        GROUP,
                        &gid,
                        REMOVED,
                        time,
                    )?,
                    Event::UserLogin { time, .. } => {
                        if utc_day(time) < horizon {
                            out.expired += 1;
                        } else {
                            out.accepted += 1;
                        }
                    }
                }
            }
            outcomes.push(out);
        }

        for ((day, key), delta) in counters {
            let ks = &partitions[&day];
            let current = ks.get(&key)?.map(|v| keys::u64_value(&v)).unwrap_or(0);
            batch.insert(ks, key, (current + delta).to_be_bytes());
        }
        for (app, next) in &next_ids {
            batch.insert(&inner.meta, next_id_key(*app), next.to_be_bytes());
        }
        batch.insert(&inner.meta, SEQ_KEY, seq.to_be_bytes());
        batch.commit()?;
        inner.db.persist(PersistMode::SyncAll)?;
        self.seq = seq;
        self.next_ids.extend(next_ids);
        Ok(outcomes)
    }

    /// Whether the app already holds a message with this id (in a day still retained).
    fn stored(&self, app: &App, msgid: u64, horizon: i64) -> Result<bool> {
        let Some(v) = self.inner.ids.get(keys::id_key(app.id, msgid))? else {
            return Ok(false);
        };
        let day = v
            .as_ref()
            .try_into()
            .map(i64::from_be_bytes)
            .unwrap_or(i64::MIN);
        // An entry whose day was dropped by retention is stale: that message is gone.
        Ok(day >= horizon && self.inner.day(day).is_some())
    }

    #[allow(clippy::too_many_arguments)]
    fn lifecycle(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        overlay: &mut HashMap<Vec<u8>, u8>,
        out: &mut IngestOutcome,
        app: u32,
        kind: u8,
        id: &str,
        state: u8,
        time: i64,
    ) -> Result<()> {
        let key = keys::entity_key(app, kind, id);
        let current = match overlay.get(&key) {
            Some(s) => Some(*s),
            None => self
                .inner
                .entities
                .get(&key)?
                .and_then(|v| v.first().copied()),
        };
        let changes = match state {
            REGISTERED => current != Some(REGISTERED),
            _ => current == Some(REGISTERED),
        };
        if !changes {
            out.duplicates += 1;
            return Ok(());
        }
        let mut v = vec![state];
        v.extend_from_slice(&time.to_be_bytes());
        batch.insert(&self.inner.entities, key.clone(), v);
        overlay.insert(key, state);
        out.accepted += 1;
        Ok(())
    }
}

fn next_id_key(app: u32) -> String {
    format!("nextid/{app}")
}

/// The non-app scopes a message belongs to: its sender, and its target.
fn scopes_of(m: &Message) -> Vec<Scope> {
    let mut v = vec![Scope::User(m.from_id.clone())];
    match m.target_type {
        TargetType::Single if m.target_id != m.from_id => v.push(Scope::User(m.target_id.clone())),
        TargetType::Single => {}
        TargetType::Group => v.push(Scope::Group(m.target_id.clone())),
        TargetType::Chatroom => v.push(Scope::Chatroom(m.target_id.clone())),
    }
    v
}
