//! Report V2 message history: `/v2/messages`, `/v2/users/{u}/messages`,
//! `/v2/groups/{gid}/messages`, `/v2/chatrooms/{id}/messages`.

use crate::error::ApiError;
use crate::{AppState, detached, json_parts};
use axum::Extension;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use imreport_domain::MAX_ID_BYTES;
use imreport_domain::app::App;
use imreport_domain::cursor::{self, CursorState};
use imreport_domain::query::{HistoryRequest, parse_history};
use imreport_domain::scope::Scope;
use imreport_store::PageRequest;

/// Form-decodes a query string (`+` and `%20` are both spaces).
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn path_id(what: &str, p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = p.map_err(|_| {
        ApiError::invalid(format!(
            "the {what} in the path is not valid percent-encoded UTF-8"
        ))
    })?;
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(ApiError::invalid(format!(
            "the {what} in the path must be 1 to {MAX_ID_BYTES} bytes long"
        )));
    }
    Ok(id)
}

pub async fn app_messages(
    s: State<AppState>,
    app: Extension<App>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    serve(s, app, q, Ok(Scope::App)).await
}

pub async fn user_messages(
    s: State<AppState>,
    app: Extension<App>,
    p: Result<Path<String>, PathRejection>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    serve(s, app, q, path_id("username", p).map(Scope::User)).await
}

pub async fn group_messages(
    s: State<AppState>,
    app: Extension<App>,
    p: Result<Path<String>, PathRejection>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    serve(s, app, q, path_id("group id", p).map(Scope::Group)).await
}

pub async fn chatroom_messages(
    s: State<AppState>,
    app: Extension<App>,
    p: Result<Path<String>, PathRejection>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    serve(s, app, q, path_id("chatroom id", p).map(Scope::Chatroom)).await
}

async fn serve(
    State(st): State<AppState>,
    Extension(app): Extension<App>,
    RawQuery(raw): RawQuery,
    scope: Result<Scope, ApiError>,
) -> Result<Response, ApiError> {
    let page = load_page(&st, &app, &scope?, &query_pairs(raw.as_deref())).await?;
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(b"{\"total\":");
    body.extend_from_slice(page.total.to_string().as_bytes());
    if let Some(c) = &page.cursor {
        body.extend_from_slice(b",\"cursor\":\"");
        body.extend_from_slice(c.as_bytes());
        body.push(b'"');
    }
    body.extend_from_slice(b",\"count\":");
    body.extend_from_slice(page.count.to_string().as_bytes());
    body.extend_from_slice(b",\"messages\":[");
    Ok(json_parts(
        vec![
            body.into(),
            page.json.into(),
            bytes::Bytes::from_static(b"]}"),
        ],
        Some(page.held),
    ))
}

/// A history page as the API answers it, before it is written out.
pub(crate) struct LoadedPage {
    pub total: u64,
    pub count: usize,
    /// The next page's cursor, when more messages remain.
    pub cursor: Option<String>,
    /// The page's message objects, comma-separated (the inside of a JSON array).
    pub json: Vec<u8>,
    /// The page's part of the response budget, held until it is sent.
    pub held: crate::share::Grant,
}

/// Loads the page a history query (first page or cursor) asks for, within the app's fair share
/// of page building and page memory: for the API and the console alike.
pub(crate) async fn load_page(
    st: &AppState,
    app: &App,
    scope: &Scope,
    pairs: &[(String, String)],
) -> Result<LoadedPage, ApiError> {
    let now = st.clock.now_ms();
    let req = match parse_history(pairs, &st.tz)? {
        HistoryRequest::First { count, range } => PageRequest {
            range,
            count,
            after: None,
            snapshot: Default::default(),
            total: 0,
        },
        HistoryRequest::Next { cursor } => {
            let c = cursor::open(
                &st.cursor_key,
                app.into(),
                scope,
                &cursor,
                now,
                st.cursor_ttl_ms,
            )
            .inspect_err(|e| {
                if e.to_string().starts_with(cursor::EXPIRED) {
                    metrics::counter!("imreport_cursor_expired_total").increment(1);
                }
            })?;
            PageRequest {
                range: c.range,
                count: c.count,
                after: Some(c.after),
                snapshot: c.snapshot,
                total: c.total,
            }
        }
    };
    // Pages are built a few at a time, and then held (built, not yet sent) within a budget of
    // bytes; a built page keeps its build slot until it has its part of the budget. Both are
    // shared fairly between apps, so unread pages cannot grow memory.
    let busy = || crate::ingest::busy("history pages");
    let slot = st
        .page_slots
        .acquire(app.id, 1, st.share_wait)
        .await
        .ok_or_else(busy)?;
    let (page, slot) = {
        let (store, app, scope) = (st.store.clone(), app.clone(), scope.clone());
        let req = req.clone();
        detached(slot, async move { store.page(&app, &scope, req).await }).await?
    };
    let page = page?;
    let held = st
        .response_bytes
        .acquire(app.id, page.json.len() as u64 + 512, st.share_wait)
        .await
        .ok_or_else(busy)?;
    drop(slot);
    let cursor = page.next.map(|after| {
        let state = CursorState {
            range: req.range,
            count: req.count,
            after,
            total: page.total,
            snapshot: page.snapshot,
            issued_ms: now,
        };
        cursor::seal(&st.cursor_key, app.into(), scope, &state)
    });
    Ok(LoadedPage {
        total: page.total,
        count: page.count,
        cursor,
        json: page.json,
        held,
    })
}
