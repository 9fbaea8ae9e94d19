//! `kiln serve`: TF Serving's `tensorflow_model_server`, flag for flag, over kiln artifacts.
//!
//! Flags keep TF Serving's names (`--rest_api_port`, `--model_base_path`, ...) and `--flag=value`
//! spelling so deployment scripts and Kubernetes manifests only swap the binary. One deliberate
//! difference: `--rest_api_port` defaults to 8501 (TF: 0, REST off unless asked for; TF's Docker image
//! passes 8501), because kiln's users are REST users first. Port 0 disables a listener, as in TF.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ::serve::{ModelConfig, Server, ServerOptions};
use anyhow::{Context, bail};
use clap::Args;

#[derive(Args)]
pub struct ServeArgs {
    /// gRPC port (0 disables gRPC).
    #[arg(long, default_value_t = 8500)]
    port: u16,
    /// REST port (0 disables REST). TF Serving's default is 0; kiln's is 8501, as in TF's Docker image.
    #[arg(long = "rest_api_port", default_value_t = 8501)]
    rest_api_port: u16,
    /// Interface to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    host: std::net::IpAddr,
    /// Name of the single model to serve (ignored with --model_config_file).
    #[arg(long = "model_name", default_value = "default")]
    model_name: String,
    /// Base directory of the single model: its integer-named children are versions.
    #[arg(long = "model_base_path")]
    model_base_path: Option<PathBuf>,
    /// TF Serving model config (text format): several models, version policies and labels.
    #[arg(long = "model_config_file")]
    model_config_file: Option<PathBuf>,
    /// Seconds between re-reads of --model_config_file (0: read once); changes apply without a restart.
    #[arg(long = "model_config_file_poll_wait_seconds", default_value_t = 0)]
    model_config_file_poll_wait_seconds: u64,
    /// Seconds between polls of the base paths for new versions (0: poll once).
    #[arg(long = "file_system_poll_wait_seconds", default_value_t = 1)]
    file_system_poll_wait_seconds: u64,
    /// Merge concurrent requests into batches.
    #[arg(long = "enable_batching", num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    enable_batching: bool,
    /// TF Serving BatchingParameters (text format); needs --enable_batching.
    #[arg(long = "batching_parameters_file")]
    batching_parameters_file: Option<PathBuf>,
    /// TF Serving MonitoringConfig (text format); without it metrics are at /monitoring/prometheus/metrics.
    #[arg(long = "monitoring_config_file")]
    monitoring_config_file: Option<PathBuf>,
    /// Deadline of one REST request in milliseconds; exceeded requests get 504.
    #[arg(long = "rest_api_timeout_in_ms", default_value_t = 30_000)]
    rest_api_timeout_in_ms: u64,
    /// Threads of the async executor serving REST and gRPC (default: 4 per core, TF's HTTP pool size).
    #[arg(long = "rest_api_num_threads")]
    rest_api_num_threads: Option<usize>,
    /// Add CORS headers to REST answers and accept browser preflights.
    #[arg(long = "rest_api_enable_cors_support", num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    rest_api_enable_cors_support: bool,
    /// Run each version's warm-up inputs before it becomes AVAILABLE.
    #[arg(long = "enable_model_warmup", num_args = 0..=1, default_missing_value = "true", default_value = "true")]
    enable_model_warmup: bool,
    /// Largest REST request body in bytes (compressed or inflated); larger bodies get 413.
    #[arg(long = "rest_api_max_body_bytes", default_value_t = ::serve::DEFAULT_MAX_BODY_BYTES)]
    rest_api_max_body_bytes: usize,
    /// TF Serving SSLConfig (text format, PEM contents inline): TLS on both ports, mutual TLS with
    /// `client_verify: true`; re-read every few seconds, so certificates rotate without a restart.
    #[arg(long = "ssl_config_file")]
    ssl_config_file: Option<PathBuf>,
    /// File of bearer tokens (one per line; blank lines and `#` comments ignored), re-read when it
    /// changes: REST then needs `Authorization: Bearer <token>`, gRPC `authorization` metadata; /healthz,
    /// /readyz and the gRPC health service stay open.
    #[arg(long = "auth_token_file")]
    auth_token_file: Option<PathBuf>,
    /// Serve the Prometheus metrics without a bearer token (with --auth_token_file).
    #[arg(long = "allow_unauthenticated_metrics", num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    allow_unauthenticated_metrics: bool,
    /// Let gRPC HandleReloadConfigRequest replace the served models (off: PERMISSION_DENIED).
    #[arg(long = "enable_model_management", num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    enable_model_management: bool,
    /// Directory every base path in a HandleReloadConfigRequest must resolve under.
    #[arg(long = "model_root")]
    model_root: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // `RUST_LOG` overrides; structured fields (model, version) come from the server's spans and events.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    let options = options(&args)?;
    let threads = args
        .rest_api_num_threads
        .unwrap_or_else(|| 4 * std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let server = Server::start(options).await?;
        shutdown_signal().await?;
        server.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

fn options(args: &ServeArgs) -> anyhow::Result<ServerOptions> {
    let models = match (&args.model_config_file, &args.model_base_path) {
        (Some(file), _) => ::serve::read_model_config(file)?,
        (None, Some(base)) => vec![ModelConfig::new(&args.model_name, base)],
        (None, None) => {
            bail!("nothing to serve: pass --model_base_path (with --model_name) or --model_config_file")
        }
    };
    let mut options = ServerOptions::new(models);
    options.config_file = args.model_config_file.clone();
    options.config_file_poll_interval = Duration::from_secs(args.model_config_file_poll_wait_seconds);
    let addr = |port: u16| (port != 0).then(|| SocketAddr::new(args.host, port));
    if args.port != 0 && args.port == args.rest_api_port {
        bail!("--port and --rest_api_port are both {}; they must differ", args.port);
    }
    options.grpc_addr = addr(args.port);
    options.rest_addr = addr(args.rest_api_port);
    options.poll_interval = Duration::from_secs(args.file_system_poll_wait_seconds);
    options.rest_timeout = Duration::from_millis(args.rest_api_timeout_in_ms);
    options.max_body_bytes = args.rest_api_max_body_bytes;
    options.cors = args.rest_api_enable_cors_support;
    options.warmup = args.enable_model_warmup;
    options.ssl_config_file = args.ssl_config_file.clone();
    options.batching = match (args.enable_batching, &args.batching_parameters_file) {
        (false, Some(_)) => bail!("--batching_parameters_file requires --enable_batching"),
        (false, None) => None,
        (true, Some(file)) => Some(::serve::read_batching_parameters(file)?),
        (true, None) => Some(::serve::BatchingParameters::default()),
    };
    if args.allow_unauthenticated_metrics && args.auth_token_file.is_none() {
        bail!("--allow_unauthenticated_metrics only has a meaning with --auth_token_file");
    }
    if args.model_root.is_some() && !args.enable_model_management {
        bail!("--model_root only has a meaning with --enable_model_management");
    }
    options.auth_token_file = args.auth_token_file.clone();
    options.allow_unauthenticated_metrics = args.allow_unauthenticated_metrics;
    options.enable_model_management = args.enable_model_management;
    options.model_root = args.model_root.clone();
    if let Some(file) = &args.monitoring_config_file {
        options.monitoring = ::serve::read_monitoring_config(file)?;
    }
    Ok(options)
}

/// Resolves on SIGTERM (Kubernetes' stop) or Ctrl-C.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
    }
    Ok(())
}
