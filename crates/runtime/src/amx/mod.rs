//! kiln's linear layers on Intel AMX: one tile instruction multiplies a 16-row tile of activations
//! (64 bytes a row) by a tile of 16 rows of 16 channels x 4 bytes into 16 x 16 32-bit accumulators,
//! many times the AVX-512 kernels' throughput per core (`tdpbf16ps` 29x `vdpbf16ps`, `tdpbusd` 7.3x
//! `vpdpbusd`, measured on the machines kiln is measured on).
//!
//! Both layers pack their weights per group of [`CHANNELS`] channels as `[units][CHANNELS][4 bytes]`
//! (a unit is a pair of bf16 inputs or a quad of i8 ones): 16 units by 16 channels at a time, that
//! is exactly the tiles the instructions take as their second operand, at a row stride of
//! `CHANNELS * 4` bytes, so the kernels read the packed weights as they are. Each member converts
//! its rows into a thread's buffer padded to whole tiles ([`BLOCK`] rows, 64 bytes); [`compute`]
//! keeps each block of 32 rows x 32 channels in four tiles over the whole `k` and hands the sums to
//! the member's epilogue. Members: [`bf16`] (`tdpbf16ps`, f32 sums) and [`int8`] (`tdpbusd`, u8 x i8
//! into i32 sums).
//!
//! Linux hands out the 8 KiB of tile registers per process only on request (`arch_prctl`); without
//! it the first tile instruction raises SIGILL. [`tiles_with`] asks once, and any refusal leaves the
//! layers on their AVX-512 kernels.

#![allow(unsafe_code)]

pub(crate) mod attention;
pub(crate) mod bf16;
pub(crate) mod int8;

pub(crate) use bf16::{PackedBf16, linear_bf16};

use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;
use std::sync::OnceLock;

use crate::packed_linear::CHANNELS;

/// Rows of one tile, and 4-byte units of `k` one tile step takes.
const TILE_ROWS: usize = 16;
/// Bytes of one tile row: one step of the product along `k`.
const STEP_BYTES: usize = 64;
/// Rows of one block: two tiles of rows against two tiles of 16 channels (one group).
pub(crate) const BLOCK: usize = 2 * TILE_ROWS;
/// Bytes of converted rows a thread keeps hot while every group passes over them.
const ROWS_IN_CACHE: usize = 1024 * 1024;

/// Whether this CPU has AMX tiles and the product whose CPUID leaf 7 EDX bit is `edx_bit` (AMX-BF16
/// 22, AMX-INT8 25), and the process may use tile data. (`is_x86_feature_detected!` does not take
/// AMX features on stable Rust.)
fn tiles_with(edx_bit: u32) -> bool {
    const AMX_TILE: u32 = 24;
    if __get_cpuid_max(0).0 < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << AMX_TILE) != 0 && edx & (1 << edx_bit) != 0 && tile_data_permitted()
}

/// Asks Linux once for the tile data state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA`) for the
/// whole process, then checks it was granted.
#[cfg(target_os = "linux")]
fn tile_data_permitted() -> bool {
    static PERMITTED: OnceLock<bool> = OnceLock::new();
    *PERMITTED.get_or_init(|| {
        const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: this `arch_prctl` takes the feature number by value and touches no memory.
        let requested =
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0;
        let mut permitted: u64 = 0;
        // SAFETY: this `arch_prctl` writes one u64 through the pointer, which is to a live local.
        let asked =
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mut permitted as *mut u64) }
                == 0;
        requested && asked && permitted & (1 << XFEATURE_XTILEDATA) != 0
    })
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
        bytes[16 + 2 * tile] = STEP_BYTES as u8;
        bytes[48 + tile] = TILE_ROWS as u8;
        tile += 1;
    }
    TileConfig(bytes)
};

/// One block's accumulators as `tilestored` leaves them: 32 rows of 32 channels of 32-bit sums
/// (`f32` or `i32`).
#[repr(C, align(64))]
pub(crate) struct BlockSums<S>(pub(crate) [[S; CHANNELS]; BLOCK]);

/// The last, partial step of a group's weights, padded with zeros to a whole tile, so that no tile
/// load reads past the group.
#[repr(C, align(64))]
struct TailWeights([u8; TILE_ROWS * CHANNELS * 4]);

/// Which tiles of a block's rows hold rows to compute.
#[derive(Clone, Copy)]
enum RowTiles {
    /// Rows 0-31.
    Both,
    /// Rows 0-15 only: the last block of a slice of rows often has 16 or fewer, and half the work.
    Upper,
}

/// Where a block's loop fetches the next group's weights ahead, into L2: `lines` cache lines a step
/// from `next`. A layer's weights come from memory once per image, and a tile load that waits for
/// them stalls the tile unit; spread over the blocks of the group before, they arrive in time (on
/// the AMX loop alone, a ViT-B/16 image's int8 layers from memory: 18.3 ms without, 13.5 ms with,
/// 11.3 ms with the weights in cache).
#[derive(Clone, Copy)]
struct Prefetch {
    /// The first line; prefetching never faults, so it may run past the weights.
    next: *const u8,
    /// Lines a step; 0 for none.
    lines: usize,
}

/// A tile product instruction and the 32-bit sums it accumulates.
trait TileProduct {
    /// `f32` or `i32`.
    type Sum: Copy + Default;

    /// Adds to tmm0-3 (rows 0-15 and 16-31 of a block by channels 0-15 and 16-31 of a group; only
    /// tmm0-1 for [`RowTiles::Upper`]) the products of the block's rows (`a`, `lda` bytes apart) and
    /// the group's `weights` (16 units of [`CHANNELS`] per step) over `steps` steps of 64 bytes,
    /// prefetching `prefetch.lines` lines a step from `prefetch.next` on.
    ///
    /// # Safety
    /// The CPU has the instruction, tiles configured with [`TILE_CONFIG`], `steps > 0`; `a` is 32
    /// readable rows of `steps * 64` bytes, `weights` `steps * 16` readable units.
    unsafe fn accumulate(
        tiles: RowTiles,
        a: *const u8,
        lda: usize,
        weights: *const u8,
        steps: usize,
        prefetch: Prefetch,
    );
}

/// The step of a [`TileProduct`] loop that prefetches `{lines}` lines from `{next}` on (a
/// [`Prefetch`]), counting in `{count}`.
macro_rules! prefetch_lines {
    () => {
        "mov {count}, {lines}\n test {count}, {count}\n jz 4f\n 3:\n prefetcht1 [{next}]\n add {next}, 64\n dec {count}\n jnz 3b\n 4:"
    };
}
pub(crate) use prefetch_lines;

/// A [`TileProduct`] named `$product` for the instruction `$instruction` summing into `$sum`: the one
/// loop both members run, written once.
macro_rules! tile_product {
    ($product:ident, $instruction:literal, $sum:ty) => {
        impl $crate::amx::TileProduct for $product {
            type Sum = $sum;

            unsafe fn accumulate(
                tiles: $crate::amx::RowTiles,
                a: *const u8,
                lda: usize,
                weights: *const u8,
                steps: usize,
                prefetch: $crate::amx::Prefetch,
            ) {
                use std::arch::asm;
                const LDB: usize = $crate::packed_linear::CHANNELS * 4;
                const STEP: usize = $crate::amx::TILE_ROWS * LDB;
                debug_assert!(steps > 0);
                // SAFETY: per the contract, every load is within the rows or the weights.
                unsafe {
                    if let $crate::amx::RowTiles::Upper = tiles {
                        asm!(
                            "2:",
                            "tileloadd tmm4, [{a} + {lda}*1]",
                            "tileloadd tmm6, [{b} + {ldb}*1]",
                            "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
                            concat!($instruction, " tmm0, tmm4, tmm6"),
                            concat!($instruction, " tmm1, tmm4, tmm7"),
                            $crate::amx::prefetch_lines!(),
                            "add {a}, 64",
                            "add {b}, {step}",
                            "dec {steps}",
                            "jnz 2b",
                            a = inout(reg) a => _,
                            b = inout(reg) weights => _,
                            steps = inout(reg) steps => _,
                            next = inout(reg) prefetch.next => _,
                            count = out(reg) _,
                            lines = in(reg) prefetch.lines,
                            lda = in(reg) lda,
                            ldb = in(reg) LDB,
                            step = const STEP,
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
                        concat!($instruction, " tmm0, tmm4, tmm6"),
                        concat!($instruction, " tmm1, tmm4, tmm7"),
                        concat!($instruction, " tmm2, tmm5, tmm6"),
                        concat!($instruction, " tmm3, tmm5, tmm7"),
                        $crate::amx::prefetch_lines!(),
                        "add {a}, 64",
                        "add {lower}, 64",
                        "add {b}, {step}",
                        "dec {steps}",
                        "jnz 2b",
                        a = inout(reg) a => _,
                        lower = inout(reg) a.byte_add($crate::amx::TILE_ROWS * lda) => _,
                        b = inout(reg) weights => _,
                        steps = inout(reg) steps => _,
                        next = inout(reg) prefetch.next => _,
                        count = out(reg) _,
                        lines = in(reg) prefetch.lines,
                        lda = in(reg) lda,
                        ldb = in(reg) LDB,
                        step = const STEP,
                        options(nostack, readonly),
                    );
                }
            }
        }
    };
}
pub(crate) use tile_product;

/// One layer's packed weights as bytes, borrowed for one call.
struct PackedGroups<'a> {
    /// `[groups][units][CHANNELS][4]` bytes, zero past `n` and `k`.
    blocks: &'a [u8],
    /// Groups of [`CHANNELS`] channels.
    groups: usize,
    /// 4-byte units of `k` per channel: `ceil(k / 2)` bf16 pairs or `ceil(k / 4)` i8 quads.
    units: usize,
}

/// The rows of a call as a member converted them.
struct PaddedRows<'a> {
    /// `rows` rounded up to [`BLOCK`] rows of `width` bytes, zero past `k` where a NaN could arise.
    bytes: &'a [u8],
    /// Bytes per row: `units * 4` rounded up to [`STEP_BYTES`].
    width: usize,
    /// Rows to compute.
    rows: usize,
}

/// Bytes per converted row holding `units` 4-byte units: whole tile rows.
fn row_width(units: usize) -> usize {
    (units * 4).next_multiple_of(STEP_BYTES)
}

/// Every block of 32 rows against every group, the rows in slices that stay in cache while each
/// group's weights pass over them; `epilogue(group, rows, sums)` gets each block's sums, the
/// block's rows `rows` (up to 32, from the first) valid.
///
/// # Safety
/// The CPU has `P`'s instruction and AVX-512 F, the process may use tile data; `a.bytes` holds
/// `a.rows` rounded up to [`BLOCK`] rows of `a.width` (`row_width(b.units)`) bytes, zero past the
/// units where the member's sums need it; `b.blocks` holds `b.groups` groups of `b.units` units.
#[target_feature(enable = "avx512f")]
unsafe fn compute<P: TileProduct>(
    a: &PaddedRows,
    b: &PackedGroups,
    mut epilogue: impl FnMut(usize, Range<usize>, &BlockSums<P::Sum>),
) {
    let (rows, width) = (a.rows, a.width);
    let group_bytes = b.units * CHANNELS * 4;
    let (steps, tail_units) = (b.units / TILE_ROWS, b.units % TILE_ROWS);
    let whole = steps * TILE_ROWS * CHANNELS * 4;
    debug_assert!(width == row_width(b.units) && a.bytes.len() >= rows.next_multiple_of(BLOCK) * width);
    debug_assert!(b.blocks.len() >= b.groups * group_bytes);
    let slice_rows = (ROWS_IN_CACHE / width / BLOCK).max(1) * BLOCK;
    let mut sums = BlockSums([[P::Sum::default(); CHANNELS]; BLOCK]);
    let mut tail = TailWeights([0; TILE_ROWS * CHANNELS * 4]);
    // SAFETY: the configuration is valid for palette 1; it is released below, so no tile state
    // outlives the call.
    unsafe { asm!("ldtilecfg [{}]", in(reg) TILE_CONFIG.0.as_ptr(), options(nostack, readonly)) };
    for slice in (0..rows).step_by(slice_rows) {
        for group in 0..b.groups {
            let weights = &b.blocks[group * group_bytes..][..group_bytes];
            if tail_units > 0 {
                tail.0[..group_bytes - whole].copy_from_slice(&weights[whole..]);
                tail.0[group_bytes - whole..].fill(0);
            }
            let slice_end = rows.min(slice + slice_rows);
            // The next group's lines, an equal share at every step of this group's blocks.
            let block_steps = steps + usize::from(tail_units > 0);
            let group_steps = (slice_end - slice).div_ceil(BLOCK) * block_steps;
            let (next, lines) = if group + 1 < b.groups {
                (b.blocks[(group + 1) * group_bytes..].as_ptr(), (group_bytes / 64).div_ceil(group_steps))
            } else {
                (weights.as_ptr(), 0)
            };
            for (index, first) in (slice..slice_end).step_by(BLOCK).enumerate() {
                let prefetch = |step: usize| Prefetch {
                    next: next.wrapping_add((index * block_steps + step) * lines * 64),
                    lines,
                };
                let rows_a = a.bytes[first * width..].as_ptr();
                // SAFETY: per `compute`'s contract, the row block holds `steps` (and the tail's)
                // steps of both tiles of rows, `weights` `steps` steps and `tail` one; `sums` is 32
                // rows of 32 4-byte sums, 128 bytes apart.
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
                        P::accumulate(tiles, rows_a, width, weights.as_ptr(), steps, prefetch(0));
                    }
                    if tail_units > 0 {
                        let (a, tail) = (rows_a.add(steps * STEP_BYTES), tail.0.as_ptr());
                        P::accumulate(tiles, a, width, tail, 1, prefetch(steps));
                    }
                    asm!(
                        "tilestored [{c} + {stride}*1], tmm0",
                        "tilestored [{c} + {stride}*1 + 64], tmm1",
                        "tilestored [{c} + {stride}*1 + {lower}], tmm2",
                        "tilestored [{c} + {stride}*1 + {lower} + 64], tmm3",
                        c = in(reg) sums.0.as_mut_ptr(),
                        stride = in(reg) CHANNELS * 4,
                        lower = const TILE_ROWS * CHANNELS * 4,
                        options(nostack),
                    );
                }
                epilogue(group, first..rows.min(first + BLOCK), &sums);
            }
        }
    }
    // SAFETY: returns the tiles to their initial state.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}
