//! HTTP Basic authentication: `Authorization: Basic base64(appKey:masterSecret)`.

use crate::AppState;
use crate::error::{ApiError, CODE_BAD_AUTH, CODE_BUSY, CODE_NO_AUTH};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use imreport_domain::app::{App, SecretHash};
use imreport_store::Store;

fn no_auth(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        CODE_NO_AUTH,
        format!("{why}: send Authorization: Basic base64(appKey:masterSecret)"),
    )
}

/// The app the request is authenticated as. Unknown keys and wrong secrets get one answer, and
/// take the same time (a decoy hash is checked for unknown keys).
pub async fn authenticate(store: &dyn Store, headers: &HeaderMap) -> Result<App, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| no_auth("missing Authorization header"))?;
    let value = value
        .to_str()
        .map_err(|_| no_auth("unparsable Authorization header"))?;
    let (scheme, encoded) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| no_auth("unparsable Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(no_auth("the Authorization scheme must be Basic"));
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .map_err(|_| no_auth("the Authorization credentials are not valid base64"))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| no_auth("the Authorization credentials are not UTF-8"))?;
    let (key, secret) = decoded
        .split_once(':')
        .ok_or_else(|| no_auth("the Authorization credentials must be appKey:masterSecret"))?;
    let app = store.app(key).await?;
    let ok = match &app {
        Some(a) => a.secret.verify(secret),
        None => {
            SecretHash::decoy().verify(secret);
            false
        }
    };
    match app {
        Some(a) if ok => Ok(a),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            CODE_BAD_AUTH,
            "unknown app key or wrong master secret",
        )),
    }
}

/// Middleware for every app endpoint: authenticates, applies the app's rate limit, and hands the
/// app to the handler as a request extension.
pub async fn require_app(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let app = match authenticate(st.store.as_ref(), req.headers()).await {
        Ok(app) => app,
        Err(e) => return e.into_response(),
    };
    let decision = st.rate_limit.as_ref().map(|r| r.check(app.id));
    if let Some(d) = decision.filter(|d| !d.allowed) {
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            CODE_BUSY,
            format!(
                "rate limit of {} requests per window exceeded for this app; retry in {} s",
                d.limit, d.reset_secs
            ),
        )
        .into_response();
        rate_headers(resp.headers_mut(), &d);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(d.reset_secs.max(1)));
        return resp;
    }
    req.extensions_mut().insert(app);
    let mut resp = next.run(req).await;
    if let Some(d) = decision {
        rate_headers(resp.headers_mut(), &d);
    }
    resp
}

fn rate_headers(h: &mut HeaderMap, d: &crate::rate::Decision) {
    h.insert("x-rate-limit-limit", HeaderValue::from(d.limit));
    h.insert("x-rate-limit-remaining", HeaderValue::from(d.remaining));
    h.insert("x-rate-limit-reset", HeaderValue::from(d.reset_secs));
}
