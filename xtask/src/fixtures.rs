//! `cargo xtask fixtures`: regenerate the committed fixtures from `fixtures/generate.py` in a pinned
//! virtualenv (all of them, or `--only` some parts), verify them against `fixtures/CHECKSUMS` without Python
//! (`--check`, also run by `cargo test`), or write the full-size ViT-B/16 benchmark checkpoint (`vit-base`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

use crate::workspace_root;

/// Name of the digest list inside `fixtures/`, in `sha256sum` format so `sha256sum -c` reads it too.
const CHECKSUMS_FILE: &str = "CHECKSUMS";

/// Generator inputs covered by CHECKSUMS: editing the scripts without regenerating is staleness too.
/// `generate_tf.py` and `requirements-tf.txt` write `reference/tf/` and `reference/tiny-vit-tf.json` from
/// TensorFlow in a separate virtualenv (see the README); they are covered like the rest.
const COVERED_FILES: [&str; 6] = [
    "generate.py",
    "architectures.py",
    "requirements.txt",
    "requirements-nodeps.txt",
    "generate_tf.py",
    "requirements-tf.txt",
];

/// Directories whose every file is generated and covered by CHECKSUMS.
const COVERED_DIRS: [&str; 3] = ["images", "models", "reference"];

/// Requirement files installed into the virtualenv, with whether pip may resolve their dependencies.
/// timm is installed without its dependencies: it would pull a torchvision built for another torch, and
/// the generator only reads label files timm ships.
const REQUIREMENTS: [(&str, bool); 2] = [("requirements.txt", true), ("requirements-nodeps.txt", false)];

/// Marker in the virtualenv holding the digest of the requirement files it was built from.
const VENV_STAMP: &str = "kiln-requirements.sha256";

/// Arguments of `cargo xtask fixtures`.
#[derive(clap::Args)]
pub struct Args {
    /// Verify fixtures/ against fixtures/CHECKSUMS (no Python); fails naming every stale, missing or
    /// unlisted file.
    #[arg(long)]
    check: bool,
    /// Python interpreter that already has fixtures/requirements*.txt installed, instead of creating
    /// target/fixtures-venv.
    #[arg(long, global = true, value_name = "PYTHON")]
    python: Option<PathBuf>,
    /// Regenerate only these parts from the committed files, keeping everything else, then rewrite
    /// CHECKSUMS: `images`, `vit` (retrain both ViTs), `vit-references`, `archs` (every `tiny-<arch>`) or one
    /// architecture such as `deit` (`fixtures/generate.py committed --help` lists them).
    #[arg(long, num_args = 1.., value_name = "PART", conflicts_with = "check")]
    only: Vec<String>,
    #[command(subcommand)]
    target: Option<Target>,
}

#[derive(clap::Subcommand)]
enum Target {
    /// Write a random-weight checkpoint with the exact google/vit-base-patch16-224 config and ImageNet-1k
    /// labels (safetensors, pytorch_model.bin, ONNX; about 1 GB; not committed).
    VitBase {
        /// Output directory [default: target/vit-base in the workspace].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs `cargo xtask fixtures` as parsed into `args`.
pub fn run(args: &Args) -> Result<()> {
    let root = workspace_root();
    let fixtures = root.join("fixtures");
    if args.check {
        ensure!(args.target.is_none(), "--check verifies the committed fixtures and takes no subcommand");
        let count = check(&fixtures)?;
        println!("fixtures: {count} files match {}", fixtures.join(CHECKSUMS_FILE).display());
        return Ok(());
    }
    let python = match &args.python {
        Some(python) => python.clone(),
        None => prepare_venv(&root, &fixtures)?,
    };
    let script = fixtures.join("generate.py");
    match &args.target {
        None => {
            let mut command = Command::new(&python);
            command.arg(&script).arg("committed").arg("--fixtures").arg(&fixtures);
            if args.only.is_empty() {
                for dir in COVERED_DIRS {
                    let path = fixtures.join(dir);
                    if path.exists() {
                        fs::remove_dir_all(&path)
                            .with_context(|| format!("removing stale {}", path.display()))?;
                    }
                }
            } else {
                command.arg("--only").args(&args.only);
            }
            run_command(&mut command)?;
            let count = write_checksums(&fixtures)?;
            println!("fixtures: wrote {} ({count} files)", fixtures.join(CHECKSUMS_FILE).display());
        }
        Some(Target::VitBase { out }) => {
            ensure!(args.only.is_empty(), "--only selects committed fixtures; vit-base writes none");
            let out = out.clone().unwrap_or_else(|| root.join("target").join("vit-base"));
            let mut command = Command::new(&python);
            command.arg(&script).arg("vit-base").arg("--out").arg(&out);
            run_command(&mut command)?;
        }
    }
    Ok(())
}

/// Creates (or reuses) `target/fixtures-venv` with the pinned requirements, returning its interpreter.
///
/// The venv is reinstalled only when the requirement files change, tracked by a digest stamp inside it.
fn prepare_venv(root: &Path, fixtures: &Path) -> Result<PathBuf> {
    let venv = root.join("target").join("fixtures-venv");
    let python =
        if cfg!(windows) { venv.join("Scripts").join("python.exe") } else { venv.join("bin").join("python") };
    if !python.exists() {
        println!("fixtures: creating {}", venv.display());
        run_command(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    let mut hasher = Sha256::new();
    for (name, _) in REQUIREMENTS {
        let path = fixtures.join(name);
        hasher.update(fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
    }
    let wanted = hex(&hasher.finalize());
    let stamp = venv.join(VENV_STAMP);
    if fs::read_to_string(&stamp).is_ok_and(|found| found.trim() == wanted) {
        return Ok(python);
    }
    for (name, resolve_dependencies) in REQUIREMENTS {
        let mut command = Command::new(&python);
        command.args(["-m", "pip", "install", "--disable-pip-version-check"]);
        if !resolve_dependencies {
            command.arg("--no-deps");
        }
        command.arg("-r").arg(fixtures.join(name));
        run_command(&mut command)?;
    }
    fs::write(&stamp, format!("{wanted}\n")).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}

fn run_command(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    println!("fixtures: running {shown}");
    let status = command.status().with_context(|| format!("starting {shown}"))?;
    ensure!(status.success(), "{shown} failed with {status}");
    Ok(())
}

/// Writes `fixtures/CHECKSUMS` for the generator inputs and every generated file; returns how many files
/// it lists.
pub fn write_checksums(fixtures: &Path) -> Result<usize> {
    let digests = current_digests(fixtures)?;
    let mut text = String::new();
    for (path, digest) in &digests {
        writeln!(text, "{digest}  {path}")?;
    }
    let file = fixtures.join(CHECKSUMS_FILE);
    fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    Ok(digests.len())
}

/// Verifies the fixtures against `fixtures/CHECKSUMS`; returns how many files matched.
///
/// Fails naming every file whose content changed, every listed file that is missing and every covered
/// file that is not listed, so an edited or half-regenerated fixture cannot pass unnoticed.
pub fn check(fixtures: &Path) -> Result<usize> {
    let file = fixtures.join(CHECKSUMS_FILE);
    let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let mut expected = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let Some((digest, path)) = line.split_once("  ") else {
            bail!("{}:{}: expected `<sha256>  <path>`, found {line:?}", file.display(), number + 1);
        };
        expected.insert(path.to_owned(), digest.to_owned());
    }
    let found = current_digests(fixtures)?;
    let mut problems = Vec::new();
    for (path, digest) in &expected {
        match found.get(path) {
            None => problems.push(format!("fixtures/{path} is listed in {CHECKSUMS_FILE} but missing")),
            Some(actual) if actual != digest => problems.push(format!(
                "fixtures/{path} is stale or edited: sha256 {actual}, {CHECKSUMS_FILE} says {digest}"
            )),
            Some(_) => {}
        }
    }
    for path in found.keys().filter(|path| !expected.contains_key(*path)) {
        problems.push(format!("fixtures/{path} is not listed in {CHECKSUMS_FILE}"));
    }
    ensure!(
        problems.is_empty(),
        "{} fixture file(s) do not match {}; regenerate with `cargo xtask fixtures`:\n  {}",
        problems.len(),
        file.display(),
        problems.join("\n  ")
    );
    Ok(expected.len())
}

/// sha256 of every covered file, keyed by its `/`-separated path relative to `fixtures`.
fn current_digests(fixtures: &Path) -> Result<BTreeMap<String, String>> {
    let mut files = Vec::new();
    for name in COVERED_FILES {
        let path = fixtures.join(name);
        if path.exists() {
            files.push(path);
        }
    }
    for dir in COVERED_DIRS {
        let path = fixtures.join(dir);
        if path.exists() {
            collect_files(&path, &mut files)?;
        }
    }
    let mut digests = BTreeMap::new();
    for path in files {
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let relative =
            path.strip_prefix(fixtures).with_context(|| format!("{} outside fixtures", path.display()))?;
        let key = relative
            .components()
            .map(|part| part.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        digests.insert(key, hex(&Sha256::digest(&bytes)));
    }
    Ok(digests)
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        if path.is_dir() {
            collect_files(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed fixtures must match their CHECKSUMS, so `cargo test` fails on stale or edited files.
    #[test]
    fn committed_fixtures_match_checksums() -> Result<()> {
        let count = check(&workspace_root().join("fixtures"))?;
        assert!(count > 20, "CHECKSUMS lists only {count} files");
        Ok(())
    }

    fn tree_with_checksums() -> Result<tempfile::TempDir> {
        let dir = tempfile::tempdir()?;
        fs::create_dir_all(dir.path().join("models/tiny"))?;
        fs::create_dir_all(dir.path().join("images"))?;
        fs::write(dir.path().join("generate.py"), "print('fixtures')\n")?;
        fs::write(dir.path().join("models/tiny/model.safetensors"), [1u8, 2, 3])?;
        fs::write(dir.path().join("images/cat.jpg"), [0xffu8, 0xd8])?;
        fs::write(dir.path().join("README.md"), "not covered\n")?;
        assert_eq!(write_checksums(dir.path())?, 3);
        Ok(dir)
    }

    /// The message of the check's failure on `dir`, or an error if the check passed although `change` was made.
    fn check_failure(dir: &Path, change: &str) -> Result<String> {
        let error = check(dir).err().with_context(|| format!("the check passed after {change}"))?;
        Ok(format!("{error:#}"))
    }

    #[test]
    fn checksums_are_sha256sum_lines() -> Result<()> {
        let dir = tree_with_checksums()?;
        let text = fs::read_to_string(dir.path().join(CHECKSUMS_FILE))?;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        // sha256 of the three bytes 01 02 03.
        assert_eq!(
            lines[2],
            "039058c6f2c0cb492c533b0a4d14ef77cc0f78abccced5287d84a1a2011cfb81  models/tiny/model.safetensors"
        );
        assert_eq!(check(dir.path())?, 3);
        Ok(())
    }

    #[test]
    fn check_names_edited_file() -> Result<()> {
        let dir = tree_with_checksums()?;
        fs::write(dir.path().join("models/tiny/model.safetensors"), [1u8, 2, 4])?;
        fs::write(dir.path().join("README.md"), "edits outside the covered set are fine\n")?;
        let message = check_failure(dir.path(), "editing a model")?;
        assert!(message.contains("fixtures/models/tiny/model.safetensors is stale or edited"), "{message}");
        assert!(message.contains("1 fixture file(s)"), "{message}");
        Ok(())
    }

    #[test]
    fn check_names_missing_and_unlisted_files() -> Result<()> {
        let dir = tree_with_checksums()?;
        fs::remove_file(dir.path().join("images/cat.jpg"))?;
        fs::write(dir.path().join("images/dog.jpg"), [0xffu8, 0xd8, 0xff])?;
        let message = check_failure(dir.path(), "removing and adding images")?;
        assert!(message.contains("fixtures/images/cat.jpg is listed in CHECKSUMS but missing"), "{message}");
        assert!(message.contains("fixtures/images/dog.jpg is not listed in CHECKSUMS"), "{message}");
        Ok(())
    }

    #[test]
    fn check_refuses_malformed_checksums() -> Result<()> {
        let dir = tree_with_checksums()?;
        fs::write(dir.path().join(CHECKSUMS_FILE), "not a checksum line\n")?;
        let message = check_failure(dir.path(), "garbling CHECKSUMS")?;
        assert!(message.contains("CHECKSUMS:1: expected"), "{message}");
        Ok(())
    }
}
