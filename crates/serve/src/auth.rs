//! Optional bearer-token authentication, one tower layer for both ports.
//!
//! With `--auth_token_file`, every REST request needs `Authorization: Bearer <token>` and every gRPC call
//! the same `authorization` metadata (HTTP/2 carries both as one header), except what probes and
//! scrapers use: `/healthz`, `/readyz`, `/v2/health/{live,ready}`, the gRPC health service, v2's
//! ServerLive and ServerReady and, with `--allow_unauthenticated_metrics`, the Prometheus path. Tokens
//! are kept as SHA-256 digests and a presented token's digest is compared with each in constant time,
//! so neither timing nor length tells an attacker how close a guess was. The file is re-read when it
//! changes; a file that no longer parses keeps the tokens in force, so a half-written rotation cannot
//! lock everyone out.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::HttpBody;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::error::ServeError;
use crate::metrics::{Entrypoint, Metrics};

/// The shortest token accepted: shorter ones can be guessed.
const MIN_TOKEN_CHARS: usize = 16;

/// The gRPC health service's path prefix: Check and Watch stay open for probes.
const GRPC_HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// The Open Inference Protocol's gRPC health probes, open like grpc.health.v1.
const GRPC_V2_PROBES: &[&str] =
    &["/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"];

/// A token file kiln cannot use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read token file `{}`", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a usable token (the token itself is never quoted: it is a secret).
    #[error("token file `{}` line {line}: {reason}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Only blank lines and comments.
    #[error(
        "token file `{}` holds no token (one token per line; blank lines and `#` comments are ignored)",
        path.display()
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// SHA-256 digests of the accepted tokens.
#[derive(Debug)]
struct TokenDigests(Vec<[u8; 32]>);

impl TokenDigests {
    /// One token per line; blank lines and lines starting with `#` are skipped.
    fn parse(path: &Path, text: &str) -> Result<TokenDigests, TokenFileError> {
        let mut digests = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            let refuse =
                |reason: String| TokenFileError::Token { path: path.to_owned(), line: index + 1, reason };
            // RFC 6750's b64token: what a client can put after `Bearer ` unquoted.
            if let Some(bad) = token.chars().find(|&c| !(c.is_ascii_alphanumeric() || "-._~+/=".contains(c)))
            {
                return Err(refuse(format!(
                    "a token may hold letters, digits and `-._~+/=` only, this one has {:?}",
                    bad
                )));
            }
            if token.len() < MIN_TOKEN_CHARS {
                return Err(refuse(format!(
                    "a token needs at least {MIN_TOKEN_CHARS} characters, this one has {} (make one with \
                     `openssl rand -hex 32`)",
                    token.len()
                )));
            }
            digests.push(Sha256::digest(token.as_bytes()).into());
        }
        if digests.is_empty() {
            return Err(TokenFileError::Empty { path: path.to_owned() });
        }
        Ok(TokenDigests(digests))
    }

    /// Whether `token` is one of these, looking at every digest whatever matched.
    fn accepts(&self, token: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.0
            .iter()
            .fold(false, |found, digest| found | constant_time_eq::constant_time_eq_32(digest, &presented))
    }
}

/// The tokens in force, shared by both ports and replaced when the file changes.
#[derive(Debug, Clone)]
pub(crate) struct Tokens {
    file: PathBuf,
    current: Arc<RwLock<Arc<TokenDigests>>>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// No `authorization` header.
    Missing,
    /// A header with another scheme (Basic, ...) or no token.
    NotBearer,
    /// A bearer token that is not in the file.
    Invalid,
}

impl AuthFailure {
    /// The `reason` label of `kiln_unauthenticated_requests_total`.
    fn name(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::NotBearer => "not_bearer",
            AuthFailure::Invalid => "invalid",
        }
    }
}

impl Tokens {
    /// Reads `file`; the server does not start with a token file it cannot use.
    pub(crate) fn load(file: &Path) -> Result<Tokens, TokenFileError> {
        let text = std::fs::read_to_string(file)
            .map_err(|source| TokenFileError::Read { path: file.to_owned(), source })?;
        let digests = TokenDigests::parse(file, &text)?;
        tracing::info!(file = %file.display(), tokens = digests.0.len(), "bearer-token authentication is on");
        Ok(Tokens { file: file.to_owned(), current: Arc::new(RwLock::new(Arc::new(digests))) })
    }

    /// Checks a request's `authorization` header.
    fn verify(&self, headers: &HeaderMap) -> Result<(), AuthFailure> {
        let value = headers.get(header::AUTHORIZATION).ok_or(AuthFailure::Missing)?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or(AuthFailure::NotBearer)?;
        let digests = self.current.read().unwrap_or_else(PoisonError::into_inner).clone();
        if digests.accepts(token) { Ok(()) } else { Err(AuthFailure::Invalid) }
    }

    /// Re-reads the file every `interval` until `stopped`, replacing the tokens when its content changed
    /// and parses; otherwise the tokens in force stay and the reason is logged once.
    pub(crate) async fn watch(self, interval: Duration, mut stopped: watch::Receiver<bool>) {
        let mut seen = std::fs::read(&self.file).ok();
        let mut last_problem = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            let file = self.file.clone();
            let Ok(read) = tokio::task::spawn_blocking(move || std::fs::read(&file)).await else { continue };
            let problem = match read {
                Err(source) => Some(TokenFileError::Read { path: self.file.clone(), source }.to_string()),
                Ok(bytes) if seen.as_ref() == Some(&bytes) => None,
                Ok(bytes) => {
                    let parsed = std::str::from_utf8(&bytes)
                        .map_err(|_| format!("token file `{}` is not UTF-8", self.file.display()))
                        .and_then(|text| TokenDigests::parse(&self.file, text).map_err(|e| e.to_string()));
                    seen = Some(bytes);
                    match parsed {
                        Ok(digests) => {
                            tracing::info!(file = %self.file.display(), tokens = digests.0.len(), "token file changed; new tokens in force");
                            *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(digests);
                            last_problem = None;
                            None
                        }
                        Err(reason) => Some(reason),
                    }
                }
            };
            if let Some(problem) = problem
                && last_problem.as_ref() != Some(&problem)
            {
                tracing::warn!("keeping the current bearer tokens: {problem}");
                last_problem = Some(problem);
            }
        }
    }
}

/// How one port answers a request without a valid token, and which of its requests need none.
pub(crate) trait Transport: Clone + Send + Sync + 'static {
    /// The port's response body.
    type Body;
    /// The port, for metrics.
    const ENTRYPOINT: Entrypoint;
    /// Whether this request is served without a token.
    fn is_open(&self, method: &Method, path: &str) -> bool;
    /// The client's address, where the port's server put it: a refusal's log line names who was refused.
    fn peer<B>(request: &Request<B>) -> Option<SocketAddr>;
    /// The refusal of `request`.
    fn refuse<B>(&self, failure: AuthFailure, request: Request<B>) -> BoxFuture<Response<Self::Body>>
    where
        B: HttpBody + Send + 'static;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The message a refusal carries; `header` is how the port spells the header.
fn failure_message(failure: AuthFailure, header: &str) -> String {
    match failure {
        AuthFailure::Missing => {
            format!("Missing bearer token: this server requires `{header}: Bearer <token>`")
        }
        AuthFailure::NotBearer => {
            format!("The {header} value is not a bearer token: expected `{header}: Bearer <token>`")
        }
        AuthFailure::Invalid => "The bearer token is not valid on this server".into(),
    }
}

/// The REST port: 401 with `WWW-Authenticate` (RFC 6750) and TF Serving's `{"error": ...}` body.
///
/// The refused request's body is read and dropped first (at most `max_body_bytes`, within `deadline`),
/// as for a 413: a connection closed on unread data is reset, and the reset destroys the 401 before the
/// client reads it. A body not drained in time gets `Connection: close`.
#[derive(Debug, Clone)]
pub(crate) struct Rest {
    /// Paths served without a token: the probes, and the metrics when allowed.
    open: Arc<[String]>,
    /// CORS preflights (OPTIONS) never carry credentials, so they pass when CORS is on.
    cors: bool,
    deadline: Duration,
    max_body_bytes: usize,
}

impl Rest {
    /// `metrics_path` is the Prometheus path when it is served without a token; `deadline` and
    /// `max_body_bytes` bound how much of a refused body is drained.
    pub(crate) fn new(
        metrics_path: Option<&str>,
        cors: bool,
        deadline: Duration,
        max_body_bytes: usize,
    ) -> Rest {
        let open: Vec<String> = ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"]
            .into_iter()
            .chain(metrics_path)
            .map(str::to_owned)
            .collect();
        Rest { open: open.into(), cors, deadline, max_body_bytes }
    }

    /// Also serves `path` without a token: a platform's health probe (Vertex's `AIP_HEALTH_ROUTE`)
    /// carries none.
    pub(crate) fn with_open_path(self, path: &str) -> Rest {
        let open: Vec<String> = self.open.iter().cloned().chain([path.to_owned()]).collect();
        Rest { open: open.into(), ..self }
    }
}

/// Reads and drops `body` up to `limit` bytes within `deadline`; true if it ended in time.
async fn drain<B: HttpBody>(body: B, limit: usize, deadline: Duration) -> bool {
    use http_body_util::BodyExt as _;
    use hyper::body::Buf as _;
    let mut body = std::pin::pin!(body);
    let read = async {
        let mut total = 0usize;
        while let Some(frame) = body.as_mut().frame().await {
            let Ok(frame) = frame else { return false };
            total = total.saturating_add(frame.data_ref().map_or(0, |d| d.remaining()));
            if total > limit {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(deadline, read).await.unwrap_or(false)
}

impl Transport for Rest {
    type Body = axum::body::Body;
    const ENTRYPOINT: Entrypoint = Entrypoint::Rest;

    fn is_open(&self, method: &Method, path: &str) -> bool {
        (self.cors && method == Method::OPTIONS) || self.open.iter().any(|p| p == path)
    }

    /// Set by the REST connection loop on every request.
    fn peer<B>(request: &Request<B>) -> Option<SocketAddr> {
        request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0)
    }

    fn refuse<B>(&self, failure: AuthFailure, request: Request<B>) -> BoxFuture<Response<Self::Body>>
    where
        B: HttpBody + Send + 'static,
    {
        let mut response = crate::rest::error_response(&ServeError::Unauthenticated(failure_message(
            failure,
            "Authorization",
        )));
        let challenge = match failure {
            AuthFailure::Missing => "Bearer realm=\"kiln\"",
            AuthFailure::NotBearer => "Bearer realm=\"kiln\", error=\"invalid_request\"",
            AuthFailure::Invalid => "Bearer realm=\"kiln\", error=\"invalid_token\"",
        };
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        let (limit, deadline) = (self.max_body_bytes, self.deadline);
        Box::pin(async move {
            if !drain(request.into_body(), limit, deadline).await {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        })
    }
}

/// The gRPC port: UNAUTHENTICATED; the health service stays open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grpc;

impl Transport for Grpc {
    type Body = tonic::body::Body;
    const ENTRYPOINT: Entrypoint = Entrypoint::Grpc;

    fn is_open(&self, _: &Method, path: &str) -> bool {
        path.starts_with(GRPC_HEALTH_PREFIX) || GRPC_V2_PROBES.contains(&path)
    }

    /// Set by tonic from the connection: TCP, or TLS over TCP.
    fn peer<B>(request: &Request<B>) -> Option<SocketAddr> {
        let extensions = request.extensions();
        extensions.get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr).or_else(|| {
            extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.get_ref().remote_addr())
        })
    }

    /// HTTP/2 ends a refused stream without closing the connection, so the body is not drained.
    fn refuse<B>(&self, failure: AuthFailure, _: Request<B>) -> BoxFuture<Response<Self::Body>>
    where
        B: HttpBody + Send + 'static,
    {
        let status = tonic::Status::unauthenticated(failure_message(failure, "authorization"));
        Box::pin(std::future::ready(status.into_http()))
    }
}

/// Wraps a port's service so requests without a valid token are refused; with no tokens (no
/// `--auth_token_file`) it passes everything through.
#[derive(Clone)]
pub(crate) struct AuthLayer<T> {
    tokens: Option<Tokens>,
    transport: T,
    metrics: Arc<Metrics>,
}

impl<T> AuthLayer<T> {
    pub(crate) fn new(tokens: Option<Tokens>, transport: T, metrics: Arc<Metrics>) -> Self {
        AuthLayer { tokens, transport, metrics }
    }
}

impl<S, T: Clone> tower_layer::Layer<S> for AuthLayer<T> {
    type Service = Authenticated<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            tokens: self.tokens.clone(),
            transport: self.transport.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone)]
pub(crate) struct Authenticated<S, T> {
    inner: S,
    tokens: Option<Tokens>,
    transport: T,
    metrics: Arc<Metrics>,
}

impl<S, T, B> tower_service::Service<Request<B>> for Authenticated<S, T>
where
    S: tower_service::Service<Request<B>, Response = Response<T::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: HttpBody + Send + 'static,
    T: Transport,
    T::Body: Send + 'static,
{
    type Response = Response<T::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Some(tokens) = &self.tokens
            && !self.transport.is_open(request.method(), request.uri().path())
            && let Err(failure) = tokens.verify(request.headers())
        {
            let peer = T::peer(&request).map_or_else(|| "unknown".to_owned(), |peer| peer.to_string());
            tracing::info!(
                %peer,
                path = request.uri().path(),
                ?failure,
                "refused a request without a valid bearer token"
            );
            self.metrics.count_unauthenticated(T::ENTRYPOINT, failure.name());
            let refusal = self.transport.refuse(failure, request);
            return Box::pin(async move { Ok(refusal.await) });
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(header::AUTHORIZATION, value);
        }
        headers
    }

    #[test]
    fn token_files_skip_comments_and_refuse_weak_or_odd_tokens() {
        let path = Path::new("tokens");
        let parsed = TokenDigests::parse(path, &format!("# ops\n\n  {TOKEN}  \nsecond-token-0123456789\n"));
        assert_eq!(parsed.map(|d| d.0.len()).ok(), Some(2));
        let message = |text: &str| TokenDigests::parse(path, text).err().map(|e| e.to_string());
        assert_eq!(
            message("# only a comment\n\n").as_deref(),
            Some(
                "token file `tokens` holds no token (one token per line; blank lines and `#` comments are \
                 ignored)"
            )
        );
        let short = message("\nshort").unwrap_or_default();
        assert!(short.starts_with("token file `tokens` line 2: a token needs at least 16"), "{short}");
        assert!(!short.contains("short\""), "the token leaked into {short}");
        let spaced = message("two words in a line here").unwrap_or_default();
        assert!(spaced.contains("line 1: a token may hold letters, digits"), "{spaced}");
    }

    #[test]
    fn only_bearer_tokens_from_the_file_pass() -> Result<(), TokenFileError> {
        let tokens = Tokens {
            file: PathBuf::from("tokens"),
            current: Arc::new(RwLock::new(Arc::new(TokenDigests::parse(Path::new("tokens"), TOKEN)?))),
        };
        assert_eq!(tokens.verify(&headers(&format!("Bearer {TOKEN}"))), Ok(()));
        assert_eq!(tokens.verify(&headers(&format!("bearer  {TOKEN} "))), Ok(()));
        assert_eq!(tokens.verify(&HeaderMap::new()), Err(AuthFailure::Missing));
        assert_eq!(tokens.verify(&headers(&format!("Basic {TOKEN}"))), Err(AuthFailure::NotBearer));
        assert_eq!(tokens.verify(&headers("Bearer")), Err(AuthFailure::NotBearer));
        assert_eq!(tokens.verify(&headers(&format!("Bearer {TOKEN}x"))), Err(AuthFailure::Invalid));
        assert_eq!(tokens.verify(&headers(&format!("Bearer {}", &TOKEN[1..]))), Err(AuthFailure::Invalid));
        Ok(())
    }

    #[test]
    fn probes_and_allowed_metrics_need_no_token() {
        let rest = Rest::new(Some("/metrics"), false, Duration::ZERO, 0);
        assert!(rest.is_open(&Method::GET, "/healthz"));
        assert!(rest.is_open(&Method::GET, "/readyz"));
        assert!(rest.is_open(&Method::GET, "/metrics"));
        assert!(!rest.is_open(&Method::GET, "/v1/models/vit"));
        assert!(!rest.is_open(&Method::OPTIONS, "/v1/models/vit"));
        assert!(!Rest::new(None, false, Duration::ZERO, 0).is_open(&Method::GET, "/metrics"));
        assert!(Rest::new(None, true, Duration::ZERO, 0).is_open(&Method::OPTIONS, "/v1/models/vit:predict"));
        assert!(Grpc.is_open(&Method::POST, "/grpc.health.v1.Health/Check"));
        assert!(rest.is_open(&Method::GET, "/v2/health/ready"));
        assert!(!rest.is_open(&Method::GET, "/v2/models/vit"));
        assert!(Grpc.is_open(&Method::POST, "/inference.GRPCInferenceService/ServerReady"));
        assert!(!Grpc.is_open(&Method::POST, "/inference.GRPCInferenceService/ModelInfer"));
        assert!(!Grpc.is_open(&Method::POST, "/tensorflow.serving.PredictionService/Predict"));
    }
}
