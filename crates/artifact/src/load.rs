//! Checked load: nothing in a version directory is trusted until its digest matches.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::content::content_digest;
use crate::digest::{parse_manifest_digest_line, sha256_bytes, sha256_file};
use crate::error::ArtifactError;
use crate::layout::{Entry, join_name, walk};
use crate::manifest::{
    FORMAT_VERSION, MANIFEST_DIGEST_FILE, MANIFEST_FILE, MAX_MANIFEST_BYTES, Manifest, upgrade_preprocess,
};
use crate::version::parse_version;

/// A version directory whose manifest and every listed file have been verified.
///
/// The only way to get one is [`Artifact::open`], so holding one means: the manifest matches
/// `manifest.sha256`, its format version is readable by this build, every listed file exists with the
/// listed sha256, and nothing unlisted sits beside them. Versions are write-once, so the check stays true
/// unless someone edits a published directory by hand.
#[derive(Debug, Clone)]
pub struct Artifact {
    dir: PathBuf,
    manifest: Manifest,
    content_digest: String,
}

impl Artifact {
    /// Opens and verifies the version directory `dir` (not a base: see [`crate::resolve_dir`]).
    ///
    /// Order of checks: `manifest.json` against `manifest.sha256`; `format_version` (before the full parse,
    /// so a newer artifact gets a version message rather than an unknown-field error); the full parse with
    /// unknown fields denied; the manifest's own rules (safe names, graph listed); no unlisted or
    /// non-regular entries; every listed file present; every digest, streamed from disk.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ArtifactError> {
        let dir = dir.as_ref();
        let manifest_path = dir.join(MANIFEST_FILE);
        let json = read_manifest_bytes(&manifest_path)?;
        check_manifest_digest(dir, &manifest_path, &json)?;

        #[derive(Deserialize)]
        struct FormatProbe {
            format_version: u64,
        }
        let parse_error = |source| ArtifactError::ManifestParse { path: manifest_path.clone(), source };
        let probe: FormatProbe = serde_json::from_slice(&json).map_err(parse_error)?;
        if probe.format_version == 0 || probe.format_version > u64::from(FORMAT_VERSION) {
            return Err(ArtifactError::UnsupportedFormatVersion {
                path: manifest_path,
                found: probe.format_version,
                supported: FORMAT_VERSION,
            });
        }
        let mut value: serde_json::Value = serde_json::from_slice(&json).map_err(parse_error)?;
        // Of the manifest as stored: an upgraded older manifest keeps the digest it was published with.
        let content_digest = content_digest(&value);
        upgrade_preprocess(probe.format_version, &mut value);
        let manifest: Manifest = serde_json::from_value(value).map_err(parse_error)?;
        manifest.check(&manifest_path)?;

        let mut present = BTreeSet::new();
        for entry in walk(dir)? {
            if let Entry::File(name) = entry {
                let is_manifest = name == MANIFEST_FILE || name == MANIFEST_DIGEST_FILE;
                if !is_manifest && !manifest.files.contains_key(&name) {
                    return Err(ArtifactError::UnlistedFile { path: join_name(dir, &name) });
                }
                present.insert(name);
            }
        }
        if let Some(missing) = manifest.files.keys().find(|name| !present.contains(*name)) {
            return Err(ArtifactError::MissingFile { path: join_name(dir, missing) });
        }
        for (name, expected) in &manifest.files {
            let path = join_name(dir, name);
            let actual = sha256_file(&path)?;
            if &actual != expected {
                return Err(ArtifactError::DigestMismatch { path, expected: expected.clone(), actual });
            }
        }
        Ok(Artifact { dir: dir.to_path_buf(), manifest, content_digest })
    }

    /// The version directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The version number the directory name spells, or `None` if it was opened under another name (a
    /// copy in a scratch directory, say).
    pub fn version(&self) -> Option<u64> {
        self.dir.file_name().and_then(|n| n.to_str()).and_then(parse_version)
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The content digest (lowercase hex sha256): what this version holds, every file through its listed
    /// digest, leaving out only when it was exported (`provenance.created_unix`). Two exports of the same
    /// inputs by the same kiln have equal digests; `FORMAT.md` defines it so other tools can recompute it.
    pub fn content_digest(&self) -> &str {
        &self.content_digest
    }

    /// Consumes the handle and keeps only the manifest, for callers that copy what they need out of it.
    pub fn into_manifest(self) -> Manifest {
        self.manifest
    }

    /// Absolute path of a listed file; `None` if the manifest does not list `name`, so callers cannot
    /// wander to unverified files.
    pub fn file_path(&self, name: &str) -> Option<PathBuf> {
        self.manifest.files.contains_key(name).then(|| join_name(&self.dir, name))
    }

    /// Path of the graph archive (`manifest.graph.file`), which the manifest check guarantees is listed.
    pub fn graph_path(&self) -> PathBuf {
        join_name(&self.dir, &self.manifest.graph.file)
    }
}

/// Reads `manifest.json`, refusing it before allocation if it exceeds [`MAX_MANIFEST_BYTES`].
fn read_manifest_bytes(path: &Path) -> Result<Vec<u8>, ArtifactError> {
    let file = fs::File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ArtifactError::MissingManifest { path: path.to_path_buf() },
        _ => ArtifactError::Io { action: "open", path: path.to_path_buf(), source },
    })?;
    let bytes = file.metadata().map_err(ArtifactError::io("stat", path))?.len();
    if bytes > MAX_MANIFEST_BYTES {
        return Err(ArtifactError::ManifestTooLarge {
            path: path.to_path_buf(),
            bytes,
            max: MAX_MANIFEST_BYTES,
        });
    }
    let mut json = Vec::new();
    // `take` guards against a file that grows between the size check and the read.
    file.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut json).map_err(ArtifactError::io("read", path))?;
    Ok(json)
}

/// Checks `manifest.json`'s bytes against `manifest.sha256`.
fn check_manifest_digest(dir: &Path, manifest_path: &Path, json: &[u8]) -> Result<(), ArtifactError> {
    let digest_path = dir.join(MANIFEST_DIGEST_FILE);
    let line = fs::read(&digest_path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ArtifactError::MissingManifest { path: digest_path.clone() },
        _ => ArtifactError::Io { action: "read", path: digest_path.clone(), source },
    })?;
    let expected = std::str::from_utf8(&line)
        .ok()
        .and_then(parse_manifest_digest_line)
        .ok_or(ArtifactError::ManifestDigestMalformed { path: digest_path })?;
    let actual = sha256_bytes(json);
    if actual != expected {
        return Err(ArtifactError::ManifestDigestMismatch {
            path: manifest_path.to_path_buf(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::digest::manifest_digest_line;
    use crate::fixture::{TestResult, graph_bytes, publish_sample, sample_manifest, sample_version};

    /// Edits `manifest.json` as JSON and re-signs it, so the edit reaches the checks after the digest.
    fn rewrite_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> TestResult {
        let path = dir.join(MANIFEST_FILE);
        let mut value: serde_json::Value = serde_json::from_slice(&fs::read(&path)?)?;
        edit(&mut value);
        let json = serde_json::to_vec_pretty(&value)?;
        fs::write(&path, &json)?;
        fs::write(dir.join(MANIFEST_DIGEST_FILE), manifest_digest_line(&sha256_bytes(&json)))?;
        Ok(())
    }

    /// The content digest of the sample artifact (`crate::fixture::publish_sample`).
    const SAMPLE_CONTENT_DIGEST: &str = "b5328393a68c2ed1dfb1a67e51b5de880bb579477b5a2f2b7ca6c66e54bd600c";

    fn open_err(dir: &Path) -> Result<ArtifactError, Box<dyn std::error::Error>> {
        match Artifact::open(dir) {
            Ok(_) => Err(format!("`{}` opened despite the damage", dir.display()).into()),
            Err(err) => Ok(err),
        }
    }

    #[test]
    fn published_artifact_loads_with_every_file_listed() -> TestResult {
        let base = tempfile::tempdir()?;
        let published = publish_sample(base.path(), None)?;
        assert_eq!(published.version(), 1);
        assert_eq!(published.path(), base.path().join("1"));

        let artifact = Artifact::open(published.path())?;
        assert_eq!(artifact.version(), Some(1));
        assert_eq!(artifact.dir(), published.path());
        let mut expected = sample_manifest();
        expected.files = BTreeMap::from([
            ("graph.nnef.tar".into(), sha256_bytes(&graph_bytes())),
            ("notes/export.txt".into(), sha256_bytes(b"exported by a test\n")),
            ("warmup/cat.jpg".into(), sha256_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")),
        ]);
        assert_eq!(artifact.manifest(), &expected);
        assert_eq!(fs::read(artifact.graph_path())?, graph_bytes());
        let warmup = artifact.file_path("warmup/cat.jpg").ok_or("warmup file not listed")?;
        assert_eq!(warmup, published.path().join("warmup").join("cat.jpg"));
        assert_eq!(artifact.file_path("manifest.json"), None);
        assert_eq!(artifact.file_path("../1/graph.nnef.tar"), None);

        let digest_line = fs::read_to_string(published.path().join(MANIFEST_DIGEST_FILE))?;
        let manifest_digest = sha256_bytes(&fs::read(published.path().join(MANIFEST_FILE))?);
        assert_eq!(digest_line, format!("{manifest_digest}  manifest.json\n"));
        Ok(())
    }

    /// The content digest is pinned: this value was computed by an independent RFC 8785 implementation
    /// (Python's `rfc8785` 0.1.4) with the recipe in FORMAT.md, so a change to the definition fails here.
    #[test]
    fn the_content_digest_follows_the_documented_recipe() -> TestResult {
        let (_base, dir) = sample_version()?;
        let artifact = Artifact::open(&dir)?;
        assert_eq!(artifact.content_digest(), SAMPLE_CONTENT_DIGEST);

        // Rewritten by hand (another tool's whitespace, another export time): the same content.
        rewrite_manifest(&dir, |m| m["provenance"]["created_unix"] = 1.into())?;
        assert_eq!(Artifact::open(&dir)?.content_digest(), SAMPLE_CONTENT_DIGEST);
        // Everything else in the manifest is content: a source digest, a preprocessing constant.
        rewrite_manifest(&dir, |m| m["provenance"]["sources"][0]["bytes"] = 4.into())?;
        let changed = Artifact::open(&dir)?.content_digest().to_owned();
        assert_ne!(changed, SAMPLE_CONTENT_DIGEST);
        rewrite_manifest(&dir, |m| m["preprocess"]["scale"][0] = 0.0078125.into())?;
        assert_ne!(Artifact::open(&dir)?.content_digest(), changed);
        Ok(())
    }

    #[test]
    fn a_flipped_byte_in_any_file_is_refused_naming_that_file() -> TestResult {
        let reference = tempfile::tempdir()?;
        let names: Vec<String> = walk(publish_sample(reference.path(), Some(1))?.path())?
            .into_iter()
            .filter_map(|entry| match entry {
                Entry::File(name) => Some(name),
                Entry::Dir(_) => None,
            })
            .collect();
        assert_eq!(names.len(), 5, "{names:?}");

        for name in &names {
            let base = tempfile::tempdir()?;
            let dir = publish_sample(base.path(), Some(1))?.path().to_path_buf();
            let path = join_name(&dir, name);
            let mut bytes = fs::read(&path)?;
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
            fs::write(&path, &bytes)?;

            let err = open_err(&dir)?;
            let message = err.to_string();
            assert!(message.contains(name.as_str()), "flipping `{name}` gave: {message}");
            match name.as_str() {
                MANIFEST_FILE | MANIFEST_DIGEST_FILE => assert!(
                    matches!(
                        err,
                        ArtifactError::ManifestDigestMismatch { .. }
                            | ArtifactError::ManifestDigestMalformed { .. }
                    ),
                    "{message}"
                ),
                _ => assert!(
                    matches!(&err, ArtifactError::DigestMismatch { path: p, .. } if *p == path),
                    "{message}"
                ),
            }
        }
        Ok(())
    }

    #[test]
    fn a_digest_mismatch_shows_both_digest_prefixes() -> TestResult {
        let (_base, dir) = sample_version()?;
        fs::write(dir.join("warmup/cat.jpg"), b"replaced")?;
        let message = open_err(&dir)?.to_string();
        let listed = sha256_bytes(b"\xff\xd8\xff\xe0 not really a jpeg");
        let found = sha256_bytes(b"replaced");
        assert!(message.contains(&listed[..12]) && message.contains(&found[..12]), "{message}");
        assert!(!message.contains(&listed[..13]), "prefix only, not the whole digest: {message}");
        Ok(())
    }

    #[test]
    fn a_missing_file_is_refused_naming_it() -> TestResult {
        let (_base, dir) = sample_version()?;
        fs::remove_file(dir.join("warmup/cat.jpg"))?;
        let err = open_err(&dir)?;
        assert!(matches!(err, ArtifactError::MissingFile { .. }), "{err}");
        assert!(err.to_string().contains("cat.jpg"), "{err}");

        fs::remove_file(dir.join(MANIFEST_DIGEST_FILE))?;
        let err = open_err(&dir)?;
        assert!(matches!(err, ArtifactError::MissingManifest { .. }), "{err}");
        assert!(err.to_string().contains(MANIFEST_DIGEST_FILE), "{err}");
        Ok(())
    }

    #[test]
    fn an_extra_file_is_refused_naming_it() -> TestResult {
        for extra in ["extra.bin", "warmup/dog.jpg", "new/dir/file"] {
            let base = tempfile::tempdir()?;
            let dir = publish_sample(base.path(), None)?.path().to_path_buf();
            let path = join_name(&dir, extra);
            fs::create_dir_all(path.parent().ok_or("no parent")?)?;
            fs::write(&path, b"nobody listed me")?;
            let err = open_err(&dir)?;
            assert!(matches!(&err, ArtifactError::UnlistedFile { path: p } if *p == path), "{err}");
        }
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_inside_a_version_is_refused() -> TestResult {
        let (_base, dir) = sample_version()?;
        std::os::unix::fs::symlink("graph.nnef.tar", dir.join("link"))?;
        let err = open_err(&dir)?;
        assert!(matches!(err, ArtifactError::NotRegularFile { .. }), "{err}");
        assert!(err.to_string().contains("link"), "{err}");
        Ok(())
    }

    /// A build that bumps the version keeps reading every older one, upgrading the preprocessing that
    /// versions 1 and 2 wrote (resize straight to the graph's size, rescale/mean/std) to the same steps;
    /// version 3 wrote the steps themselves.
    #[test]
    fn every_older_format_version_is_read() -> TestResult {
        let (_base, dir) = sample_version()?;
        let current = Artifact::open(&dir)?.manifest().preprocess.clone();
        let steps = serde_json::to_value(&current)?;
        for version in 1..FORMAT_VERSION {
            rewrite_manifest(&dir, |m| {
                m["format_version"] = version.into();
                m["preprocess"] = if version < 3 {
                    serde_json::json!({"resize": "pil", "resample": "bilinear", "rescale_factor": 1.0 / 255.0,
                        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
                } else {
                    steps.clone()
                };
            })?;
            let artifact = Artifact::open(&dir)?;
            assert_eq!(artifact.manifest().format_version, version);
            assert_eq!(artifact.manifest().preprocess, current, "format_version {version}");
        }
        Ok(())
    }

    #[test]
    fn a_newer_format_version_is_refused_saying_what_is_supported() -> TestResult {
        let (_base, dir) = sample_version()?;
        // A future format likely adds fields too; the version message must win over "unknown field".
        rewrite_manifest(&dir, |m| {
            m["format_version"] = (FORMAT_VERSION + 1).into();
            m["added_in_the_future"] = true.into();
        })?;
        let err = open_err(&dir)?;
        let message = err.to_string();
        assert!(
            matches!(err, ArtifactError::UnsupportedFormatVersion { found, .. }
                if found == u64::from(FORMAT_VERSION) + 1),
            "{message}"
        );
        assert!(message.contains(&format!("format_version {}", FORMAT_VERSION + 1)), "{message}");
        assert!(message.contains(&format!("1 to {FORMAT_VERSION}")), "{message}");
        assert!(message.contains(MANIFEST_FILE), "{message}");

        rewrite_manifest(&dir, |m| m["format_version"] = 0.into())?;
        assert!(matches!(open_err(&dir)?, ArtifactError::UnsupportedFormatVersion { found: 0, .. }));
        Ok(())
    }

    #[test]
    fn an_unknown_field_at_the_current_version_is_refused() -> TestResult {
        let (_base, dir) = sample_version()?;
        rewrite_manifest(&dir, |m| m["graph"]["layout"] = "nchw".into())?;
        let err = open_err(&dir)?;
        assert!(matches!(err, ArtifactError::ManifestParse { .. }), "{err}");
        let source = std::error::Error::source(&err).ok_or("no parse cause")?.to_string();
        assert!(source.contains("unknown field `layout`"), "{source}");
        Ok(())
    }

    #[test]
    fn listed_names_that_leave_the_version_dir_are_refused() -> TestResult {
        let (base, dir) = sample_version()?;
        fs::write(base.path().join("outside"), b"secret")?;
        let outside_digest = sha256_bytes(b"secret");
        let absolute = base.path().join("outside").display().to_string();
        for name in ["../outside", absolute.as_str(), "warmup/../../outside"] {
            rewrite_manifest(&dir, |m| {
                m["files"][name] = outside_digest.clone().into();
            })?;
            let err = open_err(&dir)?;
            assert!(matches!(err, ArtifactError::ManifestInvalid { .. }), "`{name}`: {err}");
            assert!(err.to_string().contains(name), "{err}");
            rewrite_manifest(&dir, |m| {
                m["files"].as_object_mut().map(|files| files.remove(name));
            })?;
        }
        Artifact::open(&dir)?;
        Ok(())
    }

    #[test]
    fn a_graph_file_missing_from_the_list_is_refused() -> TestResult {
        let (_base, dir) = sample_version()?;
        rewrite_manifest(&dir, |m| m["graph"]["file"] = "other.nnef.tar".into())?;
        let err = open_err(&dir)?;
        assert!(
            matches!(&err, ArtifactError::ManifestInvalid { field, .. } if field == "graph.file"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn an_oversized_manifest_is_refused_before_reading() -> TestResult {
        let (_base, dir) = sample_version()?;
        fs::File::options().write(true).open(dir.join(MANIFEST_FILE))?.set_len(MAX_MANIFEST_BYTES + 1)?;
        let err = open_err(&dir)?;
        assert!(matches!(err, ArtifactError::ManifestTooLarge { .. }), "{err}");
        Ok(())
    }
}
