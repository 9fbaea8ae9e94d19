//! Shared plumbing for kiln's end-to-end tests: the real `kiln` binary, the committed fixtures, fresh
//! temporary directories, and [`KilnServer`] (also used by the xtask jobs that drive a real server).

mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use serde::Deserialize;

pub use server::KilnServer;

/// The repository root (the workspace), where `fixtures/` lives.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_owned()
}

/// A path under `fixtures/`.
pub fn fixture(relative: &str) -> PathBuf {
    repo_root().join("fixtures").join(relative)
}

/// The `kiln` binary, freshly built by cargo into the target dir and profile of this test executable.
///
/// Cargo only builds a package's binaries for that package's own integration tests, so `cargo test
/// --workspace` on a clean target dir need not have built `kiln` yet, and an old binary left there would test
/// stale code. Running `cargo build -p kiln` once per test process settles both; when nothing changed it is a
/// no-op.
pub fn kiln_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_kiln().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_kiln() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(Path::parent).context("test executable has no profile dir")?;
    let target_dir = profile_dir.parent().context("profile dir has no target dir")?;
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => bail!("{} is not a cargo profile dir", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--quiet", "-p", "kiln", "--bin", "kiln", "--profile", profile, "--target-dir"])
        .arg(target_dir)
        .current_dir(repo_root())
        .output()
        .context("running cargo build -p kiln")?;
    if !output.status.success() {
        bail!("cargo build -p kiln failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    let binary = profile_dir.join(format!("kiln{}", std::env::consts::EXE_SUFFIX));
    if !binary.is_file() {
        bail!("cargo build -p kiln succeeded but {} is missing", binary.display());
    }
    Ok(binary)
}

/// Runs `kiln` with `args`, returning its output whatever the exit status.
pub fn kiln(args: &[&str]) -> anyhow::Result<Output> {
    let output = Command::new(kiln_binary()?).args(args).output().context("running kiln")?;
    Ok(output)
}

/// Runs `kiln` with `args` and fails unless it exits successfully; returns stdout.
pub fn kiln_ok(args: &[&str]) -> anyhow::Result<String> {
    let output = kiln(args)?;
    if !output.status.success() {
        bail!(
            "kiln {} failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Exports `checkpoint` into a fresh base dir with `extra` flags; returns (temp dir guard, version dir).
pub fn export(checkpoint: &Path, extra: &[&str]) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let base = tempfile::tempdir()?;
    let mut args = vec!["export", "--checkpoint", checkpoint.to_str().context("utf-8 path")?];
    args.extend(["--base", base.path().to_str().context("utf-8 path")?]);
    args.extend(extra);
    let stdout = kiln_ok(&args)?;
    let version_dir = PathBuf::from(stdout.lines().last().context("export printed nothing")?.trim());
    Ok((base, version_dir))
}

/// `fixtures/reference/<model>.json`: what the Hugging Face pipeline answered for each fixture image.
#[derive(Debug, Deserialize)]
pub struct Reference {
    /// Model name.
    pub model: String,
    /// Per-image answers.
    pub images: Vec<ReferenceImage>,
}

/// The Hugging Face pipeline's answer for one image.
#[derive(Debug, Deserialize)]
pub struct ReferenceImage {
    /// Path relative to `fixtures/`.
    pub image: String,
    /// Top-1 label.
    pub label: String,
    /// Top-1 class index.
    pub class_index: usize,
    /// Top-1 softmax probability.
    pub confidence: f32,
    /// The model-input tensor the processor produced.
    pub pixel_values: PixelValues,
}

/// Where the reference model-input tensor is stored.
#[derive(Debug, Deserialize)]
pub struct PixelValues {
    /// Raw little-endian `f32` CHW file, relative to `fixtures/`.
    pub file: String,
    /// `[3, H, W]`.
    pub shape: Vec<usize>,
}

impl Reference {
    /// Reads `fixtures/reference/<model>.json`.
    pub fn load(model: &str) -> anyhow::Result<Reference> {
        let path = fixture(&format!("reference/{model}.json"));
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }
}
