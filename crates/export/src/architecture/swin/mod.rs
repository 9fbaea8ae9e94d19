//! The Swin Transformer (v1) image classifier as a tract graph, built from `config.json` and the
//! checkpoint's weights.
//!
//! Mirrors transformers 5.23's `SwinForImageClassification`: a patch embedding (zero-padded to whole
//! patches) and its layer norm, stages of window-attention blocks (odd blocks on windows shifted by half a
//! window) joined by 2x2 patch merging, a final layer norm, mean pooling and the classifier. The grid
//! follows from the image processor's output size, not from `image_size`. Window partitioning, shifting
//! and padding are constant gathers and the relative position bias plus shift mask one constant per
//! block ([`windows`]); only the batch is symbolic.

mod windows;

use serde::Deserialize;
use tract_core::internal::*;
use tract_core::ops;
use tract_core::ops::array::{Gather, Pad, PadMode, Slice};
use tract_core::ops::nn::DataFormat;

use super::InputSize;
use super::encoder::mean_of_tokens;
use super::native::{Native, NativeConfig};
use crate::Precision;
use crate::architecture::defaults;
use crate::graph::{Activation, Conv2d, GraphWiring, dims};
use windows::{WindowLayout, merge_groups};

/// `image_size` / `patch_size`: one side, or `[height, width]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum Sides {
    Square(usize),
    HeightWidth([usize; 2]),
}

impl Sides {
    fn pair(self) -> (usize, usize) {
        match self {
            Sides::Square(side) => (side, side),
            Sides::HeightWidth([height, width]) => (height, width),
        }
    }
}

/// The hyper-parameters of a Swin checkpoint, with transformers' `SwinConfig` defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct SwinConfig {
    #[serde(default = "default_image_size")]
    image_size: Sides,
    #[serde(default = "default_patch_size")]
    patch_size: Sides,
    #[serde(default = "default_num_channels")]
    num_channels: usize,
    #[serde(default = "default_embed_dim")]
    embed_dim: usize,
    #[serde(default = "default_depths")]
    depths: Vec<usize>,
    #[serde(default = "default_num_heads")]
    num_heads: Vec<usize>,
    #[serde(default = "default_window_size")]
    window_size: usize,
    #[serde(default = "default_mlp_ratio")]
    mlp_ratio: f64,
    #[serde(default = "defaults::on")]
    qkv_bias: bool,
    #[serde(default = "defaults::gelu")]
    hidden_act: String,
    #[serde(default)]
    use_absolute_embeddings: bool,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
}

fn default_image_size() -> Sides {
    Sides::Square(224)
}
fn default_patch_size() -> Sides {
    Sides::Square(4)
}
fn default_num_channels() -> usize {
    3
}
fn default_embed_dim() -> usize {
    96
}
fn default_depths() -> Vec<usize> {
    vec![2, 2, 6, 2]
}
fn default_num_heads() -> Vec<usize> {
    vec![3, 6, 12, 24]
}
fn default_window_size() -> usize {
    7
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_eps() -> f64 {
    1e-5
}

/// The epsilon of the layer norms transformers builds without `config.layer_norm_eps` (after the patch
/// embedding and in patch merging): `nn.LayerNorm`'s default.
const TORCH_LAYER_NORM_EPS: f32 = 1e-5;

/// One stage: its token grid, width, heads, MLP width and the window layout of each block.
#[derive(Debug, Clone)]
struct Stage {
    grid: (usize, usize),
    dim: usize,
    heads: usize,
    mlp: usize,
    blocks: Vec<WindowLayout>,
}

/// A Swin config checked for one input size: its activation and where its tokens are.
pub struct Plan {
    activation: Activation,
    geometry: Geometry,
}

/// Where the tokens are for one input size.
struct Geometry {
    /// Patch height and width in pixels.
    patch: (usize, usize),
    /// Patch rows and columns (the input zero-padded to whole patches).
    grid: (usize, usize),
    stages: Vec<Stage>,
}

/// Lays out the patches and stages for `input`, refusing what transformers cannot run.
fn geometry(config: &SwinConfig, input: InputSize) -> Result<Geometry, String> {
    if config.num_channels != 3 {
        return Err(format!("num_channels is {}, only 3 (RGB) is supported", config.num_channels));
    }
    let patch = config.patch_size.pair();
    if patch.0 == 0 || patch.1 == 0 || config.window_size == 0 || config.embed_dim == 0 {
        return Err("patch_size, window_size and embed_dim must be positive".into());
    }
    if config.depths.is_empty() || config.depths.len() != config.num_heads.len() {
        return Err(format!(
            "depths has {} stages and num_heads {}: they must agree and not be empty",
            config.depths.len(),
            config.num_heads.len()
        ));
    }
    let grid = (input.height.div_ceil(patch.0), input.width.div_ceil(patch.1));
    if config.use_absolute_embeddings {
        let (height, width) = config.image_size.pair();
        let positions = (height / patch.0) * (width / patch.1);
        if positions != grid.0 * grid.1 {
            return Err(format!(
                "use_absolute_embeddings: the {}x{} input gives {} patches but image_size {height}x{width} has \
                 {positions} position embeddings (transformers only adds them when they agree)",
                input.height,
                input.width,
                grid.0 * grid.1
            ));
        }
    }
    let (mut height, mut width) = grid;
    let mut stages = vec![];
    for (index, (&depth, &heads)) in config.depths.iter().zip(&config.num_heads).enumerate() {
        let dim = 1usize
            .checked_shl(index as u32)
            .and_then(|factor| config.embed_dim.checked_mul(factor))
            .ok_or_else(|| format!("stage {index}: embed_dim {} * 2^{index} overflows", config.embed_dim))?;
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(format!("stage {index}: width {dim} is not a multiple of its {heads} heads"));
        }
        let mlp = (config.mlp_ratio * dim as f64) as usize;
        if mlp == 0 {
            return Err(format!("mlp_ratio {} gives stage {index} an empty MLP", config.mlp_ratio));
        }
        let blocks = (0..depth)
            .map(|block| WindowLayout::new(height, width, config.window_size, block))
            .collect::<Result<_, _>>()
            .map_err(|reason| {
                format!("stage {index} of a {}x{} input: {reason}", input.height, input.width)
            })?;
        stages.push(Stage { grid: (height, width), dim, heads, mlp, blocks });
        (height, width) = (height.div_ceil(2), width.div_ceil(2));
    }
    Ok(Geometry { patch, grid, stages })
}

/// `SwinForImageClassification`.
impl NativeConfig for SwinConfig {
    type Checked = Plan;

    const PRECISIONS: &'static [Precision] = &[Precision::F32, Precision::Int8, Precision::Bf16];

    /// Lays the stages out for `input`.
    fn validate(&self, input: InputSize) -> Result<Plan, String> {
        let activation = Activation::from_hidden_act(&self.hidden_act)?;
        Ok(Plan { activation, geometry: geometry(self, input)? })
    }

    fn logits(
        model: &Native<Self>,
        g: &mut GraphWiring,
        pixel_values: OutletId,
        precision: Precision,
    ) -> TractResult<OutletId> {
        let mut x = model.embeddings(g, pixel_values)?;
        let stages = &model.checked.geometry.stages;
        for (s, stage) in stages.iter().enumerate() {
            for (index, layout) in stage.blocks.iter().enumerate() {
                x = model.block(g, &Block { stage_index: s, index, stage, layout }, x, precision)?;
            }
            if s + 1 < stages.len() {
                x = model.patch_merging(g, s, stage, x)?;
            }
        }
        let dim = stages.last().map_or(model.config.embed_dim, |s| s.dim);
        let w = &model.weights;
        let eps = model.config.layer_norm_eps as f32;
        let x = g.layer_norm(
            "head.ln",
            x,
            w.get("swin.layernorm.weight", &[dim])?,
            w.get("swin.layernorm.bias", &[dim])?,
            eps,
        )?;
        let pooled = mean_of_tokens(g, "head.pool", x, 0)?;
        g.linear(
            "head.classifier",
            pooled,
            w.get("classifier.weight", &[model.classes, dim])?,
            Some(w.get("classifier.bias", &[model.classes])?),
        )
    }
}

impl Native<SwinConfig> {
    /// `pixel_values` -> `[N, patches, embed_dim]`: the patch convolution on the input zero-padded to whole
    /// patches (bottom and right), its layer norm, and the absolute position embeddings if any.
    fn embeddings(&self, g: &mut GraphWiring, pixel_values: OutletId) -> TractResult<OutletId> {
        let (ph, pw) = self.checked.geometry.patch;
        let (gh, gw) = self.checked.geometry.grid;
        let d = self.config.embed_dim;
        let mut x = pixel_values;
        let (bottom, right) = (gh * ph - self.input.height, gw * pw - self.input.width);
        if bottom + right > 0 {
            x = g.op("patches.pad", zero_pad(vec![(0, 0), (0, 0), (0, bottom), (0, right)]), &[x])?;
        }
        let w = &self.weights;
        let prefix = "swin.embeddings";
        let conv = Conv2d::new(
            w.get(&format!("{prefix}.patch_embeddings.projection.weight"), &[d, 3, ph, pw])?,
            Some(w.get(&format!("{prefix}.patch_embeddings.projection.bias"), &[d])?),
        );
        let x = g.conv2d("embeddings.patches", x, DataFormat::NCHW, conv.stride([ph, pw]))?;
        // [N, d, gh, gw] -> [N, gh*gw, d], as `flatten(2).transpose(1, 2)`.
        let x = g.op("embeddings.flatten", AxisOp::Reshape(2, dims(&[gh, gw]), dims(&[gh * gw])), &[x])?;
        let x = g.op("embeddings.tokens", AxisOp::Move(1, 2), &[x])?;
        let x = g.layer_norm(
            "embeddings.ln",
            x,
            w.get(&format!("{prefix}.norm.weight"), &[d])?,
            w.get(&format!("{prefix}.norm.bias"), &[d])?,
            TORCH_LAYER_NORM_EPS,
        )?;
        if !self.config.use_absolute_embeddings {
            return Ok(x);
        }
        let positions = g.konst(
            "embeddings.positions",
            w.get(&format!("{prefix}.position_embeddings"), &[1, gh * gw, d])?,
        )?;
        g.binary("embeddings", ops::math::add(), x, positions)
    }

    /// One `SwinLayer`: window attention (pre-norm, residual) then the MLP (pre-norm, residual).
    fn block(
        &self,
        g: &mut GraphWiring,
        block: &Block,
        x: OutletId,
        precision: Precision,
    ) -> TractResult<OutletId> {
        let (d, eps) = (block.stage.dim, self.config.layer_norm_eps as f32);
        let w = |suffix: &str, shape: &[usize]| self.weights.get(&block.param(suffix), shape);
        let name = |suffix: &str| block.node(suffix);

        let h = g.layer_norm(
            &name("ln1"),
            x,
            w("layernorm_before.weight", &[d])?,
            w("layernorm_before.bias", &[d])?,
            eps,
        )?;
        let windows = partition(g, &name("windows"), block.layout, h)?;
        let attended = self.window_attention(g, block, windows, precision)?;
        let h = reverse(g, &name("unwindows"), block.layout, attended)?;
        let x = g.binary(&name("residual1"), ops::math::add(), x, h)?;

        let h = g.layer_norm(
            &name("ln2"),
            x,
            w("layernorm_after.weight", &[d])?,
            w("layernorm_after.bias", &[d])?,
            eps,
        )?;
        let m = block.stage.mlp;
        let h = g.linear_in(
            precision,
            &name("mlp.up"),
            h,
            w("intermediate.dense.weight", &[m, d])?,
            Some(w("intermediate.dense.bias", &[m])?),
        )?;
        let h = g.activation(&name("mlp.act"), h, self.checked.activation)?;
        let h = g.linear_in(
            precision,
            &name("mlp.down"),
            h,
            w("output.dense.weight", &[d, m])?,
            Some(w("output.dense.bias", &[d])?),
        )?;
        g.binary(&name("residual2"), ops::math::add(), x, h)
    }

    /// Multi-head self-attention inside each window, `[N, windows, window_tokens, dim]` in and out: one
    /// projection for query, key and value (`1/sqrt(head_dim)` folded into the query's rows), scores plus
    /// the block's constant bias (relative positions and shift mask), softmax, context, output projection.
    fn window_attention(
        &self,
        g: &mut GraphWiring,
        block: &Block,
        windows: OutletId,
        precision: Precision,
    ) -> TractResult<OutletId> {
        let (d, heads) = (block.stage.dim, block.stage.heads);
        let name = block.node("attn");
        let head_dim = d / heads;
        let w = &self.weights;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut weight = Vec::with_capacity(3 * d * d);
        let mut bias = Vec::with_capacity(3 * d);
        for (which, factor) in [("query", scale), ("key", 1.0), ("value", 1.0)] {
            let values = w.values(&block.param(&format!("attention.self.{which}.weight")), &[d, d])?;
            weight.extend(values.into_iter().map(|v| v * factor));
            if self.config.qkv_bias {
                let values = w.values(&block.param(&format!("attention.self.{which}.bias")), &[d])?;
                bias.extend(values.into_iter().map(|v| v * factor));
            }
        }
        let bias = if self.config.qkv_bias { Some(Tensor::from_shape(&[3 * d], &bias)?) } else { None };
        let qkv = g.linear_in(
            precision,
            &format!("{name}.qkv"),
            windows,
            Tensor::from_shape(&[3 * d, d], &weight)?,
            bias,
        )?;
        let qkv = g.op(
            &format!("{name}.qkv.heads"),
            AxisOp::Reshape(3, dims(&[3 * d]), dims(&[3, heads, head_dim])),
            &[qkv],
        )?;
        let mut split = |i: usize, which: &str| -> TractResult<OutletId> {
            let part = g.op(&format!("{name}.{which}"), Slice::new(3, i, i + 1), &[qkv])?;
            g.op(&format!("{name}.{which}.squeeze"), AxisOp::Rm(3), &[part])
        };
        let (q, k, v) = (split(0, "q")?, split(1, "k")?, split(2, "v")?);

        let table_rows = (2 * block.layout.window - 1).pow(2);
        let table =
            w.values(&block.param("attention.self.relative_position_bias_table"), &[table_rows, heads])?;
        let (shape, values) = block.layout.attention_bias(&table, heads);
        let bias = g.konst(&format!("{name}.bias"), Tensor::from_shape(&shape, &values)?)?;

        // a: batch, b: window, q/k: query/key position, h: head, d: head channel.
        let scores = g.einsum(&format!("{name}.scores"), "abqhd,abkhd->abhqk", &[q, k])?;
        let scores = g.binary(&format!("{name}.biased"), ops::math::add(), scores, bias)?;
        let probs = g.softmax(&format!("{name}.softmax"), scores, 4)?;
        let context = g.einsum(&format!("{name}.context"), "abhqk,abkhd->abqhd", &[probs, v])?;
        let context = g.op(
            &format!("{name}.merge"),
            AxisOp::Reshape(3, dims(&[heads, head_dim]), dims(&[d])),
            &[context],
        )?;
        g.linear_in(
            precision,
            &format!("{name}.out"),
            context,
            w.get(&block.param("attention.output.dense.weight"), &[d, d])?,
            Some(w.get(&block.param("attention.output.dense.bias"), &[d])?),
        )
    }

    /// `SwinPatchMerging`: `[N, height*width, dim]` -> `[N, ceil(height/2)*ceil(width/2), 2*dim]`, each 2x2
    /// neighbourhood concatenated (odd sides zero-padded), layer-normed and reduced.
    fn patch_merging(
        &self,
        g: &mut GraphWiring,
        s: usize,
        stage: &Stage,
        x: OutletId,
    ) -> TractResult<OutletId> {
        let ((height, width), dim) = (stage.grid, stage.dim);
        let name = |suffix: &str| format!("stage{s}.merge.{suffix}");
        let prefix = format!("swin.encoder.layers.{s}.downsample");
        let w = |suffix: &str, shape: &[usize]| self.weights.get(&format!("{prefix}.{suffix}"), shape);
        let merged = height.div_ceil(2) * width.div_ceil(2);
        let groups = Tensor::from_shape(&[merged, 4], &merge_groups(height, width))?;
        let x = gather_tokens(g, &name("groups"), x, groups, height % 2 == 1 || width % 2 == 1)?;
        let x = g.op(&name("concat"), AxisOp::Reshape(2, dims(&[4, dim]), dims(&[4 * dim])), &[x])?;
        let x = g.layer_norm(
            &name("ln"),
            x,
            w("norm.weight", &[4 * dim])?,
            w("norm.bias", &[4 * dim])?,
            TORCH_LAYER_NORM_EPS,
        )?;
        g.linear(&name("reduction"), x, w("reduction.weight", &[2 * dim, 4 * dim])?, None)
    }
}

/// One `SwinLayer` to wire: where it sits (which names its parameters and nodes), its stage and its windows.
struct Block<'a> {
    stage_index: usize,
    index: usize,
    stage: &'a Stage,
    layout: &'a WindowLayout,
}

impl Block<'_> {
    /// The checkpoint's name for this block's parameter `suffix`.
    fn param(&self, suffix: &str) -> String {
        format!("swin.encoder.layers.{}.blocks.{}.{suffix}", self.stage_index, self.index)
    }

    /// A graph node name in this block.
    fn node(&self, suffix: &str) -> String {
        format!("stage{}.block{}.{suffix}", self.stage_index, self.index)
    }
}

/// `[N, tokens, dim]` -> `[N, windows, window_tokens, dim]` (see [`WindowLayout::partition`]).
fn partition(g: &mut GraphWiring, name: &str, layout: &WindowLayout, x: OutletId) -> TractResult<OutletId> {
    if layout.is_identity() {
        return g.op(name, AxisOp::Add(1), &[x]);
    }
    let slots = Tensor::from_shape(&[layout.windows(), layout.window_tokens()], &layout.partition())?;
    gather_tokens(g, name, x, slots, layout.reads_padding())
}

/// `[N, windows, window_tokens, dim]` -> `[N, tokens, dim]`, undoing [`partition`].
fn reverse(g: &mut GraphWiring, name: &str, layout: &WindowLayout, x: OutletId) -> TractResult<OutletId> {
    if layout.is_identity() {
        return g.op(name, AxisOp::Rm(1), &[x]);
    }
    let slots = layout.windows() * layout.window_tokens();
    let flat = g.op(
        &format!("{name}.flatten"),
        AxisOp::Reshape(1, dims(&[layout.windows(), layout.window_tokens()]), dims(&[slots])),
        &[x],
    )?;
    let from = Tensor::from_shape(&[layout.tokens()], &layout.reverse())?;
    let from = g.konst(&format!("{name}.from"), from)?;
    g.op(name, Gather::new(1), &[flat, from])
}

/// Gathers tokens (axis 1 of `x`) by the constant `indices`; with `zero_row`, a zero token is appended
/// first, which index `tokens` reads.
fn gather_tokens(
    g: &mut GraphWiring,
    name: &str,
    x: OutletId,
    indices: Tensor,
    zero_row: bool,
) -> TractResult<OutletId> {
    let x = if zero_row {
        g.op(&format!("{name}.pad"), zero_pad(vec![(0, 0), (0, 1), (0, 0)]), &[x])?
    } else {
        x
    };
    let indices = g.konst(&format!("{name}.indices"), indices)?;
    g.op(name, Gather::new(1), &[x, indices])
}

fn zero_pad(pads: Vec<(usize, usize)>) -> Pad {
    Pad { pads, mode: PadMode::Constant(rctensor0(0f32)) }
}

#[cfg(test)]
mod tests {
    use artifact::ResizeMode;

    use super::super::native::open;
    use super::super::reference::{CheckError, LOGIT_TOLERANCE, check_f32_logits, check_int8_top1, fixtures};
    use super::*;
    use crate::weights::Weights;
    use crate::{ExportRequest, Source, export};

    type TestResult = Result<(), CheckError>;

    /// tiny-swin: 12x12 patches in 3x3 windows, shifted blocks at 12x12 and 6x6, the shift dropped at 3x3.
    #[test]
    fn swin_reproduces_pytorch_logits_from_safetensors_and_bin() -> TestResult {
        for file in ["model.safetensors", "pytorch_model.bin"] {
            check_f32_logits("tiny-swin", &format!("models/tiny-swin/{file}"), LOGIT_TOLERANCE)?;
        }
        Ok(())
    }

    #[test]
    fn swin_int8_agrees_with_pytorch_on_top1() -> TestResult {
        for file in ["model.safetensors", "pytorch_model.bin"] {
            check_int8_top1("tiny-swin", &format!("models/tiny-swin/{file}"))?;
        }
        Ok(())
    }

    /// The artifact is the typed graph written as NNEF: every operation must have a serializer, and the
    /// runtime's reading of it must agree with the source graph (the export's own self-check).
    #[test]
    fn swin_exports_through_nnef_in_every_precision() -> TestResult {
        for precision in [Precision::F32, Precision::Int8] {
            let base = tempfile::tempdir()?;
            let request = ExportRequest {
                checkpoint: fixtures().join("models/tiny-swin"),
                base: base.path().to_owned(),
                version: None,
                resize: ResizeMode::Pil,
                jpeg_draft: false,
                precision,
                accuracy_images: vec![],
                min_top1_agreement: crate::MIN_TOP1_AGREEMENT,
            };
            let report = export(&request, &runtime::NoProgress)?;
            eprintln!(
                "tiny-swin {}: max |confidence diff| {:.2e}",
                precision.name(),
                report.max_confidence_diff
            );
        }
        Ok(())
    }

    /// transformers 5.23 cannot run a stage whose grid is smaller than the window (its relative position
    /// bias keeps the window's size); neither does kiln, and it says which stage.
    #[test]
    fn swin_refuses_a_stage_smaller_than_the_window() -> TestResult {
        let source = Source::open(&fixtures().join("models/tiny-swin/model.safetensors"))?;
        let weights = Weights::safetensors(&source.model_file)?;
        // 32 / 4 = 8 patches, then 4, then 2 < window_size 3.
        let input = InputSize { height: 32, width: 32 };
        let error = match open::<SwinConfig>(&source.config, &source.config_file, weights, input) {
            Ok(_) => return Err("a 2x2 stage with 3x3 windows was accepted".into()),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("stage 2") && error.contains("window_size 3"), "{error}");
        Ok(())
    }
}
