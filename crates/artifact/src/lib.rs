//! The on-disk contract between `kiln export` and every kiln runtime.
//!
//! An artifact is a directory `<base>/<version>` holding a [`Manifest`] and the files it lists with their
//! sha256 digests. This crate owns the three things everyone else relies on: which directories are
//! versions ([`list_versions`], [`resolve_dir`]), write-once publishing ([`ArtifactWriter`]), and checked
//! loading ([`Artifact::open`]), which also yields the version's content digest
//! ([`Artifact::content_digest`]). `FORMAT.md` beside this crate is the contract in prose.
//!
//! ```no_run
//! use artifact::{Artifact, ArtifactWriter, Manifest, resolve_dir};
//! # fn manifest() -> Manifest { unimplemented!() }
//! # fn main() -> Result<(), artifact::ArtifactError> {
//! // Export: build in a hidden temp dir, then publish `/models/vit/<next free number>` atomically.
//! let mut writer = ArtifactWriter::create("/models/vit", None)?;
//! writer.copy_file("graph.nnef.tar", "/tmp/graph.nnef.tar")?;
//! let published = writer.publish(manifest())?;
//! println!("{} {}", published.dir.path().display(), published.content_digest);
//!
//! // Load: a base dir resolves to its highest version; every digest is checked before use.
//! let artifact = Artifact::open(resolve_dir("/models/vit")?)?;
//! let graph = artifact.graph_path();
//! // One sha256 over everything the version holds except when it was made (FORMAT.md, "Content digest").
//! let content = artifact.content_digest();
//! # let _ = (graph, content);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod content;
mod digest;
mod error;
#[cfg(test)]
mod fixture;
mod layout;
mod load;
mod manifest;
mod version;
mod writer;

pub use error::ArtifactError;
pub use load::Artifact;
pub use manifest::{
    ChannelOrder, CropSize, Decoder, FORMAT_VERSION, GraphSpec, MANIFEST_DIGEST_FILE, MANIFEST_FILE,
    MAX_MANIFEST_BYTES, Manifest, PreprocessSpec, Provenance, ResampleFilter, ResizeMode, ResizeSize,
    Signature, SourceFile, TensorInfo,
};
pub use version::{
    MAX_VERSION, TEMP_DIR_PREFIX, VersionDir, highest_version, list_versions, next_version, parse_version,
    remove_stale_temp_dirs, resolve_dir,
};
pub use writer::{ArtifactWriter, Publication};
