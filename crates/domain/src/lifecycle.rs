//! User and group lifecycle histories: each entity's registrations and deletions kept in time
//! order, and what they contribute to the day rows and all-time totals, however late or out of
//! order they arrive.

use crate::rollup::DayStats;

/// Lifecycle event kinds as stored in an entity's history.
pub const CREATED: u8 = 1;
pub const REMOVED: u8 = 0;

/// What one user's or group's lifecycle history contributes to the day rows: per civil day,
/// `(new, net)`. The history is read in time order (a creation before a removal at the same
/// instant): a creation counts when the entity does not exist, a removal when it does; other
/// events change nothing. So late-arriving events land where they belong in time.
pub fn lifecycle_contribution(
    history: &[(crate::Millis, u8)],
    day_of: impl Fn(crate::Millis) -> i64,
) -> std::collections::BTreeMap<i64, (i64, i64)> {
    let mut sorted = history.to_vec();
    sorted.sort_by_key(|(t, k)| (*t, std::cmp::Reverse(*k)));
    let mut out = std::collections::BTreeMap::new();
    let mut exists = false;
    for (t, kind) in sorted {
        let e: &mut (i64, i64) = out.entry(day_of(t)).or_default();
        match (kind, exists) {
            (CREATED, false) => {
                exists = true;
                e.0 += 1;
                e.1 += 1;
            }
            (REMOVED, true) => {
                exists = false;
                e.1 -= 1;
            }
            _ => {}
        }
    }
    out.retain(|_, v| *v != (0, 0));
    out
}

/// A user's or group's lifecycle history as stored: `kind u8 | time i64` per event.
pub fn encode_history(h: &[(crate::Millis, u8)]) -> Vec<u8> {
    h.iter()
        .flat_map(|(t, k)| std::iter::once(*k).chain(t.to_be_bytes()))
        .collect()
}

pub fn decode_history(v: &[u8]) -> Vec<(crate::Millis, u8)> {
    v.chunks_exact(9)
        .map(|c| {
            (
                i64::from_be_bytes(c[1..].try_into().expect("8 bytes")),
                c[0],
            )
        })
        .collect()
}

/// What recording one lifecycle event changes in the rollups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LifecycleChange {
    /// `(civil day, new delta, net delta)` for every day whose row changes.
    pub days: Vec<(i64, i64, i64)>,
    /// Change of the all-time total.
    pub net_total: i64,
}

/// Records `(time, what)` in `history`. `None` when the history already holds it (a repeat);
/// otherwise the history grows and the change it makes to the day rows is returned (empty when
/// the event changes no count, e.g. deleting what does not exist).
pub fn apply_lifecycle(
    history: &mut Vec<(crate::Millis, u8)>,
    time: crate::Millis,
    what: u8,
    day_of: impl Fn(crate::Millis) -> i64,
) -> Option<LifecycleChange> {
    if history.contains(&(time, what)) {
        return None;
    }
    let before = lifecycle_contribution(history, &day_of);
    history.push((time, what));
    let after = lifecycle_contribution(history, &day_of);
    let mut change = LifecycleChange::default();
    let days: std::collections::BTreeSet<i64> =
        before.keys().chain(after.keys()).copied().collect();
    for day in days {
        let (b, a) = (
            before.get(&day).copied().unwrap_or_default(),
            after.get(&day).copied().unwrap_or_default(),
        );
        let (d_new, d_net) = (a.0 - b.0, a.1 - b.1);
        if (d_new, d_net) != (0, 0) {
            change.net_total += d_net;
            change.days.push((day, d_new, d_net));
        }
    }
    Some(change)
}

impl DayStats {
    /// Applies a lifecycle day delta to the user or group fields.
    pub fn add_lifecycle(&mut self, users: bool, d_new: i64, d_net: i64) {
        if users {
            self.new_users = self.new_users.wrapping_add_signed(d_new);
            self.net_users += d_net;
        } else {
            self.new_groups = self.new_groups.wrapping_add_signed(d_new);
            self.net_groups += d_net;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_read_in_time_order() {
        let day = |t: i64| t / 10;
        // Deleted at 35 but the deletion arrived first: still counts on day 3.
        let h = [(35, REMOVED), (12, CREATED), (40, CREATED), (41, CREATED)];
        let c = lifecycle_contribution(&h, day);
        assert_eq!(c.get(&1), Some(&(1, 1)));
        assert_eq!(c.get(&3), Some(&(0, -1)));
        assert_eq!(c.get(&4), Some(&(1, 1)));
        // A removal of something that never existed counts nothing.
        assert!(lifecycle_contribution(&[(5, REMOVED)], day).is_empty());
    }

    #[test]
    fn applying_an_event_reports_the_day_deltas() {
        let day = |t: i64| t / 10;
        let mut h = vec![(12, CREATED)];
        assert_eq!(apply_lifecycle(&mut h, 12, CREATED, day), None, "a repeat");
        let c = apply_lifecycle(&mut h, 35, REMOVED, day).unwrap();
        assert_eq!(c.days, vec![(3, 0, -1)]);
        assert_eq!(c.net_total, -1);
        // A creation that arrives late, before the first: day 0 gains, day 1 loses the creation.
        let c = apply_lifecycle(&mut h, 5, CREATED, day).unwrap();
        assert_eq!(c.days, vec![(0, 1, 1), (1, -1, -1)]);
        assert_eq!(c.net_total, 0);
        assert_eq!(decode_history(&encode_history(&h)), h);
    }
}
