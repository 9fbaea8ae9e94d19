//! Artifact loading: the input is `manifest.json`, signed with a correct `manifest.sha256` so every
//! check after the digest (format probe, strict parse, the manifest's own rules, the listed files) is
//! reachable. The version directory also holds `graph.nnef.tar` with [`GRAPH`] as its content, so a
//! manifest listing it with the right digest loads completely.

#![no_main]

use std::fs;
use std::sync::LazyLock;

use artifact::{Artifact, MANIFEST_DIGEST_FILE, MANIFEST_FILE};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

/// Content of the one data file. Its sha256,
/// `a45b19c5de8d6830944532f27cf9bda5d09ab31342e0ffd6115fca42060749dc`, is what the seed manifests list.
const GRAPH: &[u8] = b"kiln fuzz graph\n";

static VERSION_DIR: LazyLock<std::path::PathBuf> = LazyLock::new(|| {
    let dir = kiln_fuzz::scratch_dir().join("1");
    fs::create_dir_all(&dir).expect("create the version directory");
    fs::write(dir.join("graph.nnef.tar"), GRAPH).expect("write the graph file");
    dir
});

fuzz_target!(|json: &[u8]| {
    let dir = &*VERSION_DIR;
    fs::write(dir.join(MANIFEST_FILE), json).expect("write manifest.json");
    let line = format!("{:x}  {MANIFEST_FILE}\n", Sha256::digest(json));
    fs::write(dir.join(MANIFEST_DIGEST_FILE), line).expect("write manifest.sha256");
    if let Ok(artifact) = Artifact::open(dir) {
        assert!(artifact.file_path(&artifact.manifest().graph.file).is_some());
        assert!(!artifact.manifest().labels.is_empty());
    }
});
