//! Tests of the load generator.

use super::*;
use clap::Parser;

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    a: LoadgenArgs,
}

fn args(extra: &[&str]) -> LoadgenArgs {
    let mut v = vec![
        "x",
        "--messages",
        "5000",
        "--days",
        "2",
        "--end",
        "2026-11-20 12:00:00",
    ];
    v.extend_from_slice(extra);
    Wrap::parse_from(v).a
}

fn lines(a: &LoadgenArgs) -> Vec<String> {
    let g = Generator::new(a, end_ms(a).unwrap()).unwrap();
    g.map(|e| {
        let mut s = String::new();
        e.write_ndjson(&mut s);
        s
    })
    .collect()
}

#[test]
fn same_seed_same_events_and_the_mix_is_right() {
    let a = args(&[]);
    let first = lines(&a);
    assert_eq!(first, lines(&a));
    assert_ne!(first, lines(&args(&["--seed", "7"])));
    let events: Vec<serde_json::Value> = first
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let msgs: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "message").collect();
    assert_eq!(msgs.len(), 5000);
    let share = |f: &dyn Fn(&serde_json::Value) -> bool| {
        msgs.iter().filter(|m| f(m)).count() as f64 / 5000.0
    };
    assert!((0.75..0.85).contains(&share(&|m| m["msg_type"] == "text")));
    assert!((0.5..0.7).contains(&share(&|m| m["target_type"] == "single")));
    // In time order, inside the window, with ties in one millisecond.
    let times: Vec<i64> = msgs
        .iter()
        .map(|m| m["msg_ctime"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    assert!(times.windows(2).any(|w| w[0] == w[1]));
    let end = end_ms(&a).unwrap();
    assert!(times[0] > end - 2 * 86_400_000 && *times.last().unwrap() <= end);
    // Every body decodes, and the ingest decoder accepts every line.
    let all = first.concat();
    let decoded = imreport_domain::event::decode_batch(
        all.as_bytes(),
        "K",
        end + 1,
        &imreport_domain::event::IngestLimits {
            max_events: 1_000_000,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(decoded.len(), events.len());
}

/// Activity is Zipf with exponent 1.07: rank k draws in proportion to k^-1.07.
#[test]
fn activity_follows_zipf() {
    let a = args(&[]);
    let mut g = Generator::new(&a, end_ms(&a).unwrap()).unwrap();
    let n = a.populations().0;
    let draws = 400_000;
    let mut counts = vec![0u32; n as usize];
    for _ in 0..draws {
        counts[Generator::pick(&mut g.rng, &g.users) as usize] += 1;
    }
    let h: f64 = (1..=n).map(|k| f64::from(k).powf(-1.07)).sum();
    for rank in [0usize, 1, 9, 99] {
        let expected = f64::from(draws) * ((rank + 1) as f64).powf(-1.07) / h;
        let got = f64::from(counts[rank]);
        // Within five standard deviations of a binomial count.
        assert!(
            (got - expected).abs() < 5.0 * expected.sqrt() + 1.0,
            "rank {rank}: {got} draws, expected {expected:.0}"
        );
    }
    assert!(counts[n as usize - 1] < counts[0] / 1000 + 5);
}

/// The full profile writes every field JMessage exports, each message decodes as an ingest
/// event, and a message is ~400 bytes; the sparse profile spreads group traffic thinly.
#[test]
fn the_full_and_sparse_profiles_are_what_they_say() {
    let full = lines(&args(&["--profile", "full"]));
    let msgs: Vec<&String> = full
        .iter()
        .filter(|l| l.contains("\"event\":\"message\""))
        .collect();
    let fields = [
        "target_type",
        "msg_type",
        "target_name",
        "target_id",
        "target_appkey",
        "from_id",
        "from_name",
        "from_type",
        "from_appkey",
        "from_platform",
        "msg_body",
        "create_time",
        "version",
        "msgid",
        "msg_level",
        "set_from_name",
        "msg_ctime",
    ];
    for l in msgs.iter().take(200) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        for f in fields {
            assert!(v.get(f).is_some(), "{f} missing in {l}");
        }
        imreport_domain::event::decode_lines_from(
            l.as_bytes(),
            "4f7aef34fb361292c566a1cd",
            i64::MAX / 2,
            &imreport_domain::event::IngestLimits::default(),
            imreport_domain::event::Form::Events,
            1,
        )
        .unwrap();
    }
    let mean = msgs.iter().map(|l| l.len()).sum::<usize>() / msgs.len();
    assert!((380..520).contains(&mean), "{mean} bytes a message");

    let share_of_top_group = |a: &LoadgenArgs| {
        let mut by: std::collections::HashMap<String, usize> = Default::default();
        for l in lines(a) {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            if v["target_type"] == "group" {
                *by.entry(v["target_id"].to_string()).or_default() += 1;
            }
        }
        let total: usize = by.values().sum();
        *by.values().max().unwrap() as f64 / total as f64
    };
    let (standard, sparse) = (
        share_of_top_group(&args(&[])),
        share_of_top_group(&args(&["--profile", "sparse"])),
    );
    assert!(standard > 0.1 && sparse < 0.02, "{standard} {sparse}");
}

/// The traffic itself is pinned: benchmark runs of different sessions compare the same bytes,
/// whatever is rewritten in the generator (its string building was, for speed).
#[test]
fn each_profile_generates_the_same_bytes_as_before() {
    use sha2::{Digest, Sha256};
    for (profile, digest, len) in [
        (
            "standard",
            "f20e7d8df2900921c75ca225bca817d7088a31272072f8b81914007fa5ac1a6b",
            1_419_091,
        ),
        (
            "full",
            "9b1338fe40fe5677607fe225f71afbe171f4150eb712eb86f126caa64cfc4396",
            2_570_044,
        ),
        (
            "sparse",
            "e702fadb5faf09f74a994d866359c439bb283475be1c5defb10a7baef298f61a",
            1_489_240,
        ),
    ] {
        let all = lines(&args(&["--profile", profile])).concat();
        let got: String = Sha256::digest(all.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!((got.as_str(), all.len()), (digest, len), "{profile}");
    }
}

#[test]
fn live_traffic_carries_the_seconds_it_is_due_in() {
    let mut a = args(&["--live", "--rate", "1000"]);
    a.messages = 3500;
    let before = jiff::Timestamp::now().as_millisecond();
    let events: Vec<serde_json::Value> = lines(&a)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let after = jiff::Timestamp::now().as_millisecond();
    let times: Vec<i64> = events
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|m| m["msg_ctime"].as_i64().unwrap())
        .collect();
    assert_eq!(times.len(), 3500);
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    // 1000 a second from the start: the i-th message is due in second i / 1000 (the last,
    // partial second holds the 500 left), whatever --days and --end say.
    for (i, t) in times.iter().enumerate() {
        let second = i as i64 / 1000;
        assert!(
            (before + second * 1000..after + (second + 1) * 1000).contains(t),
            "message {i} at {t}, started between {before} and {after}"
        );
    }
}

#[test]
fn live_traffic_needs_a_rate() {
    let v = ["x", "--messages", "10", "--live"];
    assert!(Wrap::try_parse_from(v).is_err());
}
