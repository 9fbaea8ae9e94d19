//! gRPC model management locked down: HandleReloadConfigRequest is refused unless enabled, and then
//! confined to `--model_root` and checked like a config file; a refused reload leaves the served models
//! answering.

mod support;

use std::path::Path;

use serde_json::json;
use serve::proto::tensorflow::serving::file_system_storage_path_source_config::ServableVersionPolicy;
use serve::proto::tensorflow::serving::file_system_storage_path_source_config::servable_version_policy::{
    PolicyChoice, Specific,
};
use serve::proto::tensorflow::serving::model_service_client::ModelServiceClient;
use serve::proto::tensorflow::serving::{
    ModelConfig as ModelConfigProto, ModelConfigList, ModelServerConfig, ReloadConfigRequest,
    model_server_config,
};
use serve::{ModelConfig, VersionState};
use support::{
    Fixture, TestResult, TestServer, b64, export_version, image, options, publish_copy, serve_fixture,
};

fn reload(configs: Vec<ModelConfigProto>) -> ReloadConfigRequest {
    ReloadConfigRequest {
        config: Some(ModelServerConfig {
            config: Some(model_server_config::Config::ModelConfigList(ModelConfigList { config: configs })),
        }),
        metric_names: vec![],
    }
}

fn model(name: &str, base_path: &Path) -> ModelConfigProto {
    ModelConfigProto { name: name.into(), base_path: base_path.display().to_string(), ..Default::default() }
}

/// Fails unless `vit` still answers a REST predict.
async fn vit_still_serves(server: &TestServer) -> TestResult {
    let body = json!({"instances": [{"b64": b64(&image("chelsea.jpg")?)}]});
    let (status, answer) = server.post("/v1/models/vit:predict", &body).await?;
    if status != 200 || !answer["predictions"][0]["label"].is_string() {
        return Err(format!("vit stopped serving: {status} {answer}").into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_are_denied_by_default() -> TestResult {
    let Fixture { base: _base, dir: _dir, server } = serve_fixture(1, |_| {}).await?;
    let mut models = ModelServiceClient::connect(server.grpc.clone()).await?;
    // The request of issue 11: a model `evil` at /etc, which used to unload `vit`.
    let refused = models.handle_reload_config_request(reload(vec![model("evil", Path::new("/etc"))])).await;
    let status = refused.err().ok_or("reload accepted with model management off")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("start kiln serve with --enable_model_management"),
        "{}",
        status.message()
    );
    vit_still_serves(&server).await?;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabled_reloads_stay_under_the_model_root_and_failures_keep_serving() -> TestResult {
    let root = tempfile::tempdir()?;
    let (vit, other) = (root.path().join("vit"), root.path().join("other"));
    let v1 = export_version(&vit, 1)?;
    std::fs::create_dir_all(&other)?;
    publish_copy(&v1, &other, 3)?;
    let outside = tempfile::tempdir()?;
    std::os::unix::fs::symlink(outside.path(), root.path().join("escape"))?;
    let mut options = options(vec![ModelConfig::new("vit", &vit)]);
    options.enable_model_management = true;
    options.model_root = Some(root.path().to_owned());
    let server = TestServer::start(options).await?;
    server.wait_for("vit", 1, VersionState::Available).await?;
    let mut models = ModelServiceClient::connect(server.grpc.clone()).await?;

    // Outside the root, by plain path, `..` or a symlink: refused, and vit keeps serving.
    for base in [Path::new("/etc").to_owned(), root.path().join("vit/../.."), root.path().join("escape")] {
        let request = reload(vec![model("vit", &vit), model("evil", &base)]);
        let status = models.handle_reload_config_request(request).await.err().ok_or("accepted")?;
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{}", status.message());
        assert!(
            status.message().contains("outside the root") && status.message().contains("--model_root"),
            "{}",
            status.message()
        );
        vit_still_serves(&server).await?;
    }
    // Checked like a config file: an empty `specific` list is refused by both.
    let mut empty_specific = model("vit", &vit);
    empty_specific.model_version_policy = Some(ServableVersionPolicy {
        policy_choice: Some(PolicyChoice::Specific(Specific { versions: vec![] })),
    });
    let status =
        models.handle_reload_config_request(reload(vec![empty_specific])).await.err().ok_or("accepted")?;
    assert_eq!(
        (status.code(), status.message()),
        (
            tonic::Code::InvalidArgument,
            "HandleReloadConfigRequest: config[0]: field `specific`: lists no versions"
        )
    );
    // An empty list would unload everything: refused like an empty config file.
    let status = models.handle_reload_config_request(reload(vec![])).await.err().ok_or("accepted")?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    vit_still_serves(&server).await?;
    assert!(server.server.model_status("other").is_empty());

    // Under the root: applied.
    let response =
        models.handle_reload_config_request(reload(vec![model("vit", &vit), model("other", &other)])).await?;
    assert_eq!(response.into_inner().status.map(|s| s.error_code), Some(0));
    server.wait_for("other", 3, VersionState::Available).await?;
    vit_still_serves(&server).await?;
    server.server.shutdown().await;
    Ok(())
}
