//! `kiln export`: checkpoint -> published artifact version.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use ::export::{ExportRequest, export};
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
    };
    let started = Instant::now();
    let report = export(&request, &mut |stage| {
        eprintln!("[{:>7.2}s] {stage}", started.elapsed().as_secs_f64());
    })
    .with_context(|| format!("exporting {}", args.checkpoint.display()))?;
    for (stage, seconds) in &report.stages {
        eprintln!("  {stage:<16} {seconds:>6.2}s");
    }
    eprintln!(
        "self-check: {} samples, max |confidence difference| {:.2e}",
        report.samples, report.max_confidence_diff
    );
    println!("{}", report.version_dir.display());
    Ok(ExitCode::SUCCESS)
}
