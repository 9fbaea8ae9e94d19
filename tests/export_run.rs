//! Export every committed checkpoint form through the real `kiln` binary and compare `kiln run` with the
//! Hugging Face pipeline's answers recorded in `fixtures/reference/`.

use std::path::Path;

use anyhow::{Context, ensure};
use kiln_e2e::{Reference, check_parity, export, fixture, run_json};

/// `--resize tf` is recorded in the artifact and used: drawn shapes still classify as the reference says,
/// while the large photo, shrunk 37x without antialiasing, scores differently from Pillow's resize.
#[test]
fn tf_resize_is_recorded_and_applied() -> anyhow::Result<()> {
    let checkpoint = fixture("models/tiny-vit/model.safetensors");
    let (_tf_base, tf_dir) = export(&checkpoint, &["--resize", "tf"])?;
    ensure!(preprocess(&tf_dir, "resize")? == "tf", "the manifest does not record --resize tf");
    let (_pil_base, pil_dir) = export(&checkpoint, &[])?;
    ensure_reference_labels(&tf_dir, |image| image.starts_with("images/shape-"))?;
    let (tf, pil) = (large_photo_confidence(&tf_dir)?, large_photo_confidence(&pil_dir)?);
    ensure!((tf - pil).abs() > 1e-3, "tf and pil resize gave the same confidence {tf} on a 37x shrink");
    Ok(())
}

/// `--jpeg-draft` is recorded and used: JPEGs decode at a reduced scale (the tiny model's 64x64 input
/// lets even the 451x300 photo decode at a quarter), the drawn shapes and photos still get the Hugging Face
/// pipeline's labels, and the large photo's confidence moves. With `--resize tf` it is refused.
#[test]
fn jpeg_draft_is_recorded_and_applied() -> anyhow::Result<()> {
    let checkpoint = fixture("models/tiny-vit/model.safetensors");
    let (_draft_base, draft_dir) = export(&checkpoint, &["--jpeg-draft"])?;
    ensure!(
        preprocess(&draft_dir, "decoder")? == "pillow_draft",
        "the manifest does not record --jpeg-draft"
    );
    let (_pil_base, pil_dir) = export(&checkpoint, &[])?;
    ensure_reference_labels(&draft_dir, |image| image.ends_with(".jpg"))?;
    let (draft, pil) = (large_photo_confidence(&draft_dir)?, large_photo_confidence(&pil_dir)?);
    ensure!(draft != pil, "the draft and the full decode gave the same confidence {draft}");

    let base = tempfile::tempdir()?;
    let refused = kiln_e2e::kiln(&[
        "export",
        "--checkpoint",
        checkpoint.to_str().context("utf-8")?,
        "--base",
        base.path().to_str().context("utf-8")?,
        "--resize",
        "tf",
        "--jpeg-draft",
    ])?;
    ensure!(!refused.status.success(), "--resize tf --jpeg-draft was accepted");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(stderr.contains("--resize tf") && stderr.contains("drafting"), "{stderr}");
    Ok(())
}

/// `preprocess.<field>` of the manifest in the version directory `dir`.
fn preprocess(dir: &Path, field: &str) -> anyhow::Result<serde_json::Value> {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json"))?)?;
    Ok(manifest["preprocess"][field].clone())
}

/// The `tiny-vit` artifact in `dir` gives the Hugging Face pipeline's label to every reference image whose
/// path `keep` picks (and it picks some).
fn ensure_reference_labels(dir: &Path, keep: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let reference = Reference::load("tiny-vit")?;
    let kept: Vec<_> = reference.images.iter().filter(|r| keep(&r.image)).collect();
    ensure!(!kept.is_empty(), "no reference image picked");
    let names: Vec<String> = kept.iter().map(|r| r.image.clone()).collect();
    for (expected, got) in kept.iter().zip(run_json(dir, &names)?) {
        ensure!(
            got["label"] == expected.label.as_str(),
            "{}: {got}, reference {}",
            expected.image,
            expected.label
        );
    }
    Ok(())
}

/// The confidence the artifact in `dir` gives the 2400x2093 photo.
fn large_photo_confidence(dir: &Path) -> anyhow::Result<f64> {
    let large = vec!["images/large-2400x2093.jpg".to_owned()];
    run_json(dir, &large)?[0]["confidence"].as_f64().context("no confidence")
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

/// torch's dynamo exporter output (opset 18, symbolic batch) with the checkpoint's JSON configs.
#[test]
fn onnx_matches_reference() -> anyhow::Result<()> {
    check_parity("tiny-vit", &fixture("models/tiny-vit/model.onnx"), &[])?;
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

/// `--precision int8` through the binary: recorded in the manifest with its accuracy report, gated by
/// the images of the `--accuracy-image` directory (not by the synthetic ones), and the quantized tiny
/// model still gives the reference's top-1 on every fixture image.
#[test]
fn int8_export_keeps_the_reference_top1() -> anyhow::Result<()> {
    /// Largest |confidence - reference| accepted for the int8 graph (quantization noise, not parity).
    const INT8_CONFIDENCE_TOLERANCE: f64 = 0.05;
    let images_dir = fixture("images");
    let images_arg = images_dir.to_str().context("utf-8 path")?;
    let (_base, version_dir) = export(
        &fixture("models/tiny-vit/model.safetensors"),
        &["--precision", "int8", "--accuracy-image", images_arg],
    )?;
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(version_dir.join("manifest.json"))?)?;
    ensure!(manifest["graph"]["precision"] == "int8", "manifest graph: {}", manifest["graph"]);
    let accuracy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(version_dir.join("accuracy.json"))?)?;
    let set = |name: &str| {
        accuracy["sets"]
            .as_array()
            .and_then(|sets| sets.iter().find(|set| set["name"] == name))
            .with_context(|| format!("accuracy.json has no {name} set: {accuracy}"))
    };
    let (synthetic, given) = (set("synthetic")?, set("given")?);
    let reference = Reference::load("tiny-vit")?;
    // The reference covers every file of images/ (not images/bad/), as the directory argument does.
    ensure!(given["images"].as_u64() == Some(reference.images.len() as u64), "accuracy.json: {accuracy}");
    ensure!(given["gates"] == true && synthetic["gates"] == false, "accuracy.json: {accuracy}");
    let agreement = given["top1_agreement"].as_f64().context("no top1_agreement")?;
    ensure!(agreement >= 0.95, "accuracy.json: {accuracy}");

    let images: Vec<String> = reference.images.iter().map(|r| r.image.clone()).collect();
    let mut max_diff = 0f64;
    for (expected, got) in reference.images.iter().zip(run_json(&version_dir, &images)?) {
        ensure!(
            got["label"] == expected.label.as_str(),
            "{}: {got}, reference {}",
            expected.image,
            expected.label
        );
        let confidence = got["confidence"].as_f64().context("no confidence")?;
        max_diff = max_diff.max((confidence - f64::from(expected.confidence)).abs());
    }
    eprintln!("tiny-vit int8: max |confidence diff| {max_diff:.2e}");
    ensure!(max_diff <= INT8_CONFIDENCE_TOLERANCE, "int8 confidence moved by {max_diff}");
    Ok(())
}

/// Every batch size gives each image the answer it gets alone, bit for bit: on two threads, even
/// batches spread whole images over the threads, and the odd image left over runs last on both.
#[test]
fn batches_of_every_size_answer_as_images_alone() -> anyhow::Result<()> {
    let (_base, version_dir) = export(&fixture("models/tiny-vit/model.safetensors"), &[])?;
    let options = runtime::RuntimeOptions { threads: 2, ..runtime::RuntimeOptions::default() };
    let model = runtime::Model::load_with(&version_dir, options)?;
    let reference = Reference::load("tiny-vit")?;
    let images = reference
        .images
        .iter()
        .map(|r| Ok(model.prepare(&std::fs::read(fixture(&r.image))?)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(images.len() >= 5, "only {} reference images", images.len());
    let alone: Vec<_> =
        images.iter().map(|i| model.infer(std::slice::from_ref(i))).collect::<Result<_, _>>()?;
    for size in 2..=5 {
        let batch = model.infer(&images[..size])?;
        for (i, (got, expected)) in batch.iter().zip(&alone).enumerate() {
            let expected = &expected[0];
            ensure!(
                got.label == expected.label && got.confidence.to_bits() == expected.confidence.to_bits(),
                "batch of {size}, image {i}: {got:?}, alone {expected:?}"
            );
        }
    }
    Ok(())
}
