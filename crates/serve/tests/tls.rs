//! TLS and mutual TLS on both ports (`--ssl_config_file`), with a CA each test makes itself and real
//! clients: reqwest over rustls for REST, tonic with TLS credentials for gRPC.

#[path = "support/pki.rs"]
mod pki;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use pki::{Leaf, TestCa, https_client, ssl_config, write_atomically};
use serde_json::json;
use serve::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use support::{Fixture, TestResult, b64, image, predict_request, serve_fixture};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How often the tests' servers re-read the SSL config file.
const POLL: Duration = Duration::from_millis(100);

/// A gRPC client over TLS that trusts only `ca` (and presents `identity` when given).
async fn grpc_tls_client(
    addr: &str,
    ca: &str,
    identity: Option<&Leaf>,
) -> TestResult<PredictionServiceClient<Channel>> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect().await?;
    Ok(PredictionServiceClient::new(channel))
}

/// A REST predict of one image through `client`; the HTTP status.
async fn https_predict(client: &reqwest::Client, addr: &str) -> TestResult<u16> {
    let body = json!({"instances": [{"b64": b64(&image("chelsea.jpg")?)}]});
    let response = client.post(format!("https://{addr}/v1/models/vit:predict")).json(&body).send().await?;
    Ok(response.status().as_u16())
}

/// A gRPC predict of one image; the number of labels answered.
async fn grpc_predict(client: &mut PredictionServiceClient<Channel>) -> TestResult<usize> {
    let request = predict_request("vit", None, &[&image("chelsea.jpg")?]);
    Ok(client.predict(request).await?.into_inner().outputs["label"].string_val.len())
}

/// Starts the fixture server with `config` as its SSL config file, re-read every [`POLL`].
async fn serve_tls(config: &Path) -> TestResult<(Fixture, String, String)> {
    let fixture = serve_fixture(1, |options| {
        options.ssl_config_file = Some(config.to_owned());
        options.ssl_config_poll_interval = POLL;
    })
    .await?;
    let rest = fixture.server.server.rest_addr().ok_or("no REST address")?.to_string();
    let grpc = fixture.server.server.grpc_addr().ok_or("no gRPC address")?.to_string();
    Ok((fixture, rest, grpc))
}

/// Sends a plain HTTP request to a TLS port: the answer must not be HTTP, and the server must close
/// the connection rather than keep it.
async fn plain_text_is_refused(addr: &str) -> TestResult {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET /v1/models/vit HTTP/1.1\r\nHost: kiln\r\n\r\n").await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| format!("{addr} kept a plain-text connection open"))?
        .or_else(|e| if e.kind() == std::io::ErrorKind::ConnectionReset { Ok(0) } else { Err(e) })?;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{addr} answered plain HTTP: {:?}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_grpc_over_tls_refuse_plain_text_and_rotate_certificates() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ssl.pbtxt");
    let ca = TestCa::new("kiln test CA 1")?;
    write_atomically(&config, &ssl_config(&ca.server()?, None, false))?;
    let (_fixture, rest, grpc) = serve_tls(&config).await?;

    assert_eq!(https_predict(&https_client(&ca.pem(), None)?, &rest).await?, 200);
    assert_eq!(grpc_predict(&mut grpc_tls_client(&grpc, &ca.pem(), None).await?).await?, 1);

    // Plain text on either TLS port: no answer, the connection closed, and the server still serving.
    plain_text_is_refused(&rest).await?;
    plain_text_is_refused(&grpc).await?;
    let plain = reqwest::Client::new().get(format!("http://{rest}/v1/models/vit")).send().await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    let plain_grpc = async {
        let mut client = PredictionServiceClient::connect(format!("http://{grpc}")).await?;
        grpc_predict(&mut client).await
    };
    assert!(plain_grpc.await.is_err(), "plain gRPC got an answer");
    assert_eq!(https_predict(&https_client(&ca.pem(), None)?, &rest).await?, 200);

    // Rotation: a certificate from another CA replaces the first without a restart.
    let next_ca = TestCa::new("kiln test CA 2")?;
    write_atomically(&config, &ssl_config(&next_ca.server()?, None, false))?;
    let started = Instant::now();
    while https_predict(&https_client(&next_ca.pem(), None)?, &rest).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "the new certificate was never served");
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(grpc_predict(&mut grpc_tls_client(&grpc, &next_ca.pem(), None).await?).await?, 1);
    assert!(
        https_predict(&https_client(&ca.pem(), None)?, &rest).await.is_err(),
        "old certificate still served"
    );

    // A broken file keeps the current certificates.
    write_atomically(&config, "server_key: 'not a key'\nserver_cert: 'not a certificate'\n")?;
    tokio::time::sleep(POLL * 5).await;
    assert_eq!(https_predict(&https_client(&next_ca.pem(), None)?, &rest).await?, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_ca_signed_certificate() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ssl.pbtxt");
    let ca = TestCa::new("kiln test CA")?;
    write_atomically(&config, &ssl_config(&ca.server()?, Some(&ca.pem()), true))?;
    let (_fixture, rest, grpc) = serve_tls(&config).await?;
    let client = ca.client()?;
    let stranger = TestCa::new("another CA")?.client()?;

    assert_eq!(https_predict(&https_client(&ca.pem(), Some(&client))?, &rest).await?, 200);
    assert!(https_predict(&https_client(&ca.pem(), None)?, &rest).await.is_err(), "no client certificate");
    assert!(
        https_predict(&https_client(&ca.pem(), Some(&stranger))?, &rest).await.is_err(),
        "a certificate from another CA"
    );

    assert_eq!(grpc_predict(&mut grpc_tls_client(&grpc, &ca.pem(), Some(&client)).await?).await?, 1);
    for identity in [None, Some(&stranger)] {
        let refused = async { grpc_predict(&mut grpc_tls_client(&grpc, &ca.pem(), identity).await?).await };
        assert!(refused.await.is_err(), "gRPC admitted a client without a CA-signed certificate");
    }
    Ok(())
}
