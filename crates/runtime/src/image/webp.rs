//! WebP (lossy, lossless, extended, animated) through `image-webp`, alpha dropped.
//!
//! Pillow decodes every WebP with libwebp's `WebPAnimDecoder`, which for the first frame zero-fills the
//! canvas and decodes the frame into it without blending: the colour under a transparent pixel is the
//! stored colour, and canvas outside the first frame is black. `image-webp` decodes lossless data
//! exactly and lossy data with libwebp's fancy chroma upsampling (equal to Pillow on the test images);
//! its animation compositing blends the first frame too, so that frame is decoded here on its own.

use std::io::Cursor;

use ::image::RgbImage;
use image_webp::{DecodingError, WebPDecoder};

use super::decode::check_size;
use super::{ImageLimits, InstanceError};

const FORMAT: &str = "WebP";

/// Decodes a WebP (the first frame of an animation) into RGB8, checking the canvas size against
/// `limits` before allocating.
pub(super) fn decode_rgb8(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, InstanceError> {
    let decoder = WebPDecoder::new(Cursor::new(bytes)).map_err(webp_error)?;
    let (width, height) = decoder.dimensions();
    check_size(width, height, limits)?;
    if !decoder.is_animated() {
        return decode_still(decoder);
    }
    // `image-webp` composites animation frames with alpha blending, also the first: decode that frame
    // alone, as a still image, and place it on a black canvas as `WebPAnimDecoder` does.
    let frame = first_frame(bytes)?;
    let still = WebPDecoder::new(Cursor::new(&frame.still[..])).map_err(webp_error)?;
    let (frame_width, frame_height) = still.dimensions();
    if frame.left + frame_width > width || frame.top + frame_height > height {
        return Err(corrupt("the first frame reaches past the canvas".into()));
    }
    let image = decode_still(still)?;
    let mut canvas = RgbImage::new(width, height);
    ::image::imageops::replace(&mut canvas, &image, i64::from(frame.left), i64::from(frame.top));
    Ok(canvas)
}

/// A still (not animated) WebP's pixels, alpha dropped.
fn decode_still(mut decoder: WebPDecoder<Cursor<&[u8]>>) -> Result<RgbImage, InstanceError> {
    let (width, height) = decoder.dimensions();
    let size =
        decoder.output_buffer_size().ok_or_else(|| corrupt("the image does not fit in memory".into()))?;
    let mut samples = vec![0; size];
    decoder.read_image(&mut samples).map_err(webp_error)?;
    if decoder.has_alpha() {
        samples = samples.chunks_exact(4).flat_map(|pixel| [pixel[0], pixel[1], pixel[2]]).collect();
    }
    Ok(RgbImage::from_raw(width, height, samples).expect("width * height pixels"))
}

/// The first frame of an animation: its offset on the canvas, and its bitstream as a still WebP file.
struct Frame {
    left: u32,
    top: u32,
    still: Vec<u8>,
}

/// Finds the first `ANMF` chunk and rewraps its `ALPH`/`VP8 `/`VP8L` chunks as a WebP file of their own.
fn first_frame(bytes: &[u8]) -> Result<Frame, InstanceError> {
    let (_, anmf) = riff_chunks(bytes)
        .find(|(kind, _)| *kind == b"ANMF")
        .ok_or_else(|| corrupt("an animation without frames".into()))?;
    // Offsets (in units of 2 pixels) and size minus one, 24 bits each, then duration and flags.
    let field =
        |index: usize| anmf.get(3 * index..3 * index + 3).map(|b| u32::from_le_bytes([b[0], b[1], b[2], 0]));
    let (Some(left), Some(top), Some(width), Some(height), Some(data)) =
        (field(0), field(1), field(2), field(3), anmf.get(16..))
    else {
        return Err(InstanceError::Truncated { format: FORMAT });
    };
    let mut alpha = None;
    let mut bitstream = None;
    for (kind, chunk) in chunks(data) {
        match kind {
            b"ALPH" if alpha.is_none() => alpha = Some(chunk),
            b"VP8 " | b"VP8L" => {
                bitstream = Some((kind, chunk));
                break;
            }
            _ => {}
        }
    }
    let (kind, chunk) = bitstream.ok_or_else(|| corrupt("the first frame has no image data".into()))?;
    let mut body = b"WEBP".to_vec();
    if let (Some(alpha), b"VP8 ") = (alpha, kind) {
        // Lossy with alpha needs the extended layout: a VP8X header with the alpha flag.
        let mut header = vec![0x10, 0, 0, 0];
        header.extend_from_slice(&(width).to_le_bytes()[..3]);
        header.extend_from_slice(&(height).to_le_bytes()[..3]);
        push_chunk(&mut body, b"VP8X", &header);
        push_chunk(&mut body, b"ALPH", alpha);
    }
    push_chunk(&mut body, kind, chunk);
    let mut still = b"RIFF".to_vec();
    still.extend_from_slice(&(body.len() as u32).to_le_bytes());
    still.extend_from_slice(&body);
    Ok(Frame { left: 2 * left, top: 2 * top, still })
}

fn push_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(kind);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
}

/// The top-level chunks of a RIFF file (after `RIFF`, its size and `WEBP`), up to the first one cut off.
pub(super) fn riff_chunks(bytes: &[u8]) -> impl Iterator<Item = (&[u8; 4], &[u8])> {
    chunks(bytes.get(12..).unwrap_or_default())
}

/// Consecutive chunks (four-character kind, little-endian length, data padded to even length).
fn chunks(mut data: &[u8]) -> impl Iterator<Item = (&[u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        let (header, rest) = data.split_first_chunk::<8>()?;
        let kind: &[u8; 4] = header.first_chunk::<4>()?;
        let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let chunk = rest.get(..length)?;
        data = rest.get(length + length % 2..).unwrap_or_default();
        Some((kind, chunk))
    })
}

fn webp_error(error: DecodingError) -> InstanceError {
    match error {
        DecodingError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            InstanceError::Truncated { format: FORMAT }
        }
        DecodingError::UnsupportedFeature(feature) => {
            InstanceError::UnsupportedEncoding { format: FORMAT, detail: feature }
        }
        other => corrupt(other.to_string()),
    }
}

fn corrupt(detail: String) -> InstanceError {
    InstanceError::Corrupt { format: FORMAT, detail }
}
