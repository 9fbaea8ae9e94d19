//! TF Serving's gRPC services on tonic: `tensorflow.serving.PredictionService` and `ModelService`.
//!
//! Requests are validated with TF Serving's messages (predict_util.cc), then go through the same
//! [`ModelTable`] and batch queues as REST. Classify, Regress and MultiInference take tf.Example input,
//! which an image model has no use for; they answer UNIMPLEMENTED saying so. HandleReloadConfigRequest
//! replaces the served model set as TF Serving does, when [`ModelManagement`] allows it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::deadline::GrpcDeadline;
use crate::error::{ServeError, code_name};
use crate::management::ModelManagement;
use crate::metrics::{Api, Entrypoint, Metrics};
use crate::predict::{self, PredictInput, Predicted};
use crate::proto::tensorflow::error::Code as ErrorCode;
use crate::proto::tensorflow::serving::model_service_server::ModelService;
use crate::proto::tensorflow::serving::prediction_service_server::PredictionService;
use crate::proto::tensorflow::serving::{
    ClassificationRequest, ClassificationResponse, GetModelMetadataRequest, GetModelMetadataResponse,
    GetModelStatusRequest, GetModelStatusResponse, ModelSpec, ModelVersionStatus, MultiInferenceRequest,
    MultiInferenceResponse, PredictRequest, PredictResponse, RegressionRequest, RegressionResponse,
    ReloadConfigRequest, ReloadConfigResponse, StatusProto, model_spec,
};
use crate::proto::tensorflow::{DataType, TensorProto, TensorShapeProto, tensor_shape_proto};
use crate::signature::{self, OutputKind, OutputValue, SignaturePlan};
use crate::table::{ModelTable, VersionChoice};
use crate::watcher::ModelSet;

/// The type URL GetModelMetadata packs the `SignatureDefMap` under.
const SIGNATURE_DEF_MAP_URL: &str = "type.googleapis.com/tensorflow.serving.SignatureDefMap";

/// GetModelMetadata's one field in TF Serving: the signatures.
const SIGNATURE_DEF_FIELD: &str = "signature_def";

/// kiln's addition to GetModelMetadata: the served version's content digest (lowercase hex sha256, see the
/// artifact FORMAT.md), packed as a `google.protobuf.StringValue`. Only sent when asked for, so TF Serving
/// clients, which ask for `signature_def` alone, see exactly TF Serving's answer.
const CONTENT_DIGEST_FIELD: &str = "content_digest";

/// The type URL of `google.protobuf.StringValue`, which carries the content digest.
const STRING_VALUE_URL: &str = "type.googleapis.com/google.protobuf.StringValue";

/// State both services share.
#[derive(Clone)]
pub(crate) struct GrpcState {
    pub(crate) table: Arc<ModelTable>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) models: Arc<ModelSet>,
    /// Whether HandleReloadConfigRequest may change `models`, and to what.
    pub(crate) management: Arc<ModelManagement>,
}

fn model_spec(spec: Option<ModelSpec>) -> Result<(String, VersionChoice, String), ServeError> {
    let spec = spec.ok_or_else(|| ServeError::InvalidArgument("Missing ModelSpec".into()))?;
    let choice = match spec.version_choice {
        None => VersionChoice::Latest,
        Some(model_spec::VersionChoice::Version(v)) => VersionChoice::Number(
            u64::try_from(v)
                .map_err(|_| ServeError::InvalidArgument(format!("Invalid model version: {v}")))?,
        ),
        Some(model_spec::VersionChoice::VersionLabel(label)) => VersionChoice::Label(label),
    };
    Ok((spec.name, choice, spec.signature_name))
}

impl GrpcState {
    /// Counts a finished call in the request metrics and turns its result into tonic's.
    pub(crate) fn record<T>(
        &self,
        model: &str,
        api: Api,
        started: Instant,
        result: Result<T, ServeError>,
    ) -> Result<Response<T>, Status> {
        let status = result.as_ref().map_or_else(|e| code_name(e.code()), |_| "OK");
        self.metrics.observe_request(model, api, Entrypoint::Grpc, status, started.elapsed());
        result.map(Response::new).map_err(Status::from)
    }

    async fn predict_inner(
        &self,
        request: PredictRequest,
        deadline: Option<Instant>,
    ) -> Result<PredictResponse, ServeError> {
        let (name, choice, signature_name) = model_spec(request.model_spec)?;
        let input =
            TfPredictInput { signature_name, inputs: request.inputs, output_filter: request.output_filter };
        let Predicted { servable, plan, outputs, predictions } =
            predict::predict(&self.table, &name, &choice, &input, deadline).await?;
        let shape = TensorShapeProto {
            dim: vec![tensor_shape_proto::Dim { size: predictions.len() as i64, name: String::new() }],
            unknown_rank: false,
        };
        let outputs: HashMap<String, TensorProto> = outputs
            .into_iter()
            .map(|(alias, kind)| {
                let mut tensor = TensorProto { tensor_shape: Some(shape.clone()), ..Default::default() };
                for prediction in &predictions {
                    match kind.value(prediction) {
                        OutputValue::Label(label) => tensor.string_val.push(label.as_bytes().to_vec()),
                        OutputValue::Confidence(c) => tensor.float_val.push(c),
                        OutputValue::ClassIndex(i) => tensor.int64_val.push(i),
                    }
                }
                tensor.dtype = match kind {
                    OutputKind::Label => DataType::DtString,
                    OutputKind::Confidence => DataType::DtFloat,
                    OutputKind::ClassIndex => DataType::DtInt64,
                } as i32;
                (alias, tensor)
            })
            .collect();
        Ok(PredictResponse {
            model_spec: Some(ModelSpec {
                name,
                signature_name: plan.name,
                version_choice: Some(model_spec::VersionChoice::Version(servable.version as i64)),
            }),
            outputs,
        })
    }

    fn metadata_inner(
        &self,
        request: GetModelMetadataRequest,
    ) -> Result<GetModelMetadataResponse, ServeError> {
        let (name, choice, _) = model_spec(request.model_spec)?;
        if request.metadata_field.is_empty() {
            return Err(ServeError::InvalidArgument(
                "GetModelMetadataRequest must specify at least one metadata_field".into(),
            ));
        }
        let known = [SIGNATURE_DEF_FIELD, CONTENT_DIGEST_FIELD];
        if let Some(field) = request.metadata_field.iter().find(|f| !known.contains(&f.as_str())) {
            return Err(ServeError::InvalidArgument(format!("Metadata field {field} is not supported")));
        }
        let servable = self.table.resolve(&name, &choice)?;
        let metadata = request
            .metadata_field
            .into_iter()
            .map(|field| {
                let any = if field == CONTENT_DIGEST_FIELD {
                    prost_types::Any {
                        type_url: STRING_VALUE_URL.into(),
                        value: prost::Message::encode_to_vec(&servable.content_digest),
                    }
                } else {
                    let map = signature::signature_def_map(servable.model.manifest());
                    prost_types::Any {
                        type_url: SIGNATURE_DEF_MAP_URL.into(),
                        value: prost::Message::encode_to_vec(&map),
                    }
                };
                (field, any)
            })
            .collect();
        Ok(GetModelMetadataResponse {
            model_spec: Some(ModelSpec {
                name,
                signature_name: String::new(),
                version_choice: Some(model_spec::VersionChoice::Version(servable.version as i64)),
            }),
            metadata,
        })
    }

    fn status_inner(&self, request: GetModelStatusRequest) -> Result<GetModelStatusResponse, ServeError> {
        let (name, choice, _) = model_spec(request.model_spec)?;
        let versions = self.table.status(&name, &choice)?;
        Ok(GetModelStatusResponse {
            model_version_status: versions
                .into_iter()
                .map(|v| ModelVersionStatus {
                    version: v.version as i64,
                    state: v.state as i32,
                    status: Some(StatusProto {
                        error_code: ErrorCode::from_str_name(code_name(v.error_code))
                            .unwrap_or(ErrorCode::Unknown) as i32,
                        error_message: v.error_message,
                    }),
                })
                .collect(),
        })
    }
}

/// A TF Serving `PredictRequest`'s inputs and output filter, for the shared predict step.
struct TfPredictInput {
    /// Empty means `serving_default`.
    signature_name: String,
    inputs: HashMap<String, TensorProto>,
    output_filter: Vec<String>,
}

impl PredictInput for TfPredictInput {
    fn signature_name(&self) -> &str {
        if self.signature_name.is_empty() { signature::DEFAULT_SIGNATURE } else { &self.signature_name }
    }

    fn missing_signature(&self) -> ServeError {
        ServeError::FailedPrecondition(format!(
            "Serving signature key \"{}\" not found.",
            self.signature_name()
        ))
    }

    fn instances(&self, plan: &SignaturePlan, max_instances: usize) -> Result<Vec<Vec<u8>>, ServeError> {
        let sent: BTreeSet<&str> = self.inputs.keys().map(String::as_str).collect();
        let expected = plan.input_set();
        if sent.len() != expected.len() {
            return Err(ServeError::InvalidArgument(signature::input_mismatch(&sent, &expected)));
        }
        let tensor = self.inputs.get(&plan.input).ok_or_else(|| {
            let alias = sent.iter().next().copied().unwrap_or_default();
            ServeError::InvalidArgument(format!(
                "input tensor alias not found in signature: {alias}. Inputs expected to be in the set {{{}}}.",
                plan.input
            ))
        })?;
        string_instances(&plan.input, tensor, max_instances)
    }

    fn outputs(&self, plan: &SignaturePlan) -> Result<Vec<(String, OutputKind)>, ServeError> {
        if self.output_filter.is_empty() {
            return Ok(plan.outputs.clone());
        }
        let mut chosen: Vec<(String, OutputKind)> = Vec::new();
        for alias in &self.output_filter {
            let kind = plan.outputs.iter().find(|(a, _)| a == alias).map(|(_, k)| *k).ok_or_else(|| {
                let set: Vec<&str> = plan.outputs.iter().map(|(a, _)| a.as_str()).collect();
                ServeError::InvalidArgument(format!(
                    "output tensor alias not found in signature: {alias} Outputs expected to be in the set {{{}}}.",
                    set.join(",")
                ))
            })?;
            if chosen.iter().any(|(a, _)| a == alias) {
                return Err(ServeError::InvalidArgument(format!(
                    "duplicate output tensor alias in output_filter: {alias}"
                )));
            }
            chosen.push((alias.clone(), kind));
        }
        Ok(chosen)
    }

    fn instance_error(&self, plan: &SignaturePlan, index: usize, error: String) -> ServeError {
        ServeError::InvalidArgument(format!("input '{}' string_val[{index}]: {error}", plan.input))
    }
}

/// The instances of a DT_STRING tensor of shape `[n]`: `string_val` holds base64 text or raw image bytes.
/// One value with `n > 1` is broadcast, as TensorProto's rules allow, up to `max_instances` (the
/// version's queue capacity): the shape is a number the client chose, and copying one value 2^40 times
/// would abort the server before the queue could refuse the request.
///
/// Public so the fuzz targets (`crates/fuzz`) can feed it decoded `PredictRequest` tensors; Predict
/// calls it for the signature's input tensor, with `alias` naming that input in error messages.
pub fn string_instances(
    alias: &str,
    tensor: &TensorProto,
    max_instances: usize,
) -> Result<Vec<Vec<u8>>, ServeError> {
    let invalid = |reason: String| ServeError::InvalidArgument(format!("input '{alias}': {reason}"));
    if tensor.dtype != DataType::DtString as i32 {
        let dtype = DataType::try_from(tensor.dtype)
            .map_or_else(|_| tensor.dtype.to_string(), |d| d.as_str_name().to_owned());
        return Err(invalid(format!("expects dtype DT_STRING but {dtype} is provided")));
    }
    let dims: Vec<i64> =
        tensor.tensor_shape.as_ref().map(|s| s.dim.iter().map(|d| d.size).collect()).unwrap_or_default();
    let [n] = dims[..] else {
        return Err(invalid(format!(
            "the signature takes shape [-1] (one string per image), the request has shape {dims:?}"
        )));
    };
    let n = usize::try_from(n).map_err(|_| invalid(format!("dimension {n} is negative")))?;
    match tensor.string_val.len() {
        len if len == n => Ok(tensor.string_val.clone()),
        1 if n > max_instances => Err(invalid(format!(
            "shape [{n}] broadcasts one string_val to {n} instances, more than the {max_instances} this \
             model version takes in one request"
        ))),
        1 => Ok(vec![tensor.string_val[0].clone(); n]),
        len => Err(invalid(format!("shape [{n}] needs {n} string_val entries, the request has {len}"))),
    }
}

fn unimplemented(api: &str) -> Status {
    Status::unimplemented(format!(
        "{api} is not implemented by kiln: it takes tf.Example input, kiln models take images through Predict"
    ))
}

#[tonic::async_trait]
impl PredictionService for GrpcState {
    async fn classify(
        &self,
        _: Request<ClassificationRequest>,
    ) -> Result<Response<ClassificationResponse>, Status> {
        Err(unimplemented("Classify"))
    }

    async fn regress(&self, _: Request<RegressionRequest>) -> Result<Response<RegressionResponse>, Status> {
        Err(unimplemented("Regress"))
    }

    async fn predict(&self, request: Request<PredictRequest>) -> Result<Response<PredictResponse>, Status> {
        let started = Instant::now();
        let deadline = GrpcDeadline::of(&request);
        let request = request.into_inner();
        let model = request.model_spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let result = GrpcDeadline::bound(deadline, self.predict_inner(request, deadline.map(|d| d.at))).await;
        self.record(&model, Api::Predict, started, result)
    }

    async fn multi_inference(
        &self,
        _: Request<MultiInferenceRequest>,
    ) -> Result<Response<MultiInferenceResponse>, Status> {
        Err(unimplemented("MultiInference"))
    }

    async fn get_model_metadata(
        &self,
        request: Request<GetModelMetadataRequest>,
    ) -> Result<Response<GetModelMetadataResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let model = request.model_spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let result = self.metadata_inner(request);
        self.record(&model, Api::GetModelMetadata, started, result)
    }
}

#[tonic::async_trait]
impl ModelService for GrpcState {
    async fn get_model_status(
        &self,
        request: Request<GetModelStatusRequest>,
    ) -> Result<Response<GetModelStatusResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let model = request.model_spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let result = self.status_inner(request);
        self.record(&model, Api::GetModelStatus, started, result)
    }

    async fn handle_reload_config_request(
        &self,
        request: Request<ReloadConfigRequest>,
    ) -> Result<Response<ReloadConfigResponse>, Status> {
        let peer = request.remote_addr();
        let configs = self.management.reload_configs(request.into_inner().config, peer)?;
        let models = self.models.clone();
        // Dropping a model waits for its in-flight requests: blocking work.
        tokio::task::spawn_blocking(move || models.apply(configs))
            .await
            .map_err(|e| Status::internal(format!("applying the model config failed: {e}")))?
            .map_err(|e| Status::internal(format!("cannot start a model watcher: {e}")))?;
        let status = StatusProto { error_code: ErrorCode::Ok as i32, error_message: String::new() };
        Ok(Response::new(ReloadConfigResponse { status: Some(status), metric: vec![] }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(dims: &[i64], values: &[&str]) -> TensorProto {
        TensorProto {
            dtype: DataType::DtString as i32,
            tensor_shape: Some(TensorShapeProto {
                dim: dims.iter().map(|&size| tensor_shape_proto::Dim { size, name: String::new() }).collect(),
                unknown_rank: false,
            }),
            string_val: values.iter().map(|v| v.as_bytes().to_vec()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn string_tensors_follow_shape_and_broadcast_rules() -> Result<(), ServeError> {
        assert_eq!(string_instances("x", &strings(&[2], &["a", "b"]), 8)?, [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(string_instances("x", &strings(&[3], &["a"]), 8)?, vec![b"a".to_vec(); 3]);
        let err = string_instances("x", &strings(&[3], &["a", "b"]), 8).err().map(|e| e.message().to_owned());
        assert_eq!(
            err.as_deref(),
            Some("input 'x': shape [3] needs 3 string_val entries, the request has 2")
        );
        assert!(string_instances("x", &strings(&[1, 1], &["a"]), 8).is_err());
        assert!(string_instances("x", &strings(&[], &["a"]), 8).is_err());
        let mut floats = strings(&[1], &[]);
        floats.dtype = DataType::DtFloat as i32;
        let err = string_instances("x", &floats, 8).err().map(|e| e.message().to_owned());
        assert_eq!(err.as_deref(), Some("input 'x': expects dtype DT_STRING but DT_FLOAT is provided"));
        Ok(())
    }

    /// Found while writing the grpc_predict fuzz target and reproduced with it (the input is its seed
    /// `broadcast-2pow40.pb`): a 61-byte request with shape [2^40] and one string_val made the broadcast
    /// allocate 2^40 copies and abort the server.
    #[test]
    fn broadcast_beyond_the_request_limit_is_refused_before_allocating() {
        let huge = strings(&[1 << 40], &["aGk="]);
        let err = string_instances("x", &huge, 256).err().map(|e| (e.code(), e.message().to_owned()));
        assert_eq!(
            err,
            Some((
                tonic::Code::InvalidArgument,
                "input 'x': shape [1099511627776] broadcasts one string_val to 1099511627776 instances, \
                 more than the 256 this model version takes in one request"
                    .to_owned()
            ))
        );
        assert_eq!(string_instances("x", &strings(&[256], &["a"]), 256).map(|v| v.len()), Ok(256));
    }
}
