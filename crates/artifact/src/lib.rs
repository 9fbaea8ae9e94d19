//! The on-disk contract between `kiln export` and every kiln runtime.
//!
//! An artifact is a directory `<base>/<version>` holding a [`Manifest`] and the files it lists with their
//! digests. See `FORMAT.md` beside this crate for the layout and the rules a reader enforces.

#![deny(missing_docs)]

mod manifest;

pub use manifest::{
    FORMAT_VERSION, GraphSpec, MANIFEST_DIGEST_FILE, MANIFEST_FILE, Manifest, PreprocessSpec, Provenance,
    ResampleFilter, ResizeMode, Signature, SourceFile, TensorInfo,
};
