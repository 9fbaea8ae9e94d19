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

use std::borrow::Cow;
use std::f64::consts::PI;
use std::ops::Range;

use ::image::RgbImage;
use artifact::{ResampleFilter, ResizeMode};

const CHANNELS: usize = 3;

/// Pillow's fixed-point precision: 8 bits of result plus 2 bits of headroom for filters whose
/// partial sums overshoot, in an `i32` accumulator.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Resizes `image` to `width` x `height` per `mode` and `filter`; returns RGB8 HWC pixels.
///
/// [`ResizeMode::Tf`] is always bilinear: TF Serving's seed used nothing else, and the manifest documents
/// `resample` as meaningful only for [`ResizeMode::Pil`].
pub(super) fn resize(
    image: RgbImage,
    mode: ResizeMode,
    filter: ResampleFilter,
    width: u32,
    height: u32,
) -> Vec<u8> {
    if width == 0 || height == 0 {
        return Vec::new();
    }
    match mode {
        ResizeMode::Tf => tf_bilinear(&image, width, height),
        // Pillow returns a copy when nothing changes, whatever the filter.
        ResizeMode::Pil if image.dimensions() == (width, height) => image.into_raw(),
        ResizeMode::Pil => match Kernel::for_filter(filter) {
            None => nearest(&image, width, height),
            Some(kernel) => convolve(&image, kernel, width, height),
        },
    }
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
    /// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`.
    fn new(in_size: u32, out_size: u32, kernel: Kernel) -> Self {
        let scale = f64::from(in_size) / f64::from(out_size);
        let filter_scale = scale.max(1.0);
        // Multiplying by the reciprocal, not dividing, rounds as Pillow does.
        let inverse_scale = 1.0 / filter_scale;
        let support = kernel.support() * filter_scale;
        // `support` is at most 3 * 65535 (JPEG dimensions are 16-bit), so this cannot truncate.
        let stride = support.ceil() as usize * 2 + 1;
        let mut windows = Vec::with_capacity(out_size as usize);
        let mut weights = vec![0; out_size as usize * stride];
        let mut unnormalized = Vec::with_capacity(stride);
        for (out_index, out_weights) in (0..out_size).zip(weights.chunks_exact_mut(stride)) {
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

/// Pillow's `ImagingResampleInner` for 8-bit RGB: two one-dimensional passes, each skipped when its
/// dimension does not change, in Pillow 13's order. Horizontal first, over only the source rows the
/// vertical pass reads; vertical first when the height shrinks by more than twice as many pixels as
/// the width does. The order matters: each pass rounds to 8 bits.
fn convolve(image: &RgbImage, kernel: Kernel, width: u32, height: u32) -> Vec<u8> {
    let (in_width, in_height) = image.dimensions();
    let height_shrink = i64::from(in_height) - i64::from(height);
    let width_shrink = i64::from(in_width) - i64::from(width);
    let pixels = image.as_raw();
    if height_shrink > 0 && height_shrink > 2 * width_shrink {
        let rows = vertical_pass(pixels, in_width as usize, 0, &Coefficients::new(in_height, height, kernel));
        return if width == in_width {
            rows
        } else {
            let coefficients = Coefficients::new(in_width, width, kernel);
            horizontal_pass(&rows, in_width as usize, 0..height as usize, &coefficients)
        };
    }
    let vertical = Coefficients::new(in_height, height, kernel);
    let first_row = vertical.windows.first().map_or(0, |window| window.start);
    let last_row = vertical.windows.last().map_or(0, |window| window.end);
    let (pixels, rows_from) = if width == in_width {
        (Cow::Borrowed(pixels.as_slice()), 0)
    } else {
        let coefficients = Coefficients::new(in_width, width, kernel);
        (
            Cow::Owned(horizontal_pass(pixels, in_width as usize, first_row..last_row, &coefficients)),
            first_row,
        )
    };
    if height == in_height {
        pixels.into_owned()
    } else {
        vertical_pass(&pixels, width as usize, rows_from, &vertical)
    }
}

/// Resamples each row in `rows` of `pixels` (`in_width` RGB pixels per row) horizontally.
fn horizontal_pass(
    pixels: &[u8],
    in_width: usize,
    rows: Range<usize>,
    coefficients: &Coefficients,
) -> Vec<u8> {
    let in_stride = in_width * CHANNELS;
    let out_stride = coefficients.windows.len() * CHANNELS;
    let mut out = vec![0; rows.len() * out_stride];
    let rows = pixels[rows.start * in_stride..rows.end * in_stride].chunks_exact(in_stride);
    for (out_row, row) in out.chunks_exact_mut(out_stride).zip(rows) {
        for (out_pixel, (window, weights)) in out_row.chunks_exact_mut(CHANNELS).zip(coefficients.iter()) {
            let mut sums = [ROUNDING; CHANNELS];
            let sources = row[window.start * CHANNELS..window.end * CHANNELS].chunks_exact(CHANNELS);
            for (source, &weight) in sources.zip(weights) {
                for (sum, &sample) in sums.iter_mut().zip(source) {
                    *sum += i32::from(sample) * weight;
                }
            }
            for (out_sample, sum) in out_pixel.iter_mut().zip(sums) {
                *out_sample = clip8(sum);
            }
        }
    }
    out
}

/// Resamples `pixels` (rows of `width` RGB pixels, the first being source row `rows_from`) vertically.
fn vertical_pass(pixels: &[u8], width: usize, rows_from: usize, coefficients: &Coefficients) -> Vec<u8> {
    let stride = width * CHANNELS;
    let mut out = vec![0; coefficients.windows.len() * stride];
    // Row-at-a-time accumulation keeps the inner loop contiguous so that it vectorizes.
    let mut sums = vec![0_i32; stride];
    for (out_row, (window, weights)) in out.chunks_exact_mut(stride).zip(coefficients.iter()) {
        sums.fill(ROUNDING);
        let rows = pixels[(window.start - rows_from) * stride..(window.end - rows_from) * stride]
            .chunks_exact(stride);
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
fn nearest(image: &RgbImage, width: u32, height: u32) -> Vec<u8> {
    let columns = nearest_sources(image.width(), width);
    let stride = image.width() as usize * CHANNELS;
    let mut out = Vec::with_capacity(width as usize * height as usize * CHANNELS);
    for row in nearest_sources(image.height(), height) {
        let row = &image.as_raw()[row * stride..(row + 1) * stride];
        for &column in &columns {
            out.extend_from_slice(&row[column * CHANNELS..(column + 1) * CHANNELS]);
        }
    }
    out
}

fn nearest_sources(in_size: u32, out_size: u32) -> Vec<usize> {
    let step = f64::from(in_size) / f64::from(out_size);
    let mut position = step * 0.5;
    let last = in_size as usize - 1;
    (0..out_size)
        .map(|_| {
            let source = (position as usize).min(last);
            position += step;
            source
        })
        .collect()
}

/// One output coordinate of TensorFlow's half-pixel bilinear resize.
struct Lerp {
    low: usize,
    high: usize,
    fraction: f32,
}

/// TensorFlow's `compute_interpolation_weights` with `HalfPixelScaler`, in `f32` as TensorFlow computes it.
fn tf_lerps(in_size: u32, out_size: u32) -> Vec<Lerp> {
    let scale = in_size as f32 / out_size as f32;
    let last = in_size as usize - 1;
    (0..out_size)
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
fn tf_bilinear(image: &RgbImage, width: u32, height: u32) -> Vec<u8> {
    let columns = tf_lerps(image.width(), width);
    let stride = image.width() as usize * CHANNELS;
    let row = |index: usize| &image.as_raw()[index * stride..(index + 1) * stride];
    let mut out = Vec::with_capacity(width as usize * height as usize * CHANNELS);
    for y in tf_lerps(image.height(), height) {
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
    use super::*;
    use crate::image::ImageLimits;
    use crate::image::decode::decode_rgb8;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Target sizes of the goldens, as in `testdata/generate.py`: both axes shrink, the height shrinks far
    /// more (Pillow's vertical-first order), both grow, only the height changes, only the width changes.
    const SIZES: [(u32, u32); 5] = [(11, 7), (25, 5), (41, 23), (29, 31), (7, 17)];

    fn source() -> Result<RgbImage, Box<dyn std::error::Error>> {
        Ok(decode_rgb8(include_bytes!("testdata/resize-source.png"), &ImageLimits::default())?)
    }

    /// Resizes the 29x17 source to every size in [`SIZES`] and compares with the concatenated golden.
    fn assert_matches_golden(mode: ResizeMode, filter: ResampleFilter, golden: &[u8]) -> TestResult {
        let mut offset = 0;
        for (width, height) in SIZES {
            let resized = resize(source()?, mode, filter, width, height);
            let expected = &golden[offset..offset + resized.len()];
            let differing = resized.iter().zip(expected).filter(|(ours, theirs)| ours != theirs).count();
            assert_eq!(differing, 0, "{mode:?} {filter:?} to {width}x{height}: {differing} samples differ");
            offset += resized.len();
        }
        assert_eq!(offset, golden.len(), "golden holds exactly the listed sizes");
        Ok(())
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
        let resized = resize(image, ResizeMode::Tf, ResampleFilter::Bilinear, 4, 1);
        assert_eq!(resized, [0, 0, 0, 25, 25, 25, 75, 75, 75, 100, 100, 100]);
        Ok(())
    }

    #[test]
    fn an_image_already_at_the_graph_size_is_unchanged() -> TestResult {
        let image = source()?;
        for mode in [ResizeMode::Pil, ResizeMode::Tf] {
            assert_eq!(
                &resize(image.clone(), mode, ResampleFilter::Lanczos, 29, 17),
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
                let resized = resize(image.clone(), mode, filter, 5, 3);
                assert!(resized.chunks_exact(3).all(|pixel| pixel == [12, 34, 56]), "{mode:?} {filter:?}");
                assert_eq!(resized.len(), 5 * 3 * 3);
            }
        }
        Ok(())
    }
}
