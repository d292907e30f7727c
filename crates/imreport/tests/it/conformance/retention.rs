//! Retention with a settable clock: whole days go at the exact edge of the window, totals keep
//! their baseline, and queries keep answering while days are dropped.

use crate::support::*;
use serde_json::Value;

const SH: i64 = 8 * HOUR;

fn day_start(day: i64) -> i64 {
    day * DAY - SH
}

async fn retention_drops_whole_days_at_the_exact_edge(backend: Backend) {
    let s = std::sync::Arc::new(TestServer::start_with(backend, |s| s.retention_days = 3).await);
    let today = (T0 + SH).div_euclid(DAY);
    // The first and the last millisecond of each of the last four days.
    let mut evs = Vec::new();
    for d in 0..4 {
        let day = today - d;
        evs.push(text_message(
            (d * 10 + 1) as u64,
            day_start(day),
            "group",
            "g",
            "u",
        ));
        evs.push(text_message(
            (d * 10 + 2) as u64,
            (day_start(day + 1) - 1).min(T0),
            "group",
            "g",
            "u",
        ));
    }
    let body = s.ingest_ok(&evs).await;
    assert_eq!(body["accepted"], 8);

    // Queries run all along while days are dropped.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s2, stop2) = (s.clone(), stop.clone());
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let (status, page) = s2
                .get(&format!(
                    "/v2/groups/g/messages?count=2&begin_time={}&end_time={}",
                    enc(&sh(day_start(today - 1))),
                    enc(&sh(T0))
                ))
                .await;
            assert_eq!(status, 200, "{page}");
            assert_eq!(page["total"], 4, "the two newest days are never touched");
            n += 1;
        }
        n
    });

    // One day later the oldest day (today - 3) is outside the window.
    s.clock.set(T0 + DAY);
    assert_eq!(s.store.enforce_retention().await.unwrap(), 1);
    let ids = |msgs: Vec<Value>| {
        msgs.iter()
            .map(|m| m["msgid"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    let (_, msgs) = s
        .walk(
            &s.app,
            "/v2/messages",
            100,
            &sh(day_start(today - 3)),
            &sh(day_start(today - 2) + 1000),
        )
        .await;
    assert_eq!(
        ids(msgs),
        vec![21],
        "day today-3 is gone; the first millisecond of today-2 stays"
    );
    // Statistics: the dropped day is refused, the day just inside is kept.
    let date = |d: i64| sh(day_start(d))[..10].to_owned();
    let (status, _) = s
        .get(&format!(
            "/v2/statistic/messages?time_unit=DAY&start={}&duration=1",
            date(today - 3)
        ))
        .await;
    assert_eq!(status, 400);
    let (status, st) = s
        .get(&format!(
            "/v2/statistic/messages?time_unit=DAY&start={}&duration=1",
            date(today - 2)
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(st["send_msg_stat"][0]["group_send_msg"], 2);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.await.unwrap() > 0);
    // A second pass the same day drops nothing more.
    assert_eq!(s.store.enforce_retention().await.unwrap(), 0);
    // Ingest of an event on the dropped day is now "expired".
    let body = s
        .ingest_ok(&[text_message(99, day_start(today - 3), "group", "g", "u")])
        .await;
    assert_eq!(body["expired"], 1);
    // The msgid of a dropped message is free again (that message is gone).
    let body = s
        .ingest_ok(&[text_message(31, day_start(today - 1), "group", "g", "u")])
        .await;
    assert_eq!(body["accepted"], 1);
}

crate::conformance::on_every_backend! {
    async: retention_drops_whole_days_at_the_exact_edge;
    sync: ;
}
