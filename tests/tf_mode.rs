//! `kiln export --resize tf` reproduces the TF Serving seed's preprocessing: `tf.io.decode_jpeg(channels=3)`
//! (fast integer IDCT), `tf.image.resize` bilinear on the full-resolution image, then rescale and normalize.
//! The reference is `fixtures/reference/tiny-vit-tf.json` and `fixtures/reference/tf/` (written by
//! `fixtures/generate_tf.py` with TensorFlow 2.21).

use anyhow::{Context, ensure};
use kiln_e2e::{export, fixture, run_json};
use serde::Deserialize;

/// Largest |confidence - TF pipeline confidence| accepted. Above the Hugging Face parity bar (1e-3)
/// because the graph takes `u8`: the runtime rounds TensorFlow's float resize to the nearest level.
const CONFIDENCE_TOLERANCE: f64 = 1e-2;
/// Largest |prepared u8 - TF float resize| accepted: rounding to the nearest level, plus float slack.
const RESIZED_TOLERANCE: f32 = 0.5 + 1e-3;

/// `fixtures/reference/tf/decode.json`: what TensorFlow decoded and resized, per JPEG.
#[derive(Debug, Deserialize)]
struct Decoded {
    images: Vec<DecodedImage>,
}

#[derive(Debug, Deserialize)]
struct DecodedImage {
    /// Path relative to `fixtures/`.
    image: String,
    /// `tf.image.resize` to 64x64, f32 HWC little-endian, relative to `fixtures/`.
    resized_file: String,
}

/// `fixtures/reference/tiny-vit-tf.json`: tiny-vit's answers on the TF pipeline's input.
#[derive(Debug, Deserialize)]
struct TfReference {
    images: Vec<TfAnswer>,
}

#[derive(Debug, Deserialize)]
struct TfAnswer {
    image: String,
    label: String,
    confidence: f64,
}

fn load<T: for<'de> Deserialize<'de>>(relative: &str) -> anyhow::Result<T> {
    let path = fixture(relative);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn read_f32(relative: &str) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(fixture(relative)).with_context(|| format!("reading {relative}"))?;
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Every fixture JPEG through `kiln run` on a `--resize tf` export of tiny-vit: the TF pipeline's top-1, and
/// its confidence within [`CONFIDENCE_TOLERANCE`].
#[test]
fn tf_export_answers_as_the_tensorflow_pipeline() -> anyhow::Result<()> {
    let reference: TfReference = load("reference/tiny-vit-tf.json")?;
    ensure!(reference.images.len() >= 17, "{} images in tiny-vit-tf.json", reference.images.len());
    let (_base, version_dir) = export(&fixture("models/tiny-vit/model.safetensors"), &["--resize", "tf"])?;
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(version_dir.join("manifest.json"))?)?;
    ensure!(
        manifest["preprocess"]["decoder"] == "tensorflow",
        "manifest preprocess: {}",
        manifest["preprocess"]
    );

    let images: Vec<String> = reference.images.iter().map(|answer| answer.image.clone()).collect();
    let lines = run_json(&version_dir, &images)?;
    let mut failures = Vec::new();
    let mut worst = 0f64;
    for (expected, got) in reference.images.iter().zip(&lines) {
        let label =
            got["label"].as_str().with_context(|| format!("{}: no label in {got}", expected.image))?;
        let confidence =
            got["confidence"].as_f64().with_context(|| format!("{}: no confidence", expected.image))?;
        let diff = (confidence - expected.confidence).abs();
        worst = worst.max(diff);
        eprintln!(
            "{:32} {:14} kiln {confidence:.5} tf {:.5} |diff| {diff:.2e}",
            expected.image, label, expected.confidence
        );
        if label != expected.label || diff > CONFIDENCE_TOLERANCE {
            failures.push(format!(
                "{}: {label:?} {confidence:.5}, TF pipeline {:?} {:.5}",
                expected.image, expected.label, expected.confidence
            ));
        }
    }
    eprintln!("max |confidence diff| {worst:.2e} over {} images", lines.len());
    ensure!(failures.is_empty(), "answers differ from the TF pipeline:\n{}", failures.join("\n"));
    Ok(())
}

/// The runtime's prepared 64x64 image is TensorFlow's float resize rounded to the nearest level: decode and
/// resize both follow TensorFlow, so no sample is further than half a level away.
#[test]
fn tf_export_prepares_tensorflows_resize_rounded() -> anyhow::Result<()> {
    let decoded: Decoded = load("reference/tf/decode.json")?;
    let (_base, version_dir) = export(&fixture("models/tiny-vit/model.safetensors"), &["--resize", "tf"])?;
    let model = runtime::Model::load(&version_dir)?;
    let mut worst = 0f32;
    for image in &decoded.images {
        let prepared = model
            .prepare(&std::fs::read(fixture(&image.image))?)
            .with_context(|| format!("preparing {}", image.image))?;
        let resized = read_f32(&image.resized_file)?;
        ensure!(
            prepared.pixels().len() == resized.len(),
            "{}: prepared {} samples, TensorFlow {}",
            image.image,
            prepared.pixels().len(),
            resized.len()
        );
        let max = prepared
            .pixels()
            .iter()
            .zip(&resized)
            .map(|(&ours, &theirs)| (f32::from(ours) - theirs).abs())
            .fold(0f32, f32::max);
        ensure!(max <= RESIZED_TOLERANCE, "{}: max |prepared - TF resize| {max}", image.image);
        worst = worst.max(max);
    }
    eprintln!("max |prepared - TF resize| {worst} over {} images", decoded.images.len());
    Ok(())
}
