//! The Open Inference Protocol's gRPC service, `inference.GRPCInferenceService`, next to TF Serving's
//! services on the same port (same auth, TLS, deadlines and metrics).
//!
//! BYTES inputs come either in `contents.bytes_contents` or, as tritonclient sends them, in
//! `raw_input_contents` (one entry per input, elements length-prefixed); the outputs go back the way the
//! inputs came, so a raw request gets `raw_output_contents`.

use std::time::Instant;

use tonic::{Request, Response, Status};

use super::{InferInput, InputTensor, OutputTensor, OutputValues};
use crate::deadline::GrpcDeadline;
use crate::error::ServeError;
use crate::grpc::GrpcState;
use crate::metrics::Api;
use crate::predict;
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceService;
use crate::proto::inference::model_infer_response::InferOutputTensor;
use crate::proto::inference::model_metadata_response::TensorMetadata;
use crate::proto::inference::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ModelReadyResponse, ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest,
    ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
};

/// A `ModelInferRequest`'s inputs decoded, and whether they came raw.
fn decode(request: &mut ModelInferRequest) -> Result<(InferInput, bool), ServeError> {
    let raw = std::mem::take(&mut request.raw_input_contents);
    let uses_raw = !raw.is_empty();
    if uses_raw && raw.len() != request.inputs.len() {
        return Err(ServeError::InvalidArgument(format!(
            "raw_input_contents has {} entries for {} inputs: send one per input, or none",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for (index, input) in std::mem::take(&mut request.inputs).into_iter().enumerate() {
        super::expect_bytes(&input.name, &input.datatype)?;
        let contents = input.contents.map(|c| c.bytes_contents).unwrap_or_default();
        let elements = match raw.get(index) {
            Some(_) if !contents.is_empty() => {
                return Err(ServeError::InvalidArgument(format!(
                    "input '{}' has contents while the request uses raw_input_contents; send one",
                    input.name
                )));
            }
            Some(bytes) => super::split_bytes(&input.name, bytes)?,
            None => contents,
        };
        inputs.push(InputTensor { name: input.name, datatype: input.datatype, shape: input.shape, elements });
    }
    let outputs = request.outputs.iter().map(|o| o.name.clone()).collect();
    Ok((InferInput { inputs, outputs }, uses_raw))
}

fn contents(tensor: &OutputTensor) -> InferTensorContents {
    match &tensor.values {
        OutputValues::Bytes(values) => {
            InferTensorContents { bytes_contents: values.clone(), ..Default::default() }
        }
        OutputValues::Fp32(values) => {
            InferTensorContents { fp32_contents: values.clone(), ..Default::default() }
        }
        OutputValues::Int64(values) => {
            InferTensorContents { int64_contents: values.clone(), ..Default::default() }
        }
    }
}

impl GrpcState {
    async fn infer_inner(
        &self,
        mut request: ModelInferRequest,
        deadline: Option<Instant>,
    ) -> Result<ModelInferResponse, ServeError> {
        let (input, raw) = decode(&mut request)?;
        let choice = super::version_choice(&request.model_version);
        let predicted = predict::predict(&self.table, &request.model_name, &choice, &input, deadline).await?;
        let tensors = super::output_tensors(&predicted);
        let raw_output_contents =
            if raw { tensors.iter().map(|t| t.values.raw()).collect() } else { Vec::new() };
        let outputs = tensors
            .iter()
            .map(|tensor| InferOutputTensor {
                name: tensor.name.clone(),
                datatype: tensor.datatype.to_owned(),
                shape: tensor.shape.clone(),
                parameters: Default::default(),
                contents: (!raw).then(|| contents(tensor)),
            })
            .collect();
        Ok(ModelInferResponse {
            model_name: request.model_name,
            model_version: predicted.servable.version.to_string(),
            id: request.id,
            parameters: Default::default(),
            outputs,
            raw_output_contents,
        })
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcState {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: super::server_ready(&self.table) }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let started = Instant::now();
        let ModelReadyRequest { name, version } = request.into_inner();
        let ready = super::model_ready(&self.table, &name, &version);
        self.record(&name, Api::GetModelStatus, started, Ok(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: super::SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: super::EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let started = Instant::now();
        let ModelMetadataRequest { name, version } = request.into_inner();
        let result = super::model_metadata(&self.table, &name, &version).map(|metadata| {
            let tensor = |t: super::TensorMetadata| TensorMetadata {
                name: t.name,
                datatype: t.datatype.to_owned(),
                shape: t.shape,
            };
            ModelMetadataResponse {
                name: metadata.name,
                versions: metadata.versions,
                platform: metadata.platform.to_owned(),
                inputs: metadata.inputs.into_iter().map(tensor).collect(),
                outputs: metadata.outputs.into_iter().map(tensor).collect(),
            }
        });
        self.record(&name, Api::GetModelMetadata, started, result)
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let started = Instant::now();
        let deadline = GrpcDeadline::of(&request);
        let request = request.into_inner();
        let model = request.model_name.clone();
        let result = GrpcDeadline::bound(deadline, self.infer_inner(request, deadline.map(|d| d.at))).await;
        self.record(&model, Api::Predict, started, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::inference::model_infer_request::InferInputTensor;

    fn bytes_input(name: &str, elements: &[&[u8]]) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: "BYTES".into(),
            shape: vec![elements.len() as i64],
            parameters: Default::default(),
            contents: Some(InferTensorContents {
                bytes_contents: elements.iter().map(|e| e.to_vec()).collect(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn raw_and_contents_inputs_decode_alike() -> Result<(), ServeError> {
        let mut request =
            ModelInferRequest { inputs: vec![bytes_input("s", &[b"a", b"bc"])], ..Default::default() };
        let (contents, raw) = decode(&mut request.clone())?;
        assert!(!raw);
        request.inputs[0].contents = None;
        request.raw_input_contents = vec![super::super::join_bytes([b"a".as_slice(), b"bc"])];
        let (from_raw, raw) = decode(&mut request.clone())?;
        assert!(raw);
        assert_eq!(contents, from_raw);
        request.raw_input_contents.push(Vec::new());
        let message = decode(&mut request).err().map(|e| e.message().to_owned());
        assert_eq!(
            message.as_deref(),
            Some("raw_input_contents has 2 entries for 1 inputs: send one per input, or none")
        );
        let mut floats = ModelInferRequest { inputs: vec![bytes_input("s", &[])], ..Default::default() };
        floats.inputs[0].datatype = "FP32".into();
        let message = decode(&mut floats).err().map(|e| e.message().to_owned());
        assert_eq!(
            message.as_deref(),
            Some("input 's' has datatype \"FP32\": kiln models take BYTES (one encoded image per element)")
        );
        Ok(())
    }
}
