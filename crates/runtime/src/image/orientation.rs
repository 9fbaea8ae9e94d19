//! The EXIF orientation, found where Pillow 13's `Image.getexif` finds it and applied as
//! `ImageOps.exif_transpose` applies it (transformers' `load_image` calls that before `convert("RGB")`).
//!
//! Where Pillow looks, per container:
//! - JPEG: the first APP1 `Exif` segment, later ones appended; else the last APP1 XMP packet.
//! - PNG: the last `eXIf` chunk, before or after the image data, or a text chunk keyed `exif`, else a
//!   `Raw profile type exif` text chunk (hex, as ImageMagick writes it); else an `XML:com.adobe.xmp`
//!   text chunk.
//! - WebP (extended): the `EXIF` chunk, else the `XMP ` chunk.
//! - TIFF: the Orientation tag itself; Pillow applies it while loading, so the `tiff` module does.
//! - GIF and BMP carry none Pillow reads.
//!
//! The XMP fallback is Pillow's regular expression `tiff:Orientation(="|>)([0-9])`, used only when the
//! EXIF data has no usable Orientation entry. The eight orientations are pixel permutations, so applying
//! them with `image`'s `apply_orientation` is exact. An EXIF block that does not parse counts as no
//! orientation; Pillow would raise instead.

use ::image::metadata::Orientation;
use ::image::{DynamicImage, RgbImage};

use super::decode::ImageFormat;
use super::webp;

/// Largest text chunk inflated while looking for the orientation (Pillow's `MAX_TEXT_CHUNK` is 1 MiB).
const MAX_TEXT_CHUNK: usize = 1 << 20;

/// The orientation Pillow's `exif_transpose` would apply to an image of `format` stored in `bytes`.
pub(super) fn read(format: ImageFormat, bytes: &[u8]) -> Orientation {
    let Metadata { exif, xmp } = match format {
        ImageFormat::Jpeg => jpeg_metadata(bytes),
        ImageFormat::Png => png_metadata(bytes),
        ImageFormat::WebP => webp_metadata(bytes),
        // TIFF is oriented while decoding, as Pillow's TIFF plugin does; GIF and BMP have no EXIF.
        ImageFormat::Tiff | ImageFormat::Gif | ImageFormat::Bmp => Metadata::default(),
    };
    exif.and_then(|exif| from_exif(&exif))
        .or_else(|| xmp.and_then(|packet| from_xmp(&packet)))
        .unwrap_or(Orientation::NoTransforms)
}

/// `image` transposed by `orientation`.
pub(super) fn apply(image: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return image;
    }
    let mut image = DynamicImage::ImageRgb8(image);
    image.apply_orientation(orientation);
    image.into_rgb8()
}

/// The orientation an EXIF Orientation value names (1 to 8), `None` for any other value.
pub(super) fn from_exif_value(value: u16) -> Option<Orientation> {
    u8::try_from(value).ok().and_then(Orientation::from_exif)
}

/// The orientation in an XMP packet, as Pillow's `getexif` reads it: the first `tiff:Orientation`
/// followed by `="` or `>` and a digit.
pub(super) fn from_xmp(packet: &[u8]) -> Option<Orientation> {
    const NAME: &[u8] = b"tiff:Orientation";
    packet.windows(NAME.len()).enumerate().filter(|(_, window)| *window == NAME).find_map(|(start, _)| {
        let rest = &packet[start + NAME.len()..];
        let digit = match rest {
            [b'=', b'"', digit, ..] | [b'>', digit, ..] if digit.is_ascii_digit() => *digit,
            _ => return None,
        };
        // A match with a digit Pillow maps to no transposition still ends the search.
        Some(from_exif_value(u16::from(digit - b'0')))
    })?
}

/// The orientation in an EXIF block (a TIFF header and IFD0, after one or two `Exif\0\0` prefixes).
fn from_exif(exif: &[u8]) -> Option<Orientation> {
    let mut tiff = exif;
    for _ in 0..2 {
        tiff = tiff.strip_prefix(b"Exif\0\0").unwrap_or(tiff);
    }
    Orientation::from_exif_chunk(tiff)
}

/// The EXIF block and XMP packet of a file, as Pillow's plugin for its format collects them.
#[derive(Debug, Default)]
struct Metadata {
    exif: Option<Vec<u8>>,
    xmp: Option<Vec<u8>>,
}

/// APPn segments up to the first scan.
fn jpeg_metadata(bytes: &[u8]) -> Metadata {
    const XMP: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
    let mut metadata = Metadata::default();
    let mut position = 2;
    while let [0xFF, ..] = bytes.get(position..).unwrap_or_default() {
        while bytes.get(position) == Some(&0xFF) {
            position += 1;
        }
        let Some(&marker) = bytes.get(position) else { break };
        position += 1;
        if matches!(marker, 0x01 | 0xD0..=0xD7) {
            continue;
        }
        if matches!(marker, 0xD9 | 0xDA) {
            break;
        }
        let Some(length) = bytes.get(position..position + 2) else { break };
        let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
        let Some(segment) = bytes.get(position + 2..position + length.max(2)) else { break };
        if marker == 0xE1 {
            if let Some(body) = segment.strip_prefix(b"Exif\0\0") {
                match &mut metadata.exif {
                    Some(exif) => exif.extend_from_slice(body),
                    None => metadata.exif = Some(segment.to_vec()),
                }
            } else if let Some(packet) = segment.strip_prefix(XMP) {
                metadata.xmp = Some(packet.to_vec());
            }
        }
        position += length.max(2);
    }
    metadata
}

/// Every chunk up to IEND: `eXIf`, and `tEXt`, `zTXt` and `iTXt` chunks with the keys Pillow uses.
fn png_metadata(bytes: &[u8]) -> Metadata {
    let mut exif = None;
    let mut raw_profile = None;
    let mut xmp = None;
    let mut position = 8;
    while let Some(header) = bytes.get(position..position + 8) {
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let Some(data) = bytes.get(position + 8..(position + 8).saturating_add(length)) else { break };
        match &header[4..] {
            b"IEND" => break,
            b"eXIf" => exif = Some(data.to_vec()),
            kind @ (b"tEXt" | b"zTXt" | b"iTXt") => {
                if let Some((key, text)) = png_text(kind, data) {
                    match key {
                        b"exif" if kind == b"tEXt" => exif = Some(text),
                        b"Raw profile type exif" => raw_profile = Some(text),
                        b"XML:com.adobe.xmp" => xmp = Some(text),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        position += 12 + length;
    }
    Metadata { exif: exif.or_else(|| raw_profile.and_then(|text| raw_profile_exif(&text))), xmp }
}

/// The key and text of a PNG text chunk, inflated where compressed.
fn png_text<'a>(kind: &[u8], data: &'a [u8]) -> Option<(&'a [u8], Vec<u8>)> {
    let split = data.iter().position(|&byte| byte == 0)?;
    let (key, rest) = (&data[..split], &data[split + 1..]);
    let text = match kind {
        b"tEXt" => rest.to_vec(),
        b"zTXt" => inflate(rest.strip_prefix(&[0])?)?,
        _ => {
            let [compressed, method, rest @ ..] = rest else { return None };
            // Language tag and translated keyword, each ending in a zero byte.
            let language_end = rest.iter().position(|&byte| byte == 0)?;
            let rest = &rest[language_end + 1..];
            let keyword_end = rest.iter().position(|&byte| byte == 0)?;
            let text = &rest[keyword_end + 1..];
            match (compressed, method) {
                (0, _) => text.to_vec(),
                (_, 0) => inflate(text)?,
                _ => return None,
            }
        }
    };
    Some((key, text))
}

fn inflate(compressed: &[u8]) -> Option<Vec<u8>> {
    fdeflate::decompress_to_vec_bounded(compressed, MAX_TEXT_CHUNK).ok()
}

/// The EXIF block in ImageMagick's `Raw profile type exif` text: a name line, a length line, then hex.
fn raw_profile_exif(text: &[u8]) -> Option<Vec<u8>> {
    let hex: Vec<u8> = text
        .split(|&byte| byte == b'\n')
        .skip(3)
        .flatten()
        .copied()
        .filter(|byte| !byte.is_ascii_whitespace())
        .collect();
    hex.chunks(2)
        .map(|pair| std::str::from_utf8(pair).ok().and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
}

/// The first `EXIF` and `XMP ` chunks of an extended (VP8X) WebP, as libwebp's demuxer returns them.
fn webp_metadata(bytes: &[u8]) -> Metadata {
    let mut metadata = Metadata::default();
    if bytes.get(12..16) != Some(b"VP8X") {
        return metadata;
    }
    for (kind, data) in webp::riff_chunks(bytes) {
        match kind {
            b"EXIF" if metadata.exif.is_none() => metadata.exif = Some(data.to_vec()),
            b"XMP " if metadata.xmp.is_none() => metadata.xmp = Some(data.to_vec()),
            _ => {}
        }
    }
    metadata
}
