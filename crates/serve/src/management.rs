//! Who may change the served model set over gRPC (`ModelService/HandleReloadConfigRequest`).
//!
//! TF Serving accepts any reload from anyone who reaches its gRPC port: one request naming `/etc` as a
//! base path unloads every served model. kiln refuses reloads unless the operator passes
//! `--enable_model_management`, and then only for base paths under `--model_root` (when given), after the
//! same checks as a `--model_config_file` ([`check_models`]). A refused reload changes nothing. The root
//! is a local directory, so with `--model_root` a reload cannot name an object-store URL either: which
//! buckets a server may read is the operator's choice, made in the config file or on the command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, ModelConfig, ModelFields, PolicyFields, check_models};
use crate::error::ServeError;
use crate::proto::tensorflow::serving::file_system_storage_path_source_config::servable_version_policy::PolicyChoice;
use crate::proto::tensorflow::serving::{ModelServerConfig, model_server_config};
use crate::source::BasePath;

/// Whether reloads are allowed, and where their base paths may point.
#[derive(Debug, Clone)]
pub(crate) struct ModelManagement {
    enabled: bool,
    /// `--model_root`, canonical (symlinks resolved).
    root: Option<PathBuf>,
}

impl ModelManagement {
    /// Management as the flags ask; `root` must be an existing directory.
    pub(crate) fn new(enabled: bool, root: Option<&Path>) -> Result<ModelManagement, ConfigError> {
        let root = root
            .map(|root| {
                let canonical = root.canonicalize().map_err(|e| {
                    ConfigError::Flags(format!("--model_root `{}` cannot be resolved: {e}", root.display()))
                })?;
                if !canonical.is_dir() {
                    return Err(ConfigError::Flags(format!(
                        "--model_root `{}` is not a directory",
                        root.display()
                    )));
                }
                Ok(canonical)
            })
            .transpose()?;
        if enabled && root.is_none() {
            tracing::warn!(
                "model management is on without --model_root: HandleReloadConfigRequest may name any \
                 directory this process can read"
            );
        }
        Ok(ModelManagement { enabled, root })
    }

    /// The model set a reload request asks for, or why it is refused. `peer` is only for the log.
    pub(crate) fn reload_configs(
        &self,
        config: Option<ModelServerConfig>,
        peer: Option<SocketAddr>,
    ) -> Result<Vec<ModelConfig>, ServeError> {
        let peer = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        if !self.enabled {
            tracing::warn!(%peer, "refused HandleReloadConfigRequest: model management is off");
            return Err(ServeError::PermissionDenied(
                "model management is disabled on this server: HandleReloadConfigRequest is refused; start \
                 kiln serve with --enable_model_management (and --model_root) to allow it"
                    .into(),
            ));
        }
        let checked = self.checked_configs(config);
        match &checked {
            Ok(models) => {
                let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
                tracing::info!(%peer, models = ?names, "HandleReloadConfigRequest accepted");
            }
            Err(error) => tracing::warn!(%peer, "refused HandleReloadConfigRequest: {}", error.message()),
        }
        checked
    }

    fn checked_configs(&self, config: Option<ModelServerConfig>) -> Result<Vec<ModelConfig>, ServeError> {
        let invalid =
            |reason: String| ServeError::InvalidArgument(format!("HandleReloadConfigRequest: {reason}"));
        let list = match config.and_then(|c| c.config) {
            Some(model_server_config::Config::ModelConfigList(list)) => list,
            Some(model_server_config::Config::CustomModelConfig(_)) => {
                return Err(invalid(
                    "custom_model_config is not supported by kiln; send a model_config_list".into(),
                ));
            }
            None => return Err(invalid("config has no model_config_list".into())),
        };
        let fields = list
            .config
            .into_iter()
            .enumerate()
            .map(|(index, config)| {
                let version = |v: i64| {
                    u64::try_from(v).map_err(|_| invalid(format!("config[{index}]: version {v} is negative")))
                };
                let policy = match config.model_version_policy.and_then(|p| p.policy_choice) {
                    None => None,
                    Some(PolicyChoice::Latest(latest)) => {
                        Some(PolicyFields::Latest(latest.num_versions.into()))
                    }
                    Some(PolicyChoice::All(_)) => Some(PolicyFields::All),
                    Some(PolicyChoice::Specific(specific)) => Some(PolicyFields::Specific(
                        specific.versions.into_iter().map(version).collect::<Result<_, _>>()?,
                    )),
                };
                let labels = config
                    .version_labels
                    .into_iter()
                    .map(|(label, v)| Ok((label, version(v)?)))
                    .collect::<Result<_, ServeError>>()?;
                Ok(ModelFields {
                    name: config.name,
                    base_path: config.base_path,
                    // proto3 cannot tell an empty string from an unset one.
                    platform: Some(config.model_platform).filter(|p| !p.is_empty()),
                    policy,
                    labels,
                })
            })
            .collect::<Result<Vec<_>, ServeError>>()?;
        let mut models = check_models(fields).map_err(|error| match error.model {
            Some(index) => invalid(format!("config[{index}]: field `{}`: {}", error.field, error.reason)),
            None => invalid(format!("field `{}`: {}", error.field, error.reason)),
        })?;
        if let Some(root) = &self.root {
            for model in &mut models {
                model.base_path = confined(root, &model.name, &model.base_path)?.into();
            }
        }
        Ok(models)
    }
}

/// `base_path` resolved (symlinks and `..` followed) if it is a local path under `root`, else
/// PERMISSION_DENIED. The resolved path is what gets served, so a symlink swapped later cannot lead the
/// watcher out.
fn confined(root: &Path, model: &str, base: &BasePath) -> Result<PathBuf, ServeError> {
    let denied = |why: String| {
        ServeError::PermissionDenied(format!(
            "HandleReloadConfigRequest: model `{model}`: base_path `{base}` {why}; reloads may only name \
             directories under --model_root `{}`",
            root.display()
        ))
    };
    let Some(base_path) = base.as_local() else {
        return Err(denied("is an object-store URL".into()));
    };
    if !base_path.is_absolute() {
        return Err(denied("is not an absolute path".into()));
    }
    let resolved = base_path.canonicalize().map_err(|e| denied(format!("cannot be resolved ({e})")))?;
    if !resolved.starts_with(root) {
        return Err(denied(format!("resolves to `{}`, outside the root", resolved.display())));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tensorflow::serving::{
        ModelConfig as ModelConfigProto, ModelConfigList, file_system_storage_path_source_config,
    };

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn request(configs: Vec<ModelConfigProto>) -> Option<ModelServerConfig> {
        Some(ModelServerConfig {
            config: Some(model_server_config::Config::ModelConfigList(ModelConfigList { config: configs })),
        })
    }

    fn model(name: &str, base_path: &Path) -> ModelConfigProto {
        ModelConfigProto {
            name: name.into(),
            base_path: base_path.display().to_string(),
            model_platform: "kiln".into(),
            ..Default::default()
        }
    }

    fn failure(result: Result<Vec<ModelConfig>, ServeError>) -> Option<(tonic::Code, String)> {
        result.err().map(|e| (e.code(), e.message().to_owned()))
    }

    #[test]
    fn reloads_are_refused_unless_enabled() -> TestResult {
        let dir = tempfile::tempdir()?;
        let off = ModelManagement::new(false, None)?;
        let (code, message) =
            failure(off.reload_configs(request(vec![model("vit", dir.path())]), None)).ok_or("accepted")?;
        assert_eq!(code, tonic::Code::PermissionDenied);
        assert!(message.contains("--enable_model_management"), "{message}");
        let on = ModelManagement::new(true, None)?;
        assert_eq!(on.reload_configs(request(vec![model("vit", dir.path())]), None)?.len(), 1);
        // Without --model_root, an object-store URL is a base path like any other.
        let url = on.reload_configs(request(vec![model("vit", Path::new("gs://bucket/vit"))]), None)?;
        assert_eq!(url[0].base_path.to_string(), "gs://bucket/vit");
        Ok(())
    }

    #[test]
    fn base_paths_must_resolve_under_the_root() -> TestResult {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("models");
        std::fs::create_dir_all(root.join("vit"))?;
        std::fs::create_dir_all(dir.path().join("outside"))?;
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("link"))?;
        let management = ModelManagement::new(true, Some(&root))?;
        let served = management.reload_configs(request(vec![model("vit", &root.join("vit"))]), None)?;
        assert_eq!(served[0].base_path.as_local(), Some(root.canonicalize()?.join("vit").as_path()));
        for (path, why) in [
            (PathBuf::from("/etc"), "outside the root"),
            (root.join("../outside"), "outside the root"),
            (root.join("link"), "outside the root"),
            (root.join("missing"), "cannot be resolved"),
            (PathBuf::from("models/vit"), "is not an absolute path"),
            (PathBuf::from("s3://bucket/models/vit"), "is an object-store URL"),
        ] {
            let (code, message) =
                failure(management.reload_configs(request(vec![model("evil", &path)]), None))
                    .ok_or_else(|| format!("{} accepted", path.display()))?;
            assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
            assert!(message.contains(why) && message.contains("--model_root"), "{message}");
        }
        assert!(ModelManagement::new(true, Some(&root.join("missing"))).is_err());
        Ok(())
    }

    /// The reload and the config file share [`check_models`]: an empty `specific` list, an empty model
    /// list and an unknown platform are refused by both.
    #[test]
    fn reloads_are_checked_like_config_files() -> TestResult {
        use file_system_storage_path_source_config::ServableVersionPolicy;
        use file_system_storage_path_source_config::servable_version_policy::Specific;
        let dir = tempfile::tempdir()?;
        let management = ModelManagement::new(true, None)?;
        let mut empty_specific = model("vit", dir.path());
        empty_specific.model_version_policy = Some(ServableVersionPolicy {
            policy_choice: Some(PolicyChoice::Specific(Specific { versions: vec![] })),
        });
        let mut other_platform = model("vit", dir.path());
        other_platform.model_platform = "onnx".into();
        for (configs, expected) in [
            (vec![empty_specific], "config[0]: field `specific`: lists no versions"),
            (vec![], "field `model_config_list`: no model is configured"),
            (vec![other_platform], "config[0]: field `model_platform`: `onnx` is not served by kiln"),
            (
                vec![model("a", dir.path()), model("a", dir.path())],
                "config[1]: field `name`: model `a` is configured twice",
            ),
        ] {
            let (code, message) =
                failure(management.reload_configs(request(configs), None)).ok_or("accepted")?;
            assert_eq!(code, tonic::Code::InvalidArgument);
            assert!(message.contains(expected), "{message}");
        }
        let file = dir.path().join("models.config");
        std::fs::write(
            &file,
            "model_config_list { config { name: 'vit' base_path: '/m' model_version_policy { specific {} } } }",
        )?;
        let message = crate::config::read_model_config(&file).err().ok_or("accepted")?.to_string();
        assert!(message.contains("field `specific`: lists no versions"), "{message}");
        Ok(())
    }
}
