//! The ViT image classifier as a tract graph, built from `config.json` and the checkpoint's weights.
//!
//! Mirrors transformers' `ViTForImageClassification` (pre-norm encoder, CLS-token head). Nothing about a
//! particular size is assumed: every dimension comes from [`VitConfig`].

use tract_core::internal::*;
use tract_core::ops;
use tract_core::ops::array::{Pad, PadMode};

use crate::ExportError;
use crate::config::VitConfig;
use crate::graph::{GraphWiring, dims};
use crate::weights::Weights;

/// What the graph takes as input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VitInput {
    /// `u8[N, H, W, 3]` RGB pixels: rescale, normalization and HWC->CHW are folded into the patch
    /// embedding. This is what artifacts contain.
    Pixels,
    /// `f32[N, 3, H, W]` normalized `pixel_values`, exactly what the Hugging Face model takes. Used as the
    /// unfused reference the exported artifact is checked against.
    PixelValues,
}

/// Rescale and per-channel normalization applied to `u8` pixels: `(x * rescale - mean[c]) / std[c]`.
#[derive(Debug, Clone, Copy)]
pub struct Normalization {
    /// Multiplier applied to raw `u8` values.
    pub rescale: f32,
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

/// The arithmetic the encoder's linear layers run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32, as the checkpoint.
    #[default]
    F32,
    /// The encoder's linear layers (attention projections and MLP, 97 % of the multiply-adds) take
    /// int8 operands: weights quantized per output channel at export, activations per token at run
    /// time, both symmetric, accumulated in i32. Patch embedding, attention scores, normalization and
    /// the classifier stay f32.
    Int8,
}

impl Precision {
    /// The name recorded as the manifest's `graph.precision`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

/// Builds the classifier graph with `confidence`, `class_index` and `logits` outputs.
pub fn build(
    config: &VitConfig,
    weights: &Weights,
    normalization: &Normalization,
    input: VitInput,
    precision: Precision,
) -> Result<TypedModel, ExportError> {
    build_graph(config, weights, normalization, input, precision).map_err(|e| {
        match e.downcast::<ExportError>() {
            Ok(export) => export,
            Err(other) => ExportError::Graph(format!("{other:?}")),
        }
    })
}

fn build_graph(
    config: &VitConfig,
    weights: &Weights,
    normalization: &Normalization,
    input: VitInput,
    precision: Precision,
) -> TractResult<TypedModel> {
    let d = config.hidden_size;
    let p = config.patch_size as usize;
    let side = config.image_size as usize;
    let grid = config.grid();
    let tokens = grid * grid;
    let patch_len = p * p * 3;
    let mut g = GraphWiring::new();
    let n = g.batch();

    // Bring the input to [N, grid, p, grid, p, C]: HWC pixels reshape directly, CHW pixel_values move C last.
    let patches = match input {
        VitInput::Pixels => {
            let src = g
                .model
                .add_source("image", u8::fact(tvec!(n.clone(), side.to_dim(), side.to_dim(), 3.to_dim())))?;
            let x = g.op("image.f32", ops::cast::cast(f32::datum_type()), &[src])?;
            g.op("patches.split", AxisOp::Reshape(1, dims(&[side, side]), dims(&[grid, p, grid, p])), &[x])?
        }
        VitInput::PixelValues => {
            let src = g.model.add_source(
                "pixel_values",
                f32::fact(tvec!(n.clone(), 3.to_dim(), side.to_dim(), side.to_dim())),
            )?;
            let x = g.op(
                "patches.split",
                AxisOp::Reshape(2, dims(&[side, side]), dims(&[grid, p, grid, p])),
                &[src],
            )?;
            g.op("patches.channels_last", AxisOp::Move(1, 5), &[x])?
        }
    };
    // [N, gh, p, gw, q, C] -> [N, gh, gw, p, q, C] -> [N, tokens, p*q*C]
    let patches = g.op("patches.rows", AxisOp::Move(2, 3), &[patches])?;
    let patches = g.op(
        "patches.flatten",
        AxisOp::Reshape(1, dims(&[grid, grid, p, p, 3]), dims(&[tokens, patch_len])),
        &[patches],
    )?;

    let (proj_w, proj_b) = patch_projection(config, weights, normalization, input)?;
    let embedded = g.linear("embeddings.patches", patches, proj_w, None)?;

    // Prepend a zero row for the CLS token, then add one constant holding CLS, positions and the bias.
    let padded = g.op(
        "embeddings.cls_slot",
        Pad { pads: vec![(0, 0), (1, 0), (0, 0)], mode: PadMode::Constant(rctensor0(0f32)) },
        &[embedded],
    )?;
    let table = token_table(config, weights, &proj_b)?;
    let table = g.konst("embeddings.table", table)?;
    let mut x = g.binary("embeddings", ops::math::add(), padded, table)?;

    let act =
        config.activation().ok_or_else(|| format_err!("unsupported activation {}", config.hidden_act))?;
    let eps = config.layer_norm_eps as f32;
    for layer in 0..config.num_hidden_layers {
        let w = |suffix: &str, shape: &[usize]| {
            weights.get(&format!("vit.encoder.layer.{layer}.{suffix}"), shape)
        };
        let name = |s: &str| format!("layer{layer}.{s}");
        let h = g.layer_norm(
            &name("ln1"),
            x,
            w("layernorm_before.weight", &[d])?,
            w("layernorm_before.bias", &[d])?,
            eps,
        )?;
        let attn = attention(&mut g, config, weights, layer, h, precision)?;
        x = g.binary(&name("residual1"), ops::math::add(), x, attn)?;
        let h = g.layer_norm(
            &name("ln2"),
            x,
            w("layernorm_after.weight", &[d])?,
            w("layernorm_after.bias", &[d])?,
            eps,
        )?;
        let i = config.intermediate_size;
        let h = dense(
            &mut g,
            precision,
            &name("mlp.up"),
            h,
            w("intermediate.dense.weight", &[i, d])?,
            Some(w("intermediate.dense.bias", &[i])?),
        )?;
        let h = g.activation(&name("mlp.act"), h, act)?;
        let h = dense(
            &mut g,
            precision,
            &name("mlp.down"),
            h,
            w("output.dense.weight", &[d, i])?,
            Some(w("output.dense.bias", &[d])?),
        )?;
        x = g.binary(&name("residual2"), ops::math::add(), x, h)?;
    }

    // Layer norm is per token, so normalizing the CLS token alone is exact and skips the rest.
    let cls = g.op("head.cls", ops::array::Slice::new(1, 0, 1), &[x])?;
    let cls = g.op("head.cls_flat", AxisOp::Rm(1), &[cls])?;
    let cls = g.layer_norm(
        "head.ln",
        cls,
        weights.get("vit.layernorm.weight", &[d])?,
        weights.get("vit.layernorm.bias", &[d])?,
        eps,
    )?;
    let classes = config.id2label.len();
    let logits = g.linear(
        "head.classifier",
        cls,
        weights.get("classifier.weight", &[classes, d])?,
        Some(weights.get("classifier.bias", &[classes])?),
    )?;
    g.classification_outputs(logits)
}

/// An encoder linear layer in `precision`.
fn dense(
    g: &mut GraphWiring,
    precision: Precision,
    name: &str,
    x: OutletId,
    weight: Tensor,
    bias: Option<Tensor>,
) -> TractResult<OutletId> {
    match precision {
        Precision::F32 => g.linear(name, x, weight, bias),
        Precision::Int8 => g.linear_int8(name, x, &weight, bias),
    }
}

/// Self-attention of one layer, `1/sqrt(head_dim)` folded into the query projection.
fn attention(
    g: &mut GraphWiring,
    config: &VitConfig,
    weights: &Weights,
    layer: usize,
    h: OutletId,
    precision: Precision,
) -> TractResult<OutletId> {
    let d = config.hidden_size;
    let heads = config.num_attention_heads;
    let head_dim = d / heads;
    let prefix = format!("vit.encoder.layer.{layer}.attention");
    let mut project = |which: &str, scale: f32| -> TractResult<OutletId> {
        let scaled = |name: String, shape: &[usize]| -> TractResult<Tensor> {
            let values: Vec<f32> = weights.values(&name, shape)?.into_iter().map(|v| v * scale).collect();
            Tensor::from_shape(shape, &values)
        };
        let weight = scaled(format!("{prefix}.attention.{which}.weight"), &[d, d])?;
        let bias = if config.qkv_bias {
            Some(scaled(format!("{prefix}.attention.{which}.bias"), &[d])?)
        } else {
            None
        };
        let name = format!("layer{layer}.attn.{which}");
        let y = dense(g, precision, &name, h, weight, bias)?;
        g.op(
            &format!("layer{layer}.attn.{which}.heads"),
            AxisOp::Reshape(2, dims(&[d]), dims(&[heads, head_dim])),
            &[y],
        )
    };
    let q = project("query", 1.0 / (head_dim as f32).sqrt())?;
    let k = project("key", 1.0)?;
    let v = project("value", 1.0)?;
    // The runtime's fused attention: scores, softmax and context per head, in cache.
    let ctx = g.op(&format!("layer{layer}.attn.context"), runtime::Attention, &[q, k, v])?;
    let ctx = g.op(
        &format!("layer{layer}.attn.merge"),
        AxisOp::Reshape(2, dims(&[heads, head_dim]), dims(&[d])),
        &[ctx],
    )?;
    dense(
        g,
        precision,
        &format!("layer{layer}.attn.out"),
        ctx,
        weights.get(&format!("{prefix}.output.dense.weight"), &[d, d])?,
        Some(weights.get(&format!("{prefix}.output.dense.bias"), &[d])?),
    )
}

/// The patch projection as a `[hidden, p*p*3]` matrix over `(row, col, channel)`-ordered patches, and its
/// bias. For [`VitInput::Pixels`] the rescale and normalization are folded in:
/// `W'[d,i,j,c] = W[d,c,i,j] * rescale / std[c]` and `b'[d] = b[d] - sum W[d,c,i,j] * mean[c] / std[c]`,
/// exact because the patch convolution has no padding.
fn patch_projection(
    config: &VitConfig,
    weights: &Weights,
    normalization: &Normalization,
    input: VitInput,
) -> TractResult<(Tensor, Vec<f32>)> {
    let d = config.hidden_size;
    let p = config.patch_size as usize;
    let conv = weights.values("vit.embeddings.patch_embeddings.projection.weight", &[d, 3, p, p])?;
    let mut bias = weights.values("vit.embeddings.patch_embeddings.projection.bias", &[d])?;
    let mut folded = vec![0f32; d * p * p * 3];
    for o in 0..d {
        for c in 0..3 {
            let (scale, shift) = match input {
                VitInput::Pixels => {
                    let Normalization { rescale, mean, std } = normalization;
                    (rescale / std[c], mean[c] / std[c])
                }
                VitInput::PixelValues => (1.0, 0.0),
            };
            for i in 0..p {
                for j in 0..p {
                    let w = conv[((o * 3 + c) * p + i) * p + j];
                    folded[((o * p + i) * p + j) * 3 + c] = w * scale;
                    bias[o] -= w * shift;
                }
            }
        }
    }
    Ok((Tensor::from_shape(&[d, p * p * 3], &folded)?, bias))
}

/// `[tokens + 1, hidden]`: row 0 is CLS + its position embedding, row t is position t + the patch bias.
fn token_table(config: &VitConfig, weights: &Weights, patch_bias: &[f32]) -> TractResult<Tensor> {
    let d = config.hidden_size;
    let rows = config.grid() * config.grid() + 1;
    let cls = weights.values("vit.embeddings.cls_token", &[1, 1, d])?;
    let mut table = weights.values("vit.embeddings.position_embeddings", &[1, rows, d])?;
    for (row, chunk) in table.chunks_exact_mut(d).enumerate() {
        let add: &[f32] = if row == 0 { &cls } else { patch_bias };
        chunk.iter_mut().zip(add).for_each(|(v, a)| *v += a);
    }
    Tensor::from_shape(&[rows, d], &table)
}
