//! The export pipeline: checkpoint -> fused graph -> artifact in a hidden directory -> self-check with the
//! runtime against the unfused source graph -> atomic publish.

use std::collections::BTreeMap;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use artifact::{
    ArtifactWriter, FORMAT_VERSION, GraphSpec, Manifest, PreprocessSpec, Provenance, ResizeMode, Signature,
    SourceFile, TensorInfo,
};
use runtime::{Model, RuntimeOptions};
use sha2::{Digest, Sha256};
use tract_core::prelude::*;

use crate::{CLASS_OUTPUT, CONFIDENCE_OUTPUT, ExportError, Source, VitInput};

/// File name of the graph inside a version directory.
pub const GRAPH_FILE: &str = "graph.nnef.tar";

/// Number of synthetic images stored for warm-up and used for the self-check.
const SAMPLES: usize = 4;

/// How long a `.kiln-tmp-*` directory in the base must have gone untouched before an export removes it
/// as the leftover of a killed export. A live export touches its files while writing them; its longest
/// quiet stretch (loading and self-checking a ViT-B graph) is well under a minute.
pub const STALE_TEMP_DIR_AGE: Duration = Duration::from_secs(3600);

/// Largest |confidence difference| between the artifact and the source graph the self-check accepts.
pub const SELF_CHECK_TOLERANCE: f32 = 1e-4;

/// What to export and where.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// Checkpoint directory, or a `model.safetensors` / `pytorch_model.bin` / `model.onnx` file.
    pub checkpoint: PathBuf,
    /// Base directory receiving `<base>/<version>`.
    pub base: PathBuf,
    /// Version number to publish; `None` takes the next free one.
    pub version: Option<u64>,
    /// How the runtime resizes images for this artifact.
    pub resize: ResizeMode,
}

/// What an export produced and how long each stage took.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The published version directory.
    pub version_dir: PathBuf,
    /// The published version number.
    pub version: u64,
    /// Largest |confidence difference| between artifact and source graph over the samples.
    pub max_confidence_diff: f32,
    /// Samples compared in the self-check.
    pub samples: usize,
    /// Seconds spent per stage, in order.
    pub stages: Vec<(&'static str, f64)>,
}

/// Exports `request.checkpoint`, calling `progress` at the start of each stage.
pub fn export(request: &ExportRequest, progress: &mut dyn FnMut(&str)) -> Result<ExportReport, ExportError> {
    let mut stages = vec![];
    let mut stage =
        |name: &'static str, started: Instant| stages.push((name, started.elapsed().as_secs_f64()));

    let started = Instant::now();
    progress("reading checkpoint and building graph");
    let source = Source::open(&request.checkpoint)?;
    let spec = source.preprocess_spec(request.resize)?;
    let labels = source
        .config
        .labels()
        .map_err(|reason| ExportError::InvalidConfig { path: source.config_file.clone(), reason })?;
    let fused = source.graph(&spec, VitInput::Pixels)?;
    stage("build graph", started);

    let started = Instant::now();
    progress("writing artifact");
    let mut writer = ArtifactWriter::create(&request.base, request.version)?;
    for stale in artifact::remove_stale_temp_dirs(&request.base, STALE_TEMP_DIR_AGE)? {
        progress(&format!("removed the temporary directory of an interrupted export: {}", stale.display()));
    }
    let graph_path = writer.file_path(GRAPH_FILE)?;
    write_graph(&fused, &graph_path)?;
    drop(fused);
    let side = source.config.image_size;
    let samples = sample_images(side as usize);
    let mut warmup = vec![];
    for (i, pixels) in samples.iter().enumerate() {
        let name = format!("warmup/{i}.png");
        writer.write_file(&name, &png(pixels, side)?)?;
        warmup.push(name);
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        graph: GraphSpec {
            file: GRAPH_FILE.into(),
            height: side,
            width: side,
            confidence_output: CONFIDENCE_OUTPUT.into(),
            class_output: CLASS_OUTPUT.into(),
            precision: "f32".into(),
        },
        signatures: BTreeMap::from([("serving_default".to_owned(), serving_default())]),
        labels,
        preprocess: spec.clone(),
        provenance: provenance(&source)?,
        warmup,
        files: BTreeMap::new(),
    };
    stage("write artifact", started);

    let started = Instant::now();
    progress("checking the artifact against the source model");
    let max_confidence_diff =
        self_check(&source, &spec, &manifest, writer.temp_dir(), &graph_path, &samples)?;
    stage("self-check", started);

    let started = Instant::now();
    progress("publishing");
    let published = writer.publish(manifest)?;
    stage("publish", started);
    Ok(ExportReport {
        version_dir: published.path().to_owned(),
        version: published.version(),
        max_confidence_diff,
        samples: samples.len(),
        stages,
    })
}

fn write_graph(model: &TypedModel, path: &Path) -> Result<(), ExportError> {
    let io = |source| ExportError::Io { path: path.to_owned(), source };
    let file = std::fs::File::create(path).map_err(io)?;
    // The typed graph is written before decluttering: decluttering fuses erf-GELU into GeluExact, which
    // tract-nnef 0.23.9 cannot serialize. The runtime declutters and optimizes at load time.
    let writer = tract_nnef::nnef().write_to_tar(model, BufWriter::new(file)).map_err(|e| {
        match e.downcast::<std::io::Error>() {
            // A full disk or a file size limit: name the file, not only the tensor being appended.
            Ok(source) => io(source),
            Err(e) => ExportError::Graph(format!("serializing to NNEF: {e:#}")),
        }
    })?;
    writer.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)
}

/// The `serving_default` signature of every kiln artifact, as TF Serving's SavedModel had it.
fn serving_default() -> Signature {
    let tensor =
        |dtype: &str, name: &str| TensorInfo { dtype: dtype.into(), shape: vec![-1], name: name.into() };
    Signature {
        method_name: "tensorflow/serving/predict".into(),
        inputs: BTreeMap::from([(
            "string_input".to_owned(),
            tensor("DT_STRING", "serving_default_string_input:0"),
        )]),
        outputs: BTreeMap::from([
            ("confidence".to_owned(), tensor("DT_FLOAT", "StatefulPartitionedCall:0")),
            ("label".to_owned(), tensor("DT_STRING", "StatefulPartitionedCall:1")),
        ]),
    }
}

fn provenance(source: &Source) -> Result<Provenance, ExportError> {
    let files = [Some(&source.model_file), Some(&source.config_file), source.preprocessor_file.as_ref()];
    let sources = files.into_iter().flatten().map(|p| source_file(p)).collect::<Result<_, _>>()?;
    Ok(Provenance {
        exporter: format!("kiln-export {}", env!("CARGO_PKG_VERSION")),
        source_format: source.format.name().into(),
        architecture: source.config.architecture(),
        sources,
        created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

fn source_file(path: &Path) -> Result<SourceFile, ExportError> {
    let io = |source| ExportError::Io { path: path.to_owned(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(SourceFile { path: name, sha256, bytes })
}

/// Deterministic `side x side` RGB images (gradients and a pseudo-random texture), HWC `u8`.
fn sample_images(side: usize) -> Vec<Vec<u8>> {
    (0..SAMPLES)
        .map(|sample| {
            let mut state = 0x9e37_79b9_u32.wrapping_mul(sample as u32 + 1);
            (0..side * side * 3)
                .map(|i| {
                    let (y, x, c) = (i / (side * 3), (i / 3) % side, i % 3);
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    let gradient =
                        (x * 255 / side.max(1) + y * 97 / side.max(1) + c * 60 + sample * 50) as u32;
                    ((gradient + (state % 64)) % 256) as u8
                })
                .collect()
        })
        .collect()
}

fn png(pixels: &[u8], side: u32) -> Result<Vec<u8>, ExportError> {
    use image::ImageEncoder;
    let mut bytes = vec![];
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(pixels, side, side, image::ExtendedColorType::Rgb8)
        .map_err(|e| ExportError::Graph(format!("encoding a warm-up image: {e}")))?;
    Ok(bytes)
}

/// Runs the unpublished artifact through the runtime on the warm-up images and compares it with the
/// unfused source graph fed `pixel_values` normalized here; returns the largest |confidence difference|.
fn self_check(
    source: &Source,
    spec: &PreprocessSpec,
    manifest: &Manifest,
    dir: &Path,
    graph_path: &Path,
    samples: &[Vec<u8>],
) -> Result<f32, ExportError> {
    let failed = |reason: String| ExportError::SelfCheck(reason);
    let model = Model::compile(dir.to_owned(), manifest.clone(), graph_path, RuntimeOptions::default())
        .map_err(|e| failed(format!("the runtime cannot load the new artifact: {e}")))?;
    let mut inputs = vec![];
    for name in &manifest.warmup {
        let path = dir.join(name);
        inputs.push(std::fs::read(&path).map_err(|source| ExportError::Io { path, source })?);
    }
    let inputs: Vec<&[u8]> = inputs.iter().map(|i| i.as_slice()).collect();
    let predictions = model.predict(&inputs).map_err(|e| failed(e.to_string()))?;

    let side = manifest.graph.width as usize;
    let reference = source.graph(spec, VitInput::PixelValues)?;
    // Optimization renames and removes nodes, so find the logits output by name first.
    let logits_slot = reference
        .output_outlets()
        .ok()
        .and_then(|outputs| outputs.iter().position(|o| reference.node(o.node).name == crate::LOGITS_OUTPUT))
        .ok_or_else(|| failed("the source graph has no logits output".into()))?;
    let reference = reference
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|e| failed(format!("the source graph does not compile: {e:#}")))?;
    let mut max_diff = 0f32;
    for (i, (pixels, prediction)) in samples.iter().zip(predictions).enumerate() {
        let prediction = prediction.map_err(|e| failed(format!("sample {i}: {e}")))?;
        let logits = run_reference(&reference, logits_slot, pixels, side, spec)
            .map_err(|e| failed(format!("{e:#}")))?;
        let probabilities = softmax(&logits);
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        order.sort_by(|a, b| probabilities[*b].total_cmp(&probabilities[*a]));
        let top = order[0];
        let margin = order.get(1).map_or(f32::INFINITY, |second| probabilities[top] - probabilities[*second]);
        let diff = (prediction.confidence - probabilities[top]).abs();
        max_diff = max_diff.max(diff);
        if (prediction.class_index != top && margin > SELF_CHECK_TOLERANCE) || diff > SELF_CHECK_TOLERANCE {
            return Err(failed(format!(
                "sample {i}: artifact says class {} at {:.6}, the source model class {top} at {:.6}",
                prediction.class_index, prediction.confidence, probabilities[top]
            )));
        }
    }
    Ok(max_diff)
}

fn run_reference(
    plan: &Arc<TypedRunnableModel>,
    logits_slot: usize,
    pixels: &[u8],
    side: usize,
    spec: &PreprocessSpec,
) -> TractResult<Vec<f32>> {
    let mut chw = vec![0f32; 3 * side * side];
    for (i, value) in pixels.iter().enumerate() {
        let c = i % 3;
        chw[c * side * side + i / 3] = (*value as f32 * spec.rescale_factor - spec.mean[c]) / spec.std[c];
    }
    let input = Tensor::from_shape(&[1, 3, side, side], &chw)?;
    let outputs = plan.run(tvec!(input.into_tvalue()))?;
    Ok(outputs[logits_slot].to_plain_array_view::<f32>()?.iter().copied().collect())
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}
