//! BMP, read as Pillow 13's `BmpImagePlugin` reads it, then `convert("RGB")`.
//!
//! Why not `image`'s BMP decoder: it expands 5- and 6-bit channels with rounding where Pillow truncates
//! (`v * 255 / 31`), paints RLE gaps black where Pillow leaves palette index 0, and accepts bitfield
//! layouts and palette sizes Pillow refuses. BMP is simple enough that mirroring Pillow's reader is less
//! code than correcting another one. What Pillow does, and so what this does:
//! - headers of 12 (OS/2), 40, 52, 56, 64, 108 and 124 bytes; 1, 4, 8, 16, 24 and 32 bits per pixel;
//!   uncompressed, RLE8, RLE4, and the bitfield layouts Pillow lists (`SUPPORTED` in the plugin);
//! - a palette whose entries are the grey ramp is ignored: 2 entries black and white make mode `1`
//!   (one bit per pixel, whatever the declared depth), more make mode `L` (one byte per pixel);
//! - otherwise indices past the palette are black; 16-bit channels scale as `v * 255 / 31` (or 63);
//!   the fourth byte of 32-bit pixels is dropped; rows are bottom-up unless the height is negative.

use ::image::RgbImage;

use super::decode::check_size;
use super::{ImageLimits, InstanceError};

const FORMAT: &str = "BMP";
/// File header: `BM`, file size, two reserved words, offset of the pixel data.
const FILE_HEADER: usize = 14;

/// Whether the DIB header size after a `BM` signature is one Pillow reads.
pub(super) fn known_header_size(bytes: &[u8]) -> bool {
    matches!(u32_at(bytes, FILE_HEADER), Some(12 | 40 | 52 | 56 | 64 | 108 | 124))
}

/// How pixel bytes become colours (Pillow's mode and raw mode).
#[derive(Debug, Clone, PartialEq)]
enum Layout {
    /// Mode `1`: one bit per pixel, 0 black and 1 white.
    Bilevel,
    /// Mode `L`: one byte per pixel, its own grey level.
    Gray,
    /// Mode `P`: `bits`-bit indices into `colours` (256 entries, black past the file's palette).
    Palette { bits: u8, colours: Box<[[u8; 3]; 256]> },
    /// `BGR;15` (`green_bits` 5) or `BGR;16` (`green_bits` 6): little-endian 16-bit words.
    Packed16 { green_bits: u8 },
    /// Byte offsets of red, green and blue within pixels of `bytes` bytes (`BGR`, `BGRX`, `XBGR`, ...).
    Bytes { bytes: usize, red: usize, green: usize, blue: usize },
}

/// Where the pixels are and how they are coded.
#[derive(Debug)]
struct Header {
    width: u32,
    height: u32,
    bottom_up: bool,
    bits: u16,
    /// `Some(rle4)` for RLE8 (`false`) or RLE4 (`true`) compressed data.
    rle: Option<bool>,
    layout: Layout,
    data_offset: usize,
}

/// Decodes a BMP into RGB8, checking its declared size against `limits` before allocating.
pub(super) fn decode_rgb8(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, InstanceError> {
    let header = read_header(bytes)?;
    check_size(header.width, header.height, limits)?;
    let data = bytes.get(header.data_offset..).ok_or(InstanceError::Truncated { format: FORMAT })?;
    let (width, height) = (header.width as usize, header.height as usize);
    let mut rgb = vec![0; width * height * 3];
    match header.rle {
        Some(rle4) => {
            let samples = decode_rle(data, header.data_offset, width, height, rle4)?;
            let bilevel = header.layout == Layout::Bilevel;
            // RLE output is one byte per pixel: indices for `P`, grey levels (raw mode `L`) otherwise,
            // which mode `1` then reads as black for 0 and white for anything else.
            let layout = match header.layout {
                Layout::Palette { colours, .. } => Layout::Palette { bits: 8, colours },
                _ => Layout::Gray,
            };
            for (row, line) in samples.chunks_exact(width).enumerate() {
                let target = if header.bottom_up { height - 1 - row } else { row };
                let out = &mut rgb[target * width * 3..(target + 1) * width * 3];
                unpack_row(line, &layout, out);
            }
            if bilevel {
                rgb.iter_mut().for_each(|sample| *sample = if *sample == 0 { 0 } else { 255 });
            }
        }
        None => {
            let stride = (width * usize::from(header.bits)).div_ceil(32) * 4;
            let row_bytes = (width * usize::from(header.bits)).div_ceil(8);
            // Pillow reads whole rows; the last row's padding may be missing.
            if data.len() < (height - 1) * stride + row_bytes {
                return Err(InstanceError::Truncated { format: FORMAT });
            }
            for row in 0..height {
                let line = &data[row * stride..row * stride + row_bytes];
                let target = if header.bottom_up { height - 1 - row } else { row };
                unpack_row(line, &header.layout, &mut rgb[target * width * 3..(target + 1) * width * 3]);
            }
        }
    }
    Ok(RgbImage::from_raw(header.width, header.height, rgb).expect("width * height pixels"))
}

/// Reads the file header, the DIB header, bitfield masks and palette (`BmpImageFile._bitmap`).
fn read_header(bytes: &[u8]) -> Result<Header, InstanceError> {
    let truncated = || InstanceError::Truncated { format: FORMAT };
    let mut data_offset = u32_at(bytes, 10).ok_or_else(truncated)? as usize;
    if !known_header_size(bytes) {
        let size = u32_at(bytes, FILE_HEADER).ok_or_else(truncated)?;
        return Err(InstanceError::UnsupportedEncoding {
            format: FORMAT,
            detail: format!("a {size}-byte header"),
        });
    }
    let header_size = u32_at(bytes, FILE_HEADER).ok_or_else(truncated)? as usize;
    let info = bytes.get(FILE_HEADER + 4..FILE_HEADER + header_size).ok_or_else(truncated)?;
    let u16_in = |offset| u16_at(info, offset).ok_or_else(truncated);
    let u32_in = |offset| u32_at(info, offset).ok_or_else(truncated);
    let mut position = FILE_HEADER + header_size;

    let (width, height, bottom_up, bits, compression, mut colours_used, entry_size, mut masks);
    if header_size == 12 {
        (width, height) = (u32::from(u16_in(0)?), u32::from(u16_in(2)?));
        (bottom_up, bits, compression, colours_used, entry_size, masks) = (true, u16_in(6)?, 0, 0, 3, None);
    } else {
        // A height whose top byte is 0xFF is negative: the rows are stored top-down.
        let flipped = info[7] == 0xFF;
        (width, bottom_up, bits) = (u32_in(0)?, !flipped, u16_in(10)?);
        height = if flipped { u32_in(4)?.wrapping_neg() } else { u32_in(4)? };
        (compression, colours_used, entry_size, masks) = (u32_in(12)?, u32_in(28)?, 4, None);
        if compression == 3 {
            masks = Some(if info.len() >= 48 {
                let alpha = if info.len() >= 52 { u32_in(48)? } else { 0 };
                [u32_in(36)?, u32_in(40)?, u32_in(44)?, alpha]
            } else {
                // 40-byte headers keep the three masks right after the header.
                let mask = |index: usize| u32_at(bytes, position + 4 * index).ok_or_else(truncated);
                let read = [mask(0)?, mask(1)?, mask(2)?, 0];
                position += 12;
                read
            });
        }
    }
    if colours_used == 0 {
        colours_used = 1_u32.checked_shl(u32::from(bits)).unwrap_or(0);
    }
    if data_offset == FILE_HEADER + header_size && bits <= 8 {
        data_offset += entry_size * colours_used as usize;
    }
    if data_offset == 0 {
        data_offset = position;
    }

    let unsupported = |detail: String| InstanceError::UnsupportedEncoding { format: FORMAT, detail };
    let (rle, bitfields) = match compression {
        0 => (None, None),
        1 if bits == 8 => (Some(false), None),
        2 if bits == 4 => (Some(true), None),
        1 | 2 => return Err(unsupported(format!("RLE{} with {bits} bits per pixel", 12 - 4 * compression))),
        3 => (None, masks),
        4 => return Err(unsupported("JPEG compression".into())),
        5 => return Err(unsupported("PNG compression".into())),
        other => return Err(unsupported(format!("compression {other}"))),
    };
    let layout = match (bits, bitfields) {
        (1 | 4 | 8, None) => {
            if !(1..=65536).contains(&colours_used) {
                return Err(unsupported(format!("a palette of {colours_used} colours")));
            }
            // Pillow reads `colours_used` entries from here, taking what there is: with no colour count in
            // the header that is 256 entries, often running into the pixel data.
            let end = bytes.len().min(position + entry_size * colours_used as usize);
            let palette = bytes.get(position..end).ok_or_else(truncated)?;
            let layout = palette_layout(palette, colours_used as usize, entry_size, bits as u8);
            if layout == Layout::Gray && bits < 8 && rle.is_none() {
                // Pillow's raw decoder refuses a row of one byte per pixel longer than the stored row.
                return Err(unsupported(format!("a grey-ramp palette at {bits} bits per pixel")));
            }
            layout
        }
        (16, None) => Layout::Packed16 { green_bits: 5 },
        (24, None) => Layout::Bytes { bytes: 3, red: 2, green: 1, blue: 0 },
        (32, None) => Layout::Bytes { bytes: 4, red: 2, green: 1, blue: 0 },
        (_, Some(masks)) => bitfields_layout(bits, masks).ok_or_else(|| {
            unsupported(format!(
                "bitfield masks {:#x}/{:#x}/{:#x}/{:#x} at {bits} bits per pixel",
                masks[0], masks[1], masks[2], masks[3]
            ))
        })?,
        (other, None) => {
            return Err(unsupported(format!("{other} bits per pixel (1, 4, 8, 16, 24 and 32 are decoded)")));
        }
    };
    Ok(Header { width, height, bottom_up, bits, rle, layout, data_offset })
}

/// Pillow's mode for a palette of `count` entries, of which `palette` holds what the file has: `1` or
/// `L` when it is the grey ramp (black and white for 2 entries), `P` otherwise. Entries are BGR or BGRX.
fn palette_layout(palette: &[u8], count: usize, entry_size: usize, bits: u8) -> Layout {
    let complete = palette.len() / entry_size == count;
    let grey = complete
        && palette.chunks_exact(entry_size).enumerate().all(|(index, entry)| {
            let level = if count == 2 { [0, 255][index] } else { index as u8 };
            entry[..3] == [level; 3]
        });
    match (grey, count) {
        (true, ..=2) => Layout::Bilevel,
        (true, _) => Layout::Gray,
        (false, _) => {
            let mut colours = Box::new([[0; 3]; 256]);
            for (colour, entry) in colours.iter_mut().zip(palette.chunks_exact(entry_size)) {
                *colour = [entry[2], entry[1], entry[0]];
            }
            Layout::Palette { bits, colours }
        }
    }
}

/// The raw mode of a `BI_BITFIELDS` image, for the masks Pillow supports (its `MASK_MODES`).
fn bitfields_layout(bits: u16, [red, green, blue, alpha]: [u32; 4]) -> Option<Layout> {
    let byte = |mask: u32| mask.trailing_zeros() as usize / 8;
    match (bits, red, green, blue, alpha) {
        (32, 0, 0, 0, 0) => Some(Layout::Bytes { bytes: 4, red: 2, green: 1, blue: 0 }),
        (32, ..) => {
            let supported = [
                [0xFF_0000, 0xFF00, 0xFF, 0x0],
                [0xFF00_0000, 0xFF_0000, 0xFF00, 0x0],
                [0xFF00_0000, 0xFF00, 0xFF, 0x0],
                [0xFF00_0000, 0xFF_0000, 0xFF00, 0xFF],
                [0xFF, 0xFF00, 0xFF_0000, 0xFF00_0000],
                [0xFF_0000, 0xFF00, 0xFF, 0xFF00_0000],
                [0xFF00_0000, 0xFF00, 0xFF, 0xFF_0000],
            ];
            supported.contains(&[red, green, blue, alpha]).then(|| Layout::Bytes {
                bytes: 4,
                red: byte(red),
                green: byte(green),
                blue: byte(blue),
            })
        }
        (24, 0xFF_0000, 0xFF00, 0xFF, _) => Some(Layout::Bytes { bytes: 3, red: 2, green: 1, blue: 0 }),
        (16, 0xF800, 0x7E0, 0x1F, _) => Some(Layout::Packed16 { green_bits: 6 }),
        (16, 0x7C00, 0x3E0, 0x1F, _) => Some(Layout::Packed16 { green_bits: 5 }),
        _ => None,
    }
}

/// Turns one stored row into RGB (`out` is `width * 3` bytes), as Pillow's unpacker for `layout` and
/// then `convert("RGB")` do.
fn unpack_row(line: &[u8], layout: &Layout, out: &mut [u8]) {
    let pixels = out.chunks_exact_mut(3);
    match layout {
        Layout::Bilevel => {
            for (index, pixel) in pixels.enumerate() {
                let bit = line[index / 8] >> (7 - index % 8) & 1;
                pixel.fill(if bit == 1 { 255 } else { 0 });
            }
        }
        Layout::Gray => pixels.zip(line).for_each(|(pixel, &level)| pixel.fill(level)),
        Layout::Palette { bits, colours } => {
            let per_byte = 8 / usize::from(*bits);
            let mask = (1_u16 << bits) - 1;
            for (index, pixel) in pixels.enumerate() {
                let shift = 8 - usize::from(*bits) * (index % per_byte + 1);
                let colour = (u16::from(line[index / per_byte]) >> shift) & mask;
                pixel.copy_from_slice(&colours[usize::from(colour)]);
            }
        }
        Layout::Packed16 { green_bits } => {
            let green_max = (1_u32 << green_bits) - 1;
            for (pixel, word) in pixels.zip(line.chunks_exact(2)) {
                let word = u32::from(u16::from_le_bytes([word[0], word[1]]));
                let blue = word & 31;
                let green = (word >> 5) & green_max;
                let red = (word >> (5 + green_bits)) & 31;
                pixel.copy_from_slice(
                    &[red * 255 / 31, green * 255 / green_max, blue * 255 / 31].map(|c| c as u8),
                );
            }
        }
        Layout::Bytes { bytes, red, green, blue } => {
            for (pixel, stored) in pixels.zip(line.chunks_exact(*bytes)) {
                pixel.copy_from_slice(&[stored[*red], stored[*green], stored[*blue]]);
            }
        }
    }
}

/// Pillow's `BmpRleDecoder`, step for step: one byte per pixel, rows in file order; gaps left by
/// end-of-line and delta codes are 0. `file_offset` is where `data` starts in the file: absolute-mode
/// runs are padded to an even file position.
fn decode_rle(
    data: &[u8],
    file_offset: usize,
    width: usize,
    height: usize,
    rle4: bool,
) -> Result<Vec<u8>, InstanceError> {
    let length = width * height;
    let mut out = Vec::with_capacity(length);
    let (mut position, mut x) = (0, 0);
    while out.len() < length {
        let (Some(&count), Some(&value)) = (data.get(position), data.get(position + 1)) else {
            break;
        };
        position += 2;
        if count > 0 {
            let count = usize::from(count).min(width.saturating_sub(x));
            let pair = if rle4 { [value >> 4, value & 15] } else { [value; 2] };
            out.extend((0..count).map(|index| pair[index % 2]));
            x += count;
        } else if value == 0 {
            out.resize(out.len().next_multiple_of(width), 0);
            x = 0;
        } else if value == 1 {
            break;
        } else if value == 2 {
            let Some(&[right, up]) =
                data.get(position..position + 2).and_then(|d| <&[u8; 2]>::try_from(d).ok())
            else {
                break;
            };
            position += 2;
            let skip = (usize::from(right) + usize::from(up) * width).min(length - out.len());
            out.resize(out.len() + skip, 0);
            x = out.len() % width;
        } else {
            let count = (length - out.len()).min(usize::from(value));
            let wanted = if rle4 { count.div_ceil(2) } else { count };
            let stored = &data[position.min(data.len())..(position + wanted).min(data.len())];
            position += stored.len();
            if rle4 {
                for (index, &byte) in stored.iter().enumerate() {
                    out.push(byte >> 4);
                    if index * 2 + 1 < count {
                        out.push(byte & 15);
                    }
                }
            } else {
                out.extend_from_slice(stored);
            }
            if stored.len() < wanted || out.len() == length {
                break;
            }
            x += usize::from(value);
            if !(file_offset + position).is_multiple_of(2) {
                position += 1;
            }
        }
    }
    if out.len() < length {
        // Pillow: "not enough image data".
        return Err(InstanceError::Truncated { format: FORMAT });
    }
    out.truncate(length);
    Ok(out)
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(offset..offset + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(offset..offset + 4)?.try_into().ok()?))
}
