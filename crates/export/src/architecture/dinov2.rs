//! DINOv2 (`Dinov2ForImageClassification`): a pre-norm ViT encoder with layer scale and an MLP or SwiGLU
//! feed-forward block, classified from the CLS token next to the mean of the patch tokens.
//!
//! transformers' DINOv2 resizes its position embeddings to every input's patch grid (bicubic, as
//! `Dinov2Embeddings.interpolate_pos_encoding`); here that happens once, at export, for the processor's size.

use serde::Deserialize;
use tract_core::internal::*;
use tract_core::ops::array::TypedConcat;

use super::InputSize;
use super::encoder::{
    Dimensions, Encoder, FeedForward, LayerNames, PatchEmbedding, QkvBias, mean_of_tokens, patch_grid, token,
};
use super::native::{Native, NativeConfig};
use super::resample::{Grid, bicubic};
use crate::Precision;
use crate::architecture::defaults;
use crate::graph::{Activation, GraphWiring};

/// The architecture hyper-parameters of a DINOv2 checkpoint; every field comes from `config.json`,
/// defaults as transformers' `Dinov2Config`.
#[derive(Debug, Clone, Deserialize)]
pub struct Dinov2Config {
    #[serde(default = "defaults::count::<224>")]
    image_size: usize,
    #[serde(default = "defaults::count::<14>")]
    patch_size: usize,
    #[serde(default = "defaults::count::<3>")]
    num_channels: usize,
    #[serde(default = "defaults::count::<768>")]
    hidden_size: usize,
    #[serde(default = "defaults::count::<12>")]
    num_hidden_layers: usize,
    #[serde(default = "defaults::count::<12>")]
    num_attention_heads: usize,
    /// The MLP is `int(hidden_size * mlp_ratio)` wide.
    #[serde(default = "default_mlp_ratio")]
    mlp_ratio: f64,
    #[serde(default = "defaults::gelu")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "defaults::on")]
    qkv_bias: bool,
    #[serde(default)]
    use_swiglu_ffn: bool,
}

fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_eps() -> f64 {
    1e-6
}

impl Dinov2Config {
    /// Patches per side of the checkpoint's own input (the grid its positions were trained for).
    fn side(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// `Dinov2ForImageClassification`.
impl NativeConfig for Dinov2Config {
    type Checked = FeedForward;

    const PRECISIONS: &'static [Precision] = &[Precision::F32, Precision::Int8, Precision::Bf16];

    fn validate(&self, input: InputSize) -> Result<FeedForward, String> {
        Dimensions {
            channels: self.num_channels,
            patch: self.patch_size,
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
        }
        .validate(input)?;
        if self.image_size < self.patch_size {
            return Err(format!("image_size {} is below patch_size {}", self.image_size, self.patch_size));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) {
            return Err(format!("mlp_ratio {} is not a positive number", self.mlp_ratio));
        }
        // Python's int(): truncation toward zero.
        let width = (self.hidden_size as f64 * self.mlp_ratio) as usize;
        if self.use_swiglu_ffn {
            // Dinov2SwiGLUFFN keeps two thirds of the width, rounded up to a multiple of 8.
            let width = ((width as f64 * 2.0 / 3.0) as usize).div_ceil(8) * 8;
            return Ok(FeedForward::SwiGlu { width });
        }
        let activation = Activation::from_hidden_act(&self.hidden_act)?;
        Ok(FeedForward::Mlp { up: "mlp.fc1", down: "mlp.fc2", width, activation })
    }

    fn logits(
        model: &Native<Self>,
        g: &mut GraphWiring,
        pixel_values: OutletId,
        precision: Precision,
    ) -> TractResult<OutletId> {
        let (config, weights) = (&model.config, &model.weights);
        let d = config.hidden_size;
        let side = config.side();
        let patches = PatchEmbedding::read(
            weights,
            "dinov2.embeddings.patch_embeddings.projection",
            d,
            config.patch_size,
        )?;
        let mut positions =
            weights.values("dinov2.embeddings.position_embeddings", &[1, side * side + 1, d])?;
        let patch_positions = positions.split_off(d);
        let mut cls = weights.values("dinov2.embeddings.cls_token", &[1, 1, d])?;
        cls.iter_mut().zip(&positions).for_each(|(c, p)| *c += p);
        // Resizing to the same grid is an exact identity, so this is transformers' "interpolate unless
        // the grid is the checkpoint's" too.
        let checkpoint_grid = Grid { rows: side, cols: side };
        let grid = patch_grid(model.input, config.patch_size);
        let patch_positions = if grid == checkpoint_grid {
            patch_positions
        } else {
            bicubic(&patch_positions, d, checkpoint_grid, grid)
        };
        let mut x = patches.embed(g, pixel_values, model.input, &[cls], Some(&patch_positions))?;

        let encoder = Encoder {
            weights,
            prefix: "dinov2.encoder.layer",
            hidden: d,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps as f32,
            qkv_bias: if config.qkv_bias { QkvBias::All } else { QkvBias::Neither },
            names: LayerNames {
                norm_before: "norm1",
                norm_after: "norm2",
                layer_scale: Some(["layer_scale1.lambda1", "layer_scale2.lambda1"]),
            },
            feed_forward: model.checked,
            precision,
        };
        for layer in 0..config.num_hidden_layers {
            x = encoder.layer(g, layer, x, None)?;
        }

        // The classifier reads concat(CLS, mean of the patch tokens), every token normalized first.
        let x = g.layer_norm(
            "head.ln",
            x,
            weights.get("dinov2.layernorm.weight", &[d])?,
            weights.get("dinov2.layernorm.bias", &[d])?,
            config.layer_norm_eps as f32,
        )?;
        let cls = token(g, "head.cls", x, 0)?;
        let mean = mean_of_tokens(g, "head.mean", x, 1)?;
        let pooled = g.op("head.concat", TypedConcat { axis: 1 }, &[cls, mean])?;
        g.linear(
            "head.classifier",
            pooled,
            weights.get("classifier.weight", &[model.classes, 2 * d])?,
            Some(weights.get("classifier.bias", &[model.classes])?),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::reference::{CheckError, LOGIT_TOLERANCE, check_f32_logits, check_int8_top1};
    use super::*;

    /// SwiGLU widths as `Dinov2SwiGLUFFN` computes them, `int(int(hidden * mlp_ratio) * 2 / 3)` rounded up
    /// to a multiple of 8: DINOv2-giant's 4096, and 90 -> 60 -> 64.
    #[test]
    fn swiglu_keeps_two_thirds_of_the_mlp_rounded_up_to_eight() -> Result<(), CheckError> {
        let config: Dinov2Config = serde_json::from_value(
            serde_json::json!({"hidden_size": 1536, "num_attention_heads": 24, "use_swiglu_ffn": true}),
        )?;
        let feed_forward = config.validate(InputSize { height: 224, width: 224 })?;
        assert!(matches!(feed_forward, FeedForward::SwiGlu { width: 4096 }), "{feed_forward:?}");
        let config = Dinov2Config { hidden_size: 30, num_attention_heads: 6, mlp_ratio: 3.0, ..config };
        let feed_forward = config.validate(InputSize { height: 224, width: 224 })?;
        assert!(matches!(feed_forward, FeedForward::SwiGlu { width: 64 }), "{feed_forward:?}");
        Ok(())
    }

    /// The fixture's processor crops 32x40 from a model trained at 56x56: positions are interpolated.
    #[test]
    fn dinov2_reproduces_pytorch_logits_at_the_processors_size() -> Result<(), CheckError> {
        for file in ["model.safetensors", "pytorch_model.bin"] {
            check_f32_logits("tiny-dinov2", &format!("models/tiny-dinov2/{file}"), LOGIT_TOLERANCE)?;
        }
        check_int8_top1("tiny-dinov2", "models/tiny-dinov2/model.safetensors")?;
        Ok(())
    }
}
