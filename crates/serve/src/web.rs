//! The status and try-it page on the REST port (`GET /`, off with `--disable_web_ui`).
//!
//! One static HTML file (`web/index.html`, no external assets) and one JSON endpoint it polls,
//! [`STATUS_PATH`]: every model's versions and states (with the error of a failed version), the serving
//! version's signatures, and a summary of the Prometheus metrics the server already keeps (request
//! counts, predict latency percentiles, batch sizes). Predictions go through the real
//! `/v1/models/<m>:predict` endpoint with `{"b64": ...}` instances, same origin, so CORS can stay off.
//!
//! With `--auth_token_file` the page itself is served without a token (it holds no data), and the page
//! asks for a token and sends it as `Authorization: Bearer` on its status and predict calls, which the
//! auth layer checks like any other API call.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::proto::MetricFamily;
use serde::Serialize;

use crate::error::code_name;
use crate::metrics::Metrics;
use crate::rest;
use crate::signature;
use crate::table::{ModelTable, VersionChoice, VersionStatus};

/// The page.
const INDEX_HTML: &str = include_str!("web/index.html");

/// Where the page is served.
pub(crate) const PAGE_PATH: &str = "/";

/// The JSON the page polls; it needs a token like any API call.
pub(crate) const STATUS_PATH: &str = "/web/status";

/// What the page's handlers read.
pub(crate) struct WebState {
    pub(crate) table: Arc<ModelTable>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Serves the page and its status JSON in front of `router`.
pub(crate) fn layer(router: axum::Router, state: Arc<WebState>) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(state, route))
}

async fn route(State(state): State<Arc<WebState>>, request: Request, next: Next) -> Response {
    if request.method() == Method::GET {
        match request.uri().path() {
            PAGE_PATH => return page(),
            STATUS_PATH => {
                let body = serde_json::to_string(&status(&state.table, &state.metrics.gather()))
                    .unwrap_or_else(|e| format!("{{\"error\": \"cannot encode the status: {e}\"}}"));
                return rest::json_response(StatusCode::OK, body);
            }
            _ => {}
        }
    }
    next.run(request).await
}

fn page() -> Response {
    let mut response = INDEX_HTML.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    // The page runs only its own inline script and talks only to its own origin.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src data: blob:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

#[derive(Serialize)]
struct StatusJson {
    models: Vec<ModelJson>,
}

#[derive(Serialize)]
struct ModelJson {
    name: String,
    versions: Vec<VersionJson>,
    /// The version `:predict` without a version goes to, if any is AVAILABLE.
    serving_version: Option<String>,
    /// How many classes the serving version knows.
    classes: Option<usize>,
    signature_def: Option<BTreeMap<String, signature::json::SignatureJson>>,
    traffic: Traffic,
}

#[derive(Serialize)]
struct VersionJson {
    version: String,
    state: &'static str,
    error_code: &'static str,
    error_message: String,
}

/// One model's share of the metrics, summed over APIs and ports since the server started.
#[derive(Serialize, Default, Debug, PartialEq)]
struct Traffic {
    /// Requests of every API; the page turns two polls into a rate.
    requests: u64,
    /// Those answered with another status than OK.
    errors: u64,
    /// Predict latency in microseconds, interpolated within the histogram's buckets.
    predict_latency_us: Percentiles,
    /// Batches the graph ran.
    batches: u64,
    /// Instances in those batches.
    batched_instances: u64,
    /// `[upper bound, batches of at most that size]`, cumulative as Prometheus keeps them.
    batch_size_buckets: Vec<(f64, u64)>,
}

#[derive(Serialize, Default, Debug, PartialEq)]
struct Percentiles {
    count: u64,
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
}

fn status(table: &ModelTable, metrics: &[MetricFamily]) -> StatusJson {
    let models = table
        .readiness()
        .into_iter()
        .map(|(name, _)| {
            let versions = table.status(&name, &VersionChoice::Latest).unwrap_or_default();
            let servable = table.resolve(&name, &VersionChoice::Latest).ok();
            ModelJson {
                versions: versions
                    .into_iter()
                    .map(|VersionStatus { version, state, error_code, error_message }| VersionJson {
                        version: version.to_string(),
                        state: state.name(),
                        error_code: code_name(error_code),
                        error_message,
                    })
                    .collect(),
                serving_version: servable.as_ref().map(|s| s.version.to_string()),
                classes: servable.as_ref().map(|s| s.model.manifest().labels.len()),
                signature_def: servable.as_ref().map(|s| signature::json::signature_defs(s.model.manifest())),
                traffic: traffic(metrics, &name),
                name,
            }
        })
        .collect();
    StatusJson { models }
}

fn label<'m>(metric: &'m prometheus::proto::Metric, name: &str) -> Option<&'m str> {
    metric.get_label().iter().find(|l| l.name() == name).map(|l| l.value())
}

/// Sums `model`'s request counts, predict latencies and batch sizes out of the gathered metrics.
fn traffic(families: &[MetricFamily], model: &str) -> Traffic {
    let mut traffic = Traffic::default();
    let mut latency: Vec<(f64, u64)> = Vec::new();
    for family in families {
        let of_model = family.get_metric().iter().filter(|m| label(m, "model_name") == Some(model));
        match family.name() {
            ":tensorflow:serving:request_count" => {
                for metric in of_model {
                    let count = metric.get_counter().get_value() as u64;
                    traffic.requests += count;
                    if label(metric, "status") != Some("OK") {
                        traffic.errors += count;
                    }
                }
            }
            ":tensorflow:serving:request_latency" => {
                for metric in of_model.filter(|m| label(m, "API") == Some("predict")) {
                    add_buckets(&mut latency, metric.get_histogram());
                    traffic.predict_latency_us.count += metric.get_histogram().get_sample_count();
                }
            }
            ":tensorflow:serving:batching_session:processed_batch_size" => {
                for metric in of_model {
                    let histogram = metric.get_histogram();
                    traffic.batches += histogram.get_sample_count();
                    traffic.batched_instances += histogram.get_sample_sum() as u64;
                    add_buckets(&mut traffic.batch_size_buckets, histogram);
                }
            }
            _ => {}
        }
    }
    let count = traffic.predict_latency_us.count;
    traffic.predict_latency_us.p50 = percentile(&latency, count, 0.50);
    traffic.predict_latency_us.p90 = percentile(&latency, count, 0.90);
    traffic.predict_latency_us.p99 = percentile(&latency, count, 0.99);
    traffic
}

/// Adds a histogram's cumulative buckets into `sum` (same bounds for every label set of one family).
fn add_buckets(sum: &mut Vec<(f64, u64)>, histogram: &prometheus::proto::Histogram) {
    for (index, bucket) in histogram.get_bucket().iter().enumerate() {
        match sum.get_mut(index) {
            Some(slot) => slot.1 += bucket.cumulative_count(),
            None => sum.push((bucket.upper_bound(), bucket.cumulative_count())),
        }
    }
}

/// The `q` quantile of `count` samples in cumulative `buckets`, interpolated linearly inside its bucket
/// as Prometheus' `histogram_quantile` does; past the last bound it is that bound.
fn percentile(buckets: &[(f64, u64)], count: u64, q: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, cumulative) in buckets {
        if cumulative as f64 >= rank {
            let within = (cumulative - lower.1) as f64;
            let fraction = if within > 0.0 { (rank - lower.1 as f64) / within } else { 1.0 };
            return Some(lower.0 + (bound - lower.0) * fraction);
        }
        lower = (bound, cumulative);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_within_buckets() {
        let buckets = [(100.0, 0), (1000.0, 50), (10000.0, 100)];
        assert_eq!(percentile(&buckets, 0, 0.5), None);
        assert_eq!(percentile(&buckets, 100, 0.5), Some(1000.0));
        assert_eq!(percentile(&buckets, 100, 0.25), Some(550.0));
        assert_eq!(percentile(&buckets, 100, 0.9), Some(8200.0));
        // Samples past every bound report the last bound.
        assert_eq!(percentile(&[(100.0, 1)], 4, 0.99), Some(100.0));
    }

    #[test]
    fn traffic_sums_one_models_metrics() -> Result<(), prometheus::Error> {
        use crate::metrics::{Api, Entrypoint};
        let metrics = Metrics::new()?;
        let ms = std::time::Duration::from_millis(2);
        metrics.observe_request("vit", Api::Predict, Entrypoint::Rest, "OK", ms);
        metrics.observe_request("vit", Api::Predict, Entrypoint::Grpc, "INVALID_ARGUMENT", ms);
        metrics.observe_request("vit", Api::GetModelStatus, Entrypoint::Rest, "OK", ms);
        metrics.observe_request("other", Api::Predict, Entrypoint::Rest, "OK", ms);
        metrics.observe_batch("vit", 3);
        let traffic = traffic(&metrics.gather(), "vit");
        assert_eq!((traffic.requests, traffic.errors), (3, 1));
        assert_eq!(traffic.predict_latency_us.count, 2);
        // 2 ms lies in the (1 ms, 2.5 ms] bucket.
        let p50 = traffic.predict_latency_us.p50.unwrap_or_default();
        assert!((1000.0..=2500.0).contains(&p50), "p50 {p50}");
        assert_eq!((traffic.batches, traffic.batched_instances), (1, 3));
        assert_eq!(traffic.batch_size_buckets.get(2), Some(&(4.0, 1)));
        Ok(())
    }
}
