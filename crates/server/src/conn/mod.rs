//! Connections: accepting them, serving HTTP/1 and HTTP/2 on them, and closing the ones that
//! only hold resources. Built on hyper directly rather than `axum::serve` for these limits:
//!
//! - a connection that has not begun a request within `header_read_timeout`, or sits idle
//!   between requests for `idle_timeout`, is closed (HTTP/2 pings and stray bytes do not count
//!   as a request);
//! - a response its client reads nothing of for `send_timeout` is dropped with its connection,
//!   and with it the memory it held;
//! - at most `max_connections` are open: at the cap the connection idle longest makes room for
//!   a new one, and if none is idle the new one gets a one-line 503 and is closed, so a flood
//!   of silent sockets neither exhausts descriptors nor locks out `/healthz`;
//! - request heads pass through [`framer`] first: raw spaces in a request target (as the
//!   official Java SDK sends them) are percent-encoded, and heads the HTTP/1 parser would
//!   refuse get the API's JSON error rather than an empty one.

mod framer;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceExt as _;

/// Connection-level protection against idle, slow and oversized clients.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// A new connection must begin a request, and a request's head must arrive, within this.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress is closed after this long.
    pub idle_timeout: Duration,
    /// A response whose client reads none of it for this long is dropped with its connection.
    pub send_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Largest request head (request line and headers); larger gets 431 and a closed connection.
    pub max_header_bytes: usize,
    /// Most header fields in a request head; more gets 431.
    pub max_headers: usize,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

/// The open connections of one listener.
pub struct Connections {
    limits: ConnLimits,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    refused: AtomicU64,
}

impl Connections {
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(Connections {
            limits,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().expect("lock").len()
    }

    /// Connections refused at the cap because none could make room.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn now(&self) -> u64 {
        // +1 so that 0 can mean "never".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Registers a new connection, making room at the cap by closing the one idle longest;
    /// `None` when every open connection has a request in progress.
    fn admit(&self) -> Option<(u64, Arc<Activity>)> {
        let mut open = self.open.lock().expect("lock");
        if open.len() >= self.limits.max_connections {
            let victim = open
                .iter()
                .filter(|(_, a)| a.busy.load(Ordering::Relaxed) == 0)
                .min_by_key(|(_, a)| a.idle_since.load(Ordering::Relaxed))
                .map(|(id, _)| *id)?;
            let a = open.remove(&victim).expect("found above");
            a.evicted.store(true, Ordering::Relaxed);
            a.close.notify_one();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let a = Arc::new(Activity {
            idle_since: AtomicU64::new(self.now()),
            busy: AtomicU32::new(0),
            started: AtomicU64::new(0),
            blocked_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            close: Notify::new(),
        });
        open.insert(id, a.clone());
        Some((id, a))
    }

    /// Resolves when the connection should be closed: idle or silent too long, a response
    /// unread too long, or evicted to make room.
    async fn watch(&self, a: &Activity) {
        let l = &self.limits;
        let ms = |d: Duration| d.as_millis() as u64;
        loop {
            if a.evicted.load(Ordering::Relaxed) {
                return;
            }
            let now = self.now();
            let blocked = a.blocked_since.load(Ordering::Relaxed);
            let head = a.head_since.load(Ordering::Relaxed);
            let close_at = if blocked != 0 {
                blocked + ms(l.send_timeout)
            } else if head != 0 {
                // A head must arrive whole within the header timeout, however it trickles.
                head + ms(l.header_read_timeout)
            } else if a.busy.load(Ordering::Relaxed) > 0 {
                // Handlers bound their own time; look again for a response that stops moving.
                now + ms(l.send_timeout) / 2 + 1
            } else if a.started.load(Ordering::Relaxed) == 0 {
                a.idle_since.load(Ordering::Relaxed) + ms(l.header_read_timeout)
            } else {
                a.idle_since.load(Ordering::Relaxed) + ms(l.idle_timeout)
            };
            if close_at <= now {
                return;
            }
            let wake = Duration::from_millis(close_at.saturating_sub(now).max(1));
            tokio::select! {
                _ = tokio::time::sleep(wake) => {}
                _ = a.close.notified() => return,
            }
        }
    }
}

/// What the watchdog reads of one connection. Times are [`Connections::now`] milliseconds.
struct Activity {
    /// When the connection last had no request in progress (accepted, or a response finished).
    idle_since: AtomicU64,
    /// Requests in progress: handler running, or response not yet fully sent.
    busy: AtomicU32,
    /// Requests begun on this connection.
    started: AtomicU64,
    /// When a write first found the socket full without progress since; 0 while writes flow.
    blocked_since: AtomicU64,
    /// When the request head now arriving began; 0 between heads.
    head_since: AtomicU64,
    evicted: AtomicBool,
    close: Notify,
}

/// One request in progress on a connection, until its response body is sent or dropped.
struct Busy {
    conns: Arc<Connections>,
    a: Arc<Activity>,
}

impl Busy {
    fn start(conns: &Arc<Connections>, a: &Arc<Activity>) -> Self {
        a.started.fetch_add(1, Ordering::Relaxed);
        a.busy.fetch_add(1, Ordering::Relaxed);
        Busy {
            conns: conns.clone(),
            a: a.clone(),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.a.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.a.idle_since.store(self.conns.now(), Ordering::Relaxed);
        }
    }
}

/// The socket, noting when writes stall (the client reads nothing) and when they flow again,
/// and handing the HTTP parser what the [`framer::Framer`] makes of what it reads.
struct TrackedIo {
    inner: TcpStream,
    conns: Arc<Connections>,
    a: Arc<Activity>,
    framer: framer::Framer,
    /// What the framer passed on and the parser has not taken yet, from `taken`.
    out: Vec<u8>,
    taken: usize,
    /// Allocated at the first read: silent connections hold none.
    scratch: Vec<u8>,
    /// A head was refused (and answered): the parser sees the end of the stream.
    refused: bool,
}

/// Bytes read from the socket at a time while the framer looks at them.
const SCRATCH_BYTES: usize = 8 * 1024;

impl TrackedIo {
    fn note<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match &r {
            Poll::Pending => {
                let _ = self.a.blocked_since.compare_exchange(
                    0,
                    self.conns.now(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(_) => self.a.blocked_since.store(0, Ordering::Relaxed),
        }
        r
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.taken < this.out.len() {
                let n = (this.out.len() - this.taken).min(buf.remaining());
                buf.put_slice(&this.out[this.taken..this.taken + n]);
                this.taken += n;
                return Poll::Ready(Ok(()));
            }
            this.out.clear();
            this.taken = 0;
            if this.refused {
                return Poll::Ready(Ok(()));
            }
            // Body bytes of known length, and everything after the HTTP/2 preface, go straight
            // into the parser's buffer.
            if let Some(limit) = this.framer.direct() {
                let want = buf
                    .remaining()
                    .min(usize::try_from(limit).unwrap_or(usize::MAX));
                let mut direct = buf.take(want);
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut direct))?;
                let n = direct.filled().len();
                // SAFETY: `direct` wrote `n` initialized bytes into `buf`'s unfilled part.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                this.framer.passed(n);
                return Poll::Ready(Ok(()));
            }
            if this.scratch.is_empty() {
                this.scratch = vec![0; SCRATCH_BYTES];
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            let fed = this.framer.feed(&this.scratch[..n], &mut this.out);
            let head = if this.framer.in_head() {
                match this.a.head_since.load(Ordering::Relaxed) {
                    0 => this.conns.now(),
                    since => since,
                }
            } else {
                0
            };
            this.a.head_since.store(head, Ordering::Relaxed);
            if let Err(refusal) = fed {
                // Answered here (a fresh response fits the socket's buffer), then the parser
                // sees the stream end and the connection closes.
                let _ = this.inner.try_write(&refusal.response());
                this.refused = true;
                this.out.clear();
            }
        }
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request counted as in progress until it is sent or dropped.
struct TrackedBody {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The router, counting each request of one connection as in progress.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    conns: Arc<Connections>,
    a: Arc<Activity>,
}

impl<S> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = Busy::start(&self.conns, &self.a);
        let svc = self.inner.clone();
        Box::pin(async move {
            let resp = svc.oneshot(req).await?;
            Ok(resp.map(|inner| TrackedBody { inner, _busy: busy }))
        })
    }
}

/// What a connection refused at the cap is told before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 98\r\n\r\n{\"error\":{\"code\":899030,\"message\":\"too many open connections; retry after the Retry-After delay\"}}";

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits (up
/// to the grace period) for requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    conns: Arc<Connections>,
) -> io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let limits = conns.limits;
    let svc =
        router.map_request(|req: Request<Incoming>| crate::normalize_path(req.map(Body::new)));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
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
                let Some((id, a)) = conns.admit() else {
                    conns.refused.fetch_add(1, Ordering::Relaxed);
                    // A fresh socket's buffer takes this without blocking; then it is closed.
                    let _ = stream.try_write(REFUSED);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let io = TrackedIo {
                    inner: stream,
                    conns: conns.clone(),
                    a: a.clone(),
                    framer: framer::Framer::new(limits.max_header_bytes, limits.max_headers),
                    out: Vec::new(),
                    taken: 0,
                    scratch: Vec::new(),
                    refused: false,
                };
                let service = Tracked { inner: svc.clone(), conns: conns.clone(), a: a.clone() };
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                let conn = graceful.watch(conn.into_owned());
                let conns = conns.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = conn => {}
                        // Dropping the connection closes the socket and frees what it held.
                        _ = conns.watch(&a) => {}
                    }
                    conns.open.lock().expect("lock").remove(&id);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_states_its_length() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], 899030);
    }
}
