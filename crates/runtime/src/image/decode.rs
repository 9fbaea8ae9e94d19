//! From encoded image bytes to RGB8 pixels, refusing oversized images before any pixel is allocated.
//!
//! The model was evaluated on Pillow's `Image.open(...).convert("RGB")` (with `ImageOps.exif_transpose`
//! first when the processor's `load_image` applies it), so that is the contract for [`Decoder::Pillow`]:
//! grayscale is replicated into three channels, alpha is dropped without compositing, palettes are
//! looked up, 16-bit samples keep their high byte except 16-bit grayscale, which Pillow opens as `I;16`
//! and clips to 255, and colour profiles are ignored. Each format family has its own module that mirrors
//! Pillow's reader: `jpeg`, `gif`, `bmp`, `tiff`, `webp`; PNG is here, through the `image` crate.
//!
//! [`Decoder::Tensorflow`] is `tf.io.decode_image(..., channels=3)`: only JPEG, PNG, GIF and BMP, no
//! orientation, and libpng's `png_set_strip_16` (the high byte) for 16-bit grayscale as for every other
//! 16-bit PNG. GIF and BMP are read as Pillow reads them: TensorFlow's own readers were not available to
//! compare against (its documentation says a first GIF frame smaller than the canvas is padded with black,
//! where Pillow pads with palette index 0, or the transparency index).
//!
//! [`Decoder::PillowDraft`] is [`Decoder::Pillow`] with Pillow's `draft` for JPEGs: libjpeg's scaled IDCT
//! decodes at 1/2, 1/4 or 1/8 of the width and height when the resize shrinks the image at least that much.
//!
//! Every decoder reads the header (GIF: logical screen and first frame; TIFF: the first IFD) and checks
//! the declared size against [`ImageLimits`] before allocating pixels.

use std::io::{Cursor, ErrorKind};

use ::image::codecs::png::PngDecoder;
use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageBuffer, ImageDecoder, ImageError, Pixel, RgbImage};
use artifact::{Decoder, ResizeSize};

use super::{ImageLimits, InstanceError, bmp, geometry, gif, jpeg, orientation, tiff, webp};

const JPEG_MAGIC: &[u8] = b"\xff\xd8\xff";
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The encodings kiln decodes, recognised by their leading bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ImageFormat {
    /// JPEG: starts with SOI and the first marker's `FF`.
    Jpeg,
    /// PNG: starts with the 8-byte PNG signature.
    Png,
    /// GIF87a or GIF89a.
    Gif,
    /// A RIFF container of type `WEBP` whose first chunk is `VP8 `, `VP8L` or `VP8X`.
    WebP,
    /// `BM` followed by a file size and a DIB header of a size Pillow reads.
    Bmp,
    /// `II*\0` (little-endian) or `MM\0*` (big-endian).
    Tiff,
}

impl ImageFormat {
    /// The format `bytes` claim to be by their signature, if it is one kiln decodes.
    ///
    /// BMP's two-letter signature is checked with the DIB header size behind it, so that base64 text
    /// starting with `BM` is not taken for a raw BMP.
    pub(super) fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(JPEG_MAGIC) {
            Some(Self::Jpeg)
        } else if bytes.starts_with(PNG_MAGIC) {
            Some(Self::Png)
        } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(Self::Gif)
        } else if bytes.starts_with(b"RIFF")
            && bytes.get(8..12) == Some(b"WEBP")
            && matches!(bytes.get(12..16), Some(b"VP8 " | b"VP8L" | b"VP8X"))
        {
            Some(Self::WebP)
        } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
            Some(Self::Tiff)
        } else if bytes.starts_with(b"BM") && bmp::known_header_size(bytes) {
            Some(Self::Bmp)
        } else {
            None
        }
    }

    /// The format's name in messages.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
            Self::Gif => "GIF",
            Self::WebP => "WebP",
            Self::Bmp => "BMP",
            Self::Tiff => "TIFF",
        }
    }

    /// Whether `tf.io.decode_image` decodes this format.
    fn decoded_by_tensorflow(self) -> bool {
        matches!(self, Self::Jpeg | Self::Png | Self::Gif | Self::Bmp)
    }
}

/// An image as decoded and oriented, and its size at full scale: a JPEG drafted by
/// [`Decoder::PillowDraft`] has fewer pixels than the image it stands for, whose size decides the resize.
pub(super) struct Decoded {
    pub(super) image: RgbImage,
    /// Width at full scale, after orientation.
    pub(super) width: u32,
    /// Height at full scale, after orientation.
    pub(super) height: u32,
}

/// Decodes `bytes` into RGB8 as `decoder` would, checking the header's dimensions against `limits`
/// before allocating any pixel.
///
/// With `exif_orientation`, the EXIF (or XMP) orientation is applied as Pillow's
/// `ImageOps.exif_transpose` applies it; [`Decoder::Tensorflow`] never orients, whatever the flag.
///
/// With `transparency_to_white` (and a Pillow decoder), every pixel equal to the colour key Pillow keeps
/// in `info["transparency"]` after `convert("RGB")` becomes white, as transformers' `convert_to_rgb` does
/// (it treats the key as alpha and composites over white). GIF's transparency index and 8-bit PNG tRNS
/// (a palette with one fully transparent entry, a grey or an RGB key) carry a key; other formats none.
///
/// With [`Decoder::PillowDraft`], a JPEG headed for a resize to `size` is decoded at the reduction
/// Pillow's `draft("RGB", size)` picks ([`draft_reduction`]).
pub(super) fn decode(
    bytes: &[u8],
    limits: &ImageLimits,
    decoder: Decoder,
    exif_orientation: bool,
    transparency_to_white: bool,
    size: ResizeSize,
) -> Result<Decoded, InstanceError> {
    let format = ImageFormat::sniff(bytes).ok_or_else(|| unsupported_format(bytes))?;
    if decoder == Decoder::Tensorflow && !format.decoded_by_tensorflow() {
        return Err(InstanceError::NotDecodedByTensorflow { format: format.name() });
    }
    let orientation = if exif_orientation && decoder.is_pillow() {
        orientation::read(format, bytes)
    } else {
        Orientation::NoTransforms
    };
    let transposed = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let mut full_size = None;
    let (mut image, key) = match format {
        ImageFormat::Jpeg => {
            let frame = jpeg::read_frame(bytes)?;
            check_size(frame.width, frame.height, limits)?;
            full_size = Some((frame.width, frame.height));
            let reduction = match decoder {
                Decoder::PillowDraft => draft_reduction(size, frame.width, frame.height, transposed),
                Decoder::Pillow | Decoder::Tensorflow => 1,
            };
            (jpeg::decode_rgb8(bytes, frame, decoder, reduction)?, None)
        }
        ImageFormat::Png => (decode_png(bytes, limits, decoder)?, png_colour_key(bytes)),
        ImageFormat::Gif => gif::decode_rgb8(bytes, limits)?,
        ImageFormat::WebP => (webp::decode_rgb8(bytes, limits)?, None),
        ImageFormat::Bmp => (bmp::decode_rgb8(bytes, limits)?, None),
        ImageFormat::Tiff => (tiff::decode_rgb8(bytes, limits)?, None),
    };
    if let Some(key) = key.filter(|_| transparency_to_white && decoder.is_pillow()) {
        for pixel in image.pixels_mut().filter(|pixel| pixel.0 == key) {
            pixel.0 = [255; 3];
        }
    }
    let (width, height) = full_size.unwrap_or(image.dimensions());
    let (width, height) = if transposed { (height, width) } else { (width, height) };
    Ok(Decoded { image: orientation::apply(image, orientation), width, height })
}

/// The reduction (1, 2, 4 or 8) Pillow's `JpegImageFile.draft("RGB", size)` picks for a `width` x
/// `height` JPEG whose oriented image is resized to `size`: the largest of 8, 4, 2 and 1 that is at most
/// `min(width // w', height // h')`, with `(w', h')` the resize's size in the stored orientation
/// (swapped when the orientation `transposed` the axes).
fn draft_reduction(size: ResizeSize, width: u32, height: u32, transposed: bool) -> u8 {
    let (oriented_width, oriented_height) = if transposed { (height, width) } else { (width, height) };
    let (resized_height, resized_width) = geometry::resized_size(size, oriented_height, oriented_width);
    let (wanted_width, wanted_height) =
        if transposed { (resized_height, resized_width) } else { (resized_width, resized_height) };
    if wanted_width == 0 || wanted_height == 0 {
        return 1;
    }
    let scale = (u64::from(width) / wanted_width).min(u64::from(height) / wanted_height);
    [8, 4, 2].into_iter().find(|&reduction| scale >= u64::from(reduction)).unwrap_or(1)
}

/// [`decode`]'s image for a decoder that does not draft, as the tests compare it with Pillow's
/// `convert("RGB")` (the resize's size only matters to [`Decoder::PillowDraft`]).
#[cfg(test)]
pub(super) fn decode_rgb8(
    bytes: &[u8],
    limits: &ImageLimits,
    decoder: Decoder,
    exif_orientation: bool,
    transparency_to_white: bool,
) -> Result<RgbImage, InstanceError> {
    debug_assert_ne!(decoder, Decoder::PillowDraft);
    let size = ResizeSize::Exact { height: 1, width: 1 };
    Ok(decode(bytes, limits, decoder, exif_orientation, transparency_to_white, size)?.image)
}

/// Refuses a zero-sized image and one above [`ImageLimits::max_pixels`].
pub(super) fn check_size(width: u32, height: u32, limits: &ImageLimits) -> Result<(), InstanceError> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(InstanceError::ZeroSize { width, height });
    }
    if pixels > limits.max_pixels {
        return Err(InstanceError::TooManyPixels { width, height, pixels, limit: limits.max_pixels });
    }
    Ok(())
}

/// PNG through the `png` crate, which reads the header (up to the first image data) in `new`.
fn decode_png(bytes: &[u8], limits: &ImageLimits, decoder: Decoder) -> Result<RgbImage, InstanceError> {
    const FORMAT: &str = "PNG";
    let png = PngDecoder::new(Cursor::new(bytes)).map_err(|error| image_error(FORMAT, error))?;
    let (width, height) = png.dimensions();
    check_size(width, height, limits)?;
    // 16-bit grayscale (IHDR bit depth 16, colour type 0) with a tRNS chunk also decodes to gray + alpha,
    // but Pillow opens it as `I;16`.
    let gray = bytes.get(24..26) == Some(&[16, 0]);
    check_png_palette(bytes)?;
    let image = DynamicImage::from_decoder(png).map_err(|error| image_error(FORMAT, error))?;
    Ok(match image {
        // Pillow opens 16-bit PNGs with raw modes that keep the high byte of each sample (`RGB;16B`,
        // `LA;16B`); `image`'s own conversion rounds instead, one level off in half the pixels.
        DynamicImage::ImageRgb16(rgb) => high_bytes(&rgb),
        DynamicImage::ImageRgba16(rgba) => DynamicImage::ImageRgba8(high_bytes(&rgba)).into_rgb8(),
        // 16-bit grayscale: Pillow's `I;16` -> `RGB` clips (so nearly every pixel of a 16-bit scan is
        // white); libpng's strip_16 in TensorFlow keeps the high byte.
        DynamicImage::ImageLuma16(luma) if decoder.is_pillow() => {
            RgbImage::from_raw(width, height, clipped_gray(luma.as_raw(), 1)).expect("one sample per pixel")
        }
        DynamicImage::ImageLumaA16(luma) if gray && decoder.is_pillow() => {
            RgbImage::from_raw(width, height, clipped_gray(luma.as_raw(), 2)).expect("two samples per pixel")
        }
        DynamicImage::ImageLuma16(luma) => DynamicImage::ImageLuma8(high_bytes(&luma)).into_rgb8(),
        DynamicImage::ImageLumaA16(luma) => DynamicImage::ImageLumaA8(high_bytes(&luma)).into_rgb8(),
        // Gray is replicated and alpha dropped: exactly Pillow's `L`, `LA` and `RGBA` to `RGB`.
        other => other.into_rgb8(),
    })
}

/// The colour key Pillow keeps in `info["transparency"]` of an 8-bit PNG after `convert("RGB")`: the tRNS
/// grey or RGB sample, or the palette colour of the one fully transparent entry when every other entry is
/// opaque (Pillow keeps any other palette tRNS as bytes, which `convert("RGB")` drops). 16-bit and
/// sub-byte keys are not read.
fn png_colour_key(bytes: &[u8]) -> Option<[u8; 3]> {
    let (bit_depth, colour_type) = (*bytes.get(24)?, *bytes.get(25)?);
    let mut palette: &[u8] = &[];
    for (kind, data) in png_chunks(bytes) {
        match kind {
            b"PLTE" => palette = data,
            b"tRNS" => {
                let sample = |index: usize| match data.get(2 * index..2 * index + 2)? {
                    [0, value] => Some(*value),
                    _ => None,
                };
                return match (colour_type, bit_depth) {
                    (0, 8) => Some([sample(0)?; 3]),
                    (2, 8) => Some([sample(0)?, sample(1)?, sample(2)?]),
                    (3, _) => {
                        let transparent = data.iter().position(|&alpha| alpha == 0)?;
                        let simple = data
                            .iter()
                            .enumerate()
                            .all(|(index, &alpha)| alpha == 255 || (alpha == 0 && index == transparent));
                        let colour = palette.get(3 * transparent..3 * transparent + 3).unwrap_or(&[0; 3]);
                        simple.then(|| colour.try_into().ok()).flatten()
                    }
                    _ => None,
                };
            }
            b"IDAT" => return None,
            _ => {}
        }
    }
    None
}

/// Refuses the palettes the `png` crate would panic on (0.18.1, `create_rgba_palette`, found by fuzzing):
/// a PLTE that is not whole RGB entries, or a tRNS with more entries than the palette. Both break the
/// PNG specification; Pillow reads such files anyway, kiln says what is wrong with them.
fn check_png_palette(bytes: &[u8]) -> Result<(), InstanceError> {
    const INDEXED: u8 = 3;
    if bytes.get(25) != Some(&INDEXED) {
        return Ok(());
    }
    let corrupt = |detail: String| InstanceError::Corrupt { format: "PNG", detail };
    let mut entries = None;
    for (kind, data) in png_chunks(bytes) {
        match kind {
            b"PLTE" if !data.len().is_multiple_of(3) => {
                return Err(corrupt(format!("PLTE chunk of {} bytes is not whole RGB entries", data.len())));
            }
            b"PLTE" => entries = Some(data.len() / 3),
            b"tRNS" if entries.is_some_and(|entries| data.len() > entries) => {
                return Err(corrupt(format!(
                    "tRNS chunk has {} entries for a palette of {}",
                    data.len(),
                    entries.unwrap_or_default()
                )));
            }
            b"IDAT" => break,
            _ => {}
        }
    }
    Ok(())
}

/// A PNG's chunks (kind, data) in file order, up to the first one that is cut short.
fn png_chunks(bytes: &[u8]) -> impl Iterator<Item = (&[u8; 4], &[u8])> {
    let mut rest = bytes.get(PNG_MAGIC.len()..).unwrap_or_default();
    std::iter::from_fn(move || {
        let (header, after) = rest.split_first_chunk::<8>()?;
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = header.last_chunk::<4>()?;
        let data = after.get(..length)?;
        // Data, then a 4-byte CRC.
        rest = after.get(length.checked_add(4)?..).unwrap_or_default();
        Some((kind, data))
    })
}

/// The same image with every 16-bit sample reduced to its high byte.
pub(super) fn high_bytes<P, Q>(image: &ImageBuffer<P, Vec<u16>>) -> ImageBuffer<Q, Vec<u8>>
where
    P: Pixel<Subpixel = u16>,
    Q: Pixel<Subpixel = u8>,
{
    let samples = image.as_raw().iter().map(|&sample| sample.to_be_bytes()[0]).collect();
    ImageBuffer::from_raw(image.width(), image.height(), samples)
        .expect("same dimensions and channel count as the source buffer")
}

/// Pillow's `I;16` -> `RGB`: the first of every `stride` samples, clipped to 255 and replicated.
pub(super) fn clipped_gray(samples: &[u16], stride: usize) -> Vec<u8> {
    samples.iter().step_by(stride).flat_map(|&sample| [sample.min(255) as u8; 3]).collect()
}

/// The error for bytes that are no format kiln decodes, naming the format when `image` recognises it.
pub(super) fn unsupported_format(bytes: &[u8]) -> InstanceError {
    let found = match ::image::guess_format(bytes) {
        Ok(format) => format!("{format:?}").to_lowercase(),
        Err(_) => {
            let head: Vec<String> = bytes.iter().take(4).map(|byte| format!("{byte:02x}")).collect();
            format!("starting with bytes {}", head.join(" "))
        }
    };
    InstanceError::UnsupportedFormat { found }
}

/// An `image` (or `png`) decoding error as the instance error for `format`.
fn image_error(format: &'static str, error: ImageError) -> InstanceError {
    match error {
        ImageError::IoError(io) if io.kind() == ErrorKind::UnexpectedEof => {
            InstanceError::Truncated { format }
        }
        ImageError::Unsupported(unsupported) => {
            InstanceError::UnsupportedEncoding { format, detail: unsupported.to_string() }
        }
        ImageError::Decoding(decoding) => {
            let detail = std::error::Error::source(&decoding)
                .map_or_else(|| decoding.to_string(), ToString::to_string);
            InstanceError::Corrupt { format, detail }
        }
        other => InstanceError::Corrupt { format, detail: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// An encoded test image and Pillow's `convert("RGB")` of it, both from `testdata/generate.py`.
    macro_rules! case {
        ($name:literal) => {
            (
                $name,
                &include_bytes!(concat!("testdata/", $name))[..],
                &include_bytes!(concat!("testdata/", $name, ".rgb"))[..],
            )
        };
    }

    /// Decodes as the Hugging Face pipeline does, without orientation, under the default limits.
    fn pillow(bytes: &[u8]) -> Result<RgbImage, InstanceError> {
        decode_rgb8(bytes, &ImageLimits::default(), Decoder::Pillow, false, false)
    }

    const GRAY_JPEG: &[u8] = include_bytes!("testdata/gray.jpg");
    const RGB_PNG: &[u8] = include_bytes!("testdata/rgb.png");

    /// A JPEG, the `(width, height)` asked of Pillow's `draft`, and the pixels it decoded.
    macro_rules! draft_case {
        ($name:literal, $width:literal, $height:literal) => {
            (
                &include_bytes!(concat!("testdata/", $name))[..],
                ($width, $height),
                &include_bytes!(concat!("testdata/", $name, ".draft-", $width, "x", $height, ".rgb"))[..],
            )
        };
    }

    #[test]
    fn drafted_jpegs_decode_as_pillow_drafts_them_at_each_reduction() -> TestResult {
        let cases = [
            draft_case!("draft.jpg", 33, 22),
            draft_case!("draft.jpg", 16, 11),
            draft_case!("draft.jpg", 8, 5),
            draft_case!("draft.jpg", 67, 45),
            draft_case!("cmyk.jpg", 12, 8),
            draft_case!("gray.jpg", 6, 4),
            draft_case!("progressive.jpg", 3, 2),
            draft_case!("yuv422.jpg", 12, 8),
        ];
        for (bytes, (width, height), expected) in cases {
            let size = ResizeSize::Exact { height, width };
            let decoded = decode(bytes, &ImageLimits::default(), Decoder::PillowDraft, false, false, size)?;
            assert_eq!(decoded.image.as_raw().as_slice(), expected, "draft to {width}x{height}");
            let full = pillow(bytes)?;
            assert_eq!(
                (decoded.width, decoded.height),
                full.dimensions(),
                "full size of the {width}x{height} draft"
            );
        }
        let size = ResizeSize::Exact { height: 1, width: 1 };
        let png = decode(RGB_PNG, &ImageLimits::default(), Decoder::PillowDraft, false, false, size)?;
        assert_eq!(png.image, pillow(RGB_PNG)?, "only JPEGs are drafted");
        Ok(())
    }

    #[test]
    fn the_draft_reduction_is_the_largest_power_of_two_up_to_eight_that_fits_the_resize() {
        let exact = |height, width| ResizeSize::Exact { height, width };
        assert_eq!(draft_reduction(exact(224, 224), 2400, 2093, false), 8);
        assert_eq!(draft_reduction(exact(224, 224), 1800, 1000, false), 4);
        assert_eq!(draft_reduction(exact(224, 224), 447, 2000, false), 1);
        assert_eq!(draft_reduction(exact(224, 224), 448, 448, false), 2);
        // The resize's size in the stored orientation: a 30-high, 6-wide resize of an image stored on its side.
        assert_eq!(draft_reduction(exact(30, 6), 67, 45, true), 2);
        assert_eq!(draft_reduction(exact(30, 6), 67, 45, false), 1);
        let edge = ResizeSize::ShortestEdge { shortest_edge: 256, longest_edge: None };
        assert_eq!(draft_reduction(edge, 4000, 1024, false), 4);
        assert_eq!(draft_reduction(exact(0, 224), 2400, 2093, false), 1);
    }

    #[test]
    fn every_colour_model_converts_to_rgb_exactly_as_pillow_does() -> TestResult {
        let cases = [
            case!("yuv420.jpg"),
            case!("yuv422.jpg"),
            case!("progressive.jpg"),
            case!("gray.jpg"),
            case!("cmyk.jpg"),
            case!("1x1.jpg"),
            case!("rgb.png"),
            case!("1x1.png"),
            case!("palette.png"),
            case!("rgba.png"),
            case!("la.png"),
            case!("bilevel.png"),
            case!("rgb16.png"),
            case!("rgba16.png"),
            case!("gray16.png"),
        ];
        for (name, encoded, expected) in cases {
            let decoded = pillow(encoded)?;
            let differing =
                decoded.as_raw().iter().zip(expected).filter(|(ours, theirs)| ours != theirs).count();
            assert_eq!(decoded.as_raw().len(), expected.len(), "{name}: size");
            assert_eq!(differing, 0, "{name}: {differing} of {} samples differ from Pillow", expected.len());
        }
        Ok(())
    }

    #[test]
    fn the_gif_transparency_key_becomes_white_as_convert_to_rgb_makes_it() -> TestResult {
        let gif = include_bytes!("../../../../fixtures/images/chelsea-crop-transparent.gif");
        // transformers' `convert_to_rgb(load_image(path), return_numpy=True)`, Pillow 13.
        let expected = include_bytes!("testdata/chelsea-crop-transparent.gif.white.rgb");
        let limits = ImageLimits::default();
        let whitened = decode_rgb8(gif, &limits, Decoder::Pillow, false, true)?;
        assert_eq!(whitened.dimensions(), (200, 133));
        assert!(whitened.as_raw() == &expected[..], "differs from Pillow + convert_to_rgb");
        let plain = pillow(gif)?;
        assert_ne!(plain.as_raw(), whitened.as_raw());
        assert_eq!(decode_rgb8(gif, &limits, Decoder::Tensorflow, false, true)?, plain);
        Ok(())
    }

    #[test]
    fn a_one_pixel_image_decodes_to_one_pixel() -> TestResult {
        for (name, encoded, expected) in [case!("1x1.jpg"), case!("1x1.png")] {
            let decoded = pillow(encoded)?;
            assert_eq!((decoded.dimensions(), decoded.as_raw().as_slice()), ((1, 1), expected), "{name}");
        }
        Ok(())
    }

    /// Offset of the frame header's precision byte (right after SOFn and its length) in a JPEG.
    fn frame_offset(jpeg: &[u8]) -> usize {
        let mut position = 2;
        while !matches!(jpeg[position + 1], 0xC0..=0xC2) {
            position += 2 + usize::from(u16::from_be_bytes([jpeg[position + 2], jpeg[position + 3]]));
        }
        position + 4
    }

    fn jpeg_declaring(width: u16, height: u16) -> Vec<u8> {
        let mut jpeg = GRAY_JPEG.to_vec();
        let frame = frame_offset(&jpeg);
        jpeg[frame + 1..frame + 3].copy_from_slice(&height.to_be_bytes());
        jpeg[frame + 3..frame + 5].copy_from_slice(&width.to_be_bytes());
        jpeg
    }

    #[test]
    fn a_jpeg_declaring_65535_squared_pixels_is_refused_from_its_header() {
        // Decoding would need 12 GiB; the error comes from the header alone, before libjpeg runs.
        let error = pillow(&jpeg_declaring(65535, 65535)).err();
        assert_eq!(
            error,
            Some(InstanceError::TooManyPixels {
                width: 65535,
                height: 65535,
                pixels: 4_294_836_225,
                limit: 64_000_000
            })
        );
        assert_eq!(
            error.map(|error| error.to_string()).as_deref(),
            Some("image is 65535x65535 = 4294836225 pixels, above the limit of 64000000")
        );
    }

    #[test]
    fn the_pixel_limit_is_configurable() {
        let limits = ImageLimits { max_pixels: 383, ..ImageLimits::default() };
        assert_eq!(
            decode_rgb8(GRAY_JPEG, &limits, Decoder::Pillow, false, false).err(),
            Some(InstanceError::TooManyPixels { width: 24, height: 16, pixels: 384, limit: 383 })
        );
        assert_eq!(
            decode_rgb8(RGB_PNG, &limits, Decoder::Pillow, false, false).err(),
            Some(InstanceError::TooManyPixels { width: 24, height: 16, pixels: 384, limit: 383 })
        );
    }

    #[test]
    fn a_zero_sized_jpeg_is_refused() {
        assert_eq!(
            pillow(&jpeg_declaring(24, 0)).err(),
            Some(InstanceError::ZeroSize { width: 24, height: 0 })
        );
    }

    /// CRC-32 (IEEE) as PNG chunks use it, to patch a header without the file being refused as corrupt.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0_u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    /// `png` with a chunk of `kind` holding `data` inserted before its first IDAT.
    fn with_chunk_before_idat(png: &[u8], kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let idat = png.windows(4).position(|w| w == b"IDAT").expect("an IDAT chunk") - 4;
        let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
        chunk.extend_from_slice(kind);
        chunk.extend_from_slice(data);
        chunk.extend_from_slice(&crc32(&chunk[4..]).to_be_bytes());
        [&png[..idat], &chunk, &png[idat..]].concat()
    }

    #[test]
    fn indexed_pngs_whose_palette_would_panic_the_png_crate_are_corrupt() -> TestResult {
        let corrupt = |bytes: &[u8]| match pillow(bytes) {
            Err(InstanceError::Corrupt { format: "PNG", detail }) => detail,
            other => panic!("not refused as a corrupt PNG: {other:?}"),
        };
        // Found by `cargo xtask fuzz --target image_prepare --seeds png`: 16 entries and one byte.
        let detail = corrupt(include_bytes!("testdata/fuzz/plte-49-bytes.png"));
        assert!(detail.contains("PLTE chunk of 49 bytes"), "{detail}");
        let palette = include_bytes!("testdata/formats/palette4.png");
        let entries = png_chunks(palette).find(|(kind, _)| *kind == b"PLTE").ok_or("no PLTE")?.1.len() / 3;
        let detail = corrupt(&with_chunk_before_idat(palette, b"tRNS", &vec![255; entries + 1]));
        assert!(
            detail.contains(&format!("tRNS chunk has {} entries for a palette of {entries}", entries + 1))
        );
        // As many alpha values as entries is valid.
        pillow(&with_chunk_before_idat(palette, b"tRNS", &vec![255; entries]))?;
        Ok(())
    }

    #[test]
    fn a_png_declaring_65535_squared_pixels_is_refused_from_its_header() {
        let mut png = RGB_PNG.to_vec();
        // Signature (8), IHDR length (4) and type (4), then width and height; the CRC covers type and data.
        png[16..20].copy_from_slice(&65535_u32.to_be_bytes());
        png[20..24].copy_from_slice(&65535_u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            pillow(&png).err(),
            Some(InstanceError::TooManyPixels {
                width: 65535,
                height: 65535,
                pixels: 4_294_836_225,
                limit: 64_000_000
            })
        );
    }

    #[test]
    fn truncated_files_are_reported_as_truncated() {
        // A JPEG without its end-of-image marker is truncated (Pillow refuses it too); a PNG is truncated
        // when image data is missing, while a missing IEND alone is accepted, as Pillow does.
        for (name, truncated) in [
            ("half a jpeg", &GRAY_JPEG[..GRAY_JPEG.len() / 2]),
            ("a jpeg without EOI", &GRAY_JPEG[..GRAY_JPEG.len() - 2]),
            ("half a png", &RGB_PNG[..RGB_PNG.len() / 2]),
        ] {
            let error = pillow(truncated).err();
            assert!(matches!(error, Some(InstanceError::Truncated { .. })), "{name}: {error:?}");
        }
    }

    #[test]
    fn a_damaged_huffman_table_is_a_corrupt_jpeg_with_libjpegs_reason() {
        let mut jpeg = GRAY_JPEG.to_vec();
        let table = jpeg.windows(2).position(|marker| marker == [0xFF, 0xC4]).expect("a DHT segment");
        // The 16 code-length counts after the table class byte: all 0xFF claims 4080 codes.
        jpeg[table + 5..table + 21].fill(0xFF);
        let error = pillow(&jpeg).err();
        assert!(
            matches!(&error, Some(InstanceError::Corrupt { format: "JPEG", detail }) if detail.contains("Huffman")),
            "{error:?}"
        );
    }

    #[test]
    fn garbage_after_a_jpeg_signature_is_corrupt() {
        let error = pillow(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 then no markers at all");
        assert!(matches!(error, Err(InstanceError::Corrupt { format: "JPEG", .. })), "{error:?}");
    }

    #[test]
    fn lossless_and_12_bit_jpegs_are_unsupported_encodings() {
        let frame = frame_offset(GRAY_JPEG);
        let mut lossless = GRAY_JPEG.to_vec();
        lossless[frame - 3] = 0xC3;
        let mut twelve_bit = GRAY_JPEG.to_vec();
        twelve_bit[frame] = 12;
        for (jpeg, expected) in [(lossless, "lossless JPEG"), (twelve_bit, "12-bit samples")] {
            let error = pillow(&jpeg).err();
            assert!(
                matches!(&error, Some(InstanceError::UnsupportedEncoding { detail, .. }) if detail.contains(expected)),
                "{error:?}"
            );
        }
    }

    /// A decoder test input in `testdata/formats/` and Pillow's RGB of it.
    macro_rules! format_case {
        ($name:literal) => {
            (
                $name,
                &include_bytes!(concat!("testdata/formats/", $name))[..],
                &include_bytes!(concat!("testdata/formats/", $name, ".rgb"))[..],
            )
        };
    }

    /// Every format and colour type, byte for byte. Prints what differs, per file.
    #[test]
    fn every_format_decodes_as_pillow_does() -> TestResult {
        let cases = [
            format_case!("gray2.png"),
            format_case!("gray4.png"),
            format_case!("gray-trns.png"),
            format_case!("gray16-dark.png"),
            format_case!("gray16-trns.png"),
            format_case!("la16.png"),
            format_case!("rgb16-trns.png"),
            format_case!("rgb-trns.png"),
            format_case!("palette4.png"),
            format_case!("palette1.png"),
            format_case!("palette-short.png"),
            format_case!("palette.gif"),
            format_case!("animated.gif"),
            format_case!("offset.gif"),
            format_case!("offset-transparent.gif"),
            format_case!("past-screen.gif"),
            format_case!("local-palette.gif"),
            format_case!("short-palette.gif"),
            format_case!("gray-ramp.gif"),
            // Lossy, yet image-webp's fancy upsampling equals libwebp's (also on 451x300 photos at
            // quality 50 to 95, measured once).
            format_case!("lossy.webp"),
            format_case!("lossy-alpha.webp"),
            format_case!("lossless.webp"),
            format_case!("lossless-alpha.webp"),
            format_case!("animated.webp"),
            format_case!("animated-alpha.webp"),
            format_case!("animated-alpha-blend.webp"),
            format_case!("rgb24.bmp"),
            format_case!("top-down.bmp"),
            format_case!("os2.bmp"),
            format_case!("bgrx32.bmp"),
            format_case!("rgba32-bitfields.bmp"),
            format_case!("rgb555.bmp"),
            format_case!("rgb565.bmp"),
            format_case!("palette8.bmp"),
            format_case!("palette4.bmp"),
            format_case!("palette1.bmp"),
            format_case!("short-palette.bmp"),
            format_case!("bilevel.bmp"),
            format_case!("gray8.bmp"),
            format_case!("rle8.bmp"),
            format_case!("rle4.bmp"),
            format_case!("rgb8.tif"),
            format_case!("rgb8-lzw.tif"),
            format_case!("rgb8-packbits.tif"),
            format_case!("rgb8-tiles.tif"),
            format_case!("rgb8-predictor.tif"),
            format_case!("rgb16.tif"),
            format_case!("rgb16-be.tif"),
            format_case!("gray8.tif"),
            format_case!("min-is-white.tif"),
            format_case!("gray4.tif"),
            format_case!("bilevel.tif"),
            format_case!("gray16.tif"),
            format_case!("gray16-be.tif"),
            format_case!("rgba8.tif"),
            format_case!("rgba8-associated.tif"),
            format_case!("rgbx8.tif"),
            format_case!("rgba8-undeclared.tif"),
            format_case!("rgbax8.tif"),
            format_case!("rgba16-associated.tif"),
            format_case!("gray-alpha.tif"),
            format_case!("cmyk.tif"),
            format_case!("cmyk16.tif"),
        ];
        let mut failures = Vec::new();
        for (name, encoded, expected) in cases {
            let decoded = match pillow(encoded) {
                Ok(decoded) => decoded,
                Err(error) => {
                    failures.push(format!("{name}: {error}"));
                    continue;
                }
            };
            if decoded.as_raw().len() != expected.len() {
                failures.push(format!(
                    "{name}: {} bytes, Pillow has {}",
                    decoded.as_raw().len(),
                    expected.len()
                ));
                continue;
            }
            let diffs: Vec<u8> =
                decoded.as_raw().iter().zip(expected).map(|(ours, theirs)| ours.abs_diff(*theirs)).collect();
            let max = diffs.iter().copied().max().unwrap_or(0);
            let differing = diffs.iter().filter(|&&diff| diff > 0).count();
            println!("{name}: max |diff| {max}, {differing} of {} samples differ", diffs.len());
            if max > 0 {
                failures.push(format!("{name}: max |diff| {max} ({differing} samples differ)"));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
        Ok(())
    }

    /// `ImageOps.exif_transpose` then `convert("RGB")`, for all seven orientations and every place
    /// Pillow reads one from.
    #[test]
    fn orientation_is_applied_as_exif_transpose_applies_it() -> TestResult {
        let cases = [
            format_case!("orient-2.jpg"),
            format_case!("orient-3.jpg"),
            format_case!("orient-4.jpg"),
            format_case!("orient-5.jpg"),
            format_case!("orient-6.jpg"),
            format_case!("orient-7.jpg"),
            format_case!("orient-8.jpg"),
            format_case!("orient-4-xmp.jpg"),
            format_case!("orient-6.png"),
            format_case!("orient-7-after-idat.png"),
            format_case!("orient-5-raw-profile.png"),
            format_case!("orient-8-xmp.png"),
            format_case!("orient-3.webp"),
            format_case!("orient-2-xmp.webp"),
            format_case!("orient-8.tif"),
        ];
        for (name, encoded, expected) in cases {
            let decoded = decode_rgb8(encoded, &ImageLimits::default(), Decoder::Pillow, true, false)?;
            // The pictures are 7x5; orientations 5 to 8 swap the sides.
            let quarter_turn =
                ["5", "6", "7", "8"].iter().any(|digit| name.starts_with(&format!("orient-{digit}")));
            let size = if quarter_turn { (5, 7) } else { (7, 5) };
            assert_eq!(decoded.dimensions(), size, "{name}");
            assert_eq!(decoded.as_raw().as_slice(), expected, "{name}");
        }
        Ok(())
    }

    #[test]
    fn orientation_is_applied_only_when_asked_and_never_for_tensorflow() -> TestResult {
        let encoded = include_bytes!("testdata/formats/orient-6.jpg");
        let limits = ImageLimits::default();
        let plain = pillow(encoded)?;
        assert_eq!(plain.dimensions(), (7, 5));
        let tensorflow = decode_rgb8(encoded, &limits, Decoder::Tensorflow, false, false)?;
        assert_eq!(decode_rgb8(encoded, &limits, Decoder::Tensorflow, true, false)?, tensorflow);
        assert_eq!(tensorflow.dimensions(), (7, 5));
        assert_eq!(decode_rgb8(encoded, &limits, Decoder::Pillow, true, false)?.dimensions(), (5, 7));
        // Pillow's TIFF plugin orients while loading, so a TIFF is oriented either way.
        let tiff = include_bytes!("testdata/formats/orient-8.tif");
        assert_eq!(pillow(tiff)?.as_raw().as_slice(), include_bytes!("testdata/formats/orient-8.tif.rgb"));
        Ok(())
    }

    #[test]
    fn tensorflow_refuses_what_decode_image_refuses() -> TestResult {
        let limits = ImageLimits::default();
        for (encoded, format) in [
            (&include_bytes!("testdata/formats/lossless.webp")[..], "WebP"),
            (&include_bytes!("testdata/formats/rgb8.tif")[..], "TIFF"),
        ] {
            let error = decode_rgb8(encoded, &limits, Decoder::Tensorflow, false, false).err();
            assert_eq!(error, Some(InstanceError::NotDecodedByTensorflow { format }));
            assert_eq!(
                error.map(|error| error.to_string()),
                Some(format!(
                    "{format} is not accepted: this model decodes as tf.io.decode_image, which takes \
                     JPEG, PNG, GIF and BMP"
                ))
            );
        }
        for accepted in [
            &include_bytes!("testdata/formats/palette.gif")[..],
            include_bytes!("testdata/formats/rgb24.bmp"),
            include_bytes!("testdata/rgb.png"),
            GRAY_JPEG,
        ] {
            decode_rgb8(accepted, &limits, Decoder::Tensorflow, false, false)?;
        }
        Ok(())
    }

    #[test]
    fn tensorflow_keeps_the_high_byte_of_16_bit_gray_where_pillow_clips() -> TestResult {
        let encoded = include_bytes!("testdata/formats/gray16-dark.png");
        let DynamicImage::ImageLuma16(levels) = ::image::load_from_memory(encoded)? else {
            return Err("gray16-dark.png is not 16-bit grey".into());
        };
        let high: Vec<u8> = levels.as_raw().iter().flat_map(|&level| [(level >> 8) as u8; 3]).collect();
        let clipped: Vec<u8> = levels.as_raw().iter().flat_map(|&level| [level.min(255) as u8; 3]).collect();
        let limits = ImageLimits::default();
        assert_eq!(decode_rgb8(encoded, &limits, Decoder::Tensorflow, false, false)?.into_raw(), high);
        assert_eq!(pillow(encoded)?.into_raw(), clipped);
        Ok(())
    }

    #[test]
    fn every_format_is_recognised_by_its_signature() {
        let cases = [
            (GRAY_JPEG, ImageFormat::Jpeg),
            (RGB_PNG, ImageFormat::Png),
            (include_bytes!("testdata/formats/palette.gif"), ImageFormat::Gif),
            (include_bytes!("testdata/formats/lossy.webp"), ImageFormat::WebP),
            (include_bytes!("testdata/formats/lossless.webp"), ImageFormat::WebP),
            (include_bytes!("testdata/formats/lossy-alpha.webp"), ImageFormat::WebP),
            (include_bytes!("testdata/formats/os2.bmp"), ImageFormat::Bmp),
            (include_bytes!("testdata/formats/rgb24.bmp"), ImageFormat::Bmp),
            (include_bytes!("testdata/formats/rgb8.tif"), ImageFormat::Tiff),
            (include_bytes!("testdata/formats/rgb8-tiles.tif"), ImageFormat::Tiff),
        ];
        for (bytes, format) in cases {
            assert_eq!(ImageFormat::sniff(bytes), Some(format));
        }
        // Base64 text may start with `BM`; without a DIB header size behind it, it is no BMP.
        assert_eq!(ImageFormat::sniff(b"BMaGVsbG8gd29ybGQ="), None);
    }

    /// Every format's test inputs cut short at many lengths and with bytes overwritten: each decode ends in
    /// an image or an error, never a panic.
    #[test]
    fn damaged_files_of_every_format_are_errors_not_panics() {
        let inputs: [&[u8]; 9] = [
            include_bytes!("testdata/formats/offset-transparent.gif"),
            include_bytes!("testdata/formats/palette.gif"),
            include_bytes!("testdata/formats/lossy-alpha.webp"),
            include_bytes!("testdata/formats/animated-alpha.webp"),
            include_bytes!("testdata/formats/rle4.bmp"),
            include_bytes!("testdata/formats/rle8.bmp"),
            include_bytes!("testdata/formats/rgb565.bmp"),
            include_bytes!("testdata/formats/rgb8-tiles.tif"),
            include_bytes!("testdata/formats/orient-5-raw-profile.png"),
        ];
        let limits = ImageLimits { max_pixels: 1 << 16, ..ImageLimits::default() };
        for input in inputs {
            for length in (0..input.len()).step_by(5) {
                let _ = decode_rgb8(&input[..length], &limits, Decoder::Pillow, true, true);
            }
            for position in (0..input.len()).step_by(3) {
                for value in [0x00, 0x7F, 0xFF] {
                    let mut damaged = input.to_vec();
                    damaged[position] = value;
                    let _ = decode_rgb8(&damaged, &limits, Decoder::Pillow, true, true);
                }
            }
        }
    }

    /// `bytes` with `patch` written at `offset`.
    fn patched(bytes: &[u8], offset: usize, patch: &[u8]) -> Vec<u8> {
        let mut patched = bytes.to_vec();
        patched[offset..offset + patch.len()].copy_from_slice(patch);
        patched
    }

    /// Headers declaring more pixels than the limit, in each format: refused from the header alone (a
    /// decode would allocate gigabytes first).
    #[test]
    fn headers_declaring_too_many_pixels_are_refused_in_every_format() {
        let gif = include_bytes!("testdata/formats/offset.gif");
        let tiff = include_bytes!("testdata/formats/rgb8.tif");
        // The first IFD entry is ImageWidth (LONG), the second ImageLength; values 8 bytes into each.
        let entries = u32::from_le_bytes([tiff[4], tiff[5], tiff[6], tiff[7]]) as usize + 2;
        let cases = [
            ("GIF screen", patched(gif, 6, &[0xFF; 4]), (65535, 65535)),
            // A 9x5 frame at (3, 2) of a 13x9 screen (after 13 header bytes and a 16-colour palette),
            // grown to 65535x65535: Pillow's canvas grows to hold it.
            ("GIF frame", patched(gif, 13 + 48 + 5, &[0xFF; 4]), (65538, 65537)),
            (
                "BMP",
                patched(
                    include_bytes!("testdata/formats/rgb24.bmp"),
                    18,
                    &[0xFF, 0xFF, 0, 0, 0xFF, 0xFF, 0, 0],
                ),
                (65535, 65535),
            ),
            // Only the width: the strip count follows the height, and a mismatch is refused as corrupt.
            ("TIFF", patched(tiff, entries + 8, &[0xFF; 4]), (u32::MAX, 9)),
            // VP8L: 14 bits of width - 1, then 14 of height - 1, after the 0x2F signature byte. (image-webp
            // reads 16384, the largest side, as 0.)
            (
                "WebP lossless",
                patched(include_bytes!("testdata/formats/lossless.webp"), 21, &[0xFE, 0xBF, 0xFF, 0x0F]),
                (16383, 16383),
            ),
            // VP8X: 24 bits each of canvas width - 1 and height - 1 (image-webp itself refuses 2^24).
            (
                "WebP extended",
                patched(
                    include_bytes!("testdata/formats/lossy-alpha.webp"),
                    24,
                    &[0x1F, 0x4E, 0, 0x1F, 0x4E, 0],
                ),
                (20000, 20000),
            ),
        ];
        for (name, bytes, (width, height)) in cases {
            let declared = match pillow(&bytes) {
                Err(InstanceError::TooManyPixels { width, height, .. }) => Ok((width, height)),
                other => Err(other),
            };
            assert_eq!(declared, Ok((width, height)), "{name}");
        }
    }
}
