//! From JPEG or PNG bytes to RGB8 pixels, refusing oversized images before any pixel is allocated.
//!
//! The model was evaluated on Pillow's `Image.open(...).convert("RGB")`, so that is the contract:
//! grayscale is replicated into three channels, alpha is dropped without compositing, palettes are
//! looked up, 16-bit PNG samples keep their high byte, and CMYK JPEGs are read with Adobe's inverted
//! polarity. Like Pillow's `convert` (and TensorFlow's `decode_jpeg`), the EXIF orientation is not
//! applied and colour profiles are ignored.

use std::io::{Cursor, ErrorKind};

use ::image::codecs::png::PngDecoder;
use ::image::{DynamicImage, ImageBuffer, ImageDecoder, ImageError, Pixel, RgbImage};

use super::{ImageLimits, InstanceError, jpeg};

const JPEG_MAGIC: &[u8] = b"\xff\xd8\xff";
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The encodings kiln decodes, recognised by their leading bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ImageFormat {
    /// JPEG: starts with SOI and the first marker's `FF`.
    Jpeg,
    /// PNG: starts with the 8-byte PNG signature.
    Png,
}

impl ImageFormat {
    /// The format `bytes` claim to be by their signature, if it is one kiln decodes.
    pub(super) fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(JPEG_MAGIC) {
            Some(Self::Jpeg)
        } else if bytes.starts_with(PNG_MAGIC) {
            Some(Self::Png)
        } else {
            None
        }
    }
}

/// Decodes JPEG or PNG `bytes` into RGB8, checking the header's dimensions against `limits` first.
pub(super) fn decode_rgb8(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, InstanceError> {
    match ImageFormat::sniff(bytes) {
        Some(ImageFormat::Jpeg) => {
            let frame = jpeg::read_frame(bytes)?;
            check_size(frame.width, frame.height, limits)?;
            jpeg::decode_rgb8(bytes, frame)
        }
        Some(ImageFormat::Png) => decode_png(bytes, limits),
        None => Err(unsupported_format(bytes)),
    }
}

/// Refuses a zero-sized image and one above [`ImageLimits::max_pixels`].
fn check_size(width: u32, height: u32, limits: &ImageLimits) -> Result<(), InstanceError> {
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
fn decode_png(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, InstanceError> {
    let decoder = PngDecoder::new(Cursor::new(bytes)).map_err(png_error)?;
    let (width, height) = decoder.dimensions();
    check_size(width, height, limits)?;
    let image = DynamicImage::from_decoder(decoder).map_err(png_error)?;
    Ok(into_rgb8(image))
}

/// Pillow's `convert("RGB")` of what Pillow would have opened.
fn into_rgb8(image: DynamicImage) -> RgbImage {
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        // Pillow opens 16-bit PNGs with raw modes that keep the high byte of each sample (`RGB;16B`);
        // `image`'s own conversion rounds instead, one level off in half the pixels. Pillow opens 16-bit
        // grayscale as `I;16` and clips it to 255 on `convert`, a quirk not copied: the high byte is kept,
        // as for every other 16-bit PNG.
        DynamicImage::ImageLuma16(luma) => DynamicImage::ImageLuma8(high_bytes(&luma)).into_rgb8(),
        DynamicImage::ImageLumaA16(luma) => DynamicImage::ImageLumaA8(high_bytes(&luma)).into_rgb8(),
        DynamicImage::ImageRgb16(rgb) => high_bytes(&rgb),
        DynamicImage::ImageRgba16(rgba) => DynamicImage::ImageRgba8(high_bytes(&rgba)).into_rgb8(),
        // Gray is replicated and alpha dropped: exactly Pillow's `L`, `LA` and `RGBA` to `RGB`.
        other => other.into_rgb8(),
    }
}

/// The same image with every 16-bit sample reduced to its high byte.
fn high_bytes<P, Q>(image: &ImageBuffer<P, Vec<u16>>) -> ImageBuffer<Q, Vec<u8>>
where
    P: Pixel<Subpixel = u16>,
    Q: Pixel<Subpixel = u8>,
{
    let samples = image.as_raw().iter().map(|&sample| sample.to_be_bytes()[0]).collect();
    ImageBuffer::from_raw(image.width(), image.height(), samples)
        .expect("same dimensions and channel count as the source buffer")
}

/// The error for bytes that are no JPEG or PNG, naming the format when `image` recognises it.
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

fn png_error(error: ImageError) -> InstanceError {
    const FORMAT: &str = "PNG";
    match error {
        ImageError::IoError(io) if io.kind() == ErrorKind::UnexpectedEof => {
            InstanceError::Truncated { format: FORMAT }
        }
        ImageError::Unsupported(unsupported) => {
            InstanceError::UnsupportedEncoding { format: FORMAT, detail: unsupported.to_string() }
        }
        ImageError::Decoding(decoding) => {
            let detail = std::error::Error::source(&decoding)
                .map_or_else(|| decoding.to_string(), ToString::to_string);
            InstanceError::Corrupt { format: FORMAT, detail }
        }
        other => InstanceError::Corrupt { format: FORMAT, detail: other.to_string() },
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

    const GRAY_JPEG: &[u8] = include_bytes!("testdata/gray.jpg");
    const RGB_PNG: &[u8] = include_bytes!("testdata/rgb.png");

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
        for (name, encoded, pillow) in cases {
            let decoded = decode_rgb8(encoded, &ImageLimits::default())?;
            let differing =
                decoded.as_raw().iter().zip(pillow).filter(|(ours, theirs)| ours != theirs).count();
            assert_eq!(decoded.as_raw().len(), pillow.len(), "{name}: size");
            assert_eq!(differing, 0, "{name}: {differing} of {} samples differ from Pillow", pillow.len());
        }
        Ok(())
    }

    #[test]
    fn a_one_pixel_image_decodes_to_one_pixel() -> TestResult {
        for (name, encoded, pillow) in [case!("1x1.jpg"), case!("1x1.png")] {
            let decoded = decode_rgb8(encoded, &ImageLimits::default())?;
            assert_eq!((decoded.dimensions(), decoded.as_raw().as_slice()), ((1, 1), pillow), "{name}");
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
        let error = decode_rgb8(&jpeg_declaring(65535, 65535), &ImageLimits::default()).err();
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
            decode_rgb8(GRAY_JPEG, &limits).err(),
            Some(InstanceError::TooManyPixels { width: 24, height: 16, pixels: 384, limit: 383 })
        );
        assert_eq!(
            decode_rgb8(RGB_PNG, &limits).err(),
            Some(InstanceError::TooManyPixels { width: 24, height: 16, pixels: 384, limit: 383 })
        );
    }

    #[test]
    fn a_zero_sized_jpeg_is_refused() {
        assert_eq!(
            decode_rgb8(&jpeg_declaring(24, 0), &ImageLimits::default()).err(),
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

    #[test]
    fn a_png_declaring_65535_squared_pixels_is_refused_from_its_header() {
        let mut png = RGB_PNG.to_vec();
        // Signature (8), IHDR length (4) and type (4), then width and height; the CRC covers type and data.
        png[16..20].copy_from_slice(&65535_u32.to_be_bytes());
        png[20..24].copy_from_slice(&65535_u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            decode_rgb8(&png, &ImageLimits::default()).err(),
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
            let error = decode_rgb8(truncated, &ImageLimits::default()).err();
            assert!(matches!(error, Some(InstanceError::Truncated { .. })), "{name}: {error:?}");
        }
    }

    #[test]
    fn a_damaged_huffman_table_is_a_corrupt_jpeg_with_libjpegs_reason() {
        let mut jpeg = GRAY_JPEG.to_vec();
        let table = jpeg.windows(2).position(|marker| marker == [0xFF, 0xC4]).expect("a DHT segment");
        // The 16 code-length counts after the table class byte: all 0xFF claims 4080 codes.
        jpeg[table + 5..table + 21].fill(0xFF);
        let error = decode_rgb8(&jpeg, &ImageLimits::default()).err();
        assert!(
            matches!(&error, Some(InstanceError::Corrupt { format: "JPEG", detail }) if detail.contains("Huffman")),
            "{error:?}"
        );
    }

    #[test]
    fn garbage_after_a_jpeg_signature_is_corrupt() {
        let error =
            decode_rgb8(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 then no markers at all", &ImageLimits::default());
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
            let error = decode_rgb8(&jpeg, &ImageLimits::default()).err();
            assert!(
                matches!(&error, Some(InstanceError::UnsupportedEncoding { detail, .. }) if detail.contains(expected)),
                "{error:?}"
            );
        }
    }
}
