//! The model families kiln builds graphs for, behind one interface.
//!
//! Every [`Architecture`] turns `pixel_values: f32[N, 3, H, W]` (exactly what the Hugging Face model
//! takes) into `logits: f32[N, classes]`; the step from the runtime's `u8` image to `pixel_values`
//! ([`GraphWiring::pixel_values`]) and the classification outputs after the logits are written once,
//! around it. Native architectures are chosen by `config.json`'s `architectures[0]` and read the
//! checkpoint's weights, each family a [`native::NativeConfig`]; [`onnx`] takes any ONNX image
//! classifier tract can run.

pub mod beit;
pub mod convnext;
mod defaults;
pub mod deit;
pub mod dinov2;
mod encoder;
mod native;
pub mod onnx;
#[cfg(test)]
pub mod reference;
mod resample;
pub mod resnet;
pub mod swin;
pub mod vit;

use std::path::Path;

use tract_core::internal::*;

use crate::config::ModelConfig;
use crate::graph::GraphWiring;
use crate::weights::Weights;
use crate::{ExportError, Precision};

/// The graph's input size in pixels, as the image processor produces it (the processor wins over the
/// model config's `image_size`, as in transformers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSize {
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

/// One image-classification model family.
pub trait Architecture {
    /// The precisions [`Architecture::logits`] can build (always [`Precision::F32`]).
    fn precisions(&self) -> &'static [Precision];

    /// An empty graph to wire into; an imported graph brings its own symbols (the batch).
    fn graph(&self) -> GraphWiring {
        GraphWiring::new()
    }

    /// Wires the model from `pixel_values` (`f32[N, 3, H, W]`) to its logits (`f32[N, classes]`).
    fn logits(
        &self,
        g: &mut GraphWiring,
        pixel_values: OutletId,
        precision: Precision,
    ) -> TractResult<OutletId>;
}

/// Builds a native architecture from its config and weights for one input size.
type OpenNative = fn(&ModelConfig, &Path, Weights, InputSize) -> Result<Box<dyn Architecture>, ExportError>;

/// The architectures kiln imports from weights, by `config.json`'s `architectures[0]`.
const NATIVE: &[(&str, OpenNative)] = &[
    ("ViTForImageClassification", native::open::<vit::VitConfig>),
    ("DeiTForImageClassification", native::open::<deit::DeitClsConfig>),
    ("DeiTForImageClassificationWithTeacher", native::open::<deit::DeitWithTeacherConfig>),
    ("BeitForImageClassification", native::open::<beit::BeitConfig>),
    ("Dinov2ForImageClassification", native::open::<dinov2::Dinov2Config>),
    ("SwinForImageClassification", native::open::<swin::SwinConfig>),
    ("ConvNextForImageClassification", native::open::<convnext::ConvNextV1Config>),
    ("ConvNextV2ForImageClassification", native::open::<convnext::ConvNextV2Config>),
    ("ResNetForImageClassification", native::open::<resnet::ResNetConfig>),
];

/// Whether `config` names an architecture kiln builds from weights.
pub fn is_native(config: &ModelConfig) -> bool {
    native(config).is_some()
}

fn native(config: &ModelConfig) -> Option<OpenNative> {
    let name = config.architectures.first()?;
    NATIVE.iter().find(|(native, _)| native == name).map(|(_, open)| *open)
}

/// Opens the native architecture `config` names, reading `weights` (from `config_path`'s checkpoint).
pub fn open_native(
    config: &ModelConfig,
    config_path: &Path,
    weights: Weights,
    input: InputSize,
) -> Result<Box<dyn Architecture>, ExportError> {
    let open = native(config).ok_or_else(|| unsupported(config, config_path))?;
    open(config, config_path, weights, input)
}

/// The error for an architecture without a native importer: what it is and the route that works.
pub fn unsupported(config: &ModelConfig, config_path: &Path) -> ExportError {
    let natives: Vec<&str> = NATIVE.iter().map(|(name, _)| *name).collect();
    ExportError::UnsupportedArchitecture {
        path: config_path.to_owned(),
        architecture: config.architecture(),
        natives: natives.join(", "),
    }
}

/// Refuses `precision` where `architecture` (named `name`) cannot build it.
pub fn check_precision(
    architecture: &dyn Architecture,
    name: &str,
    precision: Precision,
) -> Result<(), ExportError> {
    if architecture.precisions().contains(&precision) {
        return Ok(());
    }
    let offered: Vec<&str> = architecture.precisions().iter().map(|p| p.name()).collect();
    Err(ExportError::UnsupportedPrecision {
        architecture: name.to_owned(),
        precision: precision.name(),
        offered: offered.join(", "),
    })
}
