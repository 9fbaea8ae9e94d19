//! What a signature asks for and returns, shared by the REST and gRPC adapters.
//!
//! A kiln artifact's runtime takes one string per instance and returns a [`Prediction`]; the signature
//! in its manifest says under which aliases (and dtypes) that string comes in and the prediction's parts
//! go out. This module maps between the two so both transports agree.

use std::collections::{BTreeMap, BTreeSet};

use artifact::{Manifest, Signature};
use runtime::Prediction;

use crate::error::ServeError;
use crate::proto::tensorflow::serving::SignatureDefMap;
use crate::proto::tensorflow::tensor_info::Encoding;
use crate::proto::tensorflow::{DataType, SignatureDef, TensorInfo, TensorShapeProto, tensor_shape_proto};

/// The signature clients get when they name none (an empty `signature_name` on gRPC).
pub(crate) const DEFAULT_SIGNATURE: &str = "serving_default";

/// Which part of a [`Prediction`] an output alias carries, decided by the alias's dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutputKind {
    /// `DT_STRING`: the class name.
    Label,
    /// `DT_FLOAT` / `DT_DOUBLE`: the top-1 probability.
    Confidence,
    /// `DT_INT64` / `DT_INT32`: the class index.
    ClassIndex,
}

/// One output value of one instance.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OutputValue<'p> {
    Label(&'p str),
    Confidence(f32),
    ClassIndex(i64),
}

impl OutputKind {
    pub(crate) fn value(self, prediction: &Prediction) -> OutputValue<'_> {
        match self {
            OutputKind::Label => OutputValue::Label(&prediction.label),
            OutputKind::Confidence => OutputValue::Confidence(prediction.confidence),
            OutputKind::ClassIndex => {
                OutputValue::ClassIndex(i64::try_from(prediction.class_index).unwrap_or(i64::MAX))
            }
        }
    }
}

/// A signature resolved against what the runtime can do.
#[derive(Debug, Clone)]
pub(crate) struct SignaturePlan {
    /// The signature's key (`serving_default`).
    pub(crate) name: String,
    /// The one string input's alias (`string_input`).
    pub(crate) input: String,
    /// Output aliases in sorted order with what each carries.
    pub(crate) outputs: Vec<(String, OutputKind)>,
}

impl SignaturePlan {
    /// Resolves `name` in `manifest`; `Ok(None)` when there is no such signature (each transport words
    /// that error its own way).
    pub(crate) fn find(manifest: &Manifest, name: &str) -> Result<Option<SignaturePlan>, ServeError> {
        let Some(signature) = manifest.signatures.get(name) else {
            return Ok(None);
        };
        let unsupported =
            |reason: String| ServeError::FailedPrecondition(format!("signature {name:?}: {reason}"));
        let mut inputs = signature.inputs.iter();
        let input = match (inputs.next(), inputs.next()) {
            (Some((alias, info)), None) if info.dtype == "DT_STRING" => alias.clone(),
            _ => return Err(unsupported("kiln serves signatures with exactly one DT_STRING input".into())),
        };
        let outputs = signature
            .outputs
            .iter()
            .map(|(alias, info)| {
                let kind = match info.dtype.as_str() {
                    "DT_STRING" => OutputKind::Label,
                    "DT_FLOAT" | "DT_DOUBLE" => OutputKind::Confidence,
                    "DT_INT64" | "DT_INT32" => OutputKind::ClassIndex,
                    other => {
                        return Err(unsupported(format!(
                            "output {alias:?} has dtype {other}, which kiln cannot produce"
                        )));
                    }
                };
                Ok((alias.clone(), kind))
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(SignaturePlan { name: name.to_owned(), input, outputs }))
    }

    /// The input aliases, for TF's set-mismatch messages.
    pub(crate) fn input_set(&self) -> BTreeSet<&str> {
        BTreeSet::from([self.input.as_str()])
    }
}

/// TF Serving's predict_util message when the sent inputs are not the signature's:
/// `input size does not match signature: 2!=1 len({a,b}) != len({a}). Sent extra: {b}. Missing but required: {}.`
pub(crate) fn input_mismatch(sent: &BTreeSet<&str>, expected: &BTreeSet<&str>) -> String {
    let set = |s: &mut dyn Iterator<Item = &&str>| s.copied().collect::<Vec<_>>().join(",");
    format!(
        "input size does not match signature: {}!={} len({{{}}}) != len({{{}}}). Sent extra: {{{}}}. Missing but required: {{{}}}.",
        sent.len(),
        expected.len(),
        set(&mut sent.iter()),
        set(&mut expected.iter()),
        set(&mut sent.difference(expected)),
        set(&mut expected.difference(sent)),
    )
}

/// The manifest's signatures as TF's `SignatureDefMap`, for GetModelMetadata.
pub(crate) fn signature_def_map(manifest: &Manifest) -> SignatureDefMap {
    let tensor = |info: &artifact::TensorInfo| TensorInfo {
        encoding: Some(Encoding::Name(info.name.clone())),
        dtype: DataType::from_str_name(&info.dtype).unwrap_or(DataType::DtInvalid) as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: info
                .shape
                .iter()
                .map(|&size| tensor_shape_proto::Dim { size, name: String::new() })
                .collect(),
            unknown_rank: false,
        }),
    };
    let signature = |s: &Signature| SignatureDef {
        inputs: s.inputs.iter().map(|(k, v)| (k.clone(), tensor(v))).collect(),
        outputs: s.outputs.iter().map(|(k, v)| (k.clone(), tensor(v))).collect(),
        method_name: s.method_name.clone(),
        defaults: Default::default(),
    };
    SignatureDefMap {
        signature_def: manifest.signatures.iter().map(|(k, s)| (k.clone(), signature(s))).collect(),
    }
}

/// Signature metadata in TF's JSON spelling (REST `/metadata`), fields in the order TF prints them.
pub(crate) mod json {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    pub(crate) struct Dim {
        size: String,
        name: String,
    }

    #[derive(Serialize)]
    pub(crate) struct TensorShape {
        dim: Vec<Dim>,
        unknown_rank: bool,
    }

    #[derive(Serialize)]
    pub(crate) struct Tensor {
        dtype: String,
        tensor_shape: TensorShape,
        name: String,
    }

    #[derive(Serialize)]
    pub(crate) struct SignatureJson {
        inputs: BTreeMap<String, Tensor>,
        outputs: BTreeMap<String, Tensor>,
        method_name: String,
        defaults: BTreeMap<String, ()>,
    }

    fn tensor(info: &artifact::TensorInfo) -> Tensor {
        Tensor {
            dtype: info.dtype.clone(),
            tensor_shape: TensorShape {
                dim: info
                    .shape
                    .iter()
                    .map(|size| Dim { size: size.to_string(), name: String::new() })
                    .collect(),
                unknown_rank: false,
            },
            name: info.name.clone(),
        }
    }

    /// `signature_def` keyed by signature name.
    pub(crate) fn signature_defs(manifest: &Manifest) -> BTreeMap<String, SignatureJson> {
        manifest
            .signatures
            .iter()
            .map(|(key, s)| {
                let json = SignatureJson {
                    inputs: s.inputs.iter().map(|(k, v)| (k.clone(), tensor(v))).collect(),
                    outputs: s.outputs.iter().map(|(k, v)| (k.clone(), tensor(v))).collect(),
                    method_name: s.method_name.clone(),
                    defaults: BTreeMap::new(),
                };
                (key.clone(), json)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_message_matches_tf_predict_util() {
        let sent = BTreeSet::from(["a", "b"]);
        let expected = BTreeSet::from(["a"]);
        assert_eq!(
            input_mismatch(&sent, &expected),
            "input size does not match signature: 2!=1 len({a,b}) != len({a}). Sent extra: {b}. Missing but required: {}."
        );
    }
}
