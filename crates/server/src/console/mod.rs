//! The console: HTML pages at `/console` on the public listener, for people rather than
//! programs. Sign-in with an app's key and master secret (a sealed, `HttpOnly`,
//! `SameSite=Strict` session cookie); an overview of the statistics drawn as SVG charts with
//! their tables; a message browser. Pages are rendered on the server (maud escapes everything
//! interpolated, so message content is always text) under a Content-Security-Policy that allows
//! no script at all: the console needs none.

mod browser;
mod charts;
mod overview;

use crate::AppState;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use imreport_domain::app::{App, SecretHash};
use imreport_domain::session::{Session, SessionError};
use maud::{DOCTYPE, Markup, html};

const COOKIE: &str = "imreport_console";
/// Largest sign-in form accepted.
const MAX_FORM_BYTES: usize = 4096;

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("console.css");

/// The console's routes, under `/console`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(home))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/overview", get(overview::show))
        .route("/console/messages", get(browser::show))
        .route(
            "/console/console.css",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                        (header::CACHE_CONTROL, "public, max-age=3600"),
                    ],
                    CSS,
                )
            }),
        )
        .layer(axum::middleware::from_fn(security_headers))
}

/// Every console answer: no framing, no sniffing, no referrer, no caching of pages, and the
/// strict policy.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// The page frame: title, navigation (when signed in) and content.
fn frame(title: &str, app: Option<&App>, current: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · imreport" }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                header {
                    span.brand { "imreport" }
                    @if let Some(app) = app {
                        nav {
                            a href="/console/overview" class=[(current == "overview").then_some("current")] { "Overview" }
                            a href="/console/messages" class=[(current == "messages").then_some("current")] { "Messages" }
                        }
                        span.app { "app " code { (app.key) } }
                        form method="post" action="/console/logout" {
                            button type="submit" id="sign-out" { "Sign out" }
                        }
                    }
                }
                main { (content) }
            }
        }
    }
}

fn page(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// The signed-in app, or where to send the browser instead.
pub(crate) async fn signed_in(st: &AppState, headers: &HeaderMap) -> Result<App, Response> {
    let to_login = |why: &str| Redirect::to(&format!("/console/login?why={why}")).into_response();
    let Some(value) = cookie(headers) else {
        return Err(to_login("signin"));
    };
    let session = match Session::open(&st.session_key, value, st.clock.now_ms()) {
        Ok(s) => s,
        Err(SessionError::Expired) => return Err(to_login("expired")),
        Err(SessionError::Invalid) => return Err(to_login("signin")),
    };
    match st.store.app(&session.app_key).await {
        Ok(Some(app)) if session.is_for(&app) => Ok(app),
        Ok(_) => Err(to_login("signin")),
        Err(e) => Err(crate::error::ApiError::from(e).into_response()),
    }
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// `Secure` is added when the request reached a TLS proxy first (it says so in
/// `X-Forwarded-Proto`); imreport itself serves plain HTTP.
fn set_cookie(headers: &HeaderMap, value: &str, max_age: i64) -> HeaderValue {
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let c = format!(
        "{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&c).expect("a cookie of base64url characters")
}

async fn home(State(st): State<AppState>, headers: HeaderMap) -> Response {
    match signed_in(&st, &headers).await {
        Ok(_) => Redirect::to("/console/overview").into_response(),
        Err(r) => r,
    }
}

fn login_form(message: Option<&str>, app_key: &str) -> Markup {
    html! {
        section.signin {
            h1 { "Sign in" }
            p { "With an app's key and master secret, as the Report V2 API takes them." }
            @if let Some(m) = message {
                p.notice id="notice" role="alert" { (m) }
            }
            form method="post" action="/console/login" {
                label { "App key" input type="text" name="app_key" id="app_key" value=(app_key) required autocomplete="username"; }
                label { "Master secret" input type="password" name="master_secret" id="master_secret" required autocomplete="current-password"; }
                button type="submit" id="sign-in" { "Sign in" }
            }
        }
    }
}

async fn login_page(State(st): State<AppState>, headers: HeaderMap, req: Request) -> Response {
    if signed_in(&st, &headers).await.is_ok() {
        return Redirect::to("/console/overview").into_response();
    }
    let why = crate::history::query_pairs(req.uri().query())
        .into_iter()
        .find(|(k, _)| k == "why")
        .map(|(_, v)| v);
    let message = match why.as_deref() {
        Some("expired") => Some("Your session expired. Sign in again."),
        Some("signedout") => Some("Signed out."),
        _ => None,
    };
    page(
        StatusCode::OK,
        frame("Sign in", None, "", login_form(message, "")),
    )
}

async fn login(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return page(
                StatusCode::PAYLOAD_TOO_LARGE,
                frame(
                    "Sign in",
                    None,
                    "",
                    login_form(Some("That form was too large."), ""),
                ),
            );
        }
    };
    let field = |name: &str| {
        form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (key, secret) = (field("app_key"), field("master_secret"));
    let app = match st.store.app(key.trim()).await {
        Ok(app) => app,
        Err(e) => return crate::error::ApiError::from(e).into_response(),
    };
    // The same answer, and the same work, for an unknown key and a wrong secret.
    let ok = match &app {
        Some(a) => a.secret.verify(&secret),
        None => {
            SecretHash::decoy().verify(&secret);
            false
        }
    };
    match app {
        Some(app) if ok => {
            let session = Session::begin(&app, st.clock.now_ms(), st.session_ttl_ms);
            let mut r = Redirect::to("/console/overview").into_response();
            *r.status_mut() = StatusCode::SEE_OTHER;
            r.headers_mut().insert(
                header::SET_COOKIE,
                set_cookie(
                    &headers,
                    &session.seal(&st.session_key),
                    st.session_ttl_ms / 1000,
                ),
            );
            r
        }
        _ => page(
            StatusCode::UNAUTHORIZED,
            frame(
                "Sign in",
                None,
                "",
                login_form(Some("Unknown app key or wrong master secret."), key.trim()),
            ),
        ),
    }
}

async fn logout(headers: HeaderMap) -> Response {
    let mut r = Redirect::to("/console/login?why=signedout").into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&headers, "", 0));
    r
}

/// An error shown inside a page (the API's message, which says what to change).
fn notice(message: &str) -> Markup {
    html! { p.notice id="notice" role="alert" { (message) } }
}
