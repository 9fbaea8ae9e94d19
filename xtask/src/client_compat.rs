//! `cargo xtask client-compat`: real Python clients, unchanged, against `kiln serve`, in two suites.
//!
//! `tf-serving`: builds a venv under `target/client-compat-venv` with the exact packages pinned in
//! `xtask/client-compat/requirements.txt` (tensorflow-serving-api, the tensorflow it requires, requests),
//! exports the fixture model, serves it on TF Serving's own ports 8500 (gRPC) and 8501 (REST) because the
//! seed's snippets hard-code them, runs `rest_client.py` and `grpc_client.py` from a directory holding
//! their `cat.jpg`, and checks both answers against the in-process runtime.
//!
//! `open-inference`: a venv under `target/client-compat-triton-venv` with `tritonclient[http,grpc]` pinned
//! in `requirements-triton.txt`; `triton_client.py` sends every fixture image over the Open Inference
//! Protocol (HTTP with the binary extension, HTTP JSON, gRPC raw contents) and each label and confidence
//! must equal `kiln run --json` on the same artifact. Needs PyPI; not part of CI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

use crate::{kiln_export, release_kiln, workspace_root};
use kiln_e2e::KilnServer;

/// The image the snippets send as `cat.jpg`.
const IMAGE: &str = "fixtures/images/chelsea.jpg";

/// |served confidence - in-process confidence| accepted: the same runtime, printed and parsed as f32.
const CONFIDENCE_TOLERANCE: f32 = 1e-6;

/// The Open Inference Protocol suite's bar against `kiln run`: the same runtime, but the server may batch
/// differently and JSON carries the confidence as shortest-f32 decimal text.
const V2_CONFIDENCE_TOLERANCE: f64 = 1e-5;

/// Which client suites to run.
#[derive(clap::Args)]
pub struct Args {
    /// Run only this suite (both by default).
    #[arg(long, value_enum)]
    suite: Option<Suite>,
}

/// A family of clients.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Suite {
    /// The seed's TF Serving REST and gRPC snippets (tensorflow-serving-api).
    TfServing,
    /// tritonclient over the Open Inference Protocol (KServe v2), HTTP and gRPC.
    OpenInference,
}

/// Runs the compatibility checks; fails on any difference.
pub fn run(args: Args) -> anyhow::Result<()> {
    let suites = args.suite.map_or_else(|| vec![Suite::TfServing, Suite::OpenInference], |s| vec![s]);
    for suite in suites {
        match suite {
            Suite::TfServing => tf_serving()?,
            Suite::OpenInference => open_inference()?,
        }
    }
    Ok(())
}

/// The seed's two snippets against kiln on TF Serving's ports.
fn tf_serving() -> anyhow::Result<()> {
    let root = workspace_root();
    let work = root.join("target/client-compat");
    let python = venv(&root, "client-compat-venv", "requirements.txt")?;
    let kiln = release_kiln()?;

    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    let base = work.join("vit");
    let checkpoint = root.join("fixtures/models/tiny-vit");
    let version_dir = kiln_export(&kiln, &checkpoint, &base, &[])?;
    let image = std::fs::read(root.join(IMAGE))?;
    std::fs::write(work.join("cat.jpg"), &image)?;
    let expected = runtime::Model::load(&version_dir)?
        .predict(&[image.as_slice()])?
        .pop()
        .context("no prediction")??;
    println!("in-process runtime: label {:?}, confidence {}", expected.label, expected.confidence);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (rest_out, grpc_out) = runtime.block_on(async {
        let server = KilnServer::start_on(&kiln, "vit", &base, 8500, 8501)
            .await
            .context("TF Serving's ports 8500/8501 must be free: the seed's snippets hard-code them")?;
        let rest = snippet(&python, &root, &work, "rest_client.py", &[]).await;
        let grpc = snippet(&python, &root, &work, "grpc_client.py", &[]).await;
        let exit = server.stop().await?;
        ensure!(exit.success(), "kiln serve exited with {exit}");
        Ok::<_, anyhow::Error>((rest?, grpc?))
    })?;

    let answer: serde_json::Value = serde_json::from_str(rest_out.trim()).context("REST snippet output")?;
    let prediction = &answer["predictions"][0];
    let label = prediction["label"].as_str().context("REST answer has no label")?;
    let confidence = prediction["confidence"].as_f64().context("REST answer has no confidence")? as f32;
    ensure!(label == expected.label, "REST label {label:?}, runtime {:?}", expected.label);
    ensure!((confidence - expected.confidence).abs() <= CONFIDENCE_TOLERANCE, "REST confidence {confidence}");
    println!("REST snippet OK: {answer}");

    let (label, confidence) = parse_grpc_print(&grpc_out)?;
    ensure!(label == expected.label, "gRPC label {label:?}, runtime {:?}", expected.label);
    ensure!((confidence - expected.confidence).abs() <= CONFIDENCE_TOLERANCE, "gRPC confidence {confidence}");
    println!("gRPC snippet OK: label {label:?}, confidence {confidence}");
    Ok(())
}

/// tritonclient against kiln over the Open Inference Protocol, every fixture image, checked against
/// `kiln run --json`.
fn open_inference() -> anyhow::Result<()> {
    let root = workspace_root();
    let work = root.join("target/client-compat-v2");
    let python = venv(&root, "client-compat-triton-venv", "requirements-triton.txt")?;
    let kiln = release_kiln()?;
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    let base = work.join("vit");
    let version_dir = kiln_export(&kiln, &root.join("fixtures/models/tiny-vit"), &base, &[])?;
    let images = fixture_images(&root)?;
    let expected = kiln_run(&kiln, &version_dir, &images)?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let output = runtime.block_on(async {
        let server = KilnServer::start(&kiln, "vit", &base, &[]).await?;
        let mut args = vec![server.rest_addr(), server.grpc_addr(), "vit".to_owned()];
        args.extend(images.iter().map(|p| p.display().to_string()));
        let output = snippet(&python, &root, &work, "triton_client.py", &args).await;
        let exit = server.stop().await?;
        ensure!(exit.success(), "kiln serve exited with {exit}");
        output
    })?;

    let mut answers = 0;
    let mut max_difference = 0f64;
    for line in output.lines() {
        let answer: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("client line {line:?}"))?;
        let image = answer["image"].as_str().context("answer without image")?;
        let client = answer["client"].as_str().context("answer without client")?;
        let (label, confidence) =
            expected.get(image).with_context(|| format!("{image}: no kiln run answer"))?;
        ensure!(
            answer["label"] == label.as_str(),
            "{client} {image}: label {}, kiln run {label:?}",
            answer["label"]
        );
        let served = answer["confidence"].as_f64().context("answer without confidence")?;
        let difference = (served - confidence).abs();
        ensure!(
            difference <= V2_CONFIDENCE_TOLERANCE,
            "{client} {image}: confidence {served}, kiln run {confidence}"
        );
        max_difference = max_difference.max(difference);
        answers += 1;
    }
    ensure!(answers == images.len() * 3, "{answers} answers for {} images x 3 clients", images.len());
    println!(
        "tritonclient OK: {answers} answers ({} images x HTTP binary, HTTP JSON, gRPC raw) equal kiln run; \
         max |confidence difference| {max_difference:e}",
        images.len()
    );
    Ok(())
}

/// Every decodable fixture image (the top level of `fixtures/images`; `bad/` holds the broken ones).
fn fixture_images(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = root.join("fixtures/images");
    let mut images = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            images.push(entry.path());
        }
    }
    images.sort();
    Ok(images)
}

/// `kiln run --json` on `images`: image path -> (label, confidence).
fn kiln_run(
    kiln: &Path,
    version_dir: &Path,
    images: &[PathBuf],
) -> anyhow::Result<std::collections::HashMap<String, (String, f64)>> {
    let output = Command::new(kiln)
        .arg("run")
        .arg("--json")
        .arg("--dir")
        .arg(version_dir)
        .arg("--image")
        .args(images)
        .output()?;
    ensure!(output.status.success(), "kiln run failed: {}", String::from_utf8_lossy(&output.stderr));
    let mut answers = std::collections::HashMap::new();
    for line in String::from_utf8(output.stdout)?.lines() {
        let answer: serde_json::Value = serde_json::from_str(line)?;
        let image = answer["image"].as_str().context("kiln run answer without image")?.to_owned();
        let label = answer["label"].as_str().context("kiln run answer without label")?.to_owned();
        let confidence = answer["confidence"].as_f64().context("kiln run answer without confidence")?;
        answers.insert(image, (label, confidence));
    }
    ensure!(answers.len() == images.len(), "kiln run answered {} of {} images", answers.len(), images.len());
    Ok(answers)
}

/// Creates the venv `target/<name>` once and installs the pinned `requirements` (a file in
/// `xtask/client-compat`) into it; pip skips what is installed.
fn venv(root: &Path, name: &str, requirements: &str) -> anyhow::Result<PathBuf> {
    let venv = root.join("target").join(name);
    let python = venv.join("bin/python");
    if !python.exists() {
        let status = Command::new("python3").arg("-m").arg("venv").arg(&venv).status()?;
        ensure!(status.success(), "python3 -m venv {} failed", venv.display());
    }
    let requirements = root.join("xtask/client-compat").join(requirements);
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements)
        .status()?;
    ensure!(status.success(), "pip install -r {} failed", requirements.display());
    Ok(python)
}

/// Runs one script from `xtask/client-compat` with `args` in `work` (where its `cat.jpg` is); returns
/// stdout.
async fn snippet(
    python: &Path,
    root: &Path,
    work: &Path,
    name: &str,
    args: &[String],
) -> anyhow::Result<String> {
    let script = root.join("xtask/client-compat").join(name);
    println!("\n$ python {name}");
    let output = tokio::process::Command::new(python)
        .arg(&script)
        .args(args)
        .current_dir(work)
        // TensorFlow's import-time banner about CPU features and oneDNN is noise here.
        .env("TF_CPP_MIN_LOG_LEVEL", "2")
        .output()
        .await
        .with_context(|| format!("running {name}"))?;
    let stdout = String::from_utf8(output.stdout)?;
    print!("{stdout}");
    if !output.status.success() {
        bail!("{name} failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    Ok(stdout)
}

/// The label and confidence out of Python's `print(response)` (protobuf text format).
fn parse_grpc_print(text: &str) -> anyhow::Result<(String, f32)> {
    let value = |field: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(field))
            .with_context(|| format!("no {field} in the gRPC answer:\n{text}"))
    };
    let label = value("string_val: ")?.trim_matches('"').to_owned();
    let confidence = value("float_val: ")?.parse()?;
    Ok((label, confidence))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_label_and_confidence_from_python_text_format() -> anyhow::Result<()> {
        let text = "outputs {\n  key: \"confidence\"\n  value {\n    dtype: DT_FLOAT\n    float_val: 0.99619\n  }\n}\n\
                    outputs {\n  key: \"label\"\n  value {\n    dtype: DT_STRING\n    string_val: \"red square\"\n  }\n}\n";
        let (label, confidence) = parse_grpc_print(text)?;
        assert_eq!(label, "red square");
        assert!((confidence - 0.99619).abs() < 1e-7);
        Ok(())
    }
}
