//! Reproducible, content-addressed exports through the real binary: the same checkpoint exported twice
//! with the same `SOURCE_DATE_EPOCH` gives byte-identical version directories, at different times the same
//! content digest; one changed weight changes the digest; `--if-changed` publishes only a change; and the
//! server reports the digest of the version it serves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};
use kiln_e2e::{KilnServer, fixture, kiln_binary, kiln_ok};
use prost::Message as _;
use serde_json::Value;
use serve::proto::tensorflow::serving::GetModelMetadataRequest;
use serve::proto::tensorflow::serving::ModelSpec;
use serve::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;

/// A fixed `SOURCE_DATE_EPOCH` (2023-11-14T22:13:20Z).
const EPOCH: u64 = 1_700_000_000;

/// `kiln export --json` of `checkpoint` into `base`; `epoch` sets `SOURCE_DATE_EPOCH`, `None` unsets it
/// whatever the caller's environment holds. Returns the parsed JSON line.
fn export_json(checkpoint: &Path, base: &Path, epoch: Option<u64>, extra: &[&str]) -> anyhow::Result<Value> {
    let mut command = Command::new(kiln_binary()?);
    command.arg("export").arg("--checkpoint").arg(checkpoint).arg("--base").arg(base).arg("--json");
    command.args(extra);
    match epoch {
        Some(seconds) => command.env("SOURCE_DATE_EPOCH", seconds.to_string()),
        None => command.env_remove("SOURCE_DATE_EPOCH"),
    };
    let output = command.output().context("running kiln export")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "kiln export {} failed:\n{stderr}", checkpoint.display());
    let stdout = String::from_utf8(output.stdout)?;
    ensure!(stdout.lines().count() == 1, "--json must print one line, got:\n{stdout}");
    let report: Value = serde_json::from_str(&stdout)?;
    // The human summary goes to stderr, naming the same digest.
    let digest = report["content_digest"].as_str().context("no content_digest")?;
    ensure!(stderr.contains(&format!("content digest: {digest}")), "{stderr}");
    Ok(report)
}

/// Every file under `dir` (relative, `/`-separated) with its bytes.
fn tree(dir: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let name = path.strip_prefix(dir)?.to_str().context("utf-8 name")?.replace('\\', "/");
                files.insert(name, std::fs::read(&path)?);
            }
        }
    }
    Ok(files)
}

fn version_dir(report: &Value) -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(report["version_dir"].as_str().context("no version_dir")?))
}

fn digest(report: &Value) -> anyhow::Result<&str> {
    report["content_digest"].as_str().context("no content_digest")
}

fn created_unix(dir: &Path) -> anyhow::Result<u64> {
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    manifest["provenance"]["created_unix"].as_u64().context("no created_unix")
}

/// Names of the hidden `.kiln-tmp-*` directories under `base`: an export must leave none.
fn temp_dirs(base: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = vec![];
    for entry in std::fs::read_dir(base)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(artifact::TEMP_DIR_PREFIX) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Each checkpoint form of the fixture, and int8, exported twice with one `SOURCE_DATE_EPOCH` into two
/// bases: every file of the two version directories is byte-identical. A third export without it (so
/// stamped with the current time) has a different manifest but the same content digest, which `kiln
/// show` reports too.
#[test]
fn the_same_inputs_export_to_the_same_bytes_and_digest() -> anyhow::Result<()> {
    let model = fixture("models/tiny-vit");
    let forms: [(&str, PathBuf, &[&str]); 4] = [
        ("safetensors", model.join("model.safetensors"), &[]),
        ("pytorch", model.join("pytorch_model.bin"), &[]),
        ("onnx", model.join("model.onnx"), &[]),
        ("int8", model.join("model.safetensors"), &["--precision", "int8"]),
    ];
    let mut digests = BTreeMap::new();
    for (form, checkpoint, extra) in &forms {
        let bases = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
        let first = export_json(checkpoint, bases[0].path(), Some(EPOCH), extra)?;
        let second = export_json(checkpoint, bases[1].path(), Some(EPOCH), extra)?;
        let (first_dir, second_dir) = (version_dir(&first)?, version_dir(&second)?);
        let (first_files, second_files) = (tree(&first_dir)?, tree(&second_dir)?);
        ensure!(first_files.contains_key("graph.nnef.tar") && first_files.contains_key("manifest.json"));
        ensure!(
            first_files.keys().eq(second_files.keys()),
            "{form}: different files: {:?} vs {:?}",
            first_files.keys().collect::<Vec<_>>(),
            second_files.keys().collect::<Vec<_>>()
        );
        for (name, bytes) in &first_files {
            ensure!(second_files[name] == *bytes, "{form}: {name} differs between two exports");
        }
        ensure!(created_unix(&first_dir)? == EPOCH, "{form}: created_unix is not SOURCE_DATE_EPOCH");
        ensure!(digest(&first)? == digest(&second)?, "{form}: {first} vs {second}");
        let sizes = first["files"].as_object().context("no files")?;
        for (name, bytes) in &first_files {
            ensure!(sizes[name].as_u64() == Some(bytes.len() as u64), "{form}: size of {name}: {first}");
        }

        let unstamped = export_json(checkpoint, bases[2].path(), None, extra)?;
        let unstamped_dir = version_dir(&unstamped)?;
        ensure!(created_unix(&unstamped_dir)? > EPOCH, "{form}: exported without SOURCE_DATE_EPOCH");
        ensure!(digest(&unstamped)? == digest(&first)?, "{form}: the export time changed the digest");
        let shown =
            kiln_ok(&["show", "--dir", unstamped_dir.to_str().context("utf-8")?, "--content-digest"])?;
        ensure!(shown == format!("{}\n", digest(&first)?), "{form}: kiln show printed {shown:?}");
        digests.insert(*form, digest(&first)?.to_owned());
    }
    // The forms build different graphs (int8 weights, ONNX's own graph): four different contents.
    let distinct: std::collections::BTreeSet<&String> = digests.values().collect();
    ensure!(distinct.len() == forms.len(), "{digests:?}");
    Ok(())
}

/// `--if-changed` publishes nothing while the checkpoint is unchanged (naming the existing version on
/// stdout, as without the flag), and a new version once one weight changed, whose digest differs.
#[test]
fn if_changed_publishes_only_a_changed_checkpoint() -> anyhow::Result<()> {
    let checkpoint = tempfile::tempdir()?;
    for file in ["config.json", "preprocessor_config.json", "model.safetensors"] {
        std::fs::copy(fixture("models/tiny-vit").join(file), checkpoint.path().join(file))?;
    }
    let base = tempfile::tempdir()?;
    let first = export_json(checkpoint.path(), base.path(), None, &["--if-changed"])?;
    ensure!(first["published"] == true && first["version"] == 1, "{first}");

    let again = export_json(checkpoint.path(), base.path(), None, &["--if-changed"])?;
    ensure!(again["published"] == false && again["version"] == 1, "{again}");
    ensure!(version_dir(&again)? == version_dir(&first)? && digest(&again)? == digest(&first)?, "{again}");
    // Without --json stdout still ends with the version dir, so `$(kiln export ...)` scripts keep working.
    let base_arg = base.path().to_str().context("utf-8")?;
    let checkpoint_arg = checkpoint.path().to_str().context("utf-8")?;
    let stdout = kiln_ok(&["export", "--checkpoint", checkpoint_arg, "--base", base_arg, "--if-changed"])?;
    ensure!(stdout == format!("{}\n", version_dir(&first)?.display()), "{stdout}");
    ensure!(artifact::list_versions(base.path())?.len() == 1, "an unchanged export published a version");
    ensure!(temp_dirs(base.path())?.is_empty(), "left behind: {:?}", temp_dirs(base.path())?);

    nudge_first_float(&checkpoint.path().join("model.safetensors"), "classifier.weight")?;
    let changed = export_json(checkpoint.path(), base.path(), None, &["--if-changed"])?;
    ensure!(changed["published"] == true && changed["version"] == 2, "{changed}");
    ensure!(digest(&changed)? != digest(&first)?, "one changed weight kept the digest");
    ensure!(temp_dirs(base.path())?.is_empty());
    Ok(())
}

/// Adds 0.5 to the first element of the `F32` tensor `name` of a safetensors file.
fn nudge_first_float(path: &Path, name: &str) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    let header_len = usize::try_from(u64::from_le_bytes(bytes[..8].try_into()?))?;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len])?;
    let tensor = &header[name];
    ensure!(tensor["dtype"] == "F32", "{name}: {tensor}");
    let offset = tensor["data_offsets"][0].as_u64().context("no data_offsets")?;
    let start = 8 + header_len + usize::try_from(offset)?;
    let value = f32::from_le_bytes(bytes[start..start + 4].try_into()?);
    bytes[start..start + 4].copy_from_slice(&(value + 0.5).to_le_bytes());
    std::fs::write(path, bytes)?;
    Ok(())
}

/// The server logs the content digest of each version it loads and reports it in the REST metadata and,
/// when asked for, in gRPC GetModelMetadata; a TF Serving client's request is answered as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reports_the_content_digest_it_serves() -> anyhow::Result<()> {
    let base = tempfile::tempdir()?;
    let report = export_json(&fixture("models/tiny-vit/model.safetensors"), base.path(), None, &[])?;
    let expected = digest(&report)?;
    let server = KilnServer::start(&kiln_binary()?, "vit", base.path(), &[]).await?;

    let metadata: Value =
        reqwest::get(format!("{}/v1/models/vit/metadata", server.rest_url())).await?.json().await?;
    ensure!(metadata["metadata"]["content_digest"] == expected, "{metadata}");
    ensure!(metadata["metadata"]["signature_def"]["signature_def"]["serving_default"].is_object());

    let mut client = PredictionServiceClient::connect(server.grpc_url()).await?;
    let spec = || Some(ModelSpec { name: "vit".into(), signature_name: String::new(), version_choice: None });
    let request = |fields: &[&str]| GetModelMetadataRequest {
        model_spec: spec(),
        metadata_field: fields.iter().map(|f| f.to_string()).collect(),
    };
    let answer = client.get_model_metadata(request(&["content_digest"])).await?.into_inner();
    let any = answer.metadata.get("content_digest").context("no content_digest")?;
    ensure!(any.type_url == "type.googleapis.com/google.protobuf.StringValue", "{}", any.type_url);
    ensure!(String::decode(any.value.as_slice())? == expected);
    let tf_client = client.get_model_metadata(request(&["signature_def"])).await?.into_inner();
    ensure!(tf_client.metadata.keys().eq(["signature_def"]), "{:?}", tf_client.metadata.keys());

    ensure!(server.log().contains(expected), "the load log does not name the digest:\n{}", server.log());
    server.stop().await?;
    Ok(())
}
