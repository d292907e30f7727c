//! The intake engine against a scripted stream and a real embedded store: what becomes of
//! each kind of message (stored, duplicate, poison, unknown app), and that consumption pauses
//! and hands messages back while the store cannot take writes.

use bytes::Bytes;
use imreport_domain::Clock;
use imreport_domain::event::IngestLimits;
use imreport_domain::time::ReportTz;
use imreport_intake::{Delivery, Engine, Lag, Source, SourceError, Status};
use imreport_store::embedded::{EmbeddedConfig, EmbeddedStore};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NOW: i64 = 1_795_176_000_000;

/// What became of each message, by its origin.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    Acked,
    Retried,
    Dead(String),
}

#[derive(Default)]
struct Script {
    queue: VecDeque<(String, Bytes, String)>,
    fates: Vec<(String, Fate)>,
}

type Shared = Arc<Mutex<Script>>;

struct FakeDelivery {
    key: String,
    payload: Bytes,
    origin: String,
    script: Shared,
}

#[async_trait::async_trait]
impl Delivery for FakeDelivery {
    fn app_key(&self) -> &str {
        &self.key
    }
    fn payload(&self) -> Bytes {
        self.payload.clone()
    }
    fn origin(&self) -> String {
        self.origin.clone()
    }
    async fn ack(&self) -> Result<(), SourceError> {
        self.settle(Fate::Acked);
        Ok(())
    }
    async fn retry(&self, _: Duration) -> Result<(), SourceError> {
        self.settle(Fate::Retried);
        // Delivered again, as a stream does.
        let mut s = self.script.lock().unwrap();
        s.queue
            .push_back((self.key.clone(), self.payload.clone(), self.origin.clone()));
        Ok(())
    }
    async fn dead_letter(&self, error: &str) -> Result<(), SourceError> {
        self.settle(Fate::Dead(error.to_owned()));
        Ok(())
    }
}

impl FakeDelivery {
    fn settle(&self, f: Fate) {
        self.script
            .lock()
            .unwrap()
            .fates
            .push((self.origin.clone(), f));
    }
}

struct FakeSource(Shared);

#[async_trait::async_trait]
impl Source for FakeSource {
    async fn next(&mut self, max: usize) -> Result<Vec<Box<dyn Delivery>>, SourceError> {
        let taken: Vec<_> = {
            let mut s = self.0.lock().unwrap();
            let n = s.queue.len().min(max);
            s.queue.drain(..n).collect()
        };
        if taken.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(taken
            .into_iter()
            .map(|(key, payload, origin)| {
                Box::new(FakeDelivery {
                    key,
                    payload,
                    origin,
                    script: self.0.clone(),
                }) as Box<dyn Delivery>
            })
            .collect())
    }
    async fn lag(&mut self) -> Result<Lag, SourceError> {
        Ok(Lag {
            pending: self.0.lock().unwrap().queue.len() as u64,
            ack_pending: 0,
        })
    }
}

fn message(msgid: u64, t: i64) -> String {
    format!(
        r#"{{"event":"message","msgid":{msgid},"msg_ctime":{t},"target_type":"single","target_id":"bob","from_id":"alice","msg_type":"text","msg_body":{{"text":"hi"}}}}"#
    )
}

struct Rig {
    store: EmbeddedStore,
    key: String,
    script: Shared,
    status: Arc<Status>,
    _dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig::new(
        60,
        64,
        ReportTz::new("Asia/Shanghai").unwrap(),
        0,
        Clock::manual(NOW),
    );
    let store = EmbeddedStore::open(dir.path(), config).unwrap();
    let creds = imreport_store::apps::create_app(&store, Default::default())
        .await
        .unwrap();
    Rig {
        store,
        key: creds.app_key,
        script: Shared::default(),
        status: Arc::new(Status::default()),
        _dir: dir,
    }
}

impl Rig {
    fn push(&self, key: &str, origin: &str, payload: impl Into<String>) {
        self.script.lock().unwrap().queue.push_back((
            key.to_owned(),
            Bytes::from(payload.into()),
            origin.to_owned(),
        ));
    }

    /// Runs the engine until every message has been settled for good (acked or dead).
    fn start(
        &self,
        batch: usize,
    ) -> (
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let engine = Engine {
            store: Arc::new(self.store.clone()),
            limits: IngestLimits::default(),
            clock: Clock::manual(NOW),
            status: self.status.clone(),
            batch,
            pool: imreport_store::priority::IngestPool::new(0).unwrap(),
        };
        let source = FakeSource(self.script.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            engine
                .run(source, async {
                    let _ = rx.await;
                })
                .await
        });
        (task, tx)
    }

    async fn until_settled(&self, n: usize) {
        for _ in 0..1000 {
            let done = {
                let s = self.script.lock().unwrap();
                s.queue.is_empty()
                    && s.fates.iter().filter(|(_, f)| *f != Fate::Retried).count() >= n
            };
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not settled: {:?}", self.script.lock().unwrap().fates);
    }

    fn fate(&self, origin: &str) -> Vec<Fate> {
        let s = self.script.lock().unwrap();
        s.fates
            .iter()
            .filter(|(o, _)| o == origin)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

/// One of each kind of message.
fn push_every_kind(r: &Rig) {
    let (k, t) = (r.key.clone(), NOW - 60_000);
    r.push(
        &k,
        "a",
        format!("{}\n{}\n{}", message(1, t), message(2, t), message(3, t)),
    );
    r.push(
        &k,
        "a-again",
        format!("{}\n{}", message(1, t), message(2, t)),
    );
    r.push(&k, "not-json", "{not json");
    r.push(
        &k,
        "no-msgid",
        r#"{"event":"message","target_type":"single","target_id":"b","from_id":"a","msg_type":"text","msg_body":{"text":"x"}}"#,
    );
    r.push("nosuchapp00000000000000", "no-app", message(9, t));
    r.push(
        &k,
        "half-bad",
        format!("{}\n{{\"event\":\"message\",\"msgid\":5}}", message(4, t)),
    );
    r.push(&k, "b", format!("[{},{}]", message(6, t), message(7, t)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_is_stored_whole_once_or_dead_lettered_with_its_error() {
    let r = rig().await;
    // One message at a time, then all at once (one batch per app): the second time everything
    // is a duplicate.
    for (round, batch) in [(1u64, 1usize), (2, 256)] {
        push_every_kind(&r);
        let (task, stop) = r.start(batch);
        r.until_settled(7).await;
        let _ = stop.send(());
        task.await.unwrap();
        for ok in ["a", "a-again", "b"] {
            assert_eq!(r.fate(ok), [Fate::Acked], "{ok}");
        }
        for (origin, why) in [
            ("not-json", "line 1"),
            ("no-msgid", "without msgid"),
            ("no-app", "no app has key"),
            ("half-bad", "line 2"),
        ] {
            match &r.fate(origin)[..] {
                [Fate::Dead(e)] => assert!(e.contains(why), "{origin}: {e}"),
                f => panic!("{origin}: {f:?}"),
            }
        }
        let s = &r.status;
        assert_eq!(s.acked.load(Relaxed), 3 * round);
        assert_eq!(s.dead_lettered.load(Relaxed), 4 * round);
        assert_eq!(s.accepted.load(Relaxed), 5, "msgids 1, 2, 3, 6 and 7, once");
        assert_eq!(s.duplicates.load(Relaxed), 2 + 7 * (round - 1));
        r.script.lock().unwrap().fates.clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_store_cannot_write_messages_come_back_and_consumption_pauses() {
    let r = rig().await;
    let k = r.key.clone();
    // A full disk: the store refuses every write.
    r.store.set_min_free_disk_bytes(u64::MAX);
    for i in 0..20u64 {
        r.push(&k, &format!("m{i}"), message(i + 1, NOW - 1000));
    }
    let (task, stop) = r.start(8);
    for _ in 0..500 {
        if r.status.retried.load(Relaxed) >= 20 && r.status.paused.load(Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(r.status.paused.load(Relaxed), "consumption paused");
    assert_eq!(r.status.acked.load(Relaxed), 0, "nothing acknowledged");
    let retried = r.status.retried.load(Relaxed);
    // Paused, it takes nothing for a while: far fewer handbacks than a busy loop would make.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        r.status.retried.load(Relaxed) <= retried + 3 * 8,
        "consumption slowed"
    );
    // Space again: everything goes in, once.
    r.store.set_min_free_disk_bytes(0);
    r.until_settled(20).await;
    let _ = stop.send(());
    task.await.unwrap();
    assert_eq!(r.status.acked.load(Relaxed), 20);
    assert_eq!(r.status.accepted.load(Relaxed), 20);
    for i in 0..20 {
        assert_eq!(r.fate(&format!("m{i}")).last(), Some(&Fate::Acked));
    }
}
