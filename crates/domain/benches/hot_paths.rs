//! Micro-benchmarks of the hot paths: cursor seal and open, ingest decoding and validation, and
//! page assembly (stored records to wire JSON). `cargo bench -p imreport-domain`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imreport_domain::cursor::{Binding, CursorKey, CursorState, Position, open, seal};
use imreport_domain::event::{Event, IngestLimits, decode_batch};
use imreport_domain::message::{encode_record, view_record};
use imreport_domain::scope::Scope;
use imreport_domain::time::TimeRange;
use std::hint::black_box;

const NOW: i64 = 1_764_000_000_000;

fn batch(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let body = match i % 10 {
            0 => r#"{"media_id":"qiniu/image/j/0123456789ABCDEF","media_crc32":12345678,"width":640,"height":480,"format":"jpg","fsize":123456}"#.to_owned(),
            _ => format!(r#"{{"text":"hello there number {i}, see you at the office","extras":{{}}}}"#),
        };
        s.push_str(&format!(
            r#"{{"event":"message","msgid":{},"msg_ctime":{},"target_type":"{}","target_id":"u{}","from_id":"u{}","from_platform":"a","msg_type":"{}","msg_body":{body}}}"#,
            i + 1,
            NOW - 1000 + (i as i64 % 1000),
            if i % 3 == 0 { "group" } else { "single" },
            i % 977,
            i % 131,
            if i % 10 == 0 { "image" } else { "text" },
        ));
        s.push('\n');
    }
    s
}

fn benches(c: &mut Criterion) {
    let key = CursorKey::from_text("benchmark-cursor-key-0123456789").unwrap();
    let scope = Scope::User("868802000386631".into());
    let st = CursorState {
        range: TimeRange {
            begin: NOW - 86_400_000,
            end: NOW,
        },
        count: 1000,
        after: Position {
            ctime: NOW - 5_000,
            msgid: 13_242_735,
        },
        total: 3000,
        snapshot: imreport_domain::cursor::Snapshot::at(77),
        issued_ms: NOW,
    };
    let app = Binding {
        id: 1,
        key: "4f7aef34fb361292c566a1cd",
        created_ms: NOW,
    };
    let sealed = seal(&key, app, &scope, &st);
    c.bench_function("cursor_seal", |b| {
        b.iter(|| seal(&key, black_box(app), &scope, &st))
    });
    c.bench_function("cursor_open", |b| {
        b.iter(|| open(&key, app, &scope, black_box(&sealed), NOW, 120_000).unwrap())
    });

    let body = batch(5000);
    let limits = IngestLimits::default();
    let mut g = c.benchmark_group("ingest_decode");
    g.throughput(Throughput::Elements(5000));
    g.bench_function("ndjson_5000_messages", |b| {
        b.iter(|| decode_batch(black_box(body.as_bytes()), "APPKEY", NOW, &limits).unwrap())
    });
    g.finish();

    let events = decode_batch(body.as_bytes(), "APPKEY", NOW, &limits).unwrap();
    let records: Vec<(i64, u64, Vec<u8>)> = events
        .iter()
        .take(1000)
        .map(|e| {
            let Event::Message(m) = e else { unreachable!() };
            let mut rec = Vec::new();
            encode_record(m, "APPKEY", 1, &mut rec);
            (m.msg_ctime, m.msgid, rec)
        })
        .collect();
    let mut g = c.benchmark_group("page_assembly");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("records_to_json_1000", |b| {
        let mut out = Vec::with_capacity(400_000);
        b.iter(|| {
            out.clear();
            for (ctime, msgid, rec) in &records {
                out.push(b',');
                view_record(rec)
                    .unwrap()
                    .write_json(*msgid, *ctime, "APPKEY", &mut out);
            }
            black_box(out.len())
        })
    });
    g.bench_function("encode_records_1000", |b| {
        let mut rec = Vec::with_capacity(512);
        b.iter(|| {
            for e in events.iter().take(1000) {
                let Event::Message(m) = e else { unreachable!() };
                rec.clear();
                encode_record(m, "APPKEY", 1, &mut rec);
            }
            black_box(rec.len())
        })
    });
    g.finish();
}

criterion_group!(hot, benches);
criterion_main!(hot);
