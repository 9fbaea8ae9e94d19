//! Golden files: an artifact's recorded answers for a set of images, and the check that reruns them.
//!
//! Format (`kiln_golden` 1), JSON Lines, UTF-8:
//!
//! ```text
//! {"kiln_golden":1,"artifact":{"dir":"/models/vit/3","version":3,"manifest_sha256":"<64 hex>","provenance":{...}}}
//! {"image":"images/cat.jpg","sha256":"<64 hex>","label":"tabby cat","class_index":281,"confidence":0.9312}
//! {"image":"/data/broken.jpg","sha256":"<64 hex>","error":"truncated JPEG ..."}
//! ```
//!
//! The first line is an optional header naming the artifact the answers came from (informational: a check
//! against another artifact is the point). Every other non-blank line is one image: `image` is relative
//! to the golden file's directory (`/`-separated) or absolute; `sha256` (optional) is the image's digest,
//! so a changed input is reported as a changed input rather than as model drift; the expected answer is
//! either `label` + `class_index` + `confidence` or `error` (the image must keep being refused; the
//! wording may change). Unknown fields in image lines are refused so a typo cannot silently disable a
//! check.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use runtime::{Model, Progress};
use serde::{Deserialize, Serialize};

use crate::baseline::at_most;
use crate::error::CheckError;
use crate::observe::{Classification, Observation, Outcome, classify, sha256_hex};

/// The golden format this build writes and the newest it reads.
pub const GOLDEN_FORMAT: u32 = 1;

/// Default largest |confidence difference| that is not drift.
///
/// The same artifact on another CPU differs by about 1e-6 (tract's kernels sum in another order); 1e-3 is
/// the parity bound kiln's export is held to against the Hugging Face reference, so anything inside it is
/// noise, anything beyond it a change worth a look.
pub const DEFAULT_TOLERANCE: f32 = 1e-3;

/// Which artifact a golden file was recorded with, so a reader can trace the expectations back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactStamp {
    /// The version directory, as it was on the recording machine.
    pub dir: PathBuf,
    /// Its version number, if the directory name is one.
    pub version: Option<u64>,
    /// sha256 of its `manifest.json`, which pins every file of the artifact through the digests it lists.
    pub manifest_sha256: String,
    /// The manifest's `provenance` object, copied as is (kept untyped so a golden file stays readable
    /// when the artifact format evolves).
    pub provenance: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
struct HeaderLine {
    kiln_golden: u64,
    artifact: ArtifactStamp,
}

/// One image line as stored; validated into a [`GoldenEntry`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryLine {
    image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    class_index: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    confidence: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// One image and the answer expected for it.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenEntry {
    /// The image path as written in the file: relative to the golden file's directory, or absolute.
    pub image: String,
    /// sha256 of the image's bytes when recorded; `None` skips the input-changed check.
    pub sha256: Option<String>,
    /// The expected answer.
    pub expected: Outcome,
}

/// A golden file in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenFile {
    /// Directory relative image paths are resolved against (the golden file's directory).
    pub dir: PathBuf,
    /// The artifact the answers were recorded with, if the file has a header.
    pub artifact: Option<ArtifactStamp>,
    /// The images, in file order.
    pub entries: Vec<GoldenEntry>,
}

impl GoldenFile {
    /// Builds the golden file that `path` will hold from `model`'s answers: image paths inside the golden
    /// file's directory become relative (so the golden file and its images can move together, e.g. in a
    /// repository), others absolute.
    pub fn record(
        model: &Model,
        observations: &[Observation],
        path: &Path,
    ) -> Result<GoldenFile, CheckError> {
        let dir = parent_dir(path);
        let dir = fs::canonicalize(&dir).map_err(CheckError::io("resolve", &dir))?;
        let manifest = model.dir().join(artifact::MANIFEST_FILE);
        let manifest_bytes = fs::read(&manifest).map_err(CheckError::io("read", &manifest))?;
        let provenance = serde_json::to_value(&model.manifest().provenance)
            .expect("a provenance of strings and numbers always serializes");
        let artifact = ArtifactStamp {
            dir: fs::canonicalize(model.dir()).unwrap_or_else(|_| model.dir().to_path_buf()),
            version: model.dir().file_name().and_then(|n| n.to_str()).and_then(artifact::parse_version),
            manifest_sha256: sha256_hex(&manifest_bytes),
            provenance,
        };
        let mut entries = Vec::with_capacity(observations.len());
        for observation in observations {
            let absolute = fs::canonicalize(&observation.image)
                .map_err(CheckError::io("resolve", &observation.image))?;
            let image = match absolute.strip_prefix(&dir) {
                Ok(relative) => slash_path(relative),
                Err(_) => absolute.to_string_lossy().into_owned(),
            };
            let sha256 = Some(observation.sha256.clone());
            entries.push(GoldenEntry { image, sha256, expected: observation.outcome.clone() });
        }
        Ok(GoldenFile { dir, artifact: Some(artifact), entries })
    }

    /// Reads and validates a golden file.
    pub fn read(path: &Path) -> Result<GoldenFile, CheckError> {
        let text = fs::read_to_string(path).map_err(CheckError::io("read", path))?;
        let mut artifact = None;
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            if line.trim().is_empty() {
                continue;
            }
            let parse_error =
                |reason: String| CheckError::GoldenParse { path: path.to_path_buf(), line: number, reason };
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| parse_error(e.to_string()))?;
            if let Some(format) = value.get("kiln_golden") {
                if !entries.is_empty() || artifact.is_some() {
                    return Err(parse_error("the `kiln_golden` header must be the first line".into()));
                }
                let found =
                    format.as_u64().ok_or_else(|| parse_error(format!("`kiln_golden` is {format}")))?;
                if found == 0 || found > u64::from(GOLDEN_FORMAT) {
                    return Err(CheckError::GoldenFormat {
                        path: path.to_path_buf(),
                        found,
                        supported: GOLDEN_FORMAT,
                    });
                }
                let header: HeaderLine =
                    serde_json::from_value(value).map_err(|e| parse_error(e.to_string()))?;
                artifact = Some(header.artifact);
                continue;
            }
            let line: EntryLine = serde_json::from_value(value).map_err(|e| parse_error(e.to_string()))?;
            entries.push(entry_from_line(line).map_err(parse_error)?);
        }
        if entries.is_empty() {
            return Err(CheckError::NoImages { path: path.to_path_buf() });
        }
        Ok(GoldenFile { dir: parent_dir(path), artifact, entries })
    }

    /// Writes the file (header first, one image per line), replacing `path` atomically so a pipeline
    /// never reads half a golden file.
    pub fn write(&self, path: &Path) -> Result<(), CheckError> {
        let mut text = String::new();
        if let Some(artifact) = &self.artifact {
            let header = HeaderLine { kiln_golden: u64::from(GOLDEN_FORMAT), artifact: artifact.clone() };
            text.push_str(&serde_json::to_string(&header).expect("the header always serializes"));
            text.push('\n');
        }
        for entry in &self.entries {
            text.push_str(&serde_json::to_string(&entry_line(entry)).expect("an entry always serializes"));
            text.push('\n');
        }
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = parent_dir(path).join(format!(".{file_name}.{}.tmp", std::process::id()));
        let written = fs::File::create(&temp)
            .and_then(|mut file| file.write_all(text.as_bytes()).and_then(|()| file.sync_all()))
            .map_err(CheckError::io("write", &temp));
        if let Err(error) =
            written.and_then(|()| fs::rename(&temp, path).map_err(CheckError::io("rename", path)))
        {
            // The temporary file is ours and worthless without the rename; removal is best effort.
            let _ = fs::remove_file(&temp);
            return Err(error);
        }
        Ok(())
    }

    /// Where an entry's image is on this machine.
    pub fn image_path(&self, entry: &GoldenEntry) -> PathBuf {
        let image = Path::new(&entry.image);
        if image.is_absolute() { image.to_path_buf() } else { self.dir.join(image) }
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A relative path spelled with `/` whatever the platform, so golden files are portable.
fn slash_path(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    parts.join("/")
}

fn entry_from_line(line: EntryLine) -> Result<GoldenEntry, String> {
    if line.image.is_empty() {
        return Err("`image` is empty".into());
    }
    if let Some(digest) = &line.sha256
        && !(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        return Err(format!("`sha256` {digest:?} is not 64 lowercase hex digits"));
    }
    let expected = match (line.label, line.class_index, line.confidence, line.error) {
        (Some(label), Some(class_index), Some(confidence), None) => {
            if !confidence.is_finite() {
                return Err(format!("`confidence` {confidence} is not finite"));
            }
            Outcome::Class(Classification { label, class_index, confidence })
        }
        (None, None, None, Some(error)) => Outcome::Error { error },
        _ => {
            return Err(
                "an image line needs either `label`, `class_index` and `confidence`, or `error`".into()
            );
        }
    };
    Ok(GoldenEntry { image: line.image, sha256: line.sha256, expected })
}

fn entry_line(entry: &GoldenEntry) -> EntryLine {
    let mut line = EntryLine {
        image: entry.image.clone(),
        sha256: entry.sha256.clone(),
        label: None,
        class_index: None,
        confidence: None,
        error: None,
    };
    match &entry.expected {
        Outcome::Class(c) => {
            line.label = Some(c.label.clone());
            line.class_index = Some(c.class_index);
            line.confidence = Some(c.confidence);
        }
        Outcome::Error { error } => line.error = Some(error.clone()),
    }
    line
}

/// The overall result of a check, and the exit status `kiln check` maps it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every answer matches within tolerance (every threshold holds).
    Pass,
    /// The artifact answers differently: a changed label, a confidence beyond tolerance, a threshold
    /// broken.
    Regression,
    /// Some golden inputs are missing or changed, so the comparison cannot be trusted.
    InputProblem,
}

/// What is wrong with one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FindingKind {
    /// The answer changed: another label or class, or an error where there was a class (or back).
    AnswerChanged {
        /// The recorded answer.
        expected: Outcome,
        /// The answer now.
        actual: Outcome,
    },
    /// Same label, but the confidence moved beyond the tolerance.
    ConfidenceMoved {
        /// The (unchanged) label.
        label: String,
        /// The recorded confidence.
        expected: f32,
        /// The confidence now.
        actual: f32,
        /// |actual - expected|.
        delta: f32,
    },
    /// The image's bytes differ from the recorded sha256: the input changed, not the model.
    InputChanged {
        /// sha256 in the golden file.
        expected_sha256: String,
        /// sha256 of the file now.
        actual_sha256: String,
    },
    /// The image cannot be read.
    InputMissing {
        /// The operating system's error.
        reason: String,
    },
}

impl FindingKind {
    fn is_input_problem(&self) -> bool {
        matches!(self, FindingKind::InputChanged { .. } | FindingKind::InputMissing { .. })
    }
}

/// One image that failed the check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// The image as the golden file names it.
    pub image: String,
    /// What is wrong.
    #[serde(flatten)]
    pub kind: FindingKind,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let image = &self.image;
        match &self.kind {
            FindingKind::AnswerChanged { expected, actual } => {
                write!(f, "FAIL  {image}: answer changed\n        was {expected}\n        now {actual}")
            }
            FindingKind::ConfidenceMoved { label, expected, actual, delta } => write!(
                f,
                "FAIL  {image}: confidence of {label:?} moved {expected:.6} -> {actual:.6} (|delta| {delta:.2e})"
            ),
            FindingKind::InputChanged { expected_sha256, actual_sha256 } => write!(
                f,
                "INPUT {image}: the file changed since the golden file was written (sha256 {}… recorded, {}… \
                 now); regenerate the golden file if the change is intended",
                &expected_sha256[..12.min(expected_sha256.len())],
                &actual_sha256[..12.min(actual_sha256.len())]
            ),
            FindingKind::InputMissing { reason } => write!(f, "INPUT {image}: cannot read it: {reason}"),
        }
    }
}

/// The result of rerunning a golden file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GoldenReport {
    /// Pass, regression or input problem.
    pub verdict: Verdict,
    /// The artifact version directory that was checked.
    pub artifact: PathBuf,
    /// The tolerance applied to confidences.
    pub tolerance: f32,
    /// Images in the golden file.
    pub images: usize,
    /// Images whose answer was compared (readable and unchanged inputs).
    pub compared: usize,
    /// Largest |delta confidence| among images with an unchanged label.
    pub max_delta: f32,
    /// Every image that failed, in golden-file order.
    pub findings: Vec<Finding>,
    /// The answer now of every compared image, by index into the golden file's entries: what
    /// `--report` draws its histogram and class table from (not in the JSON report, which lists findings).
    #[serde(skip)]
    pub answers: Vec<(usize, Outcome)>,
}

impl fmt::Display for GoldenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        let regressions = self.findings.iter().filter(|x| !x.kind.is_input_problem()).count();
        let inputs = self.findings.len() - regressions;
        writeln!(
            f,
            "{} images, {} compared against {} (tolerance {:.1e}): {regressions} regressions, {inputs} input \
             problems, max |delta confidence| {:.2e}",
            self.images,
            self.compared,
            self.artifact.display(),
            self.tolerance,
            self.max_delta
        )?;
        let verdict = match self.verdict {
            Verdict::Pass => "PASS",
            Verdict::Regression => "FAIL: the artifact's answers drifted from the golden file",
            Verdict::InputProblem => {
                "ERROR: golden inputs are missing or changed; the comparison is not valid"
            }
        };
        writeln!(f, "{verdict}")
    }
}

/// Compares one recorded answer with the answer now; `None` when it holds within `tolerance`.
fn compare_answer(expected: &Outcome, actual: &Outcome, tolerance: f32) -> Option<FindingKind> {
    if !expected.same_answer(actual) {
        return Some(FindingKind::AnswerChanged { expected: expected.clone(), actual: actual.clone() });
    }
    match (expected, actual) {
        (Outcome::Class(e), Outcome::Class(a)) => {
            let delta = (a.confidence - e.confidence).abs();
            (!at_most(f64::from(delta), f64::from(tolerance))).then(|| FindingKind::ConfidenceMoved {
                label: e.label.clone(),
                expected: e.confidence,
                actual: a.confidence,
                delta,
            })
        }
        _ => None,
    }
}

/// Reruns every image of `golden` through `model` and compares the answers: a changed label or class, a
/// new or vanished error, or a confidence that moved more than `tolerance` is a regression; a missing or
/// changed image is an input problem. Engine failures (not per-image errors) are errors. Each batch is
/// reported to `progress`.
pub fn check_golden(
    model: &Model,
    golden: &GoldenFile,
    tolerance: f32,
    progress: &dyn Progress,
) -> Result<GoldenReport, CheckError> {
    progress.start(
        &format!("rerunning golden images with {}", model.dir().display()),
        Some(golden.entries.len() as u64),
    );
    let mut findings = Vec::new();
    let mut compared = 0;
    let mut max_delta = 0.0f32;
    let mut answers = Vec::new();
    let batch = crate::observe::IMAGES_PER_BATCH;
    for (chunk_index, chunk) in golden.entries.chunks(batch).enumerate() {
        let mut runnable = Vec::new();
        for (index, entry) in chunk.iter().enumerate().map(|(i, e)| (chunk_index * batch + i, e)) {
            let path = golden.image_path(entry);
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    let reason = format!("{}: {e}", path.display());
                    findings.push(Finding {
                        image: entry.image.clone(),
                        kind: FindingKind::InputMissing { reason },
                    });
                    continue;
                }
            };
            let actual_sha256 = sha256_hex(&bytes);
            if let Some(expected_sha256) = entry.sha256.as_ref().filter(|s| **s != actual_sha256) {
                let kind =
                    FindingKind::InputChanged { expected_sha256: expected_sha256.clone(), actual_sha256 };
                findings.push(Finding { image: entry.image.clone(), kind });
                continue;
            }
            runnable.push((index, entry, bytes));
        }
        let inputs: Vec<&[u8]> = runnable.iter().map(|(_, _, bytes)| bytes.as_slice()).collect();
        for ((index, entry, _), actual) in runnable.iter().zip(classify(model, &inputs)?) {
            compared += 1;
            if let (Outcome::Class(e), Outcome::Class(a)) = (&entry.expected, &actual)
                && e.label == a.label
            {
                max_delta = max_delta.max((a.confidence - e.confidence).abs());
            }
            if let Some(kind) = compare_answer(&entry.expected, &actual, tolerance) {
                findings.push(Finding { image: entry.image.clone(), kind });
            }
            answers.push((*index, actual));
        }
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    // Findings were collected per chunk (input problems first); report them in golden-file order.
    let order = |image: &str| golden.entries.iter().position(|e| e.image == image);
    findings.sort_by_key(|f| order(&f.image));
    let verdict = if findings.iter().any(|f| f.kind.is_input_problem()) {
        Verdict::InputProblem
    } else if findings.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Regression
    };
    Ok(GoldenReport {
        verdict,
        artifact: model.dir().to_path_buf(),
        tolerance,
        images: golden.entries.len(),
        compared,
        max_delta,
        findings,
        answers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn class(label: &str, class_index: usize, confidence: f32) -> Outcome {
        Outcome::Class(Classification { label: label.into(), class_index, confidence })
    }

    const DIGEST: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn sample() -> GoldenFile {
        GoldenFile {
            dir: PathBuf::from("/golden"),
            artifact: Some(ArtifactStamp {
                dir: PathBuf::from("/models/vit/3"),
                version: Some(3),
                manifest_sha256: DIGEST.into(),
                provenance: serde_json::json!({"exporter": "kiln-export 0.1.0"}),
            }),
            entries: vec![
                GoldenEntry {
                    image: "images/cat ▲.jpg".into(),
                    sha256: Some(DIGEST.into()),
                    expected: class("tabby cat", 281, 0.931_234_5),
                },
                GoldenEntry {
                    image: "/abs/broken.jpg".into(),
                    sha256: None,
                    expected: Outcome::Error { error: "truncated".into() },
                },
            ],
        }
    }

    #[test]
    fn golden_files_round_trip_through_disk_exactly() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("golden.jsonl");
        let golden = sample();
        golden.write(&path)?;
        let text = fs::read_to_string(&path)?;
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.starts_with("{\"kiln_golden\":1,"), "{text}");
        assert!(
            text.contains(r#"{"image":"/abs/broken.jpg","error":"truncated"}"#),
            "an error line has no class fields: {text}"
        );
        let read = GoldenFile::read(&path)?;
        assert_eq!(read.entries, golden.entries, "f32 confidences must survive JSON bit for bit");
        assert_eq!(read.artifact, golden.artifact);
        assert_eq!(read.dir, dir.path());
        assert_eq!(read.image_path(&read.entries[0]), dir.path().join("images/cat ▲.jpg"));
        assert_eq!(read.image_path(&read.entries[1]), Path::new("/abs/broken.jpg"));
        assert_eq!(fs::read_dir(dir.path())?.count(), 1, "the temporary file must be gone");
        Ok(())
    }

    #[test]
    fn a_header_is_optional_and_blank_lines_are_skipped() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("hand.jsonl");
        fs::write(&path, "\n{\"image\":\"a.jpg\",\"label\":\"x\",\"class_index\":0,\"confidence\":0.5}\n\n")?;
        let golden = GoldenFile::read(&path)?;
        assert_eq!(golden.artifact, None);
        assert_eq!(golden.entries.len(), 1);
        assert_eq!(golden.entries[0].expected, class("x", 0, 0.5));
        Ok(())
    }

    #[test]
    fn malformed_lines_are_refused_naming_file_and_line() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bad.jsonl");
        let good = r#"{"image":"a.jpg","label":"x","class_index":0,"confidence":0.5}"#;
        let cases = [
            ("not json", "expected"),
            (r#"{"image":"a.jpg","label":"x","class_index":0}"#, "either `label`"),
            (r#"{"image":"a.jpg","label":"x","class_index":0,"confidence":0.5,"error":"e"}"#, "either"),
            (
                r#"{"image":"a.jpg","label":"x","class_index":0,"confidence":0.5,"confidance":1}"#,
                "unknown field",
            ),
            (r#"{"image":"a.jpg","sha256":"ABC","error":"e"}"#, "64 lowercase hex"),
            (r#"{"image":"","error":"e"}"#, "`image` is empty"),
            (r#"{"kiln_golden":1,"artifact":{}}"#, "header must be the first line"),
        ];
        for (line, expected) in cases {
            fs::write(&path, format!("{good}\n{line}\n"))?;
            let err = GoldenFile::read(&path).err().ok_or_else(|| format!("accepted {line}"))?;
            let message = err.to_string();
            assert!(matches!(err, CheckError::GoldenParse { line: 2, .. }), "{line}: {message}");
            assert!(message.contains("bad.jsonl` line 2") && message.contains(expected), "{line}: {message}");
        }
        fs::write(&path, "{\"kiln_golden\":2}\n")?;
        let err = GoldenFile::read(&path).err().ok_or("a newer golden format was accepted")?;
        assert!(matches!(err, CheckError::GoldenFormat { found: 2, .. }), "{err}");
        fs::write(&path, "\n")?;
        let err = GoldenFile::read(&path).err().ok_or("an empty golden file was accepted")?;
        assert!(matches!(err, CheckError::NoImages { .. }), "{err}");
        Ok(())
    }

    #[test]
    fn answers_are_compared_by_label_class_and_tolerance() {
        let tolerance = 1e-3;
        assert_eq!(compare_answer(&class("cat", 1, 0.9), &class("cat", 1, 0.9009), tolerance), None);
        let moved = compare_answer(&class("cat", 1, 0.9), &class("cat", 1, 0.8), tolerance);
        match moved {
            Some(FindingKind::ConfidenceMoved { delta, .. }) => assert!((delta - 0.1).abs() < 1e-6),
            other => panic!("expected a confidence finding, got {other:?}"),
        }
        let nan = compare_answer(&class("cat", 1, 0.9), &class("cat", 1, f32::NAN), tolerance);
        assert!(matches!(nan, Some(FindingKind::ConfidenceMoved { .. })), "NaN must fail: {nan:?}");
        for actual in [class("dog", 1, 0.9), class("cat", 2, 0.9), Outcome::Error { error: "e".into() }] {
            let finding = compare_answer(&class("cat", 1, 0.9), &actual, tolerance);
            assert!(matches!(finding, Some(FindingKind::AnswerChanged { .. })), "{actual:?}: {finding:?}");
        }
        let errors = (Outcome::Error { error: "old".into() }, Outcome::Error { error: "new".into() });
        assert_eq!(compare_answer(&errors.0, &errors.1, tolerance), None);
    }

    #[test]
    fn findings_read_as_a_diff() {
        let changed = Finding {
            image: "images/chelsea.jpg".into(),
            kind: FindingKind::AnswerChanged {
                expected: class("red square", 3, 0.996),
                actual: class("cercle rouge", 0, 0.5),
            },
        };
        assert_eq!(
            changed.to_string(),
            "FAIL  images/chelsea.jpg: answer changed\n        was \"red square\" (class 3, confidence 0.9960)\n        \
             now \"cercle rouge\" (class 0, confidence 0.5000)"
        );
        let moved = Finding {
            image: "a.jpg".into(),
            kind: FindingKind::ConfidenceMoved {
                label: "cat".into(),
                expected: 0.5,
                actual: 0.75,
                delta: 0.25,
            },
        };
        assert_eq!(
            moved.to_string(),
            "FAIL  a.jpg: confidence of \"cat\" moved 0.500000 -> 0.750000 (|delta| 2.50e-1)"
        );
    }
}
