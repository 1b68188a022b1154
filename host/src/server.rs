//! The HTTP server: accepts TCP connections and serves HTTP/1.1 and HTTP/2 (also in
//! cleartext, h2c) on them, with bounds on what a slow or greedy client can hold.
//!
//! * Headers must arrive within `header_read_timeout_ms` (hyper's timer; for a
//!   kept-alive HTTP/1.1 connection it runs from the end of the previous response).
//! * A request body that sends nothing for `body_idle_timeout_ms` fails; its handler
//!   answers `400` in the envelope and the connection closes (hyper does not keep a
//!   connection whose request body was left unread).
//! * A connection on which nothing moved for `idle_timeout_ms` while no request was
//!   in flight is shut down gracefully: this also covers a client that connects and
//!   sends nothing, and an idle HTTP/2 connection (a GOAWAY, then close).
//! * One client address holds at most `max_connections_per_address` connections;
//!   a connection beyond that is closed as soon as it is accepted, before anything
//!   is read from it (no response: it is not an HTTP exchange yet).

use anyhow::Result;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutBody;
use tower_service::Service;

use crate::config::ServerSettings;
use crate::ratelimit::client_address;

/// HTTP/2 pings on a connection with requests in flight, so that a vanished peer
/// does not hold one forever.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves `router` on `listener` until `shutdown` resolves, then lets the requests
/// in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &ServerSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(settings.header_read_timeout_ms));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let builder = Arc::new(builder);
    let limits = Arc::new(ConnectionCounts::new(settings.max_connections_per_address));
    let body_idle = Duration::from_millis(settings.body_idle_timeout_ms);
    let idle = Duration::from_millis(settings.idle_timeout_ms);
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(admitted) = limits.admit(peer.ip()) else {
            tracing::debug!(%peer, "connection refused: too many from this address");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            builder: builder.clone(),
            router: router.clone(),
            peer,
            body_idle,
            idle,
        };
        let stopping = stopping.clone();
        connections.spawn(async move {
            connection.run(stream, stopping).await;
            drop(admitted);
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// `accept` failed: a connection that was reset while queued is nothing; anything
/// else (out of file descriptors) is waited out a little, not spun on.
async fn accept_failed(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One accepted connection and what serving it needs.
struct Connection {
    builder: Arc<Builder<TokioExecutor>>,
    router: Router,
    peer: SocketAddr,
    body_idle: Duration,
    idle: Duration,
}

impl Connection {
    async fn run(self, stream: TcpStream, stopping: CancellationToken) {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let Connection {
            builder,
            router,
            peer,
            body_idle,
            idle,
        } = self;
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let (mut parts, body) = request.into_parts();
            parts.extensions.insert(ConnectInfo(peer));
            let request = axum::http::Request::from_parts(parts, TimeoutBody::new(body_idle, body));
            let in_flight = requests.begin_request();
            let mut router = router.clone();
            async move {
                let response = router.call(request).await;
                drop(in_flight);
                response
            }
        });
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        let mut closing = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, error = %error, "connection ended with an error");
                    }
                    return;
                }
                () = activity.quiet_for(idle), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = stopping.cancelled(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// When a connection last moved a byte, and how many of its requests await their
/// response.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once the connection has been quiet for `limit`: no byte read or
    /// written and no request waiting for its response.
    async fn quiet_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.start.elapsed().saturating_sub(last);
            if self.in_flight.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(limit).await;
            } else if quiet >= limit {
                return;
            } else {
                tokio::time::sleep(limit - quiet).await;
            }
        }
    }
}

/// A request awaiting its response; the connection is not idle meanwhile.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A TCP stream that records when it last moved a byte.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
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

/// Open connections per client address.
struct ConnectionCounts {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnectionCounts {
    fn new(max: usize) -> ConnectionCounts {
        ConnectionCounts {
            max,
            open: Arc::default(),
        }
    }

    /// A place for one more connection of `address`, unless it holds the most.
    fn admit(&self, address: IpAddr) -> Option<Admitted> {
        let address = client_address(address);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(address).or_default();
        if self.max > 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Admitted {
            address,
            open: self.open.clone(),
        })
    }
}

/// One admitted connection; its place is given back when it ends.
struct Admitted {
    address: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_connections_and_gets_them_back() {
        let counts = ConnectionCounts::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = counts.admit(a).expect("first");
        let second = counts.admit(a).expect("second");
        assert!(counts.admit(a).is_none());
        assert!(counts.admit("192.0.2.2".parse().unwrap()).is_some());
        drop(first);
        let third = counts.admit(a).expect("a place was given back");
        drop((second, third));
        assert!(
            counts.open.lock().unwrap().is_empty(),
            "no empty entries kept"
        );
    }
}
