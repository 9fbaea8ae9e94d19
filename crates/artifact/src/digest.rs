//! sha256 digests: streamed so a 330 MB graph never sits in memory, and the `manifest.sha256` line format.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::ArtifactError;
use crate::manifest::MANIFEST_FILE;

/// Read size for hashing and copying: large enough that syscalls do not dominate, small enough to stay
/// in L2.
const CHUNK_BYTES: usize = 1 << 20;

/// Length of a sha256 digest in lowercase hex.
pub(crate) const SHA256_HEX_LEN: usize = 64;

/// Lowercase hex sha256 of a byte slice.
pub(crate) fn sha256_bytes(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Lowercase hex sha256 of a file, read in chunks.
pub(crate) fn sha256_file(path: &Path) -> Result<String, ArtifactError> {
    hash_chunks(path, |_| Ok(()))
}

/// Copies `source` to `dest` (created, must not exist) in chunks, hashing what is written, then fsyncs
/// `dest`; one pass over the data instead of copy-then-hash.
pub(crate) fn copy_hashed(source: &Path, dest: &Path) -> Result<String, ArtifactError> {
    let mut output = File::create_new(dest).map_err(ArtifactError::io("create", dest))?;
    let digest =
        hash_chunks(source, |chunk| output.write_all(chunk).map_err(ArtifactError::io("write", dest)))?;
    output.sync_all().map_err(ArtifactError::io("fsync", dest))?;
    Ok(digest)
}

/// Reads `path` in chunks, hashing each and handing it to `each`; returns the lowercase hex digest.
fn hash_chunks(
    path: &Path,
    mut each: impl FnMut(&[u8]) -> Result<(), ArtifactError>,
) -> Result<String, ArtifactError> {
    let mut file = File::open(path).map_err(ArtifactError::io("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = file.read(&mut buf).map_err(ArtifactError::io("read", path))?;
        if n == 0 {
            return Ok(format!("{:x}", hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        each(&buf[..n])?;
    }
}

/// True for exactly 64 lowercase hex digits, the only digest spelling the format allows.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == SHA256_HEX_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The content of `manifest.sha256`: the `sha256sum` line format, so `sha256sum -c manifest.sha256` run
/// inside a version directory checks the manifest with standard tools.
pub(crate) fn manifest_digest_line(digest: &str) -> String {
    format!("{digest}  {MANIFEST_FILE}\n")
}

/// Parses `manifest.sha256`: `<hex>  manifest.json` (or `<hex> *manifest.json`, sha256sum's binary mode)
/// or a bare `<hex>`, with an optional trailing newline. Returns `None` for anything else.
pub(crate) fn parse_manifest_digest_line(content: &str) -> Option<&str> {
    let line = content.strip_suffix('\n').unwrap_or(content);
    let (digest, rest) = line.split_at_checked(SHA256_HEX_LEN)?;
    let file_ok =
        rest.is_empty() || rest.strip_prefix("  ").or_else(|| rest.strip_prefix(" *")) == Some(MANIFEST_FILE);
    (is_sha256_hex(digest) && file_ok).then_some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_line_round_trips_and_rejects_variants() -> Result<(), Box<dyn std::error::Error>> {
        let digest = sha256_bytes(b"abc");
        assert_eq!(digest, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let line = manifest_digest_line(&digest);
        assert_eq!(parse_manifest_digest_line(&line), Some(digest.as_str()));
        assert_eq!(parse_manifest_digest_line(&digest), Some(digest.as_str()));
        assert_eq!(parse_manifest_digest_line(&format!("{digest} *manifest.json")), Some(digest.as_str()));
        assert_eq!(parse_manifest_digest_line(&digest.to_uppercase()), None);
        assert_eq!(parse_manifest_digest_line(&format!("{digest}  other.json\n")), None);
        assert_eq!(parse_manifest_digest_line(&digest[..63]), None);
        assert_eq!(parse_manifest_digest_line(&format!("{digest}\n\n")), None);
        Ok(())
    }

    #[test]
    fn file_digest_equals_bytes_digest_across_chunks() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let bytes: Vec<u8> = (0..(CHUNK_BYTES * 2 + 17)).map(|i| (i % 251) as u8).collect();
        let source = dir.path().join("source");
        std::fs::write(&source, &bytes)?;
        assert_eq!(sha256_file(&source)?, sha256_bytes(&bytes));
        let dest = dir.path().join("dest");
        assert_eq!(copy_hashed(&source, &dest)?, sha256_bytes(&bytes));
        assert_eq!(std::fs::read(&dest)?, bytes);
        Ok(())
    }
}
