//! Test support shared by the native architectures' tests: a fixture checkpoint's `pixel_values` graph,
//! written to NNEF and read back as an artifact's graph is, run on the images `fixtures/generate.py`
//! recorded PyTorch's `pixel_values` and logits for (`fixtures/reference/<model>.json`).
//!
//! The graph is built from `config.json` and the weights alone, at the reference's input size, so an
//! architecture is checked against PyTorch whatever the image processor does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tract_core::internal::*;
use tract_core::model::translator::Translate;

use super::{InputSize, check_precision, open_native};
use crate::Precision;
use crate::config::ModelConfig;
use crate::weights::Weights;

/// The error of a failed check: any of the steps' errors, with its context.
pub type CheckError = Box<dyn std::error::Error>;

/// Largest |logit - PyTorch logit| accepted from an f32 graph fed PyTorch's own `pixel_values`.
pub const LOGIT_TOLERANCE: f32 = 1e-4;

/// `fixtures/` at the workspace root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// One reference image: the processor's output and PyTorch's logits for it.
pub struct ReferenceImage {
    /// The image file, relative to `fixtures/`.
    pub image: String,
    /// `f32[1, 3, H, W]`.
    pub pixel_values: Tensor,
    /// PyTorch's logits.
    pub logits: Vec<f32>,
}

/// The images of `fixtures/reference/<model>.json`.
pub fn reference_images(model: &str) -> Result<Vec<ReferenceImage>, CheckError> {
    let path = fixtures().join(format!("reference/{model}.json"));
    let document: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let images = document["images"].as_array().ok_or_else(|| format!("{}: no images", path.display()))?;
    images
        .iter()
        .map(|image| {
            let name = image["image"].as_str().ok_or("an image without a name")?.to_owned();
            let file = image["pixel_values"]["file"].as_str().ok_or_else(|| format!("{name}: no file"))?;
            let bytes = std::fs::read(fixtures().join(file))?;
            let values: Vec<f32> =
                bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let shape: Vec<usize> = serde_json::from_value(image["pixel_values"]["shape"].clone())?;
            let pixel_values = Tensor::from_shape(&[1, shape[0], shape[1], shape[2]], &values)?;
            let logits = serde_json::from_value(image["logits"].clone())?;
            Ok(ReferenceImage { image: name, pixel_values, logits })
        })
        .collect()
}

/// Each image's logits from `model_file`'s (relative to `fixtures/`) graph in `precision`, after an NNEF
/// round trip.
pub fn graph_logits(
    model_file: &str,
    images: &[ReferenceImage],
    precision: Precision,
) -> Result<Vec<Vec<f32>>, CheckError> {
    let first = images.first().ok_or("no reference images")?;
    let &[_, _, height, width] = first.pixel_values.shape() else { return Err("pixel_values rank".into()) };
    let model_file = fixtures().join(model_file);
    let config_path = model_file.with_file_name("config.json");
    let config = ModelConfig::read(&config_path)?;
    let weights = match model_file.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Weights::safetensors(&model_file)?,
        _ => Weights::pytorch(&model_file)?,
    };
    let architecture = open_native(&config, &config_path, weights, InputSize { height, width })?;
    check_precision(architecture.as_ref(), &config.architecture(), precision)?;
    let mut g = architecture.graph();
    let n = g.batch();
    let input = g
        .model
        .add_source("pixel_values", f32::fact(tvec!(n, 3.to_dim(), height.to_dim(), width.to_dim())))?;
    let logits = architecture.logits(&mut g, input, precision)?;
    let graph = g.classification_outputs(logits)?;

    let mut nnef = vec![];
    runtime::nnef().write_to_tar(&graph, &mut nnef).map_err(|e| format!("writing NNEF: {e:#}"))?;
    // As the runtime loads an artifact: one image per run.
    let plan = runtime::nnef()
        .model_for_read(&mut &nnef[..])
        .and_then(|model| {
            let one_image = HashMap::from([(model.symbols.sym("N"), TDim::Val(1))]);
            one_image.translate_model(&model)?.into_optimized()?.into_runnable()
        })
        .map_err(|e| format!("reading NNEF back: {e:#}"))?;
    let logits_slot = 2;
    images
        .iter()
        .map(|image| {
            let outputs = plan.run(tvec!(image.pixel_values.clone().into_tvalue()))?;
            Ok(outputs[logits_slot].to_plain_array_view::<f32>()?.iter().copied().collect())
        })
        .collect()
}

/// The largest |logit difference| between `model_file`'s f32 graph and PyTorch over `model`'s reference
/// images, checked against `tolerance` (normally [`LOGIT_TOLERANCE`]).
pub fn check_f32_logits(model: &str, model_file: &str, tolerance: f32) -> Result<f32, CheckError> {
    let images = reference_images(model)?;
    let mut worst = 0f32;
    for (image, logits) in images.iter().zip(graph_logits(model_file, &images, Precision::F32)?) {
        assert_eq!(logits.len(), image.logits.len(), "{}: class count", image.image);
        worst = logits.iter().zip(&image.logits).fold(worst, |m, (got, want)| m.max((got - want).abs()));
    }
    eprintln!("{model_file}: max |logit diff| {worst:.2e}");
    assert!(worst <= tolerance, "{model_file}: max |logit diff| {worst} > {tolerance}");
    Ok(worst)
}

/// Checks that `model_file`'s int8 graph picks PyTorch's top-1 class on every one of `model`'s reference
/// images; returns the largest |logit difference|, for the record.
pub fn check_int8_top1(model: &str, model_file: &str) -> Result<f32, CheckError> {
    let images = reference_images(model)?;
    let argmax = |v: &[f32]| (0..v.len()).max_by(|a, b| v[*a].total_cmp(&v[*b]));
    let mut worst = 0f32;
    for (image, logits) in images.iter().zip(graph_logits(model_file, &images, Precision::Int8)?) {
        worst = logits.iter().zip(&image.logits).fold(worst, |m, (got, want)| m.max((got - want).abs()));
        assert_eq!(argmax(&logits), argmax(&image.logits), "{model_file} int8: top-1 of {}", image.image);
    }
    eprintln!("{model_file} int8: top-1 agrees on {} images, max |logit diff| {worst:.2e}", images.len());
    Ok(worst)
}

/// Exports `fixtures/models/<model>` in `precision` through the whole pipeline (graph, NNEF artifact,
/// runtime self-check, publish) into a fresh temporary base, and checks the published artifact loads.
pub fn export_fixture(model: &str, precision: Precision) -> Result<crate::ExportReport, CheckError> {
    let base = tempfile::tempdir()?;
    let request = crate::ExportRequest {
        checkpoint: fixtures().join(format!("models/{model}")),
        base: base.path().to_owned(),
        version: None,
        resize: artifact::ResizeMode::Pil,
        jpeg_draft: false,
        precision,
        accuracy_images: vec![],
        min_top1_agreement: crate::MIN_TOP1_AGREEMENT,
    };
    let started = std::time::Instant::now();
    let report = crate::export(&request, &runtime::NoProgress)?;
    eprintln!(
        "{model} {}: exported in {:.2} s ({:?}), self-check max |confidence diff| {:.1e}",
        precision.name(),
        started.elapsed().as_secs_f64(),
        report.stages,
        report.max_confidence_diff
    );
    runtime::Model::load(&report.version_dir)?;
    Ok(report)
}
