//! [`crate::LinearBf16`]'s product on AMX: `tdpbf16ps` multiplies a 16 x 32 bf16 tile by a 32 x 16
//! one into 16 x 16 f32 accumulators. A group's `[pairs][CHANNELS][2]` bf16 weights are the
//! pair-interleaved (VNNI) tiles it takes as its second operand. The rows are converted to bf16 into
//! a thread's buffer padded to whole tiles with zeros; the bias is added to each block's sums before
//! the valid rows and channels are stored.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

use super::{BLOCK, BlockSums, PackedGroups, PaddedRows, row_width, tile_product};
use crate::linear_bf16::convert_row;
use crate::packed_linear::avx512::store_channels;
use crate::packed_linear::{CHANNELS, LANES};

/// A layer's weights as [`crate::LinearBf16`] packs them, borrowed for one call.
pub(crate) struct PackedBf16<'a> {
    /// Inputs per row.
    pub(crate) k: usize,
    /// Outputs per row.
    pub(crate) n: usize,
    /// `[ceil(n / CHANNELS)][ceil(k / 2)][CHANNELS][2]` bf16 bit patterns, zero past `n` and `k`.
    pub(crate) blocks: &'a [u16],
    /// The bias, padded with zeros to whole groups.
    pub(crate) bias: &'a [f32],
}

/// `tdpbf16ps`: pairs of bf16 into f32 sums.
pub(super) struct Bf16Product;

tile_product!(Bf16Product, "tdpbf16ps", f32);

/// Whether this CPU and OS run [`linear_bf16`]: AMX tiles and their bf16 product, AVX-512 F and BF16
/// for the conversion and the epilogue, and the process allowed to use tile data. Asked once.
pub(crate) fn available() -> bool {
    const AMX_BF16: u32 = 22;
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bf16")
            && super::tiles_with(AMX_BF16)
    })
}

thread_local! {
    /// The rows converted to bf16, padded to whole tiles with zeros, kept between calls.
    static ROWS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Computes `out` (`rows x n`) from `values` (`rows x k`): the rows rounded to bf16 as
/// [`crate::linear_bf16::bf16_bits`] does, times `layer`'s weights, accumulated in f32, plus the bias.
pub(crate) fn linear_bf16(layer: &PackedBf16, values: &[f32], out: &mut [f32]) {
    debug_assert!(available());
    let rows = values.len() / layer.k;
    let pairs = layer.k.div_ceil(2);
    let width = row_width(pairs) / 2;
    debug_assert!(out.len() >= rows * layer.n);
    ROWS.with_borrow_mut(|buffer| {
        // Rows on whole cache lines: a tile row split across two lines costs two loads.
        let len = rows.next_multiple_of(BLOCK) * width;
        buffer.resize(len + 32, 0);
        let offset = buffer.as_ptr().align_offset(64);
        let padded = &mut buffer[offset..][..len];
        for (values, row) in values.chunks_exact(layer.k).zip(padded.chunks_exact_mut(width)) {
            // SAFETY: `available` checked AVX-512 F and BF16.
            unsafe { convert_row(values, 1.0, row) };
        }
        padded[rows * width..].fill(0);
        let a = PaddedRows { bytes: as_bytes(padded), width: width * 2, rows };
        let b =
            PackedGroups { blocks: as_bytes(layer.blocks), groups: layer.n.div_ceil(CHANNELS), units: pairs };
        let epilogue = |group, rows, sums: &BlockSums<f32>| {
            // SAFETY: `available` checked AVX-512 F.
            unsafe { store(sums, layer, group * CHANNELS, rows, out) }
        };
        // SAFETY: `available` checked AMX-BF16, AVX-512 F and the tile data permission; `padded`
        // holds whole blocks of rows, zero past `k`, the weights `n` rounded up to whole groups.
        unsafe { super::compute::<Bf16Product>(&a, &b, epilogue) };
    })
}

/// The bytes of bf16 values.
pub(super) fn as_bytes(values: &[u16]) -> &[u8] {
    // SAFETY: any u16 is two initialized bytes, and u8's alignment is 1.
    unsafe { std::slice::from_raw_parts(values.as_ptr() as *const u8, values.len() * 2) }
}

/// Adds the bias to the block's sums of `rows` and stores the channels below `n` from `channel`.
#[target_feature(enable = "avx512f")]
fn store(sums: &BlockSums<f32>, layer: &PackedBf16, channel: usize, rows: Range<usize>, out: &mut [f32]) {
    let n = layer.n;
    for (row, sums) in rows.zip(&sums.0) {
        let out = &mut out[row * n..][..n];
        for (v, sums) in sums.chunks_exact(LANES).enumerate() {
            let o = channel + v * LANES;
            if o >= n {
                break;
            }
            // SAFETY: 16 values of `sums`, and of the bias, padded to whole groups.
            let y = unsafe {
                _mm512_add_ps(_mm512_loadu_ps(sums.as_ptr()), _mm512_loadu_ps(layer.bias.as_ptr().add(o)))
            };
            store_channels(out, o, y);
        }
    }
}

#[cfg(test)]
mod tests {
    use tract_nnef::internal::*;

    use super::*;
    use crate::LinearBf16;
    use crate::linear_bf16::{Kernel, PackedWeights, bf16_bits};
    use crate::packed_linear::testing::{pseudo_random, run};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// On every shape edge (rows not a multiple of 16 or 32 or past one slice, `k` odd or not a
    /// multiple of 32, `n` not a multiple of 16 or 32) the AMX kernel computes what the portable one does up to the order of
    /// the f32 additions: both add the same exact bf16 products, so each differs from the exact sum
    /// by at most `k * 2^-24` of the sum of the products' magnitudes.
    #[test]
    fn amx_and_portable_kernels_agree_up_to_summation_order() -> TestResult {
        if !available() {
            eprintln!("skipped: this CPU or OS does not run AMX");
            return Ok(());
        }
        let mut worst = 0f64;
        for (rows, k, n) in [
            (1, 1, 1),
            (1, 768, 768),
            (5, 7, 41),
            (16, 32, 16),
            (31, 33, 65),
            (32, 64, 32),
            (33, 70, 101),
            (45, 771, 65),
            (197, 768, 64),
            (70, 3072, 40),
            (150, 4001, 33),
        ] {
            let (weight, bias) = (pseudo_random(n * k, rows + n), pseudo_random(n, k));
            let bits = LinearBf16::weights(&Tensor::from_shape(&[n, k], &weight)?)?;
            let weights = PackedWeights::new(&bits, &Tensor::from_shape(&[n], &bias)?)?;
            let x = pseudo_random(rows * k, 11 + k);
            let amx = run(&weights, &x, Kernel::Amx)?;
            let portable = run(&weights, &x, Kernel::Portable)?;
            let value = |v: f32| f32::from_bits((bf16_bits(v) as u32) << 16) as f64;
            for r in 0..rows {
                for o in 0..n {
                    let magnitude =
                        (0..k).map(|i| (value(x[r * k + i]) * value(weight[o * k + i])).abs()).sum::<f64>()
                            + bias[o].abs() as f64;
                    let error = (amx[r * n + o] as f64 - portable[r * n + o] as f64).abs();
                    let bound = magnitude * 2.0 * (k + 1) as f64 * 2f64.powi(-24);
                    assert!(error <= bound, "{rows}x{k}x{n}: row {r}, out {o}: {error} > {bound}");
                    worst = worst.max(error / magnitude.max(f64::MIN_POSITIVE));
                }
            }
        }
        eprintln!("largest difference: {worst:.2e} of the products' magnitude");
        Ok(())
    }
}
