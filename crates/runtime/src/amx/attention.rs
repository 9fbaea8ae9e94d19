//! [`crate::AttentionBf16`]'s heads on AMX: the scores and the context are two small products
//! [`super::compute`] runs as it runs a linear layer. The scores are the head's queries (rows, bf16)
//! times its keys packed as the weights of 32-key groups; the context is the probabilities (rows,
//! bf16) times the values packed as the weights of 32-dimension groups, pairs of tokens interleaved.
//! The softmax between them stays f32, on AVX-512, as in [`crate::Attention`].

use std::cell::RefCell;

use super::bf16::{Bf16Product, as_bytes};
use super::{BLOCK, PackedGroups, PaddedRows, row_width};
use crate::linear_bf16::{convert_row, pack_rows, pack_tokens};
use crate::packed_linear::CHANNELS;

/// Whether this CPU and OS run [`head`] on heads of `size` dimensions: AMX-BF16, AVX-512 BW for the
/// values' interleaving, and a head size in whole groups of [`CHANNELS`].
pub(crate) fn available(size: usize) -> bool {
    size > 0
        && size.is_multiple_of(CHANNELS)
        && is_x86_feature_detected!("avx512bw")
        && super::bf16::available()
}

/// A thread's buffers, kept between heads and calls.
#[derive(Default)]
struct Buffers {
    /// The queries in bf16, whole blocks of rows, each row on whole cache lines.
    queries: Vec<u16>,
    /// One group of keys in bf16, as [`crate::linear_bf16::pack_rows`] converts them.
    key_rows: Vec<u16>,
    /// The keys as the scores' weights: `[key groups][size / 2][CHANNELS][2]`.
    keys: Vec<u16>,
    /// `[tokens][keys]` f32 scores, then probabilities.
    scores: Vec<f32>,
    /// The probabilities in bf16, whole blocks of rows.
    probabilities: Vec<u16>,
    /// The values as the context's weights: `[size / CHANNELS][keys / 2][CHANNELS][2]`.
    values: Vec<u16>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::default();
}

/// A buffer of `len` values starting on a cache line, within `buffer`, holding what the last head
/// left: every row a head computes with is written whole, and the padding rows of a block give
/// sums no one stores, so nothing needs zeros (filling them was a pass over each buffer per head).
fn aligned(buffer: &mut Vec<u16>, len: usize) -> &mut [u16] {
    if buffer.len() < len + 32 {
        buffer.resize(len + 32, 0);
    }
    let offset = buffer.as_ptr().align_offset(64);
    &mut buffer[offset..][..len]
}

/// Head `h`'s context, `[tokens][size]`, of one batch element whose operands are `[tokens][heads][size]`
/// f32: `softmax(bf16(q) . bf16(k)) . bf16(v)` with the probabilities rounded to bf16, products summed
/// in f32. Compiled for AVX-512, so that the conversion of each short row (a head's 64 values) is
/// inlined instead of called.
///
/// # Safety
/// The CPU and OS run AMX attention on heads of `size` ([`available`]).
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
pub(crate) unsafe fn head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    tokens: usize,
    heads: usize,
    size: usize,
    h: usize,
) -> Vec<f32> {
    debug_assert!(available(size));
    let at = |t: usize| (t * heads + h) * size;
    let keys = tokens.next_multiple_of(CHANNELS);
    let (pairs, key_pairs) = (size / 2, keys / 2);
    BUFFERS.with_borrow_mut(|buffers| {
        let query_width = row_width(pairs) / 2;
        let queries = aligned(&mut buffers.queries, tokens.next_multiple_of(BLOCK) * query_width);
        for t in 0..tokens {
            // SAFETY: `available` checked AVX-512 F and BF16.
            unsafe { convert_row(&q[at(t)..][..size], 1.0, &mut queries[t * query_width..][..query_width]) };
        }
        let packed_keys = &mut buffers.keys;
        packed_keys.resize(packed_keys.len().max(keys * size), 0);
        // SAFETY: `available` checked AVX-512 F and BF16; `size` values a key, `keys` of them packed.
        unsafe { pack_rows(|s| &k[at(s)..][..size], tokens, pairs, &mut buffers.key_rows, packed_keys) };
        // Every score of the `tokens` rows is written below.
        let scores = &mut buffers.scores;
        scores.resize(tokens * keys, 0.0);
        let a = PaddedRows { bytes: as_bytes(queries), width: query_width * 2, rows: tokens };
        let b = PackedGroups { blocks: as_bytes(packed_keys), groups: keys / CHANNELS, units: pairs };
        // SAFETY: `available` checked AMX-BF16, AVX-512 F and the tile data permission; the queries are
        // whole blocks of rows zero past `size`, the keys `keys / CHANNELS` groups of `pairs` units.
        unsafe { product(&a, &b, scores) };
        let probability_width = row_width(key_pairs) / 2;
        let probabilities =
            aligned(&mut buffers.probabilities, tokens.next_multiple_of(BLOCK) * probability_width);
        for (t, row) in scores.chunks_exact_mut(keys).enumerate() {
            // The softmax's last pass, scaling by the inverse of the sum, is the conversion's.
            let inverse = 1.0 / crate::attention::exponentials_avx512(&mut row[..tokens]);
            // SAFETY: `available` checked AVX-512 F and BF16; the keys past `tokens` convert to zeros.
            unsafe {
                convert_row(
                    &row[..tokens],
                    inverse,
                    &mut probabilities[t * probability_width..][..probability_width],
                )
            };
        }
        let packed_values = &mut buffers.values;
        packed_values.clear();
        packed_values.resize(size * keys, 0);
        // SAFETY: `available` checked AVX-512 F, BF16 and BW and a size in whole groups; the values
        // hold `size * keys` bf16, zero past `tokens`.
        unsafe { pack_tokens(|t| &v[at(t)..][..size], tokens, key_pairs, packed_values) };
        let mut context = vec![0f32; tokens * size];
        let a = PaddedRows { bytes: as_bytes(probabilities), width: probability_width * 2, rows: tokens };
        let b = PackedGroups { blocks: as_bytes(packed_values), groups: size / CHANNELS, units: key_pairs };
        // SAFETY: as above; the probabilities are whole blocks of rows zero past `tokens`, the values
        // `size / CHANNELS` groups of `keys / 2` units, zero past `tokens`.
        unsafe { product(&a, &b, &mut context) };
        context
    })
}

/// `a` times `b` into `out`: `a.rows` rows of `b.groups * CHANNELS` f32 sums.
///
/// # Safety
/// As [`super::compute`] for `tdpbf16ps`.
unsafe fn product(a: &PaddedRows, b: &PackedGroups, out: &mut [f32]) {
    let width = b.groups * CHANNELS;
    // SAFETY: per this function's contract.
    unsafe {
        super::compute::<Bf16Product>(a, b, |group, rows, sums| {
            for (r, sums) in rows.zip(&sums.0) {
                out[r * width + group * CHANNELS..][..CHANNELS].copy_from_slice(sums);
            }
        })
    };
}
