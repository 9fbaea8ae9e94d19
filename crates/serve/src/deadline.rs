//! gRPC deadlines: the client's `grpc-timeout` bounds the whole call, queue wait included.
//!
//! tonic's server reads `grpc-timeout` too, but when its timer fires it drops the call and answers
//! CANCELLED. [`DeadlineLayer`] sits inside tonic's timer and stamps the deadline as the call arrives,
//! before that timer is set, so its own timer (at the stamped instant, never later than tonic's) fires
//! first and answers DEADLINE_EXCEEDED, also while the body is still arriving. Handlers bound their work
//! by the same instant (so the failure is counted in their metrics), and the batch queue drops the
//! request if it is still waiting.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::Request;
use tonic::codegen::http;

use crate::error::ServeError;

/// The gRPC metadata key carrying the client's timeout (gRPC over HTTP/2).
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// When a gRPC call's client stops waiting, stored as a request extension by [`stamp`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct GrpcDeadline {
    /// The instant the answer is due.
    pub(crate) at: Instant,
    /// The timeout the client sent, for the error message.
    timeout: Duration,
}

impl GrpcDeadline {
    /// The deadline a gRPC handler's request carries, if its client sent one.
    pub(crate) fn of<T>(request: &Request<T>) -> Option<GrpcDeadline> {
        request.extensions().get::<GrpcDeadline>().copied()
    }

    /// Runs `call` until the deadline; past it, DEADLINE_EXCEEDED (the call's future is dropped, and with
    /// it any queued work).
    pub(crate) async fn bound<T>(
        deadline: Option<GrpcDeadline>,
        call: impl Future<Output = Result<T, ServeError>>,
    ) -> Result<T, ServeError> {
        let Some(deadline) = deadline else { return call.await };
        tokio::time::timeout_at(deadline.at.into(), call).await.map_err(|_| deadline.exceeded())?
    }

    fn exceeded(self) -> ServeError {
        ServeError::DeadlineExceeded(format!(
            "Deadline Exceeded: the call took longer than its grpc-timeout of {:?}",
            self.timeout
        ))
    }

    /// The deadline a call's `grpc-timeout` sets, counted from now. A malformed or absurdly long timeout
    /// means no deadline, as tonic treats it.
    fn from_headers(headers: &http::HeaderMap) -> Option<GrpcDeadline> {
        let timeout = parse_timeout(headers.get(GRPC_TIMEOUT)?.to_str().ok()?)?;
        Some(GrpcDeadline { at: Instant::now().checked_add(timeout)?, timeout })
    }
}

/// Stamps every gRPC call with its [`GrpcDeadline`] and answers DEADLINE_EXCEEDED when it passes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DeadlineLayer;

impl<S> tower_layer::Layer<S> for DeadlineLayer {
    type Service = Deadlined<S>;

    fn layer(&self, inner: S) -> Deadlined<S> {
        Deadlined { inner }
    }
}

/// A gRPC service bounded by its calls' deadlines (see [`DeadlineLayer`]).
#[derive(Debug, Clone)]
pub(crate) struct Deadlined<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower_service::Service<http::Request<B>> for Deadlined<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let deadline = GrpcDeadline::from_headers(request.headers());
        let Some(deadline) = deadline else { return Box::pin(self.inner.call(request)) };
        request.extensions_mut().insert(deadline);
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline.at.into(), call).await {
                Ok(response) => response,
                Err(_) => Ok(tonic::Status::from(deadline.exceeded()).into_http()),
            }
        })
    }
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn parse_timeout(text: &str) -> Option<Duration> {
    let digits = text.get(..text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    match &text[digits.len()..] {
        "H" => Some(Duration::from_secs(value * 3600)),
        "M" => Some(Duration::from_secs(value * 60)),
        "S" => Some(Duration::from_secs(value)),
        "m" => Some(Duration::from_millis(value)),
        "u" => Some(Duration::from_micros(value)),
        "n" => Some(Duration::from_nanos(value)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        assert_eq!(parse_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(parse_timeout("30000000u"), Some(Duration::from_secs(30)));
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("5M"), Some(Duration::from_secs(300)));
        assert_eq!(parse_timeout("7S"), Some(Duration::from_secs(7)));
        assert_eq!(parse_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10x", "-1m", "1.5S", "+1m", "1mm", "é"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_deadline_carries_the_timeout_and_ignores_bad_values() {
        let mut request = Request::new(());
        request.set_timeout(Duration::from_millis(250));
        let before = Instant::now();
        let deadline = GrpcDeadline::from_headers(&request.metadata().clone().into_headers());
        assert_eq!(deadline.map(|d| (d.timeout, d.at >= before)), Some((Duration::from_millis(250), true)));
        let mut headers = http::HeaderMap::new();
        headers.insert(GRPC_TIMEOUT, http::HeaderValue::from_static("soon"));
        assert!(GrpcDeadline::from_headers(&headers).is_none());
    }
}
