//! Where retention cuts, shared by every backend: the partition day of an instant and the first
//! day still retained.

use imreport_domain::Millis;
use imreport_domain::time::{MILLIS_PER_DAY, MILLIS_PER_HOUR, ReportTz};

/// Messages are partitioned by "partition day": the day of `msg_ctime` shifted by a fixed offset
/// (the report zone's offset when the store was created, kept forever, so that partition days are
/// monotonic in time even where the zone has DST). Presence sets and rollups use civil days.
#[derive(Debug, Clone)]
pub struct Window {
    pub retention_days: u32,
    pub partition_offset_ms: i64,
    pub tz: ReportTz,
}

impl Window {
    /// The partition day of an instant.
    pub fn pday(&self, ms: Millis) -> i64 {
        (ms + self.partition_offset_ms).div_euclid(MILLIS_PER_DAY)
    }

    /// The first instant of the hour holding `ms`, hours aligned with the partition days (so an
    /// hour never spans two partitions, whatever the offset's minutes).
    pub fn hour_start(&self, ms: Millis) -> Millis {
        ms - (ms + self.partition_offset_ms).rem_euclid(MILLIS_PER_HOUR)
    }

    /// The first instant of a partition day.
    pub fn pday_start(&self, day: i64) -> Millis {
        day * MILLIS_PER_DAY - self.partition_offset_ms
    }

    pub fn retention_start(&self, now: Millis) -> Millis {
        now - i64::from(self.retention_days) * MILLIS_PER_DAY
    }

    /// First partition day still retained at `now`.
    pub fn horizon_day(&self, now: Millis) -> i64 {
        self.pday(self.retention_start(now))
    }

    /// First civil day whose statistics are still retained at `now`.
    pub fn stats_horizon_day(&self, now: Millis) -> i64 {
        self.tz.civil_day(self.retention_start(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_days_start_at_the_fixed_offset() {
        let w = Window {
            retention_days: 2,
            partition_offset_ms: 8 * 3_600_000,
            tz: ReportTz::new("Asia/Shanghai").unwrap(),
        };
        let day = w.pday(1_795_176_000_000);
        assert!(w.pday_start(day) <= 1_795_176_000_000);
        assert_eq!(w.pday(w.pday_start(day + 1)), day + 1);
        assert_eq!(w.pday(w.pday_start(day + 1) - 1), day);
        assert_eq!(
            w.horizon_day(w.pday_start(day) + 3 * MILLIS_PER_DAY),
            day + 1
        );
    }
}
