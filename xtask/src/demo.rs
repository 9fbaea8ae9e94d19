//! `cargo xtask demo`: the TF Serving seed's walkthrough in one command, offline: export the committed
//! fixture model, show its signature, classify a few fixture images.

use std::process::Command;

use anyhow::{Context, bail};

use crate::workspace_root;

/// Images classified by the demo, relative to `fixtures/images/`.
const IMAGES: &[&str] = &["shape-red-circle.jpg", "shape-green-square.jpg", "chelsea.jpg", "logo-rgba.png"];

/// Builds the `kiln` binary, then runs export, show and run with it, as a user would.
pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    let status =
        Command::new(env!("CARGO")).args(["build", "--release", "-p", "kiln"]).current_dir(&root).status()?;
    if !status.success() {
        bail!("building kiln failed");
    }
    let kiln = root.join("target/release/kiln");
    let base = root.join("target/demo/vit");
    let base = base.to_str().context("utf-8 path")?;
    let checkpoint = root.join("fixtures/models/tiny-vit");
    let version_dir =
        step(&kiln, &["export", "--checkpoint", checkpoint.to_str().context("utf-8 path")?, "--base", base])?;
    let version_dir = version_dir.trim().to_owned();
    step(
        &kiln,
        &["show", "--dir", &version_dir, "--tag_set", "serve", "--signature_def", "serving_default"],
    )?;
    let images: Vec<String> =
        IMAGES.iter().map(|i| root.join("fixtures/images").join(i).display().to_string()).collect();
    let mut args = vec!["run", "--json", "--dir", version_dir.as_str(), "--image"];
    args.extend(images.iter().map(String::as_str));
    step(&kiln, &args)?;
    Ok(())
}

/// Prints and runs one `kiln` command, echoing its output; returns stdout.
fn step(kiln: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    println!("\n$ kiln {}", args.join(" "));
    let output = Command::new(kiln).args(args).output().context("running kiln")?;
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout)?;
    print!("{stdout}");
    if !output.status.success() {
        bail!("kiln {} failed", args[0]);
    }
    Ok(stdout)
}
