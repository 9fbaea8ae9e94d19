//! DeiT (`DeiTForImageClassification`, `DeiTForImageClassificationWithTeacher`): a ViT encoder (same config
//! keys, [`VitConfig`]) with a distillation token after the CLS token. The plain classifier reads the CLS
//! token; the distilled one averages a CLS head and a distillation head, as transformers does at inference.

use std::path::Path;

use tract_core::internal::*;
use tract_core::ops;

use super::encoder::token;
use super::vit::VitConfig;
use super::{Architecture, InputSize};
use crate::config::ModelConfig;
use crate::graph::{Activation, GraphWiring};
use crate::weights::Weights;
use crate::{ExportError, Precision};

/// Which classification head the checkpoint has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// `classifier` on the CLS token.
    Cls,
    /// `(cls_classifier(CLS) + distillation_classifier(distillation token)) / 2`.
    WithTeacher,
}

/// A DeiT classifier with its weights.
struct Deit {
    config: VitConfig,
    activation: Activation,
    head: Head,
    input: InputSize,
    classes: usize,
    weights: Weights,
}

/// Opens `DeiTForImageClassification`.
pub fn open(
    config: &ModelConfig,
    config_path: &Path,
    weights: Weights,
    input: InputSize,
) -> Result<Box<dyn Architecture>, ExportError> {
    open_with(config, config_path, weights, input, Head::Cls)
}

/// Opens `DeiTForImageClassificationWithTeacher`.
pub fn open_with_teacher(
    config: &ModelConfig,
    config_path: &Path,
    weights: Weights,
    input: InputSize,
) -> Result<Box<dyn Architecture>, ExportError> {
    open_with(config, config_path, weights, input, Head::WithTeacher)
}

fn open_with(
    config: &ModelConfig,
    config_path: &Path,
    weights: Weights,
    input: InputSize,
    head: Head,
) -> Result<Box<dyn Architecture>, ExportError> {
    let deit: VitConfig = config.parse(config_path)?;
    let activation = deit
        .validate(input)
        .map_err(|reason| ExportError::InvalidConfig { path: config_path.to_owned(), reason })?;
    Ok(Box::new(Deit { config: deit, activation, head, input, classes: config.id2label.len(), weights }))
}

impl Architecture for Deit {
    fn precisions(&self) -> &'static [Precision] {
        &[Precision::F32, Precision::Int8]
    }

    fn logits(
        &self,
        g: &mut GraphWiring,
        pixel_values: OutletId,
        precision: Precision,
    ) -> TractResult<OutletId> {
        let (config, weights) = (&self.config, &self.weights);
        let d = config.hidden_size;
        let special = ["cls_token", "distillation_token"];
        let mut x = config.embed(g, weights, "deit", &special, self.input, pixel_values)?;

        let encoder = config.encoder(weights, "deit.encoder.layer", self.activation, precision);
        for layer in 0..config.num_hidden_layers {
            x = encoder.layer(g, layer, x, None)?;
        }

        let norm = |g: &mut GraphWiring, name: &str, x: OutletId| {
            let gamma = weights.get("deit.layernorm.weight", &[d])?;
            let beta = weights.get("deit.layernorm.bias", &[d])?;
            g.layer_norm(name, x, gamma, beta, config.layer_norm_eps as f32)
        };
        let classifier = |g: &mut GraphWiring, name: &str, x: OutletId, prefix: &str| {
            let weight = weights.get(&format!("{prefix}.weight"), &[self.classes, d])?;
            let bias = weights.get(&format!("{prefix}.bias"), &[self.classes])?;
            g.linear(name, x, weight, Some(bias))
        };
        // Layer norm is per token, so normalizing the read tokens alone is exact and skips the rest.
        let cls = token(g, "head.cls", x, 0)?;
        let cls = norm(g, "head.cls_ln", cls)?;
        match self.head {
            Head::Cls => classifier(g, "head.classifier", cls, "classifier"),
            Head::WithTeacher => {
                let distillation = token(g, "head.distillation", x, 1)?;
                let distillation = norm(g, "head.distillation_ln", distillation)?;
                let cls = classifier(g, "head.cls_classifier", cls, "cls_classifier")?;
                let distillation =
                    classifier(g, "head.distillation_classifier", distillation, "distillation_classifier")?;
                let sum = g.binary("head.sum", ops::math::add(), cls, distillation)?;
                g.binary_scalar("head.mean", ops::math::mul(), sum, 0.5)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::reference::{CheckError, LOGIT_TOLERANCE, check_f32_logits, check_int8_top1, fixtures};
    use super::*;

    /// transformers' DeiT raises on an input size other than `image_size` (its pipeline never asks it to
    /// interpolate): a processor producing another size is refused, naming both sizes.
    #[test]
    fn another_input_size_is_refused() -> Result<(), CheckError> {
        let dir = fixtures().join("models/tiny-deit");
        let config = ModelConfig::read(&dir.join("config.json"))?;
        let weights = Weights::safetensors(&dir.join("model.safetensors"))?;
        let input = InputSize { height: 48, width: 40 };
        let Err(error) = open_with_teacher(&config, &dir.join("config.json"), weights, input) else {
            return Err("a 48x40 input was accepted for a 40x40 DeiT".into());
        };
        let message = error.to_string();
        assert!(message.contains("48x40") && message.contains("image_size is 40"), "{message}");
        Ok(())
    }

    #[test]
    fn distilled_deit_reproduces_pytorch_logits() -> Result<(), CheckError> {
        for file in ["model.safetensors", "pytorch_model.bin"] {
            check_f32_logits("tiny-deit", &format!("models/tiny-deit/{file}"), LOGIT_TOLERANCE)?;
        }
        check_int8_top1("tiny-deit", "models/tiny-deit/model.safetensors")?;
        Ok(())
    }
}
