//! The compiled graph of an artifact and the batch inference around it.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use artifact::{Artifact, Manifest};
use rayon::ThreadPoolBuilder;
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
    /// Threads each matrix multiplication may use (1 = run on the calling thread only). Every model
    /// with the same count runs on one pool of that many threads for the whole process.
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
    /// The engine's thread pool could not be started (the OS refused the threads).
    #[error("cannot start the engine's {threads}-thread pool: {reason}")]
    ThreadPool {
        /// Threads the pool was to have.
        threads: usize,
        /// rayon's explanation.
        reason: String,
    },
}

/// Compiles a kiln graph for this machine as [`Model`] does: tract's declutter, the linear layers of
/// f32 graphs given kiln's AVX-512 kernel where the CPU has it, then tract's codegen, which packs
/// kiln's int8 and bf16 layers and fuses the operations around every packed layer, then the layer
/// norms left as chains of nodes made one operation each, and the image's scaling to planes one
/// operation.
pub fn optimize(mut model: TypedModel) -> TractResult<TypedModel> {
    model.declutter()?;
    model.transform(&crate::linear_f32::PackF32Linears)?;
    model.optimize()?;
    model.transform(&crate::layer_norm::PlanLayerNorms)?;
    model.transform(&crate::pixels::PlanScalePixels)?;
    Ok(model)
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
        let concrete = one_image.translate_model(&typed).map_err(graph_error)?;
        // The loaded graph's weights must be gone before optimizing packs them into new buffers: kept
        // alive until the end of this function, every weight existed twice at the peak (ViT-B f32: 713
        // MiB for 330 MiB of weights, against 390 MiB once dropped here).
        drop(typed);
        let plan = optimize(concrete).and_then(|m| m.into_runnable()).map_err(graph_error)?;
        let executor = engine_executor(options.threads)?;
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
    /// Images left over when the batch does not divide by the threads, if they would leave half of
    /// the threads or more idle, run last one at a time on every thread: 7 ViT-B images on 2 threads
    /// then take 3 images' time on each thread plus one image on both, not 4 on one thread.
    ///
    /// An image on every thread runs on one of the pool's threads, which takes its share of each
    /// parallel operation: run from the calling thread, a third thread on two cores, every operation
    /// handed its work over and waited, and the int8 and bf16 ViT-B/16 ran 7-9 % slower.
    fn infer_batch(&self, images: &[PreparedImage]) -> Result<Vec<Prediction>, RuntimeError> {
        let (w, h) = (self.manifest.graph.width, self.manifest.graph.height);
        if let Some(image) = images.iter().find(|i| (i.width(), i.height()) != (w, h)) {
            return Err(RuntimeError::Inference(format!(
                "prepared image is {}x{}, the graph takes {w}x{h}",
                image.width(),
                image.height()
            )));
        }
        let one_at_a_time = |images: &[PreparedImage]| -> Vec<Result<Prediction, RuntimeError>> {
            crate::run_on(&self.executor, || images.iter().map(|i| self.infer_one(i)).collect())
        };
        let pool = match &self.executor {
            Executor::MultiThread(pool) if images.len() > 1 => pool,
            _ => return one_at_a_time(images).into_iter().collect(),
        };
        let threads = pool.current_num_threads();
        let left_over = images.len() % threads;
        let (spread, left_over) = if 2 * left_over <= threads {
            images.split_at(images.len() - left_over)
        } else {
            (images, &images[images.len()..])
        };
        let mut predictions = self.spread(pool, spread);
        predictions.extend(one_at_a_time(left_over));
        predictions.into_iter().collect()
    }

    /// Runs `images` spread over `pool`'s threads, each thread running whole images on its own.
    fn spread(
        &self,
        pool: &rayon::ThreadPool,
        images: &[PreparedImage],
    ) -> Vec<Result<Prediction, RuntimeError>> {
        let next = AtomicUsize::new(0);
        let mut slots: Vec<Option<Result<Prediction, RuntimeError>>> = images.iter().map(|_| None).collect();
        // Each of the pool's threads takes images until none is left; a panic loses only the images
        // its thread had taken.
        let done: Vec<Vec<(usize, Result<Prediction, RuntimeError>)>> = pool.broadcast(|_| {
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
            std::panic::catch_unwind(AssertUnwindSafe(work)).unwrap_or_default()
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

/// The engine's executor for `threads` threads: one rayon pool per thread count for the whole process,
/// shared by every [`Model`], so loading a new version starts no threads (and, with glibc, no new malloc
/// arenas) and unloading one stops none. One thread means the calling thread: tract would hand a
/// one-thread pool's matmuls to rayon's global pool, which has a thread per core.
fn engine_executor(threads: usize) -> Result<Executor, RuntimeError> {
    static POOLS: Mutex<BTreeMap<usize, Executor>> = Mutex::new(BTreeMap::new());
    if threads <= 1 {
        return Ok(Executor::SingleThread);
    }
    // A panic while holding the lock cannot leave the map half-updated (one insert).
    let mut pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(executor) = pools.get(&threads) {
        return Ok(executor.clone());
    }
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |index| format!("kiln-engine{threads}-{index}"))
        .build()
        .map_err(|e| RuntimeError::ThreadPool { threads, reason: e.to_string() })?;
    let executor = Executor::MultiThread(Arc::new(pool));
    pools.insert(threads, executor.clone());
    Ok(executor)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Threads of this process whose name starts with `prefix`, from `/proc/self/task/*/comm`.
    fn threads_named(prefix: &str) -> std::io::Result<usize> {
        let mut count = 0;
        for task in std::fs::read_dir("/proc/self/task")? {
            // A thread that exited between the listing and the read has no name to match.
            if let Ok(name) = std::fs::read_to_string(task?.path().join("comm"))
                && name.starts_with(prefix)
            {
                count += 1;
            }
        }
        Ok(count)
    }

    /// The count of threads is what a version swap must not grow: models loaded one after the other,
    /// with the earlier ones dropped or kept, all run on the same pool.
    #[test]
    fn models_with_the_same_thread_count_share_one_pool() -> TestResult {
        // Three threads: no other test in this crate asks for that count, so these threads are ours.
        let first = engine_executor(3)?;
        let second = engine_executor(3)?;
        let (Executor::MultiThread(a), Executor::MultiThread(b)) = (&first, &second) else {
            return Err("a 3-thread executor is not a pool".into());
        };
        assert!(Arc::ptr_eq(a, b), "a second model got its own pool");
        // Every thread has run once, so each has its name.
        a.broadcast(|_| ());
        assert_eq!(threads_named("kiln-engine3-")?, 3);
        drop((first, second));
        let third = engine_executor(3)?;
        let Executor::MultiThread(c) = &third else { return Err("not a pool".into()) };
        c.broadcast(|_| ());
        assert_eq!(threads_named("kiln-engine3-")?, 3, "dropping every model stopped or started threads");
        assert!(matches!(engine_executor(1)?, Executor::SingleThread));
        Ok(())
    }
}
