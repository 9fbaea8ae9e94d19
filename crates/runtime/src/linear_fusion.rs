//! What a packed linear layer ([`crate::packed_linear::PackedLinear`]) takes in from the graph around
//! it when the plan is optimized: a layer norm read by it alone before it, and the GELU or residual
//! addition after it.
//!
//! tract already splits those operations' rows between the executor's threads; as nodes of their own
//! they still cost a pass over the activations each (four for a layer norm) and a hand-off to the
//! threads. Fused, they run on the rows each thread of the layer computes: on the int8 ViT-B/16 the
//! plan drops from 294 nodes to 211. The arithmetic is tract's own, in the same order (the row sum,
//! `x - sum * c`, the RMS normalization, `erf`, with tract's kernels except for the row sum, whose
//! additions are tract's in order, several rows at once), so a fused plan computes the same bits as
//! the unfused one. Nothing here is serialized: artifacts keep the graph's plain operations,
//! and every plan finds the fusions again.

use std::cell::RefCell;

use tract_core::ops::binary::{BinMiniOp, OptBinByScalar, OptBinUnicast, TypedBinOp};
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::math::{Add, Mul, Sub};
use tract_core::ops::nn::{GeluExact, Reduce, Reducer, RmsNorm};
use tract_linalg::Func;
use tract_nnef::internal::*;

/// What a packed layer does besides its product.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Fusion {
    /// Normalizes each input row before the product.
    pub(crate) normalize: Option<Normalize>,
    /// What happens to the outputs before they are stored for good.
    pub(crate) epilogue: Epilogue,
}

/// kiln's `layer_norm` as tract's plan computes it (its scale and shift are folded into the layer's
/// weights at export): `centered = x - sum(x) * mean_scale`, then `centered / sqrt(mean(centered^2) +
/// eps)`, per row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Normalize {
    /// `1 / k` as the graph holds it.
    mean_scale: f32,
    eps: f32,
}

/// What is done to the layer's outputs, on the thread that computed them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Epilogue {
    /// Stored as computed.
    #[default]
    Store,
    /// tract's exact GELU, `x / 2 * (1 + erf(x / sqrt 2))`.
    Gelu,
    /// Plus the layer's second input, of the outputs' shape (a residual connection).
    Residual,
}

thread_local! {
    /// Each thread's normalized rows, kept between calls as the kernels' activation buffers are.
    static NORMALIZED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Normalize {
    /// Calls `compute` with the rows of `values` (`k` wide) normalized, in this thread's buffer.
    pub(crate) fn with_rows(
        &self,
        values: &[f32],
        k: usize,
        compute: impl FnOnce(&[f32]) -> TractResult<()>,
    ) -> TractResult<()> {
        NORMALIZED.with_borrow_mut(|rows| {
            rows.resize(values.len(), 0.0);
            self.normalize(values, k, rows)?;
            compute(rows)
        })
    }

    /// Normalizes the rows of `values` (`k` wide) into `out`, of the same length. The centering
    /// writes `out`, so no copy of the rows comes first (a pass over them, 1-2 % of the int8
    /// ViT-B/16's time in `memmove`).
    pub(crate) fn normalize(&self, values: &[f32], k: usize, out: &mut [f32]) -> TractResult<()> {
        debug_assert_eq!(values.len(), out.len());
        let rms_norm = tract_linalg::routines::rms_norm_f32()?;
        SUMS.with_borrow_mut(|sums| -> TractResult<()> {
            row_sums(values, k, sums)?;
            for ((row, values), &total) in
                out.chunks_exact_mut(k).zip(values.chunks_exact(k)).zip(sums.iter())
            {
                let mean = total * self.mean_scale;
                wide(|| row.iter_mut().zip(values).for_each(|(x, v)| *x = v - mean));
                rms_norm(row, self.eps);
            }
            Ok(())
        })
    }
}

thread_local! {
    /// Each thread's row sums, kept between calls.
    static SUMS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Rows summed together, one per AVX-512 lane.
const LANES: usize = 16;

/// The sums of the rows of `rows` (`k` wide) into `sums`, as tract's row sum computes them: its
/// kernel from 4 values, a plain sum below. On x86-64 that kernel is tract's portable one, which
/// sums a row on 16-byte boundaries whose length is a multiple of 4 one value after the other, one
/// add per add's latency (4 % of the int8 ViT-B/16's time on one thread); such rows are summed here
/// [`LANES`] at a time, one per lane, each in the same order, so to the same bits.
fn row_sums(rows: &[f32], k: usize, sums: &mut Vec<f32>) -> TractResult<()> {
    let sum = Func::ReduceSum.reduce_f32()?;
    sums.clear();
    let mut rest = rows;
    #[cfg(target_arch = "x86_64")]
    if k >= 4
        && k.is_multiple_of(4)
        && rows.as_ptr().align_offset(16) == 0
        && is_x86_feature_detected!("avx512f")
    {
        let whole = rows.len() / (k * LANES) * k * LANES;
        for lanes in rows[..whole].chunks_exact(k * LANES) {
            // SAFETY: the CPU has AVX-512 F; `lanes` holds `LANES` rows of `k` values.
            #[allow(unsafe_code)]
            sums.extend(unsafe { avx512_sums(lanes, k) });
        }
        rest = &rows[whole..];
    }
    for row in rest.chunks_exact(k) {
        sums.push(if k >= 4 { sum.run(row)? } else { row.iter().sum() });
    }
    Ok(())
}

/// The in-order sums of the [`LANES`] rows of `rows` (`k` wide), then `0 + sum` as tract's kernel
/// wrapper adds its neutral value.
///
/// # Safety
/// The CPU has AVX-512 F, and `rows` holds `LANES * k` values.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_sums(rows: &[f32], k: usize) -> [f32; LANES] {
    use std::arch::x86_64::*;
    debug_assert!(rows.len() >= LANES * k && LANES * k <= i32::MAX as usize);
    let first: [i32; LANES] = std::array::from_fn(|lane| (lane * k) as i32);
    // SAFETY: `first` is 16 i32.
    let mut index = unsafe { _mm512_loadu_si512(first.as_ptr().cast()) };
    let one = _mm512_set1_epi32(1);
    let mut sum = _mm512_set1_ps(-0.0);
    for _ in 0..k {
        // SAFETY: every index is below `LANES * k`, within `rows`.
        sum = _mm512_add_ps(sum, unsafe { _mm512_i32gather_ps::<4>(index, rows.as_ptr().cast()) });
        index = _mm512_add_epi32(index, one);
    }
    let mut sums = [0f32; LANES];
    // SAFETY: 16 f32 into 16 f32.
    unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), _mm512_add_ps(_mm512_setzero_ps(), sum)) };
    sums
}

impl Epilogue {
    /// The suffix of a fused node's name.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Epilogue::Store => "store",
            Epilogue::Gelu => "gelu",
            Epilogue::Residual => "residual",
        }
    }

    /// Applies the epilogue to `out`; `residual` is the slice of the residual matching `out`.
    pub(crate) fn apply(self, out: &mut [f32], residual: Option<&[f32]>) -> TractResult<()> {
        match self {
            Epilogue::Store => {}
            Epilogue::Gelu => gelu(out)?,
            Epilogue::Residual => {
                let residual = residual.context("a residual epilogue without its residual input")?;
                wide(|| out.iter_mut().zip(residual).for_each(|(y, r)| *y += r));
            }
        }
        Ok(())
    }
}

/// tract's `GeluExact` on f32, step for step (its chunk size, its `erf` kernel, its formula).
fn gelu(values: &mut [f32]) -> TractResult<()> {
    const CHUNK: usize = 1024;
    let erf = Func::Erf.ew_f32()?;
    let c = 2f32.sqrt().recip();
    let mut scratch = [0f32; CHUNK];
    for chunk in values.chunks_mut(CHUNK) {
        let scaled = &mut scratch[..chunk.len()];
        wide(|| scaled.iter_mut().zip(chunk.iter()).for_each(|(s, x)| *s = *x * c));
        erf.run(scaled)?;
        wide(|| chunk.iter_mut().zip(scaled.iter()).for_each(|(x, e)| *x = (*x * 0.5) * (*e + 1.0)));
    }
    Ok(())
}

/// Runs `body` compiled for AVX-512 F where the CPU has it. The crate is compiled for baseline
/// x86-64, where the plain loops around the packed layers vectorize 4 floats wide (SSE, 5 % of the
/// int8 ViT-B/16's time in the GELU epilogue's two loops alone); inlined into an AVX-512 function they
/// vectorize wider, with the same operation on each value, so the same bits.
#[inline(always)]
fn wide<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F.
        #[allow(unsafe_code)]
        return unsafe { avx512(body) };
    }
    body()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// The binary operation of a node, in any of the forms tract's plan gives it, when its output keeps
/// the inputs' type.
pub(crate) fn binary(node: &TypedNode) -> Option<&dyn BinMiniOp> {
    if let Some(op) = node.op_as::<TypedBinOp>() {
        return op.1.is_none().then_some(&*op.0);
    }
    node.op_as::<OptBinByScalar>()
        .map(|op| &*op.binop)
        .or_else(|| node.op_as::<OptBinUnicast>().map(|op| &*op.binop))
}

/// Whether `outlet` is read by one node and is not a model output: what an operation must be to be
/// fused into its reader.
pub(crate) fn read_once(model: &TypedModel, outlet: OutletId) -> TractResult<bool> {
    Ok(model.node(outlet.node).outputs[outlet.slot].successors.len() == 1
        && !model.output_outlets()?.contains(&outlet))
}

/// The f32 scalar constant `outlet` holds, if it is one.
fn scalar(model: &TypedModel, outlet: OutletId) -> TractResult<Option<f32>> {
    let fact = model.outlet_fact(outlet)?;
    Ok(match &fact.konst {
        Some(k) if k.len() == 1 && k.datum_type() == f32::datum_type() => Some(k.cast_to_scalar::<f32>()?),
        _ => None,
    })
}

/// When `node`'s input is kiln's layer norm of rows `x`, read by `node` alone: `x` and the
/// normalization. A norm with several readers (a block's query, key and value) becomes an
/// operation of its own ([`crate::layer_norm::LayerNorm`]): normalizing once costs less than
/// normalizing in each reader's prologue.
pub(crate) fn layer_norm_before(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(OutletId, Normalize)>> {
    let norm = node.inputs[0];
    if !read_once(model, norm)? {
        return Ok(None);
    }
    layer_norm(model, norm)
}

/// When `outlet` is kiln's layer norm as tract's plan computes it (the chain [`Normalize`]
/// describes, over the last axis): the rows it normalizes and the normalization.
pub(crate) fn layer_norm(model: &TypedModel, outlet: OutletId) -> TractResult<Option<(OutletId, Normalize)>> {
    let norm = model.node(outlet.node);
    let Some(rms) = norm.op_as::<RmsNorm>() else { return Ok(None) };
    let rank = model.outlet_fact(outlet)?.rank();
    if rms.axis + 1 != rank || rms.eps.len() != 1 {
        return Ok(None);
    }
    let eps = rms.eps.cast_to_scalar::<f32>()?;
    let centered = model.node(norm.inputs[0].node);
    if !binary(centered).is_some_and(|op| op.is::<Sub>()) {
        return Ok(None);
    }
    let (x, mean) = (centered.inputs[0], model.node(centered.inputs[1].node));
    if !binary(mean).is_some_and(|op| op.is::<Mul>()) || mean.inputs.len() != 2 {
        return Ok(None);
    }
    // `sum * c`, in either order.
    let (sum, mean_scale) = match (scalar(model, mean.inputs[0])?, scalar(model, mean.inputs[1])?) {
        (None, Some(c)) => (mean.inputs[0], c),
        (Some(c), None) => (mean.inputs[1], c),
        _ => return Ok(None),
    };
    let sum = model.node(sum.node);
    let is_row_sum =
        sum.op_as::<Reduce>().is_some_and(|r| matches!(r.reducer, Reducer::Sum) && r.axes[..] == [rank - 1]);
    let x_fact = model.outlet_fact(x)?;
    if !is_row_sum || sum.inputs[0] != x || x_fact.datum_type != f32::datum_type() || x_fact.rank() != rank {
        return Ok(None);
    }
    Ok(Some((x, Normalize { mean_scale, eps })))
}

/// When `node`'s only reader is tract's exact GELU of it, or its addition to a tensor of the same shape:
/// that reader, the epilogue, and the tensor added.
pub(crate) fn epilogue_after(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(usize, Epilogue, Option<OutletId>)>> {
    let output = OutletId::new(node.id, 0);
    if !read_once(model, output)? {
        return Ok(None);
    }
    let readers = &node.outputs[0].successors;
    let after = model.node(readers[0].node);
    if after.op_as::<ElementWiseOp>().is_some_and(|op| op.0.is::<GeluExact>() && op.1.is_none()) {
        return Ok(Some((after.id, Epilogue::Gelu, None)));
    }
    if !binary(after).is_some_and(|op| op.is::<Add>()) || after.inputs.len() != 2 {
        return Ok(None);
    }
    let residual = match (after.inputs[0] == output, after.inputs[1] == output) {
        (true, false) => after.inputs[1],
        (false, true) => after.inputs[0],
        _ => return Ok(None),
    };
    let (ours, theirs) = (model.outlet_fact(output)?, model.outlet_fact(residual)?);
    if ours.shape != theirs.shape || theirs.datum_type != f32::datum_type() {
        return Ok(None);
    }
    Ok(Some((after.id, Epilogue::Residual, Some(residual))))
}

#[cfg(test)]
mod tests {
    use tract_core::ops::math;
    use tract_core::ops::nn::gelu_exact::gelu_exact;
    use tract_linalg::multithread::{Executor, multithread_tract_scope};

    use super::*;
    use crate::packed_linear::PackedLinear;
    use crate::packed_linear::testing::pseudo_random;
    use crate::{LinearBf16, LinearI8};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const ROWS: usize = 29;
    const K: usize = 48;

    /// A kiln layer of `n` outputs over `k` inputs, int8 or bf16.
    fn linear(
        model: &mut TypedModel,
        name: &str,
        x: OutletId,
        n: usize,
        int8: bool,
    ) -> TractResult<OutletId> {
        let k = model.outlet_fact(x)?.shape.last().context("rank 0")?.to_usize()?;
        let weight = pseudo_random(n * k, n + k + name.len());
        let bias =
            model.add_const(format!("{name}.bias"), Tensor::from_shape(&[n], &pseudo_random(n, 3))?)?;
        let inputs = if int8 {
            let weight: Vec<i8> = weight.iter().map(|v| (v * 127.0) as i8).collect();
            let weight = model.add_const(format!("{name}.weight"), Tensor::from_shape(&[n, k], &weight)?)?;
            let scale = Tensor::from_shape(&[n], &vec![0.01f32; n])?;
            [x, weight, model.add_const(format!("{name}.scale"), scale)?, bias].to_vec()
        } else {
            let weight = LinearBf16::weights(&Tensor::from_shape(&[n, k], &weight)?)?;
            [x, model.add_const(format!("{name}.weight"), weight)?, bias].to_vec()
        };
        Ok(if int8 {
            model.wire_node(name, LinearI8, &inputs)?
        } else {
            model.wire_node(name, LinearBf16, &inputs)?
        }[0])
    }

    /// `a op b` with `b` a constant of rank 3.
    fn by_scalar(
        model: &mut TypedModel,
        name: &str,
        op: TypedBinOp,
        a: OutletId,
        b: f32,
    ) -> TractResult<OutletId> {
        let b = model.add_const(format!("{name}.value"), tensor3(&[[[b]]]))?;
        Ok(model.wire_node(name, op, &[a, b])?[0])
    }

    /// kiln's exported layer norm (without its scale and shift), as `graph.rs` writes it.
    fn layer_norm(model: &mut TypedModel, name: &str, x: OutletId) -> TractResult<OutletId> {
        let sum = Reduce { axes: tvec!(2), reducer: Reducer::Sum };
        let sum = model.wire_node(format!("{name}.sum"), sum, &[x])?[0];
        let mean = by_scalar(model, &format!("{name}.mean"), math::mul(), sum, 1.0 / K as f32)?;
        let centered = model.wire_node(format!("{name}.centered"), math::sub(), &[x, mean])?[0];
        let var = Reduce { axes: tvec!(2), reducer: Reducer::MeanOfSquares };
        let var = model.wire_node(format!("{name}.var"), var, &[centered])?[0];
        let var_eps = by_scalar(model, &format!("{name}.var_eps"), math::add(), var, 1e-12)?;
        let inv_std = model.wire_node(format!("{name}.inv_std"), math::rsqrt(), &[var_eps])?[0];
        Ok(model.wire_node(format!("{name}.normed"), math::mul(), &[centered, inv_std])?[0])
    }

    /// A transformer block's shape: a layer norm read by two layers whose sum is a residual of one
    /// of them, then a layer norm read by an MLP with GELU, and the sum added back.
    fn block(int8: bool) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, ROWS, K]))?;
        let normed = layer_norm(&mut model, "ln1", x)?;
        let query = linear(&mut model, "query", normed, K, int8)?;
        let key = linear(&mut model, "key", normed, K, int8)?;
        let both = model.wire_node("both", math::add(), &[query, key])?[0];
        let normed = layer_norm(&mut model, "ln2", both)?;
        let up = linear(&mut model, "up", normed, 2 * K, int8)?;
        let act = model.wire_node("act", gelu_exact(), &[up])?[0];
        let down = linear(&mut model, "down", act, K, int8)?;
        let out = model.wire_node("residual", math::add(), &[both, down])?[0];
        model.select_output_outlets(&[out])?;
        Ok(model)
    }

    /// Optimized, an int8 or bf16 block keeps only the norm read twice: the other norm, the GELU and
    /// the additions are fused into the packed layers. On one thread or two it computes the bits the
    /// decluttered graph computes, whose tract operations the fusions replace.
    #[test]
    fn fused_layers_compute_what_the_graph_does() -> TestResult {
        for int8 in [true, false] {
            let model = block(int8)?;
            let x = Tensor::from_shape(&[1, ROWS, K], &pseudo_random(ROWS * K, 5))?;
            let decluttered = model.clone().into_decluttered()?;
            let names =
                |m: &TypedModel| m.nodes().iter().map(|n| n.op.name().to_string()).collect::<Vec<_>>();
            assert!(names(&decluttered).iter().any(|op| op == "RmsNorm"), "{:?}", names(&decluttered));
            let expected = decluttered.into_runnable()?.run(tvec!(x.clone().into_tvalue()))?.remove(0);

            let optimized = model.into_optimized()?;
            let ops = names(&optimized);
            let packed = ops.iter().filter(|op| op.starts_with("PackedLinear")).count();
            let count = |name: &str| ops.iter().filter(|op| op.as_str() == name).count();
            assert_eq!((packed, count("RmsNorm")), (4, 1), "int8 {int8}: {ops:?}");
            assert!(!ops.iter().any(|op| op.contains("Add") || op == "GeluExact"), "int8 {int8}: {ops:?}");
            let fusions: Vec<Fusion> = optimized
                .nodes()
                .iter()
                .filter_map(|n| {
                    n.op_as::<PackedLinear<crate::linear_i8::PackedWeights>>().map(|op| op.fusion).or_else(
                        || n.op_as::<PackedLinear<crate::linear_bf16::PackedWeights>>().map(|op| op.fusion),
                    )
                })
                .collect();
            let epilogues: Vec<Epilogue> = fusions.iter().map(|f| f.epilogue).collect();
            assert_eq!(fusions.iter().filter(|f| f.normalize.is_some()).count(), 1);
            for epilogue in [Epilogue::Gelu, Epilogue::Residual] {
                assert!(epilogues.contains(&epilogue), "int8 {int8}: {epilogues:?}");
            }
            let plan = optimized.into_runnable()?;
            for executor in [Executor::SingleThread, Executor::multithread(2)] {
                let got = multithread_tract_scope(executor, || plan.run(tvec!(x.clone().into_tvalue())))?;
                let values = |t: &Tensor| -> TractResult<Vec<u32>> {
                    Ok(t.to_plain_array_view::<f32>()?.iter().map(|v| v.to_bits()).collect())
                };
                assert_eq!(values(&got[0])?, values(&expected)?, "int8 {int8}");
            }
        }
        Ok(())
    }

    /// Row sums have tract's kernel's bits for every row count, width and alignment: whole groups of
    /// 16 aligned rows in lanes, the others by the kernel itself.
    #[test]
    fn row_sums_have_the_bits_of_tracts_row_sum() -> TestResult {
        let kernel = Func::ReduceSum.reduce_f32()?;
        let mut sums = vec![];
        for k in [1, 3, 4, 5, 8, 48, 768] {
            for rows in [1, 15, 16, 17, 33] {
                let values = pseudo_random(rows * k + 4, k + rows);
                let boundary = values.as_ptr().align_offset(16);
                // Rows from a 16-byte boundary, then one value past it.
                for start in [boundary, boundary + 1] {
                    let rows_of = &values[start..][..rows * k];
                    super::row_sums(rows_of, k, &mut sums)?;
                    let expected: Vec<u32> = rows_of
                        .chunks_exact(k)
                        .map(|row| Ok(if k >= 4 { kernel.run(row)? } else { row.iter().sum() }.to_bits()))
                        .collect::<TractResult<_>>()?;
                    let got: Vec<u32> = sums.iter().map(|s| s.to_bits()).collect();
                    assert_eq!(got, expected, "{rows} rows of {k} from value {start}");
                }
            }
        }
        Ok(())
    }

    /// kiln's plan makes the norm read twice one `LayerNorm` operation, with the bits of the chain it
    /// replaces, on one thread or two (rows split as the layers split them: 29 rows, 15 and 14).
    #[test]
    fn a_norm_read_twice_is_one_operation_of_the_same_bits() -> TestResult {
        for int8 in [true, false] {
            let model = block(int8)?;
            let x = Tensor::from_shape(&[1, ROWS, K], &pseudo_random(ROWS * K, 7))?;
            let expected =
                model.clone().into_decluttered()?.into_runnable()?.run(tvec!(x.clone().into_tvalue()))?;
            let optimized = crate::optimize(model)?;
            let ops: Vec<String> = optimized.nodes().iter().map(|n| n.op.name().to_string()).collect();
            let count = |name: &str| ops.iter().filter(|op| op.as_str() == name).count();
            assert_eq!((count("LayerNorm"), count("RmsNorm")), (1, 0), "int8 {int8}: {ops:?}");
            let plan = optimized.into_runnable()?;
            for executor in [Executor::SingleThread, Executor::multithread(2)] {
                let got = multithread_tract_scope(executor, || plan.run(tvec!(x.clone().into_tvalue())))?;
                got[0].close_enough(&expected[0], Approximation::Exact)?;
            }
        }
        Ok(())
    }

    /// A layer whose output is also read elsewhere keeps its GELU and addition as nodes, and a norm
    /// read by something other than a packed layer stays a node too.
    #[test]
    fn outputs_read_twice_are_not_fused() -> TestResult {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, ROWS, K]))?;
        let normed = layer_norm(&mut model, "ln", x)?;
        let up = linear(&mut model, "up", normed, K, true)?;
        let act = model.wire_node("act", gelu_exact(), &[up])?[0];
        model.select_output_outlets(&[act, up, normed])?;
        let optimized = model.into_optimized()?;
        let ops: Vec<String> = optimized.nodes().iter().map(|n| n.op.name().to_string()).collect();
        assert!(ops.iter().any(|op| op == "GeluExact"), "{ops:?}");
        assert!(ops.iter().any(|op| op == "RmsNorm"), "{ops:?}");
        Ok(())
    }
}
