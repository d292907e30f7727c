//! What an event means for the statistics, written once: the rows the stores keep (a day's
//! [`DayStats`], an hour's [`MsgCounts`]), what one stored message or login adds to them
//! ([`MessageRollup`], [`login_mark`]), and the presence sets that make the distinct counts
//! exact. Both stores apply exactly these; the property test at the end pins them against a
//! brute-force recount of the definitions.

use crate::Millis;
use crate::message::{FromType, Message, TargetType};
use crate::time::ReportTz;

/// Message counts by target type (single, group, chatroom) and class (text, image, voice, other).
pub type MsgCounts = [[u64; 4]; 3];

/// The class a `msg_type` counts under.
pub fn msg_class(msg_type: &str) -> usize {
    match msg_type {
        "text" => 0,
        "image" => 1,
        "voice" => 2,
        _ => 3,
    }
}

pub fn target_index(t: TargetType) -> usize {
    match t {
        TargetType::Single => 0,
        TargetType::Group => 1,
        TargetType::Chatroom => 2,
    }
}

/// One civil day of an app's rollups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayStats {
    pub msgs: MsgCounts,
    pub new_users: u64,
    /// Registrations minus deletions that day (for `total_users`).
    pub net_users: i64,
    pub active_users: u64,
    pub send_msg_users: u64,
    pub new_groups: u64,
    pub net_groups: i64,
    pub active_groups: u64,
}

/// Number of fields in a day row's flat form ([`DayStats::fields`]).
pub const DAY_FIELDS: usize = 12 + 7;

impl DayStats {
    /// The row as a flat list: the 12 message counts, then the user and group fields.
    pub fn fields(&self) -> [i64; DAY_FIELDS] {
        let mut f = [0i64; DAY_FIELDS];
        for (i, v) in self.msgs.iter().flatten().enumerate() {
            f[i] = *v as i64;
        }
        f[12..].copy_from_slice(&[
            self.new_users as i64,
            self.net_users,
            self.active_users as i64,
            self.send_msg_users as i64,
            self.new_groups as i64,
            self.net_groups,
            self.active_groups as i64,
        ]);
        f
    }

    pub fn from_fields(f: &[i64; DAY_FIELDS]) -> Self {
        let mut msgs = MsgCounts::default();
        for (i, v) in f[..12].iter().enumerate() {
            msgs[i / 4][i % 4] = *v as u64;
        }
        DayStats {
            msgs,
            new_users: f[12] as u64,
            net_users: f[13],
            active_users: f[14] as u64,
            send_msg_users: f[15] as u64,
            new_groups: f[16] as u64,
            net_groups: f[17],
            active_groups: f[18] as u64,
        }
    }

    /// Adds `d` field by field (deltas may be negative in the net fields).
    pub fn add(&mut self, d: &DayStats) {
        let (mut a, b) = (self.fields(), d.fields());
        for (x, y) in a.iter_mut().zip(b) {
            *x += y;
        }
        *self = Self::from_fields(&a);
    }

    pub fn encode(&self) -> Vec<u8> {
        self.fields().iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    pub fn decode(bytes: &[u8]) -> Self {
        let mut f = [0i64; DAY_FIELDS];
        for (i, chunk) in bytes.chunks_exact(8).take(DAY_FIELDS).enumerate() {
            f[i] = i64::from_be_bytes(chunk.try_into().expect("8 bytes"));
        }
        Self::from_fields(&f)
    }
}

pub fn encode_counts(c: &MsgCounts) -> Vec<u8> {
    c.iter().flatten().flat_map(|v| v.to_be_bytes()).collect()
}

pub fn decode_counts(bytes: &[u8]) -> MsgCounts {
    let mut c = MsgCounts::default();
    for (i, chunk) in bytes.chunks_exact(8).take(12).enumerate() {
        c[i / 4][i % 4] = u64::from_be_bytes(chunk.try_into().expect("8 bytes"));
    }
    c
}

/// A set a civil day keeps, whose size is a statistic: who sent messages, who was active (sent
/// or logged in), which groups received messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Presence {
    Sender,
    ActiveUser,
    ActiveGroup,
}

impl Presence {
    /// The byte that names the set in store keys and rows.
    pub fn code(self) -> u8 {
        match self {
            Presence::Sender => b's',
            Presence::ActiveUser => b'a',
            Presence::ActiveGroup => b'g',
        }
    }

    pub fn from_code(code: u8) -> Option<Presence> {
        [
            Presence::Sender,
            Presence::ActiveUser,
            Presence::ActiveGroup,
        ]
        .into_iter()
        .find(|p| p.code() == code)
    }

    /// Whether the set also keeps how many messages each member has that day: senders (by
    /// messages sent) and groups (by messages received), for [`Busiest`].
    pub fn tallied(self) -> bool {
        matches!(self, Presence::Sender | Presence::ActiveGroup)
    }

    /// Counts a new member of this set in its day's row.
    pub fn count(self, day: &mut DayStats) {
        match self {
            Presence::Sender => day.send_msg_users += 1,
            Presence::ActiveUser => day.active_users += 1,
            Presence::ActiveGroup => day.active_groups += 1,
        }
    }
}

/// An id put in a day's presence set; it counts (see [`Presence::count`]) when it was not
/// there yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark<'a> {
    pub day: i64,
    pub set: Presence,
    pub id: &'a str,
}

/// What one stored message adds to the statistics: one to its kind's count in its civil hour
/// and day, and the marks of that day's presence sets: its sender as a sender and as active
/// (`from_type = user` only), its group as active.
#[derive(Debug, Clone, Copy)]
pub struct MessageRollup<'a> {
    /// Civil day and civil hour of `msg_ctime` in the report zone.
    pub day: i64,
    pub hour: i64,
    /// Indexes into [`MsgCounts`]: the target type and the class.
    pub target: usize,
    pub class: usize,
    marks: [Option<(Presence, &'a str)>; 3],
}

impl<'a> MessageRollup<'a> {
    pub fn of(m: &'a Message, tz: &ReportTz) -> Self {
        let user = m.from_type == FromType::User;
        let group = m.target_type == TargetType::Group;
        MessageRollup {
            day: tz.civil_day(m.msg_ctime),
            hour: tz.civil_hour(m.msg_ctime),
            target: target_index(m.target_type),
            class: msg_class(&m.msg_type),
            marks: [
                user.then_some((Presence::Sender, m.from_id.as_str())),
                user.then_some((Presence::ActiveUser, m.from_id.as_str())),
                group.then_some((Presence::ActiveGroup, m.target_id.as_str())),
            ],
        }
    }

    /// Adds the message to its hour's and its day's counts.
    pub fn count(&self, hour: &mut MsgCounts, day: &mut DayStats) {
        hour[self.target][self.class] += 1;
        day.msgs[self.target][self.class] += 1;
    }

    /// The presence marks the message makes, in a fixed order.
    pub fn marks(&self) -> impl Iterator<Item = Mark<'a>> + 'a {
        let day = self.day;
        self.marks
            .into_iter()
            .flatten()
            .map(move |(set, id)| Mark { day, set, id })
    }
}

/// The `n` largest of a day's tallies: most messages first, ties by id in byte order (both
/// stores rank the same way).
pub fn top_tallies<S: AsRef<str> + Into<String>>(
    tallies: impl IntoIterator<Item = (S, u64)>,
    n: usize,
) -> Vec<Tally> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    // The heap's top is the weakest entry kept: fewest messages, then the greatest id.
    let mut heap: BinaryHeap<(Reverse<u64>, String)> = BinaryHeap::with_capacity(n + 1);
    for (id, count) in tallies {
        if count == 0 || n == 0 {
            continue;
        }
        if heap.len() == n {
            let weakest = heap.peek().expect("n > 0");
            if (Reverse(count), id.as_ref()) >= (weakest.0, weakest.1.as_str()) {
                continue;
            }
            heap.pop();
        }
        heap.push((Reverse(count), id.into()));
    }
    heap.into_sorted_vec()
        .into_iter()
        .map(|(Reverse(messages), id)| Tally { id, messages })
        .collect()
}

/// One sender's or group's messages on a day.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub id: String,
    pub messages: u64,
}

/// The busiest senders (`from_type = user`, by messages sent) and groups (by messages received,
/// from users and admins alike) of one civil day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Busiest {
    pub senders: Vec<Tally>,
    pub groups: Vec<Tally>,
}

/// The mark a login makes: the user is active on the login's civil day.
pub fn login_mark<'a>(username: &'a str, time: Millis, tz: &ReportTz) -> Mark<'a> {
    Mark {
        day: tz.civil_day(time),
        set: Presence::ActiveUser,
        id: username,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet, HashSet};

    #[test]
    fn day_rows_round_trip_with_negative_nets() {
        let mut d = DayStats {
            net_users: -3,
            new_groups: 2,
            ..DayStats::default()
        };
        d.msgs[2][3] = 9;
        assert_eq!(DayStats::decode(&d.encode()), d);
        let mut e = d;
        e.add(&d);
        assert_eq!((e.net_users, e.msgs[2][3]), (-6, 18));
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Message(Box<Message>),
        Login(String, Millis),
    }

    fn arb_event() -> impl Strategy<Value = Ev> {
        let id = prop_oneof![Just("a"), Just("b"), Just("c"), Just("10"), Just("g1")];
        let time = 1_700_000_000_000i64..1_700_000_000_000 + 3 * 86_400_000;
        let message = (
            id.clone(),
            id.clone(),
            0..3usize,
            prop_oneof![Just("text"), Just("image"), Just("voice"), Just("custom")],
            any::<bool>(),
            time.clone(),
        )
            .prop_map(|(from, to, t, ty, admin, ctime)| {
                Ev::Message(Box::new(Message {
                    msgid: 1,
                    msg_ctime: ctime,
                    create_time: 0,
                    target_type: [TargetType::Single, TargetType::Group, TargetType::Chatroom][t],
                    target_id: to.into(),
                    target_name: String::new(),
                    target_appkey: String::new(),
                    from_type: if admin {
                        FromType::Admin
                    } else {
                        FromType::User
                    },
                    from_id: from.into(),
                    from_name: String::new(),
                    from_appkey: String::new(),
                    from_platform: "api".into(),
                    msg_type: ty.into(),
                    msg_body: "{}".into(),
                    version: 1,
                    msg_level: 0,
                    set_from_name: 0,
                }))
            });
        prop_oneof![
            4 => message,
            1 => (id, time).prop_map(|(u, t)| Ev::Login(u.to_owned(), t)),
        ]
    }

    proptest! {
        /// Applying each event's rollup, with one set per day and kind as a store keeps, gives
        /// every figure its definition gives when recounted from all the events at once.
        #[test]
        fn every_rollup_matches_a_brute_force_recount(
            events in proptest::collection::vec(arb_event(), 0..120),
            zone in prop_oneof![Just("Asia/Shanghai"), Just("America/St_Johns"), Just("UTC")],
        ) {
            let tz = ReportTz::new(zone).unwrap();
            // As a store applies them.
            let mut days: BTreeMap<i64, DayStats> = BTreeMap::new();
            let mut hours: BTreeMap<i64, MsgCounts> = BTreeMap::new();
            let mut sets: HashSet<(i64, Presence, String)> = HashSet::new();
            let mut tallies: BTreeMap<(i64, Presence, String), u64> = BTreeMap::new();
            for ev in &events {
                let marks: Vec<Mark> = match ev {
                    Ev::Message(m) => {
                        let r = MessageRollup::of(m, &tz);
                        r.count(hours.entry(r.hour).or_default(), days.entry(r.day).or_default());
                        r.marks().collect()
                    }
                    Ev::Login(u, t) => vec![login_mark(u, *t, &tz)],
                };
                for mark in marks {
                    if mark.set.tallied() {
                        *tallies.entry((mark.day, mark.set, mark.id.to_owned())).or_default() += 1;
                    }
                    if sets.insert((mark.day, mark.set, mark.id.to_owned())) {
                        mark.set.count(days.entry(mark.day).or_default());
                    }
                }
            }
            // By the definitions (docs/API.md, Statistics).
            let cday = |t: Millis| tz.civil_day(t);
            let mut want_days: BTreeMap<i64, DayStats> = BTreeMap::new();
            let mut want_hours: BTreeMap<i64, MsgCounts> = BTreeMap::new();
            for ev in &events {
                if let Ev::Message(m) = ev {
                    let t = match m.target_type {
                        TargetType::Single => 0,
                        TargetType::Group => 1,
                        TargetType::Chatroom => 2,
                    };
                    let c = ["text", "image", "voice"].iter().position(|x| *x == m.msg_type).unwrap_or(3);
                    want_days.entry(cday(m.msg_ctime)).or_default().msgs[t][c] += 1;
                    want_hours.entry(tz.civil_hour(m.msg_ctime)).or_default()[t][c] += 1;
                }
            }
            let distinct = |day: i64, f: &dyn Fn(&Ev) -> Option<(Millis, String)>| -> u64 {
                events.iter().filter_map(f).filter(|(t, _)| cday(*t) == day)
                    .map(|(_, id)| id).collect::<BTreeSet<_>>().len() as u64
            };
            let all_days: BTreeSet<i64> = days.keys().chain(want_days.keys()).copied().collect();
            for day in all_days {
                let w = want_days.entry(day).or_default();
                w.send_msg_users = distinct(day, &|e| match e {
                    Ev::Message(m) if m.from_type == FromType::User => Some((m.msg_ctime, m.from_id.clone())),
                    _ => None,
                });
                w.active_users = distinct(day, &|e| match e {
                    Ev::Message(m) if m.from_type == FromType::User => Some((m.msg_ctime, m.from_id.clone())),
                    Ev::Login(u, t) => Some((*t, u.clone())),
                    _ => None,
                });
                w.active_groups = distinct(day, &|e| match e {
                    Ev::Message(m) if m.target_type == TargetType::Group => Some((m.msg_ctime, m.target_id.clone())),
                    _ => None,
                });
                prop_assert_eq!(days.get(&day).copied().unwrap_or_default(), *w, "day {}", day);
            }
            prop_assert_eq!(hours, want_hours);
            // Tallies: a user's messages sent and a group's messages received, per day.
            let mut want_tallies: BTreeMap<(i64, Presence, String), u64> = BTreeMap::new();
            for ev in &events {
                if let Ev::Message(m) = ev {
                    if m.from_type == FromType::User {
                        *want_tallies.entry((cday(m.msg_ctime), Presence::Sender, m.from_id.clone())).or_default() += 1;
                    }
                    if m.target_type == TargetType::Group {
                        *want_tallies.entry((cday(m.msg_ctime), Presence::ActiveGroup, m.target_id.clone())).or_default() += 1;
                    }
                }
            }
            prop_assert_eq!(tallies, want_tallies);
        }

        /// The top `n` is the first `n` of all tallies sorted by messages descending, then id.
        #[test]
        fn top_tallies_are_the_head_of_the_full_ranking(
            tallies in proptest::collection::btree_map("[a-d]{1,3}", 0u64..6, 0..40),
            n in 0usize..12,
        ) {
            let mut all: Vec<Tally> = tallies.iter().filter(|(_, c)| **c > 0)
                .map(|(id, c)| Tally { id: id.clone(), messages: *c }).collect();
            all.sort_by(|a, b| b.messages.cmp(&a.messages).then(a.id.as_bytes().cmp(b.id.as_bytes())));
            all.truncate(n);
            prop_assert_eq!(top_tallies(tallies.clone(), n), all);
        }
    }
}
