//! The thread that makes committed groups durable before they are answered.

use super::*;

/// A committed group's replies and what each is to be told, and the events it was made of.
pub(super) struct Durable {
    pub(super) replies: Vec<(oneshot::Sender<Result<IngestOutcome>>, IngestOutcome)>,
    /// Freed here rather than on the writer, ingest's one serial stage: a group's messages own
    /// a dozen strings each, and freeing them was ~5% of the writer's time (bench/LIMITS.md).
    pub(super) spent: Vec<(Vec<Event>, Option<Records>)>,
}

/// Starts the thread that makes committed groups durable and only then answers them: one fsync
/// covers every group committed before it began. The writer goes on preparing the next group
/// meanwhile, instead of waiting out each fsync (about a fifth of its time when it did).
pub(super) fn spawn_syncer(
    inner: Arc<Inner>,
    failed: Arc<AtomicBool>,
) -> Result<std::sync::mpsc::Sender<Durable>> {
    let (tx, rx) = std::sync::mpsc::channel::<Durable>();
    std::thread::Builder::new()
        .name("imreport-sync".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut waiting = vec![first];
                waiting.extend(rx.try_iter());
                let started = std::time::Instant::now();
                let synced = inner
                    .db
                    .persist(PersistMode::SyncAll)
                    .map_err(StoreError::from);
                metrics::histogram!("imreport_writer_fsync_seconds")
                    .record(started.elapsed().as_secs_f64());
                if let Err(e) = &synced {
                    tracing::error!(error = %e, "fsync failed; the groups it covered are refused");
                    failed.store(true, Ordering::Relaxed);
                }
                let mut spent = Vec::with_capacity(waiting.len());
                for d in waiting {
                    for (reply, outcome) in d.replies {
                        let _ = reply.send(match &synced {
                            Ok(()) => Ok(outcome),
                            Err(e) => Err(e.clone()),
                        });
                    }
                    spent.push(d.spent);
                }
                drop(spent);
            }
        })
        .map_err(|e| StoreError::io("cannot start the sync thread", e))?;
    Ok(tx)
}
