//! `kiln serve` speaking the Open Inference Protocol (KServe v2) through the real binary, with bearer
//! tokens on: the v2 health probes stay open, REST infer with Triton's binary data extension and gRPC
//! `ModelInfer` with `raw_input_contents` both answer the Hugging Face reference for a fixture image.

use anyhow::{Context, ensure};
use kiln_e2e::{CONFIDENCE_TOLERANCE, KilnServer, Reference, export, fixture, kiln_binary};
use serde_json::{Value, json};
use serve::proto::inference::ModelInferRequest;
use serve::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use serve::proto::inference::model_infer_request::InferInputTensor;

const TOKEN: &str = "kserve-v2-e2e-token-0123456789";

/// One BYTES element in v2's raw layout: a 4-byte little-endian length, then the bytes.
fn length_prefixed(element: &[u8]) -> Vec<u8> {
    let mut raw = (element.len() as u32).to_le_bytes().to_vec();
    raw.extend_from_slice(element);
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_rest_binary_and_grpc_raw_answer_the_reference_behind_tokens() -> anyhow::Result<()> {
    let (base, _version_dir) = export(&fixture("models/tiny-vit"), &[])?;
    let reference = Reference::load("tiny-vit")?;
    let expected =
        reference.images.iter().find(|r| r.image == "images/chelsea.jpg").context("no reference")?;
    let image = std::fs::read(fixture("images/chelsea.jpg"))?;
    let secrets = tempfile::tempdir()?;
    let tokens = secrets.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n"))?;
    let tokens = tokens.to_str().context("utf-8 path")?;
    let server =
        KilnServer::start(&kiln_binary()?, "vit", base.path(), &["--auth_token_file", tokens]).await?;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.rest_url());

    for probe in ["/v2/health/live", "/v2/health/ready"] {
        let status = http.get(url(probe)).send().await?.status().as_u16();
        ensure!(status == 200, "{probe} without a token: {status}");
    }
    let status = http.get(url("/v2/models/vit")).send().await?.status().as_u16();
    ensure!(status == 401, "model metadata without a token: {status}");

    let raw = length_prefixed(&image);
    let header = serde_json::to_vec(&json!({
        "inputs": [{"name": "string_input", "shape": [1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "label"}, {"name": "confidence"}],
    }))?;
    let mut body = header.clone();
    body.extend_from_slice(&raw);
    let response = http
        .post(url("/v2/models/vit/infer"))
        .bearer_auth(TOKEN)
        .header("Inference-Header-Content-Length", header.len())
        .body(body)
        .send()
        .await?;
    ensure!(response.status().as_u16() == 200, "REST infer: {}", response.status());
    let answer: Value = response.json().await?;
    ensure!(answer["outputs"][0]["data"] == json!([expected.label]), "REST label: {answer}");
    let confidence = answer["outputs"][1]["data"][0].as_f64().context("no confidence")? as f32;
    ensure!((confidence - expected.confidence).abs() <= CONFIDENCE_TOLERANCE, "REST confidence {confidence}");

    let channel = tonic::transport::Endpoint::from_shared(server.grpc_url())?.connect().await?;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse()?;
    let mut client =
        GrpcInferenceServiceClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert("authorization", bearer.clone());
            Ok(request)
        });
    let request = ModelInferRequest {
        model_name: "vit".into(),
        inputs: vec![InferInputTensor {
            name: "string_input".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            ..Default::default()
        }],
        raw_input_contents: vec![raw],
        ..Default::default()
    };
    let response = client.model_infer(request).await?.into_inner();
    let names: Vec<&str> = response.outputs.iter().map(|o| o.name.as_str()).collect();
    ensure!(names == ["confidence", "label"], "gRPC outputs {names:?}");
    ensure!(response.raw_output_contents[1] == length_prefixed(expected.label.as_bytes()), "gRPC label");
    let confidence = f32::from_le_bytes(response.raw_output_contents[0][..4].try_into()?);
    ensure!((confidence - expected.confidence).abs() <= CONFIDENCE_TOLERANCE, "gRPC confidence {confidence}");

    let exit = server.stop().await?;
    ensure!(exit.success(), "kiln serve exited with {exit}");
    Ok(())
}
