//! `kiln export`: checkpoint -> published artifact version.
//!
//! Progress (bars on a terminal, time-stamped lines otherwise, none with `--json`) and the summary go to
//! stderr; stdout carries only what scripts read: the version directory (last line), or with `--json` one
//! JSON object. With `SOURCE_DATE_EPOCH` set, two exports of the same inputs are byte-identical;
//! `--if-changed` publishes nothing when the newest version has the same content.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use ::export::{
    AccuracyReport, ExportReport, ExportRequest, MIN_TOP1_AGREEMENT, Precision, PublishOptions, export_with,
};
use anyhow::{Context, bail};
use artifact::ResizeMode;
use clap::{Args, ValueEnum};
use serde::Serialize;

/// The reproducible-builds variable (<https://reproducible-builds.org/specs/source-date-epoch/>) that
/// fixes `provenance.created_unix`, the only part of an export that otherwise depends on when it ran.
const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";

/// The end of `kiln export --help`: the environment variable the flags do not show.
const ENVIRONMENT_HELP: &str = "\
Environment:
  SOURCE_DATE_EPOCH  Unix time (decimal seconds) to record as provenance.created_unix instead of now;
                     two exports of the same inputs are then byte-identical";

#[derive(Args)]
#[command(after_help = ENVIRONMENT_HELP)]
pub struct ExportArgs {
    /// Checkpoint directory (config.json, preprocessor_config.json and model.safetensors,
    /// pytorch_model.bin or model.onnx), or one of those model files.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Base directory; the artifact is published as `<base>/<version>`.
    #[arg(long)]
    base: PathBuf,
    /// Version number to publish (default: the next free integer). An existing version is never replaced.
    #[arg(long)]
    version: Option<u64>,
    /// Image preprocessing: `pil` (what the checkpoint's Hugging Face image processor does: EXIF
    /// orientation, Pillow resize, crop) or `tf` (the TF Serving seed: `tf.io.decode_jpeg`'s fast DCT and
    /// `tf.image.resize` bilinear; only for processors that resize to an exact size without cropping).
    #[arg(long, value_enum, default_value_t = Resize::Pil)]
    resize: Resize,
    /// Decode a JPEG at 1/2, 1/4 or 1/8 of its size when the resize shrinks it at least that much, as
    /// Pillow's `Image.draft` (and `thumbnail`) does: a 5-megapixel photo prepares 2.4x faster,
    /// and the model sees pixels 1 to 1.5 levels (of 255) from the full decode's on average, so top-1
    /// can differ from the Hugging Face pipeline on near ties. Only with --resize pil.
    #[arg(long)]
    jpeg_draft: bool,
    /// Arithmetic of the linear layers: `f32`, `int8` (int8 weights and per-token int8 activations) or
    /// `bf16` (bf16 weights and activations, f32 sums: AVX512_BF16 kernels, else tract's f32 matmul);
    /// the last two for architectures made of linear layers, published only if they agree with f32 on
    /// top-1 for at least --min-top1-agreement of the --accuracy-image images, or of 32 synthetic ones
    /// if none are given.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// An image file, or a directory of them (.jpg .png .webp .gif .bmp .tif), like those the model will
    /// serve: a lower-precision export is published only if it agrees with f32 on enough of them
    /// (repeatable). The synthetic images are then reported but do not decide.
    #[arg(long = "accuracy-image", value_name = "FILE|DIR")]
    accuracy_images: Vec<PathBuf>,
    /// Percentage of the gating images (the --accuracy-image ones, else the synthetic ones) on which a
    /// lower-precision export must pick f32's top-1 class to be published (recorded in accuracy.json).
    #[arg(long, value_name = "PERCENT", default_value_t = 100.0 * MIN_TOP1_AGREEMENT, value_parser = percent)]
    min_top1_agreement: f64,
    /// Publish nothing, and name the existing version, when the newest version under --base already has
    /// the content digest this export would publish (exit status 0 either way).
    #[arg(long)]
    if_changed: bool,
    /// Print one JSON object on stdout (version dir, version, content digest, published, file sizes, stage
    /// timings, self-check, accuracy) instead of the version dir; the human summary stays on stderr.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    F32,
    Int8,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum Resize {
    Pil,
    Tf,
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let options = PublishOptions {
        created_unix: created_unix_from(std::env::var_os(SOURCE_DATE_EPOCH))?,
        if_changed: args.if_changed,
    };
    let request = ExportRequest {
        checkpoint: args.checkpoint.clone(),
        base: args.base,
        version: args.version,
        resize: match args.resize {
            Resize::Pil => ResizeMode::Pil,
            Resize::Tf => ResizeMode::Tf,
        },
        jpeg_draft: args.jpeg_draft,
        precision: match args.precision {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Int8 => Precision::Int8,
            PrecisionArg::Bf16 => Precision::Bf16,
        },
        accuracy_images: args.accuracy_images,
        min_top1_agreement: args.min_top1_agreement / 100.0,
    };
    let progress = crate::progress::on_stderr(args.json);
    let report = export_with(&request, &options, progress.as_ref())
        .with_context(|| format!("exporting {}", args.checkpoint.display()))?;
    print_summary(&report);
    if args.json {
        println!("{}", serde_json::to_string(&ExportJson::from(&report))?);
    } else {
        println!("{}", report.version_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `provenance.created_unix` from the value of `SOURCE_DATE_EPOCH`: `None` (the current time) when unset
/// or empty, else the decimal seconds it must hold; anything else is refused rather than guessed at, as
/// the specification asks, since a silently ignored value would break reproducibility unnoticed.
fn created_unix_from(value: Option<OsString>) -> anyhow::Result<Option<u64>> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match value.to_str().filter(|v| v.bytes().all(|b| b.is_ascii_digit())).map(str::parse::<u64>) {
        Some(Ok(seconds)) => Ok(Some(seconds)),
        _ => bail!(
            "{SOURCE_DATE_EPOCH}={value:?} is not a time kiln can use: it must be seconds since 1970-01-01 UTC \
             as decimal digits (`date +%s`), at most {}; unset it to stamp the export with the current time",
            u64::MAX
        ),
    }
}

/// A percentage from 0 to 100, for `--min-top1-agreement`.
fn percent(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(percent) if (0.0..=100.0).contains(&percent) => Ok(percent),
        _ => Err(format!("{value:?} is not a percentage from 0 to 100")),
    }
}

/// The human summary on stderr: stage times, the self-check or accuracy, the content digest and whether
/// anything was published.
fn print_summary(report: &ExportReport) {
    for (stage, seconds) in &report.stages {
        eprintln!("  {stage:<16} {seconds:>6.2}s");
    }
    match &report.accuracy {
        None => eprintln!(
            "self-check: {} samples, max |confidence difference| {:.2e}",
            report.samples, report.max_confidence_diff
        ),
        Some(accuracy) => {
            for set in &accuracy.sets {
                eprintln!(
                    "accuracy vs f32, {} {} images: top-1 agreement {:.1} %, max |confidence difference| \
                     {:.2e}{}",
                    set.images,
                    set.name,
                    100.0 * set.top1_agreement,
                    set.max_confidence_delta,
                    if set.gates {
                        format!(" (gates publishing: at least {:.1} %)", 100.0 * accuracy.min_top1_agreement)
                    } else {
                        " (reported only)".to_owned()
                    }
                );
            }
        }
    }
    eprintln!("content digest: {}", report.content_digest);
    if report.published {
        eprintln!("published version {} at {}", report.version, report.version_dir.display());
    } else {
        eprintln!(
            "unchanged: the newest version, {} at {}, has the same content digest; nothing was published",
            report.version,
            report.version_dir.display()
        );
    }
}

/// `kiln export --json`: what a pipeline needs to record and decide on, in one object.
#[derive(Serialize)]
struct ExportJson<'r> {
    version_dir: &'r std::path::Path,
    version: u64,
    content_digest: &'r str,
    /// False when `--if-changed` found the newest version with the same content digest.
    published: bool,
    /// Bytes per file of the version directory.
    files: &'r BTreeMap<String, u64>,
    /// Stage names and seconds, in the order they ran.
    stages: Vec<StageJson>,
    self_check: SelfCheckJson,
    /// For lower precisions, the agreement with f32 that `accuracy.json` records; `null` for f32.
    accuracy: Option<&'r AccuracyReport>,
}

#[derive(Serialize)]
struct StageJson {
    stage: &'static str,
    seconds: f64,
}

#[derive(Serialize)]
struct SelfCheckJson {
    samples: usize,
    max_confidence_diff: f32,
}

impl<'r> From<&'r ExportReport> for ExportJson<'r> {
    fn from(report: &'r ExportReport) -> Self {
        ExportJson {
            version_dir: &report.version_dir,
            version: report.version,
            content_digest: &report.content_digest,
            published: report.published,
            files: &report.files,
            stages: report.stages.iter().map(|&(stage, seconds)| StageJson { stage, seconds }).collect(),
            self_check: SelfCheckJson {
                samples: report.samples,
                max_confidence_diff: report.max_confidence_diff,
            },
            accuracy: report.accuracy.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_date_epoch_is_decimal_seconds_or_refused() -> anyhow::Result<()> {
        assert_eq!(created_unix_from(None)?, None);
        assert_eq!(created_unix_from(Some("".into()))?, None);
        assert_eq!(created_unix_from(Some("1700000000".into()))?, Some(1_700_000_000));
        assert_eq!(created_unix_from(Some("0".into()))?, Some(0));
        for bad in ["-1", "+5", "1.5", " 17", "17 ", "1e9", "yesterday", "18446744073709551616"] {
            let error = created_unix_from(Some(bad.into())).err().context(format!("`{bad}` accepted"))?;
            let message = error.to_string();
            assert!(message.contains("SOURCE_DATE_EPOCH") && message.contains(bad), "{message}");
        }
        Ok(())
    }

    #[test]
    fn agreement_bar_is_a_percentage() {
        assert_eq!(percent("95"), Ok(95.0));
        assert_eq!(percent("0"), Ok(0.0));
        assert_eq!(percent("99.5"), Ok(99.5));
        for bad in ["-1", "100.1", "NaN", "0.9x", ""] {
            let message = percent(bad).expect_err(bad);
            assert!(message.contains("percentage"), "{message}");
        }
    }
}
