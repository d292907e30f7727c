//! App administration. The same operations back the `imreport app …` commands (offline, on the
//! data dir) and the admin API (online, on a separate loopback listener guarded by a bearer
//! token), so apps can be added, listed, rotated and removed while the server runs.

use crate::error::ApiError;
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use imreport_domain::app::{
    AppInfo, SecretHash, admin_proof, generate_token, validate_app_key, validate_secret,
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

/// Largest admin request body: the JSON of an app's key, secret and name.
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// Checks the bearer token before anything of the request is looked at (path, body, method),
/// so that only the token's holder learns anything from the admin API.
async fn require_token(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(st.token.as_bytes())) {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            crate::error::CODE_BAD_AUTH,
            "admin API: send Authorization: Bearer <token from the data dir's admin.json>",
        )
        .into_response()
    }
}

/// Reads and parses an optional JSON body (empty means defaults), at most [`MAX_ADMIN_BODY`].
async fn body<T: for<'de> Deserialize<'de> + Default>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_ADMIN_BODY)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                crate::error::CODE_INVALID,
                format!("admin API: the body is over {MAX_ADMIN_BODY} bytes"),
            )
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

fn app_key(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(k)| k).map_err(|_| {
        ApiError::invalid("admin API: the app key in the path is not valid percent-encoded UTF-8")
    })
}

#[derive(Deserialize)]
struct Challenge {
    nonce: String,
}

/// Proves, without the token being sent, that this server holds it (see
/// [`imreport_domain::app::admin_proof`]).
async fn proof(
    State(st): State<AdminState>,
    q: Result<Query<Challenge>, QueryRejection>,
) -> Response {
    match q {
        Ok(Query(c)) if (16..=128).contains(&c.nonce.len()) => {
            Json(serde_json::json!({"proof": admin_proof(&st.token, &c.nonce)})).into_response()
        }
        _ => ApiError::invalid("admin API: send ?nonce= with 16 to 128 characters").into_response(),
    }
}

/// The admin API router: `GET/POST /admin/v1/apps`, `POST /admin/v1/apps/{key}/rotate-secret`,
/// `DELETE /admin/v1/apps/{key}`, all behind the bearer token; and `GET /admin/v1/proof`.
pub fn router(store: Arc<dyn Store>, token: String) -> Router {
    let st = AdminState {
        store,
        token: token.into(),
    };
    let guarded = Router::new()
        .route(
            "/admin/v1/apps",
            get(|State(st): State<AdminState>| async move {
                Ok::<_, ApiError>(Json(list_apps(st.store.as_ref()).await?))
            })
            .post(|State(st): State<AdminState>, b: Body| async move {
                let c = create_app(st.store.as_ref(), body(b).await?).await?;
                Ok::<_, ApiError>((StatusCode::CREATED, Json(c)))
            }),
        )
        .route(
            "/admin/v1/apps/{key}/rotate-secret",
            post(
                |State(st): State<AdminState>,
                 key: Result<Path<String>, PathRejection>,
                 b: Body| async move {
                    let key = app_key(key)?;
                    Ok::<_, ApiError>(Json(
                        rotate_secret(st.store.as_ref(), &key, body(b).await?).await?,
                    ))
                },
            ),
        )
        .route(
            "/admin/v1/apps/{key}",
            delete(
                |State(st): State<AdminState>, key: Result<Path<String>, PathRejection>| async move {
                    let key = app_key(key)?;
                    st.store.delete_app(&key).await?;
                    Ok::<_, ApiError>(Json(serde_json::json!({"deleted": key})))
                },
            ),
        )
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(st.clone(), require_token));
    Router::new()
        .route("/admin/v1/proof", get(proof))
        .merge(guarded)
        .with_state(st)
}
