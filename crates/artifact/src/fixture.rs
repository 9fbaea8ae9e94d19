//! A small but complete artifact for this crate's tests: several files, one nested, one larger than a
//! hashing chunk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::ArtifactError;
use crate::manifest::{
    FORMAT_VERSION, GraphSpec, Manifest, PreprocessSpec, Provenance, ResampleFilter, ResizeMode, Signature,
    SourceFile,
};
use crate::version::VersionDir;
use crate::writer::ArtifactWriter;

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Bytes standing in for the NNEF archive; over 1 MiB so hashing crosses a chunk boundary.
pub(crate) fn graph_bytes() -> Vec<u8> {
    (0..(1usize << 20) + 4097).map(|i| (i * 31 % 253) as u8).collect()
}

/// A manifest as an exporter would pass it to `publish`: `files` left empty.
pub(crate) fn sample_manifest() -> Manifest {
    let signature = Signature::serving_default();
    Manifest {
        format_version: FORMAT_VERSION,
        graph: GraphSpec {
            file: "graph.nnef.tar".into(),
            height: 32,
            width: 32,
            confidence_output: "confidence".into(),
            class_output: "class_index".into(),
            precision: "f32".into(),
        },
        signatures: BTreeMap::from([("serving_default".into(), signature)]),
        labels: vec!["circle".into(), "square".into(), "triangle ▲".into()],
        preprocess: PreprocessSpec::legacy(
            ResizeMode::Pil,
            ResampleFilter::Bilinear,
            32,
            32,
            1.0 / 255.0,
            [0.5; 3],
            [0.5; 3],
        ),
        provenance: Provenance {
            exporter: "kiln-export 0.1.0".into(),
            source_format: "safetensors".into(),
            architecture: "ViTForImageClassification".into(),
            sources: vec![SourceFile {
                path: "model.safetensors".into(),
                sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
                bytes: 3,
            }],
            created_unix: 1_700_000_000,
        },
        warmup: vec!["warmup/cat.jpg".into()],
        files: BTreeMap::new(),
    }
}

/// Publishes the sample artifact into `base`, adding one file each way the writer offers.
pub(crate) fn publish_sample(base: &Path, version: Option<u64>) -> Result<VersionDir, ArtifactError> {
    let source = base.join("graph-source.bin");
    std::fs::write(&source, graph_bytes()).map_err(ArtifactError::io("write", &source))?;
    let mut writer = ArtifactWriter::create(base, version)?;
    writer.copy_file("graph.nnef.tar", &source)?;
    writer.write_file("warmup/cat.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")?;
    let notes = writer.file_path("notes/export.txt")?;
    std::fs::write(&notes, b"exported by a test\n").map_err(ArtifactError::io("write", &notes))?;
    std::fs::remove_file(&source).map_err(ArtifactError::io("remove", &source))?;
    writer.publish(sample_manifest()).map(|publication| publication.dir)
}

/// The sample artifact published as version 1 of a fresh base; keep the `TempDir` alive while using it.
pub(crate) fn sample_version() -> Result<(tempfile::TempDir, PathBuf), Box<dyn std::error::Error>> {
    let base = tempfile::tempdir()?;
    let dir = publish_sample(base.path(), None)?.path().to_path_buf();
    Ok((base, dir))
}
