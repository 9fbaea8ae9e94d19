//! `kiln check`: the regression gate for build pipelines, over the `check` crate.
//!
//! Modes, chosen by flags:
//! - `--dir DIR` alone: integrity (digests, format version, signature, graph compiles, warm-up runs);
//! - `--dir DIR --write-golden FILE --images IMAGES`: record DIR's answers as a golden file;
//! - `--dir DIR --golden FILE [--tolerance X]`: rerun a golden file and diff the answers;
//! - `--dir NEW --baseline OLD --images IMAGES [--min-agreement A] [--max-delta D] [--max-mean-delta M]`:
//!   compare two versions.
//!
//! `--report FILE.html` (golden and baseline modes) also writes the check as one self-contained HTML page.
//!
//! Exit status: 0 pass, 1 regression (answers drifted or a threshold broke), 2 the check could not be
//! carried out (bad usage, an artifact that fails integrity or does not load, missing or changed golden
//! inputs, unreadable files). `--json` prints one JSON report on stdout instead of the text report.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ::check::{GoldenFile, Thresholds, Verdict};
use anyhow::Context;
use clap::Args;
use runtime::{Model, RuntimeOptions};
use serde::Serialize;

/// Exit status for a check that ran and found drift.
const EXIT_REGRESSION: u8 = 1;
/// Exit status for a check that could not be carried out (clap's usage errors exit 2 as well).
const EXIT_ERROR: u8 = 2;

#[derive(Args)]
pub struct CheckArgs {
    /// The artifact to check: a version directory, or a base directory (its highest version).
    #[arg(long)]
    dir: PathBuf,
    /// Golden file (JSON Lines) to rerun and compare against.
    #[arg(long, conflicts_with_all = ["write_golden", "baseline"])]
    golden: Option<PathBuf>,
    /// Record --dir's answers on --images into this golden file (replaced if it exists).
    #[arg(long = "write-golden", requires = "images", conflicts_with = "baseline")]
    write_golden: Option<PathBuf>,
    /// Baseline artifact (version or base directory) to compare --dir against on --images.
    #[arg(long, requires = "images")]
    baseline: Option<PathBuf>,
    /// Directory of images (searched recursively, hidden files skipped).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Largest |delta confidence| against the golden file that is not drift.
    #[arg(long, requires = "golden", default_value_t = ::check::DEFAULT_TOLERANCE, value_parser = non_negative_f32)]
    tolerance: f32,
    /// Smallest fraction (0 to 1) of images on which --dir and --baseline must agree.
    #[arg(long = "min-agreement", requires = "baseline", default_value_t = 1.0, value_parser = fraction)]
    min_agreement: f64,
    /// Largest |delta confidence| allowed on any image both versions label the same (default: no limit).
    #[arg(long = "max-delta", requires = "baseline", value_parser = non_negative_f32)]
    max_delta: Option<f32>,
    /// Largest mean |delta confidence| over images both versions label the same (default: no limit).
    #[arg(long = "max-mean-delta", requires = "baseline", value_parser = non_negative_f32)]
    max_mean_delta: Option<f32>,
    /// Also write a self-contained HTML report of a --golden or --baseline run to this file.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// Print one JSON report on stdout instead of text.
    #[arg(long)]
    json: bool,
}

fn non_negative_f32(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => Err(format!("`{text}` is not a finite number >= 0")),
    }
}

fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("`{text}` is not a number from 0 to 1")),
    }
}

/// Runs the check; every failure to carry it out becomes exit status 2 with the error on stderr (and,
/// with `--json`, a JSON error report on stdout), so a pipeline can tell "drifted" from "broken".
pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    match check(args) {
        Ok(code) => Ok(code),
        Err(error) => {
            if json {
                let report = serde_json::json!({"verdict": "error", "error": format!("{error:#}")});
                // Exit status 2 and stderr carry the failure even if stdout is gone.
                let _ = writeln!(std::io::stdout(), "{report}");
            }
            eprintln!("error: {error:#}");
            Ok(ExitCode::from(EXIT_ERROR))
        }
    }
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    if args.images.is_some() && args.write_golden.is_none() && args.baseline.is_none() {
        anyhow::bail!("--images is for --write-golden or --baseline");
    }
    if args.report.is_some() && args.golden.is_none() && args.baseline.is_none() {
        anyhow::bail!("--report is for --golden or --baseline");
    }
    if let Some(golden) = &args.write_golden {
        let images = args.images.as_deref().context("--write-golden needs --images")?;
        return write_golden(&args.dir, golden, images, args.json);
    }
    if let Some(golden) = &args.golden {
        let model = load(&args.dir)?;
        let file = GoldenFile::read(golden)?;
        let progress = crate::progress::on_stderr(args.json);
        let report = ::check::check_golden(&model, &file, args.tolerance, progress.as_ref())?;
        if let Some(path) = &args.report {
            write_report(path, &::check::golden_html(&report, &file, &model))?;
        }
        return finish(&report, report.verdict, args.json);
    }
    if let Some(baseline) = &args.baseline {
        let images = args.images.as_deref().context("--baseline needs --images")?;
        let old = load(baseline)?;
        let new = load(&args.dir)?;
        let thresholds = Thresholds {
            min_agreement: args.min_agreement,
            max_delta: args.max_delta,
            max_mean_delta: args.max_mean_delta,
        };
        let images = ::check::list_images(images)?;
        let progress = crate::progress::on_stderr(args.json);
        let old_answers = ::check::observe(&old, &images, progress.as_ref())?;
        let new_answers = ::check::observe(&new, &images, progress.as_ref())?;
        let report =
            ::check::compare_observations(old.dir(), new.dir(), &old_answers, &new_answers, &thresholds);
        if let Some(path) = &args.report {
            let models = ::check::ReportModels { old: Some(&old), new: Some(&new) };
            write_report(path, &::check::baseline_html(&report, &old_answers, &new_answers, models))?;
        }
        return finish(&report, report.verdict, args.json);
    }
    let report = ::check::verify_integrity(&args.dir, RuntimeOptions::default())?;
    finish(&report, Verdict::Pass, args.json)
}

fn write_report(path: &Path, html: &str) -> anyhow::Result<()> {
    std::fs::write(path, html).with_context(|| format!("writing the report {}", path.display()))
}

fn load(dir: &Path) -> anyhow::Result<Model> {
    Model::load(dir).with_context(|| format!("loading {}", dir.display()))
}

fn write_golden(dir: &Path, golden: &Path, images: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let model = load(dir)?;
    let progress = crate::progress::on_stderr(json);
    let observations = ::check::observe(&model, &::check::list_images(images)?, progress.as_ref())?;
    let file = GoldenFile::record(&model, &observations, golden)?;
    file.write(golden)?;
    let refused = observations.iter().filter(|o| matches!(o.outcome, ::check::Outcome::Error { .. })).count();
    let text = if json {
        let summary = serde_json::json!({
            "verdict": Verdict::Pass,
            "golden": golden,
            "artifact": model.dir(),
            "images": observations.len(),
            "refused": refused,
        });
        format!("{summary}\n")
    } else {
        format!(
            "wrote {} ({} images from {}, {refused} recorded as refused) with the answers of {}\n",
            golden.display(),
            observations.len(),
            images.display(),
            model.dir().display()
        )
    };
    std::io::stdout().write_all(text.as_bytes()).context("printing the summary")?;
    Ok(ExitCode::SUCCESS)
}

/// Prints `report` (text or JSON) and maps the verdict to the exit status. A report that cannot be
/// printed (a closed pipe) is an error: the pipeline did not get the verdict.
fn finish(
    report: &(impl Serialize + std::fmt::Display),
    verdict: Verdict,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let text = if json {
        let mut value = serde_json::to_value(report).expect("reports serialize");
        if let Some(object) = value.as_object_mut() {
            object.entry("verdict").or_insert_with(|| serde_json::json!(verdict));
        }
        format!("{value}\n")
    } else {
        report.to_string()
    };
    std::io::stdout().write_all(text.as_bytes()).context("printing the report")?;
    Ok(match verdict {
        Verdict::Pass => ExitCode::SUCCESS,
        Verdict::Regression => ExitCode::from(EXIT_REGRESSION),
        Verdict::InputProblem => ExitCode::from(EXIT_ERROR),
    })
}
