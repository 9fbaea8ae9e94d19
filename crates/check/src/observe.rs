//! Running an artifact over image files: what each image's answer was, and which bytes it was given.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use runtime::{Model, Progress};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::CheckError;

/// Images classified per `predict` call: bounds memory (every file is held until its batch ran) while
/// keeping the batch large enough for the graph to run efficiently.
pub(crate) const IMAGES_PER_BATCH: usize = 16;

/// A successful top-1 answer, as a client of `kiln run` or the server sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    /// Class name.
    pub label: String,
    /// Index of the class in the artifact's labels.
    pub class_index: usize,
    /// Softmax probability of the class.
    pub confidence: f32,
}

/// What an artifact answered for one image: a class, or the per-instance error a client would get.
///
/// Errors are outcomes too, so a golden set can pin down that a broken image keeps being refused.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    /// The image was classified.
    Class(Classification),
    /// The image was refused; the runtime's message.
    Error {
        /// The runtime's message for this instance.
        error: String,
    },
}

impl Outcome {
    /// Whether two outcomes give a client the same answer: the same label and class, or both an error
    /// (error wording is not part of the contract).
    pub fn same_answer(&self, other: &Outcome) -> bool {
        match (self, other) {
            (Outcome::Class(a), Outcome::Class(b)) => a.label == b.label && a.class_index == b.class_index,
            (Outcome::Error { .. }, Outcome::Error { .. }) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Outcome {
    /// `"label" (class 3, confidence 0.9960)` or `error: <message>`: what a diff line shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Class(c) => {
                write!(f, "{:?} (class {}, confidence {:.4})", c.label, c.class_index, c.confidence)
            }
            Outcome::Error { error } => write!(f, "error: {error}"),
        }
    }
}

/// One image file run through an artifact.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    /// The file as given.
    pub image: PathBuf,
    /// sha256 of the file's bytes, lowercase hex.
    pub sha256: String,
    /// What the artifact answered.
    pub outcome: Outcome,
}

/// Every regular, non-hidden file under `dir`, recursively, sorted by path so runs and golden files
/// are in a stable order. Files that are not images are kept: the artifact's error for them is an
/// outcome like any other.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, CheckError> {
    let mut images = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).map_err(CheckError::io("list directory", &current))? {
            let entry = entry.map_err(CheckError::io("list directory", &current))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let metadata = fs::metadata(&path).map_err(CheckError::io("stat", &path))?;
            if metadata.is_dir() {
                pending.push(path);
            } else if metadata.is_file() {
                images.push(path);
            }
        }
    }
    if images.is_empty() {
        return Err(CheckError::NoImages { path: dir.to_path_buf() });
    }
    images.sort();
    Ok(images)
}

/// Lowercase hex sha256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Classifies each image file with `model`, in order, reporting each batch to `progress`. A file that
/// cannot be read is an error (the check cannot be carried out); an image the model refuses is an
/// [`Outcome::Error`].
pub fn observe(
    model: &Model,
    images: &[PathBuf],
    progress: &dyn Progress,
) -> Result<Vec<Observation>, CheckError> {
    let mut observations = Vec::with_capacity(images.len());
    progress.start(&format!("classifying images with {}", model.dir().display()), Some(images.len() as u64));
    for chunk in images.chunks(IMAGES_PER_BATCH) {
        let bytes = chunk
            .iter()
            .map(|path| fs::read(path).map_err(CheckError::io("read image", path)))
            .collect::<Result<Vec<_>, _>>()?;
        let inputs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        for ((path, bytes), outcome) in chunk.iter().zip(&bytes).zip(classify(model, &inputs)?) {
            observations.push(Observation { image: path.clone(), sha256: sha256_hex(bytes), outcome });
        }
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    Ok(observations)
}

/// Runs one batch of inputs; each gets its own outcome, an engine failure fails the batch.
pub(crate) fn classify(model: &Model, inputs: &[&[u8]]) -> Result<Vec<Outcome>, CheckError> {
    let results = model
        .predict(inputs)
        .map_err(|source| CheckError::Inference { dir: model.dir().to_path_buf(), source })?;
    Ok(results
        .into_iter()
        .map(|result| match result {
            Ok(p) => Outcome::Class(Classification {
                label: p.label,
                class_index: p.class_index,
                confidence: p.confidence,
            }),
            Err(e) => Outcome::Error { error: e.to_string() },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn class(label: &str, class_index: usize, confidence: f32) -> Outcome {
        Outcome::Class(Classification { label: label.into(), class_index, confidence })
    }

    #[test]
    fn images_are_listed_recursively_sorted_without_hidden_entries() -> TestResult {
        let dir = tempfile::tempdir()?;
        fs::create_dir_all(dir.path().join("b/nested"))?;
        fs::create_dir_all(dir.path().join(".git"))?;
        for name in ["z.jpg", "a.png", "b/nested/c.jpg", "b/readme.txt", ".hidden.jpg", ".git/x.jpg"] {
            fs::write(dir.path().join(name), b"x")?;
        }
        let found: Vec<PathBuf> = list_images(dir.path())?
            .into_iter()
            .map(|p| p.strip_prefix(dir.path()).map(Path::to_path_buf))
            .collect::<Result<_, _>>()?;
        let expected: Vec<PathBuf> =
            ["a.png", "b/nested/c.jpg", "b/readme.txt", "z.jpg"].iter().map(PathBuf::from).collect();
        assert_eq!(found, expected);
        Ok(())
    }

    #[test]
    fn an_empty_image_directory_is_refused_naming_it() -> TestResult {
        let dir = tempfile::tempdir()?;
        fs::create_dir(dir.path().join(".only-hidden"))?;
        let err = list_images(dir.path()).err().ok_or("an empty directory was accepted")?;
        assert!(matches!(err, CheckError::NoImages { .. }));
        assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
        Ok(())
    }

    #[test]
    fn same_answer_compares_label_and_class_but_not_confidence_or_error_text() {
        assert!(class("cat", 1, 0.9).same_answer(&class("cat", 1, 0.2)));
        assert!(!class("cat", 1, 0.9).same_answer(&class("dog", 1, 0.9)));
        assert!(!class("cat", 1, 0.9).same_answer(&class("cat", 2, 0.9)));
        let (a, b) = (Outcome::Error { error: "x".into() }, Outcome::Error { error: "y".into() });
        assert!(a.same_answer(&b));
        assert!(!a.same_answer(&class("cat", 1, 0.9)));
    }

    #[test]
    fn outcomes_display_as_diff_lines_and_serialize_flat() -> TestResult {
        assert_eq!(
            class("red square", 3, 0.99604).to_string(),
            "\"red square\" (class 3, confidence 0.9960)"
        );
        let error = Outcome::Error { error: "empty input".into() };
        assert_eq!(error.to_string(), "error: empty input");
        assert_eq!(serde_json::to_value(&error)?, serde_json::json!({"error": "empty input"}));
        let json = serde_json::to_value(class("cat", 1, 0.5))?;
        assert_eq!(json, serde_json::json!({"label": "cat", "class_index": 1, "confidence": 0.5}));
        Ok(())
    }
}
