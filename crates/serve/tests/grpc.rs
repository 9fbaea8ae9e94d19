//! The gRPC API through a real socket with a tonic client generated from kiln's own .proto files.

mod support;

use prost::Message as _;
use serve::proto::tensorflow::DataType;
use serve::proto::tensorflow::serving::model_service_client::ModelServiceClient;
use serve::proto::tensorflow::serving::{
    ClassificationRequest, GetModelMetadataRequest, GetModelStatusRequest, ModelSpec, SignatureDefMap,
    model_spec,
};
use support::{Fixture, TestResult, b64, b64_url, image, predict_request, reference, serve_fixture};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const CONFIDENCE_TOLERANCE: f32 = 1e-5;

fn spec(name: &str, version: Option<i64>) -> Option<ModelSpec> {
    Some(ModelSpec {
        name: name.into(),
        signature_name: String::new(),
        version_choice: version.map(model_spec::VersionChoice::Version),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_metadata_status_and_health() -> TestResult {
    let Fixture { base: _base, dir, server } = serve_fixture(2, |_| {}).await?;
    let cat = image("chelsea.jpg")?;
    let rocket = image("rocket.jpg")?;
    let (expected_cat, expected_rocket) = (reference(&dir, &cat)?, reference(&dir, &rocket)?);
    let mut client = server.grpc_client().await?;

    // string_val may carry standard base64, URL-safe base64, or the raw image bytes.
    let (std_b64, url_b64) = (b64(&cat), b64_url(&rocket));
    let request = predict_request("vit", None, &[std_b64.as_bytes(), url_b64.as_bytes(), &cat]);
    let response = client.predict(request).await?.into_inner();
    let echoed = response.model_spec.ok_or("no model_spec")?;
    assert_eq!(echoed.name, "vit");
    assert_eq!(echoed.signature_name, "serving_default");
    assert_eq!(echoed.version_choice, Some(model_spec::VersionChoice::Version(2)));
    let label = &response.outputs["label"];
    let confidence = &response.outputs["confidence"];
    assert_eq!(label.dtype, DataType::DtString as i32);
    assert_eq!(confidence.dtype, DataType::DtFloat as i32);
    assert_eq!(label.tensor_shape.as_ref().map(|s| s.dim[0].size), Some(3));
    let labels: Vec<&[u8]> = label.string_val.iter().map(Vec::as_slice).collect();
    assert_eq!(
        labels,
        [expected_cat.label.as_bytes(), expected_rocket.label.as_bytes(), expected_cat.label.as_bytes()]
    );
    assert!((confidence.float_val[1] - expected_rocket.confidence).abs() < CONFIDENCE_TOLERANCE);

    // Broadcast of one value over shape [2], and output_filter.
    let mut request = predict_request("vit", Some(2), &[std_b64.as_bytes()]);
    request.inputs.get_mut("string_input").ok_or("no input")?.tensor_shape.as_mut().ok_or("no shape")?.dim
        [0]
    .size = 2;
    request.output_filter = vec!["label".into()];
    let response = client.predict(request).await?.into_inner();
    assert_eq!(response.outputs.keys().collect::<Vec<_>>(), ["label"]);
    assert_eq!(response.outputs["label"].string_val.len(), 2);

    // Errors keep TF's codes and messages.
    let status = client
        .predict(predict_request("vit", Some(5), &[std_b64.as_bytes()]))
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::NotFound, "Servable not found for request: Specific(vit, 5)")
    );
    let mut request = predict_request("vit", None, &[std_b64.as_bytes()]);
    request.model_spec.as_mut().ok_or("no spec")?.signature_name = "foo".into();
    let status = client.predict(request).await.err().ok_or("accepted")?;
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::FailedPrecondition, "Serving signature key \"foo\" not found.")
    );
    let mut request = predict_request("vit", None, &[std_b64.as_bytes()]);
    let tensor = request.inputs.remove("string_input").ok_or("no input")?;
    request.inputs.insert("image".into(), tensor);
    let status = client.predict(request).await.err().ok_or("accepted")?;
    assert_eq!(
        (status.code(), status.message()),
        (
            tonic::Code::InvalidArgument,
            "input tensor alias not found in signature: image. Inputs expected to be in the set {string_input}."
        )
    );
    let status =
        client.predict(predict_request("vit", None, &[b"not base64!"])).await.err().ok_or("accepted")?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("input 'string_input' string_val[0]: invalid base64"),
        "{}",
        status.message()
    );
    let status = client
        .classify(ClassificationRequest { model_spec: spec("vit", None), input: None })
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(status.message().contains("Classify is not implemented by kiln"));

    // Metadata packs a SignatureDefMap in an Any.
    let request = GetModelMetadataRequest {
        model_spec: spec("vit", None),
        metadata_field: vec!["signature_def".into()],
    };
    let metadata = client.get_model_metadata(request).await?.into_inner();
    let any = &metadata.metadata["signature_def"];
    assert_eq!(any.type_url, "type.googleapis.com/tensorflow.serving.SignatureDefMap");
    let map = SignatureDefMap::decode(any.value.as_slice())?;
    let signature = &map.signature_def["serving_default"];
    assert_eq!(signature.method_name, "tensorflow/serving/predict");
    assert_eq!(signature.inputs["string_input"].dtype, DataType::DtString as i32);
    assert_eq!(signature.inputs["string_input"].tensor_shape.as_ref().map(|s| s.dim[0].size), Some(-1));
    let request = GetModelMetadataRequest { model_spec: spec("vit", None), metadata_field: vec![] };
    assert_eq!(
        client.get_model_metadata(request).await.err().map(|s| s.code()),
        Some(tonic::Code::InvalidArgument)
    );

    let mut models = ModelServiceClient::connect(server.grpc.clone()).await?;
    let status =
        models.get_model_status(GetModelStatusRequest { model_spec: spec("vit", None) }).await?.into_inner();
    let version = &status.model_version_status[0];
    assert_eq!((version.version, version.state), (2, 30));
    assert_eq!(version.status.as_ref().map(|s| (s.error_code, s.error_message.as_str())), Some((0, "")));

    let mut health =
        HealthClient::new(tonic::transport::Channel::from_shared(server.grpc.clone())?.connect().await?);
    for service in ["", "tensorflow.serving.PredictionService"] {
        let answer = health.check(HealthCheckRequest { service: service.into() }).await?.into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32, "{service}");
    }
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_are_accepted() -> TestResult {
    let Fixture { base: _base, dir: _dir, server } = serve_fixture(1, |_| {}).await?;
    // 8 large JPEGs as base64 are about 12 MB, three times tonic's default 4 MiB limit.
    let big = b64(&image("large-2400x2093.jpg")?);
    let values: Vec<&[u8]> = vec![big.as_bytes(); 8];
    let client = server.grpc_client().await?;
    let mut client = client.max_encoding_message_size(64 << 20);
    let response = client.predict(predict_request("vit", None, &values)).await?.into_inner();
    assert_eq!(response.outputs["label"].string_val.len(), 8);
    server.server.shutdown().await;
    Ok(())
}
