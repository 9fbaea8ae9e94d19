//! `kiln serve --ssl_config_file` through the real binary: mutual TLS on both ports with a CA the test
//! makes, an HTTPS and a gRPC client with certificates, a client without one refused, plain text
//! refused, a bad file refused at startup, and a rotated certificate picked up without a restart.

#[path = "../crates/serve/tests/support/pki.rs"]
mod pki;

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use base64::Engine as _;
use kiln_e2e::{KilnServer, export, fixture, kiln, kiln_binary};
use pki::{Leaf, TestCa, https_client, ssl_config, write_atomically};
use serde_json::json;
use serve::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use serve::proto::tensorflow::serving::{ModelSpec, PredictRequest};
use serve::proto::tensorflow::{DataType, TensorProto, TensorShapeProto, tensor_shape_proto};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// One gRPC Predict over TLS with `identity`; the number of labels answered.
async fn grpc_predict(url: &str, ca: &str, identity: &Leaf, image: &[u8]) -> anyhow::Result<usize> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(&identity.cert, &identity.key))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(url.to_owned())?.tls_config(tls)?.connect().await?;
    let tensor = TensorProto {
        dtype: DataType::DtString as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: vec![tensor_shape_proto::Dim { size: 1, name: String::new() }],
            unknown_rank: false,
        }),
        string_val: vec![image.to_vec()],
        ..Default::default()
    };
    let request = PredictRequest {
        model_spec: Some(ModelSpec { name: "vit".into(), ..Default::default() }),
        inputs: [("string_input".to_owned(), tensor)].into(),
        output_filter: vec![],
    };
    let response = PredictionServiceClient::new(channel).predict(request).await?.into_inner();
    Ok(response.outputs.get("label").context("no label output")?.string_val.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_mutual_tls_on_both_ports_and_rotates_certificates() -> anyhow::Result<()> {
    let (base, _version) = export(&fixture("models/tiny-vit"), &[])?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ssl.pbtxt");
    let config_arg = format!("--ssl_config_file={}", config.display());

    // A file that is not an SSLConfig stops the server before it listens, naming file and field.
    std::fs::write(&config, "server_key: 'x'\nserver_crt: 'y'\n")?;
    let refused = kiln(&["serve", "--model_base_path", base.path().to_str().context("utf-8")?, &config_arg])?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(!refused.status.success(), "kiln serve started with a bad SSL config");
    ensure!(stderr.contains("ssl.pbtxt") && stderr.contains("`server_crt`"), "unclear error: {stderr}");

    let ca = TestCa::new("kiln e2e CA")?;
    let client = ca.client()?;
    write_atomically(&config, &ssl_config(&ca.server()?, Some(&ca.pem()), true))?;
    let http = https_client(&ca.pem(), Some(&client))?;
    let server =
        KilnServer::start_with(&kiln_binary()?, "vit", base.path(), &[&config_arg], http.clone(), "https")
            .await?;
    let image = std::fs::read(fixture("images/chelsea.jpg"))?;
    let body = json!({"instances": [{"b64": base64::engine::general_purpose::STANDARD.encode(&image)}]});
    let predict = format!("{}/v1/models/vit:predict", server.rest_url());

    let response = http.post(&predict).json(&body).send().await?;
    ensure!(response.status() == 200, "HTTPS predict: {}", response.status());
    ensure!(grpc_predict(&server.grpc_url(), &ca.pem(), &client, &image).await? == 1);

    let anonymous = https_client(&ca.pem(), None)?.post(&predict).json(&body).send().await;
    ensure!(anonymous.is_err(), "a client without a certificate was served: {anonymous:?}");
    let plain =
        reqwest::Client::new().get(format!("http://{}/v1/models/vit", server.rest_addr())).send().await;
    ensure!(plain.is_err(), "plain HTTP was served: {plain:?}");

    // Rotation: a new server certificate (and CA) is served to the next connection, no restart.
    let next = TestCa::new("kiln e2e CA 2")?;
    let next_client = next.client()?;
    write_atomically(&config, &ssl_config(&next.server()?, Some(&next.pem()), true))?;
    let rotated = https_client(&next.pem(), Some(&next_client))?;
    let started = Instant::now();
    while rotated.post(&predict).json(&body).send().await.is_err() {
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "rotated certificate never served:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(grpc_predict(&server.grpc_url(), &next.pem(), &next_client, &image).await? == 1);
    ensure!(server.log().contains("SSL config changed"), "rotation not logged:\n{}", server.log());
    let status = server.stop().await?;
    ensure!(status.success(), "kiln serve exited with {status}");
    Ok(())
}
