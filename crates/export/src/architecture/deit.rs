//! DeiT (`DeiTForImageClassification`, `DeiTForImageClassificationWithTeacher`): a ViT encoder (same config
//! keys, [`VitConfig`]) with a distillation token after the CLS token. The plain classifier reads the CLS
//! token; the distilled one averages a CLS head and a distillation head, as transformers does at inference.

use serde::Deserialize;
use tract_core::internal::*;
use tract_core::ops;

use super::InputSize;
use super::encoder::token;
use super::native::{Native, NativeConfig};
use super::vit::VitConfig;
use crate::Precision;
use crate::graph::{Activation, GraphWiring};

/// DeiT's hyper-parameters: ViT's keys ([`VitConfig`]), for the head `WITH_TEACHER` chooses (a parameter
/// of the type, so that each head is its own registry entry).
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct DeitConfig<const WITH_TEACHER: bool>(VitConfig);

/// `DeiTForImageClassification`: `classifier` on the CLS token.
pub type DeitClsConfig = DeitConfig<false>;

/// `DeiTForImageClassificationWithTeacher`: `(cls_classifier(CLS) + distillation_classifier(distillation
/// token)) / 2`.
pub type DeitWithTeacherConfig = DeitConfig<true>;

impl<const WITH_TEACHER: bool> NativeConfig for DeitConfig<WITH_TEACHER> {
    type Checked = Activation;

    const PRECISIONS: &'static [Precision] = VitConfig::PRECISIONS;

    fn validate(&self, input: InputSize) -> Result<Activation, String> {
        self.0.validate(input)
    }

    fn logits(
        model: &Native<Self>,
        g: &mut GraphWiring,
        pixel_values: OutletId,
        precision: Precision,
    ) -> TractResult<OutletId> {
        let (config, weights) = (&model.config.0, &model.weights);
        let d = config.hidden_size;
        let special = ["cls_token", "distillation_token"];
        let mut x = config.embed(g, weights, "deit", &special, model.input, pixel_values)?;

        let encoder = config.encoder(weights, "deit.encoder.layer", model.checked, precision);
        for layer in 0..config.num_hidden_layers {
            x = encoder.layer(g, layer, x, None)?;
        }

        let norm = |g: &mut GraphWiring, name: &str, x: OutletId| {
            let gamma = weights.get("deit.layernorm.weight", &[d])?;
            let beta = weights.get("deit.layernorm.bias", &[d])?;
            g.layer_norm(name, x, gamma, beta, config.layer_norm_eps as f32)
        };
        let classifier = |g: &mut GraphWiring, name: &str, x: OutletId, prefix: &str| {
            let weight = weights.get(&format!("{prefix}.weight"), &[model.classes, d])?;
            let bias = weights.get(&format!("{prefix}.bias"), &[model.classes])?;
            g.linear(name, x, weight, Some(bias))
        };
        // Layer norm is per token, so normalizing the read tokens alone is exact and skips the rest.
        let cls = token(g, "head.cls", x, 0)?;
        let cls = norm(g, "head.cls_ln", cls)?;
        if !WITH_TEACHER {
            return classifier(g, "head.classifier", cls, "classifier");
        }
        let distillation = token(g, "head.distillation", x, 1)?;
        let distillation = norm(g, "head.distillation_ln", distillation)?;
        let cls = classifier(g, "head.cls_classifier", cls, "cls_classifier")?;
        let distillation =
            classifier(g, "head.distillation_classifier", distillation, "distillation_classifier")?;
        let sum = g.binary("head.sum", ops::math::add(), cls, distillation)?;
        g.binary_scalar("head.mean", ops::math::mul(), sum, 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::super::native::open;
    use super::super::reference::{CheckError, LOGIT_TOLERANCE, check_f32_logits, check_int8_top1, fixtures};
    use super::*;
    use crate::config::ModelConfig;
    use crate::weights::Weights;

    /// transformers' DeiT raises on an input size other than `image_size` (its pipeline never asks it to
    /// interpolate): a processor producing another size is refused, naming both sizes.
    #[test]
    fn another_input_size_is_refused() -> Result<(), CheckError> {
        let dir = fixtures().join("models/tiny-deit");
        let config_path = dir.join("config.json");
        let config = ModelConfig::read(&config_path)?;
        let weights = Weights::safetensors(&dir.join("model.safetensors"))?;
        let input = InputSize { height: 48, width: 40 };
        let Err(error) = open::<DeitWithTeacherConfig>(&config, &config_path, weights, input) else {
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
