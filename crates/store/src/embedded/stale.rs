//! A compaction filter that removes `ids` entries of messages whose day partition retention has
//! dropped: they are already treated as absent, and this keeps the duplicate index from growing
//! forever without ever scanning it.

use fjall::compaction::filter::{
    CompactionFilter, CompactionFilterResult, Context, Factory, ItemAccessor, Verdict,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// The first partition day still retained, shared with the writer's retention pass.
pub(crate) type Horizon = Arc<AtomicI64>;

pub(crate) struct StaleIds(pub Horizon);

impl Factory for StaleIds {
    fn name(&self) -> &str {
        "imreport-stale-ids"
    }

    fn make_filter(&self, _: &Context) -> Box<dyn CompactionFilter> {
        Box::new(Filter(self.0.load(Ordering::Relaxed)))
    }
}

struct Filter(i64);

impl CompactionFilter for Filter {
    fn filter_item(&mut self, item: ItemAccessor<'_>, _: &Context) -> CompactionFilterResult {
        let day = item
            .value()?
            .as_ref()
            .try_into()
            .map(i64::from_be_bytes)
            .unwrap_or(i64::MAX);
        Ok(if day < self.0 {
            Verdict::Remove
        } else {
            Verdict::Keep
        })
    }
}
