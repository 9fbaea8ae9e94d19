//! `kiln serve` through the real binary: the fixture model exported into a fresh base dir, the server on
//! loopback ports picked at run time, REST (reqwest) and gRPC (tonic, kiln's own .proto types) clients,
//! SIGTERM draining, and the bad-input table of crates/serve/README.md.

#[path = "../crates/serve/tests/support/raw_codec.rs"]
mod raw_codec;

use std::net::TcpStream;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use base64::Engine as _;
use kiln_e2e::{KilnServer, Reference, export, fixture, kiln_binary};
use prost::Message as _;
use raw_codec::RawCodec;
use serde_json::{Value, json};
use serve::proto::tensorflow::serving::model_service_client::ModelServiceClient;
use serve::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use serve::proto::tensorflow::serving::{
    GetModelMetadataRequest, GetModelStatusRequest, ModelSpec, PredictRequest, PredictResponse,
    SignatureDefMap, model_spec,
};
use serve::proto::tensorflow::{DataType, TensorProto, TensorShapeProto, tensor_shape_proto};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// The e2e parity bar against the Hugging Face reference (tests/export_run.rs).
const CONFIDENCE_TOLERANCE: f64 = 1e-3;

/// `--rest_api_timeout_in_ms` of the bad-input server: the REST deadline, header read timeout and
/// shutdown drain limit, short so the slow-loris cases finish quickly.
const SHORT_DEADLINE_MS: u64 = 1500;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn b64_url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn image(name: &str) -> anyhow::Result<Vec<u8>> {
    let path = fixture(&format!("images/{name}"));
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// The reference top-1 label and confidence of a fixture image.
fn expected(reference: &Reference, name: &str) -> anyhow::Result<(String, f64)> {
    let entry = reference
        .images
        .iter()
        .find(|r| r.image == format!("images/{name}"))
        .with_context(|| format!("{name} has no reference answer"))?;
    Ok((entry.label.clone(), f64::from(entry.confidence)))
}

fn close(got: &Value, want: f64) -> bool {
    got.as_f64().is_some_and(|c| (c - want).abs() <= CONFIDENCE_TOLERANCE)
}

/// A running `kiln serve` for model `vit` with the addresses and HTTP client the tests use.
struct Served {
    server: KilnServer,
    rest: String,
    grpc: String,
    grpc_addr: String,
    rest_addr: String,
    http: reqwest::Client,
}

impl Served {
    /// Starts `kiln serve` for model `vit` at `base` and waits until `/readyz` answers 200.
    async fn start(base: &Path, extra: &[&str]) -> anyhow::Result<Served> {
        let server = KilnServer::start(&kiln_binary()?, "vit", base, extra).await?;
        Ok(Served {
            rest: server.rest_url(),
            grpc: server.grpc_url(),
            grpc_addr: server.grpc_addr(),
            rest_addr: server.rest_addr(),
            server,
            http: reqwest::Client::new(),
        })
    }

    fn log(&self) -> String {
        self.server.log()
    }

    fn sigterm(&self) -> anyhow::Result<()> {
        self.server.sigterm()
    }

    async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        self.server.wait_exit(limit).await
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.post_raw(path, serde_json::to_vec(body)?).await
    }

    async fn post_raw(&self, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, Value)> {
        let response = self.http.post(format!("{}{path}", self.rest)).body(body).send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        let value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{path}: not JSON: {}", String::from_utf8_lossy(&bytes)))?;
        Ok((status, value))
    }

    async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let response = self.http.get(format!("{}{path}", self.rest)).send().await?;
        let status = response.status().as_u16();
        Ok((status, serde_json::from_slice(&response.bytes().await?)?))
    }

    async fn predict_client(&self) -> anyhow::Result<PredictionServiceClient<Channel>> {
        Ok(PredictionServiceClient::connect(self.grpc.clone())
            .await?
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }
}

fn spec(name: &str, version: Option<i64>) -> Option<ModelSpec> {
    Some(ModelSpec {
        name: name.into(),
        signature_name: String::new(),
        version_choice: version.map(model_spec::VersionChoice::Version),
    })
}

/// A `DT_STRING` tensor of shape `dims`, as `tf.make_tensor_proto` builds one.
fn strings(dims: &[i64], values: Vec<Vec<u8>>) -> TensorProto {
    TensorProto {
        dtype: DataType::DtString as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: dims.iter().map(|&size| tensor_shape_proto::Dim { size, name: String::new() }).collect(),
            unknown_rank: false,
        }),
        string_val: values,
        ..Default::default()
    }
}

/// The seed's gRPC request: `tf.make_tensor_proto([b64])` under `string_input`.
fn predict_request(values: Vec<Vec<u8>>) -> PredictRequest {
    let n = values.len() as i64;
    PredictRequest {
        model_spec: spec("vit", None),
        inputs: [("string_input".to_owned(), strings(&[n], values))].into(),
        output_filter: vec![],
    }
}

fn grpc_labels(response: &PredictResponse) -> Vec<String> {
    response
        .outputs
        .get("label")
        .map(|t| t.string_val.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect())
        .unwrap_or_default()
}

fn version_number(version_dir: &Path) -> anyhow::Result<i64> {
    let name = version_dir.file_name().and_then(|n| n.to_str()).context("version dir has no name")?;
    Ok(name.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_answers_rest_and_grpc_then_drains_on_sigterm() -> anyhow::Result<()> {
    let (base, version_dir) = export(&fixture("models/tiny-vit"), &[])?;
    let version = version_number(&version_dir)?;
    let reference = Reference::load("tiny-vit")?;
    let (cat, rocket) = (image("chelsea.jpg")?, image("rocket.jpg")?);
    let (cat_label, cat_confidence) = expected(&reference, "chelsea.jpg")?;
    let (rocket_label, rocket_confidence) = expected(&reference, "rocket.jpg")?;
    let mut served = Served::start(base.path(), &[]).await?;

    // REST, row layout: the seed's plain base64 string, URL-safe text, and {"b64": ...}.
    let body = json!({"instances": [b64(&cat), b64_url(&rocket), {"b64": b64(&rocket)}]});
    let (status, answer) = served.post("/v1/models/vit:predict", &body).await?;
    ensure!(status == 200, "row predict: {status} {answer}");
    let predictions = answer["predictions"].as_array().context("no predictions")?;
    ensure!(predictions.len() == 3, "{answer}");
    for (prediction, (label, confidence)) in predictions.iter().zip([
        (&cat_label, cat_confidence),
        (&rocket_label, rocket_confidence),
        (&rocket_label, rocket_confidence),
    ]) {
        ensure!(prediction["label"] == label.as_str(), "{prediction} vs {label}");
        ensure!(close(&prediction["confidence"], confidence), "{prediction} vs {confidence}");
    }

    // REST, columnar layout, named input, both base64 forms.
    let body = json!({"signature_name": "serving_default",
                      "inputs": {"string_input": [{"b64": b64(&cat)}, b64(&rocket)]}});
    let (status, answer) = served.post("/v1/models/vit:predict", &body).await?;
    ensure!(status == 200, "columnar predict: {status} {answer}");
    ensure!(answer["outputs"]["label"] == json!([cat_label, rocket_label]), "{answer}");
    ensure!(close(&answer["outputs"]["confidence"][1], rocket_confidence), "{answer}");

    // REST status and metadata.
    let (status, answer) = served.get("/v1/models/vit").await?;
    ensure!(status == 200, "{answer}");
    let versions = &answer["model_version_status"];
    ensure!(versions[0]["version"].as_str() == Some(version.to_string().as_str()), "{answer}");
    ensure!(versions[0]["state"] == "AVAILABLE" && versions[0]["status"]["error_code"] == "OK", "{answer}");
    let (status, answer) = served.get(&format!("/v1/models/vit/versions/{version}/metadata")).await?;
    ensure!(status == 200, "{answer}");
    ensure!(
        answer["model_spec"] == json!({"name": "vit", "signature_name": "", "version": version.to_string()})
    );
    let signature = &answer["metadata"]["signature_def"]["signature_def"]["serving_default"];
    ensure!(signature["inputs"]["string_input"]["dtype"] == "DT_STRING", "{answer}");
    ensure!(signature["method_name"] == "tensorflow/serving/predict", "{answer}");

    // gRPC Predict (base64 text and raw bytes), GetModelStatus, GetModelMetadata.
    let mut client = served.predict_client().await?;
    let response =
        client.predict(predict_request(vec![b64(&cat).into_bytes(), rocket.clone()])).await?.into_inner();
    ensure!(grpc_labels(&response) == [cat_label.clone(), rocket_label.clone()], "{response:?}");
    let confidences = &response.outputs.get("confidence").context("no confidence")?.float_val;
    ensure!((f64::from(confidences[0]) - cat_confidence).abs() <= CONFIDENCE_TOLERANCE, "{confidences:?}");
    let echoed = response.model_spec.context("no model_spec")?;
    ensure!(echoed.version_choice == Some(model_spec::VersionChoice::Version(version)), "{echoed:?}");
    ensure!(echoed.signature_name == "serving_default", "{echoed:?}");
    let mut models = ModelServiceClient::connect(served.grpc.clone()).await?;
    let status =
        models.get_model_status(GetModelStatusRequest { model_spec: spec("vit", None) }).await?.into_inner();
    ensure!(status.model_version_status.len() == 1 && status.model_version_status[0].version == version);
    ensure!(status.model_version_status[0].state == 30, "not AVAILABLE: {status:?}");
    let metadata = client
        .get_model_metadata(GetModelMetadataRequest {
            model_spec: spec("vit", None),
            metadata_field: vec!["signature_def".into()],
        })
        .await?
        .into_inner();
    let any = metadata.metadata.get("signature_def").context("no signature_def")?;
    ensure!(any.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap", "{}", any.type_url);
    let map = SignatureDefMap::decode(any.value.as_slice())?;
    ensure!(map.signature_def["serving_default"].inputs.contains_key("string_input"));

    // SIGTERM while REST and gRPC requests are in flight: each is answered, then the process exits 0.
    let large = image("large-2400x2093.jpg")?;
    let heavy = serde_json::to_vec(&json!({"instances": vec![b64(&large); 4]}))?;
    let url = format!("{}/v1/models/vit:predict", served.rest);
    let mut rest_calls = Vec::new();
    for _ in 0..2 {
        // Each client connects first, so the heavy request only has to be written before the signal.
        let http = reqwest::Client::new();
        http.get(format!("{}/healthz", served.rest)).send().await?.bytes().await?;
        let (url, body) = (url.clone(), heavy.clone());
        rest_calls.push(tokio::spawn(async move {
            let response = http.post(url).body(body).send().await?;
            let status = response.status().as_u16();
            let answer: Value = response.json().await?;
            Ok::<_, anyhow::Error>((status, answer, Instant::now()))
        }));
    }
    let mut grpc_client = served.predict_client().await?;
    let grpc_call = tokio::spawn(async move {
        let response = grpc_client.predict(predict_request(vec![large.clone(); 4])).await;
        (response, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    served.sigterm()?;
    let mut answered_after_signal = 0;
    for call in rest_calls {
        let (status, answer, at) = call.await??;
        ensure!(status == 200, "in-flight REST request failed during shutdown: {status} {answer}");
        ensure!(answer["predictions"].as_array().is_some_and(|p| p.len() == 4), "{answer}");
        answered_after_signal += usize::from(at > signalled);
    }
    let (response, at) = grpc_call.await?;
    let response = response.context("in-flight gRPC request failed during shutdown")?.into_inner();
    ensure!(grpc_labels(&response).len() == 4, "{response:?}");
    answered_after_signal += usize::from(at > signalled);
    ensure!(answered_after_signal > 0, "every request finished before SIGTERM: the drain was not exercised");
    let exit = served.wait_exit(Duration::from_secs(30)).await?;
    ensure!(exit.success(), "kiln serve exited with {exit}:\n{}", served.log());
    let log = served.log();
    ensure!(log.contains("draining in-flight requests") && log.contains("server stopped"), "{log}");
    ensure!(TcpStream::connect(&served.rest_addr).is_err(), "REST port still open after exit");
    Ok(())
}

/// A well-formed PNG whose IHDR declares `width` x `height` RGB but whose IDAT holds almost nothing: a
/// decoder that trusts the header allocates `3 * width * height` bytes.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut header = width.to_be_bytes().to_vec();
    header.extend(height.to_be_bytes());
    header.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    // An empty zlib stream (stored, final) as the only image data.
    for (kind, data) in [
        (&b"IHDR"[..], header),
        (b"IDAT", vec![0x78, 0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]),
        (b"IEND", vec![]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend(&data);
        png.extend((data.len() as u32).to_be_bytes());
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
    }
    png
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A 1x1 PNG (one red pixel).
fn one_pixel_png() -> anyhow::Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(1, 1, image::Rgb([255, 0, 0])).write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// Bytes no image format starts with and no base64 alphabet contains all of (a fixed pseudo-random run).
fn random_bytes() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// One bad input sent the same way over both transports.
struct Case {
    name: &'static str,
    /// The JSON instance (row layout) or the whole body for request-level cases.
    rest: Value,
    /// `string_val` entries of the gRPC request.
    grpc: Vec<Vec<u8>>,
    rest_status: u16,
    /// Expected start of the REST `error` message.
    rest_message: String,
    grpc_code: tonic::Code,
    /// Expected start of the gRPC status message.
    grpc_message: String,
}

fn instance_cases() -> anyhow::Result<Vec<Case>> {
    let truncated = image("bad/truncated.jpg")?;
    let huge_jpeg = image("bad/huge-65535x65535.jpg")?;
    let huge_png = png_header(200_000, 200_000);
    let random = random_bytes();
    let case = |name, value: Vec<u8>, text: bool, status, rest: &str, code, grpc: &str| Case {
        name,
        rest: if text {
            Value::String(String::from_utf8_lossy(&value).into_owned())
        } else {
            json!({"b64": b64(&value)})
        },
        grpc: vec![value],
        rest_status: status,
        rest_message: format!("instance 0 of 'instances': {rest}"),
        grpc_code: code,
        grpc_message: format!("input 'string_input' string_val[0]: {grpc}"),
    };
    use tonic::Code::InvalidArgument as Bad;
    Ok(vec![
        case(
            "invalid base64",
            b"not base64 !!".to_vec(),
            true,
            400,
            "invalid base64 at byte 11: unexpected '!'",
            Bad,
            "invalid base64 at byte 11: unexpected '!'",
        ),
        case("empty string", Vec::new(), true, 400, "empty input", Bad, "empty input"),
        case("random bytes", random, false, 400, "invalid base64 at byte", Bad, "invalid base64 at byte"),
        case(
            "truncated JPEG",
            truncated,
            false,
            400,
            "truncated JPEG: the data ends before the image does",
            Bad,
            "truncated JPEG: the data ends before the image does",
        ),
        case(
            "JPEG header 65535x65535",
            huge_jpeg,
            false,
            400,
            "image is 65535x65535 = 4294836225 pixels, above the limit of 64000000",
            Bad,
            "image is 65535x65535 = 4294836225 pixels, above the limit of 64000000",
        ),
        case(
            "PNG IHDR 200000x200000",
            huge_png,
            false,
            400,
            "image is 200000x200000",
            Bad,
            "image is 200000x200000",
        ),
    ])
}

/// A bad request (rather than a bad instance): the REST body and path, and the gRPC request if the
/// problem can be expressed in protobuf at all.
struct RequestCase {
    name: &'static str,
    rest_path: String,
    rest_body: Vec<u8>,
    rest_status: u16,
    rest_message: String,
    grpc: Option<GrpcSend>,
    grpc_code: tonic::Code,
    grpc_message: String,
}

/// What the gRPC side of a case sends.
enum GrpcSend {
    Predict(PredictRequest),
    /// Bytes sent as the PredictRequest message without protobuf encoding.
    Raw(Vec<u8>),
}

fn with_spec(
    mut request: PredictRequest,
    name: &str,
    choice: Option<model_spec::VersionChoice>,
) -> PredictRequest {
    request.model_spec =
        Some(ModelSpec { name: name.into(), signature_name: String::new(), version_choice: choice });
    request
}

fn request_cases(good: &str, small: &str) -> anyhow::Result<Vec<RequestCase>> {
    use tonic::Code;
    let predict = "/v1/models/vit:predict".to_owned();
    let body = |value: Value| serde_json::to_vec(&value).expect("JSON values serialize");
    let good_request = || predict_request(vec![good.as_bytes().to_vec()]);
    let mut float = strings(&[1], vec![]);
    float.dtype = DataType::DtFloat as i32;
    float.float_val = vec![1.5];
    let mut wrong_shape = good_request();
    wrong_shape.inputs.insert("string_input".into(), strings(&[2], vec![good.into(); 3]));
    let mut unknown_key = good_request();
    let tensor = unknown_key.inputs.remove("string_input").context("no input")?;
    unknown_key.inputs.insert("image".into(), tensor);
    let mut unknown_signature = good_request();
    if let Some(spec) = unknown_signature.model_spec.as_mut() {
        spec.signature_name = "classify_v2".into();
    }
    let deep = format!("{{\"instances\": {}\"x\"{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let many = vec![small.to_owned(); 10_000];
    let task_size = "Task size 10000 is larger than maximum input batch size 256";
    let oversized = vec![b'A'; (64 << 20) + 4];
    Ok(vec![
        RequestCase {
            name: "wrong dtype",
            rest_path: predict.clone(),
            rest_body: body(json!({"instances": [1.5]})),
            rest_status: 400,
            rest_message: "instance 0 of 'instances': JSON Value: 1.5 Type: Number is not of expected type: string".into(),
            grpc: Some(GrpcSend::Predict(PredictRequest { inputs: [("string_input".to_owned(), float)].into(), ..good_request() })),
            grpc_code: Code::InvalidArgument,
            grpc_message: "input 'string_input': expects dtype DT_STRING but DT_FLOAT is provided".into(),
        },
        RequestCase {
            name: "wrong shape",
            rest_path: predict.clone(),
            rest_body: body(json!({"instances": [[good]]})),
            rest_status: 400,
            rest_message: "instance 0 of 'instances': JSON Value: [".into(),
            grpc: Some(GrpcSend::Predict(wrong_shape)),
            grpc_code: Code::InvalidArgument,
            grpc_message: "input 'string_input': shape [2] needs 2 string_val entries, the request has 3".into(),
        },
        RequestCase {
            name: "unknown input key",
            rest_path: predict.clone(),
            rest_body: body(json!({"instances": [{"image": good}]})),
            rest_status: 400,
            rest_message: "instance 0 of 'instances': input size does not match signature: 1!=1 len({image}) != len({string_input}). Sent extra: {image}. Missing but required: {string_input}.".into(),
            grpc: Some(GrpcSend::Predict(unknown_key)),
            grpc_code: Code::InvalidArgument,
            grpc_message: "input tensor alias not found in signature: image. Inputs expected to be in the set {string_input}.".into(),
        },
        RequestCase {
            name: "unknown signature",
            rest_path: predict.clone(),
            rest_body: body(json!({"signature_name": "classify_v2", "instances": [good]})),
            rest_status: 400,
            rest_message: "Serving signature name: \"classify_v2\" not found in signature def".into(),
            grpc: Some(GrpcSend::Predict(unknown_signature)),
            grpc_code: Code::FailedPrecondition,
            grpc_message: "Serving signature key \"classify_v2\" not found.".into(),
        },
        RequestCase {
            name: "unknown model",
            rest_path: "/v1/models/resnet:predict".into(),
            rest_body: body(json!({"instances": [good]})),
            rest_status: 404,
            rest_message: "Servable not found for request: Latest(resnet)".into(),
            grpc: Some(GrpcSend::Predict(with_spec(good_request(), "resnet", None))),
            grpc_code: Code::NotFound,
            grpc_message: "Servable not found for request: Latest(resnet)".into(),
        },
        RequestCase {
            name: "unknown version",
            rest_path: "/v1/models/vit/versions/99:predict".into(),
            rest_body: body(json!({"instances": [good]})),
            rest_status: 404,
            rest_message: "Servable not found for request: Specific(vit, 99)".into(),
            grpc: Some(GrpcSend::Predict(with_spec(good_request(), "vit", Some(model_spec::VersionChoice::Version(99))))),
            grpc_code: Code::NotFound,
            grpc_message: "Servable not found for request: Specific(vit, 99)".into(),
        },
        RequestCase {
            name: "unknown label",
            rest_path: "/v1/models/vit/labels/canary:predict".into(),
            rest_body: body(json!({"instances": [good]})),
            rest_status: 400,
            rest_message: "Unrecognized servable version label: canary".into(),
            grpc: Some(GrpcSend::Predict(with_spec(good_request(), "vit", Some(model_spec::VersionChoice::VersionLabel("canary".into()))))),
            grpc_code: Code::InvalidArgument,
            grpc_message: "Unrecognized servable version label: canary".into(),
        },
        RequestCase {
            name: "malformed JSON / protobuf",
            rest_path: predict.clone(),
            rest_body: b"{\"instances\": [\"abc\",}".to_vec(),
            rest_status: 400,
            rest_message: "JSON Parse error: expected value at offset: 21".into(),
            grpc: Some(GrpcSend::Raw(vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01])),
            grpc_code: Code::InvalidArgument,
            grpc_message: "the message is not a valid protobuf PredictRequest: failed to decode Protobuf message".into(),
        },
        RequestCase {
            name: "deeply nested JSON",
            rest_path: predict.clone(),
            rest_body: deep.into_bytes(),
            rest_status: 400,
            rest_message: "JSON Parse error: recursion limit exceeded at offset: ".into(),
            grpc: None,
            grpc_code: Code::Ok,
            grpc_message: String::new(),
        },
        RequestCase {
            name: "over-limit body",
            rest_path: predict.clone(),
            rest_body: body(json!({"instances": [String::from_utf8_lossy(&oversized[..9 << 20])]})),
            rest_status: 413,
            rest_message: "Request body is larger than the limit of 8388608 bytes".into(),
            grpc: Some(GrpcSend::Predict(predict_request(vec![oversized]))),
            grpc_code: Code::InvalidArgument,
            grpc_message: "input 'string_input' string_val[0]: input is 67108868 bytes, above the limit of 67108864".into(),
        },
        RequestCase {
            name: "10 000 instances",
            rest_path: predict.clone(),
            rest_body: body(json!({"instances": many})),
            rest_status: 400,
            rest_message: task_size.into(),
            grpc: Some(GrpcSend::Predict(predict_request(many.iter().map(|s| s.as_bytes().to_vec()).collect()))),
            grpc_code: Code::InvalidArgument,
            grpc_message: task_size.into(),
        },
    ])
}

/// Sends `message` as the body of a unary PredictionService/Predict call without protobuf encoding.
async fn raw_predict(channel: Channel, message: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/tensorflow.serving.PredictionService/Predict");
    Ok(grpc.unary(tonic::Request::new(message), path, RawCodec).await?.into_inner())
}

/// A slow-loris client on the REST port: request headers trickled a line every 200 ms. Returns how
/// long the server kept the connection open and what it answered before closing.
async fn trickle_headers(addr: String) -> anyhow::Result<(Duration, String)> {
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    let started = Instant::now();
    stream.write_all(b"POST /v1/models/vit:predict HTTP/1.1\r\nHost: kiln\r\n").await?;
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
            break;
        }
        let mut buffer = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => answer.extend(&buffer[..n]),
            Err(_) => {}
        }
    }
    Ok((started.elapsed(), String::from_utf8_lossy(&answer).into_owned()))
}

/// A slow-loris client sending a whole header but trickling its body a byte every 200 ms; returns the
/// time to the server's answer and its status line.
async fn trickle_body(addr: String) -> anyhow::Result<(Duration, String)> {
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    let started = Instant::now();
    stream
        .write_all(b"POST /v1/models/vit:predict HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        .await?;
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(10) && !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buffer = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => answer.extend(&buffer[..n]),
            Err(_) => {
                // Best effort: the server may already have stopped reading.
                let _ = stream.write_all(b" ").await;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer);
    Ok((started.elapsed(), text.lines().next().unwrap_or_default().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_inputs_get_specific_errors_and_the_server_stays_up() -> anyhow::Result<()> {
    let (base, _version_dir) = export(&fixture("models/tiny-vit"), &[])?;
    let reference = Reference::load("tiny-vit")?;
    let cat = image("chelsea.jpg")?;
    let (cat_label, cat_confidence) = expected(&reference, "chelsea.jpg")?;
    let deadline = format!("--rest_api_timeout_in_ms={SHORT_DEADLINE_MS}");
    let mut served = Served::start(base.path(), &[&deadline, "--rest_api_max_body_bytes=8388608"]).await?;
    let mut client = served.predict_client().await?;
    let mut failures = Vec::new();

    for case in instance_cases()? {
        let (status, answer) =
            served.post("/v1/models/vit:predict", &json!({"instances": [case.rest]})).await?;
        let message = answer["error"].as_str().unwrap_or_default();
        if status != case.rest_status || !message.starts_with(&case.rest_message) {
            failures.push(format!(
                "REST {}: {status} {message:?}, want {} {:?}",
                case.name, case.rest_status, case.rest_message
            ));
        }
        let outcome = client.predict(predict_request(case.grpc)).await;
        match outcome {
            Err(s) if s.code() == case.grpc_code && s.message().starts_with(&case.grpc_message) => {}
            other => failures.push(format!(
                "gRPC {}: {:?}, want {:?} {:?}",
                case.name,
                other.map(|r| grpc_labels(r.get_ref())).map_err(|s| (s.code(), s.message().to_owned())),
                case.grpc_code,
                case.grpc_message
            )),
        }
    }
    let channel = Channel::from_shared(served.grpc.clone())?.connect().await?;
    for case in request_cases(&b64(&cat), &b64(&one_pixel_png()?))? {
        let (status, answer) = served.post_raw(&case.rest_path, case.rest_body).await?;
        let message = answer["error"].as_str().unwrap_or_default();
        if status != case.rest_status || !message.starts_with(&case.rest_message) {
            failures.push(format!(
                "REST {}: {status} {message:?}, want {} {:?}",
                case.name, case.rest_status, case.rest_message
            ));
        }
        let outcome = match case.grpc {
            None => continue,
            Some(GrpcSend::Predict(request)) => {
                client.predict(request).await.map(|r| grpc_labels(r.get_ref()).len())
            }
            Some(GrpcSend::Raw(bytes)) => raw_predict(channel.clone(), bytes).await.map(|r| r.len()),
        };
        match outcome {
            Err(s) if s.code() == case.grpc_code && s.message().starts_with(&case.grpc_message) => {}
            other => failures.push(format!(
                "gRPC {}: {:?}, want {:?} {:?}",
                case.name,
                other.map_err(|s| (s.code(), s.message().to_owned())),
                case.grpc_code,
                case.grpc_message
            )),
        }
    }
    ensure!(failures.is_empty(), "bad-input table mismatches:\n{}", failures.join("\n"));

    // Slow-loris: 16 clients trickling headers and one trickling a body, plus an HTTP/2 client that
    // stalls mid-preface on the gRPC port, while good requests keep being answered.
    let mut stalled_grpc = tokio::net::TcpStream::connect(&served.grpc_addr).await?;
    stalled_grpc.write_all(b"PRI * HTTP/2.0\r\n").await?;
    let slow: Vec<_> = (0..16).map(|_| tokio::spawn(trickle_headers(served.rest_addr.clone()))).collect();
    let slow_body = tokio::spawn(trickle_body(served.rest_addr.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (status, answer) = served.post("/v1/models/vit:predict", &json!({"instances": [b64(&cat)]})).await?;
    ensure!(status == 200, "good request during slow-loris: {status} {answer}");
    ensure!(
        started.elapsed() < Duration::from_secs(1),
        "good request took {:?} during slow-loris",
        started.elapsed()
    );
    let deadline = Duration::from_millis(SHORT_DEADLINE_MS);
    for client in slow {
        let (held, answer) = client.await??;
        ensure!(
            held >= deadline && held < deadline * 3,
            "header slow-loris held {held:?}, answered {answer:?}"
        );
        ensure!(answer.is_empty(), "header slow-loris got {answer:?}");
    }
    let (held, status_line) = slow_body.await??;
    ensure!(held >= deadline && held < deadline * 3, "body slow-loris held {held:?}");
    ensure!(status_line == "HTTP/1.1 504 Gateway Timeout", "body slow-loris got {status_line:?}");

    // A 1-pixel image is a valid image: it is upscaled and classified.
    let pixel = one_pixel_png()?;
    let (status, answer) =
        served.post("/v1/models/vit:predict", &json!({"instances": [{"b64": b64(&pixel)}]})).await?;
    ensure!(
        status == 200 && answer["predictions"][0]["label"].is_string(),
        "1-pixel REST: {status} {answer}"
    );
    let response = client.predict(predict_request(vec![pixel])).await?.into_inner();
    ensure!(grpc_labels(&response).len() == 1, "1-pixel gRPC: {response:?}");

    // Good request after everything: still up and still right.
    let (status, answer) = served.post("/v1/models/vit:predict", &json!({"instances": [b64(&cat)]})).await?;
    ensure!(status == 200 && answer["predictions"][0]["label"] == cat_label.as_str(), "{status} {answer}");
    ensure!(close(&answer["predictions"][0]["confidence"], cat_confidence), "{answer}");
    let response = client.predict(predict_request(vec![b64(&cat).into_bytes()])).await?.into_inner();
    ensure!(grpc_labels(&response) == [cat_label.clone()], "{response:?}");

    // The stalled gRPC connection is still open: shutdown must not wait for it beyond the drain limit.
    let signalled = Instant::now();
    served.sigterm()?;
    let exit = served.wait_exit(Duration::from_secs(20)).await?;
    ensure!(exit.success(), "kiln serve exited with {exit}:\n{}", served.log());
    ensure!(
        signalled.elapsed() < deadline * 4,
        "shutdown took {:?} with a stalled client",
        signalled.elapsed()
    );
    drop(stalled_grpc);
    Ok(())
}
