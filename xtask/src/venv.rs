//! Python virtualenvs for tasks that drive pinned PyPI packages (bench engines, manifest validators).
//!
//! A venv lives under `target/` and is reinstalled only when its requirements file changes, tracked by a
//! digest stamp inside it, so repeated runs start at once and a changed pin never runs stale packages.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};

/// Marker in the virtualenv holding the digest of the requirements it was built from.
const VENV_STAMP: &str = "kiln-requirements.sha256";

/// What a requirements file pins.
pub enum Pins {
    /// The packages a task imports; pip resolves their dependencies.
    Direct,
    /// Every package, dependencies included: pip installs exactly these (`--no-deps`), so a package whose
    /// declared dependencies are far more than the task uses (the kserve SDK's model server) stays small.
    Complete,
}

/// Creates (or reuses) the venv at `venv` with `requirements` installed, returning its interpreter.
pub fn prepare_venv(venv: &Path, requirements: &Path, pins: Pins) -> Result<PathBuf> {
    let python = venv.join("bin/python");
    let wanted = {
        let text = fs::read(requirements).with_context(|| format!("reading {}", requirements.display()))?;
        Sha256::digest(&text).iter().fold(String::new(), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
    };
    let stamp = venv.join(VENV_STAMP);
    if python.exists() && fs::read_to_string(&stamp).is_ok_and(|found| found.trim() == wanted) {
        return Ok(python);
    }
    eprintln!("installing {} into {}", requirements.display(), venv.display());
    if !python.exists() {
        let status =
            Command::new("python3").arg("-m").arg("venv").arg(venv).status().context("python3 -m venv")?;
        ensure!(status.success(), "creating {} failed", venv.display());
    }
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "--disable-pip-version-check"]);
    if matches!(pins, Pins::Complete) {
        pip.arg("--no-deps");
    }
    let status = pip.arg("-r").arg(requirements).status().context("running pip")?;
    ensure!(status.success(), "pip install -r {} failed", requirements.display());
    fs::write(&stamp, format!("{wanted}\n")).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}
