//! `imreport export`: walks a Report V2 history window through a server (imreport, or JMessage
//! itself) and writes every message as one NDJSON line: an archive export, and the benchmark's
//! full-walk client (each page is parsed only enough to find its cursor; messages are copied
//! through as sent).

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

#[derive(Deserialize)]
struct PageBody<'a> {
    total: u64,
    #[serde(borrow)]
    cursor: Option<&'a str>,
    #[serde(borrow)]
    messages: Vec<&'a RawValue>,
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

pub async fn run(a: ExportArgs) -> Result<()> {
    let path = scope_path(&a.scope)?;
    let base = a.url.trim_end_matches('/');
    let client = reqwest::Client::new();
    let mut out: Box<dyn Write> = if a.out == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&a.out).with_context(|| format!("cannot create {}", a.out))?,
        ))
    };
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
    let started = Instant::now();
    let (mut n, mut pages, mut total) = (0u64, 0u64, None);
    loop {
        let resp = client
            .get(&url)
            .basic_auth(&a.app_key, Some(&a.master_secret))
            .send()
            .await
            .with_context(|| format!("cannot reach {base}"))?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        let page: PageBody = serde_json::from_slice(&body).context("not a history page")?;
        total.get_or_insert(page.total);
        for m in &page.messages {
            out.write_all(m.get().as_bytes())?;
            out.write_all(b"\n")?;
        }
        n += page.messages.len() as u64;
        pages += 1;
        match page.cursor {
            Some(c) => url = format!("{base}{path}?{}", q("cursor", c)),
            None => break,
        }
    }
    out.flush()?;
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
