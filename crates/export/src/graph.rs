//! A thin wiring layer over tract's `TypedModel` so the ViT and the fused pre/post-processing read
//! like the math they implement.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec};
use tract_core::ops::einsum::EinSum;
use tract_core::ops::nn::{DataFormat, Reduce, Reducer, Softmax, SoftmaxKind};
use tract_core::ops::{self, change_axes::wire_rank_broadcast};

use artifact::PreprocessSpec;

use crate::weights::Weights;
use crate::{ExportError, Precision};

/// The activation functions transformers' `ACT2FN` names that kiln expresses as graph operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: exact, erf-based.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// `relu`.
    Relu,
    /// `silu` / `swish`: `x * sigmoid(x)`.
    Silu,
}

impl Activation {
    /// The activation `ACT2FN[hidden_act]` is, or the config error naming the one kiln lacks.
    pub fn from_hidden_act(hidden_act: &str) -> Result<Activation, String> {
        Ok(match hidden_act {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            _ => return Err(format!("unsupported hidden_act {hidden_act:?}")),
        })
    }
}

/// Wires nodes into a `TypedModel`, broadcasting ranks for binary operations.
pub struct GraphWiring {
    /// The model being built.
    pub model: TypedModel,
}

impl GraphWiring {
    pub fn new() -> GraphWiring {
        GraphWiring { model: TypedModel::default() }
    }

    /// An empty model whose symbols (the batch `N`) are those of `other`, so its nodes can be copied in.
    pub fn sharing_symbols(other: &TypedModel) -> GraphWiring {
        GraphWiring { model: TypedModel { symbols: other.symbols.clone(), ..TypedModel::default() } }
    }

    /// The symbolic batch dimension shared by every input and output.
    pub fn batch(&self) -> TDim {
        self.model.sym("N").to_dim()
    }

    /// The one step from the runtime's prepared image to what a Hugging Face model takes: `u8[N, H, W, 3]`
    /// -> `f32[N, 3, H, W]` with `pixel_values[c] = u8 * scale[c] + offset[c]` (rescale, normalization and
    /// any processor-specific affine folded by the exporter into `spec`).
    ///
    /// Channels move first while still `u8`, so that each per-channel constant (`[3, 1, 1]`) applies to one
    /// contiguous plane: tract runs that as a by-scalar loop, where a `[3]` constant broadcast over the
    /// channel-last axis takes its generic broadcasting path (measured on ViT-B: 2.5 ms of a 190 ms run).
    pub fn pixel_values(&mut self, image: OutletId, spec: &PreprocessSpec) -> TractResult<OutletId> {
        let planes = self.op("image.planes", AxisOp::Move(3, 1), &[image])?;
        let x = self.op("image.f32", ops::cast::cast(f32::datum_type()), &[planes])?;
        let per_channel = |values: [f32; 3]| Tensor::from_shape(&[3, 1, 1], &values);
        let scale = self.konst("image.scale", per_channel(spec.scale)?)?;
        let x = self.binary("image.scaled", ops::math::mul(), x, scale)?;
        let offset = self.konst("image.offset", per_channel(spec.offset)?)?;
        self.binary("pixel_values", ops::math::add(), x, offset)
    }

    pub fn konst(&mut self, name: &str, tensor: Tensor) -> TractResult<OutletId> {
        self.model.add_const(name, tensor)
    }

    pub fn scalar(&mut self, name: &str, value: f32) -> TractResult<OutletId> {
        self.konst(name, tensor0(value))
    }

    pub fn op(
        &mut self,
        name: &str,
        op: impl Into<Box<dyn TypedOp>>,
        inputs: &[OutletId],
    ) -> TractResult<OutletId> {
        Ok(self.model.wire_node(name, op, inputs).with_context(|| format!("wiring {name}"))?[0])
    }

    pub fn binary(&mut self, name: &str, op: TypedBinOp, a: OutletId, b: OutletId) -> TractResult<OutletId> {
        let inputs = wire_rank_broadcast(name, &mut self.model, &[a, b])?;
        self.op(name, op, &inputs)
    }

    /// `a op scalar`.
    pub fn binary_scalar(
        &mut self,
        name: &str,
        op: TypedBinOp,
        a: OutletId,
        value: f32,
    ) -> TractResult<OutletId> {
        let b = self.scalar(&format!("{name}.value"), value)?;
        self.binary(name, op, a, b)
    }

    pub fn einsum(&mut self, name: &str, expr: &str, inputs: &[OutletId]) -> TractResult<OutletId> {
        let op = EinSum::new(expr.parse()?, f32::datum_type());
        self.op(name, op, inputs)
    }

    /// `x @ weight^T + bias` over the last axis of `x`, with `weight` laid out `[out, in]` as in PyTorch.
    pub fn linear(
        &mut self,
        name: &str,
        x: OutletId,
        weight: Tensor,
        bias: Option<Tensor>,
    ) -> TractResult<OutletId> {
        let rank = self.model.outlet_fact(x)?.rank();
        let batch: String = "abcdefgh".chars().take(rank - 1).collect();
        let w = self.konst(&format!("{name}.weight"), weight)?;
        let y = self.einsum(&format!("{name}.matmul"), &format!("{batch}i,oi->{batch}o"), &[x, w])?;
        match bias {
            Some(bias) => {
                let b = self.konst(&format!("{name}.bias"), bias)?;
                self.binary(name, ops::math::add(), y, b)
            }
            None => Ok(y),
        }
    }

    /// `x @ weight^T + bias` on int8 operands, as one runtime operation ([`runtime::LinearI8`]):
    /// `weight` (`[out, in]`, f32) is quantized here per output channel, `x` per row at run time
    /// (the scale follows each token's actual range instead of a calibrated guess); the product
    /// accumulates in i32 and is scaled back to f32 before the bias is added.
    pub fn linear_int8(
        &mut self,
        name: &str,
        x: OutletId,
        weight: &Tensor,
        bias: Option<Tensor>,
    ) -> TractResult<OutletId> {
        let (quantized, scales) = quantize_channels(weight)?;
        let outputs = quantized.shape()[0];
        let bias = match bias {
            Some(bias) => bias,
            None => Tensor::zero::<f32>(&[outputs])?,
        };
        let inputs = [
            x,
            self.konst(&format!("{name}.weight_i8"), quantized)?,
            self.konst(&format!("{name}.weight_scale"), scales)?,
            self.konst(&format!("{name}.bias"), bias)?,
        ];
        self.op(name, runtime::LinearI8, &inputs)
    }

    /// `x @ weight^T + bias` on bf16 operands, as one runtime operation ([`runtime::LinearBf16`]):
    /// `weight` (`[out, in]`, f32) is rounded to bf16 here, `x` per value at run time; the products
    /// accumulate in f32.
    pub fn linear_bf16(
        &mut self,
        name: &str,
        x: OutletId,
        weight: &Tensor,
        bias: Option<Tensor>,
    ) -> TractResult<OutletId> {
        let bias = match bias {
            Some(bias) => bias,
            None => Tensor::zero::<f32>(&[weight.shape()[0]])?,
        };
        let inputs = [
            x,
            self.konst(&format!("{name}.weight_bf16"), runtime::LinearBf16::weights(weight)?)?,
            self.konst(&format!("{name}.bias"), bias)?,
        ];
        self.op(name, runtime::LinearBf16, &inputs)
    }

    /// Layer normalization over the last axis, as `torch.nn.LayerNorm`.
    pub fn layer_norm(
        &mut self,
        name: &str,
        x: OutletId,
        gamma: Tensor,
        beta: Tensor,
        eps: f32,
    ) -> TractResult<OutletId> {
        let fact = self.model.outlet_fact(x)?.clone();
        let axis = fact.rank() - 1;
        let width = fact.shape[axis].to_i64()? as f32;
        let sum =
            self.op(&format!("{name}.sum"), Reduce { axes: tvec!(axis), reducer: Reducer::Sum }, &[x])?;
        let mean = self.binary_scalar(&format!("{name}.mean"), ops::math::mul(), sum, 1.0 / width)?;
        let centered = self.binary(&format!("{name}.centered"), ops::math::sub(), x, mean)?;
        let var = self.op(
            &format!("{name}.var"),
            Reduce { axes: tvec!(axis), reducer: Reducer::MeanOfSquares },
            &[centered],
        )?;
        let var_eps = self.binary_scalar(&format!("{name}.var_eps"), ops::math::add(), var, eps)?;
        let inv_std = self.op(&format!("{name}.inv_std"), ops::math::rsqrt(), &[var_eps])?;
        let normed = self.binary(&format!("{name}.normed"), ops::math::mul(), centered, inv_std)?;
        let g = self.konst(&format!("{name}.gamma"), gamma)?;
        let scaled = self.binary(&format!("{name}.scaled"), ops::math::mul(), normed, g)?;
        let b = self.konst(&format!("{name}.beta"), beta)?;
        self.binary(name, ops::math::add(), scaled, b)
    }

    /// The activation as elementary operations (each has an NNEF serializer).
    pub fn activation(&mut self, name: &str, x: OutletId, act: Activation) -> TractResult<OutletId> {
        use ops::math::{add, mul};
        match act {
            Activation::Gelu => {
                let t =
                    self.binary_scalar(&format!("{name}.scaled"), mul(), x, std::f32::consts::FRAC_1_SQRT_2)?;
                let e = self.op(&format!("{name}.erf"), ops::math::erf(), &[t])?;
                let one_plus = self.binary_scalar(&format!("{name}.one_plus"), add(), e, 1.0)?;
                let prod = self.binary(&format!("{name}.prod"), mul(), x, one_plus)?;
                self.binary_scalar(name, mul(), prod, 0.5)
            }
            Activation::GeluTanh => {
                let x2 = self.binary(&format!("{name}.x2"), mul(), x, x)?;
                let x3 = self.binary(&format!("{name}.x3"), mul(), x2, x)?;
                let cubic = self.binary_scalar(&format!("{name}.cubic"), mul(), x3, 0.044715)?;
                let inner = self.binary(&format!("{name}.inner"), add(), x, cubic)?;
                let scale = (2.0 / std::f32::consts::PI).sqrt();
                let scaled = self.binary_scalar(&format!("{name}.scaled"), mul(), inner, scale)?;
                let t = self.op(&format!("{name}.tanh"), ops::math::tanh(), &[scaled])?;
                let one_plus = self.binary_scalar(&format!("{name}.one_plus"), add(), t, 1.0)?;
                let prod = self.binary(&format!("{name}.prod"), mul(), x, one_plus)?;
                self.binary_scalar(name, mul(), prod, 0.5)
            }
            Activation::QuickGelu => {
                let scaled = self.binary_scalar(&format!("{name}.scaled"), mul(), x, 1.702)?;
                let gate = self.op(&format!("{name}.sigmoid"), ops::nn::sigmoid(), &[scaled])?;
                self.binary(name, mul(), x, gate)
            }
            Activation::Silu => {
                let gate = self.op(&format!("{name}.sigmoid"), ops::nn::sigmoid(), &[x])?;
                self.binary(name, mul(), x, gate)
            }
            Activation::Relu => self.binary_scalar(name, ops::math::max(), x, 0.0),
        }
    }

    pub fn softmax(&mut self, name: &str, x: OutletId, axis: usize) -> TractResult<OutletId> {
        let op = Softmax { axes: tvec!(axis), quant_output_dt: None, kind: SoftmaxKind::Softmax };
        self.op(name, op, &[x])
    }

    /// Reduces `axis` with `reducer` and drops it.
    pub fn reduce_drop(
        &mut self,
        name: &str,
        x: OutletId,
        axis: usize,
        reducer: Reducer,
    ) -> TractResult<OutletId> {
        let kept = self.op(&format!("{name}.keep"), Reduce { axes: tvec!(axis), reducer }, &[x])?;
        self.op(name, AxisOp::Rm(axis), &[kept])
    }

    /// `x @ weight^T + bias` in `precision`: [`GraphWiring::linear`], [`GraphWiring::linear_int8`] or
    /// [`GraphWiring::linear_bf16`].
    pub fn linear_in(
        &mut self,
        precision: Precision,
        name: &str,
        x: OutletId,
        weight: Tensor,
        bias: Option<Tensor>,
    ) -> TractResult<OutletId> {
        match precision {
            Precision::F32 => self.linear(name, x, weight, bias),
            Precision::Int8 => self.linear_int8(name, x, &weight, bias),
            Precision::Bf16 => self.linear_bf16(name, x, &weight, bias),
        }
    }

    /// `conv` applied to `x`, whose axes are laid out as `format` (`NCHW` as PyTorch, or `NHWC`).
    pub fn conv2d(
        &mut self,
        name: &str,
        x: OutletId,
        format: DataFormat,
        conv: Conv2d,
    ) -> TractResult<OutletId> {
        let &[outputs, group_inputs, kh, kw] = conv.kernel.shape() else {
            bail!(
                "{name}: a convolution kernel is [out, in / groups, h, w], found {:?}",
                conv.kernel.shape()
            );
        };
        let [ph, pw] = conv.padding;
        let pool_spec = PoolSpec {
            data_format: format,
            kernel_shape: tvec![kh, kw],
            padding: PaddingSpec::Explicit(tvec![ph, pw], tvec![ph, pw]),
            dilations: None,
            strides: Some(tvec![conv.stride[0], conv.stride[1]]),
            input_channels: group_inputs * conv.groups,
            output_channels: outputs,
        };
        let op = Conv { pool_spec, kernel_fmt: KernelFormat::OIHW, group: conv.groups, q_params: None };
        let bias = match conv.bias {
            Some(bias) => bias,
            None => Tensor::zero::<f32>(&[outputs])?,
        };
        let kernel = self.konst(&format!("{name}.kernel"), conv.kernel)?;
        let bias = self.konst(&format!("{name}.bias"), bias)?;
        self.op(name, op, &[x, kernel, bias])
    }

    /// Max pooling of `x` (laid out as `format`) over `window`; padding is never the maximum, as in
    /// `nn.MaxPool2d`.
    pub fn max_pool2d(
        &mut self,
        name: &str,
        x: OutletId,
        format: DataFormat,
        window: PoolWindow,
    ) -> TractResult<OutletId> {
        let shape = self.model.outlet_fact(x)?.shape.to_tvec();
        let channels = format.shape(shape)?.c().to_usize()?;
        let pool_spec = PoolSpec {
            data_format: format,
            kernel_shape: tvec![window.size; 2],
            padding: PaddingSpec::Explicit(tvec![window.padding; 2], tvec![window.padding; 2]),
            dilations: None,
            strides: Some(tvec![window.stride; 2]),
            input_channels: channels,
            output_channels: channels,
        };
        self.op(name, MaxPool { pool_spec, with_index_outputs: None }, &[x])
    }

    /// The mean of `x` (laid out as `format`) over its spatial axes, which are dropped: `[N, C]`.
    pub fn global_average_pool(
        &mut self,
        name: &str,
        x: OutletId,
        format: DataFormat,
    ) -> TractResult<OutletId> {
        let shape = format.shape(self.model.outlet_fact(x)?.shape.to_tvec())?;
        let first = shape.h_axis();
        let spatial = shape.hw_dims().to_vec();
        let count = spatial.iter().product::<TDim>().to_i64()? as f32;
        let axes: TVec<usize> = (first..first + spatial.len()).collect();
        let sum = self.op(&format!("{name}.sum"), Reduce { axes, reducer: Reducer::Sum }, &[x])?;
        let mut pooled = self.binary_scalar(&format!("{name}.mean"), ops::math::div(), sum, count)?;
        // One squeeze per axis: NNEF cannot read back a reshape to no dimensions.
        for axis in (first + 1..first + spatial.len()).rev() {
            pooled = self.op(&format!("{name}.squeeze{axis}"), AxisOp::Rm(axis), &[pooled])?;
        }
        self.op(name, AxisOp::Rm(first), &[pooled])
    }

    /// Appends the classification head: `confidence` (top-1 softmax probability, `f32[N]`), `class_index`
    /// (argmax, `i64[N]`) and `logits` (`f32[N, classes]`), and makes them the model's outputs.
    pub fn classification_outputs(mut self, logits: OutletId) -> TractResult<TypedModel> {
        let logits = self.op(crate::LOGITS_OUTPUT, ops::identity::Identity, &[logits])?;
        let probs = self.softmax("probabilities", logits, 1)?;
        let confidence = self.reduce_drop(crate::CONFIDENCE_OUTPUT, probs, 1, Reducer::Max)?;
        let class = self.reduce_drop(crate::CLASS_OUTPUT, logits, 1, Reducer::ArgMax(false))?;
        self.model.select_output_outlets(&[confidence, class, logits])?;
        Ok(self.model)
    }
}

/// Symmetric per-output-channel int8 quantization of a `[out, in]` f32 weight: the `i8` weight and the
/// `f32[out]` scales (`max|row| / 127`) that map it back.
fn quantize_channels(weight: &Tensor) -> TractResult<(Tensor, Tensor)> {
    let shape = weight.shape();
    ensure!(shape.len() == 2, "an int8 linear weight must be [out, in], found {shape:?}");
    let (rows, width) = (shape[0], shape[1]);
    let values: Vec<f32> = weight.to_plain_array_view::<f32>()?.iter().copied().collect();
    let mut quantized = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(rows);
    for row in values.chunks_exact(width) {
        let peak = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if peak > 0.0 { peak / 127.0 } else { 1.0 };
        quantized.extend(row.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8));
        scales.push(scale);
    }
    Ok((Tensor::from_shape(&[rows, width], &quantized)?, Tensor::from_shape(&[rows], &scales)?))
}

/// Concrete dimensions as tract's symbolic `TDim`s, for `AxisOp::Reshape`.
pub fn dims(values: &[usize]) -> TVec<TDim> {
    values.iter().map(|v| v.to_dim()).collect()
}

/// A 2-D convolution as PyTorch's `nn.Conv2d` holds it: `kernel` `[out, in / groups, h, w]` and an optional
/// `bias` `[out]`, with `(height, width)` strides and symmetric zero padding.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// `[out, in / groups, h, w]`.
    pub kernel: Tensor,
    /// `[out]`, none for `bias=False`.
    pub bias: Option<Tensor>,
    /// Step along height and width.
    pub stride: [usize; 2],
    /// Zeros added before and after along height and width.
    pub padding: [usize; 2],
    /// Channel groups: `in` for a depthwise convolution.
    pub groups: usize,
}

impl Conv2d {
    /// A convolution with stride 1, no padding, one group: `nn.Conv2d`'s defaults.
    pub fn new(kernel: Tensor, bias: Option<Tensor>) -> Conv2d {
        Conv2d { kernel, bias, stride: [1, 1], padding: [0, 0], groups: 1 }
    }

    /// With `stride` along `(height, width)`.
    pub fn stride(self, stride: [usize; 2]) -> Conv2d {
        Conv2d { stride, ..self }
    }

    /// With `padding` zeros on both sides along `(height, width)`.
    pub fn padding(self, padding: [usize; 2]) -> Conv2d {
        Conv2d { padding, ..self }
    }

    /// With `groups` channel groups.
    pub fn groups(self, groups: usize) -> Conv2d {
        Conv2d { groups, ..self }
    }

    /// This convolution followed by `norm`, as one convolution: per output channel
    /// `s = gamma / sqrt(var + eps)`, `kernel * s` and `(bias - mean) * s + beta`, computed in f64 and
    /// rounded once, so the folded layer is as exact as f32 allows.
    pub fn fold_batch_norm(self, norm: &BatchNorm) -> TractResult<Conv2d> {
        let outputs = self.kernel.shape()[0];
        let channels = [&norm.weight, &norm.bias, &norm.running_mean, &norm.running_var].map(|v| v.len());
        ensure!(
            outputs > 0 && channels.iter().all(|c| *c == outputs),
            "batch norm with {channels:?} channels after a convolution with {outputs} outputs"
        );
        let mut kernel: Vec<f32> = self.kernel.to_plain_array_view::<f32>()?.iter().copied().collect();
        let bias: Vec<f32> = match &self.bias {
            Some(bias) => bias.to_plain_array_view::<f32>()?.iter().copied().collect(),
            None => vec![0.0; outputs],
        };
        let per_output = kernel.len() / outputs;
        ensure!(per_output > 0, "an empty convolution kernel {:?}", self.kernel.shape());
        let mut folded_bias = Vec::with_capacity(outputs);
        for (o, weights) in kernel.chunks_exact_mut(per_output).enumerate() {
            let scale = norm.weight[o] as f64 / (norm.running_var[o] as f64 + norm.eps).sqrt();
            weights.iter_mut().for_each(|w| *w = (*w as f64 * scale) as f32);
            let shift = (bias[o] as f64 - norm.running_mean[o] as f64) * scale + norm.bias[o] as f64;
            folded_bias.push(shift as f32);
        }
        Ok(Conv2d {
            kernel: Tensor::from_shape(self.kernel.shape(), &kernel)?,
            bias: Some(Tensor::from_shape(&[outputs], &folded_bias)?),
            ..self
        })
    }
}

/// Eval-mode batch normalization (`nn.BatchNorm2d` with its running statistics), per channel.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    /// `gamma`.
    pub weight: Vec<f32>,
    /// `beta`.
    pub bias: Vec<f32>,
    /// The mean subtracted.
    pub running_mean: Vec<f32>,
    /// The variance divided by (its square root, with `eps`).
    pub running_var: Vec<f32>,
    /// Added to the variance.
    pub eps: f64,
}

impl BatchNorm {
    /// `{prefix}.weight`, `.bias`, `.running_mean` and `.running_var`, each `[channels]`.
    pub fn read(
        weights: &Weights,
        prefix: &str,
        channels: usize,
        eps: f64,
    ) -> Result<BatchNorm, ExportError> {
        let read = |name: &str| weights.values(&format!("{prefix}.{name}"), &[channels]);
        Ok(BatchNorm {
            weight: read("weight")?,
            bias: read("bias")?,
            running_mean: read("running_mean")?,
            running_var: read("running_var")?,
            eps,
        })
    }
}

/// A square pooling window: `size` x `size`, moved by `stride`, with `padding` on every side.
#[derive(Debug, Clone, Copy)]
pub struct PoolWindow {
    /// Side in pixels.
    pub size: usize,
    /// Step in pixels.
    pub stride: usize,
    /// Padding on each side, in pixels.
    pub padding: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn pseudo_random(count: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9) | 1;
        (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn channel_quantization_round_trips_within_half_a_step() -> TestResult {
        let values = pseudo_random(6 * 40, 1);
        let (quantized, scales) = quantize_channels(&Tensor::from_shape(&[6, 40], &values)?)?;
        let quantized = quantized.to_plain_array_view::<i8>()?.iter().copied().collect::<Vec<_>>();
        let scales = scales.to_plain_array_view::<f32>()?.iter().copied().collect::<Vec<_>>();
        for (row, (q, v)) in quantized.chunks(40).zip(values.chunks(40)).enumerate() {
            assert!(q.iter().any(|q| q.abs() == 127), "row {row} does not use the full range");
            for (q, v) in q.iter().zip(v) {
                assert!((*q as f32 * scales[row] - v).abs() <= scales[row] * 0.5 + 1e-7);
            }
        }
        Ok(())
    }

    /// The largest |lowered - f32| of a `rows x inputs -> outputs` linear layer that `lower` rewrites
    /// into a lower precision, unoptimized and optimized (packed weights, or tract's fallback by CPU).
    fn worst_difference_from_f32(
        (rows, inputs, outputs): (usize, usize, usize),
        lower: impl Fn(&mut GraphWiring, OutletId, &Tensor, Tensor) -> TractResult<OutletId>,
    ) -> TractResult<[f32; 2]> {
        let x = pseudo_random(rows * inputs, 2);
        let weight = Tensor::from_shape(&[outputs, inputs], &pseudo_random(outputs * inputs, 3))?;
        let bias = Tensor::from_shape(&[outputs], &pseudo_random(outputs, 4))?;
        let mut g = GraphWiring::new();
        let source = g.model.add_source("x", f32::fact([1, rows, inputs]))?;
        let exact = g.linear("f32", source, weight.clone(), Some(bias.clone()))?;
        let approx = lower(&mut g, source, &weight, bias)?;
        g.model.select_output_outlets(&[exact, approx])?;
        let input = Tensor::from_shape(&[1, rows, inputs], &x)?;
        let plain = g.model.clone().into_runnable()?.run(tvec!(input.clone().into_tvalue()))?;
        let optimized = g.model.into_optimized()?.into_runnable()?.run(tvec!(input.into_tvalue()))?;
        let worst = |outputs: TVec<TValue>| -> TractResult<f32> {
            let exact = outputs[0].to_plain_array_view::<f32>()?;
            let approx = outputs[1].to_plain_array_view::<f32>()?;
            Ok(exact.iter().zip(approx.iter()).fold(0f32, |m, (e, a)| m.max((e - a).abs())))
        };
        Ok([worst(plain)?, worst(optimized)?])
    }

    /// The int8 linear (runtime per-row quantization, i8 x i8 -> i32, rescale, bias) follows the f32
    /// one within the error two 8-bit roundings allow.
    #[test]
    fn int8_linear_follows_f32_linear() -> TestResult {
        let inputs = 64;
        let worst = worst_difference_from_f32((7, inputs, 24), |g, source, weight, bias| {
            g.linear_int8("int8", source, weight, Some(bias))
        })?;
        // Each product is off by at most half a step of each operand: |x|,|w| <= 1, steps 1/127.
        let tolerance = inputs as f32 * (1.0 / 127.0 + 1.0 / (127.0 * 127.0 * 4.0));
        for worst in worst {
            assert!(worst <= tolerance, "max |int8 - f32| {worst} above {tolerance}");
            assert!(worst > 0.0, "the int8 path returned exactly the f32 result: it did not quantize");
        }
        Ok(())
    }

    /// The bf16 linear (operands rounded to bf16, f32 sums, bias) follows the f32 one within bf16's
    /// relative rounding of both operands.
    #[test]
    fn bf16_linear_follows_f32_linear() -> TestResult {
        let inputs = 67;
        let worst = worst_difference_from_f32((7, inputs, 33), |g, source, weight, bias| {
            g.linear_bf16("bf16", source, weight, Some(bias))
        })?;
        // Each product is off by at most 2^-7 of itself (two roundings of 2^-8): |x|, |w| <= 1.
        let tolerance = inputs as f32 * 2f32.powi(-7);
        for worst in worst {
            assert!(worst <= tolerance, "max |bf16 - f32| {worst} above {tolerance}");
        }
        Ok(())
    }
}
