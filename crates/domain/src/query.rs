//! History query parameters: the first page (`count`, `begin_time`, `end_time`) or a next page
//! (`cursor`, which makes every other parameter ignored).

use crate::Error;
use crate::time::{ReportTz, TimeRange, history_range};

pub const MAX_COUNT: u16 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryRequest {
    First { count: u16, range: TimeRange },
    Next { cursor: String },
}

/// The value of a parameter; the first one wins if a client repeats it.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn required<'a>(params: &'a [(String, String)], name: &str, form: &str) -> Result<&'a str, Error> {
    match param(params, name) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Error::invalid(format!("{name} is required: {form}"))),
    }
}

/// Parses a history request's form-decoded query parameters.
pub fn parse_history(params: &[(String, String)], tz: &ReportTz) -> Result<HistoryRequest, Error> {
    if let Some(c) = param(params, "cursor").filter(|c| !c.is_empty()) {
        return Ok(HistoryRequest::Next {
            cursor: c.to_owned(),
        });
    }
    let raw = required(params, "count", "an integer from 1 to 1000")?;
    let count = match raw.parse::<i64>() {
        Ok(n) if (1..=i64::from(MAX_COUNT)).contains(&n) => n as u16,
        Ok(n) => {
            return Err(Error::invalid(format!(
                "count={n} is out of range; use an integer from 1 to 1000"
            )));
        }
        Err(_) => {
            return Err(Error::invalid(format!(
                "count={raw:?} is not an integer; use an integer from 1 to 1000"
            )));
        }
    };
    let form = "a time in the form yyyy-MM-dd HH:mm:ss";
    let begin = required(params, "begin_time", form)?;
    let end = required(params, "end_time", form)?;
    let range = history_range(tz, begin, end)?;
    Ok(HistoryRequest::First { count, range })
}

/// Query parameters from string pairs, for tests of the parsers.
#[cfg(test)]
pub(crate) fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_wins_over_everything() {
        let tz = ReportTz::new("UTC").unwrap();
        let r = parse_history(&p(&[("count", "zzz"), ("cursor", "abc")]), &tz).unwrap();
        assert_eq!(
            r,
            HistoryRequest::Next {
                cursor: "abc".into()
            }
        );
    }

    #[test]
    fn each_bad_parameter_is_named() {
        let tz = ReportTz::new("UTC").unwrap();
        let b = ("begin_time", "2024-01-01 00:00:00");
        let e = ("end_time", "2024-01-01 01:00:00");
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![b, e], "count is required"),
            (vec![("count", "0"), b, e], "count=0"),
            (vec![("count", "1001"), b, e], "count=1001"),
            (vec![("count", "1.5"), b, e], "count=\"1.5\""),
            (vec![("count", "10"), e], "begin_time is required"),
            (vec![("count", "10"), b], "end_time is required"),
            (
                vec![("count", "10"), b, ("end_time", "tomorrow")],
                "end_time",
            ),
        ];
        for (pairs, want) in cases {
            let err = parse_history(&p(&pairs), &tz).unwrap_err().to_string();
            assert!(err.contains(want), "{pairs:?}: {err}");
        }
        assert!(parse_history(&p(&[("count", "1000"), b, e]), &tz).is_ok());
    }
}
