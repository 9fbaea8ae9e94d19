//! The linear layers of f32 graphs on kiln's own AVX-512 kernel, found in the graph when the plan is
//! compiled ([`PackF32Linears`]).
//!
//! An f32 artifact keeps tract's plain operations: each layer is an einsum of the rows by a constant
//! `[n, k]` weight, plus a constant bias. tract compiles that to its general matmul, which packs the
//! rows again on every call and, on ViT-B/16's shapes, runs tiles of 32 channels x 6 rows or 64 x 3
//! whose weight stream from L2 bounds them at about half the FMA units' rate. This kernel keeps the
//! int8 and bf16 layers' tiles (12 rows x 32 channels, 24 accumulators, the weights read once per 12
//! rows), reads the rows where they are, adds the bias while storing, and, being a packed layer,
//! takes in the layer norm, GELU and residual additions around it ([`crate::linear_fusion`]).
//! Nothing is serialized: artifacts keep tract's operations, and CPUs without AVX-512 keep tract's
//! plan.

use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::change_axes::AxisOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::Add;
use tract_core::transform::ModelTransform;
use tract_nnef::internal::*;

use crate::packed_linear::{self, CHANNELS, LANES, PackedLayer, PackedLinear, VECTORS};

/// One step of a group's weights: the `CHANNELS` weights of one input, on a cache line of their
/// own so that every load of the kernel is aligned.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Lanes([f32; LANES]);

/// One layer's weights in the kernel's layout: groups of [`CHANNELS`] output channels, each
/// `[k][CHANNELS]` f32 (`VECTORS` lines per input), zero past `n`.
#[derive(Clone, Debug)]
pub(crate) struct PackedWeights {
    k: usize,
    n: usize,
    blocks: Vec<Lanes>,
    /// Per channel (padded): the bias.
    bias: Vec<f32>,
}

/// How the einsum lays its weight out: `[n, k]` as PyTorch's linear layers, or `[k, n]` as ONNX's
/// `MatMul` by a constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    OutIn,
    InOut,
}

impl PackedWeights {
    /// Packs `weight` (`[n, k]` or `[k, n]` per `layout`) and `bias` (`[n]`, or none).
    fn new(weight: &Tensor, layout: Layout, bias: Option<&Tensor>) -> TractResult<PackedWeights> {
        ensure!(weight.rank() == 2, "an f32 linear weight is a matrix, found {:?}", weight.shape());
        let (n, k) = match layout {
            Layout::OutIn => (weight.shape()[0], weight.shape()[1]),
            Layout::InOut => (weight.shape()[1], weight.shape()[0]),
        };
        let weight = weight.cast_to::<f32>()?;
        let plain = weight.try_as_plain_ram()?;
        let values = plain.as_slice::<f32>()?;
        let bias = match bias {
            Some(bias) => packed_linear::padded_channels("linear_f32", bias, n, "bias")?,
            None => vec![0.0; n.div_ceil(CHANNELS) * CHANNELS],
        };
        let mut blocks = vec![Lanes([0.0; LANES]); n.div_ceil(CHANNELS) * k * VECTORS];
        for o in 0..n {
            let (group, channel) = (o / CHANNELS, o % CHANNELS);
            for i in 0..k {
                let w = match layout {
                    Layout::OutIn => values[o * k + i],
                    Layout::InOut => values[i * n + o],
                };
                blocks[(group * k + i) * VECTORS + channel / LANES].0[channel % LANES] = w;
            }
        }
        Ok(PackedWeights { k, n, blocks, bias })
    }
}

impl PackedLayer for PackedWeights {
    const OPERATOR: &'static str = "linear_f32";
    const PACKED_NAME: &'static str = "PackedLinearF32";
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

    /// Computes every tile straight from the rows: f32 needs no conversion.
    fn compute_rows(&self, kernel: Kernel, values: &[f32], out: &mut [f32]) {
        let (k, n) = (self.k, self.n);
        let groups = n.div_ceil(CHANNELS);
        let rows = values.len() / k;
        for (group, first, count) in packed_linear::tiles(rows, groups) {
            let tile = Tile {
                rows: &values[first * k..][..count * k],
                count,
                weights: &self.blocks[group * k * VECTORS..][..k * VECTORS],
                next: packed_linear::next_share(&self.blocks, group, k * VECTORS, first, rows),
                channel: group * CHANNELS,
                layer: self,
            };
            let out = &mut out[first * n..(first + count) * n];
            match kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 => tile.compute_avx512(out),
                Kernel::Portable => tile.compute_portable(out),
            }
        }
    }
}

/// Which implementation computes the tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// AVX-512 F (`vfmadd231ps`), where the CPU has it.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// Plain Rust with the same fused multiply-adds in the same order: the AVX-512 kernel's reference
    /// (plans on CPUs without AVX-512 keep tract's matmul).
    Portable,
}

impl Kernel {
    fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            return Kernel::Avx512;
        }
        Kernel::Portable
    }
}

/// One tile of the product: up to [`packed_linear::TOKENS`] rows by one group of [`CHANNELS`] channels.
struct Tile<'a> {
    /// The rows, `k` values each.
    rows: &'a [f32],
    count: usize,
    /// The group's packed weights.
    weights: &'a [Lanes],
    /// This tile's share of the next group's weights, to fetch while it computes.
    next: &'a [Lanes],
    /// The group's first output channel.
    channel: usize,
    layer: &'a PackedWeights,
}

impl Tile<'_> {
    /// Writes the tile's outputs into `out` (its rows, `n` values each) with the AVX-512 kernel.
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    fn compute_avx512(&self, out: &mut [f32]) {
        // SAFETY: `Kernel::Avx512` is only chosen when the CPU has AVX-512 F, and `Tile`'s slices have
        // the lengths the kernel's loads assume (built by `PackedWeights::compute_rows`).
        unsafe { packed_linear::tile_for_rows!(self.count, avx512::tile(self, out)) }
    }

    /// The kernel's arithmetic without SIMD: per output, one fused multiply-add per input in input
    /// order from zero, then the bias.
    fn compute_portable(&self, out: &mut [f32]) {
        let (k, n) = (self.layer.k, self.layer.n);
        for (t, row) in self.rows.chunks_exact(k).enumerate() {
            for c in 0..CHANNELS.min(n - self.channel) {
                let weights = self.weights.iter().skip(c / LANES).step_by(VECTORS).map(|l| l.0[c % LANES]);
                let sum = row.iter().zip(weights).fold(0f32, |acc, (&x, w)| x.mul_add(w, acc));
                out[t * n + self.channel + c] = sum + self.layer.bias[self.channel + c];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Tile;
    use crate::packed_linear::avx512::{Fetch, claim_outputs, store_channels};
    use crate::packed_linear::{LANES, VECTORS};

    /// Whether this CPU runs [`tile`].
    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    /// The tile of `T` rows: `T * VECTORS` accumulators; per input, `VECTORS` aligned weight loads,
    /// `T` broadcasts and `T * VECTORS` fused multiply-adds. Then bias and store, per register.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `tile.rows` holds `T` rows of `k` values, `tile.weights` `k * VECTORS`
    /// lines, and `out` `T` rows of `n` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const T: usize>(tile: &Tile, out: &mut [f32]) {
        let layer = tile.layer;
        let (k, n) = (layer.k, layer.n);
        debug_assert!(tile.rows.len() >= T * k);
        debug_assert!(tile.weights.len() >= k * VECTORS);
        debug_assert!(out.len() >= T * n);
        claim_outputs::<T>(out, n, tile.channel);
        let acc = [[_mm512_setzero_ps(); VECTORS]; T];
        let (x, w) = (tile.rows.as_ptr(), tile.weights.as_ptr());
        // SAFETY: per this function's contract.
        let acc = unsafe { products::<T>(acc, x, k, w, Fetch::new(tile.next, k)) };
        for (t, row) in acc.iter().enumerate() {
            let out = &mut out[t * n..][..n];
            for (v, sum) in row.iter().enumerate() {
                let o = tile.channel + v * LANES;
                if o >= n {
                    break;
                }
                // SAFETY: the bias is padded to whole groups.
                let bias = unsafe { _mm512_loadu_ps(layer.bias.as_ptr().add(o)) };
                store_channels(out, o, _mm512_add_ps(*sum, bias));
            }
        }
    }

    /// Adds to `acc` the products of the `k` inputs of `T` rows (`x`, `k` apart) by the weights'
    /// lines, fetching the tile's share of the next group on the way. A function of its own with
    /// the accumulators by value: written inline in [`tile`], LLVM kept some of them on the stack
    /// for some `T`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `x` points to `T` rows of `k` readable values, `w` to `k * VECTORS`
    /// aligned lines.
    #[inline(always)]
    unsafe fn products<const T: usize>(
        mut acc: [[__m512; VECTORS]; T],
        mut x: *const f32,
        k: usize,
        mut w: *const super::Lanes,
        mut fetch: Fetch,
    ) -> [[__m512; VECTORS]; T] {
        for _ in 0..k {
            fetch.step();
            // SAFETY: per the contract.
            unsafe {
                let weights: [__m512; VECTORS] = std::array::from_fn(|v| _mm512_load_ps(w.add(v).cast()));
                for (t, row) in acc.iter_mut().enumerate() {
                    let input = _mm512_set1_ps(*x.add(t * k));
                    for (sum, weight) in row.iter_mut().zip(&weights) {
                        *sum = _mm512_fmadd_ps(input, *weight, *sum);
                    }
                }
                x = x.add(1);
                w = w.add(VECTORS);
            }
        }
        acc
    }
}

/// The plan compiler's pass that turns the linear layers of f32 graphs into packed layers of
/// [`PackedWeights`]: an [`EinSum`] of rows by a constant matrix contracted over the rows' last axes
/// (in any of the forms tract's declutter leaves it, with axes of one added or dropped), with the
/// constant bias added to it when the addition is its only reader. Does nothing on CPUs without
/// AVX-512.
#[derive(Debug, Default)]
pub(crate) struct PackF32Linears;

impl ModelTransform for PackF32Linears {
    fn name(&self) -> StaticName {
        "kiln-pack-f32-linears".into()
    }

    fn transform(&self, model: &mut TypedModel) -> TractResult<()> {
        if Kernel::detect() == Kernel::Portable {
            return Ok(());
        }
        let mut layers = vec![];
        for node in model.nodes() {
            if linear_layer(model, node)?.is_some() {
                layers.push(node.name.clone());
            }
        }
        for name in layers {
            let node = model.node(model.node_id_by_name(&name)?).clone();
            let layer = linear_layer(model, &node)?.context("the layer was found above")?;
            pack(model, &node, layer)?.apply(model)?;
            // Drops the replaced weights now, so that no more than one layer exists twice at a time.
            model.compact()?;
        }
        Ok(())
    }
}

/// An einsum that is a linear layer: its weight layout and widths.
#[derive(Clone, Copy, Debug)]
struct LinearLayer {
    layout: Layout,
    /// Inputs per row: the product of the contracted axes.
    k: usize,
    /// Outputs per row.
    n: usize,
}

/// `node` as a linear layer [`PackF32Linears`] packs, if it is one: an f32 [`EinSum`] of rows `x`
/// by a constant `w` whose contracted axes are the last of `x` in `w`'s order, after or before
/// `w`'s one output axis, which is the output's last; the other axes of `x` and the output the same
/// in the same order, but for axes of one.
fn linear_layer(model: &TypedModel, node: &TypedNode) -> TractResult<Option<LinearLayer>> {
    let Some(einsum) = node.op_as::<EinSum>() else { return Ok(None) };
    if einsum.q_params.is_some() || einsum.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let (x, w) = (model.outlet_fact(node.inputs[0])?, model.outlet_fact(node.inputs[1])?);
    let y = model.outlet_fact(OutletId::new(node.id, 0))?;
    let Some(weight) = &w.konst else { return Ok(None) };
    if x.datum_type != f32::datum_type() || weight.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let (inputs, outputs) = einsum.axes.to_strs();
    let ([xs, ws], [ys]) = (&inputs[..], &outputs[..]) else { return Ok(None) };
    let [xs, ws, ys]: [Vec<char>; 3] = [xs, ws, ys].map(|s| s.chars().collect());
    let Some(&o) = ys.last() else { return Ok(None) };
    let contracted: Vec<char> = ws.iter().copied().filter(|&c| c != o).collect();
    if contracted.is_empty()
        || contracted.len() + 1 != ws.len()
        || contracted.len() > xs.len()
        || xs[xs.len() - contracted.len()..] != contracted[..]
        || xs.contains(&o)
        || contracted.iter().any(|c| ys.contains(c))
    {
        return Ok(None);
    }
    let layout = if ws[0] == o {
        Layout::OutIn
    } else if ws[ws.len() - 1] == o {
        Layout::InOut
    } else {
        return Ok(None);
    };
    // The rows' axes of `x` and of the output, the axes of one left out, must be the same.
    let rows = |axes: &[char], shape: &[TDim]| -> Vec<char> {
        axes.iter().zip(shape).filter(|(_, d)| !d.is_one()).map(|(&c, _)| c).collect()
    };
    let x_rows = &xs[..xs.len() - contracted.len()];
    if rows(x_rows, &x.shape[..x_rows.len()]) != rows(&ys[..ys.len() - 1], &y.shape[..ys.len() - 1]) {
        return Ok(None);
    }
    let n = weight.shape()[if layout == Layout::OutIn { 0 } else { ws.len() - 1 }];
    // An empty product (no input or no output) stays tract's: the packed layer refuses rows of nothing.
    if weight.len() == 0 {
        return Ok(None);
    }
    Ok(Some(LinearLayer { layout, k: weight.len() / n, n }))
}

/// The patch replacing the layer `node` (and the addition of its bias, when there is one) by a packed
/// layer, its rows reshaped to the output's leading axes and `k` when they are not already.
fn pack(model: &TypedModel, node: &TypedNode, layer: LinearLayer) -> TractResult<TypedModelPatch> {
    let LinearLayer { layout, k, n } = layer;
    let weight = model.outlet_fact(node.inputs[1])?.konst.clone().context("a constant weight")?;
    let matrix = match layout {
        Layout::OutIn => [n, k],
        Layout::InOut => [k, n],
    };
    let weight = (*weight).clone().into_shape(&matrix)?;
    let (last, bias) = match bias_after(model, node, n)? {
        Some((add, bias)) => (add, Some(bias)),
        None => (node.id, None),
    };
    let packed = PackedLinear::new(PackedWeights::new(&weight, layout, bias.as_ref())?);
    let mut patch = TypedModelPatch::default();
    let mut x = patch.tap_model(model, node.inputs[0])?;
    let from = model.outlet_fact(node.inputs[0])?.shape.to_tvec();
    let mut to = model.outlet_fact(OutletId::new(node.id, 0))?.shape.to_tvec();
    *to.last_mut().context("an output of rank 0")? = k.to_dim();
    if from != to {
        x = patch.wire_node(format!("{}.rows", node.name), AxisOp::Reshape(0, from, to), &[x])?[0];
    }
    let packed = patch.wire_node(&node.name, packed, &[x])?;
    patch.shunt_outside(model, OutletId::new(last, 0), packed[0])?;
    Ok(patch)
}

/// When the only reader of `node` adds a constant per output channel to it: that addition and the
/// bias, as `f32[n]`.
fn bias_after(model: &TypedModel, node: &TypedNode, n: usize) -> TractResult<Option<(usize, Tensor)>> {
    let output = OutletId::new(node.id, 0);
    if !crate::linear_fusion::read_once(model, output)? {
        return Ok(None);
    }
    let readers = &node.outputs[0].successors;
    let add = model.node(readers[0].node);
    let is_add = add.op_as::<TypedBinOp>().is_some_and(|op| op.0.is::<Add>() && op.1.is_none());
    if !is_add || add.inputs.len() != 2 {
        return Ok(None);
    }
    let other = if add.inputs[0] == output { add.inputs[1] } else { add.inputs[0] };
    let Some(bias) = &model.outlet_fact(other)?.konst else { return Ok(None) };
    let shape = &model.outlet_fact(output)?.shape;
    let per_channel = bias.datum_type() == f32::datum_type()
        && bias.rank() == shape.rank()
        && bias.shape().last() == Some(&n)
        && bias.shape()[..shape.rank() - 1].iter().all(|&d| d == 1)
        && model.outlet_fact(OutletId::new(add.id, 0))?.shape == *shape;
    if !per_channel {
        return Ok(None);
    }
    Ok(Some((add.id, (**bias).clone().into_shape(&[n])?)))
}

#[cfg(test)]
mod tests {
    use tract_core::ops::math;

    use super::*;
    use crate::packed_linear::testing::{pseudo_random, run};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// On every shape edge (one row, rows not a multiple of the tile, `k` of one, `n` not a multiple
    /// of 16 or 32) and in both weight layouts, the packed layer is `x @ w^T + b`: the f64 sum within
    /// f32 summation error.
    #[test]
    fn outputs_are_the_linear_layer() -> TestResult {
        for (rows, k, n) in [(1, 1, 1), (1, 768, 40), (5, 7, 41), (12, 64, 32), (13, 70, 101), (30, 33, 65)] {
            let (w, b, x) = (pseudo_random(n * k, n + k), pseudo_random(n, 3), pseudo_random(rows * k, rows));
            let transposed: Vec<f32> = (0..k * n).map(|j| w[(j % n) * k + j / n]).collect();
            for (layout, values) in [(Layout::OutIn, &w), (Layout::InOut, &transposed)] {
                let shape = if layout == Layout::OutIn { [n, k] } else { [k, n] };
                let weight = Tensor::from_shape(&shape, values)?;
                let weights = PackedWeights::new(&weight, layout, Some(&Tensor::from_shape(&[n], &b)?))?;
                let got = run(&weights, &x, Kernel::Portable)?;
                for (r, row) in x.chunks(k).enumerate() {
                    for o in 0..n {
                        let products = row.iter().zip(&w[o * k..][..k]).map(|(&x, &w)| x as f64 * w as f64);
                        let expected = products.clone().sum::<f64>() + b[o] as f64;
                        let tolerance = products.map(f64::abs).sum::<f64>() * (k + 1) as f64 * 2f64.powi(-24);
                        let error = (got[r * n + o] as f64 - expected).abs();
                        assert!(
                            error <= tolerance + 1e-6,
                            "{layout:?} {rows}x{k}x{n}: [{r}, {o}] off by {error}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The AVX-512 kernel and the portable one do the same fused multiply-adds in the same order, so
    /// they agree bit for bit.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx512_and_portable_kernels_agree_bit_for_bit() -> TestResult {
        assert!(avx512::available(), "this test needs an AVX-512 CPU, as kiln's CI machines have");
        for (rows, k, n) in
            [(1, 1, 1), (1, 768, 3072), (5, 7, 40), (12, 64, 32), (25, 97, 101), (197, 768, 64)]
        {
            let weight = Tensor::from_shape(&[n, k], &pseudo_random(n * k, rows + k))?;
            let weights = PackedWeights::new(
                &weight,
                Layout::OutIn,
                Some(&Tensor::from_shape(&[n], &pseudo_random(n, 5))?),
            )?;
            let x = pseudo_random(rows * k, 11);
            let fast = run(&weights, &x, Kernel::Avx512)?;
            let portable = run(&weights, &x, Kernel::Portable)?;
            let differ = fast.iter().zip(&portable).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "{rows}x{k}x{n}: {differ} outputs differ");
        }
        Ok(())
    }

    /// A graph with the linear layers in the forms tract's declutter leaves them in: `x @ w^T + b`
    /// over `[1, rows, k]`, the same from `[rows, k]` into `[1, rows, n]` with the weight `[k, n]`, and
    /// a contraction over two axes (attention heads back to channels) without bias; then an einsum
    /// that is no linear layer (two non-constant operands).
    fn layers_model(rows: usize, k: usize, n: usize) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, rows, k]))?;
        let einsum = |expr: &str| EinSum::new(expr.parse().expect("an einsum expression"), f32::datum_type());
        let weight = model.add_const("w1", Tensor::from_shape(&[n, k], &pseudo_random(n * k, 1))?)?;
        let y = model.wire_node("linear1", einsum("abi,oi->abo"), &[x, weight])?[0];
        let bias = model.add_const("b1", Tensor::from_shape(&[1, 1, n], &pseudo_random(n, 2))?)?;
        let y = model.wire_node("linear1.bias", math::add(), &[y, bias])?[0];
        let y = model.wire_node("rows", AxisOp::Rm(0), &[y])?[0];
        let weight = model.add_const("w2", Tensor::from_shape(&[n, n], &pseudo_random(n * n, 3))?)?;
        let y = model.wire_node("linear2", einsum("mk,kn->amn"), &[y, weight])?[0];
        let y = model.wire_node(
            "heads",
            AxisOp::Reshape(2, tvec![n.to_dim()], tvec![2.to_dim(), (n / 2).to_dim()]),
            &[y],
        )?[0];
        let weight = model.add_const("w3", Tensor::from_shape(&[k, 2, n / 2], &pseudo_random(k * n, 4))?)?;
        let y = model.wire_node("linear3", einsum("ambk,nbk->mn"), &[y, weight])?[0];
        let y = model.wire_node("gram", einsum("mn,pn->mp"), &[y, y])?;
        model.select_output_outlets(&y)?;
        Ok(model)
    }

    /// The pass packs the three layers (and folds the bias into the first), leaves the other einsum,
    /// and the optimized plan computes what tract's does, up to the order of the f32 sums.
    #[test]
    fn the_pass_packs_the_linear_layers_and_keeps_the_results() -> TestResult {
        let (rows, k, n) = (29, 40, 24);
        let model = layers_model(rows, k, n)?;
        let x = Tensor::from_shape(&[1, rows, k], &pseudo_random(rows * k, 9))?;
        let expected =
            model.clone().into_optimized()?.into_runnable()?.run(tvec!(x.clone().into_tvalue()))?;
        let optimized = crate::optimize(model)?;
        let packed = optimized.nodes().iter().filter(|n| n.op.name() == "PackedLinearF32").count();
        assert_eq!(packed, if Kernel::detect() == Kernel::Portable { 0 } else { 3 }, "{optimized}");
        let got = optimized.into_runnable()?.run(tvec!(x.into_tvalue()))?;
        let values = |t: &TValue| -> TractResult<Vec<f32>> {
            Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect())
        };
        let (got, expected) = (values(&got[0])?, values(&expected[0])?);
        assert_eq!(got.len(), rows * rows);
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() <= scale * 1e-5, "{g} against tract's {e}");
        }
        Ok(())
    }

    /// A layer over rows of no value stays tract's (the packed layer refuses such rows) and computes
    /// the bias.
    #[test]
    fn an_empty_product_is_left_to_tract() -> TestResult {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 3, 0]))?;
        let weight = model.add_const("w", Tensor::zero::<f32>(&[4, 0])?)?;
        let einsum = EinSum::new("abi,oi->abo".parse()?, f32::datum_type());
        let y = model.wire_node("linear", einsum, &[x, weight])?[0];
        let bias = model.add_const("b", Tensor::from_shape(&[1, 1, 4], &[1f32, 2.0, 3.0, 4.0])?)?;
        let y = model.wire_node("linear.bias", math::add(), &[y, bias])?;
        model.select_output_outlets(&y)?;
        let optimized = crate::optimize(model)?;
        assert!(!optimized.nodes().iter().any(|n| n.op.name() == "PackedLinearF32"), "{optimized}");
        let got = optimized.into_runnable()?.run(tvec!(Tensor::zero::<f32>(&[1, 3, 0])?.into_tvalue()))?;
        let got: Vec<f32> = got[0].to_plain_array_view::<f32>()?.iter().copied().collect();
        assert_eq!(got, [1.0, 2.0, 3.0, 4.0].repeat(3));
        Ok(())
    }
}
