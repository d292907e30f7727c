//! The time source. Production uses the system clock; tests set time by hand so that edges such
//! as the retention window are tested exactly.

use crate::Millis;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    /// A clock that only moves when told to (shared by all its clones).
    Manual(Arc<AtomicI64>),
}

impl Clock {
    pub fn manual(start: Millis) -> Self {
        Clock::Manual(Arc::new(AtomicI64::new(start)))
    }

    pub fn now_ms(&self) -> Millis {
        match self {
            Clock::System => crate::time::now_ms(),
            Clock::Manual(t) => t.load(Ordering::SeqCst),
        }
    }

    /// Sets a manual clock (no effect on the system clock).
    pub fn set(&self, t: Millis) {
        if let Clock::Manual(v) = self {
            v.store(t, Ordering::SeqCst);
        }
    }
}
