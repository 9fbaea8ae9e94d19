//! Vertex AI's custom-container contract on the REST port: a health route and a predict route at the
//! paths Vertex chooses (`AIP_HEALTH_ROUTE`, `AIP_PREDICT_ROUTE`), serving one model.
//!
//! Vertex forwards `{"instances": [...], "parameters": {...}}` and expects `{"predictions": [...]}`, one
//! prediction per instance in order. An instance is what a TF Serving row holds: a base64 string (the
//! model decodes it), `{"b64": "..."}` (the server decodes it) or `{"string_input": ...}` holding either.
//! Each prediction is `{"label": "...", "confidence": 0.97}`, the top-1 class and its probability,
//! whatever outputs the signature lists, so a Vertex client reads the same shape from every kiln model.
//! kiln's models take no parameters: `parameters` may be absent, null or `{}`, and a key in it is refused
//! by name rather than silently ignored. Errors keep the REST port's status codes (400 bad request, 413
//! too large, 429 overloaded, 503 no version loaded, 504 deadline) with `{"error": "..."}`, which Vertex
//! relays to the caller.
//!
//! The routes are matched exactly, before TF Serving's `/v1/...` dispatch: Vertex's default routes
//! (`/v1/endpoints/<id>/deployedModels/<id>:predict`) start with `/v1/` too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;

use crate::error::{ServeError, code_name};
use crate::metrics::{Api, Entrypoint, Metrics};
use crate::predict::{self, PredictInput, Predicted};
use crate::rest;
use crate::signature::{self, SignaturePlan};
use crate::table::{ModelTable, VersionChoice};

/// Where Vertex sends health checks and predictions, and which model answers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VertexRoutes {
    /// `AIP_HEALTH_ROUTE`: GET answers 200 once `model` has an AVAILABLE version, 503 before.
    pub health_route: String,
    /// `AIP_PREDICT_ROUTE`: POST takes Vertex's `{"instances": [...]}` body.
    pub predict_route: String,
    /// The served model both routes stand for (a container serves one model on Vertex).
    pub model: String,
}

/// What the Vertex routes share with the rest of the REST port.
pub(crate) struct VertexState {
    pub(crate) routes: VertexRoutes,
    pub(crate) table: Arc<ModelTable>,
    pub(crate) metrics: Arc<Metrics>,
    /// The REST deadline (`--rest_api_timeout_in_ms`).
    pub(crate) timeout: Duration,
    /// The REST body limit.
    pub(crate) max_body_bytes: usize,
}

/// `router` with the Vertex routes answered in front of it; every other request passes through.
pub(crate) fn layer(router: axum::Router, state: Arc<VertexState>) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(state, route))
}

async fn route(State(state): State<Arc<VertexState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if request.method() == Method::GET && path == state.routes.health_route {
        return health(&state);
    }
    if request.method() == Method::POST && path == state.routes.predict_route {
        return predict_response(&state, request).await;
    }
    next.run(request).await
}

fn health(state: &VertexState) -> Response {
    let model = &state.routes.model;
    let ready = state.table.readiness().into_iter().any(|(name, ready)| ready && name == *model);
    if ready {
        rest::json_response(StatusCode::OK, "{\"status\": \"ready\"}\n".into())
    } else {
        rest::error_response(&ServeError::Unavailable(format!(
            "model `{model}` has no AVAILABLE version yet"
        )))
    }
}

/// Runs one predict request within the REST deadline and records it in the REST metrics.
async fn predict_response(state: &VertexState, request: Request) -> Response {
    let started = Instant::now();
    let deadline = started + state.timeout;
    let handled = predict_body(state, request, deadline);
    let outcome = match tokio::time::timeout_at(deadline.into(), handled).await {
        Err(_) | Ok(Err(ServeError::DeadlineExceeded(_))) => Err(ServeError::DeadlineExceeded(format!(
            "Deadline exceeded: the request took longer than --rest_api_timeout_in_ms={}",
            state.timeout.as_millis()
        ))),
        Ok(answered) => answered,
    };
    let status = outcome.as_ref().map_or_else(|e| code_name(e.code()), |_| "OK");
    state.metrics.observe_request(
        &state.routes.model,
        Api::Predict,
        Entrypoint::Rest,
        status,
        started.elapsed(),
    );
    match outcome {
        Ok(body) => rest::json_response(StatusCode::OK, body),
        Err(error) => rest::error_response(&error),
    }
}

async fn predict_body(
    state: &VertexState,
    request: Request,
    deadline: Instant,
) -> Result<String, ServeError> {
    let body = rest::read_body(request, state.max_body_bytes).await?;
    let document = rest::parse_json(&body)?;
    let input = VertexRequest::parse(&document)?;
    let model = &state.routes.model;
    let predicted =
        predict::predict(&state.table, model, &VersionChoice::Latest, &input, Some(deadline)).await;
    // The route names the one model, so "not found" only means no version is loaded yet: the health
    // route's 503, which a caller may retry, not a 404 for a wrong URL.
    let Predicted { predictions, .. } = predicted.map_err(|error| match error {
        ServeError::NotFound(message) => {
            ServeError::Unavailable(format!("{message}: model `{model}` has no AVAILABLE version yet"))
        }
        other => other,
    })?;
    Ok(predictions_json(&predictions).to_string())
}

/// `{"predictions": [{"label": ..., "confidence": ...}, ...]}`.
fn predictions_json(predictions: &[runtime::Prediction]) -> Value {
    let rows: Vec<Value> = predictions
        .iter()
        .map(|p| serde_json::json!({ "label": p.label, "confidence": rest::float_value(p.confidence) }))
        .collect();
    serde_json::json!({ "predictions": rows })
}

/// A Vertex predict body: its `instances`, with `parameters` checked and empty.
struct VertexRequest<'d> {
    instances: &'d Value,
}

impl<'d> VertexRequest<'d> {
    fn parse(document: &'d Value) -> Result<Self, ServeError> {
        let invalid = |message: String| Err(ServeError::InvalidArgument(message));
        let Value::Object(object) = document else {
            return invalid("a Vertex predict body must be a JSON object with an 'instances' list".into());
        };
        if let Some(key) = object.keys().find(|k| !["instances", "parameters"].contains(&k.as_str())) {
            return invalid(format!(
                "unknown key '{key}': a Vertex predict body holds only 'instances' and 'parameters'"
            ));
        }
        match object.get("parameters") {
            None | Some(Value::Null) => {}
            Some(Value::Object(parameters)) => {
                if let Some(key) = parameters.keys().next() {
                    return invalid(format!(
                        "unknown parameter '{key}': kiln's image models take no parameters"
                    ));
                }
            }
            Some(_) => return invalid("'parameters' must be a JSON object".into()),
        }
        let Some(instances) = object.get("instances") else {
            return invalid("missing 'instances': a Vertex predict body needs an 'instances' list".into());
        };
        Ok(VertexRequest { instances })
    }
}

impl PredictInput for VertexRequest<'_> {
    fn signature_name(&self) -> &str {
        signature::DEFAULT_SIGNATURE
    }

    fn missing_signature(&self) -> ServeError {
        ServeError::FailedPrecondition(format!(
            "the model has no \"{}\" signature, which Vertex predictions run",
            signature::DEFAULT_SIGNATURE
        ))
    }

    fn instances(&self, plan: &SignaturePlan, _max_instances: usize) -> Result<Vec<Vec<u8>>, ServeError> {
        rest::row_strings(self.instances, plan)
    }

    fn instance_error(&self, _plan: &SignaturePlan, index: usize, error: String) -> ServeError {
        ServeError::InvalidArgument(format!("instance {index} of 'instances': {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: &str) -> Option<String> {
        let document: Value = serde_json::from_str(body).ok()?;
        VertexRequest::parse(&document).err().map(|e| e.message().to_owned())
    }

    #[test]
    fn bodies_need_instances_and_no_parameters() {
        for body in [
            r#"{"instances": ["eA"]}"#,
            r#"{"instances": [], "parameters": {}}"#,
            r#"{"instances": 1, "parameters": null}"#,
        ] {
            assert_eq!(refusal(body), None, "{body}");
        }
        for (body, expected) in [
            (r#"["eA"]"#, "must be a JSON object"),
            (r#"{"parameters": {}}"#, "missing 'instances'"),
            (
                r#"{"instances": ["eA"], "parameters": {"maxPredictions": 5}}"#,
                "unknown parameter 'maxPredictions'",
            ),
            (r#"{"instances": ["eA"], "parameters": [1]}"#, "'parameters' must be a JSON object"),
            (r#"{"instances": ["eA"], "inputs": ["eA"]}"#, "unknown key 'inputs'"),
        ] {
            let message = refusal(body).unwrap_or_default();
            assert!(message.contains(expected), "{body}: {message}");
        }
    }

    #[test]
    fn predictions_carry_label_and_confidence() {
        let prediction = runtime::Prediction { label: "cat".into(), class_index: 3, confidence: 0.98 };
        assert_eq!(
            predictions_json(&[prediction]).to_string(),
            r#"{"predictions":[{"confidence":0.98,"label":"cat"}]}"#
        );
    }
}
