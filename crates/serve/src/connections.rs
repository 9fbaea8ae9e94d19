//! The REST port's HTTP/1 connections: hyper driven directly rather than through `axum::serve`, because
//! axum's loop sets no timer, so hyper's header read timeout never fires and a slow-loris client (headers
//! trickled a byte at a time, or an idle keep-alive socket) holds its connection, and blocks a graceful
//! shutdown, forever.
//!
//! Here every connection must deliver each request's headers within the header timeout (the REST
//! deadline), the request body is bounded by the handler's own deadline, and shutdown stops accepting,
//! asks every connection to close after its current request, and waits at most the drain limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower_service::Service as _;

use crate::tls::{Port, Tls};

/// How the REST port treats slow and lingering connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Longest a client may take to send one request's headers, and longest an idle keep-alive
    /// connection stays open.
    pub(crate) header_read_timeout: Duration,
    /// Longest shutdown waits for in-flight requests before closing their connections.
    pub(crate) drain: Duration,
}

/// The next connection on `listener` (TCP_NODELAY set), or `None` once `stopped` turns true. Accept
/// errors (out of file descriptors and similar) are logged and retried after a pause instead of spinning.
pub(crate) async fn accept(
    listener: &TcpListener,
    stopped: &mut watch::Receiver<bool>,
    api: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|s| *s) => return None,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!("cannot set TCP_NODELAY: {error}");
                }
                return Some((stream, peer));
            }
            Err(error) => {
                tracing::warn!("accepting a {api} connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves `router` on `listener` until `stopped` turns true, then drains (see the module docs). With
/// `tls`, each connection's handshake runs in its own task before HTTP starts.
pub(crate) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    tls: Option<Arc<Tls>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let mut connections = JoinSet::new();
    while let Some((stream, peer)) = accept(&listener, &mut stopped, "REST").await {
        // Reap finished connections so the set does not grow with the server's lifetime.
        while connections.try_join_next().is_some() {}
        let (builder, router, stopping, tls) =
            (builder.clone(), router.clone(), stopped.clone(), tls.clone());
        connections.spawn(async move {
            match tls {
                None => serve_connection(&builder, stream, peer, router, stopping).await,
                Some(tls) => match tls.accept(Port::Rest, stream).await {
                    Ok(stream) => serve_connection(&builder, stream, peer, router, stopping).await,
                    Err(error) => tracing::debug!(%peer, "REST TLS handshake failed: {error}"),
                },
            }
        });
    }
    drop(listener);
    let drained =
        tokio::time::timeout(limits.drain, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "REST connections still open after {} ms; closing them",
            limits.drain.as_millis()
        );
        connections.abort_all();
    }
}

/// Serves one connection until it ends, or closes it after its current request once `stopping` turns true.
/// Every request carries `peer` as axum's [`ConnectInfo`], for the logs that name a client.
async fn serve_connection<IO>(
    builder: &hyper::server::conn::http1::Builder,
    stream: IO,
    peer: SocketAddr,
    router: axum::Router,
    mut stopping: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().call(request)
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return log_end(result),
        _ = stopping.wait_for(|s| *s) => connection.as_mut().graceful_shutdown(),
    }
    log_end(connection.await);
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        // Timeouts and clients hanging up mid-request are routine on a public port.
        tracing::debug!("REST connection ended: {error}");
    }
}
