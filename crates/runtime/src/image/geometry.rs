//! Where the output pixels come from: the size an image is resized to and the part of that resize a
//! centre crop keeps, in the integer and float arithmetic of transformers 5.23's PIL-backend processors
//! (`PilBackend.resize` and `image_transforms.center_crop`).
//!
//! Only the kept part of the resize is ever computed ([`ResizeWindow`]), so a crop costs no copy of the
//! full resized image, and the zero padding of a crop larger than the image is one copy of the small one.

use std::ops::Range;

use artifact::{CropSize, PreprocessSpec, ResizeSize};

use super::resize::ResizeWindow;
use super::{ImageLimits, InstanceError};

/// The output of the geometric steps for one image: which part of which resize, placed where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Geometry {
    /// The part of the full resize that is computed.
    pub(super) window: ResizeWindow,
    /// Output width: the crop's, or the resize's without a crop.
    pub(super) width: u32,
    /// Output height.
    pub(super) height: u32,
    /// Output column of the window's first column (non-zero only where the crop pads).
    pub(super) left: u32,
    /// Output row of the window's first row.
    pub(super) top: u32,
}

impl Geometry {
    /// Plans the resize and crop of `spec` for a `width` x `height` image; refuses resizes that round a
    /// side to zero or exceed [`ImageLimits::max_pixels`], as the full resize transformers makes would
    /// cost that much (kiln computes only the kept part, but the bound keeps every coordinate in `u32`).
    pub(super) fn new(
        spec: &PreprocessSpec,
        width: u32,
        height: u32,
        limits: &ImageLimits,
    ) -> Result<Geometry, InstanceError> {
        let (resized_height, resized_width) = resized_size(spec.size, height, width);
        let pixels = u128::from(resized_width) * u128::from(resized_height);
        if pixels == 0 {
            return Err(InstanceError::ResizedToNothing { width, height, resized_width, resized_height });
        }
        let too_large = || InstanceError::ResizedTooLarge {
            width,
            height,
            resized_width,
            resized_height,
            limit: limits.max_pixels,
        };
        if pixels > u128::from(limits.max_pixels) {
            return Err(too_large());
        }
        let (Ok(resized_width), Ok(resized_height)) =
            (u32::try_from(resized_width), u32::try_from(resized_height))
        else {
            return Err(too_large());
        };
        let CropSize { height: crop_height, width: crop_width } =
            spec.crop.unwrap_or(CropSize { height: resized_height, width: resized_width });
        let (columns, left) = crop_axis(resized_width, crop_width);
        let (rows, top) = crop_axis(resized_height, crop_height);
        Ok(Geometry {
            window: ResizeWindow { width: resized_width, height: resized_height, columns, rows },
            width: crop_width,
            height: crop_height,
            left,
            top,
        })
    }

    /// Puts the computed window (RGB8, HWC) at its place in the output, zero-padded around it; the window
    /// is returned as is when it is the whole output, which it is unless the crop is larger than the image.
    pub(super) fn place(&self, window: Vec<u8>) -> Vec<u8> {
        const CHANNELS: usize = 3;
        let (width, height) = (self.width as usize, self.height as usize);
        let window_width = self.window.columns.len();
        if window_width == width && self.window.rows.len() == height {
            return window;
        }
        let mut out = vec![0; width * height * CHANNELS];
        let out_rows = out.chunks_exact_mut(width * CHANNELS).skip(self.top as usize);
        let left = self.left as usize * CHANNELS;
        for (out_row, row) in out_rows.zip(window.chunks_exact(window_width * CHANNELS)) {
            out_row[left..left + row.len()].copy_from_slice(row);
        }
        out
    }
}

/// The `(height, width)` transformers' `PilBackend.resize` gives a `height` x `width` image, before any
/// crop. Sides are `u64` because a shortest-edge resize of an extreme aspect ratio can exceed `u32`.
///
/// Without `longest_edge` this is `get_resize_output_image_size(default_to_square=False)`: the shorter
/// side becomes `shortest_edge` and the longer `int(shortest_edge * long / short)`, computed here exactly
/// in integers (Python's float division gives the same whenever `shortest_edge * long < 2^53`). With
/// `longest_edge` it is `get_size_with_aspect_ratio`, whose float steps are copied one for one, since
/// they decide the result: `100x177` with `224/300` becomes `169x299`, not `169x300`.
pub(super) fn resized_size(size: ResizeSize, height: u32, width: u32) -> (u64, u64) {
    match size {
        ResizeSize::Exact { height, width } => (height.into(), width.into()),
        ResizeSize::ShortestEdge { shortest_edge, longest_edge: None } => {
            let (short, long) = (height.min(width), height.max(width));
            let new_long = u64::from(shortest_edge) * u64::from(long) / u64::from(short);
            if width <= height { (new_long, shortest_edge.into()) } else { (shortest_edge.into(), new_long) }
        }
        ResizeSize::ShortestEdge { shortest_edge, longest_edge: Some(longest_edge) } => {
            size_with_aspect_ratio(height, width, shortest_edge, longest_edge)
        }
    }
}

/// transformers' `get_size_with_aspect_ratio((height, width), size, max_size)`, float for float.
fn size_with_aspect_ratio(height: u32, width: u32, size: u32, max_size: u32) -> (u64, u64) {
    let (short, long) = (f64::from(height.min(width)), f64::from(height.max(width)));
    let (mut size, mut raw_size) = (u64::from(size), None);
    if long / short * size as f64 > f64::from(max_size) {
        let raw = f64::from(max_size) * short / long;
        raw_size = Some(raw);
        // Python's `round` breaks ties to even; `as` truncates like `int`.
        size = raw.round_ties_even() as u64;
    }
    let (height, width) = (u64::from(height), u64::from(width));
    // `int(raw_size * long / short)` when the size was capped, else `int(size * long / short)`; the
    // latter is exact in integers (see `resized_size`).
    let scaled = |long: u64, short: u64| match raw_size {
        Some(raw) => (raw * long as f64 / short as f64) as u64,
        None => size * long / short,
    };
    if (height <= width && height == size) || (width <= height && width == size) {
        (height, width)
    } else if width < height {
        (scaled(height, width), size)
    } else {
        (size, scaled(width, height))
    }
}

/// One axis of transformers' `center_crop` of a `resized`-long axis to `crop`: the resized indices kept
/// and the output index the first of them goes to. Both are one rule, output index = resized index -
/// `(resized - crop) // 2` with Python's flooring division: a crop inside the image starts at
/// `floor((resized - crop) / 2)`, a larger one places the image `ceil((crop - resized) / 2)` from the
/// start, so an odd margin or padding leaves the extra pixel at the end or the start respectively.
fn crop_axis(resized: u32, crop: u32) -> (Range<u32>, u32) {
    if crop <= resized {
        let start = (resized - crop) / 2;
        (start..start + crop, 0)
    } else {
        (0..resized, (crop - resized).div_ceil(2))
    }
}

#[cfg(test)]
mod tests {
    use artifact::{ChannelOrder, Decoder, ResampleFilter, ResizeMode};
    use serde_json::Value;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// What transformers computed, from `testdata/generate.py`.
    fn goldens() -> Result<Value, Box<dyn std::error::Error>> {
        Ok(serde_json::from_str(include_str!("testdata/geometry.json"))?)
    }

    fn pair(value: &Value) -> Result<(u64, u64), Box<dyn std::error::Error>> {
        match value.as_array().map(Vec::as_slice) {
            Some([a, b]) => Ok((a.as_u64().ok_or("not a size")?, b.as_u64().ok_or("not a size")?)),
            _ => Err(format!("{value} is not a pair").into()),
        }
    }

    fn spec(size: ResizeSize, crop: Option<CropSize>) -> PreprocessSpec {
        PreprocessSpec {
            processor: "ViTImageProcessor".into(),
            decoder: Decoder::Pillow,
            exif_orientation: false,
            resize: ResizeMode::Pil,
            resample: ResampleFilter::Bilinear,
            size,
            crop,
            channel_order: ChannelOrder::Rgb,
            transparency_to_white: false,
            scale: [1.0; 3],
            offset: [0.0; 3],
        }
    }

    #[test]
    fn shortest_edge_sizes_match_transformers() -> TestResult {
        let goldens = goldens()?;
        let cases = goldens["sizes"].as_array().ok_or("sizes")?;
        for case in cases {
            let (height, width) = pair(&case["image"])?;
            let size: ResizeSize = serde_json::from_value(case["size"].clone())?;
            let ours = resized_size(size, u32::try_from(height)?, u32::try_from(width)?);
            assert_eq!(ours, pair(&case["resized"])?, "{height}x{width} to {size:?}");
        }
        assert!(cases.len() >= 20, "every size case is checked");
        Ok(())
    }

    #[test]
    fn an_exact_size_ignores_the_image_size() {
        let size = ResizeSize::Exact { height: 224, width: 160 };
        assert_eq!(resized_size(size, 17, 2000), (224, 160));
    }

    #[test]
    fn crop_offsets_floor_and_padding_offsets_ceil() {
        assert_eq!(crop_axis(8, 4), (2..6, 0));
        assert_eq!(crop_axis(9, 4), (2..6, 0), "odd margin: the extra column is cut at the end");
        assert_eq!(crop_axis(5, 5), (0..5, 0));
        assert_eq!(crop_axis(4, 6), (0..4, 1));
        assert_eq!(crop_axis(3, 6), (0..3, 2), "odd padding: the extra row of zeros goes first");
    }

    #[test]
    fn centre_crops_match_transformers() -> TestResult {
        let goldens = goldens()?;
        let cases = goldens["crops"].as_array().ok_or("crops")?;
        for case in cases {
            let (height, width) = pair(&case["image"])?;
            let (crop_height, crop_width) = pair(&case["crop"])?;
            let (height, width) = (u32::try_from(height)?, u32::try_from(width)?);
            // The CHW image generate.py crops, `1 + index` in CHW order, here in HWC.
            let plane = (height * width) as usize;
            let image: Vec<u8> = (0..plane * 3).map(|i| (1 + (i % 3) * plane + i / 3) as u8).collect();
            let crop = CropSize { height: u32::try_from(crop_height)?, width: u32::try_from(crop_width)? };
            let geometry = Geometry::new(
                &spec(ResizeSize::Exact { height, width }, Some(crop)),
                width,
                height,
                &ImageLimits::default(),
            )?;
            let window = &geometry.window;
            let kept: Vec<u8> = image
                .chunks_exact(width as usize * 3)
                .skip(window.rows.start as usize)
                .take(window.rows.len())
                .flat_map(|row| &row[window.columns.start as usize * 3..window.columns.end as usize * 3])
                .copied()
                .collect();
            let expected: Vec<u8> = serde_json::from_value(case["pixels"].clone())?;
            assert_eq!(geometry.place(kept), expected, "{height}x{width} cropped to {crop:?}");
            assert_eq!((geometry.height, geometry.width), (crop.height, crop.width));
        }
        assert!(cases.len() >= 9, "every crop case is checked");
        Ok(())
    }

    #[test]
    fn a_crop_is_computed_from_its_window_of_the_resize_only() -> TestResult {
        let spec = spec(
            ResizeSize::ShortestEdge { shortest_edge: 256, longest_edge: None },
            Some(CropSize { height: 224, width: 224 }),
        );
        let geometry = Geometry::new(&spec, 640, 480, &ImageLimits::default())?;
        assert_eq!(
            geometry,
            Geometry {
                window: ResizeWindow { width: 341, height: 256, columns: 58..282, rows: 16..240 },
                width: 224,
                height: 224,
                left: 0,
                top: 0,
            }
        );
        Ok(())
    }

    #[test]
    fn resizes_to_no_pixels_or_too_many_are_refused() {
        let limits = ImageLimits { max_pixels: 10_000, ..ImageLimits::default() };
        let capped = spec(ResizeSize::ShortestEdge { shortest_edge: 224, longest_edge: Some(300) }, None);
        let error = Geometry::new(&capped, 1000, 1, &limits).err();
        assert_eq!(
            error,
            Some(InstanceError::ResizedToNothing {
                width: 1000,
                height: 1,
                resized_width: 300,
                resized_height: 0
            })
        );
        let shortest = spec(
            ResizeSize::ShortestEdge { shortest_edge: 224, longest_edge: None },
            Some(CropSize { height: 4, width: 4 }),
        );
        let error = Geometry::new(&shortest, 3, 4000, &limits).err();
        assert_eq!(
            error.map(|e| e.to_string()).as_deref(),
            Some("image is 3x4000, which resizes to 224x298666 = 66901184 pixels, above the limit of 10000")
        );
        let huge = Geometry::new(&shortest, 1, u32::MAX, &ImageLimits { max_pixels: u64::MAX, ..limits });
        assert!(matches!(huge, Err(InstanceError::ResizedTooLarge { .. })), "{huge:?}");
    }
}
