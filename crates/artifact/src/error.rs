//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong listing, publishing or loading an artifact.
///
/// Every message names the file or directory that failed, so an operator can act on it without a
/// debugger. I/O causes are attached as [`std::error::Error::source`], not repeated in the message: print
/// with `{:#}` (anyhow) to see the whole chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// A filesystem operation failed; `action` says which (`read`, `create`, `rename`, ...).
    #[error("cannot {action} `{path}`")]
    Io {
        /// What was being done, as a verb phrase (`read`, `create directory`, ...).
        action: &'static str,
        /// The path the operation was applied to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A base directory holds no version subdirectory, so there is nothing to resolve to.
    #[error(
        "no versions under `{base}`: it has no manifest.json and no subdirectory named by an integer \
         (a version directory looks like `{}/1/manifest.json`)",
        base.display()
    )]
    NoVersions {
        /// The base directory that was searched.
        base: PathBuf,
    },

    /// Two directories under one base spell the same version number (`1` and `01`), so which one is
    /// meant is ambiguous; kiln never creates this, someone copied a directory by hand.
    #[error("version {version} is ambiguous under `{}`: both `{first}` and `{second}` name it; remove one", base.display())]
    DuplicateVersion {
        /// The base directory holding both.
        base: PathBuf,
        /// The version number both names parse to.
        version: u64,
        /// One directory name.
        first: String,
        /// The other directory name.
        second: String,
    },

    /// Publishing would replace an existing version; versions are write-once.
    #[error("version {version} already exists at `{path}`; versions are write-once, publish a new number")]
    VersionExists {
        /// The requested version number.
        version: u64,
        /// The existing directory (possibly spelled with leading zeros).
        path: PathBuf,
    },

    /// A version number does not fit TF Serving's signed 64-bit version, or the next free number would not.
    #[error("version {version} under `{}` is out of range: versions are 0 to {max}", base.display())]
    VersionOutOfRange {
        /// The base directory.
        base: PathBuf,
        /// The number that is out of range (for "next version", the highest existing one plus one).
        version: u64,
        /// The largest allowed version, [`crate::MAX_VERSION`].
        max: u64,
    },

    /// A file name in a manifest or given to the writer is not a safe relative path inside the version
    /// directory (empty, absolute, `..`, backslash, reserved name, ...).
    #[error("invalid artifact file name `{name}`: {reason}")]
    InvalidFileName {
        /// The offending name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// The writer was asked to add the same file twice.
    #[error("artifact file `{name}` was already added to this export")]
    DuplicateFile {
        /// The name added twice.
        name: String,
    },

    /// A file the writer handed out with `file_path` was never written before `publish`.
    #[error("`{}` was reserved for the artifact but never written", path.display())]
    UnwrittenFile {
        /// Where the caller was supposed to write it (inside the temporary directory).
        path: PathBuf,
    },

    /// `manifest.sha256` is not a sha256 line for `manifest.json`.
    #[error("`{}` is malformed: expected `<64 lowercase hex digits>  manifest.json`", path.display())]
    ManifestDigestMalformed {
        /// Path of `manifest.sha256`.
        path: PathBuf,
    },

    /// `manifest.json` does not hash to what `manifest.sha256` records: one of the two is corrupt.
    #[error(
        "`{}` does not match manifest.sha256: expected sha256 {}…, found {}…",
        path.display(), digest_prefix(expected), digest_prefix(actual)
    )]
    ManifestDigestMismatch {
        /// Path of `manifest.json`.
        path: PathBuf,
        /// The digest recorded in `manifest.sha256`.
        expected: String,
        /// The digest of `manifest.json` as found.
        actual: String,
    },

    /// `manifest.json` is larger than [`crate::MAX_MANIFEST_BYTES`]; refused before reading it into memory.
    #[error("`{}` is {bytes} bytes, over the {max}-byte manifest limit", path.display())]
    ManifestTooLarge {
        /// Path of `manifest.json`.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },

    /// `manifest.json` is not valid JSON for this format version (syntax, a missing or unknown field, a
    /// wrong type).
    #[error("cannot parse `{}`", path.display())]
    ManifestParse {
        /// Path of `manifest.json`.
        path: PathBuf,
        /// serde_json's error, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// The manifest could not be serialized (only possible with values JSON cannot hold).
    #[error("cannot serialize the manifest for `{}`", path.display())]
    ManifestSerialize {
        /// Path the manifest was going to be written to.
        path: PathBuf,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },

    /// The artifact was written by a newer (or broken) kiln whose format this build cannot read.
    #[error(
        "`{}` has format_version {found}, but this build of kiln reads format_version 1 to {supported}; \
         use a kiln release that supports format_version {found}",
        path.display()
    )]
    UnsupportedFormatVersion {
        /// Path of `manifest.json`.
        path: PathBuf,
        /// The format_version found.
        found: u64,
        /// The newest format version this build reads, [`crate::FORMAT_VERSION`].
        supported: u32,
    },

    /// The manifest parses but breaks a rule of the format (graph file not listed, bad digest string,
    /// non-finite preprocessing constant, ...).
    #[error("`{}`: field `{field}` is invalid: {reason}", path.display())]
    ManifestInvalid {
        /// Path of `manifest.json` (or where it would be written).
        path: PathBuf,
        /// The field, as a JSON path (`graph.file`, `files["graph.nnef.tar"]`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// `manifest.json` or `manifest.sha256` is absent: the directory is not a (complete) version.
    #[error("`{}` is missing: a version directory holds manifest.json and manifest.sha256", path.display())]
    MissingManifest {
        /// The missing manifest file.
        path: PathBuf,
    },

    /// A file listed in the manifest is absent from the version directory.
    #[error("`{}` is listed in manifest.json but missing", path.display())]
    MissingFile {
        /// The missing file's path.
        path: PathBuf,
    },

    /// A listed file's content does not hash to the manifest's digest: it was modified or corrupted.
    #[error(
        "`{}` is corrupt: manifest.json lists sha256 {}…, the file hashes to {}…",
        path.display(), digest_prefix(expected), digest_prefix(actual)
    )]
    DigestMismatch {
        /// The corrupt file.
        path: PathBuf,
        /// Digest listed in the manifest.
        expected: String,
        /// Digest of the file as found.
        actual: String,
    },

    /// A file in the version directory is not listed in the manifest; refused because a runtime could
    /// otherwise pick up content nobody vouched for.
    #[error("`{}` is not listed in manifest.json; an artifact holds only the files it lists", path.display())]
    UnlistedFile {
        /// The unlisted file.
        path: PathBuf,
    },

    /// An entry in the version directory is neither a regular file nor a directory (symlink, socket, ...).
    #[error("`{}` is not a regular file; artifacts hold only regular files and directories", path.display())]
    NotRegularFile {
        /// The offending entry.
        path: PathBuf,
    },
}

/// How many hex digits of a digest an error shows: enough to tell two digests apart at a glance.
const DIGEST_PREFIX_LEN: usize = 12;

fn digest_prefix(digest: &str) -> &str {
    digest.get(..DIGEST_PREFIX_LEN).unwrap_or(digest)
}

impl ArtifactError {
    /// Builds an [`ArtifactError::Io`]; a constructor because every filesystem call needs one.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| ArtifactError::Io { action, path, source }
    }
}
