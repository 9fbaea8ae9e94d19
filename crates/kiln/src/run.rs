//! `kiln run`: classify image files or base64 strings with an artifact, printing `saved_model_cli run`'s
//! layout or, with `--json`, one JSON object per input. Runs of several inputs report progress on stderr
//! (none with `--json`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use runtime::{InstanceError, Model, Prediction, Progress};
use serde_json::json;

/// Inputs classified per `predict` call: small enough that progress moves and memory for decoded images
/// stays bounded, large enough for the graph to run batches efficiently.
const INPUTS_PER_BATCH: usize = 16;

#[derive(Args)]
pub struct RunArgs {
    /// A version directory, or a base directory (its highest version is used).
    #[arg(long)]
    dir: PathBuf,
    /// Image files (JPEG, PNG, WebP, GIF, BMP, TIFF, or files holding base64 text of one).
    #[arg(long, num_args = 1..)]
    image: Vec<PathBuf>,
    /// Inputs as in saved_model_cli: `string_input=["<base64>", ...]` (a JSON string or list of strings).
    #[arg(long = "input_exprs")]
    input_exprs: Option<String>,
    /// One JSON object per input instead of saved_model_cli's layout.
    #[arg(long)]
    json: bool,
    /// Print to stderr how long loading (digest checks + graph compilation) and predicting took.
    #[arg(long)]
    timing: bool,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut names = vec![];
    let mut inputs = vec![];
    for path in &args.image {
        names.push(path.display().to_string());
        inputs.push(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
    }
    if let Some(exprs) = &args.input_exprs {
        for (i, value) in parse_input_exprs(exprs)?.into_iter().enumerate() {
            names.push(format!("string_input[{i}]"));
            inputs.push(value.into_bytes());
        }
    }
    if inputs.is_empty() {
        bail!("nothing to classify: give --image FILE... or --input_exprs");
    }
    let started = Instant::now();
    let model = Model::load(&args.dir).with_context(|| format!("loading {}", args.dir.display()))?;
    let loaded = started.elapsed();
    // One input needs no progress report: it is done as soon as it would be drawn.
    let progress = crate::progress::on_stderr(args.json || inputs.len() < 2);
    let results = predict_in_batches(&model, &inputs, progress.as_ref())?;
    if args.timing {
        let predicted = started.elapsed() - loaded;
        eprintln!(
            "load {:.1} ms, predict {} input(s) {:.1} ms",
            loaded.as_secs_f64() * 1e3,
            inputs.len(),
            predicted.as_secs_f64() * 1e3
        );
    }
    let failures = results.iter().filter(|r| r.is_err()).count();
    if args.json {
        for (name, result) in names.iter().zip(&results) {
            let line = match result {
                Ok(p) => json!({"image": name, "label": p.label, "confidence": p.confidence}),
                Err(e) => json!({"image": name, "error": e.to_string()}),
            };
            println!("{line}");
        }
    } else {
        print_saved_model_cli_layout(&names, &results);
    }
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Every input's result, in order, predicted a batch at a time so `progress` moves.
fn predict_in_batches(
    model: &Model,
    inputs: &[Vec<u8>],
    progress: &dyn Progress,
) -> anyhow::Result<Vec<Result<Prediction, InstanceError>>> {
    progress.start(&format!("classifying with {}", model.dir().display()), Some(inputs.len() as u64));
    let mut results = Vec::with_capacity(inputs.len());
    for batch in inputs.chunks(INPUTS_PER_BATCH) {
        let borrowed: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        results.extend(model.predict(&borrowed)?);
        progress.advance(batch.len() as u64);
    }
    progress.finish();
    Ok(results)
}

/// `string_input=<JSON string or list of strings>`, the only input key an artifact has.
fn parse_input_exprs(exprs: &str) -> anyhow::Result<Vec<String>> {
    let (key, value) = exprs.split_once('=').context("--input_exprs must look like string_input=[...]")?;
    let key = key.trim();
    if key != "string_input" {
        bail!(
            "\"{key}\" is not a valid input key. Please choose from \"string_input\", or use --show option."
        );
    }
    let value: serde_json::Value = serde_json::from_str(value.trim())
        .with_context(|| format!("--input_exprs value is not a JSON string or list: {value}"))?;
    match value {
        serde_json::Value::String(s) => Ok(vec![s]),
        serde_json::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                serde_json::Value::String(s) => Ok(s),
                other => bail!("string_input[{i}] is {other}, expected a string"),
            })
            .collect(),
        other => bail!("string_input is {other}, expected a string or a list of strings"),
    }
}

/// `Result for output key <k>:` then a numpy-style array per output, in sorted key order; failed
/// instances are reported on stderr (saved_model_cli would fail the whole batch).
fn print_saved_model_cli_layout(names: &[String], results: &[Result<Prediction, InstanceError>]) {
    for (name, result) in names.iter().zip(results) {
        if let Err(e) = result {
            eprintln!("error: {name}: {e}");
        }
    }
    let ok: Vec<&Prediction> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let confidences: Vec<String> = ok.iter().map(|p| p.confidence.to_string()).collect();
    let labels: Vec<String> = ok.iter().map(|p| python_bytes_repr(&p.label)).collect();
    println!("Result for output key confidence:\n[{}]", confidences.join(" "));
    println!("Result for output key label:\n[{}]", labels.join(" "));
}

/// Python's `repr(bytes)`: `b'...'` with non-printable and non-ASCII bytes escaped.
fn python_bytes_repr(text: &str) -> String {
    let mut out = String::from("b'");
    for &b in text.as_bytes() {
        match b {
            b'\'' => out.push_str("\\'"),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\r' => out.push_str("\\r"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_repr_escapes_like_python() {
        assert_eq!(python_bytes_repr("tabby cat"), "b'tabby cat'");
        assert_eq!(python_bytes_repr("it's"), "b'it\\'s'");
        assert_eq!(python_bytes_repr("café"), "b'caf\\xc3\\xa9'");
    }

    #[test]
    fn input_exprs_accept_a_string_or_a_list() -> anyhow::Result<()> {
        assert_eq!(parse_input_exprs(r#"string_input=["a", "b"]"#)?, ["a", "b"]);
        assert_eq!(parse_input_exprs(r#"string_input="a""#)?, ["a"]);
        let wrong_key = parse_input_exprs(r#"x=["a"]"#).unwrap_err().to_string();
        assert!(wrong_key.contains("\"x\" is not a valid input key"), "{wrong_key}");
        assert!(parse_input_exprs("string_input=[1]").is_err());
        Ok(())
    }
}
