//! Two versions of a model on the same images: how often they agree, how far confidences moved, and
//! whether that is within what the user accepts.

use std::fmt;
use std::path::{Path, PathBuf};

use runtime::{Model, Progress};
use serde::Serialize;

use crate::error::CheckError;
use crate::golden::Verdict;
use crate::observe::{Observation, Outcome, observe};

/// What a new version may differ from its baseline by and still pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Smallest fraction of images (0 to 1) on which both versions must give the same answer.
    pub min_agreement: f64,
    /// Largest |delta confidence| allowed on any image where both give the same label; `None`: no limit.
    pub max_delta: Option<f32>,
    /// Largest mean |delta confidence| over images where both give the same label; `None`: no limit.
    pub max_mean_delta: Option<f32>,
}

impl Default for Thresholds {
    /// Every answer must agree; confidences may move freely (a retrained model's confidences always
    /// move, so a limit there is the user's call).
    fn default() -> Self {
        Thresholds { min_agreement: 1.0, max_delta: None, max_mean_delta: None }
    }
}

/// An image on which the two versions answer differently.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flip {
    /// The image file.
    pub image: PathBuf,
    /// The baseline's answer.
    pub old: Outcome,
    /// The new version's answer.
    pub new: Outcome,
}

/// The comparison of a new version against a baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineReport {
    /// Pass, or regression when a threshold is broken.
    pub verdict: Verdict,
    /// The baseline version directory.
    pub old: PathBuf,
    /// The new version directory.
    pub new: PathBuf,
    /// Images run through both.
    pub images: usize,
    /// Fraction of images with the same answer (same label and class, or both refused).
    pub agreement: f64,
    /// Images where both gave the same label: the ones confidence deltas are measured on (a flipped
    /// image's two confidences belong to different classes and do not compare).
    pub same_label: usize,
    /// Largest |delta confidence| over `same_label` images.
    pub max_delta: f32,
    /// Mean |delta confidence| over `same_label` images (0 when there are none).
    pub mean_delta: f32,
    /// Every image with different answers, in image order.
    pub flips: Vec<Flip>,
    /// The thresholds applied.
    pub thresholds: Thresholds,
    /// Each broken threshold, as a sentence.
    pub violations: Vec<String>,
}

impl fmt::Display for BaselineReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for flip in &self.flips {
            writeln!(
                f,
                "FLIP  {}\n        old {}\n        new {}",
                flip.image.display(),
                flip.old,
                flip.new
            )?;
        }
        writeln!(
            f,
            "{} images, old {} vs new {}: top-1 agreement {:.4} ({} flips); |delta confidence| over {} \
             same-label images: max {:.2e}, mean {:.2e}",
            self.images,
            self.old.display(),
            self.new.display(),
            self.agreement,
            self.flips.len(),
            self.same_label,
            self.max_delta,
            self.mean_delta
        )?;
        for violation in &self.violations {
            writeln!(f, "FAIL  {violation}")?;
        }
        writeln!(f, "{}", if self.violations.is_empty() { "PASS" } else { "FAIL" })
    }
}

/// Runs `images` through both versions, reporting to `progress`, and compares the answers against
/// `thresholds`.
pub fn compare_versions(
    old: &Model,
    new: &Model,
    images: &[PathBuf],
    thresholds: &Thresholds,
    progress: &dyn Progress,
) -> Result<BaselineReport, CheckError> {
    let old_answers = observe(old, images, progress)?;
    let new_answers = observe(new, images, progress)?;
    Ok(compare_observations(old.dir(), new.dir(), &old_answers, &new_answers, thresholds))
}

/// The comparison proper, for callers that keep the observations (`--report` draws every image's
/// answers); `old` and `new` hold the same images in the same order.
pub fn compare_observations(
    old_dir: &Path,
    new_dir: &Path,
    old: &[Observation],
    new: &[Observation],
    thresholds: &Thresholds,
) -> BaselineReport {
    let mut flips = Vec::new();
    let mut deltas = Vec::new();
    for (o, n) in old.iter().zip(new) {
        if !o.outcome.same_answer(&n.outcome) {
            flips.push(Flip { image: o.image.clone(), old: o.outcome.clone(), new: n.outcome.clone() });
        } else if let (Outcome::Class(a), Outcome::Class(b)) = (&o.outcome, &n.outcome) {
            deltas.push((a.confidence - b.confidence).abs());
        }
    }
    let images = old.len().min(new.len());
    let agreement = if images == 0 { 1.0 } else { (images - flips.len()) as f64 / images as f64 };
    // NaN (a broken graph) must surface as the maximum, not be skipped by `max`.
    let max_delta = deltas
        .iter()
        .copied()
        .fold(0.0f32, |m, d| if d.is_nan() || m.is_nan() { f32::NAN } else { m.max(d) });
    let mean_delta = if deltas.is_empty() {
        0.0
    } else {
        (deltas.iter().map(|&d| f64::from(d)).sum::<f64>() / deltas.len() as f64) as f32
    };

    let mut violations = Vec::new();
    if !at_most(thresholds.min_agreement, agreement) {
        violations.push(format!(
            "top-1 agreement {agreement:.4} is below --min-agreement {}",
            thresholds.min_agreement
        ));
    }
    if let Some(limit) = thresholds.max_delta
        && !at_most(f64::from(max_delta), f64::from(limit))
    {
        violations.push(format!("max |delta confidence| {max_delta:.2e} is above --max-delta {limit}"));
    }
    if let Some(limit) = thresholds.max_mean_delta
        && !at_most(f64::from(mean_delta), f64::from(limit))
    {
        violations
            .push(format!("mean |delta confidence| {mean_delta:.2e} is above --max-mean-delta {limit}"));
    }
    BaselineReport {
        verdict: if violations.is_empty() { Verdict::Pass } else { Verdict::Regression },
        old: old_dir.to_path_buf(),
        new: new_dir.to_path_buf(),
        images,
        agreement,
        same_label: deltas.len(),
        max_delta,
        mean_delta,
        flips,
        thresholds: *thresholds,
        violations,
    }
}

/// `value <= limit`, false when either is NaN: a broken graph's NaN must break a threshold, never pass it.
pub(crate) fn at_most(value: f64, limit: f64) -> bool {
    value <= limit
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Classification;

    fn seen(image: &str, outcome: Outcome) -> Observation {
        Observation { image: image.into(), sha256: String::new(), outcome }
    }

    fn class(label: &str, class_index: usize, confidence: f32) -> Outcome {
        Outcome::Class(Classification { label: label.into(), class_index, confidence })
    }

    fn pair() -> (Vec<Observation>, Vec<Observation>) {
        let error = || Outcome::Error { error: "truncated".into() };
        let old = vec![
            seen("a", class("cat", 0, 0.90)),
            seen("b", class("dog", 1, 0.80)),
            seen("c", class("cat", 0, 0.70)),
            seen("d", error()),
        ];
        let new = vec![
            seen("a", class("cat", 0, 0.92)),
            seen("b", class("cat", 0, 0.60)),
            seen("c", class("cat", 0, 0.76)),
            seen("d", error()),
        ];
        (old, new)
    }

    #[test]
    fn agreement_deltas_and_flips_are_measured_on_the_right_images() {
        let (old, new) = pair();
        let report = compare_observations(Path::new("1"), Path::new("2"), &old, &new, &Thresholds::default());
        assert_eq!(report.images, 4);
        assert!((report.agreement - 0.75).abs() < 1e-12, "{}", report.agreement);
        assert_eq!(report.same_label, 2, "the flip and the refused image carry no delta");
        assert!((report.max_delta - 0.06).abs() < 1e-6, "{}", report.max_delta);
        assert!((report.mean_delta - 0.04).abs() < 1e-6, "{}", report.mean_delta);
        assert_eq!(report.flips.len(), 1);
        assert_eq!(report.flips[0].image, Path::new("b"));
        assert_eq!(report.verdict, Verdict::Regression, "the default demands full agreement");
        assert!(report.violations[0].contains("agreement 0.7500 is below --min-agreement 1"), "{report}");
        assert!(report.to_string().contains("FLIP  b\n        old \"dog\" (class 1, confidence 0.8000)\n"));
    }

    #[test]
    fn each_threshold_fails_on_its_own() {
        let (old, new) = pair();
        let compare = |min_agreement, max_delta, max_mean_delta| {
            let thresholds = Thresholds { min_agreement, max_delta, max_mean_delta };
            compare_observations(Path::new("1"), Path::new("2"), &old, &new, &thresholds)
        };
        assert_eq!(compare(0.75, Some(0.06 + 1e-6), Some(0.04 + 1e-6)).verdict, Verdict::Pass);
        let report = compare(0.75, Some(0.05), None);
        assert_eq!(report.violations.len(), 1);
        assert!(report.violations[0].contains("above --max-delta 0.05"), "{report}");
        let report = compare(0.75, None, Some(0.03));
        assert!(report.violations[0].contains("above --max-mean-delta 0.03"), "{report}");
        assert_eq!(compare(0.8, None, None).verdict, Verdict::Regression);
    }

    #[test]
    fn a_nan_confidence_breaks_a_delta_limit() {
        let old = vec![seen("a", class("cat", 0, 0.9))];
        let new = vec![seen("a", class("cat", 0, f32::NAN))];
        let thresholds = Thresholds { max_delta: Some(1.0), ..Thresholds::default() };
        let report = compare_observations(Path::new("1"), Path::new("2"), &old, &new, &thresholds);
        assert!(report.max_delta.is_nan());
        assert_eq!(report.verdict, Verdict::Regression);
    }
}
