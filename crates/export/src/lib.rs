//! Build-time half of kiln: turns a Hugging Face ViT checkpoint into a kiln artifact.
//!
//! [`Source::open`] reads a checkpoint directory or file (`model.safetensors`, `pytorch_model.bin` or
//! `model.onnx`, each beside `config.json` / `preprocessor_config.json`); [`Source::graph`] builds the fused
//! graph that takes decoded, resized `u8` RGB images and returns `confidence`, `class_index` and `logits`.

mod config;
mod graph;
mod onnx;
mod pipeline;
mod vit;
mod weights;

use std::path::{Path, PathBuf};

use artifact::{PreprocessSpec, ResizeMode};
use tract_core::prelude::TypedModel;

pub use config::{Activation, PreprocessorConfig, VitConfig};
pub use pipeline::{
    ACCURACY_FILE, AccuracyReport, AccuracySet, ExportReport, ExportRequest, GRAPH_FILE, MIN_TOP1_AGREEMENT,
    SELF_CHECK_TOLERANCE, STALE_TEMP_DIR_AGE, export,
};
pub use vit::{Normalization, Precision, VitInput};

/// Name of the graph output holding each image's top-1 probability, `f32[N]`.
pub const CONFIDENCE_OUTPUT: &str = "confidence";
/// Name of the graph output holding each image's top-1 class index, `i64[N]`.
pub const CLASS_OUTPUT: &str = "class_index";
/// Name of the graph output holding the raw logits, `f32[N, classes]`.
pub const LOGITS_OUTPUT: &str = "logits";

/// Everything that can go wrong while exporting, each naming the file or stage at fault.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// No supported checkpoint file was found.
    #[error("{path}: no model.safetensors, pytorch_model.bin or model.onnx found")]
    NoCheckpoint {
        /// The directory or file given.
        path: PathBuf,
    },
    /// `config.json` or `preprocessor_config.json` is unusable.
    #[error("{path}: {reason}")]
    InvalidConfig {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The weights file is unreadable or does not match the config.
    #[error("{path}: {reason}")]
    Checkpoint {
        /// The weights file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The ONNX model could not be imported as an image classifier.
    #[error("{path}: {reason}")]
    Onnx {
        /// The ONNX file.
        path: PathBuf,
        /// tract's explanation.
        reason: String,
    },
    /// tract refused the graph built from the checkpoint.
    #[error("building the graph: {0}")]
    Graph(String),
    /// The artifact could not be written or published.
    #[error(transparent)]
    Artifact(#[from] artifact::ArtifactError),
    /// The written artifact, run by the runtime, disagrees with the source model; nothing was published.
    #[error("self-check failed, nothing was published: {0}")]
    SelfCheck(String),
}

/// Which file format the weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// `model.safetensors`.
    Safetensors,
    /// `pytorch_model.bin` (a `torch.save` zip).
    Pytorch,
    /// An ONNX export taking `pixel_values` and returning logits.
    Onnx,
}

impl SourceFormat {
    /// The name recorded in an artifact's provenance.
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Safetensors => "safetensors",
            SourceFormat::Pytorch => "pytorch",
            SourceFormat::Onnx => "onnx",
        }
    }
}

/// A checkpoint on disk, its configuration parsed and validated.
pub struct Source {
    /// Format of the weights file.
    pub format: SourceFormat,
    /// The weights (or ONNX) file.
    pub model_file: PathBuf,
    /// `config.json`.
    pub config_file: PathBuf,
    /// `preprocessor_config.json`, if present.
    pub preprocessor_file: Option<PathBuf>,
    /// Parsed `config.json`.
    pub config: VitConfig,
    /// Parsed `preprocessor_config.json` (defaults when absent).
    pub preprocessor: PreprocessorConfig,
}

impl Source {
    /// Opens a checkpoint: a directory (preferring safetensors, then pytorch_model.bin, then model.onnx)
    /// or one of those files directly, with its configuration files beside it.
    pub fn open(path: &Path) -> Result<Source, ExportError> {
        let (dir, model_file) = if path.is_dir() {
            let found = ["model.safetensors", "pytorch_model.bin", "model.onnx"]
                .iter()
                .map(|f| path.join(f))
                .find(|p| p.is_file())
                .ok_or_else(|| ExportError::NoCheckpoint { path: path.to_owned() })?;
            (path.to_owned(), found)
        } else if path.is_file() {
            (path.parent().unwrap_or(Path::new(".")).to_owned(), path.to_owned())
        } else {
            return Err(ExportError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            });
        };
        let format = match model_file.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => SourceFormat::Safetensors,
            Some("bin" | "pt" | "pth") => SourceFormat::Pytorch,
            Some("onnx") => SourceFormat::Onnx,
            _ => return Err(ExportError::NoCheckpoint { path: path.to_owned() }),
        };
        let config_file = dir.join("config.json");
        let config = VitConfig::read(&config_file)?;
        let preprocessor_path = dir.join("preprocessor_config.json");
        let preprocessor = PreprocessorConfig::read_or_default(&preprocessor_path)?;
        let preprocessor_file = preprocessor_path.is_file().then_some(preprocessor_path);
        Ok(Source { format, model_file, config_file, preprocessor_file, config, preprocessor })
    }

    /// The preprocessing spec for an artifact built from this source.
    pub fn preprocess_spec(&self, resize: ResizeMode) -> Result<PreprocessSpec, ExportError> {
        let path = self.preprocessor_file.as_deref().unwrap_or(&self.config_file);
        self.preprocessor.spec(path, self.config.image_size, resize)
    }

    /// Builds the classifier graph: fused (`u8` pixels in) or reference (`pixel_values` in).
    pub fn graph(&self, spec: &PreprocessSpec, input: VitInput) -> Result<TypedModel, ExportError> {
        self.graph_in(spec, input, Precision::F32)
    }

    /// Builds the classifier graph with its encoder's linear layers in `precision`. Lower precisions are
    /// built from the checkpoint's weights, so they need safetensors or pytorch_model.bin.
    pub fn graph_in(
        &self,
        spec: &PreprocessSpec,
        input: VitInput,
        precision: Precision,
    ) -> Result<TypedModel, ExportError> {
        let normalization = Normalization { rescale: spec.rescale_factor, mean: spec.mean, std: spec.std };
        let weights = match self.format {
            SourceFormat::Safetensors => weights::Weights::safetensors(&self.model_file)?,
            SourceFormat::Pytorch => weights::Weights::pytorch(&self.model_file)?,
            SourceFormat::Onnx if precision == Precision::F32 => {
                return onnx::build(&self.model_file, self.config.image_size as usize, &normalization, input);
            }
            SourceFormat::Onnx => {
                return Err(ExportError::Onnx {
                    path: self.model_file.clone(),
                    reason: format!(
                        "{} export rebuilds the graph from the checkpoint's weights; give model.safetensors \
                         or pytorch_model.bin",
                        precision.name()
                    ),
                });
            }
        };
        vit::build(&self.config, &weights, &normalization, input, precision)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tract_core::prelude::*;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Largest |logit - PyTorch logit| accepted when the graph is fed PyTorch's own `pixel_values`.
    const LOGIT_TOLERANCE: f32 = 1e-4;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
    }

    /// Runs the reference graph (`pixel_values` in) of `model_file` on every fixture image's reference
    /// `pixel_values` and compares the logits with the ones `fixtures/generate.py` recorded from PyTorch.
    fn check_logits(reference: &str, model_file: &str) -> Result<f32, Box<dyn std::error::Error>> {
        let source = Source::open(&fixtures().join(model_file))?;
        let spec = source.preprocess_spec(ResizeMode::Pil)?;
        let plan = source.graph(&spec, VitInput::PixelValues)?.into_optimized()?.into_runnable()?;
        let document: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            fixtures().join(format!("reference/{reference}.json")),
        )?)?;
        let images = document["images"].as_array().ok_or("reference has no images")?;
        let mut worst = 0f32;
        for image in images {
            let pixels =
                std::fs::read(fixtures().join(image["pixel_values"]["file"].as_str().ok_or("no file")?))?;
            let values: Vec<f32> =
                pixels.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let shape: Vec<usize> = serde_json::from_value(image["pixel_values"]["shape"].clone())?;
            let input = Tensor::from_shape(&[1, shape[0], shape[1], shape[2]], &values)?;
            let outputs = plan.run(tvec!(input.into_tvalue()))?;
            let logits: Vec<f32> = outputs[2].to_plain_array_view::<f32>()?.iter().copied().collect();
            let expected: Vec<f32> = serde_json::from_value(image["logits"].clone())?;
            assert_eq!(logits.len(), expected.len(), "{}: class count", image["image"]);
            for (got, want) in logits.iter().zip(&expected) {
                worst = worst.max((got - want).abs());
            }
        }
        eprintln!("{reference} {model_file}: max |logit diff| {worst:.2e}");
        assert!(worst <= LOGIT_TOLERANCE, "{model_file}: max |logit diff| {worst} > {LOGIT_TOLERANCE}");
        Ok(worst)
    }

    #[test]
    fn every_source_form_reproduces_pytorch_logits() -> TestResult {
        for file in ["model.safetensors", "pytorch_model.bin", "model.onnx"] {
            check_logits("tiny-vit", &format!("models/tiny-vit/{file}"))?;
        }
        for file in ["model.safetensors", "pytorch_model.bin"] {
            check_logits("odd-vit", &format!("models/odd-vit/{file}"))?;
        }
        Ok(())
    }
}
