//! JPEG: a pure-Rust walk over the file's markers, then libjpeg-turbo's decoder (as built by `mozjpeg`).
//!
//! Why libjpeg: the reference the model is checked against comes from Pillow, which decodes with
//! libjpeg-turbo (islow IDCT, fancy chroma upsampling). The pure-Rust decoders round their IDCT and
//! upsample chroma differently: zune-jpeg (the `image` crate's) is up to 4 levels off on 4:2:0 files, and
//! a model with ImageNet statistics and a 1/127.5 rescale turns one level into 0.035 normalized units.
//! libjpeg's output equals Pillow's byte for byte on baseline, progressive, 4:2:0/4:2:2/4:4:4, grayscale
//! and CMYK files.
//!
//! [`Decoder::Tensorflow`] is `tf.io.decode_jpeg(..., channels=3)` with its defaults (TensorFlow 2.21,
//! `jpeg_mem.cc`): the fast integer IDCT (`JDCT_IFAST`), which moves samples by several levels from the
//! accurate one, fancy upsampling, no recovery of truncated files, and TensorFlow's own CMYK conversion.
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
use artifact::Decoder;
use mozjpeg::{ColorSpace, DctMethod, Decompress};

use super::InstanceError;

const FORMAT: &str = "JPEG";

/// The frame header (SOF) of a complete JPEG: what the decoder will produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Frame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels; zero when the file defers it to a DNL marker, which libjpeg does not support.
    pub height: u32,
    /// Colour components in the frame: 1 (grayscale), 3 (YCbCr or RGB) or 4 (CMYK or YCCK).
    pub components: u8,
    /// Whether the file has an Adobe APP14 segment (libjpeg's `saw_Adobe_marker`): TensorFlow then reads
    /// CMYK samples as inverted.
    pub adobe: bool,
}

/// Walks the markers of `bytes` (a JPEG starting with SOI) to its end-of-image marker and returns the
/// frame header. Reads no entropy-coded data and allocates nothing.
pub(super) fn read_frame(bytes: &[u8]) -> Result<Frame, InstanceError> {
    let truncated = || InstanceError::Truncated { format: FORMAT };
    let mut frame = None;
    let mut adobe = false;
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
                    .map(|frame| Frame { adobe, ..frame })
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
            // libjpeg's `examine_app14`: at least 12 bytes starting with "Adobe".
            0xEE if segment.len() >= 12 && segment.starts_with(b"Adobe") => adobe = true,
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
        components,
        adobe: false,
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

/// Decodes a JPEG whose `frame` [`read_frame`] returned into RGB8 as `decoder` does: grayscale is
/// replicated, CMYK converted as Pillow's `convert("RGB")` or as TensorFlow's `decode_jpeg` does. With
/// `reduction` 2, 4 or 8, libjpeg's scaled IDCT decodes `ceil(width / reduction)` x `ceil(height /
/// reduction)` pixels, as Pillow's `draft` asks it to (1 decodes every pixel).
pub(super) fn decode_rgb8(
    bytes: &[u8],
    frame: Frame,
    decoder: Decoder,
    reduction: u8,
) -> Result<RgbImage, InstanceError> {
    debug_assert!(matches!(reduction, 1 | 2 | 4 | 8));
    let dct_method = match decoder {
        Decoder::Pillow | Decoder::PillowDraft => DctMethod::IntegerSlow,
        Decoder::Tensorflow => {
            check_tensorflow_size(frame)?;
            DctMethod::IntegerFast
        }
    };
    // libjpeg reports fatal errors by unwinding out of the C code (mozjpeg's error manager), so a
    // corrupt file arrives here as a panic payload carrying libjpeg's message.
    let decoded = panic::catch_unwind(|| -> io::Result<(Vec<u8>, (usize, usize))> {
        let mut decompress = Decompress::new_mem(bytes)?;
        decompress.dct_method(dct_method);
        decompress.do_fancy_upsampling(true);
        if reduction > 1 {
            decompress.scale(8 / reduction);
        }
        let cmyk = matches!(decompress.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK);
        let mut started =
            if cmyk { decompress.to_colorspace(ColorSpace::JCS_CMYK)? } else { decompress.rgb()? };
        let size = (started.width(), started.height());
        let samples = started.read_scanlines::<u8>()?;
        started.finish()?;
        let pixels = match (cmyk, decoder) {
            (false, _) => samples,
            (true, Decoder::Pillow | Decoder::PillowDraft) => inverted_cmyk_to_rgb(&samples),
            (true, Decoder::Tensorflow) => tensorflow_cmyk_to_rgb(&samples, frame.adobe),
        };
        Ok((pixels, size))
    });
    let (pixels, (width, height)) = match decoded {
        Ok(Ok(decoded)) => decoded,
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
    let (width, height) =
        (u32::try_from(width).unwrap_or(u32::MAX), u32::try_from(height).unwrap_or(u32::MAX));
    RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| corrupt(format!("decoder returned {length} bytes for a {width}x{height} image")))
}

/// `decode_jpeg` refuses a frame of 2^29 samples or more (`jpeg_mem.cc`: width x height x components),
/// whatever the pixel limit allows.
fn check_tensorflow_size(frame: Frame) -> Result<(), InstanceError> {
    let samples = u64::from(frame.width) * u64::from(frame.height) * u64::from(frame.components);
    if samples >= 1 << 29 {
        return Err(InstanceError::UnsupportedEncoding {
            format: FORMAT,
            detail: format!(
                "{}x{} with {} components is {samples} samples; tf.io.decode_jpeg refuses 2^29 or more",
                frame.width, frame.height, frame.components
            ),
        });
    }
    Ok(())
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

/// TensorFlow's reading of 4-channel JPEGs (`jpeg_mem.cc`), truncating: with an Adobe marker the
/// samples are inverted and `R = K * C / 255`; without, `R = (255 - K) * (255 - C) / 255`.
fn tensorflow_cmyk_to_rgb(samples: &[u8], adobe: bool) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(samples.len() / 4 * 3);
    for pixel in samples.chunks_exact(4) {
        let black = u32::from(pixel[3]);
        for &ink in &pixel[..3] {
            let ink = u32::from(ink);
            let level = if adobe { black * ink / 255 } else { (255 - black) * (255 - ink) / 255 };
            rgb.push(level as u8);
        }
    }
    rgb
}

/// `a * b / 255` rounded to nearest, exactly as Pillow's `MULDIV255` computes it.
pub(super) fn mul_div_255(a: i32, b: i32) -> i32 {
    let product = a * b + 128;
    ((product >> 8) + product) >> 8
}

fn corrupt(detail: String) -> InstanceError {
    InstanceError::Corrupt { format: FORMAT, detail }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use sha2::{Digest, Sha256};

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
    }

    fn decode(bytes: &[u8], decoder: Decoder) -> Result<RgbImage, InstanceError> {
        decode_rgb8(bytes, read_frame(bytes)?, decoder, 1)
    }

    /// Every fixture JPEG (4:2:0, 4:2:2, 4:4:4, progressive, grayscale, Adobe CMYK, 7x5 to 2400x2093)
    /// decodes to exactly what `tf.io.decode_jpeg(channels=3)` returned (`fixtures/generate_tf.py`):
    /// mozjpeg's C fast IDCT equals the SIMD one in TensorFlow's libjpeg-turbo 2.1.4.
    #[test]
    fn tensorflow_decoding_equals_tf_io_decode_jpeg() -> TestResult {
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference/tf/decode.json"))?)?;
        let images = index["images"].as_array().ok_or("decode.json has no images")?;
        assert!(images.len() >= 17, "{} images in decode.json", images.len());
        let mut failures = Vec::new();
        for image in images {
            let name = image["image"].as_str().ok_or("image without a name")?;
            let decoded = decode(&std::fs::read(fixtures().join(name))?, Decoder::Tensorflow)?;
            let size = (u64::from(decoded.width()), u64::from(decoded.height()));
            assert_eq!(Some(size), image["width"].as_u64().zip(image["height"].as_u64()), "{name}");
            if let Some(file) = image["decoded_file"].as_str() {
                let expected = std::fs::read(fixtures().join(file))?;
                let diffs: Vec<u8> = decoded
                    .as_raw()
                    .iter()
                    .zip(&expected)
                    .map(|(ours, theirs)| ours.abs_diff(*theirs))
                    .collect();
                let max = diffs.iter().copied().max().unwrap_or(0);
                let differing = diffs.iter().filter(|&&diff| diff > 0).count();
                println!("{name}: max |diff| {max}, {differing} of {} samples differ", diffs.len());
                if max > 0 {
                    failures.push(format!("{name}: max |diff| {max} ({differing} samples differ)"));
                }
            }
            let digest: String =
                Sha256::digest(decoded.as_raw()).iter().map(|byte| format!("{byte:02x}")).collect();
            if image["decoded_sha256"].as_str() != Some(digest.as_str()) {
                failures.push(format!("{name}: sha256 {digest} differs from TensorFlow's"));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
        Ok(())
    }

    #[test]
    fn the_fast_idct_is_used_only_for_tensorflow() -> TestResult {
        let bytes = std::fs::read(fixtures().join("images/chelsea.jpg"))?;
        let pillow = decode(&bytes, Decoder::Pillow)?;
        let tensorflow = decode(&bytes, Decoder::Tensorflow)?;
        let max = pillow.as_raw().iter().zip(tensorflow.as_raw()).map(|(a, b)| a.abs_diff(*b)).max();
        assert!(max.is_some_and(|max| max > 1), "islow and ifast differ by at most {max:?}");
        Ok(())
    }

    /// TensorFlow truncates where Pillow rounds (`10 * 13 / 255` is 0.51, `245 * 242 / 255` 232.5), and reads CMYK without an
    /// Adobe marker as not inverted.
    #[test]
    fn tensorflow_cmyk_truncates_and_follows_the_adobe_marker() {
        let cmyk = [13, 255, 0, 10, 242, 0, 255, 245];
        assert_eq!(tensorflow_cmyk_to_rgb(&cmyk, true), [0, 10, 0, 232, 0, 245]);
        assert_eq!(inverted_cmyk_to_rgb(&cmyk), [1, 10, 0, 233, 0, 245]);
        assert_eq!(tensorflow_cmyk_to_rgb(&cmyk, false), [232, 0, 245, 0, 10, 0]);
    }

    #[test]
    fn the_adobe_marker_is_found_and_changes_tensorflows_cmyk() -> TestResult {
        let adobe = include_bytes!("testdata/cmyk.jpg");
        let mut plain = adobe.to_vec();
        // The APP14 segment right after SOI, renamed APP13: libjpeg ignores it.
        assert_eq!(&plain[2..4], [0xFF, 0xEE]);
        plain[3] = 0xED;
        assert!(read_frame(adobe)?.adobe);
        assert!(!read_frame(&plain)?.adobe);
        assert_ne!(decode(adobe, Decoder::Tensorflow)?, decode(&plain, Decoder::Tensorflow)?);
        Ok(())
    }

    #[test]
    fn tensorflow_refuses_2_pow_29_samples() {
        let frame = Frame { width: 16384, height: 8192, components: 4, adobe: true };
        assert!(matches!(
            check_tensorflow_size(frame),
            Err(InstanceError::UnsupportedEncoding { format: "JPEG", .. })
        ));
        assert_eq!(check_tensorflow_size(Frame { width: 16383, ..frame }), Ok(()));
    }
}
