//! `kiln`: export Hugging Face image-classification checkpoints to versioned artifacts, inspect them like
//! `saved_model_cli show`, and classify images with them.

mod check;
mod export;
mod progress;
mod run;
mod serve;
mod show;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc, because glibc's per-thread arenas keep what a thread freed: under load the server's RSS
/// climbed for minutes (decode buffers freed on one thread, reallocated on another) while live memory
/// stayed flat; and it handed a batch's large activations back to the kernel after each run, to fault them
/// in again on the next (ViT-B int8 batch 8: 18 % of the samples in the kernel, 2.6 % with jemalloc).
/// jemalloc reuses them, and its background threads hand idle pages back after its decay time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "kiln", version, about = "Build, inspect and run image-classification artifacts")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import a checkpoint and publish it as `<base>/<version>`.
    Export(export::ExportArgs),
    /// Print an artifact's tag-sets and signatures like `saved_model_cli show`.
    Show(show::ShowArgs),
    /// Classify image files (or base64 strings) with an artifact.
    Run(run::RunArgs),
    /// Gate a pipeline: verify an artifact, or compare its answers with a golden file or a baseline.
    Check(check::CheckArgs),
    /// Serve artifacts over TF Serving's REST and gRPC APIs.
    // Boxed: serve's flags outweigh the other subcommands' (clippy::large_enum_variant).
    Serve(Box<serve::ServeArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Export(args) => export::run(args),
        Command::Show(args) => show::run(args),
        Command::Run(args) => run::run(args),
        Command::Serve(args) => serve::run(*args),
        Command::Check(args) => check::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
