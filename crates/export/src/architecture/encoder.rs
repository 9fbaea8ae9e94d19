//! What the ViT family (ViT, DeiT, BEiT, DINOv2) shares, written once over each member's parameter names:
//! the patch embedding with its special tokens and positions, and the pre-norm encoder layer (attention,
//! feed-forward, optional layer scale). Each member's module keeps what is its own: its config, its
//! positions and attention biases, and its head.

use tract_core::internal::*;
use tract_core::ops;
use tract_core::ops::array::{Pad, PadMode, Slice};
use tract_core::ops::nn::Reducer;

use super::InputSize;
use super::resample::Grid;
use crate::graph::{Activation, GraphWiring, dims};
use crate::weights::Weights;
use crate::{ExportError, Precision};

/// The hyper-parameters every member's config checks the same way.
pub struct Dimensions {
    /// `num_channels`.
    pub channels: usize,
    /// `patch_size`.
    pub patch: usize,
    /// `hidden_size`.
    pub hidden: usize,
    /// `num_attention_heads`.
    pub heads: usize,
}

impl Dimensions {
    /// Refuses what no member can build, saying which field is wrong.
    pub fn validate(&self, input: InputSize) -> Result<(), String> {
        if self.channels != 3 {
            return Err(format!("num_channels is {}, only 3 (RGB) is supported", self.channels));
        }
        if self.patch == 0 || input.height < self.patch || input.width < self.patch {
            return Err(format!(
                "patch_size {} does not fit the processor's {}x{} images",
                self.patch, input.height, input.width
            ));
        }
        if self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden, self.heads
            ));
        }
        Ok(())
    }
}

/// Refuses an input size other than the checkpoint's for a member that cannot interpolate its positions
/// (transformers raises there unless asked to interpolate, which its pipeline never does).
pub fn require_image_size(image_size: usize, input: InputSize) -> Result<(), String> {
    if (input.height, input.width) == (image_size, image_size) {
        return Ok(());
    }
    Err(format!(
        "the image processor produces {}x{} images but the model's image_size is {image_size}, and \
         transformers does not interpolate this model's position embeddings",
        input.height, input.width
    ))
}

/// The patch grid the strided patch convolution gives for `input` (pixels past the last whole patch are
/// dropped, as the convolution drops them).
pub fn patch_grid(input: InputSize, patch: usize) -> Grid {
    Grid { rows: input.height / patch, cols: input.width / patch }
}

/// The patch convolution (kernel = stride = `patch`) as one matrix product over flattened patches.
pub struct PatchEmbedding {
    /// `[hidden, p*p*3]` over `(row, col, channel)`-ordered patch pixels.
    weight: Tensor,
    /// `[hidden]`, added through the token table.
    bias: Vec<f32>,
    patch: usize,
    hidden: usize,
}

impl PatchEmbedding {
    /// Reads `{prefix}.weight` (`[hidden, 3, p, p]`) and `{prefix}.bias`, moving the kernel's channel axis
    /// last to match patches cut from `[N, 3, H, W]` without a transpose per image.
    pub fn read(
        weights: &Weights,
        prefix: &str,
        hidden: usize,
        patch: usize,
    ) -> Result<PatchEmbedding, ExportError> {
        let p = patch;
        let conv = weights.values(&format!("{prefix}.weight"), &[hidden, 3, p, p])?;
        let bias = weights.values(&format!("{prefix}.bias"), &[hidden])?;
        let mut reordered = vec![0f32; hidden * p * p * 3];
        for o in 0..hidden {
            for c in 0..3 {
                for i in 0..p {
                    for j in 0..p {
                        reordered[((o * p + i) * p + j) * 3 + c] = conv[((o * 3 + c) * p + i) * p + j];
                    }
                }
            }
        }
        let weight = Tensor::from_shape(&[hidden, p * p * 3], &reordered)
            .map_err(|e| ExportError::Graph(format!("{prefix}.weight: {e}")))?;
        Ok(PatchEmbedding { weight, bias, patch, hidden })
    }

    /// `[N, 3, H, W]` -> `[N, rows * cols, hidden]`, without the bias.
    fn wire(&self, g: &mut GraphWiring, pixel_values: OutletId, input: InputSize) -> TractResult<OutletId> {
        let p = self.patch;
        let grid = patch_grid(input, p);
        let (height, width) = (grid.rows * p, grid.cols * p);
        let mut x = pixel_values;
        if height != input.height {
            x = g.op("patches.crop_rows", Slice::new(2, 0, height), &[x])?;
        }
        if width != input.width {
            x = g.op("patches.crop_cols", Slice::new(3, 0, width), &[x])?;
        }
        // [N, C, H, W] -> [N, C, rows, p, cols, q] -> [N, rows, cols, p, q, C] -> [N, tokens, p*q*C]
        let x = g.op(
            "patches.split",
            AxisOp::Reshape(2, dims(&[height, width]), dims(&[grid.rows, p, grid.cols, p])),
            &[x],
        )?;
        let x = g.op("patches.channels_last", AxisOp::Move(1, 5), &[x])?;
        let x = g.op("patches.rows", AxisOp::Move(2, 3), &[x])?;
        let patches = g.op(
            "patches.flatten",
            AxisOp::Reshape(
                1,
                dims(&[grid.rows, grid.cols, p, p, 3]),
                dims(&[grid.rows * grid.cols, p * p * 3]),
            ),
            &[x],
        )?;
        g.linear("embeddings.patches", patches, self.weight.clone(), None)
    }

    /// The encoder's input `[N, special + tokens, hidden]`: the `special` tokens first (each row already
    /// holding its position embedding), then the patches plus their `positions` (`[tokens, hidden]`, for
    /// members with absolute positions) and the projection bias, all added as one constant.
    pub fn embed(
        &self,
        g: &mut GraphWiring,
        pixel_values: OutletId,
        input: InputSize,
        special: &[Vec<f32>],
        positions: Option<&[f32]>,
    ) -> TractResult<OutletId> {
        let d = self.hidden;
        let grid = patch_grid(input, self.patch);
        let tokens = grid.rows * grid.cols;
        let embedded = self.wire(g, pixel_values, input)?;
        let padded = g.op(
            "embeddings.special_slots",
            Pad { pads: vec![(0, 0), (special.len(), 0), (0, 0)], mode: PadMode::Constant(rctensor0(0f32)) },
            &[embedded],
        )?;
        let mut table: Vec<f32> = special.concat();
        for t in 0..tokens {
            let position = positions.map(|p| &p[t * d..(t + 1) * d]);
            table.extend((0..d).map(|i| self.bias[i] + position.map_or(0.0, |p| p[i])));
        }
        let table = g.konst("embeddings.table", Tensor::from_shape(&[special.len() + tokens, d], &table)?)?;
        g.binary("embeddings", ops::math::add(), padded, table)
    }
}

/// Which of the query, key and value projections carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvBias {
    /// All three (`qkv_bias: true`).
    All,
    /// None (`qkv_bias: false`).
    Neither,
    /// Query and value only: BEiT.
    QueryValue,
}

/// The feed-forward block of an encoder layer.
#[derive(Debug, Clone, Copy)]
pub enum FeedForward {
    /// `down(act(up(x)))`, `up` and `down` being the checkpoint's names for the two linears.
    Mlp { up: &'static str, down: &'static str, width: usize, activation: Activation },
    /// DINOv2's SwiGLU: `mlp.weights_out(silu(gate) * up)`, `gate` and `up` stacked in `mlp.weights_in`.
    SwiGlu { width: usize },
}

impl FeedForward {
    /// ViT's, DeiT's and BEiT's MLP (`intermediate.dense`, `output.dense`).
    pub fn vit_mlp(width: usize, activation: Activation) -> FeedForward {
        FeedForward::Mlp { up: "intermediate.dense", down: "output.dense", width, activation }
    }
}

/// Where a member keeps a layer's norms and layer scales, relative to the layer's prefix.
#[derive(Debug, Clone, Copy)]
pub struct LayerNames {
    /// The norm before attention (`layernorm_before`, `norm1`).
    pub norm_before: &'static str,
    /// The norm before the feed-forward block (`layernorm_after`, `norm2`).
    pub norm_after: &'static str,
    /// The per-channel scales of the attention and feed-forward branches, for members that have them.
    pub layer_scale: Option<[&'static str; 2]>,
}

impl LayerNames {
    /// ViT's and DeiT's names (BEiT adds its layer scales).
    pub const VIT: LayerNames =
        LayerNames { norm_before: "layernorm_before", norm_after: "layernorm_after", layer_scale: None };
}

/// A stack of pre-norm layers `{prefix}.{layer}.*`, each `x + s1 * attn(ln1(x))` then `x + s2 * ff(ln2(x))`.
pub struct Encoder<'a> {
    /// The checkpoint.
    pub weights: &'a Weights,
    /// The layers' common prefix, e.g. `vit.encoder.layer`.
    pub prefix: &'a str,
    /// Token width.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Layer-norm epsilon.
    pub eps: f32,
    /// Which projections carry a bias.
    pub qkv_bias: QkvBias,
    /// The member's parameter names.
    pub names: LayerNames,
    /// The feed-forward block.
    pub feed_forward: FeedForward,
    /// Arithmetic of the layers' linears.
    pub precision: Precision,
}

impl Encoder<'_> {
    /// Wires layer `layer` on `x` (`[N, T, hidden]`); `bias` (`[heads, T, T]`) is added to the attention
    /// scores before the softmax.
    pub fn layer(
        &self,
        g: &mut GraphWiring,
        layer: usize,
        x: OutletId,
        bias: Option<OutletId>,
    ) -> TractResult<OutletId> {
        let d = self.hidden;
        let at = |suffix: &str| format!("{}.{layer}.{suffix}", self.prefix);
        let name = |s: &str| format!("layer{layer}.{s}");
        let norm = |g: &mut GraphWiring, which: &str, node: &str, x: OutletId| {
            let gamma = self.weights.get(&at(&format!("{which}.weight")), &[d])?;
            let beta = self.weights.get(&at(&format!("{which}.bias")), &[d])?;
            g.layer_norm(&name(node), x, gamma, beta, self.eps)
        };
        let scales = match self.names.layer_scale {
            Some([first, second]) => {
                [Some(self.weights.values(&at(first), &[d])?), Some(self.weights.values(&at(second), &[d])?)]
            }
            None => [None, None],
        };
        let h = norm(g, self.names.norm_before, "ln1", x)?;
        let h = self.attention(g, layer, h, bias, scales[0].as_deref())?;
        let x = g.binary(&name("residual1"), ops::math::add(), x, h)?;
        let h = norm(g, self.names.norm_after, "ln2", x)?;
        let h = self.feed_forward(g, layer, h, scales[1].as_deref())?;
        g.binary(&name("residual2"), ops::math::add(), x, h)
    }

    /// Self-attention, `1/sqrt(head_dim)` folded into the query projection and the layer scale into the
    /// output projection.
    fn attention(
        &self,
        g: &mut GraphWiring,
        layer: usize,
        h: OutletId,
        bias: Option<OutletId>,
        scale: Option<&[f32]>,
    ) -> TractResult<OutletId> {
        let d = self.hidden;
        let (heads, head_dim) = (self.heads, self.hidden / self.heads);
        let prefix = format!("{}.{layer}.attention", self.prefix);
        let name = |s: &str| format!("layer{layer}.attn.{s}");
        let mut project = |which: &str, has_bias: bool, factor: f32| -> TractResult<OutletId> {
            let factors = vec![factor; d];
            let linear =
                self.read_linear(&format!("{prefix}.attention.{which}"), d, d, has_bias, Some(&factors))?;
            let y = linear.wire(g, self.precision, &name(which), h)?;
            g.op(
                &name(&format!("{which}.heads")),
                AxisOp::Reshape(2, dims(&[d]), dims(&[heads, head_dim])),
                &[y],
            )
        };
        let (q_bias, k_bias, v_bias) = match self.qkv_bias {
            QkvBias::All => (true, true, true),
            QkvBias::Neither => (false, false, false),
            QkvBias::QueryValue => (true, false, true),
        };
        let q = project("query", q_bias, 1.0 / (head_dim as f32).sqrt())?;
        let k = project("key", k_bias, 1.0)?;
        let v = project("value", v_bias, 1.0)?;
        let context = match bias {
            // The runtime's fused attention: scores, softmax and context per head, in cache; on bf16
            // operands in bf16 graphs, like their linear layers, and in int8 graphs, as OpenVINO runs
            // what it does not quantize in bf16 on AMX CPUs.
            None if matches!(self.precision, Precision::Bf16 | Precision::Int8) => {
                g.op(&name("context"), runtime::AttentionBf16, &[q, k, v])?
            }
            None => g.op(&name("context"), runtime::Attention, &[q, k, v])?,
            Some(bias) => {
                let scores = g.einsum(&name("scores"), "nqhd,nkhd->nhqk", &[q, k])?;
                let scores = g.binary(&name("biased"), ops::math::add(), scores, bias)?;
                let probabilities = g.softmax(&name("softmax"), scores, 3)?;
                g.einsum(&name("context"), "nhqk,nkhd->nqhd", &[probabilities, v])?
            }
        };
        let context =
            g.op(&name("merge"), AxisOp::Reshape(2, dims(&[heads, head_dim]), dims(&[d])), &[context])?;
        self.read_linear(&format!("{prefix}.output.dense"), d, d, true, scale)?.wire(
            g,
            self.precision,
            &name("out"),
            context,
        )
    }

    /// The feed-forward block, the layer scale folded into its last projection.
    fn feed_forward(
        &self,
        g: &mut GraphWiring,
        layer: usize,
        h: OutletId,
        scale: Option<&[f32]>,
    ) -> TractResult<OutletId> {
        let d = self.hidden;
        let at = |suffix: &str| format!("{}.{layer}.{suffix}", self.prefix);
        let name = |s: &str| format!("layer{layer}.mlp.{s}");
        match self.feed_forward {
            FeedForward::Mlp { up, down, width, activation } => {
                let h = self.read_linear(&at(up), width, d, true, None)?.wire(
                    g,
                    self.precision,
                    &name("up"),
                    h,
                )?;
                let h = g.activation(&name("act"), h, activation)?;
                self.read_linear(&at(down), d, width, true, scale)?.wire(g, self.precision, &name("down"), h)
            }
            FeedForward::SwiGlu { width } => {
                let stacked = self.read_linear(&at("mlp.weights_in"), 2 * width, d, true, None)?;
                let [gate, up] = stacked.split_rows()?;
                let gate = gate.wire(g, self.precision, &name("gate"), h)?;
                let gate = g.activation(&name("silu"), gate, Activation::Silu)?;
                let up = up.wire(g, self.precision, &name("up"), h)?;
                let h = g.binary(&name("glu"), ops::math::mul(), gate, up)?;
                self.read_linear(&at("mlp.weights_out"), d, width, true, scale)?.wire(
                    g,
                    self.precision,
                    &name("down"),
                    h,
                )
            }
        }
    }

    /// `{name}.weight` (`[outputs, inputs]`) and, if `has_bias`, `{name}.bias`, output `o` multiplied by
    /// `row_scale[o]`: `s * (W x + b) = (s W) x + s b`.
    fn read_linear(
        &self,
        name: &str,
        outputs: usize,
        inputs: usize,
        has_bias: bool,
        row_scale: Option<&[f32]>,
    ) -> Result<Linear, ExportError> {
        let mut weight = self.weights.values(&format!("{name}.weight"), &[outputs, inputs])?;
        let mut bias =
            if has_bias { Some(self.weights.values(&format!("{name}.bias"), &[outputs])?) } else { None };
        if let Some(scale) = row_scale {
            for (row, s) in weight.chunks_exact_mut(inputs).zip(scale) {
                row.iter_mut().for_each(|w| *w *= s);
            }
            if let Some(bias) = &mut bias {
                bias.iter_mut().zip(scale).for_each(|(b, s)| *b *= s);
            }
        }
        Ok(Linear { weight, bias, outputs, inputs })
    }
}

/// A linear layer's parameters, PyTorch layout.
struct Linear {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    outputs: usize,
    inputs: usize,
}

impl Linear {
    /// `x @ weight^T + bias` in `precision`.
    fn wire(
        self,
        g: &mut GraphWiring,
        precision: Precision,
        name: &str,
        x: OutletId,
    ) -> TractResult<OutletId> {
        let weight = Tensor::from_shape(&[self.outputs, self.inputs], &self.weight)?;
        let bias = self.bias.map(|b| tensor1(&b));
        g.linear_in(precision, name, x, weight, bias)
    }

    /// The first and second halves of the outputs, as two layers (what `torch.chunk(2, dim=0)` gives).
    fn split_rows(self) -> TractResult<[Linear; 2]> {
        ensure!(self.outputs.is_multiple_of(2), "cannot halve a linear layer of {} outputs", self.outputs);
        let half = self.outputs / 2;
        let (w1, w2) = self.weight.split_at(half * self.inputs);
        let (b1, b2) = match &self.bias {
            Some(b) => (Some(b[..half].to_vec()), Some(b[half..].to_vec())),
            None => (None, None),
        };
        let inputs = self.inputs;
        Ok([
            Linear { weight: w1.to_vec(), bias: b1, outputs: half, inputs },
            Linear { weight: w2.to_vec(), bias: b2, outputs: half, inputs },
        ])
    }
}

/// Token `index` of `x` (`[N, T, d]`), as `[N, d]`.
pub fn token(g: &mut GraphWiring, name: &str, x: OutletId, index: usize) -> TractResult<OutletId> {
    let t = g.op(name, Slice::new(1, index, index + 1), &[x])?;
    g.op(&format!("{name}.flat"), AxisOp::Rm(1), &[t])
}

/// The mean of tokens `from..` of `x` (`[N, T, d]`), as `[N, d]`.
pub fn mean_of_tokens(g: &mut GraphWiring, name: &str, x: OutletId, from: usize) -> TractResult<OutletId> {
    let tokens = g.model.outlet_fact(x)?.shape[1].to_usize()?;
    let rest = g.op(&format!("{name}.tokens"), Slice::new(1, from, tokens), &[x])?;
    let sum = g.reduce_drop(&format!("{name}.sum"), rest, 1, Reducer::Sum)?;
    g.binary_scalar(name, ops::math::mul(), sum, 1.0 / (tokens - from) as f32)
}
