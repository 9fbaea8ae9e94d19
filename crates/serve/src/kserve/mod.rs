//! The Open Inference Protocol (KServe v2; Triton, OpenVINO Model Server and Seldon MLServer speak it),
//! REST ([`rest`]) and gRPC ([`grpc`]), over the same model table and predict step as TF Serving's API.
//!
//! What both transports share lives here: a kiln signature seen as v2 tensors (input `string_input`
//! BYTES `[-1]`; outputs `label` BYTES, `confidence` FP32, a class index INT64), the model metadata, the
//! BYTES wire layout (each element a 4-byte little-endian length, then its bytes) and the decoded infer
//! request the shared predict step runs. A version in a v2 path or message is a number, or one of the
//! model config's version labels; empty means the latest available version.

pub(crate) mod grpc;
pub(crate) mod rest;

use serde::Serialize;

use crate::error::ServeError;
use crate::predict::PredictInput;
use crate::signature::{self, OutputKind, SignaturePlan};
use crate::table::{ModelTable, VersionChoice, VersionState};

/// The server name `GET /v2` and ServerMetadata report.
pub(crate) const SERVER_NAME: &str = "kiln";

/// The protocol extensions kiln implements (Triton's name for the binary data extension).
pub(crate) const EXTENSIONS: &[&str] = &["binary_tensor_data"];

/// The `platform` of every kiln model: what runs it, not which framework trained it.
const PLATFORM: &str = "kiln_tract";

/// The one datatype kiln models take.
const BYTES: &str = "BYTES";

/// The version a path or message names: empty is the latest, digits a number, anything else a label.
pub(crate) fn version_choice(version: &str) -> VersionChoice {
    if version.is_empty() {
        VersionChoice::Latest
    } else if let Ok(number) = version.parse::<u64>() {
        VersionChoice::Number(number)
    } else {
        VersionChoice::Label(version.to_owned())
    }
}

/// Whether every configured model has an AVAILABLE version (what `/readyz` reports too).
pub(crate) fn server_ready(table: &ModelTable) -> bool {
    let models = table.readiness();
    !models.is_empty() && models.iter().all(|(_, ready)| *ready)
}

/// Whether `name` at `version` can infer now.
pub(crate) fn model_ready(table: &ModelTable, name: &str, version: &str) -> bool {
    table.resolve(name, &version_choice(version)).is_ok()
}

/// The v2 datatype an output kind travels as.
fn datatype(kind: OutputKind) -> &'static str {
    match kind {
        OutputKind::Label => BYTES,
        OutputKind::Confidence => "FP32",
        OutputKind::ClassIndex => "INT64",
    }
}

/// One tensor of the model metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TensorMetadata {
    pub(crate) name: String,
    pub(crate) datatype: &'static str,
    /// `[-1]`: one element per image.
    pub(crate) shape: Vec<i64>,
}

/// A model's v2 metadata, in the field order of the REST JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ModelMetadata {
    pub(crate) name: String,
    pub(crate) versions: Vec<String>,
    pub(crate) platform: &'static str,
    pub(crate) inputs: Vec<TensorMetadata>,
    pub(crate) outputs: Vec<TensorMetadata>,
}

/// The metadata of `name` at `version`: its default signature as v2 tensors. Without a version, every
/// AVAILABLE version is listed.
pub(crate) fn model_metadata(
    table: &ModelTable,
    name: &str,
    version: &str,
) -> Result<ModelMetadata, ServeError> {
    let choice = version_choice(version);
    let servable = table.resolve(name, &choice)?;
    let plan = default_plan(servable.model.manifest())?;
    let versions = match choice {
        VersionChoice::Latest => table.versions_in(name, VersionState::Available),
        _ => vec![servable.version],
    };
    let tensor = |name: &str, datatype| TensorMetadata { name: name.to_owned(), datatype, shape: vec![-1] };
    Ok(ModelMetadata {
        name: name.to_owned(),
        versions: versions.iter().map(u64::to_string).collect(),
        platform: PLATFORM,
        inputs: vec![tensor(&plan.input, BYTES)],
        outputs: plan.outputs.iter().map(|(alias, kind)| tensor(alias, datatype(*kind))).collect(),
    })
}

/// The signature v2 requests run: v2 has no signature names, so kiln's default one.
fn default_plan(manifest: &artifact::Manifest) -> Result<SignaturePlan, ServeError> {
    SignaturePlan::find(manifest, signature::DEFAULT_SIGNATURE)?.ok_or_else(missing_default_signature)
}

fn missing_default_signature() -> ServeError {
    ServeError::FailedPrecondition(format!(
        "the model has no '{}' signature, the one the Open Inference Protocol serves",
        signature::DEFAULT_SIGNATURE
    ))
}

/// Splits a BYTES tensor's raw bytes into its elements (each a 4-byte little-endian length, then the
/// bytes); `input` names the tensor in errors.
pub(crate) fn split_bytes(input: &str, mut raw: &[u8]) -> Result<Vec<Vec<u8>>, ServeError> {
    let mut elements = Vec::new();
    while !raw.is_empty() {
        let index = elements.len();
        let invalid = |reason: String| {
            ServeError::InvalidArgument(format!("input '{input}' element {index}: {reason}"))
        };
        let Some((length, rest)) = raw.split_first_chunk::<4>() else {
            return Err(invalid(format!(
                "{} bytes left, too few for the 4-byte length that starts a BYTES element",
                raw.len()
            )));
        };
        let length = u32::from_le_bytes(*length) as usize;
        if length > rest.len() {
            return Err(invalid(format!("the length prefix says {length} bytes, {} are left", rest.len())));
        }
        let (element, rest) = rest.split_at(length);
        elements.push(element.to_vec());
        raw = rest;
    }
    Ok(elements)
}

/// The raw layout of BYTES elements: each a 4-byte little-endian length, then its bytes.
pub(crate) fn join_bytes<'e>(elements: impl IntoIterator<Item = &'e [u8]>) -> Vec<u8> {
    let mut raw = Vec::new();
    for element in elements {
        // Labels are short class names; a length beyond u32 cannot occur.
        raw.extend_from_slice(&(element.len() as u32).to_le_bytes());
        raw.extend_from_slice(element);
    }
    raw
}

/// One input tensor of an infer request, its elements decoded from whichever encoding the client used.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InputTensor {
    pub(crate) name: String,
    pub(crate) datatype: String,
    pub(crate) shape: Vec<i64>,
    pub(crate) elements: Vec<Vec<u8>>,
}

/// An infer request as REST or gRPC decoded it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InferInput {
    pub(crate) inputs: Vec<InputTensor>,
    /// The outputs asked for by name, in order; empty asks for all.
    pub(crate) outputs: Vec<String>,
}

/// Refuses an input whose datatype is not BYTES, before its raw bytes are read as BYTES elements.
pub(crate) fn expect_bytes(name: &str, datatype: &str) -> Result<(), ServeError> {
    if datatype == BYTES {
        return Ok(());
    }
    Err(ServeError::InvalidArgument(format!(
        "input '{name}' has datatype {datatype:?}: kiln models take BYTES (one encoded image per element)"
    )))
}

impl PredictInput for InferInput {
    fn signature_name(&self) -> &str {
        signature::DEFAULT_SIGNATURE
    }

    fn missing_signature(&self) -> ServeError {
        missing_default_signature()
    }

    fn instances(&self, plan: &SignaturePlan, _: usize) -> Result<Vec<Vec<u8>>, ServeError> {
        let tensor = match self.inputs.as_slice() {
            [tensor] if tensor.name == plan.input => tensor,
            inputs => {
                let sent: Vec<&str> = inputs.iter().map(|t| t.name.as_str()).collect();
                return Err(ServeError::InvalidArgument(format!(
                    "expected one input, '{}', the request has {sent:?}",
                    plan.input
                )));
            }
        };
        expect_bytes(&tensor.name, &tensor.datatype)?;
        let count = tensor.elements.len();
        if tensor.shape != [count as i64] {
            return Err(ServeError::InvalidArgument(format!(
                "input '{}' has shape {:?} and {count} elements: the model takes shape [-1], one element \
                 per image, so the shape must be [{count}]",
                tensor.name, tensor.shape
            )));
        }
        Ok(tensor.elements.clone())
    }

    fn outputs(&self, plan: &SignaturePlan) -> Result<Vec<(String, OutputKind)>, ServeError> {
        if self.outputs.is_empty() {
            return Ok(plan.outputs.clone());
        }
        let mut chosen: Vec<(String, OutputKind)> = Vec::new();
        for name in &self.outputs {
            let Some((_, kind)) = plan.outputs.iter().find(|(alias, _)| alias == name) else {
                let known: Vec<&str> = plan.outputs.iter().map(|(alias, _)| alias.as_str()).collect();
                return Err(ServeError::InvalidArgument(format!(
                    "unknown output '{name}': the model's outputs are {known:?}"
                )));
            };
            if chosen.iter().any(|(alias, _)| alias == name) {
                return Err(ServeError::InvalidArgument(format!("output '{name}' is requested twice")));
            }
            chosen.push((name.clone(), *kind));
        }
        Ok(chosen)
    }

    fn instance_error(&self, plan: &SignaturePlan, index: usize, error: String) -> ServeError {
        ServeError::InvalidArgument(format!("input '{}' element {index}: {error}", plan.input))
    }
}

/// The values of one output tensor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OutputValues {
    Bytes(Vec<Vec<u8>>),
    Fp32(Vec<f32>),
    Int64(Vec<i64>),
}

impl OutputValues {
    /// The tensor in the raw layout (little-endian numbers, length-prefixed BYTES).
    pub(crate) fn raw(&self) -> Vec<u8> {
        match self {
            OutputValues::Bytes(values) => join_bytes(values.iter().map(Vec::as_slice)),
            OutputValues::Fp32(values) => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            OutputValues::Int64(values) => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// One output tensor of an infer response.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutputTensor {
    pub(crate) name: String,
    pub(crate) datatype: &'static str,
    /// `[n]`, one element per instance.
    pub(crate) shape: Vec<i64>,
    pub(crate) values: OutputValues,
}

/// The requested outputs of a predict step as v2 tensors, in the order requested.
pub(crate) fn output_tensors(predicted: &crate::predict::Predicted) -> Vec<OutputTensor> {
    let predictions = &predicted.predictions;
    predicted
        .outputs
        .iter()
        .map(|(name, kind)| {
            let values = match kind {
                OutputKind::Label => {
                    OutputValues::Bytes(predictions.iter().map(|p| p.label.as_bytes().to_vec()).collect())
                }
                OutputKind::Confidence => {
                    OutputValues::Fp32(predictions.iter().map(|p| p.confidence).collect())
                }
                OutputKind::ClassIndex => OutputValues::Int64(
                    predictions.iter().map(|p| i64::try_from(p.class_index).unwrap_or(i64::MAX)).collect(),
                ),
            };
            OutputTensor {
                name: name.clone(),
                datatype: datatype(*kind),
                shape: vec![predictions.len() as i64],
                values,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_elements_round_trip_and_refuse_truncation() -> Result<(), ServeError> {
        let raw = join_bytes([b"cat".as_slice(), b"", b"rocket"]);
        assert_eq!(&raw[..7], [3, 0, 0, 0, b'c', b'a', b't']);
        assert_eq!(split_bytes("x", &raw)?, [b"cat".to_vec(), Vec::new(), b"rocket".to_vec()]);
        let short = split_bytes("x", &raw[..raw.len() - 1]).err().map(|e| e.message().to_owned());
        assert_eq!(short.as_deref(), Some("input 'x' element 2: the length prefix says 6 bytes, 5 are left"));
        let stub = split_bytes("x", &[1, 0]).err().map(|e| e.message().to_owned());
        assert_eq!(
            stub.as_deref(),
            Some(
                "input 'x' element 0: 2 bytes left, too few for the 4-byte length that starts a BYTES element"
            )
        );
        Ok(())
    }

    #[test]
    fn versions_are_numbers_labels_or_latest() {
        assert_eq!(version_choice(""), VersionChoice::Latest);
        assert_eq!(version_choice("3"), VersionChoice::Number(3));
        assert_eq!(version_choice("stable"), VersionChoice::Label("stable".into()));
    }

    #[test]
    fn numbers_travel_little_endian() {
        assert_eq!(OutputValues::Fp32(vec![1.0]).raw(), 1.0f32.to_le_bytes());
        assert_eq!(OutputValues::Int64(vec![2]).raw(), 2i64.to_le_bytes());
    }
}
