//! `kiln show`: an artifact's tag-sets and signatures in `saved_model_cli show`'s exact layout, so scripts
//! written against TensorFlow keep working; `--json` for machines; `--content-digest` for the one sha256
//! that says which content a version holds.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use artifact::{Artifact, Manifest, Signature, TensorInfo, resolve_dir};
use clap::Args;

/// The one tag-set an artifact is served under, as TF Serving's default `--saved_model_tags`.
const TAG_SET: &str = "serve";

#[derive(Args)]
pub struct ShowArgs {
    /// A version directory, or a base directory (its highest version is shown).
    #[arg(long)]
    dir: PathBuf,
    /// Tag-set to show the signatures of (`serve`).
    #[arg(long = "tag_set")]
    tag_set: Option<String>,
    /// Signature to show the inputs and outputs of (`serving_default`); needs --tag_set.
    #[arg(long = "signature_def")]
    signature_def: Option<String>,
    /// Show every signature of every tag-set.
    #[arg(long)]
    all: bool,
    /// Print the manifest (signatures, labels, preprocessing, provenance) as JSON instead.
    #[arg(long)]
    json: bool,
    /// Print only the content digest: sha256 over everything the version holds except its export time,
    /// equal for two exports of the same inputs (what `kiln export` prints and `--if-changed` compares).
    #[arg(long, conflicts_with_all = ["json", "all", "tag_set", "signature_def"])]
    content_digest: bool,
}

pub fn run(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let dir = resolve_dir(&args.dir)?;
    let artifact = Artifact::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    let manifest = artifact.manifest();
    let text = if args.content_digest {
        format!("{}\n", artifact.content_digest())
    } else if args.json {
        serde_json::to_string_pretty(manifest)? + "\n"
    } else if args.all {
        show_all(manifest)
    } else {
        match (&args.tag_set, &args.signature_def) {
            (None, None) => format!("The given SavedModel contains the following tag-sets:\n'{TAG_SET}'\n"),
            (None, Some(_)) => bail!("--signature_def needs --tag_set"),
            (Some(tags), signature) => {
                if tags.split(',').map(str::trim).collect::<Vec<_>>() != [TAG_SET] {
                    bail!("MetaGraphDef associated with tag-set {tags} could not be found in SavedModel");
                }
                match signature {
                    None => signature_keys(manifest),
                    Some(key) => signature_block(find_signature(manifest, key)?, 0),
                }
            }
        }
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn find_signature<'m>(manifest: &'m Manifest, key: &str) -> anyhow::Result<&'m Signature> {
    manifest.signatures.get(key).with_context(|| {
        let keys: Vec<&str> = manifest.signatures.keys().map(String::as_str).collect();
        format!("Could not find signature \"{key}\". Please choose from: {}", keys.join(", "))
    })
}

fn signature_keys(manifest: &Manifest) -> String {
    let mut out =
        "The given SavedModel MetaGraphDef contains SignatureDefs with the following keys:\n".to_owned();
    for key in manifest.signatures.keys() {
        let _ = writeln!(out, "SignatureDef key: \"{key}\"");
    }
    out
}

/// `saved_model_cli`'s `_show_inputs_outputs` at an indent level (2 spaces per level; tensor fields 4 deeper).
fn signature_block(signature: &Signature, level: usize) -> String {
    let pad = "  ".repeat(level);
    let mut out = String::new();
    let _ = writeln!(out, "{pad}The given SavedModel SignatureDef contains the following input(s):");
    for (key, info) in &signature.inputs {
        tensor_block(&mut out, &pad, "inputs", key, info);
    }
    let _ = writeln!(out, "{pad}The given SavedModel SignatureDef contains the following output(s):");
    for (key, info) in &signature.outputs {
        tensor_block(&mut out, &pad, "outputs", key, info);
    }
    let _ = writeln!(out, "{pad}Method name is: {}", signature.method_name);
    out
}

fn tensor_block(out: &mut String, pad: &str, kind: &str, key: &str, info: &TensorInfo) {
    let dims: Vec<String> = info.shape.iter().map(i64::to_string).collect();
    let _ = writeln!(out, "{pad}  {kind}['{key}'] tensor_info:");
    let _ = writeln!(out, "{pad}      dtype: {}", info.dtype);
    let _ = writeln!(out, "{pad}      shape: ({})", dims.join(", "));
    let _ = writeln!(out, "{pad}      name: {}", info.name);
}

fn show_all(manifest: &Manifest) -> String {
    let mut out = format!("\nMetaGraphDef with tag-set: '{TAG_SET}' contains the following SignatureDefs:\n");
    for (key, signature) in &manifest.signatures {
        let _ = write!(out, "\nsignature_def['{key}']:\n{}", signature_block(signature, 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn signature_block_matches_saved_model_cli_layout() {
        let signature = Signature::serving_default();
        let expected = "\
The given SavedModel SignatureDef contains the following input(s):
  inputs['string_input'] tensor_info:
      dtype: DT_STRING
      shape: (-1)
      name: serving_default_string_input:0
The given SavedModel SignatureDef contains the following output(s):
  outputs['confidence'] tensor_info:
      dtype: DT_FLOAT
      shape: (-1)
      name: StatefulPartitionedCall:0
  outputs['label'] tensor_info:
      dtype: DT_STRING
      shape: (-1)
      name: StatefulPartitionedCall:1
Method name is: tensorflow/serving/predict
";
        assert_eq!(signature_block(&signature, 0), expected);
        let indented = signature_block(&signature, 1);
        assert!(
            indented.starts_with("  The given SavedModel SignatureDef contains the following input(s):\n")
        );
        assert!(indented.contains("\n    inputs['string_input'] tensor_info:\n        dtype: DT_STRING\n"));
    }
}
