//! What kiln's fused linear layers ([`crate::LinearI8`], [`crate::LinearBf16`]) share once their weights
//! are packed: the tile geometry of their AVX-512 kernels, the operation the optimized plan runs, the
//! split of rows between threads and the per-channel vectors padded to whole channel groups.
//!
//! Each layer type says how it packs and computes one slice of rows ([`PackedLayer`]); everything
//! around that (shapes, output allocation, threads, the plan's operation) is written once here.

use std::fmt::Debug;

use tract_linalg::multithread::{Executor, current_tract_executor};
use tract_nnef::internal::*;

/// f32 lanes of one AVX-512 register: output channels per accumulator.
pub(crate) const LANES: usize = 16;
/// Accumulators per token in a tile: a tile covers `CHANNELS` output channels.
pub(crate) const VECTORS: usize = 2;
/// Output channels of one tile, and of one group of packed weights.
pub(crate) const CHANNELS: usize = LANES * VECTORS;
/// Tokens (rows) of one tile: with [`VECTORS`], 24 of the 32 vector registers accumulate.
pub(crate) const TOKENS: usize = 12;

/// One layer's weights in a kernel's layout, and how to run them on a slice of rows.
pub(crate) trait PackedLayer: Debug + Send + Sync + 'static {
    /// The operator's name in error messages (`linear_i8`).
    const OPERATOR: &'static str;
    /// The plan's name of its packed operation (`PackedLinearI8`).
    const PACKED_NAME: &'static str;
    /// The accumulator type, for the plan's cost model.
    const ACCUMULATOR: DatumType;
    /// Which implementation computes the tiles.
    type Kernel: Copy + Send + Sync;

    /// Inputs per row (`k`).
    fn inputs(&self) -> usize;
    /// Outputs per row (`n`).
    fn outputs(&self) -> usize;
    /// The fastest kernel this CPU runs.
    fn detect() -> Self::Kernel;
    /// Computes `out` (`rows x n`) from `values` (`rows x k`) with `kernel`, on the calling thread.
    fn compute_rows(&self, kernel: Self::Kernel, values: &[f32], out: &mut [f32]);
}

/// The output fact of a linear operator `op` taking `arity` inputs: an f32 input `[..., k]` and
/// `weight_type` weights `[n, k]` (`weights` says what they are, for the error) give f32 `[..., n]`.
pub(crate) fn linear_output_facts(
    op: &str,
    inputs: &[&TypedFact],
    arity: (usize, &str),
    (weight_type, weights): (DatumType, &str),
) -> TractResult<TVec<TypedFact>> {
    ensure!(inputs.len() == arity.0, "{op} takes {}", arity.1);
    let (input, weight) = (inputs[0], inputs[1]);
    ensure!(input.datum_type == f32::datum_type(), "{op} takes f32, found {:?}", input.datum_type);
    ensure!(weight.datum_type == weight_type, "{op} weights are {weights}, found {:?}", weight.datum_type);
    ensure!(weight.rank() == 2, "{op} weights are [out, in], found rank {}", weight.rank());
    ensure!(input.rank() >= 1, "{op} needs an input of rank 1 or more");
    let mut shape = input.shape.to_tvec();
    *shape.last_mut().expect("rank checked above") = weight.shape[0].clone();
    Ok(tvec!(f32::fact(shape)))
}

/// Runs `layer` on `input` (`f32[..., k]`) with the fastest kernel this CPU runs.
pub(crate) fn apply<L: PackedLayer>(layer: &L, input: &Tensor) -> TractResult<Tensor> {
    let (operator, k, n) = (L::OPERATOR, layer.inputs(), layer.outputs());
    let shape = input.shape();
    let width = *shape.last().with_context(|| format!("{operator} needs an input of rank 1 or more"))?;
    ensure!(width == k, "{operator} takes rows of {k} values, found {width}");
    ensure!(k > 0, "{operator} needs rows of at least one value");
    let rows = shape[..shape.len() - 1].iter().product::<usize>();
    let mut out_shape = shape.to_vec();
    *out_shape.last_mut().expect("rank checked above") = n;
    let mut output = Tensor::zero::<f32>(&out_shape)?;
    if rows == 0 || n == 0 {
        return Ok(output);
    }
    let plain = input.try_as_plain_ram()?;
    let values = plain.as_slice::<f32>()?;
    let mut view = output.try_as_plain_ram_mut()?;
    compute(layer, values, L::detect(), view.as_slice_mut::<f32>()?);
    Ok(output)
}

/// Computes `out` (`rows x n`) from the rows of `values` with `kernel`. Under a multi-threaded tract
/// executor the rows are split between its threads in whole tiles, each thread computing its own.
pub(crate) fn compute<L: PackedLayer>(layer: &L, values: &[f32], kernel: L::Kernel, out: &mut [f32]) {
    let (k, n) = (layer.inputs(), layer.outputs());
    let tiles = (out.len() / n).div_ceil(TOKENS);
    match current_tract_executor() {
        Executor::MultiThread(pool) if tiles > 1 => {
            let rows = tiles.div_ceil(pool.current_num_threads().min(tiles)) * TOKENS;
            pool.install(|| {
                use rayon::prelude::*;
                out.par_chunks_mut(rows * n)
                    .zip(values.par_chunks(rows * k))
                    .for_each(|(out, values)| layer.compute_rows(kernel, values, out));
            });
        }
        _ => layer.compute_rows(kernel, values, out),
    }
}

/// The tiles of `rows` rows over `groups` groups of [`CHANNELS`] channels, in the order the kernels
/// take them: for each group, every tile, so a group's weights are read from memory once and stay
/// in cache. Yields `(group, first row, rows in the tile)`.
pub(crate) fn tiles(rows: usize, groups: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..groups).flat_map(move |group| {
        (0..rows).step_by(TOKENS).map(move |first| (group, first, TOKENS.min(rows - first)))
    })
}

/// A per-channel vector (`f32[n]`, named `what` in errors) padded with zeros to whole groups of
/// [`CHANNELS`], so kernels load whole registers past `n`.
pub(crate) fn padded_channels(
    operator: &str,
    tensor: &Tensor,
    n: usize,
    what: &str,
) -> TractResult<Vec<f32>> {
    let tensor = tensor.cast_to::<f32>()?;
    let plain = tensor.try_as_plain_ram()?;
    let values = plain.as_slice::<f32>()?;
    ensure!(values.len() == n, "{operator} has {n} outputs but {} {what} values", values.len());
    let mut padded = values.to_vec();
    padded.resize(n.div_ceil(CHANNELS) * CHANNELS, 0.0);
    Ok(padded)
}

/// A layer with its weights packed: what the optimized plan runs. Never serialized.
#[derive(Debug)]
pub(crate) struct PackedLinear<L> {
    pub(crate) weights: Arc<L>,
}

impl<L> PackedLinear<L> {
    pub(crate) fn new(weights: L) -> PackedLinear<L> {
        PackedLinear { weights: Arc::new(weights) }
    }
}

impl<L> Clone for PackedLinear<L> {
    fn clone(&self) -> Self {
        PackedLinear { weights: self.weights.clone() }
    }
}

/// Two packed layers are the same operation when they share their packed weights.
impl<L> PartialEq for PackedLinear<L> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.weights, &other.weights)
    }
}

impl<L> Eq for PackedLinear<L> {}

impl<L: PackedLayer> Op for PackedLinear<L> {
    fn name(&self) -> StaticName {
        L::PACKED_NAME.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("k: {}, n: {}", self.weights.inputs(), self.weights.outputs())])
    }

    op_as_typed_op!();
}

impl<L: PackedLayer> EvalOp for PackedLinear<L> {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(tvec!(apply(&*self.weights, &inputs[0])?.into_tvalue()))
    }
}

impl<L: PackedLayer> TypedOp for PackedLinear<L> {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        *shape.last_mut().with_context(|| format!("{} needs an input of rank 1 or more", L::OPERATOR))? =
            self.weights.outputs().to_dim();
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let rows: TDim = inputs[0].shape.iter().rev().skip(1).product();
        Ok(tvec!((Cost::FMA(L::ACCUMULATOR), rows * self.weights.inputs() * self.weights.outputs())))
    }

    as_op!();
}

/// The AVX-512 epilogue both kernels end with.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::LANES;

    /// Stores the 16 outputs `y` of channels `o..o + 16` into `row` (`n` values), only those below
    /// `n`.
    #[target_feature(enable = "avx512f")]
    pub fn store_channels(row: &mut [f32], o: usize, y: __m512) {
        let n = row.len();
        debug_assert!(o < n);
        // SAFETY: the full store writes `row[o..o + 16]`, within `row` when `o + 16 <= n`; the
        // masked one only `row[o..n]`.
        unsafe {
            let dst = row.as_mut_ptr().add(o);
            if o + LANES <= n {
                _mm512_storeu_ps(dst, y);
            } else {
                _mm512_mask_storeu_ps(dst, (1u16 << (n - o)) - 1, y);
            }
        }
    }
}
