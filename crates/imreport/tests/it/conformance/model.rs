//! Property test: random event streams (ties in one millisecond, crowded minutes, out-of-order
//! arrival, duplicates, two apps) ingested over HTTP; every scope walked with random page sizes
//! and windows must equal a plain in-memory model: same messages, same order, no repeats, no
//! gaps, the right total.

use crate::support::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::HashSet;

#[derive(Debug, Clone)]
struct Msg {
    app: usize,
    msgid: u64,
    ctime: i64,
    target_type: &'static str,
    target: String,
    from: String,
}

const SPAN: i64 = 9 * DAY;
/// One millisecond many messages share.
const HOT: i64 = T0 - 2 * DAY - 777;
/// Two minutes many messages fall in: the embedded store's record runs of different batches
/// interleave there.
const WARM: i64 = T0 - 3 * DAY - 120_000;

fn arb_msg() -> impl Strategy<Value = Msg> {
    (
        0usize..2,
        1u64..400,
        prop_oneof![3 => Just(None), 1 => Just(Some(HOT)), 1 => Just(Some(WARM))],
        0i64..SPAN,
        0usize..3,
        0usize..4,
        0usize..4,
    )
        .prop_map(|(app, msgid, hot, off, tt, target, from)| {
            let target_type = ["single", "group", "chatroom"][tt];
            let target = match target_type {
                "single" => format!("u{target}"),
                "group" => format!("g{target}"),
                _ => format!("r{target}"),
            };
            Msg {
                app,
                msgid,
                ctime: match hot {
                    None => T0 - SPAN + off,
                    Some(HOT) => HOT,
                    Some(warm) => warm + off % 120_000,
                },
                target_type,
                target,
                from: format!("u{from}"),
            }
        })
}

#[derive(Debug, Clone)]
struct Query {
    app: usize,
    scope: (usize, usize),
    begin: i64,
    len: i64,
    count: u16,
}

fn arb_query() -> impl Strategy<Value = Query> {
    (
        0usize..2,
        0usize..4,
        0usize..4,
        0i64..(SPAN / 1000),
        prop_oneof![Just(7 * 86_400i64), 0i64..(7 * 86_400)],
        1u16..120,
    )
        .prop_map(|(app, kind, id, b, len, count)| Query {
            app,
            scope: (kind, id),
            begin: T0 - SPAN + b * 1000,
            len: len * 1000,
            count,
        })
}

fn path_of(scope: (usize, usize)) -> String {
    match scope {
        (0, _) => "/v2/messages".into(),
        (1, i) => format!("/v2/users/u{i}/messages"),
        (2, i) => format!("/v2/groups/g{i}/messages"),
        (_, i) => format!("/v2/chatrooms/r{i}/messages"),
    }
}

fn in_scope(m: &Msg, scope: (usize, usize)) -> bool {
    match scope {
        (0, _) => true,
        (1, i) => {
            let u = format!("u{i}");
            m.from == u || (m.target_type == "single" && m.target == u)
        }
        (2, i) => m.target_type == "group" && m.target == format!("g{i}"),
        (_, i) => m.target_type == "chatroom" && m.target == format!("r{i}"),
    }
}

/// How a case runs besides its stream: the busy-hour threshold (low ones give most scope-hours
/// counters, the default almost none), and after which batches the store's upkeep runs (on
/// PostgreSQL it counts finished hours; later batches then land in counted hours).
#[derive(Debug, Clone)]
struct Upkeep {
    busy_hour: u64,
    tidy_after: Vec<usize>,
}

fn arb_upkeep() -> impl Strategy<Value = Upkeep> {
    (
        prop_oneof![Just(1u64), Just(3), Just(32)],
        proptest::collection::vec(0usize..8, 0..4),
    )
        .prop_map(|(busy_hour, tidy_after)| Upkeep {
            busy_hour,
            tidy_after,
        })
}

async fn check(
    backend: Backend,
    stream: Vec<Msg>,
    batch_sizes: Vec<usize>,
    queries: Vec<Query>,
    upkeep: Upkeep,
) {
    let s = TestServer::start_with(backend, |s| s.busy_hour = upkeep.busy_hour).await;
    let apps = [
        Creds {
            key: s.app.key.clone(),
            secret: s.app.secret.clone(),
        },
        s.create_app().await,
    ];
    // Ingest in batches of random sizes, in the (unordered) stream order.
    let mut rest = &stream[..];
    let mut sizes = batch_sizes.into_iter().cycle();
    let mut batch_no = 0;
    while !rest.is_empty() {
        // Twice: a dirty hour is counted again once a pass finds it untouched since the last.
        for _ in upkeep.tidy_after.iter().filter(|b| **b == batch_no) {
            s.store.tidy().await.unwrap();
            s.store.tidy().await.unwrap();
        }
        batch_no += 1;
        let n = sizes.next().unwrap().min(rest.len());
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        for (app, creds) in apps.iter().enumerate() {
            let evs: Vec<Value> = batch
                .iter()
                .filter(|m| m.app == app)
                .map(|m| {
                    json!({"event": "message", "msgid": m.msgid, "msg_ctime": m.ctime, "target_type": m.target_type,
                           "target_id": m.target, "from_id": m.from, "msg_type": "text", "msg_body": {"text": "x"}})
                })
                .collect();
            if !evs.is_empty() {
                let (status, body) = s.ingest_as(creds, ndjson(&evs)).await;
                assert_eq!(status, 200, "{body}");
            }
        }
    }
    if !upkeep.tidy_after.is_empty() {
        s.store.tidy().await.unwrap();
    }
    // The model: the first message with a given (app, msgid) wins.
    let mut seen = HashSet::new();
    let stored: Vec<Msg> = stream
        .into_iter()
        .filter(|m| seen.insert((m.app, m.msgid)))
        .collect();
    for q in queries {
        let (b, e) = (q.begin, q.begin + q.len);
        let mut want: Vec<(i64, u64)> = stored
            .iter()
            .filter(|m| {
                m.app == q.app && in_scope(m, q.scope) && m.ctime >= b && m.ctime <= e + 999
            })
            .map(|m| (m.ctime, m.msgid))
            .collect();
        want.sort();
        let (total, msgs) = s
            .walk(&apps[q.app], &path_of(q.scope), q.count, &sh(b), &sh(e))
            .await;
        let got: Vec<(i64, u64)> = msgs
            .iter()
            .map(|m| {
                (
                    m["msg_ctime"].as_i64().unwrap(),
                    m["msgid"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(total as usize, want.len(), "total for {q:?}");
        assert_eq!(got, want, "walk for {q:?}");
    }
}

fn every_walk_matches_the_model(backend: Backend) {
    let inputs = (
        proptest::collection::vec(arb_msg(), 50..900),
        proptest::collection::vec(1usize..400, 1..6),
        proptest::collection::vec(arb_query(), 4..10),
        arb_upkeep(),
    );
    check_property(
        backend.cases(12),
        file!(),
        inputs,
        |(stream, batch_sizes, queries, upkeep)| {
            runtime().block_on(check(backend, stream, batch_sizes, queries, upkeep));
            Ok(())
        },
    );
}

crate::conformance::on_every_backend! {
    async: ;
    sync: every_walk_matches_the_model;
}
