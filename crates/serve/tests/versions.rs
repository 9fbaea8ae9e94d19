//! Version lifecycle through a running server: routing by version and label, hot-load while serving,
//! corrupt and deleted versions, faults reported on serving versions (files corrupted on disk, base
//! path gone), a model config file with several models, and draining on shutdown.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use serve::proto::tensorflow::serving::file_system_storage_path_source_config::ServableVersionPolicy;
use serve::proto::tensorflow::serving::file_system_storage_path_source_config::servable_version_policy::PolicyChoice;
use serve::proto::tensorflow::serving::model_service_client::ModelServiceClient;
use serve::proto::tensorflow::serving::{
    ModelConfig as ModelConfigProto, ModelConfigList, ModelServerConfig, ReloadConfigRequest,
    model_server_config, model_spec,
};
use serve::{ModelConfig, VersionState, VersionStatus, read_model_config};
use support::{
    Fixture, TestResult, TestServer, b64, export_version, image, options, predict_request, publish_copy,
    reference, serve_fixture,
};

/// The version a gRPC predict was answered by.
async fn served_version(server: &TestServer, model: &str, version: Option<i64>) -> TestResult<i64> {
    let input = b64(&image("rocket.jpg")?);
    let response = server
        .grpc_client()
        .await?
        .predict(predict_request(model, version, &[input.as_bytes()]))
        .await?
        .into_inner();
    match response.model_spec.and_then(|s| s.version_choice) {
        Some(model_spec::VersionChoice::Version(v)) => Ok(v),
        other => Err(format!("no version echoed: {other:?}").into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_version_hot_loads_while_requests_flow_then_old_unloads() -> TestResult {
    let base = tempfile::tempdir()?;
    let v1 = export_version(base.path(), 1)?;
    let server = Arc::new(TestServer::start(options(vec![ModelConfig::new("vit", base.path())])).await?);
    server.wait_for("vit", 1, VersionState::Available).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let body = json!({"instances": [b64(&image("chelsea.jpg")?)]});
    let load = {
        let (server, stop, sent, failed) = (server.clone(), stop.clone(), sent.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = matches!(server.post("/v1/models/vit:predict", &body).await, Ok((200, _)));
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    publish_copy(&v1, base.path(), 2)?;
    server.wait_for("vit", 2, VersionState::Available).await?;
    server.wait_for("vit", 1, VersionState::End).await?;
    assert_eq!(served_version(&server, "vit", None).await?, 2);
    stop.store(true, Ordering::Relaxed);
    load.await?;
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during the version switch");

    let (status, answer) = server.get("/v1/models/vit").await?;
    assert_eq!(status, 200);
    let states: Vec<(String, String)> = answer["model_version_status"]
        .as_array()
        .ok_or("no list")?
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap_or_default().to_owned(),
                v["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(states, [("2".into(), "AVAILABLE".into()), ("1".into(), "END".into())]);

    // Deleting the serving version unloads it and the remaining one comes back under latest-1.
    publish_copy(&v1, base.path(), 3)?;
    server.wait_for("vit", 3, VersionState::Available).await?;
    std::fs::remove_dir_all(base.path().join("3"))?;
    server.wait_for("vit", 3, VersionState::End).await?;
    server.wait_for("vit", 2, VersionState::Available).await?;
    assert_eq!(served_version(&server, "vit", None).await?, 2);
    Arc::try_unwrap(server).map_err(|_| "server still shared")?.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_new_version_is_reported_and_old_keeps_serving() -> TestResult {
    let Fixture { base, dir: v1, server } = serve_fixture(1, |_| {}).await?;

    // A copy whose graph has one flipped byte: the digest check refuses it.
    let staging = tempfile::tempdir()?;
    let broken = publish_copy(&v1, staging.path(), 2)?;
    let graph = broken.join(export::GRAPH_FILE);
    let mut bytes = std::fs::read(&graph)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&graph, bytes)?;
    publish_copy(&broken, base.path(), 2)?;

    server.wait_for("vit", 2, VersionState::End).await?;
    let (status, answer) = server.get("/v1/models/vit/versions/2").await?;
    assert_eq!(status, 200);
    let version = &answer["model_version_status"][0];
    assert_eq!(version["state"], "END");
    assert_eq!(version["status"]["error_code"], "DATA_LOSS");
    assert!(
        version["status"]["error_message"].as_str().is_some_and(|m| m.contains("is corrupt")),
        "{answer}"
    );
    assert_eq!(served_version(&server, "vit", None).await?, 1);
    let (status, _) =
        server.post("/v1/models/vit:predict", &json!({"instances": [b64(&image("rocket.jpg")?)]})).await?;
    assert_eq!(status, 200);
    assert!(server.server.is_ready());
    server.server.shutdown().await;
    Ok(())
}

/// Waits until the status of `vit` version 1 satisfies `done` and returns it.
async fn wait_for_status(
    server: &TestServer,
    done: impl Fn(&VersionStatus) -> bool,
) -> TestResult<VersionStatus> {
    let started = Instant::now();
    loop {
        let status = server.server.model_status("vit");
        if let Some(found) = status.iter().find(|s| s.version == 1 && done(s)) {
            return Ok(found.clone());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("version 1 never reached the awaited status: {status:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until version 1 reports no error again, and checks it is AVAILABLE with an empty message.
async fn wait_until_recovered(server: &TestServer) -> TestResult {
    let status = wait_for_status(server, |s| s.error_code == tonic::Code::Ok).await?;
    assert_eq!((status.state, status.error_message.as_str()), (VersionState::Available, ""));
    Ok(())
}

/// The label a REST predict of `bytes` on the latest version answers.
async fn served_label(server: &TestServer, bytes: &[u8]) -> TestResult<String> {
    let (status, answer) = server.post("/v1/models/vit:predict", &json!({"instances": [b64(bytes)]})).await?;
    assert_eq!(status, 200, "{answer}");
    Ok(answer["predictions"][0]["label"].as_str().ok_or(format!("no label: {answer}"))?.to_owned())
}

/// Checks that version 1, faulty, is AVAILABLE with `code` in the REST status, the server stays ready,
/// and a predict of `bytes` still answers `label`.
async fn assert_still_serving(server: &TestServer, code: &str, bytes: &[u8], label: &str) -> TestResult {
    let (status, answer) = server.get("/v1/models/vit/versions/1").await?;
    assert_eq!(status, 200);
    assert_eq!(answer["model_version_status"][0]["state"], "AVAILABLE", "{answer}");
    assert_eq!(answer["model_version_status"][0]["status"]["error_code"], code, "{answer}");
    assert!(server.server.is_ready());
    assert_eq!(served_label(server, bytes).await?, label);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_version_corrupted_on_disk_reports_data_loss_and_keeps_serving() -> TestResult {
    let Fixture { base: _base, dir, server } = serve_fixture(1, |_| {}).await?;
    let rocket = image("rocket.jpg")?;
    let expected = reference(&dir, &rocket)?.label;
    let graph = dir.join(export::GRAPH_FILE);
    let original = std::fs::read(&graph)?;

    // Rewritten with the same bytes: the changed stamp makes the watcher hash again, and it verifies.
    std::fs::write(&graph, &original)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = server.server.model_status("vit");
    assert_eq!(
        status.iter().map(|s| (s.version, s.state, s.error_code)).collect::<Vec<_>>(),
        [(1, VersionState::Available, tonic::Code::Ok)]
    );

    let mut corrupted = original.clone();
    let middle = corrupted.len() / 2;
    corrupted[middle] ^= 0x10;
    std::fs::write(&graph, &corrupted)?;
    let status = wait_for_status(&server, |s| s.error_code == tonic::Code::DataLoss).await?;
    assert_eq!(status.state, VersionState::Available);
    let corrupt = format!("`{}` is corrupt", graph.display());
    assert!(status.error_message.contains(&corrupt), "{status:?}");
    assert!(status.error_message.ends_with("serving the copy verified at load"), "{status:?}");
    assert_still_serving(&server, "DATA_LOSS", &rocket, &expected).await?;

    // Restored: it verifies again and the report clears.
    std::fs::write(&graph, &original)?;
    wait_until_recovered(&server).await?;
    assert_eq!(served_label(&server, &rocket).await?, expected);

    // Replaced in place by another valid artifact (the same checkpoint exported with another resize
    // mode): it verifies, but it is not what is served, and that is reported too.
    let staging = tempfile::tempdir()?;
    let request = export::ExportRequest {
        checkpoint: support::fixtures().join("models/tiny-vit"),
        base: staging.path().to_owned(),
        version: Some(1),
        resize: artifact::ResizeMode::Tf,
        jpeg_draft: false,
        precision: export::Precision::F32,
        accuracy_images: vec![],
        min_top1_agreement: export::MIN_TOP1_AGREEMENT,
    };
    let other = export::export(&request, &runtime::NoProgress)?.version_dir;
    for name in [export::GRAPH_FILE, artifact::MANIFEST_FILE, artifact::MANIFEST_DIGEST_FILE] {
        std::fs::copy(other.join(name), dir.join(name))?;
    }
    let replaced = format!("`{}` was replaced in place by a different artifact", dir.display());
    let status = wait_for_status(&server, |s| s.error_message.starts_with(&replaced)).await?;
    assert_eq!(status.error_code, tonic::Code::DataLoss, "{status:?}");
    assert_still_serving(&server, "DATA_LOSS", &rocket, &expected).await?;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlistable_base_path_reports_unavailable_until_it_comes_back() -> TestResult {
    let root = tempfile::tempdir()?;
    let base = root.path().join("vit");
    let dir = export_version(&base, 1)?;
    let rocket = image("rocket.jpg")?;
    let expected = reference(&dir, &rocket)?.label;
    let server = TestServer::start(options(vec![ModelConfig::new("vit", &base)])).await?;
    server.wait_for("vit", 1, VersionState::Available).await?;

    let moved = root.path().join("moved");
    std::fs::rename(&base, &moved)?;
    let status = wait_for_status(&server, |s| s.error_code == tonic::Code::Unavailable).await?;
    assert_eq!(status.state, VersionState::Available);
    let base_text = base.display().to_string();
    let prefix = format!("base path {base_text} cannot be listed: cannot list directory `{base_text}`: ");
    assert!(status.error_message.starts_with(&prefix), "{status:?}");
    assert!(status.error_message.ends_with("; serving versions loaded before"), "{status:?}");
    assert_still_serving(&server, "UNAVAILABLE", &rocket, &expected).await?;

    std::fs::rename(&moved, &base)?;
    wait_until_recovered(&server).await?;
    assert_eq!(served_version(&server, "vit", None).await?, 1);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_serves_several_models_with_policies_and_labels() -> TestResult {
    let root = tempfile::tempdir()?;
    let (vit, other) = (root.path().join("vit"), root.path().join("other"));
    std::fs::create_dir_all(&other)?;
    let v1 = export_version(&vit, 1)?;
    publish_copy(&v1, &vit, 2)?;
    publish_copy(&v1, &other, 7)?;
    let config = root.path().join("models.config");
    std::fs::write(
        &config,
        format!(
            "model_config_list {{\n  config {{\n    name: 'vit'\n    base_path: '{}'\n    model_platform: 'tensorflow'\n    \
             model_version_policy {{ all {{}} }}\n    version_labels {{ key: 'stable' value: 1 }}\n    \
             version_labels {{ key: 'canary' value: 2 }}\n  }}\n  config {{ name: 'other' base_path: '{}' }}\n}}\n",
            vit.display(),
            other.display()
        ),
    )?;
    let server = TestServer::start(options(read_model_config(&config)?)).await?;
    for (model, version) in [("vit", 1), ("vit", 2), ("other", 7)] {
        server.wait_for(model, version, VersionState::Available).await?;
    }
    assert_eq!(served_version(&server, "vit", None).await?, 2);
    assert_eq!(served_version(&server, "vit", Some(1)).await?, 1);
    assert_eq!(served_version(&server, "other", None).await?, 7);
    let mut client = server.grpc_client().await?;
    let input = b64(&image("rocket.jpg")?);
    let mut request = predict_request("vit", None, &[input.as_bytes()]);
    request.model_spec.as_mut().ok_or("no spec")?.version_choice =
        Some(model_spec::VersionChoice::VersionLabel("stable".into()));
    let response = client.predict(request).await?.into_inner();
    assert_eq!(
        response.model_spec.and_then(|s| s.version_choice),
        Some(model_spec::VersionChoice::Version(1))
    );

    let body = json!({"instances": [input]});
    for path in [
        "/v1/models/vit/labels/canary:predict",
        "/v1/models/vit/versions/1:predict",
        "/v1/models/other:predict",
    ] {
        let (status, answer) = server.post(path, &body).await?;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    let (status, answer) = server.get("/v1/models/vit/labels/stable").await?;
    assert_eq!((status, answer["model_version_status"][0]["version"].clone()), (200, json!("1")));
    let (status, answer) = server.get("/v1/models/vit").await?;
    assert_eq!((status, answer["model_version_status"].as_array().map(Vec::len)), (200, Some(2)));
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests() -> TestResult {
    let Fixture { base: _base, dir: _dir, server } = serve_fixture(1, |_| {}).await?;
    let body = json!({"instances": vec![b64(&image("large-2400x2093.jpg")?); 6]});
    let request = server.http.post(format!("{}/v1/models/vit:predict", server.rest)).json(&body).send();
    let in_flight = tokio::spawn(request);
    // Let the request reach the batch thread, then stop the server while it decodes.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server.server.shutdown().await;
    let response = in_flight.await??;
    assert_eq!(response.status().as_u16(), 200);
    let answer: serde_json::Value = response.json().await?;
    assert_eq!(answer["predictions"].as_array().map(Vec::len), Some(6));
    Ok(())
}

fn config_text(models: &[(&str, &Path, &str)]) -> String {
    let configs: String = models
        .iter()
        .map(|(name, base, extra)| {
            format!("  config {{ name: '{name}' base_path: '{}' {extra} }}\n", base.display())
        })
        .collect();
    format!("model_config_list {{\n{configs}}}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_config_over_grpc_adds_changes_and_removes_models() -> TestResult {
    let root = tempfile::tempdir()?;
    let (vit, other) = (root.path().join("vit"), root.path().join("other"));
    let v1 = export_version(&vit, 1)?;
    publish_copy(&v1, &vit, 2)?;
    std::fs::create_dir_all(&other)?;
    publish_copy(&v1, &other, 4)?;
    let mut options = options(vec![ModelConfig::new("vit", &vit)]);
    options.enable_model_management = true;
    let server = TestServer::start(options).await?;
    server.wait_for("vit", 2, VersionState::Available).await?;

    let list = |configs: Vec<ModelConfigProto>| ReloadConfigRequest {
        config: Some(ModelServerConfig {
            config: Some(model_server_config::Config::ModelConfigList(ModelConfigList { config: configs })),
        }),
        metric_names: vec![],
    };
    let vit_all = ModelConfigProto {
        name: "vit".into(),
        base_path: vit.display().to_string(),
        model_platform: "tensorflow".into(),
        model_version_policy: Some(ServableVersionPolicy {
            policy_choice: Some(PolicyChoice::All(Default::default())),
        }),
        version_labels: [("stable".to_owned(), 1)].into(),
    };
    let other_config = ModelConfigProto {
        name: "other".into(),
        base_path: other.display().to_string(),
        ..Default::default()
    };
    let mut models = ModelServiceClient::connect(server.grpc.clone()).await?;
    let response =
        models.handle_reload_config_request(list(vec![vit_all, other_config.clone()])).await?.into_inner();
    assert_eq!(response.status.map(|s| s.error_code), Some(0));
    // Version 1 comes back under the `all` policy, the label resolves to it, and the new model loads.
    server.wait_for("vit", 1, VersionState::Available).await?;
    server.wait_for("other", 4, VersionState::Available).await?;
    let (status, answer) = server.get("/v1/models/vit/labels/stable").await?;
    assert_eq!((status, answer["model_version_status"][0]["state"].clone()), (200, json!("AVAILABLE")));
    assert_eq!(served_version(&server, "vit", Some(2)).await?, 2);

    // Dropping `vit` from the config unloads it; `other` keeps serving.
    models.handle_reload_config_request(list(vec![other_config])).await?;
    let (status, answer) = server.get("/v1/models/vit").await?;
    assert_eq!((status, answer), (404, json!({"error": "Could not find any versions of model vit"})));
    assert_eq!(served_version(&server, "other", None).await?, 4);
    assert!(server.server.is_ready());

    let bad = ReloadConfigRequest { config: None, metric_names: vec![] };
    let status = models.handle_reload_config_request(bad).await.err().ok_or("accepted")?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_config_file_is_reread_when_polling_is_on() -> TestResult {
    let root = tempfile::tempdir()?;
    let (vit, other) = (root.path().join("vit"), root.path().join("other"));
    let v1 = export_version(&vit, 1)?;
    std::fs::create_dir_all(&other)?;
    publish_copy(&v1, &other, 3)?;
    let file = root.path().join("models.config");
    std::fs::write(&file, config_text(&[("vit", &vit, "")]))?;
    let mut options = options(read_model_config(&file)?);
    options.config_file = Some(file.clone());
    options.config_file_poll_interval = std::time::Duration::from_millis(50);
    let server = TestServer::start(options).await?;
    server.wait_for("vit", 1, VersionState::Available).await?;
    // A broken file is skipped; the models keep serving.
    std::fs::write(&file, "model_config_list {")?;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(served_version(&server, "vit", None).await?, 1);
    std::fs::write(&file, config_text(&[("vit", &vit, ""), ("other", &other, "")]))?;
    server.wait_for("other", 3, VersionState::Available).await?;
    assert_eq!(served_version(&server, "other", None).await?, 3);
    server.server.shutdown().await;
    Ok(())
}
