//! Export every committed checkpoint form through the real `kiln` binary and compare `kiln run` with the
//! Hugging Face pipeline's answers recorded in `fixtures/reference/`.

use std::path::Path;

use anyhow::{Context, ensure};
use kiln_e2e::{Reference, export, fixture, kiln_ok};

/// Largest |confidence - reference| accepted (the parity bar).
const CONFIDENCE_TOLERANCE: f32 = 1e-3;

/// Exports `checkpoint`, runs every reference image through `kiln run --json` and checks top-1 and
/// confidence; returns the largest |confidence difference|.
fn check_parity(model: &str, checkpoint: &Path, extra: &[&str]) -> anyhow::Result<f32> {
    let reference = Reference::load(model)?;
    let (_base, version_dir) = export(checkpoint, extra)?;
    let images: Vec<String> =
        reference.images.iter().map(|r| fixture(&r.image).display().to_string()).collect();
    let mut args = vec!["run", "--json", "--dir", version_dir.to_str().context("utf-8")?, "--image"];
    args.extend(images.iter().map(String::as_str));
    let stdout = kiln_ok(&args)?;
    let lines: Vec<serde_json::Value> = stdout.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    ensure!(lines.len() == reference.images.len(), "{} results for {} images", lines.len(), images.len());
    let mut max_diff = 0f32;
    for (expected, got) in reference.images.iter().zip(&lines) {
        let label =
            got["label"].as_str().with_context(|| format!("{}: no label in {got}", expected.image))?;
        let confidence = got["confidence"].as_f64().context("no confidence")? as f32;
        ensure!(
            label == expected.label,
            "{}: label {label:?}, reference {:?}",
            expected.image,
            expected.label
        );
        let diff = (confidence - expected.confidence).abs();
        ensure!(
            diff <= CONFIDENCE_TOLERANCE,
            "{}: confidence {confidence}, reference {} (|diff| {diff})",
            expected.image,
            expected.confidence
        );
        max_diff = max_diff.max(diff);
    }
    eprintln!("{model} {}: max |confidence diff| {max_diff:.2e}", checkpoint.display());
    Ok(max_diff)
}

#[test]
fn safetensors_matches_reference() -> anyhow::Result<()> {
    check_parity("tiny-vit", &fixture("models/tiny-vit/model.safetensors"), &[])?;
    Ok(())
}

#[test]
fn pytorch_bin_matches_reference() -> anyhow::Result<()> {
    check_parity("tiny-vit", &fixture("models/tiny-vit/pytorch_model.bin"), &[])?;
    Ok(())
}

/// A checkpoint differing from ViT-B/16 in every config field (sizes, activation, eps, qkv bias,
/// mean/std, rescale, bicubic, UTF-8 labels), from both weight formats.
#[test]
fn non_default_config_matches_reference() -> anyhow::Result<()> {
    check_parity("odd-vit", &fixture("models/odd-vit/model.safetensors"), &[])?;
    check_parity("odd-vit", &fixture("models/odd-vit/pytorch_model.bin"), &[])?;
    Ok(())
}
