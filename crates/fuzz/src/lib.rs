//! What kiln's fuzz targets share: the manifest requests are parsed against and a scratch directory
//! that lives as long as the fuzzing process.
//!
//! The targets (`fuzz_targets/`) run under `cargo fuzz --fuzz-dir crates/fuzz` or, for all of them with
//! a time budget each, `cargo xtask fuzz --seconds N`.

use std::path::Path;
use std::sync::LazyLock;

use artifact::Manifest;
use tempfile::TempDir;

/// A manifest with one `serving_default` signature taking `string_input` and returning `confidence`
/// and `label`, as `kiln export` writes for an image classifier: what REST and gRPC requests are
/// checked against.
pub fn string_input_manifest() -> Manifest {
    serde_json::from_str(STRING_INPUT_MANIFEST).expect("the literal is a valid manifest")
}

const STRING_INPUT_MANIFEST: &str = r#"{
    "format_version": 1,
    "graph": {"file": "graph.nnef.tar", "height": 8, "width": 8, "confidence_output": "confidence",
              "class_output": "class", "precision": "f32"},
    "signatures": {"serving_default": {"method_name": "tensorflow/serving/predict",
        "inputs": {"string_input": {"dtype": "DT_STRING", "shape": [-1],
                                    "name": "serving_default_string_input:0"}},
        "outputs": {"confidence": {"dtype": "DT_FLOAT", "shape": [-1], "name": "StatefulPartitionedCall:0"},
                    "label": {"dtype": "DT_STRING", "shape": [-1], "name": "StatefulPartitionedCall:1"}}}},
    "labels": ["cat", "dog"],
    "preprocess": {"resize": "pil", "resample": "bilinear", "rescale_factor": 0.003921569,
                   "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    "provenance": {"exporter": "kiln-fuzz", "source_format": "safetensors",
                   "architecture": "ViTForImageClassification", "sources": [], "created_unix": 0},
    "warmup": [],
    "files": {}
}"#;

/// One scratch directory per fuzzing process, in `/dev/shm` when it exists so the targets that must
/// go through a file (config files, version directories) do not wait on a disk.
pub fn scratch_dir() -> &'static Path {
    static DIR: LazyLock<TempDir> = LazyLock::new(|| {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
        dir.expect("a scratch directory for the fuzz target")
    });
    DIR.path()
}
