//! Compaction filters that remove the duplicate index's entries of messages whose day partition
//! retention has dropped: they are already treated as absent, and this keeps the index from
//! growing forever without ever scanning it.

use super::keys;
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

/// The same for `id-blocks`: a block loses its pairs of dropped days, and goes once it has none.
pub(crate) struct StaleIdBlocks(pub Horizon);

impl Factory for StaleIdBlocks {
    fn name(&self) -> &str {
        "imreport-stale-id-blocks"
    }

    fn make_filter(&self, _: &Context) -> Box<dyn CompactionFilter> {
        Box::new(BlockFilter(self.0.load(Ordering::Relaxed)))
    }
}

struct BlockFilter(i64);

impl CompactionFilter for BlockFilter {
    fn filter_item(&mut self, item: ItemAccessor<'_>, _: &Context) -> CompactionFilterResult {
        let value = item.value()?;
        let pairs: Vec<(i64, u64)> = keys::id_block_pairs(&value).collect();
        let live: Vec<(i64, u64)> = pairs
            .iter()
            .copied()
            .filter(|(d, _)| *d >= self.0)
            .collect();
        Ok(if live.len() == pairs.len() {
            Verdict::Keep
        } else if live.is_empty() {
            Verdict::Remove
        } else {
            Verdict::ReplaceValue(keys::encode_id_block(&live).into())
        })
    }
}
