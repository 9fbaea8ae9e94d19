//! `LinearBf16`: a linear layer on bf16 operands as one graph operation, f32 activations in and f32
//! outputs out, and its NNEF form.
//!
//! bf16 keeps f32's exponent and 8 bits of its mantissa: weights stored in it take half the bytes of
//! f32, and a product of two bf16 values is exact in f32, so with f32 accumulation the only errors
//! are the two roundings of the operands. AVX512_BF16's `vdpbf16ps` multiplies 16 channels by 2
//! inputs and accumulates in f32 in one instruction. This operation converts each token to bf16
//! straight into the kernel's layout, runs a kernel whose inner loop is only loads and `vdpbf16ps`,
//! and adds the bias while storing the accumulators. It is serialized as the NNEF extension `kiln`,
//! its weights as the `u16` bit patterns of bf16 values (NNEF has no bf16 type).

use tract_nnef::internal::*;

use tract_core::ops::einsum::EinSum;
use tract_core::ops::math;

use crate::linear_fusion::Fusion;
use crate::packed_linear::{self, CHANNELS, CacheLines, PackedLayer, PackedLinear};

/// The NNEF fragment name of [`LinearBf16`].
const PRIMITIVE: &str = "kiln_linear_bf16";

/// `x @ weight^T + bias` on bf16 operands, f32 in and out. `x` (`f32[..., k]`) is rounded to bf16 at
/// run time (to nearest, ties to even); `weight` (`u16[n, k]`, the bit patterns of bf16 values) was
/// rounded at export ([`LinearBf16::weights`]); `bias` is `f32[n]`. Products accumulate in f32.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinearBf16;

impl LinearBf16 {
    /// The weight operand of the layer for an f32 `weight` (`[n, k]`): each value rounded to the
    /// nearest bf16 (ties to even), as its `u16` bit pattern.
    pub fn weights(weight: &Tensor) -> TractResult<Tensor> {
        ensure!(weight.rank() == 2, "a bf16 linear weight must be [out, in], found {:?}", weight.shape());
        let weight = weight.cast_to::<f32>()?;
        let plain = weight.try_as_plain_ram()?;
        let bits: Vec<u16> = plain.as_slice::<f32>()?.iter().map(|&v| bf16_bits(v)).collect();
        Tensor::from_shape(weight.shape(), &bits)
    }
}

/// `value` rounded to the nearest bf16, ties to even, as `vcvtne2ps2bf16` does: NaN stays a (quiet)
/// NaN and subnormals become zeros of their sign, as `vdpbf16ps` would read them anyway.
pub(crate) fn bf16_bits(value: f32) -> u16 {
    let bits = value.to_bits();
    if value.is_nan() {
        ((bits >> 16) | 0x40) as u16
    } else if bits & 0x7f80_0000 == 0 {
        ((bits >> 16) & 0x8000) as u16
    } else {
        (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16
    }
}

/// The f32 a bf16 bit pattern stands for (exact).
pub(crate) fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Each value replaced by the nearest bf16 ([`bf16_bits`]), for the f32 kernels that compute on bf16
/// operands; with `vcvtneps2bf16` where the CPU has it (a value at a time took 0.5 ms of each ViT-B
/// attention layer).
pub(crate) fn round_to_bf16(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if bf16::available() {
        // SAFETY: checked above.
        #[allow(unsafe_code)]
        return unsafe { bf16::round_in_place(values) };
    }
    values.iter_mut().for_each(|v| *v = bf16_value(bf16_bits(*v)));
}

#[cfg(target_arch = "x86_64")]
pub(crate) use bf16::convert_row;

/// Writes output `o`'s inputs (`row`, bf16) into `blocks`, the kernels' layout for the second
/// operand: groups of [`CHANNELS`] outputs, each `[pairs][CHANNELS][2]`. Layers pack their weights
/// so, and attention its keys (the outputs of the scores).
pub(crate) fn place_row(row: &[u16], o: usize, pairs: usize, blocks: &mut [u16]) {
    let (group, channel) = (o / CHANNELS, o % CHANNELS);
    for (i, &w) in row.iter().enumerate() {
        blocks[((group * pairs + i / 2) * CHANNELS + channel) * 2 + i % 2] = w;
    }
}

/// Packs `count` rows (`row(o)`, the inputs of output `o`, f32) as the kernels' second operand,
/// rounded to bf16: [`place_row`]'s layout, a group of [`CHANNELS`] rows at a time. Each group's
/// rows are converted into `rows` (`CHANNELS` rows of `pairs * 2`), and each pair of inputs of
/// `LANES` channels is then one gather: placing a row value by value took a quarter of a ViT-B/16
/// attention head on Zen 4. Rows past `count` in the last group hold zeros. Attention packs its keys
/// so, the outputs of the scores' product.
///
/// # Safety
/// The CPU has AVX-512 F and BF16; every row holds at most `pairs * 2` values, and `packed` holds
/// `count.div_ceil(CHANNELS) * pairs * CHANNELS * 2`.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) unsafe fn pack_rows<'a>(
    row: impl Fn(usize) -> &'a [f32],
    count: usize,
    pairs: usize,
    rows: &mut Vec<u16>,
    packed: &mut [u16],
) {
    let width = pairs * 2;
    rows.resize(CHANNELS * width, 0);
    for group in 0..count.div_ceil(CHANNELS) {
        let first = group * CHANNELS;
        for (c, bf16) in rows.chunks_exact_mut(width).enumerate() {
            match first + c < count {
                // SAFETY: per the contract.
                true => unsafe { bf16::convert_row(row(first + c), 1.0, bf16) },
                false => bf16.fill(0),
            }
        }
        // SAFETY: `rows` holds `CHANNELS` rows of `pairs` pairs, the group's slot of `packed`
        // `pairs * CHANNELS * 2` values.
        unsafe { bf16::place_group(rows, pairs, &mut packed[first * width..][..CHANNELS * width]) };
    }
}

/// Packs `tokens` rows of values (`row(t)`, a whole number of [`CHANNELS`] each) as the second
/// operand of a product over tokens, rounded to bf16: groups of [`CHANNELS`] dimensions, each
/// `[pairs][CHANNELS][2]` with pairs of tokens interleaved, an odd count's last token paired with
/// zeros; pairs past `tokens` are left as they are. Attention's context multiplies its
/// probabilities by the values so packed, on AMX tiles or on `vdpbf16ps`.
///
/// # Safety
/// The CPU has AVX-512 F, BF16 and BW; `pairs >= tokens.div_ceil(2)`, `packed` holds
/// `pairs * 2` values per dimension.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) unsafe fn pack_tokens<'a>(
    row: impl Fn(usize) -> &'a [f32],
    tokens: usize,
    pairs: usize,
    packed: &mut [u16],
) {
    for s in (0..tokens).step_by(2) {
        let (first, next) = (row(s), if s + 1 < tokens { row(s + 1) } else { &[] });
        for group in 0..first.len() / CHANNELS {
            let dims = group * CHANNELS..(group + 1) * CHANNELS;
            let slot = &mut packed[(group * pairs + s / 2) * CHANNELS * 2..][..CHANNELS * 2];
            // SAFETY: per the contract.
            unsafe { bf16::interleave(&first[dims.clone()], next.get(dims).unwrap_or_default(), slot) };
        }
    }
}

impl Op for LinearBf16 {
    fn name(&self) -> StaticName {
        "LinearBf16".into()
    }

    op_as_typed_op!();
}

impl EvalOp for LinearBf16 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let weights = PackedWeights::new(&inputs[1], &inputs[2])?;
        Ok(tvec!(packed_linear::apply(&weights, &Fusion::default(), &inputs[0], None)?.into_tvalue()))
    }
}

impl TypedOp for LinearBf16 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let weights = (u16::datum_type(), "u16 (bf16 bit patterns)");
        packed_linear::linear_output_facts("linear_bf16", inputs, (3, "input, weight and bias"), weights)
    }

    /// Packs constant weights once, when the plan is built. Without AVX512_BF16 the layer becomes
    /// tract's f32 matmul on the weights widened to f32 once here: tract's AVX2/AVX-512/NEON f32
    /// kernels are far faster than a portable bf16 loop, and compute the same products (a bf16 value
    /// is exact in f32) in their own summation order.
    fn codegen(&self, model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
        let konst = |ix: usize| model.outlet_fact(node.inputs[ix]).map(|f| f.konst.clone());
        let (Some(weight), Some(bias)) = (konst(1)?, konst(2)?) else {
            return Ok(None);
        };
        if Kernel::detect() == Kernel::Portable {
            return lower_to_tract(model, node, &weight, &bias).map(Some);
        }
        let packed = PackedLinear::new(PackedWeights::new(&weight, &bias)?);
        TypedModelPatch::replace_single_op(model, node, &[node.inputs[0]], packed).map(Some)
    }

    as_op!();
}

/// The layer in tract's operators: the f32 einsum against the weights widened to f32, and the bias.
fn lower_to_tract(
    model: &TypedModel,
    node: &TypedNode,
    weight: &Tensor,
    bias: &Tensor,
) -> TractResult<TypedModelPatch> {
    let rank = model.outlet_fact(node.inputs[0])?.rank();
    let batch: String = "abcdefgh".chars().take(rank - 1).collect();
    ensure!(batch.len() == rank - 1, "linear_bf16 input of rank {rank}: at most 9 axes");
    let bits = weight.cast_to::<u16>()?;
    let plain = bits.try_as_plain_ram()?;
    let widened: Vec<f32> = plain.as_slice::<u16>()?.iter().map(|&b| bf16_value(b)).collect();
    let mut per_channel = tvec![1; rank - 1];
    per_channel.push(bias.len());
    let name = &node.name;
    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, node.inputs[0])?;
    let weight =
        patch.add_const(format!("{name}.weight_f32"), Tensor::from_shape(weight.shape(), &widened)?)?;
    let einsum = EinSum::new(format!("{batch}i,oi->{batch}o").parse()?, f32::datum_type());
    let y = patch.wire_node(format!("{name}.matmul"), einsum, &[x, weight])?[0];
    let bias = patch.add_const(format!("{name}.bias_value"), bias.clone().into_shape(&per_channel)?)?;
    let y = patch.wire_node(format!("{name}.bias"), math::add(), &[y, bias])?[0];
    patch.shunt_outside(model, node.id.into(), y)?;
    Ok(patch)
}

/// One layer's weights in the kernel's layout: groups of [`CHANNELS`] output channels, each
/// `[ceil(k / 2)][CHANNELS][2]` bf16 values, so that one 64-byte load gives 16 channels x 2 inputs,
/// the operand `vdpbf16ps` multiplies against 2 inputs broadcast. Channels past `n` and the input
/// past an odd `k` are zero.
#[derive(Clone, Debug)]
pub(crate) struct PackedWeights {
    k: usize,
    n: usize,
    blocks: CacheLines<u16>,
    /// Per channel (padded): the bias.
    bias: Vec<f32>,
}

impl PackedWeights {
    pub(crate) fn new(weight: &Tensor, bias: &Tensor) -> TractResult<PackedWeights> {
        ensure!(weight.rank() == 2, "linear_bf16 weights are [out, in], found {:?}", weight.shape());
        let (n, k) = (weight.shape()[0], weight.shape()[1]);
        let weight = weight.cast_to::<u16>()?;
        let plain = weight.try_as_plain_ram()?;
        let values = plain.as_slice::<u16>()?;
        let bias = packed_linear::padded_channels("linear_bf16", bias, n, "bias")?;
        let pairs = k.div_ceil(2);
        let mut blocks = CacheLines::zeroed(n.div_ceil(CHANNELS) * pairs * CHANNELS * 2);
        for (o, row) in values.chunks_exact(k.max(1)).take(n).enumerate() {
            place_row(row, o, pairs, &mut blocks);
        }
        Ok(PackedWeights { k, n, blocks, bias })
    }

    fn pairs(&self) -> usize {
        self.k.div_ceil(2)
    }

    /// [`Kernel::Widened`]: the rows rounded to bf16, kept in f32, into this thread's buffer, then
    /// every tile.
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    fn compute_widened(&self, values: &[f32], out: &mut [f32]) {
        let (pairs, n) = (self.pairs(), self.n);
        let width = pairs * 2;
        ROUNDED.with_borrow_mut(|rounded| {
            let rows = values.len() / self.k;
            rounded.resize(rows * width, 0.0);
            for (values, row) in values.chunks_exact(self.k).zip(rounded.chunks_exact_mut(width)) {
                let (inputs, padding) = row.split_at_mut(self.k);
                inputs.copy_from_slice(values);
                round_to_bf16(inputs);
                padding.fill(0.0);
            }
            let group_values = pairs * CHANNELS * 2;
            for (group, first, count) in packed_linear::tiles(rows, n.div_ceil(CHANNELS)) {
                let tile = widened::Tile {
                    rows: &rounded[first * width..][..count * width],
                    weights: &self.blocks[group * group_values..][..group_values],
                    next: packed_linear::next_share(&self.blocks, group, group_values, first, rows),
                    pairs,
                    channel: group * CHANNELS,
                    bias: &self.bias,
                };
                // SAFETY: `Kernel::Widened` is only chosen where the CPU has AVX-512 F, and the
                // tile's slices have the lengths `widened::tile` assumes.
                unsafe {
                    packed_linear::tile_for_rows!(
                        count,
                        widened::tile(&tile, &mut out[first * n..(first + count) * n])
                    )
                }
            }
        })
    }
}

impl PackedLayer for PackedWeights {
    const OPERATOR: &'static str = "linear_bf16";
    const PACKED_NAME: &'static str = "PackedLinearBf16";
    const ACCUMULATOR: DatumType = DatumType::F32;
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

    /// Converts the rows to bf16 into this thread's buffer, then computes every tile.
    fn compute_rows(&self, kernel: Kernel, values: &[f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Amx {
            let layer =
                crate::amx::PackedBf16 { k: self.k, n: self.n, blocks: &self.blocks, bias: &self.bias };
            return crate::amx::linear_bf16(&layer, values, out);
        }
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Widened {
            return self.compute_widened(values, out);
        }
        ACTIVATIONS.with_borrow_mut(|activations| {
            let width = self.pairs() * 2;
            let rows = values.len() / self.k;
            // Every value of the rows is written below, the padding input as zero.
            activations.resize(rows * width, 0);
            for (values, row) in values.chunks_exact(self.k).zip(activations.chunks_exact_mut(width)) {
                match kernel {
                    // SAFETY: `Kernel::Bf16` and `Kernel::Amx` are only chosen on CPUs with AVX-512
                    // F and BF16. (`Kernel::Widened` returned above, with rows of its own.)
                    #[cfg(target_arch = "x86_64")]
                    #[allow(unsafe_code)]
                    Kernel::Bf16 | Kernel::Amx | Kernel::Widened => unsafe { convert_row(values, 1.0, row) },
                    Kernel::Portable => {
                        row.iter_mut().zip(values).for_each(|(b, &v)| *b = bf16_bits(v));
                        row[values.len()..].fill(0);
                    }
                }
            }
            let operands = Bf16Operands {
                activations: &activations[..rows * width],
                weights: &self.blocks,
                pairs: self.pairs(),
                n: self.n,
                bias: Some(&self.bias),
            };
            operands.compute(kernel, out);
        })
    }
}

/// The operands of a product on bf16 values in the AVX-512 kernel's layouts: a layer's converted
/// rows and packed weights, or what [`crate::AttentionBf16`] packs per head on CPUs without AMX.
pub(crate) struct Bf16Operands<'a> {
    /// Rows of `pairs * 2` values, row-major.
    pub(crate) activations: &'a [u16],
    /// `n` outputs in groups of [`CHANNELS`], each `[pairs][CHANNELS][2]` values, zero past `n`.
    pub(crate) weights: &'a [u16],
    /// Pairs of inputs per row.
    pub(crate) pairs: usize,
    /// Outputs per row.
    pub(crate) n: usize,
    /// Per output, padded to whole groups: added to the sums.
    pub(crate) bias: Option<&'a [f32]>,
}

impl Bf16Operands<'_> {
    /// Computes `out` (rows x `n`) tile by tile with `kernel` (AMX takes the AVX-512 kernel here).
    pub(crate) fn compute(&self, kernel: Kernel, out: &mut [f32]) {
        let width = self.pairs * 2;
        let rows = self.activations.len() / width.max(1);
        let group_values = self.pairs * CHANNELS * 2;
        for (group, first, count) in packed_linear::tiles(rows, self.n.div_ceil(CHANNELS)) {
            let tile = Tile {
                activations: &self.activations[first * width..][..count * width],
                weights: &self.weights[group * group_values..][..group_values],
                next: packed_linear::next_share(self.weights, group, group_values, first, rows),
                rows: count,
                channel: group * CHANNELS,
                operands: self,
            };
            let out = &mut out[first * self.n..(first + count) * self.n];
            match kernel {
                // `vdpbf16ps` computes the bits `Kernel::Widened` does, on these bf16 rows.
                #[cfg(target_arch = "x86_64")]
                Kernel::Bf16 | Kernel::Amx | Kernel::Widened => tile.compute_bf16(out),
                Kernel::Portable => tile.compute_portable(out),
            }
        }
    }
}

/// Whether `vdpbf16ps` ([`Kernel::Bf16`], [`Bf16Operands::compute`]) is this CPU's fastest product
/// of bf16 operands short of AMX: AVX512_BF16 on a core that runs it at full rate. AMD's cores
/// (Zen 4 on) do, two products a lane in the time `vfmadd231ps` takes for one. Intel's cores that
/// have it (Cooper Lake; Sapphire and Emerald Rapids where AMX is hidden, as under some
/// hypervisors) split it into micro-ops: 1.3 G/s against 5.4 G/s for `vfmadd231ps` on an Emerald
/// Rapids VM, half the products; there [`Kernel::Widened`] does the same arithmetic faster.
#[cfg(target_arch = "x86_64")]
pub(crate) fn pairs_pay() -> bool {
    bf16::available() && !intel()
}

/// Whether the CPU's vendor is Intel (CPUID leaf 0).
#[cfg(target_arch = "x86_64")]
fn intel() -> bool {
    let id = std::arch::x86_64::__cpuid(0);
    [id.ebx, id.edx, id.ecx] == [*b"Genu", *b"ineI", *b"ntel"].map(u32::from_le_bytes)
}

thread_local! {
    /// The rows converted to bf16 for the kernels (`ceil(k / 2) * 2` values a row, the padding input
    /// zero), in a buffer each thread keeps between calls, as `linear_i8` does for the same reason.
    static ACTIVATIONS: std::cell::RefCell<Vec<u16>> = Default::default();
    /// The same rows for [`Kernel::Widened`]: bf16 values held in f32, which its `vfmadd231ps`
    /// broadcast straight from memory.
    #[cfg(target_arch = "x86_64")]
    static ROUNDED: std::cell::RefCell<Vec<f32>> = Default::default();
}

/// Which implementation computes the tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Intel AMX (`tdpbf16ps` on tiles, [`crate::amx`]), where the CPU and OS allow it; it takes
    /// whole slices of rows, not the AVX-512 kernel's tiles (which compute the same on AMX CPUs).
    #[cfg(target_arch = "x86_64")]
    Amx,
    /// AVX512_BF16 (`vdpbf16ps`), where the CPU has it and runs it at full rate ([`pairs_pay`]).
    #[cfg(target_arch = "x86_64")]
    Bf16,
    /// AVX-512 F on AVX512_BF16 CPUs whose `vdpbf16ps` is slow: the same products with the weights
    /// widened to f32 in registers and each pair's two added by `vfmadd231ps` in `vdpbf16ps`'s order
    /// (odd, then even), so the outputs are the same bits. Attention heads, whose operands are
    /// packed per call, take the f32 kernels on rounded operands instead.
    #[cfg(target_arch = "x86_64")]
    Widened,
    /// Plain Rust, with `vdpbf16ps`'s exact arithmetic: the unoptimized graph's path and the
    /// AVX-512 kernel's reference (optimized plans without AVX512_BF16 use tract's f32 matmul).
    Portable,
}

impl Kernel {
    fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if crate::amx::bf16::available() {
            return Kernel::Amx;
        }
        #[cfg(target_arch = "x86_64")]
        if bf16::available() {
            return if pairs_pay() { Kernel::Bf16 } else { Kernel::Widened };
        }
        Kernel::Portable
    }
}

/// One tile of the product: up to [`packed_linear::TOKENS`] rows by one group of [`CHANNELS`] channels.
struct Tile<'a> {
    /// The rows' bf16 activations, row-major, `pairs * 2` values each.
    activations: &'a [u16],
    /// The group's packed weights.
    weights: &'a [u16],
    /// This tile's share of the next group's, to fetch while it computes.
    next: &'a [u16],
    rows: usize,
    /// The group's first output channel.
    channel: usize,
    operands: &'a Bf16Operands<'a>,
}

impl Tile<'_> {
    /// Writes the tile's outputs into `out` (its rows, `n` values each) with the AVX-512 kernel.
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    fn compute_bf16(&self, out: &mut [f32]) {
        // SAFETY: `Kernel::Bf16` is only chosen when the CPU has the features `bf16::tile` is
        // compiled for, and `Tile`'s slices have the lengths its loads assume (built by
        // `Bf16Operands::compute`).
        unsafe { packed_linear::tile_for_rows!(self.rows, bf16::tile(self, out)) }
    }

    /// `vdpbf16ps`'s arithmetic without SIMD: per pair of inputs, the odd product is added first,
    /// then the even one, each rounded to f32 (the products themselves are exact), then the bias.
    fn compute_portable(&self, out: &mut [f32]) {
        let (n, pairs) = (self.operands.n, self.operands.pairs);
        for t in 0..self.rows {
            let x = &self.activations[t * pairs * 2..][..pairs * 2];
            for c in 0..CHANNELS.min(n - self.channel) {
                let mut acc = 0f32;
                for p in 0..pairs {
                    let w = &self.weights[(p * CHANNELS + c) * 2..][..2];
                    acc += bf16_value(x[2 * p + 1]) * bf16_value(w[1]);
                    acc += bf16_value(x[2 * p]) * bf16_value(w[0]);
                }
                let bias = self.operands.bias.map_or(0.0, |bias| bias[self.channel + c]);
                out[t * n + self.channel + c] = acc + bias;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod bf16 {
    use std::arch::x86_64::*;

    use super::Tile;
    use crate::packed_linear::avx512::{Fetch, claim_outputs, spill, store_channels};
    use crate::packed_linear::{CHANNELS, LANES, VECTORS};

    /// Whether this CPU runs [`tile`], [`convert_row`] and [`round_in_place`].
    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }

    /// Rounds `values` times `scale` (an f32 product) to bf16 into `row`, zeros past them (`row` at
    /// least as long). `vcvtneps2bf16` rounds as [`super::bf16_bits`] does (to nearest even,
    /// subnormals to zero); a scale of 1 leaves the values as they are.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn convert_row(values: &[f32], scale: f32, row: &mut [u16]) {
        debug_assert!(values.len() <= row.len());
        let scale = _mm512_set1_ps(scale);
        for (i, chunk) in row.chunks_mut(LANES).enumerate() {
            let first = i * LANES;
            let count = values.len().saturating_sub(first).min(LANES);
            // SAFETY: the masked load reads `values[first..first + count]` (nothing past the slice,
            // whose pointer is only offset, not read, when `count` is 0); `__m256bh` and `__m256i`
            // are both 32 plain bytes.
            let bf16 = unsafe {
                let x = _mm512_maskz_loadu_ps(mask(count), values.as_ptr().wrapping_add(first));
                std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(_mm512_mul_ps(x, scale)))
            };
            if chunk.len() == LANES {
                // SAFETY: the store writes the 16 values of `chunk`.
                unsafe { _mm256_storeu_si256(chunk.as_mut_ptr() as *mut __m256i, bf16) };
            } else {
                let mut last = [0u16; LANES];
                // SAFETY: the store writes the 16 values of `last`.
                unsafe { _mm256_storeu_si256(last.as_mut_ptr() as *mut __m256i, bf16) };
                chunk.copy_from_slice(&last[..chunk.len()]);
            }
        }
    }

    /// Replaces each value by its nearest bf16, as [`convert_row`] rounds.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub fn round_in_place(values: &mut [f32]) {
        for chunk in values.chunks_mut(LANES) {
            let m = mask(chunk.len());
            // SAFETY: masked load and store of the chunk's elements; `__m256bh` and `__m256i` are
            // both 32 plain bytes.
            unsafe {
                let x = _mm512_maskz_loadu_ps(m, chunk.as_ptr());
                let bits = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(x));
                let rounded = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits));
                _mm512_mask_storeu_ps(chunk.as_mut_ptr(), m, _mm512_castsi512_ps(rounded));
            }
        }
    }

    /// Writes into `pair` (`CHANNELS * 2` bf16) the `CHANNELS` values of two tokens, `first` and `second`
    /// (zeros where `second` is empty: the last token of an odd count), rounded to bf16 and interleaved
    /// per dimension, as `tdpbf16ps` and `vdpbf16ps` read a pair of rows of their second operand.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BF16 and BW.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    pub unsafe fn interleave(first: &[f32], second: &[f32], pair: &mut [u16]) {
        const HALF: usize = CHANNELS / 2;
        debug_assert!(first.len() == CHANNELS && (second.is_empty() || second.len() == CHANNELS));
        debug_assert!(pair.len() == CHANNELS * 2);
        // Word i of the product takes word i / 2 of the first token's half, or of the second's (from 16).
        let order = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3,
            18, 2, 17, 1, 16, 0,
        );
        let load = |values: &[f32], half: usize| match values.get(half * HALF..(half + 1) * HALF) {
            // SAFETY: 16 values within `values`.
            Some(values) => unsafe { _mm512_loadu_ps(values.as_ptr()) },
            None => _mm512_setzero_ps(),
        };
        for half in 0..2 {
            // SAFETY: `__m512bh` and `__m512i` are both 64 plain bytes.
            let both = unsafe {
                std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(
                    load(second, half),
                    load(first, half),
                ))
            };
            // SAFETY: `pair` holds two halves of 32 words.
            unsafe {
                _mm512_storeu_si512(
                    pair.as_mut_ptr().add(half * CHANNELS) as *mut __m512i,
                    _mm512_permutexvar_epi16(order, both),
                )
            };
        }
    }

    /// Writes `rows` (`CHANNELS` rows of `pairs` pairs of bf16) into `group`, one group of
    /// [`super::place_row`]'s layout, `[pairs][CHANNELS][2]`: each pair of every row is a 32-bit
    /// lane, so a register of the group is a gather of one pair of `LANES` rows.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `rows` holds `CHANNELS * pairs * 2` values and `group` as many.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn place_group(rows: &[u16], pairs: usize, group: &mut [u16]) {
        debug_assert!(rows.len() >= CHANNELS * pairs * 2 && group.len() >= CHANNELS * pairs * 2);
        debug_assert!(CHANNELS * pairs <= i32::MAX as usize);
        let first: [i32; LANES] = std::array::from_fn(|lane| (lane * pairs) as i32);
        // SAFETY: `first` is 16 i32.
        let first = unsafe { _mm512_loadu_si512(first.as_ptr().cast()) };
        for half in 0..CHANNELS / LANES {
            let rows = rows[half * LANES * pairs * 2..].as_ptr();
            let mut index = first;
            for p in 0..pairs {
                // SAFETY: lane `l` reads pair `p` of row `half * LANES + l`, within `rows`; the store
                // writes the 16 pairs of those rows in the group's pair `p`, within `group`.
                unsafe {
                    let pair = _mm512_i32gather_epi32::<4>(index, rows.cast());
                    let slot = group.as_mut_ptr().add((p * CHANNELS + half * LANES) * 2);
                    _mm512_storeu_si512(slot.cast(), pair);
                }
                index = _mm512_add_epi32(index, _mm512_set1_epi32(1));
            }
        }
    }

    /// The mask of the first `count` (at most 16) lanes.
    fn mask(count: usize) -> u16 {
        ((1u32 << count) - 1) as u16
    }

    /// The tile of `T` rows: `T * VECTORS` accumulators; per 2 inputs, `VECTORS` weight loads, `T`
    /// broadcasts and `T * VECTORS` `vdpbf16ps`. Then bias and store, per register.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `tile.activations` holds `T` rows of `pairs * 2` values,
    /// `tile.weights` `pairs * CHANNELS * 2`, and `out` `T` rows of `n` values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn tile<const T: usize>(tile: &Tile, out: &mut [f32]) {
        let operands = tile.operands;
        let (n, pairs) = (operands.n, operands.pairs);
        debug_assert!(tile.activations.len() >= pairs * T * 2);
        debug_assert!(tile.weights.len() >= pairs * CHANNELS * 2);
        debug_assert!(out.len() >= T * n);
        claim_outputs::<T>(out, n, tile.channel);
        let mut acc = [[_mm512_setzero_ps(); VECTORS]; T];
        let stride = pairs * 2;
        let (mut x, mut w) = (tile.activations.as_ptr(), tile.weights.as_ptr());
        let mut fetch = Fetch::new(tile.next, pairs);
        for _ in 0..pairs {
            fetch.step();
            // SAFETY: within the slices, per the lengths above; `__m512i` and `__m512bh` are both
            // 64 plain bytes.
            unsafe {
                let weights: [__m512bh; VECTORS] = std::array::from_fn(|v| {
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                        w.add(v * LANES * 2) as *const __m512i
                    ))
                });
                for (t, row) in acc.iter_mut().enumerate() {
                    let pair = (x.add(t * stride) as *const i32).read_unaligned();
                    let inputs = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
                    for (sum, weight) in row.iter_mut().zip(&weights) {
                        *sum = _mm512_dpbf16_ps(*sum, inputs, *weight);
                    }
                }
                x = x.add(2);
                w = w.add(CHANNELS * 2);
            }
        }
        store_sums(&acc, operands.bias, tile.channel, out);
    }

    /// Adds the bias (padded to whole groups) to the sums `acc` of `T` rows from `channel` and
    /// stores those below `n` into `out` (`T` rows of `n` values): both AVX-512 kernels end here.
    #[target_feature(enable = "avx512f")]
    pub fn store_sums<const T: usize>(
        acc: &[[__m512; VECTORS]; T],
        bias: Option<&[f32]>,
        channel: usize,
        out: &mut [f32],
    ) {
        let n = out.len() / T;
        // SAFETY: 16 f32 lanes a register.
        let sums: [[f32; CHANNELS]; T] = unsafe { spill(acc) };
        for (t, sums) in sums.iter().enumerate() {
            let out = &mut out[t * n..][..n];
            for (v, sum) in sums.chunks_exact(LANES).enumerate() {
                let o = channel + v * LANES;
                if o >= n {
                    break;
                }
                // SAFETY: 16 sums, and the bias is padded to whole groups.
                let y = unsafe {
                    let sum = _mm512_loadu_ps(sum.as_ptr());
                    match bias {
                        Some(bias) => _mm512_add_ps(sum, _mm512_loadu_ps(bias.as_ptr().add(o))),
                        None => sum,
                    }
                };
                store_channels(out, o, y);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod widened {
    use std::arch::x86_64::*;

    use crate::packed_linear::avx512::{Fetch, claim_outputs};
    use crate::packed_linear::{CHANNELS, LANES, VECTORS};

    /// One tile of [`super::Kernel::Widened`]: up to [`crate::packed_linear::TOKENS`] rows by one
    /// group of [`CHANNELS`] channels.
    pub struct Tile<'a> {
        /// The rows' activations rounded to bf16, in f32, row-major, `pairs * 2` values each.
        pub rows: &'a [f32],
        /// The group's packed weights, `[pairs][CHANNELS][2]` bf16.
        pub weights: &'a [u16],
        /// This tile's share of the next group's, to fetch while it computes.
        pub next: &'a [u16],
        pub pairs: usize,
        /// The group's first output channel.
        pub channel: usize,
        /// Per output, padded to whole groups.
        pub bias: &'a [f32],
    }

    /// The tile of `T` rows: `T * VECTORS` accumulators; per pair of inputs, `VECTORS` weight loads
    /// widened to two f32 registers each (the even input's weight shifted up, the odd one's masked),
    /// then per row two `vfmadd231ps` a register, each broadcasting its input from memory.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `tile.rows` holds `T` rows of `pairs * 2` values, `tile.weights`
    /// `pairs * CHANNELS * 2`, and `out` `T` rows of `n` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const T: usize>(tile: &Tile, out: &mut [f32]) {
        let pairs = tile.pairs;
        let n = out.len() / T;
        debug_assert!(tile.rows.len() >= pairs * T * 2);
        debug_assert!(tile.weights.len() >= pairs * CHANNELS * 2);
        claim_outputs::<T>(out, n, tile.channel);
        let mut acc = [[_mm512_setzero_ps(); VECTORS]; T];
        let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
        let stride = pairs * 2;
        let (mut x, mut w) = (tile.rows.as_ptr(), tile.weights.as_ptr());
        let mut fetch = Fetch::new(tile.next, pairs);
        for _ in 0..pairs {
            fetch.step();
            // SAFETY: within the slices, per the lengths above.
            unsafe {
                let packed: [__m512i; VECTORS] =
                    std::array::from_fn(|v| _mm512_loadu_si512(w.add(v * LANES * 2) as *const __m512i));
                let even = packed.map(|p| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(p)));
                let odd = packed.map(|p| _mm512_castsi512_ps(_mm512_and_si512(p, high)));
                for (t, row) in acc.iter_mut().enumerate() {
                    let (first, second) =
                        (_mm512_set1_ps(*x.add(t * stride)), _mm512_set1_ps(*x.add(t * stride + 1)));
                    for (v, sum) in row.iter_mut().enumerate() {
                        *sum = _mm512_fmadd_ps(second, odd[v], *sum);
                        *sum = _mm512_fmadd_ps(first, even[v], *sum);
                    }
                }
                x = x.add(2);
                w = w.add(CHANNELS * 2);
            }
        }
        super::bf16::store_sums(&acc, Some(tile.bias), tile.channel, out);
    }
}

/// Registers `kiln_linear_bf16` in the `kiln` NNEF extension.
pub(crate) fn register(registry: &mut Registry) {
    registry.register_dumper(serialize);
    registry.register_primitive(
        PRIMITIVE,
        &[
            TypeName::Scalar.tensor().named("input"),
            TypeName::Integer.tensor().named("weight"),
            TypeName::Scalar.tensor().named("bias"),
        ],
        &[("output", TypeName::Scalar.tensor())],
        deserialize,
    );
}

fn serialize(ast: &mut IntoAst, node: &TypedNode, _op: &LinearBf16) -> TractResult<Option<Arc<RValue>>> {
    crate::nnef::invocation_of(PRIMITIVE, ast, node)
}

fn deserialize(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let inputs = crate::nnef::named_wires(builder, invocation, &["input", "weight", "bias"])?;
    builder.wire(LinearBf16, &inputs)
}

#[cfg(test)]
mod tests {
    use tract_linalg::multithread::{Executor, multithread_tract_scope};

    use super::*;
    use crate::packed_linear::testing::{pseudo_random, run};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A layer of `n` outputs over `k` inputs: its f32 weights (`[n, k]`) and bias.
    fn layer(n: usize, k: usize, seed: usize) -> TractResult<[Tensor; 2]> {
        Ok([
            Tensor::from_shape(&[n, k], &pseudo_random(n * k, seed))?,
            Tensor::from_shape(&[n], &pseudo_random(n, seed + 1))?,
        ])
    }

    fn values(t: &Tensor) -> TractResult<Vec<f32>> {
        Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect())
    }

    /// Rounding to bf16 is to nearest with ties to even (relative error at most `2^-8`), keeps
    /// infinities and NaN, and flushes subnormals to zero.
    #[test]
    fn values_round_to_the_nearest_bf16() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80, "a tie rounds to the even 0x3f80");
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82, "a tie rounds to the even 0x3f82");
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(bf16_bits(-2.5), 0xc020);
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
        assert_eq!(bf16_bits(f32::MAX), 0x7f80, "rounds up to infinity, as RNE does");
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_bits(-f32::from_bits(1)), 0x8000);
        for v in pseudo_random(1000, 3) {
            let error = (bf16_value(bf16_bits(v)) - v).abs();
            assert!(error <= v.abs() * 2f32.powi(-8), "{v}: error {error}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    /// `vcvtneps2bf16`, into bf16 rows and in place, rounds as the portable conversion does: ties to
    /// even, NaN quiet, subnormals to zero, overflow to infinity.
    #[test]
    fn conversion_rounds_as_the_portable_one() -> TestResult {
        if !bf16::available() {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return Ok(());
        }
        let mut values = pseudo_random(1000, 3);
        values.extend(
            [
                0x3f80_8000,
                0x3f81_8000,
                0x3f80_8001,
                0x8000_0001,
                0x0000_0001,
                0x7f7f_ffff,
                0x7f80_0000,
                0xff80_0000,
            ]
            .map(f32::from_bits),
        );
        values.extend([0.0, -0.0, -2.5, f32::NAN, f32::MAX, f32::MIN_POSITIVE]);
        // A row of whole registers, and one ending in a partial register.
        for padding in [values.len().next_multiple_of(32) - values.len(), 5] {
            let mut row = vec![0xffff; values.len() + padding];
            // SAFETY: checked above that the CPU has AVX-512 F and BF16.
            #[allow(unsafe_code)]
            unsafe {
                convert_row(&values, 1.0, &mut row)
            };
            for (&v, &bits) in values.iter().zip(&row) {
                assert_eq!(bits, bf16_bits(v), "{v:e} ({:#x})", v.to_bits());
            }
            assert!(row[values.len()..].iter().all(|&b| b == 0), "the padding is not zero");
        }
        let mut rounded = values.clone();
        round_to_bf16(&mut rounded);
        for (&v, &r) in values.iter().zip(&rounded) {
            assert_eq!(r.to_bits(), (bf16_bits(v) as u32) << 16, "{v:e} ({:#x})", v.to_bits());
        }
        Ok(())
    }

    /// Every shape edge (one row, rows not a multiple of the tile, odd `k` and `k` not a multiple of
    /// 32, `n` odd or not a multiple of the channel group) follows the f32 layer within what the
    /// rounding of both operands to bf16 allows (relative `2^-8` each, so `2^-7` per product) plus
    /// f32 summation.
    /// Packing rows a group at a time (gathers) lays them out as placing each rounded row does, with
    /// zeros for the rows past the count in the last group.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn packed_rows_are_the_placed_rows() -> TestResult {
        if !bf16::available() {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return Ok(());
        }
        let mut scratch = vec![];
        for (count, size) in [(1, 2), (31, 5), (32, 64), (33, 64), (197, 64), (40, 128)] {
            let values = pseudo_random(count * size, count + size);
            let pairs = size.div_ceil(2);
            let len = count.div_ceil(CHANNELS) * pairs * CHANNELS * 2;
            let mut expected = vec![0u16; len];
            for (o, row) in values.chunks_exact(size).enumerate() {
                let bits: Vec<u16> = row.iter().map(|&v| bf16_bits(v)).collect();
                place_row(&bits, o, pairs, &mut expected);
            }
            let mut packed = vec![0xffff; len];
            // SAFETY: checked above; rows of `size` values, `len` packed.
            #[allow(unsafe_code)]
            unsafe {
                pack_rows(|o| &values[o * size..][..size], count, pairs, &mut scratch, &mut packed)
            };
            assert_eq!(packed, expected, "{count} rows of {size}");
        }
        Ok(())
    }

    #[test]
    fn outputs_follow_the_f32_layer_within_bf16_rounding() -> TestResult {
        for (rows, k, n) in [(1, 1, 1), (1, 768, 768), (5, 7, 41), (12, 64, 32), (13, 70, 101), (30, 771, 65)]
        {
            let [weight, bias] = layer(n, k, rows * k + n)?;
            let weights = PackedWeights::new(&LinearBf16::weights(&weight)?, &bias)?;
            let x = pseudo_random(rows * k, 7);
            let (w, b) = (values(&weight)?, values(&bias)?);
            let got = run(&weights, &x, Kernel::detect())?;
            for (r, row) in x.chunks(k).enumerate() {
                for o in 0..n {
                    let products = row.iter().zip(&w[o * k..][..k]).map(|(&x, &w)| x as f64 * w as f64);
                    let expected = products.clone().sum::<f64>() + b[o] as f64;
                    let magnitude = products.map(f64::abs).sum::<f64>();
                    let tolerance = magnitude * (2f64.powi(-7) + k as f64 * 2f64.powi(-24)) + 1e-6;
                    let error = (got[r * n + o] as f64 - expected).abs();
                    assert!(error <= tolerance, "{rows}x{k}x{n}: row {r}, out {o}: {error} > {tolerance}");
                }
            }
        }
        Ok(())
    }

    /// Both AVX-512 kernels (`vdpbf16ps`, and `vfmadd231ps` on widened weights) and the portable one
    /// round the same operands and add the same exact products in the same order, so they agree
    /// bit for bit, whichever of the two this CPU's plans take.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx512_and_portable_kernels_agree_bit_for_bit() -> TestResult {
        assert!(bf16::available(), "this test needs an AVX512_BF16 CPU, as kiln's CI machines have");
        for (rows, k, n) in
            [(1, 1, 1), (1, 768, 3072), (5, 7, 40), (12, 64, 32), (25, 97, 101), (197, 768, 64)]
        {
            let [weight, bias] = layer(n, k, rows + k * n)?;
            let weights = PackedWeights::new(&LinearBf16::weights(&weight)?, &bias)?;
            let x = pseudo_random(rows * k, 11);
            let portable = run(&weights, &x, Kernel::Portable)?;
            for kernel in [Kernel::Bf16, Kernel::Widened] {
                let fast = run(&weights, &x, kernel)?;
                let differ = fast.iter().zip(&portable).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(differ, 0, "{kernel:?} {rows}x{k}x{n}: {differ} outputs differ");
            }
        }
        Ok(())
    }

    /// A graph of one layer over a `[1, rows, k]` input.
    fn layer_model(rows: usize, k: usize, n: usize) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let source = model.add_source("x", f32::fact([1, rows, k]))?;
        let [weight, bias] = layer(n, k, 3)?;
        let weight = model.add_const("weight", LinearBf16::weights(&weight)?)?;
        let bias = model.add_const("bias", bias)?;
        let output = model.wire_node("linear", LinearBf16, &[source, weight, bias])?;
        model.select_output_outlets(&output)?;
        Ok(model)
    }

    /// Without AVX512_BF16 the layer is rewritten into tract's f32 matmul on the widened weights: the
    /// same products summed in another order, and no kiln layer left.
    #[test]
    fn the_tract_rewrite_computes_the_same_layer() -> TestResult {
        let (rows, k, n) = (29, 47, 72);
        let model = layer_model(rows, k, n)?;
        let x = Tensor::from_shape(&[1, rows, k], &pseudo_random(rows * k, 5))?;
        let expected = model.clone().into_runnable()?.run(tvec!(x.clone().into_tvalue()))?;
        let mut lowered = model;
        let node = lowered.nodes().iter().find(|node| node.op_is::<LinearBf16>()).ok_or("no layer")?.clone();
        let konst = |ix: usize| lowered.outlet_fact(node.inputs[ix])?.konst.clone().context("not a constant");
        let (weight, bias) = (konst(1)?, konst(2)?);
        lower_to_tract(&lowered, &node, &weight, &bias)?.apply(&mut lowered)?;
        let optimized = lowered.into_optimized()?;
        let ops: Vec<String> = optimized.nodes().iter().map(|node| node.op.name().to_string()).collect();
        assert!(ops.iter().any(|op| op == "OptMatMul"), "tract's matmul not used: {ops:?}");
        assert!(!ops.iter().any(|op| op.ends_with("LinearBf16")), "a kiln layer is left: {ops:?}");
        let got = optimized.into_runnable()?.run(tvec!(x.into_tvalue()))?;
        // The f32 matmul takes the activations unrounded: within bf16's rounding of x.
        for (got, expected) in values(&got[0])?.iter().zip(values(&expected[0])?) {
            assert!((got - expected).abs() <= 0.05 * (1.0 + expected.abs()), "{got} vs {expected}");
        }
        Ok(())
    }

    /// A graph holding the operation survives an NNEF write and read with [`crate::nnef`] (weights as
    /// u16); optimized (the weights packed once) on one thread or two, it computes what the
    /// unoptimized graph does.
    #[test]
    fn nnef_round_trip_and_threads_keep_the_outputs() -> TestResult {
        let (rows, k, n) = (29, 48, 72);
        let model = layer_model(rows, k, n)?;
        let x = Tensor::from_shape(&[1, rows, k], &pseudo_random(rows * k, 5))?;
        let expected = model.clone().into_runnable()?.run(tvec!(x.clone().into_tvalue()))?.remove(0);
        assert_eq!(expected.shape(), &[1, rows, n]);

        let mut buffer = vec![];
        crate::nnef().write_to_tar(&model, &mut buffer)?;
        let reloaded = crate::nnef().model_for_read(&mut &buffer[..])?;
        let weight = reloaded.nodes().iter().find_map(|node| {
            node.op_as::<tract_core::ops::konst::Const>()
                .filter(|c| c.val().datum_type() == u16::datum_type())
        });
        assert!(weight.is_some(), "the bf16 weights were not stored as u16");
        let optimized = reloaded.into_optimized()?;
        if Kernel::detect() != Kernel::Portable {
            let packed = optimized.nodes().iter().any(|node| node.op_is::<PackedLinear<PackedWeights>>());
            assert!(packed, "weights not packed");
        }
        let plan = optimized.into_runnable()?;
        for executor in [Executor::SingleThread, Executor::multithread(2)] {
            let got = multithread_tract_scope(executor, || plan.run(tvec!(x.clone().into_tvalue())))?;
            assert_eq!(values(&got[0])?, values(&expected)?);
        }
        Ok(())
    }
}
