//! Capacity shared fairly between apps: ingest slots, page builds and the bytes of responses in
//! flight. A lone app may use all of it; once other apps hold or wait for some, each may hold
//! at most an equal part, so no tenant can starve the others by holding everything (slow
//! bodies, unread pages). A request that finds no room waits a bounded time, then is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug)]
pub struct FairShare {
    capacity: u64,
    state: Mutex<State>,
    freed: Notify,
}

#[derive(Debug, Default)]
struct State {
    used: u64,
    /// Per app: what it holds, and how many of its requests wait. Apps holding and waiting
    /// nothing are removed, so this is bounded by the requests in progress.
    apps: HashMap<u32, Use>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Use {
    held: u64,
    waiting: u32,
}

/// A part of a [`FairShare`], given back when dropped.
#[derive(Debug)]
pub struct Grant {
    share: Arc<FairShare>,
    app: u32,
    amount: u64,
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.share.release(self.app, self.amount);
    }
}

impl FairShare {
    pub fn new(capacity: u64) -> Arc<Self> {
        Arc::new(FairShare {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            freed: Notify::new(),
        })
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// What all apps hold now.
    pub fn used(&self) -> u64 {
        self.state.lock().expect("lock").used
    }

    /// Takes `amount` for `app` (more than the capacity is taken as all of it), waiting up to
    /// `wait` for room; `None` when none came.
    pub async fn acquire(self: &Arc<Self>, app: u32, amount: u64, wait: Duration) -> Option<Grant> {
        let amount = amount.clamp(1, self.capacity);
        let deadline = tokio::time::Instant::now() + wait;
        let mut waiting = false;
        let granted = loop {
            // Registered before the check, so a release between the check and the wait wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_take(app, amount, &mut waiting) {
                break true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break false;
            }
        };
        if waiting {
            self.stop_waiting(app);
        }
        granted.then(|| Grant {
            share: self.clone(),
            app,
            amount,
        })
    }

    fn try_take(&self, app: u32, amount: u64, waiting: &mut bool) -> bool {
        let mut st = self.state.lock().expect("lock");
        let contenders = st.apps.len() as u64 + u64::from(!st.apps.contains_key(&app));
        let mine = st.apps.get(&app).map_or(0, |u| u.held);
        // Each contender's equal part; an app holding nothing may always start one request
        // that fits, so a large one is never locked out by the split.
        let fair = self.capacity / contenders.max(1);
        let fits = st.used + amount <= self.capacity && (mine == 0 || mine + amount <= fair);
        if fits {
            st.used += amount;
        }
        let u = st.apps.entry(app).or_default();
        if fits {
            u.held += amount;
            if *waiting {
                // The caller stops waiting here; `stop_waiting` then finds nothing to undo.
                u.waiting -= 1;
                *waiting = false;
            }
        } else if !*waiting {
            u.waiting += 1;
            *waiting = true;
        }
        fits
    }

    fn stop_waiting(&self, app: u32) {
        let mut st = self.state.lock().expect("lock");
        if let Some(u) = st.apps.get_mut(&app) {
            u.waiting -= 1;
            if u.held == 0 && u.waiting == 0 {
                st.apps.remove(&app);
            }
        }
        drop(st);
        // Our waiting may have held others' fair part down.
        self.freed.notify_waiters();
    }

    fn release(&self, app: u32, amount: u64) {
        let mut st = self.state.lock().expect("lock");
        st.used -= amount;
        if let Some(u) = st.apps.get_mut(&app) {
            u.held -= amount;
            if u.held == 0 && u.waiting == 0 {
                st.apps.remove(&app);
            }
        }
        drop(st);
        self.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::ZERO;

    #[tokio::test]
    async fn a_lone_app_uses_everything_and_gives_it_back() {
        let s = FairShare::new(4);
        let grants: Vec<Grant> = futures_take(&s, 1, 4).await;
        assert_eq!(s.used(), 4);
        assert!(s.acquire(1, 1, NOW).await.is_none(), "full");
        drop(grants);
        assert_eq!(s.used(), 0);
        assert!(
            s.state.lock().unwrap().apps.is_empty(),
            "no app is remembered"
        );
        let big = s
            .acquire(1, 100, NOW)
            .await
            .expect("clamped to the capacity");
        assert_eq!(s.used(), 4);
        drop(big);
    }

    #[tokio::test]
    async fn a_waiting_app_gets_the_next_free_part_and_the_holder_no_more() {
        let s = FairShare::new(4);
        let mut b = futures_take(&s, 2, 4).await;
        let s2 = s.clone();
        let a = tokio::spawn(async move { s2.acquire(1, 1, Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // B is over its half now that A waits: it cannot take back what it frees.
        b.pop();
        let a = a.await.unwrap().expect("A got the freed slot");
        assert!(
            s.acquire(2, 1, NOW).await.is_none(),
            "B holds 3 of a fair 2"
        );
        b.pop();
        b.pop();
        assert!(
            s.acquire(2, 1, NOW).await.is_some(),
            "B at 1 of 2 may take one"
        );
        drop(a);
    }

    #[tokio::test]
    async fn a_request_that_gives_up_waiting_is_forgotten() {
        let s = FairShare::new(2);
        let held = futures_take(&s, 2, 2).await;
        assert!(s.acquire(1, 1, Duration::from_millis(20)).await.is_none());
        assert_eq!(s.state.lock().unwrap().apps.len(), 1, "only the holder");
        drop(held);
        assert!(s.state.lock().unwrap().apps.is_empty());
    }

    async fn futures_take(s: &Arc<FairShare>, app: u32, n: usize) -> Vec<Grant> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(s.acquire(app, 1, NOW).await.expect("room"));
        }
        v
    }
}
