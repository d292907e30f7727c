//! The admin API: app administration ([`imreport_store::apps`], which the `imreport app`
//! commands also use offline) over HTTP, on a separate loopback listener guarded by a bearer
//! token, so apps can be added, listed, rotated and removed while the server runs.

use crate::error::{ApiError, CODE_INVALID};
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use imreport_domain::app::admin_proof;
use imreport_store::Store;
use imreport_store::apps::{create_app, list_apps, rotate_secret};
use serde::Deserialize;
use std::sync::Arc;
use subtle::ConstantTimeEq;

#[derive(Clone)]
struct AdminState {
    store: Arc<dyn Store>,
    token: Arc<str>,
    intake: Option<StatusFn>,
    report_tz: Arc<str>,
}

/// What `GET /admin/v1/intake` shows: the stream intake's status, as JSON.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

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
/// `DELETE /admin/v1/apps/{key}`, `GET /admin/v1/intake`, all behind the bearer token; and
/// `GET /admin/v1/proof`.
pub fn router(
    store: Arc<dyn Store>,
    token: String,
    intake: Option<StatusFn>,
    report_tz: &str,
) -> Router {
    let st = AdminState {
        store,
        token: token.into(),
        intake,
        report_tz: report_tz.into(),
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
        .route(
            "/admin/v1/intake",
            get(|State(st): State<AdminState>| async move {
                match &st.intake {
                    Some(status) => Ok(Json(status())),
                    None => Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        CODE_INVALID,
                        "no stream intake is configured (see the nats_url setting)",
                    )),
                }
            }),
        )
        .route("/admin/v1/backup", get(backup))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(st.clone(), require_token));
    Router::new()
        .route("/admin/v1/proof", get(proof))
        .merge(guarded)
        .with_state(st)
}

/// Hands what the archive writer writes to the response body, in chunks (from the writer's
/// blocking thread).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))
    }
}

/// `GET /admin/v1/backup`: the archive of everything stored as of now (see
/// [`imreport_store::archive`]), streamed as it is written. A failure midway cuts the body
/// short, so the archive lacks its end line and no restore accepts it.
async fn backup(State(st): State<AdminState>) -> Response {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    let writer = ChannelWriter {
        tx: tx.clone(),
        buf: Vec::with_capacity(CHUNK),
    };
    tokio::spawn(async move {
        let now = imreport_domain::time::now_ms();
        match imreport_store::archive::backup(st.store, &st.report_tz, now, writer, |_| {}).await {
            Ok(t) => tracing::info!(apps = t.apps, events = t.events, "backup written"),
            Err(e) => {
                tracing::error!(error = %e, "backup failed");
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            }
        }
    });
    let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (
        [
            (header::CONTENT_TYPE, "application/gzip"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
