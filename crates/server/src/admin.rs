//! App administration. The same operations back the `imreport app …` commands (offline, on the
//! data dir) and the admin API (online, on a separate loopback listener guarded by a bearer
//! token), so apps can be added, listed, rotated and removed while the server runs.

use crate::error::ApiError;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use imreport_domain::app::{
    AppInfo, SecretHash, generate_token, validate_app_key, validate_secret,
};
use imreport_store::Store;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use subtle::ConstantTimeEq;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct CreateApp {
    pub app_key: Option<String>,
    pub master_secret: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RotateSecret {
    pub master_secret: Option<String>,
}

/// Credentials as shown once, at creation or rotation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    pub app_key: String,
    pub master_secret: String,
    pub name: String,
}

pub async fn create_app(store: &dyn Store, req: CreateApp) -> Result<Credentials, ApiError> {
    let app_key = req.app_key.unwrap_or_else(generate_token);
    validate_app_key(&app_key)?;
    let master_secret = req.master_secret.unwrap_or_else(generate_token);
    validate_secret(&master_secret)?;
    let name = req.name.unwrap_or_else(|| app_key.clone());
    if name.len() > 256 {
        return Err(ApiError::invalid("app name is over 256 bytes"));
    }
    store
        .create_app(&app_key, &name, SecretHash::new(&master_secret))
        .await?;
    Ok(Credentials {
        app_key,
        master_secret,
        name,
    })
}

pub async fn rotate_secret(
    store: &dyn Store,
    key: &str,
    req: RotateSecret,
) -> Result<Credentials, ApiError> {
    let master_secret = req.master_secret.unwrap_or_else(generate_token);
    validate_secret(&master_secret)?;
    let app = store
        .set_secret(key, SecretHash::new(&master_secret))
        .await?;
    Ok(Credentials {
        app_key: app.key,
        master_secret,
        name: app.name,
    })
}

pub async fn list_apps(store: &dyn Store) -> Result<Vec<AppInfo>, ApiError> {
    Ok(store.list_apps().await?.iter().map(AppInfo::from).collect())
}

#[derive(Clone)]
struct AdminState {
    store: Arc<dyn Store>,
    token: Arc<str>,
}

fn check(st: &AdminState, h: &HeaderMap) -> Result<(), ApiError> {
    let presented = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(st.token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            crate::error::CODE_BAD_AUTH,
            "admin API: send Authorization: Bearer <token from the data dir's admin.json>",
        ))
    }
}

/// Parses an optional JSON body (empty means defaults).
fn body<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// The admin API router: `GET/POST /admin/v1/apps`, `POST /admin/v1/apps/{key}/rotate-secret`,
/// `DELETE /admin/v1/apps/{key}`.
pub fn router(store: Arc<dyn Store>, token: String) -> Router {
    let st = AdminState {
        store,
        token: token.into(),
    };
    Router::new()
        .route(
            "/admin/v1/apps",
            get(|State(st): State<AdminState>, h: HeaderMap| async move {
                check(&st, &h)?;
                Ok::<_, ApiError>(Json(list_apps(st.store.as_ref()).await?))
            })
            .post(
                |State(st): State<AdminState>, h: HeaderMap, b: axum::body::Bytes| async move {
                    check(&st, &h)?;
                    let c = create_app(st.store.as_ref(), body(&b)?).await?;
                    Ok::<_, ApiError>((StatusCode::CREATED, Json(c)))
                },
            ),
        )
        .route(
            "/admin/v1/apps/{key}/rotate-secret",
            post(
                |State(st): State<AdminState>,
                 h: HeaderMap,
                 Path(key): Path<String>,
                 b: axum::body::Bytes| async move {
                    check(&st, &h)?;
                    Ok::<_, ApiError>(Json(
                        rotate_secret(st.store.as_ref(), &key, body(&b)?).await?,
                    ))
                },
            ),
        )
        .route(
            "/admin/v1/apps/{key}",
            delete(
                |State(st): State<AdminState>, h: HeaderMap, Path(key): Path<String>| async move {
                    check(&st, &h)?;
                    st.store.delete_app(&key).await?;
                    Ok::<_, ApiError>(Json(serde_json::json!({"deleted": key})))
                },
            ),
        )
        .fallback(|| async { ApiError::not_found().into_response() })
        .with_state(st)
}
