//! `kiln export`: checkpoint -> published artifact version.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use ::export::{ExportRequest, Precision, export};
use anyhow::Context;
use artifact::ResizeMode;
use clap::{Args, ValueEnum};

#[derive(Args)]
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
    /// How images are resized: `pil` (what ViTImageProcessor does) or `tf` (tf.image.resize bilinear).
    #[arg(long, value_enum, default_value_t = Resize::Pil)]
    resize: Resize,
    /// Arithmetic of the encoder's linear layers: `f32`, or `int8` (int8 weights and per-token int8
    /// activations; published only if it agrees with f32 on top-1 for at least 99 % of the check images).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// Images (JPEG/PNG) to include in a lower-precision export's accuracy report, besides synthetic ones.
    #[arg(long = "accuracy-image", value_name = "FILE")]
    accuracy_images: Vec<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    F32,
    Int8,
}

#[derive(Clone, Copy, ValueEnum)]
enum Resize {
    Pil,
    Tf,
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let request = ExportRequest {
        checkpoint: args.checkpoint.clone(),
        base: args.base,
        version: args.version,
        resize: match args.resize {
            Resize::Pil => ResizeMode::Pil,
            Resize::Tf => ResizeMode::Tf,
        },
        precision: match args.precision {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Int8 => Precision::Int8,
        },
        accuracy_images: args.accuracy_images,
    };
    let started = Instant::now();
    let report = export(&request, &mut |stage| {
        eprintln!("[{:>7.2}s] {stage}", started.elapsed().as_secs_f64());
    })
    .with_context(|| format!("exporting {}", args.checkpoint.display()))?;
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
                    "accuracy vs f32, {} {} images: top-1 agreement {:.1} %, max |confidence difference| {:.2e}",
                    set.images,
                    set.name,
                    100.0 * set.top1_agreement,
                    set.max_confidence_delta
                );
            }
        }
    }
    println!("{}", report.version_dir.display());
    Ok(ExitCode::SUCCESS)
}
