//! Build-time half of kiln: turns a Hugging Face image-classification checkpoint into a kiln artifact.
//!
//! [`Source::open`] reads a checkpoint directory or file (`model.safetensors`, `pytorch_model.bin` or
//! `model.onnx`, each beside `config.json` / `preprocessor_config.json`); [`Source::graph`] builds the fused
//! graph that takes decoded, resized, cropped `u8` RGB images and returns `confidence`, `class_index` and
//! `logits`. Which model family builds the graph is the `architecture` module's choice.

mod architecture;
mod config;
mod graph;
mod pipeline;
mod precision;
mod processor;
mod weights;

use std::path::{Path, PathBuf};

use artifact::{PreprocessSpec, ResizeMode};
use tract_core::prelude::*;

use architecture::{Architecture, InputSize};
pub use config::ModelConfig;
pub use pipeline::{
    ACCURACY_FILE, AccuracyReport, AccuracySet, ExportReport, ExportRequest, GRAPH_FILE, MIN_TOP1_AGREEMENT,
    PublishOptions, SELF_CHECK_TOLERANCE, STALE_TEMP_DIR_AGE, export, export_with,
};
pub use precision::Precision;
pub use processor::ImageProcessor;

/// What a built graph takes as input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphInput {
    /// `u8[N, H, W, 3]` RGB pixels as the runtime prepares them; rescale, normalization and HWC->CHW are
    /// in the graph. This is what artifacts contain.
    Pixels,
    /// `f32[N, 3, H, W]` normalized `pixel_values`, exactly what the Hugging Face model takes. Used as the
    /// unfused reference the exported artifact is checked against.
    PixelValues,
}

/// Name of the graph output holding each image's top-1 probability, `f32[N]`.
pub const CONFIDENCE_OUTPUT: &str = "confidence";
/// Name of the graph output holding each image's top-1 class index, `i64[N]`.
pub const CLASS_OUTPUT: &str = "class_index";
/// Name of the graph output holding the raw logits, `f32[N, classes]`.
pub const LOGITS_OUTPUT: &str = "logits";

/// Everything that can go wrong while exporting, each naming the file or stage at fault.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// `config.json` names an architecture kiln has no native importer for.
    #[error(
        "{path}: {architecture} has no native importer in kiln (native: {natives}); export it to ONNX with \
         `optimum-cli export onnx --task image-classification --model <checkpoint> <dir>` and give kiln the \
         directory holding model.onnx, config.json and preprocessor_config.json"
    )]
    UnsupportedArchitecture {
        /// `config.json`.
        path: PathBuf,
        /// `architectures[0]` (or `model_type`).
        architecture: String,
        /// The architectures kiln imports from weights.
        natives: String,
    },
    /// The architecture cannot be built in the requested precision.
    #[error("{architecture} cannot be exported in {precision} (it offers: {offered})")]
    UnsupportedPrecision {
        /// The architecture (`architectures[0]`, or `ONNX`).
        architecture: String,
        /// The requested precision.
        precision: &'static str,
        /// The precisions it offers.
        offered: String,
    },
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A directory given as accuracy images holds no image file.
    #[error("{path}: no image file ({extensions}) to compare the export with f32 on")]
    NoAccuracyImages {
        /// The directory.
        path: PathBuf,
        /// The extensions looked for.
        extensions: String,
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
    pub config: ModelConfig,
    /// The image processor `preprocessor_config.json` describes (ViT's defaults when absent).
    pub processor: ImageProcessor,
}

impl Source {
    /// Opens a checkpoint: a directory or one of its model files directly, with its configuration files
    /// beside it. A directory's weights (`model.safetensors`, then `pytorch_model.bin`) are used when kiln
    /// imports its architecture natively, else its `model.onnx`; an architecture without a native importer
    /// and without an ONNX export is refused here, naming it.
    pub fn open(path: &Path) -> Result<Source, ExportError> {
        let dir = if path.is_dir() {
            path.to_owned()
        } else if path.is_file() {
            path.parent().unwrap_or(Path::new(".")).to_owned()
        } else {
            return Err(ExportError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            });
        };
        let config_file = dir.join("config.json");
        let config = ModelConfig::read(&config_file)?;
        let model_file = if path.is_dir() {
            let weights = ["model.safetensors", "pytorch_model.bin"].map(|f| path.join(f));
            let onnx = path.join("model.onnx");
            let found = weights.iter().find(|p| p.is_file());
            match found {
                Some(weights) if architecture::is_native(&config) || !onnx.is_file() => weights.clone(),
                _ if onnx.is_file() => onnx,
                _ => return Err(ExportError::NoCheckpoint { path: path.to_owned() }),
            }
        } else {
            path.to_owned()
        };
        let format = match model_file.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => SourceFormat::Safetensors,
            Some("bin" | "pt" | "pth") => SourceFormat::Pytorch,
            Some("onnx") => SourceFormat::Onnx,
            _ => return Err(ExportError::NoCheckpoint { path: path.to_owned() }),
        };
        if format != SourceFormat::Onnx && !architecture::is_native(&config) {
            return Err(architecture::unsupported(&config, &config_file));
        }
        let preprocessor_path = dir.join("preprocessor_config.json");
        let processor = ImageProcessor::read(&preprocessor_path, &config.raw, &config_file)?;
        let preprocessor_file = preprocessor_path.is_file().then_some(preprocessor_path);
        Ok(Source { format, model_file, config_file, preprocessor_file, config, processor })
    }

    /// The preprocessing spec for an artifact built from this source.
    pub fn preprocess_spec(&self, resize: ResizeMode) -> Result<PreprocessSpec, ExportError> {
        self.processor.spec(resize)
    }

    /// Builds the f32 classifier graph: fused (`u8` pixels in) or reference (`pixel_values` in).
    pub fn graph(&self, spec: &PreprocessSpec, input: GraphInput) -> Result<TypedModel, ExportError> {
        self.graph_in(spec, input, Precision::F32)
    }

    /// Builds the classifier graph with its heavy layers in `precision`, for images prepared by `spec`.
    pub fn graph_in(
        &self,
        spec: &PreprocessSpec,
        input: GraphInput,
        precision: Precision,
    ) -> Result<TypedModel, ExportError> {
        let (height, width) = self.input_size(spec)?;
        let size = InputSize { height: height as usize, width: width as usize };
        let architecture = self.architecture(size)?;
        let name = match self.format {
            SourceFormat::Onnx => "this ONNX model".to_owned(),
            _ => self.config.architecture(),
        };
        architecture::check_precision(architecture.as_ref(), &name, precision)?;
        wire(architecture.as_ref(), spec, size, input, precision).map_err(|e| {
            match e.downcast::<ExportError>() {
                Ok(export) => export,
                Err(other) => ExportError::Graph(format!("{other:?}")),
            }
        })
    }

    /// The graph's input size (height, width): what `spec`'s steps produce.
    pub fn input_size(&self, spec: &PreprocessSpec) -> Result<(u32, u32), ExportError> {
        spec.output_size().ok_or_else(|| ExportError::InvalidConfig {
            path: self.preprocessor_file.clone().unwrap_or_else(|| self.config_file.clone()),
            reason: "resizes by shortest edge without a crop: images of different shapes would give \
                     tensors of different sizes, and the graph takes one"
                .into(),
        })
    }

    fn architecture(&self, size: InputSize) -> Result<Box<dyn Architecture>, ExportError> {
        let weights = match self.format {
            SourceFormat::Onnx => return architecture::onnx::open(&self.model_file, size),
            SourceFormat::Safetensors => weights::Weights::safetensors(&self.model_file)?,
            SourceFormat::Pytorch => weights::Weights::pytorch(&self.model_file)?,
        };
        architecture::open_native(&self.config, &self.config_file, weights, size)
    }
}

/// The whole classifier: the input, the architecture's logits, the classification outputs.
fn wire(
    architecture: &dyn Architecture,
    spec: &PreprocessSpec,
    size: InputSize,
    input: GraphInput,
    precision: Precision,
) -> TractResult<TypedModel> {
    let mut g = architecture.graph();
    let n = g.batch();
    let (h, w) = (size.height.to_dim(), size.width.to_dim());
    let pixel_values = match input {
        GraphInput::Pixels => {
            let image = g.model.add_source("image", u8::fact(tvec!(n, h, w, 3.to_dim())))?;
            g.pixel_values(image, spec)?
        }
        GraphInput::PixelValues => {
            g.model.add_source("pixel_values", f32::fact(tvec!(n, 3.to_dim(), h, w)))?
        }
    };
    let logits = architecture.logits(&mut g, pixel_values, precision)?;
    g.classification_outputs(logits)
}

#[cfg(test)]
mod tests {
    use tract_core::prelude::*;

    use super::*;
    use crate::architecture::reference::{CheckError, LOGIT_TOLERANCE, fixtures, reference_images};

    /// Runs the whole `Source` path's reference graph (`pixel_values` in) of `model_file` on every
    /// reference image and compares the logits with PyTorch's.
    fn check_logits(reference: &str, model_file: &str) -> Result<f32, CheckError> {
        let source = Source::open(&fixtures().join(model_file))?;
        let spec = source.preprocess_spec(ResizeMode::Pil)?;
        let plan = source.graph(&spec, GraphInput::PixelValues)?.into_optimized()?.into_runnable()?;
        let mut worst = 0f32;
        for image in reference_images(reference)? {
            let outputs = plan.run(tvec!(image.pixel_values.into_tvalue()))?;
            let logits = outputs[2].to_plain_array_view::<f32>()?;
            assert_eq!(logits.len(), image.logits.len(), "{}: class count", image.image);
            worst = logits.iter().zip(&image.logits).fold(worst, |m, (got, want)| m.max((got - want).abs()));
        }
        eprintln!("{reference} {model_file}: max |logit diff| {worst:.2e}");
        assert!(worst <= LOGIT_TOLERANCE, "{model_file}: max |logit diff| {worst} > {LOGIT_TOLERANCE}");
        Ok(worst)
    }

    #[test]
    fn every_source_form_reproduces_pytorch_logits() -> Result<(), CheckError> {
        for file in ["model.safetensors", "pytorch_model.bin", "model.onnx"] {
            check_logits("tiny-vit", &format!("models/tiny-vit/{file}"))?;
        }
        for file in ["model.safetensors", "pytorch_model.bin"] {
            check_logits("odd-vit", &format!("models/odd-vit/{file}"))?;
        }
        Ok(())
    }
}
