//! The Open Inference Protocol's REST API under `/v2`, with Triton's binary data extension.
//!
//! The REST dispatcher ([`crate::rest`]) hands every `/v2` request here inside the same deadline, metrics,
//! CORS and body limit as TF Serving's `/v1`; errors are v2's `{"error": "..."}` with the status of their
//! code. With the binary extension the body is the JSON header (its length in
//! `Inference-Header-Content-Length`) followed by the tensors' raw bytes, in the order of the inputs
//! whose `binary_data_size` parameter says how many bytes are theirs; outputs asked for with
//! `binary_data` (or all of them, with the request's `binary_data_output`) come back the same way.

use std::sync::LazyLock;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{InferInput, InputTensor, OutputTensor, OutputValues};
use crate::error::ServeError;
use crate::metrics::Api;
use crate::predict;
use crate::rest::{Call, RestState, float_value, json_response, read_body, unescape};

/// The binary data extension's header: how many bytes of the body are the JSON header.
pub(crate) const HEADER_LENGTH: &str = "inference-header-content-length";

/// Every `/v2` endpoint: the health probes, server metadata, and model metadata, readiness and infer.
static PATH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^/v2(?:/health/(live|ready)|/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer))?)?$")
        .expect("valid regex")
});

/// Whether `path` belongs to the Open Inference Protocol.
pub(crate) fn is_v2(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// Answers one `/v2` request, recording in `call` which model and API it was.
pub(crate) async fn handle(
    state: &RestState,
    call: &mut Call,
    method: Method,
    path: &str,
    request: Request,
    deadline: Instant,
) -> Result<Response, ServeError> {
    let captures = PATH
        .captures(path)
        .ok_or_else(|| ServeError::NotFound(format!("{path} is not an Open Inference Protocol endpoint")))?;
    let expect = |wanted: Method| {
        if method == wanted {
            Ok(())
        } else {
            Err(ServeError::InvalidArgument(format!("{path} takes {wanted} requests, not {method}")))
        }
    };
    if let Some(probe) = captures.get(1) {
        expect(Method::GET)?;
        let up = probe.as_str() == "live" || super::server_ready(&state.table);
        return Ok(empty(if up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }));
    }
    let Some(model) = captures.get(2) else {
        expect(Method::GET)?;
        let metadata = serde_json::json!({
            "name": super::SERVER_NAME,
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": super::EXTENSIONS,
        });
        return Ok(json_response(StatusCode::OK, metadata.to_string()));
    };
    let name = unescape(model.as_str());
    let version = captures.get(3).map(|v| unescape(v.as_str())).unwrap_or_default();
    call.model = name.clone();
    match captures.get(4).map(|m| m.as_str()) {
        None => {
            expect(Method::GET)?;
            call.api = Some(Api::GetModelMetadata);
            let metadata = super::model_metadata(&state.table, &name, &version)?;
            Ok(json_response(StatusCode::OK, serde_json::to_string(&metadata).unwrap_or_default()))
        }
        Some("ready") => {
            expect(Method::GET)?;
            call.api = Some(Api::GetModelStatus);
            state.table.resolve(&name, &super::version_choice(&version))?;
            Ok(empty(StatusCode::OK))
        }
        _ => {
            expect(Method::POST)?;
            call.api = Some(Api::Predict);
            let header_length = request
                .headers()
                .get(HEADER_LENGTH)
                .map(|v| {
                    v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()).ok_or_else(|| {
                        ServeError::InvalidArgument(format!(
                            "{HEADER_LENGTH} must be a byte count, found {:?}",
                            String::from_utf8_lossy(v.as_bytes())
                        ))
                    })
                })
                .transpose()?;
            let body = read_body(request, state.options.max_body_bytes).await?;
            infer(state, &name, &version, &body, header_length, deadline).await
        }
    }
}

fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

type Parameters = Map<String, Value>;

/// An infer request's JSON (the header, with the binary extension).
#[derive(Deserialize)]
struct InferRequestJson {
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Parameters,
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

/// A boolean parameter; absent is `None`, any other type is the client's error.
fn bool_parameter(parameters: &Parameters, key: &str, owner: &str) -> Result<Option<bool>, ServeError> {
    match parameters.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ServeError::InvalidArgument(format!(
            "{owner}: parameter '{key}' must be a boolean, found {other}"
        ))),
    }
}

/// The request decoded: its JSON header and the inputs' elements.
struct DecodedInfer {
    id: Option<String>,
    input: InferInput,
    /// Per requested output, whether it goes back binary; with no outputs named, all outputs' default.
    binary: Vec<bool>,
    binary_default: bool,
}

fn decode(body: &[u8], header_length: Option<usize>) -> Result<DecodedInfer, ServeError> {
    let (header, mut binary) = match header_length {
        None => (body, &[][..]),
        Some(length) if length <= body.len() => body.split_at(length),
        Some(length) => {
            return Err(ServeError::InvalidArgument(format!(
                "{HEADER_LENGTH} is {length} but the body has only {} bytes",
                body.len()
            )));
        }
    };
    let request: InferRequestJson = serde_json::from_slice(header)
        .map_err(|e| ServeError::InvalidArgument(format!("the infer request is not valid v2 JSON: {e}")))?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let owner = format!("input '{}'", input.name);
        let binary_size = match input.parameters.get("binary_data_size") {
            None => None,
            Some(size) => Some(size.as_u64().ok_or_else(|| {
                ServeError::InvalidArgument(format!(
                    "{owner}: parameter 'binary_data_size' must be a byte count, found {size}"
                ))
            })?),
        };
        let elements = match (binary_size, &input.data) {
            (Some(_), Some(_)) => {
                return Err(ServeError::InvalidArgument(format!(
                    "{owner} has both 'data' and a 'binary_data_size' parameter; send one"
                )));
            }
            (None, None) => {
                return Err(ServeError::InvalidArgument(format!(
                    "{owner} has neither 'data' nor a 'binary_data_size' parameter"
                )));
            }
            (Some(size), None) => {
                super::expect_bytes(&input.name, &input.datatype)?;
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(ServeError::InvalidArgument(format!(
                        "{owner}: 'binary_data_size' is {size} but only {} bytes of binary data are left",
                        binary.len()
                    )));
                }
                let (raw, rest) = binary.split_at(size);
                binary = rest;
                super::split_bytes(&input.name, raw)?
            }
            (None, Some(data)) => {
                super::expect_bytes(&input.name, &input.datatype)?;
                let mut elements = Vec::new();
                json_strings(data, &owner, &mut elements)?;
                elements
            }
        };
        inputs.push(InputTensor { name: input.name, datatype: input.datatype, shape: input.shape, elements });
    }
    if !binary.is_empty() {
        return Err(ServeError::InvalidArgument(format!(
            "{} bytes of binary data follow the JSON header that no input's 'binary_data_size' claims",
            binary.len()
        )));
    }
    let binary_default =
        bool_parameter(&request.parameters, "binary_data_output", "the request")?.unwrap_or(false);
    let binary = request
        .outputs
        .iter()
        .map(|o| {
            let owner = format!("output '{}'", o.name);
            Ok(bool_parameter(&o.parameters, "binary_data", &owner)?.unwrap_or(binary_default))
        })
        .collect::<Result<_, ServeError>>()?;
    let outputs = request.outputs.into_iter().map(|o| o.name).collect();
    Ok(DecodedInfer { id: request.id, input: InferInput { inputs, outputs }, binary, binary_default })
}

/// The elements of a BYTES input's JSON `data`: strings, flat or nested in row-major order; each
/// string's UTF-8 bytes are one element (base64 text the model decodes).
fn json_strings(data: &Value, owner: &str, elements: &mut Vec<Vec<u8>>) -> Result<(), ServeError> {
    match data {
        Value::String(s) => elements.push(s.as_bytes().to_vec()),
        Value::Array(values) => {
            for value in values {
                json_strings(value, owner, elements)?;
            }
        }
        other => {
            let index = elements.len();
            return Err(ServeError::InvalidArgument(format!(
                "{owner} element {index}: BYTES data in JSON must be strings (base64 image bytes), found {other}"
            )));
        }
    }
    Ok(())
}

async fn infer(
    state: &RestState,
    name: &str,
    version: &str,
    body: &[u8],
    header_length: Option<usize>,
    deadline: Instant,
) -> Result<Response, ServeError> {
    let decoded = decode(body, header_length)?;
    let choice = super::version_choice(version);
    let predicted = predict::predict(&state.table, name, &choice, &decoded.input, Some(deadline)).await?;
    let tensors = super::output_tensors(&predicted);
    let binary = |index: usize| decoded.binary.get(index).copied().unwrap_or(decoded.binary_default);
    let mut raw = Vec::new();
    let outputs: Vec<Value> = tensors
        .iter()
        .enumerate()
        .map(|(index, tensor)| {
            let mut output = serde_json::json!({
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": tensor.shape,
            });
            if binary(index) {
                let bytes = tensor.values.raw();
                output["parameters"] = serde_json::json!({ "binary_data_size": bytes.len() });
                raw.extend_from_slice(&bytes);
            } else {
                output["data"] = json_data(tensor);
            }
            output
        })
        .collect();
    let mut document = serde_json::json!({
        "model_name": name,
        "model_version": predicted.servable.version.to_string(),
        "outputs": outputs,
    });
    if let Some(id) = decoded.id {
        document["id"] = Value::String(id);
    }
    let header = document.to_string();
    if raw.is_empty() {
        return Ok(json_response(StatusCode::OK, header));
    }
    let length = HeaderValue::from(header.len());
    let mut body = header.into_bytes();
    body.extend_from_slice(&raw);
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    response.headers_mut().insert(HEADER_LENGTH, length);
    Ok(response)
}

/// A tensor's values as JSON `data`: labels as strings, confidences with their shortest f32 spelling.
fn json_data(tensor: &OutputTensor) -> Value {
    match &tensor.values {
        OutputValues::Bytes(values) => {
            values.iter().map(|v| Value::String(String::from_utf8_lossy(v).into_owned())).collect()
        }
        OutputValues::Fp32(values) => values.iter().map(|&v| float_value(v)).collect(),
        OutputValues::Int64(values) => values.iter().map(|&v| Value::from(v)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cover_the_v2_endpoints_only() {
        let captures = |path: &str| {
            PATH.captures(path)
                .map(|c| (1..=4).map(|i| c.get(i).map_or("", |m| m.as_str()).to_owned()).collect::<Vec<_>>())
        };
        assert_eq!(captures("/v2"), Some(vec![String::new(); 4]));
        assert_eq!(captures("/v2/health/ready").map(|c| c[0].clone()).as_deref(), Some("ready"));
        assert_eq!(
            captures("/v2/models/vit/versions/2/infer"),
            Some(vec!["".into(), "vit".into(), "2".into(), "infer".into()])
        );
        assert_eq!(captures("/v2/models/vit/ready").map(|c| c[3].clone()).as_deref(), Some("ready"));
        assert!(captures("/v2/models/vit/versions/2/explain").is_none());
        assert!(captures("/v2/health").is_none());
    }

    #[test]
    fn binary_bodies_split_at_the_header_length() -> Result<(), ServeError> {
        let header = br#"{"inputs":[{"name":"string_input","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":17}}],"parameters":{"binary_data_output":true}}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&super::super::join_bytes([b"cat".as_slice(), b"dog!xx"]));
        let decoded = decode(&body, Some(header.len()))?;
        assert_eq!(decoded.input.inputs[0].elements, [b"cat".to_vec(), b"dog!xx".to_vec()]);
        assert!(decoded.binary_default);
        let message =
            decode(&body[..body.len() - 1], Some(header.len())).err().map(|e| e.message().to_owned());
        assert_eq!(
            message.as_deref(),
            Some("input 'string_input': 'binary_data_size' is 17 but only 16 bytes of binary data are left")
        );
        let json = br#"{"inputs":[{"name":"string_input","shape":[1],"datatype":"BYTES","data":[["aGk="]]}],"outputs":[{"name":"label","parameters":{"binary_data":true}}]}"#;
        let decoded = decode(json, None)?;
        assert_eq!(decoded.input.inputs[0].elements, [b"aGk=".to_vec()]);
        assert_eq!((decoded.binary, decoded.input.outputs), (vec![true], vec!["label".to_owned()]));
        let numbers = br#"{"inputs":[{"name":"string_input","shape":[1],"datatype":"BYTES","data":[1]}]}"#;
        let message = decode(numbers, None).err().map(|e| e.message().to_owned());
        assert_eq!(
            message.as_deref(),
            Some(
                "input 'string_input' element 0: BYTES data in JSON must be strings (base64 image bytes), found 1"
            )
        );
        Ok(())
    }
}
