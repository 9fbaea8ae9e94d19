//! `kiln serve` locked down, through the real binary: bearer tokens (`--auth_token_file`) on both ports
//! with probes left open and the file rotated under a running server, and gRPC model management refused
//! by default, confined to `--model_root` when enabled.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use base64::Engine as _;
use kiln_e2e::{KilnServer, export, fixture, kiln_binary};
use serde_json::{Value, json};
use serve::proto::tensorflow::serving::model_service_client::ModelServiceClient;
use serve::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use serve::proto::tensorflow::serving::{
    ModelConfig, ModelConfigList, ModelServerConfig, ModelSpec, PredictRequest, ReloadConfigRequest,
    model_server_config,
};
use serve::proto::tensorflow::{DataType, TensorProto, TensorShapeProto, tensor_shape_proto};

const TOKEN: &str = "e2e-first-token-0123456789abcdef";
const ROTATED: &str = "e2e-rotated-token-fedcba9876543210";

/// How long a token rotation may take through the binary (the file is polled every second).
const ROTATION_WAIT: Duration = Duration::from_secs(20);

fn cat_b64() -> anyhow::Result<String> {
    let bytes = std::fs::read(fixture("images/chelsea.jpg"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A REST call with an optional bearer token: status, `WWW-Authenticate`, body.
async fn rest(
    server: &KilnServer,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Option<String>, Value)> {
    let http = reqwest::Client::new();
    let url = format!("{}{path}", server.rest_url());
    let mut request = match body {
        Some(body) => http.post(url).json(body),
        None => http.get(url),
    };
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let challenge =
        response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = response.bytes().await?;
    let value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{path}: not JSON: {}", String::from_utf8_lossy(&bytes)))?;
    Ok((status, challenge, value))
}

/// A gRPC predict of the cat image with an optional bearer token.
async fn grpc_predict(
    server: &KilnServer,
    token: Option<&str>,
) -> anyhow::Result<Result<String, tonic::Status>> {
    let tensor = TensorProto {
        dtype: DataType::DtString as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: vec![tensor_shape_proto::Dim { size: 1, name: String::new() }],
            unknown_rank: false,
        }),
        string_val: vec![cat_b64()?.into_bytes()],
        ..Default::default()
    };
    let mut request = tonic::Request::new(PredictRequest {
        model_spec: Some(ModelSpec { name: "vit".into(), ..Default::default() }),
        inputs: [("string_input".to_owned(), tensor)].into(),
        output_filter: vec![],
    });
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    }
    let mut client = PredictionServiceClient::connect(server.grpc_url()).await?;
    Ok(client.predict(request).await.map(|response| {
        let labels = response.into_inner().outputs.remove("label").map(|t| t.string_val).unwrap_or_default();
        labels.first().map(|l| String::from_utf8_lossy(l).into_owned()).unwrap_or_default()
    }))
}

fn reload(models: &[(&str, &Path)]) -> ReloadConfigRequest {
    let config = models
        .iter()
        .map(|(name, base)| ModelConfig {
            name: (*name).into(),
            base_path: base.display().to_string(),
            ..Default::default()
        })
        .collect();
    ReloadConfigRequest {
        config: Some(ModelServerConfig {
            config: Some(model_server_config::Config::ModelConfigList(ModelConfigList { config })),
        }),
        metric_names: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_both_ports_rotate_live_and_leave_probes_open() -> anyhow::Result<()> {
    let (base, _version) = export(&fixture("models/tiny-vit"), &[])?;
    let secrets = tempfile::tempdir()?;
    let file = secrets.path().join("tokens");
    std::fs::write(&file, format!("# clients\n{TOKEN}\n"))?;
    let file_arg = file.to_str().context("utf-8 path")?;
    let server =
        KilnServer::start(&kiln_binary()?, "vit", base.path(), &["--auth_token_file", file_arg]).await?;
    let body = json!({"instances": [{"b64": cat_b64()?}]});

    let (status, challenge, answer) = rest(&server, "/v1/models/vit:predict", None, Some(&body)).await?;
    ensure!(status == 401 && challenge.as_deref() == Some("Bearer realm=\"kiln\""), "{status} {challenge:?}");
    ensure!(answer["error"].as_str().is_some_and(|m| m.starts_with("Missing bearer token")), "{answer}");
    let (status, challenge, _) = rest(&server, "/v1/models/vit:predict", Some(ROTATED), Some(&body)).await?;
    ensure!(status == 401 && challenge.is_some_and(|c| c.contains("invalid_token")), "wrong token: {status}");
    let (status, _, answer) = rest(&server, "/v1/models/vit:predict", Some(TOKEN), Some(&body)).await?;
    ensure!(status == 200 && answer["predictions"][0]["label"].is_string(), "{status} {answer}");
    for probe in ["/healthz", "/readyz"] {
        ensure!(rest(&server, probe, None, None).await?.0 == 200, "{probe} needs a token");
    }
    let refused = grpc_predict(&server, None).await?.err().context("gRPC accepted without a token")?;
    ensure!(refused.code() == tonic::Code::Unauthenticated, "{refused:?}");
    let refused = grpc_predict(&server, Some(ROTATED)).await?.err().context("gRPC accepted a wrong token")?;
    ensure!(refused.code() == tonic::Code::Unauthenticated, "{refused:?}");
    let label = grpc_predict(&server, Some(TOKEN)).await??;
    ensure!(label == answer["predictions"][0]["label"], "gRPC {label} vs REST {answer}");
    // Each of the four refusals is logged with the client's address, on both ports.
    let refusals = || -> Vec<String> {
        let log = server.log();
        log.lines()
            .filter(|l| l.contains("refused a request without a valid bearer token"))
            .map(Into::into)
            .collect()
    };
    let started = Instant::now();
    while refusals().len() < 4 && started.elapsed() < ROTATION_WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logged = refusals();
    ensure!(logged.len() == 4 && logged.iter().all(|l| l.contains("peer=127.0.0.1:")), "{logged:#?}");

    // Rotate: the new token is accepted, the old one refused, without a restart.
    let staged = secrets.path().join("tokens.new");
    std::fs::write(&staged, format!("{ROTATED}\n"))?;
    std::fs::rename(&staged, &file)?;
    let started = Instant::now();
    while rest(&server, "/v1/models/vit", Some(ROTATED), None).await?.0 != 200 {
        ensure!(started.elapsed() < ROTATION_WAIT, "rotated token never accepted:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(rest(&server, "/v1/models/vit", Some(TOKEN), None).await?.0 == 401, "old token still works");
    // A bad rotation keeps the tokens and says why in the log.
    std::fs::write(&file, "# emptied by mistake\n")?;
    let started = Instant::now();
    while !server.log().contains("keeping the current bearer tokens") {
        ensure!(started.elapsed() < ROTATION_WAIT, "no warning for an empty token file:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(rest(&server, "/v1/models/vit", Some(ROTATED), None).await?.0 == 200, "tokens lost");
    ensure!(!server.log().contains(ROTATED) && !server.log().contains(TOKEN), "a token leaked into the log");
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_management_is_off_by_default_and_confined_to_the_root() -> anyhow::Result<()> {
    let (base, _version) = export(&fixture("models/tiny-vit"), &[])?;
    let body = json!({"instances": [{"b64": cat_b64()?}]});
    let kiln = kiln_binary()?;

    let server = KilnServer::start(&kiln, "vit", base.path(), &[]).await?;
    let mut models = ModelServiceClient::connect(server.grpc_url()).await?;
    let refused = models.handle_reload_config_request(reload(&[("evil", Path::new("/etc"))])).await;
    let status = refused.err().context("reload accepted by default")?;
    ensure!(status.code() == tonic::Code::PermissionDenied, "{status:?}");
    ensure!(status.message().contains("--enable_model_management"), "{}", status.message());
    ensure!(
        rest(&server, "/v1/models/vit:predict", None, Some(&body)).await?.0 == 200,
        "vit stopped serving"
    );
    let log = server.log();
    ensure!(log.contains("refused HandleReloadConfigRequest") && log.contains("peer=127.0.0.1:"), "{log}");
    server.stop().await?;

    let root = base.path().to_str().context("utf-8 path")?;
    let flags = ["--enable_model_management", "--model_root", root];
    let server = KilnServer::start(&kiln, "vit", base.path(), &flags).await?;
    let mut models = ModelServiceClient::connect(server.grpc_url()).await?;
    let outside =
        models.handle_reload_config_request(reload(&[("vit", base.path()), ("evil", Path::new("/etc"))]));
    let status = outside.await.err().context("reload outside --model_root accepted")?;
    ensure!(status.code() == tonic::Code::PermissionDenied, "{status:?}");
    ensure!(status.message().contains("outside the root"), "{}", status.message());
    ensure!(
        rest(&server, "/v1/models/vit:predict", None, Some(&body)).await?.0 == 200,
        "vit stopped serving"
    );
    ensure!(rest(&server, "/v1/models/evil", None, None).await?.0 == 404, "evil was loaded");

    models.handle_reload_config_request(reload(&[("vit", base.path()), ("copy", base.path())])).await?;
    let started = Instant::now();
    while rest(&server, "/v1/models/copy:predict", None, Some(&body)).await?.0 != 200 {
        ensure!(started.elapsed() < ROTATION_WAIT, "the reloaded model never served:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        rest(&server, "/v1/models/vit:predict", None, Some(&body)).await?.0 == 200,
        "vit stopped serving"
    );
    server.stop().await?;
    Ok(())
}
