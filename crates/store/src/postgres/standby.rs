//! Read replicas: PostgreSQL hot standbys (streaming replication) that serve history and
//! statistics while ingest goes to the primary.
//!
//! Which reads a standby may serve:
//! - a **first page or statistics** when it is fresh: a watcher compares, every second, each
//!   standby's replay position with the primary's recent write positions, and a standby more
//!   than `max_lag` behind (or unreachable) serves nothing until it catches up. Without a
//!   primary to compare with (it is down), every reachable standby serves.
//! - a **next page** only when its own snapshot covers the walk's (see
//!   [`imreport_domain::cursor::Snapshot::covers`]): every transaction the walk sees has
//!   finished there. A standby behind the walk is given a moment to replay, then the page is
//!   read on the primary. So a walk begun on the primary can go on on a standby, and one begun
//!   on a standby on the primary, and every page stays exactly the walk's snapshot.

use super::{pg_error, retryable};
use crate::StoreError;
use deadpool_postgres::{Object, Pool};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

/// How often the watcher samples positions.
const TICK: Duration = Duration::from_secs(1);
/// How long a next page waits for a standby to replay what its walk saw before it reads the
/// primary instead.
pub(crate) const CATCH_UP: Duration = Duration::from_millis(200);

pub(crate) struct Standby {
    /// `host:port`, for logs and metrics.
    pub(crate) name: String,
    pool: Pool,
    /// Whether it may serve first pages and statistics (reachable and fresh enough).
    fresh: Mutex<bool>,
}

pub(crate) struct Standbys {
    list: Vec<Standby>,
    next: AtomicUsize,
    max_lag: Duration,
    /// The primary's recent write positions, oldest first.
    samples: Mutex<VecDeque<(Instant, i64)>>,
}

impl Standbys {
    pub(crate) fn new(list: Vec<(String, Pool)>, max_lag: Duration) -> Self {
        Standbys {
            list: list
                .into_iter()
                .map(|(name, pool)| Standby {
                    name,
                    pool,
                    // Until the watcher's first look, moments after the start.
                    fresh: Mutex::new(false),
                })
                .collect(),
            next: AtomicUsize::new(0),
            max_lag,
            samples: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The next fresh standby in turn, if any.
    pub(crate) fn pick(&self) -> Option<&Standby> {
        let n = self.list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.list[(start + i) % n])
            .find(|s| s.is_fresh())
    }
}

impl Standby {
    fn is_fresh(&self) -> bool {
        *self.fresh.lock().expect("lock")
    }

    /// A connection, or `None` (and the standby set aside until the watcher sees it again)
    /// when it cannot be had.
    pub(crate) async fn client(&self) -> Option<Object> {
        match self.pool.get().await {
            Ok(c) => Some(c),
            Err(e) => {
                self.failed(&e.to_string());
                None
            }
        }
    }

    /// Sets the standby aside after a read failed because of it; the watcher brings it back.
    pub(crate) fn failed(&self, why: &str) {
        let mut fresh = self.fresh.lock().expect("lock");
        if *fresh {
            tracing::warn!(standby = %self.name, error = %why, "standby set aside for reads");
        }
        *fresh = false;
    }
}

/// A standby's `host:port` (each host's, for a multi-host URL), for logs and metrics.
pub(crate) fn name(pg: &tokio_postgres::Config) -> String {
    pg.get_hosts()
        .iter()
        .zip(pg.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
            tokio_postgres::config::Host::Unix(d) => format!("{}:{p}", d.display()),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a read that failed on a standby should be tried elsewhere: the standby is gone or
/// refused it, or recovery cancelled the query (a conflict with replay, SQLSTATE 40001/40P01).
pub(crate) fn elsewhere(e: &StoreError) -> bool {
    match e {
        StoreError::Unavailable(_) | StoreError::Overloaded => true,
        StoreError::Postgres(e) => retryable(e),
        _ => false,
    }
}

/// Every [`TICK`] while the store lives: the primary's write position, each standby's replay
/// position, and from them each standby's lag and freshness (metric
/// `imreport_postgres_standby_lag_seconds`).
pub(crate) async fn watch(inner: Weak<super::Inner>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let sb = &inner.standbys;
        let now = Instant::now();
        let primary = position(&inner.pool, "pg_current_wal_lsn()").await.ok();
        {
            let mut samples = sb.samples.lock().expect("lock");
            if let Some(lsn) = primary {
                samples.push_back((now, lsn));
            }
            while samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > sb.max_lag + 10 * TICK)
            {
                samples.pop_front();
            }
        }
        for s in &sb.list {
            // A standby promoted meanwhile has everything it replayed.
            let replayed = position(
                &s.pool,
                "coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn())",
            )
            .await;
            // The lag, and whether it is within bounds.
            let (lag, ok) = match replayed {
                Err(why) => {
                    s.failed(&why);
                    continue;
                }
                // No primary to compare with: nothing newer is being written.
                Ok(_) if primary.is_none() => (Duration::ZERO, true),
                Ok(r) => {
                    let samples = sb.samples.lock().expect("lock");
                    // Since the newest moment whose writes it has all replayed.
                    match samples.iter().rev().find(|(_, lsn)| *lsn <= r) {
                        Some((t, _)) => {
                            let lag = now.duration_since(*t);
                            (lag, lag <= sb.max_lag)
                        }
                        // Behind even the oldest position sampled: at least that far behind,
                        // and not known to be within bounds (just after the start, until
                        // the next sample).
                        None => (
                            samples
                                .front()
                                .map_or(Duration::ZERO, |(t, _)| now.duration_since(*t)),
                            false,
                        ),
                    }
                }
            };
            metrics::gauge!("imreport_postgres_standby_lag_seconds", "standby" => s.name.clone())
                .set(lag.as_secs_f64());
            let mut fresh = s.fresh.lock().expect("lock");
            if ok != *fresh {
                if ok {
                    tracing::info!(standby = %s.name, "standby serves reads again");
                } else {
                    tracing::warn!(standby = %s.name, lag_ms = lag.as_millis() as u64,
                        "standby lags; reads go elsewhere until it catches up");
                }
            }
            *fresh = ok;
        }
    }
}

/// A WAL position as bytes from the start, or why it could not be read within two ticks (a
/// server that hangs must not stall the watcher).
async fn position(pool: &Pool, expr: &str) -> std::result::Result<i64, String> {
    let read = async {
        let c = pool.get().await.map_err(|e| e.to_string())?;
        let row = c
            .query_one(&format!("SELECT ({expr} - '0/0'::pg_lsn)::int8"), &[])
            .await
            .map_err(|e| pg_error(e).to_string())?;
        Ok(row.get(0))
    };
    tokio::time::timeout(2 * TICK, read)
        .await
        .unwrap_or_else(|_| Err("no answer within two seconds".into()))
}
