//! `kiln check` through the real binary: golden files written and rerun, a tampered golden file, two
//! different models compared, and a corrupted artifact refused by the integrity check.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context, ensure};
use kiln_e2e::{export, fixture, kiln};

fn tiny() -> PathBuf {
    fixture("models/tiny-vit/model.safetensors")
}

fn utf8(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("non-UTF-8 temp path")
}

/// Runs `kiln check` with `args`, returning (exit code, stdout, stderr).
fn check(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let mut full = vec!["check"];
    full.extend(args);
    let Output { status, stdout, stderr } = kiln(&full)?;
    let code = status.code().context("kiln check was killed by a signal")?;
    Ok((code, String::from_utf8(stdout)?, String::from_utf8(stderr)?))
}

/// A golden set beside its golden file: a few fixture images, one of them a truncated JPEG the model
/// must keep refusing.
fn image_set(dir: &Path) -> anyhow::Result<PathBuf> {
    let images = dir.join("images");
    fs::create_dir_all(images.join("bad"))?;
    for name in ["chelsea.jpg", "coffee.jpg", "shape-green-square.jpg", "rocket.jpg"] {
        fs::copy(fixture(&format!("images/{name}")), images.join(name))?;
    }
    fs::copy(fixture("images/bad/truncated.jpg"), images.join("bad/truncated.jpg"))?;
    Ok(images)
}

/// Rewrites the golden line of `image` with `edit`.
fn edit_line(golden: &Path, image: &str, edit: impl Fn(&mut serde_json::Value)) -> anyhow::Result<()> {
    let text = fs::read_to_string(golden)?;
    let mut found = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        let mut value: serde_json::Value = serde_json::from_str(line)?;
        if value["image"] == image {
            edit(&mut value);
            found = true;
        }
        lines.push(value.to_string());
    }
    ensure!(found, "{image} is not in {}", golden.display());
    fs::write(golden, lines.join("\n") + "\n")?;
    Ok(())
}

#[test]
fn golden_round_trip_passes_and_tampering_fails_with_a_readable_diff() -> anyhow::Result<()> {
    let (_base, version) = export(&tiny(), &[])?;
    let work = tempfile::tempdir()?;
    let images = image_set(work.path())?;
    let golden = work.path().join("golden.jsonl");
    let (dir, golden_arg) = (utf8(&version)?, utf8(&golden)?);

    let (code, stdout, stderr) =
        check(&["--dir", dir, "--write-golden", golden_arg, "--images", utf8(&images)?])?;
    ensure!(code == 0, "write-golden failed: {stderr}");
    ensure!(stdout.contains("5 images") && stdout.contains("1 recorded as refused"), "{stdout}");
    let text = fs::read_to_string(&golden)?;
    let lines: Vec<serde_json::Value> = text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    ensure!(lines.len() == 6, "a header and 5 images expected:\n{text}");
    ensure!(lines[0]["kiln_golden"] == 1 && lines[0]["artifact"]["version"] == 1, "{}", lines[0]);
    // Images beside the golden file are recorded relative to it, in sorted order.
    ensure!(lines[1]["image"] == "images/bad/truncated.jpg" && lines[1]["error"].is_string(), "{}", lines[1]);
    ensure!(lines[2]["image"] == "images/chelsea.jpg" && lines[2]["label"] == "red square", "{}", lines[2]);
    let recorded = lines[2]["confidence"].as_f64().context("no confidence")?;

    // The same artifact, rerun from another working directory: relative paths resolve against the file.
    let (code, stdout, stderr) = check(&["--dir", dir, "--golden", golden_arg])?;
    ensure!(code == 0, "golden rerun failed ({code}):\n{stdout}{stderr}");
    ensure!(stdout.contains("5 images, 5 compared") && stdout.ends_with("PASS\n"), "{stdout}");

    // A recorded confidence 0.2 lower: drift beyond the tolerance, named with both values.
    edit_line(&golden, "images/chelsea.jpg", |v| v["confidence"] = serde_json::json!(recorded - 0.2))?;
    let (code, stdout, _) = check(&["--dir", dir, "--golden", golden_arg])?;
    ensure!(code == 1, "tampered confidence must exit 1, got {code}:\n{stdout}");
    // The golden file holds f32 values; print them as f32 like the report does.
    let (tampered, recorded) = ((recorded - 0.2) as f32, recorded as f32);
    let expected = format!(
        "FAIL  images/chelsea.jpg: confidence of \"red square\" moved {tampered:.6} -> {recorded:.6}"
    );
    ensure!(stdout.contains(&expected), "expected `{expected}` in:\n{stdout}");
    // ... but not beyond a tolerance the user widened.
    let (code, stdout, _) = check(&["--dir", dir, "--golden", golden_arg, "--tolerance", "0.25"])?;
    ensure!(code == 0, "tolerance 0.25 should pass:\n{stdout}");

    // A recorded label that the artifact no longer gives: old and new label and confidence.
    edit_line(&golden, "images/coffee.jpg", |v| {
        v["label"] = serde_json::json!("blue circle");
        v["class_index"] = serde_json::json!(2);
    })?;
    let (code, stdout, _) = check(&["--dir", dir, "--golden", golden_arg, "--json"])?;
    ensure!(code == 1, "a changed label must exit 1, got {code}");
    let report: serde_json::Value = serde_json::from_str(&stdout)?;
    ensure!(report["verdict"] == "regression", "{report}");
    let findings = report["findings"].as_array().context("no findings")?;
    ensure!(findings.len() == 2, "{report}");
    let changed = &findings[1];
    ensure!(changed["image"] == "images/coffee.jpg" && changed["kind"] == "answer_changed", "{changed}");
    ensure!(
        changed["expected"]["label"] == "blue circle" && changed["actual"]["label"] == "red circle",
        "{changed}"
    );

    // A replaced image is an input problem (exit 2), not model drift.
    fs::copy(fixture("images/shape-red-circle.jpg"), images.join("rocket.jpg"))?;
    let (code, stdout, _) = check(&["--dir", dir, "--golden", golden_arg])?;
    ensure!(code == 2, "a changed input must exit 2, got {code}:\n{stdout}");
    ensure!(
        stdout.contains("INPUT images/rocket.jpg: the file changed since the golden file was written"),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn a_different_model_against_its_baseline_fails_listing_the_flips() -> anyhow::Result<()> {
    let (_old_base, old) = export(&tiny(), &[])?;
    let (_new_base, new) = export(&fixture("models/odd-vit/model.safetensors"), &[])?;
    let images = fixture("images");
    let (old, new, images) = (utf8(&old)?, utf8(&new)?, utf8(&images)?);

    let work = tempfile::tempdir()?;
    let report = work.path().join("report.html");
    let (code, stdout, stderr) =
        check(&["--dir", new, "--baseline", old, "--images", images, "--report", utf8(&report)?])?;
    ensure!(code == 1, "tiny-vit vs odd-vit must fail ({code}):\n{stdout}{stderr}");
    check_flip_report(&fs::read_to_string(&report)?)?;
    // Kept for a person (and the browser test's screenshot) to look at.
    let target = kiln_e2e::kiln_binary()?.parent().and_then(Path::parent).map(Path::to_path_buf);
    fs::copy(&report, target.context("no target dir")?.join("report-tiny-vs-odd.html"))?;
    // Every label is renamed in odd-vit, so every classified image flips; both refused images agree.
    ensure!(stdout.contains("top-1 agreement 0.0645 (29 flips)"), "{stdout}");
    let chelsea =
        format!("FLIP  {}\n        old \"red square\" (class 3,", fixture("images/chelsea.jpg").display());
    ensure!(stdout.contains(&chelsea), "{stdout}");
    ensure!(stdout.contains("FAIL  top-1 agreement 0.0645 is below --min-agreement 1"), "{stdout}");

    let (code, stdout, _) =
        check(&["--dir", new, "--baseline", old, "--images", images, "--json", "--min-agreement", "0.06"])?;
    ensure!(code == 0, "agreement 0.0645 passes --min-agreement 0.06 ({code}):\n{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout)?;
    ensure!(report["flips"].as_array().map(Vec::len) == Some(29), "{report}");
    ensure!(report["images"] == 31 && report["same_label"] == 0, "{report}");

    // A version against itself: full agreement, zero delta, even with the tightest limits.
    let (code, stdout, _) = check(&[
        "--dir",
        old,
        "--baseline",
        old,
        "--images",
        images,
        "--max-delta",
        "0",
        "--max-mean-delta",
        "0",
    ])?;
    ensure!(code == 0, "a version against itself must pass:\n{stdout}");
    ensure!(stdout.contains("top-1 agreement 1.0000 (0 flips)") && stdout.contains("max 0.00e0"), "{stdout}");
    Ok(())
}

/// The HTML report of tiny-vit vs odd-vit: self-contained, the verdict, and each of the 29 flips as a card
/// with the file's thumbnail and both models' inputs embedded.
fn check_flip_report(html: &str) -> anyhow::Result<()> {
    ensure!(html.starts_with("<!DOCTYPE html>") && html.contains("FAIL: regression"), "{html}");
    ensure!(!html.contains("<script") && !html.contains("src=\"http"), "the report must need no network");
    ensure!(html.contains("no confidence to compare"), "every label differs, so no histogram can be drawn");
    ensure!(html.contains("29 flipped, 0 drifted") && html.contains("the worst 29 shown, 0 more"), "{html}");
    ensure!(html.matches("<div class=\"card\">").count() == 29, "29 flip cards expected");
    let thumbnails = html.matches("<img class=\"thumbnail\" src=\"data:image/jpeg;base64,").count();
    let inputs = html.matches("<img class=\"input\" src=\"data:image/jpeg;base64,").count();
    ensure!(thumbnails == 29 && inputs == 58, "{thumbnails} thumbnails and {inputs} model inputs");
    let chelsea = fixture("images/chelsea.jpg").display().to_string();
    let card =
        html.find(&format!("<div class=\"path\">{chelsea}</div>")).context("no card for chelsea.jpg")?;
    let card = &html[card..];
    let card = &card[..card.find("</table>").context("unterminated card")?];
    ensure!(card.contains("data:image/jpeg;base64,") && card.contains("&quot;red square&quot;"), "{card}");
    Ok(())
}

#[test]
fn integrity_passes_a_fresh_export_and_names_a_corrupted_file() -> anyhow::Result<()> {
    let (base, version) = export(&tiny(), &[])?;
    let (code, stdout, stderr) = check(&["--dir", utf8(base.path())?])?;
    ensure!(code == 0, "a fresh export must pass ({code}):\n{stdout}{stderr}");
    for line in [
        "ok  digests: 5 files",
        &format!("ok  format_version {}", artifact::FORMAT_VERSION),
        "ok  signature serving_default",
        "ok  warm-up: 4 inputs",
    ] {
        ensure!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }

    let graph = version.join("graph.nnef.tar");
    let mut bytes = fs::read(&graph)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&graph, bytes)?;
    let (code, stdout, stderr) = check(&["--dir", utf8(&version)?, "--json"])?;
    ensure!(code == 2, "a corrupted artifact must exit 2, got {code}");
    ensure!(stderr.contains(&format!("`{}` is corrupt", graph.display())), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout)?;
    ensure!(report["verdict"] == "error", "{report}");

    // Golden and baseline modes load through the same checks and refuse it too.
    let (code, _, stderr) = check(&[
        "--dir",
        utf8(&version)?,
        "--baseline",
        utf8(&version)?,
        "--images",
        utf8(&fixture("images"))?,
    ])?;
    ensure!(code == 2 && stderr.contains("graph.nnef.tar"), "{code}: {stderr}");
    Ok(())
}

#[test]
fn usage_errors_exit_2() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = utf8(dir.path())?;
    for args in [
        vec!["--dir", dir, "--tolerance", "0.1"],
        vec!["--dir", dir, "--golden", "g.jsonl", "--baseline", dir],
        vec!["--dir", dir, "--baseline", dir],
        vec!["--dir", dir, "--images", dir],
        vec!["--dir", dir, "--baseline", dir, "--images", dir, "--min-agreement", "1.5"],
    ] {
        let (code, _, stderr) = check(&args)?;
        ensure!(code == 2 && !stderr.is_empty(), "{args:?}: exit {code}, stderr {stderr}");
    }
    let (code, _, stderr) = check(&["--dir", dir])?;
    ensure!(code == 2 && stderr.contains("no versions under"), "an empty base: {code} {stderr}");
    Ok(())
}
