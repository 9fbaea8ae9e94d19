//! BEiT (`BeitForImageClassification`): a pre-norm ViT encoder with relative position biases added to the
//! attention scores (per layer, or one shared by all), layer scale, query and value biases but none on the
//! key, optional absolute positions, and a head on the mean of the patch tokens (or on the CLS token).
//!
//! transformers' BEiT takes any input size: it resizes its absolute positions (bicubic) and its relative
//! bias tables (bilinear) to the input's patch grid on every call. Here that happens once, at export, for
//! the processor's size, and each layer's `[heads, T, T]` bias becomes a constant.

use serde::Deserialize;
use tract_core::internal::*;

use super::InputSize;
use super::encoder::{
    Dimensions, Encoder, FeedForward, LayerNames, PatchEmbedding, QkvBias, mean_of_tokens, patch_grid, token,
};
use super::native::{Native, NativeConfig};
use super::resample::{Grid, bicubic, bilinear};
use crate::architecture::defaults;
use crate::graph::{Activation, GraphWiring};
use crate::weights::Weights;
use crate::{ExportError, Precision};

/// The architecture hyper-parameters of a BEiT checkpoint; every field comes from `config.json`, defaults
/// as transformers' `BeitConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct BeitConfig {
    #[serde(default = "defaults::count::<224>")]
    image_size: usize,
    #[serde(default = "defaults::count::<16>")]
    patch_size: usize,
    #[serde(default = "defaults::count::<3>")]
    num_channels: usize,
    #[serde(default = "defaults::count::<768>")]
    hidden_size: usize,
    #[serde(default = "defaults::count::<12>")]
    num_hidden_layers: usize,
    #[serde(default = "defaults::count::<12>")]
    num_attention_heads: usize,
    #[serde(default = "defaults::count::<3072>")]
    intermediate_size: usize,
    #[serde(default = "defaults::gelu")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    use_absolute_position_embeddings: bool,
    #[serde(default)]
    use_relative_position_bias: bool,
    #[serde(default)]
    use_shared_relative_position_bias: bool,
    /// Layer scale exists (`lambda_1`, `lambda_2`) when this is positive.
    #[serde(default = "default_layer_scale")]
    layer_scale_init_value: f64,
    #[serde(default = "defaults::on")]
    use_mean_pooling: bool,
}

fn default_eps() -> f64 {
    1e-12
}
fn default_layer_scale() -> f64 {
    0.1
}

impl BeitConfig {
    /// Patches per side of the checkpoint's own input (the window its positions and biases were made for).
    fn side(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// `BeitForImageClassification`.
impl NativeConfig for BeitConfig {
    type Checked = Activation;

    const PRECISIONS: &'static [Precision] = &[Precision::F32, Precision::Int8, Precision::Bf16];

    fn validate(&self, input: InputSize) -> Result<Activation, String> {
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
        let side = config.side();
        let grid = patch_grid(model.input, config.patch_size);
        let patches = PatchEmbedding::read(
            weights,
            "beit.embeddings.patch_embeddings.projection",
            d,
            config.patch_size,
        )?;
        let mut cls = weights.values("beit.embeddings.cls_token", &[1, 1, d])?;
        let positions = if config.use_absolute_position_embeddings {
            let mut positions =
                weights.values("beit.embeddings.position_embeddings", &[1, side * side + 1, d])?;
            let patch_positions = positions.split_off(d);
            cls.iter_mut().zip(&positions).for_each(|(c, p)| *c += p);
            let checkpoint_grid = Grid { rows: side, cols: side };
            Some(if grid == checkpoint_grid {
                patch_positions
            } else {
                bicubic(&patch_positions, d, checkpoint_grid, grid)
            })
        } else {
            None
        };
        let mut x = patches.embed(g, pixel_values, model.input, &[cls], positions.as_deref())?;

        let layer_scale = (config.layer_scale_init_value > 0.0).then_some(["lambda_1", "lambda_2"]);
        let encoder = Encoder {
            weights,
            prefix: "beit.encoder.layer",
            hidden: d,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps as f32,
            qkv_bias: QkvBias::QueryValue,
            names: LayerNames { layer_scale, ..LayerNames::VIT },
            feed_forward: FeedForward::vit_mlp(config.intermediate_size, model.checked),
            precision,
        };
        let biases = RelativePositionBias { weights, heads: config.num_attention_heads, side, grid };
        let shared = match config.use_shared_relative_position_bias {
            true => Some(biases.read("beit.encoder.relative_position_bias")?),
            false => None,
        };
        // Without per-layer tables, the shared bias is one constant every layer reads.
        let shared_node = match (&shared, config.use_relative_position_bias) {
            (Some(shared), false) => Some(g.konst("relative_position_bias", biases.tensor(shared)?)?),
            _ => None,
        };
        for layer in 0..config.num_hidden_layers {
            let bias = if config.use_relative_position_bias {
                let mut bias = biases.read(&format!(
                    "beit.encoder.layer.{layer}.attention.attention.relative_position_bias"
                ))?;
                if let Some(shared) = &shared {
                    bias.iter_mut().zip(shared).for_each(|(b, s)| *b += s);
                }
                Some(g.konst(&format!("layer{layer}.attn.relative_position_bias"), biases.tensor(&bias)?)?)
            } else {
                shared_node
            };
            x = encoder.layer(g, layer, x, bias)?;
        }
        model.head(g, x)
    }
}

impl Native<BeitConfig> {
    /// `beit.pooler.layernorm` over the mean of the patch tokens, or `beit.layernorm` over the CLS token,
    /// then the classifier.
    fn head(&self, g: &mut GraphWiring, x: OutletId) -> TractResult<OutletId> {
        let (config, weights) = (&self.config, &self.weights);
        let d = config.hidden_size;
        let (pooled, norm) = if config.use_mean_pooling {
            (mean_of_tokens(g, "head.mean", x, 1)?, "beit.pooler.layernorm")
        } else {
            // Layer norm is per token, so normalizing the CLS token alone is exact and skips the rest.
            (token(g, "head.cls", x, 0)?, "beit.layernorm")
        };
        let pooled = g.layer_norm(
            "head.ln",
            pooled,
            weights.get(&format!("{norm}.weight"), &[d])?,
            weights.get(&format!("{norm}.bias"), &[d])?,
            config.layer_norm_eps as f32,
        )?;
        g.linear(
            "head.classifier",
            pooled,
            weights.get("classifier.weight", &[self.classes, d])?,
            Some(weights.get("classifier.bias", &[self.classes])?),
        )
    }
}

/// transformers' `BeitRelativePositionBias` for one patch grid.
struct RelativePositionBias<'a> {
    weights: &'a Weights,
    heads: usize,
    /// Patches per side of the checkpoint's input.
    side: usize,
    /// The input's patch grid.
    grid: Grid,
}

impl RelativePositionBias<'_> {
    /// The `[heads, T, T]` bias from the table at `{prefix}.relative_position_bias_table`.
    fn read(&self, prefix: &str) -> Result<Vec<f32>, ExportError> {
        let span = 2 * self.side - 1;
        let table = self
            .weights
            .values(&format!("{prefix}.relative_position_bias_table"), &[span * span + 3, self.heads])?;
        Ok(relative_position_bias(table, self.heads, self.side, self.grid))
    }

    /// A bias as a `[heads, T, T]` constant.
    fn tensor(&self, bias: &[f32]) -> TractResult<Tensor> {
        let tokens = self.grid.rows * self.grid.cols + 1;
        Tensor::from_shape(&[self.heads, tokens, tokens], bias)
    }
}

/// The `[heads, T, T]` bias (`T` = patches + CLS) a `[(2 side - 1)^2 + 3, heads]` table gives on `grid`:
/// the relative-offset rows resized (bilinear) from `(2 side - 1)^2` to `(2 rows - 1, 2 cols - 1)`, the
/// three CLS rows kept, then gathered by transformers' `generate_relative_position_index`.
fn relative_position_bias(mut table: Vec<f32>, heads: usize, side: usize, grid: Grid) -> Vec<f32> {
    let span = 2 * side - 1;
    let cls_rows = table.split_off(span * span * heads);
    let Grid { rows, cols } = grid;
    let offsets = Grid { rows: 2 * rows - 1, cols: 2 * cols - 1 };
    let mut table = bilinear(&table, heads, Grid { rows: span, cols: span }, offsets);
    table.extend(cls_rows);

    let first_cls_row = offsets.rows * offsets.cols;
    let index = |i: usize, j: usize| -> usize {
        match (i, j) {
            (0, 0) => first_cls_row + 2,
            (0, _) => first_cls_row,
            (_, 0) => first_cls_row + 1,
            _ => {
                let (ri, ci) = ((i - 1) / cols, (i - 1) % cols);
                let (rj, cj) = ((j - 1) / cols, (j - 1) % cols);
                (ri + rows - 1 - rj) * offsets.cols + (ci + cols - 1 - cj)
            }
        }
    };
    let tokens = rows * cols + 1;
    let mut bias = vec![0f32; heads * tokens * tokens];
    for i in 0..tokens {
        for j in 0..tokens {
            let row = &table[index(i, j) * heads..][..heads];
            for (h, value) in row.iter().enumerate() {
                bias[(h * tokens + i) * tokens + j] = *value;
            }
        }
    }
    bias
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::super::reference::{CheckError, LOGIT_TOLERANCE, check_f32_logits, check_int8_top1};
    use super::*;

    #[derive(Deserialize)]
    struct BiasCase {
        heads: usize,
        side: usize,
        grid: [usize; 2],
        bias: Vec<f32>,
    }

    #[derive(Deserialize)]
    struct BiasCases {
        cases: Vec<BiasCase>,
    }

    /// transformers' `BeitRelativePositionBias` on the checkpoint's grid and on others (the table resized),
    /// as recorded by `testdata/generate.py`, bit for bit.
    #[test]
    fn relative_position_bias_matches_transformers() -> Result<(), CheckError> {
        let document: BiasCases =
            serde_json::from_str(include_str!("testdata/beit_relative_position_bias.json"))?;
        for case in document.cases {
            let span = 2 * case.side - 1;
            let table =
                (0..(span * span + 3) * case.heads).map(|i| ((i * 37) % 256) as f32 / 64.0 - 2.0).collect();
            let grid = Grid { rows: case.grid[0], cols: case.grid[1] };
            let bias = relative_position_bias(table, case.heads, case.side, grid);
            assert_eq!(bias.len(), case.bias.len(), "{grid:?}");
            let same = bias.iter().zip(&case.bias).all(|(got, want)| got.to_bits() == want.to_bits());
            assert!(same, "{} heads, side {}, {grid:?}: the bias differs", case.heads, case.side);
        }
        Ok(())
    }

    #[test]
    fn beit_reproduces_pytorch_logits() -> Result<(), CheckError> {
        for file in ["model.safetensors", "pytorch_model.bin"] {
            check_f32_logits("tiny-beit", &format!("models/tiny-beit/{file}"), LOGIT_TOLERANCE)?;
        }
        check_int8_top1("tiny-beit", "models/tiny-beit/model.safetensors")?;
        Ok(())
    }
}
