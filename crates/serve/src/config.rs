//! TF Serving's configuration files, read into typed structs.
//!
//! `--model_config_file` (`ModelServerConfig`), `--batching_parameters_file` (`BatchingParameters`) and
//! `--monitoring_config_file` (`MonitoringConfig`) keep TF Serving's text format so existing files work
//! unchanged. Fields kiln does not act on are rejected by name rather than silently ignored, except
//! `model_platform`, which every TF config carries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::source::BasePath;
use crate::textproto::{self, TextField, TextMessage, TextValue};

/// A configuration file could not be read or says something kiln cannot do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file `{}`", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid protobuf text format.
    #[error("`{}` line {line} column {column}: {reason}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What was expected.
        reason: String,
    },
    /// A field is unknown, has the wrong type, or breaks a rule.
    #[error("`{}` line {line}: field `{field}`: {reason}", path.display())]
    Field {
        /// The file.
        path: PathBuf,
        /// 1-based line of the field (0 when the field is missing).
        line: usize,
        /// The field name.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Flags contradict each other or name nothing to serve.
    #[error("{0}")]
    Flags(String),
}

/// One model to serve: TF Serving's `ModelConfig`, the fields kiln reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Model name clients put in URLs and `ModelSpec.name`.
    pub name: String,
    /// Directory or object-store prefix whose integer-named children are versions.
    pub base_path: BasePath,
    /// Which versions to serve.
    pub policy: VersionPolicy,
    /// Version labels (`stable` -> 42) clients may use instead of numbers.
    pub labels: BTreeMap<String, u64>,
}

impl ModelConfig {
    /// A model served with TF's defaults: latest version only, no labels (`--model_name` /
    /// `--model_base_path` mode).
    pub fn new(name: impl Into<String>, base_path: impl Into<BasePath>) -> Self {
        ModelConfig {
            name: name.into(),
            base_path: base_path.into(),
            policy: VersionPolicy::default(),
            labels: BTreeMap::new(),
        }
    }
}

/// TF Serving's `ServableVersionPolicy`: which of the versions on disk are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The highest `n` versions (TF's default is 1).
    Latest(usize),
    /// Every version on disk.
    All,
    /// Exactly these versions, when present.
    Specific(BTreeSet<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions to serve out of `found` (ascending), ascending.
    pub fn select(&self, found: &[u64]) -> Vec<u64> {
        match self {
            VersionPolicy::Latest(n) => found[found.len().saturating_sub(*n)..].to_vec(),
            VersionPolicy::All => found.to_vec(),
            VersionPolicy::Specific(wanted) => found.iter().copied().filter(|v| wanted.contains(v)).collect(),
        }
    }
}

/// TF Serving's `BatchingParameters`: how requests to one model version are merged into batches.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchingParameters {
    /// Most instances in one batch.
    pub max_batch_size: usize,
    /// How long the first request of a batch waits for more; zero takes what is already queued.
    pub batch_timeout: Duration,
    /// Queue capacity in batches: at most `max_enqueued_batches * max_batch_size` instances wait.
    pub max_enqueued_batches: usize,
    /// Threads that decode and resize a batch's images in parallel before inference.
    pub num_batch_threads: usize,
    /// Batch sizes TF pads to; validated as TF does, but kiln runs the real size instead of padding,
    /// since a CPU graph gains nothing from fixed sizes.
    pub allowed_batch_sizes: Vec<usize>,
}

impl Default for BatchingParameters {
    /// TF's defaults when a field is unset: 1000 instances, no timeout, 10 batches queued, one thread per
    /// core.
    fn default() -> Self {
        BatchingParameters {
            max_batch_size: 1000,
            batch_timeout: Duration::ZERO,
            max_enqueued_batches: 10,
            num_batch_threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            allowed_batch_sizes: Vec::new(),
        }
    }
}

/// TF Serving's `MonitoringConfig.prometheus_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitoringConfig {
    /// Whether the REST port serves Prometheus metrics.
    pub enable: bool,
    /// The path they are served at.
    pub path: String,
}

/// TF Serving's default Prometheus path.
pub const DEFAULT_PROMETHEUS_PATH: &str = "/monitoring/prometheus/metrics";

impl Default for MonitoringConfig {
    /// Enabled at TF's default path: unlike TF Serving, kiln exports metrics without a config file.
    fn default() -> Self {
        MonitoringConfig { enable: true, path: DEFAULT_PROMETHEUS_PATH.into() }
    }
}

/// Reads a `--model_config_file`: `model_config_list { config { ... } ... }`.
pub fn read_model_config(path: &Path) -> Result<Vec<ModelConfig>, ConfigError> {
    let file = ConfigFile::read(path)?;
    file.only(&file.root, &["model_config_list"])?;
    let mut configs = Vec::new();
    for list in file.messages(&file.root, "model_config_list")? {
        file.only(list, &["config"])?;
        configs.extend(file.messages(list, "config")?);
    }
    let models = configs.iter().map(|config| file.model(config)).collect::<Result<_, _>>()?;
    check_models(models).map_err(|error| {
        let config = error.model.and_then(|index| configs.get(index));
        // The rule's own field, or the policy that holds it, or the model's first line.
        let field = config.and_then(|c| {
            let policy = error.field == "specific";
            c.fields
                .iter()
                .rfind(|f| f.name == error.field || (policy && f.name == "model_version_policy"))
                .or(c.fields.first())
        });
        file.field_error(field, error.field, error.reason)
    })
}

/// Reads a `--batching_parameters_file`; unset fields keep [`BatchingParameters::default`].
pub fn read_batching_parameters(path: &Path) -> Result<BatchingParameters, ConfigError> {
    let file = ConfigFile::read(path)?;
    let root = &file.root;
    file.only(
        root,
        &[
            "max_batch_size",
            "batch_timeout_micros",
            "max_enqueued_batches",
            "num_batch_threads",
            "thread_pool_name",
            "allowed_batch_sizes",
            "pad_variable_length_inputs",
        ],
    )?;
    let mut params = BatchingParameters::default();
    let wrapped = |name: &str| -> Result<Option<u64>, ConfigError> {
        match file.last_message(root, name)? {
            Some(message) => {
                file.only(message, &["value"])?;
                match message.fields.iter().rfind(|f| f.name == "value") {
                    Some(field) => file.number(field).map(Some),
                    None => Ok(Some(0)),
                }
            }
            None => Ok(None),
        }
    };
    let positive = |name: &str, value: Option<u64>| -> Result<Option<usize>, ConfigError> {
        match value {
            Some(0) => Err(file.field_error(
                root.fields.iter().rfind(|f| f.name == name),
                name,
                "must be positive".into(),
            )),
            Some(v) => Ok(Some(usize::try_from(v).unwrap_or(usize::MAX))),
            None => Ok(None),
        }
    };
    if let Some(v) = positive("max_batch_size", wrapped("max_batch_size")?)? {
        params.max_batch_size = v;
    }
    if let Some(v) = wrapped("batch_timeout_micros")? {
        params.batch_timeout = Duration::from_micros(v);
    }
    if let Some(v) = positive("max_enqueued_batches", wrapped("max_enqueued_batches")?)? {
        params.max_enqueued_batches = v;
    }
    if let Some(v) = positive("num_batch_threads", wrapped("num_batch_threads")?)? {
        params.num_batch_threads = v;
    }
    for field in root.fields.iter().filter(|f| f.name == "allowed_batch_sizes") {
        let size = file.number(field)?;
        if params.allowed_batch_sizes.last().is_some_and(|&last| size as usize <= last) || size == 0 {
            return Err(file.field_error(
                Some(field),
                "allowed_batch_sizes",
                "entries must be positive and increasing".into(),
            ));
        }
        params.allowed_batch_sizes.push(size as usize);
    }
    if let Some(&last) = params.allowed_batch_sizes.last()
        && last != params.max_batch_size
    {
        let field = root.fields.iter().rfind(|f| f.name == "allowed_batch_sizes");
        return Err(file.field_error(
            field,
            "allowed_batch_sizes",
            format!(
                "Last entry in allowed_batch_sizes must match max_batch_size; last entry was {last}; expected {}",
                params.max_batch_size
            ),
        ));
    }
    Ok(params)
}

/// Reads a `--monitoring_config_file`: `prometheus_config { enable: true path: "..." }`.
pub fn read_monitoring_config(path: &Path) -> Result<MonitoringConfig, ConfigError> {
    let file = ConfigFile::read(path)?;
    file.only(&file.root, &["prometheus_config"])?;
    // A file without prometheus_config disables it, as in TF Serving.
    let mut config = MonitoringConfig { enable: false, path: DEFAULT_PROMETHEUS_PATH.into() };
    if let Some(prometheus) = file.last_message(&file.root, "prometheus_config")? {
        file.only(prometheus, &["enable", "path"])?;
        for field in &prometheus.fields {
            match field.name.as_str() {
                "enable" => config.enable = file.boolean(field)?,
                _ => {
                    let path = file.string(field)?;
                    if !path.is_empty() {
                        if !path.starts_with('/') {
                            return Err(file.field_error(
                                Some(field),
                                "path",
                                format!("`{path}` must start with `/`"),
                            ));
                        }
                        config.path = path;
                    }
                }
            }
        }
    }
    Ok(config)
}

/// A parsed file and its path, for errors that name both.
pub(crate) struct ConfigFile {
    path: PathBuf,
    pub(crate) root: TextMessage,
}

impl ConfigFile {
    pub(crate) fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let root = textproto::parse(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            line: e.line,
            column: e.column,
            reason: e.reason,
        })?;
        Ok(ConfigFile { path: path.to_owned(), root })
    }

    pub(crate) fn field_error(&self, field: Option<&TextField>, name: &str, reason: String) -> ConfigError {
        ConfigError::Field {
            path: self.path.clone(),
            line: field.map_or(0, |f| f.line),
            field: name.into(),
            reason,
        }
    }

    /// Rejects fields outside `known`, naming the first.
    pub(crate) fn only(&self, message: &TextMessage, known: &[&str]) -> Result<(), ConfigError> {
        match message.fields.iter().find(|f| !known.contains(&f.name.as_str())) {
            Some(field) => Err(self.field_error(
                Some(field),
                &field.name,
                format!("unknown or unsupported field; kiln reads {}", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    fn messages<'m>(
        &self,
        message: &'m TextMessage,
        name: &str,
    ) -> Result<Vec<&'m TextMessage>, ConfigError> {
        message
            .fields
            .iter()
            .filter(|f| f.name == name)
            .map(|f| match &f.value {
                TextValue::Message(m) => Ok(m),
                other => Err(self.field_error(Some(f), name, format!("expected a message, found {other}"))),
            })
            .collect()
    }

    /// The last occurrence of a singular message field (text format lets a later value win).
    fn last_message<'m>(
        &self,
        message: &'m TextMessage,
        name: &str,
    ) -> Result<Option<&'m TextMessage>, ConfigError> {
        Ok(self.messages(message, name)?.pop())
    }

    pub(crate) fn string(&self, field: &TextField) -> Result<String, ConfigError> {
        match &field.value {
            TextValue::Str(s) => Ok(s.clone()),
            other => Err(self.field_error(
                Some(field),
                &field.name,
                format!("expected a quoted string, found {other}"),
            )),
        }
    }

    fn number(&self, field: &TextField) -> Result<u64, ConfigError> {
        match &field.value {
            TextValue::Word(w) => w.parse::<u64>().map_err(|_| {
                self.field_error(
                    Some(field),
                    &field.name,
                    format!("expected a non-negative integer, found {w}"),
                )
            }),
            other => {
                Err(self.field_error(Some(field), &field.name, format!("expected an integer, found {other}")))
            }
        }
    }

    pub(crate) fn boolean(&self, field: &TextField) -> Result<bool, ConfigError> {
        match &field.value {
            TextValue::Word(w) if w == "true" || w == "1" => Ok(true),
            TextValue::Word(w) if w == "false" || w == "0" => Ok(false),
            other => Err(self.field_error(
                Some(field),
                &field.name,
                format!("expected true or false, found {other}"),
            )),
        }
    }

    /// A `config { ... }` message's fields, type-checked; kiln's rules come after, in [`check_models`].
    fn model(&self, config: &TextMessage) -> Result<ModelFields, ConfigError> {
        self.only(
            config,
            &["name", "base_path", "model_platform", "model_version_policy", "version_labels"],
        )?;
        let mut model = ModelFields::default();
        for field in &config.fields {
            match field.name.as_str() {
                "name" => model.name = self.string(field)?,
                "base_path" => model.base_path = self.string(field)?,
                "model_platform" => model.platform = Some(self.string(field)?),
                "model_version_policy" => model.policy = self.policy(field)?,
                _ => {
                    let TextValue::Message(entry) = &field.value else {
                        return Err(self.field_error(
                            Some(field),
                            "version_labels",
                            "expected { key: ... value: ... }".into(),
                        ));
                    };
                    self.only(entry, &["key", "value"])?;
                    let key =
                        entry.fields.iter().rfind(|f| f.name == "key").map(|f| self.string(f)).transpose()?;
                    let value = entry
                        .fields
                        .iter()
                        .rfind(|f| f.name == "value")
                        .map(|f| self.number(f))
                        .transpose()?;
                    let (Some(key), Some(value)) = (key, value) else {
                        return Err(self.field_error(Some(field), "version_labels", LABEL_RULE.into()));
                    };
                    model.labels.push((key, value));
                }
            }
        }
        Ok(model)
    }

    fn policy(&self, field: &TextField) -> Result<Option<PolicyFields>, ConfigError> {
        let TextValue::Message(policy) = &field.value else {
            return Err(self.field_error(Some(field), "model_version_policy", "expected a message".into()));
        };
        self.only(policy, &["latest", "all", "specific"])?;
        let Some(choice) = policy.fields.last() else {
            return Ok(None);
        };
        let TextValue::Message(inner) = &choice.value else {
            return Err(self.field_error(Some(choice), &choice.name, "expected a message".into()));
        };
        match choice.name.as_str() {
            "latest" => {
                self.only(inner, &["num_versions"])?;
                let n = inner
                    .fields
                    .iter()
                    .rfind(|f| f.name == "num_versions")
                    .map(|f| self.number(f))
                    .transpose()?;
                Ok(Some(PolicyFields::Latest(n.unwrap_or(0))))
            }
            "all" => {
                self.only(inner, &[])?;
                Ok(Some(PolicyFields::All))
            }
            _ => {
                self.only(inner, &["versions"])?;
                let versions = inner.fields.iter().map(|f| self.number(f)).collect::<Result<_, _>>()?;
                Ok(Some(PolicyFields::Specific(versions)))
            }
        }
    }
}

/// What a `version_labels` entry needs.
const LABEL_RULE: &str = "needs a non-empty key and a value";

/// One model's settings as its source spelled them, before kiln's rules are applied. A config file and
/// a gRPC `HandleReloadConfigRequest` both fill these in and go through [`check_models`], so neither
/// accepts a config the other refuses.
#[derive(Debug, Default)]
pub(crate) struct ModelFields {
    pub(crate) name: String,
    pub(crate) base_path: String,
    /// `model_platform`; `None` when unset.
    pub(crate) platform: Option<String>,
    /// `model_version_policy`'s choice; `None` when unset.
    pub(crate) policy: Option<PolicyFields>,
    /// `version_labels` entries in order: a later key replaces an earlier one.
    pub(crate) labels: Vec<(String, u64)>,
}

/// A `model_version_policy` choice as given.
#[derive(Debug)]
pub(crate) enum PolicyFields {
    /// `latest { num_versions }`: 0 means TF's default, 1.
    Latest(u64),
    /// `all {}`.
    All,
    /// `specific { versions }`.
    Specific(Vec<u64>),
}

/// A rule a model list broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelRuleError {
    /// Which model, by position in the list; `None` when the list itself is wrong.
    pub(crate) model: Option<usize>,
    /// The field that breaks the rule.
    pub(crate) field: &'static str,
    pub(crate) reason: String,
}

/// kiln's rules for a model list, wherever it came from: at least one model, names unique, each with a
/// name and base path, a platform kiln serves, a `specific` policy that lists versions, labels with keys.
pub(crate) fn check_models(models: Vec<ModelFields>) -> Result<Vec<ModelConfig>, ModelRuleError> {
    if models.is_empty() {
        return Err(ModelRuleError {
            model: None,
            field: "model_config_list",
            reason: "no model is configured".into(),
        });
    }
    let mut checked: Vec<ModelConfig> = Vec::with_capacity(models.len());
    for (index, fields) in models.into_iter().enumerate() {
        let broken = |(field, reason)| ModelRuleError { model: Some(index), field, reason };
        let model = fields.check().map_err(broken)?;
        if checked.iter().any(|m| m.name == model.name) {
            return Err(broken(("name", format!("model `{}` is configured twice", model.name))));
        }
        checked.push(model);
    }
    Ok(checked)
}

impl ModelFields {
    /// One model's rules; the error names the field and says what is wrong.
    fn check(self) -> Result<ModelConfig, (&'static str, String)> {
        let ModelFields { name, base_path, platform, policy, labels } = self;
        if name.is_empty() {
            return Err(("name", "a model needs a name".into()));
        }
        if base_path.is_empty() {
            return Err(("base_path", format!("model `{name}` needs a base_path")));
        }
        let base_path: BasePath = base_path
            .parse()
            .map_err(|e: crate::source::BasePathError| ("base_path", format!("model `{name}`: {e}")))?;
        if let Some(platform) = platform
            && !["tensorflow", "kiln"].contains(&platform.as_str())
        {
            return Err((
                "model_platform",
                format!("`{platform}` is not served by kiln (use `tensorflow` or `kiln`)"),
            ));
        }
        let policy = match policy {
            None => VersionPolicy::default(),
            // num_versions 0 means the default, 1, as in TF.
            Some(PolicyFields::Latest(n)) => {
                VersionPolicy::Latest(usize::try_from(n).unwrap_or(usize::MAX).max(1))
            }
            Some(PolicyFields::All) => VersionPolicy::All,
            Some(PolicyFields::Specific(versions)) if versions.is_empty() => {
                return Err(("specific", "lists no versions".into()));
            }
            Some(PolicyFields::Specific(versions)) => VersionPolicy::Specific(versions.into_iter().collect()),
        };
        let mut checked_labels = BTreeMap::new();
        for (key, version) in labels {
            if key.is_empty() {
                return Err(("version_labels", LABEL_RULE.into()));
            }
            checked_labels.insert(key, version);
        }
        Ok(ModelConfig { name, base_path, policy, labels: checked_labels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn write(dir: &Path, text: &str) -> Result<PathBuf, std::io::Error> {
        let path = dir.join("config.pbtxt");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    #[test]
    fn reads_tf_model_config_with_policies_and_labels() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = write(
            dir.path(),
            "model_config_list {\n  config {\n    name: 'vit'\n    base_path: '/models/vit'\n    model_platform: 'tensorflow'\n\
             model_version_policy { latest { num_versions: 2 } }\n    version_labels { key: 'stable' value: 42 }\n\
             version_labels { key: 'canary' value: 43 }\n  }\n  config { name: \"b\" base_path: \"/b\" \
             model_version_policy { specific { versions: 3 versions: 1 } } }\n  config { name: 'c' base_path: '/c' model_version_policy { all {} } }\n}\n",
        )?;
        let models = read_model_config(&path)?;
        assert_eq!(models.len(), 3);
        assert_eq!(models[0].name, "vit");
        assert_eq!(models[0].base_path.as_local(), Some(Path::new("/models/vit")));
        assert_eq!(models[0].policy, VersionPolicy::Latest(2));
        assert_eq!(models[0].labels, BTreeMap::from([("canary".into(), 43), ("stable".into(), 42)]));
        assert_eq!(models[1].policy, VersionPolicy::Specific(BTreeSet::from([1, 3])));
        assert_eq!(models[2].policy, VersionPolicy::All);
        Ok(())
    }

    #[test]
    fn model_config_errors_name_line_and_field() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = write(
            dir.path(),
            "model_config_list {\n  config {\n    name: 'vit'\n    logging_config {}\n  }\n}\n",
        )?;
        let message = read_model_config(&path).err().ok_or("accepted")?.to_string();
        assert!(message.contains("line 4: field `logging_config`"), "{message}");
        let path = write(dir.path(), "model_config_list { config { name: 'vit' } }")?;
        let message = read_model_config(&path).err().ok_or("accepted")?.to_string();
        assert!(message.contains("model `vit` needs a base_path"), "{message}");
        let path = write(
            dir.path(),
            "model_config_list { config { name: 'a' base_path: '/a' } config { name: 'a' base_path: '/b' } }",
        )?;
        let message = read_model_config(&path).err().ok_or("accepted")?.to_string();
        assert!(message.contains("configured twice"), "{message}");
        Ok(())
    }

    #[test]
    fn version_policies_select_like_tf() {
        let found = [1, 2, 5, 9];
        assert_eq!(VersionPolicy::Latest(1).select(&found), [9]);
        assert_eq!(VersionPolicy::Latest(3).select(&found), [2, 5, 9]);
        assert_eq!(VersionPolicy::Latest(10).select(&found), found);
        assert_eq!(VersionPolicy::All.select(&found), found);
        assert_eq!(VersionPolicy::Specific(BTreeSet::from([5, 7])).select(&found), [5]);
        assert!(VersionPolicy::Latest(1).select(&[]).is_empty());
    }

    #[test]
    fn reads_batching_parameters_and_checks_allowed_sizes() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = write(
            dir.path(),
            "max_batch_size { value: 16 } batch_timeout_micros { value: 2000 }\nmax_enqueued_batches { value: 4 }\
             num_batch_threads { value: 2 } allowed_batch_sizes: 8 allowed_batch_sizes: 16\n",
        )?;
        let params = read_batching_parameters(&path)?;
        assert_eq!(params.max_batch_size, 16);
        assert_eq!(params.batch_timeout, Duration::from_millis(2));
        assert_eq!(params.max_enqueued_batches, 4);
        assert_eq!(params.num_batch_threads, 2);
        assert_eq!(params.allowed_batch_sizes, [8, 16]);
        let path = write(dir.path(), "max_batch_size { value: 32 } allowed_batch_sizes: [8, 16]")?;
        let message = read_batching_parameters(&path).err().ok_or("accepted")?.to_string();
        assert!(
            message.contains(
                "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 16; expected 32"
            ),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn reads_monitoring_config() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = write(dir.path(), "prometheus_config { enable: true, path: \"/metrics\" }")?;
        assert_eq!(
            read_monitoring_config(&path)?,
            MonitoringConfig { enable: true, path: "/metrics".into() }
        );
        let path = write(dir.path(), "")?;
        assert!(!read_monitoring_config(&path)?.enable);
        Ok(())
    }
}
