//! TF Serving's REST API on axum: the same paths, JSON shapes, error bodies and status codes.
//!
//! Routing is not axum's: TF Serving dispatches `/v1/...` with two case-insensitive regexes
//! (http_rest_api_util.cc), and a `:predict` suffix inside a path segment does not fit a router pattern,
//! so [`dispatch`] applies those regexes verbatim. Besides `/v1`, the REST port serves Prometheus metrics,
//! `/healthz` (liveness) and `/readyz` (503 until every model has an AVAILABLE version).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use artifact::Manifest;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use regex::Regex;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::MonitoringConfig;
use crate::error::{ServeError, code_name};
use crate::kserve;
use crate::metrics::{Api, Entrypoint, Metrics};
use crate::predict::{self, PredictInput, Predicted};
use crate::signature::{self, OutputValue, SignaturePlan};
use crate::table::{ModelTable, VersionChoice, VersionStatus};

/// TF's POST regex, anchored because TF uses RE2::FullMatch.
static POST_PATH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)$",
    )
    .expect("valid regex")
});

/// TF's GET regex, anchored.
static GET_PATH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?$")
        .expect("valid regex")
});

/// What TF Serving accepts in a gzip body once inflated, and kiln's default body limit.
pub const DEFAULT_MAX_BODY_BYTES: usize = 100 << 20;

/// How long an error message may quote the client's JSON before eliding the rest.
const QUOTE_LIMIT: usize = 200;

/// REST settings.
#[derive(Debug, Clone)]
pub(crate) struct RestOptions {
    /// Per-request deadline (`--rest_api_timeout_in_ms`).
    pub(crate) timeout: Duration,
    /// Largest request body, compressed or inflated.
    pub(crate) max_body_bytes: usize,
    pub(crate) monitoring: MonitoringConfig,
    /// Answer CORS preflights and add CORS headers (`--rest_api_enable_cors_support`).
    pub(crate) cors: bool,
}

/// State every REST handler shares.
pub(crate) struct RestState {
    pub(crate) table: Arc<ModelTable>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) options: RestOptions,
}

/// The REST router.
pub(crate) fn router(state: Arc<RestState>) -> axum::Router {
    axum::Router::new().fallback(dispatch).with_state(state)
}

async fn dispatch(State(state): State<Arc<RestState>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    // TF's dispatcher only takes `(?i)/v1/.*`, the Open Inference Protocol `/v2`; everything else falls
    // through to the other handlers.
    let tf_serving = path.get(..4).is_some_and(|prefix| prefix.eq_ignore_ascii_case("/v1/"));
    if tf_serving || kserve::rest::is_v2(&path) {
        if state.options.cors && method == Method::OPTIONS {
            return cors_preflight(&request);
        }
        let cors = state.options.cors;
        let started = Instant::now();
        let timeout = state.options.timeout;
        let mut call = Call { model: String::new(), api: None };
        // The queue drops a request still waiting at the deadline, so a 504 leaves no work behind.
        let deadline = started + timeout;
        let handled = async {
            if tf_serving {
                let body = handle_v1(&state, &mut call, method, &path, request, deadline).await?;
                Ok(json_response(StatusCode::OK, body))
            } else {
                kserve::rest::handle(&state, &mut call, method, &path, request, deadline).await
            }
        };
        // Whether the timer here or the queue noticed first, the client hears which flag set the deadline.
        let outcome = match tokio::time::timeout_at(deadline.into(), handled).await {
            Err(_) | Ok(Err(ServeError::DeadlineExceeded(_))) => Err(ServeError::DeadlineExceeded(format!(
                "Deadline exceeded: the request took longer than --rest_api_timeout_in_ms={}",
                timeout.as_millis()
            ))),
            Ok(answered) => answered,
        };
        if let Some(api) = call.api {
            let status = outcome.as_ref().map_or_else(|e| code_name(e.code()), |_| "OK");
            state.metrics.observe_request(&call.model, api, Entrypoint::Rest, status, started.elapsed());
        }
        let mut response = outcome.unwrap_or_else(|error| error_response(&error));
        if cors {
            add_cors_headers(&mut response);
        }
        return response;
    }
    if method == Method::GET && state.options.monitoring.enable && path == state.options.monitoring.path {
        let mut response = state.metrics.render().into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return response;
    }
    match (method, path.as_str()) {
        (Method::GET, "/healthz") => json_response(StatusCode::OK, "{\"status\": \"alive\"}\n".into()),
        (Method::GET, "/readyz") => readiness(&state.table),
        _ => (StatusCode::NOT_FOUND, "Not Found\n").into_response(),
    }
}

/// Which model and API a `/v1` or `/v2` request turned out to be, for metrics.
pub(crate) struct Call {
    pub(crate) model: String,
    pub(crate) api: Option<Api>,
}

/// TF Serving's CORS headers: any origin, the two verbs the API uses, JSON bodies.
fn add_cors_headers(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, GET"));
    // Authorization: browsers send bearer tokens (`--auth_token_file`) only when the preflight allows it.
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Authorization"),
    );
}

/// An OPTIONS preflight: TF answers it only for a browser origin (`http://` or `https://`).
fn cors_preflight(request: &Request) -> Response {
    let origin = request.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut response = if origin.starts_with("http://") || origin.starts_with("https://") {
        json_response(StatusCode::OK, String::new())
    } else {
        error_response(&ServeError::InvalidArgument("Origin header is missing in CORS preflight".into()))
    };
    add_cors_headers(&mut response);
    response
}

fn readiness(table: &ModelTable) -> Response {
    let models: BTreeMap<String, bool> = table.readiness().into_iter().collect();
    let ready = !models.is_empty() && models.values().all(|&r| r);
    let body = pretty(&serde_json::json!({ "ready": ready, "models": models }), b"    ");
    json_response(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

async fn handle_v1(
    state: &RestState,
    call: &mut Call,
    method: Method,
    path: &str,
    request: Request,
    deadline: Instant,
) -> Result<String, ServeError> {
    let malformed = || ServeError::InvalidArgument(format!("Malformed request: {method} {path}"));
    if method == Method::POST {
        let captures = POST_PATH.captures(path).ok_or_else(malformed)?;
        let name = unescape(&captures[1]);
        let choice = version_choice(
            captures.get(2).map(|m| m.as_str()),
            captures.get(3).map(|m| unescape(m.as_str())),
        )?;
        call.model = name.clone();
        let verb = captures[4].to_ascii_lowercase();
        if verb != "predict" {
            return Err(ServeError::Unimplemented(format!(
                "{verb} is not implemented by kiln: its models take images through the predict API \
                 (POST /v1/models/{name}:predict)"
            )));
        }
        call.api = Some(Api::Predict);
        let body = read_body(request, state.options.max_body_bytes).await?;
        predict(&state.table, &name, &choice, &body, deadline).await
    } else if method == Method::GET {
        let captures = GET_PATH.captures(path).ok_or_else(malformed)?;
        let name = captures
            .get(1)
            .map(|m| unescape(m.as_str()))
            .ok_or_else(|| ServeError::InvalidArgument("Missing model name in request.".into()))?;
        let choice = version_choice(
            captures.get(2).map(|m| m.as_str()),
            captures.get(3).map(|m| unescape(m.as_str())),
        )?;
        call.model = name.clone();
        if captures.get(4).is_some() {
            call.api = Some(Api::GetModelMetadata);
            metadata(&state.table, &name, &choice)
        } else {
            call.api = Some(Api::GetModelStatus);
            status(&state.table, &name, &choice)
        }
    } else {
        Err(malformed())
    }
}

fn version_choice(version: Option<&str>, label: Option<String>) -> Result<VersionChoice, ServeError> {
    match (version, label) {
        (Some(v), _) => {
            v.parse::<i64>().ok().and_then(|v| u64::try_from(v).ok()).map(VersionChoice::Number).ok_or_else(
                || ServeError::InvalidArgument(format!("Failed to convert version: {v} to numeric.")),
            )
        }
        (None, Some(label)) => Ok(VersionChoice::Label(label)),
        (None, None) => Ok(VersionChoice::Latest),
    }
}

/// Percent-decodes a path segment (TF uses curl_easy_unescape).
pub(crate) fn unescape(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) =
                (bytes.get(i + 1).and_then(|&b| hex(b)), bytes.get(i + 2).and_then(|&b| hex(b)))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the whole body, refusing more than `limit` bytes (before or after gzip inflation) with 413.
///
/// An oversized body is still read to its end (and thrown away, within the request deadline): closing
/// a connection with unread data makes the kernel reset it, and the reset destroys the 413 answer
/// before a client that is still writing gets to read it.
pub(crate) async fn read_body(request: Request, limit: usize) -> Result<Bytes, ServeError> {
    use http_body_util::BodyExt as _;
    let too_large =
        || ServeError::PayloadTooLarge(format!("Request body is larger than the limit of {limit} bytes"));
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut over = declared.is_some_and(|n| n > limit as u64);
    let gzip = request
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let mut incoming = request.into_body();
    let mut body = Vec::with_capacity(if over { 0 } else { declared.map_or(0, |n| n as usize) });
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|_| {
            ServeError::InvalidArgument("cannot read the request body: the connection failed".into())
        })?;
        let Ok(data) = frame.into_data() else { continue };
        if !over && body.len() + data.len() > limit {
            over = true;
            body = Vec::new();
        }
        if !over {
            body.extend_from_slice(&data);
        }
    }
    if over {
        return Err(too_large());
    }
    let body = Bytes::from(body);
    if !gzip {
        return Ok(body);
    }
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| ServeError::InvalidArgument(format!("cannot inflate the gzip request body: {e}")))?;
    if inflated.len() > limit {
        return Err(too_large());
    }
    Ok(inflated.into())
}

/// Quotes a client's JSON value in an error message, eliding the middle of long values.
fn quote(value: &Value) -> String {
    let text = value.to_string();
    if text.len() <= QUOTE_LIMIT {
        return text;
    }
    let cut = (0..=QUOTE_LIMIT).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}... ({} bytes)", &text[..cut], text.len())
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "Null",
        Value::Bool(_) => "Bool",
        Value::Number(_) => "Number",
        Value::String(_) => "String",
        Value::Array(_) => "Array",
        Value::Object(_) => "Object",
    }
}

/// The request's instances in one of TF's two layouts.
#[derive(Clone, Copy)]
enum Layout {
    Rows,
    Columns,
}

async fn predict(
    table: &ModelTable,
    name: &str,
    choice: &VersionChoice,
    body: &[u8],
    deadline: Instant,
) -> Result<String, ServeError> {
    let document = parse_json(body)?;
    let request = PredictBody::parse(&document)?;
    let Predicted { plan, predictions, .. } =
        predict::predict(table, name, choice, &request, Some(deadline)).await?;
    let layout = request.layout;
    let value = |kind: signature::OutputKind, p| match kind.value(p) {
        OutputValue::Label(label) => Value::String(label.to_owned()),
        OutputValue::Confidence(c) => float_value(c),
        OutputValue::ClassIndex(i) => Value::from(i),
    };
    let document = match layout {
        Layout::Rows => {
            let rows: Vec<Value> = predictions
                .iter()
                .map(|p| match plan.outputs.as_slice() {
                    [(_, kind)] => value(*kind, p),
                    outputs => Value::Object(
                        outputs.iter().map(|(alias, kind)| (alias.clone(), value(*kind, p))).collect(),
                    ),
                })
                .collect();
            serde_json::json!({ "predictions": rows })
        }
        Layout::Columns => {
            let column = |kind| Value::Array(predictions.iter().map(|p| value(kind, p)).collect());
            let outputs = match plan.outputs.as_slice() {
                [(_, kind)] => column(*kind),
                outputs => Value::Object(
                    outputs.iter().map(|(alias, kind)| (alias.clone(), column(*kind))).collect(),
                ),
            };
            serde_json::json!({ "outputs": outputs })
        }
    };
    Ok(pretty(&document, b"    "))
}

/// Parses a REST predict body into its instance strings for a model with `manifest`, with the same
/// checks and messages as the predict handler, but without a socket or a loaded model.
///
/// Public so the fuzz targets (`crates/fuzz`) can reach the handling of untrusted JSON directly; the
/// server itself calls the same steps from its handler.
pub fn predict_body_instances(body: &[u8], manifest: &Manifest) -> Result<Vec<Vec<u8>>, ServeError> {
    let document = parse_json(body)?;
    let request = PredictBody::parse(&document)?;
    let plan = predict::plan(manifest, &request)?;
    request.instances(&plan, usize::MAX)
}

/// A predict body checked as far as it can be before the model is known.
struct PredictBody<'d> {
    signature_name: &'d str,
    layout: Layout,
    /// The value of `instances` or `inputs`.
    payload: &'d Value,
}

impl<'d> PredictBody<'d> {
    fn parse(document: &'d Value) -> Result<Self, ServeError> {
        let Value::Object(object) = document else {
            return Err(ServeError::InvalidArgument(format!(
                "JSON Value: {} Is not object",
                quote(document)
            )));
        };
        let signature_name = match object.get("signature_name") {
            None => signature::DEFAULT_SIGNATURE,
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(ServeError::InvalidArgument(
                    "'signature_name' key must be a string value.".into(),
                ));
            }
        };
        let (layout, payload) = match (object.get("instances"), object.get("inputs")) {
            (Some(_), Some(_)) => {
                return Err(ServeError::InvalidArgument(format!(
                    "JSON Value: {} Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist",
                    quote(document)
                )));
            }
            (None, None) => {
                return Err(ServeError::InvalidArgument("Missing 'inputs' or 'instances' key".into()));
            }
            (Some(instances), None) => (Layout::Rows, instances),
            (None, Some(inputs)) => (Layout::Columns, inputs),
        };
        Ok(PredictBody { signature_name, layout, payload })
    }
}

impl PredictInput for PredictBody<'_> {
    fn signature_name(&self) -> &str {
        self.signature_name
    }

    fn missing_signature(&self) -> ServeError {
        ServeError::InvalidArgument(format!(
            "Serving signature name: \"{}\" not found in signature def",
            self.signature_name
        ))
    }

    fn instances(&self, plan: &SignaturePlan, _: usize) -> Result<Vec<Vec<u8>>, ServeError> {
        match self.layout {
            Layout::Rows => row_strings(self.payload, plan),
            Layout::Columns => column_strings(self.payload, plan),
        }
    }

    fn instance_error(&self, plan: &SignaturePlan, index: usize, error: String) -> ServeError {
        ServeError::InvalidArgument(match self.layout {
            Layout::Rows => format!("instance {index} of 'instances': {error}"),
            Layout::Columns => format!("element {index} of input '{}': {error}", plan.input),
        })
    }
}

/// An f32 as JSON with its shortest round-trip decimal (TF writes floats the same way), not the f64
/// widening's `0.9800000190734863`; non-finite values, which JSON cannot hold, become `null`.
pub(crate) fn float_value(value: f32) -> Value {
    let text = value.to_string();
    let text = if text.contains(['.', 'e', 'E']) { text } else { format!("{text}.0") };
    text.parse::<serde_json::Number>().map(Value::Number).unwrap_or(Value::Null)
}

pub(crate) fn parse_json(body: &[u8]) -> Result<Value, ServeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ServeError::InvalidArgument("JSON Parse error: The document is empty".into()));
    }
    serde_json::from_slice(body).map_err(|error| {
        let offset = byte_offset(body, error.line(), error.column());
        let message = error.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message);
        ServeError::InvalidArgument(format!("JSON Parse error: {message} at offset: {offset}"))
    })
}

/// Converts serde_json's 1-based line and column into a byte offset, as rapidjson reports it.
fn byte_offset(body: &[u8], line: usize, column: usize) -> usize {
    let line_start: usize =
        body.split_inclusive(|&b| b == b'\n').take(line.saturating_sub(1)).map(<[u8]>::len).sum();
    (line_start + column.saturating_sub(1)).min(body.len())
}

/// One DT_STRING value: a plain string (its UTF-8 bytes, what legacy clients send: base64 text the
/// model decodes) or `{"b64": "..."}` (standard base64 the server decodes to raw bytes).
fn string_value(value: &Value) -> Result<Vec<u8>, ServeError> {
    match value {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Object(object) if object.contains_key("b64") => {
            let text = match (object.len(), &object["b64"]) {
                (1, Value::String(text)) => text,
                _ => {
                    return Err(ServeError::InvalidArgument(format!(
                        "JSON Value: {} not formatted correctly for base64 data",
                        quote(value)
                    )));
                }
            };
            B64_UNESCAPE
                .decode(text.trim_end_matches('='))
                .map_err(|e| ServeError::InvalidArgument(format!("Unable to base64 decode: {e}")))
        }
        other => Err(ServeError::InvalidArgument(format!(
            "JSON Value: {} Type: {} is not of expected type: string",
            quote(other),
            json_type(other)
        ))),
    }
}

/// absl::Base64Unescape: standard alphabet, padding optional.
const B64_UNESCAPE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
);

fn is_b64_object(value: &Value) -> bool {
    matches!(value, Value::Object(o) if o.contains_key("b64"))
}

/// Named inputs of an object: its keys must be exactly the signature's inputs.
fn named_input<'v>(object: &'v Map<String, Value>, plan: &SignaturePlan) -> Result<&'v Value, ServeError> {
    let sent: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    let expected = plan.input_set();
    if sent != expected {
        return Err(ServeError::InvalidArgument(signature::input_mismatch(&sent, &expected)));
    }
    Ok(&object[&plan.input])
}

pub(crate) fn row_strings(instances: &Value, plan: &SignaturePlan) -> Result<Vec<Vec<u8>>, ServeError> {
    let Value::Array(rows) = instances else {
        return Err(ServeError::InvalidArgument(format!(
            "JSON Value: {} Expecting 'instances' to be an list/array",
            quote(instances)
        )));
    };
    if rows.is_empty() {
        return Err(ServeError::InvalidArgument(format!(
            "JSON Value: {} No values in 'instances' array",
            quote(instances)
        )));
    }
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let value = match row {
                Value::Object(object) if !is_b64_object(row) => named_input(object, plan),
                other => Ok(other),
            };
            value.and_then(string_value).map_err(|e| e.context(format_args!("instance {i} of 'instances'")))
        })
        .collect()
}

fn column_strings(inputs: &Value, plan: &SignaturePlan) -> Result<Vec<Vec<u8>>, ServeError> {
    let value = match inputs {
        Value::Object(object) if !is_b64_object(inputs) => named_input(object, plan)?,
        other => other,
    };
    let Value::Array(elements) = value else {
        return Err(ServeError::InvalidArgument(format!(
            "input '{}' has shape [-1]: 'inputs' must give it a list of strings, found {}",
            plan.input,
            quote(value)
        )));
    };
    elements
        .iter()
        .enumerate()
        .map(|(i, element)| {
            string_value(element)
                .map_err(|e| e.context(format_args!("element {i} of input '{}'", plan.input)))
        })
        .collect()
}

#[derive(Serialize)]
struct StatusJson {
    error_code: &'static str,
    error_message: String,
}

#[derive(Serialize)]
struct VersionStatusJson {
    version: String,
    state: &'static str,
    status: StatusJson,
}

#[derive(Serialize)]
struct ModelStatusJson {
    model_version_status: Vec<VersionStatusJson>,
}

/// GetModelStatus as TF prints it: proto3 JSON with 1-space indent, int64 as strings.
fn status(table: &ModelTable, name: &str, choice: &VersionChoice) -> Result<String, ServeError> {
    let versions = table.status(name, choice)?;
    let json = ModelStatusJson {
        model_version_status: versions
            .into_iter()
            .map(|VersionStatus { version, state, error_code, error_message }| VersionStatusJson {
                version: version.to_string(),
                state: state.name(),
                status: StatusJson { error_code: code_name(error_code), error_message },
            })
            .collect(),
    };
    Ok(pretty(&json, b" "))
}

#[derive(Serialize)]
struct ModelSpecJson {
    name: String,
    signature_name: String,
    version: String,
}

#[derive(Serialize)]
struct SignatureDefMapJson {
    signature_def: BTreeMap<String, signature::json::SignatureJson>,
}

/// TF Serving's metadata map, plus kiln's `content_digest` (the gRPC metadata field of the same name):
/// clients read `metadata.signature_def` and are unaffected by one more key.
#[derive(Serialize)]
struct MetadataJson<'s> {
    signature_def: SignatureDefMapJson,
    content_digest: &'s str,
}

#[derive(Serialize)]
struct ModelMetadataJson<'s> {
    model_spec: ModelSpecJson,
    metadata: MetadataJson<'s>,
}

fn metadata(table: &ModelTable, name: &str, choice: &VersionChoice) -> Result<String, ServeError> {
    let servable = table.resolve(name, choice)?;
    let json = ModelMetadataJson {
        model_spec: ModelSpecJson {
            name: name.to_owned(),
            signature_name: String::new(),
            version: servable.version.to_string(),
        },
        metadata: MetadataJson {
            signature_def: SignatureDefMapJson {
                signature_def: signature::json::signature_defs(servable.model.manifest()),
            },
            content_digest: &servable.content_digest,
        },
    };
    Ok(pretty(&json, b"    "))
}

fn pretty(value: &impl Serialize, indent: &[u8]) -> String {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(
        &mut out,
        serde_json::ser::PrettyFormatter::with_indent(indent),
    );
    // Serializing these plain structs and values into a Vec cannot fail.
    let _ = value.serialize(&mut serializer);
    out.push(b'\n');
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// TF Serving's REST error: the status for the code and `{"error": message}`.
pub(crate) fn error_response(error: &ServeError) -> Response {
    json_response(error.http_status(), pretty(&serde_json::json!({ "error": error.message() }), b"    "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_path_regexes_match_case_insensitively_and_fully() {
        let c = POST_PATH
            .captures("/V1/Models/vit/versions/3:PREDICT")
            .map(|c| (c[1].to_owned(), c[2].to_owned()));
        assert_eq!(c, Some(("vit".into(), "3".into())));
        assert!(POST_PATH.is_match("/v1/models/vit/labels/stable:predict"));
        assert!(POST_PATH.is_match("/v1/models/vit:classify"));
        assert!(!POST_PATH.is_match("/v1/models/vit"));
        assert!(!POST_PATH.is_match("/v1/models/vit:predict/extra"));
        assert!(!POST_PATH.is_match("/v1/models/vit/versions/x:predict"));
        assert!(GET_PATH.is_match("/v1/models/vit/versions/3/metadata"));
        assert!(GET_PATH.is_match("/v1/models"));
        assert!(!GET_PATH.is_match("/v1/models/vit:predict"));
        assert_eq!(unescape("my%20model%zz"), "my model%zz");
    }

    #[test]
    fn floats_keep_their_shortest_f32_spelling() {
        assert_eq!(float_value(0.98).to_string(), "0.98");
        assert_eq!(float_value(1.0).to_string(), "1.0");
        assert_eq!(float_value(1e-7).to_string(), "1e-7");
        assert_eq!(float_value(f32::NAN), Value::Null);
    }

    /// A manifest with one `serving_default` signature taking `string_input`, for the body parser.
    fn string_input_manifest() -> Result<Manifest, serde_json::Error> {
        serde_json::from_value(serde_json::json!({
            "format_version": 3,
            "graph": {"file": "g.tar", "height": 4, "width": 4, "confidence_output": "c",
                      "class_output": "i", "precision": "f32"},
            "signatures": {"serving_default": {"method_name": "tensorflow/serving/predict",
                "inputs": {"string_input": {"dtype": "DT_STRING", "shape": [-1], "name": "s:0"}},
                "outputs": {"label": {"dtype": "DT_STRING", "shape": [-1], "name": "l:0"}}}},
            "labels": ["a"],
            "preprocess": {"processor": "ViTImageProcessor", "decoder": "pillow", "exif_orientation": true,
                           "resize": "pil", "resample": "bilinear", "size": {"height": 4, "width": 4},
                           "crop": null, "channel_order": "rgb", "transparency_to_white": false,
                           "scale": [1.0, 1.0, 1.0],
                           "offset": [0.0, 0.0, 0.0]},
            "provenance": {"exporter": "t", "source_format": "safetensors", "architecture": "t",
                           "sources": [], "created_unix": 0},
            "warmup": [],
            "files": {}
        }))
    }

    #[test]
    fn predict_bodies_parse_to_instance_strings_in_both_layouts() -> Result<(), Box<dyn std::error::Error>> {
        let manifest = string_input_manifest()?;
        let rows = br#"{"instances": ["aGk=", {"b64": "aGk="}, {"string_input": "eA"}]}"#;
        assert_eq!(
            predict_body_instances(rows, &manifest)?,
            [b"aGk=".to_vec(), b"hi".to_vec(), b"eA".to_vec()]
        );
        let columns = br#"{"signature_name": "serving_default", "inputs": {"string_input": ["eA"]}}"#;
        assert_eq!(predict_body_instances(columns, &manifest)?, [b"eA".to_vec()]);
        let unknown = br#"{"signature_name": "other", "instances": ["eA"]}"#;
        let message = predict_body_instances(unknown, &manifest).err().map(|e| e.message().to_owned());
        assert_eq!(message.as_deref(), Some("Serving signature name: \"other\" not found in signature def"));
        Ok(())
    }

    #[test]
    fn json_errors_report_byte_offsets() {
        let message = parse_json(b"{\n \"a\": }").err().map(|e| e.message().to_owned());
        assert_eq!(message.as_deref(), Some("JSON Parse error: expected value at offset: 8"));
        let message = parse_json(b"  ").err().map(|e| e.message().to_owned());
        assert_eq!(message.as_deref(), Some("JSON Parse error: The document is empty"));
    }
}
