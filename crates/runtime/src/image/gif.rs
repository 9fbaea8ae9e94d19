//! GIF: the first frame, composed as Pillow 13's `GifImagePlugin` composes it, then `convert("RGB")`.
//!
//! Pillow's canvas is the logical screen, enlarged when the first frame reaches past it. Pixels outside
//! the frame hold palette index 0, or the frame's transparency index when it has one; transparent
//! pixels inside the frame keep their palette colour (frame 0 stays mode `P`, and `convert("RGB")`
//! ignores transparency). Indices past the end of the palette are black. A palette that is the identity
//! grey ramp makes Pillow open the frame as `L`, where every index is its own grey level.
//!
//! The `gif` crate decodes the LZW data to indices; `image`'s GIF decoder composites to RGBA, which
//! loses the index that Pillow's fill and palette lookup depend on.

use std::io::{Cursor, ErrorKind};

use ::image::RgbImage;
use gif::{ColorOutput, DecodeOptions, DecodingError};

use super::decode::check_size;
use super::{ImageLimits, InstanceError};

const FORMAT: &str = "GIF";

/// Decodes the first frame of a GIF into RGB8 on Pillow's canvas, checking the canvas size against
/// `limits` before the frame's data is decoded. Also returns the colour of the frame's transparency index,
/// the key Pillow keeps in `info["transparency"]` after `convert("RGB")`.
pub(super) fn decode_rgb8(
    bytes: &[u8],
    limits: &ImageLimits,
) -> Result<(RgbImage, Option<[u8; 3]>), InstanceError> {
    let mut options = DecodeOptions::new();
    options.set_color_output(ColorOutput::Indexed);
    let mut decoder = options.read_info(Cursor::new(bytes)).map_err(gif_error)?;
    let (screen_width, screen_height) = (decoder.width(), decoder.height());
    let frame = decoder
        .next_frame_info()
        .map_err(gif_error)?
        .ok_or_else(|| corrupt("the file holds no image".into()))?;
    let (left, top) = (u32::from(frame.left), u32::from(frame.top));
    let (frame_width, frame_height) = (u32::from(frame.width), u32::from(frame.height));
    let width = u32::from(screen_width).max(left + frame_width);
    let height = u32::from(screen_height).max(top + frame_height);
    check_size(width, height, limits)?;
    let transparent = frame.transparent;
    let fill = transparent.unwrap_or(0);
    let local_palette = frame.palette.clone();
    // `gif` refuses a frame without any colour table, so the slice is empty only for an empty table.
    let colours = colour_table(local_palette.as_deref().or(decoder.global_palette()).unwrap_or_default());

    let mut indices = vec![0; frame_width as usize * frame_height as usize];
    decoder.read_into_buffer(&mut indices).map_err(gif_error)?;

    let mut rgb = colours[usize::from(fill)].repeat(width as usize * height as usize);
    if frame_width > 0 {
        for (row, line) in indices.chunks_exact(frame_width as usize).enumerate() {
            let start = ((top as usize + row) * width as usize + left as usize) * 3;
            for (pixel, &index) in rgb[start..start + line.len() * 3].chunks_exact_mut(3).zip(line) {
                pixel.copy_from_slice(&colours[usize::from(index)]);
            }
        }
    }
    let key = transparent.map(|index| colours[usize::from(index)]);
    Ok((RgbImage::from_raw(width, height, rgb).expect("canvas of width * height pixels"), key))
}

/// The colour of each of the 256 indices: the palette's entries and black past its end, or the grey
/// ramp when the palette is the identity ramp (Pillow's mode `L`).
fn colour_table(palette: &[u8]) -> [[u8; 3]; 256] {
    let grey = std::array::from_fn(|index| [index as u8; 3]);
    let entries = palette.chunks_exact(3);
    let identity =
        entries.clone().enumerate().all(|(index, entry)| entry.iter().all(|&c| usize::from(c) == index));
    if identity {
        return grey;
    }
    let mut colours = [[0; 3]; 256];
    for (colour, entry) in colours.iter_mut().zip(entries) {
        colour.copy_from_slice(entry);
    }
    colours
}

fn gif_error(error: DecodingError) -> InstanceError {
    match error {
        DecodingError::UnexpectedEof => InstanceError::Truncated { format: FORMAT },
        DecodingError::Io(io) if io.kind() == ErrorKind::UnexpectedEof => {
            InstanceError::Truncated { format: FORMAT }
        }
        // The LZW data ends before the frame is filled: Pillow says "image file is truncated".
        DecodingError::Format(format) if format.to_string().contains("truncated") => {
            InstanceError::Truncated { format: FORMAT }
        }
        other => corrupt(other.to_string()),
    }
}

fn corrupt(detail: String) -> InstanceError {
    InstanceError::Corrupt { format: FORMAT, detail }
}
