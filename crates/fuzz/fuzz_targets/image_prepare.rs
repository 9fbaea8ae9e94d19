//! The image path on untrusted input: base64 or raw bytes -> decode -> resize -> centre crop -> channel
//! order (`runtime::prepare`), with a 1-megapixel limit so one execution stays in the milliseconds.
//!
//! The input's length picks the resize mode and filter, the geometry (exact size, shortest edge with a
//! crop inside or larger than the image, a `longest_edge` cap, BGR) and the decoder (Pillow with and
//! without EXIF orientation, TensorFlow), so the corpus covers all of them without spending input bytes
//! on a selector that would shift the image data.

#![no_main]

use artifact::{ChannelOrder, CropSize, Decoder, PreprocessSpec, ResampleFilter, ResizeMode, ResizeSize};
use libfuzzer_sys::fuzz_target;
use runtime::{ImageLimits, prepare};

/// Odd, non-square output so resize and crop rounding in both directions is exercised.
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

const CROP: Option<CropSize> = Some(CropSize { height: HEIGHT, width: WIDTH });

/// Resize size, crop and channel order; each gives a `WIDTH` x `HEIGHT` output.
const GEOMETRIES: [(ResizeSize, Option<CropSize>, ChannelOrder); 4] = [
    (ResizeSize::Exact { height: HEIGHT, width: WIDTH }, None, ChannelOrder::Rgb),
    (ResizeSize::ShortestEdge { shortest_edge: 12, longest_edge: None }, CROP, ChannelOrder::Rgb),
    // The shorter side ends below the crop: zero padding.
    (ResizeSize::ShortestEdge { shortest_edge: 8, longest_edge: None }, CROP, ChannelOrder::Bgr),
    (ResizeSize::ShortestEdge { shortest_edge: 9, longest_edge: Some(16) }, CROP, ChannelOrder::Rgb),
];

/// Decoder and whether the EXIF orientation is applied.
const DECODERS: [(Decoder, bool); 4] = [
    (Decoder::Pillow, true),
    (Decoder::Pillow, false),
    (Decoder::Tensorflow, false),
    (Decoder::PillowDraft, true),
];

fuzz_target!(|input: &[u8]| {
    let (resize, resample) = MODES[input.len() % MODES.len()];
    let (size, crop, channel_order) = GEOMETRIES[input.len() / MODES.len() % GEOMETRIES.len()];
    let (decoder, exif_orientation) =
        DECODERS[input.len() / (MODES.len() * GEOMETRIES.len()) % DECODERS.len()];
    let spec = PreprocessSpec {
        decoder,
        exif_orientation,
        size,
        crop,
        channel_order,
        ..PreprocessSpec::legacy(resize, resample, HEIGHT, WIDTH, 1.0 / 255.0, [0.5; 3], [0.5; 3])
    };
    let limits = ImageLimits { max_pixels: 1 << 20, max_input_bytes: 1 << 20 };
    if let Ok(image) = prepare(input, &spec, &limits) {
        assert_eq!((image.width(), image.height()), (WIDTH, HEIGHT));
        assert_eq!(image.pixels().len(), (WIDTH * HEIGHT * 3) as usize);
    }
});
