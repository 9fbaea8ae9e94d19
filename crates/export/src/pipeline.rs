//! The export pipeline: checkpoint -> fused graph -> artifact in a hidden directory -> self-check with the
//! runtime against the unfused source graph -> atomic publish.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use artifact::{
    ArtifactWriter, Decoder, FORMAT_VERSION, GraphSpec, MANIFEST_DIGEST_FILE, MANIFEST_FILE, Manifest,
    PreprocessSpec, Provenance, Publication, ResizeMode, Signature, SourceFile,
};
use runtime::{Model, PreparedImage, Progress, RuntimeOptions};
use sha2::{Digest, Sha256};
use tract_core::model::translator::Translate;
use tract_core::prelude::*;

use crate::{CLASS_OUTPUT, CONFIDENCE_OUTPUT, ExportError, GraphInput, Precision, Source};

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

/// File name of a lower-precision artifact's accuracy report inside its version directory (listed, with
/// its digest, in the manifest's `files`).
pub const ACCURACY_FILE: &str = "accuracy.json";

/// Synthetic images a lower-precision export is compared with f32 on, besides the warm-up samples.
const ACCURACY_SAMPLES: usize = 32;

/// File extensions (lowercase) taken from a directory given as an accuracy image: the formats the runtime
/// decodes.
const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff"];

/// Smallest top-1 agreement with f32 a lower-precision export may have on the set that gates it (the
/// user's images when given, else the synthetic ones); below it nothing is published. Not 0.99: on
/// random-weight checkpoints (the full-size benchmark model) every class has about 1/1000 probability and
/// top-1 margins of 1e-4 are common, so one near tie in 32 images flips (measured: 31 of 32 synthetic, 4
/// of 4 photos). The report records the margin of every flip.
pub const MIN_TOP1_AGREEMENT: f64 = 0.95;

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
    /// Whether the runtime decodes JPEGs at a reduced scale before shrinking them, as Pillow's `draft`
    /// does ([`artifact::Decoder::PillowDraft`]); only with [`ResizeMode::Pil`].
    pub jpeg_draft: bool,
    /// Arithmetic of the encoder's linear layers.
    pub precision: Precision,
    /// Image files, or directories of them, a lower-precision export is compared with f32 on: when any
    /// are given they decide whether it is published (the synthetic images are then only reported, since
    /// they are not what the model will see); f32 exports ignore them.
    pub accuracy_images: Vec<PathBuf>,
    /// Smallest top-1 agreement with f32 a lower-precision export must reach on the gating image set
    /// ([`MIN_TOP1_AGREEMENT`] unless the user holds it to another bar).
    pub min_top1_agreement: f64,
}

/// How an export is stamped and published, beyond what it builds.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// `provenance.created_unix`; `None` takes the current time. With a fixed value two exports of the
    /// same inputs are byte-identical (`kiln export` passes `SOURCE_DATE_EPOCH`).
    pub created_unix: Option<u64>,
    /// Publish nothing when the newest version under the base already has this export's content digest
    /// (the report then names that version, with `published` false).
    pub if_changed: bool,
}

/// What an export produced and how long each stage took.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The published version directory, or the existing one an unchanged export matched.
    pub version_dir: PathBuf,
    /// Its version number.
    pub version: u64,
    /// The content digest of what the export built (`artifact::Artifact::content_digest`).
    pub content_digest: String,
    /// False when [`PublishOptions::if_changed`] found the newest version already holding this content.
    pub published: bool,
    /// Size in bytes of every file of the version directory, the manifest and its digest included.
    pub files: BTreeMap<String, u64>,
    /// Largest |confidence difference| between artifact and source graph over the samples.
    pub max_confidence_diff: f32,
    /// Samples compared in the self-check.
    pub samples: usize,
    /// For lower precisions: agreement with f32, also written to [`ACCURACY_FILE`].
    pub accuracy: Option<AccuracyReport>,
    /// Seconds spent per stage, in order.
    pub stages: Vec<(&'static str, f64)>,
}

/// Exports `request.checkpoint` with the current time and always publishing, reporting each stage (and
/// each image of an accuracy comparison) to `progress`.
pub fn export(request: &ExportRequest, progress: &dyn Progress) -> Result<ExportReport, ExportError> {
    export_with(request, &PublishOptions::default(), progress)
}

/// Exports `request.checkpoint`, stamped and published as `options` say, reporting each stage (and each
/// image of an accuracy comparison) to `progress`.
pub fn export_with(
    request: &ExportRequest,
    options: &PublishOptions,
    progress: &dyn Progress,
) -> Result<ExportReport, ExportError> {
    let mut stages = vec![];
    let mut stage =
        |name: &'static str, started: Instant| stages.push((name, started.elapsed().as_secs_f64()));

    let started = Instant::now();
    progress.start("reading checkpoint and building graph", None);
    let source = Source::open(&request.checkpoint)?;
    let mut spec = source.preprocess_spec(request.resize)?;
    if request.jpeg_draft {
        if spec.decoder != Decoder::Pillow {
            return Err(ExportError::InvalidConfig {
                path: request.checkpoint.clone(),
                reason: "JPEG drafting is Pillow's (--resize pil); --resize tf decodes as TensorFlow does"
                    .into(),
            });
        }
        spec.decoder = Decoder::PillowDraft;
    }
    let labels = source
        .config
        .labels()
        .map_err(|reason| ExportError::InvalidConfig { path: source.config_file.clone(), reason })?;
    let fused = source.graph_in(&spec, GraphInput::Pixels, request.precision)?;
    stage("build graph", started);

    let started = Instant::now();
    progress.start("writing artifact", None);
    let mut writer = ArtifactWriter::create(&request.base, request.version)?;
    for stale in artifact::remove_stale_temp_dirs(&request.base, STALE_TEMP_DIR_AGE)? {
        progress
            .note(&format!("removed the temporary directory of an interrupted export: {}", stale.display()));
    }
    let graph_path = writer.file_path(GRAPH_FILE)?;
    write_graph(&fused, &graph_path)?;
    drop(fused);
    let (height, width) = source.input_size(&spec)?;
    let samples = sample_images(height as usize, width as usize);
    let mut warmup = vec![];
    for (i, pixels) in samples.iter().enumerate() {
        let name = format!("warmup/{i}.png");
        writer.write_file(&name, &png(pixels, height, width)?)?;
        warmup.push(name);
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        graph: GraphSpec {
            file: GRAPH_FILE.into(),
            height,
            width,
            confidence_output: CONFIDENCE_OUTPUT.into(),
            class_output: CLASS_OUTPUT.into(),
            precision: request.precision.name().into(),
        },
        signatures: BTreeMap::from([("serving_default".to_owned(), Signature::serving_default())]),
        labels,
        preprocess: spec.clone(),
        provenance: provenance(&source, options.created_unix)?,
        warmup,
        files: BTreeMap::new(),
    };
    stage("write artifact", started);

    let started = Instant::now();
    progress.start("checking the artifact against the source model", None);
    let (max_confidence_diff, accuracy) = match request.precision {
        Precision::F32 => (self_check(&source, &spec, &manifest, writer.temp_dir(), &graph_path)?, None),
        precision => {
            let model = Model::compile(
                writer.temp_dir().to_owned(),
                manifest.clone(),
                &graph_path,
                RuntimeOptions::default(),
            )
            .map_err(|e| ExportError::SelfCheck(format!("the runtime cannot load the new artifact: {e}")))?;
            let report = accuracy_report(&source, &spec, &model, request, progress)?;
            let worst = report.sets.iter().map(|s| s.max_confidence_delta).fold(0f32, f32::max);
            if let Some(low) = report.failing_set() {
                return Err(ExportError::SelfCheck(format!(
                    "{} agrees with f32 on top-1 for {:.1} % of the {} {} images, below the {:.1} % \
                     --min-top1-agreement (max |confidence difference| {:.2e}, smallest f32 margin among the \
                     flips {:.2e})",
                    precision.name(),
                    100.0 * low.top1_agreement,
                    low.images,
                    low.name,
                    100.0 * report.min_top1_agreement,
                    low.max_confidence_delta,
                    low.min_disagreeing_margin.unwrap_or(f32::NAN),
                )));
            }
            let json = serde_json::to_vec_pretty(&report)
                .map_err(|e| ExportError::Graph(format!("serializing the accuracy report: {e}")))?;
            writer.write_file(ACCURACY_FILE, &json)?;
            (worst, Some(report))
        }
    };
    stage("self-check", started);

    let started = Instant::now();
    let publishing =
        if options.if_changed { "publishing unless the newest version is the same" } else { "publishing" };
    progress.start(publishing, None);
    let publication =
        if options.if_changed { writer.publish_if_changed(manifest)? } else { writer.publish(manifest)? };
    stage("publish", started);
    progress.finish();
    let Publication { dir, manifest, content_digest, published } = publication;
    Ok(ExportReport {
        files: file_sizes(dir.path(), &manifest)?,
        version_dir: dir.path().to_owned(),
        version: dir.version(),
        content_digest,
        published,
        max_confidence_diff,
        samples: SAMPLES,
        accuracy,
        stages,
    })
}

/// How closely a lower-precision artifact follows the f32 graph of the same checkpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AccuracyReport {
    /// The artifact's precision (`int8`).
    pub precision: String,
    /// What it is compared with.
    pub reference: String,
    /// The top-1 agreement the gating set had to reach for the artifact to be published.
    pub min_top1_agreement: f64,
    /// One entry per image set.
    pub sets: Vec<AccuracySet>,
}

impl AccuracyReport {
    /// The gating set, if it falls below [`AccuracyReport::min_top1_agreement`]: the artifact must not
    /// be published.
    pub fn failing_set(&self) -> Option<&AccuracySet> {
        self.sets.iter().find(|s| s.gates && s.top1_agreement < self.min_top1_agreement)
    }
}

/// Agreement with f32 on one set of images.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AccuracySet {
    /// `synthetic` (deterministic generated images) or `given` (the export's `accuracy_images`).
    pub name: String,
    /// Whether this set's agreement decides publishing: `given` when there are given images, else
    /// `synthetic`. Reports written before this field lack it: there every set gated.
    #[serde(default = "every_set_gated")]
    pub gates: bool,
    /// Images compared.
    pub images: usize,
    /// Fraction of images whose top-1 class equals f32's.
    pub top1_agreement: f64,
    /// Largest |confidence - f32 confidence of the same image|.
    pub max_confidence_delta: f32,
    /// Smallest f32 top-1 margin (probability of the best minus the second class) among the images whose
    /// class differs, or `null` when all agree: a small margin means a near tie, not a broken graph.
    pub min_disagreeing_margin: Option<f32>,
}

/// What [`AccuracySet::gates`] was before reports recorded it.
fn every_set_gated() -> bool {
    true
}

/// Compares `model` (a lower-precision artifact) with the f32 fused graph of the same source on the
/// synthetic samples and on the request's accuracy images (which then gate), one `progress` item per
/// image.
fn accuracy_report(
    source: &Source,
    spec: &PreprocessSpec,
    model: &Model,
    request: &ExportRequest,
    progress: &dyn Progress,
) -> Result<AccuracyReport, ExportError> {
    let failed = |reason: String| ExportError::SelfCheck(reason);
    let (reference, logits_slot) =
        compile_for_logits(source.graph_in(spec, GraphInput::Pixels, Precision::F32)?, "the f32 graph")?;
    let (height, width) = (model.manifest().graph.height, model.manifest().graph.width);
    let mut synthetic = vec![];
    for (i, pixels) in sample_images_n(height as usize, width as usize, ACCURACY_SAMPLES).iter().enumerate() {
        synthetic.push((format!("synthetic image {i}"), png(pixels, height, width)?));
    }
    let mut given = vec![];
    for path in image_files(&request.accuracy_images)? {
        let bytes = std::fs::read(&path).map_err(|source| ExportError::Io { path: path.clone(), source })?;
        given.push((path.display().to_string(), bytes));
    }
    let gating = if given.is_empty() { "synthetic" } else { "given" };
    let mut sets = vec![];
    for (name, inputs) in [("synthetic", synthetic), ("given", given)] {
        if inputs.is_empty() {
            continue;
        }
        let what = format!("comparing {} with f32 on {name} images", request.precision.name());
        progress.start(&what, Some(inputs.len() as u64));
        let mut prepared = vec![];
        for (what, input) in &inputs {
            prepared.push(model.prepare(input).map_err(|e| failed(format!("{what}: {e}")))?);
        }
        let predictions = model.infer(&prepared).map_err(|e| failed(e.to_string()))?;
        let (mut agree, mut max_delta, mut min_margin) = (0usize, 0f32, None::<f32>);
        for (image, prediction) in prepared.iter().zip(&predictions) {
            let input = Tensor::from_shape(&[1, height as usize, width as usize, 3], image.pixels())
                .map_err(|e| failed(format!("{e:#}")))?;
            let outputs = reference.run(tvec!(input.into_tvalue())).map_err(|e| failed(format!("{e:#}")))?;
            let logits: Vec<f32> = outputs[logits_slot]
                .to_plain_array_view::<f32>()
                .map_err(|e| failed(format!("{e:#}")))?
                .iter()
                .copied()
                .collect();
            let (top, confidence, margin) = top_two(&softmax(&logits));
            max_delta = max_delta.max((prediction.confidence - confidence).abs());
            if prediction.class_index == top {
                agree += 1;
            } else {
                min_margin = Some(min_margin.map_or(margin, |m| m.min(margin)));
            }
            progress.advance(1);
        }
        sets.push(AccuracySet {
            name: name.into(),
            gates: name == gating,
            images: prepared.len(),
            top1_agreement: agree as f64 / prepared.len() as f64,
            max_confidence_delta: max_delta,
            min_disagreeing_margin: min_margin,
        });
    }
    Ok(AccuracyReport {
        precision: request.precision.name().into(),
        reference: "the f32 graph of the same checkpoint, run by tract on the same prepared images".into(),
        min_top1_agreement: request.min_top1_agreement,
        sets,
    })
}

/// The files `paths` name: each file itself, and each directory's files with an image extension
/// ([`IMAGE_EXTENSIONS`]), sorted by name; a directory without any is refused rather than silently
/// leaving the synthetic images to gate.
fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ExportError> {
    let mut files = vec![];
    for path in paths {
        let io = |source| ExportError::Io { path: path.clone(), source };
        if !std::fs::metadata(path).map_err(io)?.is_dir() {
            files.push(path.clone());
            continue;
        }
        let mut images = vec![];
        for entry in std::fs::read_dir(path).map_err(io)? {
            let entry = entry.map_err(io)?;
            let is_image = entry
                .path()
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            if is_image && entry.file_type().map_err(io)?.is_file() {
                images.push(entry.path());
            }
        }
        if images.is_empty() {
            return Err(ExportError::NoAccuracyImages {
                path: path.clone(),
                extensions: IMAGE_EXTENSIONS.join(", "),
            });
        }
        images.sort();
        files.extend(images);
    }
    Ok(files)
}

/// Compiles a reference graph, returning it with the output slot of its logits.
fn compile_for_logits(
    graph: TypedModel,
    what: &str,
) -> Result<(Arc<TypedRunnableModel>, usize), ExportError> {
    let failed = |reason: String| ExportError::SelfCheck(reason);
    // Optimization renames and removes nodes, so find the logits output by name first.
    let logits_slot = graph
        .output_outlets()
        .ok()
        .and_then(|outputs| outputs.iter().position(|o| graph.node(o.node).name == crate::LOGITS_OUTPUT))
        .ok_or_else(|| failed(format!("{what} has no logits output")))?;
    // One image per run, as the runtime plans an artifact: with the batch symbolic, tract 0.23.9 fails to
    // declutter a strided 1x1 convolution after another 1x1 convolution (ResNet's downsample_in_bottleneck).
    let one_image = HashMap::from([(graph.symbols.sym("N"), TDim::Val(1))]);
    let plan = one_image
        .translate_model(&graph)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| failed(format!("{what} does not compile: {e:#}")))?;
    Ok((plan, logits_slot))
}

/// The top class, its probability, and its margin over the second.
fn top_two(probabilities: &[f32]) -> (usize, f32, f32) {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|a, b| probabilities[*b].total_cmp(&probabilities[*a]));
    let top = order[0];
    let margin = order.get(1).map_or(f32::INFINITY, |second| probabilities[top] - probabilities[*second]);
    (top, probabilities[top], margin)
}

/// Size in bytes of each file of a version directory: those `manifest` lists, the manifest and its digest.
fn file_sizes(dir: &Path, manifest: &Manifest) -> Result<BTreeMap<String, u64>, ExportError> {
    let names = manifest.files.keys().map(String::as_str).chain([MANIFEST_FILE, MANIFEST_DIGEST_FILE]);
    names
        .map(|name| {
            let path = dir.join(name);
            let bytes = std::fs::metadata(&path).map_err(|source| ExportError::Io { path, source })?.len();
            Ok((name.to_owned(), bytes))
        })
        .collect()
}

fn write_graph(model: &TypedModel, path: &Path) -> Result<(), ExportError> {
    let io = |source| ExportError::Io { path: path.to_owned(), source };
    let file = std::fs::File::create(path).map_err(io)?;
    // The typed graph is written before decluttering: decluttering fuses erf-GELU into GeluExact, which
    // tract-nnef 0.23.9 cannot serialize. The runtime declutters and optimizes at load time.
    // Deterministic, so the same graph is the same bytes: every tar entry has mtime 1980-01-01, mode 0644
    // and owner 0/0, in a fixed order (graph.nnef, graph.quant, tensors by name). tract would write a
    // nested model (none in kiln's graphs) with the current time whatever this says.
    let (compress_nested_models, deterministic) = (false, true);
    let writer = BufWriter::new(file);
    let nnef = runtime::nnef();
    let writer =
        nnef.write_to_tar_with_config(model, writer, compress_nested_models, deterministic).map_err(|e| {
            match e.downcast::<std::io::Error>() {
                // A full disk or a file size limit: name the file, not only the tensor being appended.
                Ok(source) => io(source),
                Err(e) => ExportError::Graph(format!("serializing to NNEF: {e:#}")),
            }
        })?;
    writer.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)
}

/// The provenance of an export of `source`; `created_unix` is the given time, or now.
fn provenance(source: &Source, created_unix: Option<u64>) -> Result<Provenance, ExportError> {
    let files = [Some(&source.model_file), Some(&source.config_file), source.preprocessor_file.as_ref()];
    let sources = files.into_iter().flatten().map(|p| source_file(p)).collect::<Result<_, _>>()?;
    Ok(Provenance {
        exporter: format!("kiln-export {}", env!("CARGO_PKG_VERSION")),
        source_format: source.format.name().into(),
        architecture: source.config.architecture(),
        sources,
        created_unix: created_unix.unwrap_or_else(|| {
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
        }),
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

/// The warm-up samples: deterministic `height x width` RGB images, HWC `u8`.
fn sample_images(height: usize, width: usize) -> Vec<Vec<u8>> {
    sample_images_n(height, width, SAMPLES)
}

/// `count` deterministic `height x width` RGB images (gradients and a pseudo-random texture), HWC `u8`.
fn sample_images_n(height: usize, width: usize, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|sample| {
            let mut state = 0x9e37_79b9_u32.wrapping_mul(sample as u32 + 1);
            (0..height * width * 3)
                .map(|i| {
                    let (y, x, c) = (i / (width * 3), (i / 3) % width, i % 3);
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    let gradient =
                        (x * 255 / width.max(1) + y * 97 / height.max(1) + c * 60 + sample * 50) as u32;
                    ((gradient + (state % 64)) % 256) as u8
                })
                .collect()
        })
        .collect()
}

fn png(pixels: &[u8], height: u32, width: u32) -> Result<Vec<u8>, ExportError> {
    use image::ImageEncoder;
    let mut bytes = vec![];
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(pixels, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| ExportError::Graph(format!("encoding a warm-up image: {e}")))?;
    Ok(bytes)
}

/// Runs the unpublished artifact through the runtime on the warm-up images and compares it with the
/// unfused source graph fed the same prepared images as `pixel_values` normalized here; returns the
/// largest |confidence difference|.
fn self_check(
    source: &Source,
    spec: &PreprocessSpec,
    manifest: &Manifest,
    dir: &Path,
    graph_path: &Path,
) -> Result<f32, ExportError> {
    let failed = |reason: String| ExportError::SelfCheck(reason);
    let model = Model::compile(dir.to_owned(), manifest.clone(), graph_path, RuntimeOptions::default())
        .map_err(|e| failed(format!("the runtime cannot load the new artifact: {e}")))?;
    let mut prepared = vec![];
    for name in &manifest.warmup {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|source| ExportError::Io { path, source })?;
        prepared.push(model.prepare(&bytes).map_err(|e| failed(format!("{name}: {e}")))?);
    }
    let predictions = model.infer(&prepared).map_err(|e| failed(e.to_string()))?;

    let (reference, logits_slot) =
        compile_for_logits(source.graph(spec, GraphInput::PixelValues)?, "the source graph")?;
    let mut max_diff = 0f32;
    for (i, (image, prediction)) in prepared.iter().zip(predictions).enumerate() {
        let logits =
            run_reference(&reference, logits_slot, image, spec).map_err(|e| failed(format!("{e:#}")))?;
        let probabilities = softmax(&logits);
        let (top, _, margin) = top_two(&probabilities);
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

/// The source graph's logits for one prepared image, normalized to `pixel_values` on the CPU.
fn run_reference(
    plan: &Arc<TypedRunnableModel>,
    logits_slot: usize,
    image: &PreparedImage,
    spec: &PreprocessSpec,
) -> TractResult<Vec<f32>> {
    let (height, width) = (image.height() as usize, image.width() as usize);
    let plane = height * width;
    let mut chw = vec![0f32; 3 * plane];
    for (i, value) in image.pixels().iter().enumerate() {
        let c = i % 3;
        chw[c * plane + i / 3] = *value as f32 * spec.scale[c] + spec.offset[c];
    }
    let input = Tensor::from_shape(&[1, 3, height, width], &chw)?;
    let outputs = plan.run(tvec!(input.into_tvalue()))?;
    Ok(outputs[logits_slot].to_plain_array_view::<f32>()?.iter().copied().collect())
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// An export of the committed tiny ViT into `base` with the fixture photos `photos` as given images.
    fn tiny_vit(
        base: &Path,
        precision: Precision,
        photos: &[&str],
        min_top1_agreement: f64,
    ) -> ExportRequest {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        ExportRequest {
            checkpoint: fixtures.join("models/tiny-vit"),
            base: base.to_owned(),
            version: None,
            resize: ResizeMode::Pil,
            jpeg_draft: false,
            precision,
            accuracy_images: photos.iter().map(|photo| fixtures.join("images").join(photo)).collect(),
            min_top1_agreement,
        }
    }

    /// An int8 export publishes its accuracy report, lists it in the manifest, and records its precision.
    #[test]
    fn int8_export_publishes_an_accuracy_report() -> TestResult {
        let base = tempfile::tempdir()?;
        let photos = ["chelsea.jpg", "rocket.jpg"];
        let request = tiny_vit(base.path(), Precision::Int8, &photos, MIN_TOP1_AGREEMENT);
        let report = export(&request, &runtime::NoProgress)?;
        let accuracy = report.accuracy.ok_or("no accuracy report")?;
        let names: Vec<&str> = accuracy.sets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["synthetic", "given"]);
        assert_eq!(accuracy.sets[1].images, 2);
        let gates: Vec<bool> = accuracy.sets.iter().map(|s| s.gates).collect();
        assert_eq!(gates, [false, true], "the given images gate, the synthetic ones are only reported");
        for set in &accuracy.sets {
            assert!(set.top1_agreement >= MIN_TOP1_AGREEMENT, "{set:?}");
            assert!(set.max_confidence_delta < 0.05, "{set:?}");
        }
        let model = Model::load(&report.version_dir)?;
        assert_eq!(model.manifest().graph.precision, "int8");
        assert!(model.manifest().files.contains_key(ACCURACY_FILE));
        let written: AccuracyReport =
            serde_json::from_slice(&std::fs::read(report.version_dir.join(ACCURACY_FILE))?)?;
        assert_eq!(written, accuracy);
        Ok(())
    }

    /// A bf16 export of the tiny ViT agrees with f32 on top-1 for every image, reloads with the
    /// runtime, and its graph is about half the f32 one (weights stored as bf16).
    #[test]
    fn bf16_export_agrees_with_f32_and_halves_the_weights() -> TestResult {
        let base = tempfile::tempdir()?;
        let request = |precision| tiny_vit(base.path(), precision, &["chelsea.jpg", "rocket.jpg"], 1.0);
        let f32_report = export(&request(Precision::F32), &runtime::NoProgress)?;
        let report = export(&request(Precision::Bf16), &runtime::NoProgress)?;
        let accuracy = report.accuracy.ok_or("no accuracy report")?;
        assert_eq!(accuracy.precision, "bf16");
        for set in &accuracy.sets {
            assert_eq!(set.top1_agreement, 1.0, "{set:?}");
            assert!(set.max_confidence_delta < 0.01, "{set:?}");
        }
        let model = Model::load(&report.version_dir)?;
        assert_eq!(model.manifest().graph.precision, "bf16");
        let size = |dir: &Path| std::fs::metadata(dir.join(GRAPH_FILE)).map(|m| m.len());
        let (bf16, f32) = (size(&report.version_dir)?, size(&f32_report.version_dir)?);
        assert!(bf16 < f32 * 7 / 10, "bf16 graph of {bf16} bytes against {f32} in f32");
        Ok(())
    }

    /// Without given images the synthetic ones gate, and are then the only set.
    #[test]
    fn synthetic_images_gate_when_none_are_given() -> TestResult {
        let base = tempfile::tempdir()?;
        let request = tiny_vit(base.path(), Precision::Int8, &[], 0.0);
        let accuracy = export(&request, &runtime::NoProgress)?.accuracy.ok_or("no accuracy report")?;
        assert_eq!(accuracy.sets.len(), 1);
        assert_eq!((accuracy.sets[0].name.as_str(), accuracy.sets[0].gates), ("synthetic", true));
        assert_eq!(accuracy.sets[0].images, ACCURACY_SAMPLES);
        Ok(())
    }

    fn set(name: &str, gates: bool, top1_agreement: f64) -> AccuracySet {
        let (images, max_confidence_delta, min_disagreeing_margin) = (10, 0.01, None);
        AccuracySet {
            name: name.into(),
            gates,
            images,
            top1_agreement,
            max_confidence_delta,
            min_disagreeing_margin,
        }
    }

    fn report(sets: Vec<AccuracySet>) -> AccuracyReport {
        let (precision, reference) = ("int8".to_owned(), "f32".to_owned());
        AccuracyReport { precision, reference, min_top1_agreement: 0.95, sets }
    }

    /// Only the gating set can refuse publishing: given images that agree publish whatever the synthetic
    /// ones do, given images below the bar refuse it, and alone the synthetic ones decide.
    #[test]
    fn only_the_gating_set_refuses_publishing() {
        let synthetic_low = report(vec![set("synthetic", false, 0.5), set("given", true, 1.0)]);
        assert_eq!(synthetic_low.failing_set(), None);
        let given_low = report(vec![set("synthetic", false, 1.0), set("given", true, 0.9)]);
        assert_eq!(given_low.failing_set().map(|s| s.name.as_str()), Some("given"));
        let at_the_bar = report(vec![set("synthetic", false, 0.0), set("given", true, 0.95)]);
        assert_eq!(at_the_bar.failing_set(), None);
        let only_synthetic = report(vec![set("synthetic", true, 0.9)]);
        assert_eq!(only_synthetic.failing_set().map(|s| s.name.as_str()), Some("synthetic"));
        assert_eq!(report(vec![set("synthetic", true, 0.96)]).failing_set(), None);
    }

    /// An old accuracy.json without `gates` reads as every set having gated, as they did.
    #[test]
    fn reports_without_gates_read_as_every_set_gating() -> TestResult {
        let old = r#"{"name": "given", "images": 2, "top1_agreement": 1.0, "max_confidence_delta": 0.01,
            "min_disagreeing_margin": null}"#;
        assert!(serde_json::from_str::<AccuracySet>(old)?.gates);
        Ok(())
    }

    /// A directory given as an accuracy image stands for its image files (by extension, any case),
    /// sorted; other files and subdirectories are skipped, and a directory without images is refused.
    #[test]
    fn accuracy_image_directories_expand_to_their_images() -> TestResult {
        let dir = tempfile::tempdir()?;
        for name in ["b.PNG", "a.jpg", "notes.txt", "c.webp"] {
            std::fs::write(dir.path().join(name), b"")?;
        }
        std::fs::create_dir(dir.path().join("d.jpg"))?;
        let single = dir.path().join("notes.txt");
        let files = image_files(&[single.clone(), dir.path().to_owned()])?;
        let expected: Vec<PathBuf> =
            ["notes.txt", "a.jpg", "b.PNG", "c.webp"].map(|n| dir.path().join(n)).into();
        assert_eq!(files, expected);

        let empty = dir.path().join("d.jpg");
        let message = image_files(std::slice::from_ref(&empty))
            .err()
            .ok_or("an empty directory was accepted")?
            .to_string();
        assert!(message.contains(&empty.display().to_string()) && message.contains("no image"), "{message}");
        let missing = dir.path().join("missing");
        assert!(matches!(image_files(&[missing]), Err(ExportError::Io { .. })));
        Ok(())
    }
}
