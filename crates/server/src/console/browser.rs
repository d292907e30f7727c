//! The message browser: a history query (the whole app, a user, a group or a chatroom; a window
//! of up to 7 days; a page size) walked page by page with the API's own cursors. Message
//! content is only ever interpolated as text.

use super::{frame, notice, signed_in};
use crate::AppState;
use crate::history::{LoadedPage, load_page, query_pairs};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use imreport_domain::MAX_ID_BYTES;
use imreport_domain::scope::Scope;
use jiff::ToSpan;
use maud::{Markup, html};
use serde_json::Value;

/// Longest preview of a message in the table, in characters.
const PREVIEW_CHARS: usize = 80;

struct Query {
    scope: String,
    id: String,
    begin: String,
    end: String,
    count: String,
    cursor: Option<String>,
    /// Messages shown on the pages before this one.
    shown: u64,
}

impl Query {
    fn link(&self, cursor: &str, shown: u64) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        s.append_pair("scope", &self.scope)
            .append_pair("id", &self.id)
            .append_pair("begin", &self.begin)
            .append_pair("end", &self.end)
            .append_pair("count", &self.count)
            .append_pair("cursor", cursor)
            .append_pair("shown", &shown.to_string());
        format!("/console/messages?{}", s.finish())
    }

    fn first_page(&self) -> Vec<(String, String)> {
        vec![
            ("count".into(), self.count.clone()),
            ("begin_time".into(), self.begin.clone()),
            ("end_time".into(), self.end.clone()),
        ]
    }
}

fn scope_of(q: &Query) -> Result<Scope, String> {
    let id = q.id.trim().to_owned();
    if q.scope != "app" && (id.is_empty() || id.len() > MAX_ID_BYTES) {
        return Err(format!(
            "Give the {} id (1 to {MAX_ID_BYTES} bytes).",
            q.scope
        ));
    }
    Ok(match q.scope.as_str() {
        "user" => Scope::User(id),
        "group" => Scope::Group(id),
        "chatroom" => Scope::Chatroom(id),
        _ => Scope::App,
    })
}

fn form(q: &Query) -> Markup {
    let scopes = [
        ("app", "Whole app"),
        ("user", "User"),
        ("group", "Group"),
        ("chatroom", "Chatroom"),
    ];
    html! {
        form.query method="get" action="/console/messages" {
            label { "Scope "
                select name="scope" id="scope" {
                    @for (v, name) in scopes {
                        option value=(v) selected[q.scope == v] { (name) }
                    }
                }
            }
            label { "Id " input type="text" name="id" id="id" value=(q.id) placeholder="user, group or chatroom id"; }
            label { "From " input type="text" name="begin" id="begin" value=(q.begin) pattern="\\d{4}-\\d{2}-\\d{2} \\d{2}:\\d{2}:\\d{2}"; }
            label { "To " input type="text" name="end" id="end" value=(q.end) pattern="\\d{4}-\\d{2}-\\d{2} \\d{2}:\\d{2}:\\d{2}"; }
            label { "Per page " input type="number" name="count" id="count" value=(q.count) min="1" max="1000"; }
            button type="submit" id="show" { "Show" }
        }
    }
}

/// What a message's row shows of its body: the text of a text message, else its type.
fn preview(m: &Value) -> String {
    let body = &m["msg_body"];
    let text = match body.get("text").and_then(Value::as_str) {
        Some(t) => t.to_owned(),
        None => format!("[{}]", m["msg_type"].as_str().unwrap_or("message")),
    };
    let mut p: String = text.chars().take(PREVIEW_CHARS).collect();
    if text.chars().count() > PREVIEW_CHARS {
        p.push('…');
    }
    p
}

fn rows(st: &AppState, page: &LoadedPage) -> Markup {
    let mut json = Vec::with_capacity(page.json.len() + 2);
    json.push(b'[');
    json.extend_from_slice(&page.json);
    json.push(b']');
    let messages: Vec<Value> = serde_json::from_slice(&json).unwrap_or_default();
    let time = |ms: i64| {
        st.tz
            .civil(ms)
            .strftime("%Y-%m-%d %H:%M:%S%.3f")
            .to_string()
    };
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    html! {
        table #messages {
            thead { tr { th { "time" } th { "msgid" } th { "from" } th { "to" } th { "type" } th { "message" } } }
            tbody {
                @for m in &messages {
                    tr.message data-msgid=(s(&m["msgid"])) {
                        td.time { (time(m["msg_ctime"].as_i64().unwrap_or(0))) }
                        td.msgid { (s(&m["msgid"])) }
                        td {
                            (s(&m["from_id"]))
                            @if m["from_name"] != m["from_id"] && !s(&m["from_name"]).is_empty() {
                                " (" (s(&m["from_name"])) ")"
                            }
                        }
                        td { (s(&m["target_type"])) " " (s(&m["target_id"])) }
                        td { (s(&m["msg_type"])) }
                        td.preview {
                            details {
                                summary { (preview(m)) }
                                pre.body { (serde_json::to_string_pretty(m).unwrap_or_default()) }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub async fn show(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let app = match signed_in(&st, &headers).await {
        Ok(app) => app,
        Err(r) => return r,
    };
    let pairs = query_pairs(raw.as_deref());
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let now = st.tz.civil(st.clock.now_ms());
    let fmt = |dt: jiff::civil::DateTime| dt.strftime("%Y-%m-%d %H:%M:%S").to_string();
    let q = Query {
        scope: get("scope").unwrap_or_else(|| "app".into()),
        id: get("id").unwrap_or_default(),
        begin: get("begin").unwrap_or_else(|| fmt(now.checked_sub(1.day()).unwrap_or(now))),
        end: get("end").unwrap_or_else(|| fmt(now)),
        count: get("count").unwrap_or_else(|| "50".into()),
        cursor: get("cursor").filter(|c| !c.is_empty()),
        shown: get("shown").and_then(|s| s.parse().ok()).unwrap_or(0),
    };
    let asked = raw.as_deref().is_some_and(|r| !r.is_empty());
    let result = if !asked {
        None
    } else {
        Some(match scope_of(&q) {
            Err(m) => Err(m),
            Ok(scope) => match &q.cursor {
                None => load_page(&st, &app, &scope, &q.first_page())
                    .await
                    .map(|p| (p, 0, None))
                    .map_err(|e| e.message),
                Some(c) => match load_page(&st, &app, &scope, &[("cursor".into(), c.clone())]).await {
                    Ok(p) => Ok((p, q.shown, None)),
                    // An expired cursor: the walk starts again, and says so.
                    Err(e) if e.message.starts_with(imreport_domain::cursor::EXPIRED) => {
                        load_page(&st, &app, &scope, &q.first_page())
                            .await
                            .map(|p| {
                                (p, 0, Some(format!(
                                    "That page's cursor had expired (cursors last {} s); the walk started again from its first page.",
                                    st.cursor_ttl_ms / 1000
                                )))
                            })
                            .map_err(|e| e.message)
                    }
                    Err(e) => Err(e.message),
                },
            },
        })
    };
    let content = html! {
        h1 { "Messages" }
        (form(&q))
        p.hint { "Times are in the report time zone, " code { (st.tz.name()) } "; a window spans at most 7 days. Open a message to see all of it." }
        @match &result {
            None => {}
            Some(Err(m)) => (notice(m)),
            Some(Ok((page, shown, restarted))) => {
                @if let Some(r) = restarted { (notice(r)) }
                p #range {
                    @if page.count == 0 {
                        "No messages in this window."
                    } @else {
                        "Messages " span #first { (shown + 1) } "–" span #last { (shown + page.count as u64) } " of " span #total { (page.total) }
                    }
                }
                (rows(&st, page))
                @if let Some(c) = &page.cursor {
                    p { a #next href=(q.link(c, shown + page.count as u64)) { "Next page" } }
                }
            }
        }
    };
    super::page(
        StatusCode::OK,
        frame("Messages", Some(&app), "messages", content),
    )
}
