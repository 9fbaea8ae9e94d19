//! The ViT image classifier as a tract graph, built from `config.json` and the checkpoint's weights.
//!
//! Mirrors transformers' `ViTForImageClassification` (pre-norm encoder, CLS-token head). Nothing about a
//! particular size is assumed: every dimension comes from [`VitConfig`].

use serde::Deserialize;
use tract_core::internal::*;

use super::InputSize;
use super::encoder::{
    Dimensions, Encoder, FeedForward, LayerNames, PatchEmbedding, QkvBias, require_image_size, token,
};
use super::native::{Native, NativeConfig};
use crate::Precision;
use crate::architecture::defaults;
use crate::graph::{Activation, GraphWiring};
use crate::weights::Weights;

/// The architecture hyper-parameters of a ViT (or DeiT: same keys, same defaults) checkpoint; every field
/// comes from `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct VitConfig {
    /// Square input side in pixels.
    #[serde(default = "defaults::count::<224>")]
    pub image_size: usize,
    /// Square patch side in pixels.
    #[serde(default = "defaults::count::<16>")]
    pub patch_size: usize,
    /// Input channels; only 3 (RGB) is supported.
    #[serde(default = "defaults::count::<3>")]
    pub num_channels: usize,
    /// Token width.
    #[serde(default = "defaults::count::<768>")]
    pub hidden_size: usize,
    /// Encoder layers.
    #[serde(default = "defaults::count::<12>")]
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    #[serde(default = "defaults::count::<12>")]
    pub num_attention_heads: usize,
    /// MLP width.
    #[serde(default = "defaults::count::<3072>")]
    pub intermediate_size: usize,
    /// MLP activation name, as in transformers' `ACT2FN`.
    #[serde(default = "defaults::gelu")]
    pub hidden_act: String,
    /// Layer-norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Whether query/key/value projections carry a bias.
    #[serde(default = "defaults::on")]
    pub qkv_bias: bool,
}

fn default_eps() -> f64 {
    1e-12
}

impl VitConfig {
    fn dimensions(&self) -> Dimensions {
        Dimensions {
            channels: self.num_channels,
            patch: self.patch_size,
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
        }
    }

    /// Patch tokens.
    pub fn tokens(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// The embedded tokens `[N, special + patches, hidden]` of the checkpoint's `{model}.embeddings`: its
    /// `special` tokens (`cls_token`, DeiT's `distillation_token`) first, each plus its position embedding,
    /// then the patches.
    pub fn embed(
        &self,
        g: &mut GraphWiring,
        weights: &Weights,
        model: &str,
        special: &[&str],
        input: InputSize,
        pixel_values: OutletId,
    ) -> TractResult<OutletId> {
        let d = self.hidden_size;
        let at = |name: &str| format!("{model}.embeddings.{name}");
        let patches = PatchEmbedding::read(weights, &at("patch_embeddings.projection"), d, self.patch_size)?;
        let mut positions =
            weights.values(&at("position_embeddings"), &[1, special.len() + self.tokens(), d])?;
        let patch_positions = positions.split_off(special.len() * d);
        let mut rows = vec![];
        for (name, position) in special.iter().zip(positions.chunks_exact(d)) {
            let mut row = weights.values(&at(name), &[1, 1, d])?;
            row.iter_mut().zip(position).for_each(|(t, p)| *t += p);
            rows.push(row);
        }
        patches.embed(g, pixel_values, input, &rows, Some(&patch_positions))
    }

    /// The encoder whose layers live under `prefix` (`vit.encoder.layer`, `deit.encoder.layer`).
    pub fn encoder<'a>(
        &self,
        weights: &'a Weights,
        prefix: &'a str,
        activation: Activation,
        precision: Precision,
    ) -> Encoder<'a> {
        Encoder {
            weights,
            prefix,
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            eps: self.layer_norm_eps as f32,
            qkv_bias: if self.qkv_bias { QkvBias::All } else { QkvBias::Neither },
            names: LayerNames::VIT,
            feed_forward: FeedForward::vit_mlp(self.intermediate_size, activation),
            precision,
        }
    }
}

/// `ViTForImageClassification`.
impl NativeConfig for VitConfig {
    type Checked = Activation;

    const PRECISIONS: &'static [Precision] = &[Precision::F32, Precision::Int8, Precision::Bf16];

    /// `input` must be `image_size` square: ViT and DeiT do not interpolate positions in transformers'
    /// pipeline.
    fn validate(&self, input: InputSize) -> Result<Activation, String> {
        self.dimensions().validate(input)?;
        require_image_size(self.image_size, input)?;
        Activation::from_hidden_act(&self.hidden_act)
    }

    fn logits(
        model: &Native<Self>,
        g: &mut GraphWiring,
        pixel_values: OutletId,
        precision: Precision,
    ) -> TractResult<OutletId> {
        let (config, weights) = (&model.config, &model.weights);
        let d = config.hidden_size;
        let mut x = config.embed(g, weights, "vit", &["cls_token"], model.input, pixel_values)?;

        let encoder = config.encoder(weights, "vit.encoder.layer", model.checked, precision);
        for layer in 0..config.num_hidden_layers {
            x = encoder.layer(g, layer, x, None)?;
        }

        // Layer norm is per token, so normalizing the CLS token alone is exact and skips the rest.
        let cls = token(g, "head.cls", x, 0)?;
        let eps = config.layer_norm_eps as f32;
        let cls = g.layer_norm(
            "head.ln",
            cls,
            weights.get("vit.layernorm.weight", &[d])?,
            weights.get("vit.layernorm.bias", &[d])?,
            eps,
        )?;
        g.linear(
            "head.classifier",
            cls,
            weights.get("classifier.weight", &[model.classes, d])?,
            Some(weights.get("classifier.bias", &[model.classes])?),
        )
    }
}
