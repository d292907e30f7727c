//! Bounded fuzzing of every parser that reads client input: history and statistics queries,
//! times, cursors and the ingest decoder. Each must return `Ok` or a client error, never panic.
//! Proptest keeps failing inputs in `proptest-regressions/`, which become regression cases.

use imreport_domain::cursor::{Binding, CursorKey, open};
use imreport_domain::event::{IngestLimits, decode_batch};
use imreport_domain::query::parse_history;
use imreport_domain::scope::Scope;
use imreport_domain::stats::{StatsKind, parse_stats};
use imreport_domain::time::{ReportTz, history_range, parse_day, parse_second};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 20_000,
        ..ProptestConfig::default()
    }
}

/// Strings near the accepted forms: digits, separators and a few odd characters.
fn near_time() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9 :T+-]{0,24}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}",
        "[0-9]{4}-[0-9]{1,2}-[0-9]{1,3}( [0-9]{1,2})?",
        ".{0,30}",
    ]
}

fn params() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop_oneof![
        Just("count".to_owned()),
        Just("begin_time".to_owned()),
        Just("end_time".to_owned()),
        Just("cursor".to_owned()),
        Just("time_unit".to_owned()),
        Just("start".to_owned()),
        Just("duration".to_owned()),
        "[a-z_]{0,8}",
    ];
    let value = prop_oneof![
        near_time(),
        "-?[0-9]{0,22}",
        "(?i)(hour|day|month|week)",
        ".{0,40}"
    ];
    proptest::collection::vec((key, value), 0..8)
}

fn event_line() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        Just("event"),
        Just("msgid"),
        Just("msg_ctime"),
        Just("create_time"),
        Just("target_type"),
        Just("target_id"),
        Just("from_id"),
        Just("from_type"),
        Just("msg_type"),
        Just("msg_body"),
        Just("username"),
        Just("gid"),
        Just("time"),
        Just("msg_level"),
        Just("version"),
        Just("x"),
    ];
    let value = prop_oneof![
        Just("\"message\"".to_owned()),
        Just("\"user_login\"".to_owned()),
        Just("\"group_created\"".to_owned()),
        Just("\"single\"".to_owned()),
        Just("\"group\"".to_owned()),
        Just("{}".to_owned()),
        Just("{\"text\":\"hi\"}".to_owned()),
        Just("null".to_owned()),
        Just("[]".to_owned()),
        "-?[0-9]{1,25}(\\.[0-9])?".prop_map(|s| s),
        "\"[^\"\\\\]{0,12}\"".prop_map(|s| s),
        Just("1e400".to_owned()),
        Just("\"\\ud800\"".to_owned()),
    ];
    proptest::collection::vec((field, value), 0..10).prop_map(|fields| {
        let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", inner.join(","))
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn time_parsers_never_panic(a in near_time(), b in near_time()) {
        let tz = ReportTz::new("Europe/Berlin").unwrap();
        let _ = parse_second("begin_time", &a);
        let _ = parse_day("start", &a);
        if let Ok(r) = history_range(&tz, &a, &b) {
            prop_assert!(r.begin <= r.end + 1, "{a} {b} {r:?}");
        }
    }

    #[test]
    fn query_parsers_never_panic(p in params()) {
        let tz = ReportTz::new("Asia/Shanghai").unwrap();
        let _ = parse_history(&p, &tz);
        for kind in [StatsKind::Users, StatsKind::Groups, StatsKind::Messages] {
            if let Ok(r) = parse_stats(kind, &p) {
                prop_assert!(r.n >= 1);
                let _ = r.label(r.n - 1);
                let (a, b) = r.day_span();
                prop_assert!(a <= b);
            }
        }
    }

    #[test]
    fn cursor_open_never_panics(s in "[A-Za-z0-9_-]{0,200}|.{0,200}") {
        let key = CursorKey::from_text("fuzzing-cursor-key-0123").unwrap();
        let app = Binding { id: 1, key: "app", created_ms: 0 };
        let opened = open(&key, app, &Scope::User(s.clone()), &s, 0, 120_000);
        prop_assert!(opened.is_err());
    }

    #[test]
    fn ingest_decoder_never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_batch(&body, "K", 1_700_000_000_000, &IngestLimits::default());
    }

    #[test]
    fn ingest_decoder_never_panics_on_near_events(lines in proptest::collection::vec(event_line(), 0..6), array in any::<bool>()) {
        let body = if array { format!("[{}]", lines.join(",")) } else { lines.join("\n") };
        let _ = decode_batch(body.as_bytes(), "K", 1_700_000_000_000, &IngestLimits::default());
    }
}
