//! The `kiln` command line through the real binary: `show` layouts, per-instance errors in `run`,
//! refusal of corrupt artifacts and of existing versions.

use std::path::PathBuf;

use anyhow::{Context, ensure};
use base64::Engine;
use kiln_e2e::{export, fixture, kiln, kiln_ok};

fn tiny() -> PathBuf {
    fixture("models/tiny-vit/model.safetensors")
}

#[test]
fn show_prints_saved_model_cli_layouts() -> anyhow::Result<()> {
    let (base, _) = export(&tiny(), &[])?;
    let dir = base.path().to_str().context("utf-8")?;
    assert_eq!(
        kiln_ok(&["show", "--dir", dir])?,
        "The given SavedModel contains the following tag-sets:\n'serve'\n"
    );
    assert_eq!(
        kiln_ok(&["show", "--dir", dir, "--tag_set", "serve"])?,
        "The given SavedModel MetaGraphDef contains SignatureDefs with the following keys:\nSignatureDef key: \"serving_default\"\n"
    );
    let signature =
        kiln_ok(&["show", "--dir", dir, "--tag_set", "serve", "--signature_def", "serving_default"])?;
    assert!(signature.starts_with("The given SavedModel SignatureDef contains the following input(s):\n  inputs['string_input'] tensor_info:\n      dtype: DT_STRING\n      shape: (-1)\n"), "{signature}");
    assert!(
        signature
            .contains("  outputs['confidence'] tensor_info:\n      dtype: DT_FLOAT\n      shape: (-1)\n")
    );
    assert!(signature.ends_with("Method name is: tensorflow/serving/predict\n"), "{signature}");
    let all = kiln_ok(&["show", "--dir", dir, "--all"])?;
    assert!(all.contains("signature_def['serving_default']:\n  The given SavedModel SignatureDef"), "{all}");
    let json: serde_json::Value = serde_json::from_str(&kiln_ok(&["show", "--dir", dir, "--json"])?)?;
    assert_eq!(json["format_version"], artifact::FORMAT_VERSION);
    let bad_tag = kiln(&["show", "--dir", dir, "--tag_set", "gpu"])?;
    ensure!(!bad_tag.status.success());
    assert!(String::from_utf8_lossy(&bad_tag.stderr).contains("could not be found in SavedModel"));
    let bad_sig = kiln(&["show", "--dir", dir, "--tag_set", "serve", "--signature_def", "nope"])?;
    assert!(String::from_utf8_lossy(&bad_sig.stderr).contains("Could not find signature \"nope\""));
    Ok(())
}

/// Bad instances get their own specific error while the good ones in the same batch still succeed.
#[test]
fn run_reports_bad_instances_and_classifies_the_rest() -> anyhow::Result<()> {
    let (_base, version) = export(&tiny(), &[])?;
    let good = std::fs::read(fixture("images/chelsea.jpg"))?;
    let good_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&good);
    let truncated = base64::engine::general_purpose::STANDARD.encode(&good[..good.len() / 3]);
    let random = base64::engine::general_purpose::STANDARD
        .encode((0..512u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>());
    let huge = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(fixture("images/bad/huge-65535x65535.jpg"))?);
    let inputs = serde_json::json!([good_b64, "not base64 !!", "", truncated, random, huge]);
    let output = kiln(&[
        "run",
        "--json",
        "--timing",
        "--dir",
        version.to_str().context("utf-8")?,
        "--input_exprs",
        &format!("string_input={inputs}"),
    ])?;
    ensure!(!output.status.success(), "a batch with failures must exit non-zero");
    let lines: Vec<serde_json::Value> =
        String::from_utf8(output.stdout)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    ensure!(lines.len() == 6, "{lines:?}");
    ensure!(lines[0]["label"].is_string() && lines[0]["confidence"].is_number(), "{}", lines[0]);
    let expected =
        [(1, "base64"), (2, "empty"), (3, "truncated"), (4, "unsupported image format"), (5, "65535x65535")];
    for (i, needle) in expected {
        let error =
            lines[i]["error"].as_str().with_context(|| format!("instance {i} should fail: {}", lines[i]))?;
        ensure!(error.contains(needle), "instance {i}: {error:?} does not mention {needle:?}");
    }
    let stderr = String::from_utf8(output.stderr)?;
    ensure!(stderr.contains("load ") && stderr.contains("predict 6 input(s)"), "--timing printed {stderr:?}");
    Ok(())
}

/// Off a terminal (here a pipe) progress is plain time-stamped lines on stderr; with `--json` there is
/// none, and stdout is one JSON object per image and nothing else.
#[test]
fn run_progress_is_plain_lines_off_a_terminal_and_absent_with_json() -> anyhow::Result<()> {
    let (_base, version) = export(&tiny(), &[])?;
    let shapes = ["red circle", "green square", "blue triangle"];
    let images: Vec<String> = shapes
        .iter()
        .map(|shape| fixture(&format!("images/shape-{}.jpg", shape.replace(' ', "-"))).display().to_string())
        .collect();
    let mut args = vec!["run", "--dir", version.to_str().context("utf-8")?, "--image"];
    args.extend(images.iter().map(String::as_str));

    let plain = kiln(&args)?;
    let stderr = String::from_utf8(plain.stderr)?;
    ensure!(plain.status.success(), "{stderr}");
    ensure!(!stderr.contains(['\r', '\x1b']), "bar drawing off a terminal: {stderr:?}");
    let progress: Vec<&str> =
        stderr.lines().map(|line| line.split_once("s] ").map_or(line, |(_, text)| text)).collect();
    ensure!(progress.len() == 2 && stderr.lines().all(|l| l.starts_with('[')), "{stderr}");
    ensure!(progress[0].starts_with("classifying with ") && progress[0].ends_with(": 0/3"), "{stderr}");
    ensure!(progress[1].ends_with(": 3/3"), "{stderr}");

    args.insert(1, "--json");
    let json = kiln(&args)?;
    ensure!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    ensure!(json.stderr.is_empty(), "--json printed on stderr: {}", String::from_utf8_lossy(&json.stderr));
    let stdout = String::from_utf8(json.stdout)?;
    let answers: Vec<serde_json::Value> =
        stdout.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let labels: Vec<&str> = answers.iter().filter_map(|a| a["label"].as_str()).collect();
    ensure!(labels == shapes, "{stdout}");
    Ok(())
}

#[test]
fn run_refuses_a_corrupted_artifact_naming_the_file() -> anyhow::Result<()> {
    let (_base, version) = export(&tiny(), &[])?;
    let graph = version.join("graph.nnef.tar");
    let mut bytes = std::fs::read(&graph)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&graph, bytes)?;
    let out = kiln(&[
        "run",
        "--dir",
        version.to_str().context("utf-8")?,
        "--image",
        fixture("images/chelsea.jpg").to_str().context("utf-8")?,
    ])?;
    ensure!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("graph.nnef.tar"), "{stderr}");
    Ok(())
}

#[test]
fn export_never_replaces_an_existing_version() -> anyhow::Result<()> {
    let (base, first) = export(&tiny(), &["--version", "7"])?;
    assert!(first.ends_with("7"));
    let before = std::fs::read(first.join("manifest.json"))?;
    let again = kiln(&[
        "export",
        "--checkpoint",
        tiny().to_str().context("utf-8")?,
        "--base",
        base.path().to_str().context("utf-8")?,
        "--version",
        "7",
    ])?;
    ensure!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains('7'));
    assert_eq!(std::fs::read(first.join("manifest.json"))?, before);
    let next = kiln_ok(&[
        "export",
        "--checkpoint",
        tiny().to_str().context("utf-8")?,
        "--base",
        base.path().to_str().context("utf-8")?,
    ])?;
    assert!(next.trim().ends_with('8'), "next free version after 7 should be 8: {next}");
    Ok(())
}
