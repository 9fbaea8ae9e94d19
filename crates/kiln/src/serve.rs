//! `kiln serve`: TF Serving's `tensorflow_model_server`, flag for flag, over kiln artifacts.
//!
//! Flags keep TF Serving's names (`--rest_api_port`, `--model_base_path`, ...) and `--flag=value`
//! spelling so deployment scripts and Kubernetes manifests only swap the binary. One deliberate
//! difference: `--rest_api_port` defaults to 8501 (TF: 0, REST off unless asked for; TF's Docker image
//! passes 8501), because kiln's users are REST users first. Port 0 disables a listener, as in TF.
//!
//! Under Vertex AI (`AIP_HTTP_PORT`, `AIP_HEALTH_ROUTE` or `AIP_PREDICT_ROUTE` set), the container
//! contract fills in what the flags leave out: REST listens on `AIP_HTTP_PORT` (8080 when unset), the
//! health and predict routes are served there, the model is loaded from `AIP_STORAGE_URI` when neither
//! `--model_base_path` nor `--model_config_file` is given, and gRPC is off unless `--port` asks for it
//! (Vertex routes only the one HTTP port). A flag given explicitly always wins over an `AIP_*` variable.
//! The model keeps its `--model_name` (`default`), not `AIP_DEPLOYED_MODEL_ID`: that id changes with each
//! deployment, and the name appears in `/v1/models/<name>` paths and metric labels that should not.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ::serve::{BasePath, ModelConfig, Server, ServerOptions, VertexRoutes};
use anyhow::{Context, bail, ensure};
use clap::Args;

#[derive(Args)]
pub struct ServeArgs {
    /// gRPC port (0 disables gRPC) [default: 8500; under Vertex AI, off].
    #[arg(long)]
    port: Option<u16>,
    /// REST port (0 disables REST) [default: 8501; under Vertex AI, AIP_HTTP_PORT]. TF Serving's
    /// default is 0; kiln's is 8501, as in TF's Docker image.
    #[arg(long = "rest_api_port")]
    rest_api_port: Option<u16>,
    /// Interface to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    host: std::net::IpAddr,
    /// Name of the single model to serve (ignored with --model_config_file).
    #[arg(long = "model_name", default_value = "default")]
    model_name: String,
    /// Base path of the single model: a directory, or an s3://, gs:// or az:// URL (credentials from
    /// the cloud's environment); its integer-named children are versions.
    #[arg(long = "model_base_path")]
    model_base_path: Option<BasePath>,
    /// Where versions from object-store base paths are downloaded and verified before they load
    /// [default: a private directory under the system temp dir, removed at exit].
    #[arg(long = "model_cache_dir")]
    model_cache_dir: Option<PathBuf>,
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
    /// Do not serve the status and try-it page at `/` on the REST port (its status JSON goes too).
    #[arg(long = "disable_web_ui", num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    disable_web_ui: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // `RUST_LOG` overrides; structured fields (model, version) come from the server's spans and events.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    let vertex = VertexEnv::read(|name| std::env::var(name).ok())?;
    let options = options(&args, vertex)?;
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

/// TF Serving's default gRPC port.
const DEFAULT_GRPC_PORT: u16 = 8500;
/// kiln's default REST port (TF Serving's Docker image's).
const DEFAULT_REST_PORT: u16 = 8501;
/// The port Vertex AI documents for an unset `AIP_HTTP_PORT`.
const DEFAULT_VERTEX_PORT: u16 = 8080;

/// Vertex AI's custom-container variables: where to listen, which routes to answer, where the model is.
#[derive(Debug, Clone, PartialEq)]
struct VertexEnv {
    /// `AIP_HTTP_PORT`.
    http_port: u16,
    /// `AIP_HEALTH_ROUTE`.
    health_route: String,
    /// `AIP_PREDICT_ROUTE`.
    predict_route: String,
    /// `AIP_STORAGE_URI`: the model's base path (usually `gs://`), when the deployment has artifacts.
    storage_uri: Option<String>,
}

impl VertexEnv {
    /// The variables from `var` (the environment), or `None` outside Vertex AI: none of `AIP_HTTP_PORT`,
    /// `AIP_HEALTH_ROUTE`, `AIP_PREDICT_ROUTE` set. Vertex sets all three; with only some, the rest is
    /// an error naming it rather than a guess. Empty values count as unset.
    fn read(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<VertexEnv>> {
        let var = |name: &str| var(name).filter(|value| !value.is_empty());
        let (port, health, predict) =
            (var("AIP_HTTP_PORT"), var("AIP_HEALTH_ROUTE"), var("AIP_PREDICT_ROUTE"));
        if port.is_none() && health.is_none() && predict.is_none() {
            return Ok(None);
        }
        let http_port = match port {
            None => DEFAULT_VERTEX_PORT,
            Some(text) => match text.parse::<u16>() {
                Ok(port @ 1..) => port,
                _ => bail!("AIP_HTTP_PORT={text:?} is not a port number (1-65535)"),
            },
        };
        let route = |name: &str, value: Option<String>| -> anyhow::Result<String> {
            let value = value.with_context(|| {
                format!("{name} is not set, but other AIP_* variables are: Vertex AI sets AIP_HTTP_PORT, AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE together")
            })?;
            ensure!(value.starts_with('/'), "{name}={value:?} is not a path: it must start with `/`");
            Ok(value)
        };
        let health_route = route("AIP_HEALTH_ROUTE", health)?;
        let predict_route = route("AIP_PREDICT_ROUTE", predict)?;
        Ok(Some(VertexEnv { http_port, health_route, predict_route, storage_uri: var("AIP_STORAGE_URI") }))
    }
}

fn options(args: &ServeArgs, vertex: Option<VertexEnv>) -> anyhow::Result<ServerOptions> {
    let storage_uri = vertex.as_ref().and_then(|v| v.storage_uri.as_deref());
    let models = match (&args.model_config_file, &args.model_base_path, storage_uri) {
        (Some(file), _, _) => ::serve::read_model_config(file)?,
        (None, Some(base), _) => vec![ModelConfig::new(&args.model_name, base.clone())],
        (None, None, Some(uri)) => {
            let base: BasePath = uri.parse().with_context(|| format!("AIP_STORAGE_URI={uri:?}"))?;
            vec![ModelConfig::new(&args.model_name, base)]
        }
        (None, None, None) if vertex.is_some() => bail!(
            "nothing to serve: AIP_STORAGE_URI is not set (upload the model with --artifact-uri) and \
             neither --model_base_path nor --model_config_file is given"
        ),
        (None, None, None) => {
            bail!("nothing to serve: pass --model_base_path (with --model_name) or --model_config_file")
        }
    };
    let vertex_routes = vertex
        .as_ref()
        .map(|vertex| {
            let model = match models.as_slice() {
                [only] => only.name.clone(),
                several => several
                    .iter()
                    .find(|m| m.name == args.model_name)
                    .map(|m| m.name.clone())
                    .with_context(|| {
                        format!(
                            "--model_config_file configures {} models and Vertex AI routes serve one: pass \
                             --model_name naming one of them",
                            several.len()
                        )
                    })?,
            };
            let routes = VertexRoutes {
                health_route: vertex.health_route.clone(),
                predict_route: vertex.predict_route.clone(),
                model,
            };
            anyhow::Ok(routes)
        })
        .transpose()?;
    let mut options = ServerOptions::new(models);
    options.vertex = vertex_routes;
    options.config_file = args.model_config_file.clone();
    options.config_file_poll_interval = Duration::from_secs(args.model_config_file_poll_wait_seconds);
    let addr = |port: u16| (port != 0).then(|| SocketAddr::new(args.host, port));
    // Explicit flags first, then Vertex's contract, then kiln's defaults.
    let grpc_port = args.port.unwrap_or(if vertex.is_some() { 0 } else { DEFAULT_GRPC_PORT });
    let rest_port = args.rest_api_port.or(vertex.as_ref().map(|v| v.http_port)).unwrap_or(DEFAULT_REST_PORT);
    if grpc_port != 0 && grpc_port == rest_port {
        bail!("--port and --rest_api_port are both {grpc_port}; they must differ");
    }
    options.grpc_addr = addr(grpc_port);
    options.rest_addr = addr(rest_port);
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
    options.web_ui = !args.disable_web_ui;
    options.model_cache_dir = args.model_cache_dir.clone();
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(flags: &[&str]) -> Result<ServeArgs, clap::Error> {
        Ok(Cli::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))?.serve)
    }

    fn env(vars: &[(&str, &str)]) -> anyhow::Result<Option<VertexEnv>> {
        VertexEnv::read(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned()))
    }

    const VERTEX: [(&str, &str); 4] = [
        ("AIP_HTTP_PORT", "9090"),
        ("AIP_HEALTH_ROUTE", "/health"),
        ("AIP_PREDICT_ROUTE", "/predict"),
        ("AIP_STORAGE_URI", "gs://bucket/vit"),
    ];

    #[test]
    fn vertex_variables_fill_in_what_the_flags_leave_out() -> anyhow::Result<()> {
        let vertex = options(&args(&[])?, env(&VERTEX)?)?;
        assert_eq!(vertex.rest_addr, Some("0.0.0.0:9090".parse()?));
        assert_eq!(vertex.grpc_addr, None);
        assert_eq!(vertex.models, [ModelConfig::new("default", "gs://bucket/vit".parse::<BasePath>()?)]);
        let routes = VertexRoutes {
            health_route: "/health".into(),
            predict_route: "/predict".into(),
            model: "default".into(),
        };
        assert_eq!(vertex.vertex, Some(routes));

        let flags =
            ["--rest_api_port=7000", "--port=7001", "--model_base_path=/models/vit", "--model_name=vit"];
        let explicit = options(&args(&flags)?, env(&VERTEX)?)?;
        assert_eq!(explicit.rest_addr, Some("0.0.0.0:7000".parse()?));
        assert_eq!(explicit.grpc_addr, Some("0.0.0.0:7001".parse()?));
        assert_eq!(explicit.models, [ModelConfig::new("vit", std::path::Path::new("/models/vit"))]);
        assert_eq!(explicit.vertex.map(|v| v.model).as_deref(), Some("vit"));

        let plain = options(&args(&["--model_base_path=/m"])?, None)?;
        assert_eq!(plain.rest_addr, Some("0.0.0.0:8501".parse()?));
        assert_eq!(plain.grpc_addr, Some("0.0.0.0:8500".parse()?));
        assert_eq!(plain.vertex, None);
        Ok(())
    }

    #[test]
    fn missing_or_bad_vertex_variables_are_named() -> anyhow::Result<()> {
        assert_eq!(env(&[("AIP_STORAGE_URI", "gs://b/m"), ("AIP_HTTP_PORT", "")])?, None);
        let defaulted = env(&[("AIP_HEALTH_ROUTE", "/h"), ("AIP_PREDICT_ROUTE", "/p")])?;
        assert_eq!(defaulted.map(|v| v.http_port), Some(DEFAULT_VERTEX_PORT));
        for (vars, expected) in [
            (&[("AIP_HTTP_PORT", "8080"), ("AIP_PREDICT_ROUTE", "/p")][..], "AIP_HEALTH_ROUTE is not set"),
            (
                &[("AIP_HTTP_PORT", "http"), ("AIP_HEALTH_ROUTE", "/h"), ("AIP_PREDICT_ROUTE", "/p")],
                "AIP_HTTP_PORT",
            ),
            (
                &[("AIP_HEALTH_ROUTE", "/h"), ("AIP_PREDICT_ROUTE", "predict")],
                "AIP_PREDICT_ROUTE=\"predict\"",
            ),
        ] {
            let message = env(vars).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains(expected), "{vars:?}: {message}");
        }
        let no_model = env(&VERTEX[..3])?;
        let message = options(&args(&[])?, no_model).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("AIP_STORAGE_URI is not set"), "{message}");
        Ok(())
    }
}
