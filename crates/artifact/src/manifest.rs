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
pub const FORMAT_VERSION: u32 = 5;

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

/// How input bytes become RGB pixels before any geometry is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decoder {
    /// What `PIL.Image.open(...).convert("RGB")` yields (the Hugging Face pipeline): libjpeg-turbo's
    /// accurate integer DCT with fancy upsampling, every format Pillow opens.
    Pillow,
    /// What `tf.io.decode_image(..., channels=3)` yields (the TF Serving seed): JPEG with libjpeg's fast
    /// integer DCT (`JDCT_IFAST`) and fancy upsampling; only JPEG, PNG, GIF and BMP are accepted.
    Tensorflow,
    /// [`Decoder::Pillow`], except that a JPEG is decoded at 1/2, 1/4 or 1/8 of its size when the resize
    /// shrinks it at least that much: `Image.draft("RGB", size)` with the resize's size before
    /// `convert("RGB")`, as Pillow's `thumbnail` does. Decoding a large photo costs a fraction of the full
    /// decode, and the pixels differ from [`Decoder::Pillow`]'s by 1 to 1.5 levels on average (format
    /// version 5).
    #[serde(rename = "pillow_draft")]
    PillowDraft,
}

impl Decoder {
    /// Whether this is one of Pillow's decoders (so EXIF orientation and transparency keys apply).
    pub fn is_pillow(self) -> bool {
        matches!(self, Decoder::Pillow | Decoder::PillowDraft)
    }
}

/// The size an image is resized to, before any crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum ResizeSize {
    /// Exactly `height` x `width`, aspect ratio not kept.
    Exact {
        /// Output height in pixels.
        height: u32,
        /// Output width in pixels.
        width: u32,
    },
    /// The shorter side becomes `shortest_edge` and the longer `floor(shortest_edge * long / short)`
    /// (transformers' `get_resize_output_image_size(..., default_to_square=False)`), so an image whose
    /// shorter side already equals `shortest_edge` keeps its size. With `longest_edge`, transformers'
    /// `get_size_with_aspect_ratio` in its float arithmetic: when `long / short * shortest_edge` exceeds
    /// `longest_edge`, the shorter side becomes `round(longest_edge * short / long)` (ties to even) and
    /// the longer `int` of that unrounded value `* long / short`, which can be `longest_edge - 1`
    /// (`FORMAT.md` has the exact steps).
    ShortestEdge {
        /// Target of the shorter side in pixels.
        shortest_edge: u32,
        /// Upper bound of the longer side, if any.
        longest_edge: Option<u32>,
    },
}

/// A centre crop, as transformers' `center_crop`: the window `height` x `width` centred (offsets rounded
/// down, so an odd margin is cut at the bottom/right), zero-padded (in `u8`, before `scale` and `offset`)
/// where it is larger than the image, the image placed `ceil(padding / 2)` from the top/left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CropSize {
    /// Crop height in pixels.
    pub height: u32,
    /// Crop width in pixels.
    pub width: u32,
}

/// Order of the three channels the graph receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red (MobileViT's `do_flip_channel_order`).
    Bgr,
}

/// The image preprocessing of an artifact, as steps the runtime runs in this order: decode, orient,
/// resize to `size`, centre-crop to `crop`, order channels; the result is the graph's `u8` input. The
/// arithmetic after that (`pixel_values = u8 * scale[c] + offset[c]`, HWC -> CHW) lives inside the graph
/// and is recorded here for inspection only.
///
/// Format versions 1 and 2 stored `{resize, resample, rescale_factor, mean, std}`; readers upgrade them
/// to this form when loading (see `FORMAT.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    /// Image processor this was derived from (`ViTImageProcessor`, `ConvNextImageProcessor`, ...).
    pub processor: String,
    /// How bytes become RGB pixels.
    pub decoder: Decoder,
    /// Whether the EXIF orientation tag is applied after decoding, as transformers' `load_image` does
    /// (`ImageOps.exif_transpose`).
    pub exif_orientation: bool,
    /// Resize algorithm family.
    pub resize: ResizeMode,
    /// Resampling filter (only `bilinear` is meaningful with [`ResizeMode::Tf`]).
    pub resample: ResampleFilter,
    /// Size after resizing.
    pub size: ResizeSize,
    /// Centre crop after resizing, if any; its size is the graph's input size.
    pub crop: Option<CropSize>,
    /// Channel order of the graph's input.
    pub channel_order: ChannelOrder,
    /// Whether pixels equal to the colour key Pillow keeps in `info["transparency"]` (a GIF's transparency
    /// index, a PNG tRNS key) become white: transformers' `convert_to_rgb`, run when the processor's
    /// `do_convert_rgb` is set, treats that key as alpha and composites over white.
    pub transparency_to_white: bool,
    /// Per-channel factor applied to `u8` values inside the graph (rescale and normalization folded).
    pub scale: [f32; 3],
    /// Per-channel term added after `scale` inside the graph.
    pub offset: [f32; 3],
}

impl PreprocessSpec {
    /// The preprocessing format versions 1 and 2 described: decode as Pillow, no orientation, resize
    /// straight to the graph's size, no crop, RGB, `(u8 * rescale_factor - mean) / std`.
    pub fn legacy(
        resize: ResizeMode,
        resample: ResampleFilter,
        height: u32,
        width: u32,
        rescale_factor: f32,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> PreprocessSpec {
        PreprocessSpec {
            processor: "ViTImageProcessor".into(),
            decoder: Decoder::Pillow,
            exif_orientation: false,
            resize,
            resample,
            size: ResizeSize::Exact { height, width },
            crop: None,
            channel_order: ChannelOrder::Rgb,
            transparency_to_white: false,
            scale: std::array::from_fn(|c| rescale_factor / std[c]),
            offset: std::array::from_fn(|c| -mean[c] / std[c]),
        }
    }

    /// The size of the image the steps produce: the crop, or the resize size when it is exact.
    pub fn output_size(&self) -> Option<(u32, u32)> {
        match (self.crop, self.size) {
            (Some(CropSize { height, width }), _) | (None, ResizeSize::Exact { height, width }) => {
                Some((height, width))
            }
            (None, ResizeSize::ShortestEdge { .. }) => None,
        }
    }
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
    /// Seconds since the Unix epoch when the export finished, or `SOURCE_DATE_EPOCH` when set; the one
    /// field the content digest leaves out.
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

/// Rewrites the `preprocess` object of a format version 1 or 2 manifest (`{resize, resample,
/// rescale_factor, mean, std}`, images resized straight to the graph's size) into the current form with
/// [`PreprocessSpec::legacy`]; a manifest of the current version is returned unchanged. Anything that does
/// not have the old shape is left for the typed parse to reject.
pub(crate) fn upgrade_preprocess(format_version: u64, manifest: &mut serde_json::Value) {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct LegacyPreprocess {
        resize: ResizeMode,
        resample: ResampleFilter,
        rescale_factor: f32,
        mean: [f32; 3],
        std: [f32; 3],
    }
    if format_version >= 3 {
        return;
    }
    let size = |axis: &str| manifest["graph"][axis].as_u64().and_then(|v| u32::try_from(v).ok());
    let (Some(height), Some(width)) = (size("height"), size("width")) else { return };
    let Ok(old) = LegacyPreprocess::deserialize(&manifest["preprocess"]) else { return };
    let spec = PreprocessSpec::legacy(
        old.resize,
        old.resample,
        height,
        width,
        old.rescale_factor,
        old.mean,
        old.std,
    );
    if let Ok(value) = serde_json::to_value(spec) {
        manifest["preprocess"] = value;
    }
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
        let finite = p.scale.iter().chain(&p.offset).all(|v| v.is_finite());
        if !finite {
            return Err(invalid("preprocess".into(), "scale and offset must be finite".into()));
        }
        if p.scale.contains(&0.0) {
            return Err(invalid("preprocess.scale".into(), format!("{:?} has a zero entry", p.scale)));
        }
        let graph_size = (self.graph.height, self.graph.width);
        match p.output_size() {
            Some(size) if size == graph_size => {}
            Some((h, w)) => {
                let reason = format!(
                    "the steps produce {h}x{w} images but the graph takes {}x{}",
                    graph_size.0, graph_size.1
                );
                return Err(invalid("preprocess".into(), reason));
            }
            None => {
                let reason = "a shortest-edge resize without a crop gives images of varying size; the \
                              graph takes one size"
                    .to_owned();
                return Err(invalid("preprocess".into(), reason));
            }
        }
        let sides = match p.size {
            ResizeSize::Exact { height, width } => [height, width],
            ResizeSize::ShortestEdge { shortest_edge, longest_edge } => {
                [shortest_edge, longest_edge.unwrap_or(shortest_edge)]
            }
        };
        if sides.contains(&0) {
            return Err(invalid("preprocess.size".into(), format!("{:?} has a zero side", p.size)));
        }
        Ok(())
    }
}
