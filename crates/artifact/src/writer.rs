//! Write-once publishing: build a version in a hidden directory, then rename it into place atomically.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::content::content_digest;
use crate::digest::{copy_hashed, manifest_digest_line, sha256_bytes, sha256_file};
use crate::error::ArtifactError;
use crate::layout::{Entry, check_file_name, join_name, walk};
use crate::load::Artifact;
use crate::manifest::{FORMAT_VERSION, MANIFEST_DIGEST_FILE, MANIFEST_FILE, Manifest};
use crate::version::{
    MAX_VERSION, TEMP_DIR_PREFIX, VersionDir, highest_version, list_versions, next_version,
};

/// How often an auto-numbered publish moves on to the next number when concurrent exporters keep taking
/// the one it picked; beyond this something is wrong rather than busy.
const AUTO_VERSION_ATTEMPTS: usize = 64;

/// What [`ArtifactWriter::publish`] or [`ArtifactWriter::publish_if_changed`] left under the base.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// The new version, or, when `published` is false, the existing one with the same content.
    pub dir: VersionDir,
    /// That version's manifest, `files` filled in.
    pub manifest: Manifest,
    /// The content digest both versions share (`FORMAT.md`, "Content digest"): what
    /// [`Artifact::content_digest`] reports for the version.
    pub content_digest: String,
    /// False when `publish_if_changed` found the newest version already holding this content.
    pub published: bool,
}

/// Builds one artifact version in a hidden temporary directory inside `<base>` and publishes it with an
/// atomic rename that never replaces an existing version.
///
/// Until [`publish`](Self::publish) succeeds nothing under `<base>` looks like a version: a dropped
/// writer removes its temporary directory, and a killed process leaves only a `.kiln-tmp-*` directory
/// that version scans ignore and [`crate::remove_stale_temp_dirs`] cleans up.
#[derive(Debug)]
pub struct ArtifactWriter {
    base: PathBuf,
    version: Option<u64>,
    temp_dir: PathBuf,
    /// Set once the temporary directory has become the version, so `Drop` leaves it alone.
    published: bool,
    /// Digest of each added file; `None` for files handed out by `file_path`, hashed at publish.
    files: BTreeMap<String, Option<String>>,
}

impl ArtifactWriter {
    /// Starts an export into `base` (created if missing).
    ///
    /// With `Some(version)` the export publishes exactly that number and is refused now, before any work,
    /// if it already exists. With `None` the number is chosen at publish time as the next free one, so
    /// concurrent exporters into one base each get their own.
    pub fn create(base: impl AsRef<Path>, version: Option<u64>) -> Result<Self, ArtifactError> {
        let base = base.as_ref().to_path_buf();
        fs::create_dir_all(&base).map_err(ArtifactError::io("create directory", &base))?;
        if let Some(version) = version {
            check_version_free(&base, version)?;
        }
        let label = version.map_or_else(|| "next".to_owned(), |v| v.to_string());
        let temp_dir = create_temp_dir(&base, &label)?;
        Ok(ArtifactWriter { base, version, temp_dir, published: false, files: BTreeMap::new() })
    }

    /// The base directory the version will be published into.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The version number requested at [`create`](Self::create); `None` means "next free at publish".
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// The hidden directory the export is built in; it disappears when the writer is published or dropped.
    pub fn temp_dir(&self) -> &Path {
        &self.temp_dir
    }

    /// Adds a file with the given content, written and fsynced now.
    pub fn write_file(&mut self, name: &str, bytes: &[u8]) -> Result<(), ArtifactError> {
        let path = self.reserve(name)?;
        write_synced(&path, bytes)?;
        self.files.insert(name.to_owned(), Some(sha256_bytes(bytes)));
        Ok(())
    }

    /// Adds a copy of the file at `source`, streamed in chunks (a 330 MB graph is never held in memory)
    /// and hashed in the same pass.
    pub fn copy_file(&mut self, name: &str, source: impl AsRef<Path>) -> Result<(), ArtifactError> {
        let path = self.reserve(name)?;
        let digest = copy_hashed(source.as_ref(), &path)?;
        self.files.insert(name.to_owned(), Some(digest));
        Ok(())
    }

    /// Registers a file the caller writes itself (for example a graph serializer that wants a path) and
    /// returns where to write it, with parent directories created. [`publish`](Self::publish) hashes and
    /// fsyncs it, and fails if it was never written.
    pub fn file_path(&mut self, name: &str) -> Result<PathBuf, ArtifactError> {
        let path = self.reserve(name)?;
        self.files.insert(name.to_owned(), None);
        Ok(path)
    }

    /// Validates `name`, refuses duplicates, creates its parent directories and returns its path.
    fn reserve(&mut self, name: &str) -> Result<PathBuf, ArtifactError> {
        check_file_name(name)?;
        if self.files.contains_key(name) {
            return Err(ArtifactError::DuplicateFile { name: name.to_owned() });
        }
        let path = join_name(self.temp_dir(), name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(ArtifactError::io("create directory", parent))?;
        }
        Ok(path)
    }

    /// Finishes the export: fills `manifest.files` with the sha256 of every added file (replacing whatever
    /// the caller put there), writes `manifest.json` and `manifest.sha256`, fsyncs every file and
    /// directory, and renames the temporary directory to `<base>/<version>`.
    ///
    /// The rename never replaces anything: if the version exists (under any spelling such as `01`), or a
    /// concurrent publisher takes it first, an explicit version fails with
    /// [`ArtifactError::VersionExists`] and an automatic one moves on to the next number. On any error the
    /// temporary directory is removed and existing versions are untouched.
    pub fn publish(self, manifest: Manifest) -> Result<Publication, ArtifactError> {
        self.finish(manifest, false)
    }

    /// Like [`publish`](Self::publish), unless the newest version under the base already has the content
    /// digest this one would have: then nothing is published, the temporary directory is removed, and the
    /// [`Publication`] names that version with `published: false`. So a pipeline that re-exports unchanged
    /// inputs does not make servers load an identical new version.
    ///
    /// Only the newest version counts (an older one with the same content is not the one being served),
    /// and only if it verifies: one that fails [`Artifact::open`] is not the same content, so a new
    /// version is published. Two exporters running at once may both publish.
    pub fn publish_if_changed(self, manifest: Manifest) -> Result<Publication, ArtifactError> {
        self.finish(manifest, true)
    }

    fn finish(mut self, mut manifest: Manifest, if_changed: bool) -> Result<Publication, ArtifactError> {
        let temp_dir = self.temp_dir.clone();
        let manifest_path = temp_dir.join(MANIFEST_FILE);
        if manifest.format_version != FORMAT_VERSION {
            return Err(ArtifactError::ManifestInvalid {
                path: manifest_path,
                field: "format_version".into(),
                reason: format!("{} given, but this build writes {FORMAT_VERSION}", manifest.format_version),
            });
        }
        manifest.files = self.finish_files()?;
        let dirs = self.check_no_strays()?;
        manifest.check(&manifest_path)?;

        let mut json = serde_json::to_vec_pretty(&manifest)
            .map_err(|source| ArtifactError::ManifestSerialize { path: manifest_path.clone(), source })?;
        json.push(b'\n');
        // From the bytes about to be written, exactly as `Artifact::open` will compute it.
        let stored: serde_json::Value = serde_json::from_slice(&json)
            .map_err(|source| ArtifactError::ManifestParse { path: manifest_path.clone(), source })?;
        let content_digest = content_digest(&stored);
        if if_changed && let Some((dir, manifest)) = self.newest_version_with(&content_digest)? {
            // Dropping `self` removes the temporary directory.
            return Ok(Publication { dir, manifest, content_digest, published: false });
        }
        write_synced(&manifest_path, &json)?;
        let digest_line = manifest_digest_line(&sha256_bytes(&json));
        write_synced(&temp_dir.join(MANIFEST_DIGEST_FILE), digest_line.as_bytes())?;
        // Every directory entry must be durable before the rename can expose the version.
        for dir in dirs.iter().chain([&temp_dir]) {
            fsync_dir(dir)?;
        }

        let dir = self.rename_into_place()?;
        self.published = true;
        // The version is visible now; this only makes the rename itself survive a power loss.
        File::open(&self.base)
            .and_then(|d| d.sync_all())
            .map_err(ArtifactError::io("fsync (after publishing into it)", &self.base))?;
        Ok(Publication { dir, manifest, content_digest, published: true })
    }

    /// The newest version under the base, with its manifest, if it verifies and has `content_digest`.
    fn newest_version_with(
        &self,
        content_digest: &str,
    ) -> Result<Option<(VersionDir, Manifest)>, ArtifactError> {
        let Some(newest) = highest_version(&self.base)? else {
            return Ok(None);
        };
        Ok(match Artifact::open(newest.path()) {
            Ok(artifact) if artifact.content_digest() == content_digest => {
                Some((newest, artifact.into_manifest()))
            }
            _ => None,
        })
    }

    /// Hashes and fsyncs the files handed out by `file_path`, and returns the complete digest map.
    fn finish_files(&self) -> Result<BTreeMap<String, String>, ArtifactError> {
        let mut files = BTreeMap::new();
        for (name, digest) in &self.files {
            let digest = match digest {
                Some(digest) => digest.clone(),
                None => {
                    let path = join_name(self.temp_dir(), name);
                    if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                        return Err(ArtifactError::UnwrittenFile { path });
                    }
                    File::open(&path)
                        .and_then(|f| f.sync_all())
                        .map_err(ArtifactError::io("fsync", &path))?;
                    sha256_file(&path)?
                }
            };
            files.insert(name.clone(), digest);
        }
        Ok(files)
    }

    /// Refuses files in the temporary directory that were not added through this writer (a serializer
    /// that wrote a side file, say): the loader would refuse them, so fail now rather than publish an
    /// unloadable version. Returns the subdirectories, for fsync.
    fn check_no_strays(&self) -> Result<Vec<PathBuf>, ArtifactError> {
        let mut dirs = Vec::new();
        for entry in walk(self.temp_dir())? {
            match entry {
                Entry::File(name) if self.files.contains_key(&name) => {}
                Entry::File(name) => {
                    return Err(ArtifactError::UnlistedFile { path: join_name(self.temp_dir(), &name) });
                }
                Entry::Dir(dir) => dirs.push(dir),
            }
        }
        Ok(dirs)
    }

    /// Renames the finished temporary directory to its version, retrying with later numbers for an
    /// automatic version that a concurrent publisher took.
    fn rename_into_place(&self) -> Result<VersionDir, ArtifactError> {
        if let Some(version) = self.version {
            return self.rename_to(version);
        }
        let mut attempts = 1;
        loop {
            match self.rename_to(next_version(&self.base)?) {
                Err(ArtifactError::VersionExists { .. }) if attempts < AUTO_VERSION_ATTEMPTS => attempts += 1,
                result => return result,
            }
        }
    }

    fn rename_to(&self, version: u64) -> Result<VersionDir, ArtifactError> {
        check_version_free(&self.base, version)?;
        let target = self.base.join(version.to_string());
        match rename_no_replace(&self.temp_dir, &target) {
            Ok(()) => Ok(VersionDir::new(version, target)),
            Err(e) if is_exists_error(&e) => Err(ArtifactError::VersionExists { version, path: target }),
            Err(source) => Err(ArtifactError::Io { action: "rename into place", path: target, source }),
        }
    }
}

impl Drop for ArtifactWriter {
    /// Removes the temporary directory of an export that was not published. Errors are ignored: a leftover
    /// directory is hidden from version scans and [`crate::remove_stale_temp_dirs`] removes it later.
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.temp_dir);
        }
    }
}

/// Refuses a version number that is out of range or already present under any spelling; the canonical
/// name is additionally protected by the no-replace rename, this catches `01` when publishing `1`.
fn check_version_free(base: &Path, version: u64) -> Result<(), ArtifactError> {
    if version > MAX_VERSION {
        return Err(ArtifactError::VersionOutOfRange { base: base.to_path_buf(), version, max: MAX_VERSION });
    }
    match list_versions(base)?.into_iter().find(|v| v.version() == version) {
        Some(existing) => Err(ArtifactError::VersionExists { version, path: existing.path().to_path_buf() }),
        None => Ok(()),
    }
}

/// Creates `<base>/.kiln-tmp-<label>-<pid>-<nanos>`; the pid and clock make it unique across processes,
/// and `create_dir` failing on an existing name makes it unique within one.
fn create_temp_dir(base: &Path, label: &str) -> Result<PathBuf, ArtifactError> {
    let pid = std::process::id();
    let mut nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    loop {
        let path = base.join(format!("{TEMP_DIR_PREFIX}{label}-{pid}-{nanos}"));
        match fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => nanos += 1,
            Err(source) => return Err(ArtifactError::Io { action: "create directory", path, source }),
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    let mut file = File::create_new(path).map_err(ArtifactError::io("create", path))?;
    file.write_all(bytes).map_err(ArtifactError::io("write", path))?;
    file.sync_all().map_err(ArtifactError::io("fsync", path))
}

/// fsyncs a directory so the entries created in it survive a crash.
fn fsync_dir(dir: &Path) -> Result<(), ArtifactError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(ArtifactError::io("fsync directory", dir))
}

/// Whether a rename failed because the target exists (`EEXIST` from `RENAME_NOREPLACE`, `ENOTEMPTY` or
/// `EEXIST` from a plain rename onto a non-empty directory).
fn is_exists_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AlreadyExists || e.kind() == io::ErrorKind::DirectoryNotEmpty
}

/// Renames `from` to `to`, failing if `to` exists. On Linux this is `renameat2(RENAME_NOREPLACE)`, which
/// checks and renames in one atomic step, so of two racing publishers exactly one wins.
///
/// Filesystems without `RENAME_NOREPLACE` (`EINVAL`) fall back to `rename(2)`, which still refuses a
/// non-empty target; a published version always holds its manifest, so it is never empty and never
/// replaced. Only a hand-made empty directory with a version name could be replaced there.
#[cfg(target_os = "linux")]
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => fs::rename(from, to),
        result => result.map_err(io::Error::from),
    }
}

/// Renames `from` to `to` where no atomic no-replace rename is wired up: [`check_version_free`] has just
/// looked, and `rename(2)` refuses a non-empty target, which every published version is.
#[cfg(not(target_os = "linux"))]
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::fixture::{TestResult, publish_sample, sample_manifest};
    use crate::load::Artifact;
    use crate::version::{highest_version, next_version, remove_stale_temp_dirs, resolve_dir};

    /// Every file under `dir` with its content, to show a version was left untouched.
    fn snapshot(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, Box<dyn std::error::Error>> {
        let mut files = BTreeMap::new();
        for entry in walk(dir)? {
            if let Entry::File(name) = entry {
                let content = fs::read(join_name(dir, &name))?;
                files.insert(name, content);
            }
        }
        Ok(files)
    }

    fn temp_dirs(base: &Path) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(base)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_DIR_PREFIX) {
                found.push(entry.path());
            }
        }
        Ok(found)
    }

    /// A writer holding the graph file, ready to publish the sample manifest.
    fn ready_writer(base: &Path, version: Option<u64>) -> Result<ArtifactWriter, ArtifactError> {
        let mut writer = ArtifactWriter::create(base, version)?;
        writer.write_file("graph.nnef.tar", b"graph")?;
        writer.write_file("warmup/cat.jpg", b"cat")?;
        Ok(writer)
    }

    #[test]
    fn an_existing_version_is_refused_and_left_untouched() -> TestResult {
        let base = tempfile::tempdir()?;
        let existing = publish_sample(base.path(), Some(3))?;
        let before = snapshot(existing.path())?;

        let err = ArtifactWriter::create(base.path(), Some(3)).err().ok_or("create accepted version 3")?;
        assert!(matches!(err, ArtifactError::VersionExists { version: 3, .. }), "{err}");
        assert!(err.to_string().contains(&existing.path().display().to_string()), "{err}");

        // The version appears while an export of the same number is running: refused at publish.
        let base2 = tempfile::tempdir()?;
        let late = ready_writer(base2.path(), Some(3))?;
        let first = publish_sample(base2.path(), Some(3))?;
        let first_before = snapshot(first.path())?;
        let err = late.publish(sample_manifest()).err().ok_or("publish replaced version 3")?;
        assert!(matches!(err, ArtifactError::VersionExists { version: 3, .. }), "{err}");
        assert_eq!(snapshot(first.path())?, first_before);
        Artifact::open(first.path())?;
        assert!(temp_dirs(base2.path())?.is_empty(), "a refused publish must clean up");

        assert_eq!(snapshot(existing.path())?, before);
        Artifact::open(existing.path())?;
        Ok(())
    }

    #[test]
    fn another_spelling_of_an_existing_version_is_refused() -> TestResult {
        let base = tempfile::tempdir()?;
        let published = publish_sample(base.path(), Some(4))?;
        fs::rename(published.path(), base.path().join("004"))?;
        let err = ArtifactWriter::create(base.path(), Some(4)).err().ok_or("create accepted 4 beside 004")?;
        assert!(matches!(err, ArtifactError::VersionExists { version: 4, .. }), "{err}");
        assert!(err.to_string().contains("004"), "{err}");
        Ok(())
    }

    #[test]
    fn an_empty_directory_with_a_version_name_is_not_replaced() -> TestResult {
        let base = tempfile::tempdir()?;
        let writer = ready_writer(base.path(), Some(5))?;
        fs::create_dir(base.path().join("5"))?;
        let err = writer.publish(sample_manifest()).err().ok_or("publish replaced the empty dir")?;
        assert!(matches!(err, ArtifactError::VersionExists { version: 5, .. }), "{err}");
        assert_eq!(fs::read_dir(base.path().join("5"))?.count(), 0);
        Ok(())
    }

    /// Linux only: elsewhere `rename(2)` may replace an empty directory, as documented on the fallback.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_rename_refuses_an_existing_target_even_an_empty_one() -> TestResult {
        let base = tempfile::tempdir()?;
        let (from, to) = (base.path().join("from"), base.path().join("to"));
        fs::create_dir(&from)?;
        fs::write(from.join("f"), b"new")?;
        fs::create_dir(&to)?;
        let err = rename_no_replace(&from, &to).err().ok_or("rename replaced an empty directory")?;
        assert!(is_exists_error(&err), "{err}");
        fs::write(to.join("g"), b"old")?;
        let err = rename_no_replace(&from, &to).err().ok_or("rename replaced a full directory")?;
        assert!(is_exists_error(&err), "{err}");
        assert_eq!(fs::read(to.join("g"))?, b"old");
        fs::remove_dir_all(&to)?;
        rename_no_replace(&from, &to)?;
        assert_eq!(fs::read(to.join("f"))?, b"new");
        Ok(())
    }

    #[test]
    fn an_interrupted_export_is_invisible_as_a_version() -> TestResult {
        let base = tempfile::tempdir()?;

        let writer = ready_writer(base.path(), Some(1))?;
        let temp = writer.temp_dir().to_path_buf();
        assert!(temp.is_dir());
        drop(writer);
        assert!(!temp.exists(), "a dropped writer must remove its temp dir");

        // `kill -9`: no destructor runs, the temp dir stays with its partial content.
        let killed = ready_writer(base.path(), Some(1))?;
        let temp = killed.temp_dir().to_path_buf();
        std::mem::forget(killed);
        assert!(temp.join("graph.nnef.tar").is_file());
        assert!(temp.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".kiln-tmp-1-")));

        assert_eq!(list_versions(base.path())?, []);
        assert_eq!(highest_version(base.path())?, None);
        assert_eq!(next_version(base.path())?, 1);
        let err = resolve_dir(base.path()).err().ok_or("a temp dir resolved as a version")?;
        assert!(matches!(err, ArtifactError::NoVersions { .. }), "{err}");

        // The leftover blocks nothing: version 1 can still be published, then the leftover is cleaned.
        let published = publish_sample(base.path(), Some(1))?;
        assert_eq!(resolve_dir(base.path())?, published.path());
        assert_eq!(remove_stale_temp_dirs(base.path(), std::time::Duration::ZERO)?, [temp]);
        assert!(temp_dirs(base.path())?.is_empty());
        Ok(())
    }

    #[test]
    fn automatic_versions_count_up_from_the_highest() -> TestResult {
        let base = tempfile::tempdir()?;
        fs::create_dir(base.path().join("41"))?;
        // Both writers exist before either publishes: the number is taken at publish time.
        let a = ready_writer(base.path(), None)?;
        let b = ready_writer(base.path(), None)?;
        assert_eq!(a.version(), None);
        assert_eq!(b.publish(sample_manifest())?.dir.version(), 42);
        assert_eq!(a.publish(sample_manifest())?.dir.version(), 43);
        assert_eq!(next_version(base.path())?, 44);
        Ok(())
    }

    #[test]
    fn concurrent_publishers_never_overwrite_each_other() -> TestResult {
        const PUBLISHERS: usize = 6;
        let base = tempfile::tempdir()?;
        let barrier = Arc::new(Barrier::new(PUBLISHERS * 2));
        let threads: Vec<_> = (0..PUBLISHERS * 2)
            .map(|i| {
                let (base, barrier) = (base.path().to_path_buf(), Arc::clone(&barrier));
                std::thread::spawn(move || -> Result<(bool, VersionDir), ArtifactError> {
                    // Half race for explicit version 100, half take automatic numbers.
                    let explicit = i % 2 == 0;
                    let mut writer = ArtifactWriter::create(&base, explicit.then_some(100))?;
                    writer.write_file("graph.nnef.tar", format!("graph {i}").as_bytes())?;
                    writer.write_file("warmup/cat.jpg", b"cat")?;
                    barrier.wait();
                    Ok((explicit, writer.publish(sample_manifest())?.dir))
                })
            })
            .collect();
        let mut explicit_wins = 0;
        let mut auto_versions = Vec::new();
        for thread in threads {
            match thread.join().map_err(|_| "publisher panicked")? {
                Ok((true, published)) => {
                    assert_eq!(published.version(), 100);
                    explicit_wins += 1;
                }
                Ok((false, published)) => auto_versions.push(published.version()),
                Err(ArtifactError::VersionExists { version: 100, .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        assert_eq!(explicit_wins, 1, "exactly one publisher may win version 100");
        auto_versions.sort_unstable();
        auto_versions.dedup();
        assert_eq!(auto_versions.len(), PUBLISHERS, "automatic versions must be distinct: {auto_versions:?}");
        for version in list_versions(base.path())? {
            Artifact::open(version.path())?;
        }
        assert_eq!(list_versions(base.path())?.len(), PUBLISHERS + 1);
        assert!(temp_dirs(base.path())?.is_empty());
        Ok(())
    }

    /// A re-export whose content equals the newest version's publishes nothing and names that version;
    /// when the export ran never counts, a changed file or label does, and only the newest version is
    /// compared.
    #[test]
    fn publish_if_changed_skips_only_what_the_newest_version_already_holds() -> TestResult {
        let base = tempfile::tempdir()?;
        let first = ready_writer(base.path(), None)?.publish(sample_manifest())?;
        assert!(first.published);
        assert_eq!(Artifact::open(first.dir.path())?.content_digest(), first.content_digest);

        let mut later = sample_manifest();
        later.provenance.created_unix += 3600;
        let again = ready_writer(base.path(), None)?.publish_if_changed(later.clone())?;
        assert!(!again.published);
        assert_eq!((&again.dir, &again.content_digest), (&first.dir, &first.content_digest));
        assert_eq!(again.manifest, first.manifest, "the existing version's manifest, its time included");
        assert_eq!(list_versions(base.path())?.len(), 1);
        assert!(temp_dirs(base.path())?.is_empty(), "an unpublished export must clean up");

        let mut writer = ArtifactWriter::create(base.path(), None)?;
        writer.write_file("graph.nnef.tar", b"graph, one weight changed")?;
        writer.write_file("warmup/cat.jpg", b"cat")?;
        let changed = writer.publish_if_changed(later.clone())?;
        assert!(changed.published && changed.dir.version() == 2);
        assert_ne!(changed.content_digest, first.content_digest);

        let mut relabelled = later;
        relabelled.labels[0] = "disc".into();
        let relabelled = ready_writer(base.path(), None)?.publish_if_changed(relabelled)?;
        assert!(relabelled.published && relabelled.dir.version() == 3);
        assert_ne!(relabelled.content_digest, first.content_digest);

        // Version 1 holds this content, but version 3 is the newest.
        let back = ready_writer(base.path(), None)?.publish_if_changed(sample_manifest())?;
        assert!(back.published && back.dir.version() == 4);
        assert_eq!(back.content_digest, first.content_digest);

        // A newest version that no longer verifies is not the same content.
        fs::write(back.dir.path().join("warmup/cat.jpg"), b"dog")?;
        let repaired = ready_writer(base.path(), None)?.publish_if_changed(sample_manifest())?;
        assert!(repaired.published && repaired.dir.version() == 5);
        assert!(temp_dirs(base.path())?.is_empty());
        Ok(())
    }

    #[test]
    fn files_the_writer_did_not_add_or_never_got_are_refused_at_publish() -> TestResult {
        let base = tempfile::tempdir()?;
        let writer = ready_writer(base.path(), None)?;
        fs::write(writer.temp_dir().join("side-file.dat"), b"written behind the writer's back")?;
        let err = writer.publish(sample_manifest()).err().ok_or("stray file published")?;
        assert!(matches!(err, ArtifactError::UnlistedFile { .. }), "{err}");
        assert!(err.to_string().contains("side-file.dat"), "{err}");

        let mut writer = ready_writer(base.path(), None)?;
        let reserved = writer.file_path("weights/never.bin")?;
        let err = writer.publish(sample_manifest()).err().ok_or("unwritten file published")?;
        assert!(matches!(&err, ArtifactError::UnwrittenFile { path } if *path == reserved), "{err}");

        assert_eq!(list_versions(base.path())?, []);
        assert!(temp_dirs(base.path())?.is_empty());
        Ok(())
    }

    #[test]
    fn bad_names_duplicates_and_bad_manifests_are_refused() -> TestResult {
        let base = tempfile::tempdir()?;
        let mut writer = ready_writer(base.path(), None)?;
        let err = writer.write_file("../escape", b"x").err().ok_or("traversal accepted")?;
        assert!(matches!(err, ArtifactError::InvalidFileName { .. }), "{err}");
        assert!(!base.path().join("escape").exists());
        let err = writer.write_file("manifest.json", b"{}").err().ok_or("manifest name accepted")?;
        assert!(matches!(err, ArtifactError::InvalidFileName { .. }), "{err}");
        let err = writer.copy_file("graph.nnef.tar", base.path()).err().ok_or("duplicate accepted")?;
        assert!(matches!(err, ArtifactError::DuplicateFile { .. }), "{err}");

        let mut wrong_version = sample_manifest();
        wrong_version.format_version = FORMAT_VERSION + 1;
        let err = writer.publish(wrong_version).err().ok_or("wrong format_version published")?;
        assert!(matches!(&err, ArtifactError::ManifestInvalid { field, .. } if field == "format_version"));

        let mut writer = ArtifactWriter::create(base.path(), None)?;
        writer.write_file("warmup/cat.jpg", b"cat")?;
        let err = writer.publish(sample_manifest()).err().ok_or("manifest without its graph published")?;
        assert!(
            matches!(&err, ArtifactError::ManifestInvalid { field, .. } if field == "graph.file"),
            "{err}"
        );

        let writer = ready_writer(base.path(), None)?;
        let mut nan = sample_manifest();
        nan.preprocess.scale[1] = f32::NAN;
        let err = writer.publish(nan).err().ok_or("NaN std published")?;
        assert!(
            matches!(&err, ArtifactError::ManifestInvalid { field, .. } if field == "preprocess"),
            "{err}"
        );
        drop(ready_writer(base.path(), Some(MAX_VERSION))?);
        let err = ArtifactWriter::create(base.path(), Some(MAX_VERSION + 1)).err().ok_or("huge version")?;
        assert!(matches!(err, ArtifactError::VersionOutOfRange { .. }), "{err}");

        assert_eq!(list_versions(base.path())?, []);
        assert!(temp_dirs(base.path())?.is_empty());
        Ok(())
    }
}
