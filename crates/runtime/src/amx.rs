//! [`crate::LinearBf16`]'s product on Intel AMX: `tdpbf16ps` multiplies a 16 x 32 bf16 tile by a
//! 32 x 16 one into 16 x 16 f32 accumulators in one instruction, about 29 times `vdpbf16ps`'s
//! peak throughput per core on the machines kiln is measured on (6-8 times on whole layers).
//!
//! The kernel reads the layer's packed weights as they are: a group's `[pairs][CHANNELS][2]` bf16
//! values are, 16 pairs by 16 channels at a time, exactly the pair-interleaved (VNNI) tiles
//! `tdpbf16ps` takes as its second operand, at a row stride of `CHANNELS * 2` values. The rows are
//! converted to bf16 into a thread's buffer padded to whole tiles (32 rows, 32 inputs) with zeros,
//! and each block of 32 rows x 32 channels accumulates in four tiles over the whole `k` before the
//! bias is added and the valid rows and channels are stored.
//!
//! Linux hands out the 8 KiB of tile registers per process only on request (`arch_prctl`); without
//! it the first tile instruction raises SIGILL. [`available`] asks once, and any refusal leaves the
//! layer on its AVX-512 kernel.

#![allow(unsafe_code)]

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

use crate::packed_linear::avx512::store_channels;
use crate::packed_linear::{CHANNELS, LANES};

/// Rows (and bf16 inputs per row: 64 bytes) of one tile.
const TILE_ROWS: usize = 16;
/// bf16 inputs a tile row holds, and one step of the product along `k`.
const STEP: usize = 32;
/// Rows of one block: two tiles of rows against two tiles of 16 channels (one group).
const BLOCK: usize = 2 * TILE_ROWS;
/// Bytes of converted rows a thread keeps hot while every group passes over them.
const ROWS_IN_CACHE: usize = 1024 * 1024;

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

/// Whether this CPU and OS run [`linear_bf16`]: AMX tiles and their bf16 product, AVX-512 F and BF16
/// for the conversion and the epilogue, and the process allowed to use tile data. Asked once.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        amx_bf16_in_cpuid()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bf16")
            && tile_data_permitted()
    })
}

/// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (bit 24). (`is_x86_feature_detected!` does not
/// take AMX features on stable Rust.) Whether the OS saves tile state is [`tile_data_permitted`]'s
/// question.
fn amx_bf16_in_cpuid() -> bool {
    if __get_cpuid_max(0).0 < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// Asks Linux for the tile data state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA`) for the whole
/// process, then checks it was granted.
#[cfg(target_os = "linux")]
fn tile_data_permitted() -> bool {
    const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: this `arch_prctl` takes the feature number by value and touches no memory.
    let requested =
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0;
    let mut permitted: u64 = 0;
    // SAFETY: this `arch_prctl` writes one u64 through the pointer, which is to a live local.
    let asked =
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mut permitted as *mut u64) } == 0;
    requested && asked && permitted & (1 << XFEATURE_XTILEDATA) != 0
}

/// Other systems enable tile data on their own terms; kiln does not use it there.
#[cfg(not(target_os = "linux"))]
fn tile_data_permitted() -> bool {
    false
}

/// Tile configuration (palette 1): the eight tiles all 16 rows of 64 bytes. `ldtilecfg` reads it
/// from 64 aligned bytes: the palette, then each tile's bytes per row (u16) from byte 16 and its rows
/// (u8) from byte 48.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

static TILE_CONFIG: TileConfig = {
    let mut bytes = [0u8; 64];
    bytes[0] = 1;
    let mut tile = 0;
    while tile < 8 {
        bytes[16 + 2 * tile] = 64;
        bytes[48 + tile] = TILE_ROWS as u8;
        tile += 1;
    }
    TileConfig(bytes)
};

/// One block's accumulators as `tilestored` leaves them: 32 rows of 32 channels.
#[repr(C, align(64))]
struct BlockOutputs([[f32; CHANNELS]; BLOCK]);

/// The last, partial step of a group's weights, padded with zero pairs to a whole tile, so that no
/// tile load reads past the group.
#[repr(C, align(64))]
struct TailWeights([u16; TILE_ROWS * CHANNELS * 2]);

thread_local! {
    /// The rows converted to bf16, padded to whole tiles with zeros, kept between calls.
    static ROWS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Computes `out` (`rows x n`) from `values` (`rows x k`): the rows rounded to bf16 as
/// [`crate::linear_bf16::bf16_bits`] does, times `layer`'s weights, accumulated in f32, plus the bias.
pub(crate) fn linear_bf16(layer: &PackedBf16, values: &[f32], out: &mut [f32]) {
    debug_assert!(available());
    let rows = values.len() / layer.k;
    let width = layer.k.next_multiple_of(STEP);
    ROWS.with_borrow_mut(|buffer| {
        // Rows on whole cache lines: a tile row split across two lines costs two loads.
        let len = rows.next_multiple_of(BLOCK) * width;
        buffer.resize(len + 32, 0);
        let offset = buffer.as_ptr().align_offset(64);
        let padded = &mut buffer[offset..][..len];
        for (values, row) in values.chunks_exact(layer.k).zip(padded.chunks_exact_mut(width)) {
            // SAFETY: `available` checked AVX-512 F and BF16.
            unsafe { convert_row(values, row) };
        }
        padded[rows * width..].fill(0);
        // SAFETY: `available` checked AMX and the tile data permission; `padded` holds whole
        // blocks of `width` values per row, `out` the `rows x n` outputs.
        unsafe { compute(layer, padded, width, rows, out) };
    })
}

/// Rounds `values` to bf16 into `row` (`values.len()` rounded up to [`STEP`]), zeros past them.
/// `vcvtneps2bf16` rounds as [`crate::linear_bf16::bf16_bits`] does (to nearest even, subnormals to zero).
///
/// # Safety
/// The CPU has AVX-512 F and BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn convert_row(values: &[f32], row: &mut [u16]) {
    for (i, chunk) in row.chunks_exact_mut(LANES).enumerate() {
        let first = i * LANES;
        let count = values.len().saturating_sub(first).min(LANES);
        // SAFETY: the masked load reads `values[first..first + count]`, the store writes the 16
        // values of `chunk`.
        unsafe {
            let x = _mm512_maskz_loadu_ps((1u32 << count).wrapping_sub(1) as u16, values.as_ptr().add(first));
            let bf16 = _mm512_cvtneps_pbh(x);
            _mm256_storeu_si256(
                chunk.as_mut_ptr() as *mut __m256i,
                std::mem::transmute::<__m256bh, __m256i>(bf16),
            );
        }
    }
}

/// Every block of 32 rows against every group, the rows in slices that stay in cache while each
/// group's weights pass over them.
///
/// # Safety
/// The CPU has AMX-BF16 and AVX-512 F, the process may use tile data; `padded` holds `rows` rounded
/// up to [`BLOCK`] rows of `width` values (`k` rounded up to [`STEP`]), zero past `k`; `out` holds
/// `rows x n` values.
#[target_feature(enable = "avx512f")]
unsafe fn compute(layer: &PackedBf16, padded: &[u16], width: usize, rows: usize, out: &mut [f32]) {
    let n = layer.n;
    let pairs = layer.k.div_ceil(2);
    let group_values = pairs * CHANNELS * 2;
    let (steps, tail_pairs) = (pairs / TILE_ROWS, pairs % TILE_ROWS);
    debug_assert!(
        width.is_multiple_of(STEP)
            && width >= layer.k
            && padded.len() >= rows.next_multiple_of(BLOCK) * width
    );
    debug_assert!(layer.blocks.len() >= n.div_ceil(CHANNELS) * group_values);
    debug_assert!(out.len() >= rows * n);
    let slice_rows = (ROWS_IN_CACHE / (width * 2) / BLOCK).max(1) * BLOCK;
    let mut outputs = BlockOutputs([[0.0; CHANNELS]; BLOCK]);
    let mut tail = TailWeights([0; TILE_ROWS * CHANNELS * 2]);
    // SAFETY: the configuration is valid for palette 1; it is released below, so no tile state
    // outlives the call.
    unsafe { asm!("ldtilecfg [{}]", in(reg) TILE_CONFIG.0.as_ptr(), options(nostack, readonly)) };
    for slice in (0..rows).step_by(slice_rows) {
        for group in 0..n.div_ceil(CHANNELS) {
            let weights = &layer.blocks[group * group_values..][..group_values];
            let whole = steps * TILE_ROWS * CHANNELS * 2;
            if tail_pairs > 0 {
                tail.0[..group_values - whole].copy_from_slice(&weights[whole..]);
                tail.0[group_values - whole..].fill(0);
            }
            for first in (slice..rows.min(slice + slice_rows)).step_by(BLOCK) {
                let a = padded[first * width..].as_ptr();
                // SAFETY: per `compute`'s contract, the row block holds `steps` (and the tail's)
                // steps of both tiles of rows, `weights` `steps` steps and `tail` one; `outputs`
                // is 32 rows of 32 f32, 128 bytes apart.
                unsafe {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem)
                    );
                    let tiles = if rows - first > TILE_ROWS { RowTiles::Both } else { RowTiles::Upper };
                    if steps > 0 {
                        accumulate(tiles, a, width * 2, weights.as_ptr(), steps);
                    }
                    if tail_pairs > 0 {
                        accumulate(tiles, a.add(steps * STEP), width * 2, tail.0.as_ptr(), 1);
                    }
                    asm!(
                        "tilestored [{c} + {stride}*1], tmm0",
                        "tilestored [{c} + {stride}*1 + 64], tmm1",
                        "tilestored [{c} + {stride}*1 + {lower}], tmm2",
                        "tilestored [{c} + {stride}*1 + {lower} + 64], tmm3",
                        c = in(reg) outputs.0.as_mut_ptr(),
                        stride = in(reg) CHANNELS * 4,
                        lower = const TILE_ROWS * CHANNELS * 4,
                        options(nostack),
                    );
                }
                store(&outputs, layer, group * CHANNELS, first..rows.min(first + BLOCK), out);
            }
        }
    }
    // SAFETY: returns the tiles to their initial state.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// Which tiles of a block's rows hold rows to compute.
#[derive(Clone, Copy)]
enum RowTiles {
    /// Rows 0-31.
    Both,
    /// Rows 0-15 only: the last block of a slice of rows often has 16 or fewer, and half the work.
    Upper,
}

/// Adds to tmm0-3 (rows 0-15 and 16-31 of a block by channels 0-15 and 16-31 of a group; only tmm0-1
/// for [`RowTiles::Upper`]) the products of the block's rows (`a`, `lda` bytes apart) and the
/// group's `weights` (16 pairs of [`CHANNELS`] per step) over `steps` steps of 32 inputs.
///
/// # Safety
/// Tiles configured with [`TILE_CONFIG`], `steps > 0`; `a` is 32 readable rows of `steps * 64`
/// bytes, `weights` `steps * 16` readable pairs.
unsafe fn accumulate(tiles: RowTiles, a: *const u16, lda: usize, weights: *const u16, steps: usize) {
    const LDB: usize = CHANNELS * 2 * 2;
    debug_assert!(steps > 0);
    // SAFETY: per the contract, every load is within the rows or the weights.
    unsafe {
        if let RowTiles::Upper = tiles {
            asm!(
                "2:",
                "tileloadd tmm4, [{a} + {lda}*1]",
                "tileloadd tmm6, [{b} + {ldb}*1]",
                "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "add {a}, 64",
                "add {b}, {step}",
                "dec {steps}",
                "jnz 2b",
                a = inout(reg) a => _,
                b = inout(reg) weights => _,
                steps = inout(reg) steps => _,
                lda = in(reg) lda,
                ldb = in(reg) LDB,
                step = const TILE_ROWS * LDB,
                options(nostack, readonly),
            );
            return;
        }
        asm!(
            "2:",
            "tileloadd tmm4, [{a} + {lda}*1]",
            "tileloadd tmm6, [{b} + {ldb}*1]",
            "tileloadd tmm5, [{lower} + {lda}*1]",
            "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a}, 64",
            "add {lower}, 64",
            "add {b}, {step}",
            "dec {steps}",
            "jnz 2b",
            a = inout(reg) a => _,
            lower = inout(reg) a.byte_add(TILE_ROWS * lda) => _,
            b = inout(reg) weights => _,
            steps = inout(reg) steps => _,
            lda = in(reg) lda,
            ldb = in(reg) LDB,
            step = const TILE_ROWS * LDB,
            options(nostack, readonly),
        );
    }
}

/// Adds the bias to the block's outputs of `rows` and stores the channels below `n` from `channel`.
#[target_feature(enable = "avx512f")]
fn store(
    outputs: &BlockOutputs,
    layer: &PackedBf16,
    channel: usize,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let n = layer.n;
    for (row, sums) in rows.zip(&outputs.0) {
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
    use crate::linear_fusion::Fusion;
    use crate::packed_linear::{self, PackedLayer};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Deterministic values in [-1, 1] of varied magnitudes.
    fn pseudo_random(count: usize, seed: usize) -> Vec<f32> {
        (0..count).map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    /// Runs `weights` on `x` with one kernel, on the calling thread.
    fn run(weights: &PackedWeights, x: &[f32], kernel: Kernel) -> TractResult<Vec<f32>> {
        let mut out = vec![f32::NAN; x.len() / weights.inputs() * weights.outputs()];
        packed_linear::compute(weights, &Fusion::default(), x, None, kernel, &mut out)?;
        Ok(out)
    }

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

    /// `vcvtneps2bf16` rounds as the portable conversion does: ties to even, NaN quiet, subnormals
    /// to zero, overflow to infinity.
    #[test]
    fn conversion_rounds_as_the_portable_one() -> TestResult {
        if !available() {
            eprintln!("skipped: this CPU or OS does not run AMX");
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
        let mut row = vec![0xffff; values.len().next_multiple_of(STEP)];
        // SAFETY: `available` checked AVX-512 F and BF16.
        unsafe { convert_row(&values, &mut row) };
        for (&v, &bits) in values.iter().zip(&row) {
            assert_eq!(bits, bf16_bits(v), "{v:e} ({:#x})", v.to_bits());
        }
        assert!(row[values.len()..].iter().all(|&b| b == 0), "the padding is not zero");
        Ok(())
    }
}
