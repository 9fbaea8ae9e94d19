//! The `<base>/<version>` layout: which subdirectories are versions, and how a user's `--dir` resolves.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::ArtifactError;
use crate::manifest::MANIFEST_FILE;

/// The largest version number: TF Serving's versions are signed 64-bit (`Int64Value` on the wire), so a
/// larger directory name could not be addressed by a client.
pub const MAX_VERSION: u64 = i64::MAX as u64;

/// Name prefix of the hidden directories a writer builds an export in. It starts with `.` and is never a
/// number, so no version scan (kiln's or TF Serving's) mistakes a half-written export for a version.
pub const TEMP_DIR_PREFIX: &str = ".kiln-tmp-";

/// A version directory found under a base directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionDir {
    version: u64,
    path: PathBuf,
}

impl VersionDir {
    /// The version number the directory name spells.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The directory itself, `<base>/<name>`, with the name as found on disk (leading zeros kept).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn new(version: u64, path: PathBuf) -> Self {
        VersionDir { version, path }
    }
}

/// Parses a directory name as a version: one or more ASCII digits, leading zeros allowed (`007` is 7, as
/// in TF Serving), at most [`MAX_VERSION`]. Signs, spaces and anything else make it not a version.
pub fn parse_version(name: &str) -> Option<u64> {
    // `u64::from_str` alone would also accept a leading `+`.
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse::<u64>().ok().filter(|&v| v <= MAX_VERSION)
}

/// Lists the versions under `base`, sorted ascending.
///
/// A version is a subdirectory (symlinks to directories count, as deployments often link them) whose name
/// [`parse_version`] accepts; files, hidden and temporary directories and other names are ignored. Two
/// spellings of one number (`1` and `01`) are an [`ArtifactError::DuplicateVersion`] rather than a silent
/// pick, because which one a server would load is arbitrary.
pub fn list_versions(base: impl AsRef<Path>) -> Result<Vec<VersionDir>, ArtifactError> {
    let base = base.as_ref();
    let mut versions = Vec::new();
    for entry in fs::read_dir(base).map_err(ArtifactError::io("list directory", base))? {
        let entry = entry.map_err(ArtifactError::io("list directory", base))?;
        let Some(version) = entry.file_name().to_str().and_then(parse_version) else {
            continue;
        };
        let path = entry.path();
        // `metadata` follows symlinks; a dangling link or a plain file is not a version.
        if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            versions.push(VersionDir { version, path });
        }
    }
    versions.sort();
    if let Some(pair) = versions.windows(2).find(|pair| pair[0].version == pair[1].version) {
        let name = |v: &VersionDir| v.path.file_name().map(|n| n.to_string_lossy().into_owned());
        return Err(ArtifactError::DuplicateVersion {
            base: base.to_path_buf(),
            version: pair[0].version,
            first: name(&pair[0]).unwrap_or_default(),
            second: name(&pair[1]).unwrap_or_default(),
        });
    }
    Ok(versions)
}

/// The highest version under `base`, or `None` if it has none: what TF Serving's default `latest` policy
/// serves.
pub fn highest_version(base: impl AsRef<Path>) -> Result<Option<VersionDir>, ArtifactError> {
    Ok(list_versions(base)?.pop())
}

/// The number an export gets when the user does not pick one: one above the highest version, or 1 for an
/// empty base (TF Serving's examples start at 1).
///
/// Another exporter may take the same number before this one publishes; [`crate::ArtifactWriter`] with
/// `version: None` handles that by moving to the next number at publish time.
pub fn next_version(base: impl AsRef<Path>) -> Result<u64, ArtifactError> {
    let base = base.as_ref();
    match highest_version(base)? {
        None => Ok(1),
        Some(highest) if highest.version < MAX_VERSION => Ok(highest.version + 1),
        Some(highest) => Err(ArtifactError::VersionOutOfRange {
            base: base.to_path_buf(),
            version: highest.version + 1,
            max: MAX_VERSION,
        }),
    }
}

/// Resolves a user's `--dir`: a version directory (it holds `manifest.json`) is returned as is; any other
/// directory is a base and resolves to its highest version, or [`ArtifactError::NoVersions`].
///
/// The highest version is picked by number alone, like TF Serving; if it is half-copied by a tool that
/// does not use the write-once protocol, loading it fails naming the missing file.
pub fn resolve_dir(dir: impl AsRef<Path>) -> Result<PathBuf, ArtifactError> {
    let dir = dir.as_ref();
    if dir.join(MANIFEST_FILE).is_file() {
        return Ok(dir.to_path_buf());
    }
    match highest_version(dir)? {
        Some(highest) => Ok(highest.path),
        None => Err(ArtifactError::NoVersions { base: dir.to_path_buf() }),
    }
}

/// Removes temporary export directories under `base` that nobody has touched for `older_than`, and returns
/// the removed paths.
///
/// A killed exporter (`kill -9`, power loss) leaves its temporary directory behind; it is invisible as a
/// version but takes disk space. "Touched" is the newest modification time of the directory and
/// everything in it, so an export still streaming a large file is left alone as long as `older_than`
/// exceeds the longest pause between writes (minutes are safe; seconds are not).
pub fn remove_stale_temp_dirs(
    base: impl AsRef<Path>,
    older_than: Duration,
) -> Result<Vec<PathBuf>, ArtifactError> {
    let base = base.as_ref();
    let now = SystemTime::now();
    let mut removed = Vec::new();
    for entry in fs::read_dir(base).map_err(ArtifactError::io("list directory", base))? {
        let entry = entry.map_err(ArtifactError::io("list directory", base))?;
        if !entry.file_name().to_str().is_some_and(|n| n.starts_with(TEMP_DIR_PREFIX)) {
            continue;
        }
        let path = entry.path();
        if !entry.file_type().map_err(ArtifactError::io("stat", &path))?.is_dir() {
            continue;
        }
        let touched = newest_mtime(&path)?;
        // A modification time in the future (clock skew) counts as fresh.
        if now.duration_since(touched).is_ok_and(|age| age >= older_than) {
            fs::remove_dir_all(&path).map_err(ArtifactError::io("remove directory", &path))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// The newest modification time of `dir` and everything below it (symlinks not followed).
fn newest_mtime(dir: &Path) -> Result<SystemTime, ArtifactError> {
    let mtime = |path: &Path| {
        fs::symlink_metadata(path).and_then(|m| m.modified()).map_err(ArtifactError::io("stat", path))
    };
    let mut newest = mtime(dir)?;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).map_err(ArtifactError::io("list directory", &current))? {
            let path = entry.map_err(ArtifactError::io("list directory", &current))?.path();
            newest = newest.max(mtime(&path)?);
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                pending.push(path);
            }
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn version_names_parse_like_tf_serving_without_signs() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("0"), Some(0));
        assert_eq!(parse_version("000"), Some(0));
        assert_eq!(parse_version("00000123"), Some(123));
        assert_eq!(parse_version("9223372036854775807"), Some(MAX_VERSION));
        assert_eq!(parse_version("0009223372036854775807"), Some(MAX_VERSION));
        assert_eq!(parse_version("9223372036854775808"), None);
        for not_a_version in ["", "+1", "-1", " 1", "1 ", "1a", ".1", ".kiln-tmp-1-2-3", "１"] {
            assert_eq!(parse_version(not_a_version), None, "`{not_a_version}`");
        }
    }

    #[test]
    fn listing_sorts_numerically_and_skips_non_versions() -> TestResult {
        let base = tempfile::tempdir()?;
        for name in ["10", "2", "007", ".kiln-tmp-11-1-1", "latest", "12.bak"] {
            fs::create_dir(base.path().join(name))?;
        }
        fs::write(base.path().join("99"), b"a file is not a version")?;
        let versions: Vec<u64> = list_versions(base.path())?.iter().map(VersionDir::version).collect();
        assert_eq!(versions, [2, 7, 10]);
        let highest = highest_version(base.path())?.ok_or("no highest version")?;
        assert_eq!(highest.path(), base.path().join("10"));
        assert_eq!(next_version(base.path())?, 11);
        Ok(())
    }

    #[test]
    fn next_version_of_empty_base_is_one_and_refuses_overflow() -> TestResult {
        let base = tempfile::tempdir()?;
        assert_eq!(next_version(base.path())?, 1);
        assert_eq!(highest_version(base.path())?, None);
        fs::create_dir(base.path().join(MAX_VERSION.to_string()))?;
        let err = next_version(base.path()).err().ok_or("overflow accepted")?;
        assert!(
            matches!(err, ArtifactError::VersionOutOfRange { version, .. } if version == MAX_VERSION + 1)
        );
        Ok(())
    }

    #[test]
    fn duplicate_spellings_of_a_version_are_refused_naming_both() -> TestResult {
        let base = tempfile::tempdir()?;
        fs::create_dir(base.path().join("1"))?;
        fs::create_dir(base.path().join("01"))?;
        let err = list_versions(base.path()).err().ok_or("duplicate accepted")?;
        let message = err.to_string();
        assert!(matches!(err, ArtifactError::DuplicateVersion { version: 1, .. }), "{message}");
        assert!(message.contains("`01`") && message.contains("`1`"), "{message}");
        Ok(())
    }

    #[test]
    fn resolve_takes_a_version_dir_as_is_and_a_base_to_its_highest() -> TestResult {
        let base = tempfile::tempdir()?;
        for version in ["1", "3"] {
            fs::create_dir(base.path().join(version))?;
            fs::write(base.path().join(version).join(MANIFEST_FILE), b"{}")?;
        }
        assert_eq!(resolve_dir(base.path())?, base.path().join("3"));
        assert_eq!(resolve_dir(base.path().join("1"))?, base.path().join("1"));

        let empty = tempfile::tempdir()?;
        fs::create_dir(empty.path().join(".kiln-tmp-1-1-1"))?;
        let err = resolve_dir(empty.path()).err().ok_or("empty base resolved")?;
        assert!(matches!(err, ArtifactError::NoVersions { .. }));
        assert!(err.to_string().contains(&empty.path().display().to_string()));

        let missing = base.path().join("nope");
        let err = resolve_dir(&missing).err().ok_or("missing dir resolved")?;
        assert!(matches!(err, ArtifactError::Io { .. }));
        assert!(err.to_string().contains("nope"));
        Ok(())
    }

    #[test]
    fn stale_temp_dirs_are_removed_fresh_ones_and_versions_kept() -> TestResult {
        let base = tempfile::tempdir()?;
        let temp = base.path().join(format!("{TEMP_DIR_PREFIX}4-1-1"));
        fs::create_dir_all(temp.join("sub"))?;
        fs::write(temp.join("sub/graph.nnef.tar"), b"partial")?;
        fs::create_dir(base.path().join("1"))?;

        assert!(remove_stale_temp_dirs(base.path(), Duration::from_secs(3600))?.is_empty());
        assert!(temp.exists());
        assert_eq!(remove_stale_temp_dirs(base.path(), Duration::ZERO)?, std::slice::from_ref(&temp));
        assert!(!temp.exists());
        assert!(base.path().join("1").exists());
        Ok(())
    }
}
