//! `imreport export`: walks a Report V2 history window through a server (imreport, or JMessage
//! itself) and writes every message as one NDJSON line: an archive export, and the benchmark's
//! full-walk client (messages are copied through as sent, and the next page is fetched while
//! this one is parsed).

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::io::Write;
use std::time::Instant;

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Server, e.g. http://127.0.0.1:8080
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub app_key: String,
    #[arg(long)]
    pub master_secret: String,
    /// `app` (every message), `user:ID`, `group:GID` or `chatroom:ID`
    #[arg(long, default_value = "app")]
    pub scope: String,
    /// First second of the window, `yyyy-MM-dd HH:mm:ss` in the server's report zone
    #[arg(long)]
    pub begin: String,
    /// Last second of the window (at most 7 days after --begin)
    #[arg(long)]
    pub end: String,
    /// Messages per page (1..=1000)
    #[arg(long, default_value_t = 1000)]
    pub count: u16,
    /// Output file; `-` is stdout
    #[arg(long, default_value = "-")]
    pub out: String,
}

/// A Report V2 history page, its messages left as they were sent (for `mirror` too).
#[derive(Deserialize)]
pub(crate) struct PageBody<'a> {
    pub total: u64,
    #[serde(borrow)]
    pub cursor: Option<&'a str>,
    #[serde(borrow)]
    pub messages: Vec<&'a RawValue>,
}

fn scope_path(scope: &str) -> Result<String> {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    Ok(match scope.split_once(':') {
        None if scope == "app" => "/v2/messages".into(),
        Some(("user", id)) => format!("/v2/users/{}/messages", enc(id)),
        Some(("group", id)) => format!("/v2/groups/{}/messages", enc(id)),
        Some(("chatroom", id)) => format!("/v2/chatrooms/{}/messages", enc(id)),
        _ => bail!("--scope must be app, user:ID, group:GID or chatroom:ID"),
    })
}

/// The cursor of a page, read from the fields before `messages` without parsing the messages:
/// `Some(Some(c))` a next page, `Some(None)` the last page, `None` not known until the whole
/// page is parsed (no `cursor` field before `messages`; imreport sends it before them).
fn cursor_ahead(body: &[u8]) -> Option<Option<String>> {
    let ws = |i: &mut usize| {
        while body.get(*i).is_some_and(u8::is_ascii_whitespace) {
            *i += 1;
        }
    };
    let mut i = 0;
    ws(&mut i);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        ws(&mut i);
        // A key without escapes, then its value as raw JSON.
        let key_len = body.get(i + 1..)?.iter().position(|b| *b == b'"')?;
        if body[i] != b'"' || body[i + 1..i + 1 + key_len].contains(&b'\\') {
            return None;
        }
        let key = &body[i + 1..i + 1 + key_len];
        i += key_len + 2;
        ws(&mut i);
        if body.get(i) != Some(&b':') || key == b"messages" {
            return None;
        }
        i += 1;
        let mut values = serde_json::Deserializer::from_slice(&body[i..]).into_iter::<&RawValue>();
        let value = values.next()?.ok()?;
        if key == b"cursor" {
            return serde_json::from_str::<Option<String>>(value.get()).ok();
        }
        i += values.byte_offset();
        ws(&mut i);
        if body.get(i) != Some(&b',') {
            return None;
        }
        i += 1;
    }
}

/// What parsing and writing one page found.
struct Parsed {
    total: u64,
    count: u64,
    cursor: Option<String>,
}

fn write_page(body: &[u8], out: &mut dyn Write) -> Result<Parsed> {
    let page: PageBody = serde_json::from_slice(body).context("not a history page")?;
    for m in &page.messages {
        out.write_all(m.get().as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(Parsed {
        total: page.total,
        count: page.messages.len() as u64,
        cursor: page.cursor.map(str::to_owned),
    })
}

type Out = Box<dyn Write + Send>;

pub async fn run(a: ExportArgs) -> Result<()> {
    let path = scope_path(&a.scope)?;
    let base = a.url.trim_end_matches('/');
    let client = reqwest::Client::new();
    // The writer moves to each page's parsing task and back.
    let mut out: Option<Out> = Some(if a.out == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout()))
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&a.out).with_context(|| format!("cannot create {}", a.out))?,
        ))
    });
    let q = |k: &str, v: &str| {
        format!(
            "{k}={}",
            form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
        )
    };
    let mut url = format!(
        "{base}{path}?count={}&{}&{}",
        a.count,
        q("begin_time", &a.begin),
        q("end_time", &a.end)
    );
    let next = |cursor: &str| format!("{base}{path}?{}", q("cursor", cursor));
    let started = Instant::now();
    let (mut n, mut pages, mut total) = (0u64, 0u64, None);
    // Pages are parsed and written on a blocking thread, one after another. A page whose cursor
    // comes before its messages is parsed while the next one is fetched (the server computes
    // a page on one core while this parses the last on the other); the full parse then checks
    // that cursor.
    let mut parsing: Option<tokio::task::JoinHandle<Result<(Out, Parsed)>>> = None;
    // The cursor a page in flight was read ahead for.
    let mut expected: Option<String> = None;
    let mut finish = |parsed: Parsed, expected: Option<Option<String>>| -> Result<Option<String>> {
        if let Some(c) = expected {
            anyhow::ensure!(
                c == parsed.cursor,
                "the page's cursor changed between reads"
            );
        }
        total.get_or_insert(parsed.total);
        n += parsed.count;
        pages += 1;
        Ok(parsed.cursor)
    };
    loop {
        let resp = client
            .get(&url)
            .basic_auth(&a.app_key, Some(&a.master_secret))
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if let Some(task) = parsing.take() {
            let (o, parsed) = task.await??;
            out = Some(o);
            finish(parsed, expected.take().map(Some))?;
        }
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        let ahead = cursor_ahead(&body);
        let mut o = out.take().context("the writer went missing")?;
        let task = tokio::task::spawn_blocking(move || {
            let parsed = write_page(&body, &mut o)?;
            Ok((o, parsed))
        });
        match ahead {
            Some(Some(c)) => {
                url = next(&c);
                expected = Some(c);
                parsing = Some(task);
            }
            _ => {
                let (o, parsed) = task.await??;
                out = Some(o);
                match finish(parsed, ahead)? {
                    Some(c) => url = next(&c),
                    None => break,
                }
            }
        }
    }
    out.context("the writer went missing")?.flush()?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{}",
        serde_json::json!({
            "messages": n, "total": total.unwrap_or(0), "pages": pages, "seconds": secs,
            "messages_per_sec": n as f64 / secs.max(1e-9),
        })
    );
    if Some(n) != total {
        bail!(
            "the walk yielded {n} messages but total said {}",
            total.unwrap_or(0)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cursor_ahead;

    #[test]
    fn the_cursor_is_read_from_the_fields_before_the_messages() {
        let some = |c: &str| Some(Some(c.to_owned()));
        // imreport's order, with and without spaces; an escaped cursor is unescaped.
        assert_eq!(
            cursor_ahead(br#"{"total":3,"cursor":"abc","count":1,"messages":[{}]}"#),
            some("abc")
        );
        assert_eq!(
            cursor_ahead(b" {\n \"total\" : 3 ,\t\"cursor\" : \"a\\/b\" , \"messages\":[]}"),
            some("a/b")
        );
        // The last page: no next page, known before the messages.
        assert_eq!(
            cursor_ahead(br#"{"total":3,"cursor":null,"messages":[]}"#),
            Some(None)
        );
        // Not known before the messages: the whole page decides.
        assert_eq!(
            cursor_ahead(br#"{"total":3,"count":1,"messages":[{"cursor":"x"}],"cursor":"abc"}"#),
            None
        );
        assert_eq!(cursor_ahead(br#"{"total":3,"messages":[]}"#), None);
        // Not a page: nothing is guessed.
        for bad in [
            &b""[..],
            b"[]",
            b"{",
            b"{\"total\"",
            b"{\"total\":}",
            b"{\"total\":3 \"cursor\":\"a\"}",
            b"{\"cursor\":7}",
            b"{\"cu\\rsor\":\"a\"}",
        ] {
            assert_eq!(cursor_ahead(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
