//! `cargo xtask demo`: the TF Serving seed's walkthrough in one command, offline: export the committed
//! fixture model, show its signature, say what it was trained on, classify drawn shapes it knows (and one
//! photo it does not, said as such), then serve it with `kiln serve`, send the seed's REST and gRPC predict
//! requests from Rust clients, and point at the try-it page and at exporting a real hub checkpoint.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use base64::Engine as _;
use serve::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use serve::proto::tensorflow::serving::{ModelSpec, PredictRequest, PredictResponse, model_spec};
use serve::proto::tensorflow::{DataType, TensorProto, TensorShapeProto, tensor_shape_proto};

use crate::{release_kiln, workspace_root};
use kiln_e2e::KilnServer;

/// The image the serving half of the demo sends.
const SERVED_IMAGE: &str = "shape-blue-triangle.jpg";

/// Drawn shapes of the fixture model's own classes, relative to `fixtures/images/`.
const IMAGES: &[&str] = &["shape-red-circle.jpg", "shape-green-square.jpg", "shape-blue-triangle.jpg"];

/// A photo outside what the fixture model knows, classified to show what any classifier does with one.
const OUT_OF_DOMAIN_IMAGE: &str = "chelsea.jpg";

/// What the fixture model learned (fixtures/README.md says how): a newcomer must read this before the
/// answers, or a shape label on a photo reads as a broken model.
const TRAINED_ON: &str = "\
tiny-vit is a 4-layer ViT trained on procedurally drawn images (fixtures/generate.py): one circle, square or
triangle in red, green or blue on a noisy background. It knows only these classes";

/// How to try a real model, as README.md says it.
const HUB_EXPORT: &str = "huggingface-cli download google/vit-base-patch16-224 --local-dir vit && \
                          kiln export --checkpoint vit --base models/vit";

/// Builds the `kiln` binary, then runs export, show and run with it, as a user would.
pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    let kiln = release_kiln()?;
    let base = root.join("target/demo/vit");
    // A fresh base each run, so the walkthrough always shows version 1 being created.
    if base.exists() {
        std::fs::remove_dir_all(&base)
            .with_context(|| format!("removing the previous demo {}", base.display()))?;
    }
    let base = base.to_str().context("utf-8 path")?;
    let checkpoint = root.join("fixtures/models/tiny-vit");
    let version_dir =
        step(&kiln, &["export", "--checkpoint", checkpoint.to_str().context("utf-8 path")?, "--base", base])?;
    let version_dir = version_dir.trim().to_owned();
    step(
        &kiln,
        &["show", "--dir", &version_dir, "--tag_set", "serve", "--signature_def", "serving_default"],
    )?;
    println!("\n{TRAINED_ON}: {}.", labels(&checkpoint)?.join(", "));
    let images: Vec<String> =
        IMAGES.iter().map(|i| root.join("fixtures/images").join(i).display().to_string()).collect();
    let mut args = vec!["run", "--json", "--dir", version_dir.as_str(), "--image"];
    args.extend(images.iter().map(String::as_str));
    step(&kiln, &args)?;
    println!(
        "\nOut of domain: {OUT_OF_DOMAIN_IMAGE} is a photo of a cat, not a drawn shape. A classifier always \
         answers with one of its classes, often confidently, so the label below means nothing; a real \
         checkpoint (last line) knows cats."
    );
    let cat = root.join("fixtures/images").join(OUT_OF_DOMAIN_IMAGE).display().to_string();
    step(&kiln, &["run", "--json", "--dir", &version_dir, "--image", &cat])?;
    let image = std::fs::read(root.join("fixtures/images").join(SERVED_IMAGE))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve_and_call(&kiln, Path::new(base), &image))?;
    println!(
        "\nTry it yourself: kiln serve --model_name vit --model_base_path {base}\n\
         then open http://127.0.0.1:8501/ (the status and try-it page on the REST port).\n\
         A real model from the Hugging Face hub:\n  {HUB_EXPORT}"
    );
    Ok(())
}

/// The class names in the checkpoint's `config.json`, in class-index order.
fn labels(checkpoint: &Path) -> anyhow::Result<Vec<String>> {
    let path = checkpoint.join("config.json");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("parsing {}", path.display()))?;
    let id2label =
        config["id2label"].as_object().with_context(|| format!("{}: no id2label", path.display()))?;
    let mut labels: Vec<(u64, String)> = id2label
        .iter()
        .map(|(id, label)| -> anyhow::Result<(u64, String)> {
            Ok((id.parse()?, label.as_str().context("label is not a string")?.to_owned()))
        })
        .collect::<anyhow::Result<_>>()
        .with_context(|| format!("{}: id2label", path.display()))?;
    labels.sort();
    Ok(labels.into_iter().map(|(_, label)| label).collect())
}

/// Starts `kiln serve` on free ports, sends the seed's REST and gRPC requests, stops it with SIGTERM.
async fn serve_and_call(kiln: &Path, base: &Path, image: &[u8]) -> anyhow::Result<()> {
    println!(
        "\n$ kiln serve --model_name vit --model_base_path {} --port <free> --rest_api_port <free>",
        base.display()
    );
    let server = KilnServer::start(kiln, "vit", base, &[]).await?;
    println!("serving: REST {}  gRPC {}", server.rest_url(), server.grpc_url());

    // The seed's clients send the base64 text as a plain string and let the model decode it (URL-safe,
    // as tf.io.decode_base64 wants); `{"b64": ...}` is TF Serving's binary form, decoded by the server.
    let text = base64::engine::general_purpose::URL_SAFE.encode(image);
    let standard = base64::engine::general_purpose::STANDARD.encode(image);
    let url = format!("{}/v1/models/vit:predict", server.rest_url());
    let body = serde_json::json!({"instances": [text, {"b64": standard}]});
    println!(
        "\nPOST {url}\n{{\"instances\": [\"<{} base64 chars of {SERVED_IMAGE}>\", {{\"b64\": \"<{} chars>\"}}]}}",
        text.len(),
        standard.len()
    );
    let response = reqwest::Client::new().post(&url).json(&body).send().await?;
    let status = response.status();
    print!("HTTP {status}\n{}", response.text().await?);
    if !status.is_success() {
        bail!("REST predict answered {status}");
    }

    let mut client = PredictionServiceClient::connect(server.grpc_url()).await?;
    let request = PredictRequest {
        model_spec: Some(ModelSpec {
            name: "vit".into(),
            signature_name: "serving_default".into(),
            version_choice: None,
        }),
        inputs: [("string_input".to_owned(), string_tensor(text.into_bytes()))].into(),
        output_filter: vec![],
    };
    println!(
        "\ngRPC {} tensorflow.serving.PredictionService/Predict (string_input = tf.make_tensor_proto([b64]))",
        server.grpc_url()
    );
    let response = client.predict(request).await.context("gRPC Predict")?.into_inner();
    print!("{}", text_format(&response));

    // The page the REST port serves at `/`; its status line shows whether this build has it.
    let page = format!("{}/", server.rest_url());
    let status = reqwest::get(&page).await.map(|r| r.status().to_string()).unwrap_or_else(|e| e.to_string());
    println!("\nstatus and try-it page, while the server runs: {page} (GET / -> {status})");

    let exit = server.stop().await?;
    println!("\nkiln serve stopped by SIGTERM: {exit}");
    if !exit.success() {
        bail!("kiln serve exited with {exit}");
    }
    Ok(())
}

/// What `tf.make_tensor_proto([value])` builds: a DT_STRING tensor of shape `[1]`.
pub(crate) fn string_tensor(value: Vec<u8>) -> TensorProto {
    TensorProto {
        dtype: DataType::DtString as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: vec![tensor_shape_proto::Dim { size: 1, name: String::new() }],
            unknown_rank: false,
        }),
        string_val: vec![value],
        ..Default::default()
    }
}

/// A PredictResponse the way Python's `print(response)` shows it (protobuf text format).
fn text_format(response: &PredictResponse) -> String {
    let mut out = String::new();
    let mut keys: Vec<&String> = response.outputs.keys().collect();
    keys.sort();
    for key in keys {
        let tensor = &response.outputs[key];
        let dtype = DataType::try_from(tensor.dtype).map_or("DT_INVALID", |d| d.as_str_name());
        out.push_str(&format!(
            "outputs {{\n  key: \"{key}\"\n  value {{\n    dtype: {dtype}\n    tensor_shape {{\n"
        ));
        for dim in tensor.tensor_shape.iter().flat_map(|s| &s.dim) {
            out.push_str(&format!("      dim {{\n        size: {}\n      }}\n", dim.size));
        }
        out.push_str("    }\n");
        for value in &tensor.float_val {
            out.push_str(&format!("    float_val: {value}\n"));
        }
        for value in &tensor.string_val {
            out.push_str(&format!(
                "    string_val: \"{}\"\n",
                String::from_utf8_lossy(value).escape_default()
            ));
        }
        out.push_str("  }\n}\n");
    }
    if let Some(spec) = &response.model_spec {
        out.push_str(&format!("model_spec {{\n  name: \"{}\"\n", spec.name));
        if let Some(model_spec::VersionChoice::Version(version)) = spec.version_choice {
            out.push_str(&format!("  version {{\n    value: {version}\n  }}\n"));
        }
        out.push_str(&format!("  signature_name: \"{}\"\n}}\n", spec.signature_name));
    }
    out
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
