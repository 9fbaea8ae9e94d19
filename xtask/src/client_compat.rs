//! `cargo xtask client-compat`: the seed's two Python clients, unchanged, against `kiln serve`.
//!
//! Builds a venv under `target/client-compat-venv` with the exact packages pinned in
//! `xtask/client-compat/requirements.txt` (tensorflow-serving-api, the tensorflow it requires, requests),
//! exports the fixture model, serves it on TF Serving's own ports 8500 (gRPC) and 8501 (REST) because the
//! snippets hard-code them, runs `rest_client.py` and `grpc_client.py` from a directory holding their
//! `cat.jpg`, and checks both answers against the in-process runtime. Needs PyPI; not part of CI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

use crate::{kiln_export, release_kiln, workspace_root};
use kiln_e2e::KilnServer;

/// The image the snippets send as `cat.jpg`.
const IMAGE: &str = "fixtures/images/chelsea.jpg";

/// |served confidence - in-process confidence| accepted: the same runtime, printed and parsed as f32.
const CONFIDENCE_TOLERANCE: f32 = 1e-6;

/// Runs the compatibility check; fails on any difference.
pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    let work = root.join("target/client-compat");
    let python = venv(&root)?;
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
        let rest = snippet(&python, &root, &work, "rest_client.py").await;
        let grpc = snippet(&python, &root, &work, "grpc_client.py").await;
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

/// Creates the venv once and installs the pinned requirements into it (pip skips what is installed).
fn venv(root: &Path) -> anyhow::Result<PathBuf> {
    let venv = root.join("target/client-compat-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let status = Command::new("python3").arg("-m").arg("venv").arg(&venv).status()?;
        ensure!(status.success(), "python3 -m venv {} failed", venv.display());
    }
    let requirements = root.join("xtask/client-compat/requirements.txt");
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements)
        .status()?;
    ensure!(status.success(), "pip install -r {} failed", requirements.display());
    Ok(python)
}

/// Runs one snippet from `xtask/client-compat` in `work` (where its `cat.jpg` is); returns stdout.
async fn snippet(python: &Path, root: &Path, work: &Path, name: &str) -> anyhow::Result<String> {
    let script = root.join("xtask/client-compat").join(name);
    println!("\n$ python {name}");
    let output = tokio::process::Command::new(python)
        .arg(&script)
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
