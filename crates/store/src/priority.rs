//! Ingest yields the cores to queries. The threads that do ingest's CPU work (decoding request
//! bodies, the embedded store's writer, its fsync and merge threads, and fjall's background
//! worker) run at a higher nice value than the rest of the process, so that a history page or a
//! statistics request that wakes while ingest keeps both cores busy is scheduled at once instead
//! of sharing a core with them; they are also batch threads, which never preempt a running
//! thread when they wake. Ingest still takes every cycle the queries leave. Within ingest, the
//! decoding threads run below the writer, its one serial stage ([`DECODE_BELOW_WRITER`]).
//! Measured in bench/LIMITS.md (sessions 22 and 24).

use std::sync::Arc;

/// How much lower (in nice steps, 0-19) ingest threads run than the process: the default of
/// the `ingest_nice` setting.
pub const DEFAULT_INGEST_NICE: i32 = 10;

/// How many nice steps more than the writer the decoding threads take (19 at most), where ingest
/// is lowered at all. The writer is ingest's one serial stage; at its level the decoders, running
/// ahead of it on every core, kept it waiting for a core (bench/LIMITS.md, session 24).
pub const DECODE_BELOW_WRITER: i32 = 9;

/// The nice steps the decoding threads are lowered by, for ingest lowered by `nice`.
pub fn decode_nice(nice: i32) -> i32 {
    if nice <= 0 {
        0
    } else {
        nice + DECODE_BELOW_WRITER
    }
}

/// Lowers the calling thread's CPU priority by `nice` steps (its nice value rises, to 19 at
/// most). An unprivileged process cannot raise it back, so only threads that do nothing but
/// ingest work call this. Where the system refuses, the thread keeps its priority: a warning,
/// not a failure (priority changes what waits, never what is answered).
pub fn lower_this_thread(nice: i32) {
    if nice <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        // On Linux, "the process" 0 of these calls is the calling thread alone.
        let now = getpriority_process(None).unwrap_or(0);
        if let Err(e) = setpriority_process(None, (now + nice).min(19)) {
            tracing::warn!(error = %e, "cannot lower an ingest thread's priority");
        }
        // SCHED_BATCH as well: a thread of it never preempts a running one when it wakes (a
        // decode job, a batch for the writer, an fsync done), so a query keeps its core until
        // its slice ends. Any thread may choose it for itself.
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param for the call's duration; 0 is this thread.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot make an ingest thread a batch thread"
            );
        }
    }
}

/// Runs `f` on a new thread lowered by `nice` and waits for it: threads `f` starts inherit the
/// lower priority (how fjall's background worker gets it).
pub fn on_lowered_thread<T: Send>(nice: i32, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("imreport-open".into())
            .spawn_scoped(s, || {
                lower_this_thread(nice);
                f()
            })
            .expect("cannot start a thread")
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Threads below the writer's priority ([`decode_nice`]) for the CPU work of ingest requests
/// (decoding their bodies), one a core: at most that many bodies are decoded at once, whatever
/// the number of clients.
#[derive(Clone)]
pub struct IngestPool {
    pool: Arc<rayon::ThreadPool>,
}

impl IngestPool {
    /// A pool for ingest lowered by `nice` (the `ingest_nice` setting).
    pub fn new(nice: i32) -> std::io::Result<IngestPool> {
        let nice = decode_nice(nice);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("imreport-decode-{i}"))
            .start_handler(move |_| lower_this_thread(nice))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(IngestPool {
            pool: Arc::new(pool),
        })
    }

    /// Runs `f` on the pool and waits for it without holding an async worker. A panic in `f`
    /// resumes in the caller, as with `spawn_blocking`.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pool.spawn(move || {
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        });
        match rx.await.expect("the pool runs every job it is given") {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        rustix::process::getpriority_process(None).expect("getpriority")
    }

    fn is_batch() -> bool {
        // SAFETY: no arguments but this thread (0).
        unsafe { libc::sched_getscheduler(0) == libc::SCHED_BATCH }
    }

    #[test]
    fn lowered_threads_run_below_their_parent_and_pass_it_on() {
        let parent = nice_of_this_thread();
        let mine = || (nice_of_this_thread(), is_batch());
        let (own, child) =
            on_lowered_thread(5, || (mine(), std::thread::spawn(mine).join().unwrap()));
        assert_eq!(
            own,
            ((parent + 5).min(19), true),
            "lowered, and a batch thread"
        );
        assert_eq!(
            child, own,
            "threads started by a lowered thread inherit both"
        );
        assert_eq!(
            mine(),
            (parent, false),
            "the caller's priority is untouched"
        );
        assert_eq!(
            on_lowered_thread(0, mine),
            (parent, false),
            "0 lowers nothing"
        );
    }

    #[tokio::test]
    async fn the_ingest_pool_runs_jobs_lowered_and_returns_their_results() {
        let parent = nice_of_this_thread();
        let pool = IngestPool::new(3).unwrap();
        let (nice, batch, sum) = pool
            .run(|| (nice_of_this_thread(), is_batch(), (1..=10).sum::<i32>()))
            .await;
        assert_eq!(
            (nice, batch, sum),
            ((parent + 3 + DECODE_BELOW_WRITER).min(19), true, 55),
            "below the writer's level, a batch thread"
        );
        assert_eq!(nice_of_this_thread(), parent);
        assert!(!is_batch(), "the caller's policy is untouched");
        let panicked = tokio::spawn(async move { pool.run(|| panic!("in a job")).await }).await;
        assert!(panicked.is_err(), "a job's panic reaches its caller");
        let level = IngestPool::new(0).unwrap();
        assert_eq!(
            level.run(|| (nice_of_this_thread(), is_batch())).await,
            (parent, false),
            "ingest_nice 0 lowers no decoder either"
        );
    }
}
