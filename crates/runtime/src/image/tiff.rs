//! TIFF: the first image of the file, as Pillow 13's `TiffImagePlugin` reads it, then `convert("RGB")`.
//!
//! The `tiff` crate reads the first IFD (no pixel allocation) and decodes strips or tiles (uncompressed,
//! LZW, deflate, PackBits, CCITT, with predictors); this module maps its raw samples the way Pillow's
//! raw modes (`OPEN_INFO` in the plugin) do: 1/2/4-bit grey scaled to 8 bits, `WhiteIsZero` inverted
//! except at 16 bits (Pillow's `I;16` ignores it), 16-bit grey clipped to 255, other 16-bit samples cut
//! to their high byte, associated alpha divided out (`RGBa`: `c * 255 / a`), CMYK through Pillow's
//! `cmyk2rgb`. Pillow also applies the Orientation tag (or an XMP `tiff:Orientation`) while loading a
//! TIFF, so [`decode_rgb8`] does too.
//!
//! Refused with a named reason: palette images (the `tiff` crate cannot read them), JPEG compression,
//! planar layout, reversed fill order, signed or floating-point samples, and colour spaces other than
//! grey, RGB and CMYK.

use std::io::{Cursor, ErrorKind};

use ::image::RgbImage;
use ::image::metadata::Orientation;
use tiff::TiffError;
use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::tags::Tag;

use super::decode::{check_size, clipped_gray};
use super::{ImageLimits, InstanceError, jpeg, orientation};

const FORMAT: &str = "TIFF";
const XML_PACKET: Tag = Tag::Unknown(700);

/// How Pillow reads the stored samples (its mode and raw mode), as far as `convert("RGB")` can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Grey at 1, 2, 4 or 8 bits, one sample per pixel (`1`, `L;2`, `L;4`, `L`, and their inverted forms).
    Gray { bits: u8 },
    /// 16-bit grey (`I;16`, `I;16B`): clipped to 255; `WhiteIsZero` is not applied.
    Gray16 { white_is_zero: bool },
    /// 8-bit grey plus one unassociated or unspecified extra sample (`LA`, `LX`).
    GrayExtra,
    /// RGB at 8 or 16 bits, possibly with extra samples; `associated` alpha first among them (`RGBa`).
    Rgb { wide: bool, associated: bool },
    /// CMYK at 8 or 16 bits, possibly with extra samples.
    Cmyk { wide: bool },
}

/// Decodes the first image of a TIFF into RGB8 and orients it, checking the first IFD's size against
/// `limits` before any strip or tile is read.
pub(super) fn decode_rgb8(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, InstanceError> {
    let mut decoder = Decoder::new(Cursor::new(bytes)).map_err(tiff_error)?;
    let (width, height) = decoder.dimensions().map_err(tiff_error)?;
    check_size(width, height, limits)?;
    let mode = read_mode(&mut decoder)?;
    let orientation = read_orientation(&mut decoder);
    // Samples are at most 2 bytes and pixels at most 6 samples (RGB plus three extras): this bounds the
    // decoded buffer by what the pixel limit allows, above the crate's 256 MiB default.
    let mut buffer_limits = Limits::default();
    buffer_limits.decoding_buffer_size =
        usize::try_from(limits.max_pixels.saturating_mul(12)).unwrap_or(usize::MAX);
    let mut decoder = decoder.with_limits(buffer_limits);
    let samples = decoder.read_image().map_err(tiff_error)?;
    let rgb = to_rgb(mode, samples, width, height)?;
    Ok(orientation::apply(rgb, orientation))
}

/// Pillow's reading of the first IFD's tags, or why this TIFF is refused.
fn read_mode(decoder: &mut Decoder<Cursor<&[u8]>>) -> Result<Mode, InstanceError> {
    let unsupported = |detail: String| InstanceError::UnsupportedEncoding { format: FORMAT, detail };
    let tag = |decoder: &mut Decoder<Cursor<&[u8]>>, tag: Tag, default: u16| -> Result<u16, InstanceError> {
        Ok(decoder.find_tag_unsigned(tag).map_err(tiff_error)?.unwrap_or(default))
    };
    let list = |decoder: &mut Decoder<Cursor<&[u8]>>, tag: Tag| -> Result<Vec<u16>, InstanceError> {
        Ok(decoder.find_tag_unsigned_vec(tag).map_err(tiff_error)?.unwrap_or_default())
    };
    let compression = tag(decoder, Tag::Compression, 1)?;
    if matches!(compression, 6 | 7) {
        return Err(unsupported("JPEG compression".into()));
    }
    if tag(decoder, Tag::PlanarConfiguration, 1)? != 1 {
        return Err(unsupported("planar sample layout".into()));
    }
    if tag(decoder, Tag::FillOrder, 1)? != 1 {
        return Err(unsupported("reversed bit fill order".into()));
    }
    if list(decoder, Tag::SampleFormat)?.iter().any(|&format| format != 1) {
        return Err(unsupported("signed or floating-point samples".into()));
    }
    let photometric = tag(decoder, Tag::PhotometricInterpretation, 1)?;
    let samples = usize::from(tag(decoder, Tag::SamplesPerPixel, 1)?);
    let bits = list(decoder, Tag::BitsPerSample)?;
    let bits = match bits.as_slice() {
        [] => 1,
        [first, rest @ ..] if rest.iter().all(|other| other == first) => *first,
        _ => return Err(unsupported(format!("mixed bits per sample {bits:?}"))),
    };
    let extras = list(decoder, Tag::ExtraSamples)?;
    let associated = extras.first() == Some(&1);
    match (photometric, samples, bits) {
        (0 | 1, 1, 1 | 2 | 4 | 8) => Ok(Mode::Gray { bits: bits as u8 }),
        (0 | 1, 1, 16) => Ok(Mode::Gray16 { white_is_zero: photometric == 0 }),
        // Pillow has no conversion from `La` (associated grey alpha) and no mode for an undeclared extra.
        (1, 2, 8) if matches!(extras.as_slice(), [0 | 2]) => Ok(Mode::GrayExtra),
        (2, 3..=6, 8 | 16) => Ok(Mode::Rgb { wide: bits == 16, associated }),
        (5, 4..=6, 8 | 16) => Ok(Mode::Cmyk { wide: bits == 16 }),
        (3, ..) => Err(unsupported("palette (colour-mapped) images".into())),
        (0 | 1 | 2 | 5, ..) => Err(unsupported(format!(
            "{samples} samples of {bits} bits for photometric interpretation {photometric}"
        ))),
        (other, ..) => {
            Err(unsupported(format!("photometric interpretation {other} (grey, RGB and CMYK are decoded)")))
        }
    }
}

/// The Orientation tag of the first IFD, or the XMP packet's `tiff:Orientation` when the tag is absent.
fn read_orientation(decoder: &mut Decoder<Cursor<&[u8]>>) -> Orientation {
    match decoder.find_tag(Tag::Orientation) {
        Ok(Some(value)) => value.into_u16().ok().and_then(orientation::from_exif_value),
        _ => decoder
            .find_tag(XML_PACKET)
            .ok()
            .flatten()
            .and_then(|packet| packet.into_u8_vec().ok())
            .and_then(|packet| orientation::from_xmp(&packet)),
    }
    .unwrap_or(Orientation::NoTransforms)
}

/// Pillow's unpacking of `samples` in `mode`, then `convert("RGB")`.
fn to_rgb(mode: Mode, samples: DecodingResult, width: u32, height: u32) -> Result<RgbImage, InstanceError> {
    let pixels = width as usize * height as usize;
    let rgb = match (mode, samples) {
        (Mode::Gray { bits }, DecodingResult::U8(packed)) => {
            let row_bytes = (width as usize * usize::from(bits)).div_ceil(8);
            let per_byte = 8 / usize::from(bits);
            let scale = 255 / ((1_u16 << bits) - 1) as u8;
            let mut rgb = Vec::with_capacity(pixels * 3);
            for row in packed.chunks_exact(row_bytes) {
                for index in 0..width as usize {
                    let shift = 8 - usize::from(bits) * (index % per_byte + 1);
                    let level = (row[index / per_byte] >> shift) & ((1_u16 << bits) - 1) as u8;
                    rgb.extend([level * scale; 3]);
                }
            }
            rgb
        }
        (Mode::Gray16 { white_is_zero }, DecodingResult::U16(mut levels)) => {
            if white_is_zero {
                // The crate inverts `WhiteIsZero`; Pillow's `I;16` keeps the stored value.
                levels.iter_mut().for_each(|level| *level = u16::MAX - *level);
            }
            clipped_gray(&levels, 1)
        }
        (Mode::GrayExtra, DecodingResult::U8(samples)) => {
            samples.chunks_exact(2).flat_map(|pixel| [pixel[0]; 3]).collect()
        }
        (Mode::Rgb { wide, associated }, samples) => {
            let bytes = high_bytes(samples, wide)?;
            // The crate keeps alpha and drops other extra samples, so count what it returned.
            let per_pixel = samples_per_pixel(&bytes, pixels, 3)?;
            let associated = associated && per_pixel > 3;
            bytes
                .chunks_exact(per_pixel)
                .flat_map(|pixel| {
                    let [red, green, blue] = [pixel[0], pixel[1], pixel[2]];
                    if associated { unpremultiply([red, green, blue], pixel[3]) } else { [red, green, blue] }
                })
                .collect()
        }
        (Mode::Cmyk { wide }, samples) => {
            let bytes = high_bytes(samples, wide)?;
            bytes
                .chunks_exact(samples_per_pixel(&bytes, pixels, 4)?)
                .flat_map(|pixel| cmyk_to_rgb([pixel[0], pixel[1], pixel[2], pixel[3]]))
                .collect()
        }
        (mode, other) => {
            return Err(corrupt(format!("decoded {} samples for {mode:?}", sample_type(&other))));
        }
    };
    let length = rgb.len();
    RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| corrupt(format!("decoded {} bytes of RGB for a {width}x{height} image", length)))
}

/// How many samples of `bytes` make one of `pixels` pixels: at least `least`, and a whole number.
fn samples_per_pixel(bytes: &[u8], pixels: usize, least: usize) -> Result<usize, InstanceError> {
    match bytes.len().checked_div(pixels) {
        Some(count) if count >= least && count * pixels == bytes.len() => Ok(count),
        _ => Err(corrupt(format!("decoded {} samples for {pixels} pixels", bytes.len()))),
    }
}

/// 8-bit samples as they are, 16-bit samples cut to their high byte (Pillow's `;16L`/`;16B` raw modes).
fn high_bytes(samples: DecodingResult, wide: bool) -> Result<Vec<u8>, InstanceError> {
    match (samples, wide) {
        (DecodingResult::U8(bytes), false) => Ok(bytes),
        (DecodingResult::U16(words), true) => Ok(words.iter().map(|word| word.to_be_bytes()[0]).collect()),
        (other, _) => Err(corrupt(format!("decoded unexpected {} samples", sample_type(&other)))),
    }
}

/// Pillow's `RGBa` unpacking: each colour times 255 over alpha, truncated and clipped; 0 where alpha is 0.
fn unpremultiply(rgb: [u8; 3], alpha: u8) -> [u8; 3] {
    match alpha {
        0 => [0; 3],
        255 => rgb,
        _ => rgb.map(|colour| (u32::from(colour) * 255 / u32::from(alpha)).min(255) as u8),
    }
}

/// Pillow's `cmyk2rgb`: `R = (255 - K) - (255 - K) * C / 255` with its rounding.
fn cmyk_to_rgb([cyan, magenta, yellow, black]: [u8; 4]) -> [u8; 3] {
    let not_black = 255 - i32::from(black);
    [cyan, magenta, yellow]
        .map(|ink| (not_black - jpeg::mul_div_255(i32::from(ink), not_black)).clamp(0, 255) as u8)
}

fn sample_type(samples: &DecodingResult) -> &'static str {
    match samples {
        DecodingResult::U8(_) => "8-bit",
        DecodingResult::U16(_) => "16-bit",
        _ => "wider or non-integer",
    }
}

fn tiff_error(error: TiffError) -> InstanceError {
    match error {
        TiffError::IoError(io) if io.kind() == ErrorKind::UnexpectedEof => {
            InstanceError::Truncated { format: FORMAT }
        }
        TiffError::UnsupportedError(unsupported) => {
            InstanceError::UnsupportedEncoding { format: FORMAT, detail: unsupported.to_string() }
        }
        other => corrupt(other.to_string()),
    }
}

fn corrupt(detail: String) -> InstanceError {
    InstanceError::Corrupt { format: FORMAT, detail }
}
