//! From decoded pixels to the graph's input size, reproducing the resize the model was evaluated with.
//!
//! [`ResizeMode::Pil`] is Pillow 13's `Image.resize` (libImaging/Resample.c) bit for bit: a separable
//! convolution (two one-dimensional passes, in Pillow's order) whose filter support widens with the
//! downscale factor (antialiasing), with weights in 22-bit fixed point and each pass rounded and clamped
//! to 8 bits. `fast_image_resize` follows Pillow-SIMD instead (16-bit weights, no pass-order rule) and
//! lands up to 8 levels off with bicubic, so it is not used.
//! Pillow's `NEAREST` is affine nearest-neighbour sampling instead of a convolution.
//! [`ResizeMode::Tf`] is `tf.image.resize(method="bilinear", antialias=False)`: half-pixel centers and
//! `f32` arithmetic, then rounded to the nearest level because the graph takes `u8`, which moves each
//! value by at most half a level from TensorFlow's float result.
//!
//! Every output pixel of these resizes is a function of its own position (and, for Pillow, of which
//! passes run, which the full size decides), so computing a [`ResizeWindow`] of the output gives exactly
//! that part of the full resize: a centre crop costs no work outside the crop.

use std::f64::consts::PI;
use std::ops::Range;

use ::image::RgbImage;
use artifact::{ResampleFilter, ResizeMode};

const CHANNELS: usize = 3;

/// Pillow's fixed-point precision: 8 bits of result plus 2 bits of headroom for filters whose
/// partial sums overshoot, in an `i32` accumulator.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The part of a resize that is computed: output `columns` x `rows` of the full `width` x `height` one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ResizeWindow {
    /// Width of the full resize.
    pub(super) width: u32,
    /// Height of the full resize.
    pub(super) height: u32,
    /// Output columns computed, within `0..width`.
    pub(super) columns: Range<u32>,
    /// Output rows computed, within `0..height`.
    pub(super) rows: Range<u32>,
}

/// Resizes `image` per `mode` and `filter`, computing only `window` of the output; returns its RGB8 HWC
/// pixels (`window.columns` x `window.rows`).
///
/// [`ResizeMode::Tf`] is always bilinear: TF Serving's seed used nothing else, and the manifest documents
/// `resample` as meaningful only for [`ResizeMode::Pil`].
pub(super) fn resize(
    image: RgbImage,
    mode: ResizeMode,
    filter: ResampleFilter,
    window: &ResizeWindow,
) -> Vec<u8> {
    if window.columns.is_empty() || window.rows.is_empty() {
        return Vec::new();
    }
    match mode {
        ResizeMode::Tf => tf_bilinear(&image, window),
        // Pillow returns a copy when nothing changes, whatever the filter; `nearest` and `convolve` copy
        // the window in that case.
        ResizeMode::Pil if image.dimensions() == (window.width, window.height) && window.is_whole() => {
            image.into_raw()
        }
        ResizeMode::Pil => match Kernel::for_filter(filter) {
            None => nearest(&image, window),
            Some(kernel) => convolve(&image, kernel, window),
        },
    }
}

impl ResizeWindow {
    /// Whether the window is the full resize.
    fn is_whole(&self) -> bool {
        self.columns == (0..self.width) && self.rows == (0..self.height)
    }
}

/// A `u32` range as indices.
fn span(range: &Range<u32>) -> Range<usize> {
    range.start as usize..range.end as usize
}

/// Rows of RGB8 pixels in a buffer, with the image coordinates of its first row and column, so that
/// passes over a part of an image address it as the whole.
#[derive(Debug, Clone, Copy)]
struct Block<'a> {
    pixels: &'a [u8],
    /// Pixels per row in `pixels`.
    width: usize,
    /// Row of the image that is the first row of `pixels`.
    top: usize,
    /// Column of the image that is the first column of `pixels`.
    left: usize,
}

impl<'a> Block<'a> {
    fn whole(image: &'a RgbImage) -> Self {
        Block { pixels: image.as_raw(), width: image.width() as usize, top: 0, left: 0 }
    }

    /// The samples of image row `row`, columns `columns`.
    fn row(&self, row: usize, columns: Range<usize>) -> &'a [u8] {
        let start = (row - self.top) * self.width;
        &self.pixels
            [(start + columns.start - self.left) * CHANNELS..(start + columns.end - self.left) * CHANNELS]
    }
}

/// The pixels of `rows` x `columns` of `block`.
fn copy(block: Block<'_>, rows: Range<usize>, columns: Range<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * columns.len() * CHANNELS);
    for row in rows {
        out.extend_from_slice(block.row(row, columns.clone()));
    }
    out
}

/// Pillow's convolution filters, with the support (half-width, in source pixels at scale 1) each has.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl Kernel {
    fn for_filter(filter: ResampleFilter) -> Option<Self> {
        match filter {
            ResampleFilter::Nearest => None,
            ResampleFilter::Box => Some(Self::Box),
            ResampleFilter::Bilinear => Some(Self::Bilinear),
            ResampleFilter::Hamming => Some(Self::Hamming),
            ResampleFilter::Bicubic => Some(Self::Bicubic),
            ResampleFilter::Lanczos => Some(Self::Lanczos),
        }
    }

    fn support(self) -> f64 {
        match self {
            Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    /// The filter at `x`, written as Pillow writes it so that every weight rounds the same way.
    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * PI;
                    // Pillow's constants are single-precision literals (`0.54f`, `0.46f`).
                    x.sin() / x * (f64::from(0.54_f32) + f64::from(0.46_f32) * x.cos())
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * PI;
        x.sin() / x
    }
}

/// Fixed-point weights of one pass: for each output pixel, the source pixels it reads and their weights.
struct Coefficients {
    /// Source range read by each output pixel.
    windows: Vec<Range<usize>>,
    /// `stride` weights per output pixel; the first `window.len()` of them are used.
    weights: Vec<i32>,
    stride: usize,
}

impl Coefficients {
    /// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the output pixels `outputs`
    /// of a resize from `in_size` to `out_size`.
    fn new(in_size: u32, out_size: u32, outputs: Range<u32>, kernel: Kernel) -> Self {
        let scale = f64::from(in_size) / f64::from(out_size);
        let filter_scale = scale.max(1.0);
        // Multiplying by the reciprocal, not dividing, rounds as Pillow does.
        let inverse_scale = 1.0 / filter_scale;
        let support = kernel.support() * filter_scale;
        // `support` is at most 3 * 65535 (JPEG dimensions are 16-bit), so this cannot truncate.
        let stride = support.ceil() as usize * 2 + 1;
        let mut windows = Vec::with_capacity(outputs.len());
        let mut weights = vec![0; outputs.len() * stride];
        let mut unnormalized = Vec::with_capacity(stride);
        for (out_index, out_weights) in outputs.zip(weights.chunks_exact_mut(stride)) {
            let center = (f64::from(out_index) + 0.5) * scale;
            // Truncation toward zero, then clamping, as Pillow's `(int)` casts do.
            let start = ((center - support + 0.5) as i64).max(0);
            let end = ((center + support + 0.5) as i64).min(i64::from(in_size));
            unnormalized.clear();
            unnormalized.extend(
                (start..end).map(|source| kernel.weight((source as f64 - center + 0.5) * inverse_scale)),
            );
            let total: f64 = unnormalized.iter().sum();
            for (fixed, &weight) in out_weights.iter_mut().zip(&unnormalized) {
                let weight = if total == 0.0 { weight } else { weight / total };
                *fixed = to_fixed_point(weight);
            }
            windows.push(start as usize..end as usize);
        }
        Self { windows, weights, stride }
    }

    fn iter(&self) -> impl Iterator<Item = (Range<usize>, &[i32])> {
        self.windows.iter().cloned().zip(self.weights.chunks_exact(self.stride))
    }

    /// The source pixels the outputs read, from the first one's first to the last one's last.
    fn sources(&self) -> Range<usize> {
        let start = self.windows.first().map_or(0, |window| window.start);
        start..self.windows.last().map_or(start, |window| window.end)
    }
}

/// One axis of a Pillow resize: kept as is (Pillow skips the pass when the size does not change), or
/// convolved.
enum Axis {
    /// Output pixel `i` is source pixel `i`; these are the outputs computed.
    Keep(Range<usize>),
    /// Pillow's weights for the outputs computed.
    Convolve(Coefficients),
}

impl Axis {
    fn new(in_size: u32, out_size: u32, outputs: &Range<u32>, kernel: Kernel) -> Self {
        if in_size == out_size {
            Axis::Keep(span(outputs))
        } else {
            Axis::Convolve(Coefficients::new(in_size, out_size, outputs.clone(), kernel))
        }
    }
}

/// Rounds half away from zero into 22-bit fixed point, as Pillow's `normalize_coeffs_8bpc`.
fn to_fixed_point(weight: f64) -> i32 {
    let scaled = weight * f64::from(1_u32 << PRECISION_BITS);
    if weight < 0.0 { (scaled - 0.5) as i32 } else { (scaled + 0.5) as i32 }
}

/// Pillow's `clip8`: drop the fraction (the accumulator starts at one half, so this rounds) and clamp.
fn clip8(accumulator: i32) -> u8 {
    (accumulator >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The accumulator's start value: one half in fixed point, so that [`clip8`] rounds to nearest.
const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

/// Pillow's `ImagingResampleInner` for 8-bit RGB, for `window` of the output: two one-dimensional
/// passes, each skipped when its dimension does not change, in Pillow 13's order. Horizontal first, over
/// only the source rows the vertical pass reads; vertical first when the height shrinks by more than
/// twice as many pixels as the width does. The order matters: each pass rounds to 8 bits. The first pass
/// covers only what the second reads, so the work is that of the window, not of the full resize.
fn convolve(image: &RgbImage, kernel: Kernel, window: &ResizeWindow) -> Vec<u8> {
    let (in_width, in_height) = image.dimensions();
    let height_shrink = i64::from(in_height) - i64::from(window.height);
    let width_shrink = i64::from(in_width) - i64::from(window.width);
    let vertical_first = height_shrink > 0 && height_shrink > 2 * width_shrink;
    let horizontal = Axis::new(in_width, window.width, &window.columns, kernel);
    let vertical = Axis::new(in_height, window.height, &window.rows, kernel);
    let source = Block::whole(image);
    match (&horizontal, &vertical) {
        (Axis::Keep(columns), Axis::Keep(rows)) => copy(source, rows.clone(), columns.clone()),
        (Axis::Convolve(coefficients), Axis::Keep(rows)) => {
            horizontal_pass(source, rows.clone(), coefficients)
        }
        (Axis::Keep(columns), Axis::Convolve(coefficients)) => {
            vertical_pass(source, columns.clone(), coefficients)
        }
        (Axis::Convolve(across), Axis::Convolve(down)) if vertical_first => {
            let columns = across.sources();
            let rows = vertical_pass(source, columns.clone(), down);
            let block = Block {
                pixels: &rows,
                width: columns.len(),
                top: span(&window.rows).start,
                left: columns.start,
            };
            horizontal_pass(block, span(&window.rows), across)
        }
        (Axis::Convolve(across), Axis::Convolve(down)) => {
            let rows = down.sources();
            let columns = horizontal_pass(source, rows.clone(), across);
            let block = Block {
                pixels: &columns,
                width: window.columns.len(),
                top: rows.start,
                left: span(&window.columns).start,
            };
            vertical_pass(block, span(&window.columns), down)
        }
    }
}

/// Resamples image rows `rows` of `block` horizontally, one output pixel per coefficient window.
///
/// This pass reads every sample of the source rows (the vertical pass only the rows it keeps), so it
/// dominates the resize of a large photo: 21 of a 2400x2093 JPEG's 73 ms before it ran two taps per AVX2
/// instruction.
#[allow(unsafe_code)]
fn horizontal_pass(block: Block<'_>, rows: Range<usize>, coefficients: &Coefficients) -> Vec<u8> {
    let out_stride = coefficients.windows.len() * CHANNELS;
    let mut out = vec![0; rows.len() * out_stride];
    let in_stride = block.width * CHANNELS;
    let rows = block.pixels[(rows.start - block.top) * in_stride..(rows.end - block.top) * in_stride]
        .chunks_exact(in_stride);
    let taps = Taps::new(&block, coefficients, in_stride);
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        for (out_row, row) in out.chunks_exact_mut(out_stride).zip(rows) {
            // SAFETY: AVX2 is available.
            unsafe { taps.row_avx2(row, out_row) };
        }
        return out;
    }
    for (out_row, row) in out.chunks_exact_mut(out_stride).zip(rows) {
        taps.row_portable(row, out_row);
    }
    out
}

/// The coefficient windows of a horizontal pass as offsets within a row, worked out once for all rows:
/// each window's leading taps in pairs (for [`Taps::row_avx2`]), the rest one by one.
struct Taps<'a> {
    windows: Vec<Window<'a>>,
    /// Per pair of taps, the eight lanes of weights `[w0, w0, w0, w1, w1, w1, 0, 0]`.
    pair_weights: Vec<[i32; 8]>,
}

struct Window<'a> {
    /// First sample of the window within a row.
    start: usize,
    /// The window's pairs in `pair_weights`.
    pairs: Range<usize>,
    /// All the window's weights; those after the pairs are applied one by one.
    weights: &'a [i32],
}

impl Window<'_> {
    /// Taps the pairs cover.
    fn paired(&self) -> usize {
        self.pairs.len() * 2
    }
}

impl<'a> Taps<'a> {
    fn new(block: &Block<'_>, coefficients: &'a Coefficients, in_stride: usize) -> Self {
        let mut pair_weights = vec![];
        let windows = coefficients
            .iter()
            .map(|(window, weights)| {
                let start = (window.start - block.left) * CHANNELS;
                let weights = &weights[..window.len()];
                // A pair loads eight samples (two pixels and two of a third), all within the row.
                let mut paired = 0;
                while paired + 2 <= weights.len() && start + paired * CHANNELS + 8 <= in_stride {
                    let (first, second) = (weights[paired], weights[paired + 1]);
                    pair_weights.push([first, first, first, second, second, second, 0, 0]);
                    paired += 2;
                }
                let pairs = pair_weights.len() - paired / 2..pair_weights.len();
                Window { start, pairs, weights }
            })
            .collect();
        Taps { windows, pair_weights }
    }

    /// One row of the pass, one tap at a time.
    fn row_portable(&self, row: &[u8], out_row: &mut [u8]) {
        for (out_pixel, window) in out_row.chunks_exact_mut(CHANNELS).zip(&self.windows) {
            let sums = add_taps([ROUNDING; CHANNELS], &row[window.start..], window.weights);
            store_pixel(out_pixel, sums);
        }
    }

    /// One row of the pass: each pair of taps is one widening load, one multiply and one add of eight
    /// `i32` lanes, the first pixel's sums in lanes 0-2 and the second's in 3-5. Integer sums in any
    /// order are the same, so the output equals the scalar path's byte for byte.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(unsafe_code)]
    fn row_avx2(&self, row: &[u8], out_row: &mut [u8]) {
        use std::arch::x86_64::*;
        for (out_pixel, window) in out_row.chunks_exact_mut(CHANNELS).zip(&self.windows) {
            let mut sums = _mm256_setzero_si256();
            for (pair, weights) in self.pair_weights[window.pairs.clone()].iter().enumerate() {
                let at = window.start + pair * 2 * CHANNELS;
                let bytes: [u8; 8] = row[at..at + 8].try_into().expect("a slice of eight");
                let samples = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(i64::from_le_bytes(bytes)));
                // SAFETY: `weights` is eight `i32`s; the load is unaligned.
                let weights = unsafe { _mm256_loadu_si256(weights.as_ptr().cast()) };
                sums = _mm256_add_epi32(sums, _mm256_mullo_epi32(samples, weights));
            }
            let mut lanes = [0_i32; 8];
            // SAFETY: `lanes` is eight `i32`s; the store is unaligned.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), sums) };
            let paired = std::array::from_fn(|c| ROUNDING.wrapping_add(lanes[c]).wrapping_add(lanes[c + 3]));
            let rest = window.paired();
            let sums = add_taps(paired, &row[window.start + rest * CHANNELS..], &window.weights[rest..]);
            store_pixel(out_pixel, sums);
        }
    }
}

/// Adds one tap per weight, of the pixels `samples` starts with, to the per-channel `sums`.
#[inline(always)]
fn add_taps(mut sums: [i32; CHANNELS], samples: &[u8], weights: &[i32]) -> [i32; CHANNELS] {
    for (source, &weight) in samples.chunks_exact(CHANNELS).zip(weights) {
        for (sum, &sample) in sums.iter_mut().zip(source) {
            *sum = sum.wrapping_add(i32::from(sample) * weight);
        }
    }
    sums
}

#[inline(always)]
fn store_pixel(out_pixel: &mut [u8], sums: [i32; CHANNELS]) {
    for (out_sample, sum) in out_pixel.iter_mut().zip(sums) {
        *out_sample = clip8(sum);
    }
}

/// Resamples image columns `columns` of `block` vertically, one output row per coefficient window.
fn vertical_pass(block: Block<'_>, columns: Range<usize>, coefficients: &Coefficients) -> Vec<u8> {
    let stride = columns.len() * CHANNELS;
    let mut out = vec![0; coefficients.windows.len() * stride];
    // Row-at-a-time accumulation keeps the inner loop contiguous so that it vectorizes.
    let mut sums = vec![0_i32; stride];
    for (out_row, (window, weights)) in out.chunks_exact_mut(stride).zip(coefficients.iter()) {
        sums.fill(ROUNDING);
        let rows = window.map(|row| block.row(row, columns.clone()));
        for (row, &weight) in rows.zip(weights) {
            for (sum, &sample) in sums.iter_mut().zip(row) {
                *sum += i32::from(sample) * weight;
            }
        }
        for (out_sample, &sum) in out_row.iter_mut().zip(&sums) {
            *out_sample = clip8(sum);
        }
    }
    out
}

/// Pillow's `NEAREST` resize (`ImagingScaleAffine`): the source pixel under each output pixel's center,
/// positions accumulated in `f64` as Pillow does.
fn nearest(image: &RgbImage, window: &ResizeWindow) -> Vec<u8> {
    let columns = nearest_sources(image.width(), window.width, &window.columns);
    let stride = image.width() as usize * CHANNELS;
    let mut out = Vec::with_capacity(window.columns.len() * window.rows.len() * CHANNELS);
    for row in nearest_sources(image.height(), window.height, &window.rows) {
        let row = &image.as_raw()[row * stride..(row + 1) * stride];
        for &column in &columns {
            out.extend_from_slice(&row[column * CHANNELS..(column + 1) * CHANNELS]);
        }
    }
    out
}

/// The source pixel of each output in `outputs`; the accumulation runs from output 0 because each
/// position carries the rounding of all before it.
fn nearest_sources(in_size: u32, out_size: u32, outputs: &Range<u32>) -> Vec<usize> {
    let step = f64::from(in_size) / f64::from(out_size);
    let mut position = step * 0.5;
    let last = in_size as usize - 1;
    (0..outputs.end)
        .map(|_| {
            let source = (position as usize).min(last);
            position += step;
            source
        })
        .skip(outputs.start as usize)
        .collect()
}

/// One output coordinate of TensorFlow's half-pixel bilinear resize.
struct Lerp {
    low: usize,
    high: usize,
    fraction: f32,
}

/// TensorFlow's `compute_interpolation_weights` with `HalfPixelScaler`, in `f32` as TensorFlow computes it,
/// for the outputs `outputs`.
fn tf_lerps(in_size: u32, out_size: u32, outputs: &Range<u32>) -> Vec<Lerp> {
    let scale = in_size as f32 / out_size as f32;
    let last = in_size as usize - 1;
    outputs
        .clone()
        .map(|out_index| {
            let position = (out_index as f32 + 0.5) * scale - 0.5;
            let floor = position.floor();
            Lerp {
                low: (floor.max(0.0) as usize).min(last),
                high: (position.ceil().max(0.0) as usize).min(last),
                fraction: position - floor,
            }
        })
        .collect()
}

/// `tf.image.resize(method="bilinear", antialias=False)` (TensorFlow's `ResizeBilinear` with
/// `half_pixel_centers=True`), rounded to the nearest `u8`.
fn tf_bilinear(image: &RgbImage, window: &ResizeWindow) -> Vec<u8> {
    let columns = tf_lerps(image.width(), window.width, &window.columns);
    let stride = image.width() as usize * CHANNELS;
    let row = |index: usize| &image.as_raw()[index * stride..(index + 1) * stride];
    let mut out = Vec::with_capacity(window.columns.len() * window.rows.len() * CHANNELS);
    for y in tf_lerps(image.height(), window.height, &window.rows) {
        let (top, bottom) = (row(y.low), row(y.high));
        for x in &columns {
            for channel in 0..CHANNELS {
                let sample = |row: &[u8], column: usize| f32::from(row[column * CHANNELS + channel]);
                let (top_left, top_right) = (sample(top, x.low), sample(top, x.high));
                let (bottom_left, bottom_right) = (sample(bottom, x.low), sample(bottom, x.high));
                let top = top_left + (top_right - top_left) * x.fraction;
                let bottom = bottom_left + (bottom_right - bottom_left) * x.fraction;
                let value = top + (bottom - top) * y.fraction;
                out.push(value.round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use artifact::Decoder;

    use super::*;
    use crate::image::ImageLimits;
    use crate::image::decode::decode_rgb8;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Target sizes of the goldens, as in `testdata/generate.py`: both axes shrink, the height shrinks far
    /// more (Pillow's vertical-first order), both grow, only the height changes, only the width changes.
    const SIZES: [(u32, u32); 5] = [(11, 7), (25, 5), (41, 23), (29, 31), (7, 17)];

    /// The whole of a `width` x `height` resize.
    fn full(width: u32, height: u32) -> ResizeWindow {
        ResizeWindow { width, height, columns: 0..width, rows: 0..height }
    }

    fn source() -> Result<RgbImage, Box<dyn std::error::Error>> {
        let png = include_bytes!("testdata/resize-source.png");
        Ok(decode_rgb8(png, &ImageLimits::default(), Decoder::Pillow, false, false)?)
    }

    /// Resizes the 29x17 source to every size in [`SIZES`] and compares with the concatenated golden.
    fn assert_matches_golden(mode: ResizeMode, filter: ResampleFilter, golden: &[u8]) -> TestResult {
        let mut offset = 0;
        for (width, height) in SIZES {
            let resized = resize(source()?, mode, filter, &full(width, height));
            let expected = &golden[offset..offset + resized.len()];
            let differing = resized.iter().zip(expected).filter(|(ours, theirs)| ours != theirs).count();
            assert_eq!(differing, 0, "{mode:?} {filter:?} to {width}x{height}: {differing} samples differ");
            offset += resized.len();
        }
        assert_eq!(offset, golden.len(), "golden holds exactly the listed sizes");
        Ok(())
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    #[allow(unsafe_code)]
    fn the_avx2_horizontal_pass_equals_the_portable_one() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let width = 2400;
        let row: Vec<u8> = (0..width * CHANNELS).map(|i| (i * 7919 % 256) as u8).collect();
        let block = Block { pixels: &row, width, top: 0, left: 0 };
        for filter in [ResampleFilter::Bilinear, ResampleFilter::Bicubic, ResampleFilter::Lanczos] {
            let kernel = Kernel::for_filter(filter).expect("a convolution");
            // Down by 10.7 (the large fixture photo to 224), by 1.3, and up by 1.5.
            for out_width in [224, 1800, 3600] {
                let coefficients = Coefficients::new(width as u32, out_width, 0..out_width, kernel);
                let taps = Taps::new(&block, &coefficients, width * CHANNELS);
                assert!(
                    taps.windows.iter().any(|w| !w.pairs.is_empty())
                        && taps.windows.iter().any(|w| w.paired() < w.weights.len())
                );
                let mut portable = vec![0; out_width as usize * CHANNELS];
                let mut avx2 = portable.clone();
                taps.row_portable(&row, &mut portable);
                // SAFETY: AVX2 is available.
                unsafe { taps.row_avx2(&row, &mut avx2) };
                assert!(portable == avx2, "{filter:?} to {out_width}: the AVX2 pass differs");
            }
        }
    }

    #[test]
    fn every_pillow_filter_matches_pillow_byte_for_byte() -> TestResult {
        for (filter, golden) in [
            (ResampleFilter::Nearest, &include_bytes!("testdata/pil-nearest.rgb")[..]),
            (ResampleFilter::Box, include_bytes!("testdata/pil-box.rgb")),
            (ResampleFilter::Bilinear, include_bytes!("testdata/pil-bilinear.rgb")),
            (ResampleFilter::Hamming, include_bytes!("testdata/pil-hamming.rgb")),
            (ResampleFilter::Bicubic, include_bytes!("testdata/pil-bicubic.rgb")),
            (ResampleFilter::Lanczos, include_bytes!("testdata/pil-lanczos.rgb")),
        ] {
            assert_matches_golden(ResizeMode::Pil, filter, golden)?;
        }
        Ok(())
    }

    #[test]
    fn tf_bilinear_matches_tensorflow_rounded_to_the_nearest_level() -> TestResult {
        assert_matches_golden(
            ResizeMode::Tf,
            ResampleFilter::Bilinear,
            include_bytes!("testdata/tf-bilinear.rgb"),
        )
    }

    #[test]
    fn tf_bilinear_uses_half_pixel_centers() -> TestResult {
        // tf.image.resize([[0, 100]], (1, 4)) is [0, 25, 75, 100]: the outer outputs clamp to the edge
        // pixels and the inner ones sit a quarter of the way between them.
        let image = RgbImage::from_raw(2, 1, vec![0, 0, 0, 100, 100, 100]).ok_or("2x1 buffer")?;
        let resized = resize(image, ResizeMode::Tf, ResampleFilter::Bilinear, &full(4, 1));
        assert_eq!(resized, [0, 0, 0, 25, 25, 25, 75, 75, 75, 100, 100, 100]);
        Ok(())
    }

    #[test]
    fn an_image_already_at_the_graph_size_is_unchanged() -> TestResult {
        let image = source()?;
        for mode in [ResizeMode::Pil, ResizeMode::Tf] {
            assert_eq!(
                &resize(image.clone(), mode, ResampleFilter::Lanczos, &full(29, 17)),
                image.as_raw(),
                "{mode:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_single_pixel_fills_the_whole_output() -> TestResult {
        let image = RgbImage::from_raw(1, 1, vec![12, 34, 56]).ok_or("1x1 buffer")?;
        for mode in [ResizeMode::Pil, ResizeMode::Tf] {
            for filter in [ResampleFilter::Nearest, ResampleFilter::Bilinear, ResampleFilter::Lanczos] {
                let resized = resize(image.clone(), mode, filter, &full(5, 3));
                assert!(resized.chunks_exact(3).all(|pixel| pixel == [12, 34, 56]), "{mode:?} {filter:?}");
                assert_eq!(resized.len(), 5 * 3 * 3);
            }
        }
        Ok(())
    }

    /// Every part of every resize equals that part of the full resize: windows at the corners, in the
    /// middle, single rows and columns, for every mode and filter, with both of Pillow's pass orders, and
    /// with one axis or both kept at their size.
    #[test]
    fn a_window_of_a_resize_equals_that_part_of_the_full_resize() -> TestResult {
        let image = source()?;
        let modes = [
            (ResizeMode::Pil, ResampleFilter::Nearest),
            (ResizeMode::Pil, ResampleFilter::Box),
            (ResizeMode::Pil, ResampleFilter::Bilinear),
            (ResizeMode::Pil, ResampleFilter::Hamming),
            (ResizeMode::Pil, ResampleFilter::Bicubic),
            (ResizeMode::Pil, ResampleFilter::Lanczos),
            (ResizeMode::Tf, ResampleFilter::Bilinear),
        ];
        for (mode, filter) in modes {
            for (width, height) in SIZES.into_iter().chain([(29, 17), (29, 9), (13, 17)]) {
                let whole = resize(image.clone(), mode, filter, &full(width, height));
                let row_stride = width as usize * CHANNELS;
                for (columns, rows) in [
                    (0..width, 0..height),
                    (0..1, 0..1),
                    (width - 1..width, height - 1..height),
                    (width / 3..width - width / 4, height / 4..height - height / 3),
                    (0..width, height / 2..height / 2 + 1),
                    (width / 2..width / 2 + 1, 0..height),
                ] {
                    let window = ResizeWindow { width, height, columns: columns.clone(), rows: rows.clone() };
                    let expected: Vec<u8> = whole
                        .chunks_exact(row_stride)
                        .skip(rows.start as usize)
                        .take(rows.len())
                        .flat_map(|row| {
                            &row[columns.start as usize * CHANNELS..columns.end as usize * CHANNELS]
                        })
                        .copied()
                        .collect();
                    assert_eq!(
                        resize(image.clone(), mode, filter, &window),
                        expected,
                        "{mode:?} {filter:?} to {width}x{height}, columns {columns:?}, rows {rows:?}"
                    );
                }
            }
        }
        Ok(())
    }
}
