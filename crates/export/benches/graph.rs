//! The compiled graph of the tiny fixture model through the runtime: `cargo bench -p export`.
//!
//! Lives in export because the artifact has to be exported first (the runtime cannot depend on the
//! exporter). Measures `Model::infer` on prepared images at batch 1 and 8, f32 and int8, so changes to
//! graph construction or to the runtime's batching show up without the full-size model. The full-size
//! comparison with ONNX Runtime is `cargo xtask bench`.

use std::hint::black_box;
use std::path::Path;

use artifact::ResizeMode;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use export::{ExportRequest, Precision, export};
use runtime::{Model, RuntimeOptions};

fn graph(c: &mut Criterion) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let image = std::fs::read(fixtures.join("images/chelsea.jpg")).expect("fixture image");
    for precision in [Precision::F32, Precision::Int8] {
        let base = tempfile::tempdir().expect("temp dir");
        let request = ExportRequest {
            checkpoint: fixtures.join("models/tiny-vit"),
            base: base.path().to_owned(),
            version: None,
            resize: ResizeMode::Pil,
            jpeg_draft: false,
            precision,
            accuracy_images: vec![],
            min_top1_agreement: export::MIN_TOP1_AGREEMENT,
        };
        let report = export(&request, &runtime::NoProgress).expect("the tiny fixture exports");
        let options = RuntimeOptions { threads: 2, ..RuntimeOptions::default() };
        let model = Model::load_with(&report.version_dir, options).expect("the artifact loads");
        let prepared = model.prepare(&image).expect("the image prepares");
        let mut group = c.benchmark_group(format!("tiny-vit/{}", precision.name()));
        for batch in [1usize, 8] {
            let images = vec![prepared.clone(); batch];
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(format!("infer batch {batch}"), |b| {
                b.iter(|| model.infer(black_box(&images)).expect("inference"))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, graph);
criterion_main!(benches);
