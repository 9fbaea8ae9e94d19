//! `cargo xtask fuzz --seconds N`: runs every cargo-fuzz target in `crates/fuzz` for N seconds each and
//! prints executions and crashes per target; fails if any target crashed, ran out of memory or timed out.
//!
//! Needs a nightly toolchain and `cargo install cargo-fuzz`. The fuzz crate is outside the workspace and
//! builds with sanitizer flags into its own `crates/fuzz/target`, so it never invalidates the shared build.
//! Each target starts from its committed seeds (`crates/fuzz/seeds/<target>`, read-only) plus what earlier
//! runs found (`crates/fuzz/corpus/<target>`, not committed); crash inputs land in
//! `crates/fuzz/artifacts/<target>`, ready for `cargo +nightly fuzz run --fuzz-dir crates/fuzz <target> <file>`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

use crate::workspace_root;

/// The targets, in the order they run: one per untrusted-input parser (see `crates/fuzz/fuzz_targets`).
const TARGETS: [&str; 5] =
    ["image_prepare", "rest_predict", "grpc_predict", "textproto_config", "artifact_manifest"];

/// The runtime's decoder test images (each format's variants, written by Pillow), extra seeds for a
/// one-format `image_prepare` run.
const DECODER_TEST_IMAGES: &str = "crates/runtime/src/image/testdata/formats";

/// libFuzzer's per-input time limit: the slowest legitimate input decodes a 1-megapixel image in well
/// under a second, so 10 s means a hang.
const UNIT_TIMEOUT_SECONDS: u32 = 10;

/// Memory limit per fuzzing process; also the largest single allocation libFuzzer lets through, so an
/// input that makes a parser reserve gigabytes is reported as a crash rather than swapping the machine.
const RSS_LIMIT_MB: u32 = 2048;

/// Arguments of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct Args {
    /// Seconds to fuzz each target.
    #[arg(long, default_value_t = 60)]
    seconds: u32,
    /// Run only these targets (repeatable) [default: all].
    #[arg(long = "target", value_name = "TARGET", value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    targets: Vec<String>,
    /// Start only from the committed seeds whose file name ends in `.EXT` (e.g. `webp`), growing a corpus
    /// of their own: one bounded run per image format, so each decoder gets the time, not just the
    /// formats libFuzzer happens to favour.
    #[arg(long = "seeds", value_name = "EXT")]
    seed_extension: Option<String>,
}

/// What one target's run produced.
struct Outcome {
    target: String,
    executions: Option<u64>,
    corpus: usize,
    /// Crash, leak, out-of-memory and timeout inputs libFuzzer wrote during this run.
    findings: Vec<PathBuf>,
    exit_ok: bool,
}

/// Runs `cargo xtask fuzz` as parsed into `args`.
pub fn run(args: &Args) -> Result<()> {
    ensure!(args.seconds > 0, "--seconds must be positive");
    let fuzz_dir = workspace_root().join("crates/fuzz");
    let version = cargo_fuzz(&fuzz_dir).arg("--version").output();
    if !version.is_ok_and(|output| output.status.success()) {
        bail!(
            "`cargo +nightly fuzz` is not available: install a nightly toolchain and `cargo install cargo-fuzz`"
        );
    }
    let status =
        cargo_fuzz(&fuzz_dir).args(fuzz_dir_args("build", &fuzz_dir)).status().context("cargo fuzz build")?;
    ensure!(status.success(), "building the fuzz targets failed");

    let targets: Vec<&'static str> = TARGETS
        .into_iter()
        .filter(|t| args.targets.is_empty() || args.targets.iter().any(|a| a == t))
        .collect();
    let mut outcomes = Vec::new();
    for target in targets {
        println!("fuzzing {target} for {} s", args.seconds);
        outcomes.push(run_target(&fuzz_dir, target, args.seed_extension.as_deref(), args.seconds)?);
    }

    println!("\n{:<18} {:>12} {:>8} {:>8}", "target", "executions", "corpus", "crashes");
    for outcome in &outcomes {
        let executions = outcome.executions.map_or_else(|| "?".to_owned(), |n| n.to_string());
        println!(
            "{:<18} {executions:>12} {:>8} {:>8}",
            outcome.target,
            outcome.corpus,
            outcome.findings.len()
        );
        for finding in &outcome.findings {
            println!("    {}", finding.display());
        }
    }
    let failed: Vec<&str> =
        outcomes.iter().filter(|o| !o.exit_ok || !o.findings.is_empty()).map(|o| o.target.as_str()).collect();
    ensure!(
        failed.is_empty(),
        "fuzz targets failed: {} (logs in crates/fuzz/target/fuzz-logs)",
        failed.join(", ")
    );
    Ok(())
}

/// `cargo +nightly fuzz` run from the workspace root, with the variables `cargo xtask` inherited from
/// the stable cargo that started it removed, so the nightly toolchain and the fuzz crate's own target
/// dir are used.
fn cargo_fuzz(fuzz_dir: &Path) -> Command {
    let mut command = Command::new("cargo");
    command.args(["+nightly", "fuzz"]).current_dir(workspace_root());
    for variable in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTDOC", "CARGO_BUILD_TARGET_DIR"] {
        command.env_remove(variable);
    }
    command.env("CARGO_TARGET_DIR", fuzz_dir.join("target"));
    command
}

/// `<subcommand> --fuzz-dir crates/fuzz`.
fn fuzz_dir_args<'a>(subcommand: &'a str, fuzz_dir: &'a Path) -> [&'a std::ffi::OsStr; 3] {
    [subcommand.as_ref(), "--fuzz-dir".as_ref(), fuzz_dir.as_os_str()]
}

fn run_target(fuzz_dir: &Path, target: &str, extension: Option<&str>, seconds: u32) -> Result<Outcome> {
    let name = match extension {
        Some(extension) => format!("{target}-{extension}"),
        None => target.to_owned(),
    };
    let corpus = fuzz_dir.join("corpus").join(&name);
    let artifacts = fuzz_dir.join("artifacts").join(&name);
    let logs = fuzz_dir.join("target/fuzz-logs");
    for dir in [&corpus, &artifacts, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let seeds = seeds(fuzz_dir, target, extension)?;
    let before = list_files(&artifacts)?;
    let log_path = logs.join(format!("{name}.log"));
    let log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let status = cargo_fuzz(fuzz_dir)
        .args(fuzz_dir_args("run", fuzz_dir))
        .arg(target)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={UNIT_TIMEOUT_SECONDS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cargo fuzz run {target}"))?;
    let text = fs::read_to_string(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    let findings: Vec<PathBuf> =
        list_files(&artifacts)?.into_iter().filter(|path| !before.contains(path)).collect();
    if !status.success() || !findings.is_empty() {
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        eprintln!("{name} failed ({status}); last lines of {}:", log_path.display());
        for line in tail.into_iter().rev() {
            eprintln!("  {line}");
        }
    }
    Ok(Outcome {
        target: name,
        executions: executions(&text),
        corpus: list_files(&corpus)?.len(),
        findings,
        exit_ok: status.success(),
    })
}

/// The committed seed directory of `target`, or with `extension` a copy of only its seeds of that format
/// (libFuzzer reads every file of a corpus directory), joined for `image_prepare` by the runtime's
/// decoder test images of that format ([`DECODER_TEST_IMAGES`]).
fn seeds(fuzz_dir: &Path, target: &str, extension: Option<&str>) -> Result<PathBuf> {
    let committed = fuzz_dir.join("seeds").join(target);
    let Some(extension) = extension else {
        return Ok(committed);
    };
    let chosen = fuzz_dir.join("target/fuzz-seeds").join(format!("{target}-{extension}"));
    if chosen.exists() {
        fs::remove_dir_all(&chosen).with_context(|| format!("removing {}", chosen.display()))?;
    }
    fs::create_dir_all(&chosen).with_context(|| format!("creating {}", chosen.display()))?;
    let mut candidates = list_files(&committed)?;
    if target == "image_prepare" {
        candidates.extend(list_files(&workspace_root().join(DECODER_TEST_IMAGES))?);
    }
    let mut copied = 0;
    for seed in candidates {
        if seed.extension().is_some_and(|e| e.eq_ignore_ascii_case(extension)) {
            let file_name = seed.file_name().context("seed without a file name")?;
            fs::copy(&seed, chosen.join(file_name)).with_context(|| format!("copying {}", seed.display()))?;
            copied += 1;
        }
    }
    ensure!(copied > 0, "no seed of {target} ends in .{extension} (see {})", committed.display());
    Ok(chosen)
}

/// Executions from libFuzzer's log: the final `stat::number_of_executed_units`, or when a crash ended the
/// run before the final stats, the last status line (`#12345 pulse ...`).
fn executions(log: &str) -> Option<u64> {
    let stat = log
        .lines()
        .filter_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
        .filter_map(|n| n.trim().parse().ok())
        .next_back();
    stat.or_else(|| {
        log.lines()
            .filter_map(|line| line.strip_prefix('#'))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .next_back()
    })
}

fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_come_from_final_stats_or_the_last_status_line() {
        let finished =
            "#2\tINITED cov: 10\n#4096\tpulse  cov: 12 exec/s: 2048\nstat::number_of_executed_units: 5000\n";
        assert_eq!(executions(finished), Some(5000));
        let crashed = "#2\tINITED cov: 10\n#77\tNEW    cov: 11\n==12== ERROR: libFuzzer: deadly signal\n";
        assert_eq!(executions(crashed), Some(77));
        assert_eq!(executions("error: no such target\n"), None);
    }

    #[test]
    fn every_target_has_a_source_file_and_seeds() -> Result<()> {
        let fuzz_dir = workspace_root().join("crates/fuzz");
        for target in TARGETS {
            ensure!(fuzz_dir.join(format!("fuzz_targets/{target}.rs")).is_file(), "{target}: no source file");
            ensure!(!list_files(&fuzz_dir.join("seeds").join(target))?.is_empty(), "{target}: no seeds");
        }
        Ok(())
    }
}
