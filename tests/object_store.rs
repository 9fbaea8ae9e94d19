//! `kiln serve --model_base_path s3://...` through the real binary, against a real S3 server on loopback
//! (s3s-fs, SigV4 checked), configured only by the environment a deployment sets (`AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP`, keys, region): the model becomes ready and answers like `kiln run`, a corrupt
//! upload is never served, and a good upload later takes over.

#[path = "../crates/serve/tests/support/s3.rs"]
mod s3;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use kiln_e2e::{KilnServer, export, fixture, kiln_binary, run_json};
use serde_json::{Value, json};

/// The same runtime in and out of the server: only batching may move the last bits.
const CONFIDENCE_TOLERANCE: f64 = 1e-4;

/// How long a version may take to load or fail.
const WAIT: Duration = Duration::from_secs(60);

/// The model's version statuses from `GET /v1/models/vit`, as (version, state, error code).
async fn statuses(
    server: &KilnServer,
    http: &reqwest::Client,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let answer: Value = http.get(format!("{}/v1/models/vit", server.rest_url())).send().await?.json().await?;
    let list =
        answer["model_version_status"].as_array().with_context(|| format!("no status list: {answer}"))?;
    Ok(list
        .iter()
        .map(|v| {
            let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
            (text(&v["version"]), text(&v["state"]), text(&v["status"]["error_code"]))
        })
        .collect())
}

/// Waits until version `version` reports `state` with `code`.
async fn wait_for(
    server: &KilnServer,
    http: &reqwest::Client,
    version: &str,
    state: &str,
    code: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let now = statuses(server, http).await?;
        if now.iter().any(|(v, s, c)| v == version && s == state && c == code) {
            return Ok(());
        }
        if started.elapsed() > WAIT {
            bail!("version {version} never {state}/{code}: {now:?}\n{}", server.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn predict(server: &KilnServer, http: &reqwest::Client, image: &[u8]) -> anyhow::Result<Value> {
    let body = json!({"instances": [{"b64": base64::engine::general_purpose::STANDARD.encode(image)}]});
    let response =
        http.post(format!("{}/v1/models/vit:predict", server.rest_url())).json(&body).send().await?;
    ensure!(response.status().is_success(), "predict answered {}", response.status());
    Ok(response.json::<Value>().await?["predictions"][0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_serve_loads_versions_from_s3_and_never_a_corrupt_one() -> anyhow::Result<()> {
    let (_base, version_dir) = export(&fixture("models/tiny-vit"), &[])?;
    let expected = run_json(&version_dir, &["images/chelsea.jpg".to_owned()])?.remove(0);
    let cat = std::fs::read(fixture("images/chelsea.jpg"))?;
    let s3 = s3::S3Server::start("models").await.map_err(anyhow::Error::from_boxed)?;
    s3.upload_dir(&version_dir, "vit/1").await.map_err(anyhow::Error::from_boxed)?;

    let cache = tempfile::tempdir()?;
    let cache_arg = format!("--model_cache_dir={}", cache.path().to_str().context("utf-8 path")?);
    let server = KilnServer::start_with_env(
        &kiln_binary()?,
        "vit",
        Path::new("s3://models/vit"),
        &[&cache_arg],
        &s3.env(),
    )
    .await?;
    let http = reqwest::Client::new();
    let answer = predict(&server, &http, &cat).await?;
    ensure!(answer["label"] == expected["label"], "{answer} vs kiln run {expected}");
    let (got, want) = (answer["confidence"].as_f64(), expected["confidence"].as_f64());
    ensure!(
        got.zip(want).is_some_and(|(got, want)| (got - want).abs() <= CONFIDENCE_TOLERANCE),
        "{answer} vs kiln run {expected}"
    );

    // A version whose graph has one flipped bit: END with DATA_LOSS, version 1 keeps answering.
    let scratch = tempfile::tempdir()?;
    let corrupt = scratch.path().join("2");
    let copied = std::process::Command::new("cp").arg("-r").arg(&version_dir).arg(&corrupt).status()?;
    ensure!(copied.success(), "cp -r {} failed", version_dir.display());
    let graph = corrupt.join("graph.nnef.tar");
    let mut bytes = std::fs::read(&graph)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&graph, bytes)?;
    s3.upload_dir(&corrupt, "vit/2").await.map_err(anyhow::Error::from_boxed)?;
    wait_for(&server, &http, "2", "END", "DATA_LOSS").await?;
    wait_for(&server, &http, "1", "AVAILABLE", "OK").await?;
    ensure!(predict(&server, &http, &cat).await?["label"] == expected["label"]);

    // A good version 3 takes over.
    s3.upload_dir(&version_dir, "vit/3").await.map_err(anyhow::Error::from_boxed)?;
    wait_for(&server, &http, "3", "AVAILABLE", "OK").await?;
    wait_for(&server, &http, "1", "END", "OK").await?;
    ensure!(predict(&server, &http, &cat).await?["label"] == expected["label"]);
    let log = server.log();
    ensure!(log.contains("does not verify"), "the corrupt version is not in the log:\n{log}");

    let status = server.stop().await?;
    ensure!(status.success(), "kiln serve exited with {status}");
    ensure!(
        std::fs::read_dir(cache.path())?.next().is_none(),
        "the cache still holds versions after exit: {:?}",
        std::fs::read_dir(cache.path())?.map(|e| e.map(|e| e.path())).collect::<Vec<_>>()
    );
    Ok(())
}
