//! The image path: one input string to the graph's RGB8 (or BGR8) input, as the artifact's
//! [`PreprocessSpec`] steps say.
//!
//! [`prepare`] runs the steps, one module each: `payload` turns the string into image bytes (raw
//! image bytes, or base64 in the standard or URL-safe alphabet), `decode` checks the header against
//! [`ImageLimits`] before allocating and decodes to RGB8 as Pillow's `convert("RGB")` would, `geometry`
//! works out the resize size and the centre crop as transformers' PIL-backend image processors do,
//! `resize` computes the kept part of the resize as Pillow's `Image.resize` or TensorFlow's
//! `tf.image.resize` would, and the channels are reordered last. Every failure is an [`InstanceError`]
//! that belongs to one instance of a batch, so the other instances still run.
//!
//! The target is the reference the model was evaluated with, byte for byte: JPEG decoding is
//! libjpeg-turbo's (as Pillow's), the colour conversions and `ResizeMode::Pil` reproduce Pillow 13, the
//! sizes and crops reproduce transformers 5.23, and `ResizeMode::Tf` equals TensorFlow's float result
//! rounded half up. The tests check this against files Pillow, transformers and TensorFlow wrote
//! (`testdata/generate.py`) and against the fixture models' reference inputs.

mod bmp;
mod decode;
mod geometry;
mod gif;
mod jpeg;
mod orientation;
mod payload;
mod resize;
mod tiff;
mod webp;

use std::fmt;

use artifact::{ChannelOrder, PreprocessSpec};

use self::geometry::Geometry;

/// Bounds on what one instance may cost, checked before the expensive step they protect.
///
/// Decoding allocates three bytes per pixel (more while a progressive JPEG is being decoded), so a
/// few-kilobyte file declaring 65535x65535 would otherwise ask for 12 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest `width * height` an image header may declare; checked before any pixel is allocated.
    pub max_pixels: u64,
    /// Largest input string (base64 text or raw bytes), checked before decoding base64.
    pub max_input_bytes: usize,
}

impl Default for ImageLimits {
    /// 64 megapixels and 64 MiB.
    ///
    /// 64 MP takes every camera and phone photo in common use (48-50 MP phone modes, 45-61 MP full
    /// frame) while bounding one decode to about 192 MB of RGB output. A 61 MP JPEG at high quality is
    /// about 30 MB, 40 MB as base64: 64 MiB takes it and stays below TF Serving's 100 MiB body limit.
    fn default() -> Self {
        Self { max_pixels: 64_000_000, max_input_bytes: 64 << 20 }
    }
}

/// One instance ready for the graph: 8-bit pixels in the spec's channel order, row-major HWC, of the size
/// the steps produce (the graph's input size for a checked manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedImage {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl PreparedImage {
    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// `height * width * 3` bytes, three channels per pixel (R, G, B, or B, G, R), rows top to bottom:
    /// the graph's `u8` layout.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The pixel buffer, for copying into a batch tensor without another allocation.
    pub fn into_pixels(self) -> Vec<u8> {
        self.pixels
    }
}

/// Why one input string could not become a [`PreparedImage`]; reported for that instance alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InstanceError {
    /// The string is empty, or only whitespace: there is no image to decode.
    #[error("empty input")]
    Empty,
    /// The string is longer than [`ImageLimits::max_input_bytes`].
    #[error("input is {bytes} bytes, above the limit of {limit}")]
    InputTooLarge {
        /// Length of the input string in bytes.
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The string is neither raw image bytes nor base64: a character outside both base64 alphabets and
    /// not whitespace, or `=` padding before the end.
    #[error("invalid base64 at byte {offset}: unexpected {}", Symbol(*byte))]
    InvalidBase64 {
        /// Offset of the offending byte in the input string.
        offset: usize,
        /// The offending byte.
        byte: u8,
    },
    /// The base64 text ends with a lone symbol, which carries only 6 bits and cannot end a byte: the
    /// string was most likely cut off.
    #[error(
        "invalid base64: {symbols} symbols end with a lone symbol that encodes no whole byte (truncated?)"
    )]
    Base64Length {
        /// Number of base64 symbols, not counting whitespace and padding.
        symbols: usize,
    },
    /// The bytes are in no format kiln decodes.
    #[error("unsupported image format {found} (JPEG, PNG, WebP, GIF, BMP and TIFF are accepted)")]
    UnsupportedFormat {
        /// The format `image` recognises (`gif`, `webp`, ...) or the first bytes in hex.
        found: String,
    },
    /// The header declares a width or height of zero.
    #[error("image is {width}x{height}: a zero side has no pixels")]
    ZeroSize {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },
    /// The header declares more pixels than [`ImageLimits::max_pixels`]; nothing was allocated.
    #[error("image is {width}x{height} = {pixels} pixels, above the limit of {limit}")]
    TooManyPixels {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// `width * height`.
        pixels: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The file ends before its image data does (for JPEG, before EOI): it was cut off, as an
    /// interrupted upload or a clipped base64 string would do.
    #[error("truncated {format}: the data ends before the image does")]
    Truncated {
        /// `JPEG`, `PNG`, `GIF`, `WebP`, `BMP` or `TIFF`.
        format: &'static str,
    },
    /// The file is damaged: a malformed header or data the decoder cannot make sense of.
    #[error("truncated or corrupt {format}: {detail}")]
    Corrupt {
        /// `JPEG`, `PNG`, `GIF`, `WebP`, `BMP` or `TIFF`.
        format: &'static str,
        /// The decoder's description of the problem.
        detail: String,
    },
    /// The file is well-formed but uses a feature the decoder does not implement (for example
    /// arithmetic-coded, lossless or 12-bit JPEG).
    #[error("unsupported {format} encoding: {detail}")]
    UnsupportedEncoding {
        /// `JPEG`, `PNG`, `GIF`, `WebP`, `BMP` or `TIFF`.
        format: &'static str,
        /// The decoder's description of the feature.
        detail: String,
    },
    /// The artifact decodes as TensorFlow's `tf.io.decode_image` (its reference model did), which takes
    /// no other formats than JPEG, PNG, GIF and BMP.
    #[error(
        "{format} is not accepted: this model decodes as tf.io.decode_image, which takes JPEG, PNG, GIF \
         and BMP"
    )]
    NotDecodedByTensorflow {
        /// `WebP` or `TIFF`.
        format: &'static str,
    },
    /// The artifact's resize, keeping the aspect ratio under a `longest_edge` cap, rounds a side of this
    /// image to zero pixels (a panorama far wider than `longest_edge / shortest_edge`); Pillow refuses
    /// such a resize too.
    #[error(
        "image is {width}x{height}, which resizes to {resized_width}x{resized_height}: a side rounds to zero"
    )]
    ResizedToNothing {
        /// Decoded width.
        width: u32,
        /// Decoded height.
        height: u32,
        /// Width after the resize.
        resized_width: u64,
        /// Height after the resize.
        resized_height: u64,
    },
    /// The artifact's shortest-edge resize makes more than [`ImageLimits::max_pixels`] pixels of this
    /// image (an extreme aspect ratio): the full resize the reference pipeline computes would cost that much.
    #[error(
        "image is {width}x{height}, which resizes to {resized_width}x{resized_height} = {} pixels, above the \
         limit of {limit}",
        u128::from(*resized_width) * u128::from(*resized_height)
    )]
    ResizedTooLarge {
        /// Decoded width.
        width: u32,
        /// Decoded height.
        height: u32,
        /// Width after the resize.
        resized_width: u64,
        /// Height after the resize.
        resized_height: u64,
        /// The configured limit.
        limit: u64,
    },
}

/// A byte as a person reads it in an error message: `'*'` when printable ASCII, `byte 0xfe` otherwise.
struct Symbol(u8);

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", char::from(self.0))
        } else {
            write!(f, "byte {:#04x}", self.0)
        }
    }
}

/// Turns one input string (base64 text or raw image bytes) into the graph's input by running
/// `spec`'s steps: decode (and orient), resize to `spec.size`, centre-crop to `spec.crop`, order the
/// channels.
///
/// The result is `spec.output_size()` (the graph's size, for a manifest that passed its check); a
/// shortest-edge resize without a crop gives the resized size. Work and memory are bounded by `limits`
/// before each expensive step, and only the cropped part of the resize is computed.
pub fn prepare(
    input: &[u8],
    spec: &PreprocessSpec,
    limits: &ImageLimits,
) -> Result<PreparedImage, InstanceError> {
    if input.len() > limits.max_input_bytes {
        return Err(InstanceError::InputTooLarge { bytes: input.len(), limit: limits.max_input_bytes });
    }
    let decoded = {
        let bytes = payload::image_bytes(input)?;
        let (decoder, size) = (spec.decoder, spec.size);
        decode::decode(&bytes, limits, decoder, spec.exif_orientation, spec.transparency_to_white, size)?
    };
    let geometry = Geometry::new(spec, decoded.width, decoded.height, limits)?;
    let window = resize::resize(decoded.image, spec.resize, spec.resample, &geometry.window);
    let mut pixels = geometry.place(window);
    if spec.channel_order == ChannelOrder::Bgr {
        for pixel in pixels.chunks_exact_mut(3) {
            pixel.swap(0, 2);
        }
    }
    Ok(PreparedImage { width: geometry.width, height: geometry.height, pixels })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use artifact::{Decoder, ResampleFilter, ResizeMode, ResizeSize};
    use base64::Engine as _;
    use serde_json::Value;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const YUV420_JPEG: &[u8] = include_bytes!("testdata/yuv420.jpg");

    /// A format version 1 spec: Pillow bilinear straight to `width` x `height`.
    fn bilinear(width: u32, height: u32) -> PreprocessSpec {
        PreprocessSpec::legacy(
            ResizeMode::Pil,
            ResampleFilter::Bilinear,
            height,
            width,
            1.0 / 255.0,
            [0.5; 3],
            [0.5; 3],
        )
    }

    #[test]
    fn a_drafted_jpeg_is_resized_to_the_size_its_full_oriented_image_gives() -> TestResult {
        let mut spec = bilinear(6, 30);
        (spec.decoder, spec.exif_orientation) = (Decoder::PillowDraft, true);
        let prepared =
            prepare(include_bytes!("testdata/draft-orient-6.jpg"), &spec, &ImageLimits::default())?;
        assert_eq!((prepared.width(), prepared.height()), (6, 30));
        assert_eq!(prepared.pixels(), include_bytes!("testdata/draft-orient-6.jpg.6x30.rgb"));
        Ok(())
    }

    #[test]
    fn base64_and_raw_forms_of_one_image_prepare_identically() -> TestResult {
        let limits = ImageLimits::default();
        let raw = prepare(YUV420_JPEG, &bilinear(12, 9), &limits)?;
        assert_eq!((raw.width(), raw.height(), raw.pixels().len()), (12, 9, 12 * 9 * 3));
        let standard = base64::engine::general_purpose::STANDARD.encode(YUV420_JPEG);
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(YUV420_JPEG);
        let wrapped: String = standard
            .as_bytes()
            .chunks(76)
            .map(|line| format!("{}\r\n", String::from_utf8_lossy(line)))
            .collect();
        for text in [standard, url_safe, wrapped] {
            assert_eq!(prepare(text.as_bytes(), &bilinear(12, 9), &limits)?, raw);
        }
        Ok(())
    }

    #[test]
    fn an_input_above_the_byte_limit_is_refused_before_decoding() {
        let limits = ImageLimits { max_input_bytes: 100, ..ImageLimits::default() };
        assert_eq!(
            prepare(YUV420_JPEG, &bilinear(4, 4), &limits),
            Err(InstanceError::InputTooLarge { bytes: YUV420_JPEG.len(), limit: 100 })
        );
    }

    #[test]
    fn error_messages_say_what_was_wrong() {
        let cases = [
            (&b""[..], "empty input"),
            (b"aGVsbG8*", "invalid base64 at byte 7: unexpected '*'"),
            (b"aGVsbG8\xfe", "invalid base64 at byte 7: unexpected byte 0xfe"),
            (
                b"aGVsbG8gd29ybGQ=",
                "unsupported image format starting with bytes 68 65 6c 6c (JPEG, PNG, WebP, GIF, BMP and \
                 TIFF are accepted)",
            ),
        ];
        for (input, message) in cases {
            let error = prepare(input, &bilinear(4, 4), &ImageLimits::default()).err();
            assert_eq!(error.map(|error| error.to_string()).as_deref(), Some(message));
        }
    }

    /// transformers' PIL-backend processors (rescale and normalize off) on `resize-source.png`, against
    /// the same steps as kiln `preprocess` objects: shortest-edge resizes (one already at its size, one
    /// with `longest_edge`), exact ones, nearest and vertical-first resizes under a crop, crops larger
    /// than the image in one and both axes, and MobileViT's BGR.
    #[test]
    fn transformers_pipelines_are_reproduced_byte_for_byte() -> TestResult {
        let goldens: Value = serde_json::from_str(include_str!("testdata/geometry.json"))?;
        let outputs: &[u8] = include_bytes!("testdata/pipelines.rgb");
        let source: &[u8] = include_bytes!("testdata/resize-source.png");
        let cases = goldens["pipelines"].as_array().ok_or("pipelines")?;
        let mut offset = 0;
        for case in cases {
            let spec: PreprocessSpec = serde_json::from_value(case["preprocess"].clone())?;
            let size = |key: &str| case[key].as_u64().and_then(|side| u32::try_from(side).ok()).ok_or("size");
            let (height, width) = (size("height")?, size("width")?);
            assert_eq!(spec.output_size(), Some((height, width)));
            let prepared = prepare(source, &spec, &ImageLimits::default())?;
            assert_eq!((prepared.height(), prepared.width()), (height, width), "{}", case["kwargs"]);
            let expected = &outputs[offset..offset + prepared.pixels().len()];
            assert_eq!(prepared.pixels(), expected, "{} {}", case["processor"], case["kwargs"]);
            offset += expected.len();
        }
        assert_eq!(offset, outputs.len(), "every pipeline output is checked");
        assert!(cases.iter().any(|case| case["preprocess"]["channel_order"] == "bgr"));
        Ok(())
    }

    #[test]
    fn bgr_swaps_red_and_blue_only() -> TestResult {
        let rgb = bilinear(12, 9);
        let bgr = PreprocessSpec { channel_order: ChannelOrder::Bgr, ..rgb.clone() };
        let limits = ImageLimits::default();
        let (rgb, bgr) = (prepare(YUV420_JPEG, &rgb, &limits)?, prepare(YUV420_JPEG, &bgr, &limits)?);
        assert_eq!((bgr.width(), bgr.height()), (rgb.width(), rgb.height()));
        for (rgb, bgr) in rgb.pixels().chunks_exact(3).zip(bgr.pixels().chunks_exact(3)) {
            assert_eq!(bgr, [rgb[2], rgb[1], rgb[0]]);
        }
        Ok(())
    }

    #[test]
    fn a_shortest_edge_resize_without_crop_keeps_the_aspect_ratio() -> TestResult {
        let spec = PreprocessSpec {
            size: ResizeSize::ShortestEdge { shortest_edge: 6, longest_edge: None },
            ..bilinear(1, 1)
        };
        // yuv420.jpg is 24x16.
        let prepared = prepare(YUV420_JPEG, &spec, &ImageLimits::default())?;
        assert_eq!((prepared.width(), prepared.height(), prepared.pixels().len()), (9, 6, 9 * 6 * 3));
        Ok(())
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
    }

    #[test]
    fn the_bad_fixture_images_are_refused_for_what_they_are() -> TestResult {
        let limits = ImageLimits::default();
        let truncated = std::fs::read(fixtures().join("images/bad/truncated.jpg"))?;
        assert_eq!(
            prepare(&truncated, &bilinear(8, 8), &limits),
            Err(InstanceError::Truncated { format: "JPEG" })
        );
        let huge = std::fs::read(fixtures().join("images/bad/huge-65535x65535.jpg"))?;
        assert!(matches!(
            prepare(&huge, &bilinear(8, 8), &limits),
            Err(InstanceError::TooManyPixels { width: 65535, height: 65535, .. })
        ));
        Ok(())
    }

    /// The preprocessing a fixture model's `preprocessor_config.json` asks for, and its input size.
    fn fixture_spec(model: &str) -> Result<PreprocessSpec, Box<dyn std::error::Error>> {
        let path = fixtures().join("models").join(model).join("preprocessor_config.json");
        let config: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let triple = |key: &str| -> Result<[f32; 3], Box<dyn std::error::Error>> {
            let values: Vec<f32> = config[key]
                .as_array()
                .ok_or(key.to_owned())?
                .iter()
                .filter_map(Value::as_f64)
                .map(|value| value as f32)
                .collect();
            Ok(values.try_into().map_err(|_| format!("{key} needs three numbers"))?)
        };
        // PIL.Image.Resampling numbering.
        let resample = match config["resample"].as_u64() {
            Some(0) => ResampleFilter::Nearest,
            Some(1) => ResampleFilter::Lanczos,
            Some(2) => ResampleFilter::Bilinear,
            Some(3) => ResampleFilter::Bicubic,
            Some(4) => ResampleFilter::Box,
            Some(5) => ResampleFilter::Hamming,
            other => return Err(format!("resample {other:?}").into()),
        };
        let side = |key: &str| config["size"][key].as_u64().and_then(|side| u32::try_from(side).ok());
        let spec = PreprocessSpec::legacy(
            ResizeMode::Pil,
            resample,
            side("height").ok_or("size.height")?,
            side("width").ok_or("size.width")?,
            config["rescale_factor"].as_f64().ok_or("rescale_factor")? as f32,
            triple("image_mean")?,
            triple("image_std")?,
        );
        // The references come from transformers' `load_image`, which applies `ImageOps.exif_transpose`.
        Ok(PreprocessSpec { exif_orientation: true, ..spec })
    }

    /// Every reference image of both fixture models, prepared and normalized as the graph will, against the
    /// Hugging Face processor's `pixel_values` (f32, CHW). Prints the measured differences per image.
    #[test]
    fn fixture_images_match_the_reference_model_inputs() -> TestResult {
        const MEAN_TOLERANCE: f64 = 0.002;
        const MAX_TOLERANCE: f64 = 0.02;
        for model in ["tiny-vit", "odd-vit"] {
            let spec = fixture_spec(model)?;
            let (height, width) = spec.output_size().ok_or("an exact size")?;
            let reference: Value = serde_json::from_str(&std::fs::read_to_string(
                fixtures().join(format!("reference/{model}.json")),
            )?)?;
            let images = reference["images"].as_array().ok_or("images")?;
            assert!(!images.is_empty(), "{model}: no reference images");
            for entry in images {
                let name = entry["image"].as_str().ok_or("image")?;
                let tensor_file = entry["pixel_values"]["file"].as_str().ok_or("pixel_values.file")?;
                let expected: Vec<f32> = std::fs::read(fixtures().join(tensor_file))?
                    .chunks_exact(4)
                    .map(|bytes| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
                    .collect();
                let prepared =
                    prepare(&std::fs::read(fixtures().join(name))?, &spec, &ImageLimits::default())?;
                let plane = (width * height) as usize;
                assert_eq!(expected.len(), 3 * plane, "{model} {name}: reference tensor size");
                let (mut total, mut max) = (0.0_f64, 0.0_f64);
                for (index, &sample) in prepared.pixels().iter().enumerate() {
                    let (pixel, channel) = (index / 3, index % 3);
                    let normalized =
                        f64::from(sample) * f64::from(spec.scale[channel]) + f64::from(spec.offset[channel]);
                    let diff = (normalized - f64::from(expected[channel * plane + pixel])).abs();
                    total += diff;
                    max = max.max(diff);
                }
                let mean = total / expected.len() as f64;
                println!("{model} {name}: mean |diff| {mean:.3e}, max |diff| {max:.3e}");
                assert!(
                    mean <= MEAN_TOLERANCE && max <= MAX_TOLERANCE,
                    "{model} {name}: mean {mean}, max {max}"
                );
            }
        }
        Ok(())
    }
}
