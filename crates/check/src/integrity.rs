//! `kiln check --dir DIR` alone: is this artifact sound enough to hand to a server?

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use artifact::{Artifact, Signature, TensorInfo};
use runtime::{Model, RuntimeError, RuntimeOptions};
use serde::Serialize;

use crate::error::CheckError;

/// Name of the predict signature every kiln runtime and server serves.
const SIGNATURE: &str = "serving_default";

/// What an integrity check verified, with timings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntegrityReport {
    /// The version directory checked (a base directory resolves to its highest version).
    pub dir: PathBuf,
    /// Its version number, if the directory name is one.
    pub version: Option<u64>,
    /// The manifest's format version.
    pub format_version: u32,
    /// Files whose sha256 matched the manifest (besides the manifest itself).
    pub files: usize,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Number of class labels.
    pub labels: usize,
    /// The graph's input size, `[height, width]`.
    pub input_size: [u32; 2],
    /// Warm-up inputs that classified.
    pub warmup: usize,
    /// Seconds spent verifying digests.
    pub verify_seconds: f64,
    /// Seconds spent loading and compiling the graph.
    pub compile_seconds: f64,
    /// Seconds spent on the warm-up inputs.
    pub warmup_seconds: f64,
}

impl fmt::Display for IntegrityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = self.version.map_or_else(|| "unnumbered".to_owned(), |v| format!("version {v}"));
        writeln!(f, "{} ({version})", self.dir.display())?;
        writeln!(
            f,
            "ok  digests: {} files, {} bytes match manifest.json ({:.2}s)",
            self.files, self.bytes, self.verify_seconds
        )?;
        writeln!(f, "ok  format_version {} is supported", self.format_version)?;
        writeln!(
            f,
            "ok  signature {SIGNATURE}: string_input DT_STRING -> confidence DT_FLOAT, label DT_STRING; {} labels",
            self.labels
        )?;
        let [height, width] = self.input_size;
        writeln!(
            f,
            "ok  graph loads and compiles: input u8[N, {height}, {width}, 3] ({:.2}s)",
            self.compile_seconds
        )?;
        writeln!(f, "ok  warm-up: {} inputs classified ({:.2}s)", self.warmup, self.warmup_seconds)?;
        writeln!(f, "PASS")
    }
}

/// Verifies `dir` (a version directory, or a base: its highest version): every digest and the format
/// version ([`Artifact::open`]), the `serving_default` signature, that the graph loads and compiles, and
/// that every warm-up input classifies. The first failure is returned; it names the file at fault.
pub fn verify_integrity(dir: &Path, options: RuntimeOptions) -> Result<IntegrityReport, CheckError> {
    let load_error = |source: RuntimeError| CheckError::Load { dir: dir.to_path_buf(), source };
    let started = Instant::now();
    let version_dir = artifact::resolve_dir(dir).map_err(|e| load_error(e.into()))?;
    let artifact = Artifact::open(&version_dir).map_err(|e| load_error(e.into()))?;
    let verify_seconds = started.elapsed().as_secs_f64();
    let manifest_path = version_dir.join(artifact::MANIFEST_FILE);
    check_signature(&artifact.manifest().signatures, &manifest_path)?;

    let mut bytes = 0;
    for name in artifact.manifest().files.keys() {
        let path = artifact.file_path(name).expect("a listed file has a path");
        bytes += fs::metadata(&path).map_err(CheckError::io("stat", &path))?.len();
    }
    let version = artifact.version();
    let graph = artifact.graph_path();
    let started = Instant::now();
    let model =
        Model::compile(version_dir.clone(), artifact.into_manifest(), &graph, options).map_err(load_error)?;
    let compile_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let manifest = model.manifest();
    for name in &manifest.warmup {
        let file = version_dir.join(name);
        let input = fs::read(&file).map_err(CheckError::io("read", &file))?;
        let outcome = model
            .predict(&[&input])
            .map_err(|e| CheckError::Warmup { file: file.clone(), reason: e.to_string() })?;
        if let Some(Err(e)) = outcome.first() {
            return Err(CheckError::Warmup { file, reason: e.to_string() });
        }
    }
    Ok(IntegrityReport {
        dir: version_dir,
        version,
        format_version: manifest.format_version,
        files: manifest.files.len(),
        bytes,
        labels: manifest.labels.len(),
        input_size: [manifest.graph.height, manifest.graph.width],
        warmup: manifest.warmup.len(),
        verify_seconds,
        compile_seconds,
        warmup_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The contract of `serving_default`: one `string_input` of strings in; `confidence` floats and `label`
/// strings out, each a batch vector. Anything else is a manifest a server would serve wrongly.
fn check_signature(signatures: &BTreeMap<String, Signature>, path: &Path) -> Result<(), CheckError> {
    let fail = |reason: String| CheckError::Signature { manifest: path.to_path_buf(), reason };
    let signature = signatures.get(SIGNATURE).ok_or_else(|| {
        let names: Vec<&String> = signatures.keys().collect();
        fail(format!("missing (signatures: {names:?})"))
    })?;
    if signature.method_name != "tensorflow/serving/predict" {
        return Err(fail(format!(
            "method_name is {:?}, expected \"tensorflow/serving/predict\"",
            signature.method_name
        )));
    }
    let expect = |side: &str, tensors: &BTreeMap<String, TensorInfo>, wanted: &[(&str, &str)]| {
        let names: Vec<&str> = tensors.keys().map(String::as_str).collect();
        let wanted_names: Vec<&str> = wanted.iter().map(|(name, _)| *name).collect();
        if names != wanted_names {
            return Err(fail(format!("{side} are {names:?}, expected {wanted_names:?}")));
        }
        for (name, dtype) in wanted {
            let tensor = &tensors[*name];
            if tensor.dtype != *dtype || tensor.shape != [-1] {
                return Err(fail(format!(
                    "{side} `{name}` is {} {:?}, expected {dtype} [-1]",
                    tensor.dtype, tensor.shape
                )));
            }
        }
        Ok(())
    };
    expect("inputs", &signature.inputs, &[("string_input", "DT_STRING")])?;
    expect("outputs", &signature.outputs, &[("confidence", "DT_FLOAT"), ("label", "DT_STRING")])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dtype: &str) -> TensorInfo {
        TensorInfo { dtype: dtype.into(), shape: vec![-1], name: "t:0".into() }
    }

    fn signatures() -> BTreeMap<String, Signature> {
        BTreeMap::from([(SIGNATURE.into(), Signature::serving_default())])
    }

    #[test]
    fn the_kiln_signature_passes_and_each_deviation_is_named() -> Result<(), String> {
        let path = Path::new("/m/1/manifest.json");
        check_signature(&signatures(), path).map_err(|e| e.to_string())?;
        type Edit = fn(&mut Signature);
        let cases: [(Edit, &str); 4] = [
            (|s| s.method_name = "tensorflow/serving/classify".into(), "method_name"),
            (
                |s| drop(s.inputs.insert("extra".into(), tensor("DT_STRING"))),
                r#"inputs are ["extra", "string_input"]"#,
            ),
            (|s| drop(s.outputs.insert("confidence".into(), tensor("DT_INT64"))), "`confidence` is DT_INT64"),
            (|s| s.inputs.values_mut().for_each(|t| t.shape = vec![1]), "[1], expected DT_STRING [-1]"),
        ];
        for (edit, expected) in cases {
            let mut m = signatures();
            m.values_mut().for_each(edit);
            let err =
                check_signature(&m, path).err().ok_or(format!("accepted a signature with {expected}"))?;
            let message = err.to_string();
            assert!(message.contains("/m/1/manifest.json") && message.contains(expected), "{message}");
        }
        let mut m = signatures();
        m.clear();
        let err = check_signature(&m, path).err().ok_or("accepted a manifest without signatures")?;
        assert!(err.to_string().contains("`serving_default` is not servable: missing"), "{err}");
        Ok(())
    }
}
