//! The compiled graph of an artifact and the batch inference around it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use artifact::{Artifact, Manifest};
use tract_core::prelude::*;
use tract_linalg::multithread::{Executor, multithread_tract_scope};

use crate::image::{ImageLimits, InstanceError, PreparedImage, prepare};

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
    /// exporter's self-check of an artifact that is not yet published.
    pub fn compile(
        dir: PathBuf,
        manifest: Manifest,
        graph: &Path,
        options: RuntimeOptions,
    ) -> Result<Model, RuntimeError> {
        let graph_error =
            |e: TractError| RuntimeError::Graph { path: graph.to_owned(), reason: format!("{e:#}") };
        let typed = tract_nnef::nnef().model_for_path(graph).map_err(graph_error)?;
        let slot_of = |name: &str| -> Result<usize, RuntimeError> {
            let outputs = typed.output_outlets().map_err(graph_error)?;
            outputs.iter().position(|o| typed.node(o.node).name == name).ok_or_else(|| RuntimeError::Graph {
                path: graph.to_owned(),
                reason: format!("the manifest names output {name:?}, the graph has no such output"),
            })
        };
        let confidence_slot = slot_of(&manifest.graph.confidence_output)?;
        let class_slot = slot_of(&manifest.graph.class_output)?;
        let plan = typed.into_optimized().and_then(|m| m.into_runnable()).map_err(graph_error)?;
        let executor = Executor::multithread(options.threads.max(1));
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

    /// Turns one input string (base64 text or raw JPEG/PNG bytes) into the graph's input image.
    pub fn prepare(&self, input: &[u8]) -> Result<PreparedImage, InstanceError> {
        let graph = &self.manifest.graph;
        prepare(input, &self.manifest.preprocess, graph.width, graph.height, &self.options.limits)
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

    fn infer_batch(&self, images: &[PreparedImage]) -> Result<Vec<Prediction>, RuntimeError> {
        if images.is_empty() {
            return Ok(vec![]);
        }
        let (w, h) = (self.manifest.graph.width as usize, self.manifest.graph.height as usize);
        let mut pixels = Vec::with_capacity(images.len() * w * h * 3);
        for image in images {
            if (image.width() as usize, image.height() as usize) != (w, h) {
                return Err(RuntimeError::Inference(format!(
                    "prepared image is {}x{}, the graph takes {w}x{h}",
                    image.width(),
                    image.height()
                )));
            }
            pixels.extend_from_slice(image.pixels());
        }
        let failed = |e: TractError| RuntimeError::Inference(format!("{e:#}"));
        let input = Tensor::from_shape(&[images.len(), h, w, 3], &pixels).map_err(failed)?;
        let outputs =
            multithread_tract_scope(self.executor.clone(), || self.plan.run(tvec!(input.into_tvalue())))
                .map_err(failed)?;
        let confidence = outputs[self.confidence_slot].to_plain_array_view::<f32>().map_err(failed)?;
        let classes = outputs[self.class_slot].to_plain_array_view::<i64>().map_err(failed)?;
        if confidence.len() != images.len() || classes.len() != images.len() {
            return Err(RuntimeError::Inference(format!(
                "graph returned {} confidences and {} classes for {} images",
                confidence.len(),
                classes.len(),
                images.len()
            )));
        }
        confidence
            .iter()
            .zip(classes.iter())
            .map(|(&confidence, &class)| {
                let label = usize::try_from(class)
                    .ok()
                    .and_then(|c| self.manifest.labels.get(c))
                    .ok_or_else(|| {
                        RuntimeError::Inference(format!(
                            "graph returned class {class}, the artifact has {} labels",
                            self.manifest.labels.len()
                        ))
                    })?;
                Ok(Prediction { label: label.clone(), class_index: class as usize, confidence })
            })
            .collect()
    }
}
