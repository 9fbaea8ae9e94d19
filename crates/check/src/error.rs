//! The one error type of this crate: everything that stops a check from producing a verdict.

use std::io;
use std::path::PathBuf;

/// Why a check could not be carried out. A check that runs and finds drift is not an error: that is a
/// report with a failing [`crate::Verdict`]. These are the cases where no verdict can be trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// A file or directory could not be read or written; `action` says which.
    #[error("cannot {action} `{}`", path.display())]
    Io {
        /// What was being done (`read`, `list directory`, ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A line of a golden file is not valid JSON of the golden format, or breaks one of its rules.
    #[error("`{}` line {line}: {reason}", path.display())]
    GoldenParse {
        /// The golden file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },

    /// The golden file was written by a newer kiln whose golden format this build cannot read.
    #[error("`{}` has golden format {found}, this build reads format {supported}", path.display())]
    GoldenFormat {
        /// The golden file.
        path: PathBuf,
        /// The `kiln_golden` value found in its header.
        found: u64,
        /// The newest format this build reads, [`crate::GOLDEN_FORMAT`].
        supported: u32,
    },

    /// There is nothing to check: the image directory or the golden file holds no image.
    #[error("no images in `{}`: a check needs at least one", path.display())]
    NoImages {
        /// The directory or golden file.
        path: PathBuf,
    },

    /// The artifact is missing, corrupt, of an unsupported format version, or its graph does not load.
    #[error("artifact `{}` failed to load", dir.display())]
    Load {
        /// The directory given.
        dir: PathBuf,
        /// The runtime's error, which names the file at fault.
        #[source]
        source: runtime::RuntimeError,
    },

    /// The artifact's `serving_default` signature is not the string-in, label-and-confidence-out contract
    /// every kiln runtime and server relies on.
    #[error("`{}`: signature `serving_default` is not servable: {reason}", manifest.display())]
    Signature {
        /// The artifact's `manifest.json`.
        manifest: PathBuf,
        /// Which part of the signature is wrong.
        reason: String,
    },

    /// A warm-up input listed in the manifest does not classify: a server with warm-up enabled would
    /// refuse to load this version.
    #[error("warm-up input `{}` does not classify: {reason}", file.display())]
    Warmup {
        /// The warm-up file.
        file: PathBuf,
        /// The runtime's error for it.
        reason: String,
    },

    /// The engine failed on a whole batch (not one image): the artifact cannot be trusted to run.
    #[error("inference failed on `{}`", dir.display())]
    Inference {
        /// The artifact's version directory.
        dir: PathBuf,
        /// The runtime's error.
        #[source]
        source: runtime::RuntimeError,
    },
}

impl CheckError {
    /// Builds a [`CheckError::Io`]; a constructor because every filesystem call needs one.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| CheckError::Io { action, path, source }
    }
}
