//! `/readyz` without cost: the store is asked at most once a second, by one request at a time;
//! every other probe gets the last answer. A flood of unauthenticated probes therefore costs
//! the store nothing more than one probe a second, whatever the backend.

use imreport_store::Store;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How long an answer of the store is reused.
pub const READY_TTL: Duration = Duration::from_secs(1);

pub struct Readiness {
    store: Arc<dyn Store>,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
    asking: tokio::sync::Mutex<()>,
}

impl Readiness {
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Readiness {
            store,
            last: Mutex::new(None),
            asking: tokio::sync::Mutex::new(()),
        })
    }

    fn fresh(&self) -> Option<Result<(), String>> {
        match &*self.last.lock().expect("lock") {
            Some((at, r)) if at.elapsed() < READY_TTL => Some(r.clone()),
            _ => None,
        }
    }

    /// `Ok` when the store is ready, or why not.
    pub async fn check(&self) -> Result<(), String> {
        if let Some(r) = self.fresh() {
            return r;
        }
        let asking = match self.asking.try_lock() {
            Ok(g) => g,
            // Someone is asking: their answer is ours (or the last one, if there is one).
            Err(_) => {
                if let Some((_, r)) = &*self.last.lock().expect("lock") {
                    return r.clone();
                }
                self.asking.lock().await
            }
        };
        if let Some(r) = self.fresh() {
            return r;
        }
        let r = self.store.check_ready().await.map_err(|e| e.to_string());
        *self.last.lock().expect("lock") = Some((Instant::now(), r.clone()));
        drop(asking);
        r
    }
}
