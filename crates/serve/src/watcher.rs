//! One thread per model that polls its base path and loads, warms up and unloads versions.
//!
//! The order is TF Serving's availability-preserving policy: a new version is loaded and warmed up
//! before it becomes AVAILABLE, and only then are versions outside the policy unloaded, so requests
//! always find a version. A version that fails to load is reported (END with the error) and the previous
//! one keeps serving; it is retried only when its directory changes. A deleted directory is unloaded
//! after its in-flight requests finish. Loading is blocking work, which is why this is an OS thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use runtime::{Model, RuntimeError, RuntimeOptions};

use crate::batch::{BatchOptions, BatchQueue, QueueLabels};
use crate::config::ModelConfig;
use crate::metrics::Metrics;
use crate::table::{ModelTable, ServableModel, VersionState};

/// How long an unloading version may take to finish its in-flight requests before it is dropped anyway
/// (the requests still complete: they hold the model).
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// What every watcher needs besides its model's config.
#[derive(Clone)]
pub(crate) struct WatchContext {
    pub(crate) table: Arc<ModelTable>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) batch: BatchOptions,
    pub(crate) runtime: RuntimeOptions,
    /// Zero polls once.
    pub(crate) poll_interval: Duration,
    /// Whether versions are warmed up before they become AVAILABLE.
    pub(crate) warmup: bool,
}

/// A stop flag a sleeping watcher wakes up for.
#[derive(Default)]
struct StopSignal {
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// A running watcher; [`ModelWatcher::stop`] unloads its versions and joins it.
pub(crate) struct ModelWatcher {
    config: Arc<RwLock<ModelConfig>>,
    table: Arc<ModelTable>,
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
}

impl ModelWatcher {
    /// Starts polling `config.base_path`.
    pub(crate) fn start(config: ModelConfig, context: WatchContext) -> std::io::Result<ModelWatcher> {
        context.table.add_model(&config.name, config.labels.clone());
        let table = context.table.clone();
        let stop = Arc::new(StopSignal::default());
        let signal = stop.clone();
        let name = format!("watch-{}", config.name);
        let shared = Arc::new(RwLock::new(config.clone()));
        let latest = shared.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let mut watch = Watch { config, latest, context, failed: BTreeMap::new() };
            loop {
                watch.poll();
                if watch.context.poll_interval.is_zero() {
                    // Poll-once mode: keep what was loaded until stopped.
                    let stopped = signal.stopped.lock().unwrap_or_else(PoisonError::into_inner);
                    drop(signal.wake.wait_while(stopped, |s| !*s).unwrap_or_else(PoisonError::into_inner));
                    break;
                }
                let stopped = signal.stopped.lock().unwrap_or_else(PoisonError::into_inner);
                let (stopped, _) = signal
                    .wake
                    .wait_timeout_while(stopped, watch.context.poll_interval, |s| !*s)
                    .unwrap_or_else(PoisonError::into_inner);
                if *stopped {
                    break;
                }
            }
            watch.unload_all();
        })?;
        Ok(ModelWatcher { config: shared, table, stop, thread: Some(thread) })
    }

    /// Replaces the model's base path, version policy and labels; labels apply at once, the rest from
    /// the next poll, with the same load-before-unload order as new versions.
    pub(crate) fn update(&self, config: ModelConfig) {
        self.table.add_model(&config.name, config.labels.clone());
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
    }

    /// The configuration in force.
    pub(crate) fn config(&self) -> ModelConfig {
        self.config.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Stops polling, unloads every version after its in-flight requests, and waits for that.
    pub(crate) fn stop(mut self) {
        self.signal_stop();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("model watcher panicked");
        }
    }

    fn signal_stop(&self) {
        *self.stop.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.stop.wake.notify_all();
    }
}

impl Drop for ModelWatcher {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// What identifies a version directory's content cheaply: modification times of the directory and its
/// manifest. A failed version is retried when this changes (a copy finished, a file was replaced).
type Fingerprint = (Option<SystemTime>, Option<SystemTime>);

fn fingerprint(dir: &Path) -> Fingerprint {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (mtime(dir), mtime(&dir.join(artifact::MANIFEST_FILE)))
}

struct Watch {
    /// The configuration this poll works with, refreshed from `latest` at the start of each poll.
    config: ModelConfig,
    latest: Arc<RwLock<ModelConfig>>,
    context: WatchContext,
    /// Versions that failed to load, with the directory fingerprint they failed with.
    failed: BTreeMap<u64, Fingerprint>,
}

impl Watch {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn poll(&mut self) {
        self.config = self.latest.read().unwrap_or_else(PoisonError::into_inner).clone();
        let base = &self.config.base_path;
        let found = match artifact::list_versions(base) {
            Ok(found) => found,
            Err(error) => {
                // A missing or unreadable base keeps what is loaded: a transient mount problem should not
                // take the model down.
                tracing::warn!(model = self.name(), "cannot list versions: {error}");
                return;
            }
        };
        if found.is_empty() {
            tracing::warn!(
                "No versions of servable {} found under base path {}. Did you forget to name your leaf directory as a number (eg. '/1/')?",
                self.name(),
                base.display()
            );
        }
        let dirs: BTreeMap<u64, PathBuf> = found.iter().map(|v| (v.version(), v.path().to_owned())).collect();
        let numbers: Vec<u64> = dirs.keys().copied().collect();
        let aspired = self.config.policy.select(&numbers);
        let table = self.context.table.clone();

        for version in table.versions_in(self.name(), VersionState::Available) {
            if !dirs.contains_key(&version) {
                tracing::info!(model = self.name(), version, "version directory removed; unloading");
                self.unload(version);
            }
        }
        self.failed.retain(|v, _| dirs.contains_key(v));
        for &version in aspired.iter().rev() {
            let status = table.version_status(self.name(), version);
            if status.is_some_and(|s| s.state == VersionState::Available) {
                continue;
            }
            let dir = &dirs[&version];
            if self.failed.get(&version) == Some(&fingerprint(dir)) {
                continue;
            }
            self.load(version, dir);
        }
        let any_aspired_available = aspired.iter().any(|&v| {
            table.version_status(self.name(), v).is_some_and(|s| s.state == VersionState::Available)
        });
        if any_aspired_available {
            for version in table.versions_in(self.name(), VersionState::Available) {
                if !aspired.contains(&version) {
                    tracing::info!(
                        model = self.name(),
                        version,
                        "version outside the version policy; unloading"
                    );
                    self.unload(version);
                }
            }
        }
    }

    fn load(&mut self, version: u64, dir: &Path) {
        let name = self.config.name.clone();
        let table = &self.context.table;
        let print = fingerprint(dir);
        table.set_state(&name, version, VersionState::Start, None);
        table.set_state(&name, version, VersionState::Loading, None);
        tracing::info!(model = %name, version, dir = %dir.display(), "loading version");
        let started = Instant::now();
        let path = dir.display().to_string();
        match self.load_servable(version, dir) {
            Ok(servable) => {
                self.context.metrics.observe_load(&name, &path, true, started.elapsed());
                self.failed.remove(&version);
                table.publish(servable);
                tracing::info!(model = %name, version, seconds = started.elapsed().as_secs_f64(), "version AVAILABLE");
            }
            Err((code, message)) => {
                self.context.metrics.observe_load(&name, &path, false, started.elapsed());
                tracing::error!(model = %name, version, "loading failed: {message}");
                self.failed.insert(version, print);
                table.set_state(&name, version, VersionState::End, Some((code, message)));
            }
        }
    }

    fn load_servable(&self, version: u64, dir: &Path) -> Result<Arc<ServableModel>, (tonic::Code, String)> {
        let model = Model::load_with(dir, self.context.runtime.clone()).map_err(|error| {
            let code = match &error {
                RuntimeError::Artifact(
                    artifact::ArtifactError::DigestMismatch { .. }
                    | artifact::ArtifactError::ManifestDigestMismatch { .. },
                ) => tonic::Code::DataLoss,
                RuntimeError::Artifact(
                    artifact::ArtifactError::MissingManifest { .. }
                    | artifact::ArtifactError::MissingFile { .. },
                ) => tonic::Code::NotFound,
                _ => tonic::Code::Unknown,
            };
            (code, format!("{error:#}"))
        })?;
        if self.context.warmup {
            self.warm_up(&model)?;
        }
        let model = Arc::new(model);
        let labels = QueueLabels { model_name: self.config.name.clone(), version };
        let queue = BatchQueue::start(
            model.clone(),
            self.context.batch.clone(),
            labels,
            self.context.metrics.clone(),
        )
        .map_err(|e| (tonic::Code::Internal, format!("cannot start the batch thread: {e}")))?;
        Ok(Arc::new(ServableModel::new(self.config.name.clone(), version, model, queue)))
    }

    /// Runs every warm-up file of the manifest through prepare + infer, as a request would, so the first
    /// client does not pay for lazy initialisation; any failure fails the load.
    fn warm_up(&self, model: &Model) -> Result<(), (tonic::Code, String)> {
        let dir = model.dir().display().to_string();
        let started = Instant::now();
        let files = &model.manifest().warmup;
        if files.is_empty() {
            tracing::info!("No warmup data file found at {dir}");
            return Ok(());
        }
        tracing::info!("Starting to read warmup data for model at {dir}");
        let result = files.iter().try_for_each(|file| {
            let path = model.dir().join(file);
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("cannot read warm-up file `{}`: {e}", path.display()))?;
            let mut outcome = model
                .predict(&[&bytes])
                .map_err(|e| format!("warm-up with `{}` failed: {e}", path.display()))?;
            match outcome.pop() {
                Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(format!("warm-up file `{}` is not a valid input: {e}", path.display())),
                None => Err(format!("warm-up with `{}` returned no prediction", path.display())),
            }
        });
        self.context.metrics.observe_warmup(&dir, result.is_ok(), started.elapsed());
        result.map_err(|message| (tonic::Code::Internal, message))?;
        tracing::info!(
            "Finished reading warmup data for model at {dir}. Number of warmup records read: {}",
            files.len()
        );
        Ok(())
    }

    /// Takes a version out of routing, waits for its in-flight requests, then releases it.
    fn unload(&self, version: u64) {
        let table = &self.context.table;
        if let Some(servable) = table.retire(self.name(), version) {
            let started = Instant::now();
            while Arc::strong_count(&servable) > 1 && started.elapsed() < DRAIN_LIMIT {
                std::thread::sleep(Duration::from_millis(5));
            }
            // Dropping the last reference closes the queue and joins its thread after it drains.
            drop(servable);
        }
        table.set_state(self.name(), version, VersionState::End, None);
        tracing::info!(model = self.name(), version, "version unloaded");
    }

    fn unload_all(&self) {
        for version in self.context.table.versions_in(self.name(), VersionState::Available) {
            self.unload(version);
        }
    }
}

/// The configured models and their watchers. A config reload replaces the set as a whole, as in TF
/// Serving: models missing from the new config are unloaded, new ones start loading, changed ones switch
/// base path, policy and labels without dropping the versions that stay.
pub(crate) struct ModelSet {
    context: WatchContext,
    watchers: Mutex<BTreeMap<String, ModelWatcher>>,
}

impl ModelSet {
    /// Starts one watcher per model.
    pub(crate) fn start(configs: Vec<ModelConfig>, context: WatchContext) -> std::io::Result<ModelSet> {
        let set = ModelSet { context, watchers: Mutex::new(BTreeMap::new()) };
        set.apply(configs)?;
        Ok(set)
    }

    /// Realizes `configs`. Blocks while dropped models finish their in-flight requests.
    pub(crate) fn apply(&self, configs: Vec<ModelConfig>) -> std::io::Result<()> {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        let wanted: BTreeMap<String, ModelConfig> =
            configs.into_iter().map(|c| (c.name.clone(), c)).collect();
        let dropped: Vec<String> =
            watchers.keys().filter(|name| !wanted.contains_key(*name)).cloned().collect();
        for name in dropped {
            if let Some(watcher) = watchers.remove(&name) {
                tracing::info!(model = %name, "model removed from the config; unloading");
                watcher.stop();
            }
            self.context.table.remove_model(&name);
        }
        for (name, config) in wanted {
            match watchers.get(&name) {
                Some(watcher) if watcher.config() != config => {
                    tracing::info!(model = %name, "model config changed");
                    watcher.update(config);
                }
                Some(_) => {}
                None => {
                    watchers.insert(name, ModelWatcher::start(config, self.context.clone())?);
                }
            }
        }
        Ok(())
    }

    /// The configuration of every model, by name.
    pub(crate) fn configs(&self) -> Vec<ModelConfig> {
        self.watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(ModelWatcher::config)
            .collect()
    }

    /// Stops every watcher, unloading all versions after their in-flight requests.
    pub(crate) fn stop_all(&self) {
        let watchers = std::mem::take(&mut *self.watchers.lock().unwrap_or_else(PoisonError::into_inner));
        watchers.into_values().for_each(ModelWatcher::stop);
    }
}
