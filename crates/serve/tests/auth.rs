//! Bearer-token authentication (`--auth_token_file`) through real sockets: both ports refuse calls
//! without a valid token, probes stay open, metrics follow their flag, and a rotated file takes effect
//! without a restart while a broken one keeps the tokens in force.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use serve::proto::tensorflow::serving::model_service_client::ModelServiceClient;
use serve::proto::tensorflow::serving::{GetModelStatusRequest, ModelSpec};
use serve::{ServerError, ServerOptions};
use support::{Fixture, TestResult, TestServer, b64, image, predict_request, serve_fixture};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TOKEN: &str = "kiln-test-token-0123456789abcdef";
const OTHER_TOKEN: &str = "kiln-rotated-token-fedcba9876543210";

/// How long a rotation may take to apply (the file is polled every 50 ms here).
const ROTATION_WAIT: Duration = Duration::from_secs(10);

fn with_tokens(file: &Path) -> impl FnOnce(&mut ServerOptions) + use<> {
    let file = file.to_owned();
    move |options| {
        options.auth_token_file = Some(file);
        options.auth_token_poll_interval = Duration::from_millis(50);
    }
}

/// A REST call with an optional `Authorization` value: status, `WWW-Authenticate`, body.
async fn rest_call(
    server: &TestServer,
    path: &str,
    authorization: Option<&str>,
    body: Option<&serde_json::Value>,
) -> TestResult<(u16, Option<String>, String)> {
    let url = format!("{}{path}", server.rest);
    let mut request = match body {
        Some(body) => server.http.post(url).json(body),
        None => server.http.get(url),
    };
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let challenge =
        response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok((status, challenge, response.text().await?))
}

/// A gRPC predict with an optional `authorization` metadata value.
async fn grpc_predict(
    server: &TestServer,
    authorization: Option<&str>,
) -> TestResult<Result<(), tonic::Status>> {
    let cat = b64(&image("chelsea.jpg")?);
    let mut request = tonic::Request::new(predict_request("vit", None, &[cat.as_bytes()]));
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value.parse()?);
    }
    let mut client = server.grpc_client().await?;
    Ok(client.predict(request).await.map(|_| ()))
}

/// The status of a model-status GET with `token`.
async fn status_with(server: &TestServer, token: &str) -> TestResult<u16> {
    Ok(rest_call(server, "/v1/models/vit", Some(&format!("Bearer {token}")), None).await?.0)
}

fn predict_body() -> TestResult<serde_json::Value> {
    Ok(json!({"instances": [{"b64": b64(&image("chelsea.jpg")?)}]}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ports_need_a_valid_bearer_token_and_probes_stay_open() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("# serving clients\n{TOKEN}\n\n"))?;
    let Fixture { base: _base, dir: _dir, server } = serve_fixture(1, with_tokens(&file)).await?;
    let body = predict_body()?;
    let bearer = format!("Bearer {TOKEN}");

    let (status, challenge, text) = rest_call(&server, "/v1/models/vit:predict", None, Some(&body)).await?;
    assert_eq!((status, challenge.as_deref()), (401, Some("Bearer realm=\"kiln\"")));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text)?,
        json!({"error": "Missing bearer token: this server requires `Authorization: Bearer <token>`"})
    );
    let wrong = format!("Bearer {OTHER_TOKEN}");
    let (status, challenge, text) =
        rest_call(&server, "/v1/models/vit:predict", Some(&wrong), Some(&body)).await?;
    assert_eq!((status, challenge.as_deref()), (401, Some("Bearer realm=\"kiln\", error=\"invalid_token\"")));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text)?,
        json!({"error": "The bearer token is not valid on this server"})
    );
    let basic = format!("Basic {TOKEN}");
    let (status, challenge, _) = rest_call(&server, "/v1/models/vit", Some(&basic), None).await?;
    assert_eq!(
        (status, challenge.as_deref()),
        (401, Some("Bearer realm=\"kiln\", error=\"invalid_request\""))
    );
    let (status, _, text) = rest_call(&server, "/v1/models/vit:predict", Some(&bearer), Some(&body)).await?;
    assert_eq!(status, 200, "{text}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&text)?["predictions"][0]["label"].is_string(),
        "{text}"
    );

    // A refused multi-megabyte body still gets its 401 (the body is drained, not reset mid-send).
    let large = json!({"instances": [b64(&image("large-2400x2093.jpg")?)]});
    assert_eq!(rest_call(&server, "/v1/models/vit:predict", None, Some(&large)).await?.0, 401);

    for probe in ["/healthz", "/readyz"] {
        assert_eq!(rest_call(&server, probe, None, None).await?.0, 200, "{probe}");
    }
    let metrics = serve::DEFAULT_PROMETHEUS_PATH;
    assert_eq!(rest_call(&server, metrics, None, None).await?.0, 401);
    let (status, _, text) = rest_call(&server, metrics, Some(&bearer), None).await?;
    assert_eq!(status, 200);
    assert!(
        text.lines().any(|line| line
            .starts_with("kiln_unauthenticated_requests_total{entrypoint=\"REST\",reason=\"missing\"}")),
        "{text}"
    );

    let refused = grpc_predict(&server, None).await?.err().ok_or("accepted without a token")?;
    assert_eq!(
        (refused.code(), refused.message()),
        (
            tonic::Code::Unauthenticated,
            "Missing bearer token: this server requires `authorization: Bearer <token>`"
        )
    );
    let refused = grpc_predict(&server, Some(&wrong)).await?.err().ok_or("accepted a wrong token")?;
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    grpc_predict(&server, Some(&bearer)).await??;
    let mut models = ModelServiceClient::connect(server.grpc.clone()).await?;
    let spec = Some(ModelSpec { name: "vit".into(), ..Default::default() });
    let refused = models.get_model_status(GetModelStatusRequest { model_spec: spec }).await.err();
    assert_eq!(refused.map(|s| s.code()), Some(tonic::Code::Unauthenticated));
    let mut health =
        HealthClient::new(tonic::transport::Channel::from_shared(server.grpc.clone())?.connect().await?);
    // Open: an answer at all (its status follows readiness, refreshed every 200 ms).
    let answer = health.check(HealthCheckRequest { service: String::new() }).await?.into_inner();
    assert!(
        [ServingStatus::Serving as i32, ServingStatus::NotServing as i32].contains(&answer.status),
        "{answer:?}"
    );
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_token_files_apply_and_broken_ones_keep_the_old_tokens() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("{TOKEN}\n"))?;
    let Fixture { base: _base, dir: _dir, server } = serve_fixture(1, with_tokens(&file)).await?;
    assert_eq!(status_with(&server, TOKEN).await?, 200);
    assert_eq!(status_with(&server, OTHER_TOKEN).await?, 401);

    // Rotation: the new token works and the old one stops working, without a restart.
    let staged = dir.path().join("tokens.new");
    std::fs::write(&staged, format!("# rotated\n{OTHER_TOKEN}\n"))?;
    std::fs::rename(&staged, &file)?;
    let started = Instant::now();
    while status_with(&server, OTHER_TOKEN).await? != 200 {
        if started.elapsed() > ROTATION_WAIT {
            return Err("the rotated token was never accepted".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status_with(&server, TOKEN).await?, 401);

    // A broken rotation (no token left, a weak token, no file) keeps the tokens in force.
    for broken in [Some("# nothing\n\n"), Some("short\n"), None] {
        match broken {
            Some(text) => std::fs::write(&file, text)?,
            None => std::fs::remove_file(&file)?,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(status_with(&server, OTHER_TOKEN).await?, 200, "after writing {broken:?}");
    }
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_opened_and_unusable_token_files_stop_the_start() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("{TOKEN}\n"))?;
    let Fixture { base, dir: _dir, server } = serve_fixture(1, |options| {
        with_tokens(&file)(options);
        options.allow_unauthenticated_metrics = true;
    })
    .await?;
    assert_eq!(rest_call(&server, serve::DEFAULT_PROMETHEUS_PATH, None, None).await?.0, 200);
    assert_eq!(rest_call(&server, "/v1/models/vit", None, None).await?.0, 401);
    server.server.shutdown().await;

    std::fs::write(&file, "# no tokens yet\n")?;
    let mut options = support::options(vec![serve::ModelConfig::new("vit", base.path())]);
    with_tokens(&file)(&mut options);
    match serve::Server::start(options).await {
        Err(error @ ServerError::TokenFile(_)) => {
            assert!(error.to_string().contains("holds no token"), "{error}")
        }
        Err(other) => return Err(format!("unexpected error: {other}").into()),
        Ok(server) => {
            server.shutdown().await;
            return Err("started with an empty token file".into());
        }
    }
    Ok(())
}
