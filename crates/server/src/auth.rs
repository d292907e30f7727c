//! HTTP Basic authentication: `Authorization: Basic base64(appKey:masterSecret)`.

use crate::error::{ApiError, CODE_BAD_AUTH, CODE_NO_AUTH};
use axum::http::{HeaderMap, StatusCode, header};
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
