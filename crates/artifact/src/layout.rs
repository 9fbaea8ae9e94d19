//! What may live inside a version directory: safe relative file names and the walk that finds every file.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::ArtifactError;
use crate::manifest::{MANIFEST_DIGEST_FILE, MANIFEST_FILE};

/// Checks that `name` is a `/`-separated relative path that stays inside the version directory and does
/// not shadow the manifest, so a manifest can never make a reader open `../../etc/passwd`.
pub(crate) fn check_file_name(name: &str) -> Result<(), ArtifactError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.starts_with('/') {
        Some("it is absolute; names are relative to the version directory")
    } else if name.contains('\\') {
        Some("it contains `\\`; the separator is `/`")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else if name.contains(':') {
        Some("it contains `:`, which is a drive or stream separator on Windows")
    } else if name.split('/').any(str::is_empty) {
        Some("it has an empty path component (`//` or a trailing `/`)")
    } else if name.split('/').any(|c| c == "." || c == "..") {
        Some("it has a `.` or `..` component")
    } else if name == MANIFEST_FILE || name == MANIFEST_DIGEST_FILE {
        Some("the manifest and its digest are written by publish, not listed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ArtifactError::InvalidFileName { name: name.to_owned(), reason }),
        None => Ok(()),
    }
}

/// Joins a checked `/`-separated name onto `dir` component by component, so the result is right on
/// platforms whose separator is not `/`.
pub(crate) fn join_name(dir: &Path, name: &str) -> PathBuf {
    name.split('/').fold(dir.to_path_buf(), |path, component| path.join(component))
}

/// One entry found under a directory tree.
pub(crate) enum Entry {
    /// A regular file, with its `/`-separated name relative to the walked root.
    File(String),
    /// A directory (the root excluded); listed so publish can fsync it.
    Dir(PathBuf),
}

/// Lists every entry under `root`, without following symlinks. Entries that are neither regular files nor
/// directories, and names that are not UTF-8, are refused: an artifact is plain files a manifest can name.
pub(crate) fn walk(root: &Path) -> Result<Vec<Entry>, ArtifactError> {
    let mut entries = Vec::new();
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        for entry in fs::read_dir(&dir).map_err(ArtifactError::io("list directory", &dir))? {
            let entry = entry.map_err(ArtifactError::io("list directory", &dir))?;
            let path = entry.path();
            let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(ArtifactError::UnlistedFile { path });
            };
            let name = format!("{prefix}{file_name}");
            let file_type = entry.file_type().map_err(ArtifactError::io("stat", &path))?;
            if file_type.is_dir() {
                pending.push((path.clone(), format!("{name}/")));
                entries.push(Entry::Dir(path));
            } else if file_type.is_file() {
                entries.push(Entry::File(name));
            } else {
                return Err(ArtifactError::NotRegularFile { path });
            }
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_reserved_names_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            ".",
            "a//b",
            "a/",
            "a\\b",
            "c:x",
            "manifest.json",
            "manifest.sha256",
        ] {
            assert!(
                matches!(check_file_name(bad), Err(ArtifactError::InvalidFileName { .. })),
                "`{bad}` should be refused"
            );
        }
        for good in ["graph.nnef.tar", "warmup/cat.jpg", "a/manifest.json", ".hidden", "..x"] {
            assert!(check_file_name(good).is_ok(), "`{good}` should be accepted");
        }
    }
}
