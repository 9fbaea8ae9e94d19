//! The image path on untrusted input: base64 or raw bytes -> JPEG/PNG decode -> resize
//! (`runtime::prepare`), with a 1-megapixel limit so one execution stays in the milliseconds.
//!
//! The input's length picks the resize mode and filter, so the corpus covers all of them without
//! spending input bytes on a selector that would shift the image data.

#![no_main]

use artifact::{PreprocessSpec, ResampleFilter, ResizeMode};
use libfuzzer_sys::fuzz_target;
use runtime::{ImageLimits, prepare};

/// Odd, non-square output so resize rounding in both directions is exercised.
const WIDTH: u32 = 13;
const HEIGHT: u32 = 11;

const MODES: [(ResizeMode, ResampleFilter); 7] = [
    (ResizeMode::Pil, ResampleFilter::Bilinear),
    (ResizeMode::Pil, ResampleFilter::Nearest),
    (ResizeMode::Pil, ResampleFilter::Box),
    (ResizeMode::Pil, ResampleFilter::Hamming),
    (ResizeMode::Pil, ResampleFilter::Bicubic),
    (ResizeMode::Pil, ResampleFilter::Lanczos),
    (ResizeMode::Tf, ResampleFilter::Bilinear),
];

fuzz_target!(|input: &[u8]| {
    let (resize, resample) = MODES[input.len() % MODES.len()];
    let spec =
        PreprocessSpec { resize, resample, rescale_factor: 1.0 / 255.0, mean: [0.5; 3], std: [0.5; 3] };
    let limits = ImageLimits { max_pixels: 1 << 20, max_input_bytes: 1 << 20 };
    if let Ok(image) = prepare(input, &spec, WIDTH, HEIGHT, &limits) {
        assert_eq!((image.width(), image.height()), (WIDTH, HEIGHT));
        assert_eq!(image.pixels().len(), (WIDTH * HEIGHT * 3) as usize);
    }
});
