//! `cargo xtask manifests`: every manifest under crates/kiln/deploy/kubernetes, validated offline.
//!
//! Each kustomization there (the base, its overlays, KServe, the Prometheus adapter rule) is rendered
//! with `kustomize build` (or `kubectl kustomize`, which embeds it) into `target/manifests/`, exactly
//! what `kubectl apply -k` would send, and `xtask/manifests/validate.py` checks it: built-in kinds with
//! `kubernetes-validate` in strict mode (unknown fields fail) against the oldest and newest Kubernetes
//! the manifests support, KServe kinds against the kserve SDK's OpenAPI-generated models. A YAML file
//! that no kustomization lists fails too, so nothing escapes validation. The packages are pinned in
//! `xtask/manifests/requirements.txt` and installed into `target/manifests-venv` (needs PyPI once).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::venv::{Pins, prepare_venv};
use crate::{run_checked, workspace_root};

/// Kubernetes versions the manifests are validated against: 1.30 is the oldest with the kubelet's
/// `preStop: sleep` action on by default (the image has no shell), 1.37 the newest kubernetes-validate
/// 1.37.0 knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30", "1.37"];

/// Renders and validates every kustomization; fails on any invalid or unlisted manifest.
pub fn run() -> Result<()> {
    let root = workspace_root();
    let deploy = root.join("crates/kiln/deploy/kubernetes");
    let requirements = root.join("xtask/manifests/requirements.txt");
    let python = prepare_venv(&root.join("target/manifests-venv"), &requirements, Pins::Complete)?;
    let out = root.join("target/manifests");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let mut kustomizations = Vec::new();
    find_kustomizations(&deploy, &mut kustomizations)?;
    kustomizations.sort();
    ensure!(!kustomizations.is_empty(), "no kustomization.yaml under {}", deploy.display());
    let renderer = Renderer::find()?;
    let mut rendered = Vec::new();
    for dir in &kustomizations {
        let name = dir.strip_prefix(&deploy)?.to_string_lossy().replace('/', "-");
        let file = out.join(format!("{name}.yaml"));
        fs::write(&file, renderer.render(dir)?).with_context(|| format!("writing {}", file.display()))?;
        rendered.push(file);
    }

    let mut validate = Command::new(&python);
    validate.arg(root.join("xtask/manifests/validate.py"));
    for version in KUBERNETES_VERSIONS {
        validate.args(["--kubernetes", version]);
    }
    validate.arg("--kustomizations").args(&kustomizations).arg("--").args(&rendered);
    run_checked(&mut validate)?;
    println!(
        "manifests: {} kustomizations rendered with {} into {} and valid",
        kustomizations.len(),
        renderer.name(),
        out.display()
    );
    Ok(())
}

/// Every directory under `dir` holding a `kustomization.yaml`.
fn find_kustomizations(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    if dir.join("kustomization.yaml").is_file() {
        found.push(dir.to_path_buf());
    }
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            find_kustomizations(&entry.path(), found)?;
        }
    }
    Ok(())
}

/// The kustomize that renders the manifests: the standalone binary, or the one built into kubectl.
struct Renderer {
    program: &'static str,
    subcommand: &'static str,
}

impl Renderer {
    /// `kustomize build` if installed, else `kubectl kustomize`. Debian 12 packages neither recent
    /// enough (its kubectl 1.20 embeds kustomize 2, which predates `labels` and `patches`).
    fn find() -> Result<Renderer> {
        let candidates = [("kustomize", "build"), ("kubectl", "kustomize")];
        candidates
            .into_iter()
            .find(|(program, subcommand)| {
                Command::new(program).args([subcommand, "--help"]).output().is_ok_and(|o| o.status.success())
            })
            .map(|(program, subcommand)| Renderer { program, subcommand })
            .context(
                "install kustomize >= 5 or kubectl >= 1.27 (`kubectl kustomize`) to render the manifests",
            )
    }

    fn name(&self) -> String {
        format!("{} {}", self.program, self.subcommand)
    }

    fn render(&self, dir: &Path) -> Result<Vec<u8>> {
        let output = Command::new(self.program)
            .arg(self.subcommand)
            .arg(dir)
            .output()
            .with_context(|| format!("running {} {}", self.name(), dir.display()))?;
        ensure!(
            output.status.success(),
            "{} {} failed:\n{}",
            self.name(),
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(output.stdout)
    }
}
