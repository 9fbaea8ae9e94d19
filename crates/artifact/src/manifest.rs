//! The manifest: what an artifact contains and how to run it, as one JSON document.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::digest::is_sha256_hex;
use crate::error::ArtifactError;
use crate::layout::check_file_name;

/// The format version this build writes and the newest it can read.
///
/// Bumped whenever a reader built for the previous version could misread an artifact; with unknown fields
/// denied that is any schema change (rules in `FORMAT.md`).
pub const FORMAT_VERSION: u32 = 2;

/// File name of the manifest inside a version directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// File name of the manifest's own sha256 (hex), so a flipped byte in the manifest is caught too.
pub const MANIFEST_DIGEST_FILE: &str = "manifest.sha256";

/// Everything a runtime needs to know about an artifact besides the files it lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format of this manifest; readers refuse versions newer than [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The compiled graph and the tensors it exchanges with the runtime.
    pub graph: GraphSpec,
    /// Public signatures, keyed by signature name (`serving_default`), as `saved_model_cli` shows them.
    pub signatures: BTreeMap<String, Signature>,
    /// Class names indexed by the class index the graph returns.
    pub labels: Vec<String>,
    /// How raw image bytes become the graph's input tensor.
    pub preprocess: PreprocessSpec,
    /// Where the artifact came from.
    pub provenance: Provenance,
    /// Files (relative to the version directory, `/`-separated) to run warm-up predictions on at load time.
    pub warmup: Vec<String>,
    /// sha256 (lowercase hex) of every file in the version directory except the manifest and its digest;
    /// filled by [`crate::ArtifactWriter::publish`], so exporters leave it empty.
    pub files: BTreeMap<String, String>,
}

/// The compiled graph file and its input/output contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSpec {
    /// Relative path of the tract NNEF archive (tar) holding the fused graph.
    pub file: String,
    /// Input height in pixels: the graph takes `u8[N, height, width, 3]` (RGB, HWC).
    pub height: u32,
    /// Input width in pixels.
    pub width: u32,
    /// Name of the graph output carrying the top-1 probability, `f32[N]`.
    pub confidence_output: String,
    /// Name of the graph output carrying the top-1 class index, `i64[N]`.
    pub class_output: String,
    /// Numeric precision the graph's weights run in (`f32`, `int8`, ...).
    pub precision: String,
}

/// One serving signature: named, typed tensors in and out, like a TensorFlow `SignatureDef`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// `tensorflow/serving/predict` for the predict signature.
    pub method_name: String,
    /// Inputs keyed by alias (`string_input`).
    pub inputs: BTreeMap<String, TensorInfo>,
    /// Outputs keyed by alias (`confidence`, `label`).
    pub outputs: BTreeMap<String, TensorInfo>,
}

impl Signature {
    /// The `serving_default` signature every kiln artifact has: TF Serving's SavedModel signature
    /// (`string_input` strings in, `confidence` and `label` out, batch dimension unknown), defined once
    /// here so exporters, readers and tests cannot drift apart.
    pub fn serving_default() -> Signature {
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
}

/// Type, shape and graph name of one signature tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorInfo {
    /// TensorFlow `DataType` enum name, e.g. `DT_STRING`, `DT_FLOAT`.
    pub dtype: String,
    /// Dimensions; `-1` is unknown (the batch).
    pub shape: Vec<i64>,
    /// Tensor name as TensorFlow would print it, e.g. `serving_default_string_input:0`.
    pub name: String,
}

/// How an image is resized to the graph's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Pillow's `Image.resize` (separable convolution, antialiased when shrinking): what
    /// `ViTImageProcessor` does, so what the model was evaluated with.
    Pil,
    /// `tf.image.resize` bilinear: half-pixel centers, no antialiasing (the TF Serving seed's behaviour).
    Tf,
}

/// The resampling filter, named as in Pillow (`PIL.Image.Resampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResampleFilter {
    /// Pillow `NEAREST` (0).
    Nearest,
    /// Pillow `BOX` (4).
    Box,
    /// Pillow `BILINEAR` (2).
    Bilinear,
    /// Pillow `HAMMING` (5).
    Hamming,
    /// Pillow `BICUBIC` (3).
    Bicubic,
    /// Pillow `LANCZOS` (1).
    Lanczos,
}

/// The image preprocessing the runtime performs before the graph (decode and resize); the arithmetic
/// (rescale, normalize, layout) lives inside the graph and is recorded here for inspection only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    /// Resize algorithm family.
    pub resize: ResizeMode,
    /// Resampling filter (only `bilinear` is meaningful with [`ResizeMode::Tf`]).
    pub resample: ResampleFilter,
    /// Factor applied to `u8` pixel values before normalization (inside the graph).
    pub rescale_factor: f32,
    /// Per-channel mean subtracted after rescaling (inside the graph).
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean (inside the graph).
    pub std: [f32; 3],
}

/// Where an artifact came from, so a deployed version can be traced back to its checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Name and version of the exporter, e.g. `kiln-export 0.1.0`.
    pub exporter: String,
    /// Source format: `safetensors`, `pytorch` or `onnx`.
    pub source_format: String,
    /// Model architecture from `config.json`, e.g. `ViTForImageClassification`.
    pub architecture: String,
    /// Source files with their sha256.
    pub sources: Vec<SourceFile>,
    /// Seconds since the Unix epoch when the export finished.
    pub created_unix: u64,
}

/// One source file the artifact was built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    /// File name as given to the exporter.
    pub path: String,
    /// sha256, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// Upper bound on `manifest.json`'s size, checked before reading it: a label list for 100k classes fits
/// many times over, and a corrupt or hostile file cannot make a reader allocate gigabytes.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

impl Manifest {
    /// Checks the rules serde cannot express: every listed name is a safe relative path with a well-formed
    /// digest, the graph and warm-up files are listed, and the numbers a runtime divides by or sizes
    /// buffers with are usable. Run by publish before writing and by load before trusting anything.
    pub(crate) fn check(&self, path: &Path) -> Result<(), ArtifactError> {
        let invalid = |field: String, reason: String| ArtifactError::ManifestInvalid {
            path: path.to_path_buf(),
            field,
            reason,
        };
        for (name, digest) in &self.files {
            check_file_name(name).map_err(|e| invalid(format!("files[{name:?}]"), e.to_string()))?;
            if !is_sha256_hex(digest) {
                let reason = format!("`{digest}` is not a sha256 in 64 lowercase hex digits");
                return Err(invalid(format!("files[{name:?}]"), reason));
            }
        }
        let listed = |field: String, name: &str| {
            if self.files.contains_key(name) {
                Ok(())
            } else {
                Err(invalid(field, format!("`{name}` is not listed in `files`")))
            }
        };
        listed("graph.file".into(), &self.graph.file)?;
        for (i, name) in self.warmup.iter().enumerate() {
            listed(format!("warmup[{i}]"), name)?;
        }
        if self.graph.height == 0 || self.graph.width == 0 {
            let reason = format!("input size {}x{} has a zero side", self.graph.height, self.graph.width);
            return Err(invalid("graph.height/graph.width".into(), reason));
        }
        for (field, name) in [
            ("graph.confidence_output", &self.graph.confidence_output),
            ("graph.class_output", &self.graph.class_output),
        ] {
            if name.is_empty() {
                return Err(invalid(field.into(), "the output name is empty".into()));
            }
        }
        if self.labels.is_empty() {
            return Err(invalid("labels".into(), "a classifier needs at least one label".into()));
        }
        let p = &self.preprocess;
        let finite = p.rescale_factor.is_finite() && p.mean.iter().chain(&p.std).all(|v| v.is_finite());
        if !finite {
            return Err(invalid("preprocess".into(), "rescale_factor, mean and std must be finite".into()));
        }
        if p.std.contains(&0.0) {
            return Err(invalid("preprocess.std".into(), format!("{:?} has a zero entry", p.std)));
        }
        Ok(())
    }
}
