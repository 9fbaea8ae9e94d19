//! `LinearI8`: the whole int8 linear layer as one graph operation, f32 activations in and f32 outputs
//! out, and its NNEF form.
//!
//! Written with tract's stock operations, an int8 linear layer was nine nodes: quantize the input,
//! pack it, the i8 x i8 -> i32 product, a cast, two scale multiplications and the bias, each
//! writing a full copy of the activations. tract's VNNI kernel also broadcasts and re-biases the
//! weight side inside its inner loop (one `vpaddb` per `vpdpbusd`). On one core of a ViT-B/16 those
//! nodes took about 100 ms per image against ONNX Runtime int8's 62. This operation quantizes each
//! token straight into the kernel's layout, runs an AVX-512 VNNI kernel whose inner loop is only
//! loads and `vpdpbusd`, and rescales, adds the bias and stores f32 in the same pass over the
//! accumulators. It lives in the runtime because the artifact's reader must know it, and is
//! serialized as the NNEF extension `kiln`.

use tract_nnef::internal::*;

use tract_core::ops::cast::cast;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math;

use crate::QuantizeRows;
use crate::linear_fusion::Fusion;
use crate::packed_linear::{self, CHANNELS, CacheLines, PackedLayer, PackedLinear};
use crate::quantize::quantize_row;

/// The NNEF fragment name of [`LinearI8`].
const PRIMITIVE: &str = "kiln_linear_i8";

/// Largest input width: `(x_q + 128) * w` summed over `k` inputs stays within i32 (255 * 128 * 2^16
/// < 2^31), so accumulation never overflows.
const MAX_INPUTS: usize = 1 << 16;

/// `x @ weight^T * (s_x * s_w) + bias` on int8 operands, f32 in and out. `x` (`f32[..., k]`) is
/// quantized per row at run time, symmetrically (`s_x = max|x| / 127`, so the scale follows each
/// token's real range); `weight` (`i8[n, k]`) was quantized per output channel at export, with
/// `scale` (`f32[n]`) its scales; `bias` is `f32[n]`. Products accumulate exactly in i32.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinearI8;

impl Op for LinearI8 {
    fn name(&self) -> StaticName {
        "LinearI8".into()
    }

    op_as_typed_op!();
}

impl EvalOp for LinearI8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let weights = PackedWeights::new(&inputs[1], &inputs[2], &inputs[3])?;
        Ok(tvec!(packed_linear::apply(&weights, &Fusion::default(), &inputs[0], None)?.into_tvalue()))
    }
}

impl TypedOp for LinearI8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let arity = (4, "input, weight, scale and bias");
        packed_linear::linear_output_facts("linear_i8", inputs, arity, (i8::datum_type(), "i8"))
    }

    /// Packs constant weights once, when the plan is built, instead of at every call. Without
    /// AVX-512 VNNI the layer becomes tract's own int8 operators instead, whose AVX2 and NEON kernels
    /// are far faster than the portable one.
    fn codegen(&self, model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
        let konst = |ix: usize| model.outlet_fact(node.inputs[ix]).map(|f| f.konst.clone());
        let (Some(weight), Some(scale), Some(bias)) = (konst(1)?, konst(2)?, konst(3)?) else {
            return Ok(None);
        };
        if Kernel::detect() == Kernel::Portable {
            return lower_to_tract(model, node, &scale, &bias).map(Some);
        }
        let packed = PackedLinear::new(PackedWeights::new(&weight, &scale, &bias)?);
        TypedModelPatch::replace_single_op(model, node, &[node.inputs[0]], packed).map(Some)
    }

    as_op!();
}

/// The layer in tract's operators: [`QuantizeRows`], the i8 x i8 -> i32 einsum, a cast, the row and
/// channel scales and the bias.
fn lower_to_tract(
    model: &TypedModel,
    node: &TypedNode,
    scale: &Tensor,
    bias: &Tensor,
) -> TractResult<TypedModelPatch> {
    let rank = model.outlet_fact(node.inputs[0])?.rank();
    let batch: String = "abcdefgh".chars().take(rank - 1).collect();
    ensure!(batch.len() == rank - 1, "linear_i8 input of rank {rank}: at most 9 axes");
    let mut per_channel = tvec![1; rank - 1];
    per_channel.push(scale.len());
    let name = &node.name;
    let mut patch = TypedModelPatch::default();
    let [x, weight] = [0, 1].map(|ix| patch.tap_model(model, node.inputs[ix]));
    let quantized = patch.wire_node(format!("{name}.quantize"), QuantizeRows, &[x?])?;
    let einsum = EinSum::new(format!("{batch}i,oi->{batch}o").parse()?, i32::datum_type());
    let product = patch.wire_node(format!("{name}.matmul"), einsum, &[quantized[0], weight?])?;
    let product = patch.wire_node(format!("{name}.cast"), cast(f32::datum_type()), &product)?[0];
    let y = patch.wire_node(format!("{name}.row_scale"), math::mul(), &[product, quantized[1]])?[0];
    let scale = patch.add_const(format!("{name}.channel_scale"), scale.clone().into_shape(&per_channel)?)?;
    let y = patch.wire_node(format!("{name}.scaled"), math::mul(), &[y, scale])?[0];
    let bias = patch.add_const(format!("{name}.bias_value"), bias.clone().into_shape(&per_channel)?)?;
    let y = patch.wire_node(format!("{name}.bias"), math::add(), &[y, bias])?[0];
    patch.shunt_outside(model, node.id.into(), y)?;
    Ok(patch)
}

/// One layer's weights in the kernel's layout: groups of [`CHANNELS`] output channels, each
/// `[ceil(k / 4)][CHANNELS][4]` bytes, so that one 64-byte load gives 16 channels x 4 inputs, the
/// operand `vpdpbusd` multiplies against 4 input bytes broadcast. Channels past `n` are zero.
#[derive(Clone, Debug)]
pub(crate) struct PackedWeights {
    k: usize,
    n: usize,
    blocks: CacheLines<i8>,
    /// Per channel (padded): `128 * sum_k w`, what the `+128` that makes activations unsigned adds.
    offsets: Vec<i32>,
    /// Per channel (padded): the weight scale.
    scales: Vec<f32>,
    /// Per channel (padded): the bias.
    bias: Vec<f32>,
}

impl PackedWeights {
    fn new(weight: &Tensor, scale: &Tensor, bias: &Tensor) -> TractResult<PackedWeights> {
        ensure!(weight.rank() == 2, "linear_i8 weights are [out, in], found {:?}", weight.shape());
        let (n, k) = (weight.shape()[0], weight.shape()[1]);
        ensure!(k <= MAX_INPUTS, "linear_i8 takes at most {MAX_INPUTS} inputs per row (i32 sums), found {k}");
        let weight = weight.cast_to::<i8>()?;
        let plain = weight.try_as_plain_ram()?;
        let values = plain.as_slice::<i8>()?;
        let per_channel =
            |tensor: &Tensor, what: &str| packed_linear::padded_channels("linear_i8", tensor, n, what);
        let (scales, bias) = (per_channel(scale, "scale")?, per_channel(bias, "bias")?);
        let quads = k.div_ceil(4);
        let mut blocks = CacheLines::zeroed(n.div_ceil(CHANNELS) * quads * CHANNELS * 4);
        let mut offsets = vec![0i32; scales.len()];
        for (o, row) in values.chunks_exact(k.max(1)).take(n).enumerate() {
            let (group, channel) = (o / CHANNELS, o % CHANNELS);
            for (i, &w) in row.iter().enumerate() {
                blocks[((group * quads + i / 4) * CHANNELS + channel) * 4 + i % 4] = w;
            }
            offsets[o] = 128 * row.iter().map(|&w| w as i32).sum::<i32>();
        }
        Ok(PackedWeights { k, n, blocks, offsets, scales, bias })
    }
}

impl PackedLayer for PackedWeights {
    const OPERATOR: &'static str = "linear_i8";
    const PACKED_NAME: &'static str = "PackedLinearI8";
    const ACCUMULATOR: DatumType = DatumType::I32;
    type Kernel = Kernel;

    fn inputs(&self) -> usize {
        self.k
    }

    fn outputs(&self) -> usize {
        self.n
    }

    fn detect() -> Kernel {
        Kernel::detect()
    }

    /// Quantizes the rows into this thread's buffer, then computes every tile (or, on AMX, every
    /// block of rows).
    fn compute_rows(&self, kernel: Kernel, values: &[f32], out: &mut [f32]) {
        // Rows of one AVX-512 tile pass over the weights once, as one AMX block does, in less time
        // (1.0-2.1x at one row in the int8_ops bench).
        #[cfg(target_arch = "x86_64")]
        let kernel = if kernel == Kernel::Amx && values.len() <= packed_linear::TOKENS * self.k {
            Kernel::Vnni
        } else {
            kernel
        };
        ACTIVATIONS.with_borrow_mut(|activations| {
            activations.pack(values, self.k, kernel);
            #[cfg(target_arch = "x86_64")]
            if kernel == Kernel::Amx {
                return self.compute_amx(activations, out);
            }
            let (packed, row_scales) = (activations.rows(), &activations.scales);
            let quads = self.k.div_ceil(4);
            let group_bytes = quads * CHANNELS * 4;
            let rows = row_scales.len();
            for (group, first, count) in packed_linear::tiles(rows, self.n.div_ceil(CHANNELS)) {
                let tile = Tile {
                    activations: &packed[first * quads * 4..][..count * quads * 4],
                    weights: &self.blocks[group * group_bytes..][..group_bytes],
                    next: packed_linear::next_share(&self.blocks, group, group_bytes, first, rows),
                    quads,
                    row_scales: &row_scales[first..first + count],
                    channel: group * CHANNELS,
                    layer: self,
                };
                let out = &mut out[first * self.n..(first + count) * self.n];
                match kernel {
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Vnni | Kernel::Amx => tile.compute_vnni(out),
                    Kernel::Portable => tile.compute_portable(out),
                }
            }
        })
    }
}

impl PackedWeights {
    /// Computes `out` from the rows `activations` holds with the AMX kernel's i32 sums, rescaled by
    /// the AVX-512 kernel's epilogue.
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    fn compute_amx(&self, activations: &PackedActivations, out: &mut [f32]) {
        let n = self.n;
        let layer = crate::amx::int8::PackedI8 { k: self.k, n, blocks: &self.blocks };
        let row_scales = &activations.scales;
        crate::amx::int8::products(&layer, activations.rows(), row_scales.len(), |channel, rows, sums| {
            for (row, sums) in rows.zip(&sums.0) {
                // SAFETY: `Kernel::Amx` is only chosen when the CPU also runs the VNNI kernel.
                unsafe { vnni::store_row(self, sums, row_scales[row], channel, &mut out[row * n..][..n]) };
            }
        });
    }
}

/// Which implementation computes the tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Intel AMX (`tdpbusd` on tiles, [`crate::amx::int8`]) where the CPU and OS allow it, with the
    /// VNNI kernel's quantizer and epilogue; it takes whole slices of rows, not tiles.
    #[cfg(target_arch = "x86_64")]
    Amx,
    /// AVX-512 VNNI (`vpdpbusd`), where the CPU has it.
    #[cfg(target_arch = "x86_64")]
    Vnni,
    /// Plain Rust, with the same integers and the same rescale formula: the unoptimized graph's path
    /// and the AVX-512 kernel's reference (optimized plans without VNNI use tract's operators).
    Portable,
}

impl Kernel {
    fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if vnni::available() {
            if crate::amx::int8::available() {
                return Kernel::Amx;
            }
            return Kernel::Vnni;
        }
        Kernel::Portable
    }
}

/// One tile of the product: up to [`packed_linear::TOKENS`] rows by one group of [`CHANNELS`] channels.
struct Tile<'a> {
    /// The rows' quantized activations, row-major, `quads * 4` bytes of `x_q + 128` each.
    activations: &'a [u8],
    /// The group's packed weights.
    weights: &'a [i8],
    /// This tile's share of the next group's, to fetch while it computes.
    next: &'a [i8],
    quads: usize,
    row_scales: &'a [f32],
    /// The group's first output channel.
    channel: usize,
    layer: &'a PackedWeights,
}

impl Tile<'_> {
    /// Writes the tile's outputs into `out` (its rows, `n` values each) with the AVX-512 kernel.
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    fn compute_vnni(&self, out: &mut [f32]) {
        // SAFETY: `Kernel::Vnni` (and `Amx`) is only chosen when the CPU has the features `vnni::tile` is
        // compiled for, and `Tile`'s slices have the lengths its loads assume (built by
        // `PackedWeights::rows`).
        unsafe { packed_linear::tile_for_rows!(self.row_scales.len(), vnni::tile(self, out)) }
    }

    /// The same arithmetic without SIMD, for CPUs without AVX-512 VNNI; also the tests' reference.
    fn compute_portable(&self, out: &mut [f32]) {
        let n = self.layer.n;
        for (t, &row_scale) in self.row_scales.iter().enumerate() {
            for c in 0..CHANNELS.min(n - self.channel) {
                let mut acc = 0i32;
                for q in 0..self.quads {
                    for b in 0..4 {
                        let x = self.activations[(t * self.quads + q) * 4 + b] as i32;
                        acc += x * self.weights[(q * CHANNELS + c) * 4 + b] as i32;
                    }
                }
                out[t * n + self.channel + c] = self.layer.rescale(acc, row_scale, self.channel + c);
            }
        }
    }
}

impl PackedWeights {
    /// The accumulator of channel `o` back to f32: the one formula both kernels use, so they agree
    /// bit for bit.
    fn rescale(&self, acc: i32, row_scale: f32, o: usize) -> f32 {
        ((acc - self.offsets[o]) as f32).mul_add(self.scales[o] * row_scale, self.bias[o])
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod vnni {
    use std::arch::x86_64::*;

    use super::{PackedWeights, Tile};
    use crate::packed_linear::avx512::{Fetch, claim_outputs, spill, store_channels};
    use crate::packed_linear::{CHANNELS, LANES, VECTORS};

    /// Whether this CPU runs [`tile`] and [`quantize_row`].
    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }

    /// [`super::quantize_row`] stored as `x_q + 128`, in two AVX-512 passes: the scale is computed
    /// the same way and `vcvtps2dq` rounds to nearest even as the portable rounding trick does, so
    /// both give the same bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn quantize_row(values: &[f32], out: &mut [u8]) -> f32 {
        debug_assert_eq!(values.len(), out.len());
        let chunks = values.chunks(LANES);
        let mask = |len: usize| if len == LANES { u16::MAX } else { (1u16 << len) - 1 };
        let mut peaks = _mm512_setzero_ps();
        for chunk in chunks.clone() {
            // SAFETY: the masked load reads `chunk.len()` floats of `chunk`.
            let v = unsafe { _mm512_maskz_loadu_ps(mask(chunk.len()), chunk.as_ptr()) };
            peaks = _mm512_max_ps(peaks, _mm512_abs_ps(v));
        }
        let scale = _mm512_reduce_max_ps(peaks).max(f32::MIN_POSITIVE) * (1.0 / 127.0);
        let inverse = _mm512_set1_ps(1.0 / scale);
        let offset = _mm_set1_epi8(-128);
        for (chunk, out) in chunks.zip(out.chunks_mut(LANES)) {
            let m = mask(chunk.len());
            // SAFETY: masked loads and stores of `chunk.len()` elements, within both slices.
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, chunk.as_ptr());
                let q = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v, inverse)));
                _mm_mask_storeu_epi8(out.as_mut_ptr() as *mut i8, m, _mm_xor_si128(q, offset));
            }
        }
        scale
    }

    /// The tile of `T` rows: `T * VECTORS` accumulators; per 4 inputs, `VECTORS` weight loads, `T`
    /// broadcasts and `T * VECTORS` `vpdpbusd`. Then offset, scale, bias and store, per register.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI; `tile.activations` holds `T` rows of `quads * 4` bytes,
    /// `tile.weights` `quads * CHANNELS * 4`, and `out` `T` rows of `n` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile<const T: usize>(tile: &Tile, out: &mut [f32]) {
        debug_assert!(tile.activations.len() >= tile.quads * T * 4);
        debug_assert!(tile.weights.len() >= tile.quads * CHANNELS * 4);
        let layer = tile.layer;
        let n = layer.n;
        debug_assert!(out.len() >= (T - 1) * n + tile.channel.min(n));
        claim_outputs::<T>(out, n, tile.channel);
        let mut acc = [[_mm512_setzero_si512(); VECTORS]; T];
        let stride = tile.quads * 4;
        let (mut x, mut w) = (tile.activations.as_ptr(), tile.weights.as_ptr());
        let mut fetch = Fetch::new(tile.next, tile.quads);
        for _ in 0..tile.quads {
            fetch.step();
            // SAFETY: within the slices, per the lengths above.
            unsafe {
                let weights: [__m512i; VECTORS] =
                    std::array::from_fn(|v| _mm512_loadu_si512(w.add(v * 64) as *const __m512i));
                for (t, row) in acc.iter_mut().enumerate() {
                    let inputs = _mm512_set1_epi32((x.add(t * stride) as *const i32).read_unaligned());
                    for (sum, weight) in row.iter_mut().zip(&weights) {
                        *sum = _mm512_dpbusd_epi32(*sum, inputs, *weight);
                    }
                }
                x = x.add(4);
                w = w.add(CHANNELS * 4);
            }
        }
        // SAFETY: 16 i32 lanes a register.
        let sums: [[i32; CHANNELS]; T] = unsafe { spill(&acc) };
        for (t, sums) in sums.iter().enumerate() {
            store_row(layer, sums, tile.row_scales[t], tile.channel, &mut out[t * n..][..n]);
        }
    }

    /// Rescales one row's `sums` of the channels from `channel` (offset, row and channel scale, bias:
    /// [`PackedWeights::rescale`]'s formula) and stores those below `n` into `out` (the row's `n`
    /// outputs). Both the VNNI and the AMX kernel end here, so they agree bit for bit.
    #[target_feature(enable = "avx512f")]
    pub fn store_row(
        layer: &PackedWeights,
        sums: &[i32; CHANNELS],
        row_scale: f32,
        channel: usize,
        out: &mut [f32],
    ) {
        let n = layer.n;
        let row_scale = _mm512_set1_ps(row_scale);
        for (v, sum) in sums.chunks_exact(LANES).enumerate() {
            let o = channel + v * LANES;
            if o >= n {
                break;
            }
            // SAFETY: 16 sums, and the per-channel vectors are padded to whole groups.
            unsafe {
                let sum = _mm512_loadu_si512(sum.as_ptr() as *const __m512i);
                let offset = _mm512_loadu_si512(layer.offsets.as_ptr().add(o) as *const __m512i);
                let value = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum, offset));
                let scale = _mm512_mul_ps(_mm512_loadu_ps(layer.scales.as_ptr().add(o)), row_scale);
                let y = _mm512_fmadd_ps(value, scale, _mm512_loadu_ps(layer.bias.as_ptr().add(o)));
                store_channels(out, o, y);
            }
        }
    }
}

/// Activations quantized for the kernels, in buffers each thread keeps between calls: a fresh
/// 600 KB buffer per call cost more in page faults than quantizing it (0.4 ms per ViT-B MLP).
#[derive(Default)]
struct PackedActivations {
    /// From `start`, row-major, `ceil(k / 4) * 4` bytes a row of `x_q + 128` (unsigned, as
    /// `vpdpbusd` wants; the padding inputs hold anything, against zero weights). For AMX, rows of
    /// [`crate::amx::int8::row_width`] bytes, as many as whole blocks take.
    rows: Vec<u8>,
    /// Where the rows start: the first 64-byte boundary, so that no tile row straddles two cache lines.
    start: usize,
    /// Per row: its scale.
    scales: Vec<f32>,
}

thread_local! {
    static ACTIVATIONS: std::cell::RefCell<PackedActivations> = Default::default();
}

impl PackedActivations {
    /// Quantizes the rows of `values` (width `k`) into `self`, with `kernel`'s quantizer.
    fn pack(&mut self, values: &[f32], k: usize, kernel: Kernel) {
        let rows = values.len() / k.max(1);
        let (width, padded_rows) = match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => (crate::amx::int8::row_width(k), rows.next_multiple_of(crate::amx::BLOCK)),
            _ => (k.div_ceil(4) * 4, rows),
        };
        // The bytes past each row's `k` meet zero weights and the rows past `rows` give outputs no one
        // stores, so the buffer keeps what it holds: filling it on every call cost a pass over it.
        let len = padded_rows * width + 63;
        if self.rows.len() < len {
            self.rows.resize(len, 128);
        }
        self.start = self.rows.as_ptr().align_offset(64);
        self.scales.clear();
        let packed = &mut self.rows[self.start..];
        for (values, out) in values.chunks_exact(k.max(1)).zip(packed.chunks_exact_mut(width)) {
            let out = &mut out[..k];
            self.scales.push(match kernel {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Kernel::Vnni` and `Amx` are only chosen when the CPU has the features it is
                // compiled for.
                #[allow(unsafe_code)]
                Kernel::Vnni | Kernel::Amx => unsafe { vnni::quantize_row(values, out) },
                Kernel::Portable => quantize_row_unsigned(values, out),
            });
        }
    }
}

impl PackedActivations {
    /// The packed rows.
    fn rows(&self) -> &[u8] {
        &self.rows[self.start..]
    }
}

/// [`quantize_row`], stored as `x_q + 128`.
fn quantize_row_unsigned(values: &[f32], out: &mut [u8]) -> f32 {
    let mut signed = vec![0i8; values.len()];
    let scale = quantize_row(values, &mut signed);
    for (u, s) in out.iter_mut().zip(signed) {
        *u = s as u8 ^ 0x80;
    }
    scale
}

/// Registers `kiln_linear_i8` in the `kiln` NNEF extension.
pub(crate) fn register(registry: &mut Registry) {
    registry.register_dumper(serialize);
    registry.register_primitive(
        PRIMITIVE,
        &[
            TypeName::Scalar.tensor().named("input"),
            TypeName::Integer.tensor().named("weight"),
            TypeName::Scalar.tensor().named("scale"),
            TypeName::Scalar.tensor().named("bias"),
        ],
        &[("output", TypeName::Scalar.tensor())],
        deserialize,
    );
}

fn serialize(ast: &mut IntoAst, node: &TypedNode, _op: &LinearI8) -> TractResult<Option<Arc<RValue>>> {
    crate::nnef::invocation_of(PRIMITIVE, ast, node)
}

fn deserialize(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let inputs = crate::nnef::named_wires(builder, invocation, &["input", "weight", "scale", "bias"])?;
    builder.wire(LinearI8, &inputs)
}

#[cfg(test)]
mod tests {
    use tract_linalg::multithread::{Executor, multithread_tract_scope};

    use super::*;
    use crate::packed_linear::testing::{pseudo_random, run};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A layer of `n` outputs over `k` inputs: i8 weights, scales and bias.
    fn layer(n: usize, k: usize, seed: usize) -> TractResult<[Tensor; 3]> {
        let weight: Vec<i8> = pseudo_random(n * k, seed).iter().map(|v| (v * 127.0) as i8).collect();
        let scale: Vec<f32> = pseudo_random(n, seed + 1).iter().map(|v| 0.01 + v.abs() * 0.01).collect();
        Ok([
            Tensor::from_shape(&[n, k], &weight)?,
            Tensor::from_shape(&[n], &scale)?,
            Tensor::from_shape(&[n], &pseudo_random(n, seed + 2))?,
        ])
    }

    /// A graph of one layer over a `[1, rows, k]` input.
    fn layer_model(rows: usize, k: usize, n: usize) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let source = model.add_source("x", f32::fact([1, rows, k]))?;
        let mut inputs = vec![source];
        for (name, tensor) in ["weight", "scale", "bias"].iter().zip(layer(n, k, 3)?) {
            inputs.push(model.add_const(*name, tensor)?);
        }
        let output = model.wire_node("linear", LinearI8, &inputs)?;
        model.select_output_outlets(&output)?;
        Ok(model)
    }

    /// Without AVX-512 VNNI the layer is rewritten into tract's operators: they compute the same
    /// function (up to the f32 rounding of another rescale order) and no packed layer is left.
    #[test]
    fn the_tract_rewrite_computes_the_same_layer() -> TestResult {
        let (rows, k, n) = (29, 48, 72);
        let model = layer_model(rows, k, n)?;
        let x = Tensor::from_shape(&[1, rows, k], &pseudo_random(rows * k, 5))?;
        let expected =
            model.clone().into_optimized()?.into_runnable()?.run(tvec!(x.clone().into_tvalue()))?;
        let mut lowered = model;
        let node = lowered.nodes().iter().find(|node| node.op_is::<LinearI8>()).ok_or("no layer")?.clone();
        let konst = |ix: usize| lowered.outlet_fact(node.inputs[ix])?.konst.clone().context("not a constant");
        let (scale, bias) = (konst(2)?, konst(3)?);
        lower_to_tract(&lowered, &node, &scale, &bias)?.apply(&mut lowered)?;
        let optimized = lowered.into_optimized()?;
        let ops: Vec<String> = optimized.nodes().iter().map(|node| node.op.name().to_string()).collect();
        assert!(ops.iter().any(|op| op == "OptMatMul"), "tract's matmul not used: {ops:?}");
        assert!(!ops.iter().any(|op| op.ends_with("LinearI8")), "a kiln layer is left: {ops:?}");
        let got = optimized.into_runnable()?.run(tvec!(x.into_tvalue()))?;
        let values = |t: &Tensor| -> TractResult<Vec<f32>> {
            Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect())
        };
        for (got, expected) in values(&got[0])?.iter().zip(values(&expected[0])?) {
            assert!((got - expected).abs() <= 1e-5 * (1.0 + expected.abs()), "{got} vs {expected}");
        }
        Ok(())
    }

    /// Every shape edge (rows not a multiple of the tile, k not a multiple of 4, n not a multiple of
    /// the channel group) gives `sum(x_q * w) * s_x * s_w + b`, computed here the obvious way.
    #[test]
    fn outputs_are_the_rescaled_integer_products() -> TestResult {
        for (rows, k, n) in [(1, 4, 1), (5, 7, 40), (12, 64, 32), (13, 70, 100), (30, 768, 65)] {
            let [weight, scale, bias] = layer(n, k, rows * k + n)?;
            let weights = PackedWeights::new(&weight, &scale, &bias)?;
            let x = pseudo_random(rows * k, 7);
            let values = |t: &Tensor| -> TractResult<Vec<f32>> {
                Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect())
            };
            let w: Vec<i8> = weight.to_plain_array_view::<i8>()?.iter().copied().collect();
            let (s, b) = (values(&scale)?, values(&bias)?);
            let got = run(&weights, &x, Kernel::detect())?;
            for (r, row) in x.chunks(k).enumerate() {
                let mut quantized = vec![0i8; k];
                let row_scale = quantize_row(row, &mut quantized);
                for o in 0..n {
                    let acc: i32 =
                        quantized.iter().zip(&w[o * k..][..k]).map(|(&x, &w)| x as i32 * w as i32).sum();
                    let expected = acc as f64 * row_scale as f64 * s[o] as f64 + b[o] as f64;
                    let error = (got[r * n + o] as f64 - expected).abs();
                    assert!(error <= 1e-5 * (1.0 + expected.abs()), "{rows}x{k}x{n}: row {r}, out {o}");
                }
            }
        }
        Ok(())
    }

    /// Inputs wide enough to overflow the i32 sums are refused when the weights are read.
    #[test]
    fn widths_that_could_overflow_are_refused() -> TestResult {
        let k = MAX_INPUTS + 1;
        let weight = Tensor::zero::<i8>(&[1, k])?;
        let per_channel = Tensor::zero::<f32>(&[1])?;
        let error = PackedWeights::new(&weight, &per_channel, &per_channel).err().ok_or("accepted")?;
        assert!(error.to_string().contains("at most 65536 inputs"), "{error}");
        Ok(())
    }

    /// The AVX-512 kernel and the portable one compute the same integers and round them the same
    /// way, so they agree bit for bit.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn vnni_and_portable_kernels_agree_bit_for_bit() -> TestResult {
        assert!(vnni::available(), "this test needs an AVX-512 VNNI CPU, as kiln's CI machines have");
        for (rows, k, n) in [(1, 4, 1), (5, 7, 40), (12, 64, 32), (25, 96, 100), (197, 768, 64)] {
            let [weight, scale, bias] = layer(n, k, rows + k * n)?;
            let weights = PackedWeights::new(&weight, &scale, &bias)?;
            let x = pseudo_random(rows * k, 11);
            let vnni = run(&weights, &x, Kernel::Vnni)?;
            let portable = run(&weights, &x, Kernel::Portable)?;
            let differ = vnni.iter().zip(&portable).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "{rows}x{k}x{n}: {differ} outputs differ");
        }
        Ok(())
    }

    /// The AMX kernel sums the same integers as the other two and rescales them with the VNNI
    /// kernel's epilogue, so all three agree bit for bit, on every shape edge: rows not a multiple
    /// of 16 or 32 or past one slice kept in cache (from 13: fewer run on the VNNI kernel), `k` not
    /// a multiple of 4 or 64 (a partial last tile step) or exactly whole steps, `n` not a multiple
    /// of 16 or 32.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn amx_vnni_and_portable_kernels_agree_bit_for_bit() -> TestResult {
        if !(vnni::available() && crate::amx::int8::available()) {
            eprintln!("skipped: this CPU or OS does not run AMX-INT8");
            return Ok(());
        }
        for (rows, k, n) in [
            (13, 1, 1),
            (14, 768, 768),
            (15, 7, 41),
            (16, 64, 16),
            (17, 65, 33),
            (31, 100, 65),
            (32, 64, 32),
            (33, 70, 101),
            (40, 1024, 48),
            (45, 771, 65),
            (150, 4001, 33),
            (197, 768, 64),
            (197, 6000, 40),
        ] {
            let [weight, scale, bias] = layer(n, k, rows + k * n)?;
            let weights = PackedWeights::new(&weight, &scale, &bias)?;
            let x = pseudo_random(rows * k, 13 + k);
            let amx = run(&weights, &x, Kernel::Amx)?;
            for other in [Kernel::Vnni, Kernel::Portable] {
                let expected = run(&weights, &x, other)?;
                let differ = amx.iter().zip(&expected).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(differ, 0, "{rows}x{k}x{n}: {differ} outputs differ from {other:?}");
            }
        }
        Ok(())
    }

    /// A graph holding the operation survives an NNEF write and read with [`crate::nnef`]; optimized (the
    /// weights packed once) on one thread or two, it computes what the unoptimized graph does.
    #[test]
    fn nnef_round_trip_and_threads_keep_the_outputs() -> TestResult {
        let (rows, k, n) = (29, 48, 72);
        let model = layer_model(rows, k, n)?;
        let x = Tensor::from_shape(&[1, rows, k], &pseudo_random(rows * k, 5))?;
        let expected = model.clone().into_runnable()?.run(tvec!(x.clone().into_tvalue()))?.remove(0);
        assert_eq!(expected.shape(), &[1, rows, n]);

        let mut buffer = vec![];
        crate::nnef().write_to_tar(&model, &mut buffer)?;
        let reloaded = crate::nnef().model_for_read(&mut &buffer[..])?.into_optimized()?;
        assert!(
            reloaded.nodes().iter().any(|node| node.op_is::<PackedLinear<PackedWeights>>()),
            "weights not packed"
        );
        let plan = reloaded.into_runnable()?;
        for executor in [Executor::SingleThread, Executor::multithread(2)] {
            let got = multithread_tract_scope(executor, || plan.run(tvec!(x.clone().into_tvalue())))?;
            let values = |t: &Tensor| -> TractResult<Vec<f32>> {
                Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect())
            };
            assert_eq!(values(&got[0])?, values(&expected)?);
        }
        Ok(())
    }
}
