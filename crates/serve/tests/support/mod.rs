//! Shared setup for the server tests: exported fixture artifacts in fresh temp dirs, a started server on
//! port 0, and clients for both transports.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serve::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use serve::proto::tensorflow::serving::{ModelSpec, PredictRequest, model_spec};
use serve::proto::tensorflow::{DataType, TensorProto, TensorShapeProto, tensor_shape_proto};
use serve::{ModelConfig, Server, ServerOptions, VersionState};
use tonic::transport::Channel;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long a test waits for a version to load or unload before failing.
const STATE_WAIT: Duration = Duration::from_secs(120);

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn image(name: &str) -> TestResult<Vec<u8>> {
    Ok(std::fs::read(fixtures().join("images").join(name))?)
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn b64_url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Exports the tiny ViT fixture as `<base>/<version>`.
pub fn export_version(base: &Path, version: u64) -> TestResult<PathBuf> {
    let request = export::ExportRequest {
        checkpoint: fixtures().join("models/tiny-vit"),
        base: base.to_owned(),
        version: Some(version),
        resize: artifact::ResizeMode::Pil,
        jpeg_draft: false,
        precision: export::Precision::F32,
        accuracy_images: vec![],
        min_top1_agreement: export::MIN_TOP1_AGREEMENT,
    };
    Ok(export::export(&request, &runtime::NoProgress)?.version_dir)
}

/// Copies version directory `from` to `<base>/<version>` the way a careful deployer does: into a hidden
/// directory first, then one rename, so the watcher never sees a half-copied version.
pub fn publish_copy(from: &Path, base: &Path, version: u64) -> TestResult<PathBuf> {
    let staging = base.join(format!(".staging-{version}"));
    copy_dir(from, &staging)?;
    let dest = base.join(version.to_string());
    std::fs::rename(&staging, &dest)?;
    Ok(dest)
}

fn copy_dir(from: &Path, to: &Path) -> TestResult {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A server on 127.0.0.1 with both listeners on free ports, and its clients.
pub struct TestServer {
    pub server: Server,
    pub http: reqwest::Client,
    pub rest: String,
    pub grpc: String,
}

/// Options for one model on loopback ports chosen by the OS, polling every 50 ms.
pub fn options(models: Vec<ModelConfig>) -> ServerOptions {
    let mut options = ServerOptions::new(models);
    options.grpc_addr = Some("127.0.0.1:0".parse().expect("address"));
    options.rest_addr = Some("127.0.0.1:0".parse().expect("address"));
    options.poll_interval = Duration::from_millis(50);
    options.runtime.threads = 1;
    options
}

impl TestServer {
    pub async fn start(options: ServerOptions) -> TestResult<TestServer> {
        let server = Server::start(options).await?;
        let rest = format!("http://{}", server.rest_addr().ok_or("no REST address")?);
        let grpc = format!("http://{}", server.grpc_addr().ok_or("no gRPC address")?);
        Ok(TestServer { server, http: reqwest::Client::new(), rest, grpc })
    }

    /// Waits until `version` of `model` is in `state`.
    pub async fn wait_for(&self, model: &str, version: u64, state: VersionState) -> TestResult {
        let started = Instant::now();
        loop {
            let status = self.server.model_status(model);
            if status.iter().any(|s| s.version == version && s.state == state) {
                return Ok(());
            }
            if started.elapsed() > STATE_WAIT {
                return Err(format!("{model} version {version} never reached {state:?}: {status:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn grpc_client(&self) -> TestResult<PredictionServiceClient<Channel>> {
        Ok(PredictionServiceClient::connect(self.grpc.clone()).await?)
    }

    /// POSTs JSON to a REST path; returns status and parsed body.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> TestResult<(u16, serde_json::Value)> {
        let response = self.http.post(format!("{}{path}", self.rest)).json(body).send().await?;
        let status = response.status().as_u16();
        Ok((status, serde_json::from_slice(&response.bytes().await?)?))
    }

    pub async fn get(&self, path: &str) -> TestResult<(u16, serde_json::Value)> {
        let response = self.http.get(format!("{}{path}", self.rest)).send().await?;
        let status = response.status().as_u16();
        Ok((status, serde_json::from_slice(&response.bytes().await?)?))
    }
}

/// A gRPC predict request as `tf.make_tensor_proto([values])` builds it.
pub fn predict_request(model: &str, version: Option<i64>, values: &[&[u8]]) -> PredictRequest {
    let tensor = TensorProto {
        dtype: DataType::DtString as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: vec![tensor_shape_proto::Dim { size: values.len() as i64, name: String::new() }],
            unknown_rank: false,
        }),
        string_val: values.iter().map(|v| v.to_vec()).collect(),
        ..Default::default()
    };
    PredictRequest {
        model_spec: Some(ModelSpec {
            name: model.into(),
            signature_name: String::new(),
            version_choice: version.map(model_spec::VersionChoice::Version),
        }),
        inputs: [("string_input".to_owned(), tensor)].into(),
        output_filter: vec![],
    }
}

/// The in-process runtime's answer for `bytes`, the reference every served answer must equal.
pub fn reference(version_dir: &Path, bytes: &[u8]) -> TestResult<runtime::Prediction> {
    let model = runtime::Model::load(version_dir)?;
    let mut results = model.predict(&[bytes])?;
    Ok(results.pop().ok_or("no prediction")??)
}

/// A fresh base directory holding the fixture as one version, and a server for it.
pub struct Fixture {
    pub base: tempfile::TempDir,
    /// The exported version directory.
    pub dir: PathBuf,
    pub server: TestServer,
}

/// Exports the fixture as `vit` version `version` into a fresh base, starts a server with [`options`]
/// adjusted by `configure`, and waits until the version is AVAILABLE.
pub async fn serve_fixture(version: u64, configure: impl FnOnce(&mut ServerOptions)) -> TestResult<Fixture> {
    let base = tempfile::tempdir()?;
    let dir = export_version(base.path(), version)?;
    let mut options = options(vec![ModelConfig::new("vit", base.path())]);
    configure(&mut options);
    let server = TestServer::start(options).await?;
    server.wait_for("vit", version, VersionState::Available).await?;
    Ok(Fixture { base, dir, server })
}
