//! kiln's developer tasks, run as `cargo xtask <task>` (the alias lives in `.cargo/config.toml`).
//!
//! One module per task; this file only parses the command line and dispatches. Tasks that touch product
//! behaviour call the library crates rather than reimplementing them.
//!
//! ```text
//! cargo xtask export ARGS...      # `kiln export ARGS...` from a release build (same code as the CLI)
//! cargo xtask fixtures            # regenerate fixtures/ with the pinned Python environment
//! cargo xtask fixtures --check    # verify fixtures/ against fixtures/CHECKSUMS, no Python needed
//! cargo xtask fixtures vit-base   # write a random-weight ViT-B/16 checkpoint to target/vit-base
//! cargo xtask fuzz --seconds 60  # every fuzz target for 60 s each (nightly + cargo-fuzz)
//! cargo xtask soak --seconds 60  # kiln serve under 70/30 good/bad load across a version swap
//! cargo xtask bench [--quick]     # kiln vs ONNX Runtime vs PyTorch on ViT-B/16, tables in target/bench
//! cargo xtask client-compat       # the seed's TF Serving clients and tritonclient (KServe v2) (PyPI)
//! cargo xtask image               # OCI image offline (static musl kiln, umoci), run from the unpacked image
//! cargo xtask manifests           # crates/kiln/deploy/kubernetes rendered and validated offline (PyPI)
//! cargo xtask scale               # rolling update of 3 kiln serve replicas behind HAProxy, 0 failures
//! ```

mod bench;
mod client_compat;
mod demo;
mod fixtures;
mod fuzz;
mod image;
mod manifests;
mod scale;
mod soak;
mod venv;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context;

use clap::{Parser, Subcommand};

/// The kiln binary's allocator, because the bench worker runs kiln's runtime in this process and should
/// time it as `kiln` runs it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// kiln's developer tasks.
#[derive(Parser)]
#[command(name = "cargo xtask", about = "kiln's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Benchmark kiln against ONNX Runtime and PyTorch on the full-size ViT-B/16, engines alternating.
    Bench(bench::Args),
    /// The kiln side of `bench`, started by it from a release build.
    #[command(hide = true)]
    BenchWorker(bench::WorkerArgs),
    /// Run real Python clients (the seed's TF Serving snippets, tritonclient over KServe v2) against
    /// `kiln serve` (needs PyPI; not in CI).
    ClientCompat(client_compat::Args),
    /// Export the committed fixture model, show its signature, classify a few images, then serve it and
    /// send REST and gRPC predict requests.
    Demo,
    /// Export a checkpoint into an artifact: `kiln export` (same flags), built in release mode first.
    Export {
        /// Arguments for `kiln export`, e.g. `--checkpoint DIR --base DIR [--version N] [--resize tf]`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Regenerate or verify the committed test fixtures, or write the full-size benchmark checkpoint.
    Fixtures(fixtures::Args),
    /// Run every cargo-fuzz target in crates/fuzz for a bounded time; fails on any crash.
    Fuzz(fuzz::Args),
    /// Build kiln's OCI image offline (static musl build packed by umoci) and serve from the unpacked image.
    Image,
    /// Render the Kubernetes and KServe manifests and validate them offline against their schemas.
    Manifests,
    /// Roll a new model version through 3 `kiln serve` replicas behind HAProxy under REST and gRPC load.
    Scale(scale::Args),
    /// Drive `kiln serve` with concurrent good and bad REST/gRPC requests across a version swap.
    Soak(soak::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Bench(args) => bench::run(&args),
        Task::BenchWorker(args) => bench::run_worker(&args),
        Task::ClientCompat(args) => client_compat::run(args),
        Task::Demo => demo::run(),
        Task::Export { args } => export(&args),
        Task::Fixtures(args) => fixtures::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Image => image::run(),
        Task::Manifests => manifests::run(),
        Task::Scale(args) => scale::run(&args),
        Task::Soak(args) => soak::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `kiln export` with `args`, so pipelines that drive the workspace through xtask export with exactly the
/// code (and flags) users run.
fn export(args: &[String]) -> anyhow::Result<()> {
    let status = Command::new(release_kiln()?).arg("export").args(args).status()?;
    anyhow::ensure!(status.success(), "kiln export failed ({status})");
    Ok(())
}

/// Builds the `kiln` binary in release mode and returns its path: tasks drive kiln as a user would.
fn release_kiln() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "kiln"])
        .current_dir(&root)
        .status()
        .context("starting cargo build --release -p kiln")?;
    anyhow::ensure!(status.success(), "building kiln failed");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(target_dir.join("release").join(format!("kiln{}", std::env::consts::EXE_SUFFIX)))
}

/// Runs `kiln export --checkpoint CHECKPOINT --base BASE EXTRA...` with the `kiln` binary, its progress
/// shown as it goes, and returns the version directory it published.
fn kiln_export(kiln: &Path, checkpoint: &Path, base: &Path, extra: &[String]) -> anyhow::Result<PathBuf> {
    let output = Command::new(kiln)
        .arg("export")
        .arg("--checkpoint")
        .arg(checkpoint)
        .arg("--base")
        .arg(base)
        .args(extra)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running kiln export")?;
    anyhow::ensure!(
        output.status.success(),
        "kiln export of {} failed ({})",
        checkpoint.display(),
        output.status
    );
    let printed = String::from_utf8(output.stdout).context("kiln export printed a non-UTF-8 path")?;
    Ok(PathBuf::from(printed.lines().last().context("kiln export printed no version directory")?))
}

/// Runs `command` with its output shown, failing with the command line if it does not succeed.
fn run_checked(command: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{command:?}");
    println!("$ {shown}");
    let status = command.status().with_context(|| format!("starting {shown}"))?;
    anyhow::ensure!(status.success(), "{shown} failed ({status})");
    Ok(())
}

/// The workspace root, so tasks behave the same from any working directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map_or(manifest_dir.clone(), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// clap checks argument definitions only when parsing; this makes a broken definition fail `cargo test`.
    #[test]
    fn command_line_definition_is_valid() {
        Cli::command().debug_assert();
    }
}
