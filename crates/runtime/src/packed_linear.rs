//! What kiln's fused linear layers ([`crate::LinearI8`], [`crate::LinearBf16`]) share once their weights
//! are packed: the tile geometry of their AVX-512 kernels, the operation the optimized plan runs, the
//! split of rows between threads and the per-channel vectors padded to whole channel groups.
//!
//! Each layer type says how it packs and computes one slice of rows ([`PackedLayer`]); everything
//! around that (shapes, output allocation, threads, the plan's operation and what it fuses from its
//! neighbours, [`crate::linear_fusion`]) is written once here.

use std::fmt::Debug;

use tract_linalg::multithread::{Executor, current_tract_executor};
use tract_nnef::internal::*;

use crate::linear_fusion::{self, Epilogue, Fusion};

/// f32 lanes of one AVX-512 register: output channels per accumulator.
pub(crate) const LANES: usize = 16;
/// Accumulators per token in a tile: a tile covers `CHANNELS` output channels.
pub(crate) const VECTORS: usize = 2;
/// Output channels of one tile, and of one group of packed weights.
pub(crate) const CHANNELS: usize = LANES * VECTORS;
/// Tokens (rows) of one tile: with [`VECTORS`], 24 of the 32 vector registers accumulate.
pub(crate) const TOKENS: usize = 12;

/// `$kernel::<T>($args)` for a tile's row count `T` (1 to [`TOKENS`]): the AVX-512 kernels are
/// compiled once per row count, so that their accumulators are an array the compiler keeps in
/// registers.
macro_rules! tile_for_rows {
    ($rows:expr, $($kernel:ident)::+ ($($arg:expr),*)) => {
        match $rows {
            12 => $($kernel)::+::<12>($($arg),*),
            11 => $($kernel)::+::<11>($($arg),*),
            10 => $($kernel)::+::<10>($($arg),*),
            9 => $($kernel)::+::<9>($($arg),*),
            8 => $($kernel)::+::<8>($($arg),*),
            7 => $($kernel)::+::<7>($($arg),*),
            6 => $($kernel)::+::<6>($($arg),*),
            5 => $($kernel)::+::<5>($($arg),*),
            4 => $($kernel)::+::<4>($($arg),*),
            3 => $($kernel)::+::<3>($($arg),*),
            2 => $($kernel)::+::<2>($($arg),*),
            _ => $($kernel)::+::<1>($($arg),*),
        }
    };
}
pub(crate) use tile_for_rows;

const _: () = assert!(TOKENS == 12, "tile_for_rows has one arm per row count up to TOKENS");

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

/// Runs `layer` on `input` (`f32[..., k]`) with the fastest kernel this CPU runs, with `fusion`'s
/// prologue and epilogue (`residual` is the tensor [`Epilogue::Residual`] adds).
pub(crate) fn apply<L: PackedLayer>(
    layer: &L,
    fusion: &Fusion,
    input: &Tensor,
    residual: Option<&Tensor>,
) -> TractResult<Tensor> {
    let (operator, k, n) = (L::OPERATOR, layer.inputs(), layer.outputs());
    let shape = input.shape();
    let width = *shape.last().with_context(|| format!("{operator} needs an input of rank 1 or more"))?;
    ensure!(width == k, "{operator} takes rows of {k} values, found {width}");
    ensure!(k > 0, "{operator} needs rows of at least one value");
    let rows = shape[..shape.len() - 1].iter().product::<usize>();
    let mut out_shape = shape.to_vec();
    *out_shape.last_mut().expect("rank checked above") = n;
    // SAFETY: `compute` writes every output: each member stores all `n` channels of every row it
    // is given, and the rows are split between threads without gaps.
    #[allow(unsafe_code)]
    let mut output = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
    if rows == 0 || n == 0 {
        return Ok(output);
    }
    let plain = input.try_as_plain_ram()?;
    let values = plain.as_slice::<f32>()?;
    let residual = match residual {
        Some(residual) => {
            ensure!(
                residual.shape() == &out_shape[..],
                "{operator} adds a residual of shape {:?} to outputs of shape {out_shape:?}",
                residual.shape()
            );
            Some(residual.try_as_plain_ram()?)
        }
        None => None,
    };
    let residual = residual.as_ref().map(|r| r.as_slice::<f32>()).transpose()?;
    let mut view = output.try_as_plain_ram_mut()?;
    compute(layer, fusion, values, residual, L::detect(), view.as_slice_mut::<f32>()?)?;
    Ok(output)
}

/// Computes `out` (`rows x n`) from the rows of `values` with `kernel`, with `fusion`'s prologue and
/// epilogue (`residual`, shaped like `out`, is what [`Epilogue::Residual`] adds). Under a
/// multi-threaded tract executor the rows are split between its threads ([`by_rows`]), each
/// thread computing its own, so the fused work is split too.
pub(crate) fn compute<L: PackedLayer>(
    layer: &L,
    fusion: &Fusion,
    values: &[f32],
    residual: Option<&[f32]>,
    kernel: L::Kernel,
    out: &mut [f32],
) -> TractResult<()> {
    let (k, n) = (layer.inputs(), layer.outputs());
    let slice = |first: usize, out: &mut [f32], values: &[f32]| -> TractResult<()> {
        let residual = residual.map(|r| &r[first..][..out.len()]);
        match &fusion.normalize {
            Some(normalize) => normalize.with_rows(values, k, |rows| {
                layer.compute_rows(kernel, rows, out);
                Ok(())
            })?,
            None => layer.compute_rows(kernel, values, out),
        }
        fusion.epilogue.apply(out, residual)
    };
    by_rows(values, k, out, n, |first, values, out| slice(first * n, out, values))
}

/// Runs `work(first row, its rows of values, its rows of out)` on each thread's share of the rows
/// of `values` (`k` wide) and `out` (`n` wide) under the current tract executor: equal shares of
/// the rows, one per thread, when there is more than one tile of [`TOKENS`] rows; else everything
/// on the calling thread. Shares of whole tiles left the threads unequal where it matters most: a
/// ViT-B/16 image's 197 rows made 108 and 89, and every layer waited for the 108 (equal shares,
/// whose last tiles are partial: batch 1 on two threads 5-8 % faster on Zen 4, same bits). Every
/// operation that splits rows splits them here, so that a row stays in the cache of the core that
/// wrote it (reading 600 KB another core just wrote took 35-52 us here, 4 us from the reader's own
/// cache).
pub(crate) fn by_rows(
    values: &[f32],
    k: usize,
    out: &mut [f32],
    n: usize,
    work: impl Fn(usize, &[f32], &mut [f32]) -> TractResult<()> + Sync,
) -> TractResult<()> {
    let tiles = (values.len() / k).div_ceil(TOKENS);
    match current_tract_executor() {
        Executor::MultiThread(pool) if tiles > 1 => {
            let rows = (values.len() / k).div_ceil(pool.current_num_threads().min(tiles));
            pool.install(|| {
                use rayon::prelude::*;
                values
                    .par_chunks(rows * k)
                    .zip(out.par_chunks_mut(rows * n))
                    .enumerate()
                    .try_for_each(|(i, (values, out))| work(i * rows, values, out))
            })
        }
        _ => work(0, values, out),
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

/// The part of the next group's packed weights that the tile of rows from `first` (of `rows`)
/// fetches while it computes `group` (`blocks` holds groups of `group_len` elements): each tile of a
/// group takes an equal share, whole cache lines, so the next group arrives in L2 spread over the
/// group's time. At batch 1 a ViT-B/16's weights are read from memory once an image and a group
/// has few tiles: on an Emerald Rapids VM, runs alternating in one process, spread fetches made
/// f32 images 4-5 % faster than the first tile fetching all of it (two lines a step) and 10 %
/// faster than none; int8 and bf16 images, which fetched nothing, 4-6 %; batch 8 about 2 %.
pub(crate) fn next_share<E>(blocks: &[E], group: usize, group_len: usize, first: usize, rows: usize) -> &[E] {
    let Some(next) = blocks.get((group + 1) * group_len..(group + 2) * group_len) else { return &[] };
    let per_line = (64 / size_of::<E>()).max(1);
    let share = group_len.div_ceil(rows.div_ceil(TOKENS)).next_multiple_of(per_line);
    let start = (first / TOKENS * share).min(group_len);
    &next[start..(start + share).min(group_len)]
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

/// Packed weights on whole cache lines, zero-initialized. An AMX tile row or AVX-512 load that
/// straddles two lines costs several plain ones (`tileloadd` of 16 rows of 64 bytes: 2.5 ns on
/// lines, 15.5 ns across them, on the CPU kiln is measured on), and the system allocator hands a
/// large `Vec` out 16 bytes past a page.
#[derive(Clone)]
pub(crate) struct CacheLines<T> {
    lines: Vec<CacheLine>,
    len: usize,
    element: std::marker::PhantomData<T>,
}

/// 64 bytes on a 64-byte boundary.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct CacheLine([u8; 64]);

/// Element types a [`CacheLines`] holds: plain integers, for which every bit pattern (zero
/// included) is a value and whose alignment divides 64.
///
/// # Safety
/// Implementors have no padding, no invalid bit patterns and an alignment of at most 64.
#[allow(unsafe_code)]
pub(crate) unsafe trait LineElement: Copy {}

// SAFETY: plain integers of 1 and 2 bytes.
#[allow(unsafe_code)]
unsafe impl LineElement for i8 {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl LineElement for u16 {}

impl<T: LineElement> CacheLines<T> {
    /// `len` zeros.
    pub(crate) fn zeroed(len: usize) -> CacheLines<T> {
        let lines = vec![CacheLine([0; 64]); (len * size_of::<T>()).div_ceil(64)];
        CacheLines { lines, len, element: std::marker::PhantomData }
    }
}

#[allow(unsafe_code)]
impl<T: LineElement> std::ops::Deref for CacheLines<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: the lines hold at least `len` elements' bytes, initialized, suitably aligned
        // (`LineElement`), and any bytes are valid `T`s.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }
}

#[allow(unsafe_code)]
impl<T: LineElement> std::ops::DerefMut for CacheLines<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

impl<T: LineElement + Debug> Debug for CacheLines<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLines").field("len", &self.len).finish_non_exhaustive()
    }
}

/// A layer with its weights packed: what the optimized plan runs. Never serialized. Its inputs are
/// the rows, then the residual when its epilogue adds one.
#[derive(Debug)]
pub(crate) struct PackedLinear<L> {
    pub(crate) weights: Arc<L>,
    /// What the plan fused into the layer from the graph around it.
    pub(crate) fusion: Fusion,
}

impl<L> PackedLinear<L> {
    pub(crate) fn new(weights: L) -> PackedLinear<L> {
        PackedLinear { weights: Arc::new(weights), fusion: Fusion::default() }
    }
}

impl<L> Clone for PackedLinear<L> {
    fn clone(&self) -> Self {
        PackedLinear { weights: self.weights.clone(), fusion: self.fusion }
    }
}

/// Two packed layers are the same operation when they share their packed weights and fuse the same
/// work.
impl<L> PartialEq for PackedLinear<L> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.weights, &other.weights) && self.fusion == other.fusion
    }
}

impl<L> Eq for PackedLinear<L> {}

impl<L: PackedLayer> Op for PackedLinear<L> {
    fn name(&self) -> StaticName {
        L::PACKED_NAME.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("k: {}, n: {}, {:?}", self.weights.inputs(), self.weights.outputs(), self.fusion)])
    }

    op_as_typed_op!();
}

impl<L: PackedLayer> EvalOp for PackedLinear<L> {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let residual = inputs.get(1).map(|r| &**r);
        Ok(tvec!(apply(&*self.weights, &self.fusion, &inputs[0], residual)?.into_tvalue()))
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

    /// Takes in the layer norm before the layer and the GELU or residual addition after it, so that
    /// they run on the rows each thread computes instead of as single-threaded passes of their own.
    fn fuse(&self, model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
        if self.fusion.normalize.is_none()
            && let Some((rows, normalize)) = linear_fusion::layer_norm_before(model, node)?
        {
            let fusion = Fusion { normalize: Some(normalize), ..self.fusion };
            let op = PackedLinear { weights: self.weights.clone(), fusion };
            let mut inputs = node.inputs.clone();
            inputs[0] = rows;
            return TypedModelPatch::replace_single_op(model, node, &inputs, op).map(Some);
        }
        if self.fusion.epilogue == Epilogue::Store
            && let Some((after, epilogue, residual)) = linear_fusion::epilogue_after(model, node)?
        {
            let fusion = Fusion { epilogue, ..self.fusion };
            let op = PackedLinear { weights: self.weights.clone(), fusion };
            let mut patch = TypedModelPatch::default();
            let mut inputs =
                node.inputs.iter().map(|i| patch.tap_model(model, *i)).collect::<TractResult<TVec<_>>>()?;
            if let Some(residual) = residual {
                inputs.push(patch.tap_model(model, residual)?);
            }
            let fused = patch.wire_node(format!("{}.{}", node.name, epilogue.label()), op, &inputs)?;
            patch.shunt_outside(model, after.into(), fused[0])?;
            return Ok(Some(patch));
        }
        Ok(None)
    }

    as_op!();
}

/// What the AVX-512 kernels share around their products: fetching the next group, claiming and
/// storing outputs, spilling accumulators.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::{CHANNELS, LANES, VECTORS};

    /// A tile's accumulators (`T` rows of [`VECTORS`] registers `V`) as the rows of plain sums `S`
    /// the epilogue indexes, stored once. Indexing the registers' array itself made the compiler
    /// keep a zeroed copy of it on the stack: a 1.5 KB `memset` call per tile, 2.4-2.6 % of the
    /// perf samples of the int8 and bf16 ViT-B/16 at batch 8 on Zen 4.
    ///
    /// # Safety
    /// `V` is 16 lanes of `S`, and every bit pattern is an `S` (`__m512i` and `i32`, `__m512` and
    /// `f32`).
    #[inline(always)]
    pub unsafe fn spill<const T: usize, V, S>(acc: &[[V; VECTORS]; T]) -> [[S; CHANNELS]; T] {
        debug_assert_eq!(size_of::<V>(), LANES * size_of::<S>());
        let mut sums = MaybeUninit::<[[S; CHANNELS]; T]>::uninit();
        let first = sums.as_mut_ptr() as *mut u8;
        for (t, row) in acc.iter().enumerate() {
            for (v, sum) in row.iter().enumerate() {
                // SAFETY: register `v` of row `t` is the bytes of lanes `v * 16..` of sums row `t`,
                // within `sums`, per the contract; bytes, as `sums` is only aligned for `S`.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        (sum as *const V).cast::<u8>(),
                        first.add((t * VECTORS + v) * size_of::<V>()),
                        size_of::<V>(),
                    )
                };
            }
        }
        // SAFETY: every lane of every row was written above, with values of `S` per the contract.
        unsafe { sums.assume_init() }
    }

    /// Fetches a tile's share of the next group's weights ([`super::next_share`]) into L2 over its
    /// steps (4 inputs for int8, a pair for bf16, one for f32): a line every few steps, or `burst`
    /// lines a step when the share has more lines than the tile has steps.
    pub struct Fetch {
        next: *const u8,
        left: usize,
        every: usize,
        burst: usize,
        countdown: usize,
    }

    impl Fetch {
        /// Spreads the lines of `share` over `steps` steps.
        pub fn new<E>(share: &[E], steps: usize) -> Fetch {
            let left = size_of_val(share).div_ceil(64);
            let (every, burst) = match left {
                0 => (usize::MAX, 0),
                _ if left >= steps => (1, left.div_ceil(steps.max(1))),
                _ => (steps / left, 1),
            };
            Fetch { next: share.as_ptr().cast(), left, every, burst, countdown: every }
        }

        /// One step of the tile: a fetch when its turn has come.
        #[inline(always)]
        pub fn step(&mut self) {
            if self.left == 0 {
                return;
            }
            self.countdown -= 1;
            if self.countdown == 0 {
                for _ in 0..self.burst.min(self.left) {
                    // SAFETY: prefetching never faults; the line is within the share anyway.
                    unsafe { _mm_prefetch::<_MM_HINT_T1>(self.next.cast()) };
                    self.next = self.next.wrapping_add(64);
                }
                self.left = self.left.saturating_sub(self.burst);
                self.countdown = self.every;
            }
        }
    }

    /// Asks for the lines a tile of `T` rows will store (its channels from `channel` of each row of
    /// `out`, `n` values a row) before its products. The output of a layer at batch 8 is larger than
    /// L2: without this, each store waited for its line to be read in (the int8 tile's epilogue was
    /// 12 % of its samples on Zen 4, 5 % with it). A read prefetch (`prefetcht0`, which is also what
    /// `_MM_HINT_ET0` compiles to: Rust's `prfchw` target feature is unstable): a line no other core
    /// holds arrives exclusive, and stores to it need no second request. `prefetchw` itself, by
    /// inline assembly, was no faster on an Emerald Rapids VM.
    #[inline(always)]
    pub fn claim_outputs<const T: usize>(out: &[f32], n: usize, channel: usize) {
        let last = (channel + CHANNELS).min(n) - 1;
        for row in out.chunks(n).take(T) {
            for o in [channel, last] {
                // SAFETY: prefetching an address within `row` (prefetches never fault anyway).
                unsafe { _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().add(o.min(row.len() - 1)).cast()) };
            }
        }
    }

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

    #[cfg(test)]
    mod tests {
        use super::Fetch;

        /// A tile fetches every line of its share before its last step, whether the share has
        /// fewer lines than the tile has steps or more.
        #[test]
        fn a_tile_fetches_its_whole_share() {
            for (lines, steps) in
                [(0, 5), (1, 1), (1, 768), (171, 768), (768, 768), (1536, 768), (1537, 768), (5, 3)]
            {
                let share = vec![[0u8; 64]; lines];
                let mut fetch = Fetch::new(&share, steps);
                assert_eq!(fetch.left, lines);
                for _ in 0..steps {
                    fetch.step();
                }
                assert_eq!(fetch.left, 0, "{lines} lines over {steps} steps");
            }
        }
    }
}

/// What the tests of every packed layer share.
#[cfg(test)]
pub(crate) mod testing {
    use tract_nnef::internal::*;

    use super::PackedLayer;
    use crate::linear_fusion::Fusion;

    /// Deterministic values in [-1, 1] of varied magnitudes, scattered enough that rows differ.
    pub(crate) fn pseudo_random(count: usize, seed: usize) -> Vec<f32> {
        (0..count).map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    /// Runs `layer` on `x` with one kernel, on the calling thread.
    pub(crate) fn run<L: PackedLayer>(layer: &L, x: &[f32], kernel: L::Kernel) -> TractResult<Vec<f32>> {
        let mut out = vec![f32::NAN; x.len() / layer.inputs() * layer.outputs()];
        super::compute(layer, &Fusion::default(), x, None, kernel, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::{CacheLines, next_share, tiles};

    /// The shares the tiles of one group fetch are the next group, each of its elements once, in
    /// whole lines but for the group's end; the last group's tiles fetch nothing.
    #[test]
    fn the_tiles_of_a_group_share_the_next_group_between_them() {
        let group_len = 385 * 32;
        let blocks = vec![0u16; 3 * group_len];
        for rows in [1, 12, 13, 99, 197, 788] {
            let mut fetched = vec![];
            for (group, first, _) in tiles(rows, 3) {
                let share = next_share(&blocks, group, group_len, first, rows);
                if group == 2 {
                    assert!(share.is_empty(), "{rows} rows: the last group fetches {}", share.len());
                    continue;
                }
                if !share.is_empty() {
                    let start = (share.as_ptr() as usize - blocks.as_ptr() as usize) / 2;
                    assert_eq!(start % 32, 0, "{rows} rows: a share starts within a line");
                    fetched.extend(start..start + share.len());
                }
            }
            let expected: Vec<usize> = (group_len..3 * group_len).collect();
            assert_eq!(fetched, expected, "{rows} rows");
        }
    }

    #[test]
    fn cache_lines_start_on_a_line_and_hold_their_zeros() {
        for len in [1, 63, 64, 65, 100_003] {
            let mut bytes = CacheLines::<i8>::zeroed(len);
            assert_eq!(bytes.as_ptr() as usize % 64, 0, "{len} i8");
            assert_eq!(bytes.len(), len);
            assert!(bytes.iter().all(|&b| b == 0));
            bytes[len - 1] = -1;
            assert_eq!(bytes.clone()[len - 1], -1);
            let pairs = CacheLines::<u16>::zeroed(len);
            assert_eq!((pairs.as_ptr() as usize % 64, pairs.len()), (0, len), "{len} u16");
        }
    }
}
