//! Versions in a local directory: `<base>/<number>/`, as `kiln export` publishes them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Listing, SourceError, VersionSource, VersionStamp};

/// A local base directory. Versions are served in place, so there is nothing to copy or clean up.
pub(crate) struct DirectorySource {
    base: PathBuf,
    /// Each version's directory as the last listing spelled it (`007` stays `007`).
    dirs: BTreeMap<u64, PathBuf>,
}

impl DirectorySource {
    pub(crate) fn new(base: PathBuf) -> DirectorySource {
        DirectorySource { base, dirs: BTreeMap::new() }
    }
}

/// Modification times of a version directory and its manifest: they change when a copy finishes or a
/// file is replaced, and cost two stats.
fn fingerprint(dir: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (mtime(dir), mtime(&dir.join(artifact::MANIFEST_FILE)))
}

impl VersionSource for DirectorySource {
    fn list(&mut self) -> Result<Listing, SourceError> {
        let found = artifact::list_versions(&self.base).map_err(SourceError::Listing)?;
        self.dirs = found.into_iter().map(|v| (v.version(), v.path().to_owned())).collect();
        Ok(self.dirs.iter().map(|(&version, dir)| (version, VersionStamp::of(&fingerprint(dir)))).collect())
    }

    fn materialize(&mut self, version: u64) -> Result<PathBuf, SourceError> {
        self.dirs.get(&version).cloned().ok_or(SourceError::NotListed(version))
    }

    fn retain_local(&mut self, _loaded: &BTreeSet<u64>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn lists_version_directories_and_stamps_change_with_the_manifest() -> TestResult {
        let base = tempfile::tempdir()?;
        for name in ["1", "007", ".kiln-tmp-3-1-1", "notes"] {
            std::fs::create_dir(base.path().join(name))?;
        }
        let mut source = DirectorySource::new(base.path().to_owned());
        let listing = source.list()?;
        assert_eq!(listing.keys().copied().collect::<Vec<_>>(), [1, 7]);
        assert_eq!(source.materialize(7)?, base.path().join("007"));
        assert!(matches!(source.materialize(3), Err(SourceError::NotListed(3))));

        std::fs::write(base.path().join("1").join(artifact::MANIFEST_FILE), "{}")?;
        let past = SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(base.path().join("1").join(artifact::MANIFEST_FILE))?
            .set_modified(past)?;
        let before = source.list()?[&1];
        std::fs::write(base.path().join("1").join(artifact::MANIFEST_FILE), "{ }")?;
        assert_ne!(source.list()?[&1], before);
        Ok(())
    }

    #[test]
    fn an_unlistable_base_is_a_listing_error() {
        let mut source = DirectorySource::new(PathBuf::from("/nonexistent/kiln/base"));
        assert!(matches!(source.list(), Err(SourceError::Listing(_))));
    }
}
