//! The regression gate behind `kiln check`: golden files, version-to-version comparison and artifact
//! integrity, as a library so the rules are unit-tested apart from the command line.
//!
//! Three questions a build pipeline asks before shipping an artifact, one entry point each:
//!
//! - *Does it still answer what it answered before?* [`GoldenFile`] records an artifact's answer for each
//!   image (with the image's sha256, so a changed input is reported as such rather than as drift);
//!   [`check_golden`] reruns the images and lists every changed label and every confidence that moved
//!   beyond a tolerance.
//! - *How different is the new version from the old one?* [`compare_versions`] runs both on the same
//!   images: top-1 agreement, max and mean |delta confidence|, the flips, and which [`Thresholds`] failed.
//! - *Is the artifact sound at all?* [`verify_integrity`] checks digests and format version, compiles the
//!   graph, checks the serving signature and runs the warm-up inputs.
//!
//! [`baseline_html`] and [`golden_html`] render a baseline or golden check as one self-contained HTML
//! page (`kiln check --report`).
//!
//! ```no_run
//! use std::path::Path;
//! use check::{GoldenFile, check_golden, list_images, observe};
//! use runtime::{Model, NoProgress};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = Model::load("/models/vit")?;
//! let images = list_images(Path::new("testdata/images"))?;
//! let observations = observe(&model, &images, &NoProgress)?;
//! let golden = GoldenFile::record(&model, &observations, Path::new("golden.jsonl"))?;
//! golden.write(Path::new("golden.jsonl"))?;
//!
//! let report = check_golden(&model, &GoldenFile::read(Path::new("golden.jsonl"))?, 1e-3, &NoProgress)?;
//! print!("{report}");
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod baseline;
mod error;
mod golden;
mod integrity;
mod observe;
mod report;

pub use baseline::{BaselineReport, Flip, Thresholds, compare_observations, compare_versions};
pub use error::CheckError;
pub use golden::{
    ArtifactStamp, DEFAULT_TOLERANCE, Finding, FindingKind, GOLDEN_FORMAT, GoldenEntry, GoldenFile,
    GoldenReport, Verdict, check_golden,
};
pub use integrity::{IntegrityReport, verify_integrity};
pub use observe::{Classification, Observation, Outcome, list_images, observe};
pub use report::{REPORT_WORST_IMAGES, ReportModels, baseline_html, escape_html, golden_html};
