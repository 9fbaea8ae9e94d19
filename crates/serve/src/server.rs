//! Starting, running and stopping the whole server: listeners, watchers and shutdown order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runtime::RuntimeOptions;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;

use crate::auth::{self, AuthLayer, TokenFileError, Tokens};
use crate::batch::BatchOptions;
use crate::config::{BatchingParameters, ConfigError, ModelConfig, MonitoringConfig, read_model_config};
use crate::connections::{self, ConnectionLimits};
use crate::deadline::DeadlineLayer;
use crate::grpc::GrpcState;
use crate::management::ModelManagement;
use crate::metrics::Metrics;
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::proto::tensorflow::serving::model_service_server::ModelServiceServer;
use crate::proto::tensorflow::serving::prediction_service_server::PredictionServiceServer;
use crate::rest::{self, RestOptions, RestState};
use crate::source::{self, SourceOptions};
use crate::table::{ModelTable, VersionChoice, VersionStatus};
use crate::tls::{self, Tls};
use crate::vertex::{self, VertexRoutes, VertexState};
use crate::watcher::{ModelSet, WatchContext};
use crate::web::{self, WebState};

/// Instances one version's queue holds when batching is off: enough to absorb bursts, small enough that a
/// client far over capacity hears 429 in milliseconds rather than waiting minutes.
pub const UNBATCHED_QUEUE_CAPACITY: usize = 256;

/// TF Serving's server-side message limit, both directions (INT32_MAX).
const MAX_GRPC_MESSAGE_BYTES: usize = i32::MAX as usize;

/// How often `--auth_token_file` is re-read for rotated tokens.
pub const DEFAULT_AUTH_TOKEN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How often the gRPC health service re-reads model readiness.
const HEALTH_REFRESH: Duration = Duration::from_millis(200);

/// Everything a server is configured with; [`ServerOptions::new`] gives TF Serving's defaults.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The models to serve.
    pub models: Vec<ModelConfig>,
    /// gRPC listen address; `None` disables gRPC, port 0 picks a free port.
    pub grpc_addr: Option<SocketAddr>,
    /// REST listen address; `None` disables REST, port 0 picks a free port.
    pub rest_addr: Option<SocketAddr>,
    /// Per-REST-request deadline (`--rest_api_timeout_in_ms`, 30 s); also how long headers may take and
    /// idle keep-alive connections stay open, but never less than 1 s.
    pub rest_timeout: Duration,
    /// Largest REST body, compressed or inflated (100 MiB); larger bodies get 413.
    pub max_body_bytes: usize,
    /// How often base paths are polled for versions; zero polls once (`--file_system_poll_wait_seconds`).
    pub poll_interval: Duration,
    /// Merge concurrent requests into batches with these parameters; `None` runs each request alone.
    pub batching: Option<BatchingParameters>,
    /// The `--model_config_file` the models came from, re-read every `config_file_poll_interval`.
    pub config_file: Option<PathBuf>,
    /// How often `config_file` is re-read (`--model_config_file_poll_wait_seconds`); zero reads it once.
    pub config_file_poll_interval: Duration,
    /// Where Prometheus metrics are served.
    pub monitoring: MonitoringConfig,
    /// Add CORS headers to REST answers and accept browser preflights (`--rest_api_enable_cors_support`).
    pub cors: bool,
    /// Run each version's warm-up inputs before it becomes AVAILABLE (`--enable_model_warmup`, on).
    pub warmup: bool,
    /// Per-model runtime options (image limits, threads).
    pub runtime: RuntimeOptions,
    /// Bearer tokens both ports require (`--auth_token_file`, one per line); `None` requires none.
    pub auth_token_file: Option<PathBuf>,
    /// How often `auth_token_file` is re-read; zero reads it once.
    pub auth_token_poll_interval: Duration,
    /// Serve the Prometheus metrics without a token (`--allow_unauthenticated_metrics`).
    pub allow_unauthenticated_metrics: bool,
    /// Let gRPC HandleReloadConfigRequest replace the served models (`--enable_model_management`);
    /// off, it answers PERMISSION_DENIED.
    pub enable_model_management: bool,
    /// The directory every reloaded base path must resolve under (`--model_root`).
    pub model_root: Option<PathBuf>,
    /// TF Serving's `--ssl_config_file` (text `SSLConfig`): when set, both ports speak TLS only.
    pub ssl_config_file: Option<PathBuf>,
    /// How often `ssl_config_file` is re-read for new certificates; zero reads it once.
    pub ssl_config_poll_interval: Duration,
    /// Vertex AI's health and predict routes, served on the REST port; `None` serves neither.
    pub vertex: Option<VertexRoutes>,
    /// Where versions from `s3://`, `gs://` and `az://` base paths are downloaded (`--model_cache_dir`);
    /// `None` uses a private directory under the system temp dir, made on first use and removed when
    /// the server is dropped.
    pub model_cache_dir: Option<PathBuf>,
    /// object_store settings applied over each cloud's environment (`aws_endpoint`, `aws_allow_http`,
    /// `google_service_account`, ...), for embedders that cannot set environment variables; `kiln
    /// serve` leaves it empty.
    pub object_store_config: Vec<(String, String)>,
    /// Serve the status and try-it page at `/` on the REST port (off with `--disable_web_ui`).
    pub web_ui: bool,
}

impl ServerOptions {
    /// TF Serving's defaults for `models`, listening on all interfaces at 8500 (gRPC) and 8501 (REST).
    pub fn new(models: Vec<ModelConfig>) -> Self {
        ServerOptions {
            models,
            grpc_addr: Some(SocketAddr::from(([0, 0, 0, 0], 8500))),
            rest_addr: Some(SocketAddr::from(([0, 0, 0, 0], 8501))),
            rest_timeout: Duration::from_millis(30_000),
            max_body_bytes: rest::DEFAULT_MAX_BODY_BYTES,
            poll_interval: Duration::from_secs(1),
            batching: None,
            config_file: None,
            config_file_poll_interval: Duration::ZERO,
            monitoring: MonitoringConfig::default(),
            cors: false,
            warmup: true,
            runtime: RuntimeOptions::default(),
            auth_token_file: None,
            auth_token_poll_interval: DEFAULT_AUTH_TOKEN_POLL_INTERVAL,
            allow_unauthenticated_metrics: false,
            enable_model_management: false,
            model_root: None,
            ssl_config_file: None,
            ssl_config_poll_interval: tls::DEFAULT_SSL_CONFIG_POLL_INTERVAL,
            vertex: None,
            model_cache_dir: None,
            object_store_config: Vec::new(),
            web_ui: true,
        }
    }

    fn batch_options(&self) -> BatchOptions {
        match &self.batching {
            Some(params) => BatchOptions {
                max_batch_size: params.max_batch_size,
                timeout: params.batch_timeout,
                capacity: params.max_enqueued_batches.saturating_mul(params.max_batch_size),
                decode_threads: params.num_batch_threads,
            },
            None => BatchOptions {
                max_batch_size: 1,
                timeout: Duration::ZERO,
                capacity: UNBATCHED_QUEUE_CAPACITY,
                decode_threads: self.runtime.threads,
            },
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The options are contradictory or empty.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} for {api}")]
    Bind {
        /// `gRPC` or `REST`.
        api: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// `--auth_token_file` cannot be used.
    #[error(transparent)]
    TokenFile(#[from] TokenFileError),
    /// A thread could not be started or the metrics registry refused a metric.
    #[error("cannot start the server: {0}")]
    Start(String),
}

/// A running server. Stop it with [`Server::shutdown`], which drains in-flight requests.
pub struct Server {
    table: Arc<ModelTable>,
    grpc_addr: Option<SocketAddr>,
    rest_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    models: Arc<ModelSet>,
    /// Longest shutdown waits for in-flight requests.
    drain: Duration,
}

impl Server {
    /// Binds the listeners, starts one watcher per model and returns at once; versions become
    /// AVAILABLE in the background (see [`Server::is_ready`]). Must run inside a tokio runtime.
    pub async fn start(options: ServerOptions) -> Result<Server, ServerError> {
        if options.models.is_empty() {
            return Err(ConfigError::Flags(
                "no model to serve: pass --model_name and --model_base_path, or --model_config_file".into(),
            )
            .into());
        }
        if options.grpc_addr.is_none() && options.rest_addr.is_none() {
            return Err(
                ConfigError::Flags("both gRPC and REST are disabled: nothing to serve on".into()).into()
            );
        }
        if options.vertex.is_some() && options.rest_addr.is_none() {
            return Err(ConfigError::Flags(
                "the Vertex AI routes need the REST listener, which is disabled".into(),
            )
            .into());
        }
        source::check_store_config(&options.object_store_config).map_err(ConfigError::Flags)?;
        let tls = options.ssl_config_file.as_deref().map(Tls::load).transpose()?;
        let tokens = options.auth_token_file.as_deref().map(Tokens::load).transpose()?;
        let management =
            Arc::new(ModelManagement::new(options.enable_model_management, options.model_root.as_deref())?);
        let table = Arc::new(ModelTable::default());
        let metrics = Arc::new(Metrics::new().map_err(|e| ServerError::Start(e.to_string()))?);
        let (stop, stopped) = watch::channel(false);
        let shutdown_signal = |mut stopped: watch::Receiver<bool>| async move {
            // An error means the sender is gone, which also means stop.
            let _ = stopped.wait_for(|s| *s).await;
        };
        let mut tasks = Vec::new();
        let context = WatchContext {
            table: table.clone(),
            metrics: metrics.clone(),
            batch: options.batch_options(),
            runtime: options.runtime.clone(),
            poll_interval: options.poll_interval,
            warmup: options.warmup,
            sources: SourceOptions::new(options.model_cache_dir.clone(), options.object_store_config.clone()),
        };
        let models = Arc::new(
            ModelSet::start(options.models.clone(), context)
                .map_err(|e| ServerError::Start(e.to_string()))?,
        );

        let mut grpc_addr = None;
        if let Some(addr) = options.grpc_addr {
            let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind {
                api: "gRPC",
                addr,
                source,
            })?;
            let bound =
                listener.local_addr().map_err(|source| ServerError::Bind { api: "gRPC", addr, source })?;
            let state = GrpcState {
                table: table.clone(),
                metrics: metrics.clone(),
                models: models.clone(),
                management: management.clone(),
            };
            let (health, health_service) = tonic_health::server::health_reporter();
            tasks.push(tokio::spawn(report_health(health, table.clone(), stopped.clone())));
            let router = tonic::transport::Server::builder()
                // Stamps each call's grpc-timeout deadline before tonic's own timer starts.
                .layer(DeadlineLayer)
                // Innermost, so refusals are plain tonic responses.
                .layer(AuthLayer::new(tokens.clone(), auth::Grpc, metrics.clone()))
                .add_service(health_service)
                .add_service(
                    PredictionServiceServer::new(state.clone())
                        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
                )
                .add_service(
                    ModelServiceServer::new(state.clone())
                        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
                )
                .add_service(
                    GrpcInferenceServiceServer::new(state)
                        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
                );
            let signal = shutdown_signal(stopped.clone());
            let serving = match &tls {
                Some(tls) => {
                    let incoming = tls::grpc_incoming(listener, tls.clone(), stopped.clone());
                    tokio::spawn(async move { router.serve_with_incoming_shutdown(incoming, signal).await })
                }
                None => {
                    let incoming =
                        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                    tokio::spawn(async move { router.serve_with_incoming_shutdown(incoming, signal).await })
                }
            };
            tasks.push(tokio::spawn(async move {
                match serving.await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::error!("gRPC server failed: {error}"),
                    Err(error) => tracing::error!("gRPC server task failed: {error}"),
                }
            }));
            tracing::info!("Running gRPC ModelServer at {bound}{} ...", tls_note(tls.as_deref()));
            grpc_addr = Some(bound);
        }

        let mut rest_addr = None;
        if let Some(addr) = options.rest_addr {
            let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind {
                api: "REST",
                addr,
                source,
            })?;
            let bound =
                listener.local_addr().map_err(|source| ServerError::Bind { api: "REST", addr, source })?;
            let state = Arc::new(RestState {
                table: table.clone(),
                metrics: metrics.clone(),
                options: RestOptions {
                    timeout: options.rest_timeout,
                    max_body_bytes: options.max_body_bytes,
                    monitoring: options.monitoring.clone(),
                    cors: options.cors,
                },
            });
            let mut app = rest::router(state);
            if let Some(routes) = options.vertex.clone() {
                let state = VertexState {
                    routes,
                    table: table.clone(),
                    metrics: metrics.clone(),
                    timeout: options.rest_timeout,
                    max_body_bytes: options.max_body_bytes,
                };
                app = vertex::layer(app, Arc::new(state));
            }
            if options.web_ui {
                app = web::layer(app, Arc::new(WebState { table: table.clone(), metrics: metrics.clone() }));
            }
            let limits = ConnectionLimits {
                header_read_timeout: options.rest_timeout.max(MIN_HEADER_READ_TIMEOUT),
                drain: drain_limit(&options),
            };
            tasks.push(tokio::spawn(connections::serve(
                listener,
                app.layer(AuthLayer::new(tokens.clone(), rest_auth(&options), metrics.clone())),
                limits,
                tls.clone(),
                stopped.clone(),
            )));
            tracing::info!("Exporting HTTP/REST API at:{bound}{} ...", tls_note(tls.as_deref()));
            if let Some(routes) = &options.vertex {
                tracing::info!(
                    model = %routes.model,
                    "Vertex AI routes: health GET {}, predict POST {}",
                    routes.health_route,
                    routes.predict_route
                );
            }
            rest_addr = Some(bound);
        }

        if let Some(file) = options.config_file.clone()
            && !options.config_file_poll_interval.is_zero()
        {
            let watch =
                reread_config(file, options.config_file_poll_interval, models.clone(), stopped.clone());
            tasks.push(tokio::spawn(watch));
        }
        if let Some(tls) = tls
            && !options.ssl_config_poll_interval.is_zero()
        {
            tasks.push(tokio::spawn(tls.watch(options.ssl_config_poll_interval, stopped.clone())));
        }
        if let Some(tokens) = tokens
            && !options.auth_token_poll_interval.is_zero()
        {
            tasks.push(tokio::spawn(tokens.watch(options.auth_token_poll_interval, stopped.clone())));
        }
        Ok(Server { table, grpc_addr, rest_addr, stop, tasks, models, drain: drain_limit(&options) })
    }

    /// The bound gRPC address (with the real port when 0 was asked for).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The bound REST address.
    pub fn rest_addr(&self) -> Option<SocketAddr> {
        self.rest_addr
    }

    /// True once every configured model has an AVAILABLE version (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        let models = self.table.readiness();
        !models.is_empty() && models.iter().all(|(_, ready)| *ready)
    }

    /// Every version of `model` and its state, as GetModelStatus reports them (newest first).
    pub fn model_status(&self, model: &str) -> Vec<VersionStatus> {
        self.table.status(model, &VersionChoice::Latest).unwrap_or_default()
    }

    /// Stops accepting connections, lets in-flight requests finish (for at most the REST deadline, so a
    /// stalled client cannot hold the process), then unloads every version.
    pub async fn shutdown(self) {
        tracing::info!("shutting down: draining in-flight requests");
        let _ = self.stop.send(true);
        // The REST loop drains within `drain` itself; the margin lets it finish that before being aborted.
        let deadline = tokio::time::Instant::now() + self.drain + Duration::from_secs(1);
        for mut task in self.tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!("server task failed: {error}"),
                Err(_) => {
                    tracing::warn!(
                        "connections still open after {} ms; closing them",
                        self.drain.as_millis()
                    );
                    task.abort();
                }
            }
        }
        let models = self.models;
        // Unloading joins threads; keep that off the async executor.
        let joined = tokio::task::spawn_blocking(move || models.stop_all()).await;
        if let Err(error) = joined {
            tracing::error!("unloading models failed: {error}");
        }
        tracing::info!("server stopped");
    }
}

/// How the startup lines describe a listener's transport.
fn tls_note(tls: Option<&Tls>) -> &'static str {
    match tls {
        None => "",
        Some(tls) if tls.client_verify() => " (TLS, client certificates required)",
        Some(_) => " (TLS)",
    }
}

/// Which REST requests pass without a token: the probes, CORS preflights, and the metrics if allowed.
fn rest_auth(options: &ServerOptions) -> auth::Rest {
    let metrics = options.monitoring.enable && options.allow_unauthenticated_metrics;
    let metrics_path = metrics.then_some(options.monitoring.path.as_str());
    let mut rest = auth::Rest::new(metrics_path, options.cors, options.rest_timeout, options.max_body_bytes);
    // The page holds no data; it asks for the token and sends it on its own calls.
    if options.web_ui {
        rest = rest.with_open_path(web::PAGE_PATH);
    }
    match &options.vertex {
        Some(vertex) => rest.with_open_path(&vertex.health_route),
        None => rest,
    }
}

/// The shortest time a REST client gets to send its headers and an idle keep-alive connection stays
/// open, whatever `--rest_api_timeout_in_ms` says: a deadline of a few milliseconds must fail slow
/// requests, not close pooled client connections under them (the client then sees a reset, not a 504).
const MIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// How long shutdown lets in-flight requests run: the REST deadline, after which a REST request has
/// failed anyway (and Kubernetes' default 30 s grace period matches TF's default deadline).
fn drain_limit(options: &ServerOptions) -> Duration {
    options.rest_timeout
}

/// Re-reads `--model_config_file` every `interval` and applies it when it changed, as TF Serving's
/// `--model_config_file_poll_wait_seconds` does; a file that does not parse is logged and skipped.
async fn reread_config(
    file: PathBuf,
    interval: Duration,
    models: Arc<ModelSet>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let (file, models) = (file.clone(), models.clone());
        let applied = tokio::task::spawn_blocking(move || {
            let configs = read_model_config(&file)?;
            let mut current = models.configs();
            let mut wanted = configs.clone();
            current.sort_by(|a, b| a.name.cmp(&b.name));
            wanted.sort_by(|a, b| a.name.cmp(&b.name));
            if current != wanted {
                tracing::info!(file = %file.display(), "model config file changed; applying it");
                models
                    .apply(configs)
                    .map_err(|e| ConfigError::Flags(format!("cannot start a model watcher: {e}")))?;
            }
            Ok::<(), ConfigError>(())
        })
        .await;
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!("keeping the current models: {error}"),
            Err(error) => tracing::error!("re-reading the model config failed: {error}"),
        }
    }
}

/// Keeps grpc.health.v1 in step with the models: the overall service ("") and both TF services are
/// SERVING once every model has an AVAILABLE version, NOT_SERVING before (TF reports SERVING always,
/// which makes the probe useless for readiness).
async fn report_health(
    reporter: tonic_health::server::HealthReporter,
    table: Arc<ModelTable>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        let models = table.readiness();
        let ready = !models.is_empty() && models.iter().all(|(_, r)| *r);
        if last != Some(ready) {
            let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
            for service in [
                "",
                "tensorflow.serving.PredictionService",
                "tensorflow.serving.ModelService",
                "inference.GRPCInferenceService",
            ] {
                reporter.set_service_status(service, status).await;
            }
            last = Some(ready);
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_REFRESH) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}
