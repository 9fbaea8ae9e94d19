//! Prometheus metrics, named as TF Serving exports them where TF has an equivalent.
//!
//! TF monitoring names (`/tensorflow/serving/request_count`) become Prometheus names by turning every
//! character outside `[a-zA-Z0-9_]` into `:`, so dashboards built on TF Serving keep working. Metrics TF
//! lacks (queue depth, load time) are prefixed `kiln_`. Each server owns its registry, so several servers
//! in one process (tests) do not mix counts.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Which API a request used, as TF's `API` label spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Predict,
    GetModelMetadata,
    GetModelStatus,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Predict => "predict",
            Api::GetModelMetadata => "get_model_metadata",
            Api::GetModelStatus => "get_model_status",
        }
    }
}

/// Which transport a request came in on (TF's `entrypoint` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entrypoint {
    Rest,
    Grpc,
}

impl Entrypoint {
    fn name(self) -> &'static str {
        match self {
            Entrypoint::Rest => "REST",
            Entrypoint::Grpc => "GRPC",
        }
    }
}

/// Why a queued request was dropped before the engine saw it (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancelled {
    /// Its deadline (gRPC `grpc-timeout`, REST `--rest_api_timeout_in_ms`) passed while it waited.
    DeadlineExceeded,
    /// Its client hung up, so nobody would read the answer.
    ClientGone,
}

impl Cancelled {
    fn name(self) -> &'static str {
        match self {
            Cancelled::DeadlineExceeded => "deadline_exceeded",
            Cancelled::ClientGone => "client_gone",
        }
    }
}

/// What a model source was doing when it failed (the `operation` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceOperation {
    /// Listing the base path's versions.
    List,
    /// Fetching a version into a local directory (an object-store download).
    Materialize,
}

impl SourceOperation {
    fn name(self) -> &'static str {
        match self {
            SourceOperation::List => "list",
            SourceOperation::Materialize => "materialize",
        }
    }
}

/// Every metric the server records.
pub(crate) struct Metrics {
    registry: Registry,
    request_count: IntCounterVec,
    request_latency: HistogramVec,
    batch_size: HistogramVec,
    cancelled: IntCounterVec,
    unauthenticated: IntCounterVec,
    queue_depth: IntGaugeVec,
    load_seconds: HistogramVec,
    warmup_latency: HistogramVec,
    load_attempts: IntCounterVec,
    source_errors: IntCounterVec,
}

/// Latency buckets in microseconds, 100 µs to 60 s.
const LATENCY_BUCKETS_US: &[f64] =
    &[100.0, 250.0, 500.0, 1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 3e7, 6e7];

impl Metrics {
    pub(crate) fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let request_count = IntCounterVec::new(
            Opts::new(":tensorflow:serving:request_count", "The total number of requests."),
            &["model_name", "API", "entrypoint", "status"],
        )?;
        let request_latency = HistogramVec::new(
            HistogramOpts::new(
                ":tensorflow:serving:request_latency",
                "Distribution of wall time (in microseconds) for requests.",
            )
            .buckets(LATENCY_BUCKETS_US.to_vec()),
            &["model_name", "API", "entrypoint"],
        )?;
        let batch_size = HistogramVec::new(
            HistogramOpts::new(
                ":tensorflow:serving:batching_session:processed_batch_size",
                "Instances per batch run by the graph.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]),
            &["model_name"],
        )?;
        let cancelled = IntCounterVec::new(
            Opts::new(
                "kiln_cancelled_requests_total",
                "Queued requests dropped before reaching the engine: their deadline passed or their client had gone.",
            ),
            &["model_name", "reason"],
        )?;
        let unauthenticated = IntCounterVec::new(
            Opts::new(
                "kiln_unauthenticated_requests_total",
                "Requests refused for want of a valid bearer token (--auth_token_file), by port and why.",
            ),
            &["entrypoint", "reason"],
        )?;
        let queue_depth = IntGaugeVec::new(
            Opts::new("kiln_queue_depth", "Instances waiting in a version's batch queue."),
            &["model_name", "version"],
        )?;
        let load_seconds = HistogramVec::new(
            HistogramOpts::new(
                "kiln_model_load_seconds",
                "Time to verify, compile and warm up a model version.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0]),
            &["model_name"],
        )?;
        let warmup_latency = HistogramVec::new(
            HistogramOpts::new(
                ":tensorflow:serving:model_warmup_latency",
                "Distribution of wall time (in microseconds) for warming up the model.",
            )
            .buckets(LATENCY_BUCKETS_US.to_vec()),
            &["model_path", "status"],
        )?;
        let load_attempts = IntCounterVec::new(
            Opts::new(
                ":tensorflow:core:load_attempt_count",
                "The number of times a SavedModel was attempted to load.",
            ),
            &["model_path", "status"],
        )?;
        registry.register(Box::new(request_count.clone()))?;
        registry.register(Box::new(request_latency.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(cancelled.clone()))?;
        registry.register(Box::new(unauthenticated.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(load_seconds.clone()))?;
        registry.register(Box::new(warmup_latency.clone()))?;
        let source_errors = IntCounterVec::new(
            Opts::new(
                "kiln_model_source_errors_total",
                "Failed polls of a model's base path (a store down, slow or refusing) while serving versions already loaded.",
            ),
            &["model_name", "operation"],
        )?;
        registry.register(Box::new(load_attempts.clone()))?;
        registry.register(Box::new(source_errors.clone()))?;
        Ok(Metrics {
            registry,
            request_count,
            request_latency,
            batch_size,
            cancelled,
            unauthenticated,
            queue_depth,
            load_seconds,
            warmup_latency,
            load_attempts,
            source_errors,
        })
    }

    /// Records one finished request; `status` is the TF code name (`OK`, `INVALID_ARGUMENT`, ...).
    pub(crate) fn observe_request(
        &self,
        model: &str,
        api: Api,
        entrypoint: Entrypoint,
        status: &str,
        elapsed: Duration,
    ) {
        let (api, entrypoint) = (api.name(), entrypoint.name());
        self.request_count.with_label_values(&[model, api, entrypoint, status]).inc();
        self.request_latency
            .with_label_values(&[model, api, entrypoint])
            .observe(elapsed.as_secs_f64() * 1e6);
    }

    pub(crate) fn observe_batch(&self, model: &str, size: usize) {
        self.batch_size.with_label_values(&[model]).observe(size as f64);
    }

    /// Counts a request dropped unrun, by why: `deadline_exceeded` or `client_gone`.
    pub(crate) fn count_cancelled(&self, model: &str, reason: Cancelled) {
        self.cancelled.with_label_values(&[model, reason.name()]).inc();
    }

    /// Counts a request refused by the token check, by why: `missing`, `not_bearer` or `invalid`.
    pub(crate) fn count_unauthenticated(&self, entrypoint: Entrypoint, reason: &str) {
        self.unauthenticated.with_label_values(&[entrypoint.name(), reason]).inc();
    }

    pub(crate) fn set_queue_depth(&self, model: &str, version: u64, depth: usize) {
        self.queue_depth
            .with_label_values(&[model, &version.to_string()])
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    pub(crate) fn observe_load(&self, model: &str, path: &str, ok: bool, elapsed: Duration) {
        self.load_attempts.with_label_values(&[path, if ok { "success" } else { "fail" }]).inc();
        if ok {
            self.load_seconds.with_label_values(&[model]).observe(elapsed.as_secs_f64());
        }
    }

    pub(crate) fn observe_warmup(&self, path: &str, ok: bool, elapsed: Duration) {
        self.warmup_latency
            .with_label_values(&[path, if ok { "OK" } else { "FAILED" }])
            .observe(elapsed.as_secs_f64() * 1e6);
    }

    /// Counts a base path that could not be listed or a version that could not be fetched, not counting
    /// versions whose content is bad (those are load failures).
    pub(crate) fn count_source_error(&self, model: &str, operation: SourceOperation) {
        self.source_errors.with_label_values(&[model, operation.name()]).inc();
    }

    /// Every metric's current values, for the status page's summary (web.rs).
    pub(crate) fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails for metric families prometheus itself produced inconsistently.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("cannot encode metrics: {error}");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
