//! One thread per model that polls its base path and loads, warms up and unloads versions.
//!
//! The base path is a [`VersionSource`] (a local directory or an object-store prefix): the watcher
//! lists versions with a stamp each, has the source materialize a version into a local directory, and
//! loads it from there; everything below is the same for every source.
//!
//! The order is TF Serving's availability-preserving policy: a new version is loaded and warmed up
//! before it becomes AVAILABLE, and only then are versions outside the policy unloaded, so requests
//! always find a version. A version that fails to load is reported (END with the error) and the previous
//! one keeps serving; it is retried only when its stamp changes, or at the next poll when the store
//! rather than the version was at fault (a download that failed or timed out). A deleted version is
//! unloaded after its in-flight requests finish. Loading is blocking work, which is why this is an OS
//! thread.
//!
//! Faults found after a version loaded do not take it down, because what it serves is the copy that
//! verified at load: files that change on disk (the local copy it was loaded from) and no longer verify
//! set its status to DATA_LOSS, and a base path that cannot be listed (a store that is down or slow)
//! sets every serving version to UNAVAILABLE until it can be again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use artifact::{Artifact, Manifest};
use runtime::{Model, RuntimeError, RuntimeOptions};

use crate::batch::{BatchOptions, BatchQueue, QueueLabels};
use crate::config::ModelConfig;
use crate::metrics::{Metrics, SourceOperation};
use crate::source::{self, BasePath, SourceError, SourceOptions, VersionSource, VersionStamp};
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
    /// The object-store cache and settings every source shares.
    pub(crate) sources: SourceOptions,
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
            let mut watch = Watch {
                config,
                latest,
                context,
                source: None,
                failed: BTreeMap::new(),
                verified: BTreeMap::new(),
                base_fault: None,
            };
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

/// Size and modification time of each file of a loaded version (`None`: absent), by manifest name.
/// Taking it costs a stat per file, so it is taken every poll; hashing, which reads the whole graph,
/// happens only when it differs from the record of the last verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FileStamps(BTreeMap<String, Option<(u64, Option<SystemTime>)>>);

impl FileStamps {
    /// Stamps `manifest.json`, `manifest.sha256` and every file `files` lists under `dir`. The names
    /// come from a verified manifest, so they are relative and stay inside `dir`.
    fn read(dir: &Path, files: &BTreeMap<String, String>) -> FileStamps {
        let names = [artifact::MANIFEST_FILE, artifact::MANIFEST_DIGEST_FILE]
            .into_iter()
            .chain(files.keys().map(String::as_str));
        FileStamps(
            names
                .map(|name| {
                    // Not following links: a file replaced by a symlink shows as changed.
                    let stamp = std::fs::symlink_metadata(dir.join(name)).ok();
                    (name.to_owned(), stamp.map(|m| (m.len(), m.modified().ok())))
                })
                .collect(),
        )
    }

    /// Whether a file was modified at or after `time`.
    fn modified_since(&self, time: SystemTime) -> bool {
        self.0.values().flatten().any(|(_, modified)| modified.is_some_and(|m| m >= time))
    }
}

/// What the watcher knows about a serving version's files on disk.
struct VerifiedFiles {
    /// The directory the version was loaded from.
    dir: PathBuf,
    /// The manifest the served copy verified against.
    manifest: Manifest,
    /// The stamps taken before the last verification; empty to force one at the next poll.
    stamps: FileStamps,
    /// Why the files on disk no longer verify; `None` while they do.
    fault: Option<String>,
}

impl VerifiedFiles {
    /// The record of a version that just loaded; the load verified every digest.
    fn after_load(model: &Model, load_started: SystemTime) -> VerifiedFiles {
        let dir = model.dir().to_owned();
        let manifest = model.manifest().clone();
        let stamps = FileStamps::read(&dir, &manifest.files);
        // A file modified once the load had begun may have changed after it was hashed: an empty
        // record makes the next poll verify once more.
        let stamps = if stamps.modified_since(load_started) { FileStamps::default() } else { stamps };
        VerifiedFiles { dir, manifest, stamps, fault: None }
    }
}

/// The error a serving version reports: damaged files outrank the base path, as they stay true when
/// the base can be listed again.
fn serving_error(data_loss: Option<&str>, base_fault: Option<&str>) -> Option<(tonic::Code, String)> {
    data_loss
        .map(|m| (tonic::Code::DataLoss, m.to_owned()))
        .or_else(|| base_fault.map(|m| (tonic::Code::Unavailable, m.to_owned())))
}

/// The status code of a version whose files do not verify: damaged content is DATA_LOSS, missing
/// content NOT_FOUND.
fn artifact_error_code(error: &artifact::ArtifactError) -> tonic::Code {
    match error {
        artifact::ArtifactError::DigestMismatch { .. }
        | artifact::ArtifactError::ManifestDigestMismatch { .. } => tonic::Code::DataLoss,
        artifact::ArtifactError::MissingManifest { .. } | artifact::ArtifactError::MissingFile { .. } => {
            tonic::Code::NotFound
        }
        _ => tonic::Code::Unknown,
    }
}

/// `error` and its sources joined with `: `, as anyhow's `{:#}` prints a chain: the artifact crate keeps
/// OS causes as sources, and a status without one (`cannot list directory ...`) would not say why.
fn with_causes(error: &dyn std::error::Error) -> String {
    std::iter::successors(Some(error), |e| e.source()).map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

struct Watch {
    /// The configuration this poll works with, refreshed from `latest` at the start of each poll.
    config: ModelConfig,
    latest: Arc<RwLock<ModelConfig>>,
    context: WatchContext,
    /// The source of `config.base_path`, opened at the first poll and again when the base path changes.
    source: Option<(BasePath, Box<dyn VersionSource>)>,
    /// Versions whose content failed to load, with the stamp they failed with.
    failed: BTreeMap<u64, VersionStamp>,
    /// Serving versions' files as of their last verification.
    verified: BTreeMap<u64, VerifiedFiles>,
    /// Why the base path cannot be listed (the status message); `None` while it can.
    base_fault: Option<String>,
}

impl Watch {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn poll(&mut self) {
        self.config = self.latest.read().unwrap_or_else(PoisonError::into_inner).clone();
        let found = match self.list() {
            Ok(found) => found,
            Err(error) => {
                // A missing or unreadable base keeps what is loaded: a transient mount or store problem
                // should not take the model down.
                self.context.metrics.count_source_error(self.name(), SourceOperation::List);
                self.base_unlisted(&error);
                return;
            }
        };
        if found.is_empty() {
            tracing::warn!(
                "No versions of servable {} found under base path {}. Did you forget to name your leaf directory as a number (eg. '/1/')?",
                self.name(),
                self.config.base_path
            );
        }
        self.base_listed();
        let numbers: Vec<u64> = found.keys().copied().collect();
        let aspired = self.config.policy.select(&numbers);
        let table = self.context.table.clone();

        for version in table.versions_in(self.name(), VersionState::Available) {
            if !found.contains_key(&version) {
                tracing::info!(model = self.name(), version, "version directory removed; unloading");
                self.unload(version);
            }
        }
        self.failed.retain(|v, _| found.contains_key(v));
        self.check_files();
        for &version in aspired.iter().rev() {
            let status = table.version_status(self.name(), version);
            if status.is_some_and(|s| s.state == VersionState::Available) {
                continue;
            }
            let stamp = found[&version];
            if self.failed.get(&version) == Some(&stamp) {
                continue;
            }
            self.load(version, stamp);
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
        self.retain_local_copies();
    }

    /// Lists the base path's versions, opening its source first when the base path is new.
    fn list(&mut self) -> Result<source::Listing, SourceError> {
        let base = &self.config.base_path;
        let (_, source) = match self.source.take() {
            Some((opened, source)) if opened == *base => self.source.insert((opened, source)),
            _ => self
                .source
                .insert((base.clone(), source::open(&self.config.name, base, &self.context.sources)?)),
        };
        source.list()
    }

    /// Lets the source drop local copies of versions that are not serving.
    fn retain_local_copies(&mut self) {
        let serving: BTreeSet<u64> =
            self.context.table.versions_in(self.name(), VersionState::Available).into_iter().collect();
        if let Some((_, source)) = &mut self.source {
            source.retain_local(&serving);
        }
    }

    fn load(&mut self, version: u64, stamp: VersionStamp) {
        let name = self.config.name.clone();
        let table = self.context.table.clone();
        table.set_state(&name, version, VersionState::Start, None);
        table.set_state(&name, version, VersionState::Loading, None);
        let started = Instant::now();
        let materialized = match &mut self.source {
            Some((_, source)) => source.materialize(version),
            None => Err(SourceError::NotListed(version)),
        };
        let dir = match materialized {
            Ok(dir) => dir,
            Err(error) => {
                let message = with_causes(&error);
                let code = match &error {
                    SourceError::Content { source, .. } => artifact_error_code(source),
                    _ => tonic::Code::Unavailable,
                };
                if error.is_content() {
                    self.failed.insert(version, stamp);
                } else {
                    // The store or the local disk failed, not the version: the next poll tries again.
                    self.context.metrics.count_source_error(&name, SourceOperation::Materialize);
                }
                tracing::error!(model = %name, version, base = %self.config.base_path, "cannot fetch version: {message}");
                table.set_state(&name, version, VersionState::End, Some((code, message)));
                return;
            }
        };
        let load_started = SystemTime::now();
        tracing::info!(model = %name, version, dir = %dir.display(), "loading version");
        let path = dir.display().to_string();
        match self.load_servable(version, &dir) {
            Ok(servable) => {
                self.context.metrics.observe_load(&name, &path, true, started.elapsed());
                self.failed.remove(&version);
                self.verified.insert(version, VerifiedFiles::after_load(&servable.model, load_started));
                let content_digest = servable.content_digest.clone();
                table.publish(servable);
                tracing::info!(
                    model = %name,
                    version,
                    content_digest,
                    seconds = started.elapsed().as_secs_f64(),
                    "version AVAILABLE"
                );
            }
            Err((code, message)) => {
                self.context.metrics.observe_load(&name, &path, false, started.elapsed());
                tracing::error!(model = %name, version, "loading failed: {message}");
                self.failed.insert(version, stamp);
                table.set_state(&name, version, VersionState::End, Some((code, message)));
            }
        }
    }

    /// Records that the base path cannot be listed and reports it on every serving version; logged once
    /// per distinct cause, as a vanished mount would otherwise log every poll.
    fn base_unlisted(&mut self, error: &SourceError) {
        let cause = with_causes(error);
        let base = &self.config.base_path;
        let message = format!("base path {base} cannot be listed: {cause}; serving versions loaded before");
        if self.base_fault.as_ref() == Some(&message) {
            return;
        }
        tracing::warn!(model = self.name(), "cannot list versions: {cause}");
        self.base_fault = Some(message);
        self.report_serving_errors();
    }

    /// Clears the base path fault after a successful listing.
    fn base_listed(&mut self) {
        if self.base_fault.take().is_some() {
            let base = &self.config.base_path;
            tracing::info!(model = self.name(), "base path {base} can be listed again");
            self.report_serving_errors();
        }
    }

    /// Sets every serving version's status from what is known about its files and the base path.
    fn report_serving_errors(&self) {
        let table = &self.context.table;
        for version in table.versions_in(self.name(), VersionState::Available) {
            let data_loss = self.verified.get(&version).and_then(|v| v.fault.as_deref());
            table.set_serving_error(
                self.name(),
                version,
                serving_error(data_loss, self.base_fault.as_deref()),
            );
        }
    }

    /// Verifies again each serving version whose files changed on disk since they last verified. One
    /// that no longer verifies is reported as DATA_LOSS but keeps serving the copy verified at load;
    /// either way the new stamps are kept, so unchanged damage is not hashed again every poll.
    fn check_files(&mut self) {
        let table = &self.context.table;
        let name = &self.config.name;
        let serving = table.versions_in(name, VersionState::Available);
        self.verified.retain(|version, _| serving.contains(version));
        for (&version, record) in &mut self.verified {
            // Taken before hashing, so a change made while hashing shows up at the next poll.
            let stamps = FileStamps::read(&record.dir, &record.manifest.files);
            if stamps == record.stamps {
                continue;
            }
            record.stamps = stamps;
            let dir = record.dir.display();
            let fault = match artifact::Artifact::open(&record.dir) {
                Ok(artifact) if *artifact.manifest() == record.manifest => None,
                Ok(_) => Some(format!(
                    "`{dir}` was replaced in place by a different artifact (versions are write-once); \
                     serving the copy verified at load"
                )),
                Err(error) => Some(format!(
                    "files changed on disk and no longer verify: {}; serving the copy verified at load",
                    with_causes(&error)
                )),
            };
            if fault == record.fault {
                continue;
            }
            match &fault {
                Some(message) => tracing::error!(model = %name, version, "{message}"),
                None => tracing::info!(model = %name, version, "files in {dir} verify again"),
            }
            record.fault = fault;
            let error = serving_error(record.fault.as_deref(), self.base_fault.as_deref());
            table.set_serving_error(name, version, error);
        }
    }

    fn load_servable(&self, version: u64, dir: &Path) -> Result<Arc<ServableModel>, (tonic::Code, String)> {
        let load_error = |error: RuntimeError| {
            let code = match &error {
                RuntimeError::Artifact(error) => artifact_error_code(error),
                _ => tonic::Code::Unknown,
            };
            (code, format!("{error:#}"))
        };
        // Opened here, not by `Model::load_with`, to keep the content digest the verification computes.
        let artifact = Artifact::open(dir).map_err(|e| load_error(RuntimeError::Artifact(e)))?;
        let content_digest = artifact.content_digest().to_owned();
        let graph = artifact.graph_path();
        let model =
            Model::compile(dir.to_owned(), artifact.into_manifest(), &graph, self.context.runtime.clone())
                .map_err(load_error)?;
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
        Ok(Arc::new(ServableModel::new(self.config.name.clone(), version, model, content_digest, queue)))
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

    fn unload_all(&mut self) {
        for version in self.context.table.versions_in(self.name(), VersionState::Available) {
            self.unload(version);
        }
        self.retain_local_copies();
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

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn file_stamps_change_when_a_listed_file_is_rewritten_touched_or_removed() -> TestResult {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("warmup"))?;
        for name in
            [artifact::MANIFEST_FILE, artifact::MANIFEST_DIGEST_FILE, "graph.nnef.tar", "warmup/a.jpg"]
        {
            std::fs::write(dir.path().join(name), name)?;
        }
        let files = BTreeMap::from([
            ("graph.nnef.tar".to_owned(), String::new()),
            ("warmup/a.jpg".to_owned(), String::new()),
        ]);
        let past = SystemTime::now() - Duration::from_secs(3600);
        for name in
            [artifact::MANIFEST_FILE, artifact::MANIFEST_DIGEST_FILE, "graph.nnef.tar", "warmup/a.jpg"]
        {
            std::fs::File::options().write(true).open(dir.path().join(name))?.set_modified(past)?;
        }
        let before = FileStamps::read(dir.path(), &files);
        assert_eq!(before.0.len(), 4);
        assert!(before.0.values().all(Option::is_some), "{before:?}");
        assert!(!before.modified_since(past + Duration::from_secs(1)));
        assert_eq!(FileStamps::read(dir.path(), &files), before);
        // Unlisted files are not part of the record.
        std::fs::write(dir.path().join("extra"), b"x")?;
        assert_eq!(FileStamps::read(dir.path(), &files), before);

        // Same size and content, new modification time: changed (and verified again by the caller).
        std::fs::write(dir.path().join("graph.nnef.tar"), "graph.nnef.tar")?;
        let touched = FileStamps::read(dir.path(), &files);
        assert_ne!(touched, before);
        assert!(touched.modified_since(past + Duration::from_secs(1)));

        std::fs::remove_file(dir.path().join("warmup/a.jpg"))?;
        let removed = FileStamps::read(dir.path(), &files);
        assert_eq!(removed.0.get("warmup/a.jpg"), Some(&None));
        assert_ne!(removed, touched);
        Ok(())
    }

    #[test]
    fn damaged_files_outrank_an_unlistable_base() {
        assert_eq!(serving_error(None, None), None);
        assert_eq!(serving_error(None, Some("gone")), Some((tonic::Code::Unavailable, "gone".to_owned())));
        assert_eq!(
            serving_error(Some("corrupt"), Some("gone")),
            Some((tonic::Code::DataLoss, "corrupt".to_owned()))
        );
    }

    #[test]
    fn with_causes_joins_the_source_chain() -> TestResult {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("missing");
        let error = match artifact::list_versions(&missing) {
            Ok(found) => return Err(format!("listed a missing directory: {found:?}").into()),
            Err(error) => error,
        };
        let text = with_causes(&error);
        assert!(text.contains(&missing.display().to_string()), "{text}");
        // The artifact error names the directory; the OS cause (its source) follows after `: `.
        let cause = text.strip_prefix(&format!("{error}: ")).ok_or(format!("no cause in {text}"))?;
        assert!(cause.contains("os error"), "{text}");
        Ok(())
    }
}
