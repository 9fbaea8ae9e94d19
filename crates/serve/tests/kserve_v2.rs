//! The Open Inference Protocol (KServe v2) through real sockets, requests written by hand the way
//! tritonclient writes them: REST JSON, REST with the binary data extension, gRPC `contents` and gRPC
//! `raw_input_contents`, each answer checked against the in-process runtime.

mod support;

use serde_json::{Value, json};
use serve::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use serve::proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use serve::proto::inference::{
    InferTensorContents, ModelInferRequest, ModelMetadataRequest, ModelReadyRequest, ServerLiveRequest,
    ServerReadyRequest,
};
use support::{Fixture, TestResult, b64, image, reference, serve_fixture};

/// Served confidences come from the same runtime.
const CONFIDENCE_TOLERANCE: f32 = 1e-5;

/// BYTES elements in v2's raw layout: each a 4-byte little-endian length, then the bytes.
fn length_prefixed(elements: &[&[u8]]) -> Vec<u8> {
    let mut raw = Vec::new();
    for element in elements {
        raw.extend_from_slice(&(element.len() as u32).to_le_bytes());
        raw.extend_from_slice(element);
    }
    raw
}

fn split_length_prefixed(mut raw: &[u8]) -> TestResult<Vec<String>> {
    let mut elements = Vec::new();
    while let Some((length, rest)) = raw.split_first_chunk::<4>() {
        let (element, rest) = rest.split_at(u32::from_le_bytes(*length) as usize);
        elements.push(String::from_utf8(element.to_vec())?);
        raw = rest;
    }
    Ok(elements)
}

fn fp32(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_health_metadata_and_infer_in_json_and_binary() -> TestResult {
    let Fixture { base: _base, dir, server } = serve_fixture(3, |_| {}).await?;
    let (cat, rocket) = (image("chelsea.jpg")?, image("rocket.jpg")?);
    let (expected_cat, expected_rocket) = (reference(&dir, &cat)?, reference(&dir, &rocket)?);
    let url = |path: &str| format!("{}{path}", server.rest);

    for probe in
        ["/v2/health/live", "/v2/health/ready", "/v2/models/vit/ready", "/v2/models/vit/versions/3/ready"]
    {
        assert_eq!(server.http.get(url(probe)).send().await?.status().as_u16(), 200, "{probe}");
    }
    let (status, metadata) = server.get("/v2").await?;
    assert_eq!((status, &metadata["name"]), (200, &json!("kiln")));
    assert_eq!(metadata["extensions"], json!(["binary_tensor_data"]));
    let (status, metadata) = server.get("/v2/models/vit").await?;
    assert_eq!(status, 200);
    assert_eq!(metadata["versions"], json!(["3"]));
    assert_eq!(metadata["inputs"], json!([{"name": "string_input", "datatype": "BYTES", "shape": [-1]}]));
    assert_eq!(
        metadata["outputs"],
        json!([
            {"name": "confidence", "datatype": "FP32", "shape": [-1]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]}
        ])
    );

    // JSON: BYTES `data` holds base64 text, as the TF Serving predict API's strings do.
    let body = json!({
        "id": "req-1",
        "inputs": [{"name": "string_input", "shape": [2], "datatype": "BYTES", "data": [b64(&cat), b64(&rocket)]}],
    });
    let (status, answer) = server.post("/v2/models/vit/versions/3/infer", &body).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (&answer["model_name"], &answer["model_version"], &answer["id"]),
        (&json!("vit"), &json!("3"), &json!("req-1"))
    );
    let output = |name: &str| -> TestResult<Value> {
        let outputs = answer["outputs"].as_array().ok_or("no outputs")?;
        Ok(outputs.iter().find(|o| o["name"] == name).ok_or("output missing")?.clone())
    };
    let label = output("label")?;
    assert_eq!((&label["datatype"], &label["shape"]), (&json!("BYTES"), &json!([2])));
    assert_eq!(label["data"], json!([expected_cat.label, expected_rocket.label]));
    let confidence = output("confidence")?;
    assert_eq!(confidence["datatype"], "FP32");
    let served = confidence["data"][1].as_f64().ok_or("no confidence")? as f32;
    assert!((served - expected_rocket.confidence).abs() < CONFIDENCE_TOLERANCE);

    // Binary extension: raw image bytes in, both outputs binary (tritonclient's defaults).
    let header = serde_json::to_vec(&json!({
        "inputs": [{"name": "string_input", "shape": [2], "datatype": "BYTES",
                    "parameters": {"binary_data_size": length_prefixed(&[&rocket, &cat]).len()}}],
        "parameters": {"binary_data_output": true},
    }))?;
    let mut body = header.clone();
    body.extend_from_slice(&length_prefixed(&[&rocket, &cat]));
    let response = server
        .http
        .post(url("/v2/models/vit/infer"))
        .header("Inference-Header-Content-Length", header.len())
        .body(body)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    let json_length: usize = response.headers()["inference-header-content-length"].to_str()?.parse()?;
    let bytes = response.bytes().await?;
    let (header, mut binary) = bytes.split_at(json_length);
    let header: Value = serde_json::from_slice(header)?;
    let mut outputs = std::collections::BTreeMap::new();
    for output in header["outputs"].as_array().ok_or("no outputs")? {
        let size = output["parameters"]["binary_data_size"].as_u64().ok_or("not binary")? as usize;
        let (raw, rest) = binary.split_at(size);
        outputs.insert(output["name"].as_str().ok_or("no name")?.to_owned(), raw.to_vec());
        binary = rest;
    }
    assert_eq!(
        split_length_prefixed(&outputs["label"])?,
        [expected_rocket.label.clone(), expected_cat.label.clone()]
    );
    let confidences = fp32(&outputs["confidence"]);
    assert!((confidences[1] - expected_cat.confidence).abs() < CONFIDENCE_TOLERANCE);

    // Errors: v2's {"error": ...} with the code's status.
    let cases = [
        ("/v2/models/nope/infer", json!({"inputs": []}), 404, "Servable not found for request: Latest(nope)"),
        (
            "/v2/models/vit/infer",
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["eA"]}]}),
            400,
            "expected one input, 'string_input', the request has [\"image\"]",
        ),
        (
            "/v2/models/vit/infer",
            json!({"inputs": [{"name": "string_input", "shape": [1], "datatype": "FP32", "data": [1.0]}]}),
            400,
            "input 'string_input' has datatype \"FP32\": kiln models take BYTES (one encoded image per element)",
        ),
        (
            "/v2/models/vit/infer",
            json!({"inputs": [{"name": "string_input", "shape": [1], "datatype": "BYTES", "data": ["bm90IGFuIGltYWdl"]}]}),
            400,
            "input 'string_input' element 0: ",
        ),
    ];
    for (path, body, status, message) in cases {
        let (got, answer) = server.post(path, &body).await?;
        let error = answer["error"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{path} {body}: {answer}");
        assert!(error.starts_with(message), "{error}");
    }
    let response = server.http.get(url("/v2/models/vit/versions/9/ready")).send().await?;
    assert_eq!(response.status().as_u16(), 404);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_infer_with_contents_and_raw() -> TestResult {
    let Fixture { base: _base, dir, server } = serve_fixture(1, |_| {}).await?;
    let (cat, rocket) = (image("chelsea.jpg")?, image("rocket.jpg")?);
    let (expected_cat, expected_rocket) = (reference(&dir, &cat)?, reference(&dir, &rocket)?);
    let mut client = GrpcInferenceServiceClient::connect(server.grpc.clone()).await?;

    assert!(client.server_live(ServerLiveRequest {}).await?.into_inner().live);
    assert!(client.server_ready(ServerReadyRequest {}).await?.into_inner().ready);
    let ready = |version: &str| ModelReadyRequest { name: "vit".into(), version: version.into() };
    assert!(client.model_ready(ready("1")).await?.into_inner().ready);
    assert!(!client.model_ready(ready("2")).await?.into_inner().ready);
    let metadata =
        client.model_metadata(ModelMetadataRequest { name: "vit".into(), version: String::new() }).await?;
    let metadata = metadata.into_inner();
    assert_eq!((metadata.versions, metadata.inputs[0].datatype.as_str()), (vec!["1".to_owned()], "BYTES"));

    let input = |contents: Option<InferTensorContents>| InferInputTensor {
        name: "string_input".into(),
        datatype: "BYTES".into(),
        shape: vec![2],
        parameters: Default::default(),
        contents,
    };
    // contents.bytes_contents: base64 text and raw bytes both work, outputs come back in contents.
    let request = ModelInferRequest {
        model_name: "vit".into(),
        id: "g1".into(),
        inputs: vec![input(Some(InferTensorContents {
            bytes_contents: vec![b64(&cat).into_bytes(), rocket.clone()],
            ..Default::default()
        }))],
        ..Default::default()
    };
    let response = client.model_infer(request).await?.into_inner();
    assert_eq!((response.model_version.as_str(), response.id.as_str()), ("1", "g1"));
    assert!(response.raw_output_contents.is_empty());
    let output =
        |name: &str| response.outputs.iter().find(|o| o.name == name).and_then(|o| o.contents.clone());
    let labels = output("label").ok_or("no label")?.bytes_contents;
    assert_eq!(labels, [expected_cat.label.as_bytes(), expected_rocket.label.as_bytes()]);
    let confidence = output("confidence").ok_or("no confidence")?.fp32_contents;
    assert!((confidence[0] - expected_cat.confidence).abs() < CONFIDENCE_TOLERANCE);

    // raw_input_contents (what tritonclient sends), one output asked for: raw_output_contents back.
    let request = ModelInferRequest {
        model_name: "vit".into(),
        model_version: "1".into(),
        inputs: vec![input(None)],
        outputs: vec![InferRequestedOutputTensor {
            name: "confidence".into(),
            parameters: Default::default(),
        }],
        raw_input_contents: vec![length_prefixed(&[&rocket, &cat])],
        ..Default::default()
    };
    let response = client.model_infer(request).await?.into_inner();
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(
        (response.outputs[0].name.as_str(), response.outputs[0].datatype.as_str()),
        ("confidence", "FP32")
    );
    let confidences = fp32(&response.raw_output_contents[0]);
    assert!((confidences[0] - expected_rocket.confidence).abs() < CONFIDENCE_TOLERANCE);
    assert!((confidences[1] - expected_cat.confidence).abs() < CONFIDENCE_TOLERANCE);
    let mut request = ModelInferRequest {
        model_name: "vit".into(),
        inputs: vec![input(None)],
        raw_input_contents: vec![length_prefixed(&[&rocket])],
        ..Default::default()
    };
    let status = client.model_infer(request.clone()).await.err().ok_or("accepted")?;
    assert_eq!(
        (status.code(), status.message()),
        (
            tonic::Code::InvalidArgument,
            "input 'string_input' has shape [2] and 1 elements: the model takes shape [-1], one element per \
             image, so the shape must be [1]"
        )
    );
    request.model_name = "nope".into();
    let status = client.model_infer(request).await.err().ok_or("accepted")?;
    assert_eq!(status.code(), tonic::Code::NotFound);
    server.server.shutdown().await;
    Ok(())
}
