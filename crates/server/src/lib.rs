//! imreport's HTTP layer: the JMessage Report V2 read API, the ingest API, health checks and the
//! admin API, over any [`Store`].

pub mod admin;
pub mod auth;
pub mod error;
pub mod history;
pub mod ingest;
pub mod rate;
pub mod stats;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Request as HttpRequest, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use error::ApiError;
use imreport_domain::Clock;
use imreport_domain::cursor::CursorKey;
use imreport_domain::event::IngestLimits;
use imreport_domain::time::ReportTz;
use imreport_store::Store;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub tz: ReportTz,
    pub cursor_key: CursorKey,
    pub cursor_ttl_ms: i64,
    pub limits: IngestLimits,
    pub clock: Clock,
    /// Per-app request quota, when configured.
    pub rate_limit: Option<Arc<rate::RateLimiter>>,
    /// Ingest requests being read and decoded at once; more get 503.
    pub ingest_slots: Arc<tokio::sync::Semaphore>,
    /// A client must send an ingest body within this time.
    pub body_read_timeout: Duration,
}

impl AppState {
    /// State with the default protections (no rate limit, 8 ingest slots, 30 s body timeout).
    pub fn new(
        store: Arc<dyn Store>,
        tz: ReportTz,
        cursor_key: CursorKey,
        cursor_ttl_ms: i64,
        limits: IngestLimits,
        clock: Clock,
    ) -> Self {
        AppState {
            store,
            tz,
            cursor_key,
            cursor_ttl_ms,
            limits,
            clock,
            rate_limit: None,
            ingest_slots: Arc::new(tokio::sync::Semaphore::new(8)),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// A `200` JSON response with the contract's content type.
pub fn json_body(body: Vec<u8>) -> Response {
    json_parts(vec![body.into()])
}

/// A JSON response sent as its parts, in order: a page's messages go out as the store wrote
/// them instead of being copied behind their envelope (a page is ~430 KB).
pub fn json_parts(parts: Vec<bytes::Bytes>) -> Response {
    let mut r = Response::new(Body::new(Parts(parts.into())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// A body of a few buffers with an exact length, so it is sent with `Content-Length`.
struct Parts(std::collections::VecDeque<bytes::Bytes>);

impl hyper::body::Body for Parts {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|b| Ok(hyper::body::Frame::data(b))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
    }
}

async fn healthz() -> Response {
    json_body(br#"{"status":"ok"}"#.to_vec())
}

async fn readyz(State(st): State<AppState>) -> Response {
    match st.store.check_ready().await {
        Ok(()) => json_body(br#"{"status":"ready"}"#.to_vec()),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            error::CODE_BUSY,
            format!("store not ready: {e}"),
        )
        .into_response(),
    }
}

/// The public API's routes.
pub fn router(state: AppState) -> Router {
    let apps = Router::new()
        .route("/v2/messages", get(history::app_messages))
        .route("/v2/users/{username}/messages", get(history::user_messages))
        .route("/v2/groups/{gid}/messages", get(history::group_messages))
        .route(
            "/v2/chatrooms/{chatroomid}/messages",
            get(history::chatroom_messages),
        )
        .route("/v2/statistic/users", get(stats::users))
        .route("/v2/statistic/groups", get(stats::groups))
        .route("/v2/statistic/messages", get(stats::messages))
        .route("/ingest/v1/events", post(ingest::ingest))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_app,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(apps)
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Collapses doubled slashes (`/v2//statistic/users`, as the PHP SDK sends) and drops a trailing
/// slash, before routing.
fn normalize_path(mut req: Request) -> Request {
    let path = req.uri().path();
    if !(path.contains("//") || (path.len() > 1 && path.ends_with('/'))) {
        return req;
    }
    let mut clean = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        clean.push('/');
        clean.push_str(seg);
    }
    if clean.is_empty() {
        clean.push('/');
    }
    if let Some(q) = req.uri().query() {
        clean.push('?');
        clean.push_str(q);
    }
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = clean.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// Connection-level protection against slow and oversized requests.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// A client must send its request headers within this time, or the connection is closed.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers); larger gets 431 and a closed connection.
    pub max_header_bytes: usize,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits (up
/// to the grace period) for requests in flight. Built on hyper directly rather than
/// `axum::serve` for the header timeout and size limits.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router_with(listener, router, shutdown, ConnLimits::default()).await
}

pub async fn serve_router_with(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ConnLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let svc = router
        .map_request(|req: HttpRequest<hyper::body::Incoming>| normalize_path(req.map(Body::new)));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = hyper_util::service::TowerToHyperService::new(svc.clone());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the shutdown grace period; closing them");
    }
    Ok(())
}

/// Starts the public API on an already-bound listener (port 0 in tests) and returns its task.
pub fn launch_with_tcp_listener(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(serve_router(listener, router(state), shutdown))
}
