//! `kiln serve`'s server: TF Serving's REST and gRPC APIs over kiln artifacts.
//!
//! A drop-in for `tensorflow_model_server`: the same REST paths and JSON, the same gRPC services and
//! field numbers (`proto/`), the same flags' meaning (`--model_config_file`, batching and monitoring
//! files in TF's text format), with what TF Serving lacks added: model-aware readiness (`/readyz`),
//! liveness (`/healthz`), a body limit answered with 413, and load shedding with 429.
//!
//! Data path: [`Server`] binds axum (REST) and tonic (gRPC) listeners that share one model table. One
//! watcher thread per model polls its base path and loads, warms up and unloads versions. Each loaded
//! version owns a batching queue whose dedicated thread decodes images and runs the graph, so the async
//! executor never does CPU-heavy work.
//!
//! ```no_run
//! use serve::{ModelConfig, Server, ServerOptions};
//! # async fn run() -> Result<(), serve::ServerError> {
//! let mut options = ServerOptions::new(vec![ModelConfig::new("vit", std::path::Path::new("/models/vit"))]);
//! options.rest_addr = Some("127.0.0.1:0".parse().expect("address"));
//! let server = Server::start(options).await?;
//! println!("REST on {:?}", server.rest_addr());
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod auth;
mod batch;
mod codec;
mod config;
mod connections;
mod deadline;
mod error;
mod grpc;
mod kserve;
mod management;
mod metrics;
mod predict;
mod rest;
mod server;
mod signature;
mod source;
mod table;
mod textproto;
mod tls;
mod vertex;
mod watcher;
mod web;

/// Protobuf types and gRPC stubs generated from `proto/` (TF Serving's and KServe v2's packages), for
/// clients and tests.
pub mod proto {
    /// Package `tensorflow`: tensors, shapes, signatures.
    #[allow(missing_docs, clippy::all)]
    pub mod tensorflow {
        tonic::include_proto!("tensorflow");
        /// Package `tensorflow.error`: status codes.
        pub mod error {
            tonic::include_proto!("tensorflow.error");
        }
        /// Package `tensorflow.serving`: the serving APIs.
        pub mod serving {
            tonic::include_proto!("tensorflow.serving");
        }
    }
    /// Package `inference`: the Open Inference Protocol (KServe v2) gRPC API.
    #[allow(missing_docs, clippy::all)]
    pub mod inference {
        tonic::include_proto!("inference");
    }
}

pub use auth::TokenFileError;
pub use config::{
    BatchingParameters, ConfigError, DEFAULT_PROMETHEUS_PATH, ModelConfig, MonitoringConfig, VersionPolicy,
    read_batching_parameters, read_model_config, read_monitoring_config,
};
pub use error::ServeError;
pub use grpc::string_instances;
pub use rest::{DEFAULT_MAX_BODY_BYTES, predict_body_instances};
pub use server::{
    DEFAULT_AUTH_TOKEN_POLL_INTERVAL, Server, ServerError, ServerOptions, UNBATCHED_QUEUE_CAPACITY,
};
pub use source::{BasePath, BasePathError};
pub use table::{VersionChoice, VersionState, VersionStatus};
pub use tls::DEFAULT_SSL_CONFIG_POLL_INTERVAL;
pub use vertex::VertexRoutes;
