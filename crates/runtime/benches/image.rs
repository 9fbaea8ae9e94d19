//! The image path's cost per stage: `cargo bench -p runtime`.
//!
//! The stages are private, so they are isolated through [`runtime::prepare`]: with the `nearest` filter
//! resizing costs next to nothing and the time is base64 + decode; the Pillow bilinear and bicubic rows
//! add the real resize on top, the draft row decodes JPEGs at the reduction Pillow's `draft` picks
//! (1/8 for the 5-megapixel photo, none for the small one), and the last row is ConvNeXT's shortest-edge resize to 256 with a 224 centre
//! crop (only the cropped part is computed). Each row is one fixture image at its own size, prepared to
//! 224x224.

use std::hint::black_box;
use std::path::Path;

use artifact::{CropSize, Decoder, PreprocessSpec, ResampleFilter, ResizeMode, ResizeSize};
use base64::Engine as _;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use runtime::{ImageLimits, prepare};

/// Fixture images: a small photo, a mid-size one, a 5-megapixel one.
const IMAGES: &[&str] = &["chelsea.jpg", "astronaut-420.jpg", "large-2400x2093.jpg"];

fn spec(resize: ResizeMode, resample: ResampleFilter) -> PreprocessSpec {
    PreprocessSpec::legacy(resize, resample, 224, 224, 1.0 / 255.0, [0.5; 3], [0.5; 3])
}

fn image_path(c: &mut Criterion) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/images");
    let limits = ImageLimits::default();
    let convnext = PreprocessSpec {
        size: ResizeSize::ShortestEdge { shortest_edge: 256, longest_edge: None },
        crop: Some(CropSize { height: 224, width: 224 }),
        ..spec(ResizeMode::Pil, ResampleFilter::Bicubic)
    };
    let variants = [
        ("decode (base64 + jpeg, nearest resize)", spec(ResizeMode::Pil, ResampleFilter::Nearest)),
        ("decode + pil bilinear resize", spec(ResizeMode::Pil, ResampleFilter::Bilinear)),
        (
            "draft decode + pil bilinear resize",
            PreprocessSpec {
                decoder: Decoder::PillowDraft,
                ..spec(ResizeMode::Pil, ResampleFilter::Bilinear)
            },
        ),
        ("decode + pil bicubic resize", spec(ResizeMode::Pil, ResampleFilter::Bicubic)),
        ("decode + tf bilinear resize", spec(ResizeMode::Tf, ResampleFilter::Bilinear)),
        ("decode + pil bicubic shortest edge 256 + crop 224", convnext),
    ];
    for name in IMAGES {
        let bytes = std::fs::read(fixtures.join(name)).expect("fixture image");
        let text = base64::engine::general_purpose::STANDARD.encode(&bytes).into_bytes();
        let mut group = c.benchmark_group(format!("prepare/{name}"));
        group.throughput(Throughput::Elements(1));
        for (variant, spec) in &variants {
            group.bench_function(*variant, |b| {
                b.iter(|| prepare(black_box(&text), spec, &limits).expect("prepares"))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, image_path);
criterion_main!(benches);
