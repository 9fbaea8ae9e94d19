//! The REST API through a real socket: TF Serving's paths, JSON shapes, errors and status codes.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use serve::{BatchingParameters, ModelConfig, VersionState};
use support::{
    Fixture, TestResult, TestServer, b64, b64_url, export_version, image, options, reference, serve_fixture,
};

/// Served confidences come from the same runtime; batching may reorder float sums slightly.
const CONFIDENCE_TOLERANCE: f64 = 1e-5;

fn confidence(value: &Value) -> TestResult<f64> {
    value.as_f64().ok_or_else(|| format!("not a number: {value}").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_accepts_both_layouts_and_both_base64_forms() -> TestResult {
    let Fixture { base: _base, dir, server } = serve_fixture(1, |_| {}).await?;
    let cat = image("chelsea.jpg")?;
    let rocket = image("rocket.jpg")?;
    let expected_cat = reference(&dir, &cat)?;
    let expected_rocket = reference(&dir, &rocket)?;

    // Row layout: the legacy clients' plain base64 string, URL-safe text, a {"b64"} object, a named object.
    let body = json!({"instances": [b64(&cat), b64_url(&rocket), {"b64": b64(&cat)}, {"string_input": {"b64": b64(&rocket)}}]});
    let response =
        server.http.post(format!("{}/v1/models/vit:predict", server.rest)).json(&body).send().await?;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let answer: Value = response.json().await?;
    let predictions = answer["predictions"].as_array().ok_or("no predictions")?;
    assert_eq!(predictions.len(), 4);
    for (prediction, expected) in
        predictions.iter().zip([&expected_cat, &expected_rocket, &expected_cat, &expected_rocket])
    {
        let keys: Vec<&String> = prediction.as_object().ok_or("not an object")?.keys().collect();
        assert_eq!(keys, ["confidence", "label"]);
        assert_eq!(prediction["label"], expected.label.as_str());
        assert!(
            (confidence(&prediction["confidence"])? - f64::from(expected.confidence)).abs()
                < CONFIDENCE_TOLERANCE
        );
    }

    // Columnar layout, bare list and named.
    for inputs in
        [json!([b64(&cat), b64(&rocket)]), json!({"string_input": [{"b64": b64(&cat)}, b64_url(&rocket)]})]
    {
        let body = json!({"signature_name": "serving_default", "inputs": inputs});
        let (status, answer) = server.post("/v1/models/vit:predict", &body).await?;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["outputs"]["label"], json!([expected_cat.label, expected_rocket.label]));
        let confidences = answer["outputs"]["confidence"].as_array().ok_or("no confidence")?;
        assert!(
            (confidence(&confidences[1])? - f64::from(expected_rocket.confidence)).abs()
                < CONFIDENCE_TOLERANCE
        );
    }

    // A gzip body is inflated, as TF Serving does.
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gzip, &serde_json::to_vec(&json!({"instances": [b64(&cat)]}))?)?;
    let response = server
        .http
        .post(format!("{}/v1/models/vit:predict", server.rest))
        .header("content-encoding", "gzip")
        .body(gzip.finish()?)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await?;
    assert_eq!(answer["predictions"][0]["label"], expected_cat.label.as_str());

    // Version and label paths, case-insensitive.
    let body = json!({"instances": [b64(&cat)]});
    let (status, answer) = server.post("/V1/MODELS/vit/versions/1:PREDICT", &body).await?;
    assert_eq!((status, answer["predictions"][0]["label"].clone()), (200, json!(expected_cat.label)));
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_use_tf_messages_and_status_codes() -> TestResult {
    let Fixture { base: _base, dir: _dir, server } = serve_fixture(1, |_| {}).await?;
    let cat = b64(&image("chelsea.jpg")?);
    let cases: Vec<(&str, Value, u16, String)> = vec![
        ("/v1/models/nope:predict", json!({"instances": [cat]}), 404, "Servable not found for request: Latest(nope)".into()),
        ("/v1/models/vit/versions/7:predict", json!({"instances": [cat]}), 404, "Servable not found for request: Specific(vit, 7)".into()),
        ("/v1/models/vit/labels/canary:predict", json!({"instances": [cat]}), 400, "Unrecognized servable version label: canary".into()),
        ("/v1/models/vit:predict", json!({"instances": [cat], "signature_name": "x"}), 400,
            "Serving signature name: \"x\" not found in signature def".into()),
        ("/v1/models/vit:predict", json!({"signature_name": 3, "instances": [cat]}), 400, "'signature_name' key must be a string value.".into()),
        ("/v1/models/vit:predict", json!({"foo": 1}), 400, "Missing 'inputs' or 'instances' key".into()),
        ("/v1/models/vit:predict", json!({"instances": []}), 400, "JSON Value: [] No values in 'instances' array".into()),
        ("/v1/models/vit:predict", json!({"instances": "x"}), 400, "JSON Value: \"x\" Expecting 'instances' to be an list/array".into()),
        ("/v1/models/vit:predict", json!([1]), 400, "JSON Value: [1] Is not object".into()),
        ("/v1/models/vit:predict", json!({"instances": [1.5]}), 400,
            "instance 0 of 'instances': JSON Value: 1.5 Type: Number is not of expected type: string".into()),
        ("/v1/models/vit:predict", json!({"instances": [{"b64": "%%%"}]}), 400,
            "instance 0 of 'instances': Unable to base64 decode: Invalid symbol 37, offset 0.".into()),
        ("/v1/models/vit:predict", json!({"instances": [{"b64": 1}]}), 400,
            "instance 0 of 'instances': JSON Value: {\"b64\":1} not formatted correctly for base64 data".into()),
        ("/v1/models/vit:predict", json!({"instances": [{"image": cat}]}), 400,
            "instance 0 of 'instances': input size does not match signature: 1!=1 len({image}) != len({string_input}). \
             Sent extra: {image}. Missing but required: {string_input}.".into()),
        ("/v1/models/vit:regress", json!({"examples": []}), 501,
            "regress is not implemented by kiln: its models take images through the predict API (POST /v1/models/vit:predict)".into()),
        ("/v1/models/vit", json!({}), 400, "Malformed request: POST /v1/models/vit".into()),
        ("/v1/models/vit/metadata", json!({}), 400, "Malformed request: POST /v1/models/vit/metadata".into()),
    ];
    for (path, body, status, message) in cases {
        let (got_status, answer) = server.post(path, &body).await?;
        assert_eq!((got_status, answer["error"].as_str()), (status, Some(message.as_str())), "{path}");
    }
    // The message names the failing instance; the rest of it is the runtime's.
    let (status, answer) =
        server.post("/v1/models/vit:predict", &json!({"instances": [cat, "bm90IGFuIGltYWdl"]})).await?;
    assert_eq!(status, 400);
    let message = answer["error"].as_str().unwrap_or_default();
    assert!(message.starts_with("instance 1 of 'instances': unsupported image format"), "{message}");
    let both = json!({"instances": [cat], "inputs": [cat]});
    let (status, answer) = server.post("/v1/models/vit:predict", &both).await?;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().is_some_and(|m| {
        m.ends_with("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    }));

    let raw = |body: &'static str| {
        server.http.post(format!("{}/v1/models/vit:predict", server.rest)).body(body).send()
    };
    let answer: Value = raw("").await?.json().await?;
    assert_eq!(answer["error"], "JSON Parse error: The document is empty");
    let answer: Value = raw("{\"instances\": [}").await?.json().await?;
    assert_eq!(answer["error"], "JSON Parse error: expected value at offset: 15");

    assert_eq!(server.get("/v1/models").await?, (400, json!({"error": "Missing model name in request."})));
    assert_eq!(
        server.get("/v1/models/vit:predict").await?,
        (400, json!({"error": "Malformed request: GET /v1/models/vit:predict"}))
    );
    for path in ["/elsewhere", "/v1x/models/vit", "/v1"] {
        let response = server.http.get(format!("{}{path}", server.rest)).send().await?;
        assert_eq!(response.status().as_u16(), 404, "{path}");
    }
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metadata_print_like_tf() -> TestResult {
    let Fixture { base: _base, dir: _dir, server } = serve_fixture(3, |_| {}).await?;

    let response = server.http.get(format!("{}/v1/models/vit", server.rest)).send().await?;
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await?;
    assert_eq!(
        text,
        "{\n \"model_version_status\": [\n  {\n   \"version\": \"3\",\n   \"state\": \"AVAILABLE\",\n   \"status\": {\n    \
         \"error_code\": \"OK\",\n    \"error_message\": \"\"\n   }\n  }\n ]\n}\n"
    );
    let (status, one) = server.get("/v1/models/vit/versions/3").await?;
    assert_eq!((status, one["model_version_status"][0]["version"].clone()), (200, json!("3")));
    assert_eq!(
        server.get("/v1/models/vit/versions/9").await?,
        (404, json!({"error": "Could not find version 9 of model vit"}))
    );
    assert_eq!(
        server.get("/v1/models/nope").await?,
        (404, json!({"error": "Could not find any versions of model nope"}))
    );

    let (status, metadata) = server.get("/v1/models/vit/metadata").await?;
    assert_eq!(status, 200);
    assert_eq!(metadata["model_spec"], json!({"name": "vit", "signature_name": "", "version": "3"}));
    let signature = &metadata["metadata"]["signature_def"]["signature_def"]["serving_default"];
    assert_eq!(signature["method_name"], "tensorflow/serving/predict");
    assert_eq!(
        signature["inputs"]["string_input"],
        json!({"dtype": "DT_STRING", "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": false},
               "name": "serving_default_string_input:0"})
    );
    assert_eq!(signature["outputs"]["confidence"]["dtype"], "DT_FLOAT");
    assert_eq!(signature["outputs"]["label"]["dtype"], "DT_STRING");
    assert_eq!(signature["defaults"], json!({}));
    let (status, _) = server.get("/v1/models/vit/versions/3/metadata").await?;
    assert_eq!(status, 200);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_gets_413() -> TestResult {
    let Fixture { base: _base, dir: _dir, server } = serve_fixture(1, |options| {
        options.max_body_bytes = 2 << 20;
    })
    .await?;
    let large = b64(&image("large-2400x2093.jpg")?);
    let big = json!({"instances": [large, large, large]});
    let (status, answer) = server.post("/v1/models/vit:predict", &big).await?;
    assert_eq!(status, 413);
    assert_eq!(answer["error"], "Request body is larger than the limit of 2097152 bytes");
    server.server.shutdown().await;
    Ok(())
}

/// Its own server: with a 1 ms deadline, draining an oversized body may itself miss the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_gets_504() -> TestResult {
    let Fixture { base: _base, dir: _dir, server } = serve_fixture(1, |options| {
        options.rest_timeout = Duration::from_millis(1);
    })
    .await?;
    // Decoding a 5-megapixel JPEG takes far longer than the 1 ms deadline.
    let large = b64(&image("large-2400x2093.jpg")?);
    let (status, answer) = server.post("/v1/models/vit:predict", &json!({"instances": [large]})).await?;
    assert_eq!(status, 504, "{answer}");
    assert!(answer["error"].as_str().is_some_and(|m| m.contains("--rest_api_timeout_in_ms=1")), "{answer}");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_queue_answers_429_and_the_rest_succeed() -> TestResult {
    let Fixture { base: _base, dir: _dir, server } = serve_fixture(1, |options| {
        options.batching = Some(BatchingParameters {
            max_batch_size: 1,
            batch_timeout: Duration::ZERO,
            max_enqueued_batches: 1,
            num_batch_threads: 1,
            allowed_batch_sizes: vec![],
        });
    })
    .await?;
    let body = json!({"instances": [b64(&image("large-2400x2093.jpg")?)]});
    let url = format!("{}/v1/models/vit:predict", server.rest);
    let requests: Vec<_> = (0..12).map(|_| server.http.post(&url).json(&body).send()).collect();
    let mut statuses = Vec::new();
    for response in futures_join(requests).await {
        let response = response?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await?;
        if status == 429 {
            let message = answer["error"].as_str().unwrap_or_default();
            assert!(
                message.starts_with("The batch scheduling queue to which this task was submitted is full"),
                "{message}"
            );
        } else {
            assert_eq!(status, 200, "{answer}");
        }
        statuses.push(status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    server.server.shutdown().await;
    Ok(())
}

/// Awaits every future concurrently (they all start before any is awaited to completion).
async fn futures_join<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.expect("request task panicked"));
    }
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_and_preflight_when_enabled() -> TestResult {
    let Fixture { base: _base, dir: _dir, server } = serve_fixture(1, |options| options.cors = true).await?;
    let url = format!("{}/v1/models/vit:predict", server.rest);
    let preflight = server
        .http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://app.example")
        .send()
        .await?;
    assert_eq!(preflight.status().as_u16(), 200);
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    assert_eq!(preflight.headers()["access-control-allow-methods"], "POST, GET");
    assert_eq!(preflight.headers()["access-control-allow-headers"], "Content-Type, Authorization");
    let refused = server.http.request(reqwest::Method::OPTIONS, &url).send().await?;
    assert_eq!(refused.status().as_u16(), 400);
    let answer: Value = refused.json().await?;
    assert_eq!(answer["error"], "Origin header is missing in CORS preflight");
    let response =
        server.http.post(&url).json(&json!({"instances": [b64(&image("rocket.jpg")?)]})).send().await?;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() -> TestResult {
    let base = tempfile::tempdir()?;
    let server = TestServer::start(options(vec![ModelConfig::new("vit", base.path())])).await?;
    assert_eq!(server.get("/healthz").await?, (200, json!({"status": "alive"})));
    let (status, ready) = server.get("/readyz").await?;
    assert_eq!((status, ready), (503, json!({"ready": false, "models": {"vit": false}})));
    export_version(base.path(), 1)?;
    server.wait_for("vit", 1, VersionState::Available).await?;
    let (status, ready) = server.get("/readyz").await?;
    assert_eq!((status, ready), (200, json!({"ready": true, "models": {"vit": true}})));

    let (status, _) =
        server.post("/v1/models/vit:predict", &json!({"instances": [b64(&image("rocket.jpg")?)]})).await?;
    assert_eq!(status, 200);
    let response = server.http.get(format!("{}/monitoring/prometheus/metrics", server.rest)).send().await?;
    assert!(response.headers()["content-type"].to_str()?.starts_with("text/plain"));
    let text = response.text().await?;
    for needle in [
        ":tensorflow:serving:request_count{API=\"predict\",entrypoint=\"REST\",model_name=\"vit\",status=\"OK\"} 1",
        ":tensorflow:serving:request_latency_bucket{API=\"predict\",entrypoint=\"REST\",model_name=\"vit\"",
        ":tensorflow:serving:batching_session:processed_batch_size_count{model_name=\"vit\"} 1",
        "kiln_queue_depth{model_name=\"vit\",version=\"1\"} 0",
        "kiln_model_load_seconds_count{model_name=\"vit\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    server.server.shutdown().await;
    Ok(())
}
