//! `Attention`: scaled dot-product attention of every head as one operation.
//!
//! Once [`crate::LinearI8`] made the int8 ViT-B's linear layers fast, attention was a quarter of the
//! image's time on one core (16 of 64 ms): tract packs the query, key, scores and value operands for
//! its two matmuls, writes the 12 x 197 x 197 scores out, and its softmax runs at 0.8 ns per value.
//! This operation computes each head's scores into a buffer that stays in cache, applies the softmax
//! on each row while it is hot (AVX-512 exponential), and multiplies by the values read in place, so
//! only the query and key of one head are copied. Heads are independent and spread over tract's
//! executor threads. It lives in the runtime because the artifact's reader must know it, and is
//! serialized as the NNEF extension `kiln` (`kiln_attention`).

use tract_core::ops::einsum::EinSum;
use tract_core::ops::nn::{Softmax, SoftmaxKind};
use tract_linalg::multithread::{Executor, current_tract_executor};
use tract_nnef::internal::*;

use crate::linear_bf16::round_to_bf16;
use crate::packed_linear::CHANNELS;

/// The NNEF fragment name of [`Attention`].
const PRIMITIVE: &str = "kiln_attention";

/// f32 lanes of one AVX-512 register.
const LANES: usize = 16;
/// Query rows of one scores tile (with two key vectors: 24 accumulators).
const SCORE_ROWS: usize = 12;
/// Keys of one scores tile.
const SCORE_KEYS: usize = 2 * LANES;
/// Query rows of one context tile (with up to four value vectors: 24 accumulators).
const CONTEXT_ROWS: usize = 6;

/// `softmax(q @ k^T) @ v` per head: `query`, `key` and `value` are `f32[N, T, H, D]` (batch, tokens,
/// heads, head size), the output is the context, `f32[N, T, H, D]`. The `1/sqrt(D)` scale is not
/// applied: kiln folds it into the query projection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attention;

impl Op for Attention {
    fn name(&self) -> StaticName {
        "Attention".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Attention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        attend(&inputs, Operands::F32)
    }
}

impl TypedOp for Attention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 3, "attention takes query, key and value");
        for input in inputs {
            ensure!(
                input.datum_type == f32::datum_type(),
                "attention takes f32, found {:?}",
                input.datum_type
            );
            ensure!(input.rank() == 4, "attention takes [batch, tokens, heads, head size]");
        }
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    /// Where the AVX-512 kernels do not apply (another CPU, or a head size other than 16, 32, 48 or
    /// 64), the operation becomes tract's einsum, softmax and einsum, whose kernels beat the portable
    /// path by far.
    fn codegen(&self, model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
        lower_unless(model, node, |size| Kernel::detect(size) != Kernel::Portable)
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let s = &inputs[0].shape;
        Ok(tvec!((Cost::FMA(f32::datum_type()), s[0].clone() * &s[1] * &s[1] * &s[2] * &s[3] * 2)))
    }

    as_op!();
}

/// [`Attention`] on bf16 operands: the query, key and value rounded to bf16 (to nearest, ties to
/// even, as [`crate::LinearBf16`] rounds its inputs), the probabilities too before the context
/// product, the products (exact in f32) summed in f32, the softmax in f32. On AMX CPUs both products run
/// on tiles (`tdpbf16ps`), on CPUs that run `vdpbf16ps` at full rate (AMD's) on it (head sizes of
/// whole 32s); elsewhere, Intel's AVX512_BF16 cores included, the f32 kernels run on the rounded
/// operands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttentionBf16;

impl Op for AttentionBf16 {
    fn name(&self) -> StaticName {
        "AttentionBf16".into()
    }

    op_as_typed_op!();
}

impl EvalOp for AttentionBf16 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        attend(&inputs, Operands::Bf16)
    }
}

impl TypedOp for AttentionBf16 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Attention.output_facts(inputs)
    }

    /// Where neither AMX nor the AVX-512 kernels apply, the operation becomes tract's f32 einsum,
    /// softmax and einsum on the operands as they are (not rounded), as [`crate::LinearBf16`] becomes
    /// tract's f32 matmul: far faster than the portable path, and at least as accurate.
    fn codegen(&self, model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
        lower_unless(model, node, |size| {
            amx_runs(size) || pairs_run(size) || Kernel::detect(size) != Kernel::Portable
        })
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Attention.cost(inputs)
    }

    as_op!();
}

/// What the operands are rounded to before their products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operands {
    /// Used as they are: [`Attention`].
    F32,
    /// Query, key, value and probabilities rounded to bf16: [`AttentionBf16`].
    Bf16,
}

/// Whether [`AttentionBf16`] runs on AMX here for heads of `size`.
fn amx_runs(size: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::amx::attention::available(size);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = size;
        false
    }
}

/// Whether [`AttentionBf16`] runs both products on `vdpbf16ps` here for heads of `size`, where AMX
/// does not run them: AVX512_BF16 at full rate ([`crate::linear_bf16::pairs_pay`]; where it is
/// slow, the f32 kernels on rounded operands took 23 % less time a ViT-B head), AVX-512 BW and a head
/// size in whole groups of [`CHANNELS`] (the values' packing).
fn pairs_run(size: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return size > 0
        && size.is_multiple_of(CHANNELS)
        && crate::linear_bf16::pairs_pay()
        && is_x86_feature_detected!("avx512bw");
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = size;
        false
    }
}

/// Both operations' evaluation: every head of every batch element, spread over tract's executor
/// threads, each copying its heads into place.
fn attend(inputs: &[TValue], operands: Operands) -> TractResult<TVec<TValue>> {
    let shape = inputs[0].shape().to_vec();
    ensure!(shape.len() == 4, "attention takes [batch, tokens, heads, head size], found {shape:?}");
    for input in &inputs[1..] {
        ensure!(input.shape() == shape, "attention operands differ: {shape:?} and {:?}", input.shape());
    }
    let views = inputs.iter().map(|input| input.try_as_plain_ram()).collect::<TractResult<TVec<_>>>()?;
    let [q, k, v] = [0, 1, 2].map(|i| views[i].as_slice::<f32>());
    let (q, k, v) = (q?, k?, v?);
    let size = shape[3];
    let amx = operands == Operands::Bf16 && amx_runs(size);
    let layout = Layout { tokens: shape[1], heads: shape[2], size: shape[3] };
    // SAFETY: every value is written below: each head of each batch element is a job, and each
    // job's context covers every token of its head.
    #[allow(unsafe_code)]
    let mut output = unsafe { Tensor::uninitialized::<f32>(&shape)? };
    if output.len() == 0 {
        return Ok(tvec!(output.into_tvalue()));
    }
    let mut view = output.try_as_plain_ram_mut()?;
    let out = view.as_slice_mut::<f32>()?;
    let per_batch = layout.tokens * layout.heads * layout.size;
    let jobs: Vec<(usize, usize)> =
        (0..shape[0]).flat_map(|n| (0..layout.heads).map(move |h| (n, h))).collect();
    // Without AMX, bf16 operands are the f32 kernels' on operands rounded to bf16 as each head copies them.
    let context = Context { layout, q, k, v, bf16: operands == Operands::Bf16 && !amx };
    // Each job's rows of the output: its head's `size` values of every token, in token order.
    let mut destinations: Vec<Vec<&mut [f32]>> = jobs.iter().map(|_| vec![]).collect();
    for (i, values) in out.chunks_exact_mut(size).enumerate() {
        let (n, h) = (i / (layout.tokens * layout.heads), i % layout.heads);
        destinations[n * layout.heads + h].push(values);
    }
    // The thread that computed a head stores it, where it is still in cache.
    let run = |(&(n, h), destination): (&(usize, usize), &mut Vec<&mut [f32]>)| {
        // A thread's jobs are consecutive heads: the next one's operands come in while this one computes.
        if let Some(next) =
            [(n, h + 1), (n + 1, 0)].into_iter().find(|&(n, h)| n < shape[0] && h < layout.heads)
        {
            layout.prefetch(next.0 * per_batch, next.1, [q, k, v]);
        }
        #[cfg(target_arch = "x86_64")]
        if amx {
            let [q, k, v] = [q, k, v].map(|x| &x[n * per_batch..][..per_batch]);
            // SAFETY: `amx_runs` checked that this CPU and OS run AMX attention on heads of `size`.
            #[allow(unsafe_code)]
            let values =
                unsafe { crate::amx::attention::head(q, k, v, layout.tokens, layout.heads, size, h) };
            for (out, values) in destination.iter_mut().zip(values.chunks_exact(size)) {
                out.copy_from_slice(values);
            }
            return;
        }
        context.head(n * per_batch, h, destination)
    };
    match current_tract_executor() {
        Executor::MultiThread(pool) if jobs.len() > 1 => pool.install(|| {
            use rayon::prelude::*;
            jobs.par_iter().zip(destinations.par_iter_mut()).for_each(run)
        }),
        _ => jobs.iter().zip(destinations.iter_mut()).for_each(run),
    }
    Ok(tvec!(output.into_tvalue()))
}

/// Both operations' codegen: kept where `kiln_runs` the head size (known when the plan is built), else
/// [`lower_to_tract`].
fn lower_unless(
    model: &TypedModel,
    node: &TypedNode,
    kiln_runs: impl Fn(usize) -> bool,
) -> TractResult<Option<TypedModelPatch>> {
    let size = model.outlet_fact(node.inputs[0])?.shape[3].to_usize();
    if size.is_ok_and(kiln_runs) {
        return Ok(None);
    }
    lower_to_tract(model, node).map(Some)
}

/// The operation in tract's operators: scores by einsum, softmax over the keys, context by einsum.
fn lower_to_tract(model: &TypedModel, node: &TypedNode) -> TractResult<TypedModelPatch> {
    let name = &node.name;
    let einsum = |expr: &str| -> TractResult<EinSum> { Ok(EinSum::new(expr.parse()?, f32::datum_type())) };
    let mut patch = TypedModelPatch::default();
    let [q, k, v] = [0, 1, 2].map(|ix| patch.tap_model(model, node.inputs[ix]));
    let scores = patch.wire_node(format!("{name}.scores"), einsum("nqhd,nkhd->nhqk")?, &[q?, k?])?;
    let softmax = Softmax { axes: tvec!(3), quant_output_dt: None, kind: SoftmaxKind::Softmax };
    let probabilities = patch.wire_node(format!("{name}.softmax"), softmax, &scores)?[0];
    let context =
        patch.wire_node(format!("{name}.context"), einsum("nhqk,nkhd->nqhd")?, &[probabilities, v?])?;
    patch.shunt_outside(model, node.id.into(), context[0])?;
    Ok(patch)
}

/// Sizes of the `[tokens, heads, size]` operands of one batch element.
#[derive(Clone, Copy, Debug)]
struct Layout {
    tokens: usize,
    heads: usize,
    size: usize,
}

impl Layout {
    /// Where `(token, head, 0)` starts.
    fn at(&self, token: usize, head: usize) -> usize {
        (token * self.heads + head) * self.size
    }

    /// Asks for head `h` of the batch element starting at `base` of each of `operands` in L2. A
    /// head's rows are a few lines each, a whole row of heads apart: without this, reading them
    /// waited on L3 (on Zen 4 at batch 8, 5-7 % of an int8 ViT-B/16 attention layer).
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn prefetch(&self, base: usize, h: usize, operands: [&[f32]; 3]) {
        #[cfg(target_arch = "x86_64")]
        for t in 0..self.tokens {
            for operand in operands {
                let row = &operand[base + self.at(t, h)..][..self.size];
                for line in row.chunks(64 / size_of::<f32>()) {
                    // SAFETY: prefetching an address within `operand` (prefetches never fault anyway).
                    #[allow(unsafe_code)]
                    unsafe {
                        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                            line.as_ptr().cast(),
                        )
                    };
                }
            }
        }
    }
}

/// One call's operands.
struct Context<'a> {
    layout: Layout,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    /// Whether the query, key, value and probabilities are rounded to bf16 before their products.
    bf16: bool,
}

/// A head's work buffers, kept by each thread between calls.
#[derive(Default)]
struct HeadBuffers {
    /// The head's queries, `[rows padded to SCORE_ROWS][size]`.
    query: Vec<f32>,
    /// The head's keys transposed, `[size][keys padded to SCORE_KEYS]`.
    keys: Vec<f32>,
    /// Scores, then probabilities: `[rows padded][keys padded]`.
    scores: Vec<f32>,
    /// One context tile before it is stored.
    tile: Vec<f32>,
    /// The head's values rounded to bf16, `[tokens][size]` (f32 values are read in place).
    values: Vec<f32>,
}

/// The first `len` values of `buffer`, holding what the last head left: every value a head reads is
/// written first, and padding rows and keys give scores no one reads, so nothing needs zeros
/// (filling them was a pass over 180 KB per ViT-B head).
fn reused<T: Copy + Default>(buffer: &mut Vec<T>, len: usize) -> &mut [T] {
    if buffer.len() < len {
        buffer.resize(len, T::default());
    }
    &mut buffer[..len]
}

/// A head's buffers for [`Context::head_bf16`], kept by each thread between calls.
#[cfg(target_arch = "x86_64")]
#[derive(Default)]
struct PairBuffers {
    /// The head's queries in bf16, `[tokens][size]`.
    queries: Vec<u16>,
    /// One group of keys in bf16, as [`crate::linear_bf16::pack_rows`] converts them.
    key_rows: Vec<u16>,
    /// The keys as the scores' weights: `[keys / CHANNELS][size / 2][CHANNELS][2]`.
    keys: Vec<u16>,
    /// `[tokens][keys]` f32 scores.
    scores: Vec<f32>,
    /// The probabilities in bf16, `[tokens][pairs of tokens * 2]`, zero past `tokens`.
    probabilities: Vec<u16>,
    /// The values as the context's weights: `[size / CHANNELS][pairs of tokens][CHANNELS][2]`.
    values: Vec<u16>,
    /// `[tokens][size]` f32 context.
    context: Vec<f32>,
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    static PAIR_BUFFERS: std::cell::RefCell<PairBuffers> = Default::default();
}

thread_local! {
    static BUFFERS: std::cell::RefCell<HeadBuffers> = Default::default();
}

impl Context<'_> {
    /// Computes head `h` of the batch element starting at `base` into `out`, its context: one row of
    /// `size` values per token.
    fn head(&self, base: usize, h: usize, out: &mut [&mut [f32]]) {
        #[cfg(target_arch = "x86_64")]
        if self.bf16 && pairs_run(self.layout.size) {
            return self.head_bf16(base, h, out);
        }
        self.head_f32(base, h, out)
    }

    /// [`Context::head`] with the f32 kernels, on the operands as they are or rounded to bf16.
    fn head_f32(&self, base: usize, h: usize, out: &mut [&mut [f32]]) {
        let Layout { tokens, heads, size } = self.layout;
        let rows = tokens.div_ceil(SCORE_ROWS) * SCORE_ROWS;
        let keys = tokens.div_ceil(SCORE_KEYS) * SCORE_KEYS;
        BUFFERS.with_borrow_mut(|buffers| {
            let HeadBuffers { query, keys: keys_t, scores, tile, values } = buffers;
            let query = reused(query, rows * size);
            let keys_t = reused(keys_t, size * keys);
            for t in 0..tokens {
                let at = base + self.layout.at(t, h);
                query[t * size..][..size].copy_from_slice(&self.q[at..][..size]);
                for (d, &k) in self.k[at..][..size].iter().enumerate() {
                    keys_t[d * keys + t] = k;
                }
            }
            if self.bf16 {
                round_to_bf16(&mut query[..tokens * size]);
                round_to_bf16(keys_t);
            }
            let scores = reused(scores, rows * keys);
            let kernel = Kernel::detect(size);
            for first in (0..rows).step_by(SCORE_ROWS) {
                for key in (0..keys).step_by(SCORE_KEYS) {
                    let block = ScoreBlock { query, keys_t, keys, size, first, key };
                    match kernel {
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx512 => block.compute_avx512(scores),
                        Kernel::Portable => block.compute_portable(scores),
                    }
                }
            }
            // The context reads the probabilities of the first `tokens` keys only.
            for row in scores.chunks_exact_mut(keys).take(tokens) {
                let live = &mut row[..tokens];
                match kernel {
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx512 => softmax_avx512(live),
                    Kernel::Portable => softmax_portable(live),
                }
                if self.bf16 {
                    round_to_bf16(live);
                }
            }
            let (values, stride) = if self.bf16 {
                let values = reused(values, tokens * size);
                for (t, row) in values.chunks_exact_mut(size).enumerate() {
                    row.copy_from_slice(&self.v[base + self.layout.at(t, h)..][..size]);
                }
                round_to_bf16(values);
                (&values[..], size)
            } else {
                (&self.v[base + self.layout.at(0, h)..], heads * size)
            };
            let tile = reused(tile, CONTEXT_ROWS * size);
            for first in (0..tokens).step_by(CONTEXT_ROWS) {
                let block = ContextBlock { scores, keys, tokens, values, stride, size, first };
                match kernel {
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx512 => block.compute_avx512(tile),
                    Kernel::Portable => block.compute_portable(tile),
                }
                for (out, row) in out[first..].iter_mut().zip(tile.chunks_exact(size).take(CONTEXT_ROWS)) {
                    out.copy_from_slice(row);
                }
            }
        })
    }

    /// [`Context::head`] on bf16 operands with AVX512_BF16 and no AMX: both products on
    /// `vdpbf16ps` in [`crate::linear_bf16`]'s kernel (two products an instruction per lane where
    /// `vfmadd` does one), the keys packed as the scores' weights and the values as the context's,
    /// pairs of tokens interleaved, as the AMX heads pack them.
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    fn head_bf16(&self, base: usize, h: usize, out: &mut [&mut [f32]]) {
        use crate::linear_bf16::{Bf16Operands, Kernel, convert_row, pack_rows, pack_tokens};
        let Layout { tokens, size, .. } = self.layout;
        let (pairs, keys, token_pairs) = (size / 2, tokens.next_multiple_of(CHANNELS), tokens.div_ceil(2));
        let at = |t: usize| base + self.layout.at(t, h);
        PAIR_BUFFERS.with_borrow_mut(|buffers| {
            let PairBuffers { queries, key_rows, keys: packed_keys, scores, probabilities, values, context } =
                buffers;
            let queries = reused(queries, tokens * size);
            for (t, bf16) in queries.chunks_exact_mut(size).enumerate() {
                // SAFETY: `pairs_run` checked AVX-512 F and BF16.
                unsafe { convert_row(&self.q[at(t)..][..size], 1.0, bf16) };
            }
            let packed_keys = reused(packed_keys, keys * size);
            // SAFETY: as above; `size` values a key, `keys` of them packed.
            unsafe { pack_rows(|s| &self.k[at(s)..][..size], tokens, pairs, key_rows, packed_keys) };
            let scores = reused(scores, tokens * keys);
            let operands =
                Bf16Operands { activations: queries, weights: packed_keys, pairs, n: keys, bias: None };
            operands.compute(Kernel::Bf16, scores);
            let width = token_pairs * 2;
            let probabilities = reused(probabilities, tokens * width);
            for (scores, bf16) in scores.chunks_exact_mut(keys).zip(probabilities.chunks_exact_mut(width)) {
                // The softmax's scaling by the inverse of the sum is the conversion's.
                let inverse = 1.0 / exponentials_avx512(&mut scores[..tokens]);
                // SAFETY: as above; the conversion writes zeros past `tokens`.
                unsafe { convert_row(&scores[..tokens], inverse, bf16) };
            }
            let values = reused(values, size * width);
            // SAFETY: `pairs_run` checked AVX-512 F, BF16 and BW and a size in whole groups; the
            // values hold `token_pairs` pairs per dimension.
            unsafe { pack_tokens(|t| &self.v[at(t)..][..size], tokens, token_pairs, values) };
            let context = reused(context, tokens * size);
            let operands = Bf16Operands {
                activations: probabilities,
                weights: values,
                pairs: token_pairs,
                n: size,
                bias: None,
            };
            operands.compute(Kernel::Bf16, context);
            for (out, row) in out.iter_mut().zip(context.chunks_exact(size)) {
                out.copy_from_slice(row);
            }
        })
    }
}

/// Which implementation runs a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// AVX-512, for head sizes that are whole registers, up to 64.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// Plain Rust: the unoptimized graph's path and the AVX-512 kernels' reference (optimized plans
    /// use tract's operators where the AVX-512 kernels do not apply).
    Portable,
}

impl Kernel {
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn detect(size: usize) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if size.is_multiple_of(LANES)
            && (LANES..=4 * LANES).contains(&size)
            && is_x86_feature_detected!("avx512f")
        {
            return Kernel::Avx512;
        }
        Kernel::Portable
    }
}

/// `SCORE_ROWS` queries against `SCORE_KEYS` keys.
struct ScoreBlock<'a> {
    query: &'a [f32],
    keys_t: &'a [f32],
    /// Padded key count: the row length of `keys_t` and of the scores.
    keys: usize,
    size: usize,
    first: usize,
    key: usize,
}

impl ScoreBlock<'_> {
    fn compute_portable(&self, scores: &mut [f32]) {
        for r in self.first..self.first + SCORE_ROWS {
            for j in self.key..self.key + SCORE_KEYS {
                let q = &self.query[r * self.size..][..self.size];
                scores[r * self.keys + j] =
                    q.iter().enumerate().map(|(d, q)| q * self.keys_t[d * self.keys + j]).sum();
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    fn compute_avx512(&self, scores: &mut [f32]) {
        // SAFETY: `Kernel::Avx512` is only chosen when the CPU has AVX-512 F; the block lies within
        // the padded buffers `Context::head` sized.
        unsafe { avx512::scores(self, scores) }
    }
}

/// `CONTEXT_ROWS` rows of `probabilities @ values` for one head.
struct ContextBlock<'a> {
    scores: &'a [f32],
    keys: usize,
    tokens: usize,
    /// The head's values: token `s`'s `size` values from `s * stride`.
    values: &'a [f32],
    stride: usize,
    size: usize,
    first: usize,
}

impl ContextBlock<'_> {
    /// Writes `tile` (`CONTEXT_ROWS x size`); rows past the last token are zeros times padding.
    fn compute_portable(&self, tile: &mut [f32]) {
        let size = self.size;
        tile.fill(0.0);
        for (r, out) in tile.chunks_exact_mut(size).enumerate() {
            let Some(p) = self.scores.get((self.first + r) * self.keys..(self.first + r + 1) * self.keys)
            else {
                continue;
            };
            for (s, &p) in p.iter().enumerate().take(self.tokens) {
                let v = &self.values[s * self.stride..][..size];
                for (o, v) in out.iter_mut().zip(v) {
                    *o += p * v;
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    fn compute_avx512(&self, tile: &mut [f32]) {
        // SAFETY: `Kernel::Avx512` is only chosen when the CPU has AVX-512 F and the head size is
        // 16, 32, 48 or 64; the score rows read exist (rows are padded to SCORE_ROWS, a multiple of
        // CONTEXT_ROWS) and the values read are tokens below `tokens`.
        unsafe {
            match self.size / LANES {
                1 => avx512::context::<1>(self, tile),
                2 => avx512::context::<2>(self, tile),
                3 => avx512::context::<3>(self, tile),
                _ => avx512::context::<4>(self, tile),
            }
        }
    }
}

/// Softmax of one row in place, the plain way.
fn softmax_portable(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0.0;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    let inverse = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inverse);
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn softmax_avx512(row: &mut [f32]) {
    // SAFETY: `Kernel::Avx512` is only chosen when the CPU has AVX-512 F.
    unsafe { avx512::softmax(row) }
}

/// `exp(x - max)` of one row in place with the AVX-512 exponential, as the softmax computes them
/// before scaling; returns their sum.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) fn exponentials_avx512(row: &mut [f32]) -> f32 {
    assert!(is_x86_feature_detected!("avx512f"), "the AVX-512 exponential on a CPU without AVX-512 F");
    // SAFETY: checked above.
    unsafe { avx512::exponentials(row) }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{CONTEXT_ROWS, ContextBlock, LANES, SCORE_KEYS, SCORE_ROWS, ScoreBlock};

    /// One scores block: per head dimension, two key vectors against `SCORE_ROWS` broadcast queries.
    ///
    /// # Safety
    /// AVX-512 F; the block's rows and keys lie within `query`, `keys_t` and `scores`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores(block: &ScoreBlock, scores: &mut [f32]) {
        let mut acc = [[_mm512_setzero_ps(); 2]; SCORE_ROWS];
        let size = block.size;
        debug_assert!((block.first + SCORE_ROWS) * size <= block.query.len());
        debug_assert!(block.key + SCORE_KEYS <= block.keys);
        // SAFETY: per the function's contract.
        unsafe {
            let q = block.query.as_ptr().add(block.first * size);
            for d in 0..size {
                let k = block.keys_t.as_ptr().add(d * block.keys + block.key);
                let keys = [_mm512_loadu_ps(k), _mm512_loadu_ps(k.add(LANES))];
                for (r, row) in acc.iter_mut().enumerate() {
                    let query = _mm512_set1_ps(*q.add(r * size + d));
                    for (sum, keys) in row.iter_mut().zip(&keys) {
                        *sum = _mm512_fmadd_ps(query, *keys, *sum);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                let out = scores.as_mut_ptr().add((block.first + r) * block.keys + block.key);
                _mm512_storeu_ps(out, row[0]);
                _mm512_storeu_ps(out.add(LANES), row[1]);
            }
        }
    }

    /// One context tile: per token, `V` value vectors read in place against `CONTEXT_ROWS`
    /// broadcast probabilities.
    ///
    /// # Safety
    /// AVX-512 F; the head size is `V * 16`; the block's score rows exist; `tile` holds
    /// `CONTEXT_ROWS` rows of the head size.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn context<const V: usize>(block: &ContextBlock, tile: &mut [f32]) {
        let mut acc = [[_mm512_setzero_ps(); V]; CONTEXT_ROWS];
        debug_assert!((block.first + CONTEXT_ROWS) * block.keys <= block.scores.len());
        debug_assert!(tile.len() >= CONTEXT_ROWS * V * LANES);
        // SAFETY: per the function's contract.
        unsafe {
            let p = block.scores.as_ptr().add(block.first * block.keys);
            for s in 0..block.tokens {
                let v = block.values.as_ptr().add(s * block.stride);
                let values: [__m512; V] = std::array::from_fn(|i| _mm512_loadu_ps(v.add(i * LANES)));
                for (r, row) in acc.iter_mut().enumerate() {
                    let probability = _mm512_set1_ps(*p.add(r * block.keys + s));
                    for (sum, value) in row.iter_mut().zip(&values) {
                        *sum = _mm512_fmadd_ps(probability, *value, *sum);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (i, sum) in row.iter().enumerate() {
                    _mm512_storeu_ps(tile.as_mut_ptr().add((r * V + i) * LANES), *sum);
                }
            }
        }
    }

    /// Softmax of one row in place: [`exponentials`], then the scaling by the inverse of their sum.
    #[target_feature(enable = "avx512f")]
    pub fn softmax(row: &mut [f32]) {
        let inverse = _mm512_set1_ps(1.0 / exponentials(row));
        for chunk in row.chunks_mut(LANES) {
            let m = mask(chunk.len());
            // SAFETY: masked load and store of the chunk's elements.
            unsafe {
                let x = _mm512_maskz_loadu_ps(m, chunk.as_ptr());
                _mm512_mask_storeu_ps(chunk.as_mut_ptr(), m, _mm512_mul_ps(x, inverse));
            }
        }
    }

    /// The mask of a chunk of `len` values (at most 16).
    fn mask(len: usize) -> u16 {
        if len == LANES { u16::MAX } else { (1u16 << len) - 1 }
    }

    /// `exp(x - max)` of one row in place, with [`exp`]; returns their sum.
    #[target_feature(enable = "avx512f")]
    pub fn exponentials(row: &mut [f32]) -> f32 {
        let mut peak = _mm512_set1_ps(f32::NEG_INFINITY);
        for chunk in row.chunks(LANES) {
            let m = mask(chunk.len());
            // SAFETY: masked load of the chunk's elements.
            let x = unsafe { _mm512_mask_loadu_ps(peak, m, chunk.as_ptr()) };
            peak = _mm512_max_ps(peak, x);
        }
        let peak = _mm512_set1_ps(_mm512_reduce_max_ps(peak));
        let mut sum = _mm512_setzero_ps();
        for chunk in row.chunks_mut(LANES) {
            let m = mask(chunk.len());
            // SAFETY: masked load and store of the chunk's elements.
            unsafe {
                let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, chunk.as_ptr()), peak));
                sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, e));
                _mm512_mask_storeu_ps(chunk.as_mut_ptr(), m, e);
            }
        }
        _mm512_reduce_add_ps(sum)
    }

    /// `e^x` for `x <= 0` (softmax's shifted scores), relative error about 1e-7: `x = n ln 2 + r`
    /// with `|r| <= ln 2 / 2` (ln 2 split in two so `r` is exact), `e^r` by its Taylor series to
    /// degree 7 (truncation error below 6e-9), and `2^n` applied by `vscalefps`, which gives 0 for
    /// very negative `x`.
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        const LN2_HIGH: f32 = 0.693_145_75;
        const LN2_LOW: f32 = 1.428_606_8e-6;
        let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HIGH), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LOW), r);
        let mut p = _mm512_set1_ps(1.0 / 5040.0);
        for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }
}

/// The NNEF fragment name of [`AttentionBf16`].
const PRIMITIVE_BF16: &str = "kiln_attention_bf16";

/// Registers `kiln_attention` and `kiln_attention_bf16` in the `kiln` NNEF extension.
pub(crate) fn register(registry: &mut Registry) {
    registry.register_dumper(|ast, node, _: &Attention| crate::nnef::invocation_of(PRIMITIVE, ast, node));
    registry.register_dumper(|ast, node, _: &AttentionBf16| {
        crate::nnef::invocation_of(PRIMITIVE_BF16, ast, node)
    });
    let inputs = [
        TypeName::Scalar.tensor().named("query"),
        TypeName::Scalar.tensor().named("key"),
        TypeName::Scalar.tensor().named("value"),
    ];
    let output = [("output", TypeName::Scalar.tensor())];
    registry.register_primitive(PRIMITIVE, &inputs, &output, |builder, invocation| {
        let inputs = crate::nnef::named_wires(builder, invocation, &["query", "key", "value"])?;
        builder.wire(Attention, &inputs)
    });
    registry.register_primitive(PRIMITIVE_BF16, &inputs, &output, |builder, invocation| {
        let inputs = crate::nnef::named_wires(builder, invocation, &["query", "key", "value"])?;
        builder.wire(AttentionBf16, &inputs)
    });
}

#[cfg(test)]
mod tests {
    use tract_linalg::multithread::multithread_tract_scope;

    use super::*;
    use crate::linear_bf16::{bf16_bits, bf16_value};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The attention operation and tract's einsum, softmax, einsum, side by side on one input.
    fn model(shape: [usize; 4]) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let [q, k, v] = ["q", "k", "v"].map(|name| model.add_source(name, f32::fact(shape)));
        let (q, k, v) = (q?, k?, v?);
        let fused = model.wire_node("fused", Attention, &[q, k, v])?[0];
        let einsum = |expr: &str| EinSum::new(expr.parse().expect("valid einsum"), f32::datum_type());
        let scores = model.wire_node("scores", einsum("nqhd,nkhd->nhqk"), &[q, k])?;
        let softmax = Softmax { axes: tvec!(3), quant_output_dt: None, kind: SoftmaxKind::Softmax };
        let probabilities = model.wire_node("softmax", softmax, &scores)?[0];
        let context = model.wire_node("context", einsum("nhqk,nkhd->nqhd"), &[probabilities, v])?[0];
        model.select_output_outlets(&[fused, context])?;
        Ok(model)
    }

    fn inputs(shape: [usize; 4]) -> TractResult<TVec<TValue>> {
        let count = shape.iter().product::<usize>();
        (0..3)
            .map(|seed| {
                let values: Vec<f32> =
                    (0..count).map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 250.0 - 4.0).collect();
                Ok(Tensor::from_shape(&shape, &values)?.into_tvalue())
            })
            .collect()
    }

    fn values(t: &Tensor) -> TractResult<Vec<f32>> {
        Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect())
    }

    /// On ViT-B's head shape (the AVX-512 kernels), on sizes that are not whole registers (the
    /// portable ones), and with token counts that leave partial tiles, the operation gives tract's
    /// einsum-softmax-einsum result; on two threads it gives the same bits as on one.
    #[test]
    fn attention_matches_tract_ops_on_every_path() -> TestResult {
        for shape in [[2, 197, 3, 64], [1, 13, 2, 16], [1, 30, 1, 48], [1, 5, 2, 8], [1, 1, 1, 32]] {
            let plan = model(shape)?.into_runnable()?;
            let outputs = plan.run(inputs(shape)?)?;
            let (fused, reference) = (values(&outputs[0])?, values(&outputs[1])?);
            let worst = fused.iter().zip(&reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= 2e-5, "{shape:?}: max |fused - tract| {worst}");
            let threaded = multithread_tract_scope(Executor::multithread(2), || plan.run(inputs(shape)?))?;
            assert_eq!(values(&threaded[0])?, fused, "{shape:?}: threads changed the result");
        }
        Ok(())
    }

    /// The plan keeps the operation where its AVX-512 kernels apply, and otherwise (forced here for a
    /// supported size, automatic for a head size of 8, also for the bf16 operation) rewrites it into
    /// tract's f32 operators, which give the f32 operation's result.
    #[test]
    fn plans_use_tract_operators_where_the_kernels_do_not_apply() -> TestResult {
        for (shape, force, bf16) in
            [([1, 13, 2, 16], true, false), ([1, 5, 2, 8], false, false), ([1, 5, 2, 8], false, true)]
        {
            let mut only = TypedModel::default();
            let [q, k, v] = ["q", "k", "v"].map(|name| only.add_source(name, f32::fact(shape)));
            let output = if bf16 {
                only.wire_node("attention", AttentionBf16, &[q?, k?, v?])?
            } else {
                only.wire_node("attention", Attention, &[q?, k?, v?])?
            };
            only.select_output_outlets(&output)?;
            let expected = Attention.eval(&EvalContext::out_of_plan(), inputs(shape)?)?;
            if force {
                let node = only.node(output[0].node).clone();
                lower_to_tract(&only, &node)?.apply(&mut only)?;
            }
            let optimized = only.into_optimized()?;
            let ops: Vec<String> = optimized.nodes().iter().map(|node| node.op.name().to_string()).collect();
            assert!(!ops.iter().any(|op| op.starts_with("Attention")), "{shape:?}: not rewritten: {ops:?}");
            let got = optimized.into_runnable()?.run(inputs(shape)?)?;
            let worst = values(&got[0])?
                .iter()
                .zip(values(&expected[0])?)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= 2e-5, "{shape:?}: max |tract - kiln| {worst}");
        }
        Ok(())
    }

    /// Empty operands (no token, no head, or a zero head size) give an empty output, not a panic.
    #[test]
    fn empty_operands_give_an_empty_output() -> TestResult {
        for shape in [[1, 0, 2, 16], [1, 4, 0, 16], [1, 4, 2, 0], [0, 4, 2, 16]] {
            let outputs = Attention.eval(&EvalContext::out_of_plan(), inputs(shape)?)?;
            assert_eq!(outputs[0].shape(), &shape);
        }
        Ok(())
    }

    /// A graph holding the operation survives an NNEF write and read with [`crate::nnef`].
    #[test]
    fn nnef_round_trip_keeps_the_operation() -> TestResult {
        let shape = [1, 7, 2, 16];
        let mut model = TypedModel::default();
        let [q, k, v] = ["q", "k", "v"].map(|name| model.add_source(name, f32::fact(shape)));
        let output = model.wire_node("attention", Attention, &[q?, k?, v?])?;
        model.select_output_outlets(&output)?;
        let expected = model.clone().into_runnable()?.run(inputs(shape)?)?;
        let mut buffer = vec![];
        crate::nnef().write_to_tar(&model, &mut buffer)?;
        let reloaded = crate::nnef().model_for_read(&mut &buffer[..])?.into_optimized()?.into_runnable()?;
        assert_eq!(values(&reloaded.run(inputs(shape)?)?[0])?, values(&expected[0])?);
        Ok(())
    }

    /// Operands in [-0.5, 0.5]: scores of a few units, so the softmax is not one-hot and the rounding of
    /// the operands shows in the result.
    fn small_inputs(shape: [usize; 4]) -> TractResult<TVec<TValue>> {
        inputs(shape)?
            .into_iter()
            .map(|t| Ok(t.to_plain_array_view::<f32>()?.map(|x| x / 8.0).into_tensor().into_tvalue()))
            .collect()
    }

    /// `softmax(bf16(q) . bf16(k)) . bf16(v)` in f64, the probabilities rounded to bf16.
    fn bf16_reference(shape: [usize; 4], inputs: &[TValue]) -> TractResult<Vec<f64>> {
        let [batch, tokens, heads, size] = shape;
        let rounded = |t: &TValue| -> TractResult<Vec<f64>> {
            Ok(values(t)?.iter().map(|&x| bf16_value(bf16_bits(x)) as f64).collect())
        };
        let (q, k, v) = (rounded(&inputs[0])?, rounded(&inputs[1])?, rounded(&inputs[2])?);
        let at = |n: usize, t: usize, h: usize| ((n * tokens + t) * heads + h) * size;
        let mut out = vec![0f64; q.len()];
        for (n, t, h) in
            (0..batch).flat_map(|n| (0..tokens).flat_map(move |t| (0..heads).map(move |h| (n, t, h))))
        {
            let scores: Vec<f64> = (0..tokens)
                .map(|s| (0..size).map(|d| q[at(n, t, h) + d] * k[at(n, s, h) + d]).sum())
                .collect();
            let max = scores.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
            let sum: f64 = scores.iter().map(|x| (x - max).exp()).sum();
            for (s, score) in scores.iter().enumerate() {
                let p = bf16_value(bf16_bits(((score - max).exp() / sum) as f32)) as f64;
                for d in 0..size {
                    out[at(n, t, h) + d] += p * v[at(n, s, h) + d];
                }
            }
        }
        Ok(out)
    }

    /// On AMX or `vdpbf16ps` (head sizes of whole 32s, 288 among them) and on the f32 kernels'
    /// fallback (48, 8, and CPUs without AVX512_BF16), the bf16 operation follows the bf16
    /// reference within `2^-12` of the largest value: f32 sums, and now and then a probability whose f32 value rounds to the other bf16
    /// neighbour than its f64 value (one step, `2^-8` of a probability, times a value). Leaving any
    /// operand unrounded moves the result by about `2^-8` of the largest value, 16 times the bound.
    /// Two threads give the same bits as one.
    #[test]
    fn bf16_attention_follows_the_rounded_reference() -> TestResult {
        for shape in [
            [1, 197, 3, 64],
            [2, 13, 2, 32],
            [1, 40, 1, 96],
            [1, 9, 1, 288],
            [1, 30, 1, 48],
            [1, 5, 2, 8],
            [1, 1, 1, 32],
        ] {
            let inputs = small_inputs(shape)?;
            let got = values(&AttentionBf16.eval(&EvalContext::out_of_plan(), inputs.clone())?[0])?;
            let expected = bf16_reference(shape, &inputs)?;
            let largest = values(&inputs[2])?.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let worst = got.iter().zip(&expected).fold(0f64, |m, (&a, b)| m.max((a as f64 - b).abs()));
            assert!(worst <= largest * 2f64.powi(-12), "{shape:?}: max |bf16 - reference| {worst}");
            let f32_output = values(&Attention.eval(&EvalContext::out_of_plan(), inputs.clone())?[0])?;
            assert_ne!(got, f32_output, "{shape:?}: no rounding");
            let threaded = multithread_tract_scope(Executor::multithread(2), || {
                AttentionBf16.eval(&EvalContext::out_of_plan(), inputs.clone())
            })?;
            assert_eq!(values(&threaded[0])?, got, "{shape:?}: threads changed the result");
        }
        Ok(())
    }

    /// The AMX heads and the `vdpbf16ps` heads compute what the f32 kernels do on rounded operands;
    /// they differ by summation order and, through it, a probability's rounding now and then (bound
    /// as above). Each runs where the CPU has it, whichever of them this CPU's plans take.
    #[test]
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    fn bf16_heads_agree_with_the_rounded_f32_kernels() -> TestResult {
        let shape = [1, 197, 2, 64];
        let inputs = small_inputs(shape)?;
        let views = inputs.iter().map(|t| values(t)).collect::<TractResult<Vec<_>>>()?;
        let layout = Layout { tokens: 197, heads: 2, size: 64 };
        let context = Context { layout, q: &views[0], k: &views[1], v: &views[2], bf16: true };
        let largest = views[2].iter().fold(0f32, |m, v| m.max(v.abs()));
        let amx = |h: usize| {
            // SAFETY: only called where this CPU and OS run AMX attention on heads of 64.
            unsafe { crate::amx::attention::head(&views[0], &views[1], &views[2], 197, 2, 64, h) }
        };
        let pairs = |h: usize| {
            let mut context_rows = vec![0f32; 197 * 64];
            context.head_bf16(0, h, &mut context_rows.chunks_exact_mut(64).collect::<Vec<_>>());
            context_rows
        };
        type Head<'a> = &'a dyn Fn(usize) -> Vec<f32>;
        let mut heads: Vec<(&str, Head)> = vec![];
        if crate::amx::attention::available(64) {
            heads.push(("amx", &amx));
        }
        if is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512bw") {
            heads.push(("vdpbf16ps", &pairs));
        }
        for (name, head) in heads {
            for h in 0..2 {
                let got = head(h);
                let mut f32_kernels = vec![0f32; 197 * 64];
                context.head_f32(0, h, &mut f32_kernels.chunks_exact_mut(64).collect::<Vec<_>>());
                assert!(f32_kernels.iter().any(|&v| v != 0.0), "head {h}: nothing computed");
                let worst = got.iter().zip(&f32_kernels).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    worst <= largest * 2f32.powi(-12),
                    "{name} head {h}: max |{name} - f32 kernels| {worst}"
                );
            }
        }
        Ok(())
    }

    /// A graph holding the bf16 operation survives an NNEF write and read as `kiln_attention_bf16`.
    #[test]
    fn nnef_round_trip_keeps_the_bf16_operation() -> TestResult {
        let shape = [1, 7, 2, 32];
        let mut model = TypedModel::default();
        let [q, k, v] = ["q", "k", "v"].map(|name| model.add_source(name, f32::fact(shape)));
        let output = model.wire_node("attention", AttentionBf16, &[q?, k?, v?])?;
        model.select_output_outlets(&output)?;
        let expected = model.clone().into_runnable()?.run(small_inputs(shape)?)?;
        let mut buffer = vec![];
        crate::nnef().write_to_tar(&model, &mut buffer)?;
        let reloaded = crate::nnef().model_for_read(&mut &buffer[..])?;
        assert!(reloaded.nodes().iter().any(|n| n.op_is::<AttentionBf16>()), "{reloaded}");
        let plan = reloaded.into_optimized()?.into_runnable()?;
        assert_eq!(values(&plan.run(small_inputs(shape)?)?[0])?, values(&expected[0])?);
        Ok(())
    }
}
