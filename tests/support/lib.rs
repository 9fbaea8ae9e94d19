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

/// Largest |confidence - reference| accepted (the parity bar of the Hugging Face pipeline).
pub const CONFIDENCE_TOLERANCE: f32 = 1e-3;
/// Largest mean |prepared pixel_values - processor pixel_values| accepted per image.
pub const PIXEL_MEAN_TOLERANCE: f64 = 0.002;
/// Largest single |prepared pixel_values - processor pixel_values| accepted per image.
pub const PIXEL_MAX_TOLERANCE: f64 = 0.02;

/// How closely one export followed the Hugging Face pipeline over all reference images.
#[derive(Debug, Clone, Copy, Default)]
pub struct Parity {
    /// Largest |confidence - reference confidence|.
    pub confidence: f32,
    /// Largest per-image mean |pixel_values difference|.
    pub pixel_mean: f64,
    /// Largest single |pixel_values difference|.
    pub pixel_max: f64,
}

/// Exports `checkpoint` with `extra` flags, runs every reference image of `model` through
/// `kiln run --json`, and checks top-1 and confidence against the pipeline's answers, and the runtime's
/// prepared image (normalized as the graph does) against the processor's `pixel_values`.
pub fn check_parity(model: &str, checkpoint: &Path, extra: &[&str]) -> anyhow::Result<Parity> {
    let reference = Reference::load(model)?;
    let (_base, version_dir) = export(checkpoint, extra)?;
    let images: Vec<String> = reference.images.iter().map(|r| r.image.clone()).collect();
    let lines = run_json(&version_dir, &images)?;
    let mut parity = Parity::default();
    for (expected, got) in reference.images.iter().zip(&lines) {
        let label =
            got["label"].as_str().with_context(|| format!("{}: no label in {got}", expected.image))?;
        let confidence = got["confidence"].as_f64().context("no confidence")? as f32;
        anyhow::ensure!(
            label == expected.label,
            "{model} {}: label {label:?}, reference {:?}",
            expected.image,
            expected.label
        );
        let diff = (confidence - expected.confidence).abs();
        anyhow::ensure!(
            diff <= CONFIDENCE_TOLERANCE,
            "{model} {}: confidence {confidence}, reference {} (|diff| {diff})",
            expected.image,
            expected.confidence
        );
        parity.confidence = parity.confidence.max(diff);
    }
    let model_dir = runtime::Model::load(&version_dir)?;
    for expected in &reference.images {
        let (mean, max) = pixel_diff(&model_dir, expected)?;
        anyhow::ensure!(
            mean <= PIXEL_MEAN_TOLERANCE && max <= PIXEL_MAX_TOLERANCE,
            "{model} {}: pixel_values mean |diff| {mean:.2e}, max {max:.2e}",
            expected.image
        );
        parity.pixel_mean = parity.pixel_mean.max(mean);
        parity.pixel_max = parity.pixel_max.max(max);
    }
    eprintln!(
        "{model} {}: max |confidence diff| {:.2e}, pixel_values mean {:.2e} max {:.2e}",
        checkpoint.display(),
        parity.confidence,
        parity.pixel_mean,
        parity.pixel_max
    );
    Ok(parity)
}

/// Mean and max |difference| between the runtime's prepared image, normalized with the artifact's
/// `scale`/`offset` (as its graph does), and the processor's `pixel_values` for one reference image.
fn pixel_diff(model: &runtime::Model, expected: &ReferenceImage) -> anyhow::Result<(f64, f64)> {
    let bytes = std::fs::read(fixture(&expected.image))?;
    let prepared = model.prepare(&bytes).with_context(|| format!("preparing {}", expected.image))?;
    let reference: Vec<f32> = std::fs::read(fixture(&expected.pixel_values.file))?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let spec = &model.manifest().preprocess;
    let plane = (prepared.width() * prepared.height()) as usize;
    anyhow::ensure!(
        reference.len() == 3 * plane,
        "{}: reference pixel_values hold {} values, the prepared image {}x{}x3",
        expected.image,
        reference.len(),
        prepared.height(),
        prepared.width()
    );
    let (mut total, mut max) = (0f64, 0f64);
    for (index, &sample) in prepared.pixels().iter().enumerate() {
        let (pixel, channel) = (index / 3, index % 3);
        let value = f64::from(sample) * f64::from(spec.scale[channel]) + f64::from(spec.offset[channel]);
        let diff = (value - f64::from(reference[channel * plane + pixel])).abs();
        total += diff;
        max = max.max(diff);
    }
    Ok((total / reference.len() as f64, max))
}

/// `kiln run --json` on `images` (paths relative to `fixtures/`): one parsed JSON object per image.
pub fn run_json(version_dir: &Path, images: &[String]) -> anyhow::Result<Vec<serde_json::Value>> {
    let paths: Vec<String> = images.iter().map(|image| fixture(image).display().to_string()).collect();
    let mut args = vec!["run", "--json", "--dir", version_dir.to_str().context("utf-8")?, "--image"];
    args.extend(paths.iter().map(String::as_str));
    let stdout = kiln_ok(&args)?;
    let lines: Vec<serde_json::Value> = stdout.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    anyhow::ensure!(lines.len() == images.len(), "{} results for {} images", lines.len(), images.len());
    Ok(lines)
}
