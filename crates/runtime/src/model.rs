//! The compiled graph of an artifact and the batch inference around it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use artifact::{Artifact, Manifest};
use tract_core::internal::{Symbol, TDim};
use tract_core::model::translator::Translate;
use tract_core::prelude::*;
use tract_linalg::multithread::{Executor, multithread_tract_scope};

use crate::image::{ImageLimits, InstanceError, PreparedImage, prepare};

/// The symbol the exporter gives the batch dimension of the graph's input and outputs.
const BATCH_SYMBOL: &str = "N";

/// How a [`Model`] runs: resource limits and parallelism.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Limits applied to every input image before decoding.
    pub limits: ImageLimits,
    /// Threads each matrix multiplication may use (1 = run on the calling thread only).
    pub threads: usize,
    /// Largest batch handed to the graph at once; bigger requests are split, bounding memory.
    pub max_batch: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            limits: ImageLimits::default(),
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            max_batch: 32,
        }
    }
}

/// Whole-batch failures: the artifact could not be loaded or the engine failed. Per-image problems are
/// [`InstanceError`]s instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The artifact is missing, corrupt or of an unsupported format version.
    #[error(transparent)]
    Artifact(#[from] artifact::ArtifactError),
    /// tract could not load or compile the graph file.
    #[error("{path}: cannot load graph: {reason}")]
    Graph {
        /// The graph file.
        path: PathBuf,
        /// tract's explanation.
        reason: String,
    },
    /// The graph ran but failed or produced outputs that break the artifact's contract.
    #[error("inference failed: {0}")]
    Inference(String),
}

/// One image's classification.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Class name from the artifact's labels.
    pub label: String,
    /// Index of the class in the artifact's labels.
    pub class_index: usize,
    /// Softmax probability of the top class.
    pub confidence: f32,
}

/// A loaded artifact: verified, compiled for this machine, and shareable across threads.
#[derive(Debug)]
pub struct Model {
    dir: PathBuf,
    manifest: Manifest,
    plan: Arc<TypedRunnableModel>,
    confidence_slot: usize,
    class_slot: usize,
    executor: Executor,
    options: RuntimeOptions,
}

impl Model {
    /// Loads a version directory (or a base directory: its highest version) with default options.
    pub fn load(dir: impl AsRef<Path>) -> Result<Model, RuntimeError> {
        Model::load_with(dir, RuntimeOptions::default())
    }

    /// Loads a version directory (or a base directory: its highest version), verifying every digest.
    pub fn load_with(dir: impl AsRef<Path>, options: RuntimeOptions) -> Result<Model, RuntimeError> {
        let artifact = Artifact::open(artifact::resolve_dir(dir)?)?;
        let graph = artifact.graph_path();
        let dir = artifact.dir().to_owned();
        Model::compile(dir, artifact.into_manifest(), &graph, options)
    }

    /// Compiles a graph described by `manifest` without the digest checks of [`Model::load`]: for the
    /// exporter's self-check of an artifact that is not yet published, and for callers that verified the
    /// artifact themselves (the server keeps the [`artifact::Artifact`] for its content digest).
    pub fn compile(
        dir: PathBuf,
        manifest: Manifest,
        graph: &Path,
        options: RuntimeOptions,
    ) -> Result<Model, RuntimeError> {
        let graph_error =
            |e: TractError| RuntimeError::Graph { path: graph.to_owned(), reason: format!("{e:#}") };
        let typed = crate::nnef().model_for_path(graph).map_err(graph_error)?;
        let slot_of = |name: &str| -> Result<usize, RuntimeError> {
            let outputs = typed.output_outlets().map_err(graph_error)?;
            outputs.iter().position(|o| typed.node(o.node).name == name).ok_or_else(|| RuntimeError::Graph {
                path: graph.to_owned(),
                reason: format!("the manifest names output {name:?}, the graph has no such output"),
            })
        };
        let confidence_slot = slot_of(&manifest.graph.confidence_output)?;
        let class_slot = slot_of(&manifest.graph.class_output)?;
        // The plan runs one image at a time: with the batch symbolic, tract merges it into the matmul's
        // `n` and, not knowing `n`, falls back to narrow-tile kernels (64x3) that run about 20 % below
        // the 32x6 ones it picks for a known n of 197 tokens. Batches are spread over threads instead.
        let batch = typed.symbols.sym(BATCH_SYMBOL);
        let one_image: HashMap<Symbol, TDim> = HashMap::from([(batch, TDim::Val(1))]);
        let plan = one_image
            .translate_model(&typed)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(graph_error)?;
        // One thread means the calling thread: tract hands a one-thread pool's matmuls to rayon's
        // global pool, which has a thread per core.
        let executor = match options.threads {
            0 | 1 => Executor::SingleThread,
            threads => Executor::multithread(threads),
        };
        Ok(Model { dir, manifest, plan, confidence_slot, class_slot, executor, options })
    }

    /// The version directory this model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The artifact's manifest: signatures, labels, preprocessing, provenance.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Turns one input string (base64 text or raw image bytes: JPEG, PNG, WebP, GIF, BMP, TIFF) into the
    /// graph's input image.
    pub fn prepare(&self, input: &[u8]) -> Result<PreparedImage, InstanceError> {
        prepare(input, &self.manifest.preprocess, &self.options.limits)
    }

    /// Classifies prepared images, in order, in batches of at most `max_batch`.
    pub fn infer(&self, images: &[PreparedImage]) -> Result<Vec<Prediction>, RuntimeError> {
        let mut predictions = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.options.max_batch.max(1)) {
            predictions.extend(self.infer_batch(chunk)?);
        }
        Ok(predictions)
    }

    /// Prepares and classifies a batch of input strings; each instance gets its own result, so one bad
    /// image does not fail the others. The outer error is for engine failures that hit the whole batch.
    pub fn predict(&self, inputs: &[&[u8]]) -> Result<Vec<Result<Prediction, InstanceError>>, RuntimeError> {
        let mut outcomes = Vec::with_capacity(inputs.len());
        let mut good = Vec::with_capacity(inputs.len());
        for input in inputs {
            outcomes.push(self.prepare(input).map(|image| good.push(image)));
        }
        // `infer` returns exactly one prediction per image (it checks the graph's output sizes).
        let mut predictions = self.infer(&good)?.into_iter();
        Ok(outcomes
            .into_iter()
            .map(|o| o.map(|()| predictions.next().expect("infer returns one prediction per image")))
            .collect())
    }

    /// Runs a batch: one image alone uses every thread inside each matrix multiplication; several
    /// images are spread over the threads, each thread running whole images on its own, which keeps
    /// every core busy through the non-matmul operators too and needs no synchronization inside them.
    fn infer_batch(&self, images: &[PreparedImage]) -> Result<Vec<Prediction>, RuntimeError> {
        let (w, h) = (self.manifest.graph.width, self.manifest.graph.height);
        if let Some(image) = images.iter().find(|i| (i.width(), i.height()) != (w, h)) {
            return Err(RuntimeError::Inference(format!(
                "prepared image is {}x{}, the graph takes {w}x{h}",
                image.width(),
                image.height()
            )));
        }
        let threads = self.options.threads.max(1).min(images.len());
        if threads <= 1 {
            return multithread_tract_scope(self.executor.clone(), || {
                images.iter().map(|image| self.infer_one(image)).collect()
            });
        }
        let next = AtomicUsize::new(0);
        let mut slots: Vec<Option<Result<Prediction, RuntimeError>>> = images.iter().map(|_| None).collect();
        let done: Vec<Vec<(usize, Result<Prediction, RuntimeError>)>> = std::thread::scope(|scope| {
            let work = || {
                multithread_tract_scope(Executor::SingleThread, || {
                    let mut done = vec![];
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(image) = images.get(index) else { break done };
                        done.push((index, self.infer_one(image)));
                    }
                })
            };
            let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
            let mut all = vec![work()];
            all.extend(helpers.into_iter().map(|h| h.join().unwrap_or_default()));
            all
        });
        for (index, outcome) in done.into_iter().flatten() {
            slots[index] = Some(outcome);
        }
        slots
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| Err(RuntimeError::Inference("an inference thread panicked".into())))
            })
            .collect()
    }

    /// Runs the plan on one image and reads its class and confidence.
    fn infer_one(&self, image: &PreparedImage) -> Result<Prediction, RuntimeError> {
        let (w, h) = (self.manifest.graph.width as usize, self.manifest.graph.height as usize);
        let failed = |e: TractError| RuntimeError::Inference(format!("{e:#}"));
        let input = Tensor::from_shape(&[1, h, w, 3], image.pixels()).map_err(failed)?;
        let outputs = self.plan.run(tvec!(input.into_tvalue())).map_err(failed)?;
        let confidence = outputs[self.confidence_slot].to_plain_array_view::<f32>().map_err(failed)?;
        let classes = outputs[self.class_slot].to_plain_array_view::<i64>().map_err(failed)?;
        let (Some(&confidence), Some(&class), 1, 1) =
            (confidence.iter().next(), classes.iter().next(), confidence.len(), classes.len())
        else {
            return Err(RuntimeError::Inference(format!(
                "graph returned {} confidences and {} classes for one image",
                confidence.len(),
                classes.len()
            )));
        };
        let label =
            usize::try_from(class).ok().and_then(|c| self.manifest.labels.get(c)).ok_or_else(|| {
                RuntimeError::Inference(format!(
                    "graph returned class {class}, the artifact has {} labels",
                    self.manifest.labels.len()
                ))
            })?;
        Ok(Prediction { label: label.clone(), class_index: class as usize, confidence })
    }
}
