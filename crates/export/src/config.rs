//! `config.json` and `preprocessor_config.json` as Hugging Face writes them for ViT image classifiers.

use std::collections::BTreeMap;
use std::path::Path;

use artifact::{PreprocessSpec, ResampleFilter, ResizeMode};
use serde::Deserialize;

use crate::ExportError;

/// The architecture hyper-parameters of a ViT checkpoint; every field comes from `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct VitConfig {
    /// `architectures[0]`, e.g. `ViTForImageClassification`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Square input side in pixels.
    #[serde(default = "default_image_size")]
    pub image_size: u32,
    /// Square patch side in pixels.
    #[serde(default = "default_patch_size")]
    pub patch_size: u32,
    /// Input channels; only 3 (RGB) is supported.
    #[serde(default = "default_num_channels")]
    pub num_channels: u32,
    /// Token width.
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// Encoder layers.
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    /// MLP width.
    #[serde(default = "default_intermediate")]
    pub intermediate_size: usize,
    /// MLP activation name, as in transformers' `ACT2FN`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Whether query/key/value projections carry a bias.
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    /// Class index (as a decimal string) to label.
    #[serde(default)]
    pub id2label: BTreeMap<String, String>,
}

fn default_image_size() -> u32 {
    224
}
fn default_patch_size() -> u32 {
    16
}
fn default_num_channels() -> u32 {
    3
}
fn default_hidden_size() -> usize {
    768
}
fn default_layers() -> usize {
    12
}
fn default_heads() -> usize {
    12
}
fn default_intermediate() -> usize {
    3072
}
fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_true() -> bool {
    true
}

/// The activation functions transformers' ViT accepts that kiln can express as graph operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: exact, erf-based.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// `relu`.
    Relu,
    /// `silu` / `swish`: `x * sigmoid(x)`.
    Silu,
}

impl Activation {
    fn parse(name: &str) -> Option<Activation> {
        Some(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            _ => return None,
        })
    }
}

impl VitConfig {
    /// Reads and validates `config.json`.
    pub fn read(path: &Path) -> Result<VitConfig, ExportError> {
        let config: VitConfig = read_json(path)?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ExportError> {
        let invalid = |reason: String| ExportError::InvalidConfig { path: path.to_owned(), reason };
        if self.num_channels != 3 {
            return Err(invalid(format!("num_channels is {}, only 3 (RGB) is supported", self.num_channels)));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(invalid(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(invalid(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        self.activation().ok_or_else(|| invalid(format!("unsupported hidden_act {:?}", self.hidden_act)))?;
        self.labels().map_err(invalid)?;
        Ok(())
    }

    /// The MLP activation (validated at read time).
    pub fn activation(&self) -> Option<Activation> {
        Activation::parse(&self.hidden_act)
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        (self.image_size / self.patch_size) as usize
    }

    /// Labels indexed by class: `id2label` must cover `0..n` exactly once.
    pub fn labels(&self) -> Result<Vec<String>, String> {
        if self.id2label.is_empty() {
            return Err("id2label is missing or empty".into());
        }
        let mut labels = vec![None; self.id2label.len()];
        for (id, label) in &self.id2label {
            let index: usize = id.parse().map_err(|_| format!("id2label key {id:?} is not an integer"))?;
            let slot = labels.get_mut(index).ok_or_else(|| {
                format!("id2label key {index} is out of range for {} labels", self.id2label.len())
            })?;
            *slot = Some(label.clone());
        }
        Ok(labels.into_iter().map(|l| l.unwrap_or_default()).collect())
    }

    /// Model architecture name for provenance.
    pub fn architecture(&self) -> String {
        self.architectures.first().cloned().unwrap_or_else(|| "ViTForImageClassification".into())
    }
}

/// `size` in `preprocessor_config.json`: `{"height","width"}` or, in older files, a single integer.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ImageSize {
    HeightWidth { height: u32, width: u32 },
    Square(u32),
}

/// The image processor settings (`ViTImageProcessor`) that kiln bakes into an artifact.
#[derive(Debug, Clone, Deserialize)]
pub struct PreprocessorConfig {
    #[serde(default = "default_true")]
    do_resize: bool,
    #[serde(default)]
    size: Option<ImageSize>,
    #[serde(default = "default_resample")]
    resample: u32,
    #[serde(default = "default_true")]
    do_rescale: bool,
    #[serde(default = "default_rescale")]
    rescale_factor: f64,
    #[serde(default = "default_true")]
    do_normalize: bool,
    #[serde(default = "default_mean_std")]
    image_mean: Vec<f64>,
    #[serde(default = "default_mean_std")]
    image_std: Vec<f64>,
}

fn default_resample() -> u32 {
    2
}
fn default_rescale() -> f64 {
    1.0 / 255.0
}
fn default_mean_std() -> Vec<f64> {
    vec![0.5; 3]
}

impl PreprocessorConfig {
    /// Reads `preprocessor_config.json`, or the `ViTImageProcessor` defaults when the file is absent.
    pub fn read_or_default(path: &Path) -> Result<PreprocessorConfig, ExportError> {
        if path.exists() { read_json(path) } else { Ok(serde_json::from_str("{}").expect("defaults parse")) }
    }

    /// The preprocessing spec for an artifact whose graph takes `image_size` square images.
    pub fn spec(
        &self,
        path: &Path,
        image_size: u32,
        resize: ResizeMode,
    ) -> Result<PreprocessSpec, ExportError> {
        let invalid = |reason: String| ExportError::InvalidConfig { path: path.to_owned(), reason };
        if !self.do_resize {
            return Err(invalid("do_resize is false: kiln always resizes to the model's input size".into()));
        }
        if let Some(size) = &self.size {
            let (h, w) = match size {
                ImageSize::HeightWidth { height, width } => (*height, *width),
                ImageSize::Square(s) => (*s, *s),
            };
            if (h, w) != (image_size, image_size) {
                return Err(invalid(format!(
                    "size {h}x{w} differs from the model's image_size {image_size}"
                )));
            }
        }
        let three = |name: &str, v: &[f64]| -> Result<[f32; 3], ExportError> {
            match v {
                [a, b, c] => Ok([*a as f32, *b as f32, *c as f32]),
                _ => Err(invalid(format!("{name} has {} values, expected 3", v.len()))),
            }
        };
        let (mean, std) = if self.do_normalize {
            (three("image_mean", &self.image_mean)?, three("image_std", &self.image_std)?)
        } else {
            ([0.0; 3], [1.0; 3])
        };
        if std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err(invalid(format!("image_std {std:?} contains zero or a non-finite value")));
        }
        let resample = match self.resample {
            0 => ResampleFilter::Nearest,
            1 => ResampleFilter::Lanczos,
            2 => ResampleFilter::Bilinear,
            3 => ResampleFilter::Bicubic,
            4 => ResampleFilter::Box,
            5 => ResampleFilter::Hamming,
            other => return Err(invalid(format!("unknown resample filter {other}"))),
        };
        if resize == ResizeMode::Tf && resample != ResampleFilter::Bilinear {
            return Err(invalid(format!(
                "--resize tf only does bilinear, the checkpoint asks for {resample:?}"
            )));
        }
        Ok(PreprocessSpec {
            resize,
            resample,
            rescale_factor: if self.do_rescale { self.rescale_factor as f32 } else { 1.0 },
            mean,
            std,
        })
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ExportError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ExportError::Io { path: path.to_owned(), source })?;
    serde_json::from_str(&text)
        .map_err(|e| ExportError::InvalidConfig { path: path.to_owned(), reason: e.to_string() })
}
