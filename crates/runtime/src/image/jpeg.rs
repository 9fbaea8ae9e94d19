//! JPEG: a pure-Rust walk over the file's markers, then libjpeg-turbo's decoder (as built by `mozjpeg`).
//!
//! Why libjpeg: the reference the model is checked against comes from Pillow, which decodes with
//! libjpeg-turbo (islow IDCT, fancy chroma upsampling). The pure-Rust decoders round their IDCT and
//! upsample chroma differently: zune-jpeg (the `image` crate's) is up to 4 levels off on 4:2:0 files, and
//! a model with ImageNet statistics and a 1/127.5 rescale turns one level into 0.035 normalized units.
//! libjpeg's output equals Pillow's byte for byte on baseline, progressive, 4:2:0/4:2:2/4:4:4, grayscale
//! and CMYK files.
//!
//! Why walk the markers first: libjpeg pads a cut-off file with gray and only warns, while Pillow refuses
//! it as truncated; and the frame header's dimensions are checked against the limits, and unsupported
//! coding processes named, before the C decoder sees the bytes at all.
//!
//! libjpeg reports a fatal error by unwinding out of the C code, caught here: a binary built with
//! `panic = "abort"` would abort on a corrupt JPEG instead of returning an error for that instance.

use std::io;
use std::panic;

use ::image::RgbImage;
use mozjpeg::{ColorSpace, Decompress};

use super::InstanceError;

const FORMAT: &str = "JPEG";

/// The frame header (SOF) of a complete JPEG: what the decoder will produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Frame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels; zero when the file defers it to a DNL marker, which libjpeg does not support.
    pub height: u32,
}

/// Walks the markers of `bytes` (a JPEG starting with SOI) to its end-of-image marker and returns the
/// frame header. Reads no entropy-coded data and allocates nothing.
pub(super) fn read_frame(bytes: &[u8]) -> Result<Frame, InstanceError> {
    let truncated = || InstanceError::Truncated { format: FORMAT };
    let mut frame = None;
    let mut position = 2;
    loop {
        match bytes.get(position) {
            None => return Err(truncated()),
            Some(0xFF) => {}
            Some(&other) => {
                return Err(corrupt(format!("expected a marker at byte {position}, found {other:#04x}")));
            }
        }
        // A marker is 0xFF, optionally more 0xFF fill bytes, then the marker code.
        while bytes.get(position) == Some(&0xFF) {
            position += 1;
        }
        let marker = *bytes.get(position).ok_or_else(truncated)?;
        position += 1;
        match marker {
            0xD9 => {
                return frame
                    .ok_or_else(|| corrupt("no frame header (SOF) before the end of the image".into()));
            }
            // Standalone markers carry no length: TEM and restart markers.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let length = bytes.get(position..position + 2).ok_or_else(truncated)?;
        let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
        if length < 2 {
            return Err(corrupt(format!(
                "marker {marker:#04x} at byte {} has length {length}",
                position - 2
            )));
        }
        let segment = bytes.get(position + 2..position + length).ok_or_else(truncated)?;
        match marker {
            0xC0..=0xC2 if frame.is_none() => frame = Some(parse_frame(segment)?),
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return Err(unsupported_process(marker)),
            0xDA => {
                position = end_of_scan(bytes, position + length).ok_or_else(truncated)?;
                continue;
            }
            _ => {}
        }
        position += length;
    }
}

/// Reads the frame header segment (after its length): precision, height, width, component count.
fn parse_frame(segment: &[u8]) -> Result<Frame, InstanceError> {
    let [precision, h0, h1, w0, w1, components, ..] = *segment else {
        return Err(corrupt(format!("frame header of {} bytes is too short", segment.len())));
    };
    if precision != 8 {
        return Err(InstanceError::UnsupportedEncoding {
            format: FORMAT,
            detail: format!("{precision}-bit samples (only 8-bit JPEG is decoded)"),
        });
    }
    if !matches!(components, 1 | 3 | 4) {
        return Err(InstanceError::UnsupportedEncoding {
            format: FORMAT,
            detail: format!("{components} colour components (1, 3 or 4 are decoded)"),
        });
    }
    Ok(Frame {
        width: u32::from(u16::from_be_bytes([w0, w1])),
        height: u32::from(u16::from_be_bytes([h0, h1])),
    })
}

/// Offset of the first marker after the entropy-coded data that starts at `start`, if the data ends
/// before one. Inside the data a 0xFF byte is followed by a stuffed 0x00 or is a restart marker.
fn end_of_scan(bytes: &[u8], start: usize) -> Option<usize> {
    let data = bytes.get(start..)?;
    let mut offset = 0;
    loop {
        offset += data[offset..].iter().position(|&byte| byte == 0xFF)?;
        match data.get(offset + 1)? {
            0x00 | 0xD0..=0xD7 => offset += 2,
            _ => return Some(start + offset),
        }
    }
}

fn unsupported_process(marker: u8) -> InstanceError {
    let process = match marker {
        0xC3 => "lossless",
        0xC9..=0xCB => "arithmetic-coded",
        _ => "hierarchical",
    };
    InstanceError::UnsupportedEncoding {
        format: FORMAT,
        detail: format!("{process} JPEG (frame marker {marker:#04x}); baseline and progressive are decoded"),
    }
}

/// Decodes a JPEG whose `frame` [`read_frame`] returned into RGB8, converting grayscale and CMYK as
/// Pillow's `convert("RGB")` does.
pub(super) fn decode_rgb8(bytes: &[u8], frame: Frame) -> Result<RgbImage, InstanceError> {
    // libjpeg reports fatal errors by unwinding out of the C code (mozjpeg's error manager), so a
    // corrupt file arrives here as a panic payload carrying libjpeg's message.
    let decoded = panic::catch_unwind(|| -> io::Result<Vec<u8>> {
        let decompress = Decompress::new_mem(bytes)?;
        let cmyk = matches!(decompress.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK);
        let mut started =
            if cmyk { decompress.to_colorspace(ColorSpace::JCS_CMYK)? } else { decompress.rgb()? };
        let samples = started.read_scanlines::<u8>()?;
        started.finish()?;
        Ok(if cmyk { inverted_cmyk_to_rgb(&samples) } else { samples })
    });
    let pixels = match decoded {
        Ok(Ok(pixels)) => pixels,
        Ok(Err(error)) => return Err(corrupt(error.to_string())),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("libjpeg failed without a message");
            return Err(corrupt(message.trim_start_matches("libjpeg fatal error: ").to_owned()));
        }
    };
    let length = pixels.len();
    RgbImage::from_raw(frame.width, frame.height, pixels).ok_or_else(|| {
        corrupt(format!("decoder returned {length} bytes for a {}x{} frame", frame.width, frame.height))
    })
}

/// Pillow's reading of 4-channel JPEGs: samples are Adobe-inverted CMYK (`CMYK;I`, YCCK already turned
/// into CMYK by libjpeg), then `cmyk2rgb`: `R = (255 - K) - (255 - K) * C / 255` with Pillow's rounding.
fn inverted_cmyk_to_rgb(samples: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(samples.len() / 4 * 3);
    for pixel in samples.chunks_exact(4) {
        let not_black = i32::from(pixel[3]);
        for &stored in &pixel[..3] {
            let cyan = 255 - i32::from(stored);
            rgb.push((not_black - mul_div_255(cyan, not_black)).clamp(0, 255) as u8);
        }
    }
    rgb
}

/// `a * b / 255` rounded to nearest, exactly as Pillow's `MULDIV255` computes it.
fn mul_div_255(a: i32, b: i32) -> i32 {
    let product = a * b + 128;
    ((product >> 8) + product) >> 8
}

fn corrupt(detail: String) -> InstanceError {
    InstanceError::Corrupt { format: FORMAT, detail }
}
