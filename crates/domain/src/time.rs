//! Time in the report time zone: the naive `yyyy-MM-dd HH:mm:ss` strings clients send, read as
//! civil times of the server's report zone, turned into millisecond instants.

use crate::{Error, Millis};
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan};

pub const MILLIS_PER_DAY: i64 = 86_400_000;
pub const MILLIS_PER_HOUR: i64 = 3_600_000;
pub const MILLIS_PER_MINUTE: i64 = 60_000;

/// The zone in which clients write times and statistics are bucketed.
#[derive(Debug, Clone)]
pub struct ReportTz {
    name: String,
    tz: TimeZone,
}

impl ReportTz {
    /// Loads an IANA zone by name (e.g. `Asia/Shanghai`, `UTC`, `Europe/Berlin`).
    pub fn new(name: &str) -> Result<Self, Error> {
        let tz = TimeZone::get(name).map_err(|e| {
            Error::invalid(format!(
                "unknown report time zone {name:?}: {e}; use an IANA name such as Asia/Shanghai or UTC"
            ))
        })?;
        Ok(ReportTz {
            name: name.to_owned(),
            tz,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }

    /// The first instant whose civil time is at or after `dt`. In a DST gap that is the end of
    /// the gap; in a fold, the first pass.
    pub fn start_of(&self, dt: DateTime) -> Result<Millis, Error> {
        let amb = self.tz.to_ambiguous_timestamp(dt);
        let out_of_range =
            |e: jiff::Error| Error::invalid(format!("time {dt} is out of range: {e}"));
        let ts = match amb.offset() {
            AmbiguousOffset::Gap { .. } => {
                let before_gap = amb.earlier().map_err(out_of_range)?;
                self.tz
                    .following(before_gap)
                    .next()
                    .map(|t| t.timestamp())
                    .unwrap_or(before_gap)
            }
            _ => amb.compatible().map_err(out_of_range)?,
        };
        Ok(ts.as_millisecond())
    }

    /// The first instant of civil day `day` (a [`day_number`]).
    pub fn day_start(&self, day: i64) -> Millis {
        let dt = date_of_day(day).to_datetime(jiff::civil::Time::midnight());
        self.start_of(dt).unwrap_or(day * MILLIS_PER_DAY)
    }

    /// The last millisecond whose civil time is before or within the second `dt`. In a DST gap
    /// that is just before the gap; in a fold, the end of the second pass.
    pub fn end_of(&self, dt: DateTime) -> Result<Millis, Error> {
        let amb = self.tz.to_ambiguous_timestamp(dt);
        if let AmbiguousOffset::Gap { .. } = amb.offset() {
            return Ok(self.start_of(dt)? - 1);
        }
        let ts = amb
            .later()
            .map_err(|e| Error::invalid(format!("time {dt} is out of range: {e}")))?;
        Ok(ts.as_millisecond() + 999)
    }

    /// The instant shifted by the zone's offset at that instant: civil time as if it were UTC.
    /// `local_ms(t).div_euclid(MILLIS_PER_DAY)` is the civil day number of `t`.
    pub fn local_ms(&self, ms: Millis) -> Millis {
        let ts = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
        ms + i64::from(self.tz.to_offset(ts).seconds()) * 1000
    }

    /// Civil day number (days since 1970-01-01) of an instant in this zone.
    pub fn civil_day(&self, ms: Millis) -> i64 {
        self.local_ms(ms).div_euclid(MILLIS_PER_DAY)
    }

    /// Civil hour number (hours since 1970-01-01 00:00) of an instant in this zone.
    pub fn civil_hour(&self, ms: Millis) -> i64 {
        self.local_ms(ms).div_euclid(MILLIS_PER_HOUR)
    }

    /// The zone's offset at an instant, in seconds east of UTC.
    pub fn offset_secs(&self, ms: Millis) -> i32 {
        let ts = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
        self.tz.to_offset(ts).seconds()
    }

    /// The civil time of an instant in this zone.
    pub fn civil(&self, ms: Millis) -> DateTime {
        let ts = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
        self.tz.to_datetime(ts)
    }
}

/// An inclusive range of instants in milliseconds: `begin <= t <= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub begin: Millis,
    pub end: Millis,
}

impl TimeRange {
    pub fn contains(&self, t: Millis) -> bool {
        self.begin <= t && t <= self.end
    }
}

fn digits(s: &[u8]) -> Option<i64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
}

/// Parses exactly `yyyy-MM-dd HH:mm:ss` (a `T` is accepted for the space, as some clients send ISO).
pub fn parse_second(param: &str, value: &str) -> Result<DateTime, Error> {
    let bad = |why: &str| {
        Error::invalid(format!(
            "{param}={value:?} is not a valid time{why}; use yyyy-MM-dd HH:mm:ss, e.g. 2015-11-02 10:10:10"
        ))
    };
    let b = value.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad(""));
    }
    let field = |r: std::ops::Range<usize>| digits(&b[r]).ok_or_else(|| bad(""));
    let (y, mo, d) = (field(0..4)?, field(5..7)?, field(8..10)?);
    let (h, mi, s) = (field(11..13)?, field(14..16)?, field(17..19)?);
    DateTime::new(y as i16, mo as i8, d as i8, h as i8, mi as i8, s as i8, 0)
        .map_err(|_| bad(" (no such date or time of day)"))
}

/// Parses `yyyy-MM-dd`.
pub fn parse_day(param: &str, value: &str) -> Result<jiff::civil::Date, Error> {
    let bad = || {
        Error::invalid(format!(
            "{param}={value:?} is not a valid date; use yyyy-MM-dd, e.g. 2017-03-01"
        ))
    };
    let b = value.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let f = |r: std::ops::Range<usize>| digits(&b[r]).ok_or_else(bad);
    jiff::civil::Date::new(f(0..4)? as i16, f(5..7)? as i8, f(8..10)? as i8).map_err(|_| bad())
}

/// The epoch of civil day numbers.
const EPOCH_DATE: jiff::civil::Date = jiff::civil::Date::constant(1970, 1, 1);

/// Civil day number (days since 1970-01-01) of a date: calendar arithmetic, defined for every
/// date jiff represents (years -9999 to 9999), unlike a detour through a UTC timestamp.
pub fn day_number(date: jiff::civil::Date) -> i64 {
    date.duration_since(EPOCH_DATE).as_secs().div_euclid(86_400)
}

/// The first civil day number of a date jiff represents (-9999-01-01).
pub const FIRST_DAY: i64 = -4_371_587;
/// The last civil day number of a date jiff represents (9999-12-31): statistics buckets end here.
pub const LAST_DAY: i64 = 2_932_896;

/// The date of a civil day number; days beyond the representable dates saturate at
/// [`FIRST_DAY`] and [`LAST_DAY`] (validated requests never reach them).
pub fn date_of_day(day: i64) -> jiff::civil::Date {
    let day = day.clamp(FIRST_DAY, LAST_DAY);
    EPOCH_DATE
        .checked_add(jiff::SignedDuration::from_hours(day * 24))
        .expect("a day between FIRST_DAY and LAST_DAY is a representable date")
}

/// The longest window a history query may span.
pub const MAX_HISTORY_DAYS: i64 = 7;

/// Turns a history query's `begin_time`/`end_time` into an inclusive millisecond range: from the
/// first millisecond of `begin_time` to the last of `end_time`. The 7-day limit is measured on the
/// civil times the client wrote, so `2024-03-01 00:00:00`..`2024-03-08 00:00:00` is allowed in every zone.
pub fn history_range(tz: &ReportTz, begin: &str, end: &str) -> Result<TimeRange, Error> {
    let b = parse_second("begin_time", begin)?;
    let e = parse_second("end_time", end)?;
    if e < b {
        return Err(Error::invalid(format!(
            "end_time={end:?} is before begin_time={begin:?}; end_time must be at or after begin_time"
        )));
    }
    let limit = b
        .checked_add(MAX_HISTORY_DAYS.days())
        .map_err(|_| Error::invalid(format!("begin_time={begin:?} is out of range")))?;
    if e > limit {
        return Err(Error::invalid(format!(
            "begin_time={begin:?} to end_time={end:?} spans more than 7 days; query at most 7 days at a time"
        )));
    }
    let begin_ms = tz.start_of(b)?;
    let end_ms = tz.end_of(e)?;
    Ok(TimeRange {
        begin: begin_ms,
        end: end_ms,
    })
}

/// Whole days since the Unix epoch (UTC) of an instant; the store's partition number.
pub fn utc_day(ms: Millis) -> i64 {
    ms.div_euclid(MILLIS_PER_DAY)
}

/// Current wall-clock time in milliseconds.
pub fn now_ms() -> Millis {
    Timestamp::now().as_millisecond()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh() -> ReportTz {
        ReportTz::new("Asia/Shanghai").unwrap()
    }

    #[test]
    fn day_numbers_cover_every_representable_date() {
        use jiff::civil::Date;
        assert_eq!(day_number(Date::constant(1970, 1, 1)), 0);
        assert_eq!(day_number(Date::constant(1969, 12, 31)), -1);
        assert_eq!(day_number(Date::MAX), LAST_DAY);
        assert_eq!(day_number(Date::MIN), FIRST_DAY);
        for day in [FIRST_DAY, -1, 0, 1, 19_000, LAST_DAY] {
            assert_eq!(day_number(date_of_day(day)), day);
        }
        assert_eq!(
            date_of_day(LAST_DAY + 5),
            Date::MAX,
            "saturates, never the epoch"
        );
    }

    #[test]
    fn range_is_inclusive_to_the_last_millisecond() {
        let r = history_range(&sh(), "2015-11-02 10:10:10", "2015-11-02 10:10:12").unwrap();
        // 2015-11-02 02:10:10 UTC
        assert_eq!(r.begin, 1_446_430_210_000);
        assert_eq!(r.end, 1_446_430_212_999);
    }

    #[test]
    fn seven_days_exactly_is_allowed_and_one_second_more_is_not() {
        assert!(history_range(&sh(), "2024-03-01 00:00:00", "2024-03-08 00:00:00").is_ok());
        let err = history_range(&sh(), "2024-03-01 00:00:00", "2024-03-08 00:00:01").unwrap_err();
        assert!(err.to_string().contains("7 days"), "{err}");
    }

    #[test]
    fn end_before_begin_is_refused() {
        assert!(history_range(&sh(), "2024-03-02 00:00:00", "2024-03-01 23:59:59").is_err());
    }

    #[test]
    fn malformed_times_name_the_parameter() {
        for bad in [
            "2024-3-1 00:00:00",
            "2024-02-30 00:00:00",
            "2024-01-01 24:00:00",
            "",
            "2024-01-01",
        ] {
            let err = history_range(&sh(), bad, "2024-01-01 00:00:00").unwrap_err();
            assert!(err.to_string().contains("begin_time"), "{bad}: {err}");
        }
    }

    #[test]
    fn dst_gap_and_seven_civil_days_in_a_dst_zone() {
        let berlin = ReportTz::new("Europe/Berlin").unwrap();
        // 2024-03-31 02:30 does not exist in Berlin; the range starts where the gap ends (01:00 UTC).
        let r = history_range(&berlin, "2024-03-31 02:30:00", "2024-03-31 03:00:00").unwrap();
        assert_eq!(r.begin, 1_711_846_800_000);
        assert_eq!(r.end, 1_711_846_800_999);
        assert!(history_range(&berlin, "2024-03-25 00:00:00", "2024-04-01 00:00:00").is_ok());
    }
}
