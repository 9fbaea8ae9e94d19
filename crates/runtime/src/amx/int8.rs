//! [`crate::LinearI8`]'s integer product on AMX: `tdpbusd` multiplies a 16 x 64 tile of u8 by a 64 x
//! 16 tile of i8 into 16 x 16 i32 accumulators, the arithmetic of `vpdpbusd` on 16 times the
//! values. A group's `[quads][CHANNELS][4]` i8 weights are its quad-interleaved second operand.
//! The layer quantizes its rows itself (rows of [`row_width`] bytes, whole blocks of [`BLOCK`]
//! rows) and rescales the i32 sums with the same epilogue as its AVX-512 kernel: the sums are
//! exact, so both give the same bits.

use std::ops::Range;
use std::sync::OnceLock;

use super::{BLOCK, BlockSums, PackedGroups, PaddedRows, tile_product};
use crate::packed_linear::CHANNELS;

/// A layer's weights as [`crate::LinearI8`] packs them, borrowed for one call.
pub(crate) struct PackedI8<'a> {
    /// Inputs per row.
    pub(crate) k: usize,
    /// Outputs per row.
    pub(crate) n: usize,
    /// `[ceil(n / CHANNELS)][ceil(k / 4)][CHANNELS][4]` i8, zero past `n` and `k`.
    pub(crate) blocks: &'a [i8],
}

/// `tdpbusd`: quads of u8 x i8 into i32 sums.
struct Int8Product;

tile_product!(Int8Product, "tdpbusd", i32);

/// Whether this CPU and OS run [`products`]: AMX tiles and their int8 product, AVX-512 F, and the
/// process allowed to use tile data. Asked once.
pub(crate) fn available() -> bool {
    const AMX_INT8: u32 = 25;
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx512f") && super::tiles_with(AMX_INT8))
}

/// Bytes of one row of `k` quantized inputs as [`products`] reads it: whole tile rows (64 inputs).
/// Bytes past `k` may hold anything: they meet zero weights.
pub(crate) fn row_width(k: usize) -> usize {
    super::row_width(k.div_ceil(4))
}

/// The i32 sums of `rows` rows of u8 inputs (`activations`: `rows` rounded up to [`BLOCK`] rows of
/// [`row_width`] bytes, best 64-byte aligned) times `layer`'s weights: `epilogue(channel, rows,
/// sums)` gets each block of up to 32 rows (`rows` of the call) by the 32 channels from `channel`.
///
/// # Panics
/// If `activations` is shorter than that, or `layer.blocks` than its groups, or the CPU or OS does
/// not run AMX ([`available`]).
pub(crate) fn products(
    layer: &PackedI8,
    activations: &[u8],
    rows: usize,
    mut epilogue: impl FnMut(usize, Range<usize>, &BlockSums<i32>),
) {
    let (width, quads, groups) = (row_width(layer.k), layer.k.div_ceil(4), layer.n.div_ceil(CHANNELS));
    assert!(available(), "the AMX int8 kernel runs on a CPU or OS without AMX-INT8");
    assert!(activations.len() >= rows.next_multiple_of(BLOCK) * width, "too few activations");
    assert!(layer.blocks.len() >= groups * quads * CHANNELS * 4, "too few weights");
    let a = PaddedRows { bytes: activations, width, rows };
    // SAFETY: any i8 is one initialized byte.
    let blocks =
        unsafe { std::slice::from_raw_parts(layer.blocks.as_ptr() as *const u8, layer.blocks.len()) };
    let b = PackedGroups { blocks, groups, units: quads };
    // SAFETY: `available` checked AMX-INT8, AVX-512 F and the tile data permission; the lengths are
    // checked above, and bytes past `k` meet zero weights.
    unsafe {
        super::compute::<Int8Product>(&a, &b, |group, rows, sums| epilogue(group * CHANNELS, rows, sums))
    };
}
