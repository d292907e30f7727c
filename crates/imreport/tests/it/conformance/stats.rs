//! Statistics over real HTTP: a property test against a brute-force recomputation from the same
//! events, reconciliation with the history endpoints, DST buckets, and bad parameters.

use crate::support::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap, HashSet};

const SH: i64 = 8 * HOUR; // Asia/Shanghai: UTC+8, no DST
fn cday(ms: i64) -> i64 {
    (ms + SH).div_euclid(DAY)
}
fn chour(ms: i64) -> i64 {
    (ms + SH).div_euclid(HOUR)
}
fn date(day: i64) -> String {
    sh(day * DAY - SH)[..10].to_owned()
}
/// First retained civil day at T0 with 60 days of retention.
fn horizon() -> i64 {
    cday(T0 - 60 * DAY)
}

#[derive(Debug, Clone)]
enum Ev {
    Msg {
        msgid: u64,
        ctime: i64,
        tt: usize,
        target: usize,
        from: usize,
        admin: bool,
        ty: usize,
    },
    Life {
        user: bool,
        id: usize,
        created: bool,
        time: i64,
    },
    Login {
        user: usize,
        time: i64,
    },
}

const TYPES: [&str; 5] = ["text", "image", "voice", "custom", "file"];
const TT: [&str; 3] = ["single", "group", "chatroom"];

fn arb_time() -> impl Strategy<Value = i64> {
    // Mostly the last three weeks; some at civil hour/day edges; some long ago (expired, or
    // lifecycle events that count whatever their age); a few just in the future.
    prop_oneof![
        6 => (0i64..21 * DAY).prop_map(|o| T0 - 21 * DAY + o),
        3 => (0i64..21, 0i64..24, -2i64..2).prop_map(|(d, h, e)| ((cday(T0) - d) * DAY - SH + h * HOUR + e).min(T0)),
        1 => (0i64..20 * DAY).prop_map(|o| T0 - 80 * DAY + o),
        1 => (0i64..240_000).prop_map(|o| T0 + o),
    ]
}

fn arb_ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        6 => (1u64..300, arb_time(), 0usize..3, 0usize..6, 0usize..8, prop::bool::weighted(0.1), 0usize..5)
            .prop_map(|(msgid, ctime, tt, target, from, admin, ty)| Ev::Msg { msgid, ctime, tt, target, from, admin, ty }),
        2 => (any::<bool>(), 0usize..8, prop::bool::weighted(0.7), arb_time())
            .prop_map(|(user, id, created, time)| Ev::Life { user, id, created, time }),
        2 => (0usize..8, arb_time()).prop_map(|(user, time)| Ev::Login { user, time }),
    ]
}

fn to_json(e: &Ev) -> Value {
    match e {
        Ev::Msg {
            msgid,
            ctime,
            tt,
            target,
            from,
            admin,
            ty,
        } => {
            let target = if *tt == 0 {
                format!("u{target}")
            } else {
                format!("g{target}")
            };
            json!({"event": "message", "msgid": msgid, "msg_ctime": ctime, "target_type": TT[*tt], "target_id": target,
                   "from_id": format!("u{from}"), "from_type": if *admin { "admin" } else { "user" },
                   "msg_type": TYPES[*ty], "msg_body": {"k": 1}})
        }
        Ev::Life {
            user: true,
            id,
            created,
            time,
        } => {
            json!({"event": if *created { "user_registered" } else { "user_deleted" }, "username": format!("u{id}"), "time": time})
        }
        Ev::Life {
            user: false,
            id,
            created,
            time,
        } => {
            json!({"event": if *created { "group_created" } else { "group_deleted" }, "gid": format!("g{id}"), "time": time})
        }
        Ev::Login { user, time } => {
            json!({"event": "user_login", "username": format!("u{user}"), "time": time})
        }
    }
}

/// A user's or group's lifecycle events: (time, creation first at equal times).
type History = BTreeSet<(i64, std::cmp::Reverse<bool>)>;

/// A stored message: ctime, tt, class, from, from user?, target.
type ModelMsg = (i64, usize, usize, String, bool, String);

/// The brute-force recomputation: straight from the definitions, over every event.
#[derive(Default)]
struct Model {
    msgs: Vec<ModelMsg>,
    life: HashMap<(bool, usize), History>,
    logins: Vec<(i64, String)>,
}

impl Model {
    fn build(events: &[Ev]) -> Model {
        let mut m = Model::default();
        let mut ids = HashSet::new();
        for e in events {
            match e {
                Ev::Msg {
                    msgid,
                    ctime,
                    tt,
                    target,
                    from,
                    admin,
                    ty,
                } => {
                    if cday(*ctime) >= horizon() && ids.insert(*msgid) {
                        let target = if *tt == 0 {
                            format!("u{target}")
                        } else {
                            format!("g{target}")
                        };
                        m.msgs.push((
                            *ctime,
                            *tt,
                            (*ty).min(3),
                            format!("u{from}"),
                            !admin,
                            target,
                        ));
                    }
                }
                Ev::Life {
                    user,
                    id,
                    created,
                    time,
                } => {
                    m.life
                        .entry((*user, *id))
                        .or_default()
                        .insert((*time, std::cmp::Reverse(*created)));
                }
                Ev::Login { user, time } => {
                    if cday(*time) >= horizon() {
                        m.logins.push((*time, format!("u{user}")));
                    }
                }
            }
        }
        m
    }

    /// (new, total at end of day) for users or groups on a day.
    fn lifecycle(&self, user: bool, day: i64) -> (u64, i64) {
        let (mut new, mut total) = (0, 0);
        for ((u, _), hist) in &self.life {
            if *u != user {
                continue;
            }
            let mut exists = false;
            for (t, std::cmp::Reverse(created)) in hist {
                match (created, exists) {
                    (true, false) => {
                        exists = true;
                        if cday(*t) == day {
                            new += 1;
                        }
                    }
                    (false, true) => exists = false,
                    _ => {}
                }
                if cday(*t) > day {
                    break;
                }
            }
            // `exists` now reflects the last event on or before `day`... unless we broke early.
            let at_end = hist.iter().filter(|(t, _)| cday(*t) <= day).fold(
                false,
                |ex, (_, std::cmp::Reverse(c))| {
                    if *c {
                        true
                    } else if ex {
                        false
                    } else {
                        ex
                    }
                },
            );
            total += i64::from(at_end);
        }
        (new, total)
    }

    fn users(&self, day: i64) -> Value {
        let (new, total) = self.lifecycle(true, day);
        let senders: BTreeSet<&str> = self
            .msgs
            .iter()
            .filter(|m| cday(m.0) == day && m.4)
            .map(|m| m.3.as_str())
            .collect();
        let mut active = senders.clone();
        active.extend(
            self.logins
                .iter()
                .filter(|l| cday(l.0) == day)
                .map(|l| l.1.as_str()),
        );
        json!({"date": date(day), "new_users": new, "total_users": total, "active_users": active.len(), "send_msg_users": senders.len()})
    }

    fn groups(&self, day: i64) -> Value {
        let (new, total) = self.lifecycle(false, day);
        let active: BTreeSet<&str> = self
            .msgs
            .iter()
            .filter(|m| cday(m.0) == day && m.1 == 1)
            .map(|m| m.5.as_str())
            .collect();
        json!({"date": date(day), "new_group": new, "total_group": total, "active_group": active.len()})
    }

    /// The top `n` senders (user messages sent) and groups (messages received) of a day: most
    /// messages first, ties by id.
    fn busiest(&self, day: i64, n: usize) -> Value {
        let top = |key: &dyn Fn(&ModelMsg) -> Option<&str>| {
            let mut by: HashMap<&str, u64> = HashMap::new();
            for m in self.msgs.iter().filter(|m| cday(m.0) == day) {
                if let Some(id) = key(m) {
                    *by.entry(id).or_default() += 1;
                }
            }
            let mut v: Vec<(&str, u64)> = by.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            v.truncate(n);
            v
        };
        let senders = top(&|m| m.4.then_some(m.3.as_str()));
        let groups = top(&|m| (m.1 == 1).then_some(m.5.as_str()));
        json!({
            "date": date(day),
            "senders": senders.iter().map(|(u, n)| json!({"username": u, "messages": n})).collect::<Vec<_>>(),
            "groups": groups.iter().map(|(g, n)| json!({"gid": g, "messages": n})).collect::<Vec<_>>(),
        })
    }

    /// Counts by [tt][class] of messages whose `key(ctime)` is in `range`.
    fn counts(&self, key: impl Fn(i64) -> i64, range: std::ops::Range<i64>) -> [[u64; 4]; 3] {
        let mut c = [[0u64; 4]; 3];
        for m in &self.msgs {
            if range.contains(&key(m.0)) {
                c[m.1][m.2] += 1;
            }
        }
        c
    }
}

fn class_json(c: [u64; 4]) -> Value {
    json!({"txt_msg": c[0], "image_msg": c[1], "voice_msg": c[2], "other_msg": c[3]})
}

fn messages_json(buckets: Vec<(String, [[u64; 4]; 3])>) -> Value {
    let mut totals = [[0u64; 4]; 3];
    let send: Vec<Value> = buckets
        .iter()
        .map(|(label, c)| {
            for t in 0..3 {
                for k in 0..4 {
                    totals[t][k] += c[t][k];
                }
            }
            json!({"time": label, "group_send_msg": c[1].iter().sum::<u64>(), "single_send_msg": c[0].iter().sum::<u64>(),
                   "chatroom_send_msg": c[2].iter().sum::<u64>()})
        })
        .collect();
    json!({"send_msg_stat": send, "single_msg_stat": class_json(totals[0]), "group_msg_stat": class_json(totals[1]),
           "chatroom_msg_stat": class_json(totals[2])})
}

fn month_start_day(y: i64, m: i64) -> i64 {
    let d = jiff::civil::Date::new(y as i16, m as i8, 1).unwrap();
    (d.at(0, 0, 0, 0)
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp()
        .as_second())
    .div_euclid(86_400)
}

/// The history `total` between two civil times equals the first bucket's single + group +
/// chatroom counts of a statistics answer.
async fn assert_reconciles(s: &TestServer, stats: &Value, begin: &str, end: &str, what: &str) {
    let (_, page) = s
        .get(&format!(
            "/v2/messages?count=1&begin_time={begin}&end_time={end}"
        ))
        .await;
    assert_eq!(
        page["total"].as_u64().unwrap(),
        bucket_total(&stats["send_msg_stat"][0]),
        "history vs statistics {what}"
    );
}

async fn check(
    backend: Backend,
    events: Vec<Ev>,
    batch: usize,
    days: Vec<(i64, i64)>,
    hours: Vec<(i64, i64, i64)>,
) {
    let s = TestServer::start_on(backend).await;
    for chunk in events.chunks(batch) {
        let body: Vec<Value> = chunk.iter().map(to_json).collect();
        let (status, resp) = s.ingest(ndjson(&body)).await;
        assert_eq!(status, 200, "{resp}");
    }
    let model = Model::build(&events);
    let today = cday(T0);
    for (off, n) in days {
        let first = (today - 21 + off).max(horizon());
        let n = n.min(60);
        let q = |ep: &str, unit: &str| {
            format!(
                "/v2/statistic/{ep}?time_unit={unit}&start={}&duration={n}",
                date(first)
            )
        };
        let (status, users) = s.get(&q("users", "DAY")).await;
        assert_eq!(status, 200, "{users}");
        let want: Vec<Value> = (first..first + n).map(|d| model.users(d)).collect();
        assert_eq!(users, json!(want), "users from {}", date(first));
        let (_, groups) = s.get(&q("groups", "day")).await;
        let want: Vec<Value> = (first..first + n).map(|d| model.groups(d)).collect();
        assert_eq!(groups, json!(want), "groups from {}", date(first));
        for (count, n) in [("&count=3", 3), ("", 10)] {
            let (status, busiest) = s
                .get(&format!(
                    "/v2/statistic/busiest?date={}{count}",
                    date(first)
                ))
                .await;
            assert_eq!(status, 200, "{busiest}");
            assert_eq!(
                busiest,
                model.busiest(first, n),
                "busiest of {}",
                date(first)
            );
        }
        let (_, msgs) = s.get(&q("messages", "Day")).await;
        let want = messages_json(
            (first..first + n)
                .map(|d| (date(d), model.counts(cday, d..d + 1)))
                .collect(),
        );
        assert_eq!(msgs, want, "messages by day from {}", date(first));
        // Reconciliation: the history total of that civil day equals the day's three counts.
        let (d, at) = (date(first), format!("on {}", date(first)));
        assert_reconciles(
            &s,
            &msgs,
            &format!("{d}+00:00:00"),
            &format!("{d}+23:59:59"),
            &at,
        )
        .await;
    }
    for (off, h, n) in hours {
        let day = (today - 21 + off).max(horizon());
        let n = n.min(24 - h);
        let (status, msgs) = s
            .get(&format!(
                "/v2/statistic/messages?time_unit=HOUR&start={}+{h:02}&duration={n}",
                date(day)
            ))
            .await;
        assert_eq!(status, 200, "{msgs}");
        let first = day * 24 + h;
        let want = messages_json(
            (first..first + n)
                .map(|hh| {
                    (
                        format!("{} {:02}", date(day), hh - day * 24),
                        model.counts(chour, hh..hh + 1),
                    )
                })
                .collect(),
        );
        assert_eq!(msgs, want, "hours of {} from {h:02}", date(day));
        let (d, at) = (date(day), format!("at {} {h:02}", date(day)));
        assert_reconciles(
            &s,
            &msgs,
            &format!("{d}+{h:02}:00:00"),
            &format!("{d}+{h:02}:59:59"),
            &at,
        )
        .await;
    }
    // Months: this one and the one before (partly before the retained window: counts what is kept).
    let civil = jiff::Timestamp::from_millisecond(T0 + SH)
        .unwrap()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date();
    let (y, m) = (i64::from(civil.year()), i64::from(civil.month()));
    let (py, pm) = if m == 1 { (y - 1, 12) } else { (y, m - 1) };
    let (_, msgs) = s
        .get(&format!(
            "/v2/statistic/messages?time_unit=month&start={py:04}-{pm:02}&duration=2"
        ))
        .await;
    let (a, b, c) = (
        month_start_day(py, pm),
        month_start_day(y, m),
        month_start_day(
            if m == 12 { y + 1 } else { y },
            if m == 12 { 1 } else { m + 1 },
        ),
    );
    let want = messages_json(vec![
        (format!("{py:04}-{pm:02}"), model.counts(cday, a..b)),
        (format!("{y:04}-{m:02}"), model.counts(cday, b..c)),
    ]);
    assert_eq!(msgs, want, "months");
}

fn statistics_match_a_brute_force_recomputation(backend: Backend) {
    let inputs = (
        proptest::collection::vec(arb_ev(), 20..600),
        1usize..200,
        proptest::collection::vec((0i64..23, 1i64..40), 1..4),
        proptest::collection::vec((0i64..23, 0i64..24, 1i64..24), 1..4),
    );
    check_property(
        backend.cases(10),
        file!(),
        inputs,
        |(events, batch, days, hours)| {
            runtime().block_on(check(backend, events, batch, days, hours));
            Ok(())
        },
    );
}

async fn future_buckets_are_zeros_with_totals_carried(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    s.ingest_ok(&[
        json!({"event": "user_registered", "username": "old", "time": T0 - 300 * DAY}),
        json!({"event": "user_registered", "username": "a", "time": T0 - 1000}),
        json!({"event": "group_created", "gid": "g", "time": T0 - 1000}),
        text_message(1, T0 - 1000, "group", "g", "a"),
    ])
    .await;
    let today = cday(T0);
    let (_, users) = s
        .get(&format!(
            "/v2/statistic/users?time_unit=DAY&start={}&duration=3",
            date(today)
        ))
        .await;
    assert_eq!(
        users,
        json!([
            {"date": date(today), "new_users": 1, "total_users": 2, "active_users": 1, "send_msg_users": 1},
            {"date": date(today + 1), "new_users": 0, "total_users": 2, "active_users": 0, "send_msg_users": 0},
            {"date": date(today + 2), "new_users": 0, "total_users": 2, "active_users": 0, "send_msg_users": 0},
        ])
    );
    let (_, groups) = s
        .get(&format!(
            "/v2/statistic/groups?time_unit=DAY&start={}&duration=2",
            date(today + 1)
        ))
        .await;
    assert_eq!(
        groups[1],
        json!({"date": date(today + 2), "new_group": 0, "total_group": 1, "active_group": 0})
    );
}

async fn totals_keep_their_baseline_when_old_days_are_dropped(backend: Backend) {
    let s = TestServer::start_with(backend, |s| s.retention_days = 3).await;
    s.ingest_ok(&[
        json!({"event": "user_registered", "username": "a", "time": T0 - 2 * DAY}),
        json!({"event": "user_registered", "username": "b", "time": T0 - DAY}),
        text_message(1, T0 - 2 * DAY, "single", "b", "a"),
    ])
    .await;
    // Five days later the days of the registrations are gone, the total is not.
    s.clock.set(T0 + 5 * DAY);
    s.store.enforce_retention().await.unwrap();
    let today = cday(T0 + 5 * DAY);
    let (status, users) = s
        .get(&format!(
            "/v2/statistic/users?time_unit=DAY&start={}&duration=1",
            date(today)
        ))
        .await;
    assert_eq!(status, 200, "{users}");
    assert_eq!(users[0]["total_users"], 2);
    assert_eq!(users[0]["new_users"], 0);
    // A request wholly before the retained window is refused; history there is simply empty.
    let (status, err) = s
        .get(&format!(
            "/v2/statistic/messages?time_unit=DAY&start={}&duration=2",
            date(cday(T0 - 2 * DAY))
        ))
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_u64()),
        (400, Some(899003)),
        "{err}"
    );
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retained")
    );
    let (_, page) = s
        .get(&format!(
            "/v2/messages?count=10&begin_time={}&end_time={}",
            enc(&sh(T0 - 3 * DAY)),
            enc(&sh(T0))
        ))
        .await;
    assert_eq!(page["total"], 0);
}

async fn buckets_follow_dst_in_the_report_zone(backend: Backend) {
    let s = TestServer::start_with(backend, |s| s.report_tz = "Europe/Berlin".into()).await;
    // 2026-10-25: Berlin falls back at 03:00 CEST to 02:00 CET; 02:xx happens twice.
    let first_0230 = 1_792_888_200_000; // 00:30 UTC = 02:30 CEST
    let second_0230 = first_0230 + HOUR; // 01:30 UTC = 02:30 CET
    let before_midnight = 1_792_879_199_000; // 23:59:59 CEST on the 24th = 21:59:59 UTC
    s.clock.set(first_0230 + 10 * DAY);
    s.ingest_ok(&[
        text_message(1, first_0230, "single", "a", "b"),
        text_message(2, second_0230, "single", "a", "b"),
        text_message(3, before_midnight, "single", "a", "b"),
    ])
    .await;
    let (_, hours) = s
        .get("/v2/statistic/messages?time_unit=HOUR&start=2026-10-25+01&duration=3")
        .await;
    let singles: Vec<u64> = hours["send_msg_stat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["single_send_msg"].as_u64().unwrap())
        .collect();
    assert_eq!(singles, vec![0, 2, 0]);
    let (_, days) = s
        .get("/v2/statistic/messages?time_unit=DAY&start=2026-10-24&duration=2")
        .await;
    let singles: Vec<u64> = days["send_msg_stat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["single_send_msg"].as_u64().unwrap())
        .collect();
    assert_eq!(singles, vec![1, 2]);
    // History agrees for the 25th, a 25-hour day.
    let (_, page) = s
        .get("/v2/messages?count=1&begin_time=2026-10-25+00:00:00&end_time=2026-10-25+23:59:59")
        .await;
    assert_eq!(page["total"], 2);
}

async fn bad_statistics_parameters_are_400(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let d = date(cday(T0));
    for (path, says) in [
        (
            "/v2/statistic/users?start={D}&duration=1",
            "time_unit is required",
        ),
        (
            "/v2/statistic/users?time_unit=HOUR&start={D}+00&duration=1",
            "use DAY",
        ),
        (
            "/v2/statistic/groups?time_unit=MONTH&start=2026-11&duration=1",
            "use DAY",
        ),
        (
            "/v2/statistic/users?time_unit=DAY&start={D}&duration=61",
            "1 to 60",
        ),
        (
            "/v2/statistic/users?time_unit=DAY&start=2026/11/01&duration=1",
            "yyyy-MM-dd",
        ),
        (
            "/v2/statistic/messages?time_unit=YEAR&start=2026&duration=1",
            "HOUR, DAY or MONTH",
        ),
        (
            "/v2/statistic/messages?time_unit=HOUR&start={D}+23&duration=2",
            "past the end",
        ),
        (
            "/v2/statistic/messages?time_unit=HOUR&start={D}+00&duration=25",
            "1 to 24",
        ),
        (
            "/v2/statistic/messages?time_unit=MONTH&start=2026-11&duration=3",
            "1 to 2",
        ),
        (
            "/v2/statistic/messages?time_unit=MONTH&start=2026-11-01&duration=1",
            "yyyy-MM",
        ),
        (
            "/v2/statistic/messages?time_unit=DAY&start={D}",
            "duration is required",
        ),
        (
            "/v2/statistic/messages?time_unit=DAY&duration=1",
            "start is required",
        ),
        (
            "/v2/statistic/messages?time_unit=DAY&start=2020-01-01&duration=60",
            "retained",
        ),
        ("/v2/statistic/busiest", "date is required"),
        ("/v2/statistic/busiest?date=2026/11/01", "yyyy-MM-dd"),
        ("/v2/statistic/busiest?date={D}&count=0", "1 to 100"),
        ("/v2/statistic/busiest?date={D}&count=101", "1 to 100"),
        ("/v2/statistic/busiest?date={D}&count=", "1 to 100"),
        ("/v2/statistic/busiest?date=2020-01-01", "retained"),
    ] {
        let (status, body) = s.get(&path.replace("{D}", &d)).await;
        assert_eq!(
            (status, body["error"]["code"].as_u64()),
            (400, Some(899003)),
            "{path}: {body}"
        );
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{path}: {msg}");
    }
    // The PHP SDK's doubled slash.
    let (status, _) = s
        .get(&format!(
            "/v2//statistic/users?time_unit=DAY&start={d}&duration=1"
        ))
        .await;
    assert_eq!(status, 200);
}

/// One statistics request anywhere in the input domain: every endpoint and unit, dates from
/// year 0000 to 9999 (edges weighted), months and days just out of range, any duration.
fn arb_stats_request() -> impl Strategy<Value = (String, String, i64, String)> {
    let endpoint = prop_oneof![Just("users"), Just("groups"), Just("messages"),];
    let unit = prop_oneof![
        Just("DAY"),
        Just("HOUR"),
        Just("MONTH"),
        Just("day"),
        Just("week")
    ];
    let year = prop_oneof![0i64..=9999, 9995i64..=9999, 2020i64..=2030, Just(0i64)];
    (
        endpoint,
        unit,
        year,
        0i64..=13,
        0i64..=32,
        0i64..=24,
        -1i64..=62,
    )
        .prop_map(|(endpoint, unit, y, m, d, h, n)| {
            let start = match unit.to_ascii_uppercase().as_str() {
                "HOUR" => format!("{y:04}-{m:02}-{d:02} {h:02}"),
                "MONTH" => format!("{y:04}-{m:02}"),
                _ => format!("{y:04}-{m:02}-{d:02}"),
            };
            (endpoint.to_owned(), unit.to_owned(), n, start)
        })
}

/// Buckets a 200 answer labels, in order.
fn labels(endpoint: &str, v: &Value) -> Vec<String> {
    let (rows, key) = match endpoint {
        "messages" => (&v["send_msg_stat"], "time"),
        _ => (v, "date"),
    };
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r[key].as_str().unwrap().to_owned())
        .collect()
}

/// The label `i` buckets after `start` should carry, or `None` past 9999-12-31.
fn expected_label(unit: &str, start: &str, i: i64) -> Option<String> {
    use jiff::ToSpan;
    match unit {
        "HOUR" => {
            let h: i64 = start[11..13].parse().unwrap();
            Some(format!("{} {:02}", &start[..10], h + i))
        }
        "MONTH" => {
            let (y, m): (i64, i64) = (start[..4].parse().unwrap(), start[5..7].parse().unwrap());
            let k = y * 12 + m - 1 + i;
            (k / 12 <= 9999).then(|| format!("{:04}-{:02}", k / 12, k % 12 + 1))
        }
        _ => {
            let d: jiff::civil::Date = start.parse().unwrap();
            d.checked_add(i.days()).ok().map(|d| d.to_string())
        }
    }
}

fn every_statistics_request_in_the_whole_domain_answers_200_or_400(backend: Backend) {
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let s = TestServer::start_on(backend).await;
        s.ingest_ok(&[
            json!({"event": "user_registered", "username": "a", "time": T0 - DAY}),
            text_message(1, T0 - HOUR, "group", "g", "a"),
        ])
        .await;
        s
    });
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let answered = std::cell::Cell::new(0);
    runner
        .run(&arb_stats_request(), |(endpoint, unit, n, start)| {
            let q = format!(
                "/v2/statistic/{endpoint}?time_unit={unit}&start={}&duration={n}",
                enc(&start)
            );
            let (status, v) = rt.block_on(s.get(&q));
            match status {
                400 => prop_assert_eq!(v["error"]["code"].as_u64(), Some(899003), "{}: {}", q, v),
                200 => {
                    answered.set(answered.get() + 1);
                    let unit = unit.to_ascii_uppercase();
                    let got = labels(&endpoint, &v);
                    prop_assert_eq!(got.len() as i64, n, "{}: {}", q, v);
                    for (i, label) in got.iter().enumerate() {
                        let want = expected_label(&unit, &start, i as i64);
                        prop_assert_eq!(Some(label.clone()), want, "{}: bucket {}", q, i);
                    }
                }
                other => prop_assert!(false, "{}: {} {}", q, other, v),
            }
            Ok(())
        })
        .unwrap();
    assert!(
        answered.get() >= 40,
        "only {} requests answered 200",
        answered.get()
    );
}

crate::conformance::on_every_backend! {
    async: future_buckets_are_zeros_with_totals_carried, totals_keep_their_baseline_when_old_days_are_dropped, buckets_follow_dst_in_the_report_zone, bad_statistics_parameters_are_400;
    sync: every_statistics_request_in_the_whole_domain_answers_200_or_400, statistics_match_a_brute_force_recomputation;
}
