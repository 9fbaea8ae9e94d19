//! `kiln serve` as a Vertex AI custom container, through the real binary: no flags at all, only the
//! `AIP_*` variables Vertex sets, with `AIP_STORAGE_URI` a local base directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use kiln_e2e::{fixture, kiln_binary, kiln_ok};
use serde_json::{Value, json};

/// How long the server may take to bind its port, and later to load its first version.
const WAIT: Duration = Duration::from_secs(120);

/// The same runtime in and out of the server: only batching may move the last bits.
const CONFIDENCE_TOLERANCE: f64 = 1e-4;

const HEALTH_ROUTE: &str = "/v1/endpoints/1234/deployedModels/5678";
const PREDICT_ROUTE: &str = "/v1/endpoints/1234/deployedModels/5678:predict";

/// A `kiln serve` child, killed on drop; its log goes to a file for failure messages.
struct Container {
    child: Child,
    log: PathBuf,
}

impl Container {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kiln serve` with no flags and only Vertex's variables set.
fn start(port: u16, storage: &Path, log: PathBuf) -> anyhow::Result<Container> {
    let mut command = Command::new(kiln_binary()?);
    command.arg("serve");
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("AIP_")) {
        command.env_remove(name);
    }
    let child = command
        .env("AIP_HTTP_PORT", port.to_string())
        .env("AIP_HEALTH_ROUTE", HEALTH_ROUTE)
        .env("AIP_PREDICT_ROUTE", PREDICT_ROUTE)
        .env("AIP_STORAGE_URI", storage)
        .env("AIP_MODE", "PREDICTION")
        .env("AIP_DEPLOYED_MODEL_ID", "5678")
        .env("AIP_ENDPOINT_ID", "1234")
        .env("AIP_PROJECT_NUMBER", "42")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting kiln serve")?;
    Ok(Container { child, log })
}

/// Polls the health route until it answers `want`, failing if the server exits or `WAIT` passes.
async fn wait_health(
    container: &mut Container,
    http: &reqwest::Client,
    url: &str,
    want: u16,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < WAIT {
        if let Some(status) = container.child.try_wait()? {
            bail!("kiln serve exited ({status}):\n{}", container.log());
        }
        if let Ok(response) = http.get(url).send().await
            && response.status().as_u16() == want
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the health route never answered {want}:\n{}", container.log())
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let response = http.post(url).json(body).send().await?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    let value = serde_json::from_slice(&bytes)
        .with_context(|| format!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)))?;
    Ok((status, value))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_vertex_routes_from_the_aip_variables_alone() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let storage = scratch.path().join("model");
    std::fs::create_dir(&storage)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut container = start(port, &storage, scratch.path().join("serve.log"))?;
    let http = reqwest::Client::new();
    let (health, predict) =
        (format!("http://127.0.0.1:{port}{HEALTH_ROUTE}"), format!("http://127.0.0.1:{port}{PREDICT_ROUTE}"));

    // Listening, but nothing to serve yet: the health route says so.
    wait_health(&mut container, &http, &health, 503).await?;
    let (status, answer) = post(&http, &predict, &json!({"instances": ["eA=="]})).await?;
    ensure!(status == 503 && answer["error"].is_string(), "predict before a version: {status} {answer}");

    // A version appears under AIP_STORAGE_URI: AVAILABLE, then healthy.
    let storage_arg = storage.to_str().context("utf-8 path")?;
    let checkpoint = fixture("models/tiny-vit");
    let exported = kiln_ok(&[
        "export",
        "--checkpoint",
        checkpoint.to_str().context("utf-8 path")?,
        "--base",
        storage_arg,
    ])?;
    let version_dir = PathBuf::from(exported.lines().last().context("export printed nothing")?.trim());
    wait_health(&mut container, &http, &health, 200).await?;

    // Vertex's body: plain base64 strings, {"b64": ...}, and the signature's named input.
    let (cat, rocket) =
        (std::fs::read(fixture("images/chelsea.jpg"))?, std::fs::read(fixture("images/rocket.jpg"))?);
    let body = json!({
        "instances": [b64(&cat), {"b64": b64(&rocket)}, {"string_input": {"b64": b64(&cat)}}],
        "parameters": {}
    });
    let (status, answer) = post(&http, &predict, &body).await?;
    ensure!(status == 200, "predict: {status} {answer}\n{}", container.log());
    let predictions = answer["predictions"].as_array().context("no predictions")?;
    let model = runtime::Model::load(&version_dir)?;
    let expected = model.predict(&[cat.as_slice(), rocket.as_slice(), cat.as_slice()])?;
    ensure!(predictions.len() == expected.len(), "{answer}");
    for (got, want) in predictions.iter().zip(expected) {
        let want = want?;
        ensure!(got["label"] == want.label.as_str(), "{got} vs {want:?}");
        let confidence = got["confidence"].as_f64().context("no confidence")?;
        ensure!((confidence - f64::from(want.confidence)).abs() <= CONFIDENCE_TOLERANCE, "{got} vs {want:?}");
    }

    // Errors: the status for what went wrong, {"error": ...} naming it.
    for (body, code, expected) in [
        (json!({"instances": [b64(&cat), "bm90IGFuIGltYWdl"]}), 400, "instance 1 of 'instances'"),
        (json!({"instances": [b64(&cat)], "parameters": {"maxPredictions": 3}}), 400, "unknown parameter"),
        (json!({"instances": []}), 400, "No values in 'instances'"),
        (json!({"inputs": [b64(&cat)]}), 400, "unknown key 'inputs'"),
    ] {
        let (status, answer) = post(&http, &predict, &body).await?;
        let message = answer["error"].as_str().unwrap_or_default();
        ensure!(status == code && message.contains(expected), "{body}: {status} {answer}");
    }

    // The TF Serving REST API shares the port, under the model's name.
    let (status, answer) = post(
        &http,
        &format!("http://127.0.0.1:{port}/v1/models/default:predict"),
        &json!({"instances": [b64(&cat)]}),
    )
    .await?;
    ensure!(
        status == 200 && answer["predictions"][0]["label"] == predictions[0]["label"],
        "{status} {answer}"
    );
    Ok(())
}
