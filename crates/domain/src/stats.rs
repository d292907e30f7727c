//! Statistics (Report V2 `/v2/statistic/*`): request parsing and the JSON the API answers with.
//! Buckets are civil hours, days and months of the report zone; the rows they are built from
//! are in [`crate::rollup`].

use crate::Error;
use crate::query::param;
use crate::rollup::{DayStats, MsgCounts};
use crate::time::{LAST_DAY, date_of_day, day_number, parse_day};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Hour,
    Day,
    Month,
}

/// Which statistics endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsKind {
    Users,
    Groups,
    Messages,
}

/// A validated statistics request: `n` buckets of `unit` from `first`, where `first` is a civil
/// hour number (HOUR), a civil day number (DAY) or a month number `year * 12 + month - 1` (MONTH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsRequest {
    pub unit: TimeUnit,
    pub first: i64,
    pub n: i64,
}

impl StatsRequest {
    /// The civil days the request covers, first and last.
    pub fn day_span(&self) -> (i64, i64) {
        match self.unit {
            TimeUnit::Hour => {
                let d = self.first.div_euclid(24);
                (d, d)
            }
            TimeUnit::Day => (self.first, self.first + self.n - 1),
            TimeUnit::Month => (
                month_days(self.first).0,
                month_days(self.first + self.n - 1).1,
            ),
        }
    }

    /// The label of bucket `i`, in the unit's format.
    pub fn label(&self, i: i64) -> String {
        let b = self.first + i;
        match self.unit {
            TimeUnit::Hour => {
                let d = date_of_day(b.div_euclid(24));
                format!("{d} {:02}", b.rem_euclid(24))
            }
            TimeUnit::Day => date_of_day(b).to_string(),
            TimeUnit::Month => format!("{:04}-{:02}", b.div_euclid(12), b.rem_euclid(12) + 1),
        }
    }
}

/// Civil day numbers of the first and last day of month number `m` (`year * 12 + month - 1`),
/// for the months of years 0 to 9999 that a request can name.
pub fn month_days(m: i64) -> (i64, i64) {
    let date = jiff::civil::Date::new(m.div_euclid(12) as i16, (m.rem_euclid(12) + 1) as i8, 1)
        .unwrap_or(jiff::civil::Date::MAX.first_of_month());
    let first = day_number(date);
    (first, first + i64::from(date.days_in_month()) - 1)
}

/// The refusal of a request whose buckets run past the last supported date.
fn past_the_end(raw: &str, n: i64) -> Error {
    Error::invalid(format!(
        "start={raw:?} with duration={n} runs past 9999-12-31, the last date statistics cover; ask for an earlier start or a shorter duration"
    ))
}

fn int_param(params: &[(String, String)], name: &str, max: i64) -> Result<i64, Error> {
    let raw = param(params, name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::invalid(format!("{name} is required: an integer from 1 to {max}")))?;
    match raw.parse::<i64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(Error::invalid(format!(
            "{name}={raw:?} is not allowed here; use an integer from 1 to {max}"
        ))),
    }
}

/// Parses `time_unit`, `start` and `duration` for one of the statistics endpoints.
pub fn parse_stats(kind: StatsKind, params: &[(String, String)]) -> Result<StatsRequest, Error> {
    let unit_raw = param(params, "time_unit")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Error::invalid(match kind {
                StatsKind::Messages => "time_unit is required: HOUR, DAY or MONTH",
                _ => "time_unit is required: DAY",
            })
        })?;
    let unit = match unit_raw.to_ascii_uppercase().as_str() {
        "HOUR" => TimeUnit::Hour,
        "DAY" => TimeUnit::Day,
        "MONTH" => TimeUnit::Month,
        _ => {
            return Err(Error::invalid(format!(
                "time_unit={unit_raw:?} is not a unit; use {}",
                if kind == StatsKind::Messages {
                    "HOUR, DAY or MONTH"
                } else {
                    "DAY"
                }
            )));
        }
    };
    if kind != StatsKind::Messages && unit != TimeUnit::Day {
        return Err(Error::invalid(format!(
            "time_unit={unit_raw:?} is not available for user and group statistics; use DAY"
        )));
    }
    let start = param(params, "start").filter(|v| !v.is_empty());
    match unit {
        TimeUnit::Hour => {
            let form = "use yyyy-MM-dd HH, e.g. 2017-03-01 08";
            let raw = start.ok_or_else(|| Error::invalid(format!("start is required: {form}")))?;
            let bad = || Error::invalid(format!("start={raw:?} is not a valid hour; {form}"));
            let (date, hour) = raw.split_at_checked(10).ok_or_else(bad)?;
            let date = parse_day("start", date).map_err(|_| bad())?;
            let hour = hour
                .strip_prefix(' ')
                .or_else(|| hour.strip_prefix('T'))
                .ok_or_else(bad)?;
            if hour.len() != 2 || !hour.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let h: i64 = hour.parse().map_err(|_| bad())?;
            if h > 23 {
                return Err(bad());
            }
            let n = int_param(params, "duration", 24)?;
            if h + n > 24 {
                return Err(Error::invalid(format!(
                    "start={raw:?} with duration={n} runs past the end of that day; HOUR statistics cover one day: at most {} hours from hour {h:02}",
                    24 - h
                )));
            }
            Ok(StatsRequest {
                unit,
                first: day_number(date) * 24 + h,
                n,
            })
        }
        TimeUnit::Day => {
            let raw = start.ok_or_else(|| {
                Error::invalid("start is required: use yyyy-MM-dd, e.g. 2017-03-01")
            })?;
            let date = parse_day("start", raw)?;
            let n = int_param(params, "duration", 60)?;
            let first = day_number(date);
            if first + n - 1 > LAST_DAY {
                return Err(past_the_end(raw, n));
            }
            Ok(StatsRequest { unit, first, n })
        }
        TimeUnit::Month => {
            let form = "use yyyy-MM, e.g. 2017-03";
            let raw = start.ok_or_else(|| Error::invalid(format!("start is required: {form}")))?;
            let bad = || Error::invalid(format!("start={raw:?} is not a valid month; {form}"));
            let b = raw.as_bytes();
            if b.len() != 7
                || b[4] != b'-'
                || !b
                    .iter()
                    .enumerate()
                    .all(|(i, c)| i == 4 || c.is_ascii_digit())
            {
                return Err(bad());
            }
            let (y, m): (i64, i64) = (
                raw[..4].parse().map_err(|_| bad())?,
                raw[5..].parse().map_err(|_| bad())?,
            );
            if !(1..=12).contains(&m) {
                return Err(bad());
            }
            let n = int_param(params, "duration", 2)?;
            let first = y * 12 + m - 1;
            if first + n - 1 > 9999 * 12 + 11 {
                return Err(past_the_end(raw, n));
            }
            Ok(StatsRequest { unit, first, n })
        }
    }
}

#[derive(Serialize)]
pub struct UsersBucket {
    pub date: String,
    pub new_users: u64,
    pub total_users: i64,
    pub active_users: u64,
    pub send_msg_users: u64,
}

#[derive(Serialize)]
pub struct GroupsBucket {
    pub date: String,
    pub new_group: u64,
    pub total_group: i64,
    pub active_group: u64,
}

#[derive(Serialize)]
pub struct SendBucket {
    pub time: String,
    pub group_send_msg: u64,
    pub single_send_msg: u64,
    pub chatroom_send_msg: u64,
}

#[derive(Serialize, Default, PartialEq, Eq, Debug)]
pub struct ClassStat {
    pub txt_msg: u64,
    pub image_msg: u64,
    pub voice_msg: u64,
    pub other_msg: u64,
}

#[derive(Serialize)]
pub struct MessagesReport {
    pub send_msg_stat: Vec<SendBucket>,
    pub group_msg_stat: ClassStat,
    pub single_msg_stat: ClassStat,
    pub chatroom_msg_stat: ClassStat,
}

impl From<[u64; 4]> for ClassStat {
    fn from(c: [u64; 4]) -> Self {
        ClassStat {
            txt_msg: c[0],
            image_msg: c[1],
            voice_msg: c[2],
            other_msg: c[3],
        }
    }
}

/// Message counts per month of a MONTH request, summed from its day rows (`days[0]` is civil day
/// `from`, the first day of the first month).
pub fn month_counts(req: &StatsRequest, from: i64, days: &[DayStats]) -> Vec<MsgCounts> {
    (0..req.n)
        .map(|i| {
            let (first, last) = month_days(req.first + i);
            let a = (first - from) as usize;
            let b = ((last + 1 - from) as usize).min(days.len());
            let mut sum = MsgCounts::default();
            for d in &days[a.min(b)..b] {
                for (s, v) in sum.iter_mut().flatten().zip(d.msgs.iter().flatten()) {
                    *s += v;
                }
            }
            sum
        })
        .collect()
}

/// Builds the messages answer from one `MsgCounts` per bucket.
pub fn messages_report(req: &StatsRequest, buckets: &[MsgCounts]) -> MessagesReport {
    let mut totals = MsgCounts::default();
    let mut send = Vec::with_capacity(buckets.len());
    for (i, b) in buckets.iter().enumerate() {
        for (t, row) in b.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                totals[t][c] += v;
            }
        }
        send.push(SendBucket {
            time: req.label(i as i64),
            group_send_msg: b[1].iter().sum(),
            single_send_msg: b[0].iter().sum(),
            chatroom_send_msg: b[2].iter().sum(),
        });
    }
    MessagesReport {
        send_msg_stat: send,
        single_msg_stat: totals[0].into(),
        group_msg_stat: totals[1].into(),
        chatroom_msg_stat: totals[2].into(),
    }
}

/// Builds the users answer: `days[i]` is day `first + i`; `total_before` the registered users at
/// the end of the day before `first`.
pub fn users_report(req: &StatsRequest, days: &[DayStats], total_before: i64) -> Vec<UsersBucket> {
    let mut total = total_before;
    days.iter()
        .enumerate()
        .map(|(i, d)| {
            total += d.net_users;
            UsersBucket {
                date: req.label(i as i64),
                new_users: d.new_users,
                total_users: total,
                active_users: d.active_users,
                send_msg_users: d.send_msg_users,
            }
        })
        .collect()
}

pub fn groups_report(
    req: &StatsRequest,
    days: &[DayStats],
    total_before: i64,
) -> Vec<GroupsBucket> {
    let mut total = total_before;
    days.iter()
        .enumerate()
        .map(|(i, d)| {
            total += d.net_groups;
            GroupsBucket {
                date: req.label(i as i64),
                new_group: d.new_groups,
                total_group: total,
                active_group: d.active_groups,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::p;

    fn stats_params(unit: &str, start: &str, duration: &str) -> Vec<(String, String)> {
        p(&[
            ("time_unit", unit),
            ("start", start),
            ("duration", duration),
        ])
    }

    #[test]
    fn the_last_supported_dates_answer_and_later_ones_are_refused() {
        let ok = [
            ("DAY", "9999-12-31", "1", "9999-12-31"),
            ("DAY", "9999-12-02", "30", "9999-12-31"),
            ("HOUR", "9999-12-31 23", "1", "9999-12-31 23"),
            ("MONTH", "9999-12", "1", "9999-12"),
            ("MONTH", "9999-11", "2", "9999-12"),
            ("DAY", "0000-01-01", "1", "0000-01-01"),
        ];
        for (unit, start, n, last) in ok {
            let req = parse_stats(StatsKind::Messages, &stats_params(unit, start, n)).unwrap();
            assert_eq!(req.label(req.n - 1), last, "{unit} {start} {n}");
            let (a, b) = req.day_span();
            assert!(a <= b && b <= LAST_DAY, "{unit} {start} {n}");
        }
        for (unit, start, n) in [
            ("DAY", "9999-12-30", "4"),
            ("DAY", "9999-12-31", "2"),
            ("MONTH", "9999-12", "2"),
        ] {
            let err = parse_stats(StatsKind::Users, &stats_params(unit, start, n))
                .or_else(|_| parse_stats(StatsKind::Messages, &stats_params(unit, start, n)))
                .unwrap_err();
            assert!(
                err.to_string().contains("9999-12-31"),
                "{unit} {start} {n}: {err}"
            );
        }
    }

    #[test]
    fn units_and_labels() {
        let r = parse_stats(
            StatsKind::Messages,
            &p(&[
                ("time_unit", "hour"),
                ("start", "2017-03-01 08"),
                ("duration", "16"),
            ]),
        )
        .unwrap();
        assert_eq!((r.unit, r.n), (TimeUnit::Hour, 16));
        assert_eq!(r.label(0), "2017-03-01 08");
        assert_eq!(r.label(15), "2017-03-01 23");
        assert_eq!(r.day_span().0, r.day_span().1);
        let r = parse_stats(
            StatsKind::Users,
            &p(&[
                ("time_unit", "Day"),
                ("start", "2017-02-27"),
                ("duration", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(r.label(2), "2017-03-01");
        let r = parse_stats(
            StatsKind::Messages,
            &p(&[
                ("time_unit", "MONTH"),
                ("start", "2016-12"),
                ("duration", "2"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (r.label(0), r.label(1)),
            ("2016-12".to_string(), "2017-01".to_string())
        );
        let (a, b) = r.day_span();
        assert_eq!(date_of_day(a).to_string(), "2016-12-01");
        assert_eq!(date_of_day(b).to_string(), "2017-01-31");
    }

    #[test]
    fn bad_requests_say_what_is_accepted() {
        type Case<'a> = (StatsKind, Vec<(&'a str, &'a str)>, &'a str);
        let cases: Vec<Case> = vec![
            (
                StatsKind::Users,
                vec![("start", "2017-03-01"), ("duration", "3")],
                "time_unit is required",
            ),
            (
                StatsKind::Users,
                vec![
                    ("time_unit", "HOUR"),
                    ("start", "2017-03-01 00"),
                    ("duration", "3"),
                ],
                "use DAY",
            ),
            (
                StatsKind::Groups,
                vec![
                    ("time_unit", "MONTH"),
                    ("start", "2017-03"),
                    ("duration", "1"),
                ],
                "use DAY",
            ),
            (
                StatsKind::Messages,
                vec![
                    ("time_unit", "WEEK"),
                    ("start", "2017-03-01"),
                    ("duration", "1"),
                ],
                "HOUR, DAY or MONTH",
            ),
            (
                StatsKind::Messages,
                vec![
                    ("time_unit", "DAY"),
                    ("start", "2017-03-01"),
                    ("duration", "61"),
                ],
                "1 to 60",
            ),
            (
                StatsKind::Messages,
                vec![
                    ("time_unit", "DAY"),
                    ("start", "2017-03-01"),
                    ("duration", "0"),
                ],
                "1 to 60",
            ),
            (
                StatsKind::Messages,
                vec![
                    ("time_unit", "MONTH"),
                    ("start", "2017-03"),
                    ("duration", "3"),
                ],
                "1 to 2",
            ),
            (
                StatsKind::Messages,
                vec![
                    ("time_unit", "MONTH"),
                    ("start", "2017-13"),
                    ("duration", "1"),
                ],
                "yyyy-MM",
            ),
            (
                StatsKind::Messages,
                vec![
                    ("time_unit", "HOUR"),
                    ("start", "2017-03-01 20"),
                    ("duration", "5"),
                ],
                "past the end",
            ),
            (
                StatsKind::Messages,
                vec![
                    ("time_unit", "HOUR"),
                    ("start", "2017-03-01"),
                    ("duration", "5"),
                ],
                "yyyy-MM-dd HH",
            ),
            (
                StatsKind::Messages,
                vec![
                    ("time_unit", "HOUR"),
                    ("start", "2017-03-01 24"),
                    ("duration", "1"),
                ],
                "yyyy-MM-dd HH",
            ),
            (
                StatsKind::Messages,
                vec![
                    ("time_unit", "DAY"),
                    ("start", "2017-03-01 00"),
                    ("duration", "1"),
                ],
                "yyyy-MM-dd",
            ),
            (
                StatsKind::Messages,
                vec![("time_unit", "DAY"), ("duration", "1")],
                "start is required",
            ),
            (
                StatsKind::Messages,
                vec![("time_unit", "DAY"), ("start", "2017-03-01")],
                "duration is required",
            ),
            (
                StatsKind::Messages,
                vec![
                    ("time_unit", "DAY"),
                    ("start", "2017-03-01"),
                    ("duration", "x"),
                ],
                "duration",
            ),
        ];
        for (kind, pairs, want) in cases {
            let err = parse_stats(kind, &p(&pairs)).unwrap_err().to_string();
            assert!(err.contains(want), "{pairs:?}: {err}");
        }
        // The whole of the start day is allowed.
        assert!(
            parse_stats(
                StatsKind::Messages,
                &p(&[
                    ("time_unit", "HOUR"),
                    ("start", "2017-03-01 00"),
                    ("duration", "24")
                ])
            )
            .is_ok()
        );
    }
}

/// Most entries `/v2/statistic/busiest` answers per list.
pub const BUSIEST_MAX: i64 = 100;

/// A `/v2/statistic/busiest` request: a civil day and how many of each list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusiestRequest {
    pub day: i64,
    pub n: usize,
}

/// Parses `date` (`yyyy-MM-dd`) and `count` (1 to [`BUSIEST_MAX`], 10 when absent).
pub fn parse_busiest(params: &[(String, String)]) -> Result<BusiestRequest, Error> {
    let raw = param(params, "date")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::invalid("date is required: use yyyy-MM-dd, e.g. 2017-03-01"))?;
    let day = day_number(parse_day("date", raw)?);
    let n = match param(params, "count") {
        None => 10,
        Some(_) => int_param(params, "count", BUSIEST_MAX)?,
    };
    Ok(BusiestRequest { day, n: n as usize })
}

#[derive(Serialize)]
pub struct BusiestSender<'a> {
    pub username: &'a str,
    pub messages: u64,
}

#[derive(Serialize)]
pub struct BusiestGroup<'a> {
    pub gid: &'a str,
    pub messages: u64,
}

/// The JSON `/v2/statistic/busiest` answers.
#[derive(Serialize)]
pub struct BusiestReport<'a> {
    pub date: String,
    pub senders: Vec<BusiestSender<'a>>,
    pub groups: Vec<BusiestGroup<'a>>,
}

pub fn busiest_report<'a>(
    req: &BusiestRequest,
    b: &'a crate::rollup::Busiest,
) -> BusiestReport<'a> {
    BusiestReport {
        date: date_of_day(req.day).to_string(),
        senders: b
            .senders
            .iter()
            .map(|t| BusiestSender {
                username: &t.id,
                messages: t.messages,
            })
            .collect(),
        groups: b
            .groups
            .iter()
            .map(|t| BusiestGroup {
                gid: &t.id,
                messages: t.messages,
            })
            .collect(),
    }
}
