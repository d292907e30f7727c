//! Tests of decoding and checking events.

use super::*;
use crate::message::{FromType, TargetType};

const NOW: Millis = 1_700_000_000_000;

fn decode(body: &str) -> Result<Vec<Event>, Error> {
    decode_batch(body.as_bytes(), "APPKEY", NOW, &IngestLimits::default())
}

#[test]
fn escaped_strings_are_decoded_and_plain_ones_kept_as_sent() {
    let ev = decode(
        r#"{"event":"mess\u0061ge","target_type":"\u0067roup","target_id":"g\/1","from_id":"u1","from_name":"Zo\u00eb \"Z\"","msg_type":"text","from_platform":"web","msg_body":{}}"#,
    )
    .unwrap();
    let Event::Message(m) = &ev[0] else { panic!() };
    assert_eq!(m.target_type, TargetType::Group);
    assert_eq!(m.target_id, "g/1");
    assert_eq!(m.from_name, "Zo\u{eb} \"Z\"");
    assert_eq!(
        (m.from_id.as_str(), m.from_platform.as_str()),
        ("u1", "web")
    );
    // The limit applies to the decoded text: 32 escaped characters are 32 bytes.
    let tag = "\\u0061".repeat(32);
    let line = format!(
        r#"{{"event":"message","target_type":"single","target_id":"u2","from_id":"u1","msg_type":"{tag}","msg_body":{{}}}}"#
    );
    let Event::Message(m) = &decode(&line).unwrap()[0] else {
        panic!()
    };
    assert_eq!(m.msg_type, "a".repeat(32));
    let line = line.replace("\\u0061\"", "\\u0061a\"");
    assert!(decode(&line).unwrap_err().to_string().contains("msg_type"));
}

#[test]
fn message_defaults_are_applied() {
    let ev = decode(r#"{"event":"message","target_type":"single","target_id":10010648,"from_id":"u1","msg_type":"text","msg_body":{ "text" : "hi there" , "extras":{}}}"#).unwrap();
    let Event::Message(m) = &ev[0] else { panic!() };
    assert_eq!(m.msgid, 0);
    assert_eq!(m.msg_ctime, NOW);
    assert_eq!(m.create_time, NOW / 1000);
    assert_eq!(m.target_id, "10010648");
    assert_eq!(m.from_type, FromType::User);
    assert_eq!(m.from_name, "u1");
    assert_eq!(m.from_platform, "api");
    assert_eq!(m.target_name, "");
    assert_eq!(m.from_appkey, "APPKEY");
    assert_eq!(m.target_appkey, "APPKEY");
    assert_eq!((m.version, m.msg_level, m.set_from_name), (1, 0, 0));
    assert_eq!(m.msg_body, r#"{"text":"hi there","extras":{}}"#);
}

#[test]
fn array_and_ndjson_and_lifecycle_events() {
    let ev = decode(r#"[{"event":"user_registered","username":"alice","time":1},{"event":"group_created","gid":5}]"#).unwrap();
    assert_eq!(
        ev[0],
        Event::UserRegistered {
            username: "alice".into(),
            time: 1
        }
    );
    assert_eq!(
        ev[1],
        Event::GroupCreated {
            gid: "5".into(),
            time: NOW
        }
    );
    let ev = decode("{\"event\":\"user_login\",\"username\":\"a\"}\n\n{\"event\":\"user_deleted\",\"username\":\"a\",\"time\":5}\n").unwrap();
    assert_eq!(ev.len(), 2);
}

#[test]
fn errors_name_the_place_and_field() {
    let cases = [
        ("{\"event\":\"message\"}", "line 1: field \"target_type\""),
        ("\n{\"event\":\"user_login\"}", "line 2: field \"username\""),
        (
            "[{\"event\":\"group_created\",\"gid\":\"g\"},{\"event\":\"bogus\"}]",
            "index 1: field \"event\"",
        ),
        (
            "{\"event\":\"message\",\"target_type\":\"single\",\"target_id\":\"a\",\"from_id\":\"b\",\"msg_type\":\"text\",\"msg_body\":\"hi\"}",
            "field \"msg_body\"",
        ),
        (
            "{\"event\":\"user_login\",\"username\":\"a\",\"time\":99999999999999}",
            "future",
        ),
        (
            "{\"event\":\"user_login\",\"username\":\"a\",\"time\":1.5}",
            "field \"time\"",
        ),
        (
            "{\"event\":\"user_login\",\"username\":{}}",
            "field \"username\"",
        ),
        ("{not json", "line 1: not a valid JSON"),
        ("{\"event\":\"message\",\"msgid\":-3}", "field \"msgid\""),
    ];
    for (body, want) in cases {
        let err = decode(body).unwrap_err().to_string();
        assert!(err.contains(want), "{body}: {err}");
    }
    let long = format!(
        "{{\"event\":\"user_login\",\"username\":\"{}\"}}",
        "x".repeat(129)
    );
    assert!(decode(&long).unwrap_err().to_string().contains("128"));
}

#[test]
fn limits_give_too_large() {
    let limits = IngestLimits {
        max_events: 2,
        ..IngestLimits::default()
    };
    let body = "{\"event\":\"user_login\",\"username\":\"a\"}\n".repeat(3);
    assert!(matches!(
        decode_batch(body.as_bytes(), "K", NOW, &limits),
        Err(Error::TooLarge(_))
    ));
    let limits = IngestLimits {
        max_body_bytes: 10,
        ..IngestLimits::default()
    };
    assert!(matches!(
        decode_batch(body.as_bytes(), "K", NOW, &limits),
        Err(Error::TooLarge(_))
    ));
}

fn message_with(extra: &str) -> String {
    format!(
        r#"{{"event":"message","target_type":"single","target_id":"u2","from_id":"u1","msg_type":"text","msg_body":{{}}{extra}}}"#
    )
}

#[test]
fn events_are_objects_and_msgids_canonical() {
    let by_position = format!("[[{}]]", vec!["\"message\""; 21].join(","));
    let err = decode(&by_position).unwrap_err().to_string();
    assert!(
        err.contains("index 0: an event must be a JSON object"),
        "{err}"
    );
    for bad in [
        r#""+5""#, r#""007""#, r#""0""#, r#"" 5""#, r#""5 ""#, "1.0", "1e3",
    ] {
        let err = decode(&message_with(&format!(r#","msgid":{bad}"#)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("field \"msgid\""), "{bad}: {err}");
    }
    for (good, n) in [
        (r#""5""#, 5),
        ("5", 5),
        (r#""9223372036854775807""#, MAX_MSGID),
    ] {
        let ev = decode(&message_with(&format!(r#","msgid":{good}"#))).unwrap();
        let Event::Message(m) = &ev[0] else { panic!() };
        assert_eq!(m.msgid, n);
    }
}

#[test]
fn only_json_whitespace_is_trimmed() {
    let line = message_with("");
    assert_eq!(decode(&format!(" \t{line}\r\n\n")).unwrap().len(), 1);
    for ws in ["\u{a0}", "\u{2003}", "\u{feff}"] {
        let err = decode(&format!("{ws}{line}")).unwrap_err().to_string();
        assert!(err.starts_with("line 1"), "{ws:?}: {err}");
        assert!(
            decode(&format!("[{line}]{ws}")).is_err(),
            "{ws:?} after an array"
        );
    }
}

#[test]
fn bodies_must_be_unicode_and_shallow() {
    let body = |b: &str| {
        decode(&message_with("").replace("\"msg_body\":{}", &format!("\"msg_body\":{b}")))
    };
    for bad in [
        r#"{"t":"\ud800"}"#,
        r#"{"t":"\ude00\ud83d"}"#,
        r#"{"t":"a\ud83dx"}"#,
        r#"{"t":"\ud83d\u0041"}"#,
        r#"{"\udfff":1}"#,
    ] {
        let err = body(bad).unwrap_err().to_string();
        assert!(
            err.contains("field \"msg_body\"") && err.contains("surrogate"),
            "{bad}: {err}"
        );
    }
    let Event::Message(m) = &body(r#"{ "t" : "\ud83d\ude00 \\ud800 \u00e9" }"#).unwrap()[0] else {
        panic!()
    };
    assert_eq!(
        m.msg_body, r#"{"t":"\ud83d\ude00 \\ud800 \u00e9"}"#,
        "pairs and escaped backslashes pass"
    );
    let nested = |depth: usize| {
        let inner = "[".repeat(depth - 1) + &"]".repeat(depth - 1);
        format!(r#"{{"a":{inner}}}"#)
    };
    assert!(body(&nested(MAX_BODY_DEPTH)).is_ok());
    let err = body(&nested(MAX_BODY_DEPTH + 1)).unwrap_err().to_string();
    assert!(err.contains("64 levels"), "{err}");
    assert!(
        body(&format!("{{\"a\":\"{}\"}}", "[".repeat(100))).is_ok(),
        "brackets in strings"
    );
}

#[test]
fn a_long_array_stops_at_its_first_bad_element_or_its_limit() {
    let ones = format!("[{}1]", "1,".repeat(1_000_000));
    let err = decode(&ones).unwrap_err().to_string();
    assert!(err.starts_with("index 0"), "{err}");
    let limits = IngestLimits {
        max_events: 3,
        ..IngestLimits::default()
    };
    let line = message_with("");
    let four = format!("[{line},{line},{line},{line}]");
    assert!(matches!(
        decode_batch(four.as_bytes(), "K", NOW, &limits),
        Err(Error::TooLarge(_))
    ));
    let three = format!("[{line},{line},{line}]");
    assert_eq!(
        decode_batch(three.as_bytes(), "K", NOW, &limits)
            .unwrap()
            .len(),
        3
    );
    assert!(
        decode(&format!("[{line}] x")).is_err(),
        "trailing text after the array"
    );
    assert!(decode(&format!("[{line}")).is_err(), "an unclosed array");
}

#[test]
fn assigned_msgids_never_pass_the_largest() {
    let msg = |msgid| {
        let Event::Message(mut m) = decode(&message_with("")).unwrap().remove(0) else {
            panic!()
        };
        m.msgid = msgid;
        m
    };
    let (own, none) = (msg(MAX_MSGID), msg(0));
    assert!(check_msgids_assignable(1, [&none, &none]).is_ok());
    assert!(check_msgids_assignable(MAX_MSGID, [&none]).is_ok());
    assert!(check_msgids_assignable(MAX_MSGID, [&none, &none]).is_err());
    assert!(
        check_msgids_assignable(5, [&own]).is_ok(),
        "a client's own msgid is fine"
    );
    let err = check_msgids_assignable(5, [&own, &none]).unwrap_err();
    assert!(err.to_string().contains("2^63-1"), "{err}");
    assert!(check_msgids_assignable(MAX_MSGID + 1, [&own]).is_ok());
}

proptest::proptest! {
    /// Any JSON pretty-printed (strings with spaces, quotes, escapes and multi-byte
    /// characters) minifies to its compact form.
    #[test]
    fn minify_turns_pretty_json_compact(
        pairs in proptest::collection::vec((".{0,8}", ".{0,12}", proptest::num::i64::ANY), 0..6),
    ) {
        let value: serde_json::Value = pairs
            .iter()
            .map(|(k, v, n)| (k.clone(), serde_json::json!([v, n, {"s": v}])))
            .collect::<serde_json::Map<_, _>>()
            .into();
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        let compact = serde_json::to_string(&value).unwrap();
        proptest::prop_assert_eq!(compact_body(&pretty).unwrap(), compact.clone());
        proptest::prop_assert_eq!(compact_body(&compact).unwrap(), compact);
    }
}

#[test]
fn minify_keeps_strings() {
    assert_eq!(
        compact_body("{ \"a b\" : [1, 2],\n\"c\":\"x \\\" y\" }").unwrap(),
        "{\"a b\":[1,2],\"c\":\"x \\\" y\"}"
    );
}

#[test]
fn message_objects_without_event_are_messages_where_the_form_allows() {
    let object = r#"{"msgid":7,"msg_ctime":1699999999000,"target_type":"single","target_id":"b","from_id":"a","msg_type":"text","msg_body":{"text":"hi"}}"#;
    let err = decode(object).unwrap_err().to_string();
    assert!(err.contains("field \"event\" is required"), "{err}");
    let limits = IngestLimits::default();
    let lines = format!("{object}\n{{\"event\":\"user_login\",\"username\":\"a\"}}\n");
    let ev = decode_lines_from(
        lines.as_bytes(),
        "K",
        NOW,
        &limits,
        Form::EventsOrMessages,
        41,
    )
    .unwrap();
    assert!(matches!(&ev[0], Event::Message(m) if m.msgid == 7));
    assert!(matches!(&ev[1], Event::UserLogin { .. }));
    let bad = format!("{object}\n{{\"msgid\":8}}\n");
    let err = decode_lines_from(
        bad.as_bytes(),
        "K",
        NOW,
        &limits,
        Form::EventsOrMessages,
        41,
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("line 42: field \"target_type\""), "{err}");
    // JMessage's message routing body.
    let routed = format!(r#"{{"total":1,"messages":[{object}]}}"#);
    let ev = decode_routed(routed.as_bytes(), "K", NOW, &limits).unwrap();
    assert_eq!(ev.len(), 1);
    assert!(decode_routed(b"{\"total\":1}", "K", NOW, &limits).is_err());
    assert!(decode_routed(b"[1]", "K", NOW, &limits).is_err());
}

#[test]
fn events_written_as_ingest_lines_decode_to_themselves() {
    let body = r#"{"event":"message","msgid":9,"msg_ctime":1699999999000,"create_time":5,"target_type":"group","target_id":"g\"1","target_name":"n","from_type":"admin","from_id":"a","from_name":"A","from_platform":"web","msg_type":"image","msg_body":{"media_id":"x","w":[1,2.5e3]},"version":3,"msg_level":1,"set_from_name":1}
{"event":"message","target_type":"single","target_id":"b","from_id":"a","msg_type":"text","msg_body":{}}
{"event":"user_registered","username":"z\u00e9","time":5}
{"event":"user_deleted","username":"z","time":6}
{"event":"user_login","username":"z","time":7}
{"event":"group_created","gid":"g","time":8}
{"event":"group_deleted","gid":"g","time":9}"#;
    let events = decode(body).unwrap();
    let mut lines = Vec::new();
    for e in &events {
        e.write_ingest_json("APPKEY", &mut lines);
        lines.push(b'\n');
    }
    let again = decode(std::str::from_utf8(&lines).unwrap()).unwrap();
    assert_eq!(again, events);
    let Event::Message(m) = &again[1] else {
        panic!()
    };
    assert_eq!(m.msgid, 0, "a message without msgid stays without one");
}
