//! `cargo xtask image`: kiln's OCI image built offline, then run from the unpacked image.
//!
//! The layout is crates/kiln/deploy/Containerfile's (a static `/kiln`, the CA bundle for object-store
//! HTTPS, user 65532, ports 8500/8501, entrypoint `kiln serve`) without a base image to pull: kiln is
//! built for x86_64-unknown-linux-musl (Debian's musl-gcc compiles mozjpeg's C), stripped, and packed
//! by umoci as one layer into the OCI layout `target/image/kiln` (tag `<version>`), also written as
//! the oci-archive `target/image/kiln-oci.tar` for `podman load` or `skopeo copy`. The image is then
//! unpacked afresh and `/kiln` runs chrooted into its rootfs as uid 65532, so nothing of the host's is
//! used: `--version`, then `kiln serve` answering one REST predict on the fixture model, checked against
//! the in-process runtime. Prints the image sizes, build times and the served RSS. Needs root (chroot,
//! umoci unpack) and Debian's `musl-tools` and `umoci`.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use kiln_e2e::KilnServer;
use serde_json::{Value, json};

use crate::{run_checked, workspace_root};

/// Rust target of the static build; its std is installed with `rustup target add`.
const TARGET: &str = "x86_64-unknown-linux-musl";

/// The non-root user the image runs as (distroless' "nonroot"; the Kubernetes manifests rely on it).
const USER: &str = "65532:65532";

/// Where Debian's `ca-certificates` keeps the bundle the image carries.
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// The script in target/image that runs the image's `/kiln` under chroot (KilnServer's "binary").
const LAUNCHER: &str = "kiln-in-image";

/// The image the smoke test classifies.
const IMAGE: &str = "fixtures/images/chelsea.jpg";

/// |served - in-process confidence| accepted: the same code, printed as JSON and parsed back.
const CONFIDENCE_TOLERANCE: f64 = 1e-6;

/// Builds, assembles and smoke-tests the image; fails on any step.
pub fn run() -> Result<()> {
    let root = workspace_root();
    ensure_prerequisites()?;
    let work = root.join("target/image");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let started = Instant::now();
    let built = build_static_kiln(&root)?;
    let build_time = started.elapsed();
    ensure!(
        !has_interpreter(&built)?,
        "{} is dynamically linked (it names an ELF interpreter)",
        built.display()
    );
    let binary = work.join("kiln-stripped");
    run_checked(Command::new("strip").arg("-o").arg(&binary).arg(&built))?;

    let assembling = Instant::now();
    // umoci names an image `<layout dir>:<tag>`; the layout dir is the image's name.
    let (layout, tag) = (work.join("kiln"), env!("CARGO_PKG_VERSION"));
    let image = image_ref(&layout, tag);
    assemble(&layout, &image, &binary)?;
    let archive = work.join("kiln-oci.tar");
    run_checked(Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&archive).arg("."))?;
    let assemble_time = assembling.elapsed();

    let bundle = work.join("unpacked");
    run_checked(umoci("unpack").arg("--image").arg(&image).arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    let sizes = ImageSizes::read(&layout, tag, &rootfs)?;
    let served = smoke_test(&root, &work, &rootfs)?;

    println!("\nimage kiln:{tag}: OCI layout {}, oci-archive {}", layout.display(), archive.display());
    println!(
        "  kiln binary: {} unstripped, {} stripped, static ({TARGET})",
        mib(len(&built)?),
        mib(len(&binary)?)
    );
    println!("  compressed (layer + config + manifest blobs): {}", mib(sizes.compressed));
    println!("  uncompressed (unpacked rootfs): {}", mib(sizes.uncompressed));
    println!("  oci-archive: {}", mib(len(&archive)?));
    println!("  cargo build --release --target {TARGET}: {:.1} s (incremental)", build_time.as_secs_f64());
    println!("  strip + umoci assembly + archive: {:.1} s", assemble_time.as_secs_f64());
    println!("  served from the image: {served}");
    // The layout and the archive are the product; the unpacked copy and the loose binary are scratch.
    for scratch in [bundle, work.join(LAUNCHER), binary] {
        let removed = if scratch.is_dir() { fs::remove_dir_all(&scratch) } else { fs::remove_file(&scratch) };
        removed.with_context(|| format!("removing {}", scratch.display()))?;
    }
    Ok(())
}

/// Fails with the packages to install when a tool the task runs is missing, or when not root.
fn ensure_prerequisites() -> Result<()> {
    let missing: Vec<&str> = [("musl-gcc", "musl-tools"), ("umoci", "umoci"), ("strip", "binutils")]
        .into_iter()
        .filter(|(tool, _)| Command::new(tool).arg("--version").output().is_err())
        .map(|(_, package)| package)
        .collect();
    if !missing.is_empty() {
        bail!("missing tools: run `apt-get update && apt-get install -y {}`", missing.join(" "));
    }
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let root = status.lines().any(|line| line.split_whitespace().take(2).eq(["Uid:", "0"]));
    ensure!(root, "run as root: the image is unpacked with its owners and its binary run under chroot");
    Ok(())
}

/// `cargo build --release -p kiln --target x86_64-unknown-linux-musl` into the workspace's target/.
fn build_static_kiln(root: &Path) -> Result<PathBuf> {
    run_checked(
        Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "kiln", "--target", TARGET])
            // cc's default for the musl target is x86_64-linux-musl-gcc, which Debian does not ship.
            .env("CC_x86_64_unknown_linux_musl", "musl-gcc")
            .current_dir(root),
    )?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(target_dir.join(TARGET).join("release/kiln"))
}

/// Whether the ELF file names a program interpreter (PT_INTERP): a static binary has none.
fn has_interpreter(path: &Path) -> Result<bool> {
    let elf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(elf.starts_with(b"\x7fELF\x02\x01"), "{} is not a 64-bit little-endian ELF file", path.display());
    let field = |at: usize, width: usize| -> Result<usize> {
        let bytes = elf.get(at..at + width).context("truncated ELF header")?;
        Ok(bytes.iter().rev().fold(0, |value, &byte| (value << 8) | usize::from(byte)))
    };
    let (table, entry_size, entries) = (field(0x20, 8)?, field(0x36, 2)?, field(0x38, 2)?);
    const PT_INTERP: usize = 3;
    for index in 0..entries {
        if field(table + index * entry_size, 4)? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// umoci's `<layout>:<tag>` image reference.
fn image_ref(layout: &Path, tag: &str) -> OsString {
    let mut image = layout.as_os_str().to_owned();
    image.push(":");
    image.push(tag);
    image
}

/// Packs `binary` and the CA bundle into the new image `image` (`<layout>:<tag>`).
fn assemble(layout: &Path, image: &OsStr, binary: &Path) -> Result<()> {
    run_checked(umoci("init").arg("--layout").arg(layout))?;
    run_checked(umoci("new").arg("--image").arg(image))?;
    let bundle = layout.with_file_name("bundle");
    run_checked(umoci("unpack").arg("--image").arg(image).arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    fs::copy(binary, rootfs.join("kiln")).context("copying kiln into the image")?;
    let ca_bundle = rootfs.join(CA_BUNDLE);
    fs::create_dir_all(ca_bundle.parent().context("CA bundle path has a parent")?)?;
    fs::copy(Path::new("/").join(CA_BUNDLE), &ca_bundle)
        .with_context(|| format!("copying /{CA_BUNDLE} (Debian's ca-certificates) into the image"))?;
    run_checked(umoci("repack").arg("--image").arg(image).arg(&bundle))?;
    fs::remove_dir_all(&bundle).with_context(|| format!("removing {}", bundle.display()))?;
    run_checked(
        umoci("config")
            .arg("--image")
            .arg(image)
            .args(["--config.user", USER, "--config.entrypoint", "/kiln", "--config.entrypoint", "serve"])
            .args(["--config.exposedports", "8500/tcp", "--config.exposedports", "8501/tcp"])
            .args(["--config.env", &format!("SSL_CERT_FILE=/{CA_BUNDLE}"), "--config.workingdir", "/"]),
    )?;
    run_checked(umoci("gc").arg("--layout").arg(layout))
}

/// `umoci <subcommand>`.
fn umoci(subcommand: &str) -> Command {
    let mut command = Command::new("umoci");
    command.arg(subcommand);
    command
}

/// Runs the image's `/kiln` chrooted into `rootfs` as the image's user: `--version`, then `kiln serve`
/// on the fixture model with one REST predict. Returns a line describing what was served.
fn smoke_test(root: &Path, work: &Path, rootfs: &Path) -> Result<String> {
    let in_image = |args: &[&str]| {
        let mut command = Command::new("chroot");
        command.arg(format!("--userspec={USER}")).arg(rootfs).arg("/kiln").args(args);
        command
    };
    let version = in_image(&["--version"]).output().context("running chroot")?;
    ensure!(version.status.success(), "/kiln --version in the image failed: {version:?}");
    println!("image: /kiln --version: {}", String::from_utf8_lossy(&version.stdout).trim());

    // The model goes inside the rootfs (as a volume would), exported by the image's own binary.
    let checkpoint = root.join("fixtures/models/tiny-vit");
    let version_dir = crate::kiln_export(&rootfs.join("kiln"), &checkpoint, &rootfs.join("models/vit"), &[])?;
    let image = fs::read(root.join(IMAGE)).with_context(|| format!("reading {IMAGE}"))?;
    let expected = runtime::Model::load(&version_dir)?
        .predict(&[image.as_slice()])?
        .pop()
        .context("no prediction")??;

    // KilnServer runs `<program> serve ...`: this program is the image's binary under chroot.
    let launcher = work.join(LAUNCHER);
    fs::write(
        &launcher,
        format!("#!/bin/sh\nexec chroot --userspec={USER} '{}' /kiln \"$@\"\n", rootfs.display()),
    )?;
    run_checked(Command::new("chmod").arg("+x").arg(&launcher))?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let starting = Instant::now();
        let server = KilnServer::start(&launcher, "vit", Path::new("/models/vit"), &[]).await?;
        let ready_after = starting.elapsed();
        let body = json!({ "instances": [base64::engine::general_purpose::STANDARD.encode(&image)] });
        let answer: Value = reqwest::Client::new()
            .post(format!("{}/v1/models/vit:predict", server.rest_url()))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let prediction = &answer["predictions"][0];
        let label = prediction["label"].as_str().context("the answer has no label")?;
        let confidence = prediction["confidence"].as_f64().context("the answer has no confidence")?;
        ensure!(label == expected.label, "served label {label:?}, in-process runtime {:?}", expected.label);
        ensure!(
            (confidence - f64::from(expected.confidence)).abs() <= CONFIDENCE_TOLERANCE,
            "served confidence {confidence}, in-process runtime {}",
            expected.confidence
        );
        let rss = peak_rss(server.pid())?;
        let exit = server.stop().await?;
        ensure!(exit.success(), "kiln serve in the image exited with {exit} after SIGTERM");
        Ok(format!(
            "ready in {:.2} s, predict {label:?} {confidence:.6} (matches the runtime), peak RSS {}, clean \
             SIGTERM exit",
            ready_after.as_secs_f64(),
            mib(rss)
        ))
    })
}

/// VmHWM (peak resident set) of a process, in bytes.
fn peak_rss(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// What the image weighs.
struct ImageSizes {
    /// Sum of the blobs the tag references (gzip layers, config, manifest): what a registry stores.
    compressed: u64,
    /// Bytes of the files in the unpacked rootfs.
    uncompressed: u64,
}

impl ImageSizes {
    fn read(layout: &Path, tag: &str, rootfs: &Path) -> Result<ImageSizes> {
        let index = read_json(&layout.join("index.json"))?;
        let manifest_descriptor = index["manifests"]
            .as_array()
            .and_then(|manifests| {
                manifests.iter().find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            })
            .with_context(|| format!("no manifest tagged {tag} in index.json"))?;
        let manifest = read_json(&blob_path(layout, manifest_descriptor)?)?;
        let layers = manifest["layers"].as_array().context("the manifest has no layers")?;
        let compressed = [manifest_descriptor, &manifest["config"]]
            .into_iter()
            .chain(layers)
            .map(|descriptor| descriptor["size"].as_u64().context("a descriptor has no size"))
            .sum::<Result<u64>>()?;
        Ok(ImageSizes { compressed, uncompressed: tree_size(rootfs)? })
    }
}

/// `blobs/<algorithm>/<hex>` of an OCI descriptor.
fn blob_path(layout: &Path, descriptor: &Value) -> Result<PathBuf> {
    let digest = descriptor["digest"].as_str().context("a descriptor has no digest")?;
    let (algorithm, hex) = digest.split_once(':').with_context(|| format!("malformed digest {digest}"))?;
    Ok(layout.join("blobs").join(algorithm).join(hex))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Total size of the regular files under `dir`.
fn tree_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += tree_size(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

fn len(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamically_linked_test_binary_names_an_interpreter() -> Result<()> {
        assert!(has_interpreter(&std::env::current_exe()?)?);
        Ok(())
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let script = dir.path().join("script");
        fs::write(&script, "#!/bin/sh\n")?;
        let error = has_interpreter(&script).err().context("a shell script passed as ELF")?;
        assert!(format!("{error:#}").contains("is not a 64-bit little-endian ELF file"), "{error:#}");
        Ok(())
    }
}
